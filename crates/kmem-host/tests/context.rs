//! Context guards: nesting, exact restore, per-thread isolation, SpinLock.

use kmem::context::{ContextKind, ExecContext};
use kmem_host::{
    current_context, enter, in_atomic, irq, local_bh_disable, local_irq_disable, nmi,
    preempt_disable, rcu_read_lock, softirq, spin_lock, spin_lock_irqsave, SpinLock,
};
use std::sync::mpsc;

const P: ExecContext = ExecContext::PROCESS;

/// Runs `f` on a fresh thread, so a failed test cannot leave context behind.
fn fresh<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    std::thread::spawn(f).join().unwrap()
}

#[test]
fn nested_guards_set_fields_and_restore_exactly() {
    fresh(|| {
        assert_eq!(current_context(), P);
        assert!(!in_atomic());

        let rcu = rcu_read_lock();
        let c1 = ExecContext { rcu_depth: 1, ..P };
        assert_eq!(current_context(), c1);

        let lock = spin_lock();
        let c2 = ExecContext {
            preempt: 1,
            spinlocks: 1,
            ..c1
        };
        assert_eq!(current_context(), c2);

        let hard = irq();
        let c3 = ExecContext {
            hardirq: 1,
            irqs_disabled: true,
            ..c2
        };
        assert_eq!(current_context(), c3);
        assert_eq!(current_context().kind(), ContextKind::HardIrq);
        assert!(in_atomic());

        drop(hard);
        assert_eq!(current_context(), c2);
        drop(lock);
        assert_eq!(current_context(), c1);
        drop(rcu);
        assert_eq!(current_context(), P);
    });
}

#[test]
fn every_guard_changes_what_it_says() {
    fresh(|| {
        let cases: [(fn() -> kmem_host::ContextGuard, ExecContext); 8] = [
            (
                irq,
                ExecContext {
                    hardirq: 1,
                    irqs_disabled: true,
                    ..P
                },
            ),
            (softirq, ExecContext { softirq: 1, ..P }),
            (
                nmi,
                ExecContext {
                    nmi: 1,
                    hardirq: 1,
                    irqs_disabled: true,
                    ..P
                },
            ),
            (preempt_disable, ExecContext { preempt: 1, ..P }),
            (
                local_irq_disable,
                ExecContext {
                    irqs_disabled: true,
                    ..P
                },
            ),
            (
                local_bh_disable,
                ExecContext {
                    bh_disabled: 1,
                    ..P
                },
            ),
            (rcu_read_lock, ExecContext { rcu_depth: 1, ..P }),
            (
                spin_lock,
                ExecContext {
                    preempt: 1,
                    spinlocks: 1,
                    ..P
                },
            ),
        ];
        for (enter_fn, expected) in cases {
            let g = enter_fn();
            assert_eq!(current_context(), expected);
            assert!(in_atomic(), "{expected:?} is atomic");
            drop(g);
            assert_eq!(current_context(), P);
        }
    });
}

#[test]
fn same_guard_nests_and_irq_flag_is_saved() {
    fresh(|| {
        let a = preempt_disable();
        let b = preempt_disable();
        assert_eq!(current_context().preempt, 2);
        drop(b);
        assert_eq!(current_context().preempt, 1);
        drop(a);

        // IRQs were already off when the IRQ entered: they stay off after it.
        let off = local_irq_disable();
        let h = irq();
        drop(h);
        assert_eq!(
            current_context(),
            ExecContext {
                irqs_disabled: true,
                ..P
            }
        );
        let s = spin_lock_irqsave();
        drop(s);
        assert!(current_context().irqs_disabled);
        drop(off);
        assert_eq!(current_context(), P);
    });
}

#[test]
fn counters_survive_out_of_order_drops() {
    fresh(|| {
        let a = spin_lock();
        let b = rcu_read_lock();
        drop(a);
        assert_eq!(current_context(), ExecContext { rcu_depth: 1, ..P });
        drop(b);
        assert_eq!(current_context(), P);
    });
}

#[test]
fn enter_replaces_and_restores_the_whole_context() {
    fresh(|| {
        let _bh = local_bh_disable();
        let before = current_context();
        let trace_ctx = ExecContext {
            softirq: 1,
            preempt: 2,
            irqs_disabled: true,
            ..P
        };
        let g = enter(trace_ctx);
        assert_eq!(current_context(), trace_ctx);
        {
            let _h = irq();
            assert_eq!(current_context().hardirq, 1);
        }
        assert_eq!(current_context(), trace_ctx);
        drop(g);
        assert_eq!(current_context(), before);
    });
}

#[test]
fn a_guard_on_one_thread_does_not_change_another() {
    let (entered_tx, entered_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let other = std::thread::spawn(move || {
        let _g = irq();
        let _l = spin_lock();
        entered_tx.send(current_context()).unwrap();
        done_rx.recv().unwrap();
    });
    let theirs = entered_rx.recv().unwrap();
    assert_eq!(theirs.hardirq, 1);
    // While the other thread sits in hard IRQ with a lock held, this one is
    // still in plain process context.
    let mine = fresh(current_context);
    assert_eq!(mine, P);
    let _p = preempt_disable();
    assert_eq!(current_context(), ExecContext { preempt: 1, ..P });
    done_tx.send(()).unwrap();
    other.join().unwrap();
}

#[test]
fn spinlock_excludes_and_marks_the_context() {
    let lock = std::sync::Arc::new(SpinLock::new(0u64));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let lock = lock.clone();
            std::thread::spawn(move || {
                for _ in 0..10_000 {
                    let mut g = lock.lock();
                    assert_eq!(
                        current_context(),
                        ExecContext {
                            preempt: 1,
                            spinlocks: 1,
                            ..P
                        }
                    );
                    // A non-atomic read-modify-write: lost updates show up if
                    // the lock does not exclude.
                    let v = *g;
                    std::hint::black_box(());
                    *g = v + 1;
                }
                assert_eq!(current_context(), P);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(*lock.lock(), 40_000);
    assert_eq!(current_context(), P);

    fresh(|| {
        let lock = SpinLock::new(());
        let g = lock.lock_irqsave();
        assert!(current_context().irqs_disabled);
        assert!(lock.is_locked());
        assert!(lock.try_lock().is_none());
        assert_eq!(
            current_context(),
            ExecContext {
                preempt: 1,
                spinlocks: 1,
                irqs_disabled: true,
                ..P
            }
        );
        drop(g);
        assert!(!lock.is_locked());
        assert_eq!(current_context(), P);
        let bh = lock.lock_bh();
        assert_eq!(current_context().bh_disabled, 1);
        drop(bh);
        assert_eq!(current_context(), P);
    });
}
