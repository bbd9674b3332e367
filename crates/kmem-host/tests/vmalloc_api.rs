//! The vmalloc API on the hosted machine, with real pointers: every
//! translation is checked against the frames actually mapped.

mod vmalloc_common;

use kmem::addr::{Pfn, VirtAddr, PAGE_SIZE};
use kmem::gfp::{__GFP_NOWARN, __GFP_ZERO, GFP_ATOMIC, GFP_KERNEL, GFP_NOWAIT};
use kmem::paging::{PageSize, PageTables, PteFlags};
use kmem::vmalloc::{VfreeError, VmFlags, VmallocConfig, VmallocError, PMD_SIZE};
use kmem_host::vmap::{self, HostVmap};
use vmalloc_common::*;

#[test]
fn vmalloc_pointers_are_real() {
    let m = machine();
    let vm = vmap::vmalloc(&m).unwrap();
    let p = vm.vmalloc(10 * PAGE_SIZE + 5).unwrap().as_ptr();
    assert!(vm.is_vmalloc_addr(p));
    check_mapping(&vm, p, 11 * PAGE_SIZE);
    // The guard page after the 11 pages is not mapped.
    assert!(unmapped(&vm, p as usize + 11 * PAGE_SIZE));
    let a = vm.find_vm_area(p).unwrap();
    assert_eq!(a.size, 12 * PAGE_SIZE);
    assert_eq!(a.requested_size, 10 * PAGE_SIZE + 5);
    assert_eq!(a.nr_pages, 11);
    assert!(a.flags.contains(VmFlags::ALLOC));
    assert!(a.caller.unwrap().file().ends_with("vmalloc_api.rs"));
    assert_eq!(vm.nr_vmalloc_pages(), 11);
    // Every page belongs to vmalloc.
    let pfn = vm.vmalloc_to_page(p).unwrap();
    assert_eq!(
        m.pages().frame(pfn).unwrap().owner(),
        kmem::vmalloc::OWNER_VMALLOC
    );
    vm.vfree(p).unwrap();
    assert!(unmapped(&vm, p as usize));
    assert_eq!(vm.nr_vmalloc_pages(), 0);
}

#[test]
fn vmalloc_gives_every_page_back() {
    let m = machine();
    let before = free_pages(&m);
    {
        let vm = vmap::vmalloc(&m).unwrap();
        let mut ptrs = Vec::new();
        for i in 1..50 {
            ptrs.push(vm.vmalloc(i * 3000).unwrap().as_ptr());
        }
        let h = vm.vmalloc_huge(5 * PMD_SIZE, GFP_KERNEL).unwrap().as_ptr();
        for p in ptrs {
            vm.vfree(p).unwrap();
        }
        vm.vfree(h).unwrap();
        vm.purge();
        vm.verify().unwrap();
        assert_eq!(vm.stats().busy_areas, 0);
    }
    // Pages, page tables and record pages all came back.
    assert_eq!(free_pages(&m), before);
}

#[test]
fn vzalloc_and_vcalloc_zero() {
    let m = machine();
    let vm = vmap::vmalloc(&m).unwrap();
    // Dirty some pages first so that reuse would show.
    let d = vm.vmalloc(64 * PAGE_SIZE).unwrap().as_ptr();
    unsafe { d.write_bytes(0xee, 64 * PAGE_SIZE) };
    vm.vfree(d).unwrap();
    for p in [
        vm.vzalloc(64 * PAGE_SIZE).unwrap().as_ptr(),
        vm.vcalloc(64, PAGE_SIZE).unwrap().as_ptr(),
        vm.vmalloc_user(3 * PAGE_SIZE).unwrap().as_ptr(),
    ] {
        let a = vm.find_vm_area(p).unwrap();
        let s = unsafe { std::slice::from_raw_parts(p, a.requested_size) };
        assert!(s.iter().all(|&b| b == 0));
        vm.vfree(p).unwrap();
    }
    let u = vm.vmalloc_user(PAGE_SIZE).unwrap().as_ptr();
    assert!(vm.find_vm_area(u).unwrap().flags.contains(VmFlags::USERMAP));
    vm.vfree(u).unwrap();
    assert!(matches!(
        vm.vmalloc_array(usize::MAX / 2, 3),
        Err(VmallocError::Overflow { .. })
    ));
    assert!(matches!(vm.vmalloc(0), Err(VmallocError::ZeroSize)));
    let too_big = 1usize << 40;
    assert!(matches!(
        vm.vmalloc(too_big),
        Err(VmallocError::ExceedsTotalRam { .. })
    ));
}

