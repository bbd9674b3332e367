//! `struct kmem_cache`: one object size, its layout, its per-CPU and per-node
//! state, and the cache's life cycle (create, merge, shrink, destroy).
//!
//! A [`KmemCache`] is itself an object of the bootstrap cache `kmem_cache`
//! (see [`super::SlabAllocator::new`]): the header below, followed in the same
//! allocation by `nr_cpus` `CpuSlab`s. It never moves; slabs point at it
//! from their head frame record.
//!
//! # Layout computation
//! [`Layout::compute`] is Linux's `calculate_sizes`: round the object to a
//! word, add a right red zone if there is no padding to serve as one, place
//! the free pointer (middle of the object, or after it when the object must
//! keep its contents while free; staggered by address in large objects,
//! see [`fp_stagger`]), add the tracking records and the saved
//! request size, the left red zone, and align; then `calculate_order`
//! picks the slab order that bounds the leftover to 1/16 (then 1/8, 1/4, 1/2)
//! of the slab, up to order 3, starting from the order that holds
//! `4 * (fls(nr_cpus) + 1)` objects.

use core::marker::PhantomData;
use core::mem::{size_of, ManuallyDrop};
use core::ops::Deref;
use core::panic::Location;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering::Relaxed};

use super::cpu::{CpuGuard, CpuSlab, Fast, Stat, NR_STATS};
use super::node::CacheNode;
use super::slab::{SlabRef, MAX_OBJS_PER_SLAB};
use super::{SlabConfig, SlabFlags, SlabGlobal, KMALLOC_MAX_SIZE};
use crate::addr::{get_order, Pfn, MAX_PAGE_ORDER, PAGE_SIZE};
use crate::gfp::Gfp;
use crate::page::{PageAllocator, MAX_NUMNODES};
use crate::platform::Platform;

/// Longest cache name kept (longer names are cut).
pub const CACHE_NAME_MAX: usize = 48;
/// Size of one tracking record (Linux's `struct track` with stack depot).
pub(crate) const TRACK_SIZE: usize = 32;
/// Cache line size assumed for `SLAB_HWCACHE_ALIGN`.
pub const CACHE_LINE_SIZE: usize = 64;
/// Smallest alignment of any object (Linux's `ARCH_SLAB_MINALIGN` on x86-64).
pub const ARCH_SLAB_MINALIGN: usize = 8;
const WORD: usize = size_of::<usize>();

/// Lemire's divisibility constant for objects of `size` bytes,
/// `1 + floor((2^64 - 1) / size)`: see [`object_index`].
pub(crate) const fn div_magic(size: usize) -> u64 {
    1 + u64::MAX / size as u64
}

/// The object index of byte offset `off` into a slab's objects, of stride
/// `size` with `magic = div_magic(size)`, or None unless `off` is the start
/// of one of the `objects` objects. One widening multiply: for `off <
/// 2^32` the high half of `off * magic` is `off / size` and the low half is
/// below `magic` exactly when `size` divides `off` (Lemire, Kaser and Kurz,
/// "Faster Remainder by Direct Computation", 2019). A larger offset (one
/// that wrapped below the slab, or past it) has a quotient of at least
/// `2^32 / size - 1`, more than the objects of any slab (at most
/// `2^MAX_PAGE_ORDER` pages), so the count test refuses it whatever the
/// low half says.
#[inline(always)]
pub(crate) fn object_index(off: usize, magic: u64, objects: u32) -> Option<u32> {
    const _: () = assert!(
        (crate::addr::PAGE_SIZE << crate::addr::MAX_PAGE_ORDER) <= 1 << 31,
        "object_index's argument needs slabs of at most 2 GiB"
    );
    let wide = off as u128 * magic as u128;
    let idx = (wide >> 64) as u64;
    ((wide as u64) < magic && idx < objects as u64).then_some(idx as u32)
}

/// A slab order and the number of objects a slab of that order holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderObjects {
    /// Page order of the slab.
    pub order: u32,
    /// Objects per slab.
    pub objects: u32,
}

impl OrderObjects {
    fn make(order: u32, size: usize) -> OrderObjects {
        OrderObjects {
            order,
            objects: order_objects(order, size),
        }
    }
}

fn order_objects(order: u32, size: usize) -> u32 {
    ((PAGE_SIZE << order) / size).min(u32::MAX as usize) as u32
}

const fn align_up(x: usize, a: usize) -> usize {
    (x + a - 1) & !(a - 1)
}

/// Linux's `calculate_alignment`.
pub(crate) fn calculate_alignment(flags: SlabFlags, align: usize, size: usize) -> usize {
    let mut align = align;
    if flags.contains(SlabFlags::HWCACHE_ALIGN) {
        let mut ralign = CACHE_LINE_SIZE;
        while size <= ralign / 2 {
            ralign /= 2;
        }
        align = align.max(ralign);
    }
    align = align.max(ARCH_SLAB_MINALIGN);
    align_up(align, WORD)
}

fn fls(x: usize) -> u32 {
    usize::BITS - x.leading_zeros()
}

