//! The bare-metal example's firmware map conversion
//! (`examples/baremetal/src/memmap.rs`, compiled here on the host): a
//! non-RAM e820 entry that overlaps a RAM entry is never handed out as
//! usable (found in review: the entry that started first won, whatever its
//! type, so ACPI NVS or firmware-reserved memory inside RAM went to kmem),
//! and random tables keep exactly the free RAM.

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

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random e820 tables (unsorted, overlapping, adjacent; some beyond the
/// limit): the map validates, no byte covered by a non-RAM entry or a
/// carve is usable, and every RAM byte below the limit covered by nothing
/// else is usable (no RAM lost).
#[test]
fn random_e820_tables_keep_exactly_the_free_ram() {
    let page = 0x1000u64;
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let limit = 64 * page;
    for iter in 0..20000 {
        let n = 1 + rng.below(8) as usize;
        let mut t = Vec::new();
        for _ in 0..n {
            let a = rng.below(80) * page / if rng.below(4) == 0 { 2 } else { 1 };
            let len = (1 + rng.below(20)) * page;
            let kind = [1u32, 1, 1, 2, 3, 4, 5][rng.below(7) as usize];
            t.push(e(a, a + len, kind));
        }
        let carve = [(0u64, page), (rng.below(60) * page, 0)];
        let carve = [
            carve[0],
            (carve[1].0, carve[1].0 + (1 + rng.below(4)) * page),
        ];
        let map = memmap::from_e820(&t, &carve, limit);
        let r = map.regions();
        let has_usable = r
            .iter()
            .any(|x| x.kind == RegionKind::Usable && x.pfns().1 .0 > x.pfns().0 .0);
        if has_usable {
            kmem::page::memmap::validate(r, 1)
                .unwrap_or_else(|err| panic!("iter {iter}: {err:?}\n{t:?}\n{r:?}"));
        }
        // Check at half-page granularity.
        let step = page / 2;
        let mut x = 0;
        while x < 100 * page {
            let covers = |lo: u64, hi: u64| lo <= x && x + step <= hi;
            let ram = t
                .iter()
                .any(|en| en.kind == 1 && covers(en.addr, en.addr + en.size));
            let non_ram = t
                .iter()
                .any(|en| en.kind != 1 && en.addr < x + step && x < en.addr + en.size);
            let carved = carve.iter().any(|&(a, b)| a < x + step && x < b);
            let usable = r
                .iter()
                .any(|g| g.kind == RegionKind::Usable && g.start.0 < x + step && x < g.end.0);
            if usable {
                assert!(
                    ram && !non_ram && !carved && x + step <= limit,
                    "iter {iter}: [{x:#x}+{step:#x}) usable but ram={ram} non_ram={non_ram} carved={carved}\n{t:?}\ncarve {carve:?}\n{r:?}"
                );
            }
            if ram && !non_ram && !carved && x + step <= limit {
                assert!(
                    usable,
                    "iter {iter}: free RAM [{x:#x}+{step:#x}) lost\n{t:?}\ncarve {carve:?}\n{r:?}"
                );
            }
            x += step;
        }
    }
}
