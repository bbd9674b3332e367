//! One test per GFP rule of the page allocator, with exact counts.
//!
//! The counts follow from the watermark arithmetic (see
//! `kmem::page::watermark`): an order-0 allocation with highest zone `H`
//! takes a page from zone `z` only while `free(z) > mark(z) + lowmem_reserve(z, H)`,
//! where the mark is `min` lowered by the mask's reserves:
//!
//! - GFP_NOWAIT:                 `min`
//! - `__GFP_HIGH` and blocking:  `min - min/2`
//! - GFP_ATOMIC (non-blocking):  `m - m/4` with `m = min - min/2` (about 3/8 of min)
//! - `__GFP_MEMALLOC`:           no mark at all
//!
//! Pages cached on per-CPU lists do not count as free in a zone, but a
//! failing allocation drains them back first (this CPU for non-blocking
//! masks, every CPU for blocking ones), so after a failure each zone holds
//! exactly its threshold. Tests run on one thread, hence one CPU.

mod page_common;

use kmem::addr::Pfn;
use kmem::error::AllocError;
use kmem::gfp::MigrateType;
use kmem::gfp::{
    Gfp, ZoneType, GFP_ATOMIC, GFP_DMA, GFP_DMA32, GFP_HIGHUSER_MOVABLE, GFP_KERNEL, GFP_NOWAIT,
};
use kmem::page::reclaim::{MAX_RECLAIM_RETRIES, SWAP_CLUSTER_MAX};
use kmem::page::{PageAllocator, Shrinker, Watermark};
use kmem::NoMemory;
use kmem_host::{HostPlatform, Machine};
use page_common::*;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Per populated zone: (type, free pages, min watermark, low watermark,
/// lowmem reserve against an allocation whose highest zone is `highest`).
fn zones(m: &Machine, highest: ZoneType) -> Vec<(ZoneType, usize, usize, usize, usize)> {
    m.pages()
        .populated_zones()
        .map(|z| {
            (
                z.zone_type(),
                z.free_pages(),
                z.watermark(Watermark::Min),
                z.watermark(Watermark::Low),
                z.lowmem_reserve(highest),
            )
        })
        .collect()
}

/// `min` lowered by `__GFP_HIGH` (to half), and by non-blocking on top of
/// that (a further quarter): Linux's `__zone_watermark_ok`.
fn mark(min: usize, high: bool, nonblock: bool) -> usize {
    let mut m = min;
    if high {
        m -= m / 2;
        if nonblock {
            m -= m / 4;
        }
    }
    m
}

/// Allocates order-0 pages with `gfp` (in a hard IRQ if `irq`) until one
/// fails; the pages go to `held`. Returns how many succeeded and the error.
fn take_until_fail(m: &Machine, gfp: Gfp, irq: bool, held: &mut Vec<Pfn>) -> (usize, NoMemory) {
    let _g = irq.then(kmem_host::irq);
    let mut n = 0;
    loop {
        match m.pages().alloc_pages(gfp, 0) {
            Ok(p) => {
                held.push(p);
                n += 1;
            }
            Err(AllocError::NoMemory(e)) => return (n, e),
            Err(e) => panic!("{gfp}: unexpected {e:?}"),
        }
        assert!(n < 1 << 20, "{gfp} never fails");
    }
}

/// Checks that every zone holds exactly `free == mark + reserve` (and no
/// page sits on a per-CPU list): the allocation that just failed stopped at
/// the threshold, no earlier and no later.
#[track_caller]
fn assert_at_threshold(m: &Machine, what: &str, highest: ZoneType, high: bool, nonblock: bool) {
    assert_eq!(
        m.pages().pcp_pages(),
        0,
        "{what}: the failure drained the lists"
    );
    for (zt, free, min, _, res) in zones(m, highest) {
        let want = mark(min, high, nonblock) + res;
        assert_eq!(
            free,
            want,
            "{what}: zone {} stops at mark {} + lowmem reserve {res}",
            zt.name(),
            mark(min, high, nonblock)
        );
    }
}

/// Fills the machine with GFP_NOWAIT down to every zone's min watermark.
fn fill_to_min(m: &Machine, held: &mut Vec<Pfn>) -> usize {
    let before = zones(m, ZoneType::Normal);
    // Pages cached on this CPU's lists come back when an allocation fails.
    let cached = m.pages().pcp_pages();
    let (n, e) = take_until_fail(m, GFP_NOWAIT, false, held);
    let expected: usize = cached
        + before
            .iter()
            .map(|&(_, free, min, _, res)| free - (min + res))
            .sum::<usize>();
    assert_eq!(
        n, expected,
        "GFP_NOWAIT takes every page above min + lowmem reserve"
    );
    assert_at_threshold(m, "GFP_NOWAIT", ZoneType::Normal, false, false);
    assert_eq!((e.order, e.highest_zone), (0, ZoneType::Normal));
    assert!(
        !e.reclaimed && !e.oom,
        "non-blocking: no reclaim, no OOM: {e:?}"
    );
    n
}

fn free_all(m: &Machine, held: &mut Vec<Pfn>) {
    for p in held.drain(..) {
        m.pages().free_pages(p, 0).unwrap();
    }
}

#[test]
fn nowait_stops_at_min_and_gets_no_reserve() {
    let m = small_machine();
    let base = Baseline::take(&m);
    let mut held = Vec::new();
    let v0 = m.pages().vmstat();
    fill_to_min(&m, &mut held);
    let v1 = m.pages().vmstat();
    assert_eq!(
        v1.alloc_reserve, v0.alloc_reserve,
        "GFP_NOWAIT never dips into reserves"
    );
    assert!(
        v1.kswapd_wake > v0.kswapd_wake,
        "under the low mark GFP_NOWAIT wakes kswapd"
    );
    assert_eq!(
        m.platform().log_len(),
        0,
        "GFP_NOWAIT includes __GFP_NOWARN"
    );
    // Again, in IRQ context: the context does not change what the mask earns.
    let (n, _) = take_until_fail(&m, GFP_NOWAIT, true, &mut held);
    assert_eq!(n, 0);
    free_all(&m, &mut held);
    base.assert_restored(&m);
}

#[test]
fn atomic_in_irq_goes_below_min_down_to_three_eighths() {
    let m = small_machine();
    let base = Baseline::take(&m);
    let mut held = Vec::new();
    fill_to_min(&m, &mut held);
    let before = zones(&m, ZoneType::Normal);
    let v0 = m.pages().vmstat();
    let (n, e) = take_until_fail(&m, GFP_ATOMIC, true, &mut held);
    let expected: usize = before
        .iter()
        .map(|&(_, _, min, _, _)| min - mark(min, true, true))
        .sum();
    assert!(n > 0, "GFP_ATOMIC succeeds below min");
    assert_eq!(
        n, expected,
        "GFP_ATOMIC takes min - (3/8 of min) in every zone"
    );
    assert_at_threshold(&m, "GFP_ATOMIC", ZoneType::Normal, true, true);
    for &(zt, _, min, _, _) in &before {
        let m38 = mark(min, true, true);
        assert!(
            m38 * 8 >= min * 3 - 8 && m38 * 8 <= min * 3 + 16,
            "{zt:?}: {m38} ~ 3/8 of {min}"
        );
    }
    // Every page taken from Normal (no lowmem reserve there) left it below min.
    let normal_share = {
        let (_, _, min, _, _) = before[2];
        min - mark(min, true, true)
    };
    let v1 = m.pages().vmstat();
    assert!(v1.alloc_reserve - v0.alloc_reserve >= normal_share as u64);
    assert!(!e.reclaimed && !e.oom);
    // The failure is reported (GFP_ATOMIC has no __GFP_NOWARN).
    assert!(m
        .platform()
        .log_contains("page allocation failure: order:0"));
    free_all(&m, &mut held);
    base.assert_restored(&m);
}

#[test]
fn high_with_blocking_gets_only_half_of_min() {
    let m = small_machine();
    let base = Baseline::take(&m);
    let mut held = Vec::new();
    fill_to_min(&m, &mut held);
    let before = zones(&m, ZoneType::Normal);
    let (n, e) = take_until_fail(&m, GFP_KERNEL | Gfp::HIGH, false, &mut held);
    let expected: usize = before.iter().map(|&(_, _, min, _, _)| min / 2).sum();
    assert_eq!(n, expected, "__GFP_HIGH with blocking: half of min");
    assert_at_threshold(&m, "GFP_KERNEL|__GFP_HIGH", ZoneType::Normal, true, false);
    assert!(
        e.reclaimed && e.oom,
        "blocking order 0: reclaim ran, then OOM: {e:?}"
    );
    // GFP_ATOMIC still gets the further quarter from here.
    let (n, _) = take_until_fail(&m, GFP_ATOMIC, true, &mut held);
    let expected: usize = before
        .iter()
        .map(|&(_, _, min, _, _)| mark(min, true, false) - mark(min, true, true))
        .sum();
    assert!(expected > 0);
    assert_eq!(n, expected);
    free_all(&m, &mut held);
    base.assert_restored(&m);
}

#[test]
fn memalloc_ignores_watermarks() {
    let m = small_machine();
    let base = Baseline::take(&m);
    let mut held = Vec::new();
    fill_to_min(&m, &mut held);
    take_until_fail(&m, GFP_ATOMIC, true, &mut held);
    let left = m.pages().nr_free_pages();
    assert!(left > 0);
    let v0 = m.pages().vmstat();
    let (n, e) = take_until_fail(&m, GFP_ATOMIC | Gfp::MEMALLOC, true, &mut held);
    let v1 = m.pages().vmstat();
    assert_eq!(
        n, left,
        "__GFP_MEMALLOC takes every last page, reserves included"
    );
    assert_eq!(m.pages().nr_free_pages(), 0);
    assert_eq!(m.pages().pcp_pages(), 0);
    assert_eq!(v1.alloc_no_watermarks - v0.alloc_no_watermarks, n as u64);
    assert_eq!(e.free_pages, 0);
    assert_eq!(e.largest_free_order, None);
    free_all(&m, &mut held);
    base.assert_restored(&m);
}

#[test]
fn nomemalloc_cancels_memalloc_and_the_atomic_quarter() {
    let m = small_machine();
    let base = Baseline::take(&m);
    let mut held = Vec::new();
    fill_to_min(&m, &mut held);
    let before = zones(&m, ZoneType::Normal);
    // Non-blocking with __GFP_NOMEMALLOC loses the extra quarter: min/2 only.
    let (n, _) = take_until_fail(&m, GFP_ATOMIC | Gfp::NOMEMALLOC, true, &mut held);
    let expected: usize = before.iter().map(|&(_, _, min, _, _)| min / 2).sum();
    assert_eq!(n, expected);
    assert_at_threshold(
        &m,
        "GFP_ATOMIC|__GFP_NOMEMALLOC",
        ZoneType::Normal,
        true,
        false,
    );
    // __GFP_MEMALLOC would take everything; __GFP_NOMEMALLOC overrides it.
    let v0 = m.pages().vmstat();
    let gfp = GFP_ATOMIC | Gfp::MEMALLOC | Gfp::NOMEMALLOC;
    let (n, _) = take_until_fail(&m, gfp, true, &mut held);
    assert_eq!(n, 0, "{gfp} gets nothing below min/2");
    assert_eq!(
        m.pages().vmstat().alloc_no_watermarks,
        v0.alloc_no_watermarks
    );
    let (n, _) = take_until_fail(&m, GFP_ATOMIC | Gfp::MEMALLOC, true, &mut held);
    assert!(n > 0, "without __GFP_NOMEMALLOC the same request succeeds");
    free_all(&m, &mut held);
    base.assert_restored(&m);
}

#[test]
fn zone_choice_and_fallback_guarded_by_lowmem_reserve() {
    let m = small_machine();
    let base = Baseline::take(&m);
    let pa = m.pages();
    let zone_of = |p: Pfn| pa.frame(p).unwrap().zone_index();
    let mut held = Vec::new();
    for (gfp, zt) in [
        (GFP_KERNEL | GFP_DMA, ZoneType::Dma),
        (GFP_KERNEL | GFP_DMA32, ZoneType::Dma32),
        (GFP_KERNEL, ZoneType::Normal),
        (GFP_HIGHUSER_MOVABLE, ZoneType::Normal),
        (GFP_ATOMIC | GFP_DMA, ZoneType::Dma),
    ] {
        let p = pa.alloc_pages(gfp, 2).unwrap();
        assert_eq!(zone_of(p), zt.index(), "{gfp} allocates from {}", zt.name());
        check_zone(&m, gfp, p.0, 4);
        pa.free_pages(p, 2).unwrap();
    }

    // GFP_KERNEL fills Normal first and falls back to DMA32, then DMA, only
    // when the zone above is at its low mark (fast path), or (Linux's
    // ALLOC_NOFRAGMENT) when Normal has no unmovable free block and no whole
    // free pageblock to claim, so taking from it would mix mobility types.
    let wm = |zt: ZoneType, w| pa.zone(0, zt).watermark(w);
    let unfragmented_room = |zt: ZoneType| {
        let by_type = pa.zone(0, zt).free_blocks_by_type();
        let own = by_type
            .iter()
            .any(|row| row[MigrateType::Unmovable.index()] > 0);
        let whole_block = by_type[9..].iter().any(|row| row.iter().any(|&n| n > 0));
        own || whole_block
    };
    let (mut seen32, mut seen_dma) = (false, false);
    loop {
        let normal_free = pa.zone(0, ZoneType::Normal).free_pages();
        let dma32_free = pa.zone(0, ZoneType::Dma32).free_pages();
        let normal_room = unfragmented_room(ZoneType::Normal);
        let Ok(p) = pa.alloc_pages(GFP_KERNEL, 0) else {
            break;
        };
        held.push(p);
        match zone_of(p) {
            1 if !seen32 => {
                seen32 = true;
                assert!(normal_free <= wm(ZoneType::Normal, Watermark::Low) || !normal_room);
            }
            0 if !seen_dma => {
                seen_dma = true;
                let res = pa.zone(0, ZoneType::Dma32).lowmem_reserve(ZoneType::Normal);
                assert!(dma32_free <= wm(ZoneType::Dma32, Watermark::Low) + res);
            }
            _ => {}
        }
    }
    assert!(seen32 && seen_dma, "GFP_KERNEL fell back to DMA32 and DMA");
    // The last lowmem_reserve pages of DMA and DMA32 were kept from it.
    assert_at_threshold(&m, "GFP_KERNEL", ZoneType::Normal, false, false);
    let res = |zt: ZoneType, h| pa.zone(0, zt).lowmem_reserve(h);
    assert!(res(ZoneType::Dma, ZoneType::Normal) > 0 && res(ZoneType::Dma32, ZoneType::Normal) > 0);

    // A DMA32 allocation may take DMA32's reserve against Normal, and the
    // part of DMA's reserve that guards against Normal but not DMA32.
    let (n, _) = take_until_fail(&m, GFP_KERNEL | GFP_DMA32, false, &mut held);
    assert_eq!(
        n,
        res(ZoneType::Dma32, ZoneType::Normal) + res(ZoneType::Dma, ZoneType::Normal)
            - res(ZoneType::Dma, ZoneType::Dma32)
    );
    assert_at_threshold(&m, "GFP_DMA32", ZoneType::Dma32, false, false);
    // And a DMA allocation the rest of DMA's reserve.
    let (n, e) = take_until_fail(&m, GFP_KERNEL | GFP_DMA, false, &mut held);
    assert_eq!(n, res(ZoneType::Dma, ZoneType::Dma32));
    assert_eq!(e.highest_zone, ZoneType::Dma);
    assert_eq!(
        pa.zone(0, ZoneType::Dma).free_pages(),
        wm(ZoneType::Dma, Watermark::Min)
    );
    free_all(&m, &mut held);
    base.assert_restored(&m);
}

/// A cache of order-0 pages that gives them back under reclaim, in the
/// order they were put in, and counts how it was called.
struct Pool {
    pages: Mutex<VecDeque<Pfn>>,
    count_calls: AtomicUsize,
    scan_calls: AtomicUsize,
    freed: AtomicUsize,
    masks: Mutex<Vec<Gfp>>,
}

impl Pool {
    fn register(m: &Machine, pages: impl IntoIterator<Item = Pfn>) -> &'static Pool {
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            pages: Mutex::new(pages.into_iter().collect()),
            count_calls: AtomicUsize::new(0),
            scan_calls: AtomicUsize::new(0),
            freed: AtomicUsize::new(0),
            masks: Mutex::new(Vec::new()),
        }));
        m.pages().register_shrinker(pool).unwrap();
        pool
    }
    fn calls(&self) -> usize {
        self.count_calls.load(SeqCst) + self.scan_calls.load(SeqCst)
    }
}

