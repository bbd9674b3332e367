//! Misuse of vmalloc, vmap, vm_map_ram and kvmalloc found in review, each
//! with the Linux behaviour it expects: vunmap of an area queued for a
//! deferred free, vm_unmap_ram of a big area with the wrong count, failures
//! part-way through populating or mapping (nothing leaked, nothing of the
//! caller's freed), flags only vmalloc itself sets, unaligned ranges,
//! vfree_rcu heads past the mapped pages, kvfree_sensitive that would wipe
//! memory vfree then refuses, vm_unmap_aliases retiring empty blocks, and a
//! two-CPU stress run of it all.

mod race_common;
mod vmalloc_common;

use kmem::addr::{Pfn, VirtAddr, PAGE_SIZE};
use kmem::gfp::{__GFP_NOWARN, __GFP_ZERO, GFP_KERNEL};
use kmem::paging::{PageTables, PteFlags};
use kmem::vmalloc::{VfreeError, VmFlags, VmallocError};
use kmem_host::vmap;
use vmalloc_common::*;

fn alloc_pages(m: &kmem_host::Machine, n: usize) -> Vec<Pfn> {
    (0..n)
        .map(|_| m.pages().alloc_pages(GFP_KERNEL, 0).unwrap())
        .collect()
}

/// vfree_atomic of a vmap area, then vunmap of it: the second release must
/// be refused (the area is queued), and the later drain must not free an
/// unrelated live area that reuses the range.
#[test]
fn vunmap_after_vfree_atomic() {
    let m = machine();
    let vm = vmap::vmalloc(&m).unwrap();
    let pages = alloc_pages(&m, 2);
    let p = vm
        .vmap(&pages, VmFlags::MAP, PteFlags::KERNEL)
        .unwrap()
        .as_ptr();
    vm.vfree_atomic(p).unwrap();
    let r = vm.vunmap(p);
    eprintln!("vunmap after vfree_atomic: {r:?}");
    vm.purge();
    // An unrelated allocation takes the lowest range: the same address.
    let q = vm.vmalloc(2 * PAGE_SIZE).unwrap().as_ptr();
    eprintln!("p={p:?} q={q:?}");
    unsafe { (q as *mut u64).write(0) };
    let drained = vm.drain_deferred();
    eprintln!("drained {drained}");
    assert!(
        vm.find_vm_area(q).is_some(),
        "live area q was freed by the stale deferred free (vunmap returned {r:?})"
    );
    assert!(r.is_err(), "vunmap of a queued area accepted");
}

/// vfree_rcu_mightsleep of a vmap area, then vunmap: the record is on two
/// lists at once.
#[test]
fn vunmap_after_vfree_rcu_mightsleep() {
    let m = machine();
    let vm = vmap::vmalloc(&m).unwrap();
    let pages = alloc_pages(&m, 2);
    let p = vm
        .vmap(&pages, VmFlags::MAP, PteFlags::KERNEL)
        .unwrap()
        .as_ptr();
    vm.vfree_rcu_mightsleep(p).unwrap();
    let r = vm.vunmap(p);
    eprintln!("vunmap after vfree_rcu_mightsleep: {r:?}");
    vm.purge();
    let q = vm.vmalloc(PAGE_SIZE).unwrap().as_ptr();
    eprintln!("p={p:?} q={q:?}");
    vm.rcu_barrier();
    vm.verify().unwrap();
    assert!(
        vm.find_vm_area(q).is_some(),
        "live area q freed by rcu_barrier (vunmap returned {r:?})"
    );
    assert!(r.is_err(), "vunmap of an RCU-queued area accepted");
}

/// A big vm_map_ram (own area) released with a wrong count.
#[test]
fn vm_unmap_ram_big_wrong_count() {
    let m = machine();
    let vm = vmap::vmalloc(&m).unwrap();
    let pages = alloc_pages(&m, 100);
    let a = vm.vm_map_ram(&pages, -1).unwrap().as_ptr();
    let r = vm.vm_unmap_ram(a, 70);
    eprintln!("vm_unmap_ram(a 100 pages, 70) = {r:?}");
    assert!(r.is_err(), "wrong count accepted for a 100-page vm_map_ram");
}

