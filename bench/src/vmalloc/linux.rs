//! Linux's `lib/test_vmalloc.c`, run as a benchmark: the same scenarios, the
//! same parameters, the same summary lines.
//!
//! ```text
//!   main thread: build the machine, start nr_threads workers, release them
//!   together (Linux: an SRCU section), wait, print per worker:
//!     Summary: <test> passed: P failed: F xfailed: X repeat: R loops: L avg: U usec
//!     All test took worker<i>=<cycles> cycles
//!   worker i: kmem CPU i, pinned to an OS CPU; scenarios in run_test_mask
//!     order, or shuffled as Linux's shuffle_array does unless
//!     --sequential-test-order; each repeated test_repeat_count times, the
//!     average wall time in microseconds reported
//! ```
//!
//! The scenarios (bit = 1 << index in `run_test_mask`, as in Linux):
//!
//! | bit  | scenario                        | what one loop does |
//! |------|---------------------------------|--------------------|
//! | 1    | fix_size_alloc_test             | vmalloc(nr_pages) (vmalloc_huge with --use-huge), write a byte, vfree |
//! | 2    | full_fit_alloc_test             | with fls(ncpus) x 8192 pairs of 1-page areas made and every other one freed: vmalloc 1 page, write, vfree |
//! | 4    | long_busy_list_alloc_test       | with 15000 1-page areas live: vmalloc 100 pages and 1 page, write both, vfree both |
//! | 8    | random_size_alloc_test          | vmalloc of 1..=100 pages, write, vfree |
//! | 16   | fix_align_alloc_test            | __vmalloc_node(5 pages, align 32 KiB, GFP_KERNEL\|__GFP_ZERO), vfree |
//! | 32   | random_size_align_alloc_test    | 1..=10 pages aligned to 2^(r % 23), zeroed, vfree |
//! | 64   | align_shift_alloc_test          | 1 page at every alignment 2^0..2^63 (expected to fail: xfail) |
//! | 128  | pcpu_alloc_test                 | not implemented: kmem has no per-CPU allocator |
//! | 256  | kvfree_rcu_1_arg_vmalloc_test   | vmalloc 1 page, write, kvfree_rcu_mightsleep |
//! | 512  | kvfree_rcu_2_arg_vmalloc_test   | vmalloc 1 page, write, kvfree_rcu(p, rcu) |
//! | 1024 | vm_map_ram_test                 | vm_map_ram(nr_pages bulk-allocated pages), write, vm_unmap_ram |
//! | 2048 | no_block_alloc_test             | preempt_disable; __vmalloc(nr_pages, GFP_ATOMIC or GFP_NOWAIT); write; vfree (xfail allowed) |
//! | 4096 | vrealloc_test                   | vrealloc 1 page -> 4 pages -> 1 page -> half a page -> 1 page, data checked, vfree |
//!
//! Where Linux differs from a userspace run, this module says what it does
//! instead:
//! - random numbers: a SplitMix64 per worker, seeded by the worker index
//!   (the runs are reproducible);
//! - writes: through the vmalloc pointer on the hosted backend; on the
//!   in-memory backend (whose pointers are not mapped in this process)
//!   through the direct map of the frame the page tables translate to;
//! - RCU: `kvfree_rcu` queues; a grace period ([`kmem::kvmalloc::KvAlloc::rcu_barrier`])
//!   ends every [`GRACE_PERIOD_OBJECTS`] objects, inside the timed loop, and
//!   once after it (Linux frees from a kworker in the background);
//! - the hosted backend maps every area as host mappings (two VMAs per live
//!   area with its guard page). A scenario whose live areas would pass
//!   `vm.max_map_count` is skipped there, with the figures printed.
//!
//! This Linux version prints `xfailed:` (align_shift and no_block may fail
//! by design); older ones printed the same line without it.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use kmem::addr::{Pfn, VirtAddr, PAGE_SIZE};
use kmem::gfp::{__GFP_NOWARN, __GFP_ZERO, GFP_ATOMIC, GFP_KERNEL, GFP_NOWAIT};
use kmem::kvmalloc::KvAlloc;
use kmem::vmalloc::THREAD_ALIGN;
use kmem::Platform;
use serde_json::json;

