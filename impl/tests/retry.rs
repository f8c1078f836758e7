//! Retries (INV-9): a failed cycle's requests are owed to one retry that
//! begins no earlier than the policy's delay; requests during the failure
//! or the delay fold into it; a success resets the count; a give-up answers
//! the waiters with the last failure; shutdown cuts the delay short with one
//! final attempt. The async tests run on tokio's paused clock, so delays are
//! exact and take no real time; the blocking ones assert counts only.
#![cfg(not(loom))]

use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coalescer::{blocking, Admission, Backoff, Coalescer, Failure, RunError};
use tokio::time::{sleep, Instant};

mod common;
use coalescer_fixtures::HeldAsync;
use common::{quiet_injected_panics, INJECTED};

const MS: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);

/// When each cycle began, on tokio's clock.
type Log = Arc<Mutex<Vec<Instant>>>;

/// A cycle that logs when it began and fails (`Err("cycle n failed")`)
/// while `fails(n)` holds for its number `n` (1-based); otherwise `Ok(n)`.
fn logged(
    log: &Log,
    fails: impl Fn(u32) -> bool + Send + Sync + 'static,
) -> impl Fn(u32) -> std::future::Ready<Result<u32, String>> + Send + Sync + 'static {
    let (log, count) = (Arc::clone(log), AtomicU32::new(0));
    move |_key: u32| {
        let n = count.fetch_add(1, SeqCst) + 1;
        log.lock().unwrap().push(Instant::now());
        std::future::ready(if fails(n) {
            Err(format!("cycle {n} failed"))
        } else {
            Ok(n)
        })
    }
}

/// The gaps between consecutive cycles' beginnings.
fn gaps(log: &Log) -> Vec<Duration> {
    log.lock()
        .unwrap()
        .windows(2)
        .map(|w| w[1] - w[0])
        .collect()
}

/// A cycle failing twice and then succeeding runs three cycles, each retry
/// at the policy's delay after the failure, and the waiter gets the value
/// of the one that succeeded.
#[tokio::test(start_paused = true)]
async fn inv9_a_cycle_failing_twice_then_succeeding_runs_three_cycles_at_the_policy_delays() {
    let log = Log::default();
    let c = Coalescer::builder()
        .retry(Backoff::exponential(100 * MS, 10 * HOUR))
        .build(logged(&log, |n| n <= 2));
    assert_eq!(c.request_and_wait(1).await, Ok(3));
    assert_eq!(gaps(&log), [100 * MS, 200 * MS]);
    c.shutdown().await;
    let stats = c.stats();
    assert_eq!(
        (stats.cycles, stats.failures, stats.retries, stats.give_ups),
        (3, 2, 2, 0)
    );
}

/// 100 requests (and a waiter) during the backoff fold into the one retry:
/// it begins at the delay, not at once, and no cycle follows it.
#[tokio::test(start_paused = true)]
async fn inv9_requests_during_the_backoff_fold_into_the_one_retry() {
    let log = Log::default();
    let c = Coalescer::builder()
        .retry(Backoff::exponential(100 * MS, HOUR))
        .build(logged(&log, |n| n == 1));
    let t0 = Instant::now();
    assert_eq!(c.request(1), Ok(Admission::Started));
    sleep(10 * MS).await; // cycle 1 has failed; the retry waits until 100 ms
    assert_eq!(log.lock().unwrap().len(), 1);
    for _ in 0..100 {
        assert_eq!(c.request(1), Ok(Admission::Coalesced));
    }
    assert_eq!(c.request_and_wait(1).await, Ok(2), "covered by the retry");
    c.shutdown().await;
    let began = log.lock().unwrap().clone();
    assert_eq!(began.len(), 2, "one retry, no follow-up besides it");
    assert_eq!(began[1] - t0, 100 * MS, "the retry waited out its delay");
}

/// A request during the failing cycle itself folds into the retry too.
#[tokio::test(start_paused = true)]
async fn inv9_a_request_during_the_failing_cycle_folds_into_the_retry() {
    let held = Arc::new(HeldAsync::default());
    let count = Arc::new(AtomicU32::new(0));
    let c = {
        let (held, count) = (Arc::clone(&held), Arc::clone(&count));
        Coalescer::builder()
            .retry(Backoff::exponential(100 * MS, HOUR))
            .build(move |_: u32| {
                let n = count.fetch_add(1, SeqCst) + 1;
                let held = Arc::clone(&held);
                async move {
                    if n == 1 {
                        held.hold().await;
                        return Err("cycle 1 failed");
                    }
                    Ok(n)
                }
            })
    };
    let first = c.request_and_wait(1);
    held.wait_started().await;
    let during = c.request_and_wait(1);
    held.release();
    assert_eq!(
        first.await,
        Ok(2),
        "the failed cycle's waiter gets the retry's value"
    );
    assert_eq!(during.await, Ok(2), "folded into the same retry");
    c.shutdown().await;
    assert_eq!(count.load(SeqCst), 2);
}

