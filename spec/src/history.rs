//! The history oracle: the invariants of `docs/invariants.md`, stated once,
//! over what a test can observe from outside the coalescer.
//!
//! A test records [`Event`]s into a [`Recorder`] as they happen — a request
//! is *invoked*, then *returns*; a cycle *begins*, then *ends*, *fails* or
//! *panics*; `shutdown` *begins* and *ends* — and hands the finished
//! [`History`] to [`check`] (or [`check_with`], for a coalescer that
//! retries), which returns the first [`Violation`] it finds.
//!
//! # What the order of a history means
//!
//! The recorder appends under one lock, so a history is a total order that
//! agrees with real time: if event `a` was recorded before event `b` started
//! to be recorded, `a` comes first. But an event is recorded a little before
//! or after the step it reports: a cycle records its beginning at the top of
//! the cycle function, after the runner's `begin` transition; a request
//! records its invocation before calling `request` and its result after the
//! call returned. The oracle therefore treats a request as an *interval*
//! (invocation to return) whose atomic step lies somewhere inside, and it
//! only reports a violation that no placement of those steps could explain.
//! It is sound (a correct coalescer never fails it) and, for that reason,
//! not complete: a request whose covering cycle began inside its interval is
//! given the benefit of the doubt.
//!
//! # The history must be complete
//!
//! `check` reads a history as a whole execution: it must end when the
//! coalescer is quiescent — after `shutdown` returned, or after every
//! request's covering cycle is known to have ended. A history cut short in
//! the middle of a burst can report a request as lost that was about to be
//! covered.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};

use coalescer::{Admission, RunError};

/// A test's name for one request, unique within a history.
pub type RequestId = u64;

/// What a `request_and_wait` was told, whatever its cycle returns
/// ([`Answer::from`] a `request_and_wait` result).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Answer {
    /// `Ok`: its covering cycle completed (returned `()` or `Ok`).
    Completed,
    /// `RunError::Failed`: its covering cycle returned an error.
    Failed,
    /// `RunError::Panicked`.
    Panicked,
    /// `RunError::TimedOut`.
    TimedOut,
    /// `RunError::Closed`: rejected.
    Closed,
    /// `RunError::OwnCycle`: refused, nothing recorded.
    OwnCycle,
    /// `RunError::Aborted`.
    Aborted,
    /// A `RunError` this oracle does not know: the history is malformed
    /// until the oracle learns it.
    Unknown,
}

impl<T, E> From<&Result<T, RunError<E>>> for Answer {
    fn from(result: &Result<T, RunError<E>>) -> Self {
        match result {
            Ok(_) => Answer::Completed,
            Err(RunError::Failed(_)) => Answer::Failed,
            Err(RunError::Panicked) => Answer::Panicked,
            Err(RunError::TimedOut) => Answer::TimedOut,
            Err(RunError::Closed) => Answer::Closed,
            Err(RunError::OwnCycle) => Answer::OwnCycle,
            Err(RunError::Aborted) => Answer::Aborted,
            Err(_) => Answer::Unknown,
        }
    }
}

/// How the oracle reads a history: what the coalescer was built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Options {
    /// The coalescer retries failed cycles (`Builder::retry`): a cycle that
    /// failed or panicked may be followed by a retry that covers the same
    /// requests (INV-9).
    pub retries: bool,
}

