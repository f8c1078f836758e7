//! The loom side of the shim: loom's primitives behind the same API as
//! `std_impl.rs`.

pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
pub(crate) use loom::sync::{MutexGuard, RwLockReadGuard, RwLockWriteGuard};
pub(crate) use loom::thread;

use std::sync::PoisonError;
use std::time::Instant;

use super::{Arc, PerThreadValue};

/// A loom mutex whose `lock` ignores poison.
#[derive(Debug, Default)]
pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        Mutex(loom::sync::Mutex::new(value))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A loom reader-writer lock whose `read` and `write` ignore poison.
#[derive(Debug, Default)]
pub(crate) struct RwLock<T>(loom::sync::RwLock<T>);

impl<T> RwLock<T> {
    pub(crate) fn new(value: T) -> Self {
        RwLock(loom::sync::RwLock::new(value))
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, T> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, T> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A loom condition variable whose waits ignore poison.
#[derive(Debug, Default)]
pub(crate) struct Condvar(loom::sync::Condvar);

impl Condvar {
    pub(crate) fn new() -> Self {
        Condvar(loom::sync::Condvar::new())
    }

    pub(crate) fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        self.0.wait(guard).unwrap_or_else(PoisonError::into_inner)
    }

    /// Loom does not model time (and its `wait_timeout` never times out): a
    /// timed wait is "some time passes, during which anything may happen" —
    /// the lock is released, every other thread may run, and then the
    /// deadline has passed. A wait without a deadline ends only when the
    /// caller's condition changes.
    pub(crate) fn wait_until<'a, T>(
        &self,
        mutex: &'a Mutex<T>,
        guard: MutexGuard<'a, T>,
        deadline: Option<Instant>,
    ) -> (MutexGuard<'a, T>, bool) {
        drop(guard);
        thread::yield_now();
        (mutex.lock(), deadline.is_some())
    }

    pub(crate) fn notify_all(&self) {
        self.0.notify_all();
    }
}

/// A thread-local with a constant initializer (see `std_impl.rs`): under
/// loom, one per *loom* thread.
macro_rules! thread_local_const {
    ($(#[$attr:meta])* static $name:ident: $t:ty = $init:expr;) => {
        loom::thread_local! { $(#[$attr])* static $name: $t = $init; }
    };
}
pub(crate) use thread_local_const;

/// `PerThread` for loom: one value per *loom* thread (loom threads share one
/// OS thread, whose thread-locals they would otherwise share), kept in a
/// plain `std` mutex that is never held across a loom operation, so it adds
/// no scheduling point of its own.
pub(crate) struct PerThread {
    values: std::sync::Mutex<Vec<(thread::ThreadId, LoomValue)>>,
}

/// One loom thread's value.
type LoomValue = Arc<std::sync::Mutex<Option<PerThreadValue>>>;

impl PerThread {
    pub(crate) fn new() -> Self {
        PerThread {
            values: std::sync::Mutex::default(),
        }
    }

    /// See the `std` version.
    pub(crate) fn with<R>(&self, f: impl FnOnce(Option<&mut Option<PerThreadValue>>) -> R) -> R {
        let me = thread::current().id();
        let mine = {
            let mut values = self.values.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((_, value)) = values.iter().find(|(id, _)| *id == me) {
                Arc::clone(value)
            } else {
                let value = Arc::default();
                values.push((me, Arc::clone(&value)));
                value
            }
        };
        // Only this loom thread locks `mine`: `try_lock` fails only on
        // reentry.
        let result = match mine.try_lock() {
            Ok(mut value) => f(Some(&mut value)),
            Err(_) => f(None),
        };
        result
    }
}
