//! The DMA API: how a device that sees physical addresses gets at memory.
//!
//! A device on a physically addressed bus (no IOMMU, as x86-64's `dma-direct`)
//! is handed *bus addresses*, and here a bus address is the physical address.
//! That is the whole reason physical contiguity matters: a buffer the device
//! fills with one descriptor must be one physical run, which kmalloc and
//! `alloc_pages` memory is and vmalloc memory is not.
//!
//! ```text
//!  driver                          kmem::dma                              device
//!  ──────                          ─────────                              ──────
//!  dma_alloc_coherent ──► pages within the coherent mask (zone by mask) ─┐
//!  dma_pool_alloc ─────► blocks of coherent pages, never across boundary ┤ bus addr
//!  dma_map_single/page ─► phys; beyond dma_mask? ──► swiotlb bounce slot ┤ ────────► DmaEngine
//!  dma_map_sg ─────────► each entry as above, adjacent direct runs merged┘ (ring of
//!  dma_sync_*_for_cpu/_for_device: swiotlb copies, ownership changes       {addr,len,flags})
//!  dma_unmap_*: swiotlb copy back, slots freed
//!            every call ──► debug (CONFIG_DMA_API_DEBUG): entries per mapping, checks, reports
//! ```
//!
//! [`Dma`] is the subsystem: the page allocator it takes memory from, the
//! swiotlb bounce pool ([`swiotlb`]), and the debug tables ([`debug`]).
//! [`Device`]s borrow it and carry their masks; the Linux-named free
//! functions ([`dma_map_single`], [`dma_alloc_coherent`], ...) take a device.
//! Nothing here calls a heap: the bounce pool, its slot records, the debug
//! entries and hash buckets, scatter-gather tables and pool pages are all
//! pages from the page allocator; the rest is fixed-size.
//!
//! # Semantics kept from Linux
//! - Masks default to 32 bits; masks below 24 bits (ZONE_DMA) are refused.
//! - Streaming mappings bounce through swiotlb when the buffer lies beyond
//!   the DMA mask (or `swiotlb_force`): 2 KiB slots, runs of 128 slots
//!   (256 KiB, the largest bounced mapping), found next fit in per-CPU
//!   areas as Linux's `swiotlb_search_pool_area`, map copies the buffer in, the
//!   syncs copy in the direction the sync names, unmap copies back for
//!   `DMA_FROM_DEVICE`/`DMA_BIDIRECTIONAL`. Bouncing never blocks: a full
//!   pool is an error.
//! - Coherent memory is zeroed, naturally aligned to its order, from the
//!   zone the coherent mask implies, retried in lower zones if the first
//!   block lands beyond the mask.
//! - `dma_map_single` of memory outside the direct map (vmalloc) is refused
//!   (Linux `WARN_ON_ONCE`s and returns `DMA_MAPPING_ERROR`).
//! - With debugging on (the default, like `CONFIG_DMA_API_DEBUG`), every
//!   unmap, sync and free is checked against the recorded mapping, and the
//!   reports read like Linux's `DMA-API: ...` messages, plus the call site.
//!
//! # Differences
//! - `dma_map_sg` merges physically adjacent, unbounced entries within the
//!   device's segment limits (Linux's dma-direct does not merge; IOMMUs do).
//! - Ownership is tracked per mapping, not per cache line: after a partial
//!   `dma_sync_*_for_cpu` the CPU owns the whole mapping.
//! - The bounce pool is built of up to 4 MiB blocks from ZONE_DMA32 rather
//!   than one memblock range; no mapping crosses a block.
//!
//! # Usage in IRQs
//! Mapping, unmapping, syncing and bouncing take only the platform lock and
//! allocate (debug entries) with `GFP_ATOMIC`: they may run in interrupt
//! context. `dma_alloc_coherent` and `dma_pool_alloc` follow the GFP mask
//! they are given.

pub mod coherent;
pub mod debug;
pub mod device;
pub mod engine;
pub mod mapping;
pub mod pool;
pub mod sg;
pub mod swiotlb;

