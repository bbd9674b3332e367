//! swiotlb: the bounce pool for buffers a device cannot reach.
//!
//! A 32-bit device cannot put an address above 4 GiB on the bus. When a
//! streaming mapping's buffer lies beyond the device's mask, the mapping is
//! given a *bounce buffer* in this pool instead (which lies below 4 GiB):
//! the device works on the bounce buffer, and the CPU's buffer is kept in
//! step by copies at map, sync and unmap time.
//!
//! ```text
//!   pool = blocks of up to 4 MiB from ZONE_DMA32
//!   block = segments of 128 slots (256 KiB); no mapping crosses a segment
//!   slot = 2 KiB (IO_TLB_SIZE)      record per slot: orig phys, size, first slot, dir
//!
//!   map:    first fit of ceil(size / 2 KiB) free slots in a segment, starting
//!           at a rotating segment; page-sized and larger mappings start on
//!           a page (even slot); copy orig -> bounce
//!   sync:   for_cpu copies bounce -> orig if the device may write;
//!           for_device copies orig -> bounce if the device may read
//!   unmap:  copy bounce -> orig if the device may write, free the slots
//! ```
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
    /// Non-zero while in use.
    used: u8,
}

const _: () = assert!(core::mem::size_of::<Slot>() == 16);

/// What changes under the lock.
struct AllocState {
    /// Segment the next search starts at.
    next_seg: usize,
    /// Slots in use.
    used: usize,
    /// Highest `used` seen.
    hiwater: usize,
    /// Slots in use per segment.
    seg_used: [u8; MAX_SEGMENTS],
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
    /// an empty pool.
    pub(crate) fn new(pages: &PageAllocator<P>, bytes: usize) -> Result<Self, DmaError> {
        let mut s = Swiotlb {
            chunks: [Chunk::default(); MAX_SWIOTLB_CHUNKS],
            nchunks: 0,
            seg_chunk: [0; MAX_SEGMENTS],
            nsegs: 0,
            start: u64::MAX,
            end: 0,
            dmo: pages.platform().direct_map_offset(),
            state: lock_api::Mutex::new(AllocState {
                next_seg: 0,
                used: 0,
                hiwater: 0,
                seg_used: [0; MAX_SEGMENTS],
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
            s.nsegs += segs;
            s.nchunks += 1;
            s.start = s.start.min(phys);
            s.end = s.end.max(phys + (PAGE_SIZE << order) as u64);
            remaining -= 1 << order;
        }
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
    /// mask), as Linux's `swiotlb_search_pool_area` ensures.
    pub(crate) fn map(
        &self,
        orig: PhysAddr,
        size: usize,
        dir: DmaDirection,
        boundary: u64,
    ) -> Result<PhysAddr, DmaError> {
        debug_assert!(size > 0 && size <= SWIOTLB_MAX_MAPPING);
        let nslots = size.div_ceil(IO_TLB_SIZE);
        // Page-sized and larger mappings start on a page, as Linux's stride.
        let stride = if size >= PAGE_SIZE {
            PAGE_SIZE / IO_TLB_SIZE
        } else {
            1
        };
        let tlb = {
            let mut st = self.state.lock();
            let mut found = None;
            for k in 0..self.nsegs {
                let seg = (st.next_seg + k) % self.nsegs;
                if IO_TLB_SEGSIZE - (st.seg_used[seg] as usize) < nslots {
                    continue;
                }
                let ci = self.seg_chunk[seg] as usize;
                let base = (seg - self.chunks[ci].first_seg) * IO_TLB_SEGSIZE;
                let slots = self.slots(ci);
                let chunk_phys = self.chunks[ci].phys;
                let crosses = |first: usize| {
                    let start = chunk_phys + (first * IO_TLB_SIZE) as u64;
                    let last = start + (nslots * IO_TLB_SIZE) as u64 - 1;
                    (start ^ last) & !boundary != 0
                };
                let mut i = 0;
                while i + nslots <= IO_TLB_SEGSIZE {
                    if crosses(base + i) {
                        i += stride;
                        continue;
                    }
                    // SAFETY: base + i + t < nslots of the chunk; records
                    // change only under the lock we hold.
                    let busy =
                        (0..nslots).rfind(|&t| unsafe { (*slots.add(base + i + t)).used != 0 });
                    match busy {
                        None => {
                            found = Some((seg, ci, base + i));
                            break;
                        }
                        Some(t) => i = (i + t + 1).next_multiple_of(stride),
                    }
                }
                if found.is_some() {
                    break;
                }
            }
            let Some((seg, ci, first)) = found else {
                let used = st.used;
                drop(st);
                self.full.fetch_add(1, Relaxed);
                return Err(DmaError::SwiotlbFull {
                    size,
                    total: self.total_slots(),
                    used,
                });
            };
            let rec = Slot {
                orig: orig.0,
                size: size as u32,
                first: first as u16,
                dir: dir as u8,
                used: 1,
            };
            let slots = self.slots(ci);
            for t in 0..nslots {
                // SAFETY: as above.
                unsafe { slots.add(first + t).write(rec) };
            }
            st.seg_used[seg] += nslots as u8;
            st.used += nslots;
            st.hiwater = st.hiwater.max(st.used);
            st.next_seg = seg;
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
        if r.used == 0 {
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
            if (*slots.add(first)).used == 0 {
                return false;
            }
            for t in 0..nslots {
                (*slots.add(first + t)).used = 0;
            }
        }
        let seg = self.chunks[ci].first_seg + first / IO_TLB_SEGSIZE;
        st.seg_used[seg] -= nslots as u8;
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
