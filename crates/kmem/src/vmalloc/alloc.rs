//! The allocation side: entry points, virtual areas, pages, mapping.
//!
//! Every public entry point is `#[track_caller]`: the caller's location is
//! the area's `caller`, printed by vmallocinfo as Linux prints `%pS`.

use super::area::{VmapArea, VMAP_RAM};
use super::{
    State, VmFlags, Vmalloc, VmallocError, GFP_RECLAIM_MASK, GFP_VMALLOC32, GFP_VMALLOC_SUPPORTED,
    OWNER_VMALLOC, OWNER_VMAP_AREA, PMD_SIZE, SHMLBA,
};
use crate::addr::{Pfn, VirtAddr, MAX_PAGE_ORDER, PAGE_SIZE};
use crate::context::ContextPolicy;
use crate::gfp::{Gfp, GFP_KERNEL};
use crate::page::NUMA_NO_NODE;
use crate::paging::{PageSize, PageTables, PteFlags};
use crate::platform::Platform;
use core::panic::Location;
use core::ptr::NonNull;
use core::sync::atomic::Ordering::{Relaxed, Release};

/// Pages mapped per page-table call.
const BATCH: usize = 64;

/// A reserved range, before it is populated.
pub(crate) struct NewArea {
    pub(crate) start: usize,
    pub(crate) size: usize,
    /// Its record. Valid while the area is busy; an area still marked
    /// `VM_UNINITIALIZED` cannot be freed by anyone but its creator, so the
    /// creator may use the pointer until it clears the flag.
    pub(crate) rec: *mut VmapArea,
}

/// What a `vm_struct`-backed area is created with.
pub(crate) struct VmInit {
    pub(crate) flags: VmFlags,
    pub(crate) caller: &'static Location<'static>,
    pub(crate) requested_size: usize,
    pub(crate) page_order: u8,
}

/// One allocation: the arguments of Linux's `__vmalloc_node_range`.
/// Entry points start from [`Vmalloc::request`] and change what differs.
#[derive(Clone, Copy)]
struct Request {
    size: usize,
    align: usize,
    start: usize,
    end: usize,
    gfp: Gfp,
    /// Leaf protection (`PAGE_KERNEL` is [`PteFlags::KERNEL`]).
    prot: PteFlags,
    /// Extra area flags (`VM_NO_GUARD`, `VM_USERMAP`, `VM_ALLOW_HUGE_VMAP`).
    vm_flags: VmFlags,
    node: i32,
    caller: &'static Location<'static>,
}

impl<'a, P: Platform, B: PageTables> Vmalloc<'a, P, B> {
    // ----- entry points -------------------------------------------------

    /// Linux's `vmalloc`: `size` bytes, `GFP_KERNEL`, any node.
    #[track_caller]
    pub fn vmalloc(&self, size: usize) -> Result<NonNull<u8>, VmallocError> {
        self.vmalloc_request(self.request(size, GFP_KERNEL, Location::caller()))
    }

    /// Linux's `vzalloc`: zeroed.
    #[track_caller]
    pub fn vzalloc(&self, size: usize) -> Result<NonNull<u8>, VmallocError> {
        self.vmalloc_request(self.request(size, GFP_KERNEL | Gfp::ZERO, Location::caller()))
    }

    /// Linux's `vmalloc_node`: pages from `node` preferably.
    #[track_caller]
    pub fn vmalloc_node(&self, size: usize, node: i32) -> Result<NonNull<u8>, VmallocError> {
        self.vmalloc_request(Request {
            node,
            ..self.request(size, GFP_KERNEL, Location::caller())
        })
    }

    /// Linux's `vzalloc_node`.
    #[track_caller]
    pub fn vzalloc_node(&self, size: usize, node: i32) -> Result<NonNull<u8>, VmallocError> {
        self.vmalloc_request(Request {
            node,
            ..self.request(size, GFP_KERNEL | Gfp::ZERO, Location::caller())
        })
    }

    /// Linux's `vmalloc_user`: zeroed, `SHMLBA`-aligned, `VM_USERMAP`.
    #[track_caller]
    pub fn vmalloc_user(&self, size: usize) -> Result<NonNull<u8>, VmallocError> {
        self.vmalloc_request(Request {
            align: SHMLBA,
            vm_flags: VmFlags::USERMAP,
            ..self.request(size, GFP_KERNEL | Gfp::ZERO, Location::caller())
        })
    }

