//! GFP flags: what an allocation may do, and where its memory may come from.
//!
//! Every kmem entry point (page allocator, kmalloc, vmalloc, DMA) takes a [`Gfp`] mask, exactly as
//! Linux's `gfp_t`. The bits say three things:
//!
//! - **which zone** the memory must come from (`__GFP_DMA`, `__GFP_DMA32`, else Normal):
//!   [`Gfp::zone_type`];
//! - **which free lists** (mobility) the pages belong to (`__GFP_MOVABLE`, `__GFP_RECLAIMABLE`):
//!   [`Gfp::migratetype`];
//! - **how hard to try**: may the caller sleep and reclaim (`__GFP_DIRECT_RECLAIM`, see
//!   [`Gfp::allows_blocking`]), wake kswapd, dip into reserves (`__GFP_HIGH`, `__GFP_MEMALLOC`),
//!   retry, fail, warn, zero the memory, charge it to a memory cgroup, …
//!
//! An entry point calls [`Gfp::validate`] once (a handful of bit tests), then the page allocator
//! uses `zone_type()` and `migratetype()` to pick a zone and a free list, and the slow path reads
//! the action bits. The context check (may this caller block at all?) lives in `context.rs`.
//!
//! The bit values are Linux's (`include/linux/gfp_types.h`) with every optional flag present, so
//! `GFP_KERNEL` is `0xcc0` as in any kernel oops. The composite masks ([`GFP_KERNEL`],
//! [`GFP_ATOMIC`], …) have Linux 6.18's definitions, built as on x86-64 with KASAN off (so
//! `__GFP_SKIP_KASAN` is not part of [`GFP_HIGHUSER_MOVABLE`]).
//!
//! `Display`, `Debug` and `FromStr` use the spelling of Linux's trace events
//! (`show_gfp_flags()` in `include/trace/events/mmflags.h`): a fixed table of names, composite masks
//! first, is walked in order; every entry whose bits are all still set is printed and its bits
//! cleared; names are joined with `|`, leftover bits follow as hex (`0x200`), and an empty mask is
//! `none`. So `"GFP_KERNEL|__GFP_ZERO".parse::<Gfp>()` and back gives the same text, which is what
//! trace replay needs. Raw hex leftovers are only meaningful for this bit layout: a kernel built
//! without some optional flags numbers the high bits differently (names are portable, numbers not).

use core::fmt;
use core::str::FromStr;

bitflags::bitflags! {
    /// A GFP ("get free pages") mask: Linux's `gfp_t`, one bit per allocation modifier.
    ///
    /// Build masks from the composite constants ([`GFP_KERNEL`], [`GFP_ATOMIC`], …) plus single
    /// flags, e.g. `GFP_KERNEL | Gfp::ZERO`. Printing gives Linux's trace spelling
    /// (`GFP_KERNEL|__GFP_ZERO`) and parsing accepts it back.
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Gfp: u32 {
        /// Allocate from ZONE_DMA (below 16 MiB).
        const DMA = 1 << 0;
        /// May use highmem; on x86-64 there is none, so this means ZONE_NORMAL.
        const HIGHMEM = 1 << 1;
        /// Allocate from ZONE_DMA32 (below 4 GiB).
        const DMA32 = 1 << 2;
        /// The pages can be migrated (user pages, page cache): movable free lists.
        const MOVABLE = 1 << 3;
        /// The pages can be reclaimed by a shrinker (slab caches such as dentries): reclaimable
        /// free lists.
        const RECLAIMABLE = 1 << 4;
        /// High priority: may use part of the min-watermark reserve.
        const HIGH = 1 << 5;
        /// May start physical I/O during reclaim.
        const IO = 1 << 6;
        /// May call into the file system during reclaim.
        const FS = 1 << 7;
        /// Return zeroed memory.
        const ZERO = 1 << 8;
        // Bit 9 (0x200) is unused, as in Linux.
        /// May enter direct reclaim, i.e. may sleep.
        const DIRECT_RECLAIM = 1 << 10;
        /// May wake kswapd when a low watermark is reached.
        const KSWAPD_RECLAIM = 1 << 11;
        /// The caller intends to dirty the page (page-cache write): spread dirty pages over zones.
        const WRITE = 1 << 12;
        /// Do not print an allocation-failure warning.
        const NOWARN = 1 << 13;
        /// Retry hard (reclaim, compaction) but fail rather than invoke the OOM killer.
        const RETRY_MAYFAIL = 1 << 14;
        /// Never fail: retry forever. Needs `DIRECT_RECLAIM`.
        const NOFAIL = 1 << 15;
        /// Give up after one light round of reclaim and compaction; never OOM-kill.
        const NORETRY = 1 << 16;
        /// Ignore watermarks entirely (the memory-freeing path itself is allocating).
        const MEMALLOC = 1 << 17;
        /// Make a compound page (one head page describing the whole higher-order block).
        const COMP = 1 << 18;
        /// Never use the memalloc reserves, overriding `MEMALLOC` and task flags.
        const NOMEMALLOC = 1 << 19;
        /// Enforce the cpuset's memory placement (hard wall).
        const HARDWALL = 1 << 20;
        /// Allocate on the requested node only, no fallback.
        const THISNODE = 1 << 21;
        /// Charge the allocation to the current memory cgroup.
        const ACCOUNT = 1 << 22;
        /// With `ZERO`, also zero the memory tags (arm64 MTE).
        const ZEROTAGS = 1 << 23;
        /// Skip zeroing on allocation (KASAN hardware tags only).
        const SKIP_ZERO = 1 << 24;
        /// Skip KASAN poisoning/unpoisoning (KASAN hardware tags only).
        const SKIP_KASAN = 1 << 25;
        /// Do not track this allocation in lockdep's reclaim tracking.
        const NOLOCKDEP = 1 << 26;
        /// Do not allocate slab object extension vectors for this allocation.
        const NO_OBJ_EXT = 1 << 27;
        /// Both reclaim modes: `DIRECT_RECLAIM | KSWAPD_RECLAIM` (Linux's `__GFP_RECLAIM`).
        const RECLAIM = Self::DIRECT_RECLAIM.bits() | Self::KSWAPD_RECLAIM.bits();
    }
}

// ---------------------------------------------------------------------------------------------
// Single-flag aliases, spelled as in Linux.
// ---------------------------------------------------------------------------------------------

