//! Misuse of the slab layer beyond `slab_bad_input.rs`: double frees
//! wherever the object sits, the entry points that use an object before
//! freeing it (`ksize`, `kfree_sensitive`, `kfree_rcu`, `krealloc`), cache
//! descriptors given to `kfree`, foreign and freed pointers, bulk frees with
//! bad entries, context rules for cache creation and destruction, and
//! unexpected zone flags. Each asserts what the project asks of bad input:
//! a clear error, nothing lost, the allocator still consistent (no object
//! handed out twice afterwards).

use kmem::gfp::{Gfp, GFP_ATOMIC, GFP_KERNEL};
use kmem::slab::{
    KmemCache, PageKind, ReallocError, SlabAllocator, SlabConfig, SlabFlags, SlabFreeError,
    KMALLOC_MAX_SIZE,
};
mod slab_common;

use kmem_host::{HostPlatform, Machine};
use slab_common::{assert_consistent, machine, slab};
use std::collections::HashSet;
use std::ptr::NonNull;
use std::sync::mpsc;
use std::time::Duration;

/// Enters an execution context until the guard drops.
type EnterContext = fn() -> kmem_host::ContextGuard;

fn no_sheaf(hardened: bool) -> SlabConfig {
    SlabConfig {
        freelist_hardened: hardened,
        sheaf_bytes: 0,
        ..Default::default()
    }
}

fn assert_unique_cache(c: &KmemCache<HostPlatform>, n: usize) {
    let mut seen = HashSet::new();
    let mut v = Vec::new();
    for _ in 0..n {
        let p = c.alloc(GFP_KERNEL).unwrap();
        assert!(
            seen.insert(p.as_ptr() as usize),
            "object {p:p} handed out twice"
        );
        v.push(p);
    }
    for p in v {
        c.free(p).unwrap();
    }
}

fn log(m: &Machine) -> String {
    m.platform().take_log().join("\n")
}

// ---------------------------------------------------------------------
// Double frees of an object wherever it sits.
// ---------------------------------------------------------------------

/// An object in the middle of this CPU's sheaf, the other CPU's sheaf, and
/// the bottom of the sheaf: hardened and unhardened.
fn double_free_sheaf_positions(cfg: SlabConfig) -> Vec<(String, Result<(), SlabFreeError>)> {
    let m = machine();
    let s = slab(&m, cfg);
    let mut out = Vec::new();
    kmem_host::set_cpu(0);
    let v: Vec<*mut u8> = (0..10)
        .map(|_| s.kmalloc(64, GFP_KERNEL).unwrap().as_ptr())
        .collect();
    for &p in &v {
        s.kfree(p).unwrap();
    }
    // v[9] is the top, v[5] the middle, v[0] the bottom of CPU 0's sheaf.
    out.push(("sheaf middle".into(), s.kfree(v[5])));
    out.push(("sheaf bottom".into(), s.kfree(v[0])));
    // From the other CPU: the object is in CPU 0's sheaf.
    let v4 = v[4] as usize;
    let other = std::thread::scope(|sc| {
        sc.spawn(|| {
            kmem_host::set_cpu(1);
            s.kfree(v4 as *const u8)
        })
        .join()
        .unwrap()
    });
    out.push(("other CPU's sheaf".into(), other));
    for (w, r) in &out {
        eprintln!("{w}: {r:?}");
    }
    assert_consistent(&s, 64, 300);
    out
}

#[test]
fn double_free_in_sheaf_hardened() {
    for (what, r) in double_free_sheaf_positions(SlabConfig::default()) {
        assert!(
            matches!(r, Err(SlabFreeError::DoubleFree { .. })),
            "{what}: {r:?}"
        );
    }
}

/// Without sheaves: an object on the CPU free list (the head and deeper),
/// on a frozen slab's list (freed from the other CPU), on a partial slab.
fn double_free_lists(hardened: bool) -> Vec<(String, Result<(), SlabFreeError>)> {
    let m = machine();
    let s = slab(&m, no_sheaf(hardened));
    let mut out = Vec::new();
    kmem_host::set_cpu(0);
    // 64 objects per slab of kmalloc-64; take 3 slabs' worth.
    let v: Vec<*mut u8> = (0..192)
        .map(|_| s.kmalloc(64, GFP_KERNEL).unwrap().as_ptr())
        .collect();
    // The active slab (frozen, CPU 0's) is the last one. Free two of its
    // objects on CPU 0 (CPU free list), one from CPU 1 (the frozen slab's
    // own list).
    let last = *v.last().unwrap();
    let prev = v[v.len() - 2];
    s.kfree(prev).unwrap();
    s.kfree(last).unwrap();
    out.push(("CPU list head".into(), s.kfree(last)));
    out.push(("CPU list second".into(), s.kfree(prev)));
    let third = v[v.len() - 3];
    let t = third as usize;
    let r = std::thread::scope(|sc| {
        sc.spawn(|| {
            kmem_host::set_cpu(1);
            s.kfree(t as *const u8).unwrap();
            s.kfree(t as *const u8)
        })
        .join()
        .unwrap()
    });
    out.push(("frozen slab's list head (other CPU)".into(), r));
    out.push(("frozen slab's list (this CPU)".into(), s.kfree(third)));
    // A full slab made partial by frees from CPU 1 (not CPU 0's active).
    let a = v[0];
    let b = v[1];
    let (ua, ub) = (a as usize, b as usize);
    std::thread::scope(|sc| {
        sc.spawn(|| {
            kmem_host::set_cpu(1);
            s.kfree(ua as *const u8).unwrap();
            s.kfree(ub as *const u8).unwrap();
        });
    });
    out.push(("partial slab, list head".into(), s.kfree(b)));
    out.push(("partial slab, second".into(), s.kfree(a)));
    for (w, r) in &out {
        eprintln!("{w}: {r:?}");
    }
    assert_consistent(&s, 64, 500);
    out
}

#[test]
fn double_free_on_lists_hardened() {
    for (what, r) in double_free_lists(true) {
        assert!(
            matches!(r, Err(SlabFreeError::DoubleFree { .. })),
            "{what}: {r:?}"
        );
    }
}

