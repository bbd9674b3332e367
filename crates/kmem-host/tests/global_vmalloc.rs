//! `KmemGlobal` above KMALLOC_MAX_SIZE: requests kmalloc cannot serve are
//! vmalloc areas of the same machine (Linux's kvmalloc), with real pointers
//! whose pages are the machine's frames; realloc is vrealloc, free is vfree;
//! atomic context and requests vmalloc cannot serve go to the system
//! allocator. Each test has a machine of its own, so the counters it reads
//! are its own.

use kmem::addr::PAGE_SIZE;
use kmem::slab::KMALLOC_MAX_SIZE;
use kmem_host::global::KmemGlobal;
use std::alloc::{GlobalAlloc, Layout};
use std::collections::HashSet;

mod global_common;
use global_common::{check, fill, pattern};

const MIB: usize = 1 << 20;

fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).unwrap()
}

/// The machine frames behind `len` bytes at vmalloc address `p`.
fn frames(k: &KmemGlobal, p: *const u8, len: usize) -> Vec<u64> {
    let vm = k.vmalloc().expect("vmalloc is built");
    (0..len.div_ceil(PAGE_SIZE))
        .map(|i| {
            vm.vmalloc_to_pfn(p.wrapping_add(i * PAGE_SIZE))
                .expect("every page of the area is mapped")
        })
        .collect()
}

#[test]
fn above_4_mib_is_a_vmalloc_area_of_the_machine() {
    static K: KmemGlobal = KmemGlobal::with_machine(256 << 20, 2);
    assert!(K.init_now());
    let before = K.stats();
    let l = layout(5 * MIB + 123, 8);
    assert!(l.size() > KMALLOC_MAX_SIZE);
    // SAFETY: non-zero size.
    let p = unsafe { K.alloc(l) };
    assert!(!p.is_null());
    assert!(K.owns(p));
    let vm = K.vmalloc().expect("the first request built vmalloc");
    assert!(vm.is_vmalloc_addr(p));
    let area = vm.find_vm_area(p).expect("a live area starts at p");
    assert!(area.requested_size >= l.size() && area.nr_pages * PAGE_SIZE >= l.size());
    fill(p, l.size(), 1);
    check(p, l.size(), 1);

    // What the pointer reaches is the machine's frame that the page tables
    // name: read it back through the direct map.
    let machine = K.machine().unwrap();
    for off in [0, 4095, 4096, MIB + 17, l.size() - 1] {
        let pfn = vm.vmalloc_to_pfn(p.wrapping_add(off)).unwrap();
        let direct = machine.ram().direct_map_offset() + pfn as usize * PAGE_SIZE + off % PAGE_SIZE;
        // SAFETY: a byte of a frame the machine's direct map covers.
        assert_eq!(unsafe { (direct as *const u8).read() }, pattern(1, off));
    }
    let after = K.stats();
    assert_eq!(after.vmalloc, before.vmalloc + 1);
    assert_eq!(after.oversize, before.oversize);

    // SAFETY: live for l.
    unsafe { K.dealloc(p, l) };
    assert!(vm.find_vm_area(p).is_none(), "vfree'd");
    assert_eq!(K.stats().bad_frees, 0);
    assert!(machine.pages().verify().is_ok());
}

