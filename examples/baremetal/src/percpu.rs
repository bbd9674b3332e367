//! Per-CPU state: the execution-context counters kmem asks about.
//!
//! This kernel runs on one CPU, so there is one record. It keeps what Linux
//! keeps in `preempt_count()` and friends:
//!
//! - `hardirq`: raised by the interrupt entry path around every IRQ handler
//!   (Linux's `irq_enter()`/`irq_exit()`);
//! - `preempt` and `spinlocks`: raised by every [`crate::sync::IrqSpinLock`]
//!   held, kmem's own locks included;
//! - the interrupt flag is read live from RFLAGS, and the nesting of
//!   [`irq_save`]/[`irq_restore`] decides when it comes back on.
//!
//! [`context`] turns them into the [`ExecContext`] that
//! [`kmem::Platform::context`] returns. The fields are atomics only to be
//! `Sync`; on one CPU with interrupts as the only concurrency, relaxed
//! loads and stores (plain `mov`s) are enough.

use crate::arch;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering::Relaxed};
use kmem::ExecContext;

struct PerCpu {
    preempt: AtomicU8,
    spinlocks: AtomicU8,
    hardirq: AtomicU8,
    /// Depth of `irq_save` nesting.
    irq_save_depth: AtomicU32,
    /// Whether interrupts were on before the outermost `irq_save`.
    irq_save_was_on: AtomicBool,
}

static CPU0: PerCpu = PerCpu {
    preempt: AtomicU8::new(0),
    spinlocks: AtomicU8::new(0),
    hardirq: AtomicU8::new(0),
    irq_save_depth: AtomicU32::new(0),
    irq_save_was_on: AtomicBool::new(false),
};

#[inline(always)]
fn this_cpu() -> &'static PerCpu {
    &CPU0
}

/// The running code's execution context.
#[inline]
pub fn context() -> ExecContext {
    let c = this_cpu();
    ExecContext {
        preempt: c.preempt.load(Relaxed),
        spinlocks: c.spinlocks.load(Relaxed),
        hardirq: c.hardirq.load(Relaxed),
        irqs_disabled: !arch::interrupts_enabled(),
        ..ExecContext::PROCESS
    }
}

/// Linux's `irq_enter()`: called by the interrupt entry path.
#[inline]
pub fn irq_enter() {
    let c = this_cpu();
    c.hardirq.store(c.hardirq.load(Relaxed) + 1, Relaxed);
}

/// Linux's `irq_exit()`.
#[inline]
pub fn irq_exit() {
    let c = this_cpu();
    c.hardirq.store(c.hardirq.load(Relaxed) - 1, Relaxed);
}

/// Counts a spinlock taken: `preempt + 1`, `spinlocks + 1`.
#[inline]
pub fn spin_acquired() {
    let c = this_cpu();
    c.preempt.store(c.preempt.load(Relaxed) + 1, Relaxed);
    c.spinlocks.store(c.spinlocks.load(Relaxed) + 1, Relaxed);
}

/// Counts a spinlock released.
#[inline]
pub fn spin_released() {
    let c = this_cpu();
    c.preempt.store(c.preempt.load(Relaxed) - 1, Relaxed);
    c.spinlocks.store(c.spinlocks.load(Relaxed) - 1, Relaxed);
}

/// Disables interrupts, nesting: only the outermost call remembers whether
/// they were on (xv6's `push_off`). Unlike a saved-flags word per lock, this
/// stays right when locks are released out of order.
#[inline]
pub fn irq_save() {
    let was_on = arch::interrupts_enabled();
    arch::cli();
    let c = this_cpu();
    let depth = c.irq_save_depth.load(Relaxed);
    if depth == 0 {
        c.irq_save_was_on.store(was_on, Relaxed);
    }
    c.irq_save_depth.store(depth + 1, Relaxed);
}

/// Undoes one [`irq_save`]; the outermost turns interrupts back on if they
/// were on before it.
#[inline]
pub fn irq_restore() {
    let c = this_cpu();
    let depth = c.irq_save_depth.load(Relaxed);
    debug_assert!(depth > 0 && !arch::interrupts_enabled());
    c.irq_save_depth.store(depth - 1, Relaxed);
    if depth == 1 && c.irq_save_was_on.load(Relaxed) {
        arch::sti();
    }
}