/// vm_unmap_ram with a count that does not match the mapping is refused
/// with an error naming what lies there, and unmaps nothing. A count above
/// VMAP_MAX_ALLOC for a mapping in a vmap block used to be called a
/// "vmalloc or vmap" area (or a vm_map_ram mapping to release with
/// vm_unmap_ram, the very call made), a small count for a big mapping
/// likewise, and a count near usize::MAX overflowed `count * PAGE_SIZE`
/// (a panic with overflow checks on).
#[test]
fn vm_unmap_ram_wrong_counts_name_what_is_there() {
    let m = machine();
    let vm = vmap::vmalloc(&m).unwrap();
    let small_pages = alloc_pages(&m, 2);
    let big_pages = alloc_pages(&m, 70);
    let small = vm.vm_map_ram(&small_pages, -1).unwrap().as_ptr();
    let big = vm.vm_map_ram(&big_pages, -1).unwrap().as_ptr();
    let v = vm.vmalloc(2 * PAGE_SIZE).unwrap().as_ptr();
    for given in [65, 1 << 52, usize::MAX] {
        let e = vm.vm_unmap_ram(small, given).unwrap_err();
        assert_eq!(
            e,
            VfreeError::WrongSizeInBlock {
                addr: small as usize,
                given
            }
        );
        assert!(e.to_string().contains("vmap block"), "{e}");
    }
    for given in [1, 2, 69, 71, 1 << 52, usize::MAX] {
        let e = vm.vm_unmap_ram(big, given).unwrap_err();
        assert_eq!(
            e,
            VfreeError::WrongSize {
                addr: big as usize,
                mapped: 70,
                given
            }
        );
    }
    for given in [2, 100] {
        let e = vm.vm_unmap_ram(v, given).unwrap_err();
        assert!(
            matches!(e, VfreeError::WrongKind { use_instead, .. } if use_instead.contains("vfree")),
            "{e:?}"
        );
    }
    // Nothing was unmapped: every page still shows its frame.
    for (p, frames) in [(small, &small_pages), (big, &big_pages)] {
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(vm.vmalloc_to_page(p.wrapping_add(i * PAGE_SIZE)), Some(*f));
        }
    }
    vm.vm_unmap_ram(small, 2).unwrap();
    vm.vm_unmap_ram(big, 70).unwrap();
    vm.vfree(v).unwrap();
    for pfn in small_pages.into_iter().chain(big_pages) {
        m.pages().free_pages(pfn, 0).unwrap();
    }
}

/// vmap with VM_ALLOC: an ALLOC area's pages are freed by vfree, so the
/// caller's pages would be. The flag is one only vmalloc itself sets: vmap
/// refuses it with BadFlags and a warning, maps nothing, and the pages stay
/// the caller's.
#[test]
fn vmap_with_alloc_flag() {
    let m = machine();
    let vm = vmap::vmalloc(&m).unwrap();
    let pages = alloc_pages(&m, 2);
    let before = free_pages(&m);
    m.platform().take_log();
    let r = vm.vmap(&pages, VmFlags::MAP | VmFlags::ALLOC, PteFlags::KERNEL);
    assert_eq!(
        r,
        Err(VmallocError::BadFlags {
            flags: VmFlags::MAP | VmFlags::ALLOC
        }),
        "vmap(VM_ALLOC)"
    );
    let log = m.platform().take_log();
    assert!(
        log.iter().any(|l| l.contains("only vmalloc itself sets")),
        "{log:?}"
    );
    let mut areas = 0;
    vm.for_each_area(|_| areas += 1);
    assert_eq!(areas, 0, "a refused vmap leaves no area");
    assert_eq!(free_pages(&m), before, "a refused vmap takes no page");
    vm.verify().unwrap();
    // The caller still holds the pages: freeing them now must work.
    for p in pages {
        m.pages().free_pages(p, 0).unwrap();
    }
}

