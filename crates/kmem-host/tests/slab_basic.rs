//! kmalloc and kmem_cache basics on a real hosted machine: classes,
//! alignment, limits, zeroing, ksize, slabinfo, page accounting.

use kmem::gfp::{Gfp, GFP_ATOMIC, GFP_DMA, GFP_KERNEL};
use kmem::slab::{SlabAllocator, SlabConfig, SlabFlags, ZERO_SIZE_PTR};
use kmem_host::{Machine, MachineConfig};

fn machine() -> Machine {
    Machine::new(MachineConfig {
        ram_bytes: 256 << 20,
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn kmalloc_smoke() {
    let m = machine();
    let free0 = m.pages().nr_free_pages_with_pcp();
    {
        let slab = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
        let mut ptrs = Vec::new();
        for size in [
            1usize, 8, 9, 64, 65, 96, 100, 192, 200, 4096, 8192, 8193, 100_000,
        ] {
            let p = slab.kmalloc(size, GFP_KERNEL).unwrap();
            unsafe { p.as_ptr().write_bytes(0xa5, size) };
            ptrs.push((p, size));
        }
        for (p, size) in &ptrs {
            let s = unsafe { std::slice::from_raw_parts(p.as_ptr(), *size) };
            assert!(s.iter().all(|&b| b == 0xa5));
            slab.kfree(p.as_ptr()).unwrap();
        }
        let mut s = String::new();
        kmem::slab::slabinfo::slabinfo(&slab, &mut s).unwrap();
        println!("{s}");
    }
    let free1 = m.pages().nr_free_pages_with_pcp();
    assert_eq!(free0, free1, "every page back after drop");
}

#[test]
fn zero_size_and_null() {
    let m = machine();
    let slab = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
    let p = slab.kmalloc(0, GFP_KERNEL).unwrap();
    assert_eq!(p.as_ptr() as usize, ZERO_SIZE_PTR);
    slab.kfree(p.as_ptr()).unwrap();
    slab.kfree(std::ptr::null()).unwrap();
    assert_eq!(slab.ksize(p.as_ptr()), 0);
    let _ = (GFP_ATOMIC, GFP_DMA, Gfp::ZERO, SlabFlags::empty());
}

/// objsize, objperslab, pagesperslab of Linux 6.18's kmalloc caches on a
/// 2-CPU x86-64 machine (shared/traces/build/after.slabinfo).
const LINUX_GEOMETRY: [(&str, usize, u32, u32); 13] = [
    ("kmalloc-8k", 8192, 4, 8),
    ("kmalloc-4k", 4096, 8, 8),
    ("kmalloc-2k", 2048, 16, 8),
    ("kmalloc-1k", 1024, 16, 4),
    ("kmalloc-512", 512, 16, 2),
    ("kmalloc-256", 256, 16, 1),
    ("kmalloc-128", 128, 32, 1),
    ("kmalloc-64", 64, 64, 1),
    ("kmalloc-32", 32, 128, 1),
    ("kmalloc-16", 16, 256, 1),
    ("kmalloc-8", 8, 512, 1),
    ("kmalloc-192", 192, 21, 1),
    ("kmalloc-96", 96, 42, 1),
];

#[test]
fn kmalloc_geometry_matches_linux() {
    let m = machine();
    let slab = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
    for (name, objsize, perslab, pages) in LINUX_GEOMETRY {
        for prefix in ["", "dma-", "kmalloc-rcl-", "kmalloc-cg-"] {
            let n = match prefix {
                "" => name.to_string(),
                "dma-" => format!("dma-{name}"),
                p => format!("{p}{}", &name["kmalloc-".len()..]),
            };
            let c = slab.find_cache(&n).unwrap_or_else(|| panic!("{n} exists"));
            let row = c.slabinfo_row();
            assert_eq!(
                (row.objsize, row.objperslab, row.pagesperslab),
                (objsize, perslab, pages),
                "{n}"
            );
        }
    }
    // The same creation order as Linux: slabinfo lists newest first, the
    // kmalloc-cg set on top, kmem_cache last.
    let mut s = String::new();
    kmem::slab::slabinfo::slabinfo(&slab, &mut s).unwrap();
    let names: Vec<&str> = s
        .lines()
        .skip(2)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(names[0], "kmalloc-cg-8k");
    assert_eq!(names[12], "kmalloc-cg-96");
    assert_eq!(names[13], "dma-kmalloc-8k");
    assert_eq!(names[26], "kmalloc-rcl-8k");
    assert_eq!(names[39], "kmalloc-8k");
    assert_eq!(names[51], "kmalloc-96");
    assert_eq!(*names.last().unwrap(), "kmem_cache");
}

#[test]
fn slabinfo_format_and_counts() {
    let m = machine();
    let slab = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
    let v: Vec<_> = (0..100)
        .map(|_| slab.kmalloc(64, GFP_KERNEL).unwrap())
        .collect();
    let mut s = String::new();
    kmem::slab::slabinfo::slabinfo(&slab, &mut s).unwrap();
    let mut lines = s.lines();
    assert_eq!(lines.next().unwrap(), "slabinfo - version: 2.1");
    assert_eq!(
        lines.next().unwrap(),
        "# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : tunables <limit> <batchcount> <sharedfactor> : slabdata <active_slabs> <num_slabs> <sharedavail>"
    );
    let line = s.lines().find(|l| l.starts_with("kmalloc-64 ")).unwrap();
    // Linux: "%-17s %6lu %6lu %6u %4u %4d : tunables %4u %4u %4u : slabdata %6lu %6lu %6lu"
    assert_eq!(
        line,
        "kmalloc-64           128    128     64   64    1 : tunables    0    0    0 : slabdata      2      2      0"
    );
    for p in v {
        slab.kfree(p.as_ptr()).unwrap();
    }
    let c = slab.find_cache("kmalloc-64").unwrap();
    c.shrink();
    assert_eq!(c.active_objects(), 0);
    let mut st = String::new();
    c.write_stats(&mut st).unwrap();
    assert!(st.contains("alloc_fastpath "), "{st}");
    assert!(st.contains("free_fastpath 100"), "{st}");
}

#[test]
fn zones_types_and_alignment() {
    let m = machine();
    let slab = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
    let dma_limit = 16usize << 20;
    let p = slab.kmalloc(100, GFP_KERNEL | GFP_DMA).unwrap();
    let pa = m
        .pages()
        .virt_to_phys(kmem::addr::VirtAddr(p.as_ptr() as usize))
        .unwrap();
    assert!((pa.0 as usize) < dma_limit, "GFP_DMA kmalloc below 16 MiB");
    slab.kfree(p.as_ptr()).unwrap();
    for (gfp, name) in [
        (GFP_KERNEL, "kmalloc-128"),
        (GFP_KERNEL | Gfp::RECLAIMABLE, "kmalloc-rcl-128"),
        (GFP_KERNEL | Gfp::ACCOUNT, "kmalloc-cg-128"),
        (GFP_ATOMIC | GFP_DMA, "dma-kmalloc-128"),
    ] {
        assert_eq!(slab.kmalloc_slab(100, gfp).name(), name);
    }
    // Power-of-two sizes are naturally aligned, others to their largest
    // power-of-two divisor.
    for (size, align) in [
        (8, 8),
        (64, 64),
        (96, 32),
        (192, 64),
        (512, 512),
        (4096, 4096),
        (8192, 8192),
        (20000, 4096),
    ] {
        let v: Vec<_> = (0..20)
            .map(|_| slab.kmalloc(size, GFP_KERNEL).unwrap())
            .collect();
        for p in &v {
            assert_eq!(p.as_ptr() as usize % align, 0, "kmalloc({size})");
        }
        for p in v {
            slab.kfree(p.as_ptr()).unwrap();
        }
    }
    // kmalloc_node on the only node.
    let p = slab.kmalloc_node(64, GFP_KERNEL, 0).unwrap();
    slab.kfree(p.as_ptr()).unwrap();
}

#[test]
fn merging_and_refcounts() {
    let m = machine();
    let slab = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
    let n0 = slab.nr_caches();
    let a = slab
        .kmem_cache_create("merge_a", 60, 0, SlabFlags::empty(), None)
        .unwrap();
    let b = slab
        .kmem_cache_create("merge_b", 58, 0, SlabFlags::empty(), None)
        .unwrap();
    assert!(
        std::ptr::eq::<kmem::slab::KmemCache<_>>(&*a, &*b),
        "compatible caches merge"
    );
    assert_eq!(a.refcount(), 2);
    assert_eq!(slab.nr_caches(), n0 + 1);
    let c = slab
        .kmem_cache_create("merge_c", 60, 0, SlabFlags::NO_MERGE, None)
        .unwrap();
    assert!(!std::ptr::eq::<kmem::slab::KmemCache<_>>(&*a, &*c));
    let d = slab
        .kmem_cache_create("merge_d", 60, 0, SlabFlags::RECLAIM_ACCOUNT, None)
        .unwrap();
    assert!(
        !std::ptr::eq::<kmem::slab::KmemCache<_>>(&*a, &*d),
        "flags must agree"
    );
    let p = b.alloc(GFP_KERNEL).unwrap();
    a.destroy().unwrap();
    // b still works: the cache lives while a reference is left.
    b.free(p).unwrap();
    b.destroy().unwrap();
    c.destroy().unwrap();
    d.destroy().unwrap();
    assert_eq!(slab.nr_caches(), n0);
    let nomerge = SlabAllocator::new(
        m.pages(),
        SlabConfig {
            merge: false,
            ..Default::default()
        },
    )
    .unwrap();
    let x = nomerge
        .kmem_cache_create("x", 60, 0, SlabFlags::empty(), None)
        .unwrap();
    let y = nomerge
        .kmem_cache_create("y", 60, 0, SlabFlags::empty(), None)
        .unwrap();
    assert!(
        !std::ptr::eq::<kmem::slab::KmemCache<_>>(&*x, &*y),
        "slab_nomerge"
    );
}

/// Linux's `__kmem_cache_alias`: a cache merges into one whose stride
/// holds its (aligned) objects even when they are larger than the existing
/// cache's objects, which then grow: `kmem_cache_size` tells the largest, and
/// `kmem_cache_zalloc` clears all of it for every alias.
#[test]
fn merging_grows_the_object_size() {
    let m = machine();
    let slab = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
    let n0 = slab.nr_caches();
    let hw = SlabFlags::HWCACHE_ALIGN;
    // 40 bytes, cache-line aligned: a 64-byte stride.
    let a = slab.kmem_cache_create("grow_a", 40, 0, hw, None).unwrap();
    assert_eq!((a.object_size(), a.slab_size(), a.inuse()), (40, 64, 40));
    // 60 bytes fit the 64-byte stride: merged, the objects grow.
    let b = slab.kmem_cache_create("grow_b", 60, 0, hw, None).unwrap();
    assert!(
        std::ptr::eq::<kmem::slab::KmemCache<_>>(&*a, &*b),
        "a larger object that fits the stride merges"
    );
    assert_eq!((a.object_size(), a.slab_size(), a.inuse()), (60, 64, 64));
    assert_eq!(b.object_size(), 60);
    // A smaller one merges too and shrinks nothing.
    let c = slab.kmem_cache_create("grow_c", 48, 0, hw, None).unwrap();
    assert!(std::ptr::eq::<kmem::slab::KmemCache<_>>(&*a, &*c));
    assert_eq!((a.object_size(), a.inuse()), (60, 64));
    assert_eq!(a.refcount(), 3);
    // 72 bytes need a 128-byte stride: a cache of its own.
    let d = slab.kmem_cache_create("grow_d", 72, 0, hw, None).unwrap();
    assert!(!std::ptr::eq::<kmem::slab::KmemCache<_>>(&*a, &*d));
    assert_eq!(d.object_size(), 72);
    assert_eq!(slab.nr_caches(), n0 + 2);

    // Dirty objects through the first alias, then zalloc through each:
    // all 60 bytes come back zeroed.
    let dirty: Vec<_> = (0..64).map(|_| a.alloc(GFP_KERNEL).unwrap()).collect();
    for p in &dirty {
        unsafe { p.as_ptr().write_bytes(0xa5, 60) };
    }
    for p in dirty {
        a.free(p).unwrap();
    }
    for alias in [&a, &b, &c] {
        let v: Vec<_> = (0..32).map(|_| alias.zalloc(GFP_KERNEL).unwrap()).collect();
        for p in &v {
            let bytes = unsafe { std::slice::from_raw_parts(p.as_ptr(), 60) };
            assert!(
                bytes.iter().all(|&x| x == 0),
                "zalloc clears the grown object"
            );
            unsafe { p.as_ptr().write_bytes(0xa5, 60) };
        }
        for p in v {
            alias.free(p).unwrap();
        }
    }
    for cache in [a, b, c, d] {
        cache.destroy().unwrap();
    }
    assert_eq!(slab.nr_caches(), n0);
}

#[test]
fn empty_slabs_go_back_beyond_min_partial() {
    let m = machine();
    let slab = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
    let c = slab
        .kmem_cache_create("minpart", 256, 0, SlabFlags::NO_MERGE, None)
        .unwrap();
    let free0 = m.pages().nr_free_pages_with_pcp();
    let v: Vec<_> = (0..2000).map(|_| c.alloc(GFP_KERNEL).unwrap()).collect();
    assert!(c.nr_slabs() >= 2000 / 16);
    for p in v {
        c.free(p).unwrap();
    }
    c.flush_all();
    // At most min_partial empty slabs stay per node.
    assert!(
        c.nr_slabs() <= c.min_partial(),
        "{} slabs kept",
        c.nr_slabs()
    );
    c.shrink();
    assert_eq!(c.nr_slabs(), 0);
    assert_eq!(m.pages().nr_free_pages_with_pcp(), free0);
    c.destroy().unwrap();
}

#[test]
fn context_policy_warn_downgrades() {
    let m = Machine::new(MachineConfig {
        ram_bytes: 64 << 20,
        context_policy: kmem::context::ContextPolicy::Warn,
        ..Default::default()
    })
    .unwrap();
    let slab = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
    let _irq = kmem_host::irq();
    // Reported, then served as if non-blocking (Linux goes on).
    let v: Vec<_> = (0..300)
        .map(|_| slab.kmalloc(128, GFP_KERNEL).unwrap())
        .collect();
    assert!(m
        .platform()
        .log_contains("sleeping function called from invalid context"));
    for p in v {
        slab.kfree(p.as_ptr()).unwrap();
    }
}
