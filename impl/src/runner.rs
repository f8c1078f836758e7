//! The runner: one key's loop of cycles, written once for every driver, on
//! top of `Slot` and `Registry`; and what the runners and the verbs share.

use std::any::Any;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::AtomicU8;
use std::task::{Context, Poll};

use tracing::Instrument;

use std::time::{Duration, Instant};

use crate::completion::Completion;
use crate::context::{CycleContext, Stop};
use crate::driver::Driver;
use crate::error::RunError;
use crate::limit::{Limit, Ticket};
use crate::meter::{Meter, Sample};
use crate::output::{Answer, CycleOutput};
use crate::panic::{self, drop_contained, PanicHook};
use crate::registry::Registry;
use crate::retry::{Failure, FailureHook, FailureReport, RetryPolicy};
use crate::slot::{AfterCycle, Begun, Slot};
use crate::state::Requested;
use crate::stats::{Counters, Stats};
use crate::sync::{thread_local_const, Arc};
use crate::trace::Outcome;

/// One cycle, as the runner awaits it.
pub(crate) type CycleFuture<O> = Pin<Box<dyn Future<Output = O> + Send>>;

/// The cycle function, as every driver calls it: called with the key and
/// the cycle's context when a cycle begins, its future awaited. (A blocking
/// cycle runs inside the call and returns a ready future.)
pub(crate) type CycleFn<K, O> = Box<dyn Fn(&K, CycleContext) -> CycleFuture<O> + Send + Sync>;

/// [`Shared::closer`]'s type.
pub(crate) type Closer<K, S, D, O> = fn(&Arc<Shared<K, S, D, O>>);

/// What a coalescer's verbs and its runners share; `O` is what its cycles
/// return.
pub(crate) struct Shared<K, S, D, O: CycleOutput> {
    pub(crate) registry: Registry<K, S, Answer<O>>,
    pub(crate) counters: Counters,
    /// Told about every panicking cycle (`None`: a `tracing` event).
    pub(crate) hook: Option<PanicHook<K>>,
    pub(crate) cycle: CycleFn<K, O>,
    /// A key's next cycle begins no earlier than this after its previous
    /// cycle began (`None`: no pacing, or no timers to pace with).
    pub(crate) min_interval: Option<Duration>,
    /// Retries failed cycles (`None`: a failure is not retried).
    pub(crate) retry: Option<Box<dyn RetryPolicy<K, O::Error>>>,
    /// Told about every failed cycle (`None`: a `tracing` event instead).
    pub(crate) on_failure: Option<Box<dyn FailureHook<K, O::Error>>>,
    /// A cycle running longer than this has failed (`None`: no timeout, or
    /// no timers to time it with).
    pub(crate) timeout: Option<Duration>,
    /// Set when the coalescer stops waiting for its cycles; every cycle's
    /// context reads it.
    pub(crate) stop: Arc<Stop>,
    /// At most this many cycles at once, across all keys (`None`: no limit).
    pub(crate) limit: Option<Arc<Limit>>,
    /// A cycle waits for a quiet period first (`None`: no debounce, or no
    /// timers to wait with).
    pub(crate) debounce: Option<Debounce>,
    /// Closes admission and turns the delayed requests into immediate ones
    /// (`shell::close_and_cover`; a function pointer, so that `close` needs
    /// none of the bounds that starting a runner does).
    pub(crate) closer: Closer<K, S, D, O>,
    /// Whether `request_after` has said that it cannot wait (no timers).
    pub(crate) warned_no_timers: std::sync::atomic::AtomicBool,
    /// The metrics (a unit struct without the `metrics` feature).
    pub(crate) meter: Meter,
    pub(crate) driver: D,
}

impl<K, S, D: Driver, O: CycleOutput> Shared<K, S, D, O> {
    /// Closes admission (every later request is rejected, every earlier one
    /// is in a live slot — delayed ones included: INV-5, INV-13) and ends
    /// every pacing wait, so the drain runs pending follow-ups at once.
    pub(crate) fn close(self: &Arc<Self>) {
        (self.closer)(self);
        self.driver.drain();
    }
}

impl<K, S, D, O: CycleOutput> Shared<K, S, D, O> {
    /// A snapshot of the counters.
    pub(crate) fn stats(&self) -> Stats {
        let waiting = self.limit.as_ref().map_or(0, |limit| limit.waiting());
        let mut stats = self
            .counters
            .snapshot(self.registry.coalesced_count(), waiting as u64);
        stats.scheduled = self.registry.scheduled() as u64;
        stats
    }

