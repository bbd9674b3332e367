//! The slab layer against real Linux and Linux's rules: /proc/slabinfo rows
//! and slab orders against a real 6.18 snapshot (`../shared/traces/build/
//! after.slabinfo`), class alignment under debugging, krealloc with
//! __GFP_ZERO, large kzalloc, kmalloc_node (another node, a node that does
//! not exist), GFP_DMA/DMA32 caches, the 4 MiB limit, deactivation to the
//! head or tail of the partial list, and 4 MiB alignment through the
//! Allocator API.

use kmem::addr::VirtAddr;
use kmem::gfp::{Gfp, GFP_KERNEL};
use kmem::slab::{Layout, SlabAllocator, SlabConfig, SlabDebug, SlabFlags, Stat};
mod slab_common;

use kmem_host::{HostPlatform, Machine, MachineConfig};
use slab_common::two_nodes;

/// `/proc/slabinfo` captured after a kernel build on Linux 6.18 (shared data
/// beside the repository, as the trace tests use it).
fn real_slabinfo() -> String {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/traces/build/after.slabinfo");
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (../shared must sit beside the repository)",
            path.display()
        )
    })
}

fn machine() -> Machine {
    Machine::new(MachineConfig {
        ram_bytes: 256 << 20,
        ..Default::default()
    })
    .unwrap()
}

fn slab(m: &Machine, cfg: SlabConfig) -> SlabAllocator<'_, HostPlatform> {
    SlabAllocator::new(m.pages(), cfg).unwrap()
}

fn dbg(spec: &'static str) -> SlabConfig {
    SlabConfig {
        slab_debug: SlabDebug::new(spec),
        ..Default::default()
    }
}

// ---------------------------------------------------------------- slabinfo

/// Every kmalloc row of a real Linux 6.18 /proc/slabinfo (2 CPUs): objsize,
/// objperslab, pagesperslab, the header, the column layout.
#[test]
fn slabinfo_kmalloc_rows_match_real_linux() {
    let real = real_slabinfo();
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let mut out = String::new();
    kmem::slab::slabinfo::slabinfo(&s, &mut out).unwrap();
    let mine: Vec<&str> = out.lines().collect();
    let theirs: Vec<&str> = real.lines().collect();
    assert_eq!(mine[0], theirs[0]);
    assert_eq!(mine[1], theirs[1]);
    let fields = |l: &str| -> Vec<String> { l.split_whitespace().map(String::from).collect() };
    let mut bad = Vec::new();
    for t in &theirs[2..] {
        let tf = fields(t);
        let name = &tf[0];
        if !(name.starts_with("kmalloc-") || name.starts_with("dma-kmalloc-")) {
            continue;
        }
        let Some(ml) = mine.iter().find(|l| fields(l)[0] == *name) else {
            bad.push(format!("{name}: missing"));
            continue;
        };
        let mf = fields(ml);
        if mf[3..6] != tf[3..6] {
            bad.push(format!(
                "{name}: mine {:?} linux {:?}",
                &mf[3..6],
                &tf[3..6]
            ));
        }
        // Column layout: rebuild Linux's line from its own numbers with our
        // widths.
        let rebuilt = format!(
            "{:<17} {:>6} {:>6} {:>6} {:>4} {:>4} : tunables {:>4} {:>4} {:>4} : slabdata {:>6} {:>6} {:>6}",
            tf[0], tf[1], tf[2], tf[3], tf[4], tf[5], tf[8], tf[9], tf[10], tf[13], tf[14], tf[15]
        );
        assert_eq!(&rebuilt, t);
    }
    // Order of the kmalloc rows: the same sequence as Linux's.
    let order = |ls: &[&str]| -> Vec<String> {
        ls.iter()
            .map(|l| fields(l)[0].clone())
            .filter(|n| n.starts_with("kmalloc-") || n.starts_with("dma-kmalloc-"))
            .collect()
    };
    assert_eq!(order(&mine[2..]), order(&theirs[2..]), "row order");
    assert!(bad.is_empty(), "{bad:#?}");
}

