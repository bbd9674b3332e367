//! vmalloc: virtually contiguous, physically scattered memory.
//!
//! ```text
//!  vmalloc(size, gfp)
//!    1. area:   lowest free range of size + guard page, aligned   (area.rs, under the state lock)
//!    2. pages:  high orders first, split to 4 KiB (or 2 MiB chunks for vmalloc_huge)
//!    3. map:    in batches of 64 into the page tables              (PageTables backend)
//!  vfree(addr)
//!    1. unlink from the busy tree                                  (state lock)
//!    2. clear the entries, free the pages — no TLB flush yet
//!    3. lazy list; past the threshold, purge: ONE flush for every lazy
//!       area, free emptied tables (only with `free_page_tables`, off by
//!       default), merge the ranges back into the free tree
//! ```
//!
//! [`Vmalloc`] owns a virtual range (Linux's `VMALLOC_START..VMALLOC_END`),
//! a [`PageTables`] backend, and the area allocator ([`area`]). Each area
//! has a guard page after it (except `vm_map_ram` ones, as in Linux), and a
//! record with its caller, flags, page count and requested size, which
//! [`Vmalloc::vmallocinfo`] prints in Linux's `/proc/vmallocinfo` format.
//!
//! # Semantics kept from Linux
//! - Pages: order-0 requests first try the largest order that fits the
//!   remaining count without direct reclaim, split it, then fall back to
//!   single pages (`vm_area_alloc_pages`); page allocations get
//!   `__GFP_NOWARN` and vmalloc reports failures itself ("vmalloc error:
//!   size N, failed to allocate pages").
//! - `vmalloc_huge`: 2 MiB mappings when the size is at least 2 MiB, area
//!   aligned to 2 MiB; if order-9 pages run out, the whole allocation is
//!   retried with 4 KiB pages.
//! - Lazy unmapping: entries are cleared at free time, the TLB flush and the
//!   reuse of the range wait for a purge, run when lazily freed pages exceed
//!   `fls(nr_cpus) * 32 MiB` (Linux's `lazy_max_pages`), on allocation
//!   failure (once, if the mask may block), or on demand
//!   ([`Vmalloc::purge`]).
//! - Context: allocation in interrupt context is refused (Linux `BUG_ON`s);
//!   with preemption disabled or a spinlock held only non-blocking masks
//!   (GFP_ATOMIC, GFP_NOWAIT) are allowed, a blocking one is reported as a
//!   sleep-in-atomic bug and handled by the page allocator's
//!   [`crate::ContextPolicy`]. `vfree` in interrupt context is deferred
//!   (Linux's `vfree_atomic`: the area's first word links it on a lock-free
//!   list, drained by the next call in process context); in NMI it is
//!   refused.
//! - `vfree` of something that is not a live vmalloc area — a kmalloc or
//!   other direct-map address, an interior pointer, a double free, a
//!   `vm_map_ram` area — is refused with a [`VfreeError`] saying which, and
//!   changes nothing.
//!
//! # Differences
//! - One state lock for the free tree, busy tree, lazy list and vmap blocks
//!   (Linux splits them and shards busy areas per "vmap node"). The page
//!   tables have their own lock; neither is held while pages are allocated.
//! - vmap blocks (`vm_map_ram` of up to 64 pages) are bump-allocated from one
//!   current block per CPU; a block that cannot fit a request is retired
//!   and freed once everything handed out of it is unmapped.
//! - Area records come from a page-backed pool that keeps its pages until
//!   the `Vmalloc` is dropped.
//! - No page array per area: the page tables are the list of an area's
//!   pages (vfree walks them while unmapping). vrealloc frees whole pages
//!   past a shrunk size and maps new ones when it grows back in place.
//!
//! # Usage in IRQs
//! See above: `vfree` is safe in hard and soft IRQ context (deferred);
//! allocation is not.

mod alloc;
pub mod area;
mod block;
mod free;
mod info;

pub use info::VmallocStats;

