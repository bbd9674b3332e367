//! Shared by the `slab_*` tests that drive threads with their own random
//! streams. Each test crate pulls this in with `mod slab_common;`.

/// A xorshift64 stream: deterministic per seed, cheap enough to call on
/// every operation of a worker thread. The seed must not be 0.
pub struct Rng(pub u64);

impl Rng {
    /// The next value.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A value in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
