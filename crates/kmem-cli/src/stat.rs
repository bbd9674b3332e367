//! `kmem stat`: the hosted machine's /proc files, in Linux's formats.
//!
//! Builds the default machine and renders the files through `kmem::procfs`
//! (buddyinfo, pagetypeinfo, zoneinfo, meminfo) and the page allocator's
//! counters (vmstat, one `name value` per line). The machine is fresh, so
//! this shows the state right after boot: every zone's free lists, its
//! watermarks and lowmem reserves, its per-CPU list sizes.
//!
//! With several files the text output puts a `==> name <==` header before
//! each (as `head` does); with one it prints the file alone, so it can be
//! piped to tools that parse the real /proc file.

use clap::{Args, ValueEnum};
use kmem::page::PageAllocator;
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
}

impl ProcFile {
    /// Every file, in the default order.
    pub const ALL: [ProcFile; 5] = [
        ProcFile::Buddyinfo,
        ProcFile::Pagetypeinfo,
        ProcFile::Zoneinfo,
        ProcFile::Meminfo,
        ProcFile::Vmstat,
    ];

    /// The file's name, as under /proc.
    pub fn name(self) -> &'static str {
        match self {
            ProcFile::Buddyinfo => "buddyinfo",
            ProcFile::Pagetypeinfo => "pagetypeinfo",
            ProcFile::Zoneinfo => "zoneinfo",
            ProcFile::Meminfo => "meminfo",
            ProcFile::Vmstat => "vmstat",
        }
    }

    /// Renders the file's text.
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
        };
        s
    }
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
    if args.json {
        let mut obj = Map::new();
        for f in &files {
            let v = match f {
                ProcFile::Vmstat => Value::Object(
                    pages
                        .vmstat()
                        .fields()
                        .map(|(k, v)| (k.to_string(), Value::from(v)))
                        .collect(),
                ),
                _ => Value::String(f.render(pages)),
            };
            obj.insert(f.name().to_string(), v);
        }
        println!("{}", Value::Object(obj));
    } else {
        let many = files.len() > 1;
        for (i, f) in files.iter().enumerate() {
            if many {
                if i > 0 {
                    println!();
                }
                println!("==> {} <==", f.name());
            }
            print!("{}", f.render(pages));
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
        for f in ProcFile::ALL {
            let text = f.render(m.pages());
            assert!(!text.is_empty(), "{} is empty", f.name());
        }
        assert!(ProcFile::Zoneinfo.render(m.pages()).contains("Normal"));
    }

    #[test]
    fn value_names_are_the_proc_names() {
        for f in ProcFile::ALL {
            let pv = f.to_possible_value().unwrap();
            assert_eq!(pv.get_name(), f.name());
        }
    }
}
