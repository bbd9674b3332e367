//! The `parse` suite: how fast kmem-trace reads the real Linux traces.
//!
//! Workloads are the shared traces (`build`, `fs`, `net` under
//! `../shared/traces`, or `--traces DIR`); one op is one full pass over a trace.
//! Contenders:
//!
//! - `kmem-trace`: parse only. The trace is decompressed into memory once,
//!   before timing, and [`SliceLines`] parses it in place (every event fully
//!   typed, GFP masks and contexts included, every line accounted for).
//! - `kmem-trace-zst`: end to end, as `kmem replay` will read: [`TraceReader`]
//!   opens the `.zst` file, decompresses in a stream and parses.
//! - `kmem-trace-zst-bg`: the same with reading and decompression on a second
//!   thread ([`TraceReader::open_background`]), chunks handed over as they fill.
//! - `zstd-only`: decompression alone through the same reader stack, the text
//!   discarded: the floor under `kmem-trace-zst`.
//!
//! Throughput is reported in MB/s of decompressed text (10^6 bytes) and in
//! events per second, from the median time of `--runs` passes. One trace is in
//! memory at a time (net is 459 MB of text). Before timing, each trace is
//! checked: every line accounted for, no malformed line, and all contenders see
//! the same number of events.
//!
//! The `replay` suite ([`run_replay`]) measures `kmem replay` itself: each
//! trace replayed end to end through kmem (open the `.zst`, decompress,
//! parse, build the machine, drive every event through the page allocator,
//! slab and vmalloc, build the report), beside the parse-only rate of the same
//! text from memory.

use std::cell::Cell;
use std::hint::black_box;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use kmem_trace::replay::{replay_file, ReplayConfig};
use kmem_trace::{Mode, SliceLines, TextReader, TraceReader};
use serde::Serialize;

use crate::harness::{self, Contender, RunOpts, Workload};

/// Help text for `kmem-bench parse --help`.
pub const PARSE_ABOUT: &str = "\
How fast kmem-trace reads the shared Linux 6.18 allocation traces.

Workloads: the traces build, fs and net (../shared/traces/NAME/trace.zst, or
--traces DIR); one op is one full pass over a trace.

Contenders:
  kmem-trace      parse only: the trace is decompressed into memory first, then
                  parsed in place (every event typed: call site, pointers, sizes,
                  GFP mask, context from the irq-info column; every line counted).
  kmem-trace-zst  end to end: open the .zst file, decompress in a stream, parse.
  kmem-trace-zst-bg  the same, decompressing on a second thread (1 MiB chunks
                  handed over through bounded channels) while this one parses.
  zstd-only       decompress only, through the same reader, text discarded.

Reading the numbers: MB/s is decompressed text (10^6 bytes) per second, events/s
trace events per second, both from the median pass time over --runs. spread is
(slowest - fastest run) / median. --json prints one object per line:
{\"suite\":\"parse\",\"workload\":\"net\",\"allocator\":\"kmem-trace\",\"mb_per_s\":...,\"events_per_s\":...}";

/// Options of `kmem-bench parse`.
#[derive(Debug, clap::Args)]
pub struct ParseArgs {
    #[command(flatten)]
    pub run: RunOpts,

    #[command(flatten)]
    pub source: TraceArgs,
}

/// Which traces to measure: the options `parse` and `replay` share.
#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    /// Directory holding NAME/trace.zst for each trace [default: ../shared/traces
    /// next to the repository]
    #[arg(long, value_name = "DIR")]
    pub traces: Option<PathBuf>,

    /// Measure only this trace (repeatable): build, fs or net.
    #[arg(long = "trace", value_name = "NAME")]
    pub trace: Vec<String>,
}

/// The traces, in report order.
const TRACES: [&str; 3] = ["build", "fs", "net"];

fn default_traces_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/traces")
}

