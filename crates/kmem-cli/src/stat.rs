//! `kmem stat`: the hosted machine's /proc files, in Linux's formats.
//!
//! Builds the default machine and renders the files through `kmem::procfs`
//! (buddyinfo, pagetypeinfo, zoneinfo, meminfo) and the page allocator's
//! counters (vmstat, one `name value` per line). The machine is fresh, so
//! this shows the state right after boot: every zone's free lists, its
//! watermarks and lowmem reserves, its per-CPU list sizes. slabinfo needs
//! a slab allocator: one is booted on the machine after the page files are
//! read (so they show the machine without it) and shows its caches.
//!
//! With several files the text output puts a `==> name <==` header before
//! each (as `head` does); with one it prints the file alone, so it can be
//! piped to tools that parse the real /proc file.

use clap::{Args, ValueEnum};
use kmem::page::PageAllocator;
use kmem::slab::{SlabAllocator, SlabConfig};
use kmem::Platform;
use kmem_host::Machine;
use serde_json::{Map, Value};
use std::fmt::Write as _;
use std::process::ExitCode;

/// Long help of `kmem stat`.
pub const LONG_ABOUT: &str = "\
Builds the default hosted machine (1 GiB over DMA, DMA32 and Normal, 2 CPUs)
and prints its /proc files, in Linux's formats:

  buddyinfo     free blocks per order (0..10) per zone: a zone with many
                order-0 and no high-order blocks is fragmented
  pagetypeinfo  the same per migrate type, and pageblocks per migrate type
  zoneinfo      per zone: free pages, min/low/high watermarks, spanned,
                present and managed pages, lowmem protection, per-CPU lists
  meminfo       MemTotal, MemFree, MemAvailable
  vmstat        kmem's page-allocator counters (kmem's names), one `name value` per line
                (fast path, slow path, reserves, reclaim, failures)
  slabinfo      /proc/slabinfo (version 2.1) of a slab allocator booted on the
                machine with SlabConfig::default(): every kmalloc cache (plain,
                -cg accounted, -rcl reclaimable, dma-) and kmem_cache (the
                caches' descriptors), with object size, objects per slab and
                pages per slab (the order SLUB's rule picked). It is booted
                after the other files are read, so they show the machine
                without it.

Name FILEs to print only those, e.g. `kmem stat buddyinfo zoneinfo`.
--json prints one object: each /proc file's text under its name, and
vmstat as an object of numbers.";

/// Arguments of `kmem stat`.
#[derive(Args, Debug)]
pub struct StatArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Files to print (default: all, in this order).
    #[arg(value_name = "FILE", value_enum)]
    files: Vec<ProcFile>,
}

/// One printable /proc file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProcFile {
    /// /proc/buddyinfo: free blocks per order, per zone.
    Buddyinfo,
    /// /proc/pagetypeinfo: free blocks per order and migrate type.
    Pagetypeinfo,
    /// /proc/zoneinfo: free pages, watermarks, sizes, protection, pcp lists.
    Zoneinfo,
    /// /proc/meminfo: total, free, available.
    Meminfo,
    /// kmem's page-allocator counters in /proc/vmstat's `name value`
    /// layout (the names are kmem's, not Linux's).
    Vmstat,
    /// /proc/slabinfo (version 2.1) of a slab allocator booted on the
    /// machine after the other files are read.
    Slabinfo,
}

impl ProcFile {
    /// Every file, in the default order.
    pub const ALL: [ProcFile; 6] = [
        ProcFile::Buddyinfo,
        ProcFile::Pagetypeinfo,
        ProcFile::Zoneinfo,
        ProcFile::Meminfo,
        ProcFile::Vmstat,
        ProcFile::Slabinfo,
    ];

    /// The file's name, as under /proc.
    pub fn name(self) -> &'static str {
        match self {
            ProcFile::Buddyinfo => "buddyinfo",
            ProcFile::Pagetypeinfo => "pagetypeinfo",
            ProcFile::Zoneinfo => "zoneinfo",
            ProcFile::Meminfo => "meminfo",
            ProcFile::Vmstat => "vmstat",
            ProcFile::Slabinfo => "slabinfo",
        }
    }

    /// Renders a page-allocator file's text (slabinfo: see [`render`]).
    pub fn render<P: Platform>(self, pages: &PageAllocator<P>) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = match self {
            ProcFile::Buddyinfo => kmem::procfs::buddyinfo(pages, &mut s),
            ProcFile::Pagetypeinfo => kmem::procfs::pagetypeinfo(pages, &mut s),
            ProcFile::Zoneinfo => kmem::procfs::zoneinfo(pages, &mut s),
            ProcFile::Meminfo => kmem::procfs::meminfo(pages, &mut s),
            ProcFile::Vmstat => {
                for (name, v) in pages.vmstat().fields() {
                    let _ = writeln!(s, "{name} {v}");
                }
                Ok(())
            }
            ProcFile::Slabinfo => Ok(()),
        };
        s
    }
}

