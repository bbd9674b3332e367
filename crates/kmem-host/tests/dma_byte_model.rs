//! The DMA API's normal paths against a byte-level model (written in
//! review): random streaming map/sync/unmap sequences for devices with 24-,
//! 32-, 36- and 64-bit masks (direct exactly when the buffer is within the
//! mask; device and CPU bytes right after every step in every direction;
//! exact swiotlb slot counts), syncs of bidirectional mappings in one
//! direction only copy that way (swiotlb copied by the mapping's direction:
//! those two tests failed before), swiotlb "full" only when no aligned run
//! is free, bounces inside the segment boundary, sg merging against a
//! model, mixed bounced and direct sg data, coherent zones/zeroing/
//! alignment, and dma_pool placement and reuse as Linux's.

mod dma_common;

use dma_common::*;
use kmem::addr::{PhysAddr, PAGE_SIZE};
use kmem::dma::engine::{DESC_READ, DESC_WRITE};
use kmem::dma::swiotlb::IO_TLB_SIZE;
use kmem::dma::*;
use kmem::gfp::{GFP_DMA, GFP_DMA32, GFP_KERNEL};

/// A port that records what the device read and writes a fixed byte.
struct Rec {
    got: Vec<u8>,
    fillv: u8,
}

impl DevicePort for Rec {
    fn produce(&mut self, _: u64, _: usize, buf: &mut [u8]) {
        buf.fill(self.fillv);
    }
    fn consume(&mut self, _: u64, _: usize, data: &[u8]) {
        self.got.extend_from_slice(data);
    }
}

fn dev_read(eng: &DmaEngine<'_, kmem_host::HostPlatform>, bus: DmaAddr, len: usize) -> Vec<u8> {
    let mut r = Rec {
        got: Vec::new(),
        fillv: 0,
    };
    eng.post(bus, len as u32, DESC_READ).unwrap();
    let run = eng.run(&mut r);
    assert_eq!(run.completed, 1, "device read at {bus} len {len} failed");
    r.got
}

fn dev_write(eng: &DmaEngine<'_, kmem_host::HostPlatform>, bus: DmaAddr, len: usize, v: u8) {
    let mut r = Rec {
        got: Vec::new(),
        fillv: v,
    };
    eng.post(bus, len as u32, DESC_WRITE).unwrap();
    let run = eng.run(&mut r);
    assert_eq!(run.completed, 1, "device write at {bus} len {len} failed");
}

/// Linux's swiotlb_sync_single_for_device bounces only when the *sync's*
/// direction is DMA_TO_DEVICE or DMA_BIDIRECTIONAL; dma-debug lets a
/// bidirectional mapping be synced with any direction. A bidirectional
/// mapping synced for the device with DMA_FROM_DEVICE therefore must not
/// copy the CPU's bytes into the bounce buffer.
#[test]
fn bidir_mapping_synced_for_device_with_from_device_copies_nothing() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "drv", "dev");
    let eng = DmaEngine::new(&dev, 8).unwrap();
    let pfn = m.pages().alloc_pages(GFP_KERNEL, 0).unwrap();
    assert!(pfn.phys().0 >= 4 * GIB);
    let cpu = m.pages().page_address(pfn).as_ptr::<u8>();
    fill(cpu, PAGE_SIZE, 1);
    let bus = dma_map_single(&dev, cpu, PAGE_SIZE, DMA_BIDIRECTIONAL).unwrap();
    assert!(dma.swiotlb().is_swiotlb_buffer(PhysAddr(bus.0)));
    // The device fills the buffer; the CPU takes it back.
    dev_write(&eng, bus, PAGE_SIZE, 2);
    dma_sync_single_for_cpu(&dev, bus, PAGE_SIZE, DMA_BIDIRECTIONAL).unwrap();
    assert_eq!(read(cpu, PAGE_SIZE), vec![2; PAGE_SIZE]);
    // The CPU scribbles, then gives the buffer back saying only the device
    // will write (no CPU data is to be pushed).
    fill(cpu, PAGE_SIZE, 3);
    dma_sync_single_for_device(&dev, bus, PAGE_SIZE, DMA_FROM_DEVICE).unwrap();
    let seen = dev_read(&eng, bus, PAGE_SIZE);
    assert!(
        seen.iter().all(|&b| b == 2),
        "Linux: sync_for_device(DMA_FROM_DEVICE) does not bounce; the device must still see its own bytes (2), saw {}",
        seen[0]
    );
    dma_unmap_single(&dev, bus, PAGE_SIZE, DMA_BIDIRECTIONAL).unwrap();
    m.pages().free_pages(pfn, 0).unwrap();
    drop(eng);
    dev.release().unwrap();
}

