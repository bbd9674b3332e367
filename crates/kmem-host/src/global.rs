//! Rust's allocator interfaces over kmem's slab layer: [`KmemGlobal`] (a
//! `GlobalAlloc`, usable as `#[global_allocator]`) and [`KmemHeap`] (an
//! `allocator_api2::alloc::Allocator`, for `allocator_api2::vec::Vec` and
//! friends).
//!
//! # From a `Layout` to `kmalloc`
//! kmalloc takes a size only. Its guarantees (Linux's, kept by kmem): every
//! object is aligned to 8 bytes (ARCH_KMALLOC_MINALIGN), every class to the
//! largest power of two dividing its size (so 2^k-byte requests come back
//! 2^k-aligned), and blocks above 8 KiB are whole naturally aligned page
//! blocks. A layout is therefore served as
//!
//! ```text
//!   kmalloc(align <= 8 ? size : round_up(size, align))
//! ```
//!
//! A multiple of a power of two `a` lands in a class aligned to at least `a`
//! (96 and 192 are the only non-powers, aligned to 32 and 64, and no larger
//! power divides a size that rounds up to them), and above 8 KiB in a block
//! of 2^order pages, aligned to its size on the direct map (2 MiB aligned).
//! So large sizes and high alignments (up to 4 MiB, KMALLOC_MAX_SIZE) take
//! kmalloc's page path, everything else a slab. Every returned pointer is
//! still checked against the alignment (one AND); a miss is freed and
//! counted, never returned. Frees are `kfree(p)`: the slab layer finds the
//! cache from the address, so the layout is not needed. A realloc whose old
//! and new requests round to the same class keeps the object; any other
//! moves it (allocate, copy, free); the in-place case goes through `krealloc`,
//! so a debugging cache's kmalloc red zone follows the new size.
//!
//! # KmemGlobal: a machine for the process
//! `#[global_allocator]` needs a `'static` allocator available before
//! `main`. [`KmemGlobal::new`] is `const`; the first allocation builds a
//! hosted [`Machine`] (1 GiB, [`DEFAULT_CPUS`] CPUs by default) and a
//! `SlabAllocator<'static>` over its page allocator, leaks both (they live
//! for the rest of the process) and keeps them in a [`OnceLock`]. The slab
//! allocator is registered as the page allocator's shrinker
//! (`SlabAllocator::register_shrinker`), so the free objects its per-CPU
//! sheaves hold come back when the machine runs short of pages.
//!
//! Building the machine allocates (its memory map, the platform's warning
//! log, RAM bookkeeping), and so can kmem's host platform later (a warning
//! formats a `String`; a contended parking lock may allocate its parking
//! table). If kmem is the global allocator, those allocations would come
//! back into kmem from inside kmem. A thread-local *nesting flag* breaks the
//! cycle: it is set while a thread runs kmem code for this allocator, and an
//! allocation made while it is set goes to the **system allocator** (glibc)
//! instead. The same happens, should it happen, to a kmalloc result that
//! misses the alignment. Both are counted in [`GlobalStats`]. A kmem
//! pointer freed while the flag is set (rare: something allocated by kmem,
//! freed from inside kmem's platform code) is pushed on a lock-free list and
//! freed by the next top-level free.
//!
//! # Above 4 MiB: vmalloc
//! kmalloc stops at 4 MiB (KMALLOC_MAX_SIZE); Linux's `kvmalloc` serves
//! larger requests with vmalloc, and so does this allocator: the first such
//! request builds the machine's vmalloc ([`crate::vmap::vmalloc`]: a 64 GiB
//! reservation of address space whose pages are mapped, through real x86-64
//! tables, to the machine's frames) and every request above 4 MiB gets a
//! virtually contiguous area of scattered pages, page aligned or aligned as
//! the layout asks. A realloc of such a block is `vrealloc` (in place while
//! the area's pages suffice); a free is `vfree`. Two cases go to the system
//! allocator instead, counted as [`GlobalStats::oversize`]: atomic context
//! (vmalloc may sleep: Linux refuses it there) and a vmalloc that fails (the
//! machine's RAM is smaller than the process may want: 1 GiB by default).
//!
//! Frees and reallocs route by address: a pointer inside the machine's
//! direct map is a kmalloc object, one inside the vmalloc range a vmalloc
//! area, anything else the system's.
//!
//! # Claiming CPUs: a thread cache without atomics
//! By default no thread owns a kmem CPU: threads share the machine's CPU
//! numbers (`slot % nr_cpus`) and every operation takes the per-CPU flag with
//! a compare-and-swap (kmem's shared paths). [`KmemGlobal::claiming_cpus`]
//! makes each thread, at its first allocation or free through this
//! allocator, claim the lowest free CPU number of the machine
//! ([`crate::claim_cpu`]) and hold it until the thread exits; its
//! operations then take the owner's paths, plain loads and stores, like a
//! per-thread cache. Threads that find every CPU claimed stay unclaimed, and
//! when their CPU number has an owner they take the locked slow paths, so
//! give such a machine at least as many CPUs as threads that allocate at
//! once. Claims are process-wide CPU numbers: code that claims CPUs itself
//! (other machines, tests) competes with them. [`GlobalStats::claims`]
//! counts them.
//!
//! Allocation failures are not papered over: a kmalloc error gives a null
//! pointer, as `GlobalAlloc` requires. The mask is `GFP_KERNEL` in process
//! context and `GFP_ATOMIC` when the calling thread is in atomic context by
//! the hosted machine's context guards ([`crate::irq`], [`crate::spin_lock`],
//! ...), so a `Vec` grown inside a simulated interrupt handler dips into the
//! atomic reserves instead of being refused as a sleeping allocation.
//!
//! # KmemHeap: an allocator handle with explicit flags
//! [`KmemHeap`] is a `Copy` handle on any [`SlabAllocator`] over a hosted
//! machine (the global one or your own) with a fixed GFP mask, as Rust for
//! Linux passes flags. It implements `allocator_api2`'s `Allocator` with the
//! same layout rule, and never falls back: a request kmalloc cannot serve is
//! an `AllocError`. Zero-sized allocations get a dangling, aligned pointer
//! and never reach kmem.

