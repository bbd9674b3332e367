//! Per-CPU sheaves: the array of free objects each CPU keeps per cache.
//!
//! Alloc pops from the sheaf, free pushes onto it; an empty sheaf is refilled
//! to half its capacity from the slabs, a full one gives its older half back.
//! These tests check the counters against the capacity the configuration
//! implies, the LIFO order, double-free refusal of objects sitting in a
//! sheaf (hardened or not, whatever the sheaf's fill level), that every page
//! (sheaf blocks included) comes back on shrink, destroy and drop, that a
//! leak report counts only objects really allocated, that sheaves can be
//! turned off, and, with a shadow model over random sequences, that no object
//! is handed out twice and no content is disturbed while sheaves flush
//! constantly.
//!
//! No test here claims a CPU; each uses its own machine and allocator, so
//! they may run in parallel.

mod proptest_cases;
mod slab_common;

use kmem::gfp::GFP_KERNEL;
use kmem::slab::kmalloc::kmalloc_size_roundup;
use kmem::slab::{
    KmemCache, SlabAllocator, SlabConfig, SlabFlags, SlabFreeError, Stat, SHEAF_SLOTS,
};
use kmem_host::{run_on_cpu, HostPlatform};
use proptest::prelude::*;
use proptest::test_runner::Config;
use slab_common::{machine_of, sheaf_blocks};
use std::collections::{BTreeMap, HashSet};
use std::ptr::NonNull;

/// A counter summed over every cache of the allocator.
fn total_stat(s: &SlabAllocator<'_, HostPlatform>, st: Stat) -> u64 {
    let mut n = 0;
    s.for_each_cache(|c| n += c.stat(st));
    n
}

fn pattern(tag: u8, i: usize) -> u8 {
    tag ^ (i as u8).wrapping_mul(29)
}

fn fill(p: usize, size: usize, tag: u8) {
    for i in 0..size {
        unsafe { ((p + i) as *mut u8).write(pattern(tag, i)) };
    }
}

fn check(p: usize, size: usize, tag: u8) {
    for i in 0..size {
        let b = unsafe { ((p + i) as *const u8).read() };
        assert_eq!(
            b,
            pattern(tag, i),
            "object {p:#x} ({size} bytes) byte {i} changed while allocated"
        );
    }
}

/// Frees every kept object, then asks for `n` objects of `size` and checks
/// they are distinct from each other (nothing handed out twice after an
/// error) and writable; frees them again.
fn assert_unique(s: &SlabAllocator<'_, HostPlatform>, size: usize, n: usize) {
    let mut seen = HashSet::new();
    let mut v = Vec::new();
    for i in 0..n {
        let p = s.kmalloc(size, GFP_KERNEL).unwrap().as_ptr() as usize;
        assert!(seen.insert(p), "object {p:#x} handed out twice");
        fill(p, size, i as u8);
        v.push((p, i as u8));
    }
    for (p, t) in v {
        check(p, size, t);
        s.kfree(p as *const u8).unwrap();
    }
}

/// Barn puts and sheaf flushes a `cap`-slot sheaf takes over `frees` frees
/// on one CPU, starting with `n0` objects in it and an empty barn that
/// takes `barn_max` full sheaves: a free finding the sheaf full trades it
/// at the barn while the barn has room, else first flushes `cap / 2`.
fn expected_puts_flushes(cap: usize, barn_max: usize, n0: usize, frees: usize) -> (usize, usize) {
    let half = cap / 2;
    let mut n = n0;
    let (mut puts, mut flushes) = (0, 0);
    for _ in 0..frees {
        if n == cap {
            if puts < barn_max {
                puts += 1;
                n = 0;
            } else {
                n -= half;
                flushes += 1;
            }
        }
        n += 1;
    }
    (puts, flushes)
}

