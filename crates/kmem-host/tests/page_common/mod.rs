//! Shared by the `page_*` tests: small machines, baselines, a shadow model of
//! live blocks that tags every page through its real direct-map address, and
//! a deterministic random operation driver.
//!
//! Each `page_*.rs` test crate pulls this in with `mod page_common;` and uses
//! part of it, hence the `dead_code` allowance.

#![allow(dead_code)]

use kmem::addr::{get_order, Pfn, PAGE_SIZE};
use kmem::error::{AllocError, FreeError};
use kmem::gfp::{
    Gfp, ZoneType, GFP_ATOMIC, GFP_DMA, GFP_DMA32, GFP_HIGHUSER_MOVABLE, GFP_KERNEL, GFP_NOWAIT,
};
use kmem::page::Region;
use kmem_host::{Machine, MachineConfig};
use std::collections::BTreeMap;

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
/// Pfn of the first frame above ZONE_DMA (16 MiB).
pub const DMA_END_PFN: u64 = (16 * MIB) >> 12;
/// Pfn of the first frame above ZONE_DMA32 (4 GiB).
pub const DMA32_END_PFN: u64 = (4 * GIB) >> 12;

/// A machine with `ram_bytes` of RAM in the PC layout and 2 CPUs.
pub fn machine(ram_bytes: u64) -> Machine {
    Machine::new(MachineConfig {
        ram_bytes,
        ..Default::default()
    })
    .expect("machine builds")
}

/// A machine whose only memory is a DMA32 zone of `mib` MiB at 16 MiB (the
/// first 16 MiB reserved), 2 CPUs: every request is served by that one
/// zone, and none in Linux's no-fragmentation mode (which only a Normal
/// zone with a lower zone beside it gets).
pub fn dma32_machine(mib: u64) -> Machine {
    Machine::new(MachineConfig {
        regions: Some(vec![
            Region::reserved(0, 16 * MIB),
            Region::usable(16 * MIB, (16 + mib) * MIB),
        ]),
        nr_cpus: 2,
        ..Default::default()
    })
    .expect("machine builds")
}

/// The machine most tests use: 64 MiB (DMA 15 MiB, DMA32 16 MiB, Normal
/// 32 MiB above 4 GiB), 2 CPUs. Cheap to build.
pub fn small_machine() -> Machine {
    machine(64 * MIB)
}

/// `/proc/buddyinfo` of the machine.
pub fn buddyinfo(m: &Machine) -> String {
    let mut s = String::new();
    kmem::procfs::buddyinfo(m.pages(), &mut s).unwrap();
    s
}

/// Runs the allocator's own consistency walk and fails the test on any error.
#[track_caller]
pub fn verify(m: &Machine) {
    match m.pages().verify() {
        Ok(rep) => {
            assert_eq!(rep.free_pages, m.pages().nr_free_pages() as u64);
            assert_eq!(rep.pcp_pages, m.pages().pcp_pages() as u64);
        }
        Err(e) => panic!("PageAllocator::verify failed: {e}"),
    }
}

/// Every counter that must come back once everything is freed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Baseline {
    pub nr_free: usize,
    /// (node, zone, free pages) for every populated zone.
    pub zones: Vec<(usize, ZoneType, usize)>,
    pub buddyinfo: String,
}

impl Baseline {
    /// Reads the counters now; per-CPU lists are drained first so that every
    /// free page is on a buddy list.
    pub fn take(m: &Machine) -> Baseline {
        m.pages().drain_all_pages();
        assert_eq!(m.pages().pcp_pages(), 0);
        Baseline {
            nr_free: m.pages().nr_free_pages(),
            zones: m
                .pages()
                .populated_zones()
                .map(|z| (z.node(), z.zone_type(), z.free_pages()))
                .collect(),
            buddyinfo: buddyinfo(m),
        }
    }

