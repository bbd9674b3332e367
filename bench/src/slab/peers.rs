//! Peer heap allocators behind the suite's [`Heap`] and [`SharedHeap`]
//! interfaces.
//!
//! Each peer that manages a region gets its own [`Arena`]: 64 MiB from the
//! host, 2 MiB aligned, zeroed at setup (`alloc_zeroed` with an alignment
//! above malloc's writes every byte), so no peer takes a first-touch page
//! fault while timed; a full run holds about 11 such arenas at once.
//! The plain types take `&mut self` and lock nothing; the `+lock` types are
//! the same allocator behind a spin lock: the crate's own locked type where
//! it has one (talc's `TalcLock`, buddy_system_allocator's `LockedHeap`,
//! linked_list_allocator's `LockedHeap`), otherwise `spinning_top::Spinlock`
//! (rlsf, slabmalloc), which is what those crates' documentation suggests.
//!
//! slabmalloc only serves size classes; pages come from its user. Here
//! [`PagePool`] bump-allocates them from the arena: 4 KiB `ObjectPage`s (for
//! objects up to 256 B) out of 2 MiB chunks, and whole 2 MiB
//! `LargeObjectPage`s, on `OutOfMemory`. slabmalloc keeps its empty pages for
//! reuse, so after the warm-up no new page is needed.
//!
//! glibc is the process's own `malloc`/`free` (`aligned_alloc` above 16-byte
//! alignment), thread-safe with per-thread caches, no arena of ours.
//!
//! The versions named in [`DESCRIPTIONS`] must match the pins in
//! bench/Cargo.toml.

use std::alloc::Layout;
use std::ptr::NonNull;

use slabmalloc::{AllocationError, Allocator as _, LargeObjectPage, ObjectPage, ZoneAllocator};
use spinning_top::{RawSpinlock, Spinlock};
use talc::base::Talc as TalcBase;
use talc::source::Manual;
use talc::DefaultBinning;

use super::{Heap, SharedHeap, ARENA_BYTES};

/// (plain name, locked name) of every arena peer, in report order.
pub const NAMES: [(&str, &str); 5] = [
    ("talc", "talc+lock"),
    ("buddy_system_allocator", "buddy_system_allocator+lock"),
    ("linked_list_allocator", "linked_list_allocator+lock"),
    ("rlsf", "rlsf+lock"),
    ("slabmalloc", "slabmalloc+lock"),
];

/// One line per peer for the text report: name, crate and version, API used.
pub const DESCRIPTIONS: [&str; 11] = [
    "talc                          crate talc 5.1.1, base::Talc<Manual, DefaultBinning>: claim(arena), allocate/deallocate",
    "talc+lock                     talc::TalcLock<spinning_top::RawSpinlock, Manual> (lock_api mutex), lock().allocate/deallocate",
    "buddy_system_allocator        crate buddy_system_allocator 0.13.0, Heap<32>: init(arena), alloc/dealloc",
    "buddy_system_allocator+lock   its LockedHeap<32> (spin::Mutex), lock().alloc/dealloc",
    "linked_list_allocator         crate linked_list_allocator 0.10.6, Heap: init(arena), allocate_first_fit/deallocate",
    "linked_list_allocator+lock    its LockedHeap (spinning_top::Spinlock), lock().allocate_first_fit/deallocate",
    "rlsf                          crate rlsf 0.2.3, Tlsf<u32, u32, 24, 32>: insert_free_block_ptr(arena), allocate/deallocate",
    "rlsf+lock                     the same in a spinning_top 0.3 Spinlock (rlsf has no locked arena type)",
    "slabmalloc                    crate slabmalloc 0.11.0 (default features off: 'unstable' needs nightly), ZoneAllocator, refilled with 4 KiB/2 MiB pages from the arena",
    "slabmalloc+lock               the same in a spinning_top 0.3 Spinlock (slabmalloc has no locked type)",
    "glibc                         the process's malloc/free (aligned_alloc above 16-byte alignment), thread-safe, per-thread tcache",
];

