//! DMA pools: small coherent blocks (Linux's `mm/dmapool.c`).
//!
//! Descriptors of 32 or 64 bytes are too small to spend a page of coherent
//! memory on each. A pool cuts coherent pages into equal blocks, sized as
//! Linux's `dma_pool_create` sizes them:
//!
//! - `size` is first raised to 16 bytes, the free-block header
//!   (Linux's `struct dma_block`: next free block, its bus address), then
//!   rounded up to `align` (0 means 1; a power of two) and to nothing
//!   else: a 20-byte pool with `align` 4 has a 20-byte stride;
//! - a pool page is `allocation = max(size, PAGE_SIZE)` bytes, taken with
//!   `dma_alloc_coherent` (so within the coherent mask, and
//!   `2^get_order(allocation)` pages, naturally aligned); blocks are laid out
//!   in the first `allocation` bytes only;
//! - blocks never cross a multiple of `boundary` (a power of two, at least
//!   `size`; 0 means `allocation`; larger values are cut to `allocation`):
//!   blocks are packed from the start of each boundary window and one that
//!   would straddle the next multiple starts there instead, as hardware
//!   with 4 KiB descriptor-fetch limits needs.
//!
//! Free blocks are on one pool-wide list threaded through the blocks
//! themselves, as Linux's: the header is the block's first 16 bytes, so a
//! free block always has room for it (the size was raised to 16 for that)
//! but need not be 8-byte aligned (an `align` below 8 with a stride that is
//! not a multiple of 8), so it is read and written unaligned. Each pool
//! page's head frame record holds the link to the next page (`private[0]`,
//! pfn + 1) and its count of blocks in use (`private[1]`), and is tagged
//! [`OWNER_DMA_POOL`]; the pool descriptor is a value the driver owns, so
//! nothing here needs a heap.
//!
//! With DMA debugging on, free blocks are poisoned (0xa7 after the header,
//! as `CONFIG_DMAPOOL_DEBUG`): a block written after its free is reported at
//! its next allocation, and a double free is found by walking the free list.
//! `dma_pool_free` of a block of another pool, or of an address inside a
//! block, is refused. `dma_pool_destroy` reports blocks still in use and
//! keeps (leaks) only the pages that hold them.
//!
//! Differences from Linux: a block size whose pool page would need more
//! than `MAX_PAGE_ORDER` pages is refused at create time (Linux accepts up
//! to `INT_MAX` and fails every allocation).

use super::coherent::{alloc_coherent_at, free_coherent_at};
use super::device::Device;
use super::{DmaAddr, DmaError, OWNER_DMA_COHERENT};
use crate::addr::{get_order, Pfn, VirtAddr, MAX_PAGE_ORDER, PAGE_SIZE};
use crate::gfp::Gfp;
use crate::platform::Platform;
use core::fmt;
use core::panic::Location;
use core::ptr::NonNull;
use core::sync::atomic::Ordering::Relaxed;

/// Frame owner tag of the head frame of a DMA pool page.
pub const OWNER_DMA_POOL: u8 = crate::page::owner::DMA_POOL;
/// Byte filling free pool blocks (after the header) under debugging.
pub const POOL_POISON_FREED: u8 = 0xa7;
/// Byte filling freshly allocated pool blocks under debugging.
pub const POOL_POISON_ALLOCATED: u8 = 0xa9;
/// The free-block header (Linux's `struct dma_block`): next free block, its
/// bus address. Every block is at least this large.
pub const DMA_BLOCK_HEADER: usize = 16;

/// Blocks still in use when a pool was destroyed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolLeak {
    /// The pool's name.
    pub name: &'static str,
    /// Blocks in use.
    pub busy_blocks: usize,
    /// Pool pages kept because they hold them.
    pub leaked_pages: usize,
}

impl fmt::Display for PoolLeak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dma_pool_destroy {}: {} blocks busy; {} pool pages leaked",
            self.name, self.busy_blocks, self.leaked_pages
        )
    }
}

