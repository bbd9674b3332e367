//! RCU-deferred freeing: `kfree_rcu` and `SLAB_TYPESAFE_BY_RCU` slabs.
//!
//! Readers under `rcu_read_lock` may still look at an object after a writer
//! unlinked it. Two ways to keep that safe, both Linux's:
//!
//! - `kfree_rcu(p, offset)` queues the object; it is freed after a grace
//!   period. The link lives in a 16-byte `rcu_head` field of the object at
//!   `offset` (which readers do not read), so queueing needs no memory.
//!   `kvfree_rcu_mightsleep(p)` has no such field: a 24-byte node of its
//!   own carries the link and the pointer, so nothing is written into `p`.
//! - A `SLAB_TYPESAFE_BY_RCU` cache reuses objects at once, but an emptied
//!   slab's pages go back to the page allocator only after a grace period:
//!   a reader may find a *different* object of the *same type* there, never
//!   foreign memory. Such a slab waits with owner tag `OWNER_SLAB_RCU`,
//!   linked through its frame's `next` field.
//!
//! kmem has no grace-period machinery of its own (the core cannot see other
//! threads' read-side sections): [`crate::slab::SlabAllocator::rcu_barrier`]
//! *is* the end of a grace period, called by whoever knows one has passed (a
//! kernel's RCU callback, a test once no reader is left). It refuses to run
//! inside a read-side section of the calling thread. `kmem_cache_destroy` and
//! dropping the allocator call it, as Linux's destroy waits in
//! `kvfree_rcu_barrier`.
//!
//! Both queues are lock-free stacks that are only pushed onto and taken
//! whole, so they have no ABA problem. Grace periods end one at a time
//! (`SlabGlobal::rcu_barrier` holds a lock around `run_all`): a destroy
//! must not find the queue empty while another thread is still freeing
//! what it took. A queued `rcu_head` keeps its offset under an
//! address-dependent mask, which refuses a second `kfree_rcu` of the object
//! and notices a head overwritten while queued (the batch behind it is then
//! leaked with a report, never freed twice).

use super::slab::{SlabRef, NIL};
use super::{find, Found, KmemCache};
use crate::page::PageAllocator;
use crate::platform::Platform;
use core::panic::Location;
use core::sync::atomic::{
    AtomicU32, AtomicUsize,
    Ordering::{AcqRel, Acquire, Relaxed},
};

/// Bytes of the `rcu_head` field `kfree_rcu` needs in an object.
pub const RCU_HEAD_SIZE: usize = 16;

/// Mask of a queued `rcu_head`'s offset word (see `RcuQueue::queued_word`).
const RCU_QUEUED: usize = 0x6b66_7263_755f_7164;

/// Offsets of an `rcu_head` are below this (the largest kmalloc block).
const MAX_HEAD_OFFSET: usize = 1 << 32;

/// The offset a pointer node is queued with (see [`RcuQueue::defer_ptr`]),
/// plus the words its fingerprint covers (0..=[`FINGERPRINT_WORDS`]): no
/// `rcu_head` lies that far into an object.
const PTR_NODE: usize = MAX_HEAD_OFFSET;

/// Bytes of a pointer node: link, queued word, the pointer, the fingerprint.
pub(crate) const PTR_NODE_SIZE: usize = 32;

/// Words of an object a pointer node's fingerprint covers (its first 64
/// bytes, or fewer in a smaller object).
pub(crate) const FINGERPRINT_WORDS: usize = 8;

