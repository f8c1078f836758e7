//! The coalescer's metrics, through the `metrics` facade (feature
//! `metrics`, on by default): a family in the shape of client-go's
//! workqueue metrics, adapted to coalescing. `docs/metrics.md` lists each
//! metric and what it means.
//!
//! Nothing here is on the coalesced request path: a coalesced request is
//! counted, as before, on its map shard (or its thread's memo), and that
//! count reaches `coalescer_requests_total{admission="coalesced"}` as an
//! absolute value each time a cycle ends and each time the user samples
//! (`publish_metrics`). Everything else is recorded by the runners, once
//! per cycle, or on the path that starts a runner (which spawns a task or a
//! thread anyway).
//!
//! The macros are called each time (no handles kept): a recorder installed
//! after the coalescer was built is used all the same. Durations are on the
//! driver's clock (tokio's, for the async coalescer), like every wait.
//!
//! Without the feature, and in the loom build (observation only, nothing
//! to model), [`Meter`] is a unit struct whose methods do nothing.

/// The sampled side of the metrics: the gauges, and the count kept
/// elsewhere (`coalesced`).
#[derive(Debug, Clone, Copy, Default)]
#[cfg_attr(
    not(all(feature = "metrics", not(loom))),
    allow(dead_code, reason = "read only by the live meter")
)]
pub(crate) struct Sample {
    /// Accepted requests folded into an active runner's next cycle.
    pub(crate) coalesced: u64,
    /// Keys with a running or pending cycle.
    pub(crate) active: u64,
    /// Cycles running now.
    pub(crate) running: u64,
    /// Keys due and waiting for a permit of the concurrency limit.
    pub(crate) waiting: u64,
    /// Delayed requests waiting for their deadline (`None`: not sampled —
    /// counting them reads every shard, so only `publish_metrics` does).
    pub(crate) scheduled: Option<u64>,
}

#[cfg(all(feature = "metrics", not(loom)))]
pub(crate) use self::live::Meter;

#[cfg(not(all(feature = "metrics", not(loom))))]
pub(crate) use self::off::Meter;

#[cfg(all(feature = "metrics", not(loom)))]
mod live {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex, PoisonError};
    use std::time::{Duration, Instant};

    use metrics::{counter, gauge, histogram, SharedString};

    use super::Sample;
    use crate::trace::Outcome;

    /// Records a coalescer's metrics, labelled `name`.
    #[derive(Debug)]
    pub(crate) struct Meter {
        name: SharedString,
        /// The cycles running now, by cycle number, with the instant each
        /// began: for the unfinished-work and longest-running gauges.
        running: Mutex<BTreeMap<u64, Instant>>,
    }

    impl Meter {
        pub(crate) fn new(name: &Arc<str>) -> Self {
            Meter {
                name: SharedString::from(Arc::clone(name)),
                running: Mutex::default(),
            }
        }

        fn label(&self) -> SharedString {
            self.name.clone()
        }

        /// A request started a runner for an idle key.
        pub(crate) fn started(&self) {
            counter!("coalescer_requests_total", "name" => self.label(), "admission" => "started")
                .increment(1);
        }

        /// A request was rejected: the coalescer is closed.
        pub(crate) fn rejected(&self) {
            counter!("coalescer_requests_total", "name" => self.label(), "admission" => "rejected")
                .increment(1);
        }

        /// A delayed request was accepted.
        pub(crate) fn delayed(&self) {
            counter!("coalescer_requests_total", "name" => self.label(), "admission" => "delayed")
                .increment(1);
        }

        /// Cycle `number` began at `began`, `queued` after its key was due.
        pub(crate) fn began(&self, number: u64, began: Instant, queued: Duration) {
            self.running
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(number, began);
            histogram!("coalescer_queue_duration_seconds", "name" => self.label())
                .record(queued.as_secs_f64());
        }

        /// Cycle `number` ended after `took`, with `outcome`.
        pub(crate) fn ended(&self, number: u64, took: Duration, outcome: Outcome) {
            self.running
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&number);
            counter!("coalescer_cycles_total", "name" => self.label(), "outcome" => outcome.as_str())
                .increment(1);
            histogram!("coalescer_cycle_duration_seconds", "name" => self.label())
                .record(took.as_secs_f64());
        }

        /// A failed cycle is retried.
        pub(crate) fn retried(&self) {
            counter!("coalescer_retries_total", "name" => self.label()).increment(1);
        }

        /// The retry policy gave up on a key.
        pub(crate) fn gave_up(&self) {
            counter!("coalescer_give_ups_total", "name" => self.label()).increment(1);
        }

        /// Sets the sampled metrics from `sample()`, at `now()` (closures,
        /// so that the meter that records nothing reads nothing).
        pub(crate) fn sample(
            &self,
            sample: impl FnOnce() -> Sample,
            now: impl FnOnce() -> Instant,
        ) {
            let (sample, now) = (sample(), now());
            let name = || self.label();
            counter!("coalescer_requests_total", "name" => name(), "admission" => "coalesced")
                .absolute(sample.coalesced);
            gauge!("coalescer_active_keys", "name" => name()).set(sample.active as f64);
            gauge!("coalescer_running_cycles", "name" => name()).set(sample.running as f64);
            gauge!("coalescer_pending_keys", "name" => name())
                .set(sample.active.saturating_sub(sample.running) as f64);
            gauge!("coalescer_waiting_keys", "name" => name()).set(sample.waiting as f64);
            if let Some(scheduled) = sample.scheduled {
                gauge!("coalescer_scheduled_keys", "name" => name()).set(scheduled as f64);
            }
            let (unfinished, longest) = {
                let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
                let ages = running
                    .values()
                    .map(|began| now.saturating_duration_since(*began).as_secs_f64());
                ages.fold((0.0, 0.0_f64), |(sum, max), age| (sum + age, max.max(age)))
            };
            gauge!("coalescer_unfinished_work_seconds", "name" => name()).set(unfinished);
            gauge!("coalescer_longest_running_cycle_seconds", "name" => name()).set(longest);
        }
    }
}

#[cfg(not(all(feature = "metrics", not(loom))))]
mod off {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::Sample;
    use crate::trace::Outcome;

    /// Records nothing: the `metrics` feature is off (or this is the loom
    /// build).
    #[derive(Debug)]
    pub(crate) struct Meter;

    #[allow(clippy::unused_self, reason = "the same calls as the live meter")]
    impl Meter {
        pub(crate) fn new(_: &Arc<str>) -> Self {
            Meter
        }
        pub(crate) fn started(&self) {}
        pub(crate) fn rejected(&self) {}
        pub(crate) fn delayed(&self) {}
        pub(crate) fn began(&self, _: u64, _: Instant, _: Duration) {}
        pub(crate) fn ended(&self, _: u64, _: Duration, _: Outcome) {}
        pub(crate) fn retried(&self) {}
        pub(crate) fn gave_up(&self) {}
        pub(crate) fn sample(&self, _: impl FnOnce() -> Sample, _: impl FnOnce() -> Instant) {}
    }
}
