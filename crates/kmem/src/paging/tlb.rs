//! A TLB model: what a core caches of the page tables, and what a miss costs.
//!
//! The model has the shape of an Intel core's data TLBs:
//!
//! ```text
//!   L1 DTLB:  4 KiB entries | 2 MiB entries | 1 GiB entries     (looked up together)
//!                     │ miss
//!   L2 STLB:  shared 4 KiB + 2 MiB entries  | 1 GiB entries
//!                     │ miss
//!   page walk (PML4 → PDPT → PD → PT): 4 memory references for 4 KiB,
//!   3 for 2 MiB, 2 for 1 GiB; the result fills the L2 and the L1
//! ```
//!
//! Every array is set-associative with true LRU replacement; a set is chosen
//! by the virtual page number modulo the number of sets. Sizes and ways are
//! configurable ([`TlbConfig`]); the default, [`TlbConfig::GOLDEN_COVE`],
//! follows Intel's published figures for the Golden Cove core (12th-gen Core
//! P-core, Sapphire Rapids): L1 96 × 4 KiB (6-way), 32 × 2 MiB (4-way),
//! 8 × 1 GiB (fully associative); STLB 2048 entries (16-way) shared by 4 KiB
//! and 2 MiB pages, 1024 × 1 GiB (8-way). [`TlbConfig::SKYLAKE`] gives the
//! older, smaller Skylake core for comparison. Paging-structure caches (which
//! shorten real walks) are not modelled: a walk always counts every level.
//!
//! Invalidation follows the instructions: [`Tlb::invlpg`] drops every entry
//! covering one address whatever its page size, [`Tlb::flush_range`] drops
//! entries overlapping a range, [`Tlb::flush_all`] drops everything (global
//! entries included, as Linux's `flush_tlb_all` does).
//!
//! Storage is inline (no heap): arrays are sized for the largest supported
//! geometry ([`MAX_L1_ENTRIES`], [`MAX_L2_ENTRIES`], [`MAX_L2_1G_ENTRIES`]),
//! so a `Tlb` is about 150 KiB; keep it in a static, a box or a page.

use super::PageSize;
use crate::addr::{PhysAddr, VirtAddr};
use core::fmt;

/// Most entries of one L1 array.
pub const MAX_L1_ENTRIES: usize = 256;
/// Most entries of the shared L2 array.
pub const MAX_L2_ENTRIES: usize = 4096;
/// Most entries of the L2 1 GiB array.
pub const MAX_L2_1G_ENTRIES: usize = 1024;

/// Entries and associativity of one TLB array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlbGeometry {
    /// Total entries (0 disables the array).
    pub entries: usize,
    /// Ways per set; `entries` for fully associative.
    pub ways: usize,
}

impl TlbGeometry {
    /// `entries` entries, `ways`-way.
    pub const fn new(entries: usize, ways: usize) -> Self {
        TlbGeometry { entries, ways }
    }
    /// Fully associative.
    pub const fn full(entries: usize) -> Self {
        TlbGeometry {
            entries,
            ways: entries,
        }
    }
    fn sets(&self) -> usize {
        if self.entries == 0 {
            0
        } else {
            self.entries / self.ways
        }
    }
}

/// Sizes of the TLB arrays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlbConfig {
    /// L1 data TLB for 4 KiB pages.
    pub l1_4k: TlbGeometry,
    /// L1 data TLB for 2 MiB pages.
    pub l1_2m: TlbGeometry,
    /// L1 data TLB for 1 GiB pages.
    pub l1_1g: TlbGeometry,
    /// Second-level TLB shared by 4 KiB and 2 MiB pages.
    pub l2: TlbGeometry,
    /// Second-level TLB for 1 GiB pages.
    pub l2_1g: TlbGeometry,
}

