//! The platform seam: what a kernel (or the hosted machine) hands kmem.
//!
//! kmem's core never asks the outside world for anything except through this
//! trait: where the direct map is, which CPU is running, what execution context
//! it is in, which lock type protects shared state, how to wait for another CPU,
//! and where warnings go. A kernel implements it over its own per-CPU data and
//! IRQ-safe spinlocks; `kmem-host` implements it over threads and a memfd.
//!
//! # Usage in IRQs
//! Every method may be called from any context, including hard IRQ and NMI, so
//! implementations must not block or allocate.

use crate::addr::{PhysAddr, VirtAddr};
use crate::context::ExecContext;
use core::fmt;

/// Services a kernel or host provides to kmem.
pub trait Platform: Send + Sync + 'static {
    /// The lock that protects zone free lists and other shared state. In a
    /// kernel this must be IRQ-safe (disable local interrupts while held),
    /// since GFP_ATOMIC allocations run in interrupt handlers.
    type Lock: lock_api::RawMutex + Send + Sync;

    /// Virtual address at which physical address 0 is mapped: the direct map
    /// covers `[offset, offset + max_phys)` linearly (Linux's `PAGE_OFFSET`).
    fn direct_map_offset(&self) -> usize;

    /// The CPU this code is running on, in `0..nr_cpus()`.
    fn cpu_id(&self) -> usize;

    /// Number of CPUs kmem keeps per-CPU state for.
    fn nr_cpus(&self) -> usize;

    /// Whether the caller is the only code that runs as its CPU
    /// ([`Self::cpu_id`]) until it returns, apart from interrupts that nest
    /// inside it and finish before it resumes: in a kernel, code with
    /// preemption disabled (or a kernel without preemption); on the hosted
    /// machine, a thread that has claimed its CPU.
    ///
    /// When true, kmem guards the CPU's per-CPU state (page lists, slab
    /// sheaves) with plain loads and stores instead of a compare-and-swap
    /// (Linux's `local_trylock`), which is what makes the fast paths cheap. A platform that returns true
    /// anywhere must implement [`Self::cpu_has_exclusive`] and
    /// [`Self::cpu_barrier`] too. The default, false, is always safe.
    #[inline(always)]
    fn cpu_exclusive(&self) -> bool {
        false
    }

    /// [`Self::cpu_id`] and [`Self::cpu_exclusive`] at once, for platforms
    /// that can answer both with one look at their per-CPU (per-thread)
    /// data. This is what the fast paths call.
    #[inline(always)]
    fn this_cpu(&self) -> (usize, bool) {
        (self.cpu_id(), self.cpu_exclusive())
    }

    /// The CPU the caller owns: [`Self::cpu_id`] if [`Self::cpu_exclusive`]
    /// is true, else any number of [`Self::nr_cpus`] or more. The slab fast
    /// paths ask this first, so that an owner pays one look at its per-CPU
    /// (per-thread) data and one compare; the default asks
    /// [`Self::this_cpu`].
    #[inline(always)]
    fn owned_cpu(&self) -> usize {
        match self.this_cpu() {
            (cpu, true) => cpu,
            _ => usize::MAX,
        }
    }

    /// Whether code running as `cpu` may currently rely on
    /// [`Self::cpu_exclusive`]. Other code that must touch that CPU's state
    /// (a flush from another CPU, or a second host thread that shares the CPU
    /// number) then waits for the owner with [`Self::cpu_barrier`]; if false,
    /// a compare-and-swap is enough.
    #[inline(always)]
    fn cpu_has_exclusive(&self, _cpu: usize) -> bool {
        false
    }

    /// A full memory barrier executed on every CPU that runs exclusive code,
    /// before this returns (Linux's `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`
    /// from user space, an IPI to every CPU in a kernel). Together with the
    /// owner's plain store, load order this is the slow half of an asymmetric
    /// Dekker lock: the owner pays nothing, the rare remote side pays the
    /// barrier. The default is a local fence, enough for a platform that is
    /// never exclusive or has one CPU.
    fn cpu_barrier(&self) {
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    }

    /// The execution context of the running code (Linux's `preempt_count()`,
    /// `irqs_disabled()` and RCU depth).
    fn context(&self) -> ExecContext;

    /// `self.context().is_atomic()`: the one question the allocation fast
    /// paths ask about the context (the whole context is read only when the
    /// answer is yes). A platform that can answer it with fewer instructions
    /// than building an [`ExecContext`] overrides it; the answer must be the
    /// same.
    #[inline(always)]
    fn in_atomic(&self) -> bool {
        self.context().is_atomic()
    }

    /// Marks the running task as reclaiming memory (Linux's `PF_MEMALLOC`,
    /// set around direct reclaim) and returns the previous mark. An
    /// allocation made under the mark (by a shrinker) neither enters direct
    /// reclaim again nor stops at the watermarks. The default keeps no mark
    /// (always returns false, and [`Self::in_memalloc`] stays false): a
    /// shrinker that allocates may then recurse into reclaim.
    fn set_memalloc(&self, _on: bool) -> bool {
        false
    }

    /// Whether the running task carries the [`Self::set_memalloc`] mark.
    fn in_memalloc(&self) -> bool {
        false
    }

    /// The running task's id (Linux's `current->pid`), printed in the slab
    /// debugging's tracking lines (`pid=`). The default, 0, is Linux's
    /// idle task: for a platform that keeps no tasks.
    fn task_id(&self) -> u32 {
        0
    }

    /// Wait a little for another CPU to make progress (free memory, release a
    /// lock). Called only from contexts that may block or spin.
    fn relax(&self) {
        core::hint::spin_loop();
    }

    /// Print a warning or bug report (Linux's `printk`). Must not allocate
    /// from kmem.
    fn warn(&self, msg: fmt::Arguments<'_>);

    /// Translate a physical address through the direct map.
    #[inline(always)]
    fn phys_to_virt(&self, pa: PhysAddr) -> VirtAddr {
        VirtAddr(self.direct_map_offset() + pa.0 as usize)
    }
}