/// Linux's swiotlb_sync_single_for_cpu bounces only for a sync direction of
/// DMA_FROM_DEVICE / DMA_BIDIRECTIONAL: a bidirectional mapping synced for
/// the CPU with DMA_TO_DEVICE copies nothing back.
#[test]
fn bidir_mapping_synced_for_cpu_with_to_device_copies_nothing() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "drv", "dev");
    let eng = DmaEngine::new(&dev, 8).unwrap();
    let pfn = m.pages().alloc_pages(GFP_KERNEL, 0).unwrap();
    let cpu = m.pages().page_address(pfn).as_ptr::<u8>();
    fill(cpu, PAGE_SIZE, 1);
    let bus = dma_map_single(&dev, cpu, PAGE_SIZE, DMA_BIDIRECTIONAL).unwrap();
    assert!(dma.swiotlb().is_swiotlb_buffer(PhysAddr(bus.0)));
    dev_write(&eng, bus, PAGE_SIZE, 2);
    dma_sync_single_for_cpu(&dev, bus, PAGE_SIZE, DMA_TO_DEVICE).unwrap();
    let got = read(cpu, PAGE_SIZE);
    assert!(
        got.iter().all(|&b| b == 1),
        "Linux: sync_for_cpu(DMA_TO_DEVICE) does not bounce back: CPU must still hold 1, holds {}",
        got[0]
    );
    dma_unmap_single(&dev, bus, PAGE_SIZE, DMA_BIDIRECTIONAL).unwrap();
    m.pages().free_pages(pfn, 0).unwrap();
    drop(eng);
    dev.release().unwrap();
}

/// A small xorshift generator: bounded, reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct Live {
    dev: usize,
    cpu: *mut u8,
    pfn: kmem::addr::Pfn,
    order: u32,
    off: usize,
    len: usize,
    bus: DmaAddr,
    dir: DmaDirection,
    bounced: bool,
    /// Model: what the device sees.
    devmem: Vec<u8>,
    /// Model: the CPU buffer.
    cpumem: Vec<u8>,
    cpu_owns: bool,
}

/// Random map / device I/O / ranged sync / CPU write / unmap over devices
/// with 24/32/36/64-bit masks, against a byte model of Linux's dma-direct
/// and swiotlb (sync copies decided by the sync's direction, map always
/// copies in, unmap copies back for FROM_DEVICE / BIDIRECTIONAL), with the
/// bounce slot count, placement and alignment checked after every step.
#[test]
fn random_streaming_against_byte_model() {
    for seed in [0x1234_5678_9abc_def1u64, 7, 99, 0xdead_beef, 4242] {
        run_random(seed, false);
    }
}

/// The same, with bidirectional mappings synced with narrower directions
/// (dma-debug allows it; Linux's swiotlb copies by the sync's direction).
#[test]
fn random_streaming_with_narrow_syncs_against_byte_model() {
    run_random(0x1234_5678_9abc_def1, true);
}