impl TraceArgs {
    /// The selected traces in report order, each with the path of its
    /// `trace.zst`. An unknown name is refused here; a missing file when the
    /// iteration comes to it.
    fn selected(
        &self,
    ) -> Result<impl Iterator<Item = Result<(&'static str, PathBuf), String>> + '_, String> {
        let dir = self.traces.clone().unwrap_or_else(default_traces_dir);
        for t in &self.trace {
            if !TRACES.contains(&t.as_str()) {
                return Err(format!(
                    "no trace named {t:?}; there are: {}",
                    TRACES.join(", ")
                ));
            }
        }
        Ok(TRACES
            .into_iter()
            .filter(|name| self.trace.is_empty() || self.trace.iter().any(|t| t == name))
            .map(move |name| {
                let path = dir.join(name).join("trace.zst");
                if !path.is_file() {
                    return Err(format!(
                        "trace {} not found (the shared traces sit in ../shared/traces; or pass --traces DIR)",
                        path.display()
                    ));
                }
                Ok((name, path))
            }))
    }
}

/// The decompressed text of the trace at `path`.
fn read_trace(path: &Path) -> Result<Vec<u8>, String> {
    kmem_trace::read_text(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parse only, from memory.
struct SliceParse {
    text: Rc<[u8]>,
    events: Rc<Cell<u64>>,
}

impl Contender for SliceParse {
    fn name(&self) -> &'static str {
        "kmem-trace"
    }
    fn run(&mut self, _workload: usize, n: u64) {
        for _ in 0..n {
            let stats = SliceLines::new(black_box(&self.text), Mode::Lenient)
                .for_each_event(|r| {
                    black_box(r);
                })
                .expect("lenient parsing does not fail");
            self.events.set(stats.event_total());
        }
    }
}

/// Decompress and parse, from the file; decompression on its own thread if `background`.
struct ZstParse {
    path: PathBuf,
    background: bool,
    events: Rc<Cell<u64>>,
}

impl Contender for ZstParse {
    fn name(&self) -> &'static str {
        if self.background {
            "kmem-trace-zst-bg"
        } else {
            "kmem-trace-zst"
        }
    }
    fn run(&mut self, _workload: usize, n: u64) {
        for _ in 0..n {
            let mut r = if self.background {
                // The harness pins this thread to one CPU and a new thread
                // inherits that: let the reader thread run on any CPU.
                with_all_cpus(|| TraceReader::open_background(&self.path, Mode::Lenient))
            } else {
                TraceReader::open(&self.path, Mode::Lenient)
            }
            .expect("open trace");
            r.for_each_event(|rec| {
                black_box(rec);
            })
            .expect("read trace");
            self.events.set(r.stats().event_total());
        }
    }
}

/// Runs `f` with this thread's CPU affinity widened to every CPU (so that
/// threads `f` spawns are not pinned), then restores it.
fn with_all_cpus<T>(f: impl FnOnce() -> T) -> T {
    use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};
    let saved = sched_getaffinity(None).ok();
    let mut all = CpuSet::new();
    for cpu in 0..CpuSet::MAX_CPU.min(1024) {
        all.set(cpu);
    }
    let _ = sched_setaffinity(None, &all);
    let out = f();
    if let Some(saved) = saved {
        let _ = sched_setaffinity(None, &saved);
    }
    out
}

/// Decompress only.
struct ZstdOnly {
    path: PathBuf,
    bytes: Rc<Cell<u64>>,
    buf: Vec<u8>,
}

impl Contender for ZstdOnly {
    fn name(&self) -> &'static str {
        "zstd-only"
    }
    fn run(&mut self, _workload: usize, n: u64) {
        for _ in 0..n {
            let mut r = TextReader::open(&self.path).expect("open trace");
            let mut total = 0u64;
            loop {
                let got = r.read(&mut self.buf).expect("read trace");
                if got == 0 {
                    break;
                }
                total += got as u64;
                black_box(&self.buf[..got]);
            }
            self.bytes.set(total);
        }
    }
}

/// One measured (trace, contender) pair, of either suite.
struct Row {
    trace: &'static str,
    contender: &'static str,
    /// Seconds per pass, one per run.
    secs: Vec<f64>,
    /// Seconds until the machine was ready, one per run of a replay contender
    /// that builds one; empty otherwise.
    setup: Vec<f64>,
    text_bytes: u64,
    events: u64,
}

