//! The history oracle: a correct history passes, and each invariant's
//! violation is reported as that invariant, at the event that shows it.

use coalescer::Admission;
use coalescer_spec::{check, check_with, Answer, Event, History, Invariant, Options};

use Event::*;

fn invoked(request: u64, key: u8) -> Event<u8> {
    Invoked {
        request,
        key,
        wait: false,
        wrote: None,
    }
}

fn wait(request: u64, key: u8) -> Event<u8> {
    Invoked {
        request,
        key,
        wait: true,
        wrote: None,
    }
}

fn started(request: u64) -> Event<u8> {
    Accepted {
        request,
        admission: Admission::Started,
    }
}

fn coalesced(request: u64) -> Event<u8> {
    Accepted {
        request,
        admission: Admission::Coalesced,
    }
}

fn began(key: u8) -> Event<u8> {
    CycleBegan { key, saw: None }
}

fn ended(key: u8) -> Event<u8> {
    CycleEnded { key }
}

/// The invariant `events` breaks, and where.
fn violation(events: Vec<Event<u8>>) -> (Invariant, usize) {
    let v = check(&History::new(events)).expect_err("the oracle accepted a bad history");
    eprintln!("{v}");
    (v.invariant, v.at)
}

/// Two keys, a coalesced request during a cycle, a panicking cycle with its
/// report, a waiter, and a shutdown that drains: everything holds.
#[test]
fn a_correct_history_passes() {
    let h = History::new(vec![
        invoked(0, 1),
        started(0),
        began(1),
        invoked(1, 1),
        coalesced(1),
        invoked(2, 2),
        started(2),
        began(2),
        CyclePanicked { key: 1 },
        PanicReported { key: 1 },
        began(1),
        wait(3, 2),
        ended(2),
        began(2),
        ended(1),
        ended(2),
        Waited {
            request: 3,
            result: Answer::Completed,
        },
        ShutdownBegan,
        invoked(4, 1),
        ShutdownEnded,
        Rejected { request: 4 },
        invoked(5, 2),
        Rejected { request: 5 },
    ]);
    assert_eq!(check(&h), Ok(()));
}

/// A request whose step lies inside a cycle's interval may be covered by
/// it: the oracle gives the benefit of the doubt (soundness).
#[test]
fn a_cycle_that_began_during_the_call_may_cover_it() {
    let h = History::new(vec![invoked(0, 1), began(1), started(0), ended(1)]);
    assert_eq!(check(&h), Ok(()));
}

#[test]
fn inv1_overlapping_cycles_of_one_key() {
    let events = vec![
        invoked(0, 1),
        started(0),
        invoked(1, 1),
        coalesced(1),
        began(1),
        began(1),
        ended(1),
        ended(1),
    ];
    assert_eq!(violation(events), (Invariant::MutualExclusion, 5));
}

#[test]
fn inv1_started_while_a_cycle_ran_through_the_whole_call() {
    let events = vec![
        invoked(0, 1),
        started(0),
        began(1),
        invoked(1, 1),
        started(1),
        ended(1),
    ];
    assert_eq!(violation(events), (Invariant::MutualExclusion, 4));
}

/// D1 as a history: a request accepted during the last cycle, and no cycle
/// after it.
#[test]
fn inv2_a_request_accepted_during_the_last_cycle_is_lost() {
    let events = vec![
        invoked(0, 1),
        started(0),
        began(1),
        invoked(1, 1),
        coalesced(1),
        ended(1),
    ];
    assert_eq!(violation(events), (Invariant::NoLostWakeup, 4));
}

#[test]
fn inv2_a_wait_that_returns_before_its_cycle_completed() {
    let events = vec![
        wait(0, 1),
        began(1),
        Waited {
            request: 0,
            result: Answer::Completed,
        },
        ended(1),
    ];
    assert_eq!(violation(events), (Invariant::NoLostWakeup, 2));
}

#[test]
fn inv3_a_panic_reported_twice_or_never() {
    let twice = vec![
        invoked(0, 1),
        started(0),
        began(1),
        CyclePanicked { key: 1 },
        PanicReported { key: 1 },
        PanicReported { key: 1 },
    ];
    assert_eq!(violation(twice), (Invariant::PanicContainment, 5));
    let never = vec![
        invoked(0, 1),
        started(0),
        began(1),
        CyclePanicked { key: 1 },
    ];
    assert_eq!(violation(never), (Invariant::PanicContainment, 4));
}

