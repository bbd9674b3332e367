//! Branch hints on the fast paths.
//!
//! The compiler lays out the fast paths from guesses, and it sometimes
//! makes the common case the taken jump (a CPU flag found free, an object
//! found valid). Calling [`cold`] on the rare branch moves that branch out
//! of line, so the path that runs falls straight through. A `#[cold]`
//! function is the stable spelling of `core::hint::cold_path`, which needs
//! a newer compiler than the crate asks for.

/// Marks the branch that calls it as unlikely. Does nothing at run time.
#[cold]
#[inline(always)]
pub(crate) fn cold() {}
