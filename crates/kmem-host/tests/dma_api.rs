//! The DMA API on the hosted machine: masks, coherent memory, streaming
//! mappings direct and bounced, swiotlb, scatter-gather, pools and the
//! simulated engine. Every transfer is checked byte for byte.

mod dma_common;

use dma_common::*;
use kmem::addr::{PhysAddr, PAGE_SIZE};
use kmem::dma::engine::{DESC_DONE, DESC_ERR, DESC_ERR_ABORT, DESC_READ, DESC_WRITE};
use kmem::dma::swiotlb::IO_TLB_SIZE;
use kmem::dma::*;
use kmem::gfp::{ZoneType, GFP_ATOMIC, GFP_DMA32, GFP_KERNEL};
use kmem::slab::{SlabAllocator, SlabConfig};
use kmem_host::vmap;

const MASK32: u64 = 0xffff_ffff;

fn zone_of(m: &kmem_host::Machine, pa: u64) -> ZoneType {
    m.pages()
        .populated_zones()
        .find(|z| {
            let s = z.start_pfn() << 12;
            pa >= s && pa < s + (z.spanned_pages() << 12)
        })
        .unwrap()
        .zone_type()
}

#[test]
fn masks_default_to_32_bits() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "e1000", "0000:00:03.0");
    assert_eq!(dev.dma_mask(), MASK32);
    assert_eq!(dev.coherent_mask(), MASK32);
    assert_eq!(dma_get_mask(&dev), DMA_BIT_MASK(32));
    dma_set_mask(&dev, DMA_BIT_MASK(64)).unwrap();
    assert_eq!(dev.dma_mask(), u64::MAX);
    assert_eq!(
        dev.coherent_mask(),
        MASK32,
        "dma_set_mask leaves the coherent mask"
    );
    dma_set_coherent_mask(&dev, DMA_BIT_MASK(40)).unwrap();
    assert_eq!(dev.coherent_mask(), DMA_BIT_MASK(40));
    dma_set_mask_and_coherent(&dev, DMA_BIT_MASK(36)).unwrap();
    assert_eq!(
        (dev.dma_mask(), dev.coherent_mask()),
        (DMA_BIT_MASK(36), DMA_BIT_MASK(36))
    );
    // 24 bits (ISA, ZONE_DMA) is the smallest mask a machine satisfies.
    dma_set_mask(&dev, DMA_BIT_MASK(24)).unwrap();
    let e = dma_set_mask(&dev, DMA_BIT_MASK(20)).unwrap_err();
    assert!(matches!(e, DmaError::UnsupportedMask { .. }), "{e}");
    assert!(dma_set_mask_and_coherent(&dev, DMA_BIT_MASK(16)).is_err());
    assert_eq!(
        dev.dma_mask(),
        DMA_BIT_MASK(24),
        "a refused mask changes nothing"
    );
    dev.release().unwrap();
}

#[test]
fn required_mask_and_max_mapping_size() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "drv", "dev");
    // RAM reaches 4 GiB + 128 MiB: 33 bits.
    assert_eq!(dma_get_required_mask(&dev), DMA_BIT_MASK(33));
    assert!(dma_addressing_limited(&dev));
    assert_eq!(dma_max_mapping_size(&dev), 256 * KIB);
    dma_set_mask(&dev, DMA_BIT_MASK(64)).unwrap();
    assert!(!dma_addressing_limited(&dev));
    assert_eq!(dma_max_mapping_size(&dev), usize::MAX);
    assert!(dma_mapping_error(&dev, DMA_MAPPING_ERROR));
    assert!(!dma_mapping_error(&dev, DmaAddr(0x1000)));
}

#[test]
fn coherent_memory_comes_from_the_zone_of_its_mask() {
    let m = machine();
    let before = free_pages(&m);
    {
        let dma = dma(&m);
        let dev = Device::new(&dma, "drv", "dev");
        for (bits, zone) in [
            (24, ZoneType::Dma),
            (32, ZoneType::Dma32),
            (64, ZoneType::Normal),
        ] {
            dma_set_coherent_mask(&dev, DMA_BIT_MASK(bits)).unwrap();
            for size in [1usize, 100, 4096, 12 * KIB, 64 * KIB] {
                let (p, bus) = dma_alloc_coherent(&dev, size, GFP_KERNEL).unwrap();
                let pa = m
                    .pages()
                    .virt_to_phys(kmem::VirtAddr(p.as_ptr() as usize))
                    .unwrap();
                assert_eq!(bus.0, pa.0, "bus address is the physical address");
                assert_eq!(zone_of(&m, pa.0), zone, "{bits}-bit mask, {size} bytes");
                assert!(bus.0 + size as u64 - 1 <= DMA_BIT_MASK(bits));
                let block = PAGE_SIZE << kmem::get_order(size);
                assert_eq!(bus.0 % block as u64, 0, "aligned to the order of {size}");
                assert!(read(p.as_ptr(), size).iter().all(|&b| b == 0), "zeroed");
                fill(p.as_ptr(), size, 0x5a);
                dma_free_coherent(&dev, size, p.as_ptr(), bus).unwrap();
            }
        }
        assert_eq!(dma.debug().live_entries(), 0);
        assert_eq!(dma.debug().errors(), 0);
        dev.release().unwrap();
    }
    assert_eq!(free_pages(&m), before, "every page back");
}

