//! Allocation: the per-CPU fast path and everything behind it.
//!
//! ```text
//!  slab_alloc ─ context check (once) ─┬─ debug cache ──────────────► alloc_single (node lock)
//!                                     └─ alloc_fast: CPU flag, pop ─► alloc_slow
//!  alloc_slow (the CPU list is empty):
//!              1. refill from frees to the active slab (take all)
//!              2. a slab from the CPU partial list
//!              3. a slab from a node partial list (+ a few more to the CPU list)
//!              4. a new slab, no lock held while the page allocator runs
//! ```
//!
//! In front of it, inlined into `kmalloc` and `kmem_cache_alloc`,
//! [`KmemCache::alloc_fast_path`]: the owner of its CPU pops the sheaf with
//! plain stores; a thread that does not own its CPU is told
//! [`Fast::Unowned`] and makes one out-of-line call that takes the flag
//! by compare-and-swap and pops ([`KmemCache::alloc_shared`]). Whatever
//! either declines (empty sheaf, taken flag, debug cache, atomic context)
//! goes to `slab_alloc`.
//!
//! A request for another node than the CPU's (`kmalloc_node`) bypasses the
//! CPU list: one object from that node's partial lists.
//!
//! A thread that finds its CPU flag taken (another thread on the same CPU
//! number, or an interrupt in a kernel) does not wait: it takes one object
//! under the node lock ([`KmemCache::alloc_single`]), the path debug caches
//! always use.

use super::cpu::{CpuGuard, CpuInner, CpuSlab, Fast, Stat};
use super::node::Which;
use super::slab::{SlabRef, Word, DISABLED, FROZEN, MAX_OBJS_PER_SLAB, NIL, NO_FREE};
use super::{KmemCache, OWNER_SLAB};
use crate::addr::{Pfn, PAGE_SIZE};
use crate::context::{ContextPolicy, ContextViolation, ExecContext};
use crate::error::AllocError;
use crate::gfp::Gfp;
use crate::page::alloc::OnceSite;
use crate::page::NUMA_NO_NODE;
use crate::platform::Platform;
use core::panic::Location;
use core::ptr::NonNull;
use core::sync::atomic::Ordering::{Relaxed, Release};

/// GFP bits a slab passes on to the page allocator (Linux's
/// `GFP_RECLAIM_MASK | GFP_CONSTRAINT_MASK`); zone and mobility come from
/// the cache.
const SLAB_PAGE_GFP: Gfp = Gfp::RECLAIM
    .union(Gfp::HIGH)
    .union(Gfp::IO)
    .union(Gfp::FS)
    .union(Gfp::NOWARN)
    .union(Gfp::RETRY_MAYFAIL)
    .union(Gfp::NOFAIL)
    .union(Gfp::NORETRY)
    .union(Gfp::MEMALLOC)
    .union(Gfp::NOMEMALLOC)
    .union(Gfp::NOLOCKDEP)
    .union(Gfp::HARDWALL)
    .union(Gfp::THISNODE);

impl<P: Platform> KmemCache<P> {
    /// Linux's `kmem_cache_alloc`.
    #[track_caller]
    #[inline]
    pub fn alloc(&self, gfp: Gfp) -> Result<NonNull<u8>, AllocError> {
        match self.alloc_fast_path(gfp) {
            Fast::Done(p) => Ok(p),
            Fast::Unowned => self.alloc_unowned(gfp, Location::caller()),
            Fast::Declined => {
                self.slab_alloc(gfp, NUMA_NO_NODE, self.object_size(), Location::caller())
            }
        }
    }

    /// [`Self::alloc`] for a caller that does not own its CPU:
    /// [`Self::alloc_shared`], else the full path.
    #[inline(never)]
    fn alloc_unowned(
        &self,
        gfp: Gfp,
        caller: &'static Location<'static>,
    ) -> Result<NonNull<u8>, AllocError> {
        match self.alloc_shared(gfp) {
            Some(p) => Ok(p),
            None => self.slab_alloc(gfp, NUMA_NO_NODE, self.object_size(), caller),
        }
    }

    /// The allocation fast path alone: an object popped from this CPU's
    /// sheaf, for a caller that owns its CPU. [`Fast::Unowned`] for a
    /// caller that does not (then [`Self::alloc_shared`]);
    /// [`Fast::Declined`], with nothing changed, for anything else it
    /// does not handle — a debug cache, an atomic context that needs the
    /// context check, a taken CPU flag, an empty sheaf — which `slab_alloc`
    /// then handles. Plain loads and stores only (the owner's way of taking
    /// the flag, known here, so the release needs no choosing).
    #[inline(always)]
    pub(crate) fn alloc_fast_path(&self, gfp: Gfp) -> Fast<NonNull<u8>> {
        let p = self.platform();
        if p.in_atomic() {
            crate::hint::cold();
            let ctx = p.context();
            if ctx.in_nmi() || gfp.allows_blocking() {
                return Fast::Declined;
            }
        }
        // A debug cache has no sheaf (`sheaf_cap` 0): Declined below.
        let Some((c, g)) = self.this_cpu_owned() else {
            return self.unowned();
        };
        let Some(mut g) = g else {
            return Fast::Declined;
        };
        let Some(obj) = self.sheaf_pop(&mut g, c) else {
            crate::hint::cold();
            return Fast::Declined;
        };
        drop(g);
        // SAFETY: a fresh object of this cache.
        Fast::Done(unsafe { self.fresh(obj, gfp) })
    }