use crate::addr::{Pfn, VirtAddr, PAGE_SIZE};
use crate::context::ContextViolation;
use crate::error::AllocError;
use crate::gfp::{Gfp, GfpError};
use crate::page::PageAllocator;
use crate::paging::{MapError, PageTables};
use crate::platform::Platform;
use area::{Areas, VmapArea};
use core::fmt;
use core::panic::Location;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use info::Counters;

/// Frame owner tag of a page mapped and owned by a vmalloc area
/// ([`crate::page::owner`]).
pub const OWNER_VMALLOC: u8 = crate::page::owner::VMALLOC;
/// Frame owner tag of a page holding vmalloc's area records.
pub const OWNER_VMAP_AREA: u8 = crate::page::owner::VMAP_AREA;
/// Largest `vm_map_ram` served from per-CPU vmap blocks (Linux's
/// `VMAP_MAX_ALLOC`, `BITS_PER_LONG` pages).
pub const VMAP_MAX_ALLOC: usize = 64;
/// x86's `SHMLBA`: the alignment of `vmalloc_user`.
pub const SHMLBA: usize = PAGE_SIZE;
/// x86-64's `THREAD_ALIGN` (16 KiB stacks).
pub const THREAD_ALIGN: usize = 16 << 10;
/// 2 MiB, the huge mapping size (`PMD_SIZE`).
pub const PMD_SIZE: usize = 2 << 20;
/// Linux's `VMALLOC_START` on x86-64 with 4-level paging.
pub const X86_64_VMALLOC_START: usize = 0xffff_c900_0000_0000;
/// Size of Linux's x86-64 vmalloc space: 32 TiB.
pub const X86_64_VMALLOC_SIZE: usize = 32 << 40;

bitflags::bitflags! {
    /// Linux's `vm_struct` flags (`VM_*`), same values.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct VmFlags: u32 {
        /// `ioremap()` and friends.
        const IOREMAP = 0x1;
        /// `vmalloc()`.
        const ALLOC = 0x2;
        /// `vmap()`ed pages.
        const MAP = 0x4;
        /// Suitable for `remap_vmalloc_range`.
        const USERMAP = 0x8;
        /// DMA-coherent mapping.
        const DMA_COHERENT = 0x10;
        /// Not fully set up yet: hidden from vmallocinfo.
        const UNINITIALIZED = 0x20;
        /// No guard page after the area.
        const NO_GUARD = 0x40;
        /// KASAN shadow (unused here).
        const KASAN = 0x80;
        /// Reset direct-map permissions on free.
        const FLUSH_RESET_PERMS = 0x100;
        /// `vmap()` takes ownership of the pages: `vfree` frees them.
        const MAP_PUT_PAGES = 0x200;
        /// Allow 2 MiB mappings.
        const ALLOW_HUGE_VMAP = 0x400;
        /// Sparse area (mapped piecewise).
        const SPARSE = 0x1000;
        /// kmem: queued by a `vfree` in interrupt context.
        const DEFERRED_FREE = 0x8000_0000;
        /// kmem: on the lazy list, entries still being cleared (a purge
        /// waits for it).
        const UNMAPPING = 0x4000_0000;
    }
}

/// Linux's `GFP_RECLAIM_MASK`: the bits that say how hard to try, kept for
/// vmalloc's own metadata allocations.
pub const GFP_RECLAIM_MASK: Gfp = Gfp::RECLAIM
    .union(Gfp::HIGH)
    .union(Gfp::IO)
    .union(Gfp::FS)
    .union(Gfp::NOWARN)
    .union(Gfp::RETRY_MAYFAIL)
    .union(Gfp::NOFAIL)
    .union(Gfp::NORETRY)
    .union(Gfp::MEMALLOC)
    .union(Gfp::NOMEMALLOC);

