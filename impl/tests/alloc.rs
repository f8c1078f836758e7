//! The coalesced path allocates nothing: a counting global allocator sees no
//! allocation during 100 000 requests on keys whose cycles are running, in
//! either front end. It counts only the requesting thread's allocations —
//! the whole coalesced path runs on it — so a runner or runtime thread that
//! happens to allocate meanwhile (parking, a channel's first block) is not
//! mistaken for the request path.
//!
//! Before counting, each test makes two coalesced requests: the second is a
//! repeat, which gives the thread its memo for the coalescer (the memo, its
//! statistics counter, `thread_local`'s bucket) — once per thread and
//! coalescer, never per request.
#![cfg(not(loom))]

use std::sync::Arc;

use coalescer_fixtures::{CountingAllocator, Held, HeldAsync};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator::new();

/// Counts the allocations `f` makes on this thread.
fn allocations_of(f: impl FnOnce()) -> u64 {
    ALLOCATOR.allocations_on_this_thread(f)
}

/// A blocking coalescer whose cycles are held (`Held`) until released.
fn held_blocking() -> (coalescer::blocking::Coalescer<u64>, Arc<Held>) {
    let held = Arc::new(Held::default());
    let holding = Arc::clone(&held);
    let c = coalescer::blocking::Coalescer::new(move |_: &u64| holding.hold());
    (c, held)
}

/// Two coalesced requests: the thread's memo for this coalescer is made.
fn warm_up<T>(mut request: impl FnMut() -> T) {
    request();
    request();
}

#[test]
fn the_coalesced_path_allocates_nothing() {
    // Blocking: a key held running by a held cycle.
    let (c, held) = held_blocking();
    c.request(0).unwrap();
    held.wait_started();
    warm_up(|| c.request(0).unwrap());
    let blocking = allocations_of(|| {
        for _ in 0..100_000 {
            c.request(0).unwrap();
        }
    });
    held.release_all();
    c.shutdown();

    // Async: the same on a held async cycle, requests from a plain thread.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let held = Arc::new(HeldAsync::default());
    let holding = Arc::clone(&held);
    let c = rt.block_on(async move {
        coalescer::Coalescer::new(move |_: u64| {
            let holding = Arc::clone(&holding);
            async move { holding.hold().await } // never released: the drop aborts it
        })
    });
    c.request(0).unwrap();
    rt.block_on(held.wait_started());
    warm_up(|| c.request(0).unwrap());
    let asynchronous = allocations_of(|| {
        for _ in 0..100_000 {
            c.request(0).unwrap();
        }
    });
    drop(c);
    assert_eq!(
        (blocking, asynchronous),
        (0, 0),
        "allocations on the coalesced path"
    );
}

/// A memo that moves between two keys — each requested twice in a row, in
/// turn — reuses its mark: after the first rounds, no allocation at all.
/// (Unregistering the old mark hands it back; a leaked registration or a
/// fresh mark per move would allocate on every move.)
#[test]
fn a_memo_moving_between_keys_allocates_nothing() {
    let (c, held) = held_blocking();
    for key in [0, 1] {
        c.request(key).unwrap();
        held.wait_started();
    }
    let round = || {
        for key in [0, 1] {
            c.request(key).unwrap();
            c.request(key).unwrap();
        }
    };
    round();
    round();
    let moving = allocations_of(|| {
        for _ in 0..10_000 {
            round();
        }
    });
    held.release_all();
    c.shutdown();
    assert_eq!(moving, 0, "allocations while the memo moves between keys");
}