    /// The metrics' sampled side, as of now (`scheduled` only if `all`: it
    /// reads every shard).
    pub(crate) fn sample(&self, all: bool) -> Sample {
        let stats = self.counters.snapshot(
            self.registry.coalesced_count(),
            self.limit.as_ref().map_or(0, |limit| limit.waiting()) as u64,
        );
        Sample {
            coalesced: stats.coalesced,
            active: self.registry.active_keys() as u64,
            running: stats.running,
            waiting: stats.waiting,
            scheduled: all.then(|| self.registry.scheduled() as u64),
        }
    }

    /// Sets every sampled metric to its value now.
    #[cfg(feature = "metrics")]
    pub(crate) fn publish_metrics(&self)
    where
        D: Driver,
    {
        self.meter
            .sample(|| self.sample(true), || self.driver.now());
    }

    /// This coalescer's identity, for the own-cycle check.
    pub(crate) fn id(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }
}

/// One key's runner: started by the request that created `slot`, it runs
/// cycles until the slot goes idle, then removes the slot from the map.
pub(crate) struct Runner<K, O: CycleOutput> {
    key: K,
    slot: Arc<Slot<Answer<O>>>,
    /// The key's hash, from admission: reclamation finds the slot by it.
    hash: u64,
    /// The key's consecutive failed cycles (counted only with a retry
    /// policy): reset by a success and by a give-up.
    failures: u32,
    /// The completions of failed cycles whose requests a retry owes: told
    /// with the answer of the cycle that ends the run of retries (a success,
    /// or the failure after which the policy gave up).
    owed: Vec<Arc<Completion<Answer<O>>>>,
}

/// What a runner does after a cycle, as [`Runner::finish`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// Wait out any pacing, then go idle or run the follow-up (`settle`).
    Settle,
    /// The cycle failed and is retried: the runner has requested its own
    /// key again, and begins the retry once `delay` has passed since the
    /// failure (and any pacing), without going idle in between.
    Retry { delay: Duration },
}