/// Linux's `GFP_VMALLOC_SUPPORTED`: what `__vmalloc` and `vmalloc_huge`
/// accept; other bits are warned about and dropped.
pub const GFP_VMALLOC_SUPPORTED: Gfp = crate::gfp::GFP_KERNEL
    .union(crate::gfp::GFP_ATOMIC)
    .union(crate::gfp::GFP_NOWAIT)
    .union(Gfp::NOFAIL)
    .union(Gfp::ZERO)
    .union(Gfp::NORETRY)
    .union(Gfp::RETRY_MAYFAIL)
    .union(crate::gfp::GFP_NOFS)
    .union(crate::gfp::GFP_NOIO)
    .union(crate::gfp::GFP_KERNEL_ACCOUNT)
    .union(crate::gfp::GFP_USER)
    .union(Gfp::NOLOCKDEP)
    .union(Gfp::SKIP_KASAN);

/// `GFP_DMA32 | GFP_KERNEL`: what `vmalloc_32` allocates with.
pub const GFP_VMALLOC32: Gfp = crate::gfp::GFP_DMA32.union(crate::gfp::GFP_KERNEL);

/// Where vmalloc lives and how it behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmallocConfig {
    /// First address of the range (`VMALLOC_START`), page aligned.
    pub start: usize,
    /// One past the last address (`VMALLOC_END`), page aligned.
    pub end: usize,
    /// Lazily freed pages that trigger a purge; `None` is Linux's
    /// `fls(nr_cpus) * 32 MiB / PAGE_SIZE`.
    pub lazy_max_pages: Option<usize>,
    /// Give page tables that map nothing any more back to the page
    /// allocator at each lazy purge. Off by default, as Linux, which keeps
    /// vmalloc's page tables once made (only a huge mapping frees the empty
    /// table it replaces, `pmd_free_pte_page`): a later allocation in the
    /// same range writes leaves only. On, the range's footprint in page
    /// tables follows what is mapped, at the price of remaking them.
    pub free_page_tables: bool,
    /// Allow 2 MiB mappings for `vmalloc_huge` (Linux's `nohugevmalloc`
    /// turns it off).
    pub allow_huge: bool,
}

impl VmallocConfig {
    /// Linux's x86-64 layout: 32 TiB from `0xffffc90000000000`.
    pub const fn x86_64() -> Self {
        VmallocConfig::range(
            X86_64_VMALLOC_START,
            X86_64_VMALLOC_START + X86_64_VMALLOC_SIZE,
        )
    }

    /// The range `[start, end)` with Linux's defaults otherwise.
    pub const fn range(start: usize, end: usize) -> Self {
        VmallocConfig {
            start,
            end,
            lazy_max_pages: None,
            free_page_tables: false,
            allow_huge: true,
        }
    }
}

impl Default for VmallocConfig {
    fn default() -> Self {
        VmallocConfig::x86_64()
    }
}

/// Why a vmalloc-family allocation failed. Nothing is left allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmallocError {
    /// Size 0 (Linux warns and returns NULL).
    ZeroSize,
    /// More pages than the machine has (Linux: "exceeds total pages").
    ExceedsTotalRam {
        /// Bytes asked for.
        size: usize,
        /// Pages of RAM managed.
        total_pages: usize,
    },
    /// `n * size` overflowed (`vmalloc_array`, `vcalloc`).
    Overflow {
        /// Element count.
        n: usize,
        /// Element size.
        size: usize,
    },
    /// Alignment not a power of two.
    BadAlign {
        /// The alignment asked for.
        align: usize,
    },
    /// Flags the call does not accept (e.g. `VM_FLUSH_RESET_PERMS` to vmap).
    BadFlags {
        /// The flags.
        flags: VmFlags,
    },
    /// A virtual range that is not page aligned or is empty.
    BadRange {
        /// Start asked for.
        start: usize,
        /// End asked for.
        end: usize,
    },
    /// The mask is invalid.
    InvalidGfp(GfpError),
    /// Called in hard or soft IRQ context (Linux: `BUG_ON(in_interrupt())`).
    InInterrupt,
    /// Called in NMI context.
    InNmi,
    /// A blocking mask in atomic context (policy: fail).
    SleepInAtomic(ContextViolation),
    /// No free virtual range of this size and alignment (Linux:
    /// "vmalloc_node_range for size N failed: Address range restricted").
    NoVirtualSpace {
        /// Bytes asked for (guard included).
        size: usize,
        /// Alignment.
        align: usize,
        /// Range searched.
        start: usize,
        /// End of the range searched.
        end: usize,
    },
    /// Pages could not be allocated.
    NoPages {
        /// Bytes asked for.
        size: usize,
        /// The page allocator's answer.
        error: AllocError,
    },
    /// An area record could not be allocated.
    Metadata(AllocError),
    /// The page tables refused the mapping.
    Map(MapError),
    /// `vmap` or `vm_map_ram` of a frame that is not RAM (no frame record,
    /// or a hole of the memory map): they map pages, as Linux's take
    /// `struct page`s; device memory goes through `ioremap`.
    NotRam {
        /// The first such frame.
        pfn: Pfn,
    },
    /// `vrealloc` of something that is not a live vmalloc area.
    Realloc(VfreeError),
    /// `vrealloc` with a larger alignment than the area has.
    ReallocAlign {
        /// The alignment asked for.
        align: usize,
    },
}

