//! Malformed lines under both modes: strict returns an error naming the line,
//! the column and what was expected; lenient skips and counts by reason, and
//! the lines after it still parse. Unknown event types are never errors.

mod common;

use common::sample_path;
use kmem_trace::{Error, ErrorKind, EventKind, Line, Mode, Parser, SliceLines, TraceReader};

const HEADER: &str = "# tracer: nop\n#\n";
const GOOD: &str = "      capture.sh-9558    [001] .....   262.911952: kmalloc: call_site=lsm_blob_alloc+0x3b/0x60 ptr=ffff888100873500 bytes_req=11 bytes_alloc=16 gfp_flags=GFP_KERNEL_ACCOUNT|__GFP_ZERO node=-1 accounted=true";

/// `GOOD` with `from` replaced by `to` (which must occur once).
fn corrupt(from: &str, to: &str) -> String {
    assert_eq!(GOOD.matches(from).count(), 1, "{from}");
    GOOD.replacen(from, to, 1)
}

/// A trace: header (lines 1-2), GOOD (3), `bad` (4), GOOD (5).
fn trace_with(bad: &str) -> Vec<u8> {
    format!("{HEADER}{GOOD}\n{bad}\n{GOOD}\n").into_bytes()
}

/// Column (1-based) where `needle` starts in `line`.
fn col(line: &str, needle: &str) -> u32 {
    line.find(needle).unwrap() as u32 + 1
}

struct Case {
    what: &'static str,
    line: String,
    kind: ErrorKind,
    column: u32,
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    let mut add = |what, line: String, kind, column| {
        v.push(Case {
            what,
            line,
            kind,
            column,
        })
    };
    let cut = GOOD.find(" gfp_flags=").unwrap();
    add(
        "truncated before gfp_flags",
        GOOD[..cut].to_string(),
        ErrorKind::Truncated,
        cut as u32 + 1,
    );
    let cut = GOOD.find(": kmalloc").unwrap() + 2;
    add(
        "truncated after the timestamp",
        GOOD[..cut].to_string(),
        ErrorKind::Truncated,
        cut as u32 + 1,
    );
    let cut = GOOD.find(" 262.").unwrap();
    add(
        "truncated in the prefix",
        GOOD[..cut].to_string(),
        ErrorKind::Truncated,
        cut as u32 + 1,
    );
    let l = corrupt("bytes_req=11", "bytes_req=1x1");
    add(
        "bad decimal",
        l.clone(),
        ErrorKind::BadNumber,
        col(&l, "1x1"),
    );
    let l = corrupt("ptr=ffff888100873500", "ptr=ffff88810087350g");
    add(
        "bad hex",
        l.clone(),
        ErrorKind::BadNumber,
        col(&l, "ffff88810087350g"),
    );
    let l = corrupt("ptr=ffff888100873500", "ptr=1ffff888100873500");
    add(
        "hex overflow",
        l.clone(),
        ErrorKind::BadNumber,
        col(&l, "1ffff"),
    );
    let l = corrupt("node=-1", "node=99999999999");
    add(
        "i32 overflow",
        l.clone(),
        ErrorKind::BadNumber,
        col(&l, "99999999999"),
    );
    let l = corrupt("262.911952", "262.9119x2");
    add(
        "bad timestamp",
        l.clone(),
        ErrorKind::BadNumber,
        col(&l, "x2"),
    );
    let l = corrupt("[001] .....", "[001] ..q..");
    add(
        "unknown irq flag",
        l.clone(),
        ErrorKind::BadIrqFlags,
        col(&l, "q"),
    );
    let l = corrupt("[001] .....", "[001] .......");
    add(
        "irq column too wide",
        l.clone(),
        ErrorKind::BadIrqFlags,
        col(&l, ".......") + 5,
    );
    let l = corrupt("|__GFP_ZERO", "|__GFP_BOGUS");
    add(
        "unknown GFP flag",
        l.clone(),
        ErrorKind::BadGfp,
        col(&l, "__GFP_BOGUS"),
    );
    let l = corrupt(" ptr=", " ptx=");
    add(
        "wrong field name",
        l.clone(),
        ErrorKind::UnexpectedText,
        col(&l, "x="),
    );
    let l = format!("{GOOD} extra=1");
    add(
        "trailing field",
        l.clone(),
        ErrorKind::UnexpectedText,
        col(&l, " extra"),
    );
    let l = corrupt("accounted=true", "accounted=yes");
    add(
        "bad boolean",
        l.clone(),
        ErrorKind::UnexpectedText,
        col(&l, "yes"),
    );
    add(
        "no prefix at all",
        "hello world".to_string(),
        ErrorKind::UnexpectedText,
        1,
    );
    v
}