/// A fingerprint of a queued object: its first `words` words and, for a
/// slab object whose free-pointer word lies beyond them but inside what its
/// owner may use, that word too (a free on a cache with the allocated mark
/// rewrites it; without the mark only a free onto a free list does). A
/// queued object is not written (readers only read it), so a different one
/// at the end of the grace period means it was freed (and maybe reused) or
/// written after it was queued. Best effort: a reuse that leaves those
/// words as they were (a kzalloc of an object that was all zeros, or any
/// reuse on a cache without the mark with the same first bytes) goes
/// unseen.
///
/// # Safety
/// `p..p + 8 * words` is readable, 8-aligned memory (a direct-map address).
pub(crate) unsafe fn fingerprint<P: Platform>(
    pages: &PageAllocator<P>,
    p: usize,
    words: usize,
) -> usize {
    let mut h = 0x243f_6a88_85a3_08d3usize ^ words;
    let mut mix = |w: usize| h = (h ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
    for i in 0..words {
        // SAFETY: per the contract.
        mix(unsafe { (p as *const usize).add(i).read() });
    }
    if let Ok(Found::Slab { cache, .. }) = find(pages, p) {
        let off = cache.fp_slot(p) - p;
        if off >= 8 * words && off + 8 <= super::kmalloc::slab_ksize(cache) {
            // SAFETY: inside the object's usable bytes.
            mix(unsafe { ((p + off) as *const usize).read() });
        }
    }
    h
}

/// Objects and slabs waiting for a grace period.
#[derive(Debug)]
pub struct RcuQueue {
    /// Address of the newest queued `rcu_head` (0: none).
    objs: AtomicUsize,
    /// Pfn of the newest queued slab ([`NIL`]: none).
    slabs: AtomicU32,
    nr_objs: AtomicUsize,
    nr_slabs: AtomicUsize,
}

impl Default for RcuQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl RcuQueue {
    /// Empty queues.
    pub const fn new() -> RcuQueue {
        RcuQueue {
            objs: AtomicUsize::new(0),
            slabs: AtomicU32::new(NIL),
            nr_objs: AtomicUsize::new(0),
            nr_slabs: AtomicUsize::new(0),
        }
    }

    /// (objects, slabs) waiting.
    pub fn pending(&self) -> (usize, usize) {
        (self.nr_objs.load(Relaxed), self.nr_slabs.load(Relaxed))
    }

    /// The second word of a queued `rcu_head` at `head` holding `offset`:
    /// the offset under a mask that depends on the address, so that a second
    /// `kfree_rcu` of a queued object is recognised (user data matches it by
    /// chance about once in 2^48) and a head overwritten while queued is
    /// noticed.
    fn queued_word(head: usize, offset: usize) -> usize {
        offset ^ RCU_QUEUED ^ head.swap_bytes()
    }

    /// True if the `rcu_head` at `head` (`offset` bytes into a live object)
    /// is queued already.
    ///
    /// # Safety
    /// `head..head + RCU_HEAD_SIZE` must be readable memory of a live object.
    pub(crate) unsafe fn is_queued(head: usize, offset: usize) -> bool {
        // SAFETY: per the contract.
        unsafe { (head as *const usize).add(1).read() == Self::queued_word(head, offset) }
    }

    /// Queues an object whose `rcu_head` is at `head`, `offset` bytes into it.
    ///
    /// # Safety
    /// `head..head + RCU_HEAD_SIZE` must be writable memory of a live object
    /// that nobody writes until it is freed.
    pub(crate) unsafe fn defer_obj(&self, head: usize, offset: usize) {
        // Counted before it is published: a grace period that takes it at
        // once must find it counted.
        self.nr_objs.fetch_add(1, Relaxed);
        let mut old = self.objs.load(Relaxed);
        loop {
            // SAFETY: per the contract.
            unsafe {
                (head as *mut usize).write(old);
                (head as *mut usize)
                    .add(1)
                    .write(Self::queued_word(head, offset));
            }
            match self.objs.compare_exchange(old, head, AcqRel, Relaxed) {
                Ok(_) => break,
                Err(cur) => old = cur,
            }
        }
    }

    /// Queues `target` (a slab object or large kmalloc block) through
    /// `node`, a [`PTR_NODE_SIZE`]-byte kmalloc object of its own: what
    /// `kvfree_rcu_mightsleep` does for an object without an `rcu_head`,
    /// writing nothing into it (Linux keeps such pointers in pages of
    /// pointers). The node also keeps a [`fingerprint`] of the target's
    /// first `words` words; the grace period frees the target only if it
    /// still matches (else it reports and leaks it, as for an overwritten
    /// `rcu_head`), then the node.
    ///
    /// # Safety
    /// `node` is a live kmalloc object of at least [`PTR_NODE_SIZE`] bytes
    /// that nobody else uses; `target` is live until the grace period, with
    /// `words` (at most [`FINGERPRINT_WORDS`]) readable words.
    pub(crate) unsafe fn defer_ptr<P: Platform>(
        &self,
        pages: &PageAllocator<P>,
        node: usize,
        target: usize,
        words: usize,
    ) {
        let words = words.min(FINGERPRINT_WORDS);
        // SAFETY: per the contract.
        unsafe {
            (node as *mut usize).add(2).write(target);
            (node as *mut usize)
                .add(3)
                .write(fingerprint(pages, target, words));
            self.defer_obj(node, PTR_NODE + words);
        }
    }

    /// Queues an emptied `SLAB_TYPESAFE_BY_RCU` slab.
    pub(crate) fn defer_slab(&self, slab: SlabRef<'_>) {
        self.nr_slabs.fetch_add(1, Relaxed);
        let mut old = self.slabs.load(Relaxed);
        loop {
            slab.set_next(old);
            match self.slabs.compare_exchange(old, slab.pfn, AcqRel, Relaxed) {
                Ok(_) => break,
                Err(cur) => old = cur,
            }
        }
    }

    /// Ends a grace period: frees every object and slab queued when it
    /// began. What is queued meanwhile waits for the next one: objects
    /// other threads queue, and `SLAB_TYPESAFE_BY_RCU` slabs these frees
    /// empty (a reader that started during this grace period may still be
    /// looking into them; Linux queues such a slab with `call_rcu` again).
    #[track_caller]
    pub(crate) fn run_all<P: Platform>(&self, pages: &PageAllocator<P>) {
        let caller = Location::caller();
        let mut h = self.objs.swap(0, Acquire);
        let mut s = self.slabs.swap(NIL, Acquire);
        while h != 0 {
            // SAFETY: queued heads are live objects nobody writes.
            let (next, word) = unsafe {
                (
                    (h as *const usize).read(),
                    (h as *const usize).add(1).read(),
                )
            };
            // The mask is an XOR: applied again, it gives the offset back.
            let off = Self::queued_word(h, word);
            let ptr_node = (PTR_NODE..=PTR_NODE + FINGERPRINT_WORDS).contains(&off);
            if !ptr_node && (off >= MAX_HEAD_OFFSET || off & 7 != 0) {
                // Written while queued: freed (and maybe reused) by a plain
                // kfree, or a write after kfree_rcu. Its link is not to be
                // trusted either: the rest of this batch is dropped
                // (leaked), never freed twice.
                let dropped = self.nr_objs.swap(0, Relaxed);
                pages.platform().warn(format_args!(
                    "kfree_rcu: the rcu_head at {h:#x} was overwritten while queued (the object was freed or written after kfree_rcu); {dropped} queued objects leaked (grace period ended at {caller})"
                ));
                break;
            }
            // Saturating: a dropped batch zeroed the count.
            let _ = self
                .nr_objs
                .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
            // SAFETY: as above; cleared so that a later kfree_rcu of the
            // object, reallocated, does not find it queued.
            unsafe { (h as *mut usize).add(1).write(0) };
            if !ptr_node {
                free_any(pages, h - off, caller);
                h = next;
                continue;
            }
            // SAFETY: a queued pointer node (defer_ptr); its target lies in
            // the direct map, readable even if freed.
            let (target, sum) = unsafe {
                (
                    (h as *const usize).add(2).read(),
                    (h as *const usize).add(3).read(),
                )
            };
            // SAFETY: as above.
            if unsafe { fingerprint(pages, target, off - PTR_NODE) } == sum {
                free_any(pages, target, caller);
            } else {
                pages.platform().warn(format_args!(
                    "kvfree_rcu_mightsleep: object {target:#x} was written while queued (freed and reused, or written after kvfree_rcu_mightsleep); not freed, leaked (grace period ended at {caller})"
                ));
            }
            free_any(pages, h, caller);
            h = next;
        }
        while s != NIL {
            let Some(frame) = pages.frame(crate::addr::Pfn(s as u64)) else {
                break;
            };
            let next = frame.next.load(Relaxed);
            let c = frame.private[0].load(Relaxed) as *const KmemCache<P>;
            self.nr_slabs.fetch_sub(1, Relaxed);
            if frame.owner() != super::OWNER_SLAB_RCU {
                pages.platform().warn(format_args!(
                    "slab: queued RCU slab at pfn {s:#x} is no longer one; skipped"
                ));
            } else if !c.is_null() {
                // SAFETY: a queued slab's cache is alive: destroy runs
                // this queue before freeing a cache.
                let cache = unsafe { &*c };
                cache.free_slab_pages(cache.slab_at(s));
            }
            s = next;
        }
    }
}

/// Frees any slab object or large kmalloc block whose grace period ended
/// (reporting bad addresses).
pub(crate) fn free_any<P: Platform>(
    pages: &PageAllocator<P>,
    addr: usize,
    caller: &'static Location<'static>,
) {
    match find(pages, addr) {
        Ok(Found::Slab { cache, slab }) => {
            if cache
                .obj_index(slab.base, slab.word().objects(), addr)
                .is_some()
            {
                // SAFETY: an object of a live slab of the cache.
                unsafe { cache.unmark_rcu_queued(addr) };
            }
            let _ = cache.free_checked(slab, addr, caller);
        }
        Ok(Found::Large { head, order, base }) => {
            let _ = super::kmalloc::free_large(pages, None, head, order, base, addr, caller);
        }
        Err(e) => pages
            .platform()
            .warn(format_args!("{e} (kfree_rcu callback, queued at {caller})")),
    }
}