impl core::error::Error for VmallocError {}

impl fmt::Display for VmallocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmallocError::ZeroSize => write!(f, "vmalloc of 0 bytes"),
            VmallocError::ExceedsTotalRam { size, total_pages } => write!(
                f,
                "vmalloc error: size {size}, exceeds total pages ({total_pages})"
            ),
            VmallocError::Overflow { n, size } => {
                write!(f, "array of {n} x {size} bytes overflows")
            }
            VmallocError::BadAlign { align } => {
                write!(f, "alignment {align:#x} is not a power of two")
            }
            VmallocError::BadFlags { flags } => write!(f, "flags {flags:?} not allowed here"),
            VmallocError::BadRange { start, end } => write!(
                f,
                "virtual range {start:#x}-{end:#x} is not page aligned or is empty"
            ),
            VmallocError::InvalidGfp(e) => write!(f, "{e}"),
            VmallocError::InInterrupt => write!(
                f,
                "vmalloc in interrupt context (Linux: BUG_ON(in_interrupt())): allocate earlier, or use kmalloc with GFP_ATOMIC"
            ),
            VmallocError::InNmi => write!(f, "vmalloc in NMI context"),
            VmallocError::SleepInAtomic(v) => write!(f, "{v}"),
            VmallocError::NoVirtualSpace {
                size,
                start,
                end,
                align,
            } => write!(
                f,
                "vmalloc_node_range for size {size} failed: Address range restricted to {start:#x} - {end:#x} (align {align:#x})"
            ),
            VmallocError::NoPages { size, error } => write!(
                f,
                "vmalloc error: size {size}, failed to allocate pages: {error}"
            ),
            VmallocError::Metadata(e) => {
                write!(f, "vmalloc error: vm_struct allocation failed: {e}")
            }
            VmallocError::Map(e) => write!(f, "vmalloc error: failed to map pages: {e}"),
            VmallocError::NotRam { pfn } => write!(
                f,
                "vmap: frame {:#x} is not RAM (vmap and vm_map_ram map pages; device memory needs ioremap)",
                pfn.0
            ),
            VmallocError::Realloc(e) => write!(f, "vrealloc: {e}"),
            VmallocError::ReallocAlign { align } => write!(
                f,
                "will not reallocate with a bigger alignment ({align:#x})"
            ),
        }
    }
}