/// Reads the header of the free block at `b`: the next free block and the
/// block's bus address. Blocks need not be 8-byte aligned.
///
/// # Safety
/// `b` is a free block of a pool (at least [`DMA_BLOCK_HEADER`] bytes).
unsafe fn read_header(b: usize) -> (usize, u64) {
    // SAFETY: the caller's block holds 16 header bytes.
    unsafe {
        (
            (b as *const usize).read_unaligned(),
            ((b + 8) as *const u64).read_unaligned(),
        )
    }
}

/// Writes the header of the block at `b`, which becomes free.
///
/// # Safety
/// `b` is a block of a pool that nobody else uses.
unsafe fn write_header(b: usize, next: usize, dma: u64) {
    // SAFETY: the caller's block holds 16 header bytes.
    unsafe {
        (b as *mut usize).write_unaligned(next);
        ((b + 8) as *mut u64).write_unaligned(dma);
    }
}

struct PoolState {
    /// Direct-map address of the first free block (0: none).
    free: usize,
    /// First pool page, as pfn + 1 (0: none).
    pages: u64,
    nr_pages: usize,
    nr_blocks: usize,
    nr_active: usize,
}

/// A pool of equal coherent blocks for one device (Linux's `struct
/// dma_pool`).
pub struct DmaPool<'d, P: Platform> {
    dev: &'d Device<'d, P>,
    name: &'static str,
    size: usize,
    boundary: usize,
    allocation: usize,
    order: u32,
    state: lock_api::Mutex<P::Lock, PoolState>,
    created_at: &'static Location<'static>,
    destroyed: bool,
}

// SAFETY: the pool's state is under the platform lock; its pages belong to
// it.
unsafe impl<P: Platform> Send for DmaPool<'_, P> {}
// SAFETY: as above.
unsafe impl<P: Platform> Sync for DmaPool<'_, P> {}

/// Linux's `dma_pool_create`: a pool of `size`-byte blocks aligned to
/// `align` (a power of two; 0 means 1) that never cross a multiple of
/// `boundary` (a power of two at least the block size; 0 means no
/// constraint beyond the pool page).
///
/// The block size (the stride between blocks) is `size` raised to
/// [`DMA_BLOCK_HEADER`] and rounded up to `align`, as Linux computes it.
#[track_caller]
pub fn dma_pool_create<'d, P: Platform>(
    name: &'static str,
    dev: &'d Device<'d, P>,
    size: usize,
    align: usize,
    boundary: usize,
) -> Result<DmaPool<'d, P>, DmaError> {
    if size == 0 {
        return Err(DmaError::ZeroSize);
    }
    let align = align.max(1);
    if !align.is_power_of_two() {
        return Err(DmaError::InvalidArgument(
            "dma_pool_create: align must be a power of two",
        ));
    }
    let Some(size) = size.max(DMA_BLOCK_HEADER).checked_next_multiple_of(align) else {
        return Err(DmaError::InvalidArgument(
            "dma_pool_create: blocks larger than 4 MiB",
        ));
    };
    let allocation = size.max(PAGE_SIZE);
    let order = get_order(allocation);
    if order > MAX_PAGE_ORDER {
        return Err(DmaError::InvalidArgument(
            "dma_pool_create: blocks larger than 4 MiB",
        ));
    }
    let boundary =
        match boundary {
            0 => allocation,
            b if b < size || !b.is_power_of_two() => return Err(DmaError::InvalidArgument(
                "dma_pool_create: boundary must be a power of two no smaller than the block size",
            )),
            b => b.min(allocation),
        };
    Ok(DmaPool {
        dev,
        name,
        size,
        boundary,
        allocation,
        order,
        state: lock_api::Mutex::new(PoolState {
            free: 0,
            pages: 0,
            nr_pages: 0,
            nr_blocks: 0,
            nr_active: 0,
        }),
        created_at: Location::caller(),
        destroyed: false,
    })
}

