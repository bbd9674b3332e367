//! kmem on a hosted machine: Linux userspace pretending to be bare metal.
//!
//! A [`Machine`] is what a kernel would be to kmem, built from ordinary
//! process resources:
//!
//! - **RAM** ([`Ram`]): a memfd holds every page of the memory map; the direct
//!   map is one mapping of it over a reserved range, with holes left
//!   `PROT_NONE`. Every pointer kmem hands out is real and writable.
//! - **CPUs** ([`cpu`]): each thread takes a slot on first use and runs on CPU
//!   `slot % nr_cpus`. More threads than CPUs is allowed and means several
//!   threads share a CPU number, so kmem's per-CPU paths get exercised under
//!   real contention.
//! - **Execution context** ([`context`]): thread-local, entered and left
//!   through RAII guards ([`irq`], [`spin_lock`], [`rcu_read_lock`], ...).
//! - **Platform** ([`HostPlatform`]): implements [`kmem::Platform`] over the
//!   above, with parking locks and a warning log tests can read.
//!
//! ```no_run
//! use kmem_host::Machine;
//! let m = Machine::default_machine().unwrap();
//! let pfn = m.pages().alloc_pages(kmem::gfp::GFP_KERNEL, 0).unwrap();
//! let p = m.pages().page_address(pfn).as_ptr::<u8>();
//! unsafe { p.write(42) };
//! m.pages().free_pages(pfn, 0).unwrap();
//! ```
//!
//! A `Machine` is `Send + Sync`; share it between threads with an `Arc`.

#![warn(missing_docs)]

/// Implements allocator_api2's `Allocator` for a heap handle (`KmemHeap`,
/// `VmallocHeap`, `KvmallocHeap`) from three methods of its own:
/// `alloc_impl(&self, layout, zero)`, `unsafe resize(&self, ptr, old, new,
/// zero)` (grow, grow_zeroed and shrink) and `unsafe free(&self, ptr)` (a
/// block that is not zero-sized). The safety argument of the impl is stated
/// where the macro is invoked.
macro_rules! heap_allocator_impl {
    ($t:ty) => {
        unsafe impl ::allocator_api2::alloc::Allocator for $t {
            #[inline]
            fn allocate(
                &self,
                layout: ::core::alloc::Layout,
            ) -> Result<::core::ptr::NonNull<[u8]>, ::allocator_api2::alloc::AllocError> {
                self.alloc_impl(layout, false)
            }

            #[inline]
            fn allocate_zeroed(
                &self,
                layout: ::core::alloc::Layout,
            ) -> Result<::core::ptr::NonNull<[u8]>, ::allocator_api2::alloc::AllocError> {
                self.alloc_impl(layout, true)
            }

            #[inline]
            unsafe fn deallocate(
                &self,
                ptr: ::core::ptr::NonNull<u8>,
                layout: ::core::alloc::Layout,
            ) {
                if layout.size() != 0 {
                    // SAFETY: forwarded contract (a live, non-zero-sized block).
                    unsafe { self.free(ptr) }
                }
            }

            unsafe fn grow(
                &self,
                ptr: ::core::ptr::NonNull<u8>,
                old: ::core::alloc::Layout,
                new: ::core::alloc::Layout,
            ) -> Result<::core::ptr::NonNull<[u8]>, ::allocator_api2::alloc::AllocError> {
                // SAFETY: forwarded contract.
                unsafe { self.resize(ptr, old, new, false) }
            }

            unsafe fn grow_zeroed(
                &self,
                ptr: ::core::ptr::NonNull<u8>,
                old: ::core::alloc::Layout,
                new: ::core::alloc::Layout,
            ) -> Result<::core::ptr::NonNull<[u8]>, ::allocator_api2::alloc::AllocError> {
                // SAFETY: forwarded contract.
                unsafe { self.resize(ptr, old, new, true) }
            }

            unsafe fn shrink(
                &self,
                ptr: ::core::ptr::NonNull<u8>,
                old: ::core::alloc::Layout,
                new: ::core::alloc::Layout,
            ) -> Result<::core::ptr::NonNull<[u8]>, ::allocator_api2::alloc::AllocError> {
                // SAFETY: forwarded contract.
                unsafe { self.resize(ptr, old, new, false) }
            }
        }
    };
}

pub mod context;
pub mod cpu;
pub mod entropy;
pub mod global;
pub mod platform;
pub mod ram;
pub mod vheap;
pub mod vmap;

pub use context::{
    current_context, enter, in_atomic, in_hardirq, in_interrupt, in_nmi, in_serving_softirq,
    in_task, irq, irqs_disabled, local_bh_disable, local_irq_disable, nmi, preempt_disable,
    rcu_read_lock, softirq, spin_lock, spin_lock_bh, spin_lock_irqsave, ContextGuard, SpinLock,
    SpinLockGuard,
};
pub use cpu::{
    claim_cpu, cpu_claimed, cpu_slot, current_cpu, run_on_cpu, set_cpu, ClaimError, CpuClaim,
    MAX_CLAIMABLE_CPUS,
};
pub use entropy::boot_seed;
pub use global::{KmemGlobal, KmemHeap};
pub use kmem;
pub use platform::HostPlatform;
pub use ram::Ram;
pub use vheap::{KvmallocHeap, VmallocHeap};
pub use vmap::{HostVmalloc, HostVmap};

