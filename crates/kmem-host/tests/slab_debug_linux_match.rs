//! slab debugging (slab_debug=F,Z,P,U) in normal use against Linux
//! (written in review): object bytes after alloc and free for every flag
//! combination (red zones 0xcc/0xbb, poison 0x6b..0xa5, padding 0x5a), the
//! kmalloc red zone through krealloc, exactly one report with the right
//! title for one corrupted byte anywhere (and the repair), call-site and CPU
//! tracking for every entry point, long random runs without false reports,
//! and kfree_rcu keeping the kmalloc red zone checked (it claimed the whole
//! object as ksize does: those two tests failed before). At the end, the
//! report format against Linux 6.11-6.14's mm/slub.c: hex dump lengths, the
//! `Bytes b4` rule, two corruptions of one object line by line, and the
//! object dump of a `T` free.

mod slab_common;

use kmem::gfp::{Gfp, GFP_KERNEL};
use kmem::slab::{
    KmemCache, SlabAllocator, SlabConfig, SlabDebug, SlabFlags, POISON_END, POISON_FREE,
    POISON_INUSE, SLUB_RED_ACTIVE, SLUB_RED_INACTIVE,
};
use kmem::Platform;
use kmem_host::{HostPlatform, Machine, MachineConfig};
use std::ptr::NonNull;

/// A cache constructor.
type Ctor = fn(NonNull<u8>);

const WORD: usize = 8;
const TRACK: usize = 32;

fn machine() -> Machine {
    Machine::new(MachineConfig {
        ram_bytes: 64 << 20,
        ..Default::default()
    })
    .unwrap()
}

fn slab_with<'a>(m: &'a Machine, debug: &'static str) -> SlabAllocator<'a, HostPlatform> {
    SlabAllocator::new(
        m.pages(),
        SlabConfig {
            slab_debug: SlabDebug::new(debug),
            ..Default::default()
        },
    )
    .unwrap()
}

fn ctor(p: NonNull<u8>) {
    // The constructor writes a recognisable pattern over the first 4 bytes.
    unsafe { p.as_ptr().write_bytes(0x77, 1) };
}

/// Expected byte ranges of one object, by Linux's calculate_sizes /
/// init_object rules. Returns (start offset relative to obj, len, byte, what).
fn expected(
    c: &KmemCache<HostPlatform>,
    allocated: bool,
    orig: usize,
) -> Vec<(isize, usize, u8, &'static str)> {
    let f = c.flags();
    let os = c.object_size();
    let inuse = c.inuse();
    let rlp = c.red_left_pad() as isize;
    let mut v = Vec::new();
    let val = if allocated {
        SLUB_RED_ACTIVE
    } else {
        SLUB_RED_INACTIVE
    };
    let z = f.contains(SlabFlags::RED_ZONE);
    let p = f.contains(SlabFlags::POISON);
    let u = f.contains(SlabFlags::STORE_USER);
    let objpoison = f.contains(SlabFlags::OBJECT_POISON);
    let kmalloc_rz = u && f.contains(SlabFlags::KMALLOC) && z && allocated;
    let poison_size = if kmalloc_rz { orig } else { os };
    if z {
        v.push((-rlp, rlp as usize, val, "left redzone"));
    }
    if objpoison {
        v.push((0, poison_size - 1, POISON_FREE, "poison"));
        v.push(((poison_size - 1) as isize, 1, POISON_END, "end poison"));
    }
    if z {
        v.push((
            poison_size as isize,
            inuse - poison_size,
            val,
            "right redzone",
        ));
    } else if p && os < inuse {
        v.push((os as isize, inuse - os, POISON_INUSE, "align pad"));
    }
    if p {
        let info_end = if c.freeptr_offset() >= inuse {
            inuse + WORD
        } else {
            inuse
        };
        let mut off = info_end;
        if u {
            off += 2 * TRACK;
            if f.contains(SlabFlags::KMALLOC) {
                off += WORD;
            }
        }
        let sfo = c.slab_size() - c.red_left_pad();
        if off < sfo {
            v.push((off as isize, sfo - off, POISON_INUSE, "padding"));
        }
    }
    v
}

fn check_bytes(c: &KmemCache<HostPlatform>, obj: *mut u8, allocated: bool, orig: usize) {
    for (start, len, b, what) in expected(c, allocated, orig) {
        for i in 0..len {
            let a = unsafe { obj.offset(start + i as isize) };
            let got = unsafe { a.read() };
            assert_eq!(
                got,
                b,
                "cache {} flags {:?} os {} allocated={allocated}: {what} byte {} (obj{:+}) is {got:#x}, want {b:#x}",
                c.name(),
                c.flags(),
                c.object_size(),
                i,
                start + i as isize
            );
        }
    }
}

fn combos() -> Vec<&'static str> {
    vec![
        "F", "Z", "P", "U", "FZ", "FP", "FU", "ZP", "ZU", "PU", "FZP", "FZU", "FPU", "ZPU", "FZPU",
    ]
}

/// Nothing wrong: every flag combination, sizes, ctor, RCU: the bytes after
/// alloc and after free are Linux's, and validation finds nothing.
#[test]
fn layout_bytes_all_combos_no_false_reports() {
    for dbg in combos() {
        for &size in &[1usize, 7, 8, 13, 24, 64, 100, 200] {
            for variant in 0..3 {
                let m = machine();
                let s = slab_with(&m, dbg);
                let (flags, ct): (SlabFlags, Option<Ctor>) = match variant {
                    0 => (SlabFlags::empty(), None),
                    1 => (SlabFlags::empty(), Some(ctor as fn(NonNull<u8>))),
                    _ => (SlabFlags::TYPESAFE_BY_RCU, None),
                };
                let c = s.kmem_cache_create("zzdbg", size, 0, flags, ct).unwrap();
                assert!(c.is_debug());
                let mut v = Vec::new();
                for _ in 0..6 {
                    let p = c.alloc(GFP_KERNEL).unwrap().as_ptr();
                    check_bytes(&c, p, true, size);
                    if ct.is_some() {
                        for i in 0..1 {
                            assert_eq!(unsafe { *p.add(i) }, 0x77, "{dbg} {size} ctor byte");
                        }
                    }
                    v.push(p);
                }
                for p in v.iter().step_by(2) {
                    c.free(NonNull::new(*p).unwrap()).unwrap();
                    check_bytes(&c, *p, false, size);
                }
                let r = c.validate();
                assert_eq!(
                    r.errors,
                    0,
                    "{dbg} {size} v{variant}: {:#?}",
                    m.platform().take_log()
                );
                for p in v.iter().skip(1).step_by(2) {
                    c.free(NonNull::new(*p).unwrap()).unwrap();
                }
                assert_eq!(c.validate().errors, 0, "{dbg} {size} v{variant}");
                assert_eq!(m.platform().log_len(), 0, "{:#?}", m.platform().take_log());
                c.destroy().unwrap();
            }
        }
    }
}

