//! The boot-time allocator (Linux's memblock, reduced to what kmem needs).
//!
//! Before the buddy allocator exists, the frame records and per-CPU lists need
//! memory. [`EarlyAlloc`] hands out whole pages top-down from the usable
//! regions (keeping low, DMA-capable memory for those who need it) and
//! remembers what it took, so those pages are never given to the buddy lists.

use super::memmap::{MemoryMapError, Region, RegionKind};

/// Most distinct ranges the early allocator records.
const MAX_RANGES: usize = 16;

pub(crate) struct EarlyAlloc<'a> {
    regions: &'a [Region],
    /// Index of the region being carved, plus one (0: none left).
    cursor: usize,
    /// Lowest pfn taken so far in that region.
    top: u64,
    /// Pfn ranges taken, `[start, end)`.
    pub(crate) taken: [(u64, u64); MAX_RANGES],
    pub(crate) nr_taken: usize,
}

impl<'a> EarlyAlloc<'a> {
    pub(crate) fn new(regions: &'a [Region]) -> Self {
        EarlyAlloc {
            regions,
            cursor: regions.len(),
            top: u64::MAX,
            taken: [(0, 0); MAX_RANGES],
            nr_taken: 0,
        }
    }

    /// True if [`Self::alloc`] would take `pages` contiguous pages from the
    /// usable region it is carving now, without giving up the rest of it.
    pub(crate) fn fits(&self, pages: u64) -> bool {
        let mut cursor = self.cursor;
        let mut top = self.top;
        while cursor > 0 {
            let r = &self.regions[cursor - 1];
            if r.kind == RegionKind::Usable {
                let (first, last) = r.pfns();
                return top.min(last.0) >= first.0 + pages;
            }
            cursor -= 1;
            top = u64::MAX;
        }
        false
    }

    /// Takes `pages` contiguous pages; returns the first pfn.
    pub(crate) fn alloc(&mut self, pages: u64) -> Result<u64, MemoryMapError> {
        while self.cursor > 0 {
            let r = &self.regions[self.cursor - 1];
            let (first, last) = r.pfns();
            let top = self.top.min(last.0);
            if r.kind == RegionKind::Usable && top >= first.0 + pages {
                let start = top - pages;
                self.top = start;
                self.record(start, top)?;
                return Ok(start);
            }
            self.cursor -= 1;
            self.top = u64::MAX;
        }
        Err(MemoryMapError::NoRoomForMemmap)
    }

    fn record(&mut self, start: u64, end: u64) -> Result<(), MemoryMapError> {
        if self.nr_taken > 0 && self.taken[self.nr_taken - 1].0 == end {
            self.taken[self.nr_taken - 1].0 = start;
            return Ok(());
        }
        if self.nr_taken == MAX_RANGES {
            return Err(MemoryMapError::NoRoomForMemmap);
        }
        self.taken[self.nr_taken] = (start, end);
        self.nr_taken += 1;
        Ok(())
    }

    /// Pages taken in all.
    pub(crate) fn pages_taken(&self) -> u64 {
        self.taken[..self.nr_taken].iter().map(|(a, b)| b - a).sum()
    }

    /// Calls `f` for each sub-range of `[start, end)` not taken.
    pub(crate) fn for_each_free(&self, start: u64, end: u64, mut f: impl FnMut(u64, u64)) {
        let mut cur = start;
        while cur < end {
            // The nearest taken range that overlaps [cur, end).
            let next = self.taken[..self.nr_taken]
                .iter()
                .filter(|(a, b)| *b > cur && *a < end)
                .min_by_key(|(a, _)| *a);
            match next {
                Some(&(a, b)) => {
                    if a > cur {
                        f(cur, a);
                    }
                    cur = b;
                }
                None => {
                    f(cur, end);
                    cur = end;
                }
            }
        }
    }
}
