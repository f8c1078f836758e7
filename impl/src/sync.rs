//! The one place that chooses between `std` and `loom`.
//!
//! Everything that orders memory between threads — the per-key state word,
//! the shard locks, the completion mutex and condvar, the `closed` flag, the
//! runner threads and their `finished` flags — comes from here. Under
//! `--cfg loom` these are loom's mocks, so the loom suite explores the very
//! code that ships; no other module mentions `loom`.
//!
//! Two things deliberately do **not** come from loom:
//!
//! - the statistics counters, the active-key count ([`StatCounter`]) and the
//!   registry's list of per-thread memo counters (a `std` mutex): they are
//!   observation-only (nothing is ordered by them, no decision reads them);
//! - [`Arc`]: its reference count orders only the deallocation of what it
//!   owns (std's own, separately verified, protocol); no decision of ours
//!   reads a count.
//!
//! Modelling either would multiply the interleavings loom explores — every
//! loom `Arc` clone and drop is a scheduling point — without checking
//! anything of ours. (Per-thread state is per *loom* thread under loom: the
//! memo hints are loom thread-locals, and the loom `PerThread` keeps its
//! values in a plain `std` mutex that is never held across a loom operation,
//! so neither adds a scheduling point.)

#[cfg(loom)]
pub(crate) use loom::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard,
};
#[cfg(loom)]
pub(crate) use loom::thread;

#[cfg(not(loom))]
pub(crate) use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard,
};
#[cfg(not(loom))]
pub(crate) use std::thread;

pub(crate) use std::sync::Arc;

/// Whether this is the loom model build (`--cfg loom`), whose primitives work
/// only inside a loom model. The doc examples check it to skip themselves
/// there (rustdoc does not see `RUSTFLAGS`, so they cannot use `cfg`).
pub const LOOM_BUILD: bool = cfg!(loom);

/// A statistics counter: always `std`, always `Relaxed` (see the module doc).
pub(crate) type StatCounter = std::sync::atomic::AtomicU64;

/// Locks `m`, ignoring poison.
///
/// Every structure behind our locks stays valid if a panic unwinds while the
/// lock is held (the only code that can panic there is a user's key code —
/// `Hash`, `Eq`, `Clone`, `Drop` — inside map operations, which leaves the map
/// consistent), so poison carries no information for us and must not turn one
/// user's panic into everyone's.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Read-locks `l`, ignoring poison (see [`lock`]).
pub(crate) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Write-locks `l`, ignoring poison (see [`lock`]).
pub(crate) fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Waits on `cv`, ignoring poison (see [`lock`]).
pub(crate) fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(guard)
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Waits on `cv` until notified or until `deadline` (`None`: no deadline),
/// ignoring poison; returns the guard and whether the deadline had passed
/// before any waiting (a wait that times out reports it on the next call).
/// May return early (spurious wakeup): callers loop on their condition.
#[cfg(not(loom))]
pub(crate) fn wait_until<'a, T>(
    cv: &Condvar,
    _: &'a Mutex<T>,
    guard: MutexGuard<'a, T>,
    deadline: Option<std::time::Instant>,
) -> (MutexGuard<'a, T>, bool) {
    let Some(deadline) = deadline else {
        return (wait(cv, guard), false);
    };
    let now = std::time::Instant::now();
    if now >= deadline {
        return (guard, true);
    }
    let (guard, _) = cv
        .wait_timeout(guard, deadline - now)
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    (guard, false)
}

/// Loom does not model time: a timed wait is "some time passes, during which
/// anything may happen" — the lock is released, every other thread may run,
/// and then the deadline has passed. A wait without a deadline ends only
/// when the caller's condition changes.
#[cfg(loom)]
pub(crate) fn wait_until<'a, T>(
    _: &Condvar,
    mutex: &'a Mutex<T>,
    guard: MutexGuard<'a, T>,
    deadline: Option<std::time::Instant>,
) -> (MutexGuard<'a, T>, bool) {
    drop(guard);
    thread::yield_now();
    (lock(mutex), deadline.is_some())
}

