//! Zones: a node's memory split by what devices can address.
//!
//! A zone owns the buddy free lists of its frames (one list per order and
//! migrate type, linked through frame records), its watermarks and its lowmem
//! reserve. The lists sit behind the platform's lock; the counters a watermark
//! check needs (free pages, free blocks per order, free pages in the
//! high-order atomic reserve) are atomics so the fast path reads them without
//! the lock, as Linux's `zone_page_state` does.
//!
//! # The high-order atomic reserve
//! Pageblocks of type [`MigrateType::HighAtomic`] are set aside for
//! high-order allocations that cannot sleep (Linux's `MIGRATE_HIGHATOMIC`):
//! `nr_reserved_highatomic` counts the pages of such pageblocks and
//! `nr_free_highatomic` the free pages on their lists. Both change only under
//! the zone lock; the published copies let watermark checks leave the
//! reserve out for requests that may not use it.

use super::frame::{FrameState, Memmap, NIL};
use crate::addr::NR_PAGE_ORDERS;
use crate::gfp::{MigrateType, ZoneType};
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};

/// Number of migrate types that have free lists (Unmovable, Movable,
/// Reclaimable, HighAtomic). `Isolate` is printed but never used.
pub const NR_FREE_LISTS: usize = 4;

/// Index of the high-order atomic reserve's free lists.
pub(crate) const HIGHATOMIC: usize = MigrateType::HighAtomic as usize;

/// Watermark indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watermark {
    /// Below it only reserve-entitled allocations succeed.
    Min = 0,
    /// Below it kswapd is woken; the fast path wants to stay above it.
    Low = 1,
    /// kswapd reclaims until free pages reach it.
    High = 2,
}

/// The free lists of one zone, protected by the zone lock.
pub(crate) struct FreeArea {
    pub(crate) head: [[u32; NR_FREE_LISTS]; NR_PAGE_ORDERS],
    pub(crate) nr_free: [[u32; NR_FREE_LISTS]; NR_PAGE_ORDERS],
    /// Total free pages on these lists.
    pub(crate) free_pages: usize,
    /// Free pages on the HighAtomic lists (Linux's `nr_free_highatomic`).
    pub(crate) nr_free_highatomic: usize,
    /// Pages of the pageblocks reserved as HighAtomic (Linux's
    /// `nr_reserved_highatomic`).
    pub(crate) nr_reserved_highatomic: usize,
}

impl FreeArea {
    pub(crate) const fn new() -> FreeArea {
        FreeArea {
            head: [[NIL; NR_FREE_LISTS]; NR_PAGE_ORDERS],
            nr_free: [[0; NR_FREE_LISTS]; NR_PAGE_ORDERS],
            free_pages: 0,
            nr_free_highatomic: 0,
            nr_reserved_highatomic: 0,
        }
    }

    /// First block on the list, if any.
    #[inline]
    pub(crate) fn first(&self, order: u32, mt: usize) -> Option<u64> {
        let h = self.head[order as usize][mt];
        (h != NIL).then_some(h as u64)
    }

    /// Puts a free block at the head of its list and marks it Buddy.
    pub(crate) fn add(&mut self, mm: &Memmap, pfn: u64, order: u32, mt: usize) {
        let f = mm.frame_unchecked(pfn);
        let old = self.head[order as usize][mt];
        f.next.store(old, Relaxed);
        f.prev.store(NIL, Relaxed);
        if old != NIL {
            mm.frame_unchecked(old as u64)
                .prev
                .store(pfn as u32, Relaxed);
        }
        self.head[order as usize][mt] = pfn as u32;
        f.set(FrameState::Buddy, order, 0, mt);
        self.nr_free[order as usize][mt] += 1;
        self.free_pages += 1 << order;
        if mt == HIGHATOMIC {
            self.nr_free_highatomic += 1 << order;
        }
    }

