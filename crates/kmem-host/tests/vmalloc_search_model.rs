//! vmalloc's normal paths against an interval model (written in review;
//! nothing failed): the free-space search returns Linux's lowest fit
//! (`find_vmap_lowest_match`), placement respects alignment, ranges and
//! guard pages, an allocation never fails while a wide enough gap exists
//! after purging, `nr_vmalloc_pages` and the lazy count match the model
//! across vmalloc/huge/vrealloc/vmap/vm_map_ram, two and four threads
//! allocating, freeing and purging leave nothing behind, `vmalloc_node`
//! takes its pages from the node, and a purged huge area leaves no stale
//! TLB entry for the small areas reusing its range.

mod vmalloc_common;

use kmem::addr::{Pfn, PhysAddr, VirtAddr, PAGE_SIZE};
use kmem::gfp::{__GFP_NOWARN, GFP_KERNEL};
use kmem::page::{Region, RegionKind};
use kmem::paging::{PageTables, PteFlags};
use kmem::vmalloc::{VmFlags, PMD_SIZE};
use kmem_host::vmap::{self, HostVmalloc, HostVmap};
use kmem_host::{Machine, MachineConfig};
use std::collections::BTreeMap;
use vmalloc_common::*;

fn rng(mut seed: u64) -> impl FnMut() -> usize {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed as usize
    }
}

fn small_vm(m: &Machine, range: usize, lazy: usize) -> HostVmalloc<'_> {
    let host = HostVmap::new(m, range).unwrap();
    let mut config = host.config();
    config.lazy_max_pages = Some(lazy);
    vmap::from_host(m, host, config).unwrap()
}

fn two_node_machine() -> Machine {
    let r = |s: u64, e: u64, node: u8| Region {
        start: PhysAddr(s),
        end: PhysAddr(e),
        kind: RegionKind::Usable,
        node,
    };
    Machine::new(MachineConfig {
        ram_bytes: 512 << 20,
        nr_cpus: 2,
        regions: Some(vec![r(1 << 20, 256 << 20, 0), r(256 << 20, 512 << 20, 1)]),
        ..Default::default()
    })
    .expect("machine builds")
}

fn nodes_of(vm: &HostVmalloc<'_>, p: *const u8, pages: usize) -> [usize; 2] {
    let mut n = [0; 2];
    for i in 0..pages {
        let pfn = vm.vmalloc_to_page(unsafe { p.add(i * PAGE_SIZE) }).unwrap();
        n[vm.pages().frame(pfn).unwrap().node().min(1)] += 1;
    }
    n
}

#[test]
fn vmalloc_node_pages_come_from_the_node() {
    let m = two_node_machine();
    let vm = vmap::vmalloc(&m).unwrap();
    for node in [0i32, 1] {
        for pages in [1usize, 3, 17, 64, 300] {
            let p = vm.vmalloc_node(pages * PAGE_SIZE, node).unwrap().as_ptr();
            let n = nodes_of(&vm, p, pages);
            assert_eq!(
                n[node as usize], pages,
                "vmalloc_node({pages} pages, {node}): {n:?}"
            );
            vm.vfree(p).unwrap();
        }
        let p = vm
            .vmalloc_huge_node(2 * PMD_SIZE, GFP_KERNEL, node)
            .unwrap()
            .as_ptr();
        let n = nodes_of(&vm, p, 2 * PMD_SIZE / PAGE_SIZE);
        assert_eq!(n[node as usize], 1024, "vmalloc_huge_node({node}): {n:?}");
        vm.vfree(p).unwrap();
    }
}

/// Live-interval model of the allocator's busy ranges.
#[derive(Clone, Debug)]
enum Kind {
    Vmalloc { size: usize, seed: u8, pages: usize },
    Vmap { pages: Vec<Pfn> },
    MapRam { pages: Vec<Pfn> },
}

