//! Bad input gets the right error, a message that says what is wrong, and
//! leaves the allocator exactly as it was: after each one, free, cached and
//! live pages still add up to the baseline, `verify()` passes, every live
//! block's tags are intact, and the shadow model keeps running random operations
//! against the same allocator before everything is freed back to baseline.

mod page_common;

use kmem::addr::{Pfn, VirtAddr, PAGE_SIZE};
use kmem::error::{AllocError, FreeError};
use kmem::gfp::{Gfp, GfpError, ZoneType, GFP_ATOMIC, GFP_DMA, GFP_DMA32, GFP_KERNEL, GFP_NOWAIT};
use kmem_host::Machine;
use page_common::*;

/// A machine with some live state, a shadow model of it, and its baseline.
struct Fixture {
    m: Machine,
    base: Baseline,
    sh: Shadow,
    rng: SeqRng,
}

impl Fixture {
    fn new(m: Machine, seed: u64) -> Fixture {
        Fixture::with_churn(m, seed, 300)
    }

    fn with_churn(m: Machine, seed: u64, n: usize) -> Fixture {
        let base = Baseline::take(&m);
        let mut f = Fixture {
            m,
            base,
            sh: Shadow::new(),
            rng: SeqRng::new(seed),
        };
        f.churn(n);
        f.m.platform().take_log();
        f
    }

    fn small(seed: u64) -> Fixture {
        Fixture::new(small_machine(), seed)
    }

    /// Random operations checked against the shadow model.
    fn churn(&mut self, n: usize) {
        // A quarter of the pages at most: Normal never runs low.
        let max = self.base.nr_free as u64 / 4;
        for _ in 0..n {
            random_op(&self.m, &mut self.sh, &mut self.rng, max);
        }
        self.consistent();
    }

    #[track_caller]
    fn consistent(&self) {
        assert_conserved(&self.m, &self.sh, &self.base);
        self.sh.check_all_tags(&self.m);
        verify(&self.m);
    }

    /// A free that must be rejected with exactly `want`, counted, reported
    /// once with the error's own text, and change nothing.
    #[track_caller]
    fn rejected(&mut self, r: Result<(), FreeError>, want: FreeError) -> String {
        assert_eq!(r, Err(want));
        let log = self.m.platform().take_log();
        let text = want.to_string();
        assert_eq!(log, vec![text.clone()], "reported once, as it reads");
        assert!(
            text.starts_with("Bad page") || text.starts_with("split_page"),
            "{text}"
        );
        self.consistent();
        text
    }

    /// Frees everything, keeps going a while, frees again: back to baseline.
    fn finish(mut self) {
        self.churn(300);
        self.sh.free_all(&self.m);
        self.base.assert_restored(&self.m);
    }

    fn alloc(&mut self, gfp: Gfp, order: u32) -> Pfn {
        Pfn(alloc_into(&self.m, &mut self.sh, gfp, order, false).unwrap())
    }
}

#[test]
fn double_free_order_0_and_3_on_per_cpu_lists_and_in_the_zone() {
    let mut f = Fixture::small(1);
    let v0 = f.m.pages().vmstat();
    let splits0 = f.sh.refused_splits;
    for order in [0, 3, 5] {
        // Empty lists, so the freed block stays cached (no flush past `high`).
        f.m.pages().drain_all_pages();
        let p = f.alloc(GFP_KERNEL, order);
        f.sh.free(&f.m, p.0);
        // Orders 0..=3 sit on this CPU's list now, order 5 in the zone
        // (possibly merged into a larger free block).
        let state = f.m.pages().frame(p).unwrap().state();
        let free_order = if order <= 3 {
            assert_eq!(
                state,
                kmem::page::FrameState::Pcp,
                "order {order} is cached per CPU"
            );
            order
        } else {
            enclosing_free_order(&f.m, p)
        };
        assert!(free_order >= order);
        let r = f.m.pages().free_pages(p, order);
        let text = f.rejected(r, FreeError::DoubleFree { pfn: p, free_order });
        assert!(
            text.contains("double free") && text.contains(&format!("{p}")),
            "{text}"
        );
        if order > 0 {
            // The tail of the freed block, and the head with another order.
            let t = p.add((1 << order) - 1);
            let r = f.m.pages().free_pages(t, 0);
            f.rejected(r, FreeError::DoubleFree { pfn: t, free_order });
            let r = f.m.pages().free_pages(p, 0);
            f.rejected(r, FreeError::DoubleFree { pfn: p, free_order });
        }
        f.churn(50);
    }
    // Once drained and merged, still a double free (of a larger free block).
    let p = f.alloc(GFP_KERNEL, 3);
    f.sh.free(&f.m, p.0);
    f.m.pages().drain_all_pages();
    let r = f.m.pages().free_pages(p, 3);
    assert!(
        matches!(r, Err(FreeError::DoubleFree { pfn, free_order }) if pfn == p && free_order >= 3),
        "{r:?}"
    );
    f.m.platform().take_log();
    f.consistent();
    assert_eq!(
        f.m.pages().vmstat().free_error - v0.free_error - (f.sh.refused_splits - splits0),
        1 + 3 + 3 + 1
    );
    f.finish();
}

