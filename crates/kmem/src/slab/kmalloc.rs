//! The kmalloc family: Linux's size classes over a table of caches, and
//! whole pages above 8 KiB.
//!
//! ```text
//!   size      0        1..=192               193..=8192        8193..=4 MiB            > 4 MiB
//!   result    ZERO_SIZE_PTR  size_index[(size-1)/8]  fls(size-1)   pages, order get_order(size)  fails, warns
//!   classes   8 16 32 64 96 128 192 256 512 1k 2k 4k 8k
//! ```
//!
//! The cache comes from `kmalloc[type][index]`, where the type follows the
//! mask as in Linux's `kmalloc_type`: `__GFP_DMA` → `dma-kmalloc-*`, else
//! `__GFP_RECLAIMABLE` → `kmalloc-rcl-*`, else `__GFP_ACCOUNT` →
//! `kmalloc-cg-*`, else `kmalloc-*`. Every class is aligned to the largest
//! power of two dividing its size (so power-of-two sizes are naturally
//! aligned), at least 8.
//!
//! Large blocks are compound page allocations tagged `OWNER_KMALLOC_LARGE`
//! in their head frame, so `kfree` and `ksize` recognise them and refuse
//! anything the page allocator handed to someone else.
//!
//! Above 4 MiB kmalloc fails and warns (unless `__GFP_NOWARN`), naming the
//! caller, once per page allocator: as in Linux, where the warning is the
//! page allocator's `WARN_ON_ONCE_GFP` (once per boot), it is one warning
//! shared with `alloc_pages` of an order above `MAX_PAGE_ORDER`, so the log
//! shows only the first such caller.

use super::cpu::Fast;
use super::rcu::{free_any, RCU_HEAD_SIZE};
use super::{
    find, find_slab, CacheName, Found, KmemCache, SlabAllocator, SlabFlags, SlabFreeError,
    SlabGlobal, KMALLOC_INDEXES, KMALLOC_MAX_CACHE_SIZE, KMALLOC_MAX_SIZE, OWNER_KMALLOC_LARGE,
    SLUB_RED_ACTIVE, ZERO_SIZE_PTR,
};
use crate::addr::{get_order, Pfn, PAGE_SIZE};
use crate::error::AllocError;
use crate::gfp::Gfp;
use crate::page::{PageAllocator, NUMA_NO_NODE};
use crate::platform::Platform;
use core::fmt;
use core::panic::Location;
use core::ptr::NonNull;
use core::sync::atomic::Ordering::Relaxed;

/// log2 of the smallest class (8).
pub const KMALLOC_SHIFT_LOW: u32 = 3;
/// log2 of the largest class (8192).
pub const KMALLOC_SHIFT_HIGH: u32 = 13;
/// Number of kmalloc cache sets.
pub const NR_KMALLOC_TYPES: usize = 4;

/// Which set of kmalloc caches a mask selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KmallocType {
    /// `kmalloc-*`.
    Normal = 0,
    /// `kmalloc-rcl-*` (`__GFP_RECLAIMABLE`).
    Reclaim = 1,
    /// `dma-kmalloc-*` (`__GFP_DMA`).
    Dma = 2,
    /// `kmalloc-cg-*` (`__GFP_ACCOUNT`).
    Cgroup = 3,
}

impl KmallocType {
    /// Every type, in creation order.
    pub const ALL: [KmallocType; NR_KMALLOC_TYPES] = [
        KmallocType::Normal,
        KmallocType::Reclaim,
        KmallocType::Dma,
        KmallocType::Cgroup,
    ];

    /// Linux's `kmalloc_type`.
    #[inline(always)]
    pub fn of(gfp: Gfp) -> KmallocType {
        let b = gfp.bits();
        const NOT_NORMAL: u32 = Gfp::DMA.bits() | Gfp::RECLAIMABLE.bits() | Gfp::ACCOUNT.bits();
        if b & NOT_NORMAL == 0 {
            KmallocType::Normal
        } else if gfp.contains(Gfp::DMA) {
            KmallocType::Dma
        } else if gfp.contains(Gfp::RECLAIMABLE) {
            KmallocType::Reclaim
        } else {
            KmallocType::Cgroup
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            KmallocType::Normal => "kmalloc-",
            KmallocType::Reclaim => "kmalloc-rcl-",
            KmallocType::Dma => "dma-kmalloc-",
            KmallocType::Cgroup => "kmalloc-cg-",
        }
    }

