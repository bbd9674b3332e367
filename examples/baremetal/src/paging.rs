//! Page tables: the direct map, and the bridge to kmem's page tables.
//!
//! Address space (Linux's x86-64 layout, 4-level paging):
//!
//! | range | what |
//! |---|---|
//! | `0xffff_8880_0000_0000` + phys | direct map of all RAM ([`DIRECT_MAP_BASE`], Linux's `PAGE_OFFSET`), 2 MiB pages, global, no-execute |
//! | `0xffff_c900_0000_0000` | vmalloc space ([`VMALLOC_START`]): kmem's own x86-64 tables, linked into the live PML4 ([`link_pml4_slot`]) |
//! | `0xffff_ffff_8000_0000` + phys | the kernel image ([`KERNEL_VMA`]; the boot tables map the first GiB here) |
//!
//! The boot trampoline leaves an identity map of the first GiB; once the
//! direct map is up, [`drop_identity_map`] removes it, so a NULL or stray
//! low pointer faults.

use crate::arch;
use crate::sync::BootCell;
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use kmem::Region;

/// Where the kernel image is linked: physical address + this.
pub const KERNEL_VMA: usize = 0xffff_ffff_8000_0000;
/// Where physical address 0 appears in the direct map.
pub const DIRECT_MAP_BASE: usize = 0xffff_8880_0000_0000;
/// Start of the vmalloc space.
pub const VMALLOC_START: usize = 0xffff_c900_0000_0000;

/// Present.
pub const PTE_P: u64 = 1 << 0;
/// Writable.
pub const PTE_W: u64 = 1 << 1;
/// Page size: a 2 MiB (PD) or 1 GiB (PDPT) leaf.
pub const PTE_PS: u64 = 1 << 7;
/// Global: survives CR3 reloads.
pub const PTE_G: u64 = 1 << 8;
/// No-execute (only with EFER.NXE).
pub const PTE_NX: u64 = 1 << 63;
/// The physical-address bits of an entry.
pub const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;

const HUGE: u64 = 2 << 20;
const GIB: u64 = 1 << 30;

/// One 4 KiB page table.
#[repr(C, align(4096))]
pub struct Table(pub [u64; 512]);

/// Static tables for the direct map: one PDPT and one page directory per
/// GiB of physical space that holds RAM.
const POOL_TABLES: usize = 33;
static POOL: BootCell<[Table; POOL_TABLES]> =
    BootCell::new([const { Table([0; 512]) }; POOL_TABLES]);
static POOL_USED: AtomicUsize = AtomicUsize::new(0);

/// The direct map reaches this far: physical memory above is not mapped and
/// not handed to kmem.
pub const DIRECT_MAP_LIMIT: u64 = (POOL_TABLES as u64 - 1) * GIB;

/// The direct-map address of a physical address.
#[inline(always)]
pub fn phys_to_virt(pa: u64) -> usize {
    DIRECT_MAP_BASE + pa as usize
}

/// The physical address of a kernel static (linked at `KERNEL_VMA` + phys).
fn kernel_phys<T>(p: *const T) -> u64 {
    (p as usize - KERNEL_VMA) as u64
}

/// True once EFER.NXE is on (the trampoline sets it when the CPU has NX).
pub fn nx_enabled() -> bool {
    arch::rdmsr(arch::MSR_EFER) & arch::EFER_NXE != 0
}

fn pool_table() -> *mut Table {
    let i = POOL_USED.fetch_add(1, Relaxed);
    assert!(i < POOL_TABLES, "direct-map table pool exhausted");
    // SAFETY: index in bounds; each table is handed out once.
    unsafe { (POOL.get() as *mut Table).add(i) }
}

/// What [`build_direct_map`] did.
pub struct DirectMapInfo {
    /// 2 MiB mappings made.
    pub huge_pages: usize,
    /// Page directories used.
    pub page_directories: usize,
    /// Entries carry the no-execute bit.
    pub nx: bool,
}

/// The running PML4, reached through `via` (the kernel-image alias before
/// the direct map exists, the direct map after).
fn pml4(via: usize) -> *mut u64 {
    (via + (arch::read_cr3() & PTE_ADDR) as usize) as *mut u64
}

