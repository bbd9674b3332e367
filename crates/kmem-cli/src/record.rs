//! `kmem record DIR SECONDS -- CMD`: a real Linux allocation trace, recorded
//! through tracefs while a command runs.
//!
//! Writes what `../shared/tools/capture-trace` writes, so `kmem replay` and
//! `kmem analyze` read either:
//!
//! ```text
//!  DIR/before.{buddyinfo,slabinfo,vmallocinfo,zoneinfo,meminfo,pagetypeinfo}   /proc before
//!  DIR/trace.zst                                                             ftrace text, zstd -19
//!  DIR/after.{...}                                                           /proc after
//!  DIR/kernel                                                                the kernel release
//! ```
//!
//! The steps are the script's, in its order: mount tracefs if it is not
//! there; snapshot; tracing off, buffer cleared, raw pointers
//! (`options/hash-ptr` 0) and the irq-info columns replay needs
//! (`options/irq-info` 1), a 128 MiB per-CPU buffer, the ten kmem/vmalloc
//! events enabled; tracing on; run CMD (output discarded, in a process
//! group of its own) and stop the whole group with SIGTERM after SECONDS,
//! as `timeout` does (SIGKILL if it lingers); tracing off; the buffer
//! streamed through zstd (level 19, every CPU) into `trace.zst` while event
//! lines are counted; events disabled; snapshot. Needs root. `--tracefs`
//! and `--proc` point elsewhere (tests use a fake tracefs directory).
//!
//! Differences from the script, which leaves tracefs as it set it:
//! whatever happens (an error, the command not starting), `kmem record`
//! disables its events and puts tracefs back as it found it: the buffer
//! size (128 MiB per CPU of kernel memory otherwise stays allocated; each
//! CPU's own size when they differed), `hash-ptr`, `irq-info`, the events
//! that were enabled and `tracing_on` (the trace buffer's old contents are
//! gone: recording clears it); it unmounts tracefs if it mounted it; the after snapshot is
//! taken once the buffer is given back, so it does not count it. SIGINT,
//! SIGTERM, SIGHUP or SIGQUIT end the recording early as the deadline does
//! (the trace so far is kept, the exit status is 130; before the command
//! started, it is not started); a second one kills the command's group at
//! once and abandons the compression, and tracefs is still restored. The
//! command dies with kmem (`PR_SET_PDEATHSIG`). Tracing that someone else
//! had on is left alone if `kmem record` fails before touching tracefs.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use clap::Args;

/// Long help of `kmem record`.
pub const LONG_ABOUT: &str = "\
Records a Linux kernel allocation trace while CMD runs (at most SECONDS), the
same files as capture-trace: DIR/trace.zst (ftrace text with raw pointers and
irq-info columns, zstd level 19) and /proc snapshots (buddyinfo, slabinfo,
vmallocinfo, zoneinfo, meminfo, pagetypeinfo) before and after, plus
DIR/kernel. Events: kmem:kmalloc, kfree, kmem_cache_alloc, kmem_cache_free,
mm_page_alloc, mm_page_free, mm_page_free_batched, vmalloc:alloc_vmap_area,
free_vmap_area_noflush, purge_vmap_area_lazy. Needs root and a kernel with
tracefs. Then: kmem replay DIR/trace.zst, kmem analyze DIR/trace.zst.

CMD's output is discarded. If CMD fails (a non-zero exit, or killed by a
signal before the deadline) the trace is kept, stderr says how CMD ended,
and kmem record exits with CMD's status (1 for a signal), as time(1) and
strace(1) do; a CMD still running at SECONDS is stopped, which is not a
failure.";

/// The events enabled, as `set_event` spells them.
pub const EVENTS: [&str; 10] = [
    "kmem:kmalloc",
    "kmem:kfree",
    "kmem:kmem_cache_alloc",
    "kmem:kmem_cache_free",
    "kmem:mm_page_alloc",
    "kmem:mm_page_free",
    "kmem:mm_page_free_batched",
    "vmalloc:alloc_vmap_area",
    "vmalloc:free_vmap_area_noflush",
    "vmalloc:purge_vmap_area_lazy",
];

