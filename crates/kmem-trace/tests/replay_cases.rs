//! Replay on small hand-written traces: each special case lands in its
//! bucket, perf's figures follow perf's definitions, malformed lines stop a
//! strict replay with their line number and are counted otherwise, and the
//! JSON and SVG outputs hold what they promise.

use std::path::{Path, PathBuf};

use kmem_trace::replay::{plot, replay_file, ReplayConfig, ReplayError, ReplayReport};
use kmem_trace::Mode;

const HEADER: &str = "# tracer: nop\n# entries-in-buffer/entries-written: 40/40   #P:2\n";

fn line(cpu: u32, flags: &str, ts: &str, ev: &str) -> String {
    format!("            test-42      [{cpu:03}] {flags}   {ts}: {ev}\n")
}

/// A fresh directory with `trace` (and no meminfo: the size comes from the config).
fn write_trace(name: &str, body: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kmem-replay-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("trace");
    std::fs::write(&p, format!("{HEADER}{body}")).unwrap();
    p
}

fn small(mode: Mode) -> ReplayConfig {
    ReplayConfig {
        mode,
        ram_bytes: Some(256 << 20),
        ..ReplayConfig::default()
    }
}

fn replay(path: &Path, mode: Mode) -> ReplayReport {
    replay_file(path, &small(mode), None).unwrap()
}

/// The trace of `every_case_in_its_bucket`, one event per line from line 3.
fn cases_trace() -> String {
    let ev = [
        // 3: a filp on CPU 0 ...
        line(0, ".....", "1.000001", "kmem_cache_alloc: call_site=alloc_empty_file+0x3c/0x110 ptr=ffff888100001000 name=filp bytes_req=184 bytes_alloc=192 gfp_flags=GFP_KERNEL node=-1 accounted=false"),
        // 4: ... freed on CPU 1: replayed, one ping-pong
        line(1, ".....", "1.000002", "kmem_cache_free: call_site=__fput+0x141/0x2a0 ptr=ffff888100001000 name=filp"),
        // 5: kfree(NULL)
        line(0, ".....", "1.000003", "kfree: call_site=foo+0x1/0x10 ptr=0000000000000000"),
        // 6: a free of something older than the trace
        line(0, ".....", "1.000004", "kfree: call_site=foo+0x1/0x10 ptr=ffff888100002000"),
        // 7: kmalloc(100) -> kmalloc-128
        line(0, ".....", "1.000005", "kmalloc: call_site=bar+0x1/0x10 ptr=ffff888100003000 bytes_req=100 bytes_alloc=128 gfp_flags=GFP_KERNEL node=-1 accounted=false"),
        // 8: the same pointer again without a free: stale
        line(0, ".....", "1.000006", "kmalloc: call_site=bar+0x1/0x10 ptr=ffff888100003000 bytes_req=20 bytes_alloc=32 gfp_flags=GFP_KERNEL node=-1 accounted=false"),
        // 9-11: a page, its free and the batched repeat
        line(0, ".....", "1.000007", "mm_page_alloc: page=ffffea0000040000 pfn=0x1000 order=0 migratetype=0 gfp_flags=GFP_KERNEL"),
        line(0, ".....", "1.000008", "mm_page_free: page=ffffea0000040000 pfn=0x1000 order=0"),
        line(0, "...2.", "1.000009", "mm_page_free_batched: page=ffffea0000040000 pfn=0x1000 order=0"),
        // 12-13: a free of an old page and its batched repeat
        line(0, ".....", "1.000010", "mm_page_free: page=ffffea0000080000 pfn=0x2000 order=0"),
        line(0, "...2.", "1.000011", "mm_page_free_batched: page=ffffea0000080000 pfn=0x2000 order=0"),
        // 14-16: an order-2 block freed page by page (split)
        line(0, ".....", "1.000012", "mm_page_alloc: page=ffffea00000c0000 pfn=0x3000 order=2 migratetype=1 gfp_flags=GFP_HIGHUSER_MOVABLE"),
        line(0, ".....", "1.000013", "mm_page_free: page=ffffea00000c0040 pfn=0x3001 order=0"),
        line(0, ".....", "1.000014", "mm_page_free: page=ffffea00000c0000 pfn=0x3000 order=0"),
        // 17: a failed allocation
        line(0, ".....", "1.000015", "mm_page_alloc: page=0000000000000000 pfn=0xffffffffffffffff order=9 migratetype=1 gfp_flags=GFP_TRANSHUGE_LIGHT"),
        // 18-19: a vmap area and its free
        line(0, ".....", "1.000016", "alloc_vmap_area: va_start: 18446683600644456448 size=20480 align=16384 vstart=0xffffc90000000000 vend=0xffffe8ffffffffff failed=0"),
        line(1, ".....", "1.000017", "free_vmap_area_noflush: va_start=0xffffc900046fc000 nr_lazy=8910 nr_lazy_max=16384"),
        // 20: page allocator internals
        line(0, "d..1.", "1.000018", "mm_page_alloc_zone_locked: page=ffffea0000100000 pfn=0x4000 order=0 migratetype=0 percpu_refill=1"),
        // 21: GFP_KERNEL with IRQs off: a context violation (served anyway)
        line(0, "d..1.", "1.000019", "kmalloc: call_site=bad+0x1/0x10 ptr=ffff888100005000 bytes_req=64 bytes_alloc=64 gfp_flags=GFP_KERNEL node=-1 accounted=false"),
        // 22: Linux says 96 for 100 bytes: a class mismatch, reported with its line
        line(0, ".....", "1.000020", "kmalloc: call_site=odd+0x1/0x10 ptr=ffff888100006000 bytes_req=100 bytes_alloc=96 gfp_flags=GFP_KERNEL node=-1 accounted=false"),
        // 23: kmalloc above 8 KiB: a large block (order 2)
        line(0, ".....", "1.000021", "kmalloc: call_site=big+0x1/0x10 ptr=ffff888100010000 bytes_req=9000 bytes_alloc=16384 gfp_flags=GFP_KERNEL node=-1 accounted=false"),
    ];
    ev.concat()
}

