//! What the checker checks: every invariant of `docs/invariants.md` as an
//! `always` property over the model's ghost state, and the `sometimes`
//! properties that show the model is not vacuous.

use stateright::Property;

use super::*;

/// The properties `spec` is checked against.
pub(super) fn all(spec: &Spec) -> Vec<Property<Spec>> {
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
        Property::always(
            "a ready runner's slot has a request pending (begin is enabled)",
            |m: &Spec, s: &State| {
                m.protocol != Protocol::Coalescer
                    || s.runners.iter().all(|r| {
                        r.phase != Phase::Ready
                            || state::is_pending(s.slots[usize::from(r.slot)].word)
                    })
            },
        ),
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
    if spec.panics {
        properties.push(Property::sometimes(
            "a request during a panicking cycle gets its follow-up",
            |_, s: &State| s.ghost.panic_follow_up,
        ));
    }
    if spec.retries > 0 {
        properties.extend([
            Property::always(
                "INV-9f no retry that began while closing is retried again, none beyond the bound",
                |_, s: &State| !s.ghost.retried_last_chance && !s.ghost.retried_beyond_bound,
            ),
            Property::sometimes(
                "retry: a request during a failing cycle folds into its retry",
                |_, s: &State| s.ghost.folded_into_retry,
            ),
            Property::sometimes(
                "retry: the retry covers the failed cycle's requests again",
                |_, s: &State| s.ghost.retry_covered_failed,
            ),
            Property::sometimes(
                "retry: after a give-up, a request during the failed cycle gets its follow-up",
                |_, s: &State| s.ghost.give_up_follow_up,
            ),
            Property::sometimes(
                "retry: a retry that began while closing fails and is given up on",
                |_, s: &State| s.ghost.last_chance_given_up,
            ),
        ]);
    }
    if spec.limit > 0 {
        properties.extend([
            Property::always(
                "INV-11a at most `limit` cycles run at once",
                |m: &Spec, s: &State| {
                    s.runners
                        .iter()
                        .filter(|r| r.phase == Phase::Running)
                        .count()
                        <= usize::from(m.limit)
                },
            ),
            Property::always(
                "INV-11 every permit is free or held: none lost, none made",
                |m: &Spec, s: &State| {
                    let held = s.runners.iter().filter(|r| r.active() && r.permit).count();
                    usize::from(s.free) + held == usize::from(m.limit)
                },
            ),
            Property::always(
                "INV-11b permits go down the line in order, and no runner waits while one is free",
                |_, s: &State| {
                    !s.ghost.overtaken
                        && (s.free == 0 || s.runners.iter().all(|r| r.phase != Phase::Waiting))
                },
            ),
            Property::always(
                "INV-11 a due or waiting runner's slot has a request pending",
                |_, s: &State| {
                    s.runners.iter().all(|r| {
                        !matches!(r.phase, Phase::Due | Phase::Waiting)
                            || state::is_pending(s.slots[usize::from(r.slot)].word)
                    })
                },
            ),
            Property::sometimes(
                "limit: a released permit is handed to a waiting runner",
                |_, s: &State| s.ghost.handed_off,
            ),
            Property::sometimes(
                "limit: a permit is handed off while closing, and the drain completes",
                |_, s: &State| s.ghost.handed_off_while_closing && s.shutdown == Shutdown::Done,
            ),
        ]);
    }
    if spec.marks {
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

/// Whether runner `r` owns a live slot (coalescer) or is a goroutine that has
/// not stopped (Go).
pub(super) fn live_runner(m: &Spec, s: &State, r: &Runner) -> bool {
    match m.protocol {
        Protocol::Coalescer => r.active() && state::is_live(s.slots[usize::from(r.slot)].word),
        Protocol::Go => r.active(),
    }
}

/// No requester is inside a request, no runner is active, and no shutdown is
/// half done.
pub(super) fn quiescent(s: &State) -> bool {
    s.requesters.iter().all(|r| r.step == Step::Idle)
        && s.runners.iter().all(|r| !r.active())
        && matches!(s.shutdown, Shutdown::NotStarted | Shutdown::Done)
}

pub(super) fn all_covered(s: &State) -> bool {
    s.requests.iter().all(|r| r.fate != Fate::Owed)
}
