//! One slab: a compound block of 2^order pages cut into equal objects.
//!
//! A slab has no header in its own memory: everything SLUB keeps in
//! `struct slab` lives in the *head frame record* of the block, so object
//! 0 starts at the first byte and power-of-two objects stay naturally aligned.
//!
//! ```text
//!   head frame record (32 bytes, see page/frame.rs)
//!   ├─ owner tag   OWNER_SLAB                (what kfree looks at first)
//!   ├─ private[0]  &KmemCache                (the slab's cache)
//!   ├─ private[1]  Word: one atomic u64      (free list + counters, below)
//!   └─ next, prev  pfns                      (partial / full list links)
//! ```
//!
//! `Word` packs what Linux updates with `cmpxchg_double` on (freelist,
//! counters) into one machine word, so a plain compare-and-swap suffices:
//!
//! ```text
//!   bits  0..16  index of the first free object (0xffff: none)
//!   bits 16..32  inuse: objects not on the slab's free list
//!   bits 32..48  objects in this slab
//!   bit  48      FROZEN: the active slab of some CPU
//!   bit  49      ON_PARTIAL: on its node's partial list
//!   bit  50      ON_FULL: on its node's full list (debug caches only)
//!   bit  51      DISABLED: failed a consistency check, never allocated from
//! ```
//!
//! The free list itself is threaded through the free objects: each holds the
//! (encoded) address of the next at the cache's free-pointer offset. Only two
//! operations ever touch a slab's list without the node lock: *push* (a free)
//! and *take all* (a CPU making the slab its active slab). With no lock-free
//! pop there is no ABA problem, and single pops (debug and contended paths)
//! run under the node lock, which excludes every other pop.

use crate::addr::PAGE_SIZE;
use crate::page::Frame;
use core::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};

/// "No slab" in a list link or per-CPU slot.
pub(crate) const NIL: u32 = u32::MAX;
/// "No free object" in a [`Word`].
pub(crate) const NO_FREE: u32 = 0xffff;
/// Most objects a slab can hold (indices are 16 bits, 0xffff reserved).
pub(crate) const MAX_OBJS_PER_SLAB: u32 = 32767;

const FREE_MASK: u64 = 0xffff;
const INUSE_SHIFT: u32 = 16;
const OBJECTS_SHIFT: u32 = 32;
/// The slab is some CPU's active slab.
pub(crate) const FROZEN: u64 = 1 << 48;
/// The slab is on its node's partial list.
pub(crate) const ON_PARTIAL: u64 = 1 << 49;
/// The slab is on its node's full list (debug caches).
pub(crate) const ON_FULL: u64 = 1 << 50;
/// The slab failed a consistency check: never allocate from it again.
pub(crate) const DISABLED: u64 = 1 << 51;

const _: () = assert!(usize::BITS == 64, "kmem's slab word needs 64-bit usize");

/// The packed free list head and counters of a slab.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Word(pub(crate) u64);

impl Word {
    /// A word with the given free head, inuse and object counts, no flags.
    #[inline]
    pub(crate) const fn new(free: u32, inuse: u32, objects: u32) -> Word {
        Word(
            (free as u64 & FREE_MASK)
                | ((inuse as u64 & 0xffff) << INUSE_SHIFT)
                | ((objects as u64 & 0xffff) << OBJECTS_SHIFT),
        )
    }
    /// Index of the first free object, or [`NO_FREE`].
    #[inline]
    pub(crate) const fn free(self) -> u32 {
        (self.0 & FREE_MASK) as u32
    }
    /// True if the slab's own free list is not empty.
    #[inline]
    pub(crate) const fn has_free(self) -> bool {
        self.free() != NO_FREE
    }
    /// Objects not on the slab's own free list.
    #[inline]
    pub(crate) const fn inuse(self) -> u32 {
        ((self.0 >> INUSE_SHIFT) & 0xffff) as u32
    }
    /// Objects in the slab.
    #[inline]
    pub(crate) const fn objects(self) -> u32 {
        ((self.0 >> OBJECTS_SHIFT) & 0xffff) as u32
    }
    /// True if `bit` (one of the flag constants) is set.
    #[inline]
    pub(crate) const fn has(self, bit: u64) -> bool {
        self.0 & bit != 0
    }
    /// Same word with another free head.
    #[inline]
    pub(crate) const fn with_free(self, free: u32) -> Word {
        Word((self.0 & !FREE_MASK) | (free as u64 & FREE_MASK))
    }
    /// Same word with another inuse count.
    #[inline]
    pub(crate) const fn with_inuse(self, inuse: u32) -> Word {
        Word((self.0 & !(0xffff << INUSE_SHIFT)) | ((inuse as u64 & 0xffff) << INUSE_SHIFT))
    }
    /// Same word with another object count.
    #[inline]
    pub(crate) const fn with_objects(self, objects: u32) -> Word {
        Word((self.0 & !(0xffff << OBJECTS_SHIFT)) | ((objects as u64 & 0xffff) << OBJECTS_SHIFT))
    }
    /// Same word with `bit` set to `on`.
    #[inline]
    pub(crate) const fn with(self, bit: u64, on: bool) -> Word {
        if on {
            Word(self.0 | bit)
        } else {
            Word(self.0 & !bit)
        }
    }
}