#[test]
fn vmalloc_32_stays_below_4g() {
    // RAM above 4 GiB exists in this layout.
    let m = machine_with(5 << 30, 2);
    let vm = vmap::vmalloc(&m).unwrap();
    let p = vm.vmalloc_32(256 * PAGE_SIZE).unwrap().as_ptr();
    for i in 0..256 {
        let pfn = vm.vmalloc_to_page(unsafe { p.add(i * PAGE_SIZE) }).unwrap();
        assert!(pfn.phys().0 < 1 << 32);
    }
    check_mapping(&vm, p, 256 * PAGE_SIZE);
    vm.vfree(p).unwrap();
}

#[test]
fn vmalloc_huge_maps_2m_pages() {
    let m = machine();
    let vm = vmap::vmalloc(&m).unwrap();
    let p = vm
        .vmalloc_huge(3 * PMD_SIZE + 1, GFP_KERNEL)
        .unwrap()
        .as_ptr();
    assert_eq!(p as usize % PMD_SIZE, 0);
    let a = vm.find_vm_area(p).unwrap();
    assert_eq!(a.page_order, 9);
    assert_eq!(a.nr_pages, 4 * 512);
    assert_eq!(a.size, 4 * PMD_SIZE + PAGE_SIZE);
    for i in 0..4 {
        let t = vm
            .tables()
            .translate(VirtAddr(p as usize + i * PMD_SIZE))
            .unwrap();
        assert_eq!(t.size, PageSize::Size2M);
    }
    check_mapping(&vm, p, 4 * PMD_SIZE);
    assert!(unmapped(&vm, p as usize + 4 * PMD_SIZE));
    // Below 2 MiB it is an ordinary vmalloc.
    let q = vm
        .vmalloc_huge(PMD_SIZE - PAGE_SIZE, GFP_KERNEL)
        .unwrap()
        .as_ptr();
    assert_eq!(vm.find_vm_area(q).unwrap().page_order, 0);
    vm.vfree(p).unwrap();
    vm.vfree(q).unwrap();
    assert_eq!(vm.stats().huge_allocs, 1);
}

#[test]
fn vmalloc_huge_falls_back_to_small_pages() {
    // 64 MiB machine: fragment it so no order-9 block is left.
    let m = machine_with(64 << 20, 2);
    let vm = vmap::vmalloc(&m).unwrap();
    let mut held = Vec::new();
    // __GFP_MEMALLOC: below the watermarks too, so no order-9 block is
    // left in the reserves either.
    while let Ok(p) = m
        .pages()
        .alloc_pages(GFP_KERNEL | __GFP_NOWARN | kmem::gfp::__GFP_MEMALLOC, 9)
    {
        held.push(p);
    }
    // Give back half of each block as order-0 pages: plenty of memory, no
    // order-9 block.
    for &b in &held {
        m.pages().split_page(b, 9).unwrap();
        for i in (0..512).step_by(2) {
            m.pages().free_pages(b.add(i), 0).unwrap();
        }
    }
    let p = vm.vmalloc_huge(PMD_SIZE, GFP_KERNEL).unwrap().as_ptr();
    let a = vm.find_vm_area(p).unwrap();
    assert_eq!(a.page_order, 0);
    assert_eq!(a.nr_pages, 512);
    check_mapping(&vm, p, PMD_SIZE);
    assert_eq!(vm.stats().huge_fallbacks, 1);
    vm.vfree(p).unwrap();
    for &b in &held {
        for i in (1..512).step_by(2) {
            m.pages().free_pages(b.add(i), 0).unwrap();
        }
    }
}

