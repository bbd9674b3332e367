//! The freeing side: vfree (now or deferred), vunmap, lazy purge, vrealloc.
//!
//! A free unlinks the area from the busy tree, clears its page-table
//! entries (freeing the pages it owns on the way) and puts the range on the
//! lazy list without flushing the TLB. The purge flushes once for the hull
//! of every lazy range, frees page tables that became empty if configured
//! to (`VmallocConfig::free_page_tables`; Linux keeps them), and merges the
//! ranges back into the free tree.

use super::area::{VmapArea, VMAP_BLOCK, VMAP_RAM};
use super::{State, VfreeError, VmArea, VmFlags, Vmalloc, VmallocError, PAGE_SIZE};
use crate::addr::VirtAddr;
use crate::context::ContextPolicy;
use crate::gfp::Gfp;
use crate::page::NUMA_NO_NODE;
use crate::paging::{PageTables, PteFlags};
use crate::platform::Platform;
use crate::slab::{OWNER_KMALLOC_LARGE, OWNER_SLAB, OWNER_SLAB_RCU};
use core::panic::Location;
use core::ptr::{self, NonNull};
use core::sync::atomic::AtomicUsize;
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};

impl<'a, P: Platform, B: PageTables> Vmalloc<'a, P, B> {
    /// Linux's `vfree`. NULL is a no-op. In hard or soft IRQ context the
    /// free is deferred ([`Self::vfree_atomic`]); in NMI it is refused. A
    /// call in other atomic context (preemption disabled, a spinlock held)
    /// is reported like Linux's `might_sleep` and deferred as well.
    #[track_caller]
    pub fn vfree(&self, addr: *const u8) -> Result<(), VfreeError> {
        let a = addr as usize;
        if a == 0 {
            return Ok(());
        }
        let ctx = self.pages.platform().context();
        if ctx.in_nmi() {
            self.pages.platform().warn(format_args!(
                "BUG: vfree({a:#x}) in NMI context at {}",
                Location::caller()
            ));
            return Err(VfreeError::InNmi);
        }
        if ctx.in_interrupt() {
            return self.vfree_atomic(addr);
        }
        if ctx.is_atomic() {
            let v = self.sleep_in_atomic(ctx, Location::caller());
            if self.pages.config().context_policy == ContextPolicy::Panic {
                panic!("{v}");
            }
            return self.vfree_atomic(addr);
        }
        self.drain_deferred();
        self.vfree_now(a, false)
    }

