//! Containing and reporting a cycle's panic.

use std::any::Any;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::trace::Names;

/// What a panic hook is told about a cycle that panicked.
///
/// The hook runs on the runner, after the panic was caught and before the
/// runner decides whether the key goes idle or runs its follow-up cycle.
pub struct PanicReport<'a, K> {
    pub(crate) key: &'a K,
    pub(crate) payload: &'a (dyn Any + Send),
}

impl<'a, K> PanicReport<'a, K> {
    /// The key whose cycle panicked.
    pub fn key(&self) -> &'a K {
        self.key
    }

    /// The panic payload, as `catch_unwind` returned it.
    pub fn payload(&self) -> &'a (dyn Any + Send) {
        self.payload
    }

    /// The panic message, if the payload is a `&str` or a `String` (what
    /// `panic!` with a message produces); `None` for any other payload.
    pub fn message(&self) -> Option<&'a str> {
        payload_message(self.payload)
    }
}

impl<K> fmt::Debug for PanicReport<'_, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PanicReport")
            .field("message", &self.message())
            .finish_non_exhaustive()
    }
}

pub(crate) fn payload_message(payload: &(dyn Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<&'static str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
}

/// A panic hook: called exactly once per panicking cycle.
pub(crate) type PanicHook<K> = Box<dyn Fn(&PanicReport<'_, K>) + Send + Sync>;

/// Reports `payload` once — to `hook`, or without one as a `tracing` error
/// event (target `coalescer`, with the coalescer's name, the key as
/// `names` prints it, and `panic_message`: the message, or
/// `"<non-string panic payload>"`) — then disposes of it, containing any
/// panic from the hook itself or from the payload's `Drop`: a runner must
/// survive whatever a user's code throws at it.
pub(crate) fn report<K>(
    hook: Option<&PanicHook<K>>,
    names: &Names<K>,
    key: &K,
    payload: Box<dyn Any + Send>,
) {
    let report = PanicReport {
        key,
        payload: &*payload,
    };
    match hook {
        None => tracing::error!(
            target: "coalescer",
            coalescer = names.name(),
            key = ?names.key(key),
            panic_message = report.message().unwrap_or("<non-string panic payload>"),
            "cycle panicked; the key stays usable and requests that arrived during it get their \
             follow-up cycle"
        ),
        Some(hook) => {
            if let Err(hook_panic) = catch_unwind(AssertUnwindSafe(|| hook(&report))) {
                dispose(hook_panic);
            }
        }
    }
    dispose(payload);
}

/// Drops a panic payload whose `Drop` may itself panic. A payload that
/// panics while dropping is leaked rather than allowed to unwind further.
pub(crate) fn dispose(payload: Box<dyn Any + Send>) {
    if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        std::mem::forget(again);
    }
}

/// Drops `value` — a key, a memo entry holding one, or a cycle's value or
/// error (`what`, for the event) — containing a panic of its `Drop`: it is
/// reported as an `error` event, and the caller (a runner, or a request
/// already accepted) goes on.
pub(crate) fn drop_contained<T>(value: Option<T>, what: &'static str) {
    if value.is_none() {
        return;
    }
    if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(value))) {
        dispose(payload);
        tracing::error!(
            target: "coalescer",
            "the Drop of {what} panicked when the coalescer let it go"
        );
    }
}
