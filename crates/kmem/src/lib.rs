//! # kmem: Linux's kernel memory allocation stack, in Rust
//!
//! This crate is the core: `#![no_std]`, no `alloc`, no heap of its own. It
//! manages physical memory handed over as a firmware memory map and hands out
//! pages with Linux's semantics: zones chosen by GFP mask, buddy free lists
//! with per-CPU caches, watermarks and reserves, migrate-type grouping,
//! shrinker-driven reclaim with Linux's retry rules, and a context check that
//! reports a sleeping allocation in atomic context.
//!
//! ```text
//!   callers ──► page allocator (zones, buddy, pcp lists, watermarks, reclaim)
//!                       │
//!      frame records (one per 4 KiB frame) + memory map (nodes, zones, holes)
//!                       │
//!   platform: direct map, cpu id, context probe, locks  (kernel | kmem-host)
//! ```
//!
//! A kernel implements [`Platform`]; `kmem-host` implements it on Linux
//! userspace over a memfd so that every pointer is real.
//!
//! ```ignore
//! let pages = PageAllocator::new(my_platform, &memory_map, PageConfig::default())?;
//! let pfn = pages.alloc_pages(GFP_KERNEL, 0)?;       // one 4 KiB page
//! let va = pages.page_address(pfn);                 // its direct-map address
//! pages.free_pages(pfn, 0)?;
//! ```

#![no_std]
#![warn(missing_docs)]

#[cfg(test)]
extern crate std;

pub mod addr;
pub mod context;
mod cpu_lock;
pub mod dma;
pub mod error;
pub mod gfp;
mod hint;
pub mod kvmalloc;
pub mod page;
pub mod paging;
pub mod platform;
pub mod procfs;
pub mod slab;
pub mod vmalloc;

pub use addr::{get_order, Pfn, PhysAddr, VirtAddr, MAX_PAGE_ORDER, PAGE_SHIFT, PAGE_SIZE};
pub use context::{ContextKind, ContextPolicy, ContextViolation, ExecContext};
pub use error::{AllocError, FreeError, NoMemory};
pub use gfp::{Gfp, GfpError, MigrateType, ZoneType};
pub use page::{MemoryMapError, PageAllocator, PageConfig, Region, RegionKind, Shrinker};
pub use platform::Platform;
