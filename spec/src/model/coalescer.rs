//! The coalescer's protocol: one function per atomic step of the real code
//! (`registry.rs`, `slot.rs`, `runner.rs`), applied to the model's state.

use super::steps::*;
use super::*;

/// Applies `action` to `s`, or `None` if it is not enabled there.
pub(super) fn step(spec: &Spec, s: &mut State, action: Action) -> Option<()> {
    match action {
        Action::Request { r, key } => {
            let ru = usize::from(r);
            s.requesters[ru].issued += 1;
            let id = spec.current(s, r);
            s.requests[id].key = key;
            s.requests[id].fate = Fate::InFlight;
            if memo_holds(s, ru, key) {
                // The memo path: `closed` first, no lock.
                if s.closed {
                    reject(s, id, ru);
                } else {
                    s.requesters[ru].step = Step::MemoOpen;
                }
                return Some(());
            }
            enter_map(s, id, ru, key);
        }
        Action::FastPath { r, remember } => {
            let ru = usize::from(r);
            let Step::ReadLocked { key } = s.requesters[ru].step else {
                return None;
            };
            let id = spec.current(s, r);
            s.locks[usize::from(key)].readers -= 1;
            s.requesters[ru].step = Step::NeedsWrite { key };
            if let Some(slot) = s.map[usize::from(key)] {
                let su = usize::from(slot);
                let prev = s.slots[su].word;
                s.slots[su].word = state::request(prev);
                if let state::Requested::Coalesced { .. } = state::requested(prev) {
                    accept(s, id, su);
                    s.ghost.coalesced = true;
                    s.requesters[ru].step = if remember {
                        Step::Remembering { slot }
                    } else {
                        Step::Idle
                    };
                }
            }
        }
        Action::Remember { r } => {
            let ru = usize::from(r);
            let Step::Remembering { slot } = s.requesters[ru].step else {
                return None;
            };
            unwatch(s, ru);
            // Registering a mark that is not set: the runner sees a
            // longer list, nothing else.
            s.requesters[ru].memo = Some(slot);
            s.requesters[ru].step = Step::Idle;
        }
        Action::SetMark { r } => {
            let ru = usize::from(r);
            let id = spec.current(s, r);
            s.requesters[ru].mark |= 1 << id;
            s.requesters[ru].step = Step::Marked;
        }
        Action::ReadState { r } => {
            let ru = usize::from(r);
            let id = spec.current(s, r);
            let slot = usize::from(s.requesters[ru].memo?);
            if state::accepts_marks(s.slots[slot].word) {
                accepted(s, id);
                s.ghost.marked = true;
                s.requesters[ru].step = Step::Idle;
            } else {
                s.requesters[ru].step = Step::TakingBack;
            }
        }
        Action::TakeBack { r } => {
            let ru = usize::from(r);
            let id = spec.current(s, r);
            let slot = usize::from(s.requesters[ru].memo?);
            let ids = std::mem::take(&mut s.requesters[ru].mark);
            if ids == 0 {
                // The runner consumed it: it revived the slot, or began.
                accepted(s, id);
                s.requesters[ru].step = Step::Idle;
                return Some(());
            }
            s.requesters[ru].carried |= ids;
            s.ghost.took_back = true;
            let prev = s.slots[slot].word;
            s.slots[slot].word = state::request(prev);
            if let state::Requested::Coalesced { .. } = state::requested(prev) {
                accept(s, id, slot);
                s.requesters[ru].step = Step::Idle;
            } else {
                s.requesters[ru].step = Step::Forgetting;
            }
        }
        Action::Forget { r } => {
            let ru = usize::from(r);
            let key = s.requests[spec.current(s, r)].key;
            unwatch(s, ru);
            s.ghost.forgot_dead = true;
            s.requesters[ru].step = Step::ToMap { key };
        }
        Action::EnterMap { r } => {
            let ru = usize::from(r);
            let Step::ToMap { key } = s.requesters[ru].step else {
                return None;
            };
            let id = spec.current(s, r);
            enter_map(s, id, ru, key);
        }
        Action::LockForWrite { r } => {
            let ru = usize::from(r);
            let Step::NeedsWrite { key } = s.requesters[ru].step else {
                return None;
            };
            let id = spec.current(s, r);
            if s.closed {
                reject(s, id, ru);
            } else {
                s.locks[usize::from(key)].writer = true;
                s.requesters[ru].step = Step::WriteLocked { key };
            }
        }
        Action::SlowPath { r, remember } => {
            let ru = usize::from(r);
            let Step::WriteLocked { key } = s.requesters[ru].step else {
                return None;
            };
            let id = spec.current(s, r);
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
                    accept(s, id, su);
                    s.ghost.coalesced = true;
                    s.requesters[ru].step = then(slot);
                    return Some(());
                }
                s.ghost.replaced_dead_slot = true;
            }
            let slot = start(s, key, state::FRESH, id);
            if spec.limit > 0 {
                // Admission takes the fresh key's ticket under the shard lock.
                let runner = s.runners.len() - 1;
                take_ticket(s, runner);
            }
            s.map[k] = Some(slot);
            s.requesters[ru].step = then(slot);
        }
        Action::TakeTicket { i } => take_ticket(s, usize::from(i)),
        Action::Begin { i } => {
            let iu = usize::from(i);
            if spec.limit > 0 && !s.runners[iu].permit {
                s.ghost.overtaken = true; // never enabled: Ready holds a permit
            }
            let slot = usize::from(s.runners[iu].slot);
            let prev = s.slots[slot].word;
            if !(state::is_live(prev) && state::is_pending(prev)) {
                return None; // `state::begin` would panic: never enabled
            }
            let after = state::begin(prev);
            s.slots[slot].word = after;
            s.runners[iu].after = after;
            let covered = cover(s, iu);
            if spec.retries > 0 {
                s.runners[iu].covering = covered;
                // A retry that begins while closing is the last chance.
                s.runners[iu].last_chance = s.closed && s.runners[iu].failures > 0;
            }
        }
        Action::Finish { i, panicked } => {
            let iu = usize::from(i);
            release(spec, s, iu);
            if panicked {
                mark_during_panic(s, iu);
                if spec.retries > 0 {
                    // The policy gives up: the failed cycle's requests stay
                    // covered by it; those during it get their follow-up.
                    mark_during(s, iu, |req| req.during_given_up = true);
                    if s.runners[iu].last_chance {
                        s.ghost.last_chance_given_up = true;
                    }
                }
            }
            // A panicking cycle ends through the same path; a success, or a
            // give-up, resets the count.
            s.runners[iu].failures = 0;
            s.runners[iu].phase = Phase::Ended;
        }
        Action::FailAndRetry { i } => {
            let iu = usize::from(i);
            let runner = s.runners[iu];
            if runner.last_chance {
                s.ghost.retried_last_chance = true;
            }
            if runner.failures >= spec.retries {
                s.ghost.retried_beyond_bound = true;
            }
            mark_during(s, iu, |req| req.during_retried = true);
            let slot = usize::from(runner.slot);
            // The runner's own request on its live slot: the retry is its
            // one next cycle, and the failed cycle's requests are owed again.
            let prev = s.slots[slot].word;
            s.slots[slot].word = state::request(prev);
            if !state::is_live(prev) {
                s.ghost.stranded_by_stop = true; // a runner never kills its slot mid-cycle
            }
            s.slots[slot].owed |= runner.covering;
            for (id, req) in s.requests.iter_mut().enumerate() {
                if runner.covering & (1 << id) != 0 {
                    req.fate = Fate::Owed;
                }
            }
            s.runners[iu].failures += 1;
            release(spec, s, iu);
            due(spec, s, iu);
        }
        Action::GoIdle { i } => {
            let iu = usize::from(i);
            let slot = usize::from(s.runners[iu].slot);
            let (from, to) = state::dying(s.runners[iu].after);
            if s.slots[slot].word == from {
                s.slots[slot].word = to;
                s.runners[iu].phase = Phase::Dying;
                s.runners[iu].after = to;
            } else {
                due(spec, s, iu);
            }
        }
        Action::Check { i } => {
            let iu = usize::from(i);
            let slot = s.runners[iu].slot;
            let ids = consume(s, slot);
            if ids == 0 {
                s.runners[iu].phase = Phase::Checked;
            } else {
                s.slots[usize::from(slot)].owed |= ids;
                s.ghost.found_by_check = true;
                s.runners[iu].phase = Phase::Reviving;
            }
        }
        Action::Die { i } => {
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
        Action::Revive { i } => {
            let iu = usize::from(i);
            let slot = usize::from(s.runners[iu].slot);
            s.slots[slot].word = state::revive(s.slots[slot].word);
            due(spec, s, iu);
        }
        Action::Reclaim { i } => {
            let iu = usize::from(i);
            let slot = s.runners[iu].slot;
            let key = usize::from(s.slots[usize::from(slot)].key);
            if s.map[key] == Some(slot) {
                s.map[key] = None;
                s.ghost.reclaimed |= 1 << key;
            }
            exit(s, iu, false);
        }
        Action::Close => {
            s.closed = true;
            s.shutdown = Shutdown::Closing { barrier: 0 };
        }
        Action::Barrier => {
            let Shutdown::Closing { barrier } = s.shutdown else {
                return None;
            };
            s.shutdown = if barrier + 1 == spec.keys {
                Shutdown::Joining
            } else {
                Shutdown::Closing {
                    barrier: barrier + 1,
                }
            };
        }
        Action::Join => s.shutdown = Shutdown::Done,

        _ => return None,
    }
    Some(())
}
