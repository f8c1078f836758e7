//! Delayed requests (INV-13): `request_after` is a deadline, not an extra
//! run. The first cycle of the key that begins after the call covers it;
//! if none begins sooner, it becomes a request at its deadline; the
//! earliest deadline wins; an idle key's delayed request costs no runner;
//! shutdown turns pending ones into requests inside the drain. The async
//! tests run on tokio's paused clock, so every instant is exact; the
//! blocking ones assert counts only.
#![cfg(not(loom))]

mod common;

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use coalescer::{blocking, Admission, Backoff, Closed, Coalescer};
use common::{logged, Log};
use tokio::time::{sleep_until, Instant};

const MS: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);

/// Sleeps until `ms` after `t0`.
async fn at(t0: Instant, ms: u64) {
    sleep_until(t0 + Duration::from_millis(ms)).await;
}

/// An idle key's delayed request starts its cycle at the deadline, and
/// until then costs a record, not a runner.
#[tokio::test(start_paused = true)]
async fn inv13a_an_idle_keys_delayed_request_runs_at_its_deadline() {
    let t0 = Instant::now();
    let (c, log) = logged(t0, Duration::ZERO, |b| b);
    assert_eq!(c.request_after(1, 100 * MS), Ok(Admission::Scheduled));
    assert_eq!(c.active_keys(), 0, "a delayed request started a runner");
    assert_eq!(c.stats().scheduled, 1);
    at(t0, 1_000).await;
    assert_eq!(*log.lock().unwrap(), [(1, 100)]);
    let stats = c.stats();
    assert_eq!((stats.delayed, stats.scheduled, stats.requests), (1, 0, 0));
    c.shutdown().await;
}

/// Several delayed requests keep one deadline, the earliest: deadlines at
/// 300, 100 and 200 make one cycle, at 100.
#[tokio::test(start_paused = true)]
async fn inv13b_the_earliest_deadline_wins_and_makes_one_cycle() {
    let t0 = Instant::now();
    let (c, log) = logged(t0, Duration::ZERO, |b| b);
    for delay in [300, 100, 200] {
        c.request_after(2, delay * MS).unwrap();
    }
    assert_eq!(c.stats().scheduled, 1, "one record per key");
    at(t0, 1_000).await;
    assert_eq!(*log.lock().unwrap(), [(2, 100)]);
    c.shutdown().await;
}

/// An immediate request's cycle covers a pending delayed one: the request
/// at 50 starts a cycle, and the deadline at 100 makes no second one.
#[tokio::test(start_paused = true)]
async fn inv13c_an_immediate_request_covers_a_pending_delayed_one() {
    let t0 = Instant::now();
    let (c, log) = logged(t0, 10 * MS, |b| b);
    assert_eq!(c.request_after(3, 100 * MS), Ok(Admission::Scheduled));
    at(t0, 50).await;
    assert_eq!(c.request(3), Ok(Admission::Started));
    at(t0, 1_000).await;
    assert_eq!(*log.lock().unwrap(), [(3, 50)]);
    assert_eq!(c.stats().scheduled, 0, "the covered record was not dropped");
    c.shutdown().await;
}

/// kubernetes#126027's race, on a running key: a delayed request at 10
/// (deadline 150) and an immediate one at 20, during a cycle 0..100. The
/// follow-up at 100 covers both; the deadline, falling due while that
/// follow-up runs, makes no third cycle.
#[tokio::test(start_paused = true)]
async fn inv13c_a_follow_up_covers_a_delayed_request_made_during_the_cycle() {
    let t0 = Instant::now();
    let (c, log) = logged(t0, 100 * MS, |b| b);
    c.request(4).unwrap();
    at(t0, 10).await;
    assert_eq!(c.request_after(4, 140 * MS), Ok(Admission::Coalesced));
    at(t0, 20).await;
    c.request(4).unwrap();
    at(t0, 1_000).await;
    assert_eq!(*log.lock().unwrap(), [(4, 0), (4, 100)]);
    c.shutdown().await;
}

