//! swiotlb: the bounce pool for buffers a device cannot reach.
//!
//! A 32-bit device cannot put an address above 4 GiB on the bus. When a
//! streaming mapping's buffer lies beyond the device's mask, the mapping is
//! given a *bounce buffer* in this pool instead (which lies below 4 GiB):
//! the device works on the bounce buffer, and the CPU's buffer is kept in
//! step by copies at map, sync and unmap time.
//!
//! ```text
//!   pool = blocks of up to 4 MiB from ZONE_DMA32, their slots numbered 0..nslabs
//!   block = segments of 128 slots (256 KiB); no mapping crosses a segment
//!   slot = 2 KiB (IO_TLB_SIZE)      record per slot: orig phys, size, first slot, dir
//!   area = nslabs / nareas consecutive slots, with its own search index
//!
//!   map:    next fit of ceil(size / 2 KiB) free slots in one segment: the
//!           search starts in the area of the mapping CPU (cpu & (nareas - 1))
//!           at the area's index, where the last search there stopped, and
//!           wraps to the area's first slot; then the next areas in turn.
//!           Page-sized and larger mappings start on a page (even slot);
//!           copy orig -> bounce
//!   sync:   for_cpu copies bounce -> orig if the device may write;
//!           for_device copies orig -> bounce if the device may read
//!   unmap:  copy bounce -> orig if the device may write, free the slots
//! ```
//!
//! The search is Linux's `swiotlb_search_pool_area`: candidates that are
//! not aligned (a page for mappings of a page or more, else a slot) are
//! stepped over one slot at a time; an aligned candidate that would cross
//! the device's segment boundary or is not the start of `nslots` free
//! slots in its segment is stepped over by the stride (2 slots for page
//! alignment, else 1); an index past the area's end wraps to 0; the area is
//! given up after `area_nslabs` slots checked, or at once if it has fewer
//! free slots than needed. A hit moves the area's index to just past the
//! new mapping (wrapping to 0). There are `nr_cpus` areas rounded up to a
//! power of two (or [`super::DmaConfig::swiotlb_nareas`]), fewer if the
//! pool has fewer segments, as Linux's `swiotlb_adjust_nareas` and
//! `limit_nareas`; slots past `nareas * area_nslabs` belong to no area.
//! Each slot keeps Linux's `list` count (free slots from it to its
//! segment's end), so a candidate is tested in one read, not one per slot
//! of the run; mapping and unmapping update the counts of the run and of
//! the free slots before it in its segment.
//! kmem's streaming mappings have no `min_align_mask` or `alloc_align_mask`
//! (Linux passes 0 for streaming mappings), so only the page rule applies.
//!
//! The map copies the buffer in whatever the direction, as Linux has since
//! its `DMA_FROM_DEVICE` info-leak fix: a device that writes only part of the
//! buffer must not make the unmap copy stale bounce bytes over the rest.
//!
//! # Memory and locking
//! The pool blocks and their slot records (16 bytes per slot, about 0.8 % of
//! the pool) are pages from the page allocator, taken once at boot; the
//! block table is fixed (at most [`MAX_SWIOTLB_CHUNKS`] blocks, 256 MiB) and
//! immutable after boot, so [`Swiotlb::is_swiotlb_buffer`] takes no lock.
//! Slot records and counts change under one platform lock; copies run
//! outside it. Nothing here allocates or waits for memory: a full pool is
//! [`DmaError::SwiotlbFull`], as Linux's "swiotlb buffer is full".