/// The /proc files snapshotted.
pub const SNAPSHOTS: [&str; 6] = [
    "buddyinfo",
    "slabinfo",
    "vmallocinfo",
    "zoneinfo",
    "meminfo",
    "pagetypeinfo",
];

/// Per-CPU ring buffer size, KiB (the script's).
pub const BUFFER_KB: u32 = 131072;

/// Arguments of `kmem record`.
#[derive(Args, Debug)]
pub struct RecordArgs {
    /// Output directory (created if missing).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Longest the command may run, seconds (a finite number, at least 0).
    #[arg(value_name = "SECONDS", value_parser = parse_seconds)]
    pub seconds: f64,
    /// The command and its arguments, after `--`.
    #[arg(value_name = "CMD", last = true, required = true)]
    pub cmd: Vec<String>,
    /// tracefs mount point.
    #[arg(long, value_name = "DIR", default_value = "/sys/kernel/tracing")]
    pub tracefs: PathBuf,
    /// procfs mount point (for the snapshots and the kernel release).
    #[arg(long, value_name = "DIR", default_value = "/proc")]
    pub proc: PathBuf,
    /// zstd level.
    #[arg(long, value_name = "N", default_value_t = 19)]
    pub level: i32,
}

/// What a recording produced.
#[derive(Debug, PartialEq, Eq)]
pub struct Recorded {
    /// Event lines in the trace (lines not starting with `#`).
    pub events: u64,
    /// Bytes of trace text.
    pub text_bytes: u64,
    /// How the command ended: its exit code, or `None` if stopped by a signal.
    pub status: Option<i32>,
    /// True if the command was still running at the deadline (or when a
    /// signal ended the recording).
    pub timed_out: bool,
    /// True if SIGINT, SIGTERM or SIGHUP ended the recording early.
    pub interrupted: bool,
}

fn ctx<T>(r: io::Result<T>, what: impl FnOnce() -> String) -> Result<T, String> {
    r.map_err(|e| format!("{}: {e}", what()))
}

/// Writes `value` to tracefs file `name` (truncating, as `echo >` does).
fn put(t: &Path, name: &str, value: &str) -> Result<(), String> {
    let p = t.join(name);
    let mut f = ctx(
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p),
        || p.display().to_string(),
    )?;
    ctx(f.write_all(format!("{value}\n").as_bytes()), || {
        p.display().to_string()
    })
}

/// Appends `value` to tracefs file `name` (as `echo >>` does).
fn append(t: &Path, name: &str, value: &str) -> Result<(), String> {
    let p = t.join(name);
    let mut f = ctx(
        OpenOptions::new().append(true).create(true).open(&p),
        || p.display().to_string(),
    )?;
    ctx(f.write_all(format!("{value}\n").as_bytes()), || {
        p.display().to_string()
    })
}

/// Copies each /proc file to `DIR/WHEN.NAME`, skipping unreadable ones (as
/// the script's `2>/dev/null || true`).
fn snapshot(proc_dir: &Path, dir: &Path, when: &str) {
    for f in SNAPSHOTS {
        if let Ok(text) = fs::read(proc_dir.join(f)) {
            let _ = fs::write(dir.join(format!("{when}.{f}")), text);
        }
    }
}

/// Mounts tracefs at `t` unless it is already there; true if it mounted it.
fn ensure_tracefs(t: &Path) -> Result<bool, String> {
    if t.join("trace").exists() {
        return Ok(false);
    }
    rustix::mount::mount(
        "nodev",
        t,
        "tracefs",
        rustix::mount::MountFlags::empty(),
        None,
    )
    .map_err(|e| format!("mount -t tracefs nodev {}: {e}", t.display()))?;
    Ok(true)
}