impl<'d, P: Platform> DmaPool<'d, P> {
    /// Its name.
    pub fn name(&self) -> &'static str {
        self.name
    }
    /// Block size, the stride between blocks: the requested size raised to
    /// [`DMA_BLOCK_HEADER`] and rounded up to the alignment (Linux's
    /// `pool->size`).
    pub fn size(&self) -> usize {
        self.size
    }
    /// The boundary no block crosses.
    pub fn boundary(&self) -> usize {
        self.boundary
    }
    /// Bytes of each pool page that hold blocks: `max(size, PAGE_SIZE)`
    /// (Linux's `pool->allocation`; the page itself is
    /// `2^get_order(allocation)` pages).
    pub fn allocation(&self) -> usize {
        self.allocation
    }
    /// The device.
    pub fn device(&self) -> &'d Device<'d, P> {
        self.dev
    }
    /// Blocks in use.
    pub fn active_blocks(&self) -> usize {
        self.state.lock().nr_active
    }
    /// Blocks in all pool pages.
    pub fn total_blocks(&self) -> usize {
        self.state.lock().nr_blocks
    }
    /// Pool pages.
    pub fn nr_pages(&self) -> usize {
        self.state.lock().nr_pages
    }
    /// Blocks per pool page.
    pub fn blocks_per_page(&self) -> usize {
        (self.allocation / self.boundary) * (self.boundary / self.size)
    }

    fn debug(&self) -> bool {
        self.dev.dma().debug.enabled()
    }

    /// Offsets of the blocks in a pool page.
    fn offsets(&self) -> impl DoubleEndedIterator<Item = usize> + '_ {
        let per_window = self.boundary / self.size;
        (0..self.allocation / self.boundary)
            .flat_map(move |w| (0..per_window).map(move |j| w * self.boundary + j * self.size))
    }

    fn is_block_offset(&self, off: usize) -> bool {
        let r = off % self.boundary;
        off < self.allocation && r.is_multiple_of(self.size) && r + self.size <= self.boundary
    }

    /// The head pfn of the pool page holding `pa`'s frame.
    fn page_head(&self, pfn: Pfn) -> Pfn {
        Pfn(pfn.0 & !((1u64 << self.order) - 1))
    }

    fn owns_page(&self, st: &PoolState, head: Pfn) -> bool {
        let pages = self.dev.dma().pages;
        let mut p = st.pages;
        while p != 0 {
            if p - 1 == head.0 {
                return true;
            }
            p = pages
                .frame(Pfn(p - 1))
                .map_or(0, |f| f.private[0].load(Relaxed) as u64);
        }
        false
    }

    fn in_use_delta(&self, head: Pfn, delta: isize) {
        if let Some(f) = self.dev.dma().pages.frame(head) {
            let v = f.private[1].load(Relaxed) as isize + delta;
            f.private[1].store(v as usize, Relaxed);
        }
    }

    /// Adds a pool page (allocated without the lock) and threads its blocks
    /// onto the free list.
    fn grow(&self, gfp: Gfp, site: &'static Location<'static>) -> Result<(), DmaError> {
        let (va, dma) = alloc_coherent_at(self.dev, self.allocation, gfp, site)?;
        let pages = self.dev.dma().pages;
        let base = va.as_ptr() as usize;
        let head = Pfn(dma.0 >> crate::addr::PAGE_SHIFT);
        let debug = self.debug();
        if debug {
            // SAFETY: the fresh coherent block is ours.
            unsafe { va.as_ptr().write_bytes(POOL_POISON_FREED, self.allocation) };
        }
        let mut st = self.state.lock();
        let mut n = 0;
        // Thread in reverse so the first block is allocated first.
        let mut last = st.free;
        for off in self.offsets().rev() {
            let b = base + off;
            // SAFETY: a block of the fresh page: header words are ours.
            unsafe { write_header(b, last, dma.0 + off as u64) };
            last = b;
            n += 1;
        }
        st.free = last;
        if let Some(f) = pages.frame(head) {
            f.set_owner(OWNER_DMA_POOL);
            f.private[0].store(st.pages as usize, Relaxed);
            f.private[1].store(0, Relaxed);
        }
        st.pages = head.0 + 1;
        st.nr_pages += 1;
        st.nr_blocks += n;
        Ok(())
    }

    fn alloc_at(
        &self,
        gfp: Gfp,
        zero: bool,
        site: &'static Location<'static>,
    ) -> Result<(NonNull<u8>, DmaAddr), DmaError> {
        loop {
            let mut st = self.state.lock();
            if st.free == 0 {
                drop(st);
                self.grow(gfp, site)?;
                continue;
            }
            let b = st.free;
            // SAFETY: a free block: its header holds the next free block.
            let (next, dma) = unsafe { read_header(b) };
            st.free = next;
            st.nr_active += 1;
            let head = self.page_head(Pfn(dma >> crate::addr::PAGE_SHIFT));
            self.in_use_delta(head, 1);
            drop(st);
            if self.debug() {
                // SAFETY: the block is ours now.
                let body = unsafe {
                    core::slice::from_raw_parts(
                        (b + DMA_BLOCK_HEADER) as *const u8,
                        self.size - DMA_BLOCK_HEADER,
                    )
                };
                if let Some(i) = body.iter().position(|&x| x != POOL_POISON_FREED) {
                    self.dev.dma().pages.platform().warn(format_args!(
                        "{} {}: dma_pool_alloc {}, {:#x} (corrupted): byte {} was written after the block was freed (at {site})",
                        self.dev.driver(),
                        self.dev.name(),
                        self.name,
                        b,
                        DMA_BLOCK_HEADER + i
                    ));
                    self.dev.dma().debug.count_error();
                }
            }
            let fill = if zero {
                Some(0)
            } else if self.debug() {
                Some(POOL_POISON_ALLOCATED)
            } else {
                None
            };
            if let Some(v) = fill {
                // SAFETY: the block is ours.
                unsafe { (b as *mut u8).write_bytes(v, self.size) };
            }
            // SAFETY: block addresses are direct-map addresses, never null.
            return Ok((
                unsafe { NonNull::new_unchecked(b as *mut u8) },
                DmaAddr(dma),
            ));
        }
    }
}