use super::backend::{self, Backend, Kind, Vm};

/// Objects `kvfree_rcu` queues before a grace period ends (a page of
/// pointers, as Linux's bulk arrays hold about this many).
pub const GRACE_PERIOD_OBJECTS: usize = 512;

/// Linux's test table, in bit order: name, expected to fail (xfail).
pub const TESTS: [(&str, bool); 13] = [
    ("fix_size_alloc_test", false),
    ("full_fit_alloc_test", false),
    ("long_busy_list_alloc_test", false),
    ("random_size_alloc_test", false),
    ("fix_align_alloc_test", false),
    ("random_size_align_alloc_test", false),
    ("align_shift_alloc_test", true),
    ("pcpu_alloc_test", false),
    ("kvfree_rcu_1_arg_vmalloc_test", false),
    ("kvfree_rcu_2_arg_vmalloc_test", false),
    ("vm_map_ram_test", false),
    ("no_block_alloc_test", true),
    ("vrealloc_test", false),
];

/// Index of pcpu_alloc_test.
const PCPU: usize = 7;

/// Every scenario.
pub const ALL_TESTS_MASK: u32 = (1 << TESTS.len()) - 1;

/// Linux's module parameters.
#[derive(Debug, Clone)]
pub struct Params {
    pub nr_threads: usize,
    pub test_loop_count: usize,
    pub test_repeat_count: usize,
    pub run_test_mask: u32,
    pub sequential_test_order: bool,
    pub nr_pages: usize,
    pub use_huge: bool,
}

impl Params {
    fn pages(&self) -> usize {
        self.nr_pages.max(1)
    }
}

/// One worker's result for one scenario.
#[derive(Debug, Clone, Copy, Default)]
struct Data {
    passed: u32,
    failed: u32,
    xfailed: u32,
    /// Average microseconds per repeat.
    usec: u64,
    /// Why it was not run, if so.
    skipped: Option<&'static str>,
}

/// One worker's results.
#[derive(Debug, Clone, Default)]
struct Worker {
    data: [Data; TESTS.len()],
    cycles: u64,
    errors: Vec<String>,
}

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn u8(&mut self) -> u8 {
        self.next() as u8
    }
    /// Uniform in `lo..=hi`.
    fn inclusive(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// The time-stamp counter (Linux's `get_cycles()` on x86); nanoseconds
/// elsewhere.
fn cycles() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: rdtsc has no preconditions on x86-64.
        #[allow(unused_unsafe)]
        unsafe {
            core::arch::x86_64::_rdtsc()
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        use std::sync::OnceLock;
        static T0: OnceLock<Instant> = OnceLock::new();
        T0.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}

/// What a scenario sees: the allocators and how to write to their memory.
struct Ctx<'v, B: Backend> {
    vm: &'v Vm<B>,
    /// Pointers are mapped in this process (hosted backend).
    real: bool,
    p: &'v Params,
}

