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

/// Marks request `id` accepted into slot `slot`, with the requests its
/// requester carries from a mark it took back (request `id` comes after
/// them, so the cycle that covers it covers them).
fn accept(s: &mut State, id: usize, slot: usize) {
    let r = id / (s.requests.len() / s.requesters.len());
    let carried = std::mem::take(&mut s.requesters[r].carried);
    s.slots[slot].owed |= carried | 1 << id;
    accepted(s, id);
}

/// Request `id` returns accepted: owed a cycle — unless one already covered
/// it (a runner consumed its mark and began): then it was accepted when it
/// set its mark, and this is only its return.
fn accepted(s: &mut State, id: usize) {
    if s.requests[id].fate == Fate::Covered {
        return;
    }
    s.requests[id].fate = Fate::Owed;
    if s.shutdown == Shutdown::Done {
        s.ghost.accepted_after_shutdown = true;
    } else if s.closed {
        s.ghost.accepted_while_closing = true;
    }
}

/// The current request of requester `r` is rejected; requests it carried
/// from a taken-back mark are dropped with it (and stay owed: the
/// properties then report them).
fn reject(s: &mut State, id: usize, r: usize) {
    s.requests[id].fate = Fate::Rejected;
    s.requesters[r].step = Step::Idle;
    s.requesters[r].carried = 0;
    s.ghost.rejected = true;
}

/// Requester `r`'s request `id` enters the map: it takes `key`'s shard read
/// lock and reads `closed` under it (rejected if set).
fn enter_map(s: &mut State, id: usize, r: usize, key: u8) {
    if s.closed {
        reject(s, id, r);
    } else {
        s.locks[usize::from(key)].readers += 1;
        s.requesters[r].step = Step::ReadLocked { key };
    }
}

/// Consumes every mark registered with `slot`: the requests they carry.
fn consume(s: &mut State, slot: u8) -> u16 {
    s.requesters
        .iter_mut()
        .filter(|q| q.memo == Some(slot))
        .fold(0, |ids, q| ids | std::mem::take(&mut q.mark))
}

/// Whether requester `r`'s memo holds `key` (its request takes the memo
/// path).
fn memo_holds(s: &State, r: usize, key: u8) -> bool {
    s.requesters[r]
        .memo
        .is_some_and(|slot| s.slots[usize::from(slot)].key == key)
}

/// `Slot::unwatch` of requester `r`'s memo, under the slot's lock: a mark
/// still set is taken back and made again as a plain request. (That
/// request was accepted while the slot was live; if the slot is dead now,
/// the properties report it as never covered.)
fn unwatch(s: &mut State, r: usize) {
    let Some(slot) = s.requesters[r].memo.take() else {
        return;
    };
    let ids = std::mem::take(&mut s.requesters[r].mark);
    if ids != 0 {
        s.ghost.reasserted = true;
        let su = usize::from(slot);
        let prev = s.slots[su].word;
        s.slots[su].word = state::request(prev);
        if let state::Requested::Coalesced { .. } = state::requested(prev) {
            s.slots[su].owed |= ids;
        }
    }
}