    /// Drains every CPU and checks that every counter is back where it was,
    /// and that the allocator's own walk finds nothing wrong.
    #[track_caller]
    pub fn assert_restored(&self, m: &Machine) {
        let now = Baseline::take(m);
        assert_eq!(now.nr_free, self.nr_free, "nr_free_pages back to baseline");
        assert_eq!(
            now.zones, self.zones,
            "each zone's free pages back to baseline"
        );
        assert_eq!(
            now.buddyinfo, self.buddyinfo,
            "buddyinfo identical to the initial one"
        );
        verify(m);
    }
}

/// SplitMix64: small, deterministic, good enough to pick operations.
#[derive(Clone, Debug)]
pub struct SeqRng(u64);

impl SeqRng {
    pub fn new(seed: u64) -> SeqRng {
        SeqRng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The masks the random tests draw from.
pub const MASKS: [(&str, Gfp); 6] = [
    ("GFP_KERNEL", GFP_KERNEL),
    ("GFP_ATOMIC", GFP_ATOMIC),
    ("GFP_NOWAIT", GFP_NOWAIT),
    ("GFP_DMA", GFP_KERNEL.union(GFP_DMA)),
    ("GFP_DMA32", GFP_KERNEL.union(GFP_DMA32)),
    ("GFP_HIGHUSER_MOVABLE", GFP_HIGHUSER_MOVABLE),
];

/// How a live block must be freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// `free_pages(pfn, order)`.
    Pages,
    /// `free_pages_addr(page_address(pfn), order)`.
    Addr,
    /// `free_pages_exact(page_address(pfn), size)`.
    Exact(usize),
}

/// One live allocation as the shadow model knows it.
#[derive(Clone, Copy, Debug)]
pub struct Block {
    pub pfn: u64,
    /// Pages it covers.
    pub pages: u64,
    /// Order of its head as the allocator records it (0 for exact and split
    /// pieces).
    pub order: u32,
    pub how: How,
    pub compound: bool,
    /// Seed of the tags written into its pages.
    pub seed: u64,
}

/// The tag of page `pfn` in a block with `seed`: different for every page,
/// so a block handed out twice, or overlapping another, shows up as a
/// mismatch.
fn tag(seed: u64, pfn: u64) -> u64 {
    seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ pfn.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x7A6B
}

const POISON: u8 = 0xA5;

/// The shadow model: every live block, keyed by first pfn.
#[derive(Default)]
pub struct Shadow {
    pub live: BTreeMap<u64, Block>,
    pub live_pages: u64,
    seq: u64,
    /// Blocks freed so far (pfn, order given to the free), newest last.
    pub freed: Vec<(u64, u32)>,
    /// `split_page` calls refused (compound blocks): each counts as a free error.
    pub refused_splits: u64,
}

fn page_ptr(m: &Machine, pfn: u64) -> *mut u64 {
    m.pages().page_address(Pfn(pfn)).as_ptr::<u64>()
}

impl Shadow {
    pub fn new() -> Shadow {
        Shadow::default()
    }

    /// The live block covering `pfn`, if any.
    pub fn covering(&self, pfn: u64) -> Option<Block> {
        let (_, b) = self.live.range(..=pfn).next_back()?;
        (pfn < b.pfn + b.pages).then_some(*b)
    }

    /// Any live block intersecting `[pfn, pfn + pages)`.
    pub fn overlapping(&self, pfn: u64, pages: u64) -> Option<Block> {
        if let Some(b) = self.covering(pfn) {
            return Some(b);
        }
        self.live.range(pfn..pfn + pages).next().map(|(_, b)| *b)
    }

    /// The `i % len`-th live block.
    pub fn nth(&self, i: usize) -> Option<Block> {
        if self.live.is_empty() {
            return None;
        }
        self.live.values().nth(i % self.live.len()).copied()
    }

