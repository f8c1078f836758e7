//! Per-key trailing-edge coalescing across processes, on PostgreSQL.
//!
//! Several replicas of a service share one row per key in
//! `coalescer_keys`: a request is one upsert that is never lost, a replica
//! claims due keys with `FOR UPDATE SKIP LOCKED` and holds each under a
//! lease, and a cycle's completion and its go-again (or go-idle) are one
//! conditional update, so the distributed lost wakeup cannot happen. Every
//! claim draws a fencing epoch from one sequence; a completion, renewal or
//! [`fence_in`](Namespace::fence_in) with a superseded epoch is rejected.
//!
//! The protocol, each statement and its invariants are in
//! `docs/distributed.md`; [`model`] holds the same row transitions as pure
//! functions, checked against the SQL by a differential test.
//!
//! Cycles are **at least once** after a crash: a replica that dies
//! mid-cycle leaves its lease to expire, and another replica runs the key
//! again. Cycles must be idempotent; effects either commit in this database
//! in the cycle's own transaction ([`Namespace::fence_in`],
//! [`Namespace::complete_in`]), or carry the cycle's epoch to a resource
//! that rejects a lower one. A request whose statement was sent but whose
//! reply was lost is *unknown*; sending it again is safe, because
//! duplicates coalesce.
// Nothing under loom, nor in rustdoc's doctest collection, which does not see the
// loom build's RUSTFLAGS (and so would look for the dependencies it leaves out).
#![cfg(not(any(loom, doctest)))]

mod error;
pub mod model;
mod replica;
mod store;

pub use error::{Error, InvalidKey};
pub use model::{Claimed, Completed, Requested};
pub use replica::{Cycle, Replica, ReplicaBuilder, ReplicaStats, ShutdownReport};
pub use store::{Namespace, Store, MAX_KEY_BYTES};