/// A success resets the key's count of consecutive failures: a failure
/// after a success of the same live runner is the first again (no `Forget`
/// to remember). The success is held so that the next request finds the
/// runner live and its failing follow-up runs on the same runner.
#[tokio::test(start_paused = true)]
async fn inv9_a_success_resets_the_failure_count() {
    let seen: Arc<Mutex<Vec<u32>>> = Arc::default();
    let held = Arc::new(HeldAsync::default());
    let count = Arc::new(AtomicU32::new(0));
    let c = {
        let (seen, held, count) = (Arc::clone(&seen), Arc::clone(&held), Arc::clone(&count));
        Coalescer::builder()
            .retry(
                move |_: &u32, failure: &Failure<'_, String>, failures: u32| {
                    assert!(matches!(failure, Failure::Error(e) if e.ends_with("failed")));
                    seen.lock().unwrap().push(failures);
                    Some(10 * MS)
                },
            )
            .build(move |_: u32| {
                let n = count.fetch_add(1, SeqCst) + 1;
                let held = Arc::clone(&held);
                async move {
                    if n == 2 {
                        held.hold().await;
                    }
                    if [1, 3, 4].contains(&n) {
                        Err(format!("cycle {n} failed"))
                    } else {
                        Ok(n)
                    }
                }
            })
    };
    let first = c.request_and_wait(1);
    held.wait_started().await; // cycle 2, the retry that succeeds
    let second = c.request_and_wait(1);
    held.release();
    assert_eq!(first.await, Ok(2));
    assert_eq!(second.await, Ok(5));
    c.shutdown().await;
    assert_eq!(*seen.lock().unwrap(), [1, 1, 2], "counts the policy saw");
}

/// After `max_retries` retries the policy gives up: the waiter gets the
/// last failure's error, the give-up is counted, and a request that arrived
/// during the last failed cycle still gets its follow-up.
#[tokio::test(start_paused = true)]
async fn inv9_give_up_after_max_retries_answers_with_the_last_error_and_runs_the_follow_up() {
    let held = Arc::new(HeldAsync::default());
    let count = Arc::new(AtomicU32::new(0));
    let c = {
        let (held, count) = (Arc::clone(&held), Arc::clone(&count));
        Coalescer::builder()
            .retry(Backoff::exponential(10 * MS, HOUR).max_retries(2))
            .build(move |_: u32| {
                let n = count.fetch_add(1, SeqCst) + 1;
                let held = Arc::clone(&held);
                async move {
                    if n == 3 {
                        held.hold().await;
                    }
                    if n <= 3 {
                        Err(format!("cycle {n} failed"))
                    } else {
                        Ok(n)
                    }
                }
            })
    };
    let first = c.request_and_wait(1);
    held.wait_started().await; // cycle 3, the second retry, is running
    let during = c.request_and_wait(1);
    held.release();
    match first.await {
        Err(RunError::Failed(error)) => assert_eq!(*error, "cycle 3 failed"),
        other => panic!("expected the last failure, got {other:?}"),
    }
    assert_eq!(during.await, Ok(4), "the follow-up after the give-up");
    c.shutdown().await;
    let stats = c.stats();
    assert_eq!(
        (stats.cycles, stats.failures, stats.retries, stats.give_ups),
        (4, 3, 2, 1)
    );
}

/// A panicking cycle is a failure the policy sees and retries.
#[tokio::test(start_paused = true)]
async fn inv9_a_panic_is_retried() {
    quiet_injected_panics();
    let count = Arc::new(AtomicU32::new(0));
    let panicked = Arc::new(AtomicU32::new(0));
    let c = {
        let (count, panicked) = (Arc::clone(&count), Arc::clone(&panicked));
        Coalescer::builder()
            .panic_hook(|_| {})
            .retry(move |_: &u32, failure: &Failure<'_, String>, _: u32| {
                if matches!(failure, Failure::Panicked) {
                    panicked.fetch_add(1, SeqCst);
                }
                Some(MS)
            })
            .build(move |_: u32| {
                let n = count.fetch_add(1, SeqCst) + 1;
                async move {
                    if n == 1 {
                        panic!("{INJECTED}");
                    }
                    Ok::<u32, String>(n)
                }
            })
    };
    assert_eq!(c.request_and_wait(1).await, Ok(2));
    c.shutdown().await;
    assert_eq!(panicked.load(SeqCst), 1);
    assert_eq!((c.stats().panics, c.stats().retries), (1, 1));
}