impl<K: Hash + Eq + 'static, O: CycleOutput> Runner<K, O> {
    /// Finishes the cycle `begun`, which returned `result`: a failure (an
    /// error returned) is counted and reported, a panic counted and
    /// reported once (INV-3); then either the retry policy retries the
    /// failure (INV-9) or the waiters are told (INV-8). The slot stays live
    /// either way: [`settle`](Self::settle), or the retry, comes next.
    /// `last_chance`: the cycle is a retry that began after shutdown did,
    /// so it is not retried again.
    fn finish<S, D>(
        &mut self,
        shared: &Shared<K, S, D, O>,
        begun: &mut Begun<Answer<O>>,
        result: Result<O, Stopped>,
        last_chance: bool,
        ended: Ended,
    ) -> Then {
        let span = ended.span.clone();
        let _in_span = span.enter();
        let answer = match result {
            Ok(output) => output.into_result().map_err(|error| {
                Counters::bump(&shared.counters.failures);
                RunError::Failed(Arc::new(error))
            }),
            Err(Stopped::Panicked(payload)) => {
                Counters::bump(&shared.counters.panics);
                panic::report(
                    shared.hook.as_ref(),
                    &shared.registry.names,
                    &self.key,
                    payload,
                );
                Err(RunError::Panicked)
            }
            Err(Stopped::TimedOut) => {
                Counters::bump(&shared.counters.timeouts);
                Err(RunError::TimedOut)
            }
        };
        if let Err(error @ (RunError::Failed(_) | RunError::TimedOut)) = &answer {
            self.report(shared, error);
        }
        Counters::bump(&shared.counters.cycles);
        ended.record(
            &shared.meter,
            match &answer {
                Ok(_) => Outcome::Ok,
                Err(RunError::Panicked) => Outcome::Panicked,
                Err(RunError::TimedOut) => Outcome::TimedOut,
                Err(_) => Outcome::Failed,
            },
        );
        let names = &shared.registry.names;
        let waiting = begun.completion.take();
        match (&answer, &shared.retry) {
            (Ok(_), _) => self.failures = 0,
            (Err(error), Some(policy)) => {
                self.failures = self.failures.saturating_add(1);
                let delay = if last_chance {
                    None
                } else {
                    self.ask(policy.as_ref(), error)
                };
                if let Some(delay) = delay {
                    Counters::bump(&shared.counters.retries);
                    shared.meter.retried();
                    tracing::debug!(
                        target: "coalescer",
                        coalescer = names.name(),
                        key = ?names.key(&self.key),
                        failures = self.failures,
                        delay_seconds = delay.as_secs_f64(),
                        "retrying"
                    );
                    // The failed cycle covered nothing: its requests are
                    // owed to the retry, which the runner requests itself —
                    // the one cycle every request since the failed cycle
                    // began folds into (INV-9).
                    self.owed.extend(waiting);
                    let requested = self.slot.request();
                    debug_assert!(
                        requested != Requested::Dead,
                        "only the runner kills its slot"
                    );
                    drop_contained(Some(answer), "a cycle's value or error");
                    return Then::Retry { delay };
                }
                Counters::bump(&shared.counters.give_ups);
                shared.meter.gave_up();
                tracing::warn!(
                    target: "coalescer",
                    coalescer = names.name(),
                    key = ?names.key(&self.key),
                    failures = self.failures,
                    "gave up retrying; the waiters get the last failure, and requests that \
                     arrived during it get their follow-up cycle"
                );
                self.failures = 0;
            }
            (Err(_), None) => {}
        }
        self.tell(waiting, answer);
        Then::Settle
    }

    /// Reports the failure `error` (an error returned, or a timeout) to the
    /// failure hook, containing a panic in it, or without one as a `warn`
    /// event.
    fn report<S, D>(&self, shared: &Shared<K, S, D, O>, error: &RunError<O::Error>) {
        let Some(hook) = &shared.on_failure else {
            let what = match error {
                RunError::TimedOut => "cycle timed out",
                _ => "cycle failed",
            };
            let names = &shared.registry.names;
            tracing::warn!(
                target: "coalescer",
                coalescer = names.name(),
                key = ?names.key(&self.key),
                attempt = self.failures,
                "{what}; requests that arrived during it get their follow-up (or retry) cycle"
            );
            return;
        };
        let report = FailureReport {
            key: &self.key,
            failure: failure_of(error),
            attempt: self.failures,
        };
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| hook.report(&report))) {
            panic::dispose(payload);
            tracing::error!(target: "coalescer", "the failure hook panicked");
        }
    }

    /// The retry policy's verdict on the failure `error` (a panic in the
    /// policy is contained and gives up).
    fn ask(
        &self,
        policy: &dyn RetryPolicy<K, O::Error>,
        error: &RunError<O::Error>,
    ) -> Option<Duration> {
        let failure = failure_of(error);
        match catch_unwind(AssertUnwindSafe(|| {
            policy.retry_after(&self.key, &failure, self.failures)
        })) {
            Ok(delay) => delay,
            Err(payload) => {
                panic::dispose(payload);
                tracing::error!(target: "coalescer", "the retry policy panicked; giving up");
                None
            }
        }
    }
}

impl<K: Hash + Eq, O: CycleOutput> Runner<K, O> {
    pub(crate) fn new(key: K, slot: Arc<Slot<Answer<O>>>, hash: u64) -> Self {
        Runner {
            key,
            slot,
            hash,
            failures: 0,
            owed: Vec::new(),
        }
    }

    /// Tells the waiters of this cycle, and of the failed cycles it ends
    /// the retries of, `answer`. What nobody waits for is dropped here —
    /// the answer, or the last reference to a completion whose waiters have
    /// gone — with a panic of the value's or the error's `Drop` contained.
    fn tell(&mut self, waiting: Option<Arc<Completion<Answer<O>>>>, answer: Answer<O>) {
        // One completion holds the answer; the others resolve as that one.
        let mut told = self.owed.drain(..).chain(waiting);
        let Some(first) = told.next() else {
            drop_contained(Some(answer), "a cycle's value or error");
            return;
        };
        let unclaimed = first.resolve(answer);
        let others: Vec<_> = told.collect();
        for completion in &others {
            completion.resolve_as(&first);
        }
        drop_contained(Some((first, others, unclaimed)), "a cycle's value or error");
    }

