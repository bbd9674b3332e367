//! `VmallocHeap` and `KvmallocHeap` (Rust for Linux's `Vmalloc` and
//! `KVmalloc` as allocator-api2 allocators): collections in them, the
//! alignment rules, zeroing on grow, kvmalloc's move from kmalloc to
//! vmalloc, and random sequences over both heaps against a shadow model.

mod proptest_cases;
use allocator_api2::alloc::{Allocator, Layout};
use allocator_api2::vec::Vec as AVec;
use kmem::addr::PAGE_SIZE;
use kmem::slab::{SlabAllocator, SlabConfig};
use kmem_host::vheap::{KvmallocHeap, VmallocHeap};
use kmem_host::{vmap, HostPlatform, HostVmalloc, Machine};
use proptest::prelude::*;
use std::collections::HashSet;
use std::ptr::NonNull;

mod global_common;
use global_common::{check, fill};

const MIB: usize = 1 << 20;

fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).unwrap()
}

/// A machine with a slab allocator and a vmalloc.
struct Setup {
    m: Box<Machine>,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            m: Box::new(Machine::default_machine().unwrap()),
        }
    }

    fn slab(&self) -> SlabAllocator<'_, HostPlatform> {
        SlabAllocator::new(self.m.pages(), SlabConfig::default()).unwrap()
    }

    fn vm(&self) -> HostVmalloc<'_> {
        vmap::vmalloc(&self.m).unwrap()
    }
}

fn areas(vm: &HostVmalloc<'_>) -> usize {
    let mut n = 0;
    vm.for_each_area(|_| n += 1);
    n
}