/// What a refused free was given. Nothing was changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VfreeError {
    /// Not page aligned (Linux: "Trying to vfree() bad address").
    Unaligned {
        /// The address.
        addr: usize,
    },
    /// A kmalloc (slab) address: use `kfree`.
    Kmalloc {
        /// The address.
        addr: usize,
    },
    /// Outside the vmalloc range and not a kmalloc address.
    NotVmalloc {
        /// The address.
        addr: usize,
        /// It lies in the direct map.
        direct_map: bool,
    },
    /// Inside a live area that starts elsewhere.
    Interior {
        /// The address.
        addr: usize,
        /// Start of the area.
        area: usize,
    },
    /// Already freed (the range is waiting for a purge, or queued by a
    /// deferred free).
    DoubleFree {
        /// The address.
        addr: usize,
    },
    /// No live area there (Linux: "Trying to vfree() nonexistent vm area").
    NotAllocated {
        /// The address.
        addr: usize,
    },
    /// The area is of another kind (a `vm_map_ram` area, or a vmalloc area
    /// given to `vunmap`).
    WrongKind {
        /// The address.
        addr: usize,
        /// What it is.
        kind: &'static str,
        /// The call that frees it.
        use_instead: &'static str,
    },
    /// `vm_unmap_ram` with another page count than `vm_map_ram` mapped.
    WrongSize {
        /// The address.
        addr: usize,
        /// Pages the area maps.
        mapped: usize,
        /// Pages given.
        given: usize,
    },
    /// `vm_unmap_ram` of an address inside a vmap block (a mapping of at
    /// most [`VMAP_MAX_ALLOC`] pages) with a count that is larger or runs
    /// past the block.
    WrongSizeInBlock {
        /// The address.
        addr: usize,
        /// Pages given.
        given: usize,
    },
    /// Called in NMI context.
    InNmi,
    /// `vunmap` in interrupt context.
    InInterrupt,
}

impl core::error::Error for VfreeError {}

impl fmt::Display for VfreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            VfreeError::Unaligned { addr } => {
                write!(f, "Trying to vfree() bad address ({addr:#x}): not page aligned")
            }
            VfreeError::Kmalloc { addr } => write!(
                f,
                "vfree() of a kmalloc address ({addr:#x}): it came from kmalloc, free it with kfree() (or use kvfree())"
            ),
            VfreeError::NotVmalloc { addr, direct_map } => write!(
                f,
                "Trying to vfree() {addr:#x}, which is not a vmalloc address{}",
                if direct_map { " (it is in the direct map)" } else { "" }
            ),
            VfreeError::Interior { addr, area } => write!(
                f,
                "Trying to vfree() {addr:#x}, inside the vmalloc area starting at {area:#x}: free the start"
            ),
            VfreeError::DoubleFree { addr } => {
                write!(f, "double vfree() of {addr:#x}: the area is already freed")
            }
            VfreeError::NotAllocated { addr } => {
                write!(f, "Trying to vfree() nonexistent vm area ({addr:#x})")
            }
            VfreeError::WrongKind {
                addr,
                kind,
                use_instead,
            } => write!(
                f,
                "{addr:#x} is a {kind} area: release it with {use_instead}"
            ),
            VfreeError::WrongSize {
                addr,
                mapped,
                given,
            } => write!(
                f,
                "vm_unmap_ram({addr:#x}, {given}): the area maps {mapped} pages; nothing unmapped"
            ),
            VfreeError::WrongSizeInBlock { addr, given } => write!(
                f,
                "vm_unmap_ram({addr:#x}, {given}): {addr:#x} is a mapping in a vmap block, of at most {VMAP_MAX_ALLOC} pages and within its block; nothing unmapped"
            ),
            VfreeError::InNmi => write!(f, "vfree() in NMI context (Linux: BUG_ON(in_nmi()))"),
            VfreeError::InInterrupt => {
                write!(f, "vunmap() in interrupt context (Linux: BUG_ON(in_interrupt()))")
            }
        }
    }
}

