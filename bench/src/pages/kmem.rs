//! kmem's page allocator behind the suite's [`FrameAllocator`] interface.
//!
//! A default hosted machine (1 GiB of memfd RAM in the PC layout, 2 CPUs), the
//! benchmark thread on kmem CPU 0, which it claims while timing
//! ([`kmem_host::claim_cpu`]: per-CPU lists under plain stores, as a kernel
//! with preemption off), every allocation with GFP_KERNEL from process
//! context: the common kernel case, served by CPU 0's per-CPU lists for
//! orders 0..=3 and by the zone's buddy lists behind them.

use kmem::gfp::GFP_KERNEL;
use kmem::Pfn;
use kmem_host::{claim_cpu, CpuClaim, Machine, MachineConfig};

use super::FrameAllocator;

/// The line the text report prints for kmem.
pub const DESCRIPTION: &str = "kmem                          this repo: kmem_host::Machine (1 GiB, 2 CPUs, thread on CPU 0), PageAllocator::alloc_pages(GFP_KERNEL, order)/free_pages; CPU 0 claimed while timing";

/// The hosted machine whose page allocator is measured, and the timing
/// thread's claim on CPU 0 while a run lasts.
pub struct Kmem(Machine, Option<CpuClaim>);

impl Kmem {
    pub fn new() -> Result<Self, String> {
        let m = Machine::new(MachineConfig::default()).map_err(|e| format!("kmem: {e}"))?;
        kmem_host::set_cpu(0);
        Ok(Kmem(m, None))
    }
}

impl FrameAllocator for Kmem {
    const NAME: &'static str = "kmem";
    type Frame = Pfn;

    #[inline]
    fn alloc(&mut self, order: u32) -> Pfn {
        match self.0.pages().alloc_pages(GFP_KERNEL, order) {
            Ok(pfn) => pfn,
            Err(e) => failed("alloc_pages", order, &e),
        }
    }

    #[inline]
    fn free(&mut self, frame: Pfn, order: u32) {
        if let Err(e) = self.0.pages().free_pages(frame, order) {
            failed("free_pages", order, &e)
        }
    }

    fn pfn(&self, frame: Pfn) -> u64 {
        frame.0
    }

    fn enter(&mut self) {
        if self.1.is_none() {
            match claim_cpu(0) {
                Ok(c) => self.1 = Some(c),
                Err(e) => eprintln!("kmem: {e}; timing CPU 0 unclaimed (shared paths)"),
            }
        }
    }

    fn leave(&mut self) {
        self.1 = None;
    }
}

#[cold]
#[inline(never)]
fn failed(call: &str, order: u32, e: &dyn std::fmt::Debug) -> ! {
    panic!("kmem: {call} at order {order} failed: {e:?}")
}
