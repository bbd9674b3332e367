//! The `slab` suite: kmem's kmalloc/kfree against peer heap allocators.
//!
//! Every allocator is driven through [`Heap`] (single thread, `&mut self`) or
//! [`SharedHeap`] (`&self`, thread-safe) by the same generic workload
//! functions, monomorphised per allocator so no dynamic dispatch sits in the
//! timed loop. One op is one allocation plus its free; workloads run in
//! batches of [`BATCH`] objects:
//!
//! - `W1`: allocate 1000 x 64 B, free them last-in first-out;
//! - `W2`: allocate 1000 objects of random sizes in 8..=4096 B, free them in a
//!   random order (sizes and order fixed by a seeded RNG, the same for all);
//! - `W3`: allocate 1000 x 4 KiB aligned to 4 KiB, free them in a random order;
//! - `W4`: W2 on two threads at once, each thread handing half of its objects
//!   to the other thread to free ([`threads`]); reported as wall-clock time
//!   per pair over both threads, and as throughput relative to W2 on one.
//!
//! W1-W3 run every contender: the peers plain (`&mut self`, no lock) and under
//! a lock (`+lock`, the way a shared kernel heap uses them), kmem (always
//! thread-safe, per-CPU; `kmem` is the baseline, `kmem-nomark` the same
//! without the allocated mark and `kmem-unhardened` also without free-pointer
//! encoding, to price each) and glibc. W4 runs only the
//! thread-safe ones.
//! Objects are not touched by the workload (the definition);
//! allocators that keep metadata in free objects touch them themselves.
//! `--touch` runs the same workloads on blocks that are used ([`touch`]).
//! Before timing, each contender is checked: every object of a W2 and a W3
//! batch is aligned and disjoint from the others, and a byte pattern written
//! over it survives the batch.
//!
//! `--callgrind` reruns each (allocator, workload) under valgrind's callgrind
//! and reports instructions per pair ([`callgrind`]); `--callgrind-one` is
//! the untimed body it runs.

mod callgrind;
mod kmem;
mod peers;
mod threads;
mod touch;

use std::alloc::Layout;
use std::hint::black_box;
use std::ptr::NonNull;
use std::sync::LazyLock;

use crate::harness::{self, Cell, Contender, RunOpts, TextReport, Workload};

/// Objects held at once by one thread in every workload.
pub const BATCH: usize = 1000;
/// Object size of W1.
pub const W1_SIZE: usize = 64;
/// Size range of W2 and W4 (inclusive).
pub const W2_MIN: usize = 8;
pub const W2_MAX: usize = 4096;
/// Size and alignment of W3.
pub const W3_SIZE: usize = 4096;
/// Arena given to each peer that takes one.
pub const ARENA_BYTES: usize = 64 << 20;
/// Alignment asked for in W1, W2 and W4 (what a `Box<u64>` asks for; Linux's
/// ARCH_KMALLOC_MINALIGN).
pub const SMALL_ALIGN: usize = 8;

/// Goals of the issue, for the summary: ns per pair for W1-W3, speedup for W4.
const GOALS: [(&str, f64); 4] = [("W1", 4.0), ("W2", 15.0), ("W3", 10.0), ("W4", 1.8)];

/// Help text for `kmem-bench slab --help`.
pub const ABOUT: &str = "\
Small-object heaps, kmem's kmalloc/kfree against peers, same workloads, one run.

Workloads (one op = one allocation plus its free, batches of 1000 objects):
  W1  allocate 1000 x 64 B, then free them last allocated first.
  W2  allocate 1000 objects of random sizes 8..=4096 B, then free them in a
      random order (seeded: the same sizes and order for every allocator).
  W3  allocate 1000 x 4 KiB aligned to 4 KiB, free them in a random order.
  W4  W2 on two threads at once (kmem CPUs 0 and 1, pinned to two OS CPUs);
      each thread gives half of its objects to the other thread to free.
      ns/op is wall time per pair over both threads; the summary divides the
      allocator's W2 ns/op by it (throughput on 2 threads vs 1; goal 1.8x).

