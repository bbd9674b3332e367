//! Bringing the page allocator up from a firmware memory map.
//!
//! 1. Validate the map and size the section table.
//! 2. Take memory for the section table, the frame records of every section
//!    that has RAM (one block per run of such sections where it fits, the
//!    largest run then indexed directly), and the per-CPU lists, top-down
//!    from usable RAM.
//! 3. Initialise every record (hole, reserved, zone and node), every pageblock
//!    as Movable (as Linux boots), and the zone spans.
//! 4. Free each usable range, minus what step 2 took, into the buddy lists in
//!    the largest aligned blocks, merging as it goes.
//! 5. Size watermarks, lowmem reserves, per-CPU batches and zonelists.

use super::early::EarlyAlloc;
use super::frame::{FrameState, Memmap, PAGES_PER_SECTION};
use super::memmap::{validate, MemoryMapError, Region, RegionKind};
use super::pcp::Pcp;
use super::vmstat::VmStats;
use super::zone::Zone;
use super::{PageAllocator, PageConfig, ZoneList, MAX_CPUS, MAX_NUMNODES, MAX_ZONES};
use crate::addr::{PhysAddr, MAX_PAGE_ORDER, PAGEBLOCK_NR_PAGES, PAGE_SIZE};
use crate::gfp::{MigrateType, ZoneType};
use crate::platform::Platform;
use core::mem::size_of;
use core::sync::atomic::Ordering::Relaxed;

/// The zone type of a pfn, by address.
pub(crate) fn zone_of_pfn(pfn: u64) -> ZoneType {
    let pa = pfn * PAGE_SIZE as u64;
    if pa < ZoneType::Dma.limit() {
        ZoneType::Dma
    } else if pa < ZoneType::Dma32.limit() {
        ZoneType::Dma32
    } else {
        ZoneType::Normal
    }
}

fn pages_for(bytes: usize) -> u64 {
    bytes.div_ceil(PAGE_SIZE) as u64
}

