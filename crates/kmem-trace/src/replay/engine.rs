//! The replay engine: one trace event in, one call into the kmem stack out.
//!
//! ```text
//!  Record ─► CPU (set_cpu) ─► context (enter(ctx)) ─► by event:
//!    kmalloc              perf rows, class check ─► SlabAllocator::kmalloc_node ─► objs[ptr]
//!    kmem_cache_alloc     cache of that name (created on first use) ─► KmemCache::alloc_node
//!    kfree / cache_free   objs[ptr] live? ─► kfree / KmemCache::free_at, else unmatched
//!    mm_page_alloc        PageAllocator::alloc_pages_node ─► pages[pfn]
//!    mm_page_free         pages[pfn] live? ─► free_pages (split first if freed piecewise)
//!    mm_page_free_batched pages[pfn] just freed? ─► duplicate, else as mm_page_free
//!    alloc_vmap_area      Vmalloc::vmalloc_node_range (size less the guard page) ─► vmaps[va]
//!    free_vmap_area_*     vmaps[va] live? ─► vfree
//!    purge_vmap_area_lazy Vmalloc::purge
//! ```
//!
//! Maps are keyed by what the trace prints (pointer, pfn, `va_start`) and
//! hold what kmem returned for it. Each event ends in exactly one bucket of
//! [`Accounting`]: replayed, unmatched free, duplicate free, `kfree(NULL)`,
//! or skipped with a reason; the buckets add up to the events.
//!
//! Special cases, all from the real traces:
//! - `mm_page_free_batched` repeats an `mm_page_free` of the same page
//!   (`free_unref_folios` traces both): a page entry stays after its free,
//!   marked *awaiting batched*, and the batched event is a duplicate. Only a
//!   batched event with no such free is a free of its own.
//! - a pointer or pfn allocated while the map says it is still live: its free
//!   was lost (ring-buffer overflow); the old allocation is freed first and
//!   counted in `stale_allocations`.
//! - pages allocated at order N and freed piecewise (`split_page`): the block
//!   is split in kmem too, and each page is then freed on its own.
//! - allocations Linux failed (NULL result) are not replayed: nothing would
//!   free them.

use std::collections::BTreeMap;
use std::panic::Location;

use kmem::addr::{Pfn, PAGE_SIZE};
use kmem::error::AllocError;
use kmem::page::PageAllocator;
use kmem::paging::{PteFlags, X86PageTables};
use kmem::slab::{
    kmalloc::kmalloc_size_roundup, KmemCache, Layout, SlabAllocator, SlabConfig, SlabFlags,
    KMALLOC_MAX_CACHE_SIZE, KMALLOC_MAX_SIZE,
};
use kmem::vmalloc::{VmFlags, Vmalloc, VmallocError};
use kmem::{ExecContext, Gfp};
use kmem_host::{HostPlatform, Machine};
use serde::Serialize;

use super::ev::{Ev, EvKind, Front};
use super::hash::FoldMap;
use super::memory::{self, KindPages, Sample, Timeline, SLAB_SAMPLE_EVENTS};
use super::perf::{PerfLive, PerfPage, PerfRow, PerfSlab, SlabStat};
use super::sites::Interner;
use crate::parser::Record;

/// vmalloc over the in-memory x86-64 page tables.
pub type MemVmalloc<'m> = Vmalloc<'m, HostPlatform, X86PageTables<'m, HostPlatform>>;

/// Examples kept per list (mismatches, failures, violations).
pub const MAX_EXAMPLES: usize = 20;

/// Cache index of an object from `kmalloc` (small: a kmalloc cache).
const KMALLOC: u16 = u16::MAX;
/// Cache index of a large `kmalloc` block.
const KMALLOC_LARGE: u16 = u16::MAX - 1;
/// `stale_by_site` key of pages.
const STALE_PAGES: u32 = u32::MAX;
/// `stale_by_site` key of vmap areas.
const STALE_VMAP: u32 = u32::MAX - 1;
/// A cache name not looked at yet (in `cache_of_name`).
const UNSEEN: u16 = u16::MAX - 2;

/// Where each event ended; the buckets add up to `events`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Accounting {
    /// Events seen.
    pub events: u64,
    /// Events driven through kmem (kmem's answer may have been a failure).
    pub replayed: u64,
    /// Frees of allocations the trace does not show (made before it began,
    /// or lost in a ring-buffer overflow).
    pub unmatched_frees: u64,
    /// `mm_page_free_batched` repeating an `mm_page_free`.
    pub duplicate_frees: u64,
    /// `kfree(NULL)` and `kmem_cache_free(NULL)`: no-ops.
    pub kfree_null: u64,
    /// Events not replayed, total of `skipped_by_reason`.
    pub skipped: u64,
    /// Events not replayed, by reason.
    pub skipped_by_reason: BTreeMap<&'static str, u64>,
}

impl Accounting {
    /// Sum of the buckets: equals `events` after a replay.
    pub fn accounted(&self) -> u64 {
        self.replayed + self.unmatched_frees + self.duplicate_frees + self.kfree_null + self.skipped
    }
}

/// Reason: the allocation failed in Linux.
pub const SKIP_LINUX_FAILED: &str = "failed in Linux (NULL result): nothing to replay";
/// Reason: an event internal to the page allocator.
pub const SKIP_INTERNAL: &str = "page allocator internals (kmem runs its own pcp lists)";
/// Reason: the cache could not be created.
pub const SKIP_NO_CACHE: &str = "cache could not be created";

/// A kmalloc whose class size differs from the trace's `bytes_alloc`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClassMismatch {
    /// Line in the trace.
    pub line: u64,
    /// Call site.
    pub call_site: String,
    /// Size asked for.
    pub bytes_req: u64,
    /// What Linux gave.
    pub linux_bytes_alloc: u64,
    /// What kmem gives.
    pub kmem_bytes_alloc: u64,
}