    /// Linux's `vmalloc_32`: pages below 4 GiB (`GFP_DMA32 | GFP_KERNEL`).
    #[track_caller]
    pub fn vmalloc_32(&self, size: usize) -> Result<NonNull<u8>, VmallocError> {
        self.vmalloc_request(self.request(size, GFP_VMALLOC32, Location::caller()))
    }

    /// Linux's `vmalloc_32_user`.
    #[track_caller]
    pub fn vmalloc_32_user(&self, size: usize) -> Result<NonNull<u8>, VmallocError> {
        self.vmalloc_request(Request {
            align: SHMLBA,
            vm_flags: VmFlags::USERMAP,
            ..self.request(size, GFP_VMALLOC32 | Gfp::ZERO, Location::caller())
        })
    }

    /// Linux's `__vmalloc(size, gfp)`. Accepts GFP_KERNEL, GFP_NOFS,
    /// GFP_NOIO, GFP_ATOMIC and GFP_NOWAIT (with preemption disabled, not in
    /// an interrupt) and the modifiers of `GFP_VMALLOC_SUPPORTED`; other bits
    /// are warned about and dropped, as Linux's `vmalloc_fix_flags` does.
    #[doc(alias = "__vmalloc")]
    #[track_caller]
    pub fn vmalloc_gfp(&self, size: usize, gfp: Gfp) -> Result<NonNull<u8>, VmallocError> {
        let gfp = self.fix_flags(gfp);
        self.vmalloc_request(self.request(size, gfp, Location::caller()))
    }

    /// Linux's `__vmalloc_node(size, align, gfp, node, caller)`.
    #[doc(alias = "__vmalloc_node")]
    #[track_caller]
    pub fn vmalloc_node_align(
        &self,
        size: usize,
        align: usize,
        gfp: Gfp,
        node: i32,
    ) -> Result<NonNull<u8>, VmallocError> {
        self.vmalloc_node_align_at(size, align, gfp, node, Location::caller())
    }

    /// [`Self::vmalloc_node_align`] with an explicit caller.
    pub fn vmalloc_node_align_at(
        &self,
        size: usize,
        align: usize,
        gfp: Gfp,
        node: i32,
        caller: &'static Location<'static>,
    ) -> Result<NonNull<u8>, VmallocError> {
        self.vmalloc_request(Request {
            align,
            node,
            ..self.request(size, gfp, caller)
        })
    }

    /// Linux's `vmalloc_huge(size, gfp)`: 2 MiB mappings when `size` is at
    /// least 2 MiB and order-9 pages are available.
    #[track_caller]
    pub fn vmalloc_huge(&self, size: usize, gfp: Gfp) -> Result<NonNull<u8>, VmallocError> {
        self.vmalloc_huge_node(size, gfp, NUMA_NO_NODE)
    }

    /// Linux's `vmalloc_huge_node`.
    #[track_caller]
    pub fn vmalloc_huge_node(
        &self,
        size: usize,
        gfp: Gfp,
        node: i32,
    ) -> Result<NonNull<u8>, VmallocError> {
        let gfp = self.fix_flags(gfp);
        self.vmalloc_request(Request {
            vm_flags: VmFlags::ALLOW_HUGE_VMAP,
            node,
            ..self.request(size, gfp, Location::caller())
        })
    }

    /// Linux's `vmalloc_array(n, size)`: overflow-checked.
    #[track_caller]
    pub fn vmalloc_array(&self, n: usize, size: usize) -> Result<NonNull<u8>, VmallocError> {
        self.vmalloc_array_gfp(n, size, GFP_KERNEL, Location::caller())
    }

    /// Linux's `vcalloc(n, size)`: overflow-checked and zeroed.
    #[track_caller]
    pub fn vcalloc(&self, n: usize, size: usize) -> Result<NonNull<u8>, VmallocError> {
        self.vmalloc_array_gfp(n, size, GFP_KERNEL | Gfp::ZERO, Location::caller())
    }