    /// After [`finish`](Self::finish) (and any `min_interval` wait): the slot
    /// goes idle if no request arrived since `begun` (INV-2) — and is then
    /// removed from the map (INV-6). A panicking or failed cycle settles
    /// through this same path, so a request that arrived during it makes
    /// `go_idle` fail and gets its follow-up (D2).
    fn settle<S: BuildHasher, D>(
        &self,
        shared: &Shared<K, S, D, O>,
        begun: &Begun<Answer<O>>,
    ) -> AfterCycle {
        let next = self.slot.go_idle(begun);
        if next == AfterCycle::Idle {
            shared.registry.reclaim(self.hash, &self.slot);
        }
        next
    }

    /// Tears down a runner that is stopped mid-flight (its task aborted or
    /// dropped unpolled): the cycle it was running, if any (`current`), the
    /// failed cycles a retry owed, and the cycle its slot would have begun
    /// next all resolve as aborted, and the slot is killed and removed so no
    /// request is stranded in it.
    fn abandon<S: BuildHasher, D>(
        &mut self,
        shared: &Shared<K, S, D, O>,
        current: Option<Arc<Completion<Answer<O>>>>,
    ) {
        // None of these completions has an answer yet: `current` is the
        // running cycle's, the owed ones wait for the retry, and the next
        // cycle never began.
        self.owed.extend(current);
        self.owed.extend(self.slot.abandon());
        self.tell(None, Err(RunError::Aborted));
        shared.registry.reclaim(self.hash, &self.slot);
    }
}

/// A runner as its driver holds it: the loop's state, and a guard that
/// abandons the slot if the driver drops the runner before it went idle —
/// a task aborted by the async coalescer's `Drop`, or dropped unpolled by a
/// runtime that is shutting down — so no waiter and no request is stranded.
struct Task<K: Hash + Eq, S: BuildHasher, D: Driver, O: CycleOutput> {
    shared: Arc<Shared<K, S, D, O>>,
    runner: Runner<K, O>,
    /// The completion of the cycle running now, if anyone waits for it.
    current: Option<Arc<Completion<Answer<O>>>>,
    /// Cleared when the runner went idle normally.
    armed: bool,
    /// Set when the driver first polls the runner (never inside `spawn`).
    polled: bool,
    launch: Launch,
    /// With a concurrency limit: the ticket its key took when admission
    /// made it due, for the first cycle.
    ticket: Option<Ticket>,
    /// When admission made the key due (taken by the first cycle).
    admitted: Option<Instant>,
}

impl<K: Hash + Eq, S: BuildHasher, D: Driver, O: CycleOutput> Drop for Task<K, S, D, O> {
    fn drop(&mut self) {
        if !self.armed || !(self.polled || self.launch.dropped_after_launch()) {
            return;
        }
        self.runner.abandon(&self.shared, self.current.take());
    }
}

/// The handshake between a runner's start and its guard, for a driver that
/// drops a runner unpolled inside `spawn` (a shut-down tokio runtime does,
/// on the spawning thread, while admission holds the shard write lock):
/// exactly one side learns of the failure. The guard of a runner dropped
/// unpolled before the launch settled leaves the slot alone (nobody has
/// seen it, and abandoning it would take the lock the spawner holds); the
/// spawner then sees the failure and rejects the request. A runner dropped
/// after it was polled, or after the launch settled, abandons its slot.
///
/// A `std` atomic even under loom: it carries no data, and no loom driver
/// ever drops a runner.
#[derive(Clone)]
struct Launch(Arc<AtomicU8>);

/// [`Launch`] states.
const SPAWNING: u8 = 0;
const LAUNCHED: u8 = 1;
const DROPPED_IN_SPAWN: u8 = 2;

impl Launch {
    fn new() -> Self {
        Launch(Arc::new(AtomicU8::new(SPAWNING)))
    }

    /// By the spawner, once `spawn` returned: whether the runner is still
    /// there to run.
    fn settle(&self) -> bool {
        use std::sync::atomic::Ordering::{AcqRel, Acquire};
        // ORDERING: AcqRel (Acquire on failure), paired with the
        // compare-exchange in `dropped_after_launch`: the two are totally
        // ordered on this word, and whichever comes second fails, seeing
        // the other's write. No data rides on it.
        self.0
            .compare_exchange(SPAWNING, LAUNCHED, AcqRel, Acquire)
            .is_ok()
    }

    /// By the guard, as it drops an armed runner: whether the launch had
    /// settled (then the guard abandons the slot).
    fn dropped_after_launch(&self) -> bool {
        use std::sync::atomic::Ordering::{AcqRel, Acquire};
        // ORDERING: AcqRel (Acquire on failure), paired with the
        // compare-exchange in `settle`.
        self.0
            .compare_exchange(SPAWNING, DROPPED_IN_SPAWN, AcqRel, Acquire)
            .is_err()
    }
}

