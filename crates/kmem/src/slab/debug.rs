//! Slab debugging: Linux's `slab_debug=FZPUT` per cache.
//!
//! A cache with any debug flag takes the checked paths for every allocation
//! and free (one object at a time under the node lock, no per-CPU caching,
//! full slabs kept on a list), so that [`KmemCache::validate`] can look at
//! every object and see a consistent state.
//!
//! - `F` consistency checks: on alloc, the object is a valid free object with
//!   intact red zones and poison; on free, the address is an object, not on
//!   the free list already, with intact red zones; before a slab goes back,
//!   every object and the slab padding are checked.
//! - `Z` red zones: `red_left_pad` bytes before and the bytes after the
//!   object (at least a word) hold 0xbb while free, 0xcc while allocated; for
//!   kmalloc-style caches with `U`, the bytes between the requested size and
//!   the object size are red zone too ("kmalloc Redzone").
//! - `P` poison: free objects hold 0x6b ... 0xa5 (the free pointer moves past
//!   the object), padding 0x5a; a write after free shows up as "Poison
//!   overwritten" at the next check.
//! - `U` tracking: the call site (`#[track_caller]`), CPU, task
//!   (`Platform::task_id`) and time (a global event count) of the last
//!   allocation and free of each object.
//! - `T` trace: a `TRACE <cache> alloc|free 0x<obj> inuse=<n> fp=0x<fp>`
//!   line for every alloc and free; a free also dumps the object's bytes as
//!   they were freed (Linux's `trace`; its stack dump has no counterpart).
//!
//! Reports read like Linux 6.11 to 6.14's (the format of the issue's
//! example, `BUG kmalloc-64: Right Redzone overwritten`): a `BUG <cache>:
//! <what>` banner, the details, the tracking records, the slab and the
//! object with hex dumps (`print_trailer`: the object up to a page, red
//! zones and padding whole, the 16 bytes before an object more than 16
//! bytes into a slab without red zones), and `FIX <cache>: ...` for what
//! was repaired. `check_object` gives each run of bad bytes its own
//! `<what> overwritten` banner, run line and `FIX` line, and prints the
//! object's trailer once after all of them (so the dump shows the bytes
//! restored). Linux 6.15 changed this: a `[<what> overwritten] ...` line
//! per run and one `Object corrupt` banner with the trailer dumped before
//! the repairs. Linux's taint field in the banner, its `WARN` and stack
//! dumps have no counterpart. Each report and each fix counts one error on
//! the cache and the allocator ([`KmemCache::errors`]), the counting of
//! Linux's slub_kunit `slab_errors`.
//!
//! `SLAB_TYPESAFE_BY_RCU` and `kfree_rcu` live in [`super::rcu`].

use super::cache::TRACK_SIZE;
use super::node::Which;
use super::slab::{SlabRef, Word, DISABLED, NO_FREE, ON_FULL};
use super::{
    CacheName, KmemCache, SlabFlags, SlabFreeError, POISON_END, POISON_FREE, POISON_INUSE,
    SLUB_RED_ACTIVE, SLUB_RED_INACTIVE,
};
use crate::addr::PAGE_SIZE;
use crate::platform::Platform;
use core::fmt;
use core::panic::Location;
use core::sync::atomic::Ordering::Relaxed;

pub use super::rcu::RcuQueue;

const WORD: usize = core::mem::size_of::<usize>();
const TRACK_MAGIC: usize = 0x7472_6163_6b21_6b6d;
const RULE_EQ: &str =
    "=============================================================================";
const RULE_DASH: &str =
    "-----------------------------------------------------------------------------";

/// What [`KmemCache::validate`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ValidateReport {
    /// Slabs looked at.
    pub slabs: usize,
    /// Errors reported during the walk (each report and each fix counts).
    pub errors: usize,
}

/// A free-object bitmap of one slab (up to 4096 objects; larger slabs are
/// answered by walking the free list each time).
struct ObjMap {
    bits: [u64; 64],
    big: bool,
}

impl ObjMap {
    const CAP: u32 = 64 * 64;
}

/// Which tracking record.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TrackItem {
    Alloc = 0,
    Free = 1,
}

/// Hex dump of a memory range, 16 bytes a line (Linux's `print_section`).
/// All `len` bytes are dumped: as in Linux, the callers choose the lengths
/// (the object at most a page, everything else whole).
struct Hex<'a> {
    label: &'a str,
    addr: usize,
    len: usize,
}

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let len = self.len;
        let mut off = 0;
        while off < len {
            let n = (len - off).min(16);
            write!(f, "{}{:016x}: ", self.label, self.addr + off)?;
            let mut ascii = [b'.'; 16];
            for (i, a) in ascii.iter_mut().enumerate() {
                if i < n {
                    // SAFETY: reports only dump ranges inside a live slab.
                    let b = unsafe { ((self.addr + off + i) as *const u8).read_volatile() };
                    write!(f, "{b:02x} ")?;
                    // Linux's hex_dump_to_buffer: isascii && isprint (a
                    // space included).
                    if b == b' ' || b.is_ascii_graphic() {
                        *a = b;
                    }
                } else {
                    f.write_str("   ")?;
                }
            }
            let s = core::str::from_utf8(&ascii[..n]).unwrap_or("");
            writeln!(f, " {s}")?;
            off += n;
        }
        Ok(())
    }
}

