//! Cache flags (`SLAB_*`) and the `slab_debug=` option string.
//!
//! The flags are Linux's, with Linux's meanings: what a cache is for
//! (`SLAB_CACHE_DMA`, `SLAB_RECLAIM_ACCOUNT`, `SLAB_TYPESAFE_BY_RCU`, ...),
//! how its objects are laid out (`SLAB_HWCACHE_ALIGN`) and which debugging it
//! does (`SLAB_CONSISTENCY_CHECKS`, `SLAB_RED_ZONE`, `SLAB_POISON`,
//! `SLAB_STORE_USER`, `SLAB_TRACE`: the `F`, `Z`, `P`, `U`, `T` letters of
//! `slab_debug=`). Bit positions are kmem's own; only the names are Linux's.
//!
//! [`SlabDebug`] parses a `slab_debug=` value: `FZPU` (letters for every
//! cache), `FZ,kmalloc-64,dentry*` (letters for the listed caches, `*` a
//! prefix glob), blocks separated by `;`, an empty string meaning all four
//! default letters for every cache, `-` meaning none.

bitflags::bitflags! {
    /// Flags of a [`crate::slab::KmemCache`], as passed to `kmem_cache_create`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct SlabFlags: u32 {
        /// `F`: check slab and object consistency on every alloc and free
        /// (double free, interior pointers, red zones, free pointers).
        const CONSISTENCY_CHECKS = 1 << 0;
        /// `Z`: red zones around every object.
        const RED_ZONE = 1 << 1;
        /// `P`: poison free objects (0x6b ... 0xa5) and check the poison on
        /// allocation.
        const POISON = 1 << 2;
        /// `U`: record the call site, CPU and time of the last alloc and free.
        const STORE_USER = 1 << 3;
        /// `T`: report every alloc and free of the cache.
        const TRACE = 1 << 4;
        /// Align objects to a cache line (halved while the object fits twice).
        const HWCACHE_ALIGN = 1 << 5;
        /// Take slab pages from ZONE_DMA.
        const CACHE_DMA = 1 << 6;
        /// Take slab pages from ZONE_DMA32.
        const CACHE_DMA32 = 1 << 7;
        /// Objects are reclaimable (slab pages on reclaimable free lists).
        const RECLAIM_ACCOUNT = 1 << 8;
        /// Charge objects to the allocating memory cgroup (bookkeeping only).
        const ACCOUNT = 1 << 9;
        /// Never merge this cache with another.
        const NO_MERGE = 1 << 10;
        /// Panic if the cache cannot be created.
        const PANIC = 1 << 11;
        /// Slab pages go back to the page allocator only after an RCU grace
        /// period: a freed object stays an object of this type (though
        /// perhaps reused) for readers under `rcu_read_lock`.
        const TYPESAFE_BY_RCU = 1 << 12;
        /// A kmalloc cache (or one used like it): remembers the requested
        /// size, so that `STORE_USER` + `RED_ZONE` can red-zone the bytes
        /// between the requested size and the object size.
        const KMALLOC = 1 << 13;
        /// Ignore `slab_debug=` for this cache.
        const NO_USER_FLAGS = 1 << 14;
        /// Store free pointers in plain form even if the allocator hardens
        /// them (see `SlabConfig::freelist_hardened`).
        const NO_FREELIST_HARDENING = 1 << 15;
        /// Internal: the object itself is poisoned (`POISON` without a
        /// constructor or RCU).
        const OBJECT_POISON = 1 << 16;
    }
}

impl SlabFlags {
    /// The debugging flags (any of them sends the cache down the checked,
    /// locked paths).
    pub const DEBUG: SlabFlags = SlabFlags::CONSISTENCY_CHECKS
        .union(SlabFlags::RED_ZONE)
        .union(SlabFlags::POISON)
        .union(SlabFlags::STORE_USER)
        .union(SlabFlags::TRACE);
    /// `slab_debug` with no letters: `FZPU`.
    pub const DEBUG_DEFAULT: SlabFlags = SlabFlags::CONSISTENCY_CHECKS
        .union(SlabFlags::RED_ZONE)
        .union(SlabFlags::POISON)
        .union(SlabFlags::STORE_USER);
    /// Flags that make a cache unmergeable (Linux's `SLAB_NEVER_MERGE`).
    pub const NEVER_MERGE: SlabFlags = SlabFlags::DEBUG
        .union(SlabFlags::TYPESAFE_BY_RCU)
        .union(SlabFlags::NO_MERGE);
    /// Flags that must agree for two caches to merge (`SLAB_MERGE_SAME`).
    pub const MERGE_SAME: SlabFlags = SlabFlags::RECLAIM_ACCOUNT
        .union(SlabFlags::CACHE_DMA)
        .union(SlabFlags::CACHE_DMA32)
        .union(SlabFlags::ACCOUNT)
        .union(SlabFlags::KMALLOC)
        .union(SlabFlags::NO_FREELIST_HARDENING);