    /// The fast path for a caller that does not own its CPU (after
    /// [`Self::alloc_fast_path`] said [`Fast::Unowned`]): the CPU flag
    /// by compare-and-swap, an object popped from the sheaf. None, with
    /// nothing changed, if the flag is taken or the sheaf empty.
    #[inline(always)]
    pub(crate) fn alloc_shared(&self, gfp: Gfp) -> Option<NonNull<u8>> {
        let (c, g) = self.this_cpu_shared();
        let mut g = g?;
        let obj = self.sheaf_pop(&mut g, c)?;
        drop(g);
        // SAFETY: a fresh object of this cache.
        Some(unsafe { self.fresh(obj, gfp) })
    }

    /// `obj`, just popped from a sheaf, as the caller gets it: zeroed for
    /// `__GFP_ZERO`.
    ///
    /// # Safety
    /// `obj` is a fresh object of this cache, not yet handed out.
    #[inline(always)]
    unsafe fn fresh(&self, obj: usize, gfp: Gfp) -> NonNull<u8> {
        if gfp.contains(Gfp::ZERO) {
            if self.ctor.is_some() {
                self.zero_undoes_ctor(None);
            }
            // SAFETY: a fresh object of object_size bytes.
            unsafe { core::ptr::write_bytes(obj as *mut u8, 0, self.object_size()) };
        }
        // SAFETY: object addresses are direct-map addresses, never 0.
        unsafe { NonNull::new_unchecked(obj as *mut u8) }
    }

    /// Linux's `kmem_cache_alloc_node`: prefer (with `__GFP_THISNODE`:
    /// insist on) memory of node `node`.
    #[track_caller]
    pub fn alloc_node(&self, gfp: Gfp, node: i32) -> Result<NonNull<u8>, AllocError> {
        self.slab_alloc(gfp, node, self.object_size(), Location::caller())
    }

    /// Linux's `kmem_cache_zalloc`.
    #[track_caller]
    pub fn zalloc(&self, gfp: Gfp) -> Result<NonNull<u8>, AllocError> {
        self.slab_alloc(
            gfp | Gfp::ZERO,
            NUMA_NO_NODE,
            self.object_size(),
            Location::caller(),
        )
    }

    /// Linux's `__kmalloc_cache`: an object used for `size` bytes (a
    /// kmalloc-style cache remembers the size for its red zone).
    #[track_caller]
    pub fn alloc_sized(&self, gfp: Gfp, size: usize) -> Result<NonNull<u8>, AllocError> {
        let size = size.min(self.object_size());
        self.slab_alloc(gfp, NUMA_NO_NODE, size, Location::caller())
    }

    /// [`Self::alloc_node`] with an explicit call site.
    #[inline]
    pub fn alloc_at(
        &self,
        gfp: Gfp,
        node: i32,
        caller: &'static Location<'static>,
    ) -> Result<NonNull<u8>, AllocError> {
        self.slab_alloc(gfp, node, self.object_size(), caller)
    }

    /// Linux's `kmem_cache_alloc_bulk`: fills `out` with objects. All or
    /// nothing: on failure every object taken is given back.
    #[track_caller]
    pub fn alloc_bulk(&self, gfp: Gfp, out: &mut [*mut u8]) -> Result<usize, AllocError> {
        let caller = Location::caller();
        for i in 0..out.len() {
            match self.slab_alloc(gfp, NUMA_NO_NODE, self.object_size(), caller) {
                Ok(p) => out[i] = p.as_ptr(),
                Err(e) => {
                    for p in &mut out[..i] {
                        let _ = self.free_at(*p as usize, caller);
                        *p = core::ptr::null_mut();
                    }
                    return Err(e);
                }
            }
        }
        Ok(out.len())
    }