impl Shrinker<HostPlatform> for Pool {
    fn name(&self) -> &str {
        "test-pool"
    }
    fn count_objects(&self, _: &PageAllocator<HostPlatform>, _: Gfp) -> usize {
        self.count_calls.fetch_add(1, SeqCst);
        self.pages.lock().unwrap().len()
    }
    fn scan_objects(&self, pa: &PageAllocator<HostPlatform>, nr: usize, gfp: Gfp) -> usize {
        self.scan_calls.fetch_add(1, SeqCst);
        self.masks.lock().unwrap().push(gfp);
        let mut q = self.pages.lock().unwrap();
        let mut n = 0;
        while n < nr {
            let Some(p) = q.pop_front() else { break };
            pa.free_pages(p, 0).unwrap();
            n += 1;
        }
        self.freed.fetch_add(n, SeqCst);
        n
    }
}

/// A shrinker that always claims progress and never frees anything: it
/// makes the retry rules observable.
struct Liar {
    scans: AtomicUsize,
}

impl Shrinker<HostPlatform> for Liar {
    fn name(&self) -> &str {
        "liar"
    }
    fn count_objects(&self, _: &PageAllocator<HostPlatform>, _: Gfp) -> usize {
        1000
    }
    fn scan_objects(&self, _: &PageAllocator<HostPlatform>, nr: usize, _: Gfp) -> usize {
        self.scans.fetch_add(1, SeqCst);
        nr
    }
}