/// A value on cache lines of its own. Registry shards: a shard's lock word
/// is written by every request that reads the map (the read lock is an RMW),
/// so two shards sharing a line would make requests for unrelated keys
/// contend. Marks, memo counters and per-thread values: each is written by
/// one thread only, and must not share a line with another thread's.
/// 128 bytes: x86 prefetches lines in pairs.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// One value per thread per owner (a registry): each thread that calls
/// [`PerThread::with`] gets its own, created empty on first use, and every
/// value is dropped with the `PerThread`. Type-erased (`dyn Any`), so owners
/// generic over a key type need no `Send` bound on their struct to hold one;
/// the owner downcasts to the one type it stores. Each thread's value is on
/// lines of its own (`thread_local` packs them side by side, and every
/// `with` writes its borrow flag).
///
/// Under loom the values are per *loom* thread (`loom_tasks::PerThread`):
/// loom threads share one OS thread, whose thread-locals they would
/// otherwise share.
#[cfg(not(any(loom, doctest)))]
pub(crate) struct PerThread {
    values: thread_local::ThreadLocal<Padded<std::cell::RefCell<Option<PerThreadValue>>>>,
}
#[cfg(all(doctest, not(loom)))]
pub(crate) use self::doctest_tasks::PerThread;
#[cfg(loom)]
pub(crate) use self::loom_tasks::PerThread;

/// What a [`PerThread`] holds for one thread.
pub(crate) type PerThreadValue = Box<dyn std::any::Any + Send>;

#[cfg(not(any(loom, doctest)))]
impl PerThread {
    pub(crate) fn new() -> Self {
        PerThread {
            values: thread_local::ThreadLocal::new(),
        }
    }

    /// Calls `f` with this thread's value, or with `None` if this thread is
    /// already inside `with` on the same `PerThread` (a reentrant call, say
    /// from a user's `Eq`): the value is then busy and `f` must do without.
    #[inline]
    pub(crate) fn with<R>(&self, f: impl FnOnce(Option<&mut Option<PerThreadValue>>) -> R) -> R {
        match self
            .values
            .get_or(|| Padded(Default::default()))
            .try_borrow_mut()
        {
            Ok(mut value) => f(Some(&mut value)),
            Err(_) => f(None),
        }
    }
}

/// What a thread knows, without looking at any registry, about its own
/// requests (see the memo in `registry.rs`): the registry and key hash of its
/// last request that went through a map, and the registry whose memo holds a
/// key for it (0: none). Only hints: a wrong one costs a detour through the
/// map, never correctness. Registries are numbered from 1 and never reused.
#[derive(Debug, Clone, Copy)]
struct MemoHints {
    last: (u64, u64),
    holder: u64,
}

#[cfg(not(loom))]
std::thread_local! {
    static MEMO_HINTS: std::cell::Cell<MemoHints> =
        const { std::cell::Cell::new(MemoHints { last: (0, 0), holder: 0 }) };
}
#[cfg(loom)]
loom::thread_local! {
    static MEMO_HINTS: std::cell::Cell<MemoHints> =
        std::cell::Cell::new(MemoHints { last: (0, 0), holder: 0 });
}

/// Records a request of this thread through `registry`'s map for a key with
/// hash `hash`; whether its last one was for the same registry and hash.
#[inline]
pub(crate) fn repeats_last_request(registry: u64, hash: u64) -> bool {
    MEMO_HINTS.with(|h| {
        let mut hints = h.get();
        let repeated = hints.last == (registry, hash);
        hints.last = (registry, hash);
        h.set(hints);
        repeated
    })
}

/// Whether this thread's memo for `registry` may hold a key.
#[inline]
pub(crate) fn holds_memo_in(registry: u64) -> bool {
    MEMO_HINTS.with(|h| h.get().holder == registry)
}

/// Records which registry's memo for this thread holds a key (0: none).
#[inline]
pub(crate) fn set_memo_holder(registry: u64) {
    MEMO_HINTS.with(|h| {
        let mut hints = h.get();
        hints.holder = registry;
        h.set(hints);
    });
}

/// A boxed runner future: what the async front end hands its task set.
pub(crate) type BoxFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