    /// Checks a fresh block (no overlap with anything live, natural
    /// alignment, zone bounds for `gfp`, backed RAM, zeroed if asked), then
    /// tags its pages and records it.
    #[track_caller]
    pub fn add(&mut self, m: &Machine, gfp: Gfp, mut b: Block, align_order: u32) {
        if let Some(o) = self.overlapping(b.pfn, b.pages) {
            panic!("allocator handed out {b:?}, which overlaps live {o:?}");
        }
        assert_eq!(
            b.pfn % (1 << align_order),
            0,
            "{b:?} is not aligned to 2^{align_order} pages"
        );
        check_zone(m, gfp, b.pfn, b.pages);
        for i in 0..b.pages {
            let f = m.pages().frame(Pfn(b.pfn + i)).expect("frame record");
            if i == 0 || matches!(b.how, How::Exact(_)) {
                assert_eq!(
                    m.pages().allocation_order(Pfn(b.pfn + i)),
                    Some(b.order),
                    "pfn {:#x} of {b:?} is an allocated head",
                    b.pfn + i
                );
            } else if b.compound {
                assert_eq!(m.pages().compound_head(Pfn(b.pfn + i)), Pfn(b.pfn));
            } else {
                assert_eq!(f.state(), kmem::page::FrameState::Tail);
            }
        }
        if gfp.contains(Gfp::ZERO) {
            let bytes = b.pages as usize * PAGE_SIZE;
            // SAFETY: the block is ours and mapped read-write.
            let s =
                unsafe { std::slice::from_raw_parts(page_ptr(m, b.pfn) as *const u64, bytes / 8) };
            if let Some(i) = s.iter().position(|&w| w != 0) {
                panic!(
                    "__GFP_ZERO block {b:?} has a non-zero word at byte {}",
                    i * 8
                );
            }
        }
        self.seq += 1;
        b.seed = self.seq;
        for p in b.pfn..b.pfn + b.pages {
            // SAFETY: as above.
            unsafe {
                let q = page_ptr(m, p);
                q.write(tag(b.seed, p));
                q.add(PAGE_SIZE / 8 - 1).write(!tag(b.seed, p));
            }
        }
        self.live_pages += b.pages;
        self.live.insert(b.pfn, b);
    }

    /// Removes a live block from the model after checking its tags, and
    /// poisons its memory (so a later `__GFP_ZERO` check means something).
    #[track_caller]
    pub fn take(&mut self, m: &Machine, pfn: u64) -> Block {
        let b = self.live.remove(&pfn).expect("live block");
        self.live_pages -= b.pages;
        check_tags(m, &b);
        // SAFETY: still ours until the caller frees it.
        unsafe {
            std::ptr::write_bytes(
                page_ptr(m, b.pfn) as *mut u8,
                POISON,
                b.pages as usize * PAGE_SIZE,
            )
        };
        b
    }

    /// Frees a live block the way it was allocated; the free must succeed.
    #[track_caller]
    pub fn free(&mut self, m: &Machine, pfn: u64) {
        let b = self.take(m, pfn);
        free_block(m, &b).unwrap_or_else(|e| panic!("free of live {b:?} failed: {e}"));
        self.freed.push((b.pfn, b.order));
    }

    /// Frees every live block.
    #[track_caller]
    pub fn free_all(&mut self, m: &Machine) {
        while let Some((&pfn, _)) = self.live.iter().next() {
            self.free(m, pfn);
        }
    }

    /// Checks the tags of every live block.
    #[track_caller]
    pub fn check_all_tags(&self, m: &Machine) {
        for b in self.live.values() {
            check_tags(m, b);
        }
    }