use super::{DmaDirection, DmaError, OWNER_SWIOTLB};
use crate::addr::{get_order, Pfn, PhysAddr, MAX_PAGE_ORDER, PAGE_SHIFT, PAGE_SIZE};
use crate::gfp::{Gfp, GFP_DMA32, GFP_KERNEL};
use crate::page::PageAllocator;
use crate::platform::Platform;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// log2 of the slot size.
pub const IO_TLB_SHIFT: u32 = 11;
/// A bounce slot: 2 KiB.
pub const IO_TLB_SIZE: usize = 1 << IO_TLB_SHIFT;
/// Slots per segment: no mapping crosses a segment.
pub const IO_TLB_SEGSIZE: usize = 128;
/// The largest bounced mapping: one segment, 256 KiB.
pub const SWIOTLB_MAX_MAPPING: usize = IO_TLB_SIZE * IO_TLB_SEGSIZE;
/// Most pool blocks (each at most 4 MiB).
pub const MAX_SWIOTLB_CHUNKS: usize = 64;
/// Most areas (Linux has one per possible CPU, rounded to a power of two).
pub const MAX_SWIOTLB_AREAS: usize = 64;
/// Most segments (256 MiB of pool).
const MAX_SEGMENTS: usize =
    MAX_SWIOTLB_CHUNKS * ((PAGE_SIZE << MAX_PAGE_ORDER) / SWIOTLB_MAX_MAPPING);
/// Pages per segment.
const SEG_PAGES: usize = SWIOTLB_MAX_MAPPING / PAGE_SIZE;

/// One block of the pool.
#[derive(Clone, Copy, Default)]
struct Chunk {
    phys: u64,
    order: u32,
    meta_pfn: u64,
    meta_order: u32,
    first_seg: usize,
}

/// The record of one slot; every slot of a mapping holds the same record.
#[repr(C)]
#[derive(Clone, Copy)]
struct Slot {
    /// Physical address of the original buffer's first byte.
    orig: u64,
    /// Bytes mapped.
    size: u32,
    /// Chunk-local index of the mapping's first slot.
    first: u16,
    /// Direction of the mapping.
    dir: u8,
    /// Linux's `list`: free slots from this one to the end of its segment,
    /// itself included (at most [`IO_TLB_SEGSIZE`]); 0 while in use. A run
    /// of `n` free slots starts here exactly when `list >= n`, so a search
    /// tests a candidate in one read.
    list: u8,
}

const _: () = assert!(core::mem::size_of::<Slot>() == 16);
// A slot's `list` count fits its byte.
const _: () = assert!(IO_TLB_SEGSIZE <= u8::MAX as usize);

/// Linux's bookkeeping after the counts of a run starting at
/// chunk-local slot `i` were set (all 0 when mapped; when freed, `count`
/// at `i`): the free slots just before it in its segment count on from
/// `count`, one more each going back.
///
/// # Safety
/// `slots` must be a chunk's record array and `i` a slot in it, with the
/// pool's lock held. The walk stays in `i`'s segment, so in the chunk (a
/// chunk is whole segments).
unsafe fn recount_before(slots: *mut Slot, mut i: usize, mut count: u8) {
    // SAFETY: i - 1 is in i's segment (the loop stops at its first slot).
    while !i.is_multiple_of(IO_TLB_SEGSIZE) && unsafe { (*slots.add(i - 1)).list } != 0 {
        i -= 1;
        count += 1;
        // SAFETY: as above.
        unsafe { (*slots.add(i)).list = count };
    }
}

/// One area of the pool (Linux's `struct io_tlb_area`).
#[derive(Clone, Copy, Default)]
struct IoTlbArea {
    /// Area-relative slot the next search starts at.
    index: usize,
    /// Slots in use that were allocated from this area.
    used: usize,
}

/// What changes under the lock.
struct AllocState {
    /// Slots in use.
    used: usize,
    /// Highest `used` seen.
    hiwater: usize,
    /// The areas.
    areas: [IoTlbArea; MAX_SWIOTLB_AREAS],
}

/// Counters and figures of the bounce pool (Linux's swiotlb debugfs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwiotlbStats {
    /// Bytes in the pool.
    pub bytes: usize,
    /// Slots in the pool (`io_tlb_nslabs`).
    pub nslabs: usize,
    /// Slots in use (`io_tlb_used`).
    pub used: usize,
    /// Most slots ever in use (`io_tlb_used_hiwater`).
    pub used_hiwater: usize,
    /// Bounced mappings made.
    pub maps: u64,
    /// Bounced mappings undone.
    pub unmaps: u64,
    /// Bytes copied from CPU buffers into bounce slots.
    pub bytes_to_bounce: u64,
    /// Bytes copied from bounce slots back to CPU buffers.
    pub bytes_from_bounce: u64,
    /// Mappings refused because no run of slots was free.
    pub full: u64,
}

