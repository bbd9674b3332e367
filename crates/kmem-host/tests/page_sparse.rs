//! A sparse, two-node physical layout: holes inside zones, RAM above 4 GiB,
//! a second NUMA node. Allocations never touch a hole, node-aware calls land
//! on the node asked for, and `__GFP_THISNODE` never leaves it.

mod page_common;

use kmem::addr::Pfn;
use kmem::error::AllocError;
use kmem::gfp::{Gfp, ZoneType, GFP_KERNEL, GFP_NOWAIT};
use kmem::page::memmap::Region;
use kmem::page::FrameState;
use kmem_host::{Machine, MachineConfig};
use page_common::*;

/// Node 0: low memory, DMA32 in two pieces around a hole (48..64 MiB),
/// 64 MiB of Normal above 4 GiB. Node 1: Normal only, in two pieces
/// (4 GiB + 64 MiB.. + 128 MiB, and 8 GiB.. + 32 MiB) with a 4 GiB hole
/// between them.
fn layout() -> Vec<Region> {
    vec![
        Region::reserved(0, 0x1000),
        Region::usable(0x1000, 0x9f000),
        Region::reserved(0x9f000, MIB),
        Region::usable(MIB, 48 * MIB),
        Region::usable(64 * MIB, 96 * MIB),
        Region::usable(4 * GIB, 4 * GIB + 64 * MIB),
        Region::usable(4 * GIB + 64 * MIB, 4 * GIB + 128 * MIB).on_node(1),
        Region::usable(8 * GIB, 8 * GIB + 32 * MIB).on_node(1),
    ]
}

fn sparse_machine() -> Machine {
    Machine::new(MachineConfig {
        regions: Some(layout()),
        ..Default::default()
    })
    .expect("sparse two-node machine builds")
}

fn node_of(m: &Machine, p: Pfn) -> usize {
    m.pages().frame(p).unwrap().node()
}

fn pfn(bytes: u64) -> Pfn {
    Pfn(bytes >> 12)
}

#[test]
fn zones_and_holes_follow_the_map() {
    let m = sparse_machine();
    let pa = m.pages();
    assert_eq!(pa.nr_nodes(), 2);
    let populated: Vec<_> = pa
        .populated_zones()
        .map(|z| (z.node(), z.zone_type()))
        .collect();
    assert_eq!(
        populated,
        [
            (0, ZoneType::Dma),
            (0, ZoneType::Dma32),
            (0, ZoneType::Normal),
            (1, ZoneType::Normal)
        ]
    );
    let dma32 = pa.zone(0, ZoneType::Dma32);
    assert_eq!(dma32.start_pfn(), pfn(16 * MIB).0);
    assert_eq!(
        dma32.spanned_pages(),
        (80 * MIB) >> 12,
        "16..96 MiB, hole included"
    );
    assert_eq!(
        dma32.present_pages(),
        (64 * MIB) >> 12,
        "the hole is not present"
    );
    let n1 = pa.zone(1, ZoneType::Normal);
    assert_eq!(n1.start_pfn(), pfn(4 * GIB + 64 * MIB).0);
    assert_eq!(n1.present_pages(), (96 * MIB) >> 12);
    assert_eq!(
        n1.spanned_pages(),
        pfn(8 * GIB + 32 * MIB).0 - n1.start_pfn()
    );
    assert!(!pa.zone(1, ZoneType::Dma32).is_populated());

    // A hole inside a section with RAM has Hole records; a section without
    // RAM has none.
    assert_eq!(pa.frame(pfn(50 * MIB)).unwrap().state(), FrameState::Hole);
    assert!(pa.frame(pfn(6 * GIB)).is_none());
    assert!(!m.ram().is_backed(pfn(50 * MIB).phys()));
    assert_eq!(node_of(&m, pfn(8 * GIB)), 1);
    assert_eq!(node_of(&m, pfn(4 * GIB)), 0);
    verify(&m);
}

#[test]
fn node_aware_allocations_land_on_their_node() {
    let m = sparse_machine();
    let base = Baseline::take(&m);
    let pa = m.pages();
    let mut held = Vec::new();
    for order in [0, 1, 3, 5, 9, 10] {
        for node in [0, 1] {
            let p = pa.alloc_pages_node(node, GFP_KERNEL, order).unwrap();
            assert_eq!(
                node_of(&m, p),
                node as usize,
                "order {order} on node {node}"
            );
            check_zone(&m, GFP_KERNEL, p.0, 1 << order);
            held.push((p, order));
        }
    }
    // The default (NUMA_NO_NODE) is node 0, Normal first.
    let p = pa.alloc_pages(GFP_KERNEL, 0).unwrap();
    assert_eq!(node_of(&m, p), 0);
    held.push((p, 0));
    let va = pa.alloc_pages_exact_nid(1, 5 * 4096, GFP_KERNEL).unwrap();
    let p = pa.virt_to_page(va).unwrap();
    assert_eq!(node_of(&m, p), 1);
    for (p, o) in held {
        pa.free_pages(p, o).unwrap();
    }
    pa.free_pages_exact(va, 5 * 4096).unwrap();
    base.assert_restored(&m);
}

