//! kmem's vmalloc on bare metal, over x86-64 page tables the CPU walks.
//!
//! [`kmem::vmalloc::Vmalloc`] runs over [`LiveTables`]: kmem's own
//! [`X86PageTables`] (every table frame from kmem's page allocator) whose
//! PML4 entry for vmalloc space is linked into the live PML4 of CR3, so the
//! CPU walks the entries kmem writes. The section:
//!
//! 1. `vmalloc`s an 11-page area and a 129-page one, checks every page's
//!    `vmalloc_to_pfn` against the live walk from CR3, writes through the
//!    vmalloc address and reads back through the direct map of each frame;
//! 2. reads the guard page after each area: a #PF, caught, CR2 reported;
//! 3. `vzalloc`s pages just dirtied and freed: all zero;
//! 4. `vmalloc_huge(4 MiB)`: 2 MiB leaves when order-9 blocks are there
//!    (a fallback to 4 KiB pages is reported, not failed);
//! 5. `vfree`s a 2-page area and `purge`s it alone: kmem's flush of its
//!    3 pages becomes 3 real `invlpg`s, and the address then faults;
//! 6. `vfree`s everything else, `purge`s: the one lazy flush is past kmem's
//!    33-page ceiling, so it becomes a real full flush (CR4.PGE toggled:
//!    the entries are global, a CR3 reload would keep them); emptied
//!    tables are freed, and the freed addresses fault;
//! 7. tears down and checks the free page count is back where it started.
//!
//! # Why the top-level table stays pinned
//!
//! The live PML4 slot points at kmem's PDPT for the slot. kmem's purge
//! frees every intermediate table that maps nothing any more — the PDPT
//! included — and could not know that the real PML4 still points at it.
//! Linux avoids this by preallocating the vmalloc tables under the PGD at
//! boot (`preallocate_vmalloc_pages`) and never freeing them; here the
//! section does the equivalent: before linking, it maps one read-only "pin"
//! page at [`PIN_VA`], the first page of the slot, *outside* the range
//! handed to vmalloc (which starts [`PMD_SIZE`] higher). The pin's page
//! table keeps the first page directory non-empty, which keeps the PDPT
//! non-empty, so no purge can free the table the live PML4 points at, while
//! the page tables (and page directories) under vmalloc's own ranges are
//! still freed as they empty. The section turns `free_page_tables` on
//! (kmem's default, like Linux, keeps them): off would also be safe, but
//! would leave kmem's table freeing untested on real hardware.
//! The slot is unlinked (full TLB flush) before the pin and the remaining
//! tables are freed at the end.

use super::{pattern, settle, Pages, Section};
use crate::interrupts::{last_probe_fault, pf_reason, probe_read};
use crate::paging::{self, VMALLOC_START};
use crate::platform::BootPlatform;
use crate::{arch, check, log};
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use kmem::gfp::GFP_KERNEL;
use kmem::paging::{
    Flush, FlushRange, MapError, MapRangeError, PageSize, PageTables, PteFlags, TranslateError,
    Translation, UnmapError, X86PageTables,
};
use kmem::vmalloc::{Vmalloc, VmallocConfig, PMD_SIZE};
use kmem::{Pfn, PhysAddr, VirtAddr, PAGE_SIZE};

/// The pin page's address: first page of the vmalloc PML4 slot.
pub const PIN_VA: usize = VMALLOC_START;
/// Start of the range handed to vmalloc.
pub const RANGE_START: usize = VMALLOC_START + PMD_SIZE;
/// End of the range: the end of the PML4 slot (512 GiB).
pub const RANGE_END: usize = VMALLOC_START + (1 << 39);
/// kmem's single-page flush ceiling (Linux's
/// `tlb_single_page_flush_ceiling`).
const FLUSH_CEILING_PAGES: usize = kmem::paging::x86_64::FLUSH_CEILING_PAGES;

