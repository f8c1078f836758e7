//! The runner: one key's loop of cycles, written once for every driver, on
//! top of `Slot` and `Registry`; and what the runners and the verbs share.

use std::any::Any;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::AtomicU8;
use std::task::{Context, Poll};

use crate::completion::{Completion, Outcome};
use crate::driver::{BoxFuture, Driver};
use crate::panic::{self, PanicHook};
use crate::registry::Registry;
use crate::slot::{AfterCycle, Begun, Slot};
use crate::stats::{Counters, Stats};
use crate::sync::{thread_local_const, Arc};

/// The cycle function, as every driver calls it: called when a cycle
/// begins, its future awaited. (A blocking cycle runs inside the call and
/// returns a ready future.)
pub(crate) type CycleFn<K> = Box<dyn Fn(&K) -> BoxFuture + Send + Sync>;

/// What a coalescer's verbs and its runners share.
pub(crate) struct Shared<K, S, D> {
    pub(crate) registry: Registry<K, S>,
    pub(crate) counters: Counters,
    pub(crate) hook: PanicHook<K>,
    pub(crate) cycle: CycleFn<K>,
    pub(crate) driver: D,
}

impl<K, S, D: Driver> Shared<K, S, D> {
    /// Closes admission (every later request is rejected, every earlier one
    /// is in a live slot: INV-5) and ends every pacing wait, so the drain
    /// runs pending follow-ups at once.
    pub(crate) fn close(&self) {
        self.registry.close();
        self.driver.drain();
    }
}

impl<K, S, D> Shared<K, S, D> {
    /// A snapshot of the counters.
    pub(crate) fn stats(&self) -> Stats {
        self.counters.snapshot(self.registry.coalesced_count())
    }

    /// This coalescer's identity, for the own-cycle check.
    pub(crate) fn id(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }
}

/// One key's runner: started by the request that created `slot`, it runs
/// cycles until the slot goes idle, then removes the slot from the map.
#[derive(Debug)]
pub(crate) struct Runner<K> {
    key: K,
    slot: Arc<Slot>,
    /// The key's hash, from admission: reclamation finds the slot by it.
    hash: u64,
}

impl<K: Hash + Eq> Runner<K> {
    pub(crate) fn new(key: K, slot: Arc<Slot>, hash: u64) -> Self {
        Runner { key, slot, hash }
    }

    /// Finishes the cycle `begun`, which returned `result`: a panic is
    /// counted and reported once (INV-3), and waiters are told. The slot
    /// stays live; [`settle`](Self::settle) decides what comes next.
    fn finish<S, D>(
        &self,
        shared: &Shared<K, S, D>,
        begun: &Begun,
        result: Result<(), Box<dyn Any + Send>>,
    ) {
        let outcome = match result {
            Ok(()) => Outcome::Completed,
            Err(payload) => {
                Counters::bump(&shared.counters.panics);
                panic::report(&shared.hook, &self.key, payload);
                Outcome::Panicked
            }
        };
        Counters::bump(&shared.counters.cycles);
        if let Some(completion) = &begun.completion {
            completion.resolve(outcome);
        }
    }

    /// After [`finish`](Self::finish) (and any `min_interval` wait): the slot
    /// goes idle if no request arrived since `begun` (INV-2) — and is then
    /// removed from the map (INV-6). A panicking cycle settles through this
    /// same path, so a request that arrived during it makes `go_idle` fail
    /// and gets its follow-up (D2).
    fn settle<S: BuildHasher, D>(&self, shared: &Shared<K, S, D>, begun: &Begun) -> AfterCycle {
        let next = self.slot.go_idle(begun);
        if next == AfterCycle::Idle {
            shared.registry.reclaim(self.hash, &self.slot);
        }
        next
    }

    /// Tears down a runner that is stopped mid-flight (its task aborted or
    /// dropped unpolled): the cycle it was running, if any (`current`), and
    /// the cycle its slot would have begun next both resolve as aborted, and
    /// the slot is killed and removed so no request is stranded in it.
    fn abandon<S: BuildHasher, D>(
        &self,
        shared: &Shared<K, S, D>,
        current: Option<Arc<Completion>>,
    ) {
        if let Some(completion) = current {
            completion.resolve(Outcome::Aborted);
        }
        if let Some(next) = self.slot.abandon() {
            next.resolve(Outcome::Aborted);
        }
        shared.registry.reclaim(self.hash, &self.slot);
    }
}

