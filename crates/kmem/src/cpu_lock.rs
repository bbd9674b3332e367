//! The per-CPU lock: what guards a CPU's page lists and slab state.
//!
//! Two flags make an asymmetric Dekker lock:
//!
//! - `busy`, set and cleared with plain stores by code that owns its CPU
//!   ([`Platform::cpu_exclusive`]: a kernel with preemption off, a host
//!   thread that claimed its CPU). It sets `busy`, then looks at `locked`;
//!   an interrupt that nests inside it finds `busy` set and goes elsewhere.
//!   This is Linux's `local_trylock`: no atomic read-modify-write at all.
//! - `locked`, taken with a compare-and-swap by everyone else: threads that
//!   share a CPU number on the hosted machine, and drains or flushes of
//!   another CPU's state. If the CPU may have an owner, the taker then runs
//!   [`Platform::cpu_barrier`] (membarrier, or an IPI) and waits for `busy`
//!   to clear; an owner that then sees `locked` backs off.
//!
//! The fast paths only *try*: whoever fails takes a path that needs no
//! per-CPU state (the zone lock, a slab's node lock). A thread that shares
//! the number of an *owned* CPU does so without trying: it must not make the
//! owner pay a barrier. Only remote work ([`CpuLock::lock_remote`]) waits.
//!
//! Why it is sound: the owner does W(busy) then R(locked); the taker does
//! W(locked) (a compare-and-swap), a barrier on every CPU, then R(busy).
//! Either the owner's store reached memory before the barrier, and the taker
//! sees `busy` and waits, or the owner's load comes after the barrier and
//! sees `locked`. A compiler fence keeps the owner's two accesses in order;
//! the barrier supplies the hardware half.
//!
//! [`Platform::cpu_exclusive`]: crate::platform::Platform::cpu_exclusive
//! [`Platform::cpu_barrier`]: crate::platform::Platform::cpu_barrier

use crate::platform::Platform;
use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{
    compiler_fence, AtomicBool,
    Ordering::{Acquire, Relaxed, Release, SeqCst},
};

/// One CPU's data of type `T` behind its [`CpuLock`].
pub(crate) struct PerCpu<T> {
    lock: CpuLock,
    inner: UnsafeCell<T>,
}

// SAFETY: `inner` is only reached through a guard, which holds the lock.
unsafe impl<T: Send> Sync for PerCpu<T> {}

/// A held [`PerCpu`]: the data, exclusively, until dropped.
pub(crate) struct PerCpuGuard<'a, T> {
    cell: &'a PerCpu<T>,
    held: Held,
}

impl<T> PerCpu<T> {
    /// `value` behind a free lock.
    pub(crate) const fn new(value: T) -> PerCpu<T> {
        PerCpu {
            lock: CpuLock::new(),
            inner: UnsafeCell::new(value),
        }
    }

    /// Tries to take the data of `cpu`, the running CPU (`exclusive` as
    /// [`Platform::this_cpu`] said). Never waits.
    #[inline(always)]
    pub(crate) fn try_lock_this<P: Platform>(
        &self,
        p: &P,
        cpu: usize,
        exclusive: bool,
    ) -> Option<PerCpuGuard<'_, T>> {
        let held = self.lock.try_lock_this(p, cpu, exclusive)?;
        Some(PerCpuGuard { cell: self, held })
    }

    /// Takes the data of `cpu` from anywhere, waiting (see
    /// [`CpuLock::lock_remote`]).
    pub(crate) fn lock_remote<P: Platform>(&self, p: &P, cpu: usize) -> PerCpuGuard<'_, T> {
        let held = self.lock.lock_remote(p, cpu);
        PerCpuGuard { cell: self, held }
    }
}

impl<T> Drop for PerCpuGuard<'_, T> {
    #[inline(always)]
    fn drop(&mut self) {
        self.cell.lock.unlock(self.held);
    }
}

impl<T> Deref for PerCpuGuard<'_, T> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        // SAFETY: the lock is held.
        unsafe { &*self.cell.inner.get() }
    }
}

impl<T> DerefMut for PerCpuGuard<'_, T> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the lock is held, so this is the only reference.
        unsafe { &mut *self.cell.inner.get() }
    }
}

