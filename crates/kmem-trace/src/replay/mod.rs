//! # Replay: a real Linux allocation trace, driven through kmem
//!
//! [`replay_file`] streams a trace (plain or `.zst`, constant memory for the
//! text: see [`crate::reader`]) and runs every allocation event through the
//! kmem stack of a hosted machine built for it:
//!
//! ```text
//!  trace.zst ─► read + zstd ─► parse, intern ─► Ev batches ─► Engine ─► kmem
//!               (thread)       (thread: pipeline)     │        page allocator (mm_page_*)
//!                                                      │        slab: kmalloc, kmem_cache_* (named caches created on first use)
//!  before.meminfo ─► Machine (MemTotal, #P CPUs,       │        vmalloc over in-memory x86-64 tables (alloc/free_vmap_area)
//!                    ContextPolicy::Warn), built       ▼
//!                    while the parser works ahead   ReplayReport: accounting, conformance, memory by kind,
//!                                                   fragmentation, caches, perf kmem stat tables ─► text / JSON / SVG
//! ```
//!
//! Modules: [`pipeline`] (the parsing thread and its bounded batches),
//! [`ev`] (events with interned strings), [`engine`] (one event in, one
//! kmem call out, and the accounting), [`perf`] (`perf kmem stat`'s tables
//! by perf's definitions), [`memory`] (memory by kind, fragmentation,
//! timeline), [`report`] (text and JSON), [`plot`] (SVG), [`meminfo`]
//! (machine size), [`hash`] and [`sites`] (fast maps, interning).
//!
//! - **Machine.** RAM is `MemTotal` from `before.meminfo` beside the trace
//!   (or [`ReplayConfig::ram_bytes`]), CPUs the header's `#P:`. The context
//!   policy is [`ContextPolicy::Warn`]: a blocking mask in atomic context is
//!   reported and counted, then served without sleeping, as Linux went on.
//! - **Per event** (see [`engine`]): the thread takes the event's CPU
//!   (`kmem_host::set_cpu`) and context (`kmem_host::enter`, from the
//!   irq-info column), and calls kmem with the trace's GFP mask.
//! - **vmalloc** runs over the in-memory page tables
//!   ([`kmem_host::vmap::in_memory`]): real x86-64 tables, no host `mmap` per
//!   area, so replay stays fast.
//! - **Memory** is bounded by the live set (maps keyed by the trace's
//!   pointers, pfns and vmap addresses) and by the number of distinct call
//!   sites, pointers and pfns (perf's tables); the text is streamed, and at
//!   most [`pipeline::BATCHES`] batches of parsed events wait in between.
//! - **Zeroing**: `__GFP_ZERO` is dropped unless [`ReplayConfig::zero`]:
//!   replay never reads memory, and no allocator decision depends on it.
//! - **Malformed lines**: [`crate::Mode::Strict`] stops at the first with its
//!   line number; lenient mode skips and counts them (in the report's
//!   `lines.malformed`).
//!
//! [`ContextPolicy::Warn`]: kmem::ContextPolicy::Warn

pub mod engine;
pub mod ev;
pub mod hash;
pub mod meminfo;
pub mod memory;
pub mod perf;
pub mod pipeline;
pub mod plot;
pub mod report;
pub mod sites;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use kmem::slab::SlabAllocator;
use kmem::ContextPolicy;
use kmem_host::{Machine, MachineConfig, MachineError};

use crate::parser::{Line, Mode};
use crate::reader::TraceReader;
use crate::stats::Stats;
use engine::Engine;
use ev::Front;
use meminfo::RamSource;
use memory::KindPages;
use pipeline::Msg;
use report::{CacheRow, FragSummary, LineInfo, MachineInfo, PagesByKind, SlabFootprint};

pub use engine::{Accounting, EngineOutput};
pub use report::ReplayReport;

/// RAM when no meminfo snapshot sits beside the trace: 4 GiB.
pub const DEFAULT_RAM: u64 = 4 << 30;