type R = Result<(), String>;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl<B: Backend> Ctx<'_, B> {
    /// `*p = v`: through the pointer if it is real, else through the direct
    /// map of the frame the tables translate it to.
    fn poke(&self, p: *mut u8, v: u8) {
        if self.real {
            // SAFETY: a live vmalloc area, mapped in this process.
            unsafe { p.write_volatile(v) };
        } else if let Some(d) = self.direct(p) {
            // SAFETY: the direct-map alias of a live area's byte.
            unsafe { d.write_volatile(v) };
        }
    }

    fn peek(&self, p: *const u8) -> u8 {
        if self.real {
            // SAFETY: as in `poke`.
            unsafe { p.read_volatile() }
        } else {
            // SAFETY: as in `poke`.
            self.direct(p)
                .map_or(0, |d| unsafe { d.cast_const().read_volatile() })
        }
    }

    fn direct(&self, p: *const u8) -> Option<*mut u8> {
        let t = self.vm.vm.tables().translate(VirtAddr(p as usize)).ok()?;
        Some(
            self.vm
                .vm
                .pages()
                .platform()
                .phys_to_virt(t.pa)
                .as_ptr::<u8>(),
        )
    }

    fn vmalloc(&self, size: usize) -> Result<*mut u8, String> {
        self.vm.vm.vmalloc(size).map(|p| p.as_ptr()).map_err(err)
    }

    fn vfree(&self, p: *mut u8) -> R {
        self.vm.vm.vfree(p).map_err(err)
    }

    fn nr_cpus(&self) -> usize {
        self.vm.vm.pages().platform().nr_cpus()
    }
}

fn fls(x: usize) -> usize {
    (usize::BITS - x.leading_zeros()) as usize
}

fn fix_size_alloc_test<B: Backend>(c: &Ctx<'_, B>, _: &mut Rng) -> R {
    let size = c.p.pages() * PAGE_SIZE;
    for _ in 0..c.p.test_loop_count {
        let p = if c.p.use_huge {
            c.vm.vm.vmalloc_huge(size, GFP_KERNEL)
        } else {
            c.vm.vm.vmalloc(size)
        }
        .map_err(err)?
        .as_ptr();
        c.poke(p, 0);
        c.vfree(p)?;
    }
    Ok(())
}

/// Pages a vmalloc'ed array of `n` pointers takes.
fn array_pages(n: usize) -> usize {
    (8 * n).div_ceil(PAGE_SIZE)
}

fn full_fit_alloc_test<B: Backend>(c: &Ctx<'_, B>, _: &mut Rng) -> R {
    let junk_length = fls(c.nr_cpus()) * (32 << 20) / PAGE_SIZE;
    // Linux keeps both pointer arrays in vmalloc memory; they are allocated
    // here too (the pointers themselves live in Vecs).
    let ptr_arr = c.vmalloc(8 * junk_length)?;
    let junk_arr = match c.vmalloc(8 * junk_length) {
        Ok(p) => p,
        Err(e) => {
            c.vfree(ptr_arr)?;
            return Err(e);
        }
    };
    let mut ptr = Vec::with_capacity(junk_length);
    let mut junk = Vec::with_capacity(junk_length);
    let mut rv = Ok(());
    for _ in 0..junk_length {
        match (c.vmalloc(PAGE_SIZE), c.vmalloc(PAGE_SIZE)) {
            (Ok(a), Ok(b)) => {
                ptr.push(a);
                junk.push(b);
            }
            (a, b) => {
                for p in [&a, &b].into_iter().flatten() {
                    c.vfree(*p)?;
                }
                rv = Err(a.and(b).err().unwrap_or_default());
                break;
            }
        }
    }
    for j in junk {
        c.vfree(j)?;
    }
    if rv.is_ok() {
        for _ in 0..c.p.test_loop_count {
            match c.vmalloc(PAGE_SIZE) {
                Ok(t) => {
                    c.poke(t, 1);
                    c.vfree(t)?;
                }
                Err(e) => {
                    rv = Err(e);
                    break;
                }
            }
        }
    }
    for p in ptr {
        c.vfree(p)?;
    }
    c.vfree(ptr_arr)?;
    c.vfree(junk_arr)?;
    rv
}

const BUSY_LIST: usize = 15000;