#[test]
fn strict_mode_reports_line_column_and_expectation() {
    for c in cases() {
        let data = trace_with(&c.line);
        let mut r = TraceReader::new(&data[..], Mode::Strict).unwrap();
        let mut events = 0;
        let err = r.for_each_event(|_| events += 1).unwrap_err();
        let Error::Parse(e) = err else {
            panic!("{}: {err}", c.what)
        };
        assert_eq!(e.line(), 4, "{}: {e}", c.what);
        assert_eq!(e.kind(), c.kind, "{}: {e}", c.what);
        assert_eq!(e.column(), c.column, "{}: {e}", c.what);
        assert!(!e.expected().is_empty());
        let msg = e.to_string();
        assert!(msg.starts_with("line 4, column "), "{msg}");
        assert!(msg.contains("expected"), "{msg}");
        assert_eq!(events, 1, "{}: the good line before was delivered", c.what);
        assert_eq!(r.stats().skipped_count(c.kind), 1);
    }
}

#[test]
fn lenient_mode_skips_counts_by_reason_and_carries_on() {
    let all = cases();
    let mut text = String::from(HEADER);
    for c in &all {
        text.push_str(GOOD);
        text.push('\n');
        text.push_str(&c.line);
        text.push('\n');
    }
    let mut r = TraceReader::new(text.as_bytes(), Mode::Lenient).unwrap();
    let mut skipped_lines = Vec::new();
    let mut events = 0;
    while let Some(line) = r.next_line().unwrap() {
        match line {
            Line::Event(_) => events += 1,
            Line::Skipped(e) => skipped_lines.push((e.line(), e.kind())),
            _ => {}
        }
    }
    assert_eq!(events, all.len());
    let want: Vec<(u64, ErrorKind)> = all
        .iter()
        .enumerate()
        .map(|(i, c)| (2 + 2 * i as u64 + 2, c.kind))
        .collect();
    assert_eq!(skipped_lines, want);
    let s = r.stats();
    for kind in ErrorKind::ALL {
        let n = all.iter().filter(|c| c.kind == kind).count() as u64;
        assert_eq!(s.skipped_count(kind), n, "{kind}");
    }
    assert_eq!(s.lines, s.accounted());
    assert_eq!(s.event_count(EventKind::Kmalloc), all.len() as u64);
    // The first error of each kind is kept, with its line.
    assert_eq!(s.first_errors[0].line(), 4);
    let kinds: std::collections::HashSet<_> = s.first_errors.iter().map(|e| e.kind()).collect();
    assert_eq!(kinds.len(), s.first_errors.len());
}

#[test]
fn unknown_events_are_counted_by_name_not_errors() {
    let text = format!(
        "{HEADER}{GOOD}\n          <idle>-0       [000] d.h1.   1.000000: sched_waking: comm=rcu_sched pid=16 prio=120 target_cpu=000\n          <idle>-0       [000] d.h1.   1.000001: sched_waking: comm=x\n       kworker-9       [001] .....   1.000002: rss_stat: mm_id=1\nCPU:1 [LOST 17 EVENTS]\n{GOOD}\n"
    );
    let mut r = TraceReader::new(text.as_bytes(), Mode::Strict).unwrap();
    let mut n = 0;
    r.for_each_event(|_| n += 1).unwrap();
    let s = r.stats();
    assert_eq!(n, 2);
    assert_eq!(s.unknown_lines, 3);
    assert_eq!(s.unknown_count("sched_waking"), 2);
    assert_eq!(s.unknown_count("rss_stat"), 1);
    assert_eq!((s.lost_lines, s.lost_events), (1, 17));
    assert_eq!(s.skipped_total(), 0);
    assert_eq!(s.lines, s.accounted());
}

