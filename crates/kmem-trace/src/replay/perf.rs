//! What `perf kmem stat --caller --alloc` and `perf kmem stat --page --alloc`
//! report, computed by the same definitions (`tools/perf/builtin-kmem.c`).
//!
//! **Slab** (`kmalloc`, `kmem_cache_alloc`, `kfree`, `kmem_cache_free`):
//! - each allocation event adds to a row keyed by its pointer (`--alloc`) and
//!   one keyed by its call site (`--caller`): hits + 1, bytes requested and
//!   allocated added; the pointer row remembers the CPU and the bytes of the
//!   last allocation;
//! - a free finds the pointer's row (rows outlive frees, as in perf); if
//!   found, `total_freed += last_alloc`, and if the freeing CPU differs from
//!   the allocating one, *ping-pong* + 1 on the pointer row and on its call
//!   site's row; the row's CPU is then forgotten (so a second free of the
//!   same pointer counts again, as in perf);
//! - internal fragmentation of a row: `100 - 100 * requested / allocated`;
//! - summary: bytes requested, allocated, freed, net (allocated - freed),
//!   wasted (allocated - requested), and *cross-CPU allocations*: events whose
//!   `node` names another NUMA node than the CPU's (always 0 on one node);
//! - rows sorted by perf's default `frag,hit,bytes`.
//!
//! **Pages** (`mm_page_alloc`, `mm_page_free`; perf ignores
//! `mm_page_free_batched`):
//! - every allocation counts (and its bytes, `PAGE_SIZE << order`); a NULL
//!   page is a failure and stops there; otherwise the pfn becomes *live* with
//!   its order, migrate type and GFP mask, and a row keyed by (pfn, order,
//!   migrate type, GFP) gets hits + 1; `order × migrate type` counts + 1;
//! - a free counts; a pfn that is not live is a *no-match* (free-only, its
//!   allocation predates the trace); otherwise the page stops being live and
//!   the row gets a free;
//! - summary: requests, frees, alloc+freed (`frees - nomatch`), alloc-only,
//!   free-only, failures, each with KiB; rows sorted by bytes, then hits.
//!
//! perf's page `--caller` needs call chains, which a text trace does not
//! have; instead rows are also given per GFP mask.

use serde::Serialize;

use super::hash::FoldMap;
use super::sites::Interner;
use kmem::Gfp;

/// Rows kept in a report table unless told otherwise.
pub const DEFAULT_ROWS: usize = 20;

/// perf's `fragmentation()`: `100 - 100 * req / alloc`, 0 if nothing allocated.
pub fn frag_pct(req: u64, alloc: u64) -> f64 {
    if alloc == 0 {
        0.0
    } else {
        100.0 - 100.0 * req as f64 / alloc as f64
    }
}

/// One call site's or pointer's slab figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlabStat {
    /// Allocations.
    pub hit: u64,
    /// Frees on another CPU than the allocation's.
    pub pingpong: u64,
    /// Bytes requested.
    pub bytes_req: u64,
    /// Bytes allocated.
    pub bytes_alloc: u64,
}

impl SlabStat {
    /// Adds one allocation.
    #[inline]
    pub fn add(&mut self, req: u64, alloc: u64) {
        self.hit += 1;
        self.bytes_req = self.bytes_req.saturating_add(req);
        self.bytes_alloc = self.bytes_alloc.saturating_add(alloc);
    }
}

/// Slab totals, as perf's `SUMMARY (SLAB allocator)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct SlabSummary {
    /// Allocation events.
    pub nr_allocs: u64,
    /// Bytes requested.
    pub total_requested: u64,
    /// Bytes allocated.
    pub total_allocated: u64,
    /// Bytes freed (of allocations seen in the trace).
    pub total_freed: u64,
    /// Allocated minus freed.
    pub net_allocated: i64,
    /// Allocated minus requested.
    pub wasted: u64,
    /// `wasted / allocated`, in percent.
    pub internal_fragmentation_pct: f64,
    /// Allocations for another node than the CPU's.
    pub cross_cpu_allocs: u64,
}

/// One row of perf's slab tables.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SlabRow {
    /// Call site (`--caller`) or pointer in hex (`--alloc`).
    pub key: String,
    /// Bytes allocated.
    pub total_alloc: u64,
    /// Per hit.
    pub per_alloc: u64,
    /// Bytes requested.
    pub total_req: u64,
    /// Per hit.
    pub per_req: u64,
    /// Allocations.
    pub hits: u64,
    /// Cross-CPU frees.
    pub pingpong: u64,
    /// Internal fragmentation, percent.
    pub frag_pct: f64,
}

