//! The blocking front end: runners are OS threads owned by the coalescer.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::{Admission, Closed, RunError, StillRunning};
use crate::panic::PanicReport;
use crate::registry::AdmitError;
use crate::runner::{Core, Options, Runner};
use crate::stats::Stats;
use std::time::{Duration, Instant};

use crate::sync::{
    enter_cycle, lock, thread, wait_until, Arc, AtomicBool, Condvar, Mutex, Ordering,
};

/// A per-key coalescer whose cycles run on threads it owns.
///
/// For each key, at most one cycle runs at a time; a request while the key's
/// cycle runs is folded into one follow-up cycle that begins after it; keys
/// never wait for each other. See the crate docs and `docs/invariants.md`
/// for the exact guarantees.
///
/// Dropping the coalescer shuts it down ([`Coalescer::shutdown`]): like
/// [`std::thread::scope`], it joins every thread it started, so no cycle
/// runs after it is gone.
///
/// ```
/// # if coalescer::__LOOM_BUILD { return; }
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::sync::Arc;
/// use coalescer::blocking::Coalescer;
///
/// let restarts = Arc::new(AtomicU32::new(0));
/// let counted = Arc::clone(&restarts);
/// let coalescer = Coalescer::new(move |_workspace: &u64| {
///     counted.fetch_add(1, Ordering::Relaxed); // restart workspace here
/// });
/// coalescer.request(7).unwrap();
/// coalescer.request_and_wait(7).unwrap(); // a restart that began after this call has finished
/// coalescer.shutdown();
/// assert!(restarts.load(Ordering::Relaxed) >= 1);
/// ```
pub struct Coalescer<K, S = RandomState> {
    inner: Arc<Inner<K, S>>,
}

struct Inner<K, S> {
    core: Core<K, S>,
    cycle: Box<dyn Fn(&K) + Send + Sync>,
    threads: ThreadSet,
    /// Serializes `shutdown` calls, so that a second caller returns only
    /// once the first one's drain is complete.
    shutting_down: Mutex<()>,
    /// Holds runners back between a key's cycles (`min_interval`).
    pace: Pace,
    /// Set when `shutdown_timeout` gave up on some runners: `Drop` then
    /// closes without joining them.
    gave_up: AtomicBool,
}

/// The blocking `min_interval` wait: a timed wait on a condvar that
/// `shutdown` interrupts, so the drain never sits out an interval.
struct Pace {
    /// Zero: no pacing.
    min_interval: Duration,
    /// Set once by `shutdown`. Guarded by this mutex; `wake` is notified
    /// when it is set.
    draining: Mutex<bool>,
    wake: Condvar,
}

impl Pace {
    fn new(min_interval: Duration) -> Self {
        Pace {
            min_interval,
            draining: Mutex::new(false),
            wake: Condvar::new(),
        }
    }

    /// The time a cycle began, if pacing is on.
    fn clock(&self) -> Option<Instant> {
        (!self.min_interval.is_zero()).then(Instant::now)
    }

    /// Returns once `min_interval` has passed since `began`, or at once when
    /// the coalescer is draining. The key's slot stays live meanwhile, so
    /// every request that arrives joins the one follow-up cycle.
    fn until_next(&self, began: Instant) {
        // An interval too long to add to a clock waits for the drain.
        let deadline = began.checked_add(self.min_interval);
        let mut draining = lock(&self.draining);
        while !*draining {
            let (guard, passed) = wait_until(&self.wake, &self.draining, draining, deadline);
            draining = guard;
            if passed {
                return;
            }
        }
    }

    /// Ends every wait, now and later.
    fn drain(&self) {
        *lock(&self.draining) = true;
        self.wake.notify_all();
    }
}

/// Builds a [`Coalescer`] with options.
pub struct Builder<K, S = RandomState> {
    options: Options<K, S>,
}

