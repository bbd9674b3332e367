//! The three real Linux 6.18 traces in ../shared/traces, replayed through kmem.
//!
//! For each trace: zero kmalloc class mismatches (kmem's class size is
//! Linux's `bytes_alloc` for every kmalloc event); every event accounted for
//! (replayed, unmatched free, duplicate free, kfree(NULL), or skipped with a
//! reason, and the buckets add up to the parser's event count and per-type
//! counts); identical results on two runs, and with the parsing pipeline on
//! or off. The traces are required: a missing one fails with a clear message.
//!
//! The replay is heavy for the test profile's opt-level 1 (the net trace has
//! 2.9 million events), so each trace is replayed twice (pipeline on, then
//! off) and the comparison is of everything but the wall times.

use std::path::PathBuf;

use kmem_trace::replay::{replay_file, ReplayConfig, ReplayReport};
use kmem_trace::{Mode, TraceReader};

/// `../shared/traces/NAME/trace.zst`, failing loudly if it is not there.
fn shared_trace(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/traces")
        .join(name)
        .join("trace.zst");
    assert!(
        path.is_file(),
        "shared trace {} is missing: these tests replay the real Linux traces from \
         ../shared/traces (next to the repository, see DESIGN.md \"Real data\"); \
         without them nothing is tested",
        path.display()
    );
    path
}

/// The report as JSON without the wall-clock figures.
fn deterministic(r: &ReplayReport) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    let o = v.as_object_mut().unwrap();
    for k in ["seconds", "setup_seconds", "events_per_sec"] {
        assert!(o.remove(k).is_some(), "{k} is in the report");
    }
    v
}

fn check(name: &str) {
    let path = shared_trace(name);
    let strict = ReplayConfig {
        mode: Mode::Strict,
        ..ReplayConfig::default()
    };
    let a = replay_file(&path, &strict, None).expect("strict replay of a shared trace");
    let b = replay_file(
        &path,
        &ReplayConfig {
            background: false,
            ..strict.clone()
        },
        None,
    )
    .expect("second replay");

    // The parser's own count, independently.
    let mut reader = TraceReader::open(&path, Mode::Strict).unwrap();
    reader.for_each_event(|_| {}).unwrap();
    let stats = reader.into_stats();

    assert_eq!(a.events, stats.event_total(), "{name}: events");
    assert_eq!(a.lines.lines, stats.lines, "{name}: lines");
    for k in kmem_trace::EventKind::ALL {
        assert_eq!(
            a.events_by_type.get(k.name()).copied().unwrap_or(0),
            stats.event_count(k),
            "{name}: {k} events"
        );
    }

    // Conformance.
    assert_eq!(
        a.kmalloc_class_mismatches, 0,
        "{name}: {:?}",
        a.class_mismatch_examples
    );
    assert_eq!(a.migratetype_mismatches, 0, "{name}: migrate types");

    // Every event in exactly one bucket.
    let acct = &a.accounting;
    assert_eq!(acct.events, a.events);
    assert_eq!(acct.accounted(), a.events, "{name}: {acct:?}");
    assert_eq!(
        acct.skipped,
        acct.skipped_by_reason.values().sum::<u64>(),
        "{name}: skipped by reason"
    );
    assert_eq!(a.unmatched_frees, acct.unmatched_frees);
    // Every mm_page_free_batched repeats an mm_page_free.
    assert_eq!(
        acct.duplicate_frees,
        stats.event_count(kmem_trace::EventKind::MmPageFreeBatched),
        "{name}: duplicates"
    );
    // The real traces are well formed and kmem serves them all.
    assert!(
        a.lines.malformed.is_empty(),
        "{name}: {:?}",
        a.lines.malformed
    );
    assert!(a.failures.is_empty(), "{name}: {:?}", a.failure_examples);
    assert!(a.peak_pages.total > 0);
    assert_eq!(
        a.perf_slab.summary.nr_allocs,
        stats.event_count(kmem_trace::EventKind::Kmalloc)
            + stats.event_count(kmem_trace::EventKind::KmemCacheAlloc)
    );
    assert_eq!(
        a.perf_page.summary.nr_page_allocs,
        stats.event_count(kmem_trace::EventKind::MmPageAlloc)
    );

    // Two runs, pipeline on and off: identical.
    assert_eq!(deterministic(&a), deterministic(&b), "{name}: runs differ");
}

#[test]
fn build_trace() {
    check("build");
}

#[test]
fn fs_trace() {
    check("fs");
}

#[test]
fn net_trace() {
    check("net");
}