/// The bounce pool.
pub struct Swiotlb<P: Platform> {
    chunks: [Chunk; MAX_SWIOTLB_CHUNKS],
    nchunks: usize,
    seg_chunk: [u8; MAX_SEGMENTS],
    nsegs: usize,
    /// Areas (`nareas`), each of `area_nslabs` slots.
    nareas: usize,
    area_nslabs: usize,
    /// Lowest and one past the highest pool address (quick rejection).
    start: u64,
    end: u64,
    dmo: usize,
    state: lock_api::Mutex<P::Lock, AllocState>,
    maps: AtomicU64,
    unmaps: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    full: AtomicU64,
}

/// A bounced mapping as recorded in its slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BounceRecord {
    /// The bounce buffer.
    pub tlb: PhysAddr,
    /// The CPU's buffer.
    pub orig: PhysAddr,
    /// Bytes mapped.
    pub size: usize,
    /// Direction of the mapping.
    pub dir: DmaDirection,
}

impl<P: Platform> Swiotlb<P> {
    /// A pool of `bytes` (rounded up to a segment) from ZONE_DMA32; 0 makes
    /// an empty pool. `nareas` is the number of areas asked for (0: one per
    /// CPU), rounded up to a power of two and limited to one per segment.
    pub(crate) fn new(
        pages: &PageAllocator<P>,
        bytes: usize,
        nareas: usize,
    ) -> Result<Self, DmaError> {
        let mut s = Swiotlb {
            chunks: [Chunk::default(); MAX_SWIOTLB_CHUNKS],
            nchunks: 0,
            seg_chunk: [0; MAX_SEGMENTS],
            nsegs: 0,
            nareas: 0,
            area_nslabs: 0,
            start: u64::MAX,
            end: 0,
            dmo: pages.platform().direct_map_offset(),
            state: lock_api::Mutex::new(AllocState {
                used: 0,
                hiwater: 0,
                areas: [IoTlbArea::default(); MAX_SWIOTLB_AREAS],
            }),
            maps: AtomicU64::new(0),
            unmaps: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            full: AtomicU64::new(0),
        };
        if bytes == 0 {
            return Ok(s);
        }
        if bytes > MAX_SEGMENTS * SWIOTLB_MAX_MAPPING {
            return Err(DmaError::InvalidArgument(
                "swiotlb pool larger than 256 MiB (MAX_SWIOTLB_CHUNKS blocks of 4 MiB)",
            ));
        }
        let mut remaining = bytes.div_ceil(SWIOTLB_MAX_MAPPING) * SEG_PAGES;
        let gfp = GFP_KERNEL | GFP_DMA32 | Gfp::NOWARN;
        let min_order = SEG_PAGES.trailing_zeros();
        while remaining > 0 {
            let mut order = (usize::BITS - 1 - remaining.leading_zeros()).min(MAX_PAGE_ORDER);
            let pfn = loop {
                match pages.alloc_pages(gfp, order) {
                    Ok(p) => break Some(p),
                    Err(_) if order > min_order => order -= 1,
                    Err(_) => break None,
                }
            };
            let Some(pfn) = pfn else {
                s.release(pages);
                return Err(DmaError::NoMemory(crate::error::AllocError::SizeTooLarge {
                    size: bytes,
                    max: pages.nr_free_pages() * PAGE_SIZE,
                }));
            };
            let nslots = (PAGE_SIZE << order) / IO_TLB_SIZE;
            let meta_order = get_order(nslots * core::mem::size_of::<Slot>());
            let meta = match pages.alloc_pages(GFP_KERNEL | Gfp::ZERO, meta_order) {
                Ok(m) => m,
                Err(e) => {
                    let _ = pages.free_pages(pfn, order);
                    s.release(pages);
                    return Err(DmaError::NoMemory(e));
                }
            };
            for f in [pfn, meta] {
                if let Some(fr) = pages.frame(f) {
                    fr.set_owner(OWNER_SWIOTLB);
                }
            }
            let phys = pfn.phys().0;
            let segs = nslots / IO_TLB_SEGSIZE;
            let ci = s.nchunks;
            s.chunks[ci] = Chunk {
                phys,
                order,
                meta_pfn: meta.0,
                meta_order,
                first_seg: s.nsegs,
            };
            for k in 0..segs {
                s.seg_chunk[s.nsegs + k] = ci as u8;
            }
            // Every slot free: each counts the slots to its segment's end.
            let slots = s.slots(ci);
            for i in 0..nslots {
                // SAFETY: i < nslots, the records the meta block holds; the
                // pool is not shared yet.
                unsafe { (*slots.add(i)).list = (IO_TLB_SEGSIZE - i % IO_TLB_SEGSIZE) as u8 };
            }
            s.nsegs += segs;
            s.nchunks += 1;
            s.start = s.start.min(phys);
            s.end = s.end.max(phys + (PAGE_SIZE << order) as u64);
            remaining -= 1 << order;
        }
        // Linux's swiotlb_adjust_nareas and limit_nareas.
        let nslabs = s.total_slots();
        let want = if nareas == 0 {
            pages.platform().nr_cpus()
        } else {
            nareas
        };
        let mut nareas = want.max(1).next_power_of_two().min(MAX_SWIOTLB_AREAS);
        if nslabs < nareas * IO_TLB_SEGSIZE {
            nareas = nslabs / IO_TLB_SEGSIZE;
        }
        s.nareas = nareas;
        s.area_nslabs = nslabs.checked_div(nareas).unwrap_or(0);
        Ok(s)
    }

