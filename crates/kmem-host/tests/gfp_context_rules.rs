//! GFP and execution-context rules found wanting in review, each against
//! Linux: kvfree_rcu_mightsleep waits for a grace period (never inside a
//! reader or atomic context), bits outside the GFP mask are stripped by
//! kmalloc_fix_flags for large kmalloc and kvmalloc too, the Warn policy's
//! downgrade drops __GFP_NOFAIL with reclaim, and a hard IRQ does not
//! inherit the interrupted task's PF_MEMALLOC.

mod vmalloc_common;

use kmem::addr::PAGE_SIZE;
use kmem::context::ContextPolicy;
use kmem::error::AllocError;
use kmem::gfp::{Gfp, __GFP_MEMALLOC, __GFP_NOFAIL, __GFP_NOWARN, GFP_KERNEL};
use kmem::kvmalloc::{KvAlloc, KvFreeError};
use kmem::slab::{SlabAllocator, SlabConfig};
use kmem_host::vmap;
use kmem_host::{Machine, MachineConfig};
use vmalloc_common::*;

/// kvfree_rcu_mightsleep() of a kmalloc object too small for an rcu_head
/// must wait for a grace period (Linux: synchronize_rcu() then kvfree()).
/// Inside an RCU read-side section the grace period cannot end, so the
/// object must not be freed while the reader still runs.
#[test]
fn kvfree_rcu_mightsleep_small_object_in_reader_not_freed() {
    let m = machine_with(64 << 20, 2);
    let slab = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
    let vm = vmap::vmalloc(&m).unwrap();
    let kv = KvAlloc::new(&slab, &vm);
    let p = kv.kvmalloc(8, GFP_KERNEL).unwrap().as_ptr();
    assert!(
        slab.ksize(p) < 16,
        "need an object without room for rcu_head"
    );
    unsafe { p.write_bytes(0x5a, 8) };
    let r;
    let live_in_reader;
    {
        let _rcu = kmem_host::rcu_read_lock();
        r = kv.kvfree_rcu_mightsleep(p);
        // A reader that found `p` before the call may still read it.
        live_in_reader = slab.ksize(p);
    }
    assert!(
        r.is_err() || live_in_reader != 0,
        "kvfree_rcu_mightsleep returned {r:?} and freed the object while \
         the RCU reader was still inside its read-side section"
    );
    // kmem's choice: a sleeping call inside the read-side section is
    // refused (Linux's might_sleep), nothing freed; the caller frees it
    // once out of the reader.
    assert!(
        matches!(r, Err(KvFreeError::NoGracePeriod { addr }) if addr == p as usize),
        "{r:?}"
    );
    assert_eq!(live_in_reader, 8);
    kv.kvfree(p).unwrap();
    assert_eq!(slab.ksize(p), 0, "freed");
}

/// Linux's GFP_SLAB_BUG_MASK includes every bit outside __GFP_BITS_MASK:
/// kmalloc_fix_flags() strips them (with a warning) and the allocation goes
/// on. kmem's fix_flags only strips DMA32|HIGHMEM, so a large kmalloc with
/// such a bit fails with InvalidGfp from the page allocator, while a small
/// one (slab fast path) succeeds.
#[test]
fn kmalloc_large_strips_bits_outside_gfp_mask() {
    let m = machine_with(64 << 20, 2);
    let slab = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
    let bad = GFP_KERNEL | Gfp::from_bits_retain(1 << 28);
    let small = slab.kmalloc(64, bad);
    assert!(small.is_ok(), "small kmalloc: {small:?}");
    let large = slab.kmalloc(16 << 10, bad);
    assert!(
        large.is_ok(),
        "large kmalloc with a bit outside __GFP_BITS_MASK: {large:?} (Linux: \
         kmalloc_fix_flags strips it and allocates)"
    );
    assert!(m.platform().log_contains("Unexpected gfp"));
}

/// Same through kvmalloc: Linux's kmalloc attempt fixes the flags up and
/// succeeds.
#[test]
fn kvmalloc_with_bit_outside_gfp_mask() {
    let m = machine_with(64 << 20, 2);
    let slab = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
    let vm = vmap::vmalloc(&m).unwrap();
    let kv = KvAlloc::new(&slab, &vm);
    let bad = GFP_KERNEL | Gfp::from_bits_retain(1 << 28);
    let r = kv.kvmalloc(3 * PAGE_SIZE, bad);
    assert!(r.is_ok(), "kvmalloc: {r:?}");
}

