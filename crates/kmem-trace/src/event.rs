//! Typed allocation events, one variant per tracepoint, parsed from their `TP_printk` text.
//!
//! Formats as Linux 6.18 prints them (`include/trace/events/kmem.h` and `vmalloc.h`):
//!
//! ```text
//! kmalloc:                call_site=%pS ptr=%p bytes_req=%zu bytes_alloc=%zu gfp_flags=%s node=%d accounted=%s
//! kmem_cache_alloc:       call_site=%pS ptr=%p name=%s bytes_req=%zu bytes_alloc=%zu gfp_flags=%s node=%d accounted=%s
//! kfree:                  call_site=%pS ptr=%p
//! kmem_cache_free:        call_site=%pS ptr=%p name=%s
//! mm_page_alloc:          page=%p pfn=0x%lx order=%d migratetype=%d gfp_flags=%s
//! mm_page_free:           page=%p pfn=0x%lx order=%d
//! mm_page_free_batched:   page=%p pfn=0x%lx order=0
//! mm_page_alloc_zone_locked: page=%p pfn=0x%lx order=%u migratetype=%d percpu_refill=%d
//! mm_page_pcpu_drain:     page=%p pfn=0x%lx order=%d migratetype=%d
//! alloc_vmap_area:        va_start: %lu size=%lu align=%lu vstart=0x%lx vend=0x%lx failed=%d
//! free_vmap_area_noflush: va_start=0x%lx nr_lazy=%lu nr_lazy_max=%lu
//! purge_vmap_area_lazy:   start=0x%lx end=0x%lx num_purged=%u
//! ```
//!
//! Note `alloc_vmap_area`'s `va_start: ` (a colon and a *decimal* address), unlike
//! `free_vmap_area_noflush`'s `va_start=0x`. Fields are read in this exact order;
//! anything else is a malformed line. Strings (call sites, cache names) borrow
//! from the line; GFP masks go through the `gfp` module's memo of `kmem`'s parser.

use kmem::{Gfp, MigrateType};

use crate::cursor::Cursor;
use crate::error::{ErrorKind, Fail};
use crate::gfp::GfpCache;

/// The event types this crate parses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// `kmalloc`
    Kmalloc,
    /// `kfree`
    Kfree,
    /// `kmem_cache_alloc`
    KmemCacheAlloc,
    /// `kmem_cache_free`
    KmemCacheFree,
    /// `mm_page_alloc`
    MmPageAlloc,
    /// `mm_page_free`
    MmPageFree,
    /// `mm_page_free_batched`
    MmPageFreeBatched,
    /// `mm_page_alloc_zone_locked`
    MmPageAllocZoneLocked,
    /// `mm_page_pcpu_drain`
    MmPagePcpuDrain,
    /// `alloc_vmap_area`
    AllocVmapArea,
    /// `free_vmap_area_noflush`
    FreeVmapAreaNoflush,
    /// `purge_vmap_area_lazy`
    PurgeVmapAreaLazy,
}

impl EventKind {
    /// Number of kinds (the length of per-kind counter arrays).
    pub const COUNT: usize = 12;

    /// Every kind, in index order.
    pub const ALL: [EventKind; Self::COUNT] = [
        EventKind::Kmalloc,
        EventKind::Kfree,
        EventKind::KmemCacheAlloc,
        EventKind::KmemCacheFree,
        EventKind::MmPageAlloc,
        EventKind::MmPageFree,
        EventKind::MmPageFreeBatched,
        EventKind::MmPageAllocZoneLocked,
        EventKind::MmPagePcpuDrain,
        EventKind::AllocVmapArea,
        EventKind::FreeVmapAreaNoflush,
        EventKind::PurgeVmapAreaLazy,
    ];

