//! Freeing: checks, the per-CPU fast path, Linux's `__slab_free`, and what
//! gives slabs back (deactivation, flushes, shrink, destroy).
//!
//! ```text
//!  kmem_cache_free / kfree ─ find(): direct map? slab head frame? cache? ─┐
//!  free_checked: start of an object? already free? ─┬─ debug ─► free_debug (node lock)
//!                                                   ├─ CPU flag free, CPU's node ─► push (fast);
//!                                                   │    list too long ─► flush_cold_half
//!                                                   └─ free_slow: CAS push onto the slab's list
//!  free_slow, by the slab's state before the free:
//!    frozen (some CPU's active slab) ............ nothing more
//!    full, now partial .......................... onto this CPU's partial list
//!    on the node partial list, now empty ........ node lock: discard if the node has min_partial
//! ```
//!
//! In front of it, inlined into `kfree` and `kmem_cache_free`,
//! [`KmemCache::free_fast`] makes the same checks and pushes onto the owned
//! CPU's sheaf with plain stores; a thread that does not own its CPU makes
//! one out-of-line call that takes the flag by compare-and-swap and pushes
//! ([`KmemCache::free_shared`]). Whatever either declines goes to the full
//! path above, which checks again and reports.

use super::cpu::{CpuGuard, CpuInner, CpuSlab, Fast, Stat};
use super::node::Which;
use super::slab::{SlabHit, SlabRef, Word, DISABLED, FROZEN, NIL, ON_FULL, ON_PARTIAL};
use super::{
    find, report_free_error, CacheLeak, CacheName, Found, KmemCache, SlabAllocator, SlabFreeError,
    OWNER_SLAB, OWNER_SLAB_RCU,
};
use crate::addr::Pfn;
use crate::page::FrameState;
use crate::platform::Platform;
use core::panic::Location;
use core::ptr::NonNull;
use core::sync::atomic::Ordering::Relaxed;

/// Linux's `SHRINK_PROMOTE_MAX`: [`KmemCache::shrink`] moves partial slabs
/// with up to this many free objects to the front of the partial list.
pub const SHRINK_PROMOTE_MAX: usize = 32;

impl<P: Platform> KmemCache<P> {
    /// Linux's `kmem_cache_free`. An address that is not a live object of
    /// this cache is reported and refused; nothing changes.
    #[track_caller]
    #[inline]
    pub fn free(&self, p: NonNull<u8>) -> Result<(), SlabFreeError> {
        let addr = p.as_ptr() as usize;
        if let Some((cache, hit)) = super::find_slab(self.pages(), addr) {
            if core::ptr::eq(cache, self) {
                match self.free_fast(hit, addr) {
                    Fast::Done(()) => return Ok(()),
                    Fast::Unowned => return self.free_unowned(hit.node, addr, Location::caller()),
                    Fast::Declined => {}
                }
            }
        }
        self.free_at(addr, Location::caller())
    }

