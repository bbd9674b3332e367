//! x86-64 4-level page tables, with table frames from the page allocator.
//!
//! ```text
//!   va bits: 47..39 PML4 | 38..30 PDPT | 29..21 PD | 20..12 PT | 11..0 offset
//!   PML4 entry ─► PDPT ─► PD entry (PS=1: 2 MiB leaf) ─► PT entry (4 KiB leaf)
//!                   └─ PS=1: 1 GiB leaf
//! ```
//!
//! Entries are `u64`s in the hardware layout ([`PteFlags`], physical address
//! in bits 51..12), so the root could be loaded into CR3. Each table is one
//! order-0 frame tagged [`OWNER_PAGE_TABLE`]; its frame record's `private[0]`
//! counts the present entries, which makes "is this table empty?" O(1) and
//! lets [`PageTables::free_empty_tables`] give emptied tables back.
//!
//! # Locking
//! One platform lock serialises changes (map, unmap, table freeing). Tables
//! are never allocated with the lock held: a walk that needs one drops the
//! lock, allocates (possibly reclaiming, for a blocking mask), and resumes,
//! so reclaim never runs under this lock. `translate` walks under it too:
//! emptied tables are freed (and may be reused at once), so a lockless walk
//! could read a table frame that already belongs to someone else. TLB
//! shootdowns are never sent with the lock held (a TLB model fills itself
//! by walking, with its own lock held: the order is TLB model, then tables).
//!
//! # TLB models
//! [`X86PageTables::set_tlbs`] attaches one [`Tlb`] model per CPU. Flushes
//! invalidate every model (a shootdown); [`X86PageTables::access`] translates
//! through the running CPU's model, walking these tables on a miss. Range
//! flushes of more than 33 pages become full flushes, as Linux's
//! `tlb_single_page_flush_ceiling` decides on x86.

use super::{
    is_canonical, Flush, FlushRange, MapError, MapRangeError, PageSize, PageTables, PteFlags, Tlb,
    TranslateError, Translation, UnmapError, OWNER_PAGE_TABLE,
};
use crate::addr::{Pfn, PhysAddr, VirtAddr, PAGE_SHIFT, PAGE_SIZE};
use crate::error::AllocError;
use crate::gfp::{Gfp, GFP_KERNEL};
use crate::page::{PageAllocator, NUMA_NO_NODE};
use crate::platform::Platform;
use core::fmt;
use core::panic::Location;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Physical-address bits of an entry (51..12).
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Entries per table.
pub const ENTRIES: usize = 512;
/// Linux's `tlb_single_page_flush_ceiling`: above this many pages a range
/// flush becomes a full flush.
pub const FLUSH_CEILING_PAGES: usize = 33;

type Table = [AtomicU64; ENTRIES];

/// Bytes one entry at `level` covers (level 1 = PT: 4 KiB).
const fn level_span(level: u32) -> usize {
    1usize << (12 + 9 * (level - 1))
}

const fn index(va: usize, level: u32) -> usize {
    (va >> (12 + 9 * (level - 1))) & (ENTRIES - 1)
}

const fn leaf_size(level: u32) -> PageSize {
    match level {
        1 => PageSize::Size4K,
        2 => PageSize::Size2M,
        _ => PageSize::Size1G,
    }
}

/// Counters of one set of tables.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageTableStats {
    /// Table frames in use, root included.
    pub tables: usize,
    /// Table frames allocated so far (root included).
    pub tables_allocated: usize,
    /// Table frames freed so far.
    pub tables_freed: usize,
    /// Leaf entries written.
    pub leaves_set: usize,
    /// Leaf entries cleared.
    pub leaves_cleared: usize,
    /// Single-page flushes (`invlpg` shootdowns).
    pub invlpg: usize,
    /// Range flushes done page by page.
    pub range_flushes: usize,
    /// Full flushes (asked for, or ranges above the ceiling).
    pub full_flushes: usize,
}

#[derive(Default)]
struct Counters {
    tables: AtomicUsize,
    tables_allocated: AtomicUsize,
    tables_freed: AtomicUsize,
    leaves_set: AtomicUsize,
    leaves_cleared: AtomicUsize,
    invlpg: AtomicUsize,
    range_flushes: AtomicUsize,
    full_flushes: AtomicUsize,
}

/// Increments a counter only ever changed under the table lock.
#[inline]
fn locked_inc(c: &AtomicUsize) {
    c.store(c.load(Relaxed) + 1, Relaxed);
}

