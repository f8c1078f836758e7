//! What every runner does, whatever drives its cycles: the shared core of the
//! front ends, and the runner protocol on top of `Slot` and `Registry`.

use std::any::Any;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hash};

use crate::completion::Outcome;
use crate::panic::{self, PanicHook, PanicReport};
use crate::registry::Registry;
use crate::slot::{Begun, Slot};
use crate::stats::Counters;
use crate::sync::Arc;

/// Options shared by every front end's builder.
pub(crate) struct Options<K, S = RandomState> {
    pub(crate) hook: PanicHook<K>,
    pub(crate) hasher: S,
    pub(crate) shards: usize,
}

impl<K> Options<K> {
    pub(crate) fn new() -> Self {
        Options {
            hook: panic::default_hook(),
            hasher: RandomState::new(),
            shards: default_shards(),
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
        }
    }

    pub(crate) fn shards(mut self, shards: usize) -> Self {
        self.shards = shards;
        self
    }
}

impl<K, S: fmt::Debug> fmt::Debug for Options<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("hasher", &self.hasher)
            .field("shards", &self.shards)
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

/// One key's runner: started by the request that created `slot`, it runs
/// cycles until the slot goes idle, then removes the slot from the map.
#[derive(Debug)]
pub(crate) struct Runner<K> {
    pub(crate) key: K,
    slot: Arc<Slot>,
}

impl<K: Hash + Eq> Runner<K> {
    pub(crate) fn new(key: K, slot: Arc<Slot>) -> Self {
        Runner { key, slot }
    }

    /// Begins the next cycle (consumes the pending mark).
    pub(crate) fn begin(&self) -> Begun {
        self.slot.begin()
    }

    /// Ends the cycle `begun`, which returned `result`: a panic is counted
    /// and reported once (INV-3), waiters are told, and the slot goes idle
    /// if no request arrived since `begun` (INV-2) — in which case the slot
    /// is removed from the map (INV-6) and this returns `false`. `true`
    /// means a request is pending: run another cycle.
    pub(crate) fn end<S: BuildHasher + Clone>(
        &self,
        core: &Core<K, S>,
        begun: Begun,
        result: Result<(), Box<dyn Any + Send>>,
    ) -> bool {
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
        // A panicking cycle ends through this same path, so a request that
        // arrived during it makes `go_idle` fail and gets its follow-up (D2).
        if self.slot.go_idle(&begun) {
            core.registry.reclaim(&self.key, &self.slot);
            false
        } else {
            true
        }
    }
}