/// Linux's `calculate_order`: the slab order for objects of `size` bytes.
pub(crate) fn calculate_order(size: usize, cfg: &SlabConfig, nr_cpus: usize) -> Option<u32> {
    // A minimum above the maximum raises the maximum (Linux's
    // setup_slub_min_order).
    let max_order = cfg.max_order.max(cfg.min_order).min(MAX_PAGE_ORDER);
    let min_objects = if cfg.min_objects != 0 {
        cfg.min_objects
    } else {
        4 * (fls(nr_cpus.max(1)) + 1)
    };
    let max_objects = order_objects(max_order, size).max(1);
    let min_objects = min_objects.min(max_objects);
    let min_order = cfg.min_order.max(get_order(min_objects as usize * size));
    if order_objects(min_order, size) > MAX_OBJS_PER_SLAB {
        return Some(get_order(size * MAX_OBJS_PER_SLAB as usize) - 1);
    }
    let mut fraction = 16;
    while fraction > 1 {
        let mut order = min_order;
        while order <= max_order {
            let slab_size = PAGE_SIZE << order;
            if slab_size % size <= slab_size / fraction {
                break;
            }
            order += 1;
        }
        if order <= max_order {
            return Some(order);
        }
        fraction /= 2;
    }
    let order = get_order(size);
    (order <= MAX_PAGE_ORDER).then_some(order)
}

/// Where everything sits in an object, and the slab geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Bytes the user asked for (`object_size`).
    pub object_size: usize,
    /// Stride between objects, metadata included (`size`).
    pub size: usize,
    /// Offset of the free pointer from the object start (of the object at
    /// address 0: see `fp_stagger`).
    pub offset: usize,
    /// Staggers the free pointer of large objects across cache sets: the
    /// slot of the object at `obj` is `obj + offset + ((obj >> 6) &
    /// fp_stagger)`. Nonzero only for objects of at least
    /// [`FP_STAGGER_MIN`] bytes whose slot lies inside them, without
    /// debugging (see [`fp_stagger`]).
    pub fp_stagger: usize,
    /// Object plus right red zone / word padding (`inuse`): metadata starts here.
    pub inuse: usize,
    /// Left red zone before each object (0 without `SLAB_RED_ZONE`).
    pub red_left_pad: usize,
    /// Object alignment.
    pub align: usize,
    /// Flags after adjustment (`OBJECT_POISON` computed).
    pub flags: SlabFlags,
    /// Preferred slab order and objects per slab.
    pub oo: OrderObjects,
    /// Smallest order that holds one object (fallback when `oo` fails).
    pub min: OrderObjects,
}

impl Layout {
    /// Linux's `calculate_sizes`. `None` if no slab order can hold an object.
    pub fn compute(
        object_size: usize,
        align: usize,
        flags: SlabFlags,
        has_ctor: bool,
        cfg: &SlabConfig,
        nr_cpus: usize,
    ) -> Option<Layout> {
        let mut flags = flags;
        let align = calculate_alignment(flags, align, object_size);
        let mut size = align_up(object_size.max(1), WORD);
        if flags.contains(SlabFlags::POISON)
            && !flags.contains(SlabFlags::TYPESAFE_BY_RCU)
            && !has_ctor
        {
            flags |= SlabFlags::OBJECT_POISON;
        } else {
            flags -= SlabFlags::OBJECT_POISON;
        }
        if flags.contains(SlabFlags::RED_ZONE) && size == object_size {
            size += WORD;
        }
        let inuse = size;
        let orig_size = flags.contains(SlabFlags::STORE_USER | SlabFlags::KMALLOC);
        let offset = if flags.contains(SlabFlags::TYPESAFE_BY_RCU)
            || flags.contains(SlabFlags::POISON)
            || has_ctor
            || (flags.contains(SlabFlags::RED_ZONE) && (object_size < WORD || orig_size))
        {
            let o = size;
            size += WORD;
            o
        } else {
            (object_size / 2) & !(WORD - 1)
        };
        let fp_stagger = if offset < inuse && !flags.intersects(SlabFlags::DEBUG) {
            fp_stagger(object_size, offset)
        } else {
            0
        };
        if flags.contains(SlabFlags::STORE_USER) {
            size += 2 * TRACK_SIZE;
            if flags.contains(SlabFlags::KMALLOC) {
                size += WORD;
            }
        }
        let mut red_left_pad = 0;
        if flags.contains(SlabFlags::RED_ZONE) {
            size += WORD;
            red_left_pad = align_up(WORD, align);
            size += red_left_pad;
        }
        let size = align_up(size, align);
        let order = calculate_order(size, cfg, nr_cpus)?;
        let oo = OrderObjects::make(order, size);
        let min = OrderObjects::make(get_order(size), size);
        if oo.objects == 0 || min.objects == 0 {
            return None;
        }
        Some(Layout {
            object_size,
            size,
            offset,
            fp_stagger,
            inuse,
            red_left_pad,
            align,
            flags,
            oo,
            min,
        })
    }

    /// True if the free pointer lies outside the object proper.
    pub fn freeptr_outside_object(&self) -> bool {
        self.offset >= self.inuse
    }
}

/// Smallest object whose free pointer is staggered ([`fp_stagger`]).
pub const FP_STAGGER_MIN: usize = 1024;

/// The stagger mask of a free pointer at `offset` inside an object of
/// `object_size` bytes (kmem's own; Linux puts every slot of a cache at the
/// same offset).
///
/// Objects of a kilobyte and more lie a multiple of 1 KiB apart, so with
/// one fixed offset their slots fall into few cache sets: the slots of 4 KiB
/// objects all share one set of a 64-set L1 and 1/64 of a 1 MiB, 8-way L2's
/// sets (256 lines), so a batch of a thousand such objects misses in both on
/// every touch of a slot (the allocated mark on each fast path, a free-list
/// walk). The mask takes up to 32 colors from the address bits just above the object
/// (bits 12 and up for 4 KiB objects), in steps of a cache line or more, and
/// is as large as keeps `offset + mask + 8` inside the object. Smaller
/// objects share pages and spread over the sets by themselves: 0.
pub fn fp_stagger(object_size: usize, offset: usize) -> usize {
    if object_size < FP_STAGGER_MIN || offset + WORD > object_size {
        return 0;
    }
    // Objects about 2^k apart differ first in address bit k: `(obj >> 6)`
    // brings bit k to bit k - 6, at least bit 6 (a cache line).
    let k = (usize::BITS - 1 - object_size.leading_zeros()) as usize;
    let step = (k - 6).max(6);
    let room = object_size - offset - WORD;
    let mut colors = 32usize;
    while colors > 1 && (colors - 1) << step > room {
        colors /= 2;
    }
    (colors - 1) << step
}

