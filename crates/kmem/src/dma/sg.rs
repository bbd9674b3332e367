//! Scatter-gather lists: how a physically scattered buffer is handed to a
//! device.
//!
//! A [`Scatterlist`] entry names a piece of a buffer by frame, offset and
//! length (Linux's `struct scatterlist`), and after `dma_map_sg` also
//! carries the DMA segment the device sees (`dma_address`, `dma_length`).
//! A device with scatter-gather support takes one descriptor per segment, so
//! a buffer that is only virtually contiguous — a vmalloc buffer — can still
//! be the target of one transfer.
//!
//! [`SgTable`] keeps its entries in pages from the page allocator (Linux's
//! `sg_alloc_table`, without the chaining: one block of up to 4 MiB, 131072
//! entries), freed when the table is dropped. The `dma_map_sg` family lives
//! in [`super::mapping`] and takes the entries as a slice, so a caller may
//! also keep entries in an array of its own.
//!
//! [`sg_table_from_vmalloc`] builds the list of a vmalloc buffer from its
//! page-table translations (`vmalloc_to_page`), one entry per page piece, and
//! leaves merging to `dma_map_sg`, which merges the pages that happen to be
//! physically adjacent.

use super::device::Device;
use super::mapping::cpu_access_phys;
use super::{DmaAddr, DmaError, OWNER_SG_TABLE};
use crate::addr::{get_order, Pfn, PhysAddr, MAX_PAGE_ORDER, PAGE_SIZE};
use crate::error::AllocError;
use crate::gfp::Gfp;
use crate::page::PageAllocator;
use crate::paging::PageTables;
use crate::platform::Platform;
use crate::vmalloc::Vmalloc;
use core::fmt;
use core::panic::Location;
use core::ptr::NonNull;

const SG_BOUNCED: u32 = 1;

/// One piece of a buffer and, once mapped, one DMA segment (Linux's
/// `struct scatterlist`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scatterlist {
    /// The frame the piece starts in.
    pub page: Pfn,
    /// Offset of the piece in that frame (it may run on into the next
    /// frames of the same block).
    pub offset: u32,
    /// Bytes in the piece.
    pub length: u32,
    /// Bus address of the DMA segment this entry holds after `dma_map_sg`
    /// (`sg_dma_address`).
    pub dma_address: DmaAddr,
    /// Length of that segment; 0 ends the segments (`sg_dma_len`).
    pub dma_length: u32,
    flags: u32,
}

const _: () = assert!(core::mem::size_of::<Scatterlist>() == 32);

impl Scatterlist {
    /// An entry for `length` bytes at `offset` into `page`.
    pub const fn new(page: Pfn, offset: u32, length: u32) -> Scatterlist {
        Scatterlist {
            page,
            offset,
            length,
            dma_address: DmaAddr(0),
            dma_length: 0,
            flags: 0,
        }
    }
    /// Linux's `sg_set_page`.
    pub fn set_page(&mut self, page: Pfn, length: u32, offset: u32) {
        *self = Scatterlist::new(page, offset, length);
    }
    /// Linux's `sg_phys`: physical address of the first byte. For an entry
    /// whose page and offset fit in 64 bits (see [`Self::checked_phys`],
    /// which `dma_map_sg` checks every entry with).
    pub const fn phys(&self) -> PhysAddr {
        PhysAddr(self.page.phys().0.wrapping_add(self.offset as u64))
    }
    /// [`Self::phys`], or `None` if the page number or the page's address
    /// plus the offset does not fit in 64 bits.
    pub const fn checked_phys(&self) -> Option<PhysAddr> {
        match self.page.checked_phys() {
            Some(pa) => match pa.0.checked_add(self.offset as u64) {
                Some(a) => Some(PhysAddr(a)),
                None => None,
            },
            None => None,
        }
    }
    /// Linux's `sg_dma_address`.
    pub const fn sg_dma_address(&self) -> DmaAddr {
        self.dma_address
    }
    /// Linux's `sg_dma_len`.
    pub const fn sg_dma_len(&self) -> u32 {
        self.dma_length
    }
    /// The segment this entry holds goes through a swiotlb bounce buffer.
    pub const fn is_bounced(&self) -> bool {
        self.flags & SG_BOUNCED != 0
    }
    pub(crate) fn set_bounced(&mut self, yes: bool) {
        if yes {
            self.flags |= SG_BOUNCED;
        } else {
            self.flags &= !SG_BOUNCED;
        }
    }
    pub(crate) fn clear_dma(&mut self) {
        self.dma_address = DmaAddr(0);
        self.dma_length = 0;
        self.flags &= !SG_BOUNCED;
    }
}

