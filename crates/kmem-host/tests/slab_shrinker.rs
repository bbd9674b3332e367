//! The slab allocator as a shrinker: free objects parked in sheaves, CPU
//! lists and empty slabs come back to the page allocator under memory
//! pressure, so that a page allocation that may reclaim does not fail while
//! the slab allocator sits on free memory.
//!
//! Each test builds its own small machine and leaks it with its allocator
//! (a registered shrinker must live for the rest of the program).

use kmem::addr::Pfn;
use kmem::gfp::{Gfp, GFP_KERNEL, GFP_NOWAIT};
use kmem::slab::{SlabAllocator, SlabConfig};
use kmem_host::{HostPlatform, Machine, MachineConfig};
use std::ptr::NonNull;

/// Objects parked by each test (4 KiB each: 16 MiB of a 64 MiB machine).
const OBJECTS: usize = 4096;

/// A leaked 64 MiB, 2-CPU machine and a leaked slab allocator over it.
fn leaked() -> (
    &'static Machine,
    &'static SlabAllocator<'static, HostPlatform>,
) {
    let m: &'static Machine = Box::leak(Box::new(
        Machine::new(MachineConfig {
            ram_bytes: 64 << 20,
            nr_cpus: 2,
            echo_warnings: false,
            ..Default::default()
        })
        .unwrap(),
    ));
    let slab = Box::leak(Box::new(
        SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap(),
    ));
    (m, slab)
}

/// Allocates and frees `OBJECTS` 4 KiB objects: every one ends up free but
/// held by the slab allocator (in CPU 0's sheaf, and in slabs that the
/// sheaf's objects keep from being empty).
fn park_objects(slab: &SlabAllocator<'static, HostPlatform>) {
    kmem_host::set_cpu(0);
    let objs: Vec<NonNull<u8>> = (0..OBJECTS)
        .map(|_| slab.kmalloc(4096, GFP_KERNEL).unwrap())
        .collect();
    for p in objs {
        slab.kfree(p.as_ptr()).unwrap();
    }
}

/// Takes order-0 pages with `gfp` until the page allocator refuses.
fn grab_all(m: &Machine, gfp: Gfp) -> Vec<Pfn> {
    let mut got = Vec::new();
    while let Ok(pfn) = m.pages().alloc_pages(gfp | Gfp::NOWARN, 0) {
        got.push(pfn);
    }
    got
}

fn give_back(m: &Machine, pages: Vec<Pfn>) {
    for pfn in pages {
        m.pages().free_pages(pfn, 0).unwrap();
    }
}

/// Every cache validates without an error.
fn assert_caches_valid(slab: &SlabAllocator<'static, HostPlatform>) {
    slab.for_each_cache(|c| {
        let r = c.validate();
        assert_eq!(r.errors, 0, "{}: {r:?}", c.name());
    });
}

/// Slab pages the kmalloc-4096 cache holds.
fn kmalloc_4k_slabs(slab: &SlabAllocator<'static, HostPlatform>) -> usize {
    slab.find_cache("kmalloc-4k").unwrap().nr_slabs()
}

#[test]
fn reclaim_takes_back_what_the_sheaves_hold() {
    let (m, slab) = leaked();
    slab.register_shrinker().unwrap();
    park_objects(slab);
    let held = kmalloc_4k_slabs(slab);
    assert!(held > 0, "the freed objects are parked in the cache");
    let before = m.pages().vmstat();

    // Pages that may not reclaim run out while the slab still holds some.
    let nowait = grab_all(m, GFP_NOWAIT);
    assert!(kmalloc_4k_slabs(slab) > 0);
    // Pages that may reclaim make the slab give everything back.
    let kernel = grab_all(m, GFP_KERNEL);
    let after = m.pages().vmstat();
    assert_eq!(
        kmalloc_4k_slabs(slab),
        0,
        "reclaim emptied the sheaves and gave every empty slab back"
    );
    assert!(after.direct_reclaim > before.direct_reclaim);
    // At least the sheaf's 1024 objects' pages (4 MiB) came back.
    assert!(
        after.reclaim_freed - before.reclaim_freed >= 1024,
        "the shrinker reported the pages it gave back ({} pages)",
        after.reclaim_freed - before.reclaim_freed
    );
    assert!(
        kernel.len() >= 1024,
        "the sheaf's 4 MiB (1024 pages) at least came back: {} pages",
        kernel.len()
    );

    // Everything still works: the pages go back, kmalloc serves again and
    // the caches validate.
    give_back(m, nowait);
    give_back(m, kernel);
    let p = slab.kmalloc(4096, GFP_KERNEL).unwrap();
    // SAFETY: a fresh 4 KiB object.
    unsafe { p.as_ptr().write_bytes(0x5a, 4096) };
    slab.kfree(p.as_ptr()).unwrap();
    assert_caches_valid(slab);
}

#[test]
fn without_the_shrinker_the_memory_stays_parked() {
    // The control: the same pressure on an allocator that did not register.
    let (m, slab) = leaked();
    park_objects(slab);
    let held = kmalloc_4k_slabs(slab);
    let got = grab_all(m, GFP_KERNEL);
    assert_eq!(
        kmalloc_4k_slabs(slab),
        held,
        "nothing asked the slab allocator for its memory"
    );
    give_back(m, got);
    // Shrinking by hand gives it back.
    assert!(slab.shrink_all() > 0);
    assert_eq!(kmalloc_4k_slabs(slab), 0);
}