/// A delayed request made during a cycle with nothing else owed: the key
/// goes idle when the cycle ends (at 30), and the deadline (100) starts a
/// fresh runner; an immediate request after the idle (here at 60) starts
/// it sooner, and then covers the delayed request.
#[tokio::test(start_paused = true)]
async fn inv13a_a_delayed_request_outlives_the_runner_it_was_made_on() {
    let t0 = Instant::now();
    let (c, log) = logged(t0, 30 * MS, |b| b);
    c.request(5).unwrap();
    c.request(6).unwrap();
    at(t0, 10).await;
    c.request_after(5, 90 * MS).unwrap();
    c.request_after(6, 90 * MS).unwrap();
    at(t0, 60).await;
    assert_eq!(c.active_keys(), 0, "both keys went idle at 30");
    assert_eq!(c.request(6), Ok(Admission::Started));
    at(t0, 1_000).await;
    let mut log = log.lock().unwrap().clone();
    log.sort_unstable();
    assert_eq!(log, [(5, 0), (5, 100), (6, 0), (6, 60)]);
    c.shutdown().await;
}

/// A delayed request made while a cycle is owed folds into it (no record):
/// the retry of a cycle that failed at 0 begins at its delay (500), and a
/// delayed request at 50 with a deadline at 150 is covered by it — the
/// deadline does not cut the backoff short, as an immediate request at 150
/// would not either.
#[tokio::test(start_paused = true)]
async fn inv13_a_delayed_request_on_a_key_in_backoff_is_covered_by_the_retry() {
    let t0 = Instant::now();
    let log = Log::default();
    let l = Arc::clone(&log);
    let c = Coalescer::builder()
        .retry(Backoff::exponential(500 * MS, HOUR))
        .build(move |key: u32| {
            let mut log = l.lock().unwrap();
            log.push((key, (Instant::now() - t0).as_millis()));
            std::future::ready(if log.len() == 1 { Err("first") } else { Ok(()) })
        });
    c.request(7).unwrap();
    at(t0, 50).await;
    assert_eq!(c.request_after(7, 100 * MS), Ok(Admission::Coalesced));
    assert_eq!(c.stats().scheduled, 0, "folded into the owed retry");
    at(t0, 2_000).await;
    assert_eq!(*log.lock().unwrap(), [(7, 0), (7, 500)]);
    c.shutdown().await;
}

/// Falling due while a `min_interval` pace holds the key, the delayed
/// request is an ordinary request: it joins the paced follow-up (500).
#[tokio::test(start_paused = true)]
async fn inv13_a_delayed_request_falling_due_during_a_pace_joins_the_follow_up() {
    let t0 = Instant::now();
    let (c, log) = logged(t0, Duration::ZERO, |b| b.min_interval(500 * MS));
    c.request(8).unwrap();
    at(t0, 10).await;
    assert_eq!(c.request_after(8, 90 * MS), Ok(Admission::Coalesced));
    at(t0, 2_000).await;
    assert_eq!(*log.lock().unwrap(), [(8, 0), (8, 500)]);
    c.shutdown().await;
}

/// With a debounce, the deadline is a request like any other: it starts
/// the quiet period (at 200), and the cycle begins once it is over (300).
#[tokio::test(start_paused = true)]
async fn inv13_a_delayed_request_is_debounced_from_its_deadline() {
    let t0 = Instant::now();
    let (c, log) = logged(t0, Duration::ZERO, |b| b.debounce(100 * MS));
    c.request_after(9, 200 * MS).unwrap();
    at(t0, 2_000).await;
    assert_eq!(*log.lock().unwrap(), [(9, 300)]);
    c.shutdown().await;
}

/// With a limit, a key whose deadline falls due while every permit is held
/// waits for one: key 1, due at 100, begins when key 0's cycle (0..500)
/// returns.
#[tokio::test(start_paused = true)]
async fn inv13_a_delayed_request_falling_due_waits_for_a_permit() {
    let t0 = Instant::now();
    let (c, log) = logged(t0, 500 * MS, |b| b.concurrency(1));
    c.request(0).unwrap();
    c.request_after(1, 100 * MS).unwrap();
    at(t0, 200).await;
    assert_eq!(
        c.stats().waiting,
        1,
        "key 1 is due and waits for the permit"
    );
    at(t0, 2_000).await;
    assert_eq!(*log.lock().unwrap(), [(0, 0), (1, 500)]);
    c.shutdown().await;
}

