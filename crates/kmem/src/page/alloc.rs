//! Allocation entry points and the slow path (Linux's `__alloc_pages`).
//!
//! Every entry point checks the mask and the execution context once, then
//! tries the fast path: each allowed zone in zonelist order, above its *low*
//! watermark, per-CPU lists for small orders. On a miss, the slow path:
//!
//! 1. wake kswapd (counted: kswapd itself is the kernel's business), retry at
//!    the *min* watermark lowered by the mask's reserves;
//! 2. `__GFP_MEMALLOC`: retry ignoring watermarks;
//! 3. non-blocking masks stop here (after draining this CPU's lists);
//! 4. blocking masks run direct reclaim and retry; if that fails, give one
//!    high-order atomic reserve pageblock back (keeping the zone's last),
//!    drain every CPU's lists and retry; then loop under the rules described
//!    in [`super::reclaim`], giving the reserve back block by block before
//!    giving up (Linux's `should_reclaim_retry`).
//!
//! A high-order request that may not block but has `__GFP_HIGH`
//! (`ALLOC_HIGHATOMIC`) and succeeds in the slow path reserves its
//! pageblock for later ones (see [`super::buddy`]).

use super::frame::{flags, FrameState};
use super::pcp::{PcpAlloc, PCP_MAX_ORDER};
use super::reclaim::MAX_RECLAIM_RETRIES;
use super::watermark::{zone_watermark_ok, AllocFlags};
use super::{PageAllocator, NUMA_NO_NODE};
use crate::addr::{get_order, Pfn, VirtAddr, MAX_PAGE_ORDER, PAGE_ALLOC_COSTLY_ORDER, PAGE_SIZE};
use crate::context::{ContextPolicy, ContextViolation};
use crate::error::{AllocError, NoMemory};
use crate::gfp::{Gfp, ZoneType};
use crate::platform::Platform;
use core::panic::Location;
use core::sync::atomic::Ordering::Relaxed;

/// Masks that need no preparation: no zone or mobility modifier, no
/// `__GFP_NOFAIL`, no unknown bit (Normal zone, unmovable, always valid).
const PLAIN_GFP: u32 = Gfp::all().bits()
    & !(Gfp::DMA.bits()
        | Gfp::DMA32.bits()
        | Gfp::HIGHMEM.bits()
        | Gfp::MOVABLE.bits()
        | Gfp::RECLAIMABLE.bits()
        | Gfp::NOFAIL.bits());
/// Plain masks the per-CPU fast path serves as is (no zeroing, no compound
/// tails to build).
const FAST_GFP: u32 = PLAIN_GFP & !(Gfp::ZERO.bits() | Gfp::COMP.bits());

/// A validated request.
#[derive(Clone, Copy)]
struct Request {
    gfp: Gfp,
    order: u32,
    node: usize,
    zone: ZoneType,
    mt: usize,
}

impl<P: Platform> PageAllocator<P> {
    /// Linux's `alloc_pages`: a block of `2^order` pages.
    #[track_caller]
    #[inline]
    pub fn alloc_pages(&self, gfp: Gfp, order: u32) -> Result<Pfn, AllocError> {
        self.alloc_pages_node_at(NUMA_NO_NODE, gfp, order, Location::caller())
    }

    /// Linux's `alloc_pages_node`: prefer node `nid` (`NUMA_NO_NODE`: any);
    /// with `__GFP_THISNODE`, only that node.
    #[track_caller]
    pub fn alloc_pages_node(&self, nid: i32, gfp: Gfp, order: u32) -> Result<Pfn, AllocError> {
        self.alloc_pages_node_at(nid, gfp, order, Location::caller())
    }

    /// [`Self::alloc_pages_node`] with an explicit call site, for layers
    /// above (slab, vmalloc) that report their own caller.
    #[inline]
    pub fn alloc_pages_node_at(
        &self,
        nid: i32,
        gfp: Gfp,
        order: u32,
        caller: &'static Location<'static>,
    ) -> Result<Pfn, AllocError> {
        // Fastest path: the most common request (GFP_KERNEL or GFP_ATOMIC
        // style, orders 0..=3, any node, process context) from the preferred
        // zone's per-CPU list, with nothing else to prepare.
        if gfp.bits() & !FAST_GFP == 0
            && order <= PCP_MAX_ORDER
            && nid < 0
            && self.config().pcp_lists
        {
            let slot = self.fast_slot;
            let zone = &self.zones[slot];
            if !self.platform().in_atomic()
                && zone_watermark_ok(
                    zone,
                    order,
                    zone.watermark(super::Watermark::Low),
                    ZoneType::Normal,
                    AllocFlags(0),
                )
            {
                if let PcpAlloc::Hit(pfn) = self.rmqueue_pcp(slot, order, 0, self.fast_nofrag) {
                    return Ok(Pfn(pfn));
                }
            }
        }
        self.alloc_pages_general(nid, gfp, order, caller)
    }