/// Frames allocated ahead of a walk, outside the lock.
struct Spares {
    frames: [u64; 3],
    n: usize,
}

/// Why a locked walk stopped.
enum WalkStop {
    /// This many tables are missing below the entry it stopped at.
    NeedTable(usize),
    Err(MapError),
}

fn alloc_table_in<P: Platform>(
    pages: &PageAllocator<P>,
    stats: &Counters,
    gfp: Gfp,
) -> Result<u64, AllocError> {
    let pfn = pages.alloc_pages_node_at(
        NUMA_NO_NODE,
        (gfp | Gfp::ZERO) - Gfp::COMP,
        0,
        Location::caller(),
    )?;
    if let Some(f) = pages.frame(pfn) {
        f.set_owner(OWNER_PAGE_TABLE);
        f.private[0].store(0, Relaxed);
    }
    stats.tables.fetch_add(1, Relaxed);
    stats.tables_allocated.fetch_add(1, Relaxed);
    Ok(pfn.0)
}

/// A 4-level x86-64 page table whose tables live in page-allocator frames.
pub struct X86PageTables<'a, P: Platform> {
    pages: &'a PageAllocator<P>,
    root: Pfn,
    lock: lock_api::Mutex<P::Lock, ()>,
    tlbs: &'a [lock_api::Mutex<P::Lock, Tlb>],
    stats: Counters,
}

impl<'a, P: Platform> X86PageTables<'a, P> {
    /// Empty tables: a fresh, zeroed PML4.
    pub fn new(pages: &'a PageAllocator<P>) -> Result<Self, AllocError> {
        let stats = Counters::default();
        let root = alloc_table_in(pages, &stats, GFP_KERNEL)?;
        Ok(X86PageTables {
            pages,
            root: Pfn(root),
            lock: lock_api::Mutex::new(()),
            tlbs: &[],
            stats,
        })
    }

    /// The PML4 frame (what CR3 would hold).
    pub fn root(&self) -> Pfn {
        self.root
    }