/// An example of something that went wrong, with its line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Example {
    /// Line in the trace.
    pub line: u64,
    /// Event type.
    pub event: &'static str,
    /// What happened.
    pub what: String,
}

/// A call site that made blocking allocations in atomic context.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ViolationSite {
    /// Call site (or `mm_page_alloc` / `alloc_vmap_area`: no call site).
    pub site: String,
    /// Violations.
    pub count: u64,
    /// First line.
    pub first_line: u64,
    /// Its context, in words.
    pub context: String,
    /// Its GFP mask.
    pub gfp: String,
}

/// A cache created for `kmem_cache_*` events.
struct CacheSlot<'r> {
    cache: &'r KmemCache<HostPlatform>,
    linux_object_size: u64,
    linux_size: u64,
    allocs: u64,
    frees: u64,
    live: u64,
}

/// One traced slab pointer: perf's row, and the live allocation if any.
#[derive(Clone, Copy, Debug)]
struct Obj {
    /// kmem's pointer; 0 when not live.
    ours: usize,
    /// perf: bytes requested, allocated, hits, ping-pongs at this pointer.
    stat: SlabStat,
    /// Call site of the last allocation.
    site: u32,
    /// perf's `last_alloc`: bytes allocated by the last allocation.
    last_alloc: u32,
    /// Requested bytes of the live allocation.
    live_req: u32,
    /// kmem bytes of the live allocation (object size, or pages for large).
    kmem_size: u32,
    /// Cache index, [`KMALLOC`] or [`KMALLOC_LARGE`].
    cache: u16,
    /// CPU of the last allocation, -1 once freed (perf).
    alloc_cpu: i16,
}

/// One traced pfn (kept once seen: it holds perf's row for the pfn).
#[derive(Clone, Copy, Debug, Default)]
struct PageEntry {
    /// kmem's pfn.
    ours: u64,
    order: u8,
    /// Migrate type index of the kmem allocation (kind accounting).
    mt: u8,
    live: bool,
    /// An `mm_page_free` was seen and no `mm_page_free_batched` yet.
    awaiting_batched: bool,
    /// What perf remembers (its own notion of live).
    perf: Option<PerfLive>,
    /// perf's row for the pfn's latest key.
    row: PerfRow,
}

/// One traced vmap area.
#[derive(Clone, Copy, Debug)]
struct VmEntry {
    ours: usize,
    pages: u64,
}

/// Everything the engine counts, handed to the report.
pub struct EngineOutput {
    /// Event buckets.
    pub acct: Accounting,
    /// Events by type.
    pub by_kind: [u64; crate::EventKind::COUNT],
    /// Class mismatches, and the first examples.
    pub class_mismatches: u64,
    /// Examples of class mismatches.
    pub mismatch_examples: Vec<ClassMismatch>,
    /// Pages whose migrate type (from the GFP mask, as kmem computes it) is
    /// not the one the trace prints.
    pub migratetype_mismatches: u64,
    /// kmem's answers that were errors, by "call: reason".
    pub failures: BTreeMap<String, u64>,
    /// Examples of failures.
    pub failure_examples: Vec<Example>,
    /// Blocking allocations in atomic context.
    pub context_violations: u64,
    /// By site.
    pub violation_sites: Vec<ViolationSite>,
    /// Allocations whose pointer or pfn was still live in the map.
    pub stale_allocations: u64,
    /// Those by the site of the allocation whose free never showed (slab),
    /// or `(mm_page_alloc)` / `(alloc_vmap_area)`, most first.
    pub stale_sites: Vec<(String, u64)>,
    /// `kmem_cache_free` naming another cache than the allocation's.
    pub cache_name_mismatches: u64,
    /// Page blocks split because the trace freed them piecewise.
    pub page_splits: u64,
    /// Pages by kind now.
    pub current: KindPages,
    /// Peak of each kind.
    pub peak: KindPages,
    /// Peak of all kinds together (slab as last sampled).
    pub peak_total: u64,
    /// Live slab bytes: requested (trace), allocated (trace `bytes_alloc`), kmem object bytes.
    pub slab_live: (u64, u64, u64),
    /// Samples over time.
    pub timeline: Vec<Sample>,
    /// Allocation sizes (slab events), by log2 bucket: `[0]` is 0 bytes, `[1]`
    /// 1 byte, `[i]` (i >= 2) `2^(i-2)+1 ..= 2^(i-1)` bytes.
    pub size_hist: Vec<u64>,
    /// Page allocations by order.
    pub order_hist: Vec<u64>,
    /// perf's slab counters.
    pub perf_slab: PerfSlab,
    /// perf's page counters.
    pub perf_page: PerfPage,
    /// perf's pointer rows.
    pub ptr_rows: Vec<(u64, SlabStat)>,
    /// Call sites.
    pub sites: Interner,
    /// Per traced cache: (name, Linux object size, Linux size, kmem object size, kmem size, allocs, frees, live).
    pub traced_caches: Vec<TracedCache>,
    /// Warnings kmem logged.
    pub warnings: u64,
    /// The first of them.
    pub warning_examples: Vec<String>,
    /// First and last timestamps.
    pub span_ns: u64,
    /// One more than the highest CPU number of any event (0 without
    /// events). Above the machine's CPUs, CPU k ran as CPU k % CPUs.
    pub trace_cpus: u64,
}

/// A cache the trace named, as created in kmem.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TracedCache {
    /// Name.
    pub name: String,
    /// Linux's object size (`bytes_req`).
    pub linux_object_size: u64,
    /// Linux's object stride (`bytes_alloc`).
    pub linux_size: u64,
    /// kmem's object size.
    pub kmem_object_size: u64,
    /// kmem's stride.
    pub kmem_size: u64,
    /// Allocations replayed.
    pub allocs: u64,
    /// Frees replayed.
    pub frees: u64,
    /// Objects live at the end (as the trace shows them).
    pub live: u64,
}

