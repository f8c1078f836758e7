//! Ordinary tests of the blocking front end (compiled out under loom).
//!
//! No test measures time: cycles that must be "running" or "blocked" are
//! held by the shared `Held` fixture (or a `Gate`) the test controls, and
//! quiescence is `shutdown`.
#![cfg(not(loom))]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier, Mutex};

use coalescer::blocking::Coalescer;
use coalescer::{Admission, Closed, RunError};

mod common;
use coalescer_fixtures::{Gate, Held};
use common::{quiet_injected_panics, PanicsWhenDropped, INJECTED};

/// Makes a cycle function counting into `count`; cycles numbered in
/// `held` (1-based) announce themselves and block until released (through
/// the returned `Held`).
fn held_cycle(
    count: &Arc<AtomicU32>,
    held: &'static [u32],
) -> (impl Fn(&u32) + Send + Sync + 'static, Arc<Held>) {
    let hold = Arc::new(Held::default());
    let holding = Arc::clone(&hold);
    let count = Arc::clone(count);
    let cycle = move |_: &u32| {
        let n = count.fetch_add(1, SeqCst) + 1;
        if held.contains(&n) {
            holding.hold();
        }
    };
    (cycle, hold)
}

#[test]
fn one_request_runs_one_cycle() {
    let count = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&count);
    let c = Coalescer::new(move |_: &u32| {
        counted.fetch_add(1, SeqCst);
    });
    assert_eq!(c.request(1), Ok(Admission::Started));
    c.shutdown();
    assert_eq!(count.load(SeqCst), 1);
    let stats = c.stats();
    assert_eq!((stats.requests, stats.started, stats.cycles), (1, 1, 1));
}

#[test]
fn five_requests_during_a_blocked_cycle_make_exactly_two_cycles() {
    let count = Arc::new(AtomicU32::new(0));
    let (cycle, held) = held_cycle(&count, &[1]);
    let c = Coalescer::new(cycle);
    assert_eq!(c.request(7), Ok(Admission::Started));
    assert_eq!(held.wait_started(), 1);
    for _ in 0..5 {
        assert_eq!(c.request(7), Ok(Admission::Coalesced));
    }
    held.release();
    c.shutdown();
    assert_eq!(count.load(SeqCst), 2);
    let stats = c.stats();
    assert_eq!((stats.requests, stats.coalesced, stats.cycles), (6, 5, 2));
}

#[test]
fn sequential_request_and_wait_run_one_cycle_each() {
    let count = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&count);
    let c = Coalescer::new(move |_: &u32| {
        counted.fetch_add(1, SeqCst);
    });
    for i in 1..=3 {
        assert_eq!(c.request_and_wait(3), Ok(()));
        // The cycle that covered this call has finished, and it began after
        // the call: so at least `i` cycles have run.
        assert!(count.load(SeqCst) >= i);
    }
    c.shutdown();
    assert_eq!(count.load(SeqCst), 3);
}

#[test]
fn a_request_during_a_cycle_is_picked_up_by_a_later_cycle() {
    let seen = Arc::new(AtomicU64::new(0));
    let version = Arc::new(AtomicU64::new(0));
    let held = Arc::new(Held::default());
    let holding = Arc::clone(&held);
    let (seen2, version2) = (Arc::clone(&seen), Arc::clone(&version));
    let first = AtomicBool::new(true);
    let c = Coalescer::new(move |_: &u32| {
        seen2.store(version2.load(SeqCst), SeqCst);
        if first.swap(false, SeqCst) {
            holding.hold();
        }
    });
    c.request(1).unwrap();
    held.wait_started();
    version.store(42, SeqCst); // written while cycle 1 runs, after it read
    assert_eq!(c.request(1), Ok(Admission::Coalesced));
    held.release();
    c.shutdown();
    assert_eq!(seen.load(SeqCst), 42);
    assert_eq!(c.stats().cycles, 2);
}

#[test]
fn state_is_cleared_after_a_drain_and_a_key_can_start_again() {
    let count = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&count);
    let c = Coalescer::new(move |_: &u32| {
        counted.fetch_add(1, SeqCst);
    });
    assert_eq!(c.request_and_wait(9), Ok(()));
    c.shutdown();
    assert_eq!(c.active_keys(), 0);

    let c = Coalescer::new(|_: &u32| {});
    // A key that went idle gets a fresh runner on its next request.
    for _ in 0..100 {
        c.request_and_wait(9).unwrap();
    }
    c.shutdown();
    assert_eq!(c.active_keys(), 0);
    let stats = c.stats();
    assert_eq!(stats.requests, 100);
    assert!(stats.started >= 1);
}

