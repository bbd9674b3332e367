//! kmem's x86-64 page tables under the real MMU, and a guard page that
//! faults.
//!
//! What vmalloc does, done by hand with kmem's page-table layer alone (the
//! [`super::vmalloc`] section then runs `kmem::vmalloc` itself): [`NR_PAGES`]
//! frames taken one by one (with spacer allocations between them, so they
//! are physically scattered) are mapped contiguously at [`AREA`] in vmalloc
//! space by kmem's own page-table code ([`kmem::paging::X86PageTables`], whose
//! PDPT, PD and PT come from kmem's page allocator). The kernel links the
//! PML4 slot of vmalloc space to those tables, so the CPU walks the entries
//! kmem wrote: the kernel writes through the virtual area and reads back
//! through the direct map of each frame, and kmem's software walk and the
//! live one agree. The page after the area is left unmapped, as vmalloc's
//! guard page; touching it raises a #PF that the handler catches (the access
//! is a `probe_read`), reporting CR2. A NULL read faults too: the boot
//! identity map is gone.

use super::{pattern, settle, Pages, Section};
use crate::interrupts::{last_probe_fault, pf_reason, probe_read};
use crate::paging::{self, VMALLOC_START};
use crate::{arch, check, log};
use kmem::gfp::GFP_KERNEL;
use kmem::paging::{PageSize, PageTables, PteFlags, X86PageTables};
use kmem::{Pfn, VirtAddr, PAGE_SIZE};

/// Pages in the area.
pub const NR_PAGES: usize = 4;
/// The area: one unmapped page into vmalloc space, as vmalloc leaves holes.
pub const AREA: usize = VMALLOC_START + PAGE_SIZE;
/// The guard page right after the area.
pub const GUARD: usize = AREA + NR_PAGES * PAGE_SIZE;
/// End of the PML4 slot of vmalloc space.
const SLOT_END: usize = VMALLOC_START + (1 << 39);

