//! Stress: more threads than CPUs allocating and freeing at once, half of
//! each thread's blocks freed by another thread (on the other CPU), every
//! page tagged through the direct map and checked before it is freed, and a
//! global map of live blocks that catches any overlap the moment it is
//! handed out. At the end everything is freed and drained, and every
//! counter is back at its baseline.

mod page_common;

use kmem::addr::{Pfn, PAGE_SIZE};
use kmem::error::AllocError;
use kmem::gfp::{Gfp, GFP_ATOMIC, GFP_HIGHUSER_MOVABLE, GFP_KERNEL, GFP_NOWAIT};
use kmem_host::Machine;
use page_common::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};

const THREADS: usize = 4;
const CPUS: usize = 2;

/// One stress run's shape.
#[derive(Clone, Copy)]
struct Cfg {
    /// Operations per thread.
    ops: usize,
    /// Pages each thread may own (live or in flight to another thread).
    max_live: u64,
    /// Memory runs out: every mask may fail (and blocking ones reclaim
    /// and drain every CPU's lists while the others allocate).
    pressure: bool,
}

/// 4 threads x 1024 pages: a quarter of the RAM, so nothing may fail but
/// costly orders.
const CALM: Cfg = Cfg {
    ops: 100_000,
    max_live: 1024,
    pressure: false,
};

/// Each thread alone may take every page of the machine (threads do not
/// always overlap in time on a 2-core host).
const PRESSURE: Cfg = Cfg {
    ops: 40_000,
    max_live: 16_384,
    pressure: true,
};

#[derive(Clone, Copy, Debug)]
struct Blk {
    pfn: u64,
    order: u32,
    seed: u64,
    /// The thread that allocated it.
    owner: usize,
}

fn tag(seed: u64, pfn: u64) -> u64 {
    (seed << 32) ^ pfn ^ 0xC0FF_EE00_0000_0000
}

fn ptr(m: &Machine, pfn: u64) -> *mut u64 {
    m.pages().page_address(Pfn(pfn)).as_ptr::<u64>()
}

fn write_tags(m: &Machine, b: &Blk) {
    for p in b.pfn..b.pfn + (1 << b.order) {
        // SAFETY: the block is ours until freed.
        unsafe {
            ptr(m, p).write(tag(b.seed, p));
            ptr(m, p).add(PAGE_SIZE / 8 - 1).write(!tag(b.seed, p));
        }
    }
}

fn check_tags(m: &Machine, b: &Blk) {
    for p in b.pfn..b.pfn + (1 << b.order) {
        // SAFETY: as above.
        let (a, z) = unsafe { (ptr(m, p).read(), ptr(m, p).add(PAGE_SIZE / 8 - 1).read()) };
        assert!(
            a == tag(b.seed, p) && z == !tag(b.seed, p),
            "{b:?}: page {p:#x} overwritten"
        );
    }
}

/// Live blocks of every thread: an overlap is caught at insertion.
#[derive(Default)]
struct Live(Mutex<BTreeMap<u64, u64>>);

impl Live {
    fn insert(&self, b: &Blk) {
        let end = b.pfn + (1 << b.order);
        let mut map = self.0.lock().unwrap();
        if let Some((&s, &e)) = map.range(..=b.pfn).next_back() {
            assert!(e <= b.pfn, "{b:?} overlaps live [{s:#x}, {e:#x})");
        }
        if let Some((&s, _)) = map.range(b.pfn..end).next() {
            panic!("{b:?} overlaps live block at {s:#x}");
        }
        map.insert(b.pfn, end);
    }
    fn remove(&self, b: &Blk) {
        let end = self.0.lock().unwrap().remove(&b.pfn);
        assert_eq!(end, Some(b.pfn + (1 << b.order)), "{b:?} was live");
    }
}

#[derive(Default)]
struct Stats {
    allocs: AtomicU64,
    remote_frees: AtomicU64,
    local_frees: AtomicU64,
    failures: AtomicU64,
    verifies: AtomicU64,
    /// Pages allocated by each thread and not yet freed by anyone (blocks
    /// in flight to another thread included), to bound the memory in use.
    owned: [AtomicU64; THREADS],
}

