//! Random vmalloc / vfree / vmap / vunmap / vm_map_ram / vrealloc / access /
//! purge sequences on the hosted machine, checked against a shadow model
//! after every step:
//!
//! - live ranges (guard pages included) never overlap, and are exactly the
//!   model's;
//! - guard pages stay unmapped;
//! - every page of every live area reaches the frame the x86 tables name
//!   (written through the vmalloc pointer, read through the direct map);
//! - data survives vrealloc, up to the smaller size;
//! - TLB models (one per CPU) attached to the tables: an access to a live
//!   area always translates as the tables do; cached translations that
//!   disagree with the tables lie only in lazily freed ranges or unmapped
//!   pieces of vmap blocks, and after `vm_unmap_aliases` (a purge plus the
//!   vmap-block flush) there are none at all;
//! - at the end, every page comes back.

mod proptest_cases;
mod vmalloc_common;

use kmem::addr::{Pfn, VirtAddr, PAGE_SIZE};
use kmem::gfp::{__GFP_ZERO, GFP_KERNEL};
use kmem::paging::{PageTables, PteFlags, TlbConfig};
use kmem::vmalloc::{VmFlags, PMD_SIZE};
use kmem_host::vmap::{self, HostTlb, HostVmalloc, HostVmap};
use proptest::prelude::*;
use proptest::test_runner::Config;
use std::collections::BTreeMap;
use vmalloc_common::*;

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        bytes: usize,
        zero: bool,
    },
    Huge {
        bytes: usize,
    },
    Free {
        pick: usize,
    },
    Vmap {
        n: usize,
    },
    MapRam {
        n: usize,
        cpu: usize,
    },
    Realloc {
        pick: usize,
        bytes: usize,
    },
    Access {
        pick: usize,
        page: usize,
        cpu: usize,
    },
    Purge,
    Aliases,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..40 * PAGE_SIZE, any::<bool>()).prop_map(|(bytes, zero)| Op::Alloc { bytes, zero }),
        1 => (PMD_SIZE..3 * PMD_SIZE).prop_map(|bytes| Op::Huge { bytes }),
        6 => any::<usize>().prop_map(|pick| Op::Free { pick }),
        1 => (1usize..8).prop_map(|n| Op::Vmap { n }),
        2 => prop_oneof![4 => 1usize..=64, 1 => 65usize..90].prop_flat_map(|n| (Just(n), 0usize..2)).prop_map(|(n, cpu)| Op::MapRam { n, cpu }),
        3 => (any::<usize>(), 1usize..50 * PAGE_SIZE).prop_map(|(pick, bytes)| Op::Realloc { pick, bytes }),
        6 => (any::<usize>(), any::<usize>(), 0usize..2).prop_map(|(pick, page, cpu)| Op::Access { pick, page, cpu }),
        1 => Just(Op::Purge),
        1 => Just(Op::Aliases),
    ]
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    /// vmalloc: requested size, fill seed.
    Vmalloc { size: usize, seed: u8 },
    /// vmap of caller pages.
    Vmap { pages: Vec<Pfn> },
    /// vm_map_ram of caller pages.
    MapRam { pages: Vec<Pfn> },
}

struct Model {
    areas: BTreeMap<usize, Kind>,
    seed: u8,
}

fn fill(p: *mut u8, size: usize, seed: u8) {
    for i in 0..size {
        unsafe {
            p.add(i)
                .write((i as u8).wrapping_mul(31).wrapping_add(seed))
        };
    }
}

fn check_fill(p: *const u8, size: usize, seed: u8) {
    for i in 0..size {
        let b = unsafe { p.add(i).read() };
        assert_eq!(
            b,
            (i as u8).wrapping_mul(31).wrapping_add(seed),
            "byte {i} of {p:?}"
        );
    }
}

fn pick(m: &Model, n: usize) -> Option<usize> {
    if m.areas.is_empty() {
        None
    } else {
        m.areas.keys().nth(n % m.areas.len()).copied()
    }
}

