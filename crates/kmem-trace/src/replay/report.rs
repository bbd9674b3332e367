//! The replay's result: one [`ReplayReport`], printed as text or JSON.
//!
//! The JSON object (`--json`) is the report serialised field by field; the
//! keys the issue names are top-level: `events`, `seconds`,
//! `events_per_sec`, `kmalloc_class_mismatches`, `failures`,
//! `context_violations`, `unmatched_frees`, `peak_pages` (by kind). The text
//! form prints the same facts in sections, tables last: events and where
//! they went, conformance, failures, context, memory by kind, slab
//! footprint, fragmentation, caches (slabinfo-like), then perf's tables.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use super::engine::{Accounting, ClassMismatch, Example, TracedCache, ViolationSite};
use super::meminfo::RamSource;
use super::memory::{Fragmentation, KindPages, Sample, FRAG_ORDERS};
use super::perf::{self, PerfPageReport, PerfSlabReport};

/// The replay machine.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MachineInfo {
    /// RAM given to the machine, in bytes.
    pub ram_bytes: u64,
    /// Where that size came from.
    pub ram_source: RamSource,
    /// CPUs.
    pub nr_cpus: usize,
    /// Pages the page allocator manages.
    pub managed_pages: u64,
    /// One more than the highest CPU number of the trace's events; above
    /// `nr_cpus`, CPU k ran as CPU k % `nr_cpus` (the text report says so).
    pub trace_cpus: u64,
}

/// How the trace's lines were classified.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LineInfo {
    /// Lines read.
    pub lines: u64,
    /// Bytes of text.
    pub text_bytes: u64,
    /// Event lines.
    pub events: u64,
    /// `#` lines.
    pub comments: u64,
    /// Blank lines.
    pub blank: u64,
    /// `CPU:N [LOST M EVENTS]` lines.
    pub lost_markers: u64,
    /// Event lines with a timestamp earlier than the line before.
    pub ts_backwards: u64,
    /// Events those lines say were lost.
    pub lost_events: u64,
    /// Well-formed lines of other event types, by name.
    pub unknown: BTreeMap<String, u64>,
    /// Malformed lines skipped, by reason.
    pub malformed: BTreeMap<&'static str, u64>,
    /// The first malformed line of each reason.
    pub malformed_examples: Vec<String>,
    /// Events the ring buffer overwrote (`entries-written - entries-in-buffer`).
    pub overwritten: Option<u64>,
    /// `CPU N buffer started` markers: (CPU, line).
    pub buffer_started: Vec<(u32, u64)>,
}

/// Pages by kind with their total.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PagesByKind {
    /// By kind.
    #[serde(flatten)]
    pub kinds: KindPages,
    /// All kinds.
    pub total: u64,
}

/// Slab footprint against what it holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct SlabFootprint {
    /// Bytes of kmem's slab pages at the end.
    pub footprint_bytes: u64,
    /// Bytes the live traced objects asked for.
    pub live_requested_bytes: u64,
    /// Bytes Linux gave them (`bytes_alloc`).
    pub live_allocated_bytes: u64,
    /// Bytes kmem gave them (object sizes).
    pub live_kmem_bytes: u64,
    /// `live_requested_bytes / footprint_bytes`.
    pub utilization: f64,
    /// Largest slab footprint seen, bytes.
    pub peak_footprint_bytes: u64,
}

/// One cache, slabinfo-like, with what the trace did to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CacheRow {
    /// Name.
    pub name: String,
    /// Allocated objects (slabinfo's `active_objs`).
    pub active_objs: u64,
    /// Objects in slabs.
    pub num_objs: u64,
    /// Stride.
    pub objsize: u64,
    /// Objects per slab.
    pub objperslab: u32,
    /// Pages per slab.
    pub pagesperslab: u32,
    /// Slabs.
    pub num_slabs: u64,
    /// Linux's stride from the trace (named caches only).
    pub linux_objsize: Option<u64>,
    /// Allocations replayed into it (named caches only).
    pub allocs: Option<u64>,
    /// Frees replayed (named caches only).
    pub frees: Option<u64>,
}

