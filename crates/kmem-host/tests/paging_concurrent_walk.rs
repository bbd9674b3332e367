//! A page-table walk racing the freeing of emptied tables.
//!
//! `translate` (vmalloc_to_page, the TLB model's fills, vread) may be asked
//! about an address whose tables another CPU is freeing at that moment: an
//! unmapped address next to a live mapping (a guard page, a shrunk tail)
//! whose intermediate tables a purge finds empty. The walk must never read
//! a table frame after it went back to the page allocator.
//!
//! The platform below makes the race happen on demand: the walk asks the
//! platform for each table's address (`phys_to_virt`), and at the second
//! table of an armed walk another thread unmaps, frees the emptied tables
//! and refills their frames with 0xff bytes (what a new owner of the page
//! may write). The walk then reads on. If the freeing could run during the
//! walk, the walk reads the new owner's bytes as entries and "translates" an
//! address nothing maps.

mod page_common;

use kmem::addr::{VirtAddr, PAGE_SIZE};
use kmem::gfp::GFP_KERNEL;
use kmem::page::{PageAllocator, PageConfig};
use kmem::paging::x86_64::X86PageTables;
use kmem::paging::{PageSize, PageTables, PteFlags, TranslateError};
use kmem::platform::Platform;
use kmem_host::{HostPlatform, Ram};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
use std::sync::mpsc;
use std::time::Duration;

const MIB: usize = 1 << 20;

thread_local! {
    /// Table lookups left before the hook fires in this thread's walk.
    static ARMED: Cell<u32> = const { Cell::new(0) };
}

/// The hook: set by the test, run once by the walking thread.
static HOOK: parking_lot::Mutex<Option<Box<dyn FnOnce() + Send>>> = parking_lot::Mutex::new(None);
static HOOK_RAN: AtomicU32 = AtomicU32::new(0);

/// The host platform, with a hook in `phys_to_virt`.
struct WalkPlat(HostPlatform);

host_platform_wrapper!(WalkPlat, Lock = <HostPlatform as Platform>::Lock, phys_to_virt(this, pa) => {
    let left = ARMED.with(|a| a.get());
    if left > 0 {
        ARMED.with(|a| a.set(left - 1));
        if left == 1 {
            if let Some(h) = HOOK.lock().take() {
                h();
                HOOK_RAN.fetch_add(1, SeqCst);
            }
        }
    }
    this.0.phys_to_virt(pa)
});

/// Maps one page at `va`, then walks `va + 4 KiB` (unmapped, same tables)
/// while another thread unmaps `va`, frees the emptied tables and writes
/// 0xff over every frame it can get. Returns what the walk said.
fn race_walk_against_table_free(
    pa: &'static PageAllocator<WalkPlat>,
) -> Result<kmem::paging::Translation, TranslateError> {
    let pt: &'static X86PageTables<'static, WalkPlat> =
        Box::leak(Box::new(X86PageTables::new(pa).unwrap()));
    // A fresh PML4 slot: the walk needs a PDPT, a PD and a PT for it.
    let va = VirtAddr(0xffff_c900_0000_0000);
    let frame = pa.alloc_pages(GFP_KERNEL, 0).unwrap();
    pt.map(
        va,
        frame.phys(),
        PageSize::Size4K,
        PteFlags::PRESENT | PteFlags::WRITABLE,
        GFP_KERNEL,
    )
    .unwrap()
    .flush();
    assert!(pt.translate(va).is_ok());

    let (done_tx, done_rx) = mpsc::channel::<usize>();
    let freer_started = std::sync::Arc::new(AtomicBool::new(false));
    let started = freer_started.clone();
    // The freer runs on its own thread; the hook starts it and waits until
    // it has finished or has been kept waiting long enough to be sure it is
    // blocked (the walk holds off table freeing).
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let freer = std::thread::spawn(move || {
        go_rx.recv().unwrap();
        started.store(true, SeqCst);
        let (_, flush) = pt.unmap(va).unwrap();
        flush.flush();
        let freed = pt.free_empty_tables(va, VirtAddr(va.0 + 2 * MIB));
        // The freed frames go to whoever asks next: fill everything we can
        // get (the pcp lists hand the most recently freed frame out first).
        let mut held = Vec::new();
        for _ in 0..64 {
            let Ok(p) = pa.alloc_pages(GFP_KERNEL, 0) else {
                break;
            };
            // SAFETY: a frame we own, direct-mapped, one page.
            unsafe {
                std::ptr::write_bytes(pa.page_address(p).as_ptr::<u8>(), 0xff, PAGE_SIZE);
            }
            held.push(p);
        }
        // The hook may have stopped waiting (the walk held the freeing off).
        let _ = done_tx.send(freed);
        (freed, held)
    });
    *HOOK.lock() = Some(Box::new(move || {
        go_tx.send(()).unwrap();
        // Either the freer finishes (the walk's tables are gone under it) or
        // it is blocked by the walk for this long.
        let _ = done_rx.recv_timeout(Duration::from_millis(200));
    }));
    HOOK_RAN.store(0, SeqCst);
    // Lookup 1 is the PML4, lookup 2 the PDPT: fire between reading the
    // PML4 entry and reading the PDPT entry.
    ARMED.with(|a| a.set(2));
    let r = pt.translate(VirtAddr(va.0 + PAGE_SIZE));
    ARMED.with(|a| a.set(0));
    assert_eq!(HOOK_RAN.load(SeqCst), 1, "the hook ran inside the walk");
    assert!(freer_started.load(SeqCst));
    let (freed, held) = freer.join().unwrap();
    assert_eq!(
        freed, 3,
        "the PT, PD and PDPT under the PML4 slot were freed"
    );
    for p in held {
        pa.free_pages(p, 0).unwrap();
    }
    r
}

