//! Allocation from a real interrupt handler.
//!
//! The PIT ticks at [`HZ`]; every tick the handler (hard-IRQ context, IRQs
//! off, `irq_enter` done) takes a GFP_ATOMIC block of order `tick % 4`,
//! writes and checks it through the direct map and keeps it in a ring of
//! [`RING`] blocks, freeing the one it evicts; once the slab layer is up it
//! does the same with a GFP_ATOMIC kmalloc of one of [`KMALLOC_SIZES`]. On
//! tick [`KERNEL_CALL_TICK`] it
//! makes one deliberate GFP_KERNEL call: kmem must report a sleeping
//! allocation in atomic context (on the serial console, Linux's `BUG:
//! sleeping function called from invalid context`) and refuse it.
//!
//! Meanwhile the main flow churns GFP_KERNEL page allocations and kmallocs
//! in process context, so ticks land in the middle of kmem's fast paths and
//! lock sections: the per-CPU page lists, the per-CPU slab flags and the
//! IRQ-saving zone and node locks are exercised for real.

use super::{settle, slab::SLAB, Pages, Section};
use crate::sync::SpinLock;
use crate::{arch, check, interrupts, log};
use core::sync::atomic::{AtomicBool, Ordering::Relaxed};
use kmem::gfp::{GFP_ATOMIC, GFP_KERNEL};
use kmem::slab::Stat;
use kmem::{AllocError, ContextViolation, Pfn};

/// Timer frequency.
pub const HZ: u32 = 250;
/// Ticks the section runs for.
pub const TICKS: u64 = 50;
/// The tick on which the handler makes its one GFP_KERNEL call.
pub const KERNEL_CALL_TICK: u64 = 10;
/// Blocks the handler keeps allocated.
pub const RING: usize = 16;
/// Sizes the handler kmallocs, in turn.
pub const KMALLOC_SIZES: [usize; 5] = [32, 64, 192, 512, 2048];
/// Main-flow iterations before giving up on the timer.
const MAX_ITERATIONS: u64 = 20_000_000;

struct IrqLog {
    ring: [Option<(Pfn, u32)>; RING],
    next: usize,
    objects: [usize; RING],
    kmalloc_ok: u64,
    kmalloc_failed: u64,
    ticks_seen: u64,
    atomic_ok: [u64; 4],
    atomic_failed: u64,
    wrong_words: u64,
    kernel_call: Option<Result<Pfn, AllocError>>,
}

