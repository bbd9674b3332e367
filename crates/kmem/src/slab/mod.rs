//! # The slab allocator: `kmem_cache_*` and `kmalloc`, SLUB-style
//!
//! Small objects come from *slabs*: compound blocks of 2^order pages cut into
//! equal objects. A [`KmemCache`] hands out objects of one size; `kmalloc`
//! is a table of caches with Linux's size classes ([`kmalloc`]) plus whole
//! pages above 8 KiB. The slab layer calls no heap: cache structures are
//! objects of the bootstrap cache `kmem_cache` (whose first slab is carved
//! from the page allocator by hand, as Linux's `bootstrap()` does), the
//! globals sit in one page, and every slab's bookkeeping lives in its head
//! frame record.
//!
//! ```text
//!   kmalloc(size, gfp) ──► size class + kmalloc type ──► KmemCache ─┐
//!   kmem_cache_alloc(cache, gfp) ───────────────────────────────────┤
//!                                                                   ▼
//!     per-CPU sheaf ── pop (fast path: plain loads and stores on an owned CPU)
//!        │ empty: trade it for a full one at the node's barn, or refill half of it from
//!        ├─► the per-CPU free list ─► objects freed to the active slab by other CPUs
//!        ├─► per-CPU partial list ─► node partial list ─► new slab (page allocator)
//!
//!   kfree(p) / kmem_cache_free ─► checks ─► push onto the per-CPU sheaf
//!        │ sheaf full ─► trade it for an empty one at the node's barn, or
//!        │               its older half back to the slabs, one CAS per
//!        │               run of objects of the same slab
//!        └ flag taken / other node ─► straight to the slab (`__slab_free`)
//! ```
//!
//! The *sheaf* (Linux 6.18's name) is an array of free objects of the
//! cache, one per CPU, in a block of its own from the page allocator
//! ([`OWNER_SHEAF`], [`SHEAF_SLOTS`] slots, capped per cache by
//! [`SlabConfig::sheaf_bytes`]). It takes objects of *any* slab of the cache:
//! a free to a slab that is not the CPU's active one, the common slow path
//! of classic SLUB, is as fast as any other. Allocation pops the most
//! recently freed object (warm in the cache); no path follows a pointer
//! stored in an object, so a batch of cold objects costs no dependent cache
//! misses. (With the default allocated mark each path touches the object's
//! free-pointer slot once, so that the free can refuse a double free;
//! without it neither touches the object.) The
//! sheaf is refilled to half from the *CPU free list*: the whole free list
//! of the CPU's active slab, taken at once as in SLUB, threaded through the
//! free objects. Objects in either count as in use in their slabs until they
//! go back (sheaf full, CPU flush on shrink, validate, destroy, or memory
//! pressure once the allocator is registered as a shrinker: see
//! `SlabAllocator::register_shrinker`). With [`SlabConfig::sheaf_bytes`] 0
//! the CPU free list alone is the fast path.
//!
//! Between CPUs, each node has a *barn* per cache (`barn.rs`, Linux 6.18's
//! `node_barn`): a store of whole full and empty sheaves. A thread that
//! frees what others allocated fills its sheaf and trades it there for an
//! empty one; a thread that allocates what others free trades its empty
//! sheaf for a full one. Objects move between CPUs a sheaf at a time, in
//! O(1), instead of back to their slabs and out again one by one.
//!
//! ## Object layout
//! Objects follow each other from the first byte of the slab, `size` bytes
//! apart (Linux's `calculate_sizes`, see [`cache::Layout`]):
//!
//! ```text
//!  | left red zone | object (object_size) | right red zone | free ptr* | alloc track | free track | orig size | pad |
//!    red_left_pad    ^ object address        to inuse         *if outside  SLAB_STORE_USER (32 B each)    KMALLOC
//! ```
//!
//! Without debugging an object is just `object_size` rounded to a word. A
//! free object holds the *free pointer* (the next free object) at `offset`:
//! the middle of the object (away from the edges that small overflows hit),
//! or right after it when the contents must survive a free (constructor,
//! `SLAB_TYPESAFE_BY_RCU`, poisoning); in objects of 1 KiB and more, without
//! debugging, staggered by address over up to 32 positions a cache line or
//! more apart ([`cache::fp_stagger`]). With hardening (the default) it is
//! stored as `next ^ secret ^ swab(&slot)`, as Linux's
//! `CONFIG_SLAB_FREELIST_HARDENED`.
//!
//! ## Slab metadata
//! In the head frame record (see [`slab`]): owner tag [`OWNER_SLAB`],
//! `private[0]` = the cache, `private[1]` = one atomic word packing the free
//! list head (an object index), `inuse`, `objects` and state bits, and the
//! frame's `next`/`prev` links for the partial and full lists. A multi-page
//! slab relabels its tail records (owner tag [`OWNER_SLAB`] in state Tail):
//! `private[0]` = the cache, as in the head, and `private[1]` = the object
//! count where the head's word has it (bits 32..48) above the head's pfn
//! (bits 0..32, where [`crate::page::Frame::compound_head_pfn`] looks for
//! it), so that the record of the page an address lies in, head or tail,
//! answers everything `kfree`'s fast path checks (see `find_slab`). They
//! get their compound labels back when the slab goes or waits for RCU.
//! Large kmalloc
//! blocks carry [`OWNER_KMALLOC_LARGE`]; anything else is not kmalloc's, so a
//! `kfree` of it is refused.
//!
//! ## Locking order
//! 1. the cache list lock (Linux's `slab_mutex`): create, destroy, slabinfo;
//! 2. a CPU flag of one cache (try-lock, plain stores for the CPU's owner;
//!    only flushes wait for it), see [`cpu`];
//! 3. a node lock of one cache (`list_lock`), see [`node`];
//! 4. a slab word: lock-free compare-and-swap, see [`slab`].
//!
//! The page allocator is called with none of these held when allocating (its
//! reclaim may run shrinkers that free slab objects) and with at most a
//! CPU flag or node lock held when giving an empty slab back (freeing pages
//! never calls back into the slab layer).
//!
//! ## Frees and double frees
//! `kfree` first finds the head frame of the address (direct map only),
//! checks the owner tag, the cache and that the address is the start of an
//! object, then frees onto the CPU's free list (fast path), or straight to
//! the slab with a compare-and-swap (Linux's `__slab_free`), taking the node
//! lock only when the slab changes lists. A double free is caught in O(1)
//! with the allocated mark on (hardening plus [`SlabConfig::double_free_mark`],
//! the default): a free object's pointer slot decodes to NULL or to a
//! word-aligned direct-map address (the next free object), and an allocated
//! object's slot is overwritten on allocation with a marker that decodes to
//! neither, even when only part of it is overwritten (a secret of the cache,
//! apart from the free-pointer key: see `allocated_mark`); the chance that
//! user data mimics a free slot is about 2^-37 per free. The check and the
//! marker's write are plain loads and stores: two CPUs freeing one object at
//! the same instant can both pass (README). Without the mark only a
//! free of the object at the top of the CPU's sheaf or the head of a free
//! list is caught (Linux's check).
//! Debug caches check exactly by walking the free list under the node lock.
//! Every refused free is reported through the platform and changes nothing.
//!
//! ## Drawbacks
//! - A thread that has not claimed its CPU (the host's shared paths) takes
//!   the CPU flag with a compare-and-swap on every fast path; a claimed CPU
//!   (a kernel with preemption off, `kmem_host::claim_cpu`) uses plain
//!   stores. Linux's per-CPU operations need no atomic instruction either way.
//!   Peers without per-size caches or checks (talc, rlsf) are faster on
//!   mixed-size batches.
//! - Double-free detection without debugging is probabilistic (see above)
//!   and needs hardening; a write after free that hits the free pointer slot
//!   can hide a later double free of the same object.
//! - kmem has no RCU of its own: `rcu_barrier` is the grace period, and the
//!   caller vouches for it (see [`rcu`]).
//! - A `kmem_cache` object holds the per-CPU state of every CPU inline, so
//!   its size grows with `nr_cpus` (320 bytes per CPU: the `kmem_cache`
//!   cache's object size in slabinfo).
//!
//! ## Why `SlabAllocator<'a, P>` borrows the page allocator
//! [`SlabAllocator`] holds `&'a PageAllocator<P>` and a pointer to its
//! globals (which live in a page of their own), so it is small, movable and
//! needs no `'static`. A kernel, or a `GlobalAlloc` on the hosted machine,
//! keeps a `SlabAllocator<'static, P>` in a `static` over a leaked or static
//! page allocator; tests keep one on the stack beside their machine. Cache
//! handles ([`KmemCacheRef`]) borrow the `SlabAllocator`, so no cache can
//! outlive it and `kmem_cache_destroy` (consuming the handle) cannot be
//! followed by a use of the cache.

