//! The protocol as a `stateright` model, and the Go algorithm beside it.
//!
//! Each action is one atomic step of the real code: a lock acquisition
//! together with what is read under it, one RMW on a slot's state word, one
//! runner step. The [`Protocol::Coalescer`] transitions on the state word
//! call the same pure functions the implementation applies with its atomics
//! (`impl/src/state.rs`, compiled into this crate from the same file), so the
//! model cannot drift from the code's state machine. What the model adds is
//! *ghost state*: which accepted requests each slot still owes a cycle, and
//! flags that record a spurious cycle or a cycle after shutdown. The
//! properties read the ghost state; the protocol never does.
//!
//! See `docs/spec.md` for the bounds, what this proves, and what only loom
//! covers.

use stateright::{Model, Property};

use crate::state;

mod check;
mod coalescer;
mod go;
mod properties;
mod steps;
mod symmetry;
mod trace;

use steps::{memo_holds, slot_locked};
use symmetry::normalize;

pub use check::{explore, run, Run};
pub use symmetry::representative;
pub use trace::trace;

/// Which algorithm the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// This crate's protocol: the state word of `state.rs`, the sharded map
    /// with reclamation, and `close` with its barrier over the shard locks.
    Coalescer,
    /// The Go implementation: a `{running, pending}` pair under a mutex per
    /// key, entries never freed, runners detached, and a loop that exits in
    /// two critical sections (read-and-clear `pending`, then clear
    /// `running`); a panic clears `running` without draining `pending`.
    Go,
}

/// The model's bounds and the protocol it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The algorithm.
    pub protocol: Protocol,
    /// Number of keys (at most 4).
    pub keys: u8,
    /// Number of requester threads.
    pub requesters: u8,
    /// Requests each requester makes, at most (each to any key).
    pub requests_each: u8,
    /// Requesters after the first make at most this many requests instead,
    /// if set (at most `requests_each`). The first requester then drives the
    /// scenario and the others only race it; the symmetry reduction still
    /// renames the requesters of equal budget.
    pub others_make: Option<u8>,
    /// Whether a cycle may panic.
    pub panics: bool,
    /// Whether a shutdown may happen, at any point (ignored for Go, which has
    /// no shutdown).
    pub shutdown: bool,
    /// Whether requesters keep memos and request through their marks
    /// (coalescer only). A requester may remember any slot it joined on the
    /// fast path: the code's policy (the second request in a row for the
    /// key) is one of the choices, so its executions are among the model's.
    pub marks: bool,
    /// Coalescer only: with a retry policy, a failed cycle (in the model, a
    /// panicking one: both end through the same steps) may be retried, up
    /// to this many times in a row per runner; the policy may also give up
    /// sooner (every choice is explored). 0: no retry policy.
    pub retries: u8,
    /// Coalescer only: at most this many cycles at once across all keys
    /// (`Builder::concurrency`); 0: no limit. A due runner takes a ticket
    /// (a fresh one at admission, under the shard lock) and begins only
    /// once granted a permit, which it gives back as its cycle ends, to the
    /// longest-waiting runner.
    pub limit: u8,
}

impl Spec {
    /// The bounds `cargo test` checks exhaustively: 2 keys, 3 requesters of
    /// up to 2 requests each, any cycle may panic, a shutdown at any point.
    pub fn coalescer() -> Self {
        Spec {
            protocol: Protocol::Coalescer,
            keys: 2,
            requesters: 3,
            requests_each: 2,
            others_make: None,
            panics: true,
            shutdown: true,
            marks: false,
            retries: 0,
            limit: 0,
        }
    }

    /// The bounds of the check with a concurrency limit of 1: 3 keys, 2
    /// requesters of up to 2 requests each, any cycle may panic, a shutdown
    /// at any point — permits handed off racing requests and the shutdown,
    /// with up to two keys in line.
    pub fn limit() -> Self {
        Spec {
            keys: 3,
            requesters: 2,
            limit: 1,
            ..Spec::coalescer()
        }
    }

    /// The bounds of the check with a retry policy: 2 keys, 2 requesters of
    /// up to 2 requests each, any cycle may fail, a failure may be retried
    /// (up to twice in a row, or given up on), a shutdown at any point.
    pub fn retry() -> Self {
        Spec {
            requesters: 2,
            retries: 2,
            ..Spec::coalescer()
        }
    }

