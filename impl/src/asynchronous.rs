//! The async front end: runners are tokio tasks in a `JoinSet` the coalescer
//! owns (under loom: the same runner loop on loom threads).

use std::collections::hash_map::RandomState;
use std::fmt;
use std::future::{poll_fn, Future};
use std::hash::{BuildHasher, Hash};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::completion::Completion;
use crate::error::{Admission, Closed, RunError, StillRunning};
use crate::panic::PanicReport;
use crate::registry::AdmitError;
use crate::runner::{Contained, Core, Options, Runner};
use crate::stats::{Counters, Stats};
use std::time::Duration;

use crate::sync::{
    enter_cycle, in_cycle_owned_by, within, Arc, AtomicBool, BoxFuture, Handle, Ordering, Pace,
    RuntimeGone, TaskSet,
};

/// A per-key coalescer whose cycles are async and run as tasks it owns.
///
/// For each key, at most one cycle runs at a time; a request while the key's
/// cycle runs is folded into one follow-up cycle that begins after it; keys
/// never wait for each other. See the crate docs and `docs/invariants.md`.
///
/// # Shutdown and drop
///
/// - [`shutdown().await`](Coalescer::shutdown) is the graceful path: it
///   closes the coalescer and waits until every accepted request is covered
///   by a finished cycle and every runner task has ended.
/// - Dropping the coalescer without `shutdown` closes it and **aborts** its
///   runner tasks: a running cycle is cancelled at its next `.await`, no
///   runner begins another cycle once it sees the abort, and every
///   `request_and_wait` still waiting gets [`RunError::Aborted`].
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
pub struct Coalescer<K, S = RandomState> {
    inner: Arc<Inner<K, S>>,
}

type Cycle<K> = Box<dyn Fn(K) -> BoxFuture + Send + Sync>;

struct Inner<K, S> {
    core: Core<K, S>,
    cycle: Cycle<K>,
    tasks: TaskSet,
    /// Set by `Drop` (after closing): runners that see it begin no further
    /// cycle and resolve their waiters as aborted.
    aborted: AtomicBool,
    /// Holds runners back between a key's cycles (`min_interval`).
    pace: Pace,
}

/// Builds a [`Coalescer`] with options.
pub struct Builder<K, S = RandomState> {
    options: Options<K, S>,
    handle: Option<Handle>,
}

impl<K> Builder<K> {
    /// A builder with the defaults: the current tokio runtime, panics
    /// reported as a `tracing` error event, `RandomState` hashing, four map
    /// shards per core.
    pub fn new() -> Self {
        Builder {
            options: Options::new(),
            handle: None,
        }
    }
}

impl<K> Default for Builder<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, S> Builder<K, S> {
    /// Runs the runner tasks on `handle`'s runtime instead of the current one.
    #[cfg(not(any(loom, doctest)))]
    #[must_use]
    pub fn handle(mut self, handle: tokio::runtime::Handle) -> Self {
        self.handle = Some(handle);
        self
    }

    /// Replaces the panic hook. It is called exactly once for every cycle
    /// that panics — when the cycle function is called, while its future is
    /// polled, or while the finished future is dropped — on the runner task,
    /// after the panic was caught. A panic inside the hook is discarded.
    #[must_use]
    pub fn panic_hook(self, hook: impl Fn(&PanicReport<'_, K>) + Send + Sync + 'static) -> Self {
        Builder {
            options: self.options.panic_hook(hook),
            handle: self.handle,
        }
    }

    /// Replaces the hasher that places keys in the map (the default,
    /// `RandomState`, resists hash flooding).
    #[must_use]
    pub fn hasher<S2: BuildHasher + Clone>(self, hasher: S2) -> Builder<K, S2> {
        Builder {
            options: self.options.hasher(hasher),
            handle: self.handle,
        }
    }

    /// Sets the number of map shards (rounded up to a power of two, at
    /// least 1, at most 65 536).
    #[must_use]
    pub fn shards(self, shards: usize) -> Self {
        Builder {
            options: self.options.shards(shards),
            handle: self.handle,
        }
    }

    /// Paces each key: a follow-up cycle of a key begins no earlier than
    /// `min_interval` after the previous cycle of that key began, measured on
    /// tokio's clock. Requests that arrive meanwhile are not dropped: they
    /// join that one follow-up. A request for an idle key still starts its
    /// cycle at once, and `shutdown().await` cuts every wait short (the drain
    /// runs pending follow-ups at once). The default, zero, does not pace.
    ///
    /// Needs a runtime with the time driver (`enable_time` or `enable_all`);
    /// on one without it the interval is ignored and `build` logs an error
    /// event (target `coalescer`).
    #[must_use]
    pub fn min_interval(self, min_interval: Duration) -> Self {
        Builder {
            options: self.options.min_interval(min_interval),
            handle: self.handle,
        }
    }

    /// Builds the coalescer; `cycle(key)` is called, and its future awaited,
    /// each time a cycle of `key` begins.
    ///
    /// # Panics
    ///
    /// Without [`handle`](Builder::handle), if called outside a tokio
    /// runtime (as `tokio::spawn` would).
    pub fn build<F, Fut>(self, cycle: F) -> Coalescer<K, S>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        S: BuildHasher + Clone + Send + Sync + 'static,
        F: Fn(K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let handle = self.handle.unwrap_or_else(Handle::current);
        let pace = Pace::new(self.options.min_interval, &handle);
        Coalescer {
            inner: Arc::new(Inner {
                core: Core::new(self.options),
                cycle: Box::new(move |key| Box::pin(cycle(key))),
                tasks: TaskSet::new(handle),
                aborted: AtomicBool::new(false),
                pace,
            }),
        }
    }
}

impl<K, S: fmt::Debug> fmt::Debug for Builder<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("options", &self.options)
            .field("handle", &self.handle)
            .finish()
    }
}

