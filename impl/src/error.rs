//! Outcomes and errors of the request verbs.

use std::fmt;

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

/// Why `request_and_wait` did not see its covering cycle complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RunError {
    /// The request was rejected: the coalescer is shut down. No cycle ran
    /// for it.
    Closed,
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
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Closed => fmt::Display::fmt(&Closed, f),
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
        }
    }
}

impl std::error::Error for RunError {}

impl From<Closed> for RunError {
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
