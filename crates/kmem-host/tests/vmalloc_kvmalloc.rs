//! kvmalloc over the hosted machine: Linux's fallback rules, kvfree routing,
//! the kfree/vfree cross-checks, kvrealloc, kvfree_rcu (test_vmalloc's two
//! kvfree_rcu scenarios) and test_meminit's kvmalloc check.

mod vmalloc_common;

use kmem::addr::{Pfn, PAGE_SIZE};
use kmem::gfp::{
    Gfp, __GFP_MEMALLOC, __GFP_NOFAIL, __GFP_NORETRY, __GFP_NOWARN, __GFP_RETRY_MAYFAIL,
    GFP_ATOMIC, GFP_KERNEL, GFP_NOWAIT,
};
use kmem::kvmalloc::{KvAlloc, KvError, KvFreeError, KvRules};
use kmem::slab::{SlabAllocator, SlabConfig};
use kmem::vmalloc::VfreeError;
use kmem_host::vmap;
use kmem_host::Machine;
use vmalloc_common::*;

/// Takes every free block of order >= `order`, then gives back every other
/// page of them: lots of free memory, no block of `order` or above.
fn fragment(m: &Machine, order: u32) -> Vec<Pfn> {
    let mut held = Vec::new();
    while let Ok(p) = m
        .pages()
        .alloc_pages(GFP_KERNEL | __GFP_NOWARN | __GFP_MEMALLOC, order)
    {
        held.push(p);
    }
    let mut kept = Vec::new();
    for &b in &held {
        m.pages().split_page(b, order).unwrap();
        for i in 0..(1u64 << order) {
            if i.is_multiple_of(2) {
                m.pages().free_pages(b.add(i), 0).unwrap();
            } else {
                kept.push(b.add(i));
            }
        }
    }
    kept
}

fn unfragment(m: &Machine, kept: Vec<Pfn>) {
    for p in kept {
        m.pages().free_pages(p, 0).unwrap();
    }
}

#[test]
fn kvmalloc_gfp_adjustment() {
    let m = machine_with(64 << 20, 2);
    let slab = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
    let vm = vmap::vmalloc(&m).unwrap();
    let kv = KvAlloc::new(&slab, &vm);
    // At most a page: untouched.
    assert_eq!(kv.kmalloc_gfp(GFP_KERNEL, PAGE_SIZE), GFP_KERNEL);
    // Above: NOWARN, NORETRY unless RETRY_MAYFAIL, never NOFAIL.
    assert_eq!(
        kv.kmalloc_gfp(GFP_KERNEL | __GFP_NOFAIL, PAGE_SIZE + 1),
        GFP_KERNEL | __GFP_NOWARN | __GFP_NORETRY
    );
    assert_eq!(
        kv.kmalloc_gfp(GFP_KERNEL | __GFP_RETRY_MAYFAIL, 1 << 20),
        GFP_KERNEL | __GFP_NOWARN | __GFP_RETRY_MAYFAIL
    );
    // Linux 6.18: direct reclaim goes instead of adding NORETRY.
    let kv = kv.with_rules(KvRules::NoReclaim);
    assert_eq!(
        kv.kmalloc_gfp(GFP_KERNEL, 1 << 20),
        (GFP_KERNEL | __GFP_NOWARN) - Gfp::DIRECT_RECLAIM
    );
}

