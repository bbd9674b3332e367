//! Migrate-type grouping: movable churn does not scatter unmovable
//! allocations. Unmovable pages claim whole pageblocks (all pageblocks boot
//! as Movable) and keep to them, so however much movable memory comes and
//! goes around them, the live unmovable pages sit in about as few
//! pageblocks as they could possibly fill.

mod page_common;

use kmem::addr::{Pfn, PAGEBLOCK_NR_PAGES, PAGEBLOCK_ORDER};
use kmem::gfp::{MigrateType, ZoneType, GFP_HIGHUSER_MOVABLE, GFP_KERNEL};
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
/// pageblocks of Normal. kmem has no such mode and steals: here the
/// unmovable pages end up in ~60 pageblocks where 5 would do.
#[test]
fn movable_churn_near_the_low_mark_does_not_scatter_unmovable_pages() {
    churn(60, 6);
}