/// Without a policy a failure is not retried: one cycle, its waiter gets
/// the error, nothing counted as a retry or a give-up.
#[tokio::test(start_paused = true)]
async fn inv9_without_a_policy_a_failure_is_not_retried() {
    let log = Log::default();
    let c = Coalescer::new(logged(&log, |_| true));
    assert!(matches!(
        c.request_and_wait(1).await,
        Err(RunError::Failed(_))
    ));
    c.shutdown().await;
    let stats = c.stats();
    assert_eq!(
        (stats.cycles, stats.failures, stats.retries, stats.give_ups),
        (1, 1, 0, 0)
    );
}

/// Shutdown cuts an hour-long backoff short: the owed key gets one
/// immediate final attempt inside the drain, which is not retried again.
#[tokio::test(start_paused = true)]
async fn inv9_shutdown_cuts_the_backoff_short_with_one_final_attempt() {
    let log = Log::default();
    let c = Coalescer::builder()
        .retry(Backoff::exponential(HOUR, HOUR))
        .build(logged(&log, |_| true));
    let t0 = Instant::now();
    let waiter = c.request_and_wait(1);
    sleep(MS).await; // cycle 1 failed; the retry waits an hour
    c.shutdown().await;
    assert_eq!(
        Instant::now() - t0,
        MS,
        "the drain did not wait out the hour"
    );
    match waiter.await {
        Err(RunError::Failed(error)) => assert_eq!(*error, "cycle 2 failed"),
        other => panic!("expected the final attempt's failure, got {other:?}"),
    }
    let stats = c.stats();
    assert_eq!((stats.cycles, stats.retries, stats.give_ups), (2, 1, 1));
}

/// `min_interval` and the backoff combine: the retry waits for the later of
/// the two bounds.
#[tokio::test(start_paused = true)]
async fn inv9_min_interval_and_backoff_combine_and_the_later_bound_wins() {
    for (interval, delay, gap) in [
        (500 * MS, 100 * MS, 500 * MS),
        (50 * MS, 100 * MS, 100 * MS),
    ] {
        let log = Log::default();
        let c = Coalescer::builder()
            .min_interval(interval)
            .retry(Backoff::exponential(delay, HOUR))
            .build(logged(&log, |n| n == 1));
        assert_eq!(c.request_and_wait(1).await, Ok(2));
        c.shutdown().await;
        assert_eq!(
            gaps(&log),
            [gap],
            "min_interval {interval:?}, delay {delay:?}"
        );
    }
}

/// The blocking front end retries the same way: a cycle failing twice then
/// succeeding runs three cycles and the waiter gets the value.
#[test]
fn blocking_a_cycle_failing_twice_then_succeeding_runs_three_cycles() {
    let count = Arc::new(AtomicU32::new(0));
    let c = {
        let count = Arc::clone(&count);
        blocking::Coalescer::builder()
            .retry(Backoff::exponential(MS, 10 * MS))
            .build(move |_: &u32| {
                let n = count.fetch_add(1, SeqCst) + 1;
                if n <= 2 {
                    Err(format!("cycle {n} failed"))
                } else {
                    Ok(n)
                }
            })
    };
    assert_eq!(c.request_and_wait(1), Ok(3));
    c.shutdown();
    let stats = c.stats();
    assert_eq!((stats.cycles, stats.failures, stats.retries), (3, 2, 2));
}

/// The blocking shutdown cuts an hour-long backoff short too.
#[test]
fn blocking_shutdown_cuts_the_backoff_short_with_one_final_attempt() {
    let count = Arc::new(AtomicU32::new(0));
    let c = {
        let count = Arc::clone(&count);
        blocking::Coalescer::builder()
            .retry(Backoff::exponential(HOUR, HOUR))
            .build(move |_: &u32| {
                count.fetch_add(1, SeqCst);
                Err::<(), _>("failed")
            })
    };
    c.request(1).unwrap();
    while c.stats().retries == 0 {
        std::thread::yield_now();
    }
    c.shutdown(); // returns only because the drain cut the hour short
    assert_eq!(
        count.load(SeqCst),
        2,
        "one final attempt, not retried again"
    );
    assert_eq!(c.stats().give_ups, 1);
}