    /// Index into per-kind arrays (`0..COUNT`).
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The tracepoint's name, as in the trace.
    pub const fn name(self) -> &'static str {
        match self {
            EventKind::Kmalloc => "kmalloc",
            EventKind::Kfree => "kfree",
            EventKind::KmemCacheAlloc => "kmem_cache_alloc",
            EventKind::KmemCacheFree => "kmem_cache_free",
            EventKind::MmPageAlloc => "mm_page_alloc",
            EventKind::MmPageFree => "mm_page_free",
            EventKind::MmPageFreeBatched => "mm_page_free_batched",
            EventKind::MmPageAllocZoneLocked => "mm_page_alloc_zone_locked",
            EventKind::MmPagePcpuDrain => "mm_page_pcpu_drain",
            EventKind::AllocVmapArea => "alloc_vmap_area",
            EventKind::FreeVmapAreaNoflush => "free_vmap_area_noflush",
            EventKind::PurgeVmapAreaLazy => "purge_vmap_area_lazy",
        }
    }

    /// The kind named `name`, if this crate parses it.
    #[inline]
    pub fn from_name(name: &[u8]) -> Option<EventKind> {
        Some(match name {
            b"kmalloc" => EventKind::Kmalloc,
            b"kfree" => EventKind::Kfree,
            b"kmem_cache_alloc" => EventKind::KmemCacheAlloc,
            b"kmem_cache_free" => EventKind::KmemCacheFree,
            b"mm_page_alloc" => EventKind::MmPageAlloc,
            b"mm_page_free" => EventKind::MmPageFree,
            b"mm_page_free_batched" => EventKind::MmPageFreeBatched,
            b"mm_page_alloc_zone_locked" => EventKind::MmPageAllocZoneLocked,
            b"mm_page_pcpu_drain" => EventKind::MmPagePcpuDrain,
            b"alloc_vmap_area" => EventKind::AllocVmapArea,
            b"free_vmap_area_noflush" => EventKind::FreeVmapAreaNoflush,
            b"purge_vmap_area_lazy" => EventKind::PurgeVmapAreaLazy,
            _ => return None,
        })
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A call site as `%pS` prints it: `symbol+0xoffset/0xsize`, borrowed from the line.
///
/// The whole text identifies the site (perf groups by it); [`symbol`](Self::symbol)
/// groups by function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallSite<'a>(pub &'a str);

impl<'a> CallSite<'a> {
    /// The text as printed, e.g. `alloc_fdtable+0x55/0x140`.
    pub const fn as_str(&self) -> &'a str {
        self.0
    }

    /// The function, e.g. `alloc_fdtable` (the whole text if it has no `+`).
    pub fn symbol(&self) -> &'a str {
        self.0.split_once('+').map_or(self.0, |(s, _)| s)
    }

    /// The offset into the function (`0x55`), if printed.
    pub fn offset(&self) -> Option<u64> {
        let (_, rest) = self.0.split_once('+')?;
        let off = rest.split_once('/').map_or(rest, |(o, _)| o);
        u64::from_str_radix(off.strip_prefix("0x")?, 16).ok()
    }

    /// The function's size (`0x140`), if printed.
    pub fn function_size(&self) -> Option<u64> {
        let (_, size) = self.0.split_once('/')?;
        let size = size.split_once(' ').map_or(size, |(s, _)| s);
        u64::from_str_radix(size.strip_prefix("0x")?, 16).ok()
    }
}

impl std::fmt::Display for CallSite<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// `kmalloc`: an object from the kmalloc caches (or a large kmalloc from the page allocator).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Kmalloc<'a> {
    /// Who called `kmalloc`.
    pub call_site: CallSite<'a>,
    /// The object's address (0 on failure).
    pub ptr: u64,
    /// Size asked for.
    pub bytes_req: u64,
    /// Size of the object handed out (the kmalloc class size).
    pub bytes_alloc: u64,
    /// GFP mask.
    pub gfp: Gfp,
    /// NUMA node asked for; -1 (`NUMA_NO_NODE`) for any.
    pub node: i32,
    /// Charged to a memory cgroup.
    pub accounted: bool,
}

