//! What the steps of both protocols share: the ghost bookkeeping of requests
//! (accepted, rejected, owed, covered), entering the map, the marks, and
//! starting and stopping runners.

use super::*;

/// Marks request `id` accepted into slot `slot`, with the requests its
/// requester carries from a mark it took back (request `id` comes after
/// them, so the cycle that covers it covers them).
pub(super) fn accept(s: &mut State, id: usize, slot: usize) {
    let r = id / (s.requests.len() / s.requesters.len());
    let carried = std::mem::take(&mut s.requesters[r].carried);
    s.slots[slot].owed |= carried | 1 << id;
    accepted(s, id);
}

/// Request `id` returns accepted: owed a cycle — unless one already covered
/// it (a runner consumed its mark and began): then it was accepted when it
/// set its mark, and this is only its return.
pub(super) fn accepted(s: &mut State, id: usize) {
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
pub(super) fn reject(s: &mut State, id: usize, r: usize) {
    s.requests[id].fate = Fate::Rejected;
    s.requesters[r].step = Step::Idle;
    s.requesters[r].carried = 0;
    s.ghost.rejected = true;
}

/// Requester `r`'s request `id` enters the map: it takes `key`'s shard read
/// lock and reads `closed` under it (rejected if set).
pub(super) fn enter_map(s: &mut State, id: usize, r: usize, key: u8) {
    if s.closed {
        reject(s, id, r);
    } else {
        s.locks[usize::from(key)].readers += 1;
        s.requesters[r].step = Step::ReadLocked { key };
    }
}

/// Consumes every mark registered with `slot`: the requests they carry.
pub(super) fn consume(s: &mut State, slot: u8) -> u16 {
    s.requesters
        .iter_mut()
        .filter(|q| q.memo == Some(slot))
        .fold(0, |ids, q| ids | std::mem::take(&mut q.mark))
}

/// Whether requester `r`'s memo holds `key` (its request takes the memo
/// path).
pub(super) fn memo_holds(s: &State, r: usize, key: u8) -> bool {
    s.requesters[r]
        .memo
        .is_some_and(|slot| s.slots[usize::from(slot)].key == key)
}

/// `Slot::unwatch` of requester `r`'s memo, under the slot's lock: a mark
/// still set is taken back and made again as a plain request. (That
/// request was accepted while the slot was live; if the slot is dead now,
/// the properties report it as never covered.)
pub(super) fn unwatch(s: &mut State, r: usize) {
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
pub(super) fn slot_locked(s: &State, slot: u8) -> bool {
    s.runners
        .iter()
        .any(|r| r.slot == slot && r.phase == Phase::Checked)
}

/// Starts a runner for a fresh slot of `key` owed request `id`.
pub(super) fn start(s: &mut State, key: u8, word: u64, id: usize) -> u8 {
    let slot = s.slots.len();
    s.slots.push(Slot { key, word, owed: 0 });
    accept(s, id, slot);
    s.runners.push(Runner {
        slot: slot as u8,
        phase: Phase::Ready,
        after: 0,
        failures: 0,
        last_chance: false,
        covering: 0,
        permit: false,
        ticket: 0,
    });
    if s.ghost.reclaimed & (1 << key) != 0 {
        s.ghost.recreated = true;
    }
    slot as u8
}

/// Runner `i` stops. If its slot still owes a request a cycle and no other
/// runner of the slot is active, that request is stranded.
pub(super) fn exit(s: &mut State, i: usize, by_panic: bool) {
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

/// Runner `i` begins a cycle: it covers the slot's ghost owed set and the
/// requests of every mark it consumes, which it returns.
pub(super) fn cover(s: &mut State, i: usize) -> u16 {
    let slot = usize::from(s.runners[i].slot);
    let marked = consume(s, s.runners[i].slot);
    let owed = std::mem::take(&mut s.slots[slot].owed) | marked;
    if owed == 0 {
        s.ghost.spurious_cycle = true;
    }
    let retry = s.runners[i].failures > 0;
    for (id, req) in s.requests.iter_mut().enumerate() {
        if owed & (1 << id) != 0 {
            req.fate = Fate::Covered;
            if req.during_panic {
                s.ghost.panic_follow_up = true;
            }
            if std::mem::take(&mut req.during_retried) && retry {
                s.ghost.folded_into_retry = true;
            }
            if std::mem::take(&mut req.during_given_up) {
                s.ghost.give_up_follow_up = true;
            }
        }
    }
    if retry && owed & s.runners[i].covering != 0 {
        s.ghost.retry_covered_failed = true;
    }
    if s.shutdown == Shutdown::Done {
        s.ghost.cycle_after_shutdown = true;
    }
    s.runners[i].phase = Phase::Running;
    owed
}

/// Runner `i`'s cycle panicked: the requests its slot owes now arrived
/// during it — the ones a panic must not strand (D2).
pub(super) fn mark_during_panic(s: &mut State, i: usize) {
    mark_during(s, i, |req| req.during_panic = true);
}

/// Applies `mark` to every request runner `i`'s slot owes: those accepted
/// during its current cycle.
pub(super) fn mark_during(s: &mut State, i: usize, mark: impl Fn(&mut Request)) {
    let owed = s.slots[usize::from(s.runners[i].slot)].owed;
    for (id, req) in s.requests.iter_mut().enumerate() {
        if owed & (1 << id) != 0 {
            mark(req);
        }
    }
}

/// After a step that leaves runner `i` due (with a limit: it takes a
/// ticket next; without one, it is ready to begin).
pub(super) fn due(spec: &Spec, s: &mut State, i: usize) {
    s.runners[i].phase = if spec.limit > 0 {
        Phase::Due
    } else {
        Phase::Ready
    };
}

/// Limit: runner `i` takes a ticket — a free permit if nobody waits (then
/// it is ready), else the back of the line.
pub(super) fn take_ticket(s: &mut State, i: usize) {
    let waiting = s
        .runners
        .iter()
        .filter(|r| r.phase == Phase::Waiting)
        .count();
    if s.free > 0 && waiting == 0 {
        s.free -= 1;
        s.runners[i].permit = true;
        s.runners[i].phase = Phase::Ready;
    } else {
        if s.free > 0 {
            s.ghost.overtaken = true; // a free permit while a runner waits
        }
        s.runners[i].ticket = waiting as u8 + 1;
        s.runners[i].phase = Phase::Waiting;
    }
}

/// Limit: runner `i`'s cycle has ended; it gives its permit back — to the
/// front of the line if anyone waits, else to the free count.
pub(super) fn release(spec: &Spec, s: &mut State, i: usize) {
    if spec.limit == 0 {
        return;
    }
    if !s.runners[i].permit {
        s.ghost.overtaken = true; // a cycle ran without a permit
        return;
    }
    s.runners[i].permit = false;
    let front = s
        .runners
        .iter()
        .enumerate()
        .filter(|(_, r)| r.phase == Phase::Waiting)
        .min_by_key(|(_, r)| r.ticket)
        .map(|(j, _)| j);
    let Some(j) = front else {
        s.free += 1;
        return;
    };
    let place = s.runners[j].ticket;
    if place != 1 {
        s.ghost.overtaken = true; // not the front of the line
    }
    s.ghost.handed_off = true;
    if s.closed {
        s.ghost.handed_off_while_closing = true;
    }
    s.runners[j].permit = true;
    s.runners[j].ticket = 0;
    s.runners[j].phase = Phase::Ready;
    for r in &mut s.runners {
        if r.phase == Phase::Waiting && r.ticket > place {
            r.ticket -= 1;
        }
    }
}
