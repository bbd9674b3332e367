//! The buddy allocator proper: split, merge, mobility fallback, and the
//! high-order atomic reserve.
//!
//! A free block of order `n` starts at a pfn aligned to `2^n`; its buddy is
//! the block at `pfn ^ 2^n`. Freeing looks the buddy up in O(1) through the
//! frame records and merges while the buddy is a free head of the same order
//! in the same zone. Allocation takes the smallest block of the wanted
//! migrate type and splits it, putting halves back (`expand`).
//!
//! Free blocks sit on the list of their pageblock's migrate type, always
//! (Linux 6.10's free-list hygiene; [`PageAllocator::verify`] checks it).
//! Merging two pageblocks of different types gives the merged block the type
//! of the block being freed, and a HighAtomic pageblock never merges with an
//! ordinary one (Linux's `__free_one_page`); a block larger than a pageblock
//! is freed one pageblock at a time (`split_large_buddy`).
//!
//! When a type's lists are empty, the allocator falls back to another type
//! as Linux does (`__rmqueue_claim`, then `__rmqueue_steal`): from the
//! largest order down it takes the first non-empty fallback list of each
//! order and tries to *claim* that block's pageblock (always for a block of
//! a pageblock or more; otherwise for unmovable/reclaimable requests, or
//! orders from half a pageblock up, when at least half the pageblock is free
//! or "alike": for a movable request its movable pages, for another request
//! from a movable pageblock everything neither free nor movable), re-typing
//! it so later allocations of the same mobility stay together; failing that
//! it *steals* the smallest suitable block without re-typing. This is what
//! keeps movable churn from scattering unmovable pages over every pageblock.
//!
//! # High-order atomic reserve
//! A high-order allocation that cannot sleep but has `__GFP_HIGH`
//! (`ALLOC_HIGHATOMIC`) that succeeds in the slow path turns the pageblock
//! its block came from into a HighAtomic pageblock
//! (`reserve_highatomic_pageblock`), up to 1% of the zone rounded up to
//! whole pageblocks, and not at all in a zone whose 1% is less than a
//! pageblock. Such requests try the HighAtomic lists first; other
//! non-blocking requests take from them only when everything else failed.
//! Before a blocking allocation gives up (after direct reclaim, and before
//! "OOM"), reserved pageblocks go back to the requester's migrate type
//! (`unreserve_highatomic_pageblock`).

use super::frame::FrameState;
use super::watermark::AllocFlags;
use super::zone::{FreeArea, HIGHATOMIC};
use super::PageAllocator;
use crate::addr::{MAX_PAGE_ORDER, NR_PAGE_ORDERS, PAGEBLOCK_NR_PAGES, PAGEBLOCK_ORDER};
use crate::gfp::{MigrateType, ZoneType};
use crate::platform::Platform;
use core::sync::atomic::Ordering::Relaxed;

const UNMOVABLE: usize = MigrateType::Unmovable as usize;
const MOVABLE: usize = MigrateType::Movable as usize;
const RECLAIMABLE: usize = MigrateType::Reclaimable as usize;

/// Which types each type may fall back to, in order.
const FALLBACKS: [[usize; 2]; 3] = [
    [RECLAIMABLE, MOVABLE],   // Unmovable
    [RECLAIMABLE, UNMOVABLE], // Movable
    [UNMOVABLE, MOVABLE],     // Reclaimable
];

/// Where [`PageAllocator::rmqueue`] starts looking (Linux's
/// `enum rmqueue_mode`, without CMA).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RmqueueMode {
    /// The requested type's own lists first.
    Normal,
    /// Straight to stealing single blocks from other types.
    Steal,
}

/// Linux's `migratetype_is_mergeable`: ordinary types merge across
/// pageblocks; HighAtomic (and Isolate) do not.
#[inline]
fn mergeable(mt: usize) -> bool {
    mt < MigrateType::PCPTYPES
}

impl<P: Platform> PageAllocator<P> {
    /// Pageblock migrate type of the block containing `pfn`.
    #[inline]
    pub(crate) fn pageblock_mt(&self, pfn: u64) -> usize {
        self.mm
            .frame_unchecked(pfn & !(PAGEBLOCK_NR_PAGES - 1))
            .pageblock_mt()
    }

    fn set_pageblock_mt(&self, pfn: u64, mt: usize) {
        self.mm
            .frame_unchecked(pfn & !(PAGEBLOCK_NR_PAGES - 1))
            .set_pageblock_mt(mt);
    }