    /// The bounds of the check with memos and marks: 2 keys; one requester
    /// of up to 3 requests (remember a slot, request through the mark,
    /// request again or move the memo), raced by a requester of 1 request;
    /// a shutdown at any point. No panics: a panicking cycle ends through
    /// the same steps as one that returns (the default check covers it), and
    /// the marks add nothing to that path. (A second racing requester, or a
    /// second request for the one there is, did not finish in 10 minutes.)
    pub fn marks() -> Self {
        Spec {
            requesters: 2,
            requests_each: 3,
            others_make: Some(1),
            panics: false,
            marks: true,
            ..Spec::coalescer()
        }
    }

    /// How many requests requester `r` makes at most.
    fn budget(&self, r: usize) -> u8 {
        match self.others_make {
            Some(n) if r > 0 => n.min(self.requests_each),
            _ => self.requests_each,
        }
    }

    /// The same bounds, running the Go algorithm.
    pub fn go() -> Self {
        Spec {
            protocol: Protocol::Go,
            shutdown: false,
            ..Spec::coalescer()
        }
    }

    fn requests(&self) -> usize {
        usize::from(self.requesters) * usize::from(self.requests_each)
    }
}

/// A shard's reader-writer lock (one shard per key in the model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Lock {
    /// Requesters holding the read lock.
    pub readers: u8,
    /// Whether someone holds the write lock.
    pub writer: bool,
}

impl Lock {
    fn free(self) -> bool {
        self.readers == 0 && !self.writer
    }
}

/// Where a requester is in its current request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// Between requests.
    Idle,
    /// Holds the shard's read lock and saw the coalescer open (fast path).
    ReadLocked {
        /// The key requested.
        key: u8,
    },
    /// The fast path found no live slot: about to take the write lock.
    NeedsWrite {
        /// The key requested.
        key: u8,
    },
    /// Holds the shard's write lock and saw the coalescer open (slow path).
    WriteLocked {
        /// The key requested.
        key: u8,
    },
    /// Joined `slot` on the fast path (accepted) and will make it its memo:
    /// about to unregister its mark from the old memo's slot and register
    /// it with `slot`.
    Remembering {
        /// The slot joined.
        slot: u8,
    },
    /// Memo path: read `closed` (open); about to set its mark.
    MemoOpen,
    /// Memo path: set its mark (an `AcqRel` swap); about to read the
    /// memo slot's state word.
    Marked,
    /// Memo path: read the word dying or dead; about to take the mark back.
    TakingBack,
    /// Memo path: the memo's slot is dead; about to unregister the mark.
    Forgetting,
    /// Forgot its memo; about to go to the map (take the read lock).
    ToMap {
        /// The key requested.
        key: u8,
    },
}

/// One requester thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Requester {
    /// Requests it makes at most (fixed; kept here so that the symmetry
    /// reduction renames only requesters of equal budget).
    pub budget: u8,
    /// Requests invoked so far (the current one included).
    pub issued: u8,
    /// Where the current request is.
    pub step: Step,
    /// Its memo: the slot its mark is registered with, if any.
    pub memo: Option<u8>,
    /// Its mark: set (the code's `AtomicBool` is `true`) iff non-zero. The
    /// bits are ghost: the requests whose setting of the mark no runner has
    /// consumed and no take-back has removed.
    pub mark: u16,
    /// Ghost: requests taken back from the mark that the current request
    /// carries on; whatever covers it covers them.
    pub carried: u16,
}

/// One slot: a key's state word while it is active. The Go protocol keeps
/// one per key forever, its word holding `running` (bit 0) and `pending`
/// (bit 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Slot {
    /// The key.
    pub key: u8,
    /// The state word (`state.rs` layout for the coalescer).
    pub word: u64,
    /// Ghost: the accepted requests that joined this slot and that no cycle
    /// has covered yet (bit `i` is request `i`).
    pub owed: u16,
}