#[test]
fn free_of_a_never_allocated_pfn() {
    // On a fresh machine: no pfn was ever allocated.
    let mut f = Fixture::with_churn(small_machine(), 2, 0);
    let pa = f.m.pages();
    let normal = pa.zone(0, ZoneType::Normal);
    let pfn = (normal.start_pfn()..normal.start_pfn() + normal.spanned_pages())
        .rev()
        .map(Pfn)
        .find(|&p| {
            pa.frame(p).unwrap().state() == kmem::page::FrameState::Buddy
                && pa.frame(p).unwrap().order() >= 3
        })
        .expect("a free block");
    let order = pa.frame(pfn).unwrap().order();
    assert!(f.sh.covering(pfn.0).is_none());
    let r = pa.free_pages(pfn, 0);
    let text = f.rejected(
        r,
        FreeError::DoubleFree {
            pfn,
            free_order: order,
        },
    );
    assert!(
        text.contains(&format!("free block of order {order}")),
        "{text}"
    );
    let inside = pfn.add(3);
    let r = f.m.pages().free_pages(inside, 0);
    f.rejected(
        r,
        FreeError::DoubleFree {
            pfn: inside,
            free_order: order,
        },
    );
    // And the allocator goes on as if nothing happened.
    f.churn(300);
    f.finish();
}

#[test]
fn wrong_order_is_refused_and_the_block_stays_allocated() {
    let mut f = Fixture::small(3);
    let p = f.alloc(GFP_KERNEL, 2);
    let c = f.alloc(GFP_KERNEL | Gfp::COMP, 4);
    for wrong in [0, 1, 3, 10] {
        let r = f.m.pages().free_pages(p, wrong);
        let text = f.rejected(
            r,
            FreeError::WrongOrder {
                pfn: p,
                allocated: 2,
                freed: wrong,
            },
        );
        assert!(
            text.contains("allocated with order 2")
                && text.contains(&format!("freed with order {wrong}")),
            "{text}"
        );
        let r = f.m.pages().free_pages(c, wrong);
        f.rejected(
            r,
            FreeError::WrongOrder {
                pfn: c,
                allocated: 4,
                freed: wrong,
            },
        );
    }
    assert_eq!(f.m.pages().allocation_order(p), Some(2));
    assert_eq!(
        f.m.pages().compound_head(c.add(5)),
        c,
        "compound tails intact"
    );
    f.churn(100);
    f.finish();
}

#[test]
fn tail_pfn_is_not_a_head() {
    let mut f = Fixture::small(4);
    let p = f.alloc(GFP_KERNEL, 2);
    let c = f.alloc(GFP_ATOMIC | Gfp::COMP, 2);
    for head in [p, c] {
        for i in 1..4 {
            let t = head.add(i);
            let r = f.m.pages().free_pages(t, 0);
            let text = f.rejected(
                r,
                FreeError::NotHead {
                    pfn: t,
                    head,
                    order: 2,
                },
            );
            assert!(
                text.contains(&format!(
                    "inside the order-2 allocation starting at pfn {head}"
                )) && text.contains("free the head"),
                "{text}"
            );
        }
        // By address too.
        let va = f.m.pages().page_address(head.add(1));
        let r = f.m.pages().free_pages_addr(va, 2);
        f.rejected(
            r,
            FreeError::NotHead {
                pfn: head.add(1),
                head,
                order: 2,
            },
        );
    }
    f.finish();
}