fn fill(p: *mut u8, size: usize, seed: u8) {
    for i in (0..size).step_by(509) {
        unsafe {
            p.add(i)
                .write((i as u8).wrapping_mul(31).wrapping_add(seed))
        };
    }
    if size > 0 {
        unsafe { p.add(size - 1).write(seed) };
    }
}

fn check_fill(p: *const u8, size: usize, seed: u8) {
    for i in (0..size).step_by(509) {
        if i == size - 1 {
            continue;
        }
        let b = unsafe { p.add(i).read() };
        assert_eq!(
            b,
            (i as u8).wrapping_mul(31).wrapping_add(seed),
            "byte {i} of {p:?}"
        );
    }
    assert_eq!(unsafe { p.add(size - 1).read() }, seed);
}

/// Gaps between busy areas (what the free tree becomes after a purge).
fn busy_gaps(vm: &HostVmalloc<'_>) -> Vec<(usize, usize)> {
    let (lo, hi) = (vm.config().start, vm.config().end);
    let mut busy = Vec::new();
    vm.for_each_area(|a| busy.push((a.addr.0, a.addr.0 + a.size)));
    let mut gaps = Vec::new();
    let mut cur = lo;
    for (s, e) in busy {
        if s > cur {
            gaps.push((cur, s));
        }
        cur = cur.max(e);
    }
    if hi > cur {
        gaps.push((cur, hi));
    }
    gaps
}

/// Would Linux's search (length widened by align - 1 when align > page)
/// surely find room in [vstart, vend) once everything lazy is purged?
fn surely_fits(gaps: &[(usize, usize)], size: usize, align: usize, vs: usize, ve: usize) -> bool {
    let length = if align <= PAGE_SIZE || ve - vs == size {
        size
    } else {
        size + align - 1
    };
    gaps.iter().any(|&(s, e)| {
        let s2 = s.max(vs);
        let e2 = e.min(ve);
        // a gap entirely inside the range, with the widened length
        s >= vs && e <= ve && e - s >= length && e2 > s2
    })
}

fn lowest_fit(
    gaps: &[(usize, usize)],
    size: usize,
    align: usize,
    vs: usize,
    ve: usize,
) -> Option<usize> {
    gaps.iter().find_map(|&(s, e)| {
        let a = s.max(vs).next_multiple_of(align);
        (a + size <= e.min(ve)).then_some(a)
    })
}

#[test]
fn random_ops_against_interval_model() {
    for seed in [0xdead_beef_1234_5678u64, 7, 99, 12345, 0xabcdef] {
        random_ops(seed, 4000);
    }
}

