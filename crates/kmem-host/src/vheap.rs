//! `allocator_api2` handles over vmalloc and kvmalloc: Rust for Linux's
//! `Vmalloc` and `KVmalloc` allocators on the hosted machine
//! ([`crate::global::KmemHeap`] is its `Kmalloc`).
//!
//! ```text
//!   handle          allocate             grow / shrink            deallocate
//!   KmemHeap        kmalloc              krealloc or move         kfree
//!   VmallocHeap     vmalloc_node_align   vrealloc_node_align      vfree
//!   KvmallocHeap    kvmalloc             kvrealloc                kvfree
//! ```
//!
//! Each handle carries a fixed GFP mask (Rust for Linux passes the mask
//! with every call; allocator_api2's trait has no room for it) and never
//! falls back to another allocator: a request it cannot serve is an
//! `AllocError`, and a refused free is reported by kmem and changes
//! nothing. Zero-sized allocations get a dangling, aligned pointer and never
//! reach kmem.
//!
//! Alignment: vmalloc areas are page aligned, or aligned as the layout asks
//! (`vmalloc_node_align`). kvmalloc serves alignments up to a page, as
//! Rust for Linux's `KVmalloc` does: a request rounded up to a multiple of
//! its alignment lands in a kmalloc class aligned to at least that (see
//! [`crate::global`]), and a vmalloc area is page aligned; a larger
//! alignment is refused.
//!
//! Growing keeps the contents (in place while the area's pages or the
//! object's class suffice); `grow_zeroed` zeroes the new bytes itself, since
//! a vmalloc area's last page or a kmalloc object's class may hold old data
//! past the old size.
//!
//! ```no_run
//! use allocator_api2::vec::Vec;
//! use kmem::slab::{SlabAllocator, SlabConfig};
//! use kmem_host::vheap::{KvmallocHeap, VmallocHeap};
//! use kmem_host::{vmap, Machine};
//!
//! let m = Machine::default_machine().unwrap();
//! let slab = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
//! let vm = vmap::vmalloc(&m).unwrap();
//! let mut big = Vec::new_in(VmallocHeap::new(&vm)); // a VVec
//! big.resize(1 << 20, 0u64);                        // 8 MiB, virtually contiguous
//! let mut kv = Vec::new_in(KvmallocHeap::new(&slab, &vm)); // a KVVec
//! kv.extend(0..100u32);                             // a kmalloc object, for now
//! ```

use crate::global::{dangling, zero_tail};
use crate::vmap::{HostVmalloc, HostVmap};
use crate::HostPlatform;
use allocator_api2::alloc::{AllocError, Allocator, Layout};
use kmem::addr::PAGE_SIZE;
use kmem::gfp::{Gfp, GFP_KERNEL};
use kmem::kvmalloc::KvAlloc;
use kmem::page::NUMA_NO_NODE;
use kmem::slab::SlabAllocator;
use std::fmt;
use std::ptr::{self, NonNull};

/// What every resize does alike: from a zero-sized block it allocates, to
/// one it frees. None for everything else.
///
/// # Safety
/// As `Allocator::grow`/`shrink` on `a`.
unsafe fn resize_edges<A: Allocator>(
    a: &A,
    p: NonNull<u8>,
    old: Layout,
    new: Layout,
    zero: bool,
) -> Option<Result<NonNull<[u8]>, AllocError>> {
    if old.size() == 0 {
        return Some(if zero {
            a.allocate_zeroed(new)
        } else {
            a.allocate(new)
        });
    }
    if new.size() == 0 {
        // SAFETY: live for old (forwarded contract).
        unsafe { a.deallocate(p, old) };
        return Some(Ok(NonNull::slice_from_raw_parts(dangling(new.align()), 0)));
    }
    None
}

/// A resize by moving: a new block for `new` (zeroed if asked), the bytes
/// both layouts hold copied, the old block freed. For a larger alignment
/// than the block has, which the allocator's own realloc (keeping the block
/// where it is) cannot give.
///
/// # Safety
/// As `Allocator::grow`/`shrink` on `a`.
unsafe fn move_block<A: Allocator>(
    a: &A,
    p: NonNull<u8>,
    old: Layout,
    new: Layout,
    zero: bool,
) -> Result<NonNull<[u8]>, AllocError> {
    let q = if zero {
        a.allocate_zeroed(new)?
    } else {
        a.allocate(new)?
    };
    // SAFETY: both live and distinct; the copy fits both (forwarded
    // contract for p).
    unsafe {
        ptr::copy_nonoverlapping(
            p.as_ptr(),
            q.cast::<u8>().as_ptr(),
            old.size().min(new.size()),
        );
        a.deallocate(p, old);
    }
    Ok(q)
}

