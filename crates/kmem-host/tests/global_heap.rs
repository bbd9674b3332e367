//! `KmemHeap` (allocator-api2) and `KmemGlobal` (GlobalAlloc) used as plain
//! values, not as the process's global allocator (see `global_allocator.rs`
//! for that): collections with their contents checked, every power-of-two
//! alignment up to 4 KiB (and beyond, through kmalloc's page path), realloc,
//! grow and shrink keeping contents, the fallbacks, and threads.

use allocator_api2::alloc::Allocator;
use allocator_api2::boxed::Box as ABox;
use allocator_api2::vec::Vec as AVec;
use kmem::gfp::{GFP_ATOMIC, GFP_KERNEL};
use kmem::slab::KMALLOC_MAX_SIZE;
use kmem_host::global::{kmalloc_request, KmemGlobal, KmemHeap};
use std::alloc::{GlobalAlloc, Layout};
use std::ptr::NonNull;

mod global_common;
use global_common::{check, fill};

/// One machine for the whole test binary (tests run in parallel on it).
static KMEM: KmemGlobal = KmemGlobal::new();

fn heap() -> KmemHeap<'static> {
    KMEM.heap().expect("the machine builds")
}

#[test]
fn vec_box_and_hashmap_through_allocator_api2() {
    let h = heap();
    let mut v: AVec<u64, _> = AVec::new_in(h);
    for i in 0..100_000u64 {
        v.push(i * i);
    }
    assert!(KMEM.owns(v.as_ptr().cast()));
    assert!(v
        .iter()
        .enumerate()
        .all(|(i, &x)| x == (i as u64) * (i as u64)));
    v.truncate(10);
    v.shrink_to_fit();
    assert_eq!(&v[..], &[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]);

    let b = ABox::new_in([7u32; 300], h);
    assert!(b.iter().all(|&x| x == 7));
    assert!(KMEM.owns((&*b as *const [u32; 300]).cast()));

    let mut strings: AVec<AVec<u8, KmemHeap<'_>>, _> = AVec::new_in(h);
    for i in 0..2000usize {
        let mut s = AVec::new_in(h);
        s.extend_from_slice(format!("string number {i}").as_bytes());
        strings.push(s);
    }
    for (i, s) in strings.iter().enumerate() {
        assert_eq!(s.as_slice(), format!("string number {i}").as_bytes());
    }

    let mut map = hashbrown::HashMap::new_in(h);
    for i in 0..20_000u32 {
        map.insert(i, i.wrapping_mul(2_654_435_761));
    }
    for i in (0..20_000u32).step_by(3) {
        map.remove(&i);
    }
    assert_eq!(map.len(), 20_000 - 6667);
    for i in 0..20_000u32 {
        assert_eq!(
            map.get(&i).copied(),
            (i % 3 != 0).then(|| i.wrapping_mul(2_654_435_761))
        );
    }
}

#[test]
fn every_power_of_two_alignment_up_to_4k() {
    let h = heap();
    let mut live: Vec<(NonNull<u8>, Layout, usize)> = Vec::new();
    let mut seed = 0;
    let mut align = 1;
    while align <= 4096 {
        for size in [
            1,
            7,
            8,
            24,
            align / 2 + 1,
            align,
            align + 1,
            3 * align,
            5000,
        ] {
            let l = Layout::from_size_align(size.max(1), align).unwrap();
            let p = h.allocate(l).unwrap().cast::<u8>();
            assert_eq!(p.as_ptr() as usize % align, 0, "{l:?} via KmemHeap");
            assert!(KMEM.owns(p.as_ptr()));
            fill(p.as_ptr(), l.size(), seed);
            live.push((p, l, seed));
            seed += 1;

            // SAFETY: non-zero size.
            let q = unsafe { KMEM.alloc(l) };
            assert!(!q.is_null());
            assert_eq!(q as usize % align, 0, "{l:?} via GlobalAlloc");
            assert!(KMEM.owns(q));
            fill(q, l.size(), seed);
            live.push((NonNull::new(q).unwrap(), l, seed));
            seed += 1;
        }
        align *= 2;
    }
    // Nothing overlaps and nothing was overwritten.
    let mut spans: Vec<(usize, usize)> = live
        .iter()
        .map(|(p, l, _)| (p.as_ptr() as usize, p.as_ptr() as usize + l.size()))
        .collect();
    spans.sort_unstable();
    assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0));
    for (i, &(p, l, s)) in live.iter().enumerate() {
        check(p.as_ptr(), l.size(), s);
        if i % 2 == 0 {
            // SAFETY: allocated above by this handle with l.
            unsafe { h.deallocate(p, l) };
        } else {
            // SAFETY: allocated above by KMEM with l.
            unsafe { KMEM.dealloc(p.as_ptr(), l) };
        }
    }
    assert_eq!(KMEM.stats().misaligned, 0);
}