impl TlbConfig {
    /// Intel Golden Cove (Alder Lake P-core, Sapphire Rapids), load DTLBs.
    pub const GOLDEN_COVE: TlbConfig = TlbConfig {
        l1_4k: TlbGeometry::new(96, 6),
        l1_2m: TlbGeometry::new(32, 4),
        l1_1g: TlbGeometry::full(8),
        l2: TlbGeometry::new(2048, 16),
        l2_1g: TlbGeometry::new(1024, 8),
    };
    /// Intel Skylake: 64 × 4 KiB (4-way), 32 × 2 MiB (4-way), 4 × 1 GiB;
    /// STLB 1536 (12-way) shared 4 KiB/2 MiB, 16 × 1 GiB (4-way).
    pub const SKYLAKE: TlbConfig = TlbConfig {
        l1_4k: TlbGeometry::new(64, 4),
        l1_2m: TlbGeometry::new(32, 4),
        l1_1g: TlbGeometry::full(4),
        l2: TlbGeometry::new(1536, 12),
        l2_1g: TlbGeometry::new(16, 4),
    };

    /// Checks every array fits the model's storage and divides into sets.
    pub fn validate(&self) -> Result<(), TlbConfigError> {
        let arrays = [
            ("l1_4k", self.l1_4k, MAX_L1_ENTRIES),
            ("l1_2m", self.l1_2m, MAX_L1_ENTRIES),
            ("l1_1g", self.l1_1g, MAX_L1_ENTRIES),
            ("l2", self.l2, MAX_L2_ENTRIES),
            ("l2_1g", self.l2_1g, MAX_L2_1G_ENTRIES),
        ];
        for (name, g, max) in arrays {
            if g.entries > max {
                return Err(TlbConfigError::TooLarge {
                    array: name,
                    entries: g.entries,
                    max,
                });
            }
            if g.entries > 0 && (g.ways == 0 || !g.entries.is_multiple_of(g.ways)) {
                return Err(TlbConfigError::BadWays {
                    array: name,
                    entries: g.entries,
                    ways: g.ways,
                });
            }
        }
        Ok(())
    }
}

impl Default for TlbConfig {
    fn default() -> Self {
        TlbConfig::GOLDEN_COVE
    }
}

/// A [`TlbConfig`] the model cannot hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlbConfigError {
    /// More entries than the array's storage.
    TooLarge {
        /// Which array.
        array: &'static str,
        /// Entries asked for.
        entries: usize,
        /// The most it can have.
        max: usize,
    },
    /// Entries not a multiple of a non-zero number of ways.
    BadWays {
        /// Which array.
        array: &'static str,
        /// Entries asked for.
        entries: usize,
        /// Ways asked for.
        ways: usize,
    },
}

impl core::error::Error for TlbConfigError {}

impl fmt::Display for TlbConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlbConfigError::TooLarge {
                array,
                entries,
                max,
            } => {
                write!(f, "TLB array {array}: {entries} entries, at most {max}")
            }
            TlbConfigError::BadWays {
                array,
                entries,
                ways,
            } => write!(
                f,
                "TLB array {array}: {entries} entries do not divide into {ways} ways"
            ),
        }
    }
}

/// Counters of one TLB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlbStats {
    /// Translations asked for.
    pub accesses: u64,
    /// Found in an L1 array.
    pub l1_hits: u64,
    /// Missed L1, found in L2.
    pub l2_hits: u64,
    /// Missed both levels: a page walk followed.
    pub misses: u64,
    /// Page walks done (one per miss).
    pub walks: u64,
    /// Memory references made by page walks.
    pub walk_refs: u64,
    /// Walks that found no mapping (a page fault on hardware).
    pub faults: u64,
    /// Misses that ended at a 4 KiB, 2 MiB and 1 GiB leaf.
    pub walks_by_size: [u64; 3],
    /// `invlpg` operations.
    pub invlpg: u64,
    /// Range flushes.
    pub range_flushes: u64,
    /// Full flushes.
    pub full_flushes: u64,
    /// Valid entries dropped by invalidation.
    pub invalidated: u64,
    /// Valid entries evicted to make room.
    pub evictions: u64,
}

/// How one access was translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlbAccess {
    /// L1 hit.
    L1Hit(PhysAddr),
    /// L1 miss, L2 hit.
    L2Hit(PhysAddr),
    /// Both missed; the page walk found this.
    Walk(PhysAddr),
    /// Both missed and the walk found nothing.
    Fault,
}

