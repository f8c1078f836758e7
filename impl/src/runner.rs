//! What every runner does, whatever drives its cycles: the shared core of the
//! front ends, and the runner protocol on top of `Slot` and `Registry`.

use std::any::Any;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::completion::{Completion, Outcome};
use crate::panic::{self, PanicHook, PanicReport};
use crate::registry::Registry;
use crate::slot::{Begun, Slot};
use crate::stats::Counters;
use crate::sync::{enter_cycle, Arc, BoxFuture};

/// Options shared by every front end's builder.
pub(crate) struct Options<K, S = RandomState> {
    pub(crate) hook: PanicHook<K>,
    pub(crate) hasher: S,
    pub(crate) shards: usize,
    /// A key's follow-up cycle begins no earlier than this after the
    /// previous cycle of that key began. Zero: no pacing.
    pub(crate) min_interval: Duration,
}

impl<K> Options<K> {
    pub(crate) fn new() -> Self {
        Options {
            hook: panic::default_hook(),
            hasher: RandomState::new(),
            shards: default_shards(),
            min_interval: Duration::ZERO,
        }
    }
}

impl<K, S> Options<K, S> {
    pub(crate) fn panic_hook(
        mut self,
        hook: impl Fn(&PanicReport<'_, K>) + Send + Sync + 'static,
    ) -> Self {
        self.hook = Box::new(hook);
        self
    }

    pub(crate) fn hasher<S2>(self, hasher: S2) -> Options<K, S2> {
        Options {
            hook: self.hook,
            hasher,
            shards: self.shards,
            min_interval: self.min_interval,
        }
    }

    pub(crate) fn shards(mut self, shards: usize) -> Self {
        self.shards = shards;
        self
    }

    pub(crate) fn min_interval(mut self, min_interval: Duration) -> Self {
        self.min_interval = min_interval;
        self
    }
}

impl<K, S: fmt::Debug> fmt::Debug for Options<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("hasher", &self.hasher)
            .field("shards", &self.shards)
            .field("min_interval", &self.min_interval)
            .finish_non_exhaustive()
    }
}

/// Four shards per available core, so two requesters rarely share a lock.
fn default_shards() -> usize {
    std::thread::available_parallelism().map_or(4, |n| n.get()) * 4
}

/// The state every front end shares: the map, the counters, the panic hook.
pub(crate) struct Core<K, S> {
    pub(crate) registry: Registry<K, S>,
    pub(crate) counters: Counters,
    hook: PanicHook<K>,
}

impl<K, S> Core<K, S>
where
    K: Hash + Eq,
    S: BuildHasher + Clone,
{
    pub(crate) fn new(options: Options<K, S>) -> Self {
        Core {
            registry: Registry::new(options.shards, options.hasher),
            counters: Counters::default(),
            hook: options.hook,
        }
    }
}

impl<K, S> Core<K, S> {
    /// A snapshot of the counters.
    pub(crate) fn stats(&self) -> crate::stats::Stats {
        self.counters.snapshot(self.registry.coalesced_count())
    }
}

/// One key's runner: started by the request that created `slot`, it runs
/// cycles until the slot goes idle, then removes the slot from the map.
#[derive(Debug)]
pub(crate) struct Runner<K> {
    pub(crate) key: K,
    slot: Arc<Slot>,
    /// The key's hash, from admission: reclamation finds the slot by it.
    hash: u64,
}

impl<K: Hash + Eq> Runner<K> {
    pub(crate) fn new(key: K, slot: Arc<Slot>, hash: u64) -> Self {
        Runner { key, slot, hash }
    }

    /// The slot's identity, for marking the cycle this thread runs.
    pub(crate) fn slot_id(&self) -> usize {
        self.slot.id()
    }

    /// Begins the next cycle (consumes the pending mark).
    pub(crate) fn begin(&self) -> Begun {
        self.slot.begin()
    }

