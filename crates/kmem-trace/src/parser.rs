//! One line in, one classified [`Line`] out.
//!
//! A [`Parser`] holds what outlives a line: the line counter, the [`Mode`], the
//! [`Stats`] and the GFP memo. Readers ([`crate::TraceReader`],
//! [`crate::SliceLines`]) split input into lines and hand each to
//! [`Parser::parse_line`], which decides what it is:
//!
//! 1. blank, or a `#` comment (header facts are noted in [`Stats::header`]);
//! 2. `CPU:N [LOST M EVENTS]`;
//! 3. otherwise an event line: common prefix ([`crate::line`]), `NAME: `, then
//!    the fields of a known event ([`crate::event`]) — or, for any other
//!    well-formed name, [`Line::Unknown`] (counted by name, not an error).
//!
//! A malformed line is an error in [`Mode::Strict`] and [`Line::Skipped`]
//! otherwise; both count it in [`Stats::skipped`].

use crate::cursor::{scan_until, Cursor};
use crate::error::{ErrorKind, Fail, ParseError};
use crate::event::{parse_fields, Event, EventKind};
use crate::gfp::GfpCache;
use crate::line::{parse_common_at, Common};
use crate::stats::Stats;

/// What to do with a malformed line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Return it as an error, with its line number and column.
    Strict,
    /// Skip it, counting it by reason in [`Stats::skipped`].
    #[default]
    Lenient,
}

/// A parsed event with where it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Record<'a> {
    /// 1-based line number in the trace.
    pub line: u64,
    /// Task, pid, CPU, context, timestamp.
    pub common: Common<'a>,
    /// The event and its fields.
    pub event: Event<'a>,
}

/// One line of a trace, classified.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Line<'a> {
    /// An allocation event.
    Event(Record<'a>),
    /// A `#` line, as read.
    Comment(&'a [u8]),
    /// An empty or all-blank line.
    Blank,
    /// `CPU:cpu [LOST events EVENTS]`: the ring buffer dropped events here.
    Lost {
        /// The CPU whose events were lost.
        cpu: u32,
        /// How many.
        events: u64,
    },
    /// A well-formed event line of a type this crate does not parse.
    Unknown {
        /// 1-based line number.
        line: u64,
        /// Its common fields.
        common: Common<'a>,
        /// The event's name.
        name: &'a str,
        /// Its fields, unparsed.
        fields: &'a [u8],
    },
    /// A malformed line skipped in [`Mode::Lenient`].
    Skipped(ParseError),
}

/// Classifies lines, counting them; see the module comment.
pub struct Parser {
    mode: Mode,
    line: u64,
    stats: Stats,
    gfp: GfpCache,
}

impl Default for Parser {
    fn default() -> Self {
        Parser::new(Mode::default())
    }
}

impl std::fmt::Debug for Parser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parser")
            .field("mode", &self.mode)
            .field("line", &self.line)
            .finish_non_exhaustive()
    }
}

impl Parser {
    /// A parser at line 0.
    pub fn new(mode: Mode) -> Self {
        Parser {
            mode,
            line: 0,
            stats: Stats::default(),
            gfp: GfpCache::new(),
        }
    }

    /// The mode it was made with.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Lines parsed so far (the number of the last one).
    pub fn lines(&self) -> u64 {
        self.line
    }

    /// Counters so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Counters so far, mutable (readers add [`Stats::bytes`]).
    pub fn stats_mut(&mut self) -> &mut Stats {
        &mut self.stats
    }

    /// The counters, consuming the parser.
    pub fn into_stats(self) -> Stats {
        self.stats
    }

    /// Parses the next line, `text` without its newline (a trailing `\r` is ignored).
    #[inline]
    pub fn parse_line<'a>(&mut self, text: &'a [u8]) -> Result<Line<'a>, ParseError> {
        self.line += 1;
        self.stats.lines += 1;
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        match self.classify(text) {
            Ok(line) => Ok(line),
            Err(fail) => self.malformed(ParseError::new(self.line, text, fail)),
        }
    }

    /// Counts the next line as too long to read (the reader could not hold it);
    /// `start` is as much of it as was seen.
    pub fn too_long(&mut self, start: &[u8]) -> Result<Line<'static>, ParseError> {
        self.line += 1;
        self.stats.lines += 1;
        // Column 1: the report shows how the line starts.
        let fail = Fail::new(
            0,
            ErrorKind::LineTooLong,
            "the line to end within the reader's line buffer (1 MiB unless set)",
        );
        self.malformed(ParseError::new(self.line, start, fail))
    }

    fn malformed<'a>(&mut self, e: ParseError) -> Result<Line<'a>, ParseError> {
        self.stats.count_skipped(e);
        match self.mode {
            Mode::Strict => Err(e),
            Mode::Lenient => Ok(Line::Skipped(e)),
        }
    }

    #[inline]
    fn classify<'a>(&mut self, text: &'a [u8]) -> Result<Line<'a>, Fail> {
        // Event lines start with the padded task name; look past the padding.
        let first = text.iter().position(|&b| b != b' ');
        let Some(first) = first else {
            self.stats.blank_lines += 1;
            return Ok(Line::Blank);
        };
        match text[first] {
            b'#' => {
                self.stats.comment_lines += 1;
                self.stats.header.note(self.line, &text[first..]);
                return Ok(Line::Comment(text));
            }
            b'\t' if text.trim_ascii().is_empty() => {
                self.stats.blank_lines += 1;
                return Ok(Line::Blank);
            }
            b'C' if text[first..].starts_with(b"CPU:") => {
                if let Some((cpu, events)) = lost_marker(&text[first..]) {
                    self.stats.lost_lines += 1;
                    self.stats.lost_events += events;
                    return Ok(Line::Lost { cpu, events });
                }
            }
            _ => {}
        }
        let (common, at) = parse_common_at(text, first)?;
        let mut c = Cursor::new(text, at);
        let (name_bytes, kind) = event_name(&mut c)?;
        match kind {
            Some(kind) => {
                let event = parse_fields(kind, &mut c, &mut self.gfp)?;
                self.stats.events[kind.index()] += 1;
                self.stats.saw_event_line(common.cpu, common.ts_ns);
                Ok(Line::Event(Record {
                    line: self.line,
                    common,
                    event,
                }))
            }
            None => {
                // Names are checked to be `[A-Za-z0-9_]`, so ASCII.
                let name = std::str::from_utf8(name_bytes)
                    .map_err(|_| Fail::new(at, ErrorKind::BadUtf8, "event name"))?;
                self.stats.count_unknown(name);
                self.stats.saw_event_line(common.cpu, common.ts_ns);
                Ok(Line::Unknown {
                    line: self.line,
                    common,
                    name,
                    fields: c.rest(),
                })
            }
        }
    }
}