impl<K> Coalescer<K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    /// A coalescer on the current tokio runtime with the default options;
    /// `cycle(key)` is called, and its future awaited, each time a cycle of
    /// `key` begins.
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime; use [`Builder::handle`] there.
    pub fn new<F, Fut>(cycle: F) -> Self
    where
        F: Fn(K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
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
    /// Requests a cycle of `key` and returns at once: never waits, never
    /// awaits, and may be called from any thread, inside the runtime or not.
    ///
    /// If the key is idle this starts its runner task
    /// ([`Admission::Started`]); if its runner is active, the request is
    /// folded into the one cycle that runner begins next
    /// ([`Admission::Coalesced`]). Everything this thread did before the call
    /// happens-before the cycle that covers the request.
    ///
    /// # Errors
    ///
    /// [`Closed`] once shutdown (or drop) has begun; the request is then not
    /// recorded.
    pub fn request(&self, key: K) -> Result<Admission, Closed> {
        // Only a waiting request can be refused for any other reason.
        self.admit(key, false)
            .map(|(admission, _)| admission)
            .map_err(|_| Closed)
    }

    /// Requests a cycle of `key`; the returned future resolves once a cycle
    /// that began after this request was accepted has ended.
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
    /// rejected, [`RunError::OwnCycle`] if this was called from inside a cycle
    /// of the same key (nothing recorded: it would wait for itself), [`RunError::Panicked`] if the covering cycle panicked, and
    /// [`RunError::Aborted`] if the coalescer was dropped without `shutdown`
    /// before the covering cycle ended.
    pub fn request_and_wait(&self, key: K) -> Wait {
        Wait {
            completion: self
                .admit(key, true)
                .map(|(_, c)| c.expect("admission with wait carries a completion")),
        }
    }

    fn admit(&self, key: K, wait: bool) -> Result<(Admission, Option<Arc<Completion>>), RunError> {
        let inner = &self.inner;
        let admitted =
            inner
                .core
                .registry
                .admit(key, wait, &inner.core.counters, |key, slot, hash| {
                    let guard = Abandon {
                        inner: Arc::clone(inner),
                        runner: Runner::new(key.clone(), Arc::clone(slot), hash),
                        current: None,
                        armed: true,
                    };
                    inner.tasks.spawn(Box::pin(run(guard)))
                });
        match admitted {
            Ok(a) => Ok((a.admission, a.completion)),
            Err(AdmitError::Closed) => Err(RunError::Closed),
            Err(AdmitError::OwnCycle) => Err(RunError::OwnCycle),
            Err(AdmitError::Start(RuntimeGone)) => {
                // The runtime has shut down: nothing can run any more, so the
                // coalescer closes itself and this and every later request
                // is rejected.
                inner.core.registry.mark_closed();
                Counters::bump(&inner.core.counters.rejected);
                Err(RunError::Closed)
            }
        }
    }

    /// Closes the coalescer and drains it: every later request is rejected
    /// with [`Closed`], and this resolves only when every request accepted
    /// before the close is covered by a cycle that has ended and every runner
    /// task has ended. Idempotent; concurrent callers all wait for the drain.
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
        self.inner.core.registry.close();
        // Runners waiting out `min_interval` begin their follow-up now.
        self.inner.pace.drain();
        if in_cycle_owned_by(Arc::as_ptr(&self.inner) as usize) {
            // Awaited inside one of this coalescer's own cycles: the drain
            // includes the calling task, which cannot end while it waits.
            return;
        }
        poll_fn(|cx| self.inner.tasks.poll_drained(cx)).await;
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
        drained.ok_or_else(|| StillRunning {
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

impl<K, S> Drop for Coalescer<K, S> {
    /// Closes the coalescer and aborts its runner tasks; see the type docs.
    fn drop(&mut self) {
        self.inner.core.registry.close();
        // ORDERING: Release pairs with the Acquire load at the top of the
        // runner loop. No data rides on it; the pairing only makes "the
        // runner saw the abort" mean "after the close".
        self.inner.aborted.store(true, Ordering::Release);
        self.inner.tasks.abort_all();
    }
}

impl<K, S> fmt::Debug for Coalescer<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coalescer")
            .field("stats", &self.inner.core.stats())
            .finish_non_exhaustive()
    }
}

/// A runner task's state. If the task is dropped before the runner went idle
/// — aborted by the coalescer's `Drop`, or dropped unpolled by a runtime
/// that is shutting down — `Drop` abandons the slot, so no waiter and no
/// request is stranded in it.
struct Abandon<K: Hash + Eq, S: BuildHasher + Clone> {
    inner: Arc<Inner<K, S>>,
    runner: Runner<K>,
    /// The completion of the cycle running now, if anyone waits for it.
    current: Option<Arc<Completion>>,
    /// Cleared when the runner went idle normally.
    armed: bool,
}

impl<K: Hash + Eq, S: BuildHasher + Clone> Drop for Abandon<K, S> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if crate::sync::inside_spawn() {
            // Dropped by a shut-down runtime inside the spawn call, while
            // admission holds the shard lock: nothing to tear down. Nobody
            // has seen the slot (it is not in the map yet), and admission,
            // told the spawn failed, rejects the request and drops the slot
            // and its waiter's completion unseen.
            crate::sync::dropped_in_spawn();
        } else {
            self.runner.abandon(&self.inner.core, self.current.take());
        }
    }
}