/// The `BUG <cache>: <msg>` banner.
struct Bug<'a> {
    name: &'a str,
    msg: fmt::Arguments<'a>,
}

impl fmt::Display for Bug<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{RULE_EQ}")?;
        writeln!(f, "BUG {}: {}", self.name, self.msg)?;
        writeln!(f, "{RULE_DASH}")?;
        writeln!(f)
    }
}

/// Linux's `print_slab_info`.
struct SlabInfo<'a, P: Platform> {
    cache: &'a KmemCache<P>,
    slab: SlabRef<'a>,
}

impl<P: Platform> fmt::Display for SlabInfo<'_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self.slab.word();
        let fp = if w.has_free() {
            self.cache.obj_addr(self.slab.base, w.free())
        } else {
            0
        };
        write!(
            f,
            "Slab pfn {:#x} @{:#x} objects={} used={} fp={:#x} flags=",
            self.slab.pfn,
            self.slab.base,
            w.objects(),
            w.inuse(),
            fp
        )?;
        let mut sep = "";
        for (bit, name) in [
            (super::slab::FROZEN, "frozen"),
            (super::slab::ON_PARTIAL, "partial"),
            (ON_FULL, "full"),
            (DISABLED, "disabled"),
        ] {
            if w.has(bit) {
                write!(f, "{sep}{name}")?;
                sep = "|";
            }
        }
        if sep.is_empty() {
            f.write_str("none")?;
        }
        writeln!(f)
    }
}

/// Linux's `print_tracking`.
struct Tracking<'a, P: Platform> {
    cache: &'a KmemCache<P>,
    obj: usize,
}

impl<P: Platform> fmt::Display for Tracking<'_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.cache.flags.contains(SlabFlags::STORE_USER) {
            return Ok(());
        }
        let now = self.cache.global().ticks.load(Relaxed);
        for (what, item) in [("Allocated", TrackItem::Alloc), ("Freed", TrackItem::Free)] {
            if let Some((loc, cpu, pid, when)) = self.cache.get_track(self.obj, item) {
                writeln!(
                    f,
                    "{what} in {}:{} age={} cpu={cpu} pid={pid}",
                    loc.file(),
                    loc.line(),
                    now.wrapping_sub(when),
                )?;
            }
        }
        Ok(())
    }
}

/// Linux's `print_trailer`: tracking, slab, object and its surroundings.
struct Trailer<'a, P: Platform> {
    cache: &'a KmemCache<P>,
    slab: SlabRef<'a>,
    obj: usize,
}

impl<P: Platform> fmt::Display for Trailer<'_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.cache;
        let p = self.obj;
        write!(f, "{}", Tracking { cache: s, obj: p })?;
        write!(
            f,
            "{}",
            SlabInfo {
                cache: s,
                slab: self.slab
            }
        )?;
        // SAFETY: p is an object of the slab.
        let fp = unsafe { s.get_fp(p) };
        writeln!(f, "Object {p:#x} @offset={} fp={fp:#x}", p - self.slab.base)?;
        writeln!(f)?;
        if s.flags.contains(SlabFlags::RED_ZONE) {
            write!(
                f,
                "{}",
                Hex {
                    label: "Redzone  ",
                    addr: p - s.red_left_pad,
                    len: s.red_left_pad
                }
            )?;
        } else if p > self.slab.base + 16 {
            // Linux's test: the object at offset 16 gets no such line.
            write!(
                f,
                "{}",
                Hex {
                    label: "Bytes b4 ",
                    addr: p - 16,
                    len: 16
                }
            )?;
        }
        write!(
            f,
            "{}",
            Hex {
                label: "Object   ",
                addr: p,
                len: s.object_size().min(PAGE_SIZE)
            }
        )?;
        if s.flags.contains(SlabFlags::RED_ZONE) {
            write!(
                f,
                "{}",
                Hex {
                    label: "Redzone  ",
                    addr: p + s.object_size(),
                    len: s.inuse() - s.object_size()
                }
            )?;
        }
        let off = s.meta_end();
        let end = s.size_from_object();
        if off < end {
            write!(
                f,
                "{}",
                Hex {
                    label: "Padding  ",
                    addr: p + off,
                    len: end - off
                }
            )?;
        }
        Ok(())
    }
}

impl<P: Platform> KmemCache<P> {
    /// Counts one error (for reports made outside this module).
    pub(crate) fn count_error_pub(&self) {
        self.count_error();
    }

    #[inline]
    fn count_error(&self) {
        self.errors.fetch_add(1, Relaxed);
        self.global().errors.fetch_add(1, Relaxed);
    }

    /// Linux's `slab_fix`: one `FIX <cache>: ...` line, one error.
    #[cold]
    pub(crate) fn slab_fix(&self, msg: fmt::Arguments<'_>) {
        self.count_error();
        self.platform()
            .warn(format_args!("FIX {}: {}", self.name(), msg));
    }

