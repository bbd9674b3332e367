//! Two kmem CPUs in lockstep, for tests of bad input that races: the same
//! object freed, or the same range unmapped, by both CPUs at one instant.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

/// Runs `rounds` rounds on two threads that are kmem CPUs 0 and 1. Each
/// round CPU 0 runs `setup(round)` alone (it makes the object and publishes
/// it), then both threads pass a spin barrier and run `race(cpu, round)` at
/// once, then meet again before the next round. Returns how many `race`
/// calls returned true (the calls that succeeded). A thread that panics
/// makes the other fail too, after 20 s, instead of hanging the test.
pub fn lockstep(
    rounds: usize,
    setup: impl Fn(usize) + Sync,
    race: impl Fn(usize, usize) -> bool + Sync,
) -> usize {
    let arrived = AtomicUsize::new(0);
    let wins = AtomicUsize::new(0);
    let wait_for = |target: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while arrived.load(SeqCst) < target {
            assert!(
                Instant::now() < deadline,
                "the other CPU stopped (see its panic above)"
            );
            std::hint::spin_loop();
        }
    };
    std::thread::scope(|s| {
        for cpu in 0..2 {
            let (arrived, wins, wait_for, setup, race) =
                (&arrived, &wins, &wait_for, &setup, &race);
            s.spawn(move || {
                kmem_host::set_cpu(cpu);
                for round in 0..rounds {
                    if cpu == 0 {
                        setup(round);
                    }
                    arrived.fetch_add(1, SeqCst);
                    wait_for(4 * round + 2);
                    if race(cpu, round) {
                        wins.fetch_add(1, SeqCst);
                    }
                    arrived.fetch_add(1, SeqCst);
                    wait_for(4 * round + 4);
                }
            });
        }
    });
    wins.load(SeqCst)
}