/// The async runner loop: the same protocol as the blocking runner, with the
/// cycle awaited under panic containment.
async fn run<K, S>(mut this: Abandon<K, S>)
where
    K: Hash + Eq + Clone,
    S: BuildHasher + Clone,
{
    loop {
        // ORDERING: Acquire pairs with the Release store in `Coalescer::drop`.
        if this.inner.aborted.load(Ordering::Acquire) {
            return; // `this` abandons the slot
        }
        let begun = this.runner.begin();
        let began = this.inner.pace.clock();
        let owner = Arc::as_ptr(&this.inner) as usize;
        this.current.clone_from(&begun.completion);
        let cycle = catch_unwind(AssertUnwindSafe(|| {
            let _mark = enter_cycle(owner, this.runner.slot_id());
            (this.inner.cycle)(this.runner.key.clone())
        }));
        let result = match cycle {
            Ok(cycle) => Contained::new(cycle, (owner, this.runner.slot_id())).await,
            Err(payload) => Err(payload),
        };
        this.current = None;
        this.runner.finish(&this.inner.core, &begun, result);
        if let Some(began) = began {
            // The slot stays live meanwhile: requests coalesce into one
            // paced follow-up. Aborted here, the task's guard abandons the
            // slot as anywhere else.
            this.inner.pace.until_next(began).await;
        }
        if !this.runner.settle(&this.inner.core, &begun) {
            this.armed = false;
            this.inner.tasks.reap();
            return;
        }
    }
}

/// The future returned by [`Coalescer::request_and_wait`]: resolves when the
/// cycle covering the request has ended. The request was made when the
/// method was called; dropping this future does not cancel it.
#[must_use = "the request is made either way; await this to learn how its cycle ended"]
pub struct Wait {
    completion: Result<Arc<Completion>, RunError>,
}

impl Future for Wait {
    type Output = Result<(), RunError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &self.completion {
            Err(e) => Poll::Ready(Err(*e)),
            Ok(completion) => completion.poll_wait(cx).map(|o| o.into_result()),
        }
    }
}

impl fmt::Debug for Wait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wait")
            .field("accepted", &self.completion.is_ok())
            .finish()
    }
}

static_assertions::assert_impl_all!(Coalescer<u64>: Send, Sync);
static_assertions::assert_impl_all!(Coalescer<String>: Send, Sync);
static_assertions::assert_impl_all!(Wait: Send, Sync, Unpin);

/// The futures users hold across `.await`s in multi-threaded runtimes must be
/// `Send`: checked at compile time.
#[allow(dead_code, reason = "compile-time check only")]
fn futures_are_send(c: &Coalescer<String>) {
    fn is_send<T: Send>(_: T) {}
    is_send(c.shutdown());
    is_send(c.request_and_wait(String::new()));
}

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
            let held = c.inner.tasks.len();
            assert!(held < 2_000, "{held} tasks kept for 2000 finished runners");
            c.shutdown().await;
            assert_eq!(c.inner.tasks.len(), 0);
            assert_eq!(c.active_keys(), 0);
        });
    }
}