/// The owner of `cpu` asked for its own state remotely while holding it.
#[cold]
#[inline(never)]
fn self_deadlock(cpu: usize) -> ! {
    panic!(
        "kmem: CPU {cpu}'s per-CPU state was asked for remotely (flush, drain, \
         statistics) by its own owner while the owner holds it (an interrupt \
         handler that interrupted the allocator, or a callback from inside \
         it): this would wait for itself forever"
    )
}

/// A per-CPU lock (see the module comment).
struct CpuLock {
    /// The owner's flag (plain stores).
    busy: AtomicBool,
    /// Everyone else's flag (compare-and-swap).
    locked: AtomicBool,
}

/// Which flag a holder took: release it with [`CpuLock::unlock`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Held {
    /// The owner's `busy`.
    Owner,
    /// The shared `locked`.
    Shared,
}

impl CpuLock {
    /// Free.
    const fn new() -> CpuLock {
        CpuLock {
            busy: AtomicBool::new(false),
            locked: AtomicBool::new(false),
        }
    }

    /// Tries to take the lock of `cpu`, the running CPU, whose exclusivity
    /// the caller got from [`Platform::this_cpu`] along with it. Never
    /// waits.
    #[inline(always)]
    fn try_lock_this<P: Platform>(&self, p: &P, cpu: usize, exclusive: bool) -> Option<Held> {
        if exclusive {
            self.try_lock_owner()
        } else {
            self.try_lock_shared(|| p.cpu_has_exclusive(cpu))
        }
    }

    /// Takes `busy` if the state is free: the caller owns the CPU. Plain
    /// loads and stores only; fails if an interrupted owner or another taker
    /// holds the state.
    #[inline(always)]
    fn try_lock_owner(&self) -> Option<Held> {
        if self.busy.load(Relaxed) {
            crate::hint::cold();
            return None;
        }
        self.busy.store(true, Relaxed);
        // The store must come before the load of `locked` as the compiler
        // emits them; the hardware half of the ordering is the taker's
        // barrier.
        compiler_fence(SeqCst);
        if self.locked.load(Acquire) {
            crate::hint::cold();
            self.busy.store(false, Release);
            return None;
        }
        Some(Held::Owner)
    }

    /// Takes `locked` with one compare-and-swap, for a caller that does not
    /// own the CPU; `owned` says whether the CPU has an owner now. Fails if
    /// the flag is taken or the CPU has an owner.
    #[inline(always)]
    fn try_lock_shared(&self, owned: impl Fn() -> bool) -> Option<Held> {
        if owned() {
            return None;
        }
        self.locked
            .compare_exchange(false, true, SeqCst, Relaxed)
            .ok()?;
        // Claimed between the check and the swap: the owner may be inside.
        if owned() {
            self.locked.store(false, Release);
            return None;
        }
        Some(Held::Shared)
    }

    /// Takes the lock from anywhere (a drain or flush of another CPU's
    /// state, statistics): `locked`, waiting while it is taken; then, if the
    /// CPU may have an owner (asked only after the swap, so that an owner
    /// who claims the CPU meanwhile sees the flag), the platform's barrier
    /// and a wait for the owner to leave.
    ///
    /// Must not run in an interrupt handler that interrupted the owner
    /// inside its critical section, nor in anything the owner calls from
    /// there: it would wait for itself. Running as the owner of `cpu` and
    /// finding `busy` set is exactly that case, and panics with a report
    /// (Linux's `BUG()`) instead of hanging.
    fn lock_remote<P: Platform>(&self, p: &P, cpu: usize) -> Held {
        while self
            .locked
            .compare_exchange(false, true, SeqCst, Relaxed)
            .is_err()
        {
            p.relax();
        }
        if p.cpu_has_exclusive(cpu) {
            // After the barrier the owner's `busy` store is visible to us,
            // and its next fast path sees `locked`.
            p.cpu_barrier();
            if self.busy.load(Acquire) && p.this_cpu() == (cpu, true) {
                self.locked.store(false, Release);
                self_deadlock(cpu);
            }
            while self.busy.load(Acquire) {
                p.relax();
            }
        }
        Held::Shared
    }