#[test]
fn alignment_zeroing_and_realloc() {
    static K: KmemGlobal = KmemGlobal::with_machine(256 << 20, 2);
    assert!(K.init_now());

    // An alignment above a page, as the layout asks.
    let l = layout(5 * MIB, 2 * MIB);
    // SAFETY: non-zero size.
    let p = unsafe { K.alloc(l) };
    assert!(K.vmalloc().unwrap().is_vmalloc_addr(p));
    assert_eq!(p as usize % (2 * MIB), 0);
    // SAFETY: live for l.
    unsafe { K.dealloc(p, l) };

    // Zeroed on pages that held data: dirty an area, free it, ask for a
    // zeroed one, and check that it reuses some of the dirtied frames.
    let l = layout(6 * MIB, 8);
    // SAFETY: non-zero size.
    let d = unsafe { K.alloc(l) };
    // SAFETY: live for l.
    unsafe { d.write_bytes(0xa5, l.size()) };
    let dirty: HashSet<u64> = frames(&K, d, l.size()).into_iter().collect();
    // SAFETY: live for l.
    unsafe { K.dealloc(d, l) };
    // SAFETY: non-zero size.
    let z = unsafe { K.alloc_zeroed(l) };
    assert!(K.vmalloc().unwrap().is_vmalloc_addr(z));
    let reused = frames(&K, z, l.size())
        .iter()
        .filter(|f| dirty.contains(f))
        .count();
    assert!(reused > 0, "the zeroed area reuses dirtied frames");
    // SAFETY: live for l.
    assert!(unsafe { std::slice::from_raw_parts(z, l.size()) }
        .iter()
        .all(|&b| b == 0));
    // SAFETY: live for l.
    unsafe { K.dealloc(z, l) };

    // realloc: grow past the area (moves), shrink (in place, stays a
    // vmalloc area even below 4 MiB), contents kept throughout.
    let before = K.stats();
    let mut l = layout(5 * MIB, 8);
    // SAFETY: non-zero size.
    let mut p = unsafe { K.alloc(l) };
    fill(p, l.size(), 2);
    let mut valid = l.size();
    for (size, in_place) in [
        (9 * MIB, false),
        (6 * MIB, true),
        (4 * MIB + 1, true),
        (100, true),
    ] {
        // SAFETY: live for l; non-zero size.
        let q = unsafe { K.realloc(p, l, size) };
        assert!(!q.is_null());
        assert!(K.vmalloc().unwrap().is_vmalloc_addr(q), "{size}");
        assert_eq!(q == p, in_place, "realloc to {size}");
        valid = valid.min(size);
        check(q, valid, 2);
        fill(q, size, 2);
        valid = size;
        p = q;
        l = layout(size, 8);
    }
    // SAFETY: live for l.
    unsafe { K.dealloc(p, l) };
    let after = K.stats();
    assert_eq!(after.realloc_in_place, before.realloc_in_place + 3);
    assert_eq!(after.realloc_moved, before.realloc_moved + 1);

    // A kmalloc object grown past 4 MiB moves into vmalloc.
    let l = layout(3 * MIB, 8);
    // SAFETY: non-zero size.
    let k = unsafe { K.alloc(l) };
    assert!(K.owns(k) && !K.vmalloc().unwrap().is_vmalloc_addr(k));
    fill(k, l.size(), 3);
    // SAFETY: live for l.
    let v = unsafe { K.realloc(k, l, 7 * MIB) };
    assert!(K.vmalloc().unwrap().is_vmalloc_addr(v));
    check(v, l.size(), 3);
    // SAFETY: live for the new size.
    unsafe { K.dealloc(v, layout(7 * MIB, 8)) };

    let s = K.stats();
    assert_eq!((s.oversize, s.bad_frees, s.failed), (0, 0, 0));
    let mut areas = 0;
    K.vmalloc().unwrap().for_each_area(|_| areas += 1);
    assert_eq!(areas, 0, "every area was freed");
    assert!(K.machine().unwrap().pages().verify().is_ok());
}

#[test]
fn the_system_takes_what_vmalloc_cannot() {
    static K: KmemGlobal = KmemGlobal::with_machine(256 << 20, 2);
    assert!(K.init_now());
    let l = layout(5 * MIB, 8);

    // Atomic context: vmalloc may sleep, so the system allocator serves it,
    // before vmalloc is built (which must not be tried there: building maps
    // page tables with GFP_KERNEL) and after.
    let atomic_alloc = |seed| {
        let p = {
            let _atomic = kmem_host::spin_lock();
            // SAFETY: non-zero size.
            unsafe { K.alloc(l) }
        };
        assert!(!p.is_null() && !K.owns(p));
        fill(p, l.size(), seed);
        check(p, l.size(), seed);
        // SAFETY: live for l.
        unsafe { K.dealloc(p, l) };
    };
    atomic_alloc(4);
    assert!(K.vmalloc().is_none(), "not built in atomic context");
    assert_eq!((K.stats().oversize, K.stats().vmalloc), (1, 0));
    // SAFETY: non-zero size.
    let v = unsafe { K.alloc(l) };
    assert!(K.vmalloc().unwrap().is_vmalloc_addr(v));
    atomic_alloc(5);
    // SAFETY: live for l.
    unsafe { K.dealloc(v, l) };
    assert_eq!((K.stats().oversize, K.stats().vmalloc), (2, 1));

    // More than the machine's RAM: vmalloc refuses it at once (Linux's
    // total-pages check), the system allocator serves it.
    let big = layout(512 * MIB, 8);
    // SAFETY: non-zero size.
    let q = unsafe { K.alloc(big) };
    assert!(!q.is_null() && !K.owns(q));
    // SAFETY: live for big.
    unsafe {
        q.write(7);
        q.add(big.size() - 1).write(9);
        assert_eq!((q.read(), q.add(big.size() - 1).read()), (7, 9));
        K.dealloc(q, big);
    }
    let s = K.stats();
    assert_eq!((s.oversize, s.vmalloc, s.failed), (3, 1, 0));
}

