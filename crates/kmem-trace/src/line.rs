//! The common prefix of every event line: task, pid, CPU, irq-info flags, timestamp.
//!
//! ftrace prints it as `%16s-%-7d [%03d] FLAGS %5lu.%06lu: ` (with an optional
//! `(TGID)` column under the `record-tgid` option):
//!
//! ```text
//!       capture.sh-9684    [000] .....   263.707263: kmem_cache_free: call_site=...
//!      kworker/0:0-9       [000] d..1.   262.934837: ...
//! ```
//!
//! A task name may contain spaces, dashes and brackets, so the prefix is parsed
//! from the `[CPU]` column outwards: find a `[` preceded by `-PID` (and padding)
//! and followed by `digits] `, everything left of the `-` is the task.
//!
//! The irq-info column (`Documentation/trace/ftrace.rst`, `trace_print_lat_fmt`):
//!
//! | column | characters |
//! |---|---|
//! | irqs-off / BH | `d` IRQs off, `b` BH disabled, `D` both, `X` no irqflags support, `.` |
//! | need-resched | `N` need-resched + preempt-resched, `n` need-resched, `p` preempt-resched, `L`/`l`/`B`/`b` the lazy variants, `.` |
//! | hardirq/softirq | `Z` NMI in hard IRQ, `z` NMI, `H` hard IRQ in softirq, `h` hard IRQ, `s` softirq, `.` |
//! | preempt-depth | hex digit `1`-`f` (capped at 15), `.` for 0 |
//! | migrate-disable | hex digit, `.` for 0 (absent before Linux 5.13) |
//!
//! [`IrqFlags::context`] turns them into a [`kmem::ExecContext`]. What a trace
//! cannot show stays zero there: RCU read-side depth, and which part of the
//! preempt depth is spinlocks.

use std::borrow::Cow;
use std::fmt;

use kmem::ExecContext;

use crate::cursor::Cursor;
use crate::error::{ErrorKind, Fail};

/// The decoded irq-info column, with its raw text.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IrqFlags {
    raw: [u8; 5],
    len: u8,
    /// `d` or `D`: local interrupts disabled.
    pub irqs_off: bool,
    /// `b` or `D`: bottom halves disabled (`local_bh_disable`).
    pub bh_off: bool,
    /// `X`: the architecture cannot report the IRQ state.
    pub irqs_unknown: bool,
    /// `TIF_NEED_RESCHED` set (`N`, `n`, `B`, `b`).
    pub need_resched: bool,
    /// `TIF_NEED_RESCHED_LAZY` set (`L`, `l`, `B`, `b`).
    pub need_resched_lazy: bool,
    /// `PREEMPT_NEED_RESCHED` set (`N`, `p`, `L`, `B`).
    pub preempt_resched: bool,
    /// `h`, `H` or `Z`: in a hard interrupt handler.
    pub hardirq: bool,
    /// `s` or `H`: serving a softirq.
    pub softirq: bool,
    /// `z` or `Z`: in an NMI.
    pub nmi: bool,
    /// Preemption-disable depth, 0-15 (ftrace caps it at 15).
    pub preempt_depth: u8,
    /// Migrate-disable depth, 0-15.
    pub migrate_disable: u8,
}

impl IrqFlags {
    /// Decodes the column's 4 or 5 characters; on a bad character (or one too
    /// many, or the end of a short column), returns its index.
    pub fn parse(raw: &[u8]) -> Result<IrqFlags, usize> {
        if raw.len() < 4 {
            return Err(raw.len());
        }
        if raw.len() > 5 {
            return Err(5);
        }
        let mut f = IrqFlags {
            raw: [b'.'; 5],
            len: raw.len() as u8,
            irqs_off: false,
            bh_off: false,
            irqs_unknown: false,
            need_resched: false,
            need_resched_lazy: false,
            preempt_resched: false,
            hardirq: false,
            softirq: false,
            nmi: false,
            preempt_depth: 0,
            migrate_disable: 0,
        };
        f.raw[..raw.len()].copy_from_slice(raw);
        let look = |table: &[u8; 256], i: usize| match table[usize::from(raw[i])] {
            BAD => Err(i),
            v => Ok(v),
        };
        let irq = look(&COL_IRQ, 0)?;
        let resched = look(&COL_RESCHED, 1)?;
        let hardsoft = look(&COL_HARDSOFT, 2)?;
        f.preempt_depth = look(&COL_DEPTH, 3)?;
        if raw.len() == 5 {
            f.migrate_disable = look(&COL_DEPTH, 4)?;
        }
        f.irqs_off = irq & 1 != 0;
        f.bh_off = irq & 2 != 0;
        f.irqs_unknown = irq & 4 != 0;
        f.need_resched = resched & 1 != 0;
        f.need_resched_lazy = resched & 2 != 0;
        f.preempt_resched = resched & 4 != 0;
        f.nmi = hardsoft & 1 != 0;
        f.hardirq = hardsoft & 2 != 0;
        f.softirq = hardsoft & 4 != 0;
        Ok(f)
    }

