//! The barn: per node, a store of whole sheaves that CPUs trade with
//! (Linux 6.18's `struct node_barn`).
//!
//! Without it, a CPU whose sheaf fills (a thread that frees what others
//! allocated) gives the older half back to the slabs object by object, and
//! a CPU whose sheaf runs empty (a thread that allocates what others free)
//! refills it object by object from the slabs: two walks over the objects'
//! free pointers, a cache miss per object, for objects that only move from
//! one CPU to another. With it, the full sheaf goes to its node's barn in
//! exchange for an empty one, and the empty sheaf is traded for a full one:
//! O(1) under the barn lock, no object touched.
//!
//! ```text
//!  free, sheaf full ──► barn: full sheaf in, an empty one out (a new block
//!                       if the barn has none) ── barn full of full sheaves:
//!                       the older half back to the slabs, as before
//!  alloc, sheaf empty ─► barn: a full sheaf out, the empty one in (or back
//!                       to the page allocator if the barn has enough) ──
//!                       no full sheaf: refill from the slabs, as before
//! ```
//!
//! A barn holds only full sheaves (exactly `sheaf_cap` objects each) and
//! empty ones, linked through the `next` field of their blocks' frame
//! records, so it needs no memory of its own. Its objects count as in use
//! in their slabs, like a CPU sheaf's. It holds at most
//! [`super::SlabConfig::barn_sheaves`] full sheaves, and no more than
//! [`super::SlabConfig::sheaf_bytes`] of objects; as many empty ones.
//! `flush_all` (shrink, validate, destroy, the memory shrinker) empties it.
//!
//! # Locking
//! The barn lock nests inside a CPU flag and protects only the two lists;
//! no page-allocator call is made with it held.

use super::cpu::{CpuInner, CpuSlab, Stat};
use super::slab::NIL;
use super::KmemCache;
use crate::addr::{Pfn, VirtAddr};
use crate::platform::Platform;
use core::panic::Location;
use core::sync::atomic::{AtomicU32, Ordering::Relaxed};

/// What the barn lock protects: two stacks of sheaf blocks, by pfn.
#[derive(Debug)]
pub(crate) struct BarnLists {
    full: u32,
    empty: u32,
    nr_empty: u32,
}

/// One node's barn of a cache.
pub(crate) struct Barn<L: lock_api::RawMutex> {
    lists: lock_api::Mutex<L, BarnLists>,
    /// Full sheaves in the barn, readable without the lock (an allocation
    /// finding 0 does not take it).
    nr_full: AtomicU32,
}

impl<L: lock_api::RawMutex> Barn<L> {
    pub(crate) fn new() -> Self {
        Barn {
            lists: lock_api::Mutex::new(BarnLists {
                full: NIL,
                empty: NIL,
                nr_empty: 0,
            }),
            nr_full: AtomicU32::new(0),
        }
    }

    /// Full sheaves in the barn.
    pub(crate) fn nr_full(&self) -> u32 {
        self.nr_full.load(Relaxed)
    }
}

impl<P: Platform> KmemCache<P> {
    /// The CPU's sheaf is full: trade it at the barn of its node for an
    /// empty one. False, with nothing changed, if the barn holds as many
    /// full sheaves as it may or no empty block could be had.
    pub(crate) fn barn_put_full(&self, g: &mut CpuInner, c: &CpuSlab) -> bool {
        debug_assert_eq!(g.sheaf_n, g.sheaf_cap);
        if self.barn_max == 0 {
            return false;
        }
        let traded = self.trade_full(g);
        c.stat(if traded {
            Stat::BarnPut
        } else {
            Stat::BarnPutFail
        });
        traded
    }

    /// [`Self::barn_put_full`] less the counting.
    fn trade_full(&self, g: &mut CpuInner) -> bool {
        let node = g.sheaf_node as usize;
        let barn = &self.nodes[node].barn;
        let mut lists = barn.lists.lock();
        if barn.nr_full() >= self.barn_max {
            return false;
        }
        let empty = match self.pop_block(&mut lists.empty) {
            Some(e) => {
                lists.nr_empty -= 1;
                e
            }
            None => {
                // A new block, with no barn lock held; the barn may have
                // filled meanwhile.
                drop(lists);
                let Some(e) = self.new_sheaf_block(node) else {
                    return false;
                };
                lists = barn.lists.lock();
                if barn.nr_full() >= self.barn_max {
                    drop(lists);
                    self.free_sheaf_block(e);
                    return false;
                }
                self.block_pfn(e)
            }
        };
        self.push_block(&mut lists.full, self.block_pfn(g.sheaf));
        barn.nr_full.store(barn.nr_full() + 1, Relaxed);
        drop(lists);
        g.sheaf = self.block_addr(empty);
        g.sheaf_n = 0;
        true
    }