/// kmem's [`X86PageTables`] as the CPU sees them: every call is delegated;
/// kmem's flushes (which only drive its TLB model) also flush the real TLB,
/// and the no-execute bit is dropped when EFER.NXE is off (it would be a
/// reserved bit).
pub struct LiveTables<'t> {
    inner: &'t X86PageTables<'static, BootPlatform>,
    nx: bool,
    /// Real `invlpg`s issued.
    pub invlpgs: AtomicUsize,
    /// Real full flushes (CR4.PGE toggled: vmalloc entries are global, so a
    /// CR3 reload would not drop them).
    pub full_flushes: AtomicUsize,
}

impl<'t> LiveTables<'t> {
    /// Wraps `inner`.
    pub fn new(inner: &'t X86PageTables<'static, BootPlatform>) -> Self {
        LiveTables {
            inner,
            nx: paging::nx_enabled(),
            invlpgs: AtomicUsize::new(0),
            full_flushes: AtomicUsize::new(0),
        }
    }

    fn fix(&self, flags: PteFlags) -> PteFlags {
        if self.nx {
            flags
        } else {
            flags - PteFlags::NO_EXECUTE
        }
    }

    fn real_flush_all(&self) {
        arch::flush_tlb_all();
        self.full_flushes.fetch_add(1, Relaxed);
    }
}

impl PageTables for LiveTables<'_> {
    fn map(
        &self,
        va: VirtAddr,
        pa: PhysAddr,
        size: PageSize,
        flags: PteFlags,
        gfp: kmem::Gfp,
    ) -> Result<Flush<'_, Self>, MapError> {
        self.inner
            .map(va, pa, size, self.fix(flags), gfp)
            .map(|f| Flush::new(self, f.addr()))
    }

    fn map_range(
        &self,
        va: VirtAddr,
        frames: &[Pfn],
        size: PageSize,
        flags: PteFlags,
        gfp: kmem::Gfp,
    ) -> Result<FlushRange<'_, Self>, MapRangeError> {
        self.inner
            .map_range(va, frames, size, self.fix(flags), gfp)
            .map(|f| {
                let (s, e) = f.range();
                FlushRange::new(self, s, e)
            })
    }

    fn unmap(&self, va: VirtAddr) -> Result<(Translation, Flush<'_, Self>), UnmapError> {
        self.inner
            .unmap(va)
            .map(|(t, f)| (t, Flush::new(self, f.addr())))
    }

    fn unmap_range(
        &self,
        start: VirtAddr,
        end: VirtAddr,
        on_leaf: &mut dyn FnMut(VirtAddr, PhysAddr, PageSize),
    ) -> FlushRange<'_, Self> {
        let (s, e) = self.inner.unmap_range(start, end, on_leaf).range();
        FlushRange::new(self, s, e)
    }

    fn translate(&self, va: VirtAddr) -> Result<Translation, TranslateError> {
        self.inner.translate(va)
    }

    fn free_empty_tables(&self, start: VirtAddr, end: VirtAddr) -> usize {
        self.inner.free_empty_tables(start, end)
    }

    fn flush_page(&self, va: VirtAddr) {
        self.inner.flush_page(va);
        arch::invlpg(va.0);
        self.invlpgs.fetch_add(1, Relaxed);
    }

    fn flush_range(&self, start: VirtAddr, end: VirtAddr) {
        self.inner.flush_range(start, end);
        let pages = end.0.saturating_sub(start.0) / PAGE_SIZE;
        if pages > FLUSH_CEILING_PAGES {
            self.real_flush_all();
        } else {
            for i in 0..pages {
                arch::invlpg(start.0 + i * PAGE_SIZE);
            }
            self.invlpgs.fetch_add(pages, Relaxed);
        }
    }

    fn flush_all(&self) {
        self.inner.flush_all();
        self.real_flush_all();
    }
}

type Vm<'t> = Vmalloc<'static, BootPlatform, LiveTables<'t>>;

