//! The slab allocator's normal paths against Linux (written in review):
//! layouts equal a transcription of Linux's calculate_sizes /
//! calculate_order / calculate_alignment over a grid of sizes, aligns,
//! flags and CPU counts (and `slab_min_order` above `slab_max_order` raises
//! the maximum, as setup_slub_min_order: that one failed before); every
//! kmalloc size's class, ksize and alignment, with and without debugging;
//! krealloc's rules; slabinfo after random use and shrinks; every page back
//! after destroy and shrink; kmalloc_node on two nodes; remote frees
//! reusable with nothing handed out twice; bulk round trips.

mod slab_common;

use kmem::addr::VirtAddr;
use kmem::gfp::{Gfp, GFP_KERNEL};
use kmem::slab::kmalloc::kmalloc_size_roundup;
use kmem::slab::{Layout, SlabConfig, SlabFlags};
use kmem_host::{run_on_cpu, Machine, MachineConfig};
use slab_common::{machine, slab, two_nodes, Rng};
use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;

// ------------------------------------------------------------ Linux reference

const PAGE: usize = 4096;
fn get_order(size: usize) -> u32 {
    let mut o = 0;
    while (PAGE << o) < size {
        o += 1;
    }
    o
}
fn fls(x: usize) -> u32 {
    usize::BITS - x.leading_zeros()
}
fn lx_calculate_order(size: usize, nr_cpus: usize) -> u32 {
    let max_order = 3u32;
    let min_objects = 4 * (fls(nr_cpus.max(1)) + 1);
    let max_objects = (((PAGE << max_order) / size) as u32).max(1);
    let min_objects = min_objects.min(max_objects);
    let min_order = get_order(min_objects as usize * size);
    if ((PAGE << min_order) / size) as u32 > 32767 {
        return get_order(size * 32767) - 1;
    }
    let mut fraction = 16;
    while fraction > 1 {
        let mut order = min_order;
        while order <= max_order {
            let slab_size = PAGE << order;
            if slab_size % size <= slab_size / fraction {
                break;
            }
            order += 1;
        }
        if order <= max_order {
            return order;
        }
        fraction /= 2;
    }
    get_order(size)
}
fn lx_align(flags: SlabFlags, align: usize, size: usize) -> usize {
    let mut align = align;
    if flags.contains(SlabFlags::HWCACHE_ALIGN) {
        let mut ralign = 64;
        while size <= ralign / 2 {
            ralign /= 2;
        }
        align = align.max(ralign);
    }
    align = align.max(8);
    (align + 7) & !7
}
/// (size, offset, inuse, red_left_pad, order, objects)
fn lx_sizes(
    object_size: usize,
    align: usize,
    flags: SlabFlags,
    ctor: bool,
    nr_cpus: usize,
) -> (usize, usize, usize, usize, u32, u32) {
    let align = lx_align(flags, align, object_size);
    let mut size = (object_size + 7) & !7;
    if flags.contains(SlabFlags::RED_ZONE) && size == object_size {
        size += 8;
    }
    let inuse = size;
    let orig = flags.contains(SlabFlags::STORE_USER) && flags.contains(SlabFlags::KMALLOC);
    let offset;
    if flags.contains(SlabFlags::TYPESAFE_BY_RCU)
        || flags.contains(SlabFlags::POISON)
        || ctor
        || (flags.contains(SlabFlags::RED_ZONE) && (object_size < 8 || orig))
    {
        offset = size;
        size += 8;
    } else {
        offset = (object_size / 2) & !7;
    }
    if flags.contains(SlabFlags::STORE_USER) {
        size += 2 * 32;
        if flags.contains(SlabFlags::KMALLOC) {
            size += 4;
        }
    }
    let mut rlp = 0;
    if flags.contains(SlabFlags::RED_ZONE) {
        size += 8;
        rlp = (8 + align - 1) & !(align - 1);
        size += rlp;
    }
    size = (size + align - 1) & !(align - 1);
    let order = lx_calculate_order(size, nr_cpus);
    (
        size,
        offset,
        inuse,
        rlp,
        order,
        ((PAGE << order) / size) as u32,
    )
}