    fn flags(self) -> SlabFlags {
        SlabFlags::KMALLOC
            | match self {
                KmallocType::Normal => SlabFlags::NO_MERGE,
                KmallocType::Reclaim => SlabFlags::RECLAIM_ACCOUNT,
                KmallocType::Dma => SlabFlags::CACHE_DMA,
                KmallocType::Cgroup => SlabFlags::ACCOUNT,
            }
    }
}

/// Linux's `size_index`: class index for sizes 1..=192, by `(size - 1) / 8`.
const SIZE_INDEX: [u8; 24] = [
    3, 4, 5, 5, 6, 6, 6, 6, 1, 1, 1, 1, 7, 7, 7, 7, 2, 2, 2, 2, 2, 2, 2, 2,
];

/// Linux's `kmalloc_index` / `kmalloc_slab` index: 1 is the 96 class, 2 the
/// 192 class, `n >= 3` the `2^n` class. `size` must be in 1..=8192.
#[inline(always)]
pub const fn kmalloc_index(size: usize) -> usize {
    if size <= 192 {
        SIZE_INDEX[(size - 1) / 8] as usize
    } else {
        (usize::BITS - (size - 1).leading_zeros()) as usize
    }
}

/// Object size of kmalloc class `index`.
pub const fn kmalloc_size(index: usize) -> usize {
    match index {
        1 => 96,
        2 => 192,
        i => 1 << i,
    }
}

/// Linux's `kmalloc_size_roundup`: the size kmalloc really gives for
/// `size` (0 and sizes above `KMALLOC_MAX_SIZE` come back unchanged).
pub const fn kmalloc_size_roundup(size: usize) -> usize {
    if size == 0 {
        0
    } else if size <= KMALLOC_MAX_CACHE_SIZE {
        kmalloc_size(kmalloc_index(size))
    } else if size <= KMALLOC_MAX_SIZE {
        PAGE_SIZE << get_order(size)
    } else {
        size
    }
}

/// A small fixed buffer for cache names.
struct NameBuf {
    buf: [u8; 32],
    len: usize,
}

impl fmt::Write for NameBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let b = s.as_bytes();
        if self.len + b.len() > self.buf.len() {
            return Err(fmt::Error);
        }
        self.buf[self.len..self.len + b.len()].copy_from_slice(b);
        self.len += b.len();
        Ok(())
    }
}

/// Why `krealloc` failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReallocError {
    /// The new allocation failed; the old object is untouched.
    Alloc(AllocError),
    /// The old pointer is not a live kmalloc object; nothing changed.
    BadPointer(SlabFreeError),
}

impl core::error::Error for ReallocError {}

impl fmt::Display for ReallocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReallocError::Alloc(e) => write!(f, "krealloc: {e}"),
            ReallocError::BadPointer(e) => write!(f, "krealloc: {e}"),
        }
    }
}

impl From<AllocError> for ReallocError {
    fn from(e: AllocError) -> Self {
        ReallocError::Alloc(e)
    }
}

/// The bits of `gfp` in Linux's `GFP_SLAB_BUG_MASK`: the zone bits a slab
/// cannot honour (`__GFP_DMA32`, `__GFP_HIGHMEM`) and any bit outside the
/// GFP mask.
#[inline]
pub(crate) fn slab_bug_bits(gfp: Gfp) -> Gfp {
    Gfp::from_bits_retain(gfp.bits() & ((Gfp::DMA32 | Gfp::HIGHMEM).bits() | !Gfp::all().bits()))
}

/// Linux's `kmalloc_fix_flags`: strips the zone bits kmalloc cannot honour.
#[cold]
pub(crate) fn fix_flags<P: Platform>(p: &P, gfp: Gfp) -> Gfp {
    let bad = slab_bug_bits(gfp);
    let fixed = gfp - bad;
    p.warn(format_args!(
        "Unexpected gfp: {:#x} ({bad}). Fixing up to gfp: {:#x} ({fixed}). Fix your code!",
        bad.bits(),
        fixed.bits()
    ));
    fixed
}

/// Frees a large kmalloc block found by `find`.
pub(crate) fn free_large<P: Platform>(
    pages: &PageAllocator<P>,
    global: Option<&SlabGlobal<P>>,
    head: Pfn,
    order: u32,
    base: usize,
    addr: usize,
    caller: &'static Location<'static>,
) -> Result<(), SlabFreeError> {
    if addr != base {
        let e = SlabFreeError::LargeInterior { addr, head: base };
        if let Some(g) = global {
            super::report_free_error(pages, g, None, &e, caller);
        } else {
            pages
                .platform()
                .warn(format_args!("{e} (freed at {caller})"));
        }
        return Err(e);
    }
    let Some(f) = pages.frame(head) else {
        return Err(SlabFreeError::NotDirectMapped { addr });
    };
    f.set_owner(0);
    match pages.free_pages(head, order) {
        Ok(()) => {
            if let Some(g) = global {
                g.large.frees.fetch_add(1, Relaxed);
                g.large.pages.fetch_sub(1 << order, Relaxed);
            }
            Ok(())
        }
        Err(_) => Err(SlabFreeError::NotSlab {
            addr,
            pfn: head,
            kind: super::PageKind::Free,
        }),
    }
}

