//! Events as the engine replays them: owned, `Copy`, strings interned.
//!
//! A [`crate::Record`] borrows the reader's line buffer and lives until the
//! next line. [`Front::convert`] turns it into an [`Ev`]: the same fields,
//! with call sites and cache names replaced by [`Interner`] indices. That
//! lets events wait in a bounded queue while the replay machine is still
//! being built (see [`super::pipeline`]), and gives the engine one compact
//! value per event (80 bytes) whatever the line looked like. Object sizes of
//! named caches are kept in 32 bits (Linux caches stay below 4 MiB).

use kmem::{ExecContext, Gfp};

use super::sites::Interner;
use crate::event::{Event, EventKind};
use crate::line::IrqFlags;
use crate::parser::Record;

/// What happened, with strings as interned ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvKind {
    /// `kmalloc`.
    Kmalloc {
        /// Call site id.
        site: u32,
        /// Pointer (0: failed).
        ptr: u64,
        /// Bytes requested.
        req: u64,
        /// Bytes allocated (Linux's class size).
        alloc: u64,
        /// GFP mask.
        gfp: Gfp,
        /// NUMA node asked for.
        node: i32,
    },
    /// `kmem_cache_alloc`.
    CacheAlloc {
        /// Call site id.
        site: u32,
        /// Cache name id.
        cache: u32,
        /// Pointer (0: failed).
        ptr: u64,
        /// Object size.
        req: u32,
        /// Object stride.
        alloc: u32,
        /// GFP mask.
        gfp: Gfp,
        /// NUMA node asked for.
        node: i32,
    },
    /// `kfree`, or `kmem_cache_free` with the cache name id.
    Free {
        /// Pointer.
        ptr: u64,
        /// Cache name id for `kmem_cache_free`.
        cache: Option<u32>,
    },
    /// `mm_page_alloc`.
    PageAlloc {
        /// Page frame number (0 with `failed`).
        pfn: u64,
        /// Order.
        order: u32,
        /// Migrate type as printed.
        mt: i32,
        /// GFP mask.
        gfp: Gfp,
        /// NULL page.
        failed: bool,
    },
    /// `mm_page_free` or `mm_page_free_batched`.
    PageFree {
        /// Page frame number.
        pfn: u64,
        /// Order.
        order: u32,
        /// `mm_page_free_batched`.
        batched: bool,
    },
    /// `alloc_vmap_area`.
    VmapAlloc {
        /// Start of the area.
        va: u64,
        /// Size, guard page included.
        size: u64,
        /// Alignment.
        align: u32,
        /// Lowest acceptable address.
        vstart: u64,
        /// Highest acceptable address.
        vend: u64,
        /// No range was found.
        failed: bool,
    },
    /// `free_vmap_area_noflush`.
    VmapFree {
        /// Start of the area.
        va: u64,
    },
    /// `purge_vmap_area_lazy`.
    Purge,
    /// `mm_page_alloc_zone_locked`, `mm_page_pcpu_drain`: page allocator internals.
    Internal,
}

/// One event, owned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ev {
    /// Line in the trace.
    pub line: u64,
    /// Timestamp, ns.
    pub ts_ns: u64,
    /// CPU.
    pub cpu: u32,
    /// The tracepoint.
    pub kind: EventKind,
    /// The irq-info column as printed (see [`Ev::flags`]).
    pub raw_flags: [u8; 5],
    /// Its execution context.
    pub ctx: ExecContext,
    /// The fields.
    pub what: EvKind,
}

impl Ev {
    /// The irq-info column, decoded again.
    pub fn flags(&self) -> Option<IrqFlags> {
        IrqFlags::parse(&self.raw_flags).ok()
    }

    /// The irq-info column as printed.
    pub fn flags_text(&self) -> &str {
        std::str::from_utf8(&self.raw_flags).unwrap_or("?????")
    }
}

/// The interners, and the conversion from records.
#[derive(Debug, Default, Clone)]
pub struct Front {
    /// Call sites.
    pub sites: Interner,
    /// Cache names.
    pub caches: Interner,
}

