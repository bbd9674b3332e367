//! Review probes: Rust integration (GlobalAlloc / Allocator), CPU claims,
//! RCU-deferred freeing and the slab shrinker.

#![allow(dead_code)]

use allocator_api2::alloc::Allocator;
use kmem::gfp::{Gfp, GFP_KERNEL};
use kmem::slab::{SlabAllocator, SlabConfig, SlabFlags, KMALLOC_MAX_SIZE};
use kmem_host::global::{KmemGlobal, KmemHeap};
use kmem_host::{HostPlatform, Machine, MachineConfig};
use std::alloc::{GlobalAlloc, Layout};
use std::ptr::NonNull;

fn small_machine(ram: u64, cpus: usize) -> Machine {
    Machine::new(MachineConfig {
        ram_bytes: ram,
        nr_cpus: cpus,
        echo_warnings: false,
        ..Default::default()
    })
    .unwrap()
}

fn leaked(ram: u64, cpus: usize) -> (&'static Machine, &'static SlabAllocator<'static, HostPlatform>) {
    let m: &'static Machine = Box::leak(Box::new(small_machine(ram, cpus)));
    let s = Box::leak(Box::new(SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap()));
    (m, s)
}

// ------------------------------------------------------------ alignment

#[test]
fn heap_alignment_4mib() {
    let (_m, s) = leaked(64 << 20, 2);
    let h = KmemHeap::new(s);
    for (size, align) in [(8usize, 4usize << 20), (4 << 20, 4 << 20), (1, 1 << 21), (3 << 20, 1 << 20)] {
        let l = Layout::from_size_align(size, align).unwrap();
        let p = h.allocate(l).expect("a layout kmalloc can serve");
        let p = p.cast::<u8>();
        assert_eq!(p.as_ptr() as usize % align, 0, "{size}/{align}");
        unsafe { h.deallocate(p, l) };
    }
}

#[test]
fn global_alignment_above_4mib_is_system() {
    static G: KmemGlobal = KmemGlobal::with_machine(64 << 20, 2);
    let l = Layout::from_size_align(16, 8 << 20).unwrap();
    let p = unsafe { G.alloc(l) };
    assert!(!p.is_null());
    assert_eq!(p as usize % (8 << 20), 0);
    let q = unsafe { G.realloc(p, l, 100) };
    assert!(!q.is_null());
    assert_eq!(q as usize % (8 << 20), 0, "realloc keeps alignment");
    unsafe { G.dealloc(q, Layout::from_size_align(100, 8 << 20).unwrap()) };
}

// ------------------------------------------------------------ exhaustion

#[test]
fn global_exhaustion_returns_null() {
    static G: KmemGlobal = KmemGlobal::with_machine(32 << 20, 2);
    let mut v = Vec::new();
    let l = Layout::from_size_align(64 << 10, 8).unwrap();
    let mut nulls = 0;
    for _ in 0..4096 {
        let p = unsafe { G.alloc(l) };
        if p.is_null() {
            nulls += 1;
            if nulls > 3 {
                break;
            }
        } else {
            assert!(G.owns(p));
            v.push(p);
        }
    }
    assert!(nulls > 0, "a 32 MiB machine cannot give 256 MiB");
    // small ones too
    let ls = Layout::from_size_align(24, 8).unwrap();
    let mut small = Vec::new();
    for _ in 0..200_000 {
        let p = unsafe { G.alloc(ls) };
        if p.is_null() {
            break;
        }
        small.push(p);
    }
    for p in small {
        unsafe { G.dealloc(p, ls) };
    }
    for p in v.drain(..) {
        unsafe { G.dealloc(p, l) };
    }
    let p = unsafe { G.alloc(l) };
    assert!(!p.is_null(), "memory comes back after frees");
    unsafe { G.dealloc(p, l) };
}

#[test]
fn heap_exhaustion_is_err() {
    let (_m, s) = leaked(32 << 20, 2);
    let h = KmemHeap::new(s);
    let mut v = Vec::new();
    for _ in 0..10_000 {
        let l = Layout::from_size_align(1 << 20, 8).unwrap();
        match h.allocate(l) {
            Ok(p) => v.push(p.cast::<u8>()),
            Err(_) => break,
        }
    }
    assert!(v.len() < 10_000);
    // grow of an existing block on the exhausted machine: Err, old kept.
    let l = Layout::from_size_align(100, 8).unwrap();
    let p = h.allocate(l).unwrap().cast::<u8>();
    unsafe { p.as_ptr().write_bytes(0x5a, 100) };
    let big = Layout::from_size_align(4 << 20, 8).unwrap();
    let r = unsafe { h.grow(p, l, big) };
    assert!(r.is_err());
    assert!(unsafe { std::slice::from_raw_parts(p.as_ptr(), 100) }.iter().all(|&b| b == 0x5a));
    unsafe { h.deallocate(p, l) };
    for q in v {
        unsafe { h.deallocate(q, Layout::from_size_align(1 << 20, 8).unwrap()) };
    }
}

// ------------------------------------------------------------ bad configs

#[test]
fn global_with_bad_machine_falls_back() {
    for (ram, cpus) in [(0u64, 2usize), (1 << 30, 0), (1 << 62, 2), (4096, 1), (1 << 30, 100_000)] {
        let g: &'static KmemGlobal = Box::leak(Box::new(KmemGlobal::with_machine(ram, cpus)));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let l = Layout::from_size_align(64, 8).unwrap();
            let p = unsafe { g.alloc(l) };
            assert!(!p.is_null());
            unsafe { g.dealloc(p, l) };
        }));
        assert!(r.is_ok(), "ram {ram} cpus {cpus}: panicked inside GlobalAlloc::alloc");
    }
}