    /// Linux's `__vmalloc_node_range`: the general form. `prot` is the leaf
    /// protection (Linux's `PAGE_KERNEL` is [`PteFlags::KERNEL`]),
    /// `vm_flags` extra area flags (`VM_NO_GUARD`, `VM_USERMAP`,
    /// `VM_ALLOW_HUGE_VMAP`).
    #[doc(alias = "__vmalloc_node_range")]
    #[allow(clippy::too_many_arguments)]
    #[track_caller]
    pub fn vmalloc_node_range(
        &self,
        size: usize,
        align: usize,
        start: usize,
        end: usize,
        gfp: Gfp,
        prot: PteFlags,
        vm_flags: VmFlags,
        node: i32,
    ) -> Result<NonNull<u8>, VmallocError> {
        self.vmalloc_node_range_at(
            size,
            align,
            start,
            end,
            gfp,
            prot,
            vm_flags,
            node,
            Location::caller(),
        )
    }

    /// [`Self::vmalloc_node_range`] with an explicit caller.
    #[allow(clippy::too_many_arguments)]
    pub fn vmalloc_node_range_at(
        &self,
        size: usize,
        align: usize,
        start: usize,
        end: usize,
        gfp: Gfp,
        prot: PteFlags,
        vm_flags: VmFlags,
        node: i32,
        caller: &'static Location<'static>,
    ) -> Result<NonNull<u8>, VmallocError> {
        // Flags vmalloc sets on its own areas, or that mark its bookkeeping
        // (an area born DEFERRED_FREE could never be freed).
        let internal = VmFlags::ALLOC
            | VmFlags::MAP
            | VmFlags::IOREMAP
            | VmFlags::UNINITIALIZED
            | VmFlags::MAP_PUT_PAGES
            | VmFlags::DEFERRED_FREE
            | VmFlags::UNMAPPING;
        if vm_flags.intersects(internal) {
            return Err(VmallocError::BadFlags {
                flags: vm_flags & internal,
            });
        }
        self.vmalloc_request(Request {
            size,
            align,
            start,
            end,
            gfp,
            prot,
            vm_flags,
            node,
            caller,
        })
    }

    // ----- the allocation -----------------------------------------------

    /// A request for `size` bytes with `gfp`, made at `caller`, with the
    /// defaults of `vmalloc`: byte alignment, the whole vmalloc range,
    /// `PAGE_KERNEL`, no extra area flags, any node.
    fn request(&self, size: usize, gfp: Gfp, caller: &'static Location<'static>) -> Request {
        Request {
            size,
            align: 1,
            start: self.config.start,
            end: self.config.end,
            gfp,
            prot: PteFlags::KERNEL,
            vm_flags: VmFlags::empty(),
            node: NUMA_NO_NODE,
            caller,
        }
    }

    /// Linux's `__vmalloc_array(n, size, gfp)`: `n * size` bytes, refused
    /// if the product overflows.
    fn vmalloc_array_gfp(
        &self,
        n: usize,
        size: usize,
        gfp: Gfp,
        caller: &'static Location<'static>,
    ) -> Result<NonNull<u8>, VmallocError> {
        let bytes = n
            .checked_mul(size)
            .ok_or(VmallocError::Overflow { n, size })?;
        self.vmalloc_request(self.request(bytes, gfp, caller))
    }

    /// Where every allocation entry point ends: allocates and counts the
    /// outcome.
    fn vmalloc_request(&self, req: Request) -> Result<NonNull<u8>, VmallocError> {
        let r = self.vmalloc_inner(req);
        match &r {
            Ok(_) => self.stats.allocs.fetch_add(1, Relaxed),
            Err(_) => self.stats.alloc_failures.fetch_add(1, Relaxed),
        };
        r
    }

