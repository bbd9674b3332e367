//! CPU claims: a thread that claims a CPU number is its exclusive owner
//! (`Platform::cpu_exclusive`) while it runs as that CPU, and nobody else is.
//!
//! The owner table is process-wide and the tests of this file run in parallel
//! threads, so each test claims its own CPU numbers (none claims the same
//! number as another), and every claim is made on a thread of its own.

use kmem::platform::Platform;
use kmem_host::cpu::{cpu_barrier, current_cpu_exclusive};
use kmem_host::{
    claim_cpu, cpu_claimed, cpu_slot, current_cpu, run_on_cpu, set_cpu, ClaimError, Machine,
    MachineConfig, MAX_CLAIMABLE_CPUS,
};
use std::sync::mpsc;
use std::thread;

fn machine(nr_cpus: usize) -> Machine {
    Machine::new(MachineConfig {
        ram_bytes: 16 << 20,
        nr_cpus,
        ..Default::default()
    })
    .unwrap()
}

/// Runs `f` on a fresh thread and propagates its panic.
fn on_thread<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    thread::spawn(f).join().unwrap()
}

#[test]
fn claim_makes_the_thread_exclusive_until_dropped() {
    let m = machine(8);
    on_thread(move || {
        let p = m.platform();
        set_cpu(3);
        assert!(!p.cpu_exclusive(), "pinning alone is not exclusive");
        assert!(!current_cpu_exclusive(8));
        assert!(!cpu_claimed(1));

        let claim = claim_cpu(1).expect("CPU 1 is free");
        assert_eq!(claim.cpu(), 1);
        assert_eq!(cpu_slot(), 1, "a claim pins the thread");
        assert_eq!(p.cpu_id(), 1);
        assert!(p.cpu_exclusive(), "the owner is exclusive on its CPU");
        assert!(current_cpu_exclusive(8));
        assert!(cpu_claimed(1));
        assert!(p.cpu_has_exclusive(1));
        assert!(!p.cpu_has_exclusive(3));

        drop(claim);
        assert!(!p.cpu_exclusive(), "not exclusive after the drop");
        assert!(!current_cpu_exclusive(8));
        assert!(!cpu_claimed(1));
        assert!(!p.cpu_has_exclusive(1));
        assert_eq!(cpu_slot(), 3, "the drop restores the previous slot");
        assert_eq!(p.cpu_id(), 3);
    });
}

#[test]
fn drop_restores_an_unpinned_threads_slot() {
    on_thread(|| {
        let home = cpu_slot();
        let claim = claim_cpu(101).unwrap();
        assert_eq!(cpu_slot(), 101);
        // A set_cpu made while claiming is undone too, like run_on_cpu.
        set_cpu(home + 5);
        drop(claim);
        assert_eq!(cpu_slot(), home);
        assert_eq!(current_cpu(4), home % 4);
    });
}

#[test]
fn claim_beyond_the_cpu_count_makes_nothing_exclusive() {
    let m = machine(2);
    on_thread(move || {
        let _claim = claim_cpu(105).unwrap();
        // Slot 105 runs as CPU 1 of 2, but CPU 105 does not exist there.
        assert_eq!(m.platform().cpu_id(), 1);
        assert!(!m.platform().cpu_exclusive());
        assert!(!current_cpu_exclusive(2));
        assert!(
            current_cpu_exclusive(106),
            "on a bigger machine it would be"
        );
        assert!(!m.platform().cpu_has_exclusive(1));
    });
}