/// kmalloc caches with orig_size: kmalloc red zone between requested size
/// and object size; krealloc shrink/grow in place keeps it right.
#[test]
fn kmalloc_redzone_bytes_and_krealloc() {
    for dbg in ["ZU", "FZPU", "FZU", "ZPU"] {
        let m = machine();
        let s = slab_with(&m, dbg);
        let p = s.kmalloc(100, GFP_KERNEL).unwrap().as_ptr();
        let c = s.kmalloc_slab(100, GFP_KERNEL);
        assert_eq!(c.object_size(), 128);
        check_bytes(c, p, true, 100);
        unsafe { p.write_bytes(0x11, 100) };
        // Shrink in place.
        let q = s.krealloc(p, 50, GFP_KERNEL).unwrap().as_ptr();
        assert_eq!(q, p);
        for i in 0..50 {
            assert_eq!(unsafe { *p.add(i) }, 0x11);
        }
        for i in 50..128 {
            assert_eq!(unsafe { *p.add(i) }, SLUB_RED_ACTIVE, "{dbg} byte {i}");
        }
        assert_eq!(c.validate().errors, 0, "{:#?}", m.platform().take_log());
        // Grow in place.
        let q = s.krealloc(p, 120, GFP_KERNEL).unwrap().as_ptr();
        assert_eq!(q, p);
        unsafe { p.add(50).write_bytes(0x22, 70) };
        assert_eq!(c.validate().errors, 0, "{:#?}", m.platform().take_log());
        // Grow beyond.
        let r = s.krealloc(p, 200, GFP_KERNEL).unwrap().as_ptr();
        assert_ne!(r, p);
        for i in 0..50 {
            assert_eq!(unsafe { *r.add(i) }, 0x11);
        }
        for i in 50..120 {
            assert_eq!(unsafe { *r.add(i) }, 0x22);
        }
        let c2 = s.kmalloc_slab(200, GFP_KERNEL);
        if dbg.contains('P') {
            check_bytes(c, p, false, 128);
        }
        for i in 200..c2.object_size() {
            assert_eq!(unsafe { *r.add(i) }, SLUB_RED_ACTIVE, "{dbg} new byte {i}");
        }
        assert_eq!(c.validate().errors, 0, "{:#?}", m.platform().take_log());
        assert_eq!(c2.validate().errors, 0, "{:#?}", m.platform().take_log());
        s.kfree(r).unwrap();
        assert_eq!(m.platform().log_len(), 0, "{:#?}", m.platform().take_log());
    }
}

fn bug_lines(log: &[String]) -> Vec<String> {
    log.iter()
        .flat_map(|m| m.lines().map(|l| l.to_string()).collect::<Vec<_>>())
        .filter(|l| l.starts_with("BUG "))
        .collect()
}

/// One corrupted byte in each area of an allocated and a free object:
/// exactly one report with Linux's title, 2 errors (report + fix), byte
/// repaired, a second validate clean.
#[test]
fn single_byte_corruption_reported_once() {
    for &size in &[13usize, 24, 64] {
        for kmalloc in [false, true] {
            let m = machine();
            let s = slab_with(&m, "FZPU");
            let (c, objs): (&KmemCache<HostPlatform>, Vec<*mut u8>) = if kmalloc {
                let c = s.kmalloc_slab(size, GFP_KERNEL);
                let v = (0..4)
                    .map(|_| s.kmalloc(c.object_size(), GFP_KERNEL).unwrap().as_ptr())
                    .collect();
                (c, v)
            } else {
                let c = s
                    .kmem_cache_create("zzcorrupt", size, 0, SlabFlags::empty(), None)
                    .unwrap();
                let c: &KmemCache<HostPlatform> = unsafe { &*(&*c as *const _) };
                let v = (0..4)
                    .map(|_| c.alloc(GFP_KERNEL).unwrap().as_ptr())
                    .collect();
                (c, v)
            };
            let os = c.object_size();
            c.free(NonNull::new(objs[1]).unwrap()).unwrap();
            c.free(NonNull::new(objs[3]).unwrap()).unwrap();
            assert_eq!(c.validate().errors, 0);
            m.platform().take_log();
            for (which, allocated) in [(2usize, true), (1usize, false)] {
                let obj = objs[which];
                for (start, len, _b, what) in expected(c, allocated, os) {
                    if allocated && what.contains("poison") {
                        continue;
                    }
                    for i in [0, len - 1] {
                        let a = unsafe { obj.offset(start + i as isize) };
                        let old = unsafe { a.read() };
                        unsafe { a.write(0x42) };
                        let e0 = c.errors();
                        c.validate();
                        let log = m.platform().take_log();
                        let bugs = bug_lines(&log);
                        let title = match what {
                            "left redzone" => "Left Redzone overwritten",
                            "right redzone" => "Right Redzone overwritten",
                            "poison" => "Poison overwritten",
                            "end poison" => "End Poison overwritten",
                            "align pad" => "Alignment padding overwritten",
                            "padding" => "Object padding overwritten",
                            _ => unreachable!(),
                        };
                        assert_eq!(
                            bugs.len(),
                            1,
                            "size {size} kmalloc={kmalloc} alloc={allocated} {what}[{i}]: {log:#?}"
                        );
                        assert!(bugs[0].contains(title), "{what}: {bugs:?}");
                        assert_eq!(c.errors() - e0, 2, "{what}: {log:#?}");
                        assert_eq!(unsafe { a.read() }, old, "{what} not repaired");
                        assert_eq!(c.validate().errors, 0, "{:#?}", m.platform().take_log());
                    }
                }
            }
        }
    }
}