/// One observable step of an execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<K> {
    /// A request for `key` is about to be made: `request` if `wait` is
    /// false, `request_and_wait` if it is true. If the requester wrote a
    /// version of the key's data just before (a value from a per-key counter
    /// that only grows), `wrote` carries it; the covering cycle must see it.
    Invoked {
        /// The request's name.
        request: RequestId,
        /// The key requested.
        key: K,
        /// Whether this is a `request_and_wait`.
        wait: bool,
        /// The version the requester wrote before requesting, if any.
        wrote: Option<u64>,
    },
    /// The request was accepted. For `request` this is its `Ok` return; for
    /// the async `request_and_wait` it may be recorded when the `Wait` is
    /// created (the blocking one does not reveal its admission).
    Accepted {
        /// The request's name.
        request: RequestId,
        /// What the call returned.
        admission: Admission,
    },
    /// The request was rejected with `Closed` (or `RunError::Closed`).
    Rejected {
        /// The request's name.
        request: RequestId,
    },
    /// A `request_and_wait` returned (or its `Wait` resolved) with `result`.
    /// `Answer::Closed` may be recorded as this or as [`Event::Rejected`].
    Waited {
        /// The request's name.
        request: RequestId,
        /// What the call returned.
        result: Answer,
    },
    /// A cycle of `key` began (recorded first thing in the cycle function).
    /// `saw` is the version of the key's data the cycle read, if the test
    /// keeps versions.
    CycleBegan {
        /// The key.
        key: K,
        /// The version the cycle read, if any.
        saw: Option<u64>,
    },
    /// The cycle of `key` that is running returned normally (recorded last
    /// thing in the cycle function).
    CycleEnded {
        /// The key.
        key: K,
    },
    /// The cycle of `key` that is running is about to panic (recorded just
    /// before the panic is raised).
    CyclePanicked {
        /// The key.
        key: K,
    },
    /// The cycle of `key` that is running is about to return an error
    /// (recorded last thing in the cycle function).
    CycleFailed {
        /// The key.
        key: K,
    },
    /// The panic hook was called for a panic of a cycle of `key`.
    PanicReported {
        /// The key.
        key: K,
    },
    /// `shutdown` was called.
    ShutdownBegan,
    /// `shutdown` returned.
    ShutdownEnded,
    /// The async coalescer is being dropped without `shutdown` (the abort
    /// path, INV-5): from here on accepted requests may go uncovered and
    /// waiters may get `RunError::Aborted`.
    Aborted,
}

/// An execution: its events in the order they were recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History<K> {
    /// The events, in order.
    pub events: Vec<Event<K>>,
}

impl<K> History<K> {
    /// A history of `events`, in order.
    pub fn new(events: Vec<Event<K>>) -> Self {
        History { events }
    }
}

/// Records the events of an execution from many threads.
///
/// One `std` mutex: under loom it is invisible (loom runs one thread at a
/// time, so it never contends), so recording adds no synchronization that
/// could hide a missing happens-before edge in the code under test.
#[derive(Debug)]
pub struct Recorder<K> {
    events: Mutex<Vec<Event<K>>>,
}

impl<K> Default for Recorder<K> {
    fn default() -> Self {
        Recorder {
            events: Mutex::new(Vec::new()),
        }
    }
}

impl<K: Clone> Recorder<K> {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `event`.
    pub fn record(&self, event: Event<K>) {
        // A test thread that panicked while recording left a whole event or
        // none: the vector is never half-updated.
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(event);
    }

