//! kvmalloc: kmalloc first, vmalloc if that fails, with Linux's rules.
//!
//! ```text
//!  kvmalloc(size, gfp)
//!    kmalloc(size, adjust(gfp))          size <= PAGE_SIZE: that is the answer
//!       │ failed, size > PAGE_SIZE
//!       ├─ non-blocking mask?  → fail     (KvRules::NoRetry, the default)
//!       ├─ size > INT_MAX?     → refuse   (warns unless __GFP_NOWARN)
//!       └─ vmalloc(size, gfp) with VM_ALLOW_HUGE_VMAP
//!  adjust(gfp), above a page: | __GFP_NOWARN, | __GFP_NORETRY unless
//!  __GFP_RETRY_MAYFAIL, - __GFP_NOFAIL (the fallback provides it)
//! ```
//!
//! [`KvAlloc`] pairs a [`SlabAllocator`] and a [`Vmalloc`] over the same page
//! allocator. Frees go by address: [`KvAlloc::kvfree`] sends vmalloc-range
//! addresses to `vfree` and the rest to `kfree`. The cross-checks Linux only
//! catches with a crash or KASAN are errors here: [`KvAlloc::kfree`] of a
//! vmalloc address and [`KvAlloc::vfree`] of a kmalloc address are refused
//! with a message naming the right call, and nothing is freed.
//!
//! # Which Linux
//! The default rules, [`KvRules::NoRetry`], are Linux's up to 6.14 (and the
//! ones this project's issue states): the kmalloc attempt above a page gets
//! `__GFP_NORETRY` (unless `__GFP_RETRY_MAYFAIL`), and non-blocking masks
//! never fall back. [`KvRules::NoReclaim`] follows Linux 6.18: the kmalloc
//! attempt loses `__GFP_DIRECT_RECLAIM` instead, and since vmalloc accepts
//! GFP_ATOMIC / GFP_NOWAIT, non-blocking masks fall back too (without huge
//! mappings).
//!
//! # RCU
//! `kvfree_rcu(p, offset)` queues kmalloc objects on the slab's RCU queue
//! and vmalloc areas on vmalloc's; [`KvAlloc::rcu_barrier`] ends a grace
//! period for both. `kvfree_rcu_mightsleep(p)` (no `rcu_head`) writes nothing
//! into the memory (readers may still read every byte until the grace
//! period ends): a vmalloc area is queued through its area record, a
//! kmalloc object through a small node of its own (Linux: pages of
//! pointers); without memory for the node it waits for a grace period (a
//! barrier) and frees at once, as Linux's fallback does.

use crate::addr::{VirtAddr, PAGE_SIZE};
use crate::error::AllocError;
use crate::gfp::Gfp;
use crate::page::NUMA_NO_NODE;
use crate::paging::{PageTables, PteFlags};
use crate::platform::Platform;
use crate::slab::{ReallocError, SlabAllocator, SlabFreeError, ZERO_SIZE_PTR};
use crate::vmalloc::{VfreeError, VmFlags, Vmalloc, VmallocError};
use core::fmt;
use core::panic::Location;
use core::ptr::NonNull;

/// Which Linux kvmalloc to follow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvRules {
    /// Linux up to 6.14: `__GFP_NORETRY` for the kmalloc attempt above a
    /// page (unless `__GFP_RETRY_MAYFAIL`); non-blocking masks never fall
    /// back to vmalloc.
    #[default]
    NoRetry,
    /// Linux 6.18: the kmalloc attempt above a page loses direct reclaim
    /// (unless `__GFP_RETRY_MAYFAIL`); non-blocking masks fall back to
    /// vmalloc, without huge mappings.
    NoReclaim,
}

/// Why a kvmalloc-family allocation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvError {
    /// kmalloc failed and there was no fallback: the size is at most a
    /// page, or the mask may not block (under [`KvRules::NoRetry`]).
    Kmalloc(AllocError),
    /// kmalloc failed and so did the vmalloc fallback.
    Vmalloc(VmallocError),
    /// Above `INT_MAX` bytes (Linux: "Don't even allow crazy sizes").
    TooLarge {
        /// The size asked for.
        size: usize,
    },
    /// `n * size` overflowed.
    Overflow {
        /// Element count.
        n: usize,
        /// Element size.
        size: usize,
    },
    /// `kvrealloc` of something that is not a live allocation.
    BadPointer(KvFreeError),
}

