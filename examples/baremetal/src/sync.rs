//! Synchronisation for a one-CPU kernel with interrupts.
//!
//! - [`IrqSpinLock`]: the lock type kmem gets through `Platform::Lock`. It
//!   disables interrupts while held (GFP_ATOMIC allocations run in the timer
//!   handler; an IRQ spinning on a lock its own CPU holds would never return)
//!   and counts itself in the per-CPU context, as Linux's
//!   `spin_lock_irqsave()` raises `preempt_count()`.
//! - [`SpinLock`]: the same lock around data, through `lock_api`.
//! - [`Once`] and [`BootCell`]: statics filled in once at boot.

use crate::percpu;
use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// An IRQ-saving spinlock.
pub struct IrqSpinLock {
    locked: AtomicBool,
}

/// Spins before the lock declares a deadlock: on one CPU with interrupts
/// off, a lock that is held can never be released while we wait.
const DEADLOCK_SPINS: u64 = 1 << 28;

// SAFETY: `lock` returns only once `locked` went false -> true with Acquire,
// and `unlock` stores false with Release, so at most one holder at a time.
unsafe impl lock_api::RawMutex for IrqSpinLock {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: IrqSpinLock = IrqSpinLock {
        locked: AtomicBool::new(false),
    };
    type GuardMarker = lock_api::GuardNoSend;

    fn lock(&self) {
        percpu::irq_save();
        let mut spins = 0u64;
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            spins += 1;
            if spins == DEADLOCK_SPINS {
                panic!(
                    "IrqSpinLock at {:p}: deadlock (held, and this is the only CPU)",
                    self
                );
            }
            core::hint::spin_loop();
        }
        percpu::spin_acquired();
    }

    fn try_lock(&self) -> bool {
        percpu::irq_save();
        if self
            .locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            percpu::spin_acquired();
            true
        } else {
            percpu::irq_restore();
            false
        }
    }

    unsafe fn unlock(&self) {
        percpu::spin_released();
        self.locked.store(false, Ordering::Release);
        percpu::irq_restore();
    }

    fn is_locked(&self) -> bool {
        self.locked.load(Ordering::Relaxed)
    }
}

/// A spinlock around data.
pub type SpinLock<T> = lock_api::Mutex<IrqSpinLock, T>;

/// A value set once (at boot, before interrupts are on) and read after.
pub struct Once<T> {
    state: AtomicU8,
    value: UnsafeCell<MaybeUninit<T>>,
}

// SAFETY: the value is written once, before `state` publishes it with
// Release; readers see it only after an Acquire load of `state`.
unsafe impl<T: Send + Sync> Sync for Once<T> {}

impl<T> Once<T> {
    /// An empty cell.
    pub const fn new() -> Self {
        Once {
            state: AtomicU8::new(0),
            value: UnsafeCell::new(MaybeUninit::uninit()),
        }
    }

    /// Stores the value; panics if called twice.
    pub fn set(&self, v: T) -> &T {
        assert!(
            self.state
                .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                .is_ok(),
            "Once::set called twice"
        );
        // SAFETY: state 1 gives this call exclusive access until it stores 2.
        unsafe { (*self.value.get()).write(v) };
        self.state.store(2, Ordering::Release);
        self.get().unwrap()
    }

    /// The value, once set.
    pub fn get(&self) -> Option<&T> {
        if self.state.load(Ordering::Acquire) == 2 {
            // SAFETY: state 2 means the value is initialised and never
            // written again.
            Some(unsafe { (*self.value.get()).assume_init_ref() })
        } else {
            None
        }
    }
}

/// A static the CPU itself reads (descriptor tables, stacks, page tables):
/// the kernel writes it during single-threaded boot through a raw pointer.
#[repr(transparent)]
pub struct BootCell<T>(UnsafeCell<T>);

// SAFETY: written only during boot, before interrupts are enabled, by the
// only CPU.
unsafe impl<T> Sync for BootCell<T> {}

impl<T> BootCell<T> {
    /// Wraps a value.
    pub const fn new(v: T) -> Self {
        BootCell(UnsafeCell::new(v))
    }
    /// A raw pointer to the value.
    pub const fn get(&self) -> *mut T {
        self.0.get()
    }
}