pub mod cache;
pub mod cpu;
pub mod debug;
pub mod flags;
pub mod kmalloc;
pub mod node;
pub mod rcu;
// `slab::slab` is the one-slab view, named as the design lays the files out.
#[allow(clippy::module_inception)]
pub mod slab;
pub mod slabinfo;

mod alloc;
mod barn;
mod free;
mod shrinker;

pub use cache::{CacheCreateError, CacheLeak, KmemCache, KmemCacheRef, Layout, OrderObjects};
pub use cpu::{Stat, NR_STATS};
pub use debug::ValidateReport;
pub use flags::{SlabDebug, SlabFlags};
pub use free::SHRINK_PROMOTE_MAX;
pub use kmalloc::{KmallocType, ReallocError};

use crate::addr::{get_order, Pfn, VirtAddr, MAX_PAGE_ORDER, PAGE_SHIFT, PAGE_SIZE};
use crate::error::AllocError;
use crate::gfp::{Gfp, GFP_KERNEL};
use crate::page::frame::flags as frame_flags;
use crate::page::{FrameState, PageAllocator, NUMA_NO_NODE};
use crate::platform::Platform;
use cache::cache_object_size;
use core::fmt;
use core::panic::Location;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering::Relaxed};
use slab::SlabRef;

/// What `kmalloc(0)` returns: a non-NULL pointer that must not be
/// dereferenced, and that `kfree` accepts (Linux's `ZERO_SIZE_PTR`).
pub const ZERO_SIZE_PTR: usize = 16;
/// Largest `kmalloc` size: the largest buddy block, 4 MiB.
pub const KMALLOC_MAX_SIZE: usize = PAGE_SIZE << MAX_PAGE_ORDER;
/// Largest size served by a kmalloc cache; above it kmalloc takes pages.
pub const KMALLOC_MAX_CACHE_SIZE: usize = 8192;
/// Smallest kmalloc class.
pub const KMALLOC_MIN_SIZE: usize = 8;

/// Frame owner tag of a slab's head frame ([`crate::page::owner`]).
pub const OWNER_SLAB: u8 = crate::page::owner::SLAB;
/// Frame owner tag of a large kmalloc block's head frame.
pub const OWNER_KMALLOC_LARGE: u8 = crate::page::owner::KMALLOC_LARGE;
/// Frame owner tag of an emptied `SLAB_TYPESAFE_BY_RCU` slab waiting for a
/// grace period before it goes back to the page allocator.
pub const OWNER_SLAB_RCU: u8 = crate::page::owner::SLAB_RCU;
/// Owner tag of a sheaf's block (an array of free objects of one CPU).
pub const OWNER_SHEAF: u8 = crate::page::owner::SHEAF;
/// Order of a sheaf's block.
pub const SHEAF_ORDER: u32 = 1;
/// Object slots in one sheaf.
pub const SHEAF_SLOTS: usize =
    (crate::addr::PAGE_SIZE << SHEAF_ORDER) / core::mem::size_of::<usize>();

/// Byte written over free objects by `SLAB_POISON`.
pub const POISON_FREE: u8 = 0x6b;
/// Last byte of a poisoned free object.
pub const POISON_END: u8 = 0xa5;
/// Byte filling slab padding under `SLAB_POISON`.
pub const POISON_INUSE: u8 = 0x5a;
/// Red zone byte of a free object.
pub const SLUB_RED_INACTIVE: u8 = 0xbb;
/// Red zone byte of an allocated object.
pub const SLUB_RED_ACTIVE: u8 = 0xcc;