/// Takes `n` held pages of the Normal zone out of `held`.
fn normal_pages(m: &Machine, held: &mut Vec<Pfn>, n: usize) -> Vec<Pfn> {
    let mut out = Vec::new();
    held.retain(|&p| {
        if out.len() < n && m.pages().frame(p).unwrap().zone_index() == 2 {
            out.push(p);
            false
        } else {
            true
        }
    });
    assert_eq!(out.len(), n);
    out
}

#[test]
fn shrinkers_run_for_gfp_kernel_never_for_atomic_or_nowait() {
    let m = small_machine();
    let base = Baseline::take(&m);
    let mut held = Vec::new();
    fill_to_min(&m, &mut held);
    let pool = Pool::register(&m, normal_pages(&m, &mut held, 256));
    let v0 = m.pages().vmstat();
    assert_eq!(take_until_fail(&m, GFP_NOWAIT, false, &mut held).0, 0);
    let (n, _) = take_until_fail(&m, GFP_ATOMIC, true, &mut held);
    assert!(n > 0);
    assert_eq!(take_until_fail(&m, GFP_NOWAIT, true, &mut held).0, 0);
    assert_eq!(pool.calls(), 0, "non-blocking masks never reclaim");
    assert_eq!(m.pages().vmstat().direct_reclaim, v0.direct_reclaim);

    // Normal is now at 3/8 of min; GFP_KERNEL reclaims until it is above
    // min again, SWAP_CLUSTER_MAX pages per round.
    let (_, _, min, _, _) = zones(&m, ZoneType::Normal)[2];
    let gap = min - mark(min, true, true);
    let rounds = (gap + 1).div_ceil(SWAP_CLUSTER_MAX);
    let p = m
        .pages()
        .alloc_pages(GFP_KERNEL, 0)
        .expect("reclaim makes room");
    held.push(p);
    assert_eq!(pool.scan_calls.load(SeqCst), rounds);
    assert_eq!(pool.freed.load(SeqCst), rounds * SWAP_CLUSTER_MAX);
    assert_eq!(
        m.pages().vmstat().direct_reclaim - v0.direct_reclaim,
        rounds as u64
    );
    assert!(
        pool.masks.lock().unwrap().iter().all(|&g| g == GFP_KERNEL),
        "shrinkers see the mask"
    );
    held.extend(pool.pages.lock().unwrap().drain(..));
    free_all(&m, &mut held);
    base.assert_restored(&m);
}

