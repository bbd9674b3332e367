//! # Analyze: advice per call site, with the trace's evidence
//!
//! [`analyze_file`] reads a trace once (streaming, no replay) and ranks call
//! sites by what a kernel engineer would change:
//!
//! | finding | severity | rule |
//! |---|---|---|
//! | [`FindingKind::BlockingInAtomic`] | bug | a mask with `__GFP_DIRECT_RECLAIM` in atomic context (IRQ, softirq, BH or IRQs off, preemption disabled): Linux's "sleeping function called from invalid context" |
//! | [`FindingKind::CostlyKmalloc`] | robustness | kmalloc of order > 3 (above 32 KiB) with a blocking mask in process context: under fragmentation it stalls in compaction or fails; `kvmalloc` falls back to vmalloc (Linux 6.18: the kmalloc attempt drops direct reclaim above a page, see `kmem::kvmalloc::KvRules::NoReclaim`), unless the buffer goes to a device (DMA needs contiguous memory) |
//! | [`FindingKind::AtomicInProcess`] | check | `GFP_ATOMIC` (`__GFP_HIGH` without direct reclaim) in process context with preemption, IRQs and BH enabled: `GFP_KERNEL` may serve and spares the reserves; marked *check*, since an RCU read side does not show in a trace |
//! | [`FindingKind::SmallVmalloc`] | efficiency | a vmap area for at most one page (guard page excluded): a page and a page-table walk where kmalloc would do; vmap events carry no call site, so the task stands in |
//! | [`FindingKind::Churn`] | efficiency | the kmalloc sites with the highest alloc+free rate: a dedicated `kmem_cache` (exact size, own slabs, per-CPU fast path) serves them better, the more so when the size is fixed |
//!
//! Findings are ranked by severity, then by count. Each carries its
//! evidence: how many events matched out of the site's allocations, the
//! first lines, and the masks, contexts (irq-info column) and tasks seen,
//! with counts. Memory is bounded by the live pointers (for lifetimes) and
//! the number of distinct sites.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use kmem::{ExecContext, Gfp};
use serde::Serialize;

use crate::event::Event;
use crate::line::Common;
use crate::parser::Mode;
use crate::reader::TraceReader;
use crate::replay::hash::FoldMap;
use crate::replay::sites::Interner;

/// `PAGE_ALLOC_COSTLY_ORDER`: orders above it are costly.
pub const COSTLY_ORDER: u32 = kmem::addr::PAGE_ALLOC_COSTLY_ORDER;
/// Lines kept as evidence per finding.
pub const EVIDENCE_LINES: usize = 5;
/// Distinct values (masks, contexts, tasks, sizes) kept per finding.
pub const EVIDENCE_VALUES: usize = 8;
/// Churn findings reported.
pub const CHURN_SITES: usize = 10;

/// What a finding is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// Blocking mask in atomic context.
    BlockingInAtomic,
    /// kmalloc above order 3 in a blocking context.
    CostlyKmalloc,
    /// `GFP_ATOMIC` where `GFP_KERNEL` may serve.
    AtomicInProcess,
    /// vmalloc of at most a page.
    SmallVmalloc,
    /// High alloc/free rate at a kmalloc site.
    Churn,
}

impl FindingKind {
    /// `bug`, `robustness`, `check` or `efficiency`.
    pub const fn severity(self) -> &'static str {
        match self {
            FindingKind::BlockingInAtomic => "bug",
            FindingKind::CostlyKmalloc => "robustness",
            FindingKind::AtomicInProcess => "check",
            FindingKind::SmallVmalloc | FindingKind::Churn => "efficiency",
        }
    }
}

/// Distinct values a [`Tally`] counts before it counts the rest under
/// `others` unseen (bounds the memory of a site with endless task names).
const TALLY_TRACKED: usize = 4096;

/// Values seen with their counts, most frequent first (at most
/// [`EVIDENCE_VALUES`] kept; the rest counted under `others`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// (value, count).
    pub values: Vec<(String, u64)>,
    /// Events whose value was not kept.
    pub others: u64,
    /// Every value's count while events come in (the first
    /// [`TALLY_TRACKED`] distinct values); `sorted` keeps the most frequent.
    #[serde(skip)]
    counts: std::collections::HashMap<String, u64>,
}

