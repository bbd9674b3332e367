//! Random kmalloc / krealloc / kfree / kmem_cache sequences on a real hosted
//! machine, checked step by step against a shadow model of live objects.
//!
//! Every object is filled with a pattern through its real pointer and the
//! pattern is checked before it is freed or resized (and all objects every
//! few steps), so overlapping objects or a slab corrupting its own objects
//! show up as wrong bytes. New objects must not overlap live ones and must be
//! aligned as Linux guarantees; `__GFP_ZERO` memory must read zero; `ksize`
//! must give the class. Bad frees are mixed in (double free, interior
//! pointer, foreign address, wrong cache): each must be refused with the
//! right error and change nothing. Debug caches are validated along the way
//! and must report no error. At the end everything is freed, every cache
//! destroyed, the allocator dropped, and every page must be back.

mod proptest_cases;
use kmem::gfp::{Gfp, GFP_ATOMIC, GFP_KERNEL};
use kmem::slab::kmalloc::kmalloc_size_roundup;
use kmem::slab::{
    KmemCacheRef, SlabAllocator, SlabConfig, SlabFlags, SlabFreeError, ZERO_SIZE_PTR,
};
use kmem_host::{HostPlatform, Machine, MachineConfig};
use proptest::prelude::*;
use proptest::test_runner::Config;
use std::collections::BTreeMap;
use std::ptr::NonNull;

#[derive(Clone, Debug)]
enum Op {
    Kmalloc {
        size: usize,
        mask: u8,
        zero: bool,
    },
    Kfree {
        pick: usize,
    },
    Krealloc {
        pick: usize,
        size: usize,
        zero: bool,
    },
    Ksize {
        pick: usize,
    },
    CacheCreate {
        size: usize,
        kind: u8,
    },
    CacheAlloc {
        cache: usize,
        zero: bool,
    },
    CacheFree {
        pick: usize,
    },
    CacheDestroy {
        cache: usize,
    },
    Shrink {
        cache: usize,
    },
    Validate {
        cache: usize,
    },
    DoubleFree {
        pick: usize,
    },
    Interior {
        pick: usize,
        off: usize,
    },
    Foreign {
        kind: u8,
    },
    WrongCache {
        pick: usize,
        cache: usize,
    },
    Bulk {
        cache: usize,
        n: usize,
    },
}

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        6 => 0usize..=256,
        3 => 0usize..=8192,
        1 => 8193usize..=70_000,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (size(), 0u8..4, any::<bool>()).prop_map(|(size, mask, zero)| Op::Kmalloc { size, mask, zero }),
        8 => any::<usize>().prop_map(|pick| Op::Kfree { pick }),
        4 => (any::<usize>(), size(), any::<bool>()).prop_map(|(pick, size, zero)| Op::Krealloc { pick, size, zero }),
        1 => any::<usize>().prop_map(|pick| Op::Ksize { pick }),
        1 => (1usize..=600, 0u8..5).prop_map(|(size, kind)| Op::CacheCreate { size, kind }),
        6 => (any::<usize>(), any::<bool>()).prop_map(|(cache, zero)| Op::CacheAlloc { cache, zero }),
        5 => any::<usize>().prop_map(|pick| Op::CacheFree { pick }),
        1 => any::<usize>().prop_map(|cache| Op::CacheDestroy { cache }),
        1 => any::<usize>().prop_map(|cache| Op::Shrink { cache }),
        1 => any::<usize>().prop_map(|cache| Op::Validate { cache }),
        1 => any::<usize>().prop_map(|pick| Op::DoubleFree { pick }),
        1 => (any::<usize>(), 1usize..64).prop_map(|(pick, off)| Op::Interior { pick, off }),
        1 => (0u8..3).prop_map(|kind| Op::Foreign { kind }),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(pick, cache)| Op::WrongCache { pick, cache }),
        1 => (any::<usize>(), 1usize..40).prop_map(|(cache, n)| Op::Bulk { cache, n }),
    ]
}

const MASKS: [Gfp; 4] = [
    GFP_KERNEL,
    GFP_ATOMIC,
    GFP_KERNEL.union(Gfp::RECLAIMABLE),
    GFP_KERNEL.union(Gfp::ACCOUNT),
];

#[derive(Clone, Copy, Debug)]
struct Live {
    size: usize,
    tag: u8,
    /// Index into the caches vector, or None for kmalloc.
    cache: Option<usize>,
    /// Every allocation and resize of this object asked for zeroing.
    zero_chain: bool,
    /// Alignment of the object (of its class when it was allocated).
    align: usize,
}

