//! The virtual-area allocator: which parts of the vmalloc range are free,
//! which are in use, and which wait for a TLB flush.
//!
//! Every range is a `VmapArea` record. A record sits in exactly one place:
//!
//! - the **free tree**: free ranges sorted by start address, an AVL tree
//!   augmented with the largest free size in each subtree
//!   (`subtree_max`). Allocation descends it for the *lowest* address that
//!   fits size and alignment in O(log n), as Linux's
//!   `find_vmap_lowest_match` does: a subtree is entered only if its largest
//!   free block can hold `size + align - 1` bytes, which guarantees a fit
//!   whatever the alignment (the search length is not widened for alignments
//!   up to a page, nor when the range is exactly the size asked for);
//! - the **busy tree**: allocated ranges sorted by start, for `vfree`'s
//!   lookup by address;
//! - the **lazy list**: freed ranges whose page-table entries are cleared
//!   but whose TLB entries may still be cached on some CPU. They are not
//!   reused until a purge flushes the TLB once for all of them and merges
//!   them back into the free tree (coalescing with both neighbours);
//! - the **pool**: spare records.
//!
//! Records live in pages from the page allocator, carved into 128-byte slots
//! (a small fixed-size-object pool, so no heap is needed); the pool keeps the
//! pages for the allocator's life. Allocating can split a free range in two
//! (Linux's "no edge" fit), so callers make sure the pool has two spare
//! records before taking the lock (`Areas::spare`).
//!
//! Everything here runs under the vmalloc state lock; nothing allocates,
//! nothing blocks. The trees are recursive AVL trees of height at most
//! 1.44 log2(n), so recursion depth is bounded (under 64 for any n that fits
//! in memory).

use crate::addr::PAGE_SIZE;
use core::mem::size_of;
use core::panic::Location;
use core::ptr::{self, null_mut};
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};

/// Size of a record slot in the pool.
pub(crate) const RECORD_SIZE: usize = 128;
/// Records per pool page.
pub(crate) const RECORDS_PER_PAGE: usize = PAGE_SIZE / RECORD_SIZE;

type Link = *mut VmapArea;

/// One virtual range: free, busy or lazily freed.
#[repr(C, align(64))]
pub(crate) struct VmapArea {
    left: Link,
    right: Link,
    /// Lazy list / pool free list link.
    pub(crate) next: Link,
    pub(crate) start: usize,
    pub(crate) end: usize,
    subtree_max: usize,
    height: u32,
    /// Linux's `va->flags`: [`VMAP_RAM`], [`VMAP_BLOCK`].
    pub(crate) va_flags: u32,
    /// Linux's `vm->flags` (a `VmFlags` value); changed under the lock, or
    /// by the area's owner while `VM_UNINITIALIZED` hides it.
    pub(crate) vm_flags: AtomicU32,
    /// log2 of the mapping's page size minus 12 (9 for 2 MiB mappings).
    pub(crate) page_order: u8,
    pub(crate) caller: Option<&'static Location<'static>>,
    /// Pages mapped and owned (vmalloc) or mapped (vmap).
    pub(crate) nr_pages: AtomicUsize,
    /// The size asked for (Linux's `vm->requested_size`).
    pub(crate) requested_size: AtomicUsize,
    /// vmap block: pages not yet handed out.
    pub(crate) vb_free: u32,
    /// vmap block: pages handed out and unmapped again.
    pub(crate) vb_dirty: u32,
    /// vmap block: dirty page range not yet flushed.
    pub(crate) vb_dirty_min: u32,
    pub(crate) vb_dirty_max: u32,
    /// vmap block: CPU whose free list holds (or held) it.
    pub(crate) vb_cpu: u32,
    /// vmap block: next block on its CPU's free list (Linux's
    /// `vb->free_list`), while it has pages left to hand out.
    pub(crate) vb_next: Link,
}

const _: () = assert!(size_of::<VmapArea>() <= RECORD_SIZE);

/// `va_flags`: a `vm_map_ram` area.
pub(crate) const VMAP_RAM: u32 = 0x1;
/// `va_flags`: a per-CPU vmap block (with [`VMAP_RAM`]).
pub(crate) const VMAP_BLOCK: u32 = 0x2;