    /// The one allocation entry point of a cache.
    #[inline(always)]
    pub(crate) fn slab_alloc(
        &self,
        gfp: Gfp,
        node: i32,
        orig_size: usize,
        caller: &'static Location<'static>,
    ) -> Result<NonNull<u8>, AllocError> {
        // A node that does not exist means any node (Linux's slab_nodes
        // check in ___slab_alloc), on every path (debug caches and the
        // contended bypass included).
        let node = if node >= 0 && node as usize >= self.pages().nr_nodes() {
            NUMA_NO_NODE
        } else {
            node
        };
        let p = self.platform();
        let gfp = if p.in_atomic() {
            self.atomic_context(gfp, p.context(), caller)?
        } else {
            gfp
        };
        let obj = if self.debug {
            self.alloc_single(gfp, node, orig_size, caller)?
        } else {
            self.alloc_fast(gfp, node, caller)?
        };
        if gfp.contains(Gfp::ZERO) {
            if self.ctor.is_some() {
                self.zero_undoes_ctor(Some(caller));
            }
            let n = if self.flags.contains(super::SlabFlags::KMALLOC)
                && self
                    .flags
                    .intersects(super::SlabFlags::STORE_USER | super::SlabFlags::RED_ZONE)
            {
                orig_size
            } else {
                self.object_size()
            };
            // SAFETY: a fresh object of at least object_size bytes.
            unsafe { core::ptr::write_bytes(obj as *mut u8, 0, n) };
        }
        // SAFETY: object addresses are direct-map addresses, never 0.
        Ok(unsafe { NonNull::new_unchecked(obj as *mut u8) })
    }

    /// A `__GFP_ZERO` allocation from a cache with a constructor: the
    /// zeroing undoes what the constructor built. Warned once per
    /// allocator, whatever `__GFP_NOWARN` says (Linux's plain
    /// `WARN_ON_ONCE(s->ctor && (flags & __GFP_ZERO))`; Linux checks in
    /// `new_slab`, so only an allocation that grows a slab warns there,
    /// where kmem warns at the first such allocation). The object is still
    /// zeroed, as Linux's is.
    #[cold]
    #[inline(never)]
    fn zero_undoes_ctor(&self, caller: Option<&'static Location<'static>>) {
        if self
            .pages()
            .first_warning(OnceSite::SlabCtorZero, Gfp::empty())
        {
            let what = "from a cache with a constructor: \
                        the zeroing undoes what the constructor built (warned once)";
            match caller {
                Some(at) => self.platform().warn(format_args!(
                    "WARNING: {}: a __GFP_ZERO allocation at {at} {what}",
                    self.name()
                )),
                None => self.platform().warn(format_args!(
                    "WARNING: {}: a __GFP_ZERO allocation {what}",
                    self.name()
                )),
            }
        }
    }

    /// The context check, taken only in atomic context: NMI refused, a
    /// blocking mask reported as Linux's "sleeping function called from
    /// invalid context" and then failed or downgraded per the page
    /// allocator's policy.
    #[cold]
    pub(crate) fn atomic_context(
        &self,
        gfp: Gfp,
        ctx: ExecContext,
        caller: &'static Location<'static>,
    ) -> Result<Gfp, AllocError> {
        if ctx.in_nmi() {
            return Err(AllocError::InNmi);
        }
        if !gfp.allows_blocking() {
            return Ok(gfp);
        }
        let v = ContextViolation {
            context: ctx,
            cpu: self.platform().cpu_id(),
            caller,
        };
        self.platform().warn(format_args!("{v}"));
        match self.pages().config().context_policy {
            ContextPolicy::Fail => Err(AllocError::SleepInAtomic(v)),
            // Without sleeping, __GFP_NOFAIL cannot be kept (the page
            // allocator refuses that mask): reported above, it may fail.
            ContextPolicy::Warn => Ok(gfp - Gfp::DIRECT_RECLAIM - Gfp::NOFAIL),
            ContextPolicy::Panic => panic!("{v}"),
        }
    }

    /// Pop from the CPU's sheaf, or (no sheaf) from its free list; anything
    /// else goes to `alloc_slow`.
    #[inline(always)]
    fn alloc_fast(
        &self,
        gfp: Gfp,
        node: i32,
        caller: &'static Location<'static>,
    ) -> Result<usize, AllocError> {
        let (c, g) = self.this_cpu();
        let Some(mut g) = g else {
            return self.alloc_bypass(c, Stat::AllocContended, gfp, node, caller);
        };
        // `node` exists (slab_alloc made sure of it).
        if node >= 0 && (g.node != node as u32 || (g.sheaf_n != 0 && g.sheaf_node != node as u32)) {
            // Another node than this CPU's (or its sheaf's): that node's
            // partial lists, one object.
            drop(g);
            return self.alloc_bypass(c, Stat::AllocNodeMismatch, gfp, node, caller);
        }
        if let Some(obj) = self.sheaf_pop(&mut g, c) {
            return Ok(obj);
        }
        self.alloc_cpu_slow(g, c, gfp, node, caller)
    }

    /// Pops the sheaf's top object (the most recently freed), marking it
    /// allocated; None if the sheaf is empty or missing.
    #[inline(always)]
    fn sheaf_pop(&self, g: &mut CpuInner, c: &CpuSlab) -> Option<usize> {
        let n = g.sheaf_n.checked_sub(1)?;
        debug_assert!(!self.debug, "a debug cache has no sheaf");
        // SAFETY: the sheaf holds `sheaf_n` free objects of this cache, ours
        // under the CPU lock.
        let obj = unsafe { *g.sheaf.add(n as usize) };
        g.sheaf_n = n;
        if self.marks {
            // SAFETY: as above; the slot now marks the object allocated.
            unsafe { self.mark_allocated(obj) };
        }
        c.stat(Stat::AllocFastpath);
        Some(obj)
    }

