//! Symmetry: states that differ only in dead history or in the names of
//! interchangeable requesters are one state.

use super::*;

/// Forgets what can no longer matter — stopped runners, and slots neither in
/// the map nor driven by a runner — and puts the rest in a canonical order,
/// so that states differing only in their dead history are one state.
pub(super) fn normalize(s: &mut State) {
    let mut runners = std::mem::take(&mut s.runners);
    runners.retain(|r| r.active());
    let key_of = |r: &Runner| s.slots[usize::from(r.slot)].key;
    let word_of = |r: &Runner| s.slots[usize::from(r.slot)].word;
    runners.sort_by_key(|r| {
        (
            key_of(r),
            word_of(r),
            r.after,
            phase_rank(r.phase),
            r.failures,
            r.covering,
            r.permit,
            r.ticket,
        )
    });
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
    for r in &mut out.runners {
        r.covering = rename(r.covering);
    }
    out
}

pub(super) fn step_rank(step: Step) -> (u8, u8) {
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

pub(super) fn request_rank(r: &Request) -> (u8, u8, bool, bool, bool) {
    let fate = match r.fate {
        Fate::NotInvoked => 0,
        Fate::InFlight => 1,
        Fate::Rejected => 2,
        Fate::Owed => 3,
        Fate::Covered => 4,
    };
    (
        r.key,
        fate,
        r.during_panic,
        r.during_retried,
        r.during_given_up,
    )
}

pub(super) fn phase_rank(p: Phase) -> u8 {
    match p {
        Phase::Due => 10,
        Phase::Waiting => 11,
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
