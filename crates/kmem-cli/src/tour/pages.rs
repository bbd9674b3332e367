//! Tour sections 1-4: the page allocator's rules, under real pressure.
//!
//! The sections share one story and one set of pages ([`State`]):
//!
//! 1. **Reserves.** Order-0 GFP_NOWAIT allocations in process context until
//!    one fails leave every zone at its GFP_NOWAIT floor (min watermark plus
//!    lowmem protection). In an IRQ handler GFP_NOWAIT still fails, GFP_ATOMIC
//!    succeeds below min; the tour counts how many pages the atomic reserve
//!    holds and compares with the watermark rule. The handler then gives its
//!    pages back.
//! 2. **Reclaim.** The pages of section 1 become a "page cache" with a
//!    shrinker. GFP_NOWAIT does not call it; GFP_KERNEL (process context may
//!    sleep) does, and succeeds. A control first shows GFP_KERNEL failing
//!    while nothing can be reclaimed, so the success is reclaim's doing.
//! 3. **Wrong context.** GFP_KERNEL in an IRQ handler and under a spinlock:
//!    the report the platform logged, and the error returned.
//! 4. **Fragmentation.** Everything freed, the shrinker gone; then every free
//!    page taken, every other Normal page given back: half the zone is free
//!    and an order-4 request still fails. Freeing the rest merges the buddies
//!    and the same request succeeds.
//!
//! Each claim goes through [`Out::check`]; allocations that must work return
//! a [`TourError`] instead of panicking.

use super::{fmt_ns, group, per_op, zone_of, Out, Table, TourError};
use kmem::error::AllocError;
use kmem::gfp::{
    Gfp, ZoneType, __GFP_MEMALLOC, __GFP_NORETRY, __GFP_NOWARN, GFP_ATOMIC, GFP_KERNEL, GFP_NOWAIT,
};
use kmem::page::{PageAllocator, Shrinker, ShrinkerId, VmStatSnapshot, Watermark};
use kmem::{Pfn, Platform};
use kmem_host::{ContextGuard, HostPlatform, Machine};
use serde_json::{json, Map, Value};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

type Pages = PageAllocator<HostPlatform>;

/// Order of the high-order request in section 4 (16 pages, 64 KiB).
const FRAG_ORDER: u32 = 4;