/// Allocating and freeing more objects than a sheaf holds, on one CPU:
/// the counters show refills, barn trades and flushes in the numbers the
/// capacity (`sheaf_bytes / size`) and the barn's size (`barn_sheaves`,
/// within `sheaf_bytes` of objects) imply, every pointer is distinct, every
/// object keeps its contents until freed, and everything (the barn's
/// sheaves included) goes back on shrink.
#[test]
fn sheaf_refill_and_flush_counters() {
    let m = machine_of(128 << 20);
    for (sheaf_bytes, cap, barn_max) in [(64 * 64, 64usize, 1), (4 << 20, SHEAF_SLOTS, 10)] {
        let s = SlabAllocator::new(
            m.pages(),
            SlabConfig {
                sheaf_bytes,
                ..Default::default()
            },
        )
        .unwrap();
        let c = s
            .kmem_cache_create("sheaf64", 64, 0, SlabFlags::NO_MERGE, None)
            .unwrap();
        assert_eq!(c.slab_size(), 64);
        let n = 3 * cap + 17;
        run_on_cpu(0, || {
            let mut v: Vec<(usize, u8)> = Vec::new();
            let mut seen = HashSet::new();
            for i in 0..n {
                let p = c.alloc(GFP_KERNEL).unwrap().as_ptr() as usize;
                assert!(seen.insert(p), "object {p:#x} handed out twice");
                let tag = (i * 7) as u8;
                fill(p, 64, tag);
                v.push((p, tag));
            }
            for &(p, t) in &v {
                check(p, 64, t);
            }
            let refills = c.stat(Stat::SheafRefill) as usize;
            let new_slabs = c.stat(Stat::AllocSlab) as usize;
            assert_eq!(
                c.stat(Stat::AllocFastpath) + c.stat(Stat::AllocSlowpath),
                n as u64,
                "every allocation is counted once"
            );
            // Every object comes from the sheaf (filled by refills of at most
            // cap / 2 objects each) or straight from a new slab.
            assert!(refills > 0, "no sheaf refill over {n} allocations");
            assert!(
                refills * cap.div_ceil(2) + new_slabs >= n,
                "{refills} refills of at most {} and {new_slabs} new slabs cannot give {n} objects: \
                 the sheaf holds more than sheaf_bytes / size",
                cap.div_ceil(2)
            );
            assert_eq!(c.stat(Stat::SheafFlush), 0, "no flush while allocating");
            // Free in a scrambled order, checking the survivors as we go.
            let mut order: Vec<usize> = (0..n).collect();
            let mut x = 0x2545_f491_4f6c_dd1du64;
            for i in (1..n).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                order.swap(i, (x % (i as u64 + 1)) as usize);
            }
            for (k, &i) in order.iter().enumerate() {
                let (p, t) = v[i];
                check(p, 64, t);
                c.free(NonNull::new(p as *mut u8).unwrap()).unwrap();
                if k % 500 == 0 {
                    for &j in &order[k + 1..] {
                        check(v[j].0, 64, v[j].1);
                    }
                }
            }
            assert_eq!(c.stat(Stat::FreeFastpath), n as u64);
            let flushes = c.stat(Stat::SheafFlush) as usize;
            let puts = c.stat(Stat::BarnPut) as usize;
            // The sheaf held between 0 and cap objects when the frees began.
            assert!(
                (0..=cap).any(|n0| expected_puts_flushes(cap, barn_max, n0, n) == (puts, flushes)),
                "{puts} barn puts and {flushes} sheaf flushes for {n} frees: no start fits a \
                 {cap}-slot sheaf and a barn of {barn_max}"
            );
            assert!(puts >= 1, "no full sheaf went to the barn");
            assert_eq!(c.stat(Stat::BarnPutFail) as usize, flushes);
            assert_eq!(c.stat(Stat::BarnGet), 0, "nothing allocated from the barn");
        });
        assert_eq!(c.errors(), 0);
        c.shrink();
        assert_eq!(c.nr_slabs(), 0, "every slab back after shrink");
        assert_eq!(c.active_objects(), 0);
        c.destroy().unwrap();
    }
    assert!(m.platform().take_log().is_empty());
}

/// A freed object sits on top of the sheaf: the next allocation on the
/// same CPU returns it, and a run of frees comes back in reverse order.
#[test]
fn sheaf_is_lifo() {
    let m = machine_of(64 << 20);
    for hardened in [true, false] {
        let s = SlabAllocator::new(
            m.pages(),
            SlabConfig {
                freelist_hardened: hardened,
                ..Default::default()
            },
        )
        .unwrap();
        run_on_cpu(1, || {
            for size in [8usize, 64, 96, 256, 1024, 4096] {
                // Warm: the CPU gets its sheaf.
                let warm: Vec<usize> = (0..4)
                    .map(|_| s.kmalloc(size, GFP_KERNEL).unwrap().as_ptr() as usize)
                    .collect();
                let p = s.kmalloc(size, GFP_KERNEL).unwrap().as_ptr() as usize;
                s.kfree(p as *const u8).unwrap();
                let q = s.kmalloc(size, GFP_KERNEL).unwrap().as_ptr() as usize;
                assert_eq!(q, p, "kmalloc({size}) after kfree returns the freed object");
                s.kfree(q as *const u8).unwrap();
                let v: Vec<usize> = (0..10)
                    .map(|_| s.kmalloc(size, GFP_KERNEL).unwrap().as_ptr() as usize)
                    .collect();
                for &p in &v {
                    s.kfree(p as *const u8).unwrap();
                }
                let back: Vec<usize> = (0..10)
                    .map(|_| s.kmalloc(size, GFP_KERNEL).unwrap().as_ptr() as usize)
                    .collect();
                let mut rev = v.clone();
                rev.reverse();
                assert_eq!(back, rev, "kmalloc({size}) hands the sheaf out LIFO");
                for p in back.into_iter().chain(warm) {
                    s.kfree(p as *const u8).unwrap();
                }
            }
        });
        assert_eq!(s.errors(), 0, "hardened={hardened}");
    }
}