/// A runner as its driver holds it: the loop's state, and a guard that
/// abandons the slot if the driver drops the runner before it went idle —
/// a task aborted by the async coalescer's `Drop`, or dropped unpolled by a
/// runtime that is shutting down — so no waiter and no request is stranded.
struct Task<K: Hash + Eq, S: BuildHasher, D: Driver> {
    shared: Arc<Shared<K, S, D>>,
    runner: Runner<K>,
    /// The completion of the cycle running now, if anyone waits for it.
    current: Option<Arc<Completion>>,
    /// Cleared when the runner went idle normally.
    armed: bool,
    /// Set when the driver first polls the runner (never inside `spawn`).
    polled: bool,
    launch: Launch,
}

impl<K: Hash + Eq, S: BuildHasher, D: Driver> Drop for Task<K, S, D> {
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
pub(crate) fn start<K, S, D>(
    shared: &Arc<Shared<K, S, D>>,
    key: K,
    slot: Arc<Slot>,
    hash: u64,
) -> Result<(), StartError>
where
    K: Hash + Eq + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
    D: Driver,
{
    let launch = Launch::new();
    let task = Task {
        shared: Arc::clone(shared),
        runner: Runner::new(key, slot, hash),
        current: None,
        armed: true,
        polled: false,
        launch: launch.clone(),
    };
    shared
        .driver
        .spawn(Box::pin(run(task)))
        .map_err(StartError::Os)?;
    if launch.settle() {
        Ok(())
    } else {
        Err(StartError::Gone)
    }
}

/// The runner loop: cycles until the key goes idle (INV-2), each under
/// panic containment (INV-3), paced by the driver between cycles.
async fn run<K, S, D>(mut this: Task<K, S, D>)
where
    K: Hash + Eq,
    S: BuildHasher,
    D: Driver,
{
    this.polled = true;
    loop {
        if this.shared.driver.is_aborted() {
            return; // the guard abandons the slot
        }
        let begun = this.runner.slot.begin();
        let began = this.shared.driver.clock();
        this.current.clone_from(&begun.completion);
        let result = cycle(&this.shared, &this.runner).await;
        this.current = None;
        this.runner.finish(&this.shared, &begun, result);
        if let Some(began) = began {
            // The slot stays live meanwhile: requests coalesce into one
            // paced follow-up. Aborted here, the guard abandons the slot as
            // anywhere else.
            this.shared.driver.until_next(began).await;
        }
        if this.runner.settle(&this.shared, &begun) == AfterCycle::Idle {
            this.armed = false;
            this.shared.driver.reap();
            return;
        }
    }
}

/// One cycle of `runner`'s key: the cycle function called and its future
/// awaited, a panic in either caught, with this thread marked as running
/// the cycle meanwhile.
async fn cycle<K, S, D>(
    shared: &Shared<K, S, D>,
    runner: &Runner<K>,
) -> Result<(), Box<dyn Any + Send>> {
    let mark = (shared.id(), runner.slot.id());
    let called = catch_unwind(AssertUnwindSafe(|| {
        let _in_cycle = enter_cycle(mark);
        (shared.cycle)(&runner.key)
    }));
    match called {
        Ok(cycle) => Contained::new(cycle, mark).await,
        Err(payload) => Err(payload),
    }
}

/// A cycle future whose panics — while polled, or while dropped — are caught.
///
/// Resolves to `Err(payload)` if polling panicked or if dropping the finished
/// future panicked. Dropped before it resolves (its task aborted), it drops
/// the inner future under `catch_unwind` too and discards any panic.
struct Contained {
    cycle: Option<BoxFuture>,
    /// The coalescer and slot whose cycle this is: marked as the thread's
    /// current cycle while the future is polled.
    mark: (usize, usize),
}

impl Contained {
    fn new(cycle: BoxFuture, mark: (usize, usize)) -> Self {
        Contained {
            cycle: Some(cycle),
            mark,
        }
    }
}

impl Future for Contained {
    type Output = Result<(), Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let _in_cycle = enter_cycle(self.mark);
        let Some(cycle) = self.cycle.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let polled = catch_unwind(AssertUnwindSafe(|| cycle.as_mut().poll(cx)));
        if let Ok(Poll::Pending) = polled {
            return Poll::Pending;
        }
        let finished = self.cycle.take();
        let dropped = catch_unwind(AssertUnwindSafe(move || drop(finished)));
        Poll::Ready(match (polled, dropped) {
            (Ok(_), Ok(())) => Ok(()),
            (Err(payload), Ok(())) | (Ok(_), Err(payload)) => Err(payload),
            (Err(payload), Err(again)) => {
                panic::dispose(again);
                Err(payload)
            }
        })
    }
}

impl Drop for Contained {
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
