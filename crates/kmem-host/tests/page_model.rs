//! Random operation sequences on a real hosted machine, checked step by step
//! against a shadow model of the live blocks.
//!
//! After every operation: no two live blocks overlap, each is aligned to its
//! order, lies in a zone its mask allows, `__GFP_ZERO` memory reads zero, the
//! tags written into each page through its direct-map address are intact
//! (overlap caught through real memory, not just bookkeeping), free, per-CPU
//! and live pages add up to what was free at boot, and `verify()` passes. Bad
//! frees are mixed in; each must get its exact error and change nothing. At
//! the end everything is freed and every counter is back to its baseline.

mod page_common;
mod proptest_cases;

use kmem::addr::{Pfn, VirtAddr, PAGE_SIZE};
use kmem::error::FreeError;
use kmem::gfp::{Gfp, ZoneType};
use page_common::*;
use proptest::prelude::*;
use proptest::test_runner::Config;

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        mask: usize,
        order: u32,
        zero: bool,
        comp: bool,
    },
    GetFree {
        mask: usize,
        order: u32,
    },
    Exact {
        mask: usize,
        size: usize,
        zero: bool,
    },
    Bulk {
        mask: usize,
        n: usize,
    },
    Free {
        pick: usize,
    },
    Split {
        pick: usize,
        free_even: bool,
    },
    DoubleFree {
        pick: usize,
    },
    WrongOrder {
        pick: usize,
        delta: u32,
    },
    TailFree {
        pick: usize,
        off: u64,
    },
    Foreign {
        kind: u8,
    },
    Drain {
        all: bool,
    },
}

fn order() -> impl Strategy<Value = u32> {
    prop_oneof![4 => 0u32..=3, 2 => 0u32..=6, 1 => 0u32..=10]
}

fn mask() -> impl Strategy<Value = usize> {
    0..MASKS.len()
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (mask(), order(), any::<bool>(), any::<bool>())
            .prop_map(|(mask, order, zero, comp)| Op::Alloc { mask, order, zero, comp }),
        2 => (mask(), order()).prop_map(|(mask, order)| Op::GetFree { mask, order }),
        2 => (mask(), 1usize..=40 * PAGE_SIZE, any::<bool>())
            .prop_map(|(mask, size, zero)| Op::Exact { mask, size, zero }),
        1 => (mask(), 1usize..=24).prop_map(|(mask, n)| Op::Bulk { mask, n }),
        8 => any::<usize>().prop_map(|pick| Op::Free { pick }),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(pick, free_even)| Op::Split { pick, free_even }),
        1 => any::<usize>().prop_map(|pick| Op::DoubleFree { pick }),
        1 => (any::<usize>(), 0u32..10).prop_map(|(pick, delta)| Op::WrongOrder { pick, delta }),
        1 => (any::<usize>(), any::<u64>()).prop_map(|(pick, off)| Op::TailFree { pick, off }),
        1 => (0u8..5).prop_map(|kind| Op::Foreign { kind }),
        1 => any::<bool>().prop_map(|all| Op::Drain { all }),
    ]
}

/// Runs `f` in a hard IRQ if `gfp` cannot block (where such masks belong),
/// else in process context.
fn in_ctx<R>(gfp: Gfp, f: impl FnOnce() -> R) -> R {
    let _g = (!gfp.allows_blocking()).then(kmem_host::irq);
    f()
}