/// Linux's `__GFP_DMA`: [`Gfp::DMA`].
pub const __GFP_DMA: Gfp = Gfp::DMA;
/// Linux's `__GFP_HIGHMEM`: [`Gfp::HIGHMEM`].
pub const __GFP_HIGHMEM: Gfp = Gfp::HIGHMEM;
/// Linux's `__GFP_DMA32`: [`Gfp::DMA32`].
pub const __GFP_DMA32: Gfp = Gfp::DMA32;
/// Linux's `__GFP_MOVABLE`: [`Gfp::MOVABLE`].
pub const __GFP_MOVABLE: Gfp = Gfp::MOVABLE;
/// Linux's `__GFP_RECLAIMABLE`: [`Gfp::RECLAIMABLE`].
pub const __GFP_RECLAIMABLE: Gfp = Gfp::RECLAIMABLE;
/// Linux's `__GFP_HIGH`: [`Gfp::HIGH`].
pub const __GFP_HIGH: Gfp = Gfp::HIGH;
/// Linux's `__GFP_IO`: [`Gfp::IO`].
pub const __GFP_IO: Gfp = Gfp::IO;
/// Linux's `__GFP_FS`: [`Gfp::FS`].
pub const __GFP_FS: Gfp = Gfp::FS;
/// Linux's `__GFP_ZERO`: [`Gfp::ZERO`].
pub const __GFP_ZERO: Gfp = Gfp::ZERO;
/// Linux's `__GFP_DIRECT_RECLAIM`: [`Gfp::DIRECT_RECLAIM`].
pub const __GFP_DIRECT_RECLAIM: Gfp = Gfp::DIRECT_RECLAIM;
/// Linux's `__GFP_KSWAPD_RECLAIM`: [`Gfp::KSWAPD_RECLAIM`].
pub const __GFP_KSWAPD_RECLAIM: Gfp = Gfp::KSWAPD_RECLAIM;
/// Linux's `__GFP_WRITE`: [`Gfp::WRITE`].
pub const __GFP_WRITE: Gfp = Gfp::WRITE;
/// Linux's `__GFP_NOWARN`: [`Gfp::NOWARN`].
pub const __GFP_NOWARN: Gfp = Gfp::NOWARN;
/// Linux's `__GFP_RETRY_MAYFAIL`: [`Gfp::RETRY_MAYFAIL`].
pub const __GFP_RETRY_MAYFAIL: Gfp = Gfp::RETRY_MAYFAIL;
/// Linux's `__GFP_NOFAIL`: [`Gfp::NOFAIL`].
pub const __GFP_NOFAIL: Gfp = Gfp::NOFAIL;
/// Linux's `__GFP_NORETRY`: [`Gfp::NORETRY`].
pub const __GFP_NORETRY: Gfp = Gfp::NORETRY;
/// Linux's `__GFP_MEMALLOC`: [`Gfp::MEMALLOC`].
pub const __GFP_MEMALLOC: Gfp = Gfp::MEMALLOC;
/// Linux's `__GFP_COMP`: [`Gfp::COMP`].
pub const __GFP_COMP: Gfp = Gfp::COMP;
/// Linux's `__GFP_NOMEMALLOC`: [`Gfp::NOMEMALLOC`].
pub const __GFP_NOMEMALLOC: Gfp = Gfp::NOMEMALLOC;
/// Linux's `__GFP_HARDWALL`: [`Gfp::HARDWALL`].
pub const __GFP_HARDWALL: Gfp = Gfp::HARDWALL;
/// Linux's `__GFP_THISNODE`: [`Gfp::THISNODE`].
pub const __GFP_THISNODE: Gfp = Gfp::THISNODE;
/// Linux's `__GFP_ACCOUNT`: [`Gfp::ACCOUNT`].
pub const __GFP_ACCOUNT: Gfp = Gfp::ACCOUNT;
/// Linux's `__GFP_ZEROTAGS`: [`Gfp::ZEROTAGS`].
pub const __GFP_ZEROTAGS: Gfp = Gfp::ZEROTAGS;
/// Linux's `__GFP_SKIP_ZERO`: [`Gfp::SKIP_ZERO`].
pub const __GFP_SKIP_ZERO: Gfp = Gfp::SKIP_ZERO;
/// Linux's `__GFP_SKIP_KASAN`: [`Gfp::SKIP_KASAN`].
pub const __GFP_SKIP_KASAN: Gfp = Gfp::SKIP_KASAN;
/// Linux's `__GFP_NOLOCKDEP`: [`Gfp::NOLOCKDEP`].
pub const __GFP_NOLOCKDEP: Gfp = Gfp::NOLOCKDEP;
/// Linux's `__GFP_NO_OBJ_EXT`: [`Gfp::NO_OBJ_EXT`].
pub const __GFP_NO_OBJ_EXT: Gfp = Gfp::NO_OBJ_EXT;
/// Linux's `__GFP_RECLAIM`: [`Gfp::RECLAIM`] (direct and kswapd reclaim).
pub const __GFP_RECLAIM: Gfp = Gfp::RECLAIM;

// ---------------------------------------------------------------------------------------------
// Composite masks (Linux 6.18, x86-64, KASAN off).
// ---------------------------------------------------------------------------------------------

/// Ordinary kernel allocation: may sleep, reclaim, start I/O and call into file systems
/// (`__GFP_RECLAIM | __GFP_IO | __GFP_FS`, `0xcc0`). Process context only.
pub const GFP_KERNEL: Gfp = Gfp::RECLAIM.union(Gfp::IO).union(Gfp::FS);
/// [`GFP_KERNEL`] charged to the caller's memory cgroup (`GFP_KERNEL | __GFP_ACCOUNT`).
pub const GFP_KERNEL_ACCOUNT: Gfp = GFP_KERNEL.union(Gfp::ACCOUNT);
/// Cannot sleep, must succeed if at all possible: may use part of the reserves and wakes kswapd
/// (`__GFP_HIGH | __GFP_KSWAPD_RECLAIM`, `0x820`). For interrupt handlers and spinlocked sections.
pub const GFP_ATOMIC: Gfp = Gfp::HIGH.union(Gfp::KSWAPD_RECLAIM);
/// Cannot sleep, no reserves, no failure warning: an opportunistic attempt
/// (`__GFP_KSWAPD_RECLAIM | __GFP_NOWARN`, `0x2800`; Linux 6.18 added `__GFP_NOWARN`).
pub const GFP_NOWAIT: Gfp = Gfp::KSWAPD_RECLAIM.union(Gfp::NOWARN);
/// May sleep and reclaim but not start I/O (`__GFP_RECLAIM`, `0xc00`). Block-layer paths.
pub const GFP_NOIO: Gfp = Gfp::RECLAIM;
/// May sleep, reclaim and do I/O but not recurse into file systems (`__GFP_RECLAIM | __GFP_IO`,
/// `0xc40`). File-system paths.
pub const GFP_NOFS: Gfp = Gfp::RECLAIM.union(Gfp::IO);
/// Memory handed to user space, confined to the cpuset
/// (`__GFP_RECLAIM | __GFP_IO | __GFP_FS | __GFP_HARDWALL`, `0x100cc0`).
pub const GFP_USER: Gfp = GFP_KERNEL.union(Gfp::HARDWALL);
/// ZONE_DMA memory (`__GFP_DMA`).
pub const GFP_DMA: Gfp = Gfp::DMA;
/// ZONE_DMA32 memory (`__GFP_DMA32`).
pub const GFP_DMA32: Gfp = Gfp::DMA32;
/// User memory that may live in highmem (`GFP_USER | __GFP_HIGHMEM`).
pub const GFP_HIGHUSER: Gfp = GFP_USER.union(Gfp::HIGHMEM);
/// Movable user memory: anonymous pages, page cache (`GFP_HIGHUSER | __GFP_MOVABLE`, `0x100cca`;
/// Linux adds `__GFP_SKIP_KASAN`, which is 0 with KASAN off).
pub const GFP_HIGHUSER_MOVABLE: Gfp = GFP_HIGHUSER.union(Gfp::MOVABLE);
/// Opportunistic transparent-huge-page allocation: no reclaim at all, no reserves, no warning
/// (`(GFP_HIGHUSER_MOVABLE | __GFP_COMP | __GFP_NOMEMALLOC | __GFP_NOWARN) & !__GFP_RECLAIM`).
pub const GFP_TRANSHUGE_LIGHT: Gfp = GFP_HIGHUSER_MOVABLE
    .union(Gfp::COMP)
    .union(Gfp::NOMEMALLOC)
    .union(Gfp::NOWARN)
    .difference(Gfp::RECLAIM);
/// Transparent-huge-page allocation that may direct-reclaim and compact
/// (`GFP_TRANSHUGE_LIGHT | __GFP_DIRECT_RECLAIM`).
pub const GFP_TRANSHUGE: Gfp = GFP_TRANSHUGE_LIGHT.union(Gfp::DIRECT_RECLAIM);