#[test]
fn vfree_refuses_what_is_not_a_live_area() {
    let m = machine();
    let vm = vmap::vmalloc(&m).unwrap();
    let p = vm.vmalloc(4 * PAGE_SIZE).unwrap().as_ptr();
    assert_eq!(vm.vfree(std::ptr::null()), Ok(()));
    assert!(matches!(
        vm.vfree(unsafe { p.add(PAGE_SIZE) }),
        Err(VfreeError::Interior { .. })
    ));
    assert!(matches!(
        vm.vfree(unsafe { p.add(8) }),
        Err(VfreeError::Unaligned { .. })
    ));
    // A page-allocator page through the direct map.
    let pfn = m.pages().alloc_pages(GFP_KERNEL, 0).unwrap();
    let d = m.pages().page_address(pfn).as_ptr::<u8>();
    assert!(matches!(
        vm.vfree(d),
        Err(VfreeError::NotVmalloc {
            direct_map: true,
            ..
        })
    ));
    m.pages().free_pages(pfn, 0).unwrap();
    vm.vfree(p).unwrap();
    // Freed, not yet purged: a double free.
    assert!(matches!(vm.vfree(p), Err(VfreeError::DoubleFree { .. })));
    vm.purge();
    assert!(matches!(vm.vfree(p), Err(VfreeError::NotAllocated { .. })));
    assert!(m
        .platform()
        .log_contains("Trying to vfree() nonexistent vm area"));
    assert_eq!(vm.stats().free_errors, 5);
    vm.verify().unwrap();
}

#[test]
fn vmalloc_context_rules() {
    let m = machine();
    let vm = vmap::vmalloc(&m).unwrap();
    {
        let _irq = kmem_host::irq();
        assert_eq!(vm.vmalloc(PAGE_SIZE), Err(VmallocError::InInterrupt));
        assert_eq!(
            vm.vmalloc_gfp(PAGE_SIZE, GFP_ATOMIC),
            Err(VmallocError::InInterrupt)
        );
    }
    {
        let _p = kmem_host::preempt_disable();
        // Blocking mask with preemption off: the might-sleep bug.
        assert!(matches!(
            vm.vmalloc(PAGE_SIZE),
            Err(VmallocError::SleepInAtomic(_))
        ));
        // Non-blocking masks are fine (Linux 6.17+).
        let a = vm.vmalloc_gfp(3 * PAGE_SIZE, GFP_ATOMIC).unwrap().as_ptr();
        let b = vm.vmalloc_gfp(3 * PAGE_SIZE, GFP_NOWAIT).unwrap().as_ptr();
        check_mapping(&vm, a, 3 * PAGE_SIZE);
        check_mapping(&vm, b, 3 * PAGE_SIZE);
        drop(_p);
        vm.vfree(a).unwrap();
        vm.vfree(b).unwrap();
    }
    assert!(m
        .platform()
        .log_contains("BUG: sleeping function called from invalid context"));
    {
        let _nmi = kmem_host::nmi();
        assert_eq!(
            vm.vmalloc_gfp(PAGE_SIZE, GFP_ATOMIC),
            Err(VmallocError::InNmi)
        );
    }
    // Unsupported gfp bits are dropped with a warning, as Linux does.
    let p = vm
        .vmalloc_gfp(PAGE_SIZE, GFP_KERNEL | kmem::gfp::__GFP_COMP)
        .unwrap();
    assert!(m.platform().log_contains("Unexpected gfp"));
    vm.vfree(p.as_ptr()).unwrap();
}

#[test]
fn vfree_in_interrupt_is_deferred() {
    let m = machine();
    let vm = vmap::vmalloc(&m).unwrap();
    let a = vm.vmalloc(2 * PAGE_SIZE).unwrap().as_ptr();
    let b = vm.vmalloc(PAGE_SIZE).unwrap().as_ptr();
    {
        let _irq = kmem_host::irq();
        vm.vfree(a).unwrap();
        // Double deferred free is caught.
        assert!(matches!(vm.vfree(a), Err(VfreeError::DoubleFree { .. })));
        let _s = kmem_host::softirq();
        vm.vfree(b).unwrap();
    }
    // Still mapped until drained.
    assert!(!unmapped(&vm, a as usize));
    assert_eq!(vm.stats().deferred_frees, 2);
    {
        let _nmi = kmem_host::nmi();
        let c = a;
        assert_eq!(vm.vfree(c), Err(VfreeError::InNmi));
    }
    // The next call in process context drains the queue.
    let c = vm.vmalloc(PAGE_SIZE).unwrap().as_ptr();
    assert!(unmapped(&vm, a as usize));
    assert!(unmapped(&vm, b as usize));
    assert_eq!(vm.stats().busy_areas, 1);
    vm.vfree(c).unwrap();
}