/// Pages and handles the sections pass on to each other.
struct State {
    /// Free pages before section 1 (with empty per-CPU lists).
    start_free: usize,
    /// ns per fast-path GFP_KERNEL order-0 allocation, measured in section 1.
    fast_ns: f64,
    /// Pages taken in section 1; they become the shrinker's cache.
    filled: Vec<Pfn>,
    /// The registered page cache.
    cache: Option<(&'static PageCache, ShrinkerId)>,
    /// Other order-0 pages held.
    held: Vec<Pfn>,
}

/// Runs sections 1-4, adding their JSON under `reserves`, `reclaim`,
/// `wrong_context` and `fragmentation`.
pub fn run(m: &Machine, o: &mut Out, obj: &mut Map<String, Value>) -> Result<(), TourError> {
    let pages = m.pages();
    pages.drain_all_pages();
    let mut st = State {
        start_free: pages.nr_free_pages(),
        fast_ns: 0.0,
        filled: Vec::new(),
        cache: None,
        held: Vec::new(),
    };
    let r = reserves(m, o, &mut st)
        .map(|v| obj.insert("reserves".into(), v))
        .and_then(|_| reclaim(m, o, &mut st))
        .map(|v| obj.insert("reclaim".into(), v))
        .and_then(|_| wrong_context(m, o))
        .map(|v| obj.insert("wrong_context".into(), v))
        .and_then(|_| fragmentation(m, o, &mut st))
        .map(|v| obj.insert("fragmentation".into(), v));
    // Whatever happened, give everything back.
    release_all(pages, &mut st)?;
    r.map(|_| ())
}

// ---------------------------------------------------------------------------
// 1. Reserves

fn reserves(m: &Machine, o: &mut Out, st: &mut State) -> Result<Value, TourError> {
    let pages = m.pages();
    o.heading(1, "Reserves: who may take a zone's last pages");
    say!(
        o,
        "GFP_NOWAIT gets no reserve: it stops at the min watermark. GFP_ATOMIC (__GFP_HIGH, \
         cannot sleep) may go down to min - min/2 - a quarter of the rest, 3/8 of min."
    );
    say!(
        o,
        "A request that falls back to a lower zone must also leave that zone's protection \
         (lowmem reserve) untouched."
    );
    o.blank();

    // The fast path, on a fresh machine: a warm-up round, then a timed one.
    const N: usize = 4096;
    let mut v = Vec::with_capacity(N);
    let mut fast_ns = 0.0;
    let mut free_ns = 0.0;
    for _round in 0..2 {
        let t0 = Instant::now();
        for _ in 0..N {
            v.push(
                pages
                    .alloc_pages(GFP_KERNEL, 0)
                    .map_err(|e| format!("GFP_KERNEL on a fresh machine failed: {e}"))?,
            );
        }
        fast_ns = per_op(t0.elapsed(), N);
        let t0 = Instant::now();
        for p in v.drain(..) {
            free(pages, p)?;
        }
        free_ns = per_op(t0.elapsed(), N);
    }
    pages.drain_all_pages();
    st.fast_ns = fast_ns;

    // Fill the machine with GFP_NOWAIT pages until one fails.
    st.filled.reserve(pages.nr_free_pages());
    let t0 = Instant::now();
    let nowait_err = loop {
        match pages.alloc_pages(GFP_NOWAIT, 0) {
            Ok(p) => st.filled.push(p),
            Err(e) => break e,
        }
    };
    let fill_ns = per_op(t0.elapsed(), st.filled.len());
    let by_zone = count_by_zone(pages, &st.filled);
    say!(
        o,
        "Fast path (per-CPU list), fresh machine: {} per GFP_KERNEL order-0 allocation, {} per free.",
        fmt_ns(fast_ns),
        fmt_ns(free_ns)
    );
    say!(
        o,
        "Filled the machine with order-0 GFP_NOWAIT allocations in process context: {} pages, {} \
         each ({}).",
        group(st.filled.len() as u64),
        fmt_ns(fill_ns),
        zone_counts_text(pages, &by_zone)
    );
    say!(o, "The next GFP_NOWAIT allocation fails:");
    o.quote(&nowait_err.to_string());
    o.check(
        matches!(nowait_err, AllocError::NoMemory(_)),
        format!("GFP_NOWAIT ran out of memory (it returned: {nowait_err})"),
    );

    // Every zone at its GFP_NOWAIT floor.
    let floors: Vec<Floors> = pages.populated_zones().map(Floors::of).collect();
    let mut t = Table::new(&[
        "zone",
        "free",
        "min",
        "low",
        "protection",
        "GFP_NOWAIT floor",
        "GFP_ATOMIC floor",
    ]);
    for f in &floors {
        t.row(vec![
            f.zone.name().into(),
            group(f.free as u64),
            group(f.min as u64),
            group(f.low as u64),
            group(f.protection as u64),
            group(f.nowait as u64),
            group(f.atomic as u64),
        ]);
    }
    o.blank();
    say!(
        o,
        "Zones now (floor = the free count a zone keeps for that mask: min or 3/8 min, plus protection):"
    );
    o.table(&t);
    o.check(
        floors.iter().all(|f| f.free <= f.nowait),
        "every zone is at or below its GFP_NOWAIT floor after the fill",
    );

    // In an IRQ handler: GFP_NOWAIT fails, GFP_ATOMIC succeeds from the reserve.
    m.platform().take_log();
    let before = pages.vmstat();
    let mut atomic = Vec::new();
    let (nowait_irq, nowait_irq_ns, first, first_ns, first_zone_state, atomic_err, atomic_ns) = {
        let _irq = kmem_host::irq();
        let t0 = Instant::now();
        let nowait_irq = pages.alloc_pages(GFP_NOWAIT, 0);
        let nowait_irq_ns = per_op(t0.elapsed(), 1);
        let t0 = Instant::now();
        let first = pages.alloc_pages(GFP_ATOMIC, 0);
        let first_ns = per_op(t0.elapsed(), 1);
        let first_zone_state = first
            .ok()
            .and_then(|p| zone_of(pages, p))
            .map(|zt| (Floors::of(pages.zone(0, zt)), pages.pcp_info(0, 0, zt)));
        let mut slowest = 0.0f64;
        let t_all = Instant::now();
        let atomic_err = loop {
            let t0 = Instant::now();
            let r = pages.alloc_pages(GFP_ATOMIC, 0);
            slowest = slowest.max(per_op(t0.elapsed(), 1));
            match r {
                Ok(p) => atomic.push(p),
                Err(e) => break e,
            }
        };
        let atomic_ns = (per_op(t_all.elapsed(), atomic.len() + 1), slowest);
        (
            nowait_irq,
            nowait_irq_ns,
            first,
            first_ns,
            first_zone_state,
            atomic_err,
            atomic_ns,
        )
    };
    let after = pages.vmstat();
    let atomic_log = m.platform().take_log();

    o.blank();
    say!(o, "In a hard IRQ handler (kmem_host::irq()):");
    match &nowait_irq {
        Err(e) => {
            say!(o, "  GFP_NOWAIT fails again ({}):", fmt_ns(nowait_irq_ns));
            o.quote(&e.to_string());
        }
        Ok(p) => {
            st.held.push(*p);
            say!(o, "  GFP_NOWAIT got pfn {p}.");
        }
    }
    o.check(nowait_irq.is_err(), "GFP_NOWAIT fails in the IRQ handler");
    let first_json = match (&first, &first_zone_state) {
        (Ok(p), Some((z, (count, _, batch)))) => {
            atomic.insert(0, *p);
            say!(
                o,
                "  GFP_ATOMIC succeeds ({}): pfn {p} from zone {}, which now has {} pages free: below \
                 min ({}) and low ({}), above its GFP_ATOMIC floor ({}).",
                fmt_ns(first_ns),
                z.zone.name(),
                group(z.free as u64),
                group(z.min as u64),
                group(z.low as u64),
                group(z.atomic as u64)
            );
            say!(
                o,
                "  (It came through CPU 0's per-CPU list, refilled with a batch of up to {batch} \
                 pages: {count} more wait there, no longer counted as free.)"
            );
            o.check(
                z.free < z.min,
                format!(
                    "the GFP_ATOMIC page took zone {} below min ({} free, min {})",
                    z.zone.name(),
                    z.free,
                    z.min
                ),
            );
            json!({ "pfn": p.0, "zone": z.zone.name(), "ns": first_ns, "zone_free_after": z.free,
                    "zone_min": z.min, "zone_low": z.low, "zone_atomic_floor": z.atomic })
        }
        (Ok(p), None) => {
            atomic.insert(0, *p);
            o.fail(format!("pfn {p} from GFP_ATOMIC lies in no zone"));
            Value::Null
        }
        (Err(e), _) => {
            say!(o, "  GFP_ATOMIC fails:");
            o.quote(&e.to_string());
            o.fail("GFP_ATOMIC succeeds from the reserve where GFP_NOWAIT fails".into());
            Value::Null
        }
    };

    // How much the reserve held, zone by zone, against the rule.
    let taken = count_by_zone(pages, &atomic);
    let now: Vec<Floors> = pages.populated_zones().map(Floors::of).collect();
    let mut t = Table::new(&[
        "zone",
        "free before",
        "GFP_ATOMIC floor",
        "predicted",
        "taken",
        "free after",
    ]);
    let mut zones_json = Vec::new();
    let mut predicted_total = 0;
    for (f, n) in floors.iter().zip(&now) {
        let predicted = f.free.saturating_sub(f.atomic);
        let got = taken[f.zone.index()];
        predicted_total += predicted;
        t.row(vec![
            f.zone.name().into(),
            group(f.free as u64),
            group(f.atomic as u64),
            group(predicted as u64),
            group(got as u64),
            group(n.free as u64),
        ]);
        zones_json.push(json!({
            "zone": f.zone.name(), "free_after_nowait": f.free, "min": f.min, "low": f.low,
            "high": f.high, "protection": f.protection, "nowait_floor": f.nowait,
            "atomic_floor": f.atomic, "atomic_predicted": predicted, "atomic_taken": got,
            "free_after_atomic": n.free,
        }));
    }
    o.blank();
    say!(
        o,
        "GFP_ATOMIC until it fails: {} more pages, {} with the first ({} each on average, slowest \
         {}); the watermark rule predicts free - floor = {} pages.",
        group(atomic.len().saturating_sub(1) as u64),
        group(atomic.len() as u64),
        fmt_ns(atomic_ns.0),
        fmt_ns(atomic_ns.1),
        group(predicted_total as u64)
    );
    o.table(&t);
    o.check(
        atomic.len() == predicted_total,
        format!(
            "the GFP_ATOMIC reserve held what the rule predicts ({} taken, {} predicted)",
            atomic.len(),
            predicted_total
        ),
    );
    say!(
        o,
        "vmstat: alloc_reserve +{} (allocations that left a zone below min), alloc_slow +{}, \
         pcp_refill +{}, fallback_steal +{} (blocks taken from another migrate type's lists).",
        after.alloc_reserve - before.alloc_reserve,
        after.alloc_slow - before.alloc_slow,
        after.pcp_refill - before.pcp_refill,
        after.fallback_steal - before.fallback_steal
    );
    say!(
        o,
        "The failing GFP_ATOMIC logged (GFP_NOWAIT carries __GFP_NOWARN, so it did not):"
    );
    o.quote(&atomic_log.join("\n"));
    o.check(
        matches!(atomic_err, AllocError::NoMemory(_)) && atomic_log.len() == 1,
        format!(
            "GFP_ATOMIC fails once the reserve is gone, with one warning ({} logged; error: {atomic_err})",
            atomic_log.len()
        ),
    );

    // The handler gives its pages back.
    for p in atomic.drain(..) {
        free(pages, p)?;
    }
    pages.drain_all_pages();
    let back: Vec<Floors> = pages.populated_zones().map(Floors::of).collect();
    say!(
        o,
        "The handler frees its pages: zones back to {} free.",
        back.iter()
            .map(|f| format!("{} {}", f.zone.name(), group(f.free as u64)))
            .collect::<Vec<_>>()
            .join(", ")
    );

    Ok(json!({
        "fast_path_ns_per_alloc": fast_ns,
        "fast_path_ns_per_free": free_ns,
        "nowait_pages": st.filled.len(),
        "nowait_pages_by_zone": zone_counts_json(pages, &by_zone),
        "nowait_ns_per_alloc": fill_ns,
        "nowait_error": nowait_err.to_string(),
        "nowait_in_irq_error": nowait_irq.err().map(|e| e.to_string()),
        "atomic_first": first_json,
        "atomic_pages": taken.iter().sum::<usize>(),
        "atomic_predicted": predicted_total,
        "atomic_ns_per_alloc": atomic_ns.0,
        "atomic_ns_slowest": atomic_ns.1,
        "fallback_steal": after.fallback_steal - before.fallback_steal,
        "atomic_error": atomic_err.to_string(),
        "atomic_failure_log": atomic_log,
        "alloc_reserve": after.alloc_reserve - before.alloc_reserve,
        "zones": zones_json,
    }))
}

/// One zone's free count and the floors each mask must leave.
struct Floors {
    zone: ZoneType,
    free: usize,
    min: usize,
    low: usize,
    high: usize,
    /// Lowmem reserve against a request whose highest zone is Normal.
    protection: usize,
    /// min + protection: GFP_NOWAIT gets a page only while free is above.
    nowait: usize,
    /// The GFP_ATOMIC mark (min - min/2, less a quarter) + protection.
    atomic: usize,
}

impl Floors {
    fn of(z: &kmem::page::Zone<<HostPlatform as Platform>::Lock>) -> Floors {
        let min = z.watermark(Watermark::Min);
        let protection = z.lowmem_reserve(ZoneType::Normal);
        // __GFP_HIGH halves the mark; not being able to block takes a
        // further quarter of what is left (Linux's __zone_watermark_ok).
        let mut atomic = min - min / 2;
        atomic -= atomic / 4;
        Floors {
            zone: z.zone_type(),
            free: z.free_pages(),
            min,
            low: z.watermark(Watermark::Low),
            high: z.watermark(Watermark::High),
            protection,
            nowait: min + protection,
            atomic: atomic + protection,
        }
    }
}

// ---------------------------------------------------------------------------
// 2. Reclaim

/// A page cache that can be dropped: the pages of section 1, freed oldest
/// first when the allocator asks.
struct PageCache {
    pages: Mutex<VecDeque<Pfn>>,
    count_calls: AtomicUsize,
    scan_calls: AtomicUsize,
    freed: AtomicUsize,
    free_errors: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PageCache {
    fn new(pages: Vec<Pfn>) -> PageCache {
        PageCache {
            pages: Mutex::new(pages.into()),
            count_calls: AtomicUsize::new(0),
            scan_calls: AtomicUsize::new(0),
            freed: AtomicUsize::new(0),
            free_errors: Mutex::new(Vec::new()),
        }
    }
    fn len(&self) -> usize {
        lock(&self.pages).len()
    }
    fn calls(&self) -> usize {
        self.count_calls.load(Relaxed) + self.scan_calls.load(Relaxed)
    }
}

impl Shrinker<HostPlatform> for PageCache {
    fn name(&self) -> &str {
        "tour-page-cache"
    }

