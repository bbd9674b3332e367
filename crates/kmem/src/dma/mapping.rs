//! Streaming mappings: `dma_map_*`, `dma_unmap_*`, `dma_sync_*`.
//!
//! A streaming mapping lends a buffer the CPU allocated (kmalloc, pages) to
//! the device for one transfer. It belongs to the device from the map until
//! `dma_sync_*_for_cpu` or the unmap; the CPU must not touch it meanwhile
//! ([`dma_cpu_access`] is the check drivers call before touching it).
//!
//! ```text
//!  map:    buffer phys ─► within dma_mask?  yes ─► bus = phys
//!                                            no ─► swiotlb slot (copy in) ─► bus = slot
//!  sync:   bounced? copy in the direction the sync names; ownership moves
//!  unmap:  bounced? copy back (FROM_DEVICE, BIDIRECTIONAL), free the slots
//! ```
//!
//! `dma_map_single` takes a CPU pointer and so needs the direct map: the
//! device needs one physical run, and a vmalloc pointer names none. It is
//! refused with a report that names the rule and the fix (`dma_map_sg` of
//! its pages, see [`super::sg::sg_table_from_vmalloc`]).
//!
//! `dma_map_sg` maps every entry as above, then merges runs of entries
//! whose bus addresses follow each other (none bounced) into one DMA
//! segment, up to the device's `max_segment_size` and without crossing its
//! segment boundary; it returns the number of segments, which may be fewer
//! than the entries. The segments are written to the first entries'
//! `dma_address`/`dma_length`; a `dma_length` of 0 ends them.
//! `dma_unmap_sg` and the sg syncs take the same entries given to the map.
//!
//! Every function is `#[track_caller]`: debug reports name the driver line
//! that made the call.

use super::debug::{Entry, MapType, Violation};
use super::device::{dma_addressing_limited, dma_capable, phys_to_dma, Device};
use super::sg::{Scatterlist, SgTable};
use super::swiotlb::SWIOTLB_MAX_MAPPING;
use super::{DmaAddr, DmaDirection, DmaError, OverflowReason, DMA_MAPPING_ERROR};
use crate::addr::{Pfn, PhysAddr, VirtAddr};
use crate::platform::Platform;
use core::panic::Location;

/// Why a page and offset whose address does not fit in 64 bits is refused.
const BEYOND_PHYS: &str = "the page and offset lie beyond the 64-bit physical address space";

/// Checks that `[pa, pa + size)` is RAM.
fn check_ram<P: Platform>(dev: &Device<'_, P>, pa: PhysAddr, size: usize) -> Result<(), DmaError> {
    if dev.dma().pages.range_is_ram(pa, size as u64) {
        Ok(())
    } else {
        Err(DmaError::NotRam { phys: pa, size })
    }
}

/// Maps `[pa, pa + size)` for `dev`: its own bus address if the device
/// reaches it, else a bounce buffer. Returns the bus address and whether it
/// bounced. Records nothing in the debug tables.
pub(crate) fn map_phys<P: Platform>(
    dev: &Device<'_, P>,
    pa: PhysAddr,
    size: usize,
    dir: DmaDirection,
) -> Result<(DmaAddr, bool), DmaError> {
    if !dir.is_valid() {
        return Err(DmaError::InvalidDirection);
    }
    if size == 0 {
        return Err(DmaError::ZeroSize);
    }
    if size > u32::MAX as usize {
        return Err(DmaError::InvalidArgument(
            "a single mapping is at most 4 GiB - 1",
        ));
    }
    check_ram(dev, pa, size)?;
    let dma = dev.dma();
    let bus = phys_to_dma(pa);
    let mask = dev.dma_mask();
    if !dma.config.swiotlb_force && dma_capable(mask, bus, size) {
        return Ok((bus, false));
    }
    let overflow = |reason| {
        let e = DmaError::Overflow {
            addr: bus,
            size,
            mask,
            reason,
        };
        dma.pages
            .platform()
            .warn(format_args!("{} {}: {e}", dev.driver(), dev.name()));
        e
    };
    if !dma.swiotlb.is_active() {
        return Err(overflow(OverflowReason::NoSwiotlb));
    }
    if size > SWIOTLB_MAX_MAPPING {
        return Err(overflow(OverflowReason::TooLarge));
    }
    let tlb = dma
        .swiotlb
        .map(
            pa,
            size,
            dir,
            dev.segment_boundary(),
            dma.pages.platform().cpu_id(),
        )
        .inspect_err(|e| {
            dma.pages.platform().warn(format_args!(
                "{} {}: swiotlb: {e}",
                dev.driver(),
                dev.name()
            ));
        })?;
    if !dma_capable(mask, phys_to_dma(tlb), size) {
        dma.swiotlb.discard(tlb);
        return Err(overflow(OverflowReason::PoolBeyondMask));
    }
    Ok((phys_to_dma(tlb), true))
}