/// Whether a runner holds `slot`'s lock between its check and `Die`.
fn slot_locked(s: &State, slot: u8) -> bool {
    s.runners
        .iter()
        .any(|r| r.slot == slot && r.phase == Phase::Checked)
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
    // A set mark may belong to a request still in flight (it will take the
    // mark back); one that belongs to an accepted request is stranded.
    let marked_owed = s
        .requesters
        .iter()
        .filter(|q| q.memo == Some(slot))
        .fold(0, |ids, q| ids | q.mark);
    let marked_owed = (0..s.requests.len())
        .any(|id| marked_owed & (1 << id) != 0 && s.requests[id].fate == Fate::Owed);
    if (s.slots[usize::from(slot)].owed != 0 || marked_owed) && !others {
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
    // its runners in runner order, then those only requesters still refer
    // to (a memo, or a slot about to become one), in requester order.
    let held = |q: &Requester| {
        let remembering = match q.step {
            Step::Remembering { slot } => Some(slot),
            _ => None,
        };
        q.memo.into_iter().chain(remembering)
    };
    let mut order: Vec<u8> = Vec::new();
    for k in 0..s.map.len() {
        let of_key = runners
            .iter()
            .filter(|r| usize::from(key_of(r)) == k)
            .map(|r| r.slot);
        let held_of_key = s
            .requesters
            .iter()
            .flat_map(held)
            .filter(|&slot| usize::from(s.slots[usize::from(slot)].key) == k);
        for old in s.map[k].into_iter().chain(of_key).chain(held_of_key) {
            if !order.contains(&old) {
                order.push(old);
            }
        }
    }
    let renumber = |old: u8| order.iter().position(|&o| o == old).map(|n| n as u8);
    for r in &mut runners {
        r.slot = renumber(r.slot).unwrap_or(u8::MAX);
    }
    for q in &mut s.requesters {
        q.memo = q.memo.and_then(renumber);
        if let Step::Remembering { slot } = &mut q.step {
            *slot = renumber(*slot).unwrap_or(u8::MAX);
        }
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
    // The first key keeps requesters of larger budget first, as built.
    let key = |q: &Requester| {
        (
            std::cmp::Reverse(q.budget),
            q.issued,
            step_rank(q.step),
            q.memo,
            q.mark != 0,
        )
    };
    order.sort_by(|&a, &b| {
        let ka = key(&s.requesters[a]);
        let kb = key(&s.requesters[b]);
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
    let rename = |ids: u16| {
        to_new
            .iter()
            .enumerate()
            .filter(|&(old, _)| ids & (1 << old) != 0)
            .fold(0u16, |acc, (_, &new)| acc | 1 << new)
    };
    for slot in &mut out.slots {
        slot.owed = rename(slot.owed);
    }
    for q in &mut out.requesters {
        q.mark = rename(q.mark);
        q.carried = rename(q.carried);
    }
    out
}

fn step_rank(step: Step) -> (u8, u8) {
    match step {
        Step::Idle => (0, 0),
        Step::ReadLocked { key } => (1, key),
        Step::NeedsWrite { key } => (2, key),
        Step::WriteLocked { key } => (3, key),
        Step::Remembering { slot } => (4, slot),
        Step::MemoOpen => (5, 0),
        Step::Marked => (6, 0),
        Step::TakingBack => (7, 0),
        Step::Forgetting => (8, 0),
        Step::ToMap { key } => (9, key),
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
        Phase::Checked => 5,
        Phase::Reviving => 6,
        Phase::WentIdle => 7,
        Phase::Exited { by_panic } => 8 + u8::from(by_panic),
    }
}

/// Runner `i` begins a cycle: it covers the slot's ghost owed set and the
/// requests of every mark it consumes.
fn cover(s: &mut State, i: usize) {
    let slot = usize::from(s.runners[i].slot);
    let marked = consume(s, s.runners[i].slot);
    let owed = std::mem::take(&mut s.slots[slot].owed) | marked;
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
                if memo_holds(&s, ru, key) {
                    // The memo path: `closed` first, no lock.
                    if s.closed {
                        reject(&mut s, id, ru);
                    } else {
                        s.requesters[ru].step = Step::MemoOpen;
                    }
                    return Some(s);
                }
                enter_map(&mut s, id, ru, key);
            }
            (Protocol::Coalescer, Action::FastPath { r, remember }) => {
                let ru = usize::from(r);
                let Step::ReadLocked { key } = s.requesters[ru].step else {
                    return None;
                };
                let id = self.current(&s, r);
                s.locks[usize::from(key)].readers -= 1;
                s.requesters[ru].step = Step::NeedsWrite { key };
                if let Some(slot) = s.map[usize::from(key)] {
                    let su = usize::from(slot);
                    let prev = s.slots[su].word;
                    s.slots[su].word = state::request(prev);
                    if let state::Requested::Coalesced { .. } = state::requested(prev) {
                        accept(&mut s, id, su);
                        s.ghost.coalesced = true;
                        s.requesters[ru].step = if remember {
                            Step::Remembering { slot }
                        } else {
                            Step::Idle
                        };
                    }
                }
            }
            (Protocol::Coalescer, Action::Remember { r }) => {
                let ru = usize::from(r);
                let Step::Remembering { slot } = s.requesters[ru].step else {
                    return None;
                };
                unwatch(&mut s, ru);
                // Registering a mark that is not set: the runner sees a
                // longer list, nothing else.
                s.requesters[ru].memo = Some(slot);
                s.requesters[ru].step = Step::Idle;
            }
            (Protocol::Coalescer, Action::SetMark { r }) => {
                let ru = usize::from(r);
                let id = self.current(&s, r);
                s.requesters[ru].mark |= 1 << id;
                s.requesters[ru].step = Step::Marked;
            }
            (Protocol::Coalescer, Action::ReadState { r }) => {
                let ru = usize::from(r);
                let id = self.current(&s, r);
                let slot = usize::from(s.requesters[ru].memo?);
                if state::accepts_marks(s.slots[slot].word) {
                    accepted(&mut s, id);
                    s.ghost.marked = true;
                    s.requesters[ru].step = Step::Idle;
                } else {
                    s.requesters[ru].step = Step::TakingBack;
                }
            }
            (Protocol::Coalescer, Action::TakeBack { r }) => {
                let ru = usize::from(r);
                let id = self.current(&s, r);
                let slot = usize::from(s.requesters[ru].memo?);
                let ids = std::mem::take(&mut s.requesters[ru].mark);
                if ids == 0 {
                    // The runner consumed it: it revived the slot, or began.
                    accepted(&mut s, id);
                    s.requesters[ru].step = Step::Idle;
                    return Some(s);
                }
                s.requesters[ru].carried |= ids;
                s.ghost.took_back = true;
                let prev = s.slots[slot].word;
                s.slots[slot].word = state::request(prev);
                if let state::Requested::Coalesced { .. } = state::requested(prev) {
                    accept(&mut s, id, slot);
                    s.requesters[ru].step = Step::Idle;
                } else {
                    s.requesters[ru].step = Step::Forgetting;
                }
            }
            (Protocol::Coalescer, Action::Forget { r }) => {
                let ru = usize::from(r);
                let key = s.requests[self.current(&s, r)].key;
                unwatch(&mut s, ru);
                s.ghost.forgot_dead = true;
                s.requesters[ru].step = Step::ToMap { key };
            }
            (Protocol::Coalescer, Action::EnterMap { r }) => {
                let ru = usize::from(r);
                let Step::ToMap { key } = s.requesters[ru].step else {
                    return None;
                };
                let id = self.current(&s, r);
                enter_map(&mut s, id, ru, key);
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
            (Protocol::Coalescer, Action::SlowPath { r, remember }) => {
                let ru = usize::from(r);
                let Step::WriteLocked { key } = s.requesters[ru].step else {
                    return None;
                };
                let id = self.current(&s, r);
                let k = usize::from(key);
                s.locks[k].writer = false;
                let then = |slot: u8| {
                    if remember {
                        Step::Remembering { slot }
                    } else {
                        Step::Idle
                    }
                };
                if let Some(slot) = s.map[k] {
                    let su = usize::from(slot);
                    let prev = s.slots[su].word;
                    s.slots[su].word = state::request(prev);
                    if let state::Requested::Coalesced { .. } = state::requested(prev) {
                        accept(&mut s, id, su);
                        s.ghost.coalesced = true;
                        s.requesters[ru].step = then(slot);
                        return Some(s);
                    }
                    s.ghost.replaced_dead_slot = true;
                }
                let slot = start(&mut s, key, state::FRESH, id);
                s.map[k] = Some(slot);
                s.requesters[ru].step = then(slot);
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
            (Protocol::Coalescer, Action::Check { i }) => {
                let iu = usize::from(i);
                let slot = s.runners[iu].slot;
                let ids = consume(&mut s, slot);
                if ids == 0 {
                    s.runners[iu].phase = Phase::Checked;
                } else {
                    s.slots[usize::from(slot)].owed |= ids;
                    s.ghost.found_by_check = true;
                    s.runners[iu].phase = Phase::Reviving;
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
                Phase::Running => {
                    actions.push(Action::Finish { i, panicked: false });
                    if self.panics {
                        actions.push(Action::Finish { i, panicked: true });
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
        let mut properties = vec![
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
        ];
        if self.panics {
            properties.push(Property::sometimes(
                "a request during a panicking cycle gets its follow-up",
                |_, s: &State| s.ghost.panic_follow_up,
            ));
        }
        if self.marks {
            properties.extend([
                Property::sometimes(
                    "marks: a request is accepted through its mark",
                    |_, s: &State| s.ghost.marked,
                ),
                Property::sometimes(
                    "marks: a dying runner's check finds a mark and revives",
                    |_, s: &State| s.ghost.found_by_check,
                ),
                Property::sometimes(
                    "marks: a requester takes back a set mark and requests again",
                    |_, s: &State| s.ghost.took_back,
                ),
                Property::sometimes(
                    "marks: a requester finds its memo's slot dead and goes to the map",
                    |_, s: &State| s.ghost.forgot_dead,
                ),
                Property::sometimes(
                    "marks: a memo moves while its mark is set, and the request is made again",
                    |_, s: &State| s.ghost.reasserted,
                ),
            ]);
        }
        properties
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
            "spec {:?}{} ({} keys, {} requesters x {} requests{}, panics: {}, shutdown: {}): \
             {} distinct states ({} generated), max depth {}, {:.1} s",
            self.spec.protocol,
            if self.spec.marks { " with marks" } else { "" },
            self.spec.keys,
            self.spec.requesters,
            self.spec.requests_each,
            match self.spec.others_make {
                Some(n) if self.spec.requesters > 1 => format!(" (all but the first: {n})"),
                _ => String::new(),
            },
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
        Action::Request { r, key } if memo_holds(before, usize::from(r), key) => format!(
            "requester {r} requests key {key} through its memo: `closed` is {}; {}",
            before.closed,
            fate(r)
        ),
        Action::Request { r, key } => format!(
            "requester {r} requests key {key}: read lock, `closed` is {}; {}",
            before.closed,
            fate(r)
        ),
        Action::Remember { r } => {
            let q = before.requesters[usize::from(r)];
            let old = match q.memo {
                Some(slot) if q.mark != 0 => format!(
                    "unregisters its set mark from its old memo and requests there again: {} → {}; ",
                    word(before, slot),
                    word(after, slot)
                ),
                Some(_) => "unregisters its mark from its old memo; ".to_owned(),
                None => String::new(),
            };
            format!("requester {r} {old}registers its mark with the slot it joined")
        }
        Action::SetMark { r } => format!("requester {r} sets its mark (swap)"),
        Action::ReadState { r } => {
            let slot = before.requesters[usize::from(r)].memo.unwrap_or(0);
            format!(
                "requester {r} reads its memo's slot: {}; {}",
                word(before, slot),
                fate(r)
            )
        }
        Action::TakeBack { r } => {
            let slot = before.requesters[usize::from(r)].memo.unwrap_or(0);
            if before.requesters[usize::from(r)].mark == 0 {
                format!(
                    "requester {r} takes its mark back under the slot lock: already consumed; {}",
                    fate(r)
                )
            } else {
                format!(
                    "requester {r} takes its mark back under the slot lock: still set, \
                     fetch_or(PENDING): {} → {}; {}",
                    word(before, slot),
                    word(after, slot),
                    if after.requesters[usize::from(r)].step == Step::Idle {
                        fate(r)
                    } else {
                        "dead, forgets the memo".to_owned()
                    }
                )
            }
        }
        Action::Forget { r } => format!("requester {r} unregisters its mark from the dead slot"),
        Action::EnterMap { r } => format!(
            "requester {r} goes to the map: read lock, `closed` is {}; {}",
            before.closed,
            fate(r)
        ),
        Action::Check { i } => match after.runners[usize::from(i)].phase {
            Phase::Checked => format!("runner {i} checks the marks under the slot lock: none set"),
            _ => format!(
                "runner {i} checks the marks under the slot lock: consumes a set mark, will revive"
            ),
        },
        Action::FastPath { r, remember } => {
            let Step::ReadLocked { key } = before.requesters[usize::from(r)].step else {
                return format!("{action:?}");
            };
            match after.map[usize::from(key)] {
                Some(slot) => format!(
                    "requester {r}: fetch_or(PENDING) on key {key}'s slot: {} → {}; {}{}",
                    word(before, slot),
                    word(after, slot),
                    fate(r),
                    if remember {
                        "; will remember the slot"
                    } else {
                        ""
                    }
                ),
                None => format!("requester {r}: no slot for key {key}; goes to the slow path"),
            }
        }
        Action::LockForWrite { r } => format!(
            "requester {r}: write lock, `closed` is {}; {}",
            before.closed,
            fate(r)
        ),
        Action::SlowPath { r, .. } => {
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
