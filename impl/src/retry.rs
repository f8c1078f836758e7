//! Retry policies: whether, and after how long, a key whose cycle failed
//! runs again ([`Backoff`], or a closure), as `Builder::retry` takes them.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::time::Duration;

/// How a cycle failed, as a retry policy sees it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Failure<'a, E> {
    /// The cycle returned this error.
    Error(&'a E),
    /// The cycle panicked (the panic hook has been told).
    Panicked,
    /// The cycle ran longer than the builder's `timeout`.
    TimedOut,
}

/// Decides, after a failed cycle of `key`, whether the key runs again and
/// after how long: `Some(delay)` retries (the next cycle of the key begins no
/// earlier than `delay` after the failure), `None` gives up.
///
/// `failures` counts the key's consecutive failed cycles, this one included
/// (1 after the first failure); a cycle that succeeds, or a give-up, resets
/// it. Implemented by [`Backoff`] and by every
/// `Fn(&K, &Failure<'_, E>, u32) -> Option<Duration>` closure (annotate its
/// argument types: `|key: &u64, failure: &Failure<'_, MyError>, failures: u32|`).
///
/// Called on the key's runner after the failure, before any waiter is
/// told; it should return quickly. A panic in it is contained and counts as
/// giving up.
pub trait RetryPolicy<K, E>: Send + Sync + 'static {
    /// The delay before the retry, or `None` to give up.
    fn retry_after(&self, key: &K, failure: &Failure<'_, E>, failures: u32) -> Option<Duration>;
}

impl<K, E, F> RetryPolicy<K, E> for F
where
    F: Fn(&K, &Failure<'_, E>, u32) -> Option<Duration> + Send + Sync + 'static,
{
    fn retry_after(&self, key: &K, failure: &Failure<'_, E>, failures: u32) -> Option<Duration> {
        self(key, failure, failures)
    }
}

/// What a failure hook is told about a cycle that failed (returned an
/// error, or ran past its timeout; a panic goes to the panic hook).
///
/// The hook runs on the runner, after the failure and before the retry
/// policy decides.
#[derive(Debug)]
pub struct FailureReport<'a, K, E> {
    pub(crate) key: &'a K,
    pub(crate) failure: Failure<'a, E>,
    pub(crate) attempt: u32,
}

impl<'a, K, E> FailureReport<'a, K, E> {
    /// The key whose cycle failed.
    pub fn key(&self) -> &'a K {
        self.key
    }

    /// How it failed: `Failure::Error` or `Failure::TimedOut`.
    pub fn failure(&self) -> &Failure<'a, E> {
        &self.failure
    }

    /// The failed cycle's attempt: the key's consecutive failures before
    /// it (0 for a first attempt; always 0 without a retry policy).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

/// Told about every failed cycle (`Builder::failure_hook`): implemented by
/// every `Fn(&FailureReport<'_, K, E>)` closure (annotate its argument:
/// `|report: &FailureReport<'_, u64, MyError>|`). A panic in it is
/// contained.
pub trait FailureHook<K, E>: Send + Sync + 'static {
    /// Called once per failed cycle.
    fn report(&self, report: &FailureReport<'_, K, E>);
}