fn here_line() -> u32 {
    std::panic::Location::caller().line()
}

/// U records the caller of every alloc / free entry point, and the CPU.
#[test]
fn tracking_records_callers() {
    let m = machine();
    let s = slab_with(&m, "FZPU");
    let c = s
        .kmem_cache_create("zztrack", 40, 0, SlabFlags::empty(), None)
        .unwrap();
    let file = file!();
    let chk = |site: Option<&'static std::panic::Location<'static>>, line: u32, what: &str| {
        let site = site.unwrap_or_else(|| panic!("{what}: no site"));
        assert_eq!((site.file(), site.line()), (file, line), "{what}");
    };
    let l = line!() + 1;
    let p = c.alloc(GFP_KERNEL).unwrap().as_ptr();
    chk(c.alloc_site(p), l, "kmem_cache_alloc");
    assert!(c.free_site(p).is_none(), "fresh object has a free site");
    let l = line!() + 1;
    c.free(NonNull::new(p).unwrap()).unwrap();
    chk(c.free_site(p), l, "kmem_cache_free");
    let l = line!() + 1;
    let p = c.zalloc(GFP_KERNEL).unwrap().as_ptr();
    chk(c.alloc_site(p), l, "kmem_cache_zalloc");
    let l = line!() + 1;
    let p2 = c.alloc_node(GFP_KERNEL, 0).unwrap().as_ptr();
    chk(c.alloc_site(p2), l, "alloc_node");
    let mut out = [core::ptr::null_mut(); 3];
    let l = line!() + 1;
    c.alloc_bulk(GFP_KERNEL, &mut out).unwrap();
    for q in out {
        chk(c.alloc_site(q), l, "alloc_bulk");
    }
    let l = line!() + 1;
    c.free_bulk(&out).unwrap();
    for q in out {
        chk(c.free_site(q), l, "free_bulk");
    }
    c.free(NonNull::new(p).unwrap()).unwrap();
    c.free(NonNull::new(p2).unwrap()).unwrap();

    let k = s.kmalloc_slab(100, GFP_KERNEL);
    let l = line!() + 1;
    let p = s.kmalloc(100, GFP_KERNEL).unwrap().as_ptr();
    chk(k.alloc_site(p), l, "kmalloc");
    let l = line!() + 1;
    s.kfree(p).unwrap();
    chk(k.free_site(p), l, "kfree");
    let l = line!() + 1;
    let p = s.kzalloc(100, GFP_KERNEL).unwrap().as_ptr();
    chk(k.alloc_site(p), l, "kzalloc");
    let l = line!() + 1;
    let q = s.krealloc(p, 300, GFP_KERNEL).unwrap().as_ptr();
    chk(k.free_site(p), l, "krealloc old free");
    chk(
        s.kmalloc_slab(300, GFP_KERNEL).alloc_site(q),
        l,
        "krealloc new alloc",
    );
    let l = line!() + 1;
    let p = s.kcalloc(10, 10, GFP_KERNEL).unwrap().as_ptr();
    chk(k.alloc_site(p), l, "kcalloc");
    let l = line!() + 1;
    let p2 = s.kmalloc_array(10, 10, GFP_KERNEL).unwrap().as_ptr();
    chk(k.alloc_site(p2), l, "kmalloc_array");
    let l = line!() + 1;
    s.kfree_bulk(&[p, p2]).unwrap();
    chk(k.free_site(p), l, "kfree_bulk");
    let l = line!() + 1;
    let p = s.kmalloc(100, GFP_KERNEL).unwrap().as_ptr();
    let _ = l;
    let l = line!() + 1;
    s.kfree_sensitive(p).unwrap();
    chk(k.free_site(p), l, "kfree_sensitive");
    let _ = s.kfree(q);
    let _ = here_line;
}

/// The CPU and task recorded in the tracking record are those of the
/// caller (Linux's print_track: `age= cpu= pid=`; kmem printed no pid).
#[test]
fn tracking_records_cpu_and_pid() {
    let m = Machine::new(MachineConfig {
        ram_bytes: 64 << 20,
        nr_cpus: 4,
        ..Default::default()
    })
    .unwrap();
    let s = slab_with(&m, "FZPU");
    let c = s
        .kmem_cache_create("zzcpu", 40, 0, SlabFlags::empty(), None)
        .unwrap();
    let (p, alloc_pid) = kmem_host::run_on_cpu(3, || {
        (
            c.alloc(GFP_KERNEL).unwrap().as_ptr(),
            m.platform().task_id(),
        )
    });
    // Freed by another thread: another task.
    let addr = p as usize;
    let free_pid = std::thread::scope(|sc| {
        sc.spawn(|| {
            kmem_host::run_on_cpu(2, || {
                c.free(NonNull::new(addr as *mut u8).unwrap()).unwrap();
                m.platform().task_id()
            })
        })
        .join()
        .unwrap()
    });
    assert!(alloc_pid != 0 && free_pid != 0 && alloc_pid != free_pid);
    // Corrupt the poison so the report prints the tracking.
    unsafe { *p = 0 };
    c.validate();
    let log = m.platform().take_log().join("\n");
    let alloc_line = log
        .lines()
        .find(|l| l.starts_with("Allocated in"))
        .expect(&log);
    let free_line = log.lines().find(|l| l.starts_with("Freed in")).expect(&log);
    assert!(
        alloc_line.ends_with(&format!("cpu=3 pid={alloc_pid}")),
        "{alloc_line}"
    );
    assert!(
        free_line.ends_with(&format!("cpu=2 pid={free_pid}")),
        "{free_line}"
    );
}

