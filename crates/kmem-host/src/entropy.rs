//! Boot entropy for the hosted machine.
//!
//! The slab layer draws its per-cache secrets (the free-pointer encoding of
//! `CONFIG_SLAB_FREELIST_HARDENED`, the allocated mark) from
//! `SlabConfig::seed`, as Linux draws them from `get_random_long()` at cache
//! creation. The core has no entropy source of its own and defaults to a
//! fixed constant, which anyone can read in the source: a hosted allocator
//! seeded with it encodes nothing an attacker could not decode. This module
//! supplies what a booting kernel would: bytes from the host kernel's
//! random pool.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

/// A fresh 64-bit seed for [`kmem::slab::SlabConfig::seed`]: the host
/// kernel's `getrandom(2)`, non-blocking. Should the kernel refuse (its pool
/// not yet initialised early in boot, or a seccomp filter), a mix of the
/// clock, the process id, a stack address (randomised by ASLR) and a
/// per-process counter: weaker, but different on every call and every run
/// (not mixed: `SlabConfig::seed` goes through splitmix64 in the slab
/// layer, so use it there or mix it yourself).
///
/// ```
/// use kmem::slab::{SlabAllocator, SlabConfig};
/// let m = kmem_host::Machine::default_machine().unwrap();
/// let config = SlabConfig { seed: kmem_host::boot_seed(), ..SlabConfig::default() };
/// let slab = SlabAllocator::new(m.pages(), config).unwrap();
/// # drop(slab);
/// ```
pub fn boot_seed() -> u64 {
    let mut buf = [0u8; 8];
    match rustix::rand::getrandom(&mut buf[..], rustix::rand::GetRandomFlags::NONBLOCK) {
        Ok(8) => u64::from_ne_bytes(buf),
        _ => fallback_seed(),
    }
}

/// [`boot_seed`] without the kernel's pool.
fn fallback_seed() -> u64 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let local = 0u8;
    let stack = &local as *const u8 as u64;
    // Not mixed here: the slab layer runs the seed through splitmix64
    // before any secret comes out of it.
    nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ stack.rotate_left(17)
        ^ CALLS
            .fetch_add(1, Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two seeds differ (a fixed or stuck source would repeat), from the
    /// kernel's pool and from the fallback alike.
    #[test]
    fn seeds_differ_between_calls() {
        assert_ne!(boot_seed(), boot_seed());
        assert_ne!(fallback_seed(), fallback_seed());
    }
}