impl VmapArea {
    fn init(&mut self, start: usize, end: usize) {
        self.left = null_mut();
        self.right = null_mut();
        self.next = null_mut();
        self.start = start;
        self.end = end;
        self.subtree_max = end - start;
        self.height = 1;
        self.va_flags = 0;
        self.vm_flags.store(0, Relaxed);
        self.page_order = 0;
        self.caller = None;
        self.nr_pages.store(0, Relaxed);
        self.requested_size.store(0, Relaxed);
        self.vb_free = 0;
        self.vb_dirty = 0;
        self.vb_dirty_min = 0;
        self.vb_dirty_max = 0;
        self.vb_cpu = 0;
        self.vb_next = null_mut();
    }

    /// Bytes covered (guard page included).
    #[inline]
    pub(crate) fn size(&self) -> usize {
        self.end - self.start
    }
}

// ---------------------------------------------------------------------------
// AVL trees keyed by `start`. AUG: maintain `subtree_max` (free tree).

#[inline]
unsafe fn height(n: Link) -> u32 {
    if n.is_null() {
        0
    } else {
        (*n).height
    }
}

#[inline]
unsafe fn smax(n: Link) -> usize {
    if n.is_null() {
        0
    } else {
        (*n).subtree_max
    }
}

#[inline]
unsafe fn update<const AUG: bool>(n: Link) {
    let (l, r) = ((*n).left, (*n).right);
    (*n).height = 1 + height(l).max(height(r));
    if AUG {
        (*n).subtree_max = ((*n).end - (*n).start).max(smax(l)).max(smax(r));
    }
}

unsafe fn rotate_right<const AUG: bool>(n: Link) -> Link {
    let l = (*n).left;
    (*n).left = (*l).right;
    (*l).right = n;
    update::<AUG>(n);
    update::<AUG>(l);
    l
}

unsafe fn rotate_left<const AUG: bool>(n: Link) -> Link {
    let r = (*n).right;
    (*n).right = (*r).left;
    (*r).left = n;
    update::<AUG>(n);
    update::<AUG>(r);
    r
}

unsafe fn balance<const AUG: bool>(n: Link) -> Link {
    update::<AUG>(n);
    let (l, r) = ((*n).left, (*n).right);
    let bf = height(l) as i64 - height(r) as i64;
    if bf > 1 {
        if height((*l).left) < height((*l).right) {
            (*n).left = rotate_left::<AUG>(l);
        }
        return rotate_right::<AUG>(n);
    }
    if bf < -1 {
        if height((*r).right) < height((*r).left) {
            (*n).right = rotate_right::<AUG>(r);
        }
        return rotate_left::<AUG>(n);
    }
    n
}

unsafe fn insert<const AUG: bool>(root: Link, node: Link) -> Link {
    if root.is_null() {
        (*node).left = null_mut();
        (*node).right = null_mut();
        update::<AUG>(node);
        return node;
    }
    if (*node).start < (*root).start {
        (*root).left = insert::<AUG>((*root).left, node);
    } else {
        (*root).right = insert::<AUG>((*root).right, node);
    }
    balance::<AUG>(root)
}

unsafe fn remove_min<const AUG: bool>(n: Link) -> (Link, Link) {
    if (*n).left.is_null() {
        return ((*n).right, n);
    }
    let (l, m) = remove_min::<AUG>((*n).left);
    (*n).left = l;
    (balance::<AUG>(n), m)
}

/// Removes the node whose start is `start` (which must be in the tree).
unsafe fn remove<const AUG: bool>(root: Link, start: usize) -> Link {
    if root.is_null() {
        return root;
    }
    if start < (*root).start {
        (*root).left = remove::<AUG>((*root).left, start);
        balance::<AUG>(root)
    } else if start > (*root).start {
        (*root).right = remove::<AUG>((*root).right, start);
        balance::<AUG>(root)
    } else {
        let (l, r) = ((*root).left, (*root).right);
        if r.is_null() {
            return l;
        }
        let (r2, m) = remove_min::<AUG>(r);
        (*m).left = l;
        (*m).right = r2;
        balance::<AUG>(m)
    }
}

/// Recomputes `subtree_max` on the path to the node starting at `start`
/// (after that node changed size in place, its order unchanged).
unsafe fn fix_path(root: Link, start: usize) {
    if root.is_null() {
        return;
    }
    if start < (*root).start {
        fix_path((*root).left, start);
    } else if start > (*root).start {
        fix_path((*root).right, start);
    }
    update::<true>(root);
}

