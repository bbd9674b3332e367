//! The page allocator's normal paths against Linux (written in review): a
//! pageblock shared by two zones is never claimed whole (the claim used to
//! move the other zone's free blocks onto this zone's lists: a panic, or
//! silent corruption without overflow checks), the unfragmenting first walk
//! stays on the preferred node (locality before fragmentation), lowmem-only
//! and __GFP_THISNODE failures are not OOM kills, __GFP_THISNODE on a node
//! that does not exist fails, and random operation sequences on two CPUs
//! keep the buddy invariants and counters.

use kmem::addr::Pfn;
use kmem::error::AllocError;
use kmem::gfp::{
    Gfp, ZoneType, GFP_ATOMIC, GFP_DMA32, GFP_HIGHUSER_MOVABLE, GFP_KERNEL, GFP_NOWAIT,
};
use kmem::page::{FrameState, Region};
use kmem_host::{Machine, MachineConfig};
use std::collections::BTreeMap;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn machine_with(regions: Vec<Region>, nr_cpus: usize) -> Machine {
    Machine::new(MachineConfig {
        regions: Some(regions),
        nr_cpus,
        ..Default::default()
    })
    .expect("machine builds")
}

fn node_of(m: &Machine, p: Pfn) -> usize {
    m.pages().frame(p).unwrap().node()
}

/// A pageblock (2 MiB) that straddles a node boundary: node 0 owns its
/// first half, node 1 its second half. An unmovable request on node 0 falls
/// back to the movable order-8 block in node 0's half; `try_claim_block`
/// walks the whole pageblock, counts node 1's free block as "free", and
/// moves it onto node 0's free lists (or underflows node 0's counts).
/// Linux's `prep_move_freepages_block` refuses when the pageblock is not
/// wholly inside the zone.
#[test]
fn claim_does_not_touch_other_zone_in_straddling_pageblock() {
    let m = machine_with(
        vec![
            Region::reserved(0, 16 * MIB),
            Region::usable(16 * MIB, 17 * MIB),
            Region::usable(17 * MIB, 64 * MIB).on_node(1),
        ],
        2,
    );
    assert_eq!(m.pages().nr_nodes(), 2);
    m.pages().verify().expect("consistent at boot");
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        m.pages().alloc_pages_node(0, GFP_KERNEL, 0)
    }));
    let p = match r {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => panic!("node-0 allocation failed: {e}"),
        Err(_) => panic!("node-0 unmovable allocation panicked inside the claim (see stderr)"),
    };
    assert_eq!(node_of(&m, p), 0);
    if let Err(e) = m.pages().verify() {
        panic!("after one GFP_KERNEL page on node 0: {e}");
    }
    // Node 1's free pages must be untouched by node 0's claim.
    let z1 = m.pages().zone(1, ZoneType::Dma32);
    let bt = z1.free_blocks_by_type();
    let sum: usize = bt
        .iter()
        .enumerate()
        .map(|(o, l)| l.iter().map(|&n| n as usize).sum::<usize>() << o)
        .sum();
    assert_eq!(sum, z1.free_pages(), "node 1 lists and count agree");
}

/// Two nodes; node 0's zones are fragmented (only order-0 movable holes),
/// node 1 is pristine. Linux's get_page_from_freelist, walking with
/// ALLOC_NOFRAGMENT, drops NOFRAGMENT and retries as soon as it would move
/// to a remote node ("Locality is more important than fragmentation
/// avoidance"), so an unmovable page comes from node 0 (stealing).
#[test]
fn nofragment_does_not_send_allocation_to_remote_node() {
    let m = machine_with(
        vec![
            Region::reserved(0, 16 * MIB),
            Region::usable(16 * MIB, 20 * MIB),
            Region::usable(4 * GIB, 4 * GIB + 8 * MIB),
            Region::usable(4 * GIB + 8 * MIB, 4 * GIB + 72 * MIB).on_node(1),
        ],
        1,
    );
    let pa = m.pages();
    assert_eq!(pa.nr_nodes(), 2);
    // Take all of node 0 as movable order-0 pages.
    let mut held = Vec::new();
    while let Ok(p) = pa.alloc_pages_node(
        0,
        GFP_HIGHUSER_MOVABLE | Gfp::THISNODE | Gfp::MEMALLOC | Gfp::NOWARN,
        0,
    ) {
        assert_eq!(node_of(&m, p), 0);
        held.push(p)
    }
    // Free every other page: node 0 has half its pages free, all order 0.
    held.sort();
    let mut kept = Vec::new();
    for (i, p) in held.into_iter().enumerate() {
        if i % 2 == 0 {
            pa.free_pages(p, 0).unwrap();
        } else {
            kept.push(p);
        }
    }
    pa.drain_all_pages();
    for zt in [ZoneType::Dma32, ZoneType::Normal] {
        let z = pa.zone(0, zt);
        assert!(
            z.free_pages() > z.watermark(kmem::page::Watermark::High) + 8,
            "node 0 {zt:?} is comfortably above its watermarks ({} free)",
            z.free_pages()
        );
        assert_eq!(z.largest_free_order(), Some(0));
    }
    let p = pa.alloc_pages(GFP_KERNEL, 0).expect("GFP_KERNEL page");
    assert_eq!(
        node_of(&m, p),
        0,
        "unmovable page went to remote node although local node 0 has {} free pages",
        pa.zone(0, ZoneType::Normal).free_pages()
    );
}

