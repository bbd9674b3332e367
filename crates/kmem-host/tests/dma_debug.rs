//! DMA API debugging (`CONFIG_DMA_API_DEBUG`): every rule, its report in
//! Linux's words with the device, the address and the call site, and what
//! state the call leaves behind.

mod dma_common;

use dma_common::*;
use kmem::addr::PAGE_SIZE;
use kmem::dma::engine::{DESC_ERR, DESC_ERR_FAULT, DESC_READ, DESC_WRITE};
use kmem::dma::*;
use kmem::gfp::{GFP_DMA32, GFP_KERNEL};
use kmem::slab::{SlabAllocator, SlabConfig};
use kmem_host::{vmap, Machine};

/// The report inside an error.
fn report(e: DmaError) -> DebugReport {
    match e {
        DmaError::Api(r) => r,
        other => panic!("expected a DMA-API report, got {other}"),
    }
}

/// Checks a report names the device, the address and this file's `line`.
fn names(m: &Machine, r: &DebugReport, addr: DmaAddr, line: u32) -> String {
    let text = log(m);
    assert!(
        text.contains(&r.to_string()),
        "the report was printed:\n{text}"
    );
    let s = r.to_string();
    assert!(s.starts_with("DMA-API: e1000 0000:00:03.0: "), "{s}");
    assert!(
        s.contains(&format!("{addr}")) || addr == DMA_MAPPING_ERROR,
        "{s}"
    );
    assert!(
        s.contains(&format!("dma_debug.rs:{line}:")),
        "call site in {s}"
    );
    assert_eq!(r.site.line(), line);
    s
}

#[test]
fn map_single_of_vmalloc_memory_is_refused_with_the_rule_and_the_fix() {
    let m = machine();
    let vm = vmap::vmalloc(&m).unwrap();
    let range = (vm.config().start, vm.config().end);
    let dma = Dma::new(
        m.pages(),
        DmaConfig {
            vmalloc_range: Some(range),
            ..config()
        },
    )
    .unwrap();
    let dev = Device::new(&dma, "e1000", "0000:00:03.0");
    let buf = vm.vmalloc(16 * KIB).unwrap().as_ptr();
    let line = line!() + 1;
    let e = dma_map_single(&dev, buf, 16 * KIB, DMA_FROM_DEVICE).unwrap_err();
    let r = report(e);
    let s = names(&m, &r, DMA_MAPPING_ERROR, line);
    assert!(matches!(
        r.violation,
        Violation::MapNotDirect {
            vmalloc: true,
            len: 16384,
            ..
        }
    ));
    assert!(
        s.contains("device driver maps memory from vmalloc area"),
        "{s}"
    );
    assert!(
        s.contains(&format!("[addr={:#x}] [len=16384]", buf as usize)),
        "{s}"
    );
    assert!(
        s.contains("dma_map_sg()") && s.contains("kmalloc()") && s.contains("dma_alloc_coherent()"),
        "the fix: {s}"
    );
    assert!(s.contains("not in the direct map"), "the rule: {s}");
    assert_eq!(dev.live_mappings(), 0);
    assert_eq!(dma.swiotlb().used_slots(), 0);
    // Any other address outside the direct map: "invalid area".
    let stack = [0u8; 64];
    let r = report(dma_map_single(&dev, stack.as_ptr(), 64, DMA_TO_DEVICE).unwrap_err());
    assert!(
        r.to_string().contains("maps memory from invalid area"),
        "{r}"
    );
    // The refusal holds with debugging off too.
    let quiet = Dma::new(
        m.pages(),
        DmaConfig {
            debug: false,
            ..config()
        },
    )
    .unwrap();
    let qdev = Device::new(&quiet, "e1000", "0000:00:03.0");
    assert!(dma_map_single(&qdev, buf, 16 * KIB, DMA_FROM_DEVICE).is_err());
    vm.vfree(buf).unwrap();
    assert_eq!(dma.debug().errors(), 2);
}

/// A machine, its DMA layer, a 32-bit e1000 and a page above 4 GiB (so
/// mappings bounce and slot accounting shows in every test).
macro_rules! setup {
    ($m:ident, $dma:ident, $dev:ident, $pfn:ident, $cpu:ident) => {
        let $m = machine();
        let $dma = dma(&$m);
        let $dev = Device::new(&$dma, "e1000", "0000:00:03.0");
        let $pfn = $m.pages().alloc_pages(GFP_KERNEL, 1).unwrap();
        let $cpu = $m.pages().page_address($pfn).as_ptr::<u8>();
    };
}

