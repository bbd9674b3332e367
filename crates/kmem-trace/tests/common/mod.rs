//! Test helpers: an independent, naive reading of a trace to check the parser against.
//!
//! The naive scan splits lines with `str::split('\n')` and fields with
//! `split_whitespace` / `split_once('=')` and parses with `str::parse`: slow and
//! simple, sharing no code with the crate, so agreement means something.

#![allow(dead_code)]

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::Hash;
use std::path::PathBuf;

use kmem::Gfp;
use kmem_trace::{Event, EventKind, Line, Record, Stats};

/// The events the shared traces hold (DESIGN.md, "Real data").
pub const TRACE_EVENTS: [&str; 10] = [
    "kmalloc",
    "kfree",
    "kmem_cache_alloc",
    "kmem_cache_free",
    "mm_page_alloc",
    "mm_page_free",
    "mm_page_free_batched",
    "alloc_vmap_area",
    "free_vmap_area_noflush",
    "purge_vmap_area_lazy",
];

/// `../shared/traces/NAME/trace.zst`, failing loudly if it is not there.
pub fn shared_trace(name: &str) -> PathBuf {
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared");
    let path = shared.join("traces").join(name).join("trace.zst");
    assert!(
        path.is_file(),
        "shared trace {} is missing: these tests read the real Linux traces from \
         ../shared/traces (next to the repository, see DESIGN.md \"Real data\"); \
         without them nothing is tested",
        path.display()
    );
    path
}

/// The sample trace copied into the repository.
pub fn sample_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/sample.trace")
}

/// What the naive scan finds.
#[derive(Debug, Default)]
pub struct Naive {
    pub lines: u64,
    pub comment_lines: u64,
    pub blank_lines: u64,
    pub events: HashMap<String, u64>,
}

/// The naive scan of `text`.
pub fn naive_scan(text: &str) -> Naive {
    let mut n = Naive::default();
    let body = text.strip_suffix('\n').unwrap_or(text);
    if text.is_empty() {
        return n;
    }
    for line in body.split('\n') {
        n.lines += 1;
        if line.trim_start().starts_with('#') {
            n.comment_lines += 1;
        } else if line.trim().is_empty() {
            n.blank_lines += 1;
        } else {
            let f = naive_fields(line);
            *n.events.entry(f.event.to_string()).or_default() += 1;
        }
    }
    n
}

/// `grep -c ' NAME: '`, counted with `str::matches`.
pub fn grep_count(text: &str, name: &str) -> u64 {
    let pat = format!(" {name}: ");
    text.split('\n').filter(|l| l.contains(&pat)).count() as u64
}

/// A line taken apart at ` [` and by whitespace.
#[derive(Debug)]
pub struct NaiveLine<'a> {
    pub task: &'a str,
    pub pid: u32,
    pub cpu: u32,
    pub flags: &'a str,
    pub ts_ns: u64,
    pub event: &'a str,
    /// `key=value` (and `va_start: value`) pairs.
    pub fields: HashMap<&'a str, &'a str>,
}

pub fn naive_fields(line: &str) -> NaiveLine<'_> {
    // Task names may hold spaces (rustc's `opt 921jj3k0job` threads), never ` [`.
    let (left, right) = line.split_once(" [").expect("TASK-PID [CPU]");
    let (task, pid) = left.trim().rsplit_once('-').expect("TASK-PID");
    let toks: Vec<&str> = right.split_whitespace().collect();
    let cpu = toks[0].trim_end_matches(']').parse().unwrap();
    let ts = toks[2].trim_end_matches(':');
    let (s, us) = ts.split_once('.').unwrap();
    let ts_ns = s.parse::<u64>().unwrap() * 1_000_000_000 + us.parse::<u64>().unwrap() * 1000;
    let event = toks[3].trim_end_matches(':');
    let mut fields = HashMap::new();
    let mut i = 4;
    while i < toks.len() {
        if let Some((k, v)) = toks[i].split_once('=') {
            fields.insert(k, v);
        } else if toks[i].ends_with(':') && i + 1 < toks.len() {
            fields.insert(toks[i].trim_end_matches(':'), toks[i + 1]);
            i += 1;
        }
        i += 1;
    }
    NaiveLine {
        task,
        pid: pid.parse().unwrap(),
        cpu,
        flags: toks[1],
        ts_ns,
        event,
        fields,
    }
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap()
}