#[test]
fn kvmalloc_prefers_kmalloc_and_falls_back() {
    let m = machine_with(64 << 20, 2);
    let slab = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
    let vm = vmap::vmalloc(&m).unwrap();
    let kv = KvAlloc::new(&slab, &vm);
    // Small, and large with memory to spare: kmalloc.
    for size in [8, 100, PAGE_SIZE, 3 * PAGE_SIZE, 1 << 20] {
        let p = kv.kvmalloc(size, GFP_KERNEL).unwrap().as_ptr();
        assert!(!vm.is_vmalloc_addr(p), "size {size}");
        assert!(m.pages().is_direct_map(kmem::addr::VirtAddr(p as usize)));
        kv.kvfree(p).unwrap();
    }
    let kept = fragment(&m, 8);
    // No order-8 block: 1 MiB falls back to vmalloc.
    let p = kv.kvmalloc(1 << 20, GFP_KERNEL).unwrap().as_ptr();
    assert!(vm.is_vmalloc_addr(p));
    check_mapping(&vm, p, 1 << 20);
    // ... and the kmalloc attempt did not warn (NOWARN added).
    assert!(!m.platform().log_contains("page allocation failure"));
    // Non-blocking masks never fall back (Linux <= 6.14 rules).
    {
        let _p = kmem_host::preempt_disable();
        let e = kv.kvmalloc(1 << 20, GFP_ATOMIC).unwrap_err();
        assert!(matches!(e, KvError::Kmalloc(_)), "{e}");
    }
    // Linux 6.18: they do, without huge mappings.
    let kv18 = KvAlloc::new(&slab, &vm).with_rules(KvRules::NoReclaim);
    let q = {
        let _p = kmem_host::preempt_disable();
        kv18.kvmalloc(1 << 20, GFP_NOWAIT).unwrap().as_ptr()
    };
    assert!(vm.is_vmalloc_addr(q));
    // Crazy sizes are refused (kmalloc fails above 4 MiB first).
    let e = kv.kvmalloc(usize::MAX / 2, GFP_KERNEL).unwrap_err();
    assert_eq!(
        e,
        KvError::TooLarge {
            size: usize::MAX / 2
        }
    );
    assert!(m.platform().log_contains("above INT_MAX"));
    let e = kv
        .kvmalloc_array(usize::MAX / 2, 4, GFP_KERNEL)
        .unwrap_err();
    assert!(matches!(e, KvError::Overflow { .. }));
    // kvzalloc through the fallback is zeroed.
    let z = kv.kvzalloc(300 << 10, GFP_KERNEL).unwrap().as_ptr();
    assert!(vm.is_vmalloc_addr(z));
    assert!(unsafe { std::slice::from_raw_parts(z, 300 << 10) }
        .iter()
        .all(|&b| b == 0));
    kv.kvfree(p).unwrap();
    kv.kvfree(q).unwrap();
    kv.kvfree(z).unwrap();
    unfragment(&m, kept);
}

#[test]
fn kfree_of_vmalloc_and_vfree_of_kmalloc_are_refused() {
    let m = machine_with(64 << 20, 2);
    let slab = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
    let vm = vmap::vmalloc(&m).unwrap();
    let kv = KvAlloc::new(&slab, &vm);
    let v = vm.vmalloc(3 * PAGE_SIZE).unwrap().as_ptr();
    let k = slab.kmalloc(200, GFP_KERNEL).unwrap().as_ptr();
    let big = slab.kmalloc(64 << 10, GFP_KERNEL).unwrap().as_ptr();
    let e = kv.kfree(v).unwrap_err();
    assert_eq!(e, KvFreeError::KfreeOfVmalloc { addr: v as usize });
    assert!(e.to_string().contains("vfree()"));
    let e = kv.vfree(k).unwrap_err();
    assert_eq!(
        e,
        KvFreeError::Vfree(VfreeError::Kmalloc { addr: k as usize })
    );
    assert!(e.to_string().contains("kfree()"));
    assert_eq!(
        vm.vfree(big),
        Err(VfreeError::Kmalloc { addr: big as usize })
    );
    // Nothing was freed: both still work and free normally.
    unsafe {
        v.write_bytes(1, 3 * PAGE_SIZE);
        k.write_bytes(2, 200);
    }
    kv.kvfree(v).unwrap();
    kv.kvfree(k).unwrap();
    kv.kfree(big).unwrap();
    assert!(m.platform().log_contains("kfree() of a vmalloc address"));
    assert!(m.platform().log_contains("vfree() of a kmalloc address"));
}