    fn vmalloc_inner(&self, req: Request) -> Result<NonNull<u8>, VmallocError> {
        let Request {
            size,
            align,
            gfp,
            vm_flags,
            caller,
            ..
        } = req;
        if size == 0 {
            self.pages
                .platform()
                .warn(format_args!("WARNING: vmalloc of size 0 at {caller}"));
            return Err(VmallocError::ZeroSize);
        }
        if !align.is_power_of_two() {
            return Err(VmallocError::BadAlign { align });
        }
        let gfp = self.check_context(gfp, caller)?;
        let total = self.total_pages;
        if size / PAGE_SIZE > total {
            self.warn_alloc(
                gfp,
                format_args!("vmalloc error: size {size}, exceeds total pages"),
            );
            return Err(VmallocError::ExceedsTotalRam {
                size,
                total_pages: total,
            });
        }
        self.drain_deferred_if_allowed();

        let orig_align = align;
        let mut shift = PAGE_SIZE.trailing_zeros();
        let mut align = align;
        if self.config.allow_huge && vm_flags.contains(VmFlags::ALLOW_HUGE_VMAP) && size >= PMD_SIZE
        {
            shift = PMD_SIZE.trailing_zeros();
            align = align.max(PMD_SIZE);
        }
        loop {
            // With the checked mask and this try's alignment.
            match self.vmalloc_try(&Request { align, gfp, ..req }, shift) {
                Ok(p) => {
                    if shift > PAGE_SIZE.trailing_zeros() {
                        self.stats.huge_allocs.fetch_add(1, Relaxed);
                    }
                    return Ok(p);
                }
                Err(e) if shift > PAGE_SIZE.trailing_zeros() => {
                    // Linux: retry the whole allocation with small pages.
                    let _ = e;
                    self.stats.huge_fallbacks.fetch_add(1, Relaxed);
                    shift = PAGE_SIZE.trailing_zeros();
                    align = orig_align;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One try of `req` with mappings of `1 << shift` bytes.
    fn vmalloc_try(&self, req: &Request, shift: u32) -> Result<NonNull<u8>, VmallocError> {
        let (size, gfp) = (req.size, req.gfp);
        let flags = VmFlags::ALLOC | VmFlags::UNINITIALIZED | req.vm_flags;
        let area = self.get_vm_area(
            size, req.align, shift, flags, req.start, req.end, gfp, req.caller,
        )?;
        let usable = area.size
            - if flags.contains(VmFlags::NO_GUARD) {
                0
            } else {
                PAGE_SIZE
            };
        let order = shift - PAGE_SIZE.trailing_zeros();
        let nr_small = usable / PAGE_SIZE;
        match self.populate(area.start, 0, nr_small, order, gfp, req.node, req.prot) {
            Ok(()) => {
                // SAFETY: see `NewArea::rec`: the area is still ours. Only
                // its atomic fields are touched (others may relink the
                // record's tree fields meanwhile, under the lock).
                unsafe {
                    (*area.rec).nr_pages.store(nr_small, Relaxed);
                    (*area.rec)
                        .vm_flags
                        .fetch_and(!VmFlags::UNINITIALIZED.bits(), Release);
                }
                self.nr_vmalloc_pages.fetch_add(nr_small as u64, Relaxed);
                Ok(NonNull::new(area.start as *mut u8).expect("vmalloc range excludes 0"))
            }
            Err(e) => {
                // Linux defers this cleanup to a worker; we can do it now.
                self.release_area(area.start);
                if order == 0 {
                    if let VmallocError::NoPages { .. } = e {
                        self.warn_alloc(
                            gfp,
                            format_args!("vmalloc error: size {size}, failed to allocate pages"),
                        );
                    } else {
                        self.warn_alloc(
                            gfp,
                            format_args!("vmalloc error: size {size}, failed to map pages"),
                        );
                    }
                }
                Err(e)
            }
        }
    }

    /// Linux's `__get_vm_area_node`: reserves `size` (rounded to the mapping
    /// size, plus a guard page unless `VM_NO_GUARD`) and records it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn get_vm_area(
        &self,
        size: usize,
        align: usize,
        shift: u32,
        flags: VmFlags,
        start: usize,
        end: usize,
        gfp: Gfp,
        caller: &'static Location<'static>,
    ) -> Result<NewArea, VmallocError> {
        let gran = 1usize << shift;
        let no_space = || VmallocError::NoVirtualSpace {
            size,
            align,
            start,
            end,
        };
        let mut asize = size.checked_next_multiple_of(gran).ok_or_else(no_space)?;
        if !flags.contains(VmFlags::NO_GUARD) {
            asize = asize.checked_add(PAGE_SIZE).ok_or_else(no_space)?;
        }
        let (a, rec) = self.alloc_vmap_area(
            asize,
            align,
            start,
            end,
            gfp,
            0,
            Some(VmInit {
                flags,
                caller,
                requested_size: size,
                page_order: (shift - PAGE_SIZE.trailing_zeros()) as u8,
            }),
        )?;
        Ok(NewArea {
            start: a,
            size: asize,
            rec,
        })
    }

    /// Linux's `alloc_vmap_area`: the lowest fitting range in
    /// `[vstart, vend)`, inserted in the busy tree with its flags. On
    /// failure with a blocking mask, purges once and retries.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn alloc_vmap_area(
        &self,
        size: usize,
        align: usize,
        vstart: usize,
        vend: usize,
        gfp: Gfp,
        va_flags: u32,
        vm: Option<VmInit>,
    ) -> Result<(usize, *mut VmapArea), VmallocError> {
        if size == 0 || !size.is_multiple_of(PAGE_SIZE) {
            return Err(VmallocError::ZeroSize);
        }
        if !align.is_power_of_two() {
            return Err(VmallocError::BadAlign { align });
        }
        if !vstart.is_multiple_of(PAGE_SIZE) || !vend.is_multiple_of(PAGE_SIZE) || vstart >= vend {
            return Err(VmallocError::BadRange {
                start: vstart,
                end: vend,
            });
        }
        let gfp = gfp & GFP_RECLAIM_MASK;
        let mut purged = false;
        loop {
            let mut s = self.lock_with_spares(gfp, 2)?;
            match s.areas.alloc_range(size, align, vstart, vend) {
                Ok(a) => {
                    let r = s.areas.insert_busy(a, a + size);
                    r.va_flags = va_flags;
                    if let Some(v) = vm {
                        r.vm_flags.store(v.flags.bits(), Relaxed);
                        r.caller = Some(v.caller);
                        r.requested_size.store(v.requested_size, Relaxed);
                        r.page_order = v.page_order;
                    }
                    return Ok((a, r as *mut VmapArea));
                }
                Err(_) => {
                    drop(s);
                    if self.purge_to_retry(gfp, &mut purged) {
                        continue;
                    }
                    if !gfp.contains(Gfp::NOWARN) {
                        self.pages.platform().warn(format_args!(
                            "vmalloc_node_range for size {size} failed: Address range restricted to {vstart:#x} - {vend:#x}"
                        ));
                    }
                    return Err(VmallocError::NoVirtualSpace {
                        size,
                        align,
                        start: vstart,
                        end: vend,
                    });
                }
            }
        }
    }

    /// Locks the state with at least `n` spare area records, adding pool
    /// pages (allocated without the lock) as needed.
    pub(crate) fn lock_with_spares(
        &self,
        gfp: Gfp,
        n: usize,
    ) -> Result<lock_api::MutexGuard<'_, P::Lock, State>, VmallocError> {
        loop {
            let s = self.state.lock();
            if s.areas.spare() >= n {
                return Ok(s);
            }
            drop(s);
            let pfn = self
                .pages
                .alloc_pages_node_at(NUMA_NO_NODE, gfp & GFP_RECLAIM_MASK, 0, Self::here())
                .map_err(VmallocError::Metadata)?;
            let mut s = self.state.lock();
            if let Some(f) = self.pages.frame(pfn) {
                f.set_owner(OWNER_VMAP_AREA);
                f.private[0].store(s.pool_head as usize, Relaxed);
            }
            s.pool_head = pfn.0 + 1;
            // SAFETY: a fresh page owned by the pool for the allocator's
            // life (freed in Drop).
            unsafe { s.areas.add_pool_page(self.pages.page_address(pfn).as_ptr()) };
        }
    }

    /// Allocates and maps pages `[first, first + count)` (in 4 KiB units) of
    /// the area at `start`, with chunks of `order` (0 or 9).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn populate(
        &self,
        start: usize,
        first: usize,
        count: usize,
        order: u32,
        gfp: Gfp,
        node: i32,
        prot: PteFlags,
    ) -> Result<(), VmallocError> {
        let size_bytes = count * PAGE_SIZE;
        // vmalloc_gfp_adjust: vmalloc reports failures itself.
        let mut page_gfp = gfp | Gfp::NOWARN;
        if order > 0 {
            page_gfp -= Gfp::NOFAIL;
        }
        if !gfp.allows_blocking() {
            page_gfp -= Gfp::NOFAIL;
        }
        let table_gfp = table_gfp(gfp);
        let mut batch = Batch {
            frames: [Pfn(0); BATCH],
            n: 0,
            next_va: start + first * PAGE_SIZE,
            size: if order == 0 {
                PageSize::Size4K
            } else {
                PageSize::Size2M
            },
            order,
        };
        let chunk = 1usize << order;
        let mut remaining = count / chunk;
        let result = (|| {
            if order == 0 {
                // Large orders first, without direct reclaim, split into
                // independent pages (Linux's vm_area_alloc_pages).
                let large_gfp = (page_gfp - Gfp::DIRECT_RECLAIM) - Gfp::NOFAIL;
                let mut max_attempt = MAX_PAGE_ORDER;
                while remaining > 1 {
                    let lo = (usize::BITS - 1 - remaining.leading_zeros()).min(max_attempt);
                    if lo == 0 {
                        break;
                    }
                    match self
                        .pages
                        .alloc_pages_node_at(node, large_gfp, lo, Self::here())
                    {
                        Ok(pfn) => {
                            self.stats.large_chunks.fetch_add(1, Relaxed);
                            let _ = self.pages.split_page(pfn, lo);
                            for i in 0..(1u64 << lo) {
                                if let Err(e) =
                                    self.add_page(&mut batch, pfn.add(i), prot, table_gfp)
                                {
                                    // add_page dealt with page i; the rest
                                    // of the split chunk is ours to give
                                    // back.
                                    for j in i + 1..(1u64 << lo) {
                                        let _ = self.pages.free_pages(pfn.add(j), 0);
                                    }
                                    return Err(e);
                                }
                            }
                            remaining -= 1 << lo;
                        }
                        Err(_) => max_attempt = lo - 1,
                    }
                }
            }
            while remaining > 0 {
                let pfn = self
                    .pages
                    .alloc_pages_node_at(node, page_gfp, order, Self::here())
                    .map_err(|error| VmallocError::NoPages {
                        size: size_bytes,
                        error,
                    })?;
                self.add_page(&mut batch, pfn, prot, table_gfp)?;
                remaining -= 1;
            }
            self.map_batch(&mut batch, prot, table_gfp)
        })();
        if result.is_err() {
            // Frames allocated but not mapped yet go straight back.
            for &pfn in &batch.frames[..batch.n] {
                self.free_area_page(pfn, order);
            }
        }
        result
    }