/// Long random alloc / free / krealloc / ksize with all debug flags: no
/// reports, contents preserved.
#[test]
fn random_sequence_no_false_reports() {
    for dbg in ["FZPU", "FZP", "ZPU", "FPU", "FZU", "FZPUT"] {
        let m = machine();
        let s = slab_with(&m, dbg);
        let c1 = s
            .kmem_cache_create("zzr1", 52, 0, SlabFlags::empty(), None)
            .unwrap();
        let c2 = s
            .kmem_cache_create("zzr2", 24, 0, SlabFlags::TYPESAFE_BY_RCU, None)
            .unwrap();
        let c3 = s
            .kmem_cache_create(
                "zzr3",
                33,
                64,
                SlabFlags::empty(),
                Some(ctor as fn(NonNull<u8>)),
            )
            .unwrap();
        let mut rng = slab_common::Rng(0x1234_5678 ^ dbg.len() as u64);
        // (ptr, size, tag, kind)
        let mut live: Vec<(*mut u8, usize, u8, u8)> = Vec::new();
        let mut zeroed = std::collections::HashSet::new();
        for step in 0..6000u32 {
            let op = rng.below(10);
            if op < 4 || live.is_empty() {
                let kind = rng.below(4) as u8;
                let tag = (step % 251) as u8 | 1;
                let (p, size) = match kind {
                    0 => {
                        let size = 1 + rng.below(700) as usize;
                        let gfp = if rng.below(2) == 0 {
                            GFP_KERNEL
                        } else {
                            GFP_KERNEL | Gfp::ZERO
                        };
                        let p = s.kmalloc(size, gfp).unwrap().as_ptr();
                        if gfp.contains(Gfp::ZERO) {
                            zeroed.insert(p as usize);
                            for i in 0..size {
                                assert_eq!(
                                    unsafe { *p.add(i) },
                                    0,
                                    "{dbg} kzalloc byte {i}/{size}"
                                );
                            }
                        }
                        (p, size)
                    }
                    1 => (c1.alloc(GFP_KERNEL).unwrap().as_ptr(), 52),
                    2 => (c2.alloc(GFP_KERNEL).unwrap().as_ptr(), 24),
                    _ => (c3.alloc(GFP_KERNEL).unwrap().as_ptr(), 33),
                };
                unsafe { p.write_bytes(tag, size) };
                live.push((p, size, tag, kind));
            } else {
                let i = rng.below(live.len() as u64) as usize;
                let (p, size, tag, kind) = live[i];
                for j in 0..size {
                    assert_eq!(
                        unsafe { *p.add(j) },
                        tag,
                        "{dbg} step {step} content {j}/{size}"
                    );
                }
                if op < 7 {
                    live.swap_remove(i);
                    zeroed.remove(&(p as usize));
                    match kind {
                        0 => s.kfree(p).unwrap(),
                        1 => c1.free(NonNull::new(p).unwrap()).unwrap(),
                        2 => c2.free(NonNull::new(p).unwrap()).unwrap(),
                        _ => c3.free(NonNull::new(p).unwrap()).unwrap(),
                    }
                } else if kind == 0 && op < 9 {
                    let ns = 1 + rng.below(900) as usize;
                    let gfp = if rng.below(2) == 0 {
                        GFP_KERNEL
                    } else {
                        GFP_KERNEL | Gfp::ZERO
                    };
                    let q = s.krealloc(p, ns, gfp).unwrap().as_ptr();
                    for j in 0..size.min(ns) {
                        assert_eq!(
                            unsafe { *q.add(j) },
                            tag,
                            "{dbg} krealloc {size}->{ns} byte {j}"
                        );
                    }
                    // Linux zeroes orig_size..new_size only when it knows
                    // orig_size (U); otherwise spare bytes are the caller's.
                    if gfp.contains(Gfp::ZERO)
                        && dbg.contains('U')
                        && zeroed.contains(&(p as usize))
                    {
                        for j in size..ns {
                            assert_eq!(
                                unsafe { *q.add(j) },
                                0,
                                "{dbg} krealloc zero {size}->{ns} byte {j}"
                            );
                        }
                    }
                    let was = zeroed.remove(&(p as usize));
                    if was && gfp.contains(Gfp::ZERO) {
                        zeroed.insert(q as usize);
                    }
                    unsafe { q.write_bytes(tag, ns) };
                    live[i] = (q, ns, tag, 0);
                } else if kind == 0 {
                    let ks = s.ksize(p);
                    assert!(ks >= size);
                    unsafe { p.write_bytes(tag, ks) };
                    zeroed.remove(&(p as usize));
                    live[i] = (p, ks, tag, 0);
                }
            }
            if step % 500 == 0 {
                let log = m.platform().take_log();
                let log: Vec<_> = log
                    .into_iter()
                    .filter(|l| !l.starts_with("TRACE"))
                    .collect();
                assert!(log.is_empty(), "{dbg} step {step}: {log:#?}");
                for c in [&*c1, &*c2, &*c3] {
                    assert_eq!(
                        c.validate().errors,
                        0,
                        "{dbg} {:#?}",
                        m.platform().take_log()
                    );
                }
                for sz in [8usize, 16, 32, 64, 96, 128, 192, 256, 512, 1024] {
                    let k = s.kmalloc_slab(sz, GFP_KERNEL);
                    assert_eq!(
                        k.validate().errors,
                        0,
                        "{dbg} kmalloc-{sz} {:#?}",
                        m.platform().take_log()
                    );
                }
                m.platform().take_log();
            }
        }
        for (p, _, _, kind) in live {
            match kind {
                0 => s.kfree(p).unwrap(),
                1 => c1.free(NonNull::new(p).unwrap()).unwrap(),
                2 => c2.free(NonNull::new(p).unwrap()).unwrap(),
                _ => c3.free(NonNull::new(p).unwrap()).unwrap(),
            }
        }
        let log: Vec<_> = m
            .platform()
            .take_log()
            .into_iter()
            .filter(|l| !l.starts_with("TRACE"))
            .collect();
        assert!(log.is_empty(), "{dbg}: {log:#?}");
        for c in [c1, c2, c3] {
            c.destroy().unwrap();
        }
        let log: Vec<_> = m
            .platform()
            .take_log()
            .into_iter()
            .filter(|l| !l.starts_with("TRACE"))
            .collect();
        assert!(log.is_empty(), "{dbg}: {log:#?}");
    }
}

