//! The one place that chooses between `std` and `loom` primitives.
//!
//! Everything that orders memory between threads — the per-key state word,
//! the marks, the shard locks, the completion mutex and condvar, the
//! `closed` flag, the runner threads — is built from what this module
//! exports. Under `--cfg loom` these are loom's mocks, so the loom suite
//! explores the very code that ships. This module holds primitives only:
//! no protocol, no policy; the `driver` files are the only other place that
//! names loom.
//!
//! The locks do not poison: every structure behind them stays valid if a
//! panic unwinds while the lock is held (the only code that can panic there
//! is a user's key code — `Hash`, `Eq`, `Clone`, `Drop` — inside map
//! operations, which leaves the map consistent), so poison carries no
//! information here and must not turn one user's panic into everyone's.
//!
//! Two things deliberately do **not** come from loom:
//!
//! - [`StatCounter`]: statistics, observation only (nothing is ordered by a
//!   counter, no decision reads one);
//! - [`Arc`]: its reference count orders only the deallocation of what it
//!   owns (std's own, separately verified, protocol); no decision of ours
//!   reads a count.
//!
//! Modelling either would multiply the interleavings loom explores — every
//! loom `Arc` clone and drop is a scheduling point — without checking
//! anything of ours.

#[cfg(not(loom))]
mod std_impl;
#[cfg(not(loom))]
pub(crate) use self::std_impl::*;

#[cfg(loom)]
mod loom_impl;
#[cfg(loom)]
pub(crate) use self::loom_impl::*;

pub(crate) use std::sync::Arc;

/// A statistics counter: always `std`, always `Relaxed` (see the module doc).
pub(crate) type StatCounter = std::sync::atomic::AtomicU64;

/// What a [`PerThread`] holds for one thread: type-erased, so that owners
/// generic over a key type need no `Send` bound on their struct to hold one;
/// the owner downcasts to the one type it stores.
pub(crate) type PerThreadValue = Box<dyn std::any::Any + Send>;
