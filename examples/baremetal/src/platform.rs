//! kmem's [`Platform`] for this kernel: what kmem needs from a kernel, in
//! one small impl.
//!
//! | kmem asks | this kernel answers |
//! |---|---|
//! | `direct_map_offset` | [`DIRECT_MAP_BASE`]: all RAM mapped with 2 MiB pages ([`crate::paging`]) |
//! | `cpu_id`, `nr_cpus` | 0 and 1: one CPU |
//! | `context` | the per-CPU counters the IRQ entry and spinlocks keep, plus RFLAGS.IF ([`crate::percpu`]) |
//! | `Lock` | [`IrqSpinLock`]: disables interrupts while held |
//! | `warn` | the serial console |
//! | `relax` | the default (`pause`) |

use crate::paging::DIRECT_MAP_BASE;
use crate::percpu;
use crate::sync::IrqSpinLock;
use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use kmem::{ExecContext, Platform};

/// The kernel's platform: a zero-sized handle, all state is in statics.
#[derive(Clone, Copy, Debug, Default)]
pub struct BootPlatform;

static WARNINGS: AtomicUsize = AtomicUsize::new(0);

/// Warnings kmem printed so far.
pub fn warnings() -> usize {
    WARNINGS.load(Relaxed)
}

impl Platform for BootPlatform {
    type Lock = IrqSpinLock;

    fn direct_map_offset(&self) -> usize {
        DIRECT_MAP_BASE
    }

    fn cpu_id(&self) -> usize {
        0
    }

    fn nr_cpus(&self) -> usize {
        1
    }

    /// One CPU and no preemption: kernel code is the only thing that runs
    /// as CPU 0, interrupts nest inside it and finish first. kmem's per-CPU
    /// state is then guarded by plain stores (an interrupt that finds it
    /// busy takes the node-locked path).
    fn cpu_exclusive(&self) -> bool {
        true
    }

    fn cpu_has_exclusive(&self, _cpu: usize) -> bool {
        true
    }

    fn context(&self) -> ExecContext {
        percpu::context()
    }

    fn warn(&self, msg: fmt::Arguments<'_>) {
        WARNINGS.fetch_add(1, Relaxed);
        crate::kprintln!("{}", msg);
    }
}