    /// Linux's `kmem_cache_free_bulk`: frees each object; returns the first
    /// error (every bad object is reported and skipped). NULL entries are
    /// skipped, as Linux's `build_detached_freelist` does.
    #[track_caller]
    pub fn free_bulk(&self, objs: &[*mut u8]) -> Result<(), SlabFreeError> {
        let caller = Location::caller();
        let mut first = Ok(());
        for &p in objs {
            if p.is_null() {
                continue;
            }
            if let Err(e) = self.free_at(p as usize, caller) {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// [`Self::free`] with an explicit call site.
    #[inline]
    pub fn free_at(
        &self,
        p: usize,
        caller: &'static Location<'static>,
    ) -> Result<(), SlabFreeError> {
        let r = match find(self.pages(), p) {
            Ok(Found::Slab { cache, slab }) => {
                if core::ptr::eq(cache, self) {
                    return self.free_checked(slab, p, caller);
                }
                Err(SlabFreeError::WrongCache {
                    addr: p,
                    given: CacheName::of(self),
                    actual: CacheName::of(cache),
                })
            }
            Ok(Found::Large { .. }) => Err(SlabFreeError::LargeToCache {
                addr: p,
                given: CacheName::of(self),
            }),
            Err(e) => Err(e),
        };
        if let Err(e) = &r {
            report_free_error(self.pages(), self.global(), Some(self), e, caller);
        }
        r
    }

    /// The free fast path alone: `p` (in `slab` of this cache) onto this
    /// CPU's sheaf, for a caller that owns its CPU. [`Fast::Unowned`]
    /// once `p` passed every check but the caller does not own its CPU
    /// (then [`Self::free_unowned`]); [`Fast::Declined`], with nothing
    /// changed, for anything else it does not handle (a debug cache, an
    /// address that is not an object's start, a slot that looks free, a
    /// taken CPU flag, another node, a full or missing sheaf), which
    /// [`Self::free_checked`] then handles and reports. Plain loads and
    /// stores only.
    ///
    /// The owner's path makes no call, so the caller keeps nothing in
    /// saved registers for it; everything else returns to the caller.
    #[inline(always)]
    pub(crate) fn free_fast(&self, hit: SlabHit, p: usize) -> Fast<()> {
        // A debug cache is refused below: it has no sheaf (`sheaf_cap` 0),
        // and an unowned caller is told Declined, not Unowned. Its slot read
        // here is harmless (inside the slab) and decides nothing.
        if self.obj_index(hit.base, hit.objects, p).is_none() {
            crate::hint::cold();
            return Fast::Declined;
        }
        // One test of the mark for the whole path (the stores in between
        // would have the compiler load the flag again at each use).
        if self.marks {
            self.free_fast_as::<true>(hit, p)
        } else {
            self.free_fast_as::<false>(hit, p)
        }
    }

    /// [`Self::free_fast`] after the object test, `MARKS` being the
    /// cache's `marks`.
    #[inline(always)]
    fn free_fast_as<const MARKS: bool>(&self, hit: SlabHit, p: usize) -> Fast<()> {
        // Computed once, before the CPU flag: the loads of the cache's
        // fields would be repeated after the flag's compiler fence.
        let mark = self.free_mark(p);
        // SAFETY: p is an object of a live slab of this cache.
        if MARKS && self.plausible_fp(unsafe { (mark.0 as *const usize).read() } ^ mark.1) {
            crate::hint::cold();
            return Fast::Declined;
        }
        let Some((c, g)) = self.this_cpu_owned() else {
            return self.unowned();
        };
        let Some(mut g) = g else {
            return Fast::Declined;
        };
        if self.try_sheaf_push(&mut g, c, hit.node, p, mark, MARKS) {
            Fast::Done(())
        } else {
            crate::hint::cold();
            Fast::Declined
        }
    }

    /// [`Self::free`] of `p`, an object of a slab on `node` that
    /// [`Self::free_fast`] checked, for a caller that does not own its CPU:
    /// [`Self::free_shared`], else the full path.
    #[inline(never)]
    fn free_unowned(
        &self,
        node: u32,
        p: usize,
        caller: &'static Location<'static>,
    ) -> Result<(), SlabFreeError> {
        if self.free_shared(node, p) {
            return Ok(());
        }
        self.free_at(p, caller)
    }

    /// The free fast path for a caller that does not own its CPU, after
    /// [`Self::free_fast`] checked `p` (an object of a slab on `node`) and
    /// said [`Fast::Unowned`]: the CPU flag by compare-and-swap, `p` onto
    /// the sheaf. False, with nothing changed, if the flag is taken or the
    /// sheaf cannot take `p` (full, another node, none: a cache
    /// descriptor's cache has none).
    #[inline(always)]
    pub(crate) fn free_shared(&self, node: u32, p: usize) -> bool {
        let (c, g) = self.this_cpu_shared();
        let Some(mut g) = g else {
            return false;
        };
        self.try_sheaf_push(&mut g, c, node, p, self.free_mark(p), self.marks)
    }

    /// Where a free of `p` writes on a cache with the allocated mark, and
    /// what: its free-pointer slot ([`Self::fp_slot`]) and the slot's key
    /// ([`Self::fp_key`], NULL encoded), also what the check before it
    /// decodes with. Unused without the mark.
    #[inline(always)]
    pub(crate) fn free_mark(&self, p: usize) -> (usize, usize) {
        let slot = self.fp_slot(p);
        (slot, self.fp_key(slot))
    }

    /// Pushes `p` (a checked, live object of a slab on `node`, whose
    /// [`Self::free_mark`] is `mark`) onto the CPU's sheaf if the sheaf has
    /// room and holds `node`'s objects, and `p` is not its top object
    /// (without the allocated mark, the one double free caught there).
    /// False, with nothing changed, otherwise. `marks` is the cache's
    /// (a constant where the caller knows it).
    #[inline(always)]
    fn try_sheaf_push(
        &self,
        g: &mut CpuInner,
        c: &CpuSlab,
        node: u32,
        p: usize,
        mark: (usize, usize),
        marks: bool,
    ) -> bool {
        debug_assert_eq!(marks, self.marks);
        let n = g.sheaf_n;
        // SAFETY: slot n - 1 is the sheaf's top object.
        if n >= g.sheaf_cap
            || node != g.sheaf_node
            || (!marks && n != 0 && unsafe { *g.sheaf.add(n as usize - 1) } == p)
        {
            return false;
        }
        // SAFETY: n < sheaf_cap slots of our sheaf; p is a live object of
        // this cache, now free.
        unsafe { self.sheaf_push(g, n, p, mark, marks) };
        c.stat(Stat::FreeFastpath);
        true
    }

    /// Puts `p`, whose [`Self::free_mark`] is `mark`, in slot `n` (the
    /// first free one) of the CPU's sheaf; writes the mark if `marks` (the
    /// cache's).
    ///
    /// # Safety
    /// The CPU flag is held, `n == sheaf_n < sheaf_cap`, and `p` is an
    /// object of this cache being freed.
    #[inline(always)]
    unsafe fn sheaf_push(
        &self,
        g: &mut CpuInner,
        n: u32,
        p: usize,
        mark: (usize, usize),
        marks: bool,
    ) {
        debug_assert_eq!(mark, self.free_mark(p));
        debug_assert_eq!(marks, self.marks);
        debug_assert!(!self.debug, "a debug cache has no sheaf");
        // SAFETY: per the contract.
        unsafe {
            *g.sheaf.add(n as usize) = p;
            if marks {
                // A free object's slot decodes to NULL: a second free of it
                // is refused.
                debug_assert!(self.hardened);
                (mark.0 as *mut usize).write(mark.1);
            }
        }
        g.sheaf_n = n + 1;
    }

    /// Frees `p`, known to lie in `slab` of this cache. Checks it is the
    /// start of a live object first; reports and refuses otherwise.
    #[inline(always)]
    pub(crate) fn free_checked(
        &self,
        slab: SlabRef<'_>,
        p: usize,
        caller: &'static Location<'static>,
    ) -> Result<(), SlabFreeError> {
        let w = slab.word();
        if self.obj_index(slab.base, w.objects(), p).is_none() {
            return Err(self.refuse_interior(slab, p, caller));
        }
        if self.debug {
            return self.free_debug(slab, p, caller);
        }
        if self.marks {
            // SAFETY: p is an object of a live slab of this cache.
            let v = unsafe { self.get_fp_marked(p) };
            // A free object's slot decodes to NULL or another object; a
            // queued one's to itself.
            if self.plausible_fp(v) {
                return Err(self.refuse(self.not_live(p, v), caller));
            }
        }
        let (c, g) = self.this_cpu();
        let Some(mut g) = g else {
            return self.free_contended(slab, p, c, caller);
        };
        if self.try_sheaf_push(
            &mut g,
            c,
            slab.node() as u32,
            p,
            self.free_mark(p),
            self.marks,
        ) {
            return Ok(());
        }
        self.free_cpu_slow(slab, p, g, c, caller)
    }

    /// The CPU flag is held but the sheaf cannot take `p`: it is full
    /// (traded at the barn for an empty one, else the older half goes back
    /// to the slabs first), or there is none yet (one is made; failing
    /// that, the CPU free list takes `p`), or `p` is of another node
    /// (straight to its slab), or it is the sheaf's top object (a double
    /// free).
    #[cold]
    #[inline(never)]
    fn free_cpu_slow(
        &self,
        slab: SlabRef<'_>,
        p: usize,
        mut g: CpuGuard<'_>,
        c: &CpuSlab,
        caller: &'static Location<'static>,
    ) -> Result<(), SlabFreeError> {
        let node = slab.node() as u32;
        if g.sheaf.is_null() {
            // A CPU that has only freed so far gets its sheaf now (if a
            // block can be had; else its free list serves).
            self.get_sheaf(&mut g);
        }
        if g.sheaf_cap != 0 && node != g.sheaf_node && g.sheaf_n == 0 {
            // An empty sheaf takes the node of what comes.
            g.sheaf_node = node;
        }
        let cpu_node = if g.sheaf_cap != 0 {
            g.sheaf_node
        } else {
            g.node
        };
        if node != cpu_node {
            drop(g);
            c.stat(Stat::FreeSlowpath);
            return self
                .free_slow(slab, p, p, 1, c, None)
                .map_err(|e| self.refuse(e, caller));
        }
        if g.sheaf_cap != 0 {
            let n = g.sheaf_n;
            // SAFETY: slot n - 1 is the sheaf's top object.
            if !self.marks && n != 0 && unsafe { *g.sheaf.add(n as usize - 1) } == p {
                drop(g);
                return Err(self.refuse_double_free(p, caller));
            }
            if n == g.sheaf_cap && !self.barn_put_full(&mut g, c) {
                // Full, and the barn takes no more: the older half goes
                // back to the slabs.
                let half = g.sheaf_cap / 2;
                self.flush_sheaf(&mut g, c, half);
            }
            let n = g.sheaf_n;
            // SAFETY: n < sheaf_cap slots of our sheaf (after the flush).
            unsafe { self.sheaf_push(&mut g, n, p, self.free_mark(p), self.marks) };
            c.stat(Stat::FreeFastpath);
            return Ok(());
        }
        if !self.marks && g.freelist == p {
            drop(g);
            return Err(self.refuse_double_free(p, caller));
        }
        // SAFETY: p is a live object of this cache, now free.
        unsafe { self.set_fp(p, g.freelist) };
        g.freelist = p;
        g.count += 1;
        if g.count > self.cpu_list_max {
            self.flush_cold_half(&mut g, c);
        }
        c.stat(Stat::FreeFastpath);
        Ok(())
    }

    /// The CPU flag is taken (another thread on this CPU number, or an
    /// interrupted owner): straight to the slab.
    #[cold]
    #[inline(never)]
    fn free_contended(
        &self,
        slab: SlabRef<'_>,
        p: usize,
        c: &CpuSlab,
        caller: &'static Location<'static>,
    ) -> Result<(), SlabFreeError> {
        c.stat(Stat::FreeContended);
        c.stat(Stat::FreeSlowpath);
        self.free_slow(slab, p, p, 1, c, None)
            .map_err(|e| self.refuse(e, caller))
    }

    #[cold]
    #[inline(never)]
    fn refuse_interior(
        &self,
        slab: SlabRef<'_>,
        p: usize,
        caller: &'static Location<'static>,
    ) -> SlabFreeError {
        self.refuse(self.interior(slab, p), caller)
    }

    #[cold]
    #[inline(never)]
    fn refuse_double_free(&self, p: usize, caller: &'static Location<'static>) -> SlabFreeError {
        self.refuse(self.double_free(p), caller)
    }

    /// Gives the `n` oldest objects of the CPU's sheaf (its bottom) back to
    /// their slabs, and moves the rest down.
    #[cold]
    #[inline(never)]
    pub(crate) fn flush_sheaf(&self, g: &mut CpuInner, c: &CpuSlab, n: u32) {
        let n = n.min(g.sheaf_n);
        if n == 0 {
            return;
        }
        c.stat(Stat::SheafFlush);
        // SAFETY: the first sheaf_n slots hold free objects of this cache,
        // ours under the flag.
        unsafe {
            let s = core::slice::from_raw_parts_mut(g.sheaf, g.sheaf_n as usize);
            self.link_objects(&s[..n as usize]);
            let head = s[0];
            s.copy_within(n as usize.., 0);
            g.sheaf_n -= n;
            self.flush_chain(head, c, g);
        }
    }

    /// Gives the free objects `objs` (a detached sheaf's) back to their
    /// slabs.
    ///
    /// # Safety
    /// Every entry is a free object of this cache that nothing else holds.
    pub(crate) unsafe fn flush_objects(&self, objs: &[usize], c: &CpuSlab, g: &mut CpuInner) {
        if objs.is_empty() {
            return;
        }
        // SAFETY: per the contract.
        unsafe { self.link_objects(objs) };
        self.flush_chain(objs[0], c, g);
    }

    /// Links `objs` into a chain through their free pointers (the last one
    /// ends it), the chain `flush_chain` takes.
    ///
    /// # Safety
    /// As [`Self::flush_objects`].
    unsafe fn link_objects(&self, objs: &[usize]) {
        for (i, &o) in objs.iter().enumerate() {
            let next = objs.get(i + 1).copied().unwrap_or(0);
            // SAFETY: per the contract.
            unsafe { self.set_fp(o, next) };
        }
    }

    /// The CPU list outgrew its limit: keep the most recently freed half
    /// (hot in cache), give the rest back to the slabs.
    #[cold]
    fn flush_cold_half(&self, g: &mut CpuGuard<'_>, c: &CpuSlab) {
        let keep = self.cpu_list_max / 2;
        let mut cur = g.freelist;
        for _ in 1..keep {
            // SAFETY: objects on our list.
            let next = unsafe { self.get_fp(cur) };
            if next == 0 || !self.plausible_fp(next) {
                return;
            }
            cur = next;
        }
        // SAFETY: as above.
        let rest = unsafe { self.get_fp(cur) };
        if rest == 0 || !self.plausible_fp(rest) {
            return;
        }
        // SAFETY: cur is ours; cut the list after it.
        unsafe { self.set_fp(cur, 0) };
        g.count = keep;
        c.stat(Stat::CpuListFlush);
        self.flush_chain(rest, c, g);
    }

    /// Gives a chain of free objects (linked through their free pointers,
    /// from any slabs of this cache) back to their slabs, one
    /// compare-and-swap per run of objects of the same slab.
    pub(crate) fn flush_chain(&self, mut cur: usize, c: &CpuSlab, g: &mut CpuInner) {
        let pages = self.pages();
        while cur != 0 {
            let slab = match super::find(pages, cur) {
                Ok(Found::Slab { cache, slab }) if core::ptr::eq(cache, self) => slab,
                _ => {
                    self.platform().warn(format_args!(
                        "BUG {}: CPU free list holds {cur:#x}, not an object of the cache; rest of the list dropped",
                        self.name()
                    ));
                    self.count_error_pub();
                    return;
                }
            };
            let objects = slab.word().objects();
            let mut tail = cur;
            let mut n = 1;
            // SAFETY: objects on our list.
            let mut next = unsafe { self.get_fp(tail) };
            while next != 0 && next.wrapping_sub(slab.base) < slab.bytes() {
                if self.obj_index(slab.base, objects, next).is_none() {
                    break;
                }
                tail = next;
                n += 1;
                // SAFETY: as above.
                next = unsafe { self.get_fp(tail) };
            }
            if next != 0 && !self.plausible_fp(next) {
                self.object_err(slab, tail, format_args!("Freechain corrupt"));
                next = 0;
            }
            // An error is reported inside; those objects stay allocated.
            let _ = self.free_slow(slab, cur, tail, n, c, Some(&mut *g));
            cur = next;
        }
    }
    #[cold]
    fn refuse(&self, e: SlabFreeError, caller: &'static Location<'static>) -> SlabFreeError {
        report_free_error(self.pages(), self.global(), Some(self), &e, caller);
        e
    }

    #[cold]
    pub(crate) fn interior(&self, slab: SlabRef<'_>, p: usize) -> SlabFreeError {
        let objects = slab.word().objects() as usize;
        let off = p.wrapping_sub(slab.base);
        let idx = off / self.size;
        let object = if off < objects * self.size {
            self.obj_addr(slab.base, idx as u32)
        } else {
            0
        };
        let object = if object > p { 0 } else { object };
        SlabFreeError::Interior {
            addr: p,
            object,
            cache: CacheName::of(self),
        }
    }

    /// Refuses `p` (the start of an object of `slab`) if it is known to be
    /// free: what `kfree` checks, for the entry points that use an object
    /// before (or instead of) freeing it (`ksize`, `kfree_sensitive`,
    /// `kfree_rcu`, `krealloc`). Allocated mark: its free-pointer slot; debug: its
    /// slab's free list, under the node lock (debug caches keep free
    /// objects nowhere else). Without either nothing tells, as in Linux.
    pub(crate) fn check_live(&self, slab: SlabRef<'_>, p: usize) -> Result<(), SlabFreeError> {
        if self.debug {
            let _lists = self.nodes[slab.node()].lists.lock();
            if self.is_on_freelist(slab, p) {
                return Err(self.double_free(p));
            }
        } else if self.marks {
            // SAFETY: p is an object of a live slab of this cache (caller).
            let v = unsafe { self.get_fp_marked(p) };
            if self.plausible_fp(v) {
                return Err(self.not_live(p, v));
            }
        }
        Ok(())
    }

    /// Why the marked object `p`, whose slot decodes to the plausible
    /// pointer `v`, is not live: queued by `kfree_rcu` (`v == p`, see
    /// [`Self::mark_rcu_queued`]) or free.
    #[cold]
    fn not_live(&self, p: usize, v: usize) -> SlabFreeError {
        if v == p {
            SlabFreeError::RcuQueued {
                addr: p,
                cache: CacheName::of(self),
            }
        } else {
            self.double_free(p)
        }
    }

    /// `kfree_rcu` queues `p`: on a cache with the allocated mark, without
    /// debugging, whose
    /// free-pointer slot lies after the object (a constructor or
    /// `SLAB_TYPESAFE_BY_RCU` puts it there), the slot then decodes to `p`
    /// itself, which no free list holds (an object never links to itself),
    /// and which every free path reads as "not live", so a plain free of a
    /// queued object is refused instead of letting the object be handed out
    /// again before the grace period frees it. A slot inside the object
    /// (kmalloc caches) is left alone: readers may still read every byte
    /// but the `rcu_head` until the grace period ends. The grace period
    /// undoes the mark with [`Self::unmark_rcu_queued`].
    ///
    /// # Safety
    /// `p` is a live object of this cache.
    pub(crate) unsafe fn mark_rcu_queued(&self, p: usize) {
        if self.marks_rcu_queued() {
            // SAFETY: per the contract; the object stays allocated.
            unsafe { self.set_fp_marked(p, p) };
        }
    }

    /// True if [`Self::mark_rcu_queued`] marks this cache's objects: the
    /// allocated mark on, no debugging, the free-pointer slot after the
    /// object.
    fn marks_rcu_queued(&self) -> bool {
        self.marks && !self.debug && self.offset >= self.object_size()
    }

    /// The grace period is over for the queued `p`: it is an allocated
    /// object again, for the free that follows.
    ///
    /// # Safety
    /// `p` is an object of a live slab of this cache.
    pub(crate) unsafe fn unmark_rcu_queued(&self, p: usize) {
        // SAFETY: per the contract.
        if self.marks_rcu_queued() && unsafe { self.get_fp_marked(p) } == p {
            // SAFETY: as above.
            unsafe { self.mark_allocated(p) };
        }
    }

    #[cold]
    pub(crate) fn double_free(&self, p: usize) -> SlabFreeError {
        SlabFreeError::DoubleFree {
            addr: p,
            cache: CacheName::of(self),
        }
    }

    /// Linux's `__slab_free`: pushes the chain `head..=tail` (`cnt` objects)
    /// onto the slab's own list with a compare-and-swap, then fixes the
    /// slab's list membership if the free changed it.
    /// `held` is the CPU state when the caller holds its flag (flushes): a
    /// slab that becomes partial then goes straight onto its partial list.
    pub(crate) fn free_slow(
        &self,
        slab: SlabRef<'_>,
        head: usize,
        tail: usize,
        cnt: u32,
        c: &CpuSlab,
        held: Option<&mut CpuInner>,
    ) -> Result<(), SlabFreeError> {
        let node = slab.node();
        let n = &self.nodes[node];
        let has_cpu_partial = self.cpu_partial_slabs != 0;
        let head_idx = self.idx_of(slab.base, head);
        let mut guard = None;
        let (old, new) = loop {
            let old = slab.word();
            if old.inuse() < cnt || old.has(DISABLED) {
                drop(guard);
                return Err(self.bad_slab_free(slab, head, old, cnt));
            }
            if !self.marks && old.free() == head_idx {
                drop(guard);
                return Err(self.double_free(head));
            }
            let prior = if old.has_free() {
                self.obj_addr(slab.base, old.free())
            } else {
                0
            };
            // SAFETY: tail is an object being freed by us.
            unsafe { self.set_fp(tail, prior) };
            let new = old.with_free(head_idx).with_inuse(old.inuse() - cnt);
            // A full slab still marked on the partial list is being taken
            // off it by `alloc_single`, which holds the node lock: wait for
            // that, or the slab would end up on two lists.
            let full_listed = !old.has_free() && old.has(ON_PARTIAL);
            if !old.has(FROZEN)
                && ((new.inuse() == 0 || !old.has_free()) && (old.has_free() || !has_cpu_partial)
                    || full_listed)
                && guard.is_none()
            {
                // The slab may change lists: decide under the node lock.
                guard = Some(n.lists.lock());
                continue;
            }
            if slab.cas(old, new) {
                break (old, new);
            }
            c.stat(Stat::CmpxchgDoubleFail);
        };
        let needs_list = !old.has(FROZEN)
            && (new.inuse() == 0 || !old.has_free())
            && (old.has_free() || !has_cpu_partial);
        let Some(mut lists) = guard.filter(|_| needs_list) else {
            if old.has(FROZEN) {
                c.stat(Stat::FreeFrozen);
            } else if !old.has_free() && has_cpu_partial {
                self.put_cpu_partial(slab, held);
                c.stat(Stat::CpuPartialFree);
            }
            return Ok(());
        };
        if old.has_free() && !new.has(ON_PARTIAL) {
            // On some CPU's partial list or being taken: not ours to move.
            return Ok(());
        }
        if new.inuse() == 0 && lists.partial.len >= self.min_partial {
            if new.has(ON_PARTIAL) {
                self.remove_partial(node, &mut lists, slab);
                c.stat(Stat::FreeRemovePartial);
            } else if new.has(ON_FULL) {
                self.list_del(node, &mut lists, Which::Full, slab);
            }
            drop(lists);
            c.stat(Stat::FreeSlab);
            self.discard_slab(slab);
            return Ok(());
        }
        if !old.has_free() && !new.has(ON_PARTIAL) {
            if new.has(ON_FULL) {
                self.list_del(node, &mut lists, Which::Full, slab);
            }
            self.add_partial(node, &mut lists, slab, true);
            c.stat(Stat::FreeAddPartial);
        }
        Ok(())
    }

    /// More objects freed than the slab has in use, or a disabled slab:
    /// the slab metadata is not trustworthy, refuse.
    #[cold]
    fn bad_slab_free(&self, slab: SlabRef<'_>, p: usize, w: Word, cnt: u32) -> SlabFreeError {
        if w.has(DISABLED) {
            self.slab_err(
                slab,
                format_args!("Slab disabled since SLUB metadata consistency check failed"),
            );
        } else {
            self.slab_err(
                slab,
                format_args!(
                    "Slab has {} allocated objects but {cnt} are to be freed",
                    w.inuse()
                ),
            );
        }
        SlabFreeError::Corrupt {
            addr: p,
            cache: CacheName::of(self),
        }
    }

    /// Linux's `put_cpu_partial`: a slab that just became partial goes onto
    /// this CPU's partial list; a full list is drained to the node first.
    fn put_cpu_partial(&self, slab: SlabRef<'_>, held: Option<&mut CpuInner>) {
        let mut guard;
        let (c, g): (&CpuSlab, &mut CpuInner) = match held {
            Some(g) => (self.cpu_slab(self.platform().cpu_id()), g),
            None => match self.this_cpu() {
                (c, Some(g)) => {
                    guard = g;
                    (c, &mut guard)
                }
                (c, None) => {
                    slab.set_next(NIL);
                    self.put_partials_chain(slab.pfn, 1, c);
                    return;
                }
            },
        };
        if g.nr_partial >= self.cpu_partial_slabs {
            let chain = g.partial;
            let n = g.nr_partial;
            g.partial = NIL;
            g.nr_partial = 0;
            c.stat(Stat::CpuPartialDrain);
            self.put_partials_chain(chain, n, c);
        }
        slab.set_next(g.partial);
        g.partial = slab.pfn;
        g.nr_partial += 1;
    }

    /// Linux's `__put_partials`: moves a chain of unfrozen partial slabs
    /// (linked through `next`) to their node partial lists, giving empty
    /// ones back beyond `min_partial`.
    pub(crate) fn put_partials_chain(&self, mut pfn: u32, max: u32, c: &CpuSlab) {
        let mut left = max;
        while pfn != NIL && left > 0 {
            let slab = self.slab_at(pfn);
            pfn = slab.next();
            left -= 1;
            let node = slab.node();
            let mut lists = self.nodes[node].lists.lock();
            let w = slab.word();
            if w.inuse() == 0 && lists.partial.len >= self.min_partial {
                drop(lists);
                c.stat(Stat::FreeSlab);
                self.discard_slab(slab);
            } else if w.has(DISABLED) || !w.has_free() {
                // Nothing to hand out: stays off the lists like a full slab.
            } else {
                self.add_partial(node, &mut lists, slab, true);
                c.stat(Stat::FreeAddPartial);
            }
        }
    }

    /// Linux's `deactivate_slab`: gives every object on the CPU list back to
    /// its slab, then gives the active slab up, putting it where it now
    /// belongs (partial list, nowhere if full, back to the page allocator if
    /// empty and the node has enough).
    pub(crate) fn deactivate(&self, g: &mut CpuGuard<'_>, c: &CpuSlab) {
        // Objects on the active slab's own list before the CPU list goes
        // back were freed by other CPUs: such a slab goes to the tail of the
        // partial list, any other to the head, where it is still cache-warm
        // (Linux: DEACTIVATE_REMOTE_FREES, then TO_TAIL or TO_HEAD).
        let active = (g.slab != NIL).then(|| self.slab_at(g.slab));
        let remote_frees = active.is_some_and(|s| s.word().has_free());
        let head = g.freelist;
        g.freelist = 0;
        g.count = 0;
        if head != 0 {
            // Frees to the slabs; the active slab stays the CPU's.
            self.flush_chain(head, c, g);
        }
        let Some(slab) = active else {
            return;
        };
        g.slab = NIL;
        let new = loop {
            let old = slab.word();
            let new = old.with(FROZEN, false);
            if slab.cas(old, new) {
                break new;
            }
            c.stat(Stat::CmpxchgDoubleFail);
        };
        if remote_frees {
            c.stat(Stat::DeactivateRemoteFrees);
        }
        let node = slab.node();
        if new.has(DISABLED) {
            c.stat(Stat::DeactivateFull);
        } else if new.inuse() == 0 && self.nodes[node].nr_partial.load(Relaxed) >= self.min_partial
        {
            c.stat(Stat::DeactivateEmpty);
            c.stat(Stat::FreeSlab);
            self.discard_slab(slab);
        } else if new.has_free() {
            let mut lists = self.nodes[node].lists.lock();
            self.add_partial(node, &mut lists, slab, remote_frees);
            c.stat(if remote_frees {
                Stat::DeactivateToTail
            } else {
                Stat::DeactivateToHead
            });
        } else {
            c.stat(Stat::DeactivateFull);
        }
    }

    /// Flushes one CPU: gives its active slab up and moves its partial
    /// slabs to the node lists. Waits for the CPU's flag.
    pub(crate) fn flush_cpu(&self, cpu: usize) {
        let c = self.cpu_slab(cpu);
        let mut g = self.lock_cpu(cpu);
        if g.slab == NIL && g.partial == NIL && g.freelist == 0 && g.sheaf.is_null() {
            return;
        }
        c.stat(Stat::CpuslabFlush);
        self.put_sheaf(&mut g, c);
        self.deactivate(&mut g, c);
        let chain = g.partial;
        let n = g.nr_partial;
        g.partial = NIL;
        g.nr_partial = 0;
        self.put_partials_chain(chain, n, c);
    }

    /// Flushes every CPU (Linux's `flush_all`).
    pub fn flush_all(&self) {
        self.drain_barns();
        for cpu in 0..self.nr_cpus {
            self.flush_cpu(cpu);
        }
    }

    /// Linux's `kmem_cache_shrink` (`__kmem_cache_do_shrink`): flushes
    /// every CPU, gives every empty slab back and reorders each node's
    /// partial list so that the slabs with the fewest free objects (1 to
    /// [`SHRINK_PROMOTE_MAX`]) come first, fullest first: allocations then
    /// finish those off and the emptier slabs get a chance to empty. Slabs
    /// with more free objects keep their order behind them. Returns the
    /// number of slabs freed.
    pub fn shrink(&self) -> usize {
        self.flush_all();
        let mut freed = 0;
        for node in 0..self.pages().nr_nodes() {
            let mut discard = NIL;
            {
                let mut lists = self.nodes[node].lists.lock();
                // promote[k]: slabs with k + 1 free objects, in list order.
                let mut promote = [(NIL, NIL); SHRINK_PROMOTE_MAX];
                let mut cur = lists.partial.head;
                while cur != NIL {
                    let slab = self.slab_at(cur);
                    cur = slab.next();
                    let w = slab.word();
                    let free = w.objects().saturating_sub(w.inuse()) as usize;
                    if w.inuse() == 0 {
                        self.remove_partial(node, &mut lists, slab);
                        self.dec_slabs_node(slab);
                        slab.set_next(discard);
                        discard = slab.pfn;
                    } else if (1..=SHRINK_PROMOTE_MAX).contains(&free) {
                        self.remove_partial(node, &mut lists, slab);
                        let (head, tail) = &mut promote[free - 1];
                        if *tail == NIL {
                            *head = slab.pfn;
                        } else {
                            self.slab_at(*tail).set_next(slab.pfn);
                        }
                        *tail = slab.pfn;
                    }
                }
                // To the head, the most free first, so that the slabs with
                // one free object end up in front (each group in the reverse
                // of its list order, as Linux's list_move/list_splice leave
                // it).
                for &(head, _) in promote.iter().rev() {
                    let mut cur = head;
                    while cur != NIL {
                        let slab = self.slab_at(cur);
                        cur = slab.next();
                        self.add_partial(node, &mut lists, slab, false);
                    }
                }
            }
            while discard != NIL {
                let slab = self.slab_at(discard);
                discard = slab.next();
                self.release_slab(slab);
                freed += 1;
            }
        }
        freed
    }

    /// Linux's `discard_slab`: the slab leaves the node counters and goes
    /// back to the page allocator (after a grace period for
    /// `SLAB_TYPESAFE_BY_RCU`).
    pub(crate) fn discard_slab(&self, slab: SlabRef<'_>) {
        self.dec_slabs_node(slab);
        self.release_slab(slab);
    }

    /// Takes a slab out of its node's counters (under the node lock for
    /// debug caches, so that validation sees lists and counters agree).
    pub(crate) fn dec_slabs_node(&self, slab: SlabRef<'_>) {
        let n = &self.nodes[slab.node()];
        n.nr_slabs.fetch_sub(1, Relaxed);
        n.total_objects
            .fetch_sub(slab.word().objects() as usize, Relaxed);
    }

    /// Puts a slab into its node's counters (see [`Self::dec_slabs_node`]).
    pub(crate) fn inc_slabs_node(&self, slab: SlabRef<'_>) {
        let n = &self.nodes[slab.node()];
        n.nr_slabs.fetch_add(1, Relaxed);
        n.total_objects
            .fetch_add(slab.word().objects() as usize, Relaxed);
    }

    /// Gives a slab already out of the node counters back to the page
    /// allocator (after a grace period for `SLAB_TYPESAFE_BY_RCU`).
    pub(crate) fn release_slab(&self, slab: SlabRef<'_>) {
        if self.flags.contains(super::SlabFlags::TYPESAFE_BY_RCU) {
            // Its tail records stop answering for it now: a free into it
            // meanwhile takes the full path, which reads the head's owner.
            self.set_tail_records(Pfn(slab.pfn as u64), slab.order(), None);
            slab.frame.set_owner(OWNER_SLAB_RCU);
            self.global().rcu.defer_slab(slab);
            return;
        }
        self.free_slab_pages(slab);
    }

    /// Gives a slab's block back to the page allocator (Linux's
    /// `__free_slab`), after the debug checks of a consistency-checked cache.
    pub(crate) fn free_slab_pages(&self, slab: SlabRef<'_>) {
        if self.flags.contains(super::SlabFlags::CONSISTENCY_CHECKS) {
            self.check_slab_before_free(slab);
        }
        let order = slab.order();
        let f = slab.frame;
        self.set_tail_records(Pfn(slab.pfn as u64), order, None);
        f.set_owner(0);
        f.private[0].store(0, Relaxed);
        f.private[1].store(0, Relaxed);
        f.next.store(NIL, Relaxed);
        f.prev.store(NIL, Relaxed);
        if let Err(e) = self.pages().free_pages(Pfn(slab.pfn as u64), order) {
            self.platform().warn(format_args!(
                "slab {}: giving a slab back failed: {e}",
                self.name()
            ));
        }
    }

    /// `kmem_cache_destroy` with the caller's location.
    pub(crate) fn destroy_at(&self, caller: &'static Location<'static>) -> Result<(), CacheLeak> {
        let global = self.global();
        // Destroying may sleep (Linux: slab_mutex, rcu_barrier): reported in
        // atomic context, then done anyway, as a kernel would go on after
        // the splat.
        let _ = super::sleep_in_atomic(self.pages(), global, caller);
        if self.refcount.fetch_sub(1, Relaxed) > 1 {
            return Ok(());
        }
        // Off the list first: once the list lock has been taken here, no
        // walk of the list (shrink_all, the shrinker, slabinfo) is inside
        // this cache or can reach it again. A shrink still running would
        // take empty slabs off the partial list that shutdown then misses,
        // and on a SLAB_TYPESAFE_BY_RCU cache queue them for a grace period
        // after the barrier below, naming a freed descriptor (Linux holds
        // slab_mutex across all of it).
        SlabAllocator::unlink_cache(global, self);
        // kfree_rcu()s in flight may hold objects of ours (slabs their
        // frees empty wait for the grace period below).
        global.rcu_barrier(self.pages());
        self.flush_all();
        let leak = self.shutdown();
        if self.flags.contains(super::SlabFlags::TYPESAFE_BY_RCU) {
            // Shutdown just queued our empty slabs for a grace period, and
            // the one above those its frees emptied; they must be gone
            // before the cache is (Linux: rcu_barrier()).
            global.rcu_barrier(self.pages());
        }
        if let Some(leak) = leak {
            self.platform().warn(format_args!(
                "WARNING: kmem_cache_destroy {}: Slab cache still has objects when called from {caller} ({leak})",
                self.name()
            ));
            return Err(leak);
        }
        let kc = global.kmem_cache.load(Relaxed);
        // SAFETY: kmem_cache outlives every other cache.
        let kc = unsafe { &*kc };
        let me = self as *const Self as usize;
        // Nothing may touch `self` after this.
        let _ = kc.free_at(me, caller);
        Ok(())
    }

    /// Linux's `__kmem_cache_shutdown` after the flush: gives back every
    /// empty slab; lists objects still allocated.
    fn shutdown(&self) -> Option<CacheLeak> {
        let mut leak = CacheLeak {
            objects: 0,
            slabs: 0,
        };
        for node in 0..self.pages().nr_nodes() {
            let mut discard = NIL;
            {
                let mut lists = self.nodes[node].lists.lock();
                let mut cur = lists.partial.head;
                while cur != NIL {
                    let slab = self.slab_at(cur);
                    cur = slab.next();
                    let w = slab.word();
                    if w.inuse() == 0 {
                        self.remove_partial(node, &mut lists, slab);
                        slab.set_next(discard);
                        discard = slab.pfn;
                    } else {
                        leak.slabs += 1;
                        leak.objects += self.list_slab_objects(slab);
                    }
                }
                let mut cur = lists.full.head;
                while cur != NIL {
                    let slab = self.slab_at(cur);
                    cur = slab.next();
                    leak.slabs += 1;
                    leak.objects += self.list_slab_objects(slab);
                }
            }
            while discard != NIL {
                let slab = self.slab_at(discard);
                discard = slab.next();
                self.discard_slab(slab);
            }
        }
        // Full slabs of caches without a full list: find them through the
        // frame records.
        if self.nr_slabs() > leak.slabs {
            self.for_each_unlisted_slab(|slab| {
                leak.slabs += 1;
                leak.objects += self.list_slab_objects(slab);
            });
        }
        (leak.slabs > 0).then_some(leak)
    }

    /// Calls `f` on every slab of this cache that is on no node list (full
    /// slabs of non-debug caches), by scanning the frame records. Used only
    /// on error paths and teardown.
    pub(crate) fn for_each_unlisted_slab(&self, mut f: impl FnMut(SlabRef<'_>)) {
        let pages = self.pages();
        let me = self as *const Self as usize;
        let mut pfn = 0u64;
        while pfn < pages.max_pfn() {
            let Some(fr) = pages.frame(Pfn(pfn)) else {
                pfn += 1;
                continue;
            };
            let step = if fr.state() == FrameState::Allocated {
                1u64 << fr.order()
            } else {
                1
            };
            if fr.state() == FrameState::Allocated
                && fr.owner() == OWNER_SLAB
                && fr.private[0].load(Relaxed) == me
            {
                let slab = self.slab_at(pfn as u32);
                let w = slab.word();
                if !w.has(ON_PARTIAL) && !w.has(ON_FULL) {
                    f(slab);
                }
            }
            pfn += step;
        }
    }

    /// Gives every slab back, live objects or not (the allocator is being
    /// dropped). The slab holding `self` (kmem_cache's own) goes last.
    pub(crate) fn teardown(&self) {
        self.flush_all();
        let me = self as *const Self as usize;
        let mut own: Option<u32> = None;
        let mut victims = NIL;
        // Full slabs on no list first (found by their frame records), while
        // the listed ones still carry their list bits.
        let listed: usize = (0..self.pages().nr_nodes())
            .map(|n| {
                let l = self.nodes[n].lists.lock();
                l.partial.len + l.full.len
            })
            .sum();
        if self.nr_slabs() > listed {
            self.for_each_unlisted_slab(|slab| {
                slab.set_next(victims);
                victims = slab.pfn;
            });
        }
        for node in 0..self.pages().nr_nodes() {
            let mut lists = self.nodes[node].lists.lock();
            for which in [Which::Partial, Which::Full] {
                loop {
                    let head = match which {
                        Which::Partial => lists.partial.head,
                        Which::Full => lists.full.head,
                    };
                    if head == NIL {
                        break;
                    }
                    let slab = self.slab_at(head);
                    self.list_del(node, &mut lists, which, slab);
                    slab.set_next(victims);
                    victims = slab.pfn;
                }
            }
        }
        while victims != NIL {
            let slab = self.slab_at(victims);
            victims = slab.next();
            if me >= slab.base && me < slab.base + slab.bytes() {
                own = Some(slab.pfn);
                continue;
            }
            let n = &self.nodes[slab.node()];
            n.nr_slabs.fetch_sub(1, Relaxed);
            n.total_objects
                .fetch_sub(slab.word().objects() as usize, Relaxed);
            self.release_pages_quietly(slab);
        }
        if let Some(pfn) = own {
            let slab = self.slab_at(pfn);
            // `self` lives in this slab: nothing may touch it afterwards.
            self.release_pages_quietly(slab);
        }
    }

    fn release_pages_quietly(&self, slab: SlabRef<'_>) {
        let order = slab.order();
        let f = slab.frame;
        let pages = self.pages();
        self.set_tail_records(Pfn(slab.pfn as u64), order, None);
        f.set_owner(0);
        f.private[0].store(0, Relaxed);
        f.private[1].store(0, Relaxed);
        let _ = pages.free_pages(Pfn(slab.pfn as u64), order);
    }
}