    fn add_page(
        &self,
        batch: &mut Batch,
        pfn: Pfn,
        prot: PteFlags,
        table_gfp: Gfp,
    ) -> Result<(), VmallocError> {
        if let Some(f) = self.pages.frame(pfn) {
            f.set_owner(OWNER_VMALLOC);
        }
        batch.frames[batch.n] = pfn;
        batch.n += 1;
        if batch.n == BATCH {
            self.map_batch(batch, prot, table_gfp)?;
        }
        Ok(())
    }

    fn map_batch(
        &self,
        batch: &mut Batch,
        prot: PteFlags,
        table_gfp: Gfp,
    ) -> Result<(), VmallocError> {
        if batch.n == 0 {
            return Ok(());
        }
        let frames = &batch.frames[..batch.n];
        match self
            .tables
            .map_range(VirtAddr(batch.next_va), frames, batch.size, prot, table_gfp)
        {
            Ok(flush) => {
                // New entries: nothing stale can be cached (x86).
                flush.ignore();
                self.stats
                    .pages_mapped
                    .fetch_add((batch.n << batch.order) as u64, Relaxed);
                batch.next_va += batch.n * batch.size.bytes();
                batch.n = 0;
                Ok(())
            }
            Err(e) => {
                // The first `mapped` frames are in the tables now; the
                // area teardown frees them. Keep the rest for the caller.
                let m = e.mapped;
                batch.frames.copy_within(m..batch.n, 0);
                batch.n -= m;
                batch.next_va += m * batch.size.bytes();
                Err(VmallocError::Map(e.error))
            }
        }
    }