/// Exhausting ZONE_DMA32 with GFP_KERNEL|GFP_DMA32: Linux's
/// `__alloc_pages_may_oom` does not invoke the OOM killer for lowmem
/// requests (`ac->highest_zoneidx < ZONE_NORMAL`), nor for __GFP_THISNODE.
#[test]
fn lowmem_and_thisnode_failures_are_not_oom() {
    let m = Machine::new(MachineConfig {
        ram_bytes: 64 * MIB,
        nr_cpus: 1,
        ..Default::default()
    })
    .unwrap();
    let pa = m.pages();
    let mut held = Vec::new();
    let err = loop {
        match pa.alloc_pages(GFP_KERNEL | GFP_DMA32 | Gfp::NOWARN, 0) {
            Ok(p) => held.push(p),
            Err(AllocError::NoMemory(e)) => break e,
            Err(e) => panic!("{e:?}"),
        }
    };
    let mut msgs = vec![];
    if err.oom {
        msgs.push(format!(
            "GFP_KERNEL|GFP_DMA32 failure reported oom=true ({err:?})"
        ));
    }
    for p in held.drain(..) {
        pa.free_pages(p, 0).unwrap();
    }
    let err2 = loop {
        match pa.alloc_pages_node(0, GFP_KERNEL | Gfp::THISNODE | Gfp::NOWARN, 0) {
            Ok(p) => held.push(p),
            Err(AllocError::NoMemory(e)) => break e,
            Err(e) => panic!("{e:?}"),
        }
    };
    if err2.oom {
        msgs.push(format!(
            "GFP_KERNEL|__GFP_THISNODE failure reported oom=true ({err2:?})"
        ));
    }
    for p in held.drain(..) {
        pa.free_pages(p, 0).unwrap();
    }
    assert!(msgs.is_empty(), "{msgs:#?}");
}