impl SlabRow {
    /// A row from its figures.
    pub fn new(key: String, s: &SlabStat) -> Self {
        SlabRow {
            key,
            total_alloc: s.bytes_alloc,
            per_alloc: s.bytes_alloc.checked_div(s.hit).unwrap_or(0),
            total_req: s.bytes_req,
            per_req: s.bytes_req.checked_div(s.hit).unwrap_or(0),
            hits: s.hit,
            pingpong: s.pingpong,
            frag_pct: frag_pct(s.bytes_req, s.bytes_alloc),
        }
    }
}

/// perf's default slab order, `frag,hit,bytes`: each descending.
pub fn sort_slab_rows(rows: &mut [SlabRow]) {
    rows.sort_by(|a, b| {
        b.frag_pct
            .total_cmp(&a.frag_pct)
            .then(b.hits.cmp(&a.hits))
            .then(b.total_alloc.cmp(&a.total_alloc))
            .then(a.key.cmp(&b.key))
    });
}

/// The slab part of the perf report.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PerfSlabReport {
    /// Totals.
    pub summary: SlabSummary,
    /// Distinct call sites.
    pub nr_callers: usize,
    /// Distinct pointers.
    pub nr_ptrs: usize,
    /// Top call sites (`--caller`), perf's order.
    pub callers: Vec<SlabRow>,
    /// Top pointers (`--alloc`), perf's order.
    pub allocs: Vec<SlabRow>,
}

/// Slab counters kept during a replay (pointer rows live in the replayer's
/// object map, beside the live state, so one lookup serves both).
#[derive(Clone, Debug, Default)]
pub struct PerfSlab {
    /// Totals.
    pub summary: SlabSummary,
    /// Per call site, by interned id.
    pub callers: Vec<SlabStat>,
}

impl PerfSlab {
    /// The row of call site `site`.
    #[inline]
    pub fn caller(&mut self, site: u32) -> &mut SlabStat {
        let i = site as usize;
        if i >= self.callers.len() {
            self.callers.resize(i + 1, SlabStat::default());
        }
        &mut self.callers[i]
    }

    /// One allocation event.
    #[inline]
    pub fn on_alloc(&mut self, site: u32, req: u64, alloc: u64, node: i32) {
        self.caller(site).add(req, alloc);
        let s = &mut self.summary;
        s.nr_allocs += 1;
        s.total_requested = s.total_requested.saturating_add(req);
        s.total_allocated = s.total_allocated.saturating_add(alloc);
        // One node (0) on the traced machine as on the replay machine.
        if node != -1 && node != 0 {
            s.cross_cpu_allocs += 1;
        }
    }

    /// The report: summary and the top `rows` of each table.
    pub fn report(
        &self,
        sites: &Interner,
        ptr_rows: impl Iterator<Item = (u64, SlabStat)>,
        rows: usize,
    ) -> PerfSlabReport {
        let mut summary = self.summary;
        summary.net_allocated = (i128::from(summary.total_allocated)
            - i128::from(summary.total_freed))
        .clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        summary.wasted =
            summary.total_allocated - summary.total_requested.min(summary.total_allocated);
        summary.internal_fragmentation_pct =
            frag_pct(summary.total_requested, summary.total_allocated);
        let mut callers: Vec<SlabRow> = self
            .callers
            .iter()
            .enumerate()
            .filter(|(_, s)| s.hit > 0)
            .map(|(i, s)| SlabRow::new(sites.name(i as u32).to_string(), s))
            .collect();
        let nr_callers = callers.len();
        sort_slab_rows(&mut callers);
        callers.truncate(rows);
        // Pointers are many: order them by number first, format only the top.
        let mut ptrs: Vec<(f64, u64, SlabStat)> = ptr_rows
            .filter(|(_, s)| s.hit > 0)
            .map(|(p, s)| (frag_pct(s.bytes_req, s.bytes_alloc), p, s))
            .collect();
        let nr_ptrs = ptrs.len();
        let key = |a: &(f64, u64, SlabStat), b: &(f64, u64, SlabStat)| {
            b.0.total_cmp(&a.0)
                .then(b.2.hit.cmp(&a.2.hit))
                .then(b.2.bytes_alloc.cmp(&a.2.bytes_alloc))
                .then(a.1.cmp(&b.1))
        };
        if ptrs.len() > rows {
            ptrs.select_nth_unstable_by(rows, key);
            ptrs.truncate(rows);
        }
        ptrs.sort_by(key);
        let allocs: Vec<SlabRow> = ptrs
            .iter()
            .map(|(_, p, s)| SlabRow::new(format!("{p:#x}"), s))
            .collect();
        PerfSlabReport {
            summary,
            nr_callers,
            nr_ptrs,
            callers,
            allocs,
        }
    }
}

