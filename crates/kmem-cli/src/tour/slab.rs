//! Tour section: kmalloc (`kmalloc`), the slab layer seen from its callers.
//!
//! Four parts, one heading:
//!
//! 1. **Size classes.** kmalloc of a row of sizes; `ksize` tells the class
//!    each one got (a kmalloc cache up to 8 KiB, a compound page block above),
//!    checked against Linux's classes (8 … 8192 with 96 and 192) and against
//!    `kmalloc_size_roundup`, with the bytes wasted.
//! 2. **The size limit.** kmalloc(4 MiB) works (its last byte is written and
//!    read back); kmalloc(4 MiB + 1) fails and the platform logs a warning,
//!    which `__GFP_NOWARN` silences; kmalloc(0) returns `ZERO_SIZE_PTR`.
//! 3. **A red-zone overwrite.** A second slab allocator booted with
//!    `slab_debug=FZPU,kmalloc-64`: kmalloc(60), then a write to byte 60
//!    (inside the 64-byte class but past the request: Linux's kmalloc red
//!    zone) and to byte 64 (the right red zone). `validate_slab_cache`
//!    reports both, as Linux words it, repairs them, and the object frees
//!    cleanly.
//! 4. **Fast-path cost.** kmalloc(64)+kfree pairs timed beside order-0
//!    alloc_pages+free_pages pairs (and the same kmalloc pair on the debug
//!    cache), with the fast-path counters that moved.
//!
//! Every object is freed and both slab allocators are dropped (which gives
//! their slabs back); the section checks the free page count.

use super::{fmt_ns, group, per_op, Out, Table, TourError};
use kmem::addr::{get_order, VirtAddr, PAGE_SIZE};
use kmem::error::AllocError;
use kmem::gfp::{__GFP_NOWARN, GFP_KERNEL};
use kmem::slab::{
    kmalloc::kmalloc_size_roundup, SlabAllocator, SlabConfig, SlabDebug, Stat, KMALLOC_MAX_SIZE,
    OWNER_KMALLOC_LARGE, OWNER_SLAB, SLUB_RED_ACTIVE, ZERO_SIZE_PTR,
};
use kmem_host::{HostPlatform, Machine};
use serde_json::{json, Map, Value};
use std::hint::black_box;
use std::time::Instant;

type Slab<'m> = SlabAllocator<'m, HostPlatform>;

/// The sizes of the class table.
const SIZES: [usize; 16] = [
    1, 8, 9, 24, 65, 96, 97, 129, 192, 193, 700, 3000, 4097, 8192, 8193, 65536,
];
/// Linux's kmalloc classes (KMALLOC_MIN_SIZE 8, with 96 and 192).
const LINUX_CLASSES: [usize; 13] = [
    8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192,
];
/// The red-zone demo: requested size, and the class it lands in.
const RZ_SIZE: usize = 60;
const RZ_CLASS: usize = 64;
/// Bytes written past the request.
const RZ_KMALLOC_BYTE: u8 = 0x12;
const RZ_RIGHT_BYTE: u8 = 0x34;
/// Pairs timed in part 4 (after as many warm-up pairs).
const PAIRS: usize = 200_000;

/// Runs the section as number `n`, adding `kmalloc` to `obj`.
pub fn run(
    m: &Machine,
    o: &mut Out,
    obj: &mut Map<String, Value>,
    n: u32,
) -> Result<(), TourError> {
    let pages = m.pages();
    pages.drain_all_pages();
    let start_free = pages.nr_free_pages();
    o.heading(n, "kmalloc: size classes, the 4 MiB limit, red zones");

    let (classes, limit, fast) = {
        let slab = SlabAllocator::new(pages, SlabConfig::default())
            .map_err(|e| format!("SlabAllocator::new: {e}"))?;
        let classes = size_classes(m, o, &slab)?;
        let limit = size_limit(m, o, &slab)?;
        let fast = cost(m, &slab)?;
        (classes, limit, fast)
    };
    let (redzone, debug_ns) = {
        let slab = SlabAllocator::new(
            pages,
            SlabConfig {
                slab_debug: SlabDebug::new("FZPU,kmalloc-64"),
                ..SlabConfig::default()
            },
        )
        .map_err(|e| format!("SlabAllocator::new (slab_debug): {e}"))?;
        let rz = red_zone(m, o, &slab)?;
        let debug_ns = pair_ns(&slab, RZ_CLASS, PAIRS / 10)?;
        (rz, debug_ns)
    };
    let cost = report_cost(o, fast, debug_ns);

    pages.drain_all_pages();
    let end_free = pages.nr_free_pages();
    o.check(
        end_free == start_free,
        format!("the kmalloc section gave every page back ({end_free} free, {start_free} before)"),
    );
    obj.insert(
        "kmalloc".into(),
        json!({
            "classes": classes,
            "limit": limit,
            "red_zone": redzone,
            "cost": cost,
        }),
    );
    Ok(())
}

