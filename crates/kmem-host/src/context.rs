//! Execution context on a hosted machine, as RAII guards.
//!
//! A kernel keeps its execution context per CPU (`preempt_count()`,
//! `irqs_disabled()`, the RCU nesting depth). On a hosted machine the thread
//! *is* what runs on a CPU, so the context is a thread-local
//! `Cell<ExecContext>`: [`current_context`] is one thread-local read, and what
//! one thread enters never shows on another.
//!
//! Code says which context it is in by holding a guard:
//!
//! | guard                 | models                        | changes                               |
//! |-----------------------|-------------------------------|---------------------------------------|
//! | [`irq`]               | hard IRQ handler entry        | `hardirq + 1`, IRQs disabled          |
//! | [`softirq`]           | serving a softirq             | `softirq + 1`                         |
//! | [`nmi`]               | NMI entry (`nmi_enter`)       | `nmi + 1`, `hardirq + 1`, IRQs off    |
//! | [`preempt_disable`]   | `preempt_disable()`           | `preempt + 1`                         |
//! | [`local_irq_disable`] | `local_irq_save()`            | IRQs disabled                         |
//! | [`local_bh_disable`]  | `local_bh_disable()`          | `bh_disabled + 1`                     |
//! | [`rcu_read_lock`]     | `rcu_read_lock()`             | `rcu_depth + 1`                       |
//! | [`spin_lock`]         | a spinlock held               | `preempt + 1`, `spinlocks + 1`        |
//! | [`spin_lock_irqsave`] | `spin_lock_irqsave()`         | as `spin_lock`, and IRQs disabled     |
//! | [`spin_lock_bh`]      | `spin_lock_bh()`              | as `spin_lock`, and `bh_disabled + 1` |
//! | [`enter`]             | any context, wholesale        | replaces the whole context            |
//!
//! Guards nest. Dropping one undoes exactly what it did: counters go down by
//! what the guard added, and the IRQ flag goes back to what it was when the
//! guard was taken (as `local_irq_restore` does). Dropped in reverse order,
//! guards therefore restore every previous value exactly; counters stay right
//! even if guards are dropped out of order. [`enter`] is the exception: it
//! saves the whole context and puts it back on drop.
//!
//! Guards are `!Send`: a context belongs to the thread that entered it.
//! [`SpinLock`] pairs a real lock with the `spin_lock` marking, so code that
//! takes a kmem-visible lock is seen as atomic while it holds it.

use kmem::context::ExecContext;
use parking_lot::{Mutex, MutexGuard};
use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

thread_local! {
    static CONTEXT: Cell<ExecContext> = const { Cell::new(ExecContext::PROCESS) };
}

/// The calling thread's execution context.
#[inline]
pub fn current_context() -> ExecContext {
    CONTEXT.with(Cell::get)
}

fn set_context(ctx: ExecContext) {
    CONTEXT.with(|c| c.set(ctx));
}

/// Counter increments a guard applied, and whether it disabled IRQs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Delta {
    preempt: u8,
    spinlocks: u8,
    softirq: u8,
    bh_disabled: u8,
    hardirq: u8,
    nmi: u8,
    rcu_depth: u8,
    irqs_off: bool,
}

#[derive(Clone, Copy, Debug)]
enum Undo {
    /// Subtract the counters, and put the IRQ flag back.
    Delta {
        delta: Delta,
        irqs_were_disabled: bool,
    },
    /// Put the whole saved context back.
    Replace(ExecContext),
}

fn add(counter: &mut u8, by: u8, name: &str) {
    *counter = counter
        .checked_add(by)
        .unwrap_or_else(|| panic!("execution context: {name} nesting overflow"));
}

fn sub(counter: &mut u8, by: u8, name: &str) {
    *counter = counter
        .checked_sub(by)
        .unwrap_or_else(|| panic!("execution context: {name} nesting underflow"));
}

/// Proof that the calling thread is in some execution context; leaving it
/// (dropping the guard) undoes the change. Returned by every function of this
/// module that enters a context.
#[must_use = "the context is left as soon as the guard is dropped"]
pub struct ContextGuard {
    undo: Undo,
    /// Raw pointers are neither `Send` nor `Sync`: the guard stays on its thread.
    _not_send: PhantomData<*mut ()>,
}