/// Key of a page row: perf's `page,order,migtype,gfp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PageKey {
    /// Page frame number.
    pub pfn: u64,
    /// Order.
    pub order: u32,
    /// Migrate type as the trace numbers it.
    pub mt: i32,
    /// GFP bits.
    pub gfp: u32,
}

/// A page row's counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageStat {
    /// Allocations.
    pub nr_alloc: u64,
    /// Bytes allocated.
    pub alloc_bytes: u64,
    /// Frees.
    pub nr_free: u64,
    /// Bytes freed.
    pub free_bytes: u64,
}

/// What perf remembers about a live page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PerfLive {
    /// Order at allocation.
    pub order: u8,
    /// Migrate type at allocation.
    pub mt: i8,
    /// GFP at allocation.
    pub gfp: u32,
}

/// The row of one pfn's latest (order, migrate type, GFP), kept in the
/// replayer's page entry so that the common case costs no lookup of its
/// own; a pfn allocated with another key spills the old row into
/// [`PerfPage::rows`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PerfRow {
    /// The row's key: order, migrate type, GFP.
    pub key: Option<PerfLive>,
    /// Allocations.
    pub nr_alloc: u32,
    /// Frees.
    pub nr_free: u32,
}

/// Page totals, as perf's `SUMMARY (page allocator)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PageSummary {
    /// Allocation requests.
    pub nr_page_allocs: u64,
    /// Their bytes.
    pub total_page_alloc_bytes: u64,
    /// Free requests.
    pub nr_page_frees: u64,
    /// Their bytes.
    pub total_page_free_bytes: u64,
    /// Frees of pages whose allocation is not in the trace.
    pub nr_page_nomatch: u64,
    /// Their bytes.
    pub total_page_nomatch: u64,
    /// Allocations that failed (NULL page).
    pub nr_page_fails: u64,
    /// Their bytes.
    pub total_page_fail_bytes: u64,
    /// Allocated and freed inside the trace: `frees - nomatch`.
    pub nr_alloc_freed: u64,
    /// Their bytes.
    pub alloc_freed_bytes: u64,
    /// Allocated and not freed: `allocs - alloc_freed`.
    pub nr_alloc_only: u64,
    /// Their bytes.
    pub alloc_only_bytes: u64,
}

/// One row of perf's page table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PageRow {
    /// Page frame number.
    pub pfn: u64,
    /// KiB allocated.
    pub total_alloc_kb: u64,
    /// Allocations.
    pub hits: u64,
    /// Order.
    pub order: u32,
    /// Migrate type name.
    pub migrate_type: &'static str,
    /// GFP mask, ftrace spelling.
    pub gfp: String,
}

/// Page allocations with one GFP mask.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GfpRow {
    /// GFP mask, ftrace spelling.
    pub gfp: String,
    /// Allocations.
    pub hits: u64,
    /// KiB allocated.
    pub total_alloc_kb: u64,
    /// Orders seen (bit `o` set for order `o`).
    pub orders: Vec<u32>,
}

/// The page part of the perf report.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PerfPageReport {
    /// Totals.
    pub summary: PageSummary,
    /// Migrate type names, the columns of `order_stats`.
    pub migrate_types: Vec<&'static str>,
    /// Allocations by order (rows, 0..=10) and migrate type (columns).
    pub order_stats: Vec<Vec<u64>>,
    /// Distinct (pfn, order, migrate type, GFP) rows.
    pub nr_rows: usize,
    /// Top rows by bytes then hits (`--alloc`).
    pub allocs: Vec<PageRow>,
    /// Allocations by GFP mask, most frequent first (the first `rows`).
    pub by_gfp: Vec<GfpRow>,
    /// Distinct GFP masks.
    pub nr_gfp: usize,
}