#[test]
fn thisnode_never_leaves_the_node() {
    let m = sparse_machine();
    let base = Baseline::take(&m);
    let pa = m.pages();
    let mut held = Vec::new();
    let n1 = pa.zone(1, ZoneType::Normal);
    let n1_free = n1.free_pages();
    // Exhaust node 1 down to its min watermark, THISNODE.
    let e = loop {
        match pa.alloc_pages_node(1, GFP_NOWAIT | Gfp::THISNODE, 0) {
            Ok(p) => {
                assert_eq!(node_of(&m, p), 1, "__GFP_THISNODE left node 1");
                held.push(p);
            }
            Err(e) => break e,
        }
    };
    let AllocError::NoMemory(n) = e else {
        panic!("{e:?}")
    };
    assert_eq!(
        n.free_pages,
        n1.free_pages(),
        "the failure counts node 1 only"
    );
    assert_eq!(
        held.len(),
        n1_free - n1.watermark(kmem::page::Watermark::Min)
    );
    // A blocking THISNODE request reclaims and still fails rather than
    // take node 0's memory.
    let e = pa
        .alloc_pages_node(1, GFP_KERNEL | Gfp::THISNODE, 0)
        .unwrap_err();
    assert!(matches!(e, AllocError::NoMemory(n) if n.reclaimed), "{e:?}");
    // Without THISNODE, node 1's request falls back to node 0.
    let p = pa.alloc_pages_node(1, GFP_NOWAIT, 0).unwrap();
    assert_eq!(node_of(&m, p), 0);
    held.push(p);
    // Node 0 is untouched by node 1's exhaustion.
    let q = pa
        .alloc_pages_node(0, GFP_KERNEL | Gfp::THISNODE, 4)
        .unwrap();
    assert_eq!(node_of(&m, q), 0);
    pa.free_pages(q, 4).unwrap();
    for p in held {
        pa.free_pages(p, 0).unwrap();
    }
    base.assert_restored(&m);
}

#[test]
fn shadow_model_on_the_sparse_layout() {
    let m = sparse_machine();
    let base = Baseline::take(&m);
    let mut sh = Shadow::new();
    let mut rng = SeqRng::new(0x5BA5E);
    // Three quarters of all RAM: more than node 0 has, so node 0's zonelist
    // falls back to node 1. Every block is checked to be backed RAM, in one
    // zone and one node, when it is handed out.
    let max_live = base.nr_free as u64 * 3 / 4;
    let mut saw_node1 = false;
    for i in 0..15_000 {
        random_op(&m, &mut sh, &mut rng, max_live);
        if i % 100 == 0 {
            saw_node1 |= sh.live.keys().any(|&p| node_of(&m, Pfn(p)) == 1);
        }
        if i % 500 == 0 {
            assert_conserved(&m, &sh, &base);
            verify(&m);
        }
    }
    assert!(saw_node1, "allocations spilled over to node 1");
    sh.check_all_tags(&m);
    sh.free_all(&m);
    base.assert_restored(&m);
}

/// The direct run (records indexed without the section table, as Linux's
/// vmemmap) gives, for every pfn it covers, the very record the table
/// gives, and covers exactly the largest run of sections with RAM (of equal
/// runs the highest): here, on both the sparse layout (three one-section
/// runs: the one at 8 GiB) and the default PC layout (two four-section
/// runs, low memory and 4 GiB: the Normal one). Slab objects on every run
/// free and refuse a second free alike, whichever lookup their kfree takes.
#[test]
fn the_direct_run_agrees_with_the_section_table() {
    const SECTION: u64 = 128 * MIB;
    let sparse = sparse_machine();
    let pc = Machine::default_machine().unwrap();
    for (m, run) in [
        (&sparse, pfn(8 * GIB)..pfn(8 * GIB + SECTION)),
        (&pc, pfn(4 * GIB)..pfn(4 * GIB + 4 * SECTION)),
    ] {
        let pa = m.pages();
        assert_eq!(pa.direct_pfns(), run);
        let mut direct = 0;
        for p in 0..pa.max_pfn() + 2 * (SECTION >> 12) {
            match (pa.frame_direct(Pfn(p)), pa.frame(Pfn(p))) {
                (Some(d), Some(t)) => {
                    assert!(std::ptr::eq(d, t), "pfn {p:#x}: two records");
                    direct += 1;
                }
                (Some(_), None) => panic!("pfn {p:#x}: direct record without a section"),
                (None, _) => assert!(!run.contains(&Pfn(p)), "pfn {p:#x} left out"),
            }
        }
        assert_eq!(direct, run.end.0 - run.start.0);

        let s = kmem::slab::SlabAllocator::new(pa, Default::default()).unwrap();
        let mut objs = Vec::new();
        for gfp in [GFP_KERNEL, GFP_KERNEL | Gfp::DMA, GFP_KERNEL | Gfp::DMA32] {
            for size in [64usize, 4096] {
                for _ in 0..64 {
                    objs.push(s.kmalloc(size, gfp).unwrap().as_ptr());
                }
            }
        }
        for node in 0..pa.nr_nodes() {
            objs.push(
                s.kmalloc_node(512, GFP_KERNEL, node as i32)
                    .unwrap()
                    .as_ptr(),
            );
        }
        let pfns: std::collections::BTreeSet<bool> = objs
            .iter()
            .map(|&o| run.contains(&pa.virt_to_page(kmem::addr::VirtAddr(o as usize)).unwrap()))
            .collect();
        assert_eq!(pfns.len(), 2, "objects inside and outside the direct run");
        for &o in &objs {
            s.kfree(o).unwrap();
            assert!(s.kfree(o).is_err(), "second free of {o:p} refused");
        }
        assert_eq!(s.errors(), objs.len());
    }
}
