//! Where runners run. Everything that differs between tokio tasks, OS
//! threads and loom threads sits behind [`Driver`]: starting a runner,
//! reaping it, holding it back between cycles (`min_interval`), aborting on
//! drop. Each implementation is a file of its own; the runner loop
//! (`runner.rs`) and the verbs (`shell.rs`) are written once against the
//! trait.
//!
//! | driver | runners | under `--cfg loom` |
//! |---|---|---|
//! | [`Tasks`] (`coalescer::Coalescer`) | tokio tasks in a `JoinSet` (`tokio_tasks.rs`) | loom threads, each driving its runner with `loom::future::block_on` (`loom_tasks.rs`) |
//! | [`Threads`] (`coalescer::blocking::Coalescer`) | OS threads (`threads.rs`) | loom threads (the same file, through `sync`) |
//!
//! rustdoc collects doc examples from its own parse of the crate, which sees
//! neither `--cfg loom` (it does not read `RUSTFLAGS`) nor, in the loom
//! build, tokio; `doctest_tasks.rs` is a type-only [`Tasks`] that lets that
//! parse resolve. It is never compiled into the library.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::Waker;
use std::time::Instant;

// The drivers and their trait are `pub` but unnameable outside the crate:
// they appear in the public type aliases (`coalescer::Coalescer` is
// `shell::Coalescer<K, S, Tasks, O>`), and no other crate can implement or
// name them.
mod threads;
#[allow(unreachable_pub, reason = "named only through the public type aliases")]
pub use self::threads::Threads;

#[cfg(not(any(loom, doctest)))]
mod tokio_tasks;
#[cfg(not(any(loom, doctest)))]
pub(crate) use self::tokio_tasks::within;
#[cfg(not(any(loom, doctest)))]
#[allow(unreachable_pub, reason = "named only through the public type aliases")]
pub use self::tokio_tasks::{doc_block_on, Tasks};

#[cfg(loom)]
mod loom_tasks;
#[cfg(loom)]
pub(crate) use self::loom_tasks::within;
#[cfg(loom)]
#[allow(unreachable_pub, reason = "named only through the public type aliases")]
pub use self::loom_tasks::{doc_block_on, Tasks};

#[cfg(all(doctest, not(loom)))]
mod doctest_tasks;
#[cfg(all(doctest, not(loom)))]
pub(crate) use self::doctest_tasks::within;
#[cfg(all(doctest, not(loom)))]
#[allow(unreachable_pub, reason = "named only through the public type aliases")]
pub use self::doctest_tasks::{doc_block_on, Tasks};

/// A runner, ready to be driven to completion: the runner loop of one key.
pub(crate) type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What a coalescer asks of its driver, from the builder's options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Needs {
    /// It waits between cycles or times them (`min_interval`, a retry
    /// policy, a timeout): the tokio driver checks for the time driver.
    pub(crate) timed: bool,
    /// At most this many cycles run at once (`None`: no limit): the thread
    /// driver then runs runners on at most this many threads.
    pub(crate) limit: Option<usize>,
}

/// What runs a coalescer's runners. Implemented by [`Tasks`] and
/// [`Threads`] only (the trait is unnameable outside the crate).
pub trait Driver: Send + Sync + Sized + 'static {
    /// The builder's options for this driver (the tokio handle, for tasks).
    type Config: Default + std::fmt::Debug + Send;

    /// Starts `runner`, which the driver then runs to its end, unless it
    /// aborts it ([`on_drop`](Self::on_drop)). Called while admission holds
    /// the key's shard write lock: `runner` must not be polled on this
    /// thread before this returns. A driver that cannot run it any more may
    /// drop it right here (a shut-down tokio runtime does); the runner's
    /// guard sees that and the caller rejects the request (`runner.rs`,
    /// `Launch`).
    ///
    /// # Errors
    ///
    /// The OS refused to start a thread.
    fn spawn(&self, runner: BoxFuture) -> io::Result<()>;

    /// Starts `runner` parked: it is first polled once the returned waker
    /// is woken (a runner whose key waits for a permit, on a driver where a
    /// waiting runner would otherwise hold a thread). `None`: the driver
    /// started it as [`spawn`](Self::spawn) does (a parked task costs it no
    /// thread), the default. Called as `spawn` is, with the same contract.
    ///
    /// # Errors
    ///
    /// As `spawn`.
    fn spawn_parked(&self, runner: BoxFuture) -> io::Result<Option<Waker>> {
        self.spawn(runner).map(|()| None)
    }

    /// Whether this driver can wait for a deadline (a tokio runtime built
    /// without the time driver cannot). Without timers the runner does not
    /// wait: no pacing, and retries follow at once.
    fn has_timers(&self) -> bool;

    /// Whether this driver can wait for a delayed request's deadline
    /// (`request_after`). The default: [`has_timers`](Self::has_timers).
    fn can_delay(&self) -> bool {
        self.has_timers()
    }

    /// Whether dropping the coalescer aborts its runners (tasks) rather
    /// than joining them (threads): then its cycles are told to stop first.
    const DROP_ABORTS: bool;

    /// The driver's clock: the system's, unless the driver has its own
    /// (tokio's, for tasks, which a paused test clock drives).
    fn clock(&self) -> fn() -> Instant {
        Instant::now
    }

    /// The time on the driver's [`clock`](Self::clock).
    fn now(&self) -> Instant {
        (self.clock())()
    }

    /// Resolves at `deadline` on the driver's clock (`None`: a deadline too
    /// far to name, never), or at once when the coalescer is draining
    /// ([`drain`](Self::drain)): the waits between cycles (`min_interval`,
    /// a retry's delay).
    fn until(&self, deadline: Option<Instant>) -> impl Future<Output = ()> + Send + '_;

    /// Starts the timer of the delayed requests (`delay.rs`), which waits
    /// with [`timer_until`](Self::timer_until) and is woken early by its
    /// waker. The default: as [`spawn`](Self::spawn) (a task).
    ///
    /// # Errors
    ///
    /// The OS refused to start a thread.
    fn spawn_timer(&self, timer: BoxFuture) -> io::Result<()> {
        self.spawn(timer)
    }

    /// The timer's wait: resolves at `deadline` on the driver's clock, and
    /// — unlike [`until`](Self::until) on threads — never blocks the thread
    /// that polls it, so that a waker can end it early. The default:
    /// `until`, whose tokio and loom versions do not block.
    fn timer_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + '_ {
        self.until(Some(deadline))
    }

    /// Ends every [`until`](Self::until) wait, now and later: shutdown
    /// drains without waiting out a pace or a backoff.
    fn drain(&self);

    /// Resolves at `deadline` on the driver's clock, whatever else happens
    /// (a cycle's timeout, which the drain does not cut short). Never, for
    /// a driver that cannot cancel a cycle (threads: a blocking cycle runs
    /// inside one poll) or cannot time one (loom, a runtime without timers):
    /// the default.
    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + '_ {
        let _ = deadline;
        std::future::pending()
    }

    /// Whether runners must begin no further cycle (the async coalescer was
    /// dropped). Read by each runner before each cycle. Never, by default:
    /// a driver whose `Drop` joins its runners does not abort them.
    fn is_aborted(&self) -> bool {
        false
    }

    /// Called by a runner as it exits normally (nothing, by default: a
    /// driver that reaps elsewhere).
    fn reap(&self) {}

    /// What dropping the coalescer does: `close` it (admission and pacing),
    /// then abort the runners (tasks) or join them (threads).
    fn on_drop(&self, close: impl FnOnce());
}
