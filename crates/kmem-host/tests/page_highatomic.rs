//! The high-order atomic reserve (Linux's MIGRATE_HIGHATOMIC) and the
//! fallback and merge rules around it, against Linux 6.18's page allocator:
//!
//! - a high-order GFP_ATOMIC allocation that succeeds in the slow path turns
//!   its pageblock into a HighAtomic pageblock (`reserve_highatomic_pageblock`),
//!   which /proc/pagetypeinfo then shows; not in a zone whose 1% is less
//!   than a pageblock;
//! - such requests take from the reserve first; other non-blocking requests
//!   only when nothing else is left (`rmqueue_buddy`); the reserve's free
//!   pages do not count for other requests' watermarks
//!   (`__zone_watermark_unusable_free`);
//! - a blocking allocation gives the reserve back before it fails
//!   (`unreserve_highatomic_pageblock` from `should_reclaim_retry`);
//! - merging two pageblocks gives the freed block's type (`__free_one_page`);
//! - claims count "alike" pages as Linux's `try_to_claim_block` and try
//!   only the first non-empty fallback list of each order
//!   (`find_suitable_fallback`); a per-CPU refill remembers that it had to
//!   steal (`rmqueue_bulk`'s `rmqueue_mode`);
//! - a reserve page freed waits on the movable per-CPU list and drains back
//!   into the reserve (`free_unref_page`, `free_pcppages_bulk`);
//! - GFP_NOFS and GFP_NOIO failures are not OOM kills (`out_of_memory`);
//! - random sequences keep the reserve's accounting exact and within its
//!   limit (checked by `PageAllocator::verify`).

mod page_common;

use kmem::addr::Pfn;
use kmem::error::AllocError;
use kmem::gfp::{
    Gfp, MigrateType, ZoneType, GFP_ATOMIC, GFP_HIGHUSER_MOVABLE, GFP_KERNEL, GFP_NOFS, GFP_NOIO,
    GFP_NOWAIT,
};
use kmem::page::Watermark;
use kmem_host::Machine;
use page_common::{dma32_machine, verify, SeqRng};

const PB: u64 = 512;
const HA: usize = MigrateType::HighAtomic as usize;
const UNMOVABLE: usize = MigrateType::Unmovable as usize;
const MOVABLE: usize = MigrateType::Movable as usize;
const RECLAIMABLE: usize = MigrateType::Reclaimable as usize;

fn pb(p: Pfn) -> u64 {
    p.0 & !(PB - 1)
}

fn blocks(m: &Machine) -> [u64; 5] {
    m.pages().pageblock_counts(0, ZoneType::Dma32)
}

/// Free pages on the lists of migrate type `mt` in the DMA32 zone.
fn list_pages(m: &Machine, mt: usize) -> u64 {
    let bt = m.pages().zone(0, ZoneType::Dma32).free_blocks_by_type();
    bt.iter()
        .enumerate()
        .map(|(o, l)| (l[mt] as u64) << o)
        .sum()
}

fn pagetypeinfo(m: &Machine) -> String {
    let mut s = String::new();
    kmem::procfs::pagetypeinfo(m.pages(), &mut s).unwrap();
    s
}

fn no_memory(r: Result<Pfn, AllocError>) -> kmem::error::NoMemory {
    match r {
        Err(AllocError::NoMemory(nm)) => nm,
        other => panic!("expected NoMemory, got {other:?}"),
    }
}

/// Fills the DMA32 zone with movable order-4 blocks until it is under its
/// low watermark (every further request goes down the slow path).
fn fill_below_low(m: &Machine) -> Vec<Pfn> {
    let pa = m.pages();
    let z = pa.zone(0, ZoneType::Dma32);
    let mut held = Vec::new();
    while z.free_pages() >= z.watermark(Watermark::Low) {
        held.push(
            pa.alloc_pages(GFP_HIGHUSER_MOVABLE | Gfp::NOWARN, 4)
                .expect("movable fill above min"),
        );
    }
    held
}

