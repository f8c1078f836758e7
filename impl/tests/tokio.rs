//! Ordinary tests of the async (tokio) front end, each run on a
//! `current_thread` and on a `multi_thread` runtime (compiled out under
//! loom). No test measures time: held cycles wait on the shared `HeldAsync`
//! fixture the test controls, and quiescence is `shutdown().await`.
#![cfg(not(loom))]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use coalescer::{Admission, Closed, Coalescer, RunError};
use tokio::sync::Notify;

#[macro_use]
mod common;
use coalescer_fixtures::HeldAsync;
use common::{quiet_injected_panics, PanicsWhenDropped, INJECTED};

on_both_runtimes!(
    one_request_runs_one_cycle,
    five_requests_during_a_blocked_cycle_make_exactly_two_cycles,
    sequential_request_and_wait_run_one_cycle_each,
    a_request_during_a_cycle_is_picked_up_by_a_later_cycle,
    state_is_cleared_after_a_drain,
    panics_before_after_an_await_and_in_drop_are_contained,
    shutdown_waits_for_a_blocked_then_panicking_cycle,
    different_keys_do_not_serialize,
    a_request_during_a_panicking_cycle_gets_its_follow_up,
    requests_after_shutdown_are_rejected_and_shutdown_is_idempotent,
    an_abandoned_request_and_wait_does_not_cancel_its_request,
    drop_without_shutdown_aborts_and_waiters_get_an_error,
    request_from_a_thread_outside_the_runtime_works,
    ten_thousand_distinct_keys_leave_no_active_key,
    concurrent_requests_never_lose_the_last_write_and_never_overlap,
    live_threads_repeating_requests_during_one_held_cycle_get_exactly_one_follow_up,
);

#[test]
fn debug_output_shows_the_configuration_the_counters_and_a_wait() {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(async {
            let builder = Coalescer::<u32>::builder().shards(3);
            let shown = format!("{builder:?}");
            assert!(
                shown.starts_with("Builder { name: \"coalescer\", hasher: ")
                    && shown.contains("shards: 3"),
                "{shown}"
            );
            let c = builder.build(|_: u32| async {});
            let wait = c.request_and_wait(1);
            assert_eq!(format!("{wait:?}"), "Wait { admission: Some(Started) }");
            wait.await.unwrap();
            c.shutdown().await;
            let shown = format!("{c:?}");
            assert!(
                shown.starts_with("Coalescer { stats: Stats {") && shown.contains("cycles: 1"),
                "{shown}"
            );
        });
}

type BoxCycle = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A counting cycle whose first cycle is held (`HeldAsync`) until the test
/// releases it.
fn held_first_cycle(
    count: &Arc<AtomicU32>,
) -> (
    impl Fn(u32) -> BoxCycle + Send + Sync + 'static,
    Arc<HeldAsync>,
) {
    let held = Arc::new(HeldAsync::default());
    let (count, holding) = (Arc::clone(count), Arc::clone(&held));
    let cycle = move |_: u32| {
        let n = count.fetch_add(1, SeqCst) + 1;
        let holding = Arc::clone(&holding);
        Box::pin(async move {
            if n == 1 {
                holding.hold().await;
            }
        }) as BoxCycle
    };
    (cycle, held)
}

async fn one_request_runs_one_cycle() {
    let count = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&count);
    let c = Coalescer::new(move |_: u32| {
        counted.fetch_add(1, SeqCst);
        async {}
    });
    assert_eq!(c.request(1), Ok(Admission::Started));
    c.shutdown().await;
    assert_eq!(count.load(SeqCst), 1);
    let stats = c.stats();
    assert_eq!((stats.requests, stats.started, stats.cycles), (1, 1, 1));
}

async fn five_requests_during_a_blocked_cycle_make_exactly_two_cycles() {
    let count = Arc::new(AtomicU32::new(0));
    let (cycle, held) = held_first_cycle(&count);
    let c = Coalescer::new(cycle);
    assert_eq!(c.request(7), Ok(Admission::Started));
    held.wait_started().await;
    for _ in 0..5 {
        assert_eq!(c.request(7), Ok(Admission::Coalesced));
    }
    let active = c.active_keys();
    held.release();
    c.shutdown().await;
    assert_eq!(active, 1, "one key active while its cycle is held");
    assert_eq!(c.active_keys(), 0);
    assert_eq!(count.load(SeqCst), 2);
    let stats = c.stats();
    assert_eq!((stats.requests, stats.coalesced, stats.cycles), (6, 5, 2));
}

