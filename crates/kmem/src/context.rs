//! Execution context: who is running, and may it sleep?
//!
//! Linux folds the context into `preempt_count()` (preemption depth, softirq,
//! hardirq and NMI nesting) plus `irqs_disabled()` and the RCU read-side depth.
//! [`ExecContext`] holds the same facts as plain fields. The platform reports the
//! current context ([`crate::Platform::context`]); every allocation entry point
//! checks it once: a blocking GFP mask (one with `__GFP_DIRECT_RECLAIM`) in atomic
//! context is Linux's "BUG: sleeping function called from invalid context", and
//! any allocation in NMI context is refused outright.
//!
//! What happens on a violation is configurable ([`ContextPolicy`]): fail the
//! allocation with [`crate::AllocError::SleepInAtomic`], carry on as Linux does
//! (report, then allocate without sleeping), or panic.

use core::fmt;
use core::panic::Location;

/// The execution context of a CPU at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C, align(8))]
pub struct ExecContext {
    /// `preempt_disable()` depth, including one per spinlock held.
    pub preempt: u8,
    /// Spinlocks held (each also counts in `preempt`).
    pub spinlocks: u8,
    /// Softirq nesting: serving a softirq (`in_serving_softirq`).
    pub softirq: u8,
    /// Bottom halves disabled (`local_bh_disable`) depth.
    pub bh_disabled: u8,
    /// Hard IRQ nesting.
    pub hardirq: u8,
    /// NMI nesting.
    pub nmi: u8,
    /// Local interrupts disabled.
    pub irqs_disabled: bool,
    /// RCU read-side critical section depth.
    pub rcu_depth: u8,
}

/// The coarse kind of context, as a person would name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContextKind {
    /// Process context (a system call, a kernel thread): may sleep unless
    /// something below disabled preemption.
    Process,
    /// Serving a softirq.
    SoftIrq,
    /// In a hard interrupt handler.
    HardIrq,
    /// In a non-maskable interrupt.
    Nmi,
}

impl ExecContext {
    /// Process context with nothing disabled: a system call.
    pub const PROCESS: ExecContext = ExecContext {
        preempt: 0,
        spinlocks: 0,
        softirq: 0,
        bh_disabled: 0,
        hardirq: 0,
        nmi: 0,
        irqs_disabled: false,
        rcu_depth: 0,
    };

    /// The coarse kind of this context.
    pub const fn kind(&self) -> ContextKind {
        if self.nmi > 0 {
            ContextKind::Nmi
        } else if self.hardirq > 0 {
            ContextKind::HardIrq
        } else if self.softirq > 0 {
            ContextKind::SoftIrq
        } else {
            ContextKind::Process
        }
    }

    /// Linux's `in_task()`: process context.
    pub const fn in_task(&self) -> bool {
        self.nmi == 0 && self.hardirq == 0 && self.softirq == 0
    }

    /// Linux's `in_nmi()`.
    pub const fn in_nmi(&self) -> bool {
        self.nmi > 0
    }

    /// Linux's `in_interrupt()`: hard IRQ, soft IRQ (serving or BH disabled) or NMI.
    pub const fn in_interrupt(&self) -> bool {
        self.nmi > 0 || self.hardirq > 0 || self.softirq > 0 || self.bh_disabled > 0
    }

    /// True if the code may not sleep: any interrupt context, preemption or
    /// bottom halves disabled, a spinlock held, IRQs off, or inside an RCU
    /// read-side section.
    #[inline(always)]
    pub const fn is_atomic(&self) -> bool {
        // Every field is zero in plain process context: one 8-byte test.
        u64::from_ne_bytes([
            self.preempt,
            self.spinlocks,
            self.softirq,
            self.bh_disabled,
            self.hardirq,
            self.nmi,
            self.irqs_disabled as u8,
            self.rcu_depth,
        ]) != 0
    }

    /// A `preempt_count()`-style packed value, as Linux prints it: preempt
    /// depth in bits 0-7, softirq in 8-15 (a serving softirq counts 0x100,
    /// each BH-disable 0x200), hardirq in 16-19, NMI in 20-23.
    pub const fn preempt_count(&self) -> u32 {
        (self.preempt as u32)
            | ((self.softirq as u32) << 8)
            | ((self.bh_disabled as u32) << 9)
            | ((self.hardirq as u32 & 0xf) << 16)
            | ((self.nmi as u32 & 0xf) << 20)
    }