#[test]
fn a_panic_does_not_stick_and_is_reported_once() {
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
        .build(|key: &u32| {
            if *key == 1 {
                std::panic::panic_any(INJECTED);
            }
        });
    assert_eq!(c.request_and_wait(1), Err(RunError::Panicked));
    // The key is not stuck: the next request starts a cycle again.
    assert_eq!(c.request_and_wait(1), Err(RunError::Panicked));
    assert_eq!(c.request_and_wait(2), Ok(()));
    c.shutdown();
    assert_eq!(
        *reports.lock().unwrap(),
        vec![
            (1, Some(INJECTED.to_owned())),
            (1, Some(INJECTED.to_owned()))
        ]
    );
    let stats = c.stats();
    assert_eq!((stats.cycles, stats.panics), (3, 2));
}

#[test]
fn non_string_panic_payloads_are_contained_and_reported_without_a_message() {
    quiet_injected_panics();
    let messages = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&messages);
    let c = Coalescer::builder()
        .panic_hook(move |r| {
            let code = r.payload().downcast_ref::<u32>().copied();
            recorded
                .lock()
                .unwrap()
                .push((r.message().is_none(), code, format!("{r:?}")));
        })
        // A cycle that never returns normally names its output.
        .build::<_, ()>(|_: &u32| std::panic::panic_any(7u32));
    assert_eq!(c.request_and_wait(1), Err(RunError::Panicked));
    c.shutdown();
    let debug = "PanicReport { message: None, .. }".to_owned();
    assert_eq!(*messages.lock().unwrap(), vec![(true, Some(7), debug)]);
}

#[test]
fn a_payload_that_panics_when_dropped_is_contained() {
    // The runner reports the payload, then drops it: that drop panics again,
    // and must not take the runner down with the key's waiter unresolved.
    quiet_injected_panics();
    let reports = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&reports);
    let c = Coalescer::builder()
        .panic_hook(move |_| {
            counted.fetch_add(1, SeqCst);
        })
        .build::<_, ()>(|_: &u32| std::panic::panic_any(PanicsWhenDropped));
    assert_eq!(c.request_and_wait(1), Err(RunError::Panicked));
    assert_eq!(c.request_and_wait(1), Err(RunError::Panicked), "not stuck");
    c.shutdown();
    assert_eq!(reports.load(SeqCst), 2);
    assert_eq!(c.stats().panics, 2);
}

#[test]
fn a_panicking_hook_is_contained() {
    quiet_injected_panics();
    let c = Coalescer::builder()
        .panic_hook(|_| std::panic::panic_any(INJECTED))
        .build(|key: &u32| {
            if *key == 1 {
                std::panic::panic_any(INJECTED);
            }
        });
    assert_eq!(c.request_and_wait(1), Err(RunError::Panicked));
    assert_eq!(c.request_and_wait(2), Ok(()));
    c.shutdown();
    assert_eq!(c.stats().panics, 1);
}

#[test]
fn shutdown_waits_for_a_blocked_then_panicking_cycle() {
    quiet_injected_panics();
    let held = Arc::new(Held::default());
    let holding = Arc::clone(&held);
    let finished = Arc::new(AtomicBool::new(false));
    let finished2 = Arc::clone(&finished);
    let c = Arc::new(
        Coalescer::builder()
            .panic_hook(|_| {})
            .build::<_, ()>(move |_: &u32| {
                holding.hold();
                finished2.store(true, SeqCst);
                std::panic::panic_any(INJECTED);
            }),
    );
    c.request(1).unwrap();
    held.wait_started();
    let shutting = {
        let c = Arc::clone(&c);
        std::thread::spawn(move || {
            c.shutdown();
        })
    };
    // Shutdown cannot return while the cycle is held; release it so it
    // panics, then shutdown must have waited for that.
    held.release();
    shutting.join().unwrap();
    assert!(finished.load(SeqCst));
    assert_eq!(c.stats().panics, 1);
    assert_eq!(c.active_keys(), 0);
}