fn map_single_at<P: Platform>(
    dev: &Device<'_, P>,
    pa: PhysAddr,
    size: usize,
    dir: DmaDirection,
    site: &'static Location<'static>,
) -> Result<DmaAddr, DmaError> {
    let (bus, bounced) = map_phys(dev, pa, size, dir)?;
    let dma = dev.dma();
    let e = Entry::new(dev.id(), MapType::Single, bus, pa.0, size, dir, site).bounced(bounced);
    dma.debug.add(dma.pages, e);
    Ok(bus)
}

/// Undoes the mapping at `bus`: checks it against the debug entry, copies a
/// bounce buffer back and frees its slots.
fn unmap_at<P: Platform>(
    dev: &Device<'_, P>,
    bus: DmaAddr,
    size: usize,
    dir: DmaDirection,
    kind: MapType,
    sg_count: Option<usize>,
    site: &'static Location<'static>,
) -> Result<(), DmaError> {
    let dma = dev.dma();
    let (entry, report) = dma
        .debug
        .check_unmap(dev, bus, size, dir, kind, None, sg_count, site);
    match entry {
        Some(e) if e.is_bounced() => {
            dma.swiotlb.unmap(PhysAddr(bus.0));
        }
        Some(_) => {}
        None if report.is_some() => {}
        None => {
            // Not tracked (debugging off): the pool's records decide.
            let pa = PhysAddr(bus.0);
            if dma.swiotlb.is_swiotlb_buffer(pa) && dma.swiotlb.unmap(pa).is_none() {
                dma.pages.platform().warn(format_args!(
                    "{} {}: swiotlb: unmap of {bus}, which is not the start of a bounced mapping (at {site})",
                    dev.driver(),
                    dev.name()
                ));
                return Err(DmaError::InvalidArgument(
                    "unmap of a swiotlb address that starts no mapping",
                ));
            }
        }
    }
    match report {
        Some(r) => Err(DmaError::Api(r)),
        None => Ok(()),
    }
}

fn sync_at<P: Platform>(
    dev: &Device<'_, P>,
    bus: DmaAddr,
    size: usize,
    dir: DmaDirection,
    for_cpu: bool,
    site: &'static Location<'static>,
) -> Result<(), DmaError> {
    // Linux: BUG_ON(!valid_dma_direction(dir)); a DMA_NONE sync would copy
    // nothing and lose the device's bytes silently.
    if !dir.is_valid() {
        return Err(DmaError::InvalidDirection);
    }
    let dma = dev.dma();
    let checked = dma.debug.check_sync(dev, bus, size, dir, for_cpu, site);
    if let Err(r) = checked {
        if r.violation == super::debug::Violation::SyncNotMapped {
            return Err(DmaError::Api(r));
        }
    }
    let pa = PhysAddr(bus.0);
    if dma.swiotlb.is_swiotlb_buffer(pa) {
        dma.swiotlb.sync(pa, size, dir, for_cpu);
    }
    checked.map(|_| ()).map_err(DmaError::Api)
}

