//! Review probes for the /proc-style outputs.

use kmem::page::memmap::{Region, RegionKind};
use kmem::addr::PhysAddr;
use kmem_host::{Machine, MachineConfig};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn region(start: u64, end: u64, node: u8) -> Region {
    Region { start: PhysAddr(start), end: PhysAddr(end), kind: RegionKind::Usable, node }
}

fn machine_regions(regions: Vec<Region>, cpus: usize) -> Machine {
    Machine::new(MachineConfig { regions: Some(regions), nr_cpus: cpus, ..Default::default() }).unwrap()
}

fn all(m: &Machine) -> String {
    let mut s = String::new();
    s += "== buddyinfo\n";
    kmem::procfs::buddyinfo(m.pages(), &mut s).unwrap();
    s += "== pagetypeinfo\n";
    kmem::procfs::pagetypeinfo(m.pages(), &mut s).unwrap();
    s += "== zoneinfo\n";
    kmem::procfs::zoneinfo(m.pages(), &mut s).unwrap();
    s += "== meminfo\n";
    kmem::procfs::meminfo(m.pages(), &mut s).unwrap();
    s
}

#[test]
fn dump_default() {
    let m = Machine::default_machine().unwrap();
    std::fs::write("/tmp/rev/default.txt", all(&m)).unwrap();
}

#[test]
fn dump_two_nodes() {
    let m = machine_regions(vec![region(0x1000, 512 * MIB, 0), region(4 * GIB, 4 * GIB + 256 * MIB, 0), region(4 * GIB + 256 * MIB, 4 * GIB + 512 * MIB, 1)], 2);
    std::fs::write("/tmp/rev/two_nodes.txt", all(&m)).unwrap();
}

#[test]
fn dump_dma32_only() {
    let m = machine_regions(vec![region(0x1000, 0x9f000, 0), region(MIB, 256 * MIB, 0)], 2);
    std::fs::write("/tmp/rev/dma32_only.txt", all(&m)).unwrap();
}

#[test]
fn dump_normal_only() {
    let m = machine_regions(vec![region(4 * GIB, 4 * GIB + 256 * MIB, 0)], 2);
    std::fs::write("/tmp/rev/normal_only.txt", all(&m)).unwrap();
}