    #[inline(never)]
    fn alloc_pages_general(
        &self,
        nid: i32,
        gfp: Gfp,
        order: u32,
        caller: &'static Location<'static>,
    ) -> Result<Pfn, AllocError> {
        let req = self.prepare(nid, gfp, order, caller)?;
        let pfn = match self.get_page_from_freelist(&req, AllocFlags(AllocFlags::WMARK_LOW)) {
            Some(pfn) => pfn,
            None => self.alloc_slowpath(&req)?,
        };
        self.prep_new_page(pfn, &req);
        Ok(Pfn(pfn))
    }

    /// Linux's `__get_free_pages`: like `alloc_pages`, returning the
    /// direct-map address.
    #[doc(alias = "__get_free_pages")]
    #[track_caller]
    pub fn get_free_pages(&self, gfp: Gfp, order: u32) -> Result<VirtAddr, AllocError> {
        let pfn = self.alloc_pages_node_at(NUMA_NO_NODE, gfp, order, Location::caller())?;
        Ok(self.page_address(pfn))
    }

    /// Linux's `get_zeroed_page`.
    #[track_caller]
    pub fn get_zeroed_page(&self, gfp: Gfp) -> Result<VirtAddr, AllocError> {
        let pfn = self.alloc_pages_node_at(NUMA_NO_NODE, gfp | Gfp::ZERO, 0, Location::caller())?;
        Ok(self.page_address(pfn))
    }

    /// Linux's `alloc_pages_exact`: exactly `size` bytes (page-rounded) of
    /// contiguous pages; the tail of the power-of-two block is given back.
    #[track_caller]
    pub fn alloc_pages_exact(&self, size: usize, gfp: Gfp) -> Result<VirtAddr, AllocError> {
        self.alloc_pages_exact_nid(NUMA_NO_NODE, size, gfp)
    }

    /// Linux's `alloc_pages_exact_nid`.
    #[track_caller]
    pub fn alloc_pages_exact_nid(
        &self,
        nid: i32,
        size: usize,
        gfp: Gfp,
    ) -> Result<VirtAddr, AllocError> {
        let order = get_order(size);
        if order > MAX_PAGE_ORDER {
            self.stats.fail_order.fetch_add(1, Relaxed);
            return Err(AllocError::SizeTooLarge {
                size,
                max: PAGE_SIZE << MAX_PAGE_ORDER,
            });
        }
        let pfn = self.alloc_pages_node_at(nid, gfp - Gfp::COMP, order, Location::caller())?;
        self.split_page(pfn, order)
            .expect("fresh non-compound block splits");
        let used = size.max(1).div_ceil(PAGE_SIZE) as u64;
        for p in used..(1 << order) {
            self.free_pages(pfn.add(p), 0)
                .expect("tail of a fresh split block frees");
        }
        Ok(self.page_address(pfn))
    }

    /// Linux's `alloc_pages_bulk`: fills the `None` entries of `pages` with
    /// order-0 pages; returns how many entries are filled in the end. Stops
    /// at the first failure (what was allocated stays in the array).
    #[track_caller]
    pub fn alloc_pages_bulk(&self, gfp: Gfp, pages: &mut [Option<Pfn>]) -> usize {
        let caller = Location::caller();
        for slot in pages.iter_mut().filter(|s| s.is_none()) {
            match self.alloc_pages_node_at(NUMA_NO_NODE, gfp, 0, caller) {
                Ok(p) => *slot = Some(p),
                Err(_) => break,
            }
        }
        pages.iter().filter(|s| s.is_some()).count()
    }

    /// Checks mask, order and context; picks node, zone and mobility.
    #[inline(always)]
    fn prepare(
        &self,
        nid: i32,
        gfp: Gfp,
        order: u32,
        caller: &'static Location<'static>,
    ) -> Result<Request, AllocError> {
        // The common case: no zone or mobility modifier, no NOFAIL, no
        // unknown bit, a sane order, process context. Everything else takes
        // the careful path.
        if gfp.bits() & !PLAIN_GFP == 0
            && order <= MAX_PAGE_ORDER
            && nid < 0
            && !self.platform().in_atomic()
        {
            return Ok(Request {
                gfp,
                order,
                node: self.default_node,
                zone: ZoneType::Normal,
                mt: 0,
            });
        }
        self.prepare_slow(nid, gfp, order, caller)
    }

