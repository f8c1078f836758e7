//! The blocking front end: runners are OS threads owned by the coalescer.
//! What differs from the async front end — blocking waits and shutdown, a
//! cycle that is a plain closure, `Drop` joining — is here; the rest is
//! `shell.rs`.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};
use std::time::{Duration, Instant};

use crate::context::CycleContext;
use crate::driver::Threads;
use crate::error::{RunError, StillRunning};
use crate::output::CycleOutput;
use crate::retry::{FailureHook, NoHook, NoRetry, RetryPolicy};
use crate::shell;

/// A per-key coalescer whose cycles run on threads it owns.
///
/// For each key, at most one cycle runs at a time; a request while the key's
/// cycle runs is folded into one follow-up cycle that begins after it; keys
/// never wait for each other. See the crate docs and `docs/invariants.md`
/// for the exact guarantees.
///
/// Dropping the coalescer shuts it down ([`shutdown`](#method.shutdown)): like
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
pub type Coalescer<K, S = RandomState, O = ()> = shell::Coalescer<K, S, Threads, O>;

/// Builds a [`Coalescer`] with options.
pub type Builder<K, S = RandomState, P = NoRetry, H = NoHook> = shell::Builder<K, S, Threads, P, H>;

shell::front_end!(Coalescer, Builder);

impl<K, S, P, H> Builder<K, S, P, H> {
    /// Builds the coalescer; `cycle` is run for a key each time a cycle of
    /// that key begins. It returns `()` or, for a cycle that can fail, a
    /// `Result` ([`CycleOutput`]).
    pub fn build<F, O>(self, cycle: F) -> Coalescer<K, S, O>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        S: BuildHasher + Send + Sync + 'static,
        F: Fn(&K) -> O + Send + Sync + 'static,
        O: CycleOutput,
        P: RetryPolicy<K, O::Error>,
        H: FailureHook<K, O::Error>,
    {
        self.build_with_context(move |key: &K, _: &CycleContext| cycle(key))
    }

    /// Builds the coalescer; `cycle(key, context)` is run each time a cycle
    /// of `key` begins. The [`CycleContext`] tells the cycle its attempt and
    /// whether to stop (a blocking cycle can only be asked to).
    pub fn build_with_context<F, O>(self, cycle: F) -> Coalescer<K, S, O>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        S: BuildHasher + Send + Sync + 'static,
        F: Fn(&K, &CycleContext) -> O + Send + Sync + 'static,
        O: CycleOutput,
        P: RetryPolicy<K, O::Error>,
        H: FailureHook<K, O::Error>,
    {
        // The cycle runs inside the call; its future is ready at once.
        self.finish(
            Threads::new,
            Box::new(move |key: &K, context| Box::pin(std::future::ready(cycle(key, &context)))),
        )
    }
}

impl<K, O> Coalescer<K, RandomState, O>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    O: CycleOutput,
{
    /// A coalescer with the default options that runs `cycle` for a key each
    /// time a cycle of that key begins. It returns `()` or, for a cycle that
    /// can fail, a `Result` ([`CycleOutput`]).
    pub fn new<F>(cycle: F) -> Self
    where
        F: Fn(&K) -> O + Send + Sync + 'static,
    {
        Builder::new().build(cycle)
    }
}

impl<K, S, O> Coalescer<K, S, O>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
    O: CycleOutput,
{
    /// Requests a cycle of `key` and blocks until a cycle that began after
    /// this request was accepted has ended; returns that cycle's value
    /// (`()` for a cycle that returns nothing). Every waiter that cycle
    /// covers gets a clone of the value, hence `Clone` (return an `Arc` from
    /// the cycle for a value that is costly to clone).
    ///
    /// When this returns `Ok`, that cycle completed, and everything it did
    /// happens-before the return.
    ///
    /// # Errors
    ///
    /// [`RunError::Closed`] if the coalescer is shut down (nothing recorded);
    /// [`RunError::OwnCycle`] from inside a cycle of the same key (nothing
    /// recorded: it would wait for a cycle that cannot begin until the
    /// calling cycle returns); [`RunError::Failed`] with the covering
    /// cycle's error if it returned one; [`RunError::Panicked`] if it
    /// panicked.
    ///
    /// # Panics
    ///
    /// As [`request`](Self::request).
    pub fn request_and_wait(&self, key: K) -> Result<O::Value, RunError<O::Error>>
    where
        O::Value: Clone,
    {
        let (_, completion) = self.request_waiting(key)?;
        completion.wait()
    }

    /// Closes the coalescer and drains it: every later request is rejected
    /// with [`Closed`](crate::Closed), and this returns only when every
    /// request accepted before the close is covered by a cycle that has
    /// ended, and every runner thread has exited. Idempotent; concurrent
    /// callers all wait for the drain.
    ///
    /// Called from inside a cycle, it closes and joins every other runner,
    /// but cannot join its own thread; that runner finishes its key's pending
    /// cycles after the calling cycle returns, and is joined by a later
    /// `shutdown` or by `Drop`.
    pub fn shutdown(&self) {
        let shared = &self.shared;
        shared.driver.shutdown(|| shared.close(), None);
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
        let shared = &self.shared;
        // A timeout too long to add to the clock is no timeout.
        let deadline = Instant::now().checked_add(timeout);
        if shared.driver.shutdown(|| shared.close(), deadline) {
            return Ok(());
        }
        shared.driver.give_up();
        shared.stop.set();
        Err(StillRunning {
            keys: shared.registry.live_keys(),
        })
    }
}

static_assertions::assert_impl_all!(Coalescer<u64>: Send, Sync);
static_assertions::assert_impl_all!(Coalescer<String>: Send, Sync);

// Not under loom, whose primitives work only inside a model (the loom
// models of this front end are in `loom-tests/`).
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
        assert_eq!(c.shared.registry.slots(), 0);
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
        let (held_slots, active) = (c.shared.registry.slots(), c.active_keys());
        drop(release);
        c.shutdown();
        assert_eq!((held_slots, active), (1, 1));
        assert_eq!(c.shared.registry.slots(), 0);
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
        let held = c.shared.driver.len();
        // The last runner's entry stays until the next spawn reaps it.
        assert!(held >= 1, "no runner handle held at all");
        assert!(
            held < 2_000,
            "{held} runner handles kept for 2000 finished runners"
        );
        c.shutdown();
        assert_eq!(c.shared.driver.len(), 0);
    }
}
