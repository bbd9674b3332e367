//! Devices and their DMA masks.
//!
//! A [`Device`] is what Linux's `struct device` is to the DMA API: a name
//! (driver and bus name, as reports print them), a *DMA mask* (the address
//! bits the device can drive for streaming mappings), a *coherent mask* (the
//! same for `dma_alloc_coherent`), both 32 bits by default, and the segment
//! limits `dma_map_sg` merges within (64 KiB segments that do not cross a
//! 4 GiB boundary, Linux's defaults).
//!
//! There is no IOMMU: the bus address of a byte is its physical address
//! ([`phys_to_dma`]). A buffer is reachable if its last byte is within the
//! mask ([`dma_capable`]); a streaming mapping of a buffer that is not is
//! bounced through swiotlb.
//!
//! A device borrows its [`Dma`], so it cannot outlive it; mappings and
//! coherent allocations are tracked by device id in the debug tables.
//! Releasing a device ([`Device::release`], or dropping it) reports the
//! mappings it still holds, like Linux's "device driver has pending DMA
//! allocations while released from device", and reclaims their bounce slots
//! (coherent memory is left allocated: the driver may still point at it).

use super::debug::{DebugReport, MapType, Violation};
use super::{dma_bit_mask, Dma, DmaAddr, DmaError};
use crate::addr::{PhysAddr, PAGE_SHIFT};
use crate::platform::Platform;
use core::fmt;
use core::panic::Location;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

/// Linux's default `max_segment_size` (64 KiB).
pub const DEFAULT_MAX_SEGMENT_SIZE: u32 = 64 << 10;
/// Linux's default segment boundary mask (segments do not cross 4 GiB).
pub const DEFAULT_SEGMENT_BOUNDARY: u64 = 0xffff_ffff;

/// A device doing DMA.
pub struct Device<'d, P: Platform> {
    dma: &'d Dma<'d, P>,
    id: u32,
    driver: &'static str,
    name: &'static str,
    dma_mask: AtomicU64,
    coherent_mask: AtomicU64,
    max_seg_size: AtomicU32,
    seg_boundary: AtomicU64,
    created_at: &'static Location<'static>,
    released: bool,
}

impl<'d, P: Platform> Device<'d, P> {
    /// A device of `driver` named `name` (say `"e1000"`, `"0000:00:03.0"`),
    /// with 32-bit DMA and coherent masks.
    #[track_caller]
    pub fn new(dma: &'d Dma<'d, P>, driver: &'static str, name: &'static str) -> Self {
        Device {
            dma,
            id: dma.new_device_id(),
            driver,
            name,
            dma_mask: AtomicU64::new(dma_bit_mask(32)),
            coherent_mask: AtomicU64::new(dma_bit_mask(32)),
            max_seg_size: AtomicU32::new(DEFAULT_MAX_SEGMENT_SIZE),
            seg_boundary: AtomicU64::new(DEFAULT_SEGMENT_BOUNDARY),
            created_at: Location::caller(),
            released: false,
        }
    }

    /// The DMA layer it belongs to.
    pub fn dma(&self) -> &'d Dma<'d, P> {
        self.dma
    }
    /// Its id in the debug tables.
    pub fn id(&self) -> u32 {
        self.id
    }
    /// Driver name.
    pub fn driver(&self) -> &'static str {
        self.driver
    }
    /// Device name.
    pub fn name(&self) -> &'static str {
        self.name
    }
    /// Where it was created.
    pub fn created_at(&self) -> &'static Location<'static> {
        self.created_at
    }
    /// The streaming DMA mask.
    pub fn dma_mask(&self) -> u64 {
        self.dma_mask.load(Relaxed)
    }
    /// The coherent DMA mask.
    pub fn coherent_mask(&self) -> u64 {
        self.coherent_mask.load(Relaxed)
    }
    /// Largest merged scatter-gather segment (`dma_get_max_seg_size`).
    pub fn max_segment_size(&self) -> u32 {
        self.max_seg_size.load(Relaxed)
    }
    /// Linux's `dma_set_max_seg_size`.
    pub fn set_max_seg_size(&self, size: u32) {
        self.max_seg_size.store(size.max(1), Relaxed);
    }
    /// Segment boundary mask: a merged segment never crosses a multiple of
    /// `mask + 1` (`dma_get_seg_boundary`).
    pub fn segment_boundary(&self) -> u64 {
        self.seg_boundary.load(Relaxed)
    }
    /// Linux's `dma_set_seg_boundary`.
    pub fn set_seg_boundary(&self, mask: u64) {
        self.seg_boundary.store(mask, Relaxed);
    }
    /// Mappings and coherent allocations of this device the debug tables
    /// hold.
    pub fn live_mappings(&self) -> usize {
        self.dma.debug.device_entries(self.id)
    }

    /// Releases the device (driver unbind): every mapping still live is
    /// reported (one report with the count and one of them, as Linux) and
    /// its bounce slots reclaimed.
    #[track_caller]
    pub fn release(mut self) -> Result<(), DebugReport> {
        self.released = true;
        self.teardown(Location::caller())
    }

    fn teardown(&self, site: &'static Location<'static>) -> Result<(), DebugReport> {
        let swiotlb = &self.dma.swiotlb;
        let platform = self.dma.pages.platform();
        let (count, shown) = self.dma.debug.take_device_entries(self.id, |e| {
            // Every leaked mapping gets a line; the summary follows.
            let kind = e.map_type();
            platform.warn(format_args!(
                "DMA-API: {} {}: leaked at release: [device address={}] [size={} bytes] [mapped as {}]{}{}",
                self.driver,
                self.name,
                DmaAddr(e.bus),
                e.size,
                kind.name(),
                if e.is_bounced() {
                    " [bounced: slots reclaimed]"
                } else {
                    ""
                },
                MappedAt(e.site)
            ));
            if e.is_bounced() {
                swiotlb.discard(PhysAddr(e.bus));
            }
        });
        self.dma.device_gone();
        match shown {
            Some(e) if count > 0 => {
                let v = Violation::Leaked {
                    count,
                    kind: e.map_type(),
                    dir: if e.map_type() == MapType::Coherent {
                        super::DMA_BIDIRECTIONAL
                    } else {
                        e.direction()
                    },
                };
                Err(self
                    .dma
                    .debug
                    .report(self, v, DmaAddr(e.bus), e.size as usize, site, e.site))
            }
            _ => Ok(()),
        }
    }
}

