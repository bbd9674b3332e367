//! The page allocator: zones, buddy free lists, per-CPU lists, watermarks,
//! migrate types and reclaim.
//!
//! # Shape
//! [`PageAllocator`] owns the zones of every node and a pointer to the frame
//! records ([`frame`]). An allocation picks the zones its GFP mask allows
//! (highest first, lower zones guarded by their lowmem reserve), checks the
//! watermark, and takes a block:
//!
//! - orders 0..=3 from the running CPU's per-CPU list ([`pcp`]), refilled from
//!   the zone in batches: no shared lock on the fast path;
//! - larger orders, and refills, from the zone's buddy lists ([`buddy`]) under
//!   the zone lock, stealing from other migrate types when its own are empty.
//!
//! High-order atomic allocations that had to dip into reserves set whole
//! pageblocks aside for later ones (the HighAtomic reserve, up to 1% of a
//! zone); blocking allocations give them back before failing ([`buddy`]).
//!
//! Missing the low watermark sends the allocation down the slow path
//! ([`alloc`]): reserves by GFP, then (blocking masks only) direct reclaim
//! through registered shrinkers ([`reclaim`]) and Linux's retry rules.
//!
//! # Locking
//! Per-CPU list (try-lock flag) -> zone lock. Nothing takes a per-CPU list
//! while holding a zone lock. Shrinkers run with no lock held.
//!
//! # Usage in IRQs
//! Every entry point may be called from interrupt context with a
//! non-blocking mask (GFP_ATOMIC, GFP_NOWAIT); the platform lock must then be
//! IRQ-safe. In NMI context every allocation is refused.

pub mod alloc;
pub mod buddy;
mod early;
pub mod frame;
pub mod free;
mod init;
pub mod memmap;
pub mod owner;
pub mod pcp;
pub mod reclaim;
pub mod verify;
pub mod vmstat;
pub mod watermark;
pub mod zone;

pub use frame::{Frame, FrameState};
pub use memmap::{MemoryMapError, Region, RegionKind};
pub use reclaim::{Shrinker, ShrinkerId};
pub use verify::{VerifyError, VerifyReport};
pub use vmstat::VmStatSnapshot;
pub use zone::{Watermark, Zone};

use crate::addr::{Pfn, PhysAddr, VirtAddr};
use crate::context::ContextPolicy;
use crate::gfp::ZoneType;
use crate::platform::Platform;
use frame::Memmap;
use pcp::Pcp;
use vmstat::VmStats;

/// Most NUMA nodes supported.
pub const MAX_NUMNODES: usize = 4;
/// Zone slots: one per node and zone type.
pub const MAX_ZONES: usize = MAX_NUMNODES * 3;
/// Most CPUs supported.
pub const MAX_CPUS: usize = 256;
/// "Any node", Linux's NUMA_NO_NODE.
pub const NUMA_NO_NODE: i32 = -1;

/// Tunables, with Linux's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageConfig {
    /// What to do with a blocking allocation in atomic context.
    pub context_policy: ContextPolicy,
    /// `vm.min_free_kbytes`; `None` sizes it as Linux does (sqrt(16 x lowmem KiB)).
    pub min_free_kbytes: Option<usize>,
    /// `vm.watermark_scale_factor` (in 1/10000 of a zone), default 10.
    pub watermark_scale_factor: usize,
    /// `vm.lowmem_reserve_ratio` for DMA, DMA32, Normal: 256, 256, 32.
    pub lowmem_reserve_ratio: [usize; 3],
    /// Keep per-CPU lists for orders 0..=3 (on by default; off sends every
    /// allocation to the buddy lists, useful to test them).
    pub pcp_lists: bool,
}

impl Default for PageConfig {
    fn default() -> Self {
        PageConfig {
            context_policy: ContextPolicy::Fail,
            min_free_kbytes: None,
            watermark_scale_factor: 10,
            lowmem_reserve_ratio: [256, 256, 32],
            pcp_lists: true,
        }
    }
}

/// Zones to try for one node, in order: the node's own zones from Normal
/// down, then the other nodes' zones.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ZoneList {
    pub(crate) slots: [u8; MAX_ZONES],
    pub(crate) len: u8,
    /// How many of the first entries are on the node itself (`__GFP_THISNODE`).
    pub(crate) local: u8,
}

