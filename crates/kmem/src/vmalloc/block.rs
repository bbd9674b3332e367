//! Per-CPU vmap blocks: the fast path of `vm_map_ram`.
//!
//! A `vm_map_ram` of up to [`VMAP_MAX_ALLOC`] pages does not get an area of
//! its own: it is cut from the running CPU's current *vmap block*, an area
//! of `VMAP_BBMAP_BITS` pages (4 MiB with few CPUs), aligned to its size and
//! without guard pages. Within a block, space is handed out by bumping an
//! offset in power-of-two page counts (Linux's `vb_alloc`); unmapped pieces
//! become *dirty*. A block is freed — onto the lazy list, like any area —
//! once every page handed out of it is dirty and nothing more can be handed
//! out.
//!
//! Each CPU keeps its blocks that still have pages to hand out on a free
//! list, oldest first; a request takes the first block with room (a block
//! too full for one request still serves smaller ones) and a block leaves
//! the list when its last page is handed out. Only when no block on the
//! list has room is a new one made, at the list's tail. Blocks whose
//! handed-out pages are all unmapped again are freed early by
//! `purge_fragmented_blocks` (Linux's `purge_fragmented_block`): always when
//! virtual space runs out, and from `vm_unmap_aliases` only if less than a
//! quarter of the block is left to hand out (`VMAP_PURGE_THRESHOLD`). Block
//! state lives in the block's area record and is changed under the vmalloc
//! state lock.

use super::area::VmapArea;
use super::area::{VMAP_BLOCK, VMAP_RAM};
use super::free::classify;
use super::State;
use super::{VfreeError, Vmalloc, VmallocError, VMAP_MAX_ALLOC};
use crate::addr::{get_order, VirtAddr, PAGE_SIZE};
use crate::gfp::Gfp;
use crate::page::MAX_CPUS;
use crate::paging::PageTables;
use crate::platform::Platform;
use core::ptr::null_mut;
use core::sync::atomic::Ordering::Relaxed;

impl<'a, P: Platform, B: PageTables> Vmalloc<'a, P, B> {
    /// Linux's `vb_alloc`: `size` bytes (rounded up to a power-of-two page
    /// count) from this CPU's block.
    pub(crate) fn vb_alloc(&self, size: usize, gfp: Gfp) -> Result<usize, VmallocError> {
        let n = 1usize << get_order(size);
        let bits = self.vb_bits;
        let block_size = bits * PAGE_SIZE;
        let cpu = self.pages.platform().cpu_id() % MAX_CPUS;
        let mut purged = false;
        loop {
            let mut s = self.lock_with_spares(gfp, 2)?;
            // First fit over this CPU's blocks with pages left.
            let (prev, b) = s.vb_first(cpu, |r| r.vb_free as usize >= n);
            if !b.is_null() {
                // SAFETY: blocks on a free list are live busy records.
                let br = unsafe { &mut *b };
                let off = bits - br.vb_free as usize;
                br.vb_free -= n as u32;
                if br.vb_free == 0 {
                    // Nothing left to hand out: off the list.
                    // SAFETY: `b` follows `prev` on this CPU's list.
                    unsafe { s.vb_unlink(cpu, prev, b) };
                }
                self.stats.vb_allocs.fetch_add(1, Relaxed);
                return Ok(br.start + off * PAGE_SIZE);
            }
            match s
                .areas
                .alloc_range(block_size, block_size, self.config.start, self.config.end)
            {
                Ok(a) => {
                    let r = s.areas.insert_busy(a, a + block_size);
                    r.va_flags = VMAP_RAM | VMAP_BLOCK;
                    r.vb_free = (bits - n) as u32;
                    r.vb_dirty = 0;
                    r.vb_dirty_min = bits as u32;
                    r.vb_dirty_max = 0;
                    r.vb_cpu = cpu as u32;
                    r.vb_next = null_mut();
                    let r: *mut VmapArea = r;
                    // New blocks go to the tail (the older ones are tried
                    // first).
                    if prev.is_null() {
                        s.vb_free[cpu] = r;
                    } else {
                        // SAFETY: `prev` is the list's last block.
                        unsafe { (*prev).vb_next = r };
                    }
                    self.stats.vmap_blocks.fetch_add(1, Relaxed);
                    self.stats.vb_allocs.fetch_add(1, Relaxed);
                    return Ok(a);
                }
                Err(_) => {
                    drop(s);
                    if self.purge_to_retry(gfp, &mut purged) {
                        continue;
                    }
                    return Err(VmallocError::NoVirtualSpace {
                        size: block_size,
                        align: block_size,
                        start: self.config.start,
                        end: self.config.end,
                    });
                }
            }
        }
    }