unsafe fn find_exact(mut n: Link, start: usize) -> Link {
    while !n.is_null() {
        if start < (*n).start {
            n = (*n).left;
        } else if start > (*n).start {
            n = (*n).right;
        } else {
            return n;
        }
    }
    null_mut()
}

/// The node containing `addr`.
unsafe fn find_containing(mut n: Link, addr: usize) -> Link {
    while !n.is_null() {
        if addr < (*n).start {
            n = (*n).left;
        } else if addr >= (*n).end {
            n = (*n).right;
        } else {
            return n;
        }
    }
    null_mut()
}

/// The node with the largest start `<= key`.
unsafe fn find_le(mut n: Link, key: usize) -> Link {
    let mut best = null_mut();
    while !n.is_null() {
        if (*n).start <= key {
            best = n;
            n = (*n).right;
        } else {
            n = (*n).left;
        }
    }
    best
}

/// Linux's `is_within_this_va`: does `[align_up(max(start, vstart)), +size)`
/// fit in the free range `n`?
#[inline]
unsafe fn fits(n: Link, size: usize, align: usize, vstart: usize) -> Option<usize> {
    let base = (*n).start.max(vstart);
    let nva = base.checked_next_multiple_of(align)?;
    let end = nva.checked_add(size)?;
    (end <= (*n).end).then_some(nva)
}

/// The lowest free range that fits, searching only subtrees whose largest
/// block is at least `length` long.
unsafe fn find_lowest(n: Link, size: usize, align: usize, vstart: usize, length: usize) -> Link {
    if n.is_null() || (*n).subtree_max < length {
        return null_mut();
    }
    // Ranges left of `n` end before `n.start`: useful only if vstart is
    // below it.
    if vstart < (*n).start {
        let l = (*n).left;
        if smax(l) >= length {
            let found = find_lowest(l, size, align, vstart, length);
            if !found.is_null() {
                return found;
            }
        }
    }
    if (*n).end - (*n).start >= size && fits(n, size, align, vstart).is_some() {
        return n;
    }
    find_lowest((*n).right, size, align, vstart, length)
}

unsafe fn for_each_in_order(n: Link, f: &mut dyn FnMut(Link)) {
    if n.is_null() {
        return;
    }
    for_each_in_order((*n).left, f);
    f(n);
    for_each_in_order((*n).right, f);
}

// ---------------------------------------------------------------------------

/// Spare records, carved from whole pages.
struct Pool {
    free: Link,
    nr_free: usize,
    /// Pages carved into records so far (the owner keeps track of the
    /// pages themselves, to give them back when it is dropped).
    nr_pages: usize,
}

impl Pool {
    fn take(&mut self) -> Link {
        let r = self.free;
        assert!(!r.is_null(), "vmalloc: record pool empty (not preloaded)");
        // SAFETY: pool records are valid, exclusively owned slots.
        unsafe {
            self.free = (*r).next;
            (*r).next = null_mut();
        }
        self.nr_free -= 1;
        r
    }

    fn put(&mut self, r: Link) {
        // SAFETY: `r` is a record no tree or list refers to any more.
        unsafe {
            (*r).left = null_mut();
            (*r).right = null_mut();
            (*r).next = self.free;
        }
        self.free = r;
        self.nr_free += 1;
    }
}

/// Why an address range could not be found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AreaError {
    /// No free range fits.
    NoSpace,
    /// The fit found ends past `vend` (Linux: -ERANGE).
    OutOfRange,
}

/// The area allocator's state. Lives inside the vmalloc state lock.
pub(crate) struct Areas {
    free: Link,
    busy: Link,
    lazy: Link,
    pool: Pool,
    /// Areas in the busy tree.
    pub(crate) nr_busy: usize,
    /// Areas on the lazy list.
    pub(crate) nr_lazy: usize,
    /// Pages (guard pages included) on the lazy list.
    pub(crate) lazy_pages: usize,
    /// Free ranges in the free tree.
    pub(crate) nr_free_ranges: usize,
}

// SAFETY: the raw links point into pool pages owned by the allocator; all
// access happens under the lock that wraps `Areas`.
unsafe impl Send for Areas {}