/// Why a runner could not be started.
#[derive(Debug)]
pub(crate) enum StartError {
    /// The driver dropped the runner unrun: it can run nothing any more.
    Gone,
    /// The OS refused a thread.
    Os(std::io::Error),
}

/// Starts the runner of a fresh slot on `shared`'s driver. Called while
/// admission holds the key's shard write lock (the slot's `Vacant`).
pub(crate) fn start<K, S, D, O>(
    shared: &Arc<Shared<K, S, D, O>>,
    key: K,
    slot: Arc<Slot<Answer<O>>>,
    hash: u64,
) -> Result<(), StartError>
where
    K: Hash + Eq + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
    D: Driver,
    O: CycleOutput,
{
    let launch = Launch::new();
    // A fresh key is due at once — unless debounced: with a limit, it takes
    // its place in the line now, in admission order (INV-11).
    let ticket = shared
        .limit
        .as_ref()
        .filter(|_| shared.debounce.is_none())
        .map(Limit::ticket);
    let line = ticket.as_ref().map(Ticket::number);
    let task = Task {
        shared: Arc::clone(shared),
        runner: Runner::new(key, slot, hash),
        current: None,
        armed: true,
        polled: false,
        launch: launch.clone(),
        ticket,
        admitted: Some(shared.driver.now()),
    };
    let runner = Box::pin(run(task));
    match (line, &shared.limit) {
        // A driver that can start the runner parked starts it only when
        // the ticket is granted: a waiting key costs no thread.
        (Some(number), Some(limit)) => {
            if let Some(waker) = shared.driver.spawn_parked(runner).map_err(StartError::Os)? {
                limit.wake_when_granted(number, waker);
            }
        }
        _ => shared.driver.spawn(runner).map_err(StartError::Os)?,
    }
    if launch.settle() {
        Ok(())
    } else {
        Err(StartError::Gone)
    }
}

/// The runner loop: cycles until the key goes idle (INV-2), each under
/// panic containment (INV-3), failed ones retried by the policy (INV-9),
/// paced by the driver between cycles.
///
/// A plain `fn` returning an `async move` block rather than an `async fn`:
/// the block keeps `this` once, where an `async fn` keeps its argument and
/// the local it is moved into (128 bytes more in every active key's task).
/// The waits that only some coalescers have (a debounce's, a pace's or a
/// backoff's) are boxed when they happen, so that every runner's future is
/// only as large as its cycle needs.
#[allow(
    clippy::manual_async_fn,
    reason = "an `async fn` would keep its argument twice (see above)"
)]
fn run<K, S, D, O>(mut this: Task<K, S, D, O>) -> impl Future<Output = ()>
where
    K: Hash + Eq + 'static,
    S: BuildHasher,
    D: Driver,
    O: CycleOutput,
{
    async move {
        this.polled = true;
        loop {
            if this.shared.driver.is_aborted() {
                return; // the guard abandons the slot
            }
            // Debounced: the cycle waits for its key's quiet period (a retry
            // does not), holding no permit (INV-12).
            if let Some(debounce) = &this.shared.debounce {
                if this.runner.failures == 0 {
                    Box::pin(debounce.wait(&this.shared, &this.runner.slot)).await;
                }
            }
            // Due now — or, for its first cycle, since admission made it due.
            let due = match this.admitted.take() {
                Some(admitted) if this.shared.debounce.is_none() => admitted,
                _ => this.shared.driver.now(),
            };
            // Due: with a limit, the key waits for a permit here, holding none
            // and absorbing requests meanwhile, in the order keys became due
            // (INV-11).
            let permit = match &this.shared.limit {
                None => None,
                Some(limit) => {
                    let ticket = this.ticket.take().unwrap_or_else(|| Limit::ticket(limit));
                    let permit = ticket.await;
                    if this.shared.driver.is_aborted() {
                        return; // the guard abandons the slot; the permit goes on
                    }
                    Some(permit)
                }
            };
            let mut begun = this.runner.slot.begin();
            let paced = this
                .shared
                .min_interval
                .map(|d| (this.shared.driver.now(), d));
            // Inside the drain, each failure gets one immediate retry: a retry
            // that begins once shutdown has begun is its key's last chance (so
            // the drain ends).
            let last_chance = this.shared.retry.is_some()
                && this.runner.failures > 0
                && this.shared.registry.is_closed();
            this.current.clone_from(&begun.completion);
            let watch = Watch::start(&this.shared, &this.runner.key, this.runner.failures, due);
            let result = cycle(&this.shared, &this.runner)
                .instrument(watch.span())
                .await;
            let ended = watch.stop();
            // The permit goes back as soon as the cycle returns: the key's
            // follow-up or retry takes a new ticket, behind the keys waiting.
            drop(permit);
            this.current = None;
            let then = this
                .runner
                .finish(&this.shared, &mut begun, result, last_chance, ended);
            this.shared
                .meter
                .sample(|| this.shared.sample(false), || this.shared.driver.now());
            // The waits between cycles: the slot stays live meanwhile, so
            // requests fold into the one cycle that follows. Aborted here, the
            // guard abandons the slot as anywhere else.
            // Each bound is `None` if there is none, `Some(None)` if it is too
            // far to name (never: only the drain ends the wait).
            let paced_until = paced.map(|(began, interval)| began.checked_add(interval));
            let until = match then {
                Then::Settle => paced_until,
                Then::Retry { delay } => {
                    let backoff = this.shared.driver.now().checked_add(delay);
                    // The later bound wins.
                    Some(paced_until.map_or(backoff, |paced| later(paced, backoff)))
                }
            };
            if let Some(deadline) = until {
                Box::pin(this.shared.driver.until(deadline)).await;
            }
            if then == Then::Settle && this.runner.settle(&this.shared, &begun) == AfterCycle::Idle
            {
                this.armed = false;
                this.shared.driver.reap();
                return;
            }
        }
    }
}