    /// The sheaf is empty (or there is none): pop from the CPU free list if
    /// the CPU has no sheaf, else `alloc_slow`.
    #[inline(never)]
    fn alloc_cpu_slow(
        &self,
        mut g: CpuGuard<'_>,
        c: &CpuSlab,
        gfp: Gfp,
        node: i32,
        caller: &'static Location<'static>,
    ) -> Result<usize, AllocError> {
        if g.freelist != 0 && g.sheaf.is_null() {
            c.stat(Stat::AllocFastpath);
            return Ok(self.pop(&mut g));
        }
        self.alloc_slow(g, c, gfp, node, caller)
    }

    /// One object under the node lock, bypassing the CPU's state: its flag
    /// is taken ([`Stat::AllocContended`]), or the request is for another
    /// node than the CPU's or its sheaf's ([`Stat::AllocNodeMismatch`]).
    #[cold]
    #[inline(never)]
    fn alloc_bypass(
        &self,
        c: &CpuSlab,
        why: Stat,
        gfp: Gfp,
        node: i32,
        caller: &'static Location<'static>,
    ) -> Result<usize, AllocError> {
        c.stat(why);
        c.stat(Stat::AllocSlowpath);
        self.alloc_single(gfp, node, self.object_size(), caller)
    }

    /// Refills the CPU's empty sheaf (it has one: `alloc_slow` got it) to
    /// half its capacity from the CPU free list and the slabs behind it
    /// (steps 1-3 of `alloc_slow`). Returns an object popped from it, or
    /// None if nothing was free short of a new slab.
    #[cold]
    fn refill_sheaf(
        &self,
        g: &mut CpuGuard<'_>,
        c: &CpuSlab,
        gfp: Gfp,
        node: i32,
    ) -> Option<usize> {
        debug_assert!(!g.sheaf.is_null());
        let target = g.sheaf_cap.div_ceil(2);
        if g.sheaf_n == 0 {
            g.sheaf_node = g.node;
        }
        while g.sheaf_n < target {
            if g.freelist == 0 && !self.refill_freelist(g, c, gfp, node) {
                break;
            }
            // The CPU list holds objects of the CPU's node, which a refill
            // may have changed: the sheaf takes one node's objects only.
            if g.node != g.sheaf_node {
                if g.sheaf_n != 0 {
                    break;
                }
                g.sheaf_node = g.node;
            }
            while g.sheaf_n < target && g.freelist != 0 {
                // Its free pointer stays: it marks the object free.
                let obj = self.pop_free(g);
                let n = g.sheaf_n;
                // SAFETY: n < sheaf_cap slots of our sheaf.
                unsafe { *g.sheaf.add(n as usize) = obj };
                g.sheaf_n = n + 1;
            }
        }
        if g.sheaf_n == 0 {
            return None;
        }
        c.stat(Stat::SheafRefill);
        Some(self.sheaf_take(g))
    }

    /// Pops the top object of the CPU's sheaf (known non-empty) on the slow
    /// path (counted as [`Stat::AllocSlowpath`] there), marking it
    /// allocated.
    fn sheaf_take(&self, g: &mut CpuInner) -> usize {
        let n = g.sheaf_n - 1;
        g.sheaf_n = n;
        // SAFETY: slot n holds a free object of this cache, now ours.
        unsafe {
            let obj = *g.sheaf.add(n as usize);
            if self.marks {
                self.mark_allocated(obj);
            }
            obj
        }
    }

    /// Gives the CPU a sheaf block from the page allocator (quietly, without
    /// reclaim: a sheaf is an optimisation). False if none was free.
    #[cold]
    pub(crate) fn get_sheaf(&self, g: &mut CpuInner) -> bool {
        if self.sheaf_cap == 0 {
            return false;
        }
        let Some(block) = self.new_sheaf_block(g.node as usize) else {
            return false;
        };
        g.sheaf = block;
        g.sheaf_n = 0;
        g.sheaf_cap = self.sheaf_cap;
        true
    }

    /// Gives the CPU's sheaf back: every object to its slab, the block to
    /// the page allocator.
    pub(crate) fn put_sheaf(&self, g: &mut CpuInner, c: &CpuSlab) {
        if g.sheaf.is_null() {
            return;
        }
        self.flush_sheaf(g, c, g.sheaf_n);
        let block = g.sheaf;
        g.sheaf = core::ptr::null_mut();
        g.sheaf_cap = 0;
        self.free_sheaf_block(block);
    }

    /// Pops the head of the CPU free list (known non-empty).
    #[inline]
    fn pop(&self, g: &mut CpuInner) -> usize {
        let obj = self.pop_free(g);
        if self.marks {
            // SAFETY: the object is ours now; the slot marks it allocated.
            unsafe { self.mark_allocated(obj) };
        }
        obj
    }