/// Migrate type names as Linux 6.18 numbers them (perf's own header still
/// says Unmovable/Reclaimable/Movable/Reserved, the order of older kernels).
pub const MIGRATE_NAMES: [&str; 6] = [
    "Unmovable",
    "Movable",
    "Reclaimable",
    "HighAtomic",
    "CMA/Isolate",
    "Other",
];

fn mt_col(mt: i32) -> usize {
    usize::try_from(mt).map_or(5, |m| m.min(5))
}

/// Page counters kept during a replay (the live pages are in the replayer's
/// page map: see [`PerfLive`]).
#[derive(Clone, Debug, Default)]
pub struct PerfPage {
    /// Totals.
    pub summary: PageSummary,
    /// Allocations by order and migrate type column.
    pub order_stats: [[u64; 6]; 11],
    /// Rows by (pfn, order, migrate type, GFP).
    pub rows: FoldMap<PageKey, PageStat>,
    /// Allocations by GFP bits: (count, bytes, orders bitmap).
    pub by_gfp: FoldMap<u32, (u64, u64, u32)>,
}

impl PerfPage {
    /// One `mm_page_alloc`; returns what perf makes live (None on failure).
    /// `row` is the pfn's row slot (see [`PerfRow`]).
    #[inline]
    pub fn on_alloc(
        &mut self,
        pfn: u64,
        failed: bool,
        order: u32,
        mt: i32,
        gfp: Gfp,
        row: &mut PerfRow,
    ) -> Option<PerfLive> {
        let bytes = order_bytes(order);
        let s = &mut self.summary;
        s.nr_page_allocs += 1;
        s.total_page_alloc_bytes = s.total_page_alloc_bytes.saturating_add(bytes);
        if failed {
            s.nr_page_fails += 1;
            s.total_page_fail_bytes = s.total_page_fail_bytes.saturating_add(bytes);
            return None;
        }
        let key = PerfLive {
            order: order.min(255) as u8,
            mt: mt.clamp(-128, 127) as i8,
            gfp: gfp.bits(),
        };
        if row.key != Some(key) {
            self.spill(pfn, row);
            *row = PerfRow {
                key: Some(key),
                nr_alloc: 0,
                nr_free: 0,
            };
        }
        row.nr_alloc += 1;
        if let Some(r) = self.order_stats.get_mut(order as usize) {
            r[mt_col(mt)] += 1;
        }
        let g = self.by_gfp.entry(gfp.bits()).or_default();
        g.0 += 1;
        g.1 = g.1.saturating_add(bytes);
        g.2 |= 1 << order.min(31);
        Some(key)
    }

    /// Moves a pfn's row slot into the map of rows.
    fn spill(&mut self, pfn: u64, row: &PerfRow) {
        let Some(k) = row.key else { return };
        if row.nr_alloc == 0 && row.nr_free == 0 {
            return;
        }
        let bytes = order_bytes(u32::from(k.order));
        let r = self
            .rows
            .entry(PageKey {
                pfn,
                order: u32::from(k.order),
                mt: i32::from(k.mt),
                gfp: k.gfp,
            })
            .or_default();
        r.nr_alloc += u64::from(row.nr_alloc);
        r.alloc_bytes = r
            .alloc_bytes
            .saturating_add(u64::from(row.nr_alloc).saturating_mul(bytes));
        r.nr_free += u64::from(row.nr_free);
        r.free_bytes = r
            .free_bytes
            .saturating_add(u64::from(row.nr_free).saturating_mul(bytes));
    }

    /// One `mm_page_free` of `order`; `live` is what perf remembered of the
    /// pfn, `row` its row slot.
    #[inline]
    pub fn on_free(&mut self, pfn: u64, order: u32, live: Option<PerfLive>, row: &mut PerfRow) {
        let bytes = order_bytes(order);
        let s = &mut self.summary;
        s.nr_page_frees += 1;
        s.total_page_free_bytes = s.total_page_free_bytes.saturating_add(bytes);
        let Some(l) = live else {
            s.nr_page_nomatch += 1;
            s.total_page_nomatch = s.total_page_nomatch.saturating_add(bytes);
            return;
        };
        // perf looks the row up with the free's order and the allocation's
        // migrate type and GFP.
        let key = PerfLive {
            order: order.min(255) as u8,
            ..l
        };
        if row.key == Some(key) {
            row.nr_free += 1;
        } else if let Some(r) = self.rows.get_mut(&PageKey {
            pfn,
            order,
            mt: i32::from(l.mt),
            gfp: l.gfp,
        }) {
            r.nr_free += 1;
            r.free_bytes = r.free_bytes.saturating_add(bytes);
        }
    }