impl TlbAccess {
    /// The physical address, unless the access faulted.
    pub fn pa(self) -> Option<PhysAddr> {
        match self {
            TlbAccess::L1Hit(p) | TlbAccess::L2Hit(p) | TlbAccess::Walk(p) => Some(p),
            TlbAccess::Fault => None,
        }
    }
}

/// One cached translation, as seen from outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlbEntry {
    /// First virtual address of the page.
    pub va: VirtAddr,
    /// First physical address of the frame.
    pub frame: PhysAddr,
    /// Page size.
    pub size: PageSize,
    /// 1 for the L1 arrays, 2 for the L2 arrays.
    pub level: u8,
}

#[derive(Clone, Copy, Default)]
struct Slot {
    /// Virtual page number (at the entry's page size) + 1; 0 = invalid.
    tag: u64,
    /// Physical frame base >> 12.
    frame: u64,
    /// Last use, for LRU.
    stamp: u64,
    /// PageSize as 0, 1, 2.
    size: u8,
}

struct Array<const N: usize> {
    geo: TlbGeometry,
    slots: [Slot; N],
}

impl<const N: usize> Array<N> {
    fn new(geo: TlbGeometry) -> Self {
        Array {
            geo,
            slots: [Slot::default(); N],
        }
    }

    fn set_range(&self, vpn: u64) -> core::ops::Range<usize> {
        let sets = self.geo.sets();
        let set = (vpn % sets as u64) as usize;
        set * self.geo.ways..(set + 1) * self.geo.ways
    }

    fn lookup(&mut self, vpn: u64, size: u8, now: u64) -> Option<u64> {
        if self.geo.entries == 0 {
            return None;
        }
        let r = self.set_range(vpn);
        for s in &mut self.slots[r] {
            if s.tag == vpn + 1 && s.size == size {
                s.stamp = now;
                return Some(s.frame);
            }
        }
        None
    }

    fn peek(&self, vpn: u64, size: u8) -> Option<u64> {
        if self.geo.entries == 0 {
            return None;
        }
        self.slots[self.set_range(vpn)]
            .iter()
            .find(|s| s.tag == vpn + 1 && s.size == size)
            .map(|s| s.frame)
    }

    /// Inserts; returns true if a valid entry was evicted.
    fn fill(&mut self, vpn: u64, size: u8, frame: u64, now: u64) -> bool {
        if self.geo.entries == 0 {
            return false;
        }
        let r = self.set_range(vpn);
        let set = &mut self.slots[r];
        let victim = set
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| if s.tag == 0 { 0 } else { s.stamp + 1 })
            .map(|(i, _)| i)
            .unwrap_or(0);
        let evicted = set[victim].tag != 0;
        set[victim] = Slot {
            tag: vpn + 1,
            frame,
            stamp: now,
            size,
        };
        evicted
    }

    /// Drops entries whose page overlaps `[start, end)`; returns how many.
    fn invalidate(&mut self, start: u64, end: u64) -> u64 {
        let mut n = 0;
        if end <= start {
            return 0;
        }
        // Compared as page numbers: the last page's top, 2^64, is not a u64.
        let last = end - 1;
        for s in self.slots[..self.geo.entries].iter_mut() {
            if s.tag == 0 {
                continue;
            }
            let shift = size_of_index(s.size).shift();
            let page = s.tag - 1;
            if start >> shift <= page && page <= last >> shift {
                s.tag = 0;
                n += 1;
            }
        }
        n
    }

    fn entries(&self, level: u8) -> impl Iterator<Item = TlbEntry> + '_ {
        self.slots[..self.geo.entries]
            .iter()
            .filter(|s| s.tag != 0)
            .map(move |s| {
                let size = size_of_index(s.size);
                TlbEntry {
                    va: VirtAddr(((s.tag - 1) << size.shift()) as usize),
                    frame: PhysAddr(s.frame << 12),
                    size,
                    level,
                }
            })
    }
}

fn size_index(s: PageSize) -> u8 {
    match s {
        PageSize::Size4K => 0,
        PageSize::Size2M => 1,
        PageSize::Size1G => 2,
    }
}

