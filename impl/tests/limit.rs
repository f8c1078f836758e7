//! The concurrency limit (INV-11): at most `n` cycles at once, permits in
//! the order keys became due, a key's permit given back after every cycle,
//! waits that hold no permit, a waiting key absorbing requests into one
//! cycle, and a drain that runs the waiting keys too, still `n` at once.
//! The async tests run on tokio's paused clock; the blocking ones hold
//! cycles with the fixtures' `Held` and assert orders and counts only.
#![cfg(not(loom))]

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coalescer::{blocking, Admission, Backoff, Coalescer};
use coalescer_fixtures::{Held, HeldAsync};
use tokio::time::{sleep, Instant};

const HOUR: Duration = Duration::from_secs(3600);

/// Cycles running now, and the most there ever were.
#[derive(Debug, Default)]
struct Gauge {
    now: AtomicU64,
    most: AtomicU64,
}

impl Gauge {
    fn enter(&self) {
        let now = self.now.fetch_add(1, SeqCst) + 1;
        self.most.fetch_max(now, SeqCst);
    }

    fn leave(&self) {
        self.now.fetch_sub(1, SeqCst);
    }

    fn most(&self) -> u64 {
        self.most.load(SeqCst)
    }
}

/// The keys, in the order their cycles began.
type Order = Arc<Mutex<Vec<u32>>>;

/// A storm of 10 000 keys, each requested three times, with a limit of 4:
/// the gauge inside the cycle never passes 4 (and reaches it), every key
/// runs, and no key runs more than once for requests that all came while
/// it was still waiting for a permit.
#[tokio::test(start_paused = true)]
async fn inv11a_the_limit_is_never_exceeded_under_a_storm_of_10_000_keys() {
    let gauge = Arc::new(Gauge::default());
    let cycles = Arc::new(AtomicU64::new(0));
    let (g, n) = (Arc::clone(&gauge), Arc::clone(&cycles));
    let c = Coalescer::builder().concurrency(4).build(move |_key: u32| {
        let (g, n) = (Arc::clone(&g), Arc::clone(&n));
        async move {
            g.enter();
            n.fetch_add(1, SeqCst);
            sleep(Duration::from_millis(1)).await;
            g.leave();
        }
    });
    for _ in 0..3 {
        for key in 0..10_000 {
            c.request(key).unwrap();
        }
    }
    let stats = c.stats();
    assert!(stats.waiting > 9_000, "keys wait for permits: {stats:?}");
    c.shutdown().await;
    assert_eq!(gauge.most(), 4, "at most 4 at once, and 4 were used");
    // Every request came before any cycle began (the runners first run
    // when the test awaits): one cycle per key, the waiting keys' repeated
    // requests folded into it.
    assert_eq!(cycles.load(SeqCst), 10_000);
    let stats = c.stats();
    assert_eq!((stats.running, stats.waiting), (0, 0), "{stats:?}");
}

/// With a limit of 1: keys get the permit in the order they became due,
/// and the hot key's follow-up, due when its cycle returned, waits behind
/// the keys already waiting (it cannot starve them). A waiting key's many
/// requests make one cycle.
#[tokio::test(start_paused = true)]
async fn inv11b_permits_go_in_the_order_keys_became_due_and_a_follow_up_queues_behind() {
    let held = Arc::new(HeldAsync::default());
    let order = Order::default();
    let (h, o) = (Arc::clone(&held), Arc::clone(&order));
    let c = Coalescer::builder().concurrency(1).build(move |key: u32| {
        let (h, o) = (Arc::clone(&h), Arc::clone(&o));
        async move {
            o.lock().unwrap().push(key);
            if key == 0 {
                h.hold().await;
            }
        }
    });
    assert_eq!(c.request(0), Ok(Admission::Started));
    held.wait_started().await;
    for key in [3, 1, 2] {
        assert_eq!(c.request(key), Ok(Admission::Started));
    }
    for _ in 0..100 {
        assert_eq!(c.request(1), Ok(Admission::Coalesced), "key 1 is waiting");
        assert_eq!(c.request(0), Ok(Admission::Coalesced), "key 0 is running");
    }
    let stats = c.stats();
    assert_eq!((stats.running, stats.waiting), (1, 3), "{stats:?}");
    held.release_all();
    c.shutdown().await;
    assert_eq!(*order.lock().unwrap(), [0, 3, 1, 2, 0]);
}

