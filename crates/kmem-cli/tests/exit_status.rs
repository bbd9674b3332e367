//! The `kmem` command's exit status on input it cannot use: a file that is
//! not a trace at all must fail (with a message saying so), not print an
//! empty report and succeed; a real trace succeeds, read from a file or a
//! pipe; a bad option fails before any work; a closed stdout ends the
//! command quietly.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

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

/// A trace of `pairs` kmalloc/kfree pairs (distinct pointers, rising
/// timestamps) after a header naming 2 CPUs.
fn synthetic(pairs: usize) -> String {
    let mut t = String::from("# tracer: nop\n#\n# entries-in-buffer/entries-written: 0/0   #P:2\n");
    for i in 0..pairs {
        let ptr = 0xffff_8881_0000_0000u64 + (i as u64) * 64;
        let ts = 263.0 + i as f64 * 1e-5;
        t += &format!("           cargo-9571    [001] ...1.   {ts:.6}: kmalloc: call_site=alloc_fdtable+0x55/0x140 ptr={ptr:x} bytes_req=64 bytes_alloc=64 gfp_flags=GFP_KERNEL node=-1 accounted=false\n");
        t += &format!("           cargo-9571    [001] ...1.   {:.6}: kfree: call_site=free_fdtable_rcu+0x1a/0x40 ptr={ptr:x}\n", ts + 5e-6);
    }
    t
}

/// `kmem replay --json` on `input` (a path), fed `stdin`: (exit code, the
/// report's event count, stderr).
fn replay_events(input: &str, stdin: Option<Vec<u8>>) -> (i32, u64, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kmem"));
    c.args(["replay", "--json", input])
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let feeder = stdin.map(|bytes| {
        let mut w = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            let _ = w.write_all(&bytes);
        })
    });
    let out = child.wait_with_output().unwrap();
    if let Some(f) = feeder {
        f.join().unwrap();
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    (
        out.status.code().unwrap_or(-1),
        json["events"].as_u64().unwrap_or(0),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A trace read from a pipe replays every event. A first version read the
/// input twice (once ahead for the header's CPU count), so a pipe lost its
/// first buffer of events to that look and a piped .zst its frame header.
#[test]
fn a_trace_from_a_pipe_replays_every_event() {
    let text = synthetic(3000);
    let file = scratch("pipe-src.txt", text.as_bytes());
    let (code, from_file, err) = replay_events(file.to_str().unwrap(), None);
    assert_eq!((code, from_file), (0, 6000), "{err}");
    let (code, piped, err) = replay_events("/dev/stdin", Some(text.clone().into_bytes()));
    assert_eq!((code, piped), (0, 6000), "plain text through a pipe: {err}");
    let zst = zstd::encode_all(text.as_bytes(), 3).unwrap();
    let (code, piped, err) = replay_events("/dev/stdin", Some(zst));
    assert_eq!((code, piped), (0, 6000), ".zst through a pipe: {err}");
}

/// Input with no kmem event at all fails and says what it held (a first
/// version printed an empty report and exit 0 unless every line was
/// malformed).
#[test]
fn input_without_kmem_events_fails_and_says_what_it_held() {
    let other = "          <idle>-0       [000] d..2.   100.000001: sched_switch: prev_comm=swapper/0 prev_pid=0 prev_prio=120 prev_state=R ==> next_comm=kworker/0:1 next_pid=12 next_prio=120\n".repeat(50);
    let cases = [
        ("empty.txt", String::new(), "empty"),
        (
            "header.txt",
            "# tracer: nop\n#\n".to_string(),
            "a header and comments only",
        ),
        ("other.txt", other, "only 50 events of other tracers"),
    ];
    for (name, text, says) in cases {
        let p = scratch(name, text.as_bytes());
        let p = p.to_str().unwrap();
        for cmd in ["replay", "analyze"] {
            let (code, err) = kmem(&[cmd, p]);
            assert_eq!(code, 1, "kmem {cmd} on {name}: {err}");
            assert!(err.contains(says), "kmem {cmd} on {name}: {err}");
        }
    }
}

/// A bad --plot directory fails before the replay (a first version replayed
/// the whole trace, then failed to write the charts and printed nothing).
#[test]
fn a_bad_plot_directory_fails_first() {
    let trace = scratch("plot-src.txt", synthetic(10).as_bytes());
    let file = scratch("not-a-dir", b"x");
    let out = Command::new(env!("CARGO_BIN_EXE_kmem"))
        .args([
            "replay",
            "--plot",
            file.to_str().unwrap(),
            trace.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not a directory"), "{err}");
    assert!(out.stdout.is_empty(), "no replay ran");
}

/// RAM beyond what the replay machine can map is refused up front, naming
/// where the size came from (a first version failed inside the machine's
/// memory map with "region 4 reaches the last page below 16 TiB").
#[test]
fn ram_beyond_the_machine_limit_is_refused_with_its_source() {
    let trace = scratch("ram-src.txt", synthetic(10).as_bytes());
    let trace = trace.to_str().unwrap();
    let (code, err) = kmem(&["replay", "--ram", "17T", trace]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("maximum"), "{err}");
    let dir = std::env::temp_dir().join(format!("kmem-cli-bigram-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("before.meminfo"), "MemTotal: 21474836480 kB\n").unwrap();
    std::fs::copy(trace, dir.join("trace")).unwrap();
    let (code, err) = kmem(&["replay", dir.join("trace").to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("MemTotal of") && err.contains("limit"),
        "{err}"
    );
}

/// Time running backwards (concatenated or reordered traces) is reported
/// (a first version gave "0.000 s" of trace time and no churn, silently).
#[test]
fn timestamps_running_backwards_are_reported() {
    let text = synthetic(100);
    let mut lines: Vec<&str> = text.lines().collect();
    lines[3..].reverse();
    let p = scratch("backwards.txt", (lines.join("\n") + "\n").as_bytes());
    let out = Command::new(env!("CARGO_BIN_EXE_kmem"))
        .args(["analyze", p.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("199 events carry a timestamp earlier"),
        "{text}"
    );
}

/// Output to a pipe closed early ends the command quietly (SIGPIPE), as
/// for any filter; it used to panic ("failed printing to stdout") and exit
/// 101.
#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let mut child = Command::new(env!("CARGO_BIN_EXE_kmem"))
        .arg("stat")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("RUST_BACKTRACE")
        .spawn()
        .unwrap();
    // The read end closed before the first line is out (building the
    // machine takes milliseconds): every byte of output has nowhere to go.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        out.status.signal(),
        Some(13),
        "SIGPIPE: {:?} {err}",
        out.status
    );
}