/// The replay state over one machine; see the module comment.
pub struct Engine<'r, 'm> {
    machine: &'m Machine,
    pages: &'m PageAllocator<HostPlatform>,
    slab: &'r SlabAllocator<'m, HostPlatform>,
    vm: &'r MemVmalloc<'m>,
    slab_config: SlabConfig,
    nr_cpus: usize,
    /// GFP bits removed before calling kmem (`__GFP_ZERO` unless zeroing).
    strip: Gfp,

    caches: Vec<CacheSlot<'r>>,
    /// Interned call sites and cache names.
    front: Front,
    /// kmem cache index by cache name id (u16::MAX: could not be created).
    cache_of_name: Vec<u16>,
    objs: FoldMap<u64, Obj>,
    page_map: FoldMap<u64, PageEntry>,
    vmaps: FoldMap<u64, VmEntry>,

    perf_slab: PerfSlab,
    perf_page: PerfPage,
    acct: Accounting,
    by_kind: [u64; crate::EventKind::COUNT],

    class_mismatches: u64,
    mismatch_examples: Vec<ClassMismatch>,
    migratetype_mismatches: u64,
    failures: BTreeMap<(&'static str, String), u64>,
    failure_examples: Vec<Example>,
    context_violations: u64,
    violation_sites: FoldMap<u32, ViolationSite>,
    stale_allocations: u64,
    stale_by_site: FoldMap<u32, u64>,
    cache_name_mismatches: u64,
    page_splits: u64,

    kinds: KindPages,
    peak: KindPages,
    peak_total: u64,
    live_req: u64,
    live_alloc: u64,
    live_kmem: u64,
    timeline: Timeline,
    size_hist: [u64; 25],
    order_hist: [u64; 11],

    first_ts: Option<u64>,
    last_ts: u64,
    cur_cpu: u32,
    trace_cpus: u64,
    warnings: u64,
    warning_examples: Vec<String>,
    caller: &'static Location<'static>,
}

/// Slab configuration for replay: Linux's defaults, but no merging, so that
/// every cache the trace names is a cache of its own in kmem (the trace's
/// names are already Linux's merge results).
pub fn replay_slab_config() -> SlabConfig {
    SlabConfig {
        merge: false,
        ..SlabConfig::default()
    }
}

/// A constructor that does nothing: it only makes kmem lay a cache out as
/// Linux lays out caches that have one (free pointer after the object).
fn no_ctor(_: std::ptr::NonNull<u8>) {}

/// Short name of an error variant (`NoMemory`, `DoubleFree`, ...).
fn variant(dbg: String) -> String {
    let end = dbg
        .find(|c: char| !c.is_alphanumeric() && c != '_')
        .unwrap_or(dbg.len());
    dbg[..end].to_string()
}

fn alloc_reason(e: &AllocError) -> String {
    match e {
        AllocError::NoMemory(n) if n.fragmented() => {
            format!("NoMemory (order {}, fragmented)", n.order)
        }
        AllocError::NoMemory(n) => format!("NoMemory (order {})", n.order),
        other => variant(format!("{other:?}")),
    }
}

fn vmalloc_reason(e: &VmallocError) -> String {
    match e {
        VmallocError::NoPages { error, .. } => format!("NoPages: {}", alloc_reason(error)),
        other => variant(format!("{other:?}")),
    }
}

/// Log2 bucket of a size for the histogram.
fn size_bucket(n: u64) -> usize {
    if n == 0 {
        0
    } else {
        ((64 - (n - 1).leading_zeros()) as usize + 1).min(24)
    }
}

impl<'r, 'm> Engine<'r, 'm> {
    /// An engine over `machine` and the slab and vmalloc built on it.
    /// Unless `zero`, `__GFP_ZERO` is dropped from every mask: replay never
    /// reads memory, and zeroing (with the host's first-touch page faults)
    /// would dominate its time without changing any allocator decision.
    pub fn new(
        machine: &'m Machine,
        slab: &'r SlabAllocator<'m, HostPlatform>,
        vm: &'r MemVmalloc<'m>,
        front: Front,
        zero: bool,
    ) -> Self {
        Engine {
            strip: if zero { Gfp::empty() } else { Gfp::ZERO },
            machine,
            pages: machine.pages(),
            slab,
            vm,
            slab_config: *slab.config(),
            nr_cpus: machine.config().nr_cpus,
            caches: Vec::new(),
            front,
            cache_of_name: Vec::new(),
            objs: FoldMap::with_capacity_and_hasher(1 << 18, Default::default()),
            page_map: FoldMap::with_capacity_and_hasher(1 << 18, Default::default()),
            vmaps: FoldMap::default(),
            perf_slab: PerfSlab::default(),
            perf_page: PerfPage::default(),
            acct: Accounting::default(),
            by_kind: [0; crate::EventKind::COUNT],
            class_mismatches: 0,
            mismatch_examples: Vec::new(),
            migratetype_mismatches: 0,
            failures: BTreeMap::new(),
            failure_examples: Vec::new(),
            context_violations: 0,
            violation_sites: FoldMap::default(),
            stale_allocations: 0,
            stale_by_site: FoldMap::default(),
            cache_name_mismatches: 0,
            page_splits: 0,
            kinds: KindPages::default(),
            peak: KindPages::default(),
            peak_total: 0,
            live_req: 0,
            live_alloc: 0,
            live_kmem: 0,
            timeline: Timeline::default(),
            size_hist: [0; 25],
            order_hist: [0; 11],
            first_ts: None,
            last_ts: 0,
            cur_cpu: u32::MAX,
            trace_cpus: 0,
            warnings: 0,
            warning_examples: Vec::new(),
            caller: Location::caller(),
        }
    }