/// The trace-spelling table, in the order Linux's `__def_gfpflag_names` walks it: composite
/// masks (most bits first), then `__GFP_RECLAIM`, then every single flag in bit order.
const TRACE_NAMES: [(&str, Gfp); 41] = [
    ("GFP_TRANSHUGE", GFP_TRANSHUGE),
    ("GFP_TRANSHUGE_LIGHT", GFP_TRANSHUGE_LIGHT),
    ("GFP_HIGHUSER_MOVABLE", GFP_HIGHUSER_MOVABLE),
    ("GFP_HIGHUSER", GFP_HIGHUSER),
    ("GFP_USER", GFP_USER),
    ("GFP_KERNEL_ACCOUNT", GFP_KERNEL_ACCOUNT),
    ("GFP_KERNEL", GFP_KERNEL),
    ("GFP_NOFS", GFP_NOFS),
    ("GFP_ATOMIC", GFP_ATOMIC),
    ("GFP_NOIO", GFP_NOIO),
    ("GFP_NOWAIT", GFP_NOWAIT),
    ("GFP_DMA", GFP_DMA),
    ("GFP_DMA32", GFP_DMA32),
    ("__GFP_RECLAIM", Gfp::RECLAIM),
    ("__GFP_DMA", Gfp::DMA),
    ("__GFP_HIGHMEM", Gfp::HIGHMEM),
    ("__GFP_DMA32", Gfp::DMA32),
    ("__GFP_MOVABLE", Gfp::MOVABLE),
    ("__GFP_RECLAIMABLE", Gfp::RECLAIMABLE),
    ("__GFP_HIGH", Gfp::HIGH),
    ("__GFP_IO", Gfp::IO),
    ("__GFP_FS", Gfp::FS),
    ("__GFP_ZERO", Gfp::ZERO),
    ("__GFP_DIRECT_RECLAIM", Gfp::DIRECT_RECLAIM),
    ("__GFP_KSWAPD_RECLAIM", Gfp::KSWAPD_RECLAIM),
    ("__GFP_WRITE", Gfp::WRITE),
    ("__GFP_NOWARN", Gfp::NOWARN),
    ("__GFP_RETRY_MAYFAIL", Gfp::RETRY_MAYFAIL),
    ("__GFP_NOFAIL", Gfp::NOFAIL),
    ("__GFP_NORETRY", Gfp::NORETRY),
    ("__GFP_MEMALLOC", Gfp::MEMALLOC),
    ("__GFP_COMP", Gfp::COMP),
    ("__GFP_NOMEMALLOC", Gfp::NOMEMALLOC),
    ("__GFP_HARDWALL", Gfp::HARDWALL),
    ("__GFP_THISNODE", Gfp::THISNODE),
    ("__GFP_ACCOUNT", Gfp::ACCOUNT),
    ("__GFP_ZEROTAGS", Gfp::ZEROTAGS),
    ("__GFP_SKIP_ZERO", Gfp::SKIP_ZERO),
    ("__GFP_SKIP_KASAN", Gfp::SKIP_KASAN),
    ("__GFP_NOLOCKDEP", Gfp::NOLOCKDEP),
    ("__GFP_NO_OBJ_EXT", Gfp::NO_OBJ_EXT),
];

// Raw bit values used by the zone and validity checks.
const B_DMA: u32 = Gfp::DMA.bits();
const B_HIGHMEM: u32 = Gfp::HIGHMEM.bits();
const B_DMA32: u32 = Gfp::DMA32.bits();
const B_MOVABLE: u32 = Gfp::MOVABLE.bits();
const B_RECLAIMABLE: u32 = Gfp::RECLAIMABLE.bits();
/// The zone modifiers that select a zone (Linux's `GFP_ZONEMASK` minus `__GFP_MOVABLE`, which on
/// this configuration never changes the zone nor makes a mask invalid by itself).
const ZONE_SELECT: u32 = B_DMA | B_HIGHMEM | B_DMA32;
/// Linux's `GFP_MOVABLE_MASK`.
const MOBILITY_MASK: u32 = B_MOVABLE | B_RECLAIMABLE;
/// Every defined bit.
const KNOWN_BITS: u32 = Gfp::all().bits();

// ---------------------------------------------------------------------------------------------
// Zones and migrate types.
// ---------------------------------------------------------------------------------------------

/// Zone types, lowest first.
///
/// x86-64 without highmem; ZONE_MOVABLE is not modelled (Linux leaves it empty unless
/// `movablecore=`/`kernelcore=` is given, and movable allocations then fall back to Normal).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ZoneType {
    /// ZONE_DMA: physical memory below 16 MiB, for ISA-era devices.
    Dma = 0,
    /// ZONE_DMA32: physical memory below 4 GiB, for 32-bit DMA devices.
    Dma32 = 1,
    /// ZONE_NORMAL: everything else.
    Normal = 2,
}

impl ZoneType {
    /// Every zone type, lowest first (index order).
    pub const ALL: [ZoneType; 3] = [ZoneType::Dma, ZoneType::Dma32, ZoneType::Normal];

    /// The zone's name as `/proc/zoneinfo` and `/proc/buddyinfo` print it: `DMA`, `DMA32`,
    /// `Normal`.
    pub const fn name(self) -> &'static str {
        match self {
            ZoneType::Dma => "DMA",
            ZoneType::Dma32 => "DMA32",
            ZoneType::Normal => "Normal",
        }
    }

    /// The zone's index (0 for DMA), usable to index per-zone arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The zone type with index `i`, if there is one.
    pub const fn from_index(i: usize) -> Option<Self> {
        match i {
            0 => Some(ZoneType::Dma),
            1 => Some(ZoneType::Dma32),
            2 => Some(ZoneType::Normal),
            _ => None,
        }
    }

    /// The first physical address above the zone: 16 MiB for DMA, 4 GiB for DMA32, and
    /// `u64::MAX` (no limit) for Normal.
    pub const fn limit(self) -> u64 {
        match self {
            ZoneType::Dma => 16 << 20,
            ZoneType::Dma32 => 4 << 30,
            ZoneType::Normal => u64::MAX,
        }
    }
}

/// Mobility of an allocation; free lists and pageblocks are grouped by it.
///
/// The first [`MigrateType::PCPTYPES`] types are the ones an allocation can ask for through its
/// GFP mask, and the ones the per-CPU page lists keep apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MigrateType {
    /// Pages that stay where they are (most kernel allocations).
    Unmovable = 0,
    /// Pages that can be migrated (user memory, page cache).
    Movable = 1,
    /// Pages that can be freed on demand (shrinkable slab caches).
    Reclaimable = 2,
    /// Pageblocks reserved for high-order atomic allocations.
    HighAtomic = 3,
    /// Pageblocks being isolated (memory offline, contiguous allocation); never allocated from.
    Isolate = 4,
}

impl MigrateType {
    /// How many migrate types the per-CPU page lists keep (Unmovable, Movable, Reclaimable).
    pub const PCPTYPES: usize = 3;

    /// Every migrate type, in index order.
    pub const ALL: [MigrateType; 5] = [
        MigrateType::Unmovable,
        MigrateType::Movable,
        MigrateType::Reclaimable,
        MigrateType::HighAtomic,
        MigrateType::Isolate,
    ];

    /// The name `/proc/pagetypeinfo` prints: `Unmovable`, `Movable`, `Reclaimable`, `HighAtomic`,
    /// `Isolate`.
    pub const fn name(self) -> &'static str {
        match self {
            MigrateType::Unmovable => "Unmovable",
            MigrateType::Movable => "Movable",
            MigrateType::Reclaimable => "Reclaimable",
            MigrateType::HighAtomic => "HighAtomic",
            MigrateType::Isolate => "Isolate",
        }
    }

    /// The type's index, usable to index per-migrate-type arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The migrate type with index `i`, if there is one.
    pub const fn from_index(i: usize) -> Option<Self> {
        match i {
            0 => Some(MigrateType::Unmovable),
            1 => Some(MigrateType::Movable),
            2 => Some(MigrateType::Reclaimable),
            3 => Some(MigrateType::HighAtomic),
            4 => Some(MigrateType::Isolate),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validity and meaning.
// ---------------------------------------------------------------------------------------------

/// Why a GFP mask is invalid. Each variant carries the offending mask (or bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GfpError {
    /// Two or more of `__GFP_DMA`, `__GFP_DMA32` and `__GFP_HIGHMEM` are set: they select
    /// different zones (Linux's `GFP_ZONE_BAD`).
    BadZone(Gfp),
    /// Both `__GFP_MOVABLE` and `__GFP_RECLAIMABLE` are set: an allocation has one mobility.
    MovableAndReclaimable(Gfp),
    /// Bits that name no flag (bit 9, bits 28 and up).
    UnknownBits(u32),
}

impl fmt::Display for GfpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            GfpError::BadZone(gfp) => {
                write!(f, "invalid GFP mask {gfp}: ")?;
                let mut first = true;
                let zone_flags = [
                    (B_DMA, "__GFP_DMA"),
                    (B_DMA32, "__GFP_DMA32"),
                    (B_HIGHMEM, "__GFP_HIGHMEM"),
                ];
                let count = (gfp.bits() & ZONE_SELECT).count_ones();
                let mut seen = 0;
                for (bit, name) in zone_flags {
                    if gfp.bits() & bit == 0 {
                        continue;
                    }
                    seen += 1;
                    if !first {
                        f.write_str(if seen == count { " and " } else { ", " })?;
                    }
                    first = false;
                    f.write_str(name)?;
                }
                f.write_str(" select different zones")
            }
            GfpError::MovableAndReclaimable(gfp) => write!(
                f,
                "invalid GFP mask {gfp}: __GFP_MOVABLE and __GFP_RECLAIMABLE select different \
                 migrate types"
            ),
            GfpError::UnknownBits(bits) => {
                write!(f, "invalid GFP mask: unknown bits {bits:#x}")
            }
        }
    }
}

