//! Edge cases of the x86-64 page tables found in review: the last page of
//! the address space (map, unmap, a TLB flush while it is cached), ranges
//! that wrap past the top, non-canonical ranges given to unmap_range and
//! free_empty_tables (they must not alias the kernel half), and physical
//! addresses beyond the 52 bits an entry holds (refused, not cut short).

use kmem::addr::{PhysAddr, VirtAddr, PAGE_SIZE};
use kmem::gfp::GFP_KERNEL;
use kmem::paging::{PageSize, PageTables, PteFlags, Tlb, TlbConfig, X86PageTables};
use kmem_host::{Machine, MachineConfig};

const VMALLOC_START: usize = 0xffff_c900_0000_0000;
const TOP_PAGE: usize = 0xffff_ffff_ffff_f000;

fn machine() -> Machine {
    Machine::new(MachineConfig {
        ram_bytes: 64 << 20,
        ..Default::default()
    })
    .unwrap()
}

/// Unmapping the last page of the address space must work (it maps fine).
#[test]
fn unmap_top_page() {
    let m = machine();
    let pt = X86PageTables::new(m.pages()).unwrap();
    let f = m.pages().alloc_pages(GFP_KERNEL, 0).unwrap();
    pt.map(
        VirtAddr(TOP_PAGE),
        f.phys(),
        PageSize::Size4K,
        PteFlags::KERNEL,
        GFP_KERNEL,
    )
    .unwrap()
    .ignore();
    let (t, fl) = pt.unmap(VirtAddr(TOP_PAGE)).unwrap();
    fl.flush();
    assert_eq!(t.frame, f.phys());
}

/// map_range of the last page must work like map does.
#[test]
fn map_range_top_page() {
    let m = machine();
    let pt = X86PageTables::new(m.pages()).unwrap();
    let f = m.pages().alloc_pages(GFP_KERNEL, 0).unwrap();
    let r = pt.map_range(
        VirtAddr(TOP_PAGE),
        &[f],
        PageSize::Size4K,
        PteFlags::KERNEL,
        GFP_KERNEL,
    );
    let fl = r.expect("map_range of the top page");
    let (s, e) = fl.range();
    fl.ignore();
    assert!(e > s, "flush range for the top page is empty: {s}..{e}");
}

/// A range that wraps past the top must be refused with an error, not panic
/// and not map page 0.
#[test]
fn map_range_wraps() {
    let m = machine();
    let pt = X86PageTables::new(m.pages()).unwrap();
    let fr: Vec<_> = (0..3)
        .map(|_| m.pages().alloc_pages(GFP_KERNEL, 0).unwrap())
        .collect();
    let r = pt.map_range(
        VirtAddr(TOP_PAGE - PAGE_SIZE),
        &fr,
        PageSize::Size4K,
        PteFlags::KERNEL,
        GFP_KERNEL,
    );
    assert!(r.is_err(), "wrapping range accepted");
    assert!(pt.translate(VirtAddr(0)).is_err(), "page 0 got mapped");
}

/// unmap_range over a non-canonical address must not touch the kernel
/// mapping it aliases to (bits 63..48 ignored by the index).
#[test]
fn unmap_range_noncanonical_aliases_kernel_half() {
    let m = machine();
    let pt = X86PageTables::new(m.pages()).unwrap();
    let f = m.pages().alloc_pages(GFP_KERNEL, 0).unwrap();
    let va = VirtAddr(VMALLOC_START);
    pt.map(va, f.phys(), PageSize::Size4K, PteFlags::KERNEL, GFP_KERNEL)
        .unwrap()
        .ignore();
    let alias = VMALLOC_START & 0x0000_ffff_ffff_ffff; // 0x0000_c900_0000_0000: non-canonical
    let mut seen = Vec::new();
    pt.unmap_range(
        VirtAddr(alias),
        VirtAddr(alias + PAGE_SIZE),
        &mut |v, p, _| seen.push((v, p)),
    )
    .ignore();
    assert!(
        seen.is_empty(),
        "leaves reported for a non-canonical range: {seen:?}"
    );
    assert_eq!(
        pt.translate(va).unwrap().frame,
        f.phys(),
        "kernel mapping lost"
    );
}

/// free_empty_tables over a non-canonical range frees tables of the kernel half.
#[test]
fn free_empty_tables_noncanonical_aliases() {
    let m = machine();
    let pt = X86PageTables::new(m.pages()).unwrap();
    let f = m.pages().alloc_pages(GFP_KERNEL, 0).unwrap();
    let va = VirtAddr(VMALLOC_START);
    pt.map(va, f.phys(), PageSize::Size4K, PteFlags::KERNEL, GFP_KERNEL)
        .unwrap()
        .ignore();
    pt.unmap(va).unwrap().1.flush();
    let alias = VMALLOC_START & 0x0000_ffff_ffff_ffff;
    let n = pt.free_empty_tables(VirtAddr(alias), VirtAddr(alias + PAGE_SIZE));
    assert_eq!(
        n, 0,
        "freed kernel-half tables through a non-canonical range"
    );
}

/// A physical address above 52 bits must be refused, not truncated.
#[test]
fn map_pa_beyond_52_bits() {
    let m = machine();
    let pt = X86PageTables::new(m.pages()).unwrap();
    let va = VirtAddr(VMALLOC_START);
    let r = pt.map(
        va,
        PhysAddr(1 << 52),
        PageSize::Size4K,
        PteFlags::KERNEL,
        GFP_KERNEL,
    );
    match r {
        Err(_) => {}
        Ok(fl) => {
            fl.ignore();
            let t = pt.translate(va).unwrap();
            panic!("accepted pa 1<<52; translates to {}", t.pa);
        }
    }
}

/// Flushing with the top page cached in a TLB model must not panic.
#[test]
fn tlb_flush_with_top_page_cached() {
    let m = machine();
    let tlbs: Vec<parking_lot::lock_api::Mutex<parking_lot::RawMutex, Tlb>> =
        vec![parking_lot::lock_api::Mutex::new(
            Tlb::new(TlbConfig::GOLDEN_COVE).unwrap(),
        )];
    let mut pt = X86PageTables::new(m.pages()).unwrap();
    pt.set_tlbs(&tlbs);
    let f = m.pages().alloc_pages(GFP_KERNEL, 0).unwrap();
    pt.map(
        VirtAddr(TOP_PAGE),
        f.phys(),
        PageSize::Size4K,
        PteFlags::KERNEL,
        GFP_KERNEL,
    )
    .unwrap()
    .ignore();
    assert!(pt.access(VirtAddr(TOP_PAGE)).is_some());
    pt.flush_all();
    assert!(tlbs[0].lock().is_empty());
}