#[test]
fn coherent_retries_a_lower_zone_when_the_block_is_beyond_the_mask() {
    let m = machine_high_dma32();
    let dma = Dma::new(
        m.pages(),
        DmaConfig {
            swiotlb_bytes: MIB,
            ..config()
        },
    )
    .unwrap();
    let dev = Device::new(&dma, "drv", "dev");
    // 30 bits (1 GiB): ZONE_DMA32 here is 1.5-2 GiB, so the block comes
    // from ZONE_DMA after one try.
    dma_set_coherent_mask(&dev, DMA_BIT_MASK(30)).unwrap();
    let (p, bus) = dma_alloc_coherent(&dev, 8 * KIB, GFP_KERNEL).unwrap();
    assert!(bus.0 < 16 << 20, "{bus}");
    dma_free_coherent(&dev, 8 * KIB, p.as_ptr(), bus).unwrap();
}

#[test]
fn streaming_mapping_within_the_mask_is_the_physical_address() {
    let m = machine();
    let dma = dma(&m);
    let slab = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
    let dev = Device::new(&dma, "nvme", "0000:01:00.0");
    dma_set_mask_and_coherent(&dev, DMA_BIT_MASK(64)).unwrap();
    let eng = DmaEngine::new(&dev, 16).unwrap();
    let p = slab.kmalloc(3000, GFP_KERNEL).unwrap().as_ptr();
    let pa = m.pages().virt_to_phys(kmem::VirtAddr(p as usize)).unwrap();
    assert!(pa.0 >= 4 * GIB, "GFP_KERNEL kmalloc lies above 4 GiB here");
    let bus = dma_map_single(&dev, p, 3000, DMA_FROM_DEVICE).unwrap();
    assert_eq!(bus.0, pa.0);
    assert_eq!(dma.swiotlb().stats().maps, 0, "not bounced");
    let seq = eng.post(bus, 3000, DESC_WRITE).unwrap();
    let run = eng.run(&mut PatternPort::new(7));
    assert_eq!((run.completed, run.failed, run.bytes_written), (1, 0, 3000));
    assert_ne!(eng.desc(seq).flags & DESC_DONE, 0);
    dma_unmap_single(&dev, bus, 3000, DMA_FROM_DEVICE).unwrap();
    assert_eq!(
        read(p, 3000),
        pattern(7, 3000),
        "the transfer landed intact"
    );
    // The same bytes go back out through a TO_DEVICE mapping.
    let bus = dma_map_single(&dev, p, 3000, DMA_TO_DEVICE).unwrap();
    eng.post(bus, 3000, DESC_READ).unwrap();
    let mut rec = Recorder::default();
    assert_eq!(eng.run(&mut rec).completed, 1);
    assert_eq!(rec.0, pattern(7, 3000));
    dma_unmap_single(&dev, bus, 3000, DMA_TO_DEVICE).unwrap();
    slab.kfree(p).unwrap();
    drop(eng);
    dev.release().unwrap();
    assert_eq!(dma.debug().errors(), 0);
}

/// A port that records what the device read.
#[derive(Default)]
struct Recorder(Vec<u8>);

impl DevicePort for Recorder {
    fn produce(&mut self, _: u64, _: usize, buf: &mut [u8]) {
        buf.fill(0xee);
    }
    fn consume(&mut self, _: u64, _: usize, data: &[u8]) {
        self.0.extend_from_slice(data);
    }
}

#[test]
fn a_32_bit_device_bounces_a_buffer_above_4_gib() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "ahci", "0000:00:1f.2");
    let eng = DmaEngine::new(&dev, 16).unwrap();
    assert!(
        eng.ring_bus().0 < 4 * GIB,
        "the ring is coherent memory within the mask"
    );
    let pfn = m.pages().alloc_pages(GFP_KERNEL, 2).unwrap();
    assert!(pfn.phys().0 >= 4 * GIB);
    let cpu = m.pages().page_address(pfn).as_ptr::<u8>();
    let len = 3 * PAGE_SIZE + 100;
    fill(cpu, 4 * PAGE_SIZE, 0x11);

    let bus = dma_map_page(&dev, pfn, 0, len, DMA_FROM_DEVICE).unwrap();
    assert!(
        bus.0 + len as u64 <= 4 * GIB,
        "the device got an address it can drive"
    );
    assert!(dma.swiotlb().is_swiotlb_buffer(PhysAddr(bus.0)));
    assert_eq!(
        bus.0 % PAGE_SIZE as u64,
        0,
        "page-sized bounces start on a page"
    );
    let slots = len.div_ceil(IO_TLB_SIZE);
    assert_eq!(dma.swiotlb().used_slots(), slots);
    eng.post(bus, len as u32, DESC_WRITE).unwrap();
    assert_eq!(eng.run(&mut PatternPort::new(3)).completed, 1);
    // Not copied yet: the CPU's buffer is untouched until sync or unmap.
    assert!(read(cpu, len).iter().all(|&b| b == 0x11));
    dma_sync_single_for_cpu(&dev, bus, len, DMA_FROM_DEVICE).unwrap();
    assert_eq!(read(cpu, len), pattern(3, len));
    dma_sync_single_for_device(&dev, bus, len, DMA_FROM_DEVICE).unwrap();
    eng.post(bus.add(100), 50, DESC_WRITE).unwrap();
    assert_eq!(eng.run(&mut PatternPort::new(9)).completed, 1);
    dma_unmap_single(&dev, bus, len, DMA_FROM_DEVICE).unwrap();
    let mut want = pattern(3, len);
    want[100..150].copy_from_slice(&pattern(9, 50));
    assert_eq!(
        read(cpu, len),
        want,
        "a partial write keeps the rest of the buffer"
    );
    assert!(
        read(cpu.wrapping_add(len), 4 * PAGE_SIZE - len)
            .iter()
            .all(|&b| b == 0x11),
        "nothing past the mapping"
    );
    assert_eq!(dma.swiotlb().used_slots(), 0);
    let st = dma.swiotlb().stats();
    assert_eq!((st.maps, st.unmaps), (1, 1));
    m.pages().free_pages(pfn, 2).unwrap();
    drop(eng);
    dev.release().unwrap();
}