    /// Unlinks a free block from the list it is on; it becomes a plain Tail
    /// until the caller marks it otherwise.
    pub(crate) fn del(&mut self, mm: &Memmap, pfn: u64) {
        let f = mm.frame_unchecked(pfn);
        debug_assert_eq!(f.state(), FrameState::Buddy);
        let order = f.order();
        let mt = f.migratetype_index();
        let next = f.next.load(Relaxed);
        let prev = f.prev.load(Relaxed);
        if prev == NIL {
            self.head[order as usize][mt] = next;
        } else {
            mm.frame_unchecked(prev as u64).next.store(next, Relaxed);
        }
        if next != NIL {
            mm.frame_unchecked(next as u64).prev.store(prev, Relaxed);
        }
        f.set(FrameState::Tail, 0, 0, 0);
        self.nr_free[order as usize][mt] -= 1;
        self.free_pages -= 1 << order;
        if mt == HIGHATOMIC {
            self.nr_free_highatomic -= 1 << order;
        }
    }

    /// Number of free blocks of `order`, all lists.
    pub(crate) fn blocks(&self, order: usize) -> u32 {
        self.nr_free[order].iter().sum()
    }

    /// Bit `o` set for every order `o` with a free block on an ordinary
    /// (Unmovable, Movable, Reclaimable) list, and the same for the
    /// HighAtomic lists.
    pub(crate) fn order_masks(&self) -> (u32, u32) {
        let (mut normal, mut high) = (0u32, 0u32);
        for o in 0..NR_PAGE_ORDERS {
            let n = &self.nr_free[o];
            if n[..MigrateType::PCPTYPES].iter().any(|&c| c > 0) {
                normal |= 1 << o;
            }
            if n[HIGHATOMIC] > 0 {
                high |= 1 << o;
            }
        }
        (normal, high)
    }
}

/// One zone of one node.
pub struct Zone<L: lock_api::RawMutex> {
    pub(crate) node: usize,
    pub(crate) ztype: ZoneType,
    /// First pfn spanned (inclusive).
    pub(crate) start_pfn: u64,
    /// Pfns spanned, holes included.
    pub(crate) spanned: u64,
    /// RAM pages inside the span (usable and reserved).
    pub(crate) present: u64,
    /// Pages handed to the buddy allocator.
    pub(crate) managed: AtomicUsize,
    /// Free pages on the buddy lists (NR_FREE_PAGES; per-CPU lists excluded).
    pub(crate) free_pages: AtomicUsize,
    /// Free pages on the HighAtomic lists (published `nr_free_highatomic`);
    /// next to `free_pages` so the fast path's watermark check reads one line.
    pub(crate) nr_free_highatomic: AtomicUsize,
    /// Bit `o`: some ordinary list of order `o` holds a free block.
    pub(crate) normal_orders: AtomicU32,
    /// Bit `o`: the HighAtomic list of order `o` holds a free block.
    pub(crate) highatomic_orders: AtomicU32,
    /// Published `nr_reserved_highatomic` (racy pre-check of the limit).
    pub(crate) nr_reserved_highatomic: AtomicUsize,
    /// Free blocks per order, all migrate types (for lock-free watermark checks).
    pub(crate) free_blocks: [AtomicU32; NR_PAGE_ORDERS],
    /// min, low, high watermarks in pages.
    pub(crate) watermark: [AtomicUsize; 3],
    /// Pages kept back from allocations whose highest zone is index `i`.
    pub(crate) lowmem_reserve: [AtomicUsize; 3],
    pub(crate) area: lock_api::Mutex<L, FreeArea>,
}

