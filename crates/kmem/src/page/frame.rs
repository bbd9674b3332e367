//! Frame records: one compact record per 4 KiB frame, found from a pfn in O(1).
//!
//! Like Linux's `struct page` array under SPARSEMEM, records live in managed
//! memory (carved out of RAM at boot) in one array per 128 MiB *section*; a
//! section table maps `pfn >> SECTION_SHIFT` to its array. Sections without RAM
//! have no array, so a sparse physical layout (holes, RAM above 4 GiB) costs
//! nothing for the holes.
//!
//! A record is 32 bytes. Only the *head* frame of a block carries its state:
//! a free block's head is [`FrameState::Buddy`] (on a zone free list) or
//! [`FrameState::Pcp`] (on a per-CPU list), an allocated block's head is
//! [`FrameState::Allocated`]; every other frame of the block is a `Tail`.
//! Free lists link through the `next`/`prev` fields (pfns, `u32`), so no list
//! ever needs memory of its own.
//!
//! Every field is an atomic accessed with `Relaxed` ordering: mutation happens
//! under the zone lock or by the per-CPU list owner, and the atomics only make
//! lock-free peeks (a double-free check, a watermark read) well defined. On
//! x86-64 they compile to plain loads and stores.

use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};

/// Frames per memory section (128 MiB, as Linux's x86-64 SECTION_SIZE_BITS 27).
pub const SECTION_SHIFT: u32 = 15;
/// Pages per section.
pub const PAGES_PER_SECTION: u64 = 1 << SECTION_SHIFT;
/// "No frame" in a link field.
pub(crate) const NIL: u32 = u32::MAX;

/// What a frame is, as far as the page allocator knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameState {
    /// Not the head of anything: inside a larger block (free or allocated).
    Tail = 0,
    /// No RAM behind this frame (a hole inside a section).
    Hole = 1,
    /// RAM that is never handed out: firmware, the memory map itself.
    Reserved = 2,
    /// Head of a free block on a zone free list.
    Buddy = 3,
    /// Head of a free block cached on a per-CPU list.
    Pcp = 4,
    /// Head of an allocated block.
    Allocated = 5,
}

impl FrameState {
    fn from_bits(b: u32) -> FrameState {
        match b & 0xf {
            1 => FrameState::Hole,
            2 => FrameState::Reserved,
            3 => FrameState::Buddy,
            4 => FrameState::Pcp,
            5 => FrameState::Allocated,
            _ => FrameState::Tail,
        }
    }
}

/// Flag bits kept beside the state.
pub mod flags {
    /// Head of a compound allocation (`__GFP_COMP`).
    pub const COMPOUND_HEAD: u32 = 1 << 8;
    /// Tail of a compound allocation; `private[0]` holds the head pfn,
    /// unless the block's owner relabelled the tail (its owner tag set, as
    /// the slab layer does): then the low 32 bits of `private[1]` do
    /// ([`super::Frame::compound_head_pfn`]).
    pub const COMPOUND_TAIL: u32 = 1 << 9;
}

// info: state 0..4 | order 4..8 | flags 8..16 | owner 16..24 | migratetype 24..27
// meta: zone 0..2 | node 2..8 | pageblock migratetype 8..11
const ORDER_SHIFT: u32 = 4;
const OWNER_SHIFT: u32 = 16;
const MT_SHIFT: u32 = 24;
const PB_MT_SHIFT: u32 = 8;

/// The record of one physical frame.
#[repr(C, align(32))]
pub struct Frame {
    info: AtomicU32,
    meta: AtomicU32,
    pub(crate) next: AtomicU32,
    pub(crate) prev: AtomicU32,
    /// Two words for whoever owns the frame (slab: cache and freelist; a
    /// compound tail: its head).
    pub private: [AtomicUsize; 2],
}

const _: () = assert!(core::mem::size_of::<Frame>() == 32);