async fn sequential_request_and_wait_run_one_cycle_each() {
    let count = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&count);
    let c = Coalescer::new(move |_: u32| {
        counted.fetch_add(1, SeqCst);
        async {}
    });
    for i in 1..=3 {
        assert_eq!(c.request_and_wait(3).await, Ok(()));
        assert!(count.load(SeqCst) >= i);
    }
    c.shutdown().await;
    assert_eq!(count.load(SeqCst), 3);
}

async fn a_request_during_a_cycle_is_picked_up_by_a_later_cycle() {
    let version = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(AtomicU64::new(0));
    let held = Arc::new(HeldAsync::default());
    let first = Arc::new(AtomicU32::new(0));
    let c = {
        let (version, seen, held) = (Arc::clone(&version), Arc::clone(&seen), Arc::clone(&held));
        Coalescer::new(move |_: u32| {
            seen.store(version.load(SeqCst), SeqCst);
            let is_first = first.fetch_add(1, SeqCst) == 0;
            let held = Arc::clone(&held);
            async move {
                if is_first {
                    held.hold().await;
                }
            }
        })
    };
    c.request(1).unwrap();
    held.wait_started().await;
    version.store(42, SeqCst);
    assert_eq!(c.request(1), Ok(Admission::Coalesced));
    held.release();
    c.shutdown().await;
    assert_eq!(seen.load(SeqCst), 42);
    assert_eq!(c.stats().cycles, 2);
}

async fn state_is_cleared_after_a_drain() {
    let c = Coalescer::new(|_: u32| async {});
    for _ in 0..100 {
        c.request_and_wait(9).await.unwrap();
    }
    c.shutdown().await;
    assert_eq!(c.active_keys(), 0);
    assert_eq!(c.stats().requests, 100);
}

/// A future that is ready at once and panics when dropped.
struct PanicsOnDrop;

impl Future for PanicsOnDrop {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        std::panic::panic_any(INJECTED);
    }
}

async fn panics_before_after_an_await_and_in_drop_are_contained() {
    quiet_injected_panics();
    let reports = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&reports);
    let c = Coalescer::builder()
        .panic_hook(move |r| {
            recorded
                .lock()
                .unwrap()
                .push((*r.key(), r.message().map(str::to_owned)));
        })
        .build(|key: u32| -> BoxCycle {
            match key {
                0 => std::panic::panic_any(INJECTED), // calling the cycle panics
                1 => Box::pin(async { std::panic::panic_any(INJECTED) }), // before an await
                2 => Box::pin(async {
                    tokio::task::yield_now().await;
                    std::panic::panic_any(INJECTED) // after an await
                }),
                3 => Box::pin(PanicsOnDrop), // while the finished future is dropped
                // A payload that panics again when the runner disposes of it.
                4 => Box::pin(async { std::panic::panic_any(PanicsWhenDropped) }),
                _ => Box::pin(async {}),
            }
        });
    for key in 0..5 {
        assert_eq!(
            c.request_and_wait(key).await,
            Err(RunError::Panicked),
            "key {key}"
        );
        // Not stuck: the key runs again.
        assert_eq!(
            c.request_and_wait(key).await,
            Err(RunError::Panicked),
            "key {key}"
        );
    }
    assert_eq!(c.request_and_wait(5).await, Ok(()));
    c.shutdown().await;
    let mut reports = reports.lock().unwrap().clone();
    reports.sort();
    let message = |k| (k < 4).then(|| INJECTED.to_owned());
    let expected: Vec<_> = (0..5)
        .flat_map(|k| [(k, message(k)), (k, message(k))])
        .collect();
    assert_eq!(reports, expected, "each panic reported exactly once");
    assert_eq!(c.stats().panics, 10);
}