impl<P: Platform> PageAllocator<P> {
    /// Builds the allocator over `regions` (sorted, disjoint; gaps are holes).
    ///
    /// # Safety-relevant contract
    /// The platform's direct map must cover every region, read-write; kmem
    /// writes its frame records into usable RAM.
    pub fn new(
        platform: P,
        regions: &[Region],
        config: PageConfig,
    ) -> Result<Self, MemoryMapError> {
        validate(regions, MAX_NUMNODES)?;
        let nr_cpus = platform.nr_cpus().clamp(1, MAX_CPUS);
        let max_pfn = regions.iter().map(|r| r.pfns().1 .0).max().unwrap_or(0);
        let nr_sections = max_pfn.div_ceil(PAGES_PER_SECTION) as usize;
        let mut early = EarlyAlloc::new(regions);
        let va = |pfn: u64| platform.phys_to_virt(PhysAddr(pfn * PAGE_SIZE as u64)).0;

        // Section table, and the frame records of every section with RAM:
        // one block per run of such sections when the region being carved
        // holds it, so that the records of the run lie in pfn order and the
        // largest run is indexed without the table (`Memmap::frame_direct`).
        let table_pfn = early.alloc(pages_for(nr_sections * size_of::<usize>()))?;
        let table = va(table_pfn) as *mut usize;
        let has_ram = |s: usize| {
            let (lo, hi) = (
                s as u64 * PAGES_PER_SECTION,
                (s as u64 + 1) * PAGES_PER_SECTION,
            );
            regions.iter().any(|r| {
                let (a, b) = r.pfns();
                a.0 < hi && b.0 > lo
            })
        };
        let section_bytes = PAGES_PER_SECTION as usize * size_of::<super::Frame>();
        // The direct run so far: address of its first record, its first
        // section, its sections.
        let (mut flat_base, mut flat_first, mut flat_sections) = (0usize, 0usize, 0usize);
        let mut s = 0;
        while s < nr_sections {
            if !has_ram(s) {
                // SAFETY: table has nr_sections words in usable RAM.
                unsafe { table.add(s).write(0) };
                s += 1;
                continue;
            }
            let mut end = s + 1;
            while end < nr_sections && has_ram(end) {
                end += 1;
            }
            let run_pages = pages_for(section_bytes) * (end - s) as u64;
            // Sections of the run in one block, or (no room for it in the
            // region being carved) one block each.
            let step = if early.fits(run_pages) { end - s } else { 1 };
            let mut first = s;
            while first < end {
                let last = (first + step).min(end);
                let pfn = early.alloc(pages_for(section_bytes) * (last - first) as u64)?;
                let block = va(pfn);
                for k in first..last {
                    let entry = block + (k - first) * section_bytes;
                    let frames = entry as *mut super::Frame;
                    for i in 0..PAGES_PER_SECTION as usize {
                        // SAFETY: the range was just taken from usable RAM,
                        // which the direct map covers read-write; Frame is
                        // plain atomics.
                        unsafe { frames.add(i).write(core::mem::zeroed()) };
                    }
                    // SAFETY: table has nr_sections words in usable RAM.
                    unsafe { table.add(k).write(entry) };
                }
                // The largest run; of equal ones the highest, where the
                // Normal zone (kernel allocations' first choice) lies.
                if last - first >= flat_sections {
                    (flat_base, flat_first, flat_sections) = (block, first, last - first);
                }
                first = last;
            }
            s = end;
        }
        // SAFETY: every table entry is 0 or an initialised frame array, and
        // the `flat_sections` sections from `flat_first` have theirs in one
        // block from `flat_base`, in order.
        let mm = unsafe {
            Memmap::new(
                table,
                nr_sections,
                flat_base,
                flat_first as u64 * PAGES_PER_SECTION,
                flat_sections as u64 * PAGES_PER_SECTION,
            )
        };

        // Per-CPU lists.
        let pcp_count = nr_cpus * MAX_ZONES;
        let pcp_pfn = early.alloc(pages_for(pcp_count * size_of::<Pcp>()))?;
        let pcp_base = va(pcp_pfn) as *mut Pcp;
        for i in 0..pcp_count {
            // SAFETY: as above; Pcp::new is a valid value.
            unsafe { pcp_base.add(i).write(Pcp::new()) };
        }

        // Records: holes by default, then RAM as reserved, with zone and node.
        for s in 0..nr_sections {
            for i in 0..PAGES_PER_SECTION {
                let pfn = s as u64 * PAGES_PER_SECTION + i;
                if let Some(f) = mm.frame(pfn) {
                    f.init_meta(zone_of_pfn(pfn).index(), 0);
                    f.set(FrameState::Hole, 0, 0, 0);
                    if pfn.is_multiple_of(PAGEBLOCK_NR_PAGES) {
                        f.set_pageblock_mt(MigrateType::Movable.index());
                    }
                }
            }
        }
        let mut nodes_seen = [false; MAX_NUMNODES];
        for r in regions {
            let (a, b) = r.pfns();
            nodes_seen[r.node as usize] |= b.0 > a.0;
            for pfn in a.0..b.0 {
                let f = mm.frame_unchecked(pfn);
                f.init_meta(zone_of_pfn(pfn).index(), r.node as usize);
                f.set(FrameState::Reserved, 0, 0, 0);
            }
        }

        let mut zones: [Zone<P::Lock>; MAX_ZONES] = core::array::from_fn(|slot| {
            Zone::new(slot / 3, ZoneType::from_index(slot % 3).unwrap())
        });
        for r in regions {
            let (a, b) = r.pfns();
            for z in ZoneType::ALL {
                let lo = a.0.max(zone_start(z));
                let hi = b.0.min(zone_end(z));
                if lo >= hi {
                    continue;
                }
                if r.kind != RegionKind::Usable {
                    continue; // Linux counts firmware-reserved ranges as holes
                }
                let zone = &mut zones[r.node as usize * 3 + z.index()];
                let end = if zone.spanned == 0 {
                    hi
                } else {
                    (zone.start_pfn + zone.spanned).max(hi)
                };
                zone.start_pfn = if zone.spanned == 0 {
                    lo
                } else {
                    zone.start_pfn.min(lo)
                };
                zone.spanned = end - zone.start_pfn;
                zone.present += hi - lo;
            }
        }

        let nr_nodes = nodes_seen.iter().rposition(|&s| s).map_or(1, |n| n + 1);
        let default_node = nodes_seen.iter().position(|&s| s).unwrap_or(0);
        let pa = PageAllocator {
            platform,
            config,
            mm,
            zones,
            zonelists: core::array::from_fn(|n| build_zonelist(n, nr_nodes)),
            nr_nodes,
            default_node,
            fast_slot: default_node * 3 + 2,
            fast_nofrag: false,
            pcp_base,
            nr_cpus,
            max_pfn,
            memmap_pages: early.pages_taken(),
            shrinkers: lock_api::Mutex::new(super::reclaim::ShrinkerSet::new()),
            stats: VmStats::default(),
            warned_once: core::sync::atomic::AtomicU32::new(0),
        };

        // Hand usable RAM to the buddy lists.
        for r in regions.iter().filter(|r| r.kind == RegionKind::Usable) {
            let (a, b) = r.pfns();
            early.for_each_free(a.0, b.0, |lo, hi| pa.free_range_at_boot(lo, hi));
        }
        let mut pa = pa;
        pa.fast_slot = (0..3)
            .rev()
            .map(|z| default_node * 3 + z)
            .find(|&s| pa.zones[s].is_populated())
            .unwrap_or(0);
        pa.fast_nofrag = pa.fast_slot % 3 == 2 && pa.zones[pa.fast_slot - 1].is_populated();
        pa.setup_watermarks();
        pa.setup_pcp();
        Ok(pa)
    }

