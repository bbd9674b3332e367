//! Shared by the `slab_*` tests: a random stream for threads, the machine,
//! allocator and consistency check of the bad-input tests, and the sheaf
//! block count of the sheaf and barn tests. Each
//! test crate pulls this in with `mod slab_common;` and uses part of it,
//! hence the `dead_code` allowance.

#![allow(dead_code)]

use kmem::addr::Pfn;
use kmem::gfp::GFP_KERNEL;
use kmem::page::memmap::Region;
use kmem::page::FrameState;
use kmem::slab::{SlabAllocator, SlabConfig, OWNER_SHEAF, SHEAF_ORDER};
use kmem_host::{HostPlatform, Machine, MachineConfig};
use std::collections::HashSet;

/// A xorshift64 stream: deterministic per seed, cheap enough to call on
/// every operation of a worker thread. The seed must not be 0.
pub struct Rng(pub u64);

impl Rng {
    /// The next value.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A value in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A 128 MiB default machine.
pub fn machine() -> Machine {
    Machine::new(MachineConfig {
        ram_bytes: 128 << 20,
        ..Default::default()
    })
    .unwrap()
}

/// A machine of `ram` bytes (PC layout) and 2 CPUs.
pub fn machine_of(ram: u64) -> Machine {
    Machine::new(MachineConfig {
        ram_bytes: ram,
        nr_cpus: 2,
        ..Default::default()
    })
    .unwrap()
}

/// Sheaf blocks currently allocated (head frames tagged `OWNER_SHEAF`).
pub fn sheaf_blocks(m: &Machine) -> usize {
    let pages = m.pages();
    let mut n = 0;
    let mut pfn = 0;
    while pfn < pages.max_pfn() {
        let Some(f) = pages.frame(Pfn(pfn)) else {
            pfn += 1;
            continue;
        };
        if f.state() == FrameState::Allocated && f.owner() == OWNER_SHEAF {
            assert_eq!(f.order(), SHEAF_ORDER, "a sheaf block has SHEAF_ORDER");
            n += 1;
            pfn += 1 << f.order();
        } else {
            pfn += 1;
        }
    }
    n
}

/// A slab allocator over `m` with `cfg`.
pub fn slab(m: &Machine, cfg: SlabConfig) -> SlabAllocator<'_, HostPlatform> {
    SlabAllocator::new(m.pages(), cfg).unwrap()
}

/// After a refused free: `n` kmalloc objects of `size` are all distinct and
/// usable (no object twice, nothing lost); they are freed again.
pub fn assert_consistent(s: &SlabAllocator<'_, HostPlatform>, size: usize, n: usize) {
    let mut seen = HashSet::new();
    let mut v = Vec::new();
    for _ in 0..n {
        let p = s.kmalloc(size, GFP_KERNEL).unwrap().as_ptr();
        assert!(seen.insert(p as usize), "object {p:p} handed out twice");
        // SAFETY: a live object of at least `size` bytes.
        unsafe { p.write_bytes(0x3c, size) };
        v.push(p);
    }
    for p in v {
        s.kfree(p).unwrap();
    }
}

/// A two-node machine, 2 CPUs: node 0 is 1..96 MiB, node 1 96..192 MiB.
pub fn two_nodes() -> Machine {
    const MIB: u64 = 1 << 20;
    Machine::new(MachineConfig {
        regions: Some(vec![
            Region::reserved(0, MIB),
            Region::usable(MIB, 96 * MIB),
            Region::usable(96 * MIB, 192 * MIB).on_node(1),
        ]),
        nr_cpus: 2,
        ..Default::default()
    })
    .expect("two-node machine builds")
}