/// Stale cached translations: (va, in lazy range or vmap block).
fn stale(vm: &HostVmalloc<'_>, tlbs: &[HostTlb]) -> Vec<(usize, bool)> {
    let t = vm.tables().tables();
    let mut lazy = Vec::new();
    vm.for_each_lazy(|s, e| lazy.push((s.0, e.0)));
    let mut out = Vec::new();
    for tl in tlbs {
        let tl = tl.lock();
        for e in tl.stale_entries(|v| t.translate(v).ok().map(|x| (x.frame, x.size))) {
            let va = e.va.0;
            let in_lazy = lazy.iter().any(|&(s, e)| s <= va && va < e);
            let in_block = vm
                .find_vm_area_containing(va as *const u8)
                .is_some_and(|a| a.vm_map_ram);
            out.push((va, in_lazy || in_block));
        }
    }
    out
}

/// Checks everything; returns the number of (explained) stale entries.
fn check(vm: &HostVmalloc<'_>, model: &Model, tlbs: &[HostTlb]) -> usize {
    vm.verify().unwrap();
    // The allocator's live areas (vmap blocks aside) are the model's.
    let mut real = BTreeMap::new();
    vm.for_each_area(|a| {
        let block = a.vm_map_ram
            && a.size == vm.vmap_block_pages() * PAGE_SIZE
            && a.addr.0.is_multiple_of(a.size);
        if !block {
            real.insert(a.addr.0, *a);
        }
    });
    let mut prev_end = 0;
    for (&start, kind) in &model.areas {
        let a = real.get(&start).copied();
        match kind {
            Kind::MapRam { pages } if pages.len() <= 64 => {
                // Inside a block: no area of its own.
                let b = vm
                    .find_vm_area_containing(start as *const u8)
                    .expect("block");
                assert!(b.vm_map_ram);
                continue;
            }
            _ => {}
        }
        let a = a.unwrap_or_else(|| panic!("model area {start:#x} missing"));
        assert!(start >= prev_end, "ranges overlap at {start:#x}");
        prev_end = start + a.size;
        match kind {
            Kind::Vmalloc { size, .. } => {
                assert_eq!(a.requested_size, *size);
                assert!(a.flags.contains(VmFlags::ALLOC));
                // Guard page unmapped.
                assert!(
                    unmapped(vm, start + a.size - PAGE_SIZE),
                    "guard of {start:#x} mapped"
                );
            }
            Kind::Vmap { pages } => {
                assert_eq!(a.size, (pages.len() + 1) * PAGE_SIZE);
                assert!(unmapped(vm, start + a.size - PAGE_SIZE));
            }
            Kind::MapRam { pages } => assert_eq!(a.size, pages.len() * PAGE_SIZE),
        }
    }
    let live_model = model
        .areas
        .iter()
        .filter(|(_, k)| !matches!(k, Kind::MapRam { pages } if pages.len() <= 64))
        .count();
    assert_eq!(real.len(), live_model, "areas the model does not know");
    let st = stale(vm, tlbs);
    for &(va, explained) in &st {
        assert!(
            explained,
            "stale TLB entry at {va:#x} outside lazy ranges and vmap blocks"
        );
    }
    st.len()
}

/// What a run went through.
struct Seen {
    purges: u64,
    stale: usize,
    tlb_hits: u64,
}