/// Linux's `dma_pool_alloc`: a block and its bus address.
#[track_caller]
pub fn dma_pool_alloc<P: Platform>(
    pool: &DmaPool<'_, P>,
    gfp: Gfp,
) -> Result<(NonNull<u8>, DmaAddr), DmaError> {
    pool.alloc_at(gfp, gfp.contains(Gfp::ZERO), Location::caller())
}

/// Linux's `dma_pool_zalloc`: a zeroed block.
#[track_caller]
pub fn dma_pool_zalloc<P: Platform>(
    pool: &DmaPool<'_, P>,
    gfp: Gfp,
) -> Result<(NonNull<u8>, DmaAddr), DmaError> {
    pool.alloc_at(gfp, true, Location::caller())
}

/// Linux's `dma_pool_free`: gives a block back. An address that is not a
/// block of this pool, a bus address that is not the block's, or (with
/// debugging) a block already free is refused and reported.
#[track_caller]
pub fn dma_pool_free<P: Platform>(
    pool: &DmaPool<'_, P>,
    vaddr: *mut u8,
    dma: DmaAddr,
) -> Result<(), DmaError> {
    let site = Location::caller();
    let d = pool.dev.dma();
    let refuse = |what: &'static str| {
        d.pages.platform().warn(format_args!(
            "{} {}: dma_pool_free {}, {:#x}/{dma} ({what}) at {site}",
            pool.dev.driver(),
            pool.dev.name(),
            pool.name,
            vaddr as usize
        ));
        d.debug.count_error();
        Err(DmaError::InvalidArgument(what))
    };
    let Some(pa) = d.pages.virt_to_phys(VirtAddr(vaddr as usize)) else {
        return refuse("bad vaddr");
    };
    let head = pool.page_head(pa.pfn());
    let off = (pa.0 - head.phys().0) as usize;
    let mut st = pool.state.lock();
    if !pool.owns_page(&st, head) || !pool.is_block_offset(off) {
        drop(st);
        return refuse("bad vaddr");
    }
    if dma.0 != pa.0 {
        drop(st);
        return refuse("bad dma");
    }
    // The block, as this pool's records name it (the same address as
    // `vaddr`, now known to be one of its blocks).
    let blk = (d.pages.page_address(head).0 + off) as *mut u8;
    // Without debugging, the checks that cost nothing: the block on top of
    // the free list, or a page with no block in use (a second free would
    // link the block to itself and hand it out twice).
    let page_in_use = d
        .pages
        .frame(head)
        .map_or(0, |f| f.private[1].load(Relaxed));
    if st.free == blk as usize || page_in_use == 0 {
        drop(st);
        return refuse("already free");
    }
    if pool.debug() {
        let mut b = st.free;
        while b != 0 {
            if b == blk as usize {
                drop(st);
                return refuse("already free");
            }
            // SAFETY: free blocks hold the next free block in their header.
            b = unsafe { read_header(b) }.0;
        }
        // SAFETY: a block of this pool, being freed by its owner.
        unsafe {
            blk.add(DMA_BLOCK_HEADER)
                .write_bytes(POOL_POISON_FREED, pool.size - DMA_BLOCK_HEADER)
        };
    }
    // SAFETY: as above.
    unsafe { write_header(blk as usize, st.free, dma.0) };
    st.free = blk as usize;
    st.nr_active -= 1;
    pool.in_use_delta(head, -1);
    Ok(())
}