    /// Interns names a parsing thread interned first (see
    /// [`super::pipeline`]): same names, same order, same ids.
    pub fn add_names(&mut self, sites: &[Box<str>], caches: &[Box<str>]) {
        for s in sites {
            self.front.sites.intern(s);
        }
        for c in caches {
            self.front.caches.intern(c);
        }
    }

    /// Replays one record.
    #[inline]
    pub fn on_record(&mut self, rec: &Record<'_>) {
        let ev = self.front.convert(rec);
        self.on_event(&ev);
    }

    /// Replays one event (from [`Front::convert`] of this engine's front,
    /// or of the front it was built with).
    #[inline]
    pub fn on_event(&mut self, ev: &Ev) {
        self.acct.events += 1;
        self.by_kind[ev.kind.index()] += 1;
        if ev.cpu != self.cur_cpu {
            self.cur_cpu = ev.cpu;
            self.trace_cpus = self.trace_cpus.max(u64::from(ev.cpu) + 1);
            kmem_host::set_cpu(ev.cpu as usize % self.nr_cpus);
        }
        let first = *self.first_ts.get_or_insert(ev.ts_ns);
        self.last_ts = ev.ts_ns;
        {
            let _ctx = kmem_host::enter(ev.ctx);
            match ev.what {
                EvKind::Kmalloc {
                    site,
                    ptr,
                    req,
                    alloc,
                    gfp,
                    node,
                } => self.kmalloc(ev, site, ptr, req, alloc, gfp, node),
                EvKind::CacheAlloc {
                    site,
                    cache,
                    ptr,
                    req,
                    alloc,
                    gfp,
                    node,
                } => self.cache_alloc(ev, site, cache, ptr, req.into(), alloc.into(), gfp, node),
                EvKind::Free { ptr, cache } => self.slab_free(ev, ptr, cache),
                EvKind::PageAlloc {
                    pfn,
                    order,
                    mt,
                    gfp,
                    failed,
                } => self.page_alloc(ev, pfn, order, mt, gfp, failed),
                EvKind::PageFree {
                    pfn,
                    order,
                    batched,
                } => self.page_free(ev, pfn, order, batched),
                EvKind::Internal => self.skip(SKIP_INTERNAL),
                EvKind::VmapAlloc { .. } => self.vmap_alloc(ev),
                EvKind::VmapFree { va } => self.vmap_free(ev, va),
                EvKind::Purge => {
                    self.vm.purge();
                    self.acct.replayed += 1;
                }
            }
        }
        if self.acct.events & (SLAB_SAMPLE_EVENTS - 1) == 0 {
            self.periodic(ev.ts_ns.saturating_sub(first));
        }
    }

    /// The mask kmem is called with.
    #[inline]
    fn gfp(&self, g: Gfp) -> Gfp {
        g - self.strip
    }

    #[inline]
    fn skip(&mut self, why: &'static str) {
        self.acct.skipped += 1;
        *self.acct.skipped_by_reason.entry(why).or_default() += 1;
    }

    /// Every [`SLAB_SAMPLE_EVENTS`] events: slab footprint, peaks, warnings,
    /// and a timeline sample when one is due.
    #[cold]
    fn periodic(&mut self, rel_ns: u64) {
        self.kinds.slab = self.slab_pages();
        self.update_peak();
        self.drain_warnings();
        if self.timeline.due(rel_ns) {
            let s = self.sample(rel_ns);
            self.timeline.push(rel_ns, s);
        }
    }

    fn slab_pages(&self) -> u64 {
        let mut n = 0u64;
        self.slab.for_each_cache(|c| {
            n += (c.nr_slabs() as u64) << c.order_objects().order;
        });
        n
    }

    #[inline]
    fn update_peak(&mut self) {
        self.peak = self.peak.max(&self.kinds);
        self.peak_total = self.peak_total.max(self.kinds.total());
    }

    fn sample(&self, rel_ns: u64) -> Sample {
        Sample {
            t: rel_ns as f64 / 1e9,
            events: self.acct.events,
            pages: self.kinds,
            frag: memory::fragmentation(self.pages),
        }
    }

    fn drain_warnings(&mut self) {
        let p = self.machine.platform();
        if p.log_len() == 0 {
            return;
        }
        for w in p.take_log() {
            self.warnings += 1;
            if self.warning_examples.len() < MAX_EXAMPLES {
                self.warning_examples.push(w);
            }
        }
    }

    #[cold]
    fn fail(&mut self, ev: &Ev, call: &'static str, reason: String) {
        if self.failure_examples.len() < MAX_EXAMPLES {
            self.failure_examples.push(Example {
                line: ev.line,
                event: ev.kind.name(),
                what: format!("{call}: {reason}"),
            });
        }
        *self.failures.entry((call, reason)).or_default() += 1;
    }

    /// Counts a blocking allocation in atomic context (kmem reports and,
    /// under `ContextPolicy::Warn`, goes on as Linux did).
    #[inline]
    fn check_context(&mut self, ev: &Ev, gfp: Gfp, site: Option<u32>) {
        let ctx = ev.ctx;
        if ctx.is_atomic() && gfp.allows_blocking() {
            self.violation(ev, gfp, ctx, site);
        }
    }

    #[cold]
    fn violation(&mut self, ev: &Ev, gfp: Gfp, ctx: ExecContext, site: Option<u32>) {
        self.context_violations += 1;
        let key = site.unwrap_or(u32::MAX - ev.kind.index() as u32);
        let name = match site {
            Some(s) => self.front.sites.name(s).to_string(),
            None => format!("({})", ev.kind.name()),
        };
        let v = self
            .violation_sites
            .entry(key)
            .or_insert_with(|| ViolationSite {
                site: name,
                count: 0,
                first_line: ev.line,
                context: format!("{ctx} [{}]", ev.flags_text()),
                gfp: gfp.to_string(),
            });
        v.count += 1;
    }

