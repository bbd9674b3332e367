//! Claims the docs and `kmem tour` make, checked against what the code
//! does (found wrong in review): the README's page-allocator example can
//! use `?` with one error type, `tour --json`'s `min_free_kbytes` is
//! `vm.min_free_kbytes`, the tour's bounce-pool range holds the pool, and
//! the module docs' figures and defaults (each test names its claim).

use std::process::Command;
use std::sync::OnceLock;

fn kmem(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kmem"))
        .args(args)
        .output()
        .expect("the kmem binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tour_text() -> &'static str {
    static T: OnceLock<String> = OnceLock::new();
    T.get_or_init(|| {
        let (rc, out, err) = kmem(&["tour"]);
        assert_eq!(rc, 0, "kmem tour failed: {err}");
        out
    })
}

fn tour_json() -> &'static serde_json::Value {
    static T: OnceLock<serde_json::Value> = OnceLock::new();
    T.get_or_init(|| {
        let (rc, out, err) = kmem(&["tour", "--json"]);
        assert_eq!(rc, 0, "kmem tour --json failed: {err}");
        serde_json::from_str(&out).expect("tour --json is JSON")
    })
}

/// README.md "Using the page allocator" uses `?` on `Machine::new`
/// (`MachineError`), `alloc_pages` (`AllocError`) and `free_pages`
/// (`FreeError`) in one function: the only common target is
/// `Box<dyn Error>` (or anyhow), which needs `std::error::Error` on each,
/// and on every other public error type of the core.
#[test]
fn error_types_are_std_errors() {
    fn is_error<T: std::error::Error + Send + Sync + 'static>() {}
    is_error::<kmem_host::MachineError>();
    is_error::<kmem::AllocError>();
    is_error::<kmem::FreeError>();
    is_error::<kmem::slab::SlabFreeError>();
    is_error::<kmem::slab::ReallocError>();
    is_error::<kmem::vmalloc::VmallocError>();
    is_error::<kmem::vmalloc::VfreeError>();
    is_error::<kmem::kvmalloc::KvError>();
    is_error::<kmem::kvmalloc::KvFreeError>();
    is_error::<kmem::dma::DmaError>();
    is_error::<kmem::paging::MapError>();
    let e: Box<dyn std::error::Error> = Box::new(kmem::AllocError::InNmi);
    assert!(!e.to_string().is_empty());
}

fn isqrt(n: u64) -> u64 {
    let mut x = (n as f64).sqrt() as u64;
    while x * x > n {
        x -= 1;
    }
    while (x + 1) * (x + 1) <= n {
        x += 1;
    }
    x
}

fn parse_hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap()
}

/// `tour --json`: `machine.min_free_kbytes` is vm.min_free_kbytes,
/// sqrt(16 x lowmem KiB) as the README says (Linux's
/// calculate_min_free_kbytes); it used to be the sum of the zones' min
/// watermarks, which is now `zone_min_kbytes_total`.
#[test]
fn tour_json_min_free_kbytes_is_vm_min_free_kbytes() {
    let j = tour_json();
    let managed: u64 = j["machine"]["zones"]
        .as_array()
        .unwrap()
        .iter()
        .map(|z| z["managed"].as_u64().unwrap())
        .sum();
    let expected = isqrt(managed * 4 * 16).clamp(128, 262_144);
    let got = j["machine"]["min_free_kbytes"].as_u64().unwrap();
    assert_eq!(got, expected, "sqrt(16 x {} KiB)", managed * 4);
    let total = j["machine"]["zone_min_kbytes_total"].as_u64().unwrap();
    assert!(total > 0 && total <= expected + 4, "{total} vs {expected}");
}