/// vmap and vm_map_ram of a frame that is not RAM: refused before anything
/// is mapped. A frame number of 2^52 or more used to pass: shifted into an
/// address it lost its top bits, so the mapping showed a live page of
/// someone else (and with VM_MAP_PUT_PAGES vfree would have freed it); a
/// frame past the end of RAM reached the host backend as a bare errno.
#[test]
fn vmap_of_frames_that_are_not_ram() {
    let m = machine();
    let vm = vmap::vmalloc(&m).unwrap();
    let good = alloc_pages(&m, 80);
    let victim = good[0];
    // SAFETY: a page of ours, in the direct map.
    unsafe { m.pages().page_address(victim).as_ptr::<u64>().write(0x1111) };
    let info = vmallocinfo(&vm);
    let free = free_pages(&m);
    let past_ram = Pfn(m.pages().max_pfn() + 10);
    for bogus in [Pfn((1 << 52) | victim.0), Pfn(u64::MAX), past_ram] {
        // The bad frame last: a page-by-page mapper would map the others.
        let mut list = good[..3].to_vec();
        list.push(bogus);
        for flags in [VmFlags::MAP, VmFlags::MAP | VmFlags::MAP_PUT_PAGES] {
            let r = vm.vmap(&list, flags, PteFlags::KERNEL);
            assert_eq!(
                r,
                Err(VmallocError::NotRam { pfn: bogus }),
                "vmap {flags:?}"
            );
        }
        // A vmap block (up to VMAP_MAX_ALLOC pages) and an area of its own.
        for n in [3, 79] {
            let mut list = good[..n].to_vec();
            list.push(bogus);
            let r = vm.vm_map_ram(&list, -1);
            assert_eq!(
                r,
                Err(VmallocError::NotRam { pfn: bogus }),
                "vm_map_ram of {n} + 1"
            );
        }
        let text = VmallocError::NotRam { pfn: bogus }.to_string();
        assert!(text.contains("is not RAM"), "{text}");
    }
    assert_eq!(vmallocinfo(&vm), info, "no area left behind");
    assert_eq!(free_pages(&m), free, "no page taken or freed");
    // SAFETY: as above.
    assert_eq!(
        unsafe { m.pages().page_address(victim).as_ptr::<u64>().read() },
        0x1111
    );
    let owner = m.pages().frame(victim).unwrap().owner();
    // The good frames still map, and hold what they held.
    let p = vm.vmap(&good[..4], VmFlags::MAP, PteFlags::KERNEL).unwrap();
    // SAFETY: mapped just now, four pages.
    assert_eq!(unsafe { p.as_ptr().cast::<u64>().read() }, 0x1111);
    vm.vunmap(p.as_ptr()).unwrap();
    assert_eq!(m.pages().frame(victim).unwrap().owner(), owner);
    for pfn in good {
        m.pages().free_pages(pfn, 0).unwrap();
    }
}

/// vmalloc_node_range with an unaligned start: error, and nothing else is
/// disturbed.
#[test]
fn node_range_unaligned_start() {
    let m = machine();
    let vm = vmap::vmalloc(&m).unwrap();
    let c = *vm.config();
    let before = free_pages(&m);
    let r = vm.vmalloc_node_range(
        PAGE_SIZE,
        1,
        c.start + 0x800,
        c.end,
        GFP_KERNEL,
        PteFlags::KERNEL,
        VmFlags::empty(),
        -1,
    );
    assert_eq!(
        r,
        Err(VmallocError::BadRange {
            start: c.start + 0x800,
            end: c.end
        }),
        "an unaligned start is refused"
    );
    assert_eq!(free_pages(&m), before, "a refused call takes no page");
    let mut areas = 0;
    vm.for_each_area(|_| areas += 1);
    assert_eq!(areas, 0, "a refused call leaves no area");
    vm.verify().unwrap();
    // An ordinary vmalloc must still work.
    let q = vm.vmalloc(PAGE_SIZE);
    eprintln!("next vmalloc: {q:?}");
    let q = q.expect("ordinary vmalloc after a bad node_range call");
    check_mapping(&vm, q.as_ptr(), PAGE_SIZE);
}