/// Under hardening a double free of an object anywhere in the sheaf is
/// refused (its free pointer says it is free), not just of the top one.
#[test]
fn double_free_inside_the_sheaf_is_refused_hardened() {
    let m = machine_of(64 << 20);
    let s = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
    run_on_cpu(0, || {
        let a = s.kmalloc(64, GFP_KERNEL).unwrap().as_ptr();
        let b = s.kmalloc(64, GFP_KERNEL).unwrap().as_ptr();
        s.kfree(a).unwrap();
        s.kfree(b).unwrap();
        m.platform().take_log();
        let e = s.kfree(a).unwrap_err();
        assert!(
            matches!(e, SlabFreeError::DoubleFree { addr, .. } if addr == a as usize),
            "{e:?}"
        );
        assert!(m
            .platform()
            .log_contains("BUG kmalloc-64: Object already free: double free"));
        // The top one too.
        let e = s.kfree(b).unwrap_err();
        assert!(matches!(e, SlabFreeError::DoubleFree { addr, .. } if addr == b as usize));
        assert_eq!(s.errors(), 2);
        // Deeper in the sheaf: 100 objects freed, every one freed again.
        let v: Vec<*mut u8> = (0..100)
            .map(|_| s.kmalloc(64, GFP_KERNEL).unwrap().as_ptr())
            .collect();
        for &p in &v {
            s.kfree(p).unwrap();
        }
        for &p in v.iter().step_by(3) {
            assert!(matches!(s.kfree(p), Err(SlabFreeError::DoubleFree { .. })));
        }
        assert_eq!(s.errors(), 2 + v.iter().step_by(3).count());
        assert_unique(&s, 64, 3000);
    });
    // The refused frees left nothing behind.
    s.shrink_all();
    assert_eq!(s.kmalloc_slab(64, GFP_KERNEL).nr_slabs(), 0);
}

/// Whatever the sheaf's fill level (empty, half, full, just flushed), a
/// second free of the object just freed is refused, hardened or not; the
/// hardened cache also refuses it after more frees buried it. Afterwards no
/// object is handed out twice.
#[test]
fn double_free_of_the_top_at_every_fill_level() {
    let m = machine_of(64 << 20);
    // Plain, Linux's hardening (no allocated mark), kmem's default.
    for (hardened, mark) in [(false, false), (true, false), (true, true)] {
        // 64-slot sheaves: 300 frees fill and flush them several times.
        let s = SlabAllocator::new(
            m.pages(),
            SlabConfig {
                freelist_hardened: hardened,
                double_free_mark: mark,
                sheaf_bytes: 64 * 64,
                ..Default::default()
            },
        )
        .unwrap();
        let c = s.kmalloc_slab(64, GFP_KERNEL);
        run_on_cpu(0, || {
            let v: Vec<*mut u8> = (0..300)
                .map(|_| s.kmalloc(64, GFP_KERNEL).unwrap().as_ptr())
                .collect();
            let mut refused = 0;
            for (i, &p) in v.iter().enumerate() {
                s.kfree(p).unwrap();
                let e = s.kfree(p);
                assert!(
                    matches!(e, Err(SlabFreeError::DoubleFree { addr, .. }) if addr == p as usize),
                    "hardened={hardened} mark={mark}: second free of the sheaf's top object #{i} {p:p} \
                     (sheaf flushes so far: {}) gave {e:?}",
                    c.stat(Stat::SheafFlush)
                );
                refused += 1;
            }
            assert!(
                c.stat(Stat::SheafFlush) >= 3,
                "the sheaf filled up and flushed"
            );
            assert_eq!(s.errors(), refused);
            assert_unique(&s, 64, 2000);
        });
        s.shrink_all();
        assert_eq!(
            c.nr_slabs(),
            0,
            "hardened={hardened} mark={mark}: nothing lost or kept"
        );
    }
}

/// With `double_free_mark` off (Linux's CONFIG_SLAB_FREELIST_HARDENED) the
/// fast paths never write the object: a kfree onto the sheaf and the kmalloc
/// that takes it back leave every byte as the owner wrote it. With the mark
/// (the default) both write its free-pointer slot.
#[test]
fn without_the_mark_the_fast_paths_leave_the_object_alone() {
    let m = machine_of(64 << 20);
    for mark in [false, true] {
        let s = SlabAllocator::new(
            m.pages(),
            SlabConfig {
                double_free_mark: mark,
                ..Default::default()
            },
        )
        .unwrap();
        run_on_cpu(0, || {
            for size in [64usize, 192, 4096] {
                // Warm: the CPU has its sheaf and it holds objects.
                let warm: Vec<_> = (0..8)
                    .map(|_| s.kmalloc(size, GFP_KERNEL).unwrap())
                    .collect();
                for p in warm {
                    s.kfree(p.as_ptr()).unwrap();
                }
                let p = s.kmalloc(size, GFP_KERNEL).unwrap().as_ptr();
                unsafe { p.write_bytes(0x5a, size) };
                let intact = |what: &str| {
                    let b = unsafe { std::slice::from_raw_parts(p, size) };
                    let changed = b.iter().filter(|&&x| x != 0x5a).count();
                    assert_eq!(
                        changed == 0,
                        !mark,
                        "mark={mark}, kmalloc({size}) {what}: {changed} bytes changed"
                    );
                };
                let fast = |c: &kmem::slab::KmemCache<HostPlatform>| {
                    (c.stat(Stat::FreeFastpath), c.stat(Stat::AllocFastpath))
                };
                let c = s.kmalloc_slab(size, GFP_KERNEL);
                let (f0, a0) = fast(c);
                s.kfree(p).unwrap();
                intact("after kfree onto the sheaf");
                // Refilled while free (the test's own write after free), so
                // the next check sees only what kmalloc writes.
                unsafe { p.write_bytes(0x5a, size) };
                let q = s.kmalloc(size, GFP_KERNEL).unwrap().as_ptr();
                assert_eq!(q, p, "the sheaf gives the object back");
                intact("after kmalloc from the sheaf");
                assert_eq!(fast(c), (f0 + 1, a0 + 1), "both went the fast path");
                s.kfree(q).unwrap();
            }
        });
    }
}