/// Where a runner is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// With a limit: due, about to take a ticket.
    Due,
    /// With a limit: holds a ticket, waiting for a permit.
    Waiting,
    /// About to `begin` a cycle (with a limit: holding a permit).
    Ready,
    /// Running a cycle.
    Running,
    /// The cycle returned (or panicked, for the coalescer) and was ended;
    /// about to go idle.
    Ended,
    /// Go only: saw `pending` clear and cleared it; about to clear `running`
    /// in a second critical section (the D1 window).
    SawNothingPending,
    /// Coalescer: announced `DYING`; about to check the marks and kill the
    /// slot.
    Dying,
    /// Coalescer with marks: found no mark while dying, still holding the
    /// slot's lock; about to try the `die` compare-exchange.
    Checked,
    /// Coalescer: found a request while dying; about to revive the slot.
    Reviving,
    /// The slot went idle (dead); about to remove it from the map.
    WentIdle,
    /// The runner has stopped.
    Exited {
        /// Whether it stopped because its last cycle panicked (Go's D2).
        by_panic: bool,
    },
}

/// One runner (a thread or task) driving one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Runner {
    /// Index of its slot in `State::slots`.
    pub slot: u8,
    /// Where it is.
    pub phase: Phase,
    /// The state word right after its last `begin` (coalescer).
    pub after: u64,
    /// Retry policy: its consecutive failed cycles.
    pub failures: u8,
    /// Retry policy: its current cycle is a retry that began with `closed`
    /// set, so it is not retried again.
    pub last_chance: bool,
    /// Ghost (retry policy): the requests its current cycle covers, owed
    /// again if the cycle fails and is retried.
    pub covering: u16,
    /// Limit: it holds a permit (from its grant until its cycle ends).
    pub permit: bool,
    /// Limit: while waiting, its place in the line (1 is the front; the
    /// ranks are renumbered densely in every state).
    pub ticket: u8,
}

impl Runner {
    fn active(self) -> bool {
        !matches!(self.phase, Phase::Exited { .. })
    }
}

/// Where the shutdown is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shutdown {
    /// Not called.
    NotStarted,
    /// The `closed` flag is set; the barrier has passed this many shards.
    Closing {
        /// Shards whose lock the barrier has taken and released.
        barrier: u8,
    },
    /// The barrier is done; joining the runners.
    Joining,
    /// `shutdown` returned.
    Done,
}

/// What the ghost state knows of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fate {
    /// Not invoked yet.
    NotInvoked,
    /// Invoked, not yet returned.
    InFlight,
    /// Rejected with `Closed`.
    Rejected,
    /// Accepted and owed a cycle.
    Owed,
    /// Accepted and covered by a cycle that began after it.
    Covered,
}

/// One request's ghost record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Request {
    /// Its key (meaningful once invoked).
    pub key: u8,
    /// What became of it.
    pub fate: Fate,
    /// It was accepted while a cycle of its key ran that then panicked.
    pub during_panic: bool,
    /// Retry policy: it was accepted while a cycle of its key ran that then
    /// failed and was retried.
    pub during_retried: bool,
    /// Retry policy: it was accepted while a cycle of its key ran that then
    /// failed and was given up on.
    pub during_given_up: bool,
}