fn run_random(seed: u64, narrow: bool) {
    let m = machine();
    let dma = dma(&m);
    let masks = [24u32, 32, 36, 64];
    let devs: Vec<_> = masks
        .iter()
        .map(|_| Device::new(&dma, "drv", "dev"))
        .collect();
    for (d, &b) in devs.iter().zip(&masks) {
        dma_set_mask(d, DMA_BIT_MASK(b)).unwrap();
    }
    let engs: Vec<_> = devs
        .iter()
        .map(|d| DmaEngine::new(d, 64).unwrap())
        .collect();
    let mut rng = Rng(seed);
    let mut live: Vec<Live> = Vec::new();
    let dirs = [DMA_BIDIRECTIONAL, DMA_TO_DEVICE, DMA_FROM_DEVICE];
    for step in 0..4000 {
        let op = rng.below(10);
        if op < 3 && live.len() < 24 {
            // Map.
            let dev = rng.below(4);
            let order = rng.below(4) as u32;
            let zone = rng.below(3);
            let gfp = [GFP_KERNEL, GFP_DMA32, GFP_DMA][zone];
            let Ok(pfn) = m.pages().alloc_pages(gfp, order) else {
                continue;
            };
            let cpu = m.pages().page_address(pfn).as_ptr::<u8>();
            let total = PAGE_SIZE << order;
            let off = rng.below(total);
            let len = 1 + rng.below(total - off);
            let init: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            // SAFETY: the fresh block.
            unsafe { std::ptr::copy_nonoverlapping(init.as_ptr(), cpu.add(off), len) };
            let dir = dirs[rng.below(3)];
            let pa = pfn.phys().0 + off as u64;
            let mask = DMA_BIT_MASK(masks[dev]);
            let reach = pa + len as u64 - 1 <= mask;
            let used_before = dma.swiotlb().used_slots();
            match dma_map_page(&devs[dev], pfn, off, len, dir) {
                Ok(bus) => {
                    let bounced = dma.swiotlb().is_swiotlb_buffer(PhysAddr(bus.0));
                    assert_eq!(bounced, !reach, "step {step}: direct iff reachable");
                    if !bounced {
                        assert_eq!(bus.0, pa);
                    } else {
                        assert!(bus.0 + len as u64 - 1 <= mask);
                        assert_eq!(
                            dma.swiotlb().used_slots(),
                            used_before + len.div_ceil(IO_TLB_SIZE),
                            "step {step}: slot accounting"
                        );
                        if len >= PAGE_SIZE {
                            assert_eq!(bus.0 % PAGE_SIZE as u64, 0, "page-aligned bounce");
                        }
                        let seg = (256 * KIB) as u64;
                        assert_eq!(bus.0 / seg, (bus.0 + len as u64 - 1) / seg);
                        // No overlap with another live bounce.
                        for l in live.iter().filter(|l| l.bounced) {
                            let a0 = l.bus.0;
                            let a1 = a0 + (l.len.div_ceil(IO_TLB_SIZE) * IO_TLB_SIZE) as u64;
                            let b1 = bus.0 + (len.div_ceil(IO_TLB_SIZE) * IO_TLB_SIZE) as u64;
                            assert!(b1 <= a0 || bus.0 >= a1, "step {step}: bounce overlap");
                        }
                    }
                    live.push(Live {
                        dev,
                        cpu,
                        pfn,
                        order,
                        off,
                        len,
                        bus,
                        dir,
                        bounced,
                        devmem: init.clone(),
                        cpumem: init,
                        cpu_owns: false,
                    });
                }
                Err(e) => {
                    assert!(!reach, "step {step}: a reachable buffer failed: {e:?}");
                    assert_eq!(dma.swiotlb().used_slots(), used_before);
                    m.pages().free_pages(pfn, order).unwrap();
                }
            }
            continue;
        }
        if live.is_empty() {
            continue;
        }
        let i = rng.below(live.len());
        let l = &mut live[i];
        let (s, n) = {
            let s = rng.below(l.len);
            (s, 1 + rng.below(l.len - s))
        };
        match op {
            3 | 4 if !l.cpu_owns => {
                // Device I/O on the device-owned mapping, in an allowed way.
                let write = match l.dir {
                    DmaDirection::ToDevice => false,
                    DmaDirection::FromDevice => true,
                    _ => rng.below(2) == 0,
                };
                if write {
                    let v = rng.next() as u8;
                    dev_write(&engs[l.dev], l.bus.add(s as u64), n, v);
                    l.devmem[s..s + n].fill(v);
                    if !l.bounced {
                        l.cpumem[s..s + n].fill(v);
                    }
                } else {
                    let got = dev_read(&engs[l.dev], l.bus.add(s as u64), n);
                    assert_eq!(got, l.devmem[s..s + n], "step {step}: device read");
                }
            }
            5 => {
                // Ranged sync for the CPU, with a direction dma-debug allows.
                let dir = if l.dir == DMA_BIDIRECTIONAL && narrow {
                    dirs[rng.below(3)]
                } else {
                    l.dir
                };
                dma_sync_single_range_for_cpu(&devs[l.dev], l.bus, s, n, dir).unwrap();
                if l.bounced && dir.device_writes() {
                    let (a, b) = (s, s + n);
                    let src = l.devmem[a..b].to_vec();
                    l.cpumem[a..b].copy_from_slice(&src);
                }
                l.cpu_owns = true;
                // SAFETY: live buffer.
                let got = read(unsafe { l.cpu.add(l.off) }, l.len);
                assert_eq!(
                    got, l.cpumem,
                    "seed {seed} step {step}: CPU view after sync_for_cpu({dir})"
                );
            }
            6 if l.cpu_owns => {
                // CPU writes while it owns the buffer.
                let v = rng.next() as u8;
                // SAFETY: live buffer.
                fill(unsafe { l.cpu.add(l.off + s) }, n, v);
                l.cpumem[s..s + n].fill(v);
                if !l.bounced {
                    l.devmem[s..s + n].fill(v);
                }
            }
            7 if l.cpu_owns => {
                let dir = if l.dir == DMA_BIDIRECTIONAL && narrow {
                    dirs[rng.below(3)]
                } else {
                    l.dir
                };
                dma_sync_single_range_for_device(&devs[l.dev], l.bus, s, n, dir).unwrap();
                if l.bounced && dir.device_reads() {
                    let src = l.cpumem[s..s + n].to_vec();
                    l.devmem[s..s + n].copy_from_slice(&src);
                }
                l.cpu_owns = false;
            }
            8 | 9 => {
                let l = live.swap_remove(i);
                let used_before = dma.swiotlb().used_slots();
                dma_unmap_page(&devs[l.dev], l.bus, l.len, l.dir).unwrap();
                let mut want = l.cpumem.clone();
                if l.bounced {
                    if l.dir.device_writes() {
                        want = l.devmem.clone();
                    }
                    assert_eq!(
                        dma.swiotlb().used_slots(),
                        used_before - l.len.div_ceil(IO_TLB_SIZE)
                    );
                }
                // SAFETY: live buffer.
                let got = read(unsafe { l.cpu.add(l.off) }, l.len);
                assert_eq!(got, want, "step {step}: CPU view after unmap ({})", l.dir);
                m.pages().free_pages(l.pfn, l.order).unwrap();
            }
            _ => {}
        }
        let want_used: usize = live
            .iter()
            .filter(|l| l.bounced)
            .map(|l| l.len.div_ceil(IO_TLB_SIZE))
            .sum();
        assert_eq!(dma.swiotlb().used_slots(), want_used, "step {step}");
    }
    for l in live.drain(..) {
        dma_unmap_page(&devs[l.dev], l.bus, l.len, l.dir).unwrap();
        m.pages().free_pages(l.pfn, l.order).unwrap();
    }
    assert_eq!(dma.swiotlb().used_slots(), 0);
    assert_eq!(dma.debug().errors(), 0);
}