/// The debounce (`Builder::debounce`, `max_wait`), on the driver's clock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Debounce {
    /// A cycle begins once no request came for this long ...
    pub(crate) quiet: Duration,
    /// ... or this long after the earliest request it covers.
    pub(crate) max_wait: Option<Duration>,
    /// Where the slots' ticks count from.
    pub(crate) epoch: Instant,
}

impl Debounce {
    /// `now` in ticks (microseconds since `epoch`), as slots stamp requests.
    pub(crate) fn ticks(epoch: Instant, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(epoch).as_micros()).unwrap_or(u64::MAX)
    }

    /// The instant of `ticks` (`None`: too far to name).
    fn instant(&self, ticks: u64) -> Option<Instant> {
        self.epoch.checked_add(Duration::from_micros(ticks))
    }

    /// Waits until `slot`'s key has been quiet for `quiet`, or `max_wait`
    /// has passed since the earliest request the next cycle covers (if that
    /// request's stamp is not in yet: since the wait began), or the
    /// coalescer is draining. The slot is live and pending throughout, so
    /// every request meanwhile folds into that cycle and moves the end of
    /// the quiet period.
    async fn wait<K: Hash + Eq, S: BuildHasher, D: Driver, O: CycleOutput>(
        &self,
        shared: &Shared<K, S, D, O>,
        slot: &Slot<Answer<O>>,
    ) {
        let entered = shared.driver.now();
        loop {
            if shared.registry.is_closed() {
                return; // the drain begins the cycle at once
            }
            let Some((last, first)) = slot.stamps() else {
                return;
            };
            let quiet = self
                .instant(last)
                .and_then(|last| last.checked_add(self.quiet));
            let deadline = match self.max_wait {
                None => quiet,
                Some(max_wait) => {
                    let first = first.map_or(Some(entered), |first| self.instant(first));
                    let cap = first.and_then(|first| first.checked_add(max_wait));
                    earlier(quiet, cap)
                }
            };
            if deadline.is_some_and(|deadline| shared.driver.now() >= deadline) {
                return;
            }
            shared.driver.until(deadline).await;
        }
    }
}

/// The earlier of two deadlines (`None`: never).
fn earlier(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// A cycle as the counters, the metrics and its span see it: counted as
/// running (`Stats::running`) until stopped, however the cycle ends; dropped
/// before it was stopped — its task aborted mid-cycle — it ends as aborted.
struct Watch<'a, K, S, D: Driver, O: CycleOutput> {
    shared: &'a Shared<K, S, D, O>,
    /// Stopped (or dropped) once; `None` after.
    cycle: Option<Ended>,
    began: Instant,
}