fn long_busy_list_alloc_test<B: Backend>(c: &Ctx<'_, B>, _: &mut Rng) -> R {
    let arr = c.vmalloc(8 * BUSY_LIST)?;
    let mut ptr = Vec::with_capacity(BUSY_LIST);
    let mut rv = Ok(());
    for _ in 0..BUSY_LIST {
        match c.vmalloc(PAGE_SIZE) {
            Ok(p) => ptr.push(p),
            Err(e) => {
                rv = Err(e);
                break;
            }
        }
    }
    if rv.is_ok() {
        for _ in 0..c.p.test_loop_count {
            let p1 = match c.vmalloc(100 * PAGE_SIZE) {
                Ok(p) => p,
                Err(e) => {
                    rv = Err(e);
                    break;
                }
            };
            let p2 = match c.vmalloc(PAGE_SIZE) {
                Ok(p) => p,
                Err(e) => {
                    c.vfree(p1)?;
                    rv = Err(e);
                    break;
                }
            };
            c.poke(p1, 0);
            c.poke(p2, 1);
            c.vfree(p1)?;
            c.vfree(p2)?;
        }
    }
    for p in ptr {
        c.vfree(p)?;
    }
    c.vfree(arr)?;
    rv
}

fn random_size_alloc_test<B: Backend>(c: &Ctx<'_, B>, rng: &mut Rng) -> R {
    for _ in 0..c.p.test_loop_count {
        let n = rng.inclusive(1, 100) as usize;
        let p = c.vmalloc(n * PAGE_SIZE)?;
        c.poke(p, 1);
        c.vfree(p)?;
    }
    Ok(())
}

fn fix_align_alloc_test<B: Backend>(c: &Ctx<'_, B>, _: &mut Rng) -> R {
    for _ in 0..c.p.test_loop_count {
        let p =
            c.vm.vm
                .vmalloc_node_align(5 * PAGE_SIZE, THREAD_ALIGN << 1, GFP_KERNEL | __GFP_ZERO, 0)
                .map_err(err)?
                .as_ptr();
        c.vfree(p)?;
    }
    Ok(())
}

fn random_size_align_alloc_test<B: Backend>(c: &Ctx<'_, B>, rng: &mut Rng) -> R {
    for _ in 0..c.p.test_loop_count {
        let rnd = rng.u8() as usize;
        let align = 1usize << (rnd % 23);
        let size = ((rnd % 10) + 1) * PAGE_SIZE;
        let p =
            c.vm.vm
                .vmalloc_node_align(size, align, GFP_KERNEL | __GFP_ZERO, 0)
                .map_err(err)?
                .as_ptr();
        c.vfree(p)?;
    }
    Ok(())
}

/// Expected to fail: some alignment below 2^64 cannot fit the range. The
/// failure is quiet (`__GFP_NOWARN`) so that it does not flood the log.
fn align_shift_alloc_test<B: Backend>(c: &Ctx<'_, B>, _: &mut Rng) -> R {
    for i in 0..usize::BITS {
        let align = 1usize << i;
        let p =
            c.vm.vm
                .vmalloc_node_align(PAGE_SIZE, align, GFP_KERNEL | __GFP_ZERO | __GFP_NOWARN, 0)
                .map_err(|e| format!("alignment 2^{i}: {e}"))?
                .as_ptr();
        c.vfree(p)?;
    }
    Ok(())
}

fn kvfree_rcu_test<B: Backend>(c: &Ctx<'_, B>, two_arg: bool) -> R {
    let kv = KvAlloc::new(&c.vm.slab, &c.vm.vm);
    let mut rv = Ok(());
    for i in 0..c.p.test_loop_count {
        let p = match c.vmalloc(PAGE_SIZE) {
            Ok(p) => p,
            Err(e) => {
                rv = Err(e);
                break;
            }
        };
        // struct test_kvfree_rcu { struct rcu_head rcu; u8 array[20]; }
        c.poke(p.wrapping_add(16), b'a');
        c.poke(p, 0x5a);
        let r = if two_arg {
            kv.kvfree_rcu(p, 0)
        } else {
            kv.kvfree_rcu_mightsleep(p)
        };
        if let Err(e) = r {
            rv = Err(err(e));
            break;
        }
        // Readers may still use the object until the grace period: the
        // one-argument form has no rcu_head to write, and must write
        // nothing.
        if c.peek(p.wrapping_add(16)) != b'a' || (!two_arg && c.peek(p) != 0x5a) {
            rv = Err("the object changed before the grace period".into());
            break;
        }
        if (i + 1) % GRACE_PERIOD_OBJECTS == 0 {
            kv.rcu_barrier();
        }
    }
    kv.rcu_barrier();
    rv
}

