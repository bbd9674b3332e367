//! `kmem tour`: the allocator's rules, demonstrated live on a hosted machine.
//!
//! The tour builds the default machine (1 GiB over DMA, DMA32 and Normal, 2
//! CPUs), pins itself to CPU 0, and runs its sections in order. Each section
//! is a real experiment: it drives the allocator into the state it talks
//! about, makes the calls, and prints what came back. Nothing is hard-coded;
//! every figure is read from the allocator or a clock during the run.
//!
//! # Shape
//! - [`Out`] collects the text (headings, one-line explanations, aligned
//!   [`Table`]s) and the claims that failed. A section states each claim it
//!   makes with [`Out::check`]; a claim the run did not bear out is printed
//!   plainly and makes the command exit non-zero. An unexpected error ends
//!   the tour the same way.
//! - Each section returns a `serde_json::Value`; with `--json` the tour
//!   prints one object with the sections as keys instead of the text.
//! - Sections: [`machine`] (zones, watermarks, reserves, per-CPU lists),
//!   [`pages`] (reserves, reclaim, wrong context, fragmentation),
//!   [`slab`] (kmalloc's classes, limit, red zones, fast-path cost),
//!   [`vmalloc`] (fragmentation, kmalloc against vmalloc cost, TLB) and
//!   [`dma`] (why DMA needs physical contiguity).
//!
//! The tour must leave the machine as it found it: after the last section
//! every CPU's lists are drained and the free page count must equal the one
//! at the start.

/// `say!(out, "format", args...)`: one line of tour text.
macro_rules! say {
    ($o:expr, $($arg:tt)*) => {
        $o.say(format_args!($($arg)*))
    };
}

mod dma;
mod machine;
mod pages;
mod slab;
mod vmalloc;

use clap::Args;
use kmem::gfp::ZoneType;
use kmem::page::PageAllocator;
use kmem::{Pfn, Platform};
use kmem_host::Machine;
use serde_json::{json, Map, Value};
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

/// Long help of `kmem tour`.
pub const LONG_ABOUT: &str = "\
Runs live experiments on the default hosted machine (1 GiB of RAM in a memfd,
laid out over the DMA, DMA32 and Normal zones, 2 CPUs) and prints what
happened. Every number is measured during the run; nothing is canned.

  0. The machine: each zone's spanned/present/managed pages, its min/low/high
     watermarks, its lowmem protection and its per-CPU list sizes.
  1. Reserves: with every zone at its GFP_NOWAIT floor (the min watermark,
     plus lowmem protection in DMA and DMA32), GFP_NOWAIT fails while
     GFP_ATOMIC in an IRQ handler still succeeds from the reserve, and how
     many more pages the reserve holds.
  2. Reclaim: GFP_KERNEL (a system call may sleep) runs a shrinker and
     succeeds; GFP_NOWAIT never reclaims. The counters that moved, and what
     the slow path cost compared to the fast path.
  3. Wrong context: GFP_KERNEL in an IRQ handler or under a spinlock is
     reported as a sleeping allocation in atomic context and fails.
  4. Fragmentation: with half of a zone free in single pages, an order-4
     allocation fails; once the buddies are freed, it succeeds.
  5. kmalloc: ksize shows each request's size class (kmalloc-96, ...,
     pages above 8 KiB) and the bytes wasted; kmalloc(4 MiB) works while
     kmalloc(4 MiB + 1) fails with a warning (silent with __GFP_NOWARN);
     kmalloc(0) is ZERO_SIZE_PTR; with slab_debug, writes past the request
     and past the object are reported as Linux reports them; the cost of
     kmalloc(64)+kfree beside an order-0 page pair.
  6. vmalloc and fragmentation: with no 1 MiB block left, kmalloc(1 MiB,
     GFP_ATOMIC) fails while vmalloc(64 MiB) succeeds from scattered pages;
     kvmalloc falls back to vmalloc with GFP_KERNEL, not with GFP_ATOMIC.
  7. Cost: kmalloc+kfree against vmalloc+vfree at 4 KiB, 64 KiB, 1 MiB and
     4 MiB, on kmem's in-memory x86-64 tables and on the hosted mapping,
     with the page-table entries each allocation writes.
  8. TLB: a 64 MiB scan through the TLB model (misses, page-walk memory
     references) for the direct map with 2 MiB and 1 GiB entries, vmalloc
     and vmalloc_huge, beside the same scans timed on this machine.
  9. Why contiguous? A simulated NIC fills a kmalloc buffer by physical
     address; the same transfer into a vmalloc buffer treated as contiguous
     lands in other frames (named, with the damage); the scatter-gather
     mapping of that buffer works; a 32-bit device bounces a buffer above
     4 GiB through swiotlb, with the copies counted and timed.