    /// Releases the flag `held` names.
    #[inline(always)]
    fn unlock(&self, held: Held) {
        match held {
            Held::Owner => self.busy.store(false, Release),
            Held::Shared => self.locked.store(false, Release),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::PhysAddr;
    use crate::context::ExecContext;
    use core::sync::atomic::AtomicUsize;

    /// The smallest `RawMutex`: a spinning flag.
    struct TestLock(AtomicBool);

    // SAFETY: a flag taken by compare-and-swap is a mutual exclusion lock.
    unsafe impl lock_api::RawMutex for TestLock {
        const INIT: TestLock = TestLock(AtomicBool::new(false));
        type GuardMarker = lock_api::GuardSend;
        fn lock(&self) {
            while !self.try_lock() {
                core::hint::spin_loop();
            }
        }
        fn try_lock(&self) -> bool {
            self.0
                .compare_exchange(false, true, Acquire, Relaxed)
                .is_ok()
        }
        unsafe fn unlock(&self) {
            self.0.store(false, Release);
        }
    }

    /// Runs as CPU 0 of 2, owning it; counts barriers.
    struct Owner0 {
        barriers: AtomicUsize,
    }

    impl Platform for Owner0 {
        type Lock = TestLock;
        fn direct_map_offset(&self) -> usize {
            0
        }
        fn cpu_id(&self) -> usize {
            0
        }
        fn nr_cpus(&self) -> usize {
            2
        }
        fn cpu_exclusive(&self) -> bool {
            true
        }
        fn cpu_has_exclusive(&self, cpu: usize) -> bool {
            cpu == 0
        }
        fn cpu_barrier(&self) {
            self.barriers.fetch_add(1, Relaxed);
        }
        /// Nothing else runs: a wait that spins at all waits forever. Fail
        /// (with another message than the self-deadlock report) instead.
        fn relax(&self) {
            panic!("test platform: spun on a lock nobody will release");
        }
        fn context(&self) -> ExecContext {
            ExecContext::PROCESS
        }
        fn warn(&self, _msg: core::fmt::Arguments<'_>) {}
        fn phys_to_virt(&self, pa: PhysAddr) -> crate::addr::VirtAddr {
            crate::addr::VirtAddr(pa.0 as usize)
        }
    }

    fn owner0() -> Owner0 {
        Owner0 {
            barriers: AtomicUsize::new(0),
        }
    }

    #[test]
    fn owner_path_excludes_shared_takers_and_releases() {
        let p = owner0();
        let cell = PerCpu::new(5u32);
        let mut g = cell.try_lock_this(&p, 0, true).expect("free lock");
        *g += 1;
        // A nested owner (an interrupt inside it) fails, and so does a
        // thread sharing the owned CPU's number (it never tries).
        assert!(cell.try_lock_this(&p, 0, true).is_none());
        assert!(cell.try_lock_this(&p, 0, false).is_none());
        drop(g);
        // Released: a remote taker gets it after one barrier (CPU 0 has an
        // owner), and the owner backs off while it holds it.
        let r = cell.lock_remote(&p, 0);
        assert_eq!(*r, 6);
        assert_eq!(p.barriers.load(Relaxed), 1);
        assert!(cell.try_lock_this(&p, 0, true).is_none());
        drop(r);
        assert!(cell.try_lock_this(&p, 0, true).is_some());
    }

    #[test]
    #[should_panic(expected = "would wait for itself")]
    fn remote_lock_by_the_holding_owner_panics_instead_of_hanging() {
        let p = owner0();
        let cell = PerCpu::new(());
        let _held = cell.try_lock_this(&p, 0, true).expect("free lock");
        let _ = cell.lock_remote(&p, 0);
    }

    #[test]
    fn remote_lock_of_another_cpu_does_not_panic() {
        // CPU 1 has no owner here: no barrier, no self-deadlock check.
        let p = owner0();
        let cell = PerCpu::new(());
        drop(cell.lock_remote(&p, 1));
        assert_eq!(p.barriers.load(Relaxed), 0);
    }
}
