//! Execution context at the page allocator's entry points: a blocking mask
//! in atomic context is Linux's "sleeping function called from invalid
//! context", reported with the context spelled out and then failed, let
//! through, or turned into a panic by policy; NMI refuses every allocation.

mod page_common;

use kmem::addr::Pfn;
use kmem::context::{ContextPolicy, ExecContext};
use kmem::error::AllocError;
use kmem::gfp::{Gfp, GFP_ATOMIC, GFP_KERNEL, GFP_NOWAIT};
use kmem_host::{ContextGuard, Machine, MachineConfig};
use page_common::*;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Every atomic context a guard can enter, with what the report must say
/// about it, and the expected `in_atomic()` / `irqs_disabled()` figures.
#[allow(clippy::type_complexity)]
const CONTEXTS: [(&str, fn() -> ContextGuard, &str, u8, u8); 7] = [
    ("irq", kmem_host::irq, "hard IRQ", 1, 1),
    ("softirq", kmem_host::softirq, "softirq", 1, 0),
    (
        "spin_lock",
        kmem_host::spin_lock,
        "1 spinlock(s) held",
        1,
        0,
    ),
    (
        "preempt_disable",
        kmem_host::preempt_disable,
        "preemption disabled (depth 1)",
        1,
        0,
    ),
    (
        "local_irq_disable",
        kmem_host::local_irq_disable,
        "IRQs disabled",
        0,
        1,
    ),
    (
        "rcu_read_lock",
        kmem_host::rcu_read_lock,
        "RCU read-side depth 1",
        0,
        0,
    ),
    (
        "local_bh_disable",
        kmem_host::local_bh_disable,
        "BH disabled",
        1,
        0,
    ),
];

fn machine_with(policy: ContextPolicy) -> Machine {
    Machine::new(MachineConfig {
        ram_bytes: 64 * MIB,
        context_policy: policy,
        ..Default::default()
    })
    .unwrap()
}

fn free_and_cached(m: &Machine) -> usize {
    m.pages().nr_free_pages_with_pcp()
}

#[test]
fn gfp_kernel_in_each_atomic_context_fails_and_is_reported() {
    let m = small_machine();
    let base = Baseline::take(&m);
    for (name, enter, words, in_atomic, irqs_off) in CONTEXTS {
        m.platform().take_log();
        let v0 = m.pages().vmstat();
        let free0 = free_and_cached(&m);
        let (r, ctx, line) = {
            let _g = enter();
            (
                m.pages().alloc_pages(GFP_KERNEL, 0),
                kmem_host::current_context(),
                line!() - 2,
            )
        };
        assert!(ctx.is_atomic(), "{name} is atomic");
        let Err(AllocError::SleepInAtomic(v)) = r else {
            panic!("GFP_KERNEL under {name}: {r:?}")
        };
        assert_eq!(v.context, ctx, "{name}: the report carries the context");
        assert!(v.caller.file().ends_with("page_context.rs"), "{}", v.caller);
        assert_eq!(v.caller.line(), line, "the caller is the allocation site");
        assert_eq!(
            m.pages().vmstat().context_violation,
            v0.context_violation + 1
        );
        assert_eq!(free_and_cached(&m), free0, "{name}: nothing was allocated");

        let log = m.platform().take_log();
        assert_eq!(log.len(), 1, "{name}: one report: {log:?}");
        let report = &log[0];
        assert_eq!(report, &AllocError::SleepInAtomic(v).to_string());
        let first = report.lines().next().unwrap();
        assert!(
            first.starts_with("BUG: sleeping function called from invalid context at ")
                && first.contains("page_context.rs"),
            "{first}"
        );
        let l2 = format!("in_atomic(): {in_atomic}, irqs_disabled(): {irqs_off}");
        assert!(report.contains(&l2), "{name}: {report}");
        let context_line = report
            .lines()
            .find(|l| l.starts_with("context: "))
            .unwrap_or_else(|| panic!("{name}: no context line in {report}"));
        assert!(context_line.contains(words), "{name}: {context_line}");
        assert!(
            context_line.contains("GFP_ATOMIC"),
            "the report suggests the fix"
        );

        // The same context with a non-blocking mask is fine.
        let p = {
            let _g = enter();
            m.pages()
                .alloc_pages(GFP_ATOMIC, 0)
                .expect("GFP_ATOMIC in atomic context")
        };
        let q = {
            let _g = enter();
            m.pages()
                .alloc_pages(GFP_NOWAIT, 1)
                .expect("GFP_NOWAIT in atomic context")
        };
        assert!(
            m.platform().take_log().is_empty(),
            "{name}: nothing to report"
        );
        m.pages().free_pages(p, 0).unwrap();
        m.pages().free_pages(q, 1).unwrap();
    }
    // Back in process context GFP_KERNEL works.
    assert_eq!(kmem_host::current_context(), ExecContext::PROCESS);
    let p = m.pages().alloc_pages(GFP_KERNEL, 0).unwrap();
    m.pages().free_pages(p, 0).unwrap();
    base.assert_restored(&m);
}

