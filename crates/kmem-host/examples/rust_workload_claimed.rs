//! The `rust_workload` example with every thread owning a kmem CPU:
//! `KmemGlobal::with_machine(1 GiB, 16).claiming_cpus()`, so each of the
//! nine threads claims a CPU of its own at its first allocation and takes
//! the owner's paths (plain loads and stores, no compare-and-swap), like a
//! per-thread cache. Same workload, same report, same checksum as
//! `rust_workload` (shared CPUs) and `rust_workload_system` (glibc).
//!
//! ```text
//! cargo run --release -p kmem-host --example rust_workload_claimed
//! ```

#[path = "workload/report.rs"]
mod report;
#[path = "workload/mod.rs"]
mod workload;

use kmem_host::global::KmemGlobal;
use std::process::ExitCode;

#[global_allocator]
static KMEM: KmemGlobal = KmemGlobal::with_machine(1 << 30, 16).claiming_cpus();

fn main() -> ExitCode {
    report::run_and_report(&KMEM, "rust_workload_claimed")
}