#[test]
fn layout_grid_matches_linux_calculate_sizes() {
    let cfg = SlabConfig::default();
    let flagsets = [
        SlabFlags::empty(),
        SlabFlags::HWCACHE_ALIGN,
        SlabFlags::RED_ZONE,
        SlabFlags::POISON,
        SlabFlags::STORE_USER,
        SlabFlags::RED_ZONE | SlabFlags::STORE_USER | SlabFlags::KMALLOC,
        SlabFlags::DEBUG_DEFAULT,
        SlabFlags::DEBUG_DEFAULT | SlabFlags::KMALLOC,
        SlabFlags::TYPESAFE_BY_RCU,
        SlabFlags::HWCACHE_ALIGN | SlabFlags::RED_ZONE,
    ];
    let mut bad = Vec::new();
    for nr_cpus in [1usize, 2, 4, 64] {
        for &flags in &flagsets {
            for align in [0usize, 8, 16, 32, 64, 128, 256, 4096] {
                for ctor in [false, true] {
                    let mut size = 1;
                    while size <= 70000 {
                        let want = lx_sizes(size, align, flags, ctor, nr_cpus);
                        let got = Layout::compute(size, align, flags, ctor, &cfg, nr_cpus);
                        match got {
                            Some(l) => {
                                let g = (
                                    l.size,
                                    l.offset,
                                    l.inuse,
                                    l.red_left_pad,
                                    l.oo.order,
                                    l.oo.objects,
                                );
                                if g != want {
                                    bad.push(format!(
                                        "size {size} align {align} {flags:?} ctor {ctor} cpus {nr_cpus}: linux {want:?} kmem {g:?}"
                                    ));
                                }
                            }
                            None => bad.push(format!("size {size}: None")),
                        }
                        size = if size < 300 { size + 1 } else { size * 9 / 8 };
                    }
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{} mismatches, first:\n{}",
        bad.len(),
        bad[..bad.len().min(20)].join("\n")
    );
}

// ------------------------------------------------------------ kmalloc classes

#[test]
fn kmalloc_every_size_class_ksize_alignment() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let mut bad = Vec::new();
    for size in 1..=8192usize {
        let p = s.kmalloc(size, GFP_KERNEL).unwrap().as_ptr();
        let class = kmalloc_size_roundup(size);
        let ks = s.ksize(p);
        let align = 1usize << class.trailing_zeros();
        if ks != class || !(p as usize).is_multiple_of(align) {
            bad.push(format!(
                "size {size}: ksize {ks} class {class} ptr {p:p} align {align}"
            ));
        }
        // The cache really is that class.
        let pfn = m.pages().virt_to_page(VirtAddr(p as usize)).unwrap();
        let _ = pfn;
        unsafe { p.write_bytes(0xaa, ks) };
        s.kfree(p).unwrap();
    }
    for size in [
        8193usize,
        12288,
        12289,
        16384,
        65536,
        65537,
        1 << 20,
        4 << 20,
    ] {
        let p = s.kmalloc(size, GFP_KERNEL).unwrap().as_ptr();
        let ks = s.ksize(p);
        if ks != PAGE << get_order(size) || !(p as usize).is_multiple_of(PAGE) {
            bad.push(format!("large {size}: ksize {ks}"));
        }
        s.kfree(p).unwrap();
    }
    assert!(bad.is_empty(), "{}", bad[..bad.len().min(20)].join("\n"));
}

#[test]
fn kmalloc_classes_debug_alignment_and_ksize() {
    let m = machine();
    let cfg = SlabConfig {
        slab_debug: kmem::slab::SlabDebug::new("FZPU"),
        ..Default::default()
    };
    let s = slab(&m, cfg);
    let mut bad = Vec::new();
    for size in (1..=8192usize).step_by(7).chain([
        8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192,
    ]) {
        let p = s.kmalloc(size, GFP_KERNEL).unwrap().as_ptr();
        let class = kmalloc_size_roundup(size);
        let align = 1usize << class.trailing_zeros();
        let ks = s.ksize(p);
        if ks != class || !(p as usize).is_multiple_of(align.min(4096)) {
            bad.push(format!("size {size}: ksize {ks} class {class} ptr {p:p}"));
        }
        unsafe { p.write_bytes(0x11, ks) };
        s.kfree(p).unwrap();
    }
    assert!(bad.is_empty(), "{}", bad[..bad.len().min(20)].join("\n"));
    assert_eq!(s.errors(), 0, "{:#?}", m.platform().take_log());
}

// ------------------------------------------------------------ krealloc

#[test]
fn krealloc_rules() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let p = s.kmalloc(100, GFP_KERNEL).unwrap().as_ptr();
    unsafe { p.write_bytes(0x5a, 100) };
    // grow within class: in place
    let q = s.krealloc(p, 128, GFP_KERNEL).unwrap().as_ptr();
    assert_eq!(q, p);
    // shrink: in place
    let q = s.krealloc(q, 10, GFP_KERNEL).unwrap().as_ptr();
    assert_eq!(q, p);
    // grow across: new, contents copied
    let r = s.krealloc(q, 129, GFP_KERNEL).unwrap().as_ptr();
    assert_ne!(r, p);
    assert_eq!(s.ksize(r), 192);
    let b = unsafe { std::slice::from_raw_parts(r, 100) };
    assert!(b.iter().all(|&x| x == 0x5a));
    // large shrink in place, grow copies
    let l = s.kmalloc(20000, GFP_KERNEL).unwrap().as_ptr();
    unsafe { l.write_bytes(0x77, 20000) };
    let l2 = s.krealloc(l, 9000, GFP_KERNEL).unwrap().as_ptr();
    assert_eq!(l2, l);
    let l3 = s.krealloc(l2, 40000, GFP_KERNEL).unwrap().as_ptr();
    assert_ne!(l3, l);
    let b = unsafe { std::slice::from_raw_parts(l3, 20000) };
    assert!(b.iter().all(|&x| x == 0x77));
    // large shrink to small class: Linux keeps it in place (new_size <= ks)
    let l4 = s.krealloc(l3, 16, GFP_KERNEL).unwrap().as_ptr();
    assert_eq!(l4, l3);
    s.kfree(l4).unwrap();
    // size 0 frees
    let z = s.krealloc(r, 0, GFP_KERNEL).unwrap().as_ptr();
    assert_eq!(z as usize, 16);
    // NULL allocates
    let n = s
        .krealloc(std::ptr::null(), 50, GFP_KERNEL)
        .unwrap()
        .as_ptr();
    assert_eq!(s.ksize(n), 64);
    // __GFP_ZERO grow in place zeroes tail
    unsafe { n.write_bytes(0xff, 64) };
    let n2 = s.krealloc(n, 60, GFP_KERNEL | Gfp::ZERO).unwrap().as_ptr();
    assert_eq!(n2, n);
    let b = unsafe { std::slice::from_raw_parts(n2, 64) };
    assert!(b[60..].iter().all(|&x| x == 0), "{b:?}");
    s.kfree(n2).unwrap();
    assert_eq!(s.errors(), 0);
}

// ------------------------------------------------------------ slabinfo, pages

fn row_of(
    s: &kmem::slab::SlabAllocator<'_, kmem_host::HostPlatform>,
    name: &str,
) -> kmem::slab::slabinfo::SlabInfoRow {
    s.find_cache(name).unwrap().slabinfo_row()
}

#[test]
fn slabinfo_consistent_after_random_and_shrink() {
    let m = Machine::new(MachineConfig {
        ram_bytes: 256 << 20,
        nr_cpus: 2,
        ..Default::default()
    })
    .unwrap();
    let s = slab(&m, SlabConfig::default());
    let sizes = [24usize, 72, 200, 700, 3000];
    let caches: Vec<_> = sizes
        .iter()
        .map(|&sz| {
            s.kmem_cache_create(&format!("rev{sz}"), sz, 0, SlabFlags::NO_MERGE, None)
                .unwrap()
        })
        .collect();
    let mut rng = Rng(0x1234_5678);
    let mut live: Vec<Vec<*mut u8>> = vec![Vec::new(); sizes.len()];
    for round in 0..6 {
        for _ in 0..20000 {
            let cpu = rng.below(2) as usize;
            let ci = rng.below(sizes.len() as u64) as usize;
            run_on_cpu(cpu, || {
                if live[ci].len() < 3000 && rng.below(100) < 55 {
                    let p = caches[ci].alloc(GFP_KERNEL).unwrap().as_ptr();
                    live[ci].push(p);
                } else if !live[ci].is_empty() {
                    let i = rng.below(live[ci].len() as u64) as usize;
                    let p = live[ci].swap_remove(i);
                    caches[ci].free(std::ptr::NonNull::new(p).unwrap()).unwrap();
                }
            });
        }
        for (ci, c) in caches.iter().enumerate() {
            c.shrink();
            let r = c.slabinfo_row();
            assert_eq!(
                r.active_objs,
                live[ci].len(),
                "round {round} cache {}: {r:?}",
                c.name()
            );
            assert!(r.num_objs >= r.active_objs);
            assert_eq!(r.num_slabs, c.nr_slabs());
            // no empty slab left after shrink: num_objs - active < objperslab * num partial
            let partial = c.nr_partial();
            assert!(
                r.num_objs - r.active_objs <= partial * r.objperslab as usize,
                "round {round} {}: {r:?} partial {partial}",
                c.name()
            );
            let mut set = HashSet::new();
            for &p in &live[ci] {
                assert!(set.insert(p as usize));
            }
        }
    }
    // free all, shrink: nothing left
    for (ci, c) in caches.iter().enumerate() {
        for p in live[ci].drain(..) {
            c.free(std::ptr::NonNull::new(p).unwrap()).unwrap();
        }
        c.shrink();
        let r = c.slabinfo_row();
        assert_eq!(
            (r.active_objs, r.num_objs, r.num_slabs),
            (0, 0, 0),
            "{}: {r:?}",
            c.name()
        );
    }
    let _ = row_of;
}

#[test]
fn pages_all_back_after_destroy_and_shrink() {
    let m = Machine::new(MachineConfig {
        ram_bytes: 256 << 20,
        nr_cpus: 2,
        ..Default::default()
    })
    .unwrap();
    let s = slab(&m, SlabConfig::default());
    s.shrink_all();
    let base = m.pages().nr_free_pages_with_pcp();
    let mut rng = Rng(99);
    {
        let c1 = s
            .kmem_cache_create("pg1", 136, 0, SlabFlags::empty(), None)
            .unwrap();
        let c2 = s
            .kmem_cache_create("pg2", 1000, 64, SlabFlags::HWCACHE_ALIGN, None)
            .unwrap();
        let mut v1 = Vec::new();
        let mut v2 = Vec::new();
        let mut vk = Vec::new();
        for i in 0..30000 {
            let cpu = rng.below(2) as usize;
            run_on_cpu(cpu, || match rng.below(6) {
                0 => v1.push(c1.alloc(GFP_KERNEL).unwrap().as_ptr()),
                1 => v2.push(c2.alloc(GFP_KERNEL).unwrap().as_ptr()),
                2 | 3 => vk.push(
                    s.kmalloc(1 + rng.below(20000) as usize, GFP_KERNEL)
                        .unwrap()
                        .as_ptr(),
                ),
                _ => {
                    if i % 2 == 0 && !v1.is_empty() {
                        let p = v1.swap_remove(rng.below(v1.len() as u64) as usize);
                        c1.free(std::ptr::NonNull::new(p).unwrap()).unwrap();
                    } else if !vk.is_empty() {
                        let p = vk.swap_remove(rng.below(vk.len() as u64) as usize);
                        s.kfree(p).unwrap();
                    }
                }
            });
        }
        for (i, p) in v1.into_iter().enumerate() {
            run_on_cpu(i % 2, || {
                c1.free(std::ptr::NonNull::new(p).unwrap()).unwrap()
            });
        }
        for (i, p) in v2.into_iter().enumerate() {
            run_on_cpu(i % 2, || {
                c2.free(std::ptr::NonNull::new(p).unwrap()).unwrap()
            });
        }
        for (i, p) in vk.into_iter().enumerate() {
            run_on_cpu(i % 2, || s.kfree(p).unwrap());
        }
        c1.destroy().unwrap();
        c2.destroy().unwrap();
    }
    s.shrink_all();
    let now = m.pages().nr_free_pages_with_pcp();
    assert_eq!(now, base, "pages leaked: {}", base as isize - now as isize);
    assert_eq!(s.errors(), 0);
}

/// Every tail record of a multi-page slab answers for the slab as its head
/// does (owner tag, the cache in `private[0]`, the object count in bits
/// 32..48 of `private[1]`) and names the head in bits 0..32, which
/// `compound_head` follows; once the slab went back to the page allocator
/// the records carry no owner tag.
#[test]
fn multi_page_slabs_relabel_their_tail_records() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let c = s
        .kmem_cache_create("tails", 1000, 0, SlabFlags::empty(), None)
        .unwrap();
    let pages = m.pages();
    let mut objs = Vec::new();
    for i in 0..300 {
        let p = if i % 2 == 0 {
            s.kmalloc(4096, GFP_KERNEL).unwrap().as_ptr()
        } else {
            c.alloc(GFP_KERNEL).unwrap().as_ptr()
        };
        objs.push(p);
    }
    let mut tails = HashSet::new();
    for &p in &objs {
        let pfn = pages.virt_to_page(VirtAddr(p as usize)).unwrap();
        let head = pages.compound_head(pfn);
        let hf = pages.frame(head).unwrap();
        assert_eq!(hf.owner(), kmem::slab::OWNER_SLAB);
        let cache = hf.private[0].load(Relaxed);
        assert_ne!(cache, 0);
        let objects = (hf.private[1].load(Relaxed) >> 32) & 0xffff;
        assert!(objects > 0);
        let order = hf.order();
        assert!(
            order > 0,
            "kmalloc-4k and a 1000-byte cache use multi-page slabs"
        );
        for i in 1..(1u64 << order) {
            let t = kmem::addr::Pfn(head.0 + i);
            let tf = pages.frame(t).unwrap();
            assert_eq!(tf.owner(), kmem::slab::OWNER_SLAB, "{t:?}");
            assert_eq!(tf.private[0].load(Relaxed), cache, "{t:?}");
            let w = tf.private[1].load(Relaxed) as u64;
            assert_eq!((w >> 32) & 0xffff, objects as u64, "{t:?}");
            assert_eq!(w & 0xffff_ffff, head.0, "{t:?}");
            assert_eq!(pages.compound_head(t), head);
            tails.insert(t);
        }
    }
    for (i, &p) in objs.iter().enumerate() {
        if i % 2 == 0 {
            s.kfree(p).unwrap();
        } else {
            c.free(std::ptr::NonNull::new(p).unwrap()).unwrap();
        }
    }
    c.destroy().unwrap();
    s.shrink_all();
    let mut gone = 0;
    for t in tails {
        let tf = pages.frame(t).unwrap();
        let head = pages.compound_head(t);
        let still_slab = head != t && pages.frame(head).unwrap().owner() == kmem::slab::OWNER_SLAB;
        if !still_slab {
            gone += 1;
            assert_eq!(tf.owner(), 0, "{t:?}");
        }
    }
    assert!(gone > 0, "some slabs went back");
    assert!(pages.verify().is_ok());
    assert_eq!(s.errors(), 0);
}