impl Areas {
    /// An allocator over `[start, end)`: one free range, seeded from the
    /// first pool page (`page` must be a whole, writable, page-aligned page).
    ///
    /// # Safety
    /// `page` must stay valid and unused by anything else for the life of
    /// the returned value.
    pub(crate) unsafe fn new(start: usize, end: usize, page: *mut u8) -> Areas {
        let mut a = Areas {
            free: null_mut(),
            busy: null_mut(),
            lazy: null_mut(),
            pool: Pool {
                free: null_mut(),
                nr_free: 0,
                nr_pages: 0,
            },
            nr_busy: 0,
            nr_lazy: 0,
            lazy_pages: 0,
            nr_free_ranges: 0,
        };
        a.add_pool_page(page);
        if end > start {
            let r = a.pool.take();
            (*r).init(start, end);
            a.free = insert::<true>(a.free, r);
            a.nr_free_ranges = 1;
        }
        a
    }

    /// Carves a page into records for the pool.
    ///
    /// # Safety
    /// As for [`Areas::new`].
    pub(crate) unsafe fn add_pool_page(&mut self, page: *mut u8) {
        for i in 0..RECORDS_PER_PAGE {
            let r = page.add(i * RECORD_SIZE) as Link;
            ptr::write_bytes(r as *mut u8, 0, RECORD_SIZE);
            self.pool.put(r);
        }
        self.pool.nr_pages += 1;
    }

    /// Spare records in the pool.
    pub(crate) fn spare(&self) -> usize {
        self.pool.nr_free
    }

    /// Pages the pool holds.
    pub(crate) fn pool_pages(&self) -> usize {
        self.pool.nr_pages
    }

    /// Finds the lowest `[a, a + size)` with `a` aligned to `align` inside
    /// `[vstart, vend)` and removes it from the free tree. Needs one spare
    /// record. `size` and `align` must be non-zero, `align` a power of two.
    pub(crate) fn alloc_range(
        &mut self,
        size: usize,
        align: usize,
        vstart: usize,
        vend: usize,
    ) -> Result<usize, AreaError> {
        let adjust = !(align <= PAGE_SIZE || vend.wrapping_sub(vstart) == size);
        let length = if adjust {
            size.checked_add(align - 1).ok_or(AreaError::NoSpace)?
        } else {
            size
        };
        // SAFETY: tree links are valid records under our lock.
        unsafe {
            let f = find_lowest(self.free, size, align, vstart, length);
            if f.is_null() {
                return Err(AreaError::NoSpace);
            }
            let nva = fits(f, size, align, vstart).ok_or(AreaError::NoSpace)?;
            if nva.checked_add(size).is_none_or(|e| e > vend) {
                return Err(AreaError::OutOfRange);
            }
            self.clip(f, nva, size);
            Ok(nva)
        }
    }

    /// Removes `[nva, nva + size)` from the free range `f` (Linux's
    /// `va_clip`: full, left-edge, right-edge or no-edge fit).
    unsafe fn clip(&mut self, f: Link, nva: usize, size: usize) {
        let ne = nva + size;
        match ((*f).start == nva, (*f).end == ne) {
            (true, true) => {
                self.free = remove::<true>(self.free, nva);
                self.pool.put(f);
                self.nr_free_ranges -= 1;
            }
            (true, false) => {
                (*f).start = ne;
                fix_path(self.free, ne);
            }
            (false, true) => {
                (*f).end = nva;
                fix_path(self.free, (*f).start);
            }
            (false, false) => {
                let l = self.pool.take();
                (*l).init((*f).start, nva);
                (*f).start = ne;
                fix_path(self.free, ne);
                self.free = insert::<true>(self.free, l);
                self.nr_free_ranges += 1;
            }
        }
    }

    /// Takes a spare record for a busy range and inserts it into the busy
    /// tree. Needs one spare record.
    pub(crate) fn insert_busy(&mut self, start: usize, end: usize) -> &mut VmapArea {
        let r = self.pool.take();
        // SAFETY: a fresh pool record; the busy tree is ours under the lock.
        unsafe {
            (*r).init(start, end);
            self.busy = insert::<false>(self.busy, r);
            self.nr_busy += 1;
            &mut *r
        }
    }

    /// The busy area starting exactly at `addr`.
    pub(crate) fn find_busy(&self, addr: usize) -> Option<&VmapArea> {
        // SAFETY: busy-tree records are valid under the lock.
        unsafe { find_exact(self.busy, addr).as_ref() }
    }

