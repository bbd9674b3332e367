//! Per-CPU slab state: the active slab, the CPU's free list (objects of the
//! active slab and objects freed on this CPU, of any slab of the cache), the
//! per-CPU partial list, and the counters.
//!
//! One `CpuSlab` per CPU and cache, each on its own cache lines, stored
//! right behind the [`super::KmemCache`] it belongs to (the cache object of
//! the `kmem_cache` cache is sized for `nr_cpus` of them).
//!
//! # Locking
//! The state is guarded by a per-CPU flag taken with a *try*-lock, the way the
//! page allocator's per-CPU lists are (and Linux's `local_trylock`). In a
//! kernel the flag is only ever contended by an interrupt on the same CPU; on
//! the hosted machine two threads can share a CPU number, and whoever loses
//! the try-lock takes a path that needs no per-CPU state at all (a single
//! object from a node partial list under the node lock, or a free straight to
//! the slab). Only flushing another CPU's state (shrink, destroy, validate)
//! waits for the flag.
//!
//! The fast paths cost one uncontended compare-and-swap to take the flag and
//! one plain store to release it; in between, alloc pops and free pushes with
//! plain loads and stores. A kernel could drop the compare-and-swap (its
//! per-CPU data is guarded by disabling preemption); the hosted machine, where
//! several threads may share a CPU number, cannot.
//!
//! # Counters
//! Named as Linux's `/sys/kernel/slab/<cache>/` statistics. They are atomics
//! updated by load and store (not read-modify-write): exact under the flag,
//! possibly short by a count when two threads sharing a CPU race outside it,
//! which Linux accepts for its own counters too.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{
    AtomicBool, AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};

use super::slab::NIL;

/// Per-cache event counters, summed over CPUs by
/// [`super::KmemCache::stats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum Stat {
    /// Allocation from the CPU's free list (no lock but the CPU flag).
    AllocFastpath,
    /// Allocation that had to refill the CPU's free list or bypass it.
    AllocSlowpath,
    /// Free to the CPU's active slab.
    FreeFastpath,
    /// Free straight to a slab's own free list.
    FreeSlowpath,
    /// Slow free to a slab that is some CPU's active slab.
    FreeFrozen,
    /// A free put a slab on its node's partial list.
    FreeAddPartial,
    /// A free took an empty slab off the partial list to release it.
    FreeRemovePartial,
    /// Active slab taken from the node partial list.
    AllocFromPartial,
    /// New slab from the page allocator.
    AllocSlab,
    /// Active slab refilled with objects freed to it by other CPUs.
    AllocRefill,
    /// Active slab dropped because the caller asked for another node.
    AllocNodeMismatch,
    /// Slab given back to the page allocator.
    FreeSlab,
    /// A CPU's slabs flushed (shrink, destroy, validate).
    CpuslabFlush,
    /// Active slab given up full.
    DeactivateFull,
    /// Active slab given up empty.
    DeactivateEmpty,
    /// Active slab given up to the head of the partial list.
    DeactivateToHead,
    /// Active slab given up to the tail of the partial list.
    DeactivateToTail,
    /// Active slab given up while other CPUs had freed to it.
    DeactivateRemoteFrees,
    /// The preferred slab order was unavailable; fell back to the minimum.
    OrderFallback,
    /// A slab word compare-and-swap lost a race and was retried.
    CmpxchgDoubleFail,
    /// Active slab taken from the CPU partial list.
    CpuPartialAlloc,
    /// A free put a full slab on the CPU partial list.
    CpuPartialFree,
    /// A slab moved from the node partial list to the CPU partial list.
    CpuPartialNode,
    /// The CPU partial list was full and drained to the node.
    CpuPartialDrain,
    /// Allocation that found the CPU flag taken (another thread on this CPU).
    AllocContended,
    /// Free that found the CPU flag taken.
    FreeContended,
    /// The CPU free list outgrew its limit; its colder half went back to the
    /// slabs.
    CpuListFlush,
}

/// Number of [`Stat`] counters.
pub const NR_STATS: usize = 27;

impl Stat {
    /// Every counter, in declaration order.
    pub const ALL: [Stat; NR_STATS] = [
        Stat::AllocFastpath,
        Stat::AllocSlowpath,
        Stat::FreeFastpath,
        Stat::FreeSlowpath,
        Stat::FreeFrozen,
        Stat::FreeAddPartial,
        Stat::FreeRemovePartial,
        Stat::AllocFromPartial,
        Stat::AllocSlab,
        Stat::AllocRefill,
        Stat::AllocNodeMismatch,
        Stat::FreeSlab,
        Stat::CpuslabFlush,
        Stat::DeactivateFull,
        Stat::DeactivateEmpty,
        Stat::DeactivateToHead,
        Stat::DeactivateToTail,
        Stat::DeactivateRemoteFrees,
        Stat::OrderFallback,
        Stat::CmpxchgDoubleFail,
        Stat::CpuPartialAlloc,
        Stat::CpuPartialFree,
        Stat::CpuPartialNode,
        Stat::CpuPartialDrain,
        Stat::AllocContended,
        Stat::FreeContended,
        Stat::CpuListFlush,
    ];

