//! Shared by the `dma_*` tests: machines with RAM on both sides of 4 GiB,
//! a small bounce pool, and helpers to read what a device wrote.

#![allow(dead_code)]

use kmem::dma::{pattern_byte, Dma, DmaConfig};
use kmem::page::memmap::Region;
use kmem_host::{Machine, MachineConfig};

pub const KIB: usize = 1 << 10;
pub const MIB: usize = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// 256 MiB in the PC layout: 128 MiB below 4 GiB (DMA and DMA32), 128 MiB
/// above (Normal), 2 CPUs.
pub fn machine() -> Machine {
    Machine::new(MachineConfig {
        ram_bytes: 256 << 20,
        ..Default::default()
    })
    .expect("machine builds")
}

/// A machine whose DMA32 RAM lies between 1.5 and 2 GiB only: a 30-bit
/// coherent mask is not met by ZONE_DMA32 there.
pub fn machine_high_dma32() -> Machine {
    Machine::new(MachineConfig {
        regions: Some(vec![
            Region::reserved(0, 0x1000),
            Region::usable(0x1000, 16 << 20),
            Region::usable(3 * GIB / 2, 2 * GIB),
            Region::usable(4 * GIB, 4 * GIB + (64 << 20)),
        ]),
        ..Default::default()
    })
    .expect("machine builds")
}

/// Debugging on, a 1 MiB bounce pool.
pub fn config() -> DmaConfig {
    DmaConfig {
        swiotlb_bytes: MIB,
        ..DmaConfig::default()
    }
}

/// The DMA layer over `m` with [`config`].
pub fn dma(m: &Machine) -> Dma<'_, kmem_host::HostPlatform> {
    Dma::new(m.pages(), config()).expect("dma layer builds")
}

/// The DMA layer over `m` with [`config`] and every mapping bounced
/// (`swiotlb=force`).
pub fn dma_forced(m: &Machine) -> Dma<'_, kmem_host::HostPlatform> {
    Dma::new(
        m.pages(),
        DmaConfig {
            swiotlb_force: true,
            ..config()
        },
    )
    .expect("dma layer builds")
}

/// Free pages with every per-CPU list drained.
pub fn free_pages(m: &Machine) -> usize {
    m.pages().drain_all_pages();
    m.pages().nr_free_pages()
}

/// The first `len` bytes of the stream of `seed` (what a `PatternPort`
/// produces).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| pattern_byte(seed, i)).collect()
}

/// `len` bytes at `p`.
pub fn read(p: *const u8, len: usize) -> Vec<u8> {
    // SAFETY: tests pass live buffers.
    unsafe { std::slice::from_raw_parts(p, len) }.to_vec()
}

/// Fills `len` bytes at `p` with `v`.
pub fn fill(p: *mut u8, len: usize, v: u8) {
    // SAFETY: tests pass live buffers.
    unsafe { p.write_bytes(v, len) };
}

/// The warnings logged since the last call, joined.
pub fn log(m: &Machine) -> String {
    m.platform().take_log().join("\n")
}
