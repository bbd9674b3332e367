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
//! anything else is a malformed line. Each event's parser spells its format one
//! field at a time (`field!`: the literal, how to read the value, what the value
//! is), and the errors are worded from that: a malformed line names the literal
//! (`` ` ptr=` ``) or what the value after it should be
//! (`` hex pointer after `ptr=` ``). Strings (call sites, cache names) borrow
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

/// A call site as `%pS` prints it: `symbol+0xoffset/0xsize`, with ` [module]`
/// after it for a symbol in a kernel module; borrowed from the line.
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

    /// The kernel module the function lies in (`nvme_core` for
    /// `nvme_setup_cmd+0x1a/0x200 [nvme_core]`), if printed.
    pub fn module(&self) -> Option<&'a str> {
        let (_, m) = self.0.split_once(" [")?;
        m.strip_suffix(']')
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

const GFP: &str = "GFP flags after `gfp_flags=` (e.g. `GFP_KERNEL|__GFP_ZERO`)";

/// `field!(c, "NAME=", read, "what")` reads the next field, ` NAME=VALUE`: the
/// literal with its leading space, then the value with the [`Cursor`] method
/// `read` (`"NAME="` is the literal as printed, so `"va_start: "` for
/// `alloc_vmap_area`). `field!(c, first "NAME=", ...)` reads a line's first
/// field, which has no space before it. Evaluates to a `Result`; a failure
/// expects the literal (`` ` ptr=` ``) when that is wrong, and `what` after it
/// (`` hex pointer after `ptr=` ``) when the value is.
macro_rules! field {
    ($c:ident, $name:literal, $read:ident, $what:literal) => {
        field!(@ $c, " ", $name, $read, $what)
    };
    ($c:ident, first $name:literal, $read:ident, $what:literal) => {
        field!(@ $c, "", $name, $read, $what)
    };
    (@ $c:ident, $space:literal, $name:literal, $read:ident, $what:literal) => {
        match $c.lit(
            concat!($space, $name).as_bytes(),
            concat!("`", $space, $name, "`"),
        ) {
            Ok(()) => $c.$read(concat!($what, " after `", $name, "`")),
            Err(f) => Err(f),
        }
    };
}