#[test]
fn kvrealloc_moves_between_allocators() {
    let m = machine_with(64 << 20, 2);
    let slab = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
    let vm = vmap::vmalloc(&m).unwrap();
    let kv = KvAlloc::new(&slab, &vm);
    let p = kv.kvmalloc(1000, GFP_KERNEL).unwrap().as_ptr();
    unsafe { p.write_bytes(0x5a, 1000) };
    let kept = fragment(&m, 8);
    // Grow to 2 MiB: krealloc cannot, kvmalloc falls back, data copied.
    let q = kv
        .kvrealloc(p, 2 << 20, GFP_KERNEL)
        .unwrap()
        .unwrap()
        .as_ptr();
    assert!(vm.is_vmalloc_addr(q));
    assert!(unsafe { std::slice::from_raw_parts(q, 1000) }
        .iter()
        .all(|&b| b == 0x5a));
    // Old object freed.
    assert!(matches!(kv.kvfree(p), Err(KvFreeError::Kfree(_))));
    // vmalloc memory goes through vrealloc.
    let r = kv
        .kvrealloc(q, 4 << 20, GFP_KERNEL)
        .unwrap()
        .unwrap()
        .as_ptr();
    assert!(unsafe { std::slice::from_raw_parts(r, 1000) }
        .iter()
        .all(|&b| b == 0x5a));
    assert_eq!(kv.kvrealloc(r, 0, GFP_KERNEL), Ok(None));
    assert!(matches!(
        kv.kvrealloc(r, 10, GFP_KERNEL),
        Err(KvError::BadPointer(KvFreeError::Vfree(
            VfreeError::DoubleFree { .. }
        )))
    ));
    unfragment(&m, kept);
}

#[test]
fn kvfree_sensitive_clears() {
    let m = machine_with(64 << 20, 2);
    let slab = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
    let vm = vmap::vmalloc(&m).unwrap();
    let kv = KvAlloc::new(&slab, &vm);
    let p = vm.vmalloc(2 * PAGE_SIZE).unwrap().as_ptr();
    unsafe { p.write_bytes(0xcc, 2 * PAGE_SIZE) };
    let frames: Vec<Pfn> = (0..2)
        .map(|i| vm.vmalloc_to_page(unsafe { p.add(i * PAGE_SIZE) }).unwrap())
        .collect();
    kv.kvfree_sensitive(p, 2 * PAGE_SIZE).unwrap();
    for f in frames {
        let d = m.pages().page_address(f).as_ptr::<u8>();
        assert!(unsafe { std::slice::from_raw_parts(d, PAGE_SIZE) }
            .iter()
            .all(|&b| b == 0));
    }
    let k = kv.kvmalloc(64, GFP_KERNEL).unwrap().as_ptr();
    unsafe { k.write_bytes(0xcc, 64) };
    kv.kvfree_sensitive(k, 64).unwrap();
}