    /// Linux's `object_err`: a BUG banner and the object's trailer.
    #[cold]
    pub(crate) fn object_err(&self, slab: SlabRef<'_>, obj: usize, msg: fmt::Arguments<'_>) {
        self.count_error();
        let valid = self
            .obj_index(slab.base, slab.word().objects(), obj)
            .is_some();
        if valid {
            self.platform().warn(format_args!(
                "{}{}",
                Bug {
                    name: self.name(),
                    msg
                },
                Trailer {
                    cache: self,
                    slab,
                    obj
                }
            ));
        } else {
            self.platform().warn(format_args!(
                "{}{}Invalid pointer {obj:#x}",
                Bug {
                    name: self.name(),
                    msg
                },
                SlabInfo { cache: self, slab }
            ));
        }
    }

    /// Linux's `slab_err`: a BUG banner and the slab's state.
    #[cold]
    pub(crate) fn slab_err(&self, slab: SlabRef<'_>, msg: fmt::Arguments<'_>) {
        self.count_error();
        self.platform().warn(format_args!(
            "{}{}",
            Bug {
                name: self.name(),
                msg
            },
            SlabInfo { cache: self, slab }
        ));
    }

    /// End of the object plus its free pointer if that lies outside
    /// (Linux's `get_info_end`).
    #[inline]
    pub(crate) fn info_end(&self) -> usize {
        if self.offset >= self.inuse() {
            self.inuse() + WORD
        } else {
            self.inuse()
        }
    }

    /// End of the metadata (tracking, saved request size).
    pub(crate) fn meta_end(&self) -> usize {
        let mut off = self.info_end();
        if self.flags.contains(SlabFlags::STORE_USER) {
            off += 2 * TRACK_SIZE;
            if self.flags.contains(SlabFlags::KMALLOC) {
                off += WORD;
            }
        }
        off
    }

    /// Bytes from the object start to the next object's left red zone.
    pub(crate) fn size_from_object(&self) -> usize {
        if self.flags.contains(SlabFlags::RED_ZONE) {
            self.size - self.red_left_pad
        } else {
            self.size
        }
    }

    /// True if the cache saves the requested size (kmalloc red zone).
    #[inline]
    pub(crate) fn has_orig_size(&self) -> bool {
        self.flags
            .contains(SlabFlags::STORE_USER | SlabFlags::KMALLOC)
    }

    /// Saves the size a kmalloc-style object was requested with.
    pub(crate) fn set_orig_size(&self, obj: usize, size: usize) {
        if self.has_orig_size() {
            let at = obj + self.info_end() + 2 * TRACK_SIZE;
            // SAFETY: inside the object's metadata.
            unsafe { (at as *mut usize).write(size) };
        }
    }

    /// The size a kmalloc-style object was requested with (the object size
    /// if the cache does not save it).
    pub(crate) fn get_orig_size(&self, obj: usize) -> usize {
        if !self.has_orig_size() {
            return self.object_size();
        }
        let at = obj + self.info_end() + 2 * TRACK_SIZE;
        // SAFETY: inside the object's metadata.
        let v = unsafe { (at as *const usize).read() };
        v.min(self.object_size())
    }

    fn track_addr(&self, obj: usize, item: TrackItem) -> usize {
        obj + self.info_end() + item as usize * TRACK_SIZE
    }

    /// Records who allocated or freed `obj`.
    fn set_track(&self, obj: usize, item: TrackItem, caller: &'static Location<'static>) {
        let t = self.track_addr(obj, item) as *mut usize;
        let loc = caller as *const Location<'static> as usize;
        let when = self.global().ticks.fetch_add(1, Relaxed);
        // Linux's track keeps an int cpu and an int pid: one word here.
        let cpu_pid = (self.platform().cpu_id() as u32 as usize)
            | ((self.platform().task_id() as usize) << 32);
        // SAFETY: the track records are inside the object's metadata.
        unsafe {
            t.write(loc);
            t.add(1).write(loc ^ TRACK_MAGIC);
            t.add(2).write(cpu_pid);
            t.add(3).write(when as usize);
        }
    }

    fn init_tracking(&self, obj: usize) {
        if self.flags.contains(SlabFlags::STORE_USER) {
            let t = self.track_addr(obj, TrackItem::Alloc) as *mut u8;
            // SAFETY: inside the object's metadata.
            unsafe { core::ptr::write_bytes(t, 0, 2 * TRACK_SIZE) };
        }
    }

