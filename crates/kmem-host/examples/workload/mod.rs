//! The workload of the `rust_workload` examples, shared by the kmem run and
//! its system-allocator baseline (`rust_workload_system`): whatever global
//! allocator the example binary has, this code allocates through it.
//!
//! Eight worker threads each run rounds of:
//!
//! - an inverted index: generated text split into words, `HashMap<String,
//!   Vec<u32>>` of word -> positions, checked against a direct count;
//! - a `BTreeMap<u64, String>` of formatted keys, range-queried and pruned;
//! - sorting and deduplicating a `Vec<u64>`, a `Vec<Vec<u8>>` of random
//!   lengths (8 B .. 12 KiB: slab classes and kmalloc's page path);
//! - batches of strings sent over a channel to a collector thread, which
//!   checks and drops them: objects freed by another thread than the one
//!   that allocated them.
//!
//! Every generator is seeded per thread, so the work and its checksum are
//! the same on every allocator.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Worker threads.
pub const THREADS: u64 = 8;
/// Rounds per worker.
pub const ROUNDS: u64 = 40;

/// xorshift64*: a small deterministic generator per thread.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const SYLLABLES: [&str; 12] = [
    "ka", "mem", "slab", "lo", "ri", "zo", "page", "buddy", "na", "te", "vm", "pcp",
];

/// Generated text of `words` words.
fn text(rng: &mut Rng, words: usize) -> String {
    let mut s = String::new();
    for _ in 0..words {
        for _ in 0..=rng.below(3) {
            s.push_str(SYLLABLES[rng.below(SYLLABLES.len() as u64) as usize]);
        }
        s.push(' ');
    }
    s
}

/// Inverted index of a text, checked against a plain count. Returns the
/// number of distinct words.
fn index_round(rng: &mut Rng) -> usize {
    let t = text(rng, 3000);
    let mut index: HashMap<String, Vec<u32>> = HashMap::new();
    for (pos, w) in t.split_whitespace().enumerate() {
        index.entry(w.to_string()).or_default().push(pos as u32);
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for w in t.split_whitespace() {
        *counts.entry(w).or_default() += 1;
    }
    assert_eq!(index.len(), counts.len());
    for (w, positions) in &index {
        assert_eq!(positions.len(), counts[w.as_str()]);
        assert!(positions.windows(2).all(|p| p[0] < p[1]));
    }
    index.len()
}

/// An ordered map of formatted keys: insert, range-query, prune.
fn btree_round(rng: &mut Rng) -> usize {
    let mut tree: BTreeMap<u64, String> = BTreeMap::new();
    for _ in 0..4000 {
        let k = rng.below(1_000_000);
        tree.insert(k, format!("value-{k:08}"));
    }
    let mid: Vec<(&u64, &String)> = tree.range(250_000..750_000).collect();
    for (k, v) in &mid {
        assert_eq!(**v, format!("value-{k:08}"));
    }
    let n = mid.len();
    tree.retain(|k, _| k % 3 == 0);
    assert!(tree.keys().all(|k| k % 3 == 0));
    n
}

/// Sorting, deduplicating, and blobs of every size class and beyond.
fn vec_round(rng: &mut Rng) -> u64 {
    let mut v: Vec<u64> = (0..20_000).map(|_| rng.below(50_000)).collect();
    v.sort_unstable();
    v.dedup();
    assert!(v.windows(2).all(|w| w[0] < w[1]));
    let blobs: Vec<Vec<u8>> = (0..500)
        .map(|i| vec![i as u8; 8 + rng.below(12 * 1024) as usize])
        .collect();
    let mut sum = 0u64;
    for (i, b) in blobs.iter().enumerate() {
        assert!(b.iter().all(|&x| x == i as u8));
        sum += b.len() as u64;
    }
    sum + v.len() as u64
}

/// One worker's rounds; returns its checksum.
fn worker(t: u64, to_collector: mpsc::Sender<Vec<String>>) -> u64 {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9));
    let mut work = 0u64;
    for round in 0..ROUNDS {
        work += index_round(&mut rng) as u64;
        work += btree_round(&mut rng) as u64;
        work += vec_round(&mut rng);
        let batch: Vec<String> = (0..200).map(|i| format!("t{t}-r{round}-s{i}")).collect();
        to_collector.send(batch).expect("collector alive");
    }
    work
}

/// What one run did.
pub struct Outcome {
    /// Sum of the workers' checksums: the same on every allocator.
    pub work: u64,
    /// Strings the collector received and checked.
    pub strings: u64,
    /// Wall time from the first spawn to the last join.
    pub elapsed: Duration,
}

/// Runs the workers and the collector once.
pub fn run() -> Outcome {
    let start = Instant::now();
    let (tx, rx) = mpsc::channel::<Vec<String>>();
    let collector = std::thread::Builder::new()
        .name("collector".into())
        .spawn(move || {
            let mut strings = 0u64;
            for batch in rx {
                for s in &batch {
                    assert!(s.starts_with('t') && s.contains("-r") && s.contains("-s"));
                }
                strings += batch.len() as u64;
                // The batch is dropped here: freed by another thread (and
                // usually another CPU) than the one that built it.
            }
            strings
        })
        .expect("spawn collector");
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let tx = tx.clone();
            std::thread::Builder::new()
                .name(format!("worker-{t}"))
                .spawn(move || worker(t, tx))
                .expect("spawn worker")
        })
        .collect();
    drop(tx);
    let work: u64 = workers
        .into_iter()
        .map(|h| h.join().expect("worker panicked"))
        .sum();
    let strings = collector.join().expect("collector panicked");
    Outcome {
        work,
        strings,
        elapsed: start.elapsed(),
    }
}
