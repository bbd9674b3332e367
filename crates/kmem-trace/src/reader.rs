//! Streaming over a trace: plain text or zstd, in constant memory.
//!
//! [`TraceReader`] peeks at the first bytes of its input: the zstd frame magic
//! (`28 b5 2f fd`, or a skippable frame) selects a streaming decoder, anything
//! else is read as text. Decompressed text goes into one fixed buffer
//! ([`DEFAULT_BUFFER`] unless told otherwise); lines are found with `memchr`
//! and parsed in place, so events borrow from the buffer and nothing is
//! allocated per line. When no newline is left, the partial line is moved to
//! the front and the buffer refilled. A line longer than the whole buffer is
//! counted as [`crate::ErrorKind::LineTooLong`] and its bytes are discarded up
//! to the next newline. Memory is the buffer plus the zstd window, whatever the
//! trace's size.
//!
//! Because records borrow the buffer, [`TraceReader::next_line`] is a lending
//! call (one line alive at a time); [`TraceReader::for_each_event`] wraps the
//! usual loop. For text already in memory (or mapped), [`SliceLines`] is a
//! plain `Iterator` that borrows from the slice without copying it.
//! [`TextReader`] is the decompressing `Read` underneath, for callers that want
//! the text itself ([`read_text`] reads it all).
//!
//! With [`TraceReader::open_background`] the reading and decompressing move to
//! a thread of their own that keeps a few 1 MiB chunks ahead (bounded channels
//! carry full chunks one way and empty ones back, so memory stays constant);
//! the parsing thread then never waits for zstd while a second CPU is free.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::error::{Error, ParseError};
use crate::parser::{Line, Mode, Parser, Record};
use crate::stats::Stats;

/// Default size of the line buffer: 1 MiB (also the longest line kept).
pub const DEFAULT_BUFFER: usize = 1 << 20;

/// Smallest buffer accepted (smaller requests are rounded up).
pub const MIN_BUFFER: usize = 64;

/// True if `head` starts with a zstd frame (or a skippable frame).
pub fn is_zstd(head: &[u8]) -> bool {
    match head {
        [0x28, 0xb5, 0x2f, 0xfd, ..] => true,
        [b0, 0x2a, 0x4d, 0x18, ..] => b0 & 0xf0 == 0x50,
        _ => false,
    }
}

/// Counts the bytes read from the underlying input (for progress bars).
struct Counting<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