    /// Records a freshly allocated block of `2^order` pages.
    #[track_caller]
    pub fn add_pages(&mut self, m: &Machine, gfp: Gfp, pfn: Pfn, order: u32, how: How) {
        let compound = gfp.contains(Gfp::COMP) && order > 0;
        self.add(
            m,
            gfp,
            Block {
                pfn: pfn.0,
                pages: 1 << order,
                order,
                how,
                compound,
                seed: 0,
            },
            order,
        );
    }
}

/// Checks that a live block's tags are intact.
#[track_caller]
pub fn check_tags(m: &Machine, b: &Block) {
    for p in b.pfn..b.pfn + b.pages {
        // SAFETY: the block is live and ours.
        let (first, last) = unsafe {
            let q = page_ptr(m, p);
            (q.read(), q.add(PAGE_SIZE / 8 - 1).read())
        };
        assert!(
            first == tag(b.seed, p) && last == !tag(b.seed, p),
            "tag of pfn {p:#x} in live {b:?} was overwritten: someone else got this memory"
        );
    }
}

/// Frees `b` the way it was allocated.
pub fn free_block(m: &Machine, b: &Block) -> Result<(), FreeError> {
    let pa = m.pages();
    match b.how {
        How::Pages => pa.free_pages(Pfn(b.pfn), b.order),
        How::Addr => pa.free_pages_addr(pa.page_address(Pfn(b.pfn)), b.order),
        How::Exact(size) => pa.free_pages_exact(pa.page_address(Pfn(b.pfn)), size),
    }
}

/// The block `[pfn, pfn + pages)` lies in backed RAM, in one zone, and in a
/// zone `gfp` allows.
#[track_caller]
pub fn check_zone(m: &Machine, gfp: Gfp, pfn: u64, pages: u64) {
    let highest = gfp.zone_type().expect("valid mask");
    let end = pfn + pages;
    match highest {
        ZoneType::Dma => assert!(
            end <= DMA_END_PFN,
            "{gfp} block {pfn:#x}+{pages} above 16 MiB"
        ),
        ZoneType::Dma32 => assert!(
            end <= DMA32_END_PFN,
            "{gfp} block {pfn:#x}+{pages} above 4 GiB"
        ),
        ZoneType::Normal => {}
    }
    let head = m.pages().frame(Pfn(pfn)).expect("head has a frame record");
    let last = m
        .pages()
        .frame(Pfn(end - 1))
        .expect("last page has a frame record");
    assert!(
        head.zone_index() <= highest.index(),
        "{gfp}: zone index {}",
        head.zone_index()
    );
    assert_eq!(
        head.zone_index(),
        last.zone_index(),
        "block straddles zones"
    );
    assert_eq!(head.node(), last.node(), "block straddles nodes");
    for p in pfn..end {
        assert!(
            m.ram().is_backed(Pfn(p).phys()),
            "pfn {p:#x} is not backed RAM"
        );
    }
}

/// Pages held by the allocator's free lists and per-CPU lists, plus what the
/// model has live, must add up to what was free at the start.
#[track_caller]
pub fn assert_conserved(m: &Machine, sh: &Shadow, base: &Baseline) {
    let free = m.pages().nr_free_pages_with_pcp();
    assert_eq!(
        free as u64 + sh.live_pages,
        base.nr_free as u64,
        "free ({free}) + live ({}) pages == baseline free",
        sh.live_pages
    );
}

/// An allocation failure the random tests accept: out of memory, reported
/// for the order and zone asked.
#[track_caller]
pub fn assert_acceptable_failure(e: &AllocError, gfp: Gfp, order: u32) {
    match e {
        AllocError::NoMemory(n) => {
            assert_eq!(n.order, order);
            assert_eq!(n.highest_zone, gfp.zone_type().unwrap());
        }
        other => panic!("{gfp} order {order}: unexpected error {other:?}"),
    }
}

/// Allocates `2^order` pages with `gfp` through `alloc_pages` (or
/// `get_free_pages` if `addr`), records the block in the model.
#[track_caller]
pub fn alloc_into(
    m: &Machine,
    sh: &mut Shadow,
    gfp: Gfp,
    order: u32,
    addr: bool,
) -> Result<u64, AllocError> {
    let pa = m.pages();
    let pfn = if addr {
        let va = pa.get_free_pages(gfp, order)?;
        assert!(va.is_page_aligned());
        pa.virt_to_page(va).expect("direct-map address of a frame")
    } else {
        pa.alloc_pages(gfp, order)?
    };
    let how = if addr { How::Addr } else { How::Pages };
    sh.add_pages(m, gfp, pfn, order, how);
    Ok(pfn.0)
}

/// `alloc_pages_exact(size)`, recorded as one block freed with
/// `free_pages_exact`.
#[track_caller]
pub fn alloc_exact_into(
    m: &Machine,
    sh: &mut Shadow,
    gfp: Gfp,
    size: usize,
) -> Result<u64, AllocError> {
    let pa = m.pages();
    let va = pa.alloc_pages_exact(size, gfp)?;
    let pfn = pa.virt_to_page(va).expect("direct-map address").0;
    let pages = size.max(1).div_ceil(PAGE_SIZE) as u64;
    let align = get_order(size);
    // The pages past the exact size went straight back.
    for p in pfn + pages..pfn + (1 << align) {
        assert_ne!(
            pa.frame(Pfn(p)).unwrap().state(),
            kmem::page::FrameState::Allocated,
            "alloc_pages_exact({size}) kept pfn {p:#x} past the size"
        );
    }
    sh.add(
        m,
        gfp - Gfp::COMP,
        Block {
            pfn,
            pages,
            order: 0,
            how: How::Exact(size),
            compound: false,
            seed: 0,
        },
        align,
    );
    Ok(pfn)
}

/// `alloc_pages_bulk` of `n` pages; records what it returns; returns the
/// count.
#[track_caller]
pub fn alloc_bulk_into(m: &Machine, sh: &mut Shadow, gfp: Gfp, n: usize) -> usize {
    let mut arr = vec![None; n];
    let got = m.pages().alloc_pages_bulk(gfp, &mut arr);
    let filled: Vec<Pfn> = arr.iter().flatten().copied().collect();
    assert_eq!(
        got,
        filled.len(),
        "bulk returns the number of filled entries"
    );
    // It stops at the first failure: filled entries form a prefix.
    assert!(arr[..got].iter().all(Option::is_some));
    for p in filled {
        sh.add_pages(m, gfp, p, 0, How::Pages);
    }
    got
}

/// `split_page` of a live, non-compound `alloc_pages` block of order > 0;
/// frees the pieces `free_piece` selects and keeps the rest as order-0
/// blocks. A compound block must be refused.
#[track_caller]
pub fn split_into(m: &Machine, sh: &mut Shadow, pfn: u64, mut free_piece: impl FnMut(u64) -> bool) {
    let b = sh.live[&pfn];
    assert!(matches!(b.how, How::Pages | How::Addr) && b.order > 0);
    let r = m.pages().split_page(Pfn(pfn), b.order);
    if b.compound {
        assert_eq!(r, Err(FreeError::Compound { pfn: Pfn(pfn) }));
        // Reported (and counted) like a bad free.
        let log = m.platform().take_log();
        let want = FreeError::Compound { pfn: Pfn(pfn) }.to_string();
        assert_eq!(log.last(), Some(&want), "the refusal is reported");
        sh.refused_splits += 1;
        return;
    }
    r.unwrap_or_else(|e| panic!("split_page of live {b:?} failed: {e}"));
    let b = sh.take_keep(m, pfn);
    for i in 0..b.pages {
        let p = b.pfn + i;
        assert_eq!(m.pages().allocation_order(Pfn(p)), Some(0));
        let piece = Block {
            pfn: p,
            pages: 1,
            order: 0,
            how: How::Pages,
            compound: false,
            seed: b.seed,
        };
        sh.live.insert(p, piece);
        sh.live_pages += 1;
        if free_piece(i) {
            sh.free(m, p);
        }
    }
}

impl Shadow {
    /// Removes a block from the model without touching its memory (its tags
    /// stay, for pieces that inherit the seed).
    fn take_keep(&mut self, m: &Machine, pfn: u64) -> Block {
        let b = self.live.remove(&pfn).expect("live block");
        self.live_pages -= b.pages;
        check_tags(m, &b);
        b
    }
}

/// A random operation on the model, drawn from `rng`: mostly allocations
/// and frees of every kind, while keeping at most `max_live` pages live.
/// Every result is checked against the model.
#[track_caller]
pub fn random_op(m: &Machine, sh: &mut Shadow, rng: &mut SeqRng, max_live: u64) {
    let (_, mask) = MASKS[rng.below(MASKS.len() as u64) as usize];
    let mut gfp = mask;
    if rng.chance(20) {
        gfp |= Gfp::ZERO;
    }
    let order = match rng.below(10) {
        0..=5 => rng.below(4) as u32,
        6..=8 => rng.below(7) as u32,
        _ => rng.below(11) as u32,
    };
    let kind = rng.below(10);
    if sh.live_pages + (1 << order) > max_live || (kind >= 6 && !sh.live.is_empty()) {
        let b = sh.nth(rng.next() as usize).unwrap();
        if b.order > 0 && matches!(b.how, How::Pages) && rng.chance(30) {
            split_into(m, sh, b.pfn, |i| i % 2 == 0);
        } else {
            sh.free(m, b.pfn);
        }
        return;
    }
    // Non-blocking masks are what interrupt handlers use: run them there.
    let irq_guard = (!gfp.allows_blocking()).then(kmem_host::irq);
    let size = 1 + rng.below(20 * PAGE_SIZE as u64) as usize;
    let r = match kind {
        0 => alloc_exact_into(m, sh, gfp, size),
        1 => alloc_into(m, sh, gfp, order, true),
        2 => Ok(alloc_bulk_into(m, sh, gfp, 1 + rng.below(8) as usize) as u64),
        _ => {
            if rng.chance(30) {
                gfp |= Gfp::COMP;
            }
            alloc_into(m, sh, gfp, order, false)
        }
    };
    drop(irq_guard);
    if let Err(e) = r {
        let order = if kind == 0 { get_order(size) } else { order };
        assert_acceptable_failure(&e, gfp, order);
    }
}

/// Implements `kmem::platform::Platform` for a newtype around
/// `kmem_host::HostPlatform` (field `.0`) that delegates everything but its
/// lock type and `phys_to_virt`, which the test gives: the tests that need
/// a hook at one platform call (a lock taken, a table looked up) write only
/// that.
///
/// ```ignore
/// host_platform_wrapper!(MyPlat, Lock = MyLock, phys_to_virt(this, pa) => this.0.phys_to_virt(pa));
/// ```
#[macro_export]
macro_rules! host_platform_wrapper {
    ($ty:ty, Lock = $lock:ty, phys_to_virt($this:ident, $pa:ident) => $body:expr) => {
        impl kmem::platform::Platform for $ty {
            type Lock = $lock;
            fn direct_map_offset(&self) -> usize {
                self.0.direct_map_offset()
            }
            fn cpu_id(&self) -> usize {
                self.0.cpu_id()
            }
            fn nr_cpus(&self) -> usize {
                self.0.nr_cpus()
            }
            fn cpu_exclusive(&self) -> bool {
                self.0.cpu_exclusive()
            }
            fn this_cpu(&self) -> (usize, bool) {
                self.0.this_cpu()
            }
            fn cpu_has_exclusive(&self, cpu: usize) -> bool {
                self.0.cpu_has_exclusive(cpu)
            }
            fn cpu_barrier(&self) {
                self.0.cpu_barrier()
            }
            fn context(&self) -> kmem::context::ExecContext {
                self.0.context()
            }
            fn in_atomic(&self) -> bool {
                self.0.in_atomic()
            }
            fn set_memalloc(&self, on: bool) -> bool {
                self.0.set_memalloc(on)
            }
            fn in_memalloc(&self) -> bool {
                self.0.in_memalloc()
            }
            fn relax(&self) {
                self.0.relax()
            }
            fn warn(&self, msg: core::fmt::Arguments<'_>) {
                self.0.warn(msg)
            }
            fn phys_to_virt(&self, $pa: kmem::addr::PhysAddr) -> kmem::addr::VirtAddr {
                let $this = self;
                $body
            }
        }
    };
}