/// The whole reserve life cycle on a 256 MiB zone (1% = 650 pages, so at
/// most two pageblocks): reserve, pagetypeinfo, reserve first for
/// high-order atomics, watermarks without the reserve, the reserve as the
/// last resort of other non-blocking requests, and the reserve given back
/// before a GFP_KERNEL failure.
#[test]
fn highatomic_reserve_life_cycle() {
    let m = dma32_machine(256);
    let pa = m.pages();
    let z = pa.zone(0, ZoneType::Dma32);
    let min = z.watermark(Watermark::Min);
    let _held = fill_below_low(&m);
    assert_eq!(blocks(&m)[HA], 0);
    assert_eq!(z.nr_reserved_highatomic(), 0);
    verify(&m);

    // A high-order GFP_ATOMIC request under the low watermark succeeds in
    // the slow path and reserves its pageblock.
    let p = pa.alloc_pages(GFP_ATOMIC, 2).expect("order-2 GFP_ATOMIC");
    assert_eq!(blocks(&m)[HA], 1, "the pageblock of the block is reserved");
    assert_eq!(z.nr_reserved_highatomic(), PB as usize);
    assert!(list_pages(&m, HA) > 0, "its free pages moved to HighAtomic");
    assert_eq!(z.nr_free_highatomic() as u64, list_pages(&m, HA));
    assert!(pa.vmstat().highatomic_reserve >= 1);
    verify(&m);
    let pt = pagetypeinfo(&m);
    let row = pt
        .lines()
        .rfind(|l| l.starts_with("Node 0, zone    DMA32"))
        .expect("block count row");
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cols[cols.len() - 2],
        "1",
        "pagetypeinfo counts one HighAtomic pageblock: {row}"
    );
    let free_row = pt
        .lines()
        .find(|l| l.contains("DMA32, type   HighAtomic"))
        .expect("HighAtomic free row");
    assert!(
        free_row.split_whitespace().skip(6).any(|n| n != "0"),
        "pagetypeinfo shows free HighAtomic blocks: {free_row}"
    );

    // The next high-order atomic request takes from the reserve although
    // ordinary lists have blocks of its order.
    let bt = z.free_blocks_by_type();
    assert!(
        (4..bt.len()).any(|o| bt[o][..3].iter().any(|&n| n > 0)),
        "ordinary blocks of order >= 4 are free too"
    );
    let q = pa.alloc_pages(GFP_ATOMIC, 4).expect("order-4 GFP_ATOMIC");
    assert_eq!(pb(q), pb(p), "served from the HighAtomic pageblock");
    assert_eq!(blocks(&m)[HA], 1, "no second pageblock reserved");
    verify(&m);

    // A blocking request without reserves does not see the reserve's free
    // pages: it fails although the zone is above min counting them.
    let free = z.free_pages();
    let ha_free = z.nr_free_highatomic();
    assert!(
        free > min && free - ha_free <= min,
        "free {free}, of which {ha_free} HighAtomic, min {min}"
    );
    let e = pa.alloc_pages(GFP_KERNEL | Gfp::NORETRY | Gfp::NOWARN, 0);
    assert!(
        e.is_err(),
        "GFP_KERNEL|__GFP_NORETRY may not use the reserve"
    );
    assert_eq!(
        z.nr_reserved_highatomic(),
        PB as usize,
        "the last reserved pageblock is kept (unreserve without force)"
    );
    verify(&m);

    // An order-0 GFP_ATOMIC request (non-blocking, but not a high-order
    // atomic) may take reserve pages, but only once every ordinary list is
    // empty. (GFP_NOWAIT could too, but it has no reserve below min and the
    // reserve alone is under min here.)
    let mut nowait = Vec::new();
    let mut from_reserve = 0;
    while let Ok(r) = pa.alloc_pages(GFP_ATOMIC | Gfp::NOWARN, 0) {
        if pb(r) == pb(p) {
            from_reserve += 1;
            assert_eq!(
                z.free_pages(),
                z.nr_free_highatomic(),
                "a reserve page was handed out while ordinary pages were free"
            );
        }
        nowait.push(r);
    }
    assert!(from_reserve > 0, "GFP_ATOMIC fell back to the reserve");
    verify(&m);

    // A GFP_KERNEL allocation that fails gives the reserve back first.
    let before = pa.vmstat().highatomic_unreserve;
    let r = pa.alloc_pages(GFP_KERNEL | Gfp::NOWARN, 0);
    assert!(pa.vmstat().highatomic_unreserve > before);
    assert_eq!(z.nr_reserved_highatomic(), 0);
    assert_eq!(z.nr_free_highatomic(), 0);
    assert_eq!(blocks(&m)[HA], 0, "the pageblock went back");
    assert_eq!(list_pages(&m, HA), 0);
    match r {
        Ok(page) => pa.free_pages(page, 0).unwrap(),
        Err(e) => assert!(no_memory(Err(e)).oom, "GFP_KERNEL order 0 is an OOM"),
    }
    verify(&m);
}