#[test]
fn inv3_a_waiter_told_panicked_by_a_cycle_that_completed() {
    let events = vec![
        wait(0, 1),
        began(1),
        ended(1),
        Waited {
            request: 0,
            result: Answer::Panicked,
        },
    ];
    assert_eq!(violation(events), (Invariant::PanicContainment, 3));
}

#[test]
fn inv4_the_covering_cycle_did_not_see_the_write() {
    let events = vec![
        Invoked {
            request: 0,
            key: 1,
            wait: false,
            wrote: Some(7),
        },
        started(0),
        CycleBegan {
            key: 1,
            saw: Some(6),
        },
        ended(1),
    ];
    assert_eq!(violation(events), (Invariant::HappensBefore, 2));
}

#[test]
fn inv5_a_cycle_after_shutdown_returned() {
    let events = vec![
        invoked(0, 1),
        started(0),
        ShutdownBegan,
        ShutdownEnded,
        began(1),
        ended(1),
    ];
    assert_eq!(violation(events), (Invariant::Shutdown, 4));
}

#[test]
fn inv5_shutdown_returned_while_a_cycle_ran() {
    let events = vec![
        invoked(0, 1),
        started(0),
        began(1),
        ShutdownBegan,
        ShutdownEnded,
        ended(1),
    ];
    assert_eq!(violation(events), (Invariant::Shutdown, 4));
}

#[test]
fn inv5_accepted_after_shutdown_and_rejected_before_it() {
    let after = vec![ShutdownBegan, ShutdownEnded, invoked(0, 1), started(0)];
    assert_eq!(violation(after), (Invariant::Shutdown, 3));
    let before = vec![invoked(0, 1), Rejected { request: 0 }];
    assert_eq!(violation(before), (Invariant::Shutdown, 1));
}

#[test]
fn inv5_aborted_without_a_drop() {
    let events = vec![
        wait(0, 1),
        Waited {
            request: 0,
            result: Answer::Aborted,
        },
    ];
    assert_eq!(violation(events), (Invariant::Shutdown, 1));
}

/// After the abort path (drop without shutdown), accepted plain requests may
/// go unrun and waiters may be told `Aborted`.
#[test]
fn the_abort_path_may_leave_requests_unrun() {
    let h = History::new(vec![
        invoked(0, 1),
        started(0),
        wait(1, 2),
        Aborted,
        Waited {
            request: 1,
            result: Answer::Aborted,
        },
    ]);
    assert_eq!(check(&h), Ok(()));
}

#[test]
fn inv7_a_cycle_with_no_request_to_cover() {
    let events = vec![
        invoked(0, 1),
        started(0),
        began(1),
        ended(1),
        began(1),
        ended(1),
    ];
    assert_eq!(violation(events), (Invariant::NoSpuriousCycle, 4));
}

/// The opening of the INV-7 histories: request 0 starts key 1's runner and
/// its first cycle begins; then each request of `during` is invoked and
/// coalesced in turn while that cycle runs.
fn first_cycle_with(during: &[u64]) -> Vec<Event<u8>> {
    let mut events = vec![invoked(0, 1), started(0), began(1)];
    for &r in during {
        events.extend([invoked(r, 1), coalesced(r)]);
    }
    events
}

/// The counting rule's blind spot, which an unconsumed mark falls into:
/// three requests during cycle 1, then cycles 2 and 3. Three cycles for
/// four requests passes a count, but every request returned before cycle 1
/// ended, so cycle 2 covers all of them and cycle 3 covers none.
#[test]
fn inv7_a_third_cycle_after_requests_that_all_returned_during_the_first() {
    let mut events = first_cycle_with(&[1, 2, 3]);
    events.extend([ended(1), began(1), ended(1), began(1), ended(1)]);
    assert_eq!(violation(events), (Invariant::NoSpuriousCycle, 12));
}

/// The same three cycles are fine when a request's call reaches past the
/// end of cycle 1 (its step may lie after cycle 2 began, so cycle 3 may be
/// the one that covers it: the benefit of the doubt), or when a request is
/// made during cycle 2.
#[test]
fn inv7_a_request_whose_call_outlasts_a_cycle_may_cover_the_one_after_next() {
    let mut straddling = first_cycle_with(&[2]);
    straddling.insert(3, invoked(1, 1));
    straddling.extend([
        ended(1),
        began(1),
        coalesced(1),
        ended(1),
        began(1),
        ended(1),
    ]);
    assert_eq!(check(&History::new(straddling)), Ok(()));
    let mut during_cycle_2 = first_cycle_with(&[1]);
    during_cycle_2.extend([ended(1), began(1), invoked(2, 1), coalesced(2)]);
    during_cycle_2.extend([ended(1), began(1), ended(1)]);
    assert_eq!(check(&History::new(during_cycle_2)), Ok(()));
}

