//! What the kernel does once kmem is up, one section per layer of kmem.
//!
//! Each section logs lines prefixed `[name]`, counts its failures and ends
//! with a verdict; `kernel_main` prints them all in the summary and exits
//! QEMU with the overall result. A section that cannot run reports itself
//! as skipped, saying why, so the log never claims a test that did not run
//! (no section needs it today: every layer of kmem it exercises exists).

pub mod guard;
pub mod irq;
pub mod pages;
pub mod slab;
pub mod vmalloc;

use crate::platform::BootPlatform;
use core::fmt;
use kmem::{PageAllocator, Pfn};

/// The kernel's page allocator type.
pub type Pages = PageAllocator<BootPlatform>;

/// How a section ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every check held.
    Pass,
    /// At least one check failed.
    Fail,
    /// Not run, with the reason.
    Skipped(&'static str),
}

/// One section's log prefix, failure count and verdict.
pub struct Section {
    /// Name, as in the `[name]` prefix.
    pub name: &'static str,
    failures: usize,
    skipped: Option<&'static str>,
}

impl Section {
    /// Starts a section (prints its header).
    pub fn new(name: &'static str) -> Section {
        crate::kprintln!("== {name}");
        Section {
            name,
            failures: 0,
            skipped: None,
        }
    }

    /// A section that cannot run, and why.
    #[allow(dead_code)] // no section is skipped today
    pub fn skipped(name: &'static str, why: &'static str) -> Section {
        crate::kprintln!("== {name}");
        crate::kprintln!("[{name}] SKIPPED: {why}");
        Section {
            name,
            failures: 0,
            skipped: Some(why),
        }
    }

    /// Logs a line.
    pub fn log(&self, args: fmt::Arguments<'_>) {
        crate::kprintln!("[{}] {}", self.name, args);
    }

    /// Records a failed check.
    pub fn fail(&mut self, args: fmt::Arguments<'_>) {
        self.failures += 1;
        crate::kprintln!("[{}] FAIL: {}", self.name, args);
    }

    /// Records a check; returns it.
    pub fn check(&mut self, ok: bool, args: fmt::Arguments<'_>) -> bool {
        if !ok {
            self.fail(args);
        }
        ok
    }

    /// The verdict.
    pub fn verdict(&self) -> Verdict {
        match (self.skipped, self.failures) {
            (Some(why), _) => Verdict::Skipped(why),
            (None, 0) => Verdict::Pass,
            _ => Verdict::Fail,
        }
    }

    /// Failed checks.
    pub fn failures(&self) -> usize {
        self.failures
    }
}

/// `log!(section, "fmt", args..)`.
#[macro_export]
macro_rules! log {
    ($s:expr, $($arg:tt)*) => { $s.log(format_args!($($arg)*)) };
}

/// `check!(section, condition, "fmt", args..)`: records a failure if false.
#[macro_export]
macro_rules! check {
    ($s:expr, $ok:expr, $($arg:tt)*) => { $s.check($ok, format_args!($($arg)*)) };
}

/// Quiesces the allocators (every slab cache shrunk, every per-CPU page
/// list drained) and returns the free page count, for leak checks.
pub fn settle(pa: &Pages) -> usize {
    if let Some(slab) = slab::SLAB.get() {
        slab.shrink_all();
    }
    pa.drain_all_pages();
    pa.nr_free_pages()
}

/// The value written at word `i` of a block (or buffer) tagged `tag`.
#[inline]
pub fn pattern(tag: u64, i: usize) -> u64 {
    (tag.rotate_left(32) ^ i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1
}

/// Fills the `2^order` pages at `pfn` through the direct map.
pub fn fill_block(pa: &Pages, pfn: Pfn, order: u32) {
    let p = pa.page_address(pfn).as_ptr::<u64>();
    let words = (kmem::PAGE_SIZE << order) / 8;
    for i in 0..words {
        // SAFETY: the block was just allocated; the direct map covers it.
        unsafe { p.add(i).write_volatile(pattern(pfn.0, i)) };
    }
}

/// Reads the block back; returns the number of wrong words.
pub fn check_block(pa: &Pages, pfn: Pfn, order: u32) -> usize {
    let p = pa.page_address(pfn).as_ptr::<u64>();
    let words = (kmem::PAGE_SIZE << order) / 8;
    (0..words)
        // SAFETY: as in `fill_block`.
        .filter(|&i| unsafe { p.add(i).read_volatile() } != pattern(pfn.0, i))
        .count()
}

/// The zone a physical address falls in, by address.
pub fn zone_name(pa: u64) -> &'static str {
    if pa < 16 << 20 {
        "DMA"
    } else if pa < 4 << 30 {
        "DMA32"
    } else {
        "Normal"
    }
}