impl ContextGuard {
    fn apply(delta: Delta) -> ContextGuard {
        let mut ctx = current_context();
        let irqs_were_disabled = ctx.irqs_disabled;
        add(&mut ctx.preempt, delta.preempt, "preempt");
        add(&mut ctx.spinlocks, delta.spinlocks, "spinlock");
        add(&mut ctx.softirq, delta.softirq, "softirq");
        add(&mut ctx.bh_disabled, delta.bh_disabled, "BH-disable");
        add(&mut ctx.hardirq, delta.hardirq, "hardirq");
        add(&mut ctx.nmi, delta.nmi, "NMI");
        add(&mut ctx.rcu_depth, delta.rcu_depth, "RCU read-side");
        ctx.irqs_disabled |= delta.irqs_off;
        set_context(ctx);
        ContextGuard {
            undo: Undo::Delta {
                delta,
                irqs_were_disabled,
            },
            _not_send: PhantomData,
        }
    }
}

impl Drop for ContextGuard {
    fn drop(&mut self) {
        match self.undo {
            Undo::Replace(saved) => set_context(saved),
            Undo::Delta {
                delta,
                irqs_were_disabled,
            } => {
                let mut ctx = current_context();
                sub(&mut ctx.preempt, delta.preempt, "preempt");
                sub(&mut ctx.spinlocks, delta.spinlocks, "spinlock");
                sub(&mut ctx.softirq, delta.softirq, "softirq");
                sub(&mut ctx.bh_disabled, delta.bh_disabled, "BH-disable");
                sub(&mut ctx.hardirq, delta.hardirq, "hardirq");
                sub(&mut ctx.nmi, delta.nmi, "NMI");
                sub(&mut ctx.rcu_depth, delta.rcu_depth, "RCU read-side");
                if delta.irqs_off {
                    ctx.irqs_disabled = irqs_were_disabled;
                }
                set_context(ctx);
            }
        }
    }
}

impl fmt::Debug for ContextGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextGuard")
            .field("undo", &self.undo)
            .finish()
    }
}

/// Enters a hard IRQ handler: `hardirq + 1` and IRQs disabled, as on real
/// handler entry.
pub fn irq() -> ContextGuard {
    ContextGuard::apply(Delta {
        hardirq: 1,
        irqs_off: true,
        ..Delta::default()
    })
}

/// Starts serving a softirq: `softirq + 1` (IRQs stay as they are).
pub fn softirq() -> ContextGuard {
    ContextGuard::apply(Delta {
        softirq: 1,
        ..Delta::default()
    })
}

/// Enters an NMI. As Linux's `nmi_enter()`, this counts as a hard IRQ too
/// (`nmi + 1`, `hardirq + 1`), and IRQs are disabled.
pub fn nmi() -> ContextGuard {
    ContextGuard::apply(Delta {
        nmi: 1,
        hardirq: 1,
        irqs_off: true,
        ..Delta::default()
    })
}

/// `preempt_disable()`: `preempt + 1`.
pub fn preempt_disable() -> ContextGuard {
    ContextGuard::apply(Delta {
        preempt: 1,
        ..Delta::default()
    })
}

/// `local_irq_save()`: disables IRQs; the drop restores the previous state.
pub fn local_irq_disable() -> ContextGuard {
    ContextGuard::apply(Delta {
        irqs_off: true,
        ..Delta::default()
    })
}

/// `local_bh_disable()`: `bh_disabled + 1`.
pub fn local_bh_disable() -> ContextGuard {
    ContextGuard::apply(Delta {
        bh_disabled: 1,
        ..Delta::default()
    })
}

/// `rcu_read_lock()`: `rcu_depth + 1`.
pub fn rcu_read_lock() -> ContextGuard {
    ContextGuard::apply(Delta {
        rcu_depth: 1,
        ..Delta::default()
    })
}

/// Marks a spinlock as held: `preempt + 1` and `spinlocks + 1`. Only the
/// marking; [`SpinLock`] also takes a real lock.
pub fn spin_lock() -> ContextGuard {
    ContextGuard::apply(Delta {
        preempt: 1,
        spinlocks: 1,
        ..Delta::default()
    })
}

/// Marks a spinlock taken with `spin_lock_irqsave()`: as [`spin_lock`], and
/// IRQs disabled.
pub fn spin_lock_irqsave() -> ContextGuard {
    ContextGuard::apply(Delta {
        preempt: 1,
        spinlocks: 1,
        irqs_off: true,
        ..Delta::default()
    })
}

/// Marks a spinlock taken with `spin_lock_bh()`: as [`spin_lock`], and
/// `bh_disabled + 1`.
pub fn spin_lock_bh() -> ContextGuard {
    ContextGuard::apply(Delta {
        preempt: 1,
        spinlocks: 1,
        bh_disabled: 1,
        ..Delta::default()
    })
}