async fn shutdown_waits_for_a_blocked_then_panicking_cycle() {
    quiet_injected_panics();
    let held = Arc::new(HeldAsync::default());
    let finished = Arc::new(AtomicU32::new(0));
    let c = {
        let (held, finished) = (Arc::clone(&held), Arc::clone(&finished));
        Arc::new(
            Coalescer::builder()
                .panic_hook(|_| {})
                // A cycle that never returns normally names its output:
                // nothing else says what it would have been.
                .build::<_, _, ()>(move |_: u32| {
                    let (held, finished) = (Arc::clone(&held), Arc::clone(&finished));
                    async move {
                        held.hold().await;
                        finished.store(1, SeqCst);
                        std::panic::panic_any(INJECTED);
                    }
                }),
        )
    };
    c.request(1).unwrap();
    held.wait_started().await;
    let shutting = {
        let c = Arc::clone(&c);
        tokio::spawn(async move { c.shutdown().await })
    };
    held.release();
    shutting.await.unwrap();
    assert_eq!(finished.load(SeqCst), 1);
    assert_eq!(c.stats().panics, 1);
    assert_eq!(c.active_keys(), 0);
}

async fn different_keys_do_not_serialize() {
    // Key 1's cycle waits until key 2's cycle has run.
    let two_done = Arc::new(Notify::new());
    let gate = Arc::clone(&two_done);
    let c = Coalescer::new(move |key: u32| {
        let gate = Arc::clone(&gate);
        async move {
            match key {
                1 => gate.notified().await,
                _ => gate.notify_one(),
            }
        }
    });
    c.request(1).unwrap();
    assert_eq!(c.request_and_wait(2).await, Ok(()));
    c.shutdown().await;
    assert_eq!(c.stats().cycles, 2);
}

async fn a_request_during_a_panicking_cycle_gets_its_follow_up() {
    quiet_injected_panics();
    let count = Arc::new(AtomicU32::new(0));
    let held = Arc::new(HeldAsync::default());
    let c = {
        let (count, held) = (Arc::clone(&count), Arc::clone(&held));
        Coalescer::builder()
            .panic_hook(|_| {})
            .build(move |_: u32| {
                let first = count.fetch_add(1, SeqCst) == 0;
                let held = Arc::clone(&held);
                async move {
                    if first {
                        held.hold().await;
                        std::panic::panic_any(INJECTED);
                    }
                }
            })
    };
    c.request(1).unwrap();
    held.wait_started().await;
    let follow_up = c.request_and_wait(1);
    held.release();
    assert_eq!(follow_up.await, Ok(()), "the follow-up did not complete");
    c.shutdown().await;
    assert_eq!(count.load(SeqCst), 2);
    assert_eq!(c.stats().panics, 1);
}

async fn requests_after_shutdown_are_rejected_and_shutdown_is_idempotent() {
    let c = Arc::new(Coalescer::new(|_: u32| async {}));
    c.request(1).unwrap();
    let (a, b) = (Arc::clone(&c), Arc::clone(&c));
    let concurrent = tokio::spawn(async move { a.shutdown().await });
    b.shutdown().await;
    concurrent.await.unwrap();
    c.shutdown().await;
    assert_eq!(c.stats().cycles, 1);
    assert_eq!(c.request(1), Err(Closed));
    assert_eq!(c.request_and_wait(1).await, Err(RunError::Closed));
    assert_eq!(c.stats().rejected, 2);
}

async fn an_abandoned_request_and_wait_does_not_cancel_its_request() {
    let count = Arc::new(AtomicU32::new(0));
    let (cycle, held) = held_first_cycle(&count);
    let c = Coalescer::new(cycle);
    c.request(5).unwrap();
    held.wait_started().await;
    // Made during the held cycle, then dropped without ever being polled.
    drop(c.request_and_wait(5));
    held.release();
    c.shutdown().await;
    assert_eq!(
        count.load(SeqCst),
        2,
        "the abandoned request's cycle did not run"
    );
}

async fn drop_without_shutdown_aborts_and_waiters_get_an_error() {
    let held = Arc::new(HeldAsync::default());
    let holding = Arc::clone(&held);
    let c = Coalescer::new(move |_: u32| {
        let holding = Arc::clone(&holding);
        async move { holding.hold().await } // never released
    });
    let running = c.request_and_wait(1); // covered by the cycle that never ends
    held.wait_started().await;
    let next = c.request_and_wait(1); // covered by a follow-up that never begins
    drop(c);
    assert_eq!(running.await, Err(RunError::Aborted));
    assert_eq!(next.await, Err(RunError::Aborted));
}

async fn request_from_a_thread_outside_the_runtime_works() {
    let count = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&count);
    let c = Arc::new(Coalescer::new(move |_: u32| {
        counted.fetch_add(1, SeqCst);
        async {}
    }));
    let outside = Arc::clone(&c);
    std::thread::spawn(move || {
        for key in 0..10 {
            outside.request(key).unwrap();
        }
    })
    .join()
    .unwrap();
    c.shutdown().await;
    assert_eq!(count.load(SeqCst), 10);
}

