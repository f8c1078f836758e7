//! The Go algorithm the crate replaces, as the same model's other protocol:
//! one `running | pending` word per key, kept forever (D4), two critical
//! sections to go idle (D1), and a panic handler that clears `running`
//! alone (D2).

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
                accept(s, id, slot);
                s.ghost.coalesced = true;
            } else {
                s.slots[slot].word |= GO_RUNNING;
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
            }
        }
        Action::Begin { i } => {
            cover(s, usize::from(i));
        }
        Action::Finish { i, panicked } => {
            let iu = usize::from(i);
            if panicked {
                mark_during_panic(s, iu);
                // D2: the deferred handler clears `running` and stops,
                // leaving `pending` as it is.
                let slot = usize::from(s.runners[iu].slot);
                s.slots[slot].word &= !GO_RUNNING;
                exit(s, iu, true);
            } else {
                s.runners[iu].phase = Phase::Ended;
            }
        }
        Action::GoIdle { i } => {
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
        Action::ClearRunning { i } => {
            // Second critical section: running = false (D1 in between).
            let iu = usize::from(i);
            let slot = usize::from(s.runners[iu].slot);
            s.slots[slot].word &= !GO_RUNNING;
            exit(s, iu, false);
        }
        _ => return None,
    }
    Some(())
}
