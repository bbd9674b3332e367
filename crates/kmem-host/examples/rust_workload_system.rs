//! The `rust_workload` example's workload on the system allocator (glibc's
//! malloc here): the baseline its kmem run is measured against. The same
//! threads do the same work (the checksum printed matches the kmem run's);
//! only the global allocator differs.
//!
//! ```text
//! cargo run --release -p kmem-host --example rust_workload_system
//! ```

#[path = "workload/mod.rs"]
mod workload;

use workload::{ROUNDS, THREADS};

fn main() {
    let out = workload::run();
    println!(
        "rust_workload_system: {THREADS} worker threads + 1 collector on the system allocator, {ROUNDS} rounds each, {:.2?}",
        out.elapsed
    );
    println!(
        "  work checksum {}, {} strings collected across threads",
        out.work, out.strings
    );
}
