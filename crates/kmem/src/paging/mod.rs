//! Page tables: the seam between vmalloc and the MMU.
//!
//! vmalloc hands out virtual ranges and needs someone to make them point at
//! physical frames. That someone is a [`PageTables`] backend:
//!
//! - [`x86_64::X86PageTables`]: real x86-64 4-level tables (PML4, PDPT, PD,
//!   PT) whose table frames come from the page allocator, entries in the
//!   hardware layout. This is what a kernel runs; on a hosted machine it runs
//!   too, in memory, next to the mmap-backed mapping (`kmem-host`).
//! - a kernel's own live tables: implement the trait over them.
//!
//! A TLB model ([`tlb::Tlb`]) sits beside the tables: it caches translations
//! the way a core does, so the cost of vmalloc's 4 KiB mappings against the
//! direct map's huge ones can be counted (hits, misses, page walks), and so
//! that lazy TLB flushing can be checked: after a flush no cached
//! translation may disagree with the tables.
//!
//! # Flushing
//! Changing a present entry leaves stale copies in TLBs. Every operation that
//! can leave one returns a `#[must_use]` token ([`Flush`], [`FlushRange`]):
//! call `flush()` to invalidate now, or `ignore()` when the caller batches
//! (vmalloc clears entries at `vfree` and flushes once per purge, as Linux's
//! lazy unmapping does). Mapping a range that was not present needs no flush
//! on x86 (non-present entries are never cached), which is why [`Flush`] can
//! be ignored after `map`.
//!
//! # Errors
//! One error enum per operation ([`MapError`], [`UnmapError`],
//! [`TranslateError`]), each saying where the walk stopped and why.
//!
//! # Usage in IRQs
//! Backends take a platform lock (IRQ-safe in a kernel) around changes;
//! `translate` takes none. Table frames may be allocated while mapping, with
//! the mask the caller passes, so mapping from atomic context needs a
//! non-blocking mask.

pub mod tlb;
pub mod x86_64;

use crate::addr::{Pfn, PhysAddr, VirtAddr};
use crate::error::AllocError;
use crate::gfp::Gfp;
use core::fmt;

pub use tlb::{Tlb, TlbConfig, TlbGeometry, TlbStats};
pub use x86_64::{PageTableStats, X86PageTables};

/// Frame owner tag ([`crate::page::Frame::set_owner`]) of a page-table frame.
pub const OWNER_PAGE_TABLE: u8 = crate::page::owner::PAGE_TABLE;

/// Size of one mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PageSize {
    /// 4 KiB, a PT entry.
    Size4K,
    /// 2 MiB, a PD entry with the PS bit.
    Size2M,
    /// 1 GiB, a PDPT entry with the PS bit.
    Size1G,
}

impl PageSize {
    /// Bytes covered.
    pub const fn bytes(self) -> usize {
        1 << self.shift()
    }
    /// log2 of the size.
    pub const fn shift(self) -> u32 {
        match self {
            PageSize::Size4K => 12,
            PageSize::Size2M => 21,
            PageSize::Size1G => 30,
        }
    }
    /// Buddy order of a block of this size.
    pub const fn order(self) -> u32 {
        self.shift() - 12
    }
    /// Table level holding the leaf: 1 (PT), 2 (PD) or 3 (PDPT).
    pub const fn level(self) -> u32 {
        match self {
            PageSize::Size4K => 1,
            PageSize::Size2M => 2,
            PageSize::Size1G => 3,
        }
    }
    /// Memory references of a full page walk that ends at this leaf
    /// (PML4, PDPT, PD, PT: 4 for 4 KiB, 3 for 2 MiB, 2 for 1 GiB).
    pub const fn walk_refs(self) -> u32 {
        5 - self.level()
    }
    /// Short name, as Linux prints it in `DirectMap4k` and friends.
    pub const fn name(self) -> &'static str {
        match self {
            PageSize::Size4K => "4k",
            PageSize::Size2M => "2M",
            PageSize::Size1G => "1G",
        }
    }
}

