//! Peer frame allocators behind the suite's [`FrameAllocator`] interface.
//!
//! Each peer manages the same frame-number range, [`PEER_FRAMES`] frames from
//! [`PEER_BASE_PFN`], as plain numbers: nothing is mapped or touched, except by
//! frame-alloc, whose metadata lives inside the pool it manages (as kmem's frame
//! records do). For it a 1 GiB zeroed host allocation stands in for the physical
//! range (written at setup: `alloc_zeroed` with page alignment fills it, so a
//! `pages` run holds about 2 GiB of such pools, even with `--only kmem`), and
//! its `Provenance` hook translates frame addresses into that allocation.
//!
//! Orders map to the peers' own calls: buddy allocators take a count of 2^order
//! frames and return naturally aligned blocks; bitmap-allocator takes `alloc()` for
//! one frame and `alloc_contiguous(None, 2^order, order)` (alignment 2^order) for
//! more. The buddy allocators are configured with 11 orders (0..=10), like kmem's
//! MAX_PAGE_ORDER.
//!
//! The versions named in [`DESCRIPTIONS`] must match the pins in bench/Cargo.toml.

use std::alloc::Layout;
use std::num::NonZeroUsize;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bitmap_allocator::{BitAlloc, BitAlloc1M};
use frame_alloc::{
    DepotAllocator, NoCpuId, PageSize, PhysicalAllocator, Provenance, RegionInit,
    SummaryBuddyAllocator,
};

use super::{FrameAllocator, PEER_BASE_PFN, PEER_FRAMES};

/// One line per peer for the text report: name, crate and version, API used.
pub const DESCRIPTIONS: [&str; 5] = [
    "buddy_system_allocator        crate buddy_system_allocator 0.13.0, FrameAllocator<11>::alloc/dealloc (BTreeSet free lists, &mut self, no lock)",
    "buddy_system_allocator+lock   the same behind its LockedFrameAllocator<11> (spin::Mutex), as a shared kernel allocator uses it",
    "bitmap-allocator              crate bitmap-allocator 0.4.6 (rcore-os), BitAlloc1M alloc/dealloc, alloc_contiguous/dealloc_contiguous for order > 0",
    "frame-alloc                   crate frame-alloc 0.1.0, SummaryBuddyAllocator<11> allocate_physical/deallocate_physical (lock-free bitmaps in the pool)",
    "frame-alloc+depot             the same under DepotAllocator<_, NoCpuId, 2> (per-CPU magazines of single frames, shared depot)",
];

/// Number of buddy orders given to the buddy peers: orders 0..=10.
const ORDERS: usize = 11;

/// Frame number range the peers manage.
const FIRST: usize = PEER_BASE_PFN;
const END: usize = PEER_BASE_PFN + PEER_FRAMES;

/// buddy_system_allocator's `FrameAllocator`, used directly (`&mut self`).
pub struct Buddy(buddy_system_allocator::FrameAllocator<ORDERS>);

impl Buddy {
    pub fn new() -> Self {
        let mut a = buddy_system_allocator::FrameAllocator::new();
        a.add_frame(FIRST, END);
        Buddy(a)
    }
}

impl FrameAllocator for Buddy {
    const NAME: &'static str = "buddy_system_allocator";
    type Frame = usize;

    #[inline]
    fn alloc(&mut self, order: u32) -> usize {
        match self.0.alloc(1 << order) {
            Some(f) => f,
            None => out_of_frames(Self::NAME, order),
        }
    }

    #[inline]
    fn free(&mut self, frame: usize, order: u32) {
        self.0.dealloc(frame, 1 << order);
    }

    fn pfn(&self, frame: usize) -> u64 {
        frame as u64
    }
}

/// buddy_system_allocator's `LockedFrameAllocator`: the same behind a spin lock.
pub struct LockedBuddy(buddy_system_allocator::LockedFrameAllocator<ORDERS>);

impl LockedBuddy {
    pub fn new() -> Self {
        let a = buddy_system_allocator::LockedFrameAllocator::new();
        a.lock().add_frame(FIRST, END);
        LockedBuddy(a)
    }
}

impl FrameAllocator for LockedBuddy {
    const NAME: &'static str = "buddy_system_allocator+lock";
    type Frame = usize;

    #[inline]
    fn alloc(&mut self, order: u32) -> usize {
        match self.0.lock().alloc(1 << order) {
            Some(f) => f,
            None => out_of_frames(Self::NAME, order),
        }
    }

    #[inline]
    fn free(&mut self, frame: usize, order: u32) {
        self.0.lock().dealloc(frame, 1 << order);
    }