    /// Sets the type of every pageblock under the block of `order` at `pfn`
    /// (Linux's `change_pageblock_range`).
    fn change_pageblock_range(&self, pfn: u64, order: u32, mt: usize) {
        let mut pb = pfn & !(PAGEBLOCK_NR_PAGES - 1);
        while pb < pfn + (1u64 << order) {
            self.set_pageblock_mt(pb, mt);
            pb += PAGEBLOCK_NR_PAGES;
        }
    }

    /// Re-types a free block of a pageblock or more: its pageblocks become
    /// `mt` and it moves to `mt`'s list.
    fn retype_free_block(&self, area: &mut FreeArea, pfn: u64, order: u32, mt: usize) {
        area.del(&self.mm, pfn);
        self.change_pageblock_range(pfn, order, mt);
        area.add(&self.mm, pfn, order, mt);
    }

    /// Splits the block at `pfn` from order `high` down to `low`, giving the
    /// upper halves back to the free lists (Linux's `expand`).
    fn expand(&self, area: &mut FreeArea, pfn: u64, low: u32, mut high: u32) {
        while high > low {
            high -= 1;
            let half = pfn + (1 << high);
            area.add(&self.mm, half, high, self.pageblock_mt(half));
        }
    }

    /// Smallest free block of exactly type `mt` and at least `order`.
    fn rmqueue_smallest(&self, area: &mut FreeArea, order: u32, mt: usize) -> Option<u64> {
        for o in order..=MAX_PAGE_ORDER {
            if let Some(pfn) = area.first(o, mt) {
                area.del(&self.mm, pfn);
                self.expand(area, pfn, order, o);
                return Some(pfn);
            }
        }
        None
    }

    /// Takes a block of `order` for mobility `mt` under the zone lock:
    /// its own type first, then fallback (Linux's `__rmqueue`). Never takes
    /// from the HighAtomic reserve. The block's head is left as `Tail` for
    /// the caller to mark.
    ///
    /// With `nofrag` (Linux's ALLOC_NOFRAGMENT) only whole pageblocks may be
    /// claimed from other types and nothing is stolen: the caller would
    /// rather use another zone than mix mobility types in this one.
    ///
    /// `mode` remembers, across the calls of one batch under one lock hold,
    /// which stage served the last block, so the next call starts there
    /// (Linux's `enum rmqueue_mode`): after a steal, the lists searched in
    /// vain before are not searched again.
    pub(crate) fn rmqueue(
        &self,
        area: &mut FreeArea,
        order: u32,
        mt: usize,
        nofrag: bool,
        mode: &mut RmqueueMode,
    ) -> Option<u64> {
        if *mode == RmqueueMode::Normal {
            if let Some(pfn) = self.rmqueue_smallest(area, order, mt) {
                return Some(pfn);
            }
        }
        if mt >= MigrateType::PCPTYPES {
            return None;
        }
        if *mode != RmqueueMode::Steal {
            if let Some(pfn) = self.rmqueue_claim(area, order, mt, nofrag) {
                // The claim refilled the requested type's lists.
                *mode = RmqueueMode::Normal;
                return Some(pfn);
            }
        }
        if nofrag {
            return None;
        }
        let pfn = self.rmqueue_steal(area, order, mt)?;
        *mode = RmqueueMode::Steal;
        Some(pfn)
    }

    /// Linux's `should_try_claim_block`: may a free block of order `o` found
    /// on a fallback list lead to claiming its pageblock for `mt`?
    fn can_claim(o: u32, mt: usize) -> bool {
        o >= PAGEBLOCK_ORDER / 2 || mt == UNMOVABLE || mt == RECLAIMABLE
    }

    /// Linux's `__rmqueue_claim`: from the largest order down, the first
    /// non-empty fallback list of each order (`find_suitable_fallback`)
    /// offers its first block for a claim; the first claim that succeeds
    /// serves the request.
    fn rmqueue_claim(
        &self,
        area: &mut FreeArea,
        order: u32,
        mt: usize,
        nofrag: bool,
    ) -> Option<u64> {
        let min_order = if nofrag {
            order.max(PAGEBLOCK_ORDER)
        } else {
            order
        };
        for o in (min_order..=MAX_PAGE_ORDER).rev() {
            if !Self::can_claim(o, mt) {
                break;
            }
            let Some((fb, pfn)) = FALLBACKS[mt]
                .iter()
                .find_map(|&fb| area.first(o, fb).map(|pfn| (fb, pfn)))
            else {
                continue;
            };
            if self.try_claim_block(area, pfn, o, mt, fb) {
                self.stats.fallback_claim.fetch_add(1, Relaxed);
                return self.rmqueue_smallest(area, order, mt);
            }
        }
        None
    }