/// " mapped at `<site>`", or nothing.
struct MappedAt(Option<&'static Location<'static>>);

impl fmt::Display for MappedAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(l) => write!(f, "; mapped at {l}"),
            None => Ok(()),
        }
    }
}

impl<P: Platform> Drop for Device<'_, P> {
    /// A device dropped without [`Device::release`] is released here; a
    /// leak report then names the place the device was created.
    fn drop(&mut self) {
        if !self.released {
            let _ = self.teardown(self.created_at);
        }
    }
}

impl<P: Platform> fmt::Debug for Device<'_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("driver", &self.driver)
            .field("name", &self.name)
            .field("dma_mask", &format_args!("{:#x}", self.dma_mask()))
            .field(
                "coherent_mask",
                &format_args!("{:#x}", self.coherent_mask()),
            )
            .finish()
    }
}

/// Bus address of a physical address (no IOMMU, no offset).
#[inline]
pub const fn phys_to_dma(pa: PhysAddr) -> DmaAddr {
    DmaAddr(pa.0)
}

/// Physical address of a bus address.
#[inline]
pub const fn dma_to_phys(addr: DmaAddr) -> PhysAddr {
    PhysAddr(addr.0)
}

/// Linux's `dma_capable`: can a device with `mask` reach all of
/// `[addr, addr + size)`?
#[inline]
pub const fn dma_capable(mask: u64, addr: DmaAddr, size: usize) -> bool {
    let size = if size == 0 { 1 } else { size as u64 };
    match addr.0.checked_add(size - 1) {
        Some(end) => end <= mask,
        None => false,
    }
}

/// The smallest mask a device may set on this machine (Linux's
/// `dma_direct_supported`): 32-bit masks always work; smaller ones must at
/// least cover ZONE_DMA (24 bits), or all of RAM if there is less.
fn min_supported_mask<P: Platform>(dev: &Device<'_, P>) -> u64 {
    let top = (dev.dma.pages.max_pfn().saturating_sub(1)) << PAGE_SHIFT;
    top.min(dma_bit_mask(24))
}

fn check_mask<P: Platform>(dev: &Device<'_, P>, mask: u64) -> Result<(), DmaError> {
    let min = min_supported_mask(dev);
    if mask >= dma_bit_mask(32) || mask >= min {
        Ok(())
    } else {
        Err(DmaError::UnsupportedMask { mask, min })
    }
}

/// Linux's `dma_set_mask`: the streaming mask. Masks below 24 bits (ZONE_DMA)
/// are refused, as Linux returns `-EIO`.
pub fn dma_set_mask<P: Platform>(dev: &Device<'_, P>, mask: u64) -> Result<(), DmaError> {
    check_mask(dev, mask)?;
    dev.dma_mask.store(mask, Relaxed);
    Ok(())
}

/// Linux's `dma_set_coherent_mask`.
pub fn dma_set_coherent_mask<P: Platform>(dev: &Device<'_, P>, mask: u64) -> Result<(), DmaError> {
    check_mask(dev, mask)?;
    dev.coherent_mask.store(mask, Relaxed);
    Ok(())
}

/// Linux's `dma_set_mask_and_coherent`: both masks, or neither.
pub fn dma_set_mask_and_coherent<P: Platform>(
    dev: &Device<'_, P>,
    mask: u64,
) -> Result<(), DmaError> {
    check_mask(dev, mask)?;
    dev.dma_mask.store(mask, Relaxed);
    dev.coherent_mask.store(mask, Relaxed);
    Ok(())
}

/// Linux's `dma_get_mask`.
pub fn dma_get_mask<P: Platform>(dev: &Device<'_, P>) -> u64 {
    dev.dma_mask()
}

/// Linux's `dma_get_required_mask`: the smallest all-ones mask that covers
/// every byte of RAM.
pub fn dma_get_required_mask<P: Platform>(dev: &Device<'_, P>) -> u64 {
    let top = dev.dma.max_phys().saturating_sub(1).max(1);
    let bits = 64 - top.leading_zeros();
    dma_bit_mask(bits)
}

/// Linux's `dma_addressing_limited`: the device cannot reach all of RAM, so
/// some of its streaming mappings may be bounced.
pub fn dma_addressing_limited<P: Platform>(dev: &Device<'_, P>) -> bool {
    dev.dma_mask() < dma_get_required_mask(dev)
}