/// A scatter-gather table in pages of its own (Linux's `struct sg_table`).
pub struct SgTable<'a, P: Platform> {
    pages: &'a PageAllocator<P>,
    sgl: NonNull<Scatterlist>,
    orig_nents: usize,
    nents: usize,
    order: u32,
}

// SAFETY: the table owns its pages; shared access only reads them.
unsafe impl<P: Platform> Send for SgTable<'_, P> {}
// SAFETY: as above.
unsafe impl<P: Platform> Sync for SgTable<'_, P> {}

impl<'a, P: Platform> SgTable<'a, P> {
    /// Linux's `sg_alloc_table`: `nents` empty entries.
    pub fn alloc(pages: &'a PageAllocator<P>, nents: usize, gfp: Gfp) -> Result<Self, DmaError> {
        if nents == 0 {
            return Err(DmaError::ZeroSize);
        }
        let bytes = nents * core::mem::size_of::<Scatterlist>();
        let order = get_order(bytes);
        if order > MAX_PAGE_ORDER {
            return Err(DmaError::NoMemory(AllocError::SizeTooLarge {
                size: bytes,
                max: PAGE_SIZE << MAX_PAGE_ORDER,
            }));
        }
        let pfn = pages.alloc_pages(gfp | Gfp::ZERO, order)?;
        if let Some(f) = pages.frame(pfn) {
            f.set_owner(OWNER_SG_TABLE);
        }
        let va = pages.page_address(pfn);
        Ok(SgTable {
            pages,
            // SAFETY: a direct-map address is never null.
            sgl: unsafe { NonNull::new_unchecked(va.as_ptr()) },
            orig_nents: nents,
            nents: 0,
            order,
        })
    }

    /// Linux's `sg_alloc_table_from_pages`: `size` bytes from `offset` into
    /// the first of `frames`, one entry per run of physically consecutive
    /// frames.
    pub fn from_pages(
        pages: &'a PageAllocator<P>,
        frames: &[Pfn],
        offset: usize,
        size: usize,
        gfp: Gfp,
    ) -> Result<Self, DmaError> {
        if size == 0 || frames.is_empty() || offset >= PAGE_SIZE {
            return Err(DmaError::InvalidArgument(
                "sg_alloc_table_from_pages needs frames, a size and an offset within a page",
            ));
        }
        let npages = (offset + size).div_ceil(PAGE_SIZE);
        if npages > frames.len() {
            return Err(DmaError::InvalidArgument("size runs past the frames given"));
        }
        let frames = &frames[..npages];
        let runs = 1 + frames.windows(2).filter(|w| w[1] != w[0].add(1)).count();
        let mut t = SgTable::alloc(pages, runs, gfp)?;
        let mut left = size;
        let mut i = 0;
        let mut k = 0;
        while i < npages {
            let mut j = i + 1;
            while j < npages && frames[j] == frames[j - 1].add(1) {
                j += 1;
            }
            let off = if i == 0 { offset } else { 0 };
            let len = ((j - i) * PAGE_SIZE - off).min(left);
            t.entries_mut()[k] = Scatterlist::new(frames[i], off as u32, len as u32);
            left -= len;
            k += 1;
            i = j;
        }
        Ok(t)
    }

    /// Every entry (`orig_nents` of them).
    pub fn entries(&self) -> &[Scatterlist] {
        // SAFETY: the table's pages hold orig_nents initialised entries.
        unsafe { core::slice::from_raw_parts(self.sgl.as_ptr(), self.orig_nents) }
    }

    /// Every entry, writable.
    pub fn entries_mut(&mut self) -> &mut [Scatterlist] {
        // SAFETY: as above, borrowed mutably through &mut self.
        unsafe { core::slice::from_raw_parts_mut(self.sgl.as_ptr(), self.orig_nents) }
    }