impl Tally {
    fn add(&mut self, v: &str) {
        if let Some(n) = self.counts.get_mut(v) {
            *n += 1;
        } else if self.counts.len() < TALLY_TRACKED {
            self.counts.insert(v.to_string(), 1);
        } else {
            self.others += 1;
        }
    }

    /// The most frequent values (at most [`EVIDENCE_VALUES`]), the rest
    /// under `others`.
    fn sorted(mut self) -> Self {
        let mut all: Vec<(String, u64)> = std::mem::take(&mut self.counts).into_iter().collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        self.others += all
            .iter()
            .skip(EVIDENCE_VALUES)
            .map(|(_, n)| n)
            .sum::<u64>();
        all.truncate(EVIDENCE_VALUES);
        self.values = all;
        self
    }

    fn summary(&self) -> String {
        let mut s: Vec<String> = self
            .values
            .iter()
            .map(|(v, n)| format!("{v} ×{n}"))
            .collect();
        if self.others > 0 {
            s.push(format!("others ×{}", self.others));
        }
        s.join(", ")
    }
}

/// Events of one category at one site.
#[derive(Clone, Debug, Default)]
struct Cat {
    count: u64,
    lines: Vec<u64>,
    gfp: Tally,
    contexts: Tally,
    tasks: Tally,
    min_size: u64,
    max_size: u64,
    /// Some event's mask asked for ZONE_DMA or ZONE_DMA32.
    any_dma: bool,
}

impl Cat {
    fn add(&mut self, line: u64, gfp: Option<Gfp>, c: &Common<'_>, size: u64) {
        if self.count == 0 {
            self.min_size = size;
        }
        self.count += 1;
        self.min_size = self.min_size.min(size);
        self.max_size = self.max_size.max(size);
        if self.lines.len() < EVIDENCE_LINES {
            self.lines.push(line);
        }
        if let Some(g) = gfp {
            self.gfp.add(&g.to_string());
            self.any_dma |= g.intersects(Gfp::DMA | Gfp::DMA32);
        }
        let mut ctx = String::new();
        let _ = write!(ctx, "{} ({})", c.flags.raw(), c.ctx);
        self.contexts.add(&ctx);
        self.tasks.add(&c.task_lossy());
    }
}

/// Per call site.
#[derive(Clone, Debug, Default)]
struct Site {
    allocs: u64,
    frees: u64,
    kmalloc: bool,
    cache: Option<u32>,
    bytes_req: u64,
    bytes_alloc: u64,
    min_req: u64,
    max_req: u64,
    sizes: Vec<u64>,
    many_sizes: bool,
    lifetime_ns: u128,
    lifetimes: u64,
    blocking_in_atomic: Cat,
    costly: Cat,
    atomic_in_process: Cat,
    atomic_mask: u64,
}

/// The evidence of a finding.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Evidence {
    /// The first lines of the trace where it shows.
    pub lines: Vec<u64>,
    /// GFP masks seen, with counts.
    pub gfp: Tally,
    /// Contexts seen (irq-info column and its reading), with counts.
    pub contexts: Tally,
    /// Tasks seen, with counts.
    pub tasks: Tally,
    /// Smallest size involved, bytes.
    pub min_bytes: u64,
    /// Largest size involved, bytes.
    pub max_bytes: u64,
    /// Distinct request sizes at the site (`None`: more than [`EVIDENCE_VALUES`]).
    pub distinct_sizes: Option<Vec<u64>>,
    /// Allocations per second of trace time (churn).
    pub allocs_per_sec: Option<f64>,
    /// Frees of the site's allocations seen in the trace.
    pub frees: Option<u64>,
    /// Mean lifetime of the freed ones, microseconds.
    pub mean_lifetime_us: Option<f64>,
    /// Bytes allocated beyond those requested, percent.
    pub waste_pct: Option<f64>,
}

/// One piece of advice.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    /// What.
    pub kind: FindingKind,
    /// `bug`, `robustness`, `check` or `efficiency`.
    pub severity: &'static str,
    /// The call site (or, for vmalloc, `task:NAME`).
    pub site: String,
    /// Events that match.
    pub count: u64,
    /// All allocations at the site.
    pub site_allocs: u64,
    /// What to do.
    pub advice: String,
    /// Why.
    pub evidence: Evidence,
}

