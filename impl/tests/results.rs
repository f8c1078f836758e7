//! Cycles that return a result: waiters get the value of the cycle that
//! covered them, or its error, shared; a failed cycle settles like any other
//! (requests that arrived during it get their follow-up); what nobody waits
//! for is dropped on the runner with its `Drop` contained. Both front ends
//! (compiled out under loom).
#![cfg(not(loom))]

use std::collections::hash_map::RandomState;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::Arc;

use coalescer::{blocking, Coalescer, CycleOutput, RunError};

#[macro_use]
mod common;
use coalescer_fixtures::{Held, HeldAsync};
use common::{quiet_injected_panics, INJECTED};

/// What cycle `n` of the tests' fallible cycles returns: cycle 2 fails.
fn outcome(n: u32) -> Result<u32, String> {
    if n == 2 {
        Err(format!("cycle {n} failed"))
    } else {
        Ok(n)
    }
}

/// A cycle's value whose `Drop` panics if it is the value of cycle 1.
#[derive(Debug, Clone)]
struct PanicsIfFirst(u32);

impl Drop for PanicsIfFirst {
    fn drop(&mut self) {
        if self.0 == 1 && !std::thread::panicking() {
            panic!("{INJECTED}");
        }
    }
}

/// Blocks until the coalescer has accepted `n` coalesced requests (a
/// waiting request counts once it is registered for its cycle).
fn until_coalesced<O: CycleOutput>(c: &blocking::Coalescer<u32, RandomState, O>, n: u64) {
    while c.stats().coalesced < n {
        std::thread::yield_now();
    }
}

/// Each waiter gets the value of the cycle that covered it: sequential
/// waiters get successive cycles' values, and every waiter folded into one
/// cycle gets that cycle's.
#[test]
fn blocking_waiters_get_the_value_of_their_covering_cycle() {
    let count = Arc::new(AtomicU32::new(0));
    let held = Arc::new(Held::default());
    let c = {
        let (count, held) = (Arc::clone(&count), Arc::clone(&held));
        blocking::Coalescer::new(move |_: &u32| {
            let n = count.fetch_add(1, SeqCst) + 1;
            if n == 2 {
                held.hold();
            }
            Ok::<u32, String>(n)
        })
    };
    assert_eq!(c.request_and_wait(1), Ok(1));
    c.request(1).unwrap(); // cycle 2, held
    held.wait_started();
    let before = c.stats().coalesced;
    std::thread::scope(|s| {
        let waiters: Vec<_> = (0..3).map(|_| s.spawn(|| c.request_and_wait(1))).collect();
        until_coalesced(&c, before + 3);
        held.release();
        for waiter in waiters {
            assert_eq!(waiter.join().unwrap(), Ok(3), "folded into cycle 3");
        }
    });
    assert_eq!(c.request_and_wait(1), Ok(4));
    c.shutdown();
}

/// A failed cycle answers each of its waiters with its error — one error,
/// shared — and settles like any other: the request that arrived while it
/// ran gets its follow-up, whose value its waiter gets.
#[test]
fn blocking_a_failed_cycle_answers_its_waiters_and_requests_during_it_get_their_follow_up() {
    let count = Arc::new(AtomicU32::new(0));
    let held = Arc::new(Held::default());
    let c = {
        let (count, held) = (Arc::clone(&count), Arc::clone(&held));
        blocking::Coalescer::new(move |_: &u32| {
            let n = count.fetch_add(1, SeqCst) + 1;
            if n <= 2 {
                held.hold();
            }
            outcome(n)
        })
    };
    c.request(1).unwrap(); // cycle 1, held
    held.wait_started();
    std::thread::scope(|s| {
        let failed: Vec<_> = (0..2).map(|_| s.spawn(|| c.request_and_wait(1))).collect();
        until_coalesced(&c, 2);
        held.release(); // cycle 2 (covering both) begins, held
        held.wait_started();
        let follow_up = s.spawn(|| c.request_and_wait(1));
        until_coalesced(&c, 3);
        held.release(); // cycle 2 fails
        let errors: Vec<_> = failed
            .into_iter()
            .map(|waiter| match waiter.join().unwrap() {
                Err(RunError::Failed(error)) => error,
                other => panic!("a waiter of the failed cycle got {other:?}"),
            })
            .collect();
        assert_eq!(*errors[0], "cycle 2 failed");
        assert!(
            Arc::ptr_eq(&errors[0], &errors[1]),
            "the waiters share one error"
        );
        assert_eq!(follow_up.join().unwrap(), Ok(3), "the follow-up ran");
    });
    c.shutdown();
    let stats = c.stats();
    assert_eq!((stats.cycles, stats.failures, stats.panics), (3, 1, 0));
}

/// A cycle's value that nobody waits for is dropped on the runner, and a
/// panic in its `Drop` is contained: the runner goes on to the follow-up
/// that a waiter registered for.
#[test]
fn blocking_a_panic_dropping_an_unclaimed_value_is_contained() {
    quiet_injected_panics();
    let count = Arc::new(AtomicU32::new(0));
    let held = Arc::new(Held::default());
    let c = {
        let (count, held) = (Arc::clone(&count), Arc::clone(&held));
        blocking::Coalescer::new(move |_: &u32| {
            let n = count.fetch_add(1, SeqCst) + 1;
            if n == 1 {
                held.hold();
            }
            Ok::<_, String>(PanicsIfFirst(n))
        })
    };
    c.request(1).unwrap(); // cycle 1, held; nobody waits for it
    held.wait_started();
    std::thread::scope(|s| {
        let waiter = s.spawn(|| c.request_and_wait(1));
        until_coalesced(&c, 1);
        held.release();
        match waiter.join().unwrap() {
            Ok(PanicsIfFirst(n)) => assert_eq!(n, 2),
            other => panic!("the follow-up's waiter got {other:?}"),
        }
    });
    c.shutdown();
}