    /// Pops the head of the CPU free list (known non-empty), leaving its
    /// free pointer as it was: the object stays marked free (for the sheaf).
    /// Returns it, or the corrupt-list fallback.
    #[inline]
    fn pop_free(&self, g: &mut CpuInner) -> usize {
        let obj = g.freelist;
        // SAFETY: a free object of this cache, ours under the flag.
        let next = unsafe { self.get_fp(obj) };
        if next != 0 && !self.plausible_fp(next) {
            return self.cpu_freelist_corrupt(g, obj, next);
        }
        g.freelist = next;
        g.count -= 1;
        obj
    }

    /// A free pointer on the CPU list is not an object address: a write
    /// after free hit it. Report, hand out `obj`, drop the rest of the list
    /// (those objects are lost, never handed out twice).
    #[cold]
    fn cpu_freelist_corrupt(&self, g: &mut CpuInner, obj: usize, next: usize) -> usize {
        match super::find(self.pages(), obj) {
            Ok(super::Found::Slab { slab, .. }) => self.object_err(
                slab,
                obj,
                format_args!("Freepointer corrupt (next {next:#x} is not an object address)"),
            ),
            _ => self.platform().warn(format_args!(
                "BUG {}: Freepointer corrupt at {obj:#x} (next {next:#x})",
                self.name()
            )),
        }
        self.slab_fix(format_args!(
            "Dropping the CPU free list ({} objects lost)",
            g.count.saturating_sub(1)
        ));
        g.freelist = 0;
        g.count = 0;
        if self.marks {
            // SAFETY: obj is ours.
            unsafe { self.mark_allocated(obj) };
        }
        obj
    }

    /// Makes `slab` (frozen, its free list of `count` objects taken into
    /// `head`) the CPU's active slab; the CPU list must be empty. A slab of
    /// another node moves the CPU (not its sheaf) to that node.
    #[inline]
    fn install(&self, g: &mut CpuGuard<'_>, slab: SlabRef<'_>, head: usize, count: u32) {
        g.slab = slab.pfn;
        g.node = slab.node() as u32;
        g.freelist = head;
        g.count = count;
    }

    /// Takes every object freed to the active slab, keeping it frozen if
    /// there were some; unfreezes it (full, on no list) if not. Linux's
    /// `get_freelist`. Returns (head, count).
    fn take_freelist_keep_frozen(&self, slab: SlabRef<'_>, c: &CpuSlab) -> (usize, u32) {
        loop {
            let old = slab.word();
            let has = old.has_free();
            let new = old
                .with_free(NO_FREE)
                .with_inuse(old.objects())
                .with(FROZEN, has);
            if slab.cas(old, new) {
                return if has {
                    (
                        self.obj_addr(slab.base, old.free()),
                        old.objects() - old.inuse(),
                    )
                } else {
                    (0, 0)
                };
            }
            c.stat(Stat::CmpxchgDoubleFail);
        }
    }

    /// Freezes a slab taken off a partial list: takes its whole free list.
    /// Returns (head, count), (0, 0) (and leaves the slab alone) if the list
    /// is empty.
    pub(crate) fn freeze(&self, slab: SlabRef<'_>, c: &CpuSlab) -> (usize, u32) {
        loop {
            let old = slab.word();
            if !old.has_free() || old.has(DISABLED) {
                return (0, 0);
            }
            let new = old
                .with_free(NO_FREE)
                .with_inuse(old.objects())
                .with(FROZEN, true);
            if slab.cas(old, new) {
                return (
                    self.obj_addr(slab.base, old.free()),
                    old.objects() - old.inuse(),
                );
            }
            c.stat(Stat::CmpxchgDoubleFail);
        }
    }

    /// The node `NUMA_NO_NODE` means: the page allocator's default node.
    #[inline]
    pub(crate) fn local_node(&self) -> usize {
        self.pages().default_node
    }

    /// The CPU list is empty: refill it (and maybe change active slab).
    #[cold]
    #[inline(never)]
    fn alloc_slow(
        &self,
        mut g: CpuGuard<'_>,
        c: &CpuSlab,
        gfp: Gfp,
        node: i32,
        caller: &'static Location<'static>,
    ) -> Result<usize, AllocError> {
        c.stat(Stat::AllocSlowpath);
        // The sheaf path needs a sheaf block; without one (none could be had,
        // memory being short) the CPU free list serves, as in a cache without
        // sheaves, so that the free objects of the cache's slabs are used
        // before a new slab is asked for.
        if self.sheaf_cap != 0 && (!g.sheaf.is_null() || self.get_sheaf(&mut g)) {
            if g.sheaf_n == 0 && self.barn_get_full(&mut g, c) {
                return Ok(self.sheaf_take(&mut g));
            }
            if let Some(obj) = self.refill_sheaf(&mut g, c, gfp, node) {
                return Ok(obj);
            }
        } else if g.freelist != 0 || self.refill_freelist(&mut g, c, gfp, node) {
            return Ok(self.pop(&mut g));
        }
        // A new slab; the page allocator runs with no slab lock held.
        drop(g);
        let slab = self.new_slab(gfp, node, caller)?;
        let (c, g) = self.this_cpu();
        c.stat(Stat::AllocSlab);
        let objects = slab.word().objects();
        match g {
            Some(mut g) if g.freelist == 0 && (node < 0 || slab.node() as u32 == g.node) => {
                if g.slab != NIL {
                    self.deactivate(&mut g, c);
                }
                slab.store(Word::new(NO_FREE, objects, objects).with(FROZEN, true));
                let head = self.obj_addr(slab.base, 0);
                self.install(&mut g, slab, head, objects);
                Ok(self.pop(&mut g))
            }
            _ => {
                // The flag is taken, or the list was refilled meanwhile:
                // one object from the new slab, the rest to its node.
                c.stat(Stat::AllocContended);
                Ok(self.take_first_of_new(slab, self.object_size(), None))
            }
        }
    }