Allocators: kmem (hosted machine, 1 GiB, 2 CPUs; SlabAllocator kmalloc/kfree
with GFP_KERNEL; the baseline of every \"vs kmem\" column and of the goals);
kmem-nomark (the same with SlabConfig::double_free_mark = false: Linux's
CONFIG_SLAB_FREELIST_HARDENED exactly, encoded free pointers but no allocated
mark in the object, so only a double free of the sheaf's (or free list's)
top object is caught; the row prices kmem's mark), kmem-unhardened (also
SlabConfig::freelist_hardened = false: plain free pointers; the row prices the
encoding), kmem-unclaimed (kmem's configuration on threads that claim no CPU:
the shared paths, a compare-and-swap per operation, as a GlobalAlloc user's
unpinned threads); talc, buddy_system_allocator, linked_list_allocator, rlsf,
slabmalloc, each on its own 64 MiB arena, plain (&mut, no lock) and under a
lock (+lock, the crate's own locked type where it has one); glibc malloc/free.
W4 runs the thread-safe ones only: the kmem rows, the +lock rows and glibc.
`--only loop-only` adds the harness itself: the same loops over a fake heap
that hands out one fixed block and frees nothing. Its W4 row is what handing
500 pointers a round to the other thread costs on those two CPUs, and its W4
ratio how far the harness alone scales there.

--touch uses every block: its first word is written right after allocation and
checked right before the free, as code using the memory would (in W4 the
freeing thread reads what the other thread wrote). The issue's workloads leave
blocks untouched, which favours allocators that never write into them; the
goals are judged without --touch.

--callgrind runs every (allocator, workload) under valgrind --tool=callgrind
twice, with two pair counts, and prints the difference in instructions
divided by the difference in pairs: instructions per pair, setup excluded.
--json prints one object per line: {suite, workload, allocator, ns_per_op}
(with --callgrind: {suite, workload, allocator, ir_per_op}).";

/// The workloads, in report order.
pub const WORKLOADS: [Workload; 4] = [
    Workload {
        name: "W1",
        what: "allocate 1000 x 64 B, free them LIFO (per pair)",
        quantum: BATCH as u64,
    },
    Workload {
        name: "W2",
        what: "allocate 1000 x random 8..=4096 B, free them in random order (per pair)",
        quantum: BATCH as u64,
    },
    Workload {
        name: "W3",
        what: "allocate 1000 x 4 KiB aligned to 4 KiB, free them in random order (per pair)",
        quantum: BATCH as u64,
    },
    Workload {
        name: "W4",
        what: "W2 on 2 threads, half of each thread's frees done by the other (wall ns per pair, both threads)",
        quantum: 2 * BATCH as u64,
    },
];

/// Index of W4 in [`WORKLOADS`]; the single-thread workloads come before it.
const W4: usize = 3;

/// `kmem-bench slab` options.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub run: RunOpts,

    /// Instead of timing, run each allocator and workload under
    /// `valgrind --tool=callgrind` and print instructions per pair.
    #[arg(long, conflicts_with = "callgrind_one")]
    pub callgrind: bool,

    /// With --callgrind: only these workloads (repeatable), e.g. `--workload W1`.
    #[arg(long, value_name = "W", requires = "callgrind")]
    pub workload: Vec<String>,

    /// Untimed: build ALLOCATOR, warm it up on WORKLOAD, then run --pairs
    /// pairs of WORKLOAD and exit (what --callgrind runs under valgrind).
    #[arg(long, num_args = 2, value_names = ["ALLOCATOR", "WORKLOAD"])]
    pub callgrind_one: Option<Vec<String>>,

    /// Pairs run by --callgrind-one after its warm-up (rounded up to the
    /// workload's batch).
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub pairs: u64,

    /// Use every block: write its first word after allocation, check it
    /// before the free (timing only; see --help).
    #[arg(long, conflicts_with_all = ["callgrind", "callgrind_one"])]
    pub touch: bool,
}

/// A heap used from one thread. `alloc` panics if the heap is exhausted.
pub trait Heap {
    /// Name in reports.
    fn name(&self) -> &'static str;
    /// Allocate a block for `layout` (size > 0).
    fn alloc(&mut self, layout: Layout) -> NonNull<u8>;
    /// Free a block returned by `alloc` with the same layout.
    ///
    /// # Safety
    /// `p` came from `alloc(layout)` on this heap and is not freed yet.
    unsafe fn free(&mut self, p: NonNull<u8>, layout: Layout);
    /// Called on the timing thread before a run (kmem claims its CPU here).
    fn enter(&mut self) {}
    /// Called on the timing thread after a run.
    fn leave(&mut self) {}
}

