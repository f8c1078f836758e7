//! The `std` side of the shim: std's primitives, with locks that ignore
//! poison (see the module doc of `sync`).

pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
pub(crate) use std::sync::{MutexGuard, RwLockReadGuard, RwLockWriteGuard};
pub(crate) use std::thread;

use std::sync::PoisonError;
use std::time::Instant;

use super::PerThreadValue;

/// A `std` mutex whose `lock` ignores poison.
#[derive(Debug, Default)]
pub(crate) struct Mutex<T>(std::sync::Mutex<T>);

impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        Mutex(std::sync::Mutex::new(value))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A `std` reader-writer lock whose `read` and `write` ignore poison.
#[derive(Debug, Default)]
pub(crate) struct RwLock<T>(std::sync::RwLock<T>);

impl<T> RwLock<T> {
    pub(crate) fn new(value: T) -> Self {
        RwLock(std::sync::RwLock::new(value))
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, T> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, T> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A `std` condition variable whose waits ignore poison.
#[derive(Debug, Default)]
pub(crate) struct Condvar(std::sync::Condvar);

impl Condvar {
    pub(crate) fn new() -> Self {
        Condvar(std::sync::Condvar::new())
    }

    pub(crate) fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        self.0.wait(guard).unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until notified or until `deadline` (`None`: no deadline);
    /// returns the guard and whether the deadline had passed before any
    /// waiting (a wait that times out reports it on the next call). May
    /// return early (spurious wakeup): callers loop on their condition.
    /// `_mutex` is the mutex `guard` locks (the loom version relocks it).
    pub(crate) fn wait_until<'a, T>(
        &self,
        _mutex: &'a Mutex<T>,
        guard: MutexGuard<'a, T>,
        deadline: Option<Instant>,
    ) -> (MutexGuard<'a, T>, bool) {
        let Some(deadline) = deadline else {
            return (self.wait(guard), false);
        };
        let now = Instant::now();
        if now >= deadline {
            return (guard, true);
        }
        let (guard, _) = self
            .0
            .wait_timeout(guard, deadline - now)
            .unwrap_or_else(PoisonError::into_inner);
        (guard, false)
    }

    pub(crate) fn notify_all(&self) {
        self.0.notify_all();
    }
}

/// A thread-local with a constant initializer, on `std` and loom alike
/// (loom's `thread_local!` takes no `const` block; std's is faster with one).
macro_rules! thread_local_const {
    ($(#[$attr:meta])* static $name:ident: $t:ty = $init:expr;) => {
        std::thread_local! { $(#[$attr])* static $name: $t = const { $init }; }
    };
}
pub(crate) use thread_local_const;

/// One value per thread per owner: each thread that calls
/// [`PerThread::with`] gets its own, created empty on first use, and every
/// value is dropped with the `PerThread` (a `thread_local!` is one value per
/// thread for the whole program; this is one per thread per object). Each
/// thread's value is on lines of its own (`thread_local` packs them side by
/// side, and every `with` writes its borrow flag).
pub(crate) struct PerThread {
    values: thread_local::ThreadLocal<
        crate::padded::Padded<std::cell::RefCell<Option<PerThreadValue>>>,
    >,
}

impl PerThread {
    pub(crate) fn new() -> Self {
        PerThread {
            values: thread_local::ThreadLocal::new(),
        }
    }

    /// Calls `f` with this thread's value, or with `None` if this thread is
    /// already inside `with` on the same `PerThread` (a reentrant call, say
    /// from a user's `Eq`): the value is then busy and `f` must do without.
    #[inline]
    pub(crate) fn with<R>(&self, f: impl FnOnce(Option<&mut Option<PerThreadValue>>) -> R) -> R {
        // `get` first: the lookup alone is small enough to inline into the
        // memo path in every build; `get_or` (with the insertion) is not.
        let cell = match self.values.get() {
            Some(cell) => cell,
            None => self.create(),
        };
        match cell.try_borrow_mut() {
            Ok(mut value) => f(Some(&mut value)),
            Err(_) => f(None),
        }
    }

    /// This thread's value, created: its first `with`.
    #[cold]
    #[inline(never)]
    fn create(&self) -> &crate::padded::Padded<std::cell::RefCell<Option<PerThreadValue>>> {
        self.values
            .get_or(|| crate::padded::Padded(Default::default()))
    }
}
