//! Per-key trailing-edge coalescing: run a job again, but never twice at
//! once, and never lose a request.
//!
//! A *request* for a key asks for one *cycle* of that key's job. Requests for
//! a key whose cycle is running are folded into exactly one follow-up cycle,
//! which begins after all of them; requests never wait for cycles; keys never
//! wait for each other. The guarantees, each proven by the loom suite and
//! ordinary tests, are listed in `docs/invariants.md`:
//!
//! - **INV-1** a key's cycles never overlap (and each happens-before the next);
//! - **INV-2** no lost wakeup: every accepted request is covered by a cycle
//!   that begins after it;
//! - **INV-3** a panicking cycle is contained: reported once, the key is not
//!   stuck, and requests that arrived during it get their follow-up;
//! - **INV-4** a request happens-before the cycle that covers it;
//! - **INV-5** shutdown drains: a request racing it is either accepted and
//!   covered before `shutdown` returns, or rejected with [`Closed`]; no
//!   cycle begins after it returns, and no runner outlives the coalescer;
//! - **INV-6** idle keys cost no memory: a key's slot is removed when it
//!   goes idle;
//! - **INV-7** no spurious cycle: every cycle covers at least one request;
//! - **INV-8** a waiter gets its covering cycle's answer: a cycle may return
//!   `Result<T, E>` ([`CycleOutput`]), and `request_and_wait` yields the
//!   value, or [`RunError::Failed`] with the error, of the cycle that
//!   covered its request;
//! - **INV-9** a failed cycle is retried once for all its requests: with
//!   `Builder::retry` (a [`Backoff`], or a closure), a failed cycle's
//!   requests are owed to one retry after the policy's delay, into which
//!   every request meanwhile folds — never both a follow-up and a retry;
//!   a success resets the count;
//! - **INV-10** a cycle past its timeout has failed: with
//!   `Builder::timeout`, it is answered [`RunError::TimedOut`] and retried
//!   like any failure (an async cycle is cancelled at its `.await`; a
//!   blocking one can stop on its own: [`CycleContext`]).
//!
//! Two front ends share one copy of the protocol (state machine, keyed map
//! with reclamation, runner logic):
//!
//! - [`Coalescer`]: async cycles run as tokio tasks in a `JoinSet` the
//!   coalescer owns; `shutdown().await` drains, `Drop` aborts;
//! - [`blocking::Coalescer`]: cycles run on threads the coalescer owns and
//!   joins (`shutdown` and `Drop` both drain).
//!
//! Each has a [`Requester`] ([`blocking::Requester`]), from `handle()`: a
//! cheap `Clone + Send + Sync` handle with the request verbs and no
//! `shutdown`, which does not keep the coalescer alive — for a service's
//! handlers, and, through `Builder::build_cyclic`, for the coalescer's own
//! cycles.
//!
//! ```
//! # if coalescer::__LOOM_BUILD { return; }
//! # coalescer::__doc_block_on(async {
//! use coalescer::Coalescer;
//!
//! let resync = Coalescer::new(|tenant: String| async move {
//!     // re-sync `tenant`; requests arriving meanwhile coalesce into one re-run
//!     let _ = tenant;
//! });
//! resync.request("acme".to_owned()).unwrap();
//! resync.request_and_wait("acme".to_owned()).await.unwrap();
//! resync.shutdown().await;
//! assert_eq!(resync.active_keys(), 0);
//! # });
//! ```
//!
//! # Tracing and metrics
//!
//! Each cycle runs inside a `tracing` span (target `coalescer`, name
//! `cycle`) with the coalescer's name (`Builder::name`), the key, the
//! cycle's number and its attempt, closed with its `outcome` and
//! `duration_seconds`. Events — `started`, `coalesced`, `delayed`,
//! `reclaimed` (`debug`); `cycle failed`, `cycle timed out`, `gave up
//! retrying` (`warn`); `retrying` (`debug`); `cycle panicked` (`error`) —
//! carry the fields `coalescer` and `key`. Keys print with `Debug`
//! (`Builder::new` needs `K: Debug`; for a key type without it,
//! `Builder::opaque_keys` shows keys as `_`). The failure and panic hooks
//! replace the failure and panic events.
//!
//! With the cargo feature `metrics` (on by default), a family of metrics in
//! the shape of client-go's workqueue metrics goes through the `metrics`
//! facade to whatever exporter the program installs; the coalesced request
//! path records none of them. `docs/metrics.md` lists each metric and when
//! it is recorded.
#![forbid(unsafe_code)]

mod completion;
mod context;
mod delay;
mod driver;
mod error;
mod limit;
mod memo;
mod meter;
mod output;
mod padded;
mod panic;
mod registry;
mod retry;
mod runner;
mod shell;
mod slot;
mod state;
mod stats;
mod sync;
mod trace;

mod asynchronous;
pub mod blocking;

// The slot protocol's loom models: they need the crate's internals, and
// loom's primitives work only inside a loom model (`--cfg loom`).
#[cfg(all(test, loom))]
mod loom_models;

pub use asynchronous::{Builder, Coalescer, Requester, Wait};
pub use context::CycleContext;
pub use error::{Admission, Closed, RunError, StillRunning};
pub use output::CycleOutput;
pub use panic::PanicReport;
pub use retry::{Backoff, Failure, FailureHook, FailureReport, NoHook, NoRetry, RetryPolicy};
pub use stats::Stats;

#[doc(hidden)]
pub use driver::doc_block_on as __doc_block_on;

/// Whether this is the loom model build (`--cfg loom`), whose primitives work
/// only inside a loom model. The doc examples check it to skip themselves
/// there (rustdoc does not see `RUSTFLAGS`, so they cannot use `cfg`).
#[doc(hidden)]
pub const __LOOM_BUILD: bool = cfg!(loom);
