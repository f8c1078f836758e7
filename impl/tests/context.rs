//! The cycle context: a cycle learns its attempt (consecutive failures
//! before it) and is told to stop — at its timeout, and when the coalescer
//! stops waiting for it (`shutdown_timeout` gave up; the async coalescer
//! dropped). No test measures time: the async ones run on tokio's paused
//! clock, and the blocking ones only wait for a signal that must come.
#![cfg(not(loom))]

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coalescer::{blocking, Backoff, Coalescer};
use tokio::sync::Notify;

const MS: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);

/// Each cycle learns its attempt: 0, then 1 and 2 for the retries of two
/// failures, and 0 again after the success.
#[tokio::test(start_paused = true)]
async fn a_cycle_learns_its_attempt() {
    let attempts: Arc<Mutex<Vec<u32>>> = Arc::default();
    let c = {
        let attempts = Arc::clone(&attempts);
        Coalescer::builder()
            .retry(Backoff::exponential(MS, MS))
            .build_with_context(move |_: u32, cx| {
                let attempt = cx.attempt();
                attempts.lock().unwrap().push(attempt);
                async move {
                    if attempt < 2 {
                        Err("not yet")
                    } else {
                        Ok(attempt)
                    }
                }
            })
    };
    assert_eq!(c.request_and_wait(1).await, Ok(2));
    // The key went idle after the success; its next cycle is a first attempt
    // again, so it fails and is retried twice more.
    assert_eq!(c.request_and_wait(1).await, Ok(2));
    c.shutdown().await;
    assert_eq!(*attempts.lock().unwrap(), [0, 1, 2, 0, 1, 2]);
}

/// A blocking cycle that checks its context stops on its own at its
/// timeout (it cannot be cancelled), and is answered as timed out.
#[test]
fn a_blocking_cycle_is_told_to_stop_at_its_timeout() {
    let stopped = Arc::new(AtomicBool::new(false));
    let c = {
        let stopped = Arc::clone(&stopped);
        blocking::Coalescer::builder()
            .timeout(20 * MS)
            .build_with_context(move |_: &u32, cx| {
                assert!(cx.deadline().is_some());
                while !cx.is_stopped() {
                    std::thread::sleep(MS);
                }
                stopped.store(true, SeqCst);
            })
    };
    assert_eq!(c.request_and_wait(1), Err(coalescer::RunError::TimedOut));
    assert!(stopped.load(SeqCst), "the cycle saw the stop signal");
}

/// When `shutdown_timeout` gives up, the cycles it gave up on are told to
/// stop: a blocking cycle waiting for that signal ends, and a later
/// `shutdown` joins it.
#[test]
fn shutdown_timeout_tells_the_cycles_it_gives_up_on_to_stop() {
    let started = Arc::new(AtomicU32::new(0));
    let c = {
        let started = Arc::clone(&started);
        blocking::Coalescer::builder().build_with_context(move |_: &u32, cx| {
            started.fetch_add(1, SeqCst);
            assert!(cx.deadline().is_none(), "no timeout was set");
            while !cx.is_stopped() {
                std::thread::sleep(MS);
            }
        })
    };
    c.request(1).unwrap();
    while started.load(SeqCst) == 0 {
        std::thread::yield_now();
    }
    let still = c.shutdown_timeout(10 * MS).unwrap_err();
    assert_eq!(still.keys, [1]);
    // Returns only because the cycle, told to stop, ended.
    c.shutdown();
    assert_eq!(c.active_keys(), 0);
}

/// An async cycle awaiting `stopped()` wakes when `shutdown_timeout` gives
/// up on it; a cycle that never saw a stop is not woken.
#[tokio::test(start_paused = true)]
async fn an_async_cycle_awaiting_stopped_wakes_when_shutdown_timeout_gives_up() {
    let woke = Arc::new(Notify::new());
    let running = Arc::new(Notify::new());
    let c = {
        let (woke, running) = (Arc::clone(&woke), Arc::clone(&running));
        Coalescer::builder().build_with_context(move |_: u32, cx| {
            let (woke, running) = (Arc::clone(&woke), Arc::clone(&running));
            async move {
                assert!(!cx.is_stopped());
                running.notify_one();
                cx.stopped().await;
                assert!(cx.is_stopped());
                woke.notify_one();
            }
        })
    };
    c.request(1).unwrap();
    running.notified().await;
    let still = c.shutdown_timeout(HOUR).await.unwrap_err();
    assert_eq!(still.keys, [1]);
    woke.notified().await;
    c.shutdown().await;
    assert_eq!(c.active_keys(), 0);
}
