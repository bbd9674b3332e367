//! Watermarks and reserves: who may take the last free pages of a zone.
//!
//! Each zone has three marks sized at boot the way Linux sizes them:
//! `min_free_kbytes = sqrt(16 x lowmem KiB)` (clamped to 128 KiB..256 MiB) is
//! shared between zones by size and becomes each zone's `min`; `low` and `high`
//! sit `max(min/4, managed x watermark_scale_factor/10000)` and twice that above
//! it. On top of the mark, a zone keeps a *lowmem reserve* against allocations
//! that could have used a higher zone (`managed pages above / ratio`).
//!
//! The fast path demands the `low` mark. The slow path demands `min`, lowered
//! by what the GFP mask earns (Linux's `gfp_to_alloc_flags` and
//! `__zone_watermark_ok`):
//! - `__GFP_HIGH` may go down to min/2;
//! - non-blocking *and* `__GFP_HIGH` (GFP_ATOMIC) a further quarter lower;
//! - GFP_NOWAIT has no `__GFP_HIGH`, so it gets no reserve at all;
//! - `__GFP_MEMALLOC` ignores watermarks, unless `__GFP_NOMEMALLOC` says no.
//!
//! Free pages of the high-order atomic reserve (HighAtomic pageblocks) count
//! only for requests with a right to reserves (`ALLOC_RESERVES`: non-blocking,
//! `__GFP_HIGH`, or high-order atomic); every other request, the fast path
//! included, leaves them out (`__zone_watermark_unusable_free`). A high-order
//! request also needs a free block of its order on a list it may use: the
//! HighAtomic lists only for `ALLOC_HIGHATOMIC`.

use super::zone::{Watermark, Zone};
use super::{PageAllocator, MAX_ZONES};
use crate::addr::{MAX_PAGE_ORDER, PAGE_SHIFT};
use crate::gfp::{Gfp, ZoneType};
use crate::platform::Platform;
use core::sync::atomic::Ordering::Relaxed;

/// Allocation flags derived from a GFP mask (Linux's `ALLOC_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AllocFlags(pub u32);

impl AllocFlags {
    /// Check against the min watermark.
    pub const WMARK_MIN: u32 = 0;
    /// Check against the low watermark.
    pub const WMARK_LOW: u32 = 1;
    /// Check against the high watermark.
    pub const WMARK_HIGH: u32 = 2;
    /// Mask of the watermark index.
    pub const WMARK_MASK: u32 = 3;
    /// Ignore watermarks entirely.
    pub const NO_WATERMARKS: u32 = 4;
    /// `__GFP_HIGH`: may use half of the min reserve.
    pub const MIN_RESERVE: u32 = 8;
    /// Cannot block: with MIN_RESERVE, a further quarter.
    pub const NON_BLOCK: u32 = 16;
    /// Wake kswapd when under the low mark.
    pub const KSWAPD: u32 = 32;
    /// High-order allocation that cannot sleep and has `__GFP_HIGH` (a
    /// high-order GFP_ATOMIC): may use the HighAtomic reserve first, and
    /// reserves the pageblock it got its block from.
    pub const HIGHATOMIC: u32 = 64;
    /// Flags with a right to reserves (Linux's `ALLOC_RESERVES`): they see
    /// the HighAtomic reserve's free pages as free.
    pub const RESERVES: u32 = Self::NON_BLOCK | Self::MIN_RESERVE | Self::HIGHATOMIC;

    /// The watermark in force.
    pub const fn mark(self) -> Watermark {
        match self.0 & Self::WMARK_MASK {
            0 => Watermark::Min,
            1 => Watermark::Low,
            _ => Watermark::High,
        }
    }
    /// True if `bit` is set.
    pub const fn has(self, bit: u32) -> bool {
        self.0 & bit != 0
    }

    /// Linux's `gfp_to_alloc_flags`: the slow path's flags for `gfp` (an
    /// order-0 request; see [`Self::from_gfp_order`]).
    pub fn from_gfp(gfp: Gfp) -> AllocFlags {
        Self::from_gfp_order(gfp, 0)
    }

    /// Linux's `gfp_to_alloc_flags` for a request of `order`: a request
    /// that may not sleep (and does not refuse reserves with
    /// `__GFP_NOMEMALLOC`) is `NON_BLOCK`; with `__GFP_HIGH` and an order
    /// above 0 it is also `HIGHATOMIC`.
    pub fn from_gfp_order(gfp: Gfp, order: u32) -> AllocFlags {
        let mut f = Self::WMARK_MIN;
        if gfp.contains(Gfp::HIGH) {
            f |= Self::MIN_RESERVE;
        }
        if gfp.contains(Gfp::KSWAPD_RECLAIM) {
            f |= Self::KSWAPD;
        }
        if !gfp.contains(Gfp::DIRECT_RECLAIM) && !gfp.contains(Gfp::NOMEMALLOC) {
            f |= Self::NON_BLOCK;
            if order > 0 && f & Self::MIN_RESERVE != 0 {
                f |= Self::HIGHATOMIC;
            }
        }
        AllocFlags(f)
    }

