//! The DMA API where kmem once computed something else than Linux 6.18:
//!
//! - `dma_pool_create`'s block size (the stride): `size` raised to 16 bytes
//!   (`struct dma_block`) and rounded up to `align`, nothing more; pool pages
//!   of `max(size, PAGE_SIZE)` bytes; the block layout of
//!   `pool_initialise_page` (no block across `boundary`);
//! - the swiotlb slot search: next fit from the area's index, per-CPU areas
//!   (`swiotlb_search_pool_area`, `swiotlb_find_slots`), checked against a
//!   small model of the slots over random map/unmap sequences;
//! - `dma_alloc_coherent`'s mask test: `phys + PAGE_ALIGN(size) - 1`, not the
//!   end of the power-of-two block (`dma_coherent_ok` in `dma_direct_alloc`).

mod dma_common;
mod proptest_cases;

use dma_common::*;
use kmem::addr::{PhysAddr, PAGE_SIZE};
use kmem::dma::swiotlb::{IO_TLB_SEGSIZE, IO_TLB_SIZE};
use kmem::dma::*;
use kmem::gfp::GFP_KERNEL;
use kmem::platform::Platform;
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// dma_pool

/// Linux's `dma_pool_create` arithmetic: (size, allocation, boundary), or
/// `None` where Linux returns NULL.
fn linux_pool_geometry(
    size: usize,
    align: usize,
    boundary: usize,
) -> Option<(usize, usize, usize)> {
    let align = if align == 0 { 1 } else { align };
    if !align.is_power_of_two() || size == 0 {
        return None;
    }
    let size = size.max(16).next_multiple_of(align);
    let allocation = size.max(PAGE_SIZE);
    let boundary = match boundary {
        0 => allocation,
        b if b < size || !b.is_power_of_two() => return None,
        b => b,
    };
    Some((size, allocation, boundary.min(allocation)))
}

/// Block offsets of a pool page as Linux's `pool_initialise_page` lays
/// them out.
fn linux_block_offsets(size: usize, allocation: usize, boundary: usize) -> Vec<usize> {
    let (mut off, mut next_boundary, mut v) = (0, boundary, Vec::new());
    while off + size <= allocation {
        if off + size > next_boundary {
            off = next_boundary;
            next_boundary += boundary;
            continue;
        }
        v.push(off);
        off += size;
    }
    v
}

#[test]
fn pool_stride_is_linux_size_not_rounded_to_8() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "drv", "dev");
    // (size, align, Linux's block size)
    for (size, align, want) in [
        (20, 1, 20),
        (20, 4, 20),
        (17, 0, 17),
        (1, 1, 16),
        (33, 2, 34),
        (100, 8, 104),
        (64, 64, 64),
    ] {
        let pool = dma_pool_create("p", &dev, size, align, 0).unwrap();
        assert_eq!(pool.size(), want, "size {size} align {align}");
        // Consecutive blocks of a fresh page are `want` bytes apart.
        let (a, da) = dma_pool_alloc(&pool, GFP_KERNEL).unwrap();
        let (b, db) = dma_pool_alloc(&pool, GFP_KERNEL).unwrap();
        assert_eq!(db.0 - da.0, want as u64, "size {size} align {align}");
        assert_eq!(b.as_ptr() as usize - a.as_ptr() as usize, want);
        dma_pool_free(&pool, b.as_ptr(), db).unwrap();
        dma_pool_free(&pool, a.as_ptr(), da).unwrap();
        dma_pool_destroy(pool).unwrap();
    }
    assert!(!log(&m).contains("corrupted"));
}

#[test]
fn pool_page_is_max_of_size_and_page_size() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "drv", "dev");
    let pool = dma_pool_create("big", &dev, 5000, 8, 0).unwrap();
    assert_eq!(pool.size(), 5000);
    assert_eq!(pool.allocation(), 5000, "Linux's pool->allocation");
    assert_eq!(pool.boundary(), 5000, "boundary 0 means the allocation");
    assert_eq!(pool.blocks_per_page(), 1);
    let pool2 = dma_pool_create("big", &dev, 5000, 8, 8192).unwrap();
    assert_eq!(pool2.boundary(), 5000, "cut to the allocation");
    let (p, d) = dma_pool_alloc(&pool, GFP_KERNEL).unwrap();
    fill(p.as_ptr(), 5000, 0x5a);
    assert_eq!(d.0 % PAGE_SIZE as u64, 0);
    dma_pool_free(&pool, p.as_ptr(), d).unwrap();
    dma_pool_destroy(pool).unwrap();
    dma_pool_destroy(pool2).unwrap();
}