/// Slab allocator tunables, with Linux's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlabConfig {
    /// `slab_debug=`: debugging for all caches or some.
    pub slab_debug: SlabDebug,
    /// Encode free pointers with a per-cache secret and their address
    /// (`CONFIG_SLAB_FREELIST_HARDENED`). Needed by
    /// [`Self::double_free_mark`]. Default on.
    pub freelist_hardened: bool,
    /// kmem's own double-free check, beyond Linux's (needs
    /// [`Self::freelist_hardened`]; default on): allocation writes a mark
    /// into the object's free-pointer slot and every free (and `ksize`,
    /// `krealloc`, `kfree_rcu`, `kfree_sensitive`) refuses an object whose
    /// slot reads as free, in O(1). It costs a touch of the object's line on
    /// each fast path. Off, with hardening on, is Linux's
    /// `CONFIG_SLAB_FREELIST_HARDENED` exactly: a double free is caught only
    /// when the object is the top of the CPU's sheaf or the head of the free
    /// list it goes onto, and the fast paths never touch the object.
    pub double_free_mark: bool,
    /// Seed for the per-cache secrets. A kernel should pass boot entropy;
    /// the default is a fixed constant.
    pub seed: u64,
    /// `slab_min_objects` (0: Linux's `4 * (fls(nr_cpus) + 1)`).
    pub min_objects: u32,
    /// `slab_min_order`.
    pub min_order: u32,
    /// `slab_max_order` (default 3, PAGE_ALLOC_COSTLY_ORDER).
    pub max_order: u32,
    /// Keep per-CPU partial lists (`CONFIG_SLUB_CPU_PARTIAL`).
    pub cpu_partial: bool,
    /// Merge compatible caches (off: `slab_nomerge`).
    pub merge: bool,
    /// Bytes of free objects one CPU's sheaf may hold per cache (a sheaf
    /// holds at most [`SHEAF_SLOTS`] objects; caches whose objects are so
    /// large that fewer than 8 fit get none). 0 turns sheaves off: the fast
    /// paths then use the CPU free list alone, as SLUB before Linux 6.18.
    /// Debug caches never use sheaves. Default 4 MiB.
    pub sheaf_bytes: usize,
    /// Full sheaves each node's *barn* may hold per cache (Linux's
    /// `MAX_FULL_SHEAVES`, default 10), and no more than
    /// [`Self::sheaf_bytes`] of objects; as many empty ones. A CPU whose
    /// sheaf fills trades it there for an empty one, a CPU whose sheaf runs
    /// empty for a full one, instead of walking the objects back to their
    /// slabs and out again. 0 turns the barn off.
    pub barn_sheaves: u32,
}

impl Default for SlabConfig {
    fn default() -> Self {
        SlabConfig {
            slab_debug: SlabDebug::OFF,
            freelist_hardened: true,
            double_free_mark: true,
            seed: 0x6b6d_656d_736c_6162,
            min_objects: 0,
            min_order: 0,
            max_order: crate::addr::PAGE_ALLOC_COSTLY_ORDER,
            cpu_partial: true,
            merge: true,
            sheaf_bytes: 4 << 20,
            barn_sheaves: 10,
        }
    }
}

/// A cache name, copied (for error values that outlive the borrow).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CacheName {
    buf: [u8; cache::CACHE_NAME_MAX],
    len: u8,
}

impl CacheName {
    fn of<P: Platform>(c: &KmemCache<P>) -> CacheName {
        let n = c.name().as_bytes();
        let mut buf = [0; cache::CACHE_NAME_MAX];
        buf[..n.len()].copy_from_slice(n);
        CacheName {
            buf,
            len: n.len() as u8,
        }
    }
    /// The name.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len as usize]).unwrap_or("?")
    }
}

impl fmt::Debug for CacheName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}
impl fmt::Display for CacheName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a page found under a refused free really is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageKind {
    /// Free memory (on a buddy or per-CPU list, or inside a free block).
    Free,
    /// Allocated by the page allocator for someone other than kmalloc.
    Pages,
    /// Reserved memory or a hole.
    Reserved,
    /// An empty `SLAB_TYPESAFE_BY_RCU` slab waiting for its grace period.
    RcuSlab,
}

/// Why a `kfree` / `kmem_cache_free` was refused. Nothing was changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlabFreeError {
    /// The address is not in the direct map: a vmalloc address, a user or
    /// stack pointer, garbage.
    NotDirectMapped {
        /// The address.
        addr: usize,
    },
    /// The page is neither a slab nor a large kmalloc block.
    NotSlab {
        /// The address.
        addr: usize,
        /// Its frame.
        pfn: Pfn,
        /// What the page is.
        kind: PageKind,
    },
    /// The address lies inside a slab but is not the start of an object.
    Interior {
        /// The address.
        addr: usize,
        /// Start of the object it falls in (0 if it is in slab padding).
        object: usize,
        /// The cache.
        cache: CacheName,
    },
    /// The object is already free.
    DoubleFree {
        /// The address.
        addr: usize,
        /// The cache.
        cache: CacheName,
    },
    /// The object is queued by `kfree_rcu`: the grace period frees it, not
    /// this call (caught on caches with the allocated mark, without
    /// debugging).
    RcuQueued {
        /// The address.
        addr: usize,
        /// The cache.
        cache: CacheName,
    },
    /// `kmem_cache_free` with a cache the object does not belong to.
    WrongCache {
        /// The address.
        addr: usize,
        /// The cache given.
        given: CacheName,
        /// The cache the object belongs to.
        actual: CacheName,
    },
    /// Inside a large kmalloc block, not at its start.
    LargeInterior {
        /// The address.
        addr: usize,
        /// Start of the block.
        head: usize,
    },
    /// A large kmalloc block given to `kmem_cache_free`.
    LargeToCache {
        /// The address.
        addr: usize,
        /// The cache given.
        given: CacheName,
    },
    /// Debug consistency checks failed; the object was left allocated
    /// (Linux: "Object at 0x... not freed").
    Corrupt {
        /// The address.
        addr: usize,
        /// The cache.
        cache: CacheName,
    },
    /// A cache's own descriptor (an object of `kmem_cache`), which only
    /// `kmem_cache_destroy` frees: freeing (or resizing, zeroing) it under
    /// its handle would let the next cache be built over a live one.
    CacheDescriptor {
        /// The address.
        addr: usize,
    },
}

