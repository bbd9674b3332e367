//! Per-CPU vmap blocks (`vm_map_ram` of up to 64 pages) kept as Linux's
//! `vb_alloc` keeps them: each CPU's blocks with pages left stay on a free
//! list and serve any request that fits, first fit, oldest block first; a
//! new block is made only when none has room. Blocks whose handed-out pages
//! are all unmapped again are freed early by `purge_fragmented_block`:
//! from `vm_unmap_aliases` only when less than a quarter is left to hand out
//! (`VMAP_PURGE_THRESHOLD`), always when virtual space runs out.

mod vmalloc_common;

use kmem::addr::{Pfn, PAGE_SIZE};
use kmem::gfp::{__GFP_NOWARN, GFP_KERNEL};
use kmem_host::vmap::{self, HostVmalloc, HostVmap};
use kmem_host::Machine;
use vmalloc_common::*;

fn frames(m: &Machine, n: usize) -> Vec<Pfn> {
    (0..n)
        .map(|_| m.pages().alloc_pages(GFP_KERNEL, 0).unwrap())
        .collect()
}

/// Start addresses of the vmap blocks, from /proc/vmallocinfo.
fn blocks(vm: &HostVmalloc<'_>) -> Vec<usize> {
    let block = vm.vmap_block_pages() * PAGE_SIZE;
    vmallocinfo_ranges(vm)
        .into_iter()
        .filter(|(s, e, what)| what.ends_with("vm_map_ram") && e - s == block)
        .map(|(s, _, _)| s)
        .collect()
}

/// Maps 1 page, then 64-page pieces until fewer than `left_below` pages are
/// left in the block; returns the block's start and the pieces.
fn fill_block(
    vm: &HostVmalloc<'_>,
    pages: &[Pfn],
    left_below: usize,
) -> (usize, Vec<(usize, usize)>) {
    let bits = vm.vmap_block_pages();
    let first = vm.vm_map_ram(&pages[..1], -1).unwrap().as_ptr() as usize;
    let mut pieces = vec![(first, 1)];
    let mut used = 1;
    while bits - used >= left_below {
        let p = vm.vm_map_ram(&pages[..64], -1).unwrap().as_ptr() as usize;
        assert_eq!(
            p,
            first + used * PAGE_SIZE,
            "bump allocation inside the block"
        );
        pieces.push((p, 64));
        used += 64;
    }
    (first, pieces)
}

#[test]
fn a_block_too_full_for_one_request_still_serves_smaller_ones() {
    let m = machine();
    let vm = vmap::vmalloc(&m).unwrap();
    let pages = frames(&m, 64);
    kmem_host::set_cpu(0);
    let bits = vm.vmap_block_pages();
    // Block A: 1 + 64k pages handed out, 63 left.
    let (a, mut pieces) = fill_block(&vm, &pages, 64);
    let used = bits - 63;
    assert_eq!(blocks(&vm), vec![a]);
    // 64 pages do not fit A: a new block B.
    let b = vm.vm_map_ram(&pages[..64], -1).unwrap().as_ptr() as usize;
    pieces.push((b, 64));
    assert!(
        b < a || b >= a + bits * PAGE_SIZE,
        "64 pages came from the full block"
    );
    assert_eq!(blocks(&vm).len(), 2);
    // 32 pages still fit A (first fit, oldest block first): Linux's vb_alloc
    // walks the CPU's free list, it does not give up on A.
    let c = vm.vm_map_ram(&pages[..32], -1).unwrap().as_ptr() as usize;
    pieces.push((c, 32));
    assert_eq!(c, a + used * PAGE_SIZE, "32 pages from the rest of block A");
    check_mapping(&vm, c as *mut u8, 32 * PAGE_SIZE);
    // 16 + 8 + 4 + 2 + 1 = 31 more pages fill A exactly; the next page
    // comes from B.
    let mut at = used + 32;
    for n in [16, 8, 4, 2, 1] {
        let p = vm.vm_map_ram(&pages[..n], -1).unwrap().as_ptr() as usize;
        assert_eq!(p, a + at * PAGE_SIZE, "{n} pages from A");
        pieces.push((p, n));
        at += n;
    }
    assert_eq!(at, bits);
    let p = vm.vm_map_ram(&pages[..1], -1).unwrap().as_ptr() as usize;
    assert_eq!(p, b + 64 * PAGE_SIZE, "A is used up: B serves");
    pieces.push((p, 1));
    assert_eq!(blocks(&vm).len(), 2, "no third block");
    // Unmapping every piece of A frees it (all handed out, all dirty).
    for &(p, n) in &pieces {
        if p >= a && p < a + bits * PAGE_SIZE {
            vm.vm_unmap_ram(p as *const u8, n).unwrap();
        }
    }
    assert_eq!(blocks(&vm), vec![b]);
    for &(p, n) in &pieces {
        if p >= b && p < b + bits * PAGE_SIZE {
            vm.vm_unmap_ram(p as *const u8, n).unwrap();
        }
    }
    vm.verify().unwrap();
    for pfn in pages {
        m.pages().free_pages(pfn, 0).unwrap();
    }
}