/// Everything `kmem analyze` found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AnalyzeReport {
    /// The trace.
    pub trace: String,
    /// Events read.
    pub events: u64,
    /// Malformed lines skipped.
    pub malformed_lines: u64,
    /// Lines read.
    pub lines: u64,
    /// Well-formed lines of other tracers' events.
    pub other_events: u64,
    /// Events with a timestamp earlier than the event before.
    pub ts_backwards: u64,
    /// Trace time covered, seconds.
    pub trace_seconds: f64,
    /// Distinct allocation call sites.
    pub sites: usize,
    /// Findings per kind.
    pub counts: BTreeMap<FindingKind, usize>,
    /// Findings, ranked.
    pub findings: Vec<Finding>,
}

/// Why analysis stopped.
pub type AnalyzeError = crate::Error;

/// True for `GFP_ATOMIC`-style masks: `__GFP_HIGH`, no direct reclaim.
pub fn is_atomic_mask(g: Gfp) -> bool {
    g.contains(Gfp::HIGH) && !g.allows_blocking()
}

/// Process context with preemption, IRQs and bottom halves enabled: where
/// `GFP_KERNEL` is allowed (RCU read sides aside, which a trace cannot show).
pub fn may_block_here(c: &ExecContext) -> bool {
    c.in_task() && c.preempt == 0 && !c.irqs_disabled && c.bh_disabled == 0
}

/// True for call sites inside kvmalloc itself (already falling back).
fn is_kvmalloc(site: &str) -> bool {
    let sym = site.split('+').next().unwrap_or(site);
    sym.contains("kvmalloc") || sym.contains("kvrealloc") || sym.contains("kvzalloc")
}

/// The analysis state, fed one record at a time.
#[derive(Default)]
pub struct Analyzer {
    names: Interner,
    caches: Interner,
    sites: Vec<Site>,
    live: FoldMap<u64, (u32, u64)>,
    small_vmalloc: BTreeMap<String, Cat>,
    page_blocking: Cat,
    events: u64,
    first_ts: Option<u64>,
    last_ts: u64,
}

impl Analyzer {
    /// An empty analyzer.
    pub fn new() -> Self {
        Analyzer::default()
    }

    fn site(&mut self, name: &str) -> (u32, &mut Site) {
        let id = self.names.intern(name);
        let i = id as usize;
        if i >= self.sites.len() {
            self.sites.resize_with(i + 1, Site::default);
        }
        (id, &mut self.sites[i])
    }

    /// Takes one event into account.
    pub fn on_record(&mut self, rec: &crate::Record<'_>) {
        self.events += 1;
        let c = &rec.common;
        self.first_ts.get_or_insert(c.ts_ns);
        self.last_ts = c.ts_ns;
        match &rec.event {
            Event::Kmalloc(k) => {
                let (id, s) = self.site(k.call_site.as_str());
                s.kmalloc = true;
                Self::alloc(s, rec.line, k.gfp, c, k.bytes_req, k.bytes_alloc);
                let costly = k.bytes_alloc > (kmem::PAGE_SIZE as u64) << COSTLY_ORDER;
                if costly && k.gfp.allows_blocking() && !c.ctx.is_atomic() {
                    s.costly.add(rec.line, Some(k.gfp), c, k.bytes_req);
                }
                if k.ptr != 0 {
                    self.live.insert(k.ptr, (id, c.ts_ns));
                }
            }
            Event::KmemCacheAlloc(k) => {
                let cache = self.caches.intern(k.name);
                let (id, s) = self.site(k.call_site.as_str());
                s.cache.get_or_insert(cache);
                Self::alloc(s, rec.line, k.gfp, c, k.bytes_req, k.bytes_alloc);
                if k.ptr != 0 {
                    self.live.insert(k.ptr, (id, c.ts_ns));
                }
            }
            Event::Kfree(f) => self.free(f.ptr, c.ts_ns),
            Event::KmemCacheFree(f) => self.free(f.ptr, c.ts_ns),
            Event::MmPageAlloc(p) if p.gfp.allows_blocking() && c.ctx.is_atomic() => {
                let size = crate::replay::perf::order_bytes(p.order);
                self.page_blocking.add(rec.line, Some(p.gfp), c, size);
            }
            Event::AllocVmapArea(a) => {
                let page = kmem::PAGE_SIZE as u64;
                let usable = if a.size >= 2 * page {
                    a.size - page
                } else {
                    a.size
                };
                if !a.failed && usable <= page {
                    let task = c.task_lossy().into_owned();
                    self.small_vmalloc
                        .entry(task)
                        .or_default()
                        .add(rec.line, None, c, usable);
                }
            }
            _ => {}
        }
    }