/// A key waiting out its `min_interval` or a retry delay holds no permit:
/// with a limit of 1, another key runs at once meanwhile.
#[tokio::test(start_paused = true)]
async fn inv11c_pacing_and_retry_waits_hold_no_permit() {
    let order = Order::default();
    let o = Arc::clone(&order);
    let paced = Coalescer::builder()
        .concurrency(1)
        .min_interval(HOUR)
        .build(move |key: u32| {
            o.lock().unwrap().push(key);
            async {}
        });
    let t0 = Instant::now();
    paced.request(0).unwrap();
    tokio::task::yield_now().await;
    paced.request(0).unwrap(); // its follow-up waits an hour
    paced.request_and_wait(1).await.unwrap();
    assert!(
        Instant::now() - t0 < HOUR,
        "key 1 did not wait for key 0's pace"
    );
    assert_eq!(*order.lock().unwrap(), [0, 1]);
    paced.shutdown().await;

    let tries = Arc::new(AtomicU64::new(0));
    let n = Arc::clone(&tries);
    let retried = Coalescer::builder()
        .concurrency(1)
        .retry(Backoff::exponential(HOUR, HOUR))
        .build(move |key: u32| {
            let fail = key == 0 && n.fetch_add(1, SeqCst) == 0;
            std::future::ready(if fail { Err("once") } else { Ok(()) })
        });
    let t0 = Instant::now();
    retried.request(0).unwrap();
    tokio::task::yield_now().await; // key 0 fails, waits an hour to retry
    retried.request_and_wait(1).await.unwrap();
    assert!(
        Instant::now() - t0 < HOUR,
        "key 1 did not wait for key 0's backoff"
    );
    retried.request_and_wait(0).await.unwrap();
    assert_eq!(tries.load(SeqCst), 2, "key 0's retry covered the waiter");
    retried.shutdown().await;
}

/// Shutdown with keys waiting for permits runs every one of them, still at
/// most the limit at once.
#[tokio::test(start_paused = true)]
async fn inv11d_shutdown_drains_the_waiting_keys_at_most_n_at_once() {
    let gauge = Arc::new(Gauge::default());
    let ran = Arc::new(Mutex::new(HashSet::new()));
    let (g, r) = (Arc::clone(&gauge), Arc::clone(&ran));
    let c = Coalescer::builder().concurrency(2).build(move |key: u32| {
        let (g, r) = (Arc::clone(&g), Arc::clone(&r));
        async move {
            g.enter();
            sleep(Duration::from_millis(5)).await;
            r.lock().unwrap().insert(key);
            g.leave();
        }
    });
    for key in 0..50 {
        c.request(key).unwrap();
    }
    c.shutdown().await;
    assert_eq!(ran.lock().unwrap().len(), 50);
    assert_eq!(gauge.most(), 2);
}

/// The blocking coalescer keeps the same order with a limit of 1.
#[test]
fn inv11b_blocking_permits_go_in_the_order_keys_became_due() {
    let held = Arc::new(Held::default());
    let order = Order::default();
    let (h, o) = (Arc::clone(&held), Arc::clone(&order));
    let c = blocking::Coalescer::builder()
        .concurrency(1)
        .build(move |key: &u32| {
            o.lock().unwrap().push(*key);
            if *key == 0 {
                h.hold();
            }
        });
    c.request(0).unwrap();
    held.wait_started();
    for key in [3, 1, 2] {
        assert_eq!(c.request(key), Ok(Admission::Started));
    }
    for _ in 0..100 {
        assert_eq!(c.request(1), Ok(Admission::Coalesced));
        assert_eq!(c.request(0), Ok(Admission::Coalesced));
    }
    let stats = c.stats();
    assert_eq!((stats.running, stats.waiting), (1, 3), "{stats:?}");
    held.release_all();
    c.shutdown();
    assert_eq!(*order.lock().unwrap(), [0, 3, 1, 2, 0]);
}