#[test]
fn a_vvec_holds_megabytes_in_one_area() {
    let s = Setup::new();
    let vm = s.vm();
    let h = VmallocHeap::new(&vm);
    let mut v: AVec<u64, _> = AVec::new_in(h);
    for i in 0..(2 * MIB as u64) {
        v.push(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    }
    let p = v.as_ptr().cast::<u8>();
    assert!(vm.is_vmalloc_addr(p));
    assert!(vm.find_vm_area(p).unwrap().requested_size >= 16 * MIB);
    assert!(v
        .iter()
        .enumerate()
        .all(|(i, &x)| x == (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    v.truncate(1000);
    v.shrink_to_fit();
    assert_eq!(v.as_ptr().cast::<u8>(), p, "vrealloc shrinks in place");
    assert_eq!(v[999], 999u64.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    drop(v);
    assert_eq!(areas(&vm), 0);
    assert!(s.m.pages().verify().is_ok());
}

#[test]
fn vmalloc_heap_alignment_and_zeroing() {
    let s = Setup::new();
    let vm = s.vm();
    let h = VmallocHeap::new(&vm);

    let l = layout(5 * MIB, 2 * MIB);
    let p = h.allocate(l).unwrap().cast::<u8>();
    assert_eq!(p.as_ptr() as usize % (2 * MIB), 0);
    // SAFETY: allocated above with l.
    unsafe { h.deallocate(p, l) };

    // grow_zeroed zeroes the new bytes even where the area's page held
    // data: fill a page, shrink to 100 bytes (the page stays), grow back.
    let page = layout(PAGE_SIZE, 8);
    let p = h.allocate(page).unwrap().cast::<u8>();
    // SAFETY: a page of the area.
    unsafe { p.as_ptr().write_bytes(0xa5, PAGE_SIZE) };
    let small = layout(100, 8);
    // SAFETY: live for page; 100 <= PAGE_SIZE.
    let q = unsafe { h.shrink(p, page, small) }.unwrap().cast::<u8>();
    assert_eq!(q, p, "in place");
    // SAFETY: live for small.
    let r = unsafe { h.grow_zeroed(q, small, page) }
        .unwrap()
        .cast::<u8>();
    // SAFETY: live for page.
    let bytes = unsafe { std::slice::from_raw_parts(r.as_ptr(), PAGE_SIZE) };
    assert!(bytes[..100].iter().all(|&b| b == 0xa5), "kept");
    assert!(bytes[100..].iter().all(|&b| b == 0), "zeroed");
    // SAFETY: live for page.
    unsafe { h.deallocate(r, page) };

    // allocate_zeroed on frames that held data.
    let l = layout(3 * MIB, 8);
    let d = h.allocate(l).unwrap().cast::<u8>();
    // SAFETY: live for l.
    unsafe { d.as_ptr().write_bytes(0x5a, l.size()) };
    let dirty: HashSet<u64> = (0..l.size() / PAGE_SIZE)
        .map(|i| {
            vm.vmalloc_to_pfn(d.as_ptr().wrapping_add(i * PAGE_SIZE))
                .unwrap()
        })
        .collect();
    // SAFETY: live for l.
    unsafe { h.deallocate(d, l) };
    let z = h.allocate_zeroed(l).unwrap().cast::<u8>();
    let reused = (0..l.size() / PAGE_SIZE)
        .filter(|i| {
            dirty.contains(
                &vm.vmalloc_to_pfn(z.as_ptr().wrapping_add(i * PAGE_SIZE))
                    .unwrap(),
            )
        })
        .count();
    assert!(reused > 0, "the zeroed area reuses dirtied frames");
    // SAFETY: live for l.
    assert!(unsafe { std::slice::from_raw_parts(z.as_ptr(), l.size()) }
        .iter()
        .all(|&b| b == 0));
    // SAFETY: live for l.
    unsafe { h.deallocate(z, l) };

    // Growing to an alignment the area lacks moves it.
    let l = layout(8192, PAGE_SIZE);
    let mut held = Vec::new();
    let p = loop {
        let p = h.allocate(l).unwrap().cast::<u8>();
        if !(p.as_ptr() as usize).is_multiple_of(2 * MIB) {
            break p;
        }
        held.push(p);
    };
    fill(p.as_ptr(), l.size(), 7);
    let big = layout(16384, 2 * MIB);
    // SAFETY: live for l; big is larger.
    let q = unsafe { h.grow(p, l, big) }.unwrap().cast::<u8>();
    assert_eq!(q.as_ptr() as usize % (2 * MIB), 0);
    check(q.as_ptr(), l.size(), 7);
    // SAFETY: live for big; the others for l.
    unsafe {
        h.deallocate(q, big);
        for p in held {
            h.deallocate(p, l);
        }
    }
    assert_eq!(areas(&vm), 0);
    assert!(s.m.pages().verify().is_ok());
}

#[test]
fn a_kvvec_moves_from_kmalloc_to_vmalloc() {
    let s = Setup::new();
    let (slab, vm) = (s.slab(), s.vm());
    let h = KvmallocHeap::new(&slab, &vm);
    let mut v: AVec<u8, _> = AVec::new_in(h);
    v.extend((0..100u32).map(|i| i as u8));
    let small = v.as_ptr();
    assert!(!vm.is_vmalloc_addr(small), "kmalloc first");
    assert_eq!(slab.ksize(small), 128);
    v.extend((100..6 * MIB as u32).map(|i| (i * 7) as u8));
    assert!(vm.is_vmalloc_addr(v.as_ptr()), "above 4 MiB: vmalloc");
    assert!(v.iter().enumerate().take(100).all(|(i, &b)| b == i as u8));
    assert!(v
        .iter()
        .enumerate()
        .skip(100)
        .all(|(i, &b)| b == (i as u32 * 7) as u8));
    let big = v.as_ptr();
    v.truncate(1000);
    v.shrink_to_fit();
    assert_eq!(v.as_ptr(), big, "kvrealloc shrinks a vmalloc area in place");
    drop(v);
    assert_eq!(areas(&vm), 0);

    let mut map = hashbrown::HashMap::new_in(h);
    for i in 0..300_000u32 {
        map.insert(i, i ^ 0x5555);
    }
    assert!((0..300_000u32).all(|i| map[&i] == i ^ 0x5555));
    drop(map);
    assert_eq!(areas(&vm), 0);
    assert!(s.m.pages().verify().is_ok());
}

#[test]
fn kvmalloc_alignment_rules() {
    let s = Setup::new();
    let (slab, vm) = (s.slab(), s.vm());
    let h = KvmallocHeap::new(&slab, &vm);
    assert_eq!(KvmallocHeap::request(layout(24, 8)), Some(24));
    assert_eq!(KvmallocHeap::request(layout(100, 64)), Some(128));
    assert_eq!(KvmallocHeap::request(layout(1, PAGE_SIZE)), Some(PAGE_SIZE));
    assert_eq!(KvmallocHeap::request(layout(1, 2 * PAGE_SIZE)), None);
    for size in [1, 100, 3000, 5000, 70_000, 5 * MIB] {
        for align in [1, 8, 64, 512, PAGE_SIZE] {
            let l = layout(size, align);
            let p = h.allocate(l).unwrap().cast::<u8>();
            assert_eq!(p.as_ptr() as usize % align, 0, "{l:?}");
            assert_eq!(vm.is_vmalloc_addr(p.as_ptr()), size > 4 * MIB, "{l:?}");
            fill(p.as_ptr(), size, size ^ align);
            check(p.as_ptr(), size, size ^ align);
            // SAFETY: allocated above with l.
            unsafe { h.deallocate(p, l) };
        }
    }
    assert!(
        h.allocate(layout(100, 2 * PAGE_SIZE)).is_err(),
        "above a page"
    );
    let z = h.allocate(layout(0, 256)).unwrap();
    assert_eq!(z.len(), 0);
    assert_eq!(z.cast::<u8>().as_ptr() as usize % 256, 0);
    // SAFETY: zero-sized, from this handle.
    unsafe { h.deallocate(z.cast(), layout(0, 256)) };
    assert_eq!(areas(&vm), 0);
    assert!(s.m.pages().verify().is_ok());
}

/// A resize may ask for a larger alignment (allocator_api2's grow and
/// shrink allow it). KvmallocHeap passed such a shrink to kvrealloc, which
/// keeps a kmalloc object whose class still holds the new size where it
/// is: kmalloc-96 objects are only 32-aligned and kmalloc-192 ones
/// 64-aligned, so the block came back misaligned (half the objects, every
/// run).
#[test]
fn kvmalloc_resize_to_a_larger_alignment_moves_the_block() {
    let s = Setup::new();
    let (slab, vm) = (s.slab(), s.vm());
    let h = KvmallocHeap::new(&slab, &vm);
    let cases = [
        (layout(96, 8), layout(64, 64), false),
        (layout(192, 8), layout(128, 128), false),
        (layout(96, 8), layout(96, 64), false),
        (layout(96, 8), layout(100, 64), true),
    ];
    for (old, new, grow) in cases {
        // Eight objects side by side: every offset in a 64-byte line.
        let objs: Vec<_> = (0..8)
            .map(|_| h.allocate(old).unwrap().cast::<u8>())
            .collect();
        for (round, p) in objs.into_iter().enumerate() {
            fill(p.as_ptr(), old.size(), round);
            // SAFETY: live for old; the sizes fit grow or shrink.
            let q = unsafe {
                if grow {
                    h.grow_zeroed(p, old, new)
                } else {
                    h.shrink(p, old, new)
                }
            }
            .unwrap()
            .cast::<u8>();
            assert_eq!(q.as_ptr() as usize % new.align(), 0, "{old:?} -> {new:?}");
            check(q.as_ptr(), old.size().min(new.size()), round);
            if grow {
                // SAFETY: live for new.
                let tail = unsafe {
                    std::slice::from_raw_parts(q.as_ptr().add(old.size()), new.size() - old.size())
                };
                assert!(tail.iter().all(|&b| b == 0));
            }
            // SAFETY: live for new.
            unsafe { h.deallocate(q, new) };
        }
    }
    assert_eq!(areas(&vm), 0);
    assert!(s.m.pages().verify().is_ok());
    assert_eq!(
        s.m.platform().log_len(),
        0,
        "{:?}",
        s.m.platform().take_log()
    );
}

/// One step of the random sequences.
#[derive(Clone, Debug)]
enum Op {
    /// Allocate `size` (an index into SIZES' ranges) with alignment
    /// ALIGNS[align] on heap `kv` (else vmalloc), zeroed or not.
    Alloc {
        kv: bool,
        size: usize,
        align: usize,
        zero: bool,
    },
    /// Resize live block `idx % live` to `size` with alignment
    /// ALIGNS[align] (the Allocator trait lets a resize change it),
    /// zeroing new bytes or not.
    Resize {
        idx: usize,
        size: usize,
        align: usize,
        zero: bool,
    },
    /// Free live block `idx % live`.
    Free { idx: usize },
}

const ALIGNS: [usize; 4] = [1, 8, 64, PAGE_SIZE];

fn size_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 1usize..4096,
        2 => 4096usize..200_000,
        1 => (4 * MIB - 1000)..(6 * MIB),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (any::<bool>(), size_strategy(), 0..ALIGNS.len(), any::<bool>())
            .prop_map(|(kv, size, align, zero)| Op::Alloc { kv, size, align, zero }),
        3 => (any::<usize>(), size_strategy(), 0..ALIGNS.len(), any::<bool>())
            .prop_map(|(idx, size, align, zero)| Op::Resize { idx, size, align, zero }),
        2 => any::<usize>().prop_map(|idx| Op::Free { idx }),
    ]
}

/// A live block in the shadow model: where, its layout, which heap, and
/// what its bytes must be: the pattern of `seed` in `..valid`, zeros in
/// `zeros` (after `valid`), anything elsewhere.
struct Live {
    p: NonNull<u8>,
    l: Layout,
    kv: bool,
    seed: usize,
    valid: usize,
    zeros: std::ops::Range<usize>,
}

fn expect(b: &Live) {
    check(b.p.as_ptr(), b.valid, b.seed);
    // SAFETY: live for b.l; the range lies inside it.
    let z = unsafe { std::slice::from_raw_parts(b.p.as_ptr().add(b.zeros.start), b.zeros.len()) };
    assert!(
        z.iter().all(|&x| x == 0),
        "zeroed bytes {:?} of block {}",
        b.zeros,
        b.seed
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: proptest_cases::cases(24), ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_against_a_shadow_model(ops in prop::collection::vec(op_strategy(), 1..40)) {
        let s = Setup::new();
        let (slab, vm) = (s.slab(), s.vm());
        let kvh = KvmallocHeap::new(&slab, &vm);
        let vmh = VmallocHeap::new(&vm);
        let mut live: Vec<Live> = Vec::new();
        for (n, op) in ops.into_iter().enumerate() {
            match op {
                Op::Alloc { kv, size, align, zero } => {
                    let l = layout(size, ALIGNS[align]);
                    let r = if kv {
                        if zero { kvh.allocate_zeroed(l) } else { kvh.allocate(l) }
                    } else if zero {
                        vmh.allocate_zeroed(l)
                    } else {
                        vmh.allocate(l)
                    };
                    let p = r.expect("the machine has room").cast::<u8>();
                    prop_assert_eq!(p.as_ptr() as usize % l.align(), 0);
                    let b = Live { p, l, kv, seed: n, valid: 0, zeros: 0..if zero { size } else { 0 } };
                    expect(&b);
                    // Half of the block gets the pattern, the rest stays as is.
                    fill(p.as_ptr(), size / 2, n);
                    let zeros = size / 2..b.zeros.end.max(size / 2);
                    live.push(Live { valid: size / 2, zeros, ..b });
                }
                Op::Resize { idx, size, align, zero } if !live.is_empty() => {
                    let i = idx % live.len();
                    let b = &mut live[i];
                    let new = layout(size, ALIGNS[align]);
                    // SAFETY: live for b.l; grow or shrink by the sizes.
                    let r = unsafe {
                        match (b.kv, size >= b.l.size(), zero) {
                            (true, true, false) => kvh.grow(b.p, b.l, new),
                            (true, true, true) => kvh.grow_zeroed(b.p, b.l, new),
                            (true, false, _) => kvh.shrink(b.p, b.l, new),
                            (false, true, false) => vmh.grow(b.p, b.l, new),
                            (false, true, true) => vmh.grow_zeroed(b.p, b.l, new),
                            (false, false, _) => vmh.shrink(b.p, b.l, new),
                        }
                    };
                    let q = r.expect("the machine has room").cast::<u8>();
                    prop_assert_eq!(q.as_ptr() as usize % new.align(), 0);
                    let old = b.l.size();
                    b.p = q;
                    b.valid = b.valid.min(size);
                    let end = b.zeros.end.min(size);
                    b.zeros = b.zeros.start.min(end)..end;
                    if zero && size > old {
                        // The new bytes are zero; the known zeros join them
                        // only if they reached the old end.
                        let start = if b.zeros.end == old && !b.zeros.is_empty() { b.zeros.start } else { old };
                        b.zeros = start..size;
                    }
                    b.l = new;
                    expect(b);
                }
                Op::Free { idx } if !live.is_empty() => {
                    let b = live.swap_remove(idx % live.len());
                    expect(&b);
                    // SAFETY: live for b.l.
                    unsafe {
                        if b.kv { kvh.deallocate(b.p, b.l) } else { vmh.deallocate(b.p, b.l) }
                    }
                }
                _ => {}
            }
            // Every vmalloc-heap block is an area; no two blocks overlap.
            for b in &live {
                if !b.kv {
                    prop_assert!(vm.is_vmalloc_addr(b.p.as_ptr()));
                }
            }
            let mut spans: Vec<(usize, usize)> = live
                .iter()
                .map(|b| (b.p.as_ptr() as usize, b.p.as_ptr() as usize + b.l.size()))
                .collect();
            spans.sort_unstable();
            prop_assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0));
        }
        for b in live.drain(..) {
            expect(&b);
            // SAFETY: live for b.l.
            unsafe {
                if b.kv { kvh.deallocate(b.p, b.l) } else { vmh.deallocate(b.p, b.l) }
            }
        }
        prop_assert_eq!(areas(&vm), 0);
        prop_assert!(s.m.pages().verify().is_ok());
        prop_assert_eq!(s.m.platform().log_len(), 0, "{:?}", s.m.platform().take_log());
    }
}
