//! Dropping a `Ram` unmaps its whole direct map. Alone in its own test binary,
//! so no other test maps memory into the range between drop and check.

use kmem::page::memmap::Region;
use kmem_host::Ram;

/// True if any mapping in /proc/self/maps overlaps `[start, end)`.
fn mapped(start: usize, end: usize) -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines().any(|line| {
        let range = line.split_whitespace().next().unwrap();
        let (a, b) = range.split_once('-').unwrap();
        let a = usize::from_str_radix(a, 16).unwrap();
        let b = usize::from_str_radix(b, 16).unwrap();
        a < end && start < b
    })
}

#[test]
fn drop_unmaps_the_direct_map() {
    let ram = Ram::new(&[
        Region::usable(0x1000, 8 << 20),
        Region::usable(1 << 32, (1 << 32) + (4 << 20)),
    ])
    .unwrap();
    let (start, end) = (
        ram.direct_map_offset(),
        ram.direct_map_offset() + ram.direct_map_len(),
    );
    assert!(mapped(start, end));
    assert!(mapped(start + 0x1000, start + 0x2000), "low RAM is mapped");
    drop(ram);
    assert!(!mapped(start, end), "direct map still mapped after drop");
}
