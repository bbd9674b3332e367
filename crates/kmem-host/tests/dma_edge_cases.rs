//! Edge cases of the DMA API found in review, each stating the Linux
//! behaviour it expects: swiotlb bounce buffers within the device's segment
//! boundary, dma-debug's rules for bidirectional syncs, a buffer mapped
//! twice, scatterlist segments beyond the device's limits, sg unmap and sync
//! checks, refused frees that keep their records, absurd sizes (errors, not
//! overflow panics), pool double frees without debugging, and the bounce
//! data paths (exact bytes copied, two threads at once).

mod dma_common;

use dma_common::*;
use kmem::addr::{Pfn, PhysAddr, PAGE_SIZE};
use kmem::dma::engine::DESC_WRITE;
use kmem::dma::*;
use kmem::gfp::GFP_KERNEL;
use kmem::Platform;

/// Linux's dma-debug check_sync: `if (entry->direction == DMA_BIDIRECTIONAL)
/// goto out;` -- a bidirectional mapping may be synced with any direction.
#[test]
fn bidirectional_mapping_synced_with_from_device_is_not_reported() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "drv", "dev");
    dma_set_mask(&dev, DMA_BIT_MASK(64)).unwrap();
    let pfn = m.pages().alloc_pages(GFP_KERNEL, 0).unwrap();
    let cpu = m.pages().page_address(pfn).as_ptr::<u8>();
    let bus = dma_map_single(&dev, cpu, PAGE_SIZE, DMA_BIDIRECTIONAL).unwrap();
    let r1 = dma_sync_single_for_cpu(&dev, bus, PAGE_SIZE, DMA_FROM_DEVICE);
    let r2 = dma_sync_single_for_device(&dev, bus, PAGE_SIZE, DMA_TO_DEVICE);
    dma_unmap_single(&dev, bus, PAGE_SIZE, DMA_BIDIRECTIONAL).unwrap();
    m.pages().free_pages(pfn, 0).unwrap();
    assert!(
        r1.is_ok(),
        "sync_for_cpu(FROM_DEVICE) of a BIDIRECTIONAL mapping: {r1:?}"
    );
    assert!(
        r2.is_ok(),
        "sync_for_device(TO_DEVICE) of a BIDIRECTIONAL mapping: {r2:?}"
    );
    assert_eq!(dma.debug().errors(), 0);
}

/// Linux's dma-debug finds the *best fit* entry for an unmap: "Some drivers
/// map the same physical address multiple times. Without a hardware IOMMU
/// this results in the same device addresses being put into the dma-debug
/// hash multiple times too. This can result in false positives being
/// reported."
#[test]
fn same_buffer_mapped_twice_unmaps_without_false_reports() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "drv", "dev");
    dma_set_mask(&dev, DMA_BIT_MASK(64)).unwrap();
    let pfn = m.pages().alloc_pages(GFP_KERNEL, 0).unwrap();
    let cpu = m.pages().page_address(pfn).as_ptr::<u8>();
    let a = dma_map_single(&dev, cpu, PAGE_SIZE, DMA_FROM_DEVICE).unwrap();
    let b = dma_map_single(&dev, cpu, 64, DMA_TO_DEVICE).unwrap();
    assert_eq!(a, b);
    let ra = dma_unmap_single(&dev, a, PAGE_SIZE, DMA_FROM_DEVICE);
    let rb = dma_unmap_single(&dev, b, 64, DMA_TO_DEVICE);
    let text = log(&m);
    m.pages().free_pages(pfn, 0).unwrap();
    assert!(ra.is_ok() && rb.is_ok(), "{ra:?}\n{rb:?}\n{text}");
    assert_eq!(dma.debug().errors(), 0);
}