bitflags::bitflags! {
    /// Page-table entry bits, in the x86-64 hardware layout.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct PteFlags: u64 {
        /// P: the entry maps something.
        const PRESENT = 1 << 0;
        /// R/W: writes allowed.
        const WRITABLE = 1 << 1;
        /// U/S: user mode may access.
        const USER = 1 << 2;
        /// PWT: write-through.
        const WRITE_THROUGH = 1 << 3;
        /// PCD: caching disabled.
        const NO_CACHE = 1 << 4;
        /// A: set by the CPU on access.
        const ACCESSED = 1 << 5;
        /// D: set by the CPU on write (leaves only).
        const DIRTY = 1 << 6;
        /// PS: a 2 MiB (PD) or 1 GiB (PDPT) leaf.
        const HUGE = 1 << 7;
        /// G: survives CR3 reloads (kernel mappings).
        const GLOBAL = 1 << 8;
        /// XD/NX: no instruction fetch.
        const NO_EXECUTE = 1 << 63;
    }
}

impl PteFlags {
    /// Linux's `PAGE_KERNEL` on x86-64: present, writable, accessed, dirty,
    /// global, not executable. What vmalloc maps with.
    pub const KERNEL: PteFlags = PteFlags::PRESENT
        .union(PteFlags::WRITABLE)
        .union(PteFlags::ACCESSED)
        .union(PteFlags::DIRTY)
        .union(PteFlags::GLOBAL)
        .union(PteFlags::NO_EXECUTE);
    /// Linux's `PAGE_KERNEL_RO`.
    pub const KERNEL_RO: PteFlags = PteFlags::KERNEL.difference(PteFlags::WRITABLE);
    /// Linux's `_KERNPG_TABLE`: what an entry pointing to a lower table
    /// carries (present, writable, accessed, dirty).
    pub const TABLE: PteFlags = PteFlags::PRESENT
        .union(PteFlags::WRITABLE)
        .union(PteFlags::ACCESSED)
        .union(PteFlags::DIRTY);
}

/// Where an address is mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The physical address the virtual address translates to.
    pub pa: PhysAddr,
    /// Start of the physical frame (or huge frame) of the mapping.
    pub frame: PhysAddr,
    /// Size of the mapping.
    pub size: PageSize,
    /// The leaf entry's flags (`HUGE` included for 2 MiB and 1 GiB).
    pub flags: PteFlags,
}

impl Translation {
    /// The 4 KiB frame holding the translated address.
    pub fn pfn(&self) -> Pfn {
        self.pa.pfn()
    }
}

/// Why `map` failed. The tables are unchanged except, possibly, for new empty
/// intermediate tables (reclaimed by [`PageTables::free_empty_tables`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The virtual or physical address is not aligned to the page size.
    Unaligned {
        /// Virtual address.
        va: VirtAddr,
        /// Physical address.
        pa: PhysAddr,
        /// The size asked for.
        size: PageSize,
    },
    /// A physical address beyond the 52 bits an x86-64 entry holds.
    PhysTooLarge {
        /// The physical address.
        pa: PhysAddr,
    },
    /// A frame number whose address does not even fit in 64 bits (2^52 or
    /// more; cut to 64 bits it would name another frame).
    PfnTooLarge {
        /// The frame number.
        pfn: Pfn,
    },
    /// The virtual address is not canonical (bits 63..47 differ).
    NonCanonical {
        /// The address.
        va: VirtAddr,
    },
    /// Something is already mapped there.
    AlreadyMapped {
        /// The address.
        va: VirtAddr,
        /// What it maps to now.
        existing: Translation,
    },
    /// A larger leaf covers the address: it cannot take a smaller mapping.
    ParentHuge {
        /// The address.
        va: VirtAddr,
        /// The covering leaf.
        existing: Translation,
    },
    /// A 2 MiB or 1 GiB leaf was asked for where a lower table with live
    /// entries exists.
    TableInUse {
        /// The address.
        va: VirtAddr,
        /// The level of the table entry (2 or 3).
        level: u32,
    },
    /// A table frame could not be allocated.
    TableAlloc(AllocError),
    /// The backend's own mechanism failed (e.g. a host `mmap`), with an errno.
    Backend {
        /// The address.
        va: VirtAddr,
        /// OS error number, if any.
        errno: i32,
    },
}

