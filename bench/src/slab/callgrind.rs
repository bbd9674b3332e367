//! Instructions per pair, counted by valgrind's callgrind.
//!
//! Timings move with the machine; instruction counts do not: callgrind runs
//! the program on a synthetic CPU and counts every instruction executed
//! (`Ir`), the same on every run. To count only the workload, not the setup
//! (building the machine or the arena, the warm-up), each (allocator,
//! workload) runs twice under callgrind with the same setup and warm-up and
//! two different pair counts, and the report is the difference in total
//! `Ir` divided by the difference in pairs. The figure includes the
//! workload's own loop (the batch array, `black_box`, the call), the same
//! for every allocator; the `loop-only` row runs the loops over a fake heap
//! that hands out one fixed block and frees nothing, to show that share.
//!
//! `run_one` is the body run under valgrind (`--callgrind-one ALLOC W`):
//! build, warm up on 10 batches, run `--pairs` pairs, exit. `run_all`
//! drives valgrind over every selected cell and prints the table; the same
//! can be done by hand:
//!
//! ```text
//! valgrind --tool=callgrind --callgrind-out-file=cg.out \
//!     target/release/kmem-bench slab --callgrind-one kmem W1 --pairs 60000
//! grep ^totals: cg.out
//! ```
//!
//! W4 under valgrind: its threads take turns on one host CPU, so the count
//! is the instructions of both workers (the mailbox waits yield instead of
//! spinning, and so add almost nothing); it measures the work of a pair
//! including cross-thread frees, not parallel speed.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use super::{allocator_names, contender_for, kmem, Args, LOOP_ONLY, W4, WORKLOADS};
use crate::harness;

/// Batches in the warm-up before the counted pairs.
const WARMUP_BATCHES: u64 = 10;
/// Batches of the shorter and of the longer run.
const SHORT_BATCHES: u64 = 10;
const LONG_BATCHES: u64 = 60;

fn workload_index(name: &str) -> Result<usize, String> {
    WORKLOADS
        .iter()
        .position(|w| w.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| {
            let names: Vec<&str> = WORKLOADS.iter().map(|w| w.name).collect();
            format!(
                "no workload named {name:?}; there are: {}",
                names.join(", ")
            )
        })
}

/// `--callgrind-one ALLOC W --pairs N`: untimed, for valgrind.
pub fn run_one(allocator: &str, workload: &str, pairs: u64) -> Result<(), String> {
    let w = workload_index(workload)?;
    let quantum = WORKLOADS[w].quantum;
    let local = if w == W4 { 0 } else { w };
    let mut c = contender_for(allocator, w)?;
    c.run(local, WARMUP_BATCHES * quantum);
    c.run(local, pairs.div_ceil(quantum).max(1) * quantum);
    Ok(())
}

/// One callgrind result.
#[derive(Serialize)]
struct JsonRow<'a> {
    suite: &'a str,
    workload: &'a str,
    allocator: &'a str,
    ir_per_op: f64,
}