/// A snapshot of one area's record (Linux's `vm_struct`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmArea {
    /// First address.
    pub addr: VirtAddr,
    /// Bytes reserved, guard page included (Linux's `vm->size`).
    pub size: usize,
    /// Bytes asked for (Linux's `vm->requested_size`).
    pub requested_size: usize,
    /// Pages (4 KiB) mapped and owned.
    pub nr_pages: usize,
    /// Flags.
    pub flags: VmFlags,
    /// Who allocated it.
    pub caller: Option<&'static Location<'static>>,
    /// Mapping order: 0 for 4 KiB pages, 9 for 2 MiB.
    pub page_order: u32,
    /// A `vm_map_ram` area (no `vm_struct` in Linux).
    pub vm_map_ram: bool,
}

impl VmArea {
    fn from_record(r: &VmapArea) -> VmArea {
        VmArea {
            addr: VirtAddr(r.start),
            size: r.size(),
            requested_size: r.requested_size.load(Relaxed),
            nr_pages: r.nr_pages.load(Relaxed),
            flags: VmFlags::from_bits_retain(r.vm_flags.load(Relaxed)),
            caller: r.caller,
            page_order: r.page_order as u32,
            vm_map_ram: r.va_flags & area::VMAP_RAM != 0,
        }
    }

    /// Usable bytes: `size` less the guard page (Linux's
    /// `get_vm_area_size`).
    pub fn usable_size(&self) -> usize {
        if self.flags.contains(VmFlags::NO_GUARD) || self.vm_map_ram {
            self.size
        } else {
            self.size - PAGE_SIZE
        }
    }
}

/// Everything under the state lock.
pub(crate) struct State {
    pub(crate) areas: Areas,
    /// Pool pages, as pfn + 1 (0 = none), linked through `private[0]` of
    /// their frame records.
    pub(crate) pool_head: u64,
    /// Each CPU's vmap blocks with pages left to hand out, oldest first,
    /// linked through `vb_next` (Linux's `vmap_block_queue.free`).
    pub(crate) vb_free: [*mut VmapArea; crate::page::MAX_CPUS],
    /// `vfree_rcu_mightsleep` queue: busy areas linked through their
    /// records' `next` (unused while an area is busy), newest first.
    pub(crate) rcu_records: *mut VmapArea,
}

// SAFETY: the raw pointers are records in pool pages, used under the lock.
unsafe impl Send for State {}

/// The vmalloc allocator over one virtual range and one page-table backend.
pub struct Vmalloc<'a, P: Platform, B: PageTables> {
    pub(crate) pages: &'a PageAllocator<P>,
    pub(crate) tables: B,
    pub(crate) config: VmallocConfig,
    pub(crate) lazy_max: usize,
    /// Pages managed by the page allocator at creation (Linux's
    /// `totalram_pages`).
    pub(crate) total_pages: usize,
    /// Pages per vmap block (Linux's `VMAP_BBMAP_BITS`).
    pub(crate) vb_bits: usize,
    pub(crate) state: lock_api::Mutex<P::Lock, State>,
    pub(crate) purge_lock: lock_api::Mutex<P::Lock, ()>,
    /// Deferred frees: a lock-free list through the areas' first words.
    pub(crate) deferred: AtomicUsize,
    /// `vfree_rcu` queue: address of the newest queued `rcu_head` (0: none);
    /// each head holds the next head's address and its own offset.
    pub(crate) rcu_pending: AtomicUsize,
    /// Lazily freed pages, as last seen under the lock (the purge trigger
    /// reads it without the lock).
    pub(crate) lazy_pending: AtomicUsize,
    pub(crate) stats: Counters,
    /// Pages mapped and owned by live vmalloc areas (`nr_vmalloc_pages`).
    pub(crate) nr_vmalloc_pages: AtomicU64,
}

// SAFETY: all shared state is behind the platform lock or atomics; the page
// allocator and the backend are Sync.
unsafe impl<P: Platform, B: PageTables> Sync for Vmalloc<'_, P, B> {}
// SAFETY: as above; nothing is tied to the creating thread.
unsafe impl<P: Platform, B: PageTables> Send for Vmalloc<'_, P, B> {}

/// Linux's `fls`: index of the highest set bit, 1-based (0 for 0).
const fn fls(x: usize) -> usize {
    (usize::BITS - x.leading_zeros()) as usize
}