impl core::error::Error for KvError {}

impl fmt::Display for KvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvError::Kmalloc(e) => write!(f, "kvmalloc: kmalloc failed, no vmalloc fallback: {e}"),
            KvError::Vmalloc(e) => write!(f, "kvmalloc: kmalloc failed, then {e}"),
            KvError::TooLarge { size } => {
                write!(f, "kvmalloc of {size} bytes refused: above INT_MAX")
            }
            KvError::Overflow { n, size } => write!(f, "array of {n} x {size} bytes overflows"),
            KvError::BadPointer(e) => write!(f, "kvrealloc: {e}"),
        }
    }
}

/// Why a free was refused. Nothing was freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvFreeError {
    /// `kfree` of a vmalloc address.
    KfreeOfVmalloc {
        /// The address.
        addr: usize,
    },
    /// vfree refused it (this includes `vfree` of a kmalloc address).
    Vfree(VfreeError),
    /// kfree refused it.
    Kfree(SlabFreeError),
    /// `kvfree_rcu_mightsleep` in atomic context or inside an RCU read-side
    /// section (reported as a sleep in atomic context): no grace period can
    /// end there, so nothing was queued or freed.
    NoGracePeriod {
        /// The address.
        addr: usize,
    },
}

impl core::error::Error for KvFreeError {}

impl fmt::Display for KvFreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvFreeError::KfreeOfVmalloc { addr } => write!(
                f,
                "kfree() of a vmalloc address ({addr:#x}): it came from vmalloc, free it with vfree() (or use kvfree())"
            ),
            KvFreeError::Vfree(e) => write!(f, "{e}"),
            KvFreeError::Kfree(e) => write!(f, "{e}"),
            KvFreeError::NoGracePeriod { addr } => write!(
                f,
                "kvfree_rcu_mightsleep({addr:#x}) in atomic context or an RCU read-side section: it may wait for a grace period, which cannot end here; nothing freed"
            ),
        }
    }
}

/// Linux's `INT_MAX`: the largest kvmalloc.
pub const KVMALLOC_MAX: usize = i32::MAX as usize;

/// kmalloc and vmalloc together.
pub struct KvAlloc<'r, 'a, P: Platform, B: PageTables> {
    slab: &'r SlabAllocator<'a, P>,
    vm: &'r Vmalloc<'a, P, B>,
    rules: KvRules,
}

// A pair of references and the rules: copied freely (derive would ask P
// and B to be Clone).
impl<P: Platform, B: PageTables> Clone for KvAlloc<'_, '_, P, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<P: Platform, B: PageTables> Copy for KvAlloc<'_, '_, P, B> {}

impl<'r, 'a, P: Platform, B: PageTables> KvAlloc<'r, 'a, P, B> {
    /// Both allocators must sit on the same page allocator.
    ///
    /// # Panics
    /// If they do not.
    pub fn new(slab: &'r SlabAllocator<'a, P>, vm: &'r Vmalloc<'a, P, B>) -> Self {
        assert!(
            core::ptr::eq(slab.pages(), vm.pages()),
            "kvmalloc: slab and vmalloc over different page allocators"
        );
        KvAlloc {
            slab,
            vm,
            rules: KvRules::default(),
        }
    }

    /// The same, following `rules`.
    pub fn with_rules(mut self, rules: KvRules) -> Self {
        self.rules = rules;
        self
    }

    /// The slab allocator.
    pub fn slab(&self) -> &'r SlabAllocator<'a, P> {
        self.slab
    }

    /// The vmalloc allocator.
    pub fn vmalloc(&self) -> &'r Vmalloc<'a, P, B> {
        self.vm
    }

    /// The rules in force.
    pub fn rules(&self) -> KvRules {
        self.rules
    }