    /// Linux's `vm_unmap_ram(mem, count)`: `count` must be what was passed
    /// to `vm_map_ram`.
    #[track_caller]
    pub fn vm_unmap_ram(&self, addr: *const u8, count: usize) -> Result<(), VfreeError> {
        let a = addr as usize;
        if a == 0 {
            return Err(self.refuse(VfreeError::NotAllocated { addr: a }));
        }
        self.check_addr(a)?;
        self.vm_unmap_ram_inner(a, count, true)
    }

    /// The unmap; `check_mapped` refuses a range whose first page is not
    /// mapped (an unmap of an unmapped range: a double unmap).
    pub(crate) fn vm_unmap_ram_inner(
        &self,
        a: usize,
        count: usize,
        check_mapped: bool,
    ) -> Result<(), VfreeError> {
        if count == 0 {
            return Err(self.refuse(VfreeError::NotAllocated { addr: a }));
        }
        if count <= VMAP_MAX_ALLOC {
            let n = 1usize << get_order(count * PAGE_SIZE);
            {
                let s = self.state.lock();
                let ok = s
                    .areas
                    .find_busy_containing(a)
                    .is_some_and(|b| b.va_flags & VMAP_BLOCK != 0 && a + n * PAGE_SIZE <= b.end);
                if !ok {
                    return Err(self.refuse(unmap_ram_error(&s, a, count)));
                }
            }
            // The double-unmap check is the unmap itself: the walk clears
            // each leaf under the table lock, so of two callers unmapping
            // the same range only one finds its first page mapped, and only
            // that one counts the pages dirty below (a check before the
            // unmap let both through; it also took the table lock twice).
            let mut first_was_mapped = false;
            self.tables
                .unmap_range(VirtAddr(a), VirtAddr(a + n * PAGE_SIZE), &mut |va, _, _| {
                    first_was_mapped |= va.0 == a;
                })
                .ignore();
            if check_mapped && !first_was_mapped {
                return Err(self.refuse(VfreeError::DoubleFree { addr: a }));
            }
            let mut s = self.state.lock();
            let b = s
                .areas
                .find_busy_containing_mut(a)
                .expect("the block lives while it has mapped pages");
            let off = ((a - b.start) / PAGE_SIZE) as u32;
            b.vb_dirty_min = b.vb_dirty_min.min(off);
            b.vb_dirty_max = b.vb_dirty_max.max(off + n as u32);
            b.vb_dirty += n as u32;
            self.stats.vb_frees.fetch_add(1, Relaxed);
            if b.vb_dirty as usize == self.vb_bits {
                // Every page handed out and unmapped: none left to hand out,
                // so the block is on no free list.
                debug_assert_eq!(b.vb_free, 0);
                let start = b.start;
                let rec = s.areas.unlink_busy(start).expect("block is busy");
                drop(s);
                self.stats.vmap_blocks_freed.fetch_add(1, Relaxed);
                self.free_vmap_area_noflush(rec);
            }
            return Ok(());
        }
        let rec = {
            let mut s = self.state.lock();
            // A big vm_map_ram area is exactly its pages (no guard): the
            // count must be the one given to vm_map_ram.
            let ok = s.areas.find_busy(a).is_some_and(|r| {
                r.va_flags & VMAP_RAM != 0
                    && r.va_flags & VMAP_BLOCK == 0
                    && (r.end - r.start) / PAGE_SIZE == count
            });
            if !ok {
                return Err(self.refuse(unmap_ram_error(&s, a, count)));
            }
            self.unlink_to_lazy(&mut s, a)
        };
        // Owns no pages: teardown only clears the entries.
        self.teardown(rec);
        self.stats.vb_frees.fetch_add(1, Relaxed);
        Ok(())
    }

    /// After a failed search for virtual space: counts the failure and, the
    /// first time (`purged` false) for a caller that may block, retires the
    /// fragmented blocks and purges the lazily freed areas, as Linux's
    /// `alloc_vmap_area` does before giving up. True if the caller should
    /// search again.
    pub(crate) fn purge_to_retry(&self, gfp: Gfp, purged: &mut bool) -> bool {
        self.stats.va_failures.fetch_add(1, Relaxed);
        if *purged || !gfp.allows_blocking() {
            return false;
        }
        self.purge_fragmented_blocks(true);
        self.purge();
        *purged = true;
        true
    }

