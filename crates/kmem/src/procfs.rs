//! /proc-format views of the page allocator: buddyinfo, pagetypeinfo,
//! zoneinfo and meminfo, byte for byte in Linux's layout, so the tools and
//! eyes used to reading them need no translation.
//!
//! Each function writes into any `core::fmt::Write` (a `String` on the
//! host, a fixed buffer in a kernel). Fields Linux prints that kmem has no
//! notion of (file pages, swap, ...) are left out of meminfo; zoneinfo prints
//! the zone blocks without the per-node LRU statistics, and the per-CPU
//! lists' `high_min`/`high_max` both as kmem's fixed `high`.

use crate::addr::{NR_PAGE_ORDERS, PAGEBLOCK_NR_PAGES, PAGEBLOCK_ORDER, PAGE_SIZE};
use crate::gfp::{MigrateType, ZoneType};
use crate::page::{PageAllocator, Watermark};
use crate::platform::Platform;
use core::fmt::{self, Write};

/// `/proc/buddyinfo`: free blocks per order, per zone.
pub fn buddyinfo<P: Platform>(pa: &PageAllocator<P>, out: &mut dyn Write) -> fmt::Result {
    for z in pa.populated_zones() {
        write!(out, "Node {}, zone {:>8} ", z.node(), z.zone_type().name())?;
        for o in 0..NR_PAGE_ORDERS {
            write!(out, "{:6} ", z.free_blocks(o))?;
        }
        out.write_char('\n')?;
    }
    Ok(())
}

/// `/proc/pagetypeinfo`: free blocks per order and migrate type, and
/// pageblocks per migrate type.
pub fn pagetypeinfo<P: Platform>(pa: &PageAllocator<P>, out: &mut dyn Write) -> fmt::Result {
    writeln!(out, "Page block order: {PAGEBLOCK_ORDER}")?;
    writeln!(out, "Pages per block:  {PAGEBLOCK_NR_PAGES}")?;
    writeln!(out)?;
    write!(out, "{:<43} ", "Free pages count per migrate type at order")?;
    for o in 0..NR_PAGE_ORDERS {
        write!(out, "{o:6} ")?;
    }
    out.write_char('\n')?;
    for z in pa.populated_zones() {
        let counts = z.free_blocks_by_type();
        for mt in MigrateType::ALL {
            write!(
                out,
                "Node {:4}, zone {:>8}, type {:>12} ",
                z.node(),
                z.zone_type().name(),
                mt.name()
            )?;
            for row in counts.iter() {
                let n = row.get(mt.index()).copied().unwrap_or(0);
                write!(out, "{n:6} ")?;
            }
            out.write_char('\n')?;
        }
    }
    writeln!(out)?;
    write!(out, "{:<23}", "Number of blocks type ")?;
    for mt in MigrateType::ALL {
        write!(out, "{:>12} ", mt.name())?;
    }
    out.write_char('\n')?;
    for z in pa.populated_zones() {
        let blocks = pa.pageblock_counts(z.node(), z.zone_type());
        write!(out, "Node {}, zone {:>8} ", z.node(), z.zone_type().name())?;
        for n in blocks {
            write!(out, "{n:12} ")?;
        }
        out.write_char('\n')?;
    }
    Ok(())
}