/// With ContextPolicy::Warn, a blocking mask in atomic context is "reported,
/// then allocated without sleeping". The page allocator and vmalloc both
/// cope with __GFP_NOFAIL there; the slab path keeps NOFAIL after dropping
/// DIRECT_RECLAIM and hands the page allocator an invalid mask, so an
/// out-of-memory failure comes back as InvalidGfp (and an "invalid GFP
/// mask" warning blames the caller).
#[test]
fn slab_warn_policy_nofail_oom_error_kind() {
    let m = Machine::new(MachineConfig {
        ram_bytes: 32 << 20,
        nr_cpus: 1,
        context_policy: ContextPolicy::Warn,
        ..Default::default()
    })
    .unwrap();
    let slab = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
    // Exhaust memory.
    let mut held = Vec::new();
    while let Ok(p) = m
        .pages()
        .alloc_pages(GFP_KERNEL | __GFP_NOWARN | __GFP_MEMALLOC, 0)
    {
        held.push(p);
    }
    let mut err = None;
    {
        let _l = kmem_host::spin_lock();
        let mut objs = Vec::new();
        for _ in 0..100_000 {
            match slab.kmalloc(2048, GFP_KERNEL | __GFP_NOFAIL) {
                Ok(p) => objs.push(p),
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
    }
    let e = err.expect("memory is exhausted, the allocation must fail at some point");
    assert!(
        !matches!(e, AllocError::InvalidGfp(_)),
        "error kind: {e:?}; log has invalid-mask warning: {}",
        m.platform().log_contains("invalid GFP mask")
    );
    for p in held {
        m.pages().free_pages(p, 0).unwrap();
    }
}

/// Linux's `__gfp_pfmemalloc_flags`: the task's PF_MEMALLOC lifts the
/// watermarks only outside interrupts (`!in_interrupt()`, or while serving a
/// softirq). A hard IRQ that lands while the interrupted task is in direct
/// reclaim must not inherit ALLOC_NO_WATERMARKS: GFP_ATOMIC there gets its
/// usual reserve and no more.
#[test]
fn pf_memalloc_not_inherited_by_hardirq() {
    use kmem::Platform;
    let m = machine_with(64 << 20, 1);
    let mut held = Vec::new();
    let (before, after);
    {
        let _irq = kmem_host::irq();
        while let Ok(p) = m
            .pages()
            .alloc_pages(kmem::gfp::GFP_ATOMIC | __GFP_NOWARN, 0)
        {
            held.push(p);
        }
        // Control: without the mark, the reserve is spent.
        assert!(m
            .pages()
            .alloc_pages(kmem::gfp::GFP_ATOMIC | __GFP_NOWARN, 0)
            .is_err());
        before = m.pages().nr_free_pages();
        // The interrupted task was in direct reclaim.
        let was = m.platform().set_memalloc(true);
        let r = m
            .pages()
            .alloc_pages(kmem::gfp::GFP_ATOMIC | __GFP_NOWARN, 0);
        m.platform().set_memalloc(was);
        after = m.pages().nr_free_pages();
        if let Ok(p) = r {
            held.push(p);
        }
        assert!(
            r.is_err(),
            "GFP_ATOMIC in hard IRQ got past its reserve because the interrupted task \
             carries PF_MEMALLOC (free pages {before} -> {after})"
        );
    }
    for p in held {
        m.pages().free_pages(p, 0).unwrap();
    }
}

/// Linux's `kvfree_rcu_mightsleep()` (`kvfree_call_rcu` without a head)
/// calls `might_sleep()` and, for an object without room, `synchronize_rcu()`:
/// with a spinlock held that is "BUG: sleeping function called from invalid
/// context". kmem says nothing and runs the grace period in atomic context.
#[test]
fn kvfree_rcu_mightsleep_in_spinlock_reports() {
    let m = machine_with(64 << 20, 2);
    let slab = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
    let vm = vmap::vmalloc(&m).unwrap();
    let kv = KvAlloc::new(&slab, &vm);
    let p = kv.kvmalloc(8, GFP_KERNEL).unwrap().as_ptr();
    let r = {
        let _l = kmem_host::spin_lock();
        kv.kvfree_rcu_mightsleep(p)
    };
    assert!(
        r.is_err()
            || m.platform()
                .log_contains("sleeping function called from invalid context"),
        "kvfree_rcu_mightsleep under a spinlock: {r:?}, no might_sleep report"
    );
}

/// kvfree_rcu_mightsleep writes nothing into a kmalloc object (readers may
/// read all of it until the grace period ends; Linux keeps the pointer in a
/// page of pointers): the object is queued through a node of its own and
/// freed by the grace period. Before, an object of 16 bytes or more lost its
/// first 16 bytes to an rcu_head, and a smaller one ended a grace period on
/// the spot.
#[test]
fn kvfree_rcu_mightsleep_writes_nothing_into_the_object() {
    let m = machine_with(64 << 20, 2);
    let slab = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
    let vm = vmap::vmalloc(&m).unwrap();
    let kv = KvAlloc::new(&slab, &vm);
    for size in [8usize, 16, 64, 4096, 16 << 10] {
        let p = kv.kvmalloc(size, GFP_KERNEL).unwrap().as_ptr();
        assert!(!vm.is_vmalloc_addr(p), "{size}: want a kmalloc object");
        unsafe { p.write_bytes(0x5a, size) };
        kv.kvfree_rcu_mightsleep(p).unwrap();
        let bytes = unsafe { std::slice::from_raw_parts(p, size) };
        assert!(
            bytes.iter().all(|&b| b == 0x5a),
            "{size}: kvfree_rcu_mightsleep wrote into the object"
        );
        assert_eq!(slab.rcu_pending().0, 1, "{size}: not queued");
        assert!(
            slab.ksize(p) >= size,
            "{size}: freed before the grace period"
        );
        assert!(kv.rcu_barrier());
        assert_eq!(slab.rcu_pending().0, 0);
        m.platform().take_log();
        assert_eq!(slab.ksize(p), 0, "{size}: not freed by the grace period");
        assert!(m
            .platform()
            .take_log()
            .iter()
            .any(|l| l.contains("double free") || l.contains("not a slab object")));
    }
}
