//! The `pages` suite: kmem's page allocator against peer frame allocators.
//!
//! Every allocator is driven through [`FrameAllocator`], a two-call interface
//! (allocate 2^order naturally aligned frames, free them), by the same generic
//! workload functions, monomorphised per allocator so no dynamic dispatch sits in
//! the timed loop. Workloads:
//!
//! - `order0-pair`: allocate one order-0 frame and free it at once, repeated;
//! - `order3-pair`: the same with order 3 (8 contiguous, 8-aligned frames);
//! - `order0-batch`: allocate 512 order-0 frames, then free them LIFO; the time
//!   is reported per alloc+free pair.
//!
//! Results pass through `black_box` so nothing is optimised away, and the order is
//! laundered through `black_box` once per call so no allocator gets an
//! order-specialised copy of its code. kmem runs on a hosted machine (1 GiB, 2
//! CPUs, the benchmark thread is CPU 0); the peers only manage frame numbers,
//! 262144 frames (1 GiB) from frame 0x100000 (4 GiB). Before timing, each
//! allocator is checked: order-3 blocks naturally aligned, a 512-frame batch
//! without duplicates.

mod kmem;
mod peers;

use std::hint::black_box;

use crate::harness::{self, Contender, RunOpts, TextReport, Workload};

/// First frame the peers manage (4 GiB).
pub const PEER_BASE_PFN: usize = 0x10_0000;
/// Number of frames the peers manage (1 GiB, the size of kmem's machine).
pub const PEER_FRAMES: usize = 0x4_0000;
/// Frames held at once by `order0-batch`.
pub const BATCH: usize = 512;

/// Help text for `kmem-bench pages --help`.
pub const ABOUT: &str = "\
Page/frame allocators, kmem against peers, on the same workloads in one run.

Workloads (one op = one allocation plus its free):
  order0-pair   allocate one order-0 frame (4 KiB) and free it at once, repeated;
                the hot path: kmem serves it from the per-CPU page list.
  order3-pair   the same with order 3: 8 contiguous frames, naturally aligned.
  order0-batch  allocate 512 order-0 frames, then free all of them, last
                allocated first; reported per alloc+free pair. Exercises refills
                and drains of per-CPU caches and buddy splitting/merging.

Allocators: kmem (hosted machine: 1 GiB in the PC layout, i.e. 512 MiB of
DMA/DMA32 below 4 GiB and a 512 MiB Normal zone from frame 0x100000; 2 CPUs, the
benchmark thread claims kmem's CPU 0 while timing, as a kernel with
preemption off owns its CPU; GFP_KERNEL); buddy_system_allocator's
FrameAllocator, plain and behind its spin lock (+lock); bitmap-allocator's
BitAlloc1M; frame-alloc's SummaryBuddyAllocator, plain and under its per-CPU
DepotAllocator (+depot). Each peer manages 262144 frames (1 GiB) from frame
0x100000; they hand out numbers only, nothing is touched. The OS thread is
pinned to the CPU it starts on.

Reading the numbers: ns/op is the median over --runs of elapsed time divided by
ops; lower is faster. spread is (slowest - fastest run) / median: if it is more
than a few percent, the machine was noisy, rerun. 'vs kmem' is the allocator's
ns/op divided by kmem's: 2.00x means twice as slow as kmem, 0.50x twice as fast.
Peers that take &mut self do no locking; kmem is a thread-safe, per-CPU
allocator, which is what the +lock and +depot rows are there to compare to.
--json prints the same medians, rounded to 0.01 ns, one object per line.";

/// The workloads, in report order; `FrameContender::run` indexes into this.
pub const WORKLOADS: [Workload; 3] = [
    Workload {
        name: "order0-pair",
        what: "allocate one order-0 frame, free it at once",
        quantum: 1,
    },
    Workload {
        name: "order3-pair",
        what: "allocate one order-3 block (8 frames, aligned), free it at once",
        quantum: 1,
    },
    Workload {
        name: "order0-batch",
        what: "allocate 512 order-0 frames, then free them LIFO (per pair)",
        quantum: BATCH as u64,
    },
];

/// `kmem-bench pages` options.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub run: RunOpts,
}

/// What every contender in this suite implements.
pub trait FrameAllocator {
    /// Name in reports.
    const NAME: &'static str;
    /// Handle of an allocated block, as the allocator returns it.
    type Frame: Copy;
    /// Allocate 2^order contiguous frames; panics if the allocator has none.
    fn alloc(&mut self, order: u32) -> Self::Frame;
    /// Free a block returned by `alloc` with the same order.
    fn free(&mut self, frame: Self::Frame, order: u32);
    /// The block's first frame number, for the pre-flight checks.
    fn pfn(&self, frame: Self::Frame) -> u64;
    /// Called on the timing thread before a run (kmem claims its CPU here).
    fn enter(&mut self) {}
    /// Called on the timing thread after a run.
    fn leave(&mut self) {}
}

/// An allocator plus the scratch space its workloads need.
struct FrameContender<A: FrameAllocator> {
    alloc: A,
    held: Vec<A::Frame>,
}

impl<A: FrameAllocator> FrameContender<A> {
    fn new(alloc: A) -> Result<Self, String> {
        let mut c = FrameContender {
            alloc,
            held: Vec::with_capacity(BATCH),
        };
        c.check()?;
        Ok(c)
    }

