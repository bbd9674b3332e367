//! `kmem analyze TRACE`: advice per call site, ranked, with the evidence.
//!
//! A thin wrapper over `kmem_trace::analyze::analyze_file`: one streaming
//! pass over the trace (no replay), then the findings as text or, with
//! `--json`, one JSON object. Exits non-zero if the trace cannot be read or,
//! with `--strict`, at the first malformed line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use kmem_trace::analyze;
use kmem_trace::Mode;

/// Long help of `kmem analyze`.
pub const LONG_ABOUT: &str = "\
Reads a Linux allocation trace once and ranks call sites by what to change,
each finding with its evidence (events matched out of the site's allocations,
first lines, GFP masks, contexts from the irq-info column, tasks, sizes):

  bug          a blocking mask (GFP_KERNEL...) in atomic context
  robustness   kmalloc above order 3 (32 KiB) in a blocking context: kvmalloc
               would not stall or fail under fragmentation, unless the buffer
               goes to a device
  check        GFP_ATOMIC in process context with preemption, IRQs and BH
               enabled: GFP_KERNEL may serve (an RCU read side, invisible in a
               trace, would forbid it)
  efficiency   vmalloc of at most a page; the kmalloc sites with the highest
               alloc+free rate, with their size spread, that a dedicated
               kmem_cache would serve

--json prints one object: counts per kind and the ranked findings.";

/// Arguments of `kmem analyze`.
#[derive(Args, Debug)]
pub struct AnalyzeArgs {
    /// The trace: ftrace text, plain or zstd-compressed.
    #[arg(value_name = "TRACE")]
    pub trace: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Stop at the first malformed line (default: skip and count it).
    #[arg(long)]
    pub strict: bool,
}

/// Runs `kmem analyze`.
pub fn run(args: &AnalyzeArgs) -> ExitCode {
    let mode = if args.strict {
        Mode::Strict
    } else {
        Mode::Lenient
    };
    match analyze::analyze_file(&args.trace, mode) {
        Ok(r) => {
            if args.json {
                println!("{}", r.to_json());
            } else {
                print!("{}", r.to_text());
            }
            if r.events == 0 {
                eprintln!(
                    "kmem analyze: {}: {}",
                    args.trace.display(),
                    crate::replay::no_events(r.lines, r.malformed_lines, r.other_events)
                );
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kmem analyze: {}: {e}", args.trace.display());
            ExitCode::FAILURE
        }
    }
}