impl<K> Builder<K> {
    /// A builder with the defaults: panics reported as a `tracing` error
    /// event, `RandomState` hashing, four map shards per core.
    pub fn new() -> Self {
        Builder {
            options: Options::new(),
        }
    }
}

impl<K> Default for Builder<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, S> Builder<K, S> {
    /// Replaces the panic hook. It is called exactly once for every cycle
    /// that panics, on the runner thread, after the panic was caught. A
    /// panic inside the hook is caught and discarded.
    #[must_use]
    pub fn panic_hook(self, hook: impl Fn(&PanicReport<'_, K>) + Send + Sync + 'static) -> Self {
        Builder {
            options: self.options.panic_hook(hook),
        }
    }

    /// Replaces the hasher that places keys in the map (the default,
    /// `RandomState`, resists hash flooding).
    #[must_use]
    pub fn hasher<S2: BuildHasher + Clone>(self, hasher: S2) -> Builder<K, S2> {
        Builder {
            options: self.options.hasher(hasher),
        }
    }

    /// Sets the number of map shards (rounded up to a power of two, at
    /// least 1, at most 65 536). More shards mean fewer requests contending
    /// on one lock when keys become active or idle.
    #[must_use]
    pub fn shards(self, shards: usize) -> Self {
        Builder {
            options: self.options.shards(shards),
        }
    }

    /// Paces each key: a follow-up cycle of a key begins no earlier than
    /// `min_interval` after the previous cycle of that key began. Requests
    /// that arrive meanwhile are not dropped: they join that one follow-up.
    /// A request for an idle key still starts its cycle at once, and
    /// `shutdown` cuts every wait short (the drain runs pending follow-ups
    /// at once). The default, zero, does not pace.
    #[must_use]
    pub fn min_interval(self, min_interval: Duration) -> Self {
        Builder {
            options: self.options.min_interval(min_interval),
        }
    }

    /// Builds the coalescer; `cycle` is run for a key each time a cycle of
    /// that key begins.
    pub fn build<F>(self, cycle: F) -> Coalescer<K, S>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        S: BuildHasher + Clone + Send + Sync + 'static,
        F: Fn(&K) + Send + Sync + 'static,
    {
        let pace = Pace::new(self.options.min_interval);
        Coalescer {
            inner: Arc::new(Inner {
                core: Core::new(self.options),
                cycle: Box::new(cycle),
                threads: ThreadSet::default(),
                shutting_down: Mutex::new(()),
                pace,
                gave_up: AtomicBool::new(false),
            }),
        }
    }
}

impl<K, S: fmt::Debug> fmt::Debug for Builder<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("options", &self.options)
            .finish()
    }
}

impl<K> Coalescer<K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    /// A coalescer with the default options that runs `cycle` for a key each
    /// time a cycle of that key begins.
    pub fn new<F>(cycle: F) -> Self
    where
        F: Fn(&K) + Send + Sync + 'static,
    {
        Builder::new().build(cycle)
    }

    /// A builder, for options.
    pub fn builder() -> Builder<K> {
        Builder::new()
    }
}