#[test]
fn shrinking_under_live_objects_keeps_them() {
    // Reclaim with objects still allocated in every kmalloc class: they
    // keep their contents and can be freed afterwards.
    let (m, slab) = leaked();
    slab.register_shrinker().unwrap();
    kmem_host::set_cpu(1);
    let live: Vec<(NonNull<u8>, usize)> = (0..2000)
        .map(|i| {
            let size = 8 << (i % 10);
            let p = slab.kmalloc(size, GFP_KERNEL).unwrap();
            // SAFETY: a fresh object of at least `size` bytes.
            unsafe { p.as_ptr().write_bytes(i as u8, size) };
            (p, size)
        })
        .collect();
    park_objects(slab);
    let got = grab_all(m, GFP_KERNEL);
    assert_eq!(kmalloc_4k_slabs(slab) > 0, live.iter().any(|l| l.1 == 4096));
    give_back(m, got);
    for (i, (p, size)) in live.into_iter().enumerate() {
        // SAFETY: still allocated, `size` bytes.
        let bytes = unsafe { std::slice::from_raw_parts(p.as_ptr(), size) };
        assert!(bytes.iter().all(|&b| b == i as u8), "object {i} kept");
        slab.kfree(p.as_ptr()).unwrap();
    }
    assert_caches_valid(slab);
}

#[test]
fn reclaim_while_another_cpu_allocates() {
    // One thread runs kmalloc/kfree with contents checked while the other
    // drives the machine out of pages again and again, so that the
    // shrinker flushes the first thread's CPU under its feet.
    let (m, slab) = leaked();
    slab.register_shrinker().unwrap();
    let before = m.pages().vmstat();
    std::thread::scope(|s| {
        s.spawn(|| {
            kmem_host::set_cpu(0);
            let mut live: Vec<(NonNull<u8>, usize, u8)> = Vec::new();
            for i in 0..60_000usize {
                if live.len() < 300 && i % 3 != 2 {
                    let size = 8 + (i * 7919) % 4089;
                    // Page allocations elsewhere may exhaust memory for a
                    // moment: a failed kmalloc is fine, a wrong one is not.
                    if let Ok(p) = slab.kmalloc(size, GFP_KERNEL | kmem::gfp::Gfp::NOWARN) {
                        let tag = i as u8;
                        // SAFETY: a fresh object of `size` bytes.
                        unsafe { p.as_ptr().write_bytes(tag, size) };
                        live.push((p, size, tag));
                    }
                } else if let Some((p, size, tag)) = live.pop() {
                    // SAFETY: allocated above, `size` bytes.
                    let b = unsafe { std::slice::from_raw_parts(p.as_ptr(), size) };
                    assert!(b.iter().all(|&x| x == tag), "object at {p:p} kept");
                    slab.kfree(p.as_ptr()).unwrap();
                }
            }
            for (p, _, _) in live {
                slab.kfree(p.as_ptr()).unwrap();
            }
        });
        s.spawn(|| {
            kmem_host::set_cpu(1);
            for _ in 0..20 {
                let got = grab_all(m, GFP_KERNEL);
                give_back(m, got);
            }
        });
    });
    assert!(m.pages().vmstat().direct_reclaim > before.direct_reclaim);
    assert_caches_valid(slab);
    // Everything the first thread had comes back on a final shrink.
    slab.shrink_all();
    assert_eq!(kmalloc_4k_slabs(slab), 0);
}

#[test]
fn a_round_shrinks_caches_in_turn_until_it_has_enough() {
    use kmem::Shrinker;
    let (m, slab) = leaked();
    slab.register_shrinker().unwrap();
    kmem_host::set_cpu(0);
    // Park objects in two caches.
    for size in [2048usize, 4096] {
        let objs: Vec<NonNull<u8>> = (0..1024)
            .map(|_| slab.kmalloc(size, GFP_KERNEL).unwrap())
            .collect();
        for p in objs {
            slab.kfree(p.as_ptr()).unwrap();
        }
    }
    let slabs = |name: &str| slab.find_cache(name).unwrap().nr_slabs();
    let parked = || [slabs("kmalloc-2k"), slabs("kmalloc-4k")];
    assert!(parked().iter().all(|&n| n > 0), "{:?}", parked());
    // One page asked for: the round stops at the first cache that gives
    // memory back, so one of the two keeps its objects.
    let got = slab.scan_objects(m.pages(), 1, GFP_KERNEL);
    assert!(got >= 1, "pages came back: {got}");
    let after_one = parked();
    assert_eq!(
        after_one.iter().filter(|&&n| n == 0).count(),
        1,
        "exactly one of the two caches was shrunk: {after_one:?}"
    );
    // The next rounds start after it, so the other one's turn comes before
    // the first comes round again.
    for _ in 0..slab.nr_caches() {
        if parked() == [0, 0] {
            break;
        }
        slab.scan_objects(m.pages(), 1, GFP_KERNEL);
    }
    assert_eq!(parked(), [0, 0]);
    // Asking for more than everything shrinks every cache in one round.
    park_objects(slab);
    assert!(slabs("kmalloc-4k") > 0);
    slab.scan_objects(m.pages(), usize::MAX, GFP_KERNEL);
    assert_eq!(parked(), [0, 0]);
}