#[test]
fn bad_utf8_in_a_call_site() {
    let mut line = GOOD.as_bytes().to_vec();
    let at = GOOD.find("lsm_blob").unwrap();
    line[at] = 0xff;
    let mut p = Parser::new(Mode::Strict);
    let e = p.parse_line(&line).unwrap_err();
    assert_eq!((e.kind(), e.column()), (ErrorKind::BadUtf8, at as u32 + 1));
    // A non-UTF-8 task name is fine: tasks are bytes.
    let mut line = GOOD.as_bytes().to_vec();
    line[GOOD.find("capture").unwrap()] = 0xff;
    let Ok(Line::Event(r)) = p.parse_line(&line) else {
        panic!()
    };
    assert_eq!(r.common.task_lossy(), "\u{fffd}apture.sh");
}

/// Cutting any real line at a field boundary gives `Truncated` at that column;
/// cutting anywhere, or replacing any byte, never panics and every line stays
/// accounted for.
#[test]
fn every_cut_of_every_sample_line() {
    let data = std::fs::read(sample_path()).unwrap();
    let text = std::str::from_utf8(&data).unwrap();
    let mut p = Parser::new(Mode::Lenient);
    let mut checked = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let fields_at = line.find(": ").unwrap() + 2;
        let fields_at = fields_at + line[fields_at..].find(": ").unwrap() + 2;
        for cut in 0..line.len() {
            let r = p.parse_line(&line.as_bytes()[..cut]);
            let boundary = cut >= fields_at && line.as_bytes()[cut] == b' ';
            if boundary {
                let Ok(Line::Skipped(e)) = r else {
                    panic!("cut at {cut} parsed: {line}")
                };
                assert_eq!(e.kind(), ErrorKind::Truncated, "{e}: {line}");
                assert_eq!(e.column() as usize, cut + 1, "{e}: {line}");
                checked += 1;
            }
        }
        // Replace each byte with a few others.
        for i in 0..line.len() {
            for b in [b'#', b' ', b'x', b'9', 0xc3, b'\t'] {
                let mut l = line.as_bytes().to_vec();
                l[i] = b;
                let _ = p.parse_line(&l);
            }
        }
    }
    assert!(checked > 1000, "{checked}");
    let s = p.stats();
    assert_eq!(s.lines, s.accounted());
}

#[test]
fn lenient_slices_count_the_same_as_readers() {
    let bad: Vec<String> = cases().into_iter().map(|c| c.line).collect();
    let text = format!("{HEADER}{}\n", bad.join("\n"));
    let s1 = SliceLines::new(text.as_bytes(), Mode::Lenient)
        .for_each_event(|_| {})
        .unwrap();
    let mut r = TraceReader::new(text.as_bytes(), Mode::Lenient).unwrap();
    r.for_each_event(|_| {}).unwrap();
    let s2 = r.into_stats();
    assert_eq!(s1.skipped, s2.skipped);
    assert_eq!(s1.first_errors, s2.first_errors);
    assert_eq!(s1.lines, bad.len() as u64 + 2);
}

/// Pseudo-random garbage built from trace-like pieces: never a panic, every
/// line accounted for, strict and lenient agreeing on what is malformed.
#[test]
fn garbage_never_panics() {
    let pieces: [&[u8]; 16] = [
        b" ", b"-", b"[", b"]", b"(", b")", b"123", b":", b".", b"kmalloc", b": ", b"ptr=", b"0x",
        b"ffff", b"d.s1.", b"\xff",
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut lenient = Parser::new(Mode::Lenient);
    let mut strict = Parser::new(Mode::Strict);
    for _ in 0..20_000 {
        let mut line = GOOD.as_bytes()[..(next() % 60) as usize].to_vec();
        for _ in 0..next() % 12 {
            line.extend_from_slice(pieces[(next() % 16) as usize]);
        }
        let a = lenient.parse_line(&line).unwrap();
        let b = strict.parse_line(&line);
        match (a, b) {
            (Line::Skipped(e), Err(f)) => assert_eq!(e, f),
            (a, Ok(b)) => assert_eq!(a, b),
            (a, b) => panic!("{a:?} vs {b:?}"),
        }
    }
    let s = lenient.stats();
    assert_eq!(s.lines, s.accounted());
    assert_eq!(s.skipped, strict.stats().skipped);
}