/// Merge model for dma_map_sg of direct entries (kmem's documented merge:
/// adjacent, unbounced, within max_segment_size, not across the boundary).
fn model_merge(ents: &[(u64, u64)], max_seg: u64, boundary: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(a, l) in ents {
        if let Some(c) = out.last_mut() {
            if c.0 + c.1 == a && c.1 + l <= max_seg && (c.0 ^ (a + l - 1)) & !boundary == 0 {
                c.1 += l;
                continue;
            }
        }
        out.push((a, l));
    }
    out
}

#[test]
fn random_sg_merging_against_model() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "drv", "dev");
    dma_set_mask(&dev, DMA_BIT_MASK(64)).unwrap();
    let block = m.pages().alloc_pages(GFP_KERNEL, 5).unwrap(); // 128 KiB
    let mut rng = Rng(77);
    for it in 0..400 {
        let max_seg = [512u32, 4096, 6000, 8192, 65536][rng.below(5)];
        let boundary = [0xfffu64, 0x1fff, 0x3fff, 0xffff, u64::MAX][rng.below(5)];
        dev.set_max_seg_size(max_seg);
        dev.set_seg_boundary(boundary);
        // Consecutive pieces of the block, some with gaps.
        let mut ents = Vec::new();
        let mut pos = rng.below(4096);
        let n = 1 + rng.below(12);
        for _ in 0..n {
            let l = 1 + rng.below(6000);
            if pos + l > 128 * KIB {
                break;
            }
            ents.push((pos, l));
            pos += l;
            if rng.below(4) == 0 {
                pos += 1 + rng.below(100);
            }
        }
        if ents.is_empty() {
            continue;
        }
        let base = block.phys().0;
        let mut sgl: Vec<_> = ents
            .iter()
            .map(|&(o, l)| {
                let pfn = kmem::addr::Pfn(block.0 + (o / PAGE_SIZE) as u64);
                Scatterlist::new(pfn, (o % PAGE_SIZE) as u32, l as u32)
            })
            .collect();
        let want = model_merge(
            &ents
                .iter()
                .map(|&(o, l)| (base + o as u64, l as u64))
                .collect::<Vec<_>>(),
            max_seg as u64,
            boundary,
        );
        let _ = log(&m);
        let k = dma_map_sg(&dev, &mut sgl, DMA_TO_DEVICE).unwrap();
        let got: Vec<_> = sgl[..k]
            .iter()
            .map(|s| (s.dma_address.0, s.dma_length as u64))
            .collect();
        assert_eq!(
            got, want,
            "iteration {it}: max_seg {max_seg} boundary {boundary:#x}"
        );
        assert!(sgl[k..].iter().all(|s| s.dma_length == 0));
        dma_unmap_sg(&dev, &mut sgl, DMA_TO_DEVICE).unwrap();
    }
    m.pages().free_pages(block, 5).unwrap();
}