/// Linux's class for a kmalloc of `size` bytes (1..=KMALLOC_MAX_SIZE):
/// (bytes, cache name or None for a page block, page order).
fn linux_class(size: usize) -> (usize, Option<String>, u32) {
    match LINUX_CLASSES.iter().find(|&&c| c >= size) {
        Some(&c) => {
            let name = if c >= 1024 {
                format!("kmalloc-{}k", c / 1024)
            } else {
                format!("kmalloc-{c}")
            };
            (c, Some(name), 0)
        }
        None => {
            let order = get_order(size);
            (PAGE_SIZE << order, None, order)
        }
    }
}

/// Part 1: the class table.
fn size_classes(m: &Machine, o: &mut Out, slab: &Slab<'_>) -> Result<Value, TourError> {
    let pages = m.pages();
    say!(
        o,
        "kmalloc rounds a request up to a size class: a kmalloc cache up to 8 KiB"
    );
    say!(
        o,
        "(powers of two from 8, plus 96 and 192), whole pages above. ksize() tells"
    );
    say!(o, "what each allocation really got:");
    o.blank();
    let mut t = Table::new(&["kmalloc(size)", "ksize", "from", "wasted", "waste"]);
    let mut rows = Vec::new();
    let mut all_ok = true;
    let mut wrong = Vec::new();
    for &size in &SIZES {
        let p = slab
            .kmalloc(size, GFP_KERNEL)
            .map_err(|e| format!("kmalloc({size}) failed: {e}"))?;
        let ks = slab.ksize(p.as_ptr());
        let head = pages
            .virt_to_page(VirtAddr(p.as_ptr() as usize))
            .and_then(|pfn| pages.frame(pfn));
        let (owner, frame_order) = head.map(|f| (f.owner(), f.order())).unwrap_or((0, 0));
        let (want, want_name, want_order) = linux_class(size);
        let from = match &want_name {
            Some(_) => {
                let c = slab.kmalloc_slab(size, GFP_KERNEL);
                let ok = owner == OWNER_SLAB && c.object_size() == ks;
                if !ok {
                    all_ok = false;
                }
                c.name().to_string()
            }
            None => {
                if owner != OWNER_KMALLOC_LARGE || frame_order != want_order {
                    all_ok = false;
                }
                format!("pages, order {frame_order}")
            }
        };
        let expected_from = want_name
            .clone()
            .unwrap_or_else(|| format!("pages, order {want_order}"));
        if ks != want || ks != kmalloc_size_roundup(size) || from != expected_from {
            all_ok = false;
            wrong.push(format!(
                "{size}: {ks} from {from} (Linux: {want} from {expected_from})"
            ));
        }
        // The whole usable size is ours: touch its last byte.
        // SAFETY: ksize bytes of a live kmalloc object.
        unsafe { p.as_ptr().add(ks - 1).write_volatile(0x5a) };
        slab.kfree(p.as_ptr())
            .map_err(|e| format!("kfree of kmalloc({size}): {e}"))?;
        let waste = ks - size;
        let pct = 100.0 * waste as f64 / ks as f64;
        t.row(vec![
            group(size as u64),
            group(ks as u64),
            from.clone(),
            group(waste as u64),
            format!("{pct:.0}%"),
        ]);
        rows.push(json!({
            "size": size, "ksize": ks, "from": from, "order": frame_order,
            "waste_bytes": waste, "waste_pct": pct,
        }));
    }
    o.table(&t);
    o.blank();
    say!(
        o,
        "Waste is the share of ksize the caller did not ask for. A size just past a"
    );
    say!(
        o,
        "class pays for the next one: 4097 bytes take 8 KiB, 8193 take 4 pages."
    );
    o.check(
        all_ok,
        format!(
            "every ksize is Linux's class and kmalloc_size_roundup's answer, from the cache or page block named{}",
            if wrong.is_empty() {
                String::new()
            } else {
                format!(" (wrong: {})", wrong.join("; "))
            }
        ),
    );
    Ok(json!(rows))
}