/// `kmem_cache_alloc`: an object from a named cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KmemCacheAlloc<'a> {
    /// Who called `kmem_cache_alloc`.
    pub call_site: CallSite<'a>,
    /// The object's address (0 on failure).
    pub ptr: u64,
    /// The cache's name (`names_cache`, `skbuff_head_cache`, ...).
    pub name: &'a str,
    /// The cache's object size.
    pub bytes_req: u64,
    /// The cache's object size including metadata and padding.
    pub bytes_alloc: u64,
    /// GFP mask.
    pub gfp: Gfp,
    /// NUMA node asked for; -1 for any.
    pub node: i32,
    /// Charged to a memory cgroup.
    pub accounted: bool,
}

/// `kfree`: an object given back (0 for `kfree(NULL)`, which ftrace records too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Kfree<'a> {
    /// Who called `kfree`.
    pub call_site: CallSite<'a>,
    /// The object's address.
    pub ptr: u64,
}

/// `kmem_cache_free`: an object given back to its cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KmemCacheFree<'a> {
    /// Who called `kmem_cache_free`.
    pub call_site: CallSite<'a>,
    /// The object's address.
    pub ptr: u64,
    /// The cache's name.
    pub name: &'a str,
}

/// `mm_page_alloc`: pages from the buddy allocator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PageAlloc {
    /// The `struct page` address; 0 when the allocation failed.
    pub page: u64,
    /// The first page frame number (0 when the allocation failed).
    pub pfn: u64,
    /// log2 of the number of pages.
    pub order: u32,
    /// Migrate type as Linux numbers it; see [`migrate_type`].
    pub migratetype: i32,
    /// GFP mask.
    pub gfp: Gfp,
}

impl PageAlloc {
    /// True if the allocation failed (ftrace prints a NULL page).
    pub const fn failed(&self) -> bool {
        self.page == 0
    }
}

/// `mm_page_free` and `mm_page_free_batched`: pages given back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PageFree {
    /// The `struct page` address.
    pub page: u64,
    /// The first page frame number.
    pub pfn: u64,
    /// log2 of the number of pages (always 0 for `mm_page_free_batched`).
    pub order: u32,
}

/// `mm_page_alloc_zone_locked`: pages taken from a zone's free lists under the zone lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PageAllocZoneLocked {
    /// The `struct page` address.
    pub page: u64,
    /// The first page frame number.
    pub pfn: u64,
    /// log2 of the number of pages.
    pub order: u32,
    /// Migrate type as Linux numbers it.
    pub migratetype: i32,
    /// Taken to refill a per-CPU list (rather than for the caller directly).
    pub percpu_refill: bool,
}

/// `mm_page_pcpu_drain`: pages moved from a per-CPU list back to the zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PagePcpuDrain {
    /// The `struct page` address.
    pub page: u64,
    /// The first page frame number.
    pub pfn: u64,
    /// log2 of the number of pages.
    pub order: u32,
    /// Migrate type as Linux numbers it.
    pub migratetype: i32,
}

/// `alloc_vmap_area`: a range of vmalloc address space reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AllocVmapArea {
    /// Start of the range (printed in decimal); equals `vend` on failure.
    pub va_start: u64,
    /// Bytes asked for (guard page included).
    pub size: u64,
    /// Alignment asked for.
    pub align: u64,
    /// Lowest acceptable address.
    pub vstart: u64,
    /// Highest acceptable address.
    pub vend: u64,
    /// No range was found.
    pub failed: bool,
}

/// `free_vmap_area_noflush`: a vmap area put on the lazy-free list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FreeVmapAreaNoflush {
    /// Start of the area.
    pub va_start: u64,
    /// Lazily freed pages pending, after this one.
    pub nr_lazy: u64,
    /// The threshold that triggers a purge.
    pub nr_lazy_max: u64,
}

/// `purge_vmap_area_lazy`: lazily freed areas purged (TLB flushed, ranges released).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PurgeVmapAreaLazy {
    /// Start of the flushed range.
    pub start: u64,
    /// End of the flushed range.
    pub end: u64,
    /// Areas purged (printed as `num_purged=`).
    pub npurged: u32,
}

