//! Errors are values: every failure says what was asked, where, and why.
//!
//! Allocation failures carry enough to act on (which zones, how many pages
//! were free, whether it was fragmentation); free errors say what the frame
//! really is. Neither ever leaves the allocator in a changed state.

use crate::addr::{Pfn, VirtAddr};
use crate::context::ContextViolation;
use crate::gfp::{Gfp, GfpError, ZoneType};
use core::fmt;

/// Details of an allocation that found no memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoMemory {
    /// Order asked for.
    pub order: u32,
    /// The mask it was asked with.
    pub gfp: Gfp,
    /// Highest zone the mask allows.
    pub highest_zone: ZoneType,
    /// Free pages in the allowed zones at the time of failure.
    pub free_pages: usize,
    /// Largest free block order in those zones, if any block was free.
    pub largest_free_order: Option<u32>,
    /// Direct reclaim ran (the mask allowed blocking) and did not help.
    pub reclaimed: bool,
    /// Linux would have invoked the OOM killer here.
    pub oom: bool,
}

impl NoMemory {
    /// True if enough pages were free in total but no block was large enough.
    pub fn fragmented(&self) -> bool {
        self.free_pages >= (1usize << self.order)
            && self.largest_free_order.is_none_or(|o| o < self.order)
    }
}

/// Why an allocation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocError {
    /// No zone allowed by the mask could give a block of the order.
    NoMemory(NoMemory),
    /// The order is above MAX_PAGE_ORDER (10), or a size needs such an order.
    OrderTooLarge {
        /// The order asked for.
        order: u32,
    },
    /// A byte size beyond what the interface allows.
    SizeTooLarge {
        /// The size asked for.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The GFP mask is invalid.
    InvalidGfp(GfpError),
    /// A blocking mask in atomic context (policy: fail).
    SleepInAtomic(ContextViolation),
    /// Any allocation in NMI context.
    InNmi,
    /// `__GFP_THISNODE` for a node the machine does not have.
    NoSuchNode {
        /// The node asked for.
        node: i32,
    },
}

impl core::error::Error for AllocError {}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllocError::NoMemory(n) => {
                write!(
                    f,
                    "page allocation failure: order:{}, mode:{:#x}({}), zones {} and below: {} pages free",
                    n.order,
                    n.gfp.bits(),
                    n.gfp,
                    n.highest_zone.name(),
                    n.free_pages
                )?;
                match n.largest_free_order {
                    Some(o) => write!(f, ", largest free block order {o}")?,
                    None => write!(f, ", no free block")?,
                }
                if n.fragmented() {
                    write!(f, " (fragmented: enough pages, no contiguous block)")?;
                } else if n.order > 0 || n.free_pages > 0 {
                    write!(f, " (below the watermark this mask may use)")?;
                }
                if n.reclaimed {
                    write!(f, "; direct reclaim did not free enough")?;
                }
                if n.oom {
                    write!(f, "; out of memory (Linux would run the OOM killer)")?;
                }
                Ok(())
            }
            AllocError::OrderTooLarge { order } => {
                write!(
                    f,
                    "order {order} is above MAX_PAGE_ORDER (10): blocks are at most 4 MiB"
                )
            }
            AllocError::SizeTooLarge { size, max } => {
                write!(f, "size {size} is above the limit of {max} bytes")
            }
            AllocError::InvalidGfp(e) => write!(f, "{e}"),
            AllocError::SleepInAtomic(v) => write!(f, "{v}"),
            AllocError::InNmi => write!(
                f,
                "allocation refused in NMI context: no allocator may be entered from an NMI"
            ),
            AllocError::NoSuchNode { node } => write!(
                f,
                "page allocation on node {node} with __GFP_THISNODE: the machine has no such node"
            ),
        }
    }
}

/// Why a free was rejected. Nothing was changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeError {
    /// No RAM behind this pfn (beyond memory, or a hole).
    NotRam {
        /// The pfn.
        pfn: Pfn,
    },
    /// An address outside the direct map given to an address-based free.
    NotDirectMapped {
        /// The address.
        addr: VirtAddr,
    },
    /// Firmware-reserved or allocator-internal memory.
    Reserved {
        /// The pfn.
        pfn: Pfn,
    },
    /// The block is already free.
    DoubleFree {
        /// The pfn.
        pfn: Pfn,
        /// Order of the free block it heads or lies in.
        free_order: u32,
    },
    /// The pfn lies inside an allocation that starts elsewhere.
    NotHead {
        /// The pfn.
        pfn: Pfn,
        /// Head of the enclosing allocation.
        head: Pfn,
        /// Its order.
        order: u32,
    },
    /// Freed with another order than it was allocated with.
    WrongOrder {
        /// The pfn.
        pfn: Pfn,
        /// Order it was allocated with.
        allocated: u32,
        /// Order given to the free.
        freed: u32,
    },
    /// Not the head of an allocation, and no enclosing allocation found.
    NotAllocated {
        /// The pfn.
        pfn: Pfn,
    },
    /// An address that is not page aligned.
    Unaligned {
        /// The address.
        addr: VirtAddr,
    },
    /// `split_page` of a compound page (Linux: BUG).
    Compound {
        /// The pfn.
        pfn: Pfn,
    },
    /// The block still belongs to a higher layer (its owner tag is set:
    /// slab, vmalloc, DMA, ...), which frees it itself after clearing the
    /// tag; a `free_pages` from outside would pull it from under that layer.
    Owned {
        /// The pfn.
        pfn: Pfn,
        /// The owner tag (see `kmem::page::owner`).
        owner: u8,
    },
}

impl core::error::Error for FreeError {}

impl fmt::Display for FreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FreeError::NotRam { pfn } => write!(f, "Bad page: pfn {pfn} is not RAM (beyond memory or in a hole)"),
            FreeError::NotDirectMapped { addr } => {
                write!(f, "Bad page: address {addr} is not in the direct map (vmalloc or foreign pointer?)")
            }
            FreeError::Reserved { pfn } => write!(f, "Bad page: pfn {pfn} is reserved and was never allocated"),
            FreeError::DoubleFree { pfn, free_order } => {
                write!(f, "Bad page: double free of pfn {pfn} (it is in a free block of order {free_order})")
            }
            FreeError::NotHead { pfn, head, order } => write!(
                f,
                "Bad page: pfn {pfn} is inside the order-{order} allocation starting at pfn {head}; free the head"
            ),
            FreeError::WrongOrder { pfn, allocated, freed } => write!(
                f,
                "Bad page: pfn {pfn} was allocated with order {allocated} but freed with order {freed}"
            ),
            FreeError::NotAllocated { pfn } => write!(f, "Bad page: pfn {pfn} is not an allocated block"),
            FreeError::Unaligned { addr } => write!(f, "Bad page: address {addr} is not page aligned"),
            FreeError::Compound { pfn } => write!(f, "split_page of compound page at pfn {pfn}"),
            FreeError::Owned { pfn, owner } => write!(
                f,
                "Bad page: pfn {pfn} still belongs to {} (owner tag {owner:#04x}); free it through that layer",
                crate::page::owner::describe(owner).unwrap_or("a higher layer")
            ),
        }
    }
}
