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
//!
//! # Claims: exclusive CPUs
//!
//! A kernel with preemption disabled knows nothing else runs as its CPU, so
//! it can guard per-CPU data with plain loads and stores instead of atomic
//! read-modify-writes. [`claim_cpu`] gives a host thread the same standing:
//! while it holds the [`CpuClaim`] it is pinned to that CPU number and is its
//! registered owner (one owner per CPU number, one claim per thread), so
//! kmem's `Platform::cpu_exclusive` answers true for it and the slab fast
//! paths use plain stores.
//!
//! The protocol is an asymmetric Dekker lock: the owner marks and checks the
//! per-CPU state with plain stores and loads, and any other thread that must
//! touch an owned CPU's state (see [`cpu_claimed`]) first runs [`cpu_barrier`],
//! which is `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`: a full fence on
//! every running thread of the process, so the owner's stores are ordered as
//! if it had fenced itself. The owner pays nothing, the rare remote side pays
//! the barrier; that is why the first claim registers the process for
//! membarrier and a claim fails rather than exist without a working barrier.
//!
//! Claims never make sharing unsafe: a thread that runs as a claimed CPU
//! number without holding the claim (after [`set_cpu`], [`run_on_cpu`], or a
//! slot that wraps onto it) is simply not exclusive, and it stays correct by
//! taking kmem's slower shared paths (compare-and-swap plus the barrier). So
//! is the owner itself while it runs as another CPU.
//!
//! [`current_cpu_exclusive`] is on the fast path too: the thread-local that
//! holds the slot and the claimed CPU also keeps the owned CPU (the claimed
//! one while the thread runs as it), so an owner is recognised with one load
//! and one compare.

use std::cell::Cell;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};

use rustix::thread::{membarrier, MembarrierCommand};

/// Slot value meaning "not assigned yet".
const UNASSIGNED: usize = usize::MAX;

/// Claimed-CPU value meaning "this thread holds no claim". It is never below
/// any CPU count, which [`current_cpu_exclusive`] relies on.
const NO_CLAIM: usize = usize::MAX;

/// CPU numbers `0..MAX_CLAIMABLE_CPUS` can be claimed with [`claim_cpu`].
pub const MAX_CLAIMABLE_CPUS: usize = 256;

/// The next slot to hand out.
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

/// `OWNERS[cpu]` is true while some thread holds a claim on `cpu`.
static OWNERS: [AtomicBool; MAX_CLAIMABLE_CPUS] =
    [const { AtomicBool::new(false) }; MAX_CLAIMABLE_CPUS];

/// Set once the process is registered for private expedited membarrier (by
/// the first successful claim), before any owner exists.
static BARRIER_READY: AtomicBool = AtomicBool::new(false);

/// The calling thread's CPU state: all fields in one thread-local so the fast
/// paths pay for one access.
struct ThisCpu {
    /// The thread's slot, or [`UNASSIGNED`].
    slot: Cell<usize>,
    /// The CPU this thread holds a claim on, or [`NO_CLAIM`].
    claimed: Cell<usize>,
    /// `claimed` while the thread runs as it (`slot == claimed`), else
    /// [`NO_CLAIM`]: what the fast path asks, in one load. Kept by
    /// [`ThisCpu::set`], the only writer of the other two.
    owned: Cell<usize>,
}

impl ThisCpu {
    /// Sets the slot and the claim, and recomputes `owned`.
    fn set(&self, slot: usize, claimed: usize) {
        self.slot.set(slot);
        self.claimed.set(claimed);
        self.owned
            .set(if slot == claimed { claimed } else { NO_CLAIM });
    }

    /// Sets the slot, keeping the claim.
    fn set_slot(&self, slot: usize) {
        self.set(slot, self.claimed.get());
    }
}

thread_local! {
    static THIS: ThisCpu = const {
        ThisCpu {
            slot: Cell::new(UNASSIGNED),
            claimed: Cell::new(NO_CLAIM),
            owned: Cell::new(NO_CLAIM),
        }
    };
}

#[cold]
fn assign_slot() -> usize {
    let slot = NEXT_SLOT.fetch_add(1, Ordering::Relaxed);
    THIS.with(|t| t.set_slot(slot));
    slot
}