#[test]
fn noretry_gives_up_after_one_reclaim_round() {
    let m = small_machine();
    let base = Baseline::take(&m);
    let mut held = Vec::new();
    fill_to_min(&m, &mut held);
    take_until_fail(&m, GFP_ATOMIC, true, &mut held);
    let pool = Pool::register(&m, normal_pages(&m, &mut held, 256));
    let v0 = m.pages().vmstat();
    let e = m
        .pages()
        .alloc_pages(GFP_KERNEL | Gfp::NORETRY, 0)
        .unwrap_err();
    let AllocError::NoMemory(n) = e else {
        panic!("{e:?}")
    };
    assert!(n.reclaimed && !n.oom, "{n:?}");
    assert_eq!(
        pool.scan_calls.load(SeqCst),
        1,
        "one round only, though more would help"
    );
    assert_eq!(m.pages().vmstat().direct_reclaim - v0.direct_reclaim, 1);
    assert_eq!(m.pages().vmstat().oom, v0.oom, "__GFP_NORETRY never OOMs");
    // Without it the same request keeps reclaiming and succeeds.
    held.push(m.pages().alloc_pages(GFP_KERNEL, 0).unwrap());
    assert!(pool.scan_calls.load(SeqCst) > 1);
    held.extend(pool.pages.lock().unwrap().drain(..));
    free_all(&m, &mut held);
    base.assert_restored(&m);
}

