//! The barn: per node, whole sheaves traded between CPUs (a full sheaf
//! for an empty one when a free fills a sheaf, an empty one for a full one
//! when an allocation finds the sheaf empty).
//!
//! These tests check the trades happen where a producer allocates and a
//! consumer frees (and save the object-by-object refills and flushes the
//! same sequence costs without a barn), that the barn holds no more than
//! its bound and conserves sheaf blocks, that objects sitting in it are
//! free (a second free is refused, destroy does not count them as leaks),
//! that every page comes back, and, with a shadow model over random
//! producer/consumer sequences and with two threads at once, that no object
//! is handed out twice and no content is disturbed.

mod proptest_cases;
mod slab_common;

use kmem::gfp::GFP_KERNEL;
use kmem::slab::{
    KmemCacheRef, SlabAllocator, SlabConfig, SlabFlags, SlabFreeError, Stat, SHEAF_SLOTS,
};
use kmem_host::{run_on_cpu, HostPlatform};
use proptest::prelude::*;
use proptest::test_runner::Config;
use slab_common::{machine_of, sheaf_blocks};
use std::collections::{BTreeMap, HashSet};
use std::ptr::NonNull;
use std::sync::mpsc;

fn fill(p: usize, size: usize, tag: u8) {
    for i in 0..size {
        unsafe { ((p + i) as *mut u8).write(tag ^ i as u8) };
    }
}

fn check(p: usize, size: usize, tag: u8) {
    for i in 0..size {
        let b = unsafe { ((p + i) as *const u8).read() };
        assert_eq!(
            b,
            tag ^ i as u8,
            "object {p:#x} byte {i} changed while allocated"
        );
    }
}

fn alloc_n(c: &KmemCacheRef<'_, HostPlatform>, cpu: usize, n: usize) -> Vec<usize> {
    run_on_cpu(cpu, || {
        (0..n)
            .map(|_| c.alloc(GFP_KERNEL).unwrap().as_ptr() as usize)
            .collect()
    })
}

fn free_all(c: &KmemCacheRef<'_, HostPlatform>, cpu: usize, v: &[usize]) {
    run_on_cpu(cpu, || {
        for &p in v {
            c.free(NonNull::new(p as *mut u8).unwrap()).unwrap();
        }
    })
}

/// Rounds of a producer (CPU 0 allocates) and a consumer (CPU 1 frees),
/// with contents checked and every live object distinct. Returns the
/// refills and flushes (object-by-object work) and the barn trades.
fn producer_consumer(cfg: SlabConfig, rounds: usize, per_round: usize) -> [u64; 4] {
    let m = machine_of(256 << 20);
    let s = SlabAllocator::new(m.pages(), cfg).unwrap();
    s.shrink_all();
    let baseline = m.pages().nr_free_pages_with_pcp();
    let c = s
        .kmem_cache_create("barn64", 64, 0, SlabFlags::NO_MERGE, None)
        .unwrap();
    let mut ever_live = 0;
    for r in 0..rounds {
        let v = alloc_n(&c, 0, per_round);
        let distinct: HashSet<_> = v.iter().collect();
        assert_eq!(
            distinct.len(),
            v.len(),
            "round {r}: an object handed out twice"
        );
        for (i, &p) in v.iter().enumerate() {
            fill(p, 64, (r * 31 + i) as u8);
        }
        for (i, &p) in v.iter().enumerate() {
            check(p, 64, (r * 31 + i) as u8);
        }
        free_all(&c, 1, &v);
        ever_live += v.len() as u64;
    }
    assert_eq!(
        c.stat(Stat::AllocFastpath) + c.stat(Stat::AllocSlowpath),
        ever_live,
        "every allocation counted once"
    );
    assert_eq!(c.errors(), 0);
    let out = [
        c.stat(Stat::SheafRefill),
        c.stat(Stat::SheafFlush),
        c.stat(Stat::BarnGet),
        c.stat(Stat::BarnPut),
    ];
    c.shrink();
    assert_eq!(c.nr_slabs(), 0, "every slab back after shrink");
    assert_eq!(sheaf_blocks(&m), 0, "every sheaf block back after shrink");
    c.destroy().unwrap();
    assert_eq!(m.pages().nr_free_pages_with_pcp(), baseline);
    out
}