/// The failure hook sees every failed cycle — the key, the error (or the
/// timeout) and the attempt — once, before the policy decides; a panic in
/// it is contained.
#[tokio::test(start_paused = true)]
async fn the_failure_hook_sees_each_failure_with_its_key_and_attempt() {
    quiet_injected_panics();
    let seen: Arc<Mutex<Vec<(u32, String, u32)>>> = Arc::default();
    let log = Log::default();
    let c = {
        let seen = Arc::clone(&seen);
        Coalescer::builder()
            .retry(Backoff::exponential(MS, MS).max_retries(1))
            .failure_hook(move |report: &coalescer::FailureReport<'_, u32, String>| {
                let what = match report.failure() {
                    Failure::Error(e) => (*e).clone(),
                    other => format!("{other:?}"),
                };
                seen.lock()
                    .unwrap()
                    .push((*report.key(), what, report.attempt()));
                panic!("{INJECTED}"); // contained
            })
            .build(logged(&log, |_| true))
    };
    match c.request_and_wait(7).await {
        Err(RunError::Failed(error)) => assert_eq!(*error, "cycle 2 failed"),
        other => panic!("expected the last failure, got {other:?}"),
    }
    c.shutdown().await;
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (7, "cycle 1 failed".to_owned(), 0),
            (7, "cycle 2 failed".to_owned(), 1)
        ]
    );
}

/// Blocking twin: 100 requests (and a waiter) during the retry's delay
/// fold into the one retry, and no cycle follows it. The delay is an hour
/// that only the requests' own shutdown could cut short: the retry begins
/// because the test's `Gate` lets the policy's wait end — here the delay is
/// held by the test instead of the clock (a policy that blocks until
/// released), so the requests are certainly inside it.
#[test]
fn blocking_requests_during_the_backoff_fold_into_the_one_retry() {
    let held = Arc::new(coalescer_fixtures::Gate::default());
    let failed = Arc::new(coalescer_fixtures::Gate::default());
    let count = Arc::new(AtomicU32::new(0));
    let c = {
        let (held, failed, count) = (Arc::clone(&held), Arc::clone(&failed), Arc::clone(&count));
        blocking::Coalescer::builder()
            .retry(move |_: &u32, _: &Failure<'_, String>, _: u32| {
                // The delay: the test makes its requests meanwhile.
                failed.open();
                held.wait();
                Some(Duration::ZERO)
            })
            .build(move |_: &u32| {
                let n = count.fetch_add(1, SeqCst) + 1;
                if n == 1 {
                    Err(format!("cycle {n} failed"))
                } else {
                    Ok(n)
                }
            })
    };
    c.request(1).unwrap();
    failed.wait();
    for _ in 0..100 {
        assert_eq!(c.request(1), Ok(Admission::Coalesced));
    }
    std::thread::scope(|s| {
        let waiter = s.spawn(|| c.request_and_wait(1));
        while c.stats().coalesced < 101 {
            std::thread::yield_now();
        }
        held.open();
        assert_eq!(waiter.join().unwrap(), Ok(2), "covered by the retry");
    });
    c.shutdown();
    assert_eq!(count.load(SeqCst), 2, "one retry, no follow-up besides it");
}

/// Blocking twin: a success resets the count on the same live runner, and
/// the policy gives up after `max_retries` with the last error. The success
/// (cycle 2, a retry) is held while the next request arrives, so its
/// failing follow-up runs on that runner: the policy sees 1, then 1, 2, 3
/// (giving up at 3) — 1, 2, 3 and a give-up one cycle early without the
/// reset.
#[test]
fn blocking_a_success_resets_the_count_and_the_policy_gives_up_after_max_retries() {
    let seen: Arc<Mutex<Vec<u32>>> = Arc::default();
    let held = Arc::new(coalescer_fixtures::Held::default());
    let count = Arc::new(AtomicU32::new(0));
    let c = {
        let (seen, held, count) = (Arc::clone(&seen), Arc::clone(&held), Arc::clone(&count));
        blocking::Coalescer::builder()
            .retry(move |_: &u32, _: &Failure<'_, String>, failures: u32| {
                seen.lock().unwrap().push(failures);
                Backoff::exponential(MS, MS).max_retries(2).delay(failures)
            })
            .build(move |_: &u32| {
                let n = count.fetch_add(1, SeqCst) + 1;
                if n == 2 {
                    held.hold();
                    return Ok(n);
                }
                Err(format!("cycle {n} failed"))
            })
    };
    std::thread::scope(|s| {
        let first = s.spawn(|| c.request_and_wait(1));
        held.wait_started(); // cycle 2, the retry that succeeds
        let before = c.stats().coalesced;
        let second = s.spawn(|| c.request_and_wait(1));
        while c.stats().coalesced == before {
            std::thread::yield_now();
        }
        held.release();
        assert_eq!(first.join().unwrap(), Ok(2));
        match second.join().unwrap() {
            Err(RunError::Failed(error)) => assert_eq!(*error, "cycle 5 failed"),
            other => panic!("expected the last failure, got {other:?}"),
        }
    });
    c.shutdown();
    assert_eq!(*seen.lock().unwrap(), [1, 1, 2, 3], "counts the policy saw");
    assert_eq!((c.stats().retries, c.stats().give_ups), (3, 1));
}