fn random_ops(rseed: u64, steps: usize) {
    let m = machine_with(256 << 20, 2);
    let before = free_pages(&m);
    let mut pool: Vec<Pfn> = (0..300)
        .map(|_| m.pages().alloc_pages(GFP_KERNEL, 0).unwrap())
        .collect();
    {
        let range = 96 << 20;
        let vm = small_vm(&m, range, 256);
        let (lo, hi) = (vm.config().start, vm.config().end);
        let mut r = rng(rseed);
        let mut model: BTreeMap<usize, Kind> = BTreeMap::new();
        let mut seed = 0u8;
        for step in 0..steps {
            let op = r() % 24;
            let ctx = format!("step {step} op {op}");
            match op {
                0..=6 => {
                    // vmalloc / node_range with sub-range + alignment
                    let bytes = r() % (48 * PAGE_SIZE) + 1;
                    let (align, vs, ve, flags) = if r().is_multiple_of(3) {
                        let align = PAGE_SIZE << (r() % 10);
                        let a = lo + (r() % 64) * (1 << 20);
                        let b = (a + (r() % 48 + 1) * (1 << 20)).min(hi);
                        let flags = if r().is_multiple_of(4) {
                            VmFlags::NO_GUARD
                        } else {
                            VmFlags::empty()
                        };
                        (align, a, b, flags)
                    } else {
                        (1, lo, hi, VmFlags::empty())
                    };
                    let guard = if flags.contains(VmFlags::NO_GUARD) {
                        0
                    } else {
                        PAGE_SIZE
                    };
                    let asize = bytes.next_multiple_of(PAGE_SIZE) + guard;
                    let gaps = busy_gaps(&vm);
                    let mut free = Vec::new();
                    vm.for_each_free(|s, e| free.push((s.0, e.0)));
                    let sure = surely_fits(&gaps, asize, align.max(PAGE_SIZE), vs, ve);
                    let res = vm.vmalloc_node_range(
                        bytes,
                        align,
                        vs,
                        ve,
                        GFP_KERNEL | __GFP_NOWARN,
                        PteFlags::KERNEL,
                        flags,
                        -1,
                    );
                    match res {
                        Ok(p) => {
                            let p = p.as_ptr();
                            let a = p as usize;
                            assert!(a.is_multiple_of(align), "{ctx}: {a:#x} not aligned to {align:#x}");
                            assert!(a >= vs && a + asize <= ve, "{ctx}: {a:#x}+{asize:#x} outside {vs:#x}-{ve:#x}");
                            // Lowest fit (after purge) can't be above a wide gap.
                            if align <= PAGE_SIZE {
                                // Exactly the lowest fit: in the free tree
                                // if any, else in the gaps after a purge.
                                let want = lowest_fit(&free, asize, PAGE_SIZE, vs, ve)
                                    .or_else(|| lowest_fit(&gaps, asize, PAGE_SIZE, vs, ve));
                                assert_eq!(Some(a), want, "{ctx}: not the lowest fit ({bytes:#x} in {vs:#x}-{ve:#x}); free {free:x?}");
                            } else {
                                let length = asize + align - 1;
                                let wide = |v: &[(usize, usize)]| v.iter().find(|&&(s, e)| e.min(ve) > s.max(vs) && e - s.max(vs) >= length && s.max(vs).next_multiple_of(align) + asize <= ve).map(|&(s, _)| s.max(vs).next_multiple_of(align));
                                if let Some(w) = wide(&free) {
                                    assert!(a <= w, "{ctx}: {a:#x} above the lowest wide fit {w:#x}");
                                }
                            }
                            let info = vm.find_vm_area(p).unwrap();
                            assert_eq!(info.size, asize, "{ctx}");
                            seed = seed.wrapping_add(1);
                            fill(p, bytes, seed);
                            model.insert(a, Kind::Vmalloc { size: bytes, seed, pages: bytes.div_ceil(PAGE_SIZE) });
                        }
                        Err(e) => assert!(!sure, "{ctx}: {bytes:#x} align {align:#x} in {vs:#x}-{ve:#x} failed ({e}) though a gap fits; gaps {gaps:x?}"),
                    }
                }
                7 => {
                    let bytes = PMD_SIZE + r() % (3 * PMD_SIZE);
                    let gaps = busy_gaps(&vm);
                    let hsize = bytes.next_multiple_of(PMD_SIZE) + PAGE_SIZE;
                    let va_ok = surely_fits(&gaps, hsize, PMD_SIZE, lo, hi);
                    let fb0 = vm.stats().huge_fallbacks;
                    if let Ok(p) = vm.vmalloc_huge(bytes, GFP_KERNEL | __GFP_NOWARN) {
                        let p = p.as_ptr();
                        let info = vm.find_vm_area(p).unwrap();
                        if vm.stats().huge_fallbacks != fb0 && va_ok {
                            let order9 = m.pages().alloc_pages(GFP_KERNEL | __GFP_NOWARN, 9);
                            eprintln!("{ctx}: huge fallback with VA room; order-9 now: {:?}; free pages {}", order9.is_ok(), m.pages().nr_free_pages());
                            if let Ok(pf) = order9 {
                                m.pages().free_pages(pf, 9).unwrap();
                            }
                        }
                        let pages = if info.page_order == 9 {
                            assert_eq!(p as usize % PMD_SIZE, 0, "{ctx}");
                            bytes.next_multiple_of(PMD_SIZE) / PAGE_SIZE
                        } else {
                            bytes.div_ceil(PAGE_SIZE)
                        };
                        assert_eq!(info.nr_pages, pages, "{ctx}");
                        seed = seed.wrapping_add(1);
                        fill(p, bytes, seed);
                        model.insert(
                            p as usize,
                            Kind::Vmalloc {
                                size: bytes,
                                seed,
                                pages,
                            },
                        );
                    }
                }
                8..=14 => {
                    if model.is_empty() {
                        continue;
                    }
                    let k = *model.keys().nth(r() % model.len()).unwrap();
                    let p = k as *mut u8;
                    match model.remove(&k).unwrap() {
                        Kind::Vmalloc { size, seed, .. } => {
                            check_fill(p, size, seed);
                            vm.vfree(p).unwrap();
                        }
                        Kind::Vmap { pages } => {
                            vm.vunmap(p).unwrap();
                            pool.extend(pages);
                        }
                        Kind::MapRam { pages } => {
                            vm.vm_unmap_ram(p, pages.len()).unwrap();
                            pool.extend(pages);
                        }
                    }
                    assert!(unmapped(&vm, k), "{ctx}");
                }
                15 | 16 => {
                    let n = r() % 8 + 1;
                    if pool.len() >= n {
                        let pages = pool.split_off(pool.len() - n);
                        match vm.vmap(&pages, VmFlags::MAP, PteFlags::KERNEL) {
                            Ok(p) => {
                                check_mapping(&vm, p.as_ptr(), n * PAGE_SIZE);
                                model.insert(p.as_ptr() as usize, Kind::Vmap { pages });
                            }
                            Err(_) => pool.extend(pages),
                        }
                    }
                }
                17 | 18 => {
                    let n = if r().is_multiple_of(5) {
                        65 + r() % 30
                    } else {
                        r() % 64 + 1
                    };
                    if pool.len() >= n {
                        let pages = pool.split_off(pool.len() - n);
                        kmem_host::set_cpu(r() % 2);
                        match vm.vm_map_ram(&pages, -1) {
                            Ok(p) => {
                                for (i, pfn) in pages.iter().enumerate() {
                                    assert_eq!(
                                        vm.vmalloc_to_page(unsafe {
                                            p.as_ptr().add(i * PAGE_SIZE)
                                        }),
                                        Some(*pfn),
                                        "{ctx}"
                                    );
                                }
                                check_mapping(&vm, p.as_ptr(), n * PAGE_SIZE);
                                model.insert(p.as_ptr() as usize, Kind::MapRam { pages });
                            }
                            Err(_) => pool.extend(pages),
                        }
                    }
                }
                19 | 20 => {
                    // vrealloc
                    let Some((&k, kind)) = model.iter().nth(if model.is_empty() {
                        0
                    } else {
                        r() % model.len()
                    }) else {
                        continue;
                    };
                    let Kind::Vmalloc { size, seed: s0, .. } = kind.clone() else {
                        continue;
                    };
                    let info = vm.find_vm_area(k as *const u8).unwrap();
                    if info.page_order != 0
                        || !info.flags.contains(VmFlags::ALLOC)
                        || info.flags.contains(VmFlags::NO_GUARD)
                    {
                        continue;
                    }
                    let bytes = r() % (48 * PAGE_SIZE) + 1;
                    if let Ok(Some(q)) =
                        vm.vrealloc(k as *const u8, bytes, GFP_KERNEL | __GFP_NOWARN)
                    {
                        let q = q.as_ptr();
                        check_fill_prefix(q, size.min(bytes), s0);
                        model.remove(&k);
                        seed = seed.wrapping_add(1);
                        fill(q, bytes, seed);
                        let info = vm.find_vm_area(q).unwrap();
                        model.insert(
                            q as usize,
                            Kind::Vmalloc {
                                size: bytes,
                                seed,
                                pages: info.nr_pages,
                            },
                        );
                        assert!(info.nr_pages >= bytes.div_ceil(PAGE_SIZE), "{ctx}");
                    }
                }
                21 => {
                    vm.purge();
                }
                22 => {
                    vm.vm_unmap_aliases();
                }
                _ => {
                    // access checks
                    for (&k, kind) in model.iter().take(20) {
                        if let Kind::Vmalloc { size, seed, .. } = kind {
                            check_fill(k as *const u8, *size, *seed);
                        }
                    }
                }
            }
            vm.verify().unwrap_or_else(|e| panic!("{ctx}: {e}"));
            let mut lazy_sum = 0usize;
            vm.for_each_lazy(|s, e| lazy_sum += (e.0 - s.0) / PAGE_SIZE);
            let st = vm.stats();
            assert_eq!(st.lazy_pages as usize, lazy_sum, "{ctx}: lazy_pages");
            assert!(
                lazy_sum <= vm.lazy_max_pages(),
                "{ctx}: {lazy_sum} lazy pages left past the threshold {}",
                vm.lazy_max_pages()
            );
            // Accounting equals the model.
            let want: usize = model
                .values()
                .map(|k| match k {
                    Kind::Vmalloc { pages, .. } => *pages,
                    _ => 0,
                })
                .sum();
            assert_eq!(
                vm.nr_vmalloc_pages() as usize,
                want,
                "{ctx}: nr_vmalloc_pages"
            );
            // No overlap among model areas (guard included) and each exists.
            let mut prev = 0usize;
            for (&k, kind) in &model {
                let a = vm
                    .find_vm_area_containing(k as *const u8)
                    .unwrap_or_else(|| panic!("{ctx}: {k:#x} gone"));
                if let Kind::MapRam { pages } = kind {
                    if pages.len() <= 64 {
                        continue;
                    }
                }
                assert_eq!(a.addr.0, k, "{ctx}");
                assert!(k >= prev, "{ctx}: overlap at {k:#x}");
                prev = k + a.size;
            }
        }
        for (k, kind) in std::mem::take(&mut model) {
            match kind {
                Kind::Vmalloc { size, seed, .. } => {
                    check_fill(k as *const u8, size, seed);
                    vm.vfree(k as *const u8).unwrap();
                }
                Kind::Vmap { pages } => {
                    vm.vunmap(k as *const u8).unwrap();
                    pool.extend(pages);
                }
                Kind::MapRam { pages } => {
                    vm.vm_unmap_ram(k as *const u8, pages.len()).unwrap();
                    pool.extend(pages);
                }
            }
        }
        eprintln!("seed {rseed}: {:?}", vm.stats());
        vm.vm_unmap_aliases();
        vm.verify().unwrap();
        assert_eq!(vm.nr_vmalloc_pages(), 0);
        only_idle_blocks_left(&vm, lo, hi);
        for p in pool.drain(..) {
            m.pages().free_pages(p, 0).unwrap();
        }
    }
    assert_eq!(free_pages(&m), before, "every page came back");
}

