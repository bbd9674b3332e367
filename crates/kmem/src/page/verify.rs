//! Consistency check of the whole page allocator (like a `CONFIG_DEBUG_VM`
//! walk): every free list and per-CPU list is followed and every block on it
//! checked, including that a free block sits on the list of its pageblocks'
//! migrate type, and that the high-order atomic reserve's counters agree
//! with its pageblocks and free lists and stay within the zone's limit.
//! Tests call it after every batch of operations; a kernel can call it from
//! a debug command. It takes each zone lock and each per-CPU flag in
//! turn, so it sees a consistent picture of one list at a time.

use super::frame::{FrameState, NIL};
use super::pcp::NR_PCP_LISTS;
use super::zone::{HIGHATOMIC, NR_FREE_LISTS};
use super::{PageAllocator, MAX_ZONES};
use crate::addr::{Pfn, NR_PAGE_ORDERS, PAGEBLOCK_NR_PAGES};
use crate::gfp::ZoneType;
use crate::platform::Platform;
use core::fmt;
use core::sync::atomic::Ordering::Relaxed;

/// What a successful check saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Free blocks on zone lists.
    pub free_blocks: u64,
    /// Free pages on zone lists.
    pub free_pages: u64,
    /// Pages on per-CPU lists.
    pub pcp_pages: u64,
}

/// The first inconsistency found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyError {
    /// Node and zone of the list.
    pub zone: (usize, ZoneType),
    /// The block at fault, if one.
    pub pfn: Option<Pfn>,
    /// What is wrong.
    pub problem: &'static str,
}

impl core::error::Error for VerifyError {}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "page allocator inconsistent: node {} zone {}: {}",
            self.zone.0,
            self.zone.1.name(),
            self.problem
        )?;
        if let Some(p) = self.pfn {
            write!(f, " (pfn {p})")?;
        }
        Ok(())
    }
}

