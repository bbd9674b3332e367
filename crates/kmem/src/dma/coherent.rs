//! Coherent (consistent) DMA memory: `dma_alloc_coherent`.
//!
//! Memory both the CPU and the device may touch at any time without syncs,
//! as descriptor rings and mailboxes need. On x86-64 every mapping is cache
//! coherent, so this is pages, chosen so that the device can reach them:
//!
//! - a block of `2^get_order(size)` pages, so naturally aligned to the page
//!   order of the size (a 12 KiB request is 16 KiB aligned), zeroed;
//! - from the zone the *coherent* mask implies ([`dma_zone_for_mask`]):
//!   ZONE_DMA for masks up to 24 bits, ZONE_DMA32 up to 32 bits, else any;
//! - the block is accepted if its first `PAGE_ALIGN(size)` bytes lie within
//!   the mask ([`dma_coherent_ok`], as Linux's `dma_direct_alloc` checks the
//!   page-aligned size, not the whole power-of-two block): a 12 KiB request
//!   may end 4 KiB below the mask's end while its 16 KiB block pokes past
//!   it;
//! - if the block still lands beyond the mask (a 30-bit mask served from
//!   ZONE_DMA32), it is given back and the next lower zone tried, as Linux's
//!   `__dma_direct_alloc_pages` does. Coherent memory is never bounced.
//!
//! The head frame is tagged [`super::OWNER_DMA_COHERENT`]; with debugging on
//! the allocation is an entry of type coherent, and `dma_free_coherent` is
//! checked against it (address, size, CPU address, type).

use super::debug::{Entry, MapType};
use super::device::{dma_capable, phys_to_dma, Device};
use super::{DmaAddr, DmaError, OverflowReason, DMA_BIDIRECTIONAL, OWNER_DMA_COHERENT};
use crate::addr::{get_order, PhysAddr, MAX_PAGE_ORDER, PAGE_SIZE};
use crate::error::AllocError;
use crate::gfp::{Gfp, ZoneType};
use crate::page::{FrameState, NUMA_NO_NODE};
use crate::platform::Platform;
use core::panic::Location;
use core::ptr::NonNull;

/// The zone a coherent allocation for `mask` is tried in first: DMA for
/// masks up to 24 bits, DMA32 up to 32 bits, else Normal (with the usual
/// fallback to lower zones).
pub const fn dma_zone_for_mask(mask: u64) -> ZoneType {
    if mask <= super::dma_bit_mask(24) {
        ZoneType::Dma
    } else if mask <= super::dma_bit_mask(32) {
        ZoneType::Dma32
    } else {
        ZoneType::Normal
    }
}

/// Linux's `dma_coherent_ok`: can a device whose coherent mask is `mask`
/// reach `size` bytes of coherent memory at `phys` (`phys + size - 1 <=
/// mask`)? `dma_alloc_coherent` asks it with the page-aligned request size.
pub const fn dma_coherent_ok(mask: u64, phys: PhysAddr, size: usize) -> bool {
    dma_capable(mask, phys_to_dma(phys), size)
}

/// Linux's `dma_alloc_coherent`: `size` bytes of zeroed memory the device
/// reaches at the returned bus address and the CPU at the returned pointer.
/// `gfp`'s zone modifiers are ignored (the mask decides); its other bits
/// (may it sleep?) are honoured.
#[track_caller]
pub fn dma_alloc_coherent<P: Platform>(
    dev: &Device<'_, P>,
    size: usize,
    gfp: Gfp,
) -> Result<(NonNull<u8>, DmaAddr), DmaError> {
    alloc_coherent_at(dev, size, gfp, Location::caller())
}

pub(crate) fn alloc_coherent_at<P: Platform>(
    dev: &Device<'_, P>,
    size: usize,
    gfp: Gfp,
    site: &'static Location<'static>,
) -> Result<(NonNull<u8>, DmaAddr), DmaError> {
    if size == 0 {
        return Err(DmaError::ZeroSize);
    }
    if gfp.contains(Gfp::COMP) {
        // Linux (6.2 on): WARN_ON_ONCE(flag & __GFP_COMP), NULL. Coherent
        // memory may come from a pool or an IOMMU, never a compound page.
        dev.dma().pages.platform().warn(format_args!(
            "WARNING: {} {}: dma_alloc_coherent with __GFP_COMP at {site}",
            dev.driver(),
            dev.name()
        ));
        return Err(DmaError::InvalidArgument(
            "dma_alloc_coherent: __GFP_COMP is not allowed",
        ));
    }
    let order = get_order(size);
    if order > MAX_PAGE_ORDER {
        return Err(DmaError::NoMemory(AllocError::SizeTooLarge {
            size,
            max: PAGE_SIZE << MAX_PAGE_ORDER,
        }));
    }
    let pages = dev.dma().pages;
    let mask = dev.coherent_mask();
    let base = (gfp - Gfp::DMA - Gfp::DMA32 - Gfp::HIGHMEM) | Gfp::ZERO;
    let mut zone = dma_zone_for_mask(mask);
    let pfn = loop {
        let zgfp = match zone {
            ZoneType::Dma => base | Gfp::DMA,
            ZoneType::Dma32 => base | Gfp::DMA32,
            ZoneType::Normal => base,
        };
        let pfn = pages.alloc_pages_node_at(NUMA_NO_NODE, zgfp, order, site)?;
        // Linux tests the page-aligned request, not the whole block.
        if dma_coherent_ok(mask, pfn.phys(), size.next_multiple_of(PAGE_SIZE)) {
            break pfn;
        }
        let _ = pages.free_pages(pfn, order);
        zone = match zone {
            ZoneType::Normal => ZoneType::Dma32,
            ZoneType::Dma32 => ZoneType::Dma,
            ZoneType::Dma => {
                return Err(DmaError::Overflow {
                    addr: phys_to_dma(pfn.phys()),
                    size,
                    mask,
                    reason: OverflowReason::CoherentBeyondMask,
                })
            }
        };
    };
    if let Some(f) = pages.frame(pfn) {
        f.set_owner(OWNER_DMA_COHERENT);
    }
    let va = pages.page_address(pfn);
    let bus = phys_to_dma(pfn.phys());
    let mut e = Entry::new(
        dev.id(),
        MapType::Coherent,
        bus,
        pfn.phys().0,
        size,
        DMA_BIDIRECTIONAL,
        site,
    );
    e.cpu_addr = va.0;
    dev.dma().debug.add(pages, e);
    // SAFETY: the direct-map address of a fresh block is never null.
    Ok((unsafe { NonNull::new_unchecked(va.as_ptr()) }, bus))
}