/// Replaces the whole context with `ctx` (for example one read from a trace's
/// irq-info column); the drop puts back the context that was there before.
pub fn enter(ctx: ExecContext) -> ContextGuard {
    let saved = current_context();
    set_context(ctx);
    ContextGuard {
        undo: Undo::Replace(saved),
        _not_send: PhantomData,
    }
}

/// Linux's `in_atomic()` in the wide sense kmem uses: the caller may not
/// sleep ([`ExecContext::is_atomic`]). `HostPlatform::in_atomic`, on every
/// allocation's fast path. The closure answers the question itself, so no
/// `ExecContext` leaves the thread-local: returning one makes the compiler
/// check it for the access's "destroyed" marker (four more instructions).
#[inline]
pub fn in_atomic() -> bool {
    CONTEXT.with(|c| c.get().is_atomic())
}

/// Linux's `in_interrupt()`: hard IRQ, softirq (serving or BH disabled) or NMI.
#[inline]
pub fn in_interrupt() -> bool {
    current_context().in_interrupt()
}

/// Linux's `in_hardirq()`.
#[inline]
pub fn in_hardirq() -> bool {
    current_context().hardirq > 0
}

/// Linux's `in_serving_softirq()`.
#[inline]
pub fn in_serving_softirq() -> bool {
    current_context().softirq > 0
}

/// Linux's `in_nmi()`.
#[inline]
pub fn in_nmi() -> bool {
    current_context().in_nmi()
}

/// Linux's `in_task()`: process context.
#[inline]
pub fn in_task() -> bool {
    current_context().in_task()
}

/// Linux's `irqs_disabled()`.
#[inline]
pub fn irqs_disabled() -> bool {
    current_context().irqs_disabled
}

/// A lock that is really held and also marks the holder's context as a
/// spinlock holder (`preempt + 1`, `spinlocks + 1`), so kmem sees code inside
/// it as atomic, as a kernel would.
///
/// The lock underneath is a parking `parking_lot::Mutex`: a host thread can be
/// descheduled while holding it, and spinning on it would then waste a CPU.
#[derive(Default)]
pub struct SpinLock<T: ?Sized> {
    inner: Mutex<T>,
}

/// Access to a [`SpinLock`]'s data. The lock is released, and then the
/// context marking undone, when it is dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct SpinLockGuard<'a, T: ?Sized> {
    // Field order is drop order: release the lock, then leave the context
    // (as `spin_unlock` releases, then re-enables preemption).
    data: MutexGuard<'a, T>,
    _ctx: ContextGuard,
}

impl<T> SpinLock<T> {
    /// A new, unlocked lock.
    pub const fn new(value: T) -> SpinLock<T> {
        SpinLock {
            inner: Mutex::new(value),
        }
    }

    /// Consumes the lock and returns the data.
    pub fn into_inner(self) -> T {
        self.inner.into_inner()
    }
}

impl<T: ?Sized> SpinLock<T> {
    /// `spin_lock()`: marks the context, then takes the lock.
    pub fn lock(&self) -> SpinLockGuard<'_, T> {
        let ctx = spin_lock();
        SpinLockGuard {
            data: self.inner.lock(),
            _ctx: ctx,
        }
    }

    /// `spin_lock_irqsave()`: as [`SpinLock::lock`], with IRQs disabled while
    /// held.
    pub fn lock_irqsave(&self) -> SpinLockGuard<'_, T> {
        let ctx = spin_lock_irqsave();
        SpinLockGuard {
            data: self.inner.lock(),
            _ctx: ctx,
        }
    }

    /// `spin_lock_bh()`: as [`SpinLock::lock`], with bottom halves disabled
    /// while held.
    pub fn lock_bh(&self) -> SpinLockGuard<'_, T> {
        let ctx = spin_lock_bh();
        SpinLockGuard {
            data: self.inner.lock(),
            _ctx: ctx,
        }
    }

    /// `spin_trylock()`: takes the lock if it is free, marking the context
    /// only on success.
    pub fn try_lock(&self) -> Option<SpinLockGuard<'_, T>> {
        let ctx = spin_lock();
        let data = self.inner.try_lock()?;
        Some(SpinLockGuard { data, _ctx: ctx })
    }

    /// True if some thread holds the lock.
    pub fn is_locked(&self) -> bool {
        self.inner.is_locked()
    }

    /// Mutable access without locking: the borrow proves no one else holds it.
    pub fn get_mut(&mut self) -> &mut T {
        self.inner.get_mut()
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for SpinLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpinLock")
            .field("data", &&self.inner)
            .finish()
    }
}

impl<T: ?Sized> Deref for SpinLockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.data
    }
}

impl<T: ?Sized> DerefMut for SpinLockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.data
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for SpinLockGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}