/// Debug caches of each slab_debug letter: a double free of an object
/// that is not the head of the slab's list.
#[test]
fn double_free_debug_letters() {
    for flags in [
        SlabFlags::CONSISTENCY_CHECKS,
        SlabFlags::RED_ZONE,
        SlabFlags::POISON,
        SlabFlags::STORE_USER,
        SlabFlags::RED_ZONE | SlabFlags::POISON | SlabFlags::STORE_USER,
    ] {
        for hardened in [true, false] {
            let m = machine();
            let s = slab(
                &m,
                SlabConfig {
                    freelist_hardened: hardened,
                    ..Default::default()
                },
            );
            let c = s.kmem_cache_create("dbgx", 48, 0, flags, None).unwrap();
            let v: Vec<_> = (0..5).map(|_| c.alloc(GFP_KERNEL).unwrap()).collect();
            c.free(v[1]).unwrap();
            c.free(v[2]).unwrap();
            c.free(v[3]).unwrap();
            m.platform().take_log();
            let e = c.free(v[1]);
            assert!(
                matches!(e, Err(SlabFreeError::DoubleFree { .. })),
                "{flags:?} hardened={hardened}: {e:?}"
            );
            let l = log(&m);
            assert!(
                l.contains("BUG dbgx: Object already free"),
                "{flags:?}: {l}"
            );
            c.free(v[0]).unwrap();
            c.free(v[4]).unwrap();
            assert_eq!(c.validate().errors, 0, "{flags:?}: {}", log(&m));
            assert_unique_cache(&c, 200);
            c.destroy().unwrap();
        }
    }
}

/// Double free after the slab went back to the page allocator and its
/// pages went to another cache: the pointer is now someone else's.
#[test]
fn double_free_after_slab_returned_reports_free_memory() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let c = s
        .kmem_cache_create("gone", 512, 0, SlabFlags::NO_MERGE, None)
        .unwrap();
    let p = c.alloc(GFP_KERNEL).unwrap();
    c.free(p).unwrap();
    c.shrink();
    let e = c.free(p).unwrap_err();
    assert!(
        matches!(
            e,
            SlabFreeError::NotSlab {
                kind: PageKind::Free,
                ..
            }
        ),
        "{e:?}"
    );
    let e = s.kfree(p.as_ptr()).unwrap_err();
    assert!(matches!(e, SlabFreeError::NotSlab { .. }), "{e:?}");
    assert_eq!(c.validate().errors, 0);
    c.destroy().unwrap();
}

// ---------------------------------------------------------------------
// kfree_sensitive / ksize / krealloc / kfree_rcu of freed pointers.
// ---------------------------------------------------------------------

#[test]
fn kfree_sensitive_of_freed_object_is_refused() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let keep = s.kmalloc(64, GFP_KERNEL).unwrap().as_ptr();
    let p = s.kmalloc(64, GFP_KERNEL).unwrap().as_ptr();
    s.kfree(p).unwrap();
    let r = s.kfree_sensitive(p);
    eprintln!("kfree_sensitive(freed) = {r:?}\n{}", log(&m));
    // The consequence if it was accepted: the object is in the sheaf twice.
    let a = s.kmalloc(64, GFP_KERNEL).unwrap().as_ptr();
    let b = s.kmalloc(64, GFP_KERNEL).unwrap().as_ptr();
    eprintln!("next two kmalloc(64): {a:p} {b:p}");
    assert!(
        matches!(r, Err(SlabFreeError::DoubleFree { .. })),
        "kfree_sensitive of a freed object: {r:?} (then kmalloc handed out {a:p} and {b:p})"
    );
    assert_ne!(a, b, "the same object handed out twice");
    s.kfree(a).unwrap();
    s.kfree(b).unwrap();
    s.kfree(keep).unwrap();
    assert_consistent(&s, 64, 300);
}

#[test]
fn kfree_sensitive_of_freed_object_on_cpu_list_is_refused() {
    let m = machine();
    let s = slab(&m, no_sheaf(true));
    let v: Vec<*mut u8> = (0..10)
        .map(|_| s.kmalloc(64, GFP_KERNEL).unwrap().as_ptr())
        .collect();
    s.kfree(v[3]).unwrap();
    s.kfree(v[4]).unwrap();
    let r = s.kfree_sensitive(v[3]);
    eprintln!("kfree_sensitive(freed, cpu list) = {r:?}\n{}", log(&m));
    if !matches!(r, Err(SlabFreeError::DoubleFree { .. })) {
        // The CPU list now cycles (v3 -> v4 -> v3): dropping the allocator
        // would flush it forever (release) or overflow a counter (debug).
        std::mem::forget(s);
        panic!("kfree_sensitive of an object on the CPU free list accepted: {r:?}; the list now cycles");
    }
    for (i, &p) in v.iter().enumerate() {
        if i != 3 && i != 4 {
            s.kfree(p).unwrap();
        }
    }
    assert_consistent(&s, 64, 300);
}

#[test]
fn kfree_sensitive_of_interior_and_foreign_pointers() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let p = s.kmalloc(64, GFP_KERNEL).unwrap().as_ptr();
    unsafe { p.write_bytes(0x77, 64) };
    let e = s.kfree_sensitive(unsafe { p.add(8) }).unwrap_err();
    assert!(matches!(e, SlabFreeError::Interior { .. }), "{e:?}");
    // Nothing was zeroed.
    assert!((0..64).all(|i| unsafe { *p.add(i) } == 0x77));
    let x = 5u64;
    let e = s
        .kfree_sensitive(&x as *const u64 as *const u8)
        .unwrap_err();
    assert!(matches!(e, SlabFreeError::NotDirectMapped { .. }), "{e:?}");
    assert_eq!(x, 5);
    let big = s.kmalloc(20_000, GFP_KERNEL).unwrap().as_ptr();
    let e = s.kfree_sensitive(unsafe { big.add(4096) }).unwrap_err();
    assert!(matches!(e, SlabFreeError::LargeInterior { .. }), "{e:?}");
    s.kfree_sensitive(big).unwrap();
    s.kfree_sensitive(p).unwrap();
    assert_consistent(&s, 64, 100);
}

#[test]
fn kfree_rcu_of_freed_object_is_refused() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let p = s.kmalloc(64, GFP_KERNEL).unwrap().as_ptr();
    s.kfree(p).unwrap();
    let r = s.kfree_rcu(p, 0);
    eprintln!("kfree_rcu(freed) = {r:?}, pending {:?}", s.rcu_pending());
    // Someone else gets the object meanwhile (LIFO sheaf).
    let q = s.kmalloc(64, GFP_KERNEL).unwrap().as_ptr();
    unsafe { q.write_bytes(0, 64) };
    let before = s.errors();
    s.rcu_barrier();
    eprintln!(
        "after barrier, errors +{}\n{}",
        s.errors() - before,
        log(&m)
    );
    // q must still be live: freeing it must work exactly once.
    let r2 = s.kfree(q);
    assert!(
        matches!(r, Err(SlabFreeError::DoubleFree { .. })),
        "kfree_rcu of a freed object accepted: {r:?} (then kfree of the new owner's object: {r2:?})"
    );
}

