//! kmem's slab allocator behind the suite's heap interfaces.
//!
//! A default hosted machine (1 GiB of memfd RAM in the PC layout, 2 CPUs)
//! with a [`SlabAllocator`] in one of three configurations ([`Variant`]):
//! the default (hardened free pointers plus kmem's allocated mark: the `kmem`
//! row, the baseline), Linux's `CONFIG_SLAB_FREELIST_HARDENED` exactly
//! ([`SlabConfig::double_free_mark`] off: `kmem-nomark`), and no hardening
//! at all (`kmem-unhardened`); and the default once more on threads that
//! never claim their CPU (`kmem-unclaimed`: the shared paths, what a
//! `GlobalAlloc` user gets on threads it does not pin); see
//! [`DESCRIPTIONS`]. Every
//! allocation is `kmalloc(layout.size(), GFP_KERNEL)` from process context,
//! every free `kfree(p)`: kmalloc takes no alignment, and none of the
//! workloads needs more than it guarantees (8 bytes, and natural alignment
//! for power-of-two sizes, which covers W3's 4 KiB). The single-thread
//! workloads run as kmem CPU 0; W4's threads are CPUs 0 and 1. Each timing
//! thread claims its CPU ([`kmem_host::claim_cpu`]) for the run, as a kernel
//! runs the allocator with preemption off: the per-CPU state is then guarded
//! by plain stores, not a compare-and-swap. (The checks before timing run
//! unclaimed, on the shared paths.)

use std::alloc::Layout;
use std::cell::RefCell;
use std::ptr::NonNull;

use kmem::gfp::GFP_KERNEL;
use kmem::slab::{SlabAllocator, SlabConfig};
use kmem_host::{claim_cpu, CpuClaim, HostPlatform, Machine};

use super::SharedHeap;

/// Name of the default row (hardened free pointers and the allocated mark),
/// the report's baseline.
pub const NAME: &str = "kmem";
/// Name of the row with `SlabConfig::double_free_mark = false`.
pub const NOMARK: &str = "kmem-nomark";
/// Name of the row with `SlabConfig::freelist_hardened = false`.
pub const UNHARDENED: &str = "kmem-unhardened";
/// Name of the default configuration on threads that claim no CPU.
pub const UNCLAIMED: &str = "kmem-unclaimed";
/// The kmem rows, in report order.
pub const NAMES: [&str; 4] = [NAME, NOMARK, UNHARDENED, UNCLAIMED];

/// The lines the text report prints for the kmem rows, in [`NAMES`] order.
pub const DESCRIPTIONS: [&str; 4] = [
    "kmem                          this repo: kmem_host::Machine::default_machine() (1 GiB, 2 CPUs), SlabAllocator::new(pages, SlabConfig::default()), kmalloc(size, GFP_KERNEL)/kfree; per-CPU sheaves and slabs, thread-safe; each timing thread claims its CPU (kmem_host::claim_cpu); free pointers encoded and an allocated mark written into each object handed out, so any double free is refused in O(1)",
    "kmem-nomark                   the same with SlabConfig::double_free_mark = false: free pointers still encoded, no allocated mark, so the fast paths never touch the object and a double free is caught only when the object is the top of the CPU's sheaf or the head of the free list it goes onto: Linux's CONFIG_SLAB_FREELIST_HARDENED exactly (its naive object == fp check)",
    "kmem-unhardened               the same with SlabConfig::freelist_hardened = false: free pointers stored plain, no allocated mark, the same naive double-free check (Linux without CONFIG_SLAB_FREELIST_HARDENED and without slab_debug catches none)",
    "kmem-unclaimed                the kmem row's configuration on timing threads that never claim their CPU (kmem_host::set_cpu only): every operation takes the shared paths, the per-CPU flag by compare-and-swap, as on host threads that call kmem_host::global::KmemGlobal without claiming a CPU",
];

/// Which configuration a [`Kmem`] row runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// `SlabConfig::default()`: the `kmem` row.
    Default,
    /// `double_free_mark: false`: the `kmem-nomark` row.
    NoMark,
    /// `freelist_hardened: false`: the `kmem-unhardened` row.
    Unhardened,
    /// `SlabConfig::default()`, threads claim no CPU: `kmem-unclaimed`.
    Unclaimed,
}

