//! Tour sections on vmalloc: why it exists, what it costs, what it does to
//! the TLB.
//!
//! Three sections, numbered from the `first` number `mod.rs` gives:
//!
//! 1. **Fragmentation** (`vmalloc_fragmentation`). Every free block of
//!    order 8 (1 MiB) or more is taken and every other page of them given
//!    back: hundreds of MiB free, no 1 MiB block. `kmalloc(1 MiB,
//!    GFP_ATOMIC)` fails; `vmalloc(64 MiB)` succeeds from scattered pages,
//!    which the tour writes through the vmalloc pointer and reads back
//!    through the direct map, page by page. kvmalloc shows both sides:
//!    GFP_KERNEL falls back to vmalloc, GFP_ATOMIC may not.
//! 2. **Cost** (`vmalloc_cost`). kmalloc+kfree against vmalloc+vfree at
//!    4 KiB, 64 KiB, 1 MiB and 4 MiB (and vmalloc_huge at 4 MiB), timed on
//!    the spot: vmalloc on kmem's in-memory x86-64 tables (what a kernel
//!    does) and on the hosted backend (the same plus `mmap`), with the
//!    page-table entries and table pages each allocation writes, read from
//!    the tables' counters.
//! 3. **TLB** (`vmalloc_tlb`). A 64 MiB buffer scanned a cache line at a
//!    time through the TLB model (Golden Cove geometry), cold and warm, in
//!    four mappings: the direct map with 2 MiB entries (how Linux maps this
//!    machine's RAM: its memory map has no whole, aligned gigabyte), the
//!    direct map with 1 GiB entries (how Linux maps a gigabyte that is all
//!    RAM, with gbpages), vmalloc (4 KiB entries) and vmalloc_huge (2 MiB).
//!    Beside it, the same scans timed on the hosted machine, whose own
//!    mappings are all 4 KiB pages.
//!
//! The direct-map tables of section 3 are built here, as Linux's
//! `init_memory_mapping` would lay them out, at Linux's `PAGE_OFFSET`
//! (`0xffff888000000000`); they only feed the TLB model. Everything the
//! sections allocate is given back, and the section checks it.

use super::{fmt_ns, group, per_op, Out, Table, TourError};
use kmem::addr::{Pfn, PhysAddr, VirtAddr, PAGE_SIZE};
use kmem::error::AllocError;
use kmem::gfp::{__GFP_MEMALLOC, __GFP_NOWARN, GFP_ATOMIC, GFP_KERNEL, GFP_NOWAIT};
use kmem::kvmalloc::KvAlloc;
use kmem::page::memmap::RegionKind;
use kmem::paging::{PageSize, PageTables, PteFlags, Tlb, TlbConfig, X86PageTables};
use kmem::slab::{SlabAllocator, SlabConfig};
use kmem::vmalloc::Vmalloc;
use kmem::Platform;
use kmem_host::vmap::{self, HostVmalloc};
use kmem_host::{HostPlatform, Machine};
use serde_json::{json, Map, Value};
use std::hint::black_box;
use std::time::{Duration, Instant};

type Pages = kmem::page::PageAllocator<HostPlatform>;
type InMem<'m> = Vmalloc<'m, HostPlatform, X86PageTables<'m, HostPlatform>>;

const MIB: usize = 1 << 20;
/// The buffer of sections 1 and 3.
const BIG: usize = 64 * MIB;
/// The kmalloc that fails in section 1, and its order.
const KMALLOC_BIG: usize = MIB;
const KMALLOC_BIG_ORDER: u32 = 8;
/// Linux's `PAGE_OFFSET` (start of the direct map) on x86-64, 4-level.
const PAGE_OFFSET: usize = 0xffff_8880_0000_0000;
/// Bytes between two reads of a scan (one cache line).
const LINE: usize = 64;