#[test]
fn reserved_pfns_are_refused() {
    let mut f = Fixture::small(5);
    // pfn 0 (the real-mode IVT / BIOS data page) and the legacy 640K-1M hole
    // are reserved in the PC layout; the top of RAM holds the frame records.
    let memmap_top = Pfn(f.m.pages().max_pfn() - 1);
    for pfn in [Pfn(0), Pfn(0x9f), Pfn(0xa0), Pfn(0xff), memmap_top] {
        assert_eq!(
            f.m.pages().frame(pfn).unwrap().state(),
            kmem::page::FrameState::Reserved
        );
        let r = f.m.pages().free_pages(pfn, 0);
        let text = f.rejected(r, FreeError::Reserved { pfn });
        assert!(text.contains("reserved"), "{text}");
    }
    f.finish();
}

#[test]
fn pfns_beyond_ram_and_in_holes_are_not_ram() {
    // The default PC layout: RAM to 512 MiB, the PCI hole to 4 GiB.
    let mut f = Fixture::new(machine(GIB), 6);
    let max = f.m.pages().max_pfn();
    let holes = [
        Pfn((512 * MIB) >> 12), // first pfn of the PCI hole
        Pfn(GIB >> 12),
        Pfn((3 * GIB + 12345) >> 12),
        Pfn(DMA32_END_PFN - 1),
        Pfn(max),
        Pfn(max + 1),
        Pfn(u64::MAX >> 12),
    ];
    for pfn in holes {
        assert!(!f.m.ram().is_backed(pfn.phys()) || pfn.0 >= max);
        let r = f.m.pages().free_pages(pfn, 0);
        let text = f.rejected(r, FreeError::NotRam { pfn });
        assert!(text.contains("not RAM"), "{text}");
    }
    f.finish();
    // A hole inside a section that has RAM: the small PC layout ends RAM
    // below 4 GiB at 32 MiB, in the first 128 MiB section.
    let mut f = Fixture::small(66);
    let pfn = Pfn((100 * MIB) >> 12);
    assert_eq!(
        f.m.pages().frame(pfn).unwrap().state(),
        kmem::page::FrameState::Hole
    );
    let r = f.m.pages().free_pages(pfn, 0);
    f.rejected(r, FreeError::NotRam { pfn });
    f.finish();
}

#[test]
fn addresses_outside_the_direct_map_or_unaligned() {
    let mut f = Fixture::small(7);
    let heap = vec![0u8; 3 * PAGE_SIZE];
    let foreign = VirtAddr((heap.as_ptr() as usize + PAGE_SIZE) & !(PAGE_SIZE - 1));
    let r = f.m.pages().free_pages_addr(foreign, 0);
    let text = f.rejected(r, FreeError::NotDirectMapped { addr: foreign });
    assert!(text.contains("not in the direct map"), "{text}");
    let r = f.m.pages().free_pages_exact(foreign, PAGE_SIZE);
    f.rejected(r, FreeError::NotDirectMapped { addr: foreign });
    // Just past the end of the direct map.
    let past = f.m.pages().page_address(Pfn(f.m.pages().max_pfn()));
    let r = f.m.pages().free_pages_addr(past, 0);
    f.rejected(r, FreeError::NotDirectMapped { addr: past });

    let p = f.alloc(GFP_KERNEL, 1);
    let odd = VirtAddr(f.m.pages().page_address(p).0 + 64);
    let r = f.m.pages().free_pages_addr(odd, 1);
    let text = f.rejected(r, FreeError::Unaligned { addr: odd });
    assert!(text.contains("not page aligned"), "{text}");
    f.finish();
}

#[test]
fn free_pages_exact_checks_every_page_first() {
    let mut f = Fixture::small(8);
    let pfn = alloc_exact_into(&f.m, &mut f.sh, GFP_KERNEL, 3 * PAGE_SIZE).unwrap();
    let va = f.m.pages().page_address(Pfn(pfn));
    // The fourth page of the order-2 block went back at allocation time.
    let r = f.m.pages().free_pages_exact(va, 4 * PAGE_SIZE);
    assert!(
        matches!(r, Err(FreeError::DoubleFree { pfn: p, .. }) if p == Pfn(pfn + 3)),
        "{r:?}"
    );
    f.m.platform().take_log();
    // Nothing was freed: the three pages are still allocated, tags intact.
    for i in 0..3 {
        assert_eq!(f.m.pages().allocation_order(Pfn(pfn + i)), Some(0));
    }
    f.consistent();
    f.finish();
}