/// Probes `addr`, expecting a caught not-present #PF there; logs it.
fn expect_fault(s: &mut Section, what: &str, addr: usize) {
    let before = last_probe_fault().2;
    let r = probe_read(addr);
    let (cr2, err, count) = last_probe_fault();
    if check!(
        s,
        r.is_none() && count == before + 1 && cr2 == addr as u64 && err & 1 == 0,
        "{what} read at {addr:#x}: got {r:x?}, fault count {count}, cr2 {cr2:#x}, error {err:#x}"
    ) {
        log!(
            s,
            "{what} read at {addr:#x}: #PF caught, cr2={cr2:#x}, error={err:#x} ({})",
            pf_reason(err)
        );
    }
}

/// Checks that kmem's translation of each page of `[p, p + len)` is the
/// live walk's, writes a pattern through `p`, and reads it back through the
/// direct map of each page's frame (`vmalloc_to_page`). Returns the number
/// of physically contiguous runs the frames form.
fn write_and_check(s: &mut Section, vm: &Vm<'_>, pa: &Pages, p: *mut u8, len: usize) -> usize {
    let pages = len / PAGE_SIZE;
    let (mut bad_walks, mut runs, mut prev) = (0, 0, u64::MAX);
    for i in 0..pages {
        let va = p as usize + i * PAGE_SIZE;
        let pfn = vm.vmalloc_to_pfn(va as *const u8);
        let live = paging::translate(va);
        if pfn.is_none() || live != pfn.map(|f| f << 12) {
            bad_walks += 1;
            if bad_walks <= 3 {
                s.fail(format_args!(
                    "page {i} at {va:#x}: vmalloc_to_pfn {pfn:x?}, live walk {live:x?}"
                ));
            }
        }
        let pfn = pfn.unwrap_or(u64::MAX);
        runs += (pfn != prev.wrapping_add(1)) as usize;
        prev = pfn;
    }
    if bad_walks > 0 {
        return runs;
    }
    let tag = p as u64;
    let words = len / 8;
    let w = p as *mut u64;
    for i in 0..words {
        // SAFETY: the area is mapped read-write for `len` bytes.
        unsafe { w.add(i).write_volatile(pattern(tag, i)) };
    }
    let mut wrong = 0;
    for pg in 0..pages {
        let pfn = vm
            .vmalloc_to_page((p as usize + pg * PAGE_SIZE) as *const u8)
            .unwrap();
        let d = pa.page_address(pfn).as_ptr::<u64>();
        for j in 0..PAGE_SIZE / 8 {
            let i = pg * PAGE_SIZE / 8 + j;
            // SAFETY: the frame is mapped by the area and in the direct map.
            wrong += (unsafe { d.add(j).read_volatile() } != pattern(tag, i)) as usize;
        }
    }
    check!(
        s,
        wrong == 0,
        "{wrong} words differ between {p:p} and the direct map of its frames"
    );
    runs
}