/// The calling thread's slot, assigning one on first use. Distinct threads get
/// distinct slots unless one was pinned with [`set_cpu`].
#[inline]
pub fn cpu_slot() -> usize {
    let slot = THIS.with(|t| t.slot.get());
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
///
/// A thread holding a [`CpuClaim`] that pins itself elsewhere is not exclusive
/// until it is back on its claimed CPU; dropping the claim restores the slot
/// the thread had before claiming.
pub fn set_cpu(cpu: usize) {
    assert!(cpu != UNASSIGNED, "CPU number {cpu} is reserved");
    THIS.with(|t| t.set_slot(cpu));
}

/// Runs `f` with the calling thread pinned to CPU `cpu`, then restores the
/// thread's previous slot (also when `f` panics). Calls nest.
///
/// A claim owner that runs on another CPU this way is not exclusive inside
/// `f`, and is again once `f` returns.
pub fn run_on_cpu<R>(cpu: usize, f: impl FnOnce() -> R) -> R {
    struct Restore(usize);
    impl Drop for Restore {
        fn drop(&mut self) {
            THIS.with(|t| t.set_slot(self.0));
        }
    }
    let _restore = Restore(cpu_slot());
    set_cpu(cpu);
    f()
}

/// Whether the calling thread is the exclusive owner of the CPU it runs on,
/// on a machine of `nr_cpus` CPUs: it holds a [`CpuClaim`] on CPU `c`, its
/// slot is exactly `c` (not pinned elsewhere, nor to a number that merely
/// wraps onto `c`), and `c < nr_cpus`.
///
/// One thread-local access; this is `HostPlatform::cpu_exclusive`, on every
/// allocation's fast path.
#[inline]
pub fn current_cpu_exclusive(nr_cpus: usize) -> bool {
    // NO_CLAIM is usize::MAX, never below nr_cpus.
    THIS.with(|t| t.owned.get()) < nr_cpus
}

/// The CPU the calling thread owns, whatever the machine: its claimed CPU
/// while it runs as that CPU, else `usize::MAX`. On a machine of `nr_cpus`
/// CPUs the thread is exclusive exactly when this is below `nr_cpus`
/// ([`current_cpu_exclusive`]).
#[inline]
pub fn current_owned_cpu() -> usize {
    THIS.with(|t| t.owned.get())
}

/// [`current_cpu`] and [`current_cpu_exclusive`] with one thread-local
/// access: `HostPlatform::this_cpu`, on every slab fast path.
#[inline]
pub fn current_cpu_and_exclusive(nr_cpus: usize) -> (usize, bool) {
    let owned = THIS.with(|t| t.owned.get());
    // NO_CLAIM is usize::MAX, never below nr_cpus: one compare decides the
    // owner's case, whose answer is then a constant `true`.
    if owned < nr_cpus {
        (owned, true)
    } else {
        (current_cpu(nr_cpus), false)
    }
}

/// Whether some thread currently holds a claim on CPU `cpu` (false for
/// numbers `>= MAX_CLAIMABLE_CPUS`, which cannot be claimed).
///
/// A thread that must touch `cpu`'s per-CPU state while this is true has to
/// order itself against the owner with [`cpu_barrier`].
#[inline]
pub fn cpu_claimed(cpu: usize) -> bool {
    OWNERS
        .get(cpu)
        .is_some_and(|owner| owner.load(Ordering::SeqCst))
}

/// A full memory barrier on every running thread of the process, so on every
/// claim owner, before this returns: `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`
/// once any claim has been made, a local `fence(SeqCst)` before that (with
/// no owner there is nobody else to order against).
///
/// # Panics
/// If membarrier fails although registering for it succeeded, which the
/// kernel does not do; carrying on would silently break every owner's lock.
pub fn cpu_barrier() {
    if BARRIER_READY.load(Ordering::Acquire) {
        if let Err(e) = membarrier(MembarrierCommand::PrivateExpedited) {
            panic!(
                "membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) failed after the process \
                 registered for it: {}; claimed CPUs can no longer be synchronized",
                io::Error::from(e)
            );
        }
    } else {
        fence(Ordering::SeqCst);
    }
}

/// Registers the process for private expedited membarrier, once.
fn register_barrier() -> Result<(), ClaimError> {
    if BARRIER_READY.load(Ordering::Acquire) {
        return Ok(());
    }
    // Registering again (two threads racing here) is harmless.
    membarrier(MembarrierCommand::RegisterPrivateExpedited).map_err(|e| {
        ClaimError::Membarrier {
            errno: e.raw_os_error(),
        }
    })?;
    BARRIER_READY.store(true, Ordering::SeqCst);
    Ok(())
}

/// Makes the calling thread the exclusive owner of CPU number `cpu` and pins
/// it there (as [`set_cpu`]) until the returned [`CpuClaim`] is dropped.
///
/// While the claim is held and the thread runs as `cpu`, kmem treats it like
/// kernel code with preemption disabled and takes its plain-store per-CPU fast
/// paths (see the [module documentation](self)). Threads that share the CPU
/// number keep working, on the slower shared paths.
///
/// The first claim in the process registers it for
/// `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`.
///
/// # Errors
/// [`ClaimError::OutOfRange`] if `cpu >= MAX_CLAIMABLE_CPUS`,
/// [`ClaimError::AlreadyClaimed`] if this thread already holds a claim,
/// [`ClaimError::Membarrier`] if the kernel refuses membarrier registration,
/// [`ClaimError::Taken`] if another thread owns `cpu`.
pub fn claim_cpu(cpu: usize) -> Result<CpuClaim, ClaimError> {
    if cpu >= MAX_CLAIMABLE_CPUS {
        return Err(ClaimError::OutOfRange {
            cpu,
            max: MAX_CLAIMABLE_CPUS,
        });
    }
    let held = THIS.with(|t| t.claimed.get());
    if held != NO_CLAIM {
        return Err(ClaimError::AlreadyClaimed { cpu, held });
    }
    // No owner may exist before the remote side's barrier works.
    register_barrier()?;
    if OWNERS[cpu]
        .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        return Err(ClaimError::Taken { cpu });
    }
    // Order the ownership mark before every plain per-CPU access the owner
    // makes from now on.
    fence(Ordering::SeqCst);
    let previous_slot = cpu_slot();
    THIS.with(|t| t.set(cpu, cpu));
    Ok(CpuClaim {
        cpu,
        previous_slot,
        _not_send: PhantomData,
    })
}

