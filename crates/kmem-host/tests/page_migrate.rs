//! Migrate-type grouping: movable churn does not scatter unmovable
//! allocations. Unmovable pages claim whole pageblocks (all pageblocks boot
//! as Movable) and keep to them, so however much movable memory comes and
//! goes around them, the live unmovable pages sit in about as few
//! pageblocks as they could possibly fill.

mod page_common;

use kmem::addr::{Pfn, PAGEBLOCK_NR_PAGES, PAGEBLOCK_ORDER};
use kmem::gfp::{Gfp, MigrateType, ZoneType, GFP_HIGHUSER_MOVABLE, GFP_KERNEL};
use page_common::*;
use std::collections::BTreeSet;

/// Distinct pageblocks touched by blocks `(pfn, order)`.
fn pageblocks(blocks: &[(Pfn, u32)]) -> usize {
    let mut set = BTreeSet::new();
    for &(p, o) in blocks {
        let last = p.0 + (1 << o) - 1;
        for pb in (p.0 >> PAGEBLOCK_ORDER)..=(last >> PAGEBLOCK_ORDER) {
            set.insert(pb);
        }
    }
    set.len()
}

/// 60 000 steps of movable churn (orders below `max_order`, at most
/// `cap_percent` of the free memory live) with one GFP_KERNEL page kept
/// live every 25 steps; checks that the unmovable pages use at most
/// `min + 2` pageblocks.
fn churn(cap_percent: u64, max_order: u32) {
    let m = machine(256 * MIB);
    let base = Baseline::take(&m);
    let pa = m.pages();
    let unmovable_blocks = |pa: &kmem::PageAllocator<_>| -> u64 {
        pa.populated_zones()
            .map(|z| pa.pageblock_counts(z.node(), z.zone_type())[MigrateType::Unmovable.index()])
            .sum()
    };
    assert_eq!(unmovable_blocks(pa), 0, "every pageblock boots Movable");
    let v0 = pa.vmstat();

    let mut rng = SeqRng::new(42);
    let mut movable: Vec<(Pfn, u32)> = Vec::new();
    let mut movable_pages = 0u64;
    let mut unmovable: Vec<(Pfn, u32)> = Vec::new();
    let movable_cap = base.nr_free as u64 * cap_percent / 100;
    for step in 0..60_000u32 {
        if step % 25 == 0 {
            // The steady trickle of kernel allocations, kept live.
            unmovable.push((pa.alloc_pages(GFP_KERNEL, 0).unwrap(), 0));
        }
        let order = rng.below(max_order as u64) as u32;
        if movable_pages + (1 << order) <= movable_cap && (rng.chance(55) || movable.is_empty()) {
            let p = pa.alloc_pages(GFP_HIGHUSER_MOVABLE, order).unwrap();
            movable.push((p, order));
            movable_pages += 1 << order;
        } else if !movable.is_empty() {
            let (p, o) = movable.swap_remove(rng.below(movable.len() as u64) as usize);
            pa.free_pages(p, o).unwrap();
            movable_pages -= 1 << o;
        }
        if step % 10_000 == 0 {
            verify(&m);
        }
    }
    let unmovable_pages = unmovable.len() as u64;
    let min_blocks = unmovable_pages.div_ceil(PAGEBLOCK_NR_PAGES) as usize;
    let used = pageblocks(&unmovable);
    let movable_used = pageblocks(&movable);
    // For contrast: movable memory is everywhere.
    assert!(movable_used > 4 * min_blocks, "{movable_used}");
    let v1 = pa.vmstat();
    assert!(
        v1.fallback_claim > v0.fallback_claim,
        "unmovable requests claimed pageblocks"
    );
    assert!(
        used <= min_blocks + 2,
        "{unmovable_pages} unmovable pages spread over {used} pageblocks; {min_blocks} would do \
         (movable: {movable_pages} pages live; {} fallback claims, {} steals; Normal \
         pageblocks by type {:?})",
        v1.fallback_claim - v0.fallback_claim,
        v1.fallback_steal - v0.fallback_steal,
        pa.pageblock_counts(0, ZoneType::Normal)
    );
    // Each pageblock holding an unmovable page was claimed as Unmovable.
    assert!(unmovable_blocks(pa) >= used as u64);

    for (p, o) in movable.into_iter().chain(unmovable) {
        pa.free_pages(p, o).unwrap();
    }
    base.assert_restored(&m);
}

