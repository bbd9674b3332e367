//! A byte cursor over one line, with hand-written number parsers.
//!
//! ftrace prints every event with a fixed `TP_printk` format, so a line is read
//! left to right against that format: literals (`" ptr="`) are compared with
//! `starts_with`, numbers are accumulated digit by digit (no `str::parse`, no
//! UTF-8 validation, overflow checked), and free-text values end at the next
//! space (found with `memchr`). Every failure names its 0-based column and what
//! the format wanted there, as a [`Fail`].

use crate::error::{ErrorKind, Fail};

/// Value of each byte as a hex digit, or `0xff`.
static HEX: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

#[inline(always)]
fn load8(s: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(s[at..at + 8].try_into().expect("8 bytes"))
}

/// Index of the first `stop` byte in `s` (or `s.len()`), and whether the bytes
/// before it are all ASCII. Eight bytes at a time: the words here are short, so
/// this beats a `memchr` call plus a UTF-8 check.
#[inline(always)]
pub(crate) fn scan_until(s: &[u8], stop: u8) -> (usize, bool) {
    let pattern = LO * u64::from(stop);
    let mut high = 0u64;
    let mut i = 0;
    while i + 8 <= s.len() {
        let w = load8(s, i);
        let x = w ^ pattern;
        // The lowest flagged byte is the first `stop` byte (carries only
        // flag bytes above a true match).
        let hit = x.wrapping_sub(LO) & !x & HI;
        if hit != 0 {
            let k = (hit.trailing_zeros() / 8) as usize;
            let before = if k == 0 { 0 } else { u64::MAX >> (64 - 8 * k) };
            return (i + k, (high | (w & before)) & HI == 0);
        }
        high |= w;
        i += 8;
    }
    let mut tail = 0u8;
    while i < s.len() && s[i] != stop {
        tail |= s[i];
        i += 1;
    }
    (i, (high & HI) == 0 && tail < 0x80)
}

/// `s` starts with `lit`; for literals of 4 to 16 bytes, two overlapping word
/// compares instead of a `memcmp` call (the literals are constants once inlined).
#[inline(always)]
fn starts_with_lit(s: &[u8], lit: &[u8]) -> bool {
    let n = lit.len();
    if s.len() < n {
        return false;
    }
    if (8..=16).contains(&n) {
        load8(s, 0) == load8(lit, 0) && load8(s, n - 8) == load8(lit, n - 8)
    } else if (4..8).contains(&n) {
        let l4 = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4"));
        l4(s, 0) == l4(lit, 0) && l4(s, n - 4) == l4(lit, n - 4)
    } else {
        &s[..n] == lit
    }
}