    fn pfn(&self, frame: usize) -> u64 {
        frame as u64
    }
}

/// bitmap-allocator's 1 Mi-bit segment tree; bit `k` is frame `FIRST + k`
/// (the smallest size that covers 262144 frames; the base offset is how its
/// users, e.g. axallocator's page allocator, address frames).
pub struct Bitmap(Box<BitAlloc1M>);

impl Bitmap {
    pub fn new() -> Self {
        let mut a = Box::new(BitAlloc1M::DEFAULT);
        a.insert(0..PEER_FRAMES);
        Bitmap(a)
    }
}

impl FrameAllocator for Bitmap {
    const NAME: &'static str = "bitmap-allocator";
    /// Bit index, i.e. frame number minus `FIRST`.
    type Frame = usize;

    #[inline]
    fn alloc(&mut self, order: u32) -> usize {
        let bit = if order == 0 {
            self.0.alloc()
        } else {
            self.0.alloc_contiguous(None, 1 << order, order as usize)
        };
        match bit {
            Some(b) => b,
            None => out_of_frames(Self::NAME, order),
        }
    }

    #[inline]
    fn free(&mut self, frame: usize, order: u32) {
        let ok = if order == 0 {
            self.0.dealloc(frame)
        } else {
            self.0.dealloc_contiguous(frame, 1 << order)
        };
        assert!(ok, "bitmap-allocator: free of a free frame {frame:#x}");
    }

    fn pfn(&self, frame: usize) -> u64 {
        (FIRST + frame) as u64
    }
}

/// frame-alloc's base frame: 4 KiB.
const BASE_FRAME: PageSize = PageSize::from_log2(12);
/// Physical address of `FIRST` and length of the managed range.
const PHYS_BASE: usize = FIRST << 12;
const PHYS_LEN: usize = PEER_FRAMES << 12;

/// Host address of the allocation standing in for `[PHYS_BASE, PHYS_BASE +
/// PHYS_LEN)`, one slot per [`PoolProv`] instance; 0 when none is live.
static POOLS: [AtomicUsize; 2] = [const { AtomicUsize::new(0) }; 2];

/// Held by the live pool of each slot: a second instance waits for the first to
/// go (the suite makes one of each; tests running in parallel make more).
static POOL_OWNERS: [Mutex<()>; 2] = [const { Mutex::new(()) }; 2];

/// frame-alloc's `Provenance`: physical address to pointer into pool `ID`.
pub struct PoolProv<const ID: usize>;

// SAFETY: `create` returns a pointer into the live host allocation registered in
// POOLS[ID] (its provenance was exposed when registered), at the same offset as
// `phys` has from PHYS_BASE, so it covers the rest of the range; `destroy` only
// reads the address back. The pool outlives the allocator (see `HostPool`).
unsafe impl<const ID: usize> Provenance for PoolProv<ID> {
    unsafe fn create(phys: usize) -> NonNull<u8> {
        let host = POOLS[ID].load(SeqCst) + (phys - PHYS_BASE);
        // SAFETY: `host` is inside the exposed pool allocation, which is non-null.
        unsafe { NonNull::new_unchecked(ptr::with_exposed_provenance_mut(host)) }
    }

    unsafe fn destroy<T>(ptr: NonNull<T>) -> usize {
        ptr.addr().get() - POOLS[ID].load(SeqCst) + PHYS_BASE
    }
}

/// A 1 GiB zeroed host allocation standing in for the peers' physical range
/// (every byte written at setup, see the module comment).
struct HostPool<const ID: usize> {
    ptr: NonNull<u8>,
    layout: Layout,
    _owner: MutexGuard<'static, ()>,
}

impl<const ID: usize> HostPool<ID> {
    fn new() -> Result<Self, String> {
        let owner = POOL_OWNERS[ID]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let layout = Layout::from_size_align(PHYS_LEN, 4096).expect("valid layout");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or("frame-alloc: cannot reserve a 1 GiB pool")?;
        POOLS[ID].store(ptr.as_ptr().expose_provenance(), SeqCst);
        Ok(HostPool {
            ptr,
            layout,
            _owner: owner,
        })
    }
}

