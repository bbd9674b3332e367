//! Helpers shared by the `KmemGlobal`/`KmemHeap` tests: a byte pattern to
//! write into a block and check later.

/// A byte pattern that differs per block (`seed`), per offset and per page.
pub fn pattern(seed: usize, i: usize) -> u8 {
    (seed.wrapping_mul(31) ^ i.wrapping_mul(7) ^ (i >> 12)) as u8
}

/// Writes block `seed`'s pattern into `len` bytes at `p`.
pub fn fill(p: *mut u8, len: usize, seed: usize) {
    for i in 0..len {
        // SAFETY: callers pass live blocks of at least len bytes.
        unsafe { p.add(i).write(pattern(seed, i)) };
    }
}

/// Checks that `len` bytes at `p` still hold block `seed`'s pattern.
pub fn check(p: *const u8, len: usize, seed: usize) {
    for i in 0..len {
        // SAFETY: as fill.
        let b = unsafe { p.add(i).read() };
        assert_eq!(b, pattern(seed, i), "byte {i} of block {seed} at {p:p}");
    }
}