    /// The events recorded so far.
    pub fn history(&self) -> History<K> {
        History::new(
            self.events
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// Which invariant a history breaks (the IDs of `docs/invariants.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Invariant {
    /// INV-1: cycles of one key never overlap, and a request that finds its
    /// key running is never told it started a runner.
    MutualExclusion,
    /// INV-2: every accepted request is covered by a cycle that begins after
    /// it; a successful `request_and_wait` returns after its covering cycle
    /// completed.
    NoLostWakeup,
    /// INV-3: every panicking cycle is reported exactly once, and a waiter
    /// covered by it gets `RunError::Panicked`.
    PanicContainment,
    /// INV-8: a waiter gets the answer of a cycle that covers it (a failed
    /// cycle's waiter gets `RunError::Failed`).
    CoveringAnswer,
    /// INV-4: the covering cycle sees what the requester wrote before it
    /// requested.
    HappensBefore,
    /// INV-5: after `shutdown` returned, nothing runs and every request is
    /// rejected; nothing is rejected before `shutdown` began.
    Shutdown,
    /// INV-7: every cycle covers at least one accepted request that no
    /// earlier cycle of its key covers.
    NoSpuriousCycle,
    /// The history itself is malformed (an event for an unknown request, a
    /// cycle ending that never began, …): a bug in the test's recording.
    WellFormed,
}

impl Invariant {
    /// The ID used in `docs/invariants.md`, e.g. `"INV-2"`.
    pub fn id(self) -> &'static str {
        match self {
            Invariant::MutualExclusion => "INV-1",
            Invariant::NoLostWakeup => "INV-2",
            Invariant::PanicContainment => "INV-3",
            Invariant::HappensBefore => "INV-4",
            Invariant::Shutdown => "INV-5",
            Invariant::NoSpuriousCycle => "INV-7",
            Invariant::CoveringAnswer => "INV-8",
            Invariant::WellFormed => "well-formed history",
        }
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Invariant::MutualExclusion => "mutual exclusion per key",
            Invariant::NoLostWakeup => "no lost wakeup",
            Invariant::PanicContainment => "panic containment",
            Invariant::HappensBefore => "a request happens-before its covering cycle",
            Invariant::Shutdown => "shutdown drains",
            Invariant::NoSpuriousCycle => "no spurious cycle",
            Invariant::CoveringAnswer => "a waiter gets its covering cycle's answer",
            Invariant::WellFormed => "events recorded in a possible order",
        };
        write!(f, "{} ({name})", self.id())
    }
}

/// A history that breaks an invariant: which one, at which event, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The invariant broken.
    pub invariant: Invariant,
    /// The index in `History::events` of the event that shows it.
    pub at: usize,
    /// What happened, in words, naming requests, keys and event indices.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} violated at event {}: {}",
            self.invariant, self.at, self.message
        )
    }
}

impl std::error::Error for Violation {}

/// What the oracle learned about one request.
#[derive(Debug)]
struct Request<K> {
    key: K,
    wait: bool,
    wrote: Option<u64>,
    invoked: usize,
    /// The index and outcome of its `Accepted` / `Rejected` event.
    admitted: Option<(usize, Result<Admission, ()>)>,
    /// The index and result of its `Waited` event.
    waited: Option<(usize, Answer)>,
}

impl<K> Request<K> {
    /// The index of its last event: when the caller knew the outcome.
    fn returned(&self) -> Option<usize> {
        match (&self.admitted, &self.waited) {
            (_, Some((i, _))) | (Some((i, _)), None) => Some(*i),
            (None, None) => None,
        }
    }
}

/// How a cycle ended, as it recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Completed,
    Panicked,
    Failed,
}

/// One cycle: where it began and ended.
#[derive(Debug, Clone, Copy)]
struct Cycle {
    began: usize,
    saw: Option<u64>,
    /// Index of its end, and how; `None` while it runs.
    ended: Option<(usize, Ended)>,
}

/// Checks `history` against every invariant and returns the first
/// violation, in the order: well-formedness, INV-1, INV-5, INV-2, INV-4,
/// INV-3, INV-8, INV-7. The coalescer is read as one without retries
/// ([`check_with`] takes [`Options`]).
///
/// See the [module documentation](self) for how the order of events is read
/// and why the history must be complete.
pub fn check<K>(history: &History<K>) -> Result<(), Violation>
where
    K: Hash + Eq + Clone + fmt::Debug,
{
    check_with(history, Options::default())
}

