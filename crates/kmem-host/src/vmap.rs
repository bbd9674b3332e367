//! vmalloc on the hosted machine: real pointers over real page tables.
//!
//! [`HostVmap`] is a [`PageTables`] backend that does two things for every
//! mapping:
//!
//! 1. it writes the x86-64 tables ([`X86PageTables`], table frames from the
//!    machine's page allocator), exactly what a kernel would run;
//! 2. it maps the same physical pages at the same virtual addresses in this
//!    process: the vmalloc range is one `PROT_NONE` reservation
//!    (`MAP_NORESERVE`), and each mapped run of frames gets the memfd pages
//!    behind them with `mmap(MAP_SHARED | MAP_FIXED)`. Frames that are
//!    contiguous in the memfd are mapped by one call.
//!
//! So a vmalloc pointer is dereferenceable, and what it reaches is the frame
//! the x86 tables name: tests write through the vmalloc address and read
//! through the direct map of the frame `translate` returns. Unmapping puts
//! the reservation back (`PROT_NONE`, same call), so guard pages and freed
//! areas fault as they would in a kernel. The host kernel flushes its own
//! TLB on `mmap`; the flush calls of the trait reach the TLB models attached
//! to the x86 tables.
//!
//! Every mapped run is a host VMA: Linux limits a process to
//! `vm.max_map_count` (65530 by default), so about 30 000 live areas of
//! scattered pages is the practical ceiling here (the in-memory tables alone
//! have no such limit).

use crate::platform::HostPlatform;
use crate::{Machine, Ram};
use kmem::addr::{Pfn, PhysAddr, VirtAddr};
use kmem::error::AllocError;
use kmem::gfp::Gfp;
use kmem::paging::{
    Flush, FlushRange, MapError, MapRangeError, PageSize, PageTables, PteFlags, Tlb,
    TranslateError, Translation, UnmapError, X86PageTables,
};
use kmem::vmalloc::{Vmalloc, VmallocConfig};
use parking_lot::lock_api;
use rustix::mm::{mmap, mmap_anonymous, munmap, MapFlags, ProtFlags};
use std::ffi::c_void;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// Default size of the hosted vmalloc range: 64 GiB of address space
/// (reserved, not backed).
pub const DEFAULT_VMALLOC_BYTES: usize = 64 << 30;

/// Alignment of the reservation: 1 GiB, so 2 MiB and vmap-block alignments
/// fall where they would in a kernel.
const RESERVATION_ALIGN: usize = 1 << 30;

/// A TLB model shared under the host's lock type.
pub type HostTlb = lock_api::Mutex<parking_lot::RawMutex, Tlb>;

/// vmalloc over a hosted machine.
pub type HostVmalloc<'m> = Vmalloc<'m, HostPlatform, HostVmap<'m>>;

/// Counters of the host side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostVmapStats {
    /// `mmap` calls that mapped memfd pages.
    pub map_calls: u64,
    /// Bytes mapped by them.
    pub bytes_mapped: u64,
    /// `mmap(PROT_NONE)` calls that unmapped ranges.
    pub unmap_calls: u64,
    /// Nanoseconds spent in those system calls (only while timing is on).
    pub syscall_nanos: u64,
}

/// The hosted backend: x86-64 tables plus real mappings.
pub struct HostVmap<'m> {
    tables: X86PageTables<'m, HostPlatform>,
    ram: &'m Ram,
    base: usize,
    len: usize,
    timing: AtomicBool,
    map_calls: AtomicU64,
    bytes_mapped: AtomicU64,
    unmap_calls: AtomicU64,
    syscall_nanos: AtomicU64,
}

impl<'m> HostVmap<'m> {
    /// Reserves `len` bytes (rounded up to 2 MiB) of address space, 1 GiB
    /// aligned, for the vmalloc range of `machine`.
    pub fn new(machine: &'m Machine, len: usize) -> io::Result<Self> {
        let len = len.max(2 << 20).next_multiple_of(2 << 20);
        let base = crate::ram::reserve_aligned(len, RESERVATION_ALIGN)?;
        let tables = match X86PageTables::new(machine.pages()) {
            Ok(t) => t,
            Err(e) => {
                // SAFETY: our own reservation.
                let _ = unsafe { munmap(base as *mut c_void, len) };
                return Err(io::Error::other(e.to_string()));
            }
        };
        Ok(HostVmap {
            tables,
            ram: machine.ram(),
            base,
            len,
            timing: AtomicBool::new(false),
            map_calls: AtomicU64::new(0),
            bytes_mapped: AtomicU64::new(0),
            unmap_calls: AtomicU64::new(0),
            syscall_nanos: AtomicU64::new(0),
        })
    }

    /// Attaches TLB models (one per CPU) to the x86 tables.
    pub fn with_tlbs(mut self, tlbs: &'m [HostTlb]) -> Self {
        self.tables.set_tlbs(tlbs);
        self
    }

    /// The reserved range `[start, end)`.
    pub fn range(&self) -> (usize, usize) {
        (self.base, self.base + self.len)
    }

