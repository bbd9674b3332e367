//! # kmem-baremetal: kmem inside a real x86-64 kernel
//!
//! A minimal kernel that QEMU boots with `-kernel` (PVH entry), built for the
//! installed `x86_64-unknown-linux-gnu` target made freestanding by flags
//! (see `.cargo/config.toml` and `linker.ld`). It proves kmem's `no_std`
//! core on a bare CPU:
//!
//! 1. [`boot`]: 32-bit PVH entry, boot page tables, long mode, higher half;
//! 2. [`interrupts`]: GDT/TSS with IST stacks, IDT, PIC, PIT;
//! 3. [`memmap`] + [`paging`]: the firmware e820 map becomes kmem's
//!    `&[Region]`, and all of it is mapped in a direct map of 2 MiB pages;
//! 4. [`platform`]: kmem's `Platform` over [`percpu`] context counters and
//!    the IRQ-saving [`sync::IrqSpinLock`];
//! 5. [`run`]: the page allocator on real zones, kmalloc and kmem_cache,
//!    allocation from the timer interrupt (with one deliberate GFP_KERNEL
//!    there that kmem reports), kmem's x86-64 page tables walked by the CPU
//!    with a faulting guard page, and kmem's vmalloc over those tables
//!    (vmalloc, vzalloc, vmalloc_huge, vfree and purge with real TLB
//!    flushes, guard pages that fault);
//! 6. a summary on COM1, and an exit status through isa-debug-exit
//!    (33 = pass, 35 = fail).
//!
//! Build and boot (from this directory):
//!
//! ```sh
//! cargo build --release
//! qemu-system-x86_64 -machine pc,max-ram-below-4g=1G -m 1536M \
//!     -kernel target/x86_64-unknown-linux-gnu/release/kmem-baremetal \
//!     -serial stdio -display none -no-reboot \
//!     -device isa-debug-exit,iobase=0xf4,iosize=0x04
//! ```

#![no_std]
#![no_main]

mod arch;
mod boot;
mod interrupts;
mod mem;
mod memmap;
mod paging;
mod percpu;
mod platform;
mod qemu;
mod run;
mod serial;
mod sync;

use kmem::{PageAllocator, PageConfig, RegionKind};
use platform::BootPlatform;
use run::{Section, Verdict};

/// The page allocator, set once kmem is up; the timer handler reaches it here.
pub static PAGES: sync::Once<PageAllocator<BootPlatform>> = sync::Once::new();

/// Called by the boot trampoline on the boot stack, interrupts off.
#[no_mangle]
extern "C" fn kernel_main(start_info: u32) -> ! {
    serial::init();
    kprintln!();
    kprintln!(
        "kmem-baremetal: long mode, higher half (kernel_main at {:#x}), PVH start info at {:#x}",
        kernel_main as *const () as usize,
        start_info
    );
    interrupts::init_cpu_tables();
    interrupts::init_pic();
    kprintln!("cpu: GDT+TSS (3 IST stacks) and IDT loaded, PICs remapped to 32..47 and masked");

    let boot = boot::read_start_info(start_info);
    kprintln!(
        "boot: hvm_start_info v{}, {} e820 entries, cmdline \"{}\"",
        boot.version,
        boot.e820().len(),
        boot.cmdline()
    );
    for e in boot.e820() {
        kprintln!(
            "e820: [mem {:#018x}-{:#018x}] {}",
            e.addr,
            e.addr + e.size - 1,
            e.kind_name()
        );
    }
    let (k0, k1) = boot::kernel_image();
    kprintln!("kernel image: [mem {:#018x}-{:#018x}] reserved", k0, k1 - 1);
    let map = memmap::from_e820(
        boot.e820(),
        &[(0, 0x1000), (k0, k1)],
        paging::DIRECT_MAP_LIMIT,
    );
    for r in map.regions() {
        kprintln!(
            "kmem region: [mem {:#018x}-{:#018x}] {}",
            r.start.0,
            r.end.0 - 1,
            match r.kind {
                RegionKind::Usable => "usable",
                RegionKind::Reserved => "reserved",
            }
        );
    }
    if map.dropped_bytes > 0 {
        kprintln!(
            "WARNING: {} MiB of RAM above the direct map's reach left out",
            map.dropped_bytes >> 20
        );
    }

    let dm = paging::build_direct_map(map.regions());
    paging::drop_identity_map();
    kprintln!(
        "paging: direct map at {:#x}: {} x 2 MiB pages in {} page directories (global{}); identity map dropped",
        paging::DIRECT_MAP_BASE,
        dm.huge_pages,
        dm.page_directories,
        if dm.nx { ", no-execute" } else { "" }
    );

    let pa = match PageAllocator::new(BootPlatform, map.regions(), PageConfig::default()) {
        Ok(pa) => PAGES.set(pa),
        Err(e) => panic!("kmem rejected the memory map: {e}"),
    };
    kprintln!(
        "kmem: page allocator up: {} MiB usable, {} pages managed in {} zones, {} pages of frame records",
        map.bytes(RegionKind::Usable) >> 20,
        pa.nr_managed_pages(),
        pa.populated_zones().count(),
        pa.memmap_pages()
    );
    // Process context from here on: interrupts on (every PIC line masked
    // until the irq section starts the timer).
    arch::sti();

    let sections: [Section; 5] = [
        run::pages::run(pa),
        run::slab::run(pa),
        run::irq::run(pa),
        run::guard::run(pa),
        run::vmalloc::run(pa),
    ];

    kprintln!("== summary");
    let mut failed = 0;
    for s in &sections {
        match s.verdict() {
            Verdict::Pass => kprintln!("{:<8} PASS", s.name),
            Verdict::Fail => {
                failed += 1;
                kprintln!("{:<8} FAIL ({} checks failed)", s.name, s.failures())
            }
            // Not run is not passed: the exit code says every section passed.
            Verdict::Skipped(why) => {
                failed += 1;
                kprintln!("{:<8} SKIPPED ({}): not passed", s.name, why)
            }
        }
    }
    let vm = pa.vmstat();
    kprintln!(
        "kmem: {} warnings printed, {} context violations, {} timer interrupts, {} spurious IRQs",
        platform::warnings(),
        vm.context_violation,
        interrupts::ticks(),
        interrupts::spurious()
    );
    serial::with(|w| {
        use core::fmt::Write;
        let _ = w.write_str("/proc/buddyinfo:\n");
        let _ = kmem::procfs::buddyinfo(pa, w);
        if let Some(slab) = run::slab::SLAB.get() {
            let _ = w.write_str("/proc/slabinfo (caches in use):\n");
            let _ = kmem::slab::slabinfo::slabinfo(slab, &mut serial::SkipEmptySlabinfo::new(w));
        }
    });
    if failed == 0 {
        kprintln!("kmem-baremetal: PASS");
        qemu::exit(qemu::EXIT_SUCCESS)
    } else {
        kprintln!("kmem-baremetal: FAIL ({failed} sections failed)");
        qemu::exit(qemu::EXIT_FAILURE)
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    arch::cli();
    kprintln!("PANIC: {}", info);
    kprintln!("kmem-baremetal: FAIL");
    qemu::exit(qemu::EXIT_FAILURE)
}

/// `core` from the sysroot was compiled with unwinding tables that name the
/// personality routine; with `panic = "abort"` nothing ever unwinds, so it is
/// never called.
#[no_mangle]
extern "C" fn rust_eh_personality() {}
