//! Misuse of the page allocator found in review, each with the behaviour
//! Linux (or kmem's own promise) expects: a free with an order that spills
//! into the flag bits, a free of a block a higher layer still owns, CPU
//! numbers the machine does not have, a region ending on the pfn that means
//! "no frame", and a GFP_ATOMIC allocation from an interrupt that landed
//! inside its CPU's own list section under memory pressure (it must not wait
//! for itself), and a shrinker that allocates (it must not enter reclaim
//! again: Linux's PF_MEMALLOC).

mod page_common;

use kmem::addr::Pfn;
use kmem::error::FreeError;
use kmem::gfp::{Gfp, GFP_ATOMIC, GFP_KERNEL};
use kmem::page::FrameState;
use kmem_host::Machine;
use page_common::*;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering::*};

fn panic_text(e: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = e.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = e.downcast_ref::<&str>() {
        s.to_string()
    } else {
        "<non-string panic>".into()
    }
}

/// Freeing a compound head of order k with order 16 + k: the fast check in
/// `free_pages` compares `allocated_info(order)` against the low 16 info
/// bits, and `(16 + k) << 4` sets exactly the COMPOUND_HEAD flag bit.
#[test]
fn free_compound_head_with_order_16_plus_k() {
    let m = small_machine();
    let base = Baseline::take(&m);
    for k in [1u32, 2, 3] {
        let p = m.pages().alloc_pages(GFP_KERNEL | Gfp::COMP, k).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| m.pages().free_pages(p, 16 + k)));
        let r = match r {
            Ok(r) => r,
            Err(e) => panic!(
                "free_pages(compound head of order {k}, order {}) panicked: {}",
                16 + k,
                panic_text(e)
            ),
        };
        assert!(
            matches!(r, Err(FreeError::WrongOrder { .. })),
            "order {}: {r:?}",
            16 + k
        );
        assert_eq!(m.pages().frame(p).unwrap().state(), FrameState::Allocated);
        m.pages().free_pages(p, k).unwrap();
    }
    m.platform().take_log();
    base.assert_restored(&m);
}

/// `drain_cpu_pages` is public and takes any CPU number.
#[test]
fn drain_cpu_pages_out_of_range() {
    let m = small_machine();
    let r = catch_unwind(AssertUnwindSafe(|| m.pages().drain_cpu_pages(7)));
    if let Err(e) = r {
        panic!(
            "drain_cpu_pages(7) on a 2-CPU machine panicked: {}",
            panic_text(e)
        );
    }
    let r = catch_unwind(AssertUnwindSafe(|| {
        m.pages().pcp_info(9, 0, kmem::gfp::ZoneType::Normal)
    }));
    if let Err(e) = r {
        panic!(
            "pcp_info(9, ..) on a 2-CPU machine panicked: {}",
            panic_text(e)
        );
    }
}

// ---------------------------------------------------------------------------
// An interrupt that arrives while the CPU's owner is inside its per-CPU list
// section. The platform wrapper below runs a "hard IRQ" at the moment the
// owner reaches for a zone lock (in a kernel that lock disables interrupts,
// so an interrupt can land exactly before it is taken) with the owner's
// per-CPU list held.

mod irq_nest {
    use super::*;
    use kmem::page::{PageAllocator, PageConfig};
    use kmem_host::{HostPlatform, Ram};
    use parking_lot::lock_api;
    use std::cell::Cell;
    use std::sync::atomic::AtomicPtr;

    thread_local! {
        static ARMED: Cell<bool> = const { Cell::new(false) };
    }
    static PA: AtomicPtr<PageAllocator<IrqPlat>> = AtomicPtr::new(std::ptr::null_mut());
    static IRQ_RESULT: parking_lot::Mutex<Option<String>> = parking_lot::Mutex::new(None);

    pub struct HookLock(parking_lot::RawMutex);

    fn irq_hook() {
        if !ARMED.with(|a| a.replace(false)) {
            return;
        }
        let pa = PA.load(Acquire);
        // SAFETY: set before arming, lives for the whole test.
        let pa = unsafe { &*pa };
        let _irq = kmem_host::irq();
        let r = catch_unwind(AssertUnwindSafe(|| {
            let mut got = Vec::new();
            let err = loop {
                match pa.alloc_pages(GFP_ATOMIC | Gfp::NOWARN, 10) {
                    Ok(p) => got.push(p),
                    Err(e) => break e,
                }
            };
            for p in got {
                pa.free_pages(p, 10).unwrap();
            }
            err
        }));
        *IRQ_RESULT.lock() = Some(match r {
            Ok(e) => format!("IRQ allocation failed cleanly: {e}"),
            Err(p) => format!("IRQ allocation PANICKED: {}", panic_text(p)),
        });
    }