use crate::vmap::HostVmalloc;
use crate::{HostPlatform, Machine, MachineConfig};
use allocator_api2::alloc::{AllocError as ApiAllocError, Allocator};
use kmem::gfp::{Gfp, GFP_ATOMIC, GFP_KERNEL};
use kmem::page::NUMA_NO_NODE;
use kmem::slab::kmalloc::kmalloc_size_roundup;
use kmem::slab::{SlabAllocator, SlabConfig, KMALLOC_MAX_SIZE};
use kmem::vmalloc::VmallocError;
use kmem::AllocError;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::fmt;
use std::ptr::{self, NonNull};
use std::sync::atomic::{
    AtomicPtr, AtomicUsize,
    Ordering::{Acquire, Relaxed, Release},
};
use std::sync::OnceLock;

/// CPUs of the machine [`KmemGlobal::new`] builds. A kmem CPU is a set of
/// per-CPU slab state; an unclaimed thread uses CPU `slot % nr_cpus` (its
/// slot is the order in which it first used kmem), so with this many up to
/// 16 threads each have CPU state of their own and their compare-and-swaps
/// never meet. With 2 CPUs, the nine threads of `rust_workload` took the
/// locked slow paths on one operation in ten and the program ran 7-22 %
/// longer (BENCHMARKS.md, slab, whole program). Each CPU costs 320 bytes per cache
/// and, once it allocates or frees in a cache, a sheaf block of 8 KiB.
pub const DEFAULT_CPUS: usize = 16;

/// Alignment every kmalloc object has (Linux's ARCH_KMALLOC_MINALIGN).
pub const KMALLOC_MIN_ALIGN: usize = 8;

/// The size to ask kmalloc for so that the object satisfies `layout`, or
/// `None` if kmalloc cannot serve it (above [`KMALLOC_MAX_SIZE`] once rounded).
/// Zero sizes come back as 0 (kmalloc's `ZERO_SIZE_PTR` case); callers
/// handle them before.
#[inline]
pub fn kmalloc_request(layout: Layout) -> Option<usize> {
    aligned_request(layout).filter(|&req| req <= KMALLOC_MAX_SIZE)
}

/// `layout`'s size, rounded up to a multiple of its alignment when that is
/// above [`KMALLOC_MIN_ALIGN`] (see the module documentation: such a
/// request lands in a kmalloc class, or a page block, aligned enough), or
/// `None` if the rounding overflows. No size limit: kvmalloc's handle uses
/// it too.
#[inline]
pub fn aligned_request(layout: Layout) -> Option<usize> {
    if layout.align() <= KMALLOC_MIN_ALIGN {
        Some(layout.size())
    } else {
        layout.size().checked_next_multiple_of(layout.align())
    }
}

/// Whether an object allocated for `old` can serve `new` in place: both
/// requests round to the same kmalloc class (or page block).
#[inline]
fn same_class(old: Layout, new: Layout) -> bool {
    match (kmalloc_request(old), kmalloc_request(new)) {
        (Some(a), Some(b)) if a != 0 && b != 0 => {
            kmalloc_size_roundup(a) == kmalloc_size_roundup(b)
        }
        _ => false,
    }
}

/// `kmalloc` for a layout; checks the alignment of what it got.
#[inline]
fn kmalloc_layout(
    slab: &SlabAllocator<'_, HostPlatform>,
    layout: Layout,
    gfp: Gfp,
) -> Result<NonNull<u8>, KmallocLayoutError> {
    let req = kmalloc_request(layout).ok_or(KmallocLayoutError::TooLarge)?;
    let p = slab
        .kmalloc(req, gfp)
        .map_err(|_: AllocError| KmallocLayoutError::Kmalloc)?;
    if p.as_ptr() as usize & (layout.align() - 1) != 0 {
        return Err(misaligned(slab, p));
    }
    Ok(p)
}

#[cold]
fn misaligned(slab: &SlabAllocator<'_, HostPlatform>, p: NonNull<u8>) -> KmallocLayoutError {
    let _ = slab.kfree(p.as_ptr());
    KmallocLayoutError::Misaligned
}

/// Resizes an object within its class through `krealloc`, which keeps it in
/// place and moves a kmalloc red zone (if the cache debugs) to the new size.
/// `None` if kmem
/// refused the pointer (reported) or, against expectation, moved the object
/// somewhere misaligned.
fn resize_in_place(
    slab: &SlabAllocator<'_, HostPlatform>,
    p: NonNull<u8>,
    new: Layout,
    gfp: Gfp,
) -> Option<NonNull<u8>> {
    let req = kmalloc_request(new)?;
    let q = slab.krealloc(p.as_ptr(), req, gfp).ok()?;
    (q.as_ptr() as usize & (new.align() - 1) == 0).then_some(q)
}