    /// Letters of the debug flags, in `slab_debug` order (`FZPUT`).
    pub fn debug_letters(self) -> DebugLetters {
        DebugLetters(self)
    }
}

/// Display helper: the `slab_debug` letters of a flag set (`-` for none).
#[derive(Clone, Copy, Debug)]
pub struct DebugLetters(SlabFlags);

impl core::fmt::Display for DebugLetters {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let table = [
            (SlabFlags::CONSISTENCY_CHECKS, 'F'),
            (SlabFlags::RED_ZONE, 'Z'),
            (SlabFlags::POISON, 'P'),
            (SlabFlags::STORE_USER, 'U'),
            (SlabFlags::TRACE, 'T'),
        ];
        let mut any = false;
        for (flag, c) in table {
            if self.0.contains(flag) {
                core::fmt::Write::write_char(f, c)?;
                any = true;
            }
        }
        if !any {
            f.write_str("-")?;
        }
        Ok(())
    }
}

/// A parsed `slab_debug=` value (kept as the original `'static` text and
/// re-walked per cache, as Linux does).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlabDebug {
    spec: Option<&'static str>,
}

impl SlabDebug {
    /// No debugging (`slab_debug` not given).
    pub const OFF: SlabDebug = SlabDebug { spec: None };

    /// Parses a `slab_debug=` value. `""` means `FZPU` for every cache.
    pub const fn new(spec: &'static str) -> SlabDebug {
        SlabDebug { spec: Some(spec) }
    }

    /// The flags `slab_debug` adds to a cache named `name`.
    pub fn flags_for(&self, name: &str) -> SlabFlags {
        let Some(spec) = self.spec else {
            return SlabFlags::empty();
        };
        if spec.is_empty() {
            return SlabFlags::DEBUG_DEFAULT;
        }
        let mut global = SlabFlags::empty();
        for block in spec.split(';').filter(|b| !b.is_empty()) {
            let (letters, list) = match block.find(',') {
                Some(i) => (&block[..i], Some(&block[i + 1..])),
                None => (block, None),
            };
            let flags = if letters.is_empty() && list.is_some() {
                SlabFlags::DEBUG_DEFAULT
            } else {
                parse_letters(letters)
            };
            match list {
                None => global = flags,
                Some(list) => {
                    for pat in list.split(',').filter(|p| !p.is_empty()) {
                        let hit = match pat.find('*') {
                            Some(star) => name.starts_with(&pat[..star]),
                            None => name == pat,
                        };
                        if hit {
                            return flags;
                        }
                    }
                }
            }
        }
        global
    }
}

fn parse_letters(s: &str) -> SlabFlags {
    let mut f = SlabFlags::empty();
    for c in s.chars() {
        match c.to_ascii_lowercase() {
            '-' => f = SlabFlags::empty(),
            'f' => f |= SlabFlags::CONSISTENCY_CHECKS,
            'z' => f |= SlabFlags::RED_ZONE,
            'p' => f |= SlabFlags::POISON,
            'u' => f |= SlabFlags::STORE_USER,
            't' => f |= SlabFlags::TRACE,
            _ => {}
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slab_debug_strings() {
        assert_eq!(SlabDebug::OFF.flags_for("kmalloc-64"), SlabFlags::empty());
        assert_eq!(SlabDebug::new("").flags_for("x"), SlabFlags::DEBUG_DEFAULT);
        let d = SlabDebug::new("FZPU");
        assert_eq!(d.flags_for("anything"), SlabFlags::DEBUG_DEFAULT);
        let d = SlabDebug::new("Z,kmalloc-64,dentry*");
        assert_eq!(d.flags_for("kmalloc-64"), SlabFlags::RED_ZONE);
        assert_eq!(d.flags_for("dentry_cache"), SlabFlags::RED_ZONE);
        assert_eq!(d.flags_for("kmalloc-96"), SlabFlags::empty());
        let d = SlabDebug::new("P;F,kmalloc-8");
        assert_eq!(d.flags_for("kmalloc-8"), SlabFlags::CONSISTENCY_CHECKS);
        assert_eq!(d.flags_for("kmalloc-16"), SlabFlags::POISON);
        let d = SlabDebug::new(",kmalloc-8");
        assert_eq!(d.flags_for("kmalloc-8"), SlabFlags::DEBUG_DEFAULT);
        assert_eq!(SlabDebug::new("-").flags_for("a"), SlabFlags::empty());
        let s = SlabFlags::DEBUG_DEFAULT.debug_letters();
        assert_eq!(std::format!("{s}"), "FZPU");
    }
}