/// Fragmentation over the replay.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FragSummary {
    /// The orders of the index columns.
    pub orders: [u32; 2],
    /// At the end.
    pub last: Fragmentation,
    /// Highest fragmentation index seen per order (-1: a block was always free).
    pub max_index: [f64; 2],
    /// Highest unusable free space index seen per order.
    pub max_unusable: [f64; 2],
}

/// Everything a replay found; see the module comment.
#[derive(Clone, Debug, Serialize)]
pub struct ReplayReport {
    /// The trace file.
    pub trace: String,
    /// The traced kernel's release, from the `kernel` file beside the trace.
    pub kernel: Option<String>,
    /// The replay machine.
    pub machine: MachineInfo,
    /// Events in the trace.
    pub events: u64,
    /// Wall time of the whole replay, machine set-up included.
    pub seconds: f64,
    /// Of which building the machine.
    pub setup_seconds: f64,
    /// `events / seconds`.
    pub events_per_sec: f64,
    /// Trace time covered, first to last event, seconds.
    pub trace_seconds: f64,
    /// Lines.
    pub lines: LineInfo,
    /// Events by type.
    pub events_by_type: BTreeMap<&'static str, u64>,
    /// Where each event went.
    pub accounting: Accounting,
    /// Frees of allocations not in the trace.
    pub unmatched_frees: u64,
    /// kmalloc events whose kmem class size is not the trace's `bytes_alloc`.
    pub kmalloc_class_mismatches: u64,
    /// The first of them.
    pub class_mismatch_examples: Vec<ClassMismatch>,
    /// Page allocations whose migrate type (kmem's, from the GFP mask) is
    /// not the trace's.
    pub migratetype_mismatches: u64,
    /// Failures of kmem, by "call: reason".
    pub failures: BTreeMap<String, u64>,
    /// The first of them.
    pub failure_examples: Vec<Example>,
    /// Blocking allocations in atomic context.
    pub context_violations: u64,
    /// By site.
    pub context_violation_sites: Vec<ViolationSite>,
    /// Allocations at a pointer or pfn still live: its free is not in the
    /// trace (lost, or made by a path without a tracepoint: bulk and RCU
    /// sheaf frees); the old allocation is freed first.
    pub stale_allocations: u64,
    /// Those by the site whose object's free never showed, most first.
    pub stale_sites: Vec<(String, u64)>,
    /// `__GFP_ZERO` honoured (`--zero`).
    pub zeroing: bool,
    /// `kmem_cache_free` naming another cache than the allocation's.
    pub cache_name_mismatches: u64,
    /// Page blocks split because the trace freed them piecewise.
    pub page_splits: u64,
    /// Peak pages by kind (each kind's own peak; `total` the peak of the sum).
    pub peak_pages: PagesByKind,
    /// Pages by kind at the end.
    pub final_pages: PagesByKind,
    /// Slab footprint against live bytes.
    pub slab: SlabFootprint,
    /// Fragmentation.
    pub fragmentation: FragSummary,
    /// Samples over trace time.
    pub timeline: Vec<Sample>,
    /// Caches with slabs or traffic, slabinfo-like, largest first.
    pub caches: Vec<CacheRow>,
    /// The caches the trace named, as laid out in kmem.
    pub traced_caches: Vec<TracedCache>,
    /// Slab allocation sizes: `[0]` 0 bytes, `[1]` 1 byte, `[i]` (i >= 2)
    /// `2^(i-2)+1 ..= 2^(i-1)` bytes.
    pub size_histogram: Vec<u64>,
    /// Page allocations by order.
    pub order_histogram: Vec<u64>,
    /// `perf kmem stat --caller --alloc`.
    pub perf_slab: PerfSlabReport,
    /// `perf kmem stat --page --alloc`.
    pub perf_page: PerfPageReport,
    /// Warnings kmem logged (context violations, refused frees, ...).
    pub warnings: u64,
    /// The first of them.
    pub warning_examples: Vec<String>,
}