    /// A vmalloc configuration over the reserved range.
    pub fn config(&self) -> VmallocConfig {
        VmallocConfig::range(self.base, self.base + self.len)
    }

    /// The x86-64 tables kept beside the real mappings.
    pub fn tables(&self) -> &X86PageTables<'m, HostPlatform> {
        &self.tables
    }

    /// Times the system calls from now on (adds two clock reads per call).
    pub fn set_timing(&self, on: bool) {
        self.timing.store(on, Relaxed);
    }

    /// Counters.
    pub fn stats(&self) -> HostVmapStats {
        HostVmapStats {
            map_calls: self.map_calls.load(Relaxed),
            bytes_mapped: self.bytes_mapped.load(Relaxed),
            unmap_calls: self.unmap_calls.load(Relaxed),
            syscall_nanos: self.syscall_nanos.load(Relaxed),
        }
    }

    fn in_range(&self, va: usize, len: usize) -> bool {
        va >= self.base
            && va
                .checked_add(len)
                .is_some_and(|e| e <= self.base + self.len)
    }

    fn timed<T>(&self, f: impl FnOnce() -> T) -> T {
        if self.timing.load(Relaxed) {
            let t = Instant::now();
            let r = f();
            self.syscall_nanos
                .fetch_add(t.elapsed().as_nanos() as u64, Relaxed);
            r
        } else {
            f()
        }
    }

    /// Maps `len` bytes of the memfd at physical `pa` at `va`.
    fn host_map(&self, va: usize, pa: PhysAddr, len: usize) -> Result<(), MapError> {
        let off = self.ram.memfd_offset(pa).ok_or(MapError::Backend {
            va: VirtAddr(va),
            errno: libc_efault(),
        })?;
        if !self.in_range(va, len) {
            return Err(MapError::Backend {
                va: VirtAddr(va),
                errno: libc_efault(),
            });
        }
        self.map_calls.fetch_add(1, Relaxed);
        self.bytes_mapped.fetch_add(len as u64, Relaxed);
        // SAFETY: the target lies inside our own reservation, so MAP_FIXED
        // replaces only pages this backend owns.
        let r = self.timed(|| unsafe {
            mmap(
                va as *mut c_void,
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED | MapFlags::FIXED,
                self.ram.fd(),
                off,
            )
        });
        r.map(|_| ()).map_err(|e| MapError::Backend {
            va: VirtAddr(va),
            errno: e.raw_os_error(),
        })
    }

    /// Puts the reservation back over `[va, va + len)`.
    fn host_unmap(&self, va: usize, len: usize) {
        let (lo, hi) = (va.max(self.base), (va + len).min(self.base + self.len));
        if lo >= hi {
            return;
        }
        self.unmap_calls.fetch_add(1, Relaxed);
        // SAFETY: inside our own reservation.
        let r = self.timed(|| unsafe {
            mmap_anonymous(
                lo as *mut c_void,
                hi - lo,
                ProtFlags::empty(),
                MapFlags::PRIVATE | MapFlags::FIXED | MapFlags::NORESERVE,
            )
        });
        if let Err(e) = r {
            panic!("kmem-host: cannot restore the vmalloc reservation at {lo:#x}: {e}");
        }
    }

    /// Maps `frames` (already in the x86 tables) from `va`, one `mmap` per
    /// run of frames contiguous in the memfd. Returns the number of frames
    /// mapped if a call fails.
    fn host_map_frames(
        &self,
        va: usize,
        frames: &[Pfn],
        size: PageSize,
    ) -> Result<(), (usize, MapError)> {
        let step = size.bytes();
        let mut i = 0;
        while i < frames.len() {
            let first = frames[i].phys();
            let off0 = self.ram.memfd_offset(first);
            let mut j = i + 1;
            while j < frames.len() {
                let want = first.0 + ((j - i) * step) as u64;
                if frames[j].phys().0 != want
                    || self.ram.memfd_offset(PhysAddr(want))
                        != off0.map(|o| o + ((j - i) * step) as u64)
                {
                    break;
                }
                j += 1;
            }
            self.host_map(va + i * step, first, (j - i) * step)
                .map_err(|e| (i, e))?;
            i = j;
        }
        Ok(())
    }
}

fn libc_efault() -> i32 {
    rustix::io::Errno::FAULT.raw_os_error()
}

