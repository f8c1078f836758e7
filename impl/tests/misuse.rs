//! Misuse and bad input: each case ends in a documented outcome — a typed
//! error, or the caller's own panic — with no deadlock, no stranded request,
//! and the coalescer still usable for other keys.
#![cfg(not(loom))]

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coalescer::blocking;
use coalescer::{Admission, Closed, Coalescer, RunError};

mod common;
use coalescer_fixtures::{Held, HeldAsync};
use common::{quiet_injected_panics, INJECTED};

/// What a cycle saw of its calls: (key waited for, result).
type Outcomes = Vec<(u32, Result<(), RunError>)>;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Blocking: `request_and_wait` for the key whose cycle is running, from
/// inside that cycle, is refused with `OwnCycle` (it would wait for itself);
/// a plain `request` there is a follow-up; other keys can be waited for.
#[test]
fn request_and_wait_from_inside_its_own_cycle_is_an_error_not_a_deadlock() {
    let seen: Arc<Mutex<Outcomes>> = Arc::default();
    let c: Arc<Mutex<Option<Arc<blocking::Coalescer<u32>>>>> = Arc::default();
    let (log, me) = (Arc::clone(&seen), Arc::clone(&c));
    let cycles = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&cycles);
    let coalescer = Arc::new(blocking::Coalescer::new(move |key: &u32| {
        let n = counted.fetch_add(1, SeqCst);
        if *key == 1 && n == 0 {
            let c = me.lock().unwrap().clone().unwrap();
            log.lock().unwrap().push((1, c.request_and_wait(1)));
            log.lock().unwrap().push((2, c.request_and_wait(2)));
            assert_eq!(c.request(1), Ok(Admission::Coalesced));
        }
    }));
    *c.lock().unwrap() = Some(Arc::clone(&coalescer));
    coalescer.request_and_wait(1).unwrap();
    coalescer.shutdown();
    *c.lock().unwrap() = None;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, [(1, Err(RunError::OwnCycle)), (2, Ok(()))]);
    // Key 1: its first cycle, and the follow-up the plain request asked for.
    assert_eq!(cycles.load(SeqCst), 3);
}

/// Async: the same, from inside the cycle's future, before and after an
/// `.await`.
#[test]
fn async_request_and_wait_from_inside_its_own_cycle_is_an_error() {
    runtime().block_on(async {
        let me: Arc<Mutex<Option<Arc<Coalescer<u32>>>>> = Arc::default();
        let seen: Arc<Mutex<Vec<Result<(), RunError>>>> = Arc::default();
        let (handle, log) = (Arc::clone(&me), Arc::clone(&seen));
        let first = Arc::new(AtomicBool::new(true));
        let c = Arc::new(Coalescer::new(move |key: u32| {
            let (handle, log, first) = (Arc::clone(&handle), Arc::clone(&log), Arc::clone(&first));
            async move {
                if key == 1 && first.swap(false, SeqCst) {
                    let c = handle.lock().unwrap().clone().unwrap();
                    let before = c.request_and_wait(1).await;
                    tokio::task::yield_now().await;
                    let after = c.request_and_wait(1).await;
                    let other = c.request_and_wait(2).await;
                    log.lock().unwrap().extend([before, after, other]);
                }
            }
        }));
        *me.lock().unwrap() = Some(Arc::clone(&c));
        c.request_and_wait(1).await.unwrap();
        c.shutdown().await;
        *me.lock().unwrap() = None;
        assert_eq!(
            *seen.lock().unwrap(),
            [Err(RunError::OwnCycle), Err(RunError::OwnCycle), Ok(())]
        );
    });
}

/// Async: `shutdown().await` from inside a cycle closes and returns instead
/// of waiting for its own task; the drain still completes.
#[test]
fn async_shutdown_from_inside_a_cycle_does_not_deadlock() {
    runtime().block_on(async {
        let me: Arc<Mutex<Option<Arc<Coalescer<u32>>>>> = Arc::default();
        let handle = Arc::clone(&me);
        let c = Arc::new(Coalescer::new(move |_key: u32| {
            let handle = Arc::clone(&handle);
            async move {
                let c = handle.lock().unwrap().clone();
                if let Some(c) = c {
                    c.shutdown().await;
                    assert_eq!(c.request(9), Err(Closed));
                }
            }
        }));
        *me.lock().unwrap() = Some(Arc::clone(&c));
        assert_eq!(c.request_and_wait(1).await, Ok(()));
        *me.lock().unwrap() = None;
        c.shutdown().await;
        assert_eq!(c.active_keys(), 0);
        assert_eq!(c.request(1), Err(Closed));
    });
}