/// Parses the fields of an event of kind `kind` (the cursor is just after `NAME: `).
///
/// A struct expression evaluates its fields in the order they are written, so
/// each event below reads its fields in the order its initialiser names them:
/// the `TP_printk` order.
#[inline]
pub(crate) fn parse_fields<'a>(
    kind: EventKind,
    c: &mut Cursor<'a>,
    gfp: &mut GfpCache,
) -> Result<Event<'a>, Fail> {
    let ev = match kind {
        EventKind::Kmalloc => Event::Kmalloc(Kmalloc {
            call_site: call_site(c)?,
            ptr: field!(c, "ptr=", pointer, "hex pointer")?,
            bytes_req: field!(c, "bytes_req=", dec, "decimal")?,
            bytes_alloc: field!(c, "bytes_alloc=", dec, "decimal")?,
            gfp: gfp_field(c, gfp)?,
            node: field!(c, "node=", dec_i32, "decimal")?,
            accounted: field!(c, "accounted=", boolean, "`true` or `false`")?,
        }),
        EventKind::KmemCacheAlloc => Event::KmemCacheAlloc(KmemCacheAlloc {
            call_site: call_site(c)?,
            ptr: field!(c, "ptr=", pointer, "hex pointer")?,
            name: field!(c, "name=", str_word, "cache name")?,
            bytes_req: field!(c, "bytes_req=", dec, "decimal")?,
            bytes_alloc: field!(c, "bytes_alloc=", dec, "decimal")?,
            gfp: gfp_field(c, gfp)?,
            node: field!(c, "node=", dec_i32, "decimal")?,
            accounted: field!(c, "accounted=", boolean, "`true` or `false`")?,
        }),
        EventKind::Kfree => Event::Kfree(Kfree {
            call_site: call_site(c)?,
            ptr: field!(c, "ptr=", pointer, "hex pointer")?,
        }),
        EventKind::KmemCacheFree => Event::KmemCacheFree(KmemCacheFree {
            call_site: call_site(c)?,
            ptr: field!(c, "ptr=", pointer, "hex pointer")?,
            name: field!(c, "name=", str_word, "cache name")?,
        }),
        EventKind::MmPageAlloc => {
            let PageFree { page, pfn, order } = page_pfn_order(c)?;
            Event::MmPageAlloc(PageAlloc {
                page,
                pfn,
                order,
                migratetype: field!(c, "migratetype=", dec_i32, "decimal")?,
                gfp: gfp_field(c, gfp)?,
            })
        }
        EventKind::MmPageFree => Event::MmPageFree(page_pfn_order(c)?),
        EventKind::MmPageFreeBatched => Event::MmPageFreeBatched(page_pfn_order(c)?),
        EventKind::MmPageAllocZoneLocked => {
            let PageFree { page, pfn, order } = page_pfn_order(c)?;
            Event::MmPageAllocZoneLocked(PageAllocZoneLocked {
                page,
                pfn,
                order,
                migratetype: field!(c, "migratetype=", dec_i32, "decimal")?,
                percpu_refill: field!(c, "percpu_refill=", int_flag, "decimal")?,
            })
        }
        EventKind::MmPagePcpuDrain => {
            let PageFree { page, pfn, order } = page_pfn_order(c)?;
            Event::MmPagePcpuDrain(PagePcpuDrain {
                page,
                pfn,
                order,
                migratetype: field!(c, "migratetype=", dec_i32, "decimal")?,
            })
        }
        EventKind::AllocVmapArea => Event::AllocVmapArea(AllocVmapArea {
            va_start: field!(c, first "va_start: ", dec, "decimal")?,
            size: field!(c, "size=", dec, "decimal")?,
            align: field!(c, "align=", dec, "decimal")?,
            vstart: field!(c, "vstart=", hex0x, "`0x` hex")?,
            vend: field!(c, "vend=", hex0x, "`0x` hex")?,
            failed: field!(c, "failed=", int_flag, "decimal")?,
        }),
        EventKind::FreeVmapAreaNoflush => Event::FreeVmapAreaNoflush(FreeVmapAreaNoflush {
            va_start: field!(c, first "va_start=", hex0x, "`0x` hex")?,
            nr_lazy: field!(c, "nr_lazy=", dec, "decimal")?,
            nr_lazy_max: field!(c, "nr_lazy_max=", dec, "decimal")?,
        }),
        EventKind::PurgeVmapAreaLazy => Event::PurgeVmapAreaLazy(PurgeVmapAreaLazy {
            start: field!(c, first "start=", hex0x, "`0x` hex")?,
            end: field!(c, "end=", hex0x, "`0x` hex")?,
            npurged: field!(c, "num_purged=", dec_u32, "decimal")?,
        }),
    };
    c.end()?;
    Ok(ev)
}

/// `call_site=%pS`, the first field of the slab events.
#[inline]
fn call_site<'a>(c: &mut Cursor<'a>) -> Result<CallSite<'a>, Fail> {
    field!(c, first "call_site=", symbol, "call site").map(CallSite)
}

/// ` gfp_flags=%s`, parsed through `cache`.
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

