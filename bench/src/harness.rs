//! Timing and reporting shared by every suite.
//!
//! A suite is a matrix: *workloads* (rows of the report, e.g. `order0-pair`) times
//! *contenders* (allocators, e.g. kmem and its peers). Each contender is a value
//! implementing [`Contender`]; its `run(workload, n)` performs `n` operations of
//! that workload on its own state and is the only thing inside the timed region.
//!
//! How a number is produced:
//! 1. Calibration (doubles as warm-up): for each (workload, contender) the body is
//!    run with growing `n` until one call takes at least 20 ms, then `n` is scaled
//!    so that one measurement lasts about [`TARGET`] (0.3 s). `--iters N` replaces
//!    this with a fixed `N` and a short warm-up.
//! 2. Runs: `--runs R` times, every (workload, contender) is timed once with
//!    `Instant`, interleaved (run 1 of everything, then run 2, ...) so slow drift of
//!    the machine (frequency, noise) spreads over all contenders instead of
//!    landing on one.
//! 3. The figure reported is the median over runs of elapsed / n, in ns per op;
//!    the text table also shows the spread (max - min) relative to the median.
//!
//! The calling thread is pinned to the OS CPU it starts on ([`pin_thread`]), so
//! that migrations between CPUs do not add cold caches to some measurements.
//!
//! Output is either text tables (one per workload, with the ratio to a baseline
//! contender) followed by the command that reproduces them, or JSON lines, one
//! object per (workload, contender) with exactly the keys `suite`, `workload`,
//! `allocator`, `ns_per_op`.

use std::time::{Duration, Instant};

use rustix::thread::{sched_getcpu, sched_setaffinity, CpuSet};

use serde::Serialize;

/// How long one measurement should last when `--iters` is not given.
pub const TARGET: Duration = Duration::from_millis(300);

/// Calibration stops growing `n` once a single call lasts this long.
const CALIBRATION_FLOOR: Duration = Duration::from_millis(20);

/// Options every suite takes.
#[derive(Debug, Clone, clap::Args)]
pub struct RunOpts {
    /// Print one JSON object per line instead of tables (each suite's
    /// long help names its fields; most print
    /// {"suite":…,"workload":…,"allocator":…,"ns_per_op":…})
    #[arg(long)]
    pub json: bool,

    /// Operations per measurement (rounded up to the workload's batch size).
    /// Default: calibrated per allocator and workload so that one measurement
    /// takes about 0.3 s.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub iters: Option<u64>,

    /// Measurements per allocator and workload; the median is reported.
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,

    /// Measure only this allocator (repeatable), e.g. `--only kmem` under a
    /// profiler. Ratios need the baseline among them.
    #[arg(long, value_name = "ALLOCATOR")]
    pub only: Vec<String>,
}

/// One row of a report: a named workload and what it does.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    /// Short name, used in tables and JSON (`order0-pair`).
    pub name: &'static str,
    /// One line saying what one operation is.
    pub what: &'static str,
    /// `n` passed to [`Contender::run`] is always a multiple of this.
    pub quantum: u64,
}

/// Something measured: an allocator wrapped with the state its workloads need.
pub trait Contender {
    /// Name in reports and JSON.
    fn name(&self) -> &'static str;
    /// Perform `n` operations of workload number `workload` (an index into the
    /// suite's workload list). This is the timed region.
    fn run(&mut self, workload: usize, n: u64);
}

/// The measurements for one (workload, contender) cell.
#[derive(Debug, Clone)]
pub struct Cell {
    pub workload: usize,
    pub allocator: &'static str,
    /// Operations per measurement.
    pub iters: u64,
    /// ns per operation, one entry per run.
    pub samples: Vec<f64>,
}

impl Cell {
    /// Median of the runs, in ns per operation.
    pub fn median(&self) -> f64 {
        median(&self.samples)
    }

    /// (max - min) / median, as a fraction.
    pub fn spread(&self) -> f64 {
        let lo = self.samples.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = self.samples.iter().copied().fold(0.0, f64::max);
        let m = self.median();
        if m > 0.0 {
            (hi - lo) / m
        } else {
            0.0
        }
    }
}

/// Pin the calling OS thread to the CPU it is running on; returns that CPU, or
/// `None` if the kernel refused (the benchmark still runs, only noisier).
pub fn pin_thread() -> Option<usize> {
    let cpu = sched_getcpu();
    let mut set = CpuSet::new();
    set.set(cpu);
    sched_setaffinity(None, &set).ok().map(|()| cpu)
}