#[test]
fn high_alignments_take_the_page_path() {
    let h = heap();
    for shift in 13..=21 {
        let align = 1usize << shift;
        let l = Layout::from_size_align(100, align).unwrap();
        let p = h.allocate(l).unwrap().cast::<u8>();
        assert_eq!(p.as_ptr() as usize % align, 0, "align {align}");
        fill(p.as_ptr(), 100, shift);
        check(p.as_ptr(), 100, shift);
        // SAFETY: allocated above with l.
        unsafe { h.deallocate(p, l) };
    }
}

#[test]
fn the_layout_rule() {
    let l = |s, a| Layout::from_size_align(s, a).unwrap();
    assert_eq!(kmalloc_request(l(24, 8)), Some(24));
    assert_eq!(kmalloc_request(l(24, 16)), Some(32));
    assert_eq!(kmalloc_request(l(100, 64)), Some(128));
    assert_eq!(kmalloc_request(l(1, 4096)), Some(4096));
    assert_eq!(
        kmalloc_request(l(KMALLOC_MAX_SIZE, 8)),
        Some(KMALLOC_MAX_SIZE)
    );
    assert_eq!(kmalloc_request(l(KMALLOC_MAX_SIZE + 1, 8)), None);
    // kmalloc's own rounding, as ksize reports it.
    let slab = KMEM.heap().unwrap().slab();
    let p = slab
        .kmalloc(kmalloc_request(l(70, 32)).unwrap(), GFP_KERNEL)
        .unwrap();
    assert_eq!(slab.ksize(p.as_ptr()), 96);
    assert_eq!(p.as_ptr() as usize % 32, 0);
    slab.kfree(p.as_ptr()).unwrap();
}

#[test]
fn grow_and_shrink_keep_contents() {
    let h = heap();
    let mut l = Layout::from_size_align(5, 8).unwrap();
    let mut p = h.allocate(l).unwrap().cast::<u8>();
    fill(p.as_ptr(), l.size(), 1);
    for size in [8, 9, 64, 100, 4096, 5000, 8192, 20_000, 1 << 20, 3 << 20] {
        let new = Layout::from_size_align(size, 8).unwrap();
        let keep = l.size();
        // SAFETY: p is live for l; new is not smaller.
        p = unsafe { h.grow(p, l, new) }.unwrap().cast();
        check(p.as_ptr(), keep, 1);
        fill(p.as_ptr(), size, 1);
        l = new;
    }
    for size in [1 << 20, 9000, 4000, 96, 8, 1] {
        let new = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: p is live for l; new is not larger.
        p = unsafe { h.shrink(p, l, new) }.unwrap().cast();
        check(p.as_ptr(), size, 1);
        l = new;
    }
    // SAFETY: live for l.
    unsafe { h.deallocate(p, l) };

    // grow_zeroed: in place (same class) and moving.
    let l = Layout::from_size_align(40, 8).unwrap();
    let p = h.allocate(l).unwrap().cast::<u8>();
    fill(p.as_ptr(), 40, 2);
    let l2 = Layout::from_size_align(60, 8).unwrap();
    // SAFETY: live for l.
    let q = unsafe { h.grow_zeroed(p, l, l2) }.unwrap().cast::<u8>();
    assert_eq!(q, p, "40 and 60 bytes are both kmalloc-64");
    check(q.as_ptr(), 40, 2);
    // SAFETY: 60 bytes live.
    assert!(
        unsafe { std::slice::from_raw_parts(q.as_ptr().add(40), 20) }
            .iter()
            .all(|&b| b == 0)
    );
    let l3 = Layout::from_size_align(3000, 8).unwrap();
    // SAFETY: live for l2.
    let r = unsafe { h.grow_zeroed(q, l2, l3) }.unwrap().cast::<u8>();
    check(r.as_ptr(), 40, 2);
    // SAFETY: 3000 bytes live.
    assert!(
        unsafe { std::slice::from_raw_parts(r.as_ptr().add(60), 2940) }
            .iter()
            .all(|&b| b == 0)
    );
    // SAFETY: live for l3.
    unsafe { h.deallocate(r, l3) };
}

