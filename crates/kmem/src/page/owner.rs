//! Frame owner tags: which layer above the page allocator holds an
//! allocated block.
//!
//! A layer that allocates pages for its own bookkeeping or hands them out in
//! its own units tags the block's head frame ([`super::Frame::set_owner`]);
//! a free, a `kfree` or a DMA mapping of the block then knows whose it is
//! and refuses what is not its own (a `kfree` of a vmalloc page, a
//! `vfree` of a slab). 0 means the page allocator's own caller. Every tag
//! kmem uses is defined here, once, so that no two layers pick the same byte;
//! the layers re-export theirs under Linux-style names (`OWNER_SLAB`, ...).

/// A slab's head frame (kmalloc and `kmem_cache` objects).
pub const SLAB: u8 = 0x51;
/// A large kmalloc block's head frame (above `KMALLOC_MAX_CACHE_SIZE`).
pub const KMALLOC_LARGE: u8 = 0x52;
/// An emptied `SLAB_TYPESAFE_BY_RCU` slab waiting for a grace period.
pub const SLAB_RCU: u8 = 0x53;
/// A sheaf's block (one CPU's array of free objects of one cache).
pub const SHEAF: u8 = 0x54;
/// A page mapped and owned by a vmalloc area.
pub const VMALLOC: u8 = 0x56;
/// A page-table frame.
pub const PAGE_TABLE: u8 = 0x57;
/// A page holding vmalloc's area records.
pub const VMAP_AREA: u8 = 0x58;
/// The head frame of a `dma_alloc_coherent` block.
pub const DMA_COHERENT: u8 = 0x44;
/// Blocks of the swiotlb bounce pool and its slot records.
pub const SWIOTLB: u8 = 0x45;
/// Pages holding DMA debug entries and buckets.
pub const DMA_DEBUG: u8 = 0x46;
/// The head frame of a DMA pool page.
pub const DMA_POOL: u8 = 0x47;
/// Pages holding a scatter-gather table.
pub const SG_TABLE: u8 = 0x48;

/// Every tag with what a block so tagged is, for reports.
pub const TAGS: [(u8, &str); 12] = [
    (SLAB, "a slab page (kmalloc or kmem_cache objects)"),
    (KMALLOC_LARGE, "a large kmalloc buffer"),
    (
        SLAB_RCU,
        "an empty SLAB_TYPESAFE_BY_RCU slab waiting for a grace period",
    ),
    (SHEAF, "a slab sheaf (a CPU's array of free objects)"),
    (VMALLOC, "a page of a vmalloc area"),
    (PAGE_TABLE, "a page table"),
    (VMAP_AREA, "vmalloc's area records"),
    (DMA_COHERENT, "DMA coherent memory"),
    (SWIOTLB, "the swiotlb bounce pool"),
    (DMA_DEBUG, "DMA debug entries"),
    (DMA_POOL, "a DMA pool page"),
    (SG_TABLE, "a scatter-gather table"),
];

/// What a block with owner tag `tag` is, if kmem knows the tag (0, the
/// page allocator's own callers, is not in the table).
pub fn describe(tag: u8) -> Option<&'static str> {
    TAGS.iter().find(|t| t.0 == tag).map(|t| t.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_distinct_and_not_zero() {
        for (i, a) in TAGS.iter().enumerate() {
            assert_ne!(a.0, 0, "{}", a.1);
            for b in &TAGS[i + 1..] {
                assert_ne!(a.0, b.0, "{} and {} share a tag", a.1, b.1);
            }
        }
        assert_eq!(describe(SHEAF), Some(TAGS[3].1));
        assert_eq!(describe(0), None);
    }
}
