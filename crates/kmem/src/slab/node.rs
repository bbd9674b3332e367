//! Per-node slab lists: partial slabs (some objects free) and, for debug
//! caches, full slabs.
//!
//! Each cache has one `CacheNode` per NUMA node. Its lists are doubly
//! linked through the `next`/`prev` pfn fields of the slabs' head frame
//! records, so they need no memory of their own; membership is mirrored in
//! the slab word (`ON_PARTIAL`, `ON_FULL`) so that a lock-free free can tell,
//! under the node lock, whether the slab it emptied is the node's to manage.
//!
//! # Locking
//! The node lock (`list_lock`) protects both lists, their lengths and the
//! membership bits. It nests inside a CPU flag and outside nothing: the
//! page allocator is never called with it held, except to give an empty slab
//! back, which never calls into the slab layer.

use super::barn::Barn;
use super::slab::{SlabRef, NIL, ON_FULL, ON_PARTIAL};
use super::KmemCache;
use crate::platform::Platform;
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// A doubly linked list of slabs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct List {
    pub(crate) head: u32,
    pub(crate) tail: u32,
    pub(crate) len: usize,
}

impl List {
    const EMPTY: List = List {
        head: NIL,
        tail: NIL,
        len: 0,
    };
}

/// What the node lock protects.
#[derive(Debug)]
pub(crate) struct NodeLists {
    /// Slabs with free objects, not active on any CPU.
    pub(crate) partial: List,
    /// Full slabs of debug caches (others do not track full slabs).
    pub(crate) full: List,
}

/// A cache's state on one NUMA node.
pub(crate) struct CacheNode<L: lock_api::RawMutex> {
    /// Linux's `list_lock` and the lists it protects.
    pub(crate) lists: lock_api::Mutex<L, NodeLists>,
    /// Slabs of this node, anywhere (atomic: changed without the lock).
    pub(crate) nr_slabs: AtomicUsize,
    /// Objects in those slabs.
    pub(crate) total_objects: AtomicUsize,
    /// Length of the partial list, readable without the lock.
    pub(crate) nr_partial: AtomicUsize,
    /// Whole sheaves of this node's objects ([`super::barn`]).
    pub(crate) barn: Barn<L>,
}

impl<L: lock_api::RawMutex> CacheNode<L> {
    pub(crate) fn new() -> Self {
        CacheNode {
            lists: lock_api::Mutex::new(NodeLists {
                partial: List::EMPTY,
                full: List::EMPTY,
            }),
            nr_slabs: AtomicUsize::new(0),
            total_objects: AtomicUsize::new(0),
            nr_partial: AtomicUsize::new(0),
            barn: Barn::new(),
        }
    }
}

/// Which list of a node.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Which {
    Partial,
    Full,
}

impl<P: Platform> KmemCache<P> {
    fn list_mut(lists: &mut NodeLists, which: Which) -> &mut List {
        match which {
            Which::Partial => &mut lists.partial,
            Which::Full => &mut lists.full,
        }
    }

    /// Links `slab` into a list of its node (`tail`: at the end) and sets
    /// the membership bit. Node lock held.
    pub(crate) fn list_add(
        &self,
        node: usize,
        lists: &mut NodeLists,
        which: Which,
        slab: SlabRef<'_>,
        tail: bool,
    ) {
        let l = Self::list_mut(lists, which);
        if tail {
            slab.set_next(NIL);
            slab.set_prev(l.tail);
            if l.tail == NIL {
                l.head = slab.pfn;
            } else {
                self.slab_at(l.tail).set_next(slab.pfn);
            }
            l.tail = slab.pfn;
        } else {
            slab.set_prev(NIL);
            slab.set_next(l.head);
            if l.head == NIL {
                l.tail = slab.pfn;
            } else {
                self.slab_at(l.head).set_prev(slab.pfn);
            }
            l.head = slab.pfn;
        }
        l.len += 1;
        match which {
            Which::Partial => {
                slab.set_flag(ON_PARTIAL, true);
                self.nodes[node].nr_partial.store(l.len, Relaxed);
            }
            Which::Full => {
                slab.set_flag(ON_FULL, true);
            }
        }
    }

    /// Unlinks `slab` from a list of its node and clears the membership bit.
    /// Node lock held; the slab must be on that list.
    pub(crate) fn list_del(
        &self,
        node: usize,
        lists: &mut NodeLists,
        which: Which,
        slab: SlabRef<'_>,
    ) {
        let l = Self::list_mut(lists, which);
        let (next, prev) = (slab.next(), slab.prev());
        if prev == NIL {
            l.head = next;
        } else {
            self.slab_at(prev).set_next(next);
        }
        if next == NIL {
            l.tail = prev;
        } else {
            self.slab_at(next).set_prev(prev);
        }
        slab.set_next(NIL);
        slab.set_prev(NIL);
        l.len -= 1;
        match which {
            Which::Partial => {
                slab.set_flag(ON_PARTIAL, false);
                self.nodes[node].nr_partial.store(l.len, Relaxed);
            }
            Which::Full => {
                slab.set_flag(ON_FULL, false);
            }
        }
    }

    /// Linux's `add_partial`.
    #[inline]
    pub(crate) fn add_partial(
        &self,
        node: usize,
        lists: &mut NodeLists,
        slab: SlabRef<'_>,
        tail: bool,
    ) {
        self.list_add(node, lists, Which::Partial, slab, tail);
    }

    /// Linux's `remove_partial`.
    #[inline]
    pub(crate) fn remove_partial(&self, node: usize, lists: &mut NodeLists, slab: SlabRef<'_>) {
        self.list_del(node, lists, Which::Partial, slab);
    }

    /// Calls `f` on every slab of a list (node lock held; `f` must not
    /// unlink anything but the slab it is given).
    pub(crate) fn for_each_on(
        &self,
        lists: &NodeLists,
        which: Which,
        mut f: impl FnMut(SlabRef<'_>),
    ) {
        let l = match which {
            Which::Partial => &lists.partial,
            Which::Full => &lists.full,
        };
        let mut cur = l.head;
        let mut guard = 0usize;
        while cur != NIL && guard <= l.len {
            let s = self.slab_at(cur);
            let next = s.next();
            f(s);
            cur = next;
            guard += 1;
        }
    }
}
