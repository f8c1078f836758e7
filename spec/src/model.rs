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

use std::fmt::{self, Write as _};
use std::time::{Duration, Instant};

use stateright::{Checker, Expectation, Model, Path, Property};

use crate::state;

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
    /// Whether a cycle may panic.
    pub panics: bool,
    /// Whether a shutdown may happen, at any point (ignored for Go, which has
    /// no shutdown).
    pub shutdown: bool,
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
            panics: true,
            shutdown: true,
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
}

/// One requester thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Requester {
    /// Requests invoked so far (the current one included).
    pub issued: u8,
    /// Where the current request is.
    pub step: Step,
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
    /// About to `begin` a cycle.
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
    },
    /// Runner `i`'s `begin` (the cycle starts).
    Begin {
        /// The runner.
        i: u8,
    },
    /// Runner `i`'s cycle returns, or panics.
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
    /// Coalescer: dying runner `i` checks the marks and, if none is set,
    /// tries the `die` compare-exchange.
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

/// Marks request `id` accepted into slot `slot`.
fn accept(s: &mut State, id: usize, slot: usize) {
    s.requests[id].fate = Fate::Owed;
    s.slots[slot].owed |= 1 << id;
    if s.shutdown == Shutdown::Done {
        s.ghost.accepted_after_shutdown = true;
    } else if s.closed {
        s.ghost.accepted_while_closing = true;
    }
}

fn reject(s: &mut State, id: usize, r: usize) {
    s.requests[id].fate = Fate::Rejected;
    s.requesters[r].step = Step::Idle;
    s.ghost.rejected = true;
}

/// Starts a runner for a fresh slot of `key` owed request `id`.
fn start(s: &mut State, key: u8, word: u64, id: usize) -> u8 {
    let slot = s.slots.len();
    s.slots.push(Slot { key, word, owed: 0 });
    accept(s, id, slot);
    s.runners.push(Runner {
        slot: slot as u8,
        phase: Phase::Ready,
        after: 0,
    });
    if s.ghost.reclaimed & (1 << key) != 0 {
        s.ghost.recreated = true;
    }
    slot as u8
}

/// Runner `i` stops. If its slot still owes a request a cycle and no other
/// runner of the slot is active, that request is stranded.
fn exit(s: &mut State, i: usize, by_panic: bool) {
    s.runners[i].phase = Phase::Exited { by_panic };
    let slot = s.runners[i].slot;
    let others = s.runners.iter().any(|r| r.slot == slot && r.active());
    if s.slots[usize::from(slot)].owed != 0 && !others {
        if by_panic {
            s.ghost.stranded_by_panic = true;
        } else {
            s.ghost.stranded_by_stop = true;
        }
    }
}

/// Forgets what can no longer matter — stopped runners, and slots neither in
/// the map nor driven by a runner — and puts the rest in a canonical order,
/// so that states differing only in their dead history are one state.
fn normalize(s: &mut State) {
    let mut runners = std::mem::take(&mut s.runners);
    runners.retain(|r| r.active());
    let key_of = |r: &Runner| s.slots[usize::from(r.slot)].key;
    let word_of = |r: &Runner| s.slots[usize::from(r.slot)].word;
    runners.sort_by_key(|r| (key_of(r), word_of(r), r.after, phase_rank(r.phase)));
    // Slots in canonical order: per key, the one in the map, then those of
    // its runners in runner order.
    let mut order: Vec<u8> = Vec::new();
    for k in 0..s.map.len() {
        let of_key = runners
            .iter()
            .filter(|r| usize::from(key_of(r)) == k)
            .map(|r| r.slot);
        for old in s.map[k].into_iter().chain(of_key) {
            if !order.contains(&old) {
                order.push(old);
            }
        }
    }
    let renumber = |old: u8| order.iter().position(|&o| o == old).map(|n| n as u8);
    for r in &mut runners {
        r.slot = renumber(r.slot).unwrap_or(u8::MAX);
    }
    for m in &mut s.map {
        *m = m.and_then(renumber);
    }
    s.slots = order.iter().map(|&o| s.slots[usize::from(o)]).collect();
    s.runners = runners;
}

