//! Shared by the criterion benches (`benches/coalesce.rs`) and the
//! `summary` binary: the baselines — a faithful port of the Go algorithm,
//! and the coalescer a user writes by hand around a `DashMap` — and
//! coalescers whose keys are held "running", so every request measured
//! takes the coalesced path.
//!
//! ```text
//! cargo bench -p coalescer-benches                     # measure (about 2 minutes)
//! cargo run -p coalescer-benches --release --bin summary   # ratio table, burst, memory
//! ```
#![cfg(not(loom))]

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, RwLock};
use std::time::{Duration, Instant};

use std::collections::hash_map::RandomState;

use coalescer::{Backoff, Builder, Coalescer, CycleOutput};
use dashmap::DashMap;

/// The Go implementation's per-key state.
#[derive(Debug, Default)]
struct GoState {
    running: bool,
    pending: bool,
}

/// The Go algorithm, ported faithfully: a global `RwLock<HashMap>` of
/// per-key `Arc<Mutex<{running, pending}>>`. A request takes the read lock,
/// clones the key's `Arc`, locks it, sets `pending`, and returns if the key
/// is running (the only path the benches take: every key is held running).
#[derive(Debug)]
pub struct GoPort<K> {
    map: RwLock<HashMap<K, Arc<Mutex<GoState>>>>,
}

impl<K: Hash + Eq + Clone> GoPort<K> {
    /// A port with `keys` all marked running (their "goroutines" never end).
    pub fn running(keys: &[K]) -> Self {
        let map = keys
            .iter()
            .map(|k| {
                let state = GoState {
                    running: true,
                    pending: false,
                };
                (k.clone(), Arc::new(Mutex::new(state)))
            })
            .collect();
        GoPort {
            map: RwLock::new(map),
        }
    }

    /// One request; `true` if it would have started a run.
    pub fn request(&self, key: &K) -> bool {
        let entry = self.map.read().unwrap().get(key).cloned();
        let entry = match entry {
            Some(entry) => entry,
            None => Arc::clone(self.map.write().unwrap().entry(key.clone()).or_default()),
        };
        let mut state = entry.lock().unwrap();
        if state.running {
            state.pending = true;
            return false;
        }
        state.running = true;
        true
    }
}

/// The coalescer a user writes by hand in ten lines: a `DashMap` from key
/// to `(running, pending)`. A request takes the key's entry (the shard's
/// write lock), sets `pending` if the key is running, and returns. Same
/// hasher as ours (`RandomState`) and `DashMap`'s default shard count.
///
/// It has the coalesced path's shape and nothing more: no runner, no
/// happens-before from a request to the run it joins beyond the shard
/// lock, no shutdown, no reclamation. It is the floor a user would
/// compare a library against.
#[derive(Debug)]
pub struct DashPeer<K: Hash + Eq> {
    map: DashMap<K, (bool, bool), RandomState>,
}

impl<K: Hash + Eq + Clone> DashPeer<K> {
    /// A peer with `keys` all marked running.
    pub fn running(keys: &[K]) -> Self {
        let map = DashMap::with_hasher(RandomState::new());
        for k in keys {
            map.insert(k.clone(), (true, false));
        }
        DashPeer { map }
    }

    /// One request; `true` if it would have started a run.
    pub fn request(&self, key: K) -> bool {
        let mut entry = self.map.entry(key).or_insert((false, false));
        let (running, pending) = entry.value_mut();
        if *running {
            *pending = true;
            return false;
        }
        *running = true;
        true
    }
}

/// An async coalescer whose every key in `keys` has a cycle running that
/// never ends until the coalescer is dropped (which aborts them; the runtime
/// is dropped after it, fields dropping in order), on its own
/// current-thread runtime, idle once they have started. `O`
/// is what its cycles return: `()`, or a `Result` for [`Held::retrying`].
#[derive(Debug)]
pub struct Held<K, O: CycleOutput = ()> {
    /// The coalescer; `request` on a held key takes the coalesced path.
    pub coalescer: Coalescer<K, RandomState, O>,
    /// Runs the held cycles; dropped after the coalescer.
    _runtime: tokio::runtime::Runtime,
}