/// vfree_rcu of a shrunk area with the head past the mapped pages.
#[test]
fn vfree_rcu_after_shrink() {
    let m = machine();
    let vm = vmap::vmalloc(&m).unwrap();
    let p = vm.vmalloc(5 * PAGE_SIZE).unwrap().as_ptr();
    let q = vm.vrealloc(p, 100, GFP_KERNEL).unwrap().unwrap().as_ptr();
    assert_eq!(p, q);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        vm.vfree_rcu(q, 3 * PAGE_SIZE)
    }));
    eprintln!("vfree_rcu head in unmapped page: {r:?}");
    assert!(
        matches!(r, Ok(Err(_))),
        "expected a clean refusal, got {r:?}"
    );
}

/// kvfree_sensitive of a vm_map_ram address must not zero then refuse.
#[test]
fn kvfree_sensitive_vm_map_ram() {
    use kmem::kvmalloc::KvAlloc;
    use kmem::slab::{SlabAllocator, SlabConfig};
    let m = machine();
    let slab = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
    let vm = vmap::vmalloc(&m).unwrap();
    let kv = KvAlloc::new(&slab, &vm);
    let pages = alloc_pages(&m, 100);
    let a = vm.vm_map_ram(&pages, -1).unwrap().as_ptr();
    unsafe { a.write_bytes(0x5a, 64) };
    let r = kv.kvfree_sensitive(a, 64);
    eprintln!("kvfree_sensitive(vm_map_ram) = {r:?}");
    let v = unsafe { a.read() };
    assert!(r.is_err());
    assert_eq!(v, 0x5a, "refused, but the caller's data was wiped");
    let _ = __GFP_ZERO;
    let _ = __GFP_NOWARN;
    let _ = VirtAddr(0);
    let _: Option<VfreeError> = None;
}

/// As above, but the vunmap runs with preemption disabled (no drain first).
#[test]
fn vunmap_after_vfree_atomic_atomic_ctx() {
    let m = machine();
    let vm = vmap::vmalloc(&m).unwrap();
    let pages = alloc_pages(&m, 2);
    let p = vm
        .vmap(&pages, VmFlags::MAP, PteFlags::KERNEL)
        .unwrap()
        .as_ptr();
    vm.vfree_atomic(p).unwrap();
    let r = {
        let _g = kmem_host::preempt_disable();
        vm.vunmap(p)
    };
    eprintln!("vunmap (preempt off) after vfree_atomic: {r:?}");
    vm.purge();
    // Allocated with preemption off too: no drain on the way in.
    let q = {
        let _g = kmem_host::preempt_disable();
        vm.vmalloc_gfp(2 * PAGE_SIZE, kmem::gfp::GFP_ATOMIC)
            .unwrap()
            .as_ptr()
    };
    eprintln!("p={p:?} q={q:?}");
    unsafe { (q as *mut u64).write(0) };
    let drained = vm.drain_deferred();
    eprintln!("drained {drained}");
    assert!(
        vm.find_vm_area(q).is_some(),
        "live area q was freed by the stale deferred free (vunmap returned {r:?})"
    );
    assert!(r.is_err(), "vunmap of a queued area accepted");
}

fn exhaust(m: &kmem_host::Machine) -> (Vec<Pfn>, Vec<Pfn>) {
    use kmem::gfp::__GFP_MEMALLOC;
    let mut big = Vec::new();
    while let Ok(p) = m
        .pages()
        .alloc_pages(GFP_KERNEL | __GFP_NOWARN | __GFP_MEMALLOC, 8)
    {
        big.push(p);
    }
    let mut small = Vec::new();
    loop {
        m.pages().drain_all_pages();
        match m
            .pages()
            .alloc_pages(GFP_KERNEL | __GFP_NOWARN | __GFP_MEMALLOC, 0)
        {
            Ok(p) => small.push(p),
            Err(_) => break,
        }
    }
    (big, small)
}