pub use coherent::{dma_alloc_coherent, dma_coherent_ok, dma_free_coherent, dma_zone_for_mask};
pub use debug::{DebugReport, DmaDebug, MapType, Violation};
pub use device::{
    dma_addressing_limited, dma_get_mask, dma_get_required_mask, dma_set_coherent_mask,
    dma_set_mask, dma_set_mask_and_coherent, Device,
};
pub use engine::{pattern_byte, DevicePort, DmaDesc, DmaEngine, EngineRun, PatternPort};
pub use mapping::{
    dma_cpu_access, dma_map_page, dma_map_sg, dma_map_sgtable, dma_map_single, dma_mapping_error,
    dma_max_mapping_size, dma_sync_sg_for_cpu, dma_sync_sg_for_device, dma_sync_single_for_cpu,
    dma_sync_single_for_device, dma_sync_single_range_for_cpu, dma_sync_single_range_for_device,
    dma_unmap_page, dma_unmap_sg, dma_unmap_sgtable, dma_unmap_single,
};
pub use pool::{
    dma_pool_alloc, dma_pool_create, dma_pool_destroy, dma_pool_free, dma_pool_zalloc, DmaPool,
    PoolLeak, DMA_BLOCK_HEADER,
};
pub use sg::{dma_cpu_access_vmalloc, sg_table_from_vmalloc, Scatterlist, SgTable};
pub use swiotlb::{Swiotlb, SwiotlbStats, IO_TLB_SEGSIZE, IO_TLB_SIZE, SWIOTLB_MAX_MAPPING};

use crate::addr::PhysAddr;
use crate::error::AllocError;
use crate::page::PageAllocator;
use crate::platform::Platform;
use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};

/// Frame owner tag of the head frame of a `dma_alloc_coherent` block
/// ([`crate::page::owner`]).
pub const OWNER_DMA_COHERENT: u8 = crate::page::owner::DMA_COHERENT;
/// Frame owner tag of the blocks of the swiotlb bounce pool and its slot
/// records.
pub const OWNER_SWIOTLB: u8 = crate::page::owner::SWIOTLB;
/// Frame owner tag of pages holding DMA debug entries and buckets.
pub const OWNER_DMA_DEBUG: u8 = crate::page::owner::DMA_DEBUG;
/// Frame owner tag of pages holding a scatter-gather table.
pub const OWNER_SG_TABLE: u8 = crate::page::owner::SG_TABLE;

/// A bus address: what a device puts on the bus. Without an IOMMU it is the
/// physical address (Linux's `dma_addr_t`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DmaAddr(pub u64);

impl DmaAddr {
    /// The raw value.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
    /// The address `n` bytes further on.
    pub const fn add(self, n: u64) -> DmaAddr {
        DmaAddr(self.0.wrapping_add(n))
    }
}

impl fmt::Debug for DmaAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DmaAddr({:#x})", self.0)
    }
}

impl fmt::Display for DmaAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#018x}", self.0)
    }
}

/// The address no mapping ever gets (Linux's `DMA_MAPPING_ERROR`), for
/// callers that keep Linux's convention: `map(..).unwrap_or(DMA_MAPPING_ERROR)`.
pub const DMA_MAPPING_ERROR: DmaAddr = DmaAddr(u64::MAX);

/// A mask of the low `n` address bits (Linux's `DMA_BIT_MASK`).
pub const fn dma_bit_mask(n: u32) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

/// Linux's spelling of [`dma_bit_mask`].
#[allow(non_snake_case)]
pub const fn DMA_BIT_MASK(n: u32) -> u64 {
    dma_bit_mask(n)
}

/// Which way the data of a streaming mapping flows (Linux's
/// `enum dma_data_direction`, same values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DmaDirection {
    /// Both ways: the device may read and write the buffer.
    Bidirectional = 0,
    /// The device reads the buffer (a packet to send, a block to write).
    ToDevice = 1,
    /// The device writes the buffer (a packet received, a block read).
    FromDevice = 2,
    /// No direction: invalid for a mapping (debugging aid only).
    None = 3,
}

/// `DMA_BIDIRECTIONAL`.
pub const DMA_BIDIRECTIONAL: DmaDirection = DmaDirection::Bidirectional;
/// `DMA_TO_DEVICE`.
pub const DMA_TO_DEVICE: DmaDirection = DmaDirection::ToDevice;
/// `DMA_FROM_DEVICE`.
pub const DMA_FROM_DEVICE: DmaDirection = DmaDirection::FromDevice;
/// `DMA_NONE`.
pub const DMA_NONE: DmaDirection = DmaDirection::None;