/// Checks every field of `rec` against the naive reading of its `line`;
/// `gfp_memo` caches `str::parse::<Gfp>` per spelling.
pub fn cross_check(rec: &Record<'_>, line: &str, gfp_memo: &mut HashMap<String, Gfp>) {
    let n = naive_fields(line);
    let c = &rec.common;
    assert_eq!(c.task, n.task.as_bytes(), "{line}");
    assert_eq!((c.pid, c.cpu, c.ts_ns), (n.pid, n.cpu, n.ts_ns), "{line}");
    assert_eq!(c.flags.raw(), n.flags, "{line}");
    assert_eq!(rec.event.kind().name(), n.event, "{line}");
    let f = &n.fields;
    let num = |k: &str| f[k].parse::<u64>().unwrap();
    let int = |k: &str| f[k].parse::<i32>().unwrap();
    let mut gfp = |k: &str| -> Gfp {
        *gfp_memo
            .entry(f[k].to_string())
            .or_insert_with(|| f[k].parse().unwrap_or_else(|e| panic!("{e}: {line}")))
    };
    let want_fields = match rec.event {
        Event::Kmalloc(e) => {
            assert_eq!(e.call_site.as_str(), f["call_site"], "{line}");
            assert_eq!(e.ptr, hex(f["ptr"]));
            assert_eq!(
                (e.bytes_req, e.bytes_alloc),
                (num("bytes_req"), num("bytes_alloc"))
            );
            assert_eq!(e.gfp, gfp("gfp_flags"), "{line}");
            assert_eq!(e.node, int("node"));
            assert_eq!(e.accounted, f["accounted"] == "true");
            7
        }
        Event::KmemCacheAlloc(e) => {
            assert_eq!(e.call_site.as_str(), f["call_site"], "{line}");
            assert_eq!(e.ptr, hex(f["ptr"]));
            assert_eq!(e.name, f["name"]);
            assert_eq!(
                (e.bytes_req, e.bytes_alloc),
                (num("bytes_req"), num("bytes_alloc"))
            );
            assert_eq!(e.gfp, gfp("gfp_flags"), "{line}");
            assert_eq!(e.node, int("node"));
            assert_eq!(e.accounted, f["accounted"] == "true");
            8
        }
        Event::Kfree(e) => {
            assert_eq!(e.call_site.as_str(), f["call_site"], "{line}");
            assert_eq!(e.ptr, hex(f["ptr"]));
            2
        }
        Event::KmemCacheFree(e) => {
            assert_eq!(e.call_site.as_str(), f["call_site"], "{line}");
            assert_eq!(e.ptr, hex(f["ptr"]));
            assert_eq!(e.name, f["name"]);
            3
        }
        Event::MmPageAlloc(e) => {
            assert_eq!((e.page, e.pfn), (hex(f["page"]), hex(f["pfn"])));
            assert_eq!(e.order, num("order") as u32);
            assert_eq!(e.migratetype, int("migratetype"));
            assert_eq!(e.gfp, gfp("gfp_flags"), "{line}");
            5
        }
        Event::MmPageFree(e) | Event::MmPageFreeBatched(e) => {
            assert_eq!((e.page, e.pfn), (hex(f["page"]), hex(f["pfn"])));
            assert_eq!(e.order, num("order") as u32);
            3
        }
        Event::AllocVmapArea(e) => {
            assert_eq!(e.va_start, num("va_start"));
            assert_eq!((e.size, e.align), (num("size"), num("align")));
            assert_eq!((e.vstart, e.vend), (hex(f["vstart"]), hex(f["vend"])));
            assert_eq!(e.failed, int("failed") != 0);
            6
        }
        Event::FreeVmapAreaNoflush(e) => {
            assert_eq!(e.va_start, hex(f["va_start"]));
            assert_eq!(
                (e.nr_lazy, e.nr_lazy_max),
                (num("nr_lazy"), num("nr_lazy_max"))
            );
            3
        }
        Event::PurgeVmapAreaLazy(e) => {
            assert_eq!((e.start, e.end), (hex(f["start"]), hex(f["end"])));
            assert_eq!(e.npurged, num("num_purged") as u32);
            3
        }
        Event::MmPageAllocZoneLocked(_) | Event::MmPagePcpuDrain(_) => {
            panic!("not in the shared traces: {line}")
        }
    };
    assert_eq!(f.len(), want_fields, "every field checked: {line}");
}

/// A digest of everything the parser produced for one trace: every record and
/// the counters.
pub fn digest_records<'a>(h: &mut DefaultHasher, rec: &Record<'a>) {
    rec.hash(h);
}

/// Hashes the counters.
pub fn digest_stats(h: &mut DefaultHasher, s: &Stats) {
    s.lines.hash(h);
    s.bytes.hash(h);
    s.events.hash(h);
    s.comment_lines.hash(h);
    s.blank_lines.hash(h);
    s.lost_lines.hash(h);
    s.unknown.hash(h);
    s.skipped.hash(h);
    s.first_errors.hash(h);
    s.header.hash(h);
}

/// Per-kind counts as the naive scan names them.
pub fn kind_counts(s: &Stats) -> HashMap<String, u64> {
    EventKind::ALL
        .iter()
        .filter(|k| s.event_count(**k) > 0)
        .map(|k| (k.name().to_string(), s.event_count(*k)))
        .collect()
}

/// Runs `lines` through a fresh parser, line by line as the naive scan splits
/// them, cross-checking every event.
pub fn parse_and_cross_check(text: &str, mode: kmem_trace::Mode) -> Stats {
    let mut p = kmem_trace::Parser::new(mode);
    let mut memo = HashMap::new();
    let body = text.strip_suffix('\n').unwrap_or(text);
    for line in body.split('\n') {
        match p.parse_line(line.as_bytes()).expect("well-formed line") {
            Line::Event(rec) => cross_check(&rec, line, &mut memo),
            Line::Skipped(e) => panic!("skipped: {e}"),
            _ => {}
        }
    }
    p.into_stats()
}
