//! Interned strings: call sites and cache names become small integers.
//!
//! Events borrow their strings from the reader's line buffer, which the next
//! line overwrites; per-site statistics need a stable key. [`Interner`] copies
//! each distinct string once and hands out its index, so the hot path hashes
//! the borrowed text and gets a `u32` back, allocating only for a string it
//! has never seen. Memory grows with the number of distinct sites (hundreds
//! in the shared traces), not with the trace's length.

use super::hash::FoldMap;

/// Distinct strings, each with a dense index.
#[derive(Debug, Default, Clone)]
pub struct Interner {
    ids: FoldMap<Box<str>, u32>,
    names: Vec<Box<str>>,
}

impl Interner {
    /// An empty interner.
    pub fn new() -> Self {
        Interner::default()
    }

    /// The index of `s`, interning it on first sight.
    #[inline]
    pub fn intern(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        self.insert(s)
    }

    #[cold]
    fn insert(&mut self, s: &str) -> u32 {
        let id = u32::try_from(self.names.len()).expect("fewer than 2^32 distinct strings");
        self.names.push(s.into());
        self.ids.insert(s.into(), id);
        id
    }

    /// The index of `s`, if interned.
    pub fn get(&self, s: &str) -> Option<u32> {
        self.ids.get(s).copied()
    }

    /// The string of index `id`.
    ///
    /// # Panics
    /// If `id` was not handed out by this interner.
    pub fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }

    /// Number of distinct strings.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True if nothing was interned.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_string_same_id() {
        let mut i = Interner::new();
        let a = i.intern("kfree+0x1/0x2");
        let b = i.intern("alloc_pipe_info+0x20/0x190");
        assert_ne!(a, b);
        assert_eq!(i.intern(&String::from("kfree+0x1/0x2")), a);
        assert_eq!(i.name(b), "alloc_pipe_info+0x20/0x190");
        assert_eq!(i.get("nope"), None);
        assert_eq!(i.len(), 2);
    }
}