Reading the output: counts are 4 KiB pages unless a unit is given; zone
names, GFP masks and /proc lines are spelled as Linux spells them; warnings
and reports follow Linux's wording where Linux has one (the kmalloc size-limit
warning is kmem's: Linux's is a page allocator WARN_ON_ONCE that does not
name kmalloc; slab reports leave out Linux's taint field).
A line starting with `NOT SHOWN:` means the run did not bear out a claim;
the command then exits with status 1.

--json prints one object instead: one key per section (machine, reserves,
reclaim, wrong_context, fragmentation, kmalloc, vmalloc_fragmentation,
vmalloc_cost, vmalloc_tlb, dma), plus clean, failures and ok. Numbers are
JSON numbers: times in nanoseconds; sizes in bytes in the kmalloc section
and where the key ends in _bytes, in KiB where it ends in _kbytes, in pages
elsewhere.";

/// Arguments of `kmem tour`.
#[derive(Args, Debug)]
pub struct TourArgs {
    /// Print one JSON object (sections as keys) instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs the tour and prints it; exit status 1 if any claim was not shown.
pub fn run(args: &TourArgs) -> ExitCode {
    let m = match Machine::default_machine() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("kmem tour: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (o, obj) = tour(&m);
    if args.json {
        println!("{}", Value::Object(obj));
    } else {
        print!("{}", o.text);
    }
    if o.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        if args.json {
            for f in &o.failures {
                eprintln!("kmem tour: NOT SHOWN: {f}");
            }
        }
        ExitCode::FAILURE
    }
}

/// Runs every section on `m` (which must be fresh) from the calling thread,
/// pinned to CPU 0; returns the text and the JSON object.
pub fn tour(m: &Machine) -> (Out, Map<String, Value>) {
    // One CPU for the whole tour, so per-CPU lists are predictable.
    kmem_host::set_cpu(0);
    let mut o = Out::default();
    let mut obj = Map::new();
    let start_free = m.pages().nr_free_pages();

    let result = machine::run(m, &mut o)
        .map(|v| {
            obj.insert("machine".into(), v);
        })
        .and_then(|()| pages::run(m, &mut o, &mut obj))
        .and_then(|()| slab::run(m, &mut o, &mut obj, 5))
        .and_then(|()| vmalloc::run(m, &mut o, &mut obj, 6))
        .and_then(|()| dma::run(m, &mut o, &mut obj, 9));
    if let Err(e) = result {
        o.fail(format!("the tour stopped on an unexpected error: {e}"));
    }

    // The machine must be as we found it.
    m.pages().drain_all_pages();
    let end_free = m.pages().nr_free_pages();
    o.blank();
    o.say(format_args!(
        "Machine clean: {} pages free after draining the per-CPU lists ({} at the start).",
        group(end_free as u64),
        group(start_free as u64)
    ));
    o.check(
        end_free == start_free,
        format!("the tour returned every page ({end_free} free now, {start_free} at the start)"),
    );
    obj.insert(
        "clean".into(),
        json!({ "free_pages_start": start_free, "free_pages_end": end_free }),
    );
    obj.insert("failures".into(), json!(o.failures));
    obj.insert("ok".into(), json!(o.failures.is_empty()));
    (o, obj)
}

/// What a section failed on unexpectedly (an allocation that had to work,
/// a free the allocator refused).
pub type TourError = String;

/// The tour's text output and its failed claims.
#[derive(Default)]
pub struct Out {
    text: String,
    failures: Vec<String>,
}

impl Out {
    /// A numbered section heading.
    pub fn heading(&mut self, n: u32, title: &str) {
        if !self.text.is_empty() {
            self.text.push('\n');
        }
        let line = format!("{n}. {title}");
        let _ = writeln!(self.text, "{line}\n{}", "=".repeat(line.len()));
    }