#[test]
fn bounce_copies_follow_the_direction() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "drv", "dev");
    let eng = DmaEngine::new(&dev, 8).unwrap();
    let pfn = m.pages().alloc_pages(GFP_KERNEL, 0).unwrap();
    let cpu = m.pages().page_address(pfn).as_ptr::<u8>();
    let tlb = |bus: DmaAddr| m.pages().page_address(PhysAddr(bus.0).pfn()).as_ptr::<u8>();

    // TO_DEVICE: map copies in, sync_for_device copies again, unmap copies
    // nothing back.
    fill(cpu, PAGE_SIZE, 1);
    let bus = dma_map_single(&dev, cpu, PAGE_SIZE, DMA_TO_DEVICE).unwrap();
    assert_eq!(read(tlb(bus), PAGE_SIZE), vec![1; PAGE_SIZE]);
    dma_sync_single_for_cpu(&dev, bus, PAGE_SIZE, DMA_TO_DEVICE).unwrap();
    fill(cpu, PAGE_SIZE, 2);
    dma_sync_single_for_device(&dev, bus, PAGE_SIZE, DMA_TO_DEVICE).unwrap();
    let mut rec = Recorder::default();
    eng.post(bus, PAGE_SIZE as u32, DESC_READ).unwrap();
    eng.run(&mut rec);
    assert_eq!(
        rec.0,
        vec![2; PAGE_SIZE],
        "the device reads what the CPU wrote before the sync"
    );
    fill(tlb(bus), PAGE_SIZE, 3); // a stray write into the bounce buffer
    dma_unmap_single(&dev, bus, PAGE_SIZE, DMA_TO_DEVICE).unwrap();
    assert_eq!(
        read(cpu, PAGE_SIZE),
        vec![2; PAGE_SIZE],
        "TO_DEVICE never copies back"
    );

    // FROM_DEVICE: sync_for_device does not copy the CPU's bytes over.
    let bus = dma_map_single(&dev, cpu, PAGE_SIZE, DMA_FROM_DEVICE).unwrap();
    assert_eq!(
        read(tlb(bus), PAGE_SIZE),
        vec![2; PAGE_SIZE],
        "map copies in whatever the direction"
    );
    fill(tlb(bus), PAGE_SIZE, 4);
    dma_sync_single_for_cpu(&dev, bus, PAGE_SIZE, DMA_FROM_DEVICE).unwrap();
    assert_eq!(read(cpu, PAGE_SIZE), vec![4; PAGE_SIZE]);
    dma_sync_single_for_device(&dev, bus, PAGE_SIZE, DMA_FROM_DEVICE).unwrap();
    dma_unmap_single(&dev, bus, PAGE_SIZE, DMA_FROM_DEVICE).unwrap();
    assert_eq!(read(cpu, PAGE_SIZE), vec![4; PAGE_SIZE]);

    // BIDIRECTIONAL: both ways, and a ranged sync copies only its range.
    let bus = dma_map_single(&dev, cpu, PAGE_SIZE, DMA_BIDIRECTIONAL).unwrap();
    fill(tlb(bus), PAGE_SIZE, 5);
    dma_sync_single_range_for_cpu(&dev, bus, 100, 10, DMA_BIDIRECTIONAL).unwrap();
    let got = read(cpu, PAGE_SIZE);
    assert_eq!(&got[100..110], &[5; 10]);
    assert_eq!(got[99], 4);
    assert_eq!(got[110], 4);
    dma_sync_single_for_cpu(&dev, bus, PAGE_SIZE, DMA_BIDIRECTIONAL).unwrap();
    fill(cpu, 16, 6);
    dma_sync_single_range_for_device(&dev, bus, 0, 16, DMA_BIDIRECTIONAL).unwrap();
    assert_eq!(
        read(tlb(bus), 17)[..17],
        [6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 5]
    );
    dma_unmap_single(&dev, bus, PAGE_SIZE, DMA_BIDIRECTIONAL).unwrap();
    assert_eq!(dma.swiotlb().used_slots(), 0);
    assert_eq!(dma.debug().errors(), 0);
    m.pages().free_pages(pfn, 0).unwrap();
    drop(eng);
    dev.release().unwrap();
}

