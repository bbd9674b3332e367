//! /proc outputs against Linux, found wanting in review: an empty zone
//! protects nothing (zoneinfo's `protection:` all zeros), pagetypeinfo
//! counts the first pageblock of a zone that starts inside one, and
//! `VmallocTotal` is x86-64's (an inclusive end: one byte under the range).

use kmem::addr::PhysAddr;
use kmem::page::memmap::{Region, RegionKind};
use kmem_host::{Machine, MachineConfig};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn region(start: u64, end: u64, node: u8) -> Region {
    Region {
        start: PhysAddr(start),
        end: PhysAddr(end),
        kind: RegionKind::Usable,
        node,
    }
}

fn machine_regions(regions: Vec<Region>, cpus: usize) -> Machine {
    Machine::new(MachineConfig {
        regions: Some(regions),
        nr_cpus: cpus,
        ..Default::default()
    })
    .unwrap()
}

fn text<F: FnOnce(&mut String) -> std::fmt::Result>(f: F) -> String {
    let mut s = String::new();
    f(&mut s).unwrap();
    s
}

/// Sum of pages over buddyinfo lines, per line: (node, zone, pages).
#[test]
fn zoneinfo_empty_zone_has_zero_protection() {
    // Only Normal memory: DMA and DMA32 are empty.
    let m = machine_regions(vec![region(4 * GIB, 4 * GIB + 256 * MIB, 0)], 2);
    let zi = text(|s| kmem::procfs::zoneinfo(m.pages(), s));
    for zone in ["DMA", "DMA32"] {
        let head = format!("Node 0, zone {zone:>8}\n");
        let block = &zi[zi.find(&head).unwrap()..];
        let prot = block.lines().find(|l| l.contains("protection:")).unwrap();
        assert_eq!(
            prot, "        protection: (0, 0, 0, 0, 0)",
            "zone {zone}:\n{zi}"
        );
    }
}

/// Same, for the empty DMA/DMA32 zones of a second node.
#[test]
fn zoneinfo_empty_zone_of_second_node_has_zero_protection() {
    let m = machine_regions(
        vec![
            region(0x1000, 512 * MIB, 0),
            region(4 * GIB, 4 * GIB + 256 * MIB, 0),
            region(4 * GIB + 256 * MIB, 4 * GIB + 512 * MIB, 1),
        ],
        2,
    );
    let zi = text(|s| kmem::procfs::zoneinfo(m.pages(), s));
    let head = "Node 1, zone      DMA\n";
    let block = &zi[zi.find(head).unwrap()..];
    let prot = block.lines().find(|l| l.contains("protection:")).unwrap();
    assert_eq!(prot, "        protection: (0, 0, 0, 0, 0)", "{zi}");
}

/// Linux's `pagetypeinfo_showblockcount` walks a zone's pageblocks from
/// `zone_start_pfn` in steps of `pageblock_nr_pages`, so a zone spanning
/// pfns 1..4096 has 8 pageblocks. kmem starts at the aligned-down pfn 0;
/// when pfn 0 has no RAM (an unlisted hole) the first block is skipped,
/// though 511 of its pages are free in the zone.
#[test]
fn pagetypeinfo_counts_first_pageblock_of_unaligned_zone() {
    let m = machine_regions(
        vec![
            region(0x1000, 512 * MIB, 0),
            region(4 * GIB, 4 * GIB + 256 * MIB, 0),
        ],
        2,
    );
    let pt = text(|s| kmem::procfs::pagetypeinfo(m.pages(), s));
    let tail = &pt[pt.find("Number of blocks type").unwrap()..];
    let dma = tail
        .lines()
        .find(|l| l.starts_with("Node 0, zone      DMA "))
        .unwrap();
    let blocks: u64 = dma["Node 0, zone      DMA ".len()..]
        .split_whitespace()
        .map(|n| n.parse::<u64>().unwrap())
        .sum();
    let free = m.pages().zone(0, kmem::gfp::ZoneType::Dma).free_pages() as u64;
    assert!(
        blocks * 512 >= free,
        "{blocks} pageblocks cannot hold {free} free pages:\n{pt}"
    );
    assert_eq!(blocks, 8, "{pt}");
}