    /// Frees one page (or 2 MiB chunk) an area owned.
    pub(crate) fn free_area_page(&self, pfn: Pfn, order: u32) {
        if let Some(f) = self.pages.frame(pfn) {
            f.set_owner(0);
        }
        if let Err(e) = self.pages.free_pages(pfn, order) {
            self.stats.page_free_errors.fetch_add(1, Relaxed);
            self.pages
                .platform()
                .warn(format_args!("vmalloc: freeing page {pfn} failed: {e}"));
        }
    }

    // ----- vmap / vm_map_ram ---------------------------------------------

    /// Linux's `vmap(pages, count, flags, prot)`: maps caller-owned pages
    /// contiguously. With `VM_MAP_PUT_PAGES` the pages (order-0 allocations)
    /// belong to the area from now on and `vfree` frees them; otherwise
    /// `vunmap` gives the range back and leaves the pages alone.
    #[track_caller]
    pub fn vmap(
        &self,
        pages: &[Pfn],
        flags: VmFlags,
        prot: PteFlags,
    ) -> Result<NonNull<u8>, VmallocError> {
        let caller = Location::caller();
        if flags.contains(VmFlags::FLUSH_RESET_PERMS) {
            self.pages.platform().warn(format_args!(
                "WARNING: vmap() with VM_FLUSH_RESET_PERMS at {caller}"
            ));
            return Err(VmallocError::BadFlags { flags });
        }
        // Flags that describe vmalloc's own areas or its bookkeeping (an
        // ALLOC area's pages are freed by vfree: the caller's would be).
        let vmap_flags = VmFlags::MAP
            | VmFlags::MAP_PUT_PAGES
            | VmFlags::USERMAP
            | VmFlags::IOREMAP
            | VmFlags::DMA_COHERENT
            | VmFlags::NO_GUARD
            | VmFlags::SPARSE;
        if !vmap_flags.contains(flags) {
            self.pages.platform().warn(format_args!(
                "vmap() with flags {:?} that only vmalloc itself sets, at {caller}",
                flags - vmap_flags
            ));
            return Err(VmallocError::BadFlags { flags });
        }
        // "Your top guard is someone else's bottom guard."
        let flags = flags - VmFlags::NO_GUARD;
        // The pages become the area's only once they are mapped: a failed
        // mapping must leave them with the caller (Linux sets
        // VM_MAP_PUT_PAGES after vmap_pages_range succeeds).
        let put_pages = flags.contains(VmFlags::MAP_PUT_PAGES);
        let flags = flags - VmFlags::MAP_PUT_PAGES;
        if pages.is_empty() {
            return Err(VmallocError::ZeroSize);
        }
        self.check_ram(pages)?;
        let total = self.total_pages;
        if pages.len() > total {
            return Err(VmallocError::ExceedsTotalRam {
                size: pages.len() * PAGE_SIZE,
                total_pages: total,
            });
        }
        let gfp = self.check_context(GFP_KERNEL, caller)?;
        let size = pages.len() * PAGE_SIZE;
        let area = self.get_vm_area(
            size,
            1,
            PAGE_SIZE.trailing_zeros(),
            flags,
            self.config.start,
            self.config.end,
            gfp,
            caller,
        )?;
        match self.tables.map_range(
            VirtAddr(area.start),
            pages,
            PageSize::Size4K,
            prot | PteFlags::NO_EXECUTE,
            table_gfp(gfp),
        ) {
            Ok(f) => f.ignore(),
            Err(e) => {
                self.release_area(area.start);
                return Err(VmallocError::Map(e.error));
            }
        }
        let s = self.state.lock();
        if let Some(r) = s.areas.find_busy(area.start) {
            if put_pages {
                r.vm_flags.fetch_or(VmFlags::MAP_PUT_PAGES.bits(), Relaxed);
                r.nr_pages.store(pages.len(), Relaxed);
                for p in pages {
                    if let Some(f) = self.pages.frame(*p) {
                        f.set_owner(OWNER_VMALLOC);
                    }
                }
            }
        }
        drop(s);
        self.stats.vmaps.fetch_add(1, Relaxed);
        Ok(NonNull::new(area.start as *mut u8).expect("vmalloc range excludes 0"))
    }