impl<P: Platform> PageAllocator<P> {
    /// Walks every list and checks every block on it: state, order, list,
    /// alignment, zone, links, counters, and that no frame inside a free
    /// block is itself the head of anything.
    pub fn verify(&self) -> Result<VerifyReport, VerifyError> {
        let mut rep = VerifyReport::default();
        for slot in 0..MAX_ZONES {
            let zone = &self.zones[slot];
            let id = (zone.node, zone.ztype);
            let err = |pfn: Option<u64>, problem| VerifyError {
                zone: id,
                pfn: pfn.map(Pfn),
                problem,
            };
            let area = zone.area.lock();
            let (lo, hi) = (zone.start_pfn, zone.start_pfn + zone.spanned);
            let mut pages = 0u64;
            let mut highatomic_pages = 0u64;
            for o in 0..NR_PAGE_ORDERS {
                for mt in 0..NR_FREE_LISTS {
                    let mut list_pages = 0u64;
                    let (mut n, mut prev, mut cur) = (0u32, NIL, area.head[o][mt]);
                    while cur != NIL {
                        let pfn = cur as u64;
                        let f = self
                            .mm
                            .frame(pfn)
                            .ok_or(err(Some(pfn), "free list links to a pfn with no frame"))?;
                        if f.state() != FrameState::Buddy {
                            return Err(err(Some(pfn), "block on a free list is not marked free"));
                        }
                        if f.order() as usize != o || f.migratetype_index() != mt {
                            return Err(err(
                                Some(pfn),
                                "block is on the list of another order or type",
                            ));
                        }
                        if pfn & ((1 << o) - 1) != 0 {
                            return Err(err(Some(pfn), "free block not aligned to its order"));
                        }
                        if pfn < lo || pfn + (1 << o) > hi || f.zone_slot() != slot {
                            return Err(err(Some(pfn), "free block outside its zone"));
                        }
                        let mut pb = pfn & !(PAGEBLOCK_NR_PAGES - 1);
                        while pb < pfn + (1 << o) {
                            if self.pageblock_mt(pb) != mt {
                                return Err(err(
                                    Some(pfn),
                                    "free block is not on its pageblock's migrate type list",
                                ));
                            }
                            pb += PAGEBLOCK_NR_PAGES;
                        }
                        if f.prev.load(Relaxed) != prev {
                            return Err(err(Some(pfn), "broken back link"));
                        }
                        for t in 1..(1u64 << o) {
                            if self.mm.frame_unchecked(pfn + t).state() != FrameState::Tail {
                                return Err(err(
                                    Some(pfn + t),
                                    "frame inside a free block heads something",
                                ));
                            }
                        }
                        n += 1;
                        if n as u64 > zone.spanned {
                            return Err(err(Some(pfn), "free list has a cycle"));
                        }
                        pages += 1 << o;
                        list_pages += 1 << o;
                        prev = cur;
                        cur = f.next.load(Relaxed);
                    }
                    if n != area.nr_free[o][mt] {
                        return Err(err(None, "free block count disagrees with the list"));
                    }
                    if mt == HIGHATOMIC {
                        highatomic_pages += list_pages;
                    }
                    rep.free_blocks += n as u64;
                }
            }
            if pages != area.free_pages as u64 || area.free_pages != zone.free_pages() {
                return Err(err(None, "free page count disagrees with the lists"));
            }
            for o in 0..NR_PAGE_ORDERS {
                if zone.free_blocks(o) != area.blocks(o) {
                    return Err(err(None, "published per-order counts are stale"));
                }
            }
            let (normal, high) = area.order_masks();
            if zone.normal_orders.load(Relaxed) != normal
                || zone.highatomic_orders.load(Relaxed) != high
            {
                return Err(err(None, "published per-order masks are stale"));
            }
            if highatomic_pages != area.nr_free_highatomic as u64
                || area.nr_free_highatomic != zone.nr_free_highatomic()
            {
                return Err(err(
                    None,
                    "nr_free_highatomic disagrees with the HighAtomic lists",
                ));
            }
            // Every reserved page is in a HighAtomic pageblock of this zone
            // and every such pageblock is counted.
            let mut reserved_blocks = 0u64;
            let mut pb = lo & !(PAGEBLOCK_NR_PAGES - 1);
            while pb < hi {
                if self.pageblock_in_zone(slot, pb) && self.pageblock_mt(pb) == HIGHATOMIC {
                    reserved_blocks += 1;
                }
                pb += PAGEBLOCK_NR_PAGES;
            }
            if reserved_blocks * PAGEBLOCK_NR_PAGES != area.nr_reserved_highatomic as u64
                || area.nr_reserved_highatomic != zone.nr_reserved_highatomic()
            {
                return Err(err(
                    None,
                    "nr_reserved_highatomic disagrees with the HighAtomic pageblocks",
                ));
            }
            // At most 1% of the zone in whole pageblocks; a block of a
            // pageblock or more reserved just under the limit may pass it by
            // one pageblock, as in Linux.
            let limit = match self.highatomic_limit(slot) {
                0 => 0,
                l => l + PAGEBLOCK_NR_PAGES as usize,
            };
            if area.nr_reserved_highatomic > limit {
                return Err(err(None, "high-order atomic reserve above its limit"));
            }
            rep.free_pages += pages;
            drop(area);
            for cpu in 0..self.nr_cpus {
                let pcp = self.pcp(cpu, slot).lock_remote(self.platform(), cpu);
                let mut held = 0u64;
                for li in 0..NR_PCP_LISTS {
                    let order = (li / 3) as u32;
                    let mut cur = pcp.heads[li];
                    let mut n = 0u64;
                    while cur != NIL {
                        let pfn = cur as u64;
                        let f = self
                            .mm
                            .frame(pfn)
                            .ok_or(err(Some(pfn), "per-CPU list links to a pfn with no frame"))?;
                        if f.state() != FrameState::Pcp || f.order() != order {
                            return Err(err(
                                Some(pfn),
                                "block on a per-CPU list has the wrong state or order",
                            ));
                        }
                        if f.zone_slot() != slot || pfn & ((1 << order) - 1) != 0 {
                            return Err(err(Some(pfn), "per-CPU block misplaced or misaligned"));
                        }
                        n += 1;
                        if n > zone.spanned {
                            return Err(err(Some(pfn), "per-CPU list has a cycle"));
                        }
                        held += 1 << order;
                        cur = f.next.load(Relaxed);
                    }
                }
                if held != pcp.count as u64 {
                    return Err(err(None, "per-CPU page count disagrees with its lists"));
                }
                rep.pcp_pages += held;
            }
        }
        Ok(rep)
    }
}