/// A heap used from several threads at once.
pub trait SharedHeap: Sync {
    /// Name in reports.
    fn name(&self) -> &'static str;
    /// Called once on each worker thread before it allocates (kmem picks the
    /// thread's CPU here).
    fn enter_thread(&self, _index: usize) {}
    /// Called once on each worker thread when it is done.
    fn leave_thread(&self) {}
    /// Allocate a block for `layout` (size > 0).
    fn alloc(&self, layout: Layout) -> NonNull<u8>;
    /// Free a block returned by `alloc` with the same layout, from any thread.
    ///
    /// # Safety
    /// `p` came from `alloc(layout)` on this heap and is not freed yet.
    unsafe fn free(&self, p: NonNull<u8>, layout: Layout);
}

/// A thread-safe heap used from one thread: the `+lock` rows of W1-W3.
pub struct Single<S>(pub S);

impl<S: SharedHeap> Heap for Single<S> {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    #[inline]
    fn alloc(&mut self, layout: Layout) -> NonNull<u8> {
        self.0.alloc(layout)
    }
    #[inline]
    unsafe fn free(&mut self, p: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { self.0.free(p, layout) }
    }
    fn enter(&mut self) {
        self.0.enter_thread(0);
    }
    fn leave(&mut self) {
        self.0.leave_thread();
    }
}

/// The fixed pseudo-random inputs, identical for every allocator and run.
pub struct Inputs {
    /// W2/W4 layouts, in allocation order.
    pub sizes: Vec<Layout>,
    /// W2/W4 free order (a permutation of 0..BATCH).
    pub order2: Vec<u16>,
    /// W3 free order.
    pub order3: Vec<u16>,
}

/// splitmix64: small, fast, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (the modulo bias is far below anything measured).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn permutation(&mut self, n: usize) -> Vec<u16> {
        let mut v: Vec<u16> = (0..n as u16).collect();
        for i in (1..n).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
        v
    }
}

/// The inputs, built once.
pub static INPUTS: LazyLock<Inputs> = LazyLock::new(|| {
    let mut rng = Rng(0x6b6d_656d_2d73_6c62);
    let sizes = (0..BATCH)
        .map(|_| {
            let size = W2_MIN + rng.below((W2_MAX - W2_MIN + 1) as u64) as usize;
            Layout::from_size_align(size, SMALL_ALIGN).expect("valid layout")
        })
        .collect();
    let order2 = rng.permutation(BATCH);
    let order3 = rng.permutation(BATCH);
    Inputs {
        sizes,
        order2,
        order3,
    }
});

fn w1_layout() -> Layout {
    Layout::from_size_align(W1_SIZE, SMALL_ALIGN).expect("valid layout")
}

fn w3_layout() -> Layout {
    Layout::from_size_align(W3_SIZE, W3_SIZE).expect("valid layout")
}

/// W1: `n / BATCH` times, allocate `BATCH` blocks of one layout, free LIFO.
#[inline(never)]
fn lifo<H: Heap>(h: &mut H, held: &mut Vec<NonNull<u8>>, layout: Layout, n: u64) {
    let layout = black_box(layout);
    for _ in 0..n / BATCH as u64 {
        for _ in 0..BATCH {
            held.push(black_box(h.alloc(layout)));
        }
        while let Some(p) = held.pop() {
            // SAFETY: allocated just above with this layout.
            unsafe { h.free(p, layout) };
        }
    }
}

/// W2/W3: `n / BATCH` times, allocate `layouts[i]` for every i, then free in
/// `order`.
#[inline(never)]
fn shuffled<H: Heap>(
    h: &mut H,
    held: &mut [NonNull<u8>],
    layouts: &[Layout],
    order: &[u16],
    n: u64,
) {
    let (held, layouts, order) = (&mut held[..BATCH], &layouts[..BATCH], &order[..BATCH]);
    for _ in 0..n / BATCH as u64 {
        for (slot, &layout) in held.iter_mut().zip(layouts) {
            *slot = black_box(h.alloc(layout));
        }
        for &i in order {
            let i = i as usize;
            // SAFETY: allocated in this round with this layout, freed once
            // (order is a permutation).
            unsafe { h.free(held[i], layouts[i]) };
        }
    }
}