#[test]
fn a_full_bounce_pool_is_an_error_even_in_an_irq_handler() {
    let m = machine();
    let dma = dma(&m); // 1 MiB: 4 segments of 256 KiB
    let dev = Device::new(&dma, "drv", "dev");
    let pfn = m.pages().alloc_pages(GFP_KERNEL, 6).unwrap(); // 256 KiB above 4 GiB
    let mut maps = Vec::new();
    let _irq = kmem_host::irq();
    for _ in 0..4 {
        maps.push(dma_map_page(&dev, pfn, 0, 256 * KIB, DMA_TO_DEVICE).unwrap());
    }
    assert_eq!(dma.swiotlb().used_slots(), dma.swiotlb().total_slots());
    let e = dma_map_page(&dev, pfn, 0, IO_TLB_SIZE, DMA_TO_DEVICE).unwrap_err();
    assert_eq!(
        e,
        DmaError::SwiotlbFull {
            size: IO_TLB_SIZE,
            total: 512,
            used: 512
        }
    );
    assert!(log(&m)
        .contains("swiotlb buffer is full (sz: 2048 bytes), total 512 (slots), used 512 (slots)"));
    for bus in maps {
        dma_unmap_page(&dev, bus, 256 * KIB, DMA_TO_DEVICE).unwrap();
    }
    drop(_irq);
    assert_eq!(dma.swiotlb().used_slots(), 0);
    let st = dma.swiotlb().stats();
    assert_eq!((st.full, st.used_hiwater), (1, 512));
    m.pages().free_pages(pfn, 6).unwrap();
}

#[test]
fn mappings_never_cross_a_segment_and_small_ones_pack() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "drv", "dev");
    let pfn = m.pages().alloc_pages(GFP_KERNEL, 6).unwrap();
    let mut maps = Vec::new();
    // Small mappings take one 2 KiB slot each, back to back.
    for i in 0..8 {
        let bus = dma_map_page(&dev, pfn, i * 64, 64, DMA_TO_DEVICE).unwrap();
        maps.push((bus, 64));
    }
    for w in maps.windows(2) {
        assert_eq!(w[1].0 .0 - w[0].0 .0, IO_TLB_SIZE as u64);
    }
    // 200 KiB mappings: never across a 256 KiB segment.
    for _ in 0..3 {
        let bus = dma_map_page(&dev, pfn, 0, 200 * KIB, DMA_TO_DEVICE).unwrap();
        assert_eq!(
            bus.0 / (256 * KIB) as u64,
            (bus.0 + 200 * KIB as u64 - 1) / (256 * KIB) as u64
        );
        maps.push((bus, 200 * KIB));
    }
    for (bus, len) in maps {
        dma_unmap_page(&dev, bus, len, DMA_TO_DEVICE).unwrap();
    }
    assert_eq!(dma.swiotlb().used_slots(), 0);
    m.pages().free_pages(pfn, 6).unwrap();
}

#[test]
fn bounce_pool_lies_below_4_gib_and_is_configurable() {
    let m = machine();
    let free0 = free_pages(&m);
    for bytes in [0usize, 256 * KIB, 300 * KIB, 8 * MIB] {
        let dma = Dma::new(
            m.pages(),
            DmaConfig {
                swiotlb_bytes: bytes,
                ..config()
            },
        )
        .unwrap();
        let sw = dma.swiotlb();
        assert_eq!(sw.stats().bytes, bytes.div_ceil(256 * KIB) * 256 * KIB);
        assert_eq!(sw.is_active(), bytes > 0);
        for (start, len) in sw.ranges() {
            assert!(start.0 + len as u64 <= 4 * GIB);
            assert!(len <= 4 * MIB);
        }
        let dev = Device::new(&dma, "drv", "dev");
        let pfn = m.pages().alloc_pages(GFP_KERNEL, 0).unwrap();
        let r = dma_map_page(&dev, pfn, 0, 100, DMA_TO_DEVICE);
        if bytes == 0 {
            let e = r.unwrap_err();
            assert!(
                matches!(
                    e,
                    DmaError::Overflow {
                        reason: OverflowReason::NoSwiotlb,
                        ..
                    }
                ),
                "{e}"
            );
            assert!(log(&m).contains("overflow (mask ffffffff"));
        } else {
            dma_unmap_page(&dev, r.unwrap(), 100, DMA_TO_DEVICE).unwrap();
        }
        m.pages().free_pages(pfn, 0).unwrap();
    }
    assert_eq!(free_pages(&m), free0, "pools given back");
    // The default is Linux's 64 MiB.
    assert_eq!(DmaConfig::default().swiotlb_bytes, 64 * MIB);
}