/// Runs the binary under callgrind with `pairs` and returns the total Ir.
fn total_ir(
    exe: &Path,
    dir: &Path,
    allocator: &str,
    workload: &str,
    pairs: u64,
) -> Result<u64, String> {
    let out = dir.join(format!(
        "cg.{}.{workload}.{pairs}",
        allocator.replace('+', "_")
    ));
    let result = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(exe)
        .args(["slab", "--callgrind-one", allocator, workload, "--pairs"])
        .arg(pairs.to_string())
        .output()
        .map_err(|e| format!("cannot run valgrind: {e} (is it installed?)"))?;
    if !result.status.success() {
        let err = String::from_utf8_lossy(&result.stderr);
        let tail: Vec<&str> = err.lines().rev().take(15).collect();
        return Err(format!(
            "valgrind on {allocator} {workload} failed ({}):\n{}",
            result.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    let text =
        std::fs::read_to_string(&out).map_err(|e| format!("cannot read {}: {e}", out.display()))?;
    let _ = std::fs::remove_file(&out);
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no totals line in {}", out.display()))
}

/// Ir per pair of one (allocator, workload): two runs, difference.
fn ir_per_pair(exe: &Path, dir: &Path, allocator: &str, w: usize) -> Result<f64, String> {
    let quantum = WORKLOADS[w].quantum;
    let name = WORKLOADS[w].name;
    let (short, long) = (SHORT_BATCHES * quantum, LONG_BATCHES * quantum);
    let a = total_ir(exe, dir, allocator, name, short)?;
    let b = total_ir(exe, dir, allocator, name, long)?;
    Ok(b.saturating_sub(a) as f64 / (long - short) as f64)
}

/// `--callgrind`: every selected (allocator, workload) under valgrind.
pub fn run_all(args: &Args) -> Result<(), String> {
    super::check_names(&args.run.only)?;
    let workloads: Vec<usize> = if args.workload.is_empty() {
        (0..WORKLOADS.len()).collect()
    } else {
        args.workload
            .iter()
            .map(|w| workload_index(w))
            .collect::<Result<_, _>>()?
    };
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    let dir = scratch_dir()?;
    let mut names: Vec<&str> = allocator_names()
        .into_iter()
        .filter(|n| super::selected(n, &args.run.only))
        .collect();
    names.push(LOOP_ONLY);
    let mut rows: Vec<(usize, &str, f64)> = Vec::new();
    for &w in &workloads {
        for &name in &names {
            if w == W4 && build_shared_name(name).is_none() {
                continue;
            }
            if !args.run.json {
                eprintln!("callgrind: {name} {}", WORKLOADS[w].name);
            }
            rows.push((w, name, ir_per_pair(&exe, &dir, name, w)?));
        }
    }
    let _ = std::fs::remove_dir(&dir);
    if args.run.json {
        for &(w, allocator, ir) in &rows {
            let row = JsonRow {
                suite: "slab",
                workload: WORKLOADS[w].name,
                allocator,
                ir_per_op: (ir * 10.0).round() / 10.0,
            };
            println!(
                "{}",
                serde_json::to_string(&row).expect("a flat struct serialises")
            );
        }
        return Ok(());
    }
    print_text(&workloads, &rows);
    Ok(())
}

/// Whether `name` runs W4, without building it.
fn build_shared_name(name: &str) -> Option<()> {
    (kmem::NAMES.contains(&name) || name == "glibc" || name == LOOP_ONLY || name.ends_with("+lock"))
        .then_some(())
}

fn scratch_dir() -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("kmem-bench-callgrind.{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

fn print_text(workloads: &[usize], rows: &[(usize, &str, f64)]) {
    println!(
        "kmem-bench slab --callgrind: instructions (Ir) per alloc+free pair, valgrind --tool=callgrind"
    );
    println!(
        "each figure: (Ir of {LONG_BATCHES} batches - Ir of {SHORT_BATCHES} batches) / pairs between, after {WARMUP_BATCHES} warm-up batches"
    );
    let width = rows
        .iter()
        .map(|r| r.1.len())
        .max()
        .unwrap_or(9)
        .max("allocator".len());
    for &w in workloads {
        println!();
        let what = if w == W4 {
            "W2 on 2 threads, half of each thread's frees done by the other (Ir of both threads per pair)"
        } else {
            WORKLOADS[w].what
        };
        println!("{}: {what}", WORKLOADS[w].name);
        println!(
            "  {:<width$}  {:>10}  {:>8}",
            "allocator", "Ir/op", "vs kmem"
        );
        let base = rows
            .iter()
            .find(|r| r.0 == w && r.1 == kmem::NAME)
            .map(|r| r.2);
        for &(_, name, ir) in rows.iter().filter(|r| r.0 == w) {
            let ratio = match base {
                Some(b) if b > 0.0 => format!("{:.2}x", ir / b),
                _ => "-".to_string(),
            };
            println!("  {name:<width$}  {ir:>10.1}  {ratio:>8}");
        }
    }
    println!();
    println!("loop-only: the workload loops over a fake heap (one fixed block, no-op free): the harness's share of every row.");
    println!("W4 counts both workers' instructions (valgrind runs threads one at a time).");
    println!(
        "by hand: valgrind --tool=callgrind --callgrind-out-file=cg.out target/release/kmem-bench slab --callgrind-one kmem W1 --pairs 60000; grep ^totals: cg.out"
    );
    println!();
    println!("command: {}", harness::reproducing_command());
}

#[cfg(test)]
mod tests {
    use super::super::build_shared;
    use super::*;

    #[test]
    fn workload_names_parse() {
        assert_eq!(workload_index("W1").unwrap(), 0);
        assert_eq!(workload_index("w4").unwrap(), 3);
        assert!(workload_index("W5").is_err());
    }

    #[test]
    fn shared_names_match_the_builders() {
        for name in allocator_names().into_iter().chain([LOOP_ONLY]) {
            assert_eq!(
                build_shared_name(name).is_some(),
                build_shared(name, false).is_some(),
                "{name}"
            );
        }
    }

    #[test]
    fn one_runs_untimed() {
        run_one("kmem", "W1", 1).unwrap();
        run_one("kmem-unhardened", "W1", 1).unwrap();
        run_one("kmem-unhardened", "W4", 1).unwrap();
        run_one("glibc", "W4", 1).unwrap();
        assert!(run_one("talc", "W4", 1).is_err());
    }
}