    /// The name Linux gives the counter in `/sys/kernel/slab/<cache>/`
    /// (kmem's own: `alloc_contended`, `free_contended`, `cpu_list_flush`).
    pub const fn name(self) -> &'static str {
        match self {
            Stat::AllocFastpath => "alloc_fastpath",
            Stat::AllocSlowpath => "alloc_slowpath",
            Stat::FreeFastpath => "free_fastpath",
            Stat::FreeSlowpath => "free_slowpath",
            Stat::FreeFrozen => "free_frozen",
            Stat::FreeAddPartial => "free_add_partial",
            Stat::FreeRemovePartial => "free_remove_partial",
            Stat::AllocFromPartial => "alloc_from_partial",
            Stat::AllocSlab => "alloc_slab",
            Stat::AllocRefill => "alloc_refill",
            Stat::AllocNodeMismatch => "alloc_node_mismatch",
            Stat::FreeSlab => "free_slab",
            Stat::CpuslabFlush => "cpuslab_flush",
            Stat::DeactivateFull => "deactivate_full",
            Stat::DeactivateEmpty => "deactivate_empty",
            Stat::DeactivateToHead => "deactivate_to_head",
            Stat::DeactivateToTail => "deactivate_to_tail",
            Stat::DeactivateRemoteFrees => "deactivate_remote_frees",
            Stat::OrderFallback => "order_fallback",
            Stat::CmpxchgDoubleFail => "cmpxchg_double_fail",
            Stat::CpuPartialAlloc => "cpu_partial_alloc",
            Stat::CpuPartialFree => "cpu_partial_free",
            Stat::CpuPartialNode => "cpu_partial_node",
            Stat::CpuPartialDrain => "cpu_partial_drain",
            Stat::AllocContended => "alloc_contended",
            Stat::FreeContended => "free_contended",
            Stat::CpuListFlush => "cpu_list_flush",
        }
    }
}

/// What the CPU flag protects.
pub(crate) struct CpuInner {
    /// First object of the CPU's free list (0: empty). It starts as the
    /// whole free list of the active slab (taken at once); frees push any
    /// object of the cache onto it (objects of the CPU's node only), so it
    /// works like Linux's per-CPU sheaves without memory of its own. Every
    /// object on it counts as in use in its own slab.
    pub(crate) freelist: usize,
    /// Objects on `freelist`.
    pub(crate) count: u32,
    /// Pfn of the active (frozen) slab, or [`NIL`].
    pub(crate) slab: u32,
    /// The CPU's node: of the active slab, and of every object on the list.
    pub(crate) node: u32,
    /// Head of the per-CPU partial list (linked through frame `next`).
    pub(crate) partial: u32,
    /// Slabs on the per-CPU partial list.
    pub(crate) nr_partial: u32,
}

/// One CPU's state for one cache.
#[repr(C, align(64))]
pub(crate) struct CpuSlab {
    locked: AtomicBool,
    inner: UnsafeCell<CpuInner>,
    stats: [AtomicU64; NR_STATS],
}

// SAFETY: `inner` is only accessed while `locked` is held; the stats are
// atomics.
unsafe impl Sync for CpuSlab {}

/// A held CPU flag.
pub(crate) struct CpuGuard<'a> {
    cpu: &'a CpuSlab,
}

impl CpuGuard<'_> {
    /// Sets the active slab.
    #[inline(always)]
    pub(crate) fn set_slab(&mut self, pfn: u32) {
        self.slab = pfn;
    }
}

impl Drop for CpuGuard<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        self.cpu.locked.store(false, Release);
    }
}

impl Deref for CpuGuard<'_> {
    type Target = CpuInner;
    #[inline(always)]
    fn deref(&self) -> &CpuInner {
        // SAFETY: the flag is held.
        unsafe { &*self.cpu.inner.get() }
    }
}

impl DerefMut for CpuGuard<'_> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut CpuInner {
        // SAFETY: the flag is held, so this is the only reference.
        unsafe { &mut *self.cpu.inner.get() }
    }
}

impl CpuSlab {
    /// Empty state on `node`: no active slab, no partial slabs, counters at
    /// zero.
    pub(crate) fn new(node: u32) -> CpuSlab {
        CpuSlab {
            locked: AtomicBool::new(false),
            inner: UnsafeCell::new(CpuInner {
                freelist: 0,
                count: 0,
                slab: NIL,
                node,
                partial: NIL,
                nr_partial: 0,
            }),
            stats: [const { AtomicU64::new(0) }; NR_STATS],
        }
    }

    /// Takes the flag if it is free.
    #[inline(always)]
    pub(crate) fn try_lock(&self) -> Option<CpuGuard<'_>> {
        self.locked
            .compare_exchange(false, true, Acquire, Relaxed)
            .ok()
            .map(|_| CpuGuard { cpu: self })
    }

    /// Takes the flag, waiting (with `relax` between attempts) while another
    /// thread holds it.
    pub(crate) fn lock(&self, relax: impl Fn()) -> CpuGuard<'_> {
        loop {
            if let Some(g) = self.try_lock() {
                return g;
            }
            relax();
        }
    }

    /// Counts one event.
    #[inline(always)]
    pub(crate) fn stat(&self, s: Stat) {
        self.stat_add(s, 1);
    }

    /// Counts `n` events.
    #[inline(always)]
    pub(crate) fn stat_add(&self, s: Stat, n: u64) {
        let c = &self.stats[s as usize];
        c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// Reads a counter.
    pub(crate) fn stat_value(&self, s: Stat) -> u64 {
        self.stats[s as usize].load(Relaxed)
    }
}