/// Ghost flags: things that happened, for the properties to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Ghost {
    /// A cycle began that covered no request (INV-7).
    pub spurious_cycle: bool,
    /// A cycle began after `shutdown` returned (INV-5).
    pub cycle_after_shutdown: bool,
    /// A request was accepted after `shutdown` returned (INV-5).
    pub accepted_after_shutdown: bool,
    /// A runner stopped normally while its slot still owed an accepted
    /// request a cycle, and no other runner of the slot was active (INV-2).
    pub stranded_by_stop: bool,
    /// The same, by a runner stopped by a panicking cycle (INV-3).
    pub stranded_by_panic: bool,
    /// Non-vacuity: a request was coalesced into a live slot.
    pub coalesced: bool,
    /// Non-vacuity: a request accepted during a cycle that panicked was
    /// covered by a follow-up cycle.
    pub panic_follow_up: bool,
    /// Non-vacuity: a request was accepted after `closed` was set, before
    /// `shutdown` returned (it had checked the flag just before).
    pub accepted_while_closing: bool,
    /// Non-vacuity: a request was rejected.
    pub rejected: bool,
    /// Non-vacuity: a request replaced a dead slot its runner had not yet
    /// removed.
    pub replaced_dead_slot: bool,
    /// Per key (bit `k`): the key's slot has been removed by reclamation.
    pub reclaimed: u8,
    /// Non-vacuity: a key was reclaimed, then became active again.
    pub recreated: bool,
    /// Non-vacuity (marks): a request was accepted through its mark.
    pub marked: bool,
    /// Non-vacuity (marks): a dying runner's check found a mark and revived.
    pub found_by_check: bool,
    /// Non-vacuity (marks): a requester took back a mark still set and made
    /// the request again.
    pub took_back: bool,
    /// Non-vacuity (marks): a requester found its memo's slot dead, forgot
    /// it and went to the map.
    pub forgot_dead: bool,
    /// Non-vacuity (marks): a memo moved while its mark was still set, and
    /// the unregistering made the request again.
    pub reasserted: bool,
    /// Retry: a failed cycle that began after `closed` was set was retried
    /// (INV-9: the drain must end).
    pub retried_last_chance: bool,
    /// Retry: a runner's consecutive failures exceeded the policy's bound.
    pub retried_beyond_bound: bool,
    /// Non-vacuity (retry): a request accepted during a failing cycle was
    /// covered by its retry.
    pub folded_into_retry: bool,
    /// Non-vacuity (retry): a request the failed cycle covered was covered
    /// again by the retry.
    pub retry_covered_failed: bool,
    /// Non-vacuity (retry): the policy gave up, and a request accepted
    /// during the cycle it gave up on got its follow-up.
    pub give_up_follow_up: bool,
    /// Non-vacuity (retry): a retry that began while closing failed and
    /// was not retried again.
    pub last_chance_given_up: bool,
    /// Limit: a permit went to a runner other than the front of the line,
    /// or was taken from the free count while a runner waited (INV-11b).
    pub overtaken: bool,
    /// Non-vacuity (limit): a released permit was handed to a waiting
    /// runner.
    pub handed_off: bool,
    /// Non-vacuity (limit): a permit was handed off after `closed` was set.
    pub handed_off_while_closing: bool,
}

/// The whole system at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct State {
    /// The requester threads.
    pub requesters: Vec<Requester>,
    /// One lock per key's shard.
    pub locks: Vec<Lock>,
    /// Per key: the index of the slot in its shard's map, if any.
    pub map: Vec<Option<u8>>,
    /// Every slot ever created, dead ones included.
    pub slots: Vec<Slot>,
    /// Every runner ever started.
    pub runners: Vec<Runner>,
    /// The registry's `closed` flag.
    pub closed: bool,
    /// Limit: permits no runner holds.
    pub free: u8,
    /// The shutdown call.
    pub shutdown: Shutdown,
    /// Ghost: every request, indexed `requester * requests_each + n`.
    pub requests: Vec<Request>,
    /// Ghost: flags.
    pub ghost: Ghost,
}