/// kmalloc red zone: one byte between the requested size and the object
/// size is "kmalloc Redzone overwritten", once, repaired.
#[test]
fn kmalloc_redzone_single_corruption() {
    for at in [100usize, 127] {
        let m = machine();
        let s = slab_with(&m, "FZPU");
        let c = s.kmalloc_slab(100, GFP_KERNEL);
        let p = s.kmalloc(100, GFP_KERNEL).unwrap().as_ptr();
        unsafe { *p.add(at) = 0x11 };
        let e0 = c.errors();
        c.validate();
        let log = m.platform().take_log();
        let bugs = bug_lines(&log);
        assert_eq!(bugs.len(), 1, "{log:#?}");
        assert!(bugs[0].contains("kmalloc Redzone overwritten"), "{bugs:?}");
        assert_eq!(c.errors() - e0, 2);
        assert_eq!(unsafe { *p.add(at) }, SLUB_RED_ACTIVE);
        // Corrupt again: the free refuses and reports once.
        unsafe { *p.add(at) = 0x11 };
        assert!(s.kfree(p).is_err());
        let log = m.platform().take_log();
        let bugs = bug_lines(&log);
        assert_eq!(bugs.len(), 1, "{log:#?}");
        assert!(bugs[0].contains("kmalloc Redzone overwritten"), "{bugs:?}");
    }
}

/// Use after free write on a free object of an F cache: the next
/// allocation reporting it reports once ("Poison overwritten").
#[test]
fn alloc_detects_poison_once() {
    let m = machine();
    let s = slab_with(&m, "FZPU");
    let c = s
        .kmem_cache_create("zzuaf", 64, 0, SlabFlags::empty(), None)
        .unwrap();
    let a = c.alloc(GFP_KERNEL).unwrap().as_ptr();
    let b = c.alloc(GFP_KERNEL).unwrap().as_ptr();
    c.free(NonNull::new(b).unwrap()).unwrap();
    unsafe { *b.add(10) = 0 };
    m.platform().take_log();
    let q = c.alloc(GFP_KERNEL).unwrap().as_ptr();
    let log = m.platform().take_log();
    let bugs = bug_lines(&log);
    assert_eq!(bugs.len(), 1, "{log:#?}");
    assert!(bugs[0].contains("Poison overwritten"), "{bugs:?}");
    assert_ne!(q, b);
    let _ = a;
}

/// Slab padding at the end of the slab: one report, repaired.
#[test]
fn slab_padding_single_corruption() {
    let m = machine();
    let s = slab_with(&m, "FZPU");
    let c = s
        .kmem_cache_create("zzpad", 200, 0, SlabFlags::empty(), None)
        .unwrap();
    let p = c.alloc(GFP_KERNEL).unwrap().as_ptr();
    let oo = c.order_objects();
    let bytes = 4096usize << oo.order;
    assert!(!bytes.is_multiple_of(c.slab_size()), "no slab padding");
    let base = (p as usize - c.red_left_pad()) & !(bytes - 1);
    let last = (base + bytes - 1) as *mut u8;
    assert_eq!(unsafe { *last }, POISON_INUSE);
    unsafe { *last = 0 };
    let e0 = c.errors();
    c.validate();
    let log = m.platform().take_log();
    let bugs = bug_lines(&log);
    assert_eq!(bugs.len(), 1, "{log:#?}");
    assert!(bugs[0].contains("Padding overwritten"), "{bugs:?}");
    assert_eq!(c.errors() - e0, 2);
    assert_eq!(unsafe { *last }, POISON_INUSE);
    assert_eq!(c.validate().errors, 0);
}

/// An overflow into the kmalloc red zone of an object later given to
/// kfree_rcu must still be caught (Linux: kvfree_call_rcu does not touch
/// orig_size; the deferred kfree's free_debug_processing -> check_object
/// reports "kmalloc Redzone overwritten"). Here: validate right after the
/// kfree_rcu, while the object is still allocated.
#[test]
fn kfree_rcu_keeps_kmalloc_redzone_checked_validate() {
    let m = machine();
    let s = slab_with(&m, "FZPU");
    let c = s.kmalloc_slab(100, GFP_KERNEL);
    let p = s.kmalloc(100, GFP_KERNEL).unwrap().as_ptr();
    unsafe { *p.add(110) = 0x11 };
    s.kfree_rcu(p, 0).unwrap();
    c.validate();
    let log = m.platform().take_log();
    let bugs = bug_lines(&log);
    assert_eq!(
        bugs.len(),
        1,
        "overflow into kmalloc redzone missed: {log:#?}"
    );
    assert!(bugs[0].contains("kmalloc Redzone overwritten"), "{bugs:?}");
    s.rcu_barrier();
}

/// Same, the deferred free itself is what should report (Linux's
/// free_debug_processing).
#[test]
fn kfree_rcu_keeps_kmalloc_redzone_checked_free() {
    let m = machine();
    let s = slab_with(&m, "FZPU");
    let p = s.kmalloc(100, GFP_KERNEL).unwrap().as_ptr();
    unsafe { *p.add(110) = 0x11 };
    s.kfree_rcu(p, 0).unwrap();
    s.rcu_barrier();
    let log = m.platform().take_log();
    let bugs = bug_lines(&log);
    assert_eq!(
        bugs.len(),
        1,
        "overflow into kmalloc redzone missed: {log:#?}"
    );
    assert!(bugs[0].contains("kmalloc Redzone overwritten"), "{bugs:?}");
}