/// calculate_order for every cache of the real slabinfo (objsize taken as a
/// word-aligned object size, align 8, 2 CPUs).
#[test]
fn calculate_order_matches_real_linux_every_cache() {
    let real = real_slabinfo();
    let cfg = SlabConfig::default();
    let mut bad = Vec::new();
    let mut n = 0;
    for t in real.lines().skip(2) {
        let f: Vec<&str> = t.split_whitespace().collect();
        let size: usize = f[3].parse().unwrap();
        let per: u32 = f[4].parse().unwrap();
        let pages: u32 = f[5].parse().unwrap();
        let l = Layout::compute(size, 8, SlabFlags::empty(), false, &cfg, 2).unwrap();
        n += 1;
        if l.size != size || l.oo.objects != per || (1u32 << l.oo.order) != pages {
            bad.push(format!(
                "{}: size {size} linux {per}/{pages}p, kmem {}/{}p (size {})",
                f[0],
                l.oo.objects,
                1u32 << l.oo.order,
                l.size
            ));
        }
    }
    eprintln!("{n} caches compared");
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

// ---------------------------------------------------------------- kmalloc

/// kzalloc above 8 KiB comes back zeroed even when the pages were dirty.
#[test]
fn kzalloc_large_is_zeroed() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    for size in [8193usize, 20000, 65536, 1 << 20] {
        let p = s.kmalloc(size, GFP_KERNEL).unwrap().as_ptr();
        unsafe { p.write_bytes(0xff, s.ksize(p)) };
        s.kfree(p).unwrap();
        let q = s.kzalloc(size, GFP_KERNEL).unwrap().as_ptr();
        let ks = s.ksize(q);
        let bytes = unsafe { std::slice::from_raw_parts(q, ks) };
        assert!(bytes.iter().all(|&b| b == 0), "kzalloc({size}) not zeroed");
        s.kfree(q).unwrap();
    }
}

/// Class alignment (largest power of two dividing the class size, >= 8)
/// holds with every debug option on every kmalloc cache.
#[test]
fn kmalloc_alignment_with_full_debug() {
    for spec in ["", "Z", "U", "P", "ZU"] {
        let m = machine();
        let s = slab(&m, dbg(spec));
        for size in (1..=8192usize).step_by(7).chain([96, 192, 4096, 8192]) {
            let p = s.kmalloc(size, GFP_KERNEL).unwrap().as_ptr();
            let class = kmem::slab::kmalloc::kmalloc_size_roundup(size);
            let align = (1usize << class.trailing_zeros()).max(8);
            assert_eq!(
                p as usize % align,
                0,
                "slab_debug={spec:?} kmalloc({size}) = {p:p}"
            );
            s.kfree(p).unwrap();
        }
    }
}

/// krealloc with __GFP_ZERO: shrink then grow in place reads zero beyond
/// the shrunk size, debug cache (orig size tracked) and plain cache.
#[test]
fn krealloc_zero_shrink_then_grow() {
    for spec in [None, Some("FZPU,kmalloc-64"), Some("U,kmalloc-64")] {
        let m = machine();
        let cfg = match spec {
            Some(sp) => dbg(sp),
            None => SlabConfig::default(),
        };
        let s = slab(&m, cfg);
        let p = s.kmalloc(40, GFP_KERNEL).unwrap().as_ptr();
        unsafe { p.write_bytes(0xaa, 40) };
        let q = s.krealloc(p, 20, GFP_KERNEL | Gfp::ZERO).unwrap().as_ptr();
        assert_eq!(p, q);
        let r = s.krealloc(q, 60, GFP_KERNEL | Gfp::ZERO).unwrap().as_ptr();
        assert_eq!(p, r);
        let b = unsafe { std::slice::from_raw_parts(r, 60) };
        assert!(b[..20].iter().all(|&x| x == 0xaa), "{spec:?}");
        assert!(b[20..].iter().all(|&x| x == 0), "{spec:?}: {:x?}", &b[20..]);
        s.kfree(r).unwrap();
        assert_eq!(
            s.errors(),
            0,
            "{spec:?}: {}",
            m.platform().take_log().join("\n")
        );
    }
}

/// Linux keeps a krealloc that fits in place, even large -> small.
#[test]
fn krealloc_large_shrink_in_place_and_grow_copy() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let p = s.kmalloc(100_000, GFP_KERNEL).unwrap().as_ptr();
    unsafe { p.write_bytes(0x5c, 100_000) };
    let q = s.krealloc(p, 16, GFP_KERNEL).unwrap().as_ptr();
    assert_eq!(p, q);
    let r = s.krealloc(q, 200_000, GFP_KERNEL).unwrap().as_ptr();
    assert_ne!(r, q);
    // Linux copies ks (the whole old block) when orig_size is unknown.
    let b = unsafe { std::slice::from_raw_parts(r, 100_000) };
    assert!(b.iter().all(|&x| x == 0x5c));
    s.kfree(r).unwrap();
}

