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
//! ```

mod harness;
mod pages;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.suite {
        Suite::Pages(args) => pages::run(args),
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
        let super::Suite::Pages(args) = cli.suite;
        assert!(args.run.json);
        assert_eq!(args.run.iters, Some(1000));
        assert_eq!(args.run.runs, 3);
        assert!(args.run.only.is_empty());
        assert!(super::Cli::try_parse_from(["kmem-bench", "pages", "--runs", "0"]).is_err());
    }
}
