//! One active key: the atomic state word, the waiter hand-off and the marks,
//! with the atomic operations that apply the transitions of `state.rs`.
//!
//! **Marks.** A request normally sets `PENDING` in the state word, which every
//! requester of the key writes. A thread that requests the same key again and
//! again (its memo, `registry.rs`) instead has a [`Mark`] of its own,
//! registered with the slot: it sets its mark, then reads the state word.
//! The runner consumes every mark when it begins a cycle, and checks them
//! once more while going idle, between announcing `DYING` and killing the
//! slot. Every write to a mark is an `AcqRel` swap, by the requester or the
//! runner, so on each mark the two sides' swaps are totally ordered and
//! each reads the one before it: if the runner's check comes first, the
//! requester's swap reads the check's write and so sees `DYING`; if the
//! requester's swap comes first, the check sees the mark. No fence is
//! needed. A requester that sees `DYING` or a dead slot takes its mark back
//! under the slot's lock, which the runner holds from its check to `die`.

use crate::completion::Completion;
use crate::padded::Padded;
use crate::state::{self, Requested};
use crate::sync::{Arc, AtomicBool, AtomicU64, Mutex, Ordering};

/// The per-key slot. Exists only while the key is active (INV-6).
///
/// `repr(C)`, the state word and the stamps first: they are all a request
/// reads, and side by side they share one cache line wherever the
/// allocator puts the slot (16-byte aligned, the two in one 16-byte unit).
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Slot<A> {
    /// The state word (layout and transitions in `state.rs`). Written by
    /// requesters (`request`) and by this slot's one runner (`begin`,
    /// `go_idle`); never by anyone else.
    state: AtomicU64,
    /// With a debounce: when this slot's requests came (`None` without one).
    stamps: Option<Box<Stamps>>,
    /// What the next cycle takes: guarded by this mutex, which `begin` also
    /// holds while it consumes the pending bit and the marks.
    next: Mutex<Next<A>>,
}

/// The clock a debounce stamps requests with: ticks (microseconds) since the
/// coalescer's epoch, on its driver's clock.
pub(crate) type Ticks = Arc<dyn Fn() -> u64 + Send + Sync>;

/// When a slot's requests came, for the runner's quiet period
/// (`Builder::debounce`): written by every accepted request, read by the
/// runner before it begins a cycle.
///
/// `std` atomics, `Relaxed`, even under loom: they decide only *when* the
/// next cycle begins, never which requests it covers (the state word and
/// the marks decide that), so a stale stamp can shift a cycle's start by the
/// moment between a request's RMW and its stamp, and nothing else.
struct Stamps {
    ticks: Ticks,
    /// The latest request's tick.
    last: std::sync::atomic::AtomicU64,
    /// The earliest request the next cycle will cover: that cycle's number
    /// (low 16 bits) above the tick (48 bits: nine years of microseconds).
    first: std::sync::atomic::AtomicU64,
}

/// The bits of [`Stamps::first`] that hold the tick.
const TICK_BITS: u32 = 48;
const TICK_MASK: u64 = (1 << TICK_BITS) - 1;

impl Stamps {
    fn new(ticks: &Ticks) -> Box<Self> {
        let now = ticks() & TICK_MASK;
        Box::new(Stamps {
            ticks: Arc::clone(ticks),
            last: std::sync::atomic::AtomicU64::new(now),
            first: std::sync::atomic::AtomicU64::new(1 << TICK_BITS | now),
        })
    }

    /// A request accepted while the word was `seen` (live): it is the latest,
    /// and the earliest for the cycle after the `seen` ones if none was
    /// stamped for that cycle yet.
    fn stamp(&self, seen: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = (self.ticks)() & TICK_MASK;
        let cycle = (state::cycles_begun(seen) + 1) & 0xFFFF;
        // ORDERING: Relaxed, timing only; pairs with nothing (type doc).
        self.last.store(now, Relaxed);
        if self.first.load(Relaxed) >> TICK_BITS != cycle {
            self.first.store(cycle << TICK_BITS | now, Relaxed);
        }
    }
}

