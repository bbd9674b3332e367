//! Physical RAM as a memfd, and the direct map as one mapping of it.
//!
//! A hosted machine needs memory that behaves like a physical address space:
//! pages that can be mapped at more than one virtual address (the direct map
//! now, vmalloc later), ranges that exist and ranges that do not.
//!
//! - **Backing.** One memfd holds every page listed in the memory map, usable
//!   and reserved alike, packed back to back in address order. Holes get no
//!   backing. Only whole frames inside a region are backed (as
//!   [`Region::pfns`] counts them); a partial frame at a region's edge is not.
//! - **Direct map.** One `PROT_NONE`, `MAP_NORESERVE` anonymous reservation
//!   covers physical `[0, max_phys)` rounded up to 2 MiB, and starts on a
//!   2 MiB boundary. Each region's memfd segment is then mapped over it with
//!   `MAP_SHARED | MAP_FIXED` at `base + region.start`, read and write. Holes
//!   keep the reservation's `PROT_NONE`, so touching one faults as it would on
//!   real hardware, and nothing else can be mapped there by accident.
//! - **Other views.** [`Ram::memfd_offset`] says where a physical page lives in
//!   the memfd, so vmalloc can map the same page a second time with
//!   `mmap(fd, offset)`.
//!
//! Dropping the [`Ram`] unmaps the whole reservation (and with it every
//! segment) and closes the memfd. Whoever handed out pointers into the direct
//! map must be gone by then; [`crate::Machine`] orders its fields for that.

use kmem::addr::PhysAddr;
use kmem::page::memmap::Region;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
use rustix::mm::{mmap, mmap_anonymous, munmap, MapFlags, ProtFlags};
use std::ffi::c_void;
use std::io;

/// Alignment and size granule of the direct-map reservation: the largest
/// block the page allocator hands out (4 MiB, order MAX_PAGE_ORDER), so that
/// a block aligned in physical memory is aligned in the direct map too
/// (kmalloc promises alignment up to its 4 MiB limit).
const DIRECT_MAP_ALIGN: usize = 4 << 20;

/// One backed run of physical memory: `[start, end)` lives in the memfd at
/// `memfd_offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    start: u64,
    end: u64,
    memfd_offset: u64,
}

/// Physical RAM of a hosted machine: a memfd plus the direct map over it.
pub struct Ram {
    fd: OwnedFd,
    /// Start of the direct map (physical address 0), 2 MiB aligned.
    base: usize,
    /// Length of the direct-map reservation.
    len: usize,
    max_phys: u64,
    total_bytes: u64,
    regions: Vec<Region>,
    /// Backed runs, sorted by `start`, disjoint.
    segments: Vec<Segment>,
}

// SAFETY: `Ram` owns its mappings and fd; the raw addresses it stores are plain
// numbers, and none of its methods mutate state after construction.
unsafe impl Send for Ram {}
// SAFETY: as above; all `&self` methods only read immutable fields.
unsafe impl Sync for Ram {}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl Ram {
    /// Builds RAM for a memory map: a memfd as large as all listed regions'
    /// whole frames, and the direct map over `[0, max_phys)`.
    ///
    /// Regions may come in any order but must not overlap (an
    /// `InvalidInput` error otherwise). An empty map gives a machine with a
    /// 2 MiB reservation and no backed page.
    pub fn new(regions: &[Region]) -> io::Result<Ram> {
        // Whole frames of each region, sorted, checked for overlap.
        let mut runs: Vec<(u64, u64)> = regions
            .iter()
            .filter(|r| !r.is_empty())
            .map(|r| {
                let (a, b) = r.pfns();
                (a.phys().0, b.phys().0)
            })
            .filter(|(a, b)| b > a)
            .collect();
        runs.sort_unstable();
        for w in runs.windows(2) {
            if w[0].1 > w[1].0 {
                return Err(invalid(format!(
                    "memory map regions overlap: [{:#x}, {:#x}) and [{:#x}, {:#x})",
                    w[0].0, w[0].1, w[1].0, w[1].1
                )));
            }
        }
        let max_phys = regions
            .iter()
            .filter(|r| !r.is_empty())
            .map(|r| r.end.0)
            .max()
            .unwrap_or(0);
        let len = usize::try_from(max_phys)
            .ok()
            .and_then(|m| m.max(1).checked_next_multiple_of(DIRECT_MAP_ALIGN))
            .ok_or_else(|| invalid(format!("physical address space {max_phys:#x} too large")))?;

        let mut segments = Vec::with_capacity(runs.len());
        let mut total_bytes = 0u64;
        for (start, end) in runs {
            segments.push(Segment {
                start,
                end,
                memfd_offset: total_bytes,
            });
            total_bytes += end - start;
        }

        let fd = memfd_create("kmem-ram", MemfdFlags::CLOEXEC)?;
        ftruncate(&fd, total_bytes)?;

        let base = reserve_aligned(len, DIRECT_MAP_ALIGN)?;

        // From here on, Drop cleans up whatever happens.
        let ram = Ram {
            fd,
            base,
            len,
            max_phys,
            total_bytes,
            regions: regions.to_vec(),
            segments,
        };
        for seg in &ram.segments {
            // SAFETY: the target range lies inside our own reservation (every
            // segment ends at or below max_phys <= len), so MAP_FIXED replaces
            // only pages this `Ram` owns.
            unsafe {
                mmap(
                    (ram.base + seg.start as usize) as *mut c_void,
                    (seg.end - seg.start) as usize,
                    ProtFlags::READ | ProtFlags::WRITE,
                    MapFlags::SHARED | MapFlags::FIXED,
                    &ram.fd,
                    seg.memfd_offset,
                )?;
            }
        }
        Ok(ram)
    }