#[test]
fn vmap_and_vunmap() {
    let m = machine();
    let vm = vmap::vmalloc(&m).unwrap();
    let pages: Vec<Pfn> = (0..8)
        .map(|_| m.pages().alloc_pages(GFP_KERNEL, 0).unwrap())
        .collect();
    let p = vm
        .vmap(&pages, VmFlags::MAP, PteFlags::KERNEL)
        .unwrap()
        .as_ptr();
    for (i, pfn) in pages.iter().enumerate() {
        assert_eq!(
            vm.vmalloc_to_page(unsafe { p.add(i * PAGE_SIZE) }),
            Some(*pfn)
        );
    }
    check_mapping(&vm, p, 8 * PAGE_SIZE);
    let a = vm.find_vm_area(p).unwrap();
    assert_eq!(a.nr_pages, 0);
    assert!(a.flags.contains(VmFlags::MAP));
    // vfree would be allowed (Linux allows it); vunmap of a vmalloc area is
    // refused.
    let q = vm.vmalloc(PAGE_SIZE).unwrap().as_ptr();
    assert!(matches!(vm.vunmap(q), Err(VfreeError::WrongKind { .. })));
    vm.vfree(q).unwrap();
    vm.vunmap(p).unwrap();
    assert!(unmapped(&vm, p as usize));
    // The pages are still the caller's.
    for pfn in &pages {
        m.pages().free_pages(*pfn, 0).unwrap();
    }
    // VM_MAP_PUT_PAGES hands the pages over: vfree frees them.
    let before = free_pages(&m);
    let pages: Vec<Pfn> = (0..4)
        .map(|_| m.pages().alloc_pages(GFP_KERNEL, 0).unwrap())
        .collect();
    let p = vm
        .vmap(
            &pages,
            VmFlags::MAP | VmFlags::MAP_PUT_PAGES,
            PteFlags::KERNEL,
        )
        .unwrap()
        .as_ptr();
    assert_eq!(vm.find_vm_area(p).unwrap().nr_pages, 4);
    vm.vfree(p).unwrap();
    assert_eq!(free_pages(&m), before);
    assert!(matches!(
        vm.vmap(&pages[..1], VmFlags::FLUSH_RESET_PERMS, PteFlags::KERNEL),
        Err(VmallocError::BadFlags { .. })
    ));
}

#[test]
fn vm_map_ram_blocks_and_big_areas() {
    let m = machine();
    let vm = vmap::vmalloc(&m).unwrap();
    let pages: Vec<Pfn> = (0..100)
        .map(|_| m.pages().alloc_pages(GFP_KERNEL, 0).unwrap())
        .collect();
    // Small ones share a per-CPU block, back to back, no guard pages.
    kmem_host::set_cpu(0);
    let a = vm.vm_map_ram(&pages[..3], -1).unwrap().as_ptr();
    let b = vm.vm_map_ram(&pages[3..4], -1).unwrap().as_ptr();
    assert_eq!(
        b as usize,
        a as usize + 4 * PAGE_SIZE,
        "3 pages round up to 4"
    );
    assert_eq!(vm.nr_vmap_blocks(), 1);
    check_mapping(&vm, a, 3 * PAGE_SIZE);
    for (i, pfn) in pages[..3].iter().enumerate() {
        assert_eq!(
            vm.vmalloc_to_page(unsafe { a.add(i * PAGE_SIZE) }),
            Some(*pfn)
        );
    }
    // A big one gets its own area.
    let c = vm.vm_map_ram(&pages[..100], -1).unwrap().as_ptr();
    check_mapping(&vm, c, 100 * PAGE_SIZE);
    assert!(vmallocinfo(&vm).contains(" vm_map_ram\n"));
    // Wrong frees are refused.
    assert!(matches!(vm.vfree(a), Err(VfreeError::WrongKind { .. })));
    assert!(matches!(vm.vfree(c), Err(VfreeError::WrongKind { .. })));
    vm.vm_unmap_ram(a, 3).unwrap();
    assert!(matches!(
        vm.vm_unmap_ram(a, 3),
        Err(VfreeError::DoubleFree { .. })
    ));
    vm.vm_unmap_ram(b, 1).unwrap();
    vm.vm_unmap_ram(c, 100).unwrap();
    assert!(unmapped(&vm, a as usize) && unmapped(&vm, c as usize));
    // Fill a block past its end: a new block starts, the old one is freed
    // once all its pieces are unmapped.
    let bits = vm.vmap_block_pages();
    let mut v = Vec::new();
    for _ in 0..(bits / 64 + 1) {
        v.push(vm.vm_map_ram(&pages[..64], -1).unwrap().as_ptr());
    }
    assert!(vm.stats().vmap_blocks >= 2);
    for p in v {
        vm.vm_unmap_ram(p, 64).unwrap();
    }
    vm.vm_unmap_aliases();
    assert_eq!(vm.stats().lazy_areas, 0);
    vm.verify().unwrap();
    for pfn in pages {
        m.pages().free_pages(pfn, 0).unwrap();
    }
}