/// Median of a non-empty sample (mean of the middle two for even lengths).
pub fn median(samples: &[f64]) -> f64 {
    assert!(!samples.is_empty(), "median of no samples");
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

fn round_up(n: u64, quantum: u64) -> u64 {
    n.div_ceil(quantum).max(1) * quantum
}

fn time(c: &mut dyn Contender, workload: usize, n: u64) -> Duration {
    let start = Instant::now();
    c.run(workload, n);
    start.elapsed()
}

/// Find `n` such that one call lasts about [`TARGET`]; warms the contender up.
fn calibrate(c: &mut dyn Contender, workload: usize, quantum: u64) -> u64 {
    let mut n = quantum;
    loop {
        let t = time(c, workload, n);
        if t >= CALIBRATION_FLOOR || n >= u64::MAX / 4 {
            let scaled = n as f64 * TARGET.as_secs_f64() / t.as_secs_f64().max(1e-9);
            return round_up(scaled as u64, quantum);
        }
        n *= 2;
    }
}

/// Keep the contenders `--only` names (all of them if it names none).
pub fn select(
    contenders: Vec<Box<dyn Contender>>,
    only: &[String],
) -> Result<Vec<Box<dyn Contender>>, String> {
    let names: Vec<&str> = contenders.iter().map(|c| c.name()).collect();
    check_only(&names, only)?;
    Ok(contenders
        .into_iter()
        .filter(|c| only.is_empty() || only.iter().any(|o| o == c.name()))
        .collect())
}

/// Every `--only` name must be one of `names`.
fn check_only(names: &[&str], only: &[String]) -> Result<(), String> {
    match only.iter().find(|o| !names.contains(&o.as_str())) {
        Some(unknown) => Err(format!(
            "no allocator named {unknown:?}; there are: {}",
            names.join(", ")
        )),
        None => Ok(()),
    }
}

/// A contender's name and how to build it.
pub type Factory = (&'static str, fn() -> Result<Box<dyn Contender>, String>);

/// [`select`] for contenders that are costly to build: only the selected
/// ones are built, in list order.
pub fn build_selected(
    factories: Vec<Factory>,
    only: &[String],
) -> Result<Vec<Box<dyn Contender>>, String> {
    let names: Vec<&str> = factories.iter().map(|(n, _)| *n).collect();
    check_only(&names, only)?;
    factories
        .into_iter()
        .filter(|(n, _)| only.is_empty() || only.iter().any(|o| o == n))
        .map(|(_, build)| build())
        .collect()
}

/// Measure every contender on every workload; see the module comment for how.
pub fn measure(
    workloads: &[Workload],
    contenders: &mut [Box<dyn Contender>],
    opts: &RunOpts,
) -> Vec<Cell> {
    let mut cells = Vec::new();
    for (w, wl) in workloads.iter().enumerate() {
        for c in contenders.iter_mut() {
            let iters = match opts.iters {
                Some(n) => {
                    let n = round_up(n, wl.quantum);
                    c.run(w, round_up(n / 10, wl.quantum));
                    n
                }
                None => calibrate(c.as_mut(), w, wl.quantum),
            };
            cells.push(Cell {
                workload: w,
                allocator: c.name(),
                iters,
                samples: Vec::with_capacity(opts.runs as usize),
            });
        }
    }
    for _ in 0..opts.runs {
        let mut cell = cells.iter_mut();
        for w in 0..workloads.len() {
            for c in contenders.iter_mut() {
                let cell = cell.next().expect("one cell per pair");
                let t = time(c.as_mut(), w, cell.iters);
                cell.samples.push(t.as_nanos() as f64 / cell.iters as f64);
            }
        }
    }
    cells
}

/// One JSON line; field order is the output order.
#[derive(Serialize)]
struct JsonRow<'a> {
    suite: &'a str,
    workload: &'a str,
    allocator: &'a str,
    ns_per_op: f64,
}

/// Print the JSON lines for a suite's cells.
pub fn print_json(suite: &str, workloads: &[Workload], cells: &[Cell]) {
    for cell in cells {
        let row = JsonRow {
            suite,
            workload: workloads[cell.workload].name,
            allocator: cell.allocator,
            ns_per_op: (cell.median() * 100.0).round() / 100.0,
        };
        println!(
            "{}",
            serde_json::to_string(&row).expect("a flat struct serialises")
        );
    }
}

/// What the text report says around the tables.
pub struct TextReport<'a> {
    pub suite: &'a str,
    /// What one operation is, e.g. "one alloc+free pair".
    pub unit: &'a str,
    /// The contender the ratio column divides by.
    pub baseline: &'a str,
    /// Extra lines printed after the tables (versions, caveats).
    pub notes: &'a [String],
    /// The OS CPU the benchmark thread ran on, from [`pin_thread`].
    pub pinned: Option<usize>,
}