#[test]
fn unmap_with_a_wrong_size_is_reported_and_undone_as_mapped() {
    setup!(m, dma, dev, pfn, cpu);
    fill(cpu, 4096, 0);
    let bus = dma_map_single(&dev, cpu, 4096, DMA_FROM_DEVICE).unwrap();
    let tlb = m
        .pages()
        .page_address(kmem::PhysAddr(bus.0).pfn())
        .as_ptr::<u8>();
    fill(tlb, 4096, 0x77); // the device's data
    let line = line!() + 1;
    let r = report(dma_unmap_single(&dev, bus, 100, DMA_FROM_DEVICE).unwrap_err());
    let s = names(&m, &r, bus, line);
    assert!(
        s.contains("device driver frees DMA memory with different size"),
        "{s}"
    );
    assert!(
        s.contains("[map size=4096 bytes] [unmap size=100 bytes]"),
        "{s}"
    );
    assert!(
        s.contains("; mapped at ") && s.contains("dma_debug.rs:"),
        "{s}"
    );
    assert_eq!(
        r.violation,
        Violation::WrongSize {
            map_size: 4096,
            unmap_size: 100
        }
    );
    // Undone with the recorded size: every byte back, every slot free.
    assert_eq!(read(cpu, 4096), vec![0x77; 4096]);
    assert_eq!(dma.swiotlb().used_slots(), 0);
    assert_eq!(dev.live_mappings(), 0);
    m.pages().free_pages(pfn, 1).unwrap();
}

#[test]
fn unmap_with_a_wrong_direction_is_reported() {
    setup!(m, dma, dev, pfn, cpu);
    let bus = dma_map_single(&dev, cpu, 512, DMA_TO_DEVICE).unwrap();
    let line = line!() + 1;
    let r = report(dma_unmap_single(&dev, bus, 512, DMA_FROM_DEVICE).unwrap_err());
    let s = names(&m, &r, bus, line);
    assert!(
        s.contains("device driver frees DMA memory with different direction"),
        "{s}"
    );
    assert!(
        s.contains("[mapped with DMA_TO_DEVICE] [unmapped with DMA_FROM_DEVICE]"),
        "{s}"
    );
    assert_eq!(dma.swiotlb().used_slots(), 0);
    assert_eq!(
        dma.swiotlb().stats().bytes_from_bounce,
        0,
        "a TO_DEVICE mapping is never copied back"
    );
    m.pages().free_pages(pfn, 1).unwrap();
}

#[test]
fn double_unmap_is_reported_with_the_first_unmap() {
    setup!(m, dma, dev, pfn, cpu);
    let bus = dma_map_page(&dev, pfn, 0, 8192, DMA_BIDIRECTIONAL).unwrap();
    let first = line!() + 1;
    dma_unmap_page(&dev, bus, 8192, DMA_BIDIRECTIONAL).unwrap();
    let used = dma.swiotlb().stats();
    let line = line!() + 1;
    let r = report(dma_unmap_page(&dev, bus, 8192, DMA_BIDIRECTIONAL).unwrap_err());
    let s = names(&m, &r, bus, line);
    assert!(
        s.contains("device driver tries to free DMA memory it has not allocated"),
        "{s}"
    );
    assert!(
        s.contains(&format!(
            "double unmap: already unmapped at {}:{first}:",
            file!()
        )),
        "{s}"
    );
    assert_eq!(dma.swiotlb().stats(), used, "nothing was done twice");
    // An address never mapped: no double-unmap note.
    let r = report(dma_unmap_single(&dev, DmaAddr(0x1234_0000), 64, DMA_TO_DEVICE).unwrap_err());
    assert!(!r.to_string().contains("double unmap"));
    let _ = cpu;
    m.pages().free_pages(pfn, 1).unwrap();
}