impl<K, E, F> FailureHook<K, E> for F
where
    F: Fn(&FailureReport<'_, K, E>) + Send + Sync + 'static,
{
    fn report(&self, report: &FailureReport<'_, K, E>) {
        self(report);
    }
}

/// The failure hook of a builder that was given none: failures are
/// reported as a `tracing` `warn` event instead.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct NoHook;

impl<K, E> FailureHook<K, E> for NoHook {
    fn report(&self, _: &FailureReport<'_, K, E>) {}
}

/// The policy of a builder that was given none: never retry.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct NoRetry;

impl<K, E> RetryPolicy<K, E> for NoRetry {
    fn retry_after(&self, _: &K, _: &Failure<'_, E>, _: u32) -> Option<Duration> {
        None
    }
}

/// Exponential backoff: after the `n`th consecutive failure of a key, its
/// retry waits `first × 2ⁿ⁻¹`, never more than `max`; optionally at most
/// `max_retries` retries in a row, and optionally with jitter.
///
/// ```
/// use std::time::Duration;
/// use coalescer::Backoff;
///
/// let backoff = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1))
///     .max_retries(5);
/// assert_eq!(backoff.delay(1), Some(Duration::from_millis(100)));
/// assert_eq!(backoff.delay(3), Some(Duration::from_millis(400)));
/// assert_eq!(backoff.delay(5), Some(Duration::from_secs(1))); // 1.6 s, capped
/// assert_eq!(backoff.delay(6), None); // the sixth failure in a row: give up
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    max_retries: Option<u32>,
    jitter: bool,
}

impl Backoff {
    /// Delays of `first`, `2 × first`, `4 × first`, …, capped at `max` (a
    /// `first` above `max` is taken as `max`); no limit on retries, no
    /// jitter.
    pub fn exponential(first: Duration, max: Duration) -> Self {
        Backoff {
            first: first.min(max),
            max,
            max_retries: None,
            jitter: false,
        }
    }

    /// Gives up after `retries` retries in a row: the key's
    /// `retries + 1`th consecutive failure is not retried. Zero never
    /// retries.
    #[must_use]
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = Some(retries);
        self
    }

    /// Draws each delay at random from its upper half (`[d / 2, d]` for the
    /// delay `d` it would have been), so keys that failed together do not
    /// retry together.
    #[must_use]
    pub fn jitter(mut self) -> Self {
        self.jitter = true;
        self
    }

    /// The delay after the `failures`th consecutive failure (1-based), or
    /// `None` once the retries are used up. Zero failures is taken as one.
    pub fn delay(&self, failures: u32) -> Option<Duration> {
        let failures = failures.max(1);
        if self.max_retries.is_some_and(|retries| failures > retries) {
            return None;
        }
        // 2^31 × any non-zero duration already exceeds every cap that fits
        // a `Duration` in practice; saturating keeps the rest exact.
        let doubled = self.first.saturating_mul(1 << (failures - 1).min(31));
        let delay = doubled.min(self.max);
        Some(if self.jitter {
            upper_half_at_random(delay)
        } else {
            delay
        })
    }
}

/// A duration drawn from `[d / 2, d]` with the process's random hash keys
/// (fresh for each call): enough to spread retries, not a source of secrets.
fn upper_half_at_random(d: Duration) -> Duration {
    let half = d / 2;
    let span = u64::try_from((d - half).as_nanos()).unwrap_or(u64::MAX);
    let draw = RandomState::new().hash_one(span);
    half + Duration::from_nanos(draw % span.saturating_add(1))
}

impl<K, E> RetryPolicy<K, E> for Backoff {
    fn retry_after(&self, _: &K, _: &Failure<'_, E>, failures: u32) -> Option<Duration> {
        self.delay(failures)
    }
}

impl fmt::Debug for Backoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backoff")
            .field("first", &self.first)
            .field("max", &self.max)
            .field("max_retries", &self.max_retries)
            .field("jitter", &self.jitter)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::Backoff;
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);

    /// Doubling from `first`, capped at `max`; `max_retries` retries, then
    /// none.
    #[test]
    fn delays_double_up_to_the_cap_and_stop_after_max_retries() {
        let b = Backoff::exponential(10 * MS, 75 * MS).max_retries(4);
        let delays: Vec<_> = (1..=5).map(|n| b.delay(n)).collect();
        assert_eq!(
            delays,
            [
                Some(10 * MS),
                Some(20 * MS),
                Some(40 * MS),
                Some(75 * MS),
                None
            ]
        );
        assert_eq!(b.delay(0), Some(10 * MS), "zero failures is taken as one");
        assert_eq!(Backoff::exponential(MS, MS).max_retries(0).delay(1), None);
    }

    /// Extreme inputs neither panic nor overflow: a huge failure count stays
    /// at the cap, a `first` above `max` is `max`.
    #[test]
    fn extreme_inputs_saturate_at_the_cap() {
        let b = Backoff::exponential(Duration::MAX, Duration::MAX);
        assert_eq!(b.delay(u32::MAX), Some(Duration::MAX));
        let b = Backoff::exponential(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(b.delay(1), Some(Duration::from_secs(1)));
        let b = Backoff::exponential(MS, Duration::from_secs(3600));
        assert_eq!(b.delay(u32::MAX), Some(Duration::from_secs(3600)));
    }

    /// Jitter draws from the upper half of each delay, and does spread.
    #[test]
    fn jitter_stays_in_the_upper_half_and_varies() {
        let b = Backoff::exponential(100 * MS, Duration::from_secs(10)).jitter();
        let draws: Vec<_> = (0..200).map(|_| b.delay(3).unwrap()).collect();
        assert!(
            draws.iter().all(|d| (200 * MS..=400 * MS).contains(d)),
            "{draws:?}"
        );
        let distinct: std::collections::HashSet<_> = draws.iter().collect();
        assert!(
            distinct.len() > 100,
            "jitter barely varies: {}",
            distinct.len()
        );
        let zero = Backoff::exponential(Duration::ZERO, Duration::ZERO).jitter();
        assert_eq!(zero.delay(1), Some(Duration::ZERO));
    }
}
