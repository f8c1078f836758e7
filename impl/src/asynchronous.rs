//! The async front end: runners are tokio tasks in a `JoinSet` the coalescer
//! owns (under loom: the same runner loop on loom threads). What differs
//! from the blocking front end — async waiting and shutdown, a cycle that
//! returns a future, `Drop` aborting — is here; the rest is `shell.rs`.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::future::{poll_fn, Future};
use std::hash::{BuildHasher, Hash};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::completion::Completion;
use crate::context::CycleContext;
use crate::driver::{within, Tasks};
use crate::error::{Admission, RunError, StillRunning};
use crate::output::{Answer, CycleOutput};
use crate::retry::{FailureHook, NoHook, NoRetry, RetryPolicy};
use crate::runner::in_cycle_owned_by;
use crate::shell;
use crate::sync::Arc;

/// A per-key coalescer whose cycles are async and run as tasks it owns.
///
/// For each key, at most one cycle runs at a time; a request while the key's
/// cycle runs is folded into one follow-up cycle that begins after it; keys
/// never wait for each other. See the crate docs and `docs/invariants.md`.
///
/// # Shutdown and drop
///
/// - [`shutdown().await`](#method.shutdown) is the graceful path: it
///   closes the coalescer and waits until every accepted request is covered
///   by a finished cycle and every runner task has ended.
/// - Dropping the coalescer without `shutdown` closes it and **aborts** its
///   runner tasks: a running cycle is cancelled at its next `.await`, no
///   runner begins another cycle once it sees the abort, and every
///   `request_and_wait` still waiting gets [`RunError::Aborted`].
/// - Dropped from inside one of its own cycles (its last owner moved into a
///   cycle, say), it is the same drop: the calling cycle too is cancelled at
///   its next `.await`, with every other, and their waiters get
///   [`RunError::Aborted`]. A cycle that requests keys should hold a
///   [`Requester`] instead ([`Builder::build_cyclic`](type.Builder.html#method.build_cyclic)): it never owns the
///   coalescer, so it cannot drop it.
///
/// ```
/// # if coalescer::__LOOM_BUILD { return; }
/// # coalescer::__doc_block_on(async {
/// use coalescer::Coalescer;
///
/// let restarts = Coalescer::new(|workspace: u64| async move {
///     // restart the workspace's services here
///     let _ = workspace;
/// });
/// restarts.request(7).unwrap(); // returns at once
/// restarts.request_and_wait(7).await.unwrap(); // a restart that began after this call ended
/// restarts.shutdown().await;
/// # });
/// ```
pub type Coalescer<K, S = RandomState, O = ()> = shell::Coalescer<K, S, Tasks, O>;

/// Builds a [`Coalescer`] with options.
pub type Builder<K, S = RandomState, P = NoRetry, H = NoHook> = shell::Builder<K, S, Tasks, P, H>;

/// A handle that requests cycles of a [`Coalescer`] without owning it:
/// [`Coalescer::handle`](type.Coalescer.html#method.handle) makes one.
///
/// Cheap to clone (one reference count) and `Send + Sync`: give it to a
/// service's handlers (axum state, say) or to the coalescer's own cycles
/// ([`Builder::build_cyclic`](type.Builder.html#method.build_cyclic)). It has the request verbs — `request`,
/// `request_and_wait`, `request_after` — and no `shutdown`: the coalescer's
/// owner decides when it ends. It does not keep the coalescer alive: once
/// the coalescer is shut down or dropped, every request through it is
/// rejected with [`Closed`](crate::Closed) ([`RunError::Closed`] for
/// `request_and_wait`).
///
/// ```
/// # if coalescer::__LOOM_BUILD { return; }
/// # coalescer::__doc_block_on(async {
/// use coalescer::{Closed, Coalescer};
///
/// let restarts = Coalescer::new(|workspace: u64| async move {
///     let _ = workspace; // restart it
/// });
/// let handle = restarts.handle();
/// let for_a_task = handle.clone();
/// for_a_task.request(7).unwrap();
/// handle.request_and_wait(7).await.unwrap();
/// restarts.shutdown().await;
/// assert_eq!(handle.request(7), Err(Closed));
/// # });
/// ```
pub type Requester<K, S = RandomState, O = ()> = shell::Requester<K, S, Tasks, O>;

shell::front_end!(Coalescer, Builder, Requester);

impl<K, S, P, H> Builder<K, S, P, H> {
    /// Runs the runner tasks on `handle`'s runtime instead of the current one.
    // Not in the loom build, which has no tokio (its driver runs loom threads).
    #[cfg(not(any(loom, doctest)))]
    #[must_use]
    pub fn handle(mut self, handle: tokio::runtime::Handle) -> Self {
        self.driver.handle = Some(handle);
        self
    }