fn size_of_index(i: u8) -> PageSize {
    match i {
        0 => PageSize::Size4K,
        1 => PageSize::Size2M,
        _ => PageSize::Size1G,
    }
}

/// A data-TLB model of one CPU.
pub struct Tlb {
    config: TlbConfig,
    l1_4k: Array<MAX_L1_ENTRIES>,
    l1_2m: Array<MAX_L1_ENTRIES>,
    l1_1g: Array<MAX_L1_ENTRIES>,
    l2: Array<MAX_L2_ENTRIES>,
    l2_1g: Array<MAX_L2_1G_ENTRIES>,
    clock: u64,
    stats: TlbStats,
}

impl Tlb {
    /// An empty TLB of the given geometry.
    pub fn new(config: TlbConfig) -> Result<Tlb, TlbConfigError> {
        config.validate()?;
        Ok(Tlb {
            config,
            l1_4k: Array::new(config.l1_4k),
            l1_2m: Array::new(config.l1_2m),
            l1_1g: Array::new(config.l1_1g),
            l2: Array::new(config.l2),
            l2_1g: Array::new(config.l2_1g),
            clock: 0,
            stats: TlbStats::default(),
        })
    }

    /// Its geometry.
    pub fn config(&self) -> &TlbConfig {
        &self.config
    }

    /// Counters so far.
    pub fn stats(&self) -> TlbStats {
        self.stats
    }

    /// Zeroes the counters (entries stay).
    pub fn reset_stats(&mut self) {
        self.stats = TlbStats::default();
    }

    /// Translates `va` as the core would: L1, then L2, then a page walk
    /// through `walk` (which returns the leaf's frame base and size), filling
    /// both levels on a miss.
    pub fn access(
        &mut self,
        va: VirtAddr,
        walk: impl FnOnce(VirtAddr) -> Option<(PhysAddr, PageSize)>,
    ) -> TlbAccess {
        self.clock += 1;
        let now = self.clock;
        self.stats.accesses += 1;
        let v = va.0 as u64;
        let (v4, v2, v1) = (v >> 12, v >> 21, v >> 30);
        let off =
            |frame: u64, size: PageSize| PhysAddr((frame << 12) + (v & (size.bytes() as u64 - 1)));
        if let Some(f) = self.l1_4k.lookup(v4, 0, now) {
            self.stats.l1_hits += 1;
            return TlbAccess::L1Hit(off(f, PageSize::Size4K));
        }
        if let Some(f) = self.l1_2m.lookup(v2, 1, now) {
            self.stats.l1_hits += 1;
            return TlbAccess::L1Hit(off(f, PageSize::Size2M));
        }
        if let Some(f) = self.l1_1g.lookup(v1, 2, now) {
            self.stats.l1_hits += 1;
            return TlbAccess::L1Hit(off(f, PageSize::Size1G));
        }
        if let Some(f) = self.l2.lookup(v4, 0, now) {
            self.stats.l2_hits += 1;
            self.fill_l1(PageSize::Size4K, v4, f, now);
            return TlbAccess::L2Hit(off(f, PageSize::Size4K));
        }
        if let Some(f) = self.l2.lookup(v2, 1, now) {
            self.stats.l2_hits += 1;
            self.fill_l1(PageSize::Size2M, v2, f, now);
            return TlbAccess::L2Hit(off(f, PageSize::Size2M));
        }
        if let Some(f) = self.l2_1g.lookup(v1, 2, now) {
            self.stats.l2_hits += 1;
            self.fill_l1(PageSize::Size1G, v1, f, now);
            return TlbAccess::L2Hit(off(f, PageSize::Size1G));
        }
        self.stats.misses += 1;
        self.stats.walks += 1;
        match walk(va) {
            None => {
                // A not-present walk reads down to the missing entry; count
                // the full depth as an upper bound.
                self.stats.walk_refs += 4;
                self.stats.faults += 1;
                TlbAccess::Fault
            }
            Some((frame, size)) => {
                self.stats.walk_refs += size.walk_refs() as u64;
                self.stats.walks_by_size[size_index(size) as usize] += 1;
                let f = frame.0 >> 12;
                let vpn = v >> size.shift();
                let ev = match size {
                    PageSize::Size1G => self.l2_1g.fill(vpn, 2, f, now),
                    s => self.l2.fill(vpn, size_index(s), f, now),
                };
                self.stats.evictions += ev as u64;
                self.fill_l1(size, vpn, f, now);
                TlbAccess::Walk(off(f, size))
            }
        }
    }