fn mib(pages: u64) -> f64 {
    pages as f64 * 4096.0 / (1 << 20) as f64
}

impl ReplayReport {
    /// The report as one JSON object.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report serialises")
    }

    /// The report as text.
    pub fn to_text(&self) -> String {
        let mut o = String::new();
        self.write_text(&mut o);
        o
    }

    fn write_text(&self, o: &mut String) {
        let m = &self.machine;
        let _ = writeln!(o, "kmem replay {}", self.trace);
        if let Some(k) = &self.kernel {
            let _ = writeln!(o, "  recorded on Linux {k}");
        }
        let src = &m.ram_source;
        let ram = if m.ram_bytes >= 1 << 30 {
            format!("{:.1} GiB", m.ram_bytes as f64 / (1u64 << 30) as f64)
        } else {
            format!("{} MiB", m.ram_bytes >> 20)
        };
        let _ = writeln!(
            o,
            "  machine: {ram} ({src}), {} CPUs, {} pages managed",
            m.nr_cpus, m.managed_pages
        );
        if m.trace_cpus as usize > m.nr_cpus {
            let _ = writeln!(
                o,
                "  note: the trace's events name CPUs 0-{}, the machine has {1}: CPU k ran as CPU k % {1}",
                m.trace_cpus - 1,
                m.nr_cpus
            );
        }
        let _ = writeln!(
            o,
            "  {} events over {:.3} s of trace time, replayed in {:.3} s ({:.3} s machine set-up): {:.2} M events/s",
            self.events,
            self.trace_seconds,
            self.seconds,
            self.setup_seconds,
            self.events_per_sec / 1e6
        );
        let l = &self.lines;
        let _ = writeln!(
            o,
            "  {} lines, {:.1} MB of text: {} events, {} comments, {} blank, {} lost markers ({} events lost), {} unknown, {} malformed",
            l.lines,
            l.text_bytes as f64 / 1e6,
            l.events,
            l.comments,
            l.blank,
            l.lost_markers,
            l.lost_events,
            l.unknown.values().sum::<u64>(),
            l.malformed.values().sum::<u64>()
        );
        for (k, n) in &l.malformed {
            let _ = writeln!(o, "    malformed, {k}: {n}");
        }
        for e in &l.malformed_examples {
            let _ = writeln!(o, "      e.g. {e}");
        }
        if let Some(ov) = l.overwritten.filter(|&n| n > 0) {
            let _ = writeln!(
                o,
                "  the ring buffer overwrote {ov} events before this trace was read: expect unmatched frees"
            );
        }
        if l.ts_backwards > 0 {
            let _ = writeln!(o, "  {}", backwards_note(l.ts_backwards));
        }
        for (cpu, line) in &l.buffer_started {
            let _ = writeln!(o, "  CPU {cpu}'s events start at line {line}");
        }

        let _ = writeln!(o, "\nEvents by type");
        for (k, n) in &self.events_by_type {
            let _ = writeln!(o, "  {k:<26} {n:>10}");
        }
        let a = &self.accounting;
        let _ = writeln!(
            o,
            "\nWhere each event went ({} of {} accounted for)",
            a.accounted(),
            a.events
        );
        let _ = writeln!(o, "  replayed through kmem      {:>10}", a.replayed);
        let _ = writeln!(
            o,
            "  unmatched frees            {:>10}  (allocated before the trace began, or lost)",
            a.unmatched_frees
        );
        let _ = writeln!(
            o,
            "  duplicate frees            {:>10}  (mm_page_free_batched repeating mm_page_free)",
            a.duplicate_frees
        );
        let _ = writeln!(o, "  kfree(NULL)                {:>10}", a.kfree_null);
        let _ = writeln!(o, "  skipped                    {:>10}", a.skipped);
        for (why, n) in &a.skipped_by_reason {
            let _ = writeln!(o, "    {n:>10}  {why}");
        }
        let _ = writeln!(
            o,
            "  also: {} kmem_cache_free naming another cache, {} page blocks split (freed piecewise)",
            self.cache_name_mismatches, self.page_splits
        );
        if self.stale_allocations > 0 {
            let _ = writeln!(
                o,
                "  {} allocations reused a pointer/pfn still live in the replay: its free is not in the trace\n  (lost, or freed by a path without a tracepoint such as bulk or RCU-sheaf frees); the old one is freed first. By site:",
                self.stale_allocations
            );
            for (site, n) in self.stale_sites.iter().take(5) {
                let _ = writeln!(o, "    {n:>10}  {site}");
            }
        }
        if !self.zeroing {
            let _ = writeln!(
                o,
                "  __GFP_ZERO not honoured (replay never reads memory; --zero honours it)"
            );
        }

        let _ = writeln!(o, "\nConformance");
        let _ = writeln!(
            o,
            "  kmalloc class size = Linux's bytes_alloc: {} mismatches",
            self.kmalloc_class_mismatches
        );
        for e in &self.class_mismatch_examples {
            let _ = writeln!(
                o,
                "    line {}: {} kmalloc({}) Linux {} kmem {}",
                e.line, e.call_site, e.bytes_req, e.linux_bytes_alloc, e.kmem_bytes_alloc
            );
        }
        let _ = writeln!(
            o,
            "  page migrate type from the GFP mask = the trace's: {} mismatches",
            self.migratetype_mismatches
        );
        let diff: Vec<&TracedCache> = self
            .traced_caches
            .iter()
            .filter(|c| c.kmem_size != c.linux_size)
            .collect();
        let _ = writeln!(
            o,
            "  named caches laid out with Linux's stride: {} of {}",
            self.traced_caches.len() - diff.len(),
            self.traced_caches.len()
        );
        for c in diff {
            let _ = writeln!(
                o,
                "    {}: object {} stride Linux {} kmem {}",
                c.name, c.linux_object_size, c.linux_size, c.kmem_size
            );
        }

        let _ = writeln!(
            o,
            "\nFailures (kmem's answer was an error): {}",
            self.failures.values().sum::<u64>()
        );
        for (k, n) in &self.failures {
            let _ = writeln!(o, "  {n:>10}  {k}");
        }
        for e in self.failure_examples.iter().take(5) {
            let _ = writeln!(o, "    e.g. line {}: {} {}", e.line, e.event, e.what);
        }
        let _ = writeln!(
            o,
            "\nContext: {} blocking allocations in atomic context (reported, then served as Linux did)",
            self.context_violations
        );
        for v in self.context_violation_sites.iter().take(10) {
            let _ = writeln!(
                o,
                "  {:>8}  {}  {} in {} (first at line {})",
                v.count, v.site, v.gfp, v.context, v.first_line
            );
        }

        let _ = writeln!(o, "\nMemory by kind, MiB (pages from mm_page_alloc by migrate type; slab, kmalloc-large and vmalloc are kmem's own)");
        let _ = writeln!(o, "  {:<15} {:>10} {:>10}", "kind", "peak", "final");
        for ((name, p), f) in KindPages::NAMES
            .iter()
            .zip(self.peak_pages.kinds.as_array())
            .zip(self.final_pages.kinds.as_array())
        {
            let _ = writeln!(o, "  {name:<15} {:>10.2} {:>10.2}", mib(p), mib(f));
        }
        let _ = writeln!(
            o,
            "  {:<15} {:>10.2} {:>10.2}",
            "total",
            mib(self.peak_pages.total),
            mib(self.final_pages.total)
        );
        let s = &self.slab;
        let _ = writeln!(
            o,
            "\nSlab footprint {:.2} MiB (peak {:.2} MiB) holds live objects of {:.2} MiB requested, {:.2} MiB as Linux sized them, {:.2} MiB as kmem did: {:.1}% used",
            s.footprint_bytes as f64 / (1 << 20) as f64,
            s.peak_footprint_bytes as f64 / (1 << 20) as f64,
            s.live_requested_bytes as f64 / (1 << 20) as f64,
            s.live_allocated_bytes as f64 / (1 << 20) as f64,
            s.live_kmem_bytes as f64 / (1 << 20) as f64,
            s.utilization * 100.0
        );

        let f = &self.fragmentation;
        let _ = writeln!(
            o,
            "\nFragmentation (Linux's extfrag index, -1 = a free block exists; unusable free space index), {} samples",
            self.timeline.len()
        );
        for (i, ord) in FRAG_ORDERS.iter().enumerate() {
            let _ = writeln!(
                o,
                "  order {ord}: index now {:.3}, max {:.3}; unusable now {:.3}, max {:.3}",
                f.last.index[i], f.max_index[i], f.last.unusable[i], f.max_unusable[i]
            );
        }
        let _ = writeln!(
            o,
            "  free pages on buddy lists at the end: {}, largest free order {}",
            f.last.free_pages,
            f.last
                .largest_free_order
                .map_or("-".to_string(), |o| o.to_string())
        );
        let step = (self.timeline.len() / 8).max(1);
        let _ = writeln!(
            o,
            "  {:>9} {:>10} {:>9} {:>9} {:>9}",
            "t (s)", "MiB used", "idx o3", "idx o9", "unus o9"
        );
        for smp in self.timeline.iter().step_by(step) {
            let _ = writeln!(
                o,
                "  {:>9.3} {:>10.2} {:>9.3} {:>9.3} {:>9.3}",
                smp.t,
                mib(smp.pages.total()),
                smp.frag.index[0],
                smp.frag.index[1],
                smp.frag.unusable[1]
            );
        }

        let _ = writeln!(
            o,
            "\nCaches (slabinfo; Linux objsize from the trace where it names the cache)"
        );
        let _ = writeln!(
            o,
            "  {:<24} {:>9} {:>9} {:>7} {:>7} {:>5} {:>4} {:>8} {:>9} {:>9}",
            "name", "active", "objs", "objsize", "linux", "/slab", "pg", "slabs", "allocs", "frees"
        );
        for c in self.caches.iter().take(30) {
            let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
            let _ = writeln!(
                o,
                "  {:<24} {:>9} {:>9} {:>7} {:>7} {:>5} {:>4} {:>8} {:>9} {:>9}",
                c.name,
                c.active_objs,
                c.num_objs,
                c.objsize,
                opt(c.linux_objsize),
                c.objperslab,
                c.pagesperslab,
                c.num_slabs,
                opt(c.allocs),
                opt(c.frees)
            );
        }
        if self.caches.len() > 30 {
            let _ = writeln!(o, "  ... {} more", self.caches.len() - 30);
        }

        let _ = writeln!(
            o,
            "\nAllocation sizes (kmalloc and kmem_cache_alloc bytes_req)"
        );
        for (i, n) in self
            .size_histogram
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
        {
            let label = match i {
                0 => "0".to_string(),
                1 => "1".to_string(),
                2 => "2".to_string(),
                i => format!("{}..{}", (1u64 << (i - 2)) + 1, 1u64 << (i - 1)),
            };
            let _ = writeln!(o, "  {label:>17} {n:>10}");
        }

        let _ = writeln!(o, "\nperf kmem stat --caller --alloc (same definitions)");
        perf::write_slab(o, &self.perf_slab);
        let _ = writeln!(o, "\nperf kmem stat --page --alloc (same definitions)");
        perf::write_page(o, &self.perf_page);
        if self.warnings > 0 {
            let _ = writeln!(o, "\nkmem logged {} warnings; the first:", self.warnings);
            for w in self.warning_examples.iter().take(3) {
                let first = w.lines().next().unwrap_or("");
                let _ = writeln!(o, "  {first}");
            }
        }
    }
}

/// The note for a trace whose time runs backwards `n` times.
pub fn backwards_note(n: u64) -> String {
    format!(
        "note: {n} events carry a timestamp earlier than the event before (ftrace prints in time order: \
         concatenated or reordered traces?); trace time, rates and lifetimes are unreliable"
    )
}