/// The representative of `s` under renaming the requesters (which are
/// interchangeable): requesters sorted by what they have done, their
/// requests' ghost records and the slots' owed sets renamed to match.
pub fn representative(s: &State) -> State {
    let n = s.requesters.len();
    if n == 0 {
        return s.clone();
    }
    let each = s.requests.len() / n;
    let mine = |r: usize| &s.requests[r * each..(r + 1) * each];
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| {
        let ka = (s.requesters[a].issued, step_rank(s.requesters[a].step));
        let kb = (s.requesters[b].issued, step_rank(s.requesters[b].step));
        ka.cmp(&kb).then_with(|| {
            let ra = mine(a).iter().map(request_rank);
            let rb = mine(b).iter().map(request_rank);
            ra.cmp(rb)
        })
    });
    let mut out = s.clone();
    // `order[new] = old`: where each old request id goes.
    let mut to_new = vec![0usize; s.requests.len()];
    for (new, &old) in order.iter().enumerate() {
        out.requesters[new] = s.requesters[old];
        for i in 0..each {
            out.requests[new * each + i] = s.requests[old * each + i];
            to_new[old * each + i] = new * each + i;
        }
    }
    for slot in &mut out.slots {
        let mut owed = 0u16;
        for (old, &new) in to_new.iter().enumerate() {
            if slot.owed & (1 << old) != 0 {
                owed |= 1 << new;
            }
        }
        slot.owed = owed;
    }
    out
}

fn step_rank(step: Step) -> (u8, u8) {
    match step {
        Step::Idle => (0, 0),
        Step::ReadLocked { key } => (1, key),
        Step::NeedsWrite { key } => (2, key),
        Step::WriteLocked { key } => (3, key),
    }
}

fn request_rank(r: &Request) -> (u8, u8, bool) {
    let fate = match r.fate {
        Fate::NotInvoked => 0,
        Fate::InFlight => 1,
        Fate::Rejected => 2,
        Fate::Owed => 3,
        Fate::Covered => 4,
    };
    (r.key, fate, r.during_panic)
}

fn phase_rank(p: Phase) -> u8 {
    match p {
        Phase::Ready => 0,
        Phase::Running => 1,
        Phase::Ended => 2,
        Phase::SawNothingPending => 3,
        Phase::Dying => 4,
        Phase::Reviving => 5,
        Phase::WentIdle => 6,
        Phase::Exited { by_panic } => 7 + u8::from(by_panic),
    }
}

/// Runner `i` begins a cycle: the ghost owed set is what it covers.
fn cover(s: &mut State, i: usize) {
    let slot = usize::from(s.runners[i].slot);
    let owed = std::mem::take(&mut s.slots[slot].owed);
    if owed == 0 {
        s.ghost.spurious_cycle = true;
    }
    for (id, req) in s.requests.iter_mut().enumerate() {
        if owed & (1 << id) != 0 {
            req.fate = Fate::Covered;
            if req.during_panic {
                s.ghost.panic_follow_up = true;
            }
        }
    }
    if s.shutdown == Shutdown::Done {
        s.ghost.cycle_after_shutdown = true;
    }
    s.runners[i].phase = Phase::Running;
}