#[test]
fn movable_churn_does_not_scatter_unmovable_pages() {
    churn(33, 4);
}

/// Movable memory fills Normal to its low watermark while DMA32 has plenty.
/// Linux sets ALLOC_NOFRAGMENT for allocations whose preferred zone is
/// Normal (`alloc_flags_nofragment`): in that mode `__rmqueue` only claims
/// whole free pageblocks and never steals, so the unmovable trickle moves
/// to a fresh pageblock of DMA32 rather than stealing pages from movable
/// pageblocks of Normal. kmem does the same; before it had the mode (commit
/// 9326f69) it stole, and here the unmovable pages ended up in ~60
/// pageblocks where 5 would do.
#[test]
fn movable_churn_near_the_low_mark_does_not_scatter_unmovable_pages() {
    churn(60, 6);
}

/// Linux's `free_unref_page` files a freed page on the per-CPU list of its
/// pageblock's type, not of the type it was allocated with: a page that an
/// unmovable request took from a movable pageblock (a steal too small to
/// claim the block) goes back to movable users. Otherwise the next unmovable
/// request takes it again and the movable pageblock stays polluted.
#[test]
fn a_page_stolen_from_a_movable_pageblock_is_freed_to_the_movable_list() {
    kmem_host::set_cpu(0);
    let m = dma32_machine(64);
    let base = Baseline::take(&m);
    let pa = m.pages();
    let z = pa.zone(0, ZoneType::Dma32);
    let unmovable_blocks =
        || pa.pageblock_counts(0, ZoneType::Dma32)[MigrateType::Unmovable.index()];
    // Every page movable (__GFP_MEMALLOC takes the reserves too), then 100
    // freed in every pageblock: no pageblock has half its pages free, so an
    // unmovable request must steal pages without claiming a block.
    let mut held = Vec::new();
    while let Ok(p) = pa.alloc_pages(GFP_HIGHUSER_MOVABLE | Gfp::MEMALLOC | Gfp::NOWARN, 0) {
        held.push(p);
    }
    assert_eq!(z.free_pages(), 0);
    held.sort();
    let mut kept = Vec::new();
    for chunk in held.chunk_by(|a, b| a.0 >> PAGEBLOCK_ORDER == b.0 >> PAGEBLOCK_ORDER) {
        for (i, &p) in chunk.iter().enumerate() {
            if i < 100 {
                pa.free_pages(p, 0).unwrap();
            } else {
                kept.push(p);
            }
        }
    }
    pa.drain_all_pages();
    let steals = pa.vmstat().fallback_steal;

    let u = pa.alloc_pages(GFP_KERNEL, 0).unwrap();
    assert!(
        pa.vmstat().fallback_steal > steals,
        "the unmovable request stole"
    );
    assert_eq!(unmovable_blocks(), 0, "and claimed no pageblock");
    pa.free_pages(u, 0).unwrap();
    // The movable list was drained: its head is now the page just freed.
    let mv = pa.alloc_pages(GFP_HIGHUSER_MOVABLE, 0).unwrap();
    assert_eq!(mv, u, "the page went back on the movable per-CPU list");
    let again = pa.alloc_pages(GFP_KERNEL, 0).unwrap();
    assert_ne!(again, u);
    verify(&m);

    for p in kept.into_iter().chain([mv, again]) {
        pa.free_pages(p, 0).unwrap();
    }
    base.assert_restored(&m);
}