impl core::error::Error for MapError {}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::Unaligned { va, pa, size } => write!(
                f,
                "cannot map {va} -> {pa}: not aligned to a {} page",
                size.name()
            ),
            MapError::PhysTooLarge { pa } => write!(
                f,
                "cannot map {pa}: beyond the 52-bit physical addresses a page-table entry holds"
            ),
            MapError::PfnTooLarge { pfn } => write!(
                f,
                "cannot map frame {:#x}: beyond the 52-bit physical addresses a page-table entry holds",
                pfn.0
            ),
            MapError::NonCanonical { va } => write!(f, "cannot map {va}: not a canonical address"),
            MapError::AlreadyMapped { va, existing } => write!(
                f,
                "remapping already mapped page at {va} (maps {} with a {} entry)",
                existing.pa,
                existing.size.name()
            ),
            MapError::ParentHuge { va, existing } => write!(
                f,
                "cannot map {va}: a {} leaf already covers it",
                existing.size.name()
            ),
            MapError::TableInUse { va, level } => write!(
                f,
                "cannot put a huge leaf at {va}: the level-{level} entry points to a table in use"
            ),
            MapError::TableAlloc(e) => write!(f, "page-table allocation failed: {e}"),
            MapError::Backend { va, errno } => {
                write!(f, "backend failed to map {va} (errno {errno})")
            }
        }
    }
}

/// `map_range` stopped: `mapped` pages (from the start) are mapped, the rest
/// are not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapRangeError {
    /// Pages mapped before the failure.
    pub mapped: usize,
    /// Why it stopped.
    pub error: MapError,
}

/// Why `unmap` failed. Nothing was changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnmapError {
    /// Nothing is mapped there.
    NotMapped {
        /// The address.
        va: VirtAddr,
    },
    /// The address is mapped by a leaf of another size, or not at its start.
    SizeMismatch {
        /// The address.
        va: VirtAddr,
        /// What maps it.
        existing: Translation,
    },
}

impl core::error::Error for UnmapError {}

impl fmt::Display for UnmapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnmapError::NotMapped { va } => write!(f, "cannot unmap {va}: not mapped"),
            UnmapError::SizeMismatch { va, existing } => write!(
                f,
                "cannot unmap {va}: it is mapped by a {} entry starting elsewhere or of another size",
                existing.size.name()
            ),
        }
    }
}

/// Why `translate` found nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TranslateError {
    /// The address is not canonical.
    NonCanonical {
        /// The address.
        va: VirtAddr,
    },
    /// The walk hit a non-present entry at `level` (4 = PML4 ... 1 = PT).
    NotMapped {
        /// The address.
        va: VirtAddr,
        /// Level of the non-present entry.
        level: u32,
    },
}

impl core::error::Error for TranslateError {}

impl fmt::Display for TranslateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TranslateError::NonCanonical { va } => write!(f, "{va} is not canonical"),
            TranslateError::NotMapped { va, level } => {
                write!(f, "{va} is not mapped (no present entry at level {level})")
            }
        }
    }
}

/// A TLB entry for one page may be stale: flush it or say why not.
#[must_use = "the TLB may still hold the old translation: call flush() or ignore()"]
pub struct Flush<'t, T: PageTables + ?Sized> {
    tables: &'t T,
    va: VirtAddr,
}

impl<'t, T: PageTables + ?Sized> Flush<'t, T> {
    /// A token for `va` in `tables`.
    pub fn new(tables: &'t T, va: VirtAddr) -> Self {
        Flush { tables, va }
    }
    /// Invalidate the entry now (x86 `invlpg` on every CPU).
    pub fn flush(self) {
        self.tables.flush_page(self.va);
    }
    /// Do not flush: the caller flushes later in a batch, or the old entry
    /// was not present (and so cannot be cached).
    pub fn ignore(self) {}
    /// The address concerned.
    pub fn addr(&self) -> VirtAddr {
        self.va
    }
}

impl<T: PageTables + ?Sized> fmt::Debug for Flush<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Flush({})", self.va)
    }
}

/// TLB entries for a range may be stale: flush them or say why not.
#[must_use = "the TLB may still hold old translations: call flush() or ignore()"]
pub struct FlushRange<'t, T: PageTables + ?Sized> {
    tables: &'t T,
    start: VirtAddr,
    end: VirtAddr,
}