/// One atomic step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Requester `r` invokes a request for `key`. Coalescer: it takes the
    /// shard's read lock and reads `closed` (rejected if set). Go: the whole
    /// request, one critical section under the key's mutex.
    Request {
        /// The requester.
        r: u8,
        /// The key.
        key: u8,
    },
    /// Fast path: the `request` RMW on the slot in the map, if any; then the
    /// read lock is released.
    FastPath {
        /// The requester.
        r: u8,
        /// Marks only: if it joins, it makes the slot its memo.
        remember: bool,
    },
    /// `Memo::remember`: unregister the mark from the old memo's slot (under
    /// that slot's lock; a mark still set there is made again as a plain
    /// request) and register it with the slot just joined.
    Remember {
        /// The requester.
        r: u8,
    },
    /// `request_marked`: set the mark (`swap(true)`) and the fence.
    SetMark {
        /// The requester.
        r: u8,
    },
    /// `request_marked`: read the state word; accepted if live and not dying.
    ReadState {
        /// The requester.
        r: u8,
    },
    /// `Slot::take_back`, under the slot's lock: take the mark back
    /// (`swap(false)`); accepted if the runner had consumed it; else the
    /// plain `request` RMW, accepted if the slot is live.
    TakeBack {
        /// The requester.
        r: u8,
    },
    /// `Memo::forget` of a dead memo: unregister the mark (under the slot's
    /// lock).
    Forget {
        /// The requester.
        r: u8,
    },
    /// After forgetting: into the map, as `Request` does (read lock, read
    /// `closed`).
    EnterMap {
        /// The requester.
        r: u8,
    },
    /// Slow path: take the write lock and read `closed`.
    LockForWrite {
        /// The requester.
        r: u8,
    },
    /// Slow path under the write lock: the `request` RMW on a live slot, or
    /// create a fresh slot (replacing a dead one) and start its runner; then
    /// the write lock is released.
    SlowPath {
        /// The requester.
        r: u8,
        /// Marks only: it then makes the slot its memo. (The code remembers
        /// only on the fast path; letting the model remember here too adds
        /// executions, so that one requester can build a memo in its first
        /// request.)
        remember: bool,
    },
    /// Limit: due runner `i` takes a ticket, under the limit's lock: a
    /// free permit if nobody waits, else the back of the line.
    TakeTicket {
        /// The runner.
        i: u8,
    },
    /// Runner `i`'s `begin` (the cycle starts).
    Begin {
        /// The runner.
        i: u8,
    },
    /// Retry policy: runner `i`'s cycle fails and the policy retries it —
    /// the runner's own `request` RMW on its slot, the failed cycle's
    /// requests owed again; the delay is abstract (anything may happen
    /// before the runner's next `Begin`), and there is no going idle in
    /// between.
    FailAndRetry {
        /// The runner.
        i: u8,
    },
    /// Runner `i`'s cycle returns, or panics (with a retry policy: fails,
    /// and the policy gives up).
    Finish {
        /// The runner.
        i: u8,
        /// Whether the cycle panicked.
        panicked: bool,
    },
    /// Runner `i` tries to go idle: the `dying` compare-exchange
    /// (coalescer), or the first critical section, read-and-clear `pending`
    /// (Go).
    GoIdle {
        /// The runner.
        i: u8,
    },
    /// Coalescer with marks: dying runner `i` takes its slot's lock and
    /// consumes every mark registered there; if one was set it revives,
    /// else it keeps the lock for `Die`.
    Check {
        /// The runner.
        i: u8,
    },
    /// Coalescer: dying runner `i` tries the `die` compare-exchange (without
    /// marks the check before it finds none, and is left out); then
    /// releases the slot's lock.
    Die {
        /// The runner.
        i: u8,
    },
    /// Coalescer: runner `i` revives its dying slot (a request came).
    Revive {
        /// The runner.
        i: u8,
    },
    /// Go only: the second critical section, clear `running`.
    ClearRunning {
        /// The runner.
        i: u8,
    },
    /// Runner `i` takes the write lock and removes its dead slot from the
    /// map (unless a fresh one already replaced it), and stops.
    Reclaim {
        /// The runner.
        i: u8,
    },
    /// `shutdown` sets `closed`.
    Close,
    /// `shutdown`'s barrier takes and releases the next shard's write lock.
    Barrier,
    /// `shutdown` joins the runners (enabled once all have stopped) and
    /// returns.
    Join,
}

const GO_RUNNING: u64 = 1;
const GO_PENDING: u64 = 2;

impl Spec {
    fn request_id(&self, r: u8, issued: u8) -> usize {
        usize::from(r) * usize::from(self.requests_each) + usize::from(issued) - 1
    }

    fn current(&self, s: &State, r: u8) -> usize {
        self.request_id(r, s.requesters[usize::from(r)].issued)
    }
}

impl Spec {
    /// One atomic step, on the raw state (runner and slot indices are those
    /// of `last`); `next_state` then normalizes.
    fn step(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match self.protocol {
            Protocol::Coalescer => coalescer::step(self, &mut s, action)?,
            Protocol::Go => go::step(self, &mut s, action)?,
        }
        Some(s)
    }
}

