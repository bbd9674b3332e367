//! kmalloc and kmem_cache basics on a real hosted machine: classes,
//! alignment, limits, zeroing, ksize, slabinfo, page accounting.

use kmem::gfp::{Gfp, GFP_ATOMIC, GFP_DMA, GFP_KERNEL};
use kmem::slab::{SlabAllocator, SlabConfig, SlabFlags, ZERO_SIZE_PTR};
use kmem_host::{Machine, MachineConfig};

fn machine() -> Machine {
    Machine::new(MachineConfig {
        ram_bytes: 256 << 20,
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn kmalloc_smoke() {
    let m = machine();
    let free0 = m.pages().nr_free_pages() + m.pages().pcp_pages();
    {
        let slab = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
        let mut ptrs = Vec::new();
        for size in [
            1usize, 8, 9, 64, 65, 96, 100, 192, 200, 4096, 8192, 8193, 100_000,
        ] {
            let p = slab.kmalloc(size, GFP_KERNEL).unwrap();
            unsafe { p.as_ptr().write_bytes(0xa5, size) };
            ptrs.push((p, size));
        }
        for (p, size) in &ptrs {
            let s = unsafe { std::slice::from_raw_parts(p.as_ptr(), *size) };
            assert!(s.iter().all(|&b| b == 0xa5));
            slab.kfree(p.as_ptr()).unwrap();
        }
        let mut s = String::new();
        kmem::slab::slabinfo::slabinfo(&slab, &mut s).unwrap();
        println!("{s}");
    }
    let free1 = m.pages().nr_free_pages() + m.pages().pcp_pages();
    assert_eq!(free0, free1, "every page back after drop");
}

#[test]
fn zero_size_and_null() {
    let m = machine();
    let slab = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
    let p = slab.kmalloc(0, GFP_KERNEL).unwrap();
    assert_eq!(p.as_ptr() as usize, ZERO_SIZE_PTR);
    slab.kfree(p.as_ptr()).unwrap();
    slab.kfree(std::ptr::null()).unwrap();
    assert_eq!(slab.ksize(p.as_ptr()), 0);
    let _ = (GFP_ATOMIC, GFP_DMA, Gfp::ZERO, SlabFlags::empty());
}
