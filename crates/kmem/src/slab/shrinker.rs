//! The slab allocator as a shrinker of its page allocator.
//!
//! Free objects that a cache keeps for speed are memory the page allocator
//! cannot see: the per-CPU sheaves (up to [`super::SlabConfig::sheaf_bytes`]
//! per CPU and cache) and the barns' sheaves (as much again per node and
//! cache), the CPU free lists and per-CPU partial slabs, and
//! empty slabs kept on the node partial lists. Under memory pressure an
//! allocation that may block runs direct reclaim ([`crate::page::reclaim`]);
//! registered with [`SlabAllocator::register_shrinker`], the slab allocator
//! then does what `kmem_cache_shrink` does (and what its per-CPU sheaves give
//! back on a `kmem_cache_shrink` in Linux) to one cache after another, until
//! the pages asked for have come back: flush every CPU's state of the cache
//! back to its slabs and give every empty slab and sheaf block back. The
//! next round starts with the next cache, so the caches take turns.
//!
//! A shrink is costly (each CPU's state is taken remotely, with the
//! platform's barrier for owned CPUs), which is acceptable only because
//! reclaim is the last step before an allocation fails.
//!
//! # Deadlock freedom
//! Reclaim runs in the allocating thread with no page-allocator lock held.
//! The slab allocator never allocates pages that may reclaim while it holds
//! a CPU flag or a node lock (new slabs are allocated with neither; sheaf
//! blocks with `GFP_NOWAIT`), so the flushes cannot wait for the caller
//! itself. The cache list lock may be held by the caller (a closure given to
//! `for_each_cache`, or slabinfo's writer, may allocate): the shrinker only
//! *tries* it and frees nothing this round if it is taken.
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

    /// `kmem_cache_shrink` on one cache after another, starting where the
    /// last round stopped, until `want` pages have come back or every cache
    /// has had its turn; nothing if the cache list lock is taken. Returns
    /// the pages that came back meanwhile (`free` counts free pages).
    fn try_shrink(&self, want: usize, free: impl Fn() -> usize) -> usize {
        let Some(list) = self.global().list.try_lock() else {
            return 0;
        };
        let n = list.len;
        if n == 0 {
            return 0;
        }
        let cursor = &self.global().shrink_cursor;
        let start = cursor.load(Relaxed) % n;
        let mut cur = list.head;
        for _ in 0..start {
            // SAFETY: caches on the list are alive while the lock is held.
            cur = unsafe { (*cur).list_next.load(Relaxed) };
        }
        let before = free();
        let mut got = 0;
        for step in 1..=n {
            // SAFETY: as above; `len` counts the caches on the list, so the
            // walk wraps to the head exactly at its end. Shrinking takes CPU
            // flags and node locks, which rank below the cache list lock.
            let c = unsafe { &*cur };
            c.shrink();
            got = free().saturating_sub(before);
            cur = c.list_next.load(Relaxed);
            if cur.is_null() {
                cur = list.head;
            }
            if got >= want {
                cursor.store((start + step) % n, Relaxed);
                break;
            }
        }
        got
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

    /// Shrinks caches in turn until `nr_to_scan` pages have come back (the
    /// slabs and sheaf blocks a cache's shrink gives back, also those its
    /// CPU flushes discard; what other CPUs allocate or free at the same
    /// time blurs the count). The next round starts with the cache after the
    /// last one shrunk, so the caches share the cost of reclaim.
    fn scan_objects(&self, pages: &PageAllocator<P>, nr_to_scan: usize, _gfp: Gfp) -> usize {
        self.try_shrink(nr_to_scan.max(1), || pages.nr_free_pages_with_pcp())
    }
}