    // ---- slab ----

    /// kmem's class size for a kmalloc of `size` with `gfp` (0 for size 0,
    /// the whole block above 8 KiB, `None` above KMALLOC_MAX_SIZE).
    fn kmem_class(&self, size: u64, gfp: Gfp) -> Option<u64> {
        let s = usize::try_from(size).ok()?;
        if s == 0 {
            Some(0)
        } else if s <= KMALLOC_MAX_CACHE_SIZE {
            Some(self.slab.kmalloc_slab(s, gfp).object_size() as u64)
        } else if s <= KMALLOC_MAX_SIZE {
            Some(kmalloc_size_roundup(s) as u64)
        } else {
            None
        }
    }

    /// perf's allocation side, and the object's entry; returns the entry as
    /// it was before (its `ours` is non-zero if the pointer was still live).
    #[inline]
    fn slab_alloc_stats(
        &mut self,
        ev: &Ev,
        ptr: u64,
        site: u32,
        req: u64,
        alloc: u64,
        node: i32,
    ) -> Obj {
        self.perf_slab.on_alloc(site, req, alloc, node);
        self.size_hist[size_bucket(req)] += 1;
        let cpu = ev.cpu as i16;
        let o = self.objs.entry(ptr).or_insert(Obj {
            ours: 0,
            stat: SlabStat::default(),
            site,
            last_alloc: 0,
            live_req: 0,
            kmem_size: 0,
            cache: KMALLOC,
            alloc_cpu: -1,
        });
        let prev = *o;
        o.stat.add(req, alloc);
        o.site = site;
        o.last_alloc = alloc as u32;
        o.alloc_cpu = cpu;
        prev
    }

