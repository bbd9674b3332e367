//! DMA API debugging, like Linux's `CONFIG_DMA_API_DEBUG`.
//!
//! Every mapping and coherent allocation gets an *entry*: device, bus
//! address, CPU physical address, size, direction, type (single, sg,
//! coherent), who owns the buffer right now (device or CPU), and the call
//! site that made it. Unmaps, frees and syncs are checked against the entry;
//! a broken rule is reported through [`Platform::warn`] in Linux's words
//! (`DMA-API: <driver> <device>: device driver frees DMA memory with
//! different size [device address=...] ...`) followed by the call site and
//! where the mapping was made, and is returned as [`DmaError::Api`].
//!
//! Rules checked:
//! - unmap or free of an address the device has not mapped (a double unmap
//!   says where the first unmap happened), with a different size,
//!   direction, type or CPU address; an sg unmap with a different entry
//!   count;
//! - sync of an address not mapped, beyond the mapping, or in another
//!   direction;
//! - CPU access to a streaming buffer the device owns (between a map or
//!   `sync_for_device` and the next `sync_for_cpu` or unmap), through the
//!   explicit hook [`super::dma_cpu_access`] drivers call before touching a
//!   mapped buffer;
//! - device access (the simulated engine, [`super::engine`]) to bus
//!   addresses not mapped for it, against the mapping's direction, or to a
//!   buffer the CPU owns;
//! - mappings still live when a device is released.
//!
//! # Storage
//! Entries are 64 bytes, 64 to a page, in pages from the page allocator: a
//! preallocated set, grown a page at a time with `GFP_ATOMIC` (mappings are
//! made in interrupt handlers) up to [`MAX_DEBUG_ENTRIES`]. If memory runs
//! out debugging turns itself off, as Linux's does. Entries are found by
//! bus address through 1024 hash buckets (one page of `u32` heads); a list
//! of live entries serves the overlap searches (CPU access, device access,
//! teardown), which cost O(live mappings). Everything is under one platform
//! lock.

use super::device::Device;
use super::{DmaAddr, DmaDirection, DmaError, OWNER_DMA_DEBUG};
use crate::addr::{Pfn, PAGE_SHIFT, PAGE_SIZE};
use crate::gfp::{Gfp, GFP_ATOMIC, GFP_KERNEL};
use crate::page::PageAllocator;
use crate::platform::Platform;
use core::fmt;
use core::panic::Location;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

/// Most entries the table grows to (Linux preallocates this many).
pub const MAX_DEBUG_ENTRIES: usize = 1 << 16;
const ENTRY_SIZE: usize = 64;
const PER_PAGE: usize = PAGE_SIZE / ENTRY_SIZE;
const MAX_CHUNKS: usize = MAX_DEBUG_ENTRIES / PER_PAGE;
const NBUCKETS: usize = PAGE_SIZE / 4;
const NIL: u32 = u32::MAX;
/// Recent unmaps remembered to recognise a double unmap.
const RECENT: usize = 32;

/// How a mapping was made (Linux's `dma_debug_*` types; `dma_map_page` and
/// `dma_map_single` are one type, as in current Linux).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MapType {
    /// `dma_map_single` / `dma_map_page`.
    Single = 0,
    /// `dma_map_sg`.
    Sg = 1,
    /// `dma_alloc_coherent`.
    Coherent = 2,
}

impl MapType {
    /// dma-debug's name for it.
    pub const fn name(self) -> &'static str {
        match self {
            MapType::Single => "single",
            MapType::Sg => "scatter-gather",
            MapType::Coherent => "coherent",
        }
    }
    fn from_bits(b: u8) -> MapType {
        match b {
            0 => MapType::Single,
            1 => MapType::Sg,
            _ => MapType::Coherent,
        }
    }
}

/// Who may touch a streaming buffer right now.
pub(crate) const OWNER_SHARED: u8 = 0;
pub(crate) const OWNER_DEVICE: u8 = 1;
pub(crate) const OWNER_CPU: u8 = 2;

const F_IN_USE: u8 = 1;
const F_BOUNCED: u8 = 2;

/// One mapping or coherent allocation.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    pub bus: u64,
    pub paddr: u64,
    pub cpu_addr: usize,
    pub site: Option<&'static Location<'static>>,
    pub size: u32,
    pub dev_id: u32,
    pub sg_call_ents: u32,
    pub sg_mapped_ents: u32,
    next: u32,
    lprev: u32,
    lnext: u32,
    pub kind: u8,
    pub dir: u8,
    pub owner: u8,
    flags: u8,
}

const _: () = assert!(core::mem::size_of::<Entry>() == ENTRY_SIZE);

