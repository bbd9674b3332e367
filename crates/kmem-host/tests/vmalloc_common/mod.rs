//! Shared by the `vmalloc_*` tests: machines, baselines, and the check that
//! a vmalloc pointer reaches exactly the frames the page tables name.

#![allow(dead_code)]

use kmem::addr::{VirtAddr, PAGE_SIZE};
use kmem::paging::PageTables;
use kmem::vmalloc::Vmalloc;
use kmem::Platform;
use kmem_host::{HostPlatform, Machine, MachineConfig};

pub const MIB: usize = 1 << 20;

/// A machine with `ram` bytes and `cpus` CPUs.
pub fn machine_with(ram: u64, cpus: usize) -> Machine {
    Machine::new(MachineConfig {
        ram_bytes: ram,
        nr_cpus: cpus,
        ..Default::default()
    })
    .expect("machine builds")
}

/// 256 MiB, 2 CPUs.
pub fn machine() -> Machine {
    machine_with(256 << 20, 2)
}

/// Free pages with every per-CPU list drained.
pub fn free_pages(m: &Machine) -> usize {
    m.pages().drain_all_pages();
    m.pages().nr_free_pages()
}

/// Writes a distinct pattern into every page of `[p, p + len)` through the
/// vmalloc address and reads it back through the direct map of the frame
/// the tables translate each page to (and the other way round).
pub fn check_mapping<B: PageTables>(vm: &Vmalloc<'_, HostPlatform, B>, p: *mut u8, len: usize) {
    let pages = vm.pages();
    for off in (0..len).step_by(PAGE_SIZE) {
        let va = p as usize + off;
        let t = vm
            .tables()
            .translate(VirtAddr(va))
            .unwrap_or_else(|e| panic!("{va:#x} not mapped: {e}"));
        let direct = pages.platform().phys_to_virt(t.pa).as_ptr::<u64>();
        let tag = 0xa5a5_0000_0000_0000u64 | va as u64;
        // SAFETY: both addresses map the same live page of the area.
        unsafe {
            (va as *mut u64).write_volatile(tag);
            assert_eq!(
                direct.read_volatile(),
                tag,
                "direct map sees vmalloc write at {va:#x}"
            );
            direct.write_volatile(!tag);
            assert_eq!(
                (va as *const u64).read_volatile(),
                !tag,
                "vmalloc sees direct write at {va:#x}"
            );
        }
        assert_eq!(vm.vmalloc_to_page(va as *const u8), Some(t.pa.pfn()));
    }
}

/// True if `va` has no translation (a guard page or freed range).
pub fn unmapped<B: PageTables>(vm: &Vmalloc<'_, HostPlatform, B>, va: usize) -> bool {
    vm.tables().translate(VirtAddr(va)).is_err()
}

/// The vmallocinfo text.
pub fn vmallocinfo<B: PageTables>(vm: &Vmalloc<'_, HostPlatform, B>) -> String {
    let mut s = String::new();
    vm.vmallocinfo(&mut s).unwrap();
    s
}

/// The vmallocinfo lines as (start, end, the rest of the line).
pub fn vmallocinfo_ranges<B: PageTables>(
    vm: &Vmalloc<'_, HostPlatform, B>,
) -> Vec<(usize, usize, String)> {
    let hex = |x: &str| usize::from_str_radix(x.trim_start_matches("0x"), 16).unwrap();
    vmallocinfo(vm)
        .lines()
        .map(|line| {
            let (range, rest) = line.split_once(' ').unwrap();
            let (s, e) = range.split_once('-').unwrap();
            (hex(s), hex(e), rest.trim_start().to_string())
        })
        .collect()
}
