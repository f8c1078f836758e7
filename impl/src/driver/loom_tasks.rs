//! [`Tasks`] under loom: tokio is out of the build, so each runner future is
//! driven by `loom::future::block_on` on a loom thread — the same runner
//! loop, on loom's scheduler. Loom does not model time: a pacing wait is one
//! yield, during which anything may happen.

use std::future::Future;
use std::io;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::{BoxFuture, Driver};
use crate::sync::{thread, AtomicBool, Mutex, Ordering};

/// The async coalescer's driver under loom: runners on loom threads.
#[derive(Debug)]
pub struct Tasks {
    threads: Mutex<Vec<thread::JoinHandle<()>>>,
    timed: bool,
    /// Set by `on_drop`: runners that see it begin no further cycle.
    aborted: AtomicBool,
}

/// The builder's options for [`Tasks`] (none under loom).
#[derive(Debug, Default)]
pub struct TasksConfig {}

impl Tasks {
    pub(crate) fn new(_: TasksConfig, needs: super::Needs) -> Self {
        Tasks {
            threads: Mutex::new(Vec::new()),
            timed: needs.timed,
            aborted: AtomicBool::new(false),
        }
    }

    /// Joins every thread (blocking the loom thread that polls).
    pub(crate) fn poll_drained(&self, _: &mut Context<'_>) -> Poll<()> {
        loop {
            let threads = std::mem::take(&mut *self.threads.lock());
            if threads.is_empty() {
                return Poll::Ready(());
            }
            for t in threads {
                let _ = t.join();
            }
        }
    }
}

impl Driver for Tasks {
    type Config = TasksConfig;
    const DROP_ABORTS: bool = true;

    fn spawn(&self, runner: BoxFuture) -> io::Result<()> {
        let handle = thread::spawn(move || loom::future::block_on(runner));
        self.threads.lock().push(handle);
        Ok(())
    }

    /// As the builder asked: a coalescer that paces or retries has timers.
    fn has_timers(&self) -> bool {
        self.timed
    }

    /// Always: a deadline is one yield away (`until`).
    fn can_delay(&self) -> bool {
        true
    }

    /// One yield: a point where every other thread may run (a request joins
    /// the pending follow-up, a shutdown starts draining), after which the
    /// deadline has passed (see `sync`'s `Condvar::wait_until`).
    async fn until(&self, _: Option<Instant>) {
        thread::yield_now();
    }

    fn drain(&self) {}

    // `sleep_until` never resolves (the default): loom does not model
    // time, so no model's cycle times out.

    fn is_aborted(&self) -> bool {
        // ORDERING: Acquire pairs with the Release store in `on_drop` (as in
        // `tokio_tasks.rs`).
        self.aborted.load(Ordering::Acquire)
    }

    // `reap` does nothing (the default): loom threads are joined by
    // `poll_drained`.

    /// Loom threads cannot be cancelled: the flag alone keeps runners from
    /// beginning another cycle.
    fn on_drop(&self, close: impl FnOnce()) {
        close();
        // ORDERING: Release pairs with the Acquire load in `is_aborted`.
        self.aborted.store(true, Ordering::Release);
    }
}

/// Loom does not model time: waits for `f`, never times out.
pub(crate) async fn within<T>(_: Duration, f: impl Future<Output = T>) -> Option<T> {
    Some(f.await)
}

/// Under loom the doc examples return before calling this.
pub fn doc_block_on<F: Future>(_: F) -> F::Output {
    unreachable!("doc examples do not run in the loom build")
}