// ---------------------------------------------------------------- NUMA

fn node_of(m: &Machine, p: *mut u8) -> usize {
    let pfn = m.pages().virt_to_page(VirtAddr(p as usize)).unwrap();
    m.pages().frame(pfn).unwrap().node()
}

/// kmalloc_node to the other node, without __GFP_THISNODE, with that node
/// full of free memory: Linux gives that node's memory.
#[test]
fn kmalloc_node_other_node_prefers_it() {
    for cfg in [SlabConfig::default(), dbg("FZPU,kmalloc-64")] {
        let m = two_nodes();
        let s = slab(&m, cfg);
        let mut v = Vec::new();
        let mut wrong = 0;
        for _ in 0..2000 {
            let p = s.kmalloc_node(64, GFP_KERNEL, 1).unwrap().as_ptr();
            if node_of(&m, p) != 1 {
                wrong += 1;
            }
            v.push(p);
        }
        for size in [20000usize, 8192, 100] {
            let p = s.kmalloc_node(size, GFP_KERNEL, 1).unwrap().as_ptr();
            assert_eq!(node_of(&m, p), 1, "size {size}");
            v.push(p);
        }
        assert_eq!(wrong, 0);
        for p in v {
            s.kfree(p).unwrap();
        }
    }
}

/// A node that does not exist: Linux treats it as NUMA_NO_NODE.
#[test]
fn kmalloc_node_nonexistent_node() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let c = s.kmalloc_slab(64, GFP_KERNEL);
    let slabs0 = c.nr_slabs();
    let mut v = Vec::new();
    for _ in 0..1000 {
        v.push(s.kmalloc_node(64, GFP_KERNEL, 1).unwrap().as_ptr());
        v.push(
            s.kmalloc_node(64, GFP_KERNEL | Gfp::THISNODE, 3)
                .unwrap()
                .as_ptr(),
        );
    }
    v.push(s.kmalloc_node(50_000, GFP_KERNEL, 5).unwrap().as_ptr());
    // 2000 objects of 64 bytes: 32 slabs of 64 objects; allow a few.
    let slabs = c.nr_slabs() - slabs0;
    assert!(slabs <= 40, "{slabs} slabs for 2000 objects");
    let bypasses = c.stat(Stat::AllocNodeMismatch);
    eprintln!("node mismatch bypasses: {bypasses}");
    for p in v {
        s.kfree(p).unwrap();
    }
    assert_eq!(m.platform().log_len(), 0, "{:?}", m.platform().take_log());
}

/// Linux's ___slab_alloc turns a node without memory (not in slab_nodes)
/// into NUMA_NO_NODE, so such requests use the per-CPU fast path.
#[test]
fn kmalloc_node_nonexistent_node_uses_fast_path() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let c = s.kmalloc_slab(64, GFP_KERNEL);
    let mut v = Vec::new();
    for _ in 0..1000 {
        v.push(s.kmalloc_node(64, GFP_KERNEL, 1).unwrap().as_ptr());
    }
    let bypasses = c.stat(Stat::AllocNodeMismatch);
    for p in v {
        s.kfree(p).unwrap();
    }
    assert_eq!(
        bypasses, 0,
        "{bypasses} of 1000 kmalloc_node(.., node 1) on a 1-node machine bypassed the CPU"
    );
}

// ---------------------------------------------------------------- zones

fn phys(m: &Machine, p: *mut u8) -> u64 {
    (p as usize - m.ram().direct_map_offset()) as u64
}