/// Runs the three sections, adding `vmalloc_fragmentation`, `vmalloc_cost`
/// and `vmalloc_tlb` to `obj`.
pub fn run(
    m: &Machine,
    o: &mut Out,
    obj: &mut Map<String, Value>,
    first: u32,
) -> Result<(), TourError> {
    let pages = m.pages();
    pages.drain_all_pages();
    let start_free = pages.nr_free_pages();
    {
        let slab = SlabAllocator::new(pages, SlabConfig::default())
            .map_err(|e| format!("SlabAllocator::new: {e}"))?;
        let host = vmap::vmalloc(m).map_err(|e| format!("hosted vmalloc: {e}"))?;
        let inmem = vmap::in_memory(m).map_err(|e| format!("in-memory vmalloc: {e}"))?;
        let v = fragmentation(m, o, first, &slab, &host, &inmem)?;
        obj.insert("vmalloc_fragmentation".into(), v);
        let v = cost(m, o, first + 1, &slab, &host, &inmem)?;
        obj.insert("vmalloc_cost".into(), v);
        let v = tlb(m, o, first + 2, &host)?;
        obj.insert("vmalloc_tlb".into(), v);
    }
    pages.drain_all_pages();
    let end_free = pages.nr_free_pages();
    o.blank();
    say!(
        o,
        "The vmalloc sections gave everything back: {} pages free ({} before them).",
        group(end_free as u64),
        group(start_free as u64)
    );
    o.check(
        end_free == start_free,
        format!(
            "the vmalloc sections returned every page ({end_free} free now, {start_free} before)"
        ),
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 1. Fragmentation

/// Takes every free block of order `KMALLOC_BIG_ORDER` or more, then gives
/// back every other page of each: returns the pages kept.
fn fragment(pages: &Pages) -> Result<Vec<Pfn>, TourError> {
    let gfp = GFP_NOWAIT | __GFP_MEMALLOC | __GFP_NOWARN;
    let mut blocks = Vec::new();
    while let Ok(p) = pages.alloc_pages(gfp, KMALLOC_BIG_ORDER) {
        blocks.push(p);
    }
    let mut kept = Vec::with_capacity(blocks.len() << (KMALLOC_BIG_ORDER - 1));
    for b in blocks {
        pages
            .split_page(b, KMALLOC_BIG_ORDER)
            .map_err(|e| format!("split_page({b}): {e}"))?;
        for i in 0..1u64 << KMALLOC_BIG_ORDER {
            if i % 2 == 0 {
                free(pages, b.add(i), 0)?;
            } else {
                kept.push(b.add(i));
            }
        }
    }
    pages.drain_all_pages();
    Ok(kept)
}

fn free(pages: &Pages, p: Pfn, order: u32) -> Result<(), TourError> {
    pages
        .free_pages(p, order)
        .map_err(|e| format!("the allocator refused to free pfn {p} (order {order}): {e}"))
}

/// Largest free order over all zones.
fn largest_order(pages: &Pages) -> Option<u32> {
    pages
        .populated_zones()
        .filter_map(|z| z.largest_free_order())
        .max()
}

fn fragmentation(
    m: &Machine,
    o: &mut Out,
    n: u32,
    slab: &SlabAllocator<'_, HostPlatform>,
    vm: &HostVmalloc<'_>,
    inmem: &InMem<'_>,
) -> Result<Value, TourError> {
    let pages = m.pages();
    o.heading(
        n,
        "vmalloc: memory in pieces still makes a big buffer (kmalloc cannot)",
    );
    say!(
        o,
        "kmalloc returns physically contiguous memory, reached through the direct map: 1 MiB needs \
         a free order-{KMALLOC_BIG_ORDER} block. vmalloc maps scattered 4 KiB pages into a \
         contiguous virtual range of its own, so it needs free pages, not free blocks."
    );
    let kept = fragment(pages)?;
    let free_pages = pages.nr_free_pages();
    let largest = largest_order(pages);
    o.blank();
    say!(
        o,
        "Took every free block of order {KMALLOC_BIG_ORDER} or more and gave back every other page \
         of each: {} pages ({} MiB) free, {} held; largest free block order {} ({} KiB).",
        group(free_pages as u64),
        free_pages * PAGE_SIZE / MIB,
        group(kept.len() as u64),
        largest.map_or("-".into(), |o| o.to_string()),
        largest.map_or(0, |o| (PAGE_SIZE << o) / 1024)
    );
    o.check(
        largest.is_some_and(|l| l < KMALLOC_BIG_ORDER) && free_pages * PAGE_SIZE > 2 * BIG,
        format!(
            "memory is fragmented: more than {} MiB free, no block of order {KMALLOC_BIG_ORDER}",
            2 * BIG / MIB
        ),
    );

    // kmalloc(1 MiB, GFP_ATOMIC) fails.
    m.platform().take_log();
    let t0 = Instant::now();
    let km = slab.kmalloc(KMALLOC_BIG, GFP_ATOMIC);
    let km_ns = per_op(t0.elapsed(), 1);
    let km_log = m.platform().take_log();
    o.blank();
    let km_json = match km {
        Err(e) => {
            say!(
                o,
                "kmalloc(1 MiB, GFP_ATOMIC), as code holding a spinlock would call it, fails in {}:",
                fmt_ns(km_ns)
            );
            o.quote(&e.to_string());
            if km_log == [e.to_string()] {
                say!(
                    o,
                    "(and logged it as the warning above: GFP_ATOMIC carries no __GFP_NOWARN)"
                );
            } else if !km_log.is_empty() {
                say!(o, "and the allocator logged:");
                o.quote(&km_log.join("\n"));
            }
            let frag = matches!(e, AllocError::NoMemory(nm) if nm.fragmented());
            o.check(
                frag,
                "kmalloc(1 MiB, GFP_ATOMIC) fails for fragmentation (enough pages, no block)",
            );
            json!({ "error": e.to_string(), "ns": km_ns, "log": km_log })
        }
        Ok(p) => {
            slab.kfree(p.as_ptr()).map_err(|e| e.to_string())?;
            o.fail("kmalloc(1 MiB, GFP_ATOMIC) fails once memory is fragmented".into());
            Value::Null
        }
    };

    // vmalloc(64 MiB) succeeds: on the in-memory tables (a kernel's work),
    // then hosted, where the pointer is real.
    let l0 = inmem.tables().stats().leaves_set;
    let t0 = Instant::now();
    let r = inmem.vmalloc(BIG);
    let inmem_ns = per_op(t0.elapsed(), 1);
    let inmem_leaves = inmem.tables().stats().leaves_set - l0;
    let inmem_ok = match r {
        Ok(p) => {
            inmem.vfree(p.as_ptr()).map_err(|e| e.to_string())?;
            inmem.purge();
            true
        }
        Err(e) => {
            o.quote(&e.to_string());
            false
        }
    };
    let h0 = vm.tables().stats().map_calls;
    let t0 = Instant::now();
    let r = vm.vmalloc(BIG);
    let vm_ns = per_op(t0.elapsed(), 1);
    let mmaps = vm.tables().stats().map_calls - h0;
    let p = match r {
        Ok(p) => p.as_ptr(),
        Err(e) => {
            o.quote(&e.to_string());
            o.fail("vmalloc(64 MiB) succeeds in fragmented memory".into());
            unfragment(pages, kept)?;
            return Ok(json!({ "kmalloc": km_json, "vmalloc_error": e.to_string() }));
        }
    };
    // Where the pages came from: runs of physically consecutive frames,
    // and a write through each page read back through the direct map.
    let mut runs = 0usize;
    let mut longest = 0usize;
    let mut cur = 0usize;
    let mut prev: Option<u64> = None;
    let mut mismatches = 0usize;
    let t0 = Instant::now();
    for i in 0..BIG / PAGE_SIZE {
        let va = p as usize + i * PAGE_SIZE;
        let Ok(t) = vm.tables().translate(VirtAddr(va)) else {
            mismatches += 1;
            continue;
        };
        let pfn = t.pa.pfn().0;
        if prev == Some(pfn.wrapping_sub(1)) {
            cur += 1;
        } else {
            runs += 1;
            cur = 1;
        }
        longest = longest.max(cur);
        prev = Some(pfn);
        let tag = 0x766d_616c_6c6f_6300 ^ va as u64;
        let direct = pages.platform().phys_to_virt(t.pa).as_ptr::<u64>();
        // SAFETY: a page of the live area, mapped both at `va` (hosted
        // backend) and in the direct map.
        unsafe {
            (va as *mut u64).write_volatile(tag);
            if direct.read_volatile() != tag {
                mismatches += 1;
            }
        }
    }
    let check_ns = per_op(t0.elapsed(), BIG / PAGE_SIZE);
    let mut info = String::new();
    let _ = vm.vmallocinfo(&mut info);
    let line = info
        .lines()
        .find(|l| l.starts_with(&format!("0x{:016x}-", p as usize)))
        .unwrap_or("")
        .to_string();
    say!(
        o,
        "vmalloc(64 MiB) with GFP_KERNEL succeeds: in {} on kmem's in-memory x86-64 tables (what \
         a kernel does: {} page-table entries written), and in {} hosted, where the host maps \
         runs of consecutive frames one mmap call at a time ({} calls). {} pages in {} physically separate runs \
         (longest {} pages), mapped at {p:p}. Each page was written through the vmalloc address \
         and read back through the direct map ({} per page, host page fault included): {} \
         mismatches.",
        fmt_ns(inmem_ns),
        group(inmem_leaves as u64),
        fmt_ns(vm_ns),
        group(mmaps),
        group((BIG / PAGE_SIZE) as u64),
        group(runs as u64),
        longest,
        fmt_ns(check_ns),
        mismatches
    );
    say!(o, "Its /proc/vmallocinfo line:");
    o.quote(&line);
    o.check(
        inmem_ok && mismatches == 0 && longest < 1 << KMALLOC_BIG_ORDER,
        "vmalloc(64 MiB) works from pages no 1 MiB block could supply, and every page reads back",
    );

    // kvmalloc: both sides of the rule.
    let kv = KvAlloc::new(slab, vm);
    m.platform().take_log();
    let kv_kernel = kv.kvmalloc(KMALLOC_BIG, GFP_KERNEL);
    let kv_atomic = kv.kvmalloc(KMALLOC_BIG, GFP_ATOMIC);
    m.platform().take_log();
    let kernel_in_vmalloc = kv_kernel
        .as_ref()
        .is_ok_and(|q| vm.is_vmalloc_addr(q.as_ptr()));
    say!(
        o,
        "kvmalloc(1 MiB) tries kmalloc first (with __GFP_NORETRY|__GFP_NOWARN above a page): with \
         GFP_KERNEL it {}; with GFP_ATOMIC it {} (a mask that cannot sleep never falls back).",
        match &kv_kernel {
            Ok(q) if kernel_in_vmalloc => format!("falls back to vmalloc ({:p})", q.as_ptr()),
            Ok(q) => format!("got kmalloc memory ({:p})", q.as_ptr()),
            Err(e) => format!("fails: {e}"),
        },
        match &kv_atomic {
            Ok(q) => format!("got {:p}", q.as_ptr()),
            Err(e) => format!("fails: {e}"),
        }
    );
    o.check(
        kernel_in_vmalloc && kv_atomic.is_err(),
        "kvmalloc(1 MiB): GFP_KERNEL falls back to vmalloc, GFP_ATOMIC fails",
    );
    for q in [kv_kernel.ok(), kv_atomic.ok()].into_iter().flatten() {
        kv.kvfree(q.as_ptr()).map_err(|e| e.to_string())?;
    }
    vm.vfree(p).map_err(|e| e.to_string())?;
    vm.purge();
    unfragment(pages, kept)?;
    say!(
        o,
        "Freed the buffer and the held pages: the buddies merge back (largest free order {}).",
        largest_order(pages).map_or("-".into(), |o| o.to_string())
    );
    Ok(json!({
        "free_pages": free_pages,
        "largest_free_order": largest,
        "kmalloc_1mib_atomic": km_json,
        "vmalloc_64mib": {
            "inmem_ns": inmem_ns, "inmem_entries": inmem_leaves, "hosted_ns": vm_ns,
            "hosted_mmap_calls": mmaps, "pages": BIG / PAGE_SIZE, "physical_runs": runs,
            "longest_run_pages": longest, "mismatches": mismatches, "vmallocinfo": line,
        },
        "kvmalloc_1mib_kernel_fell_back": kernel_in_vmalloc,
        "kvmalloc_1mib_atomic_failed": kv_atomic.is_err(),
    }))
}

fn unfragment(pages: &Pages, kept: Vec<Pfn>) -> Result<(), TourError> {
    for p in kept {
        free(pages, p, 0)?;
    }
    pages.drain_all_pages();
    Ok(())
}

// ---------------------------------------------------------------------------
// 2. Cost

/// Sizes of the cost table, with the pairs timed per cell.
const COST_SIZES: [(usize, usize); 4] = [
    (4 << 10, 20_000),
    (64 << 10, 4_000),
    (MIB, 400),
    (4 * MIB, 120),
];

/// Rounds each cell is timed in; the median round is reported, so that a
/// moment the host takes the CPU away does not decide a figure.
const ROUNDS: usize = 5;

/// Times pairs of `f`: `n / 8` untimed, then [`ROUNDS`] rounds of
/// `n / ROUNDS`; returns the median ns per pair and the calls made.
fn time_pairs(
    n: usize,
    mut f: impl FnMut() -> Result<(), TourError>,
) -> Result<(f64, usize), TourError> {
    for _ in 0..n / 8 {
        f()?;
    }
    let per = (n / ROUNDS).max(1);
    let mut t = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let t0 = Instant::now();
        for _ in 0..per {
            f()?;
        }
        t.push(per_op(t0.elapsed(), per));
    }
    t.sort_by(f64::total_cmp);
    Ok((t[ROUNDS / 2], n / 8 + ROUNDS * per))
}

/// One vmalloc measurement: ns per pair and, per allocation, leaf entries
/// written (in-memory tables) or host system calls (hosted).
struct VmCost {
    ns: f64,
    leaves: f64,
    syscalls: f64,
}

fn vm_pairs_inmem(vm: &InMem<'_>, size: usize, huge: bool, n: usize) -> Result<VmCost, TourError> {
    let l0 = vm.tables().stats().leaves_set;
    let (ns, calls) = time_pairs(n, || {
        let p = if huge {
            vm.vmalloc_huge(size, GFP_KERNEL)
        } else {
            vm.vmalloc(size)
        }
        .map_err(|e| e.to_string())?;
        vm.vfree(black_box(p).as_ptr()).map_err(|e| e.to_string())
    })?;
    let leaves = vm.tables().stats().leaves_set - l0;
    Ok(VmCost {
        ns,
        leaves: leaves as f64 / calls as f64,
        syscalls: 0.0,
    })
}

fn vm_pairs_host(
    vm: &HostVmalloc<'_>,
    size: usize,
    huge: bool,
    n: usize,
) -> Result<VmCost, TourError> {
    let h0 = vm.tables().stats();
    let (ns, calls) = time_pairs(n, || {
        let p = if huge {
            vm.vmalloc_huge(size, GFP_KERNEL)
        } else {
            vm.vmalloc(size)
        }
        .map_err(|e| e.to_string())?;
        vm.vfree(black_box(p).as_ptr()).map_err(|e| e.to_string())
    })?;
    let h1 = vm.tables().stats();
    Ok(VmCost {
        ns,
        leaves: 0.0,
        syscalls: ((h1.map_calls + h1.unmap_calls) - (h0.map_calls + h0.unmap_calls)) as f64
            / calls as f64,
    })
}

fn cost(
    m: &Machine,
    o: &mut Out,
    n: u32,
    slab: &SlabAllocator<'_, HostPlatform>,
    host: &HostVmalloc<'_>,
    inmem: &InMem<'_>,
) -> Result<Value, TourError> {
    let pages = m.pages();
    o.heading(n, "kmalloc or vmalloc: what an allocation costs");
    say!(
        o,
        "Each cell: alloc+free pairs in a loop, timed now (median of {ROUNDS} rounds). kmalloc hands out direct-map memory, \
         already mapped: it writes no page-table entry. vmalloc writes one entry per 4 KiB page (one \
         per 2 MiB with vmalloc_huge), clears them at vfree, and flushes the TLB once per lazy purge."
    );
    let mut t = Table::new(&[
        "size",
        "kmalloc+kfree",
        "kmalloc takes",
        "vmalloc+vfree",
        "entries/alloc",
        "hosted vmalloc+vfree",
        "mmap calls/pair",
    ]);
    let mut rows = Vec::new();
    let mut all_ok = true;
    let mut cheaper = true;
    let mut direct = true;
    for (size, iters) in COST_SIZES {
        // kmalloc.
        let how = if size <= 8192 {
            format!("slab {}", slab.kmalloc_slab(size, GFP_KERNEL).name())
        } else {
            let order = (size / PAGE_SIZE).next_power_of_two().trailing_zeros();
            format!("order-{order} block")
        };
        let (km_ns, _) = time_pairs(iters, || {
            let p = slab
                .kmalloc(size, GFP_KERNEL)
                .map_err(|e| format!("kmalloc({size}): {e}"))?;
            direct &= pages.is_direct_map(VirtAddr(p.as_ptr() as usize));
            slab.kfree(black_box(p).as_ptr())
                .map_err(|e| format!("kfree: {e}"))
        })?;
        for huge in [false, true] {
            if huge && size != 4 * MIB {
                continue;
            }
            let c = vm_pairs_inmem(inmem, size, huge, iters)?;
            let h = vm_pairs_host(host, size, huge, iters)?;
            let want = if huge {
                size / (2 * MIB)
            } else {
                size / PAGE_SIZE
            };
            all_ok &= (c.leaves - want as f64).abs() < 1e-9;
            if !huge {
                cheaper &= km_ns < c.ns;
            }
            let label = format!(
                "{}{}",
                if size >= MIB {
                    format!("{} MiB", size / MIB)
                } else {
                    format!("{} KiB", size >> 10)
                },
                if huge { " (huge)" } else { "" }
            );
            t.row(vec![
                label.clone(),
                if huge { "-".into() } else { fmt_ns(km_ns) },
                if huge { "-".into() } else { how.clone() },
                fmt_ns(c.ns),
                format!(
                    "{} x {}",
                    c.leaves.round(),
                    if huge { "2 MiB" } else { "4 KiB" }
                ),
                fmt_ns(h.ns),
                format!("{:.1}", h.syscalls),
            ]);
            rows.push(json!({
                "size_bytes": size, "huge": huge,
                "kmalloc_ns": if huge { Value::Null } else { json!(km_ns) },
                "kmalloc_takes": if huge { Value::Null } else { json!(how) },
                "vmalloc_ns": c.ns, "entries_per_alloc": c.leaves,
                "hosted_vmalloc_ns": h.ns,
                "hosted_mmap_calls_per_pair": h.syscalls,
            }));
        }
    }
    o.table(&t);
    let st = inmem.tables().stats();
    say!(
        o,
        "vmalloc column: kmem's x86-64 tables in memory, what a kernel runs (Linux's range \
         0xffffc90000000000). hosted: the same tables plus mmap of the memfd pages at the same \
         addresses, so the pointers are real; the system calls dominate. As Linux, kmem keeps \
         vmalloc's page tables once made (VmallocConfig::free_page_tables turns freeing the \
         emptied ones at each lazy purge on): once a range has been used, an allocation there \
         writes leaf entries only; a 2 MiB mapping frees the empty table it replaces, as \
         Linux's ({} purges, {} full TLB flushes on the in-memory tables so far).",
        group(inmem.stats().purges),
        group(st.full_flushes as u64)
    );
    o.check(
        direct,
        "every kmalloc pointer lies in the direct map (no mapping of its own)",
    );
    o.check(
        all_ok,
        "vmalloc wrote exactly one entry per 4 KiB page (per 2 MiB with vmalloc_huge) per allocation",
    );
    o.check(
        cheaper,
        "kmalloc+kfree costs less than vmalloc+vfree at every size",
    );
    Ok(json!({ "rows": rows }))
}

// ---------------------------------------------------------------------------
// 3. TLB

/// Linux's boot-time direct map at `PAGE_OFFSET` (x86-64
/// `init_mem_mapping`): the ISA range (the first MiB) with 4 KiB pages,
/// holes included, then the machine's usable RAM above it with the largest
/// page that fits each stretch (1 GiB only if `gb`). Returns the tables and
/// the bytes mapped with 4 KiB, 2 MiB and 1 GiB entries.
fn direct_map<'m>(
    m: &'m Machine,
    gb: bool,
) -> Result<(X86PageTables<'m, HostPlatform>, [u64; 3]), TourError> {
    const ISA_END: u64 = 1 << 20;
    let t = X86PageTables::new(m.pages()).map_err(|e| format!("direct-map tables: {e}"))?;
    let mut bytes = [0u64; 3];
    let isa = (0, ISA_END, RegionKind::Usable);
    let ram = m
        .config()
        .regions
        .iter()
        .flatten()
        .map(|r| (r.start.0.max(ISA_END), r.end.0, r.kind));
    for (mut cur, end, kind) in core::iter::once(isa).chain(ram) {
        if kind != RegionKind::Usable {
            continue;
        }
        while cur < end {
            let size = [PageSize::Size1G, PageSize::Size2M, PageSize::Size4K]
                .into_iter()
                .filter(|s| gb || *s != PageSize::Size1G)
                .find(|s| {
                    let b = s.bytes() as u64;
                    cur.is_multiple_of(b) && cur + b <= end
                })
                .unwrap_or(PageSize::Size4K);
            t.map(
                VirtAddr(PAGE_OFFSET + cur as usize),
                PhysAddr(cur),
                size,
                PteFlags::KERNEL,
                GFP_KERNEL,
            )
            .map_err(|e| format!("direct map at {cur:#x}: {e}"))?
            .ignore();
            bytes[(size.shift() as usize - 12) / 9] += size.bytes() as u64;
            cur += size.bytes() as u64;
        }
    }
    Ok((t, bytes))
}