/// After everything was unmapped and `vm_unmap_aliases`: the only busy
/// areas left are vmap blocks (Linux's `_vm_unmap_aliases` frees a block
/// with nothing mapped only once less than a quarter of it is left to hand
/// out), and the free space plus those blocks tile `[lo, hi)` exactly, the
/// free parts merged.
fn only_idle_blocks_left(vm: &HostVmalloc<'_>, lo: usize, hi: usize) {
    let block = vm.vmap_block_pages() * PAGE_SIZE;
    let info = vmallocinfo(vm);
    let mut parts: Vec<(usize, usize, bool)> = Vec::new();
    for (s, e, what) in vmallocinfo_ranges(vm) {
        assert!(what.ends_with("vm_map_ram"), "not a vmap block: {what}");
        assert_eq!(e - s, block, "{s:#x}-{e:#x} {what}");
        parts.push((s, e, true));
    }
    assert_eq!(vm.stats().busy_areas, parts.len() as u64, "{info}");
    assert_eq!(vm.nr_vmap_blocks(), parts.len(), "{info}");
    vm.for_each_free(|s, e| parts.push((s.0, e.0, false)));
    parts.sort();
    let mut at = lo;
    let mut prev_free = false;
    for &(s, e, busy) in &parts {
        assert_eq!(s, at, "gap or overlap at {at:#x}: {parts:x?}");
        assert!(busy || !prev_free, "unmerged free ranges at {s:#x}");
        prev_free = !busy;
        at = e;
    }
    assert_eq!(at, hi, "{parts:x?}");
}

