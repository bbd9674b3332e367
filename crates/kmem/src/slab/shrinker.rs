//! The slab allocator as a shrinker of its page allocator.
//!
//! Free objects that a cache keeps for speed are memory the page allocator
//! cannot see: the per-CPU sheaves (up to [`super::SlabConfig::sheaf_bytes`]
//! per CPU and cache), the CPU free lists and per-CPU partial slabs, and
//! empty slabs kept on the node partial lists. Under memory pressure an
//! allocation that may block runs direct reclaim ([`crate::page::reclaim`]);
//! registered with [`SlabAllocator::register_shrinker`], the slab allocator
//! then does what `kmem_cache_shrink` does for every cache (what Linux's
//! `echo 2 > /proc/sys/vm/drop_caches` asks of slab, and what its per-CPU
//! sheaves give back on a `kmem_cache_shrink`): flush every CPU's state back
//! to the slabs and give every empty slab and sheaf block back.
//!
//! A shrink round is coarse (every cache, every CPU, whatever `nr_to_scan`
//! says) and costly (each CPU's state is taken remotely, with the platform's
//! barrier for owned CPUs), which is acceptable only because reclaim is the
//! last step before an allocation fails.
//!
//! # Deadlock freedom
//! Reclaim runs in the allocating thread with no page-allocator lock held.
//! The slab allocator never allocates pages that may reclaim while it holds
//! a CPU flag or a node lock (new slabs are allocated with neither; sheaf
//! blocks with `GFP_NOWAIT`), so the flushes cannot wait for the caller
//! itself. The cache list lock may be held by the caller (creating a
//! cache allocates under it): the shrinker only *tries* it and frees nothing
//! this round if it is taken.
//!
//! Registration needs `&'static self` because a registered shrinker is never
//! unregistered: the page allocator may still be calling it when the
//! registration ends, and it has no way to wait for that.

use super::SlabAllocator;
use crate::gfp::Gfp;
use crate::page::reclaim::{ShrinkerId, ShrinkerSetFull};
use crate::page::{PageAllocator, Shrinker};
use crate::platform::Platform;
use core::sync::atomic::Ordering::Relaxed;

impl<P: Platform> SlabAllocator<'static, P> {
    /// Registers this allocator as a shrinker of its page allocator (see the
    /// module comment): under memory pressure, sheaves, CPU free lists and
    /// empty slabs go back to the page allocator. Once registered it stays
    /// registered, so this takes an allocator that lives for the rest of the
    /// program (a kernel's, a leaked or static one).
    pub fn register_shrinker(&'static self) -> Result<ShrinkerId, ShrinkerSetFull> {
        self.pages.register_shrinker(self)
    }

    /// Slabs of all caches, or None if the cache list lock is taken.
    fn try_count_slabs(&self) -> Option<usize> {
        let list = self.global().list.try_lock()?;
        let mut slabs = 0;
        let mut cur = list.head;
        while !cur.is_null() {
            // SAFETY: caches on the list are alive while the lock is held.
            let c = unsafe { &*cur };
            slabs += c
                .nodes
                .iter()
                .map(|n| n.nr_slabs.load(Relaxed))
                .sum::<usize>();
            cur = c.list_next.load(Relaxed);
        }
        Some(slabs)
    }

    /// `kmem_cache_shrink` on every cache, or nothing if the cache list lock
    /// is taken.
    fn try_shrink_all(&self) {
        let Some(list) = self.global().list.try_lock() else {
            return;
        };
        let mut cur = list.head;
        while !cur.is_null() {
            // SAFETY: as in try_count_slabs. Shrinking takes CPU flags and
            // node locks, which rank below the cache list lock.
            let c = unsafe { &*cur };
            c.shrink();
            cur = c.list_next.load(Relaxed);
        }
    }
}

impl<P: Platform> Shrinker<P> for SlabAllocator<'static, P> {
    fn name(&self) -> &str {
        "slab"
    }

    /// The slabs all caches hold: an upper bound of what a shrink could
    /// free (how much of it is free only a flush of every CPU can tell).
    fn count_objects(&self, _pages: &PageAllocator<P>, _gfp: Gfp) -> usize {
        self.try_count_slabs().unwrap_or(0)
    }

    /// Shrinks every cache, whatever `nr_to_scan` says; returns the pages
    /// that came back to the page allocator meanwhile (slabs, also those a
    /// flush discards, and sheaf blocks; what other CPUs allocate or free
    /// at the same time blurs the figure).
    fn scan_objects(&self, pages: &PageAllocator<P>, _nr_to_scan: usize, _gfp: Gfp) -> usize {
        let free = || pages.nr_free_pages() + pages.pcp_pages();
        let before = free();
        self.try_shrink_all();
        free().saturating_sub(before)
    }
}