    /// Builds the coalescer; `cycle(key)` is called, and its future awaited,
    /// each time a cycle of `key` begins. The future's output is `()` or,
    /// for a cycle that can fail, a `Result` ([`CycleOutput`]).
    ///
    /// # Panics
    ///
    /// Without [`handle`](Self::handle), if called outside a tokio runtime
    /// (as `tokio::spawn` would).
    pub fn build<F, Fut, O>(self, cycle: F) -> Coalescer<K, S, O>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        S: BuildHasher + Send + Sync + 'static,
        F: Fn(K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = O> + Send + 'static,
        O: CycleOutput,
        P: RetryPolicy<K, O::Error>,
        H: FailureHook<K, O::Error>,
    {
        self.build_with_context(move |key, _: CycleContext| cycle(key))
    }

    /// Builds the coalescer; `cycle(key, context)` is called, and its future
    /// awaited, each time a cycle of `key` begins. The [`CycleContext`]
    /// tells the cycle its attempt and whether to stop.
    ///
    /// # Panics
    ///
    /// As [`build`](Self::build).
    pub fn build_with_context<F, Fut, O>(self, cycle: F) -> Coalescer<K, S, O>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        S: BuildHasher + Send + Sync + 'static,
        F: Fn(K, CycleContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = O> + Send + 'static,
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
    /// coalescer — other keys (a cascade), or its own key again — with no
    /// `Arc` around the coalescer and no `OnceLock`.
    ///
    /// ```
    /// # if coalescer::__LOOM_BUILD { return; }
    /// # coalescer::__doc_block_on(async {
    /// use coalescer::Builder;
    ///
    /// // Restarting a workspace first restarts the one it depends on.
    /// let restarts = Builder::new().build_cyclic(|restarts| {
    ///     move |workspace: u64, _| {
    ///         let restarts = restarts.clone();
    ///         async move {
    ///             if workspace < 3 {
    ///                 restarts.request_and_wait(workspace + 1).await.unwrap();
    ///             }
    ///         }
    ///     }
    /// });
    /// restarts.request_and_wait(1).await.unwrap(); // 3, then 2, then 1
    /// assert_eq!(restarts.stats().cycles, 3);
    /// restarts.shutdown().await;
    /// # });
    /// ```
    ///
    /// # Panics
    ///
    /// As [`build`](Self::build).
    pub fn build_cyclic<M, F, Fut, O>(self, make: M) -> Coalescer<K, S, O>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        S: BuildHasher + Send + Sync + 'static,
        M: FnOnce(Requester<K, S, O>) -> F,
        F: Fn(K, CycleContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = O> + Send + 'static,
        O: CycleOutput,
        P: RetryPolicy<K, O::Error>,
        H: FailureHook<K, O::Error>,
    {
        self.finish(Tasks::new, |requester| {
            let cycle = make(requester);
            Box::new(move |key: &K, context| Box::pin(cycle(key.clone(), context)))
        })
    }
}

impl<K, O> Coalescer<K, RandomState, O>
where
    K: Hash + Eq + Clone + Send + Sync + fmt::Debug + 'static,
    O: CycleOutput,
{
    /// A coalescer on the current tokio runtime with the default options;
    /// `cycle(key)` is called, and its future awaited, each time a cycle of
    /// `key` begins. The future's output is `()` or, for a cycle that can
    /// fail, a `Result` ([`CycleOutput`]).
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime; use [`Builder::handle`] there.
    pub fn new<F, Fut>(cycle: F) -> Self
    where
        F: Fn(K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = O> + Send + 'static,
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
    /// Requests a cycle of `key`; the returned future resolves once a cycle
    /// that began after this request was accepted has ended, with that
    /// cycle's value (`()` for a cycle that returns nothing). Every waiter
    /// that cycle covers gets a clone of the value, hence `Clone` (return an
    /// `Arc` from the cycle for a value that is costly to clone).
    ///
    /// The request is made **when this method is called**, not when the
    /// future is first polled: the future only waits for the outcome.
    ///
    /// # Cancel safety
    ///
    /// Dropping the returned future never cancels or loses the request: it
    /// was already accepted (or rejected) by the call, and its covering cycle
    /// runs whether anyone awaits it or not.
    ///
    /// # Errors
    ///
    /// The future resolves to [`RunError::Closed`] if the request was
    /// rejected, [`RunError::OwnCycle`] if this was called from inside a
    /// cycle of the same key (nothing recorded: it would wait for itself),
    /// [`RunError::Failed`] with the covering cycle's error if it returned
    /// one, [`RunError::Panicked`] if it panicked, and
    /// [`RunError::Aborted`] if the coalescer was dropped without `shutdown`
    /// before the covering cycle ended.
    pub fn request_and_wait(&self, key: K) -> Wait<O>
    where
        O::Value: Clone,
    {
        Wait {
            completion: self.shared.request_waiting(key),
        }
    }

    /// Closes the coalescer and drains it: every later request is rejected
    /// with [`Closed`](crate::Closed), and this resolves only when every
    /// request accepted before the close is covered by a cycle that has
    /// ended and every runner task has ended. Idempotent; concurrent callers
    /// all wait for the drain.
    ///
    /// Awaited from inside one of this coalescer's own cycles, it closes and
    /// returns at once: the drain includes the calling task, which cannot end
    /// while it waits. The runners go on draining.
    ///
    /// # Cancel safety
    ///
    /// Dropping this future stops waiting, nothing else: the coalescer stays
    /// closed, and the runners go on draining.
    pub async fn shutdown(&self) {
        self.shared.close();
        if in_cycle_owned_by(self.shared.id()) {
            return;
        }
        poll_fn(|cx| self.shared.driver.poll_drained(cx)).await;
    }

    /// [`shutdown().await`](Self::shutdown), but gives up waiting after
    /// `timeout` (on tokio's clock): for a cycle that may never return.
    ///
    /// # Errors
    ///
    /// [`StillRunning`] with the keys whose runners had not finished when
    /// the timeout passed. The coalescer is closed either way and its
    /// runners go on; dropping it then aborts them at their next `.await`.
    /// On a runtime without the time driver this waits without a timeout.
    pub async fn shutdown_timeout(&self, timeout: Duration) -> Result<(), StillRunning<K>> {
        let drained = within(timeout, self.shutdown()).await;
        drained.ok_or_else(|| {
            self.shared.stop.set();
            StillRunning {
                keys: self.shared.registry.live_keys(),
            }
        })
    }
}

impl<K, S, O> Requester<K, S, O>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
    O: CycleOutput,
{
    /// Requests a cycle of `key` and waits for it, as
    /// [`Coalescer::request_and_wait`](type.Coalescer.html#method.request_and_wait)
    /// does; the future resolves to [`RunError::Closed`] once the
    /// coalescer is shut down, dropped or gone.
    pub fn request_and_wait(&self, key: K) -> Wait<O>
    where
        O::Value: Clone,
    {
        Wait {
            completion: match self.shared() {
                Some(shared) => shared.request_waiting(key),
                None => Err(RunError::Closed),
            },
        }
    }
}

/// The future returned by
/// [`Coalescer::request_and_wait`](type.Coalescer.html#method.request_and_wait): resolves when the
/// cycle covering the request has ended, with that cycle's value (a cycle
/// returning `O`). The request was made when the method was called;
/// dropping this future does not cancel it.
#[must_use = "the request is made either way; await this to learn how its cycle ended"]
pub struct Wait<O: CycleOutput = ()> {
    #[allow(clippy::type_complexity, reason = "one field, named in full once")]
    completion: Result<(Admission, Arc<Completion<Answer<O>>>), RunError<O::Error>>,
}

impl<O: CycleOutput> Wait<O> {
    /// How the request was admitted: [`Admission::Started`] (it started
    /// the key's runner) or [`Admission::Coalesced`] (it folded into the
    /// next cycle of an active one); `None` if it was rejected (the future
    /// then resolves to that error). Known as soon as the request was made.
    pub fn admission(&self) -> Option<Admission> {
        self.completion
            .as_ref()
            .ok()
            .map(|(admission, _)| *admission)
    }
}

impl<O: CycleOutput> Future for Wait<O>
where
    O::Value: Clone,
{
    type Output = Result<O::Value, RunError<O::Error>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &self.completion {
            Err(e) => Poll::Ready(Err(e.clone())),
            Ok((_, completion)) => completion.poll_wait(cx),
        }
    }
}

impl<O: CycleOutput> fmt::Debug for Wait<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wait")
            .field("admission", &self.admission())
            .finish()
    }
}

static_assertions::assert_impl_all!(Coalescer<u64>: Send, Sync);
static_assertions::assert_impl_all!(Requester<u64>: Send, Sync, Clone);
static_assertions::assert_impl_all!(Requester<String, RandomState, Result<String, std::io::Error>>: Send, Sync, Clone);
static_assertions::assert_impl_all!(Builder<u64>: Send);
static_assertions::assert_impl_all!(Coalescer<String>: Send, Sync);
static_assertions::assert_impl_all!(Wait: Send, Sync, Unpin);
static_assertions::assert_impl_all!(Wait<Result<String, std::io::Error>>: Send, Sync, Unpin);
static_assertions::assert_impl_all!(Coalescer<u64, RandomState, Result<String, std::io::Error>>: Send, Sync);

/// The futures users hold across `.await`s in multi-threaded runtimes must be
/// `Send`: checked at compile time.
#[allow(dead_code, reason = "compile-time check only")]
fn futures_are_send(c: &Coalescer<String>) {
    fn is_send<T: Send>(_: T) {}
    is_send(c.shutdown());
    is_send(c.request_and_wait(String::new()));
}

// Not under loom: these drive a tokio runtime, which the loom build has not.
#[cfg(all(test, not(loom)))]
mod tests {
    use super::Coalescer;

    /// Finished runner tasks are reaped: the join set holds live runners,
    /// not one task per key ever started; after shutdown it is empty.
    #[test]
    fn finished_runner_tasks_are_reaped() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let c = Coalescer::new(|_: u32| async {});
            for key in 0..2_000 {
                c.request_and_wait(key).await.unwrap();
            }
            let held = c.shared.driver.len();
            assert!(held < 2_000, "{held} tasks kept for 2000 finished runners");
            c.shutdown().await;
            assert_eq!(c.shared.driver.len(), 0);
            assert_eq!(c.active_keys(), 0);
        });
    }
}