#[test]
fn kfree_rcu_twice_does_not_hang() {
    // Leaked so that a spinning helper thread stays sound after a timeout.
    let m: &'static Machine = Box::leak(Box::new(machine()));
    let s: &'static SlabAllocator<'static, HostPlatform> =
        Box::leak(Box::new(slab(m, SlabConfig::default())));
    let p = s.kmalloc(64, GFP_KERNEL).unwrap().as_ptr() as usize;
    let r1 = s.kfree_rcu(p as *const u8, 0);
    let r2 = s.kfree_rcu(p as *const u8, 0);
    // The rcu_head's link (offset 0 here) pointing at itself means the
    // queue now cycles: rcu_barrier would free the object forever.
    let self_loop = unsafe { *(p as *const usize) } == p;
    eprintln!(
        "kfree_rcu twice: {r1:?} {r2:?}, pending {:?}, head links to itself: {self_loop}",
        s.rcu_pending()
    );
    assert!(
        r2.is_err() && !self_loop,
        "second kfree_rcu of the same object accepted ({r2:?}); the RCU queue cycles \
         (head.next == head: {self_loop}) and rcu_barrier() never returns"
    );
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        s.rcu_barrier();
        let _ = tx.send(());
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(2)).is_ok(),
        "rcu_barrier hangs"
    );
}

#[test]
fn krealloc_of_freed_object_in_debug_cache() {
    let m = machine();
    let s = slab(
        &m,
        SlabConfig {
            slab_debug: kmem::slab::SlabDebug::new("FZPU"),
            ..Default::default()
        },
    );
    let p = s.kmalloc(50, GFP_KERNEL).unwrap().as_ptr();
    let keep = s.kmalloc(50, GFP_KERNEL).unwrap().as_ptr();
    s.kfree(p).unwrap();
    m.platform().take_log();
    // Grow first (shrink would hand the freed object back).
    let g = s.krealloc(p, 500, GFP_KERNEL);
    eprintln!("krealloc(freed, 500) = {g:?}\n{}", log(&m));
    // Shrink: fits the class.
    let r = s.krealloc(p, 20, GFP_KERNEL);
    eprintln!("krealloc(freed, 20) = {r:?}\n{}", log(&m));
    assert!(
        matches!(g, Err(ReallocError::BadPointer(_))),
        "krealloc grow of a freed debug object: {g:?}"
    );
    assert!(
        matches!(
            r,
            Err(ReallocError::BadPointer(SlabFreeError::DoubleFree { .. }))
        ),
        "krealloc shrink of a freed debug object: {r:?}"
    );
    s.kfree(keep).unwrap();
}

#[test]
fn ksize_of_freed_object() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let p = s.kmalloc(50, GFP_KERNEL).unwrap().as_ptr();
    s.kfree(p).unwrap();
    let n = s.ksize(p);
    eprintln!("ksize(freed) = {n}\n{}", log(&m));
    assert_eq!(n, 0, "ksize of a freed object reports a usable size");
}

// ---------------------------------------------------------------------
// Foreign pointers.
// ---------------------------------------------------------------------

#[test]
fn kfree_of_vmalloc_and_sheaf_and_global_pages() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let vm = kmem_host::vmap::vmalloc(&m).unwrap();
    let v = vm.vmalloc(3 * 4096).unwrap().as_ptr();
    let e = s.kfree(v).unwrap_err();
    assert!(matches!(e, SlabFreeError::NotDirectMapped { .. }), "{e:?}");
    assert!(log(&m).contains("is not in the direct map"));
    // Sheaf blocks: make CPU 0 have one.
    let p = s.kmalloc(64, GFP_KERNEL).unwrap().as_ptr();
    s.kfree(p).unwrap();
    let mut sheaf = None;
    let pages = m.pages();
    let mut pfn = 0u64;
    while pfn < pages.max_pfn() {
        if let Some(f) = pages.frame(kmem::addr::Pfn(pfn)) {
            if f.state() == kmem::page::FrameState::Allocated
                && f.owner() == kmem::slab::OWNER_SHEAF
            {
                sheaf = Some(pfn);
                break;
            }
        }
        pfn += 1;
    }
    let sheaf = sheaf.expect("a sheaf block");
    let va = pages.page_address(kmem::addr::Pfn(sheaf)).0;
    for off in [0usize, 8, 4096] {
        let e = s.kfree((va + off) as *const u8).unwrap_err();
        assert!(
            matches!(
                e,
                SlabFreeError::NotSlab {
                    kind: PageKind::Pages,
                    ..
                }
            ),
            "sheaf +{off}: {e:?}"
        );
    }
    assert_consistent(&s, 64, 300);
}

#[test]
fn kfree_of_large_block_tail_pages_and_freed_large() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let p = s.kmalloc(100_000, GFP_KERNEL).unwrap().as_ptr();
    for off in [1usize, 4096, 8192 + 24, 100_000, 131_071] {
        let e = s.kfree(unsafe { p.add(off) }).unwrap_err();
        assert!(
            matches!(e, SlabFreeError::LargeInterior { addr, head } if addr == p as usize + off && head == p as usize),
            "+{off}: {e:?}"
        );
    }
    assert!(log(&m).contains("bytes into the large kmalloc block"));
    assert_eq!(s.ksize(unsafe { p.add(4096) }), 0);
    let e = s
        .krealloc(unsafe { p.add(4096) }, 10, GFP_KERNEL)
        .unwrap_err();
    assert!(matches!(
        e,
        ReallocError::BadPointer(SlabFreeError::LargeInterior { .. })
    ));
    s.kfree(p).unwrap();
    assert_eq!(s.large_kmalloc_stats(), (1, 1, 0));
    // Freed large block: krealloc / ksize / kfree_sensitive.
    assert_eq!(s.ksize(p), 0);
    assert!(s.krealloc(p, 10, GFP_KERNEL).is_err());
    assert!(s.kfree_sensitive(p).is_err());
    assert_eq!(s.large_kmalloc_stats(), (1, 1, 0));
}

#[test]
fn kfree_of_object_of_destroyed_cache() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let c = s
        .kmem_cache_create("doomed", 200, 0, SlabFlags::NO_MERGE, None)
        .unwrap();
    let p = c.alloc(GFP_KERNEL).unwrap();
    c.free(p).unwrap();
    c.destroy().unwrap();
    let e = s.kfree(p.as_ptr()).unwrap_err();
    assert!(matches!(e, SlabFreeError::NotSlab { .. }), "{e:?}");
    // Destroyed with a live object: the object stays valid, kfree works
    // once and refuses the second time.
    let c = s
        .kmem_cache_create("leaky", 200, 0, SlabFlags::NO_MERGE, None)
        .unwrap();
    let p = c.alloc(GFP_KERNEL).unwrap();
    let q = c.alloc(GFP_KERNEL).unwrap();
    assert!(c.destroy().is_err());
    eprintln!("{}", log(&m));
    s.kfree(p.as_ptr()).unwrap();
    let e = s.kfree(p.as_ptr()).unwrap_err();
    assert!(matches!(e, SlabFreeError::DoubleFree { .. }), "{e:?}");
    s.kfree(q.as_ptr()).unwrap();
    let mut out = String::new();
    kmem::slab::slabinfo::slabinfo(&s, &mut out).unwrap();
    assert!(!out.contains("leaky"), "{out}");
    assert_consistent(&s, 192, 300);
}