/// 64 MiB of host memory, 2 MiB aligned, written with zeros at setup.
pub struct Arena {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the arena is plain memory owned by whoever owns the `Arena`.
unsafe impl Send for Arena {}
// SAFETY: `&Arena` only hands out its address.
unsafe impl Sync for Arena {}

impl Arena {
    /// Alignment of the arena: slabmalloc's large page size.
    pub const ALIGN: usize = 2 << 20;

    pub fn new() -> Result<Arena, String> {
        let layout = Layout::from_size_align(ARENA_BYTES, Self::ALIGN).expect("valid layout");
        // SAFETY: non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or("cannot reserve a 64 MiB arena")?;
        Ok(Arena { ptr, layout })
    }

    pub fn base(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.layout.size()
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; every allocator using
        // it is declared before it in its owner, so it is gone.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

#[cold]
#[inline(never)]
fn exhausted(name: &str, layout: Layout) -> ! {
    panic!("{name}: no memory for {layout:?} in its 64 MiB arena")
}

// ---------------------------------------------------------------- talc

/// talc's allocator core, used directly.
pub struct Talc {
    talc: TalcBase<Manual, DefaultBinning>,
    _arena: Arena,
}

impl Talc {
    pub fn new() -> Result<Self, String> {
        let arena = Arena::new()?;
        let mut talc = TalcBase::new(Manual);
        // SAFETY: the arena is ours, unused, and outlives `talc`.
        unsafe { talc.claim(arena.base(), arena.len()) }.ok_or("talc: claim failed")?;
        Ok(Talc {
            talc,
            _arena: arena,
        })
    }
}

impl Heap for Talc {
    fn name(&self) -> &'static str {
        "talc"
    }
    #[inline]
    fn alloc(&mut self, layout: Layout) -> NonNull<u8> {
        // SAFETY: layouts in this suite have non-zero sizes.
        match unsafe { self.talc.allocate(layout) } {
            Some(p) => p,
            None => exhausted("talc", layout),
        }
    }
    #[inline]
    unsafe fn free(&mut self, p: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { self.talc.deallocate(p.as_ptr(), layout) }
    }
}

/// talc's `TalcLock` over a spin lock.
pub struct TalcLock {
    talc: talc::TalcLock<RawSpinlock, Manual>,
    _arena: Arena,
}

impl TalcLock {
    pub fn new() -> Result<Self, String> {
        let arena = Arena::new()?;
        let talc = talc::TalcLock::<RawSpinlock, Manual>::new(Manual);
        // SAFETY: as in `Talc::new`.
        unsafe { talc.lock().claim(arena.base(), arena.len()) }.ok_or("talc: claim failed")?;
        Ok(TalcLock {
            talc,
            _arena: arena,
        })
    }
}

impl SharedHeap for TalcLock {
    fn name(&self) -> &'static str {
        "talc+lock"
    }
    #[inline]
    fn alloc(&self, layout: Layout) -> NonNull<u8> {
        // SAFETY: non-zero sizes.
        match unsafe { self.talc.lock().allocate(layout) } {
            Some(p) => p,
            None => exhausted("talc+lock", layout),
        }
    }
    #[inline]
    unsafe fn free(&self, p: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { self.talc.lock().deallocate(p.as_ptr(), layout) }
    }
}

// ---------------------------------------------------------------- buddy_system_allocator

/// Orders of the buddy heaps (the crate's usual choice).
const BUDDY_ORDER: usize = 32;

/// buddy_system_allocator's `Heap`, used directly.
pub struct Buddy {
    heap: buddy_system_allocator::Heap<BUDDY_ORDER>,
    _arena: Arena,
}

impl Buddy {
    pub fn new() -> Result<Self, String> {
        let arena = Arena::new()?;
        let mut heap = buddy_system_allocator::Heap::empty();
        // SAFETY: the arena is ours, unused, and outlives the heap.
        unsafe { heap.init(arena.base() as usize, arena.len()) };
        Ok(Buddy {
            heap,
            _arena: arena,
        })
    }
}

impl Heap for Buddy {
    fn name(&self) -> &'static str {
        "buddy_system_allocator"
    }
    #[inline]
    fn alloc(&mut self, layout: Layout) -> NonNull<u8> {
        match self.heap.alloc(layout) {
            Ok(p) => p,
            Err(()) => exhausted("buddy_system_allocator", layout),
        }
    }
    #[inline]
    unsafe fn free(&mut self, p: NonNull<u8>, layout: Layout) {
        self.heap.dealloc(p, layout)
    }
}

