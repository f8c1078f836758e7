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
//! - the statistics counters and the active-key count ([`StatCounter`]): they
//!   are observation-only (nothing is ordered by them, no decision reads
//!   them);
//! - [`Arc`]: its reference count orders only the deallocation of what it
//!   owns (std's own, separately verified, protocol); no decision of ours
//!   reads a count.
//!
//! Modelling either would multiply the interleavings loom explores — every
//! loom `Arc` clone and drop is a scheduling point — without checking
//! anything of ours.

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

/// A boxed runner future: what the async front end hands its task set.
pub(crate) type BoxFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

// Three task sets: tokio's (the real build), loom threads (`--cfg loom`), and
// a type-only stand-in for rustdoc's doctest collection. rustdoc collects
// doc examples from its own parse of the crate, which sees neither
// `--cfg loom` (it does not read RUSTFLAGS) nor, in the loom build, tokio; the
// stand-in lets that parse resolve. It is never compiled into the library:
// the examples link against the real one.
#[cfg(all(doctest, not(loom)))]
pub(crate) use self::doctest_tasks::{Handle, TaskSet};
#[cfg(loom)]
pub(crate) use self::loom_tasks::{Handle, TaskSet};
#[cfg(not(any(loom, doctest)))]
pub(crate) use self::tokio_tasks::{Handle, TaskSet};

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

    use super::BoxFuture;

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
        pub(crate) fn spawn(&self, _: BoxFuture) {}
        pub(crate) fn poll_drained(&self, _: &mut Context<'_>) -> Poll<()> {
            Poll::Ready(())
        }
        pub(crate) fn abort_all(&self) {}
    }
}

/// The async front end's runners as tokio tasks in a `JoinSet` the
/// coalescer owns.
#[cfg(not(any(loom, doctest)))]
mod tokio_tasks {
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Wake, Waker};

    use tokio::task::JoinSet;

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

        pub(crate) fn spawn(&self, task: BoxFuture) {
            let mut set = lock(&self.set);
            while set.try_join_next().is_some() {}
            set.spawn_on(task, &self.handle);
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
}

/// Under loom, tokio is out of the build: each runner future is driven by
/// `loom::future::block_on` on a loom thread — the same runner loop, on
/// loom's scheduler.
#[cfg(loom)]
mod loom_tasks {
    use std::task::{Context, Poll};

    use super::{lock, thread, BoxFuture, Mutex};

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

        pub(crate) fn spawn(&self, task: BoxFuture) {
            let handle = thread::spawn(move || loom::future::block_on(task));
            lock(&self.threads).push(handle);
        }

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
}
