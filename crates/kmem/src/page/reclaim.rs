//! Reclaim: shrinkers, and Linux's rules for retrying after them.
//!
//! Caches that can give memory back register a [`Shrinker`]. Only allocations
//! whose mask allows blocking (`__GFP_DIRECT_RECLAIM`) run them, from the slow
//! path, with no lock held; what they free goes back through the ordinary
//! free path. How long the slow path keeps trying is Linux's:
//! - `__GFP_NORETRY`: one round of reclaim, then fail;
//! - costly orders (above 3) without `__GFP_RETRY_MAYFAIL` or `__GFP_NOFAIL`:
//!   fail once reclaim does not help, never "OOM";
//! - `__GFP_RETRY_MAYFAIL`: retry while reclaim makes progress, then fail;
//! - default (orders 0..=3): retry while reclaim makes progress; then Linux
//!   would run the OOM killer, which kmem reports ([`crate::NoMemory::oom`]),
//!   except for `__GFP_THISNODE` and lowmem-only (DMA, DMA32) requests,
//!   which Linux's `__alloc_pages_may_oom` does not kill for, and requests
//!   without `__GFP_FS` (GFP_NOFS, GFP_NOIO), for which `out_of_memory`
//!   kills nothing;
//! - before giving up, pageblocks of the high-order atomic reserve go back
//!   to the requester's migrate type one per round (`should_reclaim_retry`
//!   calling `unreserve_highatomic_pageblock`);
//! - `__GFP_NOFAIL`: never fail; wait for another CPU to free memory.

use super::PageAllocator;
use crate::gfp::Gfp;
use crate::platform::Platform;
use core::sync::atomic::Ordering::Relaxed;

/// Most shrinkers registered at once.
pub const MAX_SHRINKERS: usize = 32;
/// Reclaim rounds without success before giving up (Linux's MAX_RECLAIM_RETRIES).
pub const MAX_RECLAIM_RETRIES: u32 = 16;
/// Objects asked of shrinkers per round at least (Linux's SWAP_CLUSTER_MAX).
pub const SWAP_CLUSTER_MAX: usize = 32;

/// A cache that can give memory back under pressure.
///
/// Called with no lock held, from the context of the allocation that needs
/// memory (which may sleep). Implementations free through the allocator
/// passed in.
pub trait Shrinker<P: Platform>: Sync {
    /// Name, for statistics and reports.
    fn name(&self) -> &str;
    /// How many objects could be freed now (Linux's `count_objects`).
    fn count_objects(&self, pages: &PageAllocator<P>, gfp: Gfp) -> usize;
    /// Free up to `nr_to_scan` objects; return how many were freed (Linux's
    /// `scan_objects`). `gfp` says what the allocation allows (a file-system
    /// cache must not recurse into the file system without `__GFP_FS`).
    fn scan_objects(&self, pages: &PageAllocator<P>, nr_to_scan: usize, gfp: Gfp) -> usize;
}

/// Handle of a registered shrinker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShrinkerId(usize);

pub(crate) struct ShrinkerSet<P: Platform> {
    slots: [Option<&'static dyn Shrinker<P>>; MAX_SHRINKERS],
}

impl<P: Platform> ShrinkerSet<P> {
    pub(crate) const fn new() -> Self {
        ShrinkerSet {
            slots: [None; MAX_SHRINKERS],
        }
    }
}

/// Registration failed: every slot is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShrinkerSetFull;

impl core::fmt::Display for ShrinkerSetFull {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "cannot register shrinker: all {MAX_SHRINKERS} slots are in use"
        )
    }
}

impl<P: Platform> PageAllocator<P> {
    /// Registers a shrinker (Linux's `shrinker_register`).
    pub fn register_shrinker(
        &self,
        s: &'static dyn Shrinker<P>,
    ) -> Result<ShrinkerId, ShrinkerSetFull> {
        let mut set = self.shrinkers.lock();
        let i = set
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(ShrinkerSetFull)?;
        set.slots[i] = Some(s);
        Ok(ShrinkerId(i))
    }

    /// Unregisters a shrinker (Linux's `shrinker_free`).
    pub fn unregister_shrinker(&self, id: ShrinkerId) {
        self.shrinkers.lock().slots[id.0] = None;
    }

    /// One round of direct reclaim: asks every shrinker for its share of
    /// `max(SWAP_CLUSTER_MAX, 2^order)` objects. Returns objects freed.
    pub(crate) fn direct_reclaim(&self, gfp: Gfp, order: u32) -> usize {
        self.stats.direct_reclaim.fetch_add(1, Relaxed);
        // Linux's PF_MEMALLOC: what the shrinkers allocate does not reclaim
        // again. Restored on the way out, panics included.
        struct Memalloc<'p, P: Platform>(&'p P, bool);
        impl<P: Platform> Drop for Memalloc<'_, P> {
            fn drop(&mut self) {
                self.0.set_memalloc(self.1);
            }
        }
        let p = self.platform();
        let _mark = Memalloc(p, p.set_memalloc(true));
        let slots = self.shrinkers.lock().slots;
        let mut want = SWAP_CLUSTER_MAX.max(1 << order);
        let mut freed = 0;
        for s in slots.iter().flatten() {
            if want == 0 {
                break;
            }
            let n = s.count_objects(self, gfp);
            if n == 0 {
                continue;
            }
            let got = s.scan_objects(self, n.min(want), gfp);
            freed += got;
            want = want.saturating_sub(got);
        }
        self.stats.reclaim_freed.fetch_add(freed as u64, Relaxed);
        freed
    }
}