impl Row {
    fn median(&self) -> f64 {
        harness::median(&self.secs)
    }
    fn spread(&self) -> f64 {
        let lo = self.secs.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = self.secs.iter().copied().fold(0.0, f64::max);
        (hi - lo) / self.median()
    }
    fn mb_per_s(&self) -> f64 {
        self.text_bytes as f64 / self.median() / 1e6
    }
    fn events_per_s(&self) -> f64 {
        self.events as f64 / self.median()
    }
}

/// JSON line of one row; field order is the output order.
#[derive(Serialize)]
struct JsonRow<'a> {
    suite: &'a str,
    workload: &'a str,
    allocator: &'a str,
    mb_per_s: f64,
    events_per_s: f64,
}

/// Prints one JSON line per row, the object `json` makes of it.
fn print_json<J: Serialize>(rows: &[Row], json: impl Fn(&Row) -> J) {
    for r in rows {
        println!(
            "{}",
            serde_json::to_string(&json(r)).expect("a flat struct serialises")
        );
    }
}

/// Measures one trace with every selected contender.
fn measure_trace(
    name: &'static str,
    path: &Path,
    opts: &RunOpts,
) -> Result<(Vec<Row>, u64, u64), String> {
    let text: Rc<[u8]> = read_trace(path)?.into();
    // Check the trace before timing anything.
    let stats = SliceLines::new(&text, Mode::Strict)
        .for_each_event(|_| {})
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if stats.accounted() != stats.lines {
        return Err(format!("{name}: lines not accounted for"));
    }
    let (events, lines) = (stats.event_total(), stats.lines);
    let slice_events = Rc::new(Cell::new(events));
    let zst_events = Rc::new(Cell::new(events));
    let bg_events = Rc::new(Cell::new(events));
    let zstd_bytes = Rc::new(Cell::new(text.len() as u64));
    let all: Vec<Box<dyn Contender>> = vec![
        Box::new(SliceParse {
            text: Rc::clone(&text),
            events: Rc::clone(&slice_events),
        }),
        Box::new(ZstParse {
            path: path.to_path_buf(),
            background: false,
            events: Rc::clone(&zst_events),
        }),
        Box::new(ZstParse {
            path: path.to_path_buf(),
            background: true,
            events: Rc::clone(&bg_events),
        }),
        Box::new(ZstdOnly {
            path: path.to_path_buf(),
            bytes: Rc::clone(&zstd_bytes),
            buf: vec![0; 1 << 20],
        }),
    ];
    let mut contenders = harness::select(all, &opts.only)?;
    let workload = [Workload {
        name,
        what: "one full pass over the trace",
        quantum: 1,
    }];
    let cells = harness::measure(&workload, &mut contenders, opts);
    drop(contenders);
    for (c, got) in [
        ("kmem-trace", slice_events.get()),
        ("kmem-trace-zst", zst_events.get()),
        ("kmem-trace-zst-bg", bg_events.get()),
    ] {
        if got != events {
            return Err(format!("{name}: {c} saw {got} events, expected {events}"));
        }
    }
    if zstd_bytes.get() != text.len() as u64 {
        return Err(format!("{name}: zstd-only read {} bytes", zstd_bytes.get()));
    }
    let rows = cells
        .into_iter()
        .map(|cell| Row {
            trace: name,
            contender: cell.allocator,
            // The harness records ns per op; an op is one pass.
            secs: cell.samples.iter().map(|ns| ns / 1e9).collect(),
            setup: Vec::new(),
            text_bytes: text.len() as u64,
            events,
        })
        .collect();
    Ok((rows, events, lines))
}

/// Runs the suite.
pub fn run_parse(args: &ParseArgs) -> Result<(), String> {
    let pinned = harness::pin_thread();
    let traces = args.source.selected()?;
    let mut rows = Vec::new();
    let mut sizes = Vec::new();
    for trace in traces {
        let (name, path) = trace?;
        let (r, events, lines) = measure_trace(name, &path, &args.run)?;
        let zst_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        sizes.push((
            name,
            r.first().map_or(0, |r| r.text_bytes),
            zst_bytes,
            lines,
            events,
        ));
        rows.extend(r);
    }
    if args.run.json {
        print_json(&rows, |r| JsonRow {
            suite: "parse",
            workload: r.trace,
            allocator: r.contender,
            mb_per_s: (r.mb_per_s() * 10.0).round() / 10.0,
            events_per_s: r.events_per_s().round(),
        });
        return Ok(());
    }
    print_text(&rows, &sizes, pinned, &args.run);
    Ok(())
}