fn pool_case(size: usize, align: usize, boundary: usize) {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "drv", "dev");
    let created = dma_pool_create("prop", &dev, size, align, boundary);
    let Some((bsize, allocation, bound)) = linux_pool_geometry(size, align, boundary) else {
        assert!(created.is_err(), "Linux refuses {size}/{align}/{boundary}");
        return;
    };
    let pool = created.unwrap();
    assert_eq!(pool.size(), bsize, "stride");
    assert_eq!(pool.allocation(), allocation);
    assert_eq!(pool.boundary(), bound);
    let offsets = linux_block_offsets(bsize, allocation, bound);
    assert_eq!(pool.blocks_per_page(), offsets.len());
    let n = 2 * offsets.len() + 1;
    let mut blocks = Vec::new();
    for i in 0..n {
        let (p, d) = dma_pool_alloc(&pool, GFP_KERNEL).unwrap();
        assert_eq!(p.as_ptr() as usize % align.max(1), 0, "aligned");
        assert_eq!(d.0 % align.max(1) as u64, 0, "bus address aligned");
        // The page the block lies in starts at a multiple of its order.
        let page_bytes = (PAGE_SIZE << kmem::addr::get_order(allocation)) as u64;
        let off = (d.0 % page_bytes) as usize;
        assert!(offsets.contains(&off), "offset {off} is one of Linux's");
        let b = bound as u64;
        if b.is_power_of_two() {
            assert_eq!(d.0 / b, (d.0 + bsize as u64 - 1) / b, "never across {b}");
        }
        fill(p.as_ptr(), bsize, i as u8);
        blocks.push((p, d, i as u8));
    }
    let mut spans: Vec<_> = blocks.iter().map(|b| b.1 .0).collect();
    spans.sort_unstable();
    for w in spans.windows(2) {
        assert!(w[1] >= w[0] + bsize as u64, "blocks never overlap");
    }
    // Free every other block (its header is written, unaligned if the
    // stride is not a multiple of 8) and take them back: the others keep
    // their bytes, and the debug poison check finds nothing.
    for (p, d, _) in blocks.iter().step_by(2) {
        dma_pool_free(&pool, p.as_ptr(), *d).unwrap();
    }
    for (p, _, v) in blocks.iter().skip(1).step_by(2) {
        assert!(read(p.as_ptr(), bsize).iter().all(|x| x == v));
    }
    for k in (0..n).step_by(2) {
        let (p, d) = dma_pool_alloc(&pool, GFP_KERNEL).unwrap();
        blocks[k] = (p, d, 0);
    }
    for (p, d, _) in &blocks {
        dma_pool_free(&pool, p.as_ptr(), *d).unwrap();
    }
    assert_eq!(pool.active_blocks(), 0);
    dma_pool_destroy(pool).unwrap();
    let l = log(&m);
    assert!(!l.contains("corrupted") && !l.contains("dma_pool"), "{l}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: proptest_cases::cases(48), ..ProptestConfig::default() })]

    #[test]
    fn pool_blocks_are_linux_blocks(
        size in prop_oneof![1usize..=64, 1usize..=600, 1usize..=6000],
        align_log in 0u32..=8,
        align_zero in any::<bool>(),
        boundary_log in prop_oneof![Just(None), (4u32..=13).prop_map(Some)],
        bad_align in 0usize..8,
    ) {
        let align = if bad_align == 0 {
            3 // not a power of two
        } else if align_zero {
            0
        } else {
            1usize << align_log
        };
        let boundary = boundary_log.map_or(0, |l| 1usize << l);
        pool_case(size, align, boundary);
    }
}

// ---------------------------------------------------------------------------
// swiotlb

/// A reference model of the bounce pool's slots and areas, written from
/// Linux's `swiotlb_find_slots` / `swiotlb_search_pool_area` /
/// `swiotlb_release_slots`.
struct SlotModel {
    addr: Vec<u64>,
    used: Vec<bool>,
    nareas: usize,
    area_nslabs: usize,
    index: Vec<usize>,
    area_used: Vec<usize>,
}

impl SlotModel {
    fn new(ranges: &[(PhysAddr, usize)], nr_cpus: usize) -> Self {
        let mut addr = Vec::new();
        for &(start, len) in ranges {
            for k in 0..len / IO_TLB_SIZE {
                addr.push(start.0 + (k * IO_TLB_SIZE) as u64);
            }
        }
        let nslabs = addr.len();
        let mut nareas = nr_cpus.max(1).next_power_of_two();
        if nslabs < nareas * IO_TLB_SEGSIZE {
            nareas = nslabs / IO_TLB_SEGSIZE;
        }
        SlotModel {
            used: vec![false; nslabs],
            addr,
            nareas,
            area_nslabs: nslabs / nareas,
            index: vec![0; nareas],
            area_used: vec![0; nareas],
        }
    }