/// test_vmalloc's `kvfree_rcu_1_arg_vmalloc_test` and
/// `kvfree_rcu_2_arg_vmalloc_test`.
#[test]
fn kvfree_rcu_vmalloc_scenarios() {
    const LOOPS: usize = 2000;
    /// `struct test_kvfree_rcu { struct rcu_head rcu; unsigned char array[20]; }`
    const RCU_OFFSET: usize = 0;
    const ARRAY_OFFSET: usize = 16;
    let m = machine_with(64 << 20, 2);
    let before = free_pages(&m);
    {
        let slab = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
        let vm = vmap::vmalloc(&m).unwrap();
        let kv = KvAlloc::new(&slab, &vm);
        for one_arg in [true, false] {
            for _ in 0..LOOPS {
                let p = vm.vmalloc(PAGE_SIZE).unwrap().as_ptr();
                unsafe { p.add(ARRAY_OFFSET).write(b'a') };
                if one_arg {
                    kv.kvfree_rcu_mightsleep(p).unwrap();
                } else {
                    kv.kvfree_rcu(p, RCU_OFFSET).unwrap();
                }
                // Still allocated (and readable) until the grace period.
                assert_eq!(unsafe { p.add(ARRAY_OFFSET).read() }, b'a');
            }
            assert!(vm.rcu_pending());
            // Queued twice is a double free.
            let p = vm.vmalloc(PAGE_SIZE).unwrap().as_ptr();
            kv.kvfree_rcu(p, 0).unwrap();
            assert!(matches!(
                kv.kvfree_rcu(p, 0),
                Err(KvFreeError::Vfree(VfreeError::DoubleFree { .. }))
            ));
            // Inside a read-side section the grace period cannot end.
            {
                let _r = kmem_host::rcu_read_lock();
                assert!(!kv.rcu_barrier());
            }
            assert!(kv.rcu_barrier());
            assert!(!vm.rcu_pending());
            let mut live = 0;
            vm.for_each_area(|a| live += (!a.vm_map_ram) as usize);
            assert_eq!(live, 0);
        }
        // kmalloc objects take the slab's queue.
        let k = kv.kvmalloc(64, GFP_KERNEL).unwrap().as_ptr();
        kv.kvfree_rcu(k, 16).unwrap();
        assert!(kv.rcu_barrier());
    }
    assert_eq!(free_pages(&m), before);
}

/// test_meminit's `test_kvmalloc`: for sizes 2^0 .. 2^19, allocate, fill
/// with garbage, free, allocate again: the memory must read zero. Linux runs
/// it with `init_on_alloc=1`; kmem has no global init_on_alloc, so the
/// allocations ask for zeroing with `__GFP_ZERO`, which is what that option
/// adds to every allocation. Each size goes through kmalloc and vmalloc, and
/// through kvzalloc.
#[test]
fn test_meminit_kvmalloc() {
    let m = machine_with(128 << 20, 2);
    let slab = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
    let vm = vmap::vmalloc(&m).unwrap();
    let kv = KvAlloc::new(&slab, &vm);
    let zero = GFP_KERNEL | Gfp::ZERO;
    let nonzero = |p: *const u8, n: usize| unsafe {
        std::slice::from_raw_parts(p, n)
            .iter()
            .filter(|&&b| b != 0)
            .count()
    };
    let mut failures = 0;
    for i in 0..20 {
        let size = 1usize << i;
        // do_kmalloc_size
        let buf = slab.kmalloc(size, zero).unwrap().as_ptr();
        unsafe { buf.write_bytes(0xa5, size) };
        slab.kfree(buf).unwrap();
        let buf = slab.kmalloc(size, zero).unwrap().as_ptr();
        failures += (nonzero(buf, size) != 0) as usize;
        unsafe { buf.write_bytes(0xa5, size) };
        slab.kfree(buf).unwrap();
        // do_vmalloc_size
        let buf = vm.vmalloc_gfp(size, zero).unwrap().as_ptr();
        unsafe { buf.write_bytes(0xa5, size) };
        vm.vfree(buf).unwrap();
        let buf = vm.vmalloc_gfp(size, zero).unwrap().as_ptr();
        failures += (nonzero(buf, size) != 0) as usize;
        unsafe { buf.write_bytes(0xa5, size) };
        vm.vfree(buf).unwrap();
        // and kvzalloc
        let buf = kv.kvzalloc(size, GFP_KERNEL).unwrap().as_ptr();
        unsafe { buf.write_bytes(0xa5, size) };
        kv.kvfree(buf).unwrap();
        let buf = kv.kvzalloc(size, GFP_KERNEL).unwrap().as_ptr();
        failures += (nonzero(buf, size) != 0) as usize;
        kv.kvfree(buf).unwrap();
    }
    assert_eq!(failures, 0, "test_kvmalloc: all 60 tests passed");
}
