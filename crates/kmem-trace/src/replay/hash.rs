//! A fast hash for the replayer's maps: integer keys (trace pointers, pfns,
//! virtual addresses) and short strings (call sites, cache names).
//!
//! std's SipHash is built to resist hash flooding and costs tens of
//! nanoseconds per key; a trace is trusted input and the replayer looks up a
//! few keys per event, so a multiply-and-fold hash is used instead. Pointers
//! share their high bits and slab objects are aligned (a 4 KiB object's
//! pointer has twelve zero low bits), so the final step folds the 128-bit
//! product: every input bit reaches the low bits the table indexes by.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

/// Odd multiplier (from the golden ratio).
const K: u64 = 0x9e37_79b9_7f4a_7c15;

/// Multiply-and-fold hasher; see the module comment.
#[derive(Clone, Copy, Debug, Default)]
pub struct FoldHasher {
    h: u64,
}

#[inline(always)]
fn fold(a: u64, b: u64) -> u64 {
    let m = u128::from(a) * u128::from(b);
    (m as u64) ^ ((m >> 64) as u64)
}

impl Hasher for FoldHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().expect("8-byte chunk"));
            self.h = fold(self.h ^ w, K);
        }
        let r = chunks.remainder();
        if !r.is_empty() {
            let mut tail = [0u8; 8];
            tail[..r.len()].copy_from_slice(r);
            self.h = fold(self.h ^ u64::from_le_bytes(tail), K);
        }
    }

    #[inline]
    fn write_u8(&mut self, v: u8) {
        self.write_u64(u64::from(v));
    }

    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }

    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.h = fold(self.h ^ v, K);
    }

    #[inline]
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.h
    }
}

/// Builds [`FoldHasher`]s.
#[derive(Clone, Copy, Debug, Default)]
pub struct FoldBuild;

impl BuildHasher for FoldBuild {
    type Hasher = FoldHasher;
    #[inline]
    fn build_hasher(&self) -> FoldHasher {
        FoldHasher {
            h: 0x243f_6a88_85a3_08d3,
        }
    }
}

/// A `HashMap` with [`FoldHasher`].
pub type FoldMap<K, V> = HashMap<K, V, FoldBuild>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_pointers_spread_over_low_bits() {
        let b = FoldBuild;
        let mut low = std::collections::HashSet::new();
        for i in 0..1024u64 {
            let ptr = 0xffff_8881_0000_0000 + i * 4096;
            low.insert(b.hash_one(ptr) & 1023);
        }
        // A table of 1024 buckets: nearly all distinct, not a handful.
        assert!(low.len() > 600, "{}", low.len());
    }

    #[test]
    fn strings_hash_by_content() {
        let b = FoldBuild;
        assert_eq!(
            b.hash_one("kfree+0x1/0x2"),
            b.hash_one(String::from("kfree+0x1/0x2"))
        );
        assert_ne!(b.hash_one("a"), b.hash_one("b"));
        assert_ne!(b.hash_one("abcdefgh1"), b.hash_one("abcdefgh2"));
    }
}
