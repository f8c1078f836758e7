//! Counters a coalescer keeps about itself.

use crate::sync::StatCounter;
use std::sync::atomic::Ordering::Relaxed;

/// A snapshot of a coalescer's counters.
///
/// Each counter is read separately with no lock, so a snapshot taken while
/// requests or cycles are in flight may be momentarily inconsistent (for
/// example `cycles` may lag a request already counted). Once the coalescer
/// is quiescent — say after `shutdown` — the snapshot is exact. `requests` is
/// always `started + coalesced`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Accepted requests (every call of `request` or `request_and_wait`
    /// that was not rejected).
    pub requests: u64,
    /// Accepted requests that started a runner for an idle key.
    pub started: u64,
    /// Accepted requests folded into the next cycle of an active runner.
    pub coalesced: u64,
    /// Requests rejected because the coalescer was shut down.
    pub rejected: u64,
    /// Cycles that ended, whether they succeeded, failed or panicked.
    pub cycles: u64,
    /// Cycles that returned an error (each also counted in `cycles`).
    pub failures: u64,
    /// Failed cycles (errors, panics and timeouts) that the retry policy
    /// retried.
    pub retries: u64,
    /// Failed cycles after which the retry policy gave up, or that were
    /// the last chance inside a drain (never counted without a policy).
    pub give_ups: u64,
    /// Cycles that panicked (each also counted in `cycles`).
    pub panics: u64,
    /// Cycles that ran longer than the builder's `timeout` (each also
    /// counted in `cycles`; not in `failures`).
    pub timeouts: u64,
    /// Cycles cancelled mid-flight: the async coalescer was dropped while
    /// they ran (not in `cycles`).
    pub aborted: u64,
    /// Cycles running now (a gauge). With a concurrency limit of `n`, at
    /// most `n`.
    pub running: u64,
    /// Keys that are due and waiting for a permit of the concurrency limit
    /// now (a gauge; always 0 without a limit).
    pub waiting: u64,
    /// Accepted delayed requests (`request_after`; not in `requests`).
    pub delayed: u64,
    /// Delayed requests recorded and waiting for their deadline now (a
    /// gauge): one per key at most. A record that a cycle covered before
    /// its deadline is dropped at that deadline, and counted until then;
    /// 0 after shutdown.
    pub scheduled: u64,
}

/// The live counters behind [`Stats`].
///
/// ORDERING: every operation here is `Relaxed` and pairs with nothing — the
/// counters are observation-only and order no other memory. They are plain
/// `std` atomics even under loom (see `sync`).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) started: StatCounter,
    // `coalesced` is counted per map shard, on the line each request writes
    // anyway (`Registry::coalesced`).
    pub(crate) rejected: StatCounter,
    pub(crate) cycles: StatCounter,
    pub(crate) failures: StatCounter,
    pub(crate) retries: StatCounter,
    pub(crate) give_ups: StatCounter,
    pub(crate) panics: StatCounter,
    pub(crate) timeouts: StatCounter,
    pub(crate) delayed: StatCounter,
    pub(crate) aborted: StatCounter,
    /// Cycles begun: numbers each cycle (its span's `cycle` field).
    pub(crate) begun: StatCounter,
    /// A gauge: up when a cycle starts, down when it ends.
    pub(crate) running: StatCounter,
}

impl Counters {
    /// Adds one to `c`.
    pub(crate) fn bump(c: &StatCounter) {
        // ORDERING: Relaxed, statistics only; pairs with nothing (see the type doc).
        c.fetch_add(1, Relaxed);
    }

    /// Adds one to `c` and returns the new value: a number, unique within
    /// the coalescer (not an order any other memory follows).
    pub(crate) fn next(c: &StatCounter) -> u64 {
        // ORDERING: Relaxed, a numbering only; pairs with nothing (see the type doc).
        c.fetch_add(1, Relaxed) + 1
    }

    /// Takes one from the gauge `c`.
    pub(crate) fn drop_one(c: &StatCounter) {
        // ORDERING: Relaxed, statistics only; pairs with nothing (see the type doc).
        c.fetch_sub(1, Relaxed);
    }

    /// Reads every counter; `coalesced` is the registry's sum over shards,
    /// `waiting` the length of the limit's line.
    pub(crate) fn snapshot(&self, coalesced: u64, waiting: u64) -> Stats {
        // ORDERING: Relaxed loads, statistics only; pair with nothing.
        let started = self.started.load(Relaxed);
        // Derived rather than counted: one shared RMW less per request.
        Stats {
            requests: started + coalesced,
            started,
            coalesced,
            rejected: self.rejected.load(Relaxed),
            cycles: self.cycles.load(Relaxed),
            failures: self.failures.load(Relaxed),
            retries: self.retries.load(Relaxed),
            give_ups: self.give_ups.load(Relaxed),
            panics: self.panics.load(Relaxed),
            timeouts: self.timeouts.load(Relaxed),
            aborted: self.aborted.load(Relaxed),
            running: self.running.load(Relaxed),
            waiting,
            delayed: self.delayed.load(Relaxed),
            scheduled: 0,
        }
    }
}