/// Async: the early return is for the coalescer's own cycles only. Awaited
/// from a cycle of *another* coalescer, `shutdown` waits for the drain as
/// usual: it returns only after the other's held cycle has finished. (A
/// `current_thread` runtime: a `shutdown` that returned at once would record
/// "not finished" before the test could release the held cycle.)
#[tokio::test(flavor = "current_thread")]
async fn async_shutdown_from_a_cycle_of_another_coalescer_waits_for_the_drain() {
    let held = Arc::new(HeldAsync::default());
    let finished = Arc::new(AtomicBool::new(false));
    let inner = {
        let (held, finished) = (Arc::clone(&held), Arc::clone(&finished));
        Arc::new(Coalescer::new(move |_: u32| {
            let (held, finished) = (Arc::clone(&held), Arc::clone(&finished));
            async move {
                held.hold().await;
                finished.store(true, SeqCst);
            }
        }))
    };
    inner.request(1).unwrap();
    held.wait_started().await;
    let calling = Arc::new(tokio::sync::Notify::new());
    let seen = Arc::new(Mutex::new(None));
    let outer = {
        let (inner, finished) = (Arc::clone(&inner), Arc::clone(&finished));
        let (calling, seen) = (Arc::clone(&calling), Arc::clone(&seen));
        Coalescer::new(move |_: u32| {
            let (inner, finished) = (Arc::clone(&inner), Arc::clone(&finished));
            let (calling, seen) = (Arc::clone(&calling), Arc::clone(&seen));
            async move {
                calling.notify_one();
                inner.shutdown().await;
                *seen.lock().unwrap() = Some(finished.load(SeqCst));
            }
        })
    };
    let covered = outer.request_and_wait(1);
    calling.notified().await; // the outer cycle is in `inner.shutdown()`
    held.release();
    assert_eq!(covered.await, Ok(()));
    outer.shutdown().await;
    assert_eq!(
        *seen.lock().unwrap(),
        Some(true),
        "shutdown returned before the other coalescer drained"
    );
}

/// Async INV-5, the abort path: dropping the coalescer while a cycle runs —
/// blocked in its synchronous part, where tokio's abort cannot reach the
/// task — leaves the follow-up that a request made meanwhile was due
/// unrun: the runner sees the abort before it begins another cycle.
#[test]
fn async_drop_during_a_cycle_begins_no_further_cycle() {
    let rt = runtime();
    let held = Arc::new(Held::default());
    let cycles = Arc::new(AtomicU32::new(0));
    let c = {
        let (held, cycles) = (Arc::clone(&held), Arc::clone(&cycles));
        rt.block_on(async move {
            Coalescer::new(move |_: u32| {
                if cycles.fetch_add(1, SeqCst) == 0 {
                    held.hold(); // blocks the worker thread inside the task's poll
                }
                async {}
            })
        })
    };
    c.request(1).unwrap();
    held.wait_started();
    assert_eq!(c.request(1), Ok(Admission::Coalesced), "a follow-up is due");
    drop(c);
    held.release();
    // The runner ends, and with it the last share of the cycle closure.
    while Arc::strong_count(&cycles) > 1 {
        std::thread::yield_now();
    }
    assert_eq!(cycles.load(SeqCst), 1, "a cycle began after the drop");
}