/// Runs the section.
pub fn run(pa: &'static Pages) -> Section {
    let mut s = Section::new("vmalloc");
    let baseline = settle(pa);

    // kmem's tables for the slot, pinned, and linked into the live PML4.
    let tables = match X86PageTables::new(pa) {
        Ok(t) => t,
        Err(e) => {
            s.fail(format_args!("X86PageTables::new: {e}"));
            return s;
        }
    };
    let pin = match pa.alloc_pages(GFP_KERNEL, 0) {
        Ok(p) => p,
        Err(e) => {
            s.fail(format_args!("pin page: {e}"));
            return s;
        }
    };
    let ro = if paging::nx_enabled() {
        PteFlags::KERNEL_RO
    } else {
        PteFlags::KERNEL_RO - PteFlags::NO_EXECUTE
    };
    match tables.map(
        VirtAddr(PIN_VA),
        pin.phys(),
        PageSize::Size4K,
        ro,
        GFP_KERNEL,
    ) {
        Ok(f) => f.ignore(), // was not present: nothing cached
        Err(e) => {
            s.fail(format_args!("mapping the pin page: {e:?}"));
            let _ = pa.free_pages(pin, 0);
            return s;
        }
    }
    let Some(top) = tables.entry(VirtAddr(VMALLOC_START), 4) else {
        s.fail(format_args!(
            "no PML4 entry for vmalloc space after pinning"
        ));
        return s;
    };
    paging::link_pml4_slot(VMALLOC_START, top);
    log!(
        s,
        "kmem X86PageTables for {:#x}..{:#x}: PML4 slot linked into CR3's, pinned by a read-only page at {PIN_VA:#x} outside vmalloc's range ({} table pages)",
        VMALLOC_START,
        RANGE_END,
        tables.stats().tables
    );

    let live = LiveTables::new(&tables);
    // Unlike Linux (and kmem's default), free the tables each purge
    // empties: the section exercises that path on real hardware.
    let config = VmallocConfig {
        free_page_tables: true,
        ..VmallocConfig::range(RANGE_START, RANGE_END)
    };
    let vm: Vm<'_> = match Vmalloc::new(pa, live, config) {
        Ok(v) => v,
        Err(e) => {
            s.fail(format_args!("Vmalloc::new: {e}"));
            paging::unlink_pml4_slot(VMALLOC_START);
            return s;
        }
    };
    body(&mut s, &vm, pa, &tables, top);

    // Teardown: drop vmalloc (purges and gives its record pages back), then
    // unlink the slot (full flush), and free the pin and every table.
    let st = vm.stats();
    let (invlpgs, full) = (
        vm.tables().invlpgs.load(Relaxed),
        vm.tables().full_flushes.load(Relaxed),
    );
    drop(vm);
    check!(
        s,
        tables.entry(VirtAddr(VMALLOC_START), 4) == Some(top),
        "kmem's PML4 entry changed: the linked PDPT was freed"
    );
    paging::unlink_pml4_slot(VMALLOC_START);
    let _ = tables.unmap(VirtAddr(PIN_VA)).map(|(_, f)| f.ignore());
    let left = tables.free_empty_tables(VirtAddr(VMALLOC_START), VirtAddr(RANGE_END));
    drop(tables);
    let _ = pa.free_pages(pin, 0);
    log!(
        s,
        "purges: {} ({} areas, {} pages), {} page tables freed by purge; real TLB: {invlpgs} invlpg, {full} full flushes",
        st.purges,
        st.purged_areas,
        st.purged_pages,
        st.tables_freed
    );
    let now = settle(pa);
    if check!(
        s,
        now == baseline,
        "free pages {now} after the section, {baseline} before"
    ) {
        log!(
            s,
            "slot unlinked, pin and {left} remaining tables + root freed; free pages back to {baseline}"
        );
    }
    s
}

