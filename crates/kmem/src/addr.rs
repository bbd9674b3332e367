//! Addresses and sizes: physical and virtual addresses, page frame numbers, orders.
//!
//! Everything here is plain arithmetic on x86-64 with 4 KiB pages. `Pfn` is the
//! currency of the page allocator (Linux's `struct page *`): a frame number whose
//! record is found in O(1) through the memory map.

use core::fmt;

/// log2 of the page size.
pub const PAGE_SHIFT: u32 = 12;
/// Size of a base page (4 KiB).
pub const PAGE_SIZE: usize = 1 << PAGE_SHIFT;
/// The largest buddy order: blocks of 2^10 pages (4 MiB).
pub const MAX_PAGE_ORDER: u32 = 10;
/// Number of buddy orders, `0..=MAX_PAGE_ORDER`.
pub const NR_PAGE_ORDERS: usize = MAX_PAGE_ORDER as usize + 1;
/// Orders above this are "costly": reclaim gives up on them sooner.
pub const PAGE_ALLOC_COSTLY_ORDER: u32 = 3;
/// Pageblock order (2 MiB), the unit of migrate-type grouping.
pub const PAGEBLOCK_ORDER: u32 = 9;
/// Pages per pageblock.
pub const PAGEBLOCK_NR_PAGES: u64 = 1 << PAGEBLOCK_ORDER;

/// A physical address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PhysAddr(pub u64);

/// A virtual address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct VirtAddr(pub usize);

/// A page frame number: physical address >> PAGE_SHIFT.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pfn(pub u64);

impl PhysAddr {
    /// The frame containing this address.
    pub const fn pfn(self) -> Pfn {
        Pfn(self.0 >> PAGE_SHIFT)
    }
    /// The raw value.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
    /// Offset within its page.
    pub const fn page_offset(self) -> usize {
        (self.0 as usize) & (PAGE_SIZE - 1)
    }
}

impl VirtAddr {
    /// The raw value.
    pub const fn as_usize(self) -> usize {
        self.0
    }
    /// The address as a raw pointer.
    pub const fn as_ptr<T>(self) -> *mut T {
        self.0 as *mut T
    }
    /// Builds an address from a pointer.
    pub fn from_ptr<T>(p: *const T) -> Self {
        VirtAddr(p as usize)
    }
    /// True if aligned to a page.
    pub const fn is_page_aligned(self) -> bool {
        self.0 & (PAGE_SIZE - 1) == 0
    }
}

impl Pfn {
    /// First byte of the frame. Only for frames below 2^52 (every frame a
    /// memory map holds): a larger number loses its top bits here and names
    /// another frame, so a frame number from outside goes through
    /// [`Self::checked_phys`].
    pub const fn phys(self) -> PhysAddr {
        PhysAddr(self.0 << PAGE_SHIFT)
    }
    /// First byte of the frame, or `None` for a frame number of 2^52 or
    /// more, whose address does not fit in 64 bits.
    pub const fn checked_phys(self) -> Option<PhysAddr> {
        if self.0 > u64::MAX >> PAGE_SHIFT {
            None
        } else {
            Some(PhysAddr(self.0 << PAGE_SHIFT))
        }
    }
    /// The raw value.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
    /// The frame `n` frames further on.
    pub const fn add(self, n: u64) -> Pfn {
        Pfn(self.0 + n)
    }
}

impl fmt::Debug for PhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhysAddr({:#x})", self.0)
    }
}
impl fmt::Display for PhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}
impl fmt::Debug for VirtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VirtAddr({:#x})", self.0)
    }
}
impl fmt::Display for VirtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}
impl fmt::Debug for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pfn({:#x})", self.0)
    }
}
impl fmt::Display for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Linux's `get_order`: the smallest order whose block holds `size` bytes
/// (`get_order(0)` is 0 here; Linux leaves it undefined).
pub const fn get_order(size: usize) -> u32 {
    if size <= PAGE_SIZE {
        return 0;
    }
    let pages = (size - 1) >> PAGE_SHIFT;
    usize::BITS - pages.leading_zeros()
}

/// Number of pages in a block of `order`.
pub const fn order_pages(order: u32) -> u64 {
    1 << order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_order_matches_linux() {
        assert_eq!(get_order(1), 0);
        assert_eq!(get_order(4096), 0);
        assert_eq!(get_order(4097), 1);
        assert_eq!(get_order(8192), 1);
        assert_eq!(get_order(8193), 2);
        assert_eq!(get_order(4 << 20), 10);
        assert_eq!(get_order((4 << 20) + 1), 11);
    }

    #[test]
    fn pfn_round_trip() {
        let pa = PhysAddr(0x1234_5678);
        assert_eq!(pa.pfn(), Pfn(0x12345));
        assert_eq!(pa.pfn().phys(), PhysAddr(0x1234_5000));
        assert_eq!(pa.page_offset(), 0x678);
    }
}