// Three task sets: tokio's (the real build), loom threads (`--cfg loom`), and
// a type-only stand-in for rustdoc's doctest collection. rustdoc collects
// doc examples from its own parse of the crate, which sees neither
// `--cfg loom` (it does not read RUSTFLAGS) nor, in the loom build, tokio; the
// stand-in lets that parse resolve. It is never compiled into the library:
// the examples link against the real one.
#[cfg(all(doctest, not(loom)))]
pub(crate) use self::doctest_tasks::{within, Handle, Pace, TaskSet};
#[cfg(loom)]
pub(crate) use self::loom_tasks::{within, Handle, Pace, TaskSet};
#[cfg(not(any(loom, doctest)))]
pub(crate) use self::tokio_tasks::{within, Handle, Pace, TaskSet};

// Which cycle this thread is running right now — its coalescer's and its
// slot's addresses — so that `request_and_wait` from inside a cycle of the
// same key is refused instead of waiting for itself, and an async `shutdown`
// from inside one of its own cycles does not wait for itself either. Loom
// threads share an OS thread, so under loom this is loom's thread-local.
#[cfg(not(loom))]
std::thread_local! {
    static CURRENT_CYCLE: std::cell::Cell<(usize, usize)> = const { std::cell::Cell::new((0, 0)) };
}
#[cfg(loom)]
loom::thread_local! {
    static CURRENT_CYCLE: std::cell::Cell<(usize, usize)> = std::cell::Cell::new((0, 0));
}

/// Marks this thread as running a cycle of the slot at `slot`, owned by the
/// coalescer at `owner`, until the guard drops (restoring what was there).
pub(crate) fn enter_cycle(owner: usize, slot: usize) -> CycleMark {
    CycleMark(CURRENT_CYCLE.with(|c| c.replace((owner, slot))))
}

/// Whether this thread is running a cycle of the slot at `slot`.
pub(crate) fn in_cycle_of(slot: usize) -> bool {
    CURRENT_CYCLE.with(|c| c.get().1 == slot)
}

/// Whether this thread is running a cycle of the coalescer at `owner`.
pub(crate) fn in_cycle_owned_by(owner: usize) -> bool {
    CURRENT_CYCLE.with(|c| c.get().0 == owner)
}

/// Restores the previous mark when dropped (see [`enter_cycle`]).
#[derive(Debug)]
pub(crate) struct CycleMark((usize, usize));

impl Drop for CycleMark {
    fn drop(&mut self) {
        CURRENT_CYCLE.with(|c| c.set(self.0));
    }
}

/// The runtime refused a task: it has shut down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RuntimeGone;

/// Whether this thread is inside `TaskSet::spawn` right now — where a task
/// dropped by a shut-down runtime is dropped, while our caller holds a shard
/// write lock. Never under loom, whose task set never drops a task.
pub(crate) fn inside_spawn() -> bool {
    #[cfg(not(any(loom, doctest)))]
    {
        tokio_tasks::SPAWN.with(|s| s.get() != tokio_tasks::Spawn::Outside)
    }
    #[cfg(any(loom, doctest))]
    {
        false
    }
}

/// Called by a task's guard dropped inside `TaskSet::spawn`: that spawn then
/// fails with `RuntimeGone`.
pub(crate) fn dropped_in_spawn() {
    #[cfg(not(any(loom, doctest)))]
    tokio_tasks::SPAWN.with(|s| s.set(tokio_tasks::Spawn::Dropped));
}

/// Runs `future` on a new current-thread tokio runtime. For the doc
/// examples, which cannot name tokio themselves (the loom build has none).
#[cfg(not(any(loom, doctest)))]
pub fn doc_block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread tokio runtime for a doc example")
        .block_on(future)
}

/// Under loom the doc examples return before calling this.
#[cfg(any(loom, doctest))]
pub fn doc_block_on<F: std::future::Future>(_: F) -> F::Output {
    unreachable!("doc examples do not run in the loom build")
}

#[cfg(all(doctest, not(loom)))]
mod doctest_tasks {
    use std::task::{Context, Poll};

    use super::{BoxFuture, PerThreadValue};

    /// Type-only stand-in for `sync::PerThread`.
    pub(crate) struct PerThread;

    impl PerThread {
        pub(crate) fn new() -> Self {
            PerThread
        }