/// Part 2: the 4 MiB limit and kmalloc(0).
fn size_limit(m: &Machine, o: &mut Out, slab: &Slab<'_>) -> Result<Value, TourError> {
    let pages = m.pages();
    let plat = m.platform();
    o.blank();
    say!(
        o,
        "The limit: KMALLOC_MAX_SIZE is the largest buddy block, {} bytes (4 MiB).",
        group(KMALLOC_MAX_SIZE as u64)
    );
    plat.take_log();

    // 4 MiB works.
    let max = slab
        .kmalloc(KMALLOC_MAX_SIZE, GFP_KERNEL)
        .map_err(|e| format!("kmalloc(4 MiB) failed: {e}"))?;
    let max_ks = slab.ksize(max.as_ptr());
    let max_order = pages
        .virt_to_page(VirtAddr(max.as_ptr() as usize))
        .and_then(|pfn| pages.frame(pfn))
        .map(|f| f.order())
        .unwrap_or(0);
    // SAFETY: the last byte of the 4 MiB block just allocated.
    let last = unsafe {
        let q = max.as_ptr().add(KMALLOC_MAX_SIZE - 1);
        q.write_volatile(0xa5);
        q.read_volatile()
    };
    slab.kfree(max.as_ptr())
        .map_err(|e| format!("kfree of kmalloc(4 MiB): {e}"))?;
    let max_ok = max_ks == KMALLOC_MAX_SIZE && last == 0xa5;
    say!(
        o,
        "  kmalloc({}, GFP_KERNEL)            -> {:#x}: an order-{max_order} block,",
        KMALLOC_MAX_SIZE,
        max.as_ptr() as usize,
    );
    say!(
        o,
        "    ksize {}; its last byte written and read back ({last:#04x})",
        group(max_ks as u64)
    );
    o.check(max_ok, "kmalloc(4 MiB) works and its last byte is usable");

    // 4 MiB + 1 fails, with a warning.
    plat.take_log();
    let free_before = pages.nr_free_pages();
    let over = slab.kmalloc(KMALLOC_MAX_SIZE + 1, GFP_KERNEL);
    let over_log = plat.take_log();
    let over_err = match over {
        Ok(p) => {
            let _ = slab.kfree(p.as_ptr());
            None
        }
        Err(e) => Some(e),
    };
    say!(
        o,
        "  kmalloc({}, GFP_KERNEL)            -> {}",
        KMALLOC_MAX_SIZE + 1,
        over_err
            .map(|e| format!("error: {e}"))
            .unwrap_or_else(|| "succeeded".into())
    );
    say!(o, "  and the platform logged:");
    o.quote(&over_log.join("\n"));
    o.check(
        matches!(over_err, Some(AllocError::SizeTooLarge { .. }))
            && over_log.len() == 1
            && over_log[0].starts_with("WARNING: kmalloc of 4194305 bytes")
            && over_log[0].contains("KMALLOC_MAX_SIZE")
            && pages.nr_free_pages() == free_before,
        format!(
            "kmalloc(4 MiB + 1) fails with one warning and takes no page ({} logged)",
            over_log.len()
        ),
    );

    // ... silently with __GFP_NOWARN.
    let quiet = slab.kmalloc(KMALLOC_MAX_SIZE + 1, GFP_KERNEL | __GFP_NOWARN);
    let quiet_log = plat.take_log();
    let quiet_failed = match quiet {
        Ok(p) => {
            let _ = slab.kfree(p.as_ptr());
            false
        }
        Err(_) => true,
    };
    say!(
        o,
        "  kmalloc({}, GFP_KERNEL|__GFP_NOWARN) -> {}, {} lines logged",
        KMALLOC_MAX_SIZE + 1,
        if quiet_failed { "fails" } else { "succeeded" },
        quiet_log.len()
    );
    o.check(
        quiet_failed && quiet_log.is_empty(),
        "with __GFP_NOWARN the same request fails silently",
    );

    // kmalloc(0).
    let zero = slab
        .kmalloc(0, GFP_KERNEL)
        .map_err(|e| format!("kmalloc(0) failed: {e}"))?;
    let zero_addr = zero.as_ptr() as usize;
    let zero_ks = slab.ksize(zero.as_ptr());
    let zero_free = slab.kfree(zero.as_ptr());
    let zero_log = plat.take_log();
    say!(
        o,
        "  kmalloc(0, GFP_KERNEL)                  -> {zero_addr:#x} (ZERO_SIZE_PTR): not NULL,"
    );
    say!(o, "    never to be dereferenced;");
    say!(
        o,
        "    ksize gives {zero_ks}; kfree accepts it ({})",
        if zero_free.is_ok() { "ok" } else { "refused" }
    );
    o.check(
        zero_addr == ZERO_SIZE_PTR && zero_ks == 0 && zero_free.is_ok() && zero_log.is_empty(),
        "kmalloc(0) returns ZERO_SIZE_PTR (0x10), which kfree accepts quietly",
    );
    Ok(json!({
        "max_bytes": KMALLOC_MAX_SIZE,
        "max_ksize": max_ks,
        "max_order": max_order,
        "max_last_byte": last,
        "over_error": over_err.map(|e| e.to_string()),
        "over_log": over_log,
        "nowarn_failed": quiet_failed,
        "nowarn_log_lines": quiet_log.len(),
        "zero_size_ptr": zero_addr,
    }))
}