/// [`check`], for a coalescer built with `options`.
pub fn check_with<K>(history: &History<K>, options: Options) -> Result<(), Violation>
where
    K: Hash + Eq + Clone + fmt::Debug,
{
    let mut requests: HashMap<RequestId, Request<K>> = HashMap::new();
    let mut cycles: HashMap<K, Vec<Cycle>> = HashMap::new();
    let mut reports: HashMap<K, (usize, usize)> = HashMap::new();
    let mut shutdown_began: Option<usize> = None;
    let mut shutdown_ended: Option<usize> = None;
    let mut aborted: Option<usize> = None;
    // Which requests were accepted in the end.
    let accepted = accepted_requests(&history.events);

    // One pass in order: record, and check what can be judged at once.
    for (at, event) in history.events.iter().enumerate() {
        let fail = |invariant, message: String| Violation {
            invariant,
            at,
            message,
        };
        match event {
            Event::Invoked {
                request,
                key,
                wait,
                wrote,
            } => {
                if requests.contains_key(request) {
                    return Err(fail(
                        Invariant::WellFormed,
                        format!("request {request} invoked twice"),
                    ));
                }
                requests.insert(
                    *request,
                    Request {
                        key: key.clone(),
                        wait: *wait,
                        wrote: *wrote,
                        invoked: at,
                        admitted: None,
                        waited: None,
                    },
                );
            }
            Event::Accepted { request, admission } => {
                let r = known(&mut requests, *request, at)?;
                if r.admitted.is_some() {
                    return Err(fail(
                        Invariant::WellFormed,
                        format!("request {request} admitted twice"),
                    ));
                }
                r.admitted = Some((at, Ok(*admission)));
                if let Some(ended) = shutdown_ended.filter(|&e| e < r.invoked) {
                    return Err(fail(
                        Invariant::Shutdown,
                        format!(
                            "request {request} was invoked at event {} after shutdown returned \
                             (event {ended}) and was accepted",
                            r.invoked
                        ),
                    ));
                }
                // Started means the key had no live runner at the request's
                // step, which lies between invocation and now: impossible if
                // one cycle of the key ran through the whole interval.
                if *admission == Admission::Started {
                    let through = cycles
                        .get(&r.key)
                        .and_then(|cs| cs.last())
                        .filter(|c| c.began < r.invoked && c.ended.is_none());
                    if let Some(c) = through {
                        return Err(fail(
                            Invariant::MutualExclusion,
                            format!(
                                "request {request} for key {:?} was told it started a runner, \
                                 but the cycle that began at event {} ran through its whole \
                                 call (invoked at event {})",
                                r.key, c.began, r.invoked
                            ),
                        ));
                    }
                }
            }
            Event::Rejected { request } => {
                let r = known(&mut requests, *request, at)?;
                if r.admitted.is_some() {
                    return Err(fail(
                        Invariant::WellFormed,
                        format!("request {request} admitted twice"),
                    ));
                }
                r.admitted = Some((at, Err(())));
                if shutdown_began.is_none() && aborted.is_none() {
                    return Err(fail(
                        Invariant::Shutdown,
                        format!("request {request} was rejected before any shutdown began"),
                    ));
                }
            }
            Event::Waited { request, result } => {
                let r = known(&mut requests, *request, at)?;
                if !r.wait || r.waited.is_some() {
                    return Err(fail(
                        Invariant::WellFormed,
                        format!(
                            "request {request} returned a wait result but is not an \
                             unfinished request_and_wait"
                        ),
                    ));
                }
                r.waited = Some((at, *result));
                if *result == Answer::Unknown {
                    return Err(fail(
                        Invariant::WellFormed,
                        format!("request {request} got an answer this oracle does not know"),
                    ));
                }
                if *result == Answer::Closed && shutdown_began.is_none() && aborted.is_none() {
                    return Err(fail(
                        Invariant::Shutdown,
                        format!("request {request} was rejected before any shutdown began"),
                    ));
                }
                if *result == Answer::Aborted && aborted.is_none() {
                    return Err(fail(
                        Invariant::Shutdown,
                        format!("request {request} was aborted, but the coalescer was never dropped without shutdown"),
                    ));
                }
                if let Some(ended) = shutdown_ended.filter(|&e| e < r.invoked) {
                    if *result != Answer::Closed {
                        return Err(fail(
                            Invariant::Shutdown,
                            format!(
                                "request {request} was invoked at event {} after shutdown \
                                 returned (event {ended}) and was not rejected",
                                r.invoked
                            ),
                        ));
                    }
                }
            }
            Event::CycleBegan { key, saw } => {
                let cs = cycles.entry(key.clone()).or_default();
                if let Some(open) = cs.last().filter(|c| c.ended.is_none()) {
                    return Err(fail(
                        Invariant::MutualExclusion,
                        format!(
                            "a cycle of key {key:?} began while the cycle that began at \
                             event {} was still running",
                            open.began
                        ),
                    ));
                }
                if let Some(ended) = shutdown_ended {
                    return Err(fail(
                        Invariant::Shutdown,
                        format!(
                            "a cycle of key {key:?} began after shutdown returned (event {ended})"
                        ),
                    ));
                }
                cs.push(Cycle {
                    began: at,
                    saw: *saw,
                    ended: None,
                });
            }
            Event::CycleEnded { key }
            | Event::CyclePanicked { key }
            | Event::CycleFailed { key } => {
                let how = match event {
                    Event::CyclePanicked { .. } => Ended::Panicked,
                    Event::CycleFailed { .. } => Ended::Failed,
                    _ => Ended::Completed,
                };
                let Some(open) = cycles
                    .get_mut(key)
                    .and_then(|cs| cs.last_mut())
                    .filter(|c| c.ended.is_none())
                else {
                    return Err(fail(
                        Invariant::WellFormed,
                        format!("a cycle of key {key:?} ended, but none was running"),
                    ));
                };
                open.ended = Some((at, how));
                if how == Ended::Panicked {
                    reports.entry(key.clone()).or_default().0 += 1;
                }
            }
            Event::PanicReported { key } => {
                let (panics, reported) = reports.entry(key.clone()).or_default();
                *reported += 1;
                if *reported > *panics {
                    return Err(fail(
                        Invariant::PanicContainment,
                        format!(
                            "the panic hook was called {reported} times for key {key:?}, \
                             which had {panics} panicking cycles so far"
                        ),
                    ));
                }
            }
            Event::ShutdownBegan => {
                shutdown_began.get_or_insert(at);
            }
            Event::ShutdownEnded => {
                if shutdown_began.is_none() {
                    return Err(fail(
                        Invariant::WellFormed,
                        "shutdown ended before it began".to_owned(),
                    ));
                }
                let running = cycles
                    .iter()
                    .find(|(_, cs)| cs.last().is_some_and(|c| c.ended.is_none()));
                if let Some((key, cs)) = running {
                    return Err(fail(
                        Invariant::Shutdown,
                        format!(
                            "shutdown returned while the cycle of key {key:?} that began at \
                             event {} was still running",
                            cs.last().map_or(0, |c| c.began)
                        ),
                    ));
                }
                shutdown_ended.get_or_insert(at);
            }
            Event::Aborted => {
                aborted.get_or_insert(at);
            }
        }
    }

    let end = history.events.len();
    // At the end of a complete history: every accepted request covered
    // (INV-2) by a cycle that saw its write (INV-4), and every waiter told
    // the truth.
    let mut ordered: Vec<(&RequestId, &Request<K>)> = requests.iter().collect();
    ordered.sort_by_key(|(_, r)| r.invoked);
    for (id, r) in ordered {
        let Some(returned) = r.returned() else {
            return Err(Violation {
                invariant: Invariant::WellFormed,
                at: r.invoked,
                message: format!("request {id} was invoked but never returned"),
            });
        };
        if !accepted.contains(id) {
            continue;
        }
        // A key's cycles are in order of beginning; those that began after
        // the invocation are a suffix.
        let after: &[Cycle] = cycles
            .get(&r.key)
            .map_or(&[], |cs| &cs[cs.partition_point(|c| c.began < r.invoked)..]);
        if after.is_empty() {
            if aborted.is_some() {
                continue; // The abort path may leave accepted requests unrun.
            }
            return Err(Violation {
                invariant: Invariant::NoLostWakeup,
                at: returned,
                message: format!(
                    "request {id} for key {:?} was accepted (invoked at event {}), but no \
                     cycle of that key began after it",
                    r.key, r.invoked
                ),
            });
        }
        if let Some(wrote) = r.wrote {
            let saw_it = after.iter().any(|c| c.saw.map_or(true, |saw| saw >= wrote));
            if !saw_it && aborted.is_none() {
                return Err(Violation {
                    invariant: Invariant::HappensBefore,
                    at: after[0].began,
                    message: format!(
                        "request {id} for key {:?} wrote version {wrote} before requesting \
                         (event {}), but no cycle that began after it saw that version \
                         (they saw {:?})",
                        r.key,
                        r.invoked,
                        after.iter().map(|c| c.saw).collect::<Vec<_>>()
                    ),
                });
            }
        }
        if let Some((at, result)) = &r.waited {
            let at = *at;
            // The covering cycle began after the invocation and ended before
            // the return, with the outcome the waiter was given.
            let done = |how: Ended| {
                after
                    .iter()
                    .take_while(|c| c.began < at)
                    .any(|c| matches!(c.ended, Some((e, h)) if e < at && h == how))
            };
            let (ok, invariant, what) = match result {
                Answer::Completed => (done(Ended::Completed), Invariant::NoLostWakeup, "completed"),
                Answer::Panicked => (
                    done(Ended::Panicked),
                    Invariant::PanicContainment,
                    "panicked",
                ),
                Answer::Failed => (done(Ended::Failed), Invariant::CoveringAnswer, "failed"),
                _ => (true, Invariant::NoLostWakeup, ""),
            };
            if !ok {
                return Err(Violation {
                    invariant,
                    at,
                    message: format!(
                        "request_and_wait {id} for key {:?} returned \"{what}\", but no cycle \
                         that began after its invocation (event {}) {what} before it returned",
                        r.key, r.invoked
                    ),
                });
            }
        }
    }
    for (key, (panics, reported)) in &reports {
        if panics != reported {
            return Err(Violation {
                invariant: Invariant::PanicContainment,
                at: end,
                message: format!(
                    "key {key:?} had {panics} panicking cycles but the panic hook was called \
                     {reported} times"
                ),
            });
        }
    }
    if let Some(v) = spurious_cycle(&requests, &accepted, &cycles, options) {
        return Err(v);
    }
    if shutdown_ended.is_some() || aborted.is_none() {
        if let Some((key, c)) = cycles
            .iter()
            .find_map(|(k, cs)| cs.last().filter(|c| c.ended.is_none()).map(|c| (k, c)))
        {
            return Err(Violation {
                invariant: Invariant::WellFormed,
                at: c.began,
                message: format!(
                    "the history ends while the cycle of key {key:?} that began at event {} \
                     is still running: record up to quiescence",
                    c.began
                ),
            });
        }
    }
    Ok(())
}