    /// Linux's `__gfp_pfmemalloc_flags`: `__GFP_MEMALLOC` (without
    /// `__GFP_NOMEMALLOC`) lifts every watermark.
    pub fn memalloc(gfp: Gfp) -> bool {
        gfp.contains(Gfp::MEMALLOC) && !gfp.contains(Gfp::NOMEMALLOC)
    }
}

/// Linux's `__zone_watermark_ok`: would `zone` stay above `mark` (lowered by
/// `flags`' reserves, raised by the lowmem reserve against `highest`) after
/// giving out a block of `order`, and does it have such a block on a list
/// the request may use? Without a right to reserves, the HighAtomic
/// reserve's free pages do not count (`__zone_watermark_unusable_free`).
#[inline]
pub fn zone_watermark_ok<L: lock_api::RawMutex>(
    zone: &Zone<L>,
    order: u32,
    mark: usize,
    highest: ZoneType,
    flags: AllocFlags,
) -> bool {
    let mut free = zone.free_pages() as i64 - ((1i64 << order) - 1);
    if !flags.has(AllocFlags::RESERVES) {
        free -= zone.nr_free_highatomic() as i64;
    }
    let mut min = mark as i64;
    if flags.has(AllocFlags::MIN_RESERVE) {
        min -= min / 2;
        if flags.has(AllocFlags::NON_BLOCK) {
            min -= min / 4;
        }
    }
    if free <= min + zone.lowmem_reserve(highest) as i64 {
        return false;
    }
    if order == 0 {
        return true;
    }
    let mut usable = zone.normal_orders.load(Relaxed);
    if flags.has(AllocFlags::HIGHATOMIC) {
        usable |= zone.highatomic_orders.load(Relaxed);
    }
    order <= MAX_PAGE_ORDER && usable >> order != 0
}

/// Linux's `int_sqrt` (Newton's method on integers).
fn isqrt(n: u64) -> u64 {
    if n < 2 {
        return n;
    }
    let mut x = n;
    let mut y = x.div_ceil(2);
    while y < x {
        x = y;
        y = (x + n / x) / 2;
    }
    x
}

/// Linux's default `min_free_kbytes` for `lowmem_pages` managed pages.
pub fn default_min_free_kbytes(lowmem_pages: u64) -> u64 {
    let lowmem_kbytes = lowmem_pages << (PAGE_SHIFT - 10);
    isqrt(lowmem_kbytes * 16).clamp(128, 262_144)
}

impl<P: Platform> PageAllocator<P> {
    /// Sizes min/low/high for every zone and the lowmem reserves
    /// (`__setup_per_zone_wmarks`, `setup_per_zone_lowmem_reserve`).
    pub(crate) fn setup_watermarks(&self) {
        let lowmem: u64 = self.zones.iter().map(|z| z.managed_pages() as u64).sum();
        let min_kb = self
            .config()
            .min_free_kbytes
            .map_or_else(|| default_min_free_kbytes(lowmem), |k| k as u64);
        let pages_min = min_kb >> (PAGE_SHIFT - 10);
        let scale = self.config().watermark_scale_factor as u64;
        for z in &self.zones {
            let managed = z.managed_pages() as u64;
            let min = (pages_min * managed).checked_div(lowmem).unwrap_or(0);
            let step = (min / 4).max(managed * scale / 10_000);
            z.watermark[Watermark::Min as usize].store(min as usize, Relaxed);
            z.watermark[Watermark::Low as usize].store((min + step) as usize, Relaxed);
            z.watermark[Watermark::High as usize].store((min + 2 * step) as usize, Relaxed);
        }
        let ratio = self.config().lowmem_reserve_ratio;
        for node in 0..MAX_ZONES / 3 {
            for (i, &ratio) in ratio.iter().enumerate() {
                // An empty zone protects nothing (Linux clears its reserves
                // when it has no managed pages).
                let empty = self.zones[node * 3 + i].managed_pages() == 0;
                let mut above = 0u64;
                for j in i + 1..3 {
                    above += self.zones[node * 3 + j].managed_pages() as u64;
                    let r = if empty {
                        0
                    } else {
                        above.checked_div(ratio as u64).unwrap_or(0)
                    };
                    self.zones[node * 3 + i].lowmem_reserve[j].store(r as usize, Relaxed);
                }
            }
        }
    }

    /// Sets `vm.min_free_kbytes` at run time and resizes every watermark.
    pub fn set_min_free_kbytes(&mut self, kbytes: usize) {
        self.config_mut().min_free_kbytes = Some(kbytes);
        self.setup_watermarks();
        self.setup_pcp();
    }
}