/// Linux 6.18: a zone whose 1% is less than a pageblock reserves nothing.
/// Linux's `free_unref_page` keeps only the three ordinary types on per-CPU
/// lists: a page of a HighAtomic pageblock freed there waits on the movable
/// list (so a movable request may take it), and a drain files it by its
/// pageblock's type, back into the reserve.
#[test]
fn a_reserve_page_freed_waits_on_the_movable_list_then_drains_back() {
    kmem_host::set_cpu(0);
    let m = dma32_machine(256);
    let pa = m.pages();
    let z = pa.zone(0, ZoneType::Dma32);
    let mut held = fill_below_low(&m);
    let p = pa.alloc_pages(GFP_ATOMIC, 2).expect("order-2 GFP_ATOMIC");
    assert_eq!(blocks(&m)[HA], 1, "the reserve is made");
    // Room above the low watermark again (order-4 frees bypass the per-CPU
    // lists), and every list drained.
    for q in held.split_off(held.len() / 2) {
        pa.free_pages(q, 4).unwrap();
    }
    pa.drain_all_pages();
    let reserve_free = list_pages(&m, HA);

    pa.free_pages(p, 2).unwrap();
    assert_eq!(pa.pcp_pages(), 4, "freed to a per-CPU list");
    assert_eq!(list_pages(&m, HA), reserve_free);
    let q = pa.alloc_pages(GFP_HIGHUSER_MOVABLE, 2).unwrap();
    assert_eq!(q, p, "a movable request takes it from the movable list");
    pa.free_pages(q, 2).unwrap();
    pa.drain_all_pages();
    assert_eq!(
        list_pages(&m, HA),
        reserve_free + 4,
        "drained back into the reserve"
    );
    assert_eq!(z.nr_free_highatomic() as u64, list_pages(&m, HA));
    verify(&m);
    for q in held {
        pa.free_pages(q, 4).unwrap();
    }
    verify(&m);
}

#[test]
fn small_zone_reserves_nothing() {
    let m = dma32_machine(64);
    let pa = m.pages();
    let _held = fill_below_low(&m);
    for _ in 0..8 {
        let _ = pa.alloc_pages(GFP_ATOMIC | Gfp::NOWARN, 2);
    }
    assert_eq!(blocks(&m)[HA], 0);
    assert_eq!(pa.zone(0, ZoneType::Dma32).nr_reserved_highatomic(), 0);
    verify(&m);
}

/// Takes every block of `order` and up that `gfp` can get, ignoring
/// watermarks.
fn take_all(m: &Machine, gfp: Gfp, order: u32) -> Vec<Pfn> {
    let mut v = Vec::new();
    while let Ok(p) = m
        .pages()
        .alloc_pages(gfp | Gfp::MEMALLOC | Gfp::NOWARN, order)
    {
        v.push(p);
    }
    v
}

/// `__free_one_page` (6.10+): two buddy pageblocks of different ordinary
/// types merge, and the merged block takes the type of the block being
/// freed, not that of the lower pageblock.
#[test]
fn merged_pageblocks_take_the_freed_blocks_type() {
    let m = dma32_machine(32);
    let pa = m.pages();
    let mut big = take_all(&m, GFP_HIGHUSER_MOVABLE, 10);
    let _nines = take_all(&m, GFP_HIGHUSER_MOVABLE, 9);
    let x = big.pop().expect("an order-10 block");
    pa.free_pages(x, 10).unwrap();
    let u = pa
        .alloc_pages(GFP_KERNEL | Gfp::MEMALLOC | Gfp::NOWARN, 9)
        .expect("unmovable order 9");
    assert_eq!(u, x, "claims the order-10 block, lower half");
    let v = pa
        .alloc_pages(GFP_HIGHUSER_MOVABLE | Gfp::MEMALLOC | Gfp::NOWARN, 9)
        .expect("movable order 9");
    assert_eq!(v.0, x.0 + PB, "claims the unmovable upper half");
    let b0 = blocks(&m);
    assert!(b0[UNMOVABLE] >= 1);
    // Unmovable lower half first, then the movable upper half: the merged
    // order-10 block is movable.
    pa.free_pages(u, 9).unwrap();
    pa.free_pages(v, 9).unwrap();
    let b1 = blocks(&m);
    assert_eq!(b1[UNMOVABLE], b0[UNMOVABLE] - 1, "{b0:?} -> {b1:?}");
    assert_eq!(b1[MOVABLE], b0[MOVABLE] + 1, "{b0:?} -> {b1:?}");
    let bt = pa.zone(0, ZoneType::Dma32).free_blocks_by_type();
    assert_eq!(bt[10][MOVABLE], 1);
    assert_eq!(bt[10][UNMOVABLE], 0);
    verify(&m);
}