/// INV-7 with several live marking threads, on the async front end: each
/// of N threads outside the runtime requests one key 50 times during its
/// held first cycle (from the second request on, through its memo and its
/// own mark) and stays alive until the key is idle again. One follow-up
/// covers them all; a mark left set would run a third cycle.
async fn live_threads_repeating_requests_during_one_held_cycle_get_exactly_one_follow_up() {
    for threads in [2, 3, 4] {
        let count = Arc::new(AtomicU32::new(0));
        let (cycle, held) = held_first_cycle(&count);
        let c = Arc::new(Coalescer::new(cycle));
        assert_eq!(c.request(1), Ok(Admission::Started));
        held.wait_started().await;
        let (requested, idle) = (
            std::sync::mpsc::channel(),
            Arc::new(std::sync::Barrier::new(threads + 1)),
        );
        let requesters: Vec<_> = (0..threads)
            .map(|_| {
                let (c, requested, idle) = (Arc::clone(&c), requested.0.clone(), Arc::clone(&idle));
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        assert_eq!(c.request(1), Ok(Admission::Coalesced));
                    }
                    requested.send(()).unwrap();
                    idle.wait(); // alive, memo and mark kept, until the key is idle
                })
            })
            .collect();
        for _ in 0..threads {
            requested.1.recv().unwrap();
        }
        held.release();
        while c.active_keys() != 0 {
            tokio::task::yield_now().await;
        }
        idle.wait();
        for t in requesters {
            t.join().unwrap();
        }
        c.shutdown().await;
        assert_eq!(
            count.load(SeqCst),
            2,
            "{threads} live threads: one follow-up for all their requests"
        );
        assert_eq!(c.stats().requests, 1 + 50 * threads as u64);
    }
}

async fn ten_thousand_distinct_keys_leave_no_active_key() {
    let count = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&count);
    let c = Coalescer::new(move |_: u32| {
        counted.fetch_add(1, SeqCst);
        async {}
    });
    for key in 0..10_000 {
        c.request(key).unwrap();
    }
    c.shutdown().await;
    assert_eq!(c.active_keys(), 0);
    assert_eq!(count.load(SeqCst), 10_000);
}

async fn concurrent_requests_never_lose_the_last_write_and_never_overlap() {
    const KEYS: usize = 64;
    const TASKS: usize = 4;
    const WRITES: usize = 2_000;
    let versions: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let seen: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let running: Arc<Vec<AtomicUsize>> = Arc::new((0..KEYS).map(|_| AtomicUsize::new(0)).collect());
    let overlaps = Arc::new(AtomicUsize::new(0));
    let c = {
        let (versions, seen, running, overlaps) = (
            Arc::clone(&versions),
            Arc::clone(&seen),
            Arc::clone(&running),
            Arc::clone(&overlaps),
        );
        Arc::new(Coalescer::new(move |key: usize| {
            let (versions, seen, running, overlaps) = (
                Arc::clone(&versions),
                Arc::clone(&seen),
                Arc::clone(&running),
                Arc::clone(&overlaps),
            );
            async move {
                if running[key].fetch_add(1, SeqCst) != 0 {
                    overlaps.fetch_add(1, SeqCst);
                }
                let v = versions[key].load(SeqCst);
                tokio::task::yield_now().await;
                seen[key].store(v, SeqCst);
                running[key].fetch_sub(1, SeqCst);
            }
        }))
    };
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (c, versions) = (Arc::clone(&c), Arc::clone(&versions));
            tokio::spawn(async move {
                for i in 0..WRITES {
                    let key = (i * 7 + t * 13) % KEYS;
                    versions[key].fetch_add(1, SeqCst);
                    c.request(key).unwrap();
                    if i % 64 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    c.shutdown().await;
    assert_eq!(overlaps.load(SeqCst), 0, "two cycles of one key overlapped");
    for k in 0..KEYS {
        assert_eq!(
            seen[k].load(SeqCst),
            versions[k].load(SeqCst),
            "key {k}: the last write was not seen by a cycle that began after it"
        );
    }
    let stats = c.stats();
    assert_eq!(stats.requests, (TASKS * WRITES) as u64);
    assert_eq!(stats.requests, stats.started + stats.coalesced);
    assert_eq!(c.active_keys(), 0);
}