// ---------------------------------------------------------------------
// Bulk frees with a bad entry in the middle.
// ---------------------------------------------------------------------

#[test]
fn kfree_bulk_with_bad_entries() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let mut v: Vec<*mut u8> = (0..20)
        .map(|_| s.kmalloc(64, GFP_KERNEL).unwrap().as_ptr())
        .collect();
    let x = 1u64;
    let freed = v[3];
    s.kfree(freed).unwrap();
    let mut bulk = v.clone();
    bulk[10] = &x as *const u64 as *mut u8; // foreign, in the middle
    bulk.insert(15, unsafe { v[6].add(8) }); // interior
    bulk.push(v[0]); // duplicate inside the batch
    let e = s.kfree_bulk(&bulk).unwrap_err();
    // The first error is the earliest bad entry: v[3], freed already.
    assert!(
        matches!(e, SlabFreeError::DoubleFree { addr, .. } if addr == freed as usize),
        "{e:?}"
    );
    let l = log(&m);
    assert!(l.contains("is not in the direct map"), "{l}");
    assert!(l.contains("Invalid object pointer"), "{l}");
    assert_eq!(l.matches("Object already free").count(), 2, "{l}");
    // Everything else was freed: v[10] is still live.
    s.kfree(v[10]).unwrap();
    v.clear();
    assert_consistent(&s, 64, 300);
}

#[test]
fn kmem_cache_free_bulk_with_bad_entries() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let a = s
        .kmem_cache_create("bulk_a", 56, 0, SlabFlags::NO_MERGE, None)
        .unwrap();
    let b = s
        .kmem_cache_create("bulk_b", 56, 0, SlabFlags::NO_MERGE, None)
        .unwrap();
    let mut v = vec![std::ptr::null_mut(); 16];
    a.alloc_bulk(GFP_KERNEL, &mut v).unwrap();
    let other = b.alloc(GFP_KERNEL).unwrap();
    let k = s.kmalloc(20_000, GFP_KERNEL).unwrap();
    let mut bulk = v.clone();
    bulk.insert(5, other.as_ptr());
    bulk.insert(9, k.as_ptr());
    bulk.insert(11, std::ptr::null_mut());
    let e = a.free_bulk(&bulk);
    eprintln!("free_bulk = {e:?}\n{}", log(&m));
    assert!(matches!(e, Err(SlabFreeError::WrongCache { .. })), "{e:?}");
    // The wrong-cache object and the large block are still live.
    b.free(other).unwrap();
    s.kfree(k.as_ptr()).unwrap();
    assert_eq!(a.validate().errors, 0);
    assert_eq!(a.active_objects(), 0, "every object of bulk_a went back");
    a.destroy().unwrap();
    b.destroy().unwrap();
}

// ---------------------------------------------------------------------
// Sizes, contexts, cache parameters.
// ---------------------------------------------------------------------

#[test]
fn huge_sizes_warn_once_and_nowarn_is_quiet() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    // A __GFP_NOWARN failure first: it does not use up the one warning.
    assert!(s
        .kmalloc(KMALLOC_MAX_SIZE + 1, GFP_KERNEL | Gfp::NOWARN)
        .is_err());
    assert_eq!(m.platform().log_len(), 0);
    for (i, size) in [KMALLOC_MAX_SIZE + 1, usize::MAX, usize::MAX / 2]
        .into_iter()
        .enumerate()
    {
        m.platform().take_log();
        let e = s.kmalloc(size, GFP_KERNEL).unwrap_err();
        assert!(
            matches!(e, kmem::error::AllocError::SizeTooLarge { .. }),
            "{e:?}"
        );
        let l = log(&m);
        if i == 0 {
            // Linux's WARN_ON_ONCE_GFP in the page allocator: the first
            // failure warns, later ones fail quietly.
            assert!(l.contains("above KMALLOC_MAX_SIZE"), "{size}: {l}");
        } else {
            assert_eq!(l, "", "{size}: warned once already");
        }
        let e = s.kzalloc(size, GFP_ATOMIC | Gfp::NOWARN).unwrap_err();
        assert!(
            matches!(e, kmem::error::AllocError::SizeTooLarge { .. }),
            "{e:?}"
        );
        assert_eq!(m.platform().log_len(), 0);
        assert!(s.kmalloc_node(size, GFP_KERNEL | Gfp::NOWARN, 0).is_err());
        assert!(s
            .krealloc(std::ptr::null(), size, GFP_KERNEL | Gfp::NOWARN)
            .is_err());
        assert_eq!(m.platform().log_len(), 0);
    }
    // krealloc of a live object to a huge size leaves it intact.
    let p = s.kmalloc(64, GFP_KERNEL).unwrap().as_ptr();
    unsafe { p.write_bytes(0x5c, 64) };
    let e = s.krealloc(p, KMALLOC_MAX_SIZE + 1, GFP_KERNEL).unwrap_err();
    assert!(matches!(e, ReallocError::Alloc(_)), "{e:?}");
    assert!((0..64).all(|i| unsafe { *p.add(i) } == 0x5c));
    s.kfree(p).unwrap();
    // kmalloc_array / kcalloc overflow and just-over-the-limit products.
    assert!(s.kmalloc_array(usize::MAX, 2, GFP_KERNEL).is_err());
    assert!(s.kmalloc_array(2, usize::MAX, GFP_KERNEL).is_err());
    assert!(s.kcalloc(1 << 32, 1 << 32, GFP_KERNEL).is_err());
    let e = s.kmalloc_array(1 << 20, 5, GFP_KERNEL).unwrap_err();
    assert!(matches!(e, kmem::error::AllocError::SizeTooLarge { size, .. } if size == 5 << 20));
    assert_eq!(s.large_kmalloc_stats().2, 0);
    // The page allocator's order check is the same warning site: used up.
    m.platform().take_log();
    assert!(m.pages().alloc_pages(GFP_KERNEL, 11).is_err());
    assert_eq!(m.platform().log_len(), 0);
}