/// A TYPESAFE_BY_RCU slab waiting for its grace period no longer answers
/// through its tail records: a kfree into it meanwhile is refused by the
/// full path (the head's owner says RCU), and once the grace period ends
/// the pages go back.
#[test]
fn an_rcu_pending_slab_does_not_answer_through_its_tails() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let c = s
        .kmem_cache_create("rcu-tails", 2000, 0, SlabFlags::TYPESAFE_BY_RCU, None)
        .unwrap();
    let pages = m.pages();
    // Objects until one lies in a tail page.
    let mut held = Vec::new();
    let (p, t) = loop {
        let p = c.alloc(GFP_KERNEL).unwrap().as_ptr();
        let pfn = pages.virt_to_page(VirtAddr(p as usize)).unwrap();
        held.push(p);
        if pages.compound_head(pfn) != pfn {
            break (p, pfn);
        }
    };
    for &q in &held {
        c.free(std::ptr::NonNull::new(q).unwrap()).unwrap();
    }
    c.shrink();
    // The slab waits for RCU: its tail records carry no owner tag.
    assert_eq!(pages.frame(t).unwrap().owner(), 0);
    assert!(
        s.kfree(p).is_err(),
        "a free into an RCU-pending slab is refused"
    );
    s.rcu_barrier();
    c.destroy().unwrap();
    assert!(pages.verify().is_ok());
}

