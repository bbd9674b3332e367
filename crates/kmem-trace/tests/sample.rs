//! The repository's sample (tests/data/sample.trace: 306 event lines copied from
//! the three shared traces — at least 25 of each event type they hold, every
//! irq-info column and every GFP spelling they use — under net's header), so
//! these checks run without ../shared.

mod common;

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;

use common::*;
use kmem_trace::{Event, EventKind, Line, Mode, SliceLines, TraceReader};

fn sample() -> Vec<u8> {
    std::fs::read(sample_path()).expect("tests/data/sample.trace")
}

fn digest<R: std::io::Read>(mut r: TraceReader<R>) -> (u64, kmem_trace::Stats) {
    let mut h = DefaultHasher::new();
    r.for_each_event(|rec| digest_records(&mut h, rec)).unwrap();
    let s = r.into_stats();
    digest_stats(&mut h, &s);
    (h.finish(), s)
}

#[test]
fn every_line_accounted_and_counts_match_naive_scan() {
    let data = sample();
    let text = std::str::from_utf8(&data).unwrap();
    let (_, s) = digest(TraceReader::open(sample_path(), Mode::Strict).unwrap());
    let naive = naive_scan(text);
    assert_eq!(s.lines, naive.lines);
    assert_eq!(s.lines, s.accounted());
    assert_eq!(s.comment_lines, naive.comment_lines);
    assert_eq!(s.comment_lines, 13);
    assert_eq!(kind_counts(&s), naive.events);
    for ev in TRACE_EVENTS {
        let n = EventKind::ALL
            .iter()
            .find(|k| k.name() == ev)
            .map(|k| s.event_count(*k))
            .unwrap();
        assert_eq!(n, grep_count(text, ev), "{ev}");
        if ev != "purge_vmap_area_lazy" {
            assert!(n >= 25, "{ev}: {n}");
        }
    }
    assert_eq!(s.header.buffer_started.len(), 1);
    assert_eq!(s.header.cpus, Some(2));
}

#[test]
fn every_field_and_gfp_matches_naive_reading() {
    let data = sample();
    let s = parse_and_cross_check(std::str::from_utf8(&data).unwrap(), Mode::Strict);
    assert_eq!(s.skipped_total(), 0);
    // Every GFP spelling of the traces is in the sample, and all parse.
    let mut spellings = std::collections::HashSet::new();
    SliceLines::new(&data, Mode::Strict)
        .for_each_event(|r| {
            if let Some(g) = r.event.gfp() {
                spellings.insert(g);
            }
        })
        .unwrap();
    assert!(spellings.len() >= 45, "{}", spellings.len());
}

#[test]
fn plain_zstd_slice_and_two_runs_agree() {
    let data = sample();
    let z = zstd::encode_all(&data[..], 19).unwrap();
    let (a, sa) = digest(TraceReader::new(&data[..], Mode::Strict).unwrap());
    let (b, _) = digest(TraceReader::new(&z[..], Mode::Strict).unwrap());
    let (c, _) = digest(TraceReader::new(&z[..], Mode::Strict).unwrap());
    // Tiny buffers force a refill in the middle of almost every line.
    let (d, _) = digest(TraceReader::with_buffer(&z[..], Mode::Strict, 300).unwrap());
    assert_eq!(a, b, "plain vs zstd");
    assert_eq!(b, c, "two runs");
    assert_eq!(a, d, "small buffer");
    let mut h = DefaultHasher::new();
    let s = SliceLines::new(&data, Mode::Strict)
        .for_each_event(|r| digest_records(&mut h, r))
        .unwrap();
    digest_stats(&mut h, &s);
    assert_eq!(a, h.finish(), "slice");
    assert_eq!(sa.bytes, data.len() as u64);
}

#[test]
fn every_irq_column_of_the_traces_decodes() {
    let data = sample();
    let mut seen = std::collections::BTreeSet::new();
    for line in SliceLines::new(&data, Mode::Strict) {
        if let Line::Event(r) = line.unwrap() {
            let f = r.common.flags;
            seen.insert(f.raw().to_string());
            // The context agrees with the column, character by character.
            let raw = f.raw().as_bytes();
            let ctx = r.common.ctx;
            assert_eq!(ctx.irqs_disabled, raw[0] == b'd' || raw[0] == b'D');
            assert_eq!(ctx.bh_disabled == 1, raw[0] == b'b' || raw[0] == b'D');
            assert_eq!(ctx.softirq == 1, raw[2] == b's' || raw[2] == b'H');
            assert_eq!(ctx.hardirq == 1, matches!(raw[2], b'h' | b'H' | b'Z'));
            let depth = if raw[3] == b'.' { 0 } else { raw[3] - b'0' };
            assert_eq!(ctx.preempt, depth);
            assert_eq!(f.need_resched, matches!(raw[1], b'N' | b'n'));
        }
    }
    assert_eq!(seen.len(), 40, "{seen:?}");
}

#[test]
fn kmalloc_and_vmalloc_values() {
    let data = sample();
    let mut first_kmalloc = None;
    let mut first_vmap = None;
    SliceLines::new(&data, Mode::Strict)
        .for_each_event(|r| match r.event {
            Event::Kmalloc(k) if first_kmalloc.is_none() => first_kmalloc = Some((r.line, k)),
            Event::AllocVmapArea(v) if first_vmap.is_none() => first_vmap = Some(v),
            _ => {}
        })
        .unwrap();
    let (_, k) = first_kmalloc.unwrap();
    assert!(k.bytes_alloc >= k.bytes_req);
    assert!(!k.call_site.symbol().is_empty());
    let v = first_vmap.unwrap();
    // `va_start: ` is decimal and lands inside [vstart, vend].
    assert!(v.vstart <= v.va_start && v.va_start < v.vend, "{v:?}");
    assert!(!v.failed);
}