    /// Writes the context in words, e.g. `hard IRQ, IRQs disabled`.
    pub fn describe(&self, f: &mut dyn fmt::Write) -> fmt::Result {
        let mut sep = "";
        let mut part = |f: &mut dyn fmt::Write, s: fmt::Arguments<'_>| -> fmt::Result {
            f.write_str(sep)?;
            sep = ", ";
            f.write_fmt(s)
        };
        match self.kind() {
            ContextKind::Nmi => part(f, format_args!("NMI"))?,
            ContextKind::HardIrq => part(f, format_args!("hard IRQ"))?,
            ContextKind::SoftIrq => part(f, format_args!("softirq"))?,
            ContextKind::Process => part(f, format_args!("process context"))?,
        }
        if self.irqs_disabled {
            part(f, format_args!("IRQs disabled"))?;
        }
        if self.bh_disabled > 0 {
            part(f, format_args!("BH disabled"))?;
        }
        if self.spinlocks > 0 {
            part(f, format_args!("{} spinlock(s) held", self.spinlocks))?;
        }
        let plain_preempt = self.preempt.saturating_sub(self.spinlocks);
        if plain_preempt > 0 {
            part(
                f,
                format_args!("preemption disabled (depth {plain_preempt})"),
            )?;
        }
        if self.rcu_depth > 0 {
            part(f, format_args!("RCU read-side depth {}", self.rcu_depth))?;
        }
        Ok(())
    }
}

impl fmt::Display for ExecContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.describe(f)
    }
}

/// What to do when a blocking allocation is made in atomic context.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ContextPolicy {
    /// Report it, count it, and fail the allocation with
    /// [`crate::AllocError::SleepInAtomic`]. The default: a bug should not pass.
    #[default]
    Fail,
    /// Report it, count it, and go on as Linux does, but without sleeping
    /// (the allocation is attempted as if it were non-blocking). Trace replay
    /// uses this, since Linux went on.
    Warn,
    /// Report it and panic.
    Panic,
}

/// A blocking allocation attempted in atomic context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContextViolation {
    /// The context it happened in.
    pub context: ExecContext,
    /// The CPU it happened on.
    pub cpu: usize,
    /// The caller that asked for the allocation.
    pub caller: &'static Location<'static>,
}

impl fmt::Display for ContextViolation {
    /// Reads like Linux's `__might_resched` report.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.context;
        writeln!(
            f,
            "BUG: sleeping function called from invalid context at {}:{}",
            self.caller.file(),
            self.caller.line()
        )?;
        writeln!(
            f,
            "in_atomic(): {}, irqs_disabled(): {}, non_block: 0, cpu: {}",
            (c.preempt_count() != 0) as u8,
            c.irqs_disabled as u8,
            self.cpu
        )?;
        writeln!(f, "preempt_count: {:x}, expected: 0", c.preempt_count())?;
        writeln!(f, "RCU nest depth: {}, expected: 0", c.rcu_depth)?;
        write!(f, "context: ")?;
        c.describe(f)?;
        write!(f, " (a blocking GFP mask such as GFP_KERNEL may sleep in reclaim; use GFP_ATOMIC or GFP_NOWAIT here)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_context_may_sleep() {
        let c = ExecContext::PROCESS;
        assert!(!c.is_atomic());
        assert!(c.in_task());
        assert_eq!(c.kind(), ContextKind::Process);
    }

    #[test]
    fn every_atomic_reason_is_atomic() {
        let base = ExecContext::PROCESS;
        let cases = [
            ExecContext { preempt: 1, ..base },
            ExecContext {
                preempt: 1,
                spinlocks: 1,
                ..base
            },
            ExecContext { softirq: 1, ..base },
            ExecContext {
                bh_disabled: 1,
                ..base
            },
            ExecContext { hardirq: 1, ..base },
            ExecContext { nmi: 1, ..base },
            ExecContext {
                irqs_disabled: true,
                ..base
            },
            ExecContext {
                rcu_depth: 1,
                ..base
            },
        ];
        for c in cases {
            assert!(c.is_atomic(), "{c:?}");
        }
    }

    #[test]
    fn kind_prefers_the_innermost_interrupt() {
        let c = ExecContext {
            softirq: 1,
            hardirq: 1,
            nmi: 1,
            ..ExecContext::PROCESS
        };
        assert_eq!(c.kind(), ContextKind::Nmi);
        let c = ExecContext {
            softirq: 1,
            hardirq: 1,
            ..ExecContext::PROCESS
        };
        assert_eq!(c.kind(), ContextKind::HardIrq);
        assert_eq!(c.preempt_count(), 0x10100);
    }
}