impl Spec {
    /// One atomic step, on the raw state (runner and slot indices are those
    /// of `last`); `next_state` then normalizes.
    fn step(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match (self.protocol, action) {
            (Protocol::Coalescer, Action::Request { r, key }) => {
                let ru = usize::from(r);
                s.requesters[ru].issued += 1;
                let id = self.current(&s, r);
                s.requests[id].key = key;
                s.requests[id].fate = Fate::InFlight;
                // Under the read lock: `closed` first.
                if s.closed {
                    reject(&mut s, id, ru);
                } else {
                    s.locks[usize::from(key)].readers += 1;
                    s.requesters[ru].step = Step::ReadLocked { key };
                }
            }
            (Protocol::Coalescer, Action::FastPath { r }) => {
                let ru = usize::from(r);
                let Step::ReadLocked { key } = s.requesters[ru].step else {
                    return None;
                };
                let id = self.current(&s, r);
                s.locks[usize::from(key)].readers -= 1;
                s.requesters[ru].step = Step::NeedsWrite { key };
                if let Some(slot) = s.map[usize::from(key)] {
                    let slot = usize::from(slot);
                    let prev = s.slots[slot].word;
                    s.slots[slot].word = state::request(prev);
                    if let state::Requested::Coalesced { .. } = state::requested(prev) {
                        accept(&mut s, id, slot);
                        s.ghost.coalesced = true;
                        s.requesters[ru].step = Step::Idle;
                    }
                }
            }
            (Protocol::Coalescer, Action::LockForWrite { r }) => {
                let ru = usize::from(r);
                let Step::NeedsWrite { key } = s.requesters[ru].step else {
                    return None;
                };
                let id = self.current(&s, r);
                if s.closed {
                    reject(&mut s, id, ru);
                } else {
                    s.locks[usize::from(key)].writer = true;
                    s.requesters[ru].step = Step::WriteLocked { key };
                }
            }
            (Protocol::Coalescer, Action::SlowPath { r }) => {
                let ru = usize::from(r);
                let Step::WriteLocked { key } = s.requesters[ru].step else {
                    return None;
                };
                let id = self.current(&s, r);
                let k = usize::from(key);
                s.locks[k].writer = false;
                s.requesters[ru].step = Step::Idle;
                if let Some(slot) = s.map[k] {
                    let slot = usize::from(slot);
                    let prev = s.slots[slot].word;
                    s.slots[slot].word = state::request(prev);
                    if let state::Requested::Coalesced { .. } = state::requested(prev) {
                        accept(&mut s, id, slot);
                        s.ghost.coalesced = true;
                        return Some(s);
                    }
                    s.ghost.replaced_dead_slot = true;
                }
                let slot = start(&mut s, key, state::FRESH, id);
                s.map[k] = Some(slot);
            }
            (Protocol::Coalescer, Action::Begin { i }) => {
                let iu = usize::from(i);
                let slot = usize::from(s.runners[iu].slot);
                let prev = s.slots[slot].word;
                if !(state::is_live(prev) && state::is_pending(prev)) {
                    return None; // `state::begin` would panic: never enabled
                }
                let after = state::begin(prev);
                s.slots[slot].word = after;
                s.runners[iu].after = after;
                cover(&mut s, iu);
            }
            (_, Action::Finish { i, panicked }) => {
                let iu = usize::from(i);
                let slot = usize::from(s.runners[iu].slot);
                if panicked {
                    // The requests owed now arrived during this cycle: the
                    // ones a panic must not strand (D2).
                    let owed = s.slots[slot].owed;
                    for (id, req) in s.requests.iter_mut().enumerate() {
                        if owed & (1 << id) != 0 {
                            req.during_panic = true;
                        }
                    }
                }
                match self.protocol {
                    // A panicking cycle ends through the same path.
                    Protocol::Coalescer => s.runners[iu].phase = Phase::Ended,
                    // D2: the deferred handler clears `running` and stops,
                    // leaving `pending` as it is.
                    Protocol::Go if panicked => {
                        s.slots[slot].word &= !GO_RUNNING;
                        exit(&mut s, iu, true);
                    }
                    Protocol::Go => s.runners[iu].phase = Phase::Ended,
                }
            }
            (Protocol::Coalescer, Action::GoIdle { i }) => {
                let iu = usize::from(i);
                let slot = usize::from(s.runners[iu].slot);
                let (from, to) = state::dying(s.runners[iu].after);
                if s.slots[slot].word == from {
                    s.slots[slot].word = to;
                    s.runners[iu].phase = Phase::Dying;
                    s.runners[iu].after = to;
                } else {
                    s.runners[iu].phase = Phase::Ready;
                }
            }
            (Protocol::Coalescer, Action::Die { i }) => {
                let iu = usize::from(i);
                let slot = usize::from(s.runners[iu].slot);
                let (from, to) = state::die(s.runners[iu].after);
                if s.slots[slot].word == from {
                    s.slots[slot].word = to;
                    s.runners[iu].phase = Phase::WentIdle;
                } else {
                    s.runners[iu].phase = Phase::Reviving;
                }
            }
            (Protocol::Coalescer, Action::Revive { i }) => {
                let iu = usize::from(i);
                let slot = usize::from(s.runners[iu].slot);
                s.slots[slot].word = state::revive(s.slots[slot].word);
                s.runners[iu].phase = Phase::Ready;
            }
            (Protocol::Coalescer, Action::Reclaim { i }) => {
                let iu = usize::from(i);
                let slot = s.runners[iu].slot;
                let key = usize::from(s.slots[usize::from(slot)].key);
                if s.map[key] == Some(slot) {
                    s.map[key] = None;
                    s.ghost.reclaimed |= 1 << key;
                }
                exit(&mut s, iu, false);
            }
            (Protocol::Coalescer, Action::Close) => {
                s.closed = true;
                s.shutdown = Shutdown::Closing { barrier: 0 };
            }
            (Protocol::Coalescer, Action::Barrier) => {
                let Shutdown::Closing { barrier } = s.shutdown else {
                    return None;
                };
                s.shutdown = if barrier + 1 == self.keys {
                    Shutdown::Joining
                } else {
                    Shutdown::Closing {
                        barrier: barrier + 1,
                    }
                };
            }
            (Protocol::Coalescer, Action::Join) => s.shutdown = Shutdown::Done,

            (Protocol::Go, Action::Request { r, key }) => {
                let ru = usize::from(r);
                s.requesters[ru].issued += 1;
                let id = self.current(&s, r);
                s.requests[id].key = key;
                let k = usize::from(key);
                // The entry is created on first use and never removed (D4).
                let slot = match s.map[k] {
                    Some(slot) => usize::from(slot),
                    None => {
                        s.slots.push(Slot {
                            key,
                            word: 0,
                            owed: 0,
                        });
                        s.map[k] = Some((s.slots.len() - 1) as u8);
                        s.slots.len() - 1
                    }
                };
                if s.slots[slot].word & GO_RUNNING != 0 {
                    s.slots[slot].word |= GO_PENDING;
                    accept(&mut s, id, slot);
                    s.ghost.coalesced = true;
                } else {
                    s.slots[slot].word |= GO_RUNNING;
                    accept(&mut s, id, slot);
                    s.runners.push(Runner {
                        slot: slot as u8,
                        phase: Phase::Ready,
                        after: 0,
                    });
                }
            }
            (Protocol::Go, Action::Begin { i }) => cover(&mut s, usize::from(i)),
            (Protocol::Go, Action::GoIdle { i }) => {
                // First critical section: p := pending; pending = false.
                let iu = usize::from(i);
                let slot = usize::from(s.runners[iu].slot);
                let pending = s.slots[slot].word & GO_PENDING != 0;
                s.slots[slot].word &= !GO_PENDING;
                s.runners[iu].phase = if pending {
                    Phase::Ready
                } else {
                    Phase::SawNothingPending
                };
            }
            (Protocol::Go, Action::ClearRunning { i }) => {
                // Second critical section: running = false (D1 in between).
                let iu = usize::from(i);
                let slot = usize::from(s.runners[iu].slot);
                s.slots[slot].word &= !GO_RUNNING;
                exit(&mut s, iu, false);
            }
            _ => return None,
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
            requesters: vec![
                Requester {
                    issued: 0,
                    step: Step::Idle
                };
                usize::from(self.requesters)
            ],
            locks: vec![Lock::default(); keys],
            map: vec![None; keys],
            slots: Vec::new(),
            runners: Vec::new(),
            closed: false,
            shutdown: Shutdown::NotStarted,
            requests: vec![
                Request {
                    key: 0,
                    fate: Fate::NotInvoked,
                    during_panic: false,
                };
                self.requests()
            ],
            ghost: Ghost::default(),
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        for (r, q) in s.requesters.iter().enumerate() {
            let r = r as u8;
            match q.step {
                Step::Idle if q.issued < self.requests_each => {
                    for key in 0..self.keys {
                        // Taking the read lock waits for a writer.
                        if self.protocol == Protocol::Go || !s.locks[usize::from(key)].writer {
                            actions.push(Action::Request { r, key });
                        }
                    }
                }
                Step::Idle => {}
                Step::ReadLocked { .. } => actions.push(Action::FastPath { r }),
                Step::NeedsWrite { key } => {
                    if s.locks[usize::from(key)].free() {
                        actions.push(Action::LockForWrite { r });
                    }
                }
                Step::WriteLocked { .. } => actions.push(Action::SlowPath { r }),
            }
        }
        for (i, runner) in s.runners.iter().enumerate() {
            let i = i as u8;
            let key = usize::from(s.slots[usize::from(runner.slot)].key);
            match runner.phase {
                Phase::Ready => actions.push(Action::Begin { i }),
                Phase::Running => {
                    actions.push(Action::Finish { i, panicked: false });
                    if self.panics {
                        actions.push(Action::Finish { i, panicked: true });
                    }
                }
                Phase::Ended => actions.push(Action::GoIdle { i }),
                Phase::Dying => actions.push(Action::Die { i }),
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
        vec![
            Property::always("INV-1 at most one cycle of a key runs at a time", |_, s: &State| {
                (0..s.map.len()).all(|k| {
                    s.runners
                        .iter()
                        .filter(|r| {
                            r.phase == Phase::Running && usize::from(s.slots[usize::from(r.slot)].key) == k
                        })
                        .count()
                        <= 1
                })
            }),
            Property::always("INV-1 at most one live runner per key", |m: &Spec, s: &State| {
                (0..s.map.len()).all(|k| {
                    s.runners
                        .iter()
                        .filter(|r| {
                            usize::from(s.slots[usize::from(r.slot)].key) == k
                                && live_runner(m, s, r)
                        })
                        .count()
                        <= 1
                })
            }),
            Property::always(
                "INV-2 no accepted request is stranded by a runner that stops",
                |_, s: &State| !s.ghost.stranded_by_stop,
            ),
            Property::always(
                "INV-2 quiescent implies every accepted request is covered",
                |_, s: &State| !quiescent(s) || all_covered(s),
            ),
            Property::always(
                "INV-3 no request is stranded by a panicking cycle",
                |_, s: &State| !s.ghost.stranded_by_panic,
            ),
            Property::always(
                "INV-5 no cycle begins and no request is accepted after shutdown returned",
                |_, s: &State| !s.ghost.cycle_after_shutdown && !s.ghost.accepted_after_shutdown,
            ),
            Property::always(
                "INV-5 when shutdown returns every accepted request is covered and every runner stopped",
                |_, s: &State| {
                    s.shutdown != Shutdown::Done
                        || (all_covered(s) && s.runners.iter().all(|r| !r.active()))
                },
            ),
            Property::always("INV-6 quiescent implies no slot in the map", |_, s: &State| {
                !quiescent(s) || s.map.iter().all(Option::is_none)
            }),
            Property::always("INV-7 every cycle covers at least one request", |_, s: &State| {
                !s.ghost.spurious_cycle
            }),
            Property::sometimes("a request is coalesced", |_, s: &State| s.ghost.coalesced),
            Property::sometimes(
                "a request during a panicking cycle gets its follow-up",
                |_, s: &State| s.ghost.panic_follow_up,
            ),
            Property::sometimes(
                "a request racing shutdown is accepted and drained",
                |_, s: &State| s.ghost.accepted_while_closing && s.shutdown == Shutdown::Done,
            ),
            Property::sometimes("a request is rejected by shutdown", |_, s: &State| {
                s.ghost.rejected
            }),
            Property::sometimes("a key is reclaimed and re-created", |_, s: &State| {
                s.ghost.recreated
            }),
            Property::sometimes(
                "a request replaces a dead slot before its runner removed it",
                |_, s: &State| s.ghost.replaced_dead_slot,
            ),
        ]
    }

    fn format_action(&self, action: &Action) -> String {
        format!("{action:?}")
    }
}

/// Whether runner `r` owns a live slot (coalescer) or is a goroutine that has
/// not stopped (Go).
fn live_runner(m: &Spec, s: &State, r: &Runner) -> bool {
    match m.protocol {
        Protocol::Coalescer => r.active() && state::is_live(s.slots[usize::from(r.slot)].word),
        Protocol::Go => r.active(),
    }
}

/// No requester is inside a request, no runner is active, and no shutdown is
/// half done.
fn quiescent(s: &State) -> bool {
    s.requesters.iter().all(|r| r.step == Step::Idle)
        && s.runners.iter().all(|r| !r.active())
        && matches!(s.shutdown, Shutdown::NotStarted | Shutdown::Done)
}

fn all_covered(s: &State) -> bool {
    s.requests.iter().all(|r| r.fate != Fate::Owed)
}

/// The outcome of one exhaustive check.
#[derive(Debug, Clone)]
pub struct Run {
    /// What was checked.
    pub spec: Spec,
    /// Distinct states explored.
    pub states: usize,
    /// States generated, duplicates included.
    pub generated: usize,
    /// The longest path explored, in steps.
    pub max_depth: usize,
    /// Wall time of the check.
    pub elapsed: Duration,
    /// Every `always` property that failed, with its shortest counterexample
    /// as a readable trace.
    pub counterexamples: Vec<(&'static str, String)>,
    /// Every `sometimes` property that was never reached (a vacuous model).
    pub unreached: Vec<&'static str>,
    /// Every `sometimes` property that was reached.
    pub reached: Vec<&'static str>,
}

impl Run {
    /// No counterexample, and every `sometimes` property reached.
    pub fn holds(&self) -> bool {
        self.counterexamples.is_empty() && self.unreached.is_empty()
    }

    /// The trace of the counterexample to the property whose name starts
    /// with `prefix`, if one was found.
    pub fn counterexample(&self, prefix: &str) -> Option<&str> {
        self.counterexamples
            .iter()
            .find(|(name, _)| name.starts_with(prefix))
            .map(|(_, trace)| trace.as_str())
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "spec {:?} ({} keys, {} requesters x {} requests, panics: {}, shutdown: {}): \
             {} distinct states ({} generated), max depth {}, {:.1} s",
            self.spec.protocol,
            self.spec.keys,
            self.spec.requesters,
            self.spec.requests_each,
            self.spec.panics,
            self.spec.shutdown && self.spec.protocol == Protocol::Coalescer,
            self.states,
            self.generated,
            self.max_depth,
            self.elapsed.as_secs_f64()
        )?;
        for name in &self.reached {
            writeln!(f, "  reached:   {name}")?;
        }
        for name in &self.unreached {
            writeln!(f, "  UNREACHED: {name}")?;
        }
        for (name, trace) in &self.counterexamples {
            writeln!(f, "  VIOLATED:  {name}; shortest counterexample:\n{trace}")?;
        }
        Ok(())
    }
}

/// Checks `spec` exhaustively (depth first, on every core) and reports;
/// each counterexample is then searched again breadth first with a growing
/// depth bound, so the trace reported is a shortest one.
pub fn run(spec: Spec) -> Run {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = Instant::now();
    let checker = spec
        .clone()
        .checker()
        .threads(threads)
        .symmetry_fn(representative)
        .spawn_dfs()
        .join();
    let elapsed = started.elapsed();
    let mut run = Run {
        spec: spec.clone(),
        states: checker.unique_state_count(),
        generated: checker.state_count(),
        max_depth: checker.max_depth(),
        elapsed,
        counterexamples: Vec::new(),
        unreached: Vec::new(),
        reached: Vec::new(),
    };
    for property in spec.properties() {
        let found = checker.discovery(property.name).is_some();
        match (property.expectation, found) {
            (Expectation::Sometimes, true) => run.reached.push(property.name),
            (Expectation::Sometimes, false) => run.unreached.push(property.name),
            (_, true) => {
                let path = shortest(&spec, property.name, run.max_depth)
                    .or_else(|| checker.discovery(property.name));
                let shown = path.map_or_else(String::new, |p| trace(&spec, &p));
                run.counterexamples.push((property.name, shown));
            }
            (_, false) => {}
        }
    }
    run
}

/// A shortest path to a discovery for `name`: breadth first with the depth
/// bound raised one step at a time, up to `max_depth`. (Stateright's own
/// breadth-first checker keeps the *last* discovery it makes, not the
/// first.)
fn shortest(spec: &Spec, name: &'static str, max_depth: usize) -> Option<Path<State, Action>> {
    for depth in 2..=max_depth + 1 {
        let checker = spec
            .clone()
            .checker()
            .target_max_depth(depth)
            .finish_when(stateright::HasDiscoveries::AnyOf([name].into()))
            .spawn_bfs()
            .join();
        if let Some(path) = checker.discovery(name) {
            return Some(path);
        }
    }
    None
}

/// Serves stateright's Explorer for `spec` on `address` (blocks).
pub fn explore(spec: Spec, address: &str) {
    let _checker = spec.checker().serve(address);
}

/// A counterexample or example as numbered steps, one action per line with
/// what it changed, for people to read.
pub fn trace(spec: &Spec, path: &Path<State, Action>) -> String {
    let mut out = String::new();
    let steps = path.clone().into_vec();
    for (n, pair) in steps.windows(2).enumerate() {
        let (before, action) = &pair[0];
        let (after, _) = &pair[1];
        let Some(action) = action else { continue };
        // Described on the step before normalization, whose runner and slot
        // numbers are still those of `before`.
        let raw = spec.step(before, *action).unwrap_or_else(|| after.clone());
        let _ = writeln!(
            out,
            "{:>3}. {}",
            n + 1,
            describe(spec, before, *action, &raw)
        );
    }
    out
}

/// One step in words.
fn describe(spec: &Spec, before: &State, action: Action, after: &State) -> String {
    let word = |s: &State, slot: u8| Word(spec.protocol, s.slots[usize::from(slot)].word);
    let fate = |r: u8| {
        let id = spec.current(after, r);
        match after.requests[id].fate {
            Fate::Owed if after.requesters[usize::from(r)].step == Step::Idle => {
                format!("request #{id} accepted")
            }
            Fate::Rejected => format!("request #{id} rejected (closed)"),
            _ => format!("request #{id} continues"),
        }
    };
    let runner_slot = |i: u8| after.runners[usize::from(i)].slot;
    let runner_key = |i: u8| after.slots[usize::from(runner_slot(i))].key;
    match action {
        Action::Request { r, key } if spec.protocol == Protocol::Go => {
            let slot = after.map[usize::from(key)].unwrap_or(0);
            let started = after.runners.len() > before.runners.len();
            format!(
                "requester {r} requests key {key}: {} → {}; {}",
                if started {
                    "not running, starts a runner"
                } else {
                    "running, sets pending"
                },
                word(after, slot),
                fate(r)
            )
        }
        Action::Request { r, key } => format!(
            "requester {r} requests key {key}: read lock, `closed` is {}; {}",
            before.closed,
            fate(r)
        ),
        Action::FastPath { r } => {
            let Step::ReadLocked { key } = before.requesters[usize::from(r)].step else {
                return format!("{action:?}");
            };
            match after.map[usize::from(key)] {
                Some(slot) => format!(
                    "requester {r}: fetch_or(PENDING) on key {key}'s slot: {} → {}; {}",
                    word(before, slot),
                    word(after, slot),
                    fate(r)
                ),
                None => format!("requester {r}: no slot for key {key}; goes to the slow path"),
            }
        }
        Action::LockForWrite { r } => format!(
            "requester {r}: write lock, `closed` is {}; {}",
            before.closed,
            fate(r)
        ),
        Action::SlowPath { r } => {
            let started = after.runners.len() > before.runners.len();
            if started {
                format!(
                    "requester {r}: creates a fresh slot and starts runner {}; {}",
                    after.runners.len() - 1,
                    fate(r)
                )
            } else {
                format!("requester {r}: joins the live slot; {}", fate(r))
            }
        }
        Action::Begin { i } => format!(
            "runner {i} (key {}) begins a cycle: {} → {}; covers {}",
            runner_key(i),
            word(before, runner_slot(i)),
            word(after, runner_slot(i)),
            owed(before.slots[usize::from(runner_slot(i))].owed)
        ),
        Action::Finish { i, panicked } => {
            let how = if panicked { "panics" } else { "returns" };
            match after.runners[usize::from(i)].phase {
                Phase::Exited { .. } => format!(
                    "runner {i}'s cycle {how}; its panic handler clears running and stops: {} \
                     (still owed: {})",
                    word(after, runner_slot(i)),
                    owed(after.slots[usize::from(runner_slot(i))].owed)
                ),
                _ => format!("runner {i}'s cycle {how}"),
            }
        }
        Action::GoIdle { i } => {
            let went = match after.runners[usize::from(i)].phase {
                Phase::Dying => "no request since begin: dying",
                Phase::SawNothingPending => "saw pending clear, leaves the critical section",
                _ => "a request is pending: will begin again",
            };
            format!(
                "runner {i} tries to go idle: {} → {}; {went}",
                word(before, runner_slot(i)),
                word(after, runner_slot(i))
            )
        }
        Action::Die { i } => {
            let went = match after.runners[usize::from(i)].phase {
                Phase::WentIdle => "no request: slot dead",
                _ => "a request came: will revive",
            };
            format!(
                "runner {i} tries to kill its dying slot: {} → {}; {went}",
                word(before, runner_slot(i)),
                word(after, runner_slot(i))
            )
        }
        Action::Revive { i } => format!(
            "runner {i} revives its slot: {} → {}",
            word(before, runner_slot(i)),
            word(after, runner_slot(i))
        ),
        Action::ClearRunning { i } => format!(
            "runner {i} clears running and stops: {} (still owed: {})",
            word(after, runner_slot(i)),
            owed(after.slots[usize::from(runner_slot(i))].owed)
        ),
        Action::Reclaim { i } => format!("runner {i} removes its dead slot and stops"),
        Action::Close => "shutdown sets `closed`".to_owned(),
        Action::Barrier => "shutdown's barrier passes a shard lock".to_owned(),
        Action::Join => "shutdown joins every runner and returns".to_owned(),
    }
}

fn owed(mask: u16) -> String {
    let ids: Vec<String> = (0..16)
        .filter(|i| mask & (1 << i) != 0)
        .map(|i| format!("#{i}"))
        .collect();
    if ids.is_empty() {
        "nothing".to_owned()
    } else {
        ids.join(", ")
    }
}

/// A state word, shown as its flags and cycle count.
struct Word(Protocol, u64);

impl fmt::Display for Word {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Word(protocol, w) = *self;
        match protocol {
            Protocol::Coalescer => write!(
                f,
                "[{}{}{} c{}]",
                if state::is_live(w) { "R" } else { "-" },
                if state::is_pending(w) { "P" } else { "-" },
                if state::is_dying(w) { "D" } else { "-" },
                state::cycles_begun(w)
            ),
            Protocol::Go => write!(
                f,
                "{{running: {}, pending: {}}}",
                w & GO_RUNNING != 0,
                w & GO_PENDING != 0
            ),
        }
    }
}