#[test]
fn different_keys_do_not_serialize() {
    // Key 1's cycle is held until key 2's cycle has run: if keys shared a
    // runner or a lock across cycles, this would deadlock.
    let two_done = Arc::new(Gate::default());
    let gate = Arc::clone(&two_done);
    let c = Coalescer::new(move |key: &u32| match key {
        1 => gate.wait(),
        _ => gate.open(),
    });
    c.request(1).unwrap();
    assert_eq!(c.request_and_wait(2), Ok(()));
    c.shutdown();
    assert_eq!(c.stats().cycles, 2);
}

/// Hashes every key to the same value: keys then differ only by `Eq`.
#[derive(Clone, Default)]
struct Colliding;

impl std::hash::BuildHasher for Colliding {
    type Hasher = Constant;
    fn build_hasher(&self) -> Constant {
        Constant
    }
}

struct Constant;

impl std::hash::Hasher for Constant {
    fn finish(&self) -> u64 {
        0x5eed
    }
    fn write(&mut self, _: &[u8]) {}
}

#[test]
fn keys_whose_hashes_collide_stay_separate() {
    // Key 1's cycle is held; key 2 has the same hash (same shard, same
    // bucket). A lookup that matched on the hash alone, or compared keys
    // wrongly, would fold key 2's request into key 1's slot: `Coalesced`, and
    // no cycle would ever run for key 2.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let held = Arc::new(Held::default());
    let holding = Arc::clone(&held);
    let record = Arc::clone(&seen);
    let c = Coalescer::builder()
        .hasher(Colliding)
        .build(move |key: &u32| {
            record.lock().unwrap().push(*key);
            if *key == 1 {
                holding.hold();
            }
        });
    let first = c.request(1);
    held.wait_started();
    let other = c.request(2);
    let again = c.request(1);
    // Release key 1's cycle and its follow-up before asserting: a failed
    // assertion must fail the test, not hang it in `Drop`'s drain.
    held.release();
    held.release();
    c.shutdown();
    assert_eq!(
        (first, other, again),
        (
            Ok(Admission::Started),
            Ok(Admission::Started),
            Ok(Admission::Coalesced)
        )
    );
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_unstable();
    assert_eq!(seen, [1, 1, 2], "cycles run per key");
}

#[test]
fn debug_output_shows_the_configuration_and_the_counters() {
    let builder = Coalescer::<u32>::builder()
        .shards(3)
        .min_interval(std::time::Duration::from_millis(5));
    let shown = format!("{builder:?}");
    assert!(
        shown.starts_with("Builder { name: \"coalescer\", hasher: ")
            && shown.contains("shards: 3")
            && shown.contains("min_interval: 5ms"),
        "{shown}"
    );
    let c = builder.build(|_: &u32| {});
    c.request_and_wait(1).unwrap();
    c.shutdown();
    let shown = format!("{c:?}");
    assert!(
        shown.starts_with("Coalescer { stats: Stats {") && shown.contains("cycles: 1"),
        "{shown}"
    );
}

#[test]
fn drop_without_shutdown_waits_for_the_running_cycle() {
    // INV-5: dropping the coalescer drains and joins like `shutdown`. The
    // cycle outlasts the drop call by a wide margin, so a `Drop` that did
    // not join would return while it still runs. (The sleep only widens
    // that window; nothing here asserts a duration.)
    let finished = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&finished);
    let held = Arc::new(Held::default());
    let holding = Arc::clone(&held);
    let c = Coalescer::new(move |_: &u32| {
        holding.hold();
        std::thread::sleep(std::time::Duration::from_millis(50));
        seen.store(true, SeqCst);
    });
    c.request(1).unwrap();
    held.wait_started();
    held.release();
    drop(c);
    assert!(
        finished.load(SeqCst),
        "Drop returned while a cycle still ran"
    );
}

#[test]
fn a_request_during_a_panicking_cycle_gets_its_follow_up() {
    quiet_injected_panics();
    let count = Arc::new(AtomicU32::new(0));
    let held = Arc::new(Held::default());
    let holding = Arc::clone(&held);
    let counted = Arc::clone(&count);
    let c = Coalescer::builder()
        .panic_hook(|_| {})
        .build(move |_: &u32| {
            if counted.fetch_add(1, SeqCst) == 0 {
                holding.hold();
                std::panic::panic_any(INJECTED);
            }
        });
    c.request(1).unwrap();
    held.wait_started();
    assert_eq!(c.request(1), Ok(Admission::Coalesced));
    held.release();
    c.shutdown();
    assert_eq!(count.load(SeqCst), 2, "the follow-up did not run");
    let stats = c.stats();
    assert_eq!((stats.cycles, stats.panics), (2, 1));
}