/// The async twin of the blocking test: each waiter gets its covering
/// cycle's value.
async fn waiters_get_the_value_of_their_covering_cycle() {
    let count = Arc::new(AtomicU32::new(0));
    let held = Arc::new(HeldAsync::default());
    let c = {
        let (count, held) = (Arc::clone(&count), Arc::clone(&held));
        Coalescer::new(move |_: u32| {
            let n = count.fetch_add(1, SeqCst) + 1;
            let held = Arc::clone(&held);
            async move {
                if n == 2 {
                    held.hold().await;
                }
                Ok::<u32, String>(n)
            }
        })
    };
    assert_eq!(c.request_and_wait(1).await, Ok(1));
    c.request(1).unwrap(); // cycle 2, held
    held.wait_started().await;
    // Each request is made (and registered) by the call itself.
    let waiters: Vec<_> = (0..3).map(|_| c.request_and_wait(1)).collect();
    held.release();
    for waiter in waiters {
        assert_eq!(waiter.await, Ok(3), "folded into cycle 3");
    }
    assert_eq!(c.request_and_wait(1).await, Ok(4));
    c.shutdown().await;
}

/// The async twin: a failed cycle's waiters share its error; the request
/// during it gets its follow-up.
async fn a_failed_cycle_answers_its_waiters_and_requests_during_it_get_their_follow_up() {
    let count = Arc::new(AtomicU32::new(0));
    let held = Arc::new(HeldAsync::default());
    let c = {
        let (count, held) = (Arc::clone(&count), Arc::clone(&held));
        Coalescer::new(move |_: u32| {
            let n = count.fetch_add(1, SeqCst) + 1;
            let held = Arc::clone(&held);
            async move {
                if n <= 2 {
                    held.hold().await;
                }
                outcome(n)
            }
        })
    };
    c.request(1).unwrap(); // cycle 1, held
    held.wait_started().await;
    let failed = [c.request_and_wait(1), c.request_and_wait(1)];
    held.release(); // cycle 2 (covering both) begins, held
    held.wait_started().await;
    let follow_up = c.request_and_wait(1);
    held.release(); // cycle 2 fails
    let mut errors = Vec::new();
    for waiter in failed {
        match waiter.await {
            Err(RunError::Failed(error)) => errors.push(error),
            other => panic!("a waiter of the failed cycle got {other:?}"),
        }
    }
    assert_eq!(*errors[0], "cycle 2 failed");
    assert!(
        Arc::ptr_eq(&errors[0], &errors[1]),
        "the waiters share one error"
    );
    assert_eq!(follow_up.await, Ok(3), "the follow-up ran");
    c.shutdown().await;
    let stats = c.stats();
    assert_eq!((stats.cycles, stats.failures, stats.panics), (3, 1, 0));
}

/// The async twin: a panic dropping a value nobody waits for is contained.
async fn a_panic_dropping_an_unclaimed_value_is_contained() {
    quiet_injected_panics();
    let count = Arc::new(AtomicU32::new(0));
    let held = Arc::new(HeldAsync::default());
    let c = {
        let (count, held) = (Arc::clone(&count), Arc::clone(&held));
        Coalescer::new(move |_: u32| {
            let n = count.fetch_add(1, SeqCst) + 1;
            let held = Arc::clone(&held);
            async move {
                if n == 1 {
                    held.hold().await;
                }
                Ok::<_, String>(PanicsIfFirst(n))
            }
        })
    };
    c.request(1).unwrap(); // cycle 1, held; nobody waits for it
    held.wait_started().await;
    let waiter = c.request_and_wait(1);
    held.release();
    match waiter.await {
        Ok(PanicsIfFirst(n)) => assert_eq!(n, 2),
        other => panic!("the follow-up's waiter got {other:?}"),
    }
    c.shutdown().await;
}

on_both_runtimes!(
    waiters_get_the_value_of_their_covering_cycle,
    a_failed_cycle_answers_its_waiters_and_requests_during_it_get_their_follow_up,
    a_panic_dropping_an_unclaimed_value_is_contained,
);

/// `RunError::Failed` says what failed and hands the error on as its
/// `source`; `failure` reads it.
#[test]
fn a_failure_displays_its_error_and_is_its_source() {
    use std::error::Error as _;
    let error: RunError<std::io::Error> =
        RunError::Failed(Arc::new(std::io::Error::other("disk full")));
    assert_eq!(
        error.to_string(),
        "the cycle covering this request failed: disk full"
    );
    assert_eq!(
        error.source().map(ToString::to_string).as_deref(),
        Some("disk full")
    );
    assert_eq!(
        error.failure().map(ToString::to_string).as_deref(),
        Some("disk full")
    );
    let closed: RunError<std::io::Error> = RunError::Closed;
    assert!(closed.source().is_none() && closed.failure().is_none());
}