impl core::error::Error for SlabFreeError {}

impl fmt::Display for SlabFreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SlabFreeError::NotDirectMapped { addr } => write!(
                f,
                "kfree: {addr:#x} is not in the direct map (a vmalloc, user or foreign address?); nothing freed"
            ),
            SlabFreeError::NotSlab { addr, pfn, kind } => {
                let what = match kind {
                    PageKind::Free => "free memory",
                    PageKind::Pages => "a page-allocator page, not kmalloc's",
                    PageKind::Reserved => "reserved memory",
                    PageKind::RcuSlab => "an empty RCU slab awaiting its grace period",
                };
                write!(
                    f,
                    "kfree: {addr:#x} (pfn {pfn}) is not a slab object: the page is {what}; nothing freed"
                )
            }
            SlabFreeError::Interior {
                addr,
                object,
                cache,
            } => {
                if object != 0 {
                    write!(
                        f,
                        "BUG {cache}: Invalid object pointer {addr:#x}: {} bytes into the object at {object:#x}; nothing freed",
                        addr - object
                    )
                } else {
                    write!(
                        f,
                        "BUG {cache}: Invalid object pointer {addr:#x}: not an object of the slab; nothing freed"
                    )
                }
            }
            SlabFreeError::DoubleFree { addr, cache } => write!(
                f,
                "BUG {cache}: Object already free: double free of {addr:#x}; nothing freed"
            ),
            SlabFreeError::RcuQueued { addr, cache } => write!(
                f,
                "BUG {cache}: Object {addr:#x} is queued by kfree_rcu: the grace period frees it, not this call; nothing freed"
            ),
            SlabFreeError::WrongCache {
                addr,
                given,
                actual,
            } => write!(
                f,
                "kmem_cache_free: Wrong slab cache. {given} but object {addr:#x} is from {actual}; nothing freed"
            ),
            SlabFreeError::LargeInterior { addr, head } => write!(
                f,
                "kfree: {addr:#x} is {} bytes into the large kmalloc block at {head:#x}; nothing freed",
                addr - head
            ),
            SlabFreeError::LargeToCache { addr, given } => write!(
                f,
                "kmem_cache_free: {addr:#x} is a large kmalloc block, not an object of {given}; nothing freed"
            ),
            SlabFreeError::Corrupt { addr, cache } => write!(
                f,
                "BUG {cache}: Object at {addr:#x} not freed: consistency checks failed"
            ),
            SlabFreeError::CacheDescriptor { addr } => write!(
                f,
                "kfree: {addr:#x} is a slab cache's descriptor (a kmem_cache object), which only kmem_cache_destroy frees; nothing freed"
            ),
        }
    }
}

/// Where an address points, as far as the slab layer is concerned.
pub(crate) enum Found<'a, P: Platform> {
    /// An address inside a slab of `cache` (not yet checked to be an object).
    Slab {
        cache: &'a KmemCache<P>,
        slab: SlabRef<'a>,
    },
    /// An address inside a large kmalloc block.
    Large { head: Pfn, order: u32, base: usize },
}

/// The fast half of [`find`]: the slab holding `addr`, its cache and what
/// the free fast path checks, or None for anything else (which the full
/// path then classifies and reports). Reads only the frame record of
/// `addr`'s page: every record of a live slab, head or tail, carries the
/// owner tag [`OWNER_SLAB`], the cache in `private[0]` and the object count
/// in bits 32..48 of `private[1]` (see "Slab metadata" above); the node is
/// the page's own. Only the head's pfn differs (a tail's bits 0..32 of
/// `private[1]`, else the page's own), selected without a branch: objects
/// of a multi-page slab lie in its head page or a tail page in no order a
/// predictor can learn (with W2's random sizes a branch there mispredicted
/// about 0.3 times per free in callgrind's model). kfree's time is the
/// latency of this chain (BENCHMARKS.md): before a932829 the head's record
/// was read after the page's, and everything waited for both.
#[inline(always)]
pub(crate) fn find_slab<P: Platform>(
    pages: &PageAllocator<P>,
    addr: usize,
) -> Option<(&KmemCache<P>, slab::SlabHit)> {
    // No direct-map bounds check of its own: an address below the direct
    // map wraps to a huge pfn, one above it lands past the direct run or on
    // a hole record inside it (records cover whole sections), and
    // `frame_direct` or the owner check below refuses it.
    let pfn = Pfn((addr.wrapping_sub(pages.platform().direct_map_offset()) >> PAGE_SHIFT) as u64);
    // The direct run only: a pfn elsewhere (a sparse layout's other runs)
    // takes the full path, which finds its record through the table.
    let f = pages.frame_direct(pfn)?;
    let info = f.info();
    // Only a live slab's records carry the owner tag (its head's is
    // cleared, or changed for RCU, before it goes; its tails get their
    // compound labels back).
    if crate::page::frame::Frame::info_owner(info) != OWNER_SLAB {
        return None;
    }
    let c = f.private[0].load(Relaxed) as *const KmemCache<P>;
    if c.is_null() {
        return None;
    }
    let w = slab::Word(f.private[1].load(Relaxed) as u64);
    let tail = info & frame_flags::COMPOUND_TAIL != 0;
    let head = core::hint::select_unpredictable(tail, w.0 & 0xffff_ffff, pfn.0);
    // SAFETY: as in `find`: a live slab's record names its live cache.
    let cache = unsafe { &*c };
    Some((
        cache,
        slab::SlabHit {
            base: pages.page_address(Pfn(head)).0,
            objects: w.objects(),
            node: f.node() as u32,
        },
    ))
}