impl<K, S> Coalescer<K, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    /// Requests a cycle of `key`, and returns at once: it never waits for a
    /// cycle.
    ///
    /// If the key is idle this starts its runner ([`Admission::Started`]);
    /// if its runner is active, the request is folded into the one cycle that
    /// runner begins next ([`Admission::Coalesced`]). Either way, everything
    /// this thread did before the call happens-before the cycle that covers
    /// the request.
    ///
    /// # Errors
    ///
    /// [`Closed`] once [`shutdown`](Self::shutdown) has begun; the request is
    /// then not recorded.
    ///
    /// # Panics
    ///
    /// If the OS refuses to start a runner thread (as [`std::thread::spawn`]
    /// does); the request is then not recorded. A panic of `K`'s `Hash` or
    /// `Eq` reaches the caller; the coalescer stays usable.
    pub fn request(&self, key: K) -> Result<Admission, Closed> {
        // Only a waiting request can be refused for any other reason.
        self.admit(key, false)
            .map(|(admission, _)| admission)
            .map_err(|_| Closed)
    }

    /// Requests a cycle of `key` and blocks until a cycle that began after
    /// this request was accepted has ended.
    ///
    /// When this returns `Ok(())`, that cycle completed, and everything it
    /// did happens-before the return.
    ///
    /// # Errors
    ///
    /// [`RunError::Closed`] if the coalescer is shut down (nothing recorded);
    /// [`RunError::OwnCycle`] from inside a cycle of the same key (nothing
    /// recorded); [`RunError::Panicked`] if the covering cycle panicked.
    ///
    /// # Panics
    ///
    /// As [`request`](Self::request).
    ///
    /// Called from inside a cycle of the same `key` it returns
    /// [`RunError::OwnCycle`] at once, recording nothing: it would wait for a
    /// cycle that cannot begin until the calling cycle returns.
    pub fn request_and_wait(&self, key: K) -> Result<(), RunError> {
        let (_, completion) = self.admit(key, true)?;
        let completion = completion.expect("admission with wait carries a completion");
        completion.wait().into_result()
    }

    fn admit(
        &self,
        key: K,
        wait: bool,
    ) -> Result<(Admission, Option<Arc<crate::completion::Completion>>), RunError> {
        let inner = &self.inner;
        let admitted =
            inner
                .core
                .registry
                .admit(key, wait, &inner.core.counters, |key, slot, hash| {
                    let runner = Runner::new(key.clone(), Arc::clone(slot), hash);
                    let owner = Arc::clone(inner);
                    inner.threads.spawn(move || owner.run(runner))
                });
        match admitted {
            Ok(a) => Ok((a.admission, a.completion)),
            Err(AdmitError::Closed) => Err(RunError::Closed),
            Err(AdmitError::OwnCycle) => Err(RunError::OwnCycle),
            Err(AdmitError::Start(e)) => {
                panic!("coalescer: failed to start a runner thread: {e}")
            }
        }
    }

    /// Closes the coalescer and drains it: every later request is rejected
    /// with [`Closed`], and this returns only when every request accepted
    /// before the close is covered by a cycle that has ended, and every
    /// runner thread has exited. Idempotent; concurrent callers all wait for
    /// the drain.
    ///
    /// Called from inside a cycle, it closes and joins every other runner,
    /// but cannot join its own thread; that runner finishes its key's pending
    /// cycles after the calling cycle returns, and is joined by a later
    /// `shutdown` or by `Drop`.
    pub fn shutdown(&self) {
        self.inner.shutdown(None);
    }

    /// [`shutdown`](Self::shutdown), but gives up waiting after `timeout`:
    /// for a cycle that may never return.
    ///
    /// # Errors
    ///
    /// [`StillRunning`] with the keys whose runners had not finished when
    /// the timeout passed. The coalescer is closed either way. Those runners
    /// go on in the background: after a timeout, dropping the coalescer no
    /// longer joins them (it would block for as long as they run) — the one
    /// case in which a runner outlives its coalescer, because the caller
    /// asked to stop waiting for it.
    pub fn shutdown_timeout(&self, timeout: Duration) -> Result<(), StillRunning<K>> {
        // A timeout too long to add to the clock is no timeout.
        if self.inner.shutdown(Instant::now().checked_add(timeout)) {
            return Ok(());
        }
        // ORDERING: Relaxed: read only by this coalescer's own `Drop`, which
        // the caller's thread (or a later owner, through the handoff that
        // moved the coalescer) runs after this.
        self.inner.gave_up.store(true, Ordering::Relaxed);
        Err(StillRunning {
            keys: self.inner.core.registry.live_keys(),
        })
    }

    /// The number of keys with a running or pending cycle; 0 once quiescent.
    pub fn active_keys(&self) -> usize {
        self.inner.core.registry.active_keys()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.inner.core.stats()
    }
}