fn run(ops: &[Op]) {
    let m = small_machine();
    let base = Baseline::take(&m);
    verify(&m);
    let pa = m.pages();
    let max_live = base.nr_free as u64 / 2;
    let mut sh = Shadow::new();
    m.platform().take_log();

    for op in ops {
        let warnings_before = m.platform().log_len();
        let mut expect_warning = false;
        match *op {
            Op::Alloc {
                mask,
                order,
                zero,
                comp,
            } => {
                let mut gfp = MASKS[mask].1;
                if zero {
                    gfp |= Gfp::ZERO;
                }
                if comp {
                    gfp |= Gfp::COMP;
                }
                if sh.live_pages + (1 << order) <= max_live {
                    let r = in_ctx(gfp, || alloc_into(&m, &mut sh, gfp, order, false));
                    if let Err(e) = r {
                        assert_acceptable_failure(&e, gfp, order);
                        // Fewer than half the pages are live: an order-0
                        // allocation that may use Normal cannot fail.
                        assert!(
                            order > 0 || gfp.zone_type() != Ok(ZoneType::Normal),
                            "{gfp} order 0 failed: {e}"
                        );
                    }
                }
            }
            Op::GetFree { mask, order } => {
                let gfp = MASKS[mask].1;
                if sh.live_pages + (1 << order) <= max_live {
                    if let Err(e) = in_ctx(gfp, || alloc_into(&m, &mut sh, gfp, order, true)) {
                        assert_acceptable_failure(&e, gfp, order);
                    }
                }
            }
            Op::Exact { mask, size, zero } => {
                let mut gfp = MASKS[mask].1;
                if zero {
                    gfp |= Gfp::ZERO;
                }
                let order = kmem::addr::get_order(size);
                if sh.live_pages + (1 << order) <= max_live {
                    if let Err(e) = in_ctx(gfp, || alloc_exact_into(&m, &mut sh, gfp, size)) {
                        assert_acceptable_failure(&e, gfp, order);
                    }
                }
            }
            Op::Bulk { mask, n } => {
                let gfp = MASKS[mask].1;
                if sh.live_pages + n as u64 <= max_live {
                    let got = in_ctx(gfp, || alloc_bulk_into(&m, &mut sh, gfp, n));
                    assert!(
                        got == n || gfp.zone_type() != Ok(ZoneType::Normal),
                        "bulk of {n} with {gfp} got {got}"
                    );
                }
            }
            Op::Free { pick } => {
                if let Some(b) = sh.nth(pick) {
                    sh.free(&m, b.pfn);
                }
            }
            Op::Split { pick, free_even } => {
                // A compound block must be refused (checked in split_into).
                let cand = sh.nth(pick).filter(|b| b.order > 0);
                if let Some(b) = cand.filter(|b| matches!(b.how, How::Pages | How::Addr)) {
                    split_into(&m, &mut sh, b.pfn, |i| (i % 2 == 0) == free_even);
                }
            }
            Op::DoubleFree { pick } => {
                if !sh.freed.is_empty() {
                    let (pfn, order) = sh.freed[pick % sh.freed.len()];
                    if sh.covering(pfn).is_none() {
                        let r = pa.free_pages(Pfn(pfn), order);
                        assert!(
                            matches!(r, Err(FreeError::DoubleFree { pfn: p, .. }) if p == Pfn(pfn)),
                            "second free of pfn {pfn:#x} order {order}: {r:?}"
                        );
                        expect_warning = true;
                    }
                }
            }
            Op::WrongOrder { pick, delta } => {
                if let Some(b) = sh.nth(pick) {
                    let wrong = (b.order + 1 + delta) % 11;
                    let r = pa.free_pages(Pfn(b.pfn), wrong);
                    assert_eq!(
                        r,
                        Err(FreeError::WrongOrder {
                            pfn: Pfn(b.pfn),
                            allocated: b.order,
                            freed: wrong
                        })
                    );
                    expect_warning = true;
                }
            }
            Op::TailFree { pick, off } => {
                let cand = sh.nth(pick).filter(|b| b.order > 0);
                if let Some(b) = cand.filter(|b| matches!(b.how, How::Pages | How::Addr)) {
                    let tail = b.pfn + 1 + off % (b.pages - 1);
                    let r = pa.free_pages(Pfn(tail), 0);
                    assert_eq!(
                        r,
                        Err(FreeError::NotHead {
                            pfn: Pfn(tail),
                            head: Pfn(b.pfn),
                            order: b.order
                        })
                    );
                    expect_warning = true;
                }
            }
            Op::Foreign { kind } => {
                let local = 0u64;
                let r = match kind {
                    0 => {
                        let va = VirtAddr(&local as *const u64 as usize & !(PAGE_SIZE - 1));
                        let r = pa.free_pages_addr(va, 0);
                        assert_eq!(r, Err(FreeError::NotDirectMapped { addr: va }));
                        r
                    }
                    1 => {
                        let va = VirtAddr(pa.page_address(Pfn(0x2000)).0 + 8);
                        let r = pa.free_pages_addr(va, 0);
                        assert_eq!(r, Err(FreeError::Unaligned { addr: va }));
                        r
                    }
                    2 => {
                        let pfn = Pfn(pa.max_pfn() + 12345);
                        let r = pa.free_pages(pfn, 0);
                        assert_eq!(r, Err(FreeError::NotRam { pfn }));
                        r
                    }
                    3 => {
                        let r = pa.free_pages(Pfn(0), 0);
                        assert_eq!(r, Err(FreeError::Reserved { pfn: Pfn(0) }));
                        r
                    }
                    _ => {
                        // 100 MiB: in the hole between 32 MiB and 4 GiB.
                        let pfn = Pfn((100 * MIB) >> 12);
                        let r = pa.free_pages(pfn, 0);
                        assert_eq!(r, Err(FreeError::NotRam { pfn }));
                        r
                    }
                };
                assert!(r.is_err());
                expect_warning = true;
            }
            Op::Drain { all } => {
                if all {
                    pa.drain_all_pages();
                    assert_eq!(pa.pcp_pages(), 0);
                } else {
                    pa.drain_local_pages();
                }
            }
        }
        if expect_warning {
            assert_eq!(
                m.platform().log_len(),
                warnings_before + 1,
                "a rejected free is reported once"
            );
            let log = m.platform().take_log();
            assert!(log.last().unwrap().starts_with("Bad page"), "{log:?}");
        }
        assert_conserved(&m, &sh, &base);
        sh.check_all_tags(&m);
        verify(&m);
    }

    sh.free_all(&m);
    base.assert_restored(&m);
}

proptest! {
    #![proptest_config(Config {
        cases: proptest_cases::cases(256),
        failure_persistence: None,
        ..Config::default()
    })]

    #[test]
    fn random_ops_match_the_shadow_model(ops in prop::collection::vec(op(), 1..300)) {
        run(&ops);
    }
}

/// One long deterministic run, so a default `cargo test` always covers deep
/// states (many live blocks, fragmented zones), not only short sequences.
#[test]
fn long_random_run_returns_to_baseline() {
    let m = small_machine();
    let base = Baseline::take(&m);
    let mut sh = Shadow::new();
    let mut rng = SeqRng::new(0xB0DD7);
    let max_live = base.nr_free as u64 * 3 / 4;
    for i in 0..6000 {
        random_op(&m, &mut sh, &mut rng, max_live);
        if i % 250 == 0 {
            assert_conserved(&m, &sh, &base);
            sh.check_all_tags(&m);
            verify(&m);
        }
    }
    assert!(sh.live_pages > 0);
    sh.free_all(&m);
    base.assert_restored(&m);
}
