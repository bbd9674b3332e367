//! A real Rust workload running entirely on kmem.
//!
//! `KmemGlobal` is the process's `#[global_allocator]`: every `Box`, `Vec`,
//! `String`, `HashMap` and `BTreeMap` of the workload ([`workload`]: eight
//! worker threads building indexes, ordered maps, sorted vectors and blobs
//! of 8 B .. 12 KiB, and a collector thread freeing strings the workers
//! built), the standard library's own allocations (thread names, channels,
//! formatting) included, is a kmalloc object of a hosted machine (1 GiB of
//! memfd RAM, 16 CPUs: each thread has a kmem CPU number of its own but
//! does not claim it, so every operation takes the shared paths, a
//! compare-and-swap on the CPU's flag).
//!
//! At the end it prints what kmem saw: Linux's per-cache counters (fast and
//! slow paths, slabs taken and given back; summed over every kmalloc cache),
//! the large (page-backed) kmallocs, the few allocations that went to the
//! system allocator (the machine's own bookkeeping, made while it was being
//! built), `/proc/slabinfo`, and the page allocator's consistency check
//! (`pages().verify()`). `rust_workload_claimed` runs the same workload
//! with every thread owning a kmem CPU (`KmemGlobal::claiming_cpus`),
//! `rust_workload_system` on the system allocator, for a baseline.
//!
//! ```text
//! cargo run --release -p kmem-host --example rust_workload
//! cargo run --release -p kmem-host --example rust_workload_claimed
//! cargo run --release -p kmem-host --example rust_workload_system
//! ```

#[path = "workload/mod.rs"]
mod workload;

#[path = "workload/report.rs"]
mod report;

use kmem_host::global::KmemGlobal;
use std::process::ExitCode;

#[global_allocator]
static KMEM: KmemGlobal = KmemGlobal::new();

fn main() -> ExitCode {
    report::run_and_report(&KMEM, "rust_workload")
}