/// The tour's bounce-pool line: "N MiB in K blocks between A and B". It
/// used to say "N MiB at A..B" with a range of 496 MiB for a 64 MiB pool.
#[test]
fn tour_bounce_pool_line_holds_the_pool() {
    let t = tour_text();
    let i = t.find("The bounce pool: ").expect("bounce pool line");
    let rest: Vec<&str> = t[i + "The bounce pool: ".len()..]
        .split_whitespace()
        .collect();
    // N MiB in K blocks between A and B, ...
    assert_eq!(
        (rest[1], rest[2], rest[4], rest[5]),
        ("MiB", "in", "blocks", "between")
    );
    let mib: u64 = rest[0].parse().unwrap();
    let blocks: u64 = rest[3].parse().unwrap();
    let (a, b) = (parse_hex(rest[6]), parse_hex(rest[8].trim_end_matches(',')));
    assert!(blocks >= 1 && mib > 0);
    assert!(b - a >= mib << 20, "{mib} MiB between {a:#x} and {b:#x}");
}

fn machine(nr_cpus: usize) -> kmem_host::Machine {
    kmem_host::Machine::new(kmem_host::MachineConfig {
        ram_bytes: 64 << 20,
        nr_cpus,
        ..Default::default()
    })
    .expect("machine")
}

/// The `kmem_cache` cache's object size with `nr_cpus` CPUs.
fn kmem_cache_object_size(nr_cpus: usize) -> usize {
    let m = machine(nr_cpus);
    let s =
        kmem::slab::SlabAllocator::new(m.pages(), kmem::slab::SlabConfig::default()).expect("slab");
    let size = s
        .find_cache("kmem_cache")
        .expect("the bootstrap cache")
        .object_size();
    drop(s);
    size
}

/// The slab module doc's drawback: a `kmem_cache` object grows by "N bytes
/// per CPU". It said "about 200" while the per-CPU state was 320 bytes.
#[test]
fn slab_doc_per_cpu_bytes_of_a_kmem_cache() {
    let doc = include_str!("../../kmem/src/slab/mod.rs");
    let i = doc.find(" bytes per CPU").expect("the per-CPU size claim");
    let n: usize = doc[..i]
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .expect("a number before 'bytes per CPU'");
    let (one, two, four) = (
        kmem_cache_object_size(1),
        kmem_cache_object_size(2),
        kmem_cache_object_size(4),
    );
    assert_eq!((two - one, four - two), (n, 2 * n), "{one} {two} {four}");
}

/// The kmalloc module doc: above KMALLOC_MAX_SIZE kmalloc warns once per
/// page allocator, one warning shared with alloc_pages above
/// MAX_PAGE_ORDER (it said "on every call").
#[test]
fn oversize_kmalloc_warns_once_per_allocator() {
    let doc = include_str!("../../kmem/src/slab/kmalloc.rs");
    assert!(doc.contains("once per page allocator"));
    assert!(!doc.contains("on every\n//! call"));
    let m = machine(2);
    let s =
        kmem::slab::SlabAllocator::new(m.pages(), kmem::slab::SlabConfig::default()).expect("slab");
    let big = kmem::slab::KMALLOC_MAX_SIZE + 1;
    assert!(s.kmalloc(big, kmem::gfp::GFP_KERNEL).is_err());
    assert!(s.kmalloc(big, kmem::gfp::GFP_KERNEL).is_err());
    assert!(m
        .pages()
        .alloc_pages(kmem::gfp::GFP_KERNEL, kmem::MAX_PAGE_ORDER + 1)
        .is_err());
    let log = m.platform().take_log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(log[0].contains("KMALLOC_MAX_SIZE"), "{log:?}");
}

/// The vmalloc module doc's diagram: a purge frees emptied page tables only
/// with `VmallocConfig::free_page_tables`, which is off by default (the
/// diagram said every purge frees them).
#[test]
fn vmalloc_purge_frees_tables_only_when_configured() {
    assert!(!kmem::vmalloc::VmallocConfig::default().free_page_tables);
    assert!(!kmem::vmalloc::VmallocConfig::range(0x1000, 0x2000).free_page_tables);
    let doc = include_str!("../../kmem/src/vmalloc/mod.rs");
    assert!(doc.contains("free emptied tables (only with `free_page_tables`, off by"));
}