    fn get_track(
        &self,
        obj: usize,
        item: TrackItem,
    ) -> Option<(&'static Location<'static>, u32, u32, u64)> {
        if !self.flags.contains(SlabFlags::STORE_USER) {
            return None;
        }
        let t = self.track_addr(obj, item) as *const usize;
        // SAFETY: inside the object's metadata.
        let (loc, check, cpu_pid, when) =
            unsafe { (t.read(), t.add(1).read(), t.add(2).read(), t.add(3).read()) };
        if loc == 0 || check != loc ^ TRACK_MAGIC {
            return None;
        }
        // SAFETY: a location stored by set_track (checked against its
        // shadow): a `&'static Location`.
        Some((
            unsafe { &*(loc as *const Location<'static>) },
            cpu_pid as u32,
            (cpu_pid >> 32) as u32,
            when as u64,
        ))
    }

    /// Where `obj` was last allocated, if the cache tracks users.
    pub fn alloc_site(&self, obj: *const u8) -> Option<&'static Location<'static>> {
        self.get_track(obj as usize, TrackItem::Alloc).map(|t| t.0)
    }

    /// Where `obj` was last freed, if the cache tracks users.
    pub fn free_site(&self, obj: *const u8) -> Option<&'static Location<'static>> {
        self.get_track(obj as usize, TrackItem::Free).map(|t| t.0)
    }

    /// Linux's `setup_slab_debug`: poison the whole fresh slab.
    pub(crate) fn setup_slab_debug(&self, base: usize, bytes: usize) {
        if self.flags.contains(SlabFlags::POISON) {
            // SAFETY: a fresh slab, ours.
            unsafe { core::ptr::write_bytes(base as *mut u8, POISON_INUSE, bytes) };
        }
    }

    /// Linux's `setup_object_debug`: a fresh object is free.
    pub(crate) fn setup_object_debug(&self, obj: usize) {
        if self
            .flags
            .intersects(SlabFlags::STORE_USER | SlabFlags::RED_ZONE | SlabFlags::OBJECT_POISON)
        {
            self.init_object(obj, SLUB_RED_INACTIVE);
            self.init_tracking(obj);
        }
    }

    /// Linux's `init_object`: red zones to `val`, object poisoned.
    pub(crate) fn init_object(&self, obj: usize, val: u8) {
        let p = obj as *mut u8;
        let mut poison_size = self.object_size();
        // SAFETY: every range lies inside the object's stride.
        unsafe {
            if self.flags.contains(SlabFlags::RED_ZONE) {
                core::ptr::write_bytes(p.sub(self.red_left_pad), val, self.red_left_pad);
                if self.has_orig_size() && val == SLUB_RED_ACTIVE {
                    poison_size = self.get_orig_size(obj);
                }
            }
            if self.flags.contains(SlabFlags::OBJECT_POISON) && poison_size > 0 {
                core::ptr::write_bytes(p, POISON_FREE, poison_size - 1);
                p.add(poison_size - 1).write(POISON_END);
            }
            if self.flags.contains(SlabFlags::RED_ZONE) {
                core::ptr::write_bytes(p.add(poison_size), val, self.inuse() - poison_size);
            }
        }
    }

    /// Linux's `check_bytes_and_report` (6.11 to 6.14): reports and
    /// repairs the first run of bytes in `[start, start + bytes)` that
    /// differ from `value`: a `<what> overwritten` banner, the run's line,
    /// the `FIX` line. The object's trailer is [`Self::check_object`]'s,
    /// once for all runs.
    fn check_bytes_and_report(
        &self,
        slab: SlabRef<'_>,
        what: &str,
        start: usize,
        value: u8,
        bytes: usize,
    ) -> bool {
        // SAFETY: the range lies inside the slab.
        let s = unsafe { core::slice::from_raw_parts(start as *const u8, bytes) };
        let Some(i) = s.iter().position(|&b| b != value) else {
            return true;
        };
        let fault = start + i;
        let mut end = start + bytes;
        while end > fault && s[end - 1 - start] == value {
            end -= 1;
        }
        self.count_error();
        let first = s[i];
        let off = fault - slab.base;
        let last = end - 1;
        self.platform().warn(format_args!(
            "{}{fault:#x}-{last:#x} @offset={off}. First byte {first:#x} instead of {value:#x}",
            Bug {
                name: self.name(),
                msg: format_args!("{what} overwritten")
            },
        ));
        self.slab_fix(format_args!(
            "Restoring {what} {fault:#x}-{last:#x}={value:#x}"
        ));
        // SAFETY: as above.
        unsafe { core::ptr::write_bytes(fault as *mut u8, value, end - fault) };
        false
    }

    /// Linux's `check_pad_bytes`: the padding after the metadata is 0x5a.
    fn check_pad_bytes(&self, slab: SlabRef<'_>, obj: usize) -> bool {
        let off = self.meta_end();
        let end = self.size_from_object();
        if off >= end {
            return true;
        }
        self.check_bytes_and_report(slab, "Object padding", obj + off, POISON_INUSE, end - off)
    }

    /// Linux's `slab_pad_check`: the leftover at the end of the slab is 0x5a.
    fn slab_pad_check(&self, slab: SlabRef<'_>) {
        if !self.flags.contains(SlabFlags::POISON) {
            return;
        }
        let length = slab.bytes();
        let remainder = length % self.size;
        if remainder == 0 {
            return;
        }
        let pad = slab.base + length - remainder;
        // SAFETY: the slab's own leftover bytes.
        let s = unsafe { core::slice::from_raw_parts(pad as *const u8, remainder) };
        let Some(i) = s.iter().position(|&b| b != POISON_INUSE) else {
            return;
        };
        let fault = pad + i;
        let mut end = pad + remainder;
        while end > fault && s[end - 1 - pad] == POISON_INUSE {
            end -= 1;
        }
        self.count_error();
        self.platform().warn(format_args!(
            "{}{}{}",
            Bug {
                name: self.name(),
                msg: format_args!(
                    "Padding overwritten. {fault:#x}-{:#x} @offset={}",
                    end - 1,
                    fault - slab.base
                )
            },
            Hex {
                label: "Padding ",
                addr: pad,
                len: remainder
            },
            SlabInfo { cache: self, slab }
        ));
        self.slab_fix(format_args!(
            "Restoring slab padding {fault:#x}-{:#x}={POISON_INUSE:#x}",
            end - 1
        ));
        // SAFETY: as above.
        unsafe { core::ptr::write_bytes(fault as *mut u8, POISON_INUSE, end - fault) };
    }

    /// Linux's `check_valid_pointer`: NULL or the start of an object.
    pub(crate) fn check_valid_pointer(&self, slab: SlabRef<'_>, p: usize) -> bool {
        p == 0
            || self
                .obj_index(slab.base, slab.word().objects(), p)
                .is_some()
    }

    /// Linux's `check_object`: red zones, poison, padding and free pointer
    /// of one object, `val` telling whether it should be free
    /// ([`SLUB_RED_INACTIVE`]) or allocated ([`SLUB_RED_ACTIVE`]).
    pub(crate) fn check_object(&self, slab: SlabRef<'_>, obj: usize, val: u8) -> bool {
        let mut ret = true;
        let f = self.flags;
        if f.contains(SlabFlags::RED_ZONE) {
            if !self.check_bytes_and_report(
                slab,
                "Left Redzone",
                obj - self.red_left_pad,
                val,
                self.red_left_pad,
            ) {
                ret = false;
            }
            if !self.check_bytes_and_report(
                slab,
                "Right Redzone",
                obj + self.object_size(),
                val,
                self.inuse() - self.object_size(),
            ) {
                ret = false;
            }
            if self.has_orig_size() && val == SLUB_RED_ACTIVE {
                let orig = self.get_orig_size(obj);
                if self.object_size() > orig
                    && !self.check_bytes_and_report(
                        slab,
                        "kmalloc Redzone",
                        obj + orig,
                        val,
                        self.object_size() - orig,
                    )
                {
                    ret = false;
                }
            }
        } else if f.contains(SlabFlags::POISON)
            && self.object_size() < self.inuse()
            && !self.check_bytes_and_report(
                slab,
                "Alignment padding",
                obj + self.object_size(),
                POISON_INUSE,
                self.inuse() - self.object_size(),
            )
        {
            ret = false;
        }
        if f.contains(SlabFlags::POISON) {
            if val != SLUB_RED_ACTIVE && f.contains(SlabFlags::OBJECT_POISON) {
                if self.object_size() > 1
                    && !self.check_bytes_and_report(
                        slab,
                        "Poison",
                        obj,
                        POISON_FREE,
                        self.object_size() - 1,
                    )
                {
                    ret = false;
                }
                if !self.check_bytes_and_report(
                    slab,
                    "End Poison",
                    obj + self.object_size() - 1,
                    POISON_END,
                    1,
                ) {
                    ret = false;
                }
            }
            if !self.check_pad_bytes(slab, obj) {
                ret = false;
            }
        }
        // Bad bytes so far: their trailer follows once, at the end.
        let bytes_bad = !ret;
        // A corrupt free pointer's report: with its own trailer (Linux's
        // object_err) unless the one at the end will follow.
        let fp_corrupt = |this: &Self| {
            if bytes_bad {
                this.count_error();
                this.platform().warn(format_args!(
                    "{}",
                    Bug {
                        name: this.name(),
                        msg: format_args!("Freepointer corrupt")
                    }
                ));
            } else {
                this.object_err(slab, obj, format_args!("Freepointer corrupt"));
            }
        };
        if self.offset >= self.inuse() || val != SLUB_RED_ACTIVE {
            // SAFETY: obj is an object of the slab.
            let fp = unsafe { self.get_fp(obj) };
            if val == SLUB_RED_ACTIVE && !self.debug {
                // Without debugging, an object its slab counts in use may
                // also sit on a CPU's free list or in a chain being flushed
                // back: linked to an object of any slab, and owned by
                // another CPU. So only a value no slot holds is reported,
                // and nothing is repaired. The slot (outside the object
                // here, so the owner cannot have written it) holds the
                // allocated mark, the object's own address (queued by
                // kfree_rcu), or a free pointer.
                let marked = self.marks && (fp == self.allocated_mark() || fp == obj);
                if !marked && !self.plausible_fp(fp) {
                    fp_corrupt(self);
                    ret = false;
                }
            } else if !self.check_valid_pointer(slab, fp) {
                fp_corrupt(self);
                // SAFETY: as above.
                unsafe { self.set_fp(obj, 0) };
                ret = false;
            }
        }
        if bytes_bad {
            // Linux 6.11 to 6.14: one trailer for every bad run, after the
            // repairs.
            self.platform().warn(format_args!(
                "{}",
                Trailer {
                    cache: self,
                    slab,
                    obj
                }
            ));
        }
        ret
    }

    /// Linux's `check_slab`: the slab's counters are possible.
    fn check_slab(&self, slab: SlabRef<'_>) -> bool {
        let w = slab.word();
        let maxobj = (slab.bytes() / self.size) as u32;
        if w.objects() > maxobj {
            self.slab_err(slab, format_args!("objects {} > max {maxobj}", w.objects()));
            return false;
        }
        if w.inuse() > w.objects() {
            self.slab_err(
                slab,
                format_args!("inuse {} > max {}", w.inuse(), w.objects()),
            );
            return false;
        }
        if w.has(DISABLED) {
            self.slab_err(
                slab,
                format_args!("Slab disabled since SLUB metadata consistency check failed"),
            );
            return false;
        }
        self.slab_pad_check(slab);
        true
    }

    /// Linux's `on_freelist`: walks the slab's free list looking for
    /// `search` (0: none), repairing a corrupt chain and wrong counters on
    /// the way. Node lock held.
    ///
    /// Everything is judged against one snapshot of the slab's word, and
    /// counters are repaired with a compare-and-swap from it: in a cache
    /// without debugging, frees push onto a listed slab without the node
    /// lock, so the word may move on during the walk. A push only puts a
    /// new head in front of the chain walked, which stays as it was, so the
    /// count from the snapshot's head matches the snapshot's counters
    /// exactly; a repair that finds the word changed is dropped.
    fn on_freelist(&self, slab: SlabRef<'_>, search: usize) -> bool {
        let w = slab.word();
        let objects = w.objects();
        let mut nr = 0u32;
        let mut object = 0usize;
        let mut fp = if w.has_free() {
            self.obj_addr(slab.base, w.free())
        } else {
            0
        };
        while fp != 0 && nr <= objects {
            if fp == search {
                return true;
            }
            if !self.check_valid_pointer(slab, fp) {
                if object != 0 {
                    self.object_err(slab, object, format_args!("Freechain corrupt"));
                    // SAFETY: object is an object of the slab.
                    unsafe { self.set_fp(object, 0) };
                    break;
                }
                self.slab_err(slab, format_args!("Freepointer corrupt"));
                self.repair_word(slab, w, w.with_free(NO_FREE).with_inuse(objects));
                self.slab_fix(format_args!("Freelist cleared"));
                return false;
            }
            object = fp;
            // SAFETY: checked valid just above.
            fp = unsafe { self.get_fp(object) };
            nr += 1;
        }
        if nr > objects {
            self.slab_err(slab, format_args!("Freelist cycle detected"));
            self.repair_word(slab, w, w.with_free(NO_FREE).with_inuse(objects));
            self.slab_fix(format_args!("Freelist cleared"));
            return false;
        }
        let max_objects = ((slab.bytes() / self.size) as u32).min(super::slab::MAX_OBJS_PER_SLAB);
        let mut fixed = w;
        if objects != max_objects {
            self.slab_err(
                slab,
                format_args!(
                    "Wrong number of objects. Found {objects} but should be {max_objects}"
                ),
            );
            fixed = fixed.with_objects(max_objects);
            self.slab_fix(format_args!("Number of objects adjusted"));
        }
        let counted = max_objects.saturating_sub(nr);
        if fixed.inuse() != counted {
            self.slab_err(
                slab,
                format_args!(
                    "Wrong object count. Counter is {} but counted were {counted}",
                    fixed.inuse()
                ),
            );
            fixed = fixed.with_inuse(counted);
            self.slab_fix(format_args!("Object count adjusted"));
        }
        if fixed != w {
            self.repair_word(slab, w, fixed);
        }
        search == 0
    }

    /// Replaces the slab's word `old` (a snapshot) with `new` if nothing
    /// changed it meanwhile; otherwise leaves it (a concurrent free moved
    /// it on, and the repair was judged on a state that is gone).
    fn repair_word(&self, slab: SlabRef<'_>, old: Word, new: Word) {
        let _ = slab.cas(old, new);
    }

    /// Walks the free list (no repairs) looking for `search`.
    pub(crate) fn is_on_freelist(&self, slab: SlabRef<'_>, search: usize) -> bool {
        let w = slab.word();
        let mut fp = if w.has_free() {
            self.obj_addr(slab.base, w.free())
        } else {
            0
        };
        let mut n = 0;
        while fp != 0 && n <= w.objects() {
            if fp == search {
                return true;
            }
            if !self.check_valid_pointer(slab, fp) {
                return false;
            }
            // SAFETY: checked valid just above.
            fp = unsafe { self.get_fp(fp) };
            n += 1;
        }
        false
    }

    /// Marks the free objects of `slab` (walking its own free list).
    fn fill_map(&self, slab: SlabRef<'_>, map: &mut ObjMap) {
        let w = slab.word();
        map.bits = [0; 64];
        map.big = w.objects() > ObjMap::CAP;
        if map.big {
            return;
        }
        let mut fp = if w.has_free() {
            self.obj_addr(slab.base, w.free())
        } else {
            0
        };
        let mut n = 0;
        while fp != 0 && n <= w.objects() {
            let Some(i) = self.obj_index(slab.base, w.objects(), fp) else {
                break;
            };
            map.bits[i as usize / 64] |= 1 << (i % 64);
            // SAFETY: a valid object.
            fp = unsafe { self.get_fp(fp) };
            n += 1;
        }
    }

    fn map_is_free(&self, slab: SlabRef<'_>, map: &ObjMap, i: u32) -> bool {
        if map.big {
            self.is_on_freelist(slab, self.obj_addr(slab.base, i))
        } else {
            map.bits[i as usize / 64] & (1 << (i % 64)) != 0
        }
    }

    /// Linux's `alloc_debug_processing`: checks on a popped object, then
    /// marks it allocated. On failure the slab is disabled (all objects
    /// counted used) and `false` is returned.
    pub(crate) fn alloc_debug_processing(
        &self,
        slab: SlabRef<'_>,
        obj: usize,
        orig_size: usize,
        caller: &'static Location<'static>,
    ) -> bool {
        if self.flags.contains(SlabFlags::CONSISTENCY_CHECKS) {
            let ok = self.check_slab(slab)
                && if !self.check_valid_pointer(slab, obj) {
                    self.object_err(slab, obj, format_args!("Freelist Pointer check fails"));
                    false
                } else {
                    self.check_object(slab, obj, SLUB_RED_INACTIVE)
                };
            if !ok {
                self.slab_fix(format_args!("Marking all objects used"));
                loop {
                    let old = slab.word();
                    let new = old
                        .with_free(NO_FREE)
                        .with_inuse(old.objects())
                        .with(DISABLED, true);
                    if slab.cas(old, new) {
                        break;
                    }
                }
                return false;
            }
        }
        if self.flags.contains(SlabFlags::TRACE) {
            self.trace(slab, obj, true);
        }
        self.set_orig_size(obj, orig_size);
        self.init_object(obj, SLUB_RED_ACTIVE);
        if self.flags.contains(SlabFlags::STORE_USER) {
            self.set_track(obj, TrackItem::Alloc, caller);
        }
        true
    }

    /// Linux's `trace`: the slab's counters at the call (an alloc's object
    /// already taken, a free's not yet given back), and for a free the
    /// whole object (`print_section` "Object ", all of `object_size`, no
    /// page limit), before the free poisons it.
    fn trace(&self, slab: SlabRef<'_>, obj: usize, alloc: bool) {
        let w = slab.word();
        let fp = if w.has_free() {
            self.obj_addr(slab.base, w.free())
        } else {
            0
        };
        let name = self.name();
        let inuse = w.inuse();
        if alloc {
            self.platform().warn(format_args!(
                "TRACE {name} alloc {obj:#x} inuse={inuse} fp={fp:#x}"
            ));
        } else {
            self.platform().warn(format_args!(
                "TRACE {name} free {obj:#x} inuse={inuse} fp={fp:#x}\n{}",
                Hex {
                    label: "Object ",
                    addr: obj,
                    len: self.object_size()
                }
            ));
        }
    }

    /// Free of a debug cache's object (Linux's `free_to_partial_list` with
    /// `free_debug_processing`), all under the node lock.
    pub(crate) fn free_debug(
        &self,
        slab: SlabRef<'_>,
        obj: usize,
        caller: &'static Location<'static>,
    ) -> Result<(), SlabFreeError> {
        let node = slab.node();
        let mut lists = self.nodes[node].lists.lock();
        let mut err: Option<SlabFreeError> = None;
        if self.flags.contains(SlabFlags::CONSISTENCY_CHECKS) {
            if !self.check_slab(slab) {
                err = Some(self.corrupt(obj));
            } else if !self.check_valid_pointer(slab, obj) {
                self.slab_err(slab, format_args!("Invalid object pointer {obj:#x}"));
                err = Some(self.corrupt(obj));
            } else if self.on_freelist(slab, obj) {
                self.object_err(slab, obj, format_args!("Object already free"));
                err = Some(self.double_free(obj));
            } else if slab.word().inuse() < 1 {
                self.slab_err(
                    slab,
                    format_args!(
                        "Slab has {} allocated objects but 1 are to be freed",
                        slab.word().inuse()
                    ),
                );
                err = Some(self.corrupt(obj));
            } else if !self.check_object(slab, obj, SLUB_RED_ACTIVE) {
                err = Some(self.corrupt(obj));
            }
            if err.is_some() {
                self.slab_fix(format_args!("Object at {obj:#x} not freed"));
            }
        } else if slab.word().has(DISABLED) || slab.word().inuse() < 1 {
            self.slab_err(
                slab,
                format_args!("Slab metadata not trustworthy; object not freed"),
            );
            err = Some(self.corrupt(obj));
        } else if self.is_on_freelist(slab, obj) {
            drop(lists);
            let e = self.double_free(obj);
            super::report_free_error(self.pages(), self.global(), Some(self), &e, caller);
            return Err(e);
        }
        if let Some(e) = err {
            return Err(e);
        }
        if self.flags.contains(SlabFlags::STORE_USER) {
            self.set_track(obj, TrackItem::Free, caller);
        }
        if self.flags.contains(SlabFlags::TRACE) {
            self.trace(slab, obj, false);
        }
        self.init_object(obj, SLUB_RED_INACTIVE);
        let (old, new) = loop {
            let old = slab.word();
            let prior = if old.has_free() {
                self.obj_addr(slab.base, old.free())
            } else {
                0
            };
            // SAFETY: obj is being freed by us.
            unsafe { self.set_fp(obj, prior) };
            let new = old
                .with_free(self.idx_of(slab.base, obj))
                .with_inuse(old.inuse() - 1);
            if slab.cas(old, new) {
                break (old, new);
            }
        };
        let c = self.cpu_slab(self.platform().cpu_id());
        let slab_free = new.inuse() == 0 && lists.partial.len >= self.min_partial;
        if !old.has_free() {
            if new.has(ON_FULL) {
                self.list_del(node, &mut lists, Which::Full, slab);
            }
            if !slab_free {
                self.add_partial(node, &mut lists, slab, true);
                c.stat(super::Stat::FreeAddPartial);
            }
        } else if slab_free {
            self.remove_partial(node, &mut lists, slab);
            c.stat(super::Stat::FreeRemovePartial);
        }
        if slab_free {
            self.dec_slabs_node(slab);
        }
        drop(lists);
        if slab_free {
            c.stat(super::Stat::FreeSlab);
            self.release_slab(slab);
        }
        Ok(())
    }

    fn corrupt(&self, obj: usize) -> SlabFreeError {
        SlabFreeError::Corrupt {
            addr: obj,
            cache: CacheName::of(self),
        }
    }

    /// Checks of Linux's `__free_slab` under `SLAB_CONSISTENCY_CHECKS`.
    pub(crate) fn check_slab_before_free(&self, slab: SlabRef<'_>) {
        self.slab_pad_check(slab);
        let objects = slab.word().objects();
        for i in 0..objects {
            self.check_object(slab, self.obj_addr(slab.base, i), SLUB_RED_INACTIVE);
        }
    }

    /// Linux's `list_slab_objects`: one BUG for the slab and one line per
    /// object still allocated (each counting one error). Returns how many.
    pub(crate) fn list_slab_objects(&self, slab: SlabRef<'_>) -> usize {
        self.count_error();
        self.platform().warn(format_args!(
            "{}{}",
            Bug {
                name: self.name(),
                msg: format_args!("Objects remaining on __kmem_cache_shutdown()")
            },
            SlabInfo { cache: self, slab }
        ));
        let mut map = ObjMap {
            bits: [0; 64],
            big: false,
        };
        self.fill_map(slab, &mut map);
        let objects = slab.word().objects();
        let mut n = 0;
        for i in 0..objects {
            if !self.map_is_free(slab, &map, i) {
                let p = self.obj_addr(slab.base, i);
                self.count_error();
                self.platform().warn(format_args!(
                    "Object {p:#x} @offset={}\n{}",
                    p - slab.base,
                    Tracking {
                        cache: self,
                        obj: p
                    }
                ));
                n += 1;
            }
        }
        n
    }

    fn validate_slab(&self, slab: SlabRef<'_>, map: &mut ObjMap) {
        if slab.frame.owner() != super::OWNER_SLAB {
            self.slab_err(slab, format_args!("Not a valid slab page"));
            return;
        }
        if !self.check_slab(slab) || !self.on_freelist(slab, 0) {
            return;
        }
        self.fill_map(slab, map);
        for i in 0..slab.word().objects() {
            let p = self.obj_addr(slab.base, i);
            let val = if self.map_is_free(slab, map, i) {
                SLUB_RED_INACTIVE
            } else {
                SLUB_RED_ACTIVE
            };
            if !self.check_object(slab, p, val) {
                break;
            }
        }
    }

    /// Linux's `validate_slab_cache`: flushes every CPU, then checks every
    /// slab on the node lists (and, for debug caches, the full slabs) object
    /// by object. Problems are reported and repaired as Linux does.
    ///
    /// Linux validates debug caches only; here a cache without debugging is
    /// checked too, with what its lock-free paths allow: other CPUs may be
    /// allocating and freeing meanwhile, so the free-pointer slot of an
    /// object its slab counts in use (which may sit on a CPU's list, linked
    /// to any slab) is reported only if no slot could hold it, and never
    /// repaired.
    pub fn validate(&self) -> ValidateReport {
        let before = self.errors();
        self.flush_all();
        let mut map = ObjMap {
            bits: [0; 64],
            big: false,
        };
        let mut count = 0;
        for node in 0..self.pages().nr_nodes() {
            let n = &self.nodes[node];
            let lists = n.lists.lock();
            let mut c = 0;
            self.for_each_on(&lists, Which::Partial, |s| {
                self.validate_slab(s, &mut map);
                c += 1;
            });
            if c != lists.partial.len {
                self.count_error();
                self.platform().warn(format_args!(
                    "SLUB {}: {c} partial slabs counted but counter={}",
                    self.name(),
                    lists.partial.len
                ));
            }
            if self.debug {
                self.for_each_on(&lists, Which::Full, |s| {
                    self.validate_slab(s, &mut map);
                    c += 1;
                });
                let nr = n.nr_slabs.load(Relaxed);
                if c != nr {
                    self.count_error();
                    self.platform().warn(format_args!(
                        "SLUB: {} {c} slabs counted but counter={nr}",
                        self.name()
                    ));
                }
            }
            count += c;
        }
        ValidateReport {
            slabs: count,
            errors: self.errors() - before,
        }
    }
}