    #[inline(never)]
    fn prepare_slow(
        &self,
        nid: i32,
        mut gfp: Gfp,
        order: u32,
        caller: &'static Location<'static>,
    ) -> Result<Request, AllocError> {
        if let Err(e) = gfp.validate() {
            self.stats.fail_gfp.fetch_add(1, Relaxed);
            if !gfp.contains(Gfp::NOWARN) {
                self.platform()
                    .warn(format_args!("WARNING: {e} (at {caller})"));
            }
            return Err(AllocError::InvalidGfp(e));
        }
        if order > MAX_PAGE_ORDER {
            self.stats.fail_order.fetch_add(1, Relaxed);
            if self.first_warning(OnceSite::OrderTooLarge, gfp) {
                self.platform().warn(format_args!(
                    "WARNING: page allocation of order {order} > MAX_PAGE_ORDER at {caller} (warned once)"
                ));
            }
            return Err(AllocError::OrderTooLarge { order });
        }
        if self.platform().in_atomic() {
            let ctx = self.platform().context();
            if ctx.in_nmi() {
                self.stats.fail_nmi.fetch_add(1, Relaxed);
                return Err(AllocError::InNmi);
            }
            if gfp.allows_blocking() {
                gfp = self.context_violation(gfp, ctx, caller)?;
            }
        }
        let zone = match gfp.zone_type() {
            Ok(z) => z,
            Err(e) => return Err(AllocError::InvalidGfp(e)),
        };
        if nid >= 0 && nid as usize >= self.nr_nodes && gfp.contains(Gfp::THISNODE) {
            // Linux's warn_if_node_offline: no zonelist to serve it from.
            self.stats.fail_nomem.fetch_add(1, Relaxed);
            if !gfp.contains(Gfp::NOWARN) {
                self.platform().warn(format_args!(
                    "WARNING: __GFP_THISNODE allocation on node {nid}, which does not exist (at {caller})"
                ));
            }
            return Err(AllocError::NoSuchNode { node: nid });
        }
        let node = if nid < 0 || nid as usize >= self.nr_nodes {
            self.default_node
        } else {
            nid as usize
        };
        Ok(Request {
            gfp,
            order,
            node,
            zone,
            mt: gfp.migratetype().index(),
        })
    }

    #[cold]
    #[inline(never)]
    fn context_violation(
        &self,
        gfp: Gfp,
        ctx: crate::context::ExecContext,
        caller: &'static Location<'static>,
    ) -> Result<Gfp, AllocError> {
        self.stats.context_violation.fetch_add(1, Relaxed);
        let v = ContextViolation {
            context: ctx,
            cpu: self.platform().cpu_id(),
            caller,
        };
        self.platform().warn(format_args!("{v}"));
        match self.config().context_policy {
            ContextPolicy::Fail => Err(AllocError::SleepInAtomic(v)),
            ContextPolicy::Warn => Ok(gfp - Gfp::DIRECT_RECLAIM),
            ContextPolicy::Panic => panic!("{v}"),
        }
    }

    /// Walks the zonelist; returns a block from the first zone that passes
    /// the watermark in force. Like Linux, when the preferred zone is Normal
    /// and DMA32 exists, the first walk avoids mixing mobility types
    /// (`ALLOC_NOFRAGMENT`: whole-pageblock claims only, no steals) over the
    /// preferred node's zones, and a second walk allows it.
    #[inline]
    fn get_page_from_freelist(&self, req: &Request, flags: AllocFlags) -> Option<u64> {
        let zl = &self.zonelists[req.node];
        let n = if req.gfp.contains(Gfp::THISNODE) {
            zl.local
        } else {
            zl.len
        };
        let slots = &zl.slots[..n as usize];
        let preferred = slots.iter().map(|&s| s as usize).find(|&s| {
            let z = &self.zones[s];
            z.ztype <= req.zone && z.is_populated()
        })?;
        let nofrag = self.zones[preferred].ztype == ZoneType::Normal
            && self.zones[preferred - 1].is_populated()
            && req.mt < crate::gfp::MigrateType::PCPTYPES;
        if nofrag {
            if let Some(pfn) = self.walk_zones(req, flags, slots, true) {
                return Some(pfn);
            }
        }
        self.walk_zones(req, flags, slots, false)
    }

