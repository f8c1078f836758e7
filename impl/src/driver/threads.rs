//! [`Threads`]: each runner on an OS thread the coalescer owns and joins
//! (under loom, a loom thread, through `sync`). Pacing is a timed wait on a
//! condvar that shutdown interrupts.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use super::{BoxFuture, Driver};
use crate::sync::{thread, Arc, AtomicBool, Condvar, Mutex, Ordering};

/// The blocking coalescer's driver: runner threads.
#[derive(Debug)]
pub struct Threads {
    /// The runner threads. Finished threads are joined (reaped) whenever a
    /// new one is started, so this holds only live runners and runners that
    /// are exiting. Never held while joining a live thread, so a runner is
    /// never blocked by it.
    entries: Mutex<Vec<Entry>>,
    /// Set once by `drain`. Guarded by this mutex; `wake` is notified when
    /// it is set.
    draining: Mutex<bool>,
    wake: Condvar,
    /// Serializes shutdowns, so that a second caller returns only once the
    /// first one's drain is complete.
    shutting_down: Mutex<()>,
    /// Set when `shutdown_timeout` gave up on some runners: `Drop` then
    /// closes without joining them.
    gave_up: AtomicBool,
}

/// The builder's options for [`Threads`] (none).
#[derive(Debug, Default)]
pub struct ThreadsConfig {}

#[derive(Debug)]
struct Entry {
    /// Set by the thread as the last thing it does.
    finished: Arc<AtomicBool>,
    handle: thread::JoinHandle<()>,
}

/// Sets the flag when dropped, so it is set however the body ends.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        // ORDERING: Release pairs with the Acquire loads in `spawn`'s reaping
        // and in `join_until`; the join that follows is what actually
        // synchronizes.
        self.0.store(true, Ordering::Release);
    }
}

impl Threads {
    pub(crate) fn new(_: ThreadsConfig, _timed: bool) -> Self {
        Threads {
            entries: Mutex::new(Vec::new()),
            draining: Mutex::new(false),
            wake: Condvar::new(),
            shutting_down: Mutex::new(()),
            gave_up: AtomicBool::new(false),
        }
    }

    /// One shutdown at a time: `close`, then join every runner (except the
    /// caller's own), giving up at `deadline` if there is one; whether every
    /// runner was joined.
    pub(crate) fn shutdown(&self, close: impl FnOnce(), deadline: Option<Instant>) -> bool {
        let _one_at_a_time = self.shutting_down.lock();
        close();
        match deadline {
            None => {
                self.join_all();
                true
            }
            Some(deadline) => self.join_until(deadline),
        }
    }

    /// Records that `shutdown_timeout` gave up: `Drop` will not join.
    pub(crate) fn give_up(&self) {
        // ORDERING: Relaxed: read only by this coalescer's own `Drop`, which
        // the caller's thread (or a later owner, through the handoff that
        // moved the coalescer) runs after this.
        self.gave_up.store(true, Ordering::Relaxed);
    }

    /// Joins every finished thread until none is left but the caller's own,
    /// or `deadline` passes; whether all were joined. Polls the threads'
    /// `finished` flags once a millisecond: this is only for
    /// `shutdown_timeout`, where a cycle may never return.
    fn join_until(&self, deadline: Instant) -> bool {
        let me = thread::current().id();
        loop {
            let finished: Vec<Entry> = {
                let mut entries = self.entries.lock();
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
                return self
                    .entries
                    .lock()
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
                let mut entries = self.entries.lock();
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

    /// Runner handles held (for the std build's tests of reaping).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().len()
    }
}

impl Driver for Threads {
    type Config = ThreadsConfig;
    const DROP_ABORTS: bool = false;

    fn spawn(&self, runner: BoxFuture) -> io::Result<()> {
        let mut entries = self.entries.lock();
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
                block_on(runner);
            })?;
        entries.push(Entry { finished, handle });
        Ok(())
    }

    fn has_timers(&self) -> bool {
        true
    }

    /// Blocks (the future is ready when polled) until `deadline`, or the
    /// coalescer is draining. The key's slot stays live meanwhile, so every
    /// request that arrives joins the one cycle that follows.
    fn until(&self, deadline: Option<Instant>) -> impl Future<Output = ()> + Send + '_ {
        let mut draining = self.draining.lock();
        while !*draining {
            let (guard, passed) = self.wake.wait_until(&self.draining, draining, deadline);
            draining = guard;
            if passed {
                break;
            }
        }
        std::future::ready(())
    }

    fn drain(&self) {
        *self.draining.lock() = true;
        self.wake.notify_all();
    }

    // `sleep_until` never resolves (the default): a blocking cycle has
    // returned by the time it is polled, and the runner checks the deadline
    // after it instead. Threads are never aborted (dropping the coalescer
    // joins them) and are reaped by the next `spawn`: the defaults.

    /// Shuts down, as `shutdown` does — unless `shutdown_timeout` gave up
    /// on some runners, which `Drop` then does not wait for either.
    fn on_drop(&self, close: impl FnOnce()) {
        // ORDERING: Relaxed, see `give_up`.
        if self.gave_up.load(Ordering::Relaxed) {
            close();
        } else {
            self.shutdown(close, None);
        }
    }
}

/// Drives `runner` to its end on this thread. A runner on [`Threads`] never
/// waits for a waker (its cycles are plain calls and its pacing a blocking
/// wait), so the first poll finishes it; parking covers any other future.
fn block_on(runner: BoxFuture) {
    /// Wakes the thread that blocks.
    struct Unpark(thread::Thread);

    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }

    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut runner = pin!(runner);
    while runner.as_mut().poll(&mut cx) == Poll::Pending {
        thread::park();
    }
}