    /// Steps 1-3 of the slow path: refills the empty CPU free list from
    /// frees to the active slab, the CPU partial list, or a node partial
    /// list. False if all three are empty (a new slab is needed).
    fn refill_freelist(&self, g: &mut CpuGuard<'_>, c: &CpuSlab, gfp: Gfp, node: i32) -> bool {
        // 1. Objects freed to the active slab by other CPUs.
        if g.slab != NIL {
            let slab = self.slab_at(g.slab);
            let disabled = slab.word().has(DISABLED);
            let (head, count) = if disabled {
                (0, 0)
            } else {
                self.take_freelist_keep_frozen(slab, c)
            };
            if head != 0 {
                c.stat(Stat::AllocRefill);
                g.freelist = head;
                g.count = count;
                return true;
            }
            if disabled {
                // Disabled slab (still frozen, ours): let go of it.
                self.deactivate(g, c);
            } else {
                // Full and now unfrozen: on no list until a free.
                g.slab = NIL;
            }
        }
        // 2. The per-CPU partial list (it takes slabs of any node: a slab
        // of another node than a node-bound request's goes back to its
        // node's list, as Linux's `node_match` check does).
        while g.partial != NIL {
            let slab = self.slab_at(g.partial);
            g.partial = slab.next();
            g.nr_partial -= 1;
            if node >= 0 && slab.node() != node as usize {
                self.put_partials_chain(slab.pfn, 1, c);
                continue;
            }
            let (head, count) = self.freeze(slab, c);
            if head == 0 {
                self.put_partials_chain(slab.pfn, 1, c);
                continue;
            }
            self.install(g, slab, head, count);
            c.stat(Stat::CpuPartialAlloc);
            return true;
        }
        // 3. A node partial list.
        if let Some((slab, head, count)) = self.get_partial(g, c, gfp, node) {
            self.install(g, slab, head, count);
            c.stat(Stat::AllocFromPartial);
            return true;
        }
        false
    }
    /// Linux's `get_partial`: a slab from the requested (or local) node's
    /// partial list, else from another node's if allowed.
    fn get_partial(
        &self,
        g: &mut CpuInner,
        c: &CpuSlab,
        gfp: Gfp,
        node: i32,
    ) -> Option<(SlabRef<'_>, usize, u32)> {
        let nr_nodes = self.pages().nr_nodes();
        let start = if node >= 0 && (node as usize) < nr_nodes {
            node as usize
        } else {
            g.node as usize
        };
        if let Some(r) = self.get_partial_node(start, g, c) {
            return Some(r);
        }
        if node >= 0 && gfp.contains(Gfp::THISNODE) {
            return None;
        }
        for n in (0..nr_nodes).filter(|&n| n != start) {
            if self.nodes[n].nr_partial.load(Relaxed) > self.min_partial {
                if let Some(r) = self.get_partial_node(n, g, c) {
                    return Some(r);
                }
            }
        }
        None
    }

    /// Takes the first slab of a node's partial list (frozen, as the new
    /// active slab) and moves up to half the CPU partial limit more onto the
    /// CPU partial list.
    fn get_partial_node(
        &self,
        n: usize,
        g: &mut CpuInner,
        c: &CpuSlab,
    ) -> Option<(SlabRef<'_>, usize, u32)> {
        if self.nodes[n].nr_partial.load(Relaxed) == 0 {
            return None;
        }
        let mut lists = self.nodes[n].lists.lock();
        let mut got = None;
        let mut moved = 0;
        while lists.partial.head != NIL {
            let slab = self.slab_at(lists.partial.head);
            self.remove_partial(n, &mut lists, slab);
            if got.is_none() {
                let (head, count) = self.freeze(slab, c);
                if head == 0 {
                    // Nothing free after all (a disabled slab): leave it off
                    // the lists, like a full slab.
                    continue;
                }
                got = Some((slab, head, count));
                if self.cpu_partial_slabs == 0 {
                    break;
                }
            } else if n as u32 == g.node {
                slab.set_next(g.partial);
                g.partial = slab.pfn;
                g.nr_partial += 1;
                moved += 1;
                c.stat(Stat::CpuPartialNode);
                if moved > self.cpu_partial_slabs / 2 {
                    break;
                }
            } else {
                // Not this CPU's node: back where it was.
                self.add_partial(n, &mut lists, slab, true);
                break;
            }
        }
        got
    }