impl DmaDirection {
    /// Linux's name (`DMA_TO_DEVICE`, ...), as dma-debug prints it.
    pub const fn name(self) -> &'static str {
        match self {
            DmaDirection::Bidirectional => "DMA_BIDIRECTIONAL",
            DmaDirection::ToDevice => "DMA_TO_DEVICE",
            DmaDirection::FromDevice => "DMA_FROM_DEVICE",
            DmaDirection::None => "DMA_NONE",
        }
    }
    /// The device may read the buffer.
    pub const fn device_reads(self) -> bool {
        matches!(self, DmaDirection::ToDevice | DmaDirection::Bidirectional)
    }
    /// The device may write the buffer.
    pub const fn device_writes(self) -> bool {
        matches!(self, DmaDirection::FromDevice | DmaDirection::Bidirectional)
    }
    /// A direction a mapping may have (not `DMA_NONE`).
    pub const fn is_valid(self) -> bool {
        !matches!(self, DmaDirection::None)
    }
    pub(crate) const fn from_bits(b: u8) -> DmaDirection {
        match b {
            0 => DmaDirection::Bidirectional,
            1 => DmaDirection::ToDevice,
            2 => DmaDirection::FromDevice,
            _ => DmaDirection::None,
        }
    }
}

impl fmt::Display for DmaDirection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Tunables of the DMA layer, with Linux's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaConfig {
    /// Size of the swiotlb bounce pool in bytes (`swiotlb=`), rounded up to
    /// 256 KiB; 0 means no bounce pool (buffers beyond a mask then fail to
    /// map). Default 64 MiB, taken from ZONE_DMA32 (below 4 GiB).
    pub swiotlb_bytes: usize,
    /// Areas of the bounce pool (`swiotlb=<slabs>,<areas>`): each has its
    /// own next-fit search index, and a mapping searches its CPU's area
    /// first. 0 (the default) means one per CPU; rounded up to a power of
    /// two and limited to one per 256 KiB segment.
    pub swiotlb_nareas: usize,
    /// Bounce every streaming mapping (`swiotlb=force`).
    pub swiotlb_force: bool,
    /// Track and check every mapping (`CONFIG_DMA_API_DEBUG`). Default on.
    pub debug: bool,
    /// Debug entries allocated up front (Linux preallocates 65536); more are
    /// added a page at a time with `GFP_ATOMIC`, up to
    /// [`debug::MAX_DEBUG_ENTRIES`].
    pub debug_prealloc_entries: usize,
    /// The vmalloc range `[start, end)`, if the caller wants refused
    /// `dma_map_single` calls to say "vmalloc" rather than "not in the
    /// direct map".
    pub vmalloc_range: Option<(usize, usize)>,
}

impl DmaConfig {
    /// Linux's default bounce pool: 64 MiB.
    pub const DEFAULT_SWIOTLB_BYTES: usize = 64 << 20;
}

impl Default for DmaConfig {
    fn default() -> Self {
        DmaConfig {
            swiotlb_bytes: Self::DEFAULT_SWIOTLB_BYTES,
            swiotlb_nareas: 0,
            swiotlb_force: false,
            debug: true,
            debug_prealloc_entries: 4096,
            vmalloc_range: None,
        }
    }
}

/// Why a DMA call failed. Nothing was mapped or allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaError {
    /// A DMA API rule was broken; the report (also printed through the
    /// platform) names the device, the address, the rule and the call site.
    /// See each function for what it still did.
    Api(DebugReport),
    /// A physical range that is not all RAM (a hole, beyond memory).
    NotRam {
        /// First byte.
        phys: PhysAddr,
        /// Length.
        size: usize,
    },
    /// `DMA_NONE` given where a direction is needed.
    InvalidDirection,
    /// A zero-length mapping or allocation.
    ZeroSize,
    /// The buffer lies beyond the device's mask and could not be bounced.
    Overflow {
        /// The address the device would have had to reach.
        addr: DmaAddr,
        /// Length.
        size: usize,
        /// The device's DMA mask.
        mask: u64,
        /// Why swiotlb did not help.
        reason: OverflowReason,
    },
    /// Every bounce slot run that could hold the mapping is in use.
    SwiotlbFull {
        /// Bytes asked for.
        size: usize,
        /// Slots in the pool.
        total: usize,
        /// Slots in use.
        used: usize,
    },
    /// The page allocator said no.
    NoMemory(AllocError),
    /// A mask the platform cannot satisfy (below ZONE_DMA's 24 bits).
    UnsupportedMask {
        /// The mask asked for.
        mask: u64,
        /// The smallest mask supported.
        min: u64,
    },
    /// Arguments that make no sense (the text says which).
    InvalidArgument(&'static str),
}