    /// Refuse to time an allocator that hands out wrong blocks.
    fn check(&mut self) -> Result<(), String> {
        for _ in 0..4 {
            let f = self.alloc.alloc(3);
            let pfn = self.alloc.pfn(f);
            self.held.push(f);
            if !pfn.is_multiple_of(8) {
                return Err(format!("{}: order-3 block at pfn {pfn:#x}", A::NAME));
            }
        }
        while let Some(f) = self.held.pop() {
            self.alloc.free(f, 3);
        }
        let mut seen = Vec::with_capacity(BATCH);
        for _ in 0..BATCH {
            let f = self.alloc.alloc(0);
            seen.push(self.alloc.pfn(f));
            self.held.push(f);
        }
        while let Some(f) = self.held.pop() {
            self.alloc.free(f, 0);
        }
        seen.sort_unstable();
        if let Some(w) = seen.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("{}: pfn {:#x} handed out twice", A::NAME, w[0]));
        }
        Ok(())
    }
}

impl<A: FrameAllocator> Contender for FrameContender<A> {
    fn name(&self) -> &'static str {
        A::NAME
    }

    fn run(&mut self, workload: usize, n: u64) {
        self.alloc.enter();
        match workload {
            0 => pairs(&mut self.alloc, 0, n),
            1 => pairs(&mut self.alloc, 3, n),
            2 => batches(&mut self.alloc, &mut self.held, n),
            _ => unreachable!("pages has {} workloads", WORKLOADS.len()),
        }
        self.alloc.leave();
    }
}

/// `n` times: allocate a block of `order`, free it.
#[inline(never)]
fn pairs<A: FrameAllocator>(a: &mut A, order: u32, n: u64) {
    let order = black_box(order);
    for _ in 0..n {
        let f = black_box(a.alloc(order));
        a.free(f, order);
    }
}

/// `n / BATCH` times: allocate `BATCH` order-0 frames, free them LIFO.
#[inline(never)]
fn batches<A: FrameAllocator>(a: &mut A, held: &mut Vec<A::Frame>, n: u64) {
    let order = black_box(0);
    for _ in 0..n / BATCH as u64 {
        for _ in 0..BATCH {
            held.push(black_box(a.alloc(order)));
        }
        while let Some(f) = held.pop() {
            a.free(f, order);
        }
    }
}

fn contender<A: FrameAllocator + 'static>(a: A) -> Result<Box<dyn Contender>, String> {
    Ok(Box::new(FrameContender::new(a)?))
}

/// kmem and every peer, by name; each is built (its pool set up and
/// checked) only if selected: the two frame-alloc pools take 1 GiB each.
fn contenders() -> Vec<harness::Factory> {
    fn f<A: FrameAllocator + 'static>(
        build: fn() -> Result<Box<dyn Contender>, String>,
    ) -> harness::Factory {
        (A::NAME, build)
    }
    vec![
        f::<kmem::Kmem>(|| contender(kmem::Kmem::new()?)),
        f::<peers::Buddy>(|| contender(peers::Buddy::new())),
        f::<peers::LockedBuddy>(|| contender(peers::LockedBuddy::new())),
        f::<peers::Bitmap>(|| contender(peers::Bitmap::new())),
        f::<peers::SummaryBuddy>(|| contender(peers::SummaryBuddy::new()?)),
        f::<peers::Depot>(|| contender(peers::Depot::new()?)),
    ]
}

/// Run the suite and print its report.
pub fn run(args: &Args) -> Result<(), String> {
    let pinned = harness::pin_thread();
    let mut contenders = harness::build_selected(contenders(), &args.run.only)?;
    let cells = harness::measure(&WORKLOADS, &mut contenders, &args.run);
    drop(contenders);
    if args.run.json {
        harness::print_json("pages", &WORKLOADS, &cells);
    } else {
        let mut notes = vec![
            String::new(),
            "memory: kmem has a 1 GiB machine (PC layout: 512 MiB in DMA/DMA32 below 4 GiB, \
             512 MiB Normal from frame 0x100000);"
                .to_string(),
            "        each peer manages 262144 frame numbers (1 GiB) from frame 0x100000."
                .to_string(),
            String::new(),
            "allocators:".to_string(),
        ];
        notes.push(format!("  {}", kmem::DESCRIPTION));
        notes.extend(peers::DESCRIPTIONS.iter().map(|d| format!("  {d}")));
        let report = TextReport {
            suite: "pages",
            unit: "one alloc+free pair",
            baseline: kmem::Kmem::NAME,
            notes: &notes,
            pinned,
        };
        harness::print_text(&report, &WORKLOADS, &cells, &args.run);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole suite, briefly: every contender passes its checks and runs
    /// every workload.
    #[test]
    fn every_contender_runs_every_workload() {
        let mut cs = harness::build_selected(contenders(), &[]).unwrap();
        let opts = RunOpts {
            json: true,
            iters: Some(2 * BATCH as u64),
            runs: 1,
            only: vec![],
        };
        let cells = harness::measure(&WORKLOADS, &mut cs, &opts);
        assert_eq!(cells.len(), WORKLOADS.len() * cs.len());
        assert!(cells
            .iter()
            .all(|c| c.samples.len() == 1 && c.median() > 0.0));
    }
}