    /// The CPU's sheaf is empty: trade it at the barn of the CPU's node for
    /// a full one. False, with nothing changed, if the barn has none.
    pub(crate) fn barn_get_full(&self, g: &mut CpuInner, c: &CpuSlab) -> bool {
        debug_assert_eq!(g.sheaf_n, 0);
        if self.barn_max == 0 {
            return false;
        }
        let traded = self.trade_empty(g);
        c.stat(if traded {
            Stat::BarnGet
        } else {
            Stat::BarnGetFail
        });
        traded
    }

    /// [`Self::barn_get_full`] less the counting.
    fn trade_empty(&self, g: &mut CpuInner) -> bool {
        let node = g.node as usize;
        let barn = &self.nodes[node].barn;
        if barn.nr_full() == 0 {
            return false;
        }
        let mut lists = barn.lists.lock();
        let Some(full) = self.pop_block(&mut lists.full) else {
            return false;
        };
        barn.nr_full.store(barn.nr_full() - 1, Relaxed);
        let spare = if lists.nr_empty < self.barn_max {
            self.push_block(&mut lists.empty, self.block_pfn(g.sheaf));
            lists.nr_empty += 1;
            None
        } else {
            Some(g.sheaf)
        };
        drop(lists);
        if let Some(s) = spare {
            self.free_sheaf_block(s);
        }
        g.sheaf = self.block_addr(full);
        g.sheaf_n = self.sheaf_cap;
        g.sheaf_node = node as u32;
        true
    }

    /// Empties every node's barn: the objects of its full sheaves back to
    /// their slabs (through CPU 0's state, which `flush_all` flushes next),
    /// every block back to the page allocator.
    pub(crate) fn drain_barns(&self) {
        if self.barn_max == 0 {
            return;
        }
        for n in &self.nodes {
            let (mut full, mut empty) = {
                let mut lists = n.barn.lists.lock();
                let taken = (lists.full, lists.empty);
                lists.full = NIL;
                lists.empty = NIL;
                lists.nr_empty = 0;
                n.barn.nr_full.store(0, Relaxed);
                taken
            };
            if full == NIL && empty == NIL {
                continue;
            }
            let c = self.cpu_slab(0);
            let mut g = self.lock_cpu(0);
            while let Some(pfn) = self.pop_block(&mut full) {
                let block = self.block_addr(pfn);
                // SAFETY: a full sheaf of the barn: sheaf_cap free objects of
                // this cache, now ours alone.
                unsafe {
                    let objs = core::slice::from_raw_parts(block, self.sheaf_cap as usize);
                    self.flush_objects(objs, c, &mut g);
                }
                self.free_sheaf_block(block);
            }
            while let Some(pfn) = self.pop_block(&mut empty) {
                self.free_sheaf_block(self.block_addr(pfn));
            }
        }
    }

    /// Pops the first block of a barn list.
    fn pop_block(&self, head: &mut u32) -> Option<u32> {
        if *head == NIL {
            return None;
        }
        let pfn = *head;
        *head = self.block_frame(pfn).next.load(Relaxed);
        Some(pfn)
    }

    /// Pushes a block onto a barn list.
    fn push_block(&self, head: &mut u32, pfn: u32) {
        self.block_frame(pfn).next.store(*head, Relaxed);
        *head = pfn;
    }

    fn block_frame(&self, pfn: u32) -> &crate::page::Frame {
        self.pages()
            .frame(Pfn(pfn as u64))
            .expect("kmem slab: a sheaf block has a frame record")
    }

    fn block_pfn(&self, block: *mut usize) -> u32 {
        self.pages()
            .virt_to_page(VirtAddr(block as usize))
            .expect("kmem slab: a sheaf block lies in the direct map")
            .0 as u32
    }

    fn block_addr(&self, pfn: u32) -> *mut usize {
        self.pages().page_address(Pfn(pfn as u64)).0 as *mut usize
    }

    /// A sheaf block from the page allocator on `node` (quietly, without
    /// reclaim: a sheaf is an optimisation). None if none was free.
    pub(crate) fn new_sheaf_block(&self, node: usize) -> Option<*mut usize> {
        let pages = self.pages();
        let gfp = crate::gfp::GFP_NOWAIT | crate::gfp::Gfp::NOWARN;
        let pfn = pages
            .alloc_pages_node_at(node as i32, gfp, super::SHEAF_ORDER, Location::caller())
            .ok()?;
        if let Some(f) = pages.frame(pfn) {
            f.set_owner(super::OWNER_SHEAF);
        }
        Some(pages.page_address(pfn).0 as *mut usize)
    }

    /// Gives a sheaf block (holding no objects) back to the page allocator.
    pub(crate) fn free_sheaf_block(&self, block: *mut usize) {
        let pages = self.pages();
        let Some(pfn) = pages.virt_to_page(VirtAddr(block as usize)) else {
            return;
        };
        if let Some(f) = pages.frame(pfn) {
            f.set_owner(0);
        }
        if let Err(e) = pages.free_pages(pfn, super::SHEAF_ORDER) {
            self.platform().warn(format_args!(
                "slab {}: freeing a sheaf failed: {e}",
                self.name()
            ));
        }
    }
}