/// Why [`kmalloc_layout`] gave nothing.
#[derive(Debug)]
enum KmallocLayoutError {
    /// Above KMALLOC_MAX_SIZE.
    TooLarge,
    /// kmalloc failed.
    Kmalloc,
    /// kmalloc's object missed the alignment (freed again).
    Misaligned,
}

/// A dangling pointer aligned to `align`, for zero-sized allocations.
#[inline]
pub(crate) fn dangling(align: usize) -> NonNull<u8> {
    // SAFETY: an alignment is never 0.
    unsafe { NonNull::new_unchecked(ptr::without_provenance_mut(align)) }
}

/// Zeroes bytes `from..to` of the block at `p` (nothing if `to <= from`):
/// what `grow_zeroed` adds, since an object's class or an area's last page
/// may hold old data past the old size.
///
/// # Safety
/// `p` is live for at least `to` bytes.
pub(crate) unsafe fn zero_tail(p: NonNull<u8>, from: usize, to: usize) {
    if to > from {
        // SAFETY: per the contract.
        unsafe { p.as_ptr().add(from).write_bytes(0, to - from) };
    }
}

// ------------------------------------------------------------------ KmemHeap

/// An `allocator_api2` allocator over a slab allocator, with a fixed GFP
/// mask. See the module documentation for how layouts are served.
///
/// ```no_run
/// use allocator_api2::vec::Vec;
/// use kmem::slab::{SlabAllocator, SlabConfig};
/// use kmem_host::{global::KmemHeap, Machine};
///
/// let m = Machine::default_machine().unwrap();
/// let slab = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
/// let mut v = Vec::new_in(KmemHeap::new(&slab));
/// v.extend(0..1000u32);
/// ```
#[derive(Clone, Copy)]
pub struct KmemHeap<'a> {
    slab: &'a SlabAllocator<'a, HostPlatform>,
    gfp: Gfp,
}

impl<'a> KmemHeap<'a> {
    /// A handle allocating with `GFP_KERNEL`.
    pub fn new(slab: &'a SlabAllocator<'a, HostPlatform>) -> Self {
        KmemHeap {
            slab,
            gfp: GFP_KERNEL,
        }
    }

    /// The same handle allocating with `gfp` (e.g. `GFP_ATOMIC` for use in
    /// atomic context, `GFP_KERNEL | __GFP_ACCOUNT` for `kmalloc-cg-*`).
    pub fn with_gfp(self, gfp: Gfp) -> Self {
        KmemHeap { gfp, ..self }
    }

    /// The mask it allocates with.
    pub fn gfp(&self) -> Gfp {
        self.gfp
    }

    /// The slab allocator underneath.
    pub fn slab(&self) -> &'a SlabAllocator<'a, HostPlatform> {
        self.slab
    }

    #[inline]
    fn alloc_impl(&self, layout: Layout, zero: bool) -> Result<NonNull<[u8]>, ApiAllocError> {
        if layout.size() == 0 {
            return Ok(NonNull::slice_from_raw_parts(dangling(layout.align()), 0));
        }
        let gfp = if zero { self.gfp | Gfp::ZERO } else { self.gfp };
        match kmalloc_layout(self.slab, layout, gfp) {
            Ok(p) => Ok(NonNull::slice_from_raw_parts(p, layout.size())),
            Err(_) => Err(ApiAllocError),
        }
    }

    /// `deallocate` of a block that is not zero-sized.
    ///
    /// # Safety
    /// As `Allocator::deallocate`.
    #[inline]
    unsafe fn free(&self, p: NonNull<u8>) {
        // A refused free was reported by kmem and changed nothing.
        let _ = self.slab.kfree(p.as_ptr());
    }

    /// Shared body of grow, grow_zeroed and shrink.
    ///
    /// # Safety
    /// As `Allocator::grow`/`shrink`: `p` is live from this allocator for
    /// `old`, and `new.align() == old.align()` or the caller accepts a move.
    unsafe fn resize(
        &self,
        p: NonNull<u8>,
        old: Layout,
        new: Layout,
        zero: bool,
    ) -> Result<NonNull<[u8]>, ApiAllocError> {
        if old.size() != 0 && new.size() != 0 && old.align() == new.align() && same_class(old, new)
        {
            if let Some(q) = resize_in_place(self.slab, p, new, self.gfp) {
                if zero {
                    // krealloc only knows the old size of tracking caches;
                    // we know it always.
                    // SAFETY: the object has room for new.size() bytes.
                    unsafe { zero_tail(q, old.size(), new.size()) };
                }
                return Ok(NonNull::slice_from_raw_parts(q, new.size()));
            }
        }
        let q = self.alloc_impl(new, zero)?;
        let keep = old.size().min(new.size());
        // SAFETY: both blocks are live and distinct; keep fits both.
        unsafe {
            ptr::copy_nonoverlapping(p.as_ptr(), q.as_ptr().cast::<u8>(), keep);
            self.deallocate(p, old);
        }
        Ok(q)
    }
}

// SAFETY: blocks come from kmalloc and stay valid until kfree'd through
// `deallocate` (or moved by grow/shrink); a copied handle refers to the same
// slab allocator, so any copy may free what another allocated.
heap_allocator_impl!(KmemHeap<'_>);

impl fmt::Debug for KmemHeap<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmemHeap").field("gfp", &self.gfp).finish()
    }
}

// ------------------------------------------------------------------ nesting

thread_local! {
    /// Set while this thread runs kmem code on behalf of a [`KmemGlobal`].
    static NESTED: Cell<bool> = const { Cell::new(false) };
}