    /// Mutable access to the busy area starting exactly at `addr`.
    pub(crate) fn find_busy_mut(&mut self, addr: usize) -> Option<&mut VmapArea> {
        // SAFETY: as above; `&mut self` gives exclusive access.
        unsafe { find_exact(self.busy, addr).as_mut() }
    }

    /// The busy area containing `addr`.
    pub(crate) fn find_busy_containing(&self, addr: usize) -> Option<&VmapArea> {
        // SAFETY: as above.
        unsafe { find_containing(self.busy, addr).as_ref() }
    }

    /// Mutable access to the busy area containing `addr`.
    pub(crate) fn find_busy_containing_mut(&mut self, addr: usize) -> Option<&mut VmapArea> {
        // SAFETY: as above.
        unsafe { find_containing(self.busy, addr).as_mut() }
    }

    /// True if a lazily freed (not yet purged) area contains `addr`.
    pub(crate) fn lazy_contains(&self, addr: usize) -> bool {
        let mut n = self.lazy;
        // SAFETY: lazy-list records are valid under the lock.
        unsafe {
            while !n.is_null() {
                if (*n).start <= addr && addr < (*n).end {
                    return true;
                }
                n = (*n).next;
            }
        }
        false
    }

    /// Removes the busy area starting at `addr` from the busy tree and
    /// returns it (still a valid record, owned by the caller until it is
    /// handed to [`Areas::push_lazy`] or [`Areas::release`]).
    pub(crate) fn unlink_busy(&mut self, addr: usize) -> Option<*mut VmapArea> {
        // SAFETY: as above.
        unsafe {
            let r = find_exact(self.busy, addr);
            if r.is_null() {
                return None;
            }
            self.busy = remove::<false>(self.busy, addr);
            (*r).left = null_mut();
            (*r).right = null_mut();
            self.nr_busy -= 1;
            Some(r)
        }
    }

    /// Puts an unlinked, unmapped area on the lazy list.
    ///
    /// # Safety
    /// `r` must come from [`Areas::unlink_busy`] and be in no tree or list.
    pub(crate) unsafe fn push_lazy(&mut self, r: *mut VmapArea) {
        (*r).next = self.lazy;
        self.lazy = r;
        self.nr_lazy += 1;
        self.lazy_pages += (*r).size() / PAGE_SIZE;
    }

    /// Detaches the whole lazy list: (first record, areas, pages).
    pub(crate) fn take_lazy(&mut self) -> (*mut VmapArea, usize, usize) {
        let l = (self.lazy, self.nr_lazy, self.lazy_pages);
        self.lazy = null_mut();
        self.nr_lazy = 0;
        self.lazy_pages = 0;
        l
    }

    /// Gives a range back to the free tree, merging it with its free
    /// neighbours (Linux's `merge_or_add_vmap_area`).
    ///
    /// # Safety
    /// `r` must be in no tree; its `next` link is ignored.
    pub(crate) unsafe fn release(&mut self, r: *mut VmapArea) {
        let (s, e) = ((*r).start, (*r).end);
        let next = find_exact(self.free, e);
        let prev = find_le(self.free, s);
        debug_assert!(
            prev.is_null() || (*prev).end <= s,
            "vmalloc bug: {:#x}-{:#x} overlaps free {:#x}-{:#x}",
            s,
            e,
            (*prev).start,
            (*prev).end
        );
        let prev = if !prev.is_null() && (*prev).end == s {
            prev
        } else {
            null_mut()
        };
        match (prev.is_null(), next.is_null()) {
            (false, false) => {
                self.free = remove::<true>(self.free, e);
                (*prev).end = (*next).end;
                fix_path(self.free, (*prev).start);
                self.pool.put(next);
                self.pool.put(r);
                self.nr_free_ranges -= 1;
            }
            (false, true) => {
                (*prev).end = e;
                fix_path(self.free, (*prev).start);
                self.pool.put(r);
            }
            (true, false) => {
                (*next).start = s;
                fix_path(self.free, s);
                self.pool.put(r);
            }
            (true, true) => {
                (*r).init(s, e);
                self.free = insert::<true>(self.free, r);
                self.nr_free_ranges += 1;
            }
        }
    }

