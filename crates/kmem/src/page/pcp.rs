//! Per-CPU page lists: the allocator's fast path for orders 0..=3.
//!
//! Each CPU keeps, per zone, a LIFO list of free blocks for every order up to
//! 3 and every mobility type. Allocation pops from the list, freeing pushes;
//! only when a list is empty does the CPU take the zone lock, to pull `batch`
//! blocks at once, and only when its cache grows past `high` pages does it
//! give a batch back. Pages on a per-CPU list are not counted as free in the
//! zone, as in Linux.
//!
//! The lists are guarded by the per-CPU lock (`cpu_lock.rs`), taken with a
//! try-lock the way Linux's `pcp_spin_trylock` works: the CPU's owner (a
//! kernel with preemption off, a host thread that claimed its CPU) takes it
//! with plain stores, anyone else with a compare-and-swap (two host threads
//! can share a CPU number), and the loser simply goes to the zone lock.
//! Remote drains (under memory pressure, statistics) wait for it.

use super::buddy::RmqueueMode;
use super::frame::{FrameState, NIL};
use super::{PageAllocator, MAX_ZONES};
use crate::cpu_lock::{PerCpu, PerCpuGuard};
use crate::platform::Platform;
use core::sync::atomic::Ordering::*;

/// Highest order kept on per-CPU lists.
pub const PCP_MAX_ORDER: u32 = 3;
pub(crate) const NR_PCP_LISTS: usize = (PCP_MAX_ORDER as usize + 1) * 3;

/// One CPU's lists for one zone, behind the CPU's lock.
#[repr(C, align(128))]
pub(crate) struct Pcp(PerCpu<PcpInner>);

/// A held per-CPU list.
pub(crate) type PcpGuard<'a> = PerCpuGuard<'a, PcpInner>;

pub(crate) struct PcpInner {
    /// Pages held, all lists.
    pub(crate) count: u32,
    /// Above this many pages, a batch goes back to the zone.
    pub(crate) high: u32,
    /// Blocks moved per refill or drain.
    pub(crate) batch: u32,
    pub(crate) heads: [u32; NR_PCP_LISTS],
    pub(crate) alloc_hits: u64,
    pub(crate) free_hits: u64,
}

impl Pcp {
    pub(crate) fn new() -> Pcp {
        Pcp(PerCpu::new(PcpInner {
            count: 0,
            high: 0,
            batch: 1,
            heads: [NIL; NR_PCP_LISTS],
            alloc_hits: 0,
            free_hits: 0,
        }))
    }
}

/// The lock's own methods take the lists: `try_lock_this` from the running
/// CPU (never waits), `lock_remote` from anywhere (drains, statistics).
impl core::ops::Deref for Pcp {
    type Target = PerCpu<PcpInner>;
    #[inline(always)]
    fn deref(&self) -> &PerCpu<PcpInner> {
        &self.0
    }
}

#[inline(always)]
fn list_index(order: u32, mt: usize) -> usize {
    order as usize * 3 + mt
}

/// Outcome of a fast-path attempt.
pub(crate) enum PcpAlloc {
    Hit(u64),
    Empty,
    Contended,
}