/// Why `kmem_cache_create` failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheCreateError {
    /// Size 0 or above `KMALLOC_MAX_SIZE`.
    BadSize {
        /// The size asked for.
        size: usize,
    },
    /// An alignment that is not a power of two.
    BadAlign {
        /// The alignment asked for.
        align: usize,
    },
    /// Name empty.
    BadName,
    /// Flags only the allocator sets (`OBJECT_POISON`): Linux refuses
    /// flags outside `SLAB_FLAGS_PERMITTED` with -EINVAL.
    InternalFlags {
        /// The flags refused.
        flags: super::SlabFlags,
    },
    /// No slab order up to MAX_PAGE_ORDER holds one object with its metadata.
    TooLarge {
        /// Object size with metadata.
        size: usize,
    },
    /// Memory for the cache structure could not be allocated.
    NoMemory(crate::error::AllocError),
    /// Called in atomic context (an interrupt handler, a spinlock held):
    /// creating a cache may sleep, merged or not (Linux's
    /// `kmem_cache_sanity_check` refuses `in_interrupt()`, and the
    /// `slab_mutex` it takes may sleep).
    InAtomic(crate::context::ContextViolation),
}

impl core::error::Error for CacheCreateError {}

impl core::fmt::Display for CacheCreateError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CacheCreateError::BadSize { size } => write!(
                f,
                "kmem_cache_create: integrity check failed: size {size} is 0 or above KMALLOC_MAX_SIZE ({KMALLOC_MAX_SIZE})"
            ),
            CacheCreateError::BadAlign { align } => {
                write!(f, "kmem_cache_create: alignment {align} is not a power of two")
            }
            CacheCreateError::BadName => write!(f, "kmem_cache_create: a cache needs a name"),
            CacheCreateError::InternalFlags { flags } => write!(
                f,
                "kmem_cache_create: flags {flags:?} are the allocator's own, not a caller's (Linux: -EINVAL)"
            ),
            CacheCreateError::TooLarge { size } => write!(
                f,
                "kmem_cache_create: objects of {size} bytes with their metadata do not fit a slab of order {MAX_PAGE_ORDER}"
            ),
            CacheCreateError::NoMemory(e) => write!(f, "kmem_cache_create: {e}"),
            CacheCreateError::InAtomic(v) => {
                write!(f, "kmem_cache_create: integrity check failed: {v}")
            }
        }
    }
}

/// Objects still allocated when a cache was destroyed (Linux's "Slab cache
/// still has objects"). The cache's memory is kept so they stay valid (and
/// `kfree` still works on them), but the cache is gone from slabinfo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheLeak {
    /// Objects still allocated.
    pub objects: usize,
    /// Slabs holding them.
    pub slabs: usize,
}

impl core::fmt::Display for CacheLeak {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "slab cache still has {} objects in {} slabs",
            self.objects, self.slabs
        )
    }
}

/// A slab cache: Linux's `struct kmem_cache`.
///
/// Reached through a [`KmemCacheRef`] (user caches) or internally (kmalloc
/// caches). All methods take `&self` and are safe to call from any thread.
#[repr(C, align(64))]
pub struct KmemCache<P: Platform> {
    // ---- read-only after creation, read on every fast path ----
    pub(crate) size: usize,
    /// Linux's `object_size`: grows when a cache with a larger object is
    /// merged into this one (`__kmem_cache_alias`), under the cache list
    /// lock; read with relaxed loads (plain loads on x86-64).
    object_size: AtomicUsize,
    pub(crate) offset: usize,
    /// [`Layout::fp_stagger`]: see [`Self::fp_slot`].
    pub(crate) fp_stagger: usize,
    pub(crate) red_left_pad: usize,
    pub(crate) random: usize,
    /// `random ^` the cache's [`super::allocated_mark`]: the mark's
    /// encoding less the slot's part, so that marking an object is one XOR
    /// and a store. Reveals nothing of `random` but its fixed bits.
    allocated_key: usize,
    /// [`div_magic`] of `size`, for [`object_index`].
    pub(crate) magic: u64,
    pub(crate) flags: SlabFlags,
    pub(crate) debug: bool,
    /// Free pointers are encoded (`fp_code`).
    pub(crate) hardened: bool,
    /// Allocated objects carry the allocated mark in their free-pointer
    /// slot and every free checks it (`SlabConfig::double_free_mark`, only
    /// with `hardened`); without it only Linux's naive check is made.
    pub(crate) marks: bool,
    pub(crate) pages: *const PageAllocator<P>,
    /// The direct map, `[dm_start, dm_start + dm_len)`: where every object
    /// lies (free-pointer sanity checks).
    pub(crate) dm_start: usize,
    pub(crate) dm_len: usize,
    /// Most objects one CPU's free list holds before the colder half goes
    /// back to the slabs.
    pub(crate) cpu_list_max: u32,
    /// Objects one CPU's sheaf holds at most (0: no sheaves).
    pub(crate) sheaf_cap: u32,
    /// Full sheaves (and empty ones) a node's barn holds at most (0: no
    /// barn).
    pub(crate) barn_max: u32,
    // ---- read-only after creation (but for merges, as `object_size`) ----
    inuse: AtomicUsize,
    pub(crate) align: usize,
    pub(crate) oo: OrderObjects,
    pub(crate) min: OrderObjects,
    pub(crate) allocflags: Gfp,
    pub(crate) min_partial: usize,
    pub(crate) cpu_partial_slabs: u32,
    pub(crate) ctor: Option<fn(NonNull<u8>)>,
    pub(crate) global: *const SlabGlobal<P>,
    pub(crate) nr_cpus: usize,
    name_buf: [u8; CACHE_NAME_MAX],
    name_len: usize,
    // ---- mutable ----
    pub(crate) refcount: AtomicUsize,
    pub(crate) errors: AtomicUsize,
    pub(crate) list_next: AtomicPtr<KmemCache<P>>,
    pub(crate) list_prev: AtomicPtr<KmemCache<P>>,
    pub(crate) nodes: [CacheNode<P::Lock>; MAX_NUMNODES],
    // followed by nr_cpus CpuSlab
}