#[test]
fn blocking_flags_in_atomic_context_every_entry_point() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let c = s
        .kmem_cache_create("ctx", 72, 0, SlabFlags::NO_MERGE, None)
        .unwrap();
    let d = s
        .kmem_cache_create("ctx_dbg", 72, 0, SlabFlags::DEBUG_DEFAULT, None)
        .unwrap();
    // Warm fast paths.
    let p = c.alloc(GFP_KERNEL).unwrap();
    c.free(p).unwrap();
    let guards: Vec<(&str, EnterContext)> = vec![
        ("irq", kmem_host::irq),
        ("softirq", kmem_host::softirq),
        ("preempt", kmem_host::preempt_disable),
        ("irqs off", kmem_host::local_irq_disable),
        ("bh off", kmem_host::local_bh_disable),
        ("rcu", kmem_host::rcu_read_lock),
        ("spin", kmem_host::spin_lock),
    ];
    for (what, g) in guards {
        let _g = g();
        m.platform().take_log();
        let r: Vec<(&str, bool)> = vec![
            ("kmalloc small", s.kmalloc(64, GFP_KERNEL).is_err()),
            ("kmalloc large", s.kmalloc(20_000, GFP_KERNEL).is_err()),
            ("kzalloc", s.kzalloc(10, GFP_KERNEL).is_err()),
            ("kcalloc", s.kcalloc(3, 10, GFP_KERNEL).is_err()),
            ("kmalloc_node", s.kmalloc_node(64, GFP_KERNEL, 0).is_err()),
            ("cache alloc", c.alloc(GFP_KERNEL).is_err()),
            ("cache zalloc", c.zalloc(GFP_KERNEL).is_err()),
            ("cache alloc_node", c.alloc_node(GFP_KERNEL, 0).is_err()),
            ("debug cache alloc", d.alloc(GFP_KERNEL).is_err()),
            (
                "alloc_bulk",
                c.alloc_bulk(GFP_KERNEL, &mut [std::ptr::null_mut(); 4])
                    .is_err(),
            ),
            (
                "krealloc(NULL)",
                s.krealloc(std::ptr::null(), 64, GFP_KERNEL).is_err(),
            ),
        ];
        let l = log(&m);
        for (entry, failed) in r {
            assert!(failed, "{what}: {entry} with GFP_KERNEL succeeded");
        }
        assert!(
            l.matches("BUG: sleeping function called from invalid context")
                .count()
                >= 11,
            "{what}: {l}"
        );
        // GFP_ATOMIC works everywhere.
        let p = s.kmalloc(20_000, GFP_ATOMIC).unwrap();
        s.kfree(p.as_ptr()).unwrap();
        let p = d.alloc(GFP_ATOMIC).unwrap();
        d.free(p).unwrap();
    }
    assert_eq!(c.validate().errors, 0);
    assert_eq!(d.validate().errors, 0);
    assert_eq!(c.active_objects(), 0);
    c.destroy().unwrap();
    d.destroy().unwrap();
}

#[test]
fn krealloc_grow_in_atomic_context_keeps_the_object() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let p = s.kmalloc(64, GFP_KERNEL).unwrap().as_ptr();
    unsafe { p.write_bytes(0x42, 64) };
    {
        let _g = kmem_host::irq();
        let e = s.krealloc(p, 5000, GFP_KERNEL).unwrap_err();
        assert!(
            matches!(
                e,
                ReallocError::Alloc(kmem::error::AllocError::SleepInAtomic(_))
            ),
            "{e:?}"
        );
    }
    assert!((0..64).all(|i| unsafe { *p.add(i) } == 0x42));
    s.kfree(p).unwrap();
    assert_consistent(&s, 64, 100);
}

#[test]
fn kmem_cache_create_in_atomic_context_is_refused() {
    // Linux: kmem_cache_sanity_check refuses in_interrupt(); creation takes
    // slab_mutex and may sleep.
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let mut results = Vec::new();
    {
        let _g = kmem_host::irq();
        // Mergeable with kmalloc-rcl-64 etc: no allocation needed.
        results.push((
            "mergeable",
            s.kmem_cache_create("irq_merge", 64, 0, SlabFlags::RECLAIM_ACCOUNT, None)
                .map(|c| c.destroy()),
        ));
        results.push((
            "unmergeable",
            s.kmem_cache_create("irq_nomerge", 64, 0, SlabFlags::NO_MERGE, None)
                .map(|c| c.destroy()),
        ));
    }
    let l = log(&m);
    eprintln!("{results:?}\n{l}");
    for (what, r) in results {
        assert!(
            r.is_err(),
            "kmem_cache_create ({what}) in hard IRQ succeeded"
        );
    }
}

#[test]
fn bad_cache_parameters_more() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    for (size, align, flags) in [
        (64usize, 3usize, SlabFlags::empty()),
        (64, 1 << 62, SlabFlags::empty()),
        (64, 1 << 63, SlabFlags::empty()),
        (64, usize::MAX, SlabFlags::empty()),
        (usize::MAX, 0, SlabFlags::empty()),
        (KMALLOC_MAX_SIZE, 0, SlabFlags::DEBUG_DEFAULT),
        (KMALLOC_MAX_SIZE, 0, SlabFlags::empty()),
        (KMALLOC_MAX_SIZE, 4096, SlabFlags::HWCACHE_ALIGN),
        (1, 1 << 20, SlabFlags::empty()),
        (1, 1 << 30, SlabFlags::empty()),
    ] {
        m.platform().take_log();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            s.kmem_cache_create("bad", size, align, flags, None)
                .map(|c| (c.order_objects(), c.destroy()))
        }));
        match r {
            Err(_) => panic!("kmem_cache_create({size}, align {align}, {flags:?}) panicked"),
            Ok(Ok((oo, d))) => {
                eprintln!("size {size} align {align} {flags:?}: created {oo:?} {d:?}")
            }
            Ok(Err(e)) => {
                let l = log(&m);
                eprintln!("size {size} align {align} {flags:?}: {e} / {l}");
                assert!(l.contains("kmem_cache_create"), "{l}");
            }
        }
    }
    // Long and odd names.
    let long = "x".repeat(200);
    let c = s
        .kmem_cache_create(&long, 64, 0, SlabFlags::NO_MERGE, None)
        .unwrap();
    assert!(c.name().len() <= 48);
    c.destroy().unwrap();
    let c = s
        .kmem_cache_create("é".repeat(30).as_str(), 64, 0, SlabFlags::NO_MERGE, None)
        .unwrap();
    assert!(c.name().len() <= 48);
    c.destroy().unwrap();
    assert_consistent(&s, 64, 100);
}

#[test]
fn unexpected_zone_flags_are_fixed_with_a_warning() {
    // Linux's kmalloc_fix_flags (GFP_SLAB_BUG_MASK) warns for any slab
    // allocation with __GFP_DMA32 / __GFP_HIGHMEM, not only large kmalloc.
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let p = s.kmalloc(64, GFP_KERNEL | Gfp::HIGHMEM).unwrap();
    let l1 = log(&m);
    s.kfree(p.as_ptr()).unwrap();
    let p = s.kmalloc(20_000, GFP_KERNEL | Gfp::HIGHMEM).unwrap();
    let l2 = log(&m);
    s.kfree(p.as_ptr()).unwrap();
    eprintln!("small: {l1:?}\nlarge: {l2:?}");
    assert!(l2.contains("Unexpected gfp"), "{l2}");
    assert!(
        l1.contains("Unexpected gfp"),
        "small kmalloc with __GFP_HIGHMEM: no warning"
    );
}