    /// Finishes the cycle `begun`, which returned `result`: a panic is
    /// counted and reported once (INV-3), and waiters are told. The slot
    /// stays live; [`settle`](Self::settle) decides what comes next.
    pub(crate) fn finish<S: BuildHasher + Clone>(
        &self,
        core: &Core<K, S>,
        begun: &Begun,
        result: Result<(), Box<dyn Any + Send>>,
    ) {
        let outcome = match result {
            Ok(()) => Outcome::Completed,
            Err(payload) => {
                Counters::bump(&core.counters.panics);
                panic::report(&core.hook, &self.key, payload);
                Outcome::Panicked
            }
        };
        Counters::bump(&core.counters.cycles);
        if let Some(completion) = &begun.completion {
            completion.resolve(outcome);
        }
    }

    /// After [`finish`](Self::finish) (and any `min_interval` wait): the slot
    /// goes idle if no request arrived since `begun` (INV-2) — in which case
    /// it is removed from the map (INV-6) and this returns `false`. `true`
    /// means a request is pending: run another cycle. A panicking cycle
    /// settles through this same path, so a request that arrived during it
    /// makes `go_idle` fail and gets its follow-up (D2).
    pub(crate) fn settle<S: BuildHasher + Clone>(&self, core: &Core<K, S>, begun: &Begun) -> bool {
        if self.slot.go_idle(begun) {
            core.registry.reclaim(self.hash, &self.slot);
            false
        } else {
            true
        }
    }

    /// Tears down a runner that is stopped mid-flight (its task aborted or
    /// dropped unpolled): the cycle it was running, if any (`current`), and
    /// the cycle its slot would have begun next both resolve as aborted, and
    /// the slot is killed and removed so no request is stranded in it.
    pub(crate) fn abandon<S: BuildHasher + Clone>(
        &self,
        core: &Core<K, S>,
        current: Option<Arc<Completion>>,
    ) {
        if let Some(completion) = current {
            completion.resolve(Outcome::Aborted);
        }
        if let Some(next) = self.slot.abandon() {
            next.resolve(Outcome::Aborted);
        }
        core.registry.reclaim(self.hash, &self.slot);
    }
}

/// A cycle future whose panics — while polled, or while dropped — are caught.
///
/// Resolves to `Err(payload)` if polling panicked or if dropping the finished
/// future panicked. Dropped before it resolves (its task aborted), it drops
/// the inner future under `catch_unwind` too and discards any panic.
pub(crate) struct Contained {
    cycle: Option<BoxFuture>,
    /// The owner and slot whose cycle this is: marked as the thread's
    /// current cycle while the future is polled.
    mark: (usize, usize),
}

impl Contained {
    pub(crate) fn new(cycle: BoxFuture, mark: (usize, usize)) -> Self {
        Contained {
            cycle: Some(cycle),
            mark,
        }
    }
}

impl Future for Contained {
    type Output = Result<(), Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let _mark = enter_cycle(self.mark.0, self.mark.1);
        let Some(cycle) = self.cycle.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let polled = catch_unwind(AssertUnwindSafe(|| cycle.as_mut().poll(cx)));
        if let Ok(Poll::Pending) = polled {
            return Poll::Pending;
        }
        let finished = self.cycle.take();
        let dropped = catch_unwind(AssertUnwindSafe(move || drop(finished)));
        Poll::Ready(match (polled, dropped) {
            (Ok(_), Ok(())) => Ok(()),
            (Err(payload), Ok(())) | (Ok(_), Err(payload)) => Err(payload),
            (Err(payload), Err(again)) => {
                panic::dispose(again);
                Err(payload)
            }
        })
    }
}

impl Drop for Contained {
    fn drop(&mut self) {
        if let Some(cycle) = self.cycle.take() {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(cycle))) {
                panic::dispose(payload);
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    /// The documented default: four shards per available core.
    #[test]
    fn four_shards_per_core_by_default() {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        assert_eq!(super::default_shards(), 4 * cores);
    }
}