    // SAFETY: delegates to parking_lot's RawMutex.
    unsafe impl lock_api::RawMutex for HookLock {
        #[allow(clippy::declare_interior_mutable_const)]
        const INIT: HookLock = HookLock(<parking_lot::RawMutex as lock_api::RawMutex>::INIT);
        type GuardMarker = lock_api::GuardSend;
        fn lock(&self) {
            irq_hook();
            self.0.lock()
        }
        fn try_lock(&self) -> bool {
            self.0.try_lock()
        }
        unsafe fn unlock(&self) {
            unsafe { self.0.unlock() }
        }
    }

    pub struct IrqPlat(pub HostPlatform);

    crate::host_platform_wrapper!(IrqPlat, Lock = HookLock, phys_to_virt(this, pa) => this.0.phys_to_virt(pa));

    /// GFP_ATOMIC from a hard IRQ that nests inside the owner's per-CPU
    /// list section, under memory pressure: Linux fails the allocation (or
    /// serves it from the zone); it must not BUG.
    #[test]
    fn irq_atomic_alloc_nested_in_pcp_section_under_pressure() {
        let regions = kmem::page::memmap::pc_layout(64 * MIB).to_vec();
        let ram = Ram::new(&regions).unwrap();
        let hp = HostPlatform::new(&ram, 2, false);
        let pa = PageAllocator::new(IrqPlat(hp), &regions, PageConfig::default()).unwrap();
        let pa: &'static PageAllocator<IrqPlat> = Box::leak(Box::new(pa));
        PA.store(pa as *const _ as *mut _, Release);
        std::thread::scope(|s| {
            s.spawn(|| {
                let _claim = kmem_host::claim_cpu(0).expect("claim CPU 0");
                pa.drain_all_pages();
                // Empty list: the fast path refills under the zone lock
                // with the per-CPU list held. The interrupt comes then.
                ARMED.with(|a| a.set(true));
                let r = catch_unwind(AssertUnwindSafe(|| pa.alloc_pages(GFP_KERNEL, 0)));
                ARMED.with(|a| a.set(false));
                match r {
                    Ok(Ok(p)) => pa.free_pages(p, 0).unwrap(),
                    Ok(Err(e)) => panic!("owner allocation failed: {e}"),
                    Err(p) => eprintln!("owner's allocation unwound: {}", panic_text(p)),
                }
            })
            .join()
            .unwrap();
        });
        let res = IRQ_RESULT.lock().take();
        eprintln!("{res:?}");
        let res = res.expect("the interrupt ran");
        assert!(res.starts_with("IRQ allocation failed cleanly"), "{res}");
        // The allocator is leaked on purpose; its RAM must outlive it.
        std::mem::forget(ram);
    }
}

/// `free_pages` of a block a layer above owns (its head carries an owner
/// tag: a slab page here). Every kmem layer clears its tag before handing a
/// block back, so a tagged block reaching `free_pages` is a foreign free.
#[test]
fn free_pages_of_a_slab_page() {
    use kmem::slab::{SlabAllocator, SlabConfig};
    let m = small_machine();
    let s = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
    let obj = s.kmalloc(64, GFP_KERNEL).unwrap();
    let pfn = m
        .pages()
        .virt_to_page(kmem::addr::VirtAddr(obj.as_ptr() as usize))
        .unwrap();
    let head = m.pages().compound_head(pfn);
    let f = m.pages().frame(head).unwrap();
    let order = m.pages().allocation_order(head);
    eprintln!(
        "object {:p}: page {head}, state {:?}, owner {:#x}, order {order:?}",
        obj.as_ptr(),
        f.state(),
        f.owner()
    );
    let r = m.pages().free_pages(head, order.unwrap_or(0));
    eprintln!("free_pages of the slab page: {r:?}");
    assert!(
        r.is_err(),
        "free_pages accepted a page owned by the slab allocator"
    );
}

