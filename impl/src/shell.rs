//! One coalescer and one builder, generic over the driver: the verbs every
//! front end shares, written once. `asynchronous.rs` and `blocking.rs` add
//! only what differs — how a caller waits (a future, or blocking), how
//! shutdown waits for the drain, and the constructors' cycle types — and
//! name the two public types (`coalescer::Coalescer`,
//! `coalescer::blocking::Coalescer`) and their builders.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::time::Duration;

use crate::delay;

use crate::completion::Completion;
use crate::driver::{Driver, Needs};
use crate::error::{Admission, Closed, RunError};
use crate::limit::Limit;
use crate::meter::Meter;
use crate::output::{Answer, CycleOutput};
use crate::panic::PanicHook;
use crate::registry::{Admitted, Join, Refused, Registry, Vacant};
use crate::retry::{FailureHook, NoHook, NoRetry, RetryPolicy};
use crate::runner::{self, in_cycle_of, CycleFn, Debounce, Shared, StartError};
use crate::slot::{Slot, Ticks};
use crate::state::Requested;
use crate::stats::Counters;
use crate::sync::Arc;
use crate::trace::{Names, ShowKey};
use std::sync::Weak;

/// A per-key coalescer on driver `D` whose cycles return `O`; used as
/// [`crate::Coalescer`] (tokio tasks) and [`crate::blocking::Coalescer`]
/// (threads), whose docs say what each guarantees.
pub struct Coalescer<K, S, D: Driver, O: CycleOutput> {
    pub(crate) shared: Arc<Shared<K, S, D, O>>,
}

/// A handle that requests cycles of a coalescer on driver `D` but does not
/// own it; used as [`crate::Requester`] and [`crate::blocking::Requester`],
/// whose docs say what it does.
pub struct Requester<K, S, D: Driver, O: CycleOutput> {
    /// The coalescer's state, not kept alive by the handle: once it is gone
    /// the handle's requests are rejected. (Its `Coalescer` closes it on
    /// drop whatever handles exist; the runners hold it until they end.)
    pub(crate) shared: Weak<Shared<K, S, D, O>>,
}

impl<K, S, D: Driver, O: CycleOutput> Requester<K, S, D, O> {
    /// The coalescer's state, if it still exists.
    pub(crate) fn shared(&self) -> Option<Arc<Shared<K, S, D, O>>> {
        self.shared.upgrade()
    }
}

impl<K, S, D: Driver, O: CycleOutput> Clone for Requester<K, S, D, O> {
    fn clone(&self) -> Self {
        Requester {
            shared: Weak::clone(&self.shared),
        }
    }
}

impl<K, S, D: Driver, O: CycleOutput> fmt::Debug for Requester<K, S, D, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = self.shared();
        f.debug_struct("Requester")
            .field(
                "coalescer",
                &shared.as_ref().map(|s| s.registry.names.name()),
            )
            .field("closed", &shared.map_or(true, |s| s.registry.is_closed()))
            .finish()
    }
}

/// A builder on driver `D` with retry policy `P` and failure hook `H`; used
/// as [`crate::Builder`] and [`crate::blocking::Builder`].
pub struct Builder<K, S, D: Driver, P, H> {
    /// Told about every panicking cycle (`None`: a `tracing` event).
    pub(crate) hook: Option<PanicHook<K>>,
    /// The coalescer's name, and how its keys print.
    pub(crate) names: Names<K>,
    pub(crate) hasher: S,
    pub(crate) shards: usize,
    /// A key's follow-up cycle begins no earlier than this after the
    /// previous cycle of that key began. Zero: no pacing.
    pub(crate) min_interval: Duration,
    /// Whether, and after how long, a failed cycle is retried (`None`: never).
    pub(crate) retry: Option<P>,
    /// A cycle running longer than this has failed (`None`: no timeout).
    pub(crate) timeout: Option<Duration>,
    /// Told about every failed cycle (`None`: a `tracing` event).
    pub(crate) on_failure: Option<H>,
    /// At most this many cycles at once across all keys (0: no limit).
    pub(crate) concurrency: usize,
    /// A cycle begins only once no request came for this long (zero: no
    /// debounce) ...
    pub(crate) debounce: Duration,
    /// ... or once this long has passed since the earliest request it
    /// covers (`None`: no ceiling).
    pub(crate) max_wait: Option<Duration>,
    /// The driver's own options.
    pub(crate) driver: D::Config,
}