/// Reads one line (without its newline) from left to right.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at byte `pos` of `s`.
    #[inline]
    pub(crate) fn new(s: &'a [u8], pos: usize) -> Self {
        Cursor { s, pos }
    }

    /// Current 0-based column.
    #[inline]
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Moves `n` bytes forward (the caller has checked they exist).
    #[inline]
    pub(crate) fn advance(&mut self, n: usize) {
        self.pos += n;
    }

    /// Length of the whole line.
    #[inline]
    pub(crate) fn line_len(&self) -> usize {
        self.s.len()
    }

    /// The unread rest of the line.
    #[inline]
    pub(crate) fn rest(&self) -> &'a [u8] {
        &self.s[self.pos..]
    }

    #[inline]
    fn fail(&self, at: usize, kind: ErrorKind, expected: &'static str) -> Fail {
        Fail::new(at, kind, expected)
    }

    /// Consumes `lit`, or fails: `Truncated` if the line ends inside it, otherwise
    /// `UnexpectedText`.
    #[inline(always)]
    pub(crate) fn lit(&mut self, lit: &'static [u8], expected: &'static str) -> Result<(), Fail> {
        let rest = self.rest();
        if starts_with_lit(rest, lit) {
            self.pos += lit.len();
            Ok(())
        } else {
            // Where the mismatch is, and whether the line simply stopped short.
            let same = rest.iter().zip(lit).take_while(|(a, b)| a == b).count();
            let kind = if same == rest.len() {
                ErrorKind::Truncated
            } else {
                ErrorKind::UnexpectedText
            };
            Err(self.fail(self.pos + same, kind, expected))
        }
    }

    /// Skips spaces; returns how many.
    #[inline]
    pub(crate) fn skip_spaces(&mut self) -> usize {
        let n = self.rest().iter().take_while(|&&b| b == b' ').count();
        self.pos += n;
        n
    }

    /// Fails unless the whole line has been read.
    #[inline]
    pub(crate) fn end(&self) -> Result<(), Fail> {
        if self.pos == self.s.len() {
            Ok(())
        } else {
            Err(self.fail(self.pos, ErrorKind::UnexpectedText, "end of line"))
        }
    }

    /// The bytes up to the next space (or the end of the line); fails if empty.
    #[inline(always)]
    pub(crate) fn word(&mut self, expected: &'static str) -> Result<&'a [u8], Fail> {
        let rest = self.rest();
        let (n, _) = scan_until(rest, b' ');
        if n == 0 {
            return Err(self.empty(expected));
        }
        self.pos += n;
        Ok(&rest[..n])
    }

    /// Like [`word`](Self::word), checked to be UTF-8 (kernel symbols and cache names are ASCII).
    #[inline(always)]
    pub(crate) fn str_word(&mut self, expected: &'static str) -> Result<&'a str, Fail> {
        let rest = self.rest();
        let (n, ascii) = scan_until(rest, b' ');
        if n == 0 {
            return Err(self.empty(expected));
        }
        let w = &rest[..n];
        let s = if ascii {
            // SAFETY: every byte of `w` is below 0x80 (checked by `scan_until`),
            // and ASCII is valid UTF-8.
            unsafe { std::str::from_utf8_unchecked(w) }
        } else {
            std::str::from_utf8(w).map_err(|_| self.fail(self.pos, ErrorKind::BadUtf8, expected))?
        };
        self.pos += n;
        Ok(s)
    }

    /// A `%pS` symbol: [`str_word`](Self::str_word), plus the ` [module]`
    /// that follows it when the symbol lies in a kernel module
    /// (`nvme_setup_cmd+0x1a/0x200 [nvme_core]`), as one string.
    pub(crate) fn symbol(&mut self, expected: &'static str) -> Result<&'a str, Fail> {
        let start = self.pos;
        let sym = self.str_word(expected)?;
        let rest = self.rest();
        if !rest.starts_with(b" [") {
            return Ok(sym);
        }
        let Some(close) = rest.iter().position(|&b| b == b']') else {
            return Ok(sym);
        };
        let module = &rest[2..close];
        if module.is_empty() || module.contains(&b' ') {
            return Ok(sym);
        }
        let whole = &self.s[start..self.pos + close + 1];
        let whole = std::str::from_utf8(whole)
            .map_err(|_| self.fail(self.pos + 2, ErrorKind::BadUtf8, expected))?;
        self.pos += close + 1;
        Ok(whole)
    }

    /// The failure for a value that is missing.
    #[inline]
    fn empty(&self, expected: &'static str) -> Fail {
        let kind = if self.pos == self.s.len() {
            ErrorKind::Truncated
        } else {
            ErrorKind::BadNumber
        };
        self.fail(self.pos, kind, expected)
    }

    /// After a number: the next byte must be a space or the end of the line.
    #[inline(always)]
    fn delimited(&self, start: usize, expected: &'static str) -> Result<(), Fail> {
        match self.s.get(self.pos) {
            None | Some(b' ') => Ok(()),
            Some(_) => Err(self.fail(start, ErrorKind::BadNumber, expected)),
        }
    }

    /// Hex digits without a prefix (ftrace's `%p` and `%lx`), at most 16 of them.
    #[inline(always)]
    pub(crate) fn hex(&mut self, expected: &'static str) -> Result<u64, Fail> {
        let start = self.pos;
        let mut v = 0u64;
        let mut n = 0usize;
        while let Some(&b) = self.s.get(self.pos) {
            let d = HEX[usize::from(b)];
            if d == 0xff {
                break;
            }
            v = (v << 4) | u64::from(d);
            n += 1;
            self.pos += 1;
        }
        if n == 0 {
            return Err(self.empty(expected));
        }
        if n > 16 {
            return Err(self.fail(start, ErrorKind::BadNumber, expected));
        }
        self.delimited(start, expected)?;
        Ok(v)
    }

    /// A pointer as `%p` prints it: hex digits, or `(null)` on old kernels.
    #[inline(always)]
    pub(crate) fn pointer(&mut self, expected: &'static str) -> Result<u64, Fail> {
        if self.rest().starts_with(b"(null)") {
            self.pos += 6;
            self.delimited(self.pos - 6, expected)?;
            return Ok(0);
        }
        self.hex(expected)
    }

    /// `0x` followed by hex digits (`0x%lx`).
    #[inline(always)]
    pub(crate) fn hex0x(&mut self, expected: &'static str) -> Result<u64, Fail> {
        let rest = self.rest();
        let start = self.pos;
        if rest.starts_with(b"0x") || rest.starts_with(b"0X") {
            self.pos += 2;
            // Report the number from its `0x`, not from its first digit.
            self.hex(expected)
                .map_err(|f| Fail::new(start, f.kind, f.expected))
        } else if rest.is_empty() || rest == b"0" {
            Err(self.fail(self.pos, ErrorKind::Truncated, expected))
        } else {
            Err(self.fail(self.pos, ErrorKind::BadNumber, expected))
        }
    }

    /// An unsigned decimal number, followed by a space or the end of the line.
    #[inline(always)]
    pub(crate) fn dec(&mut self, expected: &'static str) -> Result<u64, Fail> {
        let start = self.pos;
        let v = self.digits(expected)?;
        self.delimited(start, expected)?;
        Ok(v)
    }

    /// Decimal digits, whatever follows them.
    #[inline(always)]
    pub(crate) fn digits(&mut self, expected: &'static str) -> Result<u64, Fail> {
        let start = self.pos;
        let mut v = 0u64;
        while let Some(&b) = self.s.get(self.pos) {
            let d = b.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            v = match v.checked_mul(10).and_then(|v| v.checked_add(u64::from(d))) {
                Some(v) => v,
                None => return Err(self.fail(start, ErrorKind::BadNumber, expected)),
            };
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.empty(expected));
        }
        Ok(v)
    }

    /// An unsigned decimal that must fit in `u32`.
    #[inline(always)]
    pub(crate) fn dec_u32(&mut self, expected: &'static str) -> Result<u32, Fail> {
        let start = self.pos;
        let v = self.dec(expected)?;
        u32::try_from(v).map_err(|_| self.fail(start, ErrorKind::BadNumber, expected))
    }

    /// A signed decimal that must fit in `i32` (`%d`).
    #[inline(always)]
    pub(crate) fn dec_i32(&mut self, expected: &'static str) -> Result<i32, Fail> {
        let start = self.pos;
        let neg = self.s.get(self.pos) == Some(&b'-');
        if neg {
            self.pos += 1;
        }
        let v = match self.dec(expected) {
            Ok(v) => v,
            Err(f) => {
                self.pos = start;
                return Err(Fail::new(start, f.kind, f.expected));
            }
        };
        let v = if neg { -(v as i128) } else { v as i128 };
        i32::try_from(v).map_err(|_| self.fail(start, ErrorKind::BadNumber, expected))
    }

    /// `true` or `false` (`%s` of a bool).
    #[inline(always)]
    pub(crate) fn boolean(&mut self, expected: &'static str) -> Result<bool, Fail> {
        let start = self.pos;
        let w = self.word(expected)?;
        match w {
            b"true" => Ok(true),
            b"false" => Ok(false),
            _ => Err(self.fail(start, ErrorKind::UnexpectedText, expected)),
        }
    }

    /// An integer flag printed with `%d`: zero is false, anything else true.
    #[inline]
    pub(crate) fn int_flag(&mut self, expected: &'static str) -> Result<bool, Fail> {
        Ok(self.dec_i32(expected)? != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cur(s: &str) -> Cursor<'_> {
        Cursor::new(s.as_bytes(), 0)
    }

    #[test]
    fn word_scanning_agrees_with_the_naive_way() {
        let texts: [&[u8]; 8] = [
            b"",
            b" ",
            b"abc",
            b"abcdefgh",
            b"abcdefgh ",
            b"getname_flags.part.0+0x24/0x1f0 ptr=1",
            b"caf\xc3\xa9_long_name_here x",
            b"0123456\x807 y",
        ];
        for t in texts {
            for start in 0..t.len().max(1) {
                let s = &t[start.min(t.len())..];
                let want = s.iter().position(|&b| b == b' ').unwrap_or(s.len());
                let ascii = s[..want].is_ascii();
                assert_eq!(scan_until(s, b' '), (want, ascii), "{s:?}");
            }
        }
        assert!(starts_with_lit(b" bytes_alloc=16", b" bytes_alloc="));
        assert!(!starts_with_lit(b" bytes_allod=16", b" bytes_alloc="));
        assert!(!starts_with_lit(b" bytes_all", b" bytes_alloc="));
        assert!(starts_with_lit(b" ptr=1", b" ptr="));
        assert!(!starts_with_lit(b" ptx=1", b" ptr="));
        assert!(starts_with_lit(b": x", b": "));
        assert!(starts_with_lit(b" gfp_flags=GFP", b" gfp_flags="));
        assert!(!starts_with_lit(b" gfp_flagz=GFP", b" gfp_flags="));
    }

    #[test]
    fn hex_values_and_errors() {
        assert_eq!(cur("ffff888100873500").hex("x"), Ok(0xffff888100873500));
        assert_eq!(cur("0000000000000000 rest").hex("x"), Ok(0));
        let mut c = cur("ABC1 x");
        assert_eq!(c.hex("x"), Ok(0xabc1));
        assert_eq!(c.pos(), 4);
        assert_eq!(cur("").hex("x").unwrap_err().kind, ErrorKind::Truncated);
        assert_eq!(cur("zz").hex("x").unwrap_err().kind, ErrorKind::BadNumber);
        assert_eq!(cur("12g4").hex("x").unwrap_err().kind, ErrorKind::BadNumber);
        assert_eq!(
            cur("11112222333344445").hex("x").unwrap_err().kind,
            ErrorKind::BadNumber
        );
        assert_eq!(cur("(null) x").pointer("x"), Ok(0));
    }

    #[test]
    fn hex0x_values_and_errors() {
        assert_eq!(cur("0x13bd38").hex0x("x"), Ok(0x13bd38));
        assert_eq!(cur("0xffffe8ffffffffff").hex0x("x"), Ok(0xffffe8ffffffffff));
        let f = cur("0xq").hex0x("x").unwrap_err();
        assert_eq!((f.kind, f.col), (ErrorKind::BadNumber, 0));
        assert_eq!(
            cur("13bd38").hex0x("x").unwrap_err().kind,
            ErrorKind::BadNumber
        );
        assert_eq!(cur("0").hex0x("x").unwrap_err().kind, ErrorKind::Truncated);
        assert_eq!(cur("0x").hex0x("x").unwrap_err().kind, ErrorKind::Truncated);
    }

    #[test]
    fn decimal_values_and_errors() {
        assert_eq!(
            cur("18446683600644456448").dec("x"),
            Ok(18446683600644456448)
        );
        assert_eq!(
            cur("18446744073709551616").dec("x").unwrap_err().kind,
            ErrorKind::BadNumber
        );
        assert_eq!(cur("-1").dec_i32("x"), Ok(-1));
        assert_eq!(cur("0 x").dec_i32("x"), Ok(0));
        assert_eq!(
            cur("2147483648").dec_i32("x").unwrap_err().kind,
            ErrorKind::BadNumber
        );
        assert_eq!(cur("-2147483648").dec_i32("x"), Ok(i32::MIN));
        assert_eq!(
            cur("-").dec_i32("x").unwrap_err().kind,
            ErrorKind::Truncated
        );
        assert_eq!(
            cur("4096x").dec("x").unwrap_err().kind,
            ErrorKind::BadNumber
        );
        assert_eq!(
            cur("4294967296").dec_u32("x").unwrap_err().kind,
            ErrorKind::BadNumber
        );
    }

    #[test]
    fn literals_words_booleans() {
        let mut c = cur("name=filp ptr=1");
        c.lit(b"name=", "name").unwrap();
        assert_eq!(c.str_word("n"), Ok("filp"));
        let f = c.lit(b" ptr=", "p").map(|_| c.hex("h"));
        assert_eq!(f, Ok(Ok(1)));
        c.end().unwrap();
        let mut c = cur(" pt");
        assert_eq!(c.lit(b" ptr=", "p").unwrap_err().kind, ErrorKind::Truncated);
        let mut c = cur(" pxr=");
        let f = c.lit(b" ptr=", "p").unwrap_err();
        assert_eq!((f.kind, f.col), (ErrorKind::UnexpectedText, 2));
        assert_eq!(cur("true").boolean("b"), Ok(true));
        assert_eq!(cur("false x").boolean("b"), Ok(false));
        assert_eq!(
            cur("yes").boolean("b").unwrap_err().kind,
            ErrorKind::UnexpectedText
        );
        assert_eq!(cur("").word("w").unwrap_err().kind, ErrorKind::Truncated);
        assert_eq!(cur("1").int_flag("f"), Ok(true));
    }
}
