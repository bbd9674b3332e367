//! Linux's slub_kunit scenarios (lib/tests/slub_kunit.c), with the same
//! expected error counts, and test_meminit's checks for kmalloc and
//! kmem_cache (zeroing, constructor, TYPESAFE_BY_RCU contents, bulk).
//!
//! Linux counts `slab_errors` once per report and once per repair; kmem's
//! per-cache [`KmemCache::errors`] counts the same way.

use kmem::gfp::{Gfp, GFP_KERNEL};
use kmem::slab::{
    KmemCache, SlabAllocator, SlabConfig, SlabFlags, POISON_END, POISON_FREE, SLUB_RED_ACTIVE,
};
use kmem_host::{HostPlatform, Machine, MachineConfig};
use std::ptr::NonNull;

fn machine() -> Machine {
    Machine::new(MachineConfig {
        ram_bytes: 64 << 20,
        ..Default::default()
    })
    .unwrap()
}

fn slab(m: &Machine) -> SlabAllocator<'_, HostPlatform> {
    SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap()
}

/// Linux's `test_kmem_cache_create`: no `slab_debug` flags on top.
fn create<'s>(
    s: &'s SlabAllocator<'_, HostPlatform>,
    name: &str,
    size: usize,
    flags: SlabFlags,
) -> kmem::slab::KmemCacheRef<'s, HostPlatform> {
    s.kmem_cache_create(name, size, 0, flags | SlabFlags::NO_USER_FLAGS, None)
        .unwrap()
}

/// Errors a cache has counted since `before`.
fn errs(c: &KmemCache<HostPlatform>, before: usize) -> usize {
    c.errors() - before
}

#[test]
fn test_clobber_zone() {
    let m = machine();
    let s = slab(&m);
    let c = create(&s, "TestSlub_RZ_alloc", 64, SlabFlags::RED_ZONE);
    let p = c.alloc(GFP_KERNEL).unwrap().as_ptr();
    unsafe { *p.add(64) = 0x12 };
    let r = c.validate();
    assert_eq!(r.errors, 2, "{:?}", m.platform().take_log());
    assert!(m
        .platform()
        .log_contains("BUG TestSlub_RZ_alloc: Right Redzone overwritten"));
    assert!(m.platform().log_contains("First byte 0x12 instead of 0xcc"));
    assert!(m
        .platform()
        .log_contains("FIX TestSlub_RZ_alloc: Restoring Right Redzone"));
    c.free(NonNull::new(p).unwrap()).unwrap();
    c.destroy().unwrap();
}

#[test]
fn test_next_pointer() {
    let m = machine();
    let s = slab(&m);
    let c = create(&s, "TestSlub_next_ptr_free", 64, SlabFlags::POISON);
    let p = c.alloc(GFP_KERNEL).unwrap().as_ptr();
    c.free(NonNull::new(p).unwrap()).unwrap();
    let ptr_addr = unsafe { p.add(c.freeptr_offset()) } as *mut usize;
    let tmp = unsafe { ptr_addr.read() };
    unsafe {
        let b = p.add(c.freeptr_offset());
        *b = !*b;
    }
    // The corrupted free chain, the wrong in-use count, its repair.
    let e = c.errors();
    c.validate();
    assert_eq!(errs(&c, e), 3, "{:#?}", m.platform().take_log());
    assert!(m.platform().log_contains("Freechain corrupt"));
    // Repair the pointer: the count (fixed for a cut chain) is now wrong.
    unsafe { ptr_addr.write(tmp) };
    let e = c.errors();
    c.validate();
    assert_eq!(errs(&c, e), 2, "{:#?}", m.platform().take_log());
    let e = c.errors();
    c.validate();
    assert_eq!(errs(&c, e), 0, "{:#?}", m.platform().take_log());
    c.destroy().unwrap();
}

#[test]
fn test_first_word() {
    let m = machine();
    let s = slab(&m);
    let c = create(&s, "TestSlub_1th_word_free", 64, SlabFlags::POISON);
    let p = c.alloc(GFP_KERNEL).unwrap().as_ptr();
    c.free(NonNull::new(p).unwrap()).unwrap();
    unsafe { *p = 0x78 };
    let r = c.validate();
    assert_eq!(r.errors, 2, "{:#?}", m.platform().take_log());
    assert!(m
        .platform()
        .log_contains("BUG TestSlub_1th_word_free: Poison overwritten"));
    c.destroy().unwrap();
}