/// populate: a high-order chunk split into pages, then a mapping failure
/// part-way through it: every page of the chunk must come back.
#[test]
fn populate_chunk_leak_on_map_failure() {
    use kmem::gfp::__GFP_MEMALLOC;
    let m = machine_with(64 << 20, 2);
    let vm = vmap::vmalloc(&m).unwrap();
    let (mut big, small) = exhaust(&m);
    assert_eq!(free_pages(&m), 0);
    let b = big.pop().unwrap();
    m.pages().free_pages(b, 8).unwrap();
    assert_eq!(free_pages(&m), 256);
    let c = *vm.config();
    let r = vm.vmalloc_node_range(
        256 * PAGE_SIZE,
        1,
        c.start,
        c.end,
        GFP_KERNEL | __GFP_MEMALLOC | __GFP_NOWARN,
        PteFlags::KERNEL,
        VmFlags::empty(),
        -1,
    );
    eprintln!("vmalloc under OOM: {r:?}; stats {:?}", vm.stats());
    vm.purge();
    let free = free_pages(&m);
    eprintln!("free pages after failure+purge: {free}");
    if r.is_err() {
        assert_eq!(free, 256, "pages of the split chunk leaked");
    }
    for p in big {
        m.pages().free_pages(p, 8).unwrap();
    }
    for p in small {
        m.pages().free_pages(p, 0).unwrap();
    }
}

/// vmap(VM_MAP_PUT_PAGES) whose mapping fails part-way: the pages still
/// belong to the caller, so none may be freed.
#[test]
fn vmap_put_pages_partial_failure() {
    let m = machine_with(64 << 20, 2);
    let vm = vmap::vmalloc(&m).unwrap();
    // Fill up to 2 pages before a 2 MiB boundary (area + guard).
    let first = vm.vmalloc((512 - 3) * PAGE_SIZE).unwrap().as_ptr();
    let pages = alloc_pages(&m, 4);
    let (big, small) = exhaust(&m);
    let r = vm.vmap(
        &pages,
        VmFlags::MAP | VmFlags::MAP_PUT_PAGES,
        PteFlags::KERNEL,
    );
    eprintln!("vmap under OOM: {r:?}");
    for p in big {
        m.pages().free_pages(p, 8).unwrap();
    }
    for p in small {
        m.pages().free_pages(p, 0).unwrap();
    }
    if r.is_err() {
        for (i, p) in pages.iter().enumerate() {
            let e = m.pages().free_pages(*p, 0);
            assert!(
                e.is_ok(),
                "page {i} of a failed vmap was freed by vmalloc: {e:?}"
            );
        }
    }
    let _ = first;
}

/// Unaligned start on the in-memory backend: what happens to the next
/// ordinary vmalloc?
#[test]
fn node_range_unaligned_start_in_memory() {
    let m = machine();
    let vm = vmap::in_memory(&m).unwrap();
    let c = *vm.config();
    let r = vm.vmalloc_node_range(
        PAGE_SIZE,
        1,
        c.start + 0x800,
        c.end,
        GFP_KERNEL,
        PteFlags::KERNEL,
        VmFlags::empty(),
        -1,
    );
    assert_eq!(
        r,
        Err(VmallocError::BadRange {
            start: c.start + 0x800,
            end: c.end
        }),
        "an unaligned start is refused"
    );
    vm.verify().unwrap();
    let q = vm.vmalloc(PAGE_SIZE);
    eprintln!("next vmalloc: {q:?}");
    vm.purge();
    let q2 = vm.vmalloc(PAGE_SIZE);
    eprintln!("after purge: {q2:?}");
    let mut ranges = Vec::new();
    vm.for_each_free(|s, e| ranges.push((s.0, e.0)));
    eprintln!("free ranges: {:x?}", &ranges[..ranges.len().min(4)]);
    assert!(q.is_ok() && q2.is_ok());
}