fn print_text(
    rows: &[Row],
    sizes: &[(&str, u64, u64, u64, u64)],
    pinned: Option<usize>,
    opts: &RunOpts,
) {
    println!(
        "kmem-bench parse: trace reading throughput, median of {} run{}",
        opts.runs,
        if opts.runs == 1 { "" } else { "s" }
    );
    let pinned = match pinned {
        Some(cpu) => format!("benchmark thread pinned to cpu {cpu}"),
        None => "benchmark thread not pinned".to_string(),
    };
    println!("machine: {}, {pinned}", machine());
    if cfg!(debug_assertions) {
        println!("WARNING: debug build; these numbers mean nothing, use --release");
    }
    for &(name, text, zst, lines, events) in sizes {
        println!();
        println!(
            "{name}: {:.1} MB of text ({:.1} MB .zst), {lines} lines, {events} events",
            text as f64 / 1e6,
            zst as f64 / 1e6
        );
        println!(
            "  {:<17}  {:>9}  {:>12}  {:>9}  {:>7}",
            "contender", "MB/s", "Mevents/s", "ms/pass", "spread"
        );
        for r in rows.iter().filter(|r| r.trace == name) {
            println!(
                "  {:<17}  {:>9.0}  {:>12.2}  {:>9.1}  {:>6.1}%",
                r.contender,
                r.mb_per_s(),
                r.events_per_s() / 1e6,
                r.median() * 1e3,
                r.spread() * 100.0
            );
        }
    }
    println!();
    println!(
        "MB/s: decompressed text (10^6 bytes) per second; Mevents/s: events per second / 10^6;"
    );
    println!("both from the median pass. spread: (slowest - fastest run) / median.");
    println!(
        "kmem-trace parses from memory (decompressed before timing); kmem-trace-zst reads the"
    );
    println!(".zst file end to end (-bg: decompressing on a second, unpinned thread); zstd-only");
    println!("decompresses without parsing.");
    println!();
    println!("command: {}", harness::reproducing_command());
}

/// CPU model and count, as the other suites print them.
fn machine() -> String {
    let (model, cpus) = crate::harness::cpu_info();
    format!("{model}, {cpus} cpus")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[test]
    fn parse_options() {
        let cli = crate::Cli::try_parse_from([
            "kmem-bench",
            "parse",
            "--json",
            "--trace",
            "net",
            "--only",
            "kmem-trace",
            "--runs",
            "1",
        ])
        .unwrap();
        let crate::Suite::Parse(args) = cli.suite else {
            panic!("parsed as another suite")
        };
        assert!(args.run.json);
        assert_eq!(args.source.trace, ["net"]);
        assert_eq!(args.run.only, ["kmem-trace"]);
        assert_eq!(args.source.traces, None);
    }

    /// The suite end to end on a tiny trace directory.
    #[test]
    fn measures_a_small_trace() {
        let dir = std::env::temp_dir().join(format!("kmem-bench-parse-{}", std::process::id()));
        let sample = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../crates/kmem-trace/tests/data/sample.trace");
        let text = std::fs::read(sample).unwrap();
        std::fs::create_dir_all(dir.join("fs")).unwrap();
        // A plain-text "trace.zst" is fine: the reader detects the format.
        std::fs::write(dir.join("fs/trace.zst"), &text).unwrap();
        let opts = crate::harness::RunOpts {
            json: true,
            iters: Some(2),
            runs: 2,
            only: vec![],
        };
        let (rows, events, lines) =
            super::measure_trace("fs", &dir.join("fs/trace.zst"), &opts).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!(lines, 319);
        assert_eq!(events, 306);
        assert!(rows.iter().all(|r| r.mb_per_s() > 0.0 && r.secs.len() == 2));
    }
}