/// Linux's `dma_map_single`: maps `size` bytes at the CPU address `ptr` (a
/// direct-map address: kmalloc, page allocator) for the device.
///
/// Memory outside the direct map (vmalloc, vmap) is refused with
/// [`DmaError::Api`] naming the rule and the fix. A buffer beyond the DMA
/// mask is bounced through swiotlb (at most 256 KiB).
#[track_caller]
pub fn dma_map_single<P: Platform>(
    dev: &Device<'_, P>,
    ptr: *const u8,
    size: usize,
    dir: DmaDirection,
) -> Result<DmaAddr, DmaError> {
    let site = Location::caller();
    let dma = dev.dma();
    let va = ptr as usize;
    let end = va.wrapping_add(size.saturating_sub(1));
    let pa = dma.pages.virt_to_phys(VirtAddr(va));
    if pa.is_none() || dma.pages.virt_to_phys(VirtAddr(end)).is_none() || end < va {
        let v = super::debug::Violation::MapNotDirect {
            addr: va,
            len: size,
            vmalloc: dma.is_vmalloc_addr(va),
        };
        return Err(DmaError::Api(dma.debug.report(
            dev,
            v,
            DMA_MAPPING_ERROR,
            size,
            site,
            None,
        )));
    }
    map_single_at(dev, pa.unwrap_or_default(), size, dir, site)
}

/// Linux's `dma_map_page`: maps `size` bytes from `offset` into the frame
/// `page` (they may run on into the following frames of the same block).
#[track_caller]
pub fn dma_map_page<P: Platform>(
    dev: &Device<'_, P>,
    page: Pfn,
    offset: usize,
    size: usize,
    dir: DmaDirection,
) -> Result<DmaAddr, DmaError> {
    let pa = page
        .checked_phys()
        .and_then(|p| p.0.checked_add(offset as u64))
        .ok_or(DmaError::InvalidArgument(BEYOND_PHYS))?;
    map_single_at(dev, PhysAddr(pa), size, dir, Location::caller())
}

/// Linux's `dma_unmap_single`: undoes [`dma_map_single`]. `size` and `dir`
/// must be those of the map.
///
/// With debugging on, an address the device has not mapped (double unmap)
/// is refused and reported; another size, direction or type is reported
/// and the mapping undone with its recorded size and direction (so no
/// bounce slot is lost and no byte copied wrongly).
#[track_caller]
pub fn dma_unmap_single<P: Platform>(
    dev: &Device<'_, P>,
    addr: DmaAddr,
    size: usize,
    dir: DmaDirection,
) -> Result<(), DmaError> {
    unmap_at(
        dev,
        addr,
        size,
        dir,
        MapType::Single,
        None,
        Location::caller(),
    )
}

/// Linux's `dma_unmap_page`: undoes [`dma_map_page`] (same rules as
/// [`dma_unmap_single`]).
#[track_caller]
pub fn dma_unmap_page<P: Platform>(
    dev: &Device<'_, P>,
    addr: DmaAddr,
    size: usize,
    dir: DmaDirection,
) -> Result<(), DmaError> {
    dma_unmap_single(dev, addr, size, dir)
}

/// Linux's `dma_sync_single_for_cpu`: the CPU takes the buffer back (for a
/// bounced mapping synced `DMA_FROM_DEVICE`/`DMA_BIDIRECTIONAL`, the
/// device's bytes are copied to it; the sync's direction decides, as in
/// Linux). `addr` may point inside the mapping.
///
/// A sync of an unmapped address is refused and reported; a sync past the
/// mapping or in another direction is reported and done within the mapping.
#[track_caller]
pub fn dma_sync_single_for_cpu<P: Platform>(
    dev: &Device<'_, P>,
    addr: DmaAddr,
    size: usize,
    dir: DmaDirection,
) -> Result<(), DmaError> {
    sync_at(dev, addr, size, dir, true, Location::caller())
}

/// Linux's `dma_sync_single_for_device`: the device gets the buffer back
/// (for a bounced mapping synced `DMA_TO_DEVICE`/`DMA_BIDIRECTIONAL`, the
/// CPU's bytes are copied to the bounce buffer).
#[track_caller]
pub fn dma_sync_single_for_device<P: Platform>(
    dev: &Device<'_, P>,
    addr: DmaAddr,
    size: usize,
    dir: DmaDirection,
) -> Result<(), DmaError> {
    sync_at(dev, addr, size, dir, false, Location::caller())
}