// ------------------------------------------------------------ nodes

fn node_of(m: &Machine, p: *mut u8) -> usize {
    let pfn = m.pages().virt_to_page(VirtAddr(p as usize)).unwrap();
    m.pages().frame(pfn).unwrap().node()
}

#[test]
fn kmalloc_node_two_nodes_placement_and_release() {
    let m = two_nodes();
    let s = slab(&m, SlabConfig::default());
    s.shrink_all();
    let base = m.pages().nr_free_pages_with_pcp();
    let mut v = Vec::new();
    for i in 0..4000 {
        let node = (i % 2) as i32;
        let size = [16usize, 100, 500, 3000][i % 4];
        let p = run_on_cpu(i % 2, || {
            s.kmalloc_node(size, GFP_KERNEL, node).unwrap().as_ptr()
        });
        assert_eq!(node_of(&m, p), node as usize, "i {i} size {size}");
        v.push(p);
    }
    let c = s.find_cache("kmalloc-128").unwrap();
    let r = c.slabinfo_row();
    assert!(r.active_objs >= 1000, "{r:?}");
    for (i, p) in v.into_iter().enumerate() {
        run_on_cpu((i + 1) % 2, || s.kfree(p).unwrap());
    }
    s.shrink_all();
    let r = c.slabinfo_row();
    assert_eq!(r.num_slabs, 0, "{r:?}");
    assert_eq!(m.pages().nr_free_pages_with_pcp(), base);
}