impl<'a, P: Platform> SlabAllocator<'a, P> {
    /// Creates the kmalloc caches, type by type: 96 and 192 first, then the
    /// powers of two (Linux's `create_kmalloc_caches` order).
    pub(crate) fn create_kmalloc_caches(
        &mut self,
        caller: &'static Location<'static>,
    ) -> Result<(), AllocError> {
        for t in KmallocType::ALL {
            let order = [1usize, 2]
                .into_iter()
                .chain(KMALLOC_SHIFT_LOW as usize..=KMALLOC_SHIFT_HIGH as usize);
            for idx in order {
                let size = kmalloc_size(idx);
                let mut name = NameBuf {
                    buf: [0; 32],
                    len: 0,
                };
                let _ = if size >= 1024 {
                    fmt::Write::write_fmt(&mut name, format_args!("{}{}k", t.prefix(), size / 1024))
                } else {
                    fmt::Write::write_fmt(&mut name, format_args!("{}{size}", t.prefix()))
                };
                let name = core::str::from_utf8(&name.buf[..name.len]).unwrap_or("kmalloc");
                let align = 1usize << size.trailing_zeros();
                let c = self
                    .create_cache(name, size, align.max(8), t.flags(), None, caller)
                    .map_err(|e| match e {
                        super::CacheCreateError::NoMemory(e) => e,
                        _ => AllocError::SizeTooLarge {
                            size,
                            max: KMALLOC_MAX_SIZE,
                        },
                    })?;
                self.kmalloc[t as usize][idx] = c.as_ptr();
            }
            // Index 0 is never used for a non-zero size; keep it pointing
            // somewhere valid.
            self.kmalloc[t as usize][0] = self.kmalloc[t as usize][KMALLOC_SHIFT_LOW as usize];
        }
        Ok(())
    }

    /// The kmalloc cache of `size` (1..=8192) for `gfp`.
    #[inline(always)]
    pub fn kmalloc_slab(&self, size: usize, gfp: Gfp) -> &KmemCache<P> {
        let idx = kmalloc_index(size);
        debug_assert!(idx < KMALLOC_INDEXES);
        // SAFETY: filled in by create_kmalloc_caches; kmalloc caches live as
        // long as the allocator.
        unsafe { &*self.kmalloc[KmallocType::of(gfp) as usize][idx] }
    }

    /// The kmalloc cache of a given type and class index.
    pub fn kmalloc_cache(&self, t: KmallocType, index: usize) -> Option<&KmemCache<P>> {
        let p = *self.kmalloc.get(t as usize)?.get(index)?;
        // SAFETY: as kmalloc_slab.
        (!p.is_null()).then(|| unsafe { &*p })
    }

    /// Linux's `kmalloc`.
    #[track_caller]
    #[inline(always)]
    pub fn kmalloc(&self, size: usize, gfp: Gfp) -> Result<NonNull<u8>, AllocError> {
        if size.wrapping_sub(1) < KMALLOC_MAX_CACHE_SIZE {
            let s = self.kmalloc_slab(size, gfp);
            match s.alloc_fast_path(gfp) {
                Fast::Done(p) => return Ok(p),
                Fast::Unowned => return self.kmalloc_unowned(s, size, gfp, Location::caller()),
                Fast::Declined => {}
            }
        }
        self.kmalloc_node_at(size, gfp, NUMA_NO_NODE, Location::caller())
    }

    /// [`Self::kmalloc`] for a caller that does not own its CPU: the
    /// shared fast path of `s` (the cache of `size`), else the full path.
    #[inline(never)]
    fn kmalloc_unowned(
        &self,
        s: &KmemCache<P>,
        size: usize,
        gfp: Gfp,
        caller: &'static Location<'static>,
    ) -> Result<NonNull<u8>, AllocError> {
        match s.alloc_shared(gfp) {
            Some(p) => Ok(p),
            None => self.kmalloc_node_at(size, gfp, NUMA_NO_NODE, caller),
        }
    }