/// Proof that the calling thread was not inside kmem; clears the flag on
/// drop.
struct Outermost;

impl Outermost {
    #[inline]
    fn enter() -> Option<Outermost> {
        NESTED.with(|n| {
            if n.get() {
                None
            } else {
                n.set(true);
                Some(Outermost)
            }
        })
    }
}

impl Drop for Outermost {
    #[inline]
    fn drop(&mut self) {
        NESTED.with(|n| n.set(false));
    }
}

// ------------------------------------------------------------------ KmemGlobal

/// A thread's CPU claim under [`KmemGlobal::claiming_cpus`].
struct ThreadClaim {
    /// The thread tried to claim (once per thread).
    tried: Cell<bool>,
    /// The claim, dropped (the CPU given back) when the thread exits.
    held: RefCell<Option<crate::CpuClaim>>,
}

thread_local! {
    static CLAIM: ThreadClaim = const {
        ThreadClaim {
            tried: Cell::new(false),
            held: RefCell::new(None),
        }
    };
}

/// Counters of the paths that did not end in kmalloc/kfree (all of them
/// should stay small; see the module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalStats {
    /// Allocations made from inside kmem (machine creation, warnings,
    /// parking tables) and given to the system allocator.
    pub nested: usize,
    /// Allocations above KMALLOC_MAX_SIZE served by the machine's vmalloc.
    pub vmalloc: usize,
    /// Allocations above KMALLOC_MAX_SIZE given to the system allocator
    /// (in atomic context, or when vmalloc could not serve them).
    pub oversize: usize,
    /// kmalloc results that missed the alignment (freed, system allocator
    /// used instead).
    pub misaligned: usize,
    /// kmalloc failures (null returned).
    pub failed: usize,
    /// kmem objects freed from inside kmem, deferred to a later free.
    pub deferred: usize,
    /// Frees kmem refused (reported through the platform's warnings).
    pub bad_frees: usize,
    /// Reallocs served in place (same class).
    pub realloc_in_place: usize,
    /// Reallocs that moved the object.
    pub realloc_moved: usize,
    /// Threads that claimed a CPU ([`KmemGlobal::claiming_cpus`]).
    pub claims: usize,
    /// Threads that tried to claim one and found none free.
    pub claims_missed: usize,
}

/// The fallback and claim counters behind [`GlobalStats`]: rarely bumped
/// (each should stay small), but they sit on a 128-byte pair of cache lines
/// of their own, away from the allocator's `state`, which every operation
/// reads.
#[derive(Default)]
#[repr(align(128))]
struct Counters {
    nested: AtomicUsize,
    vmalloc: AtomicUsize,
    oversize: AtomicUsize,
    misaligned: AtomicUsize,
    failed: AtomicUsize,
    deferred: AtomicUsize,
    bad_frees: AtomicUsize,
    claims: AtomicUsize,
    claims_missed: AtomicUsize,
}

impl Counters {
    const fn new() -> Self {
        Counters {
            nested: AtomicUsize::new(0),
            vmalloc: AtomicUsize::new(0),
            oversize: AtomicUsize::new(0),
            misaligned: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            deferred: AtomicUsize::new(0),
            bad_frees: AtomicUsize::new(0),
            claims: AtomicUsize::new(0),
            claims_missed: AtomicUsize::new(0),
        }
    }
}

/// Shards of the realloc counters.
const REALLOC_SHARDS: usize = 16;

/// One shard of the realloc counters, bumped by the threads whose CPU slot
/// is its index modulo [`REALLOC_SHARDS`], on a 128-byte pair of cache lines
/// of its own. Programs realloc on every thread all the time (a `Vec` or
/// `String` growing); with one shared counter, `realloc` held 9 % of a
/// nine-thread program's samples, three quarters of them on that counter's
/// bump, its line moving between the threads' cores; sharded, 3 %
/// (BENCHMARKS.md, slab, whole program).
#[repr(align(128))]
struct ReallocShard {
    in_place: AtomicUsize,
    moved: AtomicUsize,
}

impl ReallocShard {
    const fn new() -> Self {
        ReallocShard {
            in_place: AtomicUsize::new(0),
            moved: AtomicUsize::new(0),
        }
    }
}

#[inline]
fn bump(c: &AtomicUsize) {
    c.fetch_add(1, Relaxed);
}

/// The machine and slab allocator of a [`KmemGlobal`], built on first use.
struct State {
    slab: &'static SlabAllocator<'static, HostPlatform>,
    machine: &'static Machine,
    /// The direct map, `[lo, hi)`: every kmalloc object lies inside it.
    lo: usize,
    hi: usize,
    /// The machine's vmalloc, built by the first request above
    /// KMALLOC_MAX_SIZE (None inside if it could not be).
    vm: OnceLock<Option<&'static HostVmalloc<'static>>>,
}

impl State {
    /// Whether `p` is a kmalloc object's address (the direct map).
    #[inline]
    fn owns(&self, p: *mut u8) -> bool {
        (self.lo..self.hi).contains(&(p as usize))
    }

    /// The vmalloc if `p` lies in its range (never builds it).
    #[inline]
    fn vmalloc_of(&self, p: *mut u8) -> Option<&'static HostVmalloc<'static>> {
        self.vm
            .get()
            .copied()
            .flatten()
            .filter(|vm| vm.is_vmalloc_addr(p))
    }