impl Entry {
    /// A new entry for a mapping of `dev`.
    pub(crate) fn new(
        dev_id: u32,
        kind: MapType,
        bus: DmaAddr,
        paddr: u64,
        size: usize,
        dir: DmaDirection,
        site: &'static Location<'static>,
    ) -> Entry {
        Entry {
            bus: bus.0,
            paddr,
            cpu_addr: 0,
            site: Some(site),
            size: size as u32,
            dev_id,
            sg_call_ents: 0,
            sg_mapped_ents: 0,
            next: NIL,
            lprev: NIL,
            lnext: NIL,
            kind: kind as u8,
            dir: dir as u8,
            owner: if kind == MapType::Coherent {
                OWNER_SHARED
            } else {
                OWNER_DEVICE
            },
            flags: F_IN_USE,
        }
    }
    pub(crate) fn bounced(mut self, yes: bool) -> Entry {
        if yes {
            self.flags |= F_BOUNCED;
        }
        self
    }
    pub(crate) fn map_type(&self) -> MapType {
        MapType::from_bits(self.kind)
    }
    pub(crate) fn direction(&self) -> DmaDirection {
        DmaDirection::from_bits(self.dir)
    }
    pub(crate) fn is_bounced(&self) -> bool {
        self.flags & F_BOUNCED != 0
    }
    fn contains(&self, bus: u64, len: u64) -> bool {
        bus >= self.bus && bus + len <= self.bus + self.size as u64
    }
}

/// A broken DMA API rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    /// `dma_map_single` of memory outside the direct map (refused).
    MapNotDirect {
        /// The CPU address given.
        addr: usize,
        /// Its length.
        len: usize,
        /// It lies in the vmalloc range.
        vmalloc: bool,
    },
    /// Unmap or free of an address the device has no mapping at.
    NotMapped {
        /// The function was a free (`dma_free_coherent`), not an unmap.
        free: bool,
        /// Where the same address was last unmapped, if recently: a double
        /// unmap.
        unmapped_at: Option<&'static Location<'static>>,
    },
    /// Unmapped with another size than mapped.
    WrongSize {
        /// Size mapped.
        map_size: usize,
        /// Size given to the unmap.
        unmap_size: usize,
    },
    /// Unmapped with the wrong function (`dma_unmap_single` of an sg
    /// segment, `dma_free_coherent` of a streaming mapping, ...).
    WrongType {
        /// How it was mapped.
        mapped: MapType,
        /// How it was unmapped.
        unmapped: MapType,
    },
    /// Unmapped with another direction than mapped.
    WrongDirection {
        /// Direction mapped.
        mapped: DmaDirection,
        /// Direction given to the unmap.
        unmapped: DmaDirection,
    },
    /// `dma_free_coherent` with another CPU address than allocated.
    WrongCpuAddress {
        /// The CPU address allocated.
        alloc: usize,
        /// The CPU address given to the free.
        free: usize,
    },
    /// `dma_unmap_sg` with another entry count than `dma_map_sg` was given.
    WrongSgCount {
        /// Entries given to the map.
        map_count: usize,
        /// Entries given to the unmap.
        unmap_count: usize,
    },
    /// `dma_sync_sg_*` with another entry count than `dma_map_sg` was
    /// given.
    SyncWrongSgCount {
        /// Entries given to the map.
        map_count: usize,
        /// Entries given to the sync.
        sync_count: usize,
    },
    /// A scatterlist segment handed to the device is longer than its
    /// `max_segment_size` (mapped anyway, as Linux does).
    SgSegmentTooLong {
        /// The device's limit.
        max: u32,
    },
    /// A scatterlist segment handed to the device crosses its segment
    /// boundary (mapped anyway, as Linux does).
    SgSegmentAcrossBoundary {
        /// The device's boundary mask.
        boundary: u64,
    },
    /// Sync of an address the device has not mapped.
    SyncNotMapped,
    /// Sync past the end of the mapping.
    SyncOutOfRange {
        /// Size of the mapping.
        alloc_size: usize,
        /// Offset plus size of the sync.
        end: usize,
    },
    /// Sync with another direction than mapped.
    SyncWrongDirection {
        /// Direction mapped.
        mapped: DmaDirection,
        /// Direction given to the sync.
        synced: DmaDirection,
    },
    /// Sync, after [`Violation::SyncWrongDirection`], that moves data the
    /// mapping's direction says never moves that way: for the CPU, of a
    /// mapping only the device reads (`DMA_TO_DEVICE`); to the device, of one
    /// only the device writes (`DMA_FROM_DEVICE`).
    SyncAgainstMapping {
        /// Direction mapped.
        mapped: DmaDirection,
        /// Direction given to the sync.
        synced: DmaDirection,
        /// A sync for the CPU (else for the device).
        to_cpu: bool,
    },
    /// The CPU touched a buffer the device owns.
    CpuAccessDeviceOwned {
        /// CPU address touched.
        cpu_addr: usize,
        /// Bytes touched.
        len: usize,
        /// Direction of the mapping.
        dir: DmaDirection,
    },
    /// The device accessed a bus range no live mapping of it covers.
    DeviceAccessUnmapped {
        /// It was a write (device to memory).
        write: bool,
    },
    /// The device wrote a `DMA_TO_DEVICE` mapping or read a
    /// `DMA_FROM_DEVICE` one.
    DeviceAccessWrongDirection {
        /// It was a write.
        write: bool,
        /// Direction of the mapping.
        mapped: DmaDirection,
    },
    /// The device accessed a streaming buffer the CPU owns (synced for the
    /// CPU and not given back).
    DeviceAccessCpuOwned {
        /// It was a write.
        write: bool,
    },
    /// Mappings still live when the device was released.
    Leaked {
        /// How many.
        count: usize,
        /// Type of the one described.
        kind: MapType,
        /// Its direction.
        dir: DmaDirection,
    },
}