#[test]
fn destroy_twice_through_a_merged_alias_and_use_after() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let a = s
        .kmem_cache_create("alias_a", 40, 0, SlabFlags::empty(), None)
        .unwrap();
    let b = s
        .kmem_cache_create("alias_b", 40, 0, SlabFlags::empty(), None)
        .unwrap();
    let merged = std::ptr::eq(&*a, &*b);
    let p = b.alloc(GFP_KERNEL).unwrap();
    a.destroy().unwrap();
    // b still works if merged.
    b.free(p).unwrap();
    let p = b.alloc(GFP_KERNEL).unwrap();
    b.free(p).unwrap();
    b.destroy().unwrap();
    eprintln!("merged={merged}");
    assert_consistent(&s, 40, 200);
}

#[test]
fn wrong_cache_between_kmalloc_types_and_sizes() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let dma = s.kmalloc(64, GFP_KERNEL | Gfp::DMA).unwrap();
    let k = s.kmalloc_slab(64, GFP_KERNEL);
    let e = k.free(dma).unwrap_err();
    assert!(
        matches!(e, SlabFreeError::WrongCache { given, actual, .. } if given.as_str() == "kmalloc-64" && actual.as_str() == "dma-kmalloc-64"),
        "{e:?}"
    );
    let k128 = s.kmalloc_slab(128, GFP_KERNEL);
    let p = s.kmalloc(64, GFP_KERNEL).unwrap();
    assert!(matches!(
        k128.free(p).unwrap_err(),
        SlabFreeError::WrongCache { .. }
    ));
    // Interior pointer given to the wrong cache: which error wins?
    let e = k128
        .free(NonNull::new(unsafe { p.as_ptr().add(8) }).unwrap())
        .unwrap_err();
    eprintln!("wrong cache + interior: {e}");
    s.kfree(dma.as_ptr()).unwrap();
    s.kfree(p.as_ptr()).unwrap();
    assert_eq!(k.validate().errors, 0);
    assert_eq!(k128.validate().errors, 0);
    assert_consistent(&s, 64, 200);
}

#[test]
fn messages_read_like_slub() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let p = s.kmalloc(64, GFP_KERNEL).unwrap().as_ptr();
    s.kfree(p).unwrap();
    m.platform().take_log();
    let _ = s.kfree(p);
    let _ = s.kfree(unsafe { p.add(8) });
    let x = 0u64;
    let _ = s.kfree(&x as *const u64 as *const u8);
    let big = s.kmalloc(20_000, GFP_KERNEL).unwrap().as_ptr();
    let _ = s.kfree(unsafe { big.add(4096) });
    s.kfree(big).unwrap();
    let _ = s.kfree(big);
    for l in m.platform().take_log() {
        eprintln!("---\n{l}");
        assert!(l.contains("freed at "), "no call site: {l}");
        assert!(
            l.contains("slab_misuse.rs"),
            "call site is not the caller's: {l}"
        );
    }
}

#[test]
fn kfree_of_the_bootstrap_kmem_cache_is_refused() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let kc = s.kmem_cache() as *const KmemCache<HostPlatform> as *const u8;
    let r = s.kfree(kc);
    let l = log(&m);
    // If accepted, the next cache structure is built over kmem_cache itself.
    let c = s
        .kmem_cache_create("after", 100, 0, SlabFlags::NO_MERGE, None)
        .unwrap();
    let at = &*c as *const KmemCache<HostPlatform> as *const u8;
    eprintln!("kfree(&kmem_cache) = {r:?} / {l} / next cache at {at:p}, kmem_cache at {kc:p}");
    assert!(
        r.is_err(),
        "kfree(&kmem_cache) accepted; next cache built at {at:p} (kmem_cache is at {kc:p})"
    );
    std::mem::forget(c);
}

#[test]
fn kfree_of_a_live_cache_structure_is_refused() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let c = s
        .kmem_cache_create("victim", 100, 0, SlabFlags::NO_MERGE, None)
        .unwrap();
    let cp = &*c as *const KmemCache<HostPlatform> as *const u8;
    let r = s.kfree(cp);
    let d = s
        .kmem_cache_create("squatter", 300, 0, SlabFlags::NO_MERGE, None)
        .unwrap();
    let dp = &*d as *const KmemCache<HostPlatform> as *const u8;
    eprintln!("kfree(cache struct) = {r:?}; victim at {cp:p}, next cache at {dp:p}; victim's name now {:?}", c.name());
    assert!(r.is_err(), "kfree of a live cache's struct accepted; the next cache is built at {dp:p} (victim at {cp:p}, victim's name now {:?})", c.name());
    d.destroy().unwrap();
    c.destroy().unwrap();
}

#[test]
fn kfree_rcu_with_absurd_offsets() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let p = s.kmalloc(64, GFP_KERNEL).unwrap().as_ptr();
    for off in [60usize, 4, 64, usize::MAX - 8, usize::MAX] {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.kfree_rcu(p, off)));
        match r {
            Err(_) => panic!("kfree_rcu(p, {off}) panicked"),
            Ok(r) => {
                eprintln!("kfree_rcu(p, {off}) = {r:?}");
                assert!(r.is_err(), "kfree_rcu(p, {off}) accepted");
            }
        }
    }
    eprintln!("{}", log(&m));
    assert_eq!(s.rcu_pending(), (0, 0));
    s.kfree(p).unwrap();
}

#[test]
fn kmem_cache_create_merging_in_atomic_context() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let a = s
        .kmem_cache_create("merge_base", 40, 0, SlabFlags::empty(), None)
        .unwrap();
    let r = {
        let _g = kmem_host::irq();
        s.kmem_cache_create("merge_irq", 40, 0, SlabFlags::empty(), None)
    };
    eprintln!(
        "merge in irq: {:?} / {}",
        r.as_ref().map(|c| c.name().to_string()),
        log(&m)
    );
    let ok = r.is_ok();
    drop(r);
    a.destroy().unwrap();
    assert!(
        !ok,
        "kmem_cache_create in hard IRQ succeeded through a merge"
    );
}