impl core::error::Error for GfpError {}

impl Gfp {
    /// May this allocation sleep? True iff `__GFP_DIRECT_RECLAIM` is set (Linux's
    /// `gfpflags_allow_blocking()`).
    #[inline]
    pub const fn allows_blocking(self) -> bool {
        self.bits() & Gfp::DIRECT_RECLAIM.bits() != 0
    }

    /// The zone this mask allocates from (Linux's `gfp_zone()` on x86-64): `__GFP_DMA` gives
    /// [`ZoneType::Dma`], `__GFP_DMA32` gives [`ZoneType::Dma32`], anything else (including
    /// `__GFP_HIGHMEM` and `__GFP_MOVABLE`) gives [`ZoneType::Normal`]. `__GFP_MOVABLE` combined
    /// with a DMA flag keeps the DMA zone.
    ///
    /// # Errors
    ///
    /// [`GfpError::BadZone`] when two zone selectors are set at once.
    #[inline]
    pub fn zone_type(self) -> Result<ZoneType, GfpError> {
        match self.bits() & ZONE_SELECT {
            0 | B_HIGHMEM => Ok(ZoneType::Normal),
            B_DMA => Ok(ZoneType::Dma),
            B_DMA32 => Ok(ZoneType::Dma32),
            _ => Err(GfpError::BadZone(self)),
        }
    }

    /// The free lists this allocation takes pages from (Linux's `gfp_migratetype()`):
    /// `__GFP_MOVABLE` gives [`MigrateType::Movable`], `__GFP_RECLAIMABLE`
    /// [`MigrateType::Reclaimable`], neither [`MigrateType::Unmovable`]. The invalid mask with
    /// both (rejected by [`Gfp::validate`]) gives `Unmovable`, the type that is safe for any page.
    #[inline]
    pub const fn migratetype(self) -> MigrateType {
        match self.bits() & MOBILITY_MASK {
            B_MOVABLE => MigrateType::Movable,
            B_RECLAIMABLE => MigrateType::Reclaimable,
            _ => MigrateType::Unmovable,
        }
    }

    /// Checks the mask against Linux's rules, in this order: no unknown bits, at most one zone
    /// selector, at most one mobility. Cheap (a few bit tests): it runs on every allocation.
    /// (`__GFP_NOFAIL` with `__GFP_NORETRY` or without `__GFP_DIRECT_RECLAIM` is served, as
    /// Linux serves it: the page allocator warns once if such a request runs out of memory.)
    ///
    /// # Errors
    ///
    /// The first rule broken, as a [`GfpError`] carrying the mask.
    #[inline]
    pub fn validate(self) -> Result<(), GfpError> {
        let b = self.bits();
        if b & !KNOWN_BITS != 0 {
            return Err(GfpError::UnknownBits(b & !KNOWN_BITS));
        }
        let zone = b & ZONE_SELECT;
        if zone & zone.wrapping_sub(1) != 0 {
            return Err(GfpError::BadZone(self));
        }
        if b & MOBILITY_MASK == MOBILITY_MASK {
            return Err(GfpError::MovableAndReclaimable(self));
        }
        Ok(())
    }

    /// The raw bits (the same as `bits()`).
    #[inline]
    pub const fn bits_u32(self) -> u32 {
        self.bits()
    }

    /// Writes the trace spelling (see the module documentation) to `w`.
    fn write_trace<W: fmt::Write + ?Sized>(self, w: &mut W) -> fmt::Result {
        let mut rest = self.bits();
        if rest == 0 {
            return w.write_str("none");
        }
        let mut first = true;
        for (name, mask) in TRACE_NAMES {
            if rest == 0 {
                break;
            }
            // Linux's trace table has no name for it in any configuration:
            // a trace shows the bit in hex (the name still parses).
            if mask == Gfp::NO_OBJ_EXT {
                continue;
            }
            let mask = mask.bits();
            if rest & mask == mask {
                if !first {
                    w.write_char('|')?;
                }
                first = false;
                w.write_str(name)?;
                rest &= !mask;
            }
        }
        if rest != 0 {
            if !first {
                w.write_char('|')?;
            }
            write!(w, "{rest:#x}")?;
        }
        Ok(())
    }
}

/// A fixed-capacity text buffer, so padded `Display` needs no heap.
struct StackStr {
    buf: [u8; 1024],
    len: usize,
}

impl fmt::Write for StackStr {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Prints Linux's trace spelling, e.g. `GFP_KERNEL|__GFP_ZERO`, `GFP_ATOMIC|0x200`, `none`.
/// Width, fill and alignment are honoured.
impl fmt::Display for Gfp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.width().is_none() {
            return self.write_trace(f);
        }
        let mut s = StackStr {
            buf: [0; 1024],
            len: 0,
        };
        // Every possible spelling fits (all 32 bits set is well under 1 KiB).
        self.write_trace(&mut s)?;
        match core::str::from_utf8(&s.buf[..s.len]) {
            Ok(text) => f.pad(text),
            Err(_) => Err(fmt::Error),
        }
    }
}

/// The same trace spelling as `Display`.
impl fmt::Debug for Gfp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing.
// ---------------------------------------------------------------------------------------------

/// What was wrong with a token of a GFP spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GfpParseErrorKind {
    /// The token is not a name in the trace table, `none`, `0` or a hex number.
    UnknownFlag,
    /// The token is empty (empty input, `||`, or a trailing `|`).
    Empty,
    /// The token starts with `0x` but is not a hex number that fits in 32 bits.
    BadNumber,
}

/// Longest token text a [`GfpParseError`] keeps (longer tokens are cut, marked with `…`).
const TOKEN_CAP: usize = 48;

/// A GFP spelling that does not parse: which token, and at which byte offset of the input.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct GfpParseError {
    kind: GfpParseErrorKind,
    offset: usize,
    token: [u8; TOKEN_CAP],
    token_len: u8,
    truncated: bool,
}

impl GfpParseError {
    fn new(kind: GfpParseErrorKind, token: &str, offset: usize) -> Self {
        let mut len = token.len().min(TOKEN_CAP);
        while !token.is_char_boundary(len) {
            len -= 1;
        }
        let mut buf = [0u8; TOKEN_CAP];
        buf[..len].copy_from_slice(&token.as_bytes()[..len]);
        GfpParseError {
            kind,
            offset,
            token: buf,
            token_len: len as u8,
            truncated: len < token.len(),
        }
    }

    /// What was wrong with the token.
    pub const fn kind(&self) -> GfpParseErrorKind {
        self.kind
    }

    /// Byte offset of the bad token in the input (after leading whitespace is skipped).
    pub const fn offset(&self) -> usize {
        self.offset
    }

