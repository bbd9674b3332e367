//! The page allocator on real RAM: zones from the firmware map, blocks of
//! every order written and read back through the direct map, zone modifiers,
//! `__GFP_ZERO`, a refused double free, exhaustion, and a full consistency
//! walk with every page accounted for at the end.

use super::{check_block, fill_block, zone_name, Pages, Section};
use crate::sync::BootCell;
use crate::{check, log};
use kmem::gfp::{GFP_DMA, GFP_DMA32, GFP_KERNEL};
use kmem::page::Watermark;
use kmem::{AllocError, Gfp, Pfn, ZoneType, PAGE_SIZE};

/// Blocks held at once during the exhaustion run.
const HOLD: usize = 4096;
static HELD: BootCell<[Pfn; HOLD]> = BootCell::new([Pfn(0); HOLD]);

/// Runs the section.
pub fn run(pa: &'static Pages) -> Section {
    let mut s = Section::new("pages");
    for z in pa.populated_zones() {
        log!(
            s,
            "zone {:<6} pfns {:#08x}..{:#08x}: present {:>6}, managed {:>6}, free {:>6}, watermarks min/low/high {}/{}/{}",
            z.zone_type().name(),
            z.start_pfn(),
            z.start_pfn() + z.spanned_pages(),
            z.present_pages(),
            z.managed_pages(),
            z.free_pages(),
            z.watermark(Watermark::Min),
            z.watermark(Watermark::Low),
            z.watermark(Watermark::High),
        );
    }
    pa.drain_all_pages();
    let baseline = pa.nr_free_pages();

    // Blocks of every size, all held at once so overlaps would show.
    // SAFETY: only this section uses HELD, with interrupts unable to reach it.
    let held = unsafe { &mut *HELD.get() };
    for &(order, count) in &[
        (0u32, 64usize),
        (1, 32),
        (2, 16),
        (3, 16),
        (4, 8),
        (6, 4),
        (8, 2),
        (10, 2),
    ] {
        let mut got = 0;
        for slot in held.iter_mut().take(count) {
            match pa.alloc_pages(GFP_KERNEL, order) {
                Ok(p) => {
                    *slot = p;
                    got += 1;
                }
                Err(e) => {
                    s.fail(format_args!("order {order}: {e}"));
                    break;
                }
            }
        }
        let blocks = &held[..got];
        let mut misaligned = 0;
        for &p in blocks {
            misaligned += (p.0 % (1 << order) != 0) as usize;
            fill_block(pa, p, order);
        }
        let wrong: usize = blocks.iter().map(|&p| check_block(pa, p, order)).sum();
        let mut free_errors = 0;
        for &p in blocks {
            free_errors += pa.free_pages(p, order).is_err() as usize;
        }
        if check!(
            s,
            misaligned == 0 && wrong == 0 && free_errors == 0,
            "order {order}: {misaligned} misaligned, {wrong} words wrong, {free_errors} frees refused"
        ) {
            log!(
                s,
                "order {:>2}: {:>2} blocks of {:>4} KiB (first at pfn {:#x}), aligned, written and read back through the direct map, freed",
                order,
                got,
                (PAGE_SIZE << order) / 1024,
                blocks.first().map_or(0, |p| p.0)
            );
        }
    }

    // Each mask lands in the highest populated zone it allows.
    let highest_up_to = |limit: ZoneType| {
        pa.populated_zones()
            .map(|z| z.zone_type())
            .filter(|&z| z <= limit)
            .last()
            .map_or("none", |z| z.name())
    };
    for (name, gfp, want) in [
        (
            "GFP_KERNEL|GFP_DMA",
            GFP_KERNEL | GFP_DMA,
            highest_up_to(ZoneType::Dma),
        ),
        (
            "GFP_KERNEL|GFP_DMA32",
            GFP_KERNEL | GFP_DMA32,
            highest_up_to(ZoneType::Dma32),
        ),
        ("GFP_KERNEL", GFP_KERNEL, highest_up_to(ZoneType::Normal)),
    ] {
        match pa.alloc_pages(gfp, 2) {
            Ok(p) => {
                let phys = p.phys().0;
                fill_block(pa, p, 2);
                let wrong = check_block(pa, p, 2);
                let zone = zone_name(phys);
                if check!(
                    s,
                    zone == want && wrong == 0,
                    "{name}: phys {phys:#x} in zone {zone} (want {want}), {wrong} words wrong"
                ) {
                    log!(
                        s,
                        "{name:<20} -> phys {phys:#011x}, zone {zone}: written and read back"
                    );
                }
                check!(s, pa.free_pages(p, 2).is_ok(), "{name}: free refused");
            }
            Err(e) => s.fail(format_args!("{name}: {e}")),
        }
    }

    // __GFP_ZERO hands out zeroed memory even after the page was dirtied.
    if let Ok(p) = pa.alloc_pages(GFP_KERNEL, 0) {
        fill_block(pa, p, 0);
        let _ = pa.free_pages(p, 0);
    }
    match pa.alloc_pages(GFP_KERNEL | Gfp::ZERO, 0) {
        Ok(p) => {
            let q = pa.page_address(p).as_ptr::<u64>();
            // SAFETY: a page just allocated, mapped by the direct map.
            let nonzero = (0..PAGE_SIZE / 8)
                .filter(|&i| unsafe { q.add(i).read_volatile() } != 0)
                .count();
            if check!(
                s,
                nonzero == 0,
                "__GFP_ZERO page has {nonzero} nonzero words"
            ) {
                log!(s, "__GFP_ZERO: pfn {:#x} reads back all zero", p.0);
            }
            let _ = pa.free_pages(p, 0);
        }
        Err(e) => s.fail(format_args!("__GFP_ZERO: {e}")),
    }

    // A double free is refused and changes nothing.
    if let Ok(p) = pa.alloc_pages(GFP_KERNEL, 1) {
        let first = pa.free_pages(p, 1);
        let second = pa.free_pages(p, 1);
        if check!(
            s,
            first.is_ok() && second.is_err(),
            "double free: first {first:?}, second {second:?}"
        ) {
            log!(
                s,
                "double free of pfn {:#x} refused: {}",
                p.0,
                second.unwrap_err()
            );
        }
    } else {
        s.fail(format_args!("double free: no order-1 block to test with"));
    }

    // Exhaustion: 4 MiB blocks until none is left, then all back.
    let mut n = 0;
    let mut last_err: Option<AllocError> = None;
    while n < HOLD {
        match pa.alloc_pages(GFP_KERNEL | Gfp::NOWARN | Gfp::NORETRY, 10) {
            Ok(p) => {
                held[n] = p;
                n += 1;
            }
            Err(e) => {
                last_err = Some(e);
                break;
            }
        }
    }
    match last_err {
        Some(AllocError::NoMemory(m)) => log!(
            s,
            "exhaustion: {} blocks of 4 MiB ({} MiB) taken, then: {}",
            n,
            n * 4,
            AllocError::NoMemory(m)
        ),
        other => s.fail(format_args!(
            "exhaustion ended with {other:?} after {n} blocks"
        )),
    }
    for &p in &held[..n] {
        let _ = pa.free_pages(p, 10);
    }

    // Everything back, and the lists consistent.
    pa.drain_all_pages();
    match pa.verify() {
        Ok(r) => log!(
            s,
            "verify: {} free blocks, {} free pages, {} on per-CPU lists: consistent",
            r.free_blocks,
            r.free_pages,
            r.pcp_pages
        ),
        Err(e) => s.fail(format_args!("verify: {e}")),
    }
    let now = pa.nr_free_pages();
    if check!(
        s,
        now == baseline,
        "free pages {now} after the section, {baseline} before"
    ) {
        log!(s, "free pages back to {baseline}: nothing leaked");
    }
    s
}