#[test]
fn split_page_errors() {
    // split_page errors are reported and counted like free errors.
    let mut f = Fixture::small(9);
    let c = f.alloc(GFP_KERNEL | Gfp::COMP, 3);
    let r = f.m.pages().split_page(c, 3);
    f.rejected(r, FreeError::Compound { pfn: c });
    let p = f.alloc(GFP_KERNEL, 3);
    let r = f.m.pages().split_page(p, 2);
    f.rejected(
        r,
        FreeError::WrongOrder {
            pfn: p,
            allocated: 3,
            freed: 2,
        },
    );
    split_into(&f.m, &mut f.sh, p.0, |i| i == 0);
    let errors = f.m.pages().vmstat().free_error;
    let e = f.m.pages().split_page(p, 0).unwrap_err();
    assert!(
        matches!(e, FreeError::DoubleFree { pfn, .. } if pfn == p),
        "{e:?}"
    );
    assert_eq!(f.m.platform().take_log(), vec![e.to_string()]);
    assert_eq!(f.m.pages().vmstat().free_error, errors + 1);
    f.consistent();
    f.finish();
}

#[test]
fn order_above_max_is_refused() {
    let f = Fixture::small(10);
    let v0 = f.m.pages().vmstat();
    let e = f.m.pages().alloc_pages(GFP_KERNEL, 11).unwrap_err();
    assert_eq!(e, AllocError::OrderTooLarge { order: 11 });
    let text = e.to_string();
    assert!(
        text.contains("order 11") && text.contains("MAX_PAGE_ORDER"),
        "{text}"
    );
    let log = f.m.platform().take_log();
    assert!(
        log.len() == 1 && log[0].contains("order 11 > MAX_PAGE_ORDER"),
        "{log:?}"
    );
    assert_eq!(
        f.m.pages().get_free_pages(GFP_NOWAIT, 12),
        Err(AllocError::OrderTooLarge { order: 12 })
    );
    assert!(
        f.m.platform().take_log().is_empty(),
        "__GFP_NOWARN silences it"
    );
    // Linux's WARN_ON_ONCE_GFP: the second failure is quiet.
    assert_eq!(
        f.m.pages().alloc_pages(GFP_KERNEL, 13),
        Err(AllocError::OrderTooLarge { order: 13 })
    );
    assert!(f.m.platform().take_log().is_empty(), "warned once");
    let e =
        f.m.pages()
            .alloc_pages_exact((4 << 20) + 1, GFP_KERNEL)
            .unwrap_err();
    assert_eq!(
        e,
        AllocError::SizeTooLarge {
            size: (4 << 20) + 1,
            max: 4 << 20
        }
    );
    assert_eq!(f.m.pages().vmstat().fail_order - v0.fail_order, 4);
    let r = f.m.pages().free_pages(Pfn(f.sh.nth(0).unwrap().pfn), 11);
    assert!(
        matches!(r, Err(FreeError::WrongOrder { freed: 11, .. })),
        "{r:?}"
    );
    f.m.platform().take_log();
    f.consistent();
    f.finish();
}

#[test]
fn exhausted_zone_names_itself() {
    let mut f = Fixture::small(11);
    for (gfp, zone) in [
        (GFP_KERNEL | GFP_DMA, "DMA"),
        (GFP_KERNEL | GFP_DMA32, "DMA32"),
    ] {
        let mut got = Vec::new();
        let e = loop {
            match f.m.pages().alloc_pages(gfp, 0) {
                Ok(p) => got.push(p),
                Err(e) => break e,
            }
        };
        assert!(!got.is_empty());
        let AllocError::NoMemory(n) = e else {
            panic!("{e:?}")
        };
        assert_eq!(n.highest_zone.name(), zone);
        let text = e.to_string();
        assert!(
            text.starts_with("page allocation failure: order:0")
                && text.contains(&format!("zones {zone} and below"))
                && text.contains(&format!("{gfp}")),
            "{text}"
        );
        let log = f.m.platform().take_log();
        assert_eq!(log.last(), Some(&text), "reported (no __GFP_NOWARN)");
        // Higher zones are not affected.
        let p = f.alloc(GFP_KERNEL, 0);
        assert_eq!(f.m.pages().frame(p).unwrap().zone_index(), 2);
        for p in got {
            f.sh.add_pages(&f.m, gfp, p, 0, How::Pages);
        }
        f.consistent();
    }
    f.finish();
}