/// Takes the whole zone as movable order-0 pages and returns them sorted,
/// with the first pageblock all of whose pages are among them.
fn take_all_pages(m: &Machine) -> (Vec<Pfn>, u64) {
    let mut v = take_all(m, GFP_HIGHUSER_MOVABLE, 0);
    v.sort();
    let set: std::collections::BTreeSet<u64> = v.iter().map(|p| p.0).collect();
    let b = set
        .iter()
        .map(|&p| p & !(PB - 1))
        .find(|&b| (b..b + PB).all(|p| set.contains(&p)))
        .expect("a pageblock wholly taken");
    (v, b)
}

/// `try_to_claim_block`: an unmovable request falling back to a movable
/// pageblock counts every page that is neither free nor movable as alike.
/// The pageblock has 150 free pages, 150 reclaimable and 212 movable ones:
/// 300 >= 256, so Linux claims it (kmem used to count only unmovable pages,
/// found 150 and stole a single block instead).
#[test]
fn claim_counts_non_movable_pages_as_alike() {
    let m = dma32_machine(32);
    let pa = m.pages();
    let (_all, b) = take_all_pages(&m);
    for p in b..b + 150 {
        pa.free_pages(Pfn(p), 0).unwrap();
    }
    pa.drain_all_pages();
    for _ in 0..150 {
        let r = pa
            .alloc_pages(
                GFP_KERNEL | Gfp::RECLAIMABLE | Gfp::MEMALLOC | Gfp::NOWARN,
                0,
            )
            .expect("reclaimable page");
        assert_eq!(pb(r), b, "only that pageblock has free pages");
    }
    assert_eq!(pa.nr_free_pages_with_pcp(), 0);
    let b0 = blocks(&m);
    assert_eq!(b0[RECLAIMABLE], 0, "150 of 512 never claim: stolen");
    for p in b + 150..b + 300 {
        pa.free_pages(Pfn(p), 0).unwrap();
    }
    pa.drain_all_pages();
    let u = pa
        .alloc_pages(GFP_KERNEL | Gfp::MEMALLOC | Gfp::NOWARN, 0)
        .expect("unmovable page");
    assert_eq!(pb(u), b);
    let b1 = blocks(&m);
    assert_eq!(
        b1[UNMOVABLE],
        b0[UNMOVABLE] + 1,
        "claimed: {b0:?} -> {b1:?}"
    );
    assert_eq!(b1[MOVABLE], b0[MOVABLE] - 1);
    verify(&m);
}

/// Builds: a reclaimable pageblock R with one free order-7 block (128 free:
/// not claimable for an unmovable request), a movable pageblock M with two
/// free order-7 blocks (256 free: claimable). Everything else allocated.
fn reclaimable_and_movable_candidates(m: &Machine) -> (u64, u64) {
    let pa = m.pages();
    let mut sevens = take_all(m, GFP_HIGHUSER_MOVABLE, 7);
    let _rest = take_all(m, GFP_HIGHUSER_MOVABLE, 0);
    sevens.sort();
    let whole: Vec<u64> = sevens
        .iter()
        .map(|&p| pb(p))
        .filter(|&b| (0..4).all(|i| sevens.contains(&Pfn(b + i * 128))))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let (r, mm) = (whole[0], whole[1]);
    for i in 0..4 {
        pa.free_pages(Pfn(r + i * 128), 7).unwrap();
    }
    for i in 0..4 {
        let p = pa
            .alloc_pages(
                GFP_KERNEL | Gfp::RECLAIMABLE | Gfp::MEMALLOC | Gfp::NOWARN,
                7,
            )
            .expect("reclaimable order 7");
        assert_eq!(p.0, r + i * 128, "R claimed whole and filled in order");
    }
    pa.free_pages(Pfn(r), 7).unwrap();
    pa.free_pages(Pfn(mm), 7).unwrap();
    pa.free_pages(Pfn(mm + 256), 7).unwrap();
    assert_eq!(pa.nr_free_pages_with_pcp(), 384);
    (r, mm)
}

/// `__rmqueue_claim` / `find_suitable_fallback`: at each order only the
/// first non-empty fallback list (Reclaimable before Movable for an
/// unmovable request) is tried; when its claim fails the search goes to
/// lower orders and then steals. The movable pageblock M, claimable but on
/// the second list, is left alone.
#[test]
fn claim_tries_only_the_first_fallback_list_of_each_order() {
    let m = dma32_machine(32);
    let pa = m.pages();
    let (r, _mm) = reclaimable_and_movable_candidates(&m);
    let b0 = blocks(&m);
    let p = pa
        .alloc_pages(GFP_KERNEL | Gfp::MEMALLOC | Gfp::NOWARN, 4)
        .expect("unmovable order 4");
    assert_eq!(pb(p), r, "stolen from the reclaimable pageblock");
    assert_eq!(blocks(&m), b0, "no pageblock changed type");
    verify(&m);
}

