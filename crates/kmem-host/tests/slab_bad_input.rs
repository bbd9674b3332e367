//! Every bad input to the slab layer gets a clear report, the exact error,
//! and leaves the allocator as it was: double frees (fast path, slow path,
//! other CPU, debug cache), interior pointers, foreign and page-allocator
//! addresses, large-kmalloc misuse, wrong caches, bad sizes, bad contexts.

use kmem::error::AllocError;
use kmem::gfp::{Gfp, GFP_ATOMIC, GFP_KERNEL};
use kmem::slab::{
    PageKind, ReallocError, SlabConfig, SlabFlags, SlabFreeError, KMALLOC_MAX_SIZE, ZERO_SIZE_PTR,
};
mod slab_common;

use kmem_host::{Machine, MachineConfig};
use slab_common::{assert_consistent, machine, slab};
use std::ptr::NonNull;

#[test]
fn double_free_fast_path_is_refused() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let p = s.kmalloc(64, GFP_KERNEL).unwrap().as_ptr();
    s.kfree(p).unwrap();
    m.platform().take_log();
    let e = s.kfree(p).unwrap_err();
    assert!(
        matches!(e, SlabFreeError::DoubleFree { addr, .. } if addr == p as usize),
        "{e:?}"
    );
    assert!(m
        .platform()
        .log_contains("BUG kmalloc-64: Object already free: double free"));
    assert_eq!(s.errors(), 1);
    assert_consistent(&s, 64, 500);
}

#[test]
fn double_free_slow_path_and_other_cpu() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    // Objects of several slabs, freed from the other CPU (slow path); every
    // tenth stays allocated so that the slabs stay slabs.
    let v: Vec<usize> = (0..300)
        .map(|_| s.kmalloc(128, GFP_KERNEL).unwrap().as_ptr() as usize)
        .collect();
    let freed: Vec<usize> = v.iter().copied().filter(|p| p % 10 != 0).collect();
    let kept: Vec<usize> = v.iter().copied().filter(|p| p % 10 == 0).collect();
    std::thread::scope(|sc| {
        sc.spawn(|| {
            kmem_host::set_cpu(1);
            for &p in &freed {
                s.kfree(p as *const u8).unwrap();
            }
            for &p in freed.iter().step_by(7) {
                let e = s.kfree(p as *const u8).unwrap_err();
                assert!(matches!(e, SlabFreeError::DoubleFree { .. }), "{e:?}");
            }
        });
    });
    for &p in freed.iter().step_by(5) {
        let e = s.kfree(p as *const u8).unwrap_err();
        assert!(matches!(e, SlabFreeError::DoubleFree { .. }), "{e:?}");
    }
    assert_consistent(&s, 128, 1000);
    for &p in &kept {
        s.kfree(p as *const u8).unwrap();
    }
    // A double free into a slab that went back to the page allocator.
    s.kmalloc_slab(128, GFP_KERNEL).shrink();
    let e = s.kfree(v[1] as *const u8).unwrap_err();
    assert!(
        matches!(
            e,
            SlabFreeError::DoubleFree { .. }
                | SlabFreeError::NotSlab {
                    kind: PageKind::Free,
                    ..
                }
        ),
        "{e:?}"
    );
}

#[test]
fn double_free_without_hardening_is_caught_at_the_list_head() {
    let m = machine();
    let s = slab(
        &m,
        SlabConfig {
            freelist_hardened: false,
            ..Default::default()
        },
    );
    let p = s.kmalloc(32, GFP_KERNEL).unwrap().as_ptr();
    s.kfree(p).unwrap();
    let e = s.kfree(p).unwrap_err();
    assert!(matches!(e, SlabFreeError::DoubleFree { .. }), "{e:?}");
    assert_consistent(&s, 32, 300);
}

#[test]
fn double_free_in_debug_cache() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let c = s
        .kmem_cache_create("dbg", 48, 0, SlabFlags::DEBUG_DEFAULT, None)
        .unwrap();
    let a = c.alloc(GFP_KERNEL).unwrap();
    let b = c.alloc(GFP_KERNEL).unwrap();
    c.free(a).unwrap();
    let e = c.free(a).unwrap_err();
    assert!(matches!(e, SlabFreeError::DoubleFree { .. }), "{e:?}");
    assert!(m.platform().log_contains("BUG dbg: Object already free"));
    c.free(b).unwrap();
    assert_eq!(c.validate().errors, 0, "{:#?}", m.platform().take_log());
    c.destroy().unwrap();
}

