//! From the firmware's e820 table to kmem's memory map (`&[Region]`).
//!
//! kmem wants sorted, disjoint regions, each usable or reserved; anything
//! not listed is a hole. As Linux does with e820:
//!
//! - type 1 (RAM) becomes usable;
//! - ACPI tables and NVS (types 3, 4) are RAM that exists but is not ours:
//!   reserved;
//! - everything else (firmware-reserved, MMIO, unusable) is left out: a hole;
//! - where entries overlap, the non-RAM type wins (as Linux's e820
//!   sanitising keeps the most restrictive one): such a range inside a RAM
//!   entry is cut out of it;
//! - inside RAM, the first page (real-mode IVT/BDA, and a NULL guard) and the
//!   kernel image (code, data, `.bss`, boot stack and page tables) are carved
//!   out as reserved.
//!
//! Firmware tables may be unsorted or overlap; entries are sorted and
//! clipped so the result always validates. RAM beyond what the direct map
//! can reach ([`crate::paging::DIRECT_MAP_LIMIT`]) is dropped.

use crate::boot::E820Entry;
use kmem::{Region, RegionKind};

/// Most regions produced.
pub const MAX_REGIONS: usize = 160;

/// Most carved ranges taken.
pub const MAX_CARVE: usize = 8;

/// A memory map under construction.
pub struct MemoryMap {
    regions: [Region; MAX_REGIONS],
    len: usize,
    /// RAM left out because the direct map does not reach it (bytes).
    pub dropped_bytes: u64,
}

impl MemoryMap {
    /// The regions, sorted and disjoint.
    pub fn regions(&self) -> &[Region] {
        &self.regions[..self.len]
    }

    fn push(&mut self, start: u64, end: u64, kind: RegionKind) {
        if start >= end {
            return;
        }
        // Merge with the previous region when they touch and agree.
        if let Some(prev) = self.regions[..self.len].last_mut() {
            if prev.end.0 == start && prev.kind == kind {
                prev.end.0 = end;
                return;
            }
        }
        assert!(self.len < MAX_REGIONS, "too many memory-map regions");
        self.regions[self.len] = match kind {
            RegionKind::Usable => Region::usable(start, end),
            RegionKind::Reserved => Region::reserved(start, end),
        };
        self.len += 1;
    }

    /// Total bytes of the given kind.
    pub fn bytes(&self, kind: RegionKind) -> u64 {
        self.regions()
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.len())
            .sum()
    }
}

/// Builds kmem's memory map from `e820`, reserving `carve` ranges (first
/// page, kernel image) inside RAM, and clipping at `limit`. Where entries
/// overlap, anything that is not RAM wins over RAM (Linux's e820 sanitising
/// keeps the most restrictive type): a reserved or ACPI range listed inside
/// a RAM entry is never handed out.
pub fn from_e820(e820: &[E820Entry], carve: &[(u64, u64)], limit: u64) -> MemoryMap {
    // Keep RAM and ACPI entries, as (start, end, kind), sorted by start.
    let mut ents = [(0u64, 0u64, RegionKind::Usable); crate::boot::MAX_E820];
    let mut n = 0;
    // Ranges RAM must not cover, sorted by start: the carved ranges
    // (reserved) and every non-RAM entry (reserved for ACPI, else a hole).
    let mut excl = [(0u64, 0u64, None::<RegionKind>); crate::boot::MAX_E820 + MAX_CARVE];
    let mut m = 0;
    for &(c0, c1) in carve.iter().take(MAX_CARVE) {
        excl[m] = (c0, c1, Some(RegionKind::Reserved));
        m += 1;
    }
    let mut dropped = 0u64;
    for e in e820 {
        let (start, end) = (e.addr, e.addr.saturating_add(e.size));
        let kind = match e.kind {
            1 => RegionKind::Usable,
            3 | 4 => RegionKind::Reserved,
            _ => {
                if m < excl.len() {
                    excl[m] = (start, end, None);
                    m += 1;
                }
                continue;
            }
        };
        if kind == RegionKind::Reserved && m < excl.len() {
            excl[m] = (start, end, Some(RegionKind::Reserved));
            m += 1;
        }
        if kind == RegionKind::Usable && end > limit {
            dropped += end - start.max(limit);
        }
        let end = end.min(limit);
        if start < end && n < ents.len() {
            ents[n] = (start, end, kind);
            n += 1;
        }
    }
    let ents = &mut ents[..n];
    ents.sort_unstable_by_key(|e| e.0);
    let excl = &mut excl[..m];
    excl.sort_unstable_by_key(|e| e.0);

    let mut map = MemoryMap {
        regions: [Region::usable(0, 0); MAX_REGIONS],
        len: 0,
        dropped_bytes: dropped,
    };
    let mut covered = 0u64; // everything below is already in the map
    for &(start, end, kind) in ents.iter() {
        let start = start.max(covered);
        if start >= end {
            continue; // overlapped entirely by an earlier entry
        }
        covered = end;
        if kind == RegionKind::Reserved {
            map.push(start, end, kind);
            continue;
        }
        // Usable: split around the excluded ranges.
        let mut at = start;
        for &(c0, c1, what) in excl.iter() {
            let (c0, c1) = (c0.max(at), c1.min(end));
            if c0 >= c1 {
                continue;
            }
            map.push(at, c0, RegionKind::Usable);
            if let Some(k) = what {
                map.push(c0, c1, k);
            }
            at = c1;
        }
        map.push(at, end, RegionKind::Usable);
    }
    map
}