impl<'a, P: Platform, B: PageTables> Vmalloc<'a, P, B> {
    /// Reports a call that may sleep made in atomic context `ctx`
    /// ("sleeping function called from invalid context") and counts it;
    /// what happens next is the caller's.
    pub(crate) fn sleep_in_atomic(
        &self,
        ctx: crate::context::ExecContext,
        caller: &'static Location<'static>,
    ) -> ContextViolation {
        self.stats.context_violations.fetch_add(1, Relaxed);
        let v = ContextViolation {
            context: ctx,
            cpu: self.pages.platform().cpu_id(),
            caller,
        };
        self.pages.platform().warn(format_args!("{v}"));
        v
    }

    /// vmalloc over `config`'s range, mapping through `tables`, with pages
    /// from `pages`. Takes one page for the first area records.
    pub fn new(
        pages: &'a PageAllocator<P>,
        tables: B,
        config: VmallocConfig,
    ) -> Result<Self, AllocError> {
        let start = config.start & !(PAGE_SIZE - 1);
        let end = config.end & !(PAGE_SIZE - 1);
        let pfn = pages.alloc_pages(crate::gfp::GFP_KERNEL, 0)?;
        if let Some(f) = pages.frame(pfn) {
            f.set_owner(OWNER_VMAP_AREA);
            f.private[0].store(0, Relaxed);
        }
        // SAFETY: a fresh page we own for the allocator's life.
        let areas = unsafe { Areas::new(start, end, pages.page_address(pfn).as_ptr()) };
        let nr_cpus = pages.platform().nr_cpus().max(1);
        let lazy_max = config
            .lazy_max_pages
            .unwrap_or(fls(nr_cpus) * (32 << 20) / PAGE_SIZE);
        // VMAP_BBMAP_BITS: min(1024, max(128, VMALLOC_PAGES /
        // roundup_pow_of_two(NR_CPUS) / 16)) with VMALLOC_SPACE = 128 GiB.
        let vmalloc_pages = (128usize << 30) / PAGE_SIZE;
        let vb_bits =
            (vmalloc_pages / nr_cpus.next_power_of_two() / 16).clamp(2 * VMAP_MAX_ALLOC, 1024);
        Ok(Vmalloc {
            pages,
            tables,
            config: VmallocConfig {
                start,
                end,
                ..config
            },
            lazy_max,
            total_pages: pages.nr_managed_pages(),
            vb_bits,
            state: lock_api::Mutex::new(State {
                areas,
                pool_head: pfn.0 + 1,
                vb_free: [core::ptr::null_mut(); crate::page::MAX_CPUS],
                rcu_records: core::ptr::null_mut(),
            }),
            purge_lock: lock_api::Mutex::new(()),
            deferred: AtomicUsize::new(0),
            lazy_pending: AtomicUsize::new(0),
            rcu_pending: AtomicUsize::new(0),
            stats: Counters::default(),
            nr_vmalloc_pages: AtomicU64::new(0),
        })
    }