// ------------------------------------------------------------------ vmalloc

/// An `allocator_api2` allocator over the machine's vmalloc, with a fixed
/// GFP mask: Rust for Linux's `Vmalloc` (so `allocator_api2::vec::Vec`
/// in it is a `VVec`). See the module documentation.
#[derive(Clone, Copy)]
pub struct VmallocHeap<'a> {
    vm: &'a HostVmalloc<'a>,
    gfp: Gfp,
}

impl<'a> VmallocHeap<'a> {
    /// A handle allocating with `GFP_KERNEL`.
    pub fn new(vm: &'a HostVmalloc<'a>) -> Self {
        VmallocHeap {
            vm,
            gfp: GFP_KERNEL,
        }
    }

    /// The same handle allocating with `gfp`.
    pub fn with_gfp(self, gfp: Gfp) -> Self {
        VmallocHeap { gfp, ..self }
    }

    /// The mask it allocates with.
    pub fn gfp(&self) -> Gfp {
        self.gfp
    }

    /// The vmalloc underneath.
    pub fn vmalloc(&self) -> &'a HostVmalloc<'a> {
        self.vm
    }

    fn alloc_impl(&self, layout: Layout, zero: bool) -> Result<NonNull<[u8]>, AllocError> {
        if layout.size() == 0 {
            return Ok(NonNull::slice_from_raw_parts(dangling(layout.align()), 0));
        }
        let gfp = if zero { self.gfp | Gfp::ZERO } else { self.gfp };
        let p = self
            .vm
            .vmalloc_node_align(layout.size(), layout.align(), gfp, NUMA_NO_NODE)
            .map_err(|_| AllocError)?;
        Ok(NonNull::slice_from_raw_parts(p, layout.size()))
    }

    /// `deallocate` of a block that is not zero-sized: `vfree`.
    ///
    /// # Safety
    /// As `Allocator::deallocate`.
    unsafe fn free(&self, p: NonNull<u8>) {
        // A refused free was reported by kmem and changed nothing.
        let _ = self.vm.vfree(p.as_ptr());
    }

    /// Shared body of grow, grow_zeroed and shrink: `vrealloc`, or (a
    /// larger alignment the area does not have) a move.
    ///
    /// # Safety
    /// As `Allocator::grow`/`shrink`.
    unsafe fn resize(
        &self,
        p: NonNull<u8>,
        old: Layout,
        new: Layout,
        zero: bool,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: forwarded contract.
        if let Some(r) = unsafe { resize_edges(self, p, old, new, zero) } {
            return r;
        }
        if !(p.as_ptr() as usize).is_multiple_of(new.align()) {
            // vrealloc keeps the area's address: move to one aligned anew.
            // SAFETY: forwarded contract.
            return unsafe { move_block(self, p, old, new, zero) };
        }
        let q = self
            .vm
            .vrealloc_node_align(p.as_ptr(), new.size(), new.align(), self.gfp, NUMA_NO_NODE)
            .map_err(|_| AllocError)?
            .ok_or(AllocError)?;
        if zero {
            // SAFETY: q is live for new.size() bytes.
            unsafe { zero_tail(q, old.size(), new.size()) };
        }
        Ok(NonNull::slice_from_raw_parts(q, new.size()))
    }
}

// SAFETY: blocks are vmalloc areas, valid until vfree'd through
// `deallocate` (or moved by grow/shrink); copies of a handle refer to the
// same vmalloc, so any copy may free what another allocated.
heap_allocator_impl!(VmallocHeap<'_>);

impl fmt::Debug for VmallocHeap<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VmallocHeap")
            .field("gfp", &self.gfp)
            .finish()
    }
}

// ----------------------------------------------------------------- kvmalloc

/// kvmalloc on the hosted machine.
pub type HostKvAlloc<'a> = KvAlloc<'a, 'a, HostPlatform, HostVmap<'a>>;

/// An `allocator_api2` allocator over kvmalloc (kmalloc first, vmalloc if
/// that fails, with Linux's rules), with a fixed GFP mask: Rust for Linux's
/// `KVmalloc` (so `allocator_api2::vec::Vec` in it is a `KVVec`). See the
/// module documentation.
#[derive(Clone, Copy)]
pub struct KvmallocHeap<'a> {
    kv: HostKvAlloc<'a>,
    gfp: Gfp,
}

