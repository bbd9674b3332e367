//! The firmware memory map: regions of RAM, reserved ranges and holes.
//!
//! A kernel receives its physical layout from firmware (an e820 table, UEFI
//! memory descriptors, a multiboot map) as a list of ranges. [`Region`] is one
//! such range; anything not listed is a hole. The page allocator turns the map
//! into nodes and zones: DMA below 16 MiB, DMA32 below 4 GiB, Normal above.

use crate::addr::{Pfn, PhysAddr, PAGE_SIZE};
use core::fmt;

/// What a physical range holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegionKind {
    /// RAM the allocator may manage.
    Usable,
    /// RAM or ROM that exists but is not to be handed out (firmware, the
    /// kernel image, ACPI tables, ...).
    Reserved,
}

/// One range of the firmware memory map, `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Region {
    /// First byte.
    pub start: PhysAddr,
    /// One past the last byte.
    pub end: PhysAddr,
    /// What it holds.
    pub kind: RegionKind,
    /// NUMA node it belongs to.
    pub node: u8,
}

impl Region {
    /// A usable range on node 0.
    pub const fn usable(start: u64, end: u64) -> Region {
        Region {
            start: PhysAddr(start),
            end: PhysAddr(end),
            kind: RegionKind::Usable,
            node: 0,
        }
    }
    /// A reserved range on node 0.
    pub const fn reserved(start: u64, end: u64) -> Region {
        Region {
            start: PhysAddr(start),
            end: PhysAddr(end),
            kind: RegionKind::Reserved,
            node: 0,
        }
    }
    /// The same range on another node.
    pub const fn on_node(self, node: u8) -> Region {
        Region { node, ..self }
    }
    /// Length in bytes.
    pub const fn len(&self) -> u64 {
        self.end.0 - self.start.0
    }
    /// True if the range is empty.
    pub const fn is_empty(&self) -> bool {
        self.end.0 <= self.start.0
    }
    /// The whole frames inside the range: `[first, last)`. Partial frames at
    /// the edges are left out, as Linux does.
    pub const fn pfns(&self) -> (Pfn, Pfn) {
        let first = self.start.0.div_ceil(PAGE_SIZE as u64);
        let last = self.end.0 / PAGE_SIZE as u64;
        if last < first {
            (Pfn(first), Pfn(first))
        } else {
            (Pfn(first), Pfn(last))
        }
    }
}

/// Why a memory map was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryMapError {
    /// No region at all, or no usable page.
    NoUsableMemory,
    /// Regions must be sorted by start and must not overlap.
    Overlap {
        /// Index of the offending region.
        index: usize,
    },
    /// A region ends before it starts.
    Inverted {
        /// Index of the offending region.
        index: usize,
    },
    /// Physical addresses beyond what frame links can encode (16 TiB less
    /// one page: pfn `u32::MAX` means "no frame").
    TooLarge {
        /// Index of the offending region.
        index: usize,
    },
    /// A node number at or beyond `MAX_NUMNODES`.
    BadNode {
        /// Index of the offending region.
        index: usize,
    },
    /// The memory map itself (frame records, per-CPU lists) did not fit in
    /// usable memory.
    NoRoomForMemmap,
}

impl core::error::Error for MemoryMapError {}

impl fmt::Display for MemoryMapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoUsableMemory => write!(f, "memory map has no usable page"),
            Self::Overlap { index } => {
                write!(
                    f,
                    "memory map region {index} overlaps or is out of order with the one before it"
                )
            }
            Self::Inverted { index } => {
                write!(f, "memory map region {index} ends before it starts")
            }
            Self::TooLarge { index } => write!(f, "memory map region {index} reaches the last page below 16 TiB or beyond (frame links are 32-bit pfns)"),
            Self::BadNode { index } => write!(
                f,
                "memory map region {index} names a node beyond MAX_NUMNODES"
            ),
            Self::NoRoomForMemmap => {
                write!(f, "no usable range large enough for the frame records")
            }
        }
    }
}

/// Checks that regions are well formed, sorted and disjoint.
pub fn validate(regions: &[Region], max_nodes: usize) -> Result<(), MemoryMapError> {
    let mut usable = false;
    for (i, r) in regions.iter().enumerate() {
        if r.end.0 < r.start.0 {
            return Err(MemoryMapError::Inverted { index: i });
        }
        // Frame links are u32 pfns with u32::MAX as "none": the last page
        // below 16 TiB would read as the end of every list it is on.
        if r.end.0 > (1u64 << 44) - crate::addr::PAGE_SIZE as u64 {
            return Err(MemoryMapError::TooLarge { index: i });
        }
        if r.node as usize >= max_nodes {
            return Err(MemoryMapError::BadNode { index: i });
        }
        if i > 0 && regions[i - 1].end.0 > r.start.0 {
            return Err(MemoryMapError::Overlap { index: i });
        }
        let (a, b) = r.pfns();
        usable |= r.kind == RegionKind::Usable && b.0 > a.0;
    }
    if usable {
        Ok(())
    } else {
        Err(MemoryMapError::NoUsableMemory)
    }
}

/// The smallest total [`pc_layout`] builds: 16 MiB below 4 GiB (DMA and
/// DMA32) and 16 MiB above (Normal). Smaller totals are raised to it.
pub const PC_LAYOUT_MIN_BYTES: u64 = 32 << 20;

/// The largest total [`pc_layout`] builds a valid map for: 16 TiB (frame
/// links are 32-bit pfns) less the 4 GiB below the RAM above 4 GiB.
pub const PC_LAYOUT_MAX_BYTES: u64 = (1 << 44) - (4 << 30);

/// A PC-like sparse layout of about `total` bytes of RAM: low memory below
/// 640 KiB, the legacy hole, RAM from 1 MiB up to at most 2 GiB, the PCI hole
/// up to 4 GiB, and the rest above 4 GiB. All three zones are populated when
/// `total` exceeds 32 MiB. Used by the hosted machine's default.
pub fn pc_layout(total: u64) -> [Region; 5] {
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    let total = total.max(PC_LAYOUT_MIN_BYTES);
    // RAM below the 4 GiB boundary: half of it, at most 2 GiB - 1 MiB.
    let below = (total / 2).clamp(16 * MIB, 2 * GIB - MIB) & !(PAGE_SIZE as u64 * 512 - 1);
    let above = total.saturating_sub(below);
    [
        Region::reserved(0, 0x1000),
        Region::usable(0x1000, 0x9f000),
        Region::reserved(0x9f000, MIB),
        Region::usable(MIB, below),
        Region::usable(4 * GIB, 4 * GIB + above),
    ]
}