impl PageTables for HostVmap<'_> {
    fn map(
        &self,
        va: VirtAddr,
        pa: PhysAddr,
        size: PageSize,
        flags: PteFlags,
        gfp: Gfp,
    ) -> Result<Flush<'_, Self>, MapError> {
        self.tables.map(va, pa, size, flags, gfp)?.ignore();
        if let Err(e) = self.host_map(va.0, pa, size.bytes()) {
            let _ = self.tables.unmap(va).map(|(_, f)| f.ignore());
            return Err(e);
        }
        Ok(Flush::new(self, va))
    }

    fn map_range(
        &self,
        va: VirtAddr,
        frames: &[Pfn],
        size: PageSize,
        flags: PteFlags,
        gfp: Gfp,
    ) -> Result<FlushRange<'_, Self>, MapRangeError> {
        let end = VirtAddr(va.0 + frames.len() * size.bytes());
        let (ok, err) = match self.tables.map_range(va, frames, size, flags, gfp) {
            Ok(f) => {
                f.ignore();
                (frames.len(), None)
            }
            Err(e) => (e.mapped, Some(e)),
        };
        if let Err((done, e)) = self.host_map_frames(va.0, &frames[..ok], size) {
            // Keep both views equal: drop the x86 entries the host lacks.
            let from = VirtAddr(va.0 + done * size.bytes());
            self.tables
                .unmap_range(from, VirtAddr(va.0 + ok * size.bytes()), &mut |_, _, _| {})
                .ignore();
            return Err(MapRangeError {
                mapped: done,
                error: e,
            });
        }
        match err {
            Some(e) => Err(e),
            None => Ok(FlushRange::new(self, va, end)),
        }
    }

    fn unmap(&self, va: VirtAddr) -> Result<(Translation, Flush<'_, Self>), UnmapError> {
        let t = self
            .tables
            .translate(va)
            .map_err(|_| UnmapError::NotMapped { va })?;
        if !va.0.is_multiple_of(t.size.bytes()) {
            return Err(UnmapError::SizeMismatch { va, existing: t });
        }
        self.host_unmap(va.0, t.size.bytes());
        let (t, f) = self.tables.unmap(va)?;
        f.ignore();
        Ok((t, Flush::new(self, va)))
    }

    fn unmap_range(
        &self,
        start: VirtAddr,
        end: VirtAddr,
        on_leaf: &mut dyn FnMut(VirtAddr, PhysAddr, PageSize),
    ) -> FlushRange<'_, Self> {
        if start < end {
            // The host mapping goes first, so no freed frame stays
            // reachable through this range.
            self.host_unmap(start.0, end.0 - start.0);
            self.tables.unmap_range(start, end, on_leaf).ignore();
        }
        FlushRange::new(self, start, end)
    }

    fn translate(&self, va: VirtAddr) -> Result<Translation, TranslateError> {
        self.tables.translate(va)
    }

    fn free_empty_tables(&self, start: VirtAddr, end: VirtAddr) -> usize {
        self.tables.free_empty_tables(start, end)
    }

    fn flush_page(&self, va: VirtAddr) {
        self.tables.flush_page(va);
    }

    fn flush_range(&self, start: VirtAddr, end: VirtAddr) {
        self.tables.flush_range(start, end);
    }

    fn flush_all(&self) {
        self.tables.flush_all();
    }
}

impl Drop for HostVmap<'_> {
    fn drop(&mut self) {
        // SAFETY: the reservation is ours; whoever held vmalloc pointers is
        // gone (the Vmalloc owning this backend is being dropped).
        let _ = unsafe { munmap(self.base as *mut c_void, self.len) };
    }
}

impl fmt::Debug for HostVmap<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostVmap")
            .field("base", &format_args!("{:#x}", self.base))
            .field("len", &self.len)
            .field("stats", &self.stats())
            .field("tables", &self.tables)
            .finish()
    }
}

/// vmalloc over `machine` with the default range size
/// ([`DEFAULT_VMALLOC_BYTES`]) and Linux's defaults.
pub fn vmalloc(machine: &Machine) -> io::Result<HostVmalloc<'_>> {
    let host = HostVmap::new(machine, DEFAULT_VMALLOC_BYTES)?;
    let config = host.config();
    from_host(machine, host, config)
}

/// vmalloc over `machine` through `host`, with `config` (whose range should
/// be `host.range()`).
pub fn from_host<'m>(
    machine: &'m Machine,
    host: HostVmap<'m>,
    config: VmallocConfig,
) -> io::Result<HostVmalloc<'m>> {
    Vmalloc::new(machine.pages(), host, config)
        .map_err(|e: AllocError| io::Error::other(e.to_string()))
}

/// vmalloc over the x86-64 tables alone (no host mapping: pointers cannot
/// be dereferenced, only translated), in Linux's x86-64 range.
pub fn in_memory(
    machine: &Machine,
) -> io::Result<Vmalloc<'_, HostPlatform, X86PageTables<'_, HostPlatform>>> {
    in_memory_with(machine, VmallocConfig::x86_64(), &[])
}

/// [`in_memory`] with a configuration and TLB models.
pub fn in_memory_with<'m>(
    machine: &'m Machine,
    config: VmallocConfig,
    tlbs: &'m [HostTlb],
) -> io::Result<Vmalloc<'m, HostPlatform, X86PageTables<'m, HostPlatform>>> {
    let mut t = X86PageTables::new(machine.pages()).map_err(|e| io::Error::other(e.to_string()))?;
    t.set_tlbs(tlbs);
    Vmalloc::new(machine.pages(), t, config).map_err(|e| io::Error::other(e.to_string()))
}

/// `n` TLB models of the given geometry, for [`HostVmap::with_tlbs`].
pub fn tlbs(n: usize, config: kmem::paging::TlbConfig) -> Vec<HostTlb> {
    (0..n)
        .map(|_| lock_api::Mutex::new(Tlb::new(config).expect("valid TLB geometry")))
        .collect()
}