    /// The vmalloc, building it if needed (nesting flag held by the caller:
    /// what building allocates comes from the system allocator).
    #[cold]
    fn vmalloc(&self) -> Option<&'static HostVmalloc<'static>> {
        *self
            .vm
            .get_or_init(|| match crate::vmap::vmalloc(self.machine) {
                Ok(vm) => Some(&*Box::leak(Box::new(vm))),
                Err(e) => {
                    eprintln!(
                        "kmem global allocator: cannot build vmalloc: {e}; requests above 4 MiB \
                     go to the system allocator"
                    );
                    None
                }
            })
    }
}

/// kmem as Rust's global allocator (or any `GlobalAlloc` user). See the
/// module documentation.
///
/// ```no_run
/// use kmem_host::global::KmemGlobal;
///
/// #[global_allocator]
/// static KMEM: KmemGlobal = KmemGlobal::new();
///
/// fn main() {
///     let v: Vec<u64> = (0..1000).collect();     // kmalloc-8k
///     assert!(KMEM.slab().is_some());
/// #   drop(v);
/// }
/// ```
pub struct KmemGlobal {
    state: OnceLock<Option<State>>,
    ram_bytes: u64,
    nr_cpus: usize,
    echo_warnings: bool,
    /// Threads claim a CPU at their first operation (see the module
    /// documentation).
    claim_cpus: bool,
    counters: Counters,
    realloc: [ReallocShard; REALLOC_SHARDS],
    /// kmem objects whose free was deferred, linked through their first word.
    deferred: AtomicPtr<u8>,
}

impl KmemGlobal {
    /// A global allocator that will build a machine of 1 GiB and
    /// [`DEFAULT_CPUS`] CPUs on first use, echoing kmem's warnings to
    /// stderr.
    pub const fn new() -> Self {
        Self::with_machine(1 << 30, DEFAULT_CPUS)
    }

    /// The same with a machine of `ram_bytes` of RAM (PC layout) and
    /// `nr_cpus` CPUs.
    pub const fn with_machine(ram_bytes: u64, nr_cpus: usize) -> Self {
        KmemGlobal {
            state: OnceLock::new(),
            ram_bytes,
            nr_cpus,
            echo_warnings: true,
            claim_cpus: false,
            counters: Counters::new(),
            realloc: [const { ReallocShard::new() }; REALLOC_SHARDS],
            deferred: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// The same, with every thread claiming a CPU of the machine of its own
    /// at its first allocation or free, for as long as it lives: the owner's
    /// paths, without atomic instructions (see "Claiming CPUs" in the module
    /// documentation).
    ///
    /// ```no_run
    /// use kmem_host::global::KmemGlobal;
    ///
    /// // Up to 16 threads get a CPU each.
    /// #[global_allocator]
    /// static KMEM: KmemGlobal = KmemGlobal::with_machine(1 << 30, 16).claiming_cpus();
    /// # fn main() {}
    /// ```
    pub const fn claiming_cpus(mut self) -> Self {
        self.claim_cpus = true;
        self
    }

    /// Claims a CPU for the calling thread if this allocator claims CPUs and
    /// the thread has not tried yet (nesting flag held). One thread-local
    /// load once tried.
    #[inline]
    fn claim_once(&self) {
        if !self.claim_cpus {
            return;
        }
        // After the thread's claim was dropped at its exit, `try_with`
        // fails: the thread stays unclaimed for its last frees.
        let _ = CLAIM.try_with(|c| {
            if !c.tried.get() {
                c.tried.set(true);
                self.claim_first_free(c);
            }
        });
    }

    #[cold]
    fn claim_first_free(&self, c: &ThreadClaim) {
        for cpu in 0..self.nr_cpus.min(crate::MAX_CLAIMABLE_CPUS) {
            match crate::claim_cpu(cpu) {
                Ok(claim) => {
                    *c.held.borrow_mut() = Some(claim);
                    bump(&self.counters.claims);
                    return;
                }
                Err(crate::ClaimError::Taken { .. }) => continue,
                // Already holding one (claimed by hand), or no membarrier.
                Err(_) => return,
            }
        }
        bump(&self.counters.claims_missed);
    }

    /// Builds the machine and slab allocator. Runs with the nesting flag
    /// set: everything allocated here comes from the system allocator.
    #[cold]
    fn init(&self) -> Option<State> {
        let config = MachineConfig {
            ram_bytes: self.ram_bytes,
            nr_cpus: self.nr_cpus,
            echo_warnings: self.echo_warnings,
            ..MachineConfig::default()
        };
        let machine: &'static Machine = match Machine::new(config) {
            Ok(m) => Box::leak(Box::new(m)),
            Err(e) => {
                eprintln!("kmem global allocator: cannot build the machine: {e}; using the system allocator");
                return None;
            }
        };
        // Seeded from the host kernel's pool: the default seed is a
        // constant of the source, so the free-pointer encoding would hide
        // nothing.
        let slab_config = SlabConfig {
            seed: crate::boot_seed(),
            ..SlabConfig::default()
        };
        let slab: &'static SlabAllocator<'static, HostPlatform> = match SlabAllocator::new(
            machine.pages(),
            slab_config,
        ) {
            Ok(s) => Box::leak(Box::new(s)),
            Err(e) => {
                eprintln!("kmem global allocator: cannot build the slab allocator: {e:?}; using the system allocator");
                return None;
            }
        };
        if let Err(e) = slab.register_shrinker() {
            eprintln!("kmem global allocator: {e}; sheaves give memory back only on shrink");
        }
        let lo = machine.ram().direct_map_offset();
        let hi = lo + machine.ram().direct_map_len();
        Some(State {
            slab,
            machine,
            lo,
            hi,
            vm: OnceLock::new(),
        })
    }

    /// The state, building it if needed. Only called with the nesting flag
    /// set (so `init`'s own allocations cannot come back here).
    #[inline]
    fn state(&self) -> Option<&State> {
        self.state.get_or_init(|| self.init()).as_ref()
    }

    /// The state if it is built (never builds it).
    #[inline]
    fn built(&self) -> Option<&State> {
        self.state.get().and_then(Option::as_ref)
    }

    /// Builds the machine now if it is not built yet; false if kmem could
    /// not be set up (everything then goes to the system allocator).
    pub fn init_now(&self) -> bool {
        match Outermost::enter() {
            Some(_outer) => self.state().is_some(),
            // Called from inside kmem: never build (or wait for) the state here.
            None => self.built().is_some(),
        }
    }

    /// The slab allocator, once built.
    pub fn slab(&self) -> Option<&SlabAllocator<'static, HostPlatform>> {
        self.built().map(|s| s.slab)
    }

