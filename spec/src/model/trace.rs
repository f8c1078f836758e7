//! Traces for people to read: a path as numbered steps, each with what it
//! changed.

use std::fmt::{self, Write as _};

use stateright::Path;

use super::steps::memo_holds;
use super::*;

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
        Action::TakeTicket { i } => match after.runners[usize::from(i)].phase {
            Phase::Ready => format!(
                "runner {i} (key {}) is due: takes a free permit",
                runner_key(i)
            ),
            _ => format!(
                "runner {i} (key {}) is due: no permit free, waits in line at {}",
                runner_key(i),
                after.runners[usize::from(i)].ticket
            ),
        },
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
        Action::FailAndRetry { i } => format!(
            "runner {i}'s cycle fails; the policy retries it: requests its own key, {} → {} \
             (owed again: {})",
            word(before, runner_slot(i)),
            word(after, runner_slot(i)),
            owed(after.slots[usize::from(runner_slot(i))].owed)
        ),
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
