//! A simulated DMA engine: a device that reads and writes memory by bus
//! address.
//!
//! The engine takes work the way a simple NIC or disk controller does: a
//! ring of descriptors `{bus address, length, flags}` in coherent memory.
//! The driver fills a descriptor and hands it over ([`DmaEngine::post`],
//! setting [`DESC_HW`]); the device ([`DmaEngine::run`], the doorbell)
//! fetches each posted descriptor *by the ring's bus address*, moves the
//! data, and writes the status back ([`DESC_DONE`], or [`DESC_ERR`] with a
//! cause). Data comes from and goes to a [`DevicePort`]: the wire of a NIC,
//! the platter of a disk.
//!
//! Every access goes through the direct map at the physical address the
//! bus address names (no IOMMU): the device lands exactly where a real one
//! would, whatever the CPU meant. So a transfer into a correct mapping
//! lands intact, and one into a vmalloc buffer described as if it were
//! contiguous lands in whatever frames follow its first page.
//!
//! Checks, in order:
//! - always (physics): the range must be within the device's DMA mask (it
//!   has no more address lines) and be RAM, else the descriptor fails with
//!   [`DESC_ERR_ABORT`] (a master abort);
//! - with checks on (the default, and only while DMA debugging is on): a
//!   live mapping of this device must cover the range, allow the access's
//!   direction, and be owned by the device (not synced for the CPU), else
//!   the descriptor fails with [`DESC_ERR_FAULT`] and a `DMA-API` report is
//!   printed — what an IOMMU would catch.
//!
//! [`DmaEngine::set_checks`]`(false)` turns the second group off, for
//! demonstrating what an unchecked device does to memory.

use super::coherent::{alloc_coherent_at, free_coherent_at};
use super::device::{dma_capable, Device};
use super::{DmaAddr, DmaError};
use crate::addr::PhysAddr;
use crate::gfp::GFP_KERNEL;
use crate::platform::Platform;
use core::fmt;
use core::panic::Location;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// Posted: the device owns the descriptor.
pub const DESC_HW: u32 = 1 << 0;
/// The device writes memory (a received packet, a block read from disk).
pub const DESC_WRITE: u32 = 1 << 1;
/// The device reads memory (a packet to send, a block to write).
pub const DESC_READ: u32 = 1 << 2;
/// Done (set by the device).
pub const DESC_DONE: u32 = 1 << 8;
/// Failed (set by the device, with a cause bit).
pub const DESC_ERR: u32 = 1 << 9;
/// Cause: a checked rule was broken (no mapping, wrong direction, CPU owns
/// the buffer).
pub const DESC_ERR_FAULT: u32 = 1 << 10;
/// Cause: master abort (beyond the device's address lines, or not RAM).
pub const DESC_ERR_ABORT: u32 = 1 << 11;

/// Largest ring.
pub const MAX_RING_ENTRIES: usize = 4096;
/// Bytes the engine moves per burst (its FIFO).
const BURST: usize = 256;

/// One descriptor as it lies in the ring.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DmaDesc {
    /// Bus address of the buffer.
    pub addr: u64,
    /// Bytes to move.
    pub len: u32,
    /// `DESC_*` bits.
    pub flags: u32,
}

const DESC_SIZE: usize = core::mem::size_of::<DmaDesc>();
const _: () = assert!(DESC_SIZE == 16);

/// The outside of the device: where written data comes from and read data
/// goes.
pub trait DevicePort {
    /// The device is about to write `buf.len()` bytes at `offset` into the
    /// buffer of descriptor `seq` (posting order): fill `buf`.
    fn produce(&mut self, seq: u64, offset: usize, buf: &mut [u8]);
    /// The device read `data` at `offset` into the buffer of descriptor
    /// `seq`.
    fn consume(&mut self, seq: u64, offset: usize, data: &[u8]);
}

/// A port producing a deterministic byte stream ([`pattern_byte`]) and
/// counting what it consumes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PatternPort {
    /// Seed of the stream.
    pub seed: u64,
    /// Bytes produced so far (the stream position).
    pub produced: u64,
    /// Bytes consumed so far.
    pub consumed: u64,
}

impl PatternPort {
    /// A stream with `seed`, at position 0.
    pub const fn new(seed: u64) -> Self {
        PatternPort {
            seed,
            produced: 0,
            consumed: 0,
        }
    }
}