/// Linux's `dma_free_coherent`: gives back what [`dma_alloc_coherent`]
/// returned.
///
/// With debugging on, a free of something the device never allocated (or
/// allocated as a streaming mapping) is refused and reported; a free with
/// another size or CPU address is reported and frees the block recorded.
/// With debugging off, the page allocator's own checks (owner, order) keep
/// a bad free from corrupting anything.
#[track_caller]
pub fn dma_free_coherent<P: Platform>(
    dev: &Device<'_, P>,
    size: usize,
    cpu_addr: *mut u8,
    dma_handle: DmaAddr,
) -> Result<(), DmaError> {
    free_coherent_at(dev, size, cpu_addr, dma_handle, Location::caller())
}

pub(crate) fn free_coherent_at<P: Platform>(
    dev: &Device<'_, P>,
    size: usize,
    cpu_addr: *mut u8,
    dma_handle: DmaAddr,
    site: &'static Location<'static>,
) -> Result<(), DmaError> {
    let dma = dev.dma();
    if dma.pages.platform().context().irqs_disabled {
        // Linux: WARN_ON(irqs_disabled()) in dma_free_attrs (the free may
        // unmap and flush); the free goes on.
        dma.pages.platform().warn(format_args!(
            "WARNING: {} {}: dma_free_coherent with IRQs disabled at {site}",
            dev.driver(),
            dev.name()
        ));
    }
    let (entry, report) = dma.debug.check_unmap(
        dev,
        dma_handle,
        size,
        DMA_BIDIRECTIONAL,
        MapType::Coherent,
        Some(cpu_addr as usize),
        None,
        site,
    );
    // A free refused below keeps its debug entry: the memory stays mapped
    // as far as the checks know, and a later correct free still finds it.
    let restore = |dma: &super::Dma<'_, P>| {
        if let Some(e) = entry {
            dma.debug.add(dma.pages, e);
        }
    };
    let (pa, size) = match (entry, report) {
        (Some(e), _) => (PhysAddr(e.paddr), e.size as usize),
        (None, Some(r)) => return Err(DmaError::Api(r)),
        (None, None) => (PhysAddr(dma_handle.0), size),
    };
    let pages = dma.pages;
    let pfn = pa.pfn();
    let ok = pa.page_offset() == 0
        && pages
            .frame(pfn)
            .is_some_and(|f| f.state() == FrameState::Allocated && f.owner() == OWNER_DMA_COHERENT);
    if !ok {
        pages.platform().warn(format_args!(
            "DMA-API: {} {}: dma_free_coherent of {dma_handle}, which is not a dma_alloc_coherent block; nothing freed (at {site})",
            dev.driver(),
            dev.name()
        ));
        restore(dma);
        return Err(DmaError::InvalidArgument(
            "dma_free_coherent of memory dma_alloc_coherent did not return",
        ));
    }
    let order = get_order(size.max(1));
    if pages.allocation_order(pfn) != Some(order) {
        pages.platform().warn(format_args!(
            "DMA-API: {} {}: dma_free_coherent of {dma_handle} with size {size}, but the block is of another order; nothing freed (at {site})",
            dev.driver(),
            dev.name()
        ));
        restore(dma);
        return Err(DmaError::InvalidArgument(
            "dma_free_coherent with a size of another page order than allocated",
        ));
    }
    if let Some(f) = pages.frame(pfn) {
        f.set_owner(0);
    }
    pages
        .free_pages(pfn, order)
        .map_err(|_| DmaError::InvalidArgument("the page allocator refused the free"))?;
    match report {
        Some(r) => Err(DmaError::Api(r)),
        None => Ok(()),
    }
}