    /// Linux's `kzalloc`.
    #[track_caller]
    #[inline]
    pub fn kzalloc(&self, size: usize, gfp: Gfp) -> Result<NonNull<u8>, AllocError> {
        self.kmalloc(size, gfp | Gfp::ZERO)
    }

    /// Linux's `kmalloc_node`.
    #[track_caller]
    pub fn kmalloc_node(
        &self,
        size: usize,
        gfp: Gfp,
        node: i32,
    ) -> Result<NonNull<u8>, AllocError> {
        self.kmalloc_node_at(size, gfp, node, Location::caller())
    }

    /// Linux's `kmalloc_array`: `n * size` bytes; an overflowing product is
    /// an error ([`AllocError::SizeTooLarge`] with `size: usize::MAX`).
    #[track_caller]
    pub fn kmalloc_array(
        &self,
        n: usize,
        size: usize,
        gfp: Gfp,
    ) -> Result<NonNull<u8>, AllocError> {
        match n.checked_mul(size) {
            Some(bytes) => self.kmalloc_node_at(bytes, gfp, NUMA_NO_NODE, Location::caller()),
            None => Err(AllocError::SizeTooLarge {
                size: usize::MAX,
                max: KMALLOC_MAX_SIZE,
            }),
        }
    }

    /// Linux's `kcalloc`: a zeroed array.
    #[track_caller]
    pub fn kcalloc(&self, n: usize, size: usize, gfp: Gfp) -> Result<NonNull<u8>, AllocError> {
        match n.checked_mul(size) {
            Some(bytes) => {
                self.kmalloc_node_at(bytes, gfp | Gfp::ZERO, NUMA_NO_NODE, Location::caller())
            }
            None => Err(AllocError::SizeTooLarge {
                size: usize::MAX,
                max: KMALLOC_MAX_SIZE,
            }),
        }
    }

    /// [`Self::kmalloc_node`] with an explicit call site.
    #[inline(never)]
    pub fn kmalloc_node_at(
        &self,
        size: usize,
        gfp: Gfp,
        node: i32,
        caller: &'static Location<'static>,
    ) -> Result<NonNull<u8>, AllocError> {
        if size <= KMALLOC_MAX_CACHE_SIZE {
            if size == 0 {
                // SAFETY: 16 is not 0.
                return Ok(unsafe { NonNull::new_unchecked(ZERO_SIZE_PTR as *mut u8) });
            }
            return self
                .kmalloc_slab(size, gfp)
                .slab_alloc(gfp, node, size, caller);
        }
        self.kmalloc_large(size, gfp, node, caller)
    }

    /// Above 8 KiB: a compound block of `get_order(size)` pages.
    #[cold]
    fn kmalloc_large(
        &self,
        size: usize,
        gfp: Gfp,
        node: i32,
        caller: &'static Location<'static>,
    ) -> Result<NonNull<u8>, AllocError> {
        if size > KMALLOC_MAX_SIZE {
            // Linux hands it to the page allocator, whose order check warns
            // once per boot: one warning shared with alloc_pages.
            if self
                .pages
                .first_warning(crate::page::alloc::OnceSite::OrderTooLarge, gfp)
            {
                self.pages.platform().warn(format_args!(
                    "WARNING: kmalloc of {size} bytes at {caller}: above KMALLOC_MAX_SIZE ({KMALLOC_MAX_SIZE} bytes, order {}) (warned once)",
                    crate::addr::MAX_PAGE_ORDER
                ));
            }
            return Err(AllocError::SizeTooLarge {
                size,
                max: KMALLOC_MAX_SIZE,
            });
        }
        let gfp = if !slab_bug_bits(gfp).is_empty() {
            fix_flags(self.pages.platform(), gfp)
        } else {
            gfp
        };
        let order = get_order(size);
        let pfn = self
            .pages
            .alloc_pages_node_at(node, gfp | Gfp::COMP, order, caller)?;
        if let Some(f) = self.pages.frame(pfn) {
            f.set_owner(OWNER_KMALLOC_LARGE);
        }
        let g = self.global();
        g.large.allocs.fetch_add(1, Relaxed);
        g.large.pages.fetch_add(1 << order, Relaxed);
        // SAFETY: direct-map addresses are never 0.
        Ok(unsafe { NonNull::new_unchecked(self.pages.page_address(pfn).as_ptr()) })
    }