/// Linux's page allocator over one machine's memory.
pub struct PageAllocator<P: Platform> {
    platform: P,
    config: PageConfig,
    pub(crate) mm: Memmap,
    pub(crate) zones: [Zone<P::Lock>; MAX_ZONES],
    pub(crate) zonelists: [ZoneList; MAX_NUMNODES],
    pub(crate) nr_nodes: usize,
    pub(crate) default_node: usize,
    /// Zone slot the fast path tries first: the default node's highest
    /// populated zone.
    pub(crate) fast_slot: usize,
    /// The fast path's zone is Normal with DMA32 beside it: avoid
    /// fragmenting it (`ALLOC_NOFRAGMENT`) and leave the rest to the general
    /// path.
    pub(crate) fast_nofrag: bool,
    pcp_base: *const Pcp,
    pub(crate) nr_cpus: usize,
    max_pfn: u64,
    /// Pages taken at init for frame records and per-CPU lists.
    memmap_pages: u64,
    pub(crate) shrinkers: lock_api::Mutex<P::Lock, reclaim::ShrinkerSet<P>>,
    pub(crate) stats: VmStats,
    /// Linux's `WARN_ON_ONCE` sites that have fired (bits of
    /// `alloc::OnceSite`).
    pub(crate) warned_once: core::sync::atomic::AtomicU32,
}

// SAFETY: the raw per-CPU pointer refers to memory owned for the allocator's
// life; per-CPU state is guarded by its own flag, everything else is atomics
// or locks.
unsafe impl<P: Platform> Send for PageAllocator<P> {}
unsafe impl<P: Platform> Sync for PageAllocator<P> {}

impl<P: Platform> PageAllocator<P> {
    /// The platform it runs on.
    #[inline]
    pub fn platform(&self) -> &P {
        &self.platform
    }
    /// Its configuration.
    pub fn config(&self) -> &PageConfig {
        &self.config
    }
    pub(crate) fn config_mut(&mut self) -> &mut PageConfig {
        &mut self.config
    }
    /// Sets what happens to blocking allocations in atomic context.
    pub fn set_context_policy(&mut self, policy: ContextPolicy) {
        self.config.context_policy = policy;
    }
    /// One past the highest pfn of RAM.
    pub fn max_pfn(&self) -> u64 {
        self.max_pfn
    }
    /// Number of NUMA nodes with memory.
    pub fn nr_nodes(&self) -> usize {
        self.nr_nodes
    }
    /// Pages used by the frame records and per-CPU lists.
    pub fn memmap_pages(&self) -> u64 {
        self.memmap_pages
    }
    /// The zone of `node` and `ztype` (it may be empty: see
    /// [`Zone::is_populated`]).
    pub fn zone(&self, node: usize, ztype: ZoneType) -> &Zone<P::Lock> {
        &self.zones[node * 3 + ztype.index()]
    }
    /// Every populated zone, node by node, lowest zone first.
    pub fn populated_zones(&self) -> impl Iterator<Item = &Zone<P::Lock>> {
        self.zones.iter().filter(|z| z.is_populated())
    }
    /// The frame record of `pfn`, if RAM sections cover it.
    #[inline]
    pub fn frame(&self, pfn: Pfn) -> Option<&Frame> {
        self.mm.frame(pfn.0)
    }
    /// Linux's `page_is_ram`: `pfn` is a frame of RAM (it has a record and
    /// is not a hole of the memory map).
    pub fn page_is_ram(&self, pfn: Pfn) -> bool {
        self.frame(pfn)
            .is_some_and(|f| f.state() != FrameState::Hole)
    }
    /// Every frame of `[pa, pa + len)` is RAM; false for an empty range and
    /// for one that runs past the top of the address space.
    pub fn range_is_ram(&self, pa: PhysAddr, len: u64) -> bool {
        let Some(end) = len.checked_sub(1).and_then(|l| pa.0.checked_add(l)) else {
            return false;
        };
        let (first, last) = (pa.pfn().0, PhysAddr(end).pfn().0);
        (first..=last).all(|pfn| self.page_is_ram(Pfn(pfn)))
    }
    /// The record of `pfn` if it lies in the memory map's direct run
    /// ([`Self::direct_pfns`]): no section table, as Linux's `vmemmap`.
    /// None elsewhere, where [`Self::frame`] may still find one. The slab's
    /// `kfree` fast path looks up records this way.
    #[inline(always)]
    pub fn frame_direct(&self, pfn: Pfn) -> Option<&Frame> {
        self.mm.frame_direct(pfn.0)
    }
    /// The pfns [`Self::frame_direct`] covers: the largest run of sections
    /// with RAM (of equal runs the highest), whose records the allocator
    /// took in one block at boot. Empty if no run's block fitted.
    pub fn direct_pfns(&self) -> core::ops::Range<Pfn> {
        let (lo, len) = self.mm.direct_run();
        Pfn(lo)..Pfn(lo + len)
    }
    /// Linux's `page_address`: the direct-map address of a frame.
    #[inline]
    pub fn page_address(&self, pfn: Pfn) -> VirtAddr {
        self.platform.phys_to_virt(pfn.phys())
    }
    /// Linux's `virt_to_phys` for direct-map addresses; `None` outside it.
    #[inline]
    pub fn virt_to_phys(&self, va: VirtAddr) -> Option<PhysAddr> {
        let off = va.0.checked_sub(self.platform.direct_map_offset())?;
        ((off as u64) < (self.max_pfn << crate::addr::PAGE_SHIFT)).then_some(PhysAddr(off as u64))
    }
    /// Linux's `virt_to_page`: the frame behind a direct-map address, if it
    /// has a record.
    #[inline]
    pub fn virt_to_page(&self, va: VirtAddr) -> Option<Pfn> {
        let pfn = self.virt_to_phys(va)?.pfn();
        self.mm.frame(pfn.0).map(|_| pfn)
    }
    /// True if `va` lies in the direct map.
    pub fn is_direct_map(&self, va: VirtAddr) -> bool {
        self.virt_to_phys(va).is_some()
    }

