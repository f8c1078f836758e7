//! `min_interval`: follow-ups are paced, requests during the wait coalesce
//! into the paced follow-up (nothing dropped), an idle key starts at once,
//! and shutdown cuts the wait short. The async tests run on tokio's paused
//! clock, so they take no real time; the blocking ones assert only the lower
//! bound the pacing guarantees (a deterministic property of the code, not a
//! speed), and use an hour-long interval where only shutdown can end a wait.
#![cfg(not(loom))]

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coalescer::{Admission, Coalescer};
use tokio::time::{sleep, Instant};

const INTERVAL: Duration = Duration::from_millis(50);
const HOUR: Duration = Duration::from_secs(3600);

/// Per cycle: when it began, and the version it saw.
type Log = Arc<Mutex<Vec<(Instant, u64)>>>;

/// A paced coalescer on tokio's clock whose cycles log `(now, version)`.
fn paced(interval: Duration, version: &Arc<AtomicU64>) -> (Coalescer<u32>, Log) {
    let log: Log = Arc::default();
    let (seen, logged) = (Arc::clone(version), Arc::clone(&log));
    let c = Coalescer::builder()
        .min_interval(interval)
        .build(move |_key: u32| {
            logged
                .lock()
                .unwrap()
                .push((Instant::now(), seen.load(SeqCst)));
            async {}
        });
    (c, log)
}

/// Three requests inside the interval after a cycle make one follow-up,
/// which begins exactly when the interval has passed and sees the last
/// write; a key that went idle starts at once again.
#[tokio::test(start_paused = true)]
async fn requests_during_the_interval_coalesce_into_one_paced_follow_up() {
    let version = Arc::new(AtomicU64::new(0));
    let (c, log) = paced(INTERVAL, &version);
    let t0 = Instant::now();
    assert_eq!(c.request(1), Ok(Admission::Started));
    tokio::task::yield_now().await; // the first cycle begins at once
    for (at, v) in [(10, 1), (20, 2), (30, 3)] {
        sleep(Duration::from_millis(at) - (Instant::now() - t0)).await;
        version.store(v, SeqCst);
        assert_eq!(c.request(1), Ok(Admission::Coalesced));
    }
    // The waiter's request joins the same follow-up.
    c.request_and_wait(1).await.unwrap();
    {
        let log = log.lock().unwrap();
        assert_eq!(
            log.len(),
            2,
            "one paced follow-up for four requests: {log:?}"
        );
        assert_eq!(log[0], (t0, 0));
        assert_eq!(log[1].0 - log[0].0, INTERVAL, "follow-up not paced");
        assert_eq!(log[1].1, 3, "follow-up missed the last write");
    }
    // The runner keeps the key active until t0 + 100 ms: a request at
    // t0 + 60 ms is paced to t0 + 100 ms.
    sleep(Duration::from_millis(60) - (Instant::now() - t0)).await;
    assert_eq!(c.request(1), Ok(Admission::Coalesced));
    // Idle from t0 + 150 ms: a request at t0 + 170 ms starts at once.
    sleep(Duration::from_millis(170) - (Instant::now() - t0)).await;
    assert_eq!(
        c.active_keys(),
        0,
        "the key did not go idle after its interval"
    );
    assert_eq!(c.request(1), Ok(Admission::Started));
    c.shutdown().await;
    let log = log.lock().unwrap().clone();
    let began: Vec<Duration> = log.iter().map(|(at, _)| *at - t0).collect();
    assert_eq!(
        began,
        [0, 50, 100, 170].map(Duration::from_millis),
        "paced follow-ups at 50 and 100 ms, the idle key at once"
    );
    assert_eq!(c.stats().cycles, 4);
}

/// Shutdown during an hour-long wait runs the pending follow-up at once: on
/// the paused clock, a drain that sat out the interval would begin it an
/// hour later.
#[tokio::test(start_paused = true)]
async fn shutdown_runs_the_pending_follow_up_without_waiting() {
    let version = Arc::new(AtomicU64::new(0));
    let (c, log) = paced(HOUR, &version);
    let t0 = Instant::now();
    c.request(1).unwrap();
    tokio::task::yield_now().await;
    version.store(1, SeqCst);
    assert_eq!(c.request(1), Ok(Admission::Coalesced));
    tokio::task::yield_now().await; // the runner is now waiting out the hour
    c.shutdown().await;
    let log = log.lock().unwrap().clone();
    assert_eq!(
        log.len(),
        2,
        "the accepted request was not drained: {log:?}"
    );
    assert_eq!(log[1], (t0, 1), "the drain sat out the interval");
    assert_eq!(c.active_keys(), 0);
}