#[test]
fn default_order_0_to_3_reports_oom_when_nothing_reclaims() {
    let m = small_machine();
    let base = Baseline::take(&m);
    let mut held = Vec::new();
    fill_to_min(&m, &mut held);
    m.platform().take_log();
    for order in 0..=3 {
        let v0 = m.pages().vmstat();
        let e = m.pages().alloc_pages(GFP_KERNEL, order).unwrap_err();
        let AllocError::NoMemory(n) = e else {
            panic!("{e:?}")
        };
        assert!(n.reclaimed && n.oom, "order {order}: {n:?}");
        assert_eq!(m.pages().vmstat().oom - v0.oom, 1);
        // No shrinker, no progress: one round, no retries.
        assert_eq!(m.pages().vmstat().direct_reclaim - v0.direct_reclaim, 1);
        let text = e.to_string();
        assert!(
            text.contains(&format!("order:{order}")) && text.contains("OOM killer"),
            "{text}"
        );
        assert!(
            m.platform().take_log().iter().any(|l| l == &text),
            "reported as it reads"
        );
    }
    // __GFP_RETRY_MAYFAIL fails instead of invoking the OOM killer.
    let v0 = m.pages().vmstat();
    let e = m
        .pages()
        .alloc_pages(GFP_KERNEL | Gfp::RETRY_MAYFAIL, 0)
        .unwrap_err();
    assert!(
        matches!(e, AllocError::NoMemory(n) if n.reclaimed && !n.oom),
        "{e:?}"
    );
    assert_eq!(m.pages().vmstat().oom, v0.oom);
    free_all(&m, &mut held);
    base.assert_restored(&m);
}