impl<K, D: Driver> Builder<K, RandomState, D, NoRetry, NoHook> {
    /// The defaults (see `new`, in [`front_end!`]), keys printed with
    /// `show` (`None`: they cannot print).
    pub(crate) fn defaults(show: Option<ShowKey<K>>) -> Self {
        Builder {
            hook: None,
            names: Names {
                show,
                ..Names::default()
            },
            hasher: RandomState::new(),
            shards: default_shards(),
            min_interval: Duration::ZERO,
            retry: None,
            timeout: None,
            on_failure: None,
            concurrency: 0,
            debounce: Duration::ZERO,
            max_wait: None,
            driver: D::Config::default(),
        }
    }
}

/// Four shards per available core, so two requesters rarely share a lock.
fn default_shards() -> usize {
    std::thread::available_parallelism().map_or(4, |n| n.get()) * 4
}

impl<K, S, D: Driver, P, H> Builder<K, S, D, P, H> {
    /// The coalescer running `cycle` on the driver `driver` makes from the
    /// builder's driver options and whether it will wait between cycles.
    pub(crate) fn finish<O: CycleOutput>(
        self,
        driver: impl FnOnce(D::Config, Needs) -> D,
        cycle: impl FnOnce(Requester<K, S, D, O>) -> CycleFn<K, O>,
    ) -> Coalescer<K, S, D, O>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        S: BuildHasher + Send + Sync + 'static,
        P: RetryPolicy<K, O::Error>,
        H: FailureHook<K, O::Error>,
    {
        let paced = !self.min_interval.is_zero();
        let debounced = !self.debounce.is_zero();
        let limit = (self.concurrency > 0).then_some(self.concurrency);
        let driver = driver(
            self.driver,
            Needs {
                timed: paced || debounced || self.retry.is_some() || self.timeout.is_some(),
                limit,
            },
        );
        let timers = driver.has_timers();
        let debounce = (debounced && timers).then(|| Debounce {
            quiet: self.debounce,
            max_wait: self.max_wait,
            epoch: driver.now(),
        });
        let meter = Meter::new(&self.names.name);
        let ticks = debounce.as_ref().map(|debounce| {
            let (clock, epoch) = (driver.clock(), debounce.epoch);
            Arc::new(move || Debounce::ticks(epoch, clock())) as Ticks
        });
        Coalescer {
            shared: Arc::new_cyclic(|weak| Shared {
                registry: Registry::new(self.shards, self.hasher)
                    .stamping(ticks)
                    .naming(self.names),
                debounce,
                counters: Counters::default(),
                hook: self.hook,
                cycle: cycle(Requester {
                    shared: Weak::clone(weak),
                }),
                min_interval: (paced && timers).then_some(self.min_interval),
                retry: self
                    .retry
                    .map(|policy| Box::new(policy) as Box<dyn RetryPolicy<K, O::Error>>),
                on_failure: self
                    .on_failure
                    .map(|hook| Box::new(hook) as Box<dyn FailureHook<K, O::Error>>),
                timeout: self.timeout.filter(|_| timers),
                stop: Arc::default(),
                limit: limit.map(|permits| Arc::new(Limit::new(permits))),
                closer: close_and_cover::<K, S, D, O>,
                warned_no_timers: std::sync::atomic::AtomicBool::new(false),
                meter,
                driver,
            }),
        }
    }
}

impl<K, S, D: Driver, P, H> Builder<K, S, D, P, H> {
    /// The same options with a new hasher, retry policy or failure hook
    /// (the builder methods that change a type parameter).
    pub(crate) fn retyped<S2, P2, H2>(
        self,
        hasher: impl FnOnce(S) -> S2,
        retry: impl FnOnce(Option<P>) -> Option<P2>,
        on_failure: impl FnOnce(Option<H>) -> Option<H2>,
    ) -> Builder<K, S2, D, P2, H2> {
        Builder {
            hook: self.hook,
            names: self.names,
            hasher: hasher(self.hasher),
            shards: self.shards,
            min_interval: self.min_interval,
            retry: retry(self.retry),
            timeout: self.timeout,
            on_failure: on_failure(self.on_failure),
            concurrency: self.concurrency,
            debounce: self.debounce,
            max_wait: self.max_wait,
            driver: self.driver,
        }
    }
}

impl<K, S: fmt::Debug, D: Driver, P: fmt::Debug, H> fmt::Debug for Builder<K, S, D, P, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("name", &self.names.name)
            .field("hasher", &self.hasher)
            .field("shards", &self.shards)
            .field("min_interval", &self.min_interval)
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .field("failure_hook", &self.on_failure.is_some())
            .field("concurrency", &self.concurrency)
            .field("debounce", &self.debounce)
            .field("max_wait", &self.max_wait)
            .field("driver", &self.driver)
            .finish_non_exhaustive()
    }
}