    /// Entries (Linux's `orig_nents`).
    pub fn orig_nents(&self) -> usize {
        self.orig_nents
    }

    /// DMA segments after `dma_map_sgtable` (Linux's `nents`), 0 if unmapped.
    pub fn nents(&self) -> usize {
        self.nents
    }

    pub(crate) fn set_nents(&mut self, n: usize) {
        self.nents = n;
    }

    /// The mapped segments as `(bus address, length)`.
    pub fn dma_segments(&self) -> impl Iterator<Item = (DmaAddr, u32)> + '_ {
        self.entries()
            .iter()
            .take_while(|s| s.dma_length != 0)
            .map(|s| (s.dma_address, s.dma_length))
    }

    /// Bytes described by the entries.
    pub fn total_length(&self) -> usize {
        self.entries().iter().map(|s| s.length as usize).sum()
    }
}

impl<P: Platform> Drop for SgTable<'_, P> {
    /// Linux's `sg_free_table`.
    fn drop(&mut self) {
        if let Some(pa) = self
            .pages
            .virt_to_phys(crate::addr::VirtAddr::from_ptr(self.sgl.as_ptr()))
        {
            if let Some(f) = self.pages.frame(pa.pfn()) {
                f.set_owner(0);
            }
            let _ = self.pages.free_pages(pa.pfn(), self.order);
        }
    }
}

impl<P: Platform> fmt::Debug for SgTable<'_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SgTable")
            .field("orig_nents", &self.orig_nents)
            .field("nents", &self.nents)
            .finish()
    }
}

/// The scatter-gather table of `len` bytes of a vmalloc buffer at `addr`:
/// one entry per page piece, frames found through the page tables (Linux's
/// `vmalloc_to_page`). Map it with [`super::dma_map_sgtable`].
pub fn sg_table_from_vmalloc<'a, P: Platform, B: PageTables>(
    vm: &Vmalloc<'a, P, B>,
    addr: *const u8,
    len: usize,
    gfp: Gfp,
) -> Result<SgTable<'a, P>, DmaError> {
    if len == 0 {
        return Err(DmaError::ZeroSize);
    }
    if !vm.is_vmalloc_addr(addr) {
        return Err(DmaError::InvalidArgument(
            "sg_table_from_vmalloc of an address outside the vmalloc range",
        ));
    }
    let start = addr as usize;
    let first = start & !(PAGE_SIZE - 1);
    let npages = (start + len - first).div_ceil(PAGE_SIZE);
    let mut t = SgTable::alloc(vm.pages(), npages, gfp)?;
    let mut left = len;
    for (i, s) in t.entries_mut().iter_mut().enumerate() {
        let va = first + i * PAGE_SIZE;
        let pfn = vm
            .vmalloc_to_page(va as *const u8)
            .ok_or(DmaError::InvalidArgument(
                "sg_table_from_vmalloc: a page of the range is not mapped",
            ))?;
        let off = if i == 0 { start - first } else { 0 };
        let l = (PAGE_SIZE - off).min(left);
        *s = Scatterlist::new(pfn, off as u32, l as u32);
        left -= l;
    }
    Ok(t)
}

/// [`super::dma_cpu_access`] for a vmalloc buffer: checks each page piece of
/// `[addr, addr + len)` through its frame.
#[track_caller]
pub fn dma_cpu_access_vmalloc<P: Platform, B: PageTables>(
    dev: &Device<'_, P>,
    vm: &Vmalloc<'_, P, B>,
    addr: *const u8,
    len: usize,
) -> Result<(), DmaError> {
    let site = Location::caller();
    let start = addr as usize;
    let mut off = 0;
    while off < len.max(1) {
        let va = start + off;
        let piece = (PAGE_SIZE - va % PAGE_SIZE).min(len.max(1) - off);
        let pfn = vm
            .vmalloc_to_page(va as *const u8)
            .ok_or(DmaError::InvalidArgument(
                "dma_cpu_access_vmalloc: a page of the range is not mapped",
            ))?;
        let pa = PhysAddr(pfn.phys().0 + (va % PAGE_SIZE) as u64);
        cpu_access_phys(dev, pa, piece, va, site)?;
        off += piece;
    }
    Ok(())
}