    /// Counters, with per-CPU counts summed.
    pub fn vmstat(&self) -> VmStatSnapshot {
        let (a, f) = self.pcp_hit_totals();
        self.stats.snapshot(a, f)
    }

    /// Free pages on buddy lists, all zones.
    pub fn nr_free_pages(&self) -> usize {
        self.zones.iter().map(|z| z.free_pages()).sum()
    }
    /// Free pages anywhere: on the buddy lists and cached on every CPU's
    /// lists (those are taken remotely, so not from an interrupt handler
    /// that may have interrupted a CPU's owner).
    pub fn nr_free_pages_with_pcp(&self) -> usize {
        self.nr_free_pages() + self.pcp_pages()
    }
    /// Pages managed by the buddy allocator, all zones.
    pub fn nr_managed_pages(&self) -> usize {
        self.zones.iter().map(|z| z.managed_pages()).sum()
    }

    /// Pageblocks of each migrate type (Unmovable, Movable, Reclaimable,
    /// HighAtomic, Isolate) in a zone, as pagetypeinfo counts them.
    pub fn pageblock_counts(&self, node: usize, ztype: ZoneType) -> [u64; 5] {
        let z = self.zone(node, ztype);
        let mut counts = [0u64; 5];
        let step = crate::addr::PAGEBLOCK_NR_PAGES;
        // From the zone's first page in pageblock steps, as Linux's
        // pagetypeinfo_showblockcount: a zone that starts inside a block
        // counts that block through its first page.
        let mut pfn = z.start_pfn();
        while pfn < z.start_pfn() + z.spanned_pages() {
            if let Some(f) = self.mm.frame(pfn) {
                if f.zone_slot() == node * 3 + ztype.index() && f.state() != FrameState::Hole {
                    counts[self.pageblock_mt(pfn).min(4)] += 1;
                }
            }
            pfn += step;
        }
        counts
    }

    #[inline(always)]
    pub(crate) fn pcp(&self, cpu: usize, slot: usize) -> &Pcp {
        debug_assert!(cpu < self.nr_cpus && slot < MAX_ZONES);
        // A platform that breaks its contract gets CPU 0's lists (shared:
        // see the callers), never memory past the array.
        let cpu = if cpu < self.nr_cpus { cpu } else { 0 };
        let slot = slot.min(MAX_ZONES - 1);
        // SAFETY: pcp_base holds nr_cpus * MAX_ZONES initialised entries.
        unsafe { &*self.pcp_base.add(cpu * MAX_ZONES + slot) }
    }
}
