//! The kmem side of the `rust_workload` examples: runs the workload on the
//! binary's `KmemGlobal` and prints what kmem saw (slab counters, large
//! kmallocs, fallbacks to the system allocator, `/proc/slabinfo`, the page
//! allocator's consistency check).

use crate::workload::{self, ROUNDS, THREADS};
use kmem::slab::{Stat, NR_STATS};
use kmem_host::global::KmemGlobal;
use std::process::ExitCode;

/// The counters printed, by Linux's `/sys/kernel/slab/<cache>/` names.
const SHOWN: [Stat; 12] = [
    Stat::AllocFastpath,
    Stat::AllocSlowpath,
    Stat::FreeFastpath,
    Stat::FreeSlowpath,
    Stat::AllocSlab,
    Stat::FreeSlab,
    Stat::SheafRefill,
    Stat::SheafFlush,
    Stat::BarnGet,
    Stat::BarnPut,
    Stat::AllocContended,
    Stat::FreeContended,
];

/// Every counter, summed over every kmalloc cache and CPU.
fn counters(kmem: &KmemGlobal) -> [u64; NR_STATS] {
    let mut sum = [0u64; NR_STATS];
    kmem.slab().expect("built").for_each_cache(|c| {
        if c.name().contains("kmalloc-") {
            for (total, n) in sum.iter_mut().zip(c.stats()) {
                *total += n;
            }
        }
    });
    sum
}

/// Runs the workload on `kmem` (the binary's global allocator) and prints
/// what kmem saw; `name` heads the report.
pub fn run_and_report(kmem: &KmemGlobal, name: &str) -> ExitCode {
    if !kmem.init_now() {
        eprintln!("kmem could not be set up; nothing ran on it");
        return ExitCode::FAILURE;
    }
    let before = counters(kmem);
    let workload::Outcome {
        work,
        strings,
        elapsed,
    } = workload::run();
    let after = counters(kmem);
    let slab = kmem.slab().expect("built");
    let machine = kmem.machine().expect("built");
    let (large_allocs, large_frees, large_pages) = slab.large_kmalloc_stats();
    let g = kmem.stats();

    println!(
        "{name}: {THREADS} worker threads + 1 collector on a kmem machine with {} CPUs{}, {ROUNDS} rounds each, {:.2?}",
        machine.config().nr_cpus,
        if g.claims > 0 { format!(" ({} threads claimed one, {} found none free)", g.claims, g.claims_missed) } else { String::new() },
        elapsed
    );
    println!("  work checksum {work}, {strings} strings collected across threads");
    println!();
    println!(
        "kmalloc caches, this run (Linux's /sys/kernel/slab counters, summed over every kmalloc-* cache and CPU):"
    );
    let delta = |s: Stat| after[s as usize] - before[s as usize];
    for s in SHOWN {
        println!("  {:<16} {:>10}", s.name(), delta(s));
    }
    let allocs = delta(Stat::AllocFastpath) + delta(Stat::AllocSlowpath);
    println!("  = {allocs} slab allocations");
    println!(
        "large kmalloc (above 8 KiB, whole pages), whole process: {large_allocs} allocations, {large_frees} frees, {large_pages} pages held now"
    );
    println!(
        "vmalloc (above 4 MiB, kmalloc's limit), whole process: {} allocations",
        g.vmalloc
    );
    println!(
        "system allocator instead of kmem, whole process: {} while kmem itself was allocating (machine bootstrap), {} above 4 MiB that vmalloc could not serve, {} misaligned",
        g.nested, g.oversize, g.misaligned
    );
    println!(
        "realloc: {} in place (same class), {} moved; kmalloc failures {}, refused frees {}, deferred frees {}",
        g.realloc_in_place, g.realloc_moved, g.failed, g.bad_frees, g.deferred
    );

    let mut info = String::with_capacity(64 * 1024);
    kmem::slab::slabinfo::slabinfo(slab, &mut info).expect("format slabinfo");
    println!();
    println!("/proc/slabinfo (the caches holding slabs):");
    for line in info.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let in_use = cols.get(2).and_then(|n| n.parse::<u64>().ok()).unwrap_or(1) > 0;
        if line.starts_with("slabinfo") || line.starts_with('#') || in_use {
            println!("{line}");
        }
    }

    let verify = machine.pages().verify();
    println!();
    match &verify {
        Ok(report) => println!("pages().verify(): ok ({report:?})"),
        Err(e) => println!("pages().verify(): FAILED: {e:?}"),
    }
    let through_kmem = allocs > 0 && g.failed == 0 && g.bad_frees == 0 && g.oversize == 0;
    if verify.is_ok() && through_kmem {
        println!("every allocation of the workload went through kmem");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
