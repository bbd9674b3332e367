//! `kmem-bench`: kmem measured side by side with peer allocators.
//!
//! One subcommand per suite, each suite in its own module (`pages` now; `slab`,
//! `vmalloc`, `replay` later). A suite builds its contenders (kmem and peers) and
//! its workloads and hands them to [`harness`], which does the timing (calibrated
//! iterations, interleaved runs, medians) and prints either text tables or JSON
//! lines. Every peer runs the same workload on the same amount of memory as kmem,
//! in the same process and run.
//!
//! ```text
//! cargo run --release -p kmem-bench -- pages [--json] [--iters N] [--runs N]
//! cargo run --release -p kmem-bench -- parse [--json] [--runs N] [--trace NAME]
//! cargo run --release -p kmem-bench -- replay [--json] [--runs N] [--trace NAME]
//! cargo run --release -p kmem-bench -- slab [--json] [--callgrind]
//! cargo run --release -p kmem-bench -- vmalloc [--nr-threads N --test-loop-count N --run-test-mask M] [--json]
//! ```

mod harness;
mod pages;
mod replay;
mod slab;
mod vmalloc;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "kmem-bench",
    about = "Benchmark kmem against peer allocators, same workload, same run",
    long_about = "Benchmark kmem against peer allocators, same workload, same run.\n\n\
        Each suite times kmem and several crates.io allocators on identical \
        workloads and reports nanoseconds per operation (median of --runs), with \
        the ratio to kmem. Build with --release: debug numbers mean nothing.\n\n\
        Run `kmem-bench <suite> --help` for what a suite's workloads do."
)]
struct Cli {
    #[command(subcommand)]
    suite: Suite,
}

#[derive(Debug, Subcommand)]
enum Suite {
    /// Page/frame allocation: order-0 and order-3 alloc+free pairs, 512-frame batches
    #[command(long_about = pages::ABOUT)]
    Pages(pages::Args),
    /// Trace parsing: kmem-trace on the shared Linux traces, MB/s and events/s
    #[command(long_about = replay::PARSE_ABOUT)]
    Parse(replay::ParseArgs),
    /// Trace replay: kmem replay end to end on the shared Linux traces, events/s
    #[command(long_about = replay::REPLAY_ABOUT)]
    Replay(replay::ReplayArgs),
    /// Small objects: kmalloc/kfree against heap allocators, W1-W4 (--callgrind: instructions)
    #[command(long_about = slab::ABOUT)]
    Slab(slab::Args),
    /// vmalloc: Linux's test_vmalloc scenarios, vmalloc+vfree pairs on two page-table backends
    #[command(long_about = vmalloc::ABOUT)]
    Vmalloc(vmalloc::Args),
}

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so printing to a closed pipe (`kmem-bench slab |
    // head`) would panic; a filter should just stop.
    // SAFETY: restoring a signal's default disposition before any thread
    // starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let result = match &cli.suite {
        Suite::Pages(args) => pages::run(args),
        Suite::Parse(args) => replay::run_parse(args),
        Suite::Replay(args) => replay::run_replay(args),
        Suite::Slab(args) => slab::run(args),
        Suite::Vmalloc(args) => vmalloc::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kmem-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        super::Cli::command().debug_assert();
    }

    #[test]
    fn pages_options_parse() {
        use clap::Parser;
        let cli = super::Cli::try_parse_from([
            "kmem-bench",
            "pages",
            "--json",
            "--iters",
            "1000",
            "--runs",
            "3",
        ])
        .unwrap();
        let super::Suite::Pages(args) = cli.suite else {
            panic!("parsed as another suite")
        };
        assert!(args.run.json);
        assert_eq!(args.run.iters, Some(1000));
        assert_eq!(args.run.runs, 3);
        assert!(args.run.only.is_empty());
        assert!(super::Cli::try_parse_from(["kmem-bench", "pages", "--runs", "0"]).is_err());
    }

    #[test]
    fn vmalloc_options_parse() {
        use clap::Parser;
        let cli = super::Cli::try_parse_from([
            "kmem-bench",
            "vmalloc",
            "--nr-threads",
            "2",
            "--test-loop-count",
            "1000",
            "--run-test-mask",
            "0x7",
            "--json",
        ])
        .unwrap();
        let super::Suite::Vmalloc(args) = cli.suite else {
            panic!("parsed as another suite")
        };
        assert_eq!(args.nr_threads, 2);
        assert_eq!(args.test_loop_count, 1000);
        assert_eq!(args.run_test_mask, 7);
        assert!(args.run.json);
        let cli = super::Cli::try_parse_from(["kmem-bench", "vmalloc"]).unwrap();
        let super::Suite::Vmalloc(args) = cli.suite else {
            panic!("parsed as another suite")
        };
        assert_eq!(args.run_test_mask, 0x1fff);
        assert_eq!(args.test_loop_count, 1_000_000);
        assert!(
            super::Cli::try_parse_from(["kmem-bench", "vmalloc", "--run-test-mask", "z"]).is_err()
        );
    }

    #[test]
    fn slab_options_parse() {
        use clap::Parser;
        let cli =
            super::Cli::try_parse_from(["kmem-bench", "slab", "--json", "--only", "kmem"]).unwrap();
        let super::Suite::Slab(args) = cli.suite else {
            panic!("parsed as another suite")
        };
        assert!(args.run.json);
        assert_eq!(args.run.only, ["kmem"]);
        assert!(!args.callgrind);
        let cli = super::Cli::try_parse_from([
            "kmem-bench",
            "slab",
            "--callgrind-one",
            "talc",
            "W2",
            "--pairs",
            "5000",
        ])
        .unwrap();
        let super::Suite::Slab(args) = cli.suite else {
            panic!("parsed as another suite")
        };
        assert_eq!(
            args.callgrind_one.as_deref(),
            Some(&["talc".to_string(), "W2".to_string()][..])
        );
        assert_eq!(args.pairs, 5000);
        assert!(super::Cli::try_parse_from(["kmem-bench", "slab", "--workload", "W1"]).is_err());
    }
}