    /// Linux's `vfree_atomic`: queues the area for freeing by the next
    /// vmalloc call in process context (or [`Self::drain_deferred`]). Safe
    /// in any context but NMI. The area is checked now, so a bad or double
    /// free is still refused.
    pub fn vfree_atomic(&self, addr: *const u8) -> Result<(), VfreeError> {
        let a = addr as usize;
        if a == 0 {
            return Ok(());
        }
        if self.pages.platform().context().in_nmi() {
            return Err(VfreeError::InNmi);
        }
        self.check_addr(a)?;
        {
            let s = self.state.lock();
            self.mark_deferred(self.busy_area(&s, a)?, a)?;
        }
        // Link through the area's first word, written via the direct map so
        // that any backend works.
        let link = self
            .direct_ptr(a)
            .expect("a live area is mapped at its start") as *mut usize;
        // SAFETY: the first word of the area's first page, which the area
        // owns and which stays mapped until the deferred free runs.
        unsafe { push_link(&self.deferred, link, a) };
        self.stats.deferred_frees.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Frees everything queued by deferred frees; returns how many. Called
    /// by every allocation and free in process context.
    pub fn drain_deferred(&self) -> usize {
        if self.deferred.load(Relaxed) == 0 {
            return 0;
        }
        let mut p = self.deferred.swap(0, Acquire);
        let mut n = 0;
        while p != 0 {
            // SAFETY: `p` is a queued area, still mapped; its first word is
            // the next link.
            let next = match self.direct_ptr(p) {
                Some(l) => unsafe { (l as *const usize).read_volatile() },
                None => 0,
            };
            let _ = self.vfree_now(p, true);
            n += 1;
            p = next;
        }
        n
    }

    /// Linux's `kvfree_rcu(p, field)` for vmalloc memory: `p` is freed after
    /// the next grace period ([`Self::rcu_barrier`]). `head_offset` is where
    /// a 16-byte `rcu_head` field lies in the object; it is overwritten, the
    /// rest stays readable until then. A double queueing is refused.
    pub fn vfree_rcu(&self, addr: *const u8, head_offset: usize) -> Result<(), VfreeError> {
        let a = addr as usize;
        if a == 0 {
            return Ok(());
        }
        self.check_addr(a)?;
        // The head's two words may sit in different pages: each is written
        // through the direct map of its own page, which must be mapped (a
        // vrealloc shrink leaves the tail of the usable size unmapped).
        let (w0, w1) = {
            let s = self.state.lock();
            let r = self.busy_area(&s, a)?;
            let size = VmArea::from_record(r).usable_size();
            let words = head_offset
                .checked_add(16)
                .filter(|&end| end <= size && head_offset.is_multiple_of(8))
                .and_then(|_| {
                    Some((
                        self.direct_ptr(a + head_offset)? as *mut usize,
                        self.direct_ptr(a + head_offset + 8)? as *mut usize,
                    ))
                });
            let Some(words) = words else {
                self.pages.platform().warn(format_args!(
                    "kvfree_rcu: rcu_head at offset {head_offset} does not fit the {size}-byte area {a:#x} (or lies past its mapped pages); not freed"
                ));
                return Err(VfreeError::Interior {
                    addr: a.wrapping_add(head_offset),
                    area: a,
                });
            };
            self.mark_deferred(r, a)?;
            words
        };
        // SAFETY: both words lie inside the live area (checked above).
        unsafe {
            w1.write_volatile(head_offset);
            push_link(&self.rcu_pending, w0, a + head_offset);
        }
        Ok(())
    }

    /// Linux's `kvfree_rcu_mightsleep(p)` (the one-argument form, for
    /// objects without an `rcu_head`) for vmalloc memory: `addr` is freed
    /// after the next grace period ([`Self::rcu_barrier`]). Nothing is
    /// written into the area: it is queued through its record, so RCU
    /// readers see every byte unchanged until the grace period ends. A
    /// double queueing is refused.
    pub fn vfree_rcu_mightsleep(&self, addr: *const u8) -> Result<(), VfreeError> {
        let a = addr as usize;
        if a == 0 {
            return Ok(());
        }
        self.check_addr(a)?;
        let mut s = self.state.lock();
        self.mark_deferred(self.busy_area(&s, a)?, a)?;
        let head = s.rcu_records;
        let r = s.areas.find_busy_mut(a).expect("checked above");
        r.next = head;
        s.rcu_records = r as *mut VmapArea;
        Ok(())
    }

    /// Ends a grace period for `vfree_rcu` and `vfree_rcu_mightsleep`: frees
    /// everything queued. Refused (returns false) inside an RCU read-side
    /// section, and in atomic context (reported as a sleep in atomic
    /// context, as the slab's `rcu_barrier`: no grace period ends there).
    #[track_caller]
    pub fn rcu_barrier(&self) -> bool {
        let ctx = self.pages.platform().context();
        if ctx.rcu_depth > 0 {
            return false;
        }
        if ctx.is_atomic() {
            self.sleep_in_atomic(ctx, Location::caller());
            return false;
        }
        self.run_rcu();
        true
    }

    /// Frees everything queued for a grace period (the caller vouches that
    /// one has passed).
    pub(crate) fn run_rcu(&self) {
        let mut r = core::mem::replace(&mut self.state.lock().rcu_records, ptr::null_mut());
        while !r.is_null() {
            // SAFETY: queued records are busy areas marked DEFERRED_FREE,
            // which only this drain frees; their link and start are read
            // before the free reuses the link.
            let (next, start) = unsafe { ((*r).next, (*r).start) };
            let _ = self.vfree_now(start, true);
            r = next;
        }
        let mut h = self.rcu_pending.swap(0, Acquire);
        while h != 0 {
            let (next, off) = match (self.direct_ptr(h), self.direct_ptr(h + 8)) {
                // SAFETY: queued heads live in still-mapped areas.
                (Some(w0), Some(w1)) => unsafe {
                    (
                        (w0 as *const usize).read_volatile(),
                        (w1 as *const usize).read_volatile(),
                    )
                },
                _ => (0, 0),
            };
            let _ = self.vfree_now(h - off, true);
            h = next;
        }
    }

    /// Objects queued by `vfree_rcu` or `vfree_rcu_mightsleep` and not yet
    /// freed.
    pub fn rcu_pending(&self) -> bool {
        self.rcu_pending.load(Relaxed) != 0 || !self.state.lock().rcu_records.is_null()
    }

    pub(crate) fn drain_deferred_if_allowed(&self) {
        if self.deferred.load(Relaxed) != 0 && !self.pages.platform().context().is_atomic() {
            self.drain_deferred();
        }
    }

    /// Linux's `vunmap`: releases a `vmap` area (its pages stay with the
    /// caller, unless mapped with `VM_MAP_PUT_PAGES`). Not in interrupt
    /// context.
    #[track_caller]
    pub fn vunmap(&self, addr: *const u8) -> Result<(), VfreeError> {
        let a = addr as usize;
        if a == 0 {
            return Ok(());
        }
        let ctx = self.pages.platform().context();
        if ctx.in_nmi() {
            return Err(VfreeError::InNmi);
        }
        if ctx.in_interrupt() {
            return Err(VfreeError::InInterrupt);
        }
        self.drain_deferred_if_allowed();
        self.check_addr(a)?;
        let rec = {
            let mut s = self.state.lock();
            let r = self.busy_area(&s, a)?;
            let flags = VmFlags::from_bits_retain(r.vm_flags.load(Relaxed));
            // Queued for a deferred free (vfree_atomic, vfree_rcu): the
            // queue still holds it, and would free whatever sits there next.
            if flags.contains(VmFlags::DEFERRED_FREE) {
                return Err(self.refuse(VfreeError::DoubleFree { addr: a }));
            }
            if flags.contains(VmFlags::UNINITIALIZED) {
                return Err(self.refuse(VfreeError::NotAllocated { addr: a }));
            }
            if flags.contains(VmFlags::ALLOC) {
                return Err(self.refuse(VfreeError::WrongKind {
                    addr: a,
                    kind: "vmalloc",
                    use_instead: "vfree()",
                }));
            }
            self.unlink_to_lazy(&mut s, a)
        };
        self.teardown(rec);
        self.stats.vunmaps.fetch_add(1, Relaxed);
        Ok(())
    }

    /// The vfree proper, in process context.
    fn vfree_now(&self, a: usize, deferred: bool) -> Result<(), VfreeError> {
        self.check_addr(a)?;
        let rec = {
            let mut s = self.state.lock();
            let flags = self.busy_area(&s, a)?.vm_flags.load(Relaxed);
            if !deferred && flags & VmFlags::DEFERRED_FREE.bits() != 0 {
                return Err(self.refuse(VfreeError::DoubleFree { addr: a }));
            }
            if flags & VmFlags::UNINITIALIZED.bits() != 0 {
                // Still being set up by its allocator: not a pointer anyone
                // was given yet.
                return Err(self.refuse(VfreeError::NotAllocated { addr: a }));
            }
            self.unlink_to_lazy(&mut s, a)
        };
        self.teardown(rec);
        self.stats.frees.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Unlinks the busy area at `start` and tears it down (failure paths).
    pub(crate) fn release_area(&self, start: usize) {
        let rec = {
            let mut s = self.state.lock();
            if s.areas.find_busy(start).is_none() {
                return;
            }
            self.unlink_to_lazy(&mut s, start)
        };
        self.teardown(rec);
    }

    /// Clears the entries of an area [`Self::unlink_to_lazy`] put on the lazy
    /// list, frees the pages it owns, and lets purges have it.
    pub(crate) fn teardown(&self, rec: *mut VmapArea) {
        // SAFETY: the record stays on the lazy list, where others only read
        // it, until its UNMAPPING flag is cleared below; after that it is
        // not touched.
        let (start, end, flags, nr) = unsafe {
            (
                (*rec).start,
                (*rec).end,
                VmFlags::from_bits_retain((*rec).vm_flags.load(Relaxed)),
                (*rec).nr_pages.load(Relaxed),
            )
        };
        // Clears UNMAPPING when dropped: below, or while unwinding from a
        // backend that panicked mid-way (a purge, Vmalloc's Drop's
        // included, waits for the flag and would spin forever).
        let unmapped = Unmapped(rec);
        let owns = flags.intersects(VmFlags::ALLOC | VmFlags::MAP_PUT_PAGES);
        self.tables
            .unmap_range(VirtAddr(start), VirtAddr(end), &mut |_, pa, size| {
                if owns {
                    self.free_area_page(pa.pfn(), size.order());
                }
            })
            .ignore(); // lazy: flushed by the purge
        if flags.contains(VmFlags::ALLOC) && !flags.contains(VmFlags::UNINITIALIZED) {
            self.nr_vmalloc_pages.fetch_sub(nr as u64, Relaxed);
        }
        // The last access to the record.
        drop(unmapped);
        self.stats.lazy_frees.fetch_add(1, Relaxed);
        self.maybe_purge();
    }

    /// Purges if lazily freed pages passed the threshold and the context
    /// allows a flush.
    fn maybe_purge(&self) {
        if self.lazy_pending.load(Relaxed) > self.lazy_max
            && !self.pages.platform().context().is_atomic()
        {
            self.purge();
        }
    }

    /// Linux's `free_vmap_area_noflush`: onto the lazy list; purge past the
    /// threshold when the context allows a flush.
    pub(crate) fn free_vmap_area_noflush(&self, rec: *mut VmapArea) {
        {
            let mut s = self.state.lock();
            // SAFETY: `rec` is unlinked and unmapped.
            unsafe { s.areas.push_lazy(rec) };
            self.lazy_pending.store(s.areas.lazy_pages, Relaxed);
        }
        self.stats.lazy_frees.fetch_add(1, Relaxed);
        self.maybe_purge();
    }

    /// Linux's `purge_vmap_area_lazy`: one TLB flush covering every lazily
    /// freed range, then the ranges become free again (and emptied page
    /// tables are freed). Returns the number of areas purged.
    pub fn purge(&self) -> usize {
        let _p = self.purge_lock.lock();
        let (head, n, pages) = {
            let mut s = self.state.lock();
            let l = s.areas.take_lazy();
            self.lazy_pending.store(0, Relaxed);
            l
        };
        if n == 0 {
            return 0;
        }
        let (mut lo, mut hi) = (usize::MAX, 0);
        let mut r = head;
        while !r.is_null() {
            // SAFETY: the detached lazy list is ours; a record still being
            // unmapped by its vfree is only read until that finishes.
            unsafe {
                while (*r).vm_flags.load(Acquire) & VmFlags::UNMAPPING.bits() != 0 {
                    self.pages.platform().relax();
                }
                lo = lo.min((*r).start);
                hi = hi.max((*r).end);
                r = (*r).next;
            }
        }
        // The one flush for everything lazily freed.
        self.tables.flush_range(VirtAddr(lo), VirtAddr(hi));
        if self.config.free_page_tables {
            // One walk over the hull: cheaper than one per area, and every
            // table in it that maps nothing is garbage.
            let freed = self.tables.free_empty_tables(VirtAddr(lo), VirtAddr(hi));
            self.stats.tables_freed.fetch_add(freed as u64, Relaxed);
        }
        let mut s = self.state.lock();
        let mut r = head;
        while !r.is_null() {
            // SAFETY: as above; read the link before the record is reused.
            unsafe {
                let next = (*r).next;
                s.areas.release(r);
                r = next;
            }
        }
        drop(s);
        self.stats.purges.fetch_add(1, Relaxed);
        self.stats.purged_areas.fetch_add(n as u64, Relaxed);
        self.stats.purged_pages.fetch_add(pages as u64, Relaxed);
        n
    }

    // ----- vrealloc -------------------------------------------------------

    /// Linux's `vrealloc(p, size, gfp)`. `p` NULL allocates; `size` 0 frees
    /// and returns `Ok(None)`. Shrinking keeps the area (zeroing the cut
    /// tail if `__GFP_ZERO`) and frees whole pages past the new end; growing
    /// within the area maps new pages in place; growing past it moves the
    /// data to a new area and frees the old one.
    #[track_caller]
    pub fn vrealloc(
        &self,
        p: *const u8,
        size: usize,
        gfp: Gfp,
    ) -> Result<Option<NonNull<u8>>, VmallocError> {
        self.vrealloc_node_align_at(p, size, 1, gfp, NUMA_NO_NODE, Location::caller())
    }

    /// Linux's `vrealloc_node_align`.
    #[track_caller]
    pub fn vrealloc_node_align(
        &self,
        p: *const u8,
        size: usize,
        align: usize,
        gfp: Gfp,
        nid: i32,
    ) -> Result<Option<NonNull<u8>>, VmallocError> {
        self.vrealloc_node_align_at(p, size, align, gfp, nid, Location::caller())
    }

    /// [`Self::vrealloc_node_align`] with an explicit caller.
    pub fn vrealloc_node_align_at(
        &self,
        p: *const u8,
        size: usize,
        align: usize,
        gfp: Gfp,
        nid: i32,
        caller: &'static Location<'static>,
    ) -> Result<Option<NonNull<u8>>, VmallocError> {
        if size == 0 {
            self.vfree(p).map_err(VmallocError::Realloc)?;
            return Ok(None);
        }
        if p.is_null() {
            return self
                .vmalloc_node_align_at(size, align, gfp, nid, caller)
                .map(Some);
        }
        let a = p as usize;
        let gfp = self.check_context(gfp, caller)?;
        let info = {
            let s = self.state.lock();
            let Some(r) = s.areas.find_busy(a) else {
                self.pages.platform().warn(format_args!(
                    "WARNING: Trying to vrealloc() nonexistent vm area ({a:#x}) at {caller}"
                ));
                return Err(VmallocError::Realloc(classify(&s, a)));
            };
            let v = VmArea::from_record(r);
            if v.vm_map_ram || !v.flags.contains(VmFlags::ALLOC) {
                return Err(VmallocError::Realloc(VfreeError::WrongKind {
                    addr: a,
                    kind: if v.vm_map_ram { "vm_map_ram" } else { "vmap" },
                    use_instead: "vmalloc() for memory vrealloc() can resize",
                }));
            }
            v
        };
        let alloced = info.usable_size();
        let old = info.requested_size;
        if !align.is_power_of_two() || !a.is_multiple_of(align) {
            self.pages.platform().warn(format_args!(
                "WARNING: will not reallocate with a bigger alignment ({align:#x})"
            ));
            return Err(VmallocError::ReallocAlign { align });
        }
        let wrong_node = gfp.contains(Gfp::THISNODE)
            && nid >= 0
            && self
                .vmalloc_to_page(p)
                .and_then(|pfn| self.pages.frame(pfn))
                .is_some_and(|f| f.node() as i32 != nid);
        if !wrong_node {
            if size <= old {
                if gfp.contains(Gfp::ZERO) {
                    self.zero_range(a + size, old - size);
                }
                if info.page_order == 0 {
                    self.shrink_pages(&info, size.div_ceil(PAGE_SIZE));
                }
                self.set_requested(a, size);
                self.stats.realloc_in_place.fetch_add(1, Relaxed);
                return Ok(NonNull::new(a as *mut u8));
            }
            if size <= alloced {
                let need = size.div_ceil(PAGE_SIZE);
                if info.page_order == 0 && need > info.nr_pages {
                    let have = info.nr_pages;
                    let add = need - have;
                    if let Err(e) = self.populate(a, have, add, 0, gfp, nid, PteFlags::KERNEL) {
                        // Unmap whatever got mapped past the old end.
                        self.tables
                            .unmap_range(
                                VirtAddr(a + have * PAGE_SIZE),
                                VirtAddr(a + need * PAGE_SIZE),
                                &mut |_, pa, size| self.free_area_page(pa.pfn(), size.order()),
                            )
                            .flush();
                        return Err(e);
                    }
                    self.set_nr_pages(a, need);
                    self.nr_vmalloc_pages.fetch_add(add as u64, Relaxed);
                }
                self.set_requested(a, size);
                self.stats.realloc_in_place.fetch_add(1, Relaxed);
                return Ok(NonNull::new(a as *mut u8));
            }
        }
        let n = self.vmalloc_node_align_at(size, align, gfp, nid, caller)?;
        self.copy(n.as_ptr() as usize, a, size.min(old));
        let _ = self.vfree(p);
        self.stats.realloc_moves.fetch_add(1, Relaxed);
        Ok(Some(n))
    }

    /// Frees the pages of `info`'s area past `keep` pages, flushing their
    /// TLB entries now (the range stays part of the area and may be mapped
    /// again).
    fn shrink_pages(&self, info: &VmArea, keep: usize) {
        if keep >= info.nr_pages {
            return;
        }
        let a = info.addr.0;
        let from = VirtAddr(a + keep * PAGE_SIZE);
        let to = VirtAddr(a + info.nr_pages * PAGE_SIZE);
        self.tables
            .unmap_range(from, to, &mut |_, pa, size| {
                self.free_area_page(pa.pfn(), size.order())
            })
            .flush();
        self.set_nr_pages(a, keep);
        self.nr_vmalloc_pages
            .fetch_sub((info.nr_pages - keep) as u64, Relaxed);
    }

    fn set_requested(&self, a: usize, size: usize) {
        let s = self.state.lock();
        if let Some(r) = s.areas.find_busy(a) {
            r.requested_size.store(size, Relaxed);
        }
    }

    fn set_nr_pages(&self, a: usize, n: usize) {
        let s = self.state.lock();
        if let Some(r) = s.areas.find_busy(a) {
            r.nr_pages.store(n, Relaxed);
        }
    }

    // ----- helpers --------------------------------------------------------

    /// The direct-map pointer of the byte mapped at `va`.
    pub(crate) fn direct_ptr(&self, va: usize) -> Option<*mut u8> {
        let t = self.tables.translate(VirtAddr(va)).ok()?;
        Some(self.pages.platform().phys_to_virt(t.pa).as_ptr::<u8>())
    }

    /// Zeroes `[va, va + len)` of mapped vmalloc memory through the direct
    /// map.
    pub(crate) fn zero_range(&self, va: usize, len: usize) {
        let mut off = 0;
        while off < len {
            let cur = va + off;
            let n = (PAGE_SIZE - cur % PAGE_SIZE).min(len - off);
            if let Some(p) = self.direct_ptr(cur) {
                // SAFETY: `n` bytes within one mapped page of a live area.
                unsafe { core::ptr::write_bytes(p, 0, n) };
            }
            off += n;
        }
    }

    /// Copies `len` bytes between mapped vmalloc ranges through the direct
    /// map (works whichever backend maps them).
    pub(crate) fn copy(&self, dst: usize, src: usize, len: usize) {
        let mut off = 0;
        while off < len {
            let (d, s) = (dst + off, src + off);
            let n = (PAGE_SIZE - d % PAGE_SIZE)
                .min(PAGE_SIZE - s % PAGE_SIZE)
                .min(len - off);
            if let (Some(dp), Some(sp)) = (self.direct_ptr(d), self.direct_ptr(s)) {
                // SAFETY: both are `n` bytes inside one mapped page of live,
                // distinct areas.
                unsafe { core::ptr::copy_nonoverlapping(sp, dp, n) };
            }
            off += n;
        }
    }

    /// Moves the busy area at `a` (which must exist) to the lazy list,
    /// marked UNMAPPING: the caller clears its entries next
    /// ([`Self::teardown`]), and a purge waits for that before flushing.
    /// One lock round trip for both steps.
    pub(crate) fn unlink_to_lazy(&self, s: &mut State, a: usize) -> *mut VmapArea {
        let rec = s.areas.unlink_busy(a).expect("caller checked the area");
        // SAFETY: just unlinked: ours.
        unsafe {
            (*rec).vm_flags.fetch_or(VmFlags::UNMAPPING.bits(), Relaxed);
            s.areas.push_lazy(rec);
        }
        self.lazy_pending.store(s.areas.lazy_pages, Relaxed);
        rec
    }

    /// The busy area starting at `a`, for a free of `a`: no area there, or
    /// a `vm_map_ram` range (freed by `vm_unmap_ram` only), is refused and
    /// reported.
    fn busy_area<'s>(&self, s: &'s State, a: usize) -> Result<&'s VmapArea, VfreeError> {
        let Some(r) = s.areas.find_busy(a) else {
            return Err(self.refuse(classify(s, a)));
        };
        if r.va_flags & VMAP_RAM != 0 {
            return Err(self.refuse(VfreeError::WrongKind {
                addr: a,
                kind: "vm_map_ram",
                use_instead: "vm_unmap_ram()",
            }));
        }
        Ok(r)
    }