#[test]
fn kmem_cache_destroy_in_atomic_context() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let a = s
        .kmem_cache_create("destroy_irq", 40, 0, SlabFlags::NO_MERGE, None)
        .unwrap();
    let p = a.alloc(GFP_KERNEL).unwrap();
    a.free(p).unwrap();
    let r = {
        let _g = kmem_host::irq();
        a.destroy()
    };
    let l = log(&m);
    eprintln!("destroy in irq: {r:?} / {l}");
    assert!(
        l.contains("sleeping function called from invalid context"),
        "kmem_cache_destroy in hard IRQ: no report"
    );
}

#[test]
fn kmem_cache_free_bulk_skips_null() {
    // Linux's kmem_cache_free_bulk / build_detached_freelist skip NULL.
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let a = s
        .kmem_cache_create("bulk_null", 56, 0, SlabFlags::NO_MERGE, None)
        .unwrap();
    let p = a.alloc(GFP_KERNEL).unwrap().as_ptr();
    let r = a.free_bulk(&[std::ptr::null_mut(), p, std::ptr::null_mut()]);
    let l = log(&m);
    eprintln!("free_bulk with NULLs: {r:?} / {l}");
    assert!(r.is_ok(), "{r:?}: {l}");
    a.destroy().unwrap();
}

#[test]
fn free_bulk_double_free_in_debug_cache() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let c = s
        .kmem_cache_create("bulk_dbg", 72, 0, SlabFlags::DEBUG_DEFAULT, None)
        .unwrap();
    let mut v = vec![std::ptr::null_mut(); 8];
    c.alloc_bulk(GFP_KERNEL, &mut v).unwrap();
    let mut bulk = v.clone();
    bulk.insert(4, v[1]);
    bulk.insert(6, unsafe { v[2].add(1) });
    let e = c.free_bulk(&bulk).unwrap_err();
    assert!(matches!(e, SlabFreeError::DoubleFree { .. }), "{e:?}");
    let l = log(&m);
    assert!(l.contains("BUG bulk_dbg: Object already free"), "{l}");
    assert!(l.contains("Invalid object pointer"), "{l}");
    assert_eq!(c.validate().errors, 0, "{}", log(&m));
    assert_eq!(c.active_objects(), 0);
    c.destroy().unwrap();
}

#[test]
fn kfree_of_rcu_pending_slab_and_reserved_memory() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let c = s
        .kmem_cache_create(
            "tsrcu",
            256,
            0,
            SlabFlags::TYPESAFE_BY_RCU | SlabFlags::NO_MERGE,
            None,
        )
        .unwrap();
    let p = c.alloc(GFP_KERNEL).unwrap();
    c.free(p).unwrap();
    c.shrink();
    let pend = s.rcu_pending();
    let e = s.kfree(p.as_ptr());
    eprintln!(
        "pending {pend:?}; kfree of an object of an RCU-pending slab: {e:?} / {}",
        log(&m)
    );
    if pend.1 > 0 {
        assert!(
            matches!(
                e,
                Err(SlabFreeError::NotSlab {
                    kind: PageKind::RcuSlab,
                    ..
                })
            ),
            "{e:?}"
        );
        assert!(matches!(
            c.free(p),
            Err(SlabFreeError::NotSlab {
                kind: PageKind::RcuSlab,
                ..
            })
        ));
    }
    assert!(s.rcu_barrier());
    // pfn 0 of the direct map: reserved / hole.
    let base = kmem::Platform::direct_map_offset(m.platform());
    let e = s.kfree((base + 64) as *const u8);
    eprintln!("kfree(pfn 0) = {e:?} / {}", log(&m));
    assert!(e.is_err());
    c.destroy().unwrap();
}

#[test]
fn kfree_rcu_negative_offset_does_not_write_outside_the_object() {
    // usize::MAX - 15 is -16: `offset + 16` wraps to 0 (release builds) and
    // passes the bounds check; the rcu_head would go 16 bytes before the
    // object. Debug builds panic on the overflow instead.
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let v: Vec<*mut u8> = (0..8)
        .map(|_| s.kmalloc(64, GFP_KERNEL).unwrap().as_ptr())
        .collect();
    for &p in &v {
        unsafe { p.write_bytes(0x11, 64) };
    }
    let p = *v
        .iter()
        .find(|&&p| v.contains(&unsafe { p.sub(64) }))
        .unwrap();
    let prev = unsafe { p.sub(64) };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        s.kfree_rcu(p, usize::MAX - 15)
    }));
    let intact = (0..64).all(|i| unsafe { *prev.add(i) } == 0x11);
    eprintln!(
        "kfree_rcu(p, -16) = {r:?}; previous object intact: {intact}; pending {:?}",
        s.rcu_pending()
    );
    assert!(
        matches!(r, Ok(Err(_))),
        "kfree_rcu(p, -16): {r:?} (previous object intact: {intact})"
    );
    assert!(intact, "kfree_rcu wrote into the previous object");
}

/// A plain `kmem_cache_free` / `kfree` (or `ksize`, `krealloc`) of an object
/// that `kfree_rcu` queued is refused with its own error on a hardened
/// cache whose free-pointer slot lies after the object (a constructor or
/// `SLAB_TYPESAFE_BY_RCU` puts it there), and the grace period still frees
/// it exactly once. Before, the free was accepted: the object could be
/// handed out again before the grace period, which then freed it under its
/// new owner.
#[test]
fn kfree_of_an_object_queued_by_kfree_rcu_is_refused() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    fn ctor(p: NonNull<u8>) {
        unsafe { p.as_ptr().write_bytes(0x5a, 48) };
    }
    let with_ctor = s
        .kmem_cache_create("rcu_ctor", 48, 8, SlabFlags::empty(), Some(ctor))
        .unwrap();
    let typesafe = s
        .kmem_cache_create("rcu_typesafe", 64, 8, SlabFlags::TYPESAFE_BY_RCU, None)
        .unwrap();
    for c in [&with_ctor, &typesafe] {
        let p = c.alloc(GFP_KERNEL).unwrap();
        s.kfree_rcu(p.as_ptr(), 16).unwrap();
        let r = c.free(p);
        assert!(
            matches!(r, Err(SlabFreeError::RcuQueued { .. })),
            "{}: kmem_cache_free after kfree_rcu: {r:?}",
            c.name()
        );
        assert!(log(&m).contains("queued by kfree_rcu"));
        assert!(matches!(
            s.kfree(p.as_ptr()),
            Err(SlabFreeError::RcuQueued { .. })
        ));
        assert_eq!(s.ksize(p.as_ptr()), 0, "ksize of a queued object");
        log(&m);
        // Nothing handed out twice while it waits.
        let v: Vec<_> = (0..64).map(|_| c.alloc(GFP_KERNEL).unwrap()).collect();
        assert!(!v.contains(&p), "a queued object was handed out");
        for q in v {
            c.free(q).unwrap();
        }
        let r = c.validate();
        assert!(r.slabs >= 1, "{r:?}");
        assert_eq!(r.errors, 0, "validation of a queued object: {}", log(&m));
        assert_eq!(s.rcu_pending().0, 1);
        assert!(s.rcu_barrier());
        assert_eq!(s.rcu_pending().0, 0);
        assert!(!log(&m).contains("overwritten"));
        // Freed once by the grace period: a free now is a double free.
        assert!(matches!(c.free(p), Err(SlabFreeError::DoubleFree { .. })));
        log(&m);
        assert_unique_cache(c, 200);
    }
    with_ctor.destroy().unwrap();
    typesafe.destroy().unwrap();
}