impl<L: lock_api::RawMutex> Zone<L> {
    pub(crate) fn new(node: usize, ztype: ZoneType) -> Self {
        Zone {
            node,
            ztype,
            start_pfn: 0,
            spanned: 0,
            present: 0,
            managed: AtomicUsize::new(0),
            free_pages: AtomicUsize::new(0),
            nr_free_highatomic: AtomicUsize::new(0),
            normal_orders: AtomicU32::new(0),
            highatomic_orders: AtomicU32::new(0),
            nr_reserved_highatomic: AtomicUsize::new(0),
            free_blocks: core::array::from_fn(|_| AtomicU32::new(0)),
            watermark: core::array::from_fn(|_| AtomicUsize::new(0)),
            lowmem_reserve: core::array::from_fn(|_| AtomicUsize::new(0)),
            area: lock_api::Mutex::new(FreeArea::new()),
        }
    }

    /// Publishes the counters of `area` for lock-free readers. Call before
    /// releasing the lock after changing the lists.
    #[inline]
    pub(crate) fn publish(&self, area: &FreeArea) {
        self.free_pages.store(area.free_pages, Relaxed);
        self.nr_free_highatomic
            .store(area.nr_free_highatomic, Relaxed);
        self.nr_reserved_highatomic
            .store(area.nr_reserved_highatomic, Relaxed);
        for o in 0..NR_PAGE_ORDERS {
            self.free_blocks[o].store(area.blocks(o), Relaxed);
        }
        let (normal, high) = area.order_masks();
        self.normal_orders.store(normal, Relaxed);
        self.highatomic_orders.store(high, Relaxed);
    }

    /// Node it belongs to.
    pub fn node(&self) -> usize {
        self.node
    }
    /// DMA, DMA32 or Normal.
    pub fn zone_type(&self) -> ZoneType {
        self.ztype
    }
    /// First pfn spanned.
    pub fn start_pfn(&self) -> u64 {
        self.start_pfn
    }
    /// Pfns spanned, holes included.
    pub fn spanned_pages(&self) -> u64 {
        self.spanned
    }
    /// RAM pages present in the span.
    pub fn present_pages(&self) -> u64 {
        self.present
    }
    /// Pages managed by the buddy allocator.
    pub fn managed_pages(&self) -> usize {
        self.managed.load(Relaxed)
    }
    /// True if it has any managed page.
    pub fn is_populated(&self) -> bool {
        self.managed_pages() > 0
    }
    /// Free pages on the buddy lists.
    pub fn free_pages(&self) -> usize {
        self.free_pages.load(Relaxed)
    }
    /// Free pages on the HighAtomic lists (Linux's `nr_free_highatomic`):
    /// counted in [`Self::free_pages`], but usable only by requests entitled
    /// to reserves.
    pub fn nr_free_highatomic(&self) -> usize {
        self.nr_free_highatomic.load(Relaxed)
    }
    /// Pages in pageblocks reserved for high-order atomic allocations
    /// (Linux's `nr_reserved_highatomic`).
    pub fn nr_reserved_highatomic(&self) -> usize {
        self.nr_reserved_highatomic.load(Relaxed)
    }
    /// A watermark in pages.
    pub fn watermark(&self, w: Watermark) -> usize {
        self.watermark[w as usize].load(Relaxed)
    }
    /// The lowmem reserve against allocations whose highest allowed zone is `z`.
    pub fn lowmem_reserve(&self, z: ZoneType) -> usize {
        self.lowmem_reserve[z.index()].load(Relaxed)
    }
    /// Free blocks of `order` (all migrate types).
    pub fn free_blocks(&self, order: usize) -> u32 {
        self.free_blocks[order].load(Relaxed)
    }
    /// Free blocks per order and migrate type, read under the zone lock.
    pub fn free_blocks_by_type(&self) -> [[u32; NR_FREE_LISTS]; NR_PAGE_ORDERS] {
        self.area.lock().nr_free
    }
    /// The largest order with a free block, if any.
    pub fn largest_free_order(&self) -> Option<u32> {
        (0..NR_PAGE_ORDERS)
            .rev()
            .find(|&o| self.free_blocks(o) > 0)
            .map(|o| o as u32)
    }
}