    /// The trace's node as the machine has it: a node the replay machine
    /// lacks (a trace from a bigger NUMA machine) means any node.
    fn machine_node(&self, node: i32) -> i32 {
        if node >= 0 && node as usize >= self.pages.nr_nodes() {
            -1
        } else {
            node
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn kmalloc(&mut self, ev: &Ev, site: u32, ptr: u64, req: u64, alloc: u64, gfp: Gfp, node: i32) {
        // Conformance: kmem's class against Linux's bytes_alloc.
        let class = self.kmem_class(req, gfp);
        if class != Some(alloc) && !(ptr == 0 && class.is_none()) {
            self.mismatch(ev, site, req, alloc, class.unwrap_or(0));
        }
        let o = self.slab_alloc_stats(ev, ptr, site, req, alloc, node);
        if ptr == 0 {
            return self.skip(SKIP_LINUX_FAILED);
        }
        if o.ours != 0 {
            self.drop_stale_obj(ptr, o);
        }
        self.check_context(ev, gfp, Some(site));
        self.acct.replayed += 1;
        let size = req as usize;
        match self
            .slab
            .kmalloc_node(size, self.gfp(gfp), self.machine_node(node))
        {
            Ok(p) => {
                let large = size > KMALLOC_MAX_CACHE_SIZE;
                let kmem_size = if large {
                    let pages = 1u64 << kmem::get_order(size);
                    self.kinds.kmalloc_large += pages;
                    self.update_peak();
                    pages as u32
                } else {
                    let s = class.unwrap_or(0) as u32;
                    self.live_kmem += u64::from(s);
                    s
                };
                self.live_req += req;
                self.live_alloc += alloc;
                let o = self.objs.get_mut(&ptr).expect("entry made above");
                o.ours = p.as_ptr() as usize;
                o.cache = if large { KMALLOC_LARGE } else { KMALLOC };
                o.live_req = req as u32;
                o.kmem_size = kmem_size;
            }
            Err(e) => self.fail(ev, "kmalloc", alloc_reason(&e)),
        }
    }

    #[cold]
    fn mismatch(&mut self, ev: &Ev, site: u32, req: u64, alloc: u64, kmem: u64) {
        self.class_mismatches += 1;
        if self.mismatch_examples.len() < MAX_EXAMPLES {
            self.mismatch_examples.push(ClassMismatch {
                line: ev.line,
                call_site: self.front.sites.name(site).to_string(),
                bytes_req: req,
                linux_bytes_alloc: alloc,
                kmem_bytes_alloc: kmem,
            });
        }
    }

    /// The cache named `name`, created on first use so that its stride
    /// matches Linux's `bytes_alloc` where a plain layout, cache-line
    /// alignment or a free pointer outside the object explains it.
    #[inline]
    fn cache_index(&mut self, name: u32, object_size: u64, size: u64) -> Option<u16> {
        let id = name as usize;
        if let Some(&c) = self.cache_of_name.get(id) {
            if c != UNSEEN {
                return (c != u16::MAX).then_some(c);
            }
        }
        self.new_cache_index(id, object_size, size)
    }

    #[cold]
    fn new_cache_index(&mut self, id: usize, object_size: u64, size: u64) -> Option<u16> {
        if id >= self.cache_of_name.len() {
            self.cache_of_name.resize(id + 1, UNSEEN);
        }
        let name = self.front.caches.name(id as u32).to_string();
        let idx = self.create_cache(&name, object_size, size);
        self.cache_of_name[id] = idx.unwrap_or(u16::MAX);
        idx
    }

    #[cold]
    fn create_cache(&mut self, name: &str, object_size: u64, size: u64) -> Option<u16> {
        let cache = match self.slab.find_cache(name) {
            Some(c) => c,
            None => {
                let osize = usize::try_from(object_size).ok()?.max(1);
                let want = usize::try_from(size).unwrap_or(0);
                let candidates: [(SlabFlags, bool); 4] = [
                    (SlabFlags::empty(), false),
                    (SlabFlags::HWCACHE_ALIGN, false),
                    (SlabFlags::empty(), true),
                    (SlabFlags::HWCACHE_ALIGN, true),
                ];
                let (flags, ctor) = candidates
                    .into_iter()
                    .find(|&(f, ctor)| {
                        Layout::compute(osize, 0, f, ctor, &self.slab_config, self.nr_cpus)
                            .is_some_and(|l| l.size == want)
                    })
                    .unwrap_or((SlabFlags::empty(), false));
                let ctor = if ctor { Some(no_ctor as fn(_)) } else { None };
                // Linux creates caches at boot or module init, in process
                // context; the trace shows only the first allocation, which
                // may come from an interrupt (and kmem refuses a create
                // there).
                let handle = {
                    let _process = kmem_host::enter(ExecContext::PROCESS);
                    self.slab.kmem_cache_create(name, osize, 0, flags, ctor)
                }
                .ok()?;
                // The cache lives as long as the slab allocator; the handle
                // would destroy it (and report every live object) on drop.
                std::mem::forget(handle);
                self.slab.find_cache(name)?
            }
        };
        let idx = u16::try_from(self.caches.len())
            .ok()
            .filter(|&i| i < UNSEEN)?;
        self.caches.push(CacheSlot {
            cache,
            linux_object_size: object_size,
            linux_size: size,
            allocs: 0,
            frees: 0,
            live: 0,
        });
        Some(idx)
    }

    #[allow(clippy::too_many_arguments)]
    fn cache_alloc(
        &mut self,
        ev: &Ev,
        site: u32,
        cache: u32,
        ptr: u64,
        req: u64,
        alloc: u64,
        gfp: Gfp,
        node: i32,
    ) {
        let o = self.slab_alloc_stats(ev, ptr, site, req, alloc, node);
        if ptr == 0 {
            return self.skip(SKIP_LINUX_FAILED);
        }
        let Some(ci) = self.cache_index(cache, req, alloc) else {
            return self.skip(SKIP_NO_CACHE);
        };
        if o.ours != 0 {
            self.drop_stale_obj(ptr, o);
        }
        self.check_context(ev, gfp, Some(site));
        self.acct.replayed += 1;
        let gfp = self.gfp(gfp);
        let node = self.machine_node(node);
        let slot = &mut self.caches[ci as usize];
        match slot.cache.alloc_node(gfp, node) {
            Ok(p) => {
                slot.allocs += 1;
                slot.live += 1;
                let s = slot.cache.object_size() as u32;
                self.live_kmem += u64::from(s);
                self.live_req += req;
                self.live_alloc += alloc;
                let o = self.objs.get_mut(&ptr).expect("entry made above");
                o.ours = p.as_ptr() as usize;
                o.cache = ci;
                o.live_req = req as u32;
                o.kmem_size = s;
            }
            Err(e) => self.fail(ev, "kmem_cache_alloc", alloc_reason(&e)),
        }
    }

    /// An allocation at a pointer still live: its free was not traced.
    #[cold]
    fn drop_stale_obj(&mut self, ptr: u64, o: Obj) {
        self.stale_allocations += 1;
        *self.stale_by_site.entry(o.site).or_default() += 1;
        let _ = self.release_obj(ptr, o, None);
    }

    /// Frees a live object in kmem and updates the counters.
    fn release_obj(&mut self, ptr: u64, o: Obj, via_cache: Option<u16>) -> Result<(), String> {
        let r = match via_cache {
            Some(ci) => self.caches[ci as usize]
                .cache
                .free_at(o.ours, self.caller)
                .map_err(|e| variant(format!("{e:?}"))),
            None => self
                .slab
                .kfree_at(o.ours, self.caller)
                .map_err(|e| variant(format!("{e:?}"))),
        };
        if let Some(e) = self.objs.get_mut(&ptr) {
            e.ours = 0;
        }
        match o.cache {
            KMALLOC_LARGE => self.kinds.kmalloc_large -= u64::from(o.kmem_size),
            KMALLOC => self.live_kmem -= u64::from(o.kmem_size),
            ci => {
                let s = &mut self.caches[ci as usize];
                s.frees += 1;
                s.live -= 1;
                self.live_kmem -= u64::from(o.kmem_size);
            }
        }
        self.live_req -= u64::from(o.live_req);
        self.live_alloc -= u64::from(o.last_alloc);
        r
    }

    fn slab_free(&mut self, ev: &Ev, ptr: u64, name: Option<u32>) {
        let call = if name.is_some() {
            "kmem_cache_free"
        } else {
            "kfree"
        };
        // perf: total_freed and ping-pong, whether or not the object is live.
        let cpu = ev.cpu as i16;
        let Some(o) = self.objs.get_mut(&ptr) else {
            if ptr == 0 {
                self.acct.kfree_null += 1;
            } else {
                self.acct.unmatched_frees += 1;
            }
            return;
        };
        let freed = &mut self.perf_slab.summary.total_freed;
        *freed = freed.saturating_add(u64::from(o.last_alloc));
        if o.alloc_cpu != cpu {
            o.stat.pingpong += 1;
            let site = o.site;
            self.perf_slab.caller(site).pingpong += 1;
        }
        o.alloc_cpu = -1;
        let o = *o;
        if ptr == 0 {
            self.acct.kfree_null += 1;
            return;
        }
        if o.ours == 0 {
            self.acct.unmatched_frees += 1;
            return;
        }
        self.acct.replayed += 1;
        let via = match (name, o.cache) {
            (Some(n), ci) if ci < KMALLOC_LARGE => {
                let same = self.cache_of_name.get(n as usize) == Some(&ci);
                if same {
                    Some(ci)
                } else {
                    self.cache_name_mismatches += 1;
                    None
                }
            }
            (Some(_), _) => {
                self.cache_name_mismatches += 1;
                None
            }
            (None, _) => None,
        };
        if let Err(e) = self.release_obj(ptr, o, via) {
            self.fail(ev, call, e);
        }
    }

    // ---- pages ----

    fn page_alloc(&mut self, ev: &Ev, pfn: u64, order: u32, tmt: i32, gfp: Gfp, failed: bool) {
        let mut e = self.page_map.get(&pfn).copied().unwrap_or_default();
        let perf = self
            .perf_page
            .on_alloc(pfn, failed, order, tmt, gfp, &mut e.row);
        self.order_hist[(order as usize).min(10)] += 1;
        if failed {
            return self.skip(SKIP_LINUX_FAILED);
        }
        // perf's findnew keeps an existing live record.
        e.perf = e.perf.or(perf);
        let mt = gfp.migratetype().index();
        if mt as i32 != tmt {
            self.migratetype_mismatches += 1;
        }
        if e.live {
            self.stale_allocations += 1;
            *self.stale_by_site.entry(STALE_PAGES).or_default() += 1;
            e.live = false;
            if let Some(err) = self.release_pages(e.ours, u32::from(e.order), usize::from(e.mt)) {
                self.fail(ev, "free_pages", err);
            }
        }
        self.check_context(ev, gfp, None);
        self.acct.replayed += 1;
        match self.pages.alloc_pages_node(-1, self.gfp(gfp), order) {
            Ok(ours) => {
                *self.kinds.mt_mut(mt) += 1 << order;
                self.update_peak();
                e.ours = ours.0;
                e.order = order as u8;
                e.mt = mt as u8;
                e.live = true;
            }
            Err(err) => self.fail(ev, "alloc_pages", alloc_reason(&err)),
        }
        self.page_map.insert(pfn, e);
    }

    fn release_pages(&mut self, ours: u64, order: u32, mt: usize) -> Option<String> {
        *self.kinds.mt_mut(mt) -= 1 << order;
        self.pages
            .free_pages(Pfn(ours), order)
            .err()
            .map(|e| variant(format!("{e:?}")))
    }

    fn page_free(&mut self, ev: &Ev, pfn: u64, order: u32, batched: bool) {
        let mut e = self.page_map.get(&pfn).copied().unwrap_or_default();
        if batched {
            if e.awaiting_batched {
                e.awaiting_batched = false;
                self.acct.duplicate_frees += 1;
                self.page_map.insert(pfn, e);
                return;
            }
        } else {
            let perf = e.perf.take();
            self.perf_page.on_free(pfn, order, perf, &mut e.row);
        }
        if e.live && order >= u32::from(e.order) {
            self.acct.replayed += 1;
            if order > u32::from(e.order) {
                self.fail(
                    ev,
                    "free_pages",
                    format!("order {} freed as order {}", e.order, order),
                );
            }
            if let Some(err) = self.release_pages(e.ours, u32::from(e.order), usize::from(e.mt)) {
                self.fail(ev, "free_pages", err);
            }
            e.live = false;
            e.awaiting_batched = !batched;
            self.page_map.insert(pfn, e);
            return;
        }
        // Write back what perf changed before blocks are split.
        self.page_map.insert(pfn, e);
        if e.live {
            // The head of a larger block, freed piecewise.
            self.acct.replayed += 1;
            self.split_block(ev, pfn, e);
            self.free_range(ev, pfn, order, batched);
        } else if let Some((head, b)) = self.enclosing_block(pfn, order) {
            // Inside a larger live block freed piecewise.
            self.acct.replayed += 1;
            self.split_block(ev, head, b);
            self.free_range(ev, pfn, order, batched);
        } else {
            self.acct.unmatched_frees += 1;
            if !batched {
                // Its mm_page_free_batched twin, if any, is a duplicate.
                e.awaiting_batched = true;
                self.page_map.insert(pfn, e);
            }
        }
    }

    /// A live block of higher order than `order` that contains `pfn`.
    fn enclosing_block(&self, pfn: u64, order: u32) -> Option<(u64, PageEntry)> {
        (order + 1..=kmem::MAX_PAGE_ORDER).find_map(|o| {
            let head = pfn & !((1u64 << o) - 1);
            self.page_map
                .get(&head)
                .filter(|e| e.live && u32::from(e.order) == o)
                .map(|e| (head, *e))
        })
    }

    /// Splits the live block at trace pfn `head` into order-0 entries (kmem's
    /// `split_page`). A compound block cannot be split: it is freed whole
    /// now, and later frees of its other pages find nothing live.
    #[cold]
    fn split_block(&mut self, ev: &Ev, head: u64, e: PageEntry) {
        self.page_splits += 1;
        let order = u32::from(e.order);
        let split = self.pages.split_page(Pfn(e.ours), order).is_ok();
        if !split {
            if let Some(err) = self.release_pages(e.ours, order, usize::from(e.mt)) {
                self.fail(ev, "free_pages", err);
            }
            self.fail(ev, "split_page", "compound block freed whole".to_string());
        }
        for i in 0..1u64 << order {
            let mut sub = self.page_map.get(&(head + i)).copied().unwrap_or_default();
            sub.ours = e.ours + i;
            sub.order = 0;
            sub.mt = e.mt;
            sub.live = split;
            self.page_map.insert(head + i, sub);
        }
    }

    /// Frees the order-0 pages `pfn .. pfn + 2^order` of a split block.
    fn free_range(&mut self, ev: &Ev, pfn: u64, order: u32, batched: bool) {
        for i in 0..1u64 << order {
            let Some(mut sub) = self.page_map.get(&(pfn + i)).copied() else {
                continue;
            };
            if sub.live {
                if let Some(err) = self.release_pages(sub.ours, 0, usize::from(sub.mt)) {
                    self.fail(ev, "free_pages", err);
                }
            }
            sub.live = false;
            if i == 0 {
                sub.awaiting_batched = !batched;
            }
            self.page_map.insert(pfn + i, sub);
        }
    }

    // ---- vmalloc ----

    fn vmap_alloc(&mut self, ev: &Ev) {
        let EvKind::VmapAlloc {
            va,
            size,
            align,
            vstart,
            vend,
            failed,
        } = ev.what
        else {
            return;
        };
        if failed {
            return self.skip(SKIP_LINUX_FAILED);
        }
        if let Some(old) = self.vmaps.remove(&va) {
            self.stale_allocations += 1;
            *self.stale_by_site.entry(STALE_VMAP).or_default() += 1;
            self.kinds.vmalloc -= old.pages;
            let _ = self.vm.vfree(old.ours as *const u8);
        }
        self.acct.replayed += 1;
        let page = PAGE_SIZE as u64;
        // The traced size includes the guard page.
        let size = if size >= 2 * page {
            size - page
        } else {
            size.max(page)
        };
        let cfg = self.vm.config();
        let (start, end) = (cfg.start as u64, cfg.end as u64);
        let (lo, hi) = (vstart.max(start), vend.saturating_add(1).min(end));
        let (lo, hi) = if lo < hi { (lo, hi) } else { (start, end) };
        let gfp = kmem::gfp::GFP_KERNEL;
        self.check_context(ev, gfp, None);
        match self.vm.vmalloc_node_range(
            size as usize,
            (align as usize).max(PAGE_SIZE),
            lo as usize,
            hi as usize,
            gfp,
            PteFlags::KERNEL,
            VmFlags::empty(),
            -1,
        ) {
            Ok(p) => {
                let pages = size.div_ceil(page);
                self.kinds.vmalloc += pages;
                self.update_peak();
                self.vmaps.insert(
                    va,
                    VmEntry {
                        ours: p.as_ptr() as usize,
                        pages,
                    },
                );
            }
            Err(e) => self.fail(ev, "vmalloc", vmalloc_reason(&e)),
        }
    }

    fn vmap_free(&mut self, ev: &Ev, va: u64) {
        let Some(v) = self.vmaps.remove(&va) else {
            self.acct.unmatched_frees += 1;
            return;
        };
        self.acct.replayed += 1;
        self.kinds.vmalloc -= v.pages;
        if let Err(e) = self.vm.vfree(v.ours as *const u8) {
            self.fail(ev, "vfree", variant(format!("{e:?}")));
        }
    }

    /// Final sample, and everything counted.
    pub fn finish(mut self) -> EngineOutput {
        let rel = self.last_ts.saturating_sub(self.first_ts.unwrap_or(0));
        self.perf_page
            .absorb(self.page_map.iter().map(|(pfn, e)| (*pfn, e.row)));
        self.kinds.slab = self.slab_pages();
        self.update_peak();
        self.drain_warnings();
        let s = self.sample(rel);
        self.timeline.push_final(s);
        let mut violation_sites: Vec<ViolationSite> = self.violation_sites.into_values().collect();
        violation_sites.sort_by(|a, b| b.count.cmp(&a.count).then(a.first_line.cmp(&b.first_line)));
        let traced_caches = self
            .caches
            .iter()
            .map(|c| TracedCache {
                name: c.cache.name().to_string(),
                linux_object_size: c.linux_object_size,
                linux_size: c.linux_size,
                kmem_object_size: c.cache.object_size() as u64,
                kmem_size: c.cache.slab_size() as u64,
                allocs: c.allocs,
                frees: c.frees,
                live: c.live,
            })
            .collect();
        let mut stale_sites: Vec<(String, u64)> = self
            .stale_by_site
            .iter()
            .map(|(&k, &n)| {
                let name = match k {
                    STALE_PAGES => "(mm_page_alloc)".to_string(),
                    STALE_VMAP => "(alloc_vmap_area)".to_string(),
                    k => self.front.sites.name(k).to_string(),
                };
                (name, n)
            })
            .collect();
        stale_sites.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        stale_sites.truncate(MAX_EXAMPLES);
        let failures = self
            .failures
            .into_iter()
            .map(|((call, reason), n)| (format!("{call}: {reason}"), n))
            .collect();
        EngineOutput {
            acct: self.acct,
            by_kind: self.by_kind,
            class_mismatches: self.class_mismatches,
            mismatch_examples: self.mismatch_examples,
            migratetype_mismatches: self.migratetype_mismatches,
            failures,
            failure_examples: self.failure_examples,
            context_violations: self.context_violations,
            violation_sites,
            stale_allocations: self.stale_allocations,
            stale_sites,
            cache_name_mismatches: self.cache_name_mismatches,
            page_splits: self.page_splits,
            current: self.kinds,
            peak: self.peak,
            peak_total: self.peak_total,
            slab_live: (self.live_req, self.live_alloc, self.live_kmem),
            timeline: self.timeline.into_samples(),
            size_hist: self.size_hist.to_vec(),
            order_hist: self.order_hist.to_vec(),
            perf_slab: self.perf_slab,
            perf_page: self.perf_page,
            ptr_rows: self.objs.iter().map(|(p, o)| (*p, o.stat)).collect(),
            sites: self.front.sites,
            traced_caches,
            warnings: self.warnings,
            warning_examples: self.warning_examples,
            span_ns: rel,
            trace_cpus: self.trace_cpus,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_variants() {
        assert_eq!(size_bucket(0), 0);
        assert_eq!(size_bucket(1), 1);
        assert_eq!(size_bucket(2), 2);
        assert_eq!(size_bucket(8), 4);
        assert_eq!(size_bucket(9), 5);
        assert_eq!(variant("DoubleFree { addr: 1 }".into()), "DoubleFree");
        assert_eq!(variant("InNmi".into()), "InNmi");
    }
}