/// Without hardening the naive check still refuses a second free of the
/// sheaf's top object, and the sheaf is intact afterwards.
#[test]
fn unhardened_top_double_free_is_refused() {
    let m = machine_of(64 << 20);
    let s = SlabAllocator::new(
        m.pages(),
        SlabConfig {
            freelist_hardened: false,
            ..Default::default()
        },
    )
    .unwrap();
    run_on_cpu(1, || {
        let a = s.kmalloc(64, GFP_KERNEL).unwrap().as_ptr();
        let b = s.kmalloc(64, GFP_KERNEL).unwrap().as_ptr();
        s.kfree(a).unwrap();
        s.kfree(a).unwrap_err();
        s.kfree(b).unwrap();
        s.kfree(b).unwrap_err();
        assert_eq!(s.errors(), 2);
        // Take b and a back (LIFO) so the state is clean again.
        assert_eq!(s.kmalloc(64, GFP_KERNEL).unwrap().as_ptr(), b);
        assert_eq!(s.kmalloc(64, GFP_KERNEL).unwrap().as_ptr(), a);
        s.kfree(a).unwrap();
        s.kfree(b).unwrap();
    });
}

/// Large objects keep their free pointers on different cache sets: the
/// slot a kfree writes (the one word the allocated mark changes, found by
/// filling the object first) moves with the object's address, over at least
/// 8 of the 64 sets of a 4 KiB-way L1 for each class of 1 KiB and more (a
/// fixed offset puts them all in one or a few). Each slot lies inside the
/// object, is where `freeptr_offset_of` says, and still catches a double
/// free of that object. Caches of small objects and debug caches keep
/// Linux's one offset.
#[test]
fn large_objects_stagger_their_free_pointers_over_cache_sets() {
    let m = machine_of(64 << 20);
    let s = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
    run_on_cpu(0, || {
        for size in [64usize, 512, 1024, 2048, 4096, 8192] {
            let c = s.kmalloc_slab(size, GFP_KERNEL);
            let v: Vec<*mut u8> = (0..64)
                .map(|_| s.kmalloc(size, GFP_KERNEL).unwrap().as_ptr())
                .collect();
            let mut sets = HashSet::new();
            let mut offsets = HashSet::new();
            for &p in &v {
                unsafe { p.write_bytes(0x5a, size) };
                s.kfree(p).unwrap();
                let b = unsafe { std::slice::from_raw_parts(p, size) };
                let changed: Vec<usize> = (0..size).filter(|&i| b[i] != 0x5a).collect();
                let (first, last) = (changed[0], *changed.last().unwrap());
                assert!(
                    last - first < 8 && first % 8 == 0,
                    "kmalloc-{size}: kfree wrote one aligned word, not {changed:?}"
                );
                assert_eq!(first, c.freeptr_offset_of(p), "kmalloc-{size} {p:p}");
                assert!(first + 8 <= size, "kmalloc-{size}: slot inside the object");
                sets.insert(((p as usize + first) >> 6) % 64);
                offsets.insert(first);
                let e = s.kfree(p);
                assert!(
                    matches!(e, Err(SlabFreeError::DoubleFree { .. })),
                    "kmalloc-{size}: double free of {p:p} (slot at {first}) gave {e:?}"
                );
            }
            if size >= 1024 {
                assert!(
                    sets.len() >= 8,
                    "kmalloc-{size}: the slots of 64 objects use {} L1 sets",
                    sets.len()
                );
            } else {
                assert_eq!(offsets.len(), 1, "kmalloc-{size}: one offset");
                assert_eq!(offsets.into_iter().next(), Some(c.freeptr_offset()));
            }
        }
    });
    let d = s
        .kmem_cache_create("debug-4k", 4096, 0, SlabFlags::CONSISTENCY_CHECKS, None)
        .unwrap();
    let p = d.alloc(GFP_KERNEL).unwrap();
    let q = d.alloc(GFP_KERNEL).unwrap();
    assert_eq!(d.freeptr_offset_of(p.as_ptr()), d.freeptr_offset());
    assert_eq!(d.freeptr_offset_of(q.as_ptr()), d.freeptr_offset());
    d.free(p).unwrap();
    d.free(q).unwrap();
}