// ------------------------------------------------------------ concurrency

/// The three fast-path set-ups the frees are run under: sheaves (the
/// default), the CPU free list alone, and that without per-CPU partial lists.
fn fast_path_configs() -> [SlabConfig; 3] {
    [
        SlabConfig::default(),
        SlabConfig {
            sheaf_bytes: 0,
            ..Default::default()
        },
        SlabConfig {
            sheaf_bytes: 0,
            cpu_partial: false,
            ..Default::default()
        },
    ]
}

#[test]
fn remote_frees_become_allocatable_no_duplicates() {
    let m = Machine::new(MachineConfig {
        ram_bytes: 256 << 20,
        nr_cpus: 2,
        ..Default::default()
    })
    .unwrap();
    for cfg in fast_path_configs() {
        let s = slab(&m, cfg);
        let c = s
            .kmem_cache_create("remote", 256, 0, SlabFlags::NO_MERGE, None)
            .unwrap();
        let n = 5000;
        let v: Vec<usize> = run_on_cpu(0, || {
            (0..n)
                .map(|_| c.alloc(GFP_KERNEL).unwrap().as_ptr() as usize)
                .collect()
        });
        let slabs_before = c.nr_slabs();
        std::thread::scope(|sc| {
            let vv = &v;
            let cc = &c;
            sc.spawn(move || {
                run_on_cpu(1, || {
                    for &p in vv {
                        cc.free(std::ptr::NonNull::new(p as *mut u8).unwrap())
                            .unwrap();
                    }
                })
            });
        });
        let w: Vec<usize> = run_on_cpu(0, || {
            (0..n)
                .map(|_| c.alloc(GFP_KERNEL).unwrap().as_ptr() as usize)
                .collect()
        });
        let set: HashSet<usize> = w.iter().copied().collect();
        assert_eq!(set.len(), n, "duplicates");
        // Allow the free CPU's caches (sheaf, list, partial) to hold some.
        let slabs_after = c.nr_slabs();
        assert!(
            slabs_after <= slabs_before + slabs_before / 2 + 2,
            "cfg {cfg:?}: remote-freed objects not reused: {slabs_before} -> {slabs_after} slabs"
        );
        for p in w {
            c.free(std::ptr::NonNull::new(p as *mut u8).unwrap())
                .unwrap();
        }
        c.destroy().unwrap();
    }
}

