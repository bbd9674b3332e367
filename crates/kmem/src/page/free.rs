//! Free entry points, with Linux's `bad_page` checks made into errors.
//!
//! A free is checked before anything changes: the pfn must be RAM, head of
//! an allocation, of the order given. Otherwise the error says what the frame
//! really is (already free, inside another allocation, reserved, ...) and the
//! allocator is untouched.

use super::frame::{flags, Frame, FrameState};
use super::pcp::PCP_MAX_ORDER;
use super::PageAllocator;
use crate::addr::{Pfn, VirtAddr, MAX_PAGE_ORDER, PAGE_SIZE};
use crate::error::FreeError;
use crate::gfp::MigrateType;
use crate::platform::Platform;
use core::sync::atomic::Ordering::Relaxed;

impl<P: Platform> PageAllocator<P> {
    /// Linux's `__free_pages`: frees the block of `2^order` pages at `page`.
    #[inline]
    pub fn free_pages(&self, page: Pfn, order: u32) -> Result<(), FreeError> {
        let pfn = page.0;
        let Some(f) = self.mm.frame(pfn) else {
            return Err(self.free_error(FreeError::NotRam { pfn: page }));
        };
        let info = f.info();
        // One compare: an allocated head of exactly `order`, no flags, no
        // owner tag. An order beyond MAX_PAGE_ORDER would spill into the
        // flag bits of the expected word, so it takes the careful path too.
        if order > MAX_PAGE_ORDER
            || info & (Frame::INFO_STATE_ORDER_FLAGS | Frame::INFO_OWNER)
                != Frame::allocated_info(order)
        {
            return self.free_pages_careful(page, order);
        }
        let slot = f.zone_slot();
        if order <= PCP_MAX_ORDER && self.config().pcp_lists {
            // As Linux's `free_unref_page`: the list is the pageblock's
            // type, not the type the block was allocated with, so a page an
            // unmovable request took from a movable pageblock goes back to
            // movable users; the HighAtomic reserve's pages wait on the
            // movable list (draining files them back by pageblock type).
            let mt = match self.mm.pageblock_frame(f, pfn).pageblock_mt() {
                mt if mt < MigrateType::PCPTYPES => mt,
                _ => MigrateType::Movable.index(),
            };
            if self.free_pcp(f, pfn, order, slot, mt) {
                return Ok(());
            }
        }
        f.set(FrameState::Tail, 0, 0, 0);
        self.free_buddy(slot, pfn, order);
        Ok(())
    }

    /// The free path for anything but a plain allocated head: compound
    /// blocks, and every error.
    #[inline(never)]
    fn free_pages_careful(&self, page: Pfn, order: u32) -> Result<(), FreeError> {
        let pfn = page.0;
        let f = self.mm.frame_unchecked(pfn);
        if f.state() != FrameState::Allocated || f.order() != order {
            return Err(self.free_error(self.diagnose(page, order)));
        }
        if f.owner() != 0 {
            return Err(self.free_error(FreeError::Owned {
                pfn: page,
                owner: f.owner(),
            }));
        }
        if f.flags() & flags::COMPOUND_HEAD != 0 {
            for i in 1..(1u64 << order) {
                let t = self.mm.frame_unchecked(pfn + i);
                t.set(FrameState::Tail, 0, 0, 0);
                t.private[0].store(0, Relaxed);
            }
        }
        f.set(FrameState::Tail, 0, 0, 0);
        self.free_buddy(f.zone_slot(), pfn, order);
        Ok(())
    }

    /// Linux's `free_pages`: frees by direct-map address.
    pub fn free_pages_addr(&self, addr: VirtAddr, order: u32) -> Result<(), FreeError> {
        let pfn = self.addr_to_pfn(addr)?;
        self.free_pages(pfn, order)
    }