/// Byte `pos` of the stream of `seed`.
pub const fn pattern_byte(seed: u64, pos: u64) -> u8 {
    let x = (pos ^ seed.rotate_left(17)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (x >> 56) as u8 ^ (pos as u8)
}

impl DevicePort for PatternPort {
    fn produce(&mut self, _seq: u64, _offset: usize, buf: &mut [u8]) {
        for b in buf.iter_mut() {
            *b = pattern_byte(self.seed, self.produced);
            self.produced += 1;
        }
    }
    fn consume(&mut self, _seq: u64, _offset: usize, data: &[u8]) {
        self.consumed += data.len() as u64;
    }
}

/// What one [`DmaEngine::run`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineRun {
    /// Descriptors completed.
    pub completed: usize,
    /// Descriptors failed.
    pub failed: usize,
    /// Bytes written to memory.
    pub bytes_written: u64,
    /// Bytes read from memory.
    pub bytes_read: u64,
}

struct Ring {
    /// Next descriptor the device processes (sequence number).
    head: u64,
    /// Next descriptor the driver fills (sequence number).
    tail: u64,
}

/// A DMA engine bound to one device, with its descriptor ring.
pub struct DmaEngine<'d, P: Platform> {
    dev: &'d Device<'d, P>,
    ring: NonNull<DmaDesc>,
    ring_bus: DmaAddr,
    entries: usize,
    state: lock_api::Mutex<P::Lock, Ring>,
    checks: AtomicBool,
    bytes_written: AtomicU64,
    bytes_read: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    created_at: &'static Location<'static>,
}

// SAFETY: the ring is coherent memory the engine owns; ring state is under
// the platform lock.
unsafe impl<P: Platform> Send for DmaEngine<'_, P> {}
// SAFETY: as above.
unsafe impl<P: Platform> Sync for DmaEngine<'_, P> {}

impl<'d, P: Platform> DmaEngine<'d, P> {
    /// An engine for `dev` with a ring of `entries` descriptors (a power of
    /// two up to [`MAX_RING_ENTRIES`]) in coherent memory. Checks are on.
    #[track_caller]
    pub fn new(dev: &'d Device<'d, P>, entries: usize) -> Result<Self, DmaError> {
        if !entries.is_power_of_two() || entries > MAX_RING_ENTRIES {
            return Err(DmaError::InvalidArgument(
                "ring entries must be a power of two up to 4096",
            ));
        }
        let site = Location::caller();
        let (ring, ring_bus) = alloc_coherent_at(dev, entries * DESC_SIZE, GFP_KERNEL, site)?;
        Ok(DmaEngine {
            dev,
            ring: ring.cast(),
            ring_bus,
            entries,
            state: lock_api::Mutex::new(Ring { head: 0, tail: 0 }),
            checks: AtomicBool::new(true),
            bytes_written: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            created_at: site,
        })
    }

    /// The device.
    pub fn device(&self) -> &'d Device<'d, P> {
        self.dev
    }
    /// Bus address of the ring (what the driver writes to the device's
    /// ring-base register).
    pub fn ring_bus(&self) -> DmaAddr {
        self.ring_bus
    }
    /// Descriptors in the ring.
    pub fn entries(&self) -> usize {
        self.entries
    }
    /// Whether mapping checks are on.
    pub fn checks(&self) -> bool {
        self.checks.load(Relaxed)
    }
    /// Turns the mapping checks on or off (the physical ones stay).
    pub fn set_checks(&self, on: bool) {
        self.checks.store(on, Relaxed);
    }
    /// Descriptors posted and not yet processed.
    pub fn pending(&self) -> usize {
        let r = self.state.lock();
        (r.tail - r.head) as usize
    }
    /// Totals since creation: (bytes written, bytes read, descriptors done,
    /// descriptors failed).
    pub fn totals(&self) -> (u64, u64, u64, u64) {
        (
            self.bytes_written.load(Relaxed),
            self.bytes_read.load(Relaxed),
            self.done.load(Relaxed),
            self.failed.load(Relaxed),
        )
    }

    /// The descriptor with sequence number `seq`, as the CPU sees it.
    pub fn desc(&self, seq: u64) -> DmaDesc {
        let _r = self.state.lock();
        // SAFETY: an index into the ring; the device writes it only under
        // the ring lock, held here.
        unsafe {
            self.ring
                .as_ptr()
                .add(seq as usize % self.entries)
                .read_volatile()
        }
    }

    /// The driver side: fills the next descriptor with `addr`, `len` and
    /// `flags` (exactly one of [`DESC_WRITE`], [`DESC_READ`]) and hands it
    /// to the device. Returns its sequence number.
    pub fn post(&self, addr: DmaAddr, len: u32, flags: u32) -> Result<u64, DmaError> {
        let dir = flags & (DESC_WRITE | DESC_READ);
        if dir != DESC_WRITE && dir != DESC_READ {
            return Err(DmaError::InvalidArgument(
                "a descriptor is either DESC_WRITE or DESC_READ",
            ));
        }
        if len == 0 {
            return Err(DmaError::ZeroSize);
        }
        let mut r = self.state.lock();
        if (r.tail - r.head) as usize == self.entries {
            return Err(DmaError::InvalidArgument("descriptor ring full"));
        }
        let seq = r.tail;
        let d = DmaDesc {
            addr: addr.0,
            len,
            flags: dir | DESC_HW,
        };
        // SAFETY: an index into the ring, written under the ring lock.
        unsafe {
            self.ring
                .as_ptr()
                .add(seq as usize % self.entries)
                .write_volatile(d)
        };
        r.tail += 1;
        Ok(seq)
    }