    /// The machine, once built.
    pub fn machine(&self) -> Option<&'static Machine> {
        self.built().map(|s| s.machine)
    }

    /// An `allocator_api2` handle on the same slab allocator (building it if
    /// needed), allocating with `GFP_KERNEL`.
    pub fn heap(&self) -> Option<KmemHeap<'_>> {
        self.init_now();
        self.slab().map(KmemHeap::new)
    }

    /// The machine's vmalloc, once a request above 4 MiB built it.
    pub fn vmalloc(&self) -> Option<&'static HostVmalloc<'static>> {
        self.built().and_then(|s| s.vm.get().copied().flatten())
    }

    /// Whether `p` is (or was) kmem's rather than a system allocation: it
    /// lies in the machine's direct map (a kmalloc object) or in its
    /// vmalloc range.
    pub fn owns(&self, p: *const u8) -> bool {
        self.built()
            .is_some_and(|s| s.owns(p.cast_mut()) || s.vmalloc_of(p.cast_mut()).is_some())
    }

    /// The fallback and realloc counters.
    pub fn stats(&self) -> GlobalStats {
        let c = &self.counters;
        GlobalStats {
            nested: c.nested.load(Relaxed),
            vmalloc: c.vmalloc.load(Relaxed),
            oversize: c.oversize.load(Relaxed),
            misaligned: c.misaligned.load(Relaxed),
            failed: c.failed.load(Relaxed),
            deferred: c.deferred.load(Relaxed),
            bad_frees: c.bad_frees.load(Relaxed),
            realloc_in_place: self.realloc.iter().map(|r| r.in_place.load(Relaxed)).sum(),
            realloc_moved: self.realloc.iter().map(|r| r.moved.load(Relaxed)).sum(),
            claims: c.claims.load(Relaxed),
            claims_missed: c.claims_missed.load(Relaxed),
        }
    }

    /// The calling thread's shard of the realloc counters.
    #[inline]
    fn realloc_shard(&self) -> &ReallocShard {
        &self.realloc[crate::cpu::cpu_slot() % REALLOC_SHARDS]
    }

    /// The GFP mask for the calling thread's context.
    #[inline]
    fn gfp() -> Gfp {
        if crate::in_atomic() {
            GFP_ATOMIC
        } else {
            GFP_KERNEL
        }
    }

    /// Allocation body; `zero` asks kmalloc for a zeroed object.
    #[inline]
    unsafe fn alloc_impl(&self, layout: Layout, zero: bool) -> *mut u8 {
        let Some(_outer) = Outermost::enter() else {
            bump(&self.counters.nested);
            return system_alloc(layout, zero);
        };
        let Some(st) = self.state() else {
            return system_alloc(layout, zero);
        };
        self.claim_once();
        let gfp = if zero {
            Self::gfp() | Gfp::ZERO
        } else {
            Self::gfp()
        };
        match kmalloc_layout(st.slab, layout, gfp) {
            Ok(p) => p.as_ptr(),
            Err(e) => self.alloc_failed(st, layout, gfp, e),
        }
    }

    /// What kmalloc did not serve (nesting flag held by the caller).
    #[cold]
    fn alloc_failed(&self, st: &State, layout: Layout, gfp: Gfp, e: KmallocLayoutError) -> *mut u8 {
        let zero = gfp.contains(Gfp::ZERO);
        match e {
            KmallocLayoutError::TooLarge => match self.vmalloc_layout(st, layout, gfp) {
                Some(p) => p.as_ptr(),
                None => {
                    bump(&self.counters.oversize);
                    system_alloc(layout, zero)
                }
            },
            KmallocLayoutError::Misaligned => {
                bump(&self.counters.misaligned);
                system_alloc(layout, zero)
            }
            KmallocLayoutError::Kmalloc => {
                bump(&self.counters.failed);
                ptr::null_mut()
            }
        }
    }

    /// A vmalloc area for `layout` (above KMALLOC_MAX_SIZE), or None in
    /// atomic context or if vmalloc cannot serve it (nesting flag held).
    fn vmalloc_layout(&self, st: &State, layout: Layout, gfp: Gfp) -> Option<NonNull<u8>> {
        if crate::in_atomic() {
            return None;
        }
        let p = st
            .vmalloc()?
            .vmalloc_node_align(
                layout.size(),
                layout.align(),
                gfp | Gfp::NOWARN,
                NUMA_NO_NODE,
            )
            .ok()?;
        bump(&self.counters.vmalloc);
        Some(p)
    }

    /// kfree with the nesting flag held by the caller.
    #[inline]
    fn kfree(&self, st: &State, p: *mut u8) {
        if st.slab.kfree(p).is_err() {
            bump(&self.counters.bad_frees);
        }
    }

    /// vfree of an area of `vm` (nesting flag held): deferred to vmalloc's
    /// next call in atomic context, where Linux's vfree may not sleep.
    #[cold]
    fn vfree(&self, vm: &HostVmalloc<'static>, p: *mut u8) {
        let r = if crate::in_atomic() {
            vm.vfree_atomic(p)
        } else {
            vm.vfree(p)
        };
        if r.is_err() {
            bump(&self.counters.bad_frees);
        }
    }

    /// Frees a kmem pointer (a kmalloc object or a vmalloc area) with the
    /// nesting flag held.
    #[inline]
    fn free_owned(&self, st: &State, p: *mut u8) {
        match st.vmalloc_of(p) {
            Some(vm) => self.vfree(vm, p),
            None => self.kfree(st, p),
        }
    }

    /// Frees the objects whose free was deferred (nesting flag held).
    #[cold]
    fn drain_deferred(&self, st: &State) {
        // Acquire pairs with defer's Release: the links written before each
        // push are visible here (another thread may have pushed them).
        let mut p = self.deferred.swap(ptr::null_mut(), Acquire);
        while !p.is_null() {
            // SAFETY: deferred objects are dead kmem objects of at least 8
            // bytes, 8-aligned, whose first word links the list.
            let next = unsafe { p.cast::<*mut u8>().read() };
            self.free_owned(st, p);
            p = next;
        }
    }

    /// Pushes a kmem object on the deferred list (freed from inside kmem).
    #[cold]
    fn defer(&self, p: *mut u8) {
        bump(&self.counters.deferred);
        let mut head = self.deferred.load(Relaxed);
        loop {
            // SAFETY: p is a dead kmem object or vmalloc area (at least 8
            // bytes, 8-aligned), ours to reuse until it is freed.
            unsafe { p.cast::<*mut u8>().write(head) };
            match self
                .deferred
                .compare_exchange_weak(head, p, Release, Relaxed)
            {
                Ok(_) => return,
                Err(h) => head = h,
            }
        }
    }
}

