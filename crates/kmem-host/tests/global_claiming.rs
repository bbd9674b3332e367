//! `KmemGlobal::claiming_cpus` as this test binary's `#[global_allocator]`:
//! every thread claims a CPU of the machine at its first allocation or free
//! and gives it back when it exits; threads that find none free keep working
//! unclaimed. One test, so that the harness runs no other thread meanwhile
//! (the harness's main thread, and the test's own thread when the harness
//! runs it on a thread of its own, hold CPUs throughout).

use kmem_host::cpu::current_owned_cpu;
use kmem_host::cpu_claimed;
use kmem_host::global::KmemGlobal;
use std::sync::{mpsc, Barrier};
use std::thread;

const CPUS: usize = 4;

#[global_allocator]
static KMEM: KmemGlobal = KmemGlobal::with_machine(256 << 20, CPUS).claiming_cpus();

/// A vector of `n` words that hold their index plus `tag`, checked.
fn filled(n: u64, tag: u64) -> Vec<u64> {
    let v: Vec<u64> = (0..n).map(|i| i + tag).collect();
    assert!(KMEM.owns(v.as_ptr().cast()));
    v
}

fn check(v: &[u64], tag: u64) {
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64 + tag));
}

#[test]
fn threads_claim_cpus_while_they_live_and_the_rest_share() {
    assert!(KMEM.init_now());
    drop(filled(10, 0));
    // This thread allocated: it owns a CPU now.
    let mine = current_owned_cpu();
    assert!(mine < CPUS, "the test thread claimed no CPU");
    assert!(cpu_claimed(mine));
    let base = KMEM.stats();
    assert!(base.claims >= 1, "{base:?}");

    // A thread claims at its first allocation and gives the CPU back at its
    // exit.
    let theirs = thread::spawn(|| {
        check(&filled(1000, 7), 7);
        let cpu = current_owned_cpu();
        assert!(cpu < CPUS && cpu_claimed(cpu));
        cpu
    })
    .join()
    .unwrap();
    assert_ne!(theirs, mine);
    assert!(
        !cpu_claimed(theirs),
        "CPU {theirs} still claimed after exit"
    );
    assert_eq!(KMEM.stats().claims, base.claims + 1);

    // Six threads at once: as many claim as CPUs are free (two or three),
    // the rest share, and everyone's objects survive being freed by another
    // thread.
    let free = (0..CPUS).filter(|&c| !cpu_claimed(c)).count();
    assert!((2..=3).contains(&free), "{free} CPUs free");
    let before = KMEM.stats();
    let barrier = Barrier::new(6);
    let (tx, rx) = mpsc::channel::<(u64, Vec<u64>)>();
    let owned: Vec<usize> = thread::scope(|s| {
        let handles: Vec<_> = (0..6u64)
            .map(|t| {
                let (barrier, tx) = (&barrier, tx.clone());
                s.spawn(move || {
                    let v = filled(2000 + t, 100 * t);
                    barrier.wait();
                    let cpu = current_owned_cpu();
                    for round in 0..50 {
                        let w = filled(16 + round, t);
                        check(&w, t);
                        tx.send((100 * t, filled(64, 100 * t))).unwrap();
                    }
                    check(&v, 100 * t);
                    cpu
                })
            })
            .collect();
        drop(tx);
        // Frees on this thread of what the six allocated.
        for (tag, v) in rx {
            check(&v, tag);
        }
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let claimed: Vec<usize> = owned.iter().copied().filter(|&c| c < CPUS).collect();
    assert_eq!(claimed.len(), free, "owned CPUs {owned:?}");
    assert!(claimed.iter().all(|&c| c != mine));
    let after = KMEM.stats();
    assert_eq!(after.claims, before.claims + free, "{after:?}");
    assert_eq!(
        after.claims_missed,
        before.claims_missed + 6 - free,
        "{after:?}"
    );
    assert!(claimed.iter().all(|&c| !cpu_claimed(c)));
    assert_eq!(after.failed, 0);
    assert_eq!(after.bad_frees, 0);

    let machine = KMEM.machine().expect("built");
    machine.pages().verify().expect("page allocator consistent");
}