#[test]
fn reclaim_retries_while_a_shrinker_claims_progress() {
    let m = small_machine();
    let base = Baseline::take(&m);
    let mut held = Vec::new();
    fill_to_min(&m, &mut held);
    let liar: &'static Liar = Box::leak(Box::new(Liar {
        scans: AtomicUsize::new(0),
    }));
    m.pages().register_shrinker(liar).unwrap();
    let v0 = m.pages().vmstat();
    let e = m.pages().alloc_pages(GFP_KERNEL, 0).unwrap_err();
    let v1 = m.pages().vmstat();
    assert!(matches!(e, AllocError::NoMemory(n) if n.oom));
    assert_eq!(liar.scans.load(SeqCst), MAX_RECLAIM_RETRIES as usize);
    assert_eq!(
        v1.direct_reclaim - v0.direct_reclaim,
        MAX_RECLAIM_RETRIES as u64
    );
    assert_eq!(v1.retry - v0.retry, MAX_RECLAIM_RETRIES as u64 - 1);
    free_all(&m, &mut held);
    base.assert_restored(&m);
}

/// Every page of the machine held as order 0, then every even pfn outside
/// a 256-page pool in Normal freed: plenty of free pages, no free block
/// above order 0. The pool is returned, its even pages first.
fn fragment(m: &Machine, held: &mut Vec<Pfn>) -> Vec<Pfn> {
    take_until_fail(m, GFP_NOWAIT | Gfp::MEMALLOC, false, held);
    assert_eq!(m.pages().nr_free_pages(), 0);
    let normal = m.pages().zone(0, ZoneType::Normal);
    let start = (normal.start_pfn() + 1024) & !255;
    let in_pool = |p: Pfn| (start..start + 256).contains(&p.0);
    let mut keep = Vec::new();
    for p in held.drain(..) {
        if p.0 % 2 == 0 && !in_pool(p) {
            m.pages().free_pages(p, 0).unwrap();
        } else if !in_pool(p) {
            keep.push(p);
        }
    }
    *held = keep;
    m.pages().drain_all_pages();
    for z in m.pages().populated_zones() {
        assert_eq!(
            z.largest_free_order(),
            Some(0),
            "{:?} fragmented",
            z.zone_type()
        );
        assert!(z.free_pages() > z.watermark(Watermark::High) + 64);
    }
    let evens = (start..start + 256).step_by(2);
    let odds = (start + 1..start + 256).step_by(2);
    evens.chain(odds).map(Pfn).collect()
}