/// buddy_system_allocator's `LockedHeap` (a `spin::Mutex` around `Heap`).
pub struct LockedBuddy {
    heap: buddy_system_allocator::LockedHeap<BUDDY_ORDER>,
    _arena: Arena,
}

impl LockedBuddy {
    pub fn new() -> Result<Self, String> {
        let arena = Arena::new()?;
        let heap = buddy_system_allocator::LockedHeap::empty();
        // SAFETY: as in `Buddy::new`.
        unsafe { heap.lock().init(arena.base() as usize, arena.len()) };
        Ok(LockedBuddy {
            heap,
            _arena: arena,
        })
    }
}

impl SharedHeap for LockedBuddy {
    fn name(&self) -> &'static str {
        "buddy_system_allocator+lock"
    }
    #[inline]
    fn alloc(&self, layout: Layout) -> NonNull<u8> {
        match self.heap.lock().alloc(layout) {
            Ok(p) => p,
            Err(()) => exhausted("buddy_system_allocator+lock", layout),
        }
    }
    #[inline]
    unsafe fn free(&self, p: NonNull<u8>, layout: Layout) {
        self.heap.lock().dealloc(p, layout)
    }
}

// ---------------------------------------------------------------- linked_list_allocator

/// linked_list_allocator's `Heap`, used directly.
pub struct LinkedList {
    heap: linked_list_allocator::Heap,
    _arena: Arena,
}

impl LinkedList {
    pub fn new() -> Result<Self, String> {
        let arena = Arena::new()?;
        let mut heap = linked_list_allocator::Heap::empty();
        // SAFETY: the arena is ours, unused, and outlives the heap.
        unsafe { heap.init(arena.base(), arena.len()) };
        Ok(LinkedList {
            heap,
            _arena: arena,
        })
    }
}

impl Heap for LinkedList {
    fn name(&self) -> &'static str {
        "linked_list_allocator"
    }
    #[inline]
    fn alloc(&mut self, layout: Layout) -> NonNull<u8> {
        match self.heap.allocate_first_fit(layout) {
            Ok(p) => p,
            Err(()) => exhausted("linked_list_allocator", layout),
        }
    }
    #[inline]
    unsafe fn free(&mut self, p: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { self.heap.deallocate(p, layout) }
    }
}

/// linked_list_allocator's `LockedHeap` (a `spinning_top::Spinlock`).
pub struct LockedLinkedList {
    heap: linked_list_allocator::LockedHeap,
    _arena: Arena,
}

impl LockedLinkedList {
    pub fn new() -> Result<Self, String> {
        let arena = Arena::new()?;
        let heap = linked_list_allocator::LockedHeap::empty();
        // SAFETY: as in `LinkedList::new`.
        unsafe { heap.lock().init(arena.base(), arena.len()) };
        Ok(LockedLinkedList {
            heap,
            _arena: arena,
        })
    }
}

impl SharedHeap for LockedLinkedList {
    fn name(&self) -> &'static str {
        "linked_list_allocator+lock"
    }
    #[inline]
    fn alloc(&self, layout: Layout) -> NonNull<u8> {
        match self.heap.lock().allocate_first_fit(layout) {
            Ok(p) => p,
            Err(()) => exhausted("linked_list_allocator+lock", layout),
        }
    }
    #[inline]
    unsafe fn free(&self, p: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { self.heap.lock().deallocate(p, layout) }
    }
}

// ---------------------------------------------------------------- rlsf

/// rlsf's TLSF: 24 first-level classes (blocks up to 512 MiB), 32 second-level.
type Tlsf = rlsf::Tlsf<'static, u32, u32, 24, 32>;