impl std::fmt::Debug for Stamps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stamps")
            .field("last", &self.last)
            .field("first", &self.first)
            .finish_non_exhaustive()
    }
}

/// What a [`Slot`]'s mutex guards.
#[derive(Debug)]
struct Next<A> {
    /// The completion that the next cycle to begin will resolve, if a
    /// `request_and_wait` is waiting for it. A waiter that registers here and
    /// sets `PENDING` under the lock is covered by exactly the cycle that
    /// takes this completion.
    completion: Option<Arc<Completion<A>>>,
    /// The marks of the threads whose memo holds this slot (empty unless a
    /// thread requested the key repeatedly). Added and removed by those
    /// threads; consumed by the runner.
    marks: Vec<Arc<Mark>>,
}

/// One thread's mark on one slot, on cache lines of its own: set by
/// that thread's requests through its memo, cleared by the slot's runner
/// when a cycle covers it, or by the thread when it takes it back.
#[derive(Debug)]
pub(crate) struct Mark(Padded<AtomicBool>);

impl Mark {
    pub(crate) fn new() -> Self {
        Mark(Padded(AtomicBool::new(false)))
    }
}

// The per-key cost of an active key (besides its `Arc` header, the key and
// the map entry): one word of state, a small mutex over an `Option` and an
// empty `Vec`, and the debounce's stamps pointer (null without one). Not
// checked under loom, whose primitives are larger.
#[cfg(not(loom))]
static_assertions::const_assert!(std::mem::size_of::<Slot<()>>() <= 56);
// What a request reads, side by side in the first 16 bytes (see `Slot`).
#[cfg(not(loom))]
static_assertions::const_assert!(std::mem::offset_of!(Slot<()>, state) == 0);
#[cfg(not(loom))]
static_assertions::const_assert!(std::mem::offset_of!(Slot<()>, stamps) == 8);

/// What a request through a mark found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MarkedRequest {
    /// The request is covered by a cycle of this slot's runner.
    Covered,
    /// The slot is dead: nothing was recorded; the request goes to the map.
    SlotDead,
}

/// What a delayed request falling due did ([`Slot::request_unless_begun`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DelayedRequest {
    /// A cycle has begun since the delayed request: it covered it.
    Covered,
    /// The slot is live and now pending: its next cycle covers it.
    Requested,
    /// No cycle began since, and the slot is dead: the key needs a fresh
    /// slot.
    Dead,
}

/// What the runner does after a cycle, as [`Slot::go_idle`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterCycle {
    /// No request arrived since the cycle began: the slot is dead, and its
    /// runner removes it from the map and exits.
    Idle,
    /// A request is pending: the runner begins another cycle.
    RunAgain,
}

/// What `begin` hands the runner.
#[derive(Debug)]
pub(crate) struct Begun<A> {
    /// The state word right after this `begin` (used by `go_idle`).
    pub(crate) after: u64,
    /// The completion of the cycle being begun, if anyone waits for it.
    pub(crate) completion: Option<Arc<Completion<A>>>,
}

impl<A> Slot<A> {
    /// A slot born for a request: running, with that request pending. If the
    /// request waits, `waiter` is the completion of cycle 1.
    /// With `ticks` (a debounce), the slot stamps its requests, the one that
    /// creates it first.
    pub(crate) fn fresh(waiter: Option<Arc<Completion<A>>>, ticks: Option<&Ticks>) -> Self {
        Slot {
            state: AtomicU64::new(state::FRESH),
            next: Mutex::new(Next {
                completion: waiter,
                marks: Vec::new(),
            }),
            stamps: ticks.map(Stamps::new),
        }
    }