enum Source<R: Read> {
    Plain(BufReader<Counting<R>>),
    Zstd(Box<zstd::stream::read::Decoder<'static, BufReader<Counting<R>>>>),
    Background(Background),
}

/// Chunks in flight between a background reader thread and its consumer.
const CHUNKS: usize = 4;
/// Bytes per chunk.
const CHUNK: usize = 1 << 20;

/// A chunk of text and how many of its bytes are valid, or the error that ended the input.
type Filled = io::Result<(Vec<u8>, usize)>;

/// The consumer's end of a [`TextReader::background`] thread: full chunks come
/// in, emptied ones go back, so memory stays at [`CHUNKS`] chunks.
struct Background {
    full: Option<Receiver<Filled>>,
    empty: Option<SyncSender<Vec<u8>>>,
    cur: Vec<u8>,
    len: usize,
    pos: usize,
    done: bool,
    compressed: bool,
    input_bytes: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    fn spawn<R: Read + Send + 'static>(mut text: TextReader<R>) -> io::Result<Background> {
        let compressed = text.is_compressed();
        let input_bytes = Arc::new(AtomicU64::new(0));
        let (full_tx, full_rx) = mpsc::sync_channel::<Filled>(CHUNKS);
        let (empty_tx, empty_rx) = mpsc::sync_channel::<Vec<u8>>(CHUNKS);
        for _ in 0..CHUNKS {
            empty_tx
                .send(vec![0u8; CHUNK])
                .expect("the channel has room for every chunk");
        }
        let counter = Arc::clone(&input_bytes);
        let thread = std::thread::Builder::new()
            .name("kmem-trace-read".into())
            .spawn(move || {
                // Ends when the input does, on an error, or when the consumer is gone.
                while let Ok(mut chunk) = empty_rx.recv() {
                    let mut n = 0;
                    let result = loop {
                        match text.read(&mut chunk[n..]) {
                            Ok(0) => break Ok(()),
                            Ok(got) => {
                                n += got;
                                if n == chunk.len() {
                                    break Ok(());
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => break Err(e),
                        }
                    };
                    counter.store(text.input_bytes(), Ordering::Relaxed);
                    let last = n < chunk.len() || result.is_err();
                    if n > 0 && full_tx.send(Ok((chunk, n))).is_err() {
                        return;
                    }
                    if let Err(e) = result {
                        let _ = full_tx.send(Err(e));
                    }
                    if last {
                        return;
                    }
                }
            })?;
        Ok(Background {
            full: Some(full_rx),
            empty: Some(empty_tx),
            cur: Vec::new(),
            len: 0,
            pos: 0,
            done: false,
            compressed,
            input_bytes,
            thread: Some(thread),
        })
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.len {
                let n = buf.len().min(self.len - self.pos);
                buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.done || buf.is_empty() {
                return Ok(0);
            }
            if !self.cur.is_empty() {
                let spent = std::mem::take(&mut self.cur);
                if let Some(empty) = &self.empty {
                    // The thread may have finished: then the chunk is simply dropped.
                    let _ = empty.send(spent);
                }
            }
            let next = self.full.as_ref().map(|rx| rx.recv());
            match next {
                Some(Ok(Ok((chunk, n)))) => {
                    self.cur = chunk;
                    self.len = n;
                    self.pos = 0;
                }
                Some(Ok(Err(e))) => {
                    self.done = true;
                    return Err(e);
                }
                Some(Err(_)) | None => {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // Closing both channels unblocks the thread wherever it waits.
        self.full = None;
        self.empty = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The text of a trace, decompressed on the fly if its first bytes are a zstd
/// frame: a plain `Read` for callers that want the bytes, not the events.
pub struct TextReader<R: Read> {
    src: Source<R>,
}

impl TextReader<File> {
    /// Opens the trace at `path`.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        TextReader::new(File::open(path)?)
    }
}

impl<R: Read> TextReader<R> {
    /// Wraps `input`, peeking at its first bytes to choose plain or zstd.
    pub fn new(input: R) -> io::Result<Self> {
        let mut r = BufReader::with_capacity(64 << 10, Counting { inner: input, n: 0 });
        let src = if is_zstd(r.fill_buf()?) {
            Source::Zstd(Box::new(zstd::stream::read::Decoder::with_buffer(r)?))
        } else {
            Source::Plain(r)
        };
        Ok(TextReader { src })
    }

    /// Like [`new`](Self::new), but reading and decompressing happen on a
    /// thread of their own, up to four 1 MiB chunks ahead of the consumer:
    /// on a machine with a spare CPU, parsing no longer waits for zstd.
    pub fn background(input: R) -> io::Result<Self>
    where
        R: Send + 'static,
    {
        let inner = TextReader::new(input)?;
        Ok(TextReader {
            src: Source::Background(Background::spawn(inner)?),
        })
    }

    /// True if the input is zstd-compressed.
    pub fn is_compressed(&self) -> bool {
        match &self.src {
            Source::Plain(_) => false,
            Source::Zstd(_) => true,
            Source::Background(b) => b.compressed,
        }
    }

    /// Bytes consumed from the input so far (compressed bytes for zstd; with
    /// [`background`](Self::background), as far as the thread has read).
    pub fn input_bytes(&self) -> u64 {
        match &self.src {
            Source::Plain(r) => r.get_ref().n - r.buffer().len() as u64,
            Source::Zstd(r) => r.get_ref().get_ref().n - r.get_ref().buffer().len() as u64,
            Source::Background(b) => b.input_bytes.load(Ordering::Relaxed),
        }
    }
}

impl<R: Read> Read for TextReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = match &mut self.src {
            Source::Plain(r) => return r.read(buf),
            Source::Zstd(r) => r.read(buf),
            // Its thread reads through a `Zstd` source: already said.
            Source::Background(b) => return b.read(buf),
        };
        // A zstd error says what the decoder met ("incomplete frame"), not
        // where or what it likely means: a capture cut off, or damage.
        r.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "{e} after {} compressed bytes (the zstd file is truncated or damaged)",
                    self.input_bytes()
                ),
            )
        })
    }
}

impl<R: Read> std::fmt::Debug for TextReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextReader")
            .field("compressed", &self.is_compressed())
            .field("background", &matches!(self.src, Source::Background(_)))
            .field("input_bytes", &self.input_bytes())
            .finish()
    }
}

/// The whole text of the trace at `path`, decompressed if need be.
pub fn read_text(path: impl AsRef<Path>) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    TextReader::open(path)?.read_to_end(&mut v)?;
    Ok(v)
}

/// Where the next line is.
enum Next {
    /// `buf[a..b]` (without its newline), and the bytes it used up (newline included).
    Text(usize, usize, usize),
    /// A line longer than the buffer; `buf[a..b]` is its start.
    TooLong(usize, usize),
    /// End of input.
    End,
}