/// Runs the section.
pub fn run(pa: &'static Pages) -> Section {
    let mut s = Section::new("guard");
    let baseline = settle(pa);

    let mut frames = [Pfn(0); NR_PAGES];
    let mut spacers = [Pfn(0); NR_PAGES];
    for i in 0..NR_PAGES {
        match (
            pa.alloc_pages(GFP_KERNEL, 0),
            pa.alloc_pages(GFP_KERNEL, i as u32 % 3),
        ) {
            (Ok(f), Ok(sp)) => {
                frames[i] = f;
                spacers[i] = sp;
            }
            (a, b) => {
                s.fail(format_args!("allocating frames: {a:?} {b:?}"));
                return s;
            }
        }
    }
    let tables = match X86PageTables::new(pa) {
        Ok(t) => t,
        Err(e) => {
            s.fail(format_args!("X86PageTables::new: {e}"));
            return s;
        }
    };
    let flags = if paging::nx_enabled() {
        PteFlags::KERNEL
    } else {
        PteFlags::KERNEL - PteFlags::NO_EXECUTE
    };
    match tables.map_range(VirtAddr(AREA), &frames, PageSize::Size4K, flags, GFP_KERNEL) {
        // Entries that were not present are never cached: nothing to flush.
        Ok(f) => f.ignore(),
        Err(e) => {
            s.fail(format_args!("map_range: {e:?}"));
            return s;
        }
    }
    let Some(top) = tables.entry(VirtAddr(VMALLOC_START), 4) else {
        s.fail(format_args!(
            "no PML4 entry for vmalloc space after mapping"
        ));
        return s;
    };
    paging::link_pml4_slot(VMALLOC_START, top);
    log!(
        s,
        "kmem X86PageTables mapped frames {:#x} {:#x} {:#x} {:#x} at {:#x}..{:#x} ({} table pages from kmem, root included); PML4 slot linked into CR3's",
        frames[0].0,
        frames[1].0,
        frames[2].0,
        frames[3].0,
        AREA,
        GUARD,
        tables.stats().tables
    );
    let mut walks_agree = true;
    for (i, f) in frames.iter().enumerate() {
        let va = AREA + i * PAGE_SIZE + 8 * i;
        let want = f.phys().0 + 8 * i as u64;
        let kmem_walk = tables.translate(VirtAddr(va)).map(|t| t.pa.0).ok();
        let live_walk = paging::translate(va);
        walks_agree &= check!(
            s,
            kmem_walk == Some(want) && live_walk == Some(want),
            "walk of {va:#x}: kmem {kmem_walk:x?}, live {live_walk:x?}, want {want:#x}"
        );
    }
    if walks_agree {
        log!(
            s,
            "kmem's walk and the live walk from CR3 agree on every page"
        );
    }

    // Write through the virtual area, read back through the direct map.
    let words = NR_PAGES * PAGE_SIZE / 8;
    let area = AREA as *mut u64;
    for w in 0..words {
        // SAFETY: the area was just mapped read-write.
        unsafe { area.add(w).write_volatile(pattern(AREA as u64, w)) };
    }
    let mut wrong = 0;
    for (i, f) in frames.iter().enumerate() {
        let d = pa.page_address(*f).as_ptr::<u64>();
        for j in 0..PAGE_SIZE / 8 {
            let w = i * PAGE_SIZE / 8 + j;
            // SAFETY: the frame is allocated and in the direct map.
            wrong += (unsafe { d.add(j).read_volatile() } != pattern(AREA as u64, w)) as usize;
        }
    }
    if check!(
        s,
        wrong == 0,
        "{wrong} words differ between the area and the direct map"
    ) {
        log!(
            s,
            "wrote {} KiB through {:#x}, read it back through the direct map of each frame: identical",
            NR_PAGES * PAGE_SIZE / 1024,
            AREA
        );
    }
    match tables.entry(VirtAddr(AREA), 1) {
        Some(e) => {
            // NX only exists where EFER.NXE is on.
            let nx = !paging::nx_enabled() || e & PteFlags::NO_EXECUTE.bits() != 0;
            check!(
                s,
                e & PteFlags::DIRTY.bits() != 0 && nx,
                "PTE of {AREA:#x} is {e:#x}"
            );
        }
        None => s.fail(format_args!("no PTE maps {AREA:#x}")),
    }
    check!(
        s,
        probe_read(AREA + 8) == Some(pattern(AREA as u64, 1)),
        "probe of a mapped word faulted or read wrong"
    );

    // The guard page faults, and the fault is caught.
    for (what, addr) in [("guard page", GUARD + 0x10), ("NULL", 0usize)] {
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

    // Tear down: kmem clears the leaves; the real TLB is flushed here (kmem's
    // flush tokens drive its TLB models, not the CPU); then the slot is
    // unlinked and kmem frees its emptied tables.
    let mut unmapped = 0;
    tables
        .unmap_range(VirtAddr(AREA), VirtAddr(GUARD), &mut |_, pa_, _| {
            unmapped += frames.iter().any(|f| f.phys() == pa_) as usize;
        })
        .flush();
    for i in 0..NR_PAGES {
        arch::invlpg(AREA + i * PAGE_SIZE);
    }
    check!(
        s,
        unmapped == NR_PAGES,
        "unmap_range reported {unmapped} of our frames"
    );
    check!(
        s,
        probe_read(AREA).is_none(),
        "area still readable after unmapping"
    );
    paging::unlink_pml4_slot(VMALLOC_START);
    let freed_tables = tables.free_empty_tables(VirtAddr(VMALLOC_START), VirtAddr(SLOT_END));
    let st = tables.stats();
    drop(tables);
    for f in frames {
        let _ = pa.free_pages(f, 0);
    }
    for (i, sp) in spacers.iter().enumerate() {
        let _ = pa.free_pages(*sp, i as u32 % 3);
    }
    check!(
        s,
        freed_tables == 3 && st.tables == 1,
        "{freed_tables} tables freed, {} left",
        st.tables
    );
    let now = settle(pa);
    if check!(
        s,
        now == baseline,
        "free pages {now} after the section, {baseline} before"
    ) {
        log!(
            s,
            "unmapped ({} leaves cleared), {freed_tables} emptied tables and the root freed by kmem, {NR_PAGES} frames freed; free pages back to {baseline}",
            st.leaves_cleared
        );
    }
    s
}
