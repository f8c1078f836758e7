//! Helpers for the loom suite in `tests/`; see `docs/invariants.md`.
//!
//! The suite exists only under `--cfg loom`; at the workspace root run
//! `RUSTFLAGS="--cfg loom" cargo test --release`. Every model is exhaustive
//! unless its doc comment gives a bound (the model runner, shared with the
//! slot models inside the crate, is `coalescer_fixtures::loom_model`).
#![cfg(loom)]

use std::collections::hash_map::DefaultHasher;
use std::hash::BuildHasherDefault;
use std::sync::atomic::AtomicUsize as StdAtomicUsize;
use std::time::Duration;

use coalescer::blocking::{Builder, Coalescer};
use coalescer::{Admission, Closed, CycleOutput, RunError};
pub use coalescer_fixtures::loom_model::{check, check_bounded};
pub use coalescer_fixtures::{Gate, INJECTED};
use coalescer_spec::{Event, Options, Recorder};
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::sync::Arc;

/// A deterministic hasher: loom needs every execution of a model to make the
/// same choices, and `RandomState` would not.
pub type Fixed = BuildHasherDefault<DefaultHasher>;

/// What a model's cycles observe, and the requesters' published writes.
///
/// The instrumentation must not create happens-before edges of its own, or it
/// would hide a missing edge in the coalescer: so the cycle-to-cycle and
/// requester-to-cycle checks use `Relaxed` loom atomics only, and the log is a
/// `std` mutex, which loom does not see (loom runs one thread at a time, so
/// it never contends).
#[derive(Debug)]
pub struct Env {
    /// One per requester: stored `true` (Relaxed) just before it requests.
    /// A cycle that loads `false` for a request it covers proves the request
    /// did not happen-before it (INV-4): with `Relaxed`, only the
    /// happens-before edge the coalescer provides makes the store visible.
    written: Vec<AtomicBool>,
    /// Per cycle, in the order the cycles ran: what it saw of `written`.
    log: std::sync::Mutex<Vec<Vec<bool>>>,
    /// The number of cycles that have ended, stored (Relaxed) by each cycle
    /// as it ends. A cycle that loads a smaller number than have ended before
    /// it in real time does not happen-after its predecessor (INV-1).
    ended: AtomicUsize,
    /// Cycles currently running: never above 1 (INV-1, in real time). A
    /// `std` atomic, invisible to loom, which runs one thread at a time.
    running: StdAtomicUsize,
    /// Calls of the panic hook for injected panics.
    reported: StdAtomicUsize,
    /// The execution's history, for the spec's oracle (`Env::done`). Behind
    /// a `std` Arc, shared with the `Recorded` front end, so that recording
    /// adds no loom operation (no scheduling point, no happens-before edge).
    tape: std::sync::Arc<Tape>,
    /// Messages of panics that were not injected: a failed assertion inside
    /// a cycle is caught by the coalescer like any cycle panic, so it lands
    /// here and `Env::done` fails the model with it.
    unexpected: std::sync::Mutex<Vec<String>>,
}