    /// The column as printed (`d.s1.`).
    pub fn raw(&self) -> &str {
        // Only the ASCII characters accepted by `parse` are ever stored.
        std::str::from_utf8(&self.raw[..usize::from(self.len)]).unwrap_or("?????")
    }

    /// The execution context these flags describe.
    ///
    /// `preempt` is the preempt depth (spinlocks included, as in Linux; the trace
    /// cannot tell them apart, so `spinlocks` is 0); `softirq` and `bh_disabled`
    /// are 0 or 1 (ftrace shows only whether, not how deep); `rcu_depth` is 0
    /// (RCU read sides do not show in a trace).
    pub const fn context(&self) -> ExecContext {
        ExecContext {
            preempt: self.preempt_depth,
            spinlocks: 0,
            softirq: self.softirq as u8,
            bh_disabled: self.bh_off as u8,
            hardirq: self.hardirq as u8,
            nmi: self.nmi as u8,
            irqs_disabled: self.irqs_off,
            rcu_depth: 0,
        }
    }
}

/// Marks a character a column never holds.
const BAD: u8 = 0xff;

/// A byte → value table for one column.
const fn table(entries: &[(u8, u8)]) -> [u8; 256] {
    let mut t = [BAD; 256];
    let mut i = 0;
    while i < entries.len() {
        t[entries[i].0 as usize] = entries[i].1;
        i += 1;
    }
    t
}

/// irqs-off/BH: bit 0 IRQs off, bit 1 BH off, bit 2 unknown.
static COL_IRQ: [u8; 256] = table(&[(b'.', 0), (b'd', 1), (b'b', 2), (b'D', 3), (b'X', 4)]);
/// need-resched: bit 0 NEED_RESCHED, bit 1 NEED_RESCHED_LAZY, bit 2 PREEMPT_RESCHED.
static COL_RESCHED: [u8; 256] = table(&[
    (b'.', 0),
    (b'N', 5),
    (b'n', 1),
    (b'p', 4),
    (b'L', 6),
    (b'l', 2),
    (b'B', 7),
    (b'b', 3),
]);
/// hardirq/softirq: bit 0 NMI, bit 1 hard IRQ, bit 2 softirq.
static COL_HARDSOFT: [u8; 256] = table(&[
    (b'.', 0),
    (b's', 4),
    (b'h', 2),
    (b'H', 6),
    (b'z', 1),
    (b'Z', 3),
]);
/// preempt-depth and migrate-disable: `.` is 0, a hex digit its value.
static COL_DEPTH: [u8; 256] = table(&[
    (b'.', 0),
    (b'0', 0),
    (b'1', 1),
    (b'2', 2),
    (b'3', 3),
    (b'4', 4),
    (b'5', 5),
    (b'6', 6),
    (b'7', 7),
    (b'8', 8),
    (b'9', 9),
    (b'a', 10),
    (b'b', 11),
    (b'c', 12),
    (b'd', 13),
    (b'e', 14),
    (b'f', 15),
]);

impl fmt::Debug for IrqFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IrqFlags({:?})", self.raw())
    }
}

impl fmt::Display for IrqFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.raw())
    }
}

