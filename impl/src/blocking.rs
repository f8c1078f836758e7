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
/// runs after it is gone. Dropped from inside one of its own cycles (its
/// last owner moved into a cycle), it shuts down from there, as
/// `shutdown` does: it closes and joins every other runner; the calling
/// cycle then runs on to its end, and its runner thread, which cannot join
/// itself, finishes its key's pending cycles and exits on its own. A cycle
/// that requests keys should hold a [`Requester`] instead
/// ([`Builder::build_cyclic`](type.Builder.html#method.build_cyclic)), which cannot drop the coalescer.
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

/// A handle that requests cycles of a [`Coalescer`] without owning it:
/// [`Coalescer::handle`](type.Coalescer.html#method.handle) makes one.
///
/// Cheap to clone (one reference count) and `Send + Sync`: give it to other
/// threads or to the coalescer's own cycles ([`Builder::build_cyclic`](type.Builder.html#method.build_cyclic)). It
/// has the request verbs — `request`, `request_and_wait`, `request_after` —
/// and no `shutdown`. It does not keep the coalescer alive: once the
/// coalescer is shut down or dropped, every request through it is rejected
/// with [`Closed`](crate::Closed) ([`RunError::Closed`] for
/// `request_and_wait`).
pub type Requester<K, S = RandomState, O = ()> = shell::Requester<K, S, Threads, O>;

shell::front_end!(Coalescer, Builder, Requester);

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
        self.build_cyclic(|_| cycle)
    }

    /// Builds the coalescer as
    /// [`build_with_context`](Self::build_with_context) does, with the
    /// cycle function that `make` returns when given a [`Requester`] of
    /// the coalescer being built: a cycle can request keys of its own
    /// coalescer (other keys, or its own again) with no `Arc` around the
    /// coalescer and no `OnceLock`.
    ///
    /// ```
    /// # if coalescer::__LOOM_BUILD { return; }
    /// use coalescer::blocking::Builder;
    ///
    /// // Restarting a workspace first restarts the one it depends on.
    /// let restarts = Builder::new().build_cyclic(|restarts| {
    ///     move |workspace: &u64, _: &_| {
    ///         if *workspace < 3 {
    ///             restarts.request_and_wait(workspace + 1).unwrap();
    ///         }
    ///     }
    /// });
    /// restarts.request_and_wait(1).unwrap(); // 3, then 2, then 1
    /// assert_eq!(restarts.stats().cycles, 3);
    /// ```
    pub fn build_cyclic<M, F, O>(self, make: M) -> Coalescer<K, S, O>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        S: BuildHasher + Send + Sync + 'static,
        M: FnOnce(Requester<K, S, O>) -> F,
        F: Fn(&K, &CycleContext) -> O + Send + Sync + 'static,
        O: CycleOutput,
        P: RetryPolicy<K, O::Error>,
        H: FailureHook<K, O::Error>,
    {
        // The cycle runs inside the call; its future is ready at once.
        self.finish(Threads::new, |requester| {
            let cycle = make(requester);
            Box::new(move |key: &K, context| Box::pin(std::future::ready(cycle(key, &context))))
        })
    }
}

impl<K, O> Coalescer<K, RandomState, O>
where
    K: Hash + Eq + Clone + Send + Sync + std::fmt::Debug + 'static,
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
        let (_, completion) = self.shared.request_waiting(key)?;
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

impl<K, S, O> Requester<K, S, O>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
    O: CycleOutput,
{
    /// Requests a cycle of `key` and blocks until it has ended, as
    /// [`Coalescer::request_and_wait`](type.Coalescer.html#method.request_and_wait)
    /// does.
    ///
    /// # Errors
    ///
    /// As `Coalescer::request_and_wait`; [`RunError::Closed`] once the
    /// coalescer is shut down, dropped or gone.
    ///
    /// # Panics
    ///
    /// As `Coalescer::request`.
    pub fn request_and_wait(&self, key: K) -> Result<O::Value, RunError<O::Error>>
    where
        O::Value: Clone,
    {
        let shared = self.shared().ok_or(RunError::Closed)?;
        let (_, completion) = shared.request_waiting(key)?;
        // Not holding the coalescer's state while blocked: the handle does
        // not keep it alive.
        drop(shared);
        completion.wait()
    }
}

static_assertions::assert_impl_all!(Coalescer<u64>: Send, Sync);
static_assertions::assert_impl_all!(Coalescer<String>: Send, Sync);
static_assertions::assert_impl_all!(Requester<u64>: Send, Sync, Clone);

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
