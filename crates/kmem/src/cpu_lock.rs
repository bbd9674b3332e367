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
            return None;
        }
        self.busy.store(true, Relaxed);
        // The store must come before the load of `locked` as the compiler
        // emits them; the hardware half of the ordering is the taker's
        // barrier.
        compiler_fence(SeqCst);
        if self.locked.load(Acquire) {
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
    /// and a wait for the owner to leave. Must not run in an interrupt
    /// handler that may have interrupted the owner itself.
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