#[test]
fn requests_after_shutdown_are_rejected_and_shutdown_is_idempotent() {
    let c = Coalescer::new(|_: &u32| {});
    c.request(1).unwrap();
    c.shutdown();
    c.shutdown();
    assert_eq!(c.request(1), Err(Closed));
    assert_eq!(c.request_and_wait(1), Err(RunError::Closed));
    let stats = c.stats();
    assert_eq!((stats.requests, stats.rejected, stats.cycles), (1, 2, 1));
    assert!(!Closed.to_string().is_empty());
    assert!(RunError::<std::convert::Infallible>::Panicked
        .to_string()
        .contains("panicked"));
}

#[test]
fn shutdown_from_inside_a_cycle_does_not_deadlock() {
    let slot: Arc<Mutex<Option<Arc<Coalescer<u32>>>>> = Arc::new(Mutex::new(None));
    let inside = Arc::clone(&slot);
    let closed_inside = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&closed_inside);
    let c = Arc::new(Coalescer::new(move |_: &u32| {
        let me = inside.lock().unwrap().clone();
        if let Some(me) = me {
            me.shutdown();
            flag.store(me.request(2) == Err(Closed), SeqCst);
        }
    }));
    *slot.lock().unwrap() = Some(Arc::clone(&c));
    assert_eq!(c.request_and_wait(1), Ok(()));
    assert!(closed_inside.load(SeqCst));
    // Break the reference cycle, then the last drop joins the runner.
    slot.lock().unwrap().take();
    c.shutdown();
    assert_eq!(c.active_keys(), 0);
}

#[test]
fn ten_thousand_distinct_keys_leave_no_active_key() {
    let count = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&count);
    let c = Coalescer::new(move |_: &u32| {
        counted.fetch_add(1, SeqCst);
    });
    for key in 0..10_000 {
        c.request(key).unwrap();
    }
    c.shutdown();
    assert_eq!(c.active_keys(), 0);
    assert_eq!(count.load(SeqCst), 10_000);
}

/// Many threads, many keys: every key's last write is seen by a cycle that
/// began after it, and no two cycles of a key overlap.
#[test]
fn concurrent_requests_never_lose_the_last_write_and_never_overlap() {
    const KEYS: usize = 64;
    const THREADS: usize = 4;
    const WRITES: usize = 5_000;
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
        Arc::new(Coalescer::new(move |key: &usize| {
            if running[*key].fetch_add(1, SeqCst) != 0 {
                overlaps.fetch_add(1, SeqCst);
            }
            seen[*key].store(versions[*key].load(SeqCst), SeqCst);
            std::thread::yield_now();
            running[*key].fetch_sub(1, SeqCst);
        }))
    };
    let barrier = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (c, versions, barrier) =
                (Arc::clone(&c), Arc::clone(&versions), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                for i in 0..WRITES {
                    let key = (i * 7 + t * 13) % KEYS;
                    versions[key].fetch_add(1, SeqCst);
                    c.request(key).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    c.shutdown();
    assert_eq!(overlaps.load(SeqCst), 0, "two cycles of one key overlapped");
    let lost: HashMap<usize, (u64, u64)> = (0..KEYS)
        .map(|k| (k, (versions[k].load(SeqCst), seen[k].load(SeqCst))))
        .filter(|(_, (v, s))| v != s)
        .collect();
    assert!(
        lost.is_empty(),
        "keys whose last write no cycle saw: {lost:?}"
    );
    let stats = c.stats();
    assert_eq!(stats.requests, (THREADS * WRITES) as u64);
    assert_eq!(stats.requests, stats.started + stats.coalesced);
    assert!(stats.cycles <= stats.requests);
    assert_eq!(c.active_keys(), 0);
}

/// INV-7 with several live marking threads: each of N threads requests one
/// key 50 times during one held cycle (from its second request on, through
/// its memo and its own mark) and stays alive until the key is idle again,
/// so no mark is handed back as a plain request when a thread exits. Every
/// one of those requests is covered by the one follow-up; a cycle that
/// left any mark set would run a third cycle that covers nothing.
#[test]
fn live_threads_repeating_requests_during_one_held_cycle_get_exactly_one_follow_up() {
    for threads in [2, 3, 4] {
        let (cycle, held, cycles) = blocking_key();
        let c = Coalescer::new(cycle);
        assert_eq!(c.request(1), Ok(Admission::Started));
        held.wait_started();
        let (requested, idle) = (Barrier::new(threads + 1), Barrier::new(threads + 1));
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    for _ in 0..50 {
                        assert_eq!(c.request(1), Ok(Admission::Coalesced));
                    }
                    requested.wait();
                    idle.wait(); // alive, memo and mark kept, until the key is idle
                });
            }
            requested.wait();
            held.release_all();
            while c.active_keys() != 0 {
                std::thread::yield_now();
            }
            idle.wait();
        });
        c.shutdown();
        assert_eq!(
            cycles.load(SeqCst),
            2,
            "{threads} live threads: one follow-up for all their requests"
        );
        assert_eq!(c.stats().requests, 1 + 50 * threads as u64);
    }
}