/// INV-7, exactly: every cycle of a key covers at least one accepted request
/// that no earlier cycle of the key covers. Returns the first cycle (in the
/// order of the history) for which no such request can exist.
///
/// Each request is covered by exactly one cycle: the first of its key to
/// *begin* (the runner's step that consumes the pending bit and the marks)
/// after the request's own step. With the steps hidden inside recorded
/// intervals, cycle `j` (0-based) can be the one covering request `r` only
/// if
/// - `r` was invoked before cycle `j` was recorded as begun (its step lies
///   before that cycle's begin step, which lies before the record), and
/// - `r` was admitted after cycle `j - 2` was recorded as ended (its step
///   lies after cycle `j - 1`'s begin step, which lies after that record).
///
/// So each request may cover a contiguous range of cycles `[lo, hi]`, and
/// in a correct execution the cycles can be given distinct requests from
/// their ranges (each cycle one it really covers). Whether such an
/// assignment exists is decided greedily: cycles in order, each taking, among
/// the unused requests whose range contains it, the one whose range ends
/// first. A cycle left with none covers no request that a placement of the
/// steps could give it — the spurious cycle of an unconsumed mark, say,
/// which begins after every request it could cover already had its cycle.
/// The rule is sound (the assignment of a correct execution is one the greedy
/// choice can match) and stronger than counting cycles against requests.
///
/// With [`Options::retries`], a cycle that failed or panicked may have been
/// retried: it needs a request in its range but does not use it up, and a
/// request's range runs on through the retries of its last cycle (each
/// failed cycle's successor may cover it again).
fn spurious_cycle<K>(
    requests: &HashMap<RequestId, Request<K>>,
    accepted: &HashSet<RequestId>,
    cycles: &HashMap<K, Vec<Cycle>>,
    options: Options,
) -> Option<Violation>
where
    K: Hash + Eq + Clone + fmt::Debug,
{
    // Per key, each accepted request's range of cycles it may cover.
    let mut ranges: HashMap<&K, Vec<(usize, usize)>> = HashMap::new();
    for (id, r) in requests {
        if !accepted.contains(id) {
            continue;
        }
        let Some(cs) = cycles.get(&r.key) else {
            continue; // INV-2 was checked first: only the abort path gets here.
        };
        // The step lies before the admission became known: the `Accepted`
        // event if recorded, else the `Waited` one.
        let admitted = r
            .admitted
            .map(|(i, _)| i)
            .or(r.waited.as_ref().map(|(i, _)| *i))
            .unwrap_or(usize::MAX);
        let lo = cs.partition_point(|c| c.began < r.invoked);
        // Ends are in order (INV-1 was checked first); a cycle that never
        // ended counts as ending at the end of time.
        let ended_before = cs.partition_point(|c| c.ended.is_some_and(|(e, _)| e < admitted));
        let mut hi = (ended_before + 1).min(cs.len().saturating_sub(1));
        // With retries, a cycle that failed may be retried by the next one,
        // which then covers the same requests again.
        while options.retries
            && hi + 1 < cs.len()
            && matches!(cs[hi].ended, Some((_, Ended::Failed | Ended::Panicked)))
        {
            hi += 1;
        }
        if lo <= hi {
            ranges.entry(&r.key).or_default().push((lo, hi));
        }
    }
    let mut first: Option<Violation> = None;
    for (key, cs) in cycles {
        let mut ranges = ranges.remove(key).unwrap_or_default();
        ranges.sort_unstable();
        let mut next = ranges.iter().peekable();
        let mut open = std::collections::BinaryHeap::new();
        for (j, c) in cs.iter().enumerate() {
            while let Some(&&(lo, hi)) = next.peek() {
                if lo > j {
                    break;
                }
                open.push(std::cmp::Reverse(hi));
                next.next();
            }
            while open.peek().is_some_and(|&std::cmp::Reverse(hi)| hi < j) {
                open.pop();
            }
            // With retries, a cycle that failed or panicked may be retried:
            // its requests are then owed to the retry, so it needs one but
            // does not use it up (the retry may take the same one).
            let retried =
                options.retries && matches!(c.ended, Some((_, Ended::Failed | Ended::Panicked)));
            let covered = if retried {
                open.peek().is_some()
            } else {
                open.pop().is_some()
            };
            if !covered {
                if first.as_ref().map_or(true, |v| c.began < v.at) {
                    first = Some(Violation {
                        invariant: Invariant::NoSpuriousCycle,
                        at: c.began,
                        message: format!(
                            "cycle {} of key {key:?} covers no request: each accepted \
                             request invoked before it began was admitted before cycle {} \
                             could begin, or is needed by an earlier cycle",
                            j + 1,
                            j
                        ),
                    });
                }
                break;
            }
        }
    }
    first
}

/// The request `id`, or a well-formedness violation at `at`.
fn known<K>(
    requests: &mut HashMap<RequestId, Request<K>>,
    id: RequestId,
    at: usize,
) -> Result<&mut Request<K>, Violation> {
    requests.get_mut(&id).ok_or_else(|| Violation {
        invariant: Invariant::WellFormed,
        at,
        message: format!("request {id} returned, but it was never invoked"),
    })
}

/// The requests that were, in the end, accepted.
fn accepted_requests<K>(events: &[Event<K>]) -> HashSet<RequestId> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Accepted { request, .. } => Some(*request),
            Event::Waited { request, result } if *result != Answer::Closed => Some(*request),
            _ => None,
        })
        .collect()
}