impl<P: Platform> PageAllocator<P> {
    /// The running CPU's lists for zone `slot`, if they can be taken without
    /// waiting; counts a miss as contended.
    #[inline(always)]
    fn this_pcp(&self, slot: usize) -> Option<PcpGuard<'_>> {
        let (cpu, exclusive) = self.platform().this_cpu();
        // Exclusive only for a CPU number in range (see `pcp`).
        let exclusive = exclusive && cpu < self.nr_cpus;
        let g = self
            .pcp(cpu, slot)
            .try_lock_this(self.platform(), cpu, exclusive);
        if g.is_none() {
            self.stats.pcp_contended.fetch_add(1, Relaxed);
        }
        g
    }

    /// Pops a block of `order`/`mt` from this CPU's list for zone `slot`,
    /// refilling the list from the zone if it is empty.
    #[inline]
    pub(crate) fn rmqueue_pcp(&self, slot: usize, order: u32, mt: usize, nofrag: bool) -> PcpAlloc {
        let Some(mut pcp) = self.this_pcp(slot) else {
            return PcpAlloc::Contended;
        };
        let li = list_index(order, mt);
        if pcp.heads[li] == NIL && !self.refill_pcp(&mut pcp, slot, order, mt, nofrag) {
            return PcpAlloc::Empty;
        }
        let pfn = pcp.heads[li];
        let f = self.mm.frame_unchecked(pfn as u64);
        pcp.heads[li] = f.next.load(Relaxed);
        // Marked while the list is held: a racing double free sees it allocated.
        f.set(FrameState::Allocated, order, 0, mt);
        pcp.count -= 1 << order;
        pcp.alloc_hits += 1;
        PcpAlloc::Hit(pfn as u64)
    }

    /// Pulls a batch of blocks from the zone onto a per-CPU list (Linux's
    /// `rmqueue_bulk`: one lock hold, the fallback stage remembered from one
    /// block to the next).
    #[cold]
    #[inline(never)]
    fn refill_pcp(
        &self,
        pcp: &mut PcpInner,
        slot: usize,
        order: u32,
        mt: usize,
        nofrag: bool,
    ) -> bool {
        let want = (pcp.batch >> order).max(2);
        let zone = &self.zones[slot];
        let mut area = zone.area.lock();
        let li = list_index(order, mt);
        let mut got = 0;
        let mut mode = RmqueueMode::Normal;
        while got < want {
            let Some(pfn) = self.rmqueue(&mut area, order, mt, nofrag, &mut mode) else {
                break;
            };
            let f = self.mm.frame_unchecked(pfn);
            f.set(FrameState::Pcp, order, 0, mt);
            f.next.store(pcp.heads[li], Relaxed);
            pcp.heads[li] = pfn as u32;
            pcp.count += 1 << order;
            got += 1;
        }
        zone.publish(&area);
        drop(area);
        if got > 0 {
            self.stats.pcp_refill.fetch_add(1, Relaxed);
        }
        got > 0
    }

    /// Pushes a freed block onto this CPU's list; gives a batch back to the
    /// zone past the high mark. False if the list was busy (free to the zone).
    #[inline]
    pub(crate) fn free_pcp(
        &self,
        f: &super::Frame,
        pfn: u64,
        order: u32,
        slot: usize,
        mt: usize,
    ) -> bool {
        let Some(mut pcp) = self.this_pcp(slot) else {
            return false;
        };
        let li = list_index(order, mt);
        f.set(FrameState::Pcp, order, 0, mt);
        f.next.store(pcp.heads[li], Relaxed);
        pcp.heads[li] = pfn as u32;
        pcp.count += 1 << order;
        pcp.free_hits += 1;
        if pcp.count > pcp.high {
            let target = pcp.high.saturating_sub(pcp.batch);
            self.free_pcppages_bulk(&mut pcp, slot, target);
        }
        true
    }

    /// Returns blocks to the zone until the list holds at most `target` pages.
    #[inline(never)]
    fn free_pcppages_bulk(&self, pcp: &mut PcpInner, slot: usize, target: u32) {
        if pcp.count <= target {
            return;
        }
        let zone = &self.zones[slot];
        let mut area = zone.area.lock();
        // Oldest-first would need a tail; Linux frees round-robin across lists.
        let mut li = 0;
        let mut empty_round = 0;
        while pcp.count > target && empty_round < NR_PCP_LISTS {
            let head = pcp.heads[li];
            if head == NIL {
                empty_round += 1;
            } else {
                empty_round = 0;
                let f = self.mm.frame_unchecked(head as u64);
                pcp.heads[li] = f.next.load(Relaxed);
                let order = (li / 3) as u32;
                pcp.count -= 1 << order;
                f.set(FrameState::Tail, 0, 0, 0);
                self.free_one_page(&mut area, head as u64, order);
            }
            li = (li + 1) % NR_PCP_LISTS;
        }
        zone.publish(&area);
        drop(area);
        self.stats.pcp_drain.fetch_add(1, Relaxed);
    }

    /// Empties one CPU's lists for every zone (nothing for a CPU number the
    /// machine does not have).
    pub fn drain_cpu_pages(&self, cpu: usize) {
        if cpu >= self.nr_cpus {
            return;
        }
        for slot in 0..MAX_ZONES {
            let mut pcp = self.pcp(cpu, slot).lock_remote(self.platform(), cpu);
            if pcp.count > 0 {
                self.free_pcppages_bulk(&mut pcp, slot, 0);
            }
        }
    }

    /// Empties the running CPU's lists (Linux's `drain_local_pages`).
    pub fn drain_local_pages(&self) {
        self.drain_cpu_pages(self.platform().cpu_id());
    }

    /// Empties the running CPU's lists that can be taken without waiting:
    /// for an allocation that may not sleep, which may run in an interrupt
    /// that landed inside this CPU's own list section (those lists are
    /// busy, and waiting for them would wait for itself).
    pub(crate) fn try_drain_local_pages(&self) {
        let p = self.platform();
        let (cpu, exclusive) = p.this_cpu();
        if cpu >= self.nr_cpus {
            return;
        }
        for slot in 0..MAX_ZONES {
            if let Some(mut pcp) = self.pcp(cpu, slot).try_lock_this(p, cpu, exclusive) {
                if pcp.count > 0 {
                    self.free_pcppages_bulk(&mut pcp, slot, 0);
                }
            }
        }
    }

    /// Empties every CPU's lists (Linux's `drain_all_pages`), so their pages
    /// can merge in the zones.
    pub fn drain_all_pages(&self) {
        self.stats.drain_all.fetch_add(1, Relaxed);
        for cpu in 0..self.nr_cpus {
            self.drain_cpu_pages(cpu);
        }
    }

    /// Pages held on per-CPU lists, all CPUs and zones.
    pub fn pcp_pages(&self) -> usize {
        let mut n = 0;
        for cpu in 0..self.nr_cpus {
            for slot in 0..MAX_ZONES {
                n += self.pcp(cpu, slot).lock_remote(self.platform(), cpu).count as usize;
            }
        }
        n
    }

    pub(crate) fn pcp_hit_totals(&self) -> (u64, u64) {
        let (mut a, mut f) = (0, 0);
        for cpu in 0..self.nr_cpus {
            for slot in 0..MAX_ZONES {
                let p = self.pcp(cpu, slot).lock_remote(self.platform(), cpu);
                a += p.alloc_hits;
                f += p.free_hits;
            }
        }
        (a, f)
    }

    /// Per-CPU `(count, high, batch)` for one zone slot, as zoneinfo prints.
    pub fn pcp_info(
        &self,
        cpu: usize,
        node: usize,
        ztype: crate::gfp::ZoneType,
    ) -> (u32, u32, u32) {
        if cpu >= self.nr_cpus {
            return (0, 0, 0);
        }
        let p = self
            .pcp(cpu, node * 3 + ztype.index())
            .lock_remote(self.platform(), cpu);
        (p.count, p.high, p.batch)
    }

    /// Sizes `batch` and `high` per zone as Linux's `zone_batchsize` and
    /// `zone_highsize` do.
    pub(crate) fn setup_pcp(&self) {
        for slot in 0..MAX_ZONES {
            let z = &self.zones[slot];
            let managed = z.managed_pages() as u32;
            let mut batch = (managed >> 10).min(256) / 4;
            batch = batch.max(1);
            batch = prev_power_of_two(batch + batch / 2)
                .saturating_sub(1)
                .max(1);
            let low = z.watermark(super::Watermark::Low) as u32;
            let high = (low / self.nr_cpus as u32).max(batch * 4);
            for cpu in 0..self.nr_cpus {
                let mut p = self.pcp(cpu, slot).lock_remote(self.platform(), cpu);
                p.batch = batch;
                p.high = if self.config().pcp_lists && managed > 0 {
                    high
                } else {
                    0
                };
            }
        }
    }
}

fn prev_power_of_two(x: u32) -> u32 {
    if x == 0 {
        0
    } else {
        1 << (31 - x.leading_zeros())
    }
}
