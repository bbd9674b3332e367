//! What a parse saw: every line lands in exactly one bucket.
//!
//! `lines == events + comment_lines + blank_lines + lost_lines + unknown_lines +
//! skipped` always holds ([`Stats::accounted`]), so a replayer can show that no
//! line went missing. Unknown event types are counted by name and malformed
//! lines by [`ErrorKind`], with the first error of each kind kept as an
//! example. Everything here is bounded: at most [`MAX_UNKNOWN_NAMES`] names
//! (the rest are counted under [`OTHER_UNKNOWN`]) and [`MAX_BUFFER_STARTS`]
//! buffer-start markers.
//!
//! [`TraceHeader`] keeps what the `#` lines say about the recording: the tracer,
//! `entries-in-buffer/entries-written` (fewer in the buffer than written means
//! the ring buffer overwrote the oldest events), the CPU count `#P:`, and the
//! `##### CPU N buffer started ####` markers (before such a marker the trace
//! holds no events of CPU N: its older events were overwritten).

use crate::error::{ErrorKind, ParseError};
use crate::event::EventKind;

/// Distinct unknown event names counted by name; the rest go to [`OTHER_UNKNOWN`].
pub const MAX_UNKNOWN_NAMES: usize = 256;
/// Name under which unknown events beyond [`MAX_UNKNOWN_NAMES`] names are counted.
pub const OTHER_UNKNOWN: &str = "(other)";
/// `CPU N buffer started` markers kept.
pub const MAX_BUFFER_STARTS: usize = 4096;

/// What the trace's `#` header lines say.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TraceHeader {
    /// `# tracer: nop`
    pub tracer: Option<String>,
    /// Events in the buffer when it was read.
    pub entries_in_buffer: Option<u64>,
    /// Events written; more than `entries_in_buffer` when the ring buffer overflowed.
    pub entries_written: Option<u64>,
    /// `#P:2`: CPUs in the trace.
    pub cpus: Option<u32>,
    /// `##### CPU N buffer started ####`: (CPU, line number) — the trace has no
    /// events of that CPU before that line.
    pub buffer_started: Vec<(u32, u64)>,
}

impl TraceHeader {
    /// Events the ring buffer dropped (`entries_written - entries_in_buffer`), when both are known.
    pub fn overwritten(&self) -> Option<u64> {
        Some(
            self.entries_written?
                .saturating_sub(self.entries_in_buffer?),
        )
    }

    /// Picks the facts out of one `#` line (given from the `#` on).
    pub(crate) fn note(&mut self, line_no: u64, text: &[u8]) {
        let body = trim(text.strip_prefix(b"#").unwrap_or(text));
        if let Some(t) = body.strip_prefix(b"tracer:") {
            self.tracer = Some(String::from_utf8_lossy(trim(t)).into_owned());
        } else if let Some(rest) = body.strip_prefix(b"entries-in-buffer/entries-written:") {
            // ` 2888277/3500378   #P:2`
            let rest = trim(rest);
            let (counts, cpus) = match memchr::memmem::find(rest, b"#P:") {
                Some(i) => (trim(&rest[..i]), Some(trim(&rest[i + 3..]))),
                None => (rest, None),
            };
            if let Some(slash) = memchr::memchr(b'/', counts) {
                self.entries_in_buffer = dec(&counts[..slash]);
                self.entries_written = dec(&counts[slash + 1..]);
            }
            self.cpus = cpus.and_then(dec).and_then(|v| u32::try_from(v).ok());
        } else if let Some(rest) = trim(text.trim_ascii_start()).strip_prefix(b"##### CPU ") {
            // `##### CPU 1 buffer started ####`
            if let Some(sp) = memchr::memchr(b' ', rest) {
                if rest[sp..].starts_with(b" buffer started") {
                    if let Some(cpu) = dec(&rest[..sp]).and_then(|v| u32::try_from(v).ok()) {
                        if self.buffer_started.len() < MAX_BUFFER_STARTS {
                            self.buffer_started.push((cpu, line_no));
                        }
                    }
                }
            }
        }
    }
}

fn trim(s: &[u8]) -> &[u8] {
    s.trim_ascii()
}

