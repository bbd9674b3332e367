//! The bare-metal example's firmware map conversion
//! (`examples/baremetal/src/memmap.rs`, compiled here on the host): a
//! non-RAM e820 entry that overlaps a RAM entry is never handed out as
//! usable (found in review: the entry that started first won, whatever its
//! type, so ACPI NVS or firmware-reserved memory inside RAM went to kmem).

#[allow(dead_code)]
mod boot {
    /// As the example's: the most e820 entries taken.
    pub const MAX_E820: usize = 128;

    /// As the example's `E820Entry` (the fields memmap.rs reads).
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct E820Entry {
        pub addr: u64,
        pub size: u64,
        pub kind: u32,
        pub reserved: u32,
    }
}

#[allow(dead_code)]
#[path = "../../../examples/baremetal/src/memmap.rs"]
mod memmap;

use boot::E820Entry;
use kmem::{Region, RegionKind};

fn e(addr: u64, end: u64, kind: u32) -> E820Entry {
    E820Entry {
        addr,
        size: end - addr,
        kind,
        reserved: 0,
    }
}

const LIMIT: u64 = 1 << 40;
const CARVE: [(u64, u64); 2] = [(0, 0x1000), (0x10_0000, 0x20_0000)];

fn usable_overlaps(regions: &[Region], lo: u64, hi: u64) -> bool {
    regions
        .iter()
        .any(|r| r.kind == RegionKind::Usable && r.start.0 < hi && lo < r.end.0)
}

#[test]
fn non_ram_inside_ram_is_never_usable() {
    let (lo, hi) = (0x3fe0_0000, 0x3ff0_0000);
    for kind in [2u32, 3, 4, 5, 7] {
        // The RAM entry first (it starts first), then the overlapping one;
        // and the other way round in the table.
        for table in [
            [e(0x10_0000, 0x4000_0000, 1), e(lo, hi, kind)],
            [e(lo, hi, kind), e(0x10_0000, 0x4000_0000, 1)],
        ] {
            let map = memmap::from_e820(&table, &CARVE, LIMIT);
            let r = map.regions();
            kmem::page::memmap::validate(r, 1).unwrap();
            assert!(
                !usable_overlaps(r, lo, hi),
                "type {kind} inside RAM handed out as usable: {r:?}"
            );
            // The RAM around it is still usable, the carve reserved.
            assert!(usable_overlaps(r, 0x20_0000, lo));
            assert!(usable_overlaps(r, hi, 0x4000_0000));
            assert!(!usable_overlaps(r, 0x10_0000, 0x20_0000));
            let reserved = r
                .iter()
                .any(|x| x.kind == RegionKind::Reserved && x.start.0 <= lo && hi <= x.end.0);
            // ACPI tables and NVS stay listed as reserved; others are holes.
            assert_eq!(reserved, kind == 3 || kind == 4, "type {kind}: {r:?}");
        }
    }
}