    /// Linux's `free_pages_exact`: frees what `alloc_pages_exact(size)` gave.
    /// Every page is checked first; on error nothing is freed.
    pub fn free_pages_exact(&self, addr: VirtAddr, size: usize) -> Result<(), FreeError> {
        let pfn = self.addr_to_pfn(addr)?;
        let n = size.max(1).div_ceil(PAGE_SIZE) as u64;
        for i in 0..n {
            let Some(f) = self.mm.frame(pfn.0 + i) else {
                return Err(self.free_error(FreeError::NotRam { pfn: pfn.add(i) }));
            };
            if f.state() != FrameState::Allocated || f.order() != 0 {
                return Err(self.free_error(self.diagnose(pfn.add(i), 0)));
            }
        }
        for i in 0..n {
            self.free_pages(pfn.add(i), 0)?;
        }
        Ok(())
    }

    /// Linux's `split_page`: turns an order-`order` allocation into `2^order`
    /// order-0 allocations, each freed on its own.
    pub fn split_page(&self, page: Pfn, order: u32) -> Result<(), FreeError> {
        let Some(f) = self.mm.frame(page.0) else {
            return Err(self.free_error(FreeError::NotRam { pfn: page }));
        };
        if f.state() != FrameState::Allocated || f.order() != order {
            return Err(self.free_error(self.diagnose(page, order)));
        }
        if f.flags() & flags::COMPOUND_HEAD != 0 {
            return Err(self.free_error(FreeError::Compound { pfn: page }));
        }
        let mt = f.migratetype_index();
        for i in 0..(1u64 << order) {
            self.mm
                .frame_unchecked(page.0 + i)
                .set(FrameState::Allocated, 0, 0, mt);
        }
        Ok(())
    }

    /// The head of the compound page containing `page` (itself if not a tail).
    pub fn compound_head(&self, page: Pfn) -> Pfn {
        match self.mm.frame(page.0) {
            Some(f) if f.flags() & flags::COMPOUND_TAIL != 0 => Pfn(f.compound_head_pfn()),
            _ => page,
        }
    }

    /// Order of the allocation headed by `page`, if it is one.
    pub fn allocation_order(&self, page: Pfn) -> Option<u32> {
        let f = self.mm.frame(page.0)?;
        (f.state() == FrameState::Allocated).then(|| f.order())
    }

    fn addr_to_pfn(&self, addr: VirtAddr) -> Result<Pfn, FreeError> {
        if !addr.is_page_aligned() {
            return Err(self.free_error(FreeError::Unaligned { addr }));
        }
        let pa = self
            .virt_to_phys(addr)
            .ok_or_else(|| self.free_error(FreeError::NotDirectMapped { addr }))?;
        Ok(pa.pfn())
    }

    #[cold]
    #[inline(never)]
    fn free_error(&self, e: FreeError) -> FreeError {
        self.stats.free_error.fetch_add(1, Relaxed);
        self.platform().warn(format_args!("{e}"));
        e
    }

    /// Says what `page` really is, for a free that does not match.
    #[cold]
    #[inline(never)]
    fn diagnose(&self, page: Pfn, order: u32) -> FreeError {
        let Some(f) = self.mm.frame(page.0) else {
            return FreeError::NotRam { pfn: page };
        };
        match f.state() {
            FrameState::Hole => FreeError::NotRam { pfn: page },
            FrameState::Reserved => FreeError::Reserved { pfn: page },
            FrameState::Buddy | FrameState::Pcp => FreeError::DoubleFree {
                pfn: page,
                free_order: f.order(),
            },
            FrameState::Allocated => FreeError::WrongOrder {
                pfn: page,
                allocated: f.order(),
                freed: order,
            },
            FrameState::Tail => {
                for o in 1..=MAX_PAGE_ORDER {
                    let head = page.0 & !((1u64 << o) - 1);
                    let Some(h) = self.mm.frame(head) else { break };
                    match h.state() {
                        FrameState::Allocated if h.order() >= o => {
                            return FreeError::NotHead {
                                pfn: page,
                                head: Pfn(head),
                                order: h.order(),
                            }
                        }
                        FrameState::Buddy | FrameState::Pcp if h.order() >= o => {
                            return FreeError::DoubleFree {
                                pfn: page,
                                free_order: h.order(),
                            }
                        }
                        _ => {}
                    }
                }
                FreeError::NotAllocated { pfn: page }
            }
        }
    }
}