#[test]
fn test_clobber_50th_byte() {
    let m = machine();
    let s = slab(&m);
    let c = create(&s, "TestSlub_50th_word_free", 64, SlabFlags::POISON);
    let p = c.alloc(GFP_KERNEL).unwrap().as_ptr();
    c.free(NonNull::new(p).unwrap()).unwrap();
    unsafe { *p.add(50) = 0x9a };
    let r = c.validate();
    assert_eq!(r.errors, 2, "{:#?}", m.platform().take_log());
    assert!(m.platform().log_contains("First byte 0x9a instead of 0x6b"));
    c.destroy().unwrap();
}

#[test]
fn test_clobber_redzone_free() {
    let m = machine();
    let s = slab(&m);
    let c = create(&s, "TestSlub_RZ_free", 64, SlabFlags::RED_ZONE);
    let p = c.alloc(GFP_KERNEL).unwrap().as_ptr();
    c.free(NonNull::new(p).unwrap()).unwrap();
    unsafe { *p.add(64) = 0xab };
    let r = c.validate();
    assert_eq!(r.errors, 2, "{:#?}", m.platform().take_log());
    assert!(m.platform().log_contains("First byte 0xab instead of 0xbb"));
    c.destroy().unwrap();
}

#[test]
fn test_kmalloc_redzone_access() {
    let m = machine();
    let s = slab(&m);
    let c = create(
        &s,
        "TestSlub_RZ_kmalloc",
        32,
        SlabFlags::KMALLOC | SlabFlags::STORE_USER | SlabFlags::RED_ZONE,
    );
    let p = c.alloc_sized(GFP_KERNEL, 18).unwrap().as_ptr();
    unsafe {
        *p.add(18) = 0xab;
        *p.add(19) = 0xab;
    }
    let r = c.validate();
    assert_eq!(r.errors, 2, "{:#?}", m.platform().take_log());
    assert!(m
        .platform()
        .log_contains("BUG TestSlub_RZ_kmalloc: kmalloc Redzone overwritten"));
    c.free(NonNull::new(p).unwrap()).unwrap();
    c.destroy().unwrap();
}

#[repr(C)]
struct RcuStruct {
    rcu: [usize; 2],
}

#[test]
fn test_kfree_rcu() {
    let m = machine();
    let s = slab(&m);
    let c = create(
        &s,
        "TestSlub_kfree_rcu",
        std::mem::size_of::<RcuStruct>(),
        SlabFlags::NO_MERGE,
    );
    let p = c.alloc(GFP_KERNEL).unwrap().as_ptr();
    s.kfree_rcu(p, std::mem::offset_of!(RcuStruct, rcu))
        .unwrap();
    assert_eq!(s.rcu_pending().0, 1);
    let e = s.errors();
    c.destroy().unwrap();
    assert_eq!(s.errors() - e, 0);
    assert_eq!(s.rcu_pending(), (0, 0));
}

#[test]
fn test_kfree_rcu_wq_destroy() {
    let m = machine();
    let s = slab(&m);
    for _ in 0..10 {
        let c = create(
            &s,
            "TestSlub_kfree_rcu_wq_destroy",
            std::mem::size_of::<RcuStruct>(),
            SlabFlags::NO_MERGE,
        );
        let p = c.alloc(GFP_KERNEL).unwrap().as_ptr() as usize;
        s.kfree_rcu(p as *const u8, 0).unwrap();
        std::thread::scope(|sc| {
            sc.spawn(move || c.destroy().unwrap()).join().unwrap();
        });
    }
    assert_eq!(s.errors(), 0);
}

#[test]
fn test_leak_destroy() {
    let m = machine();
    let s = slab(&m);
    let c = create(&s, "TestSlub_leak_destroy", 64, SlabFlags::NO_MERGE);
    let p = c.alloc(GFP_KERNEL).unwrap();
    let e = s.errors();
    let leak = c.destroy().unwrap_err();
    assert_eq!(leak.objects, 1);
    // One for the slab, one per leaked object.
    assert_eq!(s.errors() - e, 2, "{:#?}", m.platform().take_log());
    assert!(m
        .platform()
        .log_contains("BUG TestSlub_leak_destroy: Objects remaining on __kmem_cache_shutdown()"));
    assert!(m.platform().log_contains("Slab cache still has objects"));
    // The leaked object is still an object: kfree works.
    s.kfree(p.as_ptr()).unwrap();
}