impl Variant {
    /// The variant of the row named `name` (one of [`NAMES`]).
    pub fn named(name: &str) -> Option<Variant> {
        Some(match name {
            NAME => Variant::Default,
            NOMARK => Variant::NoMark,
            UNHARDENED => Variant::Unhardened,
            UNCLAIMED => Variant::Unclaimed,
            _ => return None,
        })
    }
}

thread_local! {
    /// The calling thread's claim on its kmem CPU, held during a run.
    static CLAIM: RefCell<Option<CpuClaim>> = const { RefCell::new(None) };
}

/// A machine and the slab allocator over its page allocator.
pub struct Kmem {
    // Declared before `machine` so that it is dropped first: it borrows the
    // machine's page allocator.
    slab: SlabAllocator<'static, HostPlatform>,
    machine: Box<Machine>,
    name: &'static str,
    /// Timing threads claim their CPU (all rows but `kmem-unclaimed`).
    claim: bool,
}

impl Kmem {
    /// The row of `variant` (see [`Variant`]).
    pub fn new(variant: Variant) -> Result<Self, String> {
        let (name, config) = match variant {
            Variant::Default => (NAME, SlabConfig::default()),
            Variant::NoMark => (
                NOMARK,
                SlabConfig {
                    double_free_mark: false,
                    ..SlabConfig::default()
                },
            ),
            Variant::Unhardened => (
                UNHARDENED,
                SlabConfig {
                    freelist_hardened: false,
                    ..SlabConfig::default()
                },
            ),
            Variant::Unclaimed => (UNCLAIMED, SlabConfig::default()),
        };
        let machine = Box::new(Machine::default_machine().map_err(|e| format!("{name}: {e}"))?);
        // SAFETY: the machine is boxed, so its address is stable, and it is
        // dropped after `slab` (field order); the 'static borrow never leaves
        // this struct.
        let pages = unsafe { &*(machine.pages() as *const kmem::PageAllocator<HostPlatform>) };
        kmem_host::set_cpu(0);
        let slab = SlabAllocator::new(pages, config)
            .map_err(|e| format!("{name}: SlabAllocator::new: {e:?}"))?;
        Ok(Kmem {
            slab,
            machine,
            name,
            claim: variant != Variant::Unclaimed,
        })
    }
}

impl SharedHeap for Kmem {
    fn name(&self) -> &'static str {
        self.name
    }

    fn enter_thread(&self, index: usize) {
        let cpu = index % self.machine.config().nr_cpus;
        if !self.claim {
            CLAIM.with(|c| *c.borrow_mut() = None);
            kmem_host::set_cpu(cpu);
            return;
        }
        CLAIM.with(|c| {
            let mut c = c.borrow_mut();
            if c.as_ref().is_some_and(|c| c.cpu() == cpu) {
                return;
            }
            *c = None;
            match claim_cpu(cpu) {
                Ok(claim) => *c = Some(claim),
                Err(e) => {
                    eprintln!(
                        "{}: {e}; running CPU {cpu} unclaimed (shared paths)",
                        self.name
                    );
                    kmem_host::set_cpu(cpu);
                }
            }
        });
    }

    fn leave_thread(&self) {
        CLAIM.with(|c| *c.borrow_mut() = None);
    }

    #[inline]
    fn alloc(&self, layout: Layout) -> NonNull<u8> {
        match self.slab.kmalloc(layout.size(), GFP_KERNEL) {
            Ok(p) => p,
            Err(e) => failed(format_args!("kmalloc of {layout:?}"), &e),
        }
    }

    #[inline]
    unsafe fn free(&self, p: NonNull<u8>, _layout: Layout) {
        // The layout stays out of the message: keeping it for the cold call
        // would cost every free two saved registers (kfree needs no
        // layout, and its error names the address).
        if let Err(e) = self.slab.kfree(p.as_ptr()) {
            failed(format_args!("kfree"), &e)
        }
    }
}

/// Panics for a failed call. Not told which kmem row: keeping `self` alive
/// for the message would cost the fast paths a saved register.
#[cold]
#[inline(never)]
fn failed(call: std::fmt::Arguments<'_>, e: &dyn std::fmt::Debug) -> ! {
    panic!("kmem: {call} failed: {e:?}")
}