#[test]
fn a_buffer_too_large_to_bounce_is_refused() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "drv", "dev");
    let pfn = m.pages().alloc_pages(GFP_KERNEL, 7).unwrap(); // 512 KiB above 4 GiB
    let e = dma_map_page(&dev, pfn, 0, 256 * KIB + 1, DMA_TO_DEVICE).unwrap_err();
    assert!(
        matches!(
            e,
            DmaError::Overflow {
                reason: OverflowReason::TooLarge,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("256 KiB"));
    let bus = dma_map_page(&dev, pfn, 0, 256 * KIB, DMA_TO_DEVICE).unwrap();
    dma_unmap_page(&dev, bus, 256 * KIB, DMA_TO_DEVICE).unwrap();
    dma_set_mask(&dev, DMA_BIT_MASK(64)).unwrap();
    let bus = dma_map_page(&dev, pfn, 0, 512 * KIB, DMA_TO_DEVICE).unwrap();
    assert_eq!(bus.0, pfn.phys().0);
    dma_unmap_page(&dev, bus, 512 * KIB, DMA_TO_DEVICE).unwrap();
    // A 24-bit device: the pool (in DMA32) is itself beyond its reach.
    let low = Dma::new(m.pages(), config()).unwrap();
    let isa = Device::new(&low, "isa", "dma0");
    dma_set_mask(&isa, DMA_BIT_MASK(24)).unwrap();
    let e = dma_map_page(&isa, pfn, 0, 100, DMA_TO_DEVICE).unwrap_err();
    assert!(
        matches!(
            e,
            DmaError::Overflow {
                reason: OverflowReason::PoolBeyondMask,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(
        low.swiotlb().used_slots(),
        0,
        "the slots taken were given back"
    );
    m.pages().free_pages(pfn, 7).unwrap();
}

#[test]
fn swiotlb_force_bounces_everything() {
    let m = machine();
    let dma = dma_forced(&m);
    let dev = Device::new(&dma, "drv", "dev");
    dma_set_mask(&dev, DMA_BIT_MASK(64)).unwrap();
    assert_eq!(dma_max_mapping_size(&dev), 256 * KIB);
    let pfn = m.pages().alloc_pages(GFP_DMA32, 0).unwrap();
    let bus = dma_map_page(&dev, pfn, 0, 64, DMA_BIDIRECTIONAL).unwrap();
    assert_ne!(bus.0, pfn.phys().0);
    assert!(dma.swiotlb().is_swiotlb_buffer(PhysAddr(bus.0)));
    dma_unmap_page(&dev, bus, 64, DMA_BIDIRECTIONAL).unwrap();
    m.pages().free_pages(pfn, 0).unwrap();
}

#[test]
fn bad_arguments_are_refused() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "drv", "dev");
    let pfn = m.pages().alloc_pages(GFP_DMA32, 0).unwrap();
    assert_eq!(
        dma_map_page(&dev, pfn, 0, 0, DMA_TO_DEVICE),
        Err(DmaError::ZeroSize)
    );
    assert_eq!(
        dma_map_page(&dev, pfn, 0, 8, DMA_NONE),
        Err(DmaError::InvalidDirection)
    );
    // The PCI hole (here 128 MiB - 4 GiB) is not RAM.
    let hole = kmem::Pfn(0x20000);
    assert!(matches!(
        dma_map_page(&dev, hole, 0, 8, DMA_TO_DEVICE),
        Err(DmaError::NotRam { .. })
    ));
    assert_eq!(dma.debug().live_entries(), 0);
    m.pages().free_pages(pfn, 0).unwrap();
}

#[test]
fn map_sg_merges_physically_adjacent_entries() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "drv", "dev");
    dma_set_mask(&dev, DMA_BIT_MASK(64)).unwrap();
    let block = m.pages().alloc_pages(GFP_KERNEL, 2).unwrap(); // 4 adjacent frames
    let lone = m.pages().alloc_pages(GFP_KERNEL, 0).unwrap();
    assert_ne!(lone, block.add(4));
    let mut sgl = vec![
        Scatterlist::new(block, 0, PAGE_SIZE as u32),
        Scatterlist::new(block.add(1), 0, PAGE_SIZE as u32),
        Scatterlist::new(block.add(2), 0, 100),
        Scatterlist::new(lone, 0, PAGE_SIZE as u32),
        Scatterlist::new(block.add(3), 0, PAGE_SIZE as u32),
    ];
    let n = dma_map_sg(&dev, &mut sgl, DMA_TO_DEVICE).unwrap();
    // [0,1,2] merge (2 ends early, so 3 cannot join it), lone, 3.
    assert_eq!(n, 3);
    assert_eq!(
        (sgl[0].dma_address.0, sgl[0].dma_length),
        (block.phys().0, 2 * PAGE_SIZE as u32 + 100)
    );
    assert_eq!(sgl[1].dma_address.0, lone.phys().0);
    assert_eq!(sgl[2].dma_address.0, block.add(3).phys().0);
    assert_eq!(sgl[3].dma_length, 0, "the segments end here");
    assert_eq!(dev.live_mappings(), 3);
    dma_sync_sg_for_cpu(&dev, &sgl, DMA_TO_DEVICE).unwrap();
    dma_sync_sg_for_device(&dev, &sgl, DMA_TO_DEVICE).unwrap();
    dma_unmap_sg(&dev, &mut sgl, DMA_TO_DEVICE).unwrap();
    assert_eq!(dev.live_mappings(), 0);

    // Segment limits: 8 KiB segments, and a boundary every 8 KiB.
    let mut sgl: Vec<_> = (0..4)
        .map(|i| Scatterlist::new(block.add(i), 0, PAGE_SIZE as u32))
        .collect();
    dev.set_max_seg_size(8 * KIB as u32);
    assert_eq!(dma_map_sg(&dev, &mut sgl, DMA_TO_DEVICE).unwrap(), 2);
    dma_unmap_sg(&dev, &mut sgl, DMA_TO_DEVICE).unwrap();
    dev.set_max_seg_size(1 << 20);
    let mut sgl: Vec<_> = (0..4)
        .map(|i| Scatterlist::new(block.add(i), 0, PAGE_SIZE as u32))
        .collect();
    assert_eq!(dma_map_sg(&dev, &mut sgl, DMA_TO_DEVICE).unwrap(), 1);
    dma_unmap_sg(&dev, &mut sgl, DMA_TO_DEVICE).unwrap();
    dev.set_seg_boundary(8 * KIB as u64 - 1);
    let mut sgl: Vec<_> = (0..4)
        .map(|i| Scatterlist::new(block.add(i), 0, PAGE_SIZE as u32))
        .collect();
    assert_eq!(dma_map_sg(&dev, &mut sgl, DMA_TO_DEVICE).unwrap(), 2);
    dma_unmap_sg(&dev, &mut sgl, DMA_TO_DEVICE).unwrap();

    // A 32-bit device: entries above 4 GiB bounce one by one, unmerged.
    dma_set_mask(&dev, DMA_BIT_MASK(32)).unwrap();
    dev.set_seg_boundary(u64::MAX);
    let mut sgl: Vec<_> = (0..4)
        .map(|i| Scatterlist::new(block.add(i), 0, PAGE_SIZE as u32))
        .collect();
    assert_eq!(dma_map_sg(&dev, &mut sgl, DMA_TO_DEVICE).unwrap(), 4);
    assert!(sgl.iter().all(|s| s.is_bounced()));
    assert_eq!(dma.swiotlb().used_slots(), 8);
    dma_unmap_sg(&dev, &mut sgl, DMA_TO_DEVICE).unwrap();
    assert_eq!(dma.swiotlb().used_slots(), 0);
    assert_eq!(dma.debug().errors(), 0);
    m.pages().free_pages(block, 2).unwrap();
    m.pages().free_pages(lone, 0).unwrap();
}

