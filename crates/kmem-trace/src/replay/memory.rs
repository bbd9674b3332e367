//! Memory by kind, its peaks, and the machine's fragmentation over time.
//!
//! The replayer keeps page counts by *kind*:
//!
//! | kind | what | kept |
//! |---|---|---|
//! | `slab` | pages of kmem's slabs (all caches, kmalloc ones included) | sampled every [`SLAB_SAMPLE_EVENTS`] events |
//! | `kmalloc_large` | kmalloc above 8 KiB, straight from the page allocator | exactly, per event |
//! | `unmovable`, `movable`, `reclaimable`, `high_atomic` | `mm_page_alloc` pages, by migrate type | exactly |
//! | `vmalloc` | pages behind replayed vmap areas | exactly |
//!
//! Page events are Linux's whole page traffic, including the pages Linux's own
//! slab and vmalloc took; kmem's slab and vmalloc take theirs from kmem's
//! page allocator, so `slab` and `vmalloc` are kmem's footprint for the same
//! objects, and the two overlap by Linux's slab/vmalloc pages.
//!
//! A [`Timeline`] keeps at most [`MAX_SAMPLES`] samples whatever the trace's
//! length: it starts one sample per millisecond of trace time and, when full,
//! drops every other sample and doubles the interval.
//!
//! Fragmentation is Linux's: the *fragmentation index* of
//! `/sys/kernel/debug/extfrag/extfrag_index` (`fragmentation_index()` in
//! `mm/vmstat.c`): for an order that cannot be served from a free block it
//! tends to 1 when failure is due to fragmentation and to 0 when due to lack of
//! memory; it is -1 when a free block of the order exists. And the *unusable
//! free space index* (`unusable_index()`): the share of free pages in blocks
//! smaller than the order. Both are computed over the buddy free lists of all
//! populated zones together, for order 3 (`PAGE_ALLOC_COSTLY_ORDER`) and
//! order 9 (a pageblock, a transparent huge page).

use kmem::page::PageAllocator;
use kmem::Platform;
use serde::Serialize;

/// Events between two slab footprint samples (a power of two).
pub const SLAB_SAMPLE_EVENTS: u64 = 1024;
/// Most samples a [`Timeline`] keeps.
pub const MAX_SAMPLES: usize = 1024;
/// Orders the fragmentation figures are computed for.
pub const FRAG_ORDERS: [u32; 2] = [3, 9];

/// Pages by kind; see the module comment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KindPages {
    /// kmem's slab pages.
    pub slab: u64,
    /// Large kmalloc blocks.
    pub kmalloc_large: u64,
    /// `mm_page_alloc` pages of migrate type Unmovable.
    pub unmovable: u64,
    /// ... Movable.
    pub movable: u64,
    /// ... Reclaimable.
    pub reclaimable: u64,
    /// ... HighAtomic (and any other type).
    pub high_atomic: u64,
    /// Pages behind vmap areas.
    pub vmalloc: u64,
}

impl KindPages {
    /// Names of the kinds, in field order.
    pub const NAMES: [&'static str; 7] = [
        "slab",
        "kmalloc_large",
        "unmovable",
        "movable",
        "reclaimable",
        "high_atomic",
        "vmalloc",
    ];

    /// The kinds as an array, in [`Self::NAMES`] order.
    pub fn as_array(&self) -> [u64; 7] {
        [
            self.slab,
            self.kmalloc_large,
            self.unmovable,
            self.movable,
            self.reclaimable,
            self.high_atomic,
            self.vmalloc,
        ]
    }

    /// Every kind together.
    pub fn total(&self) -> u64 {
        self.as_array().iter().sum()
    }

    /// Page-event pages of migrate type index `mt` (0 Unmovable, 1 Movable,
    /// 2 Reclaimable, anything else HighAtomic).
    #[inline]
    pub fn mt_mut(&mut self, mt: usize) -> &mut u64 {
        match mt {
            0 => &mut self.unmovable,
            1 => &mut self.movable,
            2 => &mut self.reclaimable,
            _ => &mut self.high_atomic,
        }
    }

    /// Kind-wise maximum.
    pub fn max(&self, o: &KindPages) -> KindPages {
        KindPages {
            slab: self.slab.max(o.slab),
            kmalloc_large: self.kmalloc_large.max(o.kmalloc_large),
            unmovable: self.unmovable.max(o.unmovable),
            movable: self.movable.max(o.movable),
            reclaimable: self.reclaimable.max(o.reclaimable),
            high_atomic: self.high_atomic.max(o.high_atomic),
            vmalloc: self.vmalloc.max(o.vmalloc),
        }
    }
}

/// Free-block figures of the buddy lists at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Fragmentation {
    /// Free pages on the buddy lists (per-CPU lists excluded).
    pub free_pages: u64,
    /// Largest order with a free block, if any.
    pub largest_free_order: Option<u32>,
    /// Fragmentation index per order of [`FRAG_ORDERS`] (-1: a block is free).
    pub index: [f64; 2],
    /// Unusable free space index per order of [`FRAG_ORDERS`] (0..=1).
    pub unusable: [f64; 2],
}