fn kvfree_rcu_1_arg_vmalloc_test<B: Backend>(c: &Ctx<'_, B>, _: &mut Rng) -> R {
    kvfree_rcu_test(c, false)
}

fn kvfree_rcu_2_arg_vmalloc_test<B: Backend>(c: &Ctx<'_, B>, _: &mut Rng) -> R {
    kvfree_rcu_test(c, true)
}

fn vm_map_ram_test<B: Backend>(c: &Ctx<'_, B>, _: &mut Rng) -> R {
    let n = c.p.pages();
    let pages_alloc = c.vm.vm.pages();
    let mut slots = vec![None; n];
    let got = pages_alloc.alloc_pages_bulk(GFP_KERNEL, &mut slots);
    let pages: Vec<Pfn> = slots.into_iter().flatten().collect();
    let mut rv = if got == n {
        Ok(())
    } else {
        Err(format!("alloc_pages_bulk: {got} of {n} pages"))
    };
    if rv.is_ok() {
        for _ in 0..c.p.test_loop_count {
            let v = match c.vm.vm.vm_map_ram(&pages, -1) {
                Ok(v) => v.as_ptr(),
                Err(e) => {
                    rv = Err(err(e));
                    break;
                }
            };
            c.poke(v, b'a');
            if let Err(e) = c.vm.vm.vm_unmap_ram(v, n) {
                rv = Err(err(e));
                break;
            }
        }
    }
    for p in pages {
        pages_alloc.free_pages(p, 0).map_err(err)?;
    }
    rv
}

fn no_block_alloc_test<B: Backend>(c: &Ctx<'_, B>, rng: &mut Rng) -> R {
    let size = c.p.pages() * PAGE_SIZE;
    for _ in 0..c.p.test_loop_count {
        let gfp = if rng.u8() % 2 == 1 {
            GFP_ATOMIC
        } else {
            GFP_NOWAIT
        };
        let p = {
            let _preempt = kmem_host::preempt_disable();
            c.vm.vm.vmalloc_gfp(size, gfp)
        }
        .map_err(err)?
        .as_ptr();
        c.poke(p, 0);
        c.vfree(p)?;
    }
    Ok(())
}

fn vrealloc_test<B: Backend>(c: &Ctx<'_, B>, _: &mut Rng) -> R {
    let vm = &c.vm.vm;
    for _ in 0..c.p.test_loop_count {
        let mut p = vm
            .vrealloc(std::ptr::null(), PAGE_SIZE, GFP_KERNEL)
            .map_err(err)?
            .ok_or("vrealloc(NULL) returned NULL")?
            .as_ptr();
        c.poke(p, b'a');
        let steps = [
            (4 * PAGE_SIZE, "grow beyond the area (moves)"),
            (PAGE_SIZE, "shrink across a page boundary"),
            (PAGE_SIZE / 2, "shrink within the page"),
            (PAGE_SIZE, "grow within the page (in place)"),
        ];
        let mut rv = Ok(());
        for (size, what) in steps {
            match vm.vrealloc(p, size, GFP_KERNEL) {
                Ok(Some(q)) => {
                    p = q.as_ptr();
                    if c.peek(p) != b'a' {
                        rv = Err(format!("{what}: data lost"));
                        break;
                    }
                }
                Ok(None) => {
                    rv = Err(format!("{what}: NULL"));
                    break;
                }
                Err(e) => {
                    rv = Err(format!("{what}: {e}"));
                    break;
                }
            }
        }
        c.vfree(p)?;
        rv?;
    }
    Ok(())
}

