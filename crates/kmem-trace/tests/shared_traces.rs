//! The three real Linux 6.18 traces in ../shared/traces, parsed end to end.
//!
//! For each trace: every line is accounted for; per-type counts equal a naive
//! scan's and `grep -c`'s; every field of every event (GFP masks included)
//! equals the naive reading; two runs give identical results; the `.zst` file,
//! the decompressed text streamed, and the text as a slice give the same events.
//! The traces are required: a missing one fails the test with a clear message.

mod common;

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;
use std::io::Read;

use common::*;
use kmem_trace::{ErrorKind, EventKind, Line, Mode, SliceLines, Stats, TraceReader};

/// Digest and counters of one full read through `reader`.
fn run<R: Read>(mut reader: TraceReader<R>) -> (u64, Stats) {
    let mut h = DefaultHasher::new();
    reader
        .for_each_event(|rec| digest_records(&mut h, rec))
        .expect("strict parse of a shared trace");
    let stats = reader.into_stats();
    digest_stats(&mut h, &stats);
    (h.finish(), stats)
}

fn check_trace(name: &str) {
    let path = shared_trace(name);
    let raw = std::fs::read(&path).unwrap();
    let text_bytes = zstd::decode_all(&raw[..]).unwrap();
    let text = std::str::from_utf8(&text_bytes).expect("the shared traces are UTF-8");

    // Streaming from the .zst file, strict: no line of a real trace is malformed.
    let (d1, s1) = run(TraceReader::open(&path, Mode::Strict).unwrap());
    assert_eq!(s1.skipped_total(), 0, "{name}: {:?}", s1.first_errors);
    assert_eq!(s1.lines, s1.accounted(), "{name}: every line in a bucket");
    assert_eq!(s1.bytes, text_bytes.len() as u64);

    // Identical on a second run.
    let (d2, s2) = run(TraceReader::open(&path, Mode::Strict).unwrap());
    assert_eq!(d1, d2, "{name}: two runs differ");
    assert_eq!(s1.events, s2.events);

    // Plain text streamed through the reader (small buffer: many refills), and
    // the slice iterator, agree with the .zst run.
    let (d3, _) = run(TraceReader::with_buffer(&text_bytes[..], Mode::Strict, 4096).unwrap());
    assert_eq!(d1, d3, "{name}: .zst and plain input differ");
    let (d3b, _) = run(TraceReader::open_background(&path, Mode::Strict).unwrap());
    assert_eq!(d1, d3b, "{name}: background decompression differs");
    let mut h = DefaultHasher::new();
    let s4 = SliceLines::new(&text_bytes, Mode::Lenient)
        .for_each_event(|r| digest_records(&mut h, r))
        .unwrap();
    digest_stats(&mut h, &s4);
    assert_eq!(d1, h.finish(), "{name}: slice and streamed parses differ");

    // Against the naive scan and grep.
    let naive = naive_scan(text);
    assert_eq!(s1.lines, naive.lines, "{name}: line count");
    assert_eq!(s1.comment_lines, naive.comment_lines);
    assert_eq!(s1.blank_lines, naive.blank_lines);
    assert_eq!(s1.unknown_lines, 0, "{name}: {:?}", s1.unknown);
    assert_eq!((s1.lost_lines, s1.lost_events), (0, 0));
    assert_eq!(kind_counts(&s1), naive.events, "{name}: per-type counts");
    for ev in TRACE_EVENTS {
        let kind = EventKind::ALL.iter().find(|k| k.name() == ev).unwrap();
        assert_eq!(
            s1.event_count(*kind),
            grep_count(text, ev),
            "{name}: grep -c ' {ev}: '"
        );
    }
    assert_eq!(
        s1.lines,
        s1.event_total() + naive.comment_lines + naive.blank_lines,
        "{name}: events + header lines == lines"
    );

    // The header agrees with the body: the buffer held exactly the events we read.
    let h = &s1.header;
    assert_eq!(h.tracer.as_deref(), Some("nop"));
    assert_eq!(h.cpus, Some(2));
    assert_eq!(h.entries_in_buffer, Some(s1.event_total()), "{name}");
    assert!(s1.max_cpu.unwrap() < 2);
    assert!(s1.span_ns() > 0);

    // Every field of every event, GFP masks included, equals the naive reading.
    let s5 = parse_and_cross_check(text, Mode::Strict);
    assert_eq!(s5.events, s1.events);
    assert_eq!(s5.skipped_count(ErrorKind::BadGfp), 0);
}

#[test]
fn build_trace() {
    check_trace("build");
}

#[test]
fn fs_trace() {
    check_trace("fs");
}

#[test]
fn net_trace() {
    check_trace("net");
}