/// Linux's `fragmentation_index()` for `order` given free block counts by order.
pub fn fragmentation_index(blocks: &[u64], order: u32) -> f64 {
    let total: u64 = blocks.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let suitable: u64 = blocks.iter().skip(order as usize).sum();
    if suitable > 0 {
        return -1.0;
    }
    let free_pages: u64 = blocks.iter().enumerate().map(|(o, n)| n << o).sum();
    let requested = 1u64 << order;
    // Linux works in thousandths with integer division; so does this.
    let idx = 1000i64 - ((1000 + free_pages * 1000 / requested) / total) as i64;
    idx as f64 / 1000.0
}

/// Linux's `unusable_free_index()` for `order`: share of free pages in blocks
/// too small for it.
pub fn unusable_index(blocks: &[u64], order: u32) -> f64 {
    let free_pages: u64 = blocks.iter().enumerate().map(|(o, n)| n << o).sum();
    if free_pages == 0 {
        return 0.0;
    }
    let suitable: u64 = blocks
        .iter()
        .enumerate()
        .skip(order as usize)
        .map(|(o, n)| n << o)
        .sum();
    (free_pages - suitable) as f64 / free_pages as f64
}

/// Free block counts by order, over every populated zone.
pub fn free_blocks<P: Platform>(pages: &PageAllocator<P>) -> [u64; kmem::addr::NR_PAGE_ORDERS] {
    let mut blocks = [0u64; kmem::addr::NR_PAGE_ORDERS];
    for z in pages.populated_zones() {
        for (o, b) in blocks.iter_mut().enumerate() {
            *b += u64::from(z.free_blocks(o));
        }
    }
    blocks
}

/// The fragmentation figures of `pages` now.
pub fn fragmentation<P: Platform>(pages: &PageAllocator<P>) -> Fragmentation {
    let blocks = free_blocks(pages);
    Fragmentation {
        free_pages: blocks.iter().enumerate().map(|(o, n)| n << o).sum(),
        largest_free_order: blocks.iter().rposition(|&n| n > 0).map(|o| o as u32),
        index: FRAG_ORDERS.map(|o| fragmentation_index(&blocks, o)),
        unusable: FRAG_ORDERS.map(|o| unusable_index(&blocks, o)),
    }
}

/// One point of the timeline.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Sample {
    /// Trace time since the first event, in seconds.
    pub t: f64,
    /// Events replayed so far.
    pub events: u64,
    /// Pages by kind.
    pub pages: KindPages,
    /// Fragmentation figures.
    pub frag: Fragmentation,
}

/// Samples over trace time, bounded; see the module comment.
#[derive(Clone, Debug)]
pub struct Timeline {
    samples: Vec<Sample>,
    interval_ns: u64,
    next_ns: u64,
}

impl Default for Timeline {
    fn default() -> Self {
        Timeline {
            samples: Vec::new(),
            interval_ns: 1_000_000,
            next_ns: 0,
        }
    }
}

impl Timeline {
    /// True if a sample is due at trace time `rel_ns` (since the first event).
    #[inline]
    pub fn due(&self, rel_ns: u64) -> bool {
        rel_ns >= self.next_ns
    }

    /// Records a sample taken at `rel_ns`.
    pub fn push(&mut self, rel_ns: u64, s: Sample) {
        self.samples.push(s);
        if self.samples.len() >= MAX_SAMPLES {
            let mut i = 0;
            self.samples.retain(|_| {
                i += 1;
                i % 2 == 1
            });
            self.interval_ns *= 2;
        }
        self.next_ns = (rel_ns / self.interval_ns + 1) * self.interval_ns;
    }

    /// Records the final sample (always kept).
    pub fn push_final(&mut self, s: Sample) {
        if self.samples.last().is_some_and(|l| l.events == s.events) {
            self.samples.pop();
        }
        self.samples.push(s);
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// Takes the samples out.
    pub fn into_samples(self) -> Vec<Sample> {
        self.samples
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_fragmentation_index() {
        // 8 free order-0 pages, nothing larger: an order-3 request fails
        // for fragmentation (index 1 - (1 + 1) / 8 = 0.75).
        let mut blocks = [0u64; 11];
        blocks[0] = 8;
        assert_eq!(fragmentation_index(&blocks, 3), 0.75);
        assert_eq!(unusable_index(&blocks, 3), 1.0);
        // A suitable block exists: -1.
        blocks[3] = 1;
        assert_eq!(fragmentation_index(&blocks, 3), -1.0);
        assert_eq!(unusable_index(&blocks, 3), 0.5);
        // Nothing free at all: 0 (lack of memory, not fragmentation).
        assert_eq!(fragmentation_index(&[0; 11], 3), 0.0);
        assert_eq!(unusable_index(&[0; 11], 3), 0.0);
    }

    #[test]
    fn timeline_stays_bounded() {
        let mut t = Timeline::default();
        let s = Sample {
            t: 0.0,
            events: 0,
            pages: KindPages::default(),
            frag: Fragmentation::default(),
        };
        let mut now = 0u64;
        for _ in 0..100_000 {
            if t.due(now) {
                t.push(now, s);
            }
            now += 100_000;
        }
        assert!(t.samples().len() < MAX_SAMPLES);
        assert!(t.samples().len() >= MAX_SAMPLES / 4);
    }
}
