//! Edge cases of the trace tooling found in review, each stating what Linux
//! prints or what the report promises: call sites in kernel modules
//! (`sym+0x1a/0x200 [nvme_core]`), a cache whose first traced allocation is
//! in atomic context (replay must still create it), error messages that say
//! what was found instead of "end of line", and hostile input (CR, NUL,
//! escape bytes, a 3 MiB line, no final newline) all accounted for.

use std::path::PathBuf;

use kmem_trace::replay::{replay_file, ReplayConfig};
use kmem_trace::{ErrorKind, Event, Line, Mode, Parser};

const P: &str = "           cargo-9571    [001] ...1.   263.018527: ";

fn write_tmp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kmem-trace-edge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn cfg() -> ReplayConfig {
    ReplayConfig {
        mode: Mode::Strict,
        ram_bytes: Some(1 << 30),
        background: false,
        ..ReplayConfig::default()
    }
}

/// The first kmem_cache_alloc of a cache may happen in atomic context (here
/// `...1.`, preempt depth 1, GFP_ATOMIC as ext4's extent_status does in the
/// shared build trace): the replayer still creates the cache and replays its
/// events (a first version called kmem_cache_create in that context, which
/// kmem refuses as "sleeping function called from invalid context", and then
/// skipped every event of the cache: 551 in build, 8364 in fs, 95763 in net
/// including skbuff_head_cache, its frees mislabelled "unmatched").
#[test]
fn cache_first_used_in_atomic_context_is_still_created() {
    let text = format!(
        "{P}kmem_cache_alloc: call_site=__es_insert_extent+0x1a3/0x390 ptr=ffff88816c5b97f8 name=extent_status bytes_req=40 bytes_alloc=40 gfp_flags=GFP_ATOMIC node=-1 accounted=false\n\
         {P}kmem_cache_free: call_site=__es_remove_extent+0x1/0x2 ptr=ffff88816c5b97f8 name=extent_status\n"
    );
    let path = write_tmp("atomic_cache.txt", &text);
    let r = replay_file(&path, &cfg(), None).unwrap();
    assert_eq!(
        r.accounting.skipped, 0,
        "skipped: {:?}; warnings: {:?}",
        r.accounting.skipped_by_reason, r.warning_examples
    );
    assert_eq!(r.accounting.unmatched_frees, 0);
    assert_eq!(r.accounting.replayed, 2);
}

/// `%pS` prints a module's symbol as `sym+0xoff/0xsize [module]`
/// (lib/vsprintf.c / kallsyms `__sprint_symbol`), so any kmalloc from a
/// module (a distro kernel's ext4, xfs, nvme, drm, nf_conntrack, ...) has a
/// space inside `call_site=`. The parser takes the call site as one word and
/// rejects the line (`expected ` ptr=`, found `[mymod]``).
#[test]
fn module_call_site_parses() {
    let line = format!(
        "{P}kmalloc: call_site=nvme_setup_cmd+0x1a/0x200 [nvme_core] ptr=ffff888100873500 bytes_req=11 bytes_alloc=16 gfp_flags=GFP_ATOMIC node=-1 accounted=false"
    );
    let mut p = Parser::new(Mode::Strict);
    let l = p.parse_line(line.as_bytes());
    let Ok(Line::Event(rec)) = l else {
        panic!("module call site rejected: {l:?}")
    };
    let Event::Kmalloc(k) = rec.event else {
        panic!()
    };
    assert_eq!(k.call_site.symbol(), "nvme_setup_cmd");
    assert_eq!(k.ptr, 0xffff888100873500);
}

/// when the failing column is a space, the excerpt
/// is empty and the error says "found end of line" although text follows:
/// `line 1, column 173: unexpected_text: expected end of line, found end of line`.
#[test]
fn found_is_not_end_of_line_when_text_follows() {
    let bad = [
        // An extra field as a newer kernel could print.
        format!("{P}kfree: call_site=a+0x1/0x2 ptr=ffff888100873500 extra=1"),
        // A value missing in the middle of the line.
        format!("{P}kmalloc: call_site=a+0x1/0x2 ptr=ffff888100873500 bytes_req= bytes_alloc=16 gfp_flags=GFP_KERNEL node=-1 accounted=false"),
        // Two spaces between fields.
        format!("{P}kfree: call_site=a+0x1/0x2  ptr=ffff888100873500"),
    ];
    for line in &bad {
        let mut p = Parser::new(Mode::Strict);
        let e = p.parse_line(line.as_bytes()).unwrap_err();
        assert_ne!(e.kind(), ErrorKind::Truncated, "{line}");
        let msg = e.to_string();
        assert!(!msg.contains("found end of line"), "{line}\n  -> {msg}");
    }
}