// ------------------------------------------------------------ min_partial

#[test]
fn empty_slabs_beyond_min_partial_go_back_after_flush() {
    for cfg in fast_path_configs() {
        for (cpu_a, cpu_f) in [(0usize, 0usize), (0, 1)] {
            let m = Machine::new(MachineConfig {
                ram_bytes: 256 << 20,
                nr_cpus: 2,
                ..Default::default()
            })
            .unwrap();
            let s = slab(&m, cfg);
            let c = s
                .kmem_cache_create("mp", 512, 0, SlabFlags::NO_MERGE, None)
                .unwrap();
            let per = c.order_objects().objects as usize;
            let v: Vec<usize> = run_on_cpu(cpu_a, || {
                (0..per * 100)
                    .map(|_| c.alloc(GFP_KERNEL).unwrap().as_ptr() as usize)
                    .collect()
            });
            assert!(c.nr_slabs() >= 100);
            run_on_cpu(cpu_f, || {
                for &p in &v {
                    c.free(std::ptr::NonNull::new(p as *mut u8).unwrap())
                        .unwrap();
                }
            });
            c.flush_all();
            let r = c.slabinfo_row();
            assert_eq!(r.active_objs, 0, "{cfg:?} {r:?}");
            assert!(
                c.nr_slabs() <= c.min_partial(),
                "cfg {cfg:?} alloc cpu {cpu_a} free cpu {cpu_f}: {} empty slabs kept after flush_all, min_partial {}",
                c.nr_slabs(),
                c.min_partial()
            );
            c.destroy().unwrap();
        }
    }
}

