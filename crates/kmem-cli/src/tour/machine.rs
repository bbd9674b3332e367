//! Tour section 0: the machine the experiments run on.
//!
//! A compact zoneinfo: the firmware memory map as handed over, then per zone
//! its size (spanned, present, managed), free pages, watermarks, lowmem
//! protection and per-CPU list sizes, all read from the page allocator just
//! built. Later sections refer to these figures by name.

use super::{group, Out, Table, TourError};
use kmem::gfp::ZoneType;
use kmem::page::memmap::RegionKind;
use kmem::page::watermark::default_min_free_kbytes;
use kmem::page::Watermark;
use kmem::{Platform, PAGE_SIZE};
use kmem_host::Machine;
use serde_json::{json, Value};

/// Runs section 0.
pub fn run(m: &Machine, o: &mut Out) -> Result<Value, TourError> {
    let pages = m.pages();
    let cpus = pages.platform().nr_cpus();
    o.heading(0, "The machine");
    let ram: u64 = m
        .config()
        .regions
        .iter()
        .flatten()
        .filter(|r| r.kind == RegionKind::Usable)
        .map(|r| r.len())
        .sum();
    o.say(format_args!(
        "A hosted machine: {:.1} MiB of usable RAM in a memfd, {} CPUs, {} node(s). Counts are \
         4 KiB pages.",
        ram as f64 / (1u64 << 20) as f64,
        cpus,
        pages.nr_nodes()
    ));
    o.say(format_args!("Firmware memory map (e820-style):"));
    let mut regions = Vec::new();
    for r in m.config().regions.iter().flatten() {
        let kind = match r.kind {
            RegionKind::Usable => "usable",
            RegionKind::Reserved => "reserved",
        };
        o.say(format_args!(
            "    [mem {:#012x}-{:#012x}] {kind}",
            r.start.0,
            r.end.0.saturating_sub(1)
        ));
        regions.push(json!({ "start": r.start.0, "end": r.end.0, "kind": kind }));
    }
    o.blank();

    let mut t = Table::new(&[
        "zone",
        "start_pfn",
        "spanned",
        "present",
        "managed",
        "free",
        "min",
        "low",
        "high",
        "protection (DMA, DMA32, Normal)",
        "pcp batch",
        "pcp high",
    ]);
    let mut zones = Vec::new();
    let mut sum_min = 0;
    for z in pages.populated_zones() {
        let zt = z.zone_type();
        // As zoneinfo prints it: protection against allocations whose
        // highest zone is this one or below is zero.
        let prot: Vec<usize> = ZoneType::ALL
            .iter()
            .map(|&hz| {
                if hz.index() <= zt.index() {
                    0
                } else {
                    z.lowmem_reserve(hz)
                }
            })
            .collect();
        let (_, high0, batch0) = pages.pcp_info(0, z.node(), zt);
        let pcp: Vec<Value> = (0..cpus)
            .map(|cpu| {
                let (count, high, batch) = pages.pcp_info(cpu, z.node(), zt);
                json!({ "cpu": cpu, "count": count, "high": high, "batch": batch })
            })
            .collect();
        let (min, low, high) = (
            z.watermark(Watermark::Min),
            z.watermark(Watermark::Low),
            z.watermark(Watermark::High),
        );
        sum_min += min;
        t.row(vec![
            zt.name().to_string(),
            format!("{:#x}", z.start_pfn()),
            group(z.spanned_pages()),
            group(z.present_pages()),
            group(z.managed_pages() as u64),
            group(z.free_pages() as u64),
            group(min as u64),
            group(low as u64),
            group(high as u64),
            format!("{}, {}, {}", prot[0], prot[1], prot[2]),
            batch0.to_string(),
            high0.to_string(),
        ]);
        zones.push(json!({
            "node": z.node(),
            "zone": zt.name(),
            "start_pfn": z.start_pfn(),
            "spanned": z.spanned_pages(),
            "present": z.present_pages(),
            "managed": z.managed_pages(),
            "free": z.free_pages(),
            "min": min,
            "low": low,
            "high": high,
            "protection": prot,
            "pcp": pcp,
        }));
    }
    o.table(&t);
    let cfg = pages.config();
    let ratio = cfg.lowmem_reserve_ratio;
    let min_free_kbytes = cfg.min_free_kbytes.map_or_else(
        || default_min_free_kbytes(pages.nr_managed_pages() as u64),
        |k| k as u64,
    );
    o.say(format_args!(
        "min: each zone's share (by size) of vm.min_free_kbytes = {min_free_kbytes} KiB ({} KiB \
         together, each share rounded down to whole pages); low and high sit max(min/4, \
         {}/10000 of the zone) and twice that above min.",
        sum_min * PAGE_SIZE / 1024,
        cfg.watermark_scale_factor
    ));
    o.say(format_args!(
        "protection: pages a lower zone keeps from allocations that could have used a higher \
         zone (managed pages above / lowmem_reserve_ratio {}, {}, {}).",
        ratio[0], ratio[1], ratio[2]
    ));
    o.say(format_args!(
        "pcp: each CPU caches order-0..3 pages per zone, refilled `batch` at a time from the \
         zone, a batch given back above `high` (same on all {cpus} CPUs here)."
    ));
    o.say(format_args!(
        "Frame records and per-CPU lists take {} pages; {} pages are free.",
        group(pages.memmap_pages()),
        group(pages.nr_free_pages() as u64)
    ));
    Ok(json!({
        "ram_bytes": ram,
        "nr_cpus": cpus,
        "nr_nodes": pages.nr_nodes(),
        "regions": regions,
        "zones": zones,
        "min_free_kbytes": min_free_kbytes,
        "zone_min_kbytes_total": sum_min * PAGE_SIZE / 1024,
        "watermark_scale_factor": cfg.watermark_scale_factor,
        "lowmem_reserve_ratio": ratio,
        "memmap_pages": pages.memmap_pages(),
        "free_pages": pages.nr_free_pages(),
    }))
}