#[test]
fn interior_pointers_and_padding_are_refused() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let p = s.kmalloc(96, GFP_KERNEL).unwrap().as_ptr();
    for off in [1usize, 8, 95] {
        let e = s.kfree(unsafe { p.add(off) }).unwrap_err();
        match e {
            SlabFreeError::Interior { addr, object, .. } => {
                assert_eq!(addr, p as usize + off);
                assert_eq!(object, p as usize);
            }
            e => panic!("{e:?}"),
        }
    }
    assert!(m
        .platform()
        .log_contains("BUG kmalloc-96: Invalid object pointer"));
    // The leftover at the end of a kmalloc-96 slab (4096 = 42 * 96 + 64).
    let page = (p as usize) & !4095;
    let e = s.kfree((page + 42 * 96 + 8) as *const u8).unwrap_err();
    assert!(
        matches!(e, SlabFreeError::Interior { object: 0, .. }),
        "{e:?}"
    );
    s.kfree(p).unwrap();
    assert_consistent(&s, 96, 200);
}

#[test]
fn interior_pointers_in_tail_pages_of_multi_page_slabs() {
    // The free path reaches a slab's head record from a tail page's without
    // a branch; pointers into tail pages must be judged like any other.
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let c = s
        .kmem_cache_create("tails", 3000, 0, SlabFlags::NO_MERGE, None)
        .unwrap();
    let oo = c.order_objects();
    assert!(oo.order >= 1, "a multi-page slab: {oo:?}");
    let objs: Vec<NonNull<u8>> = (0..oo.objects)
        .map(|_| c.alloc(GFP_KERNEL).unwrap())
        .collect();
    // One slab's worth: find an object that starts in a tail page.
    let tail_obj = objs
        .iter()
        .map(|p| p.as_ptr() as usize)
        .find(|&a| {
            let pfn = m.pages().virt_to_page(kmem::addr::VirtAddr(a)).unwrap();
            m.pages().frame(pfn).unwrap().flags() & kmem::page::frame::flags::COMPOUND_TAIL != 0
        })
        .expect("some object starts in a tail page");
    for off in [8usize, 2999] {
        let e = c
            .free(NonNull::new((tail_obj + off) as *mut u8).unwrap())
            .unwrap_err();
        assert!(
            matches!(e, SlabFreeError::Interior { object, .. } if object == tail_obj),
            "{e:?}"
        );
        let e = s.kfree((tail_obj + off) as *const u8).unwrap_err();
        assert!(matches!(e, SlabFreeError::Interior { .. }), "{e:?}");
    }
    // The leftover after the last object, in the slab's last page (the
    // first slab of a fresh cache holds all `objects` objects).
    let base = objs.iter().map(|p| p.as_ptr() as usize).min().unwrap();
    let slab_bytes = 4096usize << oo.order;
    assert_eq!(base % slab_bytes, 0, "slabs are naturally aligned blocks");
    assert!(
        slab_bytes - oo.objects as usize * 3000 >= 16,
        "a leftover: {oo:?}"
    );
    let leftover = base + oo.objects as usize * 3000 + 8;
    let e = s.kfree(leftover as *const u8).unwrap_err();
    assert!(
        matches!(e, SlabFreeError::Interior { object: 0, .. }),
        "{e:?}"
    );
    // A tail page of a compound block that is no slab.
    let pfn = m.pages().alloc_pages(GFP_KERNEL | Gfp::COMP, 3).unwrap();
    let va = m.pages().page_address(pfn).0;
    for off in [4096usize, 7 * 4096 + 64] {
        let e = s.kfree((va + off) as *const u8).unwrap_err();
        assert!(matches!(e, SlabFreeError::NotSlab { .. }), "{e:?}");
    }
    m.pages().free_pages(pfn, 3).unwrap();
    for p in objs {
        c.free(p).unwrap();
    }
    assert_eq!(c.validate().errors, 0);
}