/// Blocking: a cycle that does not return within the timeout is reported by
/// key; the coalescer is closed; the stuck runner does not block `Drop`.
#[test]
fn shutdown_timeout_reports_the_keys_still_running() {
    let held = Arc::new(Held::default());
    let holding = Arc::clone(&held);
    let c = blocking::Coalescer::new(move |key: &u32| {
        if *key == 7 {
            holding.hold();
        }
    });
    c.request(7).unwrap();
    c.request_and_wait(8).unwrap();
    let err = c.shutdown_timeout(Duration::from_millis(20)).unwrap_err();
    assert_eq!(err.keys, [7]);
    assert_eq!(
        err.to_string(),
        "shutdown timed out with 1 key(s) still running a cycle"
    );
    assert_eq!(c.request(1), Err(Closed));
    drop(c); // must not join the stuck runner
    held.release_all(); // lets it finish in the background
}

/// Blocking: with nothing stuck, `shutdown_timeout` is a drain.
#[test]
fn shutdown_timeout_drains_like_shutdown() {
    let runs = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&runs);
    let c = blocking::Coalescer::new(move |_: &u32| {
        counted.fetch_add(1, SeqCst);
    });
    for k in 0..100 {
        c.request(k).unwrap();
    }
    assert_eq!(c.shutdown_timeout(Duration::from_secs(3600)), Ok(()));
    assert_eq!(runs.load(SeqCst), 100);
    assert_eq!(c.active_keys(), 0);
}

/// Async: a cycle that never completes is reported by key after the
/// timeout (paused clock: no real waiting); dropping then aborts it.
#[tokio::test(start_paused = true)]
async fn async_shutdown_timeout_reports_the_keys_still_running() {
    let c = Coalescer::new(|key: u32| async move {
        if key == 7 {
            std::future::pending::<()>().await;
        }
    });
    c.request(7).unwrap();
    c.request_and_wait(8).await.unwrap();
    let wait = c.request_and_wait(7);
    let err = c
        .shutdown_timeout(Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(err.keys, [7]);
    drop(c);
    assert_eq!(wait.await, Err(RunError::Aborted));
}

/// Async: with nothing stuck, `shutdown_timeout` drains and returns `Ok`.
#[tokio::test]
async fn async_shutdown_timeout_drains_like_shutdown() {
    let runs = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&runs);
    let c = Coalescer::new(move |_: u32| {
        counted.fetch_add(1, SeqCst);
        async {}
    });
    for k in 0..100 {
        c.request(k).unwrap();
    }
    assert_eq!(c.shutdown_timeout(Duration::from_secs(3600)).await, Ok(()));
    assert_eq!(runs.load(SeqCst), 100);
    assert_eq!(c.active_keys(), 0);
}

/// A key whose `Hash`, `Eq` or `Drop` panics, as the test says.
#[derive(Debug, Clone)]
struct BadKey {
    id: u32,
    hash_panics: bool,
    eq_panics: bool,
    drop_panics: bool,
}

impl BadKey {
    fn good(id: u32) -> Self {
        BadKey {
            id,
            hash_panics: false,
            eq_panics: false,
            drop_panics: false,
        }
    }
}

impl Hash for BadKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        if self.hash_panics {
            std::panic::panic_any(INJECTED);
        }
        self.id.hash(state);
    }
}

impl PartialEq for BadKey {
    fn eq(&self, other: &Self) -> bool {
        if self.eq_panics || other.eq_panics {
            std::panic::panic_any(INJECTED);
        }
        self.id == other.id
    }
}

impl Eq for BadKey {}

impl Drop for BadKey {
    fn drop(&mut self) {
        if self.drop_panics && !std::thread::panicking() {
            std::panic::panic_any(INJECTED);
        }
    }
}

/// Exercises good keys around a bad one: all requests for good keys are
/// served, and the coalescer drains to no active key.
fn survives_bad_keys(c: &blocking::Coalescer<BadKey>, runs: &AtomicUsize) {
    // Hash panics: reaches the caller, nothing recorded.
    let bad_hash = BadKey {
        hash_panics: true,
        ..BadKey::good(1)
    };
    assert!(catch_unwind(AssertUnwindSafe(|| c.request(bad_hash.clone()))).is_err());
    assert_eq!(c.request_and_wait(BadKey::good(2)), Ok(()));
    // Eq panics: the first request finds no slot (no comparison) and starts
    // a runner; the runner's reclamation compares, and must survive it.
    let bad_eq = BadKey {
        eq_panics: true,
        ..BadKey::good(3)
    };
    assert_eq!(c.request(bad_eq.clone()), Ok(Admission::Started));
    assert_eq!(c.request_and_wait(BadKey::good(4)), Ok(()));
    // Drop panics: in the runner and in the map's copy.
    let bad_drop = BadKey {
        drop_panics: true,
        ..BadKey::good(5)
    };
    let _ = catch_unwind(AssertUnwindSafe(|| c.request(bad_drop.clone())));
    assert_eq!(c.request_and_wait(BadKey::good(6)), Ok(()));
    c.shutdown();
    assert_eq!(c.active_keys(), 0, "a bad key's slot was not reclaimed");
    // Keys 2, 3, 4, 5, 6 ran (key 1 never got in).
    assert_eq!(runs.load(SeqCst), 5);
    std::mem::forget(bad_drop);
    std::mem::forget(bad_hash);
    std::mem::forget(bad_eq);
}