fn check_fill_prefix(p: *const u8, size: usize, seed: u8) {
    for i in (0..size).step_by(509) {
        let b = unsafe { p.add(i).read() };
        let want = (i as u8).wrapping_mul(31).wrapping_add(seed);
        // the last byte of the old size held `seed` instead
        if b != want {
            assert_eq!(b, seed, "byte {i} of {p:?}");
        }
    }
}

#[allow(dead_code)]
fn va(x: usize) -> VirtAddr {
    VirtAddr(x)
}

fn concurrent(threads: usize, range: usize, lazy: usize, steps: usize, huge: bool) {
    let m = machine_with(512 << 20, threads);
    let before = free_pages(&m);
    {
        let vm = small_vm(&m, range, lazy);
        let (lo, hi) = (vm.config().start, vm.config().end);
        std::thread::scope(|s| {
            for t in 0..threads {
                let vm = &vm;
                let m = &m;
                s.spawn(move || {
                    kmem_host::set_cpu(t);
                    let mut r = rng(0x1000 + t as u64 * 77);
                    let mut live: Vec<(usize, usize, u8, bool)> = Vec::new(); // addr, size, seed, maprams
                    let mut pool: Vec<Pfn> = (0..64)
                        .map(|_| m.pages().alloc_pages(GFP_KERNEL, 0).unwrap())
                        .collect();
                    let mut rams: Vec<(usize, Vec<Pfn>)> = Vec::new();
                    for step in 0..steps {
                        match r() % 12 {
                            0..=4 => {
                                let bytes = if huge && r().is_multiple_of(8) {
                                    PMD_SIZE + r() % PMD_SIZE
                                } else {
                                    r() % (32 * PAGE_SIZE) + 1
                                };
                                let res = if bytes >= PMD_SIZE {
                                    vm.vmalloc_huge(bytes, GFP_KERNEL | __GFP_NOWARN)
                                } else {
                                    vm.vmalloc_gfp(bytes, GFP_KERNEL | __GFP_NOWARN)
                                };
                                if let Err(e) = &res {
                                    if bytes < PMD_SIZE {
                                        let mut busy = 0usize;
                                        vm.for_each_area(|a| busy += a.size);
                                        let mut lazy = 0usize;
                                        vm.for_each_lazy(|s, e| lazy += e.0 - s.0);
                                        eprintln!("thread {t} step {step}: {bytes} failed: {e}; busy bytes {busy:#x} lazy {lazy:#x} largest free {:#x}", vm.stats().largest_free);
                                    }
                                }
                                if let Ok(p) = res {
                                    let a = p.as_ptr() as usize;
                                    assert!(a >= lo && a + bytes <= hi);
                                    let seed = (step as u8) ^ (t as u8).wrapping_mul(101);
                                    fill(p.as_ptr(), bytes, seed);
                                    live.push((a, bytes, seed, false));
                                }
                            }
                            5..=8 => {
                                if !live.is_empty() {
                                    let (a, size, seed, _) = live.swap_remove(r() % live.len());
                                    check_fill(a as *const u8, size, seed);
                                    vm.vfree(a as *const u8).unwrap();
                                }
                            }
                            9 => {
                                let n = r() % 16 + 1;
                                if pool.len() >= n {
                                    let pages = pool.split_off(pool.len() - n);
                                    match vm.vm_map_ram(&pages, -1) {
                                        Ok(p) => {
                                            for (i, pfn) in pages.iter().enumerate() {
                                                assert_eq!(vm.vmalloc_to_page(unsafe { p.as_ptr().add(i * PAGE_SIZE) }), Some(*pfn), "thread {t} step {step}");
                                            }
                                            rams.push((p.as_ptr() as usize, pages));
                                        }
                                        Err(_) => pool.extend(pages),
                                    }
                                } else if let Some((a, pages)) = rams.pop() {
                                    vm.vm_unmap_ram(a as *const u8, pages.len()).unwrap();
                                    pool.extend(pages);
                                }
                            }
                            10 => {
                                vm.purge();
                            }
                            _ => {
                                if r().is_multiple_of(4) {
                                    vm.vm_unmap_aliases();
                                }
                                for &(a, size, seed, _) in live.iter().take(8) {
                                    check_fill(a as *const u8, size, seed);
                                }
                            }
                        }
                    }
                    for (a, size, seed, _) in live {
                        check_fill(a as *const u8, size, seed);
                        vm.vfree(a as *const u8).unwrap();
                    }
                    for (a, pages) in rams {
                        vm.vm_unmap_ram(a as *const u8, pages.len()).unwrap();
                        pool.extend(pages);
                    }
                    for p in pool {
                        m.pages().free_pages(p, 0).unwrap();
                    }
                });
            }
        });
        vm.verify().unwrap();
        assert_eq!(vm.nr_vmalloc_pages(), 0);
        vm.vm_unmap_aliases();
        eprintln!("{:?}", vm.stats());
        only_idle_blocks_left(&vm, lo, hi);
    }
    assert_eq!(free_pages(&m), before, "every page came back");
}