impl Default for KmemGlobal {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for KmemGlobal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmemGlobal")
            .field("built", &self.built().is_some())
            .field("ram_bytes", &self.ram_bytes)
            .field("nr_cpus", &self.nr_cpus)
            .field("claim_cpus", &self.claim_cpus)
            .field("stats", &self.stats())
            .finish()
    }
}

fn system_alloc(layout: Layout, zero: bool) -> *mut u8 {
    // SAFETY: GlobalAlloc callers pass non-zero sizes.
    unsafe {
        if zero {
            System.alloc_zeroed(layout)
        } else {
            System.alloc(layout)
        }
    }
}

// SAFETY: every pointer handed out is either a kmalloc object satisfying the
// layout (checked) or a system allocation; frees and reallocs route by
// address (kmem's direct map or not), so each block goes back to the
// allocator it came from. kmem objects stay valid until kfree'd.
unsafe impl GlobalAlloc for KmemGlobal {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { self.alloc_impl(layout, false) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { self.alloc_impl(layout, true) }
    }

    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        match self.built() {
            Some(st) if st.owns(p) => match Outermost::enter() {
                Some(_outer) => {
                    self.claim_once();
                    self.kfree(st, p);
                    if !self.deferred.load(Relaxed).is_null() {
                        self.drain_deferred(st);
                    }
                }
                None => self.defer(p),
            },
            // SAFETY: forwarded contract.
            Some(st) => unsafe { self.dealloc_other(st, p, layout) },
            // SAFETY: no machine, so a system allocation with this layout.
            None => unsafe { System.dealloc(p, layout) },
        }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees new_size rounded to align does not
        // overflow isize.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match self.built() {
            Some(st) if st.owns(p) => {
                if same_class(layout, new) {
                    if let (Some(_outer), Some(p)) = (Outermost::enter(), NonNull::new(p)) {
                        if let Some(q) = resize_in_place(st.slab, p, new, Self::gfp()) {
                            bump(&self.realloc_shard().in_place);
                            return q.as_ptr();
                        }
                    }
                }
                // SAFETY: forwarded contract.
                unsafe { self.realloc_move(p, layout, new) }
            }
            Some(st) => match st.vmalloc_of(p) {
                // SAFETY: forwarded contract; p is an area of vm.
                Some(vm) => unsafe { self.realloc_vmalloc(vm, p, layout, new) },
                // SAFETY: not kmem's, so a system allocation with this layout.
                None => unsafe { System.realloc(p, layout, new_size) },
            },
            // SAFETY: no machine, so a system allocation with this layout.
            None => unsafe { System.realloc(p, layout, new_size) },
        }
    }
}

impl KmemGlobal {
    /// `dealloc` of a pointer outside the direct map: a vmalloc area, else
    /// a system allocation.
    ///
    /// # Safety
    /// As `GlobalAlloc::dealloc`.
    #[cold]
    unsafe fn dealloc_other(&self, st: &State, p: *mut u8, layout: Layout) {
        let Some(vm) = st.vmalloc_of(p) else {
            // SAFETY: not kmem's, so a system allocation with this layout.
            return unsafe { System.dealloc(p, layout) };
        };
        match Outermost::enter() {
            Some(_outer) => {
                self.vfree(vm, p);
                if !self.deferred.load(Relaxed).is_null() {
                    self.drain_deferred(st);
                }
            }
            None => self.defer(p),
        }
    }