/// A TLSF over a fresh arena.
fn new_tlsf() -> Result<(Tlsf, Arena), String> {
    let arena = Arena::new()?;
    let mut tlsf = Tlsf::new();
    let block = NonNull::slice_from_raw_parts(
        NonNull::new(arena.base()).expect("arena is not null"),
        arena.len(),
    );
    // SAFETY: the arena is ours, unused, and outlives the TLSF (its owner
    // declares it last).
    unsafe { tlsf.insert_free_block_ptr(block) }.ok_or("rlsf: arena too small")?;
    Ok((tlsf, arena))
}

/// rlsf's `Tlsf`, used directly.
pub struct Rlsf {
    tlsf: Tlsf,
    _arena: Arena,
}

impl Rlsf {
    pub fn new() -> Result<Self, String> {
        let (tlsf, arena) = new_tlsf()?;
        Ok(Rlsf {
            tlsf,
            _arena: arena,
        })
    }
}

impl Heap for Rlsf {
    fn name(&self) -> &'static str {
        "rlsf"
    }
    #[inline]
    fn alloc(&mut self, layout: Layout) -> NonNull<u8> {
        match self.tlsf.allocate(layout) {
            Some(p) => p,
            None => exhausted("rlsf", layout),
        }
    }
    #[inline]
    unsafe fn free(&mut self, p: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { self.tlsf.deallocate(p, layout.align()) }
    }
}

/// rlsf's `Tlsf` in a spin lock.
pub struct LockedRlsf {
    tlsf: Spinlock<Tlsf>,
    _arena: Arena,
}

// SAFETY: the TLSF is only reached through the lock, and its raw pointers
// point into the arena, which lives as long as it.
unsafe impl Send for LockedRlsf {}
// SAFETY: as above.
unsafe impl Sync for LockedRlsf {}

impl LockedRlsf {
    pub fn new() -> Result<Self, String> {
        let (tlsf, arena) = new_tlsf()?;
        Ok(LockedRlsf {
            tlsf: Spinlock::new(tlsf),
            _arena: arena,
        })
    }
}

impl SharedHeap for LockedRlsf {
    fn name(&self) -> &'static str {
        "rlsf+lock"
    }
    #[inline]
    fn alloc(&self, layout: Layout) -> NonNull<u8> {
        match self.tlsf.lock().allocate(layout) {
            Some(p) => p,
            None => exhausted("rlsf+lock", layout),
        }
    }
    #[inline]
    unsafe fn free(&self, p: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { self.tlsf.lock().deallocate(p, layout.align()) }
    }
}

// ---------------------------------------------------------------- slabmalloc

/// slabmalloc's base page and large page sizes.
const BASE_PAGE: usize = 4096;
const LARGE_PAGE: usize = 2 << 20;

/// Pages for slabmalloc, bump-allocated from an arena and never returned
/// (slabmalloc keeps its empty pages itself).
pub struct PagePool {
    arena: Arena,
    /// Next unused 2 MiB chunk.
    next_chunk: usize,
    /// The chunk small pages are being cut from, and the offset of the next.
    small: Option<(usize, usize)>,
}

impl PagePool {
    fn new() -> Result<Self, String> {
        Ok(PagePool {
            arena: Arena::new()?,
            next_chunk: 0,
            small: None,
        })
    }

    fn chunk(&mut self, layout: Layout) -> *mut u8 {
        if (self.next_chunk + 1) * LARGE_PAGE > self.arena.len() {
            exhausted("slabmalloc", layout);
        }
        let c = self.next_chunk;
        self.next_chunk += 1;
        // SAFETY: inside the arena (checked above).
        unsafe { self.arena.base().add(c * LARGE_PAGE) }
    }

    fn base_page(&mut self, layout: Layout) -> *mut u8 {
        let (chunk, off) = match self.small {
            Some((c, off)) if off < LARGE_PAGE => (c, off),
            _ => (self.chunk(layout) as usize, 0),
        };
        self.small = Some((chunk, off + BASE_PAGE));
        (chunk + off) as *mut u8
    }
}

/// slabmalloc's `ZoneAllocator` and the pages it is refilled from.
pub struct SlabMallocInner {
    // Declared before `pages` so that it is dropped first.
    zone: ZoneAllocator<'static>,
    pages: PagePool,
}

// SAFETY: the zone's pages live in the pool's arena, which moves with it.
unsafe impl Send for SlabMallocInner {}