fn pattern(tag: u8, i: usize) -> u8 {
    tag ^ (i as u8).wrapping_mul(31)
}

struct Model<'s> {
    slab: &'s SlabAllocator<'s, HostPlatform>,
    m: &'s Machine,
    live: BTreeMap<usize, Live>,
    caches: Vec<Option<(KmemCacheRef<'s, HostPlatform>, usize, bool)>>,
    freed: Vec<usize>,
    tag: u8,
    debug: bool,
}

impl<'s> Model<'s> {
    fn fill(&mut self, addr: usize, size: usize) -> u8 {
        self.tag = self.tag.wrapping_add(1);
        let t = self.tag;
        for i in 0..size {
            unsafe { ((addr + i) as *mut u8).write(pattern(t, i)) };
        }
        t
    }

    fn check(&self, addr: usize, l: &Live) {
        for i in 0..l.size {
            let b = unsafe { ((addr + i) as *const u8).read() };
            assert_eq!(
                b,
                pattern(l.tag, i),
                "object {addr:#x} byte {i} of {} corrupted",
                l.size
            );
        }
    }

    fn check_all(&self) {
        for (&a, l) in &self.live {
            self.check(a, l);
        }
    }

    fn add(&mut self, addr: usize, size: usize, cache: Option<usize>, zero: bool, align: usize) {
        assert!(addr > ZERO_SIZE_PTR);
        assert_eq!(addr % align, 0, "{addr:#x} not aligned to {align}");
        if zero {
            for i in 0..size {
                assert_eq!(
                    unsafe { ((addr + i) as *const u8).read() },
                    0,
                    "zeroed byte {i} of {addr:#x}"
                );
            }
        }
        if let Some((&a, l)) = self.live.range(..=addr).next_back() {
            assert!(
                a + l.size.max(1) <= addr,
                "{addr:#x} overlaps live {a:#x}+{}",
                l.size
            );
        }
        if let Some((&a, _)) = self.live.range(addr + 1..).next() {
            assert!(
                addr + size.max(1) <= a,
                "{addr:#x}+{size} overlaps live {a:#x}"
            );
        }
        let tag = self.fill(addr, size);
        self.live.insert(
            addr,
            Live {
                size,
                tag,
                cache,
                zero_chain: zero,
                align,
            },
        );
        self.freed.retain(|&f| f != addr);
    }

    fn pick(&self, pick: usize, want_cache: Option<bool>) -> Option<(usize, Live)> {
        let v: Vec<_> = self
            .live
            .iter()
            .filter(|(_, l)| match want_cache {
                None => true,
                Some(c) => l.cache.is_some() == c,
            })
            .collect();
        if v.is_empty() {
            None
        } else {
            let (a, l) = v[pick % v.len()];
            Some((*a, *l))
        }
    }

    fn live_cache(&self, pick: usize) -> Option<usize> {
        let v: Vec<usize> = (0..self.caches.len())
            .filter(|&i| self.caches[i].is_some())
            .collect();
        (!v.is_empty()).then(|| v[pick % v.len()])
    }

    fn forget(&mut self, addr: usize) {
        self.live.remove(&addr);
        self.freed.push(addr);
        if self.freed.len() > 64 {
            self.freed.remove(0);
        }
    }

    fn kmalloc_align(size: usize) -> usize {
        let r = kmalloc_size_roundup(size);
        if size > 8192 {
            4096
        } else {
            1 << r.trailing_zeros()
        }
    }