/// The public surface the two front ends share, written once and stamped
/// onto each front end's public types (`front_end!(Coalescer, Builder)` in
/// `asynchronous.rs` and in `blocking.rs`, naming that module's aliases):
/// rustdoc shows on a type alias's page only the impls written for the
/// alias itself, so the shared verbs are impls of each alias, not of the
/// generic type.
macro_rules! front_end {
    ($coalescer:ident, $builder:ident, $requester:ident) => {
        impl<K, S, O> $coalescer<K, S, O>
        where
            K: ::std::hash::Hash + Eq + Clone + Send + Sync + 'static,
            S: ::std::hash::BuildHasher + Send + Sync + 'static,
            O: $crate::CycleOutput,
        {
            /// Requests a cycle of `key` and returns at once: it never
            /// waits for a cycle, never awaits, and may be called from any
            /// thread (for the async coalescer, inside the runtime or not).
            ///
            /// If the key is idle this starts its runner
            /// ([`Admission::Started`](crate::Admission::Started)); if its
            /// runner is active, the request is folded into the one cycle
            /// that runner begins next
            /// ([`Admission::Coalesced`](crate::Admission::Coalesced)).
            /// Either way, everything this thread did before the call
            /// happens-before the cycle that covers the request.
            ///
            /// # Errors
            ///
            /// [`Closed`](crate::Closed) once shutdown (or drop) has begun;
            /// the request is then not recorded.
            ///
            /// # Panics
            ///
            /// The blocking coalescer, if the OS refuses to start a runner
            /// thread (as [`std::thread::spawn`] does); the request is then
            /// not recorded. A panic of `K`'s `Hash` or `Eq` reaches the
            /// caller; the coalescer stays usable.
            pub fn request(&self, key: K) -> Result<$crate::Admission, $crate::Closed> {
                self.shared.request_plain(key)
            }

            /// Requests a cycle of `key` that begins no later than `delay`
            /// from now: a deadline, not an extra run. Returns at once, as
            /// [`request`](Self::request) does.
            ///
            /// The request is covered by the first cycle of `key` that
            /// begins after this call, whatever made it begin; if none
            /// begins sooner, the request becomes an immediate one at
            /// `now + delay` (on the driver's clock: tokio's, for the async
            /// coalescer). So an immediate request's cycle covers a pending
            /// delayed one, and a delayed request never causes a second
            /// cycle. Several delayed requests for a key keep one deadline,
            /// the earliest. Falling due, it is an ordinary request: it
            /// folds into a follow-up or retry the key already owes, and
            /// `min_interval`, a retry's delay, the debounce and the
            /// concurrency limit hold it back as they would any request
            /// made then (`docs/design.md` has the table).
            ///
            /// An idle key's delayed request costs a record and an entry in
            /// the coalescer's one timer (a task, or a thread), not a
            /// runner. [`shutdown`](Self::shutdown) (and drop) turns every
            /// pending delayed request into an immediate one inside its
            /// drain: an accepted request is never dropped (INV-5, INV-13).
            ///
            /// Returns [`Admission::Coalesced`](crate::Admission::Coalesced)
            /// if the key's runner is active (its next cycle, or the one the
            /// deadline requests, covers it), and
            /// [`Admission::Scheduled`](crate::Admission::Scheduled) if the
            /// key is idle. A delay too long to add to the clock has no
            /// deadline: only a cycle, or shutdown, covers it. The async
            /// coalescer on a runtime without the time driver makes the
            /// request at once (and logs an error event, once).
            ///
            /// # Errors
            ///
            /// [`Closed`](crate::Closed) once shutdown (or drop) has begun;
            /// the request is then not recorded.
            pub fn request_after(
                &self,
                key: K,
                delay: ::std::time::Duration,
            ) -> Result<$crate::Admission, $crate::Closed> {
                self.shared.request_delayed(key, delay)
            }
        }

        impl<K, S, O> $requester<K, S, O>
        where
            K: ::std::hash::Hash + Eq + Clone + Send + Sync + 'static,
            S: ::std::hash::BuildHasher + Send + Sync + 'static,
            O: $crate::CycleOutput,
        {
            /// Requests a cycle of `key`, as
            /// [`Coalescer::request`](type.Coalescer.html#method.request)
            /// does.
            ///
            /// # Errors
            ///
            /// [`Closed`](crate::Closed) once the coalescer's shutdown (or
            /// drop) has begun, or once it is gone; the request is then not
            /// recorded.
            ///
            /// # Panics
            ///
            /// As `Coalescer::request`.
            pub fn request(&self, key: K) -> Result<$crate::Admission, $crate::Closed> {
                self.shared().ok_or($crate::Closed)?.request_plain(key)
            }

            /// Requests a cycle of `key` that begins no later than `delay`
            /// from now, as
            /// [`Coalescer::request_after`](type.Coalescer.html#method.request_after)
            /// does.
            ///
            /// # Errors
            ///
            /// As [`request`](Self::request).
            pub fn request_after(
                &self,
                key: K,
                delay: ::std::time::Duration,
            ) -> Result<$crate::Admission, $crate::Closed> {
                self.shared()
                    .ok_or($crate::Closed)?
                    .request_delayed(key, delay)
            }
        }

        impl<K, S, O: $crate::CycleOutput> $requester<K, S, O> {
            /// Whether the coalescer has begun shutting down (or was
            /// dropped): every request through this handle is then
            /// rejected.
            pub fn is_closed(&self) -> bool {
                self.shared()
                    .map_or(true, |shared| shared.registry.is_closed())
            }

            /// The coalescer's [`publish_metrics`](type.Coalescer.html#method.publish_metrics)
            /// (nothing once it is gone).
            #[cfg(feature = "metrics")]
            pub fn publish_metrics(&self) {
                if let Some(shared) = self.shared() {
                    shared.publish_metrics();
                }
            }
        }

        impl<K, S, O: $crate::CycleOutput> $coalescer<K, S, O> {
            /// A handle that requests cycles of this coalescer: cheap to
            /// clone (one reference count), `Send + Sync`, with the
            /// request verbs and no `shutdown`, for a service's state or a
            /// cycle of this coalescer (see
            /// [`Builder::build_cyclic`](type.Builder.html#method.build_cyclic)).
            /// It does not keep the coalescer alive: once the coalescer is
            /// shut down or dropped, its requests are rejected with
            /// [`Closed`](crate::Closed).
            pub fn handle(&self) -> $requester<K, S, O> {
                $crate::shell::Requester {
                    shared: ::std::sync::Arc::downgrade(&self.shared),
                }
            }

            /// The number of keys with a running or pending cycle; 0 once
            /// quiescent.
            pub fn active_keys(&self) -> usize {
                self.shared.registry.active_keys()
            }

            /// A snapshot of the counters.
            pub fn stats(&self) -> $crate::Stats {
                self.shared.stats()
            }

            /// Sets the sampled metrics — the gauges and the count of
            /// coalesced requests — to their values now
            /// (`docs/metrics.md`). The runners set them each time a cycle
            /// ends; call this before each scrape (in the handler of
            /// `/metrics`, say) so that an idle or stuck coalescer reports
            /// its state as of the scrape.
            #[cfg(feature = "metrics")]
            pub fn publish_metrics(&self) {
                self.shared.publish_metrics();
            }
        }

        impl<K: ::std::fmt::Debug> $coalescer<K> {
            /// A builder, for options; its keys print with `Debug` in spans
            /// and events (for a key type without `Debug`:
            /// `Builder::opaque_keys`).
            pub fn builder() -> $builder<K> {
                $builder::<K>::new()
            }
        }

        impl<K: ::std::fmt::Debug> $builder<K> {
            /// A builder with the defaults: panics reported as a `tracing`
            /// error event, `RandomState` hashing, four map shards per
            /// core, no pacing, no retries (and, for the async coalescer,
            /// the current tokio runtime). Spans and events show each key
            /// with `K`'s `Debug`.
            pub fn new() -> Self {
                Self::defaults(Some(<K as ::std::fmt::Debug>::fmt))
            }
        }

        impl<K> $builder<K> {
            /// A builder with the defaults, as [`new`](Self::new), for a
            /// key type without `Debug` (or one that must not be logged):
            /// spans and events show each key as `_`. The panic and failure
            /// hooks still get the key itself
            /// ([`PanicReport::key`](crate::PanicReport::key),
            /// [`FailureReport::key`](crate::FailureReport::key)).
            pub fn opaque_keys() -> Self {
                Self::defaults(None)
            }
        }

        impl<K: ::std::fmt::Debug> Default for $builder<K> {
            fn default() -> Self {
                Self::new()
            }
        }

        impl<K, S, P, H> $builder<K, S, P, H> {
            /// Replaces the panic hook. It is called exactly once for every
            /// cycle that panics — when the cycle function is called, while
            /// its future is polled, or while the finished future is
            /// dropped — on the runner (its task or thread), after the
            /// panic was caught. A panic inside the hook is caught and
            /// discarded.
            #[must_use]
            pub fn panic_hook(
                mut self,
                hook: impl Fn(&$crate::PanicReport<'_, K>) + Send + Sync + 'static,
            ) -> Self {
                self.hook = Some(Box::new(hook));
                self
            }

            /// Names the coalescer: the `coalescer` field of its `tracing`
            /// spans and events and the `name` label of its metrics
            /// (`docs/metrics.md`). The default: `"coalescer"`. Give each
            /// coalescer of a process its own name: two with one name add
            /// up in the counters, and overwrite each other's gauges.
            #[must_use]
            pub fn name(mut self, name: impl Into<::std::string::String>) -> Self {
                self.names.name = ::std::sync::Arc::from(name.into());
                self
            }

            /// Replaces the hasher that places keys in the map (the
            /// default, `RandomState`, resists hash flooding).
            #[must_use]
            pub fn hasher<S2: ::std::hash::BuildHasher>(self, hasher: S2) -> $builder<K, S2, P, H> {
                self.retyped(|_| hasher, |retry| retry, |hook| hook)
            }

            /// Retries failed cycles with `policy` — a [`Backoff`](crate::Backoff),
            /// or a closure `|key: &K, failure: &Failure<'_, E>, failures: u32| -> Option<Duration>`
            /// (a [`RetryPolicy`](crate::RetryPolicy)).
            ///
            /// A cycle that fails (returns `Err`, or panics) then does not
            /// cover its requests: they stay owed, and the key's next cycle
            /// — the retry — begins no earlier than the policy's delay after
            /// the failure (and no earlier than `min_interval` after the
            /// failed cycle began: the later bound wins). Every request that
            /// arrives during the failed cycle or the delay folds into that
            /// one retry; there is never both a follow-up and a retry. A
            /// waiter gets the value of the first cycle after its request
            /// that succeeds, or the last failure's error when the policy
            /// gives up. A success resets the key's count of consecutive
            /// failures (there is nothing to forget by hand). When the
            /// policy gives up, the waiters are told, the give-up is counted
            /// ([`Stats::give_ups`](crate::Stats::give_ups)) and reported
            /// (a `warn` event), and requests that arrived during the failed
            /// cycle get their follow-up as usual.
            ///
            /// Shutdown cuts every retry delay short: each key that owes a
            /// retry gets one immediate final attempt inside the drain, and so
            /// does a key whose cycle fails inside the drain; a retry that
            /// began after shutdown began is not retried again.
            ///
            /// Without a retry policy (the default), a failed cycle answers
            /// its waiters with its error and is not retried. The async
            /// coalescer needs a runtime with the time driver to wait; on
            /// one without it, retries follow at once (and `build` logs an
            /// error event).
            #[must_use]
            pub fn retry<P2>(self, policy: P2) -> $builder<K, S, P2, H> {
                self.retyped(|hasher| hasher, |_| Some(policy), |hook| hook)
            }

            /// Tells `hook` about every cycle that fails — returns an error
            /// or runs past its timeout — with the key, the failure and the
            /// cycle's attempt ([`FailureReport`](crate::FailureReport)),
            /// once, on the runner, before the retry policy decides. It
            /// replaces the default report, a `tracing` `warn` event (target
            /// `coalescer`). A panic inside the hook is caught and discarded.
            /// (Panics go to the panic hook.)
            #[must_use]
            pub fn failure_hook<H2>(self, hook: H2) -> $builder<K, S, P, H2> {
                self.retyped(|hasher| hasher, |retry| retry, |_| Some(hook))
            }

            /// A cycle running longer than `timeout` has failed with
            /// [`RunError::TimedOut`](crate::RunError::TimedOut): counted in
            /// [`Stats::timeouts`](crate::Stats::timeouts), reported as a
            /// `warn` event, and — like an error or a panic — retried by the
            /// retry policy ([`Failure::TimedOut`](crate::Failure::TimedOut)),
            /// or, without one, answered and settled (requests that arrived
            /// during it get their follow-up).
            ///
            /// The async coalescer cancels the cycle at its next `.await`
            /// (on tokio's clock; a runtime without the time driver cannot
            /// time it, and `build` logs an error event). The blocking
            /// coalescer cannot cancel a thread: its cycle runs on, and when
            /// it returns after the timeout, what it returned is dropped and
            /// the cycle counts as timed out all the same. The default: no
            /// timeout.
            #[must_use]
            pub fn timeout(mut self, timeout: ::std::time::Duration) -> Self {
                self.timeout = Some(timeout);
                self
            }

            /// Runs at most `n` cycles at once across all keys; 0 (the
            /// default) means no limit.
            ///
            /// A key that is due — pending, with no `min_interval` or retry
            /// delay still holding it back — waits for a permit before its
            /// cycle begins, and keeps absorbing requests meanwhile: one
            /// cycle still covers them all. Permits go to keys in the order
            /// they became due, and a key gives its permit back as soon as
            /// each cycle returns, so its follow-up (or retry) waits behind
            /// the keys already waiting: a hot key cannot starve the others.
            /// Waits for `min_interval` and retry delays hold no permit.
            /// Shutdown drains the waiting keys too, still `n` at once.
            /// [`Stats::running`](crate::Stats::running) and
            /// [`Stats::waiting`](crate::Stats::waiting) show both sides.
            ///
            /// The blocking coalescer, with a limit, runs its runners on at
            /// most `n` threads, which take turns: a key that waits (for a
            /// permit, a pace or a retry delay) holds no thread.
            ///
            /// A cycle that waits for another key's cycle
            /// (`request_and_wait`) while every permit is held by such
            /// cycles waits forever: from inside a cycle, `request` other
            /// keys instead.
            #[must_use]
            pub fn concurrency(mut self, n: usize) -> Self {
                self.concurrency = n;
                self
            }

            /// Debounces each key: a cycle begins only once no request for
            /// its key has arrived for `quiet` — but, with
            /// [`max_wait`](Self::max_wait), never later than that after the
            /// earliest request it covers, so a burst that never pauses
            /// still runs. Requests during the wait fold into the one cycle.
            /// Applies to the first cycle of an idle key and to every
            /// follow-up; not to a retry, which begins at its policy's delay.
            /// A `min_interval` pace still holds (the later bound wins), the
            /// wait holds no permit of the concurrency limit, and shutdown
            /// cuts it short (the drain runs the cycle at once). A request
            /// stays wait-free, lock-free and allocation-free; with a
            /// debounce it also reads the clock and stores the time into its
            /// key's slot (the memo path too). Zero, the default: no
            /// debounce.
            ///
            /// The async coalescer waits on tokio's clock and needs a
            /// runtime with the time driver (without one the debounce is
            /// ignored and `build` logs an error event).
            #[must_use]
            pub fn debounce(mut self, quiet: ::std::time::Duration) -> Self {
                self.debounce = quiet;
                self
            }

            /// The ceiling of the [`debounce`](Self::debounce): a cycle
            /// begins no later than `max_wait` after the earliest request
            /// it covers, however often requests keep coming (a `min_interval`
            /// pace still holds). Without a debounce it does nothing. The
            /// default: no ceiling.
            #[must_use]
            pub fn max_wait(mut self, max_wait: ::std::time::Duration) -> Self {
                self.max_wait = Some(max_wait);
                self
            }

            /// Sets the number of map shards (rounded up to a power of two,
            /// at least 1, at most 65 536). More shards mean fewer requests
            /// contending on one lock when keys become active or idle.
            #[must_use]
            pub fn shards(mut self, shards: usize) -> Self {
                self.shards = shards;
                self
            }

            /// Paces each key: a follow-up cycle of a key begins no earlier
            /// than `min_interval` after the previous cycle of that key
            /// began (for the async coalescer, on tokio's clock). Requests
            /// that arrive meanwhile are not dropped: they join that one
            /// follow-up. A request for an idle key still starts its cycle
            /// at once, and shutdown cuts every wait short (the drain runs
            /// pending follow-ups at once). The default, zero, does not
            /// pace.
            ///
            /// The async coalescer needs a runtime with the time driver
            /// (`enable_time` or `enable_all`) for this; on one without it
            /// the interval is ignored and `build` logs an error event
            /// (target `coalescer`).
            #[must_use]
            pub fn min_interval(mut self, min_interval: ::std::time::Duration) -> Self {
                self.min_interval = min_interval;
                self
            }
        }
    };
}
pub(crate) use front_end;

/// A request that does not wait: it gets nothing but its admission.
pub(crate) struct Plain;

impl<A> Join<A> for Plain {
    type Covered = ();
    const REMEMBERS: bool = true;

    fn join(slot: &Slot<A>) -> Result<Option<()>, Refused> {
        Ok(match slot.request() {
            Requested::Dead => None,
            Requested::Coalesced { .. } => Some(()),
        })
    }

    fn fresh() -> (Option<Arc<Completion<A>>>, ()) {
        (None, ())
    }
}

/// A request that waits: it gets the completion of the cycle that covers it.
struct Waiting;

impl<A> Join<A> for Waiting {
    type Covered = Arc<Completion<A>>;
    const REMEMBERS: bool = false;

    fn join(slot: &Slot<A>) -> Result<Option<Arc<Completion<A>>>, Refused> {
        if in_cycle_of(slot.id()) {
            return Err(Refused::OwnCycle);
        }
        Ok(slot.request_and_register())
    }

    fn fresh() -> (Option<Arc<Completion<A>>>, Arc<Completion<A>>) {
        let completion = Arc::new(Completion::new(1));
        (Some(Arc::clone(&completion)), completion)
    }
}

impl<K, S, D, O> Shared<K, S, D, O>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
    D: Driver,
    O: CycleOutput,
{
    /// Admits a request that does not wait (`request`, in [`front_end!`]).
    pub(crate) fn request_plain(self: &Arc<Self>, key: K) -> Result<Admission, Closed> {
        let admitted = self.registry.admit_plain::<Plain>(key);
        // Only a waiting request can be refused for any other reason.
        settle(self, admitted)
            .map(|(admission, ())| admission)
            .map_err(|_| Closed)
    }

    /// Admits a delayed request (`request_after`, in [`front_end!`]; see
    /// `delay.rs`).
    pub(crate) fn request_delayed(
        self: &Arc<Self>,
        key: K,
        delay: Duration,
    ) -> Result<Admission, Closed> {
        let shared = self;
        if !shared.driver.can_delay() {
            // Nothing can wait for the deadline: the request is made now.
            warn_no_timers(shared);
            return self.request_plain(key);
        }
        let deadline = shared.driver.now().checked_add(delay);
        let start_timer = || {
            let timer = Box::pin(delay::keep_time(Arc::clone(shared)));
            match shared.driver.spawn_timer(timer) {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(
                        target: "coalescer",
                        "could not start the timer thread of delayed requests ({e}); they \
                         fall due when the next delayed request starts it, or at shutdown"
                    );
                    false
                }
            }
        };
        match shared.registry.admit_after(key, deadline, start_timer) {
            Ok(admission) => {
                Counters::bump(&shared.counters.delayed);
                shared.meter.delayed();
                Ok(admission)
            }
            Err(_) => {
                reject(shared);
                Err(Closed)
            }
        }
    }

    /// Admits a waiting request: its admission and the completion of the
    /// cycle that covers it.
    #[allow(clippy::type_complexity, reason = "one use, named in full once")]
    pub(crate) fn request_waiting(
        self: &Arc<Self>,
        key: K,
    ) -> Result<(Admission, Arc<Completion<Answer<O>>>), RunError<O::Error>> {
        let admitted = self.registry.admit::<Waiting>(key);
        settle(self, admitted)
    }
}