/// Linux's dma-debug check_sg_segment: "mapping sg segment longer than
/// device claims to support" / "mapping sg segment across boundary". Here
/// the segments handed to the device must respect its limits, or the map
/// must say so.
#[test]
fn sg_entry_longer_than_max_segment_is_caught() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "drv", "dev");
    dma_set_mask(&dev, DMA_BIT_MASK(64)).unwrap();
    dev.set_max_seg_size(PAGE_SIZE as u32);
    let block = m.pages().alloc_pages(GFP_KERNEL, 1).unwrap();
    let mut sgl = vec![Scatterlist::new(block, 0, 2 * PAGE_SIZE as u32)];
    let r = dma_map_sg(&dev, &mut sgl, DMA_TO_DEVICE);
    let segs: Vec<_> = sgl
        .iter()
        .take_while(|s| s.dma_length != 0)
        .map(|s| s.dma_length)
        .collect();
    let errors = dma.debug().errors();
    if r.is_ok() {
        dma_unmap_sg(&dev, &mut sgl, DMA_TO_DEVICE).unwrap();
    }
    m.pages().free_pages(block, 1).unwrap();
    assert!(
        r.is_err() || errors > 0 || segs.iter().all(|&l| l as usize <= PAGE_SIZE),
        "a {}-byte segment for a device with max_segment_size {PAGE_SIZE}, nothing reported: {r:?}",
        segs[0]
    );
    // kmem's choice, Linux's check_sg_segment: reported, mapped anyway.
    assert_eq!((r, errors), (Ok(1), 1));
    assert!(log(&m)
        .contains("mapping sg segment longer than device claims to support [len=8192] [max=4096]"));
}

#[test]
fn sg_entry_across_segment_boundary_is_caught() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "drv", "dev");
    dma_set_mask(&dev, DMA_BIT_MASK(64)).unwrap();
    dev.set_seg_boundary(PAGE_SIZE as u64 - 1);
    let block = m.pages().alloc_pages(GFP_KERNEL, 1).unwrap();
    // 200 bytes straddling the page boundary inside one block.
    let mut sgl = vec![Scatterlist::new(block, PAGE_SIZE as u32 - 100, 200)];
    let r = dma_map_sg(&dev, &mut sgl, DMA_TO_DEVICE);
    let (b, l) = (sgl[0].dma_address.0, sgl[0].dma_length as u64);
    let errors = dma.debug().errors();
    if r.is_ok() {
        dma_unmap_sg(&dev, &mut sgl, DMA_TO_DEVICE).unwrap();
    }
    m.pages().free_pages(block, 1).unwrap();
    let crosses = (b ^ (b + l - 1)) & !(PAGE_SIZE as u64 - 1) != 0;
    assert!(
        r.is_err() || errors > 0 || !crosses,
        "segment {b:#x}+{l} crosses the device's 4 KiB boundary, nothing reported"
    );
    // kmem's choice, Linux's check_sg_segment: reported, mapped anyway.
    assert_eq!((r, errors, crosses), (Ok(1), 1, true));
    assert!(log(&m).contains("mapping sg segment across boundary"));
}

/// Linux's swiotlb slot search honours the device's segment boundary
/// (dma_get_seg_boundary; iommu_is_span_boundary in swiotlb_search_pool_area):
/// a bounce buffer never crosses it.
#[test]
fn bounce_buffer_respects_device_segment_boundary() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "drv", "dev"); // 32-bit: pages above 4 GiB bounce
    let boundary = 16 * KIB as u64;
    dev.set_seg_boundary(boundary - 1);
    let pfn = m.pages().alloc_pages(GFP_KERNEL, 2).unwrap();
    assert!(pfn.phys().0 >= 4 * GIB);
    let cpu = m.pages().page_address(pfn).as_ptr::<u8>();
    // Three one-page bounces take pages 0..3 of a segment; an 8 KiB bounce
    // then starts at 12 KiB and would run to 20 KiB.
    let mut small = Vec::new();
    for _ in 0..3 {
        small.push(dma_map_single(&dev, cpu, PAGE_SIZE, DMA_TO_DEVICE).unwrap());
    }
    let bus = dma_map_single(&dev, cpu, 2 * PAGE_SIZE, DMA_TO_DEVICE).unwrap();
    let end = bus.0 + 2 * PAGE_SIZE as u64 - 1;
    dma_unmap_single(&dev, bus, 2 * PAGE_SIZE, DMA_TO_DEVICE).unwrap();
    for b in small {
        dma_unmap_single(&dev, b, PAGE_SIZE, DMA_TO_DEVICE).unwrap();
    }
    m.pages().free_pages(pfn, 2).unwrap();
    assert_eq!(
        bus.0 / boundary,
        end / boundary,
        "bounce buffer {bus}..{end:#x} crosses the device's {boundary:#x} boundary"
    );
}