/// Holds: every line of a hostile input is accounted for, and lines after
/// garbage, CR, NUL and a too-long line still parse (passes).
#[test]
fn hostile_input_is_accounted_for() {
    let good = format!("{P}kfree: call_site=a+0x1/0x2 ptr=0000000000000000");
    let text = format!(
        "# tracer: nop\r\n{good}\r\n\0\0\0\n\u{1b}[2J{good}\n{}\n{good}\n{good}",
        "x".repeat(3 << 20)
    );
    let path = write_tmp("hostile.txt", &text);
    let mut r = kmem_trace::TraceReader::open(&path, Mode::Lenient).unwrap();
    let mut events = 0;
    r.for_each_event(|_| events += 1).unwrap();
    let s = r.into_stats();
    // The ESC line is an event: a comm may hold any byte.
    assert_eq!(events, 4);
    assert_eq!(s.lines, 7);
    assert_eq!(s.accounted(), s.lines);
    assert_eq!(s.skipped_total(), 2);
}

/// Events name CPU 5 but the header says `#P:2`: the replay runs them on
/// CPU 5 % 2 and the report says so, instead of folding them silently.
#[test]
fn cpus_beyond_the_header_are_reported() {
    let ev = |cpu: u32, what: &str| {
        format!("           cargo-9571    [{cpu:03}] .....   263.018527: {what}\n")
    };
    let text = format!(
        "# tracer: nop\n#\n# entries-in-buffer/entries-written: 2/2   #P:2\n#\n{}{}",
        ev(5, "kmalloc: call_site=f+0x1/0x2 ptr=ffff888100001000 bytes_req=64 bytes_alloc=64 gfp_flags=GFP_KERNEL node=-1 accounted=false"),
        ev(1, "kfree: call_site=g+0x1/0x2 ptr=ffff888100001000"),
    );
    let path = write_tmp("cpus.txt", &text);
    let r = replay_file(&path, &cfg(), None).unwrap();
    assert_eq!(r.machine.nr_cpus, 2);
    assert_eq!(r.machine.trace_cpus, 6);
    assert_eq!(r.accounting.replayed, 2);
    let t = r.to_text();
    assert!(
        t.contains("CPUs 0-5, the machine has 2: CPU k ran as CPU k % 2"),
        "no folding note in:\n{t}"
    );
    // Within the header's CPUs there is no note.
    let text = format!(
        "# tracer: nop\n#\n# entries-in-buffer/entries-written: 1/1   #P:8\n#\n{}",
        ev(5, "kfree: call_site=g+0x1/0x2 ptr=0000000000000000"),
    );
    let path = write_tmp("cpus_ok.txt", &text);
    let r = replay_file(&path, &cfg(), None).unwrap();
    assert_eq!((r.machine.nr_cpus, r.machine.trace_cpus), (8, 6));
    assert!(!r.to_text().contains("ran as CPU"));
}

/// A RAM size below the PC layout's minimum is raised by the machine; the
/// report gives the size the machine has, not the one asked for.
#[test]
fn ram_below_the_minimum_reports_what_the_machine_has() {
    let text = format!("{P}kfree: call_site=g+0x1/0x2 ptr=0000000000000000\n");
    let path = write_tmp("ram.txt", &text);
    let cfg = ReplayConfig {
        ram_bytes: Some(1 << 20),
        ..cfg()
    };
    let r = replay_file(&path, &cfg, None).unwrap();
    assert_eq!(r.machine.ram_bytes, kmem::page::memmap::PC_LAYOUT_MIN_BYTES);
    // Said in MiB below 1 GiB (it printed "0.0 GiB").
    let t = r.to_text();
    assert!(t.contains("machine: 32 MiB (--ram)"), "{t}");
}