    /// Virtual address of physical address 0 (Linux's `PAGE_OFFSET`). The
    /// direct map covers `[offset, offset + max_phys)`; it is 2 MiB aligned.
    #[inline]
    pub fn direct_map_offset(&self) -> usize {
        self.base
    }

    /// Length of the direct-map reservation: `max_phys` rounded up to 2 MiB.
    pub fn direct_map_len(&self) -> usize {
        self.len
    }

    /// One past the highest physical address of any region.
    pub fn max_phys(&self) -> u64 {
        self.max_phys
    }

    /// Bytes of backing in the memfd: all whole frames of all regions.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// The memory map this RAM was built from, as given.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// The memfd holding every backed page. Map `memfd_offset(pa)` of it to
    /// get another view of the page at `pa`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Where the byte at `pa` lives in the memfd, or `None` if `pa` is in a
    /// hole (or in a partial frame at a region's edge).
    pub fn memfd_offset(&self, pa: PhysAddr) -> Option<u64> {
        let pa = pa.0;
        let i = self.segments.partition_point(|s| s.end <= pa);
        let seg = self.segments.get(i)?;
        (seg.start <= pa).then(|| seg.memfd_offset + (pa - seg.start))
    }

    /// True if `pa` is backed, i.e. can be read and written through the direct
    /// map without faulting.
    pub fn is_backed(&self, pa: PhysAddr) -> bool {
        self.memfd_offset(pa).is_some()
    }

    /// The direct-map address of `pa`, whether backed or not.
    #[inline]
    pub fn phys_to_virt(&self, pa: PhysAddr) -> *mut u8 {
        (self.base + pa.0 as usize) as *mut u8
    }

    /// The backed runs as `[start, end)` physical ranges, in address order.
    pub fn backed_ranges(&self) -> impl Iterator<Item = (PhysAddr, PhysAddr)> + '_ {
        self.segments
            .iter()
            .map(|s| (PhysAddr(s.start), PhysAddr(s.end)))
    }
}

impl Drop for Ram {
    fn drop(&mut self) {
        // SAFETY: the reservation is ours; unmapping it also removes every
        // memfd segment mapped inside it. Errors cannot be reported from drop
        // and would leave only address space behind.
        let _ = unsafe { munmap(self.base as *mut c_void, self.len) };
    }
}

impl std::fmt::Debug for Ram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ram")
            .field("direct_map_offset", &format_args!("{:#x}", self.base))
            .field("max_phys", &format_args!("{:#x}", self.max_phys))
            .field("total_bytes", &self.total_bytes)
            .field("segments", &self.segments.len())
            .finish()
    }
}

/// Reserves `len` bytes of inaccessible address space (PROT_NONE,
/// MAP_NORESERVE) starting on an `align` boundary: one granule more is
/// reserved, then both ends are trimmed. Returns the start.
pub(crate) fn reserve_aligned(len: usize, align: usize) -> io::Result<usize> {
    let span = len + align;
    // SAFETY: a fresh anonymous reservation at an address of the kernel's
    // choosing touches no existing memory.
    let raw = unsafe {
        mmap_anonymous(
            std::ptr::null_mut(),
            span,
            ProtFlags::empty(),
            MapFlags::PRIVATE | MapFlags::NORESERVE,
        )?
    } as usize;
    let base = raw.next_multiple_of(align);
    let head = base - raw;
    let tail = span - head - len;
    // SAFETY: both trimmed pieces lie inside the reservation just made,
    // which nothing else refers to yet.
    unsafe {
        if head > 0 {
            munmap(raw as *mut c_void, head)?;
        }
        if tail > 0 {
            munmap((base + len) as *mut c_void, tail)?;
        }
    }
    Ok(base)
}