/// A slab seen through its head frame: pfn, record and direct-map address.
#[derive(Clone, Copy)]
pub(crate) struct SlabRef<'f> {
    /// Pfn of the head frame.
    pub(crate) pfn: u32,
    /// The head frame record.
    pub(crate) frame: &'f Frame,
    /// Direct-map address of the slab's first byte.
    pub(crate) base: usize,
}

/// What kfree's fast path learns from the frame record of the page an
/// address lies in ([`super::find_slab`]): all it checks, and nothing the
/// slow paths need (they look the slab up again).
#[derive(Clone, Copy)]
pub(crate) struct SlabHit {
    /// Direct-map address of the slab's first byte.
    pub(crate) base: usize,
    /// Objects in the slab.
    pub(crate) objects: u32,
    /// Node of the slab's memory.
    pub(crate) node: u32,
}

impl<'f> SlabRef<'f> {
    /// The slab whose head frame is `frame`, at `pfn` (the out-of-line
    /// free paths take these two in registers instead of a `SlabRef` in
    /// memory, so the fast paths build none on the stack).
    #[inline(always)]
    pub(crate) fn at<P: crate::platform::Platform>(
        pages: &crate::page::PageAllocator<P>,
        pfn: u32,
        frame: &'f Frame,
    ) -> Self {
        SlabRef {
            pfn,
            frame,
            base: pages.page_address(crate::addr::Pfn(pfn as u64)).0,
        }
    }
    /// The free list head and counters.
    #[inline(always)]
    pub(crate) fn word(&self) -> Word {
        Word(self.frame.private[1].load(Acquire) as u64)
    }
    /// Replaces the word if it still is `old`.
    #[inline(always)]
    pub(crate) fn cas(&self, old: Word, new: Word) -> bool {
        self.frame.private[1]
            .compare_exchange(old.0 as usize, new.0 as usize, AcqRel, Acquire)
            .is_ok()
    }
    /// Stores the word (only for slabs nobody else can reach yet, or under
    /// the node lock of a debug cache, whose slabs are never touched
    /// without it).
    #[inline]
    pub(crate) fn store(&self, w: Word) {
        self.frame.private[1].store(w.0 as usize, Release);
    }
    /// Sets or clears a flag bit atomically, returning the old word.
    #[inline]
    pub(crate) fn set_flag(&self, bit: u64, on: bool) -> Word {
        let old = if on {
            self.frame.private[1].fetch_or(bit as usize, AcqRel)
        } else {
            self.frame.private[1].fetch_and(!(bit as usize), AcqRel)
        };
        Word(old as u64)
    }
    /// Allocation order of the block.
    #[inline(always)]
    pub(crate) fn order(&self) -> u32 {
        self.frame.order()
    }
    /// Bytes in the block.
    #[inline(always)]
    pub(crate) fn bytes(&self) -> usize {
        PAGE_SIZE << self.order()
    }
    /// NUMA node of the block.
    #[inline]
    pub(crate) fn node(&self) -> usize {
        self.frame.node()
    }
    /// Next slab on the list it is on.
    #[inline]
    pub(crate) fn next(&self) -> u32 {
        self.frame.next.load(Relaxed)
    }
    /// Previous slab on the list it is on.
    #[inline]
    pub(crate) fn prev(&self) -> u32 {
        self.frame.prev.load(Relaxed)
    }
    /// Sets the next link.
    #[inline]
    pub(crate) fn set_next(&self, pfn: u32) {
        self.frame.next.store(pfn, Relaxed);
    }
    /// Sets the previous link.
    #[inline]
    pub(crate) fn set_prev(&self, pfn: u32) {
        self.frame.prev.store(pfn, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_packs_and_unpacks() {
        let w = Word::new(5, 7, 64);
        assert_eq!((w.free(), w.inuse(), w.objects()), (5, 7, 64));
        assert!(w.has_free());
        let w = w.with_free(NO_FREE).with_inuse(64).with(FROZEN, true);
        assert!(!w.has_free());
        assert_eq!(w.inuse(), 64);
        assert_eq!(w.objects(), 64);
        assert!(w.has(FROZEN) && !w.has(ON_PARTIAL));
        let w = w.with(FROZEN, false).with(ON_PARTIAL, true).with_objects(3);
        assert!(!w.has(FROZEN) && w.has(ON_PARTIAL));
        assert_eq!(w.objects(), 3);
        assert_eq!(w.inuse(), 64);
    }
}