fn free(m: &Machine, live: &Live, stats: &Stats, b: Blk) {
    check_tags(m, &b);
    live.remove(&b);
    m.pages()
        .free_pages(Pfn(b.pfn), b.order)
        .unwrap_or_else(|e| panic!("{b:?}: {e}"));
    stats.owned[b.owner].fetch_sub(1 << b.order, Relaxed);
}

/// One allocation with a random mask, in the context that mask belongs to;
/// checked, tagged and recorded.
#[allow(clippy::too_many_arguments)]
fn alloc(
    cfg: Cfg,
    id: usize,
    m: &Machine,
    live: &Live,
    stats: &Stats,
    rng: &mut SeqRng,
    order: u32,
    seq: &mut u64,
) -> Option<Blk> {
    let (mut gfp, ctx) = match rng.below(5) {
        0 => (GFP_ATOMIC, Some(kmem_host::irq as fn() -> _)),
        1 => (GFP_NOWAIT, Some(kmem_host::softirq as fn() -> _)),
        2 => (GFP_HIGHUSER_MOVABLE, None),
        3 => (GFP_KERNEL | Gfp::ZERO, None),
        _ => (GFP_KERNEL, None),
    };
    if cfg.pressure {
        gfp |= Gfp::NOWARN
            | if gfp.allows_blocking() {
                Gfp::NORETRY
            } else {
                Gfp::empty()
            };
    }
    let r = {
        let _g = ctx.map(|enter| enter());
        m.pages().alloc_pages(gfp, order)
    };
    let pfn = match r {
        Ok(p) => p.0,
        // A quarter of the memory is in use at most: only a costly order
        // may fail (fragmentation).
        Err(AllocError::NoMemory(n)) if order > 3 || cfg.pressure => {
            assert_eq!(n.order, order);
            stats.failures.fetch_add(1, Relaxed);
            return None;
        }
        Err(e) => panic!("thread {id}: {gfp} order {order}: {e}"),
    };
    assert_eq!(pfn % (1 << order), 0);
    *seq += 1;
    let b = Blk {
        pfn,
        order,
        seed: (id as u64) << 24 | *seq,
        owner: id,
    };
    live.insert(&b);
    if gfp.contains(Gfp::ZERO) {
        // SAFETY: the block is ours.
        let s = unsafe {
            std::slice::from_raw_parts(ptr(m, pfn) as *const u64, (PAGE_SIZE << order) / 8)
        };
        assert!(s.iter().all(|&w| w == 0), "{b:?} not zeroed");
    }
    write_tags(m, &b);
    stats.allocs.fetch_add(1, Relaxed);
    stats.owned[id].fetch_add(1 << order, Relaxed);
    Some(b)
}

#[allow(clippy::too_many_arguments)]
fn worker(
    cfg: Cfg,
    id: usize,
    m: &Machine,
    live: &Live,
    stats: &Stats,
    to_next: mpsc::Sender<Blk>,
    from_prev: mpsc::Receiver<Blk>,
    start: &Barrier,
) {
    kmem_host::set_cpu(id % CPUS);
    let mut rng = SeqRng::new(id as u64 * 7919 + 1);
    let mut mine: Vec<Blk> = Vec::new();
    let mut seq = 0u64;
    start.wait();
    // Count only operations done: a thread whose budget is all in flight to
    // a slower thread waits for it instead of spinning through its quota.
    let mut i = 0;
    while i < cfg.ops {
        if rng.chance(if cfg.pressure { 65 } else { 55 }) || mine.is_empty() {
            let order = if rng.chance(90) {
                rng.below(4) as u32
            } else {
                rng.below(7) as u32
            };
            if stats.owned[id].load(Relaxed) + (1 << order) <= cfg.max_live {
                if let Some(b) = alloc(cfg, id, m, live, stats, &mut rng, order, &mut seq) {
                    mine.push(b);
                }
                i += 1;
            } else if mine.is_empty() {
                std::thread::yield_now();
            }
        } else {
            i += 1;
            let b = mine.swap_remove(rng.below(mine.len() as u64) as usize);
            if rng.chance(50) {
                // Freed by the next thread, on the other CPU.
                to_next.send(b).unwrap();
            } else {
                free(m, live, stats, b);
                stats.local_frees.fetch_add(1, Relaxed);
            }
        }
        while let Ok(b) = from_prev.try_recv() {
            free(m, live, stats, b);
            stats.remote_frees.fetch_add(1, Relaxed);
        }
        if id == 0 && i % 4000 == 1 {
            // Remote drains and a full consistency walk while others run.
            m.pages().drain_all_pages();
            if let Err(e) = m.pages().verify() {
                panic!("verify under load: {e}");
            }
            stats.verifies.fetch_add(1, Relaxed);
        }
    }
    for b in mine {
        free(m, live, stats, b);
        stats.local_frees.fetch_add(1, Relaxed);
    }
    drop(to_next);
    for b in from_prev {
        free(m, live, stats, b);
        stats.remote_frees.fetch_add(1, Relaxed);
    }
}