#[test]
fn vrealloc_keeps_data() {
    let m = machine();
    let vm = vmap::vmalloc(&m).unwrap();
    let p = vm
        .vrealloc(std::ptr::null(), 100, GFP_KERNEL)
        .unwrap()
        .unwrap()
        .as_ptr();
    unsafe { p.write_bytes(7, 100) };
    // Grow within the page: in place.
    let q = vm.vrealloc(p, 4000, GFP_KERNEL).unwrap().unwrap().as_ptr();
    assert_eq!(p, q);
    // Grow past the area: moved, data kept.
    let r = vm
        .vrealloc(q, 5 * PAGE_SIZE, GFP_KERNEL | __GFP_ZERO)
        .unwrap()
        .unwrap()
        .as_ptr();
    assert_ne!(r, q);
    let s = unsafe { std::slice::from_raw_parts(r, 100) };
    assert!(s.iter().all(|&b| b == 7));
    assert!(matches!(vm.vfree(q), Err(VfreeError::DoubleFree { .. })));
    unsafe { r.add(4 * PAGE_SIZE).write(9) };
    // Shrink: tail pages freed, zeroed cut with __GFP_ZERO.
    let before = vm.nr_vmalloc_pages();
    let t = vm
        .vrealloc(r, PAGE_SIZE + 10, GFP_KERNEL | __GFP_ZERO)
        .unwrap()
        .unwrap()
        .as_ptr();
    assert_eq!(t, r);
    assert_eq!(vm.nr_vmalloc_pages(), before - 3);
    assert!(unmapped(&vm, r as usize + 2 * PAGE_SIZE));
    assert_eq!(unsafe { r.add(PAGE_SIZE + 10).read() }, 0);
    // Grow back in place: new pages mapped, zeroed.
    let u = vm
        .vrealloc(t, 5 * PAGE_SIZE, GFP_KERNEL | __GFP_ZERO)
        .unwrap()
        .unwrap()
        .as_ptr();
    assert_eq!(u, t);
    check_mapping(&vm, u, 5 * PAGE_SIZE);
    assert_eq!(vm.find_vm_area(u).unwrap().nr_pages, 5);
    // Size 0 frees.
    assert_eq!(vm.vrealloc(u, 0, GFP_KERNEL), Ok(None));
    assert!(unmapped(&vm, u as usize));
    vm.verify().unwrap();
}

