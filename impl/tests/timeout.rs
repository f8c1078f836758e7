//! Timeouts: a cycle running longer than `timeout` has failed with
//! `TimedOut` — the async one cancelled at its `.await`, the blocking one
//! answered as timed out when it returns late — and, like any failure, is
//! retried by the policy or settled (the request during it gets its
//! follow-up). The async tests run on tokio's paused clock, so the deadline
//! is exact and takes no real time; the blocking ones only compare a sleep
//! with a much shorter timeout (or a quick cycle with an hour's).
#![cfg(not(loom))]

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use coalescer::{blocking, Backoff, Coalescer, Failure, RunError};
use tokio::time::{sleep, Instant};

const MS: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);

/// Sets its flag when dropped: shows that a cancelled cycle's future went.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

/// A cycle still running at its timeout is cancelled at its `.await`
/// (its future dropped) exactly at the deadline, and its waiter gets
/// `TimedOut`.
#[tokio::test(start_paused = true)]
async fn an_async_cycle_past_its_timeout_is_cancelled_and_times_out() {
    let dropped = Arc::new(AtomicBool::new(false));
    let ended: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let c = {
        let (dropped, ended) = (Arc::clone(&dropped), Arc::clone(&ended));
        Coalescer::builder()
            .timeout(1_000 * MS)
            .build(move |_: u32| {
                let guard = SetOnDrop(Arc::clone(&dropped));
                let ended = Arc::clone(&ended);
                async move {
                    let _guard = guard;
                    sleep(HOUR).await;
                    *ended.lock().unwrap() = Some(Instant::now());
                }
            })
    };
    let t0 = Instant::now();
    assert_eq!(c.request_and_wait(1).await, Err(RunError::TimedOut));
    assert_eq!(Instant::now() - t0, 1_000 * MS, "cancelled at the deadline");
    assert!(dropped.load(SeqCst), "the cycle's future was dropped");
    assert!(
        ended.lock().unwrap().is_none(),
        "the cycle ran on past its timeout"
    );
    c.shutdown().await;
    let stats = c.stats();
    assert_eq!((stats.cycles, stats.timeouts, stats.failures), (1, 1, 0));
}

/// A timed-out cycle is a failure the retry policy sees (`Failure::TimedOut`)
/// and retries: the retry succeeds and the waiter gets its value.
#[tokio::test(start_paused = true)]
async fn a_timed_out_cycle_is_retried() {
    let count = Arc::new(AtomicU32::new(0));
    let timed_out = Arc::new(AtomicU32::new(0));
    let c = {
        let (count, timed_out) = (Arc::clone(&count), Arc::clone(&timed_out));
        Coalescer::builder()
            .timeout(1_000 * MS)
            .retry(move |_: &u32, failure: &Failure<'_, String>, _: u32| {
                if matches!(failure, Failure::TimedOut) {
                    timed_out.fetch_add(1, SeqCst);
                }
                Some(100 * MS)
            })
            .build(move |_: u32| {
                let n = count.fetch_add(1, SeqCst) + 1;
                async move {
                    if n == 1 {
                        sleep(HOUR).await;
                    }
                    Ok::<u32, String>(n)
                }
            })
    };
    let t0 = Instant::now();
    assert_eq!(c.request_and_wait(1).await, Ok(2));
    assert_eq!(
        Instant::now() - t0,
        1_100 * MS,
        "the timeout, then the delay"
    );
    assert_eq!(timed_out.load(SeqCst), 1);
    c.shutdown().await;
    assert_eq!((c.stats().timeouts, c.stats().retries), (1, 1));
}

/// Without a policy, a timed-out cycle settles like any failure: the
/// request made while it ran gets its follow-up.
#[tokio::test(start_paused = true)]
async fn a_request_during_a_timed_out_cycle_gets_its_follow_up() {
    let count = Arc::new(AtomicU32::new(0));
    let c = {
        let count = Arc::clone(&count);
        Coalescer::builder()
            .timeout(1_000 * MS)
            .build(move |_: u32| {
                let n = count.fetch_add(1, SeqCst) + 1;
                async move {
                    if n == 1 {
                        sleep(HOUR).await;
                    }
                    Ok::<u32, String>(n)
                }
            })
    };
    let first = c.request_and_wait(1);
    sleep(10 * MS).await;
    let during = c.request_and_wait(1);
    assert_eq!(first.await, Err(RunError::TimedOut));
    assert_eq!(during.await, Ok(2));
    c.shutdown().await;
}

/// A cycle that ends well inside its timeout is not touched by it.
#[tokio::test(start_paused = true)]
async fn a_cycle_inside_its_timeout_completes() {
    let c = Coalescer::builder()
        .timeout(HOUR)
        .build(|key: u32| async move { Ok::<u32, String>(key * 2) });
    assert_eq!(c.request_and_wait(21).await, Ok(42));
    c.shutdown().await;
    assert_eq!(c.stats().timeouts, 0);
}

/// A blocking cycle cannot be cancelled: it runs on, and returning after
/// its timeout it has timed out all the same — its value dropped, its
/// waiter told `TimedOut`. A quick cycle under an hour's timeout completes.
#[test]
fn a_blocking_cycle_returning_after_its_timeout_has_timed_out() {
    let dropped = Arc::new(AtomicBool::new(false));
    let c = {
        let dropped = Arc::clone(&dropped);
        blocking::Coalescer::builder()
            .timeout(MS)
            .build(move |_: &u32| {
                std::thread::sleep(20 * MS);
                Ok::<_, String>(Arc::new(SetOnDrop(Arc::clone(&dropped))))
            })
    };
    assert!(matches!(c.request_and_wait(1), Err(RunError::TimedOut)));
    c.shutdown();
    assert!(dropped.load(SeqCst), "the late value was dropped");
    assert_eq!(c.stats().timeouts, 1);

    let quick = blocking::Coalescer::builder()
        .timeout(HOUR)
        .build(|key: &u32| Ok::<u32, String>(key + 1));
    assert_eq!(quick.request_and_wait(1), Ok(2));
}

/// A blocking timeout is retried like the async one: the first cycle
/// returns late for certain (it sleeps past the timeout); the retries are
/// quick, so one of them succeeds, and every cycle before it timed out.
#[test]
fn a_blocking_timed_out_cycle_is_retried() {
    let count = Arc::new(AtomicU32::new(0));
    let c = {
        let count = Arc::clone(&count);
        blocking::Coalescer::builder()
            .timeout(100 * MS)
            .retry(Backoff::exponential(MS, MS))
            .build(move |_: &u32| {
                let n = count.fetch_add(1, SeqCst) + 1;
                if n == 1 {
                    std::thread::sleep(150 * MS);
                }
                Ok::<u32, String>(n)
            })
    };
    let Ok(n) = c.request_and_wait(1) else {
        panic!("the retries never succeeded");
    };
    c.shutdown();
    assert!(n >= 2, "the late first cycle was not timed out");
    let stats = c.stats();
    assert_eq!(
        (stats.timeouts, stats.retries),
        (u64::from(n) - 1, u64::from(n) - 1)
    );
}
