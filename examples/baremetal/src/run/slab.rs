//! kmalloc and kmem_cache on bare metal.
//!
//! The slab allocator is built over the kernel's page allocator (its globals
//! and bootstrap cache carved from kmem pages, as Linux's `kmem_cache_init`
//! does) and kept in [`SLAB`] for the rest of the run; the timer handler
//! kmallocs from it with GFP_ATOMIC ([`super::irq`]). This section:
//!
//! - kmallocs 32 objects of every size class (and some odd sizes), writes
//!   every byte, checks alignment, `ksize` and that no two objects overlap;
//! - takes large kmallocs (whole pages, up to KMALLOC_MAX_SIZE), `kmalloc(0)`
//!   and a refused oversize request;
//! - checks `kzalloc` zeroing and that `GFP_DMA` kmallocs come from the DMA
//!   zone;
//! - runs a kmem_cache with alignment and a constructor, then destroys it;
//! - gets every kind of bad free (double, interior, a page-allocator page, a
//!   vmalloc-space address) refused and reported;
//! - shrinks every cache and checks every page came back.

use super::{settle, zone_name, Pages, Section};
use crate::paging::VMALLOC_START;
use crate::platform::BootPlatform;
use crate::sync::{BootCell, Once};
use crate::{check, log};
use core::ptr::NonNull;
use kmem::gfp::{GFP_DMA, GFP_KERNEL};
use kmem::slab::{
    SlabAllocator, SlabConfig, SlabFlags, SlabFreeError, Stat, KMALLOC_MAX_SIZE, ZERO_SIZE_PTR,
};
use kmem::{AllocError, Gfp, VirtAddr};

/// The slab allocator, once built.
pub static SLAB: Once<SlabAllocator<'static, BootPlatform>> = Once::new();

/// Objects held at once per size.
const PER_SIZE: usize = 32;
static HELD: BootCell<[usize; PER_SIZE]> = BootCell::new([0; PER_SIZE]);

const SIZES: [usize; 18] = [
    8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192, 1, 24, 100, 700, 3000,
];

const CTOR_MAGIC: u64 = 0xc7_0c7_0c7_0c7_0c7;

fn ctor(p: NonNull<u8>) {
    // SAFETY: kmem hands the constructor a whole object of at least 8
    // bytes, 64-aligned (the cache's alignment).
    unsafe { p.as_ptr().cast::<u64>().write(CTOR_MAGIC) };
}

fn byte(tag: usize, i: usize) -> u8 {
    (tag >> 4).wrapping_add(i.wrapping_mul(31)) as u8
}

fn fill(p: usize, size: usize) {
    let q = p as *mut u8;
    for i in 0..size {
        // SAFETY: an object of at least `size` bytes, just allocated.
        unsafe { q.add(i).write_volatile(byte(p, i)) };
    }
}

fn wrong_bytes(p: usize, size: usize) -> usize {
    let q = p as *const u8;
    // SAFETY: as in `fill`.
    (0..size)
        .filter(|&i| unsafe { q.add(i).read_volatile() } != byte(p, i))
        .count()
}

