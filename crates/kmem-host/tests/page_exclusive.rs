//! The per-CPU page lists under claimed CPUs: two owners (plain-store lock)
//! allocating and freeing blocks of orders 0..=3, each freeing half of its
//! blocks on the other CPU, while a third thread drains every CPU's lists and
//! reads their counts (the compare-and-swap plus membarrier path) and a
//! fourth runs as CPU 0 without owning it (the zone-locked path). Every page
//! is tagged through the direct map and checked before it is freed; a global
//! map of live blocks catches any block handed out twice. At the end every
//! counter is back at its baseline and the allocator's own walk is clean.

mod page_common;

use kmem::addr::Pfn;
use kmem::gfp::GFP_KERNEL;
use kmem_host::{claim_cpu, run_on_cpu, Machine};
use page_common::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{mpsc, Mutex};

/// Tags every page of a block with `tag` (first word of each page).
fn tag(m: &Machine, pfn: Pfn, order: u32, tag: u64) {
    for i in 0..1u64 << order {
        let p = m.pages().page_address(Pfn(pfn.0 + i)).0 as *mut u64;
        // SAFETY: a page of a block we own, through the direct map.
        unsafe { p.write(tag) };
    }
}

/// Checks every page of a block still holds `tag`.
fn check(m: &Machine, pfn: Pfn, order: u32, tag: u64) {
    for i in 0..1u64 << order {
        let p = m.pages().page_address(Pfn(pfn.0 + i)).0 as *const u64;
        // SAFETY: as in `tag`.
        let v = unsafe { p.read() };
        assert_eq!(
            v,
            tag,
            "page {:#x} of block {:#x} overwritten",
            pfn.0 + i,
            pfn.0
        );
    }
}

/// Live blocks by first pfn: (order, owner tag).
type Live = Mutex<BTreeMap<u64, u32>>;

fn claim_live(live: &Live, pfn: Pfn, order: u32) {
    let mut l = live.lock().unwrap();
    let end = pfn.0 + (1 << order);
    if let Some((&start, &o)) = l.range(..end).next_back() {
        assert!(
            start + (1 << o) <= pfn.0,
            "block {:#x} order {order} overlaps live block {start:#x} order {o}",
            pfn.0
        );
    }
    l.insert(pfn.0, order);
}

fn release_live(live: &Live, pfn: Pfn) {
    live.lock()
        .unwrap()
        .remove(&pfn.0)
        .expect("freed block was live");
}

/// Remote drains the owners wait for before they stop.
const MIN_DRAINS: usize = 20;

/// Blocks that may wait in one owner's channel to the other: bounded, so
/// that an owner running far ahead of a descheduled peer (a loaded machine)
/// keeps what does not fit instead of exhausting the 64 MiB machine.
const IN_FLIGHT: usize = 256;

/// Counts a worker as finished when it ends, panicking or not: the drain
/// thread waits for all of them, so a worker's panic must fail the test, not
/// hang it.
struct Finished<'a>(&'a AtomicUsize);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Relaxed);
    }
}

fn run(claimed: bool) {
    let m = small_machine();
    let base = Baseline::take(&m);
    let live: Live = Mutex::new(BTreeMap::new());
    // Workers (two owners and the sharer) that have finished.
    let finished = AtomicUsize::new(0);
    // Remote drains done so far: the owners keep working until there have
    // been MIN_DRAINS, so the drains overlap them however the threads are
    // scheduled.
    let drains_done = AtomicUsize::new(0);
    let (to1, from0) = mpsc::sync_channel::<(Pfn, u32, u64)>(IN_FLIGHT);
    let (to0, from1) = mpsc::sync_channel::<(Pfn, u32, u64)>(IN_FLIGHT);
    let channels = Mutex::new(vec![(to1, from1), (to0, from0)]);
    std::thread::scope(|s| {
        for cpu in 0..2usize {
            let (m, live, channels, finished, drains_done) =
                (&m, &live, &channels, &finished, &drains_done);
            s.spawn(move || {
                let _finished = Finished(finished);
                let (to_other, from_other) = channels.lock().unwrap().remove(0);
                let _claim = if claimed {
                    Some(claim_cpu(cpu).expect("claim"))
                } else {
                    kmem_host::set_cpu(cpu);
                    None
                };
                let mut rng = SeqRng::new(cpu as u64 + 1);
                let mut mine: Vec<(Pfn, u32, u64)> = Vec::new();
                for round in 0u64.. {
                    if round >= 20_000 && drains_done.load(Relaxed) >= MIN_DRAINS {
                        break;
                    }
                    let order = rng.below(4) as u32;
                    let pfn = m.pages().alloc_pages(GFP_KERNEL, order).unwrap();
                    claim_live(live, pfn, order);
                    let t = (cpu as u64) << 40 | round;
                    tag(m, pfn, order, t);
                    if rng.chance(50) {
                        mine.push((pfn, order, t));
                    } else if let Err(mpsc::TrySendError::Full(b)) =
                        to_other.try_send((pfn, order, t))
                    {
                        // The other owner is behind: this one frees it.
                        mine.push(b);
                    }
                    if mine.len() > 64 {
                        let (p, o, t) = mine.swap_remove(rng.below(mine.len() as u64) as usize);
                        check(m, p, o, t);
                        release_live(live, p);
                        m.pages().free_pages(p, o).unwrap();
                    }
                    while let Ok((p, o, t)) = from_other.try_recv() {
                        check(m, p, o, t);
                        release_live(live, p);
                        m.pages().free_pages(p, o).unwrap();
                    }
                }
                drop(to_other);
                for (p, o, t) in mine {
                    check(m, p, o, t);
                    release_live(live, p);
                    m.pages().free_pages(p, o).unwrap();
                }
                // The other thread's last blocks.
                for (p, o, t) in from_other.iter() {
                    check(m, p, o, t);
                    release_live(live, p);
                    m.pages().free_pages(p, o).unwrap();
                }
            });
        }
        // Remote drains and counts, from a thread that owns no CPU.
        s.spawn(|| {
            let mut drains = 0u64;
            while finished.load(Relaxed) < 3 {
                m.pages().drain_all_pages();
                let _ = m.pages().pcp_pages();
                drains += 1;
                drains_done.store(drains as usize, Relaxed);
                std::thread::yield_now();
            }
            assert!(
                drains > 10,
                "only {drains} drains ran alongside the workers"
            );
        });
        // A thread that shares CPU 0's number.
        s.spawn(|| {
            let _finished = Finished(&finished);
            run_on_cpu(0, || {
                let mut rng = SeqRng::new(99);
                for round in 0..10_000u64 {
                    let order = rng.below(2) as u32;
                    let pfn = m.pages().alloc_pages(GFP_KERNEL, order).unwrap();
                    claim_live(&live, pfn, order);
                    tag(&m, pfn, order, 7 << 40 | round);
                    check(&m, pfn, order, 7 << 40 | round);
                    release_live(&live, pfn);
                    m.pages().free_pages(pfn, order).unwrap();
                }
            });
        });
    });
    assert!(live.lock().unwrap().is_empty());
    assert!(m.platform().take_log().is_empty());
    base.assert_restored(&m);
}

#[test]
fn owners_with_remote_drains_and_a_sharer() {
    for _ in 0..3 {
        run(true);
    }
}

#[test]
fn unclaimed_control() {
    run(false);
}