/// Bounce slots of a device with a small segment boundary never straddle
/// it (Linux's swiotlb_search_pool_area honours dma_get_seg_boundary).
#[test]
fn bounces_respect_the_device_segment_boundary() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "drv", "dev");
    dev.set_seg_boundary(0xffff);
    let pfn = m.pages().alloc_pages(GFP_KERNEL, 4).unwrap();
    let mut maps = Vec::new();
    let mut rng = Rng(5);
    for _ in 0..40 {
        let len = 1 + rng.below(48 * KIB);
        match dma_map_page(&dev, pfn, 0, len, DMA_TO_DEVICE) {
            Ok(bus) => {
                assert_eq!(bus.0 >> 16, (bus.0 + len as u64 - 1) >> 16, "{bus} + {len}");
                maps.push((bus, len));
            }
            Err(DmaError::SwiotlbFull { .. }) => break,
            Err(e) => panic!("{e:?}"),
        }
        if rng.below(3) == 0 && !maps.is_empty() {
            let (b, l) = maps.swap_remove(rng.below(maps.len()));
            dma_unmap_page(&dev, b, l, DMA_TO_DEVICE).unwrap();
        }
    }
    for (b, l) in maps {
        dma_unmap_page(&dev, b, l, DMA_TO_DEVICE).unwrap();
    }
    assert_eq!(dma.swiotlb().used_slots(), 0);
    m.pages().free_pages(pfn, 4).unwrap();
}

/// Coherent memory: zone by coherent mask, zeroed even when the pages were
/// dirty, aligned to the allocation's order.
#[test]
fn coherent_zones_zeroing_alignment() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "drv", "dev");
    for bits in [24u32, 30, 32, 36, 64] {
        dma_set_coherent_mask(&dev, DMA_BIT_MASK(bits)).unwrap();
        for size in [1usize, 100, 4096, 4097, 12 * KIB, 64 * KIB + 1] {
            let (p, bus) = dma_alloc_coherent(&dev, size, GFP_KERNEL).unwrap();
            let order = kmem::get_order(size);
            assert_eq!(bus.0 % ((PAGE_SIZE << order) as u64), 0, "{bits} {size}");
            assert!(bus.0 + size as u64 - 1 <= DMA_BIT_MASK(bits));
            if bits > 32 {
                assert!(bus.0 >= 4 * GIB, "a {bits}-bit mask prefers ZONE_NORMAL");
            } else if bits > 24 {
                assert!(
                    bus.0 >= 16 * MIB as u64,
                    "a {bits}-bit mask prefers ZONE_DMA32"
                );
            }
            let got = read(p.as_ptr(), size);
            assert!(got.iter().all(|&b| b == 0));
            fill(p.as_ptr(), PAGE_SIZE << order, 0xee);
            dma_free_coherent(&dev, size, p.as_ptr(), bus).unwrap();
        }
    }
    assert_eq!(dma.debug().errors(), 0);
}

