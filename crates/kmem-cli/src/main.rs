//! `kmem`: the command-line face of the kmem allocation stack.
//!
//! `tour`, `stat` and `replay` build their own hosted machine
//! (`kmem_host::Machine`: RAM in a memfd, threads as CPUs), so nothing they
//! print depends on the machine they run on beyond timings; `analyze` reads
//! a trace only and `record` writes one. This file only parses arguments
//! (clap derive) and dispatches:
//!
//! - [`tour`]: live demonstrations of the allocator's rules, every figure
//!   measured on the spot;
//! - [`stat`]: the machine's /proc-format files;
//! - [`replay`], [`analyze`], [`record`]: real Linux allocation traces.
//!
//! Each command prints readable text by default and one JSON object with
//! `--json`; a command that cannot show what it claims exits non-zero.
//! Output cut short by a closed pipe (`kmem stat | head`) ends the process
//! quietly, as for any Unix filter.

mod analyze;
mod record;
mod replay;
mod stat;
mod tour;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Linux's kernel memory allocation stack, in Rust, on a hosted machine.
///
/// `tour` and `stat` build their own machine: 1 GiB of RAM in a memfd, laid
/// out over the DMA, DMA32 and Normal zones, 2 CPUs; `replay` sizes one
/// like the traced machine (MemTotal beside the trace, the header's CPU
/// count). Start with `kmem tour`; `kmem <command> --help` says how to read
/// each command's output.
#[derive(Parser, Debug)]
#[command(name = "kmem", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show, with figures measured on the spot, how GFP flags, context,
    /// reserves, reclaim and fragmentation decide an allocation's fate.
    #[command(long_about = tour::LONG_ABOUT)]
    Tour(tour::TourArgs),
    /// Print the machine's /proc files: buddyinfo, pagetypeinfo, zoneinfo,
    /// meminfo, vmstat.
    #[command(long_about = stat::LONG_ABOUT)]
    Stat(stat::StatArgs),
    /// Replay a Linux allocation trace through kmem: conformance, memory by
    /// kind, fragmentation, perf kmem stat tables.
    #[command(long_about = replay::LONG_ABOUT)]
    Replay(replay::ReplayArgs),
    /// Rank a trace's call sites by what to change: blocking masks in atomic
    /// context, costly kmalloc, GFP_ATOMIC where GFP_KERNEL may serve,
    /// small vmalloc, churn.
    #[command(long_about = analyze::LONG_ABOUT)]
    Analyze(analyze::AnalyzeArgs),
    /// Record a Linux allocation trace through tracefs while a command runs
    /// (root): the files capture-trace writes.
    #[command(long_about = record::LONG_ABOUT)]
    Record(record::RecordArgs),
}

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so printing to a closed pipe would panic; a
    // filter should just stop.
    // SAFETY: restoring a signal's default disposition before any thread
    // starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    match cli.command {
        Command::Tour(args) => tour::run(&args),
        Command::Stat(args) => stat::run(&args),
        Command::Replay(args) => replay::run(&args),
        Command::Analyze(args) => analyze::run(&args),
        Command::Record(args) => record::run(&args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