    fn count_objects(&self, _pages: &Pages, _gfp: Gfp) -> usize {
        self.count_calls.fetch_add(1, Relaxed);
        self.len()
    }

    fn scan_objects(&self, pages: &Pages, nr_to_scan: usize, _gfp: Gfp) -> usize {
        self.scan_calls.fetch_add(1, Relaxed);
        let mut n = 0;
        while n < nr_to_scan {
            let Some(pfn) = lock(&self.pages).pop_front() else {
                break;
            };
            match pages.free_pages(pfn, 0) {
                Ok(()) => n += 1,
                Err(e) => lock(&self.free_errors).push(e.to_string()),
            }
        }
        self.freed.fetch_add(n, Relaxed);
        n
    }
}

fn reclaim(m: &Machine, o: &mut Out, st: &mut State) -> Result<Value, TourError> {
    let pages = m.pages();
    o.heading(
        2,
        "Reclaim: GFP_KERNEL may sleep, and frees memory to succeed",
    );
    say!(
        o,
        "Every zone is back at its GFP_NOWAIT floor. A system call runs in process context, where \
         GFP_KERNEL may sleep in direct reclaim: the allocator asks registered shrinkers for memory."
    );

    // Control: nothing to reclaim yet.
    m.platform().take_log();
    let s0 = pages.vmstat();
    let control = pages.alloc_pages(GFP_KERNEL, 0);
    let s1 = pages.vmstat();
    m.platform().take_log();
    o.blank();
    let control_json = match control {
        Err(e) => {
            say!(
                o,
                "Control, no shrinker registered: GFP_KERNEL runs direct reclaim (direct_reclaim +{}), \
                 which finds nothing, and fails:",
                s1.direct_reclaim - s0.direct_reclaim
            );
            o.quote(&e.to_string());
            Value::String(e.to_string())
        }
        Ok(p) => {
            st.held.push(p);
            o.fail(format!(
                "with nothing to reclaim, GFP_KERNEL should fail, but it got pfn {p}"
            ));
            Value::Null
        }
    };

    // The page cache and its shrinker.
    let cache: &'static PageCache =
        Box::leak(Box::new(PageCache::new(std::mem::take(&mut st.filled))));
    let id = pages
        .register_shrinker(cache)
        .map_err(|e| format!("registering the shrinker: {e}"))?;
    st.cache = Some((cache, id));
    o.blank();
    say!(
        o,
        "Registered shrinker \"{}\": it owns the {} pages of section 1, a page cache it can drop, \
         oldest first.",
        cache.name(),
        group(cache.len() as u64)
    );

    // GFP_NOWAIT does not reclaim.
    let (len0, calls0) = (cache.len(), cache.calls());
    let s0 = pages.vmstat();
    let t0 = Instant::now();
    let nowait = pages.alloc_pages(GFP_NOWAIT, 0);
    let nowait_ns = per_op(t0.elapsed(), 1);
    let s1 = pages.vmstat();
    let nowait_reclaimed = s1.direct_reclaim - s0.direct_reclaim;
    match &nowait {
        Err(e) => {
            say!(
                o,
                "GFP_NOWAIT fails in {} without reclaiming: direct_reclaim +{}, shrinker called {} \
                 times, cache still {} pages.",
                fmt_ns(nowait_ns),
                nowait_reclaimed,
                cache.calls() - calls0,
                group(cache.len() as u64)
            );
            o.quote(&e.to_string());
        }
        Ok(p) => {
            st.held.push(*p);
            say!(o, "GFP_NOWAIT got pfn {p}.");
        }
    }
    o.check(
        nowait.is_err() && nowait_reclaimed == 0 && cache.calls() == calls0 && cache.len() == len0,
        "GFP_NOWAIT fails without running the shrinker (shrinkers run only for blocking masks)",
    );

    // GFP_KERNEL reclaims and succeeds.
    let freed0 = cache.freed.load(Relaxed);
    let s0 = pages.vmstat();
    let t0 = Instant::now();
    let kernel = pages.alloc_pages(GFP_KERNEL, 0);
    let kernel_ns = per_op(t0.elapsed(), 1);
    let s1 = pages.vmstat();
    let dropped = cache.freed.load(Relaxed) - freed0;
    let moved = moved_counters(&s0, &s1);
    o.blank();
    let kernel_json = match kernel {
        Ok(p) => {
            st.held.push(p);
            let zone = zone_of(pages, p).map_or("?", |z| z.name());
            say!(
                o,
                "GFP_KERNEL succeeds in {}: pfn {p} from zone {zone}. The shrinker dropped {} pages; \
                 the per-CPU lists were drained; the retry found a zone above min.",
                fmt_ns(kernel_ns),
                dropped
            );
            say!(
                o,
                "That is {:.0}x the fast path ({} per allocation, section 1): reclaim is the slow path.",
                kernel_ns / st.fast_ns.max(1.0),
                fmt_ns(st.fast_ns)
            );
            json!({ "pfn": p.0, "zone": zone, "ns": kernel_ns, "shrinker_freed": dropped })
        }
        Err(e) => {
            say!(o, "GFP_KERNEL fails:");
            o.quote(&e.to_string());
            Value::Null
        }
    };
    say!(o, "vmstat counters that moved:");
    let mut t = Table::new(&["counter", "before", "after", "change"]);
    for (name, a, b) in &moved {
        t.row(vec![
            (*name).into(),
            group(*a),
            group(*b),
            format!("+{}", b - a),
        ]);
    }
    o.table(&t);
    o.check(
        kernel_json != Value::Null && s1.direct_reclaim > s0.direct_reclaim && dropped > 0,
        "GFP_KERNEL in process context runs the shrinker and succeeds",
    );
    let errs = lock(&cache.free_errors).clone();
    o.check(
        errs.is_empty(),
        format!("the shrinker's frees were accepted ({})", errs.join("; ")),
    );

    Ok(json!({
        "control_error": control_json,
        "shrinker": cache.name(),
        "cache_pages": len0,
        "nowait_error": nowait.err().map(|e| e.to_string()),
        "nowait_direct_reclaim": nowait_reclaimed,
        "nowait_ns": nowait_ns,
        "kernel": kernel_json,
        "fast_path_ns": st.fast_ns,
        "vmstat_moved": moved.iter().map(|(n, a, b)| (n.to_string(), json!({"before": a, "after": b, "change": b - a}))).collect::<Map<_, _>>(),
    }))
}

/// Counters that differ between two snapshots: `(name, before, after)`.
fn moved_counters(a: &VmStatSnapshot, b: &VmStatSnapshot) -> Vec<(&'static str, u64, u64)> {
    a.fields()
        .zip(b.fields())
        .filter(|((_, x), (_, y))| x != y)
        .map(|((n, x), (_, y))| (n, x, y))
        .collect()
}

// ---------------------------------------------------------------------------
// 3. Wrong context

fn wrong_context(m: &Machine, o: &mut Out) -> Result<Value, TourError> {
    let pages = m.pages();
    o.heading(3, "Wrong context: GFP_KERNEL where sleeping is not allowed");
    say!(
        o,
        "GFP_KERNEL may sleep in reclaim; an IRQ handler or a spinlock holder must not sleep. kmem \
         checks the context once at the entry point, reports the bug as Linux does, and (policy {:?}) \
         fails the call.",
        pages.config().context_policy
    );
    /// One wrong context: JSON key, words, and the guard that enters it.
    struct Case {
        key: &'static str,
        place: &'static str,
        enter: fn() -> ContextGuard,
    }
    let cases = [
        Case {
            key: "irq",
            place: "in a hard IRQ handler (kmem_host::irq())",
            enter: kmem_host::irq,
        },
        Case {
            key: "spin_lock",
            place: "holding a spinlock in process context (kmem_host::spin_lock())",
            enter: kmem_host::spin_lock,
        },
    ];
    let mut out = Map::new();
    for Case { key, place, enter } in cases {
        m.platform().take_log();
        let before = pages.vmstat().context_violation;
        let r = {
            let _ctx = enter();
            pages.alloc_pages(GFP_KERNEL, 0)
        };
        let counted = pages.vmstat().context_violation - before;
        let log = m.platform().take_log();
        o.blank();
        say!(o, "GFP_KERNEL {place}. The platform logged:");
        o.quote(&log.join("\n"));
        let ok = match &r {
            Err(AllocError::SleepInAtomic(v)) => {
                say!(
                    o,
                    "and the call returned Err(AllocError::SleepInAtomic): context \"{}\", cpu {}, \
                     caller {}; vmstat context_violation +{counted}.",
                    v.context,
                    v.cpu,
                    v.caller
                );
                true
            }
            Err(e) => {
                say!(o, "and the call returned another error: {e}");
                false
            }
            Ok(p) => {
                free(pages, *p)?;
                say!(o, "and the call succeeded (pfn {p}).");
                false
            }
        };
        o.check(
            ok && counted == 1
                && log.len() == 1
                && log[0].starts_with("BUG: sleeping function called from invalid context"),
            format!("GFP_KERNEL {place} is reported once and fails with SleepInAtomic"),
        );
        out.insert(
            key.into(),
            json!({
                "log": log,
                "error": match &r { Err(AllocError::SleepInAtomic(_)) => "SleepInAtomic".to_string(), Err(e) => e.to_string(), Ok(_) => "none".into() },
                "context": match &r { Err(AllocError::SleepInAtomic(v)) => v.context.to_string(), _ => String::new() },
                "context_violation": counted,
            }),
        );
    }
    Ok(Value::Object(out))
}

// ---------------------------------------------------------------------------
// 4. Fragmentation

fn fragmentation(m: &Machine, o: &mut Out, st: &mut State) -> Result<Value, TourError> {
    let pages = m.pages();
    o.heading(4, "Fragmentation: free pages are not free blocks");
    release_all(pages, st)?;
    let free_now = pages.nr_free_pages();
    say!(
        o,
        "Shrinker unregistered, every page freed, per-CPU lists drained: {} pages free ({} at the \
         start).",
        group(free_now as u64),
        group(st.start_free as u64)
    );
    o.check(
        free_now == st.start_free,
        "every page is back before the fragmentation experiment",
    );
    let normal = pages.zone(0, ZoneType::Normal);
    let blocks = |z: &kmem::page::Zone<_>| (0..=10).map(|o| z.free_blocks(o)).collect::<Vec<_>>();
    let line_fresh = buddyinfo_line(pages, ZoneType::Normal);
    let blocks_fresh = blocks(normal);

    // Take every free page: __GFP_MEMALLOC ignores the watermarks, GFP_NOWAIT
    // keeps reclaim out of it.
    let gfp = GFP_NOWAIT | __GFP_MEMALLOC;
    let mut all = Vec::with_capacity(free_now);
    let t0 = Instant::now();
    let last = loop {
        match pages.alloc_pages(gfp, 0) {
            Ok(p) => all.push(p),
            Err(e) => break e,
        }
    };
    let take_ns = per_op(t0.elapsed(), all.len());
    let by_zone = count_by_zone(pages, &all);
    let (mut in_normal, mut others): (Vec<Pfn>, Vec<Pfn>) = all
        .into_iter()
        .partition(|&p| zone_of(pages, p) == Some(ZoneType::Normal));
    o.blank();
    say!(
        o,
        "Took every free page with {gfp}: {} pages, {} each ({}). __GFP_MEMALLOC ignores the \
         watermarks (as for a task that is itself freeing memory); GFP_NOWAIT keeps reclaim out.",
        group((in_normal.len() + others.len()) as u64),
        fmt_ns(take_ns),
        zone_counts_text(pages, &by_zone)
    );
    say!(
        o,
        "The lower zones are empty too, so they cannot serve the request below in Normal's place."
    );
    o.check(
        matches!(last, AllocError::NoMemory(_)) && pages.nr_free_pages() == 0,
        format!("every page was taken (the last call returned: {last})"),
    );

    // Give back every other Normal page, in pfn order: no two free pages are buddies.
    in_normal.sort_unstable();
    let mut kept = Vec::with_capacity(in_normal.len() / 2 + 1);
    for (i, p) in in_normal.drain(..).enumerate() {
        if i % 2 == 1 {
            free(pages, p)?;
        } else {
            kept.push(p);
        }
    }
    pages.drain_all_pages();
    let frag_free = normal.free_pages();
    let frag_largest = normal.largest_free_order();
    let line_frag = buddyinfo_line(pages, ZoneType::Normal);
    let blocks_frag = blocks(normal);
    say!(
        o,
        "Freed every other Normal page (sorted by pfn) and drained the per-CPU lists: {} pages \
         free, largest free block order {}; an order-{FRAG_ORDER} block needs {} contiguous pages.",
        group(frag_free as u64),
        frag_largest.map_or("-".into(), |o| o.to_string()),
        1u64 << FRAG_ORDER
    );
    say!(o, "buddyinfo, zone Normal:");
    o.quote(&format!(
        "{}\n{line_fresh}   <- at the start\n{line_frag}   <- every other page free",
        buddyinfo_header()
    ));

    // The high-order request fails.
    let gfp4 = GFP_KERNEL | __GFP_NORETRY | __GFP_NOWARN;
    let t0 = Instant::now();
    let r = pages.alloc_pages(gfp4, FRAG_ORDER);
    let fail_ns = per_op(t0.elapsed(), 1);
    say!(
        o,
        "An order-{FRAG_ORDER} {gfp4} allocation ({}):",
        fmt_ns(fail_ns)
    );
    let fragmented = match &r {
        Err(e @ AllocError::NoMemory(n)) => {
            o.quote(&e.to_string());
            n.fragmented()
        }
        Err(e) => {
            o.quote(&e.to_string());
            false
        }
        Ok(p) => {
            say!(o, "    succeeded: pfn {p}");
            free_order(pages, *p, FRAG_ORDER)?;
            false
        }
    };
    say!(
        o,
        "(Linux would try compaction first; these are unmovable kernel pages, so it could not move them.)"
    );
    o.check(
        fragmented && frag_free >= 1 << FRAG_ORDER,
        format!(
            "an order-{FRAG_ORDER} allocation fails for fragmentation with {frag_free} pages free"
        ),
    );
    let frag_error = r.err().map(|e| e.to_string());

    // Free the rest: the buddies merge and the same request succeeds.
    let merges0 = pages.vmstat().buddy_merge;
    for p in kept.into_iter().chain(others.drain(..)) {
        free(pages, p)?;
    }
    pages.drain_all_pages();
    let merges = pages.vmstat().buddy_merge - merges0;
    let line_merged = buddyinfo_line(pages, ZoneType::Normal);
    let blocks_merged = blocks(normal);
    o.blank();
    say!(
        o,
        "Freed the rest: {} buddy merges; zone Normal has {} pages free, largest block order {}.",
        group(merges),
        group(normal.free_pages() as u64),
        normal
            .largest_free_order()
            .map_or("-".into(), |o| o.to_string())
    );
    o.quote(&format!("{}\n{line_merged}", buddyinfo_header()));
    let t0 = Instant::now();
    let again = pages.alloc_pages(gfp4, FRAG_ORDER);
    let ok_ns = per_op(t0.elapsed(), 1);
    let again_json = match again {
        Ok(p) => {
            let zone = zone_of(pages, p).map_or("?", |z| z.name());
            say!(
                o,
                "The same order-{FRAG_ORDER} allocation now succeeds in {}: pfn {p} (zone {zone}), \
                 aligned to {} pages.",
                fmt_ns(ok_ns),
                1u64 << FRAG_ORDER
            );
            o.check(
                p.0 % (1 << FRAG_ORDER) == 0,
                format!("the order-{FRAG_ORDER} block at pfn {p} is naturally aligned"),
            );
            free_order(pages, p, FRAG_ORDER)?;
            json!({ "pfn": p.0, "zone": zone, "ns": ok_ns })
        }
        Err(e) => {
            o.quote(&e.to_string());
            o.fail(format!(
                "the order-{FRAG_ORDER} allocation succeeds once the buddies are free"
            ));
            Value::Null
        }
    };
    pages.drain_all_pages();

    Ok(json!({
        "taken_pages": by_zone.iter().sum::<usize>(),
        "taken_by_zone": zone_counts_json(pages, &by_zone),
        "take_ns_per_alloc": take_ns,
        "order": FRAG_ORDER,
        "gfp": gfp4.to_string(),
        "normal_free_pages": frag_free,
        "normal_largest_free_order": frag_largest,
        "buddyinfo_normal_start": { "line": line_fresh, "blocks": blocks_fresh },
        "buddyinfo_normal_fragmented": { "line": line_frag, "blocks": blocks_frag },
        "buddyinfo_normal_merged": { "line": line_merged, "blocks": blocks_merged },
        "error": frag_error,
        "fail_ns": fail_ns,
        "buddy_merges": merges,
        "after_merge": again_json,
    }))
}

/// The buddyinfo line of one zone of node 0, as /proc/buddyinfo prints it.
fn buddyinfo_line(pages: &Pages, zt: ZoneType) -> String {
    let mut s = String::new();
    let _ = kmem::procfs::buddyinfo(pages, &mut s);
    let tag = format!("zone {:>8} ", zt.name());
    s.lines()
        .find(|l| l.starts_with("Node 0,") && l.contains(&tag))
        .unwrap_or("")
        .trim_end()
        .to_string()
}

/// Order numbers lined up over a buddyinfo line.
fn buddyinfo_header() -> String {
    let mut s = format!("{:<22}", "order:");
    for o in 0..=kmem::MAX_PAGE_ORDER {
        s.push_str(&format!("{o:6} "));
    }
    s.trim_end().to_string()
}

// ---------------------------------------------------------------------------
// Shared helpers

/// Frees an order-0 page the tour holds.
fn free(pages: &Pages, p: Pfn) -> Result<(), TourError> {
    free_order(pages, p, 0)
}

fn free_order(pages: &Pages, p: Pfn, order: u32) -> Result<(), TourError> {
    pages
        .free_pages(p, order)
        .map_err(|e| format!("the allocator refused to free pfn {p} (order {order}): {e}"))
}

/// Unregisters the shrinker, frees every page the tour holds, drains the
/// per-CPU lists.
fn release_all(pages: &Pages, st: &mut State) -> Result<(), TourError> {
    if let Some((cache, id)) = st.cache.take() {
        pages.unregister_shrinker(id);
        let rest: Vec<Pfn> = lock(&cache.pages).drain(..).collect();
        for p in rest {
            free(pages, p)?;
        }
    }
    for p in st.filled.drain(..).chain(st.held.drain(..)) {
        free(pages, p)?;
    }
    pages.drain_all_pages();
    Ok(())
}

/// Pages per zone type (indexed by `ZoneType::index`).
fn count_by_zone(pages: &Pages, pfns: &[Pfn]) -> [usize; 3] {
    let zones: Vec<(u64, u64, usize)> = pages
        .populated_zones()
        .map(|z| {
            (
                z.start_pfn(),
                z.start_pfn() + z.spanned_pages(),
                z.zone_type().index(),
            )
        })
        .collect();
    let mut n = [0; 3];
    for p in pfns {
        if let Some(&(_, _, i)) = zones.iter().find(|(a, b, _)| p.0 >= *a && p.0 < *b) {
            n[i] += 1;
        }
    }
    n
}

fn zone_counts_text(pages: &Pages, n: &[usize; 3]) -> String {
    pages
        .populated_zones()
        .map(|z| {
            format!(
                "{} {}",
                z.zone_type().name(),
                group(n[z.zone_type().index()] as u64)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn zone_counts_json(pages: &Pages, n: &[usize; 3]) -> Value {
    Value::Object(
        pages
            .populated_zones()
            .map(|z| {
                (
                    z.zone_type().name().to_string(),
                    json!(n[z.zone_type().index()]),
                )
            })
            .collect(),
    )
}