impl<const ID: usize> Drop for HostPool<ID> {
    fn drop(&mut self) {
        POOLS[ID].store(0, SeqCst);
        // SAFETY: allocated in `new` with this layout; the allocator using it was
        // dropped first (field order of its owner).
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

fn frames(order: u32) -> NonZeroUsize {
    NonZeroUsize::new(1 << order).expect("2^order is not zero")
}

/// Shared body of the two frame-alloc contenders.
fn fa_alloc(a: &impl PhysicalAllocator, name: &str, order: u32) -> usize {
    match a.allocate_physical(BASE_FRAME, frames(order)) {
        Ok(phys) => phys,
        Err(_) => out_of_frames(name, order),
    }
}

/// What sets the two frame-alloc contenders apart: the allocator, how it is
/// built, and its name in reports. Implemented only for allocators that reach
/// memory through `PoolProv<POOL>`.
pub trait FaKind<const POOL: usize>: PhysicalAllocator + RegionInit {
    const NAME: &'static str;
    fn build() -> Self;
}

impl<const POOL: usize> FaKind<POOL> for SummaryBuddyAllocator<ORDERS, PoolProv<POOL>> {
    const NAME: &'static str = "frame-alloc";
    fn build() -> Self {
        SummaryBuddyAllocator::new(BASE_FRAME)
    }
}

impl<const POOL: usize> FaKind<POOL>
    for DepotAllocator<SummaryBuddyAllocator<ORDERS, PoolProv<POOL>>, NoCpuId, 2>
{
    const NAME: &'static str = "frame-alloc+depot";
    fn build() -> Self {
        DepotAllocator::new(BASE_FRAME, SummaryBuddyAllocator::new(BASE_FRAME))
    }
}

/// A frame-alloc allocator `A` over host pool `POOL`, the pool its
/// `Provenance` reads.
pub struct FaPeer<A, const POOL: usize> {
    // Declared before `_pool` so that it is dropped first.
    alloc: Box<A>,
    _pool: HostPool<POOL>,
}

/// frame-alloc's `SummaryBuddyAllocator` over pool 0.
pub type SummaryBuddy = FaPeer<SummaryBuddyAllocator<ORDERS, PoolProv<0>>, 0>;

/// frame-alloc's per-CPU magazine cache (2 slots, like kmem's 2 CPUs) over a
/// `SummaryBuddyAllocator` on pool 1.
pub type Depot = FaPeer<DepotAllocator<SummaryBuddyAllocator<ORDERS, PoolProv<1>>, NoCpuId, 2>, 1>;

impl<A: FaKind<POOL>, const POOL: usize> FaPeer<A, POOL> {
    pub fn new() -> Result<Self, String> {
        let pool = HostPool::new()?;
        let alloc = Box::new(A::build());
        // SAFETY: called once, before any allocation; the whole span is usable and
        // reachable through PoolProv<POOL> (the `FaKind<POOL>` bound), which the
        // pool registered above.
        unsafe { alloc.try_init_region(PHYS_BASE, PHYS_LEN) }
            .map_err(|e| format!("{}: init: {e}", A::NAME))?;
        Ok(FaPeer { alloc, _pool: pool })
    }
}

impl<A: FaKind<POOL>, const POOL: usize> FrameAllocator for FaPeer<A, POOL> {
    const NAME: &'static str = A::NAME;
    /// Physical address.
    type Frame = usize;

    #[inline]
    fn alloc(&mut self, order: u32) -> usize {
        fa_alloc(&*self.alloc, Self::NAME, order)
    }

    #[inline]
    fn free(&mut self, frame: usize, order: u32) {
        // SAFETY: `frame` came from `alloc` with the same order and is freed once.
        unsafe {
            self.alloc
                .deallocate_physical(BASE_FRAME, frames(order), frame)
        };
    }

    fn pfn(&self, frame: usize) -> u64 {
        (frame >> 12) as u64
    }
}

#[cold]
#[inline(never)]
fn out_of_frames(name: &str, order: u32) -> ! {
    panic!("{name}: no free block of order {order}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every peer hands out aligned blocks inside its range and takes them back.
    fn exercise<A: FrameAllocator>(mut a: A) {
        for order in [0u32, 3, 10] {
            let blocks: Vec<_> = (0..4).map(|_| a.alloc(order)).collect();
            for &b in &blocks {
                let pfn = a.pfn(b) as usize;
                assert_eq!(pfn % (1 << order), 0, "{} order {order}", A::NAME);
                assert!((FIRST..END).contains(&pfn), "{} pfn {pfn:#x}", A::NAME);
            }
            for b in blocks.into_iter().rev() {
                a.free(b, order);
            }
        }
    }

    #[test]
    fn peers_serve_aligned_blocks_in_range() {
        exercise(Buddy::new());
        exercise(LockedBuddy::new());
        exercise(Bitmap::new());
        exercise(SummaryBuddy::new().unwrap());
        exercise(Depot::new().unwrap());
    }

    /// A pool slot is reused once its previous owner is gone.
    #[test]
    fn pools_are_reusable() {
        for _ in 0..3 {
            exercise(SummaryBuddy::new().unwrap());
        }
    }
}