/// Streams a trace (plain or `.zst`) line by line; see the module comment.
pub struct TraceReader<R: Read> {
    src: TextReader<R>,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    eof: bool,
    /// Inside a too-long line: drop bytes up to the next newline.
    discarding: bool,
    parser: Parser,
}

impl TraceReader<File> {
    /// Opens the trace at `path` (plain text or zstd, detected by content).
    pub fn open(path: impl AsRef<Path>, mode: Mode) -> io::Result<Self> {
        TraceReader::new(File::open(path)?, mode)
    }

    /// Opens the trace at `path`, reading and decompressing on a thread of
    /// its own ([`TraceReader::background`]).
    pub fn open_background(path: impl AsRef<Path>, mode: Mode) -> io::Result<Self> {
        TraceReader::background(File::open(path)?, mode)
    }
}

impl<R: Read> TraceReader<R> {
    /// Reads a trace from `input`, with a [`DEFAULT_BUFFER`]-byte line buffer.
    pub fn new(input: R, mode: Mode) -> io::Result<Self> {
        TraceReader::with_buffer(input, mode, DEFAULT_BUFFER)
    }

    /// Reads a trace from `input` with a `buffer`-byte line buffer (at least
    /// [`MIN_BUFFER`]); lines longer than that are skipped as too long.
    pub fn with_buffer(input: R, mode: Mode, buffer: usize) -> io::Result<Self> {
        Ok(TraceReader::from_text(
            TextReader::new(input)?,
            mode,
            buffer,
        ))
    }

    /// Reads a trace from `input` with decompression on a thread of its own
    /// ([`TextReader::background`]): the fastest way end to end when a second
    /// CPU is free.
    pub fn background(input: R, mode: Mode) -> io::Result<Self>
    where
        R: Send + 'static,
    {
        Ok(TraceReader::from_text(
            TextReader::background(input)?,
            mode,
            DEFAULT_BUFFER,
        ))
    }

    /// Parses the text `src` yields, with a `buffer`-byte line buffer (at least [`MIN_BUFFER`]).
    pub fn from_text(src: TextReader<R>, mode: Mode, buffer: usize) -> Self {
        TraceReader {
            src,
            buf: vec![0u8; buffer.max(MIN_BUFFER)].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
            discarding: false,
            parser: Parser::new(mode),
        }
    }

    /// True if the input is zstd-compressed.
    pub fn is_compressed(&self) -> bool {
        self.src.is_compressed()
    }

    /// Bytes consumed from the input so far (compressed bytes for `.zst`):
    /// compare with the file size for a progress bar.
    pub fn input_bytes(&self) -> u64 {
        self.src.input_bytes()
    }

    /// Counters so far.
    pub fn stats(&self) -> &Stats {
        self.parser.stats()
    }

    /// The counters, consuming the reader.
    pub fn into_stats(self) -> Stats {
        self.parser.into_stats()
    }

    /// The next line, classified; `Ok(None)` at the end of the input.
    ///
    /// In [`Mode::Strict`] a malformed line is `Err(Error::Parse)`; in
    /// [`Mode::Lenient`] it is [`Line::Skipped`]. Either way it is counted.
    pub fn next_line(&mut self) -> Result<Option<Line<'_>>, Error> {
        match self.next_range()? {
            Next::End => Ok(None),
            Next::Text(a, b, used) => {
                self.parser.stats_mut().bytes += used as u64;
                Ok(Some(self.parser.parse_line(&self.buf[a..b])?))
            }
            Next::TooLong(a, b) => {
                let line = self.parser.too_long(&self.buf[a..b])?;
                Ok(Some(line))
            }
        }
    }

    /// Calls `f` on every event to the end of the input; other lines are only
    /// counted. Stops at the first malformed line in [`Mode::Strict`].
    pub fn for_each_event(&mut self, mut f: impl FnMut(&Record<'_>)) -> Result<(), Error> {
        while let Some(line) = self.next_line()? {
            if let Line::Event(r) = line {
                f(&r);
            }
        }
        Ok(())
    }

    /// Finds the next line in the buffer, refilling it as needed.
    fn next_range(&mut self) -> io::Result<Next> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf[self.start..self.end]) {
                let a = self.start;
                self.start = a + i + 1;
                if self.discarding {
                    // The tail of a too-long line (its newline included).
                    self.discarding = false;
                    self.parser.stats_mut().bytes += i as u64 + 1;
                    continue;
                }
                return Ok(Next::Text(a, a + i, i + 1));
            }
            if self.eof {
                if self.start < self.end {
                    let a = self.start;
                    self.start = self.end;
                    if self.discarding {
                        self.discarding = false;
                        self.parser.stats_mut().bytes += (self.end - a) as u64;
                        continue;
                    }
                    // A last line without a newline.
                    return Ok(Next::Text(a, self.end, self.end - a));
                }
                return Ok(Next::End);
            }
            if self.start == 0 && self.end == self.buf.len() {
                // A full buffer without a newline.
                self.parser.stats_mut().bytes += self.end as u64;
                self.start = self.end;
                if !self.discarding {
                    self.discarding = true;
                    let keep = self.end.min(crate::error::SNIPPET_MAX * 4);
                    return Ok(Next::TooLong(0, keep));
                }
            }
            // Move the partial line to the front and read more after it.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            let n = loop {
                match self.src.read(&mut self.buf[self.end..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            if n == 0 {
                self.eof = true;
            }
            self.end += n;
        }
    }
}