/// A key whose cycles block until the test releases them, one release per
/// cycle, and announce each start.
fn blocking_key() -> (
    impl Fn(&u32) + Send + Sync + 'static,
    Arc<Held>,
    Arc<AtomicU32>,
) {
    let held = Arc::new(Held::default());
    let holding = Arc::clone(&held);
    let cycles = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&cycles);
    let cycle = move |key: &u32| {
        if *key == 1 {
            counted.fetch_add(1, SeqCst);
            holding.hold();
        }
    };
    (cycle, held, cycles)
}

/// A thread that requests one key again and again goes through its memo and
/// mark after the second request: every request is still counted, still
/// coalesced into exactly one follow-up (INV-7), and once the key is idle
/// the next request starts a runner again (the memo's slot is dead).
#[test]
fn repeated_requests_through_the_memo_coalesce_and_count() {
    let (cycle, held, cycles) = blocking_key();
    let c = Coalescer::new(cycle);
    assert_eq!(c.request(1), Ok(Admission::Started));
    held.wait_started();
    for _ in 0..1000 {
        assert_eq!(c.request(1), Ok(Admission::Coalesced));
    }
    held.release();
    held.wait_started();
    held.release();
    // Quiescent: wait for the key to go idle without `shutdown`.
    while c.active_keys() != 0 {
        std::thread::yield_now();
    }
    assert_eq!(cycles.load(SeqCst), 2, "one follow-up for 1000 requests");
    let stats = c.stats();
    assert_eq!(
        (stats.requests, stats.started, stats.coalesced),
        (1001, 1, 1000)
    );
    assert_eq!(
        c.request(1),
        Ok(Admission::Started),
        "the memo's slot is dead"
    );
    held.wait_started();
    held.release();
    c.shutdown();
    assert_eq!(cycles.load(SeqCst), 3);
}

/// INV-5 on the memo path, which reads `closed` without a shard lock: once a
/// thread has seen the coalescer closed, its request through its memo is
/// rejected too, even though the memoized slot is still live (its cycle is
/// held, so `shutdown` is still draining).
#[test]
fn a_request_through_the_memo_after_close_began_is_rejected() {
    let (cycle, held, _) = blocking_key();
    let c = Arc::new(Coalescer::new(cycle));
    assert_eq!(c.request(1), Ok(Admission::Started));
    held.wait_started();
    assert_eq!(c.request(1), Ok(Admission::Coalesced));
    assert_eq!(c.request(1), Ok(Admission::Coalesced), "through the memo");
    let shutting = {
        let c = Arc::clone(&c);
        std::thread::spawn(move || c.shutdown())
    };
    // Another thread (so this thread's memo stays on key 1) requests key 2
    // through the map until it sees the close; this thread learns it from
    // that thread, so its own request happens after the close began.
    let closed = {
        let c = Arc::clone(&c);
        std::thread::spawn(move || {
            while c.request(2) != Err(Closed) {
                std::thread::yield_now();
            }
        })
    };
    closed.join().unwrap();
    let after_close = c.request(1);
    held.release();
    held.wait_started();
    held.release();
    shutting.join().unwrap();
    assert_eq!(after_close, Err(Closed));
}