/// What admission decided, with the runner of a fresh slot started (its
/// shard's write lock still held, in the `Vacant`) and the rejections
/// counted. The coalesced request returns here; the rest is out of line, so
/// that what starting a runner records (the metrics) costs the coalesced
/// path nothing, not even a larger frame.
#[inline]
fn settle<K, S, D, O, C>(
    shared: &Arc<Shared<K, S, D, O>>,
    admitted: Result<Admitted<'_, K, C, Answer<O>>, Refused>,
) -> Result<(Admission, C), RunError<O::Error>>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
    D: Driver,
    O: CycleOutput,
{
    match admitted {
        Ok(Admitted::Joined(covered)) => Ok((Admission::Coalesced, covered)),
        admitted => settle_otherwise(shared, admitted),
    }
}

/// [`settle`], for everything but a coalesced request.
#[inline(never)]
fn settle_otherwise<K, S, D, O, C>(
    shared: &Arc<Shared<K, S, D, O>>,
    admitted: Result<Admitted<'_, K, C, Answer<O>>, Refused>,
) -> Result<(Admission, C), RunError<O::Error>>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
    D: Driver,
    O: CycleOutput,
{
    let vacant = match admitted {
        Ok(Admitted::Joined(covered)) => return Ok((Admission::Coalesced, covered)),
        Ok(Admitted::Vacant(vacant)) => vacant,
        Err(Refused::OwnCycle) => return Err(RunError::OwnCycle),
        Err(Refused::Closed) => {
            reject(shared);
            return Err(RunError::Closed);
        }
    };
    match start_fresh(shared, vacant) {
        Ok(covered) => {
            Counters::bump(&shared.counters.started);
            shared.meter.started();
            Ok((Admission::Started, covered))
        }
        Err(StartError::Gone) => {
            reject(shared);
            Err(RunError::Closed)
        }
        Err(StartError::Os(e)) => panic!("coalescer: failed to start a runner thread: {e}"),
    }
}

