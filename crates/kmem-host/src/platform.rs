//! [`HostPlatform`]: kmem's [`Platform`] over threads and a memfd.
//!
//! Every answer comes from another module of this crate: the direct-map
//! offset from [`crate::Ram`], the CPU from [`crate::cpu`] (thread slot modulo
//! the CPU count, and whether the thread has claimed it), the execution context from [`crate::context`] (the calling
//! thread's guards). Warnings go to an in-memory log that tests read back with
//! [`HostPlatform::take_log`] or [`HostPlatform::log_contains`], and to stderr
//! when echo is on.
//!
//! A `HostPlatform` is cheap to clone; clones share the log. The page
//! allocator owns one clone and the [`crate::Machine`] keeps another, so what
//! the allocator warns about can be read through the machine.

use crate::ram::Ram;
use crate::{context, cpu};
use kmem::context::ExecContext;
use kmem::platform::Platform;
use parking_lot::Mutex;
use std::fmt;
use std::sync::Arc;

/// The hosted machine's answers to kmem's platform questions.
#[derive(Clone)]
pub struct HostPlatform {
    direct_map_offset: usize,
    nr_cpus: usize,
    echo: bool,
    log: Arc<Mutex<Vec<String>>>,
}

impl HostPlatform {
    /// A platform over `ram`'s direct map with `nr_cpus` CPUs; warnings are
    /// also printed to stderr if `echo`.
    ///
    /// # Panics
    /// If `nr_cpus` is 0.
    pub fn new(ram: &Ram, nr_cpus: usize, echo: bool) -> HostPlatform {
        assert!(nr_cpus > 0, "a machine needs at least one CPU");
        HostPlatform {
            direct_map_offset: ram.direct_map_offset(),
            nr_cpus,
            echo,
            log: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Removes and returns every warning logged so far, oldest first.
    pub fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock())
    }

    /// True if some logged warning contains `needle`.
    pub fn log_contains(&self, needle: &str) -> bool {
        self.log.lock().iter().any(|m| m.contains(needle))
    }

    /// Number of warnings logged and not yet taken.
    pub fn log_len(&self) -> usize {
        self.log.lock().len()
    }

    /// Whether warnings are echoed to stderr.
    pub fn echo(&self) -> bool {
        self.echo
    }
}

thread_local! {
    /// The thread is in direct reclaim (see `Platform::set_memalloc`).
    static MEMALLOC: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Platform for HostPlatform {
    /// A host thread can be descheduled while it holds a lock, so a parking
    /// lock beats a spinning one here: waiters sleep instead of burning the
    /// CPU the holder needs to finish. (A kernel would use an IRQ-safe
    /// spinlock instead.)
    type Lock = parking_lot::RawMutex;

    #[inline]
    fn direct_map_offset(&self) -> usize {
        self.direct_map_offset
    }

    #[inline]
    fn cpu_id(&self) -> usize {
        cpu::current_cpu(self.nr_cpus)
    }

    #[inline]
    fn nr_cpus(&self) -> usize {
        self.nr_cpus
    }

    /// True for a thread that holds a [`crate::CpuClaim`] and runs as the
    /// claimed CPU (see [`cpu::current_cpu_exclusive`]).
    #[inline]
    fn cpu_exclusive(&self) -> bool {
        cpu::current_cpu_exclusive(self.nr_cpus)
    }

    /// One thread-local access for both answers.
    #[inline]
    fn this_cpu(&self) -> (usize, bool) {
        cpu::current_cpu_and_exclusive(self.nr_cpus)
    }

    /// The claimed CPU kept beside the slot (`usize::MAX` without a claim,
    /// a number `>= nr_cpus` when claimed on a larger machine or pinned
    /// elsewhere): one thread-local load.
    #[inline]
    fn owned_cpu(&self) -> usize {
        cpu::current_owned_cpu()
    }

    #[inline]
    fn cpu_has_exclusive(&self, cpu: usize) -> bool {
        cpu::cpu_claimed(cpu)
    }

    /// `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` once any CPU has been
    /// claimed, a local fence before.
    fn cpu_barrier(&self) {
        cpu::cpu_barrier();
    }

    #[inline]
    fn context(&self) -> ExecContext {
        context::current_context()
    }

    #[inline]
    fn in_atomic(&self) -> bool {
        context::in_atomic()
    }

    /// Per thread, as Linux's `PF_MEMALLOC` is per task.
    fn set_memalloc(&self, on: bool) -> bool {
        MEMALLOC.with(|m| m.replace(on))
    }

    fn in_memalloc(&self) -> bool {
        MEMALLOC.with(|m| m.get())
    }

    /// The host thread's id (`gettid`): each thread is a task.
    fn task_id(&self) -> u32 {
        rustix::thread::gettid().as_raw_nonzero().get() as u32
    }

    fn relax(&self) {
        std::thread::yield_now();
    }

    fn warn(&self, msg: fmt::Arguments<'_>) {
        // Format before taking the lock, so a Display impl that warns again
        // cannot deadlock.
        let msg = msg.to_string();
        if self.echo {
            eprintln!("{msg}");
        }
        self.log.lock().push(msg);
    }
}

impl fmt::Debug for HostPlatform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostPlatform")
            .field(
                "direct_map_offset",
                &format_args!("{:#x}", self.direct_map_offset),
            )
            .field("nr_cpus", &self.nr_cpus)
            .field("echo", &self.echo)
            .field("logged", &self.log_len())
            .finish()
    }
}