/// The allocated mark keeps the free-pointer secret. The slot of a fresh
/// object (readable by its owner before it writes anything) holds the
/// cache's mark encoded with the slot's key; the slot of an object in a
/// sheaf holds NULL encoded, so reading one of each (a use after free)
/// gives the mark in clear. It must be a secret of each cache, not one
/// constant: with a published constant, the fresh object's slot alone
/// would give the key every free pointer of the cache is encoded with.
/// And it has the fixed bits its plausibility test relies on.
#[test]
fn the_allocated_mark_is_a_secret_of_each_cache() {
    let m = machine_of(64 << 20);
    let s = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
    let user = s
        .kmem_cache_create("marked", 200, 0, SlabFlags::empty(), None)
        .unwrap();
    let marks: Vec<usize> = run_on_cpu(0, || {
        let mut marks = Vec::new();
        let read_slot = |c: &KmemCache<HostPlatform>, p: *mut u8| {
            let slot = p as usize + c.freeptr_offset_of(p);
            // SAFETY: the slot is a word inside the object's slab page.
            unsafe { (slot as *const usize).read() ^ slot.swap_bytes() }
        };
        for size in [64usize, 128, 512, 4096] {
            let c = s.kmalloc_slab(size, GFP_KERNEL);
            let fresh = s.kmalloc(size, GFP_KERNEL).unwrap().as_ptr();
            let freed = s.kmalloc(size, GFP_KERNEL).unwrap().as_ptr();
            s.kfree(freed).unwrap();
            let mark = read_slot(c, fresh) ^ read_slot(c, freed);
            s.kfree(fresh).unwrap();
            marks.push(mark);
        }
        let fresh = user.alloc(GFP_KERNEL).unwrap().as_ptr();
        let freed = user.alloc(GFP_KERNEL).unwrap().as_ptr();
        user.free(NonNull::new(freed).unwrap()).unwrap();
        marks.push(read_slot(&user, fresh) ^ read_slot(&user, freed));
        user.free(NonNull::new(fresh).unwrap()).unwrap();
        marks
    });
    for &mark in &marks {
        assert!(
            mark & 1 == 1 && mark >> 62 == 0b10,
            "mark {mark:#x}: not misaligned and non-canonical"
        );
    }
    let distinct: HashSet<_> = marks.iter().collect();
    assert_eq!(
        distinct.len(),
        marks.len(),
        "the caches share an allocated mark: {marks:#x?}"
    );
}

/// Every page comes back: objects of every kmalloc class (and large ones)
/// allocated and freed on both CPUs, a user cache created and destroyed,
/// then `shrink_all`: free pages are back at the baseline and no sheaf
/// block is left; dropping the allocator returns the rest.
#[test]
fn shrink_and_drop_return_every_page_and_sheaf() {
    let m = machine_of(128 << 20);
    let before = m.pages().nr_free_pages_with_pcp();
    {
        let s = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
        // Warm every kmalloc class on both CPUs, then settle.
        let sizes = [
            8usize, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192,
        ];
        for cpu in 0..2 {
            run_on_cpu(cpu, || {
                for &size in &sizes {
                    let p = s.kmalloc(size, GFP_KERNEL).unwrap();
                    s.kfree(p.as_ptr()).unwrap();
                }
            });
        }
        assert!(sheaf_blocks(&m) > 0, "warming gave CPUs sheaves");
        s.shrink_all();
        assert_eq!(sheaf_blocks(&m), 0, "shrink_all frees every sheaf block");
        let baseline = m.pages().nr_free_pages_with_pcp();
        for round in 0..3 {
            let mut live: Vec<(usize, usize, u8)> = Vec::new();
            for cpu in 0..2 {
                run_on_cpu(cpu, || {
                    for (i, &size) in sizes.iter().chain(&[20_000, 100_000]).enumerate() {
                        let n = if size <= 256 { 700 } else { 40 };
                        for k in 0..n {
                            let p = s.kmalloc(size, GFP_KERNEL).unwrap().as_ptr() as usize;
                            let tag = (i * 13 + k + round) as u8;
                            fill(p, size.min(256), tag);
                            live.push((p, size, tag));
                        }
                    }
                });
            }
            let c = s
                .kmem_cache_create("sheaf_user", 200, 0, SlabFlags::NO_MERGE, None)
                .unwrap();
            let objs: Vec<_> = (0..500).map(|_| c.alloc(GFP_KERNEL).unwrap()).collect();
            // Free half on the other CPU (frees go to that CPU's sheaf).
            run_on_cpu(1, || {
                for (p, size, tag) in live.drain(..live.len() / 2) {
                    check(p, size.min(256), tag);
                    s.kfree(p as *const u8).unwrap();
                }
                for &o in &objs[..250] {
                    c.free(o).unwrap();
                }
            });
            run_on_cpu(0, || {
                for (p, size, tag) in live.drain(..) {
                    check(p, size.min(256), tag);
                    s.kfree(p as *const u8).unwrap();
                }
                for &o in &objs[250..] {
                    c.free(o).unwrap();
                }
            });
            assert!(sheaf_blocks(&m) > 0);
            c.destroy().unwrap();
            s.shrink_all();
            assert_eq!(sheaf_blocks(&m), 0, "round {round}");
            assert_eq!(
                m.pages().nr_free_pages_with_pcp(),
                baseline,
                "round {round}: every page back after shrink_all"
            );
        }
        // Leave objects in sheaves for drop to deal with.
        for cpu in 0..2 {
            run_on_cpu(cpu, || {
                let v: Vec<_> = (0..300)
                    .map(|_| s.kmalloc(64, GFP_KERNEL).unwrap())
                    .collect();
                for p in v {
                    s.kfree(p.as_ptr()).unwrap();
                }
            });
        }
        assert!(sheaf_blocks(&m) > 0);
        assert_eq!(s.errors(), 0);
    }
    assert_eq!(sheaf_blocks(&m), 0, "drop frees every sheaf block");
    assert_eq!(
        m.pages().nr_free_pages_with_pcp(),
        before,
        "every page back after drop"
    );
}