    /// True if the pageblock starting at `start` lies wholly inside zone
    /// `slot`'s span and its first frame (whose record holds the pageblock's
    /// type) is the zone's (Linux's `prep_move_freepages_block` refuses
    /// others: the zone lock does not cover the rest).
    pub(crate) fn pageblock_in_zone(&self, slot: usize, start: u64) -> bool {
        let z = &self.zones[slot];
        start >= z.start_pfn
            && start + PAGEBLOCK_NR_PAGES <= z.start_pfn + z.spanned
            && self.mm.frame(start).is_some_and(|f| f.zone_slot() == slot)
    }

    /// Counts the free pages and the pages allocated as movable in the
    /// pageblock starting at `start` (Linux's `prep_move_freepages_block`);
    /// `None` if the pageblock is not wholly zone `slot`'s.
    fn pageblock_census(&self, slot: usize, start: u64) -> Option<(u64, u64)> {
        if !self.pageblock_in_zone(slot, start) {
            return None;
        }
        let (mut free, mut movable) = (0u64, 0u64);
        let mut p = start;
        while p < start + PAGEBLOCK_NR_PAGES {
            let f = self.mm.frame(p)?;
            let state = f.state();
            // A pageblock shared with another zone (or node) is not touched:
            // its other blocks are on that zone's lists, under that zone's
            // lock. Tested on the zone, which never changes, not on the
            // state, which that zone changes meanwhile: a block of it being
            // freed or handed out reads as a tail for a moment, and passing
            // it let move_freepages_block move that zone's free block
            // between this zone's lists.
            if state != FrameState::Hole && f.zone_slot() != slot {
                return None;
            }
            match state {
                FrameState::Buddy => free += 1 << f.order(),
                // Linux counts pages on the LRU (or with movable_ops): in
                // kmem, blocks allocated with a movable mask.
                FrameState::Allocated if f.migratetype_index() == MOVABLE => {
                    movable += 1 << f.order()
                }
                _ => {}
            }
            p += match state {
                FrameState::Buddy | FrameState::Allocated | FrameState::Pcp => 1 << f.order(),
                FrameState::Hole | FrameState::Reserved | FrameState::Tail => 1,
            };
        }
        Some((free, movable))
    }

    /// Moves every free block of the pageblock starting at `start` to the
    /// lists of `to` and sets the pageblock's type (Linux's
    /// `__move_freepages_block`). Returns the pages moved. The caller has
    /// checked the pageblock with [`Self::pageblock_census`] or
    /// [`Self::pageblock_in_zone`].
    fn move_freepages_block(&self, area: &mut FreeArea, start: u64, to: usize) -> u64 {
        let mut moved = 0;
        let mut p = start;
        while p < start + PAGEBLOCK_NR_PAGES {
            let f = self.mm.frame_unchecked(p);
            match f.state() {
                FrameState::Buddy => {
                    let order = f.order();
                    area.del(&self.mm, p);
                    area.add(&self.mm, p, order, to);
                    moved += 1 << order;
                    p += 1 << order;
                }
                FrameState::Allocated | FrameState::Pcp => p += 1 << f.order(),
                _ => p += 1,
            }
        }
        self.set_pageblock_mt(start, to);
        moved
    }

    /// Linux's `try_to_claim_block`: re-types the pageblock(s) of the free
    /// block at `pfn` (order `o`, on the `block_type` list) to `mt` if the
    /// block covers them, or if at least half of its pageblock is free or
    /// alike, and moves its free blocks across.
    fn try_claim_block(
        &self,
        area: &mut FreeArea,
        pfn: u64,
        o: u32,
        mt: usize,
        block_type: usize,
    ) -> bool {
        if o >= PAGEBLOCK_ORDER {
            self.retype_free_block(area, pfn, o, mt);
            return true;
        }
        let start = pfn & !(PAGEBLOCK_NR_PAGES - 1);
        let slot = self.mm.frame_unchecked(pfn).zone_slot();
        let Some((free, movable)) = self.pageblock_census(slot, start) else {
            return false;
        };
        // What counts as compatible: for a movable request its movable
        // pages; for an unmovable or reclaimable request falling back to a
        // movable pageblock everything neither free nor movable (it cannot
        // tell unmovable from reclaimable); otherwise nothing.
        let alike = if mt == MOVABLE {
            movable
        } else if block_type == MOVABLE {
            PAGEBLOCK_NR_PAGES - (free + movable)
        } else {
            0
        };
        if free + alike < PAGEBLOCK_NR_PAGES / 2 {
            return false;
        }
        self.move_freepages_block(area, start, mt);
        true
    }