/// 1 GiB leaves over the gigabytes holding `blocks` (what Linux uses where
/// a whole aligned gigabyte is RAM).
fn gb_map<'m>(
    m: &'m Machine,
    blocks: &[Pfn],
) -> Result<X86PageTables<'m, HostPlatform>, TourError> {
    let t = X86PageTables::new(m.pages()).map_err(|e| format!("1 GiB tables: {e}"))?;
    let mut gbs: Vec<u64> = blocks.iter().map(|b| b.phys().0 >> 30).collect();
    gbs.sort_unstable();
    gbs.dedup();
    for g in gbs {
        t.map(
            VirtAddr(PAGE_OFFSET + (g << 30) as usize),
            PhysAddr(g << 30),
            PageSize::Size1G,
            PteFlags::KERNEL,
            GFP_KERNEL,
        )
        .map_err(|e| format!("1 GiB entry {g}: {e}"))?
        .ignore();
    }
    Ok(t)
}

/// One mapping scanned through the model.
struct Scan {
    name: &'static str,
    entries: &'static str,
    /// (misses, walk memory references) of the cold and the warm pass.
    cold: (u64, u64),
    warm: (u64, u64),
    /// Host scan time, median of warm passes.
    host: Duration,
}

/// Two passes over `chunks` (kernel addresses) through a flushed TLB model.
fn model(
    tlb: &mut Tlb,
    chunks: &[(usize, usize)],
    walk: &dyn Fn(VirtAddr) -> Option<(PhysAddr, PageSize)>,
) -> [(u64, u64); 2] {
    tlb.flush_all();
    let mut out = [(0, 0); 2];
    for pass in &mut out {
        tlb.reset_stats();
        for &(start, len) in chunks {
            for off in (0..len).step_by(LINE) {
                tlb.access(VirtAddr(start + off), walk);
            }
        }
        let s = tlb.stats();
        *pass = (s.misses, s.walk_refs);
    }
    out
}