    /// Free run of `n` slots at `g`, within `g`'s segment.
    fn list_ok(&self, g: usize, n: usize) -> bool {
        let seg_end = ((g / IO_TLB_SEGSIZE + 1) * IO_TLB_SEGSIZE).min(self.used.len());
        g + n <= seg_end && self.used[g..g + n].iter().all(|u| !u)
    }

    fn search(&mut self, a: usize, size: usize, boundary: u64) -> Option<usize> {
        let n = size.div_ceil(IO_TLB_SIZE);
        let align: u64 = if size >= PAGE_SIZE {
            PAGE_SIZE as u64 - 1
        } else {
            0
        } | (IO_TLB_SIZE as u64 - 1);
        let stride = (align >> 11) as usize + 1;
        let max_slots = (boundary >> 11) + 1;
        let ans = self.area_nslabs;
        if n > ans.wrapping_sub(self.area_used[a]) {
            return None;
        }
        let wrap = |i: usize| if i >= ans { 0 } else { i };
        let mut index = self.index[a];
        let mut checked = 0;
        while checked < ans {
            let g = a * ans + index;
            let addr = self.addr[g];
            if addr & align != 0 {
                index = wrap(index + 1);
                checked += 1;
                continue;
            }
            let off = ((addr & boundary) >> 11) & (max_slots - 1);
            if off + n as u64 <= max_slots && self.list_ok(g, n) {
                self.used[g..g + n].iter_mut().for_each(|u| *u = true);
                self.index[a] = wrap(index + n);
                self.area_used[a] += n;
                return Some(g);
            }
            index = wrap(index + stride);
            checked += stride;
        }
        None
    }

    fn map(&mut self, size: usize, boundary: u64, cpu: usize) -> Option<usize> {
        let start = cpu & (self.nareas - 1);
        let mut a = start;
        loop {
            if let Some(g) = self.search(a, size, boundary) {
                return Some(g);
            }
            a = (a + 1) % self.nareas;
            if a == start {
                return None;
            }
        }
    }

    fn unmap(&mut self, g: usize, size: usize) {
        let n = size.div_ceil(IO_TLB_SIZE);
        self.used[g..g + n].iter_mut().for_each(|u| *u = false);
        self.area_used[g / self.area_nslabs] -= n;
    }
}

/// One op of a random sequence: map `size` bytes through device `dev` on
/// `cpu`, or unmap the live mapping picked by `pick`.
#[derive(Clone, Debug)]
enum Op {
    Map { size: usize, dev: usize, cpu: usize },
    Unmap { pick: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let size = prop_oneof![
        4 => 1usize..=IO_TLB_SIZE,
        3 => 1usize..=3 * PAGE_SIZE,
        2 => 1usize..=64 * 1024,
        1 => 1usize..=256 * 1024,
    ];
    prop_oneof![
        3 => (size, 0usize..2, 0usize..2).prop_map(|(size, dev, cpu)| Op::Map { size, dev, cpu }),
        2 => any::<usize>().prop_map(|pick| Op::Unmap { pick }),
    ]
}

fn swiotlb_case(pool_bytes: usize, ops: &[Op]) {
    let m = machine();
    let dma = Dma::new(
        m.pages(),
        DmaConfig {
            swiotlb_bytes: pool_bytes,
            swiotlb_force: true,
            ..config()
        },
    )
    .unwrap();
    let devs = [
        Device::new(&dma, "drv", "wide"),
        Device::new(&dma, "drv", "seg64k"),
    ];
    devs[1].set_seg_boundary(0xffff);
    let boundaries = [devs[0].segment_boundary(), 0xffff];
    let ranges: Vec<_> = dma.swiotlb().ranges().collect();
    let mut model = SlotModel::new(&ranges, m.platform().nr_cpus());
    let src = m.pages().alloc_pages(GFP_KERNEL, 6).unwrap();
    let mut live: Vec<(DmaAddr, usize, usize, usize)> = Vec::new();
    for (i, o) in ops.iter().enumerate() {
        match *o {
            Op::Map { size, dev, cpu } => {
                kmem_host::set_cpu(cpu);
                assert_eq!(m.platform().cpu_id(), cpu);
                let want = model.map(size, boundaries[dev], cpu);
                let got = dma_map_page(&devs[dev], src, 0, size, DMA_TO_DEVICE);
                match (want, got) {
                    (Some(g), Ok(bus)) => {
                        assert_eq!(
                            bus.0, model.addr[g],
                            "op {i}: map {size} on cpu {cpu} dev {dev}: slot {g}"
                        );
                        live.push((bus, size, dev, g));
                    }
                    (None, Err(_)) => {}
                    (w, g) => panic!("op {i}: map {size}: model {w:?}, kmem {g:?}"),
                }
            }
            Op::Unmap { pick } => {
                if live.is_empty() {
                    continue;
                }
                let (bus, size, dev, g) = live.swap_remove(pick % live.len());
                dma_unmap_page(&devs[dev], bus, size, DMA_TO_DEVICE).unwrap();
                model.unmap(g, size);
            }
        }
        let used = model.used.iter().filter(|u| **u).count();
        assert_eq!(dma.swiotlb().used_slots(), used, "op {i}");
    }
    for (bus, size, dev, _) in live {
        dma_unmap_page(&devs[dev], bus, size, DMA_TO_DEVICE).unwrap();
    }
    m.pages().free_pages(src, 6).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: proptest_cases::cases(32), ..ProptestConfig::default() })]

    /// 1 MiB: two areas of two segments. 1.25 MiB: two areas of 320 slots,
    /// so an area ends inside a segment (as Linux's can).
    #[test]
    fn swiotlb_search_is_linux_next_fit(
        pool_bytes in prop_oneof![Just(MIB), Just(MIB + 256 * KIB)],
        ops in proptest::collection::vec(op(), 1..160),
    ) {
        swiotlb_case(pool_bytes, &ops);
    }
}