/// Linux's `might_sleep` for the cache-list operations (create, destroy):
/// in atomic context, the report (a `__might_resched` splat, counted as a
/// slab error) and the violation; None in process context.
pub(crate) fn sleep_in_atomic<P: Platform>(
    pages: &PageAllocator<P>,
    global: &SlabGlobal<P>,
    caller: &'static Location<'static>,
) -> Option<crate::context::ContextViolation> {
    let p = pages.platform();
    let context = p.context();
    if !context.is_atomic() {
        return None;
    }
    let v = crate::context::ContextViolation {
        context,
        cpu: p.cpu_id(),
        caller,
    };
    global.errors.fetch_add(1, Relaxed);
    p.warn(format_args!("{v}"));
    Some(v)
}

/// Classifies `addr` through the frame records. Never writes.
#[inline]
pub(crate) fn find<P: Platform>(
    pages: &PageAllocator<P>,
    addr: usize,
) -> Result<Found<'_, P>, SlabFreeError> {
    let Some(pfn) = pages.virt_to_page(VirtAddr(addr)) else {
        return Err(SlabFreeError::NotDirectMapped { addr });
    };
    let Some(f) = pages.frame(pfn) else {
        return Err(SlabFreeError::NotDirectMapped { addr });
    };
    let (head, hf) = if f.flags() & frame_flags::COMPOUND_TAIL != 0 {
        let h = Pfn(f.compound_head_pfn());
        match pages.frame(h) {
            Some(hf) => (h, hf),
            None => return Err(not_slab(pages, addr, pfn)),
        }
    } else {
        (pfn, f)
    };
    if hf.state() != FrameState::Allocated {
        return Err(not_slab(pages, addr, pfn));
    }
    match hf.owner() {
        OWNER_SLAB => {
            let c = hf.private[0].load(Relaxed) as *const KmemCache<P>;
            if c.is_null() {
                return Err(not_slab(pages, addr, pfn));
            }
            // SAFETY: a slab head frame's private[0] points at its cache,
            // which lives while the slab does (caches destroyed with live
            // objects are kept).
            let cache = unsafe { &*c };
            Ok(Found::Slab {
                cache,
                slab: SlabRef::at(pages, head.0 as u32, hf),
            })
        }
        OWNER_KMALLOC_LARGE => Ok(Found::Large {
            head,
            order: hf.order(),
            base: pages.page_address(head).0,
        }),
        _ => Err(not_slab(pages, addr, pfn)),
    }
}

#[cold]
fn not_slab<P: Platform>(pages: &PageAllocator<P>, addr: usize, pfn: Pfn) -> SlabFreeError {
    let head = pages.compound_head(pfn);
    let kind = match pages.frame(head).map(|f| (f.state(), f.owner())) {
        Some((FrameState::Allocated, OWNER_SLAB_RCU)) => PageKind::RcuSlab,
        Some((FrameState::Allocated, _)) => PageKind::Pages,
        Some((FrameState::Reserved | FrameState::Hole, _)) | None => PageKind::Reserved,
        Some(_) => {
            // A tail frame: look for the block that encloses it, as the page
            // allocator's own diagnosis does.
            let mut kind = PageKind::Free;
            for o in 1..=MAX_PAGE_ORDER {
                let h = Pfn(pfn.0 & !((1u64 << o) - 1));
                match pages.frame(h).map(|f| (f.state(), f.order())) {
                    Some((FrameState::Allocated, order)) if order >= o => {
                        kind = PageKind::Pages;
                        break;
                    }
                    Some((FrameState::Buddy | FrameState::Pcp, order)) if order >= o => break,
                    None => break,
                    _ => {}
                }
            }
            kind
        }
    };
    SlabFreeError::NotSlab { addr, pfn, kind }
}

/// Number of kmalloc size indices (0..=13; 1 and 2 are the 96 and 192 classes).
pub(crate) const KMALLOC_INDEXES: usize = kmalloc::KMALLOC_SHIFT_HIGH as usize + 1;

/// Counters of the page-backed (large) kmalloc path.
#[derive(Debug, Default)]
pub(crate) struct LargeStats {
    pub(crate) allocs: AtomicUsize,
    pub(crate) frees: AtomicUsize,
    pub(crate) pages: AtomicUsize,
}

/// The list of all caches, newest first (slabinfo order).
pub(crate) struct CacheList<P: Platform> {
    pub(crate) head: *mut KmemCache<P>,
    pub(crate) len: usize,
}

// SAFETY: the pointers are only followed under the list lock, and caches are
// Sync.
unsafe impl<P: Platform> Send for CacheList<P> {}

/// Slab-wide state, in a page of its own so that it never moves.
pub(crate) struct SlabGlobal<P: Platform> {
    pub(crate) kmem_cache: AtomicPtr<KmemCache<P>>,
    pub(crate) list: lock_api::Mutex<P::Lock, CacheList<P>>,
    pub(crate) config: SlabConfig,
    /// Every error reported (Linux's `slab_errors` in kunit tests).
    pub(crate) errors: AtomicUsize,
    seed: AtomicU64,
    /// A clock for tracking records (`jiffies`): one tick per tracked event.
    pub(crate) ticks: AtomicU64,
    pub(crate) large: LargeStats,
    pub(crate) rcu: rcu::RcuQueue,
    /// Held while a grace period ends (Linux's `rcu_barrier_mutex`): a
    /// caller of [`SlabGlobal::rcu_barrier`] returns only after every
    /// object and slab queued before it was freed, even those another
    /// thread's barrier took off the queue first.
    rcu_barrier: lock_api::Mutex<P::Lock, ()>,
    /// Where the shrinker's next round starts on the cache list (an index,
    /// taken modulo the list's length): rounds take turns over the caches.
    pub(crate) shrink_cursor: AtomicUsize,
    pfn: Pfn,
    order: u32,
}

impl<P: Platform> SlabGlobal<P> {
    /// A fresh per-cache secret (splitmix64 over the seed), never 0.
    pub(crate) fn next_random(&self) -> usize {
        let mut z = self
            .seed
            .fetch_add(0x9e37_79b9_7f4a_7c15, Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z as usize) | 1
    }

    /// Ends a grace period: frees everything queued for one, one caller at
    /// a time (see the `rcu_barrier` field).
    #[track_caller]
    pub(crate) fn rcu_barrier(&self, pages: &PageAllocator<P>) {
        let _one_at_a_time = self.rcu_barrier.lock();
        self.rcu.run_all(pages);
    }
}