/// A tracefs setting as it reads back, in the form it is written:
/// `buffer_size_kb` reads `7 (expanded: 1408)` before first use.
fn setting(t: &Path, name: &str) -> Option<String> {
    let s = fs::read_to_string(t.join(name)).ok()?;
    let s = s.trim();
    let v = match s.split_once("(expanded:") {
        Some((_, rest)) => rest.trim_end_matches(')').trim(),
        None => s,
    };
    (!v.is_empty()).then(|| v.to_string())
}

/// The tracefs state `kmem record` changes, as it was before.
struct Saved {
    /// Plain settings, in the form they are written back.
    settings: Vec<(&'static str, String)>,
    /// `per_cpu/cpuN/buffer_size_kb` when the CPUs' buffers differ (the
    /// top-level file then reads `X`).
    per_cpu_kb: Vec<(PathBuf, String)>,
    /// The events that were enabled (`set_event`, one per line).
    events: Vec<String>,
    /// `tracing_on` was 1.
    tracing_on: bool,
}

impl Saved {
    fn read(t: &Path) -> Saved {
        let mut settings = Vec::new();
        let mut per_cpu_kb = Vec::new();
        match setting(t, "buffer_size_kb") {
            Some(v) if v == "X" => {
                let mut dirs: Vec<PathBuf> = fs::read_dir(t.join("per_cpu"))
                    .map(|d| d.flatten().map(|e| e.path()).collect())
                    .unwrap_or_default();
                dirs.sort();
                for d in dirs {
                    let f = d.join("buffer_size_kb");
                    if let Some(v) = setting(&d, "buffer_size_kb") {
                        per_cpu_kb.push((f, v));
                    }
                }
            }
            Some(v) => settings.push(("buffer_size_kb", v)),
            None => {}
        }
        for name in ["options/hash-ptr", "options/irq-info"] {
            if let Some(v) = setting(t, name) {
                settings.push((name, v));
            }
        }
        let events = fs::read_to_string(t.join("set_event"))
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        let tracing_on = setting(t, "tracing_on").as_deref() == Some("1");
        Saved {
            settings,
            per_cpu_kb,
            events,
            tracing_on,
        }
    }

    /// Best effort: tracing off, our events cleared, then everything as it
    /// was (sizes, options, the events that were on, tracing on if it was).
    fn restore(&self, t: &Path) {
        let _ = put(t, "tracing_on", "0");
        let _ = put(t, "set_event", "");
        for (name, v) in &self.settings {
            let _ = put(t, name, v);
        }
        for (f, v) in &self.per_cpu_kb {
            let _ = fs::write(f, format!("{v}\n"));
        }
        for e in &self.events {
            let _ = append(t, "set_event", e);
        }
        if self.tracing_on {
            let _ = put(t, "tracing_on", "1");
        }
    }
}

/// `SECONDS`: refused before tracefs is touched unless finite and >= 0
/// (`inf` or `nan` would otherwise fail after the set-up).
fn parse_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if v.is_finite() && v >= 0.0 && Duration::try_from_secs_f64(v).is_ok() {
        Ok(v)
    } else {
        Err(format!(
            "`{s}`: the time limit must be a finite number of seconds, at least 0"
        ))
    }
}

/// Stop signals received while recording: the first ends the recording
/// early (the command gets SIGTERM), the second kills the command's group
/// at once and abandons the compression; tracefs is restored either way.
static SIGNALS: AtomicUsize = AtomicUsize::new(0);

/// Set once the recording is over: a stop signal then does what it did
/// before (signal-hook emulates the default action).
static DONE: AtomicBool = AtomicBool::new(true);

/// The signals that end a recording early (SIGQUIT too: the terminal sends
/// it to kmem's process group, which the command is not in).
const STOP_SIGNALS: [i32; 4] = [
    signal_hook::consts::SIGINT,
    signal_hook::consts::SIGTERM,
    signal_hook::consts::SIGHUP,
    signal_hook::consts::SIGQUIT,
];

/// Stop signals seen so far.
fn signals() -> usize {
    SIGNALS.load(SeqCst)
}

