//! Outcomes and errors of the request verbs.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;

/// How an accepted request will be covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Admission {
    /// The key had no active runner: this request started one, and that
    /// runner's first cycle covers it.
    Started,
    /// The key's runner is active: it will begin one more cycle after this
    /// request, which covers it (together with every other request that
    /// arrived meanwhile).
    Coalesced,
    /// A delayed request (`request_after`) for an idle key: the coalescer's
    /// timer holds it, and starts the key's runner at its deadline unless a
    /// request starts one sooner (whose first cycle then covers it).
    Scheduled,
}

/// The request was rejected because the coalescer is shut down (or shutting
/// down). Nothing was recorded: no cycle will run for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Closed;

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "request rejected: the coalescer is shut down, so no cycle will run for it; \
             create a new coalescer to keep accepting requests",
        )
    }
}

impl std::error::Error for Closed {}

/// Why `request_and_wait` did not get the value of its covering cycle.
///
/// `E` is the error type of a fallible cycle (one that returns
/// `Result<T, E>`); for a cycle that returns `()` it is
/// [`Infallible`](std::convert::Infallible), the default, so
/// `Result<(), RunError>` names what such a coalescer's `request_and_wait`
/// returns.
#[derive(Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RunError<E = Infallible> {
    /// The request was rejected: the coalescer is shut down. No cycle ran
    /// for it.
    Closed,
    /// The request was accepted and the cycle covering it began after it,
    /// but that cycle returned this error. Every waiter covered by that
    /// cycle shares it. The key is not stuck: requests that arrived during
    /// the cycle get their follow-up, as after a success.
    Failed(Arc<E>),
    /// The request was accepted and the cycle covering it began after it,
    /// but that cycle panicked. The panic was reported to the panic hook; the
    /// key is not stuck, and later requests start new cycles as usual.
    Panicked,
    /// `request_and_wait` was called from inside a cycle of the same key (on
    /// the cycle's own thread or task): it would wait for a cycle that
    /// cannot begin until the calling cycle returns. Nothing was recorded.
    /// Use `request` there instead: the follow-up cycle it asks for begins
    /// after the calling cycle returns.
    OwnCycle,
    /// The request was accepted, but the async coalescer was dropped without
    /// `shutdown().await`, which aborts its runners: the covering cycle was
    /// cancelled at an `.await`, or never began.
    Aborted,
    /// The request was accepted and the cycle covering it began after it,
    /// but that cycle ran longer than the builder's `timeout`: an async
    /// cycle was cancelled at its next `.await`; a blocking one returned
    /// late, and what it returned was dropped.
    TimedOut,
}

impl<E> RunError<E> {
    /// The covering cycle's error, if it failed.
    pub fn failure(&self) -> Option<&E> {
        match self {
            RunError::Failed(error) => Some(error),
            _ => None,
        }
    }
}

// By hand: a derive would ask for `E: Clone`, but the error is shared.
impl<E> Clone for RunError<E> {
    fn clone(&self) -> Self {
        match self {
            RunError::Closed => RunError::Closed,
            RunError::Failed(error) => RunError::Failed(Arc::clone(error)),
            RunError::Panicked => RunError::Panicked,
            RunError::OwnCycle => RunError::OwnCycle,
            RunError::Aborted => RunError::Aborted,
            RunError::TimedOut => RunError::TimedOut,
        }
    }
}

impl<E: fmt::Display> fmt::Display for RunError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Closed => fmt::Display::fmt(&Closed, f),
            RunError::Failed(error) => {
                write!(f, "the cycle covering this request failed: {error}")
            }
            RunError::OwnCycle => f.write_str(
                "request_and_wait called from inside a cycle of the same key, which would wait \
                 for itself; nothing was recorded (use `request` to ask for a follow-up)",
            ),
            RunError::Panicked => f.write_str(
                "the cycle covering this request panicked (reported to the panic hook); \
                 the key is still usable",
            ),
            RunError::Aborted => f.write_str(
                "the coalescer was dropped without shutdown, which aborted the cycle covering \
                 this request; use `shutdown().await` to drain instead",
            ),
            RunError::TimedOut => f.write_str(
                "the cycle covering this request ran longer than the coalescer's timeout",
            ),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for RunError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.failure().map(|error| error as _)
    }
}

impl<E> From<Closed> for RunError<E> {
    fn from(_: Closed) -> Self {
        RunError::Closed
    }
}

/// `shutdown_timeout` gave up waiting: these keys still had a cycle running
/// (or a follow-up pending) when the timeout passed. The coalescer is
/// closed; their runners go on in the background.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StillRunning<K> {
    /// The keys whose runners had not finished.
    pub keys: Vec<K>,
}

impl<K> fmt::Display for StillRunning<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "shutdown timed out with {} key(s) still running a cycle",
            self.keys.len()
        )
    }
}

impl<K: fmt::Debug> std::error::Error for StillRunning<K> {}