/// Maps every 2 MiB chunk that overlaps one of `regions` at
/// [`DIRECT_MAP_BASE`] + its physical address: read-write, global,
/// no-execute. Regions must lie below [`DIRECT_MAP_LIMIT`].
pub fn build_direct_map(regions: &[Region]) -> DirectMapInfo {
    let nx = if nx_enabled() { PTE_NX } else { 0 };
    let pdpt = pool_table();
    let mut info = DirectMapInfo {
        huge_pages: 0,
        page_directories: 0,
        nx: nx != 0,
    };
    let mut last_chunk = u64::MAX;
    for r in regions {
        assert!(r.end.0 <= DIRECT_MAP_LIMIT, "region beyond the direct map");
        let mut c = r.start.0 & !(HUGE - 1);
        while c < r.end.0 {
            if c != last_chunk {
                let gib = (c / GIB) as usize;
                // SAFETY: pool tables are kernel statics, reachable through
                // the kernel image mapping; nothing else uses them yet.
                unsafe {
                    let e = &mut (*pdpt).0[gib];
                    if *e & PTE_P == 0 {
                        *e = kernel_phys(pool_table()) | PTE_P | PTE_W;
                        info.page_directories += 1;
                    }
                    let pd = (KERNEL_VMA + (*e & PTE_ADDR) as usize) as *mut Table;
                    let slot = &mut (*pd).0[((c >> 21) & 511) as usize];
                    if *slot == 0 {
                        *slot = c | PTE_P | PTE_W | PTE_PS | PTE_G | nx;
                        info.huge_pages += 1;
                    }
                }
                last_chunk = c;
            }
            c += HUGE;
        }
    }
    let idx = (DIRECT_MAP_BASE >> 39) & 511;
    // SAFETY: the boot PML4 lies in the kernel image (first GiB), mapped at
    // KERNEL_VMA; the new entry points at a fully built PDPT.
    unsafe {
        *pml4(KERNEL_VMA).add(idx) = kernel_phys(pdpt) | PTE_P | PTE_W;
        arch::write_cr3(arch::read_cr3());
    }
    info
}

/// Removes the boot identity map of the first GiB.
pub fn drop_identity_map() {
    // SAFETY: nothing runs from or points into the identity map any more:
    // the code, stack, GDT and IDT are all in the higher half.
    unsafe {
        *pml4(DIRECT_MAP_BASE) = 0;
        arch::write_cr3(arch::read_cr3());
    }
}

/// The table behind an entry, through the direct map.
fn next_table(entry: u64) -> *mut u64 {
    phys_to_virt(entry & PTE_ADDR) as *mut u64
}

fn index(va: usize, level: u32) -> usize {
    (va >> (12 + 9 * (level - 1))) & 511
}

/// Where `va` leads, walking the live tables as the CPU would.
pub fn translate(va: usize) -> Option<u64> {
    let mut table = pml4(DIRECT_MAP_BASE);
    for level in [4, 3, 2, 1] {
        // SAFETY: walks live tables through the direct map.
        let e = unsafe { *table.add(index(va, level)) };
        if e & PTE_P == 0 {
            return None;
        }
        if level == 1 || e & PTE_PS != 0 {
            let span = 1usize << (12 + 9 * (level - 1));
            return Some((e & PTE_ADDR & !(span as u64 - 1)) + (va & (span - 1)) as u64);
        }
        table = next_table(e);
    }
    None
}

/// Points the live PML4 slot that covers `va` at the same next-level table
/// as `entry` (a PML4 entry of kmem's [`kmem::paging::X86PageTables`]), so
/// the CPU walks kmem's tables for that 512 GiB slice: Linux's way of
/// sharing the kernel's vmalloc tables between page-table roots.
pub fn link_pml4_slot(va: usize, entry: u64) {
    // SAFETY: the slot is unused by the boot tables (asserted), and `entry`
    // points at a live, zero-initialised-or-filled kmem table.
    unsafe {
        let slot = pml4(DIRECT_MAP_BASE).add(index(va, 4));
        assert!(
            *slot == 0 || *slot == entry,
            "PML4 slot of {va:#x} already in use"
        );
        *slot = entry;
    }
}

/// Undoes [`link_pml4_slot`] and flushes the whole TLB, global entries
/// included, so nothing cached still leads into the unlinked tables.
pub fn unlink_pml4_slot(va: usize) {
    // SAFETY: clearing a slot this kernel linked; the flush follows.
    unsafe { *pml4(DIRECT_MAP_BASE).add(index(va, 4)) = 0 };
    arch::flush_tlb_all();
}