    /// Linux's `kfree`. NULL and `ZERO_SIZE_PTR` (any address up to 16) are
    /// no-ops. Anything that is not a live kmalloc or slab object (double
    /// free, interior pointer, foreign or vmalloc address, a page-allocator
    /// page) is reported and refused; nothing changes.
    #[track_caller]
    #[inline(always)]
    pub fn kfree(&self, p: *const u8) -> Result<(), SlabFreeError> {
        let addr = p as usize;
        if addr <= ZERO_SIZE_PTR {
            return Ok(());
        }
        if let Some((cache, hit)) = find_slab(self.pages, addr) {
            match cache.free_fast(hit, addr) {
                Fast::Done(()) => return Ok(()),
                Fast::Unowned => {
                    return self.kfree_unowned(cache, hit.node, addr, Location::caller())
                }
                Fast::Declined => {}
            }
        }
        self.kfree_at(addr, Location::caller())
    }

    /// [`Self::kfree`] of an object its fast path checked, for a caller
    /// that does not own its CPU: the shared fast path, else the full path
    /// (a cache descriptor, which has no sheaf, is refused there).
    #[inline(never)]
    fn kfree_unowned(
        &self,
        cache: &KmemCache<P>,
        node: u32,
        addr: usize,
        caller: &'static Location<'static>,
    ) -> Result<(), SlabFreeError> {
        if cache.free_shared(node, addr) {
            return Ok(());
        }
        self.kfree_at(addr, caller)
    }

    /// [`Self::kfree`] with an explicit call site (no NULL check, no fast
    /// path of its own).
    #[inline(never)]
    pub fn kfree_at(
        &self,
        addr: usize,
        caller: &'static Location<'static>,
    ) -> Result<(), SlabFreeError> {
        match find(self.pages, addr) {
            Ok(Found::Slab { cache, slab }) => self
                .not_descriptor(cache, addr)
                .inspect_err(|e| self.report(e, caller))
                .and_then(|()| cache.free_checked(slab, addr, caller)),
            Ok(Found::Large { head, order, base }) => free_large(
                self.pages,
                Some(self.global()),
                head,
                order,
                base,
                addr,
                caller,
            ),
            Err(e) => {
                self.report(&e, caller);
                Err(e)
            }
        }
    }

