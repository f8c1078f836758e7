//! What a cycle returns, and what its waiters get from it.

use std::convert::Infallible;

use crate::error::RunError;

/// What a cycle may return: `()`, or `Result<T, E>` for a cycle that can
/// fail.
///
/// A cycle that returns `Err(e)` has *failed*: every `request_and_wait`
/// it covers gets [`RunError::Failed`] with `e` (shared, as an `Arc<E>`),
/// it is counted in [`Stats::failures`](crate::Stats::failures) and
/// reported as a `tracing` event. A failed cycle settles like any other: a
/// request that arrived while it ran still gets its follow-up.
///
/// Implemented for `()` and `Result<T, E>` only (the trait is sealed). `T`
/// and `E` must be `Send + 'static` — the value crosses from the runner to
/// its waiters — and `E` also `Sync`, since its waiters share it.
/// `request_and_wait` needs `T: Clone`: each waiter of a cycle gets its own
/// copy of the value (return an `Arc` for a value that is costly to clone).
///
/// ```
/// # if coalescer::__LOOM_BUILD { return; }
/// use coalescer::{blocking::Coalescer, RunError};
///
/// let parse = Coalescer::new(|text: &String| text.parse::<u32>());
/// assert_eq!(parse.request_and_wait("42".to_owned()), Ok(42));
/// match parse.request_and_wait("forty-two".to_owned()) {
///     Err(RunError::Failed(error)) => assert_eq!(error.to_string(), "invalid digit found in string"),
///     other => panic!("{other:?}"),
/// }
/// assert_eq!(parse.stats().failures, 1);
/// ```
pub trait CycleOutput: Send + 'static + sealed::Sealed {
    /// What `request_and_wait` yields when the covering cycle succeeded.
    type Value: Send + 'static;
    /// The cycle's error ([`Infallible`] for `()`).
    type Error: Send + Sync + 'static;

    /// The output as a `Result`.
    #[doc(hidden)]
    fn into_result(self) -> Result<Self::Value, Self::Error>;
}

impl CycleOutput for () {
    type Value = ();
    type Error = Infallible;

    fn into_result(self) -> Result<(), Infallible> {
        Ok(())
    }
}

impl<T: Send + 'static, E: Send + Sync + 'static> CycleOutput for Result<T, E> {
    type Value = T;
    type Error = E;

    fn into_result(self) -> Result<T, E> {
        self
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for () {}
    impl<T, E> Sealed for Result<T, E> {}
}

/// What a waiter of a cycle with output `O` is told: the cycle's value, or
/// why there is none.
pub(crate) type Answer<O> = Result<<O as CycleOutput>::Value, RunError<<O as CycleOutput>::Error>>;