#[test]
fn unmap_with_the_wrong_function_is_reported() {
    setup!(m, dma, dev, pfn, cpu);
    let mut sgl = [Scatterlist::new(pfn, 0, 4096)];
    assert_eq!(dma_map_sg(&dev, &mut sgl, DMA_TO_DEVICE).unwrap(), 1);
    let bus = sgl[0].dma_address;
    let line = line!() + 1;
    let r = report(dma_unmap_single(&dev, bus, 4096, DMA_TO_DEVICE).unwrap_err());
    let s = names(&m, &r, bus, line);
    assert!(s.contains("frees DMA memory with wrong function"), "{s}");
    assert!(
        s.contains("[mapped as scatter-gather] [unmapped as single]"),
        "{s}"
    );
    assert_eq!(dma.swiotlb().used_slots(), 0, "still undone");
    // dma_free_coherent of a streaming mapping would free kmalloc'd pages:
    // refused.
    let bus = dma_map_single(&dev, cpu, 64, DMA_TO_DEVICE).unwrap();
    let r = report(dma_free_coherent(&dev, 64, cpu, bus).unwrap_err());
    assert_eq!(
        r.violation,
        Violation::WrongType {
            mapped: MapType::Single,
            unmapped: MapType::Coherent
        }
    );
    assert_eq!(dev.live_mappings(), 1, "the mapping is still there");
    dma_unmap_single(&dev, bus, 64, DMA_TO_DEVICE).unwrap();
    m.pages().free_pages(pfn, 1).unwrap();
}

#[test]
fn free_coherent_with_wrong_arguments_is_reported() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "e1000", "0000:00:03.0");
    let free0 = free_pages(&m);
    let (p, bus) = dma_alloc_coherent(&dev, 2048, GFP_KERNEL).unwrap();
    let line = line!() + 1;
    let r = report(dma_free_coherent(&dev, 1024, p.as_ptr().wrapping_add(8), bus).unwrap_err());
    let s = names(&m, &r, bus, line);
    assert!(
        s.contains("frees DMA memory with different size [device address="),
        "{s}"
    );
    assert!(
        log(&m).is_empty(),
        "one report per call is returned; the rest were printed already"
    );
    assert_eq!(free_pages(&m), free0, "freed as allocated");
    let (p, bus) = dma_alloc_coherent(&dev, 2048, GFP_KERNEL).unwrap();
    let r = report(dma_free_coherent(&dev, 2048, p.as_ptr().wrapping_add(8), bus).unwrap_err());
    assert!(
        r.to_string()
            .contains("frees DMA memory with different CPU address"),
        "{r}"
    );
    assert!(r
        .to_string()
        .contains(&format!("[cpu alloc address={:#x}]", p.as_ptr() as usize)));
    // Never allocated: refused, nothing freed.
    let r = report(dma_free_coherent(&dev, 2048, p.as_ptr(), bus).unwrap_err());
    assert!(matches!(
        r.violation,
        Violation::NotMapped { free: true, .. }
    ));
    assert_eq!(free_pages(&m), free0);
}

#[test]
fn sync_of_an_unmapped_address_is_reported() {
    setup!(m, dma, dev, pfn, cpu);
    let nowhere = DmaAddr(0x1000_0000);
    let line = line!() + 1;
    let e = dma_sync_single_for_cpu(&dev, nowhere, 64, DMA_FROM_DEVICE).unwrap_err();
    let r = report(e);
    let s = names(&m, &r, DmaAddr(0x1000_0000), line);
    assert!(s.contains("device driver tries to sync DMA memory it has not allocated [device address=0x0000000010000000] [size=64 bytes]"), "{s}");
    // After an unmap, too.
    let bus = dma_map_single(&dev, cpu, 64, DMA_FROM_DEVICE).unwrap();
    dma_unmap_single(&dev, bus, 64, DMA_FROM_DEVICE).unwrap();
    let before = dma.swiotlb().stats();
    let r = report(dma_sync_single_for_device(&dev, bus, 64, DMA_FROM_DEVICE).unwrap_err());
    assert_eq!(r.violation, Violation::SyncNotMapped);
    assert_eq!(dma.swiotlb().stats(), before, "nothing copied");
    m.pages().free_pages(pfn, 1).unwrap();
}