    /// Linux's `vm_map_ram(pages, count, node)`: a quick mapping for
    /// short-lived use. Up to [`super::VMAP_MAX_ALLOC`] pages come from a
    /// per-CPU vmap block (no guard page); larger counts get an area of
    /// their own. Release with [`Self::vm_unmap_ram`].
    #[track_caller]
    pub fn vm_map_ram(&self, pages: &[Pfn], node: i32) -> Result<NonNull<u8>, VmallocError> {
        let _ = node;
        let caller = Location::caller();
        let count = pages.len();
        if count == 0 {
            return Err(VmallocError::ZeroSize);
        }
        self.check_ram(pages)?;
        let gfp = self.check_context(GFP_KERNEL, caller)?;
        let size = count * PAGE_SIZE;
        let addr = if count <= super::VMAP_MAX_ALLOC {
            self.vb_alloc(size, gfp)?
        } else {
            self.alloc_vmap_area(
                size,
                PAGE_SIZE,
                self.config.start,
                self.config.end,
                gfp,
                VMAP_RAM,
                None,
            )?
            .0
        };
        if let Err(e) = self.tables.map_range(
            VirtAddr(addr),
            pages,
            PageSize::Size4K,
            PteFlags::KERNEL,
            table_gfp(gfp),
        ) {
            // Unmap what got mapped and give the range back.
            let _ = self.vm_unmap_ram_inner(addr, count, false);
            return Err(VmallocError::Map(e.error));
        }
        self.stats.vm_map_rams.fetch_add(1, Relaxed);
        Ok(NonNull::new(addr as *mut u8).expect("vmalloc range excludes 0"))
    }