/// A heap plus the scratch space its workloads need: the W1-W3 contender.
struct HeapContender<H: Heap> {
    heap: H,
    held: Vec<NonNull<u8>>,
    w3: Vec<Layout>,
}

impl<H: Heap> HeapContender<H> {
    fn new(heap: H) -> Result<Self, String> {
        let mut c = Self::unchecked(heap);
        check(&mut c.heap, &INPUTS.sizes)?;
        check(&mut c.heap, &c.w3)?;
        Ok(c)
    }

    fn unchecked(heap: H) -> Self {
        HeapContender {
            heap,
            held: Vec::with_capacity(BATCH),
            w3: vec![w3_layout(); BATCH],
        }
    }
}

/// Name of the pseudo-allocator that only runs the workload loops.
pub const LOOP_ONLY: &str = "loop-only";

/// Not an allocator: hands out one fixed block, frees nothing. Run by
/// `--callgrind`, to show what the workload loops cost by themselves, and
/// timed when `--only loop-only` names it: its W4 row is what the hand-over
/// between the two threads costs on their CPUs.
pub struct LoopOnly;

/// The block [`LoopOnly`] hands out.
#[repr(align(4096))]
struct LoopBlock([u8; W3_SIZE]);
static LOOP_BLOCK: LoopBlock = LoopBlock([0; W3_SIZE]);

impl SharedHeap for LoopOnly {
    fn name(&self) -> &'static str {
        LOOP_ONLY
    }
    #[inline]
    fn alloc(&self, _layout: Layout) -> NonNull<u8> {
        NonNull::from(&LOOP_BLOCK.0).cast()
    }
    #[inline]
    unsafe fn free(&self, _p: NonNull<u8>, _layout: Layout) {}
}

/// Refuse to time a heap that hands out misaligned or overlapping blocks or
/// loses their contents: allocate a batch, fill each block with its own
/// pattern, check alignment, disjointness and the patterns, free.
fn check<H: Heap>(h: &mut H, layouts: &[Layout]) -> Result<(), String> {
    let name = h.name();
    let blocks: Vec<(NonNull<u8>, Layout)> = layouts.iter().map(|&l| (h.alloc(l), l)).collect();
    for (i, &(p, l)) in blocks.iter().enumerate() {
        if !(p.as_ptr() as usize).is_multiple_of(l.align()) {
            return Err(format!("{name}: {l:?} at {p:p} is misaligned"));
        }
        // SAFETY: a live block of l.size() bytes.
        unsafe { p.as_ptr().write_bytes(i as u8, l.size()) };
    }
    let mut spans: Vec<(usize, usize)> = blocks
        .iter()
        .map(|&(p, l)| (p.as_ptr() as usize, p.as_ptr() as usize + l.size()))
        .collect();
    spans.sort_unstable();
    if let Some(w) = spans.windows(2).find(|w| w[0].1 > w[1].0) {
        return Err(format!(
            "{name}: blocks [{:#x}, {:#x}) and [{:#x}, {:#x}) overlap",
            w[0].0, w[0].1, w[1].0, w[1].1
        ));
    }
    for (i, &(p, l)) in blocks.iter().enumerate() {
        // SAFETY: live, written above.
        let bytes = unsafe { std::slice::from_raw_parts(p.as_ptr(), l.size()) };
        if bytes.iter().any(|&b| b != i as u8) {
            return Err(format!("{name}: block {i} at {p:p} was overwritten"));
        }
    }
    for (p, l) in blocks {
        // SAFETY: allocated above with l, freed once.
        unsafe { h.free(p, l) };
    }
    Ok(())
}

impl<H: Heap> Contender for HeapContender<H> {
    fn name(&self) -> &'static str {
        self.heap.name()
    }

    fn run(&mut self, workload: usize, n: u64) {
        let inputs = &*INPUTS;
        self.heap.enter();
        match workload {
            0 => lifo(&mut self.heap, &mut self.held, w1_layout(), n),
            1 | 2 => {
                let (layouts, order) = if workload == 1 {
                    (&inputs.sizes, &inputs.order2)
                } else {
                    (&self.w3, &inputs.order3)
                };
                self.held.resize(BATCH, NonNull::dangling());
                shuffled(&mut self.heap, &mut self.held, layouts, order, n);
                self.held.clear();
            }
            _ => unreachable!("single-thread workloads are W1-W3"),
        }
        self.heap.leave();
    }
}