/// dma_pool placement and reuse as Linux's mm/dmapool.c: blocks handed out
/// in address order within a page, a freed block is the next one handed
/// out (LIFO), a new page only when every block is in use.
#[test]
fn dma_pool_placement_and_reuse() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "drv", "dev");
    for (size, align, boundary) in [
        (64usize, 64usize, 0usize),
        (100, 32, 1024),
        (1500, 8, 2048),
        (48, 16, 64),
    ] {
        let pool = dma_pool_create("p", &dev, size, align, boundary).unwrap();
        let bs = pool.size();
        let per = pool.blocks_per_page();
        let mut blocks = Vec::new();
        for _ in 0..per {
            blocks.push(dma_pool_alloc(&pool, GFP_KERNEL).unwrap());
        }
        assert_eq!(pool.nr_pages(), 1);
        // Linux's pool_initialise_page offsets.
        let base = blocks[0].1 .0;
        let mut want = Vec::new();
        let (mut off, mut next_b) = (0usize, pool.boundary());
        while off + bs <= pool.allocation() {
            if off + bs > next_b {
                off = next_b;
                next_b += pool.boundary();
                continue;
            }
            want.push(base + off as u64);
            off += bs;
        }
        let got: Vec<_> = blocks.iter().map(|b| b.1 .0).collect();
        assert_eq!(got, want, "size {size} align {align} boundary {boundary}");
        let (p, b) = blocks.swap_remove(3.min(per - 1));
        dma_pool_free(&pool, p.as_ptr(), b).unwrap();
        let again = dma_pool_alloc(&pool, GFP_KERNEL).unwrap();
        assert_eq!(again.1, b, "LIFO reuse");
        blocks.push(again);
        let extra = dma_pool_alloc(&pool, GFP_KERNEL).unwrap();
        assert_eq!(pool.nr_pages(), 2);
        blocks.push(extra);
        for (p, b) in blocks {
            dma_pool_free(&pool, p.as_ptr(), b).unwrap();
        }
        dma_pool_destroy(pool).unwrap();
    }
}

/// Swiotlb slot accounting under many live mappings, over a pool of
/// several blocks of different sizes: no two live bounces overlap, the used
/// count is the sum of the live mappings' slots, and "full" is only
/// reported when no free, suitably aligned run exists in any segment.
#[test]
fn swiotlb_stress_accounting_and_full_only_when_full() {
    let m = machine();
    let cfg = DmaConfig {
        swiotlb_bytes: 6 * MIB + 256 * KIB,
        ..config()
    };
    let dma = Dma::new(m.pages(), cfg).unwrap();
    let ranges: Vec<_> = dma.swiotlb().ranges().collect();
    assert!(ranges.len() > 1, "several blocks: {ranges:?}");
    let dev = Device::new(&dma, "drv", "dev");
    let pfn = m.pages().alloc_pages(GFP_KERNEL, 6).unwrap();
    let mut rng = Rng(31337);
    let mut live: Vec<(u64, usize)> = Vec::new();
    let seg = 256 * KIB;
    for step in 0..6000 {
        if rng.below(5) < 3 {
            let len = match rng.below(4) {
                0 => 1 + rng.below(IO_TLB_SIZE),
                1 => 1 + rng.below(PAGE_SIZE),
                2 => 1 + rng.below(64 * KIB),
                _ => 1 + rng.below(256 * KIB),
            };
            let nslots = len.div_ceil(IO_TLB_SIZE);
            match dma_map_page(&dev, pfn, 0, len, DMA_TO_DEVICE) {
                Ok(bus) => {
                    let b = bus.0;
                    assert!(ranges
                        .iter()
                        .any(|&(s, l)| b >= s.0
                            && b + (nslots * IO_TLB_SIZE) as u64 <= s.0 + l as u64));
                    for &(a, l) in &live {
                        let ae = a + (l.div_ceil(IO_TLB_SIZE) * IO_TLB_SIZE) as u64;
                        let be = b + (nslots * IO_TLB_SIZE) as u64;
                        assert!(be <= a || b >= ae, "step {step}: overlap");
                    }
                    live.push((b, len));
                }
                Err(DmaError::SwiotlbFull { .. }) => {
                    // Is there really no room?
                    let stride = if len >= PAGE_SIZE { 2 } else { 1 };
                    let mut room = None;
                    'outer: for &(s, l) in &ranges {
                        let nseg = l / seg;
                        for sg in 0..nseg {
                            let sbase = s.0 + (sg * seg) as u64;
                            let mut i = 0;
                            while i + nslots <= 128 {
                                let st = sbase + (i * IO_TLB_SIZE) as u64;
                                let en = st + (nslots * IO_TLB_SIZE) as u64;
                                let free = live.iter().all(|&(a, l)| {
                                    let ae = a + (l.div_ceil(IO_TLB_SIZE) * IO_TLB_SIZE) as u64;
                                    en <= a || st >= ae
                                });
                                if free {
                                    room = Some(st);
                                    break 'outer;
                                }
                                i += stride;
                            }
                        }
                    }
                    assert!(
                        room.is_none(),
                        "step {step}: full for {len} bytes but {room:#x?} is free"
                    );
                }
                Err(e) => panic!("{e:?}"),
            }
        } else if !live.is_empty() {
            let (b, l) = live.swap_remove(rng.below(live.len()));
            dma_unmap_page(&dev, DmaAddr(b), l, DMA_TO_DEVICE).unwrap();
        }
        let want: usize = live.iter().map(|&(_, l)| l.div_ceil(IO_TLB_SIZE)).sum();
        assert_eq!(dma.swiotlb().used_slots(), want, "step {step}");
    }
    for (b, l) in live {
        dma_unmap_page(&dev, DmaAddr(b), l, DMA_TO_DEVICE).unwrap();
    }
    assert_eq!(dma.swiotlb().used_slots(), 0);
    let _ = log(&m);
    m.pages().free_pages(pfn, 6).unwrap();
}

