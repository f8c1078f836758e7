//! The one place that chooses between `std` and `loom`.
//!
//! Everything that orders memory between threads — the per-key state word,
//! the shard locks, the completion mutex and condvar, the `closed` flag, the
//! runner threads and their `finished` flags — comes from here. Under
//! `--cfg loom` these are loom's mocks, so the loom suite explores the very
//! code that ships; no other module mentions `loom`.
//!
//! Two things deliberately do **not** come from loom:
//!
//! - the statistics counters and the active-key count ([`StatCounter`]): they
//!   are observation-only (nothing is ordered by them, no decision reads
//!   them);
//! - [`Arc`]: its reference count orders only the deallocation of what it
//!   owns (std's own, separately verified, protocol); no decision of ours
//!   reads a count.
//!
//! Modelling either would multiply the interleavings loom explores — every
//! loom `Arc` clone and drop is a scheduling point — without checking
//! anything of ours.

#[cfg(loom)]
pub(crate) use loom::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard,
};
#[cfg(loom)]
pub(crate) use loom::thread;

#[cfg(not(loom))]
pub(crate) use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard,
};
#[cfg(not(loom))]
pub(crate) use std::thread;

pub(crate) use std::sync::Arc;

/// Whether this is the loom model build (`--cfg loom`), whose primitives work
/// only inside a loom model. The doc examples check it to skip themselves
/// there (rustdoc does not see `RUSTFLAGS`, so they cannot use `cfg`).
pub const LOOM_BUILD: bool = cfg!(loom);

/// A statistics counter: always `std`, always `Relaxed` (see the module doc).
pub(crate) type StatCounter = std::sync::atomic::AtomicU64;

/// Locks `m`, ignoring poison.
///
/// Every structure behind our locks stays valid if a panic unwinds while the
/// lock is held (the only code that can panic there is a user's key code —
/// `Hash`, `Eq`, `Clone`, `Drop` — inside map operations, which leaves the map
/// consistent), so poison carries no information for us and must not turn one
/// user's panic into everyone's.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Read-locks `l`, ignoring poison (see [`lock`]).
pub(crate) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Write-locks `l`, ignoring poison (see [`lock`]).
pub(crate) fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Waits on `cv`, ignoring poison (see [`lock`]).
pub(crate) fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(guard)
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
