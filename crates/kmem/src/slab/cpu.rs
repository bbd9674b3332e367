//! Per-CPU slab state: the sheaf (an array of free objects, the fast path),
//! the active slab and the CPU's free list (objects of the active slab and
//! objects freed on this CPU, of any slab of the cache), the per-CPU partial
//! list, and the counters.
//!
//! One `CpuSlab` per CPU and cache, each on its own cache lines, stored
//! right behind the [`super::KmemCache`] it belongs to (the cache object of
//! the `kmem_cache` cache is sized for `nr_cpus` of them).
//!
//! # Locking
//! The per-CPU lock (`cpu_lock.rs`): the CPU's owner (a kernel with
//! preemption off, a host thread that claimed its CPU) takes it with plain
//! stores; everyone else with a compare-and-swap, and remote flushes
//! (shrink, destroy, validate) with a barrier besides. Whoever fails to take it without waiting takes a
//! path that needs no per-CPU state at all (a single object from a node
//! partial list under the node lock, or a free straight to the slab).
//!
//! # Counters
//! Named as Linux's `/sys/kernel/slab/<cache>/` statistics. They are atomics
//! updated by load and store (not read-modify-write): exact under the flag,
//! possibly short by a count when two threads sharing a CPU race outside it,
//! which Linux accepts for its own counters too.

use crate::cpu_lock::{PerCpu, PerCpuGuard};
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::slab::NIL;

/// Per-cache event counters, summed over CPUs by
/// [`super::KmemCache::stats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum Stat {
    /// Allocation from the CPU's sheaf or free list (no lock but the CPU
    /// flag).
    AllocFastpath,
    /// Allocation off the fast path: a refill, or one that bypassed the
    /// CPU's state (flag taken, another node). Fast + slow = allocations
    /// (debug caches count neither).
    AllocSlowpath,
    /// Free to the CPU's sheaf or free list.
    FreeFastpath,
    /// Free straight to a slab's own free list (not counting objects a
    /// flush gives back). Fast + slow = frees (debug caches count neither).
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
    /// The empty sheaf was refilled from the slabs.
    SheafRefill,
    /// The full sheaf gave its older half back to the slabs.
    SheafFlush,
    /// The empty sheaf was traded for a full one at the barn.
    BarnGet,
    /// The sheaf was empty and the barn had no full one.
    BarnGetFail,
    /// The full sheaf was traded for an empty one at the barn.
    BarnPut,
    /// The sheaf was full and the barn took no more (or no empty block
    /// could be had).
    BarnPutFail,
}

/// Number of [`Stat`] counters.
pub const NR_STATS: usize = 33;

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
        Stat::SheafRefill,
        Stat::SheafFlush,
        Stat::BarnGet,
        Stat::BarnGetFail,
        Stat::BarnPut,
        Stat::BarnPutFail,
    ];

    /// The name Linux gives the counter in `/sys/kernel/slab/<cache>/`
    /// (kmem's own: `alloc_contended`, `free_contended`, `cpu_list_flush`,
    /// `sheaf_refill`, `sheaf_flush`).
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
            Stat::SheafRefill => "sheaf_refill",
            Stat::SheafFlush => "sheaf_flush",
            Stat::BarnGet => "barn_get",
            Stat::BarnGetFail => "barn_get_fail",
            Stat::BarnPut => "barn_put",
            Stat::BarnPutFail => "barn_put_fail",
        }
    }
}

/// What the CPU flags protect.
pub(crate) struct CpuInner {
    /// The sheaf: an array of free objects of one node, most recently
    /// freed last (null: none yet). Allocation pops from its end, free pushes
    /// onto it; no object memory is read on either path. Every object in it
    /// counts as in use in its own slab. Its block comes from the page
    /// allocator ([`super::OWNER_SHEAF`]).
    pub(crate) sheaf: *mut usize,
    /// Objects in the sheaf.
    pub(crate) sheaf_n: u32,
    /// Objects the sheaf may hold (0 while there is none).
    pub(crate) sheaf_cap: u32,
    /// The node of every object in the sheaf (set when it is empty: the
    /// CPU's node at a refill, the freed object's at a free).
    pub(crate) sheaf_node: u32,
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

/// One CPU's state for one cache: the locked part and the counters.
#[repr(C, align(64))]
pub(crate) struct CpuSlab {
    /// Taken with [`PerCpu::try_lock_this`] by the running CPU, with
    /// [`PerCpu::lock_remote`] by flushes and reports.
    pub(crate) state: PerCpu<CpuInner>,
    stats: [AtomicU64; NR_STATS],
}

// SAFETY: the sheaf pointer is a direct-map address owned by the cache,
// reached only under the CPU lock.
unsafe impl Send for CpuInner {}

/// A held CPU state.
pub(crate) type CpuGuard<'a> = PerCpuGuard<'a, CpuInner>;

/// What an inlined fast path did ([`super::KmemCache::alloc_fast_path`]
/// with the object, [`super::KmemCache::free_fast`] with nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fast<T> {
    /// Done on the owned CPU's sheaf.
    Done(T),
    /// The caller does not own its CPU: the shared fast path next
    /// (`alloc_shared`, `free_shared`).
    Unowned,
    /// Not handled; nothing changed: the full path next.
    Declined,
}

impl CpuSlab {
    /// Empty state on `node`: no active slab, no partial slabs, counters at
    /// zero.
    pub(crate) fn new(node: u32) -> CpuSlab {
        CpuSlab {
            state: PerCpu::new(CpuInner {
                sheaf: core::ptr::null_mut(),
                sheaf_n: 0,
                sheaf_cap: 0,
                sheaf_node: node,
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
