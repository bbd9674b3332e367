//! The whole machine: build it, allocate a page, write it, free it; warnings
//! reach the log; many threads on few CPUs.

use kmem::addr::PAGE_SIZE;
use kmem::gfp::GFP_KERNEL;
use kmem::page::memmap::Region;
use kmem::platform::Platform;
use kmem_host::{Machine, MachineConfig, MachineError};
use std::sync::Arc;

#[test]
fn machine_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Machine>();
}

#[test]
fn default_machine_allocates_real_pages() {
    let m = Machine::default_machine().unwrap();
    assert_eq!(m.config().nr_cpus, 2);
    assert_eq!(
        m.config().regions.as_deref(),
        Some(&kmem::page::memmap::pc_layout(1 << 30)[..])
    );
    assert_eq!(
        m.platform().direct_map_offset(),
        m.ram().direct_map_offset()
    );

    let pfn = m.pages().alloc_pages(GFP_KERNEL, 0).unwrap();
    assert!(m.ram().is_backed(pfn.phys()), "{pfn} is backed RAM");
    let p = m.pages().page_address(pfn).as_ptr::<u8>();
    assert_eq!(p, m.ram().phys_to_virt(pfn.phys()));
    // SAFETY: the page is ours until freed.
    unsafe {
        p.write_bytes(0xa5, PAGE_SIZE);
        assert_eq!(p.add(PAGE_SIZE - 1).read(), 0xa5);
    }
    m.pages().free_pages(pfn, 0).unwrap();
}

#[test]
fn warnings_reach_the_log() {
    let m = Machine::new(MachineConfig {
        ram_bytes: 64 << 20,
        ..Default::default()
    })
    .unwrap();
    m.platform().take_log();
    m.platform().warn(format_args!("test warning {}", 42));
    assert!(m.platform().log_contains("test warning 42"));
    assert!(!m.platform().log_contains("nonsense"));
    assert_eq!(m.platform().take_log(), vec!["test warning 42".to_string()]);
    assert!(!m.platform().log_contains("test warning"));
}

#[test]
fn bad_configs_are_errors() {
    let err = Machine::new(MachineConfig {
        nr_cpus: 0,
        ..Default::default()
    })
    .unwrap_err();
    assert!(matches!(err, MachineError::Config(_)), "{err}");
    let err = Machine::new(MachineConfig {
        nr_cpus: kmem::page::MAX_CPUS + 1,
        ..Default::default()
    })
    .unwrap_err();
    assert!(matches!(err, MachineError::Config(_)), "{err}");
    let err = Machine::new(MachineConfig {
        regions: Some(vec![]),
        ..Default::default()
    })
    .unwrap_err();
    assert!(matches!(err, MachineError::Map(_)), "{err}");
    let overlapping = vec![
        Region::usable(0, 8 << 20),
        Region::usable(4 << 20, 16 << 20),
    ];
    let err = Machine::new(MachineConfig {
        regions: Some(overlapping),
        ..Default::default()
    })
    .unwrap_err();
    assert!(matches!(err, MachineError::Map(_)), "{err}");
}

#[test]
fn more_threads_than_cpus() {
    let m = Arc::new(
        Machine::new(MachineConfig {
            ram_bytes: 256 << 20,
            ..Default::default()
        })
        .unwrap(),
    );
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let m = m.clone();
            std::thread::spawn(move || {
                let mut held = Vec::new();
                for round in 0..200 {
                    let order = (round % 3) as u32;
                    let pfn = m.pages().alloc_pages(GFP_KERNEL, order).unwrap();
                    let p = m.pages().page_address(pfn).as_ptr::<u8>();
                    let len = PAGE_SIZE << order;
                    // SAFETY: the block is ours until freed.
                    unsafe { p.write_bytes(t, len) };
                    held.push((pfn, order));
                    if held.len() > 8 {
                        let (pfn, order) = held.remove(0);
                        let p = m.pages().page_address(pfn).as_ptr::<u8>();
                        // Nobody else wrote into our block.
                        // SAFETY: still ours.
                        let bytes = unsafe { std::slice::from_raw_parts(p, PAGE_SIZE << order) };
                        assert!(
                            bytes.iter().all(|&b| b == t),
                            "block {pfn} was handed out twice"
                        );
                        m.pages().free_pages(pfn, order).unwrap();
                    }
                }
                for (pfn, order) in held {
                    m.pages().free_pages(pfn, order).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