#[test]
fn costly_order_fails_without_oom_unless_retry_mayfail() {
    let m = small_machine();
    let base = Baseline::take(&m);
    let mut held = Vec::new();
    let pool_pages = fragment(&m, &mut held);
    let pool_start = pool_pages[0].0;
    let pool = Pool::register(&m, pool_pages);

    // Order 4 is costly: one round of reclaim, then fail, never OOM.
    let v0 = m.pages().vmstat();
    let e = m.pages().alloc_pages(GFP_KERNEL, 4).unwrap_err();
    let AllocError::NoMemory(n) = e else {
        panic!("{e:?}")
    };
    assert!(n.reclaimed && !n.oom, "{n:?}");
    assert!(n.fragmented(), "enough free pages, no order-4 block: {n:?}");
    assert!(e.to_string().contains("fragmented"), "{e}");
    assert_eq!(pool.scan_calls.load(SeqCst), 1);
    assert_eq!(m.pages().vmstat().oom, v0.oom);

    // With __GFP_RETRY_MAYFAIL it keeps reclaiming while the pool gives
    // pages back: 128 even pages (4 rounds of 32) free no pair, the next
    // round's odd pages complete the first 64 pages of the pool.
    let p = m
        .pages()
        .alloc_pages(GFP_KERNEL | Gfp::RETRY_MAYFAIL, 4)
        .unwrap();
    assert!(
        (pool_start..pool_start + 64).contains(&p.0),
        "{p} comes from the reclaimed pool"
    );
    assert_eq!(p.0 % 16, 0);
    assert_eq!(pool.scan_calls.load(SeqCst), 5);
    let v1 = m.pages().vmstat();
    assert_eq!(v1.direct_reclaim - v0.direct_reclaim, 5);
    assert_eq!(v1.oom, v0.oom);
    m.pages().free_pages(p, 4).unwrap();

    // Once the pool is empty, no progress: __GFP_RETRY_MAYFAIL fails, no OOM.
    let rest: Vec<Pfn> = pool.pages.lock().unwrap().drain(..).collect();
    let v2 = m.pages().vmstat();
    let e = m
        .pages()
        .alloc_pages(GFP_KERNEL | Gfp::RETRY_MAYFAIL, 10)
        .unwrap_err();
    assert!(
        matches!(e, AllocError::NoMemory(n) if n.reclaimed && !n.oom),
        "{e:?}"
    );
    assert_eq!(m.pages().vmstat().direct_reclaim - v2.direct_reclaim, 1);
    held.extend(rest);
    free_all(&m, &mut held);
    base.assert_restored(&m);
}