#[test]
fn lazy_purge_threshold_and_batched_flush() {
    let m = machine();
    let host = HostVmap::new(&m, 1 << 30).unwrap();
    let mut config = host.config();
    config.lazy_max_pages = Some(64);
    let vm = vmap::from_host(&m, host, config).unwrap();
    let flushes0 = vm.tables().tables().stats();
    for _ in 0..30 {
        let p = vm.vmalloc(PAGE_SIZE).unwrap().as_ptr();
        vm.vfree(p).unwrap();
    }
    // 30 frees of 2 pages (guard included) pass 64 once: one purge with
    // one flush.
    let st = vm.stats();
    assert_eq!(st.purges, 0);
    assert_eq!(st.lazy_pages, 60);
    for _ in 0..3 {
        let p = vm.vmalloc(PAGE_SIZE).unwrap().as_ptr();
        vm.vfree(p).unwrap();
    }
    let st = vm.stats();
    assert_eq!(st.purges, 1);
    assert_eq!(st.purged_areas, 33);
    let f = vm.tables().tables().stats();
    let flushes =
        (f.range_flushes + f.full_flushes) - (flushes0.range_flushes + flushes0.full_flushes);
    assert_eq!(flushes, 1, "one batched flush per purge");
    assert_eq!(
        st.tables_freed, 0,
        "page tables are kept, as Linux keeps them"
    );
    // Default threshold: fls(2 CPUs) * 32 MiB.
    let vm2 = vmap::in_memory(&m).unwrap();
    assert_eq!(vm2.lazy_max_pages(), 2 * 8192);
    assert_eq!(VmallocConfig::x86_64().start, 0xffff_c900_0000_0000);
}

/// Page tables made for vmalloc stay after the purge, as Linux's do: a
/// second allocation over the same range writes leaves only, and the
/// tables' frames stay allocated. With `free_page_tables` the purge gives
/// every emptied table back, and the page allocator's free count returns
/// to what it was before the first allocation.
#[test]
fn page_tables_kept_unless_configured() {
    for free_tables in [false, true] {
        let m = machine();
        // The default keeps them.
        let config = if free_tables {
            VmallocConfig {
                free_page_tables: true,
                ..VmallocConfig::x86_64()
            }
        } else {
            VmallocConfig::x86_64()
        };
        let vm = vmap::in_memory_with(&m, config, &[]).unwrap();
        let free0 = m.pages().nr_free_pages_with_pcp();
        let t0 = vm.tables().stats();
        // 3 MiB: two page tables (the range starts 2 MiB aligned), one
        // page directory, one PDPT under the root.
        let size = 3 << 20;
        let p = vm.vmalloc(size).unwrap();
        let t1 = vm.tables().stats();
        let made = t1.tables - t0.tables;
        assert!(made >= 3, "{t0:?} -> {t1:?}");
        vm.vfree(p.as_ptr()).unwrap();
        vm.purge();
        let t2 = vm.tables().stats();
        assert_eq!(
            vm.stats().tables_freed as usize,
            t2.tables_freed - t0.tables_freed
        );
        if free_tables {
            assert_eq!(t2.tables, t0.tables, "every emptied table freed");
            assert_eq!(m.pages().nr_free_pages_with_pcp(), free0);
        } else {
            assert_eq!(t2.tables, t1.tables, "tables kept");
            assert_eq!(t2.tables_freed, t0.tables_freed);
            assert_eq!(m.pages().nr_free_pages_with_pcp(), free0 - made);
        }
        // Again over the same range: lowest fit gives the same address.
        let q = vm.vmalloc(size).unwrap();
        assert_eq!(q, p);
        let t3 = vm.tables().stats();
        assert_eq!(t3.leaves_set - t2.leaves_set, size / PAGE_SIZE);
        let remade = t3.tables_allocated - t2.tables_allocated;
        assert_eq!(remade, if free_tables { made } else { 0 });
        vm.vfree(q.as_ptr()).unwrap();
        vm.purge();
        vm.verify().unwrap();
    }
}