    /// The page allocator the tables come from.
    pub fn pages(&self) -> &'a PageAllocator<P> {
        self.pages
    }

    /// Attaches TLB models, one per CPU (CPU `i` uses `tlbs[i % len]`).
    pub fn set_tlbs(&mut self, tlbs: &'a [lock_api::Mutex<P::Lock, Tlb>]) {
        self.tlbs = tlbs;
    }

    /// The attached TLB models.
    pub fn tlbs(&self) -> &'a [lock_api::Mutex<P::Lock, Tlb>] {
        self.tlbs
    }

    /// Translates `va` through the running CPU's TLB model (walking these
    /// tables on a miss). `None` if no model is attached.
    pub fn access(&self, va: VirtAddr) -> Option<super::tlb::TlbAccess> {
        if self.tlbs.is_empty() {
            return None;
        }
        let cpu = self.pages.platform().cpu_id() % self.tlbs.len();
        let mut tlb = self.tlbs[cpu].lock();
        Some(tlb.access(va, |va| self.translate(va).ok().map(|t| (t.frame, t.size))))
    }

    /// Counters.
    pub fn stats(&self) -> PageTableStats {
        let s = &self.stats;
        PageTableStats {
            tables: s.tables.load(Relaxed),
            tables_allocated: s.tables_allocated.load(Relaxed),
            tables_freed: s.tables_freed.load(Relaxed),
            leaves_set: s.leaves_set.load(Relaxed),
            leaves_cleared: s.leaves_cleared.load(Relaxed),
            invlpg: s.invlpg.load(Relaxed),
            range_flushes: s.range_flushes.load(Relaxed),
            full_flushes: s.full_flushes.load(Relaxed),
        }
    }

    /// The raw entry at `level` for `va`, if the walk gets that far (for
    /// tests and debugging; level 4 = PML4).
    pub fn entry(&self, va: VirtAddr, level: u32) -> Option<u64> {
        let _g = self.lock.lock();
        let mut table = self.root.0;
        for l in (level..=4).rev() {
            let e = self.table(table)[index(va.0, l)].load(Relaxed);
            if l == level {
                return Some(e);
            }
            if e & PteFlags::PRESENT.bits() == 0 || e & PteFlags::HUGE.bits() != 0 {
                return None;
            }
            table = (e & ADDR_MASK) >> 12;
        }
        None
    }

    #[inline]
    fn table(&self, pfn: u64) -> &Table {
        // SAFETY: `pfn` is a table frame we allocated (or the root): a whole
        // page of 512 u64 entries, direct-mapped, alive while referenced by
        // the tables, and only accessed through atomics.
        unsafe { &*self.pages.page_address(Pfn(pfn)).as_ptr::<Table>() }
    }

    #[inline]
    fn count(&self, table: u64) -> &AtomicUsize {
        // Table frames always have records: they came from the allocator.
        &self
            .pages
            .frame(Pfn(table))
            .expect("page-table frame has a record")
            .private[0]
    }

    /// Adjusts a table's present-entry count. Lock held: every writer of
    /// the count holds it, so a plain load and store do.
    #[inline]
    fn bump(&self, table: u64, by: isize) {
        let c = self.count(table);
        c.store(c.load(Relaxed).wrapping_add_signed(by), Relaxed);
    }

    fn alloc_table(&self, gfp: Gfp) -> Result<u64, AllocError> {
        alloc_table_in(self.pages, &self.stats, gfp)
    }

    fn free_table(&self, pfn: u64) {
        if let Some(f) = self.pages.frame(Pfn(pfn)) {
            f.set_owner(0);
            f.private[0].store(0, Relaxed);
        }
        let _ = self.pages.free_pages(Pfn(pfn), 0);
        self.stats.tables.fetch_sub(1, Relaxed);
        self.stats.tables_freed.fetch_add(1, Relaxed);
    }

    fn translation(va: VirtAddr, e: u64, level: u32) -> Translation {
        let size = leaf_size(level);
        let frame = e & ADDR_MASK & !(size.bytes() as u64 - 1);
        Translation {
            pa: PhysAddr(frame + (va.0 & (size.bytes() - 1)) as u64),
            frame: PhysAddr(frame),
            size,
            flags: PteFlags::from_bits_truncate(e & !ADDR_MASK),
        }
    }

    /// Walks down to the table holding the leaf for `va` at `target` level,
    /// creating missing tables from `spares`. Lock held.
    fn walk_create(&self, va: VirtAddr, target: u32, spares: &mut Spares) -> Result<u64, WalkStop> {
        let mut table = self.root.0;
        for level in ((target + 1)..=4).rev() {
            let e = &self.table(table)[index(va.0, level)];
            let v = e.load(Relaxed);
            if v & PteFlags::PRESENT.bits() == 0 {
                if spares.n == 0 {
                    // One table per missing level (Linux's *_alloc_track).
                    return Err(WalkStop::NeedTable((level - target) as usize));
                }
                spares.n -= 1;
                let t = spares.frames[spares.n];
                e.store((t << 12) | PteFlags::TABLE.bits(), Relaxed);
                self.bump(table, 1);
                table = t;
            } else if v & PteFlags::HUGE.bits() != 0 {
                return Err(WalkStop::Err(MapError::ParentHuge {
                    va,
                    existing: Self::translation(va, v, level),
                }));
            } else {
                table = (v & ADDR_MASK) >> 12;
            }
        }
        Ok(table)
    }

    /// The walk behind `translate`, for a canonical `va`. Lock held (the
    /// tables it reads stay allocated).
    fn walk(&self, va: VirtAddr) -> Result<Translation, TranslateError> {
        let mut table = self.root.0;
        for level in (1..=4).rev() {
            let v = self.table(table)[index(va.0, level)].load(Relaxed);
            if v & PteFlags::PRESENT.bits() == 0 {
                return Err(TranslateError::NotMapped { va, level });
            }
            if level == 1 || (level <= 3 && v & PteFlags::HUGE.bits() != 0) {
                return Ok(Self::translation(va, v, level));
            }
            table = (v & ADDR_MASK) >> 12;
        }
        unreachable!("the walk ends at level 1")
    }

    /// Writes the leaf for `va` in `table` (the table at `level`). Lock held.
    /// A range whose empty tables the leaf replaced is added to `flush`, for
    /// the caller to flush once the lock is dropped (a shootdown takes the
    /// TLB models' locks, and a TLB fill walks under this lock).
    fn set_leaf(
        &self,
        table: u64,
        level: u32,
        va: VirtAddr,
        pa: PhysAddr,
        flags: PteFlags,
        flush: &mut Option<(usize, usize)>,
    ) -> Result<(), MapError> {
        let e = &self.table(table)[index(va.0, level)];
        let v = e.load(Relaxed);
        if v & PteFlags::PRESENT.bits() != 0 {
            if level > 1 && v & PteFlags::HUGE.bits() == 0 {
                // A lower table sits there. Linux's pmd_free_pte_page: an
                // empty one may be replaced by the huge leaf.
                let child = (v & ADDR_MASK) >> 12;
                let base = va.0 & !(level_span(level) - 1);
                if self.count(child).load(Relaxed) != 0 && level > 2 {
                    // Tables below may hold nothing but empty tables
                    // (Linux's pud_free_pmd_page frees them all).
                    let end = base.saturating_add(level_span(level));
                    self.free_level(child, level - 1, base, end);
                }
                if self.count(child).load(Relaxed) != 0 {
                    return Err(MapError::TableInUse { va, level });
                }
                e.store(0, Relaxed);
                self.bump(table, -1);
                let end = base.saturating_add(level_span(level));
                *flush = Some(flush.map_or((base, end), |(s, e)| (s.min(base), e.max(end))));
                self.free_table(child);
            } else {
                return Err(MapError::AlreadyMapped {
                    va,
                    existing: Self::translation(va, v, level),
                });
            }
        }
        let mut bits =
            (pa.0 & ADDR_MASK) | (flags - PteFlags::HUGE).bits() | PteFlags::PRESENT.bits();
        if level > 1 {
            bits |= PteFlags::HUGE.bits();
        }
        e.store(bits, Relaxed);
        self.bump(table, 1);
        locked_inc(&self.stats.leaves_set);
        Ok(())
    }

    fn check_map(va: VirtAddr, pa: PhysAddr, size: PageSize) -> Result<(), MapError> {
        if !is_canonical(va) {
            return Err(MapError::NonCanonical { va });
        }
        if !va.0.is_multiple_of(size.bytes()) || !pa.0.is_multiple_of(size.bytes() as u64) {
            return Err(MapError::Unaligned { va, pa, size });
        }
        // The entry keeps bits 12..52; anything above would be cut off and
        // map other memory.
        if pa.0 & !ADDR_MASK & !0xfff != 0 {
            return Err(MapError::PhysTooLarge { pa });
        }
        Ok(())
    }

    /// Allocates spare tables (outside the lock) until `need` are held.
    fn fill_spares(&self, spares: &mut Spares, gfp: Gfp, need: usize) -> Result<(), AllocError> {
        while spares.n < need.min(spares.frames.len()) {
            spares.frames[spares.n] = self.alloc_table(gfp)?;
            spares.n += 1;
        }
        Ok(())
    }

    fn drop_spares(&self, spares: &mut Spares) {
        while spares.n > 0 {
            spares.n -= 1;
            self.free_table(spares.frames[spares.n]);
        }
    }

    /// Maps `n` pages of `size` from `va`, page `i` at `frame(i)`.
    fn map_many(
        &self,
        va: VirtAddr,
        n: usize,
        frame: impl Fn(usize) -> PhysAddr,
        size: PageSize,
        flags: PteFlags,
        gfp: Gfp,
    ) -> Result<(), MapRangeError> {
        let level = size.level();
        let mut spares = Spares {
            frames: [0; 3],
            n: 0,
        };
        let mut need: usize;
        let mut i = 0;
        let mut flush = None;
        let result = loop {
            {
                let _g = self.lock.lock();
                let mut stop = None;
                while i < n {
                    let at = VirtAddr(va.0.wrapping_add(i * size.bytes()));
                    let table = match self.walk_create(at, level, &mut spares) {
                        Ok(t) => t,
                        Err(s) => {
                            stop = Some(s);
                            break;
                        }
                    };
                    // Fill this table's entries while they stay in it.
                    let span_end = (at.0 | (level_span(level + 1) - 1)).wrapping_add(1);
                    loop {
                        let here = VirtAddr(va.0.wrapping_add(i * size.bytes()));
                        if let Err(e) =
                            self.set_leaf(table, level, here, frame(i), flags, &mut flush)
                        {
                            stop = Some(WalkStop::Err(e));
                            break;
                        }
                        i += 1;
                        if i == n || va.0.wrapping_add(i * size.bytes()) == span_end {
                            break;
                        }
                    }
                    if stop.is_some() {
                        break;
                    }
                }
                match stop {
                    None => break Ok(()),
                    Some(WalkStop::Err(error)) => break Err(MapRangeError { mapped: i, error }),
                    Some(WalkStop::NeedTable(k)) => need = k,
                }
            }
            if let Err(e) = self.fill_spares(&mut spares, gfp, need) {
                break Err(MapRangeError {
                    mapped: i,
                    error: MapError::TableAlloc(e),
                });
            }
        };
        self.drop_spares(&mut spares);
        if let Some((start, end)) = flush {
            self.flush_range(VirtAddr(start), VirtAddr(end));
        }
        result
    }

    fn unmap_level(
        &self,
        table: u64,
        level: u32,
        start: usize,
        end: usize,
        on_leaf: &mut dyn FnMut(VirtAddr, PhysAddr, PageSize),
    ) {
        let span = level_span(level);
        let mut va = start;
        while va < end {
            let base = va & !(span - 1);
            let next = base.checked_add(span).map_or(end, |x| x.min(end));
            let e = &self.table(table)[index(va, level)];
            let v = e.load(Relaxed);
            if v & PteFlags::PRESENT.bits() != 0 {
                if level == 1 || v & PteFlags::HUGE.bits() != 0 {
                    e.store(0, Relaxed);
                    self.bump(table, -1);
                    locked_inc(&self.stats.leaves_cleared);
                    let size = leaf_size(level);
                    let frame = v & ADDR_MASK & !(size.bytes() as u64 - 1);
                    on_leaf(VirtAddr(base), PhysAddr(frame), size);
                } else {
                    self.unmap_level((v & ADDR_MASK) >> 12, level - 1, va, next, on_leaf);
                }
            }
            va = next;
        }
    }

    /// Frees empty tables below `table` (at `level`, 2..=4) within range;
    /// returns how many.
    fn free_level(&self, table: u64, level: u32, start: usize, end: usize) -> usize {
        let span = level_span(level);
        let mut freed = 0;
        let mut va = start;
        while va < end {
            let base = va & !(span - 1);
            let next = base.checked_add(span).map_or(end, |x| x.min(end));
            let e = &self.table(table)[index(va, level)];
            let v = e.load(Relaxed);
            if v & PteFlags::PRESENT.bits() != 0 && v & PteFlags::HUGE.bits() == 0 {
                let child = (v & ADDR_MASK) >> 12;
                if level > 2 {
                    freed += self.free_level(child, level - 1, va, next);
                }
                if self.count(child).load(Relaxed) == 0 {
                    e.store(0, Relaxed);
                    self.bump(table, -1);
                    self.free_table(child);
                    freed += 1;
                }
            }
            va = next;
        }
        freed
    }

    fn free_all(&self, table: u64, level: u32) {
        if level > 1 {
            for e in self.table(table).iter() {
                let v = e.load(Relaxed);
                if v & PteFlags::PRESENT.bits() != 0 && v & PteFlags::HUGE.bits() == 0 {
                    self.free_all((v & ADDR_MASK) >> 12, level - 1);
                }
            }
        }
        self.free_table(table);
    }

    fn shootdown(&self, f: impl Fn(&mut Tlb)) {
        for t in self.tlbs {
            f(&mut t.lock());
        }
    }
}