#[test]
fn keys_whose_hash_eq_or_drop_panic_do_not_break_the_coalescer() {
    quiet_injected_panics();
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&runs);
    let c = blocking::Coalescer::builder()
        .shards(1) // every key in one shard: the bad ones share it
        .build(move |_: &BadKey| {
            counted.fetch_add(1, SeqCst);
        });
    survives_bad_keys(&c, &runs);
}

/// A runtime that shuts down under the coalescer: waiters get `Aborted`
/// (their task was dropped), later requests get `Closed`, nothing hangs.
#[test]
fn a_runtime_shut_down_under_the_coalescer_closes_it() {
    let rt = runtime();
    let c = rt
        .block_on(async { Coalescer::new(|_: u32| async { std::future::pending::<()>().await }) });
    rt.block_on(async {
        c.request(1).unwrap();
        tokio::task::yield_now().await;
    });
    let wait = c.request_and_wait(1);
    // Dropping the runtime returns once its workers have dropped every task
    // (`shutdown_background` would not wait, and key 1 could still count
    // as active below: this test once failed that way).
    drop(rt);
    let block_on = |f| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    };
    assert_eq!(block_on(wait), Err(RunError::Aborted));
    // The next request's task is dropped by the dead runtime inside the
    // spawn: rejected, and the coalescer closes itself.
    assert_eq!(c.request(2), Err(Closed));
    assert_eq!(c.request(3), Err(Closed));
    assert_eq!(c.active_keys(), 0);
    drop(c);
}

/// A runtime that shuts down while one key's cycle still blocks a worker
/// thread: that key's slot outlives the runtime (its task cannot be dropped
/// mid-poll). Once a request has found the runtime gone, the coalescer is
/// closed for every key — a request for the lingering key is rejected, not
/// accepted into a runner that can never run its follow-up.
#[test]
fn after_the_runtime_is_gone_a_lingering_key_is_closed_too() {
    let rt = runtime();
    let held = Arc::new(Held::default());
    let holding = Arc::clone(&held);
    let c = rt.block_on(async {
        Coalescer::new(move |key: u32| {
            if key == 1 {
                // Blocks the worker thread itself, inside the task's poll.
                holding.hold();
            }
            async {}
        })
    });
    c.request(1).unwrap();
    held.wait_started();
    rt.shutdown_background();
    // Requests for other keys fail once the runtime stops taking tasks (a
    // few may still be taken, and dropped, while it shuts down).
    let mut key = 2;
    while c.request(key).is_ok() {
        key += 1;
        std::thread::yield_now();
    }
    let lingering = c.request(1);
    held.release_all();
    assert_eq!(
        lingering,
        Err(Closed),
        "the lingering key must be closed too"
    );
    drop(c);
}

/// A key whose every `Drop` panics, even while unwinding.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ExplodingKey(u32);

impl Drop for ExplodingKey {
    fn drop(&mut self) {
        std::panic::panic_any(INJECTED);
    }
}

/// A cycle that never finishes and panics when dropped.
struct PendingThenPanicsOnDrop;

impl std::future::Future for PendingThenPanicsOnDrop {
    type Output = ();
    fn poll(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        std::task::Poll::Pending
    }
}

impl Drop for PendingThenPanicsOnDrop {
    fn drop(&mut self) {
        std::panic::panic_any(INJECTED);
    }
}

