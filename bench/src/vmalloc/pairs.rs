//! vmalloc+vfree pairs by size, on one and two threads, and one lazy purge,
//! on both backends.
//!
//! A pair is `vmalloc(size)` (or `vmalloc_huge(size, GFP_KERNEL)`) followed
//! at once by `vfree`, repeated; the memory is not touched, so the figure is
//! the allocator's own work: find a virtual range, get pages, write the
//! page-table entries (and, hosted, `mmap` them); then unlink the area,
//! clear the entries, free the pages, and every `lazy_max_pages` put the
//! lazily freed ranges back with one TLB flush (a purge). The purges fall
//! inside the timed loop, as they do in Linux's `fix_size_alloc_test`.
//!
//! Contenders ([`PairContender`]), each on its own 1 GiB, 2-CPU machine:
//! `kmem-inmem` (x86-64 tables in memory), `kmem-host` (the same tables plus
//! host mappings), and `kmem-host-syscalls`: kmem-host run again with its
//! system calls timed, whose figure is the time spent inside `mmap` per
//! pair (the part of kmem-host that a kernel would not pay), taken from the
//! backend's counters instead of the wall clock ([`patch_syscall_cells`]);
//! on two threads the two threads' system-call time is halved, so that it
//! is the share of the wall-clock figure.
//!
//! Two-thread workloads (`-2t`) run the same pairs on two threads at once,
//! kmem CPUs 0 and 1 pinned to two OS CPUs, `n / 2` pairs each; ns/op is
//! wall time over all pairs of both threads (throughput: half the 1-thread
//! figure means perfect scaling).
//!
//! The purge ([`measure_purge`]) is timed alone: 1-page areas are allocated
//! and freed until the lazy list holds exactly `lazy_max_pages` (no purge
//! yet), then one `purge()` is timed; the figure is ns per purge.

use std::cell::RefCell;
use std::hint::black_box;
use std::rc::Rc;
use std::sync::Barrier;
use std::time::Instant;

use kmem::addr::{VirtAddr, PAGE_SIZE};
use kmem::gfp::GFP_KERNEL;
use kmem::vmalloc::Vmalloc;
use kmem::Platform;
use kmem_host::HostPlatform;

use super::backend::{self, Backend, Kind, Vm};
use crate::harness::{Cell, Contender, Workload};

/// One size measured.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    pub bytes: usize,
    pub huge: bool,
}

/// The sizes, in report order (1-thread workloads, then the same sizes on
/// two threads).
pub const SIZES: [Size; 6] = [
    Size {
        bytes: PAGE_SIZE,
        huge: false,
    },
    Size {
        bytes: 4 * PAGE_SIZE,
        huge: false,
    },
    Size {
        bytes: 16 * PAGE_SIZE,
        huge: false,
    },
    Size {
        bytes: 256 * PAGE_SIZE,
        huge: false,
    },
    Size {
        bytes: 4 << 20,
        huge: false,
    },
    Size {
        bytes: 4 << 20,
        huge: true,
    },
];

/// Pair workloads: `SIZES` on one thread, then on two.
pub const WORKLOADS: [Workload; 12] = [
    w("pair-1page", "vmalloc(4 KiB) + vfree", 1),
    w("pair-4pages", "vmalloc(16 KiB) + vfree", 1),
    w("pair-16pages", "vmalloc(64 KiB) + vfree", 1),
    w("pair-256pages", "vmalloc(1 MiB = 256 pages) + vfree", 1),
    w("pair-4MiB", "vmalloc(4 MiB = 1024 pages) + vfree", 1),
    w(
        "pair-4MiB-huge",
        "vmalloc_huge(4 MiB, GFP_KERNEL) + vfree: two 2 MiB mappings",
        1,
    ),
    w(
        "pair-1page-2t",
        "pair-1page on 2 threads at once (wall ns per pair, both threads)",
        2,
    ),
    w(
        "pair-4pages-2t",
        "pair-4pages on 2 threads at once (wall ns per pair, both threads)",
        2,
    ),
    w(
        "pair-16pages-2t",
        "pair-16pages on 2 threads at once (wall ns per pair, both threads)",
        2,
    ),
    w(
        "pair-256pages-2t",
        "pair-256pages on 2 threads at once (wall ns per pair, both threads)",
        2,
    ),
    w(
        "pair-4MiB-2t",
        "pair-4MiB on 2 threads at once (wall ns per pair, both threads)",
        2,
    ),
    w(
        "pair-4MiB-huge-2t",
        "pair-4MiB-huge on 2 threads at once (wall ns per pair, both threads)",
        2,
    ),
];

const fn w(name: &'static str, what: &'static str, quantum: u64) -> Workload {
    Workload {
        name,
        what,
        quantum,
    }
}

/// The purge row, appended after the pair workloads.
pub const PURGE: Workload = w(
    "purge",
    "one lazy purge of lazy_max_pages (8192 1-page areas + guards on 2 CPUs): one TLB flush, \
     ranges merged back, page tables kept as Linux keeps them (ns per purge)",
    1,
);

/// Name of the syscall-timing contender.
pub const SYSCALLS: &str = "kmem-host-syscalls";