/// Freepointer of an allocated object (stored outside the object):
/// one corrupted byte -> "Freepointer corrupt" once.
#[test]
fn allocated_freepointer_corruption_once() {
    let m = machine();
    let s = slab_with(&m, "FZPU");
    let c = s
        .kmem_cache_create("zzfp", 40, 0, SlabFlags::empty(), None)
        .unwrap();
    let v: Vec<_> = (0..4)
        .map(|_| c.alloc(GFP_KERNEL).unwrap().as_ptr())
        .collect();
    let p = v[1];
    let off = c.freeptr_offset();
    assert!(off >= c.inuse());
    unsafe { *p.add(off + 3) ^= 0x40 };
    c.validate();
    let log = m.platform().take_log();
    let bugs = bug_lines(&log);
    assert_eq!(bugs.len(), 1, "{log:#?}");
    assert!(bugs[0].contains("Freepointer corrupt"), "{bugs:?}");
    assert_eq!(c.validate().errors, 0, "{:#?}", m.platform().take_log());
    for p in v {
        c.free(NonNull::new(p).unwrap()).unwrap();
    }
    assert_eq!(c.validate().errors, 0, "{:#?}", m.platform().take_log());
}

/// Layout with large alignment (left red zone = align).
#[test]
fn layout_bytes_aligned() {
    for dbg in ["FZPU", "ZP", "Z"] {
        for &(size, align, fl) in &[
            (24usize, 64usize, SlabFlags::empty()),
            (100, 0, SlabFlags::HWCACHE_ALIGN),
            (8, 16, SlabFlags::empty()),
        ] {
            let m = machine();
            let s = slab_with(&m, dbg);
            let c = s
                .kmem_cache_create("zzalign", size, align, fl, None)
                .unwrap();
            let mut v = Vec::new();
            for _ in 0..5 {
                let p = c.alloc(GFP_KERNEL).unwrap().as_ptr();
                assert_eq!(p as usize % c.align(), 0);
                check_bytes(&c, p, true, size);
                v.push(p);
            }
            for p in &v {
                c.free(NonNull::new(*p).unwrap()).unwrap();
                check_bytes(&c, *p, false, size);
            }
            assert_eq!(c.validate().errors, 0, "{:#?}", m.platform().take_log());
        }
    }
}

/// A padding overwrite found after another problem of the same object:
/// both runs reported, and the object dumped once after them (Linux 6.11
/// to 6.14's check_object; kmem once dumped it with the first report only,
/// before the padding's), and the hex dump's ASCII column shows a space as
/// a space, as Linux's hex_dump_to_buffer (isascii && isprint) does.
#[test]
fn padding_report_after_a_red_zone_report_keeps_its_dump() {
    let m = machine();
    let s = slab_with(&m, "FZPU");
    let c = s
        .kmem_cache_create("zzpad", 40, 0, SlabFlags::empty(), None)
        .unwrap();
    let c: &KmemCache<HostPlatform> = unsafe { &*(&*c as *const _) };
    let obj = c.alloc(GFP_KERNEL).unwrap().as_ptr();
    unsafe { std::ptr::copy_nonoverlapping(b"a b c d ".as_ptr(), obj, 8) };
    let regions = expected(c, true, c.object_size());
    let at = |what: &str| regions.iter().find(|r| r.3 == what).expect(what).0;
    unsafe {
        obj.offset(at("right redzone")).write(0x42);
        obj.offset(at("padding")).write(0x42);
    }
    m.platform().take_log();
    c.validate();
    let log = m.platform().take_log();
    let pad = log
        .iter()
        .position(|l| l.contains("Object padding overwritten"))
        .unwrap_or_else(|| panic!("{log:#?}"));
    let dumps: Vec<usize> = (0..log.len())
        .filter(|&i| log[i].contains("\nObject   ") || log[i].starts_with("Object   "))
        .collect();
    assert_eq!(dumps.len(), 1, "one object dump: {log:#?}");
    assert!(
        dumps[0] > pad,
        "the dump follows the padding report: {log:#?}"
    );
    assert!(
        log[dumps[0]].contains("a b c d "),
        "spaces in the ASCII column: {log:#?}"
    );
    assert_eq!(bug_lines(&log).len(), 2, "{log:#?}");
}

// ---- Report format against Linux's mm/slub.c (6.11 to 6.14) -----------

/// The hex-dump lines (`<label><16 hex digits>: ...`) of `label` in `text`.
fn dump_lines<'a>(text: &'a str, label: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| {
            l.strip_prefix(label).is_some_and(|rest| {
                rest.len() > 18
                    && rest[..16].bytes().all(|b| b.is_ascii_hexdigit())
                    && rest[16..].starts_with(": ")
            })
        })
        .collect()
}

/// The line prefixes Linux's print_section gives a dump of `len` bytes at
/// `addr`: one line per 16 bytes, no limit.
fn dump_prefixes(label: &str, addr: usize, len: usize) -> Vec<String> {
    (0..len.div_ceil(16))
        .map(|i| format!("{label}{:016x}: ", addr + 16 * i))
        .collect()
}

/// Start offset (from the object) and length of the padding after the
/// metadata, as Linux's print_trailer computes it.
fn padding_of(c: &KmemCache<HostPlatform>) -> (usize, usize) {
    let f = c.flags();
    let inuse = c.inuse();
    let mut off = if c.freeptr_offset() >= inuse {
        inuse + WORD
    } else {
        inuse
    };
    if f.contains(SlabFlags::STORE_USER) {
        off += 2 * TRACK;
        if f.contains(SlabFlags::KMALLOC) {
            off += WORD;
        }
    }
    let sfo = if f.contains(SlabFlags::RED_ZONE) {
        c.slab_size() - c.red_left_pad()
    } else {
        c.slab_size()
    };
    (off, sfo.saturating_sub(off))
}

fn slab_base(c: &KmemCache<HostPlatform>, obj: *mut u8) -> usize {
    let bytes = 4096usize << c.order_objects().order;
    (obj as usize - c.red_left_pad()) & !(bytes - 1)
}