#[test]
fn test_krealloc_redzone_zeroing() {
    let m = machine();
    let s = slab(&m);
    let c = create(
        &s,
        "TestSlub_krealloc",
        64,
        SlabFlags::KMALLOC | SlabFlags::STORE_USER | SlabFlags::RED_ZONE,
    );
    let p = c.alloc_sized(GFP_KERNEL, 48).unwrap().as_ptr();
    unsafe { p.write_bytes(0xff, 48) };
    // Shrink.
    let p = s.krealloc(p, 40, GFP_KERNEL | Gfp::ZERO).unwrap().as_ptr();
    for i in 40..64 {
        assert_eq!(unsafe { *p.add(i) }, SLUB_RED_ACTIVE, "byte {i}");
    }
    // Grow within the same 64-byte object.
    let p = s.krealloc(p, 56, GFP_KERNEL | Gfp::ZERO).unwrap().as_ptr();
    for i in 40..56 {
        assert_eq!(unsafe { *p.add(i) }, 0, "byte {i}");
    }
    for i in 56..64 {
        assert_eq!(unsafe { *p.add(i) }, SLUB_RED_ACTIVE, "byte {i}");
    }
    let r = c.validate();
    assert_eq!(r.errors, 0, "{:#?}", m.platform().take_log());
    unsafe { p.write_bytes(0xff, 56) };
    // Grow into a new 128-byte kmalloc object.
    let p = s.krealloc(p, 112, GFP_KERNEL | Gfp::ZERO).unwrap().as_ptr();
    for i in 0..56 {
        assert_eq!(unsafe { *p.add(i) }, 0xff, "byte {i}");
    }
    for i in 56..112 {
        assert_eq!(unsafe { *p.add(i) }, 0, "byte {i}");
    }
    s.kfree(p).unwrap();
    c.destroy().unwrap();
    assert_eq!(s.errors(), 0);
}

#[test]
fn poisoned_objects_read_poison_and_write_after_free_is_caught() {
    let m = machine();
    let s = slab(&m);
    let c = create(
        &s,
        "TestSlub_poison",
        40,
        SlabFlags::POISON | SlabFlags::CONSISTENCY_CHECKS,
    );
    let p = c.alloc(GFP_KERNEL).unwrap().as_ptr();
    // slab_debug=P hands out objects full of 0x6b, 0xa5 last.
    for i in 0..39 {
        assert_eq!(unsafe { *p.add(i) }, POISON_FREE);
    }
    assert_eq!(unsafe { *p.add(39) }, POISON_END);
    c.free(NonNull::new(p).unwrap()).unwrap();
    unsafe { *p.add(3) = 0 };
    // The next allocation checks the poison of the object it takes.
    let e = c.errors();
    let q = c.alloc(GFP_KERNEL).unwrap().as_ptr();
    assert!(errs(&c, e) >= 2, "{:#?}", m.platform().take_log());
    assert!(m
        .platform()
        .log_contains("BUG TestSlub_poison: Poison overwritten"));
    c.free(NonNull::new(q).unwrap()).unwrap();
    drop(c);
}

// ---- test_meminit (lib/test_meminit.c) checks --------------------------

fn all_zero(p: *const u8, n: usize) -> bool {
    unsafe { std::slice::from_raw_parts(p, n) }
        .iter()
        .all(|&b| b == 0)
}

#[test]
fn meminit_kmalloc_zeroing() {
    let m = machine();
    let s = slab(&m);
    for size in [
        1usize, 8, 13, 64, 100, 192, 1000, 4096, 8192, 10_000, 200_000,
    ] {
        // Dirty the memory first, free it, then ask for zeroed memory.
        let p = s.kmalloc(size, GFP_KERNEL).unwrap().as_ptr();
        unsafe { p.write_bytes(0xa5, size) };
        s.kfree(p).unwrap();
        let p = s.kzalloc(size, GFP_KERNEL).unwrap().as_ptr();
        assert!(all_zero(p, size), "kzalloc({size})");
        s.kfree(p).unwrap();
        let p = s.kcalloc(size, 1, GFP_KERNEL).unwrap().as_ptr();
        assert!(all_zero(p, size), "kcalloc({size})");
        s.kfree(p).unwrap();
    }
}

static CTOR_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn ctor(p: NonNull<u8>) {
    CTOR_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    unsafe { p.as_ptr().write_bytes(0x42, 100) };
}

