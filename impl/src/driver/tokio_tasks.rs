//! [`Tasks`] on tokio: each runner is a task in a `JoinSet` the coalescer
//! owns; pacing is on tokio's clock (so a paused test clock drives it).

use std::future::{poll_fn, Future};
use std::io;
use std::pin::pin;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time;

use super::{BoxFuture, Driver};
use crate::sync::{Arc, AtomicBool, Mutex, Ordering};

/// The async coalescer's driver: runner tasks on a tokio runtime.
#[derive(Debug)]
pub struct Tasks {
    handle: Handle,
    /// Guarded by this mutex, which is never held across an `.await`.
    set: Mutex<JoinSet<()>>,
    /// Every task polling [`Tasks::poll_drained`]: `JoinSet` keeps only the
    /// latest poller's waker, so it is given this one, which wakes them all.
    drainers: Arc<FanOut>,
    /// Whether the runtime has the time driver (checked only if the
    /// builder asked for waits: `min_interval` or `retry`).
    timers: bool,
    /// Whether the runtime has the time driver, for `request_after`: found
    /// out at its first call (a coalescer that never delays never probes).
    can_delay: std::sync::OnceLock<bool>,
    /// Set to `true` once, by `drain`.
    draining: watch::Sender<bool>,
    /// Set by `on_drop`: runners that see it begin no further cycle.
    aborted: AtomicBool,
}

/// The builder's options for [`Tasks`].
#[derive(Debug, Default)]
pub struct TasksConfig {
    /// The runtime to run on; `None`: the current one, at `build`.
    pub(crate) handle: Option<Handle>,
}

#[derive(Debug, Default)]
struct FanOut(Mutex<Vec<Waker>>);

impl Wake for FanOut {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        for waker in std::mem::take(&mut *self.0.lock()) {
            waker.wake();
        }
    }
}

impl Tasks {
    /// # Panics
    ///
    /// Without a handle in `config`, outside a tokio runtime (as
    /// `tokio::spawn` would).
    pub(crate) fn new(config: TasksConfig, needs: super::Needs) -> Self {
        let handle = config.handle.unwrap_or_else(Handle::current);
        let mut usable = needs.timed;
        if usable {
            // tokio panics when a timer is created on a runtime built without
            // the time driver; find out now, once, rather than in a runner.
            usable = probe_timers(&handle);
            if !usable {
                tracing::error!(
                    target: "coalescer",
                    "min_interval, debounce, retry delays and timeouts are ignored: the tokio runtime \
                     has no time driver (build it with enable_time or enable_all)"
                );
            }
        }
        Tasks {
            handle,
            set: Mutex::new(JoinSet::new()),
            drainers: Arc::default(),
            timers: usable,
            can_delay: std::sync::OnceLock::new(),
            draining: watch::channel(false).0,
            aborted: AtomicBool::new(false),
        }
    }

    /// Ready once every task in the set has ended (joined or aborted).
    pub(crate) fn poll_drained(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut set = self.set.lock();
        {
            let mut drainers = self.drainers.0.lock();
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

    /// Tasks in the set, finished or not (for tests of reaping).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.set.lock().len()
    }
}

impl Driver for Tasks {
    type Config = TasksConfig;
    const DROP_ABORTS: bool = true;

    /// Spawns `runner` on the runtime. A runtime that has shut down drops
    /// the task right here, on this thread; the runner's guard sees that it
    /// was dropped before its launch settled (`runner.rs`).
    fn spawn(&self, runner: BoxFuture) -> io::Result<()> {
        let mut set = self.set.lock();
        while set.try_join_next().is_some() {}
        set.spawn_on(runner, &self.handle);
        Ok(())
    }

    fn has_timers(&self) -> bool {
        self.timers
    }

    fn can_delay(&self) -> bool {
        self.timers || *self.can_delay.get_or_init(|| probe_timers(&self.handle))
    }

    fn clock(&self) -> fn() -> Instant {
        || time::Instant::now().into_std()
    }

    /// Returns at `deadline`, on tokio's clock, or at once when the
    /// coalescer is draining.
    async fn until(&self, deadline: Option<Instant>) {
        if !self.timers {
            return;
        }
        let mut draining = self.draining.subscribe();
        let mut drained = pin!(draining.wait_for(|d| *d));
        let mut sleep = deadline.map(|deadline| Box::pin(time::sleep_until(deadline.into())));
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

    fn drain(&self) {
        self.draining.send_replace(true);
    }

    /// A tokio sleep (the caller checked `can_delay`: the runtime has the
    /// time driver, whatever the builder asked for).
    async fn timer_until(&self, deadline: Instant) {
        time::sleep_until(deadline.into()).await;
    }

    async fn sleep_until(&self, deadline: Instant) {
        if self.timers {
            time::sleep_until(deadline.into()).await;
        } else {
            std::future::pending::<()>().await;
        }
    }

    fn is_aborted(&self) -> bool {
        // ORDERING: Acquire pairs with the Release store in `on_drop`. No
        // data rides on it; the pairing only makes "the runner saw the
        // abort" mean "after the close".
        self.aborted.load(Ordering::Acquire)
    }

    /// Forgets the tasks that have ended, so that a quiescent coalescer
    /// keeps at most the last one (INV-6), not every task that ended since
    /// the last spawn.
    fn reap(&self) {
        let mut set = self.set.lock();
        while set.try_join_next().is_some() {}
    }

    /// Closes, then aborts every task: each is cancelled at its next
    /// `.await`, and no runner begins another cycle once it sees the flag.
    fn on_drop(&self, close: impl FnOnce()) {
        close();
        // ORDERING: Release pairs with the Acquire load in `is_aborted`.
        self.aborted.store(true, Ordering::Release);
        self.set.lock().abort_all();
    }
}

/// Whether `handle`'s runtime has the time driver (tokio panics when a timer
/// is created on one without it).
fn probe_timers(handle: &Handle) -> bool {
    let _context = handle.enter();
    std::panic::catch_unwind(|| drop(time::sleep(Duration::ZERO))).is_ok()
}

/// `f`'s output, or `None` if `timeout` (on tokio's clock) passes first. On
/// a runtime without the time driver, which cannot time anything, waits for
/// `f` without a timeout.
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

/// Runs `future` on a new current-thread tokio runtime. For the doc
/// examples, which cannot name tokio themselves (the loom build has none).
pub fn doc_block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread tokio runtime for a doc example")
        .block_on(future)
}