    fn fill_l1(&mut self, size: PageSize, vpn: u64, frame: u64, now: u64) {
        let ev = match size {
            PageSize::Size4K => self.l1_4k.fill(vpn, 0, frame, now),
            PageSize::Size2M => self.l1_2m.fill(vpn, 1, frame, now),
            PageSize::Size1G => self.l1_1g.fill(vpn, 2, frame, now),
        };
        self.stats.evictions += ev as u64;
    }

    /// What the TLB would answer for `va`, without touching LRU state or
    /// counters: the physical address and page size, if cached anywhere.
    pub fn lookup(&self, va: VirtAddr) -> Option<(PhysAddr, PageSize)> {
        let v = va.0 as u64;
        let probes = [
            (PageSize::Size4K, self.l1_4k.peek(v >> 12, 0)),
            (PageSize::Size2M, self.l1_2m.peek(v >> 21, 1)),
            (PageSize::Size1G, self.l1_1g.peek(v >> 30, 2)),
            (PageSize::Size4K, self.l2.peek(v >> 12, 0)),
            (PageSize::Size2M, self.l2.peek(v >> 21, 1)),
            (PageSize::Size1G, self.l2_1g.peek(v >> 30, 2)),
        ];
        probes.into_iter().find_map(|(size, f)| {
            f.map(|f| (PhysAddr((f << 12) + (v & (size.bytes() as u64 - 1))), size))
        })
    }

    /// x86 `invlpg`: drops every entry (any size, both levels) covering `va`.
    pub fn invlpg(&mut self, va: VirtAddr) {
        self.stats.invlpg += 1;
        // The 4 KiB page holding va: its first byte, so the range never
        // ends past 2^64 - 1.
        let v = va.0 as u64 & !0xfff;
        self.invalidate(v, v + 1);
    }

    /// Drops every entry overlapping `[start, end)`.
    pub fn flush_range(&mut self, start: VirtAddr, end: VirtAddr) {
        self.stats.range_flushes += 1;
        self.invalidate(start.0 as u64, end.0 as u64);
    }

    /// Drops every entry.
    pub fn flush_all(&mut self) {
        self.stats.full_flushes += 1;
        self.invalidate(0, u64::MAX);
    }

    fn invalidate(&mut self, start: u64, end: u64) {
        let n = self.l1_4k.invalidate(start, end)
            + self.l1_2m.invalidate(start, end)
            + self.l1_1g.invalidate(start, end)
            + self.l2.invalidate(start, end)
            + self.l2_1g.invalidate(start, end);
        self.stats.invalidated += n;
    }

    /// Every valid entry, L1 arrays first.
    pub fn entries(&self) -> impl Iterator<Item = TlbEntry> + '_ {
        self.l1_4k
            .entries(1)
            .chain(self.l1_2m.entries(1))
            .chain(self.l1_1g.entries(1))
            .chain(self.l2.entries(2))
            .chain(self.l2_1g.entries(2))
    }

    /// Number of valid entries.
    pub fn len(&self) -> usize {
        self.entries().count()
    }

    /// True if nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries().next().is_none()
    }

    /// Entries that disagree with `translate` (a stale translation: the
    /// tables map the page elsewhere, with another size, or not at all).
    pub fn stale_entries<'s>(
        &'s self,
        translate: impl Fn(VirtAddr) -> Option<(PhysAddr, PageSize)> + 's,
    ) -> impl Iterator<Item = TlbEntry> + 's {
        self.entries()
            .filter(move |e| translate(e.va) != Some((e.frame, e.size)))
    }
}

