//! Slab on two NUMA nodes: `kmalloc_node(.., __GFP_THISNODE)` never hands out
//! another node's object, whatever the CPU's sheaf holds, while objects of
//! both nodes are freed on both CPUs (which moves slabs of the other node onto
//! a CPU's partial list, and so the CPU itself onto that node now and then).

use kmem::addr::VirtAddr;
use kmem::gfp::{Gfp, GFP_KERNEL};
use kmem::slab::{SlabAllocator, SlabConfig, Stat};
mod slab_common;

use kmem_host::{run_on_cpu, Machine};
use slab_common::two_nodes;

fn node_of(m: &Machine, p: *mut u8) -> usize {
    let pfn = m
        .pages()
        .virt_to_page(VirtAddr(p as usize))
        .expect("slab objects are direct-map addresses");
    m.pages().frame(pfn).unwrap().node()
}

/// splitmix64.
fn next(s: &mut u64) -> u64 {
    *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn run(config: SlabConfig, seed: u64) {
    let m = two_nodes();
    assert_eq!(m.pages().nr_nodes(), 2);
    let slab = SlabAllocator::new(m.pages(), config).unwrap();
    // Baseline with every CPU flushed (the bootstrap caches hold sheaves).
    slab.shrink_all();
    let free0 = m.pages().nr_free_pages_with_pcp();
    let mut live: Vec<(*mut u8, usize, u8)> = Vec::new();
    let mut s = seed;
    let sizes = [32usize, 64, 192, 512, 2048];
    for step in 0..20_000u32 {
        let cpu = (next(&mut s) % 2) as usize;
        run_on_cpu(cpu, || {
            let r = next(&mut s);
            if live.len() < 600 && r % 8 < 5 {
                let size = sizes[(r >> 8) as usize % sizes.len()];
                let (p, want) = match (r >> 16) % 3 {
                    0 => (slab.kmalloc(size, GFP_KERNEL).unwrap().as_ptr(), None),
                    n => {
                        let node = (n - 1) as i32;
                        let p = slab
                            .kmalloc_node(size, GFP_KERNEL | Gfp::THISNODE, node)
                            .unwrap()
                            .as_ptr();
                        (p, Some(node as usize))
                    }
                };
                if let Some(node) = want {
                    assert_eq!(
                        node_of(&m, p),
                        node,
                        "step {step}: kmalloc_node({size}, __GFP_THISNODE, {node}) on CPU {cpu} gave {p:p}, on node {}",
                        node_of(&m, p)
                    );
                }
                let tag = step as u8;
                // SAFETY: a live object of at least `size` bytes.
                unsafe { p.write_bytes(tag, size) };
                live.push((p, size, tag));
            } else if !live.is_empty() {
                let i = (r >> 8) as usize % live.len();
                let (p, size, tag) = live.swap_remove(i);
                // SAFETY: written above, still live.
                let bytes = unsafe { std::slice::from_raw_parts(p, size) };
                assert!(
                    bytes.iter().all(|&b| b == tag),
                    "{p:p} was overwritten while live"
                );
                slab.kfree(p).unwrap();
            }
        });
    }
    for (p, _, _) in live.drain(..) {
        slab.kfree(p).unwrap();
    }
    slab.shrink_all();
    assert!(m.platform().take_log().is_empty());
    assert_eq!(
        m.pages().nr_free_pages_with_pcp(),
        free0,
        "pages missing after shrink_all"
    );
    // The sequence must have exercised the node-bound paths the test is
    // about: requests for the other node than the CPU's (or its sheaf's).
    let mismatches: u64 = sizes
        .iter()
        .map(|&size| {
            slab.kmalloc_slab(size, GFP_KERNEL)
                .stat(Stat::AllocNodeMismatch)
        })
        .sum();
    assert!(
        mismatches > 100,
        "only {mismatches} node-mismatched allocations"
    );
}

#[test]
fn thisnode_objects_stay_on_their_node_with_sheaves() {
    for seed in 1..4 {
        run(SlabConfig::default(), seed);
    }
}

#[test]
fn thisnode_objects_stay_on_their_node_without_sheaves() {
    run(
        SlabConfig {
            sheaf_bytes: 0,
            ..Default::default()
        },
        7,
    );
}

#[test]
fn thisnode_objects_stay_on_their_node_with_tiny_sheaves() {
    run(
        SlabConfig {
            sheaf_bytes: 4096,
            ..Default::default()
        },
        11,
    );
}