    /// The page allocator underneath.
    pub fn pages(&self) -> &'a PageAllocator<P> {
        self.pages
    }

    /// The page-table backend.
    pub fn tables(&self) -> &B {
        &self.tables
    }

    /// The configuration (range page-aligned).
    pub fn config(&self) -> &VmallocConfig {
        &self.config
    }

    /// The lazy purge threshold, in pages.
    pub fn lazy_max_pages(&self) -> usize {
        self.lazy_max
    }

    /// Pages per vmap block (Linux's `VMAP_BBMAP_BITS`).
    pub fn vmap_block_pages(&self) -> usize {
        self.vb_bits
    }

    /// Linux's `is_vmalloc_addr`: inside `[VMALLOC_START, VMALLOC_END)`.
    #[inline]
    pub fn is_vmalloc_addr(&self, addr: *const u8) -> bool {
        let a = addr as usize;
        a >= self.config.start && a < self.config.end
    }

    /// Linux's `vmalloc_to_page`: the 4 KiB frame mapped at `addr` (the
    /// matching small page of a huge mapping).
    pub fn vmalloc_to_page(&self, addr: *const u8) -> Option<Pfn> {
        if !self.is_vmalloc_addr(addr) {
            return None;
        }
        self.tables
            .translate(VirtAddr(addr as usize))
            .ok()
            .map(|t| t.pfn())
    }

    /// Linux's `vmalloc_to_pfn`.
    pub fn vmalloc_to_pfn(&self, addr: *const u8) -> Option<u64> {
        self.vmalloc_to_page(addr).map(|p| p.0)
    }

    /// Linux's `find_vm_area`: the live area starting at `addr`.
    pub fn find_vm_area(&self, addr: *const u8) -> Option<VmArea> {
        let s = self.state.lock();
        s.areas.find_busy(addr as usize).map(VmArea::from_record)
    }

    /// The live area containing `addr` (any address inside it).
    pub fn find_vm_area_containing(&self, addr: *const u8) -> Option<VmArea> {
        let s = self.state.lock();
        s.areas
            .find_busy_containing(addr as usize)
            .map(VmArea::from_record)
    }

    /// Calls `f` for every live area, in address order, under the state
    /// lock (do not call back into this allocator).
    pub fn for_each_area(&self, mut f: impl FnMut(&VmArea)) {
        let s = self.state.lock();
        s.areas.for_each_busy(&mut |r| f(&VmArea::from_record(r)));
    }

    /// Calls `f(start, end)` for every lazily freed range awaiting a purge.
    pub fn for_each_lazy(&self, mut f: impl FnMut(VirtAddr, VirtAddr)) {
        let s = self.state.lock();
        s.areas
            .for_each_lazy(&mut |r| f(VirtAddr(r.start), VirtAddr(r.end)));
    }

    /// Calls `f(start, end)` for every free range.
    pub fn for_each_free(&self, mut f: impl FnMut(VirtAddr, VirtAddr)) {
        let s = self.state.lock();
        s.areas
            .for_each_free(&mut |r| f(VirtAddr(r.start), VirtAddr(r.end)));
    }

    /// Checks the area allocator's invariants (tree order, balance,
    /// augmented sizes, no overlap between free, busy and lazy ranges).
    pub fn verify(&self) -> Result<(), &'static str> {
        self.state.lock().areas.check()
    }

    /// Caller location for internal allocations.
    #[track_caller]
    #[inline]
    fn here() -> &'static Location<'static> {
        Location::caller()
    }
}

impl<P: Platform, B: PageTables> Drop for Vmalloc<'_, P, B> {
    /// Purges lazy areas and gives the record pool back. Pages of areas
    /// still live are not freed (their owners still hold pointers); the
    /// count is reported.
    fn drop(&mut self) {
        self.run_rcu();
        self.drain_deferred();
        self.purge_fragmented_blocks(true);
        self.purge();
        let s = self.state.get_mut();
        let live = s.areas.nr_busy;
        let mut head = s.pool_head;
        s.pool_head = 0;
        if live > 0 {
            self.pages.platform().warn(format_args!(
                "vmalloc: {live} areas still allocated at teardown; their pages are leaked"
            ));
        }
        while head != 0 {
            let pfn = Pfn(head - 1);
            let f = self.pages.frame(pfn);
            head = f.map_or(0, |f| f.private[0].load(Relaxed) as u64);
            if let Some(f) = f {
                f.set_owner(0);
                f.private[0].store(0, Relaxed);
            }
            let _ = self.pages.free_pages(pfn, 0);
        }
    }
}

impl<P: Platform, B: PageTables> fmt::Debug for Vmalloc<'_, P, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vmalloc")
            .field("start", &format_args!("{:#x}", self.config.start))
            .field("end", &format_args!("{:#x}", self.config.end))
            .field("lazy_max_pages", &self.lazy_max)
            .field("stats", &self.stats())
            .finish()
    }
}