/// RAM of each contender's machine.
pub const MACHINE_BYTES: u64 = 1 << 30;
/// CPUs of each contender's machine.
pub const MACHINE_CPUS: usize = 2;

/// Syscall nanoseconds per pair, one entry per `run` call: (workload, ns).
pub type SyscallLog = Rc<RefCell<Vec<(usize, f64)>>>;

/// One backend on its own machine, timed by the harness.
pub struct PairContender<B: Backend> {
    name: &'static str,
    vm: Vm<B>,
    cpus: Vec<usize>,
    log: Option<SyscallLog>,
}

impl<B: Backend> PairContender<B> {
    /// `log`: time the backend's system calls and record them per call.
    fn new(
        name: &'static str,
        vm: Vm<B>,
        cpus: &[usize],
        log: Option<SyscallLog>,
    ) -> Result<Self, String> {
        if log.is_some() {
            vm.vm.tables().set_syscall_timing(true);
        }
        let c = PairContender {
            name,
            vm,
            cpus: cpus.to_vec(),
            log,
        };
        for s in SIZES {
            check(&c.vm, s).map_err(|e| format!("{name}: {e}"))?;
        }
        Ok(c)
    }
}

/// Refuses to time a backend whose areas are wrong: every page of an area
/// translates, to distinct frames, the guard page does not, and a freed
/// area's pages no longer translate. Hosted, a pattern written through the
/// pointer is read back through the direct map.
fn check<B: Backend>(vm: &Vm<B>, s: Size) -> Result<(), String> {
    let v = &vm.vm;
    let p = alloc(v, s)
        .map_err(|e| format!("{} bytes: {e}", s.bytes))?
        .as_ptr();
    let mut frames = Vec::new();
    let real = vm.vm.tables().syscalls().is_some();
    for off in (0..s.bytes).step_by(PAGE_SIZE) {
        let va = p as usize + off;
        let t = v
            .tables()
            .translate(VirtAddr(va))
            .map_err(|e| format!("page {off:#x} of a {}-byte area: {e}", s.bytes))?;
        frames.push(t.pa.0);
        if real {
            let direct = v.pages().platform().phys_to_virt(t.pa).as_ptr::<u64>();
            // SAFETY: a live page of the area, mapped both ways.
            unsafe {
                (va as *mut u64).write_volatile(va as u64);
                if direct.read_volatile() != va as u64 {
                    return Err(format!("{va:#x}: the direct map does not see the write"));
                }
            }
        }
    }
    frames.sort_unstable();
    if frames.windows(2).any(|w| w[0] == w[1]) {
        return Err(format!("a {}-byte area maps a frame twice", s.bytes));
    }
    if v.tables().translate(VirtAddr(p as usize + s.bytes)).is_ok() {
        return Err(format!("the guard page after {p:p} is mapped"));
    }
    v.vfree(p).map_err(|e| e.to_string())?;
    if v.tables().translate(VirtAddr(p as usize)).is_ok() {
        return Err(format!("{p:p} still translates after vfree"));
    }
    Ok(())
}

#[inline(always)]
fn alloc<B: Backend>(
    v: &Vmalloc<'static, HostPlatform, B>,
    s: Size,
) -> Result<std::ptr::NonNull<u8>, kmem::vmalloc::VmallocError> {
    if s.huge {
        v.vmalloc_huge(s.bytes, GFP_KERNEL)
    } else {
        v.vmalloc(s.bytes)
    }
}

/// `n` times: allocate an area of size `s`, free it.
#[inline(never)]
fn pairs<B: Backend>(v: &Vmalloc<'static, HostPlatform, B>, s: Size, n: u64) {
    let s = black_box(s);
    for _ in 0..n {
        let p = match alloc(v, s) {
            Ok(p) => black_box(p),
            Err(e) => failed("vmalloc", s, &e),
        };
        if let Err(e) = v.vfree(p.as_ptr()) {
            failed("vfree", s, &e);
        }
    }
}

#[cold]
#[inline(never)]
fn failed(call: &str, s: Size, e: &dyn std::fmt::Display) -> ! {
    panic!("{call} of {} bytes (huge: {}) failed: {e}", s.bytes, s.huge)
}

/// `n` pairs on two threads, `n / 2` each, kmem CPUs 0 and 1.
fn two_threads<B: Backend>(v: &Vmalloc<'static, HostPlatform, B>, cpus: &[usize], s: Size, n: u64) {
    let barrier = Barrier::new(2);
    std::thread::scope(|sc| {
        for t in 0..2 {
            let barrier = &barrier;
            sc.spawn(move || {
                backend::pin_to(cpus, t);
                kmem_host::set_cpu(t);
                barrier.wait();
                pairs(v, s, n / 2);
            });
        }
    });
}