#[test]
fn invalid_flag_combinations() {
    let f = Fixture::small(12);
    let v0 = f.m.pages().vmstat();
    let cases: [(Gfp, GfpError, &[&str]); 3] = [
        (
            GFP_KERNEL | GFP_DMA | GFP_DMA32,
            GfpError::BadZone(GFP_KERNEL | GFP_DMA | GFP_DMA32),
            &["__GFP_DMA and __GFP_DMA32", "different zones"],
        ),
        (
            GFP_KERNEL | Gfp::MOVABLE | Gfp::RECLAIMABLE,
            GfpError::MovableAndReclaimable(GFP_KERNEL | Gfp::MOVABLE | Gfp::RECLAIMABLE),
            &["__GFP_MOVABLE and __GFP_RECLAIMABLE", "migrate types"],
        ),
        (
            GFP_KERNEL | Gfp::from_bits_retain(1 << 9),
            GfpError::UnknownBits(1 << 9),
            &["unknown bits 0x200"],
        ),
    ];
    for (gfp, err, words) in cases {
        for order in [0, 4] {
            let e = f.m.pages().alloc_pages(gfp, order).unwrap_err();
            assert_eq!(e, AllocError::InvalidGfp(err));
            let text = e.to_string();
            assert!(text.starts_with("invalid GFP mask"), "{text}");
            for w in words {
                assert!(text.contains(w), "{text} lacks {w}");
            }
            let log = f.m.platform().take_log();
            assert!(
                log.len() == 1
                    && log[0].starts_with("WARNING: invalid GFP mask")
                    && log[0].contains("page_errors.rs"),
                "{log:?}"
            );
        }
        // Quietly with __GFP_NOWARN, and through the other entry points.
        let e =
            f.m.pages()
                .get_free_pages(gfp | Gfp::NOWARN, 0)
                .unwrap_err();
        assert!(matches!(e, AllocError::InvalidGfp(_)));
        assert!(f.m.platform().take_log().is_empty());
        f.consistent();
    }
    assert_eq!(f.m.pages().vmstat().fail_gfp - v0.fail_gfp, 9);
    f.finish();
}

/// `__GFP_NOFAIL` without direct reclaim, or with `__GFP_NORETRY`, is
/// served as Linux serves it (kmem used to refuse both masks as invalid,
/// even with memory free); out of memory, the one that cannot reclaim fails
/// like any other allocation after a warning given once, as Linux's
/// `WARN_ON_ONCE(!can_direct_reclaim)`.
#[test]
fn nofail_masks_linux_serves_are_served() {
    let f = Fixture::small(12);
    let pages = f.m.pages();
    for gfp in [
        GFP_ATOMIC | Gfp::NOFAIL,
        GFP_NOWAIT | Gfp::NOFAIL,
        GFP_KERNEL | Gfp::NOFAIL | Gfp::NORETRY,
    ] {
        let p = pages.alloc_pages(gfp, 0).unwrap();
        pages.free_pages(p, 0).unwrap();
    }
    assert!(f.m.platform().take_log().is_empty());
    // Out of memory: every page held.
    let mut held = Vec::new();
    while let Ok(p) = pages.alloc_pages(GFP_ATOMIC | Gfp::MEMALLOC | Gfp::NOWARN, 0) {
        held.push(p);
    }
    f.m.platform().take_log();
    // GFP_NOWAIT has __GFP_NOWARN (Linux 6.16 on): quiet.
    let e = pages.alloc_pages(GFP_NOWAIT | Gfp::NOFAIL, 0);
    assert!(matches!(e, Err(AllocError::NoMemory { .. })), "{e:?}");
    assert!(f.m.platform().take_log().is_empty(), "__GFP_NOWARN: quiet");
    for _ in 0..3 {
        let e = pages.alloc_pages(GFP_ATOMIC | Gfp::NOFAIL, 0);
        assert!(matches!(e, Err(AllocError::NoMemory { .. })), "{e:?}");
    }
    let log = f.m.platform().take_log();
    let warned: Vec<_> = log
        .iter()
        .filter(|l| l.contains("__GFP_NOFAIL without __GFP_DIRECT_RECLAIM"))
        .collect();
    assert_eq!(warned.len(), 1, "{log:#?}");
    for p in held {
        pages.free_pages(p, 0).unwrap();
    }
    f.consistent();
    f.finish();
}

/// Order of the free block that contains `p` (on a zone or per-CPU list).
fn enclosing_free_order(m: &Machine, p: Pfn) -> u32 {
    use kmem::page::FrameState::{Buddy, Pcp};
    for o in 0..=10u32 {
        let head = Pfn(p.0 & !((1 << o) - 1));
        let f = m.pages().frame(head).unwrap();
        if matches!(f.state(), Buddy | Pcp) && f.order() >= o {
            return f.order();
        }
    }
    panic!("{p} is in no free block");
}