#[test]
fn global_realloc_keeps_contents() {
    let before = KMEM.stats();
    let mut l = Layout::from_size_align(3, 1).unwrap();
    // SAFETY: non-zero size.
    let mut p = unsafe { KMEM.alloc(l) };
    fill(p, 3, 9);
    let sizes = [
        4,
        7,
        8,
        200,
        1000,
        4096,
        10_000,
        100_000,
        2 << 20,
        5 << 20, // above KMALLOC_MAX_SIZE: moves to vmalloc
        3 << 20, // vrealloc shrinks it in place: a vmalloc area stays one
        6000,
        5,
    ];
    let mut valid = 3;
    for size in sizes {
        // SAFETY: p is live for l; size is non-zero.
        let q = unsafe { KMEM.realloc(p, l, size) };
        assert!(!q.is_null());
        valid = valid.min(size);
        check(q, valid, 9);
        fill(q, size, 9);
        valid = size;
        p = q;
        l = Layout::from_size_align(size, 1).unwrap();
    }
    // SAFETY: live for l.
    unsafe { KMEM.dealloc(p, l) };
    let after = KMEM.stats();
    assert!(
        after.realloc_in_place > before.realloc_in_place,
        "4 -> 7 -> 8 stay in kmalloc-8"
    );
    assert!(after.realloc_moved > before.realloc_moved);
    assert!(
        after.vmalloc > before.vmalloc,
        "5 MiB went to the machine's vmalloc"
    );
}

#[test]
fn zero_sizes_oversize_and_zeroed() {
    let h = heap();
    let z = Layout::from_size_align(0, 64).unwrap();
    let p = h.allocate(z).unwrap();
    assert_eq!(p.len(), 0);
    assert_eq!(p.cast::<u8>().as_ptr() as usize % 64, 0);
    // SAFETY: zero-sized, from this handle.
    unsafe { h.deallocate(p.cast(), z) };

    let big = Layout::from_size_align(KMALLOC_MAX_SIZE + 1, 8).unwrap();
    assert!(h.allocate(big).is_err(), "KmemHeap never falls back");
    let max = Layout::from_size_align(KMALLOC_MAX_SIZE, 8).unwrap();
    let p = h.allocate(max).unwrap().cast::<u8>();
    assert!(KMEM.owns(p.as_ptr()));
    // SAFETY: live for max.
    unsafe { h.deallocate(p, max) };

    // SAFETY: non-zero size.
    let q = unsafe { KMEM.alloc(big) };
    assert!(!q.is_null());
    assert!(KMEM.owns(q), "above 4 MiB: the machine's vmalloc");
    assert!(KMEM.vmalloc().unwrap().is_vmalloc_addr(q));
    // SAFETY: live for big.
    unsafe { KMEM.dealloc(q, big) };

    for size in [1, 100, 3000, 9000, 70_000] {
        let l = Layout::from_size_align(size, 8).unwrap();
        // Dirty an object of that class first, so zeroing is observable.
        // SAFETY: non-zero sizes, freed right away.
        unsafe {
            let d = KMEM.alloc(l);
            d.write_bytes(0xa5, size);
            KMEM.dealloc(d, l);
        }
        let z = h.allocate_zeroed(l).unwrap().cast::<u8>();
        // SAFETY: size bytes live.
        assert!(unsafe { std::slice::from_raw_parts(z.as_ptr(), size) }
            .iter()
            .all(|&b| b == 0));
        // SAFETY: live for l.
        unsafe { h.deallocate(z, l) };
        // SAFETY: non-zero size.
        let g = unsafe { KMEM.alloc_zeroed(l) };
        // SAFETY: size bytes live.
        assert!(unsafe { std::slice::from_raw_parts(g, size) }
            .iter()
            .all(|&b| b == 0));
        // SAFETY: live for l.
        unsafe { KMEM.dealloc(g, l) };
    }
}

#[test]
fn atomic_context_and_explicit_flags() {
    let h = heap().with_gfp(GFP_ATOMIC);
    assert_eq!(h.gfp(), GFP_ATOMIC);
    let _irq = kmem_host::irq();
    // GFP_ATOMIC in hard-IRQ context: allowed.
    let mut v = AVec::new_in(h);
    v.extend(0..1000u32);
    assert_eq!(v.iter().sum::<u32>(), 999 * 1000 / 2);
    // The global allocator picks GFP_ATOMIC by itself in atomic context.
    let l = Layout::from_size_align(256, 8).unwrap();
    // SAFETY: non-zero size.
    let p = unsafe { KMEM.alloc(l) };
    assert!(KMEM.owns(p));
    // SAFETY: live for l.
    unsafe { KMEM.dealloc(p, l) };
    // GFP_KERNEL in atomic context is refused by kmem, and the handle says so.
    let sleeping = heap();
    assert!(sleeping.allocate(l).is_err());
}