/// Linux's `dma_sync_single_range_for_cpu`: `size` bytes at `offset` into
/// the mapping at `addr`.
#[track_caller]
pub fn dma_sync_single_range_for_cpu<P: Platform>(
    dev: &Device<'_, P>,
    addr: DmaAddr,
    offset: usize,
    size: usize,
    dir: DmaDirection,
) -> Result<(), DmaError> {
    dma_sync_single_for_cpu(dev, addr.add(offset as u64), size, dir)
}

/// Linux's `dma_sync_single_range_for_device`.
#[track_caller]
pub fn dma_sync_single_range_for_device<P: Platform>(
    dev: &Device<'_, P>,
    addr: DmaAddr,
    offset: usize,
    size: usize,
    dir: DmaDirection,
) -> Result<(), DmaError> {
    dma_sync_single_for_device(dev, addr.add(offset as u64), size, dir)
}

/// Linux's `dma_mapping_error`: true for [`DMA_MAPPING_ERROR`], the address
/// callers keeping Linux's convention store for a failed map
/// (`map(..).unwrap_or(DMA_MAPPING_ERROR)`).
pub fn dma_mapping_error<P: Platform>(_dev: &Device<'_, P>, addr: DmaAddr) -> bool {
    addr == DMA_MAPPING_ERROR
}

/// Linux's `dma_max_mapping_size`: the largest streaming mapping that is
/// sure to work. 256 KiB (one swiotlb segment) for a device whose mask does
/// not cover all RAM (or with `swiotlb_force`), unlimited otherwise.
pub fn dma_max_mapping_size<P: Platform>(dev: &Device<'_, P>) -> usize {
    let dma = dev.dma();
    if dma.swiotlb.is_active() && (dma.config.swiotlb_force || dma_addressing_limited(dev)) {
        SWIOTLB_MAX_MAPPING
    } else {
        usize::MAX
    }
}

/// The debug hook drivers call before the CPU touches `len` bytes at `addr`
/// (a direct-map address): reports, and returns [`DmaError::Api`], if a
/// streaming mapping of `dev` over those bytes is owned by the device (no
/// `dma_sync_*_for_cpu` or unmap since the map or the last
/// `sync_for_device`). Coherent memory may always be touched. For vmalloc
/// buffers use [`super::sg::dma_cpu_access_vmalloc`].
#[track_caller]
pub fn dma_cpu_access<P: Platform>(
    dev: &Device<'_, P>,
    addr: *const u8,
    len: usize,
) -> Result<(), DmaError> {
    let Some(pa) = dev.dma().pages.virt_to_phys(VirtAddr(addr as usize)) else {
        return Err(DmaError::InvalidArgument(
            "dma_cpu_access of an address outside the direct map (use dma_cpu_access_vmalloc)",
        ));
    };
    cpu_access_phys(dev, pa, len, addr as usize, Location::caller())
}

pub(crate) fn cpu_access_phys<P: Platform>(
    dev: &Device<'_, P>,
    pa: PhysAddr,
    len: usize,
    cpu_addr: usize,
    site: &'static Location<'static>,
) -> Result<(), DmaError> {
    dev.dma()
        .debug
        .check_cpu_access(dev, pa.0, len.max(1), cpu_addr, site)
        .map_err(DmaError::Api)
}

/// Linux's `dma_map_sg`: maps every entry of `sgl` and merges physically
/// adjacent ones; returns the number of DMA segments (at most
/// `sgl.len()`), found in the first entries' `dma_address`/`dma_length`.
/// On failure nothing stays mapped.
#[track_caller]
pub fn dma_map_sg<P: Platform>(
    dev: &Device<'_, P>,
    sgl: &mut [Scatterlist],
    dir: DmaDirection,
) -> Result<usize, DmaError> {
    map_sg_at(dev, sgl, dir, Location::caller())
}