/// "Bad input gets a clear error and loses nothing": a refused
/// dma_free_coherent must not drop the debug entry of what it refused.
#[test]
fn refused_free_coherent_keeps_the_debug_entry() {
    let m = machine();
    let before = free_pages(&m);
    {
        let dma = dma(&m);
        let dev = Device::new(&dma, "drv", "dev");
        let pool = dma_pool_create("p", &dev, 64, 64, 0).unwrap();
        let (blk, bus) = dma_pool_alloc(&pool, GFP_KERNEL).unwrap();
        let live = dev.live_mappings();
        // The driver mistakes the pool page for a coherent allocation.
        let r = dma_free_coherent(&dev, pool.allocation(), blk.as_ptr(), bus);
        assert!(r.is_err(), "refused");
        let after = dev.live_mappings();
        dma_pool_free(&pool, blk.as_ptr(), bus).unwrap();
        let d = dma_pool_destroy(pool);
        let text = log(&m);
        assert_eq!(
            after, live,
            "the refused free dropped the pool page's debug entry\n{text}"
        );
        assert!(d.is_ok(), "{d:?}");
        dev.release().unwrap();
    }
    assert_eq!(free_pages(&m), before, "every page back");
}

/// Partial ranged syncs of a bounced FROM_DEVICE mapping at an odd offset
/// copy exactly their bytes.
#[test]
fn ranged_sync_copies_exactly_its_bytes() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "drv", "dev");
    let pfn = m.pages().alloc_pages(GFP_KERNEL, 2).unwrap();
    let cpu = m.pages().page_address(pfn).as_ptr::<u8>();
    fill(cpu, 4 * PAGE_SIZE, 0x11);
    let start = cpu.wrapping_add(100);
    let len = 9000;
    let bus = dma_map_single(&dev, start, len, DMA_FROM_DEVICE).unwrap();
    assert!(dma.swiotlb().is_swiotlb_buffer(PhysAddr(bus.0)));
    let tlb = m
        .pages()
        .platform()
        .phys_to_virt(PhysAddr(bus.0))
        .as_ptr::<u8>();
    for i in 0..len {
        unsafe { *tlb.add(i) = (i % 251) as u8 };
    }
    dma_sync_single_range_for_cpu(&dev, bus, 2000, 2100, DMA_FROM_DEVICE).unwrap();
    let got = read(start, len);
    for (i, &byte) in got.iter().enumerate() {
        let want = if (2000..4100).contains(&i) {
            (i % 251) as u8
        } else {
            0x11
        };
        assert_eq!(byte, want, "byte {i}");
    }
    dma_sync_single_range_for_device(&dev, bus, 2000, 2100, DMA_FROM_DEVICE).unwrap();
    dma_unmap_single(&dev, bus, len, DMA_FROM_DEVICE).unwrap();
    let got = read(cpu, 4 * PAGE_SIZE);
    for (i, &byte) in got.iter().enumerate() {
        let want = if (100..100 + len).contains(&i) {
            ((i - 100) % 251) as u8
        } else {
            0x11
        };
        assert_eq!(byte, want, "byte {i}");
    }
    assert_eq!(dma.debug().errors(), 0);
    m.pages().free_pages(pfn, 2).unwrap();
}