    /// With a debounce: the ticks of the latest request, and of the earliest
    /// one the next cycle will cover (if it was stamped already). For the
    /// runner, before it begins that cycle.
    pub(crate) fn stamps(&self) -> Option<(u64, Option<u64>)> {
        use std::sync::atomic::Ordering::Relaxed;
        let stamps = self.stamps.as_ref()?;
        // ORDERING: Relaxed, timing only (see `Stamps`): the word's cycle
        // count names the next cycle; only the runner changes it.
        let next = (state::cycles_begun(self.state.load(Ordering::Relaxed)) + 1) & 0xFFFF;
        // ORDERING: Relaxed, timing only; pairs with nothing (see `Stamps`).
        let first = stamps.first.load(Relaxed);
        let first = (first >> TICK_BITS == next).then_some(first & TICK_MASK);
        Some((stamps.last.load(Relaxed), first))
    }

    /// Whether a runner still owns the slot (for reporting only).
    pub(crate) fn is_live(&self) -> bool {
        // ORDERING: Relaxed: a snapshot for `shutdown_timeout`'s report; no
        // decision of the protocol reads it.
        state::is_live(self.state.load(Ordering::Relaxed))
    }

    /// This slot's identity, for the own-cycle check (`runner.rs`).
    pub(crate) fn id(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }

    /// The `request` transition: a single wait-free RMW, no lock.
    pub(crate) fn request(&self) -> Requested {
        // ORDERING: AcqRel.
        // Release pairs with the Acquire `fetch_add` in `begin` (directly, or
        // through the release sequence of later RMWs on this word): everything
        // the requester wrote before requesting happens-before the covering
        // cycle (INV-4).
        // Acquire pairs with the Release success of `go_idle`'s
        // compare-exchange: a requester that finds the slot dead starts the
        // key's next runner only after the dead runner's last cycle (INV-1).
        let prev = self.state.fetch_or(state::PENDING, Ordering::AcqRel);
        if let Some(stamps) = &self.stamps {
            if state::is_live(prev) {
                stamps.stamp(prev);
            }
        }
        state::requested(prev)
    }

    /// For a delayed request (`delay.rs`): whether a cycle is already owed,
    /// and the state word, without requesting one. An RMW that changes
    /// nothing, so that it takes its place in the word's modification order:
    /// whichever later `begin` covers the delayed request synchronizes with
    /// it.
    pub(crate) fn touch(&self) -> u64 {
        // ORDERING: AcqRel, as `request`'s `fetch_or`: Release pairs with the
        // Acquire `fetch_add` in `begin` (directly or through the release
        // sequence of later RMWs: every write to this word after creation
        // is an RMW), so the delayed requester's writes happen-before the
        // cycle that covers it (INV-4). Acquire pairs with `go_idle`'s
        // Release success, as in `request`.
        self.state.fetch_or(0, Ordering::AcqRel)
    }