#[test]
fn sync_beyond_the_mapping_or_in_another_direction_is_reported() {
    setup!(m, dma, dev, pfn, cpu);
    let bus = dma_map_single(&dev, cpu, 1000, DMA_FROM_DEVICE).unwrap();
    let line = line!() + 1;
    let e = dma_sync_single_range_for_cpu(&dev, bus, 900, 200, DMA_FROM_DEVICE).unwrap_err();
    let r = report(e);
    let s = names(&m, &r, bus.add(900), line);
    assert!(
        s.contains("syncs DMA memory outside allocated range"),
        "{s}"
    );
    assert!(
        s.contains("[allocation size=1000 bytes] [sync offset+size=1100]"),
        "{s}"
    );
    assert_eq!(
        dma.swiotlb().stats().bytes_from_bounce,
        100,
        "the copy stopped at the end of the mapping"
    );
    let r = report(dma_sync_single_for_cpu(&dev, bus, 1000, DMA_TO_DEVICE).unwrap_err());
    assert!(
        r.to_string()
            .contains("syncs DMA memory with different direction"),
        "{r}"
    );
    assert!(
        r.to_string()
            .contains("[mapped with DMA_FROM_DEVICE] [synced with DMA_TO_DEVICE]"),
        "{r}"
    );
    dma_unmap_single(&dev, bus, 1000, DMA_FROM_DEVICE).unwrap();
    m.pages().free_pages(pfn, 1).unwrap();
}

/// A sync in the wrong direction that also moves data the mapping's
/// direction forbids gets Linux's second check_sync report: "syncs device
/// read-only DMA memory for cpu" (a DMA_TO_DEVICE mapping synced for the
/// CPU) or "syncs device write-only DMA memory to device" (a
/// DMA_FROM_DEVICE mapping synced for the device); kmem gave the first
/// only. A wrong direction that moves nothing forbidden gets the first
/// alone.
#[test]
fn sync_against_the_mapping_direction_gets_the_second_report() {
    setup!(m, dma, dev, pfn, cpu);
    let cases = [
        (
            DMA_TO_DEVICE,
            DMA_FROM_DEVICE,
            true,
            Some("syncs device read-only DMA memory for cpu"),
        ),
        (
            DMA_FROM_DEVICE,
            DMA_TO_DEVICE,
            false,
            Some("syncs device write-only DMA memory to device"),
        ),
        (DMA_FROM_DEVICE, DMA_TO_DEVICE, true, None),
        (DMA_TO_DEVICE, DMA_FROM_DEVICE, false, None),
    ];
    for (mapped, synced, to_cpu, second) in cases {
        let bus = dma_map_single(&dev, cpu, 1000, mapped).unwrap();
        m.platform().take_log();
        let errors = dma.debug().errors();
        let r = if to_cpu {
            dma_sync_single_for_cpu(&dev, bus, 1000, synced)
        } else {
            dma_sync_single_for_device(&dev, bus, 1000, synced)
        };
        let first = report(r.unwrap_err()).to_string();
        assert!(
            first.contains("syncs DMA memory with different direction"),
            "{first}"
        );
        let log = m.platform().take_log();
        let expect = 1 + usize::from(second.is_some());
        assert_eq!(log.len(), expect, "{log:#?}");
        assert_eq!(dma.debug().errors() - errors, expect);
        if let Some(text) = second {
            assert!(log[1].contains(text), "{log:#?}");
            assert!(
                log[1].contains(&format!("[mapped with {mapped}] [synced with {synced}]")),
                "{log:#?}"
            );
        }
        dma_unmap_single(&dev, bus, 1000, mapped).unwrap();
    }
    m.pages().free_pages(pfn, 1).unwrap();
}

