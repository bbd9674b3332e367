//! Boots kmem inside a real x86-64 kernel under QEMU and checks what it says.
//!
//! The kernel is `examples/baremetal` (its own Cargo package, outside the
//! workspace, with its own target flags and `target/` directory). This test
//! builds it with `cargo build --release` in that directory, boots it with
//! `qemu-system-x86_64 -kernel` (PVH entry, TCG, 1.5 GiB laid out so that the
//! DMA, DMA32 and Normal zones all exist), and checks the serial log line by
//! line and the exit status the kernel sets through isa-debug-exit
//! (33 = pass): page allocations of every order through the direct map,
//! kmalloc and kmem_cache, GFP_ATOMIC allocations from the timer interrupt
//! and the one deliberate GFP_KERNEL there reported as a sleeping allocation
//! in atomic context, kmem's x86-64 page tables walked by the CPU with a
//! guard page that faults, kmem's vmalloc over those tables (vmalloc,
//! vzalloc, vmalloc_huge: written through the vmalloc address, read back
//! through the direct map, guard pages that fault, vfree and purge with
//! real TLB flushes), and nothing leaked.
//!
//! Without QEMU the test cannot run. It then says so on stderr and returns,
//! unless the `CI` environment variable is set: CI installs QEMU
//! (`.ci/run`), so there a missing QEMU is a failure, never a silent pass.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const QEMU: &str = "qemu-system-x86_64";
/// isa-debug-exit turns the kernel's 0x10 into exit status (0x10 << 1) | 1.
const EXIT_PASS: i32 = 33;
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn kernel_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/baremetal")
}

/// Builds the kernel; returns the ELF.
fn build_kernel(dir: &Path) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(dir).args(["build", "--release"]);
    // The kernel's flags live in its .cargo/config.toml; anything from the
    // outer build's environment would override them or move its output.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd
        .output()
        .expect("cannot run cargo to build examples/baremetal");
    assert!(
        out.status.success(),
        "building examples/baremetal failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let elf = dir.join("target/x86_64-unknown-linux-gnu/release/kmem-baremetal");
    assert!(
        elf.is_file(),
        "the build left no kernel at {}",
        elf.display()
    );
    elf
}

