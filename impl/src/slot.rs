//! One active key: the atomic state word and the waiter hand-off, with the
//! atomic operations that apply the transitions of `state.rs`.

use crate::completion::Completion;
use crate::state::{self, Requested};
use crate::sync::{lock, Arc, AtomicU64, Mutex, Ordering};

/// The per-key slot. Exists only while the key is active (INV-6).
#[derive(Debug)]
pub(crate) struct Slot {
    /// The state word (layout and transitions in `state.rs`). Written by
    /// requesters (`request`) and by this slot's one runner (`begin`,
    /// `go_idle`); never by anyone else.
    state: AtomicU64,
    /// The completion that the next cycle to begin will resolve, if a
    /// `request_and_wait` is waiting for it. Guarded by this mutex, which
    /// `begin` also holds while it consumes the pending mark, so a waiter
    /// that registers here and sets `PENDING` under the lock is covered by
    /// exactly the cycle that takes this completion.
    next: Mutex<Option<Arc<Completion>>>,
}

// The per-key cost of an active key (besides its `Arc` header, the key and
// the map entry): one word of state and one small mutex. Not checked under
// loom, whose primitives are larger.
#[cfg(not(loom))]
static_assertions::const_assert!(std::mem::size_of::<Slot>() <= 24);

/// What `begin` hands the runner.
#[derive(Debug)]
pub(crate) struct Begun {
    /// The state word right after this `begin` (used by `go_idle`).
    pub(crate) after: u64,
    /// The completion of the cycle being begun, if anyone waits for it.
    pub(crate) completion: Option<Arc<Completion>>,
}

impl Slot {
    /// A slot born for a request: running, with that request pending. If the
    /// request waits, `waiter` is the completion of cycle 1.
    pub(crate) fn fresh(waiter: Option<Arc<Completion>>) -> Self {
        Slot {
            state: AtomicU64::new(state::FRESH),
            next: Mutex::new(waiter),
        }
    }

    /// Whether a runner still owns the slot (for reporting only).
    pub(crate) fn is_live(&self) -> bool {
        // ORDERING: Relaxed: a snapshot for `shutdown_timeout`'s report; no
        // decision of the protocol reads it.
        state::is_live(self.state.load(Ordering::Relaxed))
    }

    /// This slot's identity for [`crate::sync::enter_cycle`].
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
        state::requested(prev)
    }

    /// The `request` transition for a caller that will wait: registers for
    /// the covering cycle's completion in the same critical section that
    /// `begin` uses, so the completion returned is that of the cycle that
    /// covers this request. `None` if the slot is dead.
    pub(crate) fn request_and_register(&self) -> Option<Arc<Completion>> {
        let mut next = lock(&self.next);
        match self.request() {
            Requested::Dead => None,
            Requested::Coalesced { covered_by } => {
                let completion = next.get_or_insert_with(|| Arc::new(Completion::new(covered_by)));
                debug_assert_eq!(completion.cycle, covered_by);
                Some(Arc::clone(completion))
            }
        }
    }

    /// The `begin` transition: consumes the pending mark, counts one more
    /// cycle, and takes the waiters registered for it. Runner only, and only
    /// while `PENDING` is set.
    pub(crate) fn begin(&self) -> Begun {
        let mut next = lock(&self.next);
        // ORDERING: Acquire pairs with the Release half of every requester's
        // `fetch_or` in `request` that precedes this RMW in the word's
        // modification order: the cycle about to run sees those requesters'
        // writes (INV-4). No Release is needed: nothing reads this word to
        // learn about the runner's writes except `go_idle`'s successors.
        let prev = self.state.fetch_add(state::BEGIN_DELTA, Ordering::Acquire);
        // One `begin` consumes the pending mark of every request so far: they
        // are all covered by this one cycle (INV-7).
        let after = state::begin(prev);
        let completion = next.take();
        drop(next);
        if let Some(c) = &completion {
            debug_assert_eq!(c.cycle, state::cycles_begun(after));
        }
        Begun { after, completion }
    }

    /// The `go idle` transition: kills the slot if and only if no request
    /// arrived since `begun`, in one compare-exchange (no D1 window, INV-2).
    /// Returns `true` if the slot is now dead; `false` means a request is
    /// pending and the runner must `begin` again.
    pub(crate) fn go_idle(&self, begun: &Begun) -> bool {
        let (from, to) = state::go_idle(begun.after);
        // ORDERING: success Release pairs with the Acquire half of the
        // `fetch_or` in `request` of a requester that then finds this slot
        // dead and starts the key's next runner: this runner's cycles
        // happen-before that runner's (INV-1). Failure Relaxed: the runner
        // goes on to `begin`, whose Acquire RMW synchronizes with the request
        // that made this exchange fail.
        self.state
            .compare_exchange(from, to, Ordering::Release, Ordering::Relaxed)
            .is_ok()
    }

    /// Kills the slot of a runner that is being torn down mid-flight (its
    /// async task was aborted, or dropped before it ran): clears `RUNNING`
    /// unconditionally and hands back the completion registered for the next
    /// cycle, which will never begin. Done under the `next` lock, so a waiter
    /// either registered before (and gets that completion's outcome) or sees
    /// the slot dead and goes to a fresh slot.
    pub(crate) fn abandon(&self) -> Option<Arc<Completion>> {
        let mut next = lock(&self.next);
        // ORDERING: Release pairs with the Acquire half of `request`'s
        // `fetch_or`, as `go_idle`'s success does: a requester that finds the
        // slot dead starts the next runner after everything this one did.
        self.state.fetch_and(!state::RUNNING, Ordering::Release);
        next.take()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::Slot;
    use crate::state::Requested;
    use crate::sync::Arc;

    /// A slot's life as its runner sees it: born live with its creator's
    /// request pending; a request while live is covered by the next cycle;
    /// going idle fails while a request is pending and succeeds once none
    /// is; a dead slot turns requests away.
    #[test]
    fn a_slot_lives_until_its_runner_goes_idle() {
        let slot = Slot::fresh(None);
        assert!(slot.is_live());
        let first = slot.begin();
        assert_eq!(slot.request(), Requested::Coalesced { covered_by: 2 });
        assert!(!slot.go_idle(&first), "a request is pending");
        let second = slot.begin();
        assert!(slot.go_idle(&second));
        assert!(!slot.is_live());
        assert_eq!(slot.request(), Requested::Dead);
        assert!(slot.request_and_register().is_none());
    }

    /// `abandon` kills the slot whatever its state and hands back the
    /// waiters of the cycle that will now never begin.
    #[test]
    fn abandon_kills_the_slot_and_returns_the_next_waiters() {
        let slot = Slot::fresh(None);
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
        let (a, b) = (Slot::fresh(None), Slot::fresh(None));
        assert_ne!(a.id(), b.id());
    }
}
