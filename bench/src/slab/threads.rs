//! W4: W2 on two threads, half of every thread's frees done by the other.
//!
//! Each call spawns two scoped worker threads, pinned to two different OS
//! CPUs (taken from the process's affinity mask before the harness pins the
//! main thread) and entered into the heap as thread 0 and 1 (for kmem: kmem
//! CPUs 0 and 1). Per round, each worker:
//!
//! 1. allocates the 1000 W2 layouts;
//! 2. posts the objects at the second half of the W2 free order to its
//!    outgoing [`Mailbox`];
//! 3. frees the first half itself, in that order;
//! 4. takes the other worker's posted half from its incoming mailbox and
//!    frees it, in order.
//!
//! A mailbox holds [`DEPTH`] rounds, so a worker waits only when it is that
//! many rounds ahead of the other, or when the other's half for this round
//! is not posted yet: a worker descheduled for a moment does not stall the
//! other at once. Waiting spins briefly, then yields (which also
//! keeps the wait out of callgrind's counts under valgrind, whose threads
//! take turns). Spawning and joining cost tens of microseconds per call,
//! against measurements of about 0.3 s.

use std::cell::UnsafeCell;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};

use super::{Inputs, SharedHeap, BATCH};

/// Objects a worker hands to the other worker per round.
const HALF: usize = BATCH / 2;

/// Threads in W4.
const THREADS: usize = 2;

/// Rounds a mailbox can hold.
const DEPTH: usize = 4;

/// The note the text report prints about W4.
pub const DESCRIPTION: &str = "W4: two worker threads pinned to two OS CPUs; each round a worker allocates the 1000 W2 sizes, \
frees 500 itself and hands 500 to the other through a mailbox 4 rounds deep. \
Peers without thread safety run as their +lock variant (see above).";

/// OS CPUs the process may run on, recorded before the main thread is pinned.
static CPUS: OnceLock<Vec<usize>> = OnceLock::new();