/// How to replay.
#[derive(Clone, Debug)]
pub struct ReplayConfig {
    /// Strict: stop at the first malformed line. Lenient: skip and count.
    pub mode: Mode,
    /// RAM of the machine; `None`: `MemTotal` of the snapshot beside the
    /// trace, else [`DEFAULT_RAM`].
    pub ram_bytes: Option<u64>,
    /// CPUs; `None`: the trace header's `#P:` (else 2; a pipe's header is
    /// not read ahead, see [`header_cpus`]).
    pub nr_cpus: Option<usize>,
    /// Rows kept in each perf table.
    pub rows: usize,
    /// Read, decompress and parse on threads of their own ([`pipeline`]);
    /// otherwise everything runs on the calling thread.
    pub background: bool,
    /// Honour `__GFP_ZERO` (zero memory). Off by default: replay never reads
    /// memory, and zeroing only costs time (see [`engine::Engine::new`]).
    pub zero: bool,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            mode: Mode::Lenient,
            ram_bytes: None,
            nr_cpus: None,
            rows: perf::DEFAULT_ROWS,
            background: true,
            zero: false,
        }
    }
}

/// How far a replay has come, for progress bars.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the trace file consumed (compressed bytes for `.zst`).
    pub input_bytes: u64,
    /// Events replayed.
    pub events: u64,
}

/// Events between two progress calls without the pipeline (a power of
/// two; with it, one call per batch).
pub const PROGRESS_EVENTS: u64 = 1 << 16;

/// Why a replay stopped.
#[derive(Debug)]
pub enum ReplayError {
    /// The trace could not be read.
    Io(PathBuf, io::Error),
    /// A malformed line under [`Mode::Strict`] (the message names the line).
    Trace(PathBuf, crate::Error),
    /// The machine could not be built.
    Machine(MachineError),
    /// The slab allocator or vmalloc could not be set up.
    Setup(String),
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplayError::Io(p, e) => write!(f, "{}: {e}", p.display()),
            ReplayError::Trace(p, e) => write!(f, "{}: {e}", p.display()),
            ReplayError::Machine(e) => write!(f, "replay machine: {e}"),
            ReplayError::Setup(e) => write!(f, "replay set-up: {e}"),
        }
    }
}

impl std::error::Error for ReplayError {}

/// CPUs named by the trace header (`#P:`), read from its first lines.
/// `None` also for input that is not a regular file (a pipe, `/dev/stdin`):
/// it can be read only once, and the replay must see it from the start.
pub fn header_cpus(path: &Path) -> Option<u32> {
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return None;
    }
    let mut r = TraceReader::open(path, Mode::Lenient).ok()?;
    for _ in 0..256 {
        match r.next_line() {
            Ok(Some(Line::Event(_))) | Ok(None) | Err(_) => break,
            Ok(Some(_)) => {}
        }
    }
    r.stats().header.cpus
}

/// The machine configuration for a trace: RAM and CPUs as the module comment says.
pub fn machine_config(path: &Path, cfg: &ReplayConfig) -> (MachineConfig, RamSource) {
    let (ram, source) = match cfg.ram_bytes {
        Some(b) => (b, RamSource::Explicit),
        None => match meminfo::mem_total_beside(path) {
            Some((p, b)) => (b, RamSource::Meminfo(p)),
            None => (DEFAULT_RAM, RamSource::Default),
        },
    };
    // The PC layout raises anything smaller; say what the machine has.
    let ram = ram.max(kmem::page::memmap::PC_LAYOUT_MIN_BYTES);
    let cpus = cfg
        .nr_cpus
        .or_else(|| header_cpus(path).map(|c| c as usize))
        .unwrap_or(2)
        .clamp(1, kmem::page::MAX_CPUS);
    (
        MachineConfig {
            ram_bytes: ram,
            nr_cpus: cpus,
            context_policy: ContextPolicy::Warn,
            ..MachineConfig::default()
        },
        source,
    )
}