/// Help text for `kmem-bench replay --help`.
pub const REPLAY_ABOUT: &str = "\
How fast `kmem replay` runs the shared Linux 6.18 traces through kmem.

Workloads: the traces build, fs and net (../shared/traces/NAME/trace.zst, or
--traces DIR); one op is one full replay.

Contenders:
  kmem-replay     end to end, as `kmem replay TRACE` runs it: open the .zst,
                  decompress (one thread), parse (a second thread), build the
                  machine sized from before.meminfo (while parsing), replay
                  every event through kmem's page allocator, slab and vmalloc
                  on the calling thread, build the report, tear down.
  kmem-replay-1t  the same on one thread (no pipeline).
  parse-only      the text decompressed into memory first, then only parsed
                  (every event typed, every line counted): the parser's rate.

Reading the numbers: Mevents/s is trace events per second, MB/s decompressed
text (10^6 bytes) per second, both from the median of --runs passes; setup is
the median time until the machine was ready (events are parsed meanwhile).
--json prints one object per line:
{\"suite\":\"replay\",\"workload\":\"net\",\"allocator\":\"kmem-replay\",\"seconds\":...,\"events_per_s\":...,\"mb_per_s\":...}";

/// Options of `kmem-bench replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Print one JSON object per line instead of tables.
    #[arg(long)]
    pub json: bool,

    /// Passes per trace and contender; the median is reported.
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,

    /// Measure only this contender (repeatable).
    #[arg(long, value_name = "CONTENDER")]
    pub only: Vec<String>,

    #[command(flatten)]
    pub source: TraceArgs,
}

/// The replay contenders, in report order.
const REPLAY_CONTENDERS: [&str; 3] = ["kmem-replay", "kmem-replay-1t", "parse-only"];

/// JSON line of one replay row; field order is the output order.
#[derive(Serialize)]
struct ReplayJson<'a> {
    suite: &'a str,
    workload: &'a str,
    allocator: &'a str,
    seconds: f64,
    events_per_s: f64,
    mb_per_s: f64,
    setup_seconds: Option<f64>,
    events: u64,
}

/// One pass of `contender` over the trace at `path`: (seconds, setup seconds, events).
fn replay_pass(
    contender: &str,
    path: &Path,
    text: &[u8],
) -> Result<(f64, Option<f64>, u64), String> {
    let t = std::time::Instant::now();
    match contender {
        "parse-only" => {
            let stats = SliceLines::new(black_box(text), Mode::Lenient)
                .for_each_event(|r| {
                    black_box(r);
                })
                .map_err(|e| e.to_string())?;
            Ok((t.elapsed().as_secs_f64(), None, stats.event_total()))
        }
        c => {
            let cfg = ReplayConfig {
                background: c == "kmem-replay",
                ..ReplayConfig::default()
            };
            let r = replay_file(path, &cfg, None).map_err(|e| e.to_string())?;
            let secs = t.elapsed().as_secs_f64();
            if r.accounting.accounted() != r.events || r.kmalloc_class_mismatches != 0 {
                return Err(format!("{}: replay check failed", path.display()));
            }
            black_box(&r);
            Ok((secs, Some(r.setup_seconds), r.events))
        }
    }
}