    /// Folds every pfn's row slot into the map of rows (before a report).
    pub fn absorb(&mut self, slots: impl Iterator<Item = (u64, PerfRow)>) {
        for (pfn, row) in slots {
            self.spill(pfn, &row);
        }
    }

    /// The report with the top `rows` rows.
    pub fn report(&self, rows: usize) -> PerfPageReport {
        let mut summary = self.summary;
        summary.nr_alloc_freed = summary.nr_page_frees - summary.nr_page_nomatch;
        summary.alloc_freed_bytes = summary.total_page_free_bytes - summary.total_page_nomatch;
        summary.nr_alloc_only = summary
            .nr_page_allocs
            .saturating_sub(summary.nr_alloc_freed);
        summary.alloc_only_bytes = summary
            .total_page_alloc_bytes
            .saturating_sub(summary.alloc_freed_bytes);
        let mut keys: Vec<(&PageKey, &PageStat)> = self.rows.iter().collect();
        keys.sort_by(|a, b| {
            b.1.alloc_bytes
                .cmp(&a.1.alloc_bytes)
                .then(b.1.nr_alloc.cmp(&a.1.nr_alloc))
                .then(a.0.cmp(b.0))
        });
        let allocs = keys
            .iter()
            .take(rows)
            .map(|(k, s)| PageRow {
                pfn: k.pfn,
                total_alloc_kb: s.alloc_bytes / 1024,
                hits: s.nr_alloc,
                order: k.order,
                migrate_type: MIGRATE_NAMES[mt_col(k.mt)],
                gfp: Gfp::from_bits_retain(k.gfp).to_string(),
            })
            .collect();
        let mut by_gfp: Vec<GfpRow> = self
            .by_gfp
            .iter()
            .map(|(g, &(n, b, orders))| GfpRow {
                gfp: Gfp::from_bits_retain(*g).to_string(),
                hits: n,
                total_alloc_kb: b / 1024,
                orders: (0..32).filter(|o| orders & (1 << o) != 0).collect(),
            })
            .collect();
        by_gfp.sort_by(|a, b| b.hits.cmp(&a.hits).then(a.gfp.cmp(&b.gfp)));
        let nr_gfp = by_gfp.len();
        by_gfp.truncate(rows);
        PerfPageReport {
            summary,
            migrate_types: MIGRATE_NAMES.to_vec(),
            order_stats: self.order_stats.iter().map(|r| r.to_vec()).collect(),
            nr_rows: self.rows.len(),
            allocs,
            by_gfp,
            nr_gfp,
        }
    }
}

/// Bytes of an order-`order` block, saturating for orders no kernel has
/// (the parser takes any number; perf refuses orders above its maximum).
pub fn order_bytes(order: u32) -> u64 {
    if order + kmem::PAGE_SHIFT >= u64::BITS {
        u64::MAX
    } else {
        (kmem::PAGE_SIZE as u64) << order
    }
}