fn map_sg_at<P: Platform>(
    dev: &Device<'_, P>,
    sgl: &mut [Scatterlist],
    dir: DmaDirection,
    site: &'static Location<'static>,
) -> Result<usize, DmaError> {
    if sgl.is_empty() {
        return Err(DmaError::InvalidArgument("dma_map_sg of an empty list"));
    }
    let dma = dev.dma();
    for i in 0..sgl.len() {
        let s = &sgl[i];
        let mapped = s
            .checked_phys()
            .ok_or(DmaError::InvalidArgument(BEYOND_PHYS))
            .and_then(|pa| map_phys(dev, pa, s.length as usize, dir));
        match mapped {
            Ok((bus, bounced)) => {
                let s = &mut sgl[i];
                s.dma_address = bus;
                s.dma_length = s.length;
                s.set_bounced(bounced);
            }
            Err(e) => {
                for s in &mut sgl[..i] {
                    if s.is_bounced() {
                        dma.swiotlb.discard(PhysAddr(s.dma_address.0));
                    }
                    s.clear_dma();
                }
                return Err(e);
            }
        }
    }
    // Merge in place: segment k is written to entry k <= the entry read.
    let max_seg = dev.max_segment_size() as u64;
    let boundary = dev.segment_boundary();
    let n = sgl.len();
    let mut k = 0;
    let mut cur = (
        sgl[0].dma_address.0,
        sgl[0].dma_length as u64,
        sgl[0].is_bounced(),
        sgl[0].phys().0,
    );
    for i in 1..=n {
        let next = (i < n).then(|| {
            (
                sgl[i].dma_address.0,
                sgl[i].dma_length as u64,
                sgl[i].is_bounced(),
                sgl[i].phys().0,
            )
        });
        if let Some((b, l, bb, pa)) = next {
            let merge = !cur.2
                && !bb
                && cur.0 + cur.1 == b
                && cur.1 + l <= max_seg
                && (cur.0 ^ (b + l - 1)) & !boundary == 0;
            if merge {
                cur.1 += l;
                continue;
            }
            emit(dev, &mut sgl[k], cur, dir, n, site);
            k += 1;
            cur = (b, l, bb, pa);
        } else {
            emit(dev, &mut sgl[k], cur, dir, n, site);
            k += 1;
        }
    }
    for s in &mut sgl[k..] {
        s.clear_dma();
    }
    for s in &sgl[..k] {
        dma.debug.set_sg_counts(dev.id(), s.dma_address, n, k);
    }
    Ok(k)
}

fn emit<P: Platform>(
    dev: &Device<'_, P>,
    s: &mut Scatterlist,
    seg: (u64, u64, bool, u64),
    dir: DmaDirection,
    nents: usize,
    site: &'static Location<'static>,
) {
    let (bus, len, bounced, pa) = seg;
    s.dma_address = DmaAddr(bus);
    s.dma_length = len as u32;
    s.set_bounced(bounced);
    let dma = dev.dma();
    if dma.debug.enabled() {
        // Linux's check_sg_segment: a segment the device cannot take whole
        // (an entry longer than its limit, or across its boundary, which
        // no merge made) is reported and mapped anyway.
        let max = dev.max_segment_size();
        let boundary = dev.segment_boundary();
        let violation = if len > max as u64 {
            Some(Violation::SgSegmentTooLong { max })
        } else if len > 0 && (bus ^ (bus + len - 1)) & !boundary != 0 {
            Some(Violation::SgSegmentAcrossBoundary { boundary })
        } else {
            None
        };
        if let Some(v) = violation {
            dma.debug
                .report(dev, v, DmaAddr(bus), len as usize, site, None);
        }
    }
    let mut e = Entry::new(
        dev.id(),
        MapType::Sg,
        DmaAddr(bus),
        pa,
        len as usize,
        dir,
        site,
    )
    .bounced(bounced);
    e.sg_call_ents = nents as u32;
    dma.debug.add(dma.pages, e);
}

/// Linux's `dma_unmap_sg`: undoes [`dma_map_sg`]; `sgl` must be the entries
/// given to the map (not just the segments). Bounced segments are copied
/// back. The first rule broken is returned; every segment is still undone.
#[track_caller]
pub fn dma_unmap_sg<P: Platform>(
    dev: &Device<'_, P>,
    sgl: &mut [Scatterlist],
    dir: DmaDirection,
) -> Result<(), DmaError> {
    unmap_sg_at(dev, sgl, dir, Location::caller())
}