/// The blocking coalescer under a storm of 10 000 keys with a limit of 3:
/// never more than 3 cycles at once, every key runs, and the drain after
/// shutdown covers the keys still waiting.
#[test]
fn inv11a_blocking_the_limit_is_never_exceeded_under_a_storm() {
    let gauge = Arc::new(Gauge::default());
    let ran = Arc::new(Mutex::new(HashSet::new()));
    let (g, r) = (Arc::clone(&gauge), Arc::clone(&ran));
    let c = blocking::Coalescer::builder()
        .concurrency(3)
        .build(move |key: &u32| {
            g.enter();
            r.lock().unwrap().insert(*key);
            std::thread::yield_now();
            g.leave();
        });
    for key in 0..10_000 {
        c.request(key).unwrap();
    }
    c.shutdown();
    assert_eq!(ran.lock().unwrap().len(), 10_000);
    assert!(gauge.most() <= 3, "{} at once", gauge.most());
    assert_eq!(c.stats().running, 0);
}

/// A blocking key waiting out its retry delay holds no permit (and no
/// thread the others need): with a limit of 1, another key runs meanwhile;
/// shutdown then cuts the hour-long delay short.
#[test]
fn inv11c_blocking_a_retry_wait_holds_no_permit() {
    let tries = Arc::new(AtomicU64::new(0));
    let n = Arc::clone(&tries);
    let c = blocking::Coalescer::builder()
        .concurrency(1)
        .retry(Backoff::exponential(HOUR, HOUR))
        .build(move |key: &u32| {
            let fail = *key == 0 && n.fetch_add(1, SeqCst) == 0;
            if fail {
                Err("once")
            } else {
                Ok(())
            }
        });
    c.request(0).unwrap();
    while c.stats().failures == 0 {
        std::thread::yield_now();
    }
    c.request_and_wait(1).unwrap();
    c.shutdown();
    assert_eq!(tries.load(SeqCst), 2, "key 0's retry ran inside the drain");
}

/// A cycle past its timeout gives its permit back at the deadline: with a
/// limit of 1, the key waiting behind a cycle that never returns begins
/// exactly when that cycle is cancelled.
#[tokio::test(start_paused = true)]
async fn inv11_a_timed_out_cycle_gives_its_permit_back_at_the_deadline() {
    let began = Arc::new(Mutex::new(Vec::new()));
    let b = Arc::clone(&began);
    let c = Coalescer::builder()
        .concurrency(1)
        .timeout(Duration::from_secs(1))
        .build(move |key: u32| {
            b.lock().unwrap().push((key, Instant::now()));
            async move {
                if key == 0 {
                    std::future::pending::<()>().await;
                }
            }
        });
    let t0 = Instant::now();
    c.request(0).unwrap();
    c.request_and_wait(1).await.unwrap();
    let began = began.lock().unwrap().clone();
    assert_eq!(began, [(0, t0), (1, t0 + Duration::from_secs(1))]);
    c.shutdown().await;
}

/// Dropping the async coalescer with keys in line aborts them: their
/// waiters get `Aborted` (none hangs), and no cycle of theirs begins.
#[tokio::test(start_paused = true)]
async fn inv11_dropping_the_coalescer_with_keys_in_line_aborts_their_waiters() {
    let held = Arc::new(HeldAsync::default());
    let order = Order::default();
    let (h, o) = (Arc::clone(&held), Arc::clone(&order));
    let c = Coalescer::builder().concurrency(1).build(move |key: u32| {
        let (h, o) = (Arc::clone(&h), Arc::clone(&o));
        async move {
            o.lock().unwrap().push(key);
            h.hold().await;
        }
    });
    c.request(0).unwrap();
    held.wait_started().await;
    let waiters: Vec<_> = (1..=3).map(|key| c.request_and_wait(key)).collect();
    assert_eq!(c.stats().waiting, 3);
    drop(c);
    for waiter in waiters {
        assert_eq!(waiter.await, Err(coalescer::RunError::Aborted));
    }
    held.release_all();
    assert_eq!(*order.lock().unwrap(), [0]);
}