/// A report of a broken rule: what, by which device, where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebugReport {
    /// The rule broken.
    pub violation: Violation,
    /// The device's driver name.
    pub driver: &'static str,
    /// The device's name.
    pub device: &'static str,
    /// The bus address concerned.
    pub dev_addr: DmaAddr,
    /// The size concerned.
    pub size: usize,
    /// The call that broke the rule.
    pub site: &'static Location<'static>,
    /// Where the mapping concerned was made, if known.
    pub mapped_at: Option<&'static Location<'static>>,
}

impl fmt::Display for DebugReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DMA-API: {} {}: ", self.driver, self.device)?;
        let (a, sz) = (self.dev_addr, self.size);
        match self.violation {
            Violation::MapNotDirect { addr, len, vmalloc } => {
                let area = if vmalloc { "vmalloc" } else { "invalid" };
                write!(
                    f,
                    "device driver maps memory from {area} area [addr={addr:#x}] [len={len}]: a \
                     device sees bus (physical) addresses and this memory is not in the direct map, \
                     so it is not one physical run; map its pages with dma_map_sg() \
                     (sg_table_from_vmalloc() builds the list), or use kmalloc() or \
                     dma_alloc_coherent() memory"
                )?
            }
            Violation::NotMapped { free, unmapped_at } => {
                let _ = free;
                if a == super::DMA_MAPPING_ERROR {
                    // Linux's check_unmap says this of the error address.
                    f.write_str("device driver tries to free an invalid DMA memory address")?;
                } else {
                    write!(
                        f,
                        "device driver tries to free DMA memory it has not allocated [device address={a}] [size={sz} bytes]"
                    )?;
                }
                if let Some(l) = unmapped_at {
                    write!(f, " (double unmap: already unmapped at {l})")?;
                }
            }
            Violation::WrongSize {
                map_size,
                unmap_size,
            } => write!(
                f,
                "device driver frees DMA memory with different size [device address={a}] [map size={map_size} bytes] [unmap size={unmap_size} bytes]"
            )?,
            Violation::WrongType { mapped, unmapped } => write!(
                f,
                "device driver frees DMA memory with wrong function [device address={a}] [size={sz} bytes] [mapped as {}] [unmapped as {}]",
                mapped.name(),
                unmapped.name()
            )?,
            Violation::WrongDirection { mapped, unmapped } => write!(
                f,
                "device driver frees DMA memory with different direction [device address={a}] [size={sz} bytes] [mapped with {mapped}] [unmapped with {unmapped}]"
            )?,
            Violation::WrongCpuAddress { alloc, free } => write!(
                f,
                "device driver frees DMA memory with different CPU address [device address={a}] [size={sz} bytes] [cpu alloc address={alloc:#x}] [cpu free address={free:#x}]"
            )?,
            Violation::WrongSgCount {
                map_count,
                unmap_count,
            } => write!(
                f,
                "device driver frees DMA sg list with different entry count [map count={map_count}] [unmap count={unmap_count}]"
            )?,
            Violation::SyncWrongSgCount {
                map_count,
                sync_count,
            } => write!(
                f,
                "device driver syncs DMA sg list with different entry count [map count={map_count}] [sync count={sync_count}]"
            )?,
            Violation::SgSegmentTooLong { max } => write!(
                f,
                "mapping sg segment longer than device claims to support [len={sz}] [max={max}]"
            )?,
            Violation::SgSegmentAcrossBoundary { boundary } => write!(
                f,
                "mapping sg segment across boundary [start={a}] [end={:#018x}] [boundary={boundary:#018x}]",
                self.dev_addr.0.wrapping_add(sz as u64).wrapping_sub(1)
            )?,
            Violation::SyncNotMapped => write!(
                f,
                "device driver tries to sync DMA memory it has not allocated [device address={a}] [size={sz} bytes]"
            )?,
            Violation::SyncOutOfRange { alloc_size, end } => write!(
                f,
                "device driver syncs DMA memory outside allocated range [device address={a}] [allocation size={alloc_size} bytes] [sync offset+size={end}]"
            )?,
            Violation::SyncWrongDirection { mapped, synced } => write!(
                f,
                "device driver syncs DMA memory with different direction [device address={a}] [size={sz} bytes] [mapped with {mapped}] [synced with {synced}]"
            )?,
            Violation::SyncAgainstMapping {
                mapped,
                synced,
                to_cpu,
            } => write!(
                f,
                "device driver syncs device {} DMA memory {} [device address={a}] [size={sz} bytes] [mapped with {mapped}] [synced with {synced}]",
                if to_cpu { "read-only" } else { "write-only" },
                if to_cpu { "for cpu" } else { "to device" }
            )?,
            Violation::CpuAccessDeviceOwned { cpu_addr, len, dir } => write!(
                f,
                "cpu touching a DMA buffer the device owns [device address={a}] [size={sz} bytes] [mapped with {dir}] [cpu address={cpu_addr:#x}] [len={len}]: call dma_sync_single_for_cpu() (or unmap) before the CPU touches it, and dma_sync_single_for_device() before the device uses it again"
            )?,
            Violation::DeviceAccessUnmapped { write } => write!(
                f,
                "device {} bus address range not mapped for it [device address={a}] [size={sz} bytes] (an IOMMU would fault here)",
                if write { "writes to" } else { "reads from" }
            )?,
            Violation::DeviceAccessWrongDirection { write, mapped } => write!(
                f,
                "device {} a buffer mapped with {mapped} [device address={a}] [size={sz} bytes]",
                if write { "writes to" } else { "reads from" }
            )?,
            Violation::DeviceAccessCpuOwned { write } => write!(
                f,
                "device {} a DMA buffer the cpu owns [device address={a}] [size={sz} bytes]: the driver synced it for the cpu and did not call dma_sync_single_for_device()",
                if write { "writes to" } else { "reads from" }
            )?,
            Violation::Leaked { count, kind, dir } => write!(
                f,
                "device driver has pending DMA allocations while released from device [count={count}] One of leaked entries details: [device address={a}] [size={sz} bytes] [mapped with {dir}] [mapped as {}]",
                kind.name()
            )?,
        }
        write!(f, " at {}", self.site)?;
        if let Some(m) = self.mapped_at {
            write!(f, "; mapped at {m}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
struct Recent {
    dev_id: u32,
    bus: u64,
    site: Option<&'static Location<'static>>,
}

/// Everything under the debug lock.
struct DebugState {
    /// Direct-map address of the bucket page (0 when off).
    buckets: usize,
    chunks: [u32; MAX_CHUNKS],
    nchunks: usize,
    free: u32,
    nfree: usize,
    live: u32,
    nlive: usize,
    max_live: usize,
    recent: [Recent; RECENT],
    recent_pos: usize,
}

/// The debug tables of a [`super::Dma`].
pub struct DmaDebug<P: Platform> {
    enabled: AtomicBool,
    dmo: usize,
    state: lock_api::Mutex<P::Lock, DebugState>,
    errors: AtomicUsize,
}

impl<P: Platform> DmaDebug<P> {
    pub(crate) fn new(
        pages: &PageAllocator<P>,
        enabled: bool,
        prealloc: usize,
    ) -> Result<Self, DmaError> {
        let d = DmaDebug {
            enabled: AtomicBool::new(enabled),
            dmo: pages.platform().direct_map_offset(),
            state: lock_api::Mutex::new(DebugState {
                buckets: 0,
                chunks: [0; MAX_CHUNKS],
                nchunks: 0,
                free: NIL,
                nfree: 0,
                live: NIL,
                nlive: 0,
                max_live: 0,
                recent: [Recent {
                    dev_id: 0,
                    bus: 0,
                    site: None,
                }; RECENT],
                recent_pos: 0,
            }),
            errors: AtomicUsize::new(0),
        };
        if !enabled {
            return Ok(d);
        }
        let b = pages.alloc_pages(GFP_KERNEL, 0)?;
        Self::tag(pages, b);
        let buckets = pages.page_address(b).0;
        // SAFETY: a fresh page of NBUCKETS u32 heads.
        unsafe {
            core::slice::from_raw_parts_mut(buckets as *mut u32, NBUCKETS).fill(NIL);
        }
        d.state.lock().buckets = buckets;
        for _ in 0..prealloc.div_ceil(PER_PAGE).min(MAX_CHUNKS) {
            match pages.alloc_pages(GFP_KERNEL, 0) {
                Ok(p) => d.add_chunk(&mut d.state.lock(), pages, p),
                Err(e) => {
                    d.release(pages);
                    return Err(DmaError::NoMemory(e));
                }
            }
        }
        Ok(d)
    }

    fn tag(pages: &PageAllocator<P>, pfn: Pfn) {
        if let Some(f) = pages.frame(pfn) {
            f.set_owner(OWNER_DMA_DEBUG);
        }
    }

    fn add_chunk(&self, st: &mut DebugState, pages: &PageAllocator<P>, pfn: Pfn) {
        Self::tag(pages, pfn);
        let c = st.nchunks;
        st.chunks[c] = pfn.0 as u32;
        st.nchunks += 1;
        for i in (0..PER_PAGE).rev() {
            let idx = (c * PER_PAGE + i) as u32;
            let e = self.entry(st, idx);
            // SAFETY: a slot of the fresh chunk page.
            unsafe {
                e.write(Entry {
                    bus: 0,
                    paddr: 0,
                    cpu_addr: 0,
                    site: None,
                    size: 0,
                    dev_id: 0,
                    sg_call_ents: 0,
                    sg_mapped_ents: 0,
                    next: st.free,
                    lprev: NIL,
                    lnext: NIL,
                    kind: 0,
                    dir: 0,
                    owner: 0,
                    flags: 0,
                })
            };
            st.free = idx;
            st.nfree += 1;
        }
    }

    /// Gives every page back (teardown).
    pub(crate) fn release(&self, pages: &PageAllocator<P>) {
        let mut st = self.state.lock();
        let give = |pfn: Pfn| {
            if let Some(f) = pages.frame(pfn) {
                f.set_owner(0);
            }
            let _ = pages.free_pages(pfn, 0);
        };
        for i in 0..st.nchunks {
            give(Pfn(st.chunks[i] as u64));
        }
        if st.buckets != 0 {
            give(Pfn(((st.buckets - self.dmo) >> PAGE_SHIFT) as u64));
        }
        st.nchunks = 0;
        st.buckets = 0;
        st.free = NIL;
        st.live = NIL;
        st.nlive = 0;
        st.nfree = 0;
    }

    /// True while mappings are tracked and checked.
    #[inline]
    pub fn enabled(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    /// Turns checking off (it cannot be turned back on: mappings made
    /// meanwhile would be unknown).
    pub fn disable(&self) {
        self.enabled.store(false, Relaxed);
    }

    /// Rules broken so far (Linux's `error_count`).
    pub fn errors(&self) -> usize {
        self.errors.load(Relaxed)
    }

    /// Counts a rule broken that was reported elsewhere (pools).
    pub(crate) fn count_error(&self) {
        self.errors.fetch_add(1, Relaxed);
    }

    /// Live entries (mappings and coherent allocations tracked).
    pub fn live_entries(&self) -> usize {
        self.state.lock().nlive
    }

    /// Most entries live at once.
    pub fn max_live_entries(&self) -> usize {
        self.state.lock().max_live
    }

    /// Entries allocated (live or free).
    pub fn capacity(&self) -> usize {
        self.state.lock().nchunks * PER_PAGE
    }

    /// Live entries of the device with id `dev_id`.
    pub fn device_entries(&self, dev_id: u32) -> usize {
        let st = self.state.lock();
        let mut n = 0;
        self.walk_live(&st, |e| {
            if e.dev_id == dev_id {
                n += 1;
            }
            true
        });
        n
    }

    fn entry(&self, st: &DebugState, idx: u32) -> *mut Entry {
        let c = idx as usize / PER_PAGE;
        let base = self.dmo + ((st.chunks[c] as usize) << PAGE_SHIFT);
        (base + (idx as usize % PER_PAGE) * ENTRY_SIZE) as *mut Entry
    }

    fn bucket(&self, st: &DebugState, bus: u64) -> *mut u32 {
        let h = ((bus >> 6) ^ (bus >> 16) ^ (bus >> 26)) as usize % NBUCKETS;
        (st.buckets + h * 4) as *mut u32
    }

    /// Calls `f` on every live entry until it returns false.
    fn walk_live(&self, st: &DebugState, mut f: impl FnMut(&Entry) -> bool) -> Option<u32> {
        let mut i = st.live;
        while i != NIL {
            // SAFETY: live entries are valid records, read under the lock.
            let e = unsafe { &*self.entry(st, i) };
            if !f(e) {
                return Some(i);
            }
            i = e.lnext;
        }
        None
    }

    /// Records a new mapping. Grows the table a page at a time with
    /// `GFP_ATOMIC`; if that fails, debugging turns off.
    pub(crate) fn add(&self, pages: &PageAllocator<P>, e: Entry) {
        if !self.enabled() {
            return;
        }
        let mut st = self.state.lock();
        if st.free == NIL {
            if st.nchunks == MAX_CHUNKS {
                drop(st);
                self.out_of_entries(pages);
                return;
            }
            drop(st);
            let page = pages.alloc_pages(GFP_ATOMIC | Gfp::NOWARN, 0);
            st = self.state.lock();
            match page {
                Ok(p) if st.nchunks < MAX_CHUNKS => self.add_chunk(&mut st, pages, p),
                Ok(p) => {
                    let _ = pages.free_pages(p, 0);
                }
                Err(_) => {}
            }
            if st.free == NIL {
                drop(st);
                self.out_of_entries(pages);
                return;
            }
        }
        let idx = st.free;
        let slot = self.entry(&st, idx);
        // SAFETY: a free entry, taken under the lock.
        unsafe {
            st.free = (*slot).next;
            st.nfree -= 1;
            let b = self.bucket(&st, e.bus);
            let live = st.live;
            slot.write(Entry {
                next: *b,
                lprev: NIL,
                lnext: live,
                flags: e.flags | F_IN_USE,
                ..e
            });
            *b = idx;
            if live != NIL {
                (*self.entry(&st, live)).lprev = idx;
            }
        }
        st.live = idx;
        st.nlive += 1;
        st.max_live = st.max_live.max(st.nlive);
    }

    fn out_of_entries(&self, pages: &PageAllocator<P>) {
        if self.enabled.swap(false, Relaxed) {
            pages
                .platform()
                .warn(format_args!("DMA-API: debugging out of memory - disabling"));
        }
    }

    fn unlink(&self, st: &mut DebugState, idx: u32) -> Entry {
        let slot = self.entry(st, idx);
        // SAFETY: a live entry, unlinked under the lock.
        unsafe {
            let e = *slot;
            let mut p = self.bucket(st, e.bus);
            while *p != idx {
                p = &mut (*self.entry(st, *p)).next;
            }
            *p = e.next;
            if e.lprev != NIL {
                (*self.entry(st, e.lprev)).lnext = e.lnext;
            } else {
                st.live = e.lnext;
            }
            if e.lnext != NIL {
                (*self.entry(st, e.lnext)).lprev = e.lprev;
            }
            (*slot).flags = 0;
            (*slot).next = st.free;
            st.free = idx;
            st.nfree += 1;
            st.nlive -= 1;
            e
        }
    }

    /// The live entry of `dev_id` starting exactly at `bus` that an unmap
    /// of `size`, `dir`, `kind` means: drivers may map one address several
    /// times, so, as Linux's `bucket_find_exact`, the entry that matches in
    /// size, direction and type is preferred, then the first at `bus`.
    fn find_best(
        &self,
        st: &DebugState,
        dev_id: u32,
        bus: u64,
        size: usize,
        dir: DmaDirection,
        kind: MapType,
    ) -> Option<u32> {
        let mut first = None;
        // SAFETY: bucket chains hold live entries, read under the lock.
        unsafe {
            let mut i = *self.bucket(st, bus);
            while i != NIL {
                let e = &*self.entry(st, i);
                if e.dev_id == dev_id && e.bus == bus {
                    if e.size as usize == size && e.direction() == dir && e.map_type() == kind {
                        return Some(i);
                    }
                    first.get_or_insert(i);
                }
                i = e.next;
            }
        }
        first
    }

    /// The live entry of `dev_id` starting exactly at `bus`.
    fn find_exact(&self, st: &DebugState, dev_id: u32, bus: u64) -> Option<u32> {
        // SAFETY: bucket chains hold live entries, read under the lock.
        unsafe {
            let mut i = *self.bucket(st, bus);
            while i != NIL {
                let e = &*self.entry(st, i);
                if e.dev_id == dev_id && e.bus == bus {
                    return Some(i);
                }
                i = e.next;
            }
        }
        None
    }

    /// The live entry of `dev_id` that contains `bus`.
    fn find_containing(&self, st: &DebugState, dev_id: u32, bus: u64) -> Option<u32> {
        self.find_exact(st, dev_id, bus)
            .or_else(|| self.walk_live(st, |e| !(e.dev_id == dev_id && e.contains(bus, 1))))
    }

    fn remember_unmap(
        &self,
        st: &mut DebugState,
        dev_id: u32,
        bus: u64,
        site: &'static Location<'static>,
    ) {
        let pos = st.recent_pos;
        st.recent[pos % RECENT] = Recent {
            dev_id,
            bus,
            site: Some(site),
        };
        st.recent_pos = pos + 1;
    }

    fn recently_unmapped(
        &self,
        st: &DebugState,
        dev_id: u32,
        bus: u64,
    ) -> Option<&'static Location<'static>> {
        let n = st.recent_pos.min(RECENT);
        (1..=n)
            .map(|k| st.recent[(st.recent_pos - k) % RECENT])
            .find(|r| r.dev_id == dev_id && r.bus == bus)
            .and_then(|r| r.site)
    }

    /// Builds a report, prints it and counts it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn report(
        &self,
        dev: &Device<'_, P>,
        violation: Violation,
        dev_addr: DmaAddr,
        size: usize,
        site: &'static Location<'static>,
        mapped_at: Option<&'static Location<'static>>,
    ) -> DebugReport {
        let r = DebugReport {
            violation,
            driver: dev.driver(),
            device: dev.name(),
            dev_addr,
            size,
            site,
            mapped_at,
        };
        self.errors.fetch_add(1, Relaxed);
        dev.dma().pages.platform().warn(format_args!("{r}"));
        r
    }

    /// Checks and forgets the mapping at `bus` being undone. Returns the
    /// recorded entry (whose size and direction the caller then uses) and
    /// the first rule broken, each reported. `(None, None)` when debugging
    /// is off; `(None, Some(_))` when there is no such mapping.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn check_unmap(
        &self,
        dev: &Device<'_, P>,
        bus: DmaAddr,
        size: usize,
        dir: DmaDirection,
        kind: MapType,
        cpu_addr: Option<usize>,
        sg_count: Option<usize>,
        site: &'static Location<'static>,
    ) -> (Option<Entry>, Option<DebugReport>) {
        if !self.enabled() {
            return (None, None);
        }
        let mut st = self.state.lock();
        let Some(idx) = self.find_best(&st, dev.id(), bus.0, size, dir, kind) else {
            let unmapped_at = self.recently_unmapped(&st, dev.id(), bus.0);
            drop(st);
            let v = Violation::NotMapped {
                free: kind == MapType::Coherent,
                unmapped_at,
            };
            return (None, Some(self.report(dev, v, bus, size, site, None)));
        };
        // SAFETY: a live entry, read under the lock.
        let e = unsafe { *self.entry(&st, idx) };
        if e.map_type() != kind && (e.map_type() == MapType::Coherent || kind == MapType::Coherent)
        {
            // Freeing coherent memory as a streaming mapping or the other
            // way round would hand the wrong pages back: refuse.
            drop(st);
            let v = Violation::WrongType {
                mapped: e.map_type(),
                unmapped: kind,
            };
            return (None, Some(self.report(dev, v, bus, size, site, e.site)));
        }
        self.unlink(&mut st, idx);
        self.remember_unmap(&mut st, dev.id(), bus.0, site);
        drop(st);
        let mut first = None;
        let mut note = |r: DebugReport| {
            first.get_or_insert(r);
        };
        if e.map_type() != kind {
            note(self.report(
                dev,
                Violation::WrongType {
                    mapped: e.map_type(),
                    unmapped: kind,
                },
                bus,
                size,
                site,
                e.site,
            ));
        }
        if e.size as usize != size {
            note(self.report(
                dev,
                Violation::WrongSize {
                    map_size: e.size as usize,
                    unmap_size: size,
                },
                bus,
                size,
                site,
                e.site,
            ));
        }
        if kind != MapType::Coherent && e.direction() != dir {
            note(self.report(
                dev,
                Violation::WrongDirection {
                    mapped: e.direction(),
                    unmapped: dir,
                },
                bus,
                e.size as usize,
                site,
                e.site,
            ));
        }
        if let Some(c) = cpu_addr {
            if c != e.cpu_addr {
                note(self.report(
                    dev,
                    Violation::WrongCpuAddress {
                        alloc: e.cpu_addr,
                        free: c,
                    },
                    bus,
                    e.size as usize,
                    site,
                    e.site,
                ));
            }
        }
        if let Some(n) = sg_count {
            if e.map_type() == MapType::Sg && n != e.sg_call_ents as usize {
                note(self.report(
                    dev,
                    Violation::WrongSgCount {
                        map_count: e.sg_call_ents as usize,
                        unmap_count: n,
                    },
                    bus,
                    e.size as usize,
                    site,
                    e.site,
                ));
            }
        }
        (Some(e), first)
    }

    /// Checks a sync of `[bus, bus + size)` and hands ownership to the CPU
    /// (`to_cpu`) or the device. `Ok(None)` when debugging is off.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn check_sync(
        &self,
        dev: &Device<'_, P>,
        bus: DmaAddr,
        size: usize,
        dir: DmaDirection,
        to_cpu: bool,
        site: &'static Location<'static>,
    ) -> Result<Option<Entry>, DebugReport> {
        if !self.enabled() {
            return Ok(None);
        }
        let st = self.state.lock();
        let Some(idx) = self.find_containing(&st, dev.id(), bus.0) else {
            drop(st);
            return Err(self.report(dev, Violation::SyncNotMapped, bus, size, site, None));
        };
        let slot = self.entry(&st, idx);
        // SAFETY: a live entry, changed under the lock.
        let e = unsafe { *slot };
        let end = ((bus.0 - e.bus) as usize).saturating_add(size);
        if end > e.size as usize {
            drop(st);
            let v = Violation::SyncOutOfRange {
                alloc_size: e.size as usize,
                end,
            };
            return Err(self.report(dev, v, bus, size, site, e.site));
        }
        if e.map_type() != MapType::Coherent {
            // SAFETY: as above.
            unsafe {
                (*slot).owner = if to_cpu { OWNER_CPU } else { OWNER_DEVICE };
            }
        }
        drop(st);
        // A bidirectional mapping may be synced either way (Linux's
        // check_sync skips the direction check for it).
        if e.direction() != dir
            && e.direction() != DmaDirection::Bidirectional
            && e.map_type() != MapType::Coherent
        {
            let v = Violation::SyncWrongDirection {
                mapped: e.direction(),
                synced: dir,
            };
            let first = self.report(dev, v, bus, size, site, e.site);
            // Linux's check_sync goes on to say which way the data may not
            // go: reported too (and counted), the first report returned.
            let against = if to_cpu {
                e.direction() != DmaDirection::FromDevice && dir != DmaDirection::ToDevice
            } else {
                e.direction() != DmaDirection::ToDevice && dir != DmaDirection::FromDevice
            };
            if against {
                let v = Violation::SyncAgainstMapping {
                    mapped: e.direction(),
                    synced: dir,
                    to_cpu,
                };
                self.report(dev, v, bus, size, site, e.site);
            }
            return Err(first);
        }
        Ok(Some(e))
    }

    /// Checks that the CPU may touch `[phys, phys + len)`: no streaming
    /// mapping of `dev` over it may be owned by the device.
    pub(crate) fn check_cpu_access(
        &self,
        dev: &Device<'_, P>,
        phys: u64,
        len: usize,
        cpu_addr: usize,
        site: &'static Location<'static>,
    ) -> Result<(), DebugReport> {
        if !self.enabled() {
            return Ok(());
        }
        let st = self.state.lock();
        let mut hit = None;
        self.walk_live(&st, |e| {
            let overlaps =
                phys < e.paddr + e.size as u64 && e.paddr < phys.saturating_add(len as u64);
            if e.dev_id == dev.id() && overlaps && e.owner == OWNER_DEVICE {
                hit = Some(*e);
                false
            } else {
                true
            }
        });
        drop(st);
        match hit {
            None => Ok(()),
            Some(e) => {
                let v = Violation::CpuAccessDeviceOwned {
                    cpu_addr,
                    len,
                    dir: e.direction(),
                };
                Err(self.report(dev, v, DmaAddr(e.bus), e.size as usize, site, e.site))
            }
        }
    }

    /// Checks a device access of `[bus, bus + len)` (the simulated engine):
    /// a live mapping of the device must cover it, allow the access and be
    /// owned by the device. `Ok` when debugging is off.
    pub(crate) fn check_device_access(
        &self,
        dev: &Device<'_, P>,
        bus: DmaAddr,
        len: usize,
        write: bool,
        site: &'static Location<'static>,
    ) -> Result<(), DebugReport> {
        if !self.enabled() {
            return Ok(());
        }
        let st = self.state.lock();
        let mut found = None;
        self.walk_live(&st, |e| {
            if e.dev_id == dev.id() && e.contains(bus.0, len as u64) {
                found = Some(*e);
                false
            } else {
                true
            }
        });
        drop(st);
        let v = match found {
            None => Violation::DeviceAccessUnmapped { write },
            Some(e) if e.map_type() == MapType::Coherent => return Ok(()),
            Some(e)
                if (write && !e.direction().device_writes())
                    || (!write && !e.direction().device_reads()) =>
            {
                Violation::DeviceAccessWrongDirection {
                    write,
                    mapped: e.direction(),
                }
            }
            Some(e) if e.owner == OWNER_CPU => Violation::DeviceAccessCpuOwned { write },
            Some(_) => return Ok(()),
        };
        Err(self.report(dev, v, bus, len, site, found.and_then(|e| e.site)))
    }

    /// Checks a `dma_sync_sg_*` of the segment at `bus` given `nents`
    /// entries against the count given to the map (Linux's `check_sync`
    /// for sg mappings). None when it matches, is unknown, or debugging is
    /// off.
    pub(crate) fn check_sg_sync_count(
        &self,
        dev: &Device<'_, P>,
        bus: DmaAddr,
        size: usize,
        nents: usize,
        site: &'static Location<'static>,
    ) -> Option<DebugReport> {
        if !self.enabled() {
            return None;
        }
        let st = self.state.lock();
        let idx = self.find_exact(&st, dev.id(), bus.0)?;
        // SAFETY: a live entry, read under the lock.
        let e = unsafe { *self.entry(&st, idx) };
        drop(st);
        let map_count = e.sg_call_ents as usize;
        if e.map_type() != MapType::Sg || map_count == 0 || map_count == nents {
            return None;
        }
        let v = Violation::SyncWrongSgCount {
            map_count,
            sync_count: nents,
        };
        Some(self.report(dev, v, bus, size, site, e.site))
    }

    /// Sets the sg counts of the entry at `bus` (after `dma_map_sg`).
    pub(crate) fn set_sg_counts(&self, dev_id: u32, bus: DmaAddr, call: usize, mapped: usize) {
        if !self.enabled() {
            return;
        }
        let st = self.state.lock();
        if let Some(idx) = self.find_exact(&st, dev_id, bus.0) {
            // SAFETY: a live entry, changed under the lock.
            unsafe {
                let e = self.entry(&st, idx);
                (*e).sg_call_ents = call as u32;
                (*e).sg_mapped_ents = mapped as u32;
            }
        }
    }

    /// Removes every entry of `dev_id` (device release), calling `f` on
    /// each; returns how many there were and the one to describe (a
    /// streaming mapping if there is one).
    pub(crate) fn take_device_entries(
        &self,
        dev_id: u32,
        mut f: impl FnMut(&Entry),
    ) -> (usize, Option<Entry>) {
        let mut st = self.state.lock();
        let mut count = 0;
        let mut shown: Option<Entry> = None;
        while let Some(idx) = self.walk_live(&st, |e| e.dev_id != dev_id) {
            let e = self.unlink(&mut st, idx);
            count += 1;
            f(&e);
            shown = match shown {
                Some(s)
                    if !(s.map_type() == MapType::Coherent
                        && e.map_type() != MapType::Coherent) =>
                {
                    Some(s)
                }
                _ => Some(e),
            };
        }
        (count, shown)
    }
}