    fn va(&self, pa: u64) -> *mut u8 {
        self.dev
            .dma()
            .pages
            .platform()
            .phys_to_virt(PhysAddr(pa))
            .as_ptr()
    }

    /// The device side (the doorbell): processes every posted descriptor,
    /// fetching each by bus address, moving its data to or from `port`, and
    /// writing its status back.
    #[track_caller]
    pub fn run(&self, port: &mut dyn DevicePort) -> EngineRun {
        let site = Location::caller();
        let mut out = EngineRun::default();
        let mut r = self.state.lock();
        while r.head < r.tail {
            let seq = r.head;
            let slot = self.ring_bus.0 + ((seq as usize % self.entries) * DESC_SIZE) as u64;
            // SAFETY: the ring is coherent RAM; the device reads it by bus
            // address through the direct map.
            let d = unsafe { (self.va(slot) as *const DmaDesc).read_volatile() };
            let status = self.transfer(seq, &d, port, site, &mut out);
            if status & DESC_ERR != 0 {
                out.failed += 1;
                self.failed.fetch_add(1, Relaxed);
            } else {
                out.completed += 1;
                self.done.fetch_add(1, Relaxed);
            }
            let nd = DmaDesc {
                flags: (d.flags & !DESC_HW) | status,
                ..d
            };
            // SAFETY: as above.
            unsafe { (self.va(slot) as *mut DmaDesc).write_volatile(nd) };
            r.head += 1;
        }
        out
    }

    fn transfer(
        &self,
        seq: u64,
        d: &DmaDesc,
        port: &mut dyn DevicePort,
        site: &'static Location<'static>,
        out: &mut EngineRun,
    ) -> u32 {
        let write = d.flags & DESC_WRITE != 0;
        let len = d.len as usize;
        let dev = self.dev;
        let platform = dev.dma().pages.platform();
        if !dma_capable(dev.dma_mask(), DmaAddr(d.addr), len)
            || !dev.dma().pages.range_is_ram(PhysAddr(d.addr), len as u64)
        {
            platform.warn(format_args!(
                "dma-engine {} {}: descriptor {seq}: master abort on {} of {len} bytes at bus address {} (beyond the device's mask {:#x} or not RAM)",
                dev.driver(),
                dev.name(),
                if write { "write" } else { "read" },
                DmaAddr(d.addr),
                dev.dma_mask()
            ));
            return DESC_ERR | DESC_ERR_ABORT;
        }
        if self.checks()
            && dev
                .dma()
                .debug
                .check_device_access(dev, DmaAddr(d.addr), len, write, site)
                .is_err()
        {
            return DESC_ERR | DESC_ERR_FAULT;
        }
        let mut buf = [0u8; BURST];
        let mut off = 0;
        while off < len {
            let n = BURST.min(len - off);
            let p = self.va(d.addr + off as u64);
            if write {
                port.produce(seq, off, &mut buf[..n]);
                // SAFETY: RAM in the direct map (checked above); the device
                // writes wherever the bus address points.
                unsafe { core::ptr::copy_nonoverlapping(buf.as_ptr(), p, n) };
            } else {
                // SAFETY: as above, reading.
                unsafe { core::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n) };
                port.consume(seq, off, &buf[..n]);
            }
            off += n;
        }
        if write {
            out.bytes_written += len as u64;
            self.bytes_written.fetch_add(len as u64, Relaxed);
        } else {
            out.bytes_read += len as u64;
            self.bytes_read.fetch_add(len as u64, Relaxed);
        }
        DESC_DONE
    }
}

impl<P: Platform> Drop for DmaEngine<'_, P> {
    /// Frees the ring.
    fn drop(&mut self) {
        let _ = free_coherent_at(
            self.dev,
            self.entries * DESC_SIZE,
            self.ring.as_ptr().cast(),
            self.ring_bus,
            self.created_at,
        );
    }
}

impl<P: Platform> fmt::Debug for DmaEngine<'_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaEngine")
            .field("device", &self.dev.name())
            .field("ring_bus", &self.ring_bus)
            .field("entries", &self.entries)
            .field("checks", &self.checks())
            .finish()
    }
}