/// Linux's print_trailer dumps the object with min(object_size, PAGE_SIZE)
/// bytes, the left red zone with red_left_pad bytes, the right red zone
/// with inuse - object_size bytes and the padding up to size_from_object;
/// slab_pad_check dumps the whole slab padding. print_section has no limit
/// of its own (kmem cut every section at 256 bytes, adding a "... (N more
/// bytes)" line Linux never prints).
#[test]
fn hex_dumps_have_linux_lengths() {
    for &(size, align) in &[(1000usize, 0usize), (5000, 0), (24, 512), (300, 0)] {
        let m = machine();
        let s = slab_with(&m, "FZP");
        let c = s
            .kmem_cache_create("zzdump", size, align, SlabFlags::empty(), None)
            .unwrap();
        let c: &KmemCache<HostPlatform> = unsafe { &*(&*c as *const _) };
        let a = c.alloc(GFP_KERNEL).unwrap().as_ptr();
        let b = c.alloc(GFP_KERNEL).unwrap().as_ptr();
        c.free(NonNull::new(b).unwrap()).unwrap();
        m.platform().take_log();
        // A write after free, far into the object.
        unsafe { *b.add(size * 9 / 10) = 0x42 };
        c.validate();
        let log = m.platform().take_log();
        let text = log.join("\n");
        assert!(!text.contains("more bytes"), "{text}");
        let os = c.object_size();
        let rlp = c.red_left_pad();
        let (pad_off, pad_len) = padding_of(c);
        let want_obj = dump_prefixes("Object   ", b as usize, os.min(4096));
        let mut want_rz = dump_prefixes("Redzone  ", b as usize - rlp, rlp);
        want_rz.extend(dump_prefixes("Redzone  ", b as usize + os, c.inuse() - os));
        let want_pad = dump_prefixes("Padding  ", b as usize + pad_off, pad_len);
        for (label, want) in [
            ("Object   ", want_obj),
            ("Redzone  ", want_rz),
            ("Padding  ", want_pad),
        ] {
            let got = dump_lines(&text, label);
            assert_eq!(got.len(), want.len(), "size {size}: {label}: {text}");
            for (g, w) in got.iter().zip(&want) {
                assert!(g.starts_with(w.as_str()), "size {size}: {g} vs {w}");
            }
        }
        c.free(NonNull::new(a).unwrap()).unwrap();
    }

    // The slab padding, dumped whole however long.
    let m = machine();
    let s = slab_with(&m, "FZP");
    let (c, remainder) = [300usize, 700, 1000, 1500, 3000]
        .iter()
        .find_map(|&size| {
            let c = s
                .kmem_cache_create("zzslabpad", size, 0, SlabFlags::empty(), None)
                .unwrap();
            let c: &KmemCache<HostPlatform> = unsafe { &*(&*c as *const _) };
            let bytes = 4096usize << c.order_objects().order;
            let r = bytes % c.slab_size();
            (r > 256).then_some((c, r))
        })
        .expect("a cache with more than 256 bytes of slab padding");
    let p = c.alloc(GFP_KERNEL).unwrap().as_ptr();
    let base = slab_base(c, p);
    let bytes = 4096usize << c.order_objects().order;
    unsafe { *((base + bytes - 1) as *mut u8) = 0 };
    m.platform().take_log();
    c.validate();
    let text = m.platform().take_log().join("\n");
    assert!(!text.contains("more bytes"), "{text}");
    let got = dump_lines(&text, "Padding ");
    let want = dump_prefixes("Padding ", base + bytes - remainder, remainder);
    assert_eq!(got.len(), want.len(), "{text}");
    for (g, w) in got.iter().zip(&want) {
        assert!(g.starts_with(w.as_str()), "{g} vs {w}");
    }
}
/// Without red zones, print_trailer shows the 16 bytes before the object
/// only for an object more than 16 bytes into the slab (`p > addr + 16`):
/// not for the object at offset 16, for the one at 32.
#[test]
fn bytes_before_only_past_16() {
    let m = machine();
    let s = slab_with(&m, "P");
    let c = s
        .kmem_cache_create("zzb4", 8, 0, SlabFlags::empty(), None)
        .unwrap();
    assert_eq!((c.slab_size(), c.red_left_pad()), (16, 0));
    let v: Vec<*mut u8> = (0..3)
        .map(|_| c.alloc(GFP_KERNEL).unwrap().as_ptr())
        .collect();
    let base = slab_base(&c, v[0]);
    let offsets: Vec<usize> = v.iter().map(|&p| p as usize - base).collect();
    assert_eq!(offsets, [0, 16, 32]);
    for &p in &v[1..] {
        c.free(NonNull::new(p).unwrap()).unwrap();
    }
    // One at a time: validate_slab stops at the first bad object.
    for (p, off, b4) in [(v[1], 16usize, false), (v[2], 32, true)] {
        unsafe { *p = 0x42 };
        m.platform().take_log();
        c.validate();
        let log = m.platform().take_log();
        let header = format!("Object {:#x} @offset={off} fp=", p as usize);
        let report = log
            .iter()
            .find(|e| e.lines().any(|l| l.starts_with(&header)))
            .unwrap_or_else(|| panic!("no report of {header}: {log:#?}"));
        let lines = dump_lines(report, "Bytes b4 ");
        if b4 {
            assert_eq!(lines.len(), 1, "{report}");
            let w = format!("Bytes b4 {:016x}: ", p as usize - 16);
            assert!(lines[0].starts_with(&w), "{report}");
        } else {
            assert!(lines.is_empty(), "offset 16: {report}");
        }
    }
    c.free(NonNull::new(v[0]).unwrap()).unwrap();
}
const RULE_EQ: &str =
    "=============================================================================";
const RULE_DASH: &str =
    "-----------------------------------------------------------------------------";