#[test]
fn threads_share_and_cross_free() {
    let h = heap();
    let (tx, rx) = std::sync::mpsc::channel::<ABox<[u8; 48], KmemHeap<'static>>>();
    std::thread::scope(|s| {
        for t in 0..5u8 {
            let tx = tx.clone();
            s.spawn(move || {
                let mut mine = AVec::new_in(h);
                for i in 0..3000u32 {
                    let b = ABox::new_in([t ^ i as u8; 48], h);
                    if i % 2 == 0 {
                        tx.send(b).unwrap();
                    } else {
                        mine.push(b);
                    }
                }
                for (i, b) in mine.iter().enumerate() {
                    let i = 2 * i as u32 + 1;
                    assert!(b.iter().all(|&x| x == t ^ i as u8));
                }
            });
        }
        drop(tx);
        // Freed here, on another thread than the one that allocated.
        let mut n = 0;
        for b in rx {
            assert!(b.iter().all(|&x| x == b[0]));
            n += 1;
        }
        assert_eq!(n, 5 * 1500);
    });
    assert_eq!(KMEM.stats().bad_frees, 0);
    assert!(KMEM.machine().unwrap().pages().verify().is_ok());
}

#[test]
fn debugging_caches_see_no_red_zone_hits() {
    use kmem::slab::{SlabAllocator, SlabConfig, SlabDebug};
    let m = kmem_host::Machine::default_machine().unwrap();
    let config = SlabConfig {
        slab_debug: SlabDebug::new("FZPU"),
        ..SlabConfig::default()
    };
    let slab = SlabAllocator::new(m.pages(), config).unwrap();
    let h = KmemHeap::new(&slab);
    {
        let mut v: AVec<u8, _> = AVec::new_in(h);
        for i in 0..5000u32 {
            v.push(i as u8);
        }
        assert!(v.iter().enumerate().all(|(i, &b)| b == i as u8));
        let mut map = hashbrown::HashMap::new_in(h);
        for i in 0..3000u32 {
            map.insert(i, [i; 3]);
        }
        assert!(map.iter().all(|(k, v)| v == &[*k; 3]));
        // In-place resizes within a class move the kmalloc red zone along.
        let l = Layout::from_size_align(40, 8).unwrap();
        let p = h.allocate(l).unwrap().cast::<u8>();
        let l2 = Layout::from_size_align(64, 8).unwrap();
        // SAFETY: live for l.
        let q = unsafe { h.grow(p, l, l2) }.unwrap().cast::<u8>();
        assert_eq!(p, q);
        fill(q.as_ptr(), 64, 3);
        let l3 = Layout::from_size_align(33, 8).unwrap();
        // SAFETY: live for l2.
        let r = unsafe { h.shrink(q, l2, l3) }.unwrap().cast::<u8>();
        assert_eq!(q, r);
        check(r.as_ptr(), 33, 3);
        // SAFETY: live for l3.
        unsafe { h.deallocate(r, l3) };
    }
    assert_eq!(slab.errors(), 0, "{:?}", m.platform().take_log());
    drop(slab);
    assert!(m.pages().verify().is_ok());
}

#[test]
fn the_global_allocator_gives_sheaved_memory_back_under_pressure() {
    // A machine of its own (64 MiB), so that running it out of pages does
    // not disturb the other tests. KmemGlobal registered its slab allocator
    // as a shrinker: free 4 KiB objects parked in a sheaf come back when
    // page allocations that may reclaim run short.
    let global: &'static KmemGlobal = Box::leak(Box::new(KmemGlobal::with_machine(64 << 20, 2)));
    assert!(global.init_now());
    let m = global.machine().unwrap();
    let slab = global.slab().unwrap();
    let layout = Layout::from_size_align(4096, 8).unwrap();
    let blocks: Vec<*mut u8> = (0..2048)
        // SAFETY: a valid, non-zero-size layout.
        .map(|_| unsafe { global.alloc(layout) })
        .collect();
    assert!(blocks.iter().all(|p| !p.is_null()));
    for p in blocks {
        // SAFETY: allocated above with this layout.
        unsafe { global.dealloc(p, layout) };
    }
    let k4 = || slab.find_cache("kmalloc-4k").unwrap().nr_slabs();
    assert!(k4() > 0, "the freed blocks are parked in the cache");
    let mut got = Vec::new();
    while let Ok(pfn) = m
        .pages()
        .alloc_pages(GFP_KERNEL | kmem::gfp::Gfp::NOWARN, 0)
    {
        got.push(pfn);
    }
    assert_eq!(k4(), 0, "reclaim took the parked memory back");
    assert!(
        got.len() >= 2048,
        "at least the parked 8 MiB: {} pages",
        got.len()
    );
    for pfn in got {
        m.pages().free_pages(pfn, 0).unwrap();
    }
    // SAFETY: as above.
    let p = unsafe { global.alloc(layout) };
    assert!(!p.is_null());
    // SAFETY: allocated just above.
    unsafe { global.dealloc(p, layout) };
}
