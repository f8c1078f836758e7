//! Loom models of the async front end: the same runner loop the tokio build
//! runs, driven by `loom::future::block_on` on loom threads (tokio is out of
//! the loom build). One model per race; all exhaustive.
#![cfg(loom)]

use coalescer::{Admission, Closed, RunError};
use coalescer_loom_tests::{
    async_coalescer, check, limited_async_coalescer, paced_async_coalescer, spawn_requester, Env,
    Gate,
};
use loom::future::block_on;
use loom::sync::Arc;

/// D1 for the async runner: a request races the runner's transition to idle
/// and is never stranded; a fresh runner's cycle happens-after the old one's.
#[test]
fn inv1_inv2_inv4_async_request_racing_the_transition_to_idle_is_never_stranded() {
    check("async_request_racing_the_transition_to_idle", || {
        let env = Env::new(1);
        let c = Arc::new(async_coalescer(&env, |_, _| {}));
        assert_eq!(c.request(0), Ok(Admission::Started));
        let requester = spawn_requester(&c, &env, |c| c.request(0).unwrap());
        let _ = requester.join().unwrap();
        block_on(c.shutdown());
        env.assert_last_cycle_saw(&[0]);
        assert!((1..=2).contains(&env.log().len()), "log: {:?}", env.log());
        assert_eq!(c.active_keys(), 0);
        env.done();
    });
}

/// Close racing a request while a cycle runs: the request is either
/// rejected, or accepted and covered by a cycle that ended before
/// `shutdown().await` returned; no cycle begins after that.
#[test]
fn inv5_async_shutdown_racing_a_request() {
    check("async_shutdown_racing_a_request", || {
        let env = Env::new(1);
        let c = Arc::new(async_coalescer(&env, |_, _| {}));
        assert_eq!(c.request(0), Ok(Admission::Started));
        let requester = spawn_requester(&c, &env, |c| c.request(0));
        block_on(c.shutdown());
        let at_shutdown = env.log();
        let outcome = requester.join().unwrap();
        if outcome.is_ok() {
            assert!(
                at_shutdown.last().is_some_and(|seen| seen[0]),
                "accepted request not drained by shutdown; log: {at_shutdown:?}"
            );
        } else {
            assert_eq!(outcome, Err(Closed));
        }
        drop(c);
        assert_eq!(
            env.log(),
            at_shutdown,
            "a cycle ran after shutdown returned"
        );
        env.done();
    });
}

/// Drop without shutdown while a cycle may run and a request waits: once the
/// runner sees the abort it begins no further cycle (here: at most the one
/// that may already be running, held until after the drop), and the waiter
/// gets `Ok` (its request preceded that cycle's begin) or `Aborted` (its
/// covering cycle never begins) — never a hang.
#[test]
fn inv5_async_abort_racing_a_request_and_wait() {
    check("async_abort_racing_a_request_and_wait", || {
        let env = Env::new(1);
        let release = Arc::new(Gate::default());
        let c = {
            let release = Arc::clone(&release);
            async_coalescer(&env, move |n, _| {
                if n == 0 {
                    release.wait();
                }
            })
        };
        assert_eq!(c.request(0), Ok(Admission::Started));
        env.write(0);
        let wait = c.request_and_wait(0);
        drop(c); // closes, and aborts the runner
        release.open();
        let outcome = block_on(wait);
        assert!(
            matches!(outcome, Ok(()) | Err(RunError::Aborted)),
            "{outcome:?}"
        );
        // The abort may even come before the first cycle begins.
        assert!(env.log().len() <= 1, "a cycle began after the abort");
        if outcome.is_ok() {
            assert!(env.log()[0][0], "Ok from a cycle that did not cover it");
        }
        env.done();
    });
}

/// `min_interval` on the async runner (the wait abstracted as one yield): a
/// request racing the cycle, the wait and the transition to idle is covered
/// by a cycle that sees its write; `shutdown().await` racing the wait drains
/// the paced follow-up before it returns (or the request is rejected).
#[test]
fn inv2_inv5_async_paced_follow_up_covers_a_request_during_the_wait_and_shutdown_drains_it() {
    check("async_paced_request_and_shutdown_racing_the_wait", || {
        let env = Env::new(1);
        let c = Arc::new(paced_async_coalescer(&env, |_, _| {}));
        assert_eq!(c.request(0), Ok(Admission::Started));
        let requester = spawn_requester(&c, &env, |c| c.request(0));
        block_on(c.shutdown());
        let at_shutdown = env.log();
        match requester.join().unwrap() {
            Ok(_) => assert!(
                at_shutdown.last().is_some_and(|seen| seen[0]),
                "accepted request not drained by shutdown; log: {at_shutdown:?}"
            ),
            Err(closed) => assert_eq!(closed, Closed),
        }
        env.done();
    });
}

/// INV-11 with a limit of one: key 0's runner gives its permit back as its
/// cycle returns, racing a request for key 1 (which takes a ticket, granted
/// at once or by that release) and a shutdown. Never two cycles at once,
/// each cycle happens-after the one before it (the permit's hand-off), and
/// key 1's request is rejected or run before `shutdown().await` returns —
/// no permit lost, no key left waiting.
#[test]
fn inv11_inv5_a_released_permit_racing_another_keys_request_and_a_shutdown() {
    check("permit_release_racing_a_request_and_a_shutdown", || {
        let env = Env::new(1);
        let c = Arc::new(limited_async_coalescer(&env, |_, _| {}));
        assert_eq!(c.request(0), Ok(Admission::Started));
        let requester = spawn_requester(&c, &env, |c| c.request(1));
        block_on(c.shutdown());
        let at_shutdown = env.log();
        let outcome = requester.join().unwrap();
        match outcome {
            Ok(_) => assert_eq!(at_shutdown.len(), 2, "key 1 not drained: {at_shutdown:?}"),
            Err(Closed) => assert_eq!(at_shutdown.len(), 1),
        }
        assert_eq!(c.stats().waiting, 0);
        drop(c);
        assert_eq!(
            env.log(),
            at_shutdown,
            "a cycle ran after shutdown returned"
        );
        env.done();
    });
}