/// Linux's debug_dma_unmap_sg calls check_unmap on the first entry before
/// anything else: unmapping a list that was never mapped is reported.
#[test]
fn unmap_sg_of_an_unmapped_list_is_reported() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "drv", "dev");
    let pfn = m.pages().alloc_pages(GFP_KERNEL, 0).unwrap();
    let mut sgl = vec![Scatterlist::new(pfn, 0, 512)];
    let r = dma_unmap_sg(&dev, &mut sgl, DMA_TO_DEVICE);
    m.pages().free_pages(pfn, 0).unwrap();
    assert!(
        r.is_err() || dma.debug().errors() > 0,
        "silently accepted: {r:?}"
    );
    // kmem's choice: reported once and refused.
    assert!(r.is_err(), "{r:?}");
    assert_eq!(dma.debug().errors(), 1);
}

/// Linux's check_sync for sg: "device driver syncs DMA sg list with
/// different entry count [map count=%d] [sync count=%d]".
#[test]
fn sync_sg_with_another_entry_count_is_reported() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "drv", "dev");
    dma_set_mask(&dev, DMA_BIT_MASK(64)).unwrap();
    let a = m.pages().alloc_pages(GFP_KERNEL, 0).unwrap();
    let b = m.pages().alloc_pages(GFP_KERNEL, 0).unwrap();
    let mut sgl = vec![Scatterlist::new(b, 0, 512), Scatterlist::new(a, 0, 512)];
    let n = dma_map_sg(&dev, &mut sgl, DMA_TO_DEVICE).unwrap();
    assert_eq!(n, 2);
    let r = dma_sync_sg_for_cpu(&dev, &sgl[..1], DMA_TO_DEVICE);
    let errs = dma.debug().errors();
    dma_unmap_sg(&dev, &mut sgl, DMA_TO_DEVICE).unwrap();
    m.pages().free_pages(a, 0).unwrap();
    m.pages().free_pages(b, 0).unwrap();
    assert!(
        r.is_err() || errs > 0,
        "sync of 1 entry of a 2-entry list: {r:?}"
    );
    // kmem's choice: reported with Linux's line.
    assert_eq!(errs, 1, "{r:?}");
    assert!(log(&m).contains(
        "device driver syncs DMA sg list with different entry count [map count=2] [sync count=1]"
    ));
}

fn no_panic<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Result<T, String> {
    std::panic::catch_unwind(f).map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

/// Bad input gets a clear error, not a panic.
#[test]
fn sync_with_huge_size_is_an_error_not_a_panic() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "drv", "dev");
    let pfn = m.pages().alloc_pages(GFP_KERNEL, 0).unwrap();
    let cpu = m.pages().page_address(pfn).as_ptr::<u8>();
    let bus = dma_map_single(&dev, cpu, PAGE_SIZE, DMA_FROM_DEVICE).unwrap();
    let r1 = no_panic(std::panic::AssertUnwindSafe(|| {
        dma_sync_single_range_for_cpu(&dev, bus, 1, usize::MAX, DMA_FROM_DEVICE)
    }));
    let r2 = no_panic(std::panic::AssertUnwindSafe(|| {
        dma_sync_single_range_for_cpu(&dev, bus, usize::MAX, 1, DMA_FROM_DEVICE)
    }));
    let r3 = no_panic(std::panic::AssertUnwindSafe(|| {
        dma_cpu_access(&dev, cpu, usize::MAX)
    }));
    let _ = dma_unmap_single(&dev, bus, PAGE_SIZE, DMA_FROM_DEVICE);
    let _ = m.pages().free_pages(pfn, 0);
    assert!(
        r1.is_ok(),
        "size usize::MAX at offset 1: panicked: {:?}",
        r1.err()
    );
    assert!(r2.is_ok(), "offset usize::MAX: panicked: {:?}", r2.err());
    assert!(
        r3.is_ok(),
        "dma_cpu_access len usize::MAX: panicked: {:?}",
        r3.err()
    );
}

#[test]
fn pool_create_with_huge_size_is_an_error_not_a_panic() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "drv", "dev");
    let r = no_panic(std::panic::AssertUnwindSafe(|| {
        dma_pool_create("p", &dev, usize::MAX - 3, 8, 0).map(|_| ())
    }));
    assert!(r.is_ok(), "panicked: {:?}", r.err());
    assert!(r.unwrap().is_err());
}