#[test]
fn a_failed_map_sg_leaves_nothing_mapped() {
    let m = machine();
    let dma = Dma::new(
        m.pages(),
        DmaConfig {
            swiotlb_bytes: 256 * KIB,
            ..config()
        },
    )
    .unwrap();
    let dev = Device::new(&dma, "drv", "dev");
    let big = m.pages().alloc_pages(GFP_KERNEL, 6).unwrap();
    let small = m.pages().alloc_pages(GFP_KERNEL, 0).unwrap();
    // The first entry bounces, the second does not fit in what is left.
    let mut sgl = vec![
        Scatterlist::new(small, 0, 2048),
        Scatterlist::new(big, 0, 256 * KIB as u32),
    ];
    assert!(matches!(
        dma_map_sg(&dev, &mut sgl, DMA_TO_DEVICE),
        Err(DmaError::SwiotlbFull { .. })
    ));
    assert_eq!(dma.swiotlb().used_slots(), 0);
    assert_eq!(dev.live_mappings(), 0);
    assert!(sgl.iter().all(|s| s.dma_length == 0));
    m.pages().free_pages(big, 6).unwrap();
    m.pages().free_pages(small, 0).unwrap();
}

#[test]
fn sg_table_of_a_vmalloc_buffer_takes_a_transfer_intact() {
    let m = machine();
    let vm = vmap::vmalloc(&m).unwrap();
    let (start, end) = (vm.config().start, vm.config().end);
    let dma = Dma::new(
        m.pages(),
        DmaConfig {
            vmalloc_range: Some((start, end)),
            ..config()
        },
    )
    .unwrap();
    for bits in [64, 32] {
        let dev = Device::new(&dma, "drv", "dev");
        dma_set_mask(&dev, DMA_BIT_MASK(bits)).unwrap();
        let eng = DmaEngine::new(&dev, 64).unwrap();
        let len = 40 * KIB + 123;
        let buf = vm.vmalloc(len).unwrap().as_ptr();
        let mut sgt = sg_table_from_vmalloc(&vm, buf, len, GFP_KERNEL).unwrap();
        assert_eq!(sgt.orig_nents(), 11);
        assert_eq!(sgt.total_length(), len);
        for (i, s) in sgt.entries().iter().enumerate() {
            assert_eq!(
                Some(s.page),
                vm.vmalloc_to_page(buf.wrapping_add(i * PAGE_SIZE))
            );
        }
        let n = dma_map_sgtable(&dev, &mut sgt, DMA_FROM_DEVICE).unwrap();
        assert_eq!(n, sgt.nents());
        if bits == 64 {
            assert!(
                n < 11,
                "vmalloc's pages come in high-order runs, merged: {n} segments"
            );
        } else {
            assert_eq!(n, 11, "bounced entries are not merged");
        }
        let segs: Vec<_> = sgt.dma_segments().collect();
        assert_eq!(segs.iter().map(|s| s.1 as usize).sum::<usize>(), len);
        for &(bus, l) in &segs {
            eng.post(bus, l, DESC_WRITE).unwrap();
        }
        let run = eng.run(&mut PatternPort::new(bits as u64));
        assert_eq!((run.completed, run.failed), (n, 0));
        // The CPU may not look before the unmap.
        assert!(dma_cpu_access_vmalloc(&dev, &vm, buf, len).is_err());
        dma_unmap_sgtable(&dev, &mut sgt, DMA_FROM_DEVICE).unwrap();
        dma_cpu_access_vmalloc(&dev, &vm, buf, len).unwrap();
        assert_eq!(
            read(buf, len),
            pattern(bits as u64, len),
            "{bits}-bit device"
        );
        drop(sgt);
        vm.vfree(buf).unwrap();
        drop(eng);
        dev.release().unwrap();
    }
    assert_eq!(dma.swiotlb().used_slots(), 0);
}