#[test]
fn cpu_access_to_a_buffer_the_device_owns_is_reported() {
    let m = machine();
    let dma = dma(&m);
    let slab = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
    let dev = Device::new(&dma, "e1000", "0000:00:03.0");
    let other = Device::new(&dma, "ahci", "0000:00:1f.2");
    let p = slab.kmalloc(1500, GFP_KERNEL).unwrap().as_ptr();
    dma_cpu_access(&dev, p, 1500).unwrap();
    let bus = dma_map_single(&dev, p, 1500, DMA_FROM_DEVICE).unwrap();
    let line = line!() + 1;
    let r = report(dma_cpu_access(&dev, p.wrapping_add(14), 20).unwrap_err());
    let s = names(&m, &r, bus, line);
    assert!(
        s.contains("cpu touching a DMA buffer the device owns"),
        "{s}"
    );
    assert!(
        s.contains(&format!("[cpu address={:#x}] [len=20]", p as usize + 14)),
        "{s}"
    );
    assert!(s.contains("dma_sync_single_for_cpu()"), "the fix: {s}");
    // Bytes outside the buffer, or another device: fine.
    dma_cpu_access(&dev, p.wrapping_add(1500), 8).unwrap();
    dma_cpu_access(&other, p, 1500).unwrap();
    dma_sync_single_for_cpu(&dev, bus, 1500, DMA_FROM_DEVICE).unwrap();
    dma_cpu_access(&dev, p, 1500).unwrap();
    dma_sync_single_for_device(&dev, bus, 1500, DMA_FROM_DEVICE).unwrap();
    assert!(dma_cpu_access(&dev, p, 1).is_err());
    dma_unmap_single(&dev, bus, 1500, DMA_FROM_DEVICE).unwrap();
    dma_cpu_access(&dev, p, 1500).unwrap();
    // Coherent memory belongs to both at all times.
    let (c, cbus) = dma_alloc_coherent(&dev, 256, GFP_KERNEL).unwrap();
    dma_cpu_access(&dev, c.as_ptr(), 256).unwrap();
    dma_free_coherent(&dev, 256, c.as_ptr(), cbus).unwrap();
    assert_eq!(dma.debug().errors(), 2);
    slab.kfree(p).unwrap();
}

#[test]
fn sg_unmap_with_another_entry_count_is_reported() {
    setup!(m, dma, dev, pfn, cpu);
    let _ = cpu;
    dma_set_mask(&dev, DMA_BIT_MASK(64)).unwrap();
    let mut sgl = [
        Scatterlist::new(pfn, 0, 4096),
        Scatterlist::new(pfn.add(1), 0, 4096),
    ];
    assert_eq!(
        dma_map_sg(&dev, &mut sgl, DMA_TO_DEVICE).unwrap(),
        1,
        "merged"
    );
    let line = line!() + 1;
    let r = report(dma_unmap_sg(&dev, &mut sgl[..1], DMA_TO_DEVICE).unwrap_err());
    // Linux's line names the counts only, no device address.
    let s = names(&m, &r, DMA_MAPPING_ERROR, line);
    assert!(
        s.starts_with(
            "DMA-API: e1000 0000:00:03.0: device driver frees DMA sg list with different \
             entry count [map count=2] [unmap count=1] at "
        ),
        "{s}"
    );
    assert_eq!(dev.live_mappings(), 0);
    m.pages().free_pages(pfn, 1).unwrap();
}

#[test]
fn mappings_leaked_at_release_are_reported_and_their_slots_reclaimed() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "e1000", "0000:00:03.0");
    let pfn = m.pages().alloc_pages(GFP_KERNEL, 1).unwrap();
    let map_line = line!() + 1;
    let bus = dma_map_page(&dev, pfn, 0, 8192, DMA_FROM_DEVICE).unwrap();
    let (c, cbus) = dma_alloc_coherent(&dev, 64, GFP_KERNEL).unwrap();
    assert_eq!(dma.swiotlb().used_slots(), 4);
    let line = line!() + 1;
    let r = dev.release().unwrap_err();
    let text = m.platform().take_log();
    // One line per leaked mapping, then the summary.
    assert_eq!(text.len(), 3, "{text:#?}");
    let leaked: Vec<_> = text
        .iter()
        .filter(|l| l.contains("leaked at release"))
        .collect();
    assert_eq!(leaked.len(), 2, "{text:#?}");
    assert!(leaked.iter().any(|l| l.contains(&format!("{bus}"))
        && l.contains("[bounced: slots reclaimed]")
        && l.contains(&format!("dma_debug.rs:{map_line}:"))));
    assert!(leaked
        .iter()
        .any(|l| l.contains(&format!("{cbus}")) && l.contains("[mapped as coherent]")));
    let s = r.to_string();
    assert_eq!(text[2], s, "the summary comes last");
    assert!(s.starts_with("DMA-API: e1000 0000:00:03.0: "), "{s}");
    assert!(s.contains(&format!("dma_debug.rs:{line}:")), "{s}");
    assert!(s.contains(&format!("{bus}")), "{s}");
    assert!(
        s.contains(
            "device driver has pending DMA allocations while released from device [count=2]"
        ),
        "{s}"
    );
    assert!(
        s.contains("[size=8192 bytes] [mapped with DMA_FROM_DEVICE] [mapped as single]"),
        "the streaming one is shown: {s}"
    );
    assert!(
        s.contains(&format!("mapped at {}:{map_line}:", file!())),
        "{s}"
    );
    assert_eq!(dma.swiotlb().used_slots(), 0, "bounce slots reclaimed");
    assert_eq!(dma.debug().live_entries(), 0);
    // The coherent block stays allocated (the driver may still use it).
    fill(c.as_ptr(), 64, 1);
    let _ = cbus;
    m.pages().free_pages(pfn, 1).unwrap();
}

