//! The two page-table backends the vmalloc suite compares, each on its own
//! hosted machine.
//!
//! - **in-memory** (`kmem-inmem`): [`X86PageTables`] alone, in Linux's own
//!   x86-64 vmalloc range (`0xffffc90000000000`, 32 TiB). Table frames come
//!   from the machine's page allocator and entries are written in the
//!   hardware layout; nothing is mapped in this process, so a pointer can be
//!   translated but not dereferenced. This is exactly the work a kernel does.
//! - **hosted** (`kmem-host`): [`HostVmap`], which writes the same x86-64
//!   tables *and* maps the memfd frames at the same addresses in this
//!   process (`mmap(MAP_FIXED)` on map, `mmap(PROT_NONE)` on unmap), so the
//!   pointers are real. Its system calls can be timed on their own
//!   ([`Backend::set_syscall_timing`]).
//!
//! [`Vm`] owns a boxed machine and the allocators that borrow it (vmalloc,
//! and the slab allocator kvfree_rcu needs), fields ordered so that the
//! borrowers are dropped first.

use kmem::paging::{PageTables, X86PageTables};
use kmem::slab::{SlabAllocator, SlabConfig};
use kmem::vmalloc::Vmalloc;
use kmem_host::vmap::{self, HostVmap};
use kmem_host::{HostPlatform, Machine, MachineConfig};

/// Which backend, as named in reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// x86-64 page tables in memory only.
    Inmem,
    /// x86-64 page tables plus real host mappings.
    Host,
}

impl Kind {
    /// The allocator name used in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Inmem => "kmem-inmem",
            Kind::Host => "kmem-host",
        }
    }
}

/// What the suite needs from a backend beyond [`PageTables`].
pub trait Backend: PageTables + 'static {
    /// Times the host system calls from now on (no-op in memory).
    fn set_syscall_timing(&self, _on: bool) {}
    /// Nanoseconds spent in host system calls so far, and the number of
    /// calls (`None` in memory).
    fn syscalls(&self) -> Option<(u64, u64)> {
        None
    }
}

impl Backend for X86PageTables<'static, HostPlatform> {}

impl Backend for HostVmap<'static> {
    fn set_syscall_timing(&self, on: bool) {
        HostVmap::set_timing(self, on);
    }
    fn syscalls(&self) -> Option<(u64, u64)> {
        let s = self.stats();
        Some((s.syscall_nanos, s.map_calls + s.unmap_calls))
    }
}

/// A machine and the allocators over it.
pub struct Vm<B: Backend> {
    // Field order is drop order: both borrow `machine`.
    pub vm: Vmalloc<'static, HostPlatform, B>,
    pub slab: SlabAllocator<'static, HostPlatform>,
    machine: Box<Machine>,
}

impl<B: Backend> Vm<B> {
    /// The machine underneath.
    pub fn machine(&self) -> &Machine {
        &self.machine
    }
}

/// A machine with `ram` bytes and `cpus` CPUs, and a `'static` view of it
/// that the caller must not let outlive the box.
fn machine(ram: u64, cpus: usize) -> Result<(Box<Machine>, &'static Machine), String> {
    let m = Box::new(
        Machine::new(MachineConfig {
            ram_bytes: ram,
            nr_cpus: cpus,
            ..MachineConfig::default()
        })
        .map_err(|e| format!("machine: {e}"))?,
    );
    // SAFETY: the machine is boxed (stable address) and every `Vm` drops the
    // allocators holding this reference before the box (field order).
    let r = unsafe { &*(&*m as *const Machine) };
    Ok((m, r))
}

fn slab(m: &'static Machine) -> Result<SlabAllocator<'static, HostPlatform>, String> {
    SlabAllocator::new(m.pages(), SlabConfig::default()).map_err(|e| format!("slab: {e}"))
}

/// In-memory x86-64 tables in Linux's range.
pub fn inmem(ram: u64, cpus: usize) -> Result<Vm<X86PageTables<'static, HostPlatform>>, String> {
    let (machine, m) = machine(ram, cpus)?;
    let vm = vmap::in_memory(m).map_err(|e| format!("vmalloc: {e}"))?;
    let slab = slab(m)?;
    Ok(Vm { vm, slab, machine })
}

/// The hosted, mmap-backed backend (64 GiB of reserved address space).
pub fn host(ram: u64, cpus: usize) -> Result<Vm<HostVmap<'static>>, String> {
    let (machine, m) = machine(ram, cpus)?;
    let vm = vmap::vmalloc(m).map_err(|e| format!("vmalloc: {e}"))?;
    let slab = slab(m)?;
    Ok(Vm { vm, slab, machine })
}

/// OS CPUs this process may run on, in order (read before anything pins).
pub fn allowed_cpus() -> Vec<usize> {
    use rustix::thread::{sched_getaffinity, CpuSet};
    let set = sched_getaffinity(None).unwrap_or_else(|_| CpuSet::new());
    (0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect()
}

/// Pins the calling thread to `cpus[index % len]` (no-op without CPUs).
pub fn pin_to(cpus: &[usize], index: usize) {
    use rustix::thread::{sched_setaffinity, CpuSet};
    if let Some(&c) = cpus.get(index % cpus.len().max(1)) {
        let mut set = CpuSet::new();
        set.set(c);
        let _ = sched_setaffinity(None, &set);
    }
}