        pub(crate) fn with<R>(
            &self,
            f: impl FnOnce(Option<&mut Option<PerThreadValue>>) -> R,
        ) -> R {
            f(None)
        }
    }

    #[derive(Debug, Clone)]
    pub(crate) struct Handle;

    impl Handle {
        pub(crate) fn current() -> Self {
            unreachable!("type-only stand-in for doctest collection")
        }
    }

    #[derive(Debug)]
    pub(crate) struct TaskSet;

    impl TaskSet {
        pub(crate) fn new(_: Handle) -> Self {
            TaskSet
        }
        pub(crate) fn spawn(&self, _: BoxFuture) -> Result<(), super::RuntimeGone> {
            Ok(())
        }
        pub(crate) fn reap(&self) {}
        pub(crate) fn poll_drained(&self, _: &mut Context<'_>) -> Poll<()> {
            Poll::Ready(())
        }
        pub(crate) fn abort_all(&self) {}
    }

    pub(crate) async fn within<T>(
        _: std::time::Duration,
        f: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        Some(f.await)
    }

    #[derive(Debug)]
    pub(crate) struct Pace;

    impl Pace {
        pub(crate) fn new(_: std::time::Duration, _: &Handle) -> Self {
            Pace
        }
        pub(crate) fn clock(&self) -> Option<std::time::Instant> {
            None
        }
        pub(crate) async fn until_next(&self, _: std::time::Instant) {}
        pub(crate) fn drain(&self) {}
    }
}