/// One request covers one cycle: a request whose call spans the end of
/// cycle 1 and the beginning of cycle 2 may cover cycle 2 or cycle 3, not
/// both.
#[test]
fn inv7_each_request_covers_one_cycle() {
    let mut events = first_cycle_with(&[]);
    events.extend([invoked(1, 1), ended(1), began(1), coalesced(1)]);
    events.extend([ended(1), began(1), ended(1)]);
    assert_eq!(violation(events), (Invariant::NoSpuriousCycle, 8));
}

/// A `request_and_wait` is pinned by its admission, not by its (much later)
/// return: a plain request and an async waiter, both admitted during
/// cycle 1, are both covered by cycle 2, so cycle 3 is spurious, even though
/// the wait returned after cycle 2 ended (its return alone would let it
/// cover cycle 3).
#[test]
fn inv7_a_waiter_is_pinned_by_its_admission() {
    let mut events = first_cycle_with(&[1]);
    events.extend([wait(2, 1), coalesced(2), ended(1), began(1), ended(1)]);
    events.push(Waited {
        request: 2,
        result: Answer::Completed,
    });
    events.extend([began(1), ended(1)]);
    assert_eq!(violation(events), (Invariant::NoSpuriousCycle, 11));
}

#[test]
fn malformed_histories_are_reported_as_such() {
    for events in [
        vec![started(0)],
        vec![invoked(0, 1), invoked(0, 1)],
        vec![invoked(0, 1)],
        vec![ended(1)],
        vec![ShutdownEnded],
        vec![invoked(0, 1), started(0), began(1)],
    ] {
        assert_eq!(violation(events).0, Invariant::WellFormed);
    }
}

/// INV-8: a failed cycle's waiter is told `Failed`; told anything else, or
/// told `Failed` by a cycle that completed, the history is wrong.
#[test]
fn inv8_a_waiter_gets_the_answer_of_its_covering_cycle() {
    let failed = |answer| {
        vec![
            wait(0, 1),
            started(0),
            began(1),
            CycleFailed { key: 1 },
            Waited {
                request: 0,
                result: answer,
            },
        ]
    };
    assert_eq!(check(&History::new(failed(Answer::Failed))), Ok(()));
    let told_completed = check(&History::new(failed(Answer::Completed))).unwrap_err();
    assert_eq!(
        told_completed.invariant,
        Invariant::NoLostWakeup,
        "{told_completed}"
    );
    let completed_but_failed = vec![
        wait(0, 1),
        started(0),
        began(1),
        ended(1),
        Waited {
            request: 0,
            result: Answer::Failed,
        },
    ];
    let v = check(&History::new(completed_but_failed)).unwrap_err();
    assert_eq!((v.invariant, v.at), (Invariant::CoveringAnswer, 4), "{v}");
}

/// INV-7 with INV-9: a cycle that failed may be followed by a retry that
/// covers the same request — a spurious cycle without retries, none with
/// them; a cycle after a success still needs a request of its own.
#[test]
fn inv9_a_retry_may_cover_its_failed_cycles_requests() {
    let retried = History::new(vec![
        invoked(0, 1),
        started(0),
        began(1),
        CycleFailed { key: 1 },
        began(1),
        ended(1),
    ]);
    let v = check(&retried).unwrap_err();
    assert_eq!(v.invariant, Invariant::NoSpuriousCycle, "{v}");
    assert_eq!(check_with(&retried, Options { retries: true }), Ok(()));
    // Retried twice: the request's range runs on through both retries.
    let twice = History::new(vec![
        invoked(0, 1),
        started(0),
        began(1),
        CycleFailed { key: 1 },
        began(1),
        CycleFailed { key: 1 },
        began(1),
        ended(1),
    ]);
    assert_eq!(check_with(&twice, Options { retries: true }), Ok(()));
    let after_success = History::new(vec![
        invoked(0, 1),
        started(0),
        began(1),
        ended(1),
        began(1),
        ended(1),
    ]);
    let v = check_with(&after_success, Options { retries: true }).unwrap_err();
    assert_eq!((v.invariant, v.at), (Invariant::NoSpuriousCycle, 4), "{v}");
}