/// Counts a rejected request.
fn reject<K, S, D: Driver, O: CycleOutput>(shared: &Shared<K, S, D, O>) {
    Counters::bump(&shared.counters.rejected);
    shared.meter.rejected();
}

/// Starts the runner of a fresh slot and puts the slot in the map (the
/// request is accepted). If the runtime has shut down (`Gone`), nobody has
/// seen the slot — it was never in the map — and nothing can run any more,
/// so the coalescer closes itself: every later request is rejected.
fn start_fresh<K, S, D, O, C>(
    shared: &Arc<Shared<K, S, D, O>>,
    vacant: Vacant<'_, K, C, Answer<O>>,
) -> Result<C, StartError>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
    D: Driver,
    O: CycleOutput,
{
    let key = vacant.key().clone();
    match runner::start(shared, key, Arc::clone(vacant.slot()), vacant.hash()) {
        Ok(()) => {
            shared.registry.key_event(vacant.key(), "started");
            Ok(vacant.insert())
        }
        Err(error) => {
            drop(vacant);
            if matches!(error, StartError::Gone) {
                shared.registry.close_without_barrier();
            }
            Err(error)
        }
    }
}

/// The timer's step for a delayed request that fell due (`delay.rs`):
/// an immediate request now, unless a cycle covered it meanwhile.
pub(crate) fn fire<K, S, D, O>(shared: &Arc<Shared<K, S, D, O>>, hash: u64, number: u64)
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
    D: Driver,
    O: CycleOutput,
{
    if let Some(vacant) = shared.registry.fire(hash, number) {
        start_delayed(shared, vacant);
    }
}