    fn step(&mut self, op: &Op) {
        let s = self.slab;
        match *op {
            Op::Kmalloc { size, mask, zero } => {
                let gfp = MASKS[mask as usize] | if zero { Gfp::ZERO } else { Gfp::empty() };
                let p = s.kmalloc(size, gfp).unwrap().as_ptr() as usize;
                if size == 0 {
                    assert_eq!(p, ZERO_SIZE_PTR);
                    return;
                }
                if !self.debug {
                    // (Under slab_debug, ksize hands the kmalloc red zone to
                    // the caller, as in Linux, which ends the zero chain.)
                    assert_eq!(s.ksize(p as *const u8), kmalloc_size_roundup(size));
                }
                self.add(p, size, None, zero, Self::kmalloc_align(size));
            }
            Op::Kfree { pick } => {
                if let Some((a, l)) = self.pick(pick, Some(false)) {
                    self.check(a, &l);
                    s.kfree(a as *const u8).unwrap();
                    self.forget(a);
                }
            }
            Op::Krealloc { pick, size, zero } => {
                let Some((a, l)) = self.pick(pick, Some(false)) else {
                    return;
                };
                self.check(a, &l);
                let gfp = GFP_KERNEL | if zero { Gfp::ZERO } else { Gfp::empty() };
                let p = s.krealloc(a as *const u8, size, gfp).unwrap().as_ptr() as usize;
                if size == 0 {
                    assert_eq!(p, ZERO_SIZE_PTR);
                    self.forget(a);
                    return;
                }
                let keep = l.size.min(size);
                for i in 0..keep {
                    let b = unsafe { ((p + i) as *const u8).read() };
                    assert_eq!(b, pattern(l.tag, i), "krealloc lost byte {i}");
                }
                let chain = zero && l.zero_chain;
                if chain {
                    for i in l.size..size {
                        assert_eq!(
                            unsafe { ((p + i) as *const u8).read() },
                            0,
                            "krealloc zero byte {i}"
                        );
                    }
                }
                let align = if p == a {
                    l.align
                } else {
                    assert!(size > l.size, "a shrink never moves");
                    Self::kmalloc_align(size)
                };
                self.live.remove(&a);
                if p != a {
                    self.freed.push(a);
                }
                assert_eq!(p % align, 0, "krealloc {a:#x}+{} -> {p:#x}+{size}", l.size);
                let tag = self.fill(p, size);
                self.live.insert(
                    p,
                    Live {
                        size,
                        tag,
                        cache: None,
                        zero_chain: chain,
                        align,
                    },
                );
            }
            Op::Ksize { pick } => {
                if let Some((a, l)) = self.pick(pick, Some(false)) {
                    assert!(s.ksize(a as *const u8) >= l.size);
                    self.live.get_mut(&a).unwrap().zero_chain = false;
                }
            }
            Op::CacheCreate { size, kind } => {
                if self.caches.iter().filter(|c| c.is_some()).count() >= 6 {
                    return;
                }
                let (flags, debug) = match kind {
                    0 => (SlabFlags::empty(), false),
                    1 => (SlabFlags::HWCACHE_ALIGN, false),
                    2 => (SlabFlags::DEBUG_DEFAULT, true),
                    3 => (SlabFlags::TYPESAFE_BY_RCU, false),
                    _ => (SlabFlags::RED_ZONE | SlabFlags::NO_MERGE, true),
                };
                let c = s
                    .kmem_cache_create("model_cache", size, 0, flags, None)
                    .unwrap();
                // Merged or not, the cache's objects hold the request and
                // fit the stride (a merge grows object_size, never past it).
                assert!(
                    size <= c.object_size() && c.object_size() <= c.slab_size(),
                    "object_size {} for a {size}-byte cache, stride {}",
                    c.object_size(),
                    c.slab_size()
                );
                self.caches.push(Some((c, size, debug)));
            }
            Op::CacheAlloc { cache, zero } => {
                let Some(ci) = self.live_cache(cache) else {
                    return;
                };
                let (c, size, _) = self.caches[ci].as_ref().unwrap();
                let size = *size;
                let p = if zero {
                    c.zalloc(GFP_KERNEL)
                } else {
                    c.alloc(GFP_KERNEL)
                }
                .unwrap()
                .as_ptr() as usize;
                if zero {
                    // kmem_cache_zalloc clears the cache's whole object_size:
                    // with merged caches of several sizes, more than this
                    // alias asked for (and dirtied by a larger alias before).
                    let n = c.object_size();
                    let bytes = unsafe { std::slice::from_raw_parts(p as *const u8, n) };
                    assert!(
                        bytes.iter().all(|&b| b == 0),
                        "zalloc of {n} bytes at {p:#x}"
                    );
                }
                let align = c.align();
                self.add(p, size, Some(ci), zero, align);
            }
            Op::CacheFree { pick } => {
                let Some((a, l)) = self.pick(pick, Some(true)) else {
                    return;
                };
                self.check(a, &l);
                let (c, _, _) = self.caches[l.cache.unwrap()].as_ref().unwrap();
                c.free(NonNull::new(a as *mut u8).unwrap()).unwrap();
                self.forget(a);
            }
            Op::CacheDestroy { cache } => {
                let Some(ci) = self.live_cache(cache) else {
                    return;
                };
                let objs: Vec<usize> = self
                    .live
                    .iter()
                    .filter(|(_, l)| l.cache == Some(ci))
                    .map(|(a, _)| *a)
                    .collect();
                let (c, _, _) = self.caches[ci].take().unwrap();
                for a in objs {
                    let l = self.live[&a];
                    self.check(a, &l);
                    c.free(NonNull::new(a as *mut u8).unwrap()).unwrap();
                    self.live.remove(&a);
                }
                // Freed addresses may now belong to anything: forget them.
                self.freed.clear();
                c.destroy().unwrap();
            }
            Op::Shrink { cache } => match self.live_cache(cache) {
                Some(ci) => {
                    self.caches[ci].as_ref().unwrap().0.shrink();
                }
                None => {
                    s.shrink_all();
                }
            },
            Op::Validate { cache } => {
                if let Some(ci) = self.live_cache(cache) {
                    let (c, _, debug) = self.caches[ci].as_ref().unwrap();
                    if *debug {
                        let r = c.validate();
                        assert_eq!(r.errors, 0, "{:#?}", self.m.platform().take_log());
                    }
                }
            }
            Op::DoubleFree { pick } => {
                if self.freed.is_empty() {
                    return;
                }
                let a = self.freed[pick % self.freed.len()];
                if self.live.contains_key(&a) {
                    return;
                }
                // The address may since have become part of another object
                // (an interior pointer now) or free memory: refused anyway.
                let r = s.kfree(a as *const u8);
                assert!(r.is_err(), "double free of {a:#x} accepted");
            }
            Op::Interior { pick, off } => {
                let Some((a, l)) = self.pick(pick, None) else {
                    return;
                };
                if l.size <= 1 {
                    return;
                }
                let off = 1 + off % (l.size - 1);
                let e = s.kfree((a + off) as *const u8).unwrap_err();
                assert!(
                    matches!(
                        e,
                        SlabFreeError::Interior { .. } | SlabFreeError::LargeInterior { .. }
                    ),
                    "{e:?}"
                );
            }
            Op::Foreign { kind } => {
                let local = 0u64;
                let addr = match kind {
                    0 => &local as *const u64 as usize,
                    1 => {
                        let pfn = self.m.pages().alloc_pages(GFP_KERNEL, 0).unwrap();
                        let va = self.m.pages().page_address(pfn).0;
                        let e = s.kfree(va as *const u8).unwrap_err();
                        assert!(matches!(e, SlabFreeError::NotSlab { .. }), "{e:?}");
                        self.m.pages().free_pages(pfn, 0).unwrap();
                        return;
                    }
                    _ => 0x7,
                };
                let r = s.kfree(addr as *const u8);
                if addr > ZERO_SIZE_PTR {
                    assert!(matches!(
                        r.unwrap_err(),
                        SlabFreeError::NotDirectMapped { .. }
                    ));
                } else {
                    r.unwrap();
                }
            }
            Op::WrongCache { pick, cache } => {
                let Some(ci) = self.live_cache(cache) else {
                    return;
                };
                let Some((a, l)) = self.pick(pick, None) else {
                    return;
                };
                if l.cache == Some(ci) {
                    return;
                }
                let (c, _, _) = self.caches[ci].as_ref().unwrap();
                // A merged cache is the same cache: nothing wrong then.
                if let Some(oc) = l.cache {
                    let (o, _, _) = self.caches[oc].as_ref().unwrap();
                    if std::ptr::eq::<kmem::slab::KmemCache<_>>(&**o, &**c) {
                        return;
                    }
                }
                let e = c.free(NonNull::new(a as *mut u8).unwrap()).unwrap_err();
                assert!(
                    matches!(
                        e,
                        SlabFreeError::WrongCache { .. } | SlabFreeError::LargeToCache { .. }
                    ),
                    "{e:?}"
                );
            }
            Op::Bulk { cache, n } => {
                let Some(ci) = self.live_cache(cache) else {
                    return;
                };
                let (c, size, _) = self.caches[ci].as_ref().unwrap();
                let size = *size;
                let align = c.align();
                let mut v = vec![std::ptr::null_mut(); n];
                c.alloc_bulk(GFP_KERNEL, &mut v).unwrap();
                for &p in &v {
                    self.add(p as usize, size, Some(ci), false, align);
                }
                if n % 2 == 0 {
                    for &p in &v {
                        let l = self.live[&(p as usize)];
                        self.check(p as usize, &l);
                    }
                    let (c, _, _) = self.caches[ci].as_ref().unwrap();
                    c.free_bulk(&v).unwrap();
                    for &p in &v {
                        self.forget(p as usize);
                    }
                }
            }
        }
    }