    /// A delayed request falling due (`delay.rs`), made while the word had
    /// begun `since` cycles: requests a cycle unless one has begun since
    /// (then the delayed request is covered already). `Dead`: no cycle
    /// began since and the slot is dead, so the key needs a fresh slot.
    pub(crate) fn request_unless_begun(&self, since: u64) -> DelayedRequest {
        // ORDERING: AcqRel on success, as `request`'s `fetch_or` (the timer
        // that makes it is ordered after the delayed requester through the
        // shard lock both take). Acquire on failure pairs with `go_idle`'s
        // Release success, for the fresh slot that follows a dead one.
        let updated = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (state::cycles_begun(s) == since && state::is_live(s)).then_some(state::request(s))
            });
        match updated {
            Ok(prev) => {
                if let Some(stamps) = &self.stamps {
                    stamps.stamp(prev);
                }
                DelayedRequest::Requested
            }
            Err(now) if state::cycles_begun(now) != since => DelayedRequest::Covered,
            Err(_) => DelayedRequest::Dead,
        }
    }

    /// The `request` transition for a caller that will wait: registers for
    /// the covering cycle's completion in the same critical section that
    /// `begin` uses, so the completion returned is that of the cycle that
    /// covers this request. `None` if the slot is dead.
    pub(crate) fn request_and_register(&self) -> Option<Arc<Completion<A>>> {
        let mut next = self.next.lock();
        match self.request() {
            Requested::Dead => None,
            Requested::Coalesced { covered_by } => {
                let completion = next
                    .completion
                    .get_or_insert_with(|| Arc::new(Completion::new(covered_by)));
                debug_assert_eq!(completion.cycle, covered_by);
                Some(Arc::clone(completion))
            }
        }
    }

    /// A request through `mark` (registered with this slot by
    /// [`watch`](Self::watch)): sets the mark and reads the state word,
    /// writing nothing shared.
    #[inline]
    pub(crate) fn request_marked(&self, mark: &Mark) -> MarkedRequest {
        // ORDERING: AcqRel, paired both ways with the AcqRel swap in
        // `consume` (by `begin` or `go_idle`), the only other write to the
        // mark.
        // Release pairs with the Acquire half of the `consume` that reads
        // this `true`: this thread's writes happen-before the cycle that
        // covers the request (INV-4).
        // Acquire pairs with the Release half of the `consume` whose `false`
        // this swap reads (or that heads the release sequence it reads: all
        // writes to a mark are RMWs). So if the dying runner's check swapped
        // the mark before this swap, its `dying` exchange happens-before the
        // read below, which sees `DYING` or later; if after, the check reads
        // this `true`. One of the two, as the swaps are totally ordered: the
        // request is never missed by both (INV-2).
        // A swap, not a store, is what decides that race without a `SeqCst`
        // fence on each side. (Loom would also misjudge a plain store racing
        // the runner's swap: tokio-rs/loom#254.)
        let _ = mark.0 .0.swap(true, Ordering::AcqRel);
        // ORDERING: Relaxed: ordered by the swap's Acquire above. A covered
        // request needs no data from the runner; one that finds the slot
        // dying or dead is ordered by `request`'s AcqRel RMW in `take_back`.
        let seen = self.state.load(Ordering::Relaxed);
        if state::accepts_marks(seen) {
            // With a debounce the request is stamped: one shared store, on
            // the memo path too.
            if let Some(stamps) = &self.stamps {
                stamps.stamp(seen);
            }
            return MarkedRequest::Covered;
        }
        self.take_back(mark)
    }

    /// The slow end of [`request_marked`](Self::request_marked): the slot was
    /// dying or dead, so the runner may have checked the marks before this
    /// one was set. Takes the mark back under the slot's lock and, if it was
    /// still set, makes the request again as a plain `request`.
    ///
    /// The lock is what keeps the requests in the mark safe. The mark may
    /// also hold this thread's *earlier* marked requests, already accepted:
    /// their reads saw the slot live, so the runner's check sees their mark
    /// — unless it is taken back first. The runner holds the lock from its
    /// check to `die`, so under it either the runner has not checked yet —
    /// the plain request lands on a live or dying slot, and `die` fails —
    /// or the check has come and gone, consuming every earlier request's
    /// mark, and what is taken back is this request's alone. Without the
    /// lock the check could fall between the take-back and the plain
    /// request, the slot die, and this request then be rejected (a
    /// shutdown) with an accepted request inside it (found by the spec).
    #[cold]
    fn take_back(&self, mark: &Mark) -> MarkedRequest {
        let next = self.next.lock();
        let covered = self.reassert(&next, mark);
        drop(next);
        covered
    }

    /// With the slot's lock held (`_held`): takes `mark` back; if it was
    /// still set, makes its request again as a plain `request`. Covered if
    /// the runner had consumed the mark, or the plain request found the
    /// slot live (dying included: its `PENDING` makes `die` fail).
    fn reassert(&self, _held: &Next<A>, mark: &Mark) -> MarkedRequest {
        // ORDERING: Relaxed: only this mark's thread sets it, and the runner,
        // which also clears it, does so under the lock we hold. A request
        // that reads `false` here was consumed by an Acquire swap that read
        // its `true` (INV-4); one that reads `true` is ordered by `request`'s
        // AcqRel.
        let covered = !mark.0 .0.swap(false, Ordering::Relaxed)
            || matches!(self.request(), Requested::Coalesced { .. });
        if covered {
            MarkedRequest::Covered
        } else {
            MarkedRequest::SlotDead
        }
    }

    /// Registers `mark`: from now on this slot's runner consumes it.
    pub(crate) fn watch(&self, mark: Arc<Mark>) {
        self.next.lock().marks.push(mark);
    }

    /// Unregisters `mark` (its thread's memo moves on). A request marked
    /// there and not yet consumed is made again as a plain request, under
    /// the lock the runner checks the marks under, so it is never dropped
    /// between the two.
    pub(crate) fn unwatch(&self, mark: &Arc<Mark>) {
        let mut next = self.next.lock();
        // A mark still set was set by requests accepted while the slot was
        // live, so the slot is live now (the runner kills it only after
        // consuming every mark, under this lock) — unless it was abandoned,
        // whose requests are lost with their runtime.
        let _ = self.reassert(&next, mark);
        next.marks.retain(|m| !Arc::ptr_eq(m, mark));
    }

    /// The `begin` transition: consumes the pending bit and the marks,
    /// counts one more cycle, and takes the waiters registered for it.
    /// Runner only, and only while `PENDING` is set.
    pub(crate) fn begin(&self) -> Begun<A> {
        let mut next = self.next.lock();
        // ORDERING: Acquire pairs with the Release half of every requester's
        // `fetch_or` in `request` that precedes this RMW in the word's
        // modification order: the cycle about to run sees those requesters'
        // writes (INV-4). No Release is needed: nothing reads this word to
        // learn about the runner's writes except `go_idle`'s successors.
        let prev = self.state.fetch_add(state::BEGIN_DELTA, Ordering::Acquire);
        // One `begin` consumes the pending bit of every request so far, and
        // every mark set so far: they are all covered by this one cycle
        // (INV-7).
        let after = state::begin(prev);
        consume(&next.marks);
        let completion = next.completion.take();
        drop(next);
        if let Some(c) = &completion {
            debug_assert_eq!(c.cycle, state::cycles_begun(after));
        }
        Begun { after, completion }
    }

    /// Going idle: kills the slot if and only if no request arrived since
    /// `begun` — no `PENDING` and no mark — with no window in which a request
    /// can be stranded (D1, INV-2).
    pub(crate) fn go_idle(&self, begun: &Begun<A>) -> AfterCycle {
        let (from, dying) = state::dying(begun.after);
        // ORDERING: Relaxed both ways. Success is published to marking
        // requesters by the Release half of the check's swaps below
        // (`consume`), which are sequenced after it. Failure: a request set
        // `PENDING`; the runner goes on to `begin`, whose Acquire RMW
        // synchronizes with that request.
        if self
            .state
            .compare_exchange(from, dying, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return AfterCycle::RunAgain;
        }
        // The check: either it sees a request's mark, or that request's swap
        // comes after it and the request sees `DYING` (`request_marked`).
        // Held until `die`, so a take-back cannot fall in between.
        let next = self.next.lock();
        if !consume(&next.marks) {
            let (from, dead) = state::die(dying);
            // ORDERING: success Release pairs with the Acquire half of the
            // `fetch_or` in `request` of a requester that then finds this
            // slot dead and starts the key's next runner: this runner's
            // cycles happen-before that runner's (INV-1). Failure Relaxed: a
            // request set `PENDING`; revived below, and `begin`'s Acquire
            // RMW synchronizes with it.
            if self
                .state
                .compare_exchange(from, dead, Ordering::Release, Ordering::Relaxed)
                .is_ok()
            {
                return AfterCycle::Idle;
            }
        }
        drop(next);
        // A mark was consumed, or `PENDING` set: back to live with a request
        // pending, for the runner's next `begin`.
        // ORDERING: Relaxed: the runner's own transition. The requests it
        // answers are synchronized already (a mark by `consume`'s Acquire) or
        // by `begin`'s Acquire RMW (their `fetch_or`s head release sequences
        // that this RMW continues).
        let _ = self
            .state
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some(state::revive(s))
            });
        AfterCycle::RunAgain
    }

    /// Kills the slot of a runner that is being torn down mid-flight (its
    /// async task was aborted, or dropped before it ran): clears `RUNNING`
    /// unconditionally and hands back the completion registered for the next
    /// cycle, which will never begin. Done under the `next` lock, so a waiter
    /// either registered before (and gets that completion's outcome) or sees
    /// the slot dead and goes to a fresh slot.
    pub(crate) fn abandon(&self) -> Option<Arc<Completion<A>>> {
        let mut next = self.next.lock();
        // ORDERING: Release pairs with the Acquire half of `request`'s
        // `fetch_or`, as `go_idle`'s success does: a requester that finds the
        // slot dead starts the next runner after everything this one did.
        self.state.fetch_and(!state::WATCHED, Ordering::Release);
        next.completion.take()
    }
}