fn body(
    s: &mut Section,
    vm: &Vm<'_>,
    pa: &'static Pages,
    tables: &X86PageTables<'static, BootPlatform>,
    top: u64,
) {
    // 1. Two areas, walked, written, read back through the direct map.
    let mut areas = [(core::ptr::null_mut::<u8>(), 0usize); 2];
    for (k, size) in [10 * PAGE_SIZE + 123, 128 * PAGE_SIZE + 1]
        .into_iter()
        .enumerate()
    {
        let p = match vm.vmalloc(size) {
            Ok(p) => p.as_ptr(),
            Err(e) => {
                s.fail(format_args!("vmalloc({size}): {e}"));
                return;
            }
        };
        let Some(a) = vm.find_vm_area(p) else {
            s.fail(format_args!("no vm area at {p:p}"));
            return;
        };
        let len = a.nr_pages * PAGE_SIZE;
        check!(
            s,
            a.nr_pages == size.div_ceil(PAGE_SIZE) && a.size == len + PAGE_SIZE,
            "area {p:p}: {} pages, size {:#x}",
            a.nr_pages,
            a.size
        );
        let runs = write_and_check(s, vm, pa, p, len);
        let first = vm.vmalloc_to_pfn(p).unwrap_or(0);
        let last = vm
            .vmalloc_to_pfn((p as usize + len - PAGE_SIZE) as *const u8)
            .unwrap_or(0);
        log!(
            s,
            "vmalloc({size}) = {p:p}: {} pages (pfn {first:#x} .. {last:#x}, {runs} physically contiguous runs), vmalloc_to_pfn = live walk from CR3 on every page; wrote {} KiB through {p:p}, read back through the direct map of each frame: identical",
            a.nr_pages,
            len / 1024
        );
        expect_fault(s, "guard page", p as usize + len + 0x10);
        areas[k] = (p, len);
    }
    if let Some(e) = tables.entry(VirtAddr(areas[0].0 as usize), 1) {
        check!(
            s,
            e & PteFlags::GLOBAL.bits() != 0
                && (!paging::nx_enabled() || e & PteFlags::NO_EXECUTE.bits() != 0),
            "PTE of {:p} is {e:#x}",
            areas[0].0
        );
    }

    // 2. vzalloc over pages just dirtied and freed.
    let n = 64 * PAGE_SIZE;
    match vm.vmalloc(n) {
        Ok(d) => {
            // SAFETY: n bytes just mapped.
            unsafe { d.as_ptr().write_bytes(0xee, n) };
            let _ = vm.vfree(d.as_ptr());
            vm.purge();
        }
        Err(e) => s.fail(format_args!("vmalloc({n}): {e}")),
    }
    match vm.vzalloc(n) {
        Ok(z) => {
            let z = z.as_ptr();
            let mut nonzero = 0;
            for pg in 0..n / PAGE_SIZE {
                let va = z as usize + pg * PAGE_SIZE;
                let d = vm
                    .vmalloc_to_page(va as *const u8)
                    .map(|f| pa.page_address(f).as_ptr::<u64>());
                for j in 0..PAGE_SIZE / 8 {
                    // SAFETY: mapped and in the direct map.
                    let (v, dm) = unsafe {
                        (
                            (va as *const u64).add(j).read_volatile(),
                            d.map_or(1, |d| d.add(j).read_volatile()),
                        )
                    };
                    nonzero += (v != 0 || dm != 0) as usize;
                }
            }
            if check!(s, nonzero == 0, "vzalloc({n}): {nonzero} nonzero words") {
                log!(
                    s,
                    "vzalloc({n}) = {z:p} after 64 pages were dirtied with 0xee, vfreed and purged: all zero (vmalloc address and direct map)"
                );
            }
            check!(s, vm.vfree(z).is_ok(), "vfree of the vzalloc area refused");
            vm.purge();
        }
        Err(e) => s.fail(format_args!("vzalloc({n}): {e}")),
    }

    // 3. vmalloc_huge: 2 MiB leaves if order-9 blocks are available.
    let hsize = 2 * PMD_SIZE;
    let fallbacks = vm.stats().huge_fallbacks;
    let huge = match vm.vmalloc_huge(hsize, GFP_KERNEL) {
        Ok(h) => h.as_ptr(),
        Err(e) => {
            s.fail(format_args!("vmalloc_huge({hsize}): {e}"));
            return;
        }
    };
    let a = vm.find_vm_area(huge);
    let order = a.map_or(u32::MAX, |a| a.page_order);
    if order == 9 {
        let leaf = tables.entry(VirtAddr(huge as usize), 2).unwrap_or(0);
        let t = vm.tables().translate(VirtAddr(huge as usize + 0x1234));
        check!(
            s,
            (huge as usize).is_multiple_of(PMD_SIZE)
                && leaf & PteFlags::HUGE.bits() != 0
                && t.map(|t| t.size) == Ok(PageSize::Size2M),
            "vmalloc_huge area {huge:p}: PD entry {leaf:#x}"
        );
        let runs = write_and_check(s, vm, pa, huge, hsize);
        log!(
            s,
            "vmalloc_huge({hsize}) = {huge:p}: two 2 MiB leaves in the page directory ({runs} physically contiguous runs), live walk agrees on all {} pages; wrote 4 MiB through it, read back through the direct map: identical",
            hsize / PAGE_SIZE
        );
        expect_fault(s, "huge guard page", huge as usize + hsize + 0x10);
    } else {
        check!(
            s,
            vm.stats().huge_fallbacks == fallbacks + 1 && order == 0,
            "vmalloc_huge: page order {order}"
        );
        write_and_check(s, vm, pa, huge, hsize);
        log!(
            s,
            "vmalloc_huge({hsize}) = {huge:p}: no order-9 blocks, fell back to 4 KiB pages; written and read back"
        );
    }

    // 4. A small area freed and purged alone: the purge's flush covers 3
    //    pages (2 + guard), under kmem's ceiling, so it becomes 3 invlpg.
    match vm.vmalloc(2 * PAGE_SIZE) {
        Ok(q) => {
            let q = q.as_ptr();
            // Load its translation into the TLB.
            let seen =
                probe_read(q as usize).is_some() && probe_read(q as usize + PAGE_SIZE).is_some();
            let inv = vm.tables().invlpgs.load(Relaxed);
            let freed = vm.vfree(q).is_ok();
            let purged = vm.purge();
            let inv = vm.tables().invlpgs.load(Relaxed) - inv;
            if check!(
                s,
                seen && freed && purged == 1 && inv == 3,
                "small area {q:p}: read {seen}, vfree {freed}, purged {purged}, {inv} invlpg"
            ) {
                log!(
                    s,
                    "vmalloc(8192) = {q:p}, read through (TLB loaded), vfreed, purged alone: {inv} real invlpg for its 3 pages (guard included)"
                );
            }
            expect_fault(s, "purged small area", q as usize + PAGE_SIZE);
        }
        Err(e) => s.fail(format_args!("vmalloc(8192): {e}")),
    }

    // 5. vfree everything, purge: real flushes, emptied tables freed.
    let before = vm.tables().invlpgs.load(Relaxed) + vm.tables().full_flushes.load(Relaxed);
    let mut refused = 0;
    for (p, _) in areas {
        refused += vm.vfree(p).is_err() as usize;
    }
    refused += vm.vfree(huge).is_err() as usize;
    check!(s, refused == 0, "{refused} vfrees refused");
    let lazy = vm.stats().lazy_areas;
    let tables_before = tables.stats().tables;
    let purged = vm.purge();
    let tables_after = tables.stats().tables;
    let flushes = vm.tables().invlpgs.load(Relaxed) + vm.tables().full_flushes.load(Relaxed);
    check!(
        s,
        purged as u64 == lazy && lazy == 3 && flushes > before,
        "purge: {purged} areas of {lazy} lazy, {} real flush operations",
        flushes - before
    );
    log!(
        s,
        "vfreed the other 3 areas (lazy: entries cleared, no flush); one purge: {purged} areas, real TLB flush issued ({} invlpg, {} full so far), kmem tables {tables_before} -> {tables_after}",
        vm.tables().invlpgs.load(Relaxed),
        vm.tables().full_flushes.load(Relaxed)
    );
    check!(
        s,
        tables.entry(VirtAddr(VMALLOC_START), 4) == Some(top)
            && paging::translate(PIN_VA)
                == Some(tables.translate(VirtAddr(PIN_VA)).map_or(0, |t| t.pa.0)),
        "the pinned PDPT or pin mapping is gone after purge"
    );
    expect_fault(s, "freed area", areas[0].0 as usize);
    expect_fault(s, "freed huge area", huge as usize + PAGE_SIZE);
    let st = vm.stats();
    check!(
        s,
        st.busy_areas == 0 && st.lazy_areas == 0 && vm.nr_vmalloc_pages() == 0,
        "after purge: {} busy, {} lazy, {} pages",
        st.busy_areas,
        st.lazy_areas,
        vm.nr_vmalloc_pages()
    );
    if let Err(e) = vm.verify() {
        s.fail(format_args!("vmalloc verify: {e}"));
    }
}