    /// The bad token, whitespace-trimmed; cut to its first 48 bytes if longer.
    pub fn token(&self) -> &str {
        // The bytes were copied from a `&str` and cut at a char boundary.
        core::str::from_utf8(&self.token[..usize::from(self.token_len)]).unwrap_or("")
    }
}

impl fmt::Debug for GfpParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GfpParseError")
            .field("kind", &self.kind)
            .field("token", &self.token())
            .field("truncated", &self.truncated)
            .field("offset", &self.offset)
            .finish()
    }
}

impl fmt::Display for GfpParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let more = if self.truncated { "…" } else { "" };
        match self.kind {
            GfpParseErrorKind::UnknownFlag => write!(
                f,
                "unknown GFP flag `{}{more}` at byte {}",
                self.token(),
                self.offset
            ),
            GfpParseErrorKind::Empty => write!(f, "empty GFP flag at byte {}", self.offset),
            GfpParseErrorKind::BadNumber => write!(
                f,
                "invalid GFP number `{}{more}` at byte {} (expected 0x and up to 8 hex digits)",
                self.token(),
                self.offset
            ),
        }
    }
}

impl core::error::Error for GfpParseError {}

/// The bits one trimmed token stands for.
fn parse_token(tok: &str) -> Result<u32, GfpParseErrorKind> {
    if tok.is_empty() {
        return Err(GfpParseErrorKind::Empty);
    }
    if tok == "none" || tok == "0" {
        return Ok(0);
    }
    if let Some(hex) = tok.strip_prefix("0x").or_else(|| tok.strip_prefix("0X")) {
        // `from_str_radix` would also take a sign; only plain hex digits are accepted.
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(GfpParseErrorKind::BadNumber);
        }
        return u32::from_str_radix(hex, 16).map_err(|_| GfpParseErrorKind::BadNumber);
    }
    TRACE_NAMES
        .iter()
        .find(|(name, _)| *name == tok)
        .map(|(_, gfp)| gfp.bits())
        .ok_or(GfpParseErrorKind::UnknownFlag)
}