    fn alloc(s: &mut Site, line: u64, gfp: Gfp, c: &Common<'_>, req: u64, alloc: u64) {
        if s.allocs == 0 {
            s.min_req = req;
        }
        s.allocs += 1;
        s.bytes_req = s.bytes_req.saturating_add(req);
        s.bytes_alloc = s.bytes_alloc.saturating_add(alloc);
        s.min_req = s.min_req.min(req);
        s.max_req = s.max_req.max(req);
        if !s.many_sizes && !s.sizes.contains(&req) {
            if s.sizes.len() < EVIDENCE_VALUES {
                s.sizes.push(req);
            } else {
                s.many_sizes = true;
            }
        }
        if gfp.allows_blocking() && c.ctx.is_atomic() {
            s.blocking_in_atomic.add(line, Some(gfp), c, req);
        }
        if is_atomic_mask(gfp) {
            s.atomic_mask += 1;
            if may_block_here(&c.ctx) {
                s.atomic_in_process.add(line, Some(gfp), c, req);
            }
        }
    }

    fn free(&mut self, ptr: u64, ts: u64) {
        if let Some((site, at)) = self.live.remove(&ptr) {
            let s = &mut self.sites[site as usize];
            s.frees += 1;
            s.lifetime_ns += u128::from(ts.saturating_sub(at));
            s.lifetimes += 1;
        }
    }