    fn finish(mut self) {
        self.check_all();
        let all: Vec<(usize, Live)> = self.live.iter().map(|(a, l)| (*a, *l)).collect();
        for (a, l) in all {
            match l.cache {
                None => self.slab.kfree(a as *const u8).unwrap(),
                Some(ci) => {
                    let (c, _, _) = self.caches[ci].as_ref().unwrap();
                    c.free(NonNull::new(a as *mut u8).unwrap()).unwrap();
                }
            }
        }
        self.live.clear();
        for c in self.caches.drain(..).flatten() {
            c.0.destroy().unwrap();
        }
    }
}

fn run(ops: &[Op], cfg: SlabConfig) {
    let m = Machine::new(MachineConfig {
        ram_bytes: 96 << 20,
        ..Default::default()
    })
    .unwrap();
    let base = m.pages().nr_free_pages_with_pcp();
    {
        let slab = SlabAllocator::new(m.pages(), cfg).unwrap();
        let mut model = Model {
            slab: &slab,
            m: &m,
            live: BTreeMap::new(),
            caches: Vec::new(),
            freed: Vec::new(),
            tag: 0,
            debug: cfg.slab_debug != kmem::slab::SlabDebug::OFF,
        };
        for (i, op) in ops.iter().enumerate() {
            model.step(op);
            if i % 25 == 24 {
                model.check_all();
            }
        }
        model.finish();
        assert!(slab.rcu_barrier());
        // Only refused frees were reported.
        let log = m.platform().take_log();
        for l in &log {
            let refused_free = l.contains("not freed") || l.contains("Object already free");
            assert!(
                refused_free
                    || (!l.contains("FIX") && !l.contains("overwritten") && !l.contains("corrupt")),
                "unexpected report: {l}"
            );
        }
    }
    assert_eq!(m.pages().nr_free_pages_with_pcp(), base, "pages leaked");
}