    /// Linux's `__rmqueue_steal`: the smallest block on the first non-empty
    /// fallback list, taken without re-typing its pageblock.
    fn rmqueue_steal(&self, area: &mut FreeArea, order: u32, mt: usize) -> Option<u64> {
        for o in order..=MAX_PAGE_ORDER {
            for fb in FALLBACKS[mt] {
                if let Some(pfn) = area.first(o, fb) {
                    area.del(&self.mm, pfn);
                    self.expand(area, pfn, order, o);
                    self.stats.fallback_steal.fetch_add(1, Relaxed);
                    return Some(pfn);
                }
            }
        }
        None
    }

    /// Frees a block into the zone's lists, merging with free buddies. The
    /// block's head must not be on any list. A block larger than a pageblock
    /// is freed pageblock by pageblock, each with its own type (Linux's
    /// `free_one_page` / `split_large_buddy`).
    pub(crate) fn free_one_page(&self, area: &mut FreeArea, pfn: u64, order: u32) {
        if order <= PAGEBLOCK_ORDER {
            self.free_one_page_typed(area, pfn, order, self.pageblock_mt(pfn));
            return;
        }
        let mut pb = pfn;
        while pb < pfn + (1u64 << order) {
            self.free_one_page_typed(area, pb, PAGEBLOCK_ORDER, self.pageblock_mt(pb));
            pb += PAGEBLOCK_NR_PAGES;
        }
    }

    /// Linux's `__free_one_page`: merges the block (whose pageblock is of
    /// type `mt`) with its free buddies. From a pageblock up, a buddy of
    /// another type merges only if both types are ordinary, and then takes
    /// `mt`; the merged block goes on `mt`'s list.
    fn free_one_page_typed(&self, area: &mut FreeArea, mut pfn: u64, mut order: u32, mt: usize) {
        let head = self.mm.frame_unchecked(pfn);
        while order < MAX_PAGE_ORDER {
            let buddy_pfn = pfn ^ (1 << order);
            let Some(buddy) = self.mm.frame(buddy_pfn) else {
                break;
            };
            if buddy.state() != FrameState::Buddy
                || buddy.order() != order
                || !buddy.same_zone(head)
            {
                break;
            }
            let mut buddy_mt = mt;
            if order >= PAGEBLOCK_ORDER {
                buddy_mt = self.pageblock_mt(buddy_pfn);
                if buddy_mt != mt && (!mergeable(mt) || !mergeable(buddy_mt)) {
                    break;
                }
            }
            area.del(&self.mm, buddy_pfn);
            if buddy_mt != mt {
                self.change_pageblock_range(buddy_pfn, order, mt);
            }
            self.stats.buddy_merge.fetch_add(1, Relaxed);
            pfn &= !(1 << order);
            order += 1;
        }
        area.add(&self.mm, pfn, order, mt);
    }

    /// Takes a block straight from zone `slot`'s buddy lists (Linux's
    /// `rmqueue_buddy`): a high-order atomic request tries the HighAtomic
    /// reserve first; any other request that may not block takes from it
    /// only if nothing else is left.
    #[inline(never)]
    pub(crate) fn rmqueue_buddy(
        &self,
        slot: usize,
        order: u32,
        mt: usize,
        flags: AllocFlags,
        nofrag: bool,
    ) -> Option<u64> {
        let zone = &self.zones[slot];
        let mut area = zone.area.lock();
        let mut pfn = None;
        if flags.has(AllocFlags::HIGHATOMIC) {
            pfn = self.rmqueue_smallest(&mut area, order, HIGHATOMIC);
        }
        if pfn.is_none() {
            pfn = self.rmqueue(&mut area, order, mt, nofrag, &mut RmqueueMode::Normal);
            if pfn.is_none() && flags.has(AllocFlags::NON_BLOCK) {
                pfn = self.rmqueue_smallest(&mut area, order, HIGHATOMIC);
            }
        }
        zone.publish(&area);
        drop(area);
        if pfn.is_some() {
            self.stats.alloc_buddy.fetch_add(1, Relaxed);
        }
        pfn
    }