/// The memory map accepts RAM up to 16 TiB inclusive (`end <= 1 << 44`),
/// so pfn 0xffff_ffff is RAM; free lists and per-CPU lists store pfns as
/// `u32` with `u32::MAX` meaning "none".
#[test]
fn pfn_u32_max_collides_with_nil() {
    use kmem::page::Region;
    const TIB16: u64 = 1 << 44;
    let regions = vec![
        Region::reserved(0, 0x1000),
        Region::usable(0x1000, 16 * MIB),
        // One page: too small for the frame records, which are carved
        // from the top of the highest region that has room.
        Region::usable(TIB16 - 0x1000, TIB16),
    ];
    let t0 = std::time::Instant::now();
    let m = match Machine::new(kmem_host::MachineConfig {
        regions: Some(regions),
        ..Default::default()
    }) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("machine refused: {e}");
            return;
        }
    };
    eprintln!("built in {:?}", t0.elapsed());
    let top = m.pages().frame(Pfn(u32::MAX as u64)).map(|f| f.state());
    eprintln!(
        "frame 0xffffffff: {top:?}; verify at boot: {:?}",
        m.pages().verify()
    );
    let base = Baseline::take(&m);
    let mut held = Vec::new();
    while let Ok(p) = m
        .pages()
        .alloc_pages(GFP_KERNEL | Gfp::NOWARN | Gfp::NORETRY, 0)
    {
        held.push(p);
    }
    // Then the reserves too.
    while let Ok(p) = m
        .pages()
        .alloc_pages(GFP_ATOMIC | Gfp::MEMALLOC | Gfp::NOWARN, 0)
    {
        held.push(p);
    }
    let top = held.iter().any(|p| p.0 == u32::MAX as u64);
    eprintln!(
        "allocated {} pages; pfn 0xffffffff handed out: {top}",
        held.len()
    );
    eprintln!("verify after exhaustion: {:?}", m.pages().verify());
    for p in held {
        m.pages().free_pages(p, 0).unwrap();
    }
    m.pages().drain_all_pages();
    eprintln!("verify after freeing: {:?}", m.pages().verify());
    m.platform().take_log();
    base.assert_restored(&m);
}
/// A shrinker that allocates (a buffer, a new list node...) recurses into
/// direct reclaim: Linux's PF_MEMALLOC stops that at depth 1.
#[test]
fn a_shrinker_that_allocates_does_not_reclaim_again() {
    use kmem::page::{PageAllocator, Shrinker};
    use kmem_host::HostPlatform;
    struct Alloc {
        depth: AtomicUsize,
        max: AtomicUsize,
        calls: AtomicUsize,
    }
    impl Shrinker<HostPlatform> for Alloc {
        fn name(&self) -> &str {
            "alloc-in-scan"
        }
        fn count_objects(&self, _: &PageAllocator<HostPlatform>, _: Gfp) -> usize {
            1
        }
        fn scan_objects(&self, pa: &PageAllocator<HostPlatform>, _n: usize, _g: Gfp) -> usize {
            self.calls.fetch_add(1, Relaxed);
            let d = self.depth.fetch_add(1, Relaxed) + 1;
            self.max.fetch_max(d, Relaxed);
            if d < 6 {
                if let Ok(p) = pa.alloc_pages(GFP_KERNEL | Gfp::NOWARN, 0) {
                    pa.free_pages(p, 0).unwrap();
                }
            }
            self.depth.fetch_sub(1, Relaxed);
            0
        }
    }
    let m: &'static Machine = Box::leak(Box::new(small_machine()));
    let mut held = Vec::new();
    for order in (0..=10).rev() {
        while let Ok(p) = m
            .pages()
            .alloc_pages(GFP_KERNEL | Gfp::NOWARN | Gfp::NORETRY, order)
        {
            held.push((p, order));
        }
    }
    let s: &'static Alloc = Box::leak(Box::new(Alloc {
        depth: AtomicUsize::new(0),
        max: AtomicUsize::new(0),
        calls: AtomicUsize::new(0),
    }));
    let id = m.pages().register_shrinker(s).unwrap();
    let r = m.pages().alloc_pages(GFP_KERNEL | Gfp::NOWARN, 0);
    m.pages().unregister_shrinker(id);
    eprintln!(
        "alloc: {r:?}; shrinker calls {}, max nesting depth {}",
        s.calls.load(Relaxed),
        s.max.load(Relaxed)
    );
    if let Ok(p) = r {
        m.pages().free_pages(p, 0).unwrap();
    }
    for (p, o) in held {
        m.pages().free_pages(p, o).unwrap();
    }
    assert_eq!(
        s.max.load(Relaxed),
        1,
        "direct reclaim re-entered from inside a shrinker"
    );
}