/// The common fields of an event line (ftrace's `common_*` fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Common<'a> {
    /// The task's `comm` as printed, without padding (`<...>` when ftrace lost
    /// it). Raw bytes: a comm need not be UTF-8; see [`Common::task_lossy`].
    pub task: &'a [u8],
    /// Thread id.
    pub pid: u32,
    /// Thread-group id, when the trace has the `(TGID)` column.
    pub tgid: Option<u32>,
    /// CPU the event ran on.
    pub cpu: u32,
    /// The irq-info column.
    pub flags: IrqFlags,
    /// `flags` as an execution context ([`IrqFlags::context`]).
    pub ctx: ExecContext,
    /// Timestamp in nanoseconds (the trace prints seconds with 6 or 9 decimals).
    pub ts_ns: u64,
}

impl<'a> Common<'a> {
    /// The task name, with invalid UTF-8 replaced.
    pub fn task_lossy(&self) -> Cow<'a, str> {
        String::from_utf8_lossy(self.task)
    }
}

const PREFIX: &str = "`TASK-PID [CPU] FLAGS TIMESTAMP: `";

/// Parses the prefix of `line`; returns it and the column where the event name starts.
#[cfg(test)]
pub(crate) fn parse_common(line: &[u8]) -> Result<(Common<'_>, usize), Fail> {
    let first = line.iter().position(|&b| b != b' ').unwrap_or(line.len());
    parse_common_at(line, first)
}

/// Parses the prefix of `line`, whose first non-space byte is at `first`;
/// returns it and the column where the event name starts.
#[inline]
pub(crate) fn parse_common_at(line: &[u8], first: usize) -> Result<(Common<'_>, usize), Fail> {
    let TaskPid {
        task,
        pid,
        tgid,
        bracket: lb,
    } = find_cpu_column(line, first)?;
    let mut c = Cursor::new(line, lb + 1);
    const CPU: &str = "CPU number after `[`";
    let cpu =
        u32::try_from(c.digits(CPU)?).map_err(|_| Fail::new(lb + 1, ErrorKind::BadNumber, CPU))?;
    c.lit(b"] ", "`] ` after the CPU number")?;
    let at = c.pos();
    let raw = c.word("irq-info flags (e.g. `d.s1.`)")?;
    let at_end = c.rest().is_empty();
    let flags = IrqFlags::parse(raw).map_err(|i| {
        let kind = if i >= raw.len() && at_end {
            ErrorKind::Truncated
        } else if i >= raw.len() {
            ErrorKind::UnexpectedText
        } else {
            ErrorKind::BadIrqFlags
        };
        Fail::new(at + i, kind, "irq-info flags (e.g. `d.s1.`)")
    })?;
    if c.skip_spaces() == 0 {
        return Err(Fail::new(
            c.pos(),
            ErrorKind::Truncated,
            "a space before the timestamp",
        ));
    }
    let ts_ns = timestamp(&mut c)?;
    c.lit(b": ", "`: ` after the timestamp")?;
    let common = Common {
        task,
        pid,
        tgid,
        cpu,
        flags,
        ctx: flags.context(),
        ts_ns,
    };
    Ok((common, c.pos()))
}

/// What precedes the `[CPU]` column.
struct TaskPid<'a> {
    task: &'a [u8],
    pid: u32,
    tgid: Option<u32>,
    /// Index of the `[`.
    bracket: usize,
}

/// Where ftrace's `%16s-%-7d [` puts the `[` (no TGID column, pid below 10^7).
const USUAL_BRACKET: usize = 25;

/// Finds the `[CPU]` column: a `[` preceded by `-PID` (plus padding and an
/// optional `(TGID)`) and followed by a digit; the task starts at `first`.
#[inline]
fn find_cpu_column(line: &[u8], first: usize) -> Result<TaskPid<'_>, Fail> {
    if line.get(USUAL_BRACKET) == Some(&b'[') {
        if let Some(t) = task_pid_before(line, USUAL_BRACKET, first) {
            return Ok(t);
        }
    }
    let mut from = 0;
    while let Some(off) = memchr::memchr(b'[', &line[from..]) {
        let lb = from + off;
        from = lb + 1;
        if let Some(t) = task_pid_before(line, lb, first) {
            return Ok(t);
        }
    }
    Err(Fail::new(first, ErrorKind::UnexpectedText, PREFIX))
}