    /// The mask of the kmalloc attempt (Linux's `kmalloc_gfp_adjust`).
    pub fn kmalloc_gfp(&self, gfp: Gfp, size: usize) -> Gfp {
        if size <= PAGE_SIZE {
            return gfp;
        }
        let mut g = gfp | Gfp::NOWARN;
        if !gfp.contains(Gfp::RETRY_MAYFAIL) {
            match self.rules {
                KvRules::NoRetry => g |= Gfp::NORETRY,
                KvRules::NoReclaim => g -= Gfp::DIRECT_RECLAIM,
            }
        }
        g - Gfp::NOFAIL
    }

    /// Linux's `kvmalloc`.
    #[track_caller]
    pub fn kvmalloc(&self, size: usize, gfp: Gfp) -> Result<NonNull<u8>, KvError> {
        self.kvmalloc_node_at(size, gfp, NUMA_NO_NODE, Location::caller())
    }

    /// Linux's `kvzalloc`.
    #[track_caller]
    pub fn kvzalloc(&self, size: usize, gfp: Gfp) -> Result<NonNull<u8>, KvError> {
        self.kvmalloc_node_at(size, gfp | Gfp::ZERO, NUMA_NO_NODE, Location::caller())
    }

    /// Linux's `kvmalloc_node`.
    #[track_caller]
    pub fn kvmalloc_node(&self, size: usize, gfp: Gfp, node: i32) -> Result<NonNull<u8>, KvError> {
        self.kvmalloc_node_at(size, gfp, node, Location::caller())
    }

    /// Linux's `kvmalloc_array`: overflow-checked.
    #[track_caller]
    pub fn kvmalloc_array(&self, n: usize, size: usize, gfp: Gfp) -> Result<NonNull<u8>, KvError> {
        let bytes = n.checked_mul(size).ok_or(KvError::Overflow { n, size })?;
        self.kvmalloc_node_at(bytes, gfp, NUMA_NO_NODE, Location::caller())
    }

    /// Linux's `kvcalloc`: overflow-checked and zeroed.
    #[track_caller]
    pub fn kvcalloc(&self, n: usize, size: usize, gfp: Gfp) -> Result<NonNull<u8>, KvError> {
        let bytes = n.checked_mul(size).ok_or(KvError::Overflow { n, size })?;
        self.kvmalloc_node_at(bytes, gfp | Gfp::ZERO, NUMA_NO_NODE, Location::caller())
    }

    /// [`Self::kvmalloc_node`] with an explicit caller.
    pub fn kvmalloc_node_at(
        &self,
        size: usize,
        gfp: Gfp,
        node: i32,
        caller: &'static Location<'static>,
    ) -> Result<NonNull<u8>, KvError> {
        let kerr = match self
            .slab
            .kmalloc_node_at(size, self.kmalloc_gfp(gfp, size), node, caller)
        {
            Ok(p) => return Ok(p),
            Err(e) => e,
        };
        if size <= PAGE_SIZE {
            return Err(KvError::Kmalloc(kerr));
        }
        let blocking = gfp.allows_blocking();
        if !blocking && self.rules == KvRules::NoRetry {
            return Err(KvError::Kmalloc(kerr));
        }
        if size > KVMALLOC_MAX {
            if !gfp.contains(Gfp::NOWARN) {
                self.vm.pages().platform().warn(format_args!(
                    "WARNING: kvmalloc of {size} bytes at {caller}: above INT_MAX"
                ));
            }
            return Err(KvError::TooLarge { size });
        }
        let flags = if blocking {
            VmFlags::ALLOW_HUGE_VMAP
        } else {
            VmFlags::empty()
        };
        let cfg = self.vm.config();
        self.vm
            .vmalloc_node_range_at(
                size,
                1,
                cfg.start,
                cfg.end,
                gfp,
                PteFlags::KERNEL,
                flags,
                node,
                caller,
            )
            .map_err(KvError::Vmalloc)
    }

    /// Linux's `kvfree`: `vfree` for vmalloc addresses, `kfree` otherwise.
    /// NULL and `ZERO_SIZE_PTR` are no-ops.
    #[track_caller]
    pub fn kvfree(&self, p: *const u8) -> Result<(), KvFreeError> {
        if (p as usize) <= ZERO_SIZE_PTR {
            return Ok(());
        }
        if self.vm.is_vmalloc_addr(p) {
            self.vm.vfree(p).map_err(KvFreeError::Vfree)
        } else {
            self.slab.kfree(p).map_err(KvFreeError::Kfree)
        }
    }