    /// Linux's `kfree_bulk`: frees every pointer; returns the first error.
    #[track_caller]
    pub fn kfree_bulk(&self, ptrs: &[*mut u8]) -> Result<(), SlabFreeError> {
        let caller = Location::caller();
        let mut first = Ok(());
        for &p in ptrs {
            if (p as usize) <= ZERO_SIZE_PTR {
                continue;
            }
            if let Err(e) = self.kfree_at(p as usize, caller) {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// Linux's `kfree_sensitive`: zeroes the whole usable size, then frees.
    #[track_caller]
    pub fn kfree_sensitive(&self, p: *const u8) -> Result<(), SlabFreeError> {
        let caller = Location::caller();
        if (p as usize) <= ZERO_SIZE_PTR {
            return Ok(());
        }
        let (ks, _, _) = self.ksize_checked(p as usize, caller, true)?;
        for i in 0..ks {
            // SAFETY: the object's usable bytes; volatile so the clearing is
            // not optimised away (memzero_explicit).
            unsafe { (p as *mut u8).add(i).write_volatile(0) };
        }
        self.kfree_at(p as usize, caller)
    }

    /// Linux's `ksize`: the usable size of a kmalloc object (its class, or
    /// the block for large ones), 0 for NULL / `ZERO_SIZE_PTR` or a bad
    /// pointer (reported). For a kmalloc cache with a kmalloc red zone, the
    /// whole object becomes usable, as in Linux.
    #[track_caller]
    pub fn ksize(&self, p: *const u8) -> usize {
        if (p as usize) <= ZERO_SIZE_PTR {
            return 0;
        }
        self.ksize_checked(p as usize, Location::caller(), true)
            .map(|(ks, _, _)| ks)
            .unwrap_or(0)
    }

    /// (usable size, requested size if known: 0 for large blocks, the cache
    /// of a slab object) of a live object. With `claim` (what `ksize` does in Linux:
    /// skip_orig_size_check) the whole object becomes usable, so the kmalloc
    /// red zone stops being checked for it; `kfree_rcu` only looks.
    fn ksize_checked(
        &self,
        addr: usize,
        caller: &'static Location<'static>,
        claim: bool,
    ) -> Result<(usize, usize, Option<&KmemCache<P>>), SlabFreeError> {
        let r = match find(self.pages, addr) {
            Ok(Found::Slab { cache, slab }) => {
                let w = slab.word();
                if cache.obj_index(slab.base, w.objects(), addr).is_none() {
                    Err(cache.interior(slab, addr))
                } else if let Err(e) = self
                    .not_descriptor(cache, addr)
                    .and_then(|()| cache.check_live(slab, addr))
                {
                    Err(e)
                } else {
                    let ks = slab_ksize(cache);
                    let orig = cache.get_orig_size(addr);
                    if claim {
                        cache.set_orig_size(addr, cache.object_size());
                    }
                    Ok((ks, orig, Some(cache)))
                }
            }
            Ok(Found::Large { order, base, .. }) => {
                if addr == base {
                    Ok((PAGE_SIZE << order, 0, None))
                } else {
                    Err(SlabFreeError::LargeInterior { addr, head: base })
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &r {
            self.report(e, caller);
        }
        r
    }

    /// Linux's `krealloc`: resizes a kmalloc object. NULL (or
    /// `ZERO_SIZE_PTR`) allocates; size 0 frees and returns `ZERO_SIZE_PTR`;
    /// a new size that fits the object's class keeps the object (shrinking
    /// in place); otherwise a new object gets the old contents (up to the old
    /// requested size) and the old one is freed. With `__GFP_ZERO` the bytes
    /// beyond the old requested size read zero, and a shrink clears the
    /// tail so a later grow still does. A kmalloc red zone follows the new
    /// size.
    #[track_caller]
    pub fn krealloc(
        &self,
        p: *const u8,
        new_size: usize,
        gfp: Gfp,
    ) -> Result<NonNull<u8>, ReallocError> {
        let caller = Location::caller();
        let addr = p as usize;
        if new_size == 0 {
            if addr > ZERO_SIZE_PTR {
                self.kfree_at(addr, caller)
                    .map_err(ReallocError::BadPointer)?;
            }
            // SAFETY: 16 is not 0.
            return Ok(unsafe { NonNull::new_unchecked(ZERO_SIZE_PTR as *mut u8) });
        }
        if addr <= ZERO_SIZE_PTR {
            return Ok(self.kmalloc_node_at(new_size, gfp, NUMA_NO_NODE, caller)?);
        }
        let (ks, orig_size, cache) = match find(self.pages, addr) {
            Ok(Found::Slab { cache, slab }) => {
                let w = slab.word();
                if cache.obj_index(slab.base, w.objects(), addr).is_none() {
                    let e = cache.interior(slab, addr);
                    self.report(&e, caller);
                    return Err(ReallocError::BadPointer(e));
                }
                if let Err(e) = self
                    .not_descriptor(cache, addr)
                    .and_then(|()| cache.check_live(slab, addr))
                {
                    self.report(&e, caller);
                    return Err(ReallocError::BadPointer(e));
                }
                (cache.object_size(), cache.get_orig_size(addr), Some(cache))
            }
            Ok(Found::Large { order, base, .. }) => {
                if addr != base {
                    let e = SlabFreeError::LargeInterior { addr, head: base };
                    self.report(&e, caller);
                    return Err(ReallocError::BadPointer(e));
                }
                (PAGE_SIZE << order, 0, None)
            }
            Err(e) => {
                self.report(&e, caller);
                return Err(ReallocError::BadPointer(e));
            }
        };
        if new_size <= ks {
            let b = addr as *mut u8;
            if gfp.contains(Gfp::ZERO) {
                // SAFETY: all ranges lie inside the object's ks usable bytes.
                unsafe {
                    if orig_size != 0 && orig_size < new_size {
                        core::ptr::write_bytes(b.add(orig_size), 0, new_size - orig_size);
                    } else {
                        core::ptr::write_bytes(b.add(new_size), 0, ks - new_size);
                    }
                }
            }
            if let Some(c) = cache.filter(|c| c.has_orig_size()) {
                c.set_orig_size(addr, new_size);
                if c.flags.contains(SlabFlags::RED_ZONE) && new_size < ks {
                    // SAFETY: inside the object.
                    unsafe {
                        core::ptr::write_bytes(b.add(new_size), SLUB_RED_ACTIVE, ks - new_size)
                    };
                }
            }
            // SAFETY: addr is a live object, not 0.
            return Ok(unsafe { NonNull::new_unchecked(b) });
        }
        let new = self.kmalloc_node_at(new_size, gfp, NUMA_NO_NODE, caller)?;
        let n = new_size.min(if orig_size != 0 { orig_size } else { ks });
        // SAFETY: both objects are live and at least n bytes; distinct.
        unsafe { core::ptr::copy_nonoverlapping(addr as *const u8, new.as_ptr(), n) };
        if let Err(e) = self.kfree_at(addr, caller) {
            // Refused (and reported): the caller keeps the old object, as
            // after any failed krealloc.
            let _ = self.kfree_at(new.as_ptr() as usize, caller);
            return Err(ReallocError::BadPointer(e));
        }
        Ok(new)
    }

    /// Linux's `kfree_rcu(p, field)`: frees `p` after the next grace period
    /// ([`Self::rcu_barrier`]). `rcu_head_offset` is where in the object a
    /// 16-byte `rcu_head` field lies (Rust: `offset_of!(T, rcu)`); it is
    /// overwritten, the rest of the object stays readable until then.
    /// Refused and reported: an object already free, an `rcu_head` that
    /// does not fit, and a second `kfree_rcu` of an object still queued
    /// (its head carries a queued mark; Linux catches that only with
    /// `CONFIG_DEBUG_OBJECTS_RCU_HEAD`).
    #[track_caller]
    pub fn kfree_rcu(&self, p: *const u8, rcu_head_offset: usize) -> Result<(), SlabFreeError> {
        let caller = Location::caller();
        let addr = p as usize;
        if addr <= ZERO_SIZE_PTR {
            return Ok(());
        }
        let (ks, _, cache) = self.ksize_checked(addr, caller, false)?;
        let cache_name = || CacheName::of(cache.unwrap_or(self.kmem_cache()));
        if rcu_head_offset
            .checked_add(RCU_HEAD_SIZE)
            .is_none_or(|end| end > ks)
            || rcu_head_offset & 7 != 0
        {
            self.pages.platform().warn(format_args!(
                "kfree_rcu: rcu_head at offset {rcu_head_offset} does not fit the {ks}-byte object {addr:#x} (at {caller}); freeing after the next grace period is impossible, object leaked"
            ));
            return Err(SlabFreeError::Interior {
                addr: addr.wrapping_add(rcu_head_offset),
                object: addr,
                cache: cache_name(),
            });
        }
        let head = addr + rcu_head_offset;
        // SAFETY: a live object with room for the head at that offset.
        if unsafe { super::rcu::RcuQueue::is_queued(head, rcu_head_offset) } {
            // Linux reports this only with CONFIG_DEBUG_OBJECTS_RCU_HEAD
            // ("ODEBUG: activate active"); queued twice, the object would
            // be freed twice and its head would link to itself.
            let e = SlabFreeError::DoubleFree {
                addr,
                cache: cache_name(),
            };
            self.pages.platform().warn(format_args!(
                "kfree_rcu: object {addr:#x} is already queued for freeing after a grace period (a second kfree_rcu at {caller}); refused"
            ));
            self.global().errors.fetch_add(1, Relaxed);
            return Err(e);
        }
        if let Some(cache) = cache {
            // SAFETY: a live object (ksize_checked) holding the head.
            unsafe { cache.mark_rcu_queued(addr) };
        }
        // SAFETY: as above; nobody writes the head until it is freed
        // (kfree_rcu's contract).
        unsafe { self.global().rcu.defer_obj(head, rcu_head_offset) };
        Ok(())
    }

    /// `kvfree_rcu_mightsleep` of a slab object or large kmalloc block `p`
    /// (the caller checked that it may sleep): queued through a pointer node
    /// of its own, nothing written into the object. Ok(false) if no node
    /// could be allocated (the caller then waits for a grace period and
    /// frees, as Linux's fallback); an error if `p` is not live.
    pub(crate) fn kfree_rcu_ptr(
        &self,
        p: *const u8,
        caller: &'static Location<'static>,
    ) -> Result<bool, SlabFreeError> {
        let addr = p as usize;
        let (ks, _, cache) = self.ksize_checked(addr, caller, false)?;
        let Ok(node) = self.kmalloc_node_at(
            super::rcu::PTR_NODE_SIZE,
            crate::gfp::GFP_KERNEL | Gfp::NOWARN,
            crate::page::NUMA_NO_NODE,
            caller,
        ) else {
            return Ok(false);
        };
        if let Some(cache) = cache {
            // SAFETY: a live object (ksize_checked).
            unsafe { cache.mark_rcu_queued(addr) };
        }
        // SAFETY: a fresh node; p is live and freed only by the grace period.
        unsafe {
            self.global()
                .rcu
                .defer_ptr(self.pages, node.as_ptr() as usize, addr, ks / 8)
        };
        Ok(true)
    }

    /// Ends a grace period (Linux's `rcu_barrier` for slab purposes): runs
    /// every `kfree_rcu` queued before the call and gives back every
    /// `SLAB_TYPESAFE_BY_RCU` slab waiting for one (slabs those frees empty
    /// wait for the next grace period). The caller vouches that no RCU reader that
    /// could still see those objects is running; called from inside a
    /// read-side critical section it refuses (returns false), and in atomic
    /// context too (Linux's `rcu_barrier` sleeps; and with preemption or
    /// interrupts off no grace period can end): reported as a sleep in
    /// atomic context.
    #[track_caller]
    pub fn rcu_barrier(&self) -> bool {
        let ctx = self.pages.platform().context();
        if ctx.rcu_depth > 0 {
            self.pages.platform().warn(format_args!(
                "rcu_barrier called inside an RCU read-side critical section at {}: refused",
                Location::caller()
            ));
            return false;
        }
        if super::sleep_in_atomic(self.pages, self.global(), Location::caller()).is_some() {
            return false;
        }
        self.global().rcu_barrier(self.pages);
        true
    }

    /// (objects, slabs) waiting for a grace period.
    pub fn rcu_pending(&self) -> (usize, usize) {
        self.global().rcu.pending()
    }

    /// Large kmalloc blocks: (allocations, frees, pages held now).
    pub fn large_kmalloc_stats(&self) -> (usize, usize, usize) {
        let l = &self.global().large;
        (
            l.allocs.load(Relaxed),
            l.frees.load(Relaxed),
            l.pages.load(Relaxed),
        )
    }

    /// Frees through the generic path (used by RCU callbacks).
    #[allow(dead_code)]
    pub(crate) fn free_any(&self, addr: usize, caller: &'static Location<'static>) {
        free_any(self.pages, addr, caller);
    }
}

/// Linux's `slab_ksize`: how much of an object a caller may use.
pub(crate) fn slab_ksize<P: Platform>(s: &KmemCache<P>) -> usize {
    if s.flags.intersects(SlabFlags::RED_ZONE | SlabFlags::POISON) {
        s.object_size()
    } else if s
        .flags
        .intersects(SlabFlags::TYPESAFE_BY_RCU | SlabFlags::STORE_USER)
    {
        s.inuse()
    } else {
        s.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_matches_linux() {
        let want = [
            (1, 3),
            (8, 3),
            (9, 4),
            (16, 4),
            (17, 5),
            (32, 5),
            (33, 6),
            (64, 6),
            (65, 1),
            (96, 1),
            (97, 7),
            (128, 7),
            (129, 2),
            (192, 2),
            (193, 8),
            (256, 8),
            (257, 9),
            (512, 9),
            (513, 10),
            (1024, 10),
            (2048, 11),
            (2049, 12),
            (4096, 12),
            (4097, 13),
            (8192, 13),
        ];
        for (size, idx) in want {
            assert_eq!(kmalloc_index(size), idx, "size {size}");
            assert!(kmalloc_size(idx) >= size);
        }
        for size in 1..=8192 {
            let s = kmalloc_size(kmalloc_index(size));
            assert!(s >= size);
            // The class is the smallest of Linux's that fits.
            let classes = [
                8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192,
            ];
            let best = *classes.iter().find(|&&c| c >= size).unwrap();
            assert_eq!(s, best, "size {size}");
        }
    }

    #[test]
    fn roundup_matches_linux() {
        assert_eq!(kmalloc_size_roundup(0), 0);
        assert_eq!(kmalloc_size_roundup(1), 8);
        assert_eq!(kmalloc_size_roundup(65), 96);
        assert_eq!(kmalloc_size_roundup(100), 128);
        assert_eq!(kmalloc_size_roundup(8192), 8192);
        assert_eq!(kmalloc_size_roundup(8193), 16384);
        assert_eq!(kmalloc_size_roundup(4 << 20), 4 << 20);
        assert_eq!(kmalloc_size_roundup((4 << 20) + 1), (4 << 20) + 1);
    }

    #[test]
    fn type_priorities() {
        use crate::gfp::{GFP_ATOMIC, GFP_KERNEL, GFP_KERNEL_ACCOUNT};
        assert_eq!(KmallocType::of(GFP_KERNEL), KmallocType::Normal);
        assert_eq!(KmallocType::of(GFP_ATOMIC), KmallocType::Normal);
        assert_eq!(KmallocType::of(GFP_KERNEL_ACCOUNT), KmallocType::Cgroup);
        assert_eq!(
            KmallocType::of(GFP_KERNEL | Gfp::RECLAIMABLE | Gfp::ACCOUNT),
            KmallocType::Reclaim
        );
        assert_eq!(
            KmallocType::of(GFP_KERNEL | Gfp::DMA | Gfp::RECLAIMABLE),
            KmallocType::Dma
        );
    }
}
