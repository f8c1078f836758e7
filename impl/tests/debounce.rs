//! Debounce with a ceiling (INV-12): a cycle begins once its key has been
//! quiet for the debounce, or `max_wait` after the earliest request it
//! covers; requests during the wait fold into it; it applies to an idle
//! key's first cycle and to follow-ups, holds no permit of the limit, and
//! shutdown cuts it short. The async tests run on tokio's paused clock, so
//! every instant is exact; the blocking ones assert counts only.
#![cfg(not(loom))]

mod common;

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use coalescer::{blocking, Coalescer};
use common::{logged, Log};
use tokio::time::{sleep_until, Instant};

const MS: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);

/// Requests `key` at each of `at` (ms after `t0`).
async fn request_at<O: coalescer::CycleOutput>(
    c: &Coalescer<u32, std::collections::hash_map::RandomState, O>,
    t0: Instant,
    key: u32,
    at: impl IntoIterator<Item = u64>,
) {
    for ms in at {
        sleep_until(t0 + Duration::from_millis(ms)).await;
        c.request(key).unwrap();
    }
}

/// Each request restarts the quiet period: requests at 0, 50 and 120 ms
/// with a 100 ms debounce make one cycle, at exactly 220 ms.
#[tokio::test(start_paused = true)]
async fn inv12a_each_request_restarts_the_quiet_period() {
    let t0 = Instant::now();
    let (c, log) = logged(t0, Duration::ZERO, |b| b.debounce(100 * MS));
    request_at(&c, t0, 7, [0, 50, 120]).await;
    c.request_and_wait(7).await.unwrap(); // at 120 too: the same cycle
    assert_eq!(*log.lock().unwrap(), [(7, 220)]);
    c.shutdown().await;
}

/// A burst that never pauses still runs: requests every 40 ms for a second
/// with a 100 ms debounce and a 300 ms ceiling make cycles at 300 (the
/// first request at 0, plus 300), 620 (the first after 300 came at 320),
/// 940, and — the burst over — 1060, 100 ms after the last request.
#[tokio::test(start_paused = true)]
async fn inv12b_max_wait_caps_a_burst_that_never_pauses() {
    let t0 = Instant::now();
    let (c, log) = logged(t0, Duration::ZERO, |b| {
        b.debounce(100 * MS).max_wait(300 * MS)
    });
    request_at(&c, t0, 1, (0..=960).step_by(40)).await;
    sleep_until(t0 + 2_000 * MS).await;
    assert_eq!(
        *log.lock().unwrap(),
        [(1, 300), (1, 620), (1, 940), (1, 1060)]
    );
    c.shutdown().await;
}

/// A follow-up is debounced too: requests during a 50 ms cycle that began
/// at 100 (at 110 and 130) make one follow-up at 230, 100 ms after the last.
#[tokio::test(start_paused = true)]
async fn inv12c_a_follow_up_is_debounced_from_the_last_request() {
    let t0 = Instant::now();
    let (c, log) = logged(t0, 50 * MS, |b| b.debounce(100 * MS));
    request_at(&c, t0, 3, [0, 110, 130]).await;
    sleep_until(t0 + 1_000 * MS).await;
    assert_eq!(*log.lock().unwrap(), [(3, 100), (3, 230)]);
    c.shutdown().await;
}

/// The quiet period holds no permit: with a limit of 1, key 0 requested
/// every 50 ms (so never quiet) does not keep key 1, requested at 10, from
/// beginning at 110; shutdown then runs key 0 at once (at 1000).
#[tokio::test(start_paused = true)]
async fn inv12d_the_quiet_period_holds_no_permit_and_shutdown_cuts_it_short() {
    let t0 = Instant::now();
    let (c, log) = logged(t0, Duration::ZERO, |b| b.concurrency(1).debounce(100 * MS));
    let c = Arc::new(c);
    let hot = {
        let c = Arc::clone(&c);
        tokio::spawn(async move { request_at(&c, t0, 0, (0..=1_000).step_by(50)).await })
    };
    request_at(&c, t0, 1, [10]).await;
    hot.await.unwrap();
    c.shutdown().await;
    assert_eq!(*log.lock().unwrap(), [(1, 110), (0, 1_000)]);
}

/// Shutdown cuts an hour-long quiet period short on the blocking front
/// end: a burst of 100 requests makes one cycle, run inside the drain.
#[test]
fn inv12d_blocking_shutdown_cuts_the_quiet_period_short() {
    let cycles = Arc::new(AtomicU64::new(0));
    let n = Arc::clone(&cycles);
    let c = blocking::Coalescer::builder()
        .debounce(HOUR)
        .build(move |_key: &u32| {
            n.fetch_add(1, SeqCst);
        });
    for _ in 0..100 {
        c.request(5).unwrap();
    }
    c.shutdown();
    assert_eq!(cycles.load(SeqCst), 1);
}

/// The same with a limit: the blocking pool's timer thread holds the quiet
/// periods of 1 000 keys, and shutdown runs each key's one cycle.
#[test]
fn inv12d_blocking_with_a_limit_debounced_keys_are_drained() {
    let cycles = Arc::new(AtomicU64::new(0));
    let n = Arc::clone(&cycles);
    let c = blocking::Coalescer::builder()
        .concurrency(4)
        .debounce(HOUR)
        .build(move |_key: &u32| {
            n.fetch_add(1, SeqCst);
        });
    for _ in 0..3 {
        for key in 0..1_000 {
            c.request(key).unwrap();
        }
    }
    c.shutdown();
    assert_eq!(cycles.load(SeqCst), 1_000);
}

/// Debounce and `min_interval` meet: the later bound wins. A cycle at 100
/// (100 ms after the request at 0), a request at 150: its quiet period ends
/// at 250, the pace at 600, so the follow-up begins at 600.
#[tokio::test(start_paused = true)]
async fn inv12_with_min_interval_the_later_bound_wins() {
    let t0 = Instant::now();
    let (c, log) = logged(t0, Duration::ZERO, |b| {
        b.debounce(100 * MS).min_interval(500 * MS)
    });
    request_at(&c, t0, 2, [0, 150]).await;
    sleep_until(t0 + 2_000 * MS).await;
    assert_eq!(*log.lock().unwrap(), [(2, 100), (2, 600)]);
    c.shutdown().await;
}

/// A retry is not debounced: a cycle at 100 fails, its retry begins at its
/// delay (300), and the request at 250, during the delay, folds into it
/// without restarting a quiet period.
#[tokio::test(start_paused = true)]
async fn inv12_a_retry_begins_at_its_delay_not_after_a_quiet_period() {
    let t0 = Instant::now();
    let log = Log::default();
    let l = Arc::clone(&log);
    let c = Coalescer::builder()
        .debounce(100 * MS)
        .retry(coalescer::Backoff::exponential(200 * MS, HOUR))
        .build(move |key: u32| {
            let mut log = l.lock().unwrap();
            log.push((key, (Instant::now() - t0).as_millis()));
            std::future::ready(if log.len() == 1 { Err("first") } else { Ok(()) })
        });
    request_at(&c, t0, 4, [0, 250]).await;
    sleep_until(t0 + 2_000 * MS).await;
    assert_eq!(*log.lock().unwrap(), [(4, 100), (4, 300)]);
    c.shutdown().await;
}
