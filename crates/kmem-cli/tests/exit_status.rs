//! The `kmem` command's exit status on input it cannot use: a file that is
//! not a trace at all must fail (with a message saying so), not print an
//! empty report and succeed; a real trace succeeds.

use std::path::PathBuf;
use std::process::Command;

fn kmem(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kmem"))
        .args(args)
        .output()
        .expect("the kmem binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kmem-cli-exit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn a_file_of_only_malformed_lines_fails_with_a_reason() {
    let junk: Vec<u8> = (0..4000u32)
        .map(|i| {
            if i % 61 == 60 {
                b'\n'
            } else {
                b'a' + (i % 26) as u8
            }
        })
        .collect();
    let p = scratch("junk.txt", &junk);
    let p = p.to_str().unwrap();
    for cmd in ["replay", "analyze"] {
        let (code, err) = kmem(&[cmd, p]);
        assert_eq!(code, 1, "kmem {cmd} on junk: {err}");
        assert!(err.contains("no event parsed"), "kmem {cmd}: {err}");
    }
}

#[test]
fn a_real_trace_succeeds() {
    // A few real lines (Linux 6.18 text format), one of each kind used.
    let text = "\
# tracer: nop
           cargo-9571    [001] ...1.   263.018527: kmalloc: call_site=alloc_fdtable+0x55/0x140 ptr=ffff888100873500 bytes_req=64 bytes_alloc=64 gfp_flags=GFP_KERNEL node=-1 accounted=false
           cargo-9571    [001] ...1.   263.018530: kfree: call_site=free_fdtable_rcu+0x1a/0x40 ptr=ffff888100873500
";
    let p = scratch("real.txt", text.as_bytes());
    let p = p.to_str().unwrap();
    for cmd in ["replay", "analyze"] {
        let (code, err) = kmem(&[cmd, p]);
        assert_eq!(code, 0, "kmem {cmd} on a real trace: {err}");
    }
}