    fn walk_zones(
        &self,
        req: &Request,
        flags: AllocFlags,
        slots: &[u8],
        nofrag: bool,
    ) -> Option<u64> {
        let mut local = None;
        for &slot in slots {
            let slot = slot as usize;
            let zone = &self.zones[slot];
            if zone.ztype > req.zone || !zone.is_populated() {
                continue;
            }
            // Moving to a remote node, the unfragmenting walk gives up:
            // locality matters more than fragmentation (Linux's
            // get_page_from_freelist retries without ALLOC_NOFRAGMENT there).
            if nofrag && *local.get_or_insert(zone.node) != zone.node {
                return None;
            }
            if !flags.has(AllocFlags::NO_WATERMARKS) {
                let mark = zone.watermark(flags.mark());
                if !zone_watermark_ok(zone, req.order, mark, req.zone, flags) {
                    self.stats.wmark_fail.fetch_add(1, Relaxed);
                    continue;
                }
            }
            if req.order <= PCP_MAX_ORDER && self.config().pcp_lists {
                match self.rmqueue_pcp(slot, req.order, req.mt, nofrag) {
                    PcpAlloc::Hit(pfn) => return Some(self.got_page(slot, pfn, req, flags)),
                    // The refill searched the ordinary lists already; only
                    // a request that may use the HighAtomic reserve has
                    // something left to try in the zone (Linux's rmqueue
                    // falls back to rmqueue_buddy).
                    PcpAlloc::Empty
                        if !flags.has(AllocFlags::HIGHATOMIC | AllocFlags::NON_BLOCK) =>
                    {
                        continue
                    }
                    PcpAlloc::Empty | PcpAlloc::Contended => {}
                }
            }
            if let Some(pfn) = self.rmqueue_buddy(slot, req.order, req.mt, flags, nofrag) {
                return Some(self.got_page(slot, pfn, req, flags));
            }
        }
        None
    }

    /// A block was taken from zone `slot`: a high-order atomic request
    /// reserves its pageblock (Linux's get_page_from_freelist).
    #[inline(always)]
    fn got_page(&self, slot: usize, pfn: u64, req: &Request, flags: AllocFlags) -> u64 {
        if flags.has(AllocFlags::HIGHATOMIC) {
            self.reserve_highatomic_pageblock(slot, pfn, req.order);
        }
        pfn
    }

    /// Gives one HighAtomic pageblock of the request's zones back to its
    /// migrate type; without `force` every zone keeps its last one.
    fn unreserve_highatomic(&self, req: &Request, force: bool) -> bool {
        let zl = &self.zonelists[req.node];
        let n = if req.gfp.contains(Gfp::THISNODE) {
            zl.local
        } else {
            zl.len
        };
        self.unreserve_highatomic_pageblock(&zl.slots[..n as usize], req.zone, req.mt, force)
    }

    /// Marks a fresh block allocated; zeroes it and builds compound tails if
    /// the mask asks.
    #[inline]
    fn prep_new_page(&self, pfn: u64, req: &Request) {
        let head = self.mm.frame_unchecked(pfn);
        let comp = req.gfp.contains(Gfp::COMP) && req.order > 0;
        head.set(
            FrameState::Allocated,
            req.order,
            if comp { flags::COMPOUND_HEAD } else { 0 },
            req.mt,
        );
        if comp {
            for i in 1..(1u64 << req.order) {
                let t = self.mm.frame_unchecked(pfn + i);
                t.set(FrameState::Tail, 0, flags::COMPOUND_TAIL, 0);
                t.private[0].store(pfn as usize, Relaxed);
            }
        }
        if req.gfp.contains(Gfp::ZERO) {
            let va = self.page_address(Pfn(pfn));
            // SAFETY: the block was just allocated to us and the direct map
            // covers it read-write.
            unsafe { core::ptr::write_bytes(va.as_ptr::<u8>(), 0, PAGE_SIZE << req.order) };
        }
    }

    /// Whether a warning at `site` for `gfp` is to be printed: the first
    /// one per allocator without `__GFP_NOWARN` (Linux's
    /// `WARN_ON_ONCE_GFP`; a call with `__GFP_NOWARN` neither prints nor
    /// uses up the one warning).
    pub(crate) fn first_warning(&self, site: OnceSite, gfp: Gfp) -> bool {
        let bit = site as u32;
        !gfp.contains(Gfp::NOWARN) && self.warned_once.fetch_or(bit, Relaxed) & bit == 0
    }