/// Dropping (aborting) a coalescer whose runner waits out the interval:
/// the waiter of the paced follow-up is told `Aborted`, nothing hangs.
#[tokio::test(start_paused = true)]
async fn drop_during_the_wait_aborts_the_paced_follow_up() {
    let version = Arc::new(AtomicU64::new(0));
    let (c, _log) = paced(HOUR, &version);
    c.request(1).unwrap();
    tokio::task::yield_now().await;
    let wait = c.request_and_wait(1);
    tokio::task::yield_now().await;
    drop(c);
    assert_eq!(wait.await, Err(coalescer::RunError::Aborted));
}

/// A runtime without the time driver: the interval is ignored (and logged),
/// never a panic in a runner; requests still run.
#[test]
fn without_a_time_driver_the_interval_is_ignored_not_a_panic() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let runs = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&runs);
        let c = Coalescer::builder()
            .min_interval(HOUR)
            .build(move |_key: u32| {
                counted.fetch_add(1, SeqCst);
                async {}
            });
        c.request(1).unwrap();
        c.request_and_wait(1).await.unwrap();
        c.shutdown().await;
        assert!(runs.load(SeqCst) >= 1);
        assert_eq!(c.stats().panics, 0);
    });
}

/// Blocking: follow-ups of a key begin at least `min_interval` apart, and a
/// burst during the wait coalesces into one follow-up that sees its writes.
#[test]
fn blocking_follow_ups_are_at_least_min_interval_apart() {
    let version = Arc::new(AtomicU64::new(0));
    let log: Arc<Mutex<Vec<(std::time::Instant, u64)>>> = Arc::default();
    let (seen, logged) = (Arc::clone(&version), Arc::clone(&log));
    let c = coalescer::blocking::Coalescer::builder()
        .min_interval(INTERVAL)
        .build(move |_key: &u32| {
            logged
                .lock()
                .unwrap()
                .push((std::time::Instant::now(), seen.load(SeqCst)));
        });
    // One cycle first, so the burst cannot all fold into the first cycle
    // before it begins: at least one follow-up must be paced.
    c.request_and_wait(1).unwrap();
    for v in 1..=20 {
        version.store(v, SeqCst);
        c.request(1).unwrap();
    }
    c.request_and_wait(1).unwrap();
    c.shutdown();
    let log = log.lock().unwrap().clone();
    for pair in log.windows(2) {
        assert!(
            pair[1].0 - pair[0].0 >= INTERVAL,
            "cycles too close: {log:?}"
        );
    }
    assert_eq!(
        log.last().unwrap().1,
        20,
        "the last write was lost: {log:?}"
    );
    // 22 requests, no more cycles than requests (INV-7); at least two.
    assert!((2..=22).contains(&log.len()), "{log:?}");
}

/// Blocking: shutdown during an hour-long wait runs the pending follow-up at
/// once (without the interrupt this test would take an hour).
#[test]
fn blocking_shutdown_cuts_the_wait_short() {
    let version = Arc::new(AtomicU64::new(0));
    let (seen, runs) = (Arc::clone(&version), Arc::new(Mutex::new(Vec::new())));
    let logged = Arc::clone(&runs);
    let c = coalescer::blocking::Coalescer::builder()
        .min_interval(HOUR)
        .build(move |_key: &u32| logged.lock().unwrap().push(seen.load(SeqCst)));
    c.request_and_wait(1).unwrap(); // one cycle, done
    version.store(1, SeqCst);
    // The key may still be active (waiting out the hour) or idle: either way
    // this request is accepted and must be drained promptly.
    c.request(1).unwrap();
    c.shutdown();
    let runs = runs.lock().unwrap().clone();
    assert_eq!(
        runs.last(),
        Some(&1),
        "the accepted request was not drained: {runs:?}"
    );
}