impl<'a> KvmallocHeap<'a> {
    /// A handle allocating with `GFP_KERNEL` from `slab` and `vm`, which
    /// must sit on the same machine.
    ///
    /// # Panics
    /// If they do not.
    pub fn new(slab: &'a SlabAllocator<'a, HostPlatform>, vm: &'a HostVmalloc<'a>) -> Self {
        KvmallocHeap {
            kv: KvAlloc::new(slab, vm),
            gfp: GFP_KERNEL,
        }
    }

    /// The same handle over `kv` (for its [`kmem::kvmalloc::KvRules`]).
    pub fn with_kvalloc(self, kv: HostKvAlloc<'a>) -> Self {
        KvmallocHeap { kv, ..self }
    }

    /// The same handle allocating with `gfp`.
    pub fn with_gfp(self, gfp: Gfp) -> Self {
        KvmallocHeap { gfp, ..self }
    }

    /// The mask it allocates with.
    pub fn gfp(&self) -> Gfp {
        self.gfp
    }

    /// The kvmalloc underneath.
    pub fn kvalloc(&self) -> HostKvAlloc<'a> {
        self.kv
    }

    /// The size to ask kvmalloc for so that the block satisfies `layout`,
    /// or None for an alignment above a page (Rust for Linux's `KVmalloc`
    /// refuses those too).
    pub fn request(layout: Layout) -> Option<usize> {
        if layout.align() > PAGE_SIZE {
            return None;
        }
        crate::global::aligned_request(layout)
    }

    fn alloc_impl(&self, layout: Layout, zero: bool) -> Result<NonNull<[u8]>, AllocError> {
        if layout.size() == 0 {
            return Ok(NonNull::slice_from_raw_parts(dangling(layout.align()), 0));
        }
        let req = Self::request(layout).ok_or(AllocError)?;
        let gfp = if zero { self.gfp | Gfp::ZERO } else { self.gfp };
        let p = self.kv.kvmalloc(req, gfp).map_err(|_| AllocError)?;
        debug_assert!((p.as_ptr() as usize).is_multiple_of(layout.align()));
        Ok(NonNull::slice_from_raw_parts(p, layout.size()))
    }

    /// `deallocate` of a block that is not zero-sized: `kvfree`.
    ///
    /// # Safety
    /// As `Allocator::deallocate`.
    unsafe fn free(&self, p: NonNull<u8>) {
        // A refused free was reported by kmem and changed nothing.
        let _ = self.kv.kvfree(p.as_ptr());
    }

    /// Shared body of grow, grow_zeroed and shrink: `kvrealloc`, or (a
    /// larger alignment than the block has) a move.
    ///
    /// # Safety
    /// As `Allocator::grow`/`shrink`.
    unsafe fn resize(
        &self,
        p: NonNull<u8>,
        old: Layout,
        new: Layout,
        zero: bool,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: forwarded contract.
        if let Some(r) = unsafe { resize_edges(self, p, old, new, zero) } {
            return r;
        }
        let req = Self::request(new).ok_or(AllocError)?;
        if !(p.as_ptr() as usize).is_multiple_of(new.align()) {
            // kvrealloc keeps a block that still holds the new size where
            // it is (kmalloc-96 objects are only 32-aligned, kmalloc-192
            // 64-aligned): move to one aligned anew.
            // SAFETY: forwarded contract.
            return unsafe { move_block(self, p, old, new, zero) };
        }
        let q = self
            .kv
            .kvrealloc(p.as_ptr(), req, self.gfp)
            .map_err(|_| AllocError)?
            .ok_or(AllocError)?;
        // Kept in place: aligned (checked above); moved: a kmalloc class
        // holding a multiple of the alignment is aligned to it, a vmalloc
        // area to a page.
        debug_assert!((q.as_ptr() as usize).is_multiple_of(new.align()));
        if zero {
            // SAFETY: q is live for new.size() bytes.
            unsafe { zero_tail(q, old.size(), new.size()) };
        }
        Ok(NonNull::slice_from_raw_parts(q, new.size()))
    }
}

// SAFETY: blocks are kmalloc objects or vmalloc areas, valid until
// kvfree'd through `deallocate` (or moved by grow/shrink); copies of a
// handle refer to the same allocators, so any copy may free what another
// allocated.
heap_allocator_impl!(KvmallocHeap<'_>);

impl fmt::Debug for KvmallocHeap<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvmallocHeap")
            .field("gfp", &self.gfp)
            .field("rules", &self.kv.rules())
            .finish()
    }
}