#[test]
fn a_taken_cpu_cannot_be_claimed_until_released() {
    let (claimed_tx, claimed_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let owner = thread::spawn(move || {
        let claim = claim_cpu(110).unwrap();
        claimed_tx.send(()).unwrap();
        release_rx.recv().unwrap();
        drop(claim);
    });
    claimed_rx.recv().unwrap();
    assert!(cpu_claimed(110));
    on_thread(|| {
        set_cpu(42);
        assert_eq!(claim_cpu(110).unwrap_err(), ClaimError::Taken { cpu: 110 });
        assert_eq!(cpu_slot(), 42, "a failed claim does not pin");
    });
    release_tx.send(()).unwrap();
    owner.join().unwrap();
    assert!(!cpu_claimed(110), "released when the owner drops its claim");
    on_thread(|| {
        let claim = claim_cpu(110).expect("free again");
        assert!(cpu_claimed(110));
        drop(claim);
        assert!(!cpu_claimed(110));
    });
}

#[test]
fn one_claim_per_thread() {
    on_thread(|| {
        let first = claim_cpu(120).unwrap();
        assert_eq!(
            claim_cpu(121).unwrap_err(),
            ClaimError::AlreadyClaimed {
                cpu: 121,
                held: 120
            }
        );
        assert!(!cpu_claimed(121), "the refused claim took nothing");
        assert_eq!(cpu_slot(), 120, "and did not move the thread");
        assert_eq!(
            claim_cpu(120).unwrap_err(),
            ClaimError::AlreadyClaimed {
                cpu: 120,
                held: 120
            }
        );
        drop(first);
        let second = claim_cpu(121).expect("one claim at a time is fine");
        assert!(cpu_claimed(121));
        drop(second);
    });
}

#[test]
fn out_of_range_cpus_cannot_be_claimed() {
    on_thread(|| {
        let err = claim_cpu(MAX_CLAIMABLE_CPUS).unwrap_err();
        assert_eq!(
            err,
            ClaimError::OutOfRange {
                cpu: MAX_CLAIMABLE_CPUS,
                max: MAX_CLAIMABLE_CPUS
            }
        );
        assert_eq!(
            err.to_string(),
            format!(
                "CPU {MAX_CLAIMABLE_CPUS} cannot be claimed: only CPUs 0 to {} can",
                MAX_CLAIMABLE_CPUS - 1
            )
        );
        assert!(claim_cpu(usize::MAX - 1).is_err());
        assert!(!cpu_claimed(MAX_CLAIMABLE_CPUS));
        assert!(!cpu_claimed(usize::MAX));
        // The last claimable number works.
        let last = claim_cpu(MAX_CLAIMABLE_CPUS - 1).unwrap();
        assert!(cpu_claimed(MAX_CLAIMABLE_CPUS - 1));
        drop(last);
    });
}

#[test]
fn sharing_a_claimed_cpu_is_not_exclusive() {
    let m = machine(8);
    let (claimed_tx, claimed_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let owner_m = m.platform().clone();
    let owner = thread::spawn(move || {
        let claim = claim_cpu(5).unwrap();
        assert!(owner_m.cpu_exclusive());
        claimed_tx.send(()).unwrap();
        release_rx.recv().unwrap();
        assert!(owner_m.cpu_exclusive(), "still the owner");
        drop(claim);
    });
    claimed_rx.recv().unwrap();
    let p = m.platform().clone();
    on_thread(move || {
        set_cpu(5);
        assert_eq!(p.cpu_id(), 5);
        assert!(!p.cpu_exclusive(), "runs as CPU 5 without the claim");
        assert!(!current_cpu_exclusive(8));
        assert!(p.cpu_has_exclusive(5), "but sees that CPU 5 has an owner");
        // A slot that wraps onto CPU 5 is no owner either.
        set_cpu(13);
        assert_eq!(p.cpu_id(), 5);
        assert!(!p.cpu_exclusive());
        run_on_cpu(5, || assert!(!p.cpu_exclusive()));
    });
    release_tx.send(()).unwrap();
    owner.join().unwrap();
}

#[test]
fn the_owner_is_not_exclusive_on_other_cpus() {
    let m = machine(8);
    on_thread(move || {
        let p = m.platform();
        let claim = claim_cpu(6).unwrap();
        assert!(p.cpu_exclusive());
        run_on_cpu(2, || {
            assert_eq!(p.cpu_id(), 2);
            assert!(!p.cpu_exclusive(), "CPU 2 is not the claimed one");
            assert!(!current_cpu_exclusive(8));
        });
        assert_eq!(p.cpu_id(), 6);
        assert!(p.cpu_exclusive(), "exclusive again after run_on_cpu");
        // Wrapping onto the claimed CPU number does not count.
        run_on_cpu(14, || {
            assert_eq!(p.cpu_id(), 6);
            assert!(!p.cpu_exclusive());
        });
        // run_on_cpu on the claimed CPU itself keeps it.
        run_on_cpu(6, || assert!(p.cpu_exclusive()));
        set_cpu(7);
        assert!(!p.cpu_exclusive(), "pinned away with set_cpu");
        set_cpu(6);
        assert!(p.cpu_exclusive(), "and back");
        drop(claim);
        assert!(!p.cpu_exclusive());
    });
}

#[test]
fn cpu_barrier_works_with_owners() {
    let m = machine(8);
    // Before or after any claim, the barrier returns.
    cpu_barrier();
    m.platform().cpu_barrier();
    let (claimed_tx, claimed_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let owner = thread::spawn(move || {
        let claim = claim_cpu(7).unwrap();
        claimed_tx.send(()).unwrap();
        release_rx.recv().unwrap();
        drop(claim);
    });
    claimed_rx.recv().unwrap();
    assert!(m.platform().cpu_has_exclusive(7));
    for _ in 0..100 {
        cpu_barrier();
        m.platform().cpu_barrier();
    }
    release_tx.send(()).unwrap();
    owner.join().unwrap();
    m.platform().cpu_barrier();
}

#[test]
fn claim_errors_read_as_sentences() {
    assert_eq!(
        ClaimError::Taken { cpu: 3 }.to_string(),
        "CPU 3 is already claimed by another thread"
    );
    assert_eq!(
        ClaimError::AlreadyClaimed { cpu: 4, held: 2 }.to_string(),
        "cannot claim CPU 4: this thread already holds a claim on CPU 2, \
         and a thread can own only one CPU"
    );
    let e = ClaimError::Membarrier { errno: 38 }.to_string();
    assert!(e.contains("membarrier"), "{e}");
    assert!(
        e.contains(&std::io::Error::from_raw_os_error(38).to_string()),
        "{e}"
    );
    let boxed: Box<dyn std::error::Error> = Box::new(ClaimError::Taken { cpu: 1 });
    assert!(boxed.source().is_none());
}