/// Exclusive ownership of one CPU number by the calling thread, from
/// [`claim_cpu`]. Dropping it gives the CPU up and restores the slot the
/// thread had before claiming (also any [`set_cpu`] made meanwhile is undone).
///
/// It is neither `Send` nor `Sync`: the claim belongs to the thread that made
/// it. Leaking it (`mem::forget`) keeps the CPU owned for the rest of the
/// process.
///
/// ```
/// use kmem_host::{claim_cpu, cpu_claimed, current_cpu, Machine, MachineConfig};
/// use kmem_host::kmem::platform::Platform;
///
/// let m = Machine::new(MachineConfig { ram_bytes: 16 << 20, nr_cpus: 2, ..Default::default() })
///     .unwrap();
/// let claim = claim_cpu(1).unwrap();
/// assert_eq!(claim.cpu(), 1);
/// assert_eq!(current_cpu(2), 1);
/// assert!(m.platform().cpu_exclusive());
/// assert!(cpu_claimed(1));
/// drop(claim);
/// assert!(!m.platform().cpu_exclusive());
/// assert!(!cpu_claimed(1));
/// ```
///
/// A claim cannot move to another thread:
///
/// ```compile_fail
/// let claim = kmem_host::claim_cpu(1).unwrap();
/// std::thread::spawn(move || drop(claim));
/// ```
#[must_use = "the CPU is released as soon as the claim is dropped"]
pub struct CpuClaim {
    cpu: usize,
    previous_slot: usize,
    _not_send: PhantomData<*const ()>,
}

impl CpuClaim {
    /// The claimed CPU number.
    pub fn cpu(&self) -> usize {
        self.cpu
    }
}

impl Drop for CpuClaim {
    fn drop(&mut self) {
        // Stop being exclusive first, then publish every plain per-CPU store
        // made as owner to whoever sees the CPU unowned.
        THIS.with(|t| t.set(self.previous_slot, NO_CLAIM));
        OWNERS[self.cpu].store(false, Ordering::Release);
    }
}

impl fmt::Debug for CpuClaim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpuClaim")
            .field("cpu", &self.cpu)
            .field("previous_slot", &self.previous_slot)
            .finish()
    }
}

/// Why [`claim_cpu`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimError {
    /// Another thread holds a claim on `cpu`.
    Taken {
        /// The CPU asked for.
        cpu: usize,
    },
    /// `cpu` is not below `max` ([`MAX_CLAIMABLE_CPUS`]).
    OutOfRange {
        /// The CPU asked for.
        cpu: usize,
        /// The first CPU number that cannot be claimed.
        max: usize,
    },
    /// The calling thread already holds a claim (on `held`); a thread owns at
    /// most one CPU.
    AlreadyClaimed {
        /// The CPU asked for.
        cpu: usize,
        /// The CPU the thread already owns.
        held: usize,
    },
    /// The kernel refused `membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED)`,
    /// without which owners cannot be synchronized with.
    Membarrier {
        /// The error number membarrier returned.
        errno: i32,
    },
}

impl fmt::Display for ClaimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ClaimError::Taken { cpu } => {
                write!(f, "CPU {cpu} is already claimed by another thread")
            }
            ClaimError::OutOfRange { cpu, max } => write!(
                f,
                "CPU {cpu} cannot be claimed: only CPUs 0 to {} can",
                max - 1
            ),
            ClaimError::AlreadyClaimed { cpu, held } => write!(
                f,
                "cannot claim CPU {cpu}: this thread already holds a claim on CPU {held}, \
                 and a thread can own only one CPU"
            ),
            ClaimError::Membarrier { errno } => write!(
                f,
                "cannot claim a CPU: membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) \
                 failed ({}), and claimed CPUs need it (Linux 4.14 or later)",
                io::Error::from_raw_os_error(errno)
            ),
        }
    }
}

impl std::error::Error for ClaimError {}
