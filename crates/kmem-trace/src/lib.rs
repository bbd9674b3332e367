//! # kmem-trace: Linux allocation traces, parsed fast and in constant memory
//!
//! Reads the ftrace text that `tracefs/trace` prints for the kmem, page and
//! vmalloc tracepoints (plain, or zstd-compressed as `../shared/traces/*/trace.zst`)
//! and yields typed events: [`Event::Kmalloc`], [`Event::Kfree`],
//! [`Event::KmemCacheAlloc`], [`Event::KmemCacheFree`], [`Event::MmPageAlloc`],
//! [`Event::MmPageFree`], [`Event::MmPageFreeBatched`], the vmap-area events and
//! two more page events. Each comes with its [`Common`] prefix: task, pid, CPU,
//! timestamp, and the irq-info column decoded into a [`kmem::ExecContext`].
//!
//! ```text
//!   bytes (file, pipe, slice) ── zstd? ──► line buffer ──memchr──► Parser::parse_line
//!                                                                    │
//!      Line::{Event(Record), Comment, Blank, Lost, Unknown, Skipped} ◄┘  + Stats
//! ```
//!
//! Design:
//! - zero-copy: strings ([`CallSite`], cache names, task) borrow from the line
//!   buffer; numbers are parsed by hand; no per-line allocation.
//! - every line is accounted for in [`Stats`] (events by type, header lines,
//!   lost-event markers, unknown event types by name, malformed lines by
//!   [`ErrorKind`]), so `stats.accounted() == stats.lines`.
//! - malformed lines: [`Mode::Strict`] returns a [`ParseError`] naming the line,
//!   column and what was expected; [`Mode::Lenient`] skips and counts them.
//! - GFP masks are parsed by `kmem` itself (`"GFP_KERNEL|__GFP_ZERO".parse::<Gfp>()`),
//!   memoised per spelling.
//! - constant memory: a 1 MiB line buffer plus the zstd window, whatever the
//!   trace's size; [`TraceReader::open_background`] moves reading and
//!   decompression to a second thread (a few 1 MiB chunks in flight).
//! - in-memory text: [`SliceLines`] is an ordinary iterator borrowing from the
//!   slice; [`TextReader`]/[`read_text`] give the decompressed text itself.
//!
//! ```no_run
//! use kmem_trace::{Event, Mode, TraceReader};
//!
//! let mut reader = TraceReader::open("../shared/traces/net/trace.zst", Mode::Lenient)?;
//! let mut kmalloc_bytes = 0;
//! reader.for_each_event(|rec| {
//!     if let Event::Kmalloc(k) = rec.event {
//!         kmalloc_bytes += k.bytes_alloc;
//!         let _atomic = rec.common.ctx.is_atomic();
//!     }
//! })?;
//! let stats = reader.into_stats();
//! assert_eq!(stats.accounted(), stats.lines);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Pull-style, one line at a time (records borrow the reader's buffer):
//!
//! ```no_run
//! # use kmem_trace::{Line, Mode, TraceReader};
//! let mut reader = TraceReader::open("trace.zst", Mode::Strict)?;
//! while let Some(line) = reader.next_line()? {
//!     if let Line::Event(rec) = line {
//!         println!("{} cpu{} {}", rec.line, rec.common.cpu, rec.event.kind());
//!     }
//! }
//! # Ok::<(), kmem_trace::Error>(())
//! ```

#![warn(missing_docs)]

pub mod analyze;
mod cursor;
pub mod error;
pub mod event;
mod gfp;
pub mod line;
pub mod parser;
pub mod reader;
pub mod replay;
pub mod stats;

pub use error::{Error, ErrorKind, ParseError};
pub use event::{
    migrate_type, AllocVmapArea, CallSite, Event, EventKind, FreeVmapAreaNoflush, Kfree, Kmalloc,
    KmemCacheAlloc, KmemCacheFree, PageAlloc, PageAllocZoneLocked, PageFree, PagePcpuDrain,
    PurgeVmapAreaLazy,
};
pub use line::{Common, IrqFlags};
pub use parser::{Line, Mode, Parser, Record};
pub use reader::{is_zstd, read_text, SliceLines, TextReader, TraceReader};
pub use stats::{Stats, TraceHeader};