/// Linux's `dma_pool_destroy`: frees every pool page. Blocks still in use
/// are reported ("busy"); the pages holding them are kept (leaked) so the
/// driver's pointers stay valid.
#[track_caller]
pub fn dma_pool_destroy<P: Platform>(mut pool: DmaPool<'_, P>) -> Result<(), PoolLeak> {
    pool.destroyed = true;
    pool.teardown(Location::caller())
}

impl<P: Platform> DmaPool<'_, P> {
    fn teardown(&self, site: &'static Location<'static>) -> Result<(), PoolLeak> {
        let d = self.dev.dma();
        let pages = d.pages;
        let mut st = self.state.lock();
        let busy = st.nr_active;
        let mut leaked = 0;
        let mut p = st.pages;
        st.pages = 0;
        st.free = 0;
        drop(st);
        while p != 0 {
            let head = Pfn(p - 1);
            let f = pages.frame(head);
            p = f.map_or(0, |f| f.private[0].load(Relaxed) as u64);
            let in_use = f.map_or(0, |f| f.private[1].load(Relaxed));
            let va = pages.page_address(head).as_ptr::<u8>();
            if in_use > 0 {
                leaked += 1;
                pages.platform().warn(format_args!(
                    "{} {}: dma_pool_destroy {}, {:#x} busy ({in_use} blocks in use) at {site}",
                    self.dev.driver(),
                    self.dev.name(),
                    self.name,
                    va as usize
                ));
                continue;
            }
            if let Some(f) = f {
                f.set_owner(OWNER_DMA_COHERENT);
                f.private[0].store(0, Relaxed);
            }
            let _ = free_coherent_at(self.dev, self.allocation, va, DmaAddr(head.phys().0), site);
        }
        if busy > 0 {
            d.debug.count_error();
            Err(PoolLeak {
                name: self.name,
                busy_blocks: busy,
                leaked_pages: leaked,
            })
        } else {
            Ok(())
        }
    }
}

impl<P: Platform> Drop for DmaPool<'_, P> {
    /// A pool dropped without [`dma_pool_destroy`] is destroyed here (leaks
    /// reported with the place the pool was created).
    fn drop(&mut self) {
        if !self.destroyed {
            let _ = self.teardown(self.created_at);
        }
    }
}

impl<P: Platform> fmt::Debug for DmaPool<'_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaPool")
            .field("name", &self.name)
            .field("size", &self.size)
            .field("boundary", &self.boundary)
            .field("allocation", &self.allocation)
            .finish()
    }
}