/// Two CPUs: vmalloc/vfree/vfree_atomic/vrealloc, vm_map_ram with the
/// unmap done on the *other* CPU, purges and vm_unmap_aliases, with a small
/// lazy threshold. Afterwards: trees consistent, nothing live, every page
/// (data, tables, records) back.
#[test]
fn two_cpu_stress() {
    use std::sync::Mutex;
    let m = machine_with(256 << 20, 2);
    let before = free_pages(&m);
    {
        let host = kmem_host::vmap::HostVmap::new(&m, 4 << 30).unwrap();
        let mut config = host.config();
        config.lazy_max_pages = Some(256);
        let vm = vmap::from_host(&m, host, config).unwrap();
        let frames = alloc_pages(&m, 64);
        let handoff: [Mutex<Vec<(usize, usize)>>; 2] =
            [Mutex::new(Vec::new()), Mutex::new(Vec::new())];
        std::thread::scope(|s| {
            for t in 0..2usize {
                let vm = &vm;
                let frames = &frames;
                let handoff = &handoff;
                s.spawn(move || {
                    kmem_host::set_cpu(t);
                    let mut seed = 0x1234_5678u64 + t as u64 * 77;
                    let mut rnd = move || {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        seed
                    };
                    let mut live: Vec<(usize, usize, u8)> = Vec::new();
                    for i in 0..6000 {
                        match rnd() % 10 {
                            0..=3 => {
                                let sz = (rnd() % (16 * PAGE_SIZE as u64)) as usize + 1;
                                let p = vm.vmalloc(sz).unwrap().as_ptr();
                                let tag = (i & 0xff) as u8;
                                unsafe { p.write_bytes(tag, sz) };
                                live.push((p as usize, sz, tag));
                            }
                            4..=5 if !live.is_empty() => {
                                let j = (rnd() as usize) % live.len();
                                let (p, sz, tag) = live.swap_remove(j);
                                let s = unsafe { std::slice::from_raw_parts(p as *const u8, sz) };
                                assert!(s.iter().all(|&b| b == tag), "data of {p:#x} changed");
                                if rnd() % 3 == 0 {
                                    let _irq = kmem_host::irq();
                                    vm.vfree(p as *const u8).unwrap();
                                } else {
                                    vm.vfree(p as *const u8).unwrap();
                                }
                            }
                            6 if !live.is_empty() => {
                                let j = (rnd() as usize) % live.len();
                                let (p, sz, tag) = live[j];
                                let nsz = (rnd() % (24 * PAGE_SIZE as u64)) as usize + 1;
                                let q = vm
                                    .vrealloc(p as *const u8, nsz, GFP_KERNEL)
                                    .unwrap()
                                    .unwrap()
                                    .as_ptr();
                                let keep = sz.min(nsz);
                                let s = unsafe { std::slice::from_raw_parts(q, keep) };
                                assert!(s.iter().all(|&b| b == tag), "vrealloc lost data");
                                unsafe { q.write_bytes(tag, nsz) };
                                live[j] = (q as usize, nsz, tag);
                            }
                            7 => {
                                let n = (rnd() % 8) as usize + 1;
                                let off = (rnd() % 32) as usize;
                                let a = vm.vm_map_ram(&frames[off..off + n], -1).unwrap().as_ptr();
                                handoff[1 - t].lock().unwrap().push((a as usize, n));
                            }
                            8 => {
                                let v: Vec<_> = std::mem::take(&mut *handoff[t].lock().unwrap());
                                for (a, n) in v {
                                    vm.vm_unmap_ram(a as *const u8, n).unwrap();
                                }
                            }
                            _ => {
                                if rnd() % 4 == 0 {
                                    vm.vm_unmap_aliases();
                                } else {
                                    vm.purge();
                                }
                            }
                        }
                    }
                    for (p, _, _) in live {
                        vm.vfree(p as *const u8).unwrap();
                    }
                });
            }
        });
        for h in &handoff {
            for (a, n) in std::mem::take(&mut *h.lock().unwrap()) {
                vm.vm_unmap_ram(a as *const u8, n).unwrap();
            }
        }
        vm.drain_deferred();
        vm.purge_all_for_probe();
        vm.verify().unwrap();
        let st = vm.stats();
        eprintln!("{st:?}");
        let mut busy = Vec::new();
        vm.for_each_area(|a| busy.push(*a));
        eprintln!("busy left: {busy:?}");
        assert_eq!(vm.nr_vmalloc_pages(), 0);
        for f in frames {
            m.pages().free_pages(f, 0).unwrap();
        }
    }
    assert_eq!(free_pages(&m), before, "pages leaked");
}