#[test]
fn bulk_alloc_free_roundtrip() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    s.shrink_all();
    let base = m.pages().nr_free_pages_with_pcp();
    {
        let c = s
            .kmem_cache_create("bulk", 48, 0, SlabFlags::NO_MERGE, None)
            .unwrap();
        let mut seen = HashSet::new();
        for round in 0..20 {
            let mut v = vec![std::ptr::null_mut(); 1000 + round * 37];
            assert_eq!(c.alloc_bulk(GFP_KERNEL, &mut v).unwrap(), v.len());
            seen.clear();
            for &p in &v {
                assert!(seen.insert(p as usize));
            }
            assert!(c.slabinfo_row().active_objs >= v.len());
            c.free_bulk(&v).unwrap();
        }
        c.shrink();
        assert_eq!(c.slabinfo_row().num_slabs, 0);
        c.destroy().unwrap();
    }
    s.shrink_all();
    assert_eq!(m.pages().nr_free_pages_with_pcp(), base);
}

#[test]
fn alloc_node_thisnode_user_cache_two_nodes() {
    let m = two_nodes();
    let s = slab(&m, SlabConfig::default());
    let c = s
        .kmem_cache_create("n2", 300, 0, SlabFlags::NO_MERGE, None)
        .unwrap();
    let mut v = Vec::new();
    for i in 0..3000 {
        let node = (i / 7 % 2) as i32;
        let p = run_on_cpu(i % 2, || {
            c.alloc_node(GFP_KERNEL | Gfp::THISNODE, node)
                .unwrap()
                .as_ptr()
        });
        assert_eq!(node_of(&m, p), node as usize);
        v.push(p);
        if i % 3 == 0 {
            let q = v.swap_remove(i * 7 % v.len());
            run_on_cpu((i + 1) % 2, || {
                c.free(std::ptr::NonNull::new(q).unwrap()).unwrap()
            });
        }
    }
    c.shrink();
    assert_eq!(c.slabinfo_row().active_objs, v.len());
    for p in v {
        c.free(std::ptr::NonNull::new(p).unwrap()).unwrap();
    }
    c.shrink();
    assert_eq!(c.nr_slabs(), 0);
    c.destroy().unwrap();
}