/// Replays the trace at `path`; see the module comment. `progress` is called
/// every [`PROGRESS_EVENTS`] events.
pub fn replay_file(
    path: &Path,
    cfg: &ReplayConfig,
    progress: Option<&mut dyn FnMut(Progress)>,
) -> Result<ReplayReport, ReplayError> {
    let start = Instant::now();
    let (mcfg, ram_source) = machine_config(path, cfg);
    let max = kmem::page::memmap::PC_LAYOUT_MAX_BYTES;
    if mcfg.ram_bytes > max {
        return Err(ReplayError::Setup(format!(
            "{} GiB of RAM ({ram_source}) is above the replay machine's limit of {} GiB (frame numbers are 32-bit); pass a smaller --ram",
            mcfg.ram_bytes >> 30,
            max >> 30
        )));
    }
    let saved_cpu = kmem_host::cpu_slot();
    let io_err = |e| ReplayError::Io(path.to_path_buf(), e);
    let trace_err = |e| ReplayError::Trace(path.to_path_buf(), e);
    let mut progress = progress;
    let mut report = |p: Progress| {
        if let Some(f) = progress.as_mut() {
            f(p)
        }
    };

    // Reading and parsing start first: they proceed while the machine is built.
    let mut pipe = None;
    let mut reader = None;
    if cfg.background {
        pipe = Some(pipeline::spawn(path, cfg.mode).map_err(io_err)?);
    } else {
        reader = Some(TraceReader::open(path, cfg.mode).map_err(io_err)?);
    }
    let machine = Machine::new(mcfg).map_err(ReplayError::Machine)?;
    let slab = SlabAllocator::new(machine.pages(), engine::replay_slab_config())
        .map_err(|e| ReplayError::Setup(format!("slab allocator: {e}")))?;
    let vm = kmem_host::vmap::in_memory(&machine)
        .map_err(|e| ReplayError::Setup(format!("vmalloc: {e}")))?;
    let setup_seconds = start.elapsed().as_secs_f64();

    let mut eng = Engine::new(&machine, &slab, &vm, Front::default(), cfg.zero);
    let mut n = 0u64;
    let result: Result<Stats, ReplayError> = if let Some(pipe) = &pipe {
        loop {
            match pipe.recv() {
                Some(Msg::Batch(b)) => {
                    eng.add_names(&b.sites, &b.caches);
                    for ev in &b.events {
                        eng.on_event(ev);
                    }
                    n += b.events.len() as u64;
                    pipe.recycle(b.events);
                    report(Progress {
                        input_bytes: pipe.input_bytes(),
                        events: n,
                    });
                }
                Some(Msg::Done(r)) => break r.map_err(trace_err),
                None => break Err(ReplayError::Setup("the parsing thread died".into())),
            }
        }
    } else {
        let r = reader.as_mut().expect("opened above");
        loop {
            match r.next_line() {
                Ok(Some(Line::Event(rec))) => {
                    eng.on_record(&rec);
                    n += 1;
                    if n & (PROGRESS_EVENTS - 1) == 0 {
                        report(Progress {
                            input_bytes: r.input_bytes(),
                            events: n,
                        });
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break Ok(reader.take().expect("opened above").into_stats()),
                Err(e) => break Err(trace_err(e)),
            }
        }
    };
    kmem_host::set_cpu(saved_cpu);
    let stats = result?;
    drop(pipe);
    let out = eng.finish();
    let caches = cache_rows(&slab, &out);
    let seconds = start.elapsed().as_secs_f64();
    let managed = machine.pages().nr_managed_pages() as u64;
    let machine_info = MachineInfo {
        ram_bytes: machine.config().ram_bytes,
        ram_source,
        nr_cpus: machine.config().nr_cpus,
        managed_pages: managed,
        trace_cpus: 0,
    };
    let kernel = path
        .parent()
        .and_then(|d| std::fs::read_to_string(d.join("kernel")).ok())
        .map(|s| s.trim().to_string());
    let report = build_report(
        path,
        kernel,
        machine_info,
        &stats,
        out,
        caches,
        seconds,
        setup_seconds,
        cfg.rows,
        cfg.zero,
    );
    // The slab allocator's and vmalloc's memory is the machine's RAM, which
    // goes away with the machine: giving every slab and table back to the
    // page allocator first would only cost time. Neither holds host memory.
    std::mem::forget(vm);
    std::mem::forget(slab);
    drop(machine);
    Ok(report)
}

/// slabinfo-like rows of every cache with slabs or traced traffic, largest first.
fn cache_rows(
    slab: &SlabAllocator<'_, kmem_host::HostPlatform>,
    out: &EngineOutput,
) -> Vec<CacheRow> {
    let mut rows = Vec::new();
    slab.for_each_cache(|c| {
        let r = c.slabinfo_row();
        let traced = out.traced_caches.iter().find(|t| t.name == c.name());
        if r.num_slabs == 0 && traced.is_none() {
            return;
        }
        rows.push(CacheRow {
            name: c.name().to_string(),
            active_objs: r.active_objs as u64,
            num_objs: r.num_objs as u64,
            objsize: r.objsize as u64,
            objperslab: r.objperslab,
            pagesperslab: r.pagesperslab,
            num_slabs: r.num_slabs as u64,
            linux_objsize: traced.map(|t| t.linux_size),
            allocs: traced.map(|t| t.allocs),
            frees: traced.map(|t| t.frees),
        });
    });
    rows.sort_by(|a, b| {
        (b.num_slabs * u64::from(b.pagesperslab))
            .cmp(&(a.num_slabs * u64::from(a.pagesperslab)))
            .then(a.name.cmp(&b.name))
    });
    rows
}

#[allow(clippy::too_many_arguments)]
fn build_report(
    path: &Path,
    kernel: Option<String>,
    mut machine: MachineInfo,
    stats: &crate::Stats,
    out: EngineOutput,
    caches: Vec<CacheRow>,
    seconds: f64,
    setup_seconds: f64,
    rows: usize,
    zeroing: bool,
) -> ReplayReport {
    let lines = LineInfo {
        lines: stats.lines,
        text_bytes: stats.bytes,
        events: stats.event_total(),
        comments: stats.comment_lines,
        blank: stats.blank_lines,
        lost_markers: stats.lost_lines,
        ts_backwards: stats.ts_backwards,
        lost_events: stats.lost_events,
        unknown: stats.unknown.iter().cloned().collect(),
        malformed: crate::ErrorKind::ALL
            .iter()
            .filter(|k| stats.skipped_count(**k) > 0)
            .map(|k| (k.name(), stats.skipped_count(*k)))
            .collect(),
        malformed_examples: stats.first_errors.iter().map(|e| e.to_string()).collect(),
        overwritten: stats.header.overwritten(),
        buffer_started: stats.header.buffer_started.clone(),
    };
    let events_by_type = crate::EventKind::ALL
        .iter()
        .filter(|k| out.by_kind[k.index()] > 0)
        .map(|k| (k.name(), out.by_kind[k.index()]))
        .collect();
    let page = kmem::PAGE_SIZE as u64;
    let slab_fp = out.current.slab * page;
    let (req, alloc, kmem_b) = out.slab_live;
    let slab = SlabFootprint {
        footprint_bytes: slab_fp,
        live_requested_bytes: req,
        live_allocated_bytes: alloc,
        live_kmem_bytes: kmem_b,
        utilization: if slab_fp == 0 {
            0.0
        } else {
            req as f64 / slab_fp as f64
        },
        peak_footprint_bytes: out.peak.slab * page,
    };
    let mut frag = FragSummary {
        orders: memory::FRAG_ORDERS,
        last: out.timeline.last().map(|s| s.frag).unwrap_or_default(),
        max_index: [-1.0; 2],
        max_unusable: [0.0; 2],
    };
    for s in &out.timeline {
        for i in 0..2 {
            frag.max_index[i] = frag.max_index[i].max(s.frag.index[i]);
            frag.max_unusable[i] = frag.max_unusable[i].max(s.frag.unusable[i]);
        }
    }
    let ptr_rows = out.ptr_rows.iter().copied();
    let perf_slab = out.perf_slab.report(&out.sites, ptr_rows, rows);
    let perf_page = out.perf_page.report(rows);
    let pages_by = |k: KindPages, total: u64| PagesByKind { kinds: k, total };
    let events = out.acct.events;
    machine.trace_cpus = out.trace_cpus;
    ReplayReport {
        trace: path.display().to_string(),
        kernel,
        machine,
        events,
        seconds,
        setup_seconds,
        events_per_sec: if seconds > 0.0 {
            events as f64 / seconds
        } else {
            0.0
        },
        trace_seconds: out.span_ns as f64 / 1e9,
        lines,
        events_by_type,
        unmatched_frees: out.acct.unmatched_frees,
        accounting: out.acct,
        kmalloc_class_mismatches: out.class_mismatches,
        class_mismatch_examples: out.mismatch_examples,
        migratetype_mismatches: out.migratetype_mismatches,
        failures: out.failures,
        failure_examples: out.failure_examples,
        context_violations: out.context_violations,
        context_violation_sites: out.violation_sites,
        stale_allocations: out.stale_allocations,
        stale_sites: out.stale_sites,
        zeroing,
        cache_name_mismatches: out.cache_name_mismatches,
        page_splits: out.page_splits,
        peak_pages: pages_by(out.peak, out.peak_total),
        final_pages: pages_by(out.current, out.current.total()),
        slab,
        fragmentation: frag,
        timeline: out.timeline,
        caches,
        traced_caches: out.traced_caches,
        size_histogram: out.size_hist,
        order_histogram: out.order_hist,
        perf_slab,
        perf_page,
        warnings: out.warnings,
        warning_examples: out.warning_examples,
    }
}