/// The async front end's runners as tokio tasks in a `JoinSet` the
/// coalescer owns.
#[cfg(not(any(loom, doctest)))]
mod tokio_tasks {
    use std::future::{poll_fn, Future};
    use std::pin::pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Wake, Waker};
    use std::time::Duration;

    use tokio::sync::watch;
    use tokio::task::JoinSet;
    use tokio::time::{self, Instant};

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum Spawn {
        Outside,
        Inside,
        Dropped,
    }

    thread_local! {
        /// Where this thread is with respect to `TaskSet::spawn`.
        pub(super) static SPAWN: std::cell::Cell<Spawn> =
            const { std::cell::Cell::new(Spawn::Outside) };
    }

    use super::{lock, BoxFuture};

    pub(crate) use tokio::runtime::Handle;

    /// Runner tasks. Finished tasks are reaped whenever a new one is spawned.
    #[derive(Debug)]
    pub(crate) struct TaskSet {
        handle: Handle,
        /// Guarded by this mutex, which is never held across an `.await`.
        set: Mutex<JoinSet<()>>,
        /// Every task polling [`TaskSet::poll_drained`]: `JoinSet` keeps only
        /// the latest poller's waker, so it is given this one, which wakes
        /// them all.
        drainers: Arc<FanOut>,
    }

    #[derive(Debug, Default)]
    struct FanOut(Mutex<Vec<Waker>>);

    impl Wake for FanOut {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            for waker in std::mem::take(&mut *lock(&self.0)) {
                waker.wake();
            }
        }
    }

    impl TaskSet {
        pub(crate) fn new(handle: Handle) -> Self {
            TaskSet {
                handle,
                set: Mutex::new(JoinSet::new()),
                drainers: Arc::default(),
            }
        }

        /// Spawns `task`. A runtime that has shut down drops the task right
        /// here, on this thread: the task's guard then sees
        /// [`inside_spawn`](super::inside_spawn), must not take our locks,
        /// calls [`dropped_in_spawn`](super::dropped_in_spawn), and this
        /// returns `Err`.
        pub(crate) fn spawn(&self, task: BoxFuture) -> Result<(), super::RuntimeGone> {
            let mut set = lock(&self.set);
            while set.try_join_next().is_some() {}
            /// Puts the marker back however `spawn_on` returns.
            struct Outside;
            impl Drop for Outside {
                fn drop(&mut self) {
                    SPAWN.with(|s| s.set(Spawn::Outside));
                }
            }
            SPAWN.with(|s| s.set(Spawn::Inside));
            let _outside = Outside;
            set.spawn_on(task, &self.handle);
            match SPAWN.with(|s| s.get()) {
                Spawn::Dropped => Err(super::RuntimeGone),
                _ => Ok(()),
            }
        }

        /// Forgets the tasks that have ended. Called by each runner as it
        /// exits, so that a quiescent coalescer keeps at most the last one
        /// (INV-6), not every task that ended since the last spawn.
        pub(crate) fn reap(&self) {
            let mut set = lock(&self.set);
            while set.try_join_next().is_some() {}
        }

        /// Ready once every task in the set has ended (joined or aborted).
        pub(crate) fn poll_drained(&self, cx: &mut Context<'_>) -> Poll<()> {
            let mut set = lock(&self.set);
            {
                let mut drainers = lock(&self.drainers.0);
                if !drainers.iter().any(|w| w.will_wake(cx.waker())) {
                    drainers.push(cx.waker().clone());
                }
            }
            let fan_out = Waker::from(Arc::clone(&self.drainers));
            let mut fan_out = Context::from_waker(&fan_out);
            loop {
                match set.poll_join_next(&mut fan_out) {
                    Poll::Ready(Some(_)) => continue,
                    Poll::Ready(None) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
            }
        }

        /// Aborts every task: each is cancelled at its next `.await`.
        pub(crate) fn abort_all(&self) {
            lock(&self.set).abort_all();
        }

        /// Tasks in the set, finished or not (for tests of reaping).
        #[cfg(test)]
        pub(crate) fn len(&self) -> usize {
            lock(&self.set).len()
        }
    }

    /// `f`'s output, or `None` if `timeout` (on tokio's clock) passes first.
    /// On a runtime without the time driver, which cannot time anything,
    /// waits for `f` without a timeout.
    pub(crate) async fn within<T>(timeout: Duration, f: impl Future<Output = T>) -> Option<T> {
        let sleep = std::panic::catch_unwind(|| Box::pin(time::sleep(timeout))).ok();
        let mut f = pin!(f);
        let mut sleep = sleep;
        poll_fn(|cx| {
            if let Poll::Ready(out) = f.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            let timed_out = sleep
                .as_mut()
                .is_some_and(|s| s.as_mut().poll(cx).is_ready());
            if timed_out {
                Poll::Ready(None)
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// The async `min_interval` wait, on tokio's clock (so a paused test
    /// clock drives it), cut short when shutdown starts draining.
    #[derive(Debug)]
    pub(crate) struct Pace {
        /// `None`: no pacing (zero interval, or a runtime without timers).
        min_interval: Option<Duration>,
        /// Set to `true` once, by `drain`.
        draining: watch::Sender<bool>,
    }

    impl Pace {
        pub(crate) fn new(min_interval: Duration, handle: &Handle) -> Self {
            let mut usable = !min_interval.is_zero();
            if usable {
                // tokio panics when a timer is created on a runtime built
                // without the time driver; find out now, once, rather than
                // in a runner.
                let _context = handle.enter();
                usable = std::panic::catch_unwind(|| drop(time::sleep(Duration::ZERO))).is_ok();
                if !usable {
                    tracing::error!(
                        target: "coalescer",
                        "min_interval is ignored: the tokio runtime has no time driver \
                         (build it with enable_time or enable_all)"
                    );
                }
            }
            Pace {
                min_interval: usable.then_some(min_interval),
                draining: watch::channel(false).0,
            }
        }

        /// The time a cycle began, if pacing is on.
        pub(crate) fn clock(&self) -> Option<Instant> {
            self.min_interval.map(|_| Instant::now())
        }

        /// Returns once `min_interval` has passed since `began`, or at once
        /// when the coalescer is draining.
        pub(crate) async fn until_next(&self, began: Instant) {
            let Some(interval) = self.min_interval else {
                return;
            };
            let mut draining = self.draining.subscribe();
            let mut drained = pin!(draining.wait_for(|d| *d));
            // An interval too long to add to a clock waits for the drain.
            let mut sleep = began
                .checked_add(interval)
                .map(|deadline| Box::pin(time::sleep_until(deadline)));
            poll_fn(|cx| {
                let slept = sleep
                    .as_mut()
                    .is_some_and(|s| s.as_mut().poll(cx).is_ready());
                if slept || drained.as_mut().poll(cx).is_ready() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
        }

        /// Ends every wait, now and later: shutdown drains without pacing.
        pub(crate) fn drain(&self) {
            self.draining.send_replace(true);
        }
    }
}

/// Under loom, tokio is out of the build: each runner future is driven by
/// `loom::future::block_on` on a loom thread — the same runner loop, on
/// loom's scheduler.
#[cfg(loom)]
mod loom_tasks {
    use std::task::{Context, Poll};

    use super::{lock, thread, Arc, BoxFuture, Mutex, PerThreadValue};

    /// `sync::PerThread` for loom: one value per *loom* thread (loom threads
    /// share one OS thread, whose thread-locals they would otherwise share),
    /// kept in a plain `std` mutex that is never held across a loom
    /// operation, so it adds no scheduling point of its own.
    pub(crate) struct PerThread {
        values: std::sync::Mutex<Vec<(thread::ThreadId, LoomValue)>>,
    }

    /// One loom thread's value.
    type LoomValue = Arc<std::sync::Mutex<Option<PerThreadValue>>>;

    impl PerThread {
        pub(crate) fn new() -> Self {
            PerThread {
                values: std::sync::Mutex::default(),
            }
        }

        /// See the `std` version.
        pub(crate) fn with<R>(
            &self,
            f: impl FnOnce(Option<&mut Option<PerThreadValue>>) -> R,
        ) -> R {
            let me = thread::current().id();
            let mine = {
                let mut values = self
                    .values
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some((_, value)) = values.iter().find(|(id, _)| *id == me) {
                    Arc::clone(value)
                } else {
                    let value = Arc::default();
                    values.push((me, Arc::clone(&value)));
                    value
                }
            };
            // Only this loom thread locks `mine`: `try_lock` fails only on
            // reentry.
            let result = match mine.try_lock() {
                Ok(mut value) => f(Some(&mut value)),
                Err(_) => f(None),
            };
            result
        }
    }

    /// Stands in for a runtime handle: loom threads need none.
    #[derive(Debug, Clone)]
    pub(crate) struct Handle;

    impl Handle {
        pub(crate) fn current() -> Self {
            Handle
        }
    }

    #[derive(Debug)]
    pub(crate) struct TaskSet {
        threads: Mutex<Vec<thread::JoinHandle<()>>>,
    }

    impl TaskSet {
        pub(crate) fn new(_: Handle) -> Self {
            TaskSet {
                threads: Mutex::new(Vec::new()),
            }
        }

        pub(crate) fn spawn(&self, task: BoxFuture) -> Result<(), super::RuntimeGone> {
            let handle = thread::spawn(move || loom::future::block_on(task));
            lock(&self.threads).push(handle);
            Ok(())
        }

        /// Loom threads are joined by `poll_drained`.
        pub(crate) fn reap(&self) {}

        /// Joins every thread (blocking the loom thread that polls).
        pub(crate) fn poll_drained(&self, _: &mut Context<'_>) -> Poll<()> {
            loop {
                let threads = std::mem::take(&mut *lock(&self.threads));
                if threads.is_empty() {
                    return Poll::Ready(());
                }
                for t in threads {
                    let _ = t.join();
                }
            }
        }

        /// Loom threads cannot be cancelled; the runner loop's abort flag
        /// keeps them from beginning another cycle.
        pub(crate) fn abort_all(&self) {}
    }

    /// Loom does not model time: waits for `f`, never times out.
    pub(crate) async fn within<T>(
        _: std::time::Duration,
        f: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        Some(f.await)
    }

    /// Loom does not model time: the `min_interval` wait is one yield — a
    /// point where every other thread may run (a request joins the pending
    /// follow-up, a shutdown starts draining) — after which the interval has
    /// passed. See `wait_until`.
    #[derive(Debug)]
    pub(crate) struct Pace {
        on: bool,
    }

    impl Pace {
        pub(crate) fn new(min_interval: std::time::Duration, _: &Handle) -> Self {
            Pace {
                on: !min_interval.is_zero(),
            }
        }

        pub(crate) fn clock(&self) -> Option<std::time::Instant> {
            self.on.then(std::time::Instant::now)
        }

        pub(crate) async fn until_next(&self, _: std::time::Instant) {
            thread::yield_now();
        }

        pub(crate) fn drain(&self) {}
    }
}