/// A thread-safe heap: the W4 contender.
struct SharedContender<S: SharedHeap>(S);

impl<S: SharedHeap> Contender for SharedContender<S> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn run(&mut self, workload: usize, n: u64) {
        assert_eq!(workload, 0, "the shared contender runs W4 only");
        threads::w4(&self.0, &INPUTS, n);
    }
}

/// The W1-W3 contender of `h`, checked; its blocks used if `touch`.
fn heap<H: Heap + 'static>(h: H, touch: bool) -> Result<Box<dyn Contender>, String> {
    // The check writes whole blocks: it runs on the bare heap.
    let c = HeapContender::new(h)?;
    if touch {
        return Ok(Box::new(HeapContender::unchecked(touch::Touched(c.heap))));
    }
    Ok(Box::new(c))
}

/// The W4 contender of `s`; its blocks used if `touch`.
fn shared<S: SharedHeap + 'static>(s: S, touch: bool) -> Result<Box<dyn Contender>, String> {
    if touch {
        return Ok(Box::new(SharedContender(touch::Touched(s))));
    }
    Ok(Box::new(SharedContender(s)))
}

/// The W1-W3 contender named `name`, checked and ready to time.
fn build_single(name: &str, touch: bool) -> Result<Box<dyn Contender>, String> {
    if let Some(v) = kmem::Variant::named(name) {
        return heap(Single(kmem::Kmem::new(v)?), touch);
    }
    match name {
        "talc" => heap(peers::Talc::new()?, touch),
        "talc+lock" => heap(Single(peers::TalcLock::new()?), touch),
        "buddy_system_allocator" => heap(peers::Buddy::new()?, touch),
        "buddy_system_allocator+lock" => heap(Single(peers::LockedBuddy::new()?), touch),
        "linked_list_allocator" => heap(peers::LinkedList::new()?, touch),
        "linked_list_allocator+lock" => heap(Single(peers::LockedLinkedList::new()?), touch),
        "rlsf" => heap(peers::Rlsf::new()?, touch),
        "rlsf+lock" => heap(Single(peers::LockedRlsf::new()?), touch),
        "slabmalloc" => heap(peers::SlabMalloc::new()?, touch),
        "slabmalloc+lock" => heap(Single(peers::LockedSlabMalloc::new()?), touch),
        "glibc" => heap(Single(peers::Glibc), touch),
        LOOP_ONLY => Ok(Box::new(HeapContender::unchecked(Single(LoopOnly)))),
        _ => Err(format!("no allocator named {name:?}")),
    }
}

/// The W4 contender named `name`, if that allocator is thread-safe.
fn build_shared(name: &str, touch: bool) -> Option<Result<Box<dyn Contender>, String>> {
    if let Some(v) = kmem::Variant::named(name) {
        return Some(kmem::Kmem::new(v).and_then(|s| shared(s, touch)));
    }
    Some(match name {
        "talc+lock" => peers::TalcLock::new().and_then(|s| shared(s, touch)),
        "buddy_system_allocator+lock" => peers::LockedBuddy::new().and_then(|s| shared(s, touch)),
        "linked_list_allocator+lock" => {
            peers::LockedLinkedList::new().and_then(|s| shared(s, touch))
        }
        "rlsf+lock" => peers::LockedRlsf::new().and_then(|s| shared(s, touch)),
        "slabmalloc+lock" => peers::LockedSlabMalloc::new().and_then(|s| shared(s, touch)),
        "glibc" => shared(peers::Glibc, touch),
        // Never touched: its one block is read-only.
        LOOP_ONLY => Ok(Box::new(SharedContender(LoopOnly)) as Box<dyn Contender>),
        _ => return None,
    })
}

/// The allocators `only` names (all if none), for W1-W3.
fn single_contenders(only: &[String], touch: bool) -> Result<Vec<Box<dyn Contender>>, String> {
    timed_names(only)
        .into_iter()
        .filter(|n| selected(n, only))
        .map(|n| build_single(n, touch))
        .collect()
}