/// A producer and a consumer on two CPUs trade whole sheaves: the consumer
/// puts its full sheaves into the barn, the producer takes them, and the
/// object-by-object refills and flushes the same sequence needs without a
/// barn mostly disappear.
#[test]
fn producer_and_consumer_trade_whole_sheaves() {
    let n = 4 * SHEAF_SLOTS + 100;
    let [refill, flush, get, put] = producer_consumer(SlabConfig::default(), 6, n);
    let [refill0, flush0, get0, put0] = producer_consumer(
        SlabConfig {
            barn_sheaves: 0,
            ..Default::default()
        },
        6,
        n,
    );
    assert_eq!((get0, put0), (0, 0), "barn_sheaves 0: no barn");
    assert!(put >= 6 * 4 - 1 && get >= 5 * 4, "{put} puts, {get} gets");
    assert!(
        (refill + flush) * 4 < refill0 + flush0,
        "with the barn {refill} refills and {flush} flushes, without {refill0} and {flush0}"
    );
}

/// The barn takes at most `barn_sheaves` full sheaves (fewer if they would
/// hold more than `sheaf_bytes`); beyond that a full sheaf flushes half as
/// before. Trading conserves sheaf blocks: taking full sheaves out leaves
/// the takers' empty blocks behind, no block is made or lost.
#[test]
fn the_barn_is_bounded_and_trades_conserve_blocks() {
    let m = machine_of(256 << 20);
    for (size, cfg, barn_max) in [
        (64, SlabConfig::default(), 10u64),
        (
            64,
            SlabConfig {
                barn_sheaves: 3,
                ..Default::default()
            },
            3,
        ),
        // 1024 objects of 4 KiB are all of sheaf_bytes: one sheaf.
        (4096, SlabConfig::default(), 1),
    ] {
        let s = SlabAllocator::new(m.pages(), cfg).unwrap();
        let c = s
            .kmem_cache_create("bounded", size, 0, SlabFlags::NO_MERGE, None)
            .unwrap();
        let cap = SHEAF_SLOTS;
        let total = (barn_max as usize + 2) * cap + 1;
        let v = alloc_n(&c, 0, total);
        let before = sheaf_blocks(&m);
        free_all(&c, 1, &v);
        assert_eq!(c.stat(Stat::BarnPut), barn_max, "size {size}: puts");
        assert!(
            c.stat(Stat::BarnPutFail) >= 1,
            "size {size}: the barn refused"
        );
        assert!(c.stat(Stat::SheafFlush) >= 1, "size {size}: then flushed");
        // CPU 1's sheaf block is new; each put took a new empty block.
        assert_eq!(
            sheaf_blocks(&m),
            before + 1 + barn_max as usize,
            "size {size}"
        );
        let gets_before = c.stat(Stat::BarnGet);
        let w = alloc_n(&c, 0, barn_max as usize * cap);
        assert_eq!(
            c.stat(Stat::BarnGet) - gets_before,
            barn_max,
            "size {size}: gets"
        );
        assert_eq!(
            sheaf_blocks(&m),
            before + 1 + barn_max as usize,
            "size {size}: trading makes and loses no block"
        );
        free_all(&c, 0, &w);
        c.shrink();
        assert_eq!(sheaf_blocks(&m), 0, "size {size}: shrink empties the barn");
        assert_eq!(c.nr_slabs(), 0);
        c.destroy().unwrap();
    }
}