#[test]
fn every_case_in_its_bucket() {
    let p = write_trace("cases", &cases_trace());
    let r = replay(&p, Mode::Strict);
    let a = &r.accounting;
    assert_eq!(r.events, 21);
    assert_eq!(a.accounted(), 21, "{a:?}");
    assert_eq!(a.kfree_null, 1);
    assert_eq!(a.unmatched_frees, 2, "old kfree, old page");
    assert_eq!(a.duplicate_frees, 2, "both batched repeats");
    assert_eq!(a.skipped, 2, "{:?}", a.skipped_by_reason);
    assert_eq!(a.skipped_by_reason.len(), 2);
    assert_eq!(a.replayed, 21 - 1 - 2 - 2 - 2);
    assert_eq!(r.stale_allocations, 1);
    assert_eq!(r.page_splits, 1);
    assert_eq!(r.context_violations, 1);
    assert_eq!(r.context_violation_sites[0].site, "bad+0x1/0x10");
    assert_eq!(r.context_violation_sites[0].first_line, 21);
    assert_eq!(r.kmalloc_class_mismatches, 1);
    let m = &r.class_mismatch_examples[0];
    assert_eq!(
        (m.line, m.bytes_req, m.linux_bytes_alloc, m.kmem_bytes_alloc),
        (22, 100, 96, 128)
    );
    assert!(r.failures.is_empty(), "{:?}", r.failure_examples);
    // What is still live: the stale kmalloc's successor (32), the violating
    // one (64), the odd one (128), the large block (4 pages), the two pages
    // of the split block never freed.
    assert_eq!(r.final_pages.kinds.kmalloc_large, 4);
    assert_eq!(r.final_pages.kinds.movable, 2);
    assert_eq!(r.final_pages.kinds.unmovable, 0);
    assert_eq!(r.final_pages.kinds.vmalloc, 0);
    assert_eq!(
        r.peak_pages.kinds.vmalloc, 4,
        "16 KiB stack, guard excluded"
    );
    assert_eq!(r.slab.live_requested_bytes, 20 + 64 + 100 + 9000);
    // The named cache got Linux's stride.
    let filp = r.traced_caches.iter().find(|c| c.name == "filp").unwrap();
    assert_eq!((filp.kmem_size, filp.allocs, filp.frees), (192, 1, 1));
}