#[test]
fn foreign_addresses_are_refused() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let on_stack = 5u64;
    let boxed = Box::new([0u8; 64]);
    for addr in [
        &on_stack as *const u64 as usize,
        boxed.as_ptr() as usize,
        0x1000,
        usize::MAX - 7,
    ] {
        let e = s.kfree(addr as *const u8).unwrap_err();
        assert!(
            matches!(e, SlabFreeError::NotDirectMapped { .. }),
            "{addr:#x}: {e:?}"
        );
    }
    assert!(m.platform().log_contains("is not in the direct map"));
    // NULL and ZERO_SIZE_PTR (and anything up to 16) are no-ops.
    for addr in [0usize, 1, ZERO_SIZE_PTR] {
        s.kfree(addr as *const u8).unwrap();
    }
}

#[test]
fn page_allocator_pages_are_not_kmalloc_objects() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let pfn = m.pages().alloc_pages(GFP_KERNEL, 2).unwrap();
    let va = m.pages().page_address(pfn).as_ptr::<u8>();
    for off in [0usize, 4096, 100] {
        let e = s.kfree(unsafe { va.add(off) }).unwrap_err();
        assert!(
            matches!(
                e,
                SlabFreeError::NotSlab {
                    kind: PageKind::Pages,
                    ..
                }
            ),
            "{e:?}"
        );
    }
    assert_eq!(s.ksize(va), 0);
    m.pages().free_pages(pfn, 2).unwrap();
    let e = s.kfree(va).unwrap_err();
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
}

#[test]
fn large_kmalloc_misuse() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let p = s.kmalloc(20_000, GFP_KERNEL).unwrap().as_ptr();
    assert_eq!(s.ksize(p), 32768);
    let e = s.kfree(unsafe { p.add(4096) }).unwrap_err();
    assert!(matches!(e, SlabFreeError::LargeInterior { .. }), "{e:?}");
    let c = s
        .kmem_cache_create("some_cache", 40, 0, SlabFlags::empty(), None)
        .unwrap();
    let e = c.free(NonNull::new(p).unwrap()).unwrap_err();
    assert!(matches!(e, SlabFreeError::LargeToCache { .. }), "{e:?}");
    s.kfree(p).unwrap();
    let e = s.kfree(p).unwrap_err();
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
    assert_eq!(s.large_kmalloc_stats(), (1, 1, 0));
}

#[test]
fn wrong_cache_is_refused() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let a = s
        .kmem_cache_create("cache_a", 40, 0, SlabFlags::NO_MERGE, None)
        .unwrap();
    let b = s
        .kmem_cache_create("cache_b", 40, 0, SlabFlags::NO_MERGE, None)
        .unwrap();
    let p = a.alloc(GFP_KERNEL).unwrap();
    let e = b.free(p).unwrap_err();
    match e {
        SlabFreeError::WrongCache { given, actual, .. } => {
            assert_eq!(given.as_str(), "cache_b");
            assert_eq!(actual.as_str(), "cache_a");
        }
        e => panic!("{e:?}"),
    }
    assert!(m
        .platform()
        .log_contains("kmem_cache_free: Wrong slab cache. cache_b but object"));
    let k = s.kmalloc(40, GFP_KERNEL).unwrap();
    assert!(matches!(
        a.free(k).unwrap_err(),
        SlabFreeError::WrongCache { .. }
    ));
    a.free(p).unwrap();
    s.kfree(k.as_ptr()).unwrap();
    a.destroy().unwrap();
    b.destroy().unwrap();
}

#[test]
fn size_limits() {
    let m = Machine::new(MachineConfig {
        ram_bytes: 256 << 20,
        ..Default::default()
    })
    .unwrap();
    let s = slab(&m, SlabConfig::default());
    let p = s.kmalloc(KMALLOC_MAX_SIZE, GFP_KERNEL).unwrap();
    assert_eq!(s.ksize(p.as_ptr()), KMALLOC_MAX_SIZE);
    s.kfree(p.as_ptr()).unwrap();
    m.platform().take_log();
    let e = s.kmalloc(KMALLOC_MAX_SIZE + 1, GFP_KERNEL).unwrap_err();
    assert_eq!(
        e,
        AllocError::SizeTooLarge {
            size: KMALLOC_MAX_SIZE + 1,
            max: KMALLOC_MAX_SIZE
        }
    );
    assert!(m.platform().log_contains("above KMALLOC_MAX_SIZE"));
    m.platform().take_log();
    s.kmalloc(KMALLOC_MAX_SIZE + 1, GFP_KERNEL | Gfp::NOWARN)
        .unwrap_err();
    assert_eq!(m.platform().log_len(), 0, "__GFP_NOWARN is quiet");
    assert!(matches!(
        s.kmalloc_array(usize::MAX / 2, 3, GFP_KERNEL).unwrap_err(),
        AllocError::SizeTooLarge {
            size: usize::MAX,
            ..
        }
    ));
    assert!(s.kcalloc(1 << 40, 1 << 30, GFP_KERNEL).is_err());
    let p = s.kmalloc_array(10, 10, GFP_KERNEL).unwrap();
    assert_eq!(s.ksize(p.as_ptr()), 128);
    s.kfree(p.as_ptr()).unwrap();
}