/// A cycle that has returned (or was aborted), to record with its outcome.
struct Ended {
    /// The cycle's span (target `coalescer`, name `cycle`).
    span: tracing::Span,
    /// The cycle's number in its coalescer, from 1, in the order cycles began.
    number: u64,
    /// How long it ran (set when it stopped).
    took: Duration,
}

impl<'a, K, S, D: Driver, O: CycleOutput> Watch<'a, K, S, D, O> {
    /// A cycle of `key` begins, its `attempt` (consecutive failures before
    /// it), its key due since `due`.
    fn start(shared: &'a Shared<K, S, D, O>, key: &K, attempt: u32, due: Instant) -> Self {
        Counters::bump(&shared.counters.running);
        let number = Counters::next(&shared.counters.begun);
        let began = shared.driver.now();
        let names = &shared.registry.names;
        let span = tracing::info_span!(
            target: "coalescer",
            "cycle",
            coalescer = names.name(),
            key = ?names.key(key),
            cycle = number,
            attempt,
            outcome = tracing::field::Empty,
            duration_seconds = tracing::field::Empty,
        );
        shared
            .meter
            .began(number, began, began.saturating_duration_since(due));
        Watch {
            shared,
            cycle: Some(Ended {
                span,
                number,
                took: Duration::ZERO,
            }),
            began,
        }
    }

    /// The cycle's span, to poll the cycle in.
    fn span(&self) -> tracing::Span {
        self.cycle
            .as_ref()
            .map_or_else(tracing::Span::none, |ended| ended.span.clone())
    }

    /// The cycle returned: it no longer runs.
    fn stop(mut self) -> Ended {
        self.end().expect("stopped once")
    }

    /// Takes the cycle, counted as running no more, with how long it ran
    /// (`None` once taken).
    fn end(&mut self) -> Option<Ended> {
        let mut ended = self.cycle.take()?;
        Counters::drop_one(&self.shared.counters.running);
        ended.took = self
            .shared
            .driver
            .now()
            .saturating_duration_since(self.began);
        Some(ended)
    }
}

impl<K, S, D: Driver, O: CycleOutput> Drop for Watch<'_, K, S, D, O> {
    fn drop(&mut self) {
        if let Some(ended) = self.end() {
            // Never stopped: the cycle was cancelled mid-flight.
            Counters::bump(&self.shared.counters.aborted);
            ended.record(&self.shared.meter, Outcome::Aborted);
        }
    }
}

impl Ended {
    /// Records how the cycle ended, on its span and in the metrics.
    fn record(self, meter: &Meter, outcome: Outcome) {
        self.span.record("outcome", outcome.as_str());
        self.span
            .record("duration_seconds", self.took.as_secs_f64());
        meter.ended(self.number, self.took, outcome);
    }
}

/// A failed cycle's answer, as the retry policy and the failure hook see it.
fn failure_of<E>(error: &RunError<E>) -> Failure<'_, E> {
    match error {
        RunError::Failed(error) => Failure::Error(error),
        RunError::TimedOut => Failure::TimedOut,
        _ => Failure::Panicked,
    }
}

/// The later of two deadlines, `None` (never) if either is.
fn later(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    Some(a?.max(b?))
}