    /// Linux's `kvfree_sensitive(p, len)`: zeroes `len` bytes (in a way
    /// the compiler keeps), then frees.
    #[track_caller]
    pub fn kvfree_sensitive(&self, p: *const u8, len: usize) -> Result<(), KvFreeError> {
        if (p as usize) <= ZERO_SIZE_PTR {
            return Ok(());
        }
        if self.vm.is_vmalloc_addr(p) {
            let a =
                self.vm
                    .find_vm_area(p)
                    .ok_or(KvFreeError::Vfree(VfreeError::NotAllocated {
                        addr: p as usize,
                    }))?;
            // Wiped only if vfree will take it: a vmalloc area's start, not
            // queued for a deferred free (vfree refuses the rest, and the
            // caller's data must then stay as it was).
            let vfree_takes = a.addr.0 == p as usize
                && a.flags.contains(VmFlags::ALLOC)
                && !a.flags.contains(VmFlags::DEFERRED_FREE)
                && !a.vm_map_ram;
            if vfree_takes {
                self.vm.zero_range(p as usize, len.min(a.usable_size()));
            }
            self.vm.vfree(p).map_err(KvFreeError::Vfree)
        } else {
            let ks = self.slab.ksize(p);
            if ks == 0 {
                return self.slab.kfree(p).map_err(KvFreeError::Kfree);
            }
            for i in 0..len.min(ks) {
                // SAFETY: inside the live object's usable size.
                unsafe { (p as *mut u8).add(i).write_volatile(0) };
            }
            self.slab.kfree(p).map_err(KvFreeError::Kfree)
        }
    }

    /// Linux's `kfree`, refusing vmalloc addresses.
    #[track_caller]
    pub fn kfree(&self, p: *const u8) -> Result<(), KvFreeError> {
        if self.vm.is_vmalloc_addr(p) {
            let addr = p as usize;
            let e = KvFreeError::KfreeOfVmalloc { addr };
            self.vm
                .pages()
                .platform()
                .warn(format_args!("WARNING: {e} (at {})", Location::caller()));
            return Err(e);
        }
        self.slab.kfree(p).map_err(KvFreeError::Kfree)
    }

    /// Linux's `vfree` (which refuses kmalloc addresses).
    #[track_caller]
    pub fn vfree(&self, p: *const u8) -> Result<(), KvFreeError> {
        self.vm.vfree(p).map_err(KvFreeError::Vfree)
    }

    /// Linux's `kvrealloc(p, size, gfp)`: vmalloc memory goes through
    /// `vrealloc`; kmalloc memory through `krealloc` with the kvmalloc mask,
    /// and if that fails, a fresh `kvmalloc` and a copy of the whole old
    /// object. Size 0 frees and returns `Ok(None)`.
    #[track_caller]
    pub fn kvrealloc(
        &self,
        p: *const u8,
        size: usize,
        gfp: Gfp,
    ) -> Result<Option<NonNull<u8>>, KvError> {
        let caller = Location::caller();
        if size == 0 {
            self.kvfree(p).map_err(KvError::BadPointer)?;
            return Ok(None);
        }
        if self.vm.is_vmalloc_addr(p) {
            return self
                .vm
                .vrealloc_node_align_at(p, size, 1, gfp, NUMA_NO_NODE, caller)
                .map_err(|e| match e {
                    VmallocError::Realloc(v) => KvError::BadPointer(KvFreeError::Vfree(v)),
                    e => KvError::Vmalloc(e),
                });
        }
        match self.slab.krealloc(p, size, self.kmalloc_gfp(gfp, size)) {
            Ok(n) => Ok(Some(n)),
            Err(ReallocError::BadPointer(e)) => Err(KvError::BadPointer(KvFreeError::Kfree(e))),
            Err(ReallocError::Alloc(_)) => {
                let n = self.kvmalloc_node_at(size, gfp, NUMA_NO_NODE, caller)?;
                if (p as usize) > ZERO_SIZE_PTR {
                    let old = self.slab.ksize(p);
                    self.copy_from_direct(n.as_ptr(), p, old.min(size));
                    let _ = self.slab.kfree(p);
                }
                Ok(Some(n))
            }
        }
    }