/// Without debugging a double free cannot be recognised, but it should not
/// panic the allocator (nr_active -= 1 on 0).
#[test]
fn pool_double_free_without_debugging() {
    let m = machine();
    let dma = Dma::new(
        m.pages(),
        DmaConfig {
            debug: false,
            ..config()
        },
    )
    .unwrap();
    let dev = Device::new(&dma, "drv", "dev");
    let pool = dma_pool_create("p", &dev, 64, 64, 0).unwrap();
    let (blk, bus) = dma_pool_alloc(&pool, GFP_KERNEL).unwrap();
    dma_pool_free(&pool, blk.as_ptr(), bus).unwrap();
    let r = no_panic(std::panic::AssertUnwindSafe(|| {
        dma_pool_free(&pool, blk.as_ptr(), bus)
    }));
    let active = pool.active_blocks();
    std::mem::forget(pool);
    assert!(r.is_ok(), "panicked: {:?}", r.err());
    assert_eq!(active, 0, "active count after a double free");
}

/// Two threads bounce, sync ranges and unmap at once: every byte lands.
#[test]
fn two_threads_bounce_and_sync_ranges() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "drv", "dev");
    std::thread::scope(|s| {
        for t in 0..2u8 {
            let (m, dev, dma) = (&m, &dev, &dma);
            s.spawn(move || {
                let pfn = m.pages().alloc_pages(GFP_KERNEL, 1).unwrap();
                let cpu = m.pages().page_address(pfn).as_ptr::<u8>();
                for it in 0..600usize {
                    let off = (it * 37) % 1000;
                    let len = 100 + (it * 131) % 6000;
                    let start = cpu.wrapping_add(off);
                    fill(cpu, 2 * PAGE_SIZE, 0xee);
                    let bus = dma_map_single(dev, start, len, DMA_FROM_DEVICE).unwrap();
                    assert!(dma.swiotlb().is_swiotlb_buffer(PhysAddr(bus.0)));
                    let tlb = m
                        .pages()
                        .platform()
                        .phys_to_virt(PhysAddr(bus.0))
                        .as_ptr::<u8>();
                    let v = t.wrapping_mul(100).wrapping_add(it as u8);
                    unsafe { tlb.write_bytes(v, len) };
                    let a = len / 3;
                    dma_sync_single_range_for_cpu(dev, bus, a, len / 3, DMA_FROM_DEVICE).unwrap();
                    let got = read(start, len);
                    assert!(got[a..a + len / 3].iter().all(|&x| x == v));
                    assert!(got[..a].iter().all(|&x| x == 0xee));
                    dma_sync_single_range_for_device(dev, bus, a, len / 3, DMA_FROM_DEVICE)
                        .unwrap();
                    dma_unmap_single(dev, bus, len, DMA_FROM_DEVICE).unwrap();
                    let got = read(cpu, 2 * PAGE_SIZE);
                    for (i, &x) in got.iter().enumerate() {
                        let want = if (off..off + len).contains(&i) {
                            v
                        } else {
                            0xee
                        };
                        assert_eq!(x, want, "thread {t} iter {it} byte {i}");
                    }
                }
                m.pages().free_pages(pfn, 1).unwrap();
            });
        }
    });
    assert_eq!(dma.swiotlb().used_slots(), 0);
    assert_eq!(dma.debug().errors(), 0);
    assert_eq!(dma.debug().live_entries(), 0);
}

/// A bounced sg entry for a device with a 16 KiB segment boundary: the
/// DMA segment handed to the device must not cross it (Linux's swiotlb
/// honours dma_get_seg_boundary).
#[test]
fn bounced_sg_segment_respects_device_segment_boundary() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "drv", "dev");
    let boundary = 16 * KIB as u64;
    dev.set_seg_boundary(boundary - 1);
    let pfn = m.pages().alloc_pages(GFP_KERNEL, 2).unwrap();
    let mut sgl: Vec<_> = (0..3)
        .map(|_| Scatterlist::new(pfn, 0, PAGE_SIZE as u32))
        .chain([Scatterlist::new(pfn, 0, 2 * PAGE_SIZE as u32)])
        .collect();
    let n = dma_map_sg(&dev, &mut sgl, DMA_TO_DEVICE).unwrap();
    let segs: Vec<_> = sgl[..n]
        .iter()
        .map(|s| (s.dma_address.0, s.dma_length as u64))
        .collect();
    dma_unmap_sg(&dev, &mut sgl, DMA_TO_DEVICE).unwrap();
    m.pages().free_pages(pfn, 2).unwrap();
    for (b, l) in segs {
        assert_eq!(
            b / boundary,
            (b + l - 1) / boundary,
            "segment {b:#x}+{l:#x} crosses {boundary:#x}"
        );
    }
}