/// dma_map_sg over a mix of bounced (above 4 GiB) and direct entries for a
/// 32-bit device: what the device writes into each segment reaches the
/// right CPU bytes at sync_sg_for_cpu and at unmap.
#[test]
fn sg_mixed_bounced_and_direct_data() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "drv", "dev");
    let eng = DmaEngine::new(&dev, 64).unwrap();
    let hi = m.pages().alloc_pages(GFP_KERNEL, 2).unwrap();
    let lo = m.pages().alloc_pages(GFP_DMA32, 2).unwrap();
    assert!(hi.phys().0 >= 4 * GIB && lo.phys().0 < 4 * GIB);
    let hcpu = m.pages().page_address(hi).as_ptr::<u8>();
    let lcpu = m.pages().page_address(lo).as_ptr::<u8>();
    fill(hcpu, 4 * PAGE_SIZE, 0);
    fill(lcpu, 4 * PAGE_SIZE, 0);
    let ents = [
        (lo, 0usize, 1000usize, lcpu),
        (lo, 1000, 3096, lcpu),
        (hi, 10, 5000, hcpu),
        (hi, 5010, 3000, hcpu),
        (lo, 4096, 8192, lcpu),
    ];
    let mut sgl: Vec<_> = ents
        .iter()
        .map(|&(p, o, l, _)| {
            Scatterlist::new(
                kmem::addr::Pfn(p.0 + (o / PAGE_SIZE) as u64),
                (o % PAGE_SIZE) as u32,
                l as u32,
            )
        })
        .collect();
    let n = dma_map_sg(&dev, &mut sgl, DMA_FROM_DEVICE).unwrap();
    // lo[0..1000] + lo[1000..4096] merge; lo[4096..] follows directly too.
    let segs: Vec<_> = sgl[..n]
        .iter()
        .map(|s| (s.dma_address, s.dma_length as usize))
        .collect();
    for (k, &(bus, len)) in segs.iter().enumerate() {
        dev_write(&eng, bus, len, 0x10 + k as u8);
    }
    dma_sync_sg_for_cpu(&dev, &sgl, DMA_FROM_DEVICE).unwrap();
    // Expected: every entry's CPU bytes hold the value of the segment it ended up in.
    let check = |when: &str| {
        let mut k = 0usize;
        let mut seg_left = segs[0].1;
        for &(_, o, l, cpu) in &ents {
            let mut done = 0;
            while done < l {
                let take = (l - done).min(seg_left);
                let got = read(cpu.wrapping_add(o + done), take);
                assert!(
                    got.iter().all(|&b| b == 0x10 + k as u8),
                    "{when}: entry at {o} (+{done}) expected {:#x} got {:#x}",
                    0x10 + k,
                    got[0]
                );
                done += take;
                seg_left -= take;
                if seg_left == 0 && k + 1 < segs.len() {
                    k += 1;
                    seg_left = segs[k].1;
                }
            }
        }
    };
    check("after sync_sg_for_cpu");
    dma_sync_sg_for_device(&dev, &sgl, DMA_FROM_DEVICE).unwrap();
    dma_unmap_sg(&dev, &mut sgl, DMA_FROM_DEVICE).unwrap();
    check("after unmap");
    assert_eq!(dma.swiotlb().used_slots(), 0);
    assert_eq!(dma.debug().errors(), 0);
    m.pages().free_pages(hi, 2).unwrap();
    m.pages().free_pages(lo, 2).unwrap();
    drop(eng);
}