/// Destroying a cache with objects still allocated reports exactly those,
/// not the freed ones that were sitting in a sheaf; destroying a cache whose
/// freed objects all sit in sheaves (of both CPUs) succeeds and gives every
/// page back.
#[test]
fn destroy_counts_live_objects_not_sheaf_objects() {
    let m = machine_of(64 << 20);
    let s = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
    s.shrink_all();
    let baseline = m.pages().nr_free_pages_with_pcp();
    let c = s
        .kmem_cache_create("sheaf_clean", 64, 0, SlabFlags::NO_MERGE, None)
        .unwrap();
    let v: Vec<_> = run_on_cpu(0, || {
        (0..300).map(|_| c.alloc(GFP_KERNEL).unwrap()).collect()
    });
    run_on_cpu(0, || v[..150].iter().for_each(|&p| c.free(p).unwrap()));
    run_on_cpu(1, || v[150..].iter().for_each(|&p| c.free(p).unwrap()));
    assert!(c.nr_slabs() > 0, "the sheaves hold the objects");
    c.destroy().expect("sheaf objects are free, not leaked");
    s.shrink_all();
    assert_eq!(m.pages().nr_free_pages_with_pcp(), baseline);

    let c = s
        .kmem_cache_create("sheaf_leak", 64, 0, SlabFlags::NO_MERGE, None)
        .unwrap();
    let v: Vec<_> = run_on_cpu(0, || {
        (0..100).map(|_| c.alloc(GFP_KERNEL).unwrap()).collect()
    });
    // 60 freed (into the sheaves of both CPUs), 40 still allocated.
    run_on_cpu(0, || v[..30].iter().for_each(|&p| c.free(p).unwrap()));
    run_on_cpu(1, || v[30..60].iter().for_each(|&p| c.free(p).unwrap()));
    m.platform().take_log();
    let leak = c.destroy().unwrap_err();
    assert_eq!(leak.objects, 40, "{leak:?}: only the live objects leak");
    assert!(m.platform().log_contains("Slab cache still has objects"));
}

/// `sheaf_bytes: 0` turns sheaves off: no refill, no flush, no sheaf block,
/// and kmalloc still works (distinct objects, contents kept, pages back).
#[test]
fn sheaf_bytes_zero_disables_sheaves() {
    let m = machine_of(64 << 20);
    let s = SlabAllocator::new(
        m.pages(),
        SlabConfig {
            sheaf_bytes: 0,
            ..Default::default()
        },
    )
    .unwrap();
    s.shrink_all();
    let baseline = m.pages().nr_free_pages_with_pcp();
    for cpu in 0..2 {
        run_on_cpu(cpu, || {
            let mut seen = HashSet::new();
            let mut v = Vec::new();
            for i in 0..3000usize {
                let size = [8usize, 64, 200, 1000, 4000][i % 5];
                let p = s.kmalloc(size, GFP_KERNEL).unwrap().as_ptr() as usize;
                assert!(seen.insert(p), "{p:#x} handed out twice");
                fill(p, size, i as u8);
                v.push((p, size, i as u8));
            }
            assert_eq!(sheaf_blocks(&m), 0);
            for (p, size, t) in v {
                check(p, size, t);
                s.kfree(p as *const u8).unwrap();
            }
        });
    }
    assert_eq!(total_stat(&s, Stat::SheafRefill), 0);
    assert_eq!(total_stat(&s, Stat::SheafFlush), 0);
    assert!(
        total_stat(&s, Stat::AllocFastpath) > 0,
        "the CPU lists work"
    );
    assert_eq!(sheaf_blocks(&m), 0);
    assert_eq!(s.errors(), 0);
    s.shrink_all();
    assert_eq!(m.pages().nr_free_pages_with_pcp(), baseline);
}