#[test]
fn vmallocinfo_format() {
    let m = machine();
    let vm = vmap::vmalloc(&m).unwrap();
    let p = vm.vmalloc(4 * PAGE_SIZE).unwrap().as_ptr();
    let pages: Vec<Pfn> = (0..2)
        .map(|_| m.pages().alloc_pages(GFP_KERNEL, 0).unwrap())
        .collect();
    let q = vm
        .vmap(&pages, VmFlags::MAP, PteFlags::KERNEL)
        .unwrap()
        .as_ptr();
    let r = vm.vmalloc(PAGE_SIZE).unwrap().as_ptr();
    vm.vfree(r).unwrap();
    let info = vmallocinfo(&vm);
    let lines: Vec<&str> = info.lines().collect();
    assert_eq!(lines.len(), 3, "{info}");
    let line = format!(
        "0x{:016x}-0x{:016x}   20480 {}:",
        p as usize,
        p as usize + 5 * PAGE_SIZE,
        file!()
    );
    assert!(lines[0].starts_with(&line), "{}", lines[0]);
    assert!(lines[0].ends_with(" pages=4 vmalloc N0=4"), "{}", lines[0]);
    assert!(lines[1].starts_with(&format!("0x{:016x}-", q as usize)));
    assert!(lines[1].ends_with(" vmap"), "{}", lines[1]);
    assert!(lines[1].contains("   12288 "));
    assert_eq!(
        lines[2],
        format!(
            "0x{:016x}-0x{:016x}    8192 unpurged vm_area",
            r as usize,
            r as usize + 2 * PAGE_SIZE
        )
    );
    let mut mi = String::new();
    vm.meminfo(&mut mi).unwrap();
    assert!(mi.contains("VmallocUsed:          16 kB"), "{mi}");
    vm.vfree(p).unwrap();
    vm.vunmap(q).unwrap();
    for pfn in pages {
        m.pages().free_pages(pfn, 0).unwrap();
    }
}

/// Linux's `alloc_vmap_area` purges the lazily freed areas once before it
/// gives up, if the caller may block: a range full of lazy areas fails a
/// GFP_ATOMIC request (counted, no purge) and serves a GFP_KERNEL one after
/// one purge, for vmalloc and for `vm_map_ram`'s blocks alike.
#[test]
fn a_full_range_is_purged_once_for_callers_that_may_block() {
    let m = machine();
    // 8 MiB: room for one of vm_map_ram's 4 MiB blocks once it is empty.
    const RANGE: usize = 8 << 20;
    let host = HostVmap::new(&m, RANGE).unwrap();
    let mut config = host.config();
    config.lazy_max_pages = Some(1 << 20);
    let vm = vmap::from_host(&m, host, config).unwrap();
    // One area (plus its guard page) fills the range; freed, it stays
    // lazily unmapped and still holds the space.
    let fill = |vm: &kmem::vmalloc::Vmalloc<'_, _, _>| {
        let p = vm.vmalloc(RANGE - PAGE_SIZE).unwrap().as_ptr();
        vm.vfree(p).unwrap();
        assert_eq!(vm.stats().lazy_areas, 1);
    };
    fill(&vm);
    let st0 = vm.stats();
    let e = vm
        .vmalloc_gfp(PAGE_SIZE, GFP_ATOMIC | __GFP_NOWARN)
        .unwrap_err();
    assert!(matches!(e, VmallocError::NoVirtualSpace { .. }), "{e}");
    let st = vm.stats();
    assert_eq!(st.va_failures, st0.va_failures + 1);
    assert_eq!(st.purges, st0.purges, "an atomic caller does not purge");
    assert_eq!(st.lazy_areas, 1);

    let p = vm.vmalloc_gfp(PAGE_SIZE, GFP_KERNEL).unwrap().as_ptr();
    let st = vm.stats();
    assert_eq!(st.va_failures, st0.va_failures + 2);
    assert_eq!(st.purges, st0.purges + 1);
    assert_eq!(st.lazy_areas, 0);
    check_mapping(&vm, p, PAGE_SIZE);
    vm.vfree(p).unwrap();
    vm.purge();

    // vm_map_ram's per-CPU block: the same purge, then a new block.
    fill(&vm);
    let st0 = vm.stats();
    let page = m.pages().alloc_pages(GFP_KERNEL, 0).unwrap();
    let v = vm.vm_map_ram(&[page], -1).unwrap().as_ptr();
    let st = vm.stats();
    assert_eq!(st.va_failures, st0.va_failures + 1);
    assert_eq!(st.purges, st0.purges + 1);
    assert_eq!(
        vm.vmalloc_to_page(v),
        Some(page),
        "the mapping is live after the retry"
    );
    vm.vm_unmap_ram(v, 1).unwrap();
    vm.purge();
    m.pages().free_pages(page, 0).unwrap();
    vm.verify().unwrap();
}