/// Shutdown turns every pending delayed request into a request inside the
/// drain (INV-5): three keys an hour away each run once, before
/// `shutdown` returns, and a delayed request after it is rejected.
#[tokio::test(start_paused = true)]
async fn inv13e_shutdown_runs_pending_delayed_requests_in_the_drain() {
    let t0 = Instant::now();
    let (c, log) = logged(t0, 10 * MS, |b| b);
    for key in 0..3 {
        c.request_after(key, HOUR).unwrap();
    }
    // One with a deadline too far to name: only shutdown covers it.
    c.request_after(3, Duration::MAX).unwrap();
    at(t0, 100).await;
    c.shutdown().await;
    let mut log = log.lock().unwrap().clone();
    log.sort_unstable();
    assert_eq!(log, [(0, 100), (1, 100), (2, 100), (3, 100)]);
    assert_eq!(c.stats().scheduled, 0);
    assert_eq!(c.request_after(0, MS), Err(Closed));
    assert_eq!(c.stats().rejected, 1);
}

/// A runtime without the time driver cannot wait for a deadline: the
/// request is made at once.
#[test]
fn inv13_without_the_time_driver_a_delayed_request_is_made_at_once() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let cycles = Arc::new(AtomicU64::new(0));
        let n = Arc::clone(&cycles);
        let c = Coalescer::new(move |_key: u32| {
            n.fetch_add(1, SeqCst);
            std::future::ready(())
        });
        assert_eq!(c.request_after(1, HOUR), Ok(Admission::Started));
        c.request_and_wait(1).await.unwrap();
        c.shutdown().await;
        assert!(cycles.load(SeqCst) >= 1);
    });
}

/// The blocking front end: a delayed request runs (on the timer thread's
/// deadline), and its cycle sees what the requester wrote before the call
/// (INV-4).
#[test]
fn inv13a_blocking_a_delayed_request_runs_and_sees_the_requesters_writes() {
    let written = Arc::new(AtomicU64::new(0));
    let (tx, rx) = std::sync::mpsc::channel();
    let w = Arc::clone(&written);
    let c = blocking::Coalescer::new(move |key: &u32| {
        tx.send((*key, w.load(SeqCst))).unwrap();
    });
    written.store(42, SeqCst);
    assert_eq!(c.request_after(1, 20 * MS), Ok(Admission::Scheduled));
    assert_eq!(rx.recv().unwrap(), (1, 42));
    c.shutdown();
    assert!(rx.try_recv().is_err(), "one delayed request ran twice");
}

/// The blocking front end: an immediate request covers an hour-long
/// delayed one, which neither runs at shutdown nor later.
#[test]
fn inv13c_blocking_an_immediate_request_covers_a_pending_delayed_one() {
    let cycles = Arc::new(AtomicU64::new(0));
    let n = Arc::clone(&cycles);
    let c = blocking::Coalescer::new(move |_key: &u32| {
        n.fetch_add(1, SeqCst);
    });
    c.request_after(1, HOUR).unwrap();
    c.request_and_wait(1).unwrap();
    assert_eq!(c.stats().scheduled, 0);
    c.shutdown();
    assert_eq!(cycles.load(SeqCst), 1);
}

/// The blocking front end with a limit: 1 000 idle keys with delayed
/// requests an hour away cost no runner and no pool thread, and shutdown
/// runs each once.
#[test]
fn inv13d_inv13e_blocking_idle_delayed_keys_cost_no_runner_and_are_drained() {
    let cycles = Arc::new(AtomicU64::new(0));
    let n = Arc::clone(&cycles);
    let c = blocking::Coalescer::builder()
        .concurrency(4)
        .build(move |_key: &u32| {
            n.fetch_add(1, SeqCst);
        });
    for key in 0..1_000 {
        assert_eq!(c.request_after(key, HOUR), Ok(Admission::Scheduled));
    }
    assert_eq!(c.active_keys(), 0);
    assert_eq!(c.stats().scheduled, 1_000);
    assert_eq!(cycles.load(SeqCst), 0);
    c.shutdown();
    assert_eq!(cycles.load(SeqCst), 1_000);
}