struct Fill(u8);
impl DevicePort for Fill {
    fn produce(&mut self, _: u64, _: usize, buf: &mut [u8]) {
        buf.fill(self.0);
    }
    fn consume(&mut self, _: u64, _: usize, _: &[u8]) {}
}

/// A bounced bidirectional mapping synced for the CPU with DMA_NONE:
/// check_sync skips the direction check for bidirectional mappings, and
/// since c511217 swiotlb copies by the sync's direction, so DMA_NONE copies
/// nothing and the call returns Ok: the device's bytes are silently lost
/// (before: copied by the mapping's direction; Linux: BUG_ON(!valid_dma_direction)).
/// map refuses DMA_NONE with DmaError::InvalidDirection; sync does not.
#[test]
fn sync_with_dma_none_is_not_a_silent_noop() {
    let m = dma_common::machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "drv", "dev");
    let eng = DmaEngine::new(&dev, 8).unwrap();
    let pfn = m.pages().alloc_pages(GFP_KERNEL, 0).unwrap();
    assert!(pfn.phys().0 >= 4 * GIB);
    let cpu = m.pages().page_address(pfn).as_ptr::<u8>();
    fill(cpu, PAGE_SIZE, 1);
    let bus = dma_map_single(&dev, cpu, PAGE_SIZE, DMA_BIDIRECTIONAL).unwrap();
    assert!(dma.swiotlb().is_swiotlb_buffer(PhysAddr(bus.0)));
    eng.post(bus, PAGE_SIZE as u32, DESC_WRITE).unwrap();
    assert_eq!(eng.run(&mut Fill(2)).completed, 1);
    let r = dma_sync_single_for_cpu(&dev, bus, PAGE_SIZE, DMA_NONE);
    let got = read(cpu, PAGE_SIZE);
    let _ = dma_unmap_single(&dev, bus, PAGE_SIZE, DMA_BIDIRECTIONAL);
    m.pages().free_pages(pfn, 0).unwrap();
    drop(eng);
    let _ = dev.release();
    assert!(
        r.is_err() || got[0] == 2,
        "sync_for_cpu(DMA_NONE) returned {r:?} yet copied nothing (CPU holds {}, device wrote 2)",
        got[0]
    );
    // kmem's choice: refused, like the map.
    assert!(matches!(r, Err(DmaError::InvalidDirection)), "{r:?}");
}

