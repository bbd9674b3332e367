//! Threads as CPUs.
//!
//! On a hosted machine a thread is what runs kmem code, so a thread stands in
//! for a CPU. Each thread gets a *slot* the first time it asks: the next
//! number from a global counter. The CPU it runs on is `slot % nr_cpus`, so
//! any number of threads map onto any number of CPUs, several threads per CPU
//! when there are more threads than CPUs.
//!
//! Two threads on one CPU is something a kernel never sees (a CPU runs one
//! thing at a time, and per-CPU data is protected by disabling preemption).
//! kmem's per-CPU structures must therefore stay correct when two host threads
//! share a CPU number; this module makes that case common rather than hiding it.
//!
//! Tests can choose the CPU: [`set_cpu`] pins the calling thread for good,
//! [`run_on_cpu`] pins it for the duration of a closure and then restores the
//! previous slot, even if the closure panics.
//!
//! [`current_cpu`] is on every allocation's fast path: it is one thread-local
//! read and a predictable branch or two (the remainder is only computed for
//! slots beyond the CPU count).

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Slot value meaning "not assigned yet".
const UNASSIGNED: usize = usize::MAX;

/// The next slot to hand out.
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SLOT: Cell<usize> = const { Cell::new(UNASSIGNED) };
}

#[cold]
fn assign_slot() -> usize {
    let slot = NEXT_SLOT.fetch_add(1, Ordering::Relaxed);
    SLOT.with(|s| s.set(slot));
    slot
}

/// The calling thread's slot, assigning one on first use. Distinct threads get
/// distinct slots unless one was pinned with [`set_cpu`].
#[inline]
pub fn cpu_slot() -> usize {
    let slot = SLOT.with(Cell::get);
    if slot == UNASSIGNED {
        assign_slot()
    } else {
        slot
    }
}

/// The CPU the calling thread runs on, in `0..nr_cpus` (`slot % nr_cpus`).
///
/// # Panics
/// If `nr_cpus` is 0.
#[inline]
pub fn current_cpu(nr_cpus: usize) -> usize {
    let slot = cpu_slot();
    // No division while there are no more threads than CPUs.
    if slot < nr_cpus {
        slot
    } else {
        slot % nr_cpus
    }
}

/// Pins the calling thread to CPU `cpu` from now on. On a machine with fewer
/// CPUs the number wraps (`cpu % nr_cpus`).
pub fn set_cpu(cpu: usize) {
    assert!(cpu != UNASSIGNED, "CPU number {cpu} is reserved");
    SLOT.with(|s| s.set(cpu));
}

/// Runs `f` with the calling thread pinned to CPU `cpu`, then restores the
/// thread's previous slot (also when `f` panics). Calls nest.
pub fn run_on_cpu<R>(cpu: usize, f: impl FnOnce() -> R) -> R {
    struct Restore(usize);
    impl Drop for Restore {
        fn drop(&mut self) {
            SLOT.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(cpu_slot());
    set_cpu(cpu);
    f()
}