#[test]
fn a_device_dropped_with_mappings_is_reported_where_it_was_created() {
    let m = machine();
    let dma = dma(&m);
    let created = line!() + 1;
    let dev = Device::new(&dma, "e1000", "0000:00:03.0");
    let pfn = m.pages().alloc_pages(GFP_DMA32, 0).unwrap();
    let _bus = dma_map_page(&dev, pfn, 0, 100, DMA_TO_DEVICE).unwrap();
    drop(dev);
    let text = log(&m);
    assert!(
        text.contains("pending DMA allocations while released from device [count=1]"),
        "{text}"
    );
    assert!(text.contains(&format!("dma_debug.rs:{created}:")), "{text}");
    m.pages().free_pages(pfn, 0).unwrap();
}

#[test]
fn the_engine_faults_on_what_the_device_may_not_touch() {
    let m = machine();
    let dma = dma(&m);
    let dev = Device::new(&dma, "e1000", "0000:00:03.0");
    dma_set_mask(&dev, DMA_BIT_MASK(64)).unwrap();
    let eng = DmaEngine::new(&dev, 16).unwrap();
    let pfn = m.pages().alloc_pages(GFP_KERNEL, 1).unwrap();
    let cpu = m.pages().page_address(pfn).as_ptr::<u8>();
    fill(cpu, 8192, 0x42);
    let mut port = PatternPort::new(5);

    // Unmapped.
    let run = eng.run(&mut port);
    assert_eq!(run.failed, 0);
    let s = eng.post(DmaAddr(pfn.phys().0), 64, DESC_WRITE).unwrap();
    let line2 = line!() + 1;
    let run = eng.run(&mut port);
    assert_eq!((run.completed, run.failed), (0, 1));
    assert_eq!(
        eng.desc(s).flags & (DESC_ERR | DESC_ERR_FAULT),
        DESC_ERR | DESC_ERR_FAULT
    );
    let text = log(&m);
    assert!(
        text.contains(
            "DMA-API: e1000 0000:00:03.0: device writes to bus address range not mapped for it"
        ),
        "{text}"
    );
    assert!(text.contains(&format!("dma_debug.rs:{line2}:")), "{text}");
    assert_eq!(read(cpu, 64), vec![0x42; 64], "nothing written");

    // Against the direction.
    let bus = dma_map_single(&dev, cpu, 4096, DMA_TO_DEVICE).unwrap();
    eng.post(bus, 64, DESC_WRITE).unwrap();
    assert_eq!(eng.run(&mut port).failed, 1);
    assert!(log(&m).contains("device writes to a buffer mapped with DMA_TO_DEVICE"));
    eng.post(bus.add(100), 64, DESC_READ).unwrap();
    assert_eq!(eng.run(&mut port).completed, 1);
    dma_unmap_single(&dev, bus, 4096, DMA_TO_DEVICE).unwrap();

    // Beyond the mapping.
    let bus = dma_map_single(&dev, cpu, 4096, DMA_FROM_DEVICE).unwrap();
    eng.post(bus.add(4000), 200, DESC_WRITE).unwrap();
    assert_eq!(eng.run(&mut port).failed, 1);
    // Owned by the CPU.
    dma_sync_single_for_cpu(&dev, bus, 4096, DMA_FROM_DEVICE).unwrap();
    eng.post(bus, 64, DESC_WRITE).unwrap();
    assert_eq!(eng.run(&mut port).failed, 1);
    assert!(log(&m).contains("device writes to a DMA buffer the cpu owns"));
    dma_sync_single_for_device(&dev, bus, 4096, DMA_FROM_DEVICE).unwrap();
    eng.post(bus, 64, DESC_WRITE).unwrap();
    assert_eq!(eng.run(&mut port).completed, 1);
    dma_unmap_single(&dev, bus, 4096, DMA_FROM_DEVICE).unwrap();
    assert_eq!(read(cpu, 64), port_bytes(5, 0, 64));
    assert_eq!(read(cpu.wrapping_add(64), 4096 - 64), vec![0x42; 4096 - 64]);
    assert_eq!(dma.debug().errors(), 4);

    // Checks off: the device writes where it is told.
    eng.set_checks(false);
    eng.post(DmaAddr(pfn.phys().0 + 4096), 64, DESC_WRITE)
        .unwrap();
    assert_eq!(eng.run(&mut port).completed, 1);
    assert_ne!(read(cpu.wrapping_add(4096), 64), vec![0x42; 64]);
    assert_eq!(dma.debug().errors(), 4);
    drop(eng);
    m.pages().free_pages(pfn, 1).unwrap();
}