/// Records the CPUs the workers will be pinned to; call before pinning the
/// main thread.
pub fn remember_cpus() {
    CPUS.get_or_init(|| {
        let set = sched_getaffinity(None).unwrap_or_else(|_| CpuSet::new());
        (0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect()
    });
}

/// Pins the calling thread to the `index`th remembered CPU, if there are
/// enough of them.
fn pin(index: usize) {
    if let Some(cpus) = CPUS.get() {
        if cpus.len() >= THREADS {
            let mut set = CpuSet::new();
            set.set(cpus[index % cpus.len()]);
            let _ = sched_setaffinity(None, &set);
        }
    }
}

/// Rounds of [`line_round_trip`]: about 5 ms at 45 ns a round.
const BOUNCES: u64 = 100_000;

/// Mean nanoseconds for one cache line to go from W4's first worker CPU to
/// its second and back: two threads pinned as W4's workers take turns
/// writing one counter on its own line. W4's frees of the other thread's
/// objects pay this transfer, so the figure says what the host made of
/// the two CPUs during the run (on the VM of BENCHMARKS.md: ~45 ns, or
/// ~400 ns while its vCPUs are placed far apart). None if the process
/// may run on one CPU only.
pub fn line_round_trip() -> Option<f64> {
    if CPUS.get().is_none_or(|c| c.len() < THREADS) {
        return None;
    }
    let line = Counter(AtomicU64::new(0));
    let line = &line.0;
    let start = std::sync::Barrier::new(THREADS);
    let start = &start;
    let elapsed = std::thread::scope(|s| {
        s.spawn(move || {
            pin(1);
            start.wait();
            for i in 0..BOUNCES {
                wait_until(line, 2 * i + 1);
                line.store(2 * i + 2, Ordering::Release);
            }
        });
        let timer = s.spawn(move || {
            pin(0);
            start.wait();
            let t = std::time::Instant::now();
            for i in 0..BOUNCES {
                line.store(2 * i + 1, Ordering::Release);
                wait_until(line, 2 * i + 2);
            }
            t.elapsed()
        });
        timer.join().expect("the timing thread does not panic")
    });
    Some(elapsed.as_nanos() as f64 / BOUNCES as f64)
}

/// One direction of the hand-over: [`DEPTH`] round slots, and counters of
/// rounds posted and taken.
#[repr(align(128))]
struct Mailbox {
    slots: [UnsafeCell<[usize; HALF]>; DEPTH],
    posted: Counter,
    taken: Counter,
}

/// A counter on its own cache line.
#[repr(align(128))]
struct Counter(AtomicU64);

// SAFETY: a slot is written only by the poster while `taken` shows the
// receiver is done with it, and read only by the receiver after `posted`
// (Release/Acquire) says it is filled.
unsafe impl Sync for Mailbox {}

impl Mailbox {
    fn new() -> Self {
        Mailbox {
            slots: std::array::from_fn(|_| UnsafeCell::new([0; HALF])),
            posted: Counter(AtomicU64::new(0)),
            taken: Counter(AtomicU64::new(0)),
        }
    }

    /// Waits until slot `round % DEPTH` is free, fills it, posts it.
    fn post(&self, round: u64, fill: impl FnOnce(&mut [usize; HALF])) {
        wait_until(&self.taken.0, (round + 1).saturating_sub(DEPTH as u64));
        // SAFETY: the receiver took round - DEPTH from this slot (taken >=
        // round + 1 - DEPTH) and will not read it again until posted says
        // round.
        fill(unsafe { &mut *self.slots[round as usize % DEPTH].get() });
        self.posted.0.store(round + 1, Ordering::Release);
    }

    /// Waits until round `round` is posted, hands its slot to `use_`, marks
    /// it taken.
    fn take(&self, round: u64, use_: impl FnOnce(&[usize; HALF])) {
        wait_until(&self.posted.0, round + 1);
        // SAFETY: posted (Acquire) says the slot is filled; the poster will
        // not write it again before taken says round + 1.
        use_(unsafe { &*self.slots[round as usize % DEPTH].get() });
        self.taken.0.store(round + 1, Ordering::Release);
    }
}

/// Spins, then yields, until `c >= value`.
fn wait_until(c: &AtomicU64, value: u64) {
    let mut spins = 0u32;
    while c.load(Ordering::Acquire) < value {
        if spins < 64 {
            spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

/// Runs `n` W4 pairs (n / 2000 rounds per worker pair) on `heap`.
pub fn w4<S: SharedHeap>(heap: &S, inputs: &Inputs, n: u64) {
    let rounds = n / (THREADS * BATCH) as u64;
    let boxes = [Mailbox::new(), Mailbox::new()];
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let boxes = &boxes;
            s.spawn(move || {
                pin(t);
                heap.enter_thread(t);
                worker(heap, inputs, rounds, &boxes[t], &boxes[1 - t]);
                heap.leave_thread();
            });
        }
    });
}

/// One worker's rounds; see the module comment.
#[inline(never)]
fn worker<S: SharedHeap>(heap: &S, inputs: &Inputs, rounds: u64, out: &Mailbox, inc: &Mailbox) {
    let (layouts, order) = (&inputs.sizes[..BATCH], &inputs.order2[..BATCH]);
    let (mine, theirs) = order.split_at(HALF);
    let mut held = vec![NonNull::<u8>::dangling(); BATCH];
    for round in 0..rounds {
        for (slot, &layout) in held.iter_mut().zip(layouts) {
            *slot = std::hint::black_box(heap.alloc(layout));
        }
        out.post(round, |slot| {
            for (dst, &i) in slot.iter_mut().zip(theirs) {
                *dst = held[i as usize].as_ptr() as usize;
            }
        });
        for &i in mine {
            let i = i as usize;
            // SAFETY: allocated this round with this layout; the other half
            // went to the other worker, so this one is freed once.
            unsafe { heap.free(held[i], layouts[i]) };
        }
        inc.take(round, |slot| {
            for (&p, &i) in slot.iter().zip(theirs) {
                let p = NonNull::new(p as *mut u8).expect("posted objects are not null");
                // SAFETY: the other worker allocated it this round with the
                // layout of index i (both use the same inputs) and gave it
                // away without freeing it.
                unsafe { heap.free(p, layouts[i as usize]) };
            }
        });
    }
}