impl<B: Backend> Contender for PairContender<B> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn run(&mut self, workload: usize, n: u64) {
        let before = self.vm.vm.tables().syscalls();
        let s = SIZES[workload % SIZES.len()];
        if workload < SIZES.len() {
            pairs(&self.vm.vm, s, n);
        } else {
            two_threads(&self.vm.vm, &self.cpus, s, n);
        }
        if let (Some(log), Some((t0, _)), Some((t1, _))) =
            (&self.log, before, self.vm.vm.tables().syscalls())
        {
            // Two threads spend system-call time in parallel: their sum over
            // 2 is the share of the wall-clock figure.
            let threads = if workload < SIZES.len() { 1.0 } else { 2.0 };
            log.borrow_mut()
                .push((workload, (t1 - t0) as f64 / threads / n.max(1) as f64));
        }
    }
}

/// The contenders and, if the syscall row is among them, its log.
pub type Contenders = (Vec<Box<dyn Contender>>, Option<SyscallLog>);

/// The contenders: `kinds` in order, then the syscall row if the hosted
/// backend is among them. Returns the syscall log too.
pub fn contenders(kinds: &[Kind], cpus: &[usize]) -> Result<Contenders, String> {
    let mut out: Vec<Box<dyn Contender>> = Vec::new();
    let mut log = None;
    for &k in kinds {
        match k {
            Kind::Inmem => out.push(Box::new(PairContender::new(
                k.name(),
                backend::inmem(MACHINE_BYTES, MACHINE_CPUS)?,
                cpus,
                None,
            )?)),
            Kind::Host => out.push(Box::new(PairContender::new(
                k.name(),
                backend::host(MACHINE_BYTES, MACHINE_CPUS)?,
                cpus,
                None,
            )?)),
        }
    }
    if kinds.contains(&Kind::Host) {
        let l: SyscallLog = Rc::default();
        out.push(Box::new(PairContender::new(
            SYSCALLS,
            backend::host(MACHINE_BYTES, MACHINE_CPUS)?,
            cpus,
            Some(l.clone()),
        )?));
        log = Some(l);
    }
    Ok((out, log))
}

/// Replaces the wall-clock samples of the syscall row by the system-call
/// time of the same calls: the harness's timed runs are the last `runs`
/// calls of each workload.
pub fn patch_syscall_cells(cells: &mut [Cell], log: &SyscallLog) {
    let log = log.borrow();
    for c in cells.iter_mut().filter(|c| c.allocator == SYSCALLS) {
        let mine: Vec<f64> = log
            .iter()
            .filter(|(w, _)| *w == c.workload)
            .map(|&(_, ns)| ns)
            .collect();
        let k = c.samples.len();
        if mine.len() >= k {
            c.samples = mine[mine.len() - k..].to_vec();
        }
    }
}

/// Purges timed per measurement.
pub const PURGE_REPS: u64 = 4;

/// Times one lazy purge of a full lazy list on `kind`, `runs` times
/// ([`PURGE_REPS`] purges each, averaged). Returns the cell.
pub fn measure_purge(kind: Kind, workload: usize, runs: u32) -> Result<Cell, String> {
    let samples = match kind {
        Kind::Inmem => purge_samples(&backend::inmem(MACHINE_BYTES, MACHINE_CPUS)?, runs),
        Kind::Host => purge_samples(&backend::host(MACHINE_BYTES, MACHINE_CPUS)?, runs),
    }?;
    Ok(Cell {
        workload,
        allocator: kind.name(),
        iters: PURGE_REPS,
        samples,
    })
}

fn purge_samples<B: Backend>(vm: &Vm<B>, runs: u32) -> Result<Vec<f64>, String> {
    let v = &vm.vm;
    let areas = v.lazy_max_pages() / 2;
    let mut held = Vec::with_capacity(areas);
    let mut one = || -> Result<f64, String> {
        v.purge();
        for _ in 0..areas {
            held.push(v.vmalloc(PAGE_SIZE).map_err(|e| e.to_string())?.as_ptr());
        }
        for p in held.drain(..) {
            v.vfree(p).map_err(|e| e.to_string())?;
        }
        let lazy = v.stats().lazy_areas as usize;
        if lazy != areas {
            return Err(format!(
                "{lazy} lazy areas before the purge, {areas} expected"
            ));
        }
        let calls = v.tables().syscalls().map(|(_, c)| c);
        let t = Instant::now();
        let n = v.purge();
        let ns = t.elapsed().as_nanos() as f64;
        if n != areas {
            return Err(format!("purge took {n} areas, {areas} expected"));
        }
        // Host mappings go at vfree time: a purge makes no system call.
        if v.tables().syscalls().map(|(_, c)| c) != calls {
            return Err("the purge made system calls".into());
        }
        Ok(ns)
    };
    one()?; // warm-up
    let mut samples = Vec::with_capacity(runs as usize);
    for _ in 0..runs {
        let mut sum = 0.0;
        for _ in 0..PURGE_REPS {
            sum += one()?;
        }
        samples.push(sum / PURGE_REPS as f64);
    }
    Ok(samples)
}

/// Areas per purge on the suite's machines.
pub fn purge_areas() -> usize {
    // fls(2) * 32 MiB of lazily freed pages, two pages (area + guard) each.
    let fls = (usize::BITS - MACHINE_CPUS.leading_zeros()) as usize;
    fls * (32 << 20) / PAGE_SIZE / 2
}
