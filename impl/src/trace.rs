//! What a coalescer's `tracing` spans and events (and its metrics' labels)
//! call the coalescer and its keys.
//!
//! A key prints with the function the builder chose: `K`'s `Debug` for a
//! builder made with `Builder::new` (which needs `K: Debug`), nothing for one
//! made with `Builder::opaque_keys` — its events then show the key as `_`,
//! and the panic and failure hooks, which get `&K`, are where such a key can
//! be told.

use std::fmt;
use std::sync::Arc;

/// Prints a key (`<K as Debug>::fmt`, as a plain function pointer so the
/// coalescer needs no `Debug` bound to hold it).
pub(crate) type ShowKey<K> = fn(&K, &mut fmt::Formatter<'_>) -> fmt::Result;

/// The name every span, event and metric of a coalescer carries when the
/// builder gave it none.
pub(crate) const DEFAULT_NAME: &str = "coalescer";

/// A coalescer's name and how it prints its keys.
pub(crate) struct Names<K> {
    /// `Builder::name`: the `coalescer` field of spans and events, the
    /// `name` label of metrics.
    pub(crate) name: Arc<str>,
    /// `None`: the keys cannot print (`Builder::opaque_keys`).
    pub(crate) show: Option<ShowKey<K>>,
}

impl<K> Names<K> {
    /// `key`, printable as the builder chose (a `Debug` value for a
    /// `tracing` field: formatted only if a subscriber records it).
    pub(crate) fn key<'a>(&self, key: &'a K) -> Shown<'a, K> {
        Shown(key, self.show)
    }

    /// The name, as a `tracing` field value.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

impl<K> Clone for Names<K> {
    fn clone(&self) -> Self {
        Names {
            name: Arc::clone(&self.name),
            show: self.show,
        }
    }
}

impl<K> Default for Names<K> {
    fn default() -> Self {
        Names {
            name: Arc::from(DEFAULT_NAME),
            show: None,
        }
    }
}

/// A key as its coalescer prints it.
pub(crate) struct Shown<'a, K>(&'a K, Option<ShowKey<K>>);

impl<K> fmt::Debug for Shown<'_, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Some(show) => show(self.0, f),
            None => f.write_str("_"),
        }
    }
}

/// How a cycle ended: the `outcome` of its span, and of the
/// `coalescer_cycles_total` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It returned `()` or `Ok`.
    Ok,
    /// It returned `Err`.
    Failed,
    /// It panicked (when called, polled, or dropped).
    Panicked,
    /// It ran past the builder's timeout.
    TimedOut,
    /// It was cancelled mid-flight: the async coalescer was dropped.
    Aborted,
}

impl Outcome {
    /// The outcome as spans and metrics spell it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Panicked => "panicked",
            Outcome::TimedOut => "timed_out",
            Outcome::Aborted => "aborted",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Names, ShowKey};

    #[test]
    fn keys_print_with_the_chosen_function_or_as_an_underscore() {
        let show: ShowKey<u32> = <u32 as std::fmt::Debug>::fmt;
        let shown = Names {
            show: Some(show),
            ..Names::default()
        };
        assert_eq!(format!("{:?}", shown.key(&42)), "42");
        let opaque = Names::<u32>::default();
        assert_eq!(format!("{:?}", opaque.key(&42)), "_");
        assert_eq!(opaque.name(), "coalescer");
    }
}