// SAFETY: the raw pointers refer to the page allocator and slab globals,
// which outlive every cache (see SlabAllocator); all mutable state is atomics,
// locks, or per-CPU state under its flag.
unsafe impl<P: Platform> Send for KmemCache<P> {}
unsafe impl<P: Platform> Sync for KmemCache<P> {}

/// Bytes of one `kmem_cache` object for `nr_cpus` CPUs.
pub(crate) fn cache_object_size<P: Platform>(nr_cpus: usize) -> usize {
    size_of::<KmemCache<P>>() + nr_cpus * size_of::<CpuSlab>()
}

impl<P: Platform> KmemCache<P> {
    /// Builds a cache header and its per-CPU state in place.
    ///
    /// # Safety
    /// `at` must be valid for writes of `cache_object_size::<P>(nr_cpus)`
    /// bytes, aligned to 64, and stay valid (and unmoved) for the cache's
    /// life; `pages` and `global` must outlive the cache.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn init_at(
        at: *mut KmemCache<P>,
        name: &str,
        layout: &Layout,
        ctor: Option<fn(NonNull<u8>)>,
        random: usize,
        pages: *const PageAllocator<P>,
        global: *const SlabGlobal<P>,
        cfg: &SlabConfig,
        nr_cpus: usize,
    ) {
        let mut name_buf = [0u8; CACHE_NAME_MAX];
        let mut name_len = name.len().min(CACHE_NAME_MAX);
        while !name.is_char_boundary(name_len) {
            name_len -= 1;
        }
        name_buf[..name_len].copy_from_slice(&name.as_bytes()[..name_len]);
        let flags = layout.flags;
        let debug = flags.intersects(SlabFlags::DEBUG);
        let hardened = random != 0;
        // The mark needs the encoding: a plain slot that user data zeroed
        // would read as a free object's NULL.
        let marks = hardened && cfg.double_free_mark;
        let mut allocflags = Gfp::COMP;
        if flags.contains(SlabFlags::CACHE_DMA) {
            allocflags |= Gfp::DMA;
        }
        if flags.contains(SlabFlags::CACHE_DMA32) {
            allocflags |= Gfp::DMA32;
        }
        if flags.contains(SlabFlags::RECLAIM_ACCOUNT) {
            allocflags |= Gfp::RECLAIMABLE;
        }
        let ilog2 = (usize::BITS - 1 - layout.size.leading_zeros()) as usize;
        let min_partial = (ilog2 / 2).clamp(5, 10);
        let cpu_partial_objects: u32 = if debug || !cfg.cpu_partial {
            0
        } else if layout.size >= PAGE_SIZE {
            6
        } else if layout.size >= 1024 {
            24
        } else if layout.size >= 256 {
            52
        } else {
            120
        };
        let cpu_partial_slabs = (cpu_partial_objects * 2).div_ceil(layout.oo.objects);
        // About 64 KiB of objects per CPU, at least two slabs' worth, within
        // [16, 512].
        let cpu_list_max = ((65536 / layout.size) as u32)
            .max(2 * layout.oo.objects)
            .clamp(16, 512);
        let sheaf_cap = if debug {
            0
        } else {
            let n = (cfg.sheaf_bytes / layout.size).min(super::SHEAF_SLOTS);
            if n < 8 {
                0
            } else {
                n as u32
            }
        };
        // Up to `barn_sheaves` full sheaves, within `sheaf_bytes` of
        // objects (one sheaf always fits: `sheaf_cap` is at most
        // `sheaf_bytes / size`).
        let barn_max = if sheaf_cap == 0 {
            0
        } else {
            let per_sheaf = sheaf_cap as usize * layout.size;
            (cfg.sheaf_bytes / per_sheaf).min(cfg.barn_sheaves as usize) as u32
        };
        // A secret of its own for the allocated mark (see allocated_mark);
        // none without hardening, which has no mark.
        let allocated = if random == 0 {
            0
        } else {
            // SAFETY: the globals are valid (contract).
            super::allocated_mark(unsafe { (*global).next_random() })
        };
        // SAFETY: the page allocator is valid (contract).
        let (dm_start, dm_len, local) = unsafe {
            let pa = &*pages;
            (
                pa.platform().direct_map_offset(),
                (pa.max_pfn() as usize) << crate::addr::PAGE_SHIFT,
                pa.default_node as u32,
            )
        };
        // SAFETY: `at` is valid for writes per the contract.
        unsafe {
            at.write(KmemCache {
                size: layout.size,
                object_size: AtomicUsize::new(layout.object_size),
                offset: layout.offset,
                fp_stagger: layout.fp_stagger,
                red_left_pad: layout.red_left_pad,
                random,
                allocated_key: random ^ allocated,
                magic: div_magic(layout.size),
                flags,
                debug,
                hardened,
                marks,
                pages,
                dm_start,
                dm_len,
                cpu_list_max,
                sheaf_cap,
                barn_max,
                inuse: AtomicUsize::new(layout.inuse),
                align: layout.align,
                oo: layout.oo,
                min: layout.min,
                allocflags,
                min_partial,
                cpu_partial_slabs,
                ctor,
                global,
                nr_cpus,
                name_buf,
                name_len,
                refcount: AtomicUsize::new(1),
                errors: AtomicUsize::new(0),
                list_next: AtomicPtr::new(core::ptr::null_mut()),
                list_prev: AtomicPtr::new(core::ptr::null_mut()),
                nodes: core::array::from_fn(|_| CacheNode::new()),
            });
            let cpus = (at as *mut u8).add(size_of::<KmemCache<P>>()) as *mut CpuSlab;
            for i in 0..nr_cpus {
                cpus.add(i).write(CpuSlab::new(local));
            }
        }
    }

    /// The cache's name.
    pub fn name(&self) -> &str {
        // The buffer holds a prefix of a `&str` cut at a char boundary.
        core::str::from_utf8(&self.name_buf[..self.name_len]).unwrap_or("?")
    }
    /// Linux's `kmem_cache_size`: the usable object size (the largest of
    /// the caches merged into this one).
    #[inline(always)]
    pub fn object_size(&self) -> usize {
        self.object_size.load(Relaxed)
    }
    /// A cache of `size`-byte objects was merged into this one: grow
    /// `object_size` and `inuse` to cover it (Linux's `__kmem_cache_alias`).
    /// Called under the cache list lock; the stride must already hold it.
    pub(crate) fn grow_object(&self, size: usize) {
        debug_assert!(size.next_multiple_of(8) <= self.size);
        self.object_size.fetch_max(size, Relaxed);
        self.inuse.fetch_max(size.next_multiple_of(8), Relaxed);
    }
    /// Stride between objects, metadata included (slabinfo's `objsize`).
    pub fn slab_size(&self) -> usize {
        self.size
    }
    /// Object alignment.
    pub fn align(&self) -> usize {
        self.align
    }
    /// Flags in force (including debug flags from `slab_debug`).
    pub fn flags(&self) -> SlabFlags {
        self.flags
    }
    /// Preferred slab order and objects per slab.
    pub fn order_objects(&self) -> OrderObjects {
        self.oo
    }
    /// Offset of the free pointer from the start of an object, before the
    /// stagger of large objects ([`Self::freeptr_offset_of`]).
    pub fn freeptr_offset(&self) -> usize {
        self.offset
    }
    /// Offset of the free pointer from the start of the object at `p`
    /// ([`Layout::fp_stagger`]).
    pub fn freeptr_offset_of(&self, p: *const u8) -> usize {
        self.fp_slot(p as usize) - p as usize
    }
    /// Empty slabs kept on each node's partial list (`min_partial`).
    pub fn min_partial(&self) -> usize {
        self.min_partial
    }
    /// Most slabs on one CPU's partial list.
    pub fn cpu_partial_slabs(&self) -> u32 {
        self.cpu_partial_slabs
    }
    /// Bytes before each object reserved as left red zone.
    pub fn red_left_pad(&self) -> usize {
        self.red_left_pad
    }
    /// End of the object and its right red zone; metadata starts here.
    #[inline(always)]
    pub fn inuse(&self) -> usize {
        self.inuse.load(Relaxed)
    }
    /// True if debugging flags send this cache down the checked paths.
    pub fn is_debug(&self) -> bool {
        self.debug
    }
    /// Errors reported against this cache so far (each report and each fix
    /// counts one, like the `slab_errors` of Linux's slub_kunit).
    pub fn errors(&self) -> usize {
        self.errors.load(Relaxed)
    }
    /// Number of `kmem_cache_create` calls sharing this cache (merging).
    pub fn refcount(&self) -> usize {
        self.refcount.load(Relaxed)
    }

    #[inline(always)]
    pub(crate) fn pages(&self) -> &PageAllocator<P> {
        // SAFETY: the page allocator outlives every cache (init_at contract).
        unsafe { &*self.pages }
    }
    #[inline(always)]
    pub(crate) fn global(&self) -> &SlabGlobal<P> {
        // SAFETY: the globals outlive every cache (init_at contract).
        unsafe { &*self.global }
    }
    #[inline(always)]
    pub(crate) fn platform(&self) -> &P {
        self.pages().platform()
    }

    /// The per-CPU state of `cpu`.
    #[inline(always)]
    pub(crate) fn cpu_slab(&self, cpu: usize) -> &CpuSlab {
        debug_assert!(cpu < self.nr_cpus);
        self.cpu_slab_unchecked(if cpu < self.nr_cpus { cpu } else { 0 })
    }

    /// The running CPU's state, with its flag if it could be taken without
    /// waiting (see [`super::cpu`] for the two ways of taking it).
    #[inline(always)]
    pub(crate) fn this_cpu(&self) -> (&CpuSlab, Option<CpuGuard<'_>>) {
        match self.this_cpu_owned() {
            Some(owned) => owned,
            None => self.this_cpu_shared(),
        }
    }

    /// [`Self::this_cpu`] for a caller that owns its CPU; None for any
    /// other. One compare, against the bound the index needs anyway
    /// (`nr_cpus` is the platform's), and no call.
    #[inline(always)]
    pub(crate) fn this_cpu_owned(&self) -> Option<(&CpuSlab, Option<CpuGuard<'_>>)> {
        let p = self.platform();
        let owned = p.owned_cpu();
        if owned >= self.nr_cpus {
            return None;
        }
        let c = self.cpu_slab_unchecked(owned);
        Some((c, c.state.try_lock_this(p, owned, true)))
    }

    /// What a fast path tells a caller that does not own its CPU: the
    /// shared fast path next, unless the cache debugs (it has no sheaf: the
    /// full path, without a compare-and-swap for nothing).
    #[inline(always)]
    pub(crate) fn unowned<T>(&self) -> Fast<T> {
        if self.debug {
            Fast::Declined
        } else {
            Fast::Unowned
        }
    }

    /// [`Self::this_cpu`] for a caller that does not own its CPU. Kept out
    /// of the owner's paths (which call [`Self::this_cpu_owned`] only), and
    /// inlined into the shared ones.
    #[inline(always)]
    pub(crate) fn this_cpu_shared(&self) -> (&CpuSlab, Option<CpuGuard<'_>>) {
        let p = self.platform();
        let (cpu, exclusive) = p.this_cpu();
        if cpu < self.nr_cpus {
            let c = self.cpu_slab_unchecked(cpu);
            (c, c.state.try_lock_this(p, cpu, exclusive))
        } else {
            // A platform that breaks its contract: CPU 0's state, never as
            // its owner.
            let c = self.cpu_slab(0);
            (c, c.state.try_lock_this(p, 0, false))
        }
    }

    /// `cpu`'s state, waiting for its flag (flushes and reports from any
    /// CPU).
    pub(crate) fn lock_cpu(&self, cpu: usize) -> CpuGuard<'_> {
        self.cpu_slab(cpu).state.lock_remote(self.platform(), cpu)
    }

    /// The per-CPU state of `cpu`, known to be below `nr_cpus`.
    #[inline(always)]
    fn cpu_slab_unchecked(&self, cpu: usize) -> &CpuSlab {
        debug_assert!(cpu < self.nr_cpus);
        // SAFETY: init_at wrote nr_cpus CpuSlabs right behind the header,
        // inside the same allocation; cpu < nr_cpus (caller).
        unsafe {
            let base = (self as *const Self as *const u8).add(size_of::<Self>()) as *const CpuSlab;
            &*base.add(cpu)
        }
    }

    /// Sum of one counter over all CPUs.
    pub fn stat(&self, s: Stat) -> u64 {
        (0..self.nr_cpus)
            .map(|c| self.cpu_slab(c).stat_value(s))
            .sum()
    }

    /// Every counter, summed over CPUs, in [`Stat::ALL`] order.
    pub fn stats(&self) -> [u64; NR_STATS] {
        let mut out = [0; NR_STATS];
        for (i, s) in Stat::ALL.iter().enumerate() {
            out[i] = self.stat(*s);
        }
        out
    }

    /// A slab of this cache from its head pfn.
    #[inline(always)]
    pub(crate) fn slab_at(&self, pfn: u32) -> SlabRef<'_> {
        let pages = self.pages();
        let frame = match pages.frame(Pfn(pfn as u64)) {
            Some(f) => f,
            None => panic!("kmem slab: no frame record for slab pfn {pfn:#x}"),
        };
        SlabRef::at(pages, pfn, frame)
    }

    /// Address of object `idx` of a slab at `base`.
    #[inline(always)]
    pub(crate) fn obj_addr(&self, base: usize, idx: u32) -> usize {
        base + self.red_left_pad + idx as usize * self.size
    }

    /// Index of the object at `obj` in a slab at `base` holding `objects`,
    /// or `None` if `obj` is not the start of one of them.
    #[inline(always)]
    pub(crate) fn obj_index(&self, base: usize, objects: u32, obj: usize) -> Option<u32> {
        let off = obj.wrapping_sub(base).wrapping_sub(self.red_left_pad);
        object_index(off, self.magic, objects)
    }

    /// Object index of an address known to be an object of the slab.
    #[inline(always)]
    pub(crate) fn idx_of(&self, base: usize, obj: usize) -> u32 {
        let off = obj - base - self.red_left_pad;
        ((off as u128 * self.magic as u128) >> 64) as u32
    }

    /// True if `p` could be an object of this cache: NULL, or a word-aligned
    /// direct-map address. What a free object's free pointer decodes to; an
    /// allocated object's (the allocated mark, or user data under
    /// hardening) does not, but for a chance of about 2^-37.
    #[inline(always)]
    pub(crate) fn plausible_fp(&self, v: usize) -> bool {
        // The alignment test first: the allocated mark fails it at once.
        v == 0 || (v & 7 == 0 && v.wrapping_sub(self.dm_start) < self.dm_len)
    }

    /// Encodes or decodes a free pointer stored at `slot` (XOR is its own
    /// inverse): `ptr ^ secret ^ swab(slot)` when hardened, else `ptr`.
    #[inline(always)]
    pub(crate) fn fp_code(&self, v: usize, slot: usize) -> usize {
        if self.hardened {
            self.fp_encoded(v, slot)
        } else {
            v
        }
    }

    /// The hardened encoding itself, `ptr ^ secret ^ swab(slot)`, for
    /// callers that know the cache is hardened.
    #[inline(always)]
    fn fp_encoded(&self, v: usize, slot: usize) -> usize {
        v ^ self.fp_key(slot)
    }

    /// Address of the free-pointer slot of the object at `obj`: `offset`
    /// from it, plus the stagger of large objects (`Layout::fp_stagger`).
    #[inline(always)]
    pub(crate) fn fp_slot(&self, obj: usize) -> usize {
        obj + self.offset + ((obj >> 6) & self.fp_stagger)
    }

    /// Reads the free pointer of the free object at `obj`.
    ///
    /// # Safety
    /// `obj` must be an object of a live slab of this cache.
    #[inline(always)]
    pub(crate) unsafe fn get_fp(&self, obj: usize) -> usize {
        let slot = self.fp_slot(obj);
        // SAFETY: the slot is a word inside the object's stride (contract).
        self.fp_code(unsafe { (slot as *const usize).read() }, slot)
    }

    /// Writes the free pointer of the object at `obj`.
    ///
    /// # Safety
    /// As [`Self::get_fp`]; the object must be free or being freed.
    #[inline(always)]
    pub(crate) unsafe fn set_fp(&self, obj: usize, next: usize) {
        let slot = self.fp_slot(obj);
        // SAFETY: as get_fp.
        unsafe { (slot as *mut usize).write(self.fp_code(next, slot)) };
    }

    /// [`Self::get_fp`] on a cache with the allocated mark, which implies
    /// encoding: the fast paths then test `marks` alone, not `hardened` too.
    ///
    /// # Safety
    /// As [`Self::get_fp`]; `self.marks` is set.
    #[inline(always)]
    pub(crate) unsafe fn get_fp_marked(&self, obj: usize) -> usize {
        debug_assert!(self.marks && self.hardened);
        let slot = self.fp_slot(obj);
        // SAFETY: as get_fp.
        self.fp_encoded(unsafe { (slot as *const usize).read() }, slot)
    }

    /// The slot's part of the encoding, `random ^ swab(slot)`: what the
    /// slot of a free object in a sheaf holds (NULL encoded). Computed once
    /// where a free both checks the slot and writes it.
    #[inline(always)]
    pub(crate) fn fp_key(&self, slot: usize) -> usize {
        self.random ^ slot.swap_bytes()
    }

    /// Marks the object at `obj` allocated: its slot then holds the
    /// cache's allocated mark ([`Self::allocated_mark`]) encoded, which
    /// never decodes to a plausible free pointer.
    ///
    /// # Safety
    /// As [`Self::set_fp_marked`].
    #[inline(always)]
    pub(crate) unsafe fn mark_allocated(&self, obj: usize) {
        debug_assert!(self.marks && self.hardened);
        let slot = self.fp_slot(obj);
        // SAFETY: as set_fp.
        unsafe { (slot as *mut usize).write(self.allocated_key ^ slot.swap_bytes()) };
    }

    /// What the slot of an object marked allocated decodes to (see
    /// [`super::allocated_mark`]).
    pub(crate) fn allocated_mark(&self) -> usize {
        self.allocated_key ^ self.random
    }

    /// [`Self::set_fp`] on a cache with the allocated mark (see
    /// [`Self::get_fp_marked`]).
    ///
    /// # Safety
    /// As [`Self::set_fp`]; `self.marks` is set.
    #[inline(always)]
    pub(crate) unsafe fn set_fp_marked(&self, obj: usize, v: usize) {
        debug_assert!(self.marks && self.hardened);
        let slot = self.fp_slot(obj);
        // SAFETY: as set_fp.
        unsafe { (slot as *mut usize).write(self.fp_encoded(v, slot)) };
    }

    /// Objects currently allocated: slabs' objects minus the free ones on
    /// node partial lists (per-CPU free lists count as allocated, as in
    /// Linux's slabinfo).
    pub fn active_objects(&self) -> usize {
        let (objs, free) = self.count_objects();
        objs - free
    }

    /// (total objects, free objects on node partial lists).
    pub(crate) fn count_objects(&self) -> (usize, usize) {
        let mut objs = 0;
        let mut free = 0;
        for n in 0..self.pages().nr_nodes().min(MAX_NUMNODES) {
            let node = &self.nodes[n];
            objs += node.total_objects.load(Relaxed);
            let lists = node.lists.lock();
            self.for_each_on(&lists, super::node::Which::Partial, |s| {
                let w = s.word();
                free += w.objects().saturating_sub(w.inuse()) as usize;
            });
        }
        (objs, free.min(objs))
    }

    /// Slabs of this cache, all nodes.
    pub fn nr_slabs(&self) -> usize {
        self.nodes.iter().map(|n| n.nr_slabs.load(Relaxed)).sum()
    }

    /// Slabs on node partial lists, all nodes.
    pub fn nr_partial(&self) -> usize {
        self.nodes.iter().map(|n| n.nr_partial.load(Relaxed)).sum()
    }

    /// Slabs on per-CPU partial lists, all CPUs (takes each CPU flag).
    pub fn nr_cpu_partial(&self) -> usize {
        (0..self.nr_cpus)
            .map(|c| self.lock_cpu(c).nr_partial as usize)
            .sum()
    }
}

