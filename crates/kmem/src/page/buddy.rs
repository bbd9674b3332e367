//! The buddy allocator proper: split, merge, and mobility fallback.
//!
//! A free block of order `n` starts at a pfn aligned to `2^n`; its buddy is
//! the block at `pfn ^ 2^n`. Freeing looks the buddy up in O(1) through the
//! frame records and merges while the buddy is a free head of the same order
//! in the same zone. Allocation takes the smallest block of the wanted
//! migrate type and splits it, putting halves back (`expand`).
//!
//! Free blocks sit on the list of their pageblock's migrate type. When a
//! type's lists are empty, the allocator falls back to another type as Linux
//! does (`__rmqueue_claim`, then `__rmqueue_steal`): first it tries to *claim*
//! a whole pageblock from the largest free block (possible for large blocks,
//! or for unmovable/reclaimable requests when at least half the pageblock is
//! free or already of that type), re-typing it so later allocations of the
//! same mobility stay together; failing that it *steals* the smallest
//! suitable block without re-typing. This is what keeps movable churn from
//! scattering unmovable pages over every pageblock.

use super::frame::FrameState;
use super::zone::FreeArea;
use super::PageAllocator;
use crate::addr::{MAX_PAGE_ORDER, PAGEBLOCK_NR_PAGES, PAGEBLOCK_ORDER};
use crate::gfp::MigrateType;
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
    /// its own type first, then fallback. The block's head is left as `Tail`
    /// for the caller to mark.
    ///
    /// With `nofrag` (Linux's ALLOC_NOFRAGMENT) only whole pageblocks may be
    /// claimed from other types and nothing is stolen: the caller would
    /// rather use another zone than mix mobility types in this one.
    pub(crate) fn rmqueue(
        &self,
        area: &mut FreeArea,
        order: u32,
        mt: usize,
        nofrag: bool,
    ) -> Option<u64> {
        if let Some(pfn) = self.rmqueue_smallest(area, order, mt) {
            return Some(pfn);
        }
        if mt >= MigrateType::PCPTYPES {
            return None;
        }
        self.rmqueue_claim(area, order, mt, nofrag).or_else(|| {
            if nofrag {
                None
            } else {
                self.rmqueue_steal(area, order, mt)
            }
        })
    }

    fn can_claim(order: u32, mt: usize) -> bool {
        order >= PAGEBLOCK_ORDER / 2 || mt == UNMOVABLE || mt == RECLAIMABLE
    }

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
            for fb in FALLBACKS[mt] {
                let Some(pfn) = area.first(o, fb) else {
                    continue;
                };
                if self.try_claim_block(area, pfn, o, mt) {
                    self.stats.fallback_claim.fetch_add(1, Relaxed);
                    return self.rmqueue_smallest(area, order, mt);
                }
            }
        }
        None
    }

    /// Re-types the pageblock(s) of the free block at `pfn` (order `o`) to
    /// `mt` if the block covers them or at least half of its pageblock is
    /// free or already used by `mt`; moves its free blocks across.
    fn try_claim_block(&self, area: &mut FreeArea, pfn: u64, o: u32, mt: usize) -> bool {
        if o >= PAGEBLOCK_ORDER {
            area.del(&self.mm, pfn);
            let mut pb = pfn;
            while pb < pfn + (1 << o) {
                self.set_pageblock_mt(pb, mt);
                pb += PAGEBLOCK_NR_PAGES;
            }
            area.add(&self.mm, pfn, o, mt);
            return true;
        }
        let start = pfn & !(PAGEBLOCK_NR_PAGES - 1);
        let end = start + PAGEBLOCK_NR_PAGES;
        let zone = self.mm.frame_unchecked(pfn).zone_slot();
        let (mut free, mut alike) = (0u64, 0u64);
        let mut p = start;
        while p < end {
            let Some(f) = self.mm.frame(p) else {
                return false;
            };
            // A pageblock shared with another zone (or node) is not claimed
            // whole: its other blocks are on that zone's lists (Linux's
            // prep_move_freepages_block refuses it too).
            if matches!(
                f.state(),
                FrameState::Buddy | FrameState::Allocated | FrameState::Pcp
            ) && f.zone_slot() != zone
            {
                return false;
            }
            match f.state() {
                FrameState::Buddy => {
                    free += 1 << f.order();
                    p += 1 << f.order();
                }
                FrameState::Allocated | FrameState::Pcp => {
                    if f.migratetype_index() == mt {
                        alike += 1 << f.order();
                    }
                    p += 1 << f.order();
                }
                // Neither free nor alike: they count against the claim.
                FrameState::Hole | FrameState::Reserved | FrameState::Tail => p += 1,
            }
        }
        if free + alike < PAGEBLOCK_NR_PAGES / 2 {
            return false;
        }
        self.set_pageblock_mt(start, mt);
        // Move every free block of the pageblock to `mt`'s lists.
        let mut p = start;
        while p < end {
            let f = self.mm.frame_unchecked(p);
            if f.state() == FrameState::Buddy {
                let order = f.order();
                area.del(&self.mm, p);
                area.add(&self.mm, p, order, mt);
                p += 1 << order;
            } else if matches!(f.state(), FrameState::Allocated | FrameState::Pcp) {
                p += 1 << f.order();
            } else {
                p += 1;
            }
        }
        true
    }

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

    /// Frees a block into the zone's lists, merging with free buddies
    /// (Linux's `__free_one_page`). The block's head must not be on any list.
    pub(crate) fn free_one_page(&self, area: &mut FreeArea, mut pfn: u64, mut order: u32) {
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
            area.del(&self.mm, buddy_pfn);
            self.stats.buddy_merge.fetch_add(1, Relaxed);
            pfn &= !(1 << order);
            order += 1;
        }
        let mt = self.pageblock_mt(pfn);
        if order > PAGEBLOCK_ORDER {
            // A block spanning pageblocks takes one type for all of them.
            let mut pb = pfn + PAGEBLOCK_NR_PAGES;
            while pb < pfn + (1 << order) {
                self.set_pageblock_mt(pb, mt);
                pb += PAGEBLOCK_NR_PAGES;
            }
        }
        area.add(&self.mm, pfn, order, mt);
    }

    /// Takes a block straight from zone `slot`'s buddy lists.
    #[inline(never)]
    pub(crate) fn rmqueue_buddy(
        &self,
        slot: usize,
        order: u32,
        mt: usize,
        nofrag: bool,
    ) -> Option<u64> {
        let zone = &self.zones[slot];
        let mut area = zone.area.lock();
        let pfn = self.rmqueue(&mut area, order, mt, nofrag);
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
}