trait PurgeAll {
    fn purge_all_for_probe(&self);
}
impl<B: PageTables> PurgeAll for kmem::vmalloc::Vmalloc<'_, kmem_host::HostPlatform, B> {
    fn purge_all_for_probe(&self) {
        // Retire the current vmap blocks if empty, and flush.
        self.vm_unmap_aliases();
        self.purge();
    }
}

/// Linux's vm_unmap_aliases purges fragmented blocks (free + dirty == all)
/// first; here the emptied current block stays, and dropping the allocator
/// then reports it as a leaked live area.
#[test]
fn unmap_aliases_keeps_empty_block() {
    let m = machine();
    {
        let vm = vmap::vmalloc(&m).unwrap();
        let pages = alloc_pages(&m, 1);
        kmem_host::set_cpu(0);
        let a = vm.vm_map_ram(&pages, -1).unwrap().as_ptr();
        vm.vm_unmap_ram(a, 1).unwrap();
        vm.vm_unmap_aliases();
        eprintln!("busy after vm_unmap_aliases: {}", vm.stats().busy_areas);
    }
    let warned = m.platform().log_contains("still allocated at teardown");
    eprintln!("teardown warning: {warned}");
    assert!(
        !warned,
        "spurious 'areas still allocated' warning after everything was unmapped"
    );
}

/// Internal flags from the caller (here DEFERRED_FREE, which would make an
/// area nobody can free) are refused with BadFlags naming them, and the
/// refused call leaves nothing behind.
#[test]
fn internal_vm_flags_refused() {
    let m = machine();
    let vm = vmap::vmalloc(&m).unwrap();
    let c = *vm.config();
    let before = free_pages(&m);
    let r = vm.vmalloc_node_range(
        PAGE_SIZE,
        1,
        c.start,
        c.end,
        GFP_KERNEL,
        PteFlags::KERNEL,
        VmFlags::DEFERRED_FREE,
        -1,
    );
    assert_eq!(
        r,
        Err(VmallocError::BadFlags {
            flags: VmFlags::DEFERRED_FREE
        }),
        "vmalloc_node_range(DEFERRED_FREE)"
    );
    let mut areas = 0;
    vm.for_each_area(|_| areas += 1);
    assert_eq!(areas, 0, "a refused call leaves no area");
    assert_eq!(free_pages(&m), before, "a refused call takes no page");
    vm.verify().unwrap();
}

/// Two CPUs unmapping the same `vm_map_ram` range at the same instant (a
/// double unmap that races): exactly one succeeds and the other is refused
/// as a double free, every round. When the check came before the unmap,
/// both could pass it, and both counted the pages dirty: the block then
/// looked fully unmapped while its other pieces were still mapped.
#[test]
fn racing_double_vm_unmap_ram_lets_one_through() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    let m = machine();
    let vm = vmap::vmalloc(&m).unwrap();
    let pages = alloc_pages(&m, 2);
    // A neighbour in the same block that stays mapped throughout.
    let keep = vm.vm_map_ram(&pages[1..], -1).unwrap().as_ptr();
    const ROUNDS: usize = 3000;
    let addr = AtomicUsize::new(0);
    let refused = AtomicUsize::new(0);
    let wins = race_common::lockstep(
        ROUNDS,
        |_| {
            let a = vm.vm_map_ram(&pages[..1], -1).unwrap().as_ptr();
            addr.store(a as usize, SeqCst);
        },
        |_, round| match vm.vm_unmap_ram(addr.load(SeqCst) as *const u8, 1) {
            Ok(()) => true,
            Err(VfreeError::DoubleFree { .. }) => {
                refused.fetch_add(1, SeqCst);
                false
            }
            Err(e) => panic!("round {round}: {e:?}"),
        },
    );
    assert_eq!(
        (wins, refused.load(SeqCst)),
        (ROUNDS, ROUNDS),
        "each round one unmap must succeed and one be refused"
    );
    check_mapping(&vm, keep, PAGE_SIZE);
    vm.vm_unmap_ram(keep, 1).unwrap();
    vm.vm_unmap_aliases();
    vm.verify().unwrap();
    m.platform().take_log();
    for pfn in pages {
        m.pages().free_pages(pfn, 0).unwrap();
    }
}