/// What the traces hold, pinned: a change in these numbers means the shared
/// data changed or the parser did.
#[test]
fn shared_trace_facts() {
    let facts: [(&str, u64, [u64; 3]); 3] = [
        ("build", 209_386, [1_769, 29_264, 50_608]),
        ("fs", 473_232, [23_186, 137_948, 48_986]),
        ("net", 2_888_290, [11_113, 848_409, 401_043]),
    ];
    for (name, lines, [kmalloc, cache_alloc, page_alloc]) in facts {
        let mut r = TraceReader::open(shared_trace(name), Mode::Strict).unwrap();
        while r.next_line().unwrap().is_some() {}
        let s = r.stats();
        assert_eq!(s.lines, lines, "{name}");
        assert_eq!(s.event_count(EventKind::Kmalloc), kmalloc, "{name}");
        assert_eq!(
            s.event_count(EventKind::KmemCacheAlloc),
            cache_alloc,
            "{name}"
        );
        assert_eq!(s.event_count(EventKind::MmPageAlloc), page_alloc, "{name}");
        assert_eq!(s.event_count(EventKind::PurgeVmapAreaLazy), 0, "{name}");
    }
    // net's ring buffer overflowed: CPU 1's buffer starts later than CPU 0's.
    let mut r = TraceReader::open(shared_trace("net"), Mode::Strict).unwrap();
    while r.next_line().unwrap().is_some() {}
    let h = &r.stats().header;
    assert_eq!(h.overwritten(), Some(3_500_378 - 2_888_277));
    assert_eq!(h.buffer_started, vec![(1, 122_219)]);
}

/// Irq-info columns on lines picked by hand from the traces, decoded as
/// ftrace.rst describes them.
#[test]
fn irq_flags_on_real_lines() {
    // (trace, line, task, flags, irqs_off, bh_off, softirq, hardirq, preempt, migrate, need_resched)
    type Want = (&'static str, bool, bool, bool, bool, u8, u8, bool);
    let cases: [(&str, &str, Want); 8] = [
        ("net", "      capture.sh-9684    [000] .....   263.707263: kmem_cache_free: call_site=__fput+0x141/0x2a0 ptr=ffff88813bc86b70 name=lsm_file_cache",
            (".....", false, false, false, false, 0, 0, false)),
        ("net", "            curl-10030   [001] b.s2.   265.763717: kmem_cache_alloc: call_site=__alloc_skb+0x147/0x1a0 ptr=ffff88812baf6300 name=skbuff_head_cache bytes_req=224 bytes_alloc=256 gfp_flags=GFP_ATOMIC node=-1 accounted=false",
            ("b.s2.", false, true, true, false, 2, 0, false)),
        ("net", "            curl-10030   [001] ..s2.   265.763719: kfree: call_site=skb_release_data+0x16b/0x1d0 ptr=ffff88812b64b440",
            ("..s2.", false, false, true, false, 2, 0, false)),
        ("build", "      capture.sh-9558    [001] ...2.   262.912079: mm_page_free: page=ffffea0005871180 pfn=0x161c46 order=0",
            ("...2.", false, false, false, false, 2, 0, false)),
        ("build", "      capture.sh-9558    [001] ...4.   262.912080: mm_page_free_batched: page=ffffea0005871180 pfn=0x161c46 order=0",
            ("...4.", false, false, false, false, 4, 0, false)),
        ("build", "", ("d..1.", true, false, false, false, 1, 0, false)),
        ("net", "", (".Ns.1", false, false, true, false, 0, 1, true)),
        ("fs", "", ("dN.2.", true, false, false, false, 2, 0, true)),
    ];
    for (trace, given, want) in cases {
        let (flags, irqs_off, bh_off, softirq, hardirq, preempt, migrate, resched) = want;
        let text = String::from_utf8(
            zstd::decode_all(std::fs::File::open(shared_trace(trace)).unwrap()).unwrap(),
        )
        .unwrap();
        // A given line must be in the trace; otherwise take the first line with those flags.
        let line = if given.is_empty() {
            let pat = format!("] {flags} ");
            text.split('\n').find(|l| l.contains(&pat)).unwrap()
        } else {
            assert!(
                text.split('\n').any(|l| l == given),
                "not in {trace}: {given}"
            );
            given
        };
        let mut p = kmem_trace::Parser::new(Mode::Strict);
        let Line::Event(rec) = p.parse_line(line.as_bytes()).unwrap() else {
            panic!("not an event: {line}")
        };
        let f = rec.common.flags;
        assert_eq!(f.raw(), flags);
        assert_eq!(
            (f.irqs_off, f.bh_off, f.softirq, f.hardirq, f.nmi),
            (irqs_off, bh_off, softirq, hardirq, false),
            "{line}"
        );
        assert_eq!(
            (f.preempt_depth, f.migrate_disable),
            (preempt, migrate),
            "{line}"
        );
        assert_eq!(f.need_resched, resched, "{line}");
        let ctx = rec.common.ctx;
        assert_eq!(ctx.irqs_disabled, irqs_off);
        assert_eq!(ctx.bh_disabled, u8::from(bh_off));
        assert_eq!(ctx.softirq, u8::from(softirq));
        assert_eq!(ctx.hardirq, u8::from(hardirq));
        assert_eq!(ctx.preempt, preempt);
        assert_eq!(ctx.is_atomic(), flags != ".....", "{line}");
        assert_eq!(ctx.in_task(), !softirq && !hardirq);
    }
}

/// Without the shared data the tests fail and say why; they never pass silently.
#[test]
#[should_panic(expected = "is missing: these tests read the real Linux traces")]
fn a_missing_trace_fails_loudly() {
    shared_trace("no-such-trace");
}