/// `NAME: ` (or `NAME:` ending the line); returns NAME, which is checked to be
/// `[A-Za-z0-9_]+` unless it is a known event's, and the known event's kind.
#[inline]
fn event_name<'a>(c: &mut Cursor<'a>) -> Result<(&'a [u8], Option<EventKind>), Fail> {
    const WHAT: &str = "event name and `: `";
    let rest = c.rest();
    let at = c.pos();
    let (n, _) = scan_until(rest, b':');
    let name = &rest[..n];
    let word = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
    let kind = EventKind::from_name(name);
    if n == 0 || (kind.is_none() && !name.iter().all(word)) {
        // Point at the first character that cannot be in a name.
        let bad = name.iter().position(|b| !word(b)).unwrap_or(n);
        let kind = if at + bad == c.line_len() {
            ErrorKind::Truncated
        } else {
            ErrorKind::UnexpectedText
        };
        return Err(Fail::new(at + bad, kind, WHAT));
    }
    c.advance(n);
    if c.rest() == b":" {
        c.advance(1);
    } else {
        c.lit(b": ", WHAT)?;
    }
    Ok((name, kind))
}

/// `CPU:1 [LOST 123 EVENTS]`
fn lost_marker(text: &[u8]) -> Option<(u32, u64)> {
    let rest = text.strip_prefix(b"CPU:")?;
    let sp = memchr::memchr(b' ', rest)?;
    let cpu = std::str::from_utf8(&rest[..sp]).ok()?.parse().ok()?;
    let rest = rest[sp..].trim_ascii_start().strip_prefix(b"[LOST ")?;
    let sp = memchr::memchr(b' ', rest)?;
    let events = std::str::from_utf8(&rest[..sp]).ok()?.parse().ok()?;
    (rest[sp..].trim_ascii() == b"EVENTS]").then_some((cpu, events))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_each_kind_of_line() {
        let mut p = Parser::new(Mode::Lenient);
        assert_eq!(
            p.parse_line(b"# tracer: nop"),
            Ok(Line::Comment(b"# tracer: nop"))
        );
        assert_eq!(p.parse_line(b""), Ok(Line::Blank));
        assert_eq!(p.parse_line(b"   \r"), Ok(Line::Blank));
        assert_eq!(
            p.parse_line(b"CPU:1 [LOST 42 EVENTS]"),
            Ok(Line::Lost { cpu: 1, events: 42 })
        );
        let l = p
            .parse_line(b"  sh-1 [000] .....  1.000000: sched_switch: prev_comm=sh")
            .unwrap();
        assert!(matches!(
            l,
            Line::Unknown {
                name: "sched_switch",
                fields: b"prev_comm=sh",
                ..
            }
        ));
        let l = p
            .parse_line(b"  sh-1 [000] .....  1.000000: kfree: call_site=f+0x1/0x2 ptr=10")
            .unwrap();
        let Line::Event(r) = l else { panic!("{l:?}") };
        assert_eq!(r.line, 6);
        assert_eq!(r.event.kind(), EventKind::Kfree);
        let l = p
            .parse_line(b"  sh-1 [000] .....  1.000000: kfree: call_site=f")
            .unwrap();
        assert!(matches!(l, Line::Skipped(e) if e.kind() == ErrorKind::Truncated && e.line() == 7));
        let s = p.stats();
        assert_eq!((s.lines, s.accounted()), (7, 7));
        assert_eq!(s.header.tracer.as_deref(), Some("nop"));
        assert_eq!(s.lost_events, 42);
        assert_eq!(s.unknown_count("sched_switch"), 1);
        assert_eq!(s.event_count(EventKind::Kfree), 1);
        assert_eq!(s.skipped_count(ErrorKind::Truncated), 1);
    }

    #[test]
    fn strict_mode_returns_the_error() {
        let mut p = Parser::new(Mode::Strict);
        let e = p
            .parse_line(b"  sh-1 [000] .....  1.000000: kfree: call_site=f ptr=xyz")
            .unwrap_err();
        assert_eq!((e.line(), e.kind()), (1, ErrorKind::BadNumber));
        assert_eq!(e.column(), 54);
        assert_eq!(e.found(), "xyz");
        assert_eq!(p.stats().skipped_total(), 1);
    }

    #[test]
    fn lost_markers() {
        assert_eq!(lost_marker(b"CPU:0 [LOST 7 EVENTS]"), Some((0, 7)));
        assert_eq!(lost_marker(b"CPU:0 [LOST x EVENTS]"), None);
        assert_eq!(lost_marker(b"CPU:0 [FOUND 7 EVENTS]"), None);
    }
}