/// Linux's slab allocator over one page allocator.
///
/// Built once with [`SlabAllocator::new`]; every method takes `&self` and
/// may be called from any thread. Dropping it gives every slab back to the
/// page allocator (objects still allocated become dangling: a kernel never
/// drops its slab allocator, tests do).
pub struct SlabAllocator<'a, P: Platform> {
    pages: &'a PageAllocator<P>,
    global: NonNull<SlabGlobal<P>>,
    /// The kmalloc caches by type and size index (copied here from the
    /// creation, read on every kmalloc).
    pub(crate) kmalloc: [[*const KmemCache<P>; KMALLOC_INDEXES]; kmalloc::NR_KMALLOC_TYPES],
}

// SAFETY: the globals and caches are Sync and live as long as the allocator.
unsafe impl<P: Platform> Send for SlabAllocator<'_, P> {}
unsafe impl<P: Platform> Sync for SlabAllocator<'_, P> {}

impl<'a, P: Platform> SlabAllocator<'a, P> {
    /// Builds the slab allocator: the globals, the bootstrap `kmem_cache`
    /// cache (its first slab carved by hand), then every kmalloc cache
    /// (normal, reclaimable, DMA, cgroup).
    #[track_caller]
    pub fn new(pages: &'a PageAllocator<P>, config: SlabConfig) -> Result<Self, AllocError> {
        let caller = Location::caller();
        let nr_cpus = pages.platform().nr_cpus().max(1);
        let gorder = get_order(core::mem::size_of::<SlabGlobal<P>>());
        let gpfn = pages.alloc_pages_node_at(NUMA_NO_NODE, GFP_KERNEL, gorder, caller)?;
        let gptr = pages.page_address(gpfn).as_ptr::<SlabGlobal<P>>();
        // SAFETY: a fresh block of at least size_of::<SlabGlobal> bytes,
        // page aligned, ours until freed in Drop.
        unsafe {
            gptr.write(SlabGlobal {
                kmem_cache: AtomicPtr::new(core::ptr::null_mut()),
                list: lock_api::Mutex::new(CacheList {
                    head: core::ptr::null_mut(),
                    len: 0,
                }),
                config,
                errors: AtomicUsize::new(0),
                seed: AtomicU64::new(config.seed),
                ticks: AtomicU64::new(0),
                large: LargeStats::default(),
                rcu: rcu::RcuQueue::new(),
                rcu_barrier: lock_api::Mutex::new(()),
                shrink_cursor: AtomicUsize::new(0),
                pfn: gpfn,
                order: gorder,
            });
        }
        // SAFETY: just initialised.
        let global = unsafe { NonNull::new_unchecked(gptr) };
        let mut me = SlabAllocator {
            pages,
            global,
            kmalloc: [[core::ptr::null(); KMALLOC_INDEXES]; kmalloc::NR_KMALLOC_TYPES],
        };
        me.bootstrap(nr_cpus, caller)?;
        me.create_kmalloc_caches(caller)?;
        Ok(me)
    }