/// Parses the trace spelling: names of the trace table (`GFP_KERNEL`, `__GFP_ZERO`, …), `none`,
/// `0` or hex numbers (`0x200`), separated by `|`, with optional whitespace around each token.
/// Bits that name no flag are kept (see [`Gfp::validate`]).
impl FromStr for Gfp {
    type Err = GfpParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bits = 0u32;
        let mut start = 0usize;
        for piece in s.split('|') {
            let lead = piece.len() - piece.trim_start().len();
            let tok = piece.trim();
            match parse_token(tok) {
                Ok(b) => bits |= b,
                Err(kind) => return Err(GfpParseError::new(kind, tok, start + lead)),
            }
            start += piece.len() + 1;
        }
        Ok(Gfp::from_bits_retain(bits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;

    /// A stack buffer to compare `Display` output without a heap.
    struct Buf {
        b: [u8; 2048],
        n: usize,
    }

    impl Buf {
        fn as_str(&self) -> &str {
            core::str::from_utf8(&self.b[..self.n]).unwrap()
        }
    }

    impl Write for Buf {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            let end = self.n + s.len();
            if end > self.b.len() {
                return Err(fmt::Error);
            }
            self.b[self.n..end].copy_from_slice(s.as_bytes());
            self.n = end;
            Ok(())
        }
    }

    fn show(args: fmt::Arguments<'_>) -> Buf {
        let mut b = Buf { b: [0; 2048], n: 0 };
        b.write_fmt(args).unwrap();
        b
    }

    /// Every distinct `gfp_flags=` spelling in the Linux 6.18 traces under `shared/traces`.
    const TRACE_SPELLINGS: [&str; 51] = [
        "GFP_ATOMIC",
        "GFP_ATOMIC|__GFP_NOWARN",
        "GFP_ATOMIC|__GFP_NOWARN|__GFP_NOMEMALLOC",
        "GFP_ATOMIC|__GFP_NOWARN|__GFP_NORETRY|__GFP_COMP",
        "GFP_ATOMIC|__GFP_NOWARN|__GFP_NORETRY|__GFP_NOMEMALLOC",
        "GFP_ATOMIC|__GFP_RECLAIMABLE|__GFP_NOWARN|__GFP_NORETRY|__GFP_COMP",
        "GFP_ATOMIC|__GFP_ZERO|__GFP_COMP",
        "GFP_HIGHUSER_MOVABLE|__GFP_COMP",
        "GFP_HIGHUSER_MOVABLE|__GFP_WRITE|__GFP_COMP",
        "GFP_HIGHUSER_MOVABLE|__GFP_WRITE|__GFP_NOWARN|__GFP_NORETRY|__GFP_COMP",
        "GFP_HIGHUSER_MOVABLE|__GFP_ZERO|__GFP_COMP",
        "GFP_HIGHUSER|__GFP_ACCOUNT",
        "GFP_KERNEL",
        "GFP_KERNEL_ACCOUNT",
        "GFP_KERNEL_ACCOUNT|__GFP_RECLAIMABLE",
        "GFP_KERNEL_ACCOUNT|__GFP_ZERO",
        "GFP_KERNEL_ACCOUNT|__GFP_ZERO|__GFP_COMP",
        "GFP_KERNEL_ACCOUNT|__GFP_ZERO|__GFP_NOWARN",
        "GFP_KERNEL|__GFP_NOWARN|__GFP_NOMEMALLOC",
        "GFP_KERNEL|__GFP_NOWARN|__GFP_NORETRY|__GFP_COMP",
        "GFP_KERNEL|__GFP_RECLAIMABLE|__GFP_NOWARN|__GFP_NORETRY|__GFP_COMP",
        "GFP_KERNEL|__GFP_ZERO",
        "GFP_KERNEL|__GFP_ZERO|__GFP_COMP",
        "GFP_NOFS",
        "GFP_NOFS|__GFP_COMP",
        "GFP_NOFS|__GFP_HIGHMEM|__GFP_MOVABLE|__GFP_NOWARN|__GFP_NORETRY|__GFP_COMP|__GFP_HARDWALL",
        "GFP_NOFS|__GFP_MOVABLE|__GFP_COMP",
        "GFP_NOFS|__GFP_MOVABLE|__GFP_NOFAIL|__GFP_COMP|__GFP_HARDWALL",
        "GFP_NOFS|__GFP_MOVABLE|__GFP_ZERO|__GFP_ACCOUNT",
        "GFP_NOFS|__GFP_MOVABLE|__GFP_ZERO|__GFP_HARDWALL",
        "GFP_NOFS|__GFP_MOVABLE|__GFP_ZERO|__GFP_NOFAIL|__GFP_HARDWALL|__GFP_ACCOUNT",
        "GFP_NOFS|__GFP_NOFAIL|__GFP_COMP|__GFP_HARDWALL",
        "GFP_NOFS|__GFP_NOWARN|__GFP_NORETRY|__GFP_COMP",
        "GFP_NOFS|__GFP_RECLAIMABLE|__GFP_NOWARN|__GFP_NORETRY|__GFP_COMP",
        "GFP_NOFS|__GFP_RECLAIMABLE|__GFP_NOWARN|__GFP_NORETRY|__GFP_COMP|__GFP_HARDWALL",
        "GFP_NOFS|__GFP_ZERO",
        "GFP_NOFS|__GFP_ZERO|__GFP_COMP",
        "GFP_NOFS|__GFP_ZERO|__GFP_HARDWALL",
        "GFP_NOFS|__GFP_ZERO|__GFP_NOFAIL",
        "GFP_NOFS|__GFP_ZERO|__GFP_NOFAIL|__GFP_ACCOUNT",
        "GFP_NOFS|__GFP_ZERO|__GFP_NOFAIL|__GFP_HARDWALL|__GFP_ACCOUNT",
        "GFP_NOWAIT",
        "GFP_NOWAIT|__GFP_ACCOUNT",
        "GFP_NOWAIT|__GFP_FS|__GFP_NORETRY|__GFP_NOMEMALLOC",
        "GFP_NOWAIT|__GFP_IO|__GFP_FS|__GFP_NORETRY|__GFP_COMP",
        "GFP_NOWAIT|__GFP_NORETRY|__GFP_COMP|__GFP_THISNODE",
        "GFP_NOWAIT|__GFP_NORETRY|__GFP_NOMEMALLOC",
        "GFP_NOWAIT|__GFP_RECLAIMABLE|__GFP_NORETRY|__GFP_COMP",
        "GFP_NOWAIT|__GFP_ZERO",
        "__GFP_IO|__GFP_FS|__GFP_NOWARN|__GFP_NORETRY|__GFP_COMP|__GFP_NOMEMALLOC",
        "__GFP_RECLAIMABLE|__GFP_IO|__GFP_NOWARN|__GFP_NORETRY|__GFP_COMP|__GFP_NOMEMALLOC",
    ];

    /// The masks every caller is expected to use; all valid.
    const COMMON: [Gfp; 11] = [
        GFP_KERNEL,
        GFP_ATOMIC,
        GFP_NOWAIT,
        GFP_NOIO,
        GFP_NOFS,
        GFP_USER,
        GFP_DMA,
        GFP_DMA32,
        GFP_HIGHUSER_MOVABLE,
        GFP_KERNEL_ACCOUNT,
        GFP_TRANSHUGE,
    ];

    fn parse(s: &str) -> Gfp {
        match s.parse::<Gfp>() {
            Ok(g) => g,
            Err(e) => panic!("{s:?} does not parse: {e}"),
        }
    }

    #[test]
    fn composites_match_design() {
        use Gfp as G;
        assert_eq!(
            GFP_KERNEL,
            G::DIRECT_RECLAIM | G::KSWAPD_RECLAIM | G::IO | G::FS
        );
        assert_eq!(GFP_ATOMIC, G::HIGH | G::KSWAPD_RECLAIM);
        assert_eq!(GFP_NOWAIT, G::KSWAPD_RECLAIM | G::NOWARN);
        assert_eq!(GFP_NOIO, G::DIRECT_RECLAIM | G::KSWAPD_RECLAIM);
        assert_eq!(GFP_NOFS, G::DIRECT_RECLAIM | G::KSWAPD_RECLAIM | G::IO);
        assert_eq!(GFP_USER, GFP_KERNEL | G::HARDWALL);
        assert_eq!(GFP_DMA, G::DMA);
        assert_eq!(GFP_DMA32, G::DMA32);
        assert_eq!(GFP_HIGHUSER, GFP_USER | G::HIGHMEM);
        assert_eq!(GFP_HIGHUSER_MOVABLE, GFP_HIGHUSER | G::MOVABLE);
        assert!(!GFP_HIGHUSER_MOVABLE.contains(G::SKIP_KASAN));
        assert_eq!(GFP_KERNEL_ACCOUNT, GFP_KERNEL | G::ACCOUNT);
        assert_eq!(
            GFP_TRANSHUGE_LIGHT,
            G::HIGHMEM
                | G::MOVABLE
                | G::IO
                | G::FS
                | G::HARDWALL
                | G::COMP
                | G::NOMEMALLOC
                | G::NOWARN
        );
        assert_eq!(GFP_TRANSHUGE, GFP_TRANSHUGE_LIGHT | G::DIRECT_RECLAIM);
        assert_eq!(G::RECLAIM, __GFP_RECLAIM);
        assert_eq!(G::RECLAIM, G::DIRECT_RECLAIM | G::KSWAPD_RECLAIM);
    }

    #[test]
    fn composites_have_linux_hex_values() {
        // The values Linux prints in allocation-failure reports (`mode:0xcc0(GFP_KERNEL)`).
        assert_eq!(GFP_KERNEL.bits(), 0xcc0);
        assert_eq!(GFP_ATOMIC.bits(), 0x820);
        assert_eq!(GFP_NOWAIT.bits(), 0x2800);
        assert_eq!(GFP_NOIO.bits(), 0xc00);
        assert_eq!(GFP_NOFS.bits(), 0xc40);
        assert_eq!(GFP_USER.bits(), 0x10_0cc0);
        assert_eq!(GFP_HIGHUSER.bits(), 0x10_0cc2);
        assert_eq!(GFP_HIGHUSER_MOVABLE.bits(), 0x10_0cca);
        assert_eq!(GFP_KERNEL_ACCOUNT.bits(), 0x40_0cc0);
        assert_eq!(GFP_TRANSHUGE_LIGHT.bits(), 0x1c_20ca);
        assert_eq!(GFP_TRANSHUGE.bits(), 0x1c_24ca);
        assert_eq!(GFP_KERNEL.bits_u32(), 0xcc0);
    }

    #[test]
    fn single_flags_are_distinct_bits_and_aliases_match() {
        let singles = &TRACE_NAMES[14..];
        assert_eq!(singles.len(), 27);
        let mut seen = 0u32;
        let mut last = 0u32;
        for (name, g) in singles {
            assert!(name.starts_with("__GFP_"), "{name}");
            assert_eq!(g.bits().count_ones(), 1, "{name}");
            assert!(g.bits() > last, "{name} out of bit order");
            assert_eq!(seen & g.bits(), 0, "{name}");
            // The flag constant of the same name has the same value.
            assert_eq!(Gfp::from_name(&name[6..]), Some(*g), "{name}");
            last = g.bits();
            seen |= g.bits();
        }
        assert_eq!(seen, KNOWN_BITS);
        assert_eq!(seen & 0x200, 0, "bit 9 is unused");
        assert_eq!(KNOWN_BITS, 0x0fff_fdff);
        let aliases = [
            (__GFP_DMA, Gfp::DMA),
            (__GFP_HIGHMEM, Gfp::HIGHMEM),
            (__GFP_DMA32, Gfp::DMA32),
            (__GFP_MOVABLE, Gfp::MOVABLE),
            (__GFP_RECLAIMABLE, Gfp::RECLAIMABLE),
            (__GFP_HIGH, Gfp::HIGH),
            (__GFP_IO, Gfp::IO),
            (__GFP_FS, Gfp::FS),
            (__GFP_ZERO, Gfp::ZERO),
            (__GFP_DIRECT_RECLAIM, Gfp::DIRECT_RECLAIM),
            (__GFP_KSWAPD_RECLAIM, Gfp::KSWAPD_RECLAIM),
            (__GFP_WRITE, Gfp::WRITE),
            (__GFP_NOWARN, Gfp::NOWARN),
            (__GFP_RETRY_MAYFAIL, Gfp::RETRY_MAYFAIL),
            (__GFP_NOFAIL, Gfp::NOFAIL),
            (__GFP_NORETRY, Gfp::NORETRY),
            (__GFP_MEMALLOC, Gfp::MEMALLOC),
            (__GFP_COMP, Gfp::COMP),
            (__GFP_NOMEMALLOC, Gfp::NOMEMALLOC),
            (__GFP_HARDWALL, Gfp::HARDWALL),
            (__GFP_THISNODE, Gfp::THISNODE),
            (__GFP_ACCOUNT, Gfp::ACCOUNT),
            (__GFP_ZEROTAGS, Gfp::ZEROTAGS),
            (__GFP_SKIP_ZERO, Gfp::SKIP_ZERO),
            (__GFP_SKIP_KASAN, Gfp::SKIP_KASAN),
            (__GFP_NOLOCKDEP, Gfp::NOLOCKDEP),
            (__GFP_NO_OBJ_EXT, Gfp::NO_OBJ_EXT),
        ];
        for (i, (alias, flag)) in aliases.iter().enumerate() {
            assert_eq!(alias, flag);
            assert_eq!(singles[i].1, *flag);
        }
    }

    #[test]
    fn trace_spellings_round_trip() {
        for s in TRACE_SPELLINGS {
            let g = parse(s);
            assert_eq!(show(format_args!("{g}")).as_str(), s);
            assert_eq!(show(format_args!("{g:?}")).as_str(), s);
        }
    }

    #[test]
    fn trace_spellings_are_valid() {
        for s in TRACE_SPELLINGS {
            assert_eq!(parse(s).validate(), Ok(()), "{s}");
        }
    }

    #[test]
    fn no_obj_ext_prints_in_hex_as_in_a_linux_trace() {
        let g = GFP_KERNEL | Gfp::NO_OBJ_EXT;
        let hex = show(format_args!("GFP_KERNEL|{:#x}", Gfp::NO_OBJ_EXT.bits()));
        assert_eq!(show(format_args!("{g}")).as_str(), hex.as_str());
        assert_eq!(parse(hex.as_str()), g);
        assert_eq!(parse("GFP_KERNEL|__GFP_NO_OBJ_EXT"), g);
    }

    #[test]
    fn every_table_name_parses_to_its_value() {
        for (name, g) in TRACE_NAMES {
            assert_eq!(parse(name), g, "{name}");
        }
        // A composite prints as itself; a single flag prints as itself unless a composite of
        // one bit (GFP_DMA, GFP_DMA32) comes first in the table.
        assert_eq!(
            show(format_args!("{}", GFP_TRANSHUGE)).as_str(),
            "GFP_TRANSHUGE"
        );
        assert_eq!(show(format_args!("{}", Gfp::DMA)).as_str(), "GFP_DMA");
        assert_eq!(show(format_args!("{}", Gfp::DMA32)).as_str(), "GFP_DMA32");
        assert_eq!(show(format_args!("{}", Gfp::RECLAIM)).as_str(), "GFP_NOIO");
        assert_eq!(
            show(format_args!("{}", Gfp::DIRECT_RECLAIM)).as_str(),
            "__GFP_DIRECT_RECLAIM"
        );
        assert_eq!(
            show(format_args!("{}", Gfp::NO_OBJ_EXT)).as_str(),
            "0x8000000"
        );
        assert_eq!(
            show(format_args!("{}", GFP_NOWAIT | Gfp::HIGH)).as_str(),
            "GFP_ATOMIC|__GFP_NOWARN"
        );
        assert_eq!(
            show(format_args!(
                "{}",
                GFP_USER | Gfp::DMA | Gfp::DIRECT_RECLAIM
            ))
            .as_str(),
            "GFP_USER|GFP_DMA"
        );
    }

    #[test]
    fn zero_and_leftover_bits() {
        assert_eq!(show(format_args!("{}", Gfp::empty())).as_str(), "none");
        assert_eq!(show(format_args!("{:?}", Gfp::default())).as_str(), "none");
        let unused = Gfp::from_bits_retain(0x200);
        assert_eq!(show(format_args!("{unused}")).as_str(), "0x200");
        let g = GFP_KERNEL | Gfp::from_bits_retain(0x8000_0200);
        assert_eq!(show(format_args!("{g}")).as_str(), "GFP_KERNEL|0x80000200");
        assert_eq!(parse("GFP_KERNEL|0x80000200"), g);
        assert_eq!(parse("none"), Gfp::empty());
        assert_eq!(parse("0"), Gfp::empty());
        assert_eq!(parse("0x0"), Gfp::empty());
        assert_eq!(parse("0xCC0"), GFP_KERNEL);
        assert_eq!(parse("  GFP_KERNEL | __GFP_ZERO\t"), GFP_KERNEL | Gfp::ZERO);
        assert_eq!(parse("__GFP_ZERO|GFP_KERNEL"), GFP_KERNEL | Gfp::ZERO);
    }

    #[test]
    fn display_honours_width() {
        let b = show(format_args!("[{:>12}]", GFP_ATOMIC));
        assert_eq!(b.as_str(), "[  GFP_ATOMIC]");
        let b = show(format_args!("[{:<6}]", Gfp::empty()));
        assert_eq!(b.as_str(), "[none  ]");
        // The longest spelling (all bits) still prints whole when padded.
        let all = Gfp::from_bits_retain(u32::MAX);
        let plain = show(format_args!("{all}"));
        let padded = show(format_args!("{all:1}"));
        assert_eq!(plain.as_str(), padded.as_str());
        assert!(
            plain.as_str().ends_with("|0xf8000200"),
            "{}",
            plain.as_str()
        );
    }

    #[test]
    fn random_masks_round_trip() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Alternate among all 32 bits, known bits only, and sparse masks.
            let raw = x as u32;
            let bits = match i % 3 {
                0 => raw,
                1 => raw & KNOWN_BITS,
                _ => raw & (x >> 32) as u32 & KNOWN_BITS,
            };
            let g = Gfp::from_bits_retain(bits);
            let text = show(format_args!("{g}"));
            let back = parse(text.as_str());
            assert_eq!(back.bits(), bits, "{}", text.as_str());
            assert_eq!(show(format_args!("{back}")).as_str(), text.as_str());
            // Known bits print by name, but for __GFP_NO_OBJ_EXT (as Linux).
            if bits & !KNOWN_BITS & !Gfp::NO_OBJ_EXT.bits() == 0 {
                let named = bits & Gfp::NO_OBJ_EXT.bits() == 0;
                assert_eq!(!text.as_str().contains("0x"), named, "{}", text.as_str());
            }
        }
    }

    #[test]
    fn parse_errors_name_the_bad_token() {
        let e = "GFP_KERNEL|__GFP_FOO".parse::<Gfp>().unwrap_err();
        assert_eq!(e.kind(), GfpParseErrorKind::UnknownFlag);
        assert_eq!(e.token(), "__GFP_FOO");
        assert_eq!(e.offset(), 11);
        assert_eq!(
            show(format_args!("{e}")).as_str(),
            "unknown GFP flag `__GFP_FOO` at byte 11"
        );

        let e = "GFP_KERNEL |  gfp_kernel".parse::<Gfp>().unwrap_err();
        assert_eq!((e.token(), e.offset()), ("gfp_kernel", 14));

        let e = "GFP_KERNEL||__GFP_ZERO".parse::<Gfp>().unwrap_err();
        assert_eq!((e.kind(), e.offset()), (GfpParseErrorKind::Empty, 11));
        assert_eq!(
            show(format_args!("{e}")).as_str(),
            "empty GFP flag at byte 11"
        );
        let e = "".parse::<Gfp>().unwrap_err();
        assert_eq!((e.kind(), e.offset()), (GfpParseErrorKind::Empty, 0));
        let e = "GFP_KERNEL|".parse::<Gfp>().unwrap_err();
        assert_eq!((e.kind(), e.offset()), (GfpParseErrorKind::Empty, 11));

        for bad in ["0x", "0x+5", "0x1_0", "0x100000000", "0xg"] {
            let e = bad.parse::<Gfp>().unwrap_err();
            assert_eq!(e.kind(), GfpParseErrorKind::BadNumber, "{bad}");
            assert_eq!((e.token(), e.offset()), (bad, 0));
        }
        let e = "__GFP_IO|0x1ffffffff".parse::<Gfp>().unwrap_err();
        assert_eq!(
            show(format_args!("{e}")).as_str(),
            "invalid GFP number `0x1ffffffff` at byte 9 (expected 0x and up to 8 hex digits)"
        );
        let e = "1024".parse::<Gfp>().unwrap_err();
        assert_eq!(e.kind(), GfpParseErrorKind::UnknownFlag);

        // Long tokens are cut at a char boundary and marked.
        let long = "__GFP_ééééééééééééééééééééééééééééééééééééééé";
        let e = long.parse::<Gfp>().unwrap_err();
        assert!(e.token().len() <= TOKEN_CAP && long.starts_with(e.token()));
        assert!(show(format_args!("{e}")).as_str().contains("…` at byte 0"));
    }

    #[test]
    fn validate_accepts_common_masks() {
        for g in COMMON {
            assert_eq!(g.validate(), Ok(()), "{g}");
        }
        assert_eq!((GFP_KERNEL | Gfp::NOFAIL).validate(), Ok(()));
        assert_eq!((GFP_DMA | Gfp::MOVABLE).validate(), Ok(()));
        assert_eq!(Gfp::empty().validate(), Ok(()));
    }

    #[test]
    fn validate_rejects_each_rule() {
        use Gfp as G;
        for zones in [
            G::DMA | G::DMA32,
            G::DMA | G::HIGHMEM,
            G::DMA32 | G::HIGHMEM,
            G::DMA | G::DMA32 | G::HIGHMEM,
        ] {
            for extra in [G::empty(), G::MOVABLE] {
                let g = GFP_KERNEL | zones | extra;
                assert_eq!(g.validate(), Err(GfpError::BadZone(g)), "{g}");
                assert_eq!(g.zone_type(), Err(GfpError::BadZone(g)), "{g}");
            }
        }
        let g = GFP_KERNEL | G::MOVABLE | G::RECLAIMABLE;
        assert_eq!(g.validate(), Err(GfpError::MovableAndReclaimable(g)));
        // Linux serves these (and warns once if one runs out of memory).
        for g in [
            GFP_ATOMIC | G::NOFAIL,
            GFP_NOWAIT | G::NOFAIL,
            GFP_KERNEL | G::NOFAIL | G::NORETRY,
        ] {
            assert_eq!(g.validate(), Ok(()), "{g}");
        }
        let g = GFP_KERNEL | G::from_bits_retain(0x200);
        assert_eq!(g.validate(), Err(GfpError::UnknownBits(0x200)));
        let g = G::from_bits_retain(1 << 28) | G::DMA | G::DMA32;
        assert_eq!(g.validate(), Err(GfpError::UnknownBits(1 << 28)));
    }

    #[test]
    fn error_messages_name_flags_and_rule() {
        let cases = [
            (
                GfpError::BadZone(GFP_KERNEL | Gfp::DMA | Gfp::DMA32),
                "invalid GFP mask GFP_KERNEL|GFP_DMA|GFP_DMA32: __GFP_DMA and __GFP_DMA32 \
                 select different zones",
            ),
            (
                GfpError::BadZone(Gfp::DMA | Gfp::DMA32 | Gfp::HIGHMEM),
                "invalid GFP mask GFP_DMA|GFP_DMA32|__GFP_HIGHMEM: __GFP_DMA, __GFP_DMA32 and \
                 __GFP_HIGHMEM select different zones",
            ),
            (
                GfpError::MovableAndReclaimable(GFP_NOFS | Gfp::MOVABLE | Gfp::RECLAIMABLE),
                "invalid GFP mask GFP_NOFS|__GFP_MOVABLE|__GFP_RECLAIMABLE: __GFP_MOVABLE and \
                 __GFP_RECLAIMABLE select different migrate types",
            ),
            (
                GfpError::UnknownBits(0x200),
                "invalid GFP mask: unknown bits 0x200",
            ),
        ];
        for (err, text) in cases {
            assert_eq!(show(format_args!("{err}")).as_str(), text);
        }
    }

    #[test]
    fn zone_type_follows_the_x86_64_zone_table() {
        use Gfp as G;
        use ZoneType::*;
        // Every combination of the four zone modifiers, as Linux's GFP_ZONE_TABLE and
        // GFP_ZONE_BAD give them on x86-64 without highmem (ZONE_MOVABLE folded into Normal).
        let table: [(Gfp, Option<ZoneType>); 16] = [
            (G::empty(), Some(Normal)),
            (G::DMA, Some(Dma)),
            (G::HIGHMEM, Some(Normal)),
            (G::DMA | G::HIGHMEM, None),
            (G::DMA32, Some(Dma32)),
            (G::DMA | G::DMA32, None),
            (G::DMA32 | G::HIGHMEM, None),
            (G::DMA | G::DMA32 | G::HIGHMEM, None),
            (G::MOVABLE, Some(Normal)),
            (G::MOVABLE | G::DMA, Some(Dma)),
            (G::MOVABLE | G::HIGHMEM, Some(Normal)),
            (G::MOVABLE | G::DMA | G::HIGHMEM, None),
            (G::MOVABLE | G::DMA32, Some(Dma32)),
            (G::MOVABLE | G::DMA | G::DMA32, None),
            (G::MOVABLE | G::DMA32 | G::HIGHMEM, None),
            (G::MOVABLE | G::DMA | G::DMA32 | G::HIGHMEM, None),
        ];
        for (g, want) in table {
            assert_eq!(g.zone_type().ok(), want, "{g}");
            assert_eq!((g | GFP_KERNEL).zone_type().ok(), want, "{g}");
        }
        assert_eq!(GFP_KERNEL.zone_type(), Ok(Normal));
        assert_eq!(GFP_ATOMIC.zone_type(), Ok(Normal));
        assert_eq!(GFP_HIGHUSER_MOVABLE.zone_type(), Ok(Normal));
        assert_eq!((GFP_KERNEL | GFP_DMA).zone_type(), Ok(Dma));
        assert_eq!((GFP_ATOMIC | GFP_DMA32).zone_type(), Ok(Dma32));
    }

    #[test]
    fn migratetype_of_representative_masks() {
        assert_eq!(GFP_KERNEL.migratetype(), MigrateType::Unmovable);
        assert_eq!(GFP_ATOMIC.migratetype(), MigrateType::Unmovable);
        assert_eq!(GFP_HIGHUSER_MOVABLE.migratetype(), MigrateType::Movable);
        assert_eq!(GFP_TRANSHUGE.migratetype(), MigrateType::Movable);
        assert_eq!(
            (GFP_KERNEL | Gfp::RECLAIMABLE).migratetype(),
            MigrateType::Reclaimable
        );
        assert_eq!(
            (Gfp::MOVABLE | Gfp::RECLAIMABLE).migratetype(),
            MigrateType::Unmovable
        );
        for s in TRACE_SPELLINGS {
            let g = parse(s);
            let want = if s.contains("MOVABLE") {
                MigrateType::Movable
            } else if s.contains("RECLAIMABLE") {
                MigrateType::Reclaimable
            } else {
                MigrateType::Unmovable
            };
            assert_eq!(g.migratetype(), want, "{s}");
            assert!(g.migratetype().index() < MigrateType::PCPTYPES);
        }
    }

    #[test]
    fn allows_blocking_follows_direct_reclaim() {
        assert!(GFP_KERNEL.allows_blocking());
        assert!(GFP_NOIO.allows_blocking());
        assert!(GFP_NOFS.allows_blocking());
        assert!(GFP_TRANSHUGE.allows_blocking());
        assert!(!GFP_ATOMIC.allows_blocking());
        assert!(!GFP_NOWAIT.allows_blocking());
        assert!(!GFP_TRANSHUGE_LIGHT.allows_blocking());
        assert!(!Gfp::KSWAPD_RECLAIM.allows_blocking());
        assert!(Gfp::DIRECT_RECLAIM.allows_blocking());
    }

    #[test]
    fn zone_and_migrate_type_tables() {
        for (i, z) in ZoneType::ALL.iter().enumerate() {
            assert_eq!(z.index(), i);
            assert_eq!(ZoneType::from_index(i), Some(*z));
        }
        assert_eq!(ZoneType::from_index(3), None);
        let names = ZoneType::ALL.map(ZoneType::name);
        assert_eq!(names, ["DMA", "DMA32", "Normal"]);
        assert_eq!(ZoneType::Dma.limit(), 0x100_0000);
        assert_eq!(ZoneType::Dma32.limit(), 0x1_0000_0000);
        assert_eq!(ZoneType::Normal.limit(), u64::MAX);
        assert!(ZoneType::Dma < ZoneType::Dma32 && ZoneType::Dma32 < ZoneType::Normal);

        for (i, m) in MigrateType::ALL.iter().enumerate() {
            assert_eq!(m.index(), i);
            assert_eq!(MigrateType::from_index(i), Some(*m));
        }
        assert_eq!(MigrateType::from_index(5), None);
        let names = MigrateType::ALL.map(MigrateType::name);
        assert_eq!(
            names,
            [
                "Unmovable",
                "Movable",
                "Reclaimable",
                "HighAtomic",
                "Isolate"
            ]
        );
        assert_eq!(MigrateType::HighAtomic.index(), MigrateType::PCPTYPES);
    }
}