#[test]
fn sg_table_from_pages_merges_consecutive_frames() {
    let m = machine();
    let b = m.pages().alloc_pages(GFP_KERNEL, 1).unwrap();
    let c = m.pages().alloc_pages(GFP_KERNEL, 0).unwrap();
    let t = SgTable::from_pages(
        m.pages(),
        &[b, b.add(1), c],
        100,
        2 * PAGE_SIZE + 10,
        GFP_KERNEL,
    )
    .unwrap();
    assert_eq!(t.orig_nents(), 2);
    assert_eq!(
        t.entries()[0],
        Scatterlist::new(b, 100, 2 * PAGE_SIZE as u32 - 100)
    );
    assert_eq!(t.entries()[1], Scatterlist::new(c, 0, 110));
    drop(t);
    m.pages().free_pages(b, 1).unwrap();
    m.pages().free_pages(c, 0).unwrap();
}

#[test]
fn dma_pool_blocks_never_cross_the_boundary() {
    let m = machine();
    let before = free_pages(&m);
    {
        let dma = dma(&m);
        let dev = Device::new(&dma, "drv", "dev");
        assert!(
            dma_pool_create("bad", &dev, 64, 3, 0).is_err(),
            "align not a power of two"
        );
        assert!(
            dma_pool_create("bad", &dev, 64, 8, 32).is_err(),
            "boundary below size"
        );
        assert!(
            dma_pool_create("bad", &dev, 64, 8, 100).is_err(),
            "boundary not a power of two"
        );
        assert!(dma_pool_create("bad", &dev, 0, 8, 0).is_err());
        for (size, align, boundary) in [
            (24usize, 8usize, 0usize),
            (100, 32, 1024),
            (600, 64, 1024),
            (5000, 8, 0),
            (48, 16, 64),
        ] {
            let pool = dma_pool_create("descs", &dev, size, align, boundary).unwrap();
            let bsize = pool.size();
            assert!(bsize >= size && bsize % align == 0);
            let mut blocks = Vec::new();
            for i in 0..3 * pool.blocks_per_page() + 1 {
                let (p, bus) = if i % 2 == 0 {
                    dma_pool_alloc(&pool, GFP_KERNEL).unwrap()
                } else {
                    dma_pool_zalloc(&pool, GFP_ATOMIC).unwrap()
                };
                let p = p.as_ptr();
                assert_eq!(
                    m.pages()
                        .virt_to_phys(kmem::VirtAddr(p as usize))
                        .unwrap()
                        .0,
                    bus.0
                );
                assert_eq!(bus.0 % align as u64, 0);
                assert!(bus.0 + size as u64 <= 4 * GIB, "within the coherent mask");
                let b = pool.boundary() as u64;
                if b.is_power_of_two() {
                    assert_eq!(
                        bus.0 / b,
                        (bus.0 + bsize as u64 - 1) / b,
                        "block {bus} of {bsize} crosses {b}"
                    );
                } else {
                    // Blocks above a page: Linux's boundary is the
                    // allocation (5000 bytes), one block per pool page.
                    assert_eq!(b, pool.allocation() as u64);
                    assert_eq!(bus.0 % PAGE_SIZE as u64, 0, "block {bus} starts its page");
                }
                if i % 2 == 1 {
                    assert!(read(p, size).iter().all(|&x| x == 0));
                }
                fill(p, size, i as u8);
                blocks.push((p, bus, i as u8));
            }
            // No two blocks overlap, and nobody wrote over another.
            let mut sorted: Vec<_> = blocks.iter().map(|b| b.1 .0).collect();
            sorted.sort();
            assert!(sorted.windows(2).all(|w| w[1] - w[0] >= bsize as u64));
            for &(p, _, v) in &blocks {
                assert!(read(p, size).iter().all(|&x| x == v));
            }
            assert_eq!(pool.active_blocks(), blocks.len());
            for (p, bus, _) in blocks {
                dma_pool_free(&pool, p, bus).unwrap();
            }
            assert_eq!(pool.active_blocks(), 0);
            dma_pool_destroy(pool).unwrap();
        }
        assert_eq!(dma.debug().errors(), 0);
        dev.release().unwrap();
    }
    assert_eq!(free_pages(&m), before);
}