    /// Calls `f` for every busy area, in address order.
    pub(crate) fn for_each_busy(&self, f: &mut dyn FnMut(&VmapArea)) {
        // SAFETY: busy-tree records are valid under the lock.
        unsafe { for_each_in_order(self.busy, &mut |r| f(&*r)) }
    }

    /// Calls `f` with mutable access to every busy area, in address order.
    /// `f` must leave `start` and `end` alone: the tree is ordered and
    /// augmented by them.
    pub(crate) fn for_each_busy_mut(&mut self, f: &mut dyn FnMut(&mut VmapArea)) {
        // SAFETY: as above; `&mut self` gives exclusive access.
        unsafe { for_each_in_order(self.busy, &mut |r| f(&mut *r)) }
    }

    /// Calls `f` for every free range, in address order.
    pub(crate) fn for_each_free(&self, f: &mut dyn FnMut(&VmapArea)) {
        // SAFETY: free-tree records are valid under the lock.
        unsafe { for_each_in_order(self.free, &mut |r| f(&*r)) }
    }

    /// Calls `f` for every lazily freed area, most recent first.
    pub(crate) fn for_each_lazy(&self, f: &mut dyn FnMut(&VmapArea)) {
        let mut n = self.lazy;
        // SAFETY: lazy-list records are valid under the lock.
        unsafe {
            while !n.is_null() {
                f(&*n);
                n = (*n).next;
            }
        }
    }

    /// Largest free range (the free tree's root augment).
    pub(crate) fn largest_free(&self) -> usize {
        // SAFETY: the root is valid or null.
        unsafe { smax(self.free) }
    }