/// Why a buffer beyond the mask could not be bounced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverflowReason {
    /// There is no bounce pool.
    NoSwiotlb,
    /// Larger than the largest bounced mapping (256 KiB).
    TooLarge,
    /// The bounce pool itself lies beyond the mask (a device below 32 bits).
    PoolBeyondMask,
    /// Coherent memory is never bounced, and no zone gave a block within
    /// the coherent mask.
    CoherentBeyondMask,
}

impl core::error::Error for DmaError {}

impl fmt::Display for DmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DmaError::Api(r) => write!(f, "{r}"),
            DmaError::NotRam { phys, size } => write!(
                f,
                "DMA of {size} bytes at physical {phys}: not RAM (a hole or beyond memory)"
            ),
            DmaError::InvalidDirection => {
                write!(f, "DMA_NONE is not a direction a mapping can have")
            }
            DmaError::ZeroSize => write!(f, "zero-length DMA mapping or allocation"),
            DmaError::Overflow {
                addr,
                size,
                mask,
                reason,
            } => {
                write!(
                    f,
                    "DMA addr {addr}+{size} overflow (mask {mask:x}, bus limit 0): "
                )?;
                match reason {
                    OverflowReason::NoSwiotlb => {
                        write!(f, "the buffer is beyond the device's mask and there is no swiotlb bounce pool")
                    }
                    OverflowReason::TooLarge => write!(
                        f,
                        "the buffer is beyond the device's mask and larger than the {} KiB swiotlb can bounce in one mapping (dma_max_mapping_size); split it or allocate it within the mask",
                        SWIOTLB_MAX_MAPPING >> 10
                    ),
                    OverflowReason::PoolBeyondMask => write!(
                        f,
                        "the swiotlb bounce pool itself lies beyond the device's mask"
                    ),
                    OverflowReason::CoherentBeyondMask => write!(
                        f,
                        "no zone had a coherent block within the coherent mask (coherent memory is never bounced)"
                    ),
                }
            }
            DmaError::SwiotlbFull { size, total, used } => write!(
                f,
                "swiotlb buffer is full (sz: {size} bytes), total {total} (slots), used {used} (slots)"
            ),
            DmaError::NoMemory(e) => write!(f, "{e}"),
            DmaError::UnsupportedMask { mask, min } => write!(
                f,
                "DMA mask {mask:#x} is not supported: the smallest mask this machine can satisfy is {min:#x}"
            ),
            DmaError::InvalidArgument(what) => write!(f, "invalid DMA argument: {what}"),
        }
    }
}

impl From<AllocError> for DmaError {
    fn from(e: AllocError) -> Self {
        DmaError::NoMemory(e)
    }
}

/// The DMA layer of one machine: the page allocator it takes memory from,
/// the swiotlb bounce pool and the debug tables.
pub struct Dma<'a, P: Platform> {
    pub(crate) pages: &'a PageAllocator<P>,
    pub(crate) config: DmaConfig,
    pub(crate) swiotlb: Swiotlb<P>,
    pub(crate) debug: DmaDebug<P>,
    next_id: AtomicU32,
    live_devices: AtomicUsize,
}

// SAFETY: shared state is behind the platform lock or atomics; the raw
// pointers inside refer to pages owned for the lifetime of the `Dma`.
unsafe impl<P: Platform> Sync for Dma<'_, P> {}
// SAFETY: as above; nothing is tied to the creating thread.
unsafe impl<P: Platform> Send for Dma<'_, P> {}

impl<'a, P: Platform> Dma<'a, P> {
    /// The DMA layer over `pages`: allocates the bounce pool (from ZONE_DMA32)
    /// and the preallocated debug entries.
    pub fn new(pages: &'a PageAllocator<P>, config: DmaConfig) -> Result<Self, DmaError> {
        let swiotlb = Swiotlb::new(pages, config.swiotlb_bytes, config.swiotlb_nareas)?;
        let debug = match DmaDebug::new(pages, config.debug, config.debug_prealloc_entries) {
            Ok(d) => d,
            Err(e) => {
                swiotlb.release(pages);
                return Err(e);
            }
        };
        Ok(Dma {
            pages,
            config,
            swiotlb,
            debug,
            next_id: AtomicU32::new(1),
            live_devices: AtomicUsize::new(0),
        })
    }

