//! Parsing on a thread of its own, feeding the replay in batches.
//!
//! ```text
//!  kmem-trace-read thread      kmem-replay-parse thread            replaying thread
//!  read + zstd ── chunks ──►  lines ─► Record ─► Front::convert ──► Batch { events, new names } ──► Engine
//!                               ◄──────── emptied event vectors go back ──────────────┘
//! ```
//!
//! Replay is CPU-bound in three stages of similar cost (decompression,
//! parsing, the allocator calls); on a machine with two or more CPUs they
//! overlap, and the parser keeps working while the replaying thread builds
//! the machine. Memory stays bounded: at most [`BATCHES`] batches of
//! [`BATCH_EVENTS`] events are in flight (1 M events, 80 MiB: about what the
//! parser produces while a 24 GiB machine is built), and their vectors are
//! reused.
//!
//! Names travel with the events: the parsing thread interns call sites and
//! cache names, and each batch carries the names first interned while it
//! was filled, in id order, so that the engine's own interner, fed the same
//! names in the same order, hands out the same ids.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::ev::{Ev, Front};
use crate::parser::{Line, Mode};
use crate::reader::TraceReader;
use crate::stats::Stats;

/// Events per batch.
pub const BATCH_EVENTS: usize = 8192;
/// Batches in flight.
pub const BATCHES: usize = 128;

/// A run of events and the names first seen in it.
#[derive(Debug, Default)]
pub struct Batch {
    /// The events, in trace order.
    pub events: Vec<Ev>,
    /// Call sites interned while filling it, in id order.
    pub sites: Vec<Box<str>>,
    /// Cache names interned while filling it, in id order.
    pub caches: Vec<Box<str>>,
}

/// What the parsing thread sends.
#[derive(Debug)]
pub enum Msg {
    /// More events.
    Batch(Batch),
    /// The end: the parser's counters, or the error that stopped it
    /// (a malformed line in strict mode, or a read error).
    Done(Box<Result<Stats, crate::Error>>),
}

/// The replaying side of the pipeline.
pub struct Parsed {
    rx: Option<Receiver<Msg>>,
    recycle: Option<SyncSender<Vec<Ev>>>,
    input_bytes: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Parsed {
    /// The next message; `None` if the parsing thread is gone.
    pub fn recv(&self) -> Option<Msg> {
        self.rx.as_ref()?.recv().ok()
    }

    /// Gives an emptied event vector back for reuse.
    pub fn recycle(&self, mut v: Vec<Ev>) {
        v.clear();
        if let Some(tx) = &self.recycle {
            let _ = tx.try_send(v);
        }
    }

    /// Bytes of the trace file read so far.
    pub fn input_bytes(&self) -> u64 {
        self.input_bytes.load(Ordering::Relaxed)
    }
}

impl Drop for Parsed {
    fn drop(&mut self) {
        // Closing the channels stops the thread at its next send.
        self.rx = None;
        self.recycle = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts reading and parsing `path` (decompression on a third thread).
pub fn spawn(path: &Path, mode: Mode) -> io::Result<Parsed> {
    let reader = TraceReader::background(File::open(path)?, mode)?;
    let (tx, rx) = mpsc::sync_channel::<Msg>(BATCHES);
    let (recycle_tx, recycle_rx) = mpsc::sync_channel::<Vec<Ev>>(BATCHES + 2);
    let input_bytes = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&input_bytes);
    let thread = std::thread::Builder::new()
        .name("kmem-replay-parse".into())
        .spawn(move || parse_loop(reader, &tx, &recycle_rx, &counter))?;
    Ok(Parsed {
        rx: Some(rx),
        recycle: Some(recycle_tx),
        input_bytes,
        thread: Some(thread),
    })
}

fn parse_loop(
    mut reader: TraceReader<File>,
    tx: &SyncSender<Msg>,
    recycle: &Receiver<Vec<Ev>>,
    input_bytes: &AtomicU64,
) {
    let mut front = Front::default();
    let (mut sites_sent, mut caches_sent) = (0usize, 0usize);
    let fresh = || Vec::with_capacity(BATCH_EVENTS);
    let mut events: Vec<Ev> = fresh();
    let mut flush = |events: &mut Vec<Ev>, front: &Front| -> bool {
        let names = |i: &super::sites::Interner, from: &mut usize| {
            let v: Vec<Box<str>> = (*from..i.len())
                .map(|id| i.name(id as u32).into())
                .collect();
            *from = i.len();
            v
        };
        let next = recycle.try_recv().unwrap_or_else(|_| fresh());
        let batch = Batch {
            events: std::mem::replace(events, next),
            sites: names(&front.sites, &mut sites_sent),
            caches: names(&front.caches, &mut caches_sent),
        };
        tx.send(Msg::Batch(batch)).is_ok()
    };
    let result = loop {
        match reader.next_line() {
            Ok(Some(Line::Event(rec))) => {
                events.push(front.convert(&rec));
                if events.len() == BATCH_EVENTS {
                    input_bytes.store(reader.input_bytes(), Ordering::Relaxed);
                    if !flush(&mut events, &front) {
                        return;
                    }
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    input_bytes.store(reader.input_bytes(), Ordering::Relaxed);
    if !events.is_empty() && !flush(&mut events, &front) {
        return;
    }
    let _ = tx.send(Msg::Done(Box::new(result.map(|()| reader.into_stats()))));
}