/// Objects in a full sheaf in the barn are free: freeing one again is
/// refused with a double-free report (and nothing is handed out twice
/// afterwards), and destroying the cache with them there is no leak and
/// gives every page back.
#[test]
fn objects_in_the_barn_are_free() {
    let m = machine_of(64 << 20);
    let s = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
    s.shrink_all();
    let baseline = m.pages().nr_free_pages_with_pcp();
    let c = s
        .kmem_cache_create("barnfree", 64, 0, SlabFlags::NO_MERGE, None)
        .unwrap();
    let cap = SHEAF_SLOTS;
    let v = alloc_n(&c, 0, cap + 1);
    // The first cap fill CPU 1's sheaf; the last free trades it.
    free_all(&c, 1, &v);
    assert_eq!(c.stat(Stat::BarnPut), 1);
    for (cpu, &p) in [(0, &v[0]), (1, &v[cap / 2]), (1, &v[cap - 1])] {
        let r = run_on_cpu(cpu, || c.free(NonNull::new(p as *mut u8).unwrap()));
        assert!(
            matches!(r, Err(SlabFreeError::DoubleFree { addr, .. }) if addr == p),
            "{p:#x} in the barn freed again: {r:?}"
        );
    }
    assert_eq!(c.errors(), 3);
    assert!(
        m.platform().log_contains("double free"),
        "{:?}",
        m.platform().take_log()
    );
    // Everything comes out once: CPU 0 takes the barn's sheaf.
    let w = alloc_n(&c, 0, cap + 1);
    assert_eq!(
        w.iter().collect::<HashSet<_>>().len(),
        w.len(),
        "handed out twice"
    );
    assert_eq!(c.stat(Stat::BarnGet), 1);
    free_all(&c, 1, &w);
    c.destroy()
        .expect("objects in the barn are free, not leaked");
    s.shrink_all();
    assert_eq!(m.pages().nr_free_pages_with_pcp(), baseline);
}

/// Two threads at once, a producer on CPU 0 and a consumer on CPU 1, with a
/// channel between them: every object arrives with its contents, none is
/// handed out while another thread holds it, the barn trades, and
/// validation finds the cache consistent afterwards.
#[test]
fn concurrent_producer_and_consumer() {
    let m = machine_of(256 << 20);
    let s = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
    let c = s
        .kmem_cache_create("barnmt", 48, 0, SlabFlags::NO_MERGE, None)
        .unwrap();
    let live = std::sync::Mutex::new(HashSet::new());
    let (tx, rx) = mpsc::sync_channel::<Vec<usize>>(64);
    std::thread::scope(|sc| {
        sc.spawn(|| {
            run_on_cpu(0, || {
                for round in 0..200usize {
                    let v: Vec<usize> = (0..100)
                        .map(|i| {
                            let p = c.alloc(GFP_KERNEL).unwrap().as_ptr() as usize;
                            assert!(live.lock().unwrap().insert(p), "{p:#x} handed out twice");
                            fill(p, 48, (round + i) as u8);
                            p
                        })
                        .collect();
                    tx.send(v).unwrap();
                }
                drop(tx);
            })
        });
        sc.spawn(|| {
            run_on_cpu(1, || {
                for (round, v) in rx.into_iter().enumerate() {
                    for (i, &p) in v.iter().enumerate() {
                        check(p, 48, (round + i) as u8);
                        assert!(live.lock().unwrap().remove(&p));
                        c.free(NonNull::new(p as *mut u8).unwrap()).unwrap();
                    }
                }
            })
        });
    });
    assert!(c.stat(Stat::BarnPut) > 0 && c.stat(Stat::BarnGet) > 0);
    assert_eq!(c.errors(), 0);
    let r = c.validate();
    assert_eq!(r.errors, 0, "{r:?}");
    assert_eq!(c.active_objects(), 0);
    c.shrink();
    assert_eq!(sheaf_blocks(&m), 0);
    c.destroy().unwrap();
}

// ---- shadow model ----

#[derive(Clone, Debug)]
enum Op {
    /// Allocate `n` on `cpu`.
    Alloc {
        n: usize,
        cpu: usize,
    },
    /// Free the `n` oldest live objects on `cpu`.
    Free {
        n: usize,
        cpu: usize,
    },
    /// Free one object again (refused).
    DoubleFree {
        pick: usize,
        cpu: usize,
    },
    Shrink,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1usize..300, 0usize..2).prop_map(|(n, cpu)| Op::Alloc { n, cpu }),
        4 => (1usize..300, 0usize..2).prop_map(|(n, cpu)| Op::Free { n, cpu }),
        1 => (any::<usize>(), 0usize..2).prop_map(|(pick, cpu)| Op::DoubleFree { pick, cpu }),
        1 => Just(Op::Shrink),
    ]
}