impl<K> Held<K>
where
    K: Hash + Eq + Clone + Send + Sync + std::fmt::Debug + 'static,
{
    /// Holds every key in `keys` running.
    pub fn new(keys: &[K]) -> Self {
        Held::build(keys, |builder, cycle| builder.build(cycle))
    }

    /// The same, with a concurrency limit that the held keys never reach.
    pub fn limited(keys: &[K]) -> Self {
        Held::build(keys, |builder, cycle| {
            builder.concurrency(keys.len() + 1).build(cycle)
        })
    }

    /// The same, debounced (1 ms): every coalesced request stamps its slot.
    pub fn debounced(keys: &[K]) -> Self {
        Held::build(keys, |builder, cycle| {
            builder.debounce(Duration::from_millis(1)).build(cycle)
        })
    }
}

impl<K> Held<K, Result<(), String>>
where
    K: Hash + Eq + Clone + Send + Sync + std::fmt::Debug + 'static,
{
    /// The same, with fallible cycles and a retry policy: what a request
    /// costs when the coalescer retries.
    pub fn retrying(keys: &[K]) -> Self {
        Held::build(keys, |builder, cycle| {
            builder
                .retry(Backoff::exponential(
                    Duration::from_millis(10),
                    Duration::from_secs(1),
                ))
                .build(cycle)
        })
    }
}

impl<K, O> Held<K, O>
where
    K: Hash + Eq + Clone + Send + Sync + std::fmt::Debug + 'static,
    O: CycleOutput,
{
    /// Builds with `build` (given the default builder and a cycle that
    /// never ends) and holds every key in `keys` running.
    fn build(
        keys: &[K],
        build: impl FnOnce(Builder<K>, HeldCycle<K, O>) -> Coalescer<K, RandomState, O> + Send,
    ) -> Self {
        // A current-thread runtime, driven only here: once every key's cycle
        // has started (and returned `Pending`), no thread runs the runtime
        // again, so nothing runs beside the requests measured — no worker
        // spinning or parking, which would also make instruction counts
        // differ from run to run.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let started = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&started);
        let cycle: HeldCycle<K, O> = Box::new(move |_key: K| {
            counted.fetch_add(1, Ordering::Relaxed);
            std::future::pending()
        });
        let coalescer = runtime.block_on(async move {
            let coalescer = build(Builder::new(), cycle);
            for k in keys {
                coalescer.request(k.clone()).expect("open");
            }
            while started.load(Ordering::Relaxed) < keys.len() {
                tokio::task::yield_now().await;
            }
            // Once more, so the last runner's poll has returned `Pending`.
            tokio::task::yield_now().await;
            coalescer
        });
        Held {
            coalescer,
            _runtime: runtime,
        }
    }
}

/// A held coalescer's cycle: it counts its start, then never ends.
type HeldCycle<K, O> = Box<dyn Fn(K) -> std::future::Pending<O> + Send + Sync>;

/// `u64` workspace ids `0..n`.
pub fn u64_keys(n: usize) -> Vec<u64> {
    (0..n as u64).collect()
}

/// `String` workspace ids like `"ws-000123"`.
pub fn string_keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("ws-{i:06}")).collect()
}

/// Runs `op(thread, i)` for `i in 0..iters` on each of `threads` threads at
/// once, and returns the wall time from the common start to the last
/// finish: `iters` iterations of all threads together.
pub fn on_threads(threads: usize, iters: u64, op: impl Fn(usize, u64) + Sync) -> Duration {
    let start = Barrier::new(threads + 1);
    let (op, start) = (&op, &start);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    start.wait();
                    for i in 0..iters {
                        op(t, i);
                    }
                    Instant::now()
                })
            })
            .collect();
        start.wait();
        let began = Instant::now();
        let ended = workers
            .into_iter()
            .map(|w| w.join().expect("a bench thread"))
            .max()
            .unwrap_or(began);
        ended - began
    })
}

/// Nanoseconds per iteration of `op` on `threads` threads at once
/// ([`on_threads`], `iters` iterations): the median of seven runs. For the
/// binaries that print their own tables (`floor`, `layout`).
pub fn median_ns(threads: usize, iters: u64, op: &(dyn Fn(usize, u64) + Sync)) -> f64 {
    let mut runs: Vec<f64> = (0..7)
        .map(|_| on_threads(threads, iters, op).as_secs_f64() * 1e9 / iters as f64)
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

/// The next key index for thread `t`'s `i`th request over `n` keys: the two
/// threads walk the keys in different orders, so they rarely touch the
/// same key at once.
pub fn spread(t: usize, i: u64, n: usize) -> usize {
    let i = i as usize;
    if t == 0 {
        i % n
    } else {
        (n - 1) - (i.wrapping_mul(7) % n)
    }
}
