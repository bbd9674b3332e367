//! `Ram`: the direct map really is a view of the memfd, holes are not backed,
//! and memory above 4 GiB works.

use kmem::addr::{PhysAddr, PAGE_SIZE};
use kmem::page::memmap::Region;
use kmem_host::Ram;
use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};
use std::ffi::c_void;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A second, independent read-write mapping of one page of the memfd.
struct MemfdView {
    ptr: *mut u8,
}

impl MemfdView {
    fn new(ram: &Ram, pa: PhysAddr) -> MemfdView {
        let page = PAGE_SIZE as u64;
        let off = ram
            .memfd_offset(PhysAddr(pa.0 & !(page - 1)))
            .expect("backed page");
        // SAFETY: a fresh shared mapping of our own memfd at a kernel-chosen address.
        let ptr = unsafe {
            mmap(
                std::ptr::null_mut(),
                PAGE_SIZE,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                ram.fd(),
                off,
            )
            .unwrap()
        };
        MemfdView { ptr: ptr.cast() }
    }
    fn byte(&self, pa: PhysAddr) -> *mut u8 {
        self.ptr.wrapping_add(pa.page_offset())
    }
}

impl Drop for MemfdView {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the page mapped in `new`.
        unsafe { munmap(self.ptr as *mut c_void, PAGE_SIZE).unwrap() };
    }
}

/// Writes through the direct map, reads through the memfd, and the reverse.
fn round_trip(ram: &Ram, pa: PhysAddr, value: u8) {
    assert!(ram.is_backed(pa), "{pa} should be backed");
    let direct = ram.phys_to_virt(pa);
    assert_eq!(direct as usize, ram.direct_map_offset() + pa.0 as usize);
    let view = MemfdView::new(ram, pa);
    // SAFETY: `pa` is backed, so both addresses are mapped read-write.
    unsafe {
        direct.write_volatile(value);
        assert_eq!(view.byte(pa).read_volatile(), value, "memfd view of {pa}");
        view.byte(pa).write_volatile(!value);
        assert_eq!(direct.read_volatile(), !value, "direct map of {pa}");
    }
}

#[test]
fn direct_map_is_a_view_of_the_memfd() {
    let regions = kmem::page::memmap::pc_layout(64 * MIB);
    let ram = Ram::new(&regions).unwrap();
    assert_eq!(
        ram.direct_map_offset() % (2 << 20),
        0,
        "direct map is 2 MiB aligned"
    );
    assert_eq!(ram.regions(), &regions[..]);
    for pa in [
        0x1000,
        0x2345,
        0x9e000 + 17,
        MIB,
        8 * MIB + 3,
        regions[3].end.0 - 1,
    ] {
        round_trip(&ram, PhysAddr(pa), (pa as u8) ^ 0x5a);
    }
}

#[test]
fn distinct_pages_live_at_distinct_memfd_offsets() {
    let regions = [
        Region::usable(0x1000, 0x9f000),
        Region::usable(MIB, 16 * MIB),
    ];
    let ram = Ram::new(&regions).unwrap();
    // Packed back to back in address order.
    assert_eq!(ram.memfd_offset(PhysAddr(0x1000)), Some(0));
    assert_eq!(ram.memfd_offset(PhysAddr(0x9e000)), Some(0x9d000));
    assert_eq!(ram.memfd_offset(PhysAddr(MIB)), Some(0x9e000));
    assert_eq!(ram.memfd_offset(PhysAddr(MIB + 5)), Some(0x9e005));
    assert_eq!(ram.total_bytes(), 0x9e000 + 15 * MIB);
    // Two physical pages, two different bytes, each seen in its own memfd page.
    round_trip(&ram, PhysAddr(0x5000), 1);
    round_trip(&ram, PhysAddr(2 * MIB), 2);
    // SAFETY: both are backed.
    unsafe {
        assert_eq!(ram.phys_to_virt(PhysAddr(0x5000)).read(), !1);
        assert_eq!(ram.phys_to_virt(PhysAddr(2 * MIB)).read(), !2);
    }
}

