//! Parse errors: where a line went wrong and what was expected there.
//!
//! The hot path never builds a [`ParseError`]: field parsers fail with a small
//! `Copy` value (`Fail`: column, [`ErrorKind`], a static description of what was
//! expected) and only the caller that reports it turns it into a [`ParseError`]
//! by adding the line number and a short copy of the offending text. Even that
//! copy lives inline (at most [`SNIPPET_MAX`] bytes), so counting malformed lines
//! in lenient mode never allocates.
//!
//! [`ErrorKind`] is also the "reason" a lenient reader counts skipped lines by.

use std::fmt;
use std::io;

/// Longest excerpt of the offending text a [`ParseError`] keeps.
pub const SNIPPET_MAX: usize = 32;

/// Why a line could not be parsed; skipped lines are counted by this reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// The line ended where more text was expected (a cut-off line).
    Truncated,
    /// A number is missing, has a bad digit, or does not fit its type.
    BadNumber,
    /// The irq-info column holds a character ftrace never prints there.
    BadIrqFlags,
    /// `gfp_flags=` does not parse as a GFP spelling (unknown flag name, ...).
    BadGfp,
    /// Other text than the expected literal: a wrong field name, bad
    /// punctuation, garbage after the last field, or no `TASK-PID [CPU]` prefix.
    UnexpectedText,
    /// A call site, cache name or event name is not valid UTF-8.
    BadUtf8,
    /// A line longer than the reader's buffer; it is skipped as a whole.
    LineTooLong,
}

impl ErrorKind {
    /// Number of kinds (the length of per-kind counter arrays).
    pub const COUNT: usize = 7;

    /// Every kind, in index order.
    pub const ALL: [ErrorKind; Self::COUNT] = [
        ErrorKind::Truncated,
        ErrorKind::BadNumber,
        ErrorKind::BadIrqFlags,
        ErrorKind::BadGfp,
        ErrorKind::UnexpectedText,
        ErrorKind::BadUtf8,
        ErrorKind::LineTooLong,
    ];

    /// Index into per-kind arrays (`0..COUNT`).
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Short snake_case name, for summaries and JSON keys.
    pub const fn name(self) -> &'static str {
        match self {
            ErrorKind::Truncated => "truncated",
            ErrorKind::BadNumber => "bad_number",
            ErrorKind::BadIrqFlags => "bad_irq_flags",
            ErrorKind::BadGfp => "bad_gfp",
            ErrorKind::UnexpectedText => "unexpected_text",
            ErrorKind::BadUtf8 => "bad_utf8",
            ErrorKind::LineTooLong => "line_too_long",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A failure inside one line, before the line number is known.
///
/// `col` is the 0-based byte offset in the line (without its newline) where the
/// problem starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fail {
    pub col: usize,
    pub kind: ErrorKind,
    pub expected: &'static str,
}

impl Fail {
    pub(crate) const fn new(col: usize, kind: ErrorKind, expected: &'static str) -> Self {
        Fail {
            col,
            kind,
            expected,
        }
    }
}

/// A malformed line: its number, the column, what was expected and what was found.
///
/// `Display` reads like `line 17, column 58: bad_number: expected hex pointer
/// after `ptr=`, found `zzzz8881`.`
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ParseError {
    line: u64,
    column: u32,
    kind: ErrorKind,
    expected: &'static str,
    snippet: [u8; SNIPPET_MAX],
    snippet_len: u8,
}

impl ParseError {
    /// Builds the error for `fail` on line number `line` (1-based) whose text is `text`.
    pub(crate) fn new(line: u64, text: &[u8], fail: Fail) -> Self {
        let start = fail.col.min(text.len());
        let rest = &text[start..];
        // The offending token: up to the next space, at most SNIPPET_MAX
        // bytes; spaces in front of it are part of what was found (a value
        // missing before the next field, an extra space), so that "end of
        // line" is said only where the line ends.
        let lead = rest.iter().take_while(|&&b| b == b' ').count();
        let end = (lead + memchr::memchr(b' ', &rest[lead..]).unwrap_or(rest.len() - lead))
            .min(SNIPPET_MAX);
        let mut snippet = [0u8; SNIPPET_MAX];
        snippet[..end].copy_from_slice(&rest[..end]);
        ParseError {
            line,
            column: u32::try_from(fail.col + 1).unwrap_or(u32::MAX),
            kind: fail.kind,
            expected: fail.expected,
            snippet,
            snippet_len: end as u8,
        }
    }

    /// 1-based line number in the trace.
    pub const fn line(&self) -> u64 {
        self.line
    }

    /// 1-based byte column in the line where the problem starts.
    pub const fn column(&self) -> u32 {
        self.column
    }

    /// The reason, as counted by a lenient reader.
    pub const fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// What the parser expected at [`column`](Self::column), e.g. "hex pointer after `ptr=`".
    pub const fn expected(&self) -> &'static str {
        self.expected
    }

    /// The text found at the column: up to the next space, at most [`SNIPPET_MAX`]
    /// bytes, invalid UTF-8 replaced. Empty when the line ended there.
    pub fn found(&self) -> String {
        String::from_utf8_lossy(&self.snippet[..usize::from(self.snippet_len)]).into_owned()
    }
}

impl fmt::Debug for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParseError")
            .field("line", &self.line)
            .field("column", &self.column)
            .field("kind", &self.kind)
            .field("expected", &self.expected)
            .field("found", &self.found())
            .finish()
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}: expected {}, ",
            self.line, self.column, self.kind, self.expected
        )?;
        if self.snippet_len == 0 {
            f.write_str("found end of line")
        } else {
            write!(f, "found `{}`", self.found())
        }
    }
}

impl std::error::Error for ParseError {}

/// Anything a [`crate::TraceReader`] can fail with.
#[derive(Debug)]
pub enum Error {
    /// Reading or decompressing the input failed.
    Io(io::Error),
    /// A malformed line, in [`crate::Mode::Strict`].
    Parse(ParseError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "reading trace: {e}"),
            Error::Parse(e) => write!(f, "malformed trace: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            Error::Parse(e) => Some(e),
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<ParseError> for Error {
    fn from(e: ParseError) -> Self {
        Error::Parse(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_line_column_and_token() {
        let text = b"abc ptr=zz12 rest";
        let e = ParseError::new(
            17,
            text,
            Fail::new(8, ErrorKind::BadNumber, "hex pointer after `ptr=`"),
        );
        assert_eq!(e.line(), 17);
        assert_eq!(e.column(), 9);
        assert_eq!(e.found(), "zz12");
        assert_eq!(
            e.to_string(),
            "line 17, column 9: bad_number: expected hex pointer after `ptr=`, found `zz12`"
        );
    }

    #[test]
    fn end_of_line_and_long_tokens() {
        let e = ParseError::new(1, b"abc", Fail::new(3, ErrorKind::Truncated, "` ptr=`"));
        assert!(e.to_string().ends_with("found end of line"), "{e}");
        let long = [b'x'; 100];
        let e = ParseError::new(1, &long, Fail::new(0, ErrorKind::UnexpectedText, "x"));
        assert_eq!(e.found().len(), SNIPPET_MAX);
    }

    #[test]
    fn kinds_are_indexed_in_order() {
        for (i, k) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
    }
}