#[test]
fn every_blocking_entry_point_is_checked() {
    let m = small_machine();
    let base = Baseline::take(&m);
    let pa = m.pages();
    let v0 = pa.vmstat();
    {
        let _g = kmem_host::spin_lock();
        let is_sleep = |e: AllocError| matches!(e, AllocError::SleepInAtomic(_));
        assert!(is_sleep(pa.alloc_pages(GFP_KERNEL, 3).unwrap_err()));
        assert!(is_sleep(pa.alloc_pages_node(0, GFP_KERNEL, 0).unwrap_err()));
        assert!(is_sleep(pa.get_free_pages(GFP_KERNEL, 0).unwrap_err()));
        assert!(is_sleep(pa.get_zeroed_page(GFP_KERNEL).unwrap_err()));
        assert!(is_sleep(
            pa.alloc_pages_exact(3 * 4096, GFP_KERNEL).unwrap_err()
        ));
        assert!(is_sleep(
            pa.alloc_pages(GFP_KERNEL | Gfp::DMA, 0).unwrap_err()
        ));
        let mut arr = [None; 4];
        assert_eq!(pa.alloc_pages_bulk(GFP_KERNEL, &mut arr), 0);
        assert_eq!(arr, [None; 4]);
    }
    assert_eq!(pa.vmstat().context_violation - v0.context_violation, 7);
    assert_eq!(m.platform().take_log().len(), 7);
    base.assert_restored(&m);
}

#[test]
fn warn_policy_reports_and_allocates_without_sleeping() {
    let m = machine_with(ContextPolicy::Warn);
    let base = Baseline::take(&m);
    let v0 = m.pages().vmstat();
    let p = {
        let _g = kmem_host::irq();
        m.pages()
            .alloc_pages(GFP_KERNEL, 2)
            .expect("Warn lets it through")
    };
    let log = m.platform().take_log();
    assert_eq!(log.len(), 1);
    assert!(log[0].starts_with("BUG: sleeping function called from invalid context"));
    assert!(log[0].contains("context: hard IRQ"), "{}", log[0]);
    assert_eq!(
        m.pages().vmstat().context_violation,
        v0.context_violation + 1
    );
    check_zone(&m, GFP_KERNEL, p.0, 4);

    // "Without sleeping": at the min watermark it fails like a
    // non-blocking request, with no direct reclaim.
    let mut held = vec![];
    while let Ok(q) = m.pages().alloc_pages(GFP_NOWAIT, 0) {
        held.push(q);
    }
    let v1 = m.pages().vmstat();
    let r = {
        let _g = kmem_host::irq();
        m.pages().alloc_pages(GFP_KERNEL, 0)
    };
    let Err(AllocError::NoMemory(n)) = r else {
        panic!("{r:?}")
    };
    assert!(!n.reclaimed && !n.oom, "{n:?}");
    let v2 = m.pages().vmstat();
    assert_eq!(
        v2.direct_reclaim, v1.direct_reclaim,
        "no reclaim in IRQ context"
    );
    assert_eq!(v2.context_violation, v1.context_violation + 1);
    for q in held {
        m.pages().free_pages(q, 0).unwrap();
    }
    m.pages().free_pages(p, 2).unwrap();
    base.assert_restored(&m);
}