    /// `realloc` of a vmalloc area: `vrealloc` (in place while the area's
    /// pages suffice, else a new area with the contents moved), or, in
    /// atomic context, nested, or should vrealloc fail for want of memory or
    /// alignment, a move through `alloc`. A pointer that is not a live area
    /// (a contract breach) is refused and counted as a bad free: null, and
    /// nothing read or freed.
    ///
    /// # Safety
    /// As `GlobalAlloc::realloc`, with `new` the new layout; `p` lies in
    /// `vm`'s range.
    #[cold]
    unsafe fn realloc_vmalloc(
        &self,
        vm: &HostVmalloc<'static>,
        p: *mut u8,
        old: Layout,
        new: Layout,
    ) -> *mut u8 {
        match Outermost::enter() {
            Some(_outer) if !crate::in_atomic() => {
                let gfp = GFP_KERNEL | Gfp::NOWARN;
                match vm.vrealloc_node_align(p, new.size(), new.align(), gfp, NUMA_NO_NODE) {
                    Ok(Some(q)) => {
                        let shard = self.realloc_shard();
                        bump(if q.as_ptr() == p {
                            &shard.in_place
                        } else {
                            &shard.moved
                        });
                        return q.as_ptr();
                    }
                    // Not a live vmalloc area: vrealloc reported it.
                    Err(VmallocError::Realloc(_)) => {
                        bump(&self.counters.bad_frees);
                        return ptr::null_mut();
                    }
                    _ => {}
                }
            }
            // Atomic context or nested: check the area before reading it.
            _ => {
                if vm.find_vm_area(p).is_none() {
                    bump(&self.counters.bad_frees);
                    return ptr::null_mut();
                }
            }
        }
        // SAFETY: forwarded contract.
        unsafe { self.realloc_move(p, old, new) }
    }

    /// The moving `realloc`: a new block from `alloc`, the contents copied,
    /// the old block freed (counted as moved). Null, with `p` untouched, if
    /// `alloc` fails.
    ///
    /// # Safety
    /// As `GlobalAlloc::realloc`, with `new` the new layout.
    unsafe fn realloc_move(&self, p: *mut u8, old: Layout, new: Layout) -> *mut u8 {
        bump(&self.realloc_shard().moved);
        // SAFETY: forwarded contract.
        let q = unsafe { self.alloc(new) };
        if !q.is_null() {
            // SAFETY: both live and distinct; the copy fits both.
            unsafe {
                ptr::copy_nonoverlapping(p, q, old.size().min(new.size()));
                self.dealloc(p, old);
            }
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A free made from inside kmem (nesting flag set) waits on the
    /// deferred list, kmalloc object and vmalloc area alike, and the next
    /// top-level free does it.
    #[test]
    fn frees_from_inside_kmem_are_deferred_then_done() {
        static K: KmemGlobal = KmemGlobal::with_machine(256 << 20, 2);
        assert!(K.init_now());
        let small = Layout::from_size_align(100, 8).unwrap();
        let big = Layout::from_size_align(5 << 20, 8).unwrap();
        // SAFETY: non-zero sizes.
        let (a, b) = unsafe { (K.alloc(small), K.alloc(big)) };
        let vm = K.vmalloc().unwrap();
        assert!(K.owns(a) && vm.is_vmalloc_addr(b));
        {
            let _inside = Outermost::enter().unwrap();
            // SAFETY: live for their layouts.
            unsafe {
                K.dealloc(a, small);
                K.dealloc(b, big);
            }
        }
        assert_eq!(K.stats().deferred, 2);
        assert!(vm.find_vm_area(b).is_some(), "not freed yet");
        // SAFETY: non-zero size; then freed at once, which drains the list.
        unsafe {
            let c = K.alloc(small);
            K.dealloc(c, small);
        }
        assert!(vm.find_vm_area(b).is_none(), "vfree'd by the drain");
        assert_eq!(K.stats().bad_frees, 0);
        // a was kfree'd by the drain too: freeing it again is refused.
        // SAFETY: breaks the contract on purpose; kmem refuses it.
        unsafe { K.dealloc(a, small) };
        assert_eq!(K.stats().bad_frees, 1);
    }

    /// Each `KmemGlobal` seeds its caches from the host's pool, not from
    /// the default constant: the key a freed kmalloc-64 object's slot is
    /// encoded with (NULL encoded: the key itself) differs between two
    /// allocators built the same way.
    #[test]
    fn each_global_allocator_has_its_own_secrets() {
        static A: KmemGlobal = KmemGlobal::with_machine(64 << 20, 2);
        static B: KmemGlobal = KmemGlobal::with_machine(64 << 20, 2);
        let layout = Layout::from_size_align(64, 8).unwrap();
        let key = |k: &KmemGlobal| {
            assert!(k.init_now());
            // SAFETY: non-zero size; freed at once; the slot is then read
            // in the slab page, which stays mapped.
            unsafe {
                let p = k.alloc(layout);
                k.dealloc(p, layout);
                let c = k.slab().unwrap().kmalloc_slab(64, GFP_KERNEL);
                let slot = p as usize + c.freeptr_offset_of(p);
                (slot as *const usize).read() ^ slot.swap_bytes()
            }
        };
        assert_ne!(key(&A), key(&B));
    }
}