    /// Gives every block back to the page allocator (teardown).
    pub(crate) fn release(&self, pages: &PageAllocator<P>) {
        for c in &self.chunks[..self.nchunks] {
            for (pfn, order) in [
                (Pfn(c.phys >> PAGE_SHIFT), c.order),
                (Pfn(c.meta_pfn), c.meta_order),
            ] {
                if let Some(f) = pages.frame(pfn) {
                    f.set_owner(0);
                }
                let _ = pages.free_pages(pfn, order);
            }
        }
    }

    /// True if there is a pool at all.
    pub fn is_active(&self) -> bool {
        self.nchunks > 0
    }

    /// Linux's `is_swiotlb_buffer`: does `pa` lie in the pool? Lock-free.
    #[inline]
    pub fn is_swiotlb_buffer(&self, pa: PhysAddr) -> bool {
        pa.0 >= self.start && pa.0 < self.end && self.locate(pa).is_some()
    }

    /// The highest pool address plus one (0 without a pool).
    pub fn end(&self) -> PhysAddr {
        PhysAddr(self.end)
    }

    /// The pool's blocks, as `(first byte, length)`.
    pub fn ranges(&self) -> impl Iterator<Item = (PhysAddr, usize)> + '_ {
        self.chunks[..self.nchunks]
            .iter()
            .map(|c| (PhysAddr(c.phys), PAGE_SIZE << c.order))
    }

    /// Slots in use.
    pub fn used_slots(&self) -> usize {
        self.state.lock().used
    }

    /// Slots in the pool.
    pub fn total_slots(&self) -> usize {
        self.nsegs * IO_TLB_SEGSIZE
    }

    /// Areas of the pool (Linux's `nareas`).
    pub fn nareas(&self) -> usize {
        self.nareas
    }

    /// Slots per area (Linux's `area_nslabs`).
    pub fn area_nslabs(&self) -> usize {
        self.area_nslabs
    }

    /// The slot the next search in area `area` starts at, relative to the
    /// area (Linux's `area->index`).
    pub fn area_index(&self, area: usize) -> usize {
        self.state.lock().areas[area].index
    }

    /// The pool slot `g` (numbered across the blocks in order) as (chunk,
    /// chunk-local slot).
    fn slot_chunk(&self, g: usize) -> (usize, usize) {
        let ci = self.seg_chunk[g / IO_TLB_SEGSIZE] as usize;
        (ci, g - self.chunks[ci].first_seg * IO_TLB_SEGSIZE)
    }

    /// Physical address of pool slot `g`.
    fn slot_phys(&self, g: usize) -> u64 {
        let (ci, local) = self.slot_chunk(g);
        self.chunks[ci].phys + (local * IO_TLB_SIZE) as u64
    }

    /// Are `n` slots from pool slot `g` free and within `g`'s segment (Linux:
    /// `slots[g].list >= n`)?
    fn run_free(&self, g: usize, n: usize) -> bool {
        let seg_end = (g / IO_TLB_SEGSIZE + 1) * IO_TLB_SEGSIZE;
        if g + n > seg_end.min(self.total_slots()) {
            return false;
        }
        let (ci, local) = self.slot_chunk(g);
        let slots = self.slots(ci);
        // SAFETY: local + t < the chunk's slots (same segment); records
        // change only under the lock the caller holds.
        let free = unsafe { (*slots.add(local)).list } as usize >= n;
        debug_assert_eq!(
            free,
            (0..n).all(|t| unsafe { (*slots.add(local + t)).list != 0 }),
            "swiotlb: run counts out of step with the slots at pool slot {g}"
        );
        free
    }

    /// Linux's `swiotlb_search_pool_area`: next fit of `nslots` slots in
    /// area `a`. Returns the pool slot of the run, marked as the area's.
    fn search_area(
        &self,
        st: &mut AllocState,
        a: usize,
        nslots: usize,
        alloc_align_mask: u64,
        boundary: u64,
    ) -> Option<usize> {
        let area_nslabs = self.area_nslabs;
        // A run may end past its area (areas need not end on a segment), so
        // `used` may exceed `area_nslabs`: Linux's unsigned difference then
        // wraps and the search goes on.
        if nslots > area_nslabs.wrapping_sub(st.areas[a].used) {
            return None;
        }
        let wrap = |i: usize| if i >= area_nslabs { 0 } else { i };
        let stride = ((alloc_align_mask >> IO_TLB_SHIFT) + 1) as usize;
        // Linux's iommu_is_span_boundary in slots of the boundary window.
        let max_slots = (boundary >> IO_TLB_SHIFT).saturating_add(1);
        let crosses = |addr: u64| {
            let off = ((addr & boundary) >> IO_TLB_SHIFT) & (max_slots - 1);
            off + nslots as u64 > max_slots
        };
        let base = a * area_nslabs;
        let mut index = st.areas[a].index;
        let mut checked = 0;
        while checked < area_nslabs {
            let g = base + index;
            let addr = self.slot_phys(g);
            if addr & alloc_align_mask != 0 {
                index = wrap(index + 1);
                checked += 1;
                continue;
            }
            if !crosses(addr) && self.run_free(g, nslots) {
                st.areas[a].index = wrap(index + nslots);
                st.areas[a].used += nslots;
                return Some(g);
            }
            index = wrap(index + stride);
            checked += stride;
        }
        None
    }

    /// Every counter.
    pub fn stats(&self) -> SwiotlbStats {
        let (used, hiwater) = {
            let s = self.state.lock();
            (s.used, s.hiwater)
        };
        SwiotlbStats {
            bytes: self.nsegs * SWIOTLB_MAX_MAPPING,
            nslabs: self.total_slots(),
            used,
            used_hiwater: hiwater,
            maps: self.maps.load(Relaxed),
            unmaps: self.unmaps.load(Relaxed),
            bytes_to_bounce: self.bytes_in.load(Relaxed),
            bytes_from_bounce: self.bytes_out.load(Relaxed),
            full: self.full.load(Relaxed),
        }
    }

    /// (chunk index, chunk-local slot) of a pool address.
    fn locate(&self, pa: PhysAddr) -> Option<(usize, usize)> {
        self.chunks[..self.nchunks]
            .iter()
            .position(|c| pa.0 >= c.phys && pa.0 < c.phys + (PAGE_SIZE << c.order) as u64)
            .map(|ci| {
                let c = &self.chunks[ci];
                (ci, ((pa.0 - c.phys) >> IO_TLB_SHIFT) as usize)
            })
    }

    /// The slot records of chunk `ci`.
    fn slots(&self, ci: usize) -> *mut Slot {
        (self.dmo + (self.chunks[ci].meta_pfn << PAGE_SHIFT) as usize) as *mut Slot
    }

    fn va(&self, pa: u64) -> *mut u8 {
        (self.dmo + pa as usize) as *mut u8
    }

    /// Bounces `size` bytes at `orig`: takes a run of slots and copies the
    /// buffer in. Never waits. `size` must be at most 256 KiB. The run never
    /// crosses a multiple of `boundary + 1` (the device's segment boundary
    /// mask), as Linux's `swiotlb_search_pool_area` ensures. The search
    /// starts in the area of `cpu` (Linux's `swiotlb_find_slots`).
    pub(crate) fn map(
        &self,
        orig: PhysAddr,
        size: usize,
        dir: DmaDirection,
        boundary: u64,
        cpu: usize,
    ) -> Result<PhysAddr, DmaError> {
        debug_assert!(size > 0 && size <= SWIOTLB_MAX_MAPPING);
        let nslots = size.div_ceil(IO_TLB_SIZE);
        // Streaming mappings pass no alloc_align_mask: page-sized and larger
        // ones start on a page, as Linux has always kept them; every run
        // starts on a slot.
        let alloc_align_mask = if size >= PAGE_SIZE {
            (PAGE_SIZE - 1) as u64
        } else {
            0
        } | (IO_TLB_SIZE - 1) as u64;
        let tlb = {
            let mut st = self.state.lock();
            let mut found = None;
            if self.nareas > 0 {
                let start = cpu & (self.nareas - 1);
                let mut a = start;
                loop {
                    found = self.search_area(&mut st, a, nslots, alloc_align_mask, boundary);
                    if found.is_some() {
                        break;
                    }
                    a += 1;
                    if a >= self.nareas {
                        a = 0;
                    }
                    if a == start {
                        break;
                    }
                }
            }
            let Some(g) = found else {
                let used = st.used;
                drop(st);
                self.full.fetch_add(1, Relaxed);
                return Err(DmaError::SwiotlbFull {
                    size,
                    total: self.total_slots(),
                    used,
                });
            };
            let (ci, first) = self.slot_chunk(g);
            let rec = Slot {
                orig: orig.0,
                size: size as u32,
                first: first as u16,
                dir: dir as u8,
                list: 0,
            };
            let slots = self.slots(ci);
            for t in 0..nslots {
                // SAFETY: as above.
                unsafe { slots.add(first + t).write(rec) };
            }
            // SAFETY: the chunk's records, under the lock.
            unsafe { recount_before(slots, first, 0) };
            st.used += nslots;
            st.hiwater = st.hiwater.max(st.used);
            self.chunks[ci].phys + (first * IO_TLB_SIZE) as u64
        };
        self.maps.fetch_add(1, Relaxed);
        self.bounce(orig.0, tlb, size, true);
        Ok(PhysAddr(tlb))
    }

    /// Copies between the original buffer and the bounce buffer.
    fn bounce(&self, orig: u64, tlb: u64, len: usize, to_bounce: bool) {
        let (src, dst) = if to_bounce { (orig, tlb) } else { (tlb, orig) };
        // SAFETY: both ranges are RAM in the direct map: the bounce slots
        // belong to this mapping, the original buffer to its mapper, and
        // the pool never overlaps memory handed out elsewhere.
        unsafe { core::ptr::copy_nonoverlapping(self.va(src), self.va(dst), len) };
        if to_bounce {
            self.bytes_in.fetch_add(len as u64, Relaxed);
        } else {
            self.bytes_out.fetch_add(len as u64, Relaxed);
        }
    }

    /// The mapping whose slots hold `pa` (any address inside it).
    pub fn find(&self, pa: PhysAddr) -> Option<BounceRecord> {
        let (ci, slot) = self.locate(pa)?;
        let _st = self.state.lock();
        // SAFETY: slot < nslots of the chunk; read under the lock.
        let r = unsafe { *self.slots(ci).add(slot) };
        if r.list != 0 {
            return None;
        }
        Some(BounceRecord {
            tlb: PhysAddr(self.chunks[ci].phys + (r.first as usize * IO_TLB_SIZE) as u64),
            orig: PhysAddr(r.orig),
            size: r.size as usize,
            dir: DmaDirection::from_bits(r.dir),
        })
    }

    /// Undoes the bounced mapping starting at `tlb`: copies back if the
    /// device may have written, frees the slots. `None` if `tlb` is not the
    /// start of a live bounced mapping (nothing changed).
    pub(crate) fn unmap(&self, tlb: PhysAddr) -> Option<BounceRecord> {
        let rec = self.find(tlb)?;
        if rec.tlb != tlb {
            return None;
        }
        if rec.dir.device_writes() {
            self.bounce(rec.orig.0, rec.tlb.0, rec.size, false);
        }
        self.free_slots(&rec).then_some(rec)
    }

    /// Frees the slots of `rec`; false if they were already free (a racing
    /// double unmap).
    fn free_slots(&self, rec: &BounceRecord) -> bool {
        let Some((ci, first)) = self.locate(rec.tlb) else {
            return false;
        };
        let nslots = rec.size.div_ceil(IO_TLB_SIZE);
        let mut st = self.state.lock();
        let slots = self.slots(ci);
        // SAFETY: the mapping's slots, changed under the lock.
        unsafe {
            if (*slots.add(first)).list != 0 {
                return false;
            }
            // The run becomes free: each slot counts the free slots up to
            // its segment's end, through the run and whatever follows it.
            let end = first + nslots;
            let mut count = if !end.is_multiple_of(IO_TLB_SEGSIZE) {
                (*slots.add(end)).list
            } else {
                0
            };
            for t in (first..end).rev() {
                count += 1;
                (*slots.add(t)).list = count;
            }
            recount_before(slots, first, count);
        }
        // The area the run was allocated from (Linux's swiotlb_release_slots).
        let g = self.chunks[ci].first_seg * IO_TLB_SEGSIZE + first;
        let a = (g / self.area_nslabs).min(self.nareas - 1);
        st.areas[a].used -= nslots;
        st.used -= nslots;
        drop(st);
        self.unmaps.fetch_add(1, Relaxed);
        true
    }

    /// Brings `size` bytes at `pa` (inside a bounced mapping) up to date for
    /// the CPU (`for_cpu`) or the device, in the direction the sync call
    /// names (Linux's swiotlb_sync_single_for_{cpu,device}: a bidirectional
    /// mapping may be synced one way only). Returns the mapping, or `None`
    /// if `pa` is not in one.
    pub(crate) fn sync(
        &self,
        pa: PhysAddr,
        size: usize,
        dir: DmaDirection,
        for_cpu: bool,
    ) -> Option<BounceRecord> {
        let rec = self.find(pa)?;
        let off = (pa.0 - rec.tlb.0) as usize;
        if off >= rec.size {
            return None;
        }
        // Never copy past the mapping (Linux warns and clamps as well).
        let len = size.min(rec.size - off);
        if for_cpu && dir.device_writes() {
            self.bounce(rec.orig.0 + off as u64, pa.0, len, false);
        } else if !for_cpu && dir.device_reads() {
            self.bounce(rec.orig.0 + off as u64, pa.0, len, true);
        }
        Some(rec)
    }

    /// Frees the bounced mapping starting at `tlb` without copying anything
    /// back (device teardown, a multi-entry mapping that failed half way).
    pub(crate) fn discard(&self, tlb: PhysAddr) -> Option<BounceRecord> {
        let rec = self.find(tlb)?;
        if rec.tlb != tlb {
            return None;
        }
        self.free_slots(&rec).then_some(rec)
    }
}