    /// Warns once per allocator for `site` ([`Self::first_warning`]).
    fn warn_once(&self, site: OnceSite, req: &Request, what: &str) {
        if self.first_warning(site, req.gfp) {
            self.platform().warn(format_args!(
                "WARNING: page allocation of order {} with {}: {what} (warned once)",
                req.order, req.gfp
            ));
        }
    }

    #[cold]
    #[inline(never)]
    fn alloc_slowpath(&self, req: &Request) -> Result<u64, AllocError> {
        self.stats.alloc_slow.fetch_add(1, Relaxed);
        let gfp = req.gfp;
        let mut flags = AllocFlags::from_gfp_order(gfp, req.order);
        if flags.has(AllocFlags::KSWAPD) {
            self.stats.kswapd_wake.fetch_add(1, Relaxed);
        }
        if let Some(pfn) = self.attempt(req, flags) {
            return Ok(pfn);
        }
        // Inside direct reclaim (a shrinker allocating): no watermarks and no
        // reclaim again, as Linux's PF_MEMALLOC. Not for an interrupt that
        // landed on such a task (Linux's __gfp_pfmemalloc_flags: outside
        // interrupts, or serving a softirq).
        let in_reclaim = self.platform().in_memalloc() && {
            let ctx = self.platform().context();
            !ctx.in_interrupt() || ctx.softirq > 0
        };
        if AllocFlags::memalloc(gfp) || (in_reclaim && !gfp.contains(Gfp::NOMEMALLOC)) {
            // Linux's reserve_flags replace the mask's flags: no watermarks,
            // but no claim on the high-order atomic reserve either.
            flags = AllocFlags(AllocFlags::NO_WATERMARKS | (flags.0 & AllocFlags::KSWAPD));
            if let Some(pfn) = self.get_page_from_freelist(req, flags) {
                self.stats.alloc_no_watermarks.fetch_add(1, Relaxed);
                return Ok(pfn);
            }
        }
        if !gfp.allows_blocking() || in_reclaim {
            // Blocks cached on this CPU's lists cannot merge; give them back
            // if that needs no waiting (an interrupt may have landed inside
            // this CPU's own list section).
            self.try_drain_local_pages();
            let r = self.attempt(req, flags);
            if r.is_none() && gfp.contains(Gfp::NOFAIL) {
                // Linux: a __GFP_NOFAIL request that cannot reclaim fails
                // after WARN_ON_ONCE; one inside reclaim warns too (and
                // loops there; here it fails, as it cannot reclaim).
                if !gfp.allows_blocking() {
                    self.warn_once(
                        OnceSite::NoReclaim,
                        req,
                        "__GFP_NOFAIL without __GFP_DIRECT_RECLAIM fails like any other",
                    );
                } else {
                    self.warn_once(
                        OnceSite::InReclaim,
                        req,
                        "__GFP_NOFAIL inside direct reclaim (PF_MEMALLOC) cannot reclaim",
                    );
                }
            }
            return r.ok_or_else(|| self.no_memory(req, false, false));
        }

        let costly = req.order > PAGE_ALLOC_COSTLY_ORDER;
        let mut rounds = 0;
        loop {
            // Linux's __alloc_pages_direct_reclaim: reclaim and retry; on
            // failure give a reserved pageblock back (keeping the last) and
            // the per-CPU lists, and retry once more.
            let progress = self.direct_reclaim(gfp, req.order);
            if let Some(pfn) = self.attempt(req, flags) {
                return Ok(pfn);
            }
            self.unreserve_highatomic(req, false);
            self.drain_all_pages();
            if let Some(pfn) = self.attempt(req, flags) {
                return Ok(pfn);
            }
            // Linux: NORETRY's early exit leads to the __GFP_NOFAIL loop,
            // so NOFAIL wins.
            if gfp.contains(Gfp::NORETRY) && !gfp.contains(Gfp::NOFAIL) {
                return Err(self.no_memory(req, true, false));
            }
            if costly && !gfp.intersects(Gfp::RETRY_MAYFAIL | Gfp::NOFAIL) {
                return Err(self.no_memory(req, true, false));
            }
            rounds += 1;
            if progress == 0 || rounds >= MAX_RECLAIM_RETRIES {
                // should_reclaim_retry: before OOM, exhaust the high-order
                // atomic reserve, one pageblock per retry.
                if !self.unreserve_highatomic(req, true) {
                    break;
                }
            }
            self.stats.retry.fetch_add(1, Relaxed);
        }

        if gfp.contains(Gfp::NOFAIL) {
            // Linux: after OOM, __GFP_NOFAIL gets the min reserve and loops
            // (warning once about a costly order it is not prepared for).
            if costly {
                self.warn_once(
                    OnceSite::CostlyOrder,
                    req,
                    "__GFP_NOFAIL of a costly order (above 3)",
                );
            }
            flags.0 |= AllocFlags::MIN_RESERVE;
            loop {
                self.stats.nofail_wait.fetch_add(1, Relaxed);
                self.platform().relax();
                self.direct_reclaim(gfp, req.order);
                self.unreserve_highatomic(req, true);
                self.drain_all_pages();
                if let Some(pfn) = self.attempt(req, flags) {
                    return Ok(pfn);
                }
            }
        }
        // Linux's __alloc_pages_may_oom: no OOM kill for costly orders,
        // __GFP_RETRY_MAYFAIL or __GFP_THISNODE, or a lowmem-only request
        // (highest zone below Normal); and out_of_memory kills nothing for
        // a request without __GFP_FS (GFP_NOFS, GFP_NOIO): reclaim that could
        // not do file-system I/O is no reason to kill a task.
        let oom = !gfp.intersects(Gfp::RETRY_MAYFAIL | Gfp::THISNODE)
            && gfp.contains(Gfp::FS)
            && !costly
            && req.zone >= ZoneType::Normal;
        if oom {
            self.stats.oom.fetch_add(1, Relaxed);
        }
        Err(self.no_memory(req, true, oom))
    }