/// Part 3: a red-zone overwrite on a debug kmalloc-64.
fn red_zone(m: &Machine, o: &mut Out, slab: &Slab<'_>) -> Result<Value, TourError> {
    let plat = m.platform();
    o.blank();
    say!(
        o,
        "Red zones: a second slab allocator, booted with slab_debug=FZPU,kmalloc-64"
    );
    say!(
        o,
        "(consistency checks, red zones, poisoning, call sites on kmalloc-64)."
    );
    plat.take_log();
    let cache = slab.kmalloc_slab(RZ_SIZE, GFP_KERNEL);
    let debug = cache.is_debug();
    let errors_before = slab.errors();
    let p = slab
        .kmalloc(RZ_SIZE, GFP_KERNEL)
        .map_err(|e| format!("kmalloc({RZ_SIZE}) on the debug allocator failed: {e}"))?
        .as_ptr();
    // SAFETY: bytes 60..64 are inside the 64-byte object; reading them is
    // reading the slab's own memory.
    let tail: Vec<u8> = (RZ_SIZE..RZ_CLASS)
        .map(|i| unsafe { p.add(i).read_volatile() })
        .collect();
    say!(
        o,
        "kmalloc({RZ_SIZE}) lands in {} ({} bytes); the {} bytes past the request read {}",
        cache.name(),
        cache.object_size(),
        RZ_CLASS - RZ_SIZE,
        tail.iter()
            .map(|b| format!("{b:#04x}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    say!(
        o,
        "(SLUB_RED_ACTIVE: Linux's kmalloc red zone). The caller writes {RZ_KMALLOC_BYTE:#04x} at"
    );
    say!(
        o,
        "byte {RZ_SIZE} and {RZ_RIGHT_BYTE:#04x} at byte {RZ_CLASS} (the right red zone, past the object);"
    );
    say!(o, "then validate_slab_cache runs and the platform logs:");
    // SAFETY: deliberate overflows into the object's red zones, which a
    // debug cache lays out around every object (bytes 60..64 are inside the
    // object, byte 64 is the first byte of the right red zone).
    unsafe {
        p.add(RZ_SIZE).write_volatile(RZ_KMALLOC_BYTE);
        p.add(RZ_CLASS).write_volatile(RZ_RIGHT_BYTE);
    }
    let r = cache.validate();
    let log = plat.take_log();
    o.blank();
    o.quote(&log.join("\n"));
    o.blank();
    let text = log.join("\n");
    let right = format!("BUG {}: Right Redzone overwritten", cache.name());
    let kmz = format!("BUG {}: kmalloc Redzone overwritten", cache.name());
    let right_byte = format!("First byte {RZ_RIGHT_BYTE:#x} instead of {SLUB_RED_ACTIVE:#x}");
    let kmz_byte = format!("First byte {RZ_KMALLOC_BYTE:#x} instead of {SLUB_RED_ACTIVE:#x}");
    let fixed = format!("FIX {}: Restoring", cache.name());
    o.check(
        tail.iter().all(|&b| b == SLUB_RED_ACTIVE),
        "the bytes between the request and the class hold the kmalloc red zone (0xcc)",
    );
    o.check(
        debug && text.contains(&right) && text.contains(&right_byte),
        format!("the write past the object is reported as `{right}` ({right_byte})"),
    );
    o.check(
        text.contains(&kmz) && text.contains(&kmz_byte),
        format!("the write past the request, inside the class, is reported as `{kmz}`"),
    );
    let freed = slab.kfree(p);
    let free_log = plat.take_log();
    let again = cache.validate();
    let again_log = plat.take_log();
    say!(
        o,
        "validate counted {} errors (each report and each repair, as Linux's slab_errors);",
        r.errors
    );
    say!(
        o,
        "the red zones were restored: kfree then {}, a second validate counts {}.",
        if freed.is_ok() && free_log.is_empty() {
            "succeeds quietly"
        } else {
            "complains"
        },
        again.errors
    );
    o.check(
        r.errors >= 2
            && text.contains(&fixed)
            && freed.is_ok()
            && free_log.is_empty()
            && again.errors == 0
            && again_log.is_empty(),
        "the overwrites are repaired: the object frees cleanly and the cache validates clean",
    );
    Ok(json!({
        "cache": cache.name(),
        "debug": debug,
        "requested": RZ_SIZE,
        "class": cache.object_size(),
        "bytes_past_request": tail,
        "errors": r.errors,
        "allocator_errors": slab.errors() - errors_before,
        "log": log,
        "kfree_ok": freed.is_ok(),
        "errors_after_fix": again.errors,
    }))
}

/// The fast-path measurements of part 4.
struct Fast {
    kmalloc_ns: f64,
    /// The same pairs with CPU 0 claimed (plain stores instead of a
    /// compare-and-swap), or why the claim failed.
    claimed_ns: Result<f64, String>,
    pages_ns: f64,
    fast_allocs: u64,
    fast_frees: u64,
}

/// ns per kmalloc(size)+kfree pair, after as many warm-up pairs.
fn pair_ns(slab: &Slab<'_>, size: usize, n: usize) -> Result<f64, TourError> {
    let mut ns = 0.0;
    for _round in 0..2 {
        let t0 = Instant::now();
        for _ in 0..n {
            let p = slab
                .kmalloc(black_box(size), GFP_KERNEL)
                .map_err(|e| format!("kmalloc({size}) failed: {e}"))?;
            slab.kfree(black_box(p.as_ptr()))
                .map_err(|e| format!("kfree: {e}"))?;
        }
        ns = per_op(t0.elapsed(), n);
    }
    Ok(ns)
}

/// Part 4, measured on the default allocator.
fn cost(m: &Machine, slab: &Slab<'_>) -> Result<Fast, TourError> {
    let pages = m.pages();
    let cache = slab.kmalloc_slab(64, GFP_KERNEL);
    let a0 = cache.stat(Stat::AllocFastpath);
    let f0 = cache.stat(Stat::FreeFastpath);
    let kmalloc_ns = pair_ns(slab, 64, PAIRS)?;
    let fast_allocs = cache.stat(Stat::AllocFastpath) - a0;
    let fast_frees = cache.stat(Stat::FreeFastpath) - f0;
    let claimed_ns = match kmem_host::claim_cpu(0) {
        Ok(claim) => {
            let ns = pair_ns(slab, 64, PAIRS);
            drop(claim);
            Ok(ns?)
        }
        Err(e) => Err(e.to_string()),
    };
    let mut pages_ns = 0.0;
    for _round in 0..2 {
        let t0 = Instant::now();
        for _ in 0..PAIRS {
            let pfn = pages
                .alloc_pages(GFP_KERNEL, black_box(0))
                .map_err(|e| format!("alloc_pages(GFP_KERNEL, 0) failed: {e}"))?;
            pages
                .free_pages(black_box(pfn), 0)
                .map_err(|e| format!("free_pages: {e}"))?;
        }
        pages_ns = per_op(t0.elapsed(), PAIRS);
    }
    Ok(Fast {
        kmalloc_ns,
        claimed_ns,
        pages_ns,
        fast_allocs,
        fast_frees,
    })
}

/// Prints part 4.
fn report_cost(o: &mut Out, f: Fast, debug_ns: f64) -> Value {
    o.blank();
    say!(
        o,
        "Cost of the fast path, {} pairs each (after as many warm-up pairs), CPU 0:",
        group(PAIRS as u64)
    );
    o.blank();
    let mut t = Table::new(&["pair", "per pair"]);
    t.row(vec!["kmalloc(64) + kfree".into(), fmt_ns(f.kmalloc_ns)]);
    t.row(vec![
        "kmalloc(64) + kfree, CPU 0 claimed".into(),
        match &f.claimed_ns {
            Ok(ns) => fmt_ns(*ns),
            Err(_) => "-".into(),
        },
    ]);
    t.row(vec![
        "alloc_pages(GFP_KERNEL, 0) + free_pages".into(),
        fmt_ns(f.pages_ns),
    ]);
    t.row(vec![
        "kmalloc(64) + kfree, slab_debug=FZPU".into(),
        fmt_ns(debug_ns),
    ]);
    o.table(&t);
    o.blank();
    let total = 2 * PAIRS as u64;
    say!(
        o,
        "kmalloc-64 counted {} fast-path allocations and {} fast-path frees in {} pairs:",
        group(f.fast_allocs),
        group(f.fast_frees),
        group(total)
    );
    say!(
        o,
        "each object comes off and goes back on the CPU's sheaf (an array of free objects), no slab list touched."
    );
    match &f.claimed_ns {
        Ok(ns) => say!(
            o,
            "A thread that claims its CPU (kmem_host::claim_cpu, as kernel code runs with preemption off) guards the sheaf with plain stores instead of a compare-and-swap: {} against {}.",
            fmt_ns(*ns),
            fmt_ns(f.kmalloc_ns)
        ),
        Err(e) => say!(o, "Claiming CPU 0 failed ({e}): no claimed figure."),
    }
    say!(
        o,
        "With slab_debug every call checks, poisons and records its call site: {:.1}x the time.",
        debug_ns / f.kmalloc_ns.max(0.001)
    );
    o.check(
        f.fast_allocs + 1 >= total && f.fast_frees + 1 >= total,
        format!(
            "kmalloc(64)+kfree stays on the fast path ({} of {} allocations, {} of {} frees)",
            f.fast_allocs, total, f.fast_frees, total
        ),
    );
    json!({
        "pairs": PAIRS,
        "kmalloc64_pair_ns": f.kmalloc_ns,
        "kmalloc64_claimed_pair_ns": f.claimed_ns.as_ref().ok(),
        "page_order0_pair_ns": f.pages_ns,
        "kmalloc64_debug_pair_ns": debug_ns,
        "alloc_fastpath": f.fast_allocs,
        "free_fastpath": f.fast_frees,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_classes() {
        assert_eq!(linux_class(1), (8, Some("kmalloc-8".into()), 0));
        assert_eq!(linux_class(97), (128, Some("kmalloc-128".into()), 0));
        assert_eq!(linux_class(4097), (8192, Some("kmalloc-8k".into()), 0));
        assert_eq!(linux_class(8193), (16384, None, 2));
    }
}