/// Consumes every mark in `marks`: whether any was set. Under the slot's
/// lock, by its runner.
fn consume(marks: &[Arc<Mark>]) -> bool {
    // Every mark is cleared, not just the first set one: one cycle covers
    // them all (INV-7).
    marks.iter().fold(false, |any, mark| {
        // ORDERING: AcqRel, paired both ways with the AcqRel swap in
        // `request_marked`.
        // Acquire pairs with its Release half when this reads its `true`: the
        // marking thread's writes happen-before the cycle that covers its
        // request (INV-4).
        // Release pairs with its Acquire half when it comes after this swap:
        // everything this runner did before — in `go_idle`, the `dying`
        // exchange — happens-before that request's read of the state word,
        // which therefore sees `DYING` (INV-2).
        mark.0 .0.swap(false, Ordering::AcqRel) | any
    })
}

// Not under loom, whose primitives work only inside a model: the slot's
// loom models are in `loom_models.rs`.
#[cfg(all(test, not(loom)))]
mod tests {
    use super::AfterCycle;
    use crate::state::Requested;
    use crate::sync::Arc;

    /// The slot of a coalescer whose cycles return `()`.
    type Slot = super::Slot<crate::output::Answer<()>>;

    /// A slot's life as its runner sees it: born live with its creator's
    /// request pending; a request while live is covered by the next cycle;
    /// going idle fails while a request is pending and succeeds once none
    /// is; a dead slot turns requests away.
    #[test]
    fn a_slot_lives_until_its_runner_goes_idle() {
        let slot = Slot::fresh(None, None);
        assert!(slot.is_live());
        let first = slot.begin();
        assert_eq!(slot.request(), Requested::Coalesced { covered_by: 2 });
        assert_eq!(
            slot.go_idle(&first),
            AfterCycle::RunAgain,
            "a request is pending"
        );
        let second = slot.begin();
        assert_eq!(slot.go_idle(&second), AfterCycle::Idle);
        assert!(!slot.is_live());
        assert_eq!(slot.request(), Requested::Dead);
        assert!(slot.request_and_register().is_none());
    }

    /// `abandon` kills the slot whatever its state and hands back the
    /// waiters of the cycle that will now never begin.
    #[test]
    fn abandon_kills_the_slot_and_returns_the_next_waiters() {
        let slot = Slot::fresh(None, None);
        let _first = slot.begin();
        let waiter = slot.request_and_register().expect("the slot is live");
        let next = slot.abandon().expect("the follow-up's waiters");
        assert!(Arc::ptr_eq(&waiter, &next));
        assert!(!slot.is_live());
        assert_eq!(slot.request(), Requested::Dead);
    }

    /// Distinct slots have distinct ids: the own-cycle check relies on it.
    #[test]
    fn slots_have_distinct_ids() {
        let (a, b) = (Slot::fresh(None, None), Slot::fresh(None, None));
        assert_ne!(a.id(), b.id());
    }
}