#[test]
fn dma32_and_dma_caches_take_their_zone() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let c = s
        .kmem_cache_create("dma32-obj", 200, 0, SlabFlags::CACHE_DMA32, None)
        .unwrap();
    let mut v = Vec::new();
    for _ in 0..500 {
        let p = c.alloc(GFP_KERNEL).unwrap().as_ptr();
        assert!(
            phys(&m, p) < 4 << 30,
            "DMA32 cache object at {:#x}",
            phys(&m, p)
        );
        v.push(p);
    }
    for p in v {
        c.free(std::ptr::NonNull::new(p).unwrap()).unwrap();
    }
    let mut v = Vec::new();
    for size in [8usize, 96, 4096, 8192, 20000] {
        let p = s.kmalloc(size, GFP_KERNEL | Gfp::DMA).unwrap().as_ptr();
        assert!(
            phys(&m, p) < 16 << 20,
            "GFP_DMA kmalloc({size}) at {:#x}",
            phys(&m, p)
        );
        v.push(p);
    }
    // Plain kmalloc prefers Normal (above 4 GiB on this layout).
    let p = s.kmalloc(64, GFP_KERNEL).unwrap().as_ptr();
    eprintln!("plain kmalloc at {:#x}", phys(&m, p));
    v.push(p);
    for p in v {
        s.kfree(p).unwrap();
    }
}

// ---------------------------------------------------------------- partial list order

/// Linux's deactivate_slab puts a slab without remote frees at the head of
/// the node partial list (DEACTIVATE_TO_HEAD), with remote frees at the tail.
#[test]
fn deactivate_to_head_without_remote_frees() {
    let m = machine();
    let s = slab(
        &m,
        SlabConfig {
            sheaf_bytes: 0,
            ..Default::default()
        },
    );
    let c = s
        .kmem_cache_create("deact", 256, 0, SlabFlags::empty(), None)
        .unwrap();
    let p = c.alloc(GFP_KERNEL).unwrap();
    c.flush_all();
    eprintln!(
        "to_head {} to_tail {} remote {}",
        c.stat(Stat::DeactivateToHead),
        c.stat(Stat::DeactivateToTail),
        c.stat(Stat::DeactivateRemoteFrees)
    );
    let head = c.stat(Stat::DeactivateToHead);
    c.free(p).unwrap();
    assert_eq!(
        head, 1,
        "deactivated active slab (no remote frees) went to the tail"
    );
}

// ---------------------------------------------------------------- allocator api

#[test]
fn heap_alignment_4mib() {
    use allocator_api2::alloc::Allocator;
    use kmem_host::global::KmemHeap;
    let mut fails = Vec::new();
    for i in 0..6 {
        let m = machine();
        let s = slab(&m, SlabConfig::default());
        let h = KmemHeap::new(&s);
        let off = m.ram().direct_map_offset();
        let l = std::alloc::Layout::from_size_align(100, 4 << 20).unwrap();
        match h.allocate(l) {
            Ok(p) => {
                assert_eq!(p.cast::<u8>().as_ptr() as usize % (4 << 20), 0);
                unsafe { h.deallocate(p.cast(), l) };
            }
            Err(_) => fails.push((i, off % (4 << 20))),
        }
        let _ = h;
        drop(s);
    }
    assert!(
        fails.is_empty(),
        "allocate(100, align 4 MiB) failed: (try, direct map offset mod 4 MiB) {fails:?}"
    );
}

#[test]
fn kmalloc_max_size_and_warning() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let p = s.kmalloc(4 << 20, GFP_KERNEL).unwrap().as_ptr();
    assert_eq!(s.ksize(p), 4 << 20);
    assert_eq!(m.platform().log_len(), 0);
    assert!(s.kmalloc((4 << 20) + 1, GFP_KERNEL).is_err());
    assert_eq!(m.platform().log_len(), 1, "{:?}", m.platform().take_log());
    m.platform().take_log();
    assert!(s.kmalloc((4 << 20) + 1, GFP_KERNEL | Gfp::NOWARN).is_err());
    assert_eq!(m.platform().log_len(), 0);
    let q = s.kmalloc(100, GFP_KERNEL).unwrap().as_ptr();
    assert!(s
        .krealloc(q, (4 << 20) + 1, GFP_KERNEL | Gfp::NOWARN)
        .is_err());
    assert_eq!(s.ksize(q), 128);
    s.kfree(q).unwrap();
    s.kfree(p).unwrap();
    // Linux's WARN_ON_ONCE_GFP in the page allocator fires once per boot:
    // the later failures are quiet.
    m.platform().take_log();
    assert!(s.kmalloc((4 << 20) + 1, GFP_KERNEL).is_err());
    assert!(s.kmalloc((4 << 20) + 1, GFP_KERNEL).is_err());
    assert_eq!(m.platform().log_len(), 0, "{:?}", m.platform().take_log());
}