impl fmt::Debug for Tlb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tlb")
            .field("config", &self.config)
            .field("entries", &self.len())
            .field("stats", &self.stats)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::boxed::Box;

    fn tlb(config: TlbConfig) -> Box<Tlb> {
        Box::new(Tlb::new(config).unwrap())
    }

    fn walk4k(va: VirtAddr) -> Option<(PhysAddr, PageSize)> {
        Some((
            PhysAddr((va.0 as u64 & !0xfff) + 0x1000_0000),
            PageSize::Size4K,
        ))
    }

    #[test]
    fn hit_after_walk() {
        let mut t = tlb(TlbConfig::GOLDEN_COVE);
        let va = VirtAddr(0x1234_5678);
        assert_eq!(
            t.access(va, walk4k),
            TlbAccess::Walk(PhysAddr(0x1000_0000 + 0x1234_5678))
        );
        assert!(matches!(
            t.access(va, |_| unreachable!()),
            TlbAccess::L1Hit(_)
        ));
        let s = t.stats();
        assert_eq!((s.accesses, s.l1_hits, s.misses, s.walk_refs), (2, 1, 1, 4));
    }

    #[test]
    fn lru_evicts_the_oldest_way() {
        // One set of 2 ways in L1, no L2.
        let cfg = TlbConfig {
            l1_4k: TlbGeometry::full(2),
            l1_2m: TlbGeometry::full(0),
            l1_1g: TlbGeometry::full(0),
            l2: TlbGeometry::full(0),
            l2_1g: TlbGeometry::full(0),
        };
        let mut t = tlb(cfg);
        let a = VirtAddr(0x1000);
        let b = VirtAddr(0x2000);
        let c = VirtAddr(0x3000);
        t.access(a, walk4k);
        t.access(b, walk4k);
        t.access(a, walk4k); // a is now most recent
        t.access(c, walk4k); // evicts b
        assert!(t.lookup(a).is_some());
        assert!(t.lookup(b).is_none());
        assert!(t.lookup(c).is_some());
        assert_eq!(t.stats().evictions, 1);
    }

    #[test]
    fn l2_catches_l1_evictions() {
        let mut t = tlb(TlbConfig::SKYLAKE);
        // 256 pages: more than the 64-entry L1, fewer than the 1536 L2.
        for round in 0..2 {
            for i in 0..256usize {
                t.access(VirtAddr(i << 12), walk4k);
            }
            if round == 0 {
                assert_eq!(t.stats().walks, 256);
            }
        }
        let s = t.stats();
        assert_eq!(s.walks, 256);
        assert_eq!(s.l2_hits + s.l1_hits, 256);
    }

    #[test]
    fn invlpg_drops_huge_entries_too() {
        let mut t = tlb(TlbConfig::GOLDEN_COVE);
        let huge = |va: VirtAddr| Some((PhysAddr(va.0 as u64 & !0x1f_ffff), PageSize::Size2M));
        t.access(VirtAddr(0x20_0000), huge);
        assert!(t.lookup(VirtAddr(0x3f_f000)).is_some());
        t.invlpg(VirtAddr(0x30_0000));
        assert!(t.is_empty());
    }

    #[test]
    fn flush_range_keeps_outside_entries() {
        let mut t = tlb(TlbConfig::GOLDEN_COVE);
        for i in 0..8usize {
            t.access(VirtAddr(i << 12), walk4k);
        }
        t.flush_range(VirtAddr(0x2000), VirtAddr(0x4000));
        assert!(t.lookup(VirtAddr(0x1000)).is_some());
        assert!(t.lookup(VirtAddr(0x2000)).is_none());
        assert!(t.lookup(VirtAddr(0x3000)).is_none());
        assert!(t.lookup(VirtAddr(0x4000)).is_some());
        t.flush_all();
        assert!(t.is_empty());
    }

    #[test]
    fn bad_config_is_refused() {
        let mut cfg = TlbConfig::GOLDEN_COVE;
        cfg.l2 = TlbGeometry::new(10_000, 16);
        assert!(matches!(
            Tlb::new(cfg),
            Err(TlbConfigError::TooLarge { .. })
        ));
        cfg.l2 = TlbGeometry::new(100, 16);
        assert!(matches!(Tlb::new(cfg), Err(TlbConfigError::BadWays { .. })));
    }
}
