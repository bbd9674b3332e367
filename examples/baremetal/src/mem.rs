//! `memcpy`, `memmove`, `memset`, `memcmp` and `bcmp`.
//!
//! The compiler emits calls to these; on a hosted target libc provides them,
//! and the sysroot's compiler_builtins is built without its `mem` feature, so
//! a freestanding kernel must bring its own. Copies and fills use the string
//! instructions (fast on every x86-64 with ERMSB, and immune to the compiler
//! turning a copy loop back into a `memcpy` call). The direction flag is clear
//! on entry, as the ABI guarantees.

use core::arch::asm;

/// Copies `n` bytes; the ranges must not overlap.
///
/// # Safety
/// `dst` and `src` must be valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    asm!(
        "rep movsb",
        inout("rcx") n => _,
        inout("rdi") dst => _,
        inout("rsi") src => _,
        options(nostack, preserves_flags)
    );
    dst
}

/// Copies `n` bytes; the ranges may overlap.
///
/// # Safety
/// `dst` and `src` must be valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize).wrapping_sub(src as usize) >= n {
        // dst below src, or no overlap: a forward copy is safe.
        return memcpy(dst, src, n);
    }
    if n > 0 {
        asm!(
            "std",
            "rep movsb",
            "cld",
            inout("rcx") n => _,
            inout("rdi") dst.add(n - 1) => _,
            inout("rsi") src.add(n - 1) => _,
            options(nostack)
        );
    }
    dst
}

/// Fills `n` bytes with `c`.
///
/// # Safety
/// `dst` must be valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    asm!(
        "rep stosb",
        inout("rcx") n => _,
        inout("rdi") dst => _,
        in("al") c as u8,
        options(nostack, preserves_flags)
    );
    dst
}

/// Compares `n` bytes.
///
/// # Safety
/// `a` and `b` must be valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        let (x, y) = (*a.add(i), *b.add(i));
        if x != y {
            return x as i32 - y as i32;
        }
        i += 1;
    }
    0
}

/// Compares `n` bytes for equality only.
///
/// # Safety
/// `a` and `b` must be valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    memcmp(a, b, n)
}