#[test]
fn four_threads_on_two_cpus_with_cross_thread_frees() {
    let stats = stress(CALM);
    assert_eq!(stats.failures.load(Relaxed), 0);
}

#[test]
fn four_threads_under_memory_pressure() {
    let stats = stress(PRESSURE);
    assert!(stats.failures.load(Relaxed) > 0, "memory ran out");
}

fn stress(cfg: Cfg) -> Arc<Stats> {
    let m = Arc::new(small_machine());
    let base = Baseline::take(&m);
    let live = Arc::new(Live::default());
    let stats = Arc::new(Stats::default());
    let start = Arc::new(Barrier::new(THREADS));
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..THREADS).map(|_| mpsc::channel::<Blk>()).unzip();
    let mut rxs: Vec<Option<_>> = rxs.into_iter().map(Some).collect();
    let handles: Vec<_> = (0..THREADS)
        .map(|id| {
            let to_next = txs[(id + 1) % THREADS].clone();
            let from_prev = rxs[id].take().unwrap();
            let (m, live, stats, start) = (m.clone(), live.clone(), stats.clone(), start.clone());
            std::thread::spawn(move || {
                worker(cfg, id, &m, &live, &stats, to_next, from_prev, &start)
            })
        })
        .collect();
    drop(txs);
    for h in handles {
        h.join().unwrap();
    }
    assert!(live.0.lock().unwrap().is_empty());
    let allocs = stats.allocs.load(Relaxed);
    let remote = stats.remote_frees.load(Relaxed);
    assert_eq!(
        allocs,
        remote + stats.local_frees.load(Relaxed),
        "every block freed once"
    );
    assert!(
        remote > allocs / 5,
        "many blocks freed by another thread: {remote} of {allocs}"
    );
    assert!(stats.verifies.load(Relaxed) > 0);
    let v = m.pages().vmstat();
    assert!(
        v.alloc_pcp > 0 && v.free_pcp > 0,
        "the per-CPU fast paths were used"
    );
    if cfg.pressure {
        assert!(
            v.direct_reclaim > 0 && v.drain_all > 0 && v.alloc_reserve > 0,
            "{v:?}"
        );
    }
    base.assert_restored(&m);
    stats
}

/// The same with more threads per CPU and only order-0 pages: the per-CPU
/// list of one CPU is fought over by four threads.
#[test]
fn eight_threads_on_two_cpus_order0_pingpong() {
    let m = Arc::new(small_machine());
    let base = Baseline::take(&m);
    let start = Arc::new(Barrier::new(8));
    let (tx, rx) = mpsc::channel::<Pfn>();
    let rx = Arc::new(Mutex::new(rx));
    let handles: Vec<_> = (0..8)
        .map(|id| {
            let (m, start, tx, rx) = (m.clone(), start.clone(), tx.clone(), rx.clone());
            std::thread::spawn(move || {
                kmem_host::set_cpu(id % CPUS);
                start.wait();
                for i in 0..20_064u64 {
                    let p = m.pages().alloc_pages(GFP_KERNEL, 0).unwrap();
                    // SAFETY: ours until sent.
                    unsafe { ptr(&m, p.0).write(p.0 ^ 0xABCD) };
                    tx.send(p).unwrap();
                    // Keep 64 pages per thread in flight; free one that
                    // any thread (on either CPU) allocated.
                    if i >= 64 {
                        let q = rx.lock().unwrap().recv().unwrap();
                        // SAFETY: received, so ours.
                        assert_eq!(unsafe { ptr(&m, q.0).read() }, q.0 ^ 0xABCD);
                        m.pages().free_pages(q, 0).unwrap();
                    }
                }
            })
        })
        .collect();
    drop(tx);
    for h in handles {
        h.join().unwrap();
    }
    let rest: Vec<Pfn> = rx.lock().unwrap().iter().collect();
    assert_eq!(rest.len(), 8 * 64);
    let mut sorted = rest.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), rest.len(), "no page handed out twice");
    for q in rest {
        // SAFETY: the channel held the only reference.
        assert_eq!(unsafe { ptr(&m, q.0).read() }, q.0 ^ 0xABCD);
        m.pages().free_pages(q, 0).unwrap();
    }
    base.assert_restored(&m);
}

