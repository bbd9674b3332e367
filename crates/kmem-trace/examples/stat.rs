//! Prints what a trace holds: `cargo run --release -p kmem-trace --example stat -- TRACE [--strict]`.
//!
//! Reads TRACE (plain or .zst) with [`kmem_trace::TraceReader`] and prints the
//! line accounting, events by type, unknown events, skipped lines by reason
//! with the first example of each, and what the header says.

use std::process::ExitCode;
use std::time::Instant;

use kmem_trace::{ErrorKind, EventKind, Mode, TraceReader};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.iter().find(|a| !a.starts_with("--")) else {
        eprintln!("usage: stat TRACE [--strict]");
        return ExitCode::FAILURE;
    };
    let mode = if args.iter().any(|a| a == "--strict") {
        Mode::Strict
    } else {
        Mode::Lenient
    };
    let start = Instant::now();
    let mut reader = match TraceReader::open(path, mode) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let compressed = reader.is_compressed();
    if let Err(e) = reader.for_each_event(|_| {}) {
        eprintln!("{path}: {e}");
        return ExitCode::FAILURE;
    }
    let secs = start.elapsed().as_secs_f64();
    let s = reader.into_stats();
    println!(
        "{path}: {} lines, {:.1} MB of text{}, read in {:.2} s ({:.0} MB/s, {:.2} M events/s)",
        s.lines,
        s.bytes as f64 / 1e6,
        if compressed { " (zstd)" } else { "" },
        secs,
        s.bytes as f64 / secs / 1e6,
        s.event_total() as f64 / secs / 1e6
    );
    println!(
        "  events {}, comments {}, blank {}, lost markers {} ({} events lost), unknown {}, skipped {}  (accounted {} of {})",
        s.event_total(),
        s.comment_lines,
        s.blank_lines,
        s.lost_lines,
        s.lost_events,
        s.unknown_lines,
        s.skipped_total(),
        s.accounted(),
        s.lines
    );
    for k in EventKind::ALL {
        if s.event_count(k) > 0 {
            println!("  {:<26} {:>10}", k.name(), s.event_count(k));
        }
    }
    for (name, n) in &s.unknown {
        println!("  unknown {name:<18} {n:>10}");
    }
    for k in ErrorKind::ALL {
        if s.skipped_count(k) > 0 {
            println!("  skipped {:<18} {:>10}", k.name(), s.skipped_count(k));
        }
    }
    for e in &s.first_errors {
        println!("  first {}: {e}", e.kind());
    }
    let h = &s.header;
    println!(
        "  header: tracer {:?}, cpus {:?}, entries {:?}/{:?} (overwritten {:?}), buffer started {:?}",
        h.tracer,
        h.cpus,
        h.entries_in_buffer,
        h.entries_written,
        h.overwritten(),
        h.buffer_started
    );
    println!(
        "  time span {:.3} s, cpus seen 0..={}",
        s.span_ns() as f64 / 1e9,
        s.max_cpu.unwrap_or(0)
    );
    ExitCode::SUCCESS
}