#[test]
fn panic_policy_panics_with_the_report() {
    let m = machine_with(ContextPolicy::Panic);
    let base = Baseline::take(&m);
    let r = catch_unwind(AssertUnwindSafe(|| {
        let _g = kmem_host::preempt_disable();
        m.pages().alloc_pages(GFP_KERNEL, 0)
    }));
    let payload = r.expect_err("Panic policy panics");
    let msg = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap();
    assert!(
        msg.starts_with("BUG: sleeping function called from invalid context"),
        "{msg}"
    );
    assert!(msg.contains("preemption disabled (depth 1)"), "{msg}");
    // The guard was dropped while unwinding; the allocator is untouched.
    assert!(!kmem_host::in_atomic());
    assert_eq!(m.pages().vmstat().context_violation, 1);
    assert!(m.platform().log_contains("BUG: sleeping function"));
    let p = m.pages().alloc_pages(GFP_KERNEL, 0).unwrap();
    let q = {
        let _g = kmem_host::preempt_disable();
        m.pages().alloc_pages(GFP_ATOMIC, 0).unwrap()
    };
    m.pages().free_pages(p, 0).unwrap();
    m.pages().free_pages(q, 0).unwrap();
    base.assert_restored(&m);
}

#[test]
#[should_panic(expected = "BUG: sleeping function called from invalid context")]
fn panic_policy_should_panic() {
    let m = machine_with(ContextPolicy::Panic);
    let _g = kmem_host::softirq();
    let _ = m.pages().alloc_pages(GFP_KERNEL | Gfp::ZERO, 1);
}

#[test]
fn nmi_refuses_every_allocation() {
    let m = small_machine();
    let base = Baseline::take(&m);
    let pa = m.pages();
    let v0 = pa.vmstat();
    m.platform().take_log();
    let nmi = |e: AllocError| e == AllocError::InNmi;
    {
        let _g = kmem_host::nmi();
        for gfp in [
            GFP_ATOMIC,
            GFP_NOWAIT,
            GFP_ATOMIC | Gfp::MEMALLOC,
            GFP_KERNEL,
        ] {
            for order in [0, 3, 5] {
                assert!(
                    nmi(pa.alloc_pages(gfp, order).unwrap_err()),
                    "{gfp} order {order}"
                );
            }
        }
        assert!(nmi(pa.get_free_pages(GFP_ATOMIC, 0).unwrap_err()));
        assert!(nmi(pa.get_zeroed_page(GFP_ATOMIC).unwrap_err()));
        assert!(nmi(pa.alloc_pages_exact(5000, GFP_ATOMIC).unwrap_err()));
        assert!(nmi(pa.alloc_pages_node(0, GFP_ATOMIC, 0).unwrap_err()));
        let mut arr: [Option<Pfn>; 3] = [None; 3];
        assert_eq!(pa.alloc_pages_bulk(GFP_ATOMIC, &mut arr), 0);
    }
    let v1 = pa.vmstat();
    assert_eq!(v1.fail_nmi - v0.fail_nmi, 12 + 5);
    assert_eq!(
        v1.context_violation, v0.context_violation,
        "NMI is refused before the sleep check"
    );
    assert_eq!(v1.alloc_pcp + v1.alloc_buddy, v0.alloc_pcp + v0.alloc_buddy);
    let text = AllocError::InNmi.to_string();
    assert!(text.contains("NMI") && text.contains("refused"), "{text}");
    // Nested in an IRQ, still NMI.
    {
        let _i = kmem_host::irq();
        let _n = kmem_host::nmi();
        assert!(nmi(pa.alloc_pages(GFP_ATOMIC, 0).unwrap_err()));
    }
    // Leaving the NMI makes GFP_ATOMIC work again.
    let p = pa.alloc_pages(GFP_ATOMIC, 0).unwrap();
    pa.free_pages(p, 0).unwrap();
    base.assert_restored(&m);
}