/// Runs the replay suite.
pub fn run_replay(args: &ReplayArgs) -> Result<(), String> {
    let traces = args.source.selected()?;
    for c in &args.only {
        if !REPLAY_CONTENDERS.contains(&c.as_str()) {
            return Err(format!(
                "no contender named {c:?}; there are: {}",
                REPLAY_CONTENDERS.join(", ")
            ));
        }
    }
    let contenders: Vec<&'static str> = REPLAY_CONTENDERS
        .iter()
        .copied()
        .filter(|c| args.only.is_empty() || args.only.iter().any(|o| o == c))
        .collect();
    let mut rows = Vec::new();
    for trace in traces {
        let (name, path) = trace?;
        let text = read_trace(&path)?;
        let mut cells: Vec<Row> = contenders
            .iter()
            .map(|c| Row {
                trace: name,
                contender: c,
                secs: Vec::new(),
                setup: Vec::new(),
                text_bytes: text.len() as u64,
                events: 0,
            })
            .collect();
        // Interleaved: run r of every contender, then run r + 1.
        for _ in 0..args.runs {
            for cell in &mut cells {
                let (secs, setup, events) = replay_pass(cell.contender, &path, &text)?;
                if cell.events != 0 && cell.events != events {
                    return Err(format!(
                        "{name}: {} saw {events} events, then {}",
                        cell.contender, cell.events
                    ));
                }
                cell.events = events;
                cell.secs.push(secs);
                if let Some(s) = setup {
                    cell.setup.push(s);
                }
            }
        }
        rows.extend(cells);
    }
    if args.json {
        print_json(&rows, |r| ReplayJson {
            suite: "replay",
            workload: r.trace,
            allocator: r.contender,
            seconds: (r.median() * 1e4).round() / 1e4,
            events_per_s: (r.events as f64 / r.median()).round(),
            mb_per_s: (r.text_bytes as f64 / r.median() / 1e5).round() / 10.0,
            setup_seconds: (!r.setup.is_empty())
                .then(|| (harness::median(&r.setup) * 1e4).round() / 1e4),
            events: r.events,
        });
        return Ok(());
    }
    println!(
        "kmem-bench replay: kmem replay end to end, median of {} run{}",
        args.runs,
        if args.runs == 1 { "" } else { "s" }
    );
    println!("machine: {}, threads not pinned", machine());
    if cfg!(debug_assertions) {
        println!("WARNING: debug build; these numbers mean nothing, use --release");
    }
    let mut last = "";
    for r in &rows {
        if r.trace != last {
            last = r.trace;
            println!();
            println!(
                "{}: {:.1} MB of text, {} events",
                r.trace,
                r.text_bytes as f64 / 1e6,
                r.events
            );
            println!(
                "  {:<15}  {:>10}  {:>8}  {:>9}  {:>9}  {:>7}",
                "contender", "Mevents/s", "MB/s", "s/pass", "setup s", "spread"
            );
        }
        let setup = if r.setup.is_empty() {
            "-".to_string()
        } else {
            format!("{:.3}", harness::median(&r.setup))
        };
        println!(
            "  {:<15}  {:>10.2}  {:>8.0}  {:>9.3}  {:>9}  {:>6.1}%",
            r.contender,
            r.events as f64 / r.median() / 1e6,
            r.text_bytes as f64 / r.median() / 1e6,
            r.median(),
            setup,
            r.spread() * 100.0
        );
    }
    println!();
    println!("Mevents/s and MB/s from the median pass; spread: (slowest - fastest) / median.");
    println!(
        "kmem-replay and kmem-replay-1t include everything `kmem replay` does (the machine is"
    );
    println!("sized from before.meminfo: 23.5 GiB for these traces); setup is the time until the");
    println!("machine was ready. parse-only parses the text already in memory.");
    println!();
    println!("command: {}", harness::reproducing_command());
    Ok(())
}

#[cfg(test)]
mod replay_tests {
    use clap::Parser;

    #[test]
    fn replay_options() {
        let cli = crate::Cli::try_parse_from([
            "kmem-bench",
            "replay",
            "--json",
            "--trace",
            "net",
            "--only",
            "kmem-replay",
            "--runs",
            "1",
        ])
        .unwrap();
        let crate::Suite::Replay(args) = cli.suite else {
            panic!("parsed as another suite")
        };
        assert!(args.json);
        assert_eq!(args.source.trace, ["net"]);
        assert_eq!(args.only, ["kmem-replay"]);
        assert_eq!(args.runs, 1);
    }

    /// Every contender on the repository's sample trace agrees on the events.
    #[test]
    fn replays_a_small_trace() {
        let sample = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../crates/kmem-trace/tests/data/sample.trace");
        let text = std::fs::read(&sample).unwrap();
        for c in super::REPLAY_CONTENDERS {
            let (secs, setup, events) = super::replay_pass(c, &sample, &text).unwrap();
            assert_eq!(events, 306, "{c}");
            assert!(secs > 0.0);
            assert_eq!(setup.is_some(), c != "parse-only");
        }
    }
}