/// `page=%p pfn=0x%lx order=%d`: the whole of `mm_page_free` and
/// `mm_page_free_batched`, and how the other page events begin.
#[inline]
fn page_pfn_order(c: &mut Cursor<'_>) -> Result<PageFree, Fail> {
    Ok(PageFree {
        page: field!(c, first "page=", pointer, "hex pointer")?,
        pfn: field!(c, "pfn=", hex0x, "`0x` hex")?,
        order: field!(c, "order=", dec_u32, "decimal")?,
    })
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

    /// A line of every kind, what a bad value of each of its fields is said to
    /// miss, and the event the line parses to.
    fn every_kind() -> [(EventKind, &'static str, Vec<&'static str>, Event<'static>); 12] {
        let gfp = "GFP_KERNEL|__GFP_ZERO".parse().unwrap();
        let gfp_flags = "GFP flags after `gfp_flags=` (e.g. `GFP_KERNEL|__GFP_ZERO`)";
        let slab = ["call site after `call_site=`", "hex pointer after `ptr=`"];
        let name = "cache name after `name=`";
        let sizes = ["decimal after `bytes_req=`", "decimal after `bytes_alloc=`"];
        let node_accounted = [
            "decimal after `node=`",
            "`true` or `false` after `accounted=`",
        ];
        let page = [
            "hex pointer after `page=`",
            "`0x` hex after `pfn=`",
            "decimal after `order=`",
        ];
        let migratetype = "decimal after `migratetype=`";
        [
            (
                EventKind::Kmalloc,
                "call_site=a+0x1/0x2 ptr=ffff888100000010 bytes_req=11 bytes_alloc=16 gfp_flags=GFP_KERNEL|__GFP_ZERO node=-1 accounted=true",
                [&slab[..], &sizes, &[gfp_flags], &node_accounted].concat(),
                Event::Kmalloc(Kmalloc {
                    call_site: CallSite("a+0x1/0x2"),
                    ptr: 0xffff888100000010,
                    bytes_req: 11,
                    bytes_alloc: 16,
                    gfp,
                    node: -1,
                    accounted: true,
                }),
            ),
            (
                EventKind::KmemCacheAlloc,
                "call_site=b+0x3/0x4 ptr=ffff888100000020 name=filp bytes_req=232 bytes_alloc=256 gfp_flags=GFP_KERNEL|__GFP_ZERO node=1 accounted=false",
                [&slab[..], &[name], &sizes, &[gfp_flags], &node_accounted].concat(),
                Event::KmemCacheAlloc(KmemCacheAlloc {
                    call_site: CallSite("b+0x3/0x4"),
                    ptr: 0xffff888100000020,
                    name: "filp",
                    bytes_req: 232,
                    bytes_alloc: 256,
                    gfp,
                    node: 1,
                    accounted: false,
                }),
            ),
            (
                EventKind::Kfree,
                "call_site=c+0x5/0x6 ptr=ffff888100000030",
                slab.to_vec(),
                Event::Kfree(Kfree {
                    call_site: CallSite("c+0x5/0x6"),
                    ptr: 0xffff888100000030,
                }),
            ),
            (
                EventKind::KmemCacheFree,
                "call_site=d+0x7/0x8 ptr=ffff888100000040 name=filp",
                [&slab[..], &[name]].concat(),
                Event::KmemCacheFree(KmemCacheFree {
                    call_site: CallSite("d+0x7/0x8"),
                    ptr: 0xffff888100000040,
                    name: "filp",
                }),
            ),
            (
                EventKind::MmPageAlloc,
                "page=ffffea0004000040 pfn=0x100001 order=2 migratetype=1 gfp_flags=GFP_KERNEL|__GFP_ZERO",
                [&page[..], &[migratetype, gfp_flags]].concat(),
                Event::MmPageAlloc(PageAlloc {
                    page: 0xffffea0004000040,
                    pfn: 0x100001,
                    order: 2,
                    migratetype: 1,
                    gfp,
                }),
            ),
            (
                EventKind::MmPageFree,
                "page=ffffea0004000080 pfn=0x100002 order=3",
                page.to_vec(),
                Event::MmPageFree(PageFree {
                    page: 0xffffea0004000080,
                    pfn: 0x100002,
                    order: 3,
                }),
            ),
            (
                EventKind::MmPageFreeBatched,
                "page=ffffea00040000c0 pfn=0x100003 order=0",
                page.to_vec(),
                Event::MmPageFreeBatched(PageFree {
                    page: 0xffffea00040000c0,
                    pfn: 0x100003,
                    order: 0,
                }),
            ),
            (
                EventKind::MmPageAllocZoneLocked,
                "page=ffffea0004000100 pfn=0x100004 order=1 migratetype=2 percpu_refill=1",
                [&page[..], &[migratetype, "decimal after `percpu_refill=`"]].concat(),
                Event::MmPageAllocZoneLocked(PageAllocZoneLocked {
                    page: 0xffffea0004000100,
                    pfn: 0x100004,
                    order: 1,
                    migratetype: 2,
                    percpu_refill: true,
                }),
            ),
            (
                EventKind::MmPagePcpuDrain,
                "page=ffffea0004000140 pfn=0x100005 order=4 migratetype=3",
                [&page[..], &[migratetype]].concat(),
                Event::MmPagePcpuDrain(PagePcpuDrain {
                    page: 0xffffea0004000140,
                    pfn: 0x100005,
                    order: 4,
                    migratetype: 3,
                }),
            ),
            (
                EventKind::AllocVmapArea,
                "va_start: 18446683600644456448 size=20480 align=16384 vstart=0xffffc90000000000 vend=0xffffe8ffffffffff failed=1",
                vec![
                    "decimal after `va_start: `",
                    "decimal after `size=`",
                    "decimal after `align=`",
                    "`0x` hex after `vstart=`",
                    "`0x` hex after `vend=`",
                    "decimal after `failed=`",
                ],
                Event::AllocVmapArea(AllocVmapArea {
                    va_start: 18446683600644456448,
                    size: 20480,
                    align: 16384,
                    vstart: 0xffffc90000000000,
                    vend: 0xffffe8ffffffffff,
                    failed: true,
                }),
            ),
            (
                EventKind::FreeVmapAreaNoflush,
                "va_start=0xffffc90000010000 nr_lazy=12 nr_lazy_max=32768",
                vec![
                    "`0x` hex after `va_start=`",
                    "decimal after `nr_lazy=`",
                    "decimal after `nr_lazy_max=`",
                ],
                Event::FreeVmapAreaNoflush(FreeVmapAreaNoflush {
                    va_start: 0xffffc90000010000,
                    nr_lazy: 12,
                    nr_lazy_max: 32768,
                }),
            ),
            (
                EventKind::PurgeVmapAreaLazy,
                "start=0xffffc90000000000 end=0xffffc90000400000 num_purged=7",
                vec![
                    "`0x` hex after `start=`",
                    "`0x` hex after `end=`",
                    "decimal after `num_purged=`",
                ],
                Event::PurgeVmapAreaLazy(PurgeVmapAreaLazy {
                    start: 0xffffc90000000000,
                    end: 0xffffc90000400000,
                    npurged: 7,
                }),
            ),
        ]
    }

    /// Every kind parses each field into its place; a wrong or cut-off literal,
    /// a missing value or trailing text fails exactly there, naming the field
    /// (the literal as printed, or what the value should be after it).
    #[test]
    fn every_field_of_every_kind() {
        for (kind, good, values, want) in every_kind() {
            assert_eq!(parse(kind, good), Ok(want), "{good}");
            let f = parse(kind, &format!("{good} x")).unwrap_err();
            let end = Fail::new(good.len(), ErrorKind::UnexpectedText, "end of line");
            assert_eq!(f, end, "{good}");
            // Fields start at the spaces before `NAME=` (`va_start: ` has its own).
            let mut starts: Vec<usize> = good.match_indices(' ').map(|(i, _)| i).collect();
            starts.retain(|&i| good[i + 1..].split(' ').next().unwrap().contains('='));
            starts.insert(0, 0);
            starts.push(good.len());
            assert_eq!(starts.len(), values.len() + 1, "{good}");
            for (i, value_expected) in values.into_iter().enumerate() {
                let (at, next) = (starts[i], starts[i + 1]);
                let field = &good[at..next];
                let lit_len = field.find('=').or(field.find(": ").map(|n| n + 1)).unwrap() + 1;
                let lit_expected = format!("`{}`", &field[..lit_len]);
                let fails = |line: &str, col, why| {
                    let f = parse(kind, line).unwrap_err();
                    assert_eq!((f.col, f.kind), (col, why), "{line}");
                    f.expected
                };
                // The literal's last byte wrong, and the line cut before it.
                let last = at + lit_len - 1;
                let bad = format!("{}#{}", &good[..last], &good[last + 1..]);
                assert_eq!(fails(&bad, last, ErrorKind::UnexpectedText), lit_expected);
                assert_eq!(
                    fails(&good[..last], last, ErrorKind::Truncated),
                    lit_expected
                );
                // The value missing: before the next field, or at the end of the line.
                let value_at = at + lit_len;
                let bad = format!("{}{}", &good[..value_at], &good[next..]);
                let why = if next == good.len() {
                    ErrorKind::Truncated
                } else {
                    ErrorKind::BadNumber
                };
                assert_eq!(fails(&bad, value_at, why), value_expected);
            }
        }
    }
}
