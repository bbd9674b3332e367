//! Counters for every path of the page allocator, like Linux's /proc/vmstat.
//!
//! Slow-path counters are shared atomics; the two hottest counts (per-CPU
//! list hits on alloc and free) live in the per-CPU lists and are summed when
//! a snapshot is taken, so the fast path touches no shared cache line.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// Live counters (shared atomics).
        #[derive(Default)]
        pub struct VmStats {
            $($(#[doc = $doc])* pub(crate) $name: AtomicU64,)*
        }

        /// A snapshot of every counter.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct VmStatSnapshot {
            /// Order-0..3 allocations served by a per-CPU list (the fast path).
            pub alloc_pcp: u64,
            /// Order-0..3 frees that went onto a per-CPU list.
            pub free_pcp: u64,
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl VmStats {
            pub(crate) fn snapshot(&self, alloc_pcp: u64, free_pcp: u64) -> VmStatSnapshot {
                VmStatSnapshot { alloc_pcp, free_pcp, $($name: self.$name.load(Relaxed),)* }
            }
        }

        impl VmStatSnapshot {
            /// Every counter as `(name, value)`, in a fixed order.
            pub fn fields(&self) -> impl Iterator<Item = (&'static str, u64)> {
                [("alloc_pcp", self.alloc_pcp), ("free_pcp", self.free_pcp), $((stringify!($name), self.$name),)*].into_iter()
            }
        }
    };
}

counters! {
    /// Allocations taken straight from a zone's buddy lists.
    alloc_buddy,
    /// Allocations that missed the fast path (low watermark) and entered the slow path.
    alloc_slow,
    /// Allocations that succeeded only by dipping below the min watermark (reserves).
    alloc_reserve,
    /// Allocations that succeeded only by ignoring watermarks (`__GFP_MEMALLOC`).
    alloc_no_watermarks,
    /// Frees returned straight to a zone's buddy lists.
    free_buddy,
    /// Buddy merges performed while freeing.
    buddy_merge,
    /// Per-CPU list refills from a zone.
    pcp_refill,
    /// Batches moved from per-CPU lists back to a zone (over the high mark or drained).
    pcp_drain,
    /// Fast-path attempts that found this CPU's list busy (another thread on the same CPU).
    pcp_contended,
    /// Calls to drain every CPU's lists.
    drain_all,
    /// Whole pageblocks claimed for another migrate type (fallback).
    fallback_claim,
    /// Blocks stolen from another migrate type without claiming its pageblock.
    fallback_steal,
    /// Pageblocks turned into the high-order atomic reserve.
    highatomic_reserve,
    /// Reserved pageblocks given back before a blocking allocation fails.
    highatomic_unreserve,
    /// Zones skipped because they were under the watermark in force.
    wmark_fail,
    /// kswapd wake-ups requested (`__GFP_KSWAPD_RECLAIM` under the low watermark).
    kswapd_wake,
    /// Direct reclaim runs.
    direct_reclaim,
    /// Objects freed by shrinkers in direct reclaim.
    reclaim_freed,
    /// Slow-path retries after reclaim.
    retry,
    /// Waits of `__GFP_NOFAIL` allocations for another CPU to free memory.
    nofail_wait,
    /// Points where Linux would have invoked the OOM killer.
    oom,
    /// Failures: no memory.
    fail_nomem,
    /// Failures: order above MAX_PAGE_ORDER.
    fail_order,
    /// Failures: invalid GFP mask.
    fail_gfp,
    /// Blocking allocations in atomic context (reported; failed or not by policy).
    context_violation,
    /// Allocations refused in NMI context.
    fail_nmi,
    /// Frees rejected (double free, wrong order, foreign pfn...).
    free_error,
}