    /// One line of text.
    pub fn say(&mut self, args: std::fmt::Arguments<'_>) {
        let _ = writeln!(self.text, "{args}");
    }

    /// An empty line.
    pub fn blank(&mut self) {
        self.text.push('\n');
    }

    /// Lines quoted verbatim (a log, a /proc line), indented by four spaces.
    pub fn quote(&mut self, text: &str) {
        for line in text.lines() {
            let _ = writeln!(self.text, "    {line}");
        }
    }

    /// Records `claim`; if it was not shown, says so plainly. Returns `ok`.
    pub fn check(&mut self, ok: bool, claim: impl Into<String>) -> bool {
        if !ok {
            self.fail(claim.into());
        }
        ok
    }

    /// Records a failure and prints it.
    pub fn fail(&mut self, what: String) {
        let _ = writeln!(self.text, "NOT SHOWN: {what}");
        self.failures.push(what);
    }

    /// Prints a table.
    pub fn table(&mut self, t: &Table) {
        t.render(&mut self.text);
    }
}

/// An aligned text table: the first column left-aligned, the others
/// right-aligned, two spaces between columns, indented by two.
pub struct Table {
    head: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headings.
    pub fn new(head: &[&str]) -> Table {
        Table {
            head: head.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (cells beyond the headings are ignored).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self, out: &mut String) {
        let ncol = self.head.len();
        let mut width: Vec<usize> = self.head.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |out: &mut String, cells: &[String]| {
            let mut s = String::from("  ");
            for (i, w) in width.iter().enumerate().take(ncol) {
                let c = cells.get(i).map(String::as_str).unwrap_or("");
                if i == 0 {
                    let _ = write!(s, "{c:<w$}");
                } else {
                    let _ = write!(s, "  {c:>w$}");
                }
            }
            out.push_str(s.trim_end());
            out.push('\n');
        };
        line(out, &self.head);
        for r in &self.rows {
            line(out, r);
        }
    }
}

/// A duration per operation, in a readable unit (`23 ns`, `4.1 µs`, `2.3 ms`).
pub fn fmt_ns(ns: f64) -> String {
    if ns < 1_000.0 {
        format!("{ns:.0} ns")
    } else if ns < 1_000_000.0 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{:.1} ms", ns / 1e6)
    }
}

/// Nanoseconds per operation.
pub fn per_op(d: Duration, ops: usize) -> f64 {
    d.as_nanos() as f64 / ops.max(1) as f64
}

/// A count with thousands separators (`261,632`).
pub fn group(n: impl Into<u64>) -> String {
    let s = n.into().to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// The zone type a pfn belongs to (node 0 machines: the first zone whose
/// span holds it).
pub fn zone_of<P: Platform>(pages: &PageAllocator<P>, pfn: Pfn) -> Option<ZoneType> {
    pages
        .populated_zones()
        .find(|z| pfn.0 >= z.start_pfn() && pfn.0 < z.start_pfn() + z.spanned_pages())
        .map(|z| z.zone_type())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&["zone", "free"]);
        t.row(vec!["DMA".into(), "7".into()]);
        t.row(vec!["Normal".into(), "12345".into()]);
        let mut s = String::new();
        t.render(&mut s);
        assert_eq!(s, "  zone     free\n  DMA         7\n  Normal  12345\n");
    }

    #[test]
    fn the_tour_shows_every_claim() {
        let m = Machine::default_machine().unwrap();
        let (o, obj) = tour(&m);
        assert!(o.failures.is_empty(), "{}", o.text);
        assert_eq!(obj["ok"], json!(true));
        for key in [
            "machine",
            "reserves",
            "reclaim",
            "wrong_context",
            "fragmentation",
            "kmalloc",
            "vmalloc_fragmentation",
            "vmalloc_cost",
            "vmalloc_tlb",
            "dma",
        ] {
            assert!(obj.contains_key(key), "{key} missing");
        }
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(group(261_632u64), "261,632");
        assert_eq!(group(12u64), "12");
        assert_eq!(fmt_ns(23.4), "23 ns");
        assert_eq!(fmt_ns(4_100.0), "4.1 µs");
    }
}