impl Frame {
    /// Its state.
    #[inline]
    pub fn state(&self) -> FrameState {
        FrameState::from_bits(self.info.load(Relaxed))
    }
    /// Order of the block it heads (meaningful for Buddy, Pcp, Allocated).
    #[inline]
    pub fn order(&self) -> u32 {
        (self.info.load(Relaxed) >> ORDER_SHIFT) & 0xf
    }
    /// The whole info word, for callers that test several fields at once.
    #[inline]
    pub(crate) fn info(&self) -> u32 {
        self.info.load(Relaxed)
    }
    /// The head pfn a compound tail record names (see
    /// [`flags::COMPOUND_TAIL`]): `private[0]`, or for a tail its block's
    /// owner relabelled (owner tag set), the low 32 bits of `private[1]`.
    #[inline]
    pub fn compound_head_pfn(&self) -> u64 {
        if self.owner() != 0 {
            self.private[1].load(Relaxed) as u64 & 0xffff_ffff
        } else {
            self.private[0].load(Relaxed) as u64
        }
    }
    /// The info word an allocated head of `order` without flags would have,
    /// ignoring the migrate type and owner bits.
    #[inline]
    pub(crate) const fn allocated_info(order: u32) -> u32 {
        FrameState::Allocated as u32 | (order << ORDER_SHIFT)
    }
    /// Mask of state, order and flag bits in the info word.
    pub(crate) const INFO_STATE_ORDER_FLAGS: u32 = 0xffff;
    /// Mask of the owner tag in the info word.
    pub(crate) const INFO_OWNER: u32 = 0xff << OWNER_SHIFT;
    /// Flag bits (see [`flags`]).
    #[inline]
    pub fn flags(&self) -> u32 {
        self.info.load(Relaxed) & 0xff00
    }
    /// Owner tag set by higher layers (0 = page allocator only).
    #[inline]
    pub fn owner(&self) -> u8 {
        Self::info_owner(self.info.load(Relaxed))
    }
    /// The owner tag of an info word ([`Self::info`], read once for
    /// several fields).
    #[inline(always)]
    pub(crate) const fn info_owner(info: u32) -> u8 {
        (info >> OWNER_SHIFT) as u8
    }
    /// Migrate type the block was allocated with, or the free list it is on.
    #[inline]
    pub fn migratetype_index(&self) -> usize {
        ((self.info.load(Relaxed) >> MT_SHIFT) & 0x7) as usize
    }
    /// Zone index within its node (0 DMA, 1 DMA32, 2 Normal).
    #[inline]
    pub fn zone_index(&self) -> usize {
        (self.meta.load(Relaxed) & 0x3) as usize
    }
    /// NUMA node.
    #[inline]
    pub fn node(&self) -> usize {
        ((self.meta.load(Relaxed) >> 2) & 0x3f) as usize
    }
    /// Zone slot (node * 3 + zone index), the key of zone arrays.
    #[inline]
    pub(crate) fn zone_slot(&self) -> usize {
        self.node() * 3 + self.zone_index()
    }
    #[inline]
    pub(crate) fn set(&self, state: FrameState, order: u32, flags: u32, mt: usize) {
        self.info.store(
            state as u32 | (order << ORDER_SHIFT) | flags | ((mt as u32) << MT_SHIFT),
            Relaxed,
        );
    }
    /// Sets the owner tag, keeping the rest. For higher layers (slab, vmalloc).
    #[inline]
    pub fn set_owner(&self, owner: u8) {
        let v = self.info.load(Relaxed);
        self.info.store(
            (v & !(0xff << OWNER_SHIFT)) | ((owner as u32) << OWNER_SHIFT),
            Relaxed,
        );
    }
    pub(crate) fn init_meta(&self, zone: usize, node: usize) {
        let pb = self.meta.load(Relaxed) & (0x7 << PB_MT_SHIFT);
        self.meta
            .store(zone as u32 | ((node as u32) << 2) | pb, Relaxed);
    }
    #[inline]
    pub(crate) fn same_zone(&self, other: &Frame) -> bool {
        (self.meta.load(Relaxed) & 0xff) == (other.meta.load(Relaxed) & 0xff)
    }
    /// Pageblock migrate type (stored in the first frame of each pageblock).
    #[inline]
    pub(crate) fn pageblock_mt(&self) -> usize {
        ((self.meta.load(Relaxed) >> PB_MT_SHIFT) & 0x7) as usize
    }
    #[inline]
    pub(crate) fn set_pageblock_mt(&self, mt: usize) {
        let v = self.meta.load(Relaxed);
        self.meta.store(
            (v & !(0x7 << PB_MT_SHIFT)) | ((mt as u32) << PB_MT_SHIFT),
            Relaxed,
        );
    }
}

