//! `--touch`: blocks that the workload uses.
//!
//! The workloads never touch what they allocate, so an allocator that
//! writes into its objects (kmem's allocated mark, a free list kept in free
//! blocks) pays for cache lines nobody else would have touched, and one that
//! writes nothing pays for none. A program uses its memory. [`Touched`]
//! wraps any heap so that the first word of every block is written right
//! after allocation (with the block's own address) and read back and checked
//! right before its free, as code that fills an object and reads it before
//! dropping it would: in W4 the freeing thread then reads the object that
//! the allocating thread wrote, whatever the allocator does.
//!
//! Every W2 and W4 block holds at least 8 bytes (`W2_MIN`) and every block
//! is at least 8-byte aligned, so the word fits. The accesses are volatile:
//! the compiler cannot drop or merge them.

use std::alloc::Layout;
use std::ptr::NonNull;

use super::{Heap, SharedHeap};

/// A heap whose blocks get their first word written after allocation and
/// checked before their free (see the module comment). Reports under the
/// wrapped heap's name.
pub struct Touched<H>(pub H);

/// Writes the block's address into its first word.
#[inline(always)]
fn fill(p: NonNull<u8>) {
    // SAFETY: a live block of at least one aligned word (module comment).
    unsafe { (p.as_ptr() as *mut usize).write_volatile(p.as_ptr() as usize) };
}

/// Reads the first word back; panics if it is not what [`fill`] wrote.
#[inline(always)]
fn check(p: NonNull<u8>, name: &str) {
    // SAFETY: a live block that fill wrote.
    let word = unsafe { (p.as_ptr() as *const usize).read_volatile() };
    if word != p.as_ptr() as usize {
        overwritten(name, p, word);
    }
}

#[cold]
#[inline(never)]
fn overwritten(name: &str, p: NonNull<u8>, word: usize) -> ! {
    panic!(
        "{name}: the first word of the live block at {p:p} changed between its \
         allocation and its free (now {word:#x}): the allocator wrote into a \
         block it had handed out, or handed it out twice"
    )
}

impl<H: Heap> Heap for Touched<H> {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    #[inline]
    fn alloc(&mut self, layout: Layout) -> NonNull<u8> {
        let p = self.0.alloc(layout);
        fill(p);
        p
    }
    #[inline]
    unsafe fn free(&mut self, p: NonNull<u8>, layout: Layout) {
        check(p, self.0.name());
        // SAFETY: forwarded contract.
        unsafe { self.0.free(p, layout) }
    }
    fn enter(&mut self) {
        self.0.enter();
    }
    fn leave(&mut self) {
        self.0.leave();
    }
}

impl<S: SharedHeap> SharedHeap for Touched<S> {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn enter_thread(&self, index: usize) {
        self.0.enter_thread(index);
    }
    fn leave_thread(&self) {
        self.0.leave_thread();
    }
    #[inline]
    fn alloc(&self, layout: Layout) -> NonNull<u8> {
        let p = self.0.alloc(layout);
        fill(p);
        p
    }
    #[inline]
    unsafe fn free(&self, p: NonNull<u8>, layout: Layout) {
        check(p, self.0.name());
        // SAFETY: forwarded contract.
        unsafe { self.0.free(p, layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// System-allocator blocks; with `scribble`, every allocation writes
    /// into the block handed out before it, as a broken allocator keeping
    /// metadata in live blocks would.
    struct Sys {
        scribble: bool,
        last: Option<NonNull<u8>>,
    }

    impl Heap for Sys {
        fn name(&self) -> &'static str {
            "sys"
        }
        fn alloc(&mut self, layout: Layout) -> NonNull<u8> {
            if let (true, Some(last)) = (self.scribble, self.last) {
                // SAFETY: a live block of at least one word.
                unsafe { (last.as_ptr() as *mut usize).write(0x5a5a) };
            }
            // SAFETY: a non-zero size.
            let p = NonNull::new(unsafe { std::alloc::alloc(layout) }).unwrap();
            self.last = Some(p);
            p
        }
        unsafe fn free(&mut self, p: NonNull<u8>, layout: Layout) {
            // SAFETY: allocated by alloc with this layout.
            unsafe { std::alloc::dealloc(p.as_ptr(), layout) };
        }
    }

    const L: Layout = match Layout::from_size_align(16, 8) {
        Ok(l) => l,
        Err(_) => panic!(),
    };

    #[test]
    fn blocks_carry_their_address_and_pass() {
        let mut h = Touched(Sys {
            scribble: false,
            last: None,
        });
        let (a, b) = (h.alloc(L), h.alloc(L));
        for p in [a, b] {
            // SAFETY: a live block.
            assert_eq!(
                unsafe { *(p.as_ptr() as *const usize) },
                p.as_ptr() as usize
            );
            // SAFETY: allocated above.
            unsafe { h.free(p, L) };
        }
    }

    #[test]
    #[should_panic(expected = "sys: the first word of the live block")]
    fn a_write_into_a_live_block_is_caught_at_its_free() {
        let mut h = Touched(Sys {
            scribble: true,
            last: None,
        });
        let a = h.alloc(L);
        let _b = h.alloc(L);
        // SAFETY: allocated above.
        unsafe { h.free(a, L) };
    }
}