    /// The page allocator underneath.
    pub fn pages(&self) -> &'a PageAllocator<P> {
        self.pages
    }

    /// The configuration.
    pub fn config(&self) -> &DmaConfig {
        &self.config
    }

    /// The bounce pool.
    pub fn swiotlb(&self) -> &Swiotlb<P> {
        &self.swiotlb
    }

    /// The debug tables.
    pub fn debug(&self) -> &DmaDebug<P> {
        &self.debug
    }

    /// Devices created over this layer and not yet released.
    pub fn live_devices(&self) -> usize {
        self.live_devices.load(Relaxed)
    }

    /// The highest physical address of RAM plus one.
    pub(crate) fn max_phys(&self) -> u64 {
        self.pages.max_pfn() << crate::addr::PAGE_SHIFT
    }

    pub(crate) fn new_device_id(&self) -> u32 {
        self.live_devices.fetch_add(1, Relaxed);
        self.next_id.fetch_add(1, Relaxed)
    }

    pub(crate) fn device_gone(&self) {
        self.live_devices.fetch_sub(1, Relaxed);
    }

    pub(crate) fn is_vmalloc_addr(&self, addr: usize) -> bool {
        self.config
            .vmalloc_range
            .is_some_and(|(s, e)| addr >= s && addr < e)
    }
}

impl<P: Platform> Drop for Dma<'_, P> {
    /// Gives the bounce pool and the debug pages back. Bounce slots still in
    /// use are reported (their mappings' data is lost).
    fn drop(&mut self) {
        let used = self.swiotlb.used_slots();
        if used > 0 {
            self.pages.platform().warn(format_args!(
                "swiotlb: {used} slots still mapped at teardown; bounce data lost"
            ));
        }
        self.swiotlb.release(self.pages);
        self.debug.release(self.pages);
    }
}

impl<P: Platform> fmt::Debug for Dma<'_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dma")
            .field("config", &self.config)
            .field("swiotlb", &self.swiotlb.stats())
            .field("debug_entries", &self.debug.live_entries())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::device::dma_capable;
    use super::*;
    use crate::gfp::ZoneType;
    use std::string::ToString;

    #[test]
    fn bit_masks_are_linux_s() {
        assert_eq!(DMA_BIT_MASK(24), 0xff_ffff);
        assert_eq!(DMA_BIT_MASK(32), 0xffff_ffff);
        assert_eq!(DMA_BIT_MASK(64), u64::MAX);
    }

    #[test]
    fn capability_is_the_last_byte_within_the_mask() {
        let m = DMA_BIT_MASK(32);
        assert!(dma_capable(m, DmaAddr(0xffff_f000), 0x1000));
        assert!(!dma_capable(m, DmaAddr(0xffff_f000), 0x1001));
        assert!(
            !dma_capable(u64::MAX, DmaAddr(u64::MAX), 2),
            "no wrap-around"
        );
    }

    #[test]
    fn coherent_zone_follows_the_mask() {
        assert_eq!(dma_zone_for_mask(DMA_BIT_MASK(24)), ZoneType::Dma);
        assert_eq!(dma_zone_for_mask(DMA_BIT_MASK(30)), ZoneType::Dma32);
        assert_eq!(dma_zone_for_mask(DMA_BIT_MASK(32)), ZoneType::Dma32);
        assert_eq!(dma_zone_for_mask(DMA_BIT_MASK(33)), ZoneType::Normal);
    }

    #[test]
    fn directions_say_who_may_touch_the_buffer() {
        assert!(DMA_TO_DEVICE.device_reads() && !DMA_TO_DEVICE.device_writes());
        assert!(DMA_FROM_DEVICE.device_writes() && !DMA_FROM_DEVICE.device_reads());
        assert!(DMA_BIDIRECTIONAL.device_reads() && DMA_BIDIRECTIONAL.device_writes());
        assert!(!DMA_NONE.is_valid());
        assert_eq!(DMA_FROM_DEVICE.to_string(), "DMA_FROM_DEVICE");
        assert_eq!(DmaAddr(0x1000).to_string(), "0x0000000000001000");
    }
}