    /// The findings, ranked.
    pub fn report(self, trace: &str, stats: &crate::Stats) -> AnalyzeReport {
        let span = self.last_ts.saturating_sub(self.first_ts.unwrap_or(0));
        let secs = span as f64 / 1e9;
        let mut findings = Vec::new();
        let evidence = |cat: Cat| Evidence {
            lines: cat.lines,
            gfp: cat.gfp.sorted(),
            contexts: cat.contexts.sorted(),
            tasks: cat.tasks.sorted(),
            min_bytes: cat.min_size,
            max_bytes: cat.max_size,
            ..Evidence::default()
        };
        let mut churn: Vec<(f64, Finding)> = Vec::new();
        for (i, s) in self.sites.into_iter().enumerate() {
            let name = self.names.name(i as u32).to_string();
            let allocs = s.allocs;
            let sizes = (!s.many_sizes).then(|| {
                let mut v = s.sizes.clone();
                v.sort_unstable();
                v
            });
            if s.blocking_in_atomic.count > 0 {
                let n = s.blocking_in_atomic.count;
                findings.push(Finding {
                    kind: FindingKind::BlockingInAtomic,
                    severity: FindingKind::BlockingInAtomic.severity(),
                    site: name.clone(),
                    count: n,
                    site_allocs: allocs,
                    advice: format!(
                        "a blocking mask in atomic context ({n} of {allocs} allocations): Linux reports \
                         \"sleeping function called from invalid context\" (with CONFIG_DEBUG_ATOMIC_SLEEP); \
                         allocate before entering the atomic section, or use GFP_ATOMIC / GFP_NOWAIT and handle failure"
                    ),
                    evidence: evidence(s.blocking_in_atomic),
                });
            }
            if s.costly.count > 0 && !is_kvmalloc(&name) {
                let n = s.costly.count;
                let dma = s.costly.any_dma;
                let device = if dma {
                    "the mask asks for DMA memory: if the buffer goes to a device it needs physically contiguous pages and kvmalloc does not apply"
                } else {
                    "unless the buffer goes to a device (DMA needs physically contiguous memory)"
                };
                findings.push(Finding {
                    kind: FindingKind::CostlyKmalloc,
                    severity: FindingKind::CostlyKmalloc.severity(),
                    site: name.clone(),
                    count: n,
                    site_allocs: allocs,
                    advice: format!(
                        "kmalloc above order {COSTLY_ORDER} ({} to {} bytes, {n} times) in a blocking context: \
                         under fragmentation it stalls in reclaim and compaction or fails; kvmalloc/kvfree \
                         (Linux 6.18 drops direct reclaim from the kmalloc attempt above a page and falls back \
                         to vmalloc) makes it robust, {device}",
                        s.costly.min_size, s.costly.max_size
                    ),
                    evidence: evidence(s.costly),
                });
            }
            if s.atomic_in_process.count > 0 {
                let n = s.atomic_in_process.count;
                findings.push(Finding {
                    kind: FindingKind::AtomicInProcess,
                    severity: FindingKind::AtomicInProcess.severity(),
                    site: name.clone(),
                    count: n,
                    site_allocs: allocs,
                    advice: format!(
                        "GFP_ATOMIC in process context with preemption, IRQs and BH enabled ({n} of the site's \
                         {} atomic-mask allocations): GFP_KERNEL may serve there and leaves the atomic reserves \
                         to interrupts; check first: an RCU read-side section (or a caller that is sometimes \
                         atomic) does not show in a trace",
                        s.atomic_mask
                    ),
                    evidence: evidence(s.atomic_in_process),
                });
            }
            if s.kmalloc && allocs > 0 && secs > 0.0 {
                let rate = (allocs + s.frees) as f64 / secs;
                let fixed = s.min_req == s.max_req;
                let shape = if fixed {
                    format!(
                        "every request is {} bytes: kmem_cache_create(\"...\", {}, ...) gives an exact fit",
                        s.min_req, s.min_req
                    )
                } else {
                    format!(
                        "requests from {} to {} bytes: a cache of {} bytes would serve them all",
                        s.min_req, s.max_req, s.max_req
                    )
                };
                let waste = crate::replay::perf::frag_pct(s.bytes_req, s.bytes_alloc);
                let f = Finding {
                    kind: FindingKind::Churn,
                    severity: FindingKind::Churn.severity(),
                    site: name.clone(),
                    count: allocs + s.frees,
                    site_allocs: allocs,
                    advice: format!(
                        "{:.0} kmalloc+kfree per second ({} allocations, {} freed in the trace); {shape}; \
                         a dedicated kmem_cache has its own slabs and per-CPU fast path, and shows in slabinfo",
                        rate, allocs, s.frees
                    ),
                    evidence: Evidence {
                        min_bytes: s.min_req,
                        max_bytes: s.max_req,
                        distinct_sizes: sizes.clone(),
                        allocs_per_sec: Some(allocs as f64 / secs),
                        frees: Some(s.frees),
                        mean_lifetime_us: (s.lifetimes > 0)
                            .then(|| s.lifetime_ns as f64 / s.lifetimes as f64 / 1e3),
                        waste_pct: Some(waste),
                        ..Evidence::default()
                    },
                };
                churn.push((rate, f));
            }
        }
        if self.page_blocking.count > 0 {
            let n = self.page_blocking.count;
            findings.push(Finding {
                kind: FindingKind::BlockingInAtomic,
                severity: FindingKind::BlockingInAtomic.severity(),
                site: "(mm_page_alloc: page events carry no call site)".into(),
                count: n,
                site_allocs: n,
                advice: "page allocations with a blocking mask in atomic context: see the tasks and lines \
                         to find the caller"
                    .into(),
                evidence: evidence(self.page_blocking),
            });
        }
        for (task, cat) in self.small_vmalloc {
            let n = cat.count;
            findings.push(Finding {
                kind: FindingKind::SmallVmalloc,
                severity: FindingKind::SmallVmalloc.severity(),
                site: format!("task:{task}"),
                count: n,
                site_allocs: n,
                advice: "vmap areas of at most one page (plus the guard page): a page, page-table entries \
                         and a TLB flush at free where kmalloc would do; use kmalloc, or kvmalloc if the size \
                         varies (vmap events carry no call site: the task stands in)"
                    .into(),
                evidence: evidence(cat),
            });
        }
        // Rank: severity (the kind order), then count; churn last, by rate.
        findings.sort_by(|a, b| {
            a.kind
                .cmp(&b.kind)
                .then(b.count.cmp(&a.count))
                .then(a.site.cmp(&b.site))
        });
        churn.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.site.cmp(&b.1.site)));
        findings.extend(churn.into_iter().take(CHURN_SITES).map(|(_, f)| f));
        let mut counts = BTreeMap::new();
        for f in &findings {
            *counts.entry(f.kind).or_insert(0) += 1;
        }
        AnalyzeReport {
            trace: trace.to_string(),
            events: self.events,
            malformed_lines: stats.skipped_total(),
            lines: stats.lines,
            other_events: stats.unknown_lines,
            ts_backwards: stats.ts_backwards,
            trace_seconds: secs,
            sites: self.names.len(),
            counts,
            findings,
        }
    }
}