impl Front {
    /// The record as an [`Ev`].
    #[inline]
    pub fn convert(&mut self, rec: &Record<'_>) -> Ev {
        let what = match &rec.event {
            Event::Kmalloc(k) => EvKind::Kmalloc {
                site: self.sites.intern(k.call_site.as_str()),
                ptr: k.ptr,
                req: k.bytes_req,
                alloc: k.bytes_alloc,
                gfp: k.gfp,
                node: k.node,
            },
            Event::KmemCacheAlloc(k) => EvKind::CacheAlloc {
                site: self.sites.intern(k.call_site.as_str()),
                cache: self.caches.intern(k.name),
                ptr: k.ptr,
                req: u32::try_from(k.bytes_req).unwrap_or(u32::MAX),
                alloc: u32::try_from(k.bytes_alloc).unwrap_or(u32::MAX),
                gfp: k.gfp,
                node: k.node,
            },
            Event::Kfree(f) => EvKind::Free {
                ptr: f.ptr,
                cache: None,
            },
            Event::KmemCacheFree(f) => EvKind::Free {
                ptr: f.ptr,
                cache: Some(self.caches.intern(f.name)),
            },
            Event::MmPageAlloc(p) => EvKind::PageAlloc {
                pfn: p.pfn,
                order: p.order,
                mt: p.migratetype,
                gfp: p.gfp,
                failed: p.failed(),
            },
            Event::MmPageFree(p) => EvKind::PageFree {
                pfn: p.pfn,
                order: p.order,
                batched: false,
            },
            Event::MmPageFreeBatched(p) => EvKind::PageFree {
                pfn: p.pfn,
                order: p.order,
                batched: true,
            },
            Event::MmPageAllocZoneLocked(_) | Event::MmPagePcpuDrain(_) => EvKind::Internal,
            Event::AllocVmapArea(a) => EvKind::VmapAlloc {
                va: a.va_start,
                size: a.size,
                align: u32::try_from(a.align).unwrap_or(u32::MAX),
                vstart: a.vstart,
                vend: a.vend,
                failed: a.failed,
            },
            Event::FreeVmapAreaNoflush(f) => EvKind::VmapFree { va: f.va_start },
            Event::PurgeVmapAreaLazy(_) => EvKind::Purge,
        };
        Ev {
            line: rec.line,
            ts_ns: rec.common.ts_ns,
            cpu: rec.common.cpu,
            kind: rec.event.kind(),
            raw_flags: {
                let raw = rec.common.flags.raw().as_bytes();
                let mut b = [b'.'; 5];
                b[..raw.len().min(5)].copy_from_slice(&raw[..raw.len().min(5)]);
                b
            },
            ctx: rec.common.ctx,
            what,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Line, Mode, Parser};

    #[test]
    fn converts_and_interns() {
        let mut p = Parser::new(Mode::Strict);
        let mut f = Front::default();
        let l1 = b"  bash-1 [001] d..1.   1.000001: kmem_cache_alloc: call_site=x+0x1/0x2 ptr=ffff888100000000 name=filp bytes_req=184 bytes_alloc=192 gfp_flags=GFP_KERNEL node=-1 accounted=false";
        let Line::Event(r) = p.parse_line(l1).unwrap() else {
            panic!()
        };
        let e = f.convert(&r);
        assert_eq!((e.line, e.cpu, e.kind), (1, 1, EventKind::KmemCacheAlloc));
        assert!(e.ctx.irqs_disabled);
        let EvKind::CacheAlloc {
            site, cache, req, ..
        } = e.what
        else {
            panic!()
        };
        assert_eq!(
            (f.sites.name(site), f.caches.name(cache), req),
            ("x+0x1/0x2", "filp", 184)
        );
        let l2 = b"  bash-1 [000] .....   1.000002: kmem_cache_free: call_site=y+0x1/0x2 ptr=ffff888100000000 name=filp";
        let Line::Event(r) = p.parse_line(l2).unwrap() else {
            panic!()
        };
        let e2 = f.convert(&r);
        assert_eq!(
            e2.what,
            EvKind::Free {
                ptr: 0xffff888100000000,
                cache: Some(cache)
            }
        );
        assert_eq!(std::mem::size_of::<Ev>(), 80);
        assert_eq!(e.flags_text(), "d..1.");
        assert!(e.flags().unwrap().irqs_off);
    }
}