    /// One object under the node lock: the path of debug caches, and of
    /// threads that found their CPU flag taken (Linux's
    /// `alloc_single_from_partial` / `alloc_single_from_new_slab`).
    pub(crate) fn alloc_single(
        &self,
        gfp: Gfp,
        node: i32,
        orig_size: usize,
        caller: &'static Location<'static>,
    ) -> Result<usize, AllocError> {
        let nr_nodes = self.pages().nr_nodes();
        let n = if node >= 0 && (node as usize) < nr_nodes {
            node as usize
        } else {
            self.local_node()
        };
        if self.nodes[n].nr_partial.load(Relaxed) != 0 || self.debug {
            let mut lists = self.nodes[n].lists.lock();
            while lists.partial.head != NIL {
                let slab = self.slab_at(lists.partial.head);
                let Some((obj, new)) = self.pop_one_locked(slab) else {
                    self.remove_partial(n, &mut lists, slab);
                    continue;
                };
                if self.debug && !self.alloc_debug_processing(slab, obj, orig_size, caller) {
                    self.remove_partial(n, &mut lists, slab);
                    continue;
                }
                if !new.has_free() {
                    self.remove_partial(n, &mut lists, slab);
                    if self.debug {
                        self.list_add(n, &mut lists, Which::Full, slab, false);
                    }
                }
                return Ok(obj);
            }
        }
        let slab = self.new_slab(gfp, node, caller)?;
        self.cpu_slab(self.platform().cpu_id())
            .stat(Stat::AllocSlab);
        Ok(self.take_first_of_new(slab, orig_size, Some(caller)))
    }

    /// Pops one object from a slab on a node partial list (node lock held,
    /// so no other pop can run; pushes may).
    fn pop_one_locked(&self, slab: SlabRef<'_>) -> Option<(usize, Word)> {
        loop {
            let old = slab.word();
            if !old.has_free() || old.has(DISABLED) {
                return None;
            }
            let obj = self.obj_addr(slab.base, old.free());
            // SAFETY: the head of the slab's free list: a free object.
            let next = unsafe { self.get_fp(obj) };
            let next_idx = if next == 0 {
                NO_FREE
            } else {
                match self.obj_index(slab.base, old.objects(), next) {
                    Some(i) => i,
                    None => {
                        self.slab_freelist_corrupt(slab, obj, next);
                        return None;
                    }
                }
            };
            let new = old.with_free(next_idx).with_inuse(old.inuse() + 1);
            if slab.cas(old, new) {
                if self.marks && !self.debug {
                    // SAFETY: the object is ours now.
                    unsafe { self.mark_allocated(obj) };
                }
                return Some((obj, new));
            }
        }
    }

    /// A slab's own free list holds a pointer outside the slab: report and
    /// disable the slab (all objects considered used, never allocated from).
    #[cold]
    fn slab_freelist_corrupt(&self, slab: SlabRef<'_>, obj: usize, next: usize) {
        self.object_err(
            slab,
            obj,
            format_args!("Freechain corrupt (next {next:#x} is not an object of the slab)"),
        );
        loop {
            let old = slab.word();
            let new = old
                .with_free(NO_FREE)
                .with_inuse(old.objects())
                .with(DISABLED, true);
            if slab.cas(old, new) {
                break;
            }
        }
        self.slab_fix(format_args!("Marking all objects used"));
    }

    /// Hands out object 0 of a slab nobody else knows yet and publishes the
    /// rest on the node partial list.
    fn take_first_of_new(
        &self,
        slab: SlabRef<'_>,
        orig_size: usize,
        caller: Option<&'static Location<'static>>,
    ) -> usize {
        let objects = slab.word().objects();
        let obj = self.obj_addr(slab.base, 0);
        let free = if objects > 1 { 1 } else { NO_FREE };
        slab.store(Word::new(free, 1, objects));
        if self.debug {
            if let Some(caller) = caller {
                self.alloc_debug_processing(slab, obj, orig_size, caller);
            }
        } else if self.marks {
            // SAFETY: object 0 is ours.
            unsafe { self.mark_allocated(obj) };
        }
        let n = slab.node();
        let mut lists = self.nodes[n].lists.lock();
        if self.debug {
            self.inc_slabs_node(slab);
        }
        if objects > 1 {
            self.add_partial(n, &mut lists, slab, false);
        } else if self.debug {
            self.list_add(n, &mut lists, Which::Full, slab, false);
        }
        obj
    }