impl<P: Platform> PageTables for X86PageTables<'_, P> {
    fn map(
        &self,
        va: VirtAddr,
        pa: PhysAddr,
        size: PageSize,
        flags: PteFlags,
        gfp: Gfp,
    ) -> Result<Flush<'_, Self>, MapError> {
        Self::check_map(va, pa, size)?;
        self.map_many(va, 1, |_| pa, size, flags, gfp)
            .map_err(|e| e.error)?;
        Ok(Flush::new(self, va))
    }

    fn map_range(
        &self,
        va: VirtAddr,
        frames: &[Pfn],
        size: PageSize,
        flags: PteFlags,
        gfp: Gfp,
    ) -> Result<FlushRange<'_, Self>, MapRangeError> {
        if let Some(f) = frames.first() {
            Self::check_map(va, f.phys(), size)
                .map_err(|error| MapRangeError { mapped: 0, error })?;
            // A range that runs past the top of the address space wraps: as
            // non-canonical as its end would be.
            let last = (frames.len() - 1)
                .checked_mul(size.bytes())
                .and_then(|off| va.0.checked_add(off))
                .map(VirtAddr);
            if let Some(bad) = last.map_or(Some(VirtAddr(usize::MAX)), |l| {
                (!is_canonical(l)).then_some(l)
            }) {
                return Err(MapRangeError {
                    mapped: 0,
                    error: MapError::NonCanonical { va: bad },
                });
            }
        }
        if let Some(i) = frames
            .iter()
            .position(|f| !f.phys().0.is_multiple_of(size.bytes() as u64))
        {
            let at = VirtAddr(va.0 + i * size.bytes());
            return Err(MapRangeError {
                mapped: 0,
                error: MapError::Unaligned {
                    va: at,
                    pa: frames[i].phys(),
                    size,
                },
            });
        }
        // A frame number above the entry's 40 bits: checked on the number,
        // as its address may not fit in 64 bits (and cut to them would name
        // another frame).
        if let Some(f) = frames.iter().find(|f| f.0 > ADDR_MASK >> PAGE_SHIFT) {
            return Err(MapRangeError {
                mapped: 0,
                error: match f.checked_phys() {
                    Some(pa) => MapError::PhysTooLarge { pa },
                    None => MapError::PfnTooLarge { pfn: *f },
                },
            });
        }
        self.map_many(va, frames.len(), |i| frames[i].phys(), size, flags, gfp)?;
        Ok(FlushRange::new(
            self,
            va,
            VirtAddr(va.0.saturating_add(frames.len() * size.bytes())),
        ))
    }

    fn unmap(&self, va: VirtAddr) -> Result<(Translation, Flush<'_, Self>), UnmapError> {
        if !is_canonical(va) {
            return Err(UnmapError::NotMapped { va });
        }
        let _g = self.lock.lock();
        let t = self.walk(va).map_err(|_| UnmapError::NotMapped { va })?;
        if !va.0.is_multiple_of(t.size.bytes()) {
            return Err(UnmapError::SizeMismatch { va, existing: t });
        }
        self.unmap_level(
            self.root.0,
            4,
            va.0,
            va.0.saturating_add(t.size.bytes()),
            &mut |_, _, _| {},
        );
        Ok((t, Flush::new(self, va)))
    }

    fn unmap_range(
        &self,
        start: VirtAddr,
        end: VirtAddr,
        on_leaf: &mut dyn FnMut(VirtAddr, PhysAddr, PageSize),
    ) -> FlushRange<'_, Self> {
        if start < end {
            let _g = self.lock.lock();
            // Only the canonical parts: the walk indexes by bits 47..39
            // alone, so a non-canonical address would alias the other half.
            for (s, e) in canonical_parts(start.0, end.0) {
                self.unmap_level(self.root.0, 4, s, e, on_leaf);
            }
        }
        FlushRange::new(self, start, end)
    }

    fn translate(&self, va: VirtAddr) -> Result<Translation, TranslateError> {
        if !is_canonical(va) {
            return Err(TranslateError::NonCanonical { va });
        }
        // Under the lock: tables the walk passes through may be emptied and
        // freed (free_empty_tables, a huge leaf replacing empty tables) by
        // another CPU, and a freed frame belongs to its next owner.
        let _g = self.lock.lock();
        self.walk(va)
    }

    fn free_empty_tables(&self, start: VirtAddr, end: VirtAddr) -> usize {
        if start >= end {
            return 0;
        }
        let _g = self.lock.lock();
        canonical_parts(start.0, end.0)
            .map(|(s, e)| self.free_level(self.root.0, 4, s, e))
            .sum()
    }

    fn flush_page(&self, va: VirtAddr) {
        self.stats.invlpg.fetch_add(1, Relaxed);
        self.shootdown(|t| t.invlpg(va));
    }

    fn flush_range(&self, start: VirtAddr, end: VirtAddr) {
        if end.0.saturating_sub(start.0) / PAGE_SIZE > FLUSH_CEILING_PAGES {
            self.flush_all();
        } else {
            self.stats.range_flushes.fetch_add(1, Relaxed);
            self.shootdown(|t| t.flush_range(start, end));
        }
    }

    fn flush_all(&self) {
        self.stats.full_flushes.fetch_add(1, Relaxed);
        self.shootdown(|t| t.flush_all());
    }
}

impl<P: Platform> Drop for X86PageTables<'_, P> {
    /// Gives every table frame back (not the frames the leaves map).
    fn drop(&mut self) {
        self.free_all(self.root.0, 4);
    }
}

impl<P: Platform> fmt::Debug for X86PageTables<'_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X86PageTables")
            .field("root", &self.root)
            .field("stats", &self.stats())
            .field("tlbs", &self.tlbs.len())
            .finish()
    }
}

/// The parts of `[start, end)` inside the two canonical halves (below 2^47,
/// and from 2^64 - 2^47), empty parts left out.
fn canonical_parts(start: usize, end: usize) -> impl Iterator<Item = (usize, usize)> {
    const LOW_END: usize = 1 << 47;
    const HIGH_START: usize = !(LOW_END - 1);
    [(start, end.min(LOW_END)), (start.max(HIGH_START), end)]
        .into_iter()
        .filter(|&(s, e)| s < e)
}
