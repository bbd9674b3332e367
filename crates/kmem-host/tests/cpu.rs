//! Threads as CPUs: any number of threads map onto the CPUs, and tests can pin.

use kmem::platform::Platform;
use kmem_host::{cpu_slot, current_cpu, run_on_cpu, set_cpu, Machine, MachineConfig};
use std::collections::HashSet;
use std::sync::{Arc, Barrier};

#[test]
fn eight_threads_on_two_cpus() {
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                // Every thread is alive at once, so none can reuse another's slot.
                barrier.wait();
                (cpu_slot(), current_cpu(2), current_cpu(2))
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let slots: HashSet<_> = results.iter().map(|r| r.0).collect();
    assert_eq!(slots.len(), 8, "each thread has its own slot: {results:?}");
    for (slot, cpu, again) in results {
        assert!(cpu < 2, "cpu {cpu} out of range");
        assert_eq!(cpu, slot % 2);
        assert_eq!(cpu, again, "a thread stays on its CPU");
    }
}

#[test]
fn platform_cpu_id_follows_the_thread() {
    let m = Arc::new(
        Machine::new(MachineConfig {
            ram_bytes: 64 << 20,
            nr_cpus: 3,
            ..Default::default()
        })
        .unwrap(),
    );
    let p = m.platform();
    assert_eq!(p.nr_cpus(), 3);
    let ids: Vec<usize> = (0..9)
        .map(|_| {
            let m = m.clone();
            std::thread::spawn(move || {
                let id = m.platform().cpu_id();
                assert_eq!(id, current_cpu(3));
                id
            })
            .join()
            .unwrap()
        })
        .collect();
    assert!(ids.iter().all(|&c| c < 3), "{ids:?}");
    assert_eq!(run_on_cpu(2, || p.cpu_id()), 2);
    assert_eq!(run_on_cpu(5, || p.cpu_id()), 2, "CPU numbers wrap");
}

#[test]
fn run_on_cpu_pins_and_restores() {
    std::thread::spawn(|| {
        let home = cpu_slot();
        let inner = run_on_cpu(home + 1, || {
            assert_eq!(cpu_slot(), home + 1);
            assert_eq!(current_cpu(2), (home + 1) % 2);
            run_on_cpu(home + 7, cpu_slot)
        });
        assert_eq!(inner, home + 7);
        assert_eq!(cpu_slot(), home, "restored after nesting");

        // Restored on panic too.
        let r = std::panic::catch_unwind(|| run_on_cpu(home + 3, || panic!("boom")));
        assert!(r.is_err());
        assert_eq!(cpu_slot(), home, "restored after a panic");
    })
    .join()
    .unwrap();
}

#[test]
fn set_cpu_pins_for_good() {
    std::thread::spawn(|| {
        set_cpu(1);
        assert_eq!(current_cpu(2), 1);
        assert_eq!(current_cpu(4), 1);
        set_cpu(0);
        assert_eq!(current_cpu(2), 0);
        // run_on_cpu restores the pinned value, not a fresh slot.
        run_on_cpu(1, || assert_eq!(current_cpu(2), 1));
        assert_eq!(cpu_slot(), 0);
    })
    .join()
    .unwrap();
}