impl<K, S> Inner<K, S> {
    /// Close, then join every runner (see `Coalescer::shutdown`), giving up
    /// at `deadline` if there is one; whether every runner was joined.
    fn shutdown(&self, deadline: Option<Instant>) -> bool {
        let _one_at_a_time = lock(&self.shutting_down);
        self.close();
        match deadline {
            None => {
                self.threads.join_all();
                true
            }
            Some(deadline) => self.threads.join_until(deadline),
        }
    }

    /// Closes admission and ends every `min_interval` wait: runners waiting
    /// out an interval begin their follow-up now.
    fn close(&self) {
        self.core.registry.close();
        self.pace.drain();
    }
}

impl<K, S> Inner<K, S>
where
    K: Hash + Eq,
    S: BuildHasher + Clone,
{
    /// The runner thread's body: cycles until the key goes idle.
    fn run(&self, runner: Runner<K>) {
        loop {
            let begun = runner.begin();
            let began = self.pace.clock();
            let result = catch_unwind(AssertUnwindSafe(|| {
                let _mark = enter_cycle(std::ptr::from_ref(self) as usize, runner.slot_id());
                (self.cycle)(&runner.key)
            }));
            runner.finish(&self.core, &begun, result);
            if let Some(began) = began {
                // The slot stays live meanwhile: requests coalesce into one
                // paced follow-up instead of starting a cycle at once.
                self.pace.until_next(began);
            }
            if !runner.settle(&self.core, &begun) {
                return;
            }
        }
    }
}

impl<K, S> Drop for Coalescer<K, S> {
    /// Shuts down (see [`Coalescer::shutdown`]): a coalescer joins the
    /// threads it started.
    fn drop(&mut self) {
        // ORDERING: Relaxed, see `shutdown_timeout`.
        if self.inner.gave_up.load(Ordering::Relaxed) {
            self.inner.close();
        } else {
            self.inner.shutdown(None);
        }
    }
}

impl<K, S> fmt::Debug for Coalescer<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coalescer")
            .field("stats", &self.inner.core.stats())
            .finish_non_exhaustive()
    }
}

/// The runner threads a coalescer owns. Finished threads are joined (reaped)
/// whenever a new one is started, so the set holds only live runners and
/// runners that are exiting.
#[derive(Default)]
struct ThreadSet {
    /// Guarded by this mutex; never held while joining a live thread, so a
    /// runner is never blocked by it.
    entries: Mutex<Vec<Entry>>,
}

struct Entry {
    /// Set by the thread as the last thing it does.
    finished: Arc<AtomicBool>,
    handle: thread::JoinHandle<()>,
}

/// Sets the flag when dropped, so it is set however the body ends.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        // ORDERING: Release pairs with the Acquire load in `ThreadSet::spawn`'s
        // reaping; the join that follows is what actually synchronizes.
        self.0.store(true, Ordering::Release);
    }
}

impl ThreadSet {
    fn spawn(&self, body: impl FnOnce() + Send + 'static) -> io::Result<()> {
        let mut entries = lock(&self.entries);
        // Reap: the flag is the thread's last action, so these joins return
        // at once (or after the thread's final few instructions).
        let mut i = 0;
        while i < entries.len() {
            // ORDERING: Acquire pairs with the Release store in `SetOnDrop`.
            if entries[i].finished.load(Ordering::Acquire) {
                let done = entries.swap_remove(i);
                // The body never panics (cycles run under catch_unwind); a
                // join error would be a bug in this crate, with nothing to do
                // about it here.
                let _ = done.handle.join();
            } else {
                i += 1;
            }
        }
        let finished = Arc::new(AtomicBool::new(false));
        let flag = SetOnDrop(Arc::clone(&finished));
        let handle = thread::Builder::new()
            .name("coalescer-runner".to_owned())
            .spawn(move || {
                let _flag = flag;
                body();
            })?;
        entries.push(Entry { finished, handle });
        Ok(())
    }