/// A pageblock shared by two nodes' zones (16-17 MiB node 0, 17-18 MiB
/// node 1): the zone owning its first frame may claim it for another
/// migrate type (a fallback census, then a move of its free blocks, under
/// its own lock only) while the other zone frees and allocates its part.
/// The census refused only frames of the other zone it saw as free or
/// allocated; a block of that zone being freed or handed out reads as a
/// tail for a moment, and then the move shuffled the other zone's free
/// block between this zone's lists: `verify` found the free lists corrupt
/// within a second, every run.
#[test]
fn a_pageblock_shared_with_another_zone_is_never_claimed() {
    use kmem::gfp::GFP_DMA32;
    use kmem::page::Region;
    use std::sync::atomic::{AtomicBool, Ordering};
    const MIB: u64 = 1 << 20;
    let m = Machine::new(kmem_host::MachineConfig {
        regions: Some(vec![
            Region::reserved(0, 16 * MIB),
            Region::usable(16 * MIB, 17 * MIB),
            Region::usable(17 * MIB, 18 * MIB).on_node(1),
            Region::usable(18 * MIB, 18 * MIB + 65536),
            // Room for the frame records.
            Region::usable(64 * MIB, 68 * MIB).on_node(2),
        ]),
        nr_cpus: 2,
        ..Default::default()
    })
    .unwrap();
    let pa = m.pages();
    // Each thread on its own node only.
    let mask = GFP_KERNEL | GFP_DMA32 | Gfp::THISNODE | Gfp::MEMALLOC | Gfp::NOWARN;
    // The movable pages at 18 MiB pinned: node 0's movable requests then
    // fall back to the shared pageblock.
    let pin = pa.alloc_pages_node(0, mask | Gfp::MOVABLE, 4).unwrap();
    let stop = AtomicBool::new(false);
    let result = std::thread::scope(|s| {
        let a = s.spawn(|| {
            kmem_host::set_cpu(0);
            let t0 = std::time::Instant::now();
            let mut round = 0u64;
            let mut failure = None;
            while t0.elapsed().as_millis() < 2000 {
                if let Ok(p) = pa.alloc_pages_node(0, mask, 0) {
                    pa.free_pages(p, 0).unwrap();
                }
                pa.drain_local_pages();
                if let Ok(p) = pa.alloc_pages_node(0, mask | Gfp::MOVABLE, 4) {
                    pa.free_pages(p, 4).unwrap();
                }
                round += 1;
                if round.is_multiple_of(1024) {
                    if let Err(e) = pa.verify() {
                        failure = Some(format!("after {round} rounds: {e}"));
                        break;
                    }
                }
            }
            stop.store(true, Ordering::Relaxed);
            failure
        });
        s.spawn(|| {
            kmem_host::set_cpu(1);
            while !stop.load(Ordering::Relaxed) {
                if let Ok(p) = pa.alloc_pages_node(1, mask, 8) {
                    pa.free_pages(p, 8).unwrap();
                }
            }
        });
        a.join().unwrap()
    });
    assert_eq!(result, None);
    pa.free_pages(pin, 4).unwrap();
    pa.drain_all_pages();
    pa.verify().unwrap();
}
