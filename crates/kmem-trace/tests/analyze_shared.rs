//! `kmem analyze` on the three real Linux 6.18 traces: every finding is
//! backed by evidence that points into the trace, the ranking is by
//! severity then count, two runs agree, and the findings known to be in the
//! traces are found (GFP_ATOMIC in process context at the virtio-blk request
//! path and /proc/self link lookups; no blocking mask in atomic context).

use std::path::PathBuf;

use kmem_trace::analyze::{analyze_file, FindingKind};
use kmem_trace::{Mode, TraceReader};

fn shared_trace(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/traces")
        .join(name)
        .join("trace.zst");
    assert!(
        path.is_file(),
        "shared trace {} is missing: these tests analyse the real Linux traces from \
         ../shared/traces (next to the repository, see DESIGN.md \"Real data\")",
        path.display()
    );
    path
}

fn check(name: &str) -> kmem_trace::analyze::AnalyzeReport {
    let path = shared_trace(name);
    let r = analyze_file(&path, Mode::Strict).expect("strict analysis");
    let again = analyze_file(&path, Mode::Strict).unwrap();
    assert_eq!(r, again, "{name}: two runs differ");

    let mut reader = TraceReader::open(&path, Mode::Strict).unwrap();
    reader.for_each_event(|_| {}).unwrap();
    let stats = reader.into_stats();
    assert_eq!(r.events, stats.event_total());
    assert_eq!(r.malformed_lines, 0);

    // Ranked: kinds in severity order, counts descending within a kind
    // (churn: by rate, its own order).
    for w in r.findings.windows(2) {
        assert!(
            w[0].kind <= w[1].kind,
            "{name}: {:?} before {:?}",
            w[0].kind,
            w[1].kind
        );
        if w[0].kind == w[1].kind && w[0].kind != FindingKind::Churn {
            assert!(w[0].count >= w[1].count);
        }
    }
    for f in &r.findings {
        assert!(f.count > 0);
        assert!(f.count <= 2 * f.site_allocs.max(1), "{name}: {f:?}");
        assert!(!f.advice.is_empty());
        for &l in &f.evidence.lines {
            assert!(l > 0 && l <= stats.lines, "{name}: line {l}");
        }
        if f.kind != FindingKind::Churn {
            assert!(!f.evidence.lines.is_empty(), "{name}: {f:?}");
            assert!(!f.evidence.contexts.values.is_empty());
        }
    }
    let churn = r
        .findings
        .iter()
        .filter(|f| f.kind == FindingKind::Churn)
        .count();
    assert!(churn > 0 && churn <= kmem_trace::analyze::CHURN_SITES);
    // None of the traces makes a blocking allocation in atomic context.
    assert!(
        !r.counts.contains_key(&FindingKind::BlockingInAtomic),
        "{name}: {:?}",
        r.findings[0]
    );
    assert!(r.to_text().contains("churn hot spots"));
    let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(v["findings"].as_array().unwrap().len(), r.findings.len());
    r
}

fn has(r: &kmem_trace::analyze::AnalyzeReport, kind: FindingKind, site_prefix: &str) -> bool {
    r.findings
        .iter()
        .any(|f| f.kind == kind && f.site.starts_with(site_prefix))
}

#[test]
fn build_trace() {
    let r = check("build");
    assert!(has(&r, FindingKind::AtomicInProcess, "virtblk_prep_rq"));
    assert!(has(&r, FindingKind::AtomicInProcess, "proc_self_get_link"));
}

#[test]
fn fs_trace() {
    let r = check("fs");
    assert!(has(&r, FindingKind::AtomicInProcess, "virtblk_prep_rq"));
    assert!(has(&r, FindingKind::Churn, "ext4_htree_store_dirent"));
}

#[test]
fn net_trace() {
    let r = check("net");
    assert!(has(&r, FindingKind::AtomicInProcess, "__alloc_skb"));
}