fn dec(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u64, |v, &b| {
        v.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// Counters for one parse; see the module comment for the invariant.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Lines read (a last line without a newline counts).
    pub lines: u64,
    /// Bytes of text read (after decompression), newlines included.
    pub bytes: u64,
    /// Events parsed, by [`EventKind::index`].
    pub events: [u64; EventKind::COUNT],
    /// `#` lines (the header, `##### CPU N buffer started ####`).
    pub comment_lines: u64,
    /// Empty or all-blank lines.
    pub blank_lines: u64,
    /// `CPU:N [LOST M EVENTS]` lines.
    pub lost_lines: u64,
    /// Sum of M over the `LOST` lines.
    pub lost_events: u64,
    /// Well-formed lines of event types this crate does not parse.
    pub unknown_lines: u64,
    /// Those, by event name, in order of first appearance.
    pub unknown: Vec<(String, u64)>,
    /// Malformed lines, by [`ErrorKind::index`].
    pub skipped: [u64; ErrorKind::COUNT],
    /// The first malformed line of each kind, in the order they were met.
    pub first_errors: Vec<ParseError>,
    /// What the header lines say.
    pub header: TraceHeader,
    /// Timestamp of the first event or unknown-event line, in ns.
    pub first_ts_ns: Option<u64>,
    /// Timestamp of the last one, in ns.
    pub last_ts_ns: Option<u64>,
    /// Event lines whose timestamp is earlier than the one before (ftrace
    /// prints events in time order: traces concatenated or reordered).
    pub ts_backwards: u64,
    /// Highest CPU number seen on an event line.
    pub max_cpu: Option<u32>,
}

impl Stats {
    /// Events of kind `kind`.
    pub fn event_count(&self, kind: EventKind) -> u64 {
        self.events[kind.index()]
    }

    /// Events of every kind.
    pub fn event_total(&self) -> u64 {
        self.events.iter().sum()
    }

    /// Malformed lines of kind `kind`.
    pub fn skipped_count(&self, kind: ErrorKind) -> u64 {
        self.skipped[kind.index()]
    }

    /// Malformed lines of every kind.
    pub fn skipped_total(&self) -> u64 {
        self.skipped.iter().sum()
    }

    /// Unknown-event lines named `name`.
    pub fn unknown_count(&self, name: &str) -> u64 {
        self.unknown
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, c)| *c)
    }

    /// Lines put in some bucket; equals [`lines`](Self::lines) after a full parse.
    pub fn accounted(&self) -> u64 {
        self.event_total()
            + self.comment_lines
            + self.blank_lines
            + self.lost_lines
            + self.unknown_lines
            + self.skipped_total()
    }

    /// Trace time covered, first to last event, in ns.
    pub fn span_ns(&self) -> u64 {
        match (self.first_ts_ns, self.last_ts_ns) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => 0,
        }
    }

    #[inline]
    pub(crate) fn saw_event_line(&mut self, cpu: u32, ts_ns: u64) {
        if self.first_ts_ns.is_none() {
            self.first_ts_ns = Some(ts_ns);
        }
        if self.last_ts_ns.is_some_and(|l| ts_ns < l) {
            self.ts_backwards += 1;
        }
        self.last_ts_ns = Some(ts_ns);
        if self.max_cpu.is_none_or(|m| cpu > m) {
            self.max_cpu = Some(cpu);
        }
    }

    pub(crate) fn count_unknown(&mut self, name: &str) {
        self.unknown_lines += 1;
        if let Some(slot) = self.unknown.iter_mut().find(|(n, _)| n == name) {
            slot.1 += 1;
        } else if self.unknown.len() < MAX_UNKNOWN_NAMES {
            self.unknown.push((name.to_owned(), 1));
        } else if let Some(slot) = self.unknown.iter_mut().find(|(n, _)| n == OTHER_UNKNOWN) {
            slot.1 += 1;
        } else {
            self.unknown.push((OTHER_UNKNOWN.to_owned(), 1));
        }
    }

    pub(crate) fn count_skipped(&mut self, e: ParseError) {
        let k = e.kind().index();
        if self.skipped[k] == 0 {
            self.first_errors.push(e);
        }
        self.skipped[k] += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lines() {
        let mut h = TraceHeader::default();
        h.note(1, b"# tracer: nop");
        h.note(
            3,
            b"# entries-in-buffer/entries-written: 2888277/3500378   #P:2",
        );
        h.note(
            5,
            b"#                              _-----=> irqs-off/BH-disabled",
        );
        h.note(122219, b"##### CPU 1 buffer started ####");
        assert_eq!(h.tracer.as_deref(), Some("nop"));
        assert_eq!(h.entries_in_buffer, Some(2888277));
        assert_eq!(h.entries_written, Some(3500378));
        assert_eq!(h.overwritten(), Some(612101));
        assert_eq!(h.cpus, Some(2));
        assert_eq!(h.buffer_started, vec![(1, 122219)]);
    }

    #[test]
    fn unknown_names_are_bounded() {
        let mut s = Stats::default();
        for i in 0..MAX_UNKNOWN_NAMES + 10 {
            s.count_unknown(&format!("ev{i}"));
        }
        s.count_unknown("ev0");
        assert_eq!(s.unknown.len(), MAX_UNKNOWN_NAMES + 1);
        assert_eq!(s.unknown_count(OTHER_UNKNOWN), 10);
        assert_eq!(s.unknown_count("ev0"), 2);
        assert_eq!(s.unknown_lines, MAX_UNKNOWN_NAMES as u64 + 11);
        assert_eq!(s.accounted(), s.unknown_lines);
    }
}