/// Reads the trace at `path` and analyses it.
pub fn analyze_file(path: &Path, mode: Mode) -> Result<AnalyzeReport, AnalyzeError> {
    let mut reader = TraceReader::open_background(path, mode)?;
    let mut a = Analyzer::new();
    reader.for_each_event(|rec| a.on_record(rec))?;
    let stats = reader.into_stats();
    Ok(a.report(&path.display().to_string(), &stats))
}

impl AnalyzeReport {
    /// As one JSON object.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report serialises")
    }

    /// As text.
    pub fn to_text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "kmem analyze {}: {} events over {:.3} s, {} allocation call sites{}",
            self.trace,
            self.events,
            self.trace_seconds,
            self.sites,
            if self.malformed_lines > 0 {
                format!(", {} malformed lines skipped", self.malformed_lines)
            } else {
                String::new()
            }
        );
        if self.other_events > 0 {
            let _ = writeln!(
                o,
                "  {} lines of other tracers' events skipped",
                self.other_events
            );
        }
        if self.ts_backwards > 0 {
            let _ = writeln!(
                o,
                "  {}",
                crate::replay::report::backwards_note(self.ts_backwards)
            );
        }
        let kinds = [
            (
                FindingKind::BlockingInAtomic,
                "blocking GFP in atomic context (bug)",
            ),
            (
                FindingKind::CostlyKmalloc,
                "costly-order kmalloc in a blocking context (use kvmalloc?)",
            ),
            (
                FindingKind::AtomicInProcess,
                "GFP_ATOMIC where GFP_KERNEL may serve (check)",
            ),
            (FindingKind::SmallVmalloc, "vmalloc of at most a page"),
            (
                FindingKind::Churn,
                "churn hot spots (a dedicated kmem_cache?)",
            ),
        ];
        let _ = writeln!(o);
        for (k, label) in kinds {
            let _ = writeln!(
                o,
                "  {:>4}  {label}",
                self.counts.get(&k).copied().unwrap_or(0)
            );
        }
        let mut rank = 0;
        for (k, label) in kinds {
            let fs: Vec<&Finding> = self.findings.iter().filter(|f| f.kind == k).collect();
            let _ = writeln!(o, "\n== {label}");
            if fs.is_empty() {
                let _ = writeln!(o, "   none in this trace");
                continue;
            }
            for f in fs {
                rank += 1;
                let _ = writeln!(
                    o,
                    "{rank:>3}. [{}] {}: {} event{} (site allocations: {})",
                    f.severity,
                    f.site,
                    f.count,
                    if f.count == 1 { "" } else { "s" },
                    f.site_allocs
                );
                let _ = writeln!(o, "     {}", f.advice);
                let e = &f.evidence;
                if !e.lines.is_empty() {
                    let l: Vec<String> = e.lines.iter().map(|l| l.to_string()).collect();
                    let _ = writeln!(o, "     lines: {}", l.join(", "));
                }
                if !e.gfp.values.is_empty() {
                    let _ = writeln!(o, "     gfp: {}", e.gfp.summary());
                }
                if !e.contexts.values.is_empty() {
                    let _ = writeln!(o, "     context: {}", e.contexts.summary());
                }
                if !e.tasks.values.is_empty() {
                    let _ = writeln!(o, "     tasks: {}", e.tasks.summary());
                }
                if let Some(r) = e.allocs_per_sec {
                    let sizes = match &e.distinct_sizes {
                        Some(v) => v
                            .iter()
                            .map(|s| s.to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                        None => format!("more than {EVIDENCE_VALUES} distinct"),
                    };
                    let _ = writeln!(
                        o,
                        "     {r:.0} allocs/s, sizes {sizes} (range {}..{}), waste {:.1}%, mean lifetime {}",
                        e.min_bytes,
                        e.max_bytes,
                        e.waste_pct.unwrap_or(0.0),
                        e.mean_lifetime_us
                            .map_or("unknown (no frees seen)".to_string(), |us| format!("{us:.1} us"))
                    );
                }
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Line, Parser};

    fn feed(lines: &[&str]) -> AnalyzeReport {
        let mut p = Parser::new(Mode::Strict);
        let mut a = Analyzer::new();
        for l in lines {
            if let Line::Event(r) = p.parse_line(l.as_bytes()).unwrap() {
                a.on_record(&r);
            }
        }
        a.report("test", &crate::Stats::default())
    }

    #[test]
    fn each_rule_fires() {
        let r = feed(&[
            // Blocking mask with IRQs off: a bug.
            "  t-1 [000] d....   1.000000: kmalloc: call_site=bad+0x1/0x10 ptr=ffff888100000000 bytes_req=64 bytes_alloc=64 gfp_flags=GFP_KERNEL node=-1 accounted=false",
            // 64 KiB (order 4) with GFP_KERNEL in process context: costly.
            "  t-1 [000] .....   1.000001: kmalloc: call_site=big+0x1/0x10 ptr=ffff888100100000 bytes_req=40000 bytes_alloc=65536 gfp_flags=GFP_KERNEL node=-1 accounted=false",
            // ... unless it is kvmalloc's own attempt.
            "  t-1 [000] .....   1.000002: kmalloc: call_site=__kvmalloc_node_noprof+0x1/0x10 ptr=ffff888100200000 bytes_req=40000 bytes_alloc=65536 gfp_flags=GFP_KERNEL node=-1 accounted=false",
            // GFP_ATOMIC in plain process context: check.
            "  t-1 [000] .....   1.000003: kmem_cache_alloc: call_site=atom+0x1/0x10 ptr=ffff888100300000 name=foo bytes_req=32 bytes_alloc=32 gfp_flags=GFP_ATOMIC node=-1 accounted=false",
            // GFP_ATOMIC in softirq: fine.
            "  t-1 [000] ..s1.   1.000004: kmem_cache_alloc: call_site=atom+0x1/0x10 ptr=ffff888100300040 name=foo bytes_req=32 bytes_alloc=32 gfp_flags=GFP_ATOMIC node=-1 accounted=false",
            // A one-page vmalloc (plus guard).
            "  t-1 [000] .....   1.000005: alloc_vmap_area: va_start: 18446683600644456448 size=8192 align=4096 vstart=0xffffc90000000000 vend=0xffffe8ffffffffff failed=0",
            "  t-1 [000] .....   1.000006: kfree: call_site=x+0x1/0x2 ptr=ffff888100000000",
        ]);
        let kinds: Vec<FindingKind> = r.findings.iter().map(|f| f.kind).collect();
        assert_eq!(kinds[0], FindingKind::BlockingInAtomic);
        assert_eq!(r.findings[0].site, "bad+0x1/0x10");
        let costly: Vec<&Finding> = r
            .findings
            .iter()
            .filter(|f| f.kind == FindingKind::CostlyKmalloc)
            .collect();
        assert_eq!(costly.len(), 1);
        assert_eq!(costly[0].site, "big+0x1/0x10");
        let atomic: Vec<&Finding> = r
            .findings
            .iter()
            .filter(|f| f.kind == FindingKind::AtomicInProcess)
            .collect();
        assert_eq!(atomic.len(), 1);
        assert_eq!((atomic[0].count, atomic[0].site_allocs), (1, 2));
        let small: Vec<&Finding> = r
            .findings
            .iter()
            .filter(|f| f.kind == FindingKind::SmallVmalloc)
            .collect();
        assert_eq!(small[0].site, "task:t");
        let churn: Vec<&Finding> = r
            .findings
            .iter()
            .filter(|f| f.kind == FindingKind::Churn)
            .collect();
        assert!(churn
            .iter()
            .any(|f| f.site == "bad+0x1/0x10" && f.evidence.frees == Some(1)));
        assert!(r.to_text().contains("none in this trace") || r.counts.len() == 5);
    }
}