impl<R: Read> std::fmt::Debug for TraceReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceReader")
            .field("compressed", &self.is_compressed())
            .field("buffer", &self.buf.len())
            .field("parser", &self.parser)
            .finish_non_exhaustive()
    }
}

/// Lines of a trace already in memory (plain text), parsed without copying.
///
/// An `Iterator` of `Result<Line, ParseError>`: errors only in [`Mode::Strict`].
#[derive(Debug)]
pub struct SliceLines<'a> {
    data: &'a [u8],
    pos: usize,
    parser: Parser,
}

impl<'a> SliceLines<'a> {
    /// Lines of `data`.
    pub fn new(data: &'a [u8], mode: Mode) -> Self {
        SliceLines {
            data,
            pos: 0,
            parser: Parser::new(mode),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> &Stats {
        self.parser.stats()
    }

    /// The counters, consuming the iterator.
    pub fn into_stats(self) -> Stats {
        self.parser.into_stats()
    }

    /// Calls `f` on every remaining event; returns the counters.
    pub fn for_each_event(mut self, mut f: impl FnMut(&Record<'a>)) -> Result<Stats, ParseError> {
        for line in &mut self {
            if let Line::Event(r) = line? {
                f(&r);
            }
        }
        Ok(self.into_stats())
    }
}

impl<'a> Iterator for SliceLines<'a> {
    type Item = Result<Line<'a>, ParseError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let rest = &self.data[self.pos..];
        if rest.is_empty() {
            return None;
        }
        let (text, used) = match memchr::memchr(b'\n', rest) {
            Some(i) => (&rest[..i], i + 1),
            None => (rest, rest.len()),
        };
        self.pos += used;
        self.parser.stats_mut().bytes += used as u64;
        Some(self.parser.parse_line(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::event::EventKind;

    const TEXT: &str = "# tracer: nop\n\
        \x20 a-1 [000] .....  1.000001: kfree: call_site=f+0x1/0x2 ptr=10\n\
        \x20 a-1 [001] d....  1.000002: mm_page_free: page=ffffea0004ef4e00 pfn=0x13bd38 order=0\n\
        \x20 a-1 [001] d....  1.000003: kfree: call_site=f+0x1/0x2 ptr=zz\n\
        \x20 a-1 [000] .....  1.000004: kfree: call_site=f+0x1/0x2 ptr=20";

    fn drain<R: Read>(r: &mut TraceReader<R>) -> Vec<(u64, EventKind)> {
        let mut v = Vec::new();
        r.for_each_event(|rec| v.push((rec.line, rec.event.kind())))
            .unwrap();
        v
    }

    #[test]
    fn plain_and_zstd_agree_at_any_buffer_size() {
        let z = zstd::encode_all(TEXT.as_bytes(), 3).unwrap();
        assert!(is_zstd(&z));
        let want = vec![
            (2, EventKind::Kfree),
            (3, EventKind::MmPageFree),
            (5, EventKind::Kfree),
        ];
        // Sizes near the longest line (87 bytes with its newline) stress the refills.
        for size in [88, 89, 100, 128, 4096] {
            let mut plain = TraceReader::with_buffer(TEXT.as_bytes(), Mode::Lenient, size).unwrap();
            let mut comp = TraceReader::with_buffer(&z[..], Mode::Lenient, size).unwrap();
            assert!(!plain.is_compressed() && comp.is_compressed());
            assert_eq!(drain(&mut plain), want);
            assert_eq!(drain(&mut comp), want);
            for s in [plain.stats(), comp.stats()] {
                assert_eq!(s.lines, 5);
                assert_eq!(s.accounted(), 5);
                assert_eq!(s.bytes, TEXT.len() as u64);
                assert_eq!(s.skipped_count(ErrorKind::BadNumber), 1);
            }
            assert_eq!(comp.input_bytes(), z.len() as u64);
            assert_eq!(plain.input_bytes(), TEXT.len() as u64);
        }
        for input in [z.clone(), TEXT.as_bytes().to_vec()] {
            let mut bg =
                TraceReader::background(io::Cursor::new(input.clone()), Mode::Lenient).unwrap();
            assert_eq!(bg.is_compressed(), input != TEXT.as_bytes());
            assert_eq!(drain(&mut bg), want);
            assert_eq!(bg.stats().bytes, TEXT.len() as u64);
            assert_eq!(bg.input_bytes(), input.len() as u64);
        }
        let slice = SliceLines::new(TEXT.as_bytes(), Mode::Lenient);
        let mut v = Vec::new();
        let s = slice
            .for_each_event(|r| v.push((r.line, r.event.kind())))
            .unwrap();
        assert_eq!(v, want);
        assert_eq!((s.lines, s.bytes), (5, TEXT.len() as u64));
    }

    #[test]
    fn strict_reader_stops_with_the_line_number() {
        let mut r = TraceReader::new(TEXT.as_bytes(), Mode::Strict).unwrap();
        let mut n = 0;
        let err = r.for_each_event(|_| n += 1).unwrap_err();
        let Error::Parse(e) = err else {
            panic!("{err}")
        };
        assert_eq!((e.line(), e.kind(), n), (4, ErrorKind::BadNumber, 2));
    }

    /// Many chunks' worth of text, through the background thread.
    fn big_text() -> Vec<u8> {
        let mut t = Vec::new();
        while t.len() < 5 * CHUNK + 123 {
            t.extend_from_slice(TEXT.as_bytes());
            t.push(b'\n');
        }
        t
    }

    #[test]
    fn background_reader_across_chunks_and_early_drop() {
        let text = big_text();
        let z = zstd::encode_all(&text[..], 1).unwrap();
        let mut fg = TraceReader::new(&z[..], Mode::Lenient).unwrap();
        let mut bg = TraceReader::background(io::Cursor::new(z.clone()), Mode::Lenient).unwrap();
        assert_eq!(drain(&mut fg).len(), drain(&mut bg).len());
        assert_eq!(fg.stats().bytes, text.len() as u64);
        assert_eq!(bg.stats().bytes, text.len() as u64);
        assert_eq!(fg.stats().events, bg.stats().events);
        // Dropping a reader while its thread is blocked on a full channel returns.
        let mut early = TraceReader::background(io::Cursor::new(text), Mode::Lenient).unwrap();
        assert!(early.next_line().unwrap().is_some());
        drop(early);
    }

    /// A reader that fails after `ok` bytes.
    struct Failing {
        data: Vec<u8>,
        pos: usize,
        ok: usize,
    }

    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.pos >= self.ok {
                return Err(io::Error::other("disk on fire"));
            }
            let n = buf
                .len()
                .min(self.ok - self.pos)
                .min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    #[test]
    fn io_errors_surface_in_both_readers() {
        let text = big_text();
        for background in [false, true] {
            let input = Failing {
                data: text.clone(),
                pos: 0,
                ok: 2 * CHUNK + 7,
            };
            let mut r = if background {
                TraceReader::background(input, Mode::Lenient).unwrap()
            } else {
                TraceReader::new(input, Mode::Lenient).unwrap()
            };
            let err = r.for_each_event(|_| {}).unwrap_err();
            assert!(
                matches!(err, Error::Io(ref e) if e.to_string() == "disk on fire"),
                "{err}"
            );
        }
    }

    #[test]
    fn too_long_lines_are_skipped_whole() {
        let long = format!("{}\n{}\n", "x".repeat(300), TEXT);
        let mut r = TraceReader::with_buffer(long.as_bytes(), Mode::Lenient, 128).unwrap();
        let got = drain(&mut r);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].0, 3);
        let s = r.stats();
        assert_eq!(s.skipped_count(ErrorKind::LineTooLong), 1);
        assert_eq!((s.lines, s.accounted()), (6, 6));
        assert_eq!(s.bytes, long.len() as u64);
        let mut r = TraceReader::with_buffer(long.as_bytes(), Mode::Strict, 128).unwrap();
        let Err(Error::Parse(e)) = r.next_line() else {
            panic!()
        };
        assert_eq!((e.line(), e.kind()), (1, ErrorKind::LineTooLong));
    }
}