/// `/proc/zoneinfo`: per zone, free pages, watermarks, spans, lowmem
/// protection, and the per-CPU lists.
pub fn zoneinfo<P: Platform>(pa: &PageAllocator<P>, out: &mut dyn Write) -> fmt::Result {
    for node in 0..pa.nr_nodes() {
        for zt in ZoneType::ALL {
            let z = pa.zone(node, zt);
            write!(out, "Node {}, zone {:>8}", node, zt.name())?;
            write!(out, "\n  pages free     {}", z.free_pages())?;
            write!(out, "\n        {:<8} {}", "boost", 0)?;
            write!(
                out,
                "\n        {:<8} {}",
                "min",
                z.watermark(Watermark::Min)
            )?;
            write!(
                out,
                "\n        {:<8} {}",
                "low",
                z.watermark(Watermark::Low)
            )?;
            write!(
                out,
                "\n        {:<8} {}",
                "high",
                z.watermark(Watermark::High)
            )?;
            // Linux (6.1 on): the promotion watermark, one more step above
            // high (kmem does not tier memory; the value is Linux's).
            let step = z.watermark(Watermark::Low) - z.watermark(Watermark::Min);
            write!(
                out,
                "\n        {:<8} {}",
                "promo",
                z.watermark(Watermark::High) + step
            )?;
            write!(out, "\n        {:<8} {}", "spanned", z.spanned_pages())?;
            write!(out, "\n        {:<8} {}", "present", z.present_pages())?;
            write!(out, "\n        {:<8} {}", "managed", z.managed_pages())?;
            write!(out, "\n        {:<8} {}", "cma", 0)?;
            write!(out, "\n        protection: (")?;
            for (i, lz) in ZoneType::ALL.iter().enumerate() {
                let r = if lz.index() <= zt.index() {
                    0
                } else {
                    z.lowmem_reserve(*lz)
                };
                write!(out, "{}{r}", if i == 0 { "" } else { ", " })?;
            }
            // Linux also lists ZONE_MOVABLE and ZONE_DEVICE, empty here.
            let top = z.lowmem_reserve(ZoneType::Normal);
            let top = if zt == ZoneType::Normal { 0 } else { top };
            write!(out, ", {top}, {top})")?;
            if !z.is_populated() {
                out.write_char('\n')?;
                continue;
            }
            write!(out, "\n      {:<12} {}", "nr_free_pages", z.free_pages())?;
            write!(out, "\n  pagesets")?;
            let threshold = vm_stats_threshold(z.managed_pages(), pa.platform().nr_cpus());
            for cpu in 0..pa.platform().nr_cpus() {
                let (count, high, batch) = pa.pcp_info(cpu, node, zt);
                write!(out, "\n    cpu: {cpu}")?;
                write!(out, "\n              count:    {count}")?;
                write!(out, "\n              high:     {high}")?;
                write!(out, "\n              batch:    {batch}")?;
                // Linux (6.7 on) tunes high between these; kmem's is fixed.
                write!(out, "\n              high_min: {high}")?;
                write!(out, "\n              high_max: {high}")?;
                write!(out, "\n  vm stats threshold: {threshold}")?;
            }
            write!(out, "\n  node_unreclaimable:  0")?;
            write!(out, "\n  start_pfn:           {}", z.start_pfn())?;
            out.write_char('\n')?;
        }
        // Linux lists ZONE_MOVABLE and ZONE_DEVICE too (the protection
        // line's last two columns); kmem has neither: empty blocks.
        for name in ["Movable", "Device"] {
            write!(out, "Node {node}, zone {name:>8}")?;
            write!(out, "\n  pages free     0")?;
            for field in [
                "boost", "min", "low", "high", "promo", "spanned", "present", "managed", "cma",
            ] {
                write!(out, "\n        {field:<8} 0")?;
            }
            writeln!(out, "\n        protection: (0, 0, 0, 0, 0)")?;
        }
    }
    Ok(())
}

/// Linux's `calculate_normal_threshold`: how far a CPU's vmstat deltas may
/// drift before they are folded into the zone's counters (zoneinfo's `vm
/// stats threshold`), from the CPU count and the zone's size in 128 MiB
/// units, at most 125.
fn vm_stats_threshold(managed_pages: usize, nr_cpus: usize) -> u32 {
    let fls = |x: usize| usize::BITS - x.leading_zeros();
    let mem = managed_pages >> (27 - crate::addr::PAGE_SHIFT);
    (2 * fls(nr_cpus) * (1 + fls(mem))).min(125)
}

/// `/proc/meminfo`, the fields that apply to a page allocator: totals, free,
/// what "available" would be (free above the low watermarks), and the
/// direct-map page sizes of a machine mapped with 1 GiB pages.
pub fn meminfo<P: Platform>(pa: &PageAllocator<P>, out: &mut dyn Write) -> fmt::Result {
    let kb = |pages: usize| pages * (PAGE_SIZE / 1024);
    let total = pa.nr_managed_pages();
    let free = pa.nr_free_pages();
    // Linux's totalreserve_pages: high watermark plus the largest lowmem
    // reserve of every zone; what lies below it is not "available".
    let reserve: usize = pa
        .populated_zones()
        .map(|z| {
            z.watermark(Watermark::High)
                + ZoneType::ALL
                    .iter()
                    .map(|&t| z.lowmem_reserve(t))
                    .max()
                    .unwrap_or(0)
        })
        .sum();
    let line =
        |out: &mut dyn Write, name: &str, v: usize| writeln!(out, "{:<16}{:>8} kB", Label(name), v);
    line(out, "MemTotal", kb(total))?;
    line(out, "MemFree", kb(free))?;
    line(
        out,
        "MemAvailable",
        kb((free + pa.pcp_pages()).saturating_sub(reserve)),
    )?;
    Ok(())
}

/// `Name:` with Linux's colon, padded as a whole.
struct Label<'a>(&'a str);

impl fmt::Display for Label<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Pad "Name:" as a whole, like Linux's "%-16s".
        let mut buf = [0u8; 32];
        let n = self.0.len().min(30);
        buf[..n].copy_from_slice(&self.0.as_bytes()[..n]);
        buf[n] = b':';
        f.pad(core::str::from_utf8(&buf[..=n]).unwrap_or(""))
    }
}

#[cfg(test)]
mod tests {
    use super::vm_stats_threshold;

    /// The thresholds of the shared build trace's zoneinfo (2 CPUs): DMA
    /// with 3840 managed pages, DMA32 with 772915, Normal with 622592.
    #[test]
    fn thresholds_match_linux() {
        assert_eq!(vm_stats_threshold(3840, 2), 4);
        assert_eq!(vm_stats_threshold(772_915, 2), 24);
        assert_eq!(vm_stats_threshold(622_592, 2), 24);
        assert_eq!(vm_stats_threshold(1 << 30, 256), 125);
    }
}