/// One allocation event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event<'a> {
    /// `kmalloc`
    Kmalloc(Kmalloc<'a>),
    /// `kfree`
    Kfree(Kfree<'a>),
    /// `kmem_cache_alloc`
    KmemCacheAlloc(KmemCacheAlloc<'a>),
    /// `kmem_cache_free`
    KmemCacheFree(KmemCacheFree<'a>),
    /// `mm_page_alloc`
    MmPageAlloc(PageAlloc),
    /// `mm_page_free`
    MmPageFree(PageFree),
    /// `mm_page_free_batched`
    MmPageFreeBatched(PageFree),
    /// `mm_page_alloc_zone_locked`
    MmPageAllocZoneLocked(PageAllocZoneLocked),
    /// `mm_page_pcpu_drain`
    MmPagePcpuDrain(PagePcpuDrain),
    /// `alloc_vmap_area`
    AllocVmapArea(AllocVmapArea),
    /// `free_vmap_area_noflush`
    FreeVmapAreaNoflush(FreeVmapAreaNoflush),
    /// `purge_vmap_area_lazy`
    PurgeVmapAreaLazy(PurgeVmapAreaLazy),
}

impl Event<'_> {
    /// Which tracepoint this is.
    pub const fn kind(&self) -> EventKind {
        match self {
            Event::Kmalloc(_) => EventKind::Kmalloc,
            Event::Kfree(_) => EventKind::Kfree,
            Event::KmemCacheAlloc(_) => EventKind::KmemCacheAlloc,
            Event::KmemCacheFree(_) => EventKind::KmemCacheFree,
            Event::MmPageAlloc(_) => EventKind::MmPageAlloc,
            Event::MmPageFree(_) => EventKind::MmPageFree,
            Event::MmPageFreeBatched(_) => EventKind::MmPageFreeBatched,
            Event::MmPageAllocZoneLocked(_) => EventKind::MmPageAllocZoneLocked,
            Event::MmPagePcpuDrain(_) => EventKind::MmPagePcpuDrain,
            Event::AllocVmapArea(_) => EventKind::AllocVmapArea,
            Event::FreeVmapAreaNoflush(_) => EventKind::FreeVmapAreaNoflush,
            Event::PurgeVmapAreaLazy(_) => EventKind::PurgeVmapAreaLazy,
        }
    }

    /// The GFP mask, for the events that carry one.
    pub const fn gfp(&self) -> Option<Gfp> {
        match self {
            Event::Kmalloc(e) => Some(e.gfp),
            Event::KmemCacheAlloc(e) => Some(e.gfp),
            Event::MmPageAlloc(e) => Some(e.gfp),
            _ => None,
        }
    }

    /// The call site, for the slab events.
    pub const fn call_site(&self) -> Option<CallSite<'_>> {
        match self {
            Event::Kmalloc(e) => Some(e.call_site),
            Event::Kfree(e) => Some(e.call_site),
            Event::KmemCacheAlloc(e) => Some(e.call_site),
            Event::KmemCacheFree(e) => Some(e.call_site),
            _ => None,
        }
    }
}

/// Linux's migrate type numbers 0-3 as a [`MigrateType`]; `None` for others
/// (4 and 5 are CMA or isolate depending on the kernel's configuration).
pub const fn migrate_type(migratetype: i32) -> Option<MigrateType> {
    match migratetype {
        0 => Some(MigrateType::Unmovable),
        1 => Some(MigrateType::Movable),
        2 => Some(MigrateType::Reclaimable),
        3 => Some(MigrateType::HighAtomic),
        _ => None,
    }
}

const CALL_SITE: &str = "call site after `call_site=`";
const PTR: &str = "hex pointer after `ptr=`";
const NAME: &str = "cache name after `name=`";
const BYTES_REQ: &str = "decimal after `bytes_req=`";
const BYTES_ALLOC: &str = "decimal after `bytes_alloc=`";
const GFP: &str = "GFP flags after `gfp_flags=` (e.g. `GFP_KERNEL|__GFP_ZERO`)";
const NODE: &str = "decimal after `node=`";
const ACCOUNTED: &str = "`true` or `false` after `accounted=`";
const PAGE: &str = "hex pointer after `page=`";
const PFN: &str = "`0x` hex after `pfn=`";
const ORDER: &str = "decimal after `order=`";
const MIGRATETYPE: &str = "decimal after `migratetype=`";

/// Parses the fields of an event of kind `kind` (the cursor is just after `NAME: `).
#[inline]
pub(crate) fn parse_fields<'a>(
    kind: EventKind,
    c: &mut Cursor<'a>,
    gfp: &mut GfpCache,
) -> Result<Event<'a>, Fail> {
    let ev = match kind {
        EventKind::Kmalloc => {
            let call_site = call_site(c)?;
            c.lit(b" ptr=", "` ptr=`")?;
            let ptr = c.pointer(PTR)?;
            c.lit(b" bytes_req=", "` bytes_req=`")?;
            let bytes_req = c.dec(BYTES_REQ)?;
            c.lit(b" bytes_alloc=", "` bytes_alloc=`")?;
            let bytes_alloc = c.dec(BYTES_ALLOC)?;
            let gfp = gfp_field(c, gfp)?;
            c.lit(b" node=", "` node=`")?;
            let node = c.dec_i32(NODE)?;
            c.lit(b" accounted=", "` accounted=`")?;
            let accounted = c.boolean(ACCOUNTED)?;
            Event::Kmalloc(Kmalloc {
                call_site,
                ptr,
                bytes_req,
                bytes_alloc,
                gfp,
                node,
                accounted,
            })
        }
        EventKind::KmemCacheAlloc => {
            let call_site = call_site(c)?;
            c.lit(b" ptr=", "` ptr=`")?;
            let ptr = c.pointer(PTR)?;
            c.lit(b" name=", "` name=`")?;
            let name = c.str_word(NAME)?;
            c.lit(b" bytes_req=", "` bytes_req=`")?;
            let bytes_req = c.dec(BYTES_REQ)?;
            c.lit(b" bytes_alloc=", "` bytes_alloc=`")?;
            let bytes_alloc = c.dec(BYTES_ALLOC)?;
            let gfp = gfp_field(c, gfp)?;
            c.lit(b" node=", "` node=`")?;
            let node = c.dec_i32(NODE)?;
            c.lit(b" accounted=", "` accounted=`")?;
            let accounted = c.boolean(ACCOUNTED)?;
            Event::KmemCacheAlloc(KmemCacheAlloc {
                call_site,
                ptr,
                name,
                bytes_req,
                bytes_alloc,
                gfp,
                node,
                accounted,
            })
        }
        EventKind::Kfree => {
            let call_site = call_site(c)?;
            c.lit(b" ptr=", "` ptr=`")?;
            let ptr = c.pointer(PTR)?;
            Event::Kfree(Kfree { call_site, ptr })
        }
        EventKind::KmemCacheFree => {
            let call_site = call_site(c)?;
            c.lit(b" ptr=", "` ptr=`")?;
            let ptr = c.pointer(PTR)?;
            c.lit(b" name=", "` name=`")?;
            let name = c.str_word(NAME)?;
            Event::KmemCacheFree(KmemCacheFree {
                call_site,
                ptr,
                name,
            })
        }
        EventKind::MmPageAlloc => {
            let (page, pfn, order) = page_pfn_order(c)?;
            c.lit(b" migratetype=", "` migratetype=`")?;
            let migratetype = c.dec_i32(MIGRATETYPE)?;
            let gfp = gfp_field(c, gfp)?;
            Event::MmPageAlloc(PageAlloc {
                page,
                pfn,
                order,
                migratetype,
                gfp,
            })
        }
        EventKind::MmPageFree => {
            let (page, pfn, order) = page_pfn_order(c)?;
            Event::MmPageFree(PageFree { page, pfn, order })
        }
        EventKind::MmPageFreeBatched => {
            let (page, pfn, order) = page_pfn_order(c)?;
            Event::MmPageFreeBatched(PageFree { page, pfn, order })
        }
        EventKind::MmPageAllocZoneLocked => {
            let (page, pfn, order) = page_pfn_order(c)?;
            c.lit(b" migratetype=", "` migratetype=`")?;
            let migratetype = c.dec_i32(MIGRATETYPE)?;
            c.lit(b" percpu_refill=", "` percpu_refill=`")?;
            let percpu_refill = c.int_flag("decimal after `percpu_refill=`")?;
            Event::MmPageAllocZoneLocked(PageAllocZoneLocked {
                page,
                pfn,
                order,
                migratetype,
                percpu_refill,
            })
        }
        EventKind::MmPagePcpuDrain => {
            let (page, pfn, order) = page_pfn_order(c)?;
            c.lit(b" migratetype=", "` migratetype=`")?;
            let migratetype = c.dec_i32(MIGRATETYPE)?;
            Event::MmPagePcpuDrain(PagePcpuDrain {
                page,
                pfn,
                order,
                migratetype,
            })
        }
        EventKind::AllocVmapArea => {
            c.lit(b"va_start: ", "`va_start: `")?;
            let va_start = c.dec("decimal after `va_start: `")?;
            c.lit(b" size=", "` size=`")?;
            let size = c.dec("decimal after `size=`")?;
            c.lit(b" align=", "` align=`")?;
            let align = c.dec("decimal after `align=`")?;
            c.lit(b" vstart=", "` vstart=`")?;
            let vstart = c.hex0x("`0x` hex after `vstart=`")?;
            c.lit(b" vend=", "` vend=`")?;
            let vend = c.hex0x("`0x` hex after `vend=`")?;
            c.lit(b" failed=", "` failed=`")?;
            let failed = c.int_flag("decimal after `failed=`")?;
            Event::AllocVmapArea(AllocVmapArea {
                va_start,
                size,
                align,
                vstart,
                vend,
                failed,
            })
        }
        EventKind::FreeVmapAreaNoflush => {
            c.lit(b"va_start=", "`va_start=`")?;
            let va_start = c.hex0x("`0x` hex after `va_start=`")?;
            c.lit(b" nr_lazy=", "` nr_lazy=`")?;
            let nr_lazy = c.dec("decimal after `nr_lazy=`")?;
            c.lit(b" nr_lazy_max=", "` nr_lazy_max=`")?;
            let nr_lazy_max = c.dec("decimal after `nr_lazy_max=`")?;
            Event::FreeVmapAreaNoflush(FreeVmapAreaNoflush {
                va_start,
                nr_lazy,
                nr_lazy_max,
            })
        }
        EventKind::PurgeVmapAreaLazy => {
            c.lit(b"start=", "`start=`")?;
            let start = c.hex0x("`0x` hex after `start=`")?;
            c.lit(b" end=", "` end=`")?;
            let end = c.hex0x("`0x` hex after `end=`")?;
            c.lit(b" num_purged=", "` num_purged=`")?;
            let npurged = c.dec_u32("decimal after `num_purged=`")?;
            Event::PurgeVmapAreaLazy(PurgeVmapAreaLazy {
                start,
                end,
                npurged,
            })
        }
    };
    c.end()?;
    Ok(ev)
}