/// kfree_rcu writes only the rcu_head: readers may read every other byte of
/// the object until the grace period ends (a kmalloc cache keeps its
/// free-pointer slot inside the object, so no mark goes there).
#[test]
fn kfree_rcu_writes_nothing_but_the_head() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    for size in [32usize, 64, 192, 1024, 4096] {
        let p = s.kmalloc(size, GFP_KERNEL).unwrap().as_ptr();
        unsafe { p.write_bytes(0x5a, size) };
        s.kfree_rcu(p, 0).unwrap();
        let bytes = unsafe { std::slice::from_raw_parts(p.add(16), size - 16) };
        assert!(
            bytes.iter().all(|&b| b == 0x5a),
            "{size}: kfree_rcu wrote outside its rcu_head"
        );
        assert!(s.rcu_barrier());
    }
}

/// Linux's ___slab_alloc ignores a node that is not in slab_nodes (node =
/// NUMA_NO_NODE) for every cache, debug caches included. kmem's non-debug
/// path does the same (alloc_fast); the debug path (alloc_single) passes the
/// raw node to new_slab, where the page allocator fails __GFP_THISNODE on
/// a missing node (NoSuchNode): every path now ignores it.
#[test]
fn debug_cache_thisnode_on_missing_node_like_plain_cache() {
    let m = machine();
    assert_eq!(m.pages().nr_nodes(), 1);
    let s = slab(&m, SlabConfig::default());
    let plain = s
        .kmem_cache_create("plain", 64, 0, SlabFlags::NO_MERGE, None)
        .unwrap();
    let dbg = s
        .kmem_cache_create(
            "dbg",
            64,
            0,
            SlabFlags::NO_MERGE | SlabFlags::RED_ZONE,
            None,
        )
        .unwrap();
    let p = plain
        .alloc_node(GFP_KERNEL | Gfp::THISNODE, 3)
        .expect("plain cache: missing node ignored");
    let r = dbg.alloc_node(GFP_KERNEL | Gfp::THISNODE, 3);
    let log = m.platform().take_log().join("\n");
    plain.free(p).unwrap();
    match r {
        Ok(q) => dbg.free(q).unwrap(),
        Err(e) => panic!(
            "debug cache alloc_node(GFP_KERNEL|__GFP_THISNODE, node 3) on a 1-node machine failed \
             ({e:?}) where the same cache without debugging succeeds; log:\n{log}"
        ),
    }
}

/// Same root cause through `slab_debug` (every cache debug): a small
/// kmalloc_node with __GFP_THISNODE on a node the machine lacks.
#[test]
fn slab_debug_kmalloc_node_thisnode_missing_node() {
    let m = machine();
    let cfg = SlabConfig {
        slab_debug: kmem::slab::SlabDebug::new("FZPU"),
        ..Default::default()
    };
    let s = slab(&m, cfg);
    let r = s.kmalloc_node(100, GFP_KERNEL | Gfp::THISNODE, 2);
    match r {
        Ok(p) => s.kfree(p.as_ptr()).unwrap(),
        Err(e) => panic!("slab_debug kmalloc_node(100, THISNODE, 2) on a 1-node machine: {e:?}"),
    }
}

/// `kmem_cache_zalloc` from a cache with a constructor zeroes what the
/// constructor built: warned once (Linux's plain WARN_ON_ONCE, so
/// `__GFP_NOWARN` does not silence it; Linux checks when a slab is grown,
/// kmem at the first such allocation). The object still comes back
/// zeroed; plain allocations keep the constructor's bytes and never warn,
/// nor does `kzalloc` (kmalloc caches have no constructor). The inlined
/// fast path (`alloc` with `__GFP_ZERO`) warns too.
#[test]
fn zalloc_from_a_cache_with_a_constructor_warns_once() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    fn ctor(p: NonNull<u8>) {
        unsafe { p.as_ptr().write_bytes(0xab, 40) };
    }
    let c = s
        .kmem_cache_create("ctor_zero", 40, 8, SlabFlags::empty(), Some(ctor))
        .unwrap();
    log(&m);
    let p = c.alloc(GFP_KERNEL).unwrap();
    assert!(unsafe { std::slice::from_raw_parts(p.as_ptr(), 40) }
        .iter()
        .all(|&b| b == 0xab));
    let q = s.kzalloc(40, GFP_KERNEL).unwrap();
    assert_eq!(log(&m), "", "a plain alloc or a kzalloc warned");
    let z = c.zalloc(GFP_KERNEL | Gfp::NOWARN).unwrap();
    assert!(unsafe { std::slice::from_raw_parts(z.as_ptr(), 40) }
        .iter()
        .all(|&b| b == 0));
    let l = log(&m);
    assert!(
        l.contains("WARNING: ctor_zero: a __GFP_ZERO allocation at")
            && l.contains("undoes what the constructor built"),
        "{l:?}"
    );
    // Once: more zeroed allocations, slabs grown for them, say nothing.
    let more: Vec<_> = (0..300).map(|_| c.zalloc(GFP_KERNEL).unwrap()).collect();
    assert_eq!(log(&m), "", "warned twice");
    for o in more.into_iter().chain([p, z]) {
        c.free(o).unwrap();
    }
    s.kfree(q.as_ptr()).unwrap();
    c.destroy().unwrap();

    // kmem_cache_alloc(__GFP_ZERO) from the sheaf, on an allocator that has
    // not warned yet.
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let c = s
        .kmem_cache_create("ctor_zero", 40, 8, SlabFlags::empty(), Some(ctor))
        .unwrap();
    let p = c.alloc(GFP_KERNEL).unwrap();
    c.free(p).unwrap();
    log(&m);
    let z = c.alloc(GFP_KERNEL | Gfp::ZERO).unwrap();
    assert_eq!(z, p, "not the sheaf's object");
    assert!(unsafe { std::slice::from_raw_parts(z.as_ptr(), 40) }
        .iter()
        .all(|&b| b == 0));
    let l = log(&m);
    assert!(
        l.contains("WARNING: ctor_zero: a __GFP_ZERO allocation from a cache with a constructor"),
        "{l:?}"
    );
    c.free(z).unwrap();
    c.destroy().unwrap();
}