/// A handle on a cache made by [`super::SlabAllocator::kmem_cache_create`].
///
/// Dereferences to the [`KmemCache`]; borrows the slab allocator, so it cannot
/// outlive it. [`KmemCacheRef::destroy`] (or dropping the handle) is Linux's
/// `kmem_cache_destroy`; since it consumes the handle, the cache cannot be
/// used afterwards.
pub struct KmemCacheRef<'s, P: Platform> {
    cache: NonNull<KmemCache<P>>,
    _borrow: PhantomData<&'s KmemCache<P>>,
}

// SAFETY: a shared reference to a Sync cache.
unsafe impl<P: Platform> Send for KmemCacheRef<'_, P> {}
unsafe impl<P: Platform> Sync for KmemCacheRef<'_, P> {}

impl<P: Platform> Deref for KmemCacheRef<'_, P> {
    type Target = KmemCache<P>;
    fn deref(&self) -> &KmemCache<P> {
        // SAFETY: the cache stays alive until the handle is destroyed.
        unsafe { self.cache.as_ref() }
    }
}

impl<P: Platform> core::fmt::Debug for KmemCacheRef<'_, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KmemCache")
            .field("name", &self.name())
            .field("object_size", &self.object_size())
            .field("size", &self.size)
            .field("order", &self.oo.order)
            .field("objects", &self.oo.objects)
            .finish()
    }
}