/// Small sheaves (64 objects) and a barn of one or two: random batches of
/// allocations and frees on either CPU against a model of the live
/// objects. Nothing overlaps a live object, contents survive, double frees
/// of objects anywhere (sheaves, barn, slabs) are refused, and every page
/// comes back.
fn run_model(ops: Vec<Op>, barn_sheaves: u32) -> (u64, u64) {
    let m = machine_of(64 << 20);
    let s = SlabAllocator::new(
        m.pages(),
        SlabConfig {
            sheaf_bytes: 64 * 64,
            barn_sheaves,
            ..Default::default()
        },
    )
    .unwrap();
    s.shrink_all();
    let baseline = m.pages().nr_free_pages_with_pcp();
    let c = s
        .kmem_cache_create("barnmodel", 64, 0, SlabFlags::NO_MERGE, None)
        .unwrap();
    let mut live: BTreeMap<usize, u8> = BTreeMap::new();
    let mut order: Vec<usize> = Vec::new();
    let mut freed: Vec<usize> = Vec::new();
    let mut tag = 0u8;
    let mut errors = 0;
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Alloc { n, cpu } => {
                for p in alloc_n(&c, cpu, n) {
                    assert!(
                        !live.contains_key(&p),
                        "step {step}: {p:#x} handed out twice"
                    );
                    if let Some((&q, _)) = live.range(..p).next_back() {
                        assert!(q + 64 <= p, "step {step}: {p:#x} overlaps {q:#x}");
                    }
                    tag = tag.wrapping_add(1);
                    fill(p, 64, tag);
                    live.insert(p, tag);
                    order.push(p);
                }
            }
            Op::Free { n, cpu } => {
                let n = n.min(order.len());
                let v: Vec<usize> = order.drain(..n).collect();
                for &p in &v {
                    check(p, 64, live.remove(&p).unwrap());
                }
                free_all(&c, cpu, &v);
                freed.extend(v);
                let extra = freed.len().saturating_sub(256);
                freed.drain(..extra);
            }
            Op::DoubleFree { pick, cpu } => {
                let cands: Vec<usize> = freed
                    .iter()
                    .copied()
                    .filter(|p| !live.contains_key(p))
                    .collect();
                if cands.is_empty() {
                    continue;
                }
                let p = cands[pick % cands.len()];
                let r = run_on_cpu(cpu, || c.free(NonNull::new(p as *mut u8).unwrap()));
                assert!(r.is_err(), "step {step}: double free of {p:#x} accepted");
                errors += 1;
            }
            Op::Shrink => {
                c.shrink();
            }
        }
        freed.retain(|p| !live.contains_key(p));
    }
    assert_eq!(c.errors(), errors, "{:?}", m.platform().take_log());
    for (&p, &t) in &live {
        check(p, 64, t);
    }
    free_all(&c, 0, &order);
    let trades = (c.stat(Stat::BarnGet), c.stat(Stat::BarnPut));
    c.shrink();
    assert_eq!(sheaf_blocks(&m), 0);
    c.destroy().unwrap();
    assert_eq!(m.pages().nr_free_pages_with_pcp(), baseline);
    trades
}

proptest! {
    #![proptest_config(Config { cases: proptest_cases::cases(32), ..Config::default() })]

    #[test]
    fn barn_model(ops in proptest::collection::vec(op(), 1..120), barn in 1u32..=2) {
        run_model(ops, barn);
    }
}

/// A sequence of the model's that must trade both ways (so the property
/// above exercises the barn).
#[test]
fn barn_model_trades() {
    let ops = vec![
        Op::Alloc { n: 200, cpu: 0 },
        Op::Free { n: 200, cpu: 1 },
        Op::Alloc { n: 200, cpu: 0 },
        Op::DoubleFree { pick: 7, cpu: 0 },
        Op::Free { n: 200, cpu: 1 },
    ];
    let (gets, puts) = run_model(ops, 1);
    assert!(gets >= 1 && puts >= 2, "{gets} gets, {puts} puts");
}