/// Thousands separators, as perf prints with `%'lu`.
pub fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    let first = match s.len() % 3 {
        0 => 3,
        r => r,
    };
    for (i, c) in s.chars().enumerate() {
        if i >= first && (i - first).rem_euclid(3) == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Writes the slab tables and summary in perf's layout.
pub fn write_slab(out: &mut String, r: &PerfSlabReport) {
    use std::fmt::Write;
    let line = "-".repeat(105);
    for (title, rows, total) in [
        ("Callsite", &r.callers, r.nr_callers),
        ("Alloc Ptr", &r.allocs, r.nr_ptrs),
    ] {
        let _ = writeln!(out, " {line}");
        let _ = writeln!(
            out,
            " {title:<40} | Total_alloc/Per | Total_req/Per   | Hit      | Ping-pong | Frag"
        );
        let _ = writeln!(out, " {line}");
        for row in rows {
            let key: String = if row.key.len() > 40 {
                row.key.chars().take(40).collect()
            } else {
                row.key.clone()
            };
            let _ = writeln!(
                out,
                " {key:<40} | {:>9}/{:<5} | {:>9}/{:<5} | {:>8} | {:>9} | {:>6.3}%",
                row.total_alloc,
                row.per_alloc,
                row.total_req,
                row.per_req,
                row.hits,
                row.pingpong,
                row.frag_pct
            );
        }
        if total > rows.len() {
            let _ = writeln!(
                out,
                "  ...                                      | {} more",
                total - rows.len()
            );
        }
        let _ = writeln!(out, " {line}");
        let _ = writeln!(out);
    }
    let s = &r.summary;
    let _ = writeln!(out, "SUMMARY (SLAB allocator)");
    let _ = writeln!(out, "========================");
    let _ = writeln!(out, "Total bytes requested: {}", grouped(s.total_requested));
    let _ = writeln!(out, "Total bytes allocated: {}", grouped(s.total_allocated));
    let _ = writeln!(out, "Total bytes freed:     {}", grouped(s.total_freed));
    // perf prints the net only when more was allocated than freed.
    if s.net_allocated > 0 {
        let _ = writeln!(
            out,
            "Net total bytes allocated: {}",
            grouped(s.net_allocated as u64)
        );
    }
    let _ = writeln!(
        out,
        "Total bytes wasted on internal fragmentation: {}",
        grouped(s.wasted)
    );
    let _ = writeln!(
        out,
        "Internal fragmentation: {:.6}%",
        s.internal_fragmentation_pct
    );
    let _ = writeln!(
        out,
        "Cross CPU allocations: {}/{}",
        grouped(s.cross_cpu_allocs),
        grouped(s.nr_allocs)
    );
}

/// Writes the page table, GFP table and summary in perf's layout.
pub fn write_page(out: &mut String, r: &PerfPageReport) {
    use std::fmt::Write;
    let line = "-".repeat(92);
    let _ = writeln!(out, " {line}");
    let _ = writeln!(
        out,
        " {:>10} | {:>16} | {:>8} | {:>5} | {:>11} | GFP flags",
        "PFN", "Total alloc (KB)", "Hits", "Order", "Mig.type"
    );
    let _ = writeln!(out, " {line}");
    for p in &r.allocs {
        let _ = writeln!(
            out,
            " {:>#10x} | {:>16} | {:>8} | {:>5} | {:>11} | {}",
            p.pfn, p.total_alloc_kb, p.hits, p.order, p.migrate_type, p.gfp
        );
    }
    if r.nr_rows > r.allocs.len() {
        let _ = writeln!(out, "  ...        | {} more", r.nr_rows - r.allocs.len());
    }
    let _ = writeln!(out, " {line}");
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        " {:>8} | {:>16} | orders | GFP flags (no call sites: page events carry none)",
        "Hits", "Total alloc (KB)"
    );
    for g in &r.by_gfp {
        let orders: Vec<String> = g.orders.iter().map(|o| o.to_string()).collect();
        let _ = writeln!(
            out,
            " {:>8} | {:>16} | {:>6} | {}",
            g.hits,
            g.total_alloc_kb,
            orders.join(","),
            g.gfp
        );
    }
    if r.nr_gfp > r.by_gfp.len() {
        let _ = writeln!(out, "  ...      | {} more masks", r.nr_gfp - r.by_gfp.len());
    }
    let _ = writeln!(out);
    let s = &r.summary;
    // A count and its bytes in KiB.
    let row = |out: &mut String, what: &str, n: u64, bytes: u64| {
        let _ = writeln!(
            out,
            "{what:<30}: {:>16}   [ {:>16} KB ]",
            grouped(n),
            grouped(bytes / 1024)
        );
    };
    let _ = writeln!(out, "SUMMARY (page allocator)");
    let _ = writeln!(out, "========================");
    row(
        out,
        "Total allocation requests",
        s.nr_page_allocs,
        s.total_page_alloc_bytes,
    );
    row(
        out,
        "Total free requests",
        s.nr_page_frees,
        s.total_page_free_bytes,
    );
    let _ = writeln!(out);
    row(
        out,
        "Total alloc+freed requests",
        s.nr_alloc_freed,
        s.alloc_freed_bytes,
    );
    row(
        out,
        "Total alloc-only requests",
        s.nr_alloc_only,
        s.alloc_only_bytes,
    );
    row(
        out,
        "Total free-only requests",
        s.nr_page_nomatch,
        s.total_page_nomatch,
    );
    let _ = writeln!(out);
    row(
        out,
        "Total allocation failures",
        s.nr_page_fails,
        s.total_page_fail_bytes,
    );
    let _ = writeln!(out);
    let _ = write!(out, "{:>5}", "Order");
    for n in &r.migrate_types {
        let _ = write!(out, "  {n:>12}");
    }
    let _ = writeln!(out);
    let _ = write!(out, "-----");
    for _ in &r.migrate_types {
        let _ = write!(out, "  ------------");
    }
    let _ = writeln!(out);
    for (o, row) in r.order_stats.iter().enumerate() {
        let _ = write!(out, "{o:>5}");
        for &n in row {
            if n == 0 {
                let _ = write!(out, "  {:>12}", ".");
            } else {
                let _ = write!(out, "  {:>12}", grouped(n));
            }
        }
        let _ = writeln!(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_fragmentation_and_rows() {
        assert_eq!(frag_pct(0, 0), 0.0);
        assert_eq!(frag_pct(48, 64), 25.0);
        let mut rows = vec![
            SlabRow::new(
                "a".into(),
                &SlabStat {
                    hit: 5,
                    pingpong: 0,
                    bytes_req: 64,
                    bytes_alloc: 64,
                },
            ),
            SlabRow::new(
                "b".into(),
                &SlabStat {
                    hit: 2,
                    pingpong: 1,
                    bytes_req: 10,
                    bytes_alloc: 16,
                },
            ),
            SlabRow::new(
                "c".into(),
                &SlabStat {
                    hit: 9,
                    pingpong: 0,
                    bytes_req: 64,
                    bytes_alloc: 64,
                },
            ),
        ];
        sort_slab_rows(&mut rows);
        let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["b", "c", "a"]);
        assert_eq!(rows[0].per_alloc, 8);
    }

    #[test]
    fn page_nomatch_and_alloc_freed() {
        let mut p = PerfPage::default();
        let gfp = kmem::gfp::GFP_KERNEL;
        let (mut a, mut b) = (PerfRow::default(), PerfRow::default());
        let live = p.on_alloc(0x100, false, 0, 0, gfp, &mut a);
        assert!(live.is_some());
        assert_eq!(p.on_alloc(0, true, 2, 0, gfp, &mut b), None);
        p.on_free(0x100, 0, live, &mut a);
        p.on_free(0x200, 1, None, &mut b);
        // Another key at the same pfn spills the first row.
        let live2 = p.on_alloc(0x100, false, 1, 1, gfp, &mut a);
        p.on_free(0x100, 1, live2, &mut a);
        p.absorb([(0x100, a), (0x200, b)].into_iter());
        assert_eq!(p.rows.len(), 2);
        let r = p.report(10);
        assert_eq!(r.summary.nr_page_allocs, 3);
        assert_eq!(r.summary.nr_page_fails, 1);
        assert_eq!(r.summary.nr_page_nomatch, 1);
        assert_eq!(r.summary.total_page_nomatch, 8192);
        assert_eq!(r.summary.nr_alloc_freed, 2);
        assert_eq!(r.summary.nr_alloc_only, 1);
        assert_eq!(r.order_stats[0][0], 1);
        assert_eq!(r.order_stats[1][1], 1);
        assert_eq!(r.allocs[0].hits, 1);
        assert_eq!(r.allocs[0].order, 1);
        assert!(p.rows.values().all(|s| s.nr_free == 1));
        assert_eq!(grouped(1234567), "1,234,567");
        assert_eq!(grouped(12), "12");
        let mut out = String::new();
        write_page(&mut out, &r);
        let at = out.find("SUMMARY").unwrap();
        let summary = &out[at..at + out[at..].find("Order").unwrap()];
        assert_eq!(
            summary,
            concat!(
                "SUMMARY (page allocator)\n",
                "========================\n",
                "Total allocation requests     :                3   [               28 KB ]\n",
                "Total free requests           :                3   [               20 KB ]\n",
                "\n",
                "Total alloc+freed requests    :                2   [               12 KB ]\n",
                "Total alloc-only requests     :                1   [               16 KB ]\n",
                "Total free-only requests      :                1   [                8 KB ]\n",
                "\n",
                "Total allocation failures     :                1   [               16 KB ]\n",
                "\n",
            )
        );
    }
}