    /// The page allocator underneath.
    pub fn pages(&self) -> &'a PageAllocator<P> {
        self.pages
    }

    #[inline(always)]
    pub(crate) fn global(&self) -> &SlabGlobal<P> {
        // SAFETY: the globals live until Drop.
        unsafe { self.global.as_ref() }
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &SlabConfig {
        &self.global().config
    }

    /// Every error reported so far, all caches (each report and each fix
    /// counts one, like the `slab_errors` of Linux's slub_kunit).
    pub fn errors(&self) -> usize {
        self.global().errors.load(Relaxed)
    }

    /// The bootstrap cache of caches.
    pub fn kmem_cache(&self) -> &KmemCache<P> {
        // SAFETY: set in bootstrap, lives until Drop.
        unsafe { &*self.global().kmem_cache.load(Relaxed) }
    }

    /// `Err(CacheDescriptor)` if `cache` is `kmem_cache`: `addr` is then a
    /// cache's descriptor, which the kmalloc-family entry points refuse.
    pub(crate) fn not_descriptor(
        &self,
        cache: &KmemCache<P>,
        addr: usize,
    ) -> Result<(), SlabFreeError> {
        if core::ptr::eq(cache, self.kmem_cache()) {
            Err(SlabFreeError::CacheDescriptor { addr })
        } else {
            Ok(())
        }
    }

    /// Creates the `kmem_cache` cache: computes its layout, takes its first
    /// slab from the page allocator and builds the cache structure in that
    /// slab's object 0.
    fn bootstrap(
        &mut self,
        nr_cpus: usize,
        caller: &'static Location<'static>,
    ) -> Result<(), AllocError> {
        let cfg = self.global().config;
        let size = cache_object_size::<P>(nr_cpus);
        let flags = SlabFlags::HWCACHE_ALIGN | SlabFlags::NO_MERGE;
        let layout = Layout::compute(size, 64, flags, false, &cfg, nr_cpus)
            .expect("kmem slab: the kmem_cache layout fits a slab");
        let random = if cfg.freelist_hardened {
            self.global().next_random()
        } else {
            0
        };
        let pfn = self.pages.alloc_pages_node_at(
            NUMA_NO_NODE,
            GFP_KERNEL | Gfp::COMP,
            layout.oo.order,
            caller,
        )?;
        let base = self.pages.page_address(pfn).0;
        let at = (base + layout.red_left_pad) as *mut KmemCache<P>;
        // SAFETY: object 0 of a fresh slab: valid, aligned to 64 (align is
        // 64 and the slab is page aligned), never moved or freed while the
        // allocator lives.
        unsafe {
            KmemCache::init_at(
                at,
                "kmem_cache",
                &layout,
                None,
                random,
                self.pages,
                self.global.as_ptr(),
                &cfg,
                nr_cpus,
            );
        }
        // No sheaves: kfree's fast path then never takes a cache descriptor,
        // and its slow path refuses them (only kmem_cache_destroy frees one).
        // SAFETY: just initialised, not shared yet.
        unsafe {
            (*at).sheaf_cap = 0;
            (*at).barn_max = 0;
        }
        // SAFETY: just initialised.
        let kc = unsafe { &*at };
        kc.init_new_slab(pfn, layout.oo.order, true);
        let slab = kc.slab_at(pfn.0 as u32);
        let node = slab.node();
        {
            let mut lists = kc.nodes[node].lists.lock();
            if slab.word().has_free() {
                kc.add_partial(node, &mut lists, slab, false);
            }
        }
        self.global().kmem_cache.store(at, Relaxed);
        self.link_cache(at);
        Ok(())
    }

    /// Adds a cache at the head of the cache list.
    fn link_cache(&self, c: *mut KmemCache<P>) {
        let mut list = self.global().list.lock();
        // SAFETY: caches on the list are alive; `c` is alive.
        unsafe {
            (*c).list_next.store(list.head, Relaxed);
            (*c).list_prev.store(core::ptr::null_mut(), Relaxed);
            if !list.head.is_null() {
                (*list.head).list_prev.store(c, Relaxed);
            }
        }
        list.head = c;
        list.len += 1;
    }

    /// Calls `f` on every cache, newest first, with the cache list locked.
    pub fn for_each_cache(&self, mut f: impl FnMut(&KmemCache<P>)) {
        let list = self.global().list.lock();
        let mut cur = list.head;
        while !cur.is_null() {
            // SAFETY: caches on the list are alive while the lock is held.
            let c = unsafe { &*cur };
            f(c);
            cur = c.list_next.load(Relaxed);
        }
    }

    /// Number of caches on the list.
    pub fn nr_caches(&self) -> usize {
        self.global().list.lock().len
    }

    /// Finds a cache by name (the newest of that name).
    pub fn find_cache(&self, name: &str) -> Option<&KmemCache<P>> {
        let mut found: *const KmemCache<P> = core::ptr::null();
        self.for_each_cache(|c| {
            if found.is_null() && c.name() == name {
                found = c;
            }
        });
        // SAFETY: caches on the list live until destroyed; the returned
        // borrow is tied to &self (kmalloc caches live as long as it, user
        // caches are only destroyed through their handle).
        (!found.is_null()).then(|| unsafe { &*found })
    }

    /// Linux's `kmem_cache_create`: a cache of `size`-byte objects aligned
    /// to `align` (0: the default, at least 8), with `flags` and an optional
    /// constructor run once per object when its slab is created.
    ///
    /// A cache compatible with an existing one (same size class, flags that
    /// agree, no constructor, no debugging) is merged into it, as in Linux:
    /// the handle then refers to the existing cache.
    #[track_caller]
    pub fn kmem_cache_create(
        &self,
        name: &str,
        size: usize,
        align: usize,
        flags: SlabFlags,
        ctor: Option<fn(NonNull<u8>)>,
    ) -> Result<KmemCacheRef<'_, P>, CacheCreateError> {
        let r = self.create_cache(name, size, align, flags, ctor, Location::caller());
        match r {
            Ok(c) => Ok(KmemCacheRef::new(c)),
            Err(e) => {
                self.pages.platform().warn(format_args!(
                    "{e} (cache {name}, at {})",
                    Location::caller()
                ));
                if flags.contains(SlabFlags::PANIC) {
                    panic!("kmem_cache_create: Failed to create slab '{name}'. Error {e}");
                }
                Err(e)
            }
        }
    }

    pub(crate) fn create_cache(
        &self,
        name: &str,
        size: usize,
        align: usize,
        flags: SlabFlags,
        ctor: Option<fn(NonNull<u8>)>,
        caller: &'static Location<'static>,
    ) -> Result<NonNull<KmemCache<P>>, CacheCreateError> {
        if name.is_empty() {
            return Err(CacheCreateError::BadName);
        }
        if size == 0 || size > KMALLOC_MAX_SIZE {
            return Err(CacheCreateError::BadSize { size });
        }
        if align != 0 && !align.is_power_of_two() {
            return Err(CacheCreateError::BadAlign { align });
        }
        if flags.contains(SlabFlags::OBJECT_POISON) {
            return Err(CacheCreateError::InternalFlags {
                flags: SlabFlags::OBJECT_POISON,
            });
        }
        if let Some(v) = sleep_in_atomic(self.pages, self.global(), caller) {
            return Err(CacheCreateError::InAtomic(v));
        }
        let g = self.global();
        let cfg = g.config;
        let mut flags = flags;
        if !flags.contains(SlabFlags::NO_USER_FLAGS) {
            flags |= cfg.slab_debug.flags_for(name);
        }
        let nr_cpus = self.kmem_cache().nr_cpus;
        if let Some(c) = self.find_mergeable(size, align, flags, ctor) {
            return Ok(c);
        }
        let layout = Layout::compute(size, align, flags, ctor.is_some(), &cfg, nr_cpus)
            .ok_or(CacheCreateError::TooLarge { size })?;
        let random = if cfg.freelist_hardened && !flags.contains(SlabFlags::NO_FREELIST_HARDENING) {
            g.next_random()
        } else {
            0
        };
        let obj = self
            .kmem_cache()
            .alloc_at(GFP_KERNEL, NUMA_NO_NODE, caller)
            .map_err(CacheCreateError::NoMemory)?;
        let at = obj.as_ptr() as *mut KmemCache<P>;
        // SAFETY: a fresh kmem_cache object: cache_object_size bytes,
        // aligned to 64, never moved; freed only by destroy.
        unsafe {
            KmemCache::init_at(
                at,
                name,
                &layout,
                ctor,
                random,
                self.pages,
                self.global.as_ptr(),
                &cfg,
                nr_cpus,
            );
        }
        self.link_cache(at);
        // SAFETY: at is not null.
        Ok(unsafe { NonNull::new_unchecked(at) })
    }

    /// Linux's `find_mergeable`.
    fn find_mergeable(
        &self,
        size: usize,
        align: usize,
        flags: SlabFlags,
        ctor: Option<fn(NonNull<u8>)>,
    ) -> Option<NonNull<KmemCache<P>>> {
        if !self.global().config.merge || ctor.is_some() || flags.intersects(SlabFlags::NEVER_MERGE)
        {
            return None;
        }
        let size8 = (size + 7) & !7;
        let align = cache::calculate_alignment(flags, align, size8);
        let size_al = (size8 + align - 1) & !(align - 1);
        let list = self.global().list.lock();
        // Oldest first, as Linux walks slab_caches in reverse.
        let mut cur = list.head;
        let mut last = core::ptr::null_mut();
        while !cur.is_null() {
            last = cur;
            // SAFETY: under the list lock.
            cur = unsafe { (*cur).list_next.load(Relaxed) };
        }
        let mut cur = last;
        while !cur.is_null() {
            // SAFETY: under the list lock.
            let s = unsafe { &*cur };
            let ok = !s.flags.intersects(SlabFlags::NEVER_MERGE)
                && s.ctor.is_none()
                && !core::ptr::eq(s, self.kmem_cache())
                && size_al <= s.size
                && (flags & SlabFlags::MERGE_SAME) == (s.flags & SlabFlags::MERGE_SAME)
                && s.size & (align - 1) == 0
                && s.size - size_al < 8;
            // Only a cache nobody is destroying: a destroy drops the count
            // to 0 without the list lock, and then goes on to free the cache
            // (Linux holds slab_mutex for both; here the count is only
            // raised while it is not 0).
            if ok
                && s.refcount
                    .fetch_update(Relaxed, Relaxed, |r| (r > 0).then_some(r + 1))
                    .is_ok()
            {
                // `__kmem_cache_alias`: the merged cache's objects are as
                // large as the largest request, so that kmem_cache_zalloc
                // clears all of it and kmem_cache_size tells it. The stride
                // already holds it (size_al <= s.size).
                s.grow_object(size);
                return NonNull::new(cur);
            }
            cur = s.list_prev.load(Relaxed);
        }
        None
    }

    /// Removes a cache from the list (cache list lock taken here).
    pub(crate) fn unlink_cache(global: &SlabGlobal<P>, c: &KmemCache<P>) {
        let mut list = global.list.lock();
        let next = c.list_next.load(Relaxed);
        let prev = c.list_prev.load(Relaxed);
        // SAFETY: neighbours on the list are alive under the lock.
        unsafe {
            if prev.is_null() {
                list.head = next;
            } else {
                (*prev).list_next.store(next, Relaxed);
            }
            if !next.is_null() {
                (*next).list_prev.store(prev, Relaxed);
            }
        }
        c.list_next.store(core::ptr::null_mut(), Relaxed);
        c.list_prev.store(core::ptr::null_mut(), Relaxed);
        list.len -= 1;
    }

    /// Linux's `kmem_cache_shrink` for every cache: flushes per-CPU slabs
    /// and gives empty slabs back. Returns slabs freed.
    pub fn shrink_all(&self) -> usize {
        let mut freed = 0;
        // Shrinking takes CPU flags and node locks, which rank below the
        // cache list lock: safe to do while walking the list.
        self.for_each_cache(|c| freed += c.shrink());
        freed
    }

    /// Reports an error found outside any cache (counts it globally).
    #[cold]
    pub(crate) fn report(&self, e: &SlabFreeError, caller: &'static Location<'static>) {
        report_free_error(self.pages, self.global(), None, e, caller);
    }
}