/// Runs `f` on every DMA segment of a mapped list (up to the first
/// `dma_length` of 0); returns the first error, after running on all.
fn for_each_segment(
    sgl: &[Scatterlist],
    mut f: impl FnMut(&Scatterlist) -> Result<(), DmaError>,
) -> Result<(), DmaError> {
    let mut first = Ok(());
    for s in sgl.iter().take_while(|s| s.dma_length != 0) {
        let r = f(s);
        if first.is_ok() {
            first = r;
        }
    }
    first
}

/// Unmaps every segment of the entries `sgl` given to the map.
fn unmap_sg_at<P: Platform>(
    dev: &Device<'_, P>,
    sgl: &[Scatterlist],
    dir: DmaDirection,
    site: &'static Location<'static>,
) -> Result<(), DmaError> {
    let n = sgl.len();
    if sgl.first().is_none_or(|s| s.dma_length == 0) {
        // No segment: the list was never mapped (or is unmapped already).
        // With debugging, the check of its first entry reports it, as
        // Linux's debug_dma_unmap_sg does; nothing is undone either way.
        let dma = dev.dma();
        let (bus, len) = sgl
            .first()
            .map_or((DmaAddr(0), 0), |s| (s.dma_address, s.length as usize));
        if let (_, Some(r)) =
            dma.debug
                .check_unmap(dev, bus, len, dir, MapType::Sg, None, Some(n), site)
        {
            return Err(DmaError::Api(r));
        }
        return Ok(());
    }
    for_each_segment(sgl, |s| {
        let (bus, len) = (s.dma_address, s.dma_length as usize);
        unmap_at(dev, bus, len, dir, MapType::Sg, Some(n), site)
    })
}

fn sync_sg_at<P: Platform>(
    dev: &Device<'_, P>,
    sgl: &[Scatterlist],
    dir: DmaDirection,
    for_cpu: bool,
    site: &'static Location<'static>,
) -> Result<(), DmaError> {
    let n = sgl.len();
    for_each_segment(sgl, |s| {
        let (bus, len) = (s.dma_address, s.dma_length as usize);
        let synced = sync_at(dev, bus, len, dir, for_cpu, site);
        match dev.dma().debug.check_sg_sync_count(dev, bus, len, n, site) {
            Some(r) if synced.is_ok() => Err(DmaError::Api(r)),
            _ => synced,
        }
    })
}

/// Linux's `dma_sync_sg_for_cpu`: every segment of a [`dma_map_sg`]
/// mapping, as [`dma_sync_single_for_cpu`].
#[track_caller]
pub fn dma_sync_sg_for_cpu<P: Platform>(
    dev: &Device<'_, P>,
    sgl: &[Scatterlist],
    dir: DmaDirection,
) -> Result<(), DmaError> {
    sync_sg_at(dev, sgl, dir, true, Location::caller())
}

/// Linux's `dma_sync_sg_for_device`.
#[track_caller]
pub fn dma_sync_sg_for_device<P: Platform>(
    dev: &Device<'_, P>,
    sgl: &[Scatterlist],
    dir: DmaDirection,
) -> Result<(), DmaError> {
    sync_sg_at(dev, sgl, dir, false, Location::caller())
}

/// Linux's `dma_map_sgtable`: [`dma_map_sg`] of the table's entries,
/// recording the segment count in the table.
#[track_caller]
pub fn dma_map_sgtable<P: Platform>(
    dev: &Device<'_, P>,
    sgt: &mut SgTable<'_, P>,
    dir: DmaDirection,
) -> Result<usize, DmaError> {
    let n = map_sg_at(dev, sgt.entries_mut(), dir, Location::caller())?;
    sgt.set_nents(n);
    Ok(n)
}

/// Linux's `dma_unmap_sgtable`.
#[track_caller]
pub fn dma_unmap_sgtable<P: Platform>(
    dev: &Device<'_, P>,
    sgt: &mut SgTable<'_, P>,
    dir: DmaDirection,
) -> Result<(), DmaError> {
    let r = unmap_sg_at(dev, sgt.entries(), dir, Location::caller());
    sgt.set_nents(0);
    r
}