#[test]
fn nofail_waits_until_another_thread_frees() {
    let m = Arc::new(small_machine());
    let base = Baseline::take(&m);
    let mut held = Vec::new();
    fill_to_min(&m, &mut held);
    // Down to what __GFP_NOFAIL's last resort (min/2) allows.
    take_until_fail(&m, GFP_KERNEL | Gfp::HIGH, false, &mut held);
    let gift = held.pop().unwrap();
    let freed = Arc::new(AtomicBool::new(false));
    let v0 = m.pages().vmstat();
    let t0 = Instant::now();
    let t = {
        let (m, freed) = (m.clone(), freed.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            freed.store(true, SeqCst);
            m.pages().free_pages(gift, 0).unwrap();
        })
    };
    let p = m
        .pages()
        .alloc_pages(GFP_KERNEL | Gfp::NOFAIL, 0)
        .expect("__GFP_NOFAIL never fails");
    let waited = t0.elapsed();
    assert!(
        freed.load(SeqCst),
        "it could only succeed after the other thread freed"
    );
    assert!(
        waited >= Duration::from_millis(50),
        "returned after {waited:?}"
    );
    assert!(m.pages().vmstat().nofail_wait > v0.nofail_wait);
    t.join().unwrap();
    held.push(p);
    free_all(&m, &mut held);
    base.assert_restored(&m);
}

#[test]
fn kswapd_is_woken_only_below_low_and_only_if_the_mask_asks() {
    let m = small_machine();
    let pa = m.pages();
    let mut held = Vec::new();
    let v0 = pa.vmstat();
    let p0 = pa.alloc_pages(GFP_KERNEL, 0).unwrap();
    let p3 = pa.alloc_pages(GFP_ATOMIC, 3).unwrap();
    assert_eq!(
        pa.vmstat().kswapd_wake,
        v0.kswapd_wake,
        "above low: fast path, no wake"
    );
    fill_to_min(&m, &mut held);
    let v1 = pa.vmstat();
    assert!(v1.kswapd_wake > v0.kswapd_wake);
    assert_eq!(
        v1.kswapd_wake - v0.kswapd_wake,
        v1.alloc_slow - v0.alloc_slow,
        "every slow-path entry of a __GFP_KSWAPD_RECLAIM mask wakes kswapd once"
    );
    // Without __GFP_KSWAPD_RECLAIM nobody is woken.
    let gfp = GFP_NOWAIT - Gfp::KSWAPD_RECLAIM;
    assert!(pa.alloc_pages(gfp, 0).is_err());
    let v2 = pa.vmstat();
    assert_eq!(v2.kswapd_wake, v1.kswapd_wake);
    assert_eq!(v2.alloc_slow, v1.alloc_slow + 1);
    free_all(&m, &mut held);
    pa.free_pages(p0, 0).unwrap();
    pa.free_pages(p3, 3).unwrap();
    verify(&m);
}