/// Linux x86-64: `VMALLOC_END` is inclusive (`VMALLOC_START +
/// (VMALLOC_SIZE_TB << 40) - 1`) and `VMALLOC_TOTAL = VMALLOC_END -
/// VMALLOC_START`, so meminfo says 34359738367 kB (shared/traces/*/before.meminfo).
#[test]
fn meminfo_vmalloctotal_matches_linux_x86_64() {
    let m = Machine::default_machine().unwrap();
    let vm = kmem_host::vmap::in_memory(&m).unwrap();
    let mut mi = String::new();
    vm.meminfo(&mut mi).unwrap();
    let real = std::fs::read_to_string("/work/shared/traces/build/before.meminfo").unwrap();
    let want = real
        .lines()
        .find(|l| l.starts_with("VmallocTotal:"))
        .unwrap();
    let got = mi.lines().find(|l| l.starts_with("VmallocTotal:")).unwrap();
    assert_eq!(got, want);
}

/// The zoneinfo snapshot of the shared build trace (Linux 6.18).
fn build_zoneinfo_snapshot() -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/traces/build/before.zoneinfo"),
    )
    .expect("the shared build trace's zoneinfo snapshot")
}

/// The default layout with 2 GiB on 2 CPUs: DMA, DMA32 and Normal populated.
fn two_gib_machine() -> Machine {
    Machine::new(MachineConfig {
        ram_bytes: 2 * GIB,
        nr_cpus: 2,
        ..Default::default()
    })
    .unwrap()
}

/// zoneinfo lists the zones Linux lists, in its order (DMA, DMA32, Normal,
/// then the empty Movable and Device blocks the protection line's last two
/// columns stand for), and a `vm stats threshold` line after each CPU's
/// pageset, as the shared snapshots show.
#[test]
fn zoneinfo_has_linux_zone_blocks_and_thresholds() {
    let snap = build_zoneinfo_snapshot();
    let headers = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| l.starts_with("Node 0,"))
            .map(str::to_string)
            .collect()
    };
    let m = two_gib_machine();
    let z = text(|s| kmem::procfs::zoneinfo(m.pages(), s));
    assert_eq!(headers(&z), headers(&snap), "{z}");
    for l in z.lines().filter(|l| l.contains("protection:")) {
        assert_eq!(l.matches(',').count(), 4, "{l}");
    }
    let cpus = z
        .lines()
        .filter(|l| l.trim_start().starts_with("cpu:"))
        .count();
    let thresholds: Vec<&str> = z
        .lines()
        .filter(|l| l.starts_with("  vm stats threshold: "))
        .collect();
    assert!(cpus > 0);
    assert_eq!(thresholds.len(), cpus, "{z}");
    // The DMA zone (under 128 MiB) on 2 CPUs: 2 * fls(2) * (1 + fls(0)) = 4,
    // as in the snapshot.
    assert_eq!(thresholds[0], "  vm stats threshold: 4");
}

/// Every watermark and pageset line Linux 6.18 prints in a zone block is
/// there, in Linux's order and spelling: `promo` after `high` (Linux 6.1
/// on), `high_min` / `high_max` after each CPU's `batch` (6.7 on); kmem
/// printed neither. The per-node stats and the zone `nr_*`/`numa_*`
/// counters are left out (procfs.rs says so) and so are not compared.
#[test]
fn zoneinfo_zone_block_fields_match_the_snapshot() {
    let snap = build_zoneinfo_snapshot();
    // The field names of the first zone block (DMA), counters left out.
    let fields = |s: &str| -> Vec<String> {
        let block = s.split("Node 0, zone    DMA32").next().unwrap();
        block
            .split("zone      DMA")
            .nth(1)
            .unwrap()
            .lines()
            .filter(|l| {
                l.starts_with("        ") || l.starts_with("  ") && !l.starts_with("      ")
            })
            .filter_map(|l| {
                let t = l.trim_start();
                let name = t.split([' ', ':']).next()?;
                (!name.is_empty()).then(|| name.to_string())
            })
            .filter(|n| !n.starts_with("nr_") && !n.starts_with("numa_") && n != "per-node")
            .collect()
    };
    let m = two_gib_machine();
    let z = text(|s| kmem::procfs::zoneinfo(m.pages(), s));
    assert_eq!(fields(&z), fields(&snap), "{z}");
    let want = ["high", "promo", "spanned"];
    let f = fields(&z);
    assert!(f.windows(3).any(|w| w == want), "{f:?}");
    for needle in ["              high_min: ", "              high_max: "] {
        assert_eq!(
            z.lines().filter(|l| l.starts_with(needle)).count(),
            snap.lines().filter(|l| l.starts_with(needle)).count(),
            "{needle}"
        );
    }
}