impl Model for Spec {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let keys = usize::from(self.keys);
        vec![State {
            requesters: (0..usize::from(self.requesters))
                .map(|r| Requester {
                    budget: self.budget(r),
                    issued: 0,
                    step: Step::Idle,
                    memo: None,
                    mark: 0,
                    carried: 0,
                })
                .collect(),
            locks: vec![Lock::default(); keys],
            map: vec![None; keys],
            slots: Vec::new(),
            runners: Vec::new(),
            closed: false,
            free: self.limit,
            shutdown: Shutdown::NotStarted,
            requests: vec![
                Request {
                    key: 0,
                    fate: Fate::NotInvoked,
                    during_panic: false,
                    during_retried: false,
                    during_given_up: false,
                };
                self.requests()
            ],
            ghost: Ghost::default(),
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        let unlocked = |slot: Option<u8>| slot.map_or(true, |slot| !slot_locked(s, slot));
        for (r, q) in s.requesters.iter().enumerate() {
            let ru = r;
            let r = r as u8;
            match q.step {
                Step::Idle if q.issued < q.budget => {
                    for key in 0..self.keys {
                        // Taking the read lock waits for a writer; the memo
                        // path takes no lock.
                        if self.protocol == Protocol::Go
                            || memo_holds(s, ru, key)
                            || !s.locks[usize::from(key)].writer
                        {
                            actions.push(Action::Request { r, key });
                        }
                    }
                }
                Step::Idle => {}
                Step::ReadLocked { key } => {
                    actions.push(Action::FastPath { r, remember: false });
                    // Remembering is a choice only where the join succeeds.
                    let live = s.map[usize::from(key)]
                        .is_some_and(|slot| state::is_live(s.slots[usize::from(slot)].word));
                    if self.marks && live {
                        actions.push(Action::FastPath { r, remember: true });
                    }
                }
                Step::NeedsWrite { key } => {
                    if s.locks[usize::from(key)].free() {
                        actions.push(Action::LockForWrite { r });
                    }
                }
                Step::WriteLocked { .. } => {
                    actions.push(Action::SlowPath { r, remember: false });
                    if self.marks {
                        actions.push(Action::SlowPath { r, remember: true });
                    }
                }
                Step::Remembering { slot } => {
                    if unlocked(Some(slot)) && unlocked(q.memo) {
                        actions.push(Action::Remember { r });
                    }
                }
                Step::MemoOpen => actions.push(Action::SetMark { r }),
                Step::Marked => actions.push(Action::ReadState { r }),
                Step::TakingBack => {
                    if unlocked(q.memo) {
                        actions.push(Action::TakeBack { r });
                    }
                }
                Step::Forgetting => {
                    if unlocked(q.memo) {
                        actions.push(Action::Forget { r });
                    }
                }
                Step::ToMap { key } => {
                    if !s.locks[usize::from(key)].writer {
                        actions.push(Action::EnterMap { r });
                    }
                }
            }
        }
        for (i, runner) in s.runners.iter().enumerate() {
            let i = i as u8;
            let key = usize::from(s.slots[usize::from(runner.slot)].key);
            match runner.phase {
                Phase::Ready => actions.push(Action::Begin { i }),
                Phase::Due => actions.push(Action::TakeTicket { i }),
                Phase::Waiting => {}
                Phase::Running => {
                    actions.push(Action::Finish { i, panicked: false });
                    if self.panics {
                        actions.push(Action::Finish { i, panicked: true });
                    }
                    // The policy may retry (within its bound, and not a
                    // cycle that began while closing) — or give up, which
                    // is `Finish { panicked: true }`.
                    if self.retries > 0 && !runner.last_chance && runner.failures < self.retries {
                        actions.push(Action::FailAndRetry { i });
                    }
                }
                Phase::Ended => actions.push(Action::GoIdle { i }),
                Phase::Dying if self.marks => actions.push(Action::Check { i }),
                Phase::Dying | Phase::Checked => actions.push(Action::Die { i }),
                Phase::Reviving => actions.push(Action::Revive { i }),
                Phase::SawNothingPending => actions.push(Action::ClearRunning { i }),
                Phase::WentIdle => {
                    if s.locks[key].free() {
                        actions.push(Action::Reclaim { i });
                    }
                }
                Phase::Exited { .. } => {}
            }
        }
        if self.protocol == Protocol::Coalescer && self.shutdown {
            match s.shutdown {
                Shutdown::NotStarted => actions.push(Action::Close),
                Shutdown::Closing { barrier } => {
                    if s.locks[usize::from(barrier)].free() {
                        actions.push(Action::Barrier);
                    }
                }
                Shutdown::Joining => {
                    if s.runners.iter().all(|r| !r.active()) {
                        actions.push(Action::Join);
                    }
                }
                Shutdown::Done => {}
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = self.step(last, action)?;
        normalize(&mut s);
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        properties::all(self)
    }

    fn format_action(&self, action: &Action) -> String {
        format!("{action:?}")
    }
}