    /// Marks the area `r` at `a` queued for a deferred free; an area
    /// queued already is refused as a double free.
    fn mark_deferred(&self, r: &VmapArea, a: usize) -> Result<(), VfreeError> {
        let prev = r.vm_flags.fetch_or(VmFlags::DEFERRED_FREE.bits(), Relaxed);
        if prev & VmFlags::DEFERRED_FREE.bits() != 0 {
            return Err(self.refuse(VfreeError::DoubleFree { addr: a }));
        }
        Ok(())
    }

    /// Refuses an address outside the range or not page aligned, saying
    /// what it is.
    pub(crate) fn check_addr(&self, a: usize) -> Result<(), VfreeError> {
        if !self.is_vmalloc_addr(a as *const u8) {
            let va = VirtAddr(a);
            let e = match self.pages.virt_to_page(va) {
                Some(pfn) => {
                    let head = self.pages.compound_head(pfn);
                    let owner = self.pages.frame(head).map_or(0, |f| f.owner());
                    if matches!(owner, OWNER_SLAB | OWNER_KMALLOC_LARGE | OWNER_SLAB_RCU) {
                        VfreeError::Kmalloc { addr: a }
                    } else {
                        VfreeError::NotVmalloc {
                            addr: a,
                            direct_map: true,
                        }
                    }
                }
                None => VfreeError::NotVmalloc {
                    addr: a,
                    direct_map: self.pages.is_direct_map(va),
                },
            };
            return Err(self.refuse(e));
        }
        if !a.is_multiple_of(PAGE_SIZE) {
            return Err(self.refuse(VfreeError::Unaligned { addr: a }));
        }
        Ok(())
    }