/// Runs the section.
pub fn run(pa: &'static Pages) -> Section {
    let mut s = Section::new("slab");
    let slab = match SlabAllocator::new(pa, SlabConfig::default()) {
        Ok(sl) => SLAB.set(sl),
        Err(e) => {
            s.fail(format_args!("SlabAllocator::new: {e}"));
            return s;
        }
    };
    log!(
        s,
        "slab allocator up: {} caches (kmem_cache bootstrap and the kmalloc caches)",
        slab.nr_caches()
    );
    let baseline = settle(pa);

    // Every size class, all objects held at once so overlaps would show.
    // SAFETY: only this section uses HELD.
    let held = unsafe { &mut *HELD.get() };
    let mut classes_ok = 0;
    for &size in &SIZES {
        let mut n = 0;
        for slot in held.iter_mut() {
            match slab.kmalloc(size, GFP_KERNEL) {
                Ok(p) => {
                    *slot = p.as_ptr() as usize;
                    n += 1;
                }
                Err(e) => {
                    s.fail(format_args!("kmalloc({size}): {e}"));
                    break;
                }
            }
        }
        let objs = &held[..n];
        let align = if size.is_power_of_two() { size } else { 8 };
        let misaligned = objs.iter().filter(|&&p| p % align != 0).count();
        let small_ksize = objs
            .iter()
            .filter(|&&p| slab.ksize(p as *const u8) < size)
            .count();
        let not_direct = objs
            .iter()
            .filter(|&&p| !pa.is_direct_map(VirtAddr(p)))
            .count();
        for &p in objs {
            fill(p, size);
        }
        let wrong: usize = objs.iter().map(|&p| wrong_bytes(p, size)).sum();
        let refused = objs
            .iter()
            .filter(|&&p| slab.kfree(p as *const u8).is_err())
            .count();
        classes_ok += check!(
            s,
            n == PER_SIZE && misaligned + small_ksize + not_direct + wrong + refused == 0,
            "kmalloc({size}): {n} objects, {misaligned} misaligned, {small_ksize} with ksize < size, \
             {not_direct} outside the direct map, {wrong} bytes wrong, {refused} kfrees refused"
        ) as usize;
    }
    if classes_ok == SIZES.len() {
        log!(
            s,
            "kmalloc: {} sizes (every class 8..8192 and 1/24/100/700/3000) x {} objects: aligned, ksize >= size, \
             every byte written and read back, no overlap, kfreed",
            SIZES.len(),
            PER_SIZE
        );
    }

    // Large kmallocs are whole pages.
    for size in [16 << 10, 1 << 20, KMALLOC_MAX_SIZE] {
        match slab.kmalloc(size, GFP_KERNEL) {
            Ok(p) => {
                let p = p.as_ptr() as usize;
                fill(p, size);
                let wrong = wrong_bytes(p, size);
                if check!(
                    s,
                    wrong == 0 && p.is_multiple_of(4096) && slab.ksize(p as *const u8) >= size,
                    "kmalloc({size}) at {p:#x}: {wrong} bytes wrong"
                ) {
                    log!(
                        s,
                        "kmalloc({:>7}): page-backed at {:#x}, written and read back",
                        size,
                        p
                    );
                }
                check!(
                    s,
                    slab.kfree(p as *const u8).is_ok(),
                    "kfree of kmalloc({size}) refused"
                );
            }
            Err(e) => s.fail(format_args!("kmalloc({size}): {e}")),
        }
    }
    match slab.kmalloc(0, GFP_KERNEL) {
        Ok(p) if p.as_ptr() as usize == ZERO_SIZE_PTR => {
            check!(
                s,
                slab.kfree(p.as_ptr()).is_ok(),
                "kfree(ZERO_SIZE_PTR) refused"
            );
            log!(
                s,
                "kmalloc(0) = ZERO_SIZE_PTR ({ZERO_SIZE_PTR:#x}), and kfree takes it back"
            );
        }
        other => s.fail(format_args!("kmalloc(0): {other:?}")),
    }
    match slab.kmalloc(KMALLOC_MAX_SIZE + 1, GFP_KERNEL | Gfp::NOWARN) {
        Err(e @ AllocError::SizeTooLarge { .. }) => {
            log!(s, "kmalloc(KMALLOC_MAX_SIZE + 1) refused: {e}")
        }
        other => s.fail(format_args!("kmalloc(KMALLOC_MAX_SIZE + 1): {other:?}")),
    }

    // kzalloc zeroes what an earlier user dirtied.
    if let Ok(p) = slab.kmalloc(200, GFP_KERNEL) {
        fill(p.as_ptr() as usize, 200);
        let _ = slab.kfree(p.as_ptr());
    }
    match slab.kzalloc(200, GFP_KERNEL) {
        Ok(p) => {
            let q = p.as_ptr();
            // SAFETY: a 200-byte object just allocated.
            let nonzero = (0..200)
                .filter(|&i| unsafe { q.add(i).read_volatile() } != 0)
                .count();
            if check!(s, nonzero == 0, "kzalloc(200): {nonzero} nonzero bytes") {
                log!(s, "kzalloc(200) at {:#x}: all zero", q as usize);
            }
            let _ = slab.kfree(q);
        }
        Err(e) => s.fail(format_args!("kzalloc(200): {e}")),
    }

    // GFP_DMA kmallocs come from the dma-kmalloc caches, in ZONE_DMA.
    match slab.kmalloc(64, GFP_KERNEL | GFP_DMA) {
        Ok(p) => {
            let phys = pa
                .virt_to_phys(VirtAddr(p.as_ptr() as usize))
                .map_or(u64::MAX, |a| a.0);
            if check!(
                s,
                zone_name(phys) == "DMA",
                "kmalloc(64, GFP_DMA) at phys {phys:#x}"
            ) {
                log!(
                    s,
                    "kmalloc(64, GFP_KERNEL|GFP_DMA) -> phys {phys:#x}, zone DMA"
                );
            }
            let _ = slab.kfree(p.as_ptr());
        }
        Err(e) => s.fail(format_args!("kmalloc(64, GFP_DMA): {e}")),
    }

    // A cache of our own: 200-byte objects, 64-aligned, with a constructor.
    match slab.kmem_cache_create("baremetal_obj", 200, 64, SlabFlags::empty(), Some(ctor)) {
        Ok(cache) => {
            let mut n = 0;
            let (mut misaligned, mut no_ctor) = (0, 0);
            for slot in held.iter_mut() {
                match cache.alloc(GFP_KERNEL) {
                    Ok(p) => {
                        let a = p.as_ptr() as usize;
                        misaligned += !a.is_multiple_of(64) as usize;
                        // SAFETY: a live 200-byte object.
                        no_ctor +=
                            (unsafe { (a as *const u64).read_volatile() } != CTOR_MAGIC) as usize;
                        *slot = a;
                        n += 1;
                    }
                    Err(e) => {
                        s.fail(format_args!("kmem_cache_alloc: {e}"));
                        break;
                    }
                }
            }
            for &p in &held[..n] {
                fill(p + 8, 192);
            }
            let wrong: usize = held[..n].iter().map(|&p| wrong_bytes(p + 8, 192)).sum();
            let refused = held[..n]
                .iter()
                .filter(|&&p| cache.free(NonNull::new(p as *mut u8).unwrap()).is_err())
                .count();
            if check!(
                s,
                n == PER_SIZE && misaligned + no_ctor + wrong + refused == 0,
                "kmem_cache baremetal_obj: {n} objects, {misaligned} misaligned, {no_ctor} not constructed, \
                 {wrong} bytes wrong, {refused} frees refused"
            ) {
                log!(
                    s,
                    "kmem_cache baremetal_obj (200 B, align 64, ctor; slab order {}, {} objects per slab): \
                     {} objects constructed, aligned, written, freed (fast path {} allocs / {} frees)",
                    cache.order_objects().order,
                    cache.order_objects().objects,
                    n,
                    cache.stat(Stat::AllocFastpath),
                    cache.stat(Stat::FreeFastpath)
                );
            }
            match cache.destroy() {
                Ok(()) => log!(s, "kmem_cache_destroy(baremetal_obj): ok, nothing left"),
                Err(e) => s.fail(format_args!("kmem_cache_destroy: {e}")),
            }
        }
        Err(e) => s.fail(format_args!("kmem_cache_create: {e}")),
    }

    // Bad frees are refused and reported; nothing changes.
    if let (Ok(a), Ok(page)) = (slab.kmalloc(128, GFP_KERNEL), pa.alloc_pages(GFP_KERNEL, 0)) {
        let a = a.as_ptr() as usize;
        let _ = slab.kfree(a as *const u8);
        let double = slab.kfree(a as *const u8);
        let b = slab
            .kmalloc(128, GFP_KERNEL)
            .map_or(0, |p| p.as_ptr() as usize);
        let interior = slab.kfree((b + 8) as *const u8);
        let not_slab = slab.kfree(pa.page_address(page).as_ptr::<u8>());
        let not_direct = slab.kfree(VMALLOC_START as *const u8);
        let ok = matches!(double, Err(SlabFreeError::DoubleFree { .. }))
            && matches!(interior, Err(SlabFreeError::Interior { .. }))
            && matches!(not_slab, Err(SlabFreeError::NotSlab { .. }))
            && matches!(not_direct, Err(SlabFreeError::NotDirectMapped { .. }));
        if check!(
            s,
            ok,
            "bad frees: double {double:?}, interior {interior:?}, page {not_slab:?}, vmalloc {not_direct:?}"
        ) {
            log!(s, "bad kfrees refused: double free, interior pointer, page-allocator page, vmalloc address");
        }
        let _ = slab.kfree(b as *const u8);
        let _ = pa.free_pages(page, 0);
    } else {
        s.fail(format_args!("bad frees: no object or page to test with"));
    }

    let now = settle(pa);
    if check!(
        s,
        now == baseline,
        "free pages {now} after shrinking, {baseline} before"
    ) {
        log!(
            s,
            "every cache shrunk: free pages back to {baseline}, nothing leaked"
        );
    }
    s
}