static LOG: SpinLock<IrqLog> = SpinLock::new(IrqLog {
    ring: [None; RING],
    next: 0,
    objects: [0; RING],
    kmalloc_ok: 0,
    kmalloc_failed: 0,
    ticks_seen: 0,
    atomic_ok: [0; 4],
    atomic_failed: 0,
    wrong_words: 0,
    kernel_call: None,
});
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Called by the timer interrupt, in hard-IRQ context.
pub fn on_timer_tick(tick: u64) {
    if !ACTIVE.load(Relaxed) {
        return;
    }
    let Some(pa) = crate::PAGES.get() else {
        return;
    };
    let mut kernel_call = None;
    if tick == KERNEL_CALL_TICK {
        // Deliberately wrong: a blocking mask in an interrupt handler.
        let r = pa.alloc_pages(GFP_KERNEL, 0);
        if let Ok(p) = r {
            let _ = pa.free_pages(p, 0);
        }
        kernel_call = Some(r);
    }
    let order = (tick % 4) as u32;
    let got = pa.alloc_pages(GFP_ATOMIC, order);
    let mut wrong = 0;
    if let Ok(p) = got {
        let q = pa.page_address(p).as_ptr::<u64>();
        let last = (kmem::PAGE_SIZE << order) / 8 - 1;
        // SAFETY: a block just allocated, mapped by the direct map.
        unsafe {
            q.write_volatile(tick);
            q.add(last).write_volatile(!tick);
            wrong =
                (q.read_volatile() != tick) as u64 + (q.add(last).read_volatile() != !tick) as u64;
        }
    }
    let size = KMALLOC_SIZES[(tick % KMALLOC_SIZES.len() as u64) as usize];
    let object = SLAB.get().map(|slab| slab.kmalloc(size, GFP_ATOMIC));
    if let Some(Ok(p)) = object {
        let q = p.as_ptr();
        // SAFETY: a fresh object of `size` bytes.
        unsafe {
            q.write_volatile(tick as u8);
            q.add(size - 1).write_volatile(!tick as u8);
            wrong += (q.read_volatile() != tick as u8) as u64
                + (q.add(size - 1).read_volatile() != !tick as u8) as u64;
        }
    }
    // Record under the lock; free what the rings evict after dropping it.
    let (evicted, evicted_object) = {
        let mut log = LOG.lock();
        log.ticks_seen += 1;
        log.wrong_words += wrong;
        if kernel_call.is_some() {
            log.kernel_call = kernel_call;
        }
        let i = log.next;
        log.next = (i + 1) % RING;
        let evicted = match got {
            Ok(p) => {
                log.atomic_ok[order as usize] += 1;
                log.ring[i].replace((p, order))
            }
            Err(_) => {
                log.atomic_failed += 1;
                None
            }
        };
        let evicted_object = match object {
            Some(Ok(p)) => {
                log.kmalloc_ok += 1;
                core::mem::replace(&mut log.objects[i], p.as_ptr() as usize)
            }
            Some(Err(_)) => {
                log.kmalloc_failed += 1;
                0
            }
            None => 0,
        };
        (evicted, evicted_object)
    };
    if let Some((p, o)) = evicted {
        let _ = pa.free_pages(p, o);
    }
    if let (Some(slab), true) = (SLAB.get(), evicted_object != 0) {
        let _ = slab.kfree(evicted_object as *const u8);
    }
}

