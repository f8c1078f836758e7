//! What a cycle may know about itself: its attempt, and whether it has been
//! told to stop (`Builder::build_with_context`).

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Poll, Waker};
use std::time::Instant;

/// A cycle's context, given to cycles built with `build_with_context`:
/// which attempt this is, and a signal to stop.
///
/// A cycle is told to stop when its timeout has passed
/// (`Builder::timeout`), and when the coalescer stops waiting for it:
/// `shutdown_timeout` gave up, or the async coalescer was dropped without
/// `shutdown`. It may check ([`is_stopped`](Self::is_stopped)) or, async,
/// wait ([`stopped`](Self::stopped)); stopping is up to the cycle — a
/// blocking cycle cannot be stopped any other way, and an async one is
/// cancelled at its next `.await` only at its timeout or on `Drop`.
///
/// ```
/// # if coalescer::__LOOM_BUILD { return; }
/// use std::time::Duration;
/// use coalescer::blocking::Coalescer;
///
/// let c = Coalescer::builder()
///     .timeout(Duration::from_millis(20))
///     .build_with_context(|_key: &u32, cx| {
///         while !cx.is_stopped() {
///             std::thread::sleep(Duration::from_millis(1)); // a step of long work
///         }
///         Err::<(), _>("stopped before the work was done")
///     });
/// assert!(c.request_and_wait(1).is_err()); // timed out, after stopping on its own
/// ```
#[derive(Debug, Clone)]
pub struct CycleContext {
    attempt: u32,
    deadline: Option<Instant>,
    clock: fn() -> Instant,
    stop: Arc<Stop>,
}

impl CycleContext {
    pub(crate) fn new(
        attempt: u32,
        deadline: Option<Instant>,
        clock: fn() -> Instant,
        stop: Arc<Stop>,
    ) -> Self {
        CycleContext {
            attempt,
            deadline,
            clock,
            stop,
        }
    }

    /// The key's consecutive failed cycles before this one: 0 for a cycle
    /// after a success (or the key's first), 1 for the first retry, and so
    /// on. Always 0 without a retry policy.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When this cycle times out (on the coalescer's clock: tokio's for the
    /// async coalescer), if it has a timeout.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether this cycle has been told to stop: its timeout has passed, or
    /// the coalescer stopped waiting for it.
    pub fn is_stopped(&self) -> bool {
        self.stop.is_set() || self.deadline.is_some_and(|d| (self.clock)() >= d)
    }

    /// Resolves once the coalescer stops waiting for this cycle
    /// (`shutdown_timeout` gave up, or the async coalescer was dropped). At
    /// its timeout an async cycle is cancelled instead; race
    /// [`deadline`](Self::deadline) with a timer of your own to stop first.
    pub async fn stopped(&self) {
        poll_fn(|cx| self.stop.poll_set(cx.waker())).await;
    }
}

/// The coalescer's stop signal, shared by its cycles' contexts: set once,
/// never cleared. `std` types even under loom: no protocol state rides on
/// it, and no model's cycle looks at it.
#[derive(Debug, Default)]
pub(crate) struct Stop {
    set: AtomicBool,
    /// Guarded by this mutex, and `set` is stored under it: a waiter that
    /// registers after the store finds it set.
    wakers: Mutex<Vec<Waker>>,
}

impl Stop {
    /// Tells every cycle, now and later, to stop.
    pub(crate) fn set(&self) {
        let mut wakers = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
        // ORDERING: Release pairs with the Acquire load in `is_set`: a cycle
        // that sees the flag sees whatever the stopping thread did before.
        self.set.store(true, Ordering::Release);
        for waker in std::mem::take(&mut *wakers) {
            waker.wake();
        }
    }

    fn is_set(&self) -> bool {
        // ORDERING: Acquire pairs with the Release store in `set`.
        self.set.load(Ordering::Acquire)
    }

    fn poll_set(&self, waker: &Waker) -> Poll<()> {
        let mut wakers = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
        if self.is_set() {
            return Poll::Ready(());
        }
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
        Poll::Pending
    }
}