impl Env {
    /// An environment for `requesters` requesters.
    pub fn new(requesters: usize) -> Arc<Self> {
        Arc::new(Env {
            written: (0..requesters).map(|_| AtomicBool::new(false)).collect(),
            log: std::sync::Mutex::new(Vec::new()),
            ended: AtomicUsize::new(0),
            running: StdAtomicUsize::new(0),
            reported: StdAtomicUsize::new(0),
            tape: std::sync::Arc::default(),
            unexpected: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Requester `i` publishes its write (before calling `request`).
    pub fn write(&self, i: usize) {
        self.written[i].store(true, Ordering::Relaxed);
    }

    /// The body of a cycle: checks exclusion and ordering, records what it
    /// sees, and returns its 0-based number among all cycles of the model.
    pub fn cycle(&self) -> usize {
        assert_eq!(
            self.running
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            0,
            "two cycles of one key overlap"
        );
        let n = self.log.lock().unwrap().len();
        assert_eq!(
            self.ended.load(Ordering::Relaxed),
            n,
            "cycle {n} does not happen-after the cycle before it"
        );
        let seen = self
            .written
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .collect();
        self.log.lock().unwrap().push(seen);
        self.ended.store(n + 1, Ordering::Relaxed);
        self.running
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        n
    }

    /// A copy of the log.
    pub fn log(&self) -> Vec<Vec<bool>> {
        self.log.lock().unwrap().clone()
    }

    /// What the panic hook does: counts injected panics, keeps the message of
    /// any other.
    fn hook(&self, key: u8, message: Option<&str>) {
        self.tape.record(Event::PanicReported { key });
        match message {
            Some(INJECTED) => {
                self.reported
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            other => self
                .unexpected
                .lock()
                .unwrap()
                .push(other.unwrap_or("<non-string payload>").to_owned()),
        }
    }

    /// Ends a model: fails it if any cycle panicked other than on purpose,
    /// or if the recorded history breaks an invariant (the spec's oracle).
    pub fn done(&self) {
        self.done_with(Options::default());
    }

    /// [`done`](Self::done), for a coalescer built with `options` (one
    /// that retries its failed cycles).
    pub fn done_with(&self, options: Options) {
        self.done_unrecorded();
        let history = self.tape.recorder.history();
        if let Err(violation) = coalescer_spec::check_with(&history, options) {
            panic!("{violation}\nhistory: {:#?}", history.events);
        }
    }

    /// Ends a model whose front end is not [`Recorded`] — its cycles fail
    /// and are retried, which the history oracle does not model yet: fails
    /// it if any cycle panicked other than on purpose.
    pub fn done_unrecorded(&self) {
        let unexpected = self.unexpected.lock().unwrap();
        assert!(unexpected.is_empty(), "cycles panicked: {unexpected:?}");
    }

    /// Records a cycle of `key` beginning; the guard records its end, or its
    /// panic if dropped while unwinding.
    pub fn recorded_cycle(&self, key: u8) -> CycleRecord {
        self.tape.record(Event::CycleBegan { key, saw: None });
        CycleRecord {
            key,
            failed: false,
            tape: std::sync::Arc::clone(&self.tape),
        }
    }

    /// How often the panic hook was called.
    pub fn reported(&self) -> usize {
        self.reported.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Asserts that the last cycle saw the writes of `requesters`: every
    /// accepted request is covered by a cycle that began after it, and the
    /// last cycle began after all of them (INV-2, INV-4).
    pub fn assert_last_cycle_saw(&self, requesters: &[usize]) {
        let log = self.log();
        let last = log.last().expect("no cycle ran at all");
        for &i in requesters {
            assert!(
                last[i],
                "request {i} lost or not happened-before its cycle; log: {log:?}"
            );
        }
    }
}

/// A builder with the loom settings: fixed hasher, one shard (so every key
/// shares one lock, the harder case), and a hook that counts into
/// `env.reported`.
pub fn builder(env: &Arc<Env>) -> Builder<u8, Fixed> {
    let hooked = Arc::clone(env);
    Builder::new()
        .hasher(Fixed::default())
        .shards(1)
        .panic_hook(move |report| hooked.hook(*report.key(), report.message()))
}

/// A coalescer whose cycle is `env.cycle()` followed by `after(n, key)`.
pub fn coalescer(
    env: &Arc<Env>,
    after: impl Fn(usize, u8) + Send + Sync + 'static,
) -> Recorded<Coalescer<u8, Fixed>> {
    blocking_with(env, Duration::ZERO, 0, after)
}

/// The same with a concurrency limit of one: its runners take turns on a
/// pool of one thread, and `Env::cycle`'s checks (no overlap, each cycle
/// after the one before) hold across keys.
pub fn limited_coalescer(
    env: &Arc<Env>,
    after: impl Fn(usize, u8) + Send + Sync + 'static,
) -> Recorded<Coalescer<u8, Fixed>> {
    blocking_with(env, Duration::ZERO, 1, after)
}

/// The same, paced with a `min_interval` (loom abstracts the wait as one
/// yield: any other thread may run, then the interval has passed).
pub fn paced_coalescer(
    env: &Arc<Env>,
    after: impl Fn(usize, u8) + Send + Sync + 'static,
) -> Recorded<Coalescer<u8, Fixed>> {
    blocking_with(env, PACE, 0, after)
}

/// The interval the paced models use: any nonzero value (time is abstract).
const PACE: Duration = Duration::from_secs(1);

fn blocking_with(
    env: &Arc<Env>,
    min_interval: Duration,
    concurrency: usize,
    after: impl Fn(usize, u8) + Send + Sync + 'static,
) -> Recorded<Coalescer<u8, Fixed>> {
    let cycles = Arc::clone(env);
    let c = builder(env)
        .min_interval(min_interval)
        .concurrency(concurrency)
        .build(move |key: &u8| {
            let _record = cycles.recorded_cycle(*key);
            let n = cycles.cycle();
            after(n, *key);
        });
    Recorded::new(c, env)
}

/// An async coalescer (the tokio front end's code, on loom threads) whose
/// cycle runs `env.cycle()` and then `after(n, key)` when the cycle function
/// is called, and returns a ready future.
pub fn async_coalescer(
    env: &Arc<Env>,
    after: impl Fn(usize, u8) + Send + Sync + 'static,
) -> Recorded<coalescer::Coalescer<u8, Fixed>> {
    async_with(env, Duration::ZERO, 0, after)
}

/// The same, paced with a `min_interval` (see `paced_coalescer`).
pub fn paced_async_coalescer(
    env: &Arc<Env>,
    after: impl Fn(usize, u8) + Send + Sync + 'static,
) -> Recorded<coalescer::Coalescer<u8, Fixed>> {
    async_with(env, PACE, 0, after)
}

/// The same, with a concurrency limit of one: then `Env::cycle`'s check
/// that no two cycles overlap, and that each cycle happens-after the one
/// before, holds across keys too — it checks the limit and the permit's
/// hand-off.
pub fn limited_async_coalescer(
    env: &Arc<Env>,
    after: impl Fn(usize, u8) + Send + Sync + 'static,
) -> Recorded<coalescer::Coalescer<u8, Fixed>> {
    async_with(env, Duration::ZERO, 1, after)
}

fn async_with(
    env: &Arc<Env>,
    min_interval: Duration,
    concurrency: usize,
    after: impl Fn(usize, u8) + Send + Sync + 'static,
) -> Recorded<coalescer::Coalescer<u8, Fixed>> {
    let hooked = Arc::clone(env);
    let cycles = Arc::clone(env);
    let c = coalescer::Coalescer::builder()
        .hasher(Fixed::default())
        .shards(1)
        .min_interval(min_interval)
        .concurrency(concurrency)
        .panic_hook(move |report| hooked.hook(*report.key(), report.message()))
        .build(move |key: u8| {
            let record = cycles.recorded_cycle(key);
            let n = cycles.cycle();
            after(n, key);
            drop(record);
            std::future::ready(())
        });
    Recorded::new(c, env)
}

/// Spawns requester 0: it publishes its write, then makes its request with
/// `request(&c)` and returns the result.
pub fn spawn_requester<C, R>(
    c: &Arc<C>,
    env: &Arc<Env>,
    request: impl FnOnce(&C) -> R + Send + 'static,
) -> loom::thread::JoinHandle<R>
where
    C: Send + Sync + 'static,
    R: Send + 'static,
{
    let (c, env) = (Arc::clone(c), Arc::clone(env));
    loom::thread::spawn(move || {
        env.write(0);
        request(&c)
    })
}

/// The history of one execution, and the next request's name.
#[derive(Debug, Default)]
struct Tape {
    recorder: Recorder<u8>,
    next_request: std::sync::atomic::AtomicU64,
}

impl Tape {
    fn record(&self, event: Event<u8>) {
        self.recorder.record(event);
    }

    /// Records a request being invoked and returns its name.
    fn invoke(&self, key: u8, wait: bool) -> u64 {
        let request = self
            .next_request
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.record(Event::Invoked {
            request,
            key,
            wait,
            wrote: None,
        });
        request
    }

    fn admitted(&self, request: u64, admission: Result<Admission, Closed>) {
        self.record(match admission {
            Ok(admission) => Event::Accepted { request, admission },
            Err(Closed) => Event::Rejected { request },
        });
    }
}

/// Records the end of a cycle when dropped: `CyclePanicked` if dropped while
/// the cycle unwinds, `CycleFailed` after [`failed`](Self::failed),
/// `CycleEnded` otherwise.
#[derive(Debug)]
pub struct CycleRecord {
    key: u8,
    failed: bool,
    tape: std::sync::Arc<Tape>,
}

impl CycleRecord {
    /// The cycle is about to return an error: recorded as it ends.
    pub fn failed(mut self) {
        self.failed = true;
    }
}

impl Drop for CycleRecord {
    fn drop(&mut self) {
        let key = self.key;
        self.tape.record(if std::thread::panicking() {
            Event::CyclePanicked { key }
        } else if self.failed {
            Event::CycleFailed { key }
        } else {
            Event::CycleEnded { key }
        });
    }
}

/// What dropping a front end does.
pub trait FrontEnd {
    /// `true` for the async coalescer (drop aborts), `false` for the
    /// blocking one (drop shuts down and drains).
    const DROP_ABORTS: bool;
}

impl<O: CycleOutput> FrontEnd for Coalescer<u8, Fixed, O> {
    const DROP_ABORTS: bool = false;
}

impl FrontEnd for coalescer::Coalescer<u8, Fixed> {
    const DROP_ABORTS: bool = true;
}

/// A front end whose calls are recorded into the model's history, which
/// `Env::done` checks with the spec's oracle. Its request and shutdown verbs
/// shadow the coalescer's; everything else is reached through `Deref`.
#[derive(Debug)]
pub struct Recorded<C: FrontEnd> {
    /// `Some` until dropped (so `Drop` can record around the inner drop).
    inner: Option<C>,
    tape: std::sync::Arc<Tape>,
}

impl<C: FrontEnd> Recorded<C> {
    /// Wraps `inner`, recording into `env`'s history.
    pub fn new(inner: C, env: &Env) -> Self {
        Recorded {
            inner: Some(inner),
            tape: std::sync::Arc::clone(&env.tape),
        }
    }

    fn inner(&self) -> &C {
        self.inner.as_ref().expect("only taken in Drop")
    }
}

impl<C: FrontEnd> std::ops::Deref for Recorded<C> {
    type Target = C;

    fn deref(&self) -> &C {
        self.inner()
    }
}

impl<C: FrontEnd> Drop for Recorded<C> {
    fn drop(&mut self) {
        let inner = self.inner.take();
        if C::DROP_ABORTS {
            self.tape.record(Event::Aborted);
            drop(inner);
        } else {
            self.tape.record(Event::ShutdownBegan);
            drop(inner);
            self.tape.record(Event::ShutdownEnded);
        }
    }
}

impl<O: CycleOutput> Recorded<Coalescer<u8, Fixed, O>>
where
    O::Value: Clone,
{
    /// `request`, recorded.
    pub fn request(&self, key: u8) -> Result<Admission, Closed> {
        let request = self.tape.invoke(key, false);
        let admission = self.inner().request(key);
        self.tape.admitted(request, admission);
        admission
    }

    /// `request_after`, recorded as a request that does not wait: the
    /// oracle's rules for it are a plain request's (it is covered by the
    /// first cycle of its key that begins after its step, INV-13).
    pub fn request_after(&self, key: u8, delay: Duration) -> Result<Admission, Closed> {
        let request = self.tape.invoke(key, false);
        let admission = self.inner().request_after(key, delay);
        self.tape.admitted(request, admission);
        admission
    }

    /// `request_and_wait`, recorded.
    pub fn request_and_wait(&self, key: u8) -> Result<O::Value, RunError<O::Error>> {
        let request = self.tape.invoke(key, true);
        let result = self.inner().request_and_wait(key);
        self.tape.record(Event::Waited {
            request,
            result: (&result).into(),
        });
        result
    }

    /// `shutdown`, recorded.
    pub fn shutdown(&self) {
        self.tape.record(Event::ShutdownBegan);
        self.inner().shutdown();
        self.tape.record(Event::ShutdownEnded);
    }
}

impl Recorded<coalescer::Coalescer<u8, Fixed>> {
    /// `request`, recorded.
    pub fn request(&self, key: u8) -> Result<Admission, Closed> {
        let request = self.tape.invoke(key, false);
        let admission = self.inner().request(key);
        self.tape.admitted(request, admission);
        admission
    }

    /// `request_after`, recorded (see the blocking version).
    pub fn request_after(&self, key: u8, delay: Duration) -> Result<Admission, Closed> {
        let request = self.tape.invoke(key, false);
        let admission = self.inner().request_after(key, delay);
        self.tape.admitted(request, admission);
        admission
    }

    /// `request_and_wait`, recorded: the invocation now, the result when the
    /// returned future resolves.
    pub fn request_and_wait(
        &self,
        key: u8,
    ) -> impl std::future::Future<Output = Result<(), RunError>> {
        let request = self.tape.invoke(key, true);
        let wait = self.inner().request_and_wait(key);
        let tape = std::sync::Arc::clone(&self.tape);
        async move {
            let result = wait.await;
            tape.record(Event::Waited {
                request,
                result: (&result).into(),
            });
            result
        }
    }

    /// `shutdown().await`, recorded.
    pub async fn shutdown(&self) {
        self.tape.record(Event::ShutdownBegan);
        self.inner().shutdown().await;
        self.tape.record(Event::ShutdownEnded);
    }
}