#[inline]
fn call_site<'a>(c: &mut Cursor<'a>) -> Result<CallSite<'a>, Fail> {
    c.lit(b"call_site=", "`call_site=`")?;
    Ok(CallSite(c.str_word(CALL_SITE)?))
}

#[inline]
fn gfp_field(c: &mut Cursor<'_>, cache: &mut GfpCache) -> Result<Gfp, Fail> {
    c.lit(b" gfp_flags=", "` gfp_flags=`")?;
    let at = c.pos();
    let w = c.word(GFP)?;
    cache.parse(w).map_err(|e| {
        let col = at + e.map_or(0, |e| e.offset());
        Fail::new(col, ErrorKind::BadGfp, GFP)
    })
}

#[inline]
fn page_pfn_order(c: &mut Cursor<'_>) -> Result<(u64, u64, u32), Fail> {
    c.lit(b"page=", "`page=`")?;
    let page = c.pointer(PAGE)?;
    c.lit(b" pfn=", "` pfn=`")?;
    let pfn = c.hex0x(PFN)?;
    c.lit(b" order=", "` order=`")?;
    let order = c.dec_u32(ORDER)?;
    Ok((page, pfn, order))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(kind: EventKind, fields: &str) -> Result<Event<'_>, Fail> {
        let mut cache = GfpCache::new();
        parse_fields(kind, &mut Cursor::new(fields.as_bytes(), 0), &mut cache)
    }

    #[test]
    fn names_round_trip() {
        for (i, k) in EventKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
            assert_eq!(EventKind::from_name(k.name().as_bytes()), Some(*k));
        }
        assert_eq!(EventKind::from_name(b"kmalloc_node"), None);
    }

    #[test]
    fn call_site_parts() {
        let c = CallSite("getname_flags.part.0+0x24/0x1f0");
        assert_eq!(c.symbol(), "getname_flags.part.0");
        assert_eq!(c.offset(), Some(0x24));
        assert_eq!(c.function_size(), Some(0x1f0));
        let c = CallSite("0xffffffffc0001234");
        assert_eq!((c.symbol(), c.offset()), ("0xffffffffc0001234", None));
    }

    #[test]
    fn kmalloc_fields() {
        let e = parse(EventKind::Kmalloc, "call_site=lsm_blob_alloc+0x3b/0x60 ptr=ffff888100873500 bytes_req=11 bytes_alloc=16 gfp_flags=GFP_KERNEL_ACCOUNT|__GFP_ZERO node=-1 accounted=true").unwrap();
        let Event::Kmalloc(k) = e else { panic!() };
        assert_eq!(k.call_site.as_str(), "lsm_blob_alloc+0x3b/0x60");
        assert_eq!(k.ptr, 0xffff888100873500);
        assert_eq!(
            (k.bytes_req, k.bytes_alloc, k.node, k.accounted),
            (11, 16, -1, true)
        );
        assert_eq!(k.gfp, "GFP_KERNEL_ACCOUNT|__GFP_ZERO".parse().unwrap());
        assert_eq!(e.gfp(), Some(k.gfp));
    }

    #[test]
    fn vmalloc_fields() {
        let e = parse(EventKind::AllocVmapArea, "va_start: 18446683600644456448 size=20480 align=16384 vstart=0xffffc90000000000 vend=0xffffe8ffffffffff failed=0").unwrap();
        assert_eq!(
            e,
            Event::AllocVmapArea(AllocVmapArea {
                va_start: 0xffffc900046fc000,
                size: 20480,
                align: 16384,
                vstart: 0xffffc90000000000,
                vend: 0xffffe8ffffffffff,
                failed: false
            })
        );
        let e = parse(
            EventKind::PurgeVmapAreaLazy,
            "start=0xffffc90000000000 end=0xffffc90000400000 num_purged=7",
        )
        .unwrap();
        let Event::PurgeVmapAreaLazy(p) = e else {
            panic!()
        };
        assert_eq!(p.npurged, 7);
    }

    #[test]
    fn field_errors() {
        let f = parse(EventKind::Kfree, "call_site=x+0x1/0x2 ptr=").unwrap_err();
        assert_eq!(f.kind, ErrorKind::Truncated);
        let f = parse(EventKind::Kfree, "call_site=x+0x1/0x2 ptr=1 extra").unwrap_err();
        assert_eq!((f.kind, f.col), (ErrorKind::UnexpectedText, 25));
        let f = parse(
            EventKind::MmPageAlloc,
            "page=1 pfn=0x1 order=0 migratetype=0 gfp_flags=GFP_KERNEL|__GFP_BOGUS",
        )
        .unwrap_err();
        assert_eq!((f.kind, f.col), (ErrorKind::BadGfp, 47 + 11));
        let f = parse(EventKind::MmPageFree, "page=1 pfn=0x1 order=x").unwrap_err();
        assert_eq!((f.kind, f.col), (ErrorKind::BadNumber, 21));
    }
}