/// Linux's setup_slub_min_order: `slab_min_order` above `slab_max_order`
/// raises `slab_max_order`, so every cache gets at least that order.
#[test]
fn slab_min_order_above_max_order_is_honoured() {
    let cfg = SlabConfig {
        min_order: 5,
        ..Default::default()
    };
    let mut bad = Vec::new();
    for size in [8usize, 64, 256, 1000, 4096] {
        let l = Layout::compute(size, 0, SlabFlags::empty(), false, &cfg, 2).unwrap();
        if l.oo.order != 5 {
            bad.push(format!("size {size}: order {} (Linux 5)", l.oo.order));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

// ------------------------------------------------------------ shrink order

/// Linux's `__kmem_cache_do_shrink`: empty slabs go back, and partial slabs
/// with 1..=SHRINK_PROMOTE_MAX free objects move to the front of the node's
/// partial list, the fewest free first, so the next allocations fill them
/// up. Seen from outside: after a shrink, a CPU without sheaves or partial
/// slabs of its own takes its next slab from the front of that list.
#[test]
fn shrink_puts_the_fullest_partial_slabs_first() {
    let m = machine();
    // No sheaves and no per-CPU partial lists: each refill of the CPU
    // takes the front slab of the node's partial list.
    let cfg = SlabConfig {
        sheaf_bytes: 0,
        cpu_partial: false,
        ..Default::default()
    };
    let s = slab(&m, cfg);
    let c = s
        .kmem_cache_create("shrink-order", 256, 0, SlabFlags::empty(), None)
        .unwrap();
    let l = Layout::compute(
        256,
        0,
        SlabFlags::empty(),
        false,
        &cfg,
        kmem::Platform::nr_cpus(m.pages().platform()),
    )
    .unwrap();
    let per_slab = l.oo.objects as usize;
    assert_eq!(l.oo.order, 0);
    assert!(
        (11..=kmem::slab::SHRINK_PROMOTE_MAX).contains(&per_slab),
        "{per_slab}"
    );
    let page_of = |p: *mut u8| (p as usize) & !(PAGE - 1);
    run_on_cpu(0, || {
        // Four full slabs, in the order they were filled.
        let objs: Vec<*mut u8> = (0..4 * per_slab)
            .map(|_| c.alloc(GFP_KERNEL).unwrap().as_ptr())
            .collect();
        let mut slabs: Vec<usize> = objs.iter().map(|&p| page_of(p)).collect();
        slabs.dedup();
        assert_eq!(slabs.len(), 4, "one slab after another");
        // Leave 10, 1 and 3 free objects in the first three, empty the
        // fourth.
        let keep_free = [10, 1, 3, per_slab];
        for (k, &slab) in slabs.iter().enumerate() {
            for &p in objs
                .iter()
                .filter(|&&p| page_of(p) == slab)
                .take(keep_free[k])
            {
                c.free(std::ptr::NonNull::new(p).unwrap()).unwrap();
            }
        }
        assert_eq!(c.shrink(), 1, "the empty slab goes back");
        // Refilling takes the slab with 1 free object, then 3, then 10.
        let mut from = Vec::new();
        for _ in 0..14 {
            let p = c.alloc(GFP_KERNEL).unwrap().as_ptr();
            from.push(slabs.iter().position(|&s| s == page_of(p)).unwrap());
        }
        let mut want = vec![1];
        want.extend([2; 3]);
        want.extend([0; 10]);
        assert_eq!(from, want, "slab indexes the refill took objects from");
    });
    drop(c);
}