/// A cache gets a sheaf only if at least 8 objects fit in `sheaf_bytes`;
/// huge objects and debug caches get none.
#[test]
fn sheaf_needs_eight_objects_and_no_debug() {
    let m = machine_of(256 << 20);
    let with = |c: &KmemCache<HostPlatform>, n: usize| {
        run_on_cpu(0, || {
            let v: Vec<_> = (0..n).map(|_| c.alloc(GFP_KERNEL).unwrap()).collect();
            for p in v {
                c.free(p).unwrap();
            }
        });
        (c.stat(Stat::SheafRefill), c.stat(Stat::SheafFlush))
    };
    // 8 objects of 64 bytes: a sheaf; 7: none.
    for (bytes, has) in [(8 * 64, true), (8 * 64 - 1, false), (7 * 64, false)] {
        let s = SlabAllocator::new(
            m.pages(),
            SlabConfig {
                sheaf_bytes: bytes,
                ..Default::default()
            },
        )
        .unwrap();
        let c = s
            .kmem_cache_create("edge", 64, 0, SlabFlags::NO_MERGE, None)
            .unwrap();
        let (refill, flush) = with(&c, 200);
        assert_eq!(
            (refill > 0, flush > 0),
            (has, has),
            "sheaf_bytes {bytes}: refills {refill}, flushes {flush}"
        );
        s.shrink_all();
        assert_eq!(sheaf_blocks(&m), 0);
        assert_eq!(c.nr_slabs(), 0);
    }
    let s = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
    // 4 MiB / 1 MiB = 4 objects: no sheaf.
    let huge = s
        .kmem_cache_create("huge", 1 << 20, 0, SlabFlags::NO_MERGE, None)
        .unwrap();
    let (refill, flush) = with(&huge, 20);
    assert_eq!((refill, flush), (0, 0), "1 MiB objects get no sheaf");
    let dbg = s
        .kmem_cache_create("dbg", 64, 0, SlabFlags::DEBUG_DEFAULT, None)
        .unwrap();
    assert!(dbg.is_debug());
    let (refill, flush) = with(&dbg, 2000);
    assert_eq!((refill, flush), (0, 0), "debug caches get no sheaf");
    assert_eq!(s.errors(), 0);
    huge.destroy().unwrap();
    dbg.destroy().unwrap();
}

// ---- shadow model ----