/// Async: dropping the coalescer aborts a pending cycle whose future panics
/// when dropped, for a key whose every `Drop` panics. Each panic is
/// contained where it happens. Were the future's panic left to unwind, the
/// teardown that follows (dropping the map's copy of the key) would panic
/// while panicking, and the process would abort.
#[test]
fn an_aborted_cycle_that_panics_when_dropped_is_contained_before_teardown() {
    quiet_injected_panics();
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(async {
            let c = Coalescer::new(|key: ExplodingKey| {
                std::mem::forget(key); // the cycle's copy: not what is tested
                PendingThenPanicsOnDrop
            });
            let wait = c.request_and_wait(ExplodingKey(1));
            tokio::task::yield_now().await; // the runner polls its cycle
            drop(c);
            assert_eq!(wait.await, Err(RunError::Aborted));
        });
}

/// The hasher is the builder's: a custom `BuildHasher` places the keys (the
/// default, `RandomState`, is SipHash with per-process random keys).
#[test]
fn a_custom_hasher_is_used() {
    #[derive(Clone, Default)]
    struct Counting(Arc<AtomicUsize>, RandomState);
    impl BuildHasher for Counting {
        type Hasher = <RandomState as BuildHasher>::Hasher;
        fn build_hasher(&self) -> Self::Hasher {
            self.0.fetch_add(1, SeqCst);
            self.1.build_hasher()
        }
    }
    let hasher = Counting::default();
    let built = Arc::clone(&hasher.0);
    let c = blocking::Coalescer::builder()
        .hasher(hasher)
        .build(|_: &u32| {});
    c.request_and_wait(1).unwrap();
    c.shutdown();
    assert!(built.load(SeqCst) > 0);
}

/// Absurd shard counts are clamped, not an overflow or a huge allocation.
#[test]
fn any_shard_count_is_accepted() {
    for shards in [0, 1, 3, usize::MAX] {
        let c = blocking::Coalescer::builder()
            .shards(shards)
            .build(|_: &u32| {});
        c.request_and_wait(1).unwrap();
        c.shutdown();
    }
}

/// A key whose `Eq` requests again on the same coalescer, from inside the
/// memo's key check (the thread's memo is then in use): the inner request
/// goes through the map instead, and nothing panics.
#[test]
fn a_key_whose_eq_requests_again_does_not_trip_over_the_memo() {
    static COALESCER: std::sync::OnceLock<blocking::Coalescer<Reentrant>> =
        std::sync::OnceLock::new();
    std::thread_local! {
        static INSIDE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    /// Requests key 2 from inside its first comparison on this thread.
    #[derive(Debug, Clone)]
    struct Reentrant(u32);
    impl Hash for Reentrant {
        fn hash<H: Hasher>(&self, state: &mut H) {
            self.0.hash(state);
        }
    }
    impl PartialEq for Reentrant {
        fn eq(&self, other: &Self) -> bool {
            if !INSIDE.with(|i| i.replace(true)) {
                let inner = COALESCER.get().map(|c| c.request(Reentrant(2)));
                assert!(matches!(inner, Some(Ok(_))), "inner request: {inner:?}");
            }
            self.0 == other.0
        }
    }
    impl Eq for Reentrant {}
    let gate = Arc::new(Mutex::new(()));
    let held = gate.lock().unwrap();
    let blocked = Arc::clone(&gate);
    let c = COALESCER.get_or_init(|| {
        blocking::Coalescer::new(move |_: &Reentrant| drop(blocked.lock().unwrap()))
    });
    // Key 1: started, repeated (the memo takes it), then through the memo,
    // whose key check is the first comparison on this thread.
    INSIDE.with(|i| i.set(true));
    assert_eq!(c.request(Reentrant(1)), Ok(Admission::Started));
    assert_eq!(c.request(Reentrant(1)), Ok(Admission::Coalesced));
    INSIDE.with(|i| i.set(false));
    assert_eq!(c.request(Reentrant(1)), Ok(Admission::Coalesced));
    assert!(INSIDE.with(std::cell::Cell::get), "the key check ran");
    drop(held);
    c.shutdown();
    assert_eq!(c.stats().requests, 4, "three for key 1, one for key 2");
}