/// Task, pid and tgid if the `[` at `lb` is the CPU column.
#[inline]
fn task_pid_before(line: &[u8], lb: usize, first: usize) -> Option<TaskPid<'_>> {
    if !line.get(lb + 1).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let mut i = lb;
    while i > 0 && line[i - 1] == b' ' {
        i -= 1;
    }
    // Optional `(TGID)` column: `(  123)` or `(-------)` when unknown.
    let mut tgid = None;
    if i > 0 && line[i - 1] == b')' {
        let open = memchr::memrchr(b'(', &line[..i - 1])?;
        let inner = trim_spaces(&line[open + 1..i - 1]);
        if inner.is_empty() || !inner.iter().all(|&b| b == b'-') {
            tgid = Some(small_dec(inner)?);
        }
        i = open;
        while i > 0 && line[i - 1] == b' ' {
            i -= 1;
        }
    }
    // PID digits, read right to left.
    let end = i;
    let mut pid = 0u32;
    let mut scale = 1u32;
    while i > 0 && line[i - 1].is_ascii_digit() {
        if end - i == 10 {
            return None;
        }
        pid = pid.checked_add(scale.checked_mul(u32::from(line[i - 1] - b'0'))?)?;
        scale = scale.saturating_mul(10);
        i -= 1;
    }
    if i == end || i == 0 || line[i - 1] != b'-' {
        return None;
    }
    let dash = i - 1;
    Some(TaskPid {
        task: &line[first.min(dash)..dash],
        pid,
        tgid,
        bracket: lb,
    })
}

fn trim_leading_spaces(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&b| b == b' ').count();
    &s[n..]
}

fn trim_spaces(s: &[u8]) -> &[u8] {
    let s = trim_leading_spaces(s);
    let n = s.iter().rev().take_while(|&&b| b == b' ').count();
    &s[..s.len() - n]
}

/// A short all-digit decimal that fits in `u32`.
fn small_dec(s: &[u8]) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u32, |v, &b| {
        v.checked_mul(10)?.checked_add(u32::from(b - b'0'))
    })
}

/// `SECONDS.FRACTION:` (1-9 fraction digits) in nanoseconds; or `INTEGER:`,
/// taken as nanoseconds already (the `counter`/`x86-tsc` clocks print no dot).
/// Leaves the cursor on the `:`.
#[inline]
fn timestamp(c: &mut Cursor<'_>) -> Result<u64, Fail> {
    const WHAT: &str = "timestamp `SECONDS.MICROS:`";
    const POW10: [u64; 10] = [
        1,
        10,
        100,
        1_000,
        10_000,
        100_000,
        1_000_000,
        10_000_000,
        100_000_000,
        1_000_000_000,
    ];
    let start = c.pos();
    let rest = c.rest();
    let bad = |at: usize, s: &[u8]| {
        let kind = if at >= s.len() {
            ErrorKind::Truncated
        } else {
            ErrorKind::BadNumber
        };
        Fail::new(start + at, kind, WHAT)
    };
    let (secs, n) = leading_digits(rest);
    match rest.get(n) {
        Some(b':') if n > 0 => {
            c.advance(n);
            return Ok(secs);
        }
        Some(b'.') if n > 0 => {}
        _ => return Err(bad(n, rest)),
    }
    let (frac, m) = leading_digits(&rest[n + 1..]);
    let end = n + 1 + m;
    if m == 0 || m > 9 || rest.get(end) != Some(&b':') {
        return Err(bad(if m > 9 { n + 1 } else { end }, rest));
    }
    c.advance(end);
    secs.checked_mul(1_000_000_000)
        .and_then(|ns| ns.checked_add(frac * POW10[9 - m]))
        .ok_or(Fail::new(start, ErrorKind::BadNumber, WHAT))
}