#[test]
fn a_double_vfree_and_a_realloc_after_free_are_refused_and_counted() {
    static K: KmemGlobal = KmemGlobal::with_machine(256 << 20, 2);
    assert!(K.init_now());
    let l = layout(5 * MIB, 8);
    // SAFETY: non-zero size.
    let p = unsafe { K.alloc(l) };
    assert!(K.vmalloc().unwrap().is_vmalloc_addr(p));
    // SAFETY: live for l (the second call breaks GlobalAlloc's contract
    // on purpose: kmem must refuse it, change nothing, and count it).
    unsafe {
        K.dealloc(p, l);
        K.dealloc(p, l);
    }
    assert_eq!(K.stats().bad_frees, 1);
    // A realloc of the dead area is refused too (null, nothing read), in
    // process and in atomic context.
    // SAFETY: contract broken on purpose, as above.
    assert!(unsafe { K.realloc(p, l, 6 * MIB) }.is_null());
    assert_eq!(K.stats().bad_frees, 2);
    {
        let _atomic = kmem_host::spin_lock();
        // SAFETY: as above.
        assert!(unsafe { K.realloc(p, l, 100) }.is_null());
    }
    assert_eq!(K.stats().bad_frees, 3);
    // Still usable afterwards.
    // SAFETY: non-zero size.
    let q = unsafe { K.alloc(l) };
    fill(q, l.size(), 5);
    check(q, l.size(), 5);
    // SAFETY: live for l.
    unsafe { K.dealloc(q, l) };
    assert_eq!(K.stats().bad_frees, 3);
    assert!(K.machine().unwrap().pages().verify().is_ok());
}

#[test]
fn threads_allocate_grow_and_free_areas_at_once() {
    static K: KmemGlobal = KmemGlobal::with_machine(512 << 20, 4);
    assert!(K.init_now());
    std::thread::scope(|s| {
        for t in 0..4usize {
            s.spawn(move || {
                for round in 0..6usize {
                    let seed = t * 100 + round;
                    let mut l = layout(4 * MIB + 1 + round * 100_000, 64);
                    // SAFETY: non-zero size.
                    let p = unsafe { K.alloc(l) };
                    assert!(K.vmalloc().unwrap().is_vmalloc_addr(p));
                    fill(p, l.size(), seed);
                    let grown = l.size() + 3 * MIB;
                    // SAFETY: live for l.
                    let q = unsafe { K.realloc(p, l, grown) };
                    assert!(!q.is_null());
                    check(q, l.size(), seed);
                    l = layout(grown, 64);
                    // SAFETY: live for l.
                    unsafe { K.dealloc(q, l) };
                }
            });
        }
    });
    let s = K.stats();
    assert_eq!(s.vmalloc, 24, "every first allocation");
    assert_eq!(
        s.realloc_moved, 24,
        "every grow moved (vrealloc's own area)"
    );
    assert_eq!((s.oversize, s.bad_frees, s.failed), (0, 0, 0));
    let mut areas = 0;
    K.vmalloc().unwrap().for_each_area(|_| areas += 1);
    assert_eq!(areas, 0);
    assert!(K.machine().unwrap().pages().verify().is_ok());
}