    /// Copies `len` bytes from a direct-map (kmalloc) pointer to `dst`,
    /// which may be vmalloc memory of any backend.
    fn copy_from_direct(&self, dst: *mut u8, src: *const u8, len: usize) {
        if !self.vm.is_vmalloc_addr(dst) {
            // SAFETY: two live, distinct kmalloc objects of at least len.
            unsafe { core::ptr::copy_nonoverlapping(src, dst, len) };
            return;
        }
        let mut off = 0;
        while off < len {
            let d = dst as usize + off;
            let n = (PAGE_SIZE - d % PAGE_SIZE).min(len - off);
            if let Some(dp) = self.vm.direct_ptr(d) {
                // SAFETY: n bytes within one mapped page of the new area;
                // the source is a live kmalloc object.
                unsafe { core::ptr::copy_nonoverlapping(src.add(off), dp, n) };
            }
            off += n;
        }
    }

    /// Linux's `kvfree_rcu(p, field)`: frees after the next grace period
    /// ([`Self::rcu_barrier`]); `head_offset` locates a 16-byte `rcu_head`
    /// in the object.
    #[track_caller]
    pub fn kvfree_rcu(&self, p: *const u8, head_offset: usize) -> Result<(), KvFreeError> {
        if (p as usize) <= ZERO_SIZE_PTR {
            return Ok(());
        }
        if self.vm.is_vmalloc_addr(p) {
            self.vm
                .vfree_rcu(p, head_offset)
                .map_err(KvFreeError::Vfree)
        } else {
            self.slab
                .kfree_rcu(p, head_offset)
                .map_err(KvFreeError::Kfree)
        }
    }

    /// Linux's `kvfree_rcu_mightsleep(p)` (the one-argument form). Nothing is
    /// written into the memory (readers may read all of it until the grace
    /// period ends): a vmalloc area is queued through its record
    /// ([`Vmalloc::vfree_rcu_mightsleep`]), a kmalloc object through a
    /// 24-byte node of its own; if no node can be had, it waits for a grace
    /// period here and frees at once, as Linux's fallback.
    #[track_caller]
    pub fn kvfree_rcu_mightsleep(&self, p: *const u8) -> Result<(), KvFreeError> {
        if (p as usize) <= ZERO_SIZE_PTR {
            return Ok(());
        }
        // Linux's kvfree_call_rcu(NULL, p): might_sleep() for every object.
        let caller = Location::caller();
        let no_gp = KvFreeError::NoGracePeriod { addr: p as usize };
        if crate::slab::sleep_in_atomic(self.vm.pages(), self.slab.global(), caller).is_some() {
            return Err(no_gp);
        }
        if self.vm.is_vmalloc_addr(p) {
            return self.vm.vfree_rcu_mightsleep(p).map_err(KvFreeError::Vfree);
        }
        if self
            .slab
            .kfree_rcu_ptr(p, caller)
            .map_err(KvFreeError::Kfree)?
        {
            return Ok(());
        }
        // No memory for the pointer node: synchronize_rcu(), then free.
        if !self.rcu_barrier() {
            return Err(no_gp);
        }
        self.kvfree(p)
    }

    /// Ends a grace period for both allocators: every queued `kvfree_rcu`
    /// runs. Refused (false) inside an RCU read-side section.
    #[track_caller]
    pub fn rcu_barrier(&self) -> bool {
        self.slab.rcu_barrier() && self.vm.rcu_barrier()
    }

    /// The frame behind any kvmalloc address (direct map or vmalloc).
    pub fn addr_to_pfn(&self, p: *const u8) -> Option<crate::addr::Pfn> {
        if self.vm.is_vmalloc_addr(p) {
            self.vm.vmalloc_to_page(p)
        } else {
            self.vm.pages().virt_to_page(VirtAddr(p as usize))
        }
    }
}

impl<P: Platform, B: PageTables> fmt::Debug for KvAlloc<'_, '_, P, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvAlloc")
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}