/// The value of up to 19 leading decimal digits (never overflows), and how many there were.
#[inline(always)]
fn leading_digits(s: &[u8]) -> (u64, usize) {
    let mut v = 0u64;
    let mut i = 0;
    while i < s.len() && i < 19 {
        let d = s[i].wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        v = v * 10 + u64::from(d);
        i += 1;
    }
    (v, i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(s: &str) -> IrqFlags {
        IrqFlags::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn irq_columns_decode() {
        let f = flags(".....");
        assert_eq!(f.context(), ExecContext::PROCESS);
        let f = flags("d..1.");
        assert!(f.irqs_off && !f.bh_off && f.preempt_depth == 1);
        let f = flags("b.s2.");
        assert!(f.bh_off && f.softirq && !f.hardirq && f.preempt_depth == 2);
        let f = flags("D.h..");
        assert!(f.irqs_off && f.bh_off && f.hardirq);
        let f = flags(".Ns.1");
        assert!(f.need_resched && f.preempt_resched && f.softirq && f.migrate_disable == 1);
        let f = flags(".n...");
        assert!(f.need_resched && !f.preempt_resched);
        let f = flags("dNHf.");
        assert!(f.hardirq && f.softirq && f.preempt_depth == 15);
        let f = flags("d.Z..");
        assert!(f.nmi && f.hardirq);
        assert_eq!(f.context().kind(), kmem::ContextKind::Nmi);
        let f = flags("d.z1");
        assert!(f.nmi && !f.hardirq && f.preempt_depth == 1 && f.migrate_disable == 0);
        assert_eq!(f.raw(), "d.z1");
        assert_eq!(IrqFlags::parse(b"q...."), Err(0));
        assert_eq!(IrqFlags::parse(b".x..."), Err(1));
        assert_eq!(IrqFlags::parse(b"..S.."), Err(2));
        assert_eq!(IrqFlags::parse(b"...g."), Err(3));
        assert_eq!(IrqFlags::parse(b"....-"), Err(4));
        assert_eq!(IrqFlags::parse(b"..."), Err(3));
        assert_eq!(IrqFlags::parse(b"......"), Err(5));
    }

    #[test]
    fn prefix_fields() {
        let line = b"      capture.sh-9684    [001] b.s2.   263.707263: kfree: x";
        let (c, at) = parse_common(line).unwrap();
        assert_eq!(c.task, b"capture.sh");
        assert_eq!((c.pid, c.cpu, c.tgid), (9684, 1, None));
        assert_eq!(c.ts_ns, 263_707_263_000);
        assert_eq!(c.ctx.softirq, 1);
        assert_eq!(c.ctx.bh_disabled, 1);
        assert_eq!(c.ctx.preempt, 2);
        assert_eq!(&line[at..], b"kfree: x");
    }

    #[test]
    fn task_names_with_spaces_dashes_and_brackets() {
        let line = b" my task-a [x]-1-42      [000] .....   1.000000001: e: f";
        let (c, _) = parse_common(line).unwrap();
        assert_eq!(c.task, b"my task-a [x]-1");
        assert_eq!(c.pid, 42);
        assert_eq!(c.ts_ns, 1_000_000_001);
        let line = b"           <...>-10030   [001] ..s2.   265.763719: kfree: x";
        assert_eq!(parse_common(line).unwrap().0.task, b"<...>");
    }

    #[test]
    fn tgid_column() {
        let line = b"            bash-1977    (   1977) [000] .....    17.880012: e: f";
        let (c, _) = parse_common(line).unwrap();
        assert_eq!((c.pid, c.tgid), (1977, Some(1977)));
        let line = b"            bash-1977    (-------) [000] .....    17.880012: e: f";
        assert_eq!(parse_common(line).unwrap().0.tgid, None);
    }

    #[test]
    fn prefix_errors() {
        let e = parse_common(b"garbage").unwrap_err();
        assert_eq!(e.kind, ErrorKind::UnexpectedText);
        let line = b"  t-1 [000] .q...   1.000000: e: f";
        let e = parse_common(line).unwrap_err();
        assert_eq!((e.kind, e.col), (ErrorKind::BadIrqFlags, 13));
        let line = b"  t-1 [000] .....   1.0x0000: e: f";
        assert_eq!(parse_common(line).unwrap_err().kind, ErrorKind::BadNumber);
        let line = b"  t-1 [000] .....   1.000";
        assert_eq!(parse_common(line).unwrap_err().kind, ErrorKind::Truncated);
        let line = b"  t-1 [000] .....";
        assert_eq!(parse_common(line).unwrap_err().kind, ErrorKind::Truncated);
    }
}