/// Every line of every log entry, in order.
fn log_lines(log: &[String]) -> Vec<String> {
    log.iter()
        .flat_map(|m| m.lines().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

/// What one line of a report should be.
enum Want {
    Exact(String),
    Prefix(String),
}

/// Two corruptions of one free object (right red zone, then poison), as
/// Linux 6.11-6.14 report them (and as the example reads): each
/// range gets its own `BUG <cache>: <what> overwritten` banner, the
/// range's line and its FIX line; the trailer follows once, after every
/// check and repair (its dump shows the bytes restored). Not 6.15's format
/// (`[<what> overwritten]` lines and one `Object corrupt` banner), and not
/// a banner without its trailer.
#[test]
fn double_corruption_reports_like_linux() {
    let m = machine();
    let s = slab_with(&m, "FZP");
    let name = "zzdouble";
    let c = s
        .kmem_cache_create(name, 40, 0, SlabFlags::empty(), None)
        .unwrap();
    let c: &KmemCache<HostPlatform> = unsafe { &*(&*c as *const _) };
    let a = c.alloc(GFP_KERNEL).unwrap().as_ptr();
    let obj = c.alloc(GFP_KERNEL).unwrap().as_ptr();
    c.free(NonNull::new(obj).unwrap()).unwrap();
    let o = obj as usize;
    let base = slab_base(c, obj);
    let os = c.object_size();
    let rlp = c.red_left_pad();
    let (pad_off, pad_len) = padding_of(c);
    let rz = o + os;
    let pz = o + 5;
    unsafe {
        *(rz as *mut u8) = 0x42;
        *(pz as *mut u8) = 0x43;
    }
    m.platform().take_log();
    let e0 = c.errors();
    c.validate();
    let log = m.platform().take_log();
    let got = log_lines(&log);

    use Want::*;
    let banner = |what: &str| {
        [
            Exact(RULE_EQ.into()),
            Exact(format!("BUG {name}: {what} overwritten")),
            Exact(RULE_DASH.into()),
            Exact(String::new()),
        ]
    };
    let mut want = Vec::new();
    want.extend(banner("Right Redzone"));
    want.extend([
        Exact(format!(
            "{rz:#x}-{rz:#x} @offset={}. First byte 0x42 instead of 0xbb",
            rz - base
        )),
        Exact(format!(
            "FIX {name}: Restoring Right Redzone {rz:#x}-{rz:#x}=0xbb"
        )),
    ]);
    want.extend(banner("Poison"));
    want.extend([
        Exact(format!(
            "{pz:#x}-{pz:#x} @offset={}. First byte 0x43 instead of 0x6b",
            pz - base
        )),
        Exact(format!("FIX {name}: Restoring Poison {pz:#x}-{pz:#x}=0x6b")),
        Prefix("Slab pfn ".into()),
        Prefix(format!("Object {o:#x} @offset={} fp=", o - base)),
        Exact(String::new()),
    ]);
    for (label, addr, len) in [
        ("Redzone  ", o - rlp, rlp),
        ("Object   ", o, os),
        ("Redzone  ", o + os, c.inuse() - os),
        ("Padding  ", o + pad_off, pad_len),
    ] {
        want.extend(dump_prefixes(label, addr, len).into_iter().map(Prefix));
    }
    let show = || format!("{log:#?}");
    for (i, w) in want.iter().enumerate() {
        let g = got
            .get(i)
            .unwrap_or_else(|| panic!("line {i} missing: {}", show()));
        match w {
            Exact(w) => assert_eq!(g, w, "line {i}: {}", show()),
            Prefix(w) => assert!(
                g.starts_with(w.as_str()),
                "line {i}: {g} vs {w}: {}",
                show()
            ),
        }
    }
    assert_eq!(got.len(), want.len(), "{}", show());
    // The trailer comes after the repairs: both bytes show restored.
    let text = log.join("\n");
    let rz_line = dump_lines(&text, "Redzone  ")
        .into_iter()
        .find(|l| l.contains(&format!("{rz:016x}: ")))
        .expect("right red zone dump");
    assert!(rz_line.contains(": bb bb"), "{rz_line}");
    let obj_line = dump_lines(&text, "Object   ")[0];
    assert!(obj_line.contains(": 6b 6b 6b 6b 6b 6b 6b"), "{obj_line}");
    // One report and one fix per range, as slub_kunit counts them.
    assert_eq!(c.errors() - e0, 4, "{}", show());
    assert_eq!(c.validate().errors, 0, "{:#?}", m.platform().take_log());
    c.free(NonNull::new(a).unwrap()).unwrap();
}

/// slab_debug=T: Linux's trace() prints `TRACE <cache> alloc|free 0x<obj>
/// inuse=<n> fp=0x<fp>` and, on a free only, the object's bytes
/// (print_section "Object ", all object_size bytes) as they are before the
/// free poisons them. kmem printed the TRACE line alone.
#[test]
fn trace_free_dumps_the_object() {
    for size in [40usize, 300] {
        let m = machine();
        let s = slab_with(&m, "FPT");
        let c = s
            .kmem_cache_create("zztrace", size, 0, SlabFlags::empty(), None)
            .unwrap();
        m.platform().take_log();
        let p = c.alloc(GFP_KERNEL).unwrap().as_ptr();
        let log = m.platform().take_log();
        assert_eq!(log.len(), 1, "{log:#?}");
        let alloc = format!("TRACE zztrace alloc {:#x} inuse=1 fp=", p as usize);
        assert!(log[0].starts_with(&alloc), "{log:#?}");
        assert_eq!(
            log[0].trim_end().lines().count(),
            1,
            "alloc dumps nothing: {log:#?}"
        );
        for i in 0..size {
            unsafe { *p.add(i) = b'a' + (i % 26) as u8 };
        }
        c.free(NonNull::new(p).unwrap()).unwrap();
        let log = m.platform().take_log();
        assert_eq!(log.len(), 1, "{log:#?}");
        let lines: Vec<&str> = log[0].lines().collect();
        let free = format!("TRACE zztrace free {:#x} inuse=1 fp=", p as usize);
        assert!(lines[0].starts_with(&free), "{log:#?}");
        let want = dump_prefixes("Object ", p as usize, size);
        assert_eq!(lines.len(), 1 + want.len(), "{log:#?}");
        for (g, w) in lines[1..].iter().zip(&want) {
            assert!(g.starts_with(w.as_str()), "{g} vs {w}");
        }
        assert!(
            lines[1].ends_with("61 62 63 64 65 66 67 68 69 6a 6b 6c 6d 6e 6f 70  abcdefghijklmnop"),
            "the bytes before the free poisons them: {}",
            lines[1]
        );
    }
}