/// The text of each of `files` on `pages`, in their order: the page
/// allocator's files first, as the machine is; then, if slabinfo is among
/// them, a slab allocator booted on it and its /proc/slabinfo.
pub fn render<P: Platform>(
    pages: &PageAllocator<P>,
    files: &[ProcFile],
) -> Result<Vec<String>, String> {
    let mut texts: Vec<String> = files.iter().map(|f| f.render(pages)).collect();
    if let Some(i) = files.iter().position(|&f| f == ProcFile::Slabinfo) {
        let slab = SlabAllocator::new(pages, SlabConfig::default())
            .map_err(|e| format!("SlabAllocator::new: {e}"))?;
        // Writing into a String cannot fail.
        let _ = kmem::slab::slabinfo::slabinfo(&slab, &mut texts[i]);
    }
    Ok(texts)
}

/// Runs `kmem stat`.
pub fn run(args: &StatArgs) -> ExitCode {
    let m = match Machine::default_machine() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("kmem stat: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut files: Vec<ProcFile> = Vec::new();
    for f in if args.files.is_empty() {
        &ProcFile::ALL[..]
    } else {
        &args.files[..]
    } {
        if !files.contains(f) {
            files.push(*f);
        }
    }
    let pages = m.pages();
    // JSON's vmstat numbers are taken before a slab allocator is booted,
    // as the text is.
    let mut vmstat = args.json.then(|| -> Map<String, Value> {
        pages
            .vmstat()
            .fields()
            .map(|(k, v)| (k.to_string(), Value::from(v)))
            .collect()
    });
    let texts = match render(pages, &files) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("kmem stat: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        let mut obj = Map::new();
        for (f, text) in files.iter().zip(texts) {
            let v = match f {
                // Files are listed once: taken at its one use.
                ProcFile::Vmstat => Value::Object(vmstat.take().unwrap_or_default()),
                _ => Value::String(text),
            };
            obj.insert(f.name().to_string(), v);
        }
        println!("{}", Value::Object(obj));
    } else {
        let many = files.len() > 1;
        for (i, (f, text)) in files.iter().zip(texts).enumerate() {
            if many {
                if i > 0 {
                    println!();
                }
                println!("==> {} <==", f.name());
            }
            print!("{text}");
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_renders_something() {
        let m = Machine::default_machine().unwrap();
        let texts = render(m.pages(), &ProcFile::ALL).unwrap();
        for (f, text) in ProcFile::ALL.iter().zip(&texts) {
            assert!(!text.is_empty(), "{} is empty", f.name());
        }
        assert!(ProcFile::Zoneinfo.render(m.pages()).contains("Normal"));
    }

    /// slabinfo is Linux's version 2.1 table of the booted caches; the
    /// page files are the machine's as it was before the slab allocator
    /// took its pages, whatever the order the files are asked in.
    #[test]
    fn slabinfo_shows_the_kmalloc_caches_and_leaves_the_page_files_alone() {
        let fresh = Machine::default_machine().unwrap();
        let mut alone = String::new();
        kmem::procfs::buddyinfo(fresh.pages(), &mut alone).unwrap();
        let m = Machine::default_machine().unwrap();
        let texts = render(m.pages(), &[ProcFile::Slabinfo, ProcFile::Buddyinfo]).unwrap();
        assert_eq!(texts[1], alone, "buddyinfo changed by the slab boot");
        let slabinfo = &texts[0];
        let mut lines = slabinfo.lines();
        assert_eq!(lines.next(), Some("slabinfo - version: 2.1"));
        assert!(lines.next().unwrap().starts_with("# name "));
        let row = |name: &str| -> Vec<String> {
            slabinfo
                .lines()
                .find(|l| l.split_whitespace().next() == Some(name))
                .unwrap_or_else(|| panic!("no {name} row in\n{slabinfo}"))
                .split_whitespace()
                .map(str::to_string)
                .collect()
        };
        // name active num objsize objperslab pagesperslab ...
        for (name, size) in [("kmalloc-64", 64), ("kmalloc-96", 96), ("kmalloc-8k", 8192)] {
            let r = row(name);
            assert_eq!(r[3], size.to_string(), "{name} objsize");
            let per_slab: usize = r[4].parse().unwrap();
            let pages: usize = r[5].parse().unwrap();
            assert!(per_slab * size <= pages * 4096, "{name}: {r:?}");
            assert!(per_slab > 0 && pages.is_power_of_two(), "{name}: {r:?}");
        }
        // The slab allocator's own cache holds the caches' descriptors.
        let r = row("kmem_cache");
        assert!(r[1].parse::<usize>().unwrap() > 0, "{r:?}");
    }

    #[test]
    fn value_names_are_the_proc_names() {
        for f in ProcFile::ALL {
            let pv = f.to_possible_value().unwrap();
            assert_eq!(pv.get_name(), f.name());
        }
    }
}