    /// Checks the trees' invariants: order, balance, augment, no overlap
    /// between free, busy and lazy ranges. Returns a description of the
    /// first violation.
    pub(crate) fn check(&self) -> Result<(), &'static str> {
        unsafe fn walk<const AUG: bool>(
            n: Link,
            lo: usize,
            hi: usize,
        ) -> Result<(u32, usize), &'static str> {
            if n.is_null() {
                return Ok((0, 0));
            }
            let (s, e) = ((*n).start, (*n).end);
            if s >= e {
                return Err("empty or inverted range in a tree");
            }
            if s < lo || e > hi {
                return Err("tree order or overlap violated");
            }
            let (hl, ml) = walk::<AUG>((*n).left, lo, s)?;
            let (hr, mr) = walk::<AUG>((*n).right, e, hi)?;
            if hl.abs_diff(hr) > 1 {
                return Err("AVL balance violated");
            }
            if (*n).height != 1 + hl.max(hr) {
                return Err("AVL height wrong");
            }
            let m = (e - s).max(ml).max(mr);
            if AUG && (*n).subtree_max != m {
                return Err("subtree_max augment wrong");
            }
            Ok((1 + hl.max(hr), m))
        }
        // SAFETY: every link is a valid record under the lock.
        unsafe {
            walk::<true>(self.free, 0, usize::MAX)?;
            walk::<false>(self.busy, 0, usize::MAX)?;
            // Free ranges never touch (they would have been merged), and no
            // busy or lazy range overlaps a free one.
            let mut prev_end = None;
            let mut bad = None;
            self.for_each_free(&mut |a| {
                if prev_end == Some(a.start) {
                    bad = Some("adjacent free ranges not merged");
                }
                prev_end = Some(a.end);
            });
            if let Some(b) = bad {
                return Err(b);
            }
            let mut overlap = false;
            let free = self.free;
            let mut probe = |a: &VmapArea| {
                let f = find_le(free, a.end - 1);
                if !f.is_null() && (*f).end > a.start {
                    overlap = true;
                }
            };
            self.for_each_busy(&mut probe);
            let mut n = self.lazy;
            while !n.is_null() {
                probe(&*n);
                n = (*n).next;
            }
            if overlap {
                return Err("a busy or lazy range overlaps a free range");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::{alloc_zeroed, Layout};
    use std::vec::Vec;

    fn page() -> *mut u8 {
        // Leaked on purpose: records must outlive the allocator under test.
        unsafe { alloc_zeroed(Layout::from_size_align(PAGE_SIZE, PAGE_SIZE).unwrap()) }
    }

    fn areas(start: usize, end: usize) -> Areas {
        unsafe { Areas::new(start, end, page()) }
    }

    fn refill(a: &mut Areas) {
        while a.spare() < 2 {
            unsafe { a.add_pool_page(page()) };
        }
    }

    fn alloc(a: &mut Areas, size: usize, align: usize) -> Option<usize> {
        refill(a);
        let s = a.alloc_range(size, align, 0x10_0000, 0x100_0000).ok()?;
        a.insert_busy(s, s + size);
        Some(s)
    }

    fn free(a: &mut Areas, s: usize) {
        let r = a.unlink_busy(s).unwrap();
        unsafe { a.release(r) };
    }

    #[test]
    fn lowest_fit_and_merge() {
        let mut a = areas(0x10_0000, 0x100_0000);
        let x = alloc(&mut a, 0x2000, PAGE_SIZE).unwrap();
        let y = alloc(&mut a, 0x2000, PAGE_SIZE).unwrap();
        let z = alloc(&mut a, 0x2000, PAGE_SIZE).unwrap();
        assert_eq!((x, y, z), (0x10_0000, 0x10_2000, 0x10_4000));
        free(&mut a, y);
        a.check().unwrap();
        // The hole is the lowest fit.
        assert_eq!(alloc(&mut a, 0x1000, PAGE_SIZE), Some(0x10_2000));
        assert_eq!(alloc(&mut a, 0x1000, PAGE_SIZE), Some(0x10_3000));
        free(&mut a, 0x10_2000);
        free(&mut a, 0x10_3000);
        free(&mut a, x);
        free(&mut a, z);
        a.check().unwrap();
        assert_eq!(a.nr_free_ranges, 1);
        assert_eq!(a.largest_free(), 0xf0_0000);
    }

    #[test]
    fn alignment_is_honoured() {
        let mut a = areas(0x10_1000, 0x100_0000);
        let x = alloc(&mut a, 0x1000, 0x10_0000).unwrap();
        assert_eq!(x % 0x10_0000, 0);
        assert_eq!(x, 0x20_0000);
        a.check().unwrap();
        // The space below the aligned block is still there.
        assert_eq!(alloc(&mut a, 0x1000, PAGE_SIZE), Some(0x10_1000));
        // An alignment no range can satisfy fails cleanly.
        refill(&mut a);
        assert!(a
            .alloc_range(0x1000, 1 << 40, 0x10_0000, 0x100_0000)
            .is_err());
        assert!(a
            .alloc_range(0x1000, 1 << 63, 0x10_0000, 0x100_0000)
            .is_err());
        a.check().unwrap();
    }

    #[test]
    fn random_against_linear_model() {
        // xorshift, deterministic.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut a = areas(0x10_0000, 0x100_0000);
        let mut live: Vec<(usize, usize)> = Vec::new();
        for _ in 0..4000 {
            if live.is_empty() || !rnd().is_multiple_of(3) {
                let size = ((rnd() % 16) as usize + 1) * PAGE_SIZE;
                let align = PAGE_SIZE << (rnd() % 6);
                // Model: lowest aligned fit among gaps, searching with the
                // widened length as Linux does.
                let length = if align > PAGE_SIZE {
                    size + align - 1
                } else {
                    size
                };
                let mut sorted = live.clone();
                sorted.sort();
                let mut gaps = Vec::new();
                let mut cur = 0x10_0000;
                for &(s, e) in &sorted {
                    if s > cur {
                        gaps.push((cur, s));
                    }
                    cur = e;
                }
                gaps.push((cur, 0x100_0000));
                // Linux's guarantee: if a gap of the widened length exists,
                // the allocation succeeds, in a gap no higher than the lowest
                // such gap; whatever is returned is a real aligned fit.
                let lowest_wide = gaps.iter().find(|(s, e)| e - s >= length).copied();
                let got = alloc(&mut a, size, align);
                if let Some((ws, _)) = lowest_wide {
                    let s = got.expect("a wide enough gap exists");
                    assert!(s <= ws.next_multiple_of(align));
                }
                if let Some(s) = got {
                    assert_eq!(s % align, 0);
                    assert!(gaps.iter().any(|&(gs, ge)| gs <= s && s + size <= ge));
                    live.push((s, s + size));
                }
            } else {
                let i = (rnd() as usize) % live.len();
                let (s, _) = live.swap_remove(i);
                free(&mut a, s);
            }
            a.check().unwrap();
        }
    }
}