    /// Frees a block straight to zone `slot`'s buddy lists.
    #[inline(never)]
    pub(crate) fn free_buddy(&self, slot: usize, pfn: u64, order: u32) {
        let zone = &self.zones[slot];
        let mut area = zone.area.lock();
        self.free_one_page(&mut area, pfn, order);
        zone.publish(&area);
        drop(area);
        self.stats.free_buddy.fetch_add(1, Relaxed);
    }

    /// The most pages zone `slot` may hold in HighAtomic pageblocks: 1% of
    /// its managed pages rounded up to whole pageblocks, or none if that 1%
    /// is less than a pageblock (as in Linux 6.18).
    pub(crate) fn highatomic_limit(&self, slot: usize) -> usize {
        let pct = self.zones[slot].managed_pages() / 100;
        let pb = PAGEBLOCK_NR_PAGES as usize;
        if pct < pb {
            0
        } else {
            pct.div_ceil(pb) * pb
        }
    }

    /// Linux's `reserve_highatomic_pageblock`: after a high-order atomic
    /// allocation got the block of `order` at `pfn` from zone `slot`, turns
    /// its pageblock(s) into the HighAtomic reserve, within the zone's limit
    /// and only from an ordinary pageblock wholly inside the zone.
    #[cold]
    #[inline(never)]
    pub(crate) fn reserve_highatomic_pageblock(&self, slot: usize, pfn: u64, order: u32) {
        let zone = &self.zones[slot];
        let max = self.highatomic_limit(slot);
        // Racy pre-check, as Linux's; repeated under the lock.
        if max == 0 || zone.nr_reserved_highatomic() >= max {
            return;
        }
        let mut area = zone.area.lock();
        if area.nr_reserved_highatomic >= max || !mergeable(self.pageblock_mt(pfn)) {
            return;
        }
        if order < PAGEBLOCK_ORDER {
            let start = pfn & !(PAGEBLOCK_NR_PAGES - 1);
            if self.pageblock_census(slot, start).is_none() {
                return;
            }
            self.move_freepages_block(&mut area, start, HIGHATOMIC);
            area.nr_reserved_highatomic += PAGEBLOCK_NR_PAGES as usize;
        } else {
            // The allocated block covers its pageblocks: nothing free to move.
            self.change_pageblock_range(pfn, order, HIGHATOMIC);
            area.nr_reserved_highatomic += 1 << order;
        }
        zone.publish(&area);
        drop(area);
        self.stats.highatomic_reserve.fetch_add(1, Relaxed);
    }

    /// Linux's `unreserve_highatomic_pageblock`: gives the first HighAtomic
    /// pageblock with a free block (lowest order first) of the first zone in
    /// `slots` (up to `highest`) that has one back to migrate type `mt`.
    /// Without `force`, a zone keeps its last reserved pageblock. True if a
    /// pageblock was given back.
    pub(crate) fn unreserve_highatomic_pageblock(
        &self,
        slots: &[u8],
        highest: ZoneType,
        mt: usize,
        force: bool,
    ) -> bool {
        for &slot in slots {
            let slot = slot as usize;
            let zone = &self.zones[slot];
            if zone.ztype > highest || !zone.is_populated() {
                continue;
            }
            let reserved = zone.nr_reserved_highatomic();
            if reserved == 0 || (!force && reserved <= PAGEBLOCK_NR_PAGES as usize) {
                continue;
            }
            let mut area = zone.area.lock();
            for order in 0..NR_PAGE_ORDERS as u32 {
                let Some(pfn) = area.first(order, HIGHATOMIC) else {
                    continue;
                };
                let size = (PAGEBLOCK_NR_PAGES as usize)
                    .max(1 << order)
                    .min(area.nr_reserved_highatomic);
                area.nr_reserved_highatomic -= size;
                if order < PAGEBLOCK_ORDER {
                    self.move_freepages_block(&mut area, pfn & !(PAGEBLOCK_NR_PAGES - 1), mt);
                } else {
                    self.retype_free_block(&mut area, pfn, order, mt);
                }
                zone.publish(&area);
                drop(area);
                self.stats.highatomic_unreserve.fetch_add(1, Relaxed);
                return true;
            }
        }
        false
    }
}