proptest! {
    #![proptest_config(Config { cases: proptest_cases::cases(48), max_shrink_iters: 2000, ..Config::default() })]

    #[test]
    fn model_hardened(ops in prop::collection::vec(op(), 1..400)) {
        run(&ops, SlabConfig::default());
    }

    #[test]
    fn model_plain_freelist_no_cpu_partial(ops in prop::collection::vec(op(), 1..300)) {
        // Without hardening double frees are only caught at the list head:
        // leave them out.
        let ops: Vec<Op> = ops.into_iter().filter(|o| !matches!(o, Op::DoubleFree { .. })).collect();
        run(&ops, SlabConfig { freelist_hardened: false, cpu_partial: false, ..Default::default() });
    }

    #[test]
    fn model_linux_hardening_without_the_mark(ops in prop::collection::vec(op(), 1..300)) {
        // Encoded free pointers without kmem's allocated mark (Linux's
        // CONFIG_SLAB_FREELIST_HARDENED): double frees are only caught at the
        // list head, so they are left out as for the plain free list.
        let ops: Vec<Op> = ops.into_iter().filter(|o| !matches!(o, Op::DoubleFree { .. })).collect();
        run(&ops, SlabConfig { double_free_mark: false, ..Default::default() });
    }

    #[test]
    fn model_slab_debug_everywhere(ops in prop::collection::vec(op(), 1..200)) {
        run(&ops, SlabConfig { slab_debug: kmem::slab::SlabDebug::new("FZPU"), ..Default::default() });
    }
}

#[test]
fn model_regressions() {
    // A one-byte object whose byte is written must not look free.
    let ops: Vec<Op> = (0..600)
        .flat_map(|i| {
            [
                Op::CacheCreate { size: 1, kind: 0 },
                Op::Bulk { cache: i, n: 20 },
                Op::CacheAlloc {
                    cache: i,
                    zero: false,
                },
                Op::CacheFree { pick: i },
            ]
        })
        .collect();
    run(&ops, SlabConfig::default());
    let dbg = SlabConfig {
        slab_debug: kmem::slab::SlabDebug::new("FZPU"),
        ..Default::default()
    };
    run(
        &[
            Op::Kmalloc {
                size: 1,
                mask: 0,
                zero: true,
            },
            Op::Krealloc {
                pick: 0,
                size: 1,
                zero: true,
            },
            Op::Kmalloc {
                size: 1,
                mask: 2,
                zero: false,
            },
            Op::Kfree {
                pick: 10416464284650343172,
            },
            Op::Krealloc {
                pick: 0,
                size: 2,
                zero: true,
            },
        ],
        dbg,
    );
}