fn buddy_invariant(m: &Machine) -> Result<(), String> {
    let pa = m.pages();
    for z in pa.populated_zones() {
        let lo = z.start_pfn();
        let hi = lo + z.spanned_pages();
        let mut pfn = lo;
        while pfn < hi {
            let Some(f) = pa.frame(Pfn(pfn)) else {
                pfn += 1;
                continue;
            };
            if f.state() == FrameState::Buddy {
                let o = f.order();
                if o < 10 {
                    let b = pfn ^ (1 << o);
                    if let Some(bf) = pa.frame(Pfn(b)) {
                        if bf.state() == FrameState::Buddy
                            && bf.order() == o
                            && bf.node() == f.node()
                            && bf.zone_index() == f.zone_index()
                        {
                            return Err(format!(
                                "free block {pfn:#x} order {o} and its buddy {b:#x} are both free"
                            ));
                        }
                    }
                }
            }
            pfn += 1;
        }
    }
    Ok(())
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_ops_keep_buddy_invariants_and_counters() {
    for seed in 0..6u64 {
        let m = Machine::new(MachineConfig {
            ram_bytes: 64 * MIB,
            nr_cpus: 2,
            ..Default::default()
        })
        .unwrap();
        let pa = m.pages();
        pa.drain_all_pages();
        let base = pa.nr_free_pages();
        let base_buddy = kmem_buddyinfo(&m);
        let mut rng = Rng(seed * 7919 + 1);
        let masks = [
            GFP_KERNEL,
            GFP_ATOMIC,
            GFP_NOWAIT,
            GFP_KERNEL | Gfp::DMA,
            GFP_KERNEL | GFP_DMA32,
            GFP_HIGHUSER_MOVABLE,
            GFP_KERNEL | Gfp::RECLAIMABLE,
        ];
        let mut live: BTreeMap<u64, u32> = BTreeMap::new();
        let mut live_pages = 0u64;
        for step in 0..3000 {
            let cpu = rng.below(2) as usize;
            kmem_host::run_on_cpu(cpu, || {
                let r = rng.below(100);
                if r < 55 {
                    let order = match rng.below(10) {
                        0..=5 => rng.below(4) as u32,
                        6..=8 => rng.below(7) as u32,
                        _ => rng.below(11) as u32,
                    };
                    let g = masks[rng.below(masks.len() as u64) as usize] | Gfp::NOWARN;
                    if let Ok(p) = pa.alloc_pages(g, order) {
                        let end = p.0 + (1 << order);
                        if let Some((&q, &qo)) = live.range(..end).next_back() {
                            assert!(
                                q + (1 << qo) <= p.0,
                                "seed {seed} step {step}: {p:?}/{order} overlaps live {q:#x}/{qo}"
                            );
                        }
                        assert_eq!(p.0 % (1 << order), 0);
                        live.insert(p.0, order);
                        live_pages += 1 << order;
                    }
                } else if r < 95 {
                    if !live.is_empty() {
                        let i = rng.below(live.len() as u64) as usize;
                        let (&p, &o) = live.iter().nth(i).unwrap();
                        live.remove(&p);
                        live_pages -= 1 << o;
                        pa.free_pages(Pfn(p), o).unwrap();
                    }
                } else if r < 98 {
                    pa.drain_local_pages();
                } else {
                    pa.drain_all_pages();
                }
            });
            let free = pa.nr_free_pages() as u64;
            let pcp = pa.pcp_pages() as u64;
            assert_eq!(
                free + pcp + live_pages,
                base as u64,
                "seed {seed} step {step}: free {free} + pcp {pcp} + live {live_pages} != boot {base}"
            );
            if step % 50 == 0 {
                pa.verify()
                    .unwrap_or_else(|e| panic!("seed {seed} step {step}: {e}"));
                buddy_invariant(&m).unwrap_or_else(|e| panic!("seed {seed} step {step}: {e}"));
            }
        }
        for (p, o) in std::mem::take(&mut live) {
            pa.free_pages(Pfn(p), o).unwrap();
        }
        pa.drain_all_pages();
        assert_eq!(pa.nr_free_pages(), base, "seed {seed}: all back");
        buddy_invariant(&m).unwrap();
        pa.verify().unwrap();
        // Everything merged back: /proc/buddyinfo reads as at the start.
        assert_eq!(kmem_buddyinfo(&m), base_buddy, "seed {seed}");
    }
}

fn kmem_buddyinfo(m: &Machine) -> String {
    let mut s = String::new();
    kmem::procfs::buddyinfo(m.pages(), &mut s).unwrap();
    s
}

/// Two CPUs (threads that claim them) allocate and free while a third
/// thread drains; at the end everything adds up and invariants hold.
#[test]
fn concurrent_alloc_free_drain() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let m = Arc::new(
        Machine::new(MachineConfig {
            ram_bytes: 64 * MIB,
            nr_cpus: 2,
            ..Default::default()
        })
        .unwrap(),
    );
    m.pages().drain_all_pages();
    let base = m.pages().nr_free_pages();
    let stop = Arc::new(AtomicBool::new(false));
    let mut hs = vec![];
    for cpu in 0..2usize {
        let m = m.clone();
        hs.push(std::thread::spawn(move || {
            let _c = kmem_host::claim_cpu(cpu).ok();
            let mut rng = Rng(cpu as u64 + 99);
            let mut live: Vec<(Pfn, u32)> = vec![];
            for _ in 0..40_000 {
                if rng.below(100) < 52 && live.len() < 4000 {
                    let o = if rng.below(8) == 0 {
                        rng.below(6) as u32
                    } else {
                        rng.below(4) as u32
                    };
                    let g = if rng.below(2) == 0 {
                        GFP_KERNEL
                    } else {
                        GFP_HIGHUSER_MOVABLE
                    };
                    if let Ok(p) = m.pages().alloc_pages(g | Gfp::NOWARN, o) {
                        live.push((p, o));
                    }
                } else if !live.is_empty() {
                    let i = rng.below(live.len() as u64) as usize;
                    let (p, o) = live.swap_remove(i);
                    m.pages().free_pages(p, o).unwrap();
                }
            }
            for (p, o) in live {
                m.pages().free_pages(p, o).unwrap();
            }
        }));
    }
    {
        let m = m.clone();
        let stop = stop.clone();
        hs.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                m.pages().drain_all_pages();
                std::thread::yield_now();
            }
        }));
    }
    let drainer = hs.pop().unwrap();
    for h in hs {
        h.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    drainer.join().unwrap();
    m.pages().drain_all_pages();
    m.pages().verify().unwrap();
    buddy_invariant(&m).unwrap();
    assert_eq!(m.pages().nr_free_pages(), base);
}

/// `alloc_pages_node(nid, __GFP_THISNODE)` with a nid the machine does not
/// have: kmem silently serves it from the default node, breaking the
/// __GFP_THISNODE promise ("only that node"). Linux warns
/// (`warn_if_node_offline`) and has no zonelist to fall back on.
#[test]
fn thisnode_on_nonexistent_node_is_not_served_elsewhere() {
    let m = Machine::new(MachineConfig {
        ram_bytes: 64 * MIB,
        nr_cpus: 1,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(m.pages().nr_nodes(), 1);
    let r = m
        .pages()
        .alloc_pages_node(2, GFP_KERNEL | Gfp::THISNODE | Gfp::NOWARN, 0);
    if let Ok(p) = r {
        panic!(
            "alloc_pages_node(2, GFP_KERNEL|__GFP_THISNODE) returned pfn {:#x} on node {}",
            p.0,
            node_of(&m, p)
        );
    }
}