#[test]
fn meminit_kmem_cache_ctor_and_zeroing() {
    let m = machine();
    let s = slab(&m);
    // Zeroing without a constructor.
    let c = create(&s, "test_cache_zero", 100, SlabFlags::empty());
    for _ in 0..3 {
        let p = c.alloc(GFP_KERNEL).unwrap().as_ptr();
        unsafe { p.write_bytes(0xee, 100) };
        c.free(NonNull::new(p).unwrap()).unwrap();
        let p = c.zalloc(GFP_KERNEL).unwrap().as_ptr();
        assert!(all_zero(p, 100));
        c.free(NonNull::new(p).unwrap()).unwrap();
    }
    drop(c);
    // A constructor runs once per object when its slab is made, and the
    // free pointer never overwrites constructed contents.
    let c = s
        .kmem_cache_create("test_cache_ctor", 100, 0, SlabFlags::empty(), Some(ctor))
        .unwrap();
    let before = CTOR_CALLS.load(std::sync::atomic::Ordering::Relaxed);
    let mut objs = Vec::new();
    for _ in 0..50 {
        let p = c.alloc(GFP_KERNEL).unwrap().as_ptr();
        assert!(unsafe { std::slice::from_raw_parts(p, 100) }
            .iter()
            .all(|&b| b == 0x42));
        objs.push(p);
    }
    for &p in &objs {
        c.free(NonNull::new(p).unwrap()).unwrap();
    }
    for _ in 0..50 {
        let p = c.alloc(GFP_KERNEL).unwrap().as_ptr();
        assert!(unsafe { std::slice::from_raw_parts(p, 100) }
            .iter()
            .all(|&b| b == 0x42));
        c.free(NonNull::new(p).unwrap()).unwrap();
    }
    let calls = CTOR_CALLS.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert_eq!(
        calls % c.order_objects().objects as usize,
        0,
        "whole slabs constructed"
    );
    drop(c);
}

#[test]
fn meminit_typesafe_by_rcu_keeps_contents() {
    let m = machine();
    let s = slab(&m);
    let c = create(&s, "test_cache_rcu", 64, SlabFlags::TYPESAFE_BY_RCU);
    assert!(c.freeptr_offset() >= 64, "free pointer outside the object");
    let p = c.alloc(GFP_KERNEL).unwrap().as_ptr();
    unsafe { p.write_bytes(0x5c, 64) };
    c.free(NonNull::new(p).unwrap()).unwrap();
    // A reader that still holds p sees an object of the right type: the
    // contents are intact until reused.
    assert!(unsafe { std::slice::from_raw_parts(p, 64) }
        .iter()
        .all(|&b| b == 0x5c));
    // Emptied slabs wait for a grace period before going back.
    let slabs_before = c.nr_slabs();
    c.shrink();
    let (_, pending) = s.rcu_pending();
    assert_eq!(
        pending + c.nr_slabs(),
        slabs_before.max(pending + c.nr_slabs())
    );
    assert!(s.rcu_barrier());
    assert_eq!(s.rcu_pending(), (0, 0));
    drop(c);
}

#[test]
fn meminit_bulk() {
    let m = machine();
    let s = slab(&m);
    let c = create(&s, "test_cache_bulk", 24, SlabFlags::empty());
    let mut v = vec![std::ptr::null_mut(); 300];
    assert_eq!(c.alloc_bulk(GFP_KERNEL | Gfp::ZERO, &mut v).unwrap(), 300);
    let mut sorted = v.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 300, "bulk objects are distinct");
    for &p in &v {
        assert!(all_zero(p, 24));
        unsafe { p.write_bytes(0x11, 24) };
    }
    c.free_bulk(&v).unwrap();
    c.destroy().unwrap();
}

/// Prints a full red-zone report and a double-free report (run with
/// `--ignored --nocapture` to see what the reports look like).
#[test]
#[ignore]
fn show_report() {
    let m = machine();
    let s = slab(&m);
    let c = create(
        &s,
        "kmalloc-64-demo",
        64,
        SlabFlags::DEBUG_DEFAULT | SlabFlags::KMALLOC,
    );
    let p = c.alloc_sized(GFP_KERNEL, 60).unwrap().as_ptr();
    unsafe { *p.add(64) = 0x12 };
    c.validate();
    for l in m.platform().take_log() {
        println!("{l}");
    }
    c.free(NonNull::new(p).unwrap()).unwrap();
    let _ = c.free(NonNull::new(p).unwrap());
    for l in m.platform().take_log() {
        println!("{l}");
    }
}
