//! GFP spellings, parsed once each.
//!
//! A trace spells the same few dozen masks millions of times
//! (`GFP_KERNEL`, `GFP_HIGHUSER_MOVABLE|__GFP_ZERO|__GFP_COMP`, ...). Parsing is
//! delegated to `kmem`'s `Gfp::from_str`, so this crate and the allocator agree
//! on every name; its result is memoised in a small open-addressing table keyed
//! by the spelling's bytes. The table has a fixed number of slots and allocates
//! once per distinct spelling; when it is half full, further new spellings are
//! parsed every time instead of cached, so memory stays bounded whatever the
//! input.

use std::str::FromStr;

use kmem::gfp::GfpParseError;
use kmem::Gfp;

/// Slots in the table (a power of two).
const SLOTS: usize = 512;
/// Spellings cached at most (half the slots, so probes stay short).
const MAX_CACHED: usize = SLOTS / 2;

/// One remembered spelling.
#[derive(Clone)]
struct Slot {
    hash: u64,
    spelling: Box<[u8]>,
    gfp: Gfp,
}

/// A memo of GFP spelling → mask.
pub(crate) struct GfpCache {
    slots: Vec<Option<Slot>>,
    cached: usize,
}

impl GfpCache {
    pub(crate) fn new() -> Self {
        GfpCache {
            slots: vec![None; SLOTS],
            cached: 0,
        }
    }

    /// The mask `spelling` stands for.
    #[inline]
    pub(crate) fn parse(&mut self, spelling: &[u8]) -> Result<Gfp, Option<GfpParseError>> {
        let h = hash(spelling);
        let mut i = (h as usize) & (SLOTS - 1);
        while let Some(slot) = &self.slots[i] {
            if slot.hash == h && *slot.spelling == *spelling {
                return Ok(slot.gfp);
            }
            i = (i + 1) & (SLOTS - 1);
        }
        // A miss: parse with kmem, remember the answer if there is room.
        let text = std::str::from_utf8(spelling).map_err(|_| None)?;
        let gfp = Gfp::from_str(text).map_err(Some)?;
        if self.cached < MAX_CACHED {
            self.slots[i] = Some(Slot {
                hash: h,
                spelling: spelling.into(),
                gfp,
            });
            self.cached += 1;
        }
        Ok(gfp)
    }
}

/// FxHash-style word hash: cheap for the 10-80 byte spellings of a trace.
#[inline]
fn hash(s: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = s.len() as u64;
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("8-byte chunk"));
        h = (h.rotate_left(5) ^ w).wrapping_mul(K);
    }
    let mut tail = [0u8; 8];
    let r = chunks.remainder();
    tail[..r.len()].copy_from_slice(r);
    h = (h.rotate_left(5) ^ u64::from_le_bytes(tail)).wrapping_mul(K);
    h ^ (h >> 29)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kmem::gfp::{GFP_ATOMIC, GFP_KERNEL};

    #[test]
    fn memoises_and_agrees_with_kmem() {
        let mut c = GfpCache::new();
        for _ in 0..3 {
            assert_eq!(c.parse(b"GFP_KERNEL"), Ok(GFP_KERNEL));
            assert_eq!(
                c.parse(b"GFP_KERNEL|__GFP_ZERO"),
                Ok("GFP_KERNEL|__GFP_ZERO".parse().unwrap())
            );
            assert_eq!(c.parse(b"GFP_ATOMIC"), Ok(GFP_ATOMIC));
        }
        assert_eq!(c.cached, 3);
        assert!(matches!(c.parse(b"GFP_BOGUS"), Err(Some(_))));
        assert!(matches!(c.parse(b"GFP_\xff"), Err(None)));
        assert_eq!(c.cached, 3);
    }

    #[test]
    fn stays_bounded() {
        let mut c = GfpCache::new();
        for i in 0..2000u32 {
            let s = format!("0x{i:x}");
            assert_eq!(c.parse(s.as_bytes()).unwrap().bits(), i);
        }
        assert_eq!(c.cached, MAX_CACHED);
        // Cached and uncached spellings still answer correctly.
        assert_eq!(c.parse(b"0x5").unwrap().bits(), 5);
        assert_eq!(c.parse(b"0x7cf").unwrap().bits(), 0x7cf);
    }
}