    /// Linux's `purge_fragmented_blocks_allcpus`: blocks on the CPUs'
    /// free lists with nothing mapped any more are freed. `force` frees
    /// every such block (virtual space ran out); otherwise only those with
    /// less than a quarter left to hand out (`VMAP_PURGE_THRESHOLD`).
    pub(crate) fn purge_fragmented_blocks(&self, force: bool) {
        loop {
            let rec = {
                let mut s = self.state.lock();
                match self.take_fragmented_block(&mut s, force) {
                    Some(start) => s.areas.unlink_busy(start),
                    None => None,
                }
            };
            match rec {
                Some(rec) => {
                    self.stats.vmap_blocks_freed.fetch_add(1, Relaxed);
                    self.free_vmap_area_noflush(rec);
                }
                None => return,
            }
        }
    }

    /// Finds a purgeable block, takes it off its free list and marks it
    /// wholly dirty; returns its start.
    fn take_fragmented_block(&self, s: &mut State, force: bool) -> Option<usize> {
        let bits = self.vb_bits as u32;
        for cpu in 0..MAX_CPUS {
            let (prev, b) = s.vb_first(cpu, |r| {
                r.vb_free + r.vb_dirty == bits
                    && r.vb_dirty != bits
                    && (force || r.vb_free < bits / 4)
            });
            if !b.is_null() {
                // SAFETY: `b` follows `prev` on this CPU's list, a live
                // busy record.
                let br = unsafe {
                    s.vb_unlink(cpu, prev, b);
                    &mut *b
                };
                br.vb_free = 0;
                br.vb_dirty = bits;
                return Some(br.start);
            }
        }
        None
    }

    /// Linux's `vm_unmap_aliases`: after it returns, no CPU's TLB holds a
    /// translation of a range vmalloc has unmapped (lazy areas and the dirty
    /// parts of vmap blocks).
    pub fn vm_unmap_aliases(&self) {
        // Linux's _vm_unmap_aliases frees the fragmented blocks first (not
        // forced: a block with much left to hand out stays).
        self.purge_fragmented_blocks(false);
        let (mut lo, mut hi) = (usize::MAX, 0usize);
        let vb_bits = self.vb_bits as u32;
        self.state.lock().areas.for_each_busy_mut(&mut |b| {
            if b.va_flags & VMAP_BLOCK != 0 && b.vb_dirty_max > 0 {
                lo = lo.min(b.start + b.vb_dirty_min as usize * PAGE_SIZE);
                hi = hi.max(b.start + b.vb_dirty_max as usize * PAGE_SIZE);
                b.vb_dirty_min = vb_bits;
                b.vb_dirty_max = 0;
            }
        });
        self.purge();
        if lo < hi {
            self.tables.flush_range(VirtAddr(lo), VirtAddr(hi));
        }
    }
}

impl State {
    /// The first block on `cpu`'s free list for which `pred` holds, and the
    /// block before it (null if it is the head). With none: null, and the
    /// list's last block (null if the list is empty).
    fn vb_first(
        &self,
        cpu: usize,
        mut pred: impl FnMut(&VmapArea) -> bool,
    ) -> (*mut VmapArea, *mut VmapArea) {
        let mut prev: *mut VmapArea = null_mut();
        let mut b = self.vb_free[cpu];
        while !b.is_null() {
            // SAFETY: blocks on a free list are live busy records.
            let br = unsafe { &*b };
            if pred(br) {
                return (prev, b);
            }
            prev = b;
            b = br.vb_next;
        }
        (prev, null_mut())
    }

    /// Takes `b` off `cpu`'s free list.
    ///
    /// # Safety
    /// `b` is on that list, right after `prev` (null: `b` is the head).
    unsafe fn vb_unlink(&mut self, cpu: usize, prev: *mut VmapArea, b: *mut VmapArea) {
        // SAFETY: per the contract, both are live records on the list.
        unsafe {
            let next = (*b).vb_next;
            (*b).vb_next = null_mut();
            if prev.is_null() {
                self.vb_free[cpu] = next;
            } else {
                (*prev).vb_next = next;
            }
        }
    }
}

/// Why `vm_unmap_ram(a, count)` is refused, from what lies at `a`.
fn unmap_ram_error(s: &State, a: usize, count: usize) -> VfreeError {
    match s.areas.find_busy_containing(a) {
        // The count says where to look: up to VMAP_MAX_ALLOC pages in a
        // block, more in an area of their own.
        Some(b) if b.va_flags & VMAP_BLOCK != 0 => VfreeError::WrongSizeInBlock {
            addr: a,
            given: count,
        },
        Some(r) if r.start == a && r.va_flags & VMAP_RAM != 0 => VfreeError::WrongSize {
            addr: a,
            mapped: (r.end - r.start) / PAGE_SIZE,
            given: count,
        },
        Some(r) if r.start == a => VfreeError::WrongKind {
            addr: a,
            kind: "vmalloc or vmap",
            use_instead: "vfree() or vunmap()",
        },
        _ => classify(s, a),
    }
}