/// Runs the section.
pub fn run(pa: &'static Pages) -> Section {
    let mut s = Section::new("irq");
    let before = pa.vmstat();
    let baseline = settle(pa);
    let slab = SLAB.get();
    let slab_contended = || {
        let mut n = 0;
        if let Some(slab) = slab {
            slab.for_each_cache(|c| {
                n += c.stat(Stat::AllocContended) + c.stat(Stat::FreeContended)
            });
        }
        n
    };
    let slab_contended_before = slab_contended();
    log!(
        s,
        "PIT at {HZ} Hz; handler allocates GFP_ATOMIC orders 0-3{} for {TICKS} ticks, one GFP_KERNEL call on tick {KERNEL_CALL_TICK}",
        if slab.is_some() { " and kmallocs 32..2048 B" } else { "" }
    );

    let start = interrupts::ticks();
    ACTIVE.store(true, Relaxed);
    interrupts::start_timer(HZ);
    let mut iterations = 0u64;
    let mut wrong = 0usize;
    while interrupts::ticks() < start + TICKS && iterations < MAX_ITERATIONS {
        let order = (iterations % 4) as u32;
        if let Ok(p) = pa.alloc_pages(GFP_KERNEL, order) {
            let q = pa.page_address(p).as_ptr::<u64>();
            // SAFETY: a block just allocated, mapped by the direct map.
            unsafe {
                q.write_volatile(iterations);
                wrong += (q.read_volatile() != iterations) as usize;
            }
            let _ = pa.free_pages(p, order);
        }
        if let Some(slab) = slab {
            let size = KMALLOC_SIZES[(iterations % KMALLOC_SIZES.len() as u64) as usize];
            if let Ok(p) = slab.kmalloc(size, GFP_KERNEL) {
                // SAFETY: a fresh object of `size` bytes.
                unsafe {
                    p.as_ptr().add(size - 1).write_volatile(iterations as u8);
                    wrong +=
                        (p.as_ptr().add(size - 1).read_volatile() != iterations as u8) as usize;
                }
                let _ = slab.kfree(p.as_ptr());
            }
        }
        iterations += 1;
    }
    interrupts::stop_timer();
    ACTIVE.store(false, Relaxed);
    let ticks = interrupts::ticks() - start;

    let (
        ring,
        objects,
        (kmalloc_ok, kmalloc_failed),
        ticks_seen,
        ok,
        failed,
        irq_wrong,
        kernel_call,
    ) = {
        let mut log = LOG.lock();
        (
            core::mem::replace(&mut log.ring, [None; RING]),
            core::mem::replace(&mut log.objects, [0; RING]),
            (log.kmalloc_ok, log.kmalloc_failed),
            log.ticks_seen,
            log.atomic_ok,
            log.atomic_failed,
            log.wrong_words,
            log.kernel_call.take(),
        )
    };
    for (p, o) in ring.into_iter().flatten() {
        let _ = pa.free_pages(p, o);
    }
    if let Some(slab) = slab {
        for p in objects.into_iter().filter(|&p| p != 0) {
            let _ = slab.kfree(p as *const u8);
        }
    }
    let after = pa.vmstat();

    check!(s, arch::interrupts_enabled(), "interrupts left disabled");
    if check!(
        s,
        ticks >= TICKS,
        "only {ticks} timer interrupts in {iterations} iterations"
    ) {
        log!(
            s,
            "{ticks} timer interrupts taken; main flow meanwhile made {iterations} GFP_KERNEL alloc/free rounds{} ({wrong} bad words)",
            if slab.is_some() { " (pages and kmalloc)" } else { "" }
        );
    }
    check!(s, wrong == 0, "main flow: {wrong} words read back wrong");
    let total_ok: u64 = ok.iter().sum();
    if check!(
        s,
        total_ok == ticks_seen && failed == 0 && irq_wrong == 0,
        "handler: {total_ok} GFP_ATOMIC allocations ok, {failed} failed, {irq_wrong} bad words, in {ticks_seen} ticks"
    ) {
        log!(
            s,
            "handler: {} GFP_ATOMIC allocations in hard IRQ (order 0/1/2/3: {}/{}/{}/{}), each written and checked, ring of {} freed as it turned",
            total_ok,
            ok[0],
            ok[1],
            ok[2],
            ok[3],
            RING
        );
    }
    if slab.is_some()
        && check!(
            s,
            kmalloc_ok == ticks_seen && kmalloc_failed == 0,
            "handler: {kmalloc_ok} GFP_ATOMIC kmallocs ok, {kmalloc_failed} failed, in {ticks_seen} ticks"
        )
    {
        log!(
            s,
            "handler: {kmalloc_ok} GFP_ATOMIC kmallocs in hard IRQ (sizes 32..2048), each written and checked, kfreed as the ring turned"
        );
    }
    match kernel_call {
        Some(Err(AllocError::SleepInAtomic(v))) => {
            let ContextViolation { context, cpu, .. } = v;
            if check!(
                s,
                context.hardirq == 1 && context.irqs_disabled,
                "violation reported with the wrong context: {context}"
            ) {
                log!(
                    s,
                    "GFP_KERNEL in the handler: refused and reported (context: {context}, cpu {cpu})"
                );
            }
        }
        other => s.fail(format_args!(
            "GFP_KERNEL in the handler: expected a sleep-in-atomic refusal, got {other:?}"
        )),
    }
    let violations = after.context_violation - before.context_violation;
    check!(
        s,
        violations == 1,
        "{violations} context violations counted, expected 1"
    );
    log!(
        s,
        "vmstat: context_violation +{}, pcp_contended +{} (ticks that found the per-CPU page list busy), \
         slab alloc/free_contended +{} (ticks that found a per-CPU slab busy)",
        violations,
        after.pcp_contended - before.pcp_contended,
        slab_contended() - slab_contended_before
    );
    let now = settle(pa);
    if check!(
        s,
        now == baseline,
        "free pages {now} after the section, {baseline} before"
    ) {
        log!(s, "free pages back to {baseline}: nothing leaked");
    }
    s
}