impl<'s, P: Platform> KmemCacheRef<'s, P> {
    pub(crate) fn new(cache: NonNull<KmemCache<P>>) -> Self {
        KmemCacheRef {
            cache,
            _borrow: PhantomData,
        }
    }

    /// Linux's `kmem_cache_destroy`: waits for pending RCU frees, flushes
    /// every CPU, gives every empty slab back and frees the cache. Objects
    /// still allocated are reported (`BUG <cache>: Objects remaining on
    /// __kmem_cache_shutdown()`, one line per object) and returned as an
    /// error; the cache memory is then kept so that they stay valid.
    #[track_caller]
    pub fn destroy(self) -> Result<(), CacheLeak> {
        let me = ManuallyDrop::new(self);
        // SAFETY: the handle is consumed; nothing can use the cache through
        // it afterwards.
        let cache = unsafe { me.cache.as_ref() };
        cache.destroy_at(Location::caller())
    }
}

impl<P: Platform> Drop for KmemCacheRef<'_, P> {
    fn drop(&mut self) {
        // SAFETY: the handle is going away; the cache may be freed.
        let cache = unsafe { self.cache.as_ref() };
        let _ = cache.destroy_at(Location::caller());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `object_index` against plain division, for every stride from 8 to
    /// 8 KiB (and some large ones) over every offset of a slab of
    /// `2^MAX_PAGE_ORDER` pages holding as many objects as fit, and at
    /// offsets that wrapped below the slab or lie far past it.
    #[test]
    fn object_index_agrees_with_division() {
        let slab = crate::addr::PAGE_SIZE << crate::addr::MAX_PAGE_ORDER;
        let sizes = (8..=8192).step_by(8).chain([24_576, 65_544, 1 << 20, slab]);
        for size in sizes {
            let magic = div_magic(size);
            let objects = (slab / size) as u32;
            let expect = |off: usize| {
                (off.is_multiple_of(size) && off / size < objects as usize)
                    .then_some((off / size) as u32)
            };
            let check = |off: usize| {
                assert_eq!(
                    object_index(off, magic, objects),
                    expect(off),
                    "size {size}, offset {off:#x}, {objects} objects"
                );
            };
            // Every offset for the small strides, the interesting ones
            // (object starts and their neighbours) for the others.
            if size <= 64 {
                (0..slab + 2 * size).for_each(check);
            } else {
                for i in 0..=objects as usize + 1 {
                    let start = i * size;
                    [start, start.wrapping_sub(1), start + 1, start + 8]
                        .into_iter()
                        .for_each(check);
                }
            }
            [
                usize::MAX,
                usize::MAX - 7,
                usize::MAX - size + 1,
                0usize.wrapping_sub(size),
                1 << 32,
                (1 << 32) + size,
                size << 32,
                (size << 32).wrapping_sub(size),
            ]
            .into_iter()
            .for_each(check);
        }
    }

    /// Over every object size up to 8 KiB and the layouts that matter, the
    /// staggered slot stays a word inside the object, in whole cache lines,
    /// away from the object's first half (where Linux keeps small overflows
    /// from reaching it); only large objects without debugging stagger, and
    /// kmalloc's 1, 2, 4 and 8 KiB classes get 8, 16, 32 and 32 colors.
    #[test]
    fn the_stagger_keeps_the_slot_inside_the_object() {
        let cfg = SlabConfig::default();
        for object_size in 1..=8192usize {
            for flags in [
                SlabFlags::empty(),
                SlabFlags::HWCACHE_ALIGN,
                SlabFlags::CONSISTENCY_CHECKS,
                SlabFlags::RED_ZONE,
                SlabFlags::TYPESAFE_BY_RCU,
            ] {
                let l = Layout::compute(object_size, 8, flags, false, &cfg, 2).unwrap();
                let m = l.fp_stagger;
                if m == 0 {
                    continue;
                }
                assert!(object_size >= FP_STAGGER_MIN, "{object_size} {flags:?}");
                assert!(!flags.intersects(SlabFlags::DEBUG | SlabFlags::TYPESAFE_BY_RCU));
                assert_eq!(m % 64, 0, "{object_size}: whole lines");
                assert!(l.offset >= object_size / 2 - WORD);
                assert!(
                    l.offset + m + WORD <= object_size,
                    "{object_size}: offset {} + stagger {m:#x} leaves the object",
                    l.offset
                );
            }
            let with_ctor = Layout::compute(object_size, 8, SlabFlags::empty(), true, &cfg, 2);
            assert_eq!(with_ctor.unwrap().fp_stagger, 0, "slot after the object");
        }
        for (size, colors) in [(512, 1), (1024, 8), (2048, 16), (4096, 32), (8192, 32)] {
            let m = fp_stagger(size, size / 2);
            let step = m.trailing_zeros().min(usize::BITS - 1);
            let n = if m == 0 { 1 } else { (m >> step) + 1 };
            assert_eq!(n, colors, "kmalloc-{size}: mask {m:#x}");
        }
    }
}