    /// Reports a refused free and passes the error on.
    pub(crate) fn refuse(&self, e: VfreeError) -> VfreeError {
        self.stats.free_errors.fetch_add(1, Relaxed);
        self.pages.platform().warn(format_args!("WARNING: {e}"));
        e
    }
}

/// Pushes `node` onto the lock-free list `head` (0 ends it), writing the
/// old head into `link`, the node's link word.
///
/// # Safety
///
/// `link` is valid for writes and holds the link until the list is
/// drained.
unsafe fn push_link(head: &AtomicUsize, link: *mut usize, node: usize) {
    let mut top = head.load(Relaxed);
    loop {
        // SAFETY: the caller's.
        unsafe { link.write_volatile(top) };
        match head.compare_exchange_weak(top, node, Release, Relaxed) {
            Ok(_) => break,
            Err(t) => top = t,
        }
    }
}

/// What an address with no busy area starting at it is.
pub(crate) fn classify(s: &State, a: usize) -> VfreeError {
    if let Some(r) = s.areas.find_busy_containing(a) {
        if r.va_flags & VMAP_BLOCK != 0 {
            return VfreeError::WrongKind {
                addr: a,
                kind: "vm_map_ram",
                use_instead: "vm_unmap_ram()",
            };
        }
        return VfreeError::Interior {
            addr: a,
            area: r.start,
        };
    }
    if s.areas.lazy_contains(a) {
        return VfreeError::DoubleFree { addr: a };
    }
    VfreeError::NotAllocated { addr: a }
}

/// A lazy record being torn down: dropping this clears its UNMAPPING flag
/// (see [`Vmalloc::teardown`]), the record's last access by the teardown.
struct Unmapped(*mut VmapArea);

impl Drop for Unmapped {
    fn drop(&mut self) {
        // SAFETY: the record stays on the lazy list, readable, until this
        // flag is cleared; nothing else writes it meanwhile.
        unsafe {
            (*self.0)
                .vm_flags
                .fetch_and(!VmFlags::UNMAPPING.bits(), Release)
        };
    }
}
