//! The executable spec of `coalescer`'s protocol.
//!
//! - [`model`]: the protocol as a `stateright` model whose state-word
//!   transitions are the implementation's own (`impl/src/state.rs`, compiled
//!   into this crate from the same file), checked exhaustively against every
//!   invariant of `docs/invariants.md`, beside the Go algorithm the crate
//!   replaces, whose lost wakeup (D1) and panic stranding (D2) the checker
//!   finds. Not built under `--cfg loom`.
//! - [`history`]: the invariants once more, as an oracle over the events a
//!   test can observe from outside ([`check`]); the loom suite and the stress
//!   tests record histories and check them with it.
//!
//! `cargo run -p coalescer-spec --release -- explore` serves stateright's
//! Explorer on 127.0.0.1 to click through the state space; `docs/spec.md`
//! says what the model proves and what only loom covers.

pub mod history;
// Also left out of rustdoc's doctest collection, which does not see the loom
// build's RUSTFLAGS and so would look for stateright there too.
#[cfg(not(any(loom, doctest)))]
pub mod model;

#[cfg(not(any(loom, doctest)))]
pub mod replicas;

pub use history::{
    check, check_with, Answer, Event, History, Invariant, Options, Recorder, RequestId, Violation,
};

/// The state word of the implementation: the very file `impl/src/state.rs`,
/// not a copy, so the model's transitions are the code's.
#[cfg(not(any(loom, doctest)))]
#[path = "../../impl/src/state.rs"]
#[allow(
    dead_code,
    reason = "the model uses the transitions; the layout constants are the implementation's"
)]
mod state;