/// Boots the kernel; returns its exit status, serial log and QEMU's stderr.
fn boot(qemu: &Path, elf: &Path) -> (ExitStatus, String, String) {
    let mut child = Command::new(qemu)
        .args(["-machine", "pc,max-ram-below-4g=1G", "-m", "1536M"])
        .arg("-kernel")
        .arg(elf)
        .args(["-append", "kmem-baremetal-test"])
        .args(["-serial", "stdio", "-display", "none", "-no-reboot"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start qemu-system-x86_64");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for QEMU") {
            break status;
        }
        if start.elapsed() > BOOT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            let log = String::from_utf8_lossy(&out.join().unwrap()).replace('\r', "");
            panic!("QEMU did not exit within {BOOT_TIMEOUT:?}; serial log so far:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = String::from_utf8_lossy(&out.join().unwrap()).replace('\r', "");
    let err = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
    (status, log, err)
}

#[test]
fn baremetal_kernel_boots_and_runs_kmem() {
    let Some(qemu) = find_in_path(QEMU) else {
        if std::env::var_os("CI").is_some() {
            panic!(
                "{QEMU} is not installed, and CI is set: .ci/run installs Debian's qemu-system-x86, \
                 so the bare-metal boot test must run here"
            );
        }
        // Straight to the stderr handle: the test harness captures `eprintln!`
        // of passing tests, and this notice must be seen.
        let _ = writeln!(
            std::io::stderr(),
            "baremetal_boot: SKIPPED, NOT RUN: {QEMU} is not in PATH, so kmem was not booted on bare \
             metal. Install Debian's qemu-system-x86 (`apt-get install -y qemu-system-x86`) to run \
             this test; with CI set, a missing QEMU fails it."
        );
        return;
    };

    let dir = kernel_dir();
    let elf = build_kernel(&dir);
    let (status, log, qemu_err) = boot(&qemu, &elf);
    let saved = dir.join("target/serial.log");
    let _ = std::fs::write(&saved, &log);
    let fail = |what: String| -> ! {
        panic!(
            "{what}\n--- QEMU stderr ---\n{qemu_err}\n--- serial log (also in {}) ---\n{log}",
            saved.display()
        )
    };

    if status.code() != Some(EXIT_PASS) {
        fail(format!(
            "the kernel did not exit with {EXIT_PASS} (pass) through isa-debug-exit: {status}"
        ));
    }
    let lines: Vec<&str> = log.lines().collect();
    let has = |prefix: &str, rest: &str| {
        lines
            .iter()
            .any(|l| l.starts_with(prefix) && l.contains(rest))
    };
    let expected: &[(&str, &str)] = &[
        ("e820: [mem ", "usable"),
        (
            "paging: direct map at 0xffff888000000000",
            "identity map dropped",
        ),
        ("kmem: page allocator up:", "in 3 zones"),
        ("[pages] zone DMA ", "managed"),
        ("[pages] zone DMA32 ", "managed"),
        ("[pages] zone Normal ", "managed"),
        (
            "[pages] order  0:",
            "written and read back through the direct map",
        ),
        (
            "[pages] order 10:",
            "written and read back through the direct map",
        ),
        (
            "[pages] GFP_KERNEL|GFP_DMA ",
            "zone DMA: written and read back",
        ),
        (
            "[pages] GFP_KERNEL|GFP_DMA32 ",
            "zone DMA32: written and read back",
        ),
        ("[pages] GFP_KERNEL ", "zone Normal: written and read back"),
        ("[pages] __GFP_ZERO:", "all zero"),
        ("[pages] double free of pfn", "refused"),
        ("[pages] exhaustion:", "page allocation failure: order:10"),
        ("[pages] verify:", "consistent"),
        ("[slab] kmalloc: 18 sizes", "no overlap, kfreed"),
        (
            "[slab] kmalloc(4194304): page-backed",
            "written and read back",
        ),
        ("[slab] kmalloc(0) = ZERO_SIZE_PTR", ""),
        ("[slab] kzalloc(200)", "all zero"),
        ("[slab] kmalloc(64, GFP_KERNEL|GFP_DMA)", "zone DMA"),
        (
            "[slab] kmem_cache baremetal_obj",
            "constructed, aligned, written, freed",
        ),
        ("[slab] kmem_cache_destroy(baremetal_obj): ok", ""),
        ("[slab] bad kfrees refused", ""),
        ("[slab] every cache shrunk", "nothing leaked"),
        (
            "BUG: sleeping function called from invalid context at src/run/irq.rs",
            "",
        ),
        ("in_atomic(): 1, irqs_disabled(): 1", "cpu: 0"),
        ("context: hard IRQ, IRQs disabled", ""),
        ("[irq] ", "timer interrupts taken"),
        ("[irq] handler: ", "GFP_ATOMIC allocations in hard IRQ"),
        ("[irq] handler: ", "GFP_ATOMIC kmallocs in hard IRQ"),
        (
            "[irq] GFP_KERNEL in the handler: refused and reported",
            "hard IRQ",
        ),
        ("[irq] vmstat: context_violation +1", ""),
        (
            "[guard] kmem X86PageTables mapped frames",
            "PML4 slot linked",
        ),
        ("[guard] kmem's walk and the live walk from CR3 agree", ""),
        (
            "[guard] wrote 16 KiB through 0xffffc90000001000",
            "identical",
        ),
        (
            "[guard] guard page read at 0xffffc90000005010: #PF caught, cr2=0xffffc90000005010",
            "not-present page, read",
        ),
        ("[guard] NULL read at 0x0: #PF caught, cr2=0x0", ""),
        ("[guard] unmapped", "free pages back to"),
        (
            "[vmalloc] kmem X86PageTables for 0xffffc90000000000",
            "PML4 slot linked into CR3's, pinned",
        ),
        (
            "[vmalloc] vmalloc(41083) = 0xffffc90000200000: 11 pages",
            "vmalloc_to_pfn = live walk from CR3 on every page",
        ),
        (
            "[vmalloc] vmalloc(41083) = ",
            "read back through the direct map of each frame: identical",
        ),
        (
            "[vmalloc] guard page read at 0xffffc9000020b010: #PF caught, cr2=0xffffc9000020b010",
            "not-present page, read",
        ),
        ("[vmalloc] vmalloc(524289) = ", "identical"),
        ("[vmalloc] vzalloc(262144) = ", "all zero"),
        ("[vmalloc] vmalloc_huge(4194304) = ", "read back"),
        (
            "[vmalloc] vmalloc(8192) = ",
            "3 real invlpg for its 3 pages",
        ),
        ("[vmalloc] purged small area read at ", "#PF caught"),
        (
            "[vmalloc] vfreed the other 3 areas",
            "real TLB flush issued",
        ),
        (
            "[vmalloc] freed area read at 0xffffc90000200000: #PF caught, cr2=0xffffc90000200000",
            "",
        ),
        ("[vmalloc] freed huge area read at ", "#PF caught"),
        (
            "[vmalloc] purges: ",
            "page tables freed by purge; real TLB:",
        ),
        ("[vmalloc] slot unlinked", "free pages back to"),
        ("pages    PASS", ""),
        ("slab     PASS", ""),
        ("irq      PASS", ""),
        ("guard    PASS", ""),
        ("vmalloc  PASS", ""),
        ("kmem: ", "1 context violations"),
        ("Node 0, zone   Normal", ""),
        ("kmem-baremetal: PASS", ""),
    ];
    for (prefix, rest) in expected {
        if !has(prefix, rest) {
            fail(format!(
                "no serial line starts with {prefix:?} and contains {rest:?}"
            ));
        }
    }
    // README.md quotes an excerpt of this log: each quoted line must be one
    // the kernel prints (its wording drifted before). Counts and addresses
    // are compared masked: they move with the kernel image's size, so with
    // the compiler that built it (a nightly build manages one page more).
    let readme = include_str!("../../../README.md");
    let excerpt = readme
        .split_once("An excerpt of the log:")
        .and_then(|(_, rest)| rest.split_once("```text\n"))
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(block, _)| block)
        .expect("README.md has the bare-metal log excerpt");
    let printed: Vec<String> = lines.iter().map(|l| number_masked(l)).collect();
    for quoted in excerpt.lines() {
        if !printed.contains(&number_masked(quoted)) {
            fail(format!(
                "README.md's log excerpt quotes a line the kernel did not print: {quoted:?}"
            ));
        }
    }
    if let Some(l) = lines.iter().find(|l| l.contains("SKIPPED")) {
        fail(format!("a section was skipped: {l}"));
    }
    let bugs = lines
        .iter()
        .filter(|l| l.starts_with("BUG: sleeping function called from invalid context"))
        .count();
    if bugs != 1 {
        fail(format!(
            "{bugs} sleep-in-atomic reports, expected exactly 1"
        ));
    }
    if let Some(l) = lines
        .iter()
        .find(|l| l.contains("FAIL") || l.contains("PANIC") || l.contains("FATAL"))
    {
        fail(format!("failure line in the serial log: {l}"));
    }
}

/// `line` with every number (a word that starts with a decimal digit:
/// `389808`, `0x11ec40`, `77`) replaced by `#`, so that lines of one format
/// with other counts or addresses compare equal. Words that merely contain
/// digits (`DMA32`, `x86`) stay.
fn number_masked(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    let mut prev_word = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() && !prev_word {
            while chars.peek().is_some_and(|d| d.is_ascii_alphanumeric()) {
                chars.next();
            }
            out.push('#');
            prev_word = true;
            continue;
        }
        prev_word = c.is_alphanumeric() || c == '_';
        out.push(c);
    }
    out
}

#[test]
fn number_masking_keeps_the_wording() {
    let a = "[vmalloc] vmalloc(41083) = 0xffffc90000200000: 11 pages (pfn 0x11ec40 .. 0x11ec07)";
    let b = "[vmalloc] vmalloc(41083) = 0xffffc90000400000: 12 pages (pfn 0x11ec41 .. 0x11ec08)";
    assert_eq!(number_masked(a), number_masked(b));
    assert_eq!(
        number_masked(a),
        "[vmalloc] vmalloc(#) = #: # pages (pfn # .. #)"
    );
    // Other words, or a number where a word was, do not compare equal.
    assert_ne!(
        number_masked(a),
        number_masked(&a.replace("pages", "frames"))
    );
    assert_ne!(
        number_masked("GFP_KERNEL|GFP_DMA32 -> zone DMA32"),
        number_masked("GFP_KERNEL|GFP_DMA -> zone DMA32")
    );
    assert_ne!(number_masked("min 12"), number_masked("min low"));
}