/// While alive, [`STOP_SIGNALS`] count in [`SIGNALS`]; dropped, they take
/// their default action again (emulated by signal-hook: its handlers stay
/// installed).
struct StopSignals;

impl StopSignals {
    fn install() -> Result<StopSignals, String> {
        SIGNALS.store(0, SeqCst);
        DONE.store(false, SeqCst);
        for sig in STOP_SIGNALS {
            // The default action once DONE; counting while recording.
            signal_hook::flag::register_conditional_default(sig, &DONE)
                .map_err(|e| format!("signal handler: {e}"))?;
            // SAFETY: the action is an atomic load and add, async-signal-safe.
            unsafe {
                signal_hook::low_level::register(sig, || {
                    if !DONE.load(SeqCst) {
                        SIGNALS.fetch_add(1, SeqCst);
                    }
                })
            }
            .map_err(|e| format!("signal handler: {e}"))?;
        }
        Ok(StopSignals)
    }
}

impl Drop for StopSignals {
    fn drop(&mut self) {
        DONE.store(true, SeqCst);
    }
}

/// Runs `cmd` with its output discarded, in a process group of its own
/// (killed if kmem dies); after `secs` (or a stop signal), SIGTERM to the
/// group, then SIGKILL five seconds later (or at a second stop signal) if
/// the command is still there.
fn run_with_timeout(cmd: &[String], secs: f64) -> Result<(Option<i32>, bool), String> {
    let (prog, args) = cmd.split_first().ok_or("no command given")?;
    let mut command = Command::new(prog);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    // SAFETY: one prctl system call between fork and exec.
    unsafe {
        command.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(io::Error::from)
        });
    }
    let mut child = ctx(command.spawn(), || format!("cannot run {prog}"))?;
    let group = rustix::process::Pid::from_child(&child);
    let deadline = Instant::now() + Duration::from_secs_f64(secs.max(0.0));
    let mut timed_out = false;
    let mut kill_at = None;
    loop {
        if let Some(st) = ctx(child.try_wait(), || format!("waiting for {prog}"))? {
            return Ok((st.code(), timed_out));
        }
        let now = Instant::now();
        if !timed_out && (now >= deadline || signals() > 0) {
            timed_out = true;
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::TERM);
            kill_at = Some(now + Duration::from_secs(5));
        }
        if kill_at.is_some_and(|k| now >= k || signals() > 1) {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            let _ = child.kill();
            kill_at = None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Counts event lines (not starting with `#`) of what passes through.
struct CountLines<R> {
    inner: BufReader<R>,
    events: u64,
    bytes: u64,
    at_line_start: bool,
}

impl<R: Read> Read for CountLines<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if signals() > 1 {
            return Err(io::Error::other("stopped by a second signal"));
        }
        let n = {
            let avail = self.inner.fill_buf()?;
            let n = avail.len().min(buf.len());
            buf[..n].copy_from_slice(&avail[..n]);
            n
        };
        self.inner.consume(n);
        for &b in &buf[..n] {
            if self.at_line_start && b != b'#' && b != b'\n' {
                self.events += 1;
            }
            self.at_line_start = b == b'\n';
        }
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Compresses `src` into `dst` with zstd at `level`, on every CPU.
fn compress(src: &Path, dst: &Path, level: i32) -> Result<(u64, u64), String> {
    let input = ctx(File::open(src), || src.display().to_string())?;
    let out = ctx(File::create(dst), || dst.display().to_string())?;
    let mut enc = ctx(zstd::Encoder::new(out, level), || "zstd".to_string())?;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    // Multithreading is an optimisation: if the library lacks it, go on.
    let _ = enc.multithread(workers);
    let mut counting = CountLines {
        inner: BufReader::with_capacity(1 << 20, input),
        events: 0,
        bytes: 0,
        at_line_start: true,
    };
    ctx(io::copy(&mut counting, &mut enc), || {
        format!("compressing {}", src.display())
    })?;
    ctx(enc.finish().and_then(|mut f| f.flush()), || {
        dst.display().to_string()
    })?;
    Ok((counting.events, counting.bytes))
}

/// Records: see the module comment.
pub fn record(args: &RecordArgs) -> Result<Recorded, String> {
    let t = &args.tracefs;
    let _signals = StopSignals::install()?;
    let mounted = ensure_tracefs(t)?;
    let saved = Saved::read(t);
    let mut touched = false;
    let mut r = record_mounted(args, &mut touched);
    if touched {
        // Whatever happened once tracefs was changed: our events off, every
        // setting back.
        saved.restore(t);
    }
    if r.is_ok() {
        // With the ring buffer given back: it is not the workload's memory.
        snapshot(&args.proc, &args.dir, "after");
        let release =
            fs::read_to_string(args.proc.join("sys/kernel/osrelease")).unwrap_or_default();
        if let Err(e) = ctx(fs::write(args.dir.join("kernel"), release), || {
            "kernel".to_string()
        }) {
            r = Err(e);
        }
    }
    if mounted {
        let _ = rustix::mount::unmount(t, rustix::mount::UnmountFlags::empty());
    }
    if let Ok(rec) = &mut r {
        rec.interrupted = signals() > 0;
    }
    r
}

/// The recording proper; `touched` is set before tracefs is first written.
fn record_mounted(args: &RecordArgs, touched: &mut bool) -> Result<Recorded, String> {
    let t = &args.tracefs;
    let interrupted = || "interrupted before the command started; nothing recorded".to_string();
    ctx(fs::create_dir_all(&args.dir), || {
        args.dir.display().to_string()
    })?;
    snapshot(&args.proc, &args.dir, "before");
    if signals() > 0 {
        return Err(interrupted());
    }
    *touched = true;
    put(t, "tracing_on", "0")?;
    put(t, "trace", "")?;
    put(t, "options/hash-ptr", "0")?;
    put(t, "options/irq-info", "1")?;
    put(t, "buffer_size_kb", &BUFFER_KB.to_string())?;
    put(t, "set_event", "")?;
    for e in EVENTS {
        append(t, "set_event", e)?;
    }
    if signals() > 0 {
        return Err(interrupted());
    }
    put(t, "tracing_on", "1")?;
    let run = run_with_timeout(&args.cmd, args.seconds);
    // Whatever happened, stop tracing before reporting.
    let stopped = put(t, "tracing_on", "0");
    let (status, timed_out) = run?;
    stopped?;
    let (events, text_bytes) = compress(&t.join("trace"), &args.dir.join("trace.zst"), args.level)?;
    Ok(Recorded {
        events,
        text_bytes,
        status,
        timed_out,
        interrupted: false,
    })
}

/// Runs `kmem record`.
pub fn run(args: &RecordArgs) -> ExitCode {
    if args.tracefs == Path::new("/sys/kernel/tracing") && !rustix::process::geteuid().is_root() {
        eprintln!("kmem record: needs root (tracefs)");
        return ExitCode::FAILURE;
    }
    match record(args) {
        Ok(r) => {
            println!(
                "{} events -> {}",
                r.events,
                args.dir.join("trace.zst").display()
            );
            if r.interrupted {
                eprintln!("kmem record: interrupted; the trace so far is kept");
                return ExitCode::from(130);
            }
            let cmd = args.cmd.join(" ");
            match (r.timed_out, r.status) {
                (true, _) | (false, Some(0)) => ExitCode::SUCCESS,
                (false, Some(code)) => {
                    eprintln!("kmem record: {cmd:?} exited with status {code} (its output was discarded); the trace is kept");
                    ExitCode::from(u8::try_from(code).unwrap_or(1))
                }
                (false, None) => {
                    eprintln!("kmem record: {cmd:?} was killed by a signal; the trace is kept");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("kmem record: {e}");
            if signals() > 0 {
                return ExitCode::from(130);
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory laid out like tracefs and one like /proc.
    fn fake(name: &str, trace: &str) -> (PathBuf, PathBuf, PathBuf) {
        let base = std::env::temp_dir().join(format!("kmem-record-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let t = base.join("tracing");
        let p = base.join("proc");
        fs::create_dir_all(t.join("options")).unwrap();
        fs::create_dir_all(p.join("sys/kernel")).unwrap();
        fs::write(t.join("trace"), trace).unwrap();
        fs::write(t.join("buffer_size_kb"), "7 (expanded: 1408)\n").unwrap();
        fs::write(t.join("options/hash-ptr"), "1\n").unwrap();
        for f in SNAPSHOTS {
            fs::write(p.join(f), format!("{f} contents\n")).unwrap();
        }
        fs::write(p.join("sys/kernel/osrelease"), "6.18.0-test\n").unwrap();
        (t, p, base.join("out"))
    }

    #[test]
    fn writes_what_capture_trace_writes() {
        let text = "# tracer: nop\n#\n  a-1 [000] ..... 1.000001: kfree: call_site=x+0x1/0x2 ptr=0000000000000000\n  a-1 [000] ..... 1.000002: kfree: call_site=x+0x1/0x2 ptr=0000000000000000\n";
        let (t, p, out) = fake("ok", "stale text, cleared before the command\n");
        // The command stands in for the kernel: it fills the buffer.
        let src = t.parent().unwrap().join("events");
        fs::write(&src, text).unwrap();
        let fill = format!("cat '{}' > '{}'", src.display(), t.join("trace").display());
        let args = RecordArgs {
            dir: out.clone(),
            seconds: 10.0,
            cmd: vec!["sh".into(), "-c".into(), fill],
            tracefs: t.clone(),
            proc: p,
            level: 3,
        };
        let r = record(&args).unwrap();
        assert_eq!(r.events, 2);
        assert_eq!(r.status, Some(0));
        assert!(!r.timed_out);
        // The trace, compressed, reads back as the same text.
        let back = zstd::decode_all(File::open(out.join("trace.zst")).unwrap()).unwrap();
        assert_eq!(back, text.as_bytes());
        for when in ["before", "after"] {
            for f in SNAPSHOTS {
                let s = fs::read_to_string(out.join(format!("{when}.{f}"))).unwrap();
                assert_eq!(s, format!("{f} contents\n"));
            }
        }
        assert_eq!(
            fs::read_to_string(out.join("kernel")).unwrap(),
            "6.18.0-test\n"
        );
        // tracefs left as the script leaves it.
        assert_eq!(fs::read_to_string(t.join("tracing_on")).unwrap(), "0\n");
        assert_eq!(fs::read_to_string(t.join("set_event")).unwrap(), "\n");
        // Settings put back as they were.
        assert_eq!(
            fs::read_to_string(t.join("options/hash-ptr")).unwrap(),
            "1\n"
        );
        assert_eq!(
            fs::read_to_string(t.join("buffer_size_kb")).unwrap(),
            "1408\n"
        );
    }

    #[test]
    fn stops_a_long_command() {
        let (t, p, out) = fake("timeout", "# tracer: nop\n");
        let args = RecordArgs {
            dir: out,
            seconds: 0.2,
            cmd: vec!["sleep".into(), "30".into()],
            tracefs: t,
            proc: p,
            level: 1,
        };
        let start = Instant::now();
        let r = record(&args).unwrap();
        assert!(r.timed_out);
        assert_eq!(r.status, None, "ended by SIGTERM");
        assert_eq!(r.events, 0);
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_missing_command_is_an_error() {
        let (t, p, out) = fake("missing", "# tracer: nop\n");
        let args = RecordArgs {
            dir: out,
            seconds: 1.0,
            cmd: vec!["/nonexistent/kmem-test-cmd".into()],
            tracefs: t.clone(),
            proc: p,
            level: 1,
        };
        let e = record(&args).unwrap_err();
        assert!(e.contains("cannot run"), "{e}");
        assert_eq!(fs::read_to_string(t.join("tracing_on")).unwrap(), "0\n");
    }
}