    /// Frees `[lo, hi)` into the buddy lists in maximal aligned blocks.
    fn free_range_at_boot(&self, lo: u64, hi: u64) {
        for pfn in lo..hi {
            self.mm.frame_unchecked(pfn).set(FrameState::Tail, 0, 0, 0);
        }
        let mut pfn = lo;
        while pfn < hi {
            let mut order = pfn.trailing_zeros().min(MAX_PAGE_ORDER);
            while pfn + (1 << order) > hi {
                order -= 1;
            }
            let slot = self.mm.frame_unchecked(pfn).zone_slot();
            let zone = &self.zones[slot];
            zone.managed.fetch_add(1 << order, Relaxed);
            let mut area = zone.area.lock();
            self.free_one_page(&mut area, pfn, order);
            zone.publish(&area);
            pfn += 1 << order;
        }
    }
}

fn zone_start(z: ZoneType) -> u64 {
    match z {
        ZoneType::Dma => 0,
        ZoneType::Dma32 => ZoneType::Dma.limit() / PAGE_SIZE as u64,
        ZoneType::Normal => ZoneType::Dma32.limit() / PAGE_SIZE as u64,
    }
}

fn zone_end(z: ZoneType) -> u64 {
    match z {
        ZoneType::Normal => u64::MAX,
        _ => z.limit() / PAGE_SIZE as u64,
    }
}

/// Node `n`'s zones from Normal down, then every other node's.
fn build_zonelist(n: usize, nr_nodes: usize) -> ZoneList {
    let mut zl = ZoneList {
        slots: [0; MAX_ZONES],
        len: 0,
        local: 0,
    };
    let nodes = core::iter::once(n).chain((0..nr_nodes.max(n + 1)).filter(move |&m| m != n));
    for node in nodes {
        for z in (0..3).rev() {
            zl.slots[zl.len as usize] = (node * 3 + z) as u8;
            zl.len += 1;
        }
        if node == n {
            zl.local = zl.len;
        }
    }
    zl
}