#[test]
fn translate_never_reads_a_freed_table() {
    let regions = kmem::page::memmap::pc_layout(64 << 20).to_vec();
    let ram: &'static Ram = Box::leak(Box::new(Ram::new(&regions).unwrap()));
    let hp = HostPlatform::new(ram, 2, false);
    let pa = PageAllocator::new(WalkPlat(hp), &regions, PageConfig::default()).unwrap();
    let pa: &'static PageAllocator<WalkPlat> = Box::leak(Box::new(pa));
    let r = race_walk_against_table_free(pa);
    match r {
        Err(TranslateError::NotMapped { .. }) => {}
        other => panic!(
            "an unmapped address whose tables were freed during the walk translated as {other:?}: \
             the walk read a table frame after it was freed (and refilled by its next owner)"
        ),
    }
}

/// TLB fills walk with their model's lock held and the walk takes the
/// table lock; a huge leaf replacing empty tables flushes the range. If that
/// flush were sent with the table lock held, a fill on another CPU and the
/// map would wait for each other forever.
#[test]
fn tlb_fills_race_huge_maps_over_empty_tables() {
    use kmem::paging::tlb::{Tlb, TlbConfig};
    use kmem_host::Machine;
    use parking_lot::lock_api::Mutex;
    let m: &'static Machine = Box::leak(Box::new(Machine::default_machine().unwrap()));
    let tlbs: &'static [Mutex<parking_lot::RawMutex, Tlb>] = Box::leak(
        (0..2)
            .map(|_| Mutex::new(Tlb::new(TlbConfig::GOLDEN_COVE).unwrap()))
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    );
    let mut pt = X86PageTables::new(m.pages()).unwrap();
    pt.set_tlbs(tlbs);
    let pt: &'static X86PageTables<'static, HostPlatform> = Box::leak(Box::new(pt));
    let base = VirtAddr(0xffff_c900_4000_0000);
    let frame = m.pages().alloc_pages(GFP_KERNEL, 0).unwrap();
    let stop: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
    let (tx, rx) = mpsc::channel::<&'static str>();
    let filler_tx = tx.clone();
    std::thread::spawn(move || {
        let _cpu = kmem_host::claim_cpu(1).expect("claim CPU 1");
        let mut i = 0usize;
        while !stop.load(SeqCst) {
            let _ = pt.access(VirtAddr(base.0 + (i % 512) * PAGE_SIZE));
            i += 1;
        }
        let _ = filler_tx.send("filler");
    });
    std::thread::spawn(move || {
        let _cpu = kmem_host::claim_cpu(0).expect("claim CPU 0");
        for _ in 0..3000 {
            // A 4 KiB page (PT allocated), gone again: the PT stays, empty.
            pt.map(
                VirtAddr(base.0 + PAGE_SIZE),
                frame.phys(),
                PageSize::Size4K,
                PteFlags::KERNEL,
                GFP_KERNEL,
            )
            .unwrap()
            .flush();
            pt.unmap(VirtAddr(base.0 + PAGE_SIZE)).unwrap().1.flush();
            // A 2 MiB leaf replaces the empty PT (and flushes its range).
            pt.map(
                base,
                kmem::addr::PhysAddr(1 << 30),
                PageSize::Size2M,
                PteFlags::KERNEL,
                GFP_KERNEL,
            )
            .unwrap()
            .flush();
            pt.unmap(base).unwrap().1.flush();
        }
        stop.store(true, SeqCst);
        let _ = tx.send("mapper");
    });
    for _ in 0..2 {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(_) => {}
            Err(_) => panic!(
                "a TLB fill and a huge map over empty tables are still waiting after 60 s: deadlock"
            ),
        }
    }
    assert!(pt.stats().tables_freed >= 3000, "{:?}", pt.stats());
}