#[test]
fn swiotlb_next_fit_continues_after_the_last_mapping() {
    let m = machine();
    let dma = dma_forced(&m);
    let dev = Device::new(&dma, "drv", "dev");
    kmem_host::set_cpu(0);
    let src = m.pages().alloc_pages(GFP_KERNEL, 0).unwrap();
    let a = dma_map_page(&dev, src, 0, 100, DMA_TO_DEVICE).unwrap();
    dma_unmap_page(&dev, a, 100, DMA_TO_DEVICE).unwrap();
    // First fit would hand out the same slot again; Linux moves on.
    let b = dma_map_page(&dev, src, 0, 100, DMA_TO_DEVICE).unwrap();
    assert_eq!(b.0, a.0 + IO_TLB_SIZE as u64, "the slot after the last one");
    // A page-sized mapping from an odd slot steps to the next even one.
    let c = dma_map_page(&dev, src, 0, PAGE_SIZE, DMA_TO_DEVICE).unwrap();
    assert_eq!(c.0, a.0 + PAGE_SIZE as u64);
    for (x, s) in [(b, 100), (c, PAGE_SIZE)] {
        dma_unmap_page(&dev, x, s, DMA_TO_DEVICE).unwrap();
    }
    // The other CPU starts in the other area (two CPUs, two areas).
    kmem_host::set_cpu(1);
    let d = dma_map_page(&dev, src, 0, 100, DMA_TO_DEVICE).unwrap();
    assert_eq!(
        d.0,
        a.0 + (256 * IO_TLB_SIZE) as u64,
        "area 1 starts 256 slots on"
    );
    dma_unmap_page(&dev, d, 100, DMA_TO_DEVICE).unwrap();
    m.pages().free_pages(src, 0).unwrap();
}

// ---------------------------------------------------------------------------
// dma_alloc_coherent

#[test]
fn coherent_mask_is_tested_against_the_page_aligned_size() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "drv", "dev");
    dma_set_coherent_mask(&dev, DMA_BIT_MASK(64)).unwrap();
    // Where a 16 KiB block lands (above 4 GiB with a 64-bit mask); the same
    // block comes back from the per-CPU list after its free.
    let (p, base) = dma_alloc_coherent(&dev, 16 * KIB, GFP_KERNEL).unwrap();
    assert!(base.0 >= 4 * GIB, "{base}");
    dma_free_coherent(&dev, 16 * KIB, p.as_ptr(), base).unwrap();
    // A mask that covers the first 12 KiB of that block only.
    dma_set_coherent_mask(&dev, base.0 + 12 * KIB as u64 - 1).unwrap();
    // 12 KiB (order 2: a 16 KiB block) is fine there for Linux: it checks
    // phys + PAGE_ALIGN(size) - 1 against the mask.
    let (p, bus) = dma_alloc_coherent(&dev, 12 * KIB, GFP_KERNEL).unwrap();
    assert_eq!(bus, base, "the block whose first 12 KiB are in the mask");
    // 10 KiB is 12 KiB page-aligned: also fine.
    dma_free_coherent(&dev, 12 * KIB, p.as_ptr(), bus).unwrap();
    let (p, bus) = dma_alloc_coherent(&dev, 10 * KIB, GFP_KERNEL).unwrap();
    assert_eq!(bus, base);
    dma_free_coherent(&dev, 10 * KIB, p.as_ptr(), bus).unwrap();
    // 16 KiB is not: that block is refused and a lower zone serves it.
    let (p, bus) = dma_alloc_coherent(&dev, 16 * KIB, GFP_KERNEL).unwrap();
    assert_ne!(bus, base);
    assert!(bus.0 + 16 * KIB as u64 <= base.0 + 12 * KIB as u64);
    dma_free_coherent(&dev, 16 * KIB, p.as_ptr(), bus).unwrap();
}