#[test]
fn concurrent_alloc_free_purge_small_range() {
    concurrent(2, 32 << 20, 64, 3000, false);
    concurrent(4, 64 << 20, 128, 2000, true);
}

#[test]
fn tlb_no_stale_after_huge_free_and_small_reuse() {
    use kmem::paging::TlbConfig;
    let m = machine_with(256 << 20, 2);
    let tlbs = vmap::tlbs(2, TlbConfig::SKYLAKE);
    let host = HostVmap::new(&m, 64 << 20).unwrap().with_tlbs(&tlbs);
    let mut config = host.config();
    config.lazy_max_pages = Some(1 << 20);
    let vm = vmap::from_host(&m, host, config).unwrap();
    for round in 0..6 {
        let h = vm.vmalloc_huge(2 * PMD_SIZE, GFP_KERNEL).unwrap().as_ptr();
        let t = vm.tables().tables();
        for cpu in 0..2 {
            kmem_host::set_cpu(cpu);
            for off in (0..2 * PMD_SIZE).step_by(PAGE_SIZE * 97) {
                t.access(VirtAddr(h as usize + off)).unwrap();
            }
        }
        vm.vfree(h).unwrap();
        if round % 2 == 0 {
            vm.purge();
        } else {
            vm.vm_unmap_aliases();
        }
        // Small areas over the same range.
        let mut v = Vec::new();
        for _ in 0..40 {
            v.push(vm.vmalloc(50 * PAGE_SIZE).unwrap().as_ptr());
        }
        for &p in &v {
            for cpu in 0..2 {
                kmem_host::set_cpu(cpu);
                for i in 0..50 {
                    let va = VirtAddr(p as usize + i * PAGE_SIZE);
                    let got = t.access(va).unwrap().pa();
                    let want = vm.tables().translate(va).unwrap().pa;
                    assert_eq!(got, Some(want), "round {round}: stale TLB at {va}");
                }
            }
        }
        for p in v {
            vm.vfree(p).unwrap();
        }
        vm.purge();
    }
}