/// The section table: pfn -> frame record.
///
/// The largest run of sections whose arrays lie one after another (the
/// page allocator takes each run of sections with RAM in one block when it
/// can) is indexed directly, as Linux's `vmemmap` indexes all of memory:
/// one subtraction and one compare instead of two dependent loads.
pub(crate) struct Memmap {
    /// First record of the direct run: that of pfn `flat_lo`.
    flat_base: usize,
    /// First pfn of the direct run.
    flat_lo: u64,
    /// Pfns in the direct run (0: none).
    flat_len: u64,
    /// Address of an array of `nr_sections` words; each word is the address of
    /// that section's `[Frame; PAGES_PER_SECTION]` array, or 0.
    table: *const usize,
    nr_sections: usize,
}

// SAFETY: the table is written once at init and read-only afterwards; the
// frames themselves are atomics.
unsafe impl Send for Memmap {}
unsafe impl Sync for Memmap {}

impl Memmap {
    /// # Safety
    /// `table` must point to `nr_sections` initialised words that stay valid
    /// for the life of the allocator, each 0 or the address of a valid,
    /// initialised frame array; the `flat_len` pfns from `flat_lo` (whole
    /// sections) must have their records in one array at `flat_base`, the
    /// same arrays the table names.
    pub(crate) unsafe fn new(
        table: *const usize,
        nr_sections: usize,
        flat_base: usize,
        flat_lo: u64,
        flat_len: u64,
    ) -> Memmap {
        debug_assert!(flat_lo.is_multiple_of(PAGES_PER_SECTION));
        debug_assert!(flat_len.is_multiple_of(PAGES_PER_SECTION));
        Memmap {
            flat_base,
            flat_lo,
            flat_len,
            table,
            nr_sections,
        }
    }

    /// The record of `pfn` if it lies in the direct run, without the
    /// section table; None anywhere else (where [`Self::frame`] may still
    /// find one). For the slab's `kfree` fast path, whose other pfns take
    /// the full path.
    #[inline(always)]
    pub(crate) fn frame_direct(&self, pfn: u64) -> Option<&Frame> {
        let i = pfn.wrapping_sub(self.flat_lo);
        if i >= self.flat_len {
            return None;
        }
        let f = (self.flat_base as *const Frame).wrapping_add(i as usize);
        // SAFETY: the direct run's records are one array (`new`), so `f` is
        // a valid (and so non-null) record.
        unsafe {
            core::hint::assert_unchecked(!f.is_null());
            Some(&*f)
        }
    }

    /// First pfn and length of the direct run.
    pub(crate) fn direct_run(&self) -> (u64, u64) {
        (self.flat_lo, self.flat_len)
    }

    /// The record of `pfn`, if a section with RAM covers it.
    #[inline(always)]
    pub(crate) fn frame(&self, pfn: u64) -> Option<&Frame> {
        let s = (pfn >> SECTION_SHIFT) as usize;
        if s >= self.nr_sections {
            return None;
        }
        // SAFETY: s < nr_sections; entries are valid per `new`'s contract.
        let base = unsafe { *self.table.add(s) };
        if base == 0 {
            return None;
        }
        // SAFETY: the section array holds PAGES_PER_SECTION frames.
        Some(unsafe { &*(base as *const Frame).add((pfn & (PAGES_PER_SECTION - 1)) as usize) })
    }

    /// The record of the first frame of `pfn`'s pageblock (the one holding
    /// the pageblock's type), found from `f`, the record of `pfn` itself,
    /// without the section table: a pageblock never crosses a section, so
    /// its first record is in the same array.
    #[inline(always)]
    pub(crate) fn pageblock_frame<'a>(&self, f: &'a Frame, pfn: u64) -> &'a Frame {
        const { assert!(PAGES_PER_SECTION.is_multiple_of(crate::addr::PAGEBLOCK_NR_PAGES)) };
        debug_assert!(core::ptr::eq(f, self.frame_unchecked(pfn)));
        let back = (pfn & (crate::addr::PAGEBLOCK_NR_PAGES - 1)) as usize;
        // SAFETY: `f` is `pfn`'s record in its section's array, and the
        // pageblock's first frame is `back` records before it in the same
        // array (sections are whole pageblocks, checked above).
        unsafe { &*(f as *const Frame).sub(back) }
    }

    /// The record of a pfn known to be valid (a free-list link, a buddy of
    /// a valid frame in the same section).
    #[inline(always)]
    pub(crate) fn frame_unchecked(&self, pfn: u64) -> &Frame {
        match self.frame(pfn) {
            Some(f) => f,
            None => panic!("kmem: frame record missing for pfn {pfn:#x}: memory map corrupted"),
        }
    }
}