#[test]
fn sleeping_allocation_in_atomic_context() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    // Warm the fast path so the check cannot hide in the slow path.
    let p = s.kmalloc(64, GFP_KERNEL).unwrap();
    s.kfree(p.as_ptr()).unwrap();
    {
        let _irq = kmem_host::irq();
        let e = s.kmalloc(64, GFP_KERNEL).unwrap_err();
        assert!(matches!(e, AllocError::SleepInAtomic(_)), "{e:?}");
        assert!(m
            .platform()
            .log_contains("BUG: sleeping function called from invalid context"));
        let p = s.kmalloc(64, GFP_ATOMIC).unwrap();
        s.kfree(p.as_ptr()).unwrap();
    }
    {
        let _l = kmem_host::spin_lock();
        assert!(s.kzalloc(10, GFP_KERNEL).is_err());
    }
    {
        let _n = kmem_host::nmi();
        assert_eq!(s.kmalloc(64, GFP_ATOMIC).unwrap_err(), AllocError::InNmi);
    }
    let p = s.kmalloc(64, GFP_KERNEL).unwrap();
    s.kfree(p.as_ptr()).unwrap();
}

#[test]
fn krealloc_and_ksize_of_bad_pointers() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    let p = s.kmalloc(50, GFP_KERNEL).unwrap().as_ptr();
    let e = s
        .krealloc(unsafe { p.add(3) }, 100, GFP_KERNEL)
        .unwrap_err();
    assert!(
        matches!(e, ReallocError::BadPointer(SlabFreeError::Interior { .. })),
        "{e:?}"
    );
    assert_eq!(s.ksize(unsafe { p.add(3) }), 0);
    s.kfree(p).unwrap();
    let e = s.krealloc(p, 100, GFP_KERNEL).unwrap_err();
    assert!(
        matches!(
            e,
            ReallocError::BadPointer(SlabFreeError::DoubleFree { .. })
        ),
        "{e:?}"
    );
    let x = 0u64;
    let e = s
        .krealloc(&x as *const u64 as *const u8, 10, GFP_KERNEL)
        .unwrap_err();
    assert!(matches!(
        e,
        ReallocError::BadPointer(SlabFreeError::NotDirectMapped { .. })
    ));
    assert_consistent(&s, 64, 100);
}

#[test]
fn bad_cache_parameters() {
    let m = machine();
    let s = slab(&m, SlabConfig::default());
    assert!(s
        .kmem_cache_create("x", 0, 0, SlabFlags::empty(), None)
        .is_err());
    assert!(s
        .kmem_cache_create("x", KMALLOC_MAX_SIZE + 1, 0, SlabFlags::empty(), None)
        .is_err());
    assert!(s
        .kmem_cache_create("x", 64, 24, SlabFlags::empty(), None)
        .is_err());
    assert!(s
        .kmem_cache_create("", 64, 0, SlabFlags::empty(), None)
        .is_err());
    // A flag only the allocator sets is refused, as Linux refuses flags
    // outside SLAB_FLAGS_PERMITTED (-EINVAL); kmem used to drop it quietly.
    let e = s
        .kmem_cache_create("x", 64, 0, SlabFlags::OBJECT_POISON, None)
        .unwrap_err();
    assert_eq!(
        e,
        kmem::slab::CacheCreateError::InternalFlags {
            flags: SlabFlags::OBJECT_POISON
        }
    );
    assert!(e.to_string().contains("-EINVAL"), "{e}");
    assert!(m.platform().log_contains("kmem_cache_create"));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = s.kmem_cache_create("x", 0, 0, SlabFlags::PANIC, None);
    }));
    assert!(r.is_err(), "SLAB_PANIC panics");
}