    /// Linux's `allocate_slab`: a compound block of the preferred order
    /// (tried without reclaim and quietly), else of the minimum order with
    /// the caller's mask; objects built and linked.
    pub(crate) fn new_slab(
        &self,
        gfp: Gfp,
        node: i32,
        caller: &'static Location<'static>,
    ) -> Result<SlabRef<'_>, AllocError> {
        let pages = self.pages();
        // Linux's GFP_SLAB_BUG_MASK check: zone bits a slab cannot honour
        // and unknown bits are reported (and dropped below, as
        // SLAB_PAGE_GFP has none of them).
        if !super::kmalloc::slab_bug_bits(gfp).is_empty() {
            super::kmalloc::fix_flags(self.platform(), gfp);
        }
        let flags = (gfp & SLAB_PAGE_GFP) | self.allocflags;
        let mut alloc_gfp = (flags | Gfp::NOWARN | Gfp::NORETRY) - Gfp::NOFAIL;
        if alloc_gfp.allows_blocking() && self.oo.order > self.min.order {
            alloc_gfp = (alloc_gfp | Gfp::NOMEMALLOC) - Gfp::RECLAIM;
        }
        let (pfn, order) = match pages.alloc_pages_node_at(node, alloc_gfp, self.oo.order, caller) {
            Ok(p) => (p, self.oo.order),
            Err(_) => {
                self.cpu_slab(self.platform().cpu_id())
                    .stat(Stat::OrderFallback);
                match pages.alloc_pages_node_at(node, flags, self.min.order, caller) {
                    Ok(p) => (p, self.min.order),
                    Err(e) => {
                        if !gfp.contains(Gfp::NOWARN) {
                            self.platform().warn(format_args!(
                                "SLUB: Unable to allocate memory on node {node}, gfp={:#x}({gfp})\n  cache: {}, object size: {}, buffer size: {}, default order: {}, min order: {}",
                                gfp.bits(),
                                self.name(),
                                self.object_size(),
                                self.size,
                                self.oo.order,
                                self.min.order
                            ));
                        }
                        return Err(e);
                    }
                }
            }
        };
        self.init_new_slab(pfn, order, false);
        Ok(self.slab_at(pfn.0 as u32))
    }

    /// Relabels every tail record of the slab at `pfn` of `order` as this
    /// cache's (`Some(objects)`: owner tag [`OWNER_SLAB`], the cache in
    /// `private[0]`, `objects << 32 | pfn` in `private[1]`), or gives them
    /// their compound labels back (`None`: owner 0, the head's pfn in
    /// `private[0]`), when the slab goes or waits for RCU. What
    /// [`super::find_slab`] reads; see "Slab metadata" in [`super`].
    pub(crate) fn set_tail_records(&self, pfn: Pfn, order: u32, objects: Option<u32>) {
        let pages = self.pages();
        for i in 1..(1u64 << order) {
            if let Some(t) = pages.frame(Pfn(pfn.0 + i)) {
                match objects {
                    Some(n) => {
                        t.private[1].store(((n as u64) << 32 | pfn.0) as usize, Relaxed);
                        t.private[0].store(self as *const Self as usize, Relaxed);
                        t.set_owner(OWNER_SLAB);
                    }
                    None => {
                        t.set_owner(0);
                        t.private[0].store(pfn.0 as usize, Relaxed);
                        t.private[1].store(0, Relaxed);
                    }
                }
            }
        }
    }

    /// Turns a fresh block into a slab of this cache: debug patterns,
    /// constructor, free list through every object (but object 0 if
    /// `reserve_first`, which is then counted in use), frame metadata, node
    /// counters.
    pub(crate) fn init_new_slab(&self, pfn: Pfn, order: u32, reserve_first: bool) {
        let pages = self.pages();
        let frame = pages
            .frame(pfn)
            .expect("kmem slab: a fresh block has a frame record");
        let base = pages.page_address(pfn).0;
        let bytes = PAGE_SIZE << order;
        let objects = ((bytes / self.size) as u32).min(MAX_OBJS_PER_SLAB);
        if self.debug {
            self.setup_slab_debug(base, bytes);
        }
        let start = reserve_first as u32;
        for i in start..objects {
            let obj = self.obj_addr(base, i);
            if self.debug {
                self.setup_object_debug(obj);
            }
            if let Some(ctor) = self.ctor {
                // SAFETY: obj is a direct-map address, never null.
                ctor(unsafe { NonNull::new_unchecked(obj as *mut u8) });
            }
            let next = if i + 1 < objects {
                self.obj_addr(base, i + 1)
            } else {
                0
            };
            // SAFETY: obj is an object of this fresh slab.
            unsafe { self.set_fp(obj, next) };
        }
        let free = if start < objects { start } else { NO_FREE };
        frame.next.store(NIL, Relaxed);
        frame.prev.store(NIL, Relaxed);
        frame.private[0].store(self as *const Self as usize, Relaxed);
        self.set_tail_records(pfn, order, Some(objects));
        frame.private[1].store(Word::new(free, start, objects).0 as usize, Release);
        frame.set_owner(OWNER_SLAB);
        if !self.debug {
            // Debug caches count the slab when they list it, under the node
            // lock (see take_first_of_new).
            let node = &self.nodes[frame.node()];
            node.nr_slabs.fetch_add(1, Relaxed);
            node.total_objects.fetch_add(objects as usize, Relaxed);
        }
    }
}