/// Print one table per workload, then the notes and the reproducing command.
pub fn print_text(report: &TextReport<'_>, workloads: &[Workload], cells: &[Cell], opts: &RunOpts) {
    let runs = opts.runs;
    println!(
        "kmem-bench {}: ns per op (op = {}), median of {} run{}",
        report.suite,
        report.unit,
        runs,
        if runs == 1 { "" } else { "s" }
    );
    let pinned = match report.pinned {
        Some(cpu) => format!("benchmark thread pinned to cpu {cpu}"),
        None => "benchmark thread not pinned".to_string(),
    };
    let (model, cpus) = cpu_info();
    println!("machine: {model}, {cpus} cpus, {pinned}");
    match opts.iters {
        Some(n) => println!("ops per measurement: {n} (--iters)"),
        None => println!(
            "ops per measurement: calibrated to ~{} ms per allocator and workload",
            TARGET.as_millis()
        ),
    }
    if cfg!(debug_assertions) {
        println!("WARNING: debug build; these numbers mean nothing, use --release");
    }
    let name_width = cells
        .iter()
        .map(|c| c.allocator.len())
        .max()
        .unwrap_or(9)
        .max("allocator".len());
    let ratio_head = format!("vs {}", report.baseline);
    for (w, wl) in workloads.iter().enumerate() {
        println!();
        println!("{}: {}", wl.name, wl.what);
        println!(
            "  {:<name_width$}  {:>9}  {:>7}  {:>8}  {:>12}",
            "allocator", "ns/op", "spread", ratio_head, "ops/run"
        );
        let row_cells: Vec<&Cell> = cells.iter().filter(|c| c.workload == w).collect();
        let base = row_cells
            .iter()
            .find(|c| c.allocator == report.baseline)
            .map(|c| c.median());
        for c in row_cells {
            let ratio = match base {
                Some(b) if b > 0.0 => format!("{:.2}x", c.median() / b),
                _ => "-".to_string(),
            };
            println!(
                "  {:<name_width$}  {:>9.2}  {:>6.1}%  {:>8}  {:>12}",
                c.allocator,
                c.median(),
                c.spread() * 100.0,
                ratio,
                c.iters
            );
        }
    }
    println!();
    println!(
        "ns/op: median over runs of (elapsed / ops). spread: (slowest - fastest run) / median."
    );
    println!(
        "vs {b}: ns/op divided by {b}'s; above 1.00x is slower than {b}, below is faster.",
        b = report.baseline
    );
    for note in report.notes {
        println!("{note}");
    }
    println!();
    println!("command: {}", reproducing_command());
}

/// CPU model and number of CPUs, from /proc/cpuinfo (not from the affinity
/// mask, which [`pin_thread`] has narrowed to one).
pub(crate) fn cpu_info() -> (String, usize) {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown cpu", |(_, v)| v.trim());
    let cpus = info.lines().filter(|l| l.starts_with("processor")).count();
    (model.to_string(), cpus)
}

/// The cargo command line that reproduces this run, arguments quoted for a shell.
pub fn reproducing_command() -> String {
    let mut cmd = String::from("cargo run");
    if !cfg!(debug_assertions) {
        cmd.push_str(" --release");
    }
    cmd.push_str(" -p kmem-bench --");
    for arg in std::env::args().skip(1) {
        cmd.push(' ');
        cmd.push_str(&shell_quote(&arg));
    }
    cmd
}

fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn round_up_to_quantum() {
        assert_eq!(round_up(1, 512), 512);
        assert_eq!(round_up(513, 512), 1024);
        assert_eq!(round_up(0, 1), 1);
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("--json"), "--json");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    struct Counter(u64);
    impl Contender for Counter {
        fn name(&self) -> &'static str {
            "counter"
        }
        fn run(&mut self, _workload: usize, n: u64) {
            for _ in 0..n {
                self.0 = std::hint::black_box(self.0 + 1);
            }
        }
    }

    #[test]
    fn measure_fills_every_cell() {
        let workloads = [
            Workload {
                name: "a",
                what: "",
                quantum: 1,
            },
            Workload {
                name: "b",
                what: "",
                quantum: 8,
            },
        ];
        let mut cs: Vec<Box<dyn Contender>> = vec![Box::new(Counter(0)), Box::new(Counter(0))];
        let opts = RunOpts {
            json: false,
            iters: Some(100),
            runs: 3,
            only: vec![],
        };
        let cells = measure(&workloads, &mut cs, &opts);
        assert_eq!(cells.len(), 4);
        assert!(cells.iter().all(|c| c.samples.len() == 3));
        assert_eq!(cells[0].iters, 100);
        assert_eq!(cells[2].iters, 104);
    }

    struct Named(&'static str);
    impl Contender for Named {
        fn name(&self) -> &'static str {
            self.0
        }
        fn run(&mut self, _workload: usize, _n: u64) {}
    }

    #[test]
    fn select_filters_by_name() {
        let all =
            || -> Vec<Box<dyn Contender>> { vec![Box::new(Named("a")), Box::new(Named("b"))] };
        assert_eq!(select(all(), &[]).unwrap().len(), 2);
        let only_b = select(all(), &["b".to_string()]).unwrap();
        assert_eq!(only_b.len(), 1);
        assert_eq!(only_b[0].name(), "b");
        assert!(select(all(), &["c".to_string()]).is_err());
    }

    #[test]
    fn build_selected_builds_only_what_is_named() {
        let factories: Vec<Factory> = vec![
            ("a", || Ok(Box::new(Named("a")))),
            ("b", || panic!("b is not selected and must not be built")),
            ("c", || Ok(Box::new(Named("c")))),
        ];
        let got = build_selected(factories.clone(), &["c".into(), "a".into()]).unwrap();
        let names: Vec<&str> = got.iter().map(|c| c.name()).collect();
        assert_eq!(names, ["a", "c"], "list order, only the named ones");
        let err = build_selected(factories, &["z".into()]).err().unwrap();
        assert!(err.contains("\"z\"") && err.contains("a, b, c"), "{err}");
    }
}