impl SlabMallocInner {
    fn new() -> Result<Self, String> {
        Ok(SlabMallocInner {
            zone: ZoneAllocator::new(),
            pages: PagePool::new()?,
        })
    }

    #[inline]
    fn alloc(&mut self, name: &str, layout: Layout) -> NonNull<u8> {
        match self.zone.allocate(layout) {
            Ok(p) => p,
            Err(AllocationError::OutOfMemory) => self.refill_and_alloc(name, layout),
            Err(AllocationError::InvalidLayout) => exhausted(name, layout),
        }
    }

    #[cold]
    #[inline(never)]
    fn refill_and_alloc(&mut self, name: &str, layout: Layout) -> NonNull<u8> {
        // SAFETY: fresh, zeroed, suitably aligned pages from our arena, never
        // handed out twice, living as long as the zone (field order).
        let refilled = unsafe {
            if layout.size() <= ZoneAllocator::MAX_BASE_ALLOC_SIZE {
                let page = &mut *(self.pages.base_page(layout) as *mut ObjectPage<'static>);
                self.zone.refill(layout, page)
            } else {
                let page = &mut *(self.pages.chunk(layout) as *mut LargeObjectPage<'static>);
                self.zone.refill_large(layout, page)
            }
        };
        match refilled.and_then(|()| self.zone.allocate(layout)) {
            Ok(p) => p,
            Err(_) => exhausted(name, layout),
        }
    }

    #[inline]
    unsafe fn free(&mut self, p: NonNull<u8>, layout: Layout) {
        if self.zone.deallocate(p, layout).is_err() {
            panic!("slabmalloc: deallocate({p:p}, {layout:?}) refused");
        }
    }
}

/// slabmalloc, used directly.
pub struct SlabMalloc(SlabMallocInner);

impl SlabMalloc {
    pub fn new() -> Result<Self, String> {
        Ok(SlabMalloc(SlabMallocInner::new()?))
    }
}

impl Heap for SlabMalloc {
    fn name(&self) -> &'static str {
        "slabmalloc"
    }
    #[inline]
    fn alloc(&mut self, layout: Layout) -> NonNull<u8> {
        self.0.alloc("slabmalloc", layout)
    }
    #[inline]
    unsafe fn free(&mut self, p: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { self.0.free(p, layout) }
    }
}

/// slabmalloc in a spin lock.
pub struct LockedSlabMalloc(Spinlock<SlabMallocInner>);

impl LockedSlabMalloc {
    pub fn new() -> Result<Self, String> {
        Ok(LockedSlabMalloc(Spinlock::new(SlabMallocInner::new()?)))
    }
}

impl SharedHeap for LockedSlabMalloc {
    fn name(&self) -> &'static str {
        "slabmalloc+lock"
    }
    #[inline]
    fn alloc(&self, layout: Layout) -> NonNull<u8> {
        self.0.lock().alloc("slabmalloc+lock", layout)
    }
    #[inline]
    unsafe fn free(&self, p: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { self.0.lock().free(p, layout) }
    }
}

// ---------------------------------------------------------------- glibc

/// glibc's malloc: the largest alignment plain `malloc` guarantees on x86-64.
const MALLOC_ALIGN: usize = 16;

/// The process's C allocator.
pub struct Glibc;

impl SharedHeap for Glibc {
    fn name(&self) -> &'static str {
        "glibc"
    }
    #[inline]
    fn alloc(&self, layout: Layout) -> NonNull<u8> {
        // SAFETY: plain C allocation calls; aligned_alloc gets a power-of-two
        // alignment.
        let p = unsafe {
            if layout.align() <= MALLOC_ALIGN {
                libc::malloc(layout.size())
            } else {
                libc::aligned_alloc(layout.align(), layout.size())
            }
        };
        match NonNull::new(p.cast::<u8>()) {
            Some(p) => p,
            None => exhausted("glibc", layout),
        }
    }
    #[inline]
    unsafe fn free(&self, p: NonNull<u8>, _layout: Layout) {
        // SAFETY: from malloc/aligned_alloc, freed once.
        unsafe { libc::free(p.as_ptr().cast()) }
    }
}