    // ----- helpers --------------------------------------------------------

    /// Refuses a page list with a frame that is not RAM.
    fn check_ram(&self, pages: &[Pfn]) -> Result<(), VmallocError> {
        match pages.iter().find(|&&p| !self.pages.page_is_ram(p)) {
            Some(&pfn) => Err(VmallocError::NotRam { pfn }),
            None => Ok(()),
        }
    }

    /// Linux's `vmalloc_fix_flags`.
    #[track_caller]
    fn fix_flags(&self, gfp: Gfp) -> Gfp {
        let bad = gfp - GFP_VMALLOC_SUPPORTED;
        if bad.is_empty() {
            return gfp;
        }
        let fixed = gfp & GFP_VMALLOC_SUPPORTED;
        self.pages.platform().warn(format_args!(
            "WARNING: Unexpected gfp: {:#x} ({bad}). Fixing up to gfp: {:#x} ({fixed}). Fix your code! (at {})",
            bad.bits(),
            fixed.bits(),
            Location::caller()
        ));
        fixed
    }

    /// The entry check: valid mask, not in an interrupt or NMI, and a
    /// blocking mask only where sleeping is allowed.
    pub(crate) fn check_context(
        &self,
        gfp: Gfp,
        caller: &'static Location<'static>,
    ) -> Result<Gfp, VmallocError> {
        let ctx = self.pages.platform().context();
        if ctx.in_nmi() {
            return Err(VmallocError::InNmi);
        }
        if ctx.in_interrupt() {
            self.pages.platform().warn(format_args!(
                "BUG: vmalloc called in interrupt context ({ctx}) at {caller}"
            ));
            return Err(VmallocError::InInterrupt);
        }
        let mut gfp = gfp;
        if ctx.is_atomic() && gfp.allows_blocking() {
            let v = self.sleep_in_atomic(ctx, caller);
            match self.pages.config().context_policy {
                ContextPolicy::Fail => return Err(VmallocError::SleepInAtomic(v)),
                ContextPolicy::Warn => gfp = gfp - Gfp::DIRECT_RECLAIM - Gfp::NOFAIL,
                ContextPolicy::Panic => panic!("{v}"),
            }
        }
        gfp.validate().map_err(VmallocError::InvalidGfp)?;
        Ok(gfp)
    }

    /// Linux's `warn_alloc` for vmalloc failures (silenced by NOWARN).
    pub(crate) fn warn_alloc(&self, gfp: Gfp, msg: core::fmt::Arguments<'_>) {
        if !gfp.contains(Gfp::NOWARN) {
            self.pages.platform().warn(format_args!(
                "{msg}, mode:{:#x}({gfp}), nodemask=(null)",
                gfp.bits()
            ));
        }
    }
}

/// Frames waiting to be mapped.
struct Batch {
    frames: [Pfn; BATCH],
    n: usize,
    next_va: usize,
    size: PageSize,
    order: u32,
}

/// The mask page tables are allocated with. Linux applies a scope to the
/// caller's mask (`memalloc_apply_gfp_scope`): non-blocking masks and
/// NORETRY/RETRY_MAYFAIL get `PF_MEMALLOC` (no reclaim, reserves allowed),
/// GFP_NOFS / GFP_NOIO keep their restriction; otherwise GFP_KERNEL.
pub(crate) fn table_gfp(gfp: Gfp) -> Gfp {
    if !gfp.allows_blocking() || gfp.intersects(Gfp::RETRY_MAYFAIL | Gfp::NORETRY) {
        (gfp & (Gfp::HIGH | Gfp::KSWAPD_RECLAIM)) | Gfp::MEMALLOC | Gfp::NOWARN
    } else {
        GFP_KERNEL & (gfp | !(Gfp::IO | Gfp::FS))
    }
}