/// The thread-safe allocators `only` names (all if none), for W4.
fn shared_contenders(only: &[String], touch: bool) -> Result<Vec<Box<dyn Contender>>, String> {
    timed_names(only)
        .into_iter()
        .filter(|n| selected(n, only))
        .filter_map(|n| build_shared(n, touch))
        .collect()
}

fn selected(name: &str, only: &[String]) -> bool {
    only.is_empty() || only.iter().any(|o| o == name)
}

/// Names of every allocator, in report order.
pub fn allocator_names() -> Vec<&'static str> {
    let mut v = kmem::NAMES.to_vec();
    for (plain, locked) in peers::NAMES {
        v.push(plain);
        v.push(locked);
    }
    v.push("glibc");
    v
}

/// The rows a timing run may have: every allocator, and `loop-only` when
/// `only` names it (never by default: it is the harness, not a heap).
fn timed_names(only: &[String]) -> Vec<&'static str> {
    let mut v = allocator_names();
    if only.iter().any(|o| o == LOOP_ONLY) {
        v.push(LOOP_ONLY);
    }
    v
}

fn check_names(only: &[String]) -> Result<(), String> {
    let mut names = allocator_names();
    names.push(LOOP_ONLY);
    match only.iter().find(|o| !names.contains(&o.as_str())) {
        Some(unknown) => Err(format!(
            "no allocator named {unknown:?}; there are: {}",
            names.join(", ")
        )),
        None => Ok(()),
    }
}

/// The cross-CPU line round trip ([`threads::line_round_trip`]) right
/// before and right after W4's timings: what the host made of W4's two
/// CPUs while they ran.
#[derive(Clone, Copy, Debug, Default)]
struct RoundTrip {
    before: Option<f64>,
    after: Option<f64>,
}

impl RoundTrip {
    /// "43 ns before W4, 44 ns after", or None if not measured.
    fn describe(&self) -> Option<String> {
        Some(format!(
            "{:.0} ns before W4, {:.0} ns after",
            self.before?, self.after?
        ))
    }
}

/// Time every contender: W1-W3 on all of them, then W4 on the thread-safe
/// ones, between two probes of the cross-CPU line round trip; with
/// `touch`, on blocks that are used ([`touch`]).
fn measure(opts: &RunOpts, touch: bool) -> Result<(Vec<Cell>, RoundTrip), String> {
    check_names(&opts.only)?;
    let mut cells = {
        let mut single = single_contenders(&opts.only, touch)?;
        harness::measure(&WORKLOADS[..W4], &mut single, opts)
    };
    let mut pair = shared_contenders(&opts.only, touch)?;
    let before = threads::line_round_trip();
    let mut w4 = harness::measure(&WORKLOADS[W4..], &mut pair, opts);
    let after = threads::line_round_trip();
    for c in &mut w4 {
        c.workload += W4;
    }
    cells.extend(w4);
    Ok((cells, RoundTrip { before, after }))
}

fn median_of(cells: &[Cell], workload: usize, allocator: &str) -> Option<f64> {
    cells
        .iter()
        .find(|c| c.workload == workload && c.allocator == allocator)
        .map(Cell::median)
}