/// `rmqueue_bulk` remembers its fallback stage: once a per-CPU refill had
/// to steal, the rest of the batch steals too rather than searching for a
/// pageblock to claim again (which would claim M here).
#[test]
fn pcp_refill_keeps_stealing_after_a_steal() {
    let m = dma32_machine(32);
    let pa = m.pages();
    let (r, _mm) = reclaimable_and_movable_candidates(&m);
    let b0 = blocks(&m);
    let p = pa
        .alloc_pages(GFP_KERNEL | Gfp::MEMALLOC | Gfp::NOWARN, 0)
        .expect("unmovable order 0");
    assert_eq!(pb(p), r);
    assert_eq!(
        blocks(&m),
        b0,
        "no pageblock changed type: {:?}",
        blocks(&m)
    );
    verify(&m);
}

/// Linux's `out_of_memory` kills nothing for a request without `__GFP_FS`:
/// GFP_NOFS and GFP_NOIO failures are not OOM kills; GFP_KERNEL's is.
#[test]
fn nofs_and_noio_failures_are_not_oom() {
    let m = dma32_machine(32);
    let pa = m.pages();
    let _all = take_all(&m, GFP_KERNEL, 0);
    let oom0 = pa.vmstat().oom;
    for gfp in [GFP_NOFS, GFP_NOIO] {
        let nm = no_memory(pa.alloc_pages(gfp | Gfp::NOWARN, 0));
        assert!(!nm.oom, "{gfp}: no OOM kill without __GFP_FS");
    }
    assert_eq!(pa.vmstat().oom, oom0);
    let nm = no_memory(pa.alloc_pages(GFP_KERNEL | Gfp::NOWARN, 0));
    assert!(nm.oom, "GFP_KERNEL: OOM");
    assert_eq!(pa.vmstat().oom, oom0 + 1);
}

/// Random allocations and frees near exhaustion on a zone with room for a
/// reserve, with every kind of mask: after each step `verify` checks that
/// every free block is on its pageblock's list, that nr_free_highatomic is
/// the HighAtomic lists' pages, nr_reserved_highatomic the HighAtomic
/// pageblocks' pages, and the reserve within its limit.
#[test]
fn random_sequences_keep_reserve_accounting() {
    let m = dma32_machine(256);
    let pa = m.pages();
    let z = pa.zone(0, ZoneType::Dma32);
    // 1% of the zone rounded up to whole pageblocks (1024 here).
    let limit = (z.managed_pages() / 100).div_ceil(PB as usize) * PB as usize;
    assert_eq!(limit, 1024);
    let mut held = fill_below_low(&m);
    // Give some back so that the random phase moves around the marks.
    let give = held.split_off(held.len() - 40);
    for p in give {
        pa.free_pages(p, 4).unwrap();
    }
    let masks = [
        GFP_ATOMIC,
        GFP_ATOMIC,
        GFP_NOWAIT,
        GFP_KERNEL | Gfp::NORETRY,
        GFP_KERNEL,
        GFP_HIGHUSER_MOVABLE | Gfp::NORETRY,
        GFP_KERNEL | Gfp::RECLAIMABLE | Gfp::NORETRY,
    ];
    let mut rng = SeqRng::new(0x41A7);
    let mut live: Vec<(Pfn, u32)> = Vec::new();
    let mut max_reserved = 0;
    for step in 0..6000 {
        if rng.chance(55) || live.is_empty() {
            let gfp = masks[rng.below(masks.len() as u64) as usize] | Gfp::NOWARN;
            let order = rng.below(7) as u32;
            if let Ok(p) = pa.alloc_pages(gfp, order) {
                live.push((p, order));
            }
        } else {
            let i = rng.below(live.len() as u64) as usize;
            let (p, o) = live.swap_remove(i);
            pa.free_pages(p, o).unwrap();
        }
        if rng.chance(2) {
            pa.drain_all_pages();
        }
        let reserved = z.nr_reserved_highatomic();
        assert!(reserved <= limit, "step {step}: {reserved} reserved");
        max_reserved = max_reserved.max(reserved);
        if step % 50 == 0 {
            if let Err(e) = pa.verify() {
                panic!("step {step}: {e}");
            }
        }
    }
    assert!(max_reserved > 0, "the sequence reserved something");
    for (p, o) in live {
        pa.free_pages(p, o).unwrap();
    }
    for p in held {
        pa.free_pages(p, 4).unwrap();
    }
    pa.drain_all_pages();
    verify(&m);
}
