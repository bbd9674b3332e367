//! `kmem replay TRACE`: a real Linux allocation trace, driven through kmem.
//!
//! Parses the arguments, shows a progress bar on a terminal (indicatif,
//! drawn on stderr, hidden when stderr is not a terminal), and hands the
//! work to `kmem_trace::replay::replay_file`; prints the report as text or,
//! with `--json`, as one JSON object; writes SVG charts with `--plot DIR`.
//! Exits non-zero if the trace cannot be read, or (with `--strict`) at the
//! first malformed line, naming it.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kmem_trace::replay::{self, Progress, ReplayConfig};
use kmem_trace::Mode;

/// Long help of `kmem replay`.
pub const LONG_ABOUT: &str = "\
Replays a Linux ftrace allocation trace (plain text or .zst, as recorded by
capture-trace or `kmem record`) through kmem's page allocator, slab allocator
and vmalloc, on a hosted machine sized from the before.meminfo snapshot beside
the trace (MemTotal), or --ram. Each event runs on its CPU and in its context
(from the irq-info column), with its GFP mask; caches named by kmem_cache
events are created on first use with the traced object size.

The summary: events by type and where each went (replayed, unmatched frees of
allocations older than the trace, duplicate frees, kfree(NULL), skipped with a
reason: the sums equal the event count); conformance (kmem's kmalloc class size
against the trace's bytes_alloc, for every kmalloc); kmem's failures by reason;
blocking allocations in atomic context; peak and final memory by kind; slab
footprint against the live bytes it holds; fragmentation over time; caches as
slabinfo shows them; then what `perf kmem stat --caller --alloc` and
`perf kmem stat --page --alloc` print, by perf's definitions.

--json prints one object (events, seconds, events_per_sec,
kmalloc_class_mismatches, failures, context_violations, unmatched_frees,
peak_pages by kind, and everything else). --plot DIR writes memory.svg,
fragmentation.svg, sizes.svg and orders.svg. --strict stops at the first
malformed line; otherwise such lines are skipped and counted.

TRACE may be a pipe (`-` is not special: use /dev/stdin or <(...)): it is
read once, so its header is not read ahead for the CPU count, and the
machine has 2 CPUs unless --cpus says otherwise (events of CPU k run on
CPU k % N, and the report says so). A trace without any kmem event (empty,
or only other tracers' events) is an error.";

/// Arguments of `kmem replay`.
#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// The trace: ftrace text, plain or zstd-compressed.
    #[arg(value_name = "TRACE")]
    pub trace: PathBuf,
    /// RAM of the replay machine (bytes, or with K/M/G/T suffix; 32M to
    /// 16380G; the host needs about 8 MiB per GiB) [default: MemTotal of
    /// before.meminfo beside the trace, else 4G]
    #[arg(long, value_name = "BYTES", value_parser = parse_ram)]
    pub ram: Option<u64>,
    /// Stop at the first malformed line (default: skip and count it).
    #[arg(long)]
    pub strict: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Write SVG charts into DIR.
    #[arg(long, value_name = "DIR")]
    pub plot: Option<PathBuf>,
    /// Honour __GFP_ZERO (zero memory; slower, changes no allocator decision).
    #[arg(long)]
    pub zero: bool,
    /// CPUs of the replay machine (1-256) [default: the trace header's
    /// `#P:`, else 2]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub cpus: Option<u16>,
    /// Rows of each perf table.
    #[arg(long, value_name = "N", default_value_t = replay::perf::DEFAULT_ROWS)]
    pub rows: usize,
}

/// `4096`, `64K`, `512M`, `24G` (binary multiples).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&s[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&s[..i], 1 << 30),
        Some((i, 't' | 'T')) => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size (bytes, or a number with K, M, G or T)"))?;
    n.checked_mul(mult)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("{s:?} is not a usable size"))
}

/// `--ram`: a size ([`parse_size`]) no smaller than the hosted machine's
/// smallest memory map.
pub fn parse_ram(s: &str) -> Result<u64, String> {
    let min = kmem::page::memmap::PC_LAYOUT_MIN_BYTES;
    let max = kmem::page::memmap::PC_LAYOUT_MAX_BYTES;
    let b = parse_size(s)?;
    if b < min {
        return Err(format!(
            "{:?} is below the replay machine's minimum of {}M (16 MiB below 4 GiB, 16 MiB above)",
            s.trim(),
            min >> 20
        ));
    }
    if b > max {
        return Err(format!(
            "{:?} is above the replay machine's maximum of {}G (frame numbers are 32-bit)",
            s.trim(),
            max >> 30
        ));
    }
    Ok(b)
}

/// Runs `kmem replay`.
pub fn run(args: &ReplayArgs) -> ExitCode {
    let cfg = ReplayConfig {
        mode: if args.strict {
            Mode::Strict
        } else {
            Mode::Lenient
        },
        ram_bytes: args.ram,
        nr_cpus: args.cpus.map(usize::from),
        rows: args.rows,
        zero: args.zero,
        ..ReplayConfig::default()
    };
    // The chart directory is made before the replay, so that a bad one
    // costs nothing and loses no report.
    if let Some(dir) = &args.plot {
        if let Err(e) = make_dir(dir) {
            eprintln!("kmem replay: --plot {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
    }
    let len = std::fs::metadata(&args.trace).map(|m| m.len()).unwrap_or(0);
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} replaying [{bar:40}] {bytes}/{total_bytes} {msg} ({elapsed})",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut on_progress = |p: Progress| {
        bar.set_position(p.input_bytes);
        bar.set_message(format!("{} events", p.events));
    };
    let result = replay::replay_file(&args.trace, &cfg, Some(&mut on_progress));
    bar.finish_and_clear();
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kmem replay: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(dir) = &args.plot {
        match replay::plot::write_all(&report, dir) {
            Ok(files) => {
                for f in files {
                    eprintln!("wrote {}", f.display());
                }
            }
            Err(e) => {
                eprintln!("kmem replay: --plot: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    let malformed: u64 = report.lines.malformed.values().sum();
    if report.lines.events == 0 {
        eprintln!(
            "kmem replay: {}: {}",
            args.trace.display(),
            no_events(
                report.lines.lines,
                malformed,
                report.lines.unknown.values().sum()
            )
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Creates `dir` (and its parents) if missing; an existing file is refused.
pub fn make_dir(dir: &std::path::Path) -> Result<(), String> {
    if dir.exists() && !dir.is_dir() {
        return Err("exists and is not a directory".into());
    }
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())
}

/// Why a trace without a single kmem event is refused: what it held.
pub fn no_events(lines: u64, malformed: u64, other: u64) -> String {
    if lines == 0 {
        "empty: not a trace".into()
    } else if malformed > 0 {
        format!(
            "no event parsed, {malformed} malformed lines: is this the text of an ftrace trace of kmem events? (--strict names the first bad line)"
        )
    } else if other > 0 {
        format!(
            "no kmem event, only {other} events of other tracers: was the trace recorded with the kmem events enabled (kmem:*, vmalloc:*, as capture-trace and `kmem record` do)?"
        )
    } else {
        format!("no event in {lines} lines (a header and comments only)")
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("24G"), Ok(24 << 30));
        assert_eq!(parse_size("1t"), Ok(1 << 40));
        assert!(parse_size("x").is_err());
        assert!(parse_size("0").is_err());
        assert_eq!(super::parse_ram("32M"), Ok(32 << 20));
        let e = super::parse_ram("31M").unwrap_err();
        assert!(e.contains("minimum of 32M"), "{e}");
    }
}