/// The W4 scaling table, the line round trip around W4 and (if `goals`)
/// kmem's goals, for the text report.
fn summary(cells: &[Cell], rtt: &RoundTrip, goals: bool) -> Vec<String> {
    let mut out = vec![
        String::new(),
        "W4 scaling: throughput on 2 threads / throughput of the same allocator on W2, 1 thread"
            .to_string(),
        format!(
            "  {:<28}  {:>10}  {:>10}  {:>8}",
            "allocator", "W2 ns/op", "W4 ns/op", "speedup"
        ),
    ];
    for c in cells.iter().filter(|c| c.workload == W4) {
        if let Some(w2) = median_of(cells, 1, c.allocator) {
            out.push(format!(
                "  {:<28}  {:>10.2}  {:>10.2}  {:>7.2}x",
                c.allocator,
                w2,
                c.median(),
                w2 / c.median()
            ));
        }
    }
    if let Some(rtt) = rtt.describe() {
        out.push(String::new());
        out.push(format!(
            "cross-CPU line round trip on W4's two CPUs: {rtt}. W4's frees of the other \
             thread's objects pay it; a VM may place its vCPUs far apart for a while \
             (BENCHMARKS.md's: ~45 ns, ~400 ns when apart), so compare W4 across runs \
             only at similar figures."
        ));
    }
    if !goals {
        return out;
    }
    out.push(String::new());
    out.push("kmem against the goals:".to_string());
    for (w, (name, goal)) in GOALS.iter().enumerate() {
        let Some(kmem) = median_of(cells, w, "kmem") else {
            continue;
        };
        let line = if w == W4 {
            match median_of(cells, 1, "kmem") {
                Some(w2) => {
                    let s = w2 / kmem;
                    let rtt = rtt
                        .describe()
                        .map(|r| format!(" (line round trip {r})"))
                        .unwrap_or_default();
                    format!(
                        "  {name}: {s:.2}x one thread (goal >= {goal}x): {}{rtt}",
                        verdict(s >= *goal)
                    )
                }
                None => continue,
            }
        } else {
            format!(
                "  {name}: {kmem:.2} ns per pair (goal <= {goal} ns): {}",
                verdict(kmem <= *goal)
            )
        };
        out.push(line);
    }
    out
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

/// Run the suite and print its report.
pub fn run(args: &Args) -> Result<(), String> {
    if let Some(one) = &args.callgrind_one {
        return callgrind::run_one(&one[0], &one[1], args.pairs);
    }
    if args.callgrind {
        return callgrind::run_all(args);
    }
    threads::remember_cpus();
    let pinned = harness::pin_thread();
    let (cells, rtt) = measure(&args.run, args.touch)?;
    let suite = if args.touch { "slab-touched" } else { "slab" };
    if args.run.json {
        harness::print_json(suite, &WORKLOADS, &cells);
        // stdout stays one row shape; the probe goes to the terminal.
        if let Some(rtt) = rtt.describe() {
            eprintln!("kmem-bench slab: cross-CPU line round trip on W4's two CPUs: {rtt}");
        }
    } else {
        let mut notes = summary(&cells, &rtt, !args.touch);
        if args.touch {
            notes.push(String::new());
            notes.push(
                "--touch: every block's first word written after allocation and checked before \
                 its free (the goals, defined without it, are not judged)"
                    .to_string(),
            );
        }
        notes.push(String::new());
        notes.push("allocators:".to_string());
        notes.extend(kmem::DESCRIPTIONS.iter().map(|d| format!("  {d}")));
        notes.extend(peers::DESCRIPTIONS.iter().map(|d| format!("  {d}")));
        notes.push(String::new());
        notes.push(threads::DESCRIPTION.to_string());
        let report = TextReport {
            suite,
            unit: "one alloc+free pair",
            baseline: kmem::NAME,
            notes: &notes,
            pinned,
        };
        harness::print_text(&report, &WORKLOADS, &cells, &args.run);
    }
    Ok(())
}

/// Builds the one contender named `name` for workload `w` (an index into
/// [`WORKLOADS`]), for `--callgrind-one`.
fn contender_for(name: &str, w: usize) -> Result<Box<dyn Contender>, String> {
    if name != LOOP_ONLY {
        check_names(&[name.to_string()])?;
    }
    if w == W4 {
        build_shared(name, false).unwrap_or_else(|| {
            Err(format!(
                "{name} does not run {} (not thread-safe)",
                WORKLOADS[w].name
            ))
        })
    } else {
        build_single(name, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_fixed_and_valid() {
        let i = &*INPUTS;
        assert_eq!(i.sizes.len(), BATCH);
        assert!(i
            .sizes
            .iter()
            .all(|l| (W2_MIN..=W2_MAX).contains(&l.size())));
        for order in [&i.order2, &i.order3] {
            let mut o = order.clone();
            o.sort_unstable();
            assert!(o.iter().enumerate().all(|(k, &v)| v as usize == k));
        }
        // Deterministic: a fresh generator gives the same first size.
        let mut rng = Rng(0x6b6d_656d_2d73_6c62);
        assert_eq!(
            i.sizes[0].size(),
            W2_MIN + rng.below((W2_MAX - W2_MIN + 1) as u64) as usize
        );
    }

    /// Options for a brief run (two batches, one run) of the rows `only`
    /// names (all if empty).
    fn brief(only: &[&str]) -> RunOpts {
        RunOpts {
            json: true,
            iters: Some(2 * BATCH as u64),
            runs: 1,
            only: only.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The whole suite, briefly: every contender passes its checks and runs
    /// every workload it takes part in.
    #[test]
    fn every_contender_runs_every_workload() {
        let (cells, rtt) = measure(&brief(&[]), false).unwrap();
        assert_eq!(cells.len(), 15 * 3 + 10);
        assert!(cells
            .iter()
            .all(|c| c.samples.len() == 1 && c.median() > 0.0));
        assert!(summary(&cells, &rtt, true)
            .iter()
            .any(|l| l.contains("W4:")));
    }

    /// `loop-only` is timed only when named, on all four workloads (its
    /// W4 row: the hand-over alone), and gets a W4 ratio like a heap.
    #[test]
    fn loop_only_is_timed_when_named() {
        let (cells, rtt) = measure(&brief(&["kmem", LOOP_ONLY]), false).unwrap();
        let rows: Vec<(usize, &str)> = cells.iter().map(|c| (c.workload, c.allocator)).collect();
        for w in 0..WORKLOADS.len() {
            assert!(
                rows.contains(&(w, LOOP_ONLY)),
                "no loop-only row for W{}",
                w + 1
            );
            assert!(rows.contains(&(w, "kmem")), "no kmem row for W{}", w + 1);
        }
        assert_eq!(cells.len(), 8);
        assert!(summary(&cells, &rtt, true)
            .iter()
            .any(|l| l.trim_start().starts_with(LOOP_ONLY)));
        assert!(check_names(&["nonesuch".to_string()]).is_err());
    }

    /// `--touch`: the same rows on used blocks (every free checks the word
    /// its allocation wrote, so a heap writing into live blocks panics),
    /// and no verdict on the goals.
    #[test]
    fn touched_blocks_run_every_workload_without_goals() {
        let (cells, rtt) = measure(&brief(&["kmem", "kmem-nomark", "glibc"]), true).unwrap();
        assert_eq!(cells.len(), 3 * 3 + 3);
        let lines = summary(&cells, &rtt, false);
        assert!(lines.iter().any(|l| l.contains("W4 scaling")));
        assert!(!lines.iter().any(|l| l.contains("goal")));
    }

    /// The round trip probe's figures reach the report beside W4 and its
    /// verdict, and nothing is printed when it did not run.
    #[test]
    fn round_trip_is_reported_beside_w4() {
        let (cells, _) = measure(&brief(&["kmem"]), false).unwrap();
        let rtt = RoundTrip {
            before: Some(43.4),
            after: Some(401.0),
        };
        let lines = summary(&cells, &rtt, true);
        assert!(lines
            .iter()
            .any(|l| l.contains("round trip on W4's two CPUs: 43 ns before W4, 401 ns after")));
        assert!(lines.iter().any(|l| l.starts_with("  W4:")
            && l.ends_with("(line round trip 43 ns before W4, 401 ns after)")));
        let lines = summary(&cells, &RoundTrip::default(), true);
        assert!(lines.iter().any(|l| l.starts_with("  W4:")));
        assert!(!lines.iter().any(|l| l.contains("round trip")));
    }

    /// The probe itself: on two or more CPUs, a positive time well under a
    /// millisecond per round trip; on one, no figure.
    #[test]
    fn line_round_trip_measures_on_two_cpus() {
        threads::remember_cpus();
        let cpus = rustix::thread::sched_getaffinity(None)
            .map(|s| s.count())
            .unwrap_or(1);
        match threads::line_round_trip() {
            Some(ns) => {
                assert!(cpus >= 2);
                assert!(ns > 0.0 && ns < 1e6, "{ns} ns");
            }
            None => assert!(cpus < 2),
        }
    }

    #[test]
    fn names_are_known() {
        assert!(check_names(&["kmem".into(), "talc+lock".into()]).is_ok());
        assert!(check_names(&["kmem-unhardened".into()]).is_ok());
        assert!(check_names(&["nope".into()]).is_err());
        assert!(check_names(&["kmem-nomark".into()]).is_ok());
        assert!(check_names(&["kmem-unclaimed".into()]).is_ok());
        assert_eq!(allocator_names().len(), 15);
        assert_eq!(
            allocator_names()[..4],
            ["kmem", "kmem-nomark", "kmem-unhardened", "kmem-unclaimed"]
        );
    }
}