use kmem::context::ContextPolicy;
use kmem::page::memmap::{pc_layout, validate, Region};
use kmem::page::{MemoryMapError, PageAllocator, PageConfig, MAX_CPUS, MAX_NUMNODES};
use std::fmt;
use std::io;

/// One gibibyte.
const GIB: u64 = 1 << 30;

/// How to build a [`Machine`].
#[derive(Clone, Debug)]
pub struct MachineConfig {
    /// Bytes of RAM, used to lay out the default memory map (ignored when
    /// `regions` is given). Default 1 GiB.
    pub ram_bytes: u64,
    /// Number of CPUs kmem keeps per-CPU state for. Default 2.
    pub nr_cpus: usize,
    /// The memory map. `None` means [`pc_layout`]`(ram_bytes)`: a PC-like
    /// layout with DMA, DMA32 and Normal all populated.
    pub regions: Option<Vec<Region>>,
    /// What to do with a blocking allocation in atomic context.
    pub context_policy: ContextPolicy,
    /// Also print kmem's warnings to stderr (they are always logged in the
    /// platform). Default off.
    pub echo_warnings: bool,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            ram_bytes: GIB,
            nr_cpus: 2,
            regions: None,
            context_policy: ContextPolicy::default(),
            echo_warnings: false,
        }
    }
}

impl MachineConfig {
    /// The memory map this configuration describes: `regions` if given,
    /// otherwise the PC layout for `ram_bytes`.
    pub fn memory_map(&self) -> Vec<Region> {
        match &self.regions {
            Some(r) => r.clone(),
            None => pc_layout(self.ram_bytes).to_vec(),
        }
    }
}

/// Why a [`Machine`] could not be built.
#[derive(Debug)]
pub enum MachineError {
    /// Creating or mapping the RAM failed.
    Io(io::Error),
    /// The page allocator rejected the memory map.
    Map(MemoryMapError),
    /// The configuration makes no sense (zero CPUs, or more than
    /// [`kmem::page::MAX_CPUS`]).
    Config(&'static str),
}

impl fmt::Display for MachineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MachineError::Io(e) => write!(f, "cannot set up the machine's RAM: {e}"),
            MachineError::Map(e) => write!(f, "bad memory map: {e}"),
            MachineError::Config(e) => write!(f, "bad machine configuration: {e}"),
        }
    }
}

impl std::error::Error for MachineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MachineError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for MachineError {
    fn from(e: io::Error) -> Self {
        MachineError::Io(e)
    }
}

impl From<MemoryMapError> for MachineError {
    fn from(e: MemoryMapError) -> Self {
        MachineError::Map(e)
    }
}

/// A hosted machine: RAM, CPUs, a platform and the page allocator over them.
pub struct Machine {
    // Fields drop in declaration order: the page allocator (whose frame
    // records live in RAM) must go before the RAM is unmapped.
    pages: PageAllocator<HostPlatform>,
    platform: HostPlatform,
    ram: Ram,
    config: MachineConfig,
}

impl Machine {
    /// Builds a machine: maps its RAM, then hands the memory map to the page
    /// allocator. `config.regions` is filled in with the map actually used.
    pub fn new(mut config: MachineConfig) -> Result<Machine, MachineError> {
        if config.nr_cpus == 0 {
            return Err(MachineError::Config("a machine needs at least one CPU"));
        }
        if config.nr_cpus > MAX_CPUS {
            return Err(MachineError::Config("more CPUs than kmem::page::MAX_CPUS"));
        }
        let regions = config.memory_map();
        // Report a malformed map as the allocator would, before the RAM
        // layer trips over it with a less precise error.
        validate(&regions, MAX_NUMNODES)?;
        let ram = Ram::new(&regions)?;
        let platform = HostPlatform::new(&ram, config.nr_cpus, config.echo_warnings);
        let page_config = PageConfig {
            context_policy: config.context_policy,
            ..PageConfig::default()
        };
        let pages = PageAllocator::new(platform.clone(), &regions, page_config)?;
        config.regions = Some(regions);
        Ok(Machine {
            pages,
            platform,
            ram,
            config,
        })
    }

    /// The default machine: 1 GiB of RAM in the PC layout, 2 CPUs.
    pub fn default_machine() -> Result<Machine, MachineError> {
        Machine::new(MachineConfig::default())
    }

    /// The page allocator.
    pub fn pages(&self) -> &PageAllocator<HostPlatform> {
        &self.pages
    }

    /// The platform (direct map, CPUs, context, warning log).
    pub fn platform(&self) -> &HostPlatform {
        &self.platform
    }

    /// The RAM behind the direct map.
    pub fn ram(&self) -> &Ram {
        &self.ram
    }

    /// The configuration, with `regions` filled in.
    pub fn config(&self) -> &MachineConfig {
        &self.config
    }
}

impl fmt::Debug for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Machine")
            .field("ram", &self.ram)
            .field("platform", &self.platform)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
