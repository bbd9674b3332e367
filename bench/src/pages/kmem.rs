//! kmem's page allocator behind the suite's [`FrameAllocator`] interface.
//!
//! A default hosted machine (1 GiB of memfd RAM in the PC layout, 2 CPUs), the
//! benchmark thread pinned to kmem CPU 0, every allocation with GFP_KERNEL from
//! process context: the common kernel case, served by CPU 0's per-CPU lists for
//! orders 0..=3 and by the zone's buddy lists behind them.

use kmem::gfp::GFP_KERNEL;
use kmem::Pfn;
use kmem_host::{Machine, MachineConfig};

use super::FrameAllocator;

/// The line the text report prints for kmem.
pub const DESCRIPTION: &str = "kmem                          this repo: kmem_host::Machine (1 GiB, 2 CPUs, thread on CPU 0), PageAllocator::alloc_pages(GFP_KERNEL, order)/free_pages";

/// The hosted machine whose page allocator is measured.
pub struct Kmem(Machine);

impl Kmem {
    pub fn new() -> Result<Self, String> {
        let m = Machine::new(MachineConfig::default()).map_err(|e| format!("kmem: {e}"))?;
        kmem_host::set_cpu(0);
        Ok(Kmem(m))
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
}

#[cold]
#[inline(never)]
fn failed(call: &str, order: u32, e: &dyn std::fmt::Debug) -> ! {
    panic!("kmem: {call} at order {order} failed: {e:?}")
}