/// Reads one word per cache line of `chunks` (real pointers); returns the
/// time and a checksum.
fn host_scan(chunks: &[(usize, usize)]) -> (Duration, u64) {
    let t0 = Instant::now();
    let mut sum = 0u64;
    for &(start, len) in chunks {
        for off in (0..len).step_by(LINE) {
            // SAFETY: callers pass live buffers mapped in this process.
            sum = sum.wrapping_add(unsafe { ((start + off) as *const u64).read_volatile() });
        }
    }
    (t0.elapsed(), black_box(sum))
}

/// The median of five passes (the buffers were touched before).
fn host_time(chunks: &[(usize, usize)]) -> Duration {
    let mut t: Vec<Duration> = (0..5).map(|_| host_scan(chunks).0).collect();
    t.sort_unstable();
    t[2]
}

fn tlb(m: &Machine, o: &mut Out, n: u32, vm: &HostVmalloc<'_>) -> Result<Value, TourError> {
    let pages = m.pages();
    o.heading(
        n,
        "TLB: scanning 64 MiB through 4 KiB, 2 MiB and 1 GiB entries",
    );
    let cfg = TlbConfig::default();
    say!(
        o,
        "A 64 MiB buffer is read one cache line at a time (1,048,576 reads) through kmem's TLB model \
         (Golden Cove: L1 {} x 4 KiB, {} x 2 MiB, {} x 1 GiB; L2 {} shared 4 KiB/2 MiB, {} x 1 GiB; \
         a miss walks the page tables: 4 memory references for a 4 KiB leaf, 3 for 2 MiB, 2 for \
         1 GiB). Cold: after a full flush; warm: the pass right after.",
        cfg.l1_4k.entries,
        cfg.l1_2m.entries,
        cfg.l1_1g.entries,
        cfg.l2.entries,
        cfg.l2_1g.entries
    );
    let mut tlb = Box::new(Tlb::new(cfg).map_err(|e| e.to_string())?);

    // The direct-map buffer: 16 blocks of 4 MiB (KMALLOC_MAX_SIZE each).
    let mut blocks = Vec::new();
    for _ in 0..BIG / (4 * MIB) {
        blocks.push(
            pages
                .alloc_pages(GFP_KERNEL, 10)
                .map_err(|e| format!("order-10 block: {e}"))?,
        );
    }
    let result = (|| {
        let (dm, bytes) = direct_map(m, true)?;
        say!(
            o,
            "Linux would map this machine's RAM at boot as (/proc/meminfo): DirectMap4k: {} kB, \
             DirectMap2M: {} kB, DirectMap1G: {} kB (later permission changes split entries and \
             raise DirectMap4k); its memory map has no whole, aligned gigabyte of RAM.",
            bytes[0] / 1024,
            bytes[1] / 1024,
            bytes[2] / 1024
        );
        let gb = gb_map(m, &blocks)?;
        let dm_chunks: Vec<(usize, usize)> = blocks
            .iter()
            .map(|b| (PAGE_OFFSET + b.phys().0 as usize, 4 * MIB))
            .collect();
        let host_dm: Vec<(usize, usize)> = blocks
            .iter()
            .map(|b| (pages.page_address(*b).0, 4 * MIB))
            .collect();
        let small = vm
            .vmalloc(BIG)
            .map_err(|e| format!("vmalloc(64 MiB): {e}"))?;
        let huge = match vm.vmalloc_huge(BIG, GFP_KERNEL) {
            Ok(h) => h,
            Err(e) => {
                vm.vfree(small.as_ptr()).map_err(|e| e.to_string())?;
                return Err(format!("vmalloc_huge(64 MiB): {e}"));
            }
        };
        let huge_order = vm.find_vm_area(huge.as_ptr()).map_or(0, |a| a.page_order);
        let dm_walk = |va: VirtAddr| dm.translate(va).ok().map(|t| (t.frame, t.size));
        let gb_walk = |va: VirtAddr| gb.translate(va).ok().map(|t| (t.frame, t.size));
        let vm_walk = |va: VirtAddr| vm.tables().translate(va).ok().map(|t| (t.frame, t.size));
        let small_chunks = [(small.as_ptr() as usize, BIG)];
        let huge_chunks = [(huge.as_ptr() as usize, BIG)];
        // Fault everything in on the host first: the timed scans are warm.
        for c in [&host_dm[..], &small_chunks[..], &huge_chunks[..]] {
            host_scan(c);
        }
        let mut scans = Vec::new();
        for (name, entries, chunks, host, walk) in [
            (
                "direct map",
                "2 MiB",
                &dm_chunks[..],
                &host_dm[..],
                &dm_walk as &dyn Fn(VirtAddr) -> Option<(PhysAddr, PageSize)>,
            ),
            (
                "direct map",
                "1 GiB",
                &dm_chunks[..],
                &host_dm[..],
                &gb_walk,
            ),
            (
                "vmalloc",
                "4 KiB",
                &small_chunks[..],
                &small_chunks[..],
                &vm_walk,
            ),
            (
                "vmalloc_huge",
                "2 MiB",
                &huge_chunks[..],
                &huge_chunks[..],
                &vm_walk,
            ),
        ] {
            let [cold, warm] = model(&mut tlb, chunks, walk);
            scans.push(Scan {
                name,
                entries,
                cold,
                warm,
                host: host_time(host),
            });
        }
        vm.vfree(small.as_ptr()).map_err(|e| e.to_string())?;
        vm.vfree(huge.as_ptr()).map_err(|e| e.to_string())?;
        vm.purge();
        drop(dm);
        drop(gb);
        Ok((scans, huge_order))
    })();
    for b in blocks {
        free(pages, b, 10)?;
    }
    let (scans, huge_order) = result?;

    let shmem = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .find(|w| w.starts_with('['))
                .map(|w| w.trim_matches(['[', ']']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let mut t = Table::new(&[
        "mapping",
        "entries",
        "cold misses",
        "cold walk refs",
        "warm misses",
        "warm walk refs",
        "host scan",
    ]);
    let mut rows = Vec::new();
    for s in &scans {
        t.row(vec![
            s.name.into(),
            s.entries.into(),
            group(s.cold.0),
            group(s.cold.1),
            group(s.warm.0),
            group(s.warm.1),
            fmt_ns(s.host.as_nanos() as f64),
        ]);
        rows.push(json!({
            "mapping": s.name, "entries": s.entries,
            "cold_misses": s.cold.0, "cold_walk_refs": s.cold.1,
            "warm_misses": s.warm.0, "warm_walk_refs": s.warm.1,
            "host_scan_ns": s.host.as_nanos() as u64,
        }));
    }
    o.blank();
    o.table(&t);
    say!(
        o,
        "The 1 GiB row maps the gigabytes holding the buffer with 1 GiB entries, as Linux does with \
         gbpages where a whole aligned gigabyte is RAM. host scan: the same buffers read on this \
         machine (median of 5 passes, after a first pass that faulted them in), where the direct \
         map and vmalloc are all host mappings of a memfd with 4 KiB pages (shmem huge pages: \
         {shmem}): the host's TLB sees the same page size in every row."
    );
    let pages4k = (BIG / PAGE_SIZE) as u64;
    let [d2, d1, v4, vh] = [&scans[0], &scans[1], &scans[2], &scans[3]];
    o.check(
        v4.cold.0 == pages4k && v4.warm.0 == pages4k,
        format!(
            "vmalloc with 4 KiB entries misses the TLB on every one of its {pages4k} pages, warm or \
             cold (more pages than the L2 holds)"
        ),
    );
    o.check(
        huge_order == 9 && vh.cold.0 == (BIG / (2 * MIB)) as u64 && vh.warm.0 == 0,
        "vmalloc_huge maps 2 MiB entries: 32 cold misses, none warm",
    );
    o.check(
        d2.cold.0 <= (BIG / (2 * MIB)) as u64 && d2.warm.0 == 0 && d1.cold.0 <= 2 && d1.warm.0 == 0,
        "the direct map misses at most once per 2 MiB (2 MiB entries) or per gigabyte (1 GiB), and \
         not at all warm",
    );
    o.check(
        v4.cold.1 >= 100 * d2.cold.1.max(1),
        "vmalloc's 4 KiB entries cost over 100 times the page-walk references of the direct map's \
         2 MiB entries",
    );
    Ok(json!({
        "tlb": {
            "l1_4k": cfg.l1_4k.entries, "l1_2m": cfg.l1_2m.entries, "l1_1g": cfg.l1_1g.entries,
            "l2": cfg.l2.entries, "l2_1g": cfg.l2_1g.entries,
        },
        "buffer_bytes": BIG, "line_bytes": LINE, "host_shmem_huge": shmem,
        "scans": rows,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default machine's RAM ends at 1 GiB with no hole above the ISA
    /// range: Linux's boot mapping is the first 2 MiB in 4 KiB pages (the
    /// whole ISA range, its holes included, then up to the first 2 MiB
    /// boundary) and the rest in 2 MiB pages.
    #[test]
    fn direct_map_counts_the_isa_range_whole() {
        let m = Machine::default_machine().unwrap();
        let (_, bytes) = direct_map(&m, true).unwrap();
        assert_eq!(bytes, [2 << 20, (1 << 30) - (2 << 20), 0]);
    }
}