#[test]
fn unmap_aliases_frees_only_nearly_used_up_idle_blocks() {
    let m = machine();
    let vm = vmap::vmalloc(&m).unwrap();
    let pages = frames(&m, 64);
    let bits = vm.vmap_block_pages();
    // CPU 0: a block with less than a quarter left, everything unmapped.
    kmem_host::set_cpu(0);
    let (a, pieces) = fill_block(&vm, &pages, bits / 4);
    for &(p, n) in &pieces {
        vm.vm_unmap_ram(p as *const u8, n).unwrap();
    }
    // CPU 1: a block with almost everything left, its one page unmapped.
    kmem_host::set_cpu(1);
    let b = vm.vm_map_ram(&pages[..1], -1).unwrap().as_ptr() as usize;
    vm.vm_unmap_ram(b as *const u8, 1).unwrap();
    kmem_host::set_cpu(0);
    let mut both = blocks(&vm);
    both.sort();
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(both, want, "idle blocks stay until purged");
    vm.vm_unmap_aliases();
    assert_eq!(
        blocks(&vm),
        vec![b],
        "vm_unmap_aliases frees the idle block with under a quarter left ({a:#x}) and keeps the one with more ({b:#x})"
    );
    // B still serves CPU 1, from where it stopped.
    kmem_host::set_cpu(1);
    let p = vm.vm_map_ram(&pages[..2], -1).unwrap().as_ptr() as usize;
    assert_eq!(p, b + PAGE_SIZE);
    vm.vm_unmap_ram(p as *const u8, 2).unwrap();
    kmem_host::set_cpu(0);
    vm.verify().unwrap();
    for pfn in pages {
        m.pages().free_pages(pfn, 0).unwrap();
    }
}

#[test]
fn running_out_of_space_frees_every_idle_block() {
    let m = machine();
    // A vmalloc range of 16 blocks' worth.
    let probe = vmap::vmalloc(&m).unwrap();
    let bits = probe.vmap_block_pages();
    drop(probe);
    let range = 16 * bits * PAGE_SIZE;
    let host = HostVmap::new(&m, range).unwrap();
    let config = host.config();
    let vm = vmap::from_host(&m, host, config).unwrap();
    let pages = frames(&m, 1);
    // An idle block with almost everything left on each CPU.
    for cpu in 0..2 {
        kmem_host::set_cpu(cpu);
        let p = vm.vm_map_ram(&pages[..1], -1).unwrap().as_ptr() as usize;
        vm.vm_unmap_ram(p as *const u8, 1).unwrap();
    }
    kmem_host::set_cpu(0);
    vm.vm_unmap_aliases();
    assert_eq!(blocks(&vm).len(), 2, "not freed by vm_unmap_aliases");
    // A vmalloc that needs the blocks' space: the failed search frees them
    // (forced purge) and the retry succeeds.
    let want = range - 2 * PAGE_SIZE;
    let p = vm
        .vmalloc_gfp(want, GFP_KERNEL | __GFP_NOWARN)
        .expect("the idle blocks' space is reclaimed for a vmalloc that needs it");
    assert!(blocks(&vm).is_empty(), "forced purge frees idle blocks");
    vm.vfree(p.as_ptr()).unwrap();
    vm.verify().unwrap();
    for pfn in pages {
        m.pages().free_pages(pfn, 0).unwrap();
    }
}

/// Range and full TLB flushes the vmalloc's page tables have done.
fn flushes(vm: &HostVmalloc<'_>) -> (usize, usize) {
    let s = vm.tables().tables().stats();
    (s.range_flushes, s.full_flushes)
}

/// Linux's `_vm_unmap_aliases` takes the dirty range of every vmap block
/// into one flush and marks each block clean, however many there are: a
/// second call right after finds nothing to flush.
#[test]
fn vm_unmap_aliases_cleans_every_dirty_block() {
    let m = machine();
    let vm = vmap::vmalloc(&m).unwrap();
    kmem_host::set_cpu(0);
    let bits = vm.vmap_block_pages();
    assert_eq!(bits % 64, 0);
    let per_block = bits / 64;
    let nr_blocks = 70;
    let pages = frames(&m, 64);
    // 70 blocks filled with 64-page pieces, all but the last piece of each
    // unmapped again at once (the host would run out of mappings with
    // every block fully mapped): every block dirty, none empty (so none is
    // freed as fragmented), none with room (so each fill makes a new one).
    let mut kept = Vec::new();
    for _ in 0..nr_blocks {
        let pieces: Vec<usize> = (0..per_block)
            .map(|_| vm.vm_map_ram(&pages, -1).unwrap().as_ptr() as usize)
            .collect();
        for &p in &pieces[..per_block - 1] {
            vm.vm_unmap_ram(p as *const u8, 64).unwrap();
        }
        kept.push(pieces[per_block - 1]);
    }
    assert_eq!(blocks(&vm).len(), nr_blocks);
    let (r0, f0) = flushes(&vm);
    vm.vm_unmap_aliases();
    let (r1, f1) = flushes(&vm);
    // One flush of the range spanning the dirty pieces (so long a range
    // that it becomes a full flush, as Linux's flush ceiling decides).
    assert_eq!((r1 - r0) + (f1 - f0), 1, "one flush over the dirty pieces");
    vm.vm_unmap_aliases();
    assert_eq!(flushes(&vm), (r1, f1), "no block left dirty, no flush");
    assert_eq!(blocks(&vm).len(), nr_blocks);

    for p in kept {
        vm.vm_unmap_ram(p as *const u8, 64).unwrap();
    }
    drop(vm);
    for pfn in pages {
        m.pages().free_pages(pfn, 0).unwrap();
    }
}