impl<'t, T: PageTables + ?Sized> FlushRange<'t, T> {
    /// A token for `[start, end)` in `tables`.
    pub fn new(tables: &'t T, start: VirtAddr, end: VirtAddr) -> Self {
        FlushRange { tables, start, end }
    }
    /// Invalidate the range now (Linux's `flush_tlb_kernel_range`).
    pub fn flush(self) {
        if self.end > self.start {
            self.tables.flush_range(self.start, self.end);
        }
    }
    /// Do not flush now; the caller batches.
    pub fn ignore(self) {}
    /// The range concerned.
    pub fn range(&self) -> (VirtAddr, VirtAddr) {
        (self.start, self.end)
    }
}

impl<T: PageTables + ?Sized> fmt::Debug for FlushRange<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FlushRange({}..{})", self.start, self.end)
    }
}

/// A page-table backend: what vmalloc needs from the MMU side.
///
/// All methods take `&self`: a backend synchronises its own changes (vmalloc
/// calls it from every CPU). Callers guarantee that two concurrent calls never
/// touch the same virtual range (vmalloc owns each range it maps).
pub trait PageTables: Send + Sync {
    /// Maps one page of `size` at `va` to `pa`. Intermediate tables are
    /// allocated with `gfp` (plus `__GFP_ZERO`).
    fn map(
        &self,
        va: VirtAddr,
        pa: PhysAddr,
        size: PageSize,
        flags: PteFlags,
        gfp: Gfp,
    ) -> Result<Flush<'_, Self>, MapError>;

    /// Maps `frames.len()` pages of `size` from `va` on, `frames[i]` at
    /// `va + i * size`. The default maps one by one; backends batch.
    fn map_range(
        &self,
        va: VirtAddr,
        frames: &[Pfn],
        size: PageSize,
        flags: PteFlags,
        gfp: Gfp,
    ) -> Result<FlushRange<'_, Self>, MapRangeError> {
        for (i, f) in frames.iter().enumerate() {
            let at = VirtAddr(va.0 + i * size.bytes());
            let mapped = match f.checked_phys() {
                Some(pa) => self.map(at, pa, size, flags, gfp),
                None => Err(MapError::PfnTooLarge { pfn: *f }),
            };
            match mapped {
                Ok(t) => t.ignore(),
                Err(error) => return Err(MapRangeError { mapped: i, error }),
            }
        }
        Ok(FlushRange::new(
            self,
            va,
            VirtAddr(va.0 + frames.len() * size.bytes()),
        ))
    }

    /// Removes the leaf mapping `va` (which must be its start), returning what
    /// it mapped.
    fn unmap(&self, va: VirtAddr) -> Result<(Translation, Flush<'_, Self>), UnmapError>;

    /// Clears every present leaf in `[start, end)` (Linux's
    /// `vunmap_range_noflush`), calling `on_leaf(va, frame, size)` for each,
    /// in address order. A huge leaf only partly inside the range is cleared
    /// whole. Tables are kept (see [`Self::free_empty_tables`]).
    fn unmap_range(
        &self,
        start: VirtAddr,
        end: VirtAddr,
        on_leaf: &mut dyn FnMut(VirtAddr, PhysAddr, PageSize),
    ) -> FlushRange<'_, Self>;

    /// Walks the tables for `va`. May run concurrently with any change
    /// (vmalloc_to_page of a guard page while a purge frees the emptied
    /// tables around it): it must never read a table already freed.
    fn translate(&self, va: VirtAddr) -> Result<Translation, TranslateError>;

    /// Frees intermediate tables under `[start, end)` that map nothing any
    /// more (never the root). Call only after the TLB was flushed for the
    /// range. Returns the number of table frames freed.
    fn free_empty_tables(&self, start: VirtAddr, end: VirtAddr) -> usize;

    /// Invalidates the TLB entry of one page on every CPU.
    fn flush_page(&self, va: VirtAddr);

    /// Invalidates TLB entries of `[start, end)` on every CPU.
    fn flush_range(&self, start: VirtAddr, end: VirtAddr);

    /// Invalidates every TLB entry, global ones included, on every CPU.
    fn flush_all(&self);
}

/// True if `va` is canonical for 48-bit virtual addresses.
#[inline]
pub const fn is_canonical(va: VirtAddr) -> bool {
    let top = (va.0 as i64) >> 47;
    top == 0 || top == -1
}
