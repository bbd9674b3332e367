//! `KmemGlobal` as this test binary's `#[global_allocator]`: the test
//! harness itself, its threads and every collection below run on kmem.
//! Checks that ordinary Rust allocations land in the machine's direct map,
//! that the bootstrap (building the machine from inside the first
//! allocation) went to the system allocator only a handful of times, that
//! alignment and realloc behave, and that the page allocator stays
//! consistent.

use kmem_host::global::KmemGlobal;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

#[global_allocator]
static KMEM: KmemGlobal = KmemGlobal::new();

#[test]
fn ordinary_allocations_are_kmem_objects() {
    assert!(KMEM.init_now());
    let b = Box::new(0xdead_beef_u64);
    assert!(KMEM.owns((&*b as *const u64).cast()));
    let s = String::from("hello from kmalloc-8");
    assert!(KMEM.owns(s.as_ptr()));
    let v: Vec<u32> = (0..100_000).collect();
    assert!(KMEM.owns(v.as_ptr().cast()));
    assert_eq!(
        v.iter().map(|&x| x as u64).sum::<u64>(),
        99_999 * 100_000 / 2
    );
    // The bootstrap: the machine's own bookkeeping, a handful of allocations.
    let st = KMEM.stats();
    assert!(st.nested < 100, "{st:?}");
    assert_eq!(st.failed, 0);
}

#[test]
fn collections_with_contents_checked() {
    let mut map: HashMap<String, Vec<u64>> = HashMap::new();
    let mut tree = BTreeMap::new();
    let mut queue = VecDeque::new();
    for i in 0..5000u64 {
        map.entry(format!("key-{}", i % 700)).or_default().push(i);
        tree.insert(i * 7919 % 10_007, i);
        queue.push_back(i.to_string());
        if queue.len() > 100 {
            queue.pop_front();
        }
    }
    assert_eq!(map.len(), 700);
    for (k, v) in &map {
        let r: u64 = k.strip_prefix("key-").unwrap().parse().unwrap();
        assert!(v.iter().all(|&i| i % 700 == r));
    }
    assert_eq!(tree.len(), 5000);
    assert!(tree.iter().all(|(&k, &v)| v * 7919 % 10_007 == k));
    assert_eq!(queue.front().map(String::as_str), Some("4900"));
}

#[test]
fn alignment_of_every_power_of_two_up_to_4k() {
    #[repr(align(4096))]
    struct Page([u8; 4096]);
    #[repr(align(64))]
    struct Line([u8; 64]);
    let page = Box::new(Page([3; 4096]));
    assert_eq!((&*page as *const Page as usize) % 4096, 0);
    assert!(page.0.iter().all(|&b| b == 3));
    let lines: Vec<Line> = (0..100).map(|i| Line([i; 64])).collect();
    assert_eq!(lines.as_ptr() as usize % 64, 0);
    assert!(lines.iter().enumerate().all(|(i, l)| l.0[63] == i as u8));
    let mut align = 1;
    while align <= 4096 {
        for size in [1, align, align + 8, 3 * align] {
            let l = std::alloc::Layout::from_size_align(size, align).unwrap();
            // SAFETY: non-zero size; freed below with the same layout.
            unsafe {
                let p = std::alloc::alloc(l);
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0, "{l:?}");
                assert!(KMEM.owns(p));
                p.write_bytes(0x5a, size);
                std::alloc::dealloc(p, l);
            }
        }
        align *= 2;
    }
}

#[test]
fn realloc_keeps_contents() {
    let mut v: Vec<u8> = Vec::new();
    for i in 0..300_000u32 {
        v.push((i % 251) as u8);
    }
    assert!(v.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    v.truncate(1000);
    v.shrink_to_fit();
    assert!(v.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    let mut s = String::new();
    for i in 0..10_000 {
        s.push_str(&i.to_string());
    }
    assert!(s.starts_with("0123456789101112"));
    assert!(s.ends_with("9999"));
    assert!(KMEM.stats().realloc_moved > 0);
}

#[test]
fn threads_allocate_and_free_each_others_data() {
    let shared: Arc<Vec<String>> = Arc::new((0..1000).map(|i| format!("item {i}")).collect());
    let handles: Vec<_> = (0..6)
        .map(|t| {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                let mut local: Vec<Box<[u64]>> = Vec::new();
                for i in 0..2000u64 {
                    local.push(vec![i ^ t; (i % 300) as usize + 1].into_boxed_slice());
                }
                assert!(shared[999].ends_with("999"));
                local
            })
        })
        .collect();
    // Dropped here, by the main thread: frees from another CPU.
    for (t, h) in handles.into_iter().enumerate() {
        let local = h.join().unwrap();
        for (i, b) in local.iter().enumerate() {
            assert!(b.iter().all(|&x| x == i as u64 ^ t as u64));
        }
    }
    let m = KMEM.machine().expect("built");
    assert!(m.pages().verify().is_ok());
    assert_eq!(KMEM.stats().bad_frees, 0);
}