/// Bytes `from..from + len` of the stream of `seed`.
fn port_bytes(seed: u64, from: u64, len: u64) -> Vec<u8> {
    (from..from + len).map(|i| pattern_byte(seed, i)).collect()
}

#[test]
fn with_debugging_off_nothing_is_tracked_and_data_still_flows() {
    let m = machine();
    let dma = Dma::new(
        m.pages(),
        DmaConfig {
            debug: false,
            ..config()
        },
    )
    .unwrap();
    let dev = Device::new(&dma, "e1000", "0000:00:03.0");
    let pfn = m.pages().alloc_pages(GFP_KERNEL, 0).unwrap();
    let cpu = m.pages().page_address(pfn).as_ptr::<u8>();
    let bus = dma_map_single(&dev, cpu, PAGE_SIZE, DMA_FROM_DEVICE).unwrap();
    assert_eq!(dma.debug().live_entries(), 0);
    dma_cpu_access(&dev, cpu, 1).unwrap();
    let tlb = m
        .pages()
        .page_address(kmem::PhysAddr(bus.0).pfn())
        .as_ptr::<u8>();
    fill(tlb, PAGE_SIZE, 9);
    // A wrong size is not noticed, yet the pool's records keep it right.
    dma_unmap_single(&dev, bus, 1, DMA_FROM_DEVICE).unwrap();
    assert_eq!(read(cpu, PAGE_SIZE), vec![9; PAGE_SIZE]);
    assert_eq!(dma.swiotlb().used_slots(), 0);
    // A second unmap of a pool address is still refused by the pool.
    assert!(dma_unmap_single(&dev, bus, PAGE_SIZE, DMA_FROM_DEVICE).is_err());
    assert_eq!(dma.debug().errors(), 0);
    assert!(!log(&m).contains("DMA-API"));
    m.pages().free_pages(pfn, 0).unwrap();
}

#[test]
fn debug_entries_grow_beyond_the_preallocation() {
    let m = machine();
    let dma = Dma::new(
        m.pages(),
        DmaConfig {
            debug_prealloc_entries: 64,
            ..config()
        },
    )
    .unwrap();
    let dev = Device::new(&dma, "e1000", "0000:00:03.0");
    dma_set_mask(&dev, DMA_BIT_MASK(64)).unwrap();
    assert_eq!(dma.debug().capacity(), 64);
    let pfn = m.pages().alloc_pages(GFP_KERNEL, 0).unwrap();
    let mut maps = Vec::new();
    {
        let _irq = kmem_host::irq(); // grown with GFP_ATOMIC
        for i in 0..300 {
            maps.push(dma_map_page(&dev, pfn, i * 8, 8, DMA_TO_DEVICE).unwrap());
        }
    }
    assert_eq!(dma.debug().live_entries(), 300);
    assert!(dma.debug().capacity() >= 300);
    for (i, bus) in maps.into_iter().enumerate() {
        dma_unmap_page(&dev, bus, 8, DMA_TO_DEVICE).unwrap();
        let _ = i;
    }
    assert_eq!(dma.debug().live_entries(), 0);
    assert_eq!(dma.debug().errors(), 0);
    m.pages().free_pages(pfn, 0).unwrap();
}