#[test]
fn perf_definitions() {
    let p = write_trace("perf", &cases_trace());
    let r = replay(&p, Mode::Lenient);
    let s = &r.perf_slab.summary;
    assert_eq!(s.nr_allocs, 6);
    assert_eq!(s.total_requested, 184 + 100 + 20 + 64 + 100 + 9000);
    assert_eq!(s.total_allocated, 192 + 128 + 32 + 64 + 96 + 16384);
    // Only the filp was freed (the old kfree finds no row): its 192 bytes.
    assert_eq!(s.total_freed, 192);
    assert_eq!(s.net_allocated, (s.total_allocated - 192) as i64);
    let filp = r
        .perf_slab
        .callers
        .iter()
        .find(|c| c.key == "alloc_empty_file+0x3c/0x110")
        .unwrap();
    assert_eq!((filp.hits, filp.pingpong), (1, 1), "freed on another CPU");
    let bar = r
        .perf_slab
        .callers
        .iter()
        .find(|c| c.key == "bar+0x1/0x10")
        .unwrap();
    assert_eq!((bar.hits, bar.total_alloc, bar.total_req), (2, 160, 120));
    let ptr = r
        .perf_slab
        .allocs
        .iter()
        .find(|c| c.key == "0xffff888100003000")
        .unwrap();
    assert_eq!(ptr.hits, 2);
    let pg = &r.perf_page.summary;
    assert_eq!((pg.nr_page_allocs, pg.nr_page_fails), (3, 1));
    assert_eq!(pg.total_page_fail_bytes, 2 << 20);
    // Frees: 0x1000 (match), 0x2000 (no match), 0x3001 (no match: perf keys
    // pages by pfn), 0x3000 (match, order 0 though allocated as 2).
    assert_eq!((pg.nr_page_frees, pg.nr_page_nomatch), (4, 2));
    assert_eq!(pg.nr_alloc_freed, 2);
    assert_eq!(r.perf_page.order_stats[0][0], 1);
    assert_eq!(r.perf_page.order_stats[2][1], 1);
}

#[test]
fn malformed_lines_strict_and_lenient() {
    let mut body = cases_trace();
    // Line 24: a kmalloc cut short.
    body.push_str(&line(
        0,
        ".....",
        "1.000022",
        "kmalloc: call_site=bar+0x1/0x10 ptr=ffff8881",
    ));
    // Line 25: a GFP flag Linux does not have.
    body.push_str(&line(0, ".....", "1.000023", "kmalloc: call_site=bar+0x1/0x10 ptr=ffff888100007000 bytes_req=8 bytes_alloc=8 gfp_flags=GFP_KERNEL|__GFP_BOGUS node=-1 accounted=false"));
    body.push_str(&line(
        0,
        ".....",
        "1.000024",
        "kfree: call_site=bar+0x1/0x10 ptr=ffff888100006000",
    ));
    let p = write_trace("malformed", &body);
    let err = replay_file(&p, &small(Mode::Strict), None).unwrap_err();
    assert!(matches!(err, ReplayError::Trace(..)));
    let msg = err.to_string();
    assert!(msg.contains("line 24"), "{msg}");
    let r = replay(&p, Mode::Lenient);
    assert_eq!(r.events, 22);
    assert_eq!(
        r.lines.malformed.values().sum::<u64>(),
        2,
        "{:?}",
        r.lines.malformed
    );
    assert_eq!(r.lines.malformed_examples.len(), 2);
    assert!(r.lines.malformed_examples[0].contains("line 24"));
    assert!(r.to_text().contains("malformed"));
    assert_eq!(r.accounting.accounted(), r.events);
}

#[test]
fn json_has_the_promised_keys() {
    let p = write_trace("json", &cases_trace());
    let r = replay(&p, Mode::Strict);
    let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    for k in [
        "events",
        "seconds",
        "events_per_sec",
        "kmalloc_class_mismatches",
        "failures",
        "context_violations",
        "unmatched_frees",
        "peak_pages",
    ] {
        assert!(v.get(k).is_some(), "{k} missing");
    }
    for kind in [
        "slab",
        "kmalloc_large",
        "unmovable",
        "movable",
        "reclaimable",
        "vmalloc",
        "total",
    ] {
        assert!(
            v["peak_pages"].get(kind).is_some(),
            "peak_pages.{kind} missing"
        );
    }
    assert_eq!(v["events"], 21);
    assert_eq!(v["unmatched_frees"], 2);
}

#[test]
fn plots_are_svg() {
    let p = write_trace("plot", &cases_trace());
    let r = replay(&p, Mode::Strict);
    let dir = p.parent().unwrap().join("plots");
    let files = plot::write_all(&r, &dir).unwrap();
    assert_eq!(files.len(), 4);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(text.contains("<svg"), "{}", f.display());
        assert!(text.contains("</svg>"), "{}", f.display());
    }
}

#[test]
fn machine_sized_from_meminfo() {
    let p = write_trace("meminfo", &cases_trace());
    std::fs::write(
        p.parent().unwrap().join("before.meminfo"),
        "MemTotal:         524288 kB\nMemFree:  1 kB\n",
    )
    .unwrap();
    let r = replay_file(&p, &ReplayConfig::default(), None).unwrap();
    assert_eq!(r.machine.ram_bytes, 512 << 20);
    assert_eq!(r.machine.nr_cpus, 2, "#P:2 in the header");
    assert!(matches!(
        r.machine.ram_source,
        kmem_trace::replay::meminfo::RamSource::Meminfo(_)
    ));
}