#[test]
fn dma_pool_refuses_bad_frees_and_reports_leaks_at_destroy() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "e1000", "0000:00:03.0");
    let pool = dma_pool_create("e1000-tx", &dev, 64, 64, 0).unwrap();
    let other = dma_pool_create("e1000-rx", &dev, 64, 64, 0).unwrap();
    let (a, abus) = dma_pool_alloc(&pool, GFP_KERNEL).unwrap();
    let (b, bbus) = dma_pool_alloc(&pool, GFP_KERNEL).unwrap();
    let (c, cbus) = dma_pool_alloc(&other, GFP_KERNEL).unwrap();
    // Inside a block, another pool's block, a wrong bus address.
    assert!(dma_pool_free(&pool, a.as_ptr().wrapping_add(8), abus.add(8)).is_err());
    assert!(dma_pool_free(&pool, c.as_ptr(), cbus).is_err());
    assert!(dma_pool_free(&pool, a.as_ptr(), bbus).is_err());
    assert!(log(&m).contains("dma_pool_free e1000-tx"));
    dma_pool_free(&pool, a.as_ptr(), abus).unwrap();
    let e = dma_pool_free(&pool, a.as_ptr(), abus).unwrap_err();
    assert_eq!(e, DmaError::InvalidArgument("already free"));
    // Written after free: reported at the next allocation.
    fill(a.as_ptr().wrapping_add(20), 1, 0);
    let (a2, _) = dma_pool_alloc(&pool, GFP_KERNEL).unwrap();
    assert_eq!(a2, a, "LIFO reuse");
    assert!(log(&m).contains("(corrupted)"));
    dma_pool_free(&other, c.as_ptr(), cbus).unwrap();
    dma_pool_destroy(other).unwrap();
    let leak = dma_pool_destroy(pool).unwrap_err();
    assert_eq!(
        leak,
        PoolLeak {
            name: "e1000-tx",
            busy_blocks: 2,
            leaked_pages: 1
        }
    );
    assert!(log(&m).contains("dma_pool_destroy e1000-tx"));
    let _ = b;
    // The leaked pool page is still the device's coherent memory.
    let r = dev.release().unwrap_err();
    assert!(
        matches!(r.violation, Violation::Leaked { count: 1, .. }),
        "{r}"
    );
}

#[test]
fn the_engine_refuses_what_the_device_cannot_reach() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "drv", "dev");
    let eng = DmaEngine::new(&dev, 4).unwrap();
    eng.set_checks(false);
    let pfn = m.pages().alloc_pages(GFP_KERNEL, 0).unwrap(); // above 4 GiB
    let seq = eng.post(DmaAddr(pfn.phys().0), 64, DESC_WRITE).unwrap();
    let hole = eng.post(DmaAddr(0x2000_0000), 64, DESC_WRITE).unwrap();
    let run = eng.run(&mut PatternPort::new(1));
    assert_eq!((run.completed, run.failed), (0, 2));
    for s in [seq, hole] {
        let f = eng.desc(s).flags;
        assert_eq!(f & (DESC_ERR | DESC_ERR_ABORT), DESC_ERR | DESC_ERR_ABORT);
    }
    assert!(log(&m).contains("master abort"));
    // A full ring refuses more work.
    for _ in 0..4 {
        eng.post(DmaAddr(0x1000), 1, DESC_READ).unwrap();
    }
    assert!(eng.post(DmaAddr(0x1000), 1, DESC_READ).is_err());
    assert!(eng
        .post(DmaAddr(0x1000), 1, DESC_READ | DESC_WRITE)
        .is_err());
    m.pages().free_pages(pfn, 0).unwrap();
}

#[test]
fn teardown_gives_everything_back() {
    let m = machine();
    let before = free_pages(&m);
    {
        let dma = Dma::new(m.pages(), DmaConfig::default()).unwrap();
        assert_eq!(dma.swiotlb().stats().bytes, 64 * MIB);
        let dev = Device::new(&dma, "drv", "dev");
        let eng = DmaEngine::new(&dev, 256).unwrap();
        drop(eng);
        assert_eq!(dma.live_devices(), 1);
        dev.release().unwrap();
        assert_eq!(dma.live_devices(), 0);
    }
    assert_eq!(free_pages(&m), before);
}

#[test]
fn bounces_from_many_threads_at_once_lose_nothing() {
    let m = machine();
    let dma = dma(&m); // 512 slots for 4 threads
    let dev = Device::new(&dma, "drv", "dev");
    let full = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (m, dev, full) = (&m, &dev, &full);
            s.spawn(move || {
                let pfn = m.pages().alloc_pages(GFP_KERNEL, 2).unwrap();
                let cpu = m.pages().page_address(pfn).as_ptr::<u8>();
                for round in 0..300u64 {
                    let len = 1 + ((round * 7919 + t * 104_729) % (4 * PAGE_SIZE as u64)) as usize;
                    let tag = (t * 31 + round) as u8;
                    fill(cpu, len, tag);
                    let bus = match dma_map_page(dev, pfn, 0, len, DMA_BIDIRECTIONAL) {
                        Ok(b) => b,
                        Err(DmaError::SwiotlbFull { .. }) => {
                            full.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            continue;
                        }
                        Err(e) => panic!("{e}"),
                    };
                    // The "device" increments every byte of its copy.
                    let tlb = m.pages().page_address(PhysAddr(bus.0).pfn()).as_ptr::<u8>();
                    let tlb = tlb.wrapping_add((bus.0 % PAGE_SIZE as u64) as usize);
                    assert_eq!(read(tlb, len), vec![tag; len], "thread {t} round {round}");
                    fill(tlb, len, tag.wrapping_add(1));
                    dma_unmap_page(dev, bus, len, DMA_BIDIRECTIONAL).unwrap();
                    assert_eq!(read(cpu, len), vec![tag.wrapping_add(1); len]);
                }
                m.pages().free_pages(pfn, 2).unwrap();
            });
        }
    });
    assert_eq!(dma.swiotlb().used_slots(), 0);
    assert_eq!(dma.debug().live_entries(), 0);
    assert_eq!(dma.debug().errors(), 0);
    let _ = full.into_inner();
}