/// x86 tables whose `unmap_range` panics once armed: a backend bug in the
/// middle of a teardown.
struct PanicsOnUnmap<'a> {
    inner: kmem::paging::X86PageTables<'a, kmem_host::HostPlatform>,
    armed: std::sync::atomic::AtomicBool,
}

impl PageTables for PanicsOnUnmap<'_> {
    fn map(
        &self,
        va: VirtAddr,
        pa: kmem::addr::PhysAddr,
        size: kmem::paging::PageSize,
        flags: PteFlags,
        gfp: kmem::Gfp,
    ) -> Result<kmem::paging::Flush<'_, Self>, kmem::paging::MapError> {
        self.inner
            .map(va, pa, size, flags, gfp)
            .map(|f| kmem::paging::Flush::new(self, f.addr()))
    }
    fn unmap(
        &self,
        va: VirtAddr,
    ) -> Result<(kmem::paging::Translation, kmem::paging::Flush<'_, Self>), kmem::paging::UnmapError>
    {
        self.inner
            .unmap(va)
            .map(|(t, f)| (t, kmem::paging::Flush::new(self, f.addr())))
    }
    fn unmap_range(
        &self,
        start: VirtAddr,
        end: VirtAddr,
        on_leaf: &mut dyn FnMut(VirtAddr, kmem::addr::PhysAddr, kmem::paging::PageSize),
    ) -> kmem::paging::FlushRange<'_, Self> {
        if self.armed.swap(false, std::sync::atomic::Ordering::Relaxed) {
            panic!("backend bug in unmap_range");
        }
        let (s, e) = self.inner.unmap_range(start, end, on_leaf).range();
        kmem::paging::FlushRange::new(self, s, e)
    }
    fn translate(
        &self,
        va: VirtAddr,
    ) -> Result<kmem::paging::Translation, kmem::paging::TranslateError> {
        self.inner.translate(va)
    }
    fn free_empty_tables(&self, start: VirtAddr, end: VirtAddr) -> usize {
        self.inner.free_empty_tables(start, end)
    }
    fn flush_page(&self, va: VirtAddr) {
        self.inner.flush_page(va)
    }
    fn flush_range(&self, start: VirtAddr, end: VirtAddr) {
        self.inner.flush_range(start, end)
    }
    fn flush_all(&self) {
        self.inner.flush_all()
    }
}

/// A backend that panics in the middle of a vfree's teardown leaves the
/// area on the lazy list; the purge after it (Vmalloc's Drop runs one
/// while a panicking test unwinds) must still finish. It waited forever
/// for the record's UNMAPPING flag, which the unwound teardown never
/// cleared: a panic became a hang.
#[test]
fn a_panic_in_teardown_does_not_hang_the_purge() {
    let m: &'static kmem_host::Machine = Box::leak(Box::new(machine()));
    let tables = PanicsOnUnmap {
        inner: kmem::paging::X86PageTables::new(m.pages()).unwrap(),
        armed: std::sync::atomic::AtomicBool::new(false),
    };
    let vm = kmem::vmalloc::Vmalloc::new(m.pages(), tables, kmem::vmalloc::VmallocConfig::x86_64())
        .unwrap();
    let vm: &'static _ = Box::leak(Box::new(vm));
    let p = vm.vmalloc(3 * PAGE_SIZE).unwrap().as_ptr() as usize;
    vm.tables()
        .armed
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| vm.vfree(p as *const u8)));
    assert!(r.is_err(), "the backend panicked");
    // The purge on its own thread: a hang shows as a timeout, not as a
    // test binary that never ends.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(vm.purge()).unwrap());
    let n = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the purge waited forever for the torn-down area");
    assert_eq!(n, 1, "the area was purged");
}