fn run(ops: Vec<Op>) -> Seen {
    let m = machine_with(96 << 20, 2);
    let before = free_pages(&m);
    let tlbs = vmap::tlbs(2, TlbConfig::SKYLAKE);
    let mut pool: Vec<Pfn> = (0..200)
        .map(|_| m.pages().alloc_pages(GFP_KERNEL, 0).unwrap())
        .collect();
    {
        let host = HostVmap::new(&m, 4 << 30).unwrap().with_tlbs(&tlbs);
        let mut config = host.config();
        config.lazy_max_pages = Some(512);
        let vm = vmap::from_host(&m, host, config).unwrap();
        let mut model = Model {
            areas: BTreeMap::new(),
            seed: 0,
        };
        let mut seen = Seen {
            purges: 0,
            stale: 0,
            tlb_hits: 0,
        };
        for op in ops {
            let purges = vm.stats().purges;
            match op {
                Op::Alloc { bytes, zero } => {
                    let gfp = if zero {
                        GFP_KERNEL | __GFP_ZERO
                    } else {
                        GFP_KERNEL
                    };
                    let p = vm.vmalloc_gfp(bytes, gfp).unwrap().as_ptr();
                    if zero {
                        check_fill_zero(p, bytes);
                    }
                    model.seed = model.seed.wrapping_add(1);
                    fill(p, bytes, model.seed);
                    check_mapping(&vm, p, bytes.div_ceil(PAGE_SIZE) * PAGE_SIZE);
                    refill(p, bytes, model.seed);
                    model.areas.insert(
                        p as usize,
                        Kind::Vmalloc {
                            size: bytes,
                            seed: model.seed,
                        },
                    );
                }
                Op::Huge { bytes } => {
                    let p = vm.vmalloc_huge(bytes, GFP_KERNEL).unwrap().as_ptr();
                    model.seed = model.seed.wrapping_add(1);
                    fill(p, bytes, model.seed);
                    model.areas.insert(
                        p as usize,
                        Kind::Vmalloc {
                            size: bytes,
                            seed: model.seed,
                        },
                    );
                }
                Op::Free { pick: n } => {
                    if let Some(a) = pick(&model, n) {
                        let p = a as *mut u8;
                        match model.areas.remove(&a).unwrap() {
                            Kind::Vmalloc { size, seed } => {
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
                        assert!(unmapped(&vm, a));
                    }
                }
                Op::Vmap { n } => {
                    if pool.len() >= n {
                        let pages: Vec<Pfn> = pool.split_off(pool.len() - n);
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
                        check_mapping(&vm, p, n * PAGE_SIZE);
                        model.areas.insert(p as usize, Kind::Vmap { pages });
                    }
                }
                Op::MapRam { n, cpu } => {
                    if pool.len() >= n {
                        let pages: Vec<Pfn> = pool.split_off(pool.len() - n);
                        kmem_host::set_cpu(cpu);
                        let p = vm.vm_map_ram(&pages, -1).unwrap().as_ptr();
                        for (i, pfn) in pages.iter().enumerate() {
                            assert_eq!(
                                vm.vmalloc_to_page(unsafe { p.add(i * PAGE_SIZE) }),
                                Some(*pfn)
                            );
                        }
                        check_mapping(&vm, p, n * PAGE_SIZE);
                        model.areas.insert(p as usize, Kind::MapRam { pages });
                    }
                }
                Op::Realloc { pick: n, bytes } => {
                    let Some(a) = pick(&model, n) else { continue };
                    let Kind::Vmalloc { size, seed } = model.areas[&a].clone() else {
                        continue;
                    };
                    let q = vm
                        .vrealloc(a as *const u8, bytes, GFP_KERNEL)
                        .unwrap()
                        .unwrap()
                        .as_ptr();
                    check_fill(q, size.min(bytes), seed);
                    model.areas.remove(&a);
                    model.seed = model.seed.wrapping_add(1);
                    fill(q, bytes, model.seed);
                    check_mapping(&vm, q, bytes.div_ceil(PAGE_SIZE) * PAGE_SIZE);
                    refill(q, bytes, model.seed);
                    model.areas.insert(
                        q as usize,
                        Kind::Vmalloc {
                            size: bytes,
                            seed: model.seed,
                        },
                    );
                }
                Op::Access { pick: n, page, cpu } => {
                    let Some(a) = pick(&model, n) else { continue };
                    let pages = match &model.areas[&a] {
                        Kind::Vmalloc { size, .. } => size.div_ceil(PAGE_SIZE),
                        Kind::Vmap { pages } | Kind::MapRam { pages } => pages.len(),
                    };
                    let va = VirtAddr(a + (page % pages) * PAGE_SIZE + 8);
                    kmem_host::set_cpu(cpu);
                    let got = vm.tables().tables().access(va).unwrap().pa();
                    let want = vm.tables().translate(va).unwrap().pa;
                    assert_eq!(got, Some(want), "TLB translation of live {va} is stale");
                    // Again, on the same CPU: now cached.
                    let again = vm.tables().tables().access(va).unwrap();
                    assert_eq!(again, kmem::paging::tlb::TlbAccess::L1Hit(want));
                }
                Op::Purge => {
                    vm.purge();
                }
                Op::Aliases => {
                    vm.vm_unmap_aliases();
                    assert!(
                        stale(&vm, &tlbs).is_empty(),
                        "stale TLB entries after vm_unmap_aliases"
                    );
                }
            }
            if vm.stats().purges != purges {
                // After any purge nothing stale remains outside vmap blocks
                // (checked for every entry by `check`).
                assert_eq!(vm.stats().lazy_areas as usize, count_lazy(&vm));
            }
            seen.stale += check(&vm, &model, &tlbs);
        }
        for (a, kind) in std::mem::take(&mut model.areas) {
            match kind {
                Kind::Vmalloc { size, seed } => {
                    check_fill(a as *const u8, size, seed);
                    vm.vfree(a as *const u8).unwrap();
                }
                Kind::Vmap { pages } => {
                    vm.vunmap(a as *const u8).unwrap();
                    pool.extend(pages);
                }
                Kind::MapRam { pages } => {
                    vm.vm_unmap_ram(a as *const u8, pages.len()).unwrap();
                    pool.extend(pages);
                }
            }
        }
        vm.vm_unmap_aliases();
        assert!(stale(&vm, &tlbs).is_empty());
        vm.verify().unwrap();
        seen.purges = vm.stats().purges;
        seen.tlb_hits = tlbs
            .iter()
            .map(|t| {
                let s = t.lock().stats();
                s.l1_hits + s.l2_hits
            })
            .sum();
        for p in pool {
            m.pages().free_pages(p, 0).unwrap();
        }
        drop(vm);
        assert_eq!(free_pages(&m), before, "every page came back");
        seen
    }
}

fn count_lazy(vm: &HostVmalloc<'_>) -> usize {
    let mut n = 0;
    vm.for_each_lazy(|_, _| n += 1);
    n
}

fn check_fill_zero(p: *const u8, size: usize) {
    let s = unsafe { std::slice::from_raw_parts(p, size) };
    assert!(s.iter().all(|&b| b == 0), "vzalloc memory not zero");
}

/// `check_mapping` overwrites the first word of each page: put the pattern
/// back.
fn refill(p: *mut u8, size: usize, seed: u8) {
    fill(p, size, seed);
}

proptest! {
    #![proptest_config(Config {
        cases: proptest_cases::cases(48),
        max_shrink_iters: 200,
        ..Config::default()
    })]

    #[test]
    fn vmalloc_matches_shadow_model(ops in proptest::collection::vec(op(), 1..120)) {
        run(ops);
    }
}

#[test]
fn vmalloc_model_long_sequence() {
    // One long deterministic run through many purges.
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed as usize
    };
    let ops = (0..1500)
        .map(|_| match next() % 20 {
            0..=5 => Op::Alloc {
                bytes: next() % (24 * PAGE_SIZE) + 1,
                zero: next().is_multiple_of(4),
            },
            6..=11 => Op::Free { pick: next() },
            12 => Op::Vmap { n: next() % 6 + 1 },
            13 | 14 => Op::MapRam {
                n: next() % 64 + 1,
                cpu: next() % 2,
            },
            15 => Op::Realloc {
                pick: next(),
                bytes: next() % (30 * PAGE_SIZE) + 1,
            },
            16..=18 => Op::Access {
                pick: next(),
                page: next(),
                cpu: next() % 2,
            },
            _ => {
                if next().is_multiple_of(2) {
                    Op::Purge
                } else {
                    Op::Aliases
                }
            }
        })
        .collect();
    let seen = run(ops);
    assert!(seen.purges > 10, "purges: {}", seen.purges);
    assert!(seen.stale > 0, "the lazy window was never observed");
    assert!(seen.tlb_hits > 0);
}