/// Starts the runner of a fresh slot for a delayed request that fell due
/// (or that `close` turned into a request). It was accepted already, so a
/// runner thread the OS refuses loses it, and says so.
fn start_delayed<K, S, D, O>(shared: &Arc<Shared<K, S, D, O>>, vacant: Vacant<'_, K, (), Answer<O>>)
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
    D: Driver,
    O: CycleOutput,
{
    match start_fresh(shared, vacant) {
        Ok(()) => {}
        // The runtime has shut down: nothing runs any more, for any request.
        Err(StartError::Gone) => {}
        Err(StartError::Os(e)) => tracing::error!(
            target: "coalescer",
            "a delayed request fell due, but its runner thread could not start ({e}): it is lost"
        ),
    }
}

/// `Shared::closer`: closes admission and turns every delayed request not
/// yet covered into an immediate one, inside the barrier (INV-5).
fn close_and_cover<K, S, D, O>(shared: &Arc<Shared<K, S, D, O>>)
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
    D: Driver,
    O: CycleOutput,
{
    shared
        .registry
        .close(|vacant| start_delayed(shared, vacant));
}

/// Says once per coalescer that delayed requests are made at once: the
/// runtime has no time driver.
fn warn_no_timers<K, S, D: Driver, O: CycleOutput>(shared: &Shared<K, S, D, O>) {
    use std::sync::atomic::Ordering::Relaxed;
    // ORDERING: Relaxed: only decides whether to log; pairs with nothing.
    if !shared.warned_no_timers.swap(true, Relaxed) {
        tracing::error!(
            target: "coalescer",
            "request_after makes its requests at once: the tokio runtime has no time driver \
             (build it with enable_time or enable_all)"
        );
    }
}

impl<K, S, D: Driver, O: CycleOutput> Drop for Coalescer<K, S, D, O> {
    /// Closes the coalescer, then aborts its runner tasks (async) or joins
    /// its runner threads (blocking); see the type docs.
    fn drop(&mut self) {
        let shared = &self.shared;
        if D::DROP_ABORTS {
            shared.stop.set();
        }
        shared.driver.on_drop(|| shared.close());
    }
}

impl<K, S, D: Driver, O: CycleOutput> fmt::Debug for Coalescer<K, S, D, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coalescer")
            .field("stats", &self.shared.stats())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    /// The documented default: four shards per available core.
    #[test]
    fn four_shards_per_core_by_default() {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        assert_eq!(super::default_shards(), 4 * cores);
    }
}