/// One cycle of `runner`'s key: the cycle function called and its future
/// awaited, a panic in either caught, with this thread marked as running
/// the cycle meanwhile.
async fn cycle<K, S, D: Driver, O: CycleOutput>(
    shared: &Shared<K, S, D, O>,
    runner: &Runner<K, O>,
) -> Result<O, Stopped> {
    let mark = (shared.id(), runner.slot.id());
    // A deadline too far to name is none.
    let deadline = shared
        .timeout
        .and_then(|timeout| shared.driver.now().checked_add(timeout));
    let context = CycleContext::new(
        runner.failures,
        deadline,
        shared.driver.clock(),
        Arc::clone(&shared.stop),
    );
    let called = catch_unwind(AssertUnwindSafe(|| {
        let _in_cycle = enter_cycle(mark);
        (shared.cycle)(&runner.key, context)
    }));
    let cycle = match called {
        Ok(cycle) => Contained::new(cycle, mark),
        Err(payload) => return Err(Stopped::Panicked(payload)),
    };
    let Some(deadline) = deadline else {
        return cycle.await.map_err(Stopped::Panicked);
    };
    // The cycle first, then the timer: a cycle that is ready is never cut
    // short by a timer that fired meanwhile. Cut short, `Contained` drops
    // the cycle's future (a panic there is discarded, as on an abort).
    let mut cycle = std::pin::pin!(cycle);
    // Boxed: only a cycle with a timeout keeps a timer (a tokio `Sleep`
    // is over 100 bytes), so the others' futures are that much smaller.
    let mut timer = Box::pin(shared.driver.sleep_until(deadline));
    let ended = std::future::poll_fn(|cx| {
        if let Poll::Ready(ended) = cycle.as_mut().poll(cx) {
            return Poll::Ready(Some(ended));
        }
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await;
    match ended {
        None => Err(Stopped::TimedOut),
        // A cycle that could not be cut short (blocking) but returned late
        // has timed out all the same; what it returned is dropped.
        Some(Ok(output)) if shared.driver.now() > deadline => {
            drop_contained(Some(output), "a cycle's value or error");
            Err(Stopped::TimedOut)
        }
        Some(ended) => ended.map_err(Stopped::Panicked),
    }
}

/// Why a cycle returned no output.
enum Stopped {
    /// It panicked (when called, polled or dropped); the payload.
    Panicked(Box<dyn Any + Send>),
    /// It ran longer than the timeout.
    TimedOut,
}

/// A cycle future whose panics — while polled, or while dropped — are caught.
///
/// Resolves to the cycle's output, or to `Err(payload)` if polling panicked
/// or if dropping the finished future panicked (then the output, if any, is
/// dropped). Dropped before it resolves (its task aborted), it drops the
/// inner future under `catch_unwind` too and discards any panic.
struct Contained<O> {
    cycle: Option<CycleFuture<O>>,
    /// The coalescer and slot whose cycle this is: marked as the thread's
    /// current cycle while the future is polled.
    mark: (usize, usize),
}

impl<O> Contained<O> {
    fn new(cycle: CycleFuture<O>, mark: (usize, usize)) -> Self {
        Contained {
            cycle: Some(cycle),
            mark,
        }
    }
}

impl<O> Future for Contained<O> {
    type Output = Result<O, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let _in_cycle = enter_cycle(self.mark);
        let Some(cycle) = self.cycle.as_mut() else {
            // Polled again after it resolved: the runner never does.
            return Poll::Pending;
        };
        let output = match catch_unwind(AssertUnwindSafe(|| cycle.as_mut().poll(cx))) {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(output)) => Ok(output),
            Err(payload) => Err(payload),
        };
        let finished = self.cycle.take();
        let dropped = catch_unwind(AssertUnwindSafe(move || drop(finished)));
        Poll::Ready(match (output, dropped) {
            (output, Ok(())) => output,
            (Ok(output), Err(payload)) => {
                drop_contained(Some(output), "a cycle's value or error");
                Err(payload)
            }
            (Err(payload), Err(again)) => {
                panic::dispose(again);
                Err(payload)
            }
        })
    }
}

impl<O> Drop for Contained<O> {
    fn drop(&mut self) {
        if let Some(cycle) = self.cycle.take() {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(cycle))) {
                panic::dispose(payload);
            }
        }
    }
}

// Which cycle this thread is running right now — its coalescer's and its
// slot's addresses — so that `request_and_wait` from inside a cycle of the
// same key is refused instead of waiting for itself, and an async `shutdown`
// from inside one of its own cycles does not wait for itself either.
thread_local_const! {
    static CURRENT_CYCLE: std::cell::Cell<(usize, usize)> = std::cell::Cell::new((0, 0));
}

/// Marks this thread as running a cycle of `(coalescer, slot)` until the
/// guard drops (restoring what was there).
fn enter_cycle(mark: (usize, usize)) -> InCycle {
    InCycle(CURRENT_CYCLE.with(|c| c.replace(mark)))
}

/// Whether this thread is running a cycle of the slot with id `slot`.
pub(crate) fn in_cycle_of(slot: usize) -> bool {
    CURRENT_CYCLE.with(|c| c.get().1 == slot)
}

/// Whether this thread is running a cycle of the coalescer with id `owner`.
pub(crate) fn in_cycle_owned_by(owner: usize) -> bool {
    CURRENT_CYCLE.with(|c| c.get().0 == owner)
}

/// Restores the previous cycle mark when dropped (see [`enter_cycle`]).
#[derive(Debug)]
struct InCycle((usize, usize));

impl Drop for InCycle {
    fn drop(&mut self) {
        CURRENT_CYCLE.with(|c| c.set(self.0));
    }
}