/// Reports a refused free: one warning, error counters bumped.
#[cold]
pub(crate) fn report_free_error<P: Platform>(
    pages: &PageAllocator<P>,
    global: &SlabGlobal<P>,
    cache: Option<&KmemCache<P>>,
    e: &SlabFreeError,
    caller: &'static Location<'static>,
) {
    global.errors.fetch_add(1, Relaxed);
    if let Some(c) = cache {
        c.errors.fetch_add(1, Relaxed);
    }
    pages
        .platform()
        .warn(format_args!("{e} (freed at {caller})"));
}

impl<P: Platform> Drop for SlabAllocator<'_, P> {
    fn drop(&mut self) {
        let pages = self.pages;
        let global = self.global();
        // Pending RCU frees first: objects and slabs go back where they
        // belong; the second grace period takes the slabs the first emptied.
        global.rcu_barrier(pages);
        global.rcu_barrier(pages);
        let kc = global.kmem_cache.load(Relaxed);
        // Tear every cache down but kmem_cache, then kmem_cache.
        loop {
            let victim = {
                let list = global.list.lock();
                let mut cur = list.head;
                while !cur.is_null() && cur == kc {
                    // SAFETY: under the list lock.
                    cur = unsafe { (*cur).list_next.load(Relaxed) };
                }
                cur
            };
            if victim.is_null() {
                break;
            }
            // SAFETY: on the list, so alive; nobody else can use it (the
            // allocator is being dropped and handles borrow it).
            let c = unsafe { &*victim };
            Self::unlink_cache(global, c);
            c.teardown();
        }
        if !kc.is_null() {
            // SAFETY: alive until here.
            let c = unsafe { &*kc };
            Self::unlink_cache(global, c);
            c.teardown();
        }
        global.rcu_barrier(pages);
        let (pfn, order) = (global.pfn, global.order);
        let _ = pages.free_pages(pfn, order);
    }
}

/// The allocated mark of a cache whose fresh secret is `r`: what the free
/// pointer slot of an allocated object decodes to, so that the slot of a
/// live object never decodes to NULL or to an object of its slab, the two
/// values a free object's slot can hold. A secret of its own, apart from the
/// free pointers' (the slot of a fresh, uninitialised object is readable
/// by its owner: a fixed marker would hand out the free-pointer secret).
/// Three bits are fixed: bit 0 (never word aligned) and the top two, `10`
/// (non-canonical under 4- and 5-level paging, so never a direct-map
/// address). A caller that overwrites part of the slot (a field smaller
/// than a word) leaves the low or the top byte of the mark and so cannot
/// make it plausible either.
pub(crate) const fn allocated_mark(r: usize) -> usize {
    (r & !FP_MARK_FIXED_MASK) | FP_MARK_FIXED
}

/// The bits [`allocated_mark`] fixes, and their values.
const FP_MARK_FIXED_MASK: usize = 0xc000_0000_0000_0001;
const FP_MARK_FIXED: usize = 0x8000_0000_0000_0001;