    /// Joins every finished thread until none is left but the caller's own,
    /// or `deadline` passes; whether all were joined.
    /// Polls the threads' `finished` flags once a millisecond: this is only
    /// for `shutdown_timeout`, where a cycle may never return.
    fn join_until(&self, deadline: Instant) -> bool {
        let me = thread::current().id();
        loop {
            let finished: Vec<Entry> = {
                let mut entries = lock(&self.entries);
                let (done, rest) = std::mem::take(&mut *entries).into_iter().partition(|e| {
                    // ORDERING: Acquire pairs with the Release store in `SetOnDrop`.
                    e.finished.load(Ordering::Acquire)
                });
                *entries = rest;
                if entries.iter().all(|e| e.handle.thread().id() == me) && done.is_empty() {
                    return true;
                }
                done
            };
            for entry in finished {
                let _ = entry.handle.join();
            }
            if Instant::now() >= deadline {
                return lock(&self.entries)
                    .iter()
                    .all(|e| e.handle.thread().id() == me);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Joins every thread in the set except the caller's own (a thread
    /// cannot join itself), including threads started while this runs.
    fn join_all(&self) {
        let me = thread::current().id();
        loop {
            let batch: Vec<Entry> = {
                let mut entries = lock(&self.entries);
                let (own, others) = std::mem::take(&mut *entries)
                    .into_iter()
                    .partition(|e| e.handle.thread().id() == me);
                *entries = own;
                others
            };
            if batch.is_empty() {
                return;
            }
            for entry in batch {
                let _ = entry.handle.join();
            }
        }
    }
}

static_assertions::assert_impl_all!(Coalescer<u64>: Send, Sync);
static_assertions::assert_impl_all!(Coalescer<String>: Send, Sync);

#[cfg(all(test, not(loom)))]
mod tests {
    use super::Coalescer;

    /// INV-6: once quiescent, no key holds a slot — not even a dead one.
    #[test]
    fn inv6_idle_keys_hold_no_slot() {
        let c = Coalescer::new(|_: &u32| {});
        for key in 0..10_000 {
            c.request(key).unwrap();
            c.request(key % 7).unwrap();
        }
        c.shutdown();
        assert_eq!(c.inner.core.registry.slots(), 0);
        assert_eq!(c.active_keys(), 0);
    }

    /// A key with a cycle running holds exactly one slot and counts as one
    /// active key; both go once the key is idle.
    #[test]
    fn a_running_key_holds_one_slot() {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let held = std::sync::Mutex::new(held);
        let c = Coalescer::new(move |_: &u32| {
            let _ = held.lock().unwrap().recv();
        });
        // Dropped before `c` if an assertion fails, so `Drop` cannot hang.
        let release = release;
        c.request(1).unwrap();
        c.request(1).unwrap();
        let (held_slots, active) = (c.inner.core.registry.slots(), c.active_keys());
        drop(release);
        c.shutdown();
        assert_eq!((held_slots, active), (1, 1));
        assert_eq!(c.inner.core.registry.slots(), 0);
        assert_eq!(c.active_keys(), 0);
    }

    /// Finished runner threads are reaped: the set holds only runners that
    /// are live or exiting, not one entry per key ever started.
    #[test]
    fn finished_runners_are_reaped() {
        let c = Coalescer::new(|_: &u32| {});
        for key in 0..2_000 {
            c.request_and_wait(key).unwrap();
        }
        let held = super::lock(&c.inner.threads.entries).len();
        assert!(
            held < 2_000,
            "{held} runner handles kept for 2000 finished runners"
        );
        c.shutdown();
        assert_eq!(super::lock(&c.inner.threads.entries).len(), 0);
    }
}
