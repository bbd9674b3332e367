//! Counters and `/proc` views: `/proc/vmallocinfo` in Linux's format and the
//! Vmalloc lines of `/proc/meminfo`.
//!
//! ```text
//! 0xffffc90000000000-0xffffc90000005000   20480 kernel/fork.c:311 pages=4 vmalloc N0=4
//! 0xffffc90000005000-0xffffc90000007000    8192 drivers/x.c:12 vmap
//! 0xffffc90000400000-0xffffc90000800000 4194304 vm_map_ram
//! 0xffffc90000008000-0xffffc9000000a000    8192 unpurged vm_area
//! ```
//!
//! Linux prints `%pK` addresses (hashed unless `kptr_restrict` allows) and
//! the caller as `%pS` (`symbol+off/size`); kmem prints real addresses and
//! the caller's `file:line`. Sizes include the guard page, as Linux's do.
//! Busy areas come in address order, then the lazily freed ones.

use super::area::{VMAP_BLOCK, VMAP_RAM};
use super::{VmFlags, Vmalloc};
use crate::addr::{VirtAddr, PAGE_SIZE};
use crate::page::MAX_NUMNODES;
use crate::paging::PageTables;
use crate::platform::Platform;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($($(#[$m:meta])* $name:ident),* $(,)?) => {
        /// Internal atomic counters.
        #[derive(Default)]
        pub(crate) struct Counters {
            $(pub(crate) $name: AtomicU64,)*
        }
        /// Counters of one vmalloc instance.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct VmallocStats {
            $($(#[$m])* pub $name: u64,)*
            /// Live areas (busy tree).
            pub busy_areas: u64,
            /// Areas waiting for a purge.
            pub lazy_areas: u64,
            /// Pages (guard pages included) waiting for a purge.
            pub lazy_pages: u64,
            /// Free ranges.
            pub free_ranges: u64,
            /// Largest free range, bytes.
            pub largest_free: u64,
            /// Pages mapped and owned by vmalloc areas (`VmallocUsed`).
            pub vmalloc_pages: u64,
            /// Pages holding area records.
            pub record_pages: u64,
        }
        impl Counters {
            fn snapshot(&self) -> VmallocStats {
                VmallocStats {
                    $($name: self.$name.load(Relaxed),)*
                    ..VmallocStats::default()
                }
            }
        }
    };
}

counters! {
    /// Successful vmalloc-family allocations.
    allocs,
    /// Failed ones.
    alloc_failures,
    /// Allocations mapped with 2 MiB pages.
    huge_allocs,
    /// Huge attempts that fell back to 4 KiB pages.
    huge_fallbacks,
    /// High-order chunks split into pages for 4 KiB mappings.
    large_chunks,
    /// Virtual-range searches that failed (before any purge retry).
    va_failures,
    /// vfree calls that freed an area.
    frees,
    /// Frees refused (bad pointer, double free, ...).
    free_errors,
    /// Frees queued from interrupt context.
    deferred_frees,
    /// Areas put on the lazy list.
    lazy_frees,
    /// Purges run.
    purges,
    /// Areas purged.
    purged_areas,
    /// Pages purged (guard pages included).
    purged_pages,
    /// Page-table frames freed by purges.
    tables_freed,
    /// Pages mapped (4 KiB units).
    pages_mapped,
    /// vmap calls.
    vmaps,
    /// vunmap calls.
    vunmaps,
    /// vm_map_ram calls.
    vm_map_rams,
    /// vm_map_ram served from vmap blocks.
    vb_allocs,
    /// vm_unmap_ram calls.
    vb_frees,
    /// vmap blocks created.
    vmap_blocks,
    /// vmap blocks freed.
    vmap_blocks_freed,
    /// vrealloc calls served in place.
    realloc_in_place,
    /// vrealloc calls that moved the data.
    realloc_moves,
    /// Blocking allocations in atomic context.
    context_violations,
    /// Page frees the page allocator refused (a bug somewhere).
    page_free_errors,
}

impl<P: Platform, B: PageTables> Vmalloc<'_, P, B> {
    /// Counters and current occupancy.
    pub fn stats(&self) -> VmallocStats {
        let mut st = self.stats.snapshot();
        let s = self.state.lock();
        st.busy_areas = s.areas.nr_busy as u64;
        st.lazy_areas = s.areas.nr_lazy as u64;
        st.lazy_pages = s.areas.lazy_pages as u64;
        st.free_ranges = s.areas.nr_free_ranges as u64;
        st.largest_free = s.areas.largest_free() as u64;
        st.record_pages = s.areas.pool_pages() as u64;
        drop(s);
        st.vmalloc_pages = self.nr_vmalloc_pages.load(Relaxed);
        st
    }

    /// Pages mapped and owned by live vmalloc areas (Linux's
    /// `vmalloc_nr_pages`, shown as `VmallocUsed`).
    pub fn nr_vmalloc_pages(&self) -> u64 {
        self.nr_vmalloc_pages.load(Relaxed)
    }

    /// `/proc/vmallocinfo`, in Linux's format (see the module docs).
    pub fn vmallocinfo(&self, out: &mut dyn Write) -> fmt::Result {
        let s = self.state.lock();
        let mut res = Ok(());
        s.areas.for_each_busy(&mut |r| {
            if res.is_err() {
                return;
            }
            res = (|| {
                if r.va_flags & VMAP_RAM != 0 {
                    return writeln!(
                        out,
                        "0x{:016x}-0x{:016x} {:7} vm_map_ram",
                        r.start,
                        r.end,
                        r.size()
                    );
                }
                let flags = VmFlags::from_bits_retain(r.vm_flags.load(Relaxed));
                if flags.contains(VmFlags::UNINITIALIZED) {
                    return Ok(());
                }
                write!(out, "0x{:016x}-0x{:016x} {:7}", r.start, r.end, r.size())?;
                if let Some(c) = r.caller {
                    write!(out, " {}:{}", c.file(), c.line())?;
                }
                let nr = r.nr_pages.load(Relaxed);
                if nr > 0 {
                    write!(out, " pages={nr}")?;
                }
                for (f, name) in [
                    (VmFlags::IOREMAP, "ioremap"),
                    (VmFlags::SPARSE, "sparse"),
                    (VmFlags::ALLOC, "vmalloc"),
                    (VmFlags::MAP, "vmap"),
                    (VmFlags::USERMAP, "user"),
                    (VmFlags::DMA_COHERENT, "dma-coherent"),
                ] {
                    if flags.contains(f) {
                        write!(out, " {name}")?;
                    }
                }
                if nr > 0 {
                    let mut per_node = [0usize; MAX_NUMNODES];
                    self.count_nodes(r.start, nr, &mut per_node);
                    for (n, c) in per_node.iter().enumerate() {
                        if *c > 0 {
                            write!(out, " N{n}={c}")?;
                        }
                    }
                }
                writeln!(out)
            })();
        });
        res?;
        let mut res = Ok(());
        s.areas.for_each_lazy(&mut |r| {
            if res.is_ok() {
                res = writeln!(
                    out,
                    "0x{:016x}-0x{:016x} {:7} unpurged vm_area",
                    r.start,
                    r.end,
                    r.size()
                );
            }
        });
        res
    }

    /// Pages of the area at `start` per NUMA node (walks its mappings).
    fn count_nodes(&self, start: usize, nr: usize, per_node: &mut [usize; MAX_NUMNODES]) {
        let mut i = 0;
        while i < nr {
            let va = VirtAddr(start + i * PAGE_SIZE);
            match self.tables.translate(va) {
                Ok(t) => {
                    let step = (t.size.bytes() / PAGE_SIZE).min(nr - i);
                    if let Some(f) = self.pages.frame(t.pfn()) {
                        per_node[f.node().min(MAX_NUMNODES - 1)] += step;
                    }
                    i += step;
                }
                Err(_) => i += 1,
            }
        }
    }

    /// The `/proc/meminfo` lines Linux prints for vmalloc: `VmallocTotal`
    /// (the range), `VmallocUsed` (pages owned by vmalloc areas) and
    /// `VmallocChunk` (always 0 since Linux 4.20).
    pub fn meminfo(&self, out: &mut dyn Write) -> fmt::Result {
        // Linux's VMALLOC_TOTAL is VMALLOC_END - VMALLOC_START with an
        // inclusive end (x86-64): one byte less than the range.
        let total_kb = (self.config.end - self.config.start).saturating_sub(1) >> 10;
        let used_kb = self.nr_vmalloc_pages() * (PAGE_SIZE as u64 >> 10);
        writeln!(out, "VmallocTotal:   {total_kb:>8} kB")?;
        writeln!(out, "VmallocUsed:    {used_kb:>8} kB")?;
        writeln!(out, "VmallocChunk:   {:>8} kB", 0)
    }

    /// Number of live vmap blocks (for tests and the tour).
    pub fn nr_vmap_blocks(&self) -> usize {
        let s = self.state.lock();
        let mut n = 0;
        s.areas.for_each_busy(&mut |r| {
            if r.va_flags & VMAP_BLOCK != 0 {
                n += 1;
            }
        });
        n
    }
}