type Scenario<B> = fn(&Ctx<'_, B>, &mut Rng) -> R;

fn scenarios<B: Backend>() -> [Option<Scenario<B>>; TESTS.len()] {
    [
        Some(fix_size_alloc_test::<B>),
        Some(full_fit_alloc_test::<B>),
        Some(long_busy_list_alloc_test::<B>),
        Some(random_size_alloc_test::<B>),
        Some(fix_align_alloc_test::<B>),
        Some(random_size_align_alloc_test::<B>),
        Some(align_shift_alloc_test::<B>),
        None,
        Some(kvfree_rcu_1_arg_vmalloc_test::<B>),
        Some(kvfree_rcu_2_arg_vmalloc_test::<B>),
        Some(vm_map_ram_test::<B>),
        Some(no_block_alloc_test::<B>),
        Some(vrealloc_test::<B>),
    ]
}

/// Areas a scenario keeps live at its peak (for the host mapping budget).
fn peak_areas(test: usize, nr_cpus: usize) -> usize {
    match test {
        1 => {
            let junk = fls(nr_cpus) * (32 << 20) / PAGE_SIZE;
            2 * junk + 2 * array_pages(junk)
        }
        2 => BUSY_LIST + array_pages(BUSY_LIST) + 2,
        _ => 8,
    }
}

/// Linux's `shuffle_array`: j is drawn below i (not i + 1).
fn shuffle(order: &mut [usize], rng: &mut Rng) {
    for i in (1..order.len()).rev() {
        let j = (rng.next() % i as u64) as usize;
        order.swap(i, j);
    }
}

/// Host mappings this process may still create before `vm.max_map_count`.
fn host_map_budget() -> Option<(usize, usize)> {
    let max = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let used = std::fs::read_to_string("/proc/self/maps")
        .ok()?
        .lines()
        .count();
    Some((max, used))
}

/// A worker: scenarios in order, each repeated.
fn worker<B: Backend>(
    vm: &Vm<B>,
    real: bool,
    p: &Params,
    index: usize,
    skip: &[Option<&'static str>; TESTS.len()],
) -> Worker {
    let c = Ctx { vm, real, p };
    let mut rng = Rng(0x7465_7374_5f76_6d00 + index as u64);
    let mut order: Vec<usize> = (0..TESTS.len()).collect();
    if !p.sequential_test_order {
        shuffle(&mut order, &mut rng);
    }
    let funcs = scenarios::<B>();
    let mut w = Worker {
        cycles: cycles(),
        ..Worker::default()
    };
    for &t in &order {
        if p.run_test_mask & (1 << t) == 0 {
            continue;
        }
        let d = &mut w.data[t];
        if let Some(why) = skip[t] {
            d.skipped = Some(why);
            continue;
        }
        let Some(f) = funcs[t] else {
            debug_assert_eq!(t, PCPU);
            d.skipped = Some("not implemented: no per-CPU allocator");
            continue;
        };
        let t0 = Instant::now();
        for _ in 0..p.test_repeat_count {
            match f(&c, &mut rng) {
                Ok(()) => d.passed += 1,
                Err(_) if TESTS[t].1 => d.xfailed += 1,
                Err(e) => {
                    d.failed += 1;
                    w.errors.push(format!("{}: {e}", TESTS[t].0));
                }
            }
        }
        d.usec = (t0.elapsed() / p.test_repeat_count as u32).as_micros() as u64;
    }
    w.cycles = cycles().wrapping_sub(w.cycles);
    w
}

/// What one backend's run produced.
pub struct Outcome {
    pub backend: Kind,
    pub elapsed: Duration,
    workers: Vec<Worker>,
    /// Why scenarios were skipped on this backend, with the figures.
    notes: Vec<String>,
    /// Lines the platform logged (warnings), counted.
    warnings: usize,
}

impl Outcome {
    /// Scenarios that failed (not counting expected failures).
    pub fn failed(&self) -> u32 {
        self.workers
            .iter()
            .flat_map(|w| w.data.iter())
            .map(|d| d.failed)
            .sum()
    }
}

/// Machine size for `p`: 1 GiB plus 256 MiB per worker (full_fit keeps
/// 128 MiB live per worker on two CPUs), at most 16 GiB.
pub fn machine_bytes(p: &Params) -> u64 {
    ((1u64 << 30) + (p.nr_threads as u64) * (256 << 20)).min(16 << 30)
}

/// kmem CPUs for `p`: one per worker, at least 2 (this project's reference
/// machine), at most kmem's limit.
pub fn machine_cpus(p: &Params) -> usize {
    p.nr_threads.clamp(2, kmem::page::MAX_CPUS)
}

/// Runs the scenarios on `kind` with `p`.
pub fn run(kind: Kind, p: &Params, cpus: &[usize]) -> Result<Outcome, String> {
    match kind {
        Kind::Inmem => {
            let vm = backend::inmem(machine_bytes(p), machine_cpus(p))?;
            Ok(drive(kind, &vm, false, p, cpus))
        }
        Kind::Host => {
            let vm = backend::host(machine_bytes(p), machine_cpus(p))?;
            Ok(drive(kind, &vm, true, p, cpus))
        }
    }
}

fn drive<B: Backend>(kind: Kind, vm: &Vm<B>, real: bool, p: &Params, cpus: &[usize]) -> Outcome {
    let mut skip = [None; TESTS.len()];
    let mut notes = Vec::new();
    let nr_cpus = vm.vm.pages().platform().nr_cpus();
    if real {
        if let Some((max, used)) = host_map_budget() {
            // Skipping every scenario that alone would pass the limit on
            // all workers at once bounds the rest: any mix of the kept
            // scenarios needs at most what the largest kept one needs on
            // every worker.
            for t in (0..TESTS.len()).filter(|t| p.run_test_mask & (1 << t) != 0) {
                let need = used + 2 * p.nr_threads * peak_areas(t, nr_cpus);
                if need > max {
                    skip[t] = Some("skipped on the hosted backend: too many host mappings");
                    notes.push(format!(
                        "{}: skipped on {}: {} worker(s) x {} live areas need about {} host \
                         mappings (two per area with its guard page, {} in use), above \
                         vm.max_map_count = {}; the in-memory backend runs it",
                        TESTS[t].0,
                        kind.name(),
                        p.nr_threads,
                        peak_areas(t, nr_cpus),
                        need,
                        used,
                        max
                    ));
                }
            }
        }
    }
    vm.machine().platform().take_log();
    let barrier = Barrier::new(p.nr_threads);
    let t0 = Instant::now();
    let workers: Vec<Worker> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..p.nr_threads)
            .map(|i| {
                let (barrier, skip) = (&barrier, &skip);
                s.spawn(move || {
                    backend::pin_to(cpus, i);
                    kmem_host::set_cpu(i % nr_cpus);
                    barrier.wait();
                    worker(vm, real, p, i, skip)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a test_vmalloc worker panicked"))
            .collect()
    });
    let elapsed = t0.elapsed();
    let warnings = vm.machine().platform().take_log().len();
    Outcome {
        backend: kind,
        elapsed,
        workers,
        notes,
        warnings,
    }
}

/// Prints Linux's summary lines for `o`.
pub fn print_text(o: &Outcome, p: &Params) {
    println!(
        "test_vmalloc on {}: nr_threads={} test_loop_count={} test_repeat_count={} \
         run_test_mask={:#x} nr_pages={} use_huge={} sequential_test_order={} ({:.1} s)",
        o.backend.name(),
        p.nr_threads,
        p.test_loop_count,
        p.test_repeat_count,
        p.run_test_mask,
        p.nr_pages,
        p.use_huge,
        p.sequential_test_order,
        o.elapsed.as_secs_f64()
    );
    for (i, w) in o.workers.iter().enumerate() {
        for (t, d) in w.data.iter().enumerate() {
            if p.run_test_mask & (1 << t) == 0 {
                continue;
            }
            match d.skipped {
                Some(why) => println!("Summary: {} {why}", TESTS[t].0),
                None => println!(
                    "Summary: {} passed: {} failed: {} xfailed: {} repeat: {} loops: {} avg: {} usec",
                    TESTS[t].0,
                    d.passed,
                    d.failed,
                    d.xfailed,
                    p.test_repeat_count,
                    p.test_loop_count,
                    d.usec
                ),
            }
        }
        println!("All test took worker{i}={} cycles", w.cycles);
        for e in &w.errors {
            println!("  worker{i} failure: {e}");
        }
    }
    for n in &o.notes {
        println!("note: {n}");
    }
    if o.warnings > 0 {
        println!(
            "note: the platform logged {} warning line(s) (expected failures warn)",
            o.warnings
        );
    }
}

/// One JSON object per (worker, scenario).
pub fn print_json(o: &Outcome, p: &Params) {
    for (i, w) in o.workers.iter().enumerate() {
        for (t, d) in w.data.iter().enumerate() {
            if p.run_test_mask & (1 << t) == 0 {
                continue;
            }
            let row = match d.skipped {
                Some(why) => json!({
                    "suite": "test_vmalloc", "workload": TESTS[t].0,
                    "allocator": o.backend.name(), "ns_per_op": null,
                    "worker": i, "skipped": why,
                }),
                None => {
                    let loops = (p.test_loop_count as f64).max(1.0);
                    json!({
                        "suite": "test_vmalloc", "workload": TESTS[t].0,
                        "allocator": o.backend.name(),
                        "ns_per_op": (d.usec as f64 * 1000.0 / loops * 100.0).round() / 100.0,
                        "worker": i, "passed": d.passed, "failed": d.failed,
                        "xfailed": d.xfailed, "repeat": p.test_repeat_count,
                        "loops": p.test_loop_count, "avg_usec": d.usec,
                    })
                }
            };
            println!("{row}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(mask: u32) -> Params {
        Params {
            nr_threads: 1,
            test_loop_count: 200,
            test_repeat_count: 1,
            run_test_mask: mask,
            sequential_test_order: true,
            nr_pages: 0,
            use_huge: false,
        }
    }

    /// Every scenario passes (or xfails where Linux allows it) on both
    /// backends, short loops.
    #[test]
    fn every_scenario_runs() {
        let p = params(ALL_TESTS_MASK & !(1 << 1) & !(1 << 2));
        for kind in [Kind::Inmem, Kind::Host] {
            let o = run(kind, &p, &[]).unwrap();
            assert_eq!(o.failed(), 0, "{:?}: {:?}", kind, o.workers[0].errors);
            let d = &o.workers[0].data;
            assert_eq!(d[6].xfailed, 1, "align_shift is expected to fail");
            assert!(d[PCPU].skipped.is_some());
            assert_eq!(d[0].passed, 1);
            assert_eq!(d[12].passed, 1);
        }
    }

    #[test]
    fn heavy_scenarios_run_in_memory() {
        let p = params((1 << 1) | (1 << 2));
        let o = run(Kind::Inmem, &p, &[]).unwrap();
        assert_eq!(o.failed(), 0, "{:?}", o.workers[0].errors);
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut v: Vec<usize> = (0..13).collect();
        shuffle(&mut v, &mut Rng(3));
        let mut s = v.clone();
        s.sort_unstable();
        assert_eq!(s, (0..13).collect::<Vec<_>>());
    }
}