#[test]
fn holes_are_not_backed() {
    let regions = kmem::page::memmap::pc_layout(GIB);
    let ram = Ram::new(&regions).unwrap();
    let top_of_low = regions[3].end.0;
    // The PCI hole between low RAM and 4 GiB, and beyond the end of RAM.
    for pa in [
        top_of_low,
        top_of_low + 4096,
        3 * GIB,
        4 * GIB - 1,
        ram.max_phys(),
        ram.max_phys() + MIB,
    ] {
        assert!(!ram.is_backed(PhysAddr(pa)), "{pa:#x} is in a hole");
        assert_eq!(ram.memfd_offset(PhysAddr(pa)), None);
    }
    // Reserved ranges exist (firmware lives there), so they are backed.
    assert!(ram.is_backed(PhysAddr(0)));
    assert!(ram.is_backed(PhysAddr(0xa0000)));
    // Backing is exactly the listed regions.
    let listed: u64 = regions.iter().map(|r| r.len()).sum();
    assert_eq!(ram.total_bytes(), listed);
    let backed: u64 = ram.backed_ranges().map(|(a, b)| b.0 - a.0).sum();
    assert_eq!(backed, listed);
}

#[test]
fn partial_frames_at_region_edges_are_not_backed() {
    let ram = Ram::new(&[Region::usable(0x1800, 0x4800)]).unwrap();
    assert!(!ram.is_backed(PhysAddr(0x1800)));
    assert!(ram.is_backed(PhysAddr(0x2000)));
    assert!(ram.is_backed(PhysAddr(0x3fff)));
    assert!(!ram.is_backed(PhysAddr(0x4000)));
    assert_eq!(ram.total_bytes(), 0x2000);
    round_trip(&ram, PhysAddr(0x3abc), 9);
}

#[test]
fn memory_above_4_gib_works() {
    let regions = [
        Region::usable(0x1000, 16 * MIB),
        Region::reserved(16 * MIB, 17 * MIB),
        Region::usable(4 * GIB, 4 * GIB + 8 * MIB),
        Region::usable(6 * GIB, 6 * GIB + 2 * MIB),
    ];
    let ram = Ram::new(&regions).unwrap();
    assert_eq!(ram.max_phys(), 6 * GIB + 2 * MIB);
    assert!(ram.direct_map_len() as u64 >= ram.max_phys());
    assert!(!ram.is_backed(PhysAddr(5 * GIB)));
    assert_eq!(
        ram.memfd_offset(PhysAddr(4 * GIB)),
        Some(16 * MIB - 0x1000 + MIB)
    );
    round_trip(&ram, PhysAddr(4 * GIB), 0x11);
    round_trip(&ram, PhysAddr(4 * GIB + 8 * MIB - 1), 0x22);
    round_trip(&ram, PhysAddr(6 * GIB + 12345), 0x33);
}

#[test]
fn regions_may_come_unsorted_but_not_overlapping() {
    let ram = Ram::new(&[
        Region::usable(4 * GIB, 4 * GIB + MIB),
        Region::usable(0x1000, MIB),
    ])
    .unwrap();
    assert_eq!(ram.memfd_offset(PhysAddr(0x1000)), Some(0));
    round_trip(&ram, PhysAddr(4 * GIB + 7), 7);

    let err = Ram::new(&[Region::usable(0, 2 * MIB), Region::reserved(MIB, 3 * MIB)]).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn ram_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Ram>();
    let ram = std::sync::Arc::new(Ram::new(&[Region::usable(0, 4 * MIB)]).unwrap());
    let r = ram.clone();
    std::thread::spawn(move || round_trip(&r, PhysAddr(MIB), 3))
        .join()
        .unwrap();
    // SAFETY: backed.
    assert_eq!(unsafe { ram.phys_to_virt(PhysAddr(MIB)).read() }, !3);
}