/// A page and offset whose address does not fit in 64 bits, or a range
/// that runs past the top of the address space, are refused with an error
/// and map nothing. They used to wrap: the end of a range near the top came
/// out below its start, so the RAM check walked no frame and swiotlb then
/// copied from a wild address (SIGSEGV in a release build); a frame number
/// of 2^52 or more, or an offset that carried past 2^64, landed on a low
/// frame and mapped someone else's page.
#[test]
fn page_and_offset_beyond_the_address_space_are_refused() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "drv", "dev");
    let pfn = m.pages().alloc_pages(GFP_KERNEL, 0).unwrap();
    let top = Pfn((u64::MAX >> 12) - 1);
    assert!(matches!(
        dma_map_page(&dev, top, 0, 3 * PAGE_SIZE, DMA_TO_DEVICE),
        Err(DmaError::NotRam { phys, size }) if phys == top.phys() && size == 3 * PAGE_SIZE
    ));
    let beyond = |r: Result<DmaAddr, DmaError>| matches!(r, Err(DmaError::InvalidArgument(why)) if why.contains("beyond the 64-bit"));
    assert!(beyond(dma_map_page(
        &dev,
        pfn,
        usize::MAX - 0xfff,
        64,
        DMA_TO_DEVICE
    )));
    assert!(beyond(dma_map_page(
        &dev,
        Pfn((1 << 52) | pfn.0),
        0,
        64,
        DMA_TO_DEVICE
    )));
    // In a scatterlist: the good entry before it is unmapped again.
    let bad = [
        Scatterlist::new(Pfn(u64::MAX >> 12), 0x2000, 64),
        Scatterlist::new(Pfn((1 << 52) | pfn.0), 0, 64),
        Scatterlist::new(top, 0, 3 * PAGE_SIZE as u32),
    ];
    for b in bad {
        assert_eq!(b.checked_phys().is_none(), b.page != top);
        let mut sgl = [Scatterlist::new(pfn, 0, 64), b];
        let r = dma_map_sg(&dev, &mut sgl, DMA_TO_DEVICE);
        assert!(
            matches!(
                r,
                Err(DmaError::InvalidArgument(_)) | Err(DmaError::NotRam { .. })
            ),
            "{r:?}"
        );
        assert_eq!(sgl[0].sg_dma_len(), 0, "first entry unmapped again");
    }
    assert_eq!(dma.debug().live_entries(), 0);
    assert_eq!(dma.swiotlb().used_slots(), 0);
    // The real page still maps.
    let bus = dma_map_page(&dev, pfn, 0, 64, DMA_TO_DEVICE).unwrap();
    dma_unmap_page(&dev, bus, 64, DMA_TO_DEVICE).unwrap();
    m.pages().free_pages(pfn, 0).unwrap();
}

/// Linux's dma_alloc_attrs refuses `__GFP_COMP` (WARN_ON_ONCE, NULL: the
/// memory may come from a pool or an IOMMU, not a compound page), and
/// dma_free_attrs warns when called with IRQs disabled (the free may unmap
/// and flush) and frees anyway. kmem stripped the bit and said nothing, and
/// freed with IRQs off silently.
#[test]
fn coherent_alloc_with_gfp_comp_and_free_with_irqs_off_warn() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "drv", "dev");
    m.platform().take_log();
    let r = dma_alloc_coherent(&dev, 12 << 10, GFP_KERNEL | kmem::gfp::__GFP_COMP);
    assert!(matches!(r, Err(DmaError::InvalidArgument(_))), "{r:?}");
    let log = m.platform().take_log();
    assert!(
        log.iter()
            .any(|l| l.contains("dma_alloc_coherent with __GFP_COMP")),
        "{log:#?}"
    );
    m.pages().drain_all_pages();
    let free = m.pages().nr_free_pages();
    let (cpu, bus) = dma_alloc_coherent(&dev, 12 << 10, GFP_KERNEL).unwrap();
    {
        let _irqs_off = kmem_host::spin_lock_irqsave();
        dma_free_coherent(&dev, 12 << 10, cpu.as_ptr(), bus).unwrap();
    }
    let log = m.platform().take_log();
    assert!(
        log.iter()
            .any(|l| l.contains("dma_free_coherent with IRQs disabled")),
        "{log:#?}"
    );
    m.pages().drain_all_pages();
    assert_eq!(m.pages().nr_free_pages(), free, "freed all the same");
    assert_eq!(dma.debug().live_entries(), 0);
}

/// An unmap of DMA_MAPPING_ERROR (a driver that did not check
/// dma_mapping_error) reads as Linux's check_unmap says it: "device driver
/// tries to free an invalid DMA memory address", not as an address the
/// device never mapped.
#[test]
fn unmap_of_the_error_address_says_invalid_address() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "drv", "dev");
    m.platform().take_log();
    let e = dma_unmap_single(&dev, DMA_MAPPING_ERROR, 4096, DMA_TO_DEVICE).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains(
            "DMA-API: drv dev: device driver tries to free an invalid DMA memory address at "
        ),
        "{text}"
    );
    assert!(!text.contains("not allocated"), "{text}");
}