#[derive(Clone, Debug)]
enum Op {
    Kmalloc { size: usize, cpu: usize },
    Kfree { pick: usize, cpu: usize },
    CacheAlloc { cpu: usize },
    CacheFree { pick: usize, cpu: usize },
    DoubleFree { pick: usize, cpu: usize },
    Shrink { all: bool },
    Burst { size: usize, n: usize, cpu: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let size = prop_oneof![
        6 => 1usize..=128,
        3 => 129usize..=2048,
        1 => 2049usize..=9000,
    ];
    prop_oneof![
        10 => (size.clone(), 0usize..2).prop_map(|(size, cpu)| Op::Kmalloc { size, cpu }),
        9 => (any::<usize>(), 0usize..2).prop_map(|(pick, cpu)| Op::Kfree { pick, cpu }),
        4 => (0usize..2).prop_map(|cpu| Op::CacheAlloc { cpu }),
        4 => (any::<usize>(), 0usize..2).prop_map(|(pick, cpu)| Op::CacheFree { pick, cpu }),
        1 => (any::<usize>(), 0usize..2).prop_map(|(pick, cpu)| Op::DoubleFree { pick, cpu }),
        1 => any::<bool>().prop_map(|all| Op::Shrink { all }),
        2 => (size, 1usize..120, 0usize..2).prop_map(|(size, n, cpu)| Op::Burst { size, n, cpu }),
    ]
}

#[derive(Clone, Copy, Debug)]
struct Live {
    size: usize,
    tag: u8,
    /// From the user cache rather than kmalloc.
    cache: bool,
}

/// The sheaf model under `hardened` (`freelist_hardened`) and `mark`
/// (`double_free_mark`); double frees of buried objects are only tried
/// with both, the one configuration that promises to catch them.
fn run_model(ops: Vec<Op>, hardened: bool, mark: bool) {
    let m = machine_of(64 << 20);
    let before = m.pages().nr_free_pages_with_pcp();
    {
        let s = SlabAllocator::new(
            m.pages(),
            SlabConfig {
                sheaf_bytes: 4096,
                freelist_hardened: hardened,
                double_free_mark: mark,
                ..Default::default()
            },
        )
        .unwrap();
        let c = s
            .kmem_cache_create("model", 40, 0, SlabFlags::NO_MERGE, None)
            .unwrap();
        s.shrink_all();
        let baseline = m.pages().nr_free_pages_with_pcp();
        let mut live: BTreeMap<usize, Live> = BTreeMap::new();
        let mut freed: Vec<usize> = Vec::new();
        let mut tag = 0u8;
        let mut errors = 0;
        let mut add = |live: &mut BTreeMap<usize, Live>, p: usize, size: usize, cache: bool| {
            // No overlap with a live object.
            if let Some((&q, l)) = live.range(..=p).next_back() {
                assert!(
                    q + l.size.max(1) <= p,
                    "new object {p:#x} ({size}) overlaps live {q:#x} ({})",
                    l.size
                );
            }
            if let Some((&q, _)) = live.range(p..).next() {
                assert!(
                    p + size.max(1) <= q,
                    "new object {p:#x} ({size}) overlaps live {q:#x}"
                );
            }
            tag = tag.wrapping_add(1);
            fill(p, size, tag);
            live.insert(p, Live { size, tag, cache });
        };
        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Op::Kmalloc { size, cpu } => {
                    let p = run_on_cpu(cpu, || s.kmalloc(size, GFP_KERNEL).unwrap());
                    let p = p.as_ptr() as usize;
                    assert_eq!(p % kmalloc_size_roundup(size).min(8), 0);
                    add(&mut live, p, size, false);
                }
                Op::Burst { size, n, cpu } => {
                    let v: Vec<usize> = run_on_cpu(cpu, || {
                        (0..n)
                            .map(|_| s.kmalloc(size, GFP_KERNEL).unwrap().as_ptr() as usize)
                            .collect()
                    });
                    for p in v {
                        add(&mut live, p, size, false);
                    }
                }
                Op::CacheAlloc { cpu } => {
                    let p = run_on_cpu(cpu, || c.alloc(GFP_KERNEL).unwrap()).as_ptr() as usize;
                    add(&mut live, p, 40, true);
                }
                Op::Kfree { pick, cpu } | Op::CacheFree { pick, cpu } => {
                    let want_cache = matches!(op, Op::CacheFree { .. });
                    let cands: Vec<usize> = live
                        .iter()
                        .filter(|(_, l)| l.cache == want_cache)
                        .map(|(&p, _)| p)
                        .collect();
                    if cands.is_empty() {
                        continue;
                    }
                    let p = cands[pick % cands.len()];
                    let l = live.remove(&p).unwrap();
                    check(p, l.size, l.tag);
                    run_on_cpu(cpu, || {
                        if l.cache {
                            c.free(NonNull::new(p as *mut u8).unwrap())
                        } else {
                            s.kfree(p as *const u8)
                        }
                    })
                    .unwrap();
                    freed.push(p);
                }
                Op::DoubleFree { pick, cpu } => {
                    // Only the most recent free on the CPU is sure to be
                    // caught without the allocated mark; with it, any free
                    // object.
                    let cands: Vec<usize> = freed
                        .iter()
                        .copied()
                        .filter(|p| !live.contains_key(p))
                        .collect();
                    if cands.is_empty() || !(hardened && mark) {
                        continue;
                    }
                    let p = cands[pick % cands.len()];
                    // A freed large block may be free pages or part of a
                    // slab by now: whatever it is, the free must be refused.
                    let r = run_on_cpu(cpu, || s.kfree(p as *const u8));
                    assert!(r.is_err(), "step {step}: double free of {p:#x} accepted");
                    errors += 1;
                }
                Op::Shrink { all } => {
                    if all {
                        s.shrink_all();
                    } else {
                        c.shrink();
                    }
                }
            }
            if step % 16 == 0 {
                for (&p, l) in &live {
                    check(p, l.size, l.tag);
                }
            }
            freed.retain(|p| !live.contains_key(p));
            if freed.len() > 64 {
                freed.drain(..freed.len() - 64);
            }
        }
        assert_eq!(s.errors(), errors, "{:#?}", m.platform().take_log());
        for (&p, l) in &live {
            check(p, l.size, l.tag);
            if l.cache {
                c.free(NonNull::new(p as *mut u8).unwrap()).unwrap();
            } else {
                s.kfree(p as *const u8).unwrap();
            }
        }
        s.shrink_all();
        assert_eq!(sheaf_blocks(&m), 0);
        assert_eq!(
            m.pages().nr_free_pages_with_pcp(),
            baseline,
            "every page back after shrink_all"
        );
        c.destroy().unwrap();
    }
    assert_eq!(
        m.pages().nr_free_pages_with_pcp(),
        before,
        "every page back after drop"
    );
}

proptest! {
    #![proptest_config(Config { cases: proptest_cases::cases(24), ..Config::default() })]

    #[test]
    fn sheaf_model_hardened(ops in proptest::collection::vec(op(), 1..250)) {
        run_model(ops, true, true);
    }

    #[test]
    fn sheaf_model_linux_hardening(ops in proptest::collection::vec(op(), 1..250)) {
        run_model(ops, true, false);
    }

    #[test]
    fn sheaf_model_unhardened(ops in proptest::collection::vec(op(), 1..250)) {
        run_model(ops, false, false);
    }
}