    /// One slow-path attempt; counts success below the min watermark.
    fn attempt(&self, req: &Request, flags: AllocFlags) -> Option<u64> {
        let pfn = self.get_page_from_freelist(req, flags)?;
        if flags.has(AllocFlags::MIN_RESERVE) {
            let slot = self.mm.frame_unchecked(pfn).zone_slot();
            let z = &self.zones[slot];
            if z.free_pages() < z.watermark(super::Watermark::Min) {
                self.stats.alloc_reserve.fetch_add(1, Relaxed);
            }
        }
        Some(pfn)
    }

    #[cold]
    #[inline(never)]
    fn no_memory(&self, req: &Request, reclaimed: bool, oom: bool) -> AllocError {
        self.stats.fail_nomem.fetch_add(1, Relaxed);
        let zl = &self.zonelists[req.node];
        let n = if req.gfp.contains(Gfp::THISNODE) {
            zl.local
        } else {
            zl.len
        };
        let mut free = 0;
        let mut largest: Option<u32> = None;
        for &slot in &zl.slots[..n as usize] {
            let z = &self.zones[slot as usize];
            if z.ztype > req.zone || !z.is_populated() {
                continue;
            }
            free += z.free_pages();
            largest = largest.max(z.largest_free_order());
        }
        let nm = NoMemory {
            order: req.order,
            gfp: req.gfp,
            highest_zone: req.zone,
            free_pages: free,
            largest_free_order: largest,
            reclaimed,
            oom,
        };
        let e = AllocError::NoMemory(nm);
        if !req.gfp.contains(Gfp::NOWARN) {
            self.platform().warn(format_args!("{e}"));
        }
        e
    }
}

/// Linux's `WARN_ON_ONCE` sites (bits of `PageAllocator::warned_once`):
/// each warns the first time only. The page allocator's are
/// `WARN_ON_ONCE_GFP` (see [`PageAllocator::first_warning`]); the slab's
/// is a plain one (its caller passes no `__GFP_NOWARN`).
#[derive(Clone, Copy, Debug)]
#[repr(u32)]
pub(crate) enum OnceSite {
    /// `__GFP_NOFAIL` without direct reclaim ran out of memory.
    NoReclaim = 1,
    /// `__GFP_NOFAIL` inside direct reclaim ran out of memory.
    InReclaim = 2,
    /// `__GFP_NOFAIL` of an order above `PAGE_ALLOC_COSTLY_ORDER` reached
    /// its retry loop.
    CostlyOrder = 4,
    /// An order above `MAX_PAGE_ORDER` (also kmalloc above
    /// `KMALLOC_MAX_SIZE`, which Linux hands to the page allocator).
    OrderTooLarge = 8,
    /// A `__GFP_ZERO` allocation from a cache with a constructor (Linux's
    /// `WARN_ON_ONCE(s->ctor && (flags & __GFP_ZERO))`, which Linux checks
    /// in `new_slab`; kmem at every such allocation).
    SlabCtorZero = 16,
}