/// INV-6 with memos: a thread's memo keeps at most one key (and its slot)
/// per coalescer, whatever the number of keys, and dropping the coalescer
/// frees it — no key outlives the coalescer.
#[test]
fn memos_keep_at_most_one_key_per_thread_and_die_with_the_coalescer() {
    /// A key that holds a share of `alive` for as long as it exists.
    #[derive(Debug, Clone)]
    struct Tracked(
        u32,
        #[allow(dead_code, reason = "held, never read")] Arc<()>,
    );
    impl PartialEq for Tracked {
        fn eq(&self, other: &Self) -> bool {
            self.0 == other.0
        }
    }
    impl Eq for Tracked {}
    impl std::hash::Hash for Tracked {
        fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
            self.0.hash(state);
        }
    }
    let alive = Arc::new(());
    let gate = Arc::new(Mutex::new(()));
    let held = gate.lock().unwrap();
    let blocked = Arc::clone(&gate);
    let c = Coalescer::new(move |_: &Tracked| drop(blocked.lock().unwrap()));
    for k in 0..100 {
        for _ in 0..3 {
            let _ = c.request(Tracked(k, Arc::clone(&alive)));
        }
    }
    drop(held);
    c.shutdown();
    // Quiescent: the map holds nothing; this thread's memo holds one key.
    assert_eq!(c.active_keys(), 0);
    assert!(
        Arc::strong_count(&alive) <= 2,
        "keys kept: {}",
        Arc::strong_count(&alive) - 1
    );
    drop(c);
    assert_eq!(Arc::strong_count(&alive), 1, "a key outlived its coalescer");
}

/// What the memo is for: once a thread has requested a key twice in a row,
/// its further requests for that key skip the map — the key is not even
/// hashed again.
#[test]
fn a_repeated_key_is_hashed_only_until_the_memo_holds_it() {
    static HASHED: AtomicUsize = AtomicUsize::new(0);
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Counted(u32);
    impl std::hash::Hash for Counted {
        fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
            HASHED.fetch_add(1, SeqCst);
            self.0.hash(state);
        }
    }
    let gate = Arc::new(Mutex::new(()));
    let held = gate.lock().unwrap();
    let blocked = Arc::clone(&gate);
    let c = Arc::new(Coalescer::new(move |_: &Counted| {
        drop(blocked.lock().unwrap());
    }));
    // Another thread starts the key, so this thread's first request for it
    // is already coalesced: it is not yet a repeat, and must not be
    // remembered.
    let starter = Arc::clone(&c);
    let started = std::thread::spawn(move || starter.request(Counted(7)));
    assert_eq!(started.join().unwrap(), Ok(Admission::Started));
    for _ in 0..100 {
        let _ = c.request(Counted(7));
    }
    let hashed = HASHED.load(SeqCst);
    drop(held);
    c.shutdown();
    assert_eq!(
        hashed, 3,
        "the starting request; then this thread's first, and the repeat that made the memo"
    );
    assert_eq!(c.stats().requests, 101);
}

/// Two threads, each with the key in its memo, request it through their
/// marks during the same held cycle (no `PENDING`, two marks set when the
/// runner goes idle): the runner's mark check sees both, revives the slot,
/// and exactly one follow-up covers them (INV-2, INV-7).
#[test]
fn two_marked_requests_during_one_cycle_get_one_follow_up() {
    let (cycle, held, cycles) = blocking_key();
    let c = Arc::new(Coalescer::new(cycle));
    assert_eq!(c.request(1), Ok(Admission::Started));
    held.wait_started();
    // Each thread requests twice while cycle 1 is held: the repeat makes its
    // memo (and sets `PENDING`: cycle 2 follows).
    let barrier = Arc::new(Barrier::new(3));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (c, barrier) = (Arc::clone(&c), Arc::clone(&barrier));
            std::thread::spawn(move || {
                assert_eq!(c.request(1), Ok(Admission::Coalesced));
                assert_eq!(c.request(1), Ok(Admission::Coalesced));
                barrier.wait(); // memo made
                barrier.wait(); // cycle 2 has begun and is held
                assert_eq!(c.request(1), Ok(Admission::Coalesced), "through the mark");
            })
        })
        .collect();
    barrier.wait();
    held.release();
    held.wait_started();
    barrier.wait();
    for t in threads {
        t.join().unwrap();
    }
    // Cycle 2 ends with two marks set and no `PENDING`; cycle 3, if it
    // comes, finds its release already sent (no wait on a cycle that a bug
    // would never start).
    held.release();
    held.release();
    c.shutdown();
    assert_eq!(
        cycles.load(SeqCst),
        3,
        "one follow-up for the two marked requests"
    );
}
