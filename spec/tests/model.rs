//! The exhaustive check of the protocol, and of the Go algorithm beside it.
//! Not built under `--cfg loom` (the model checker is not part of that
//! build).
#![cfg(not(loom))]

use coalescer_spec::model::{run, Run, Spec};

/// `run` found no counterexample, reached every non-vacuity example, and was
/// exhaustive, not cut short: far more states than any path is long.
fn assert_holds(run: &Run, what: &str) {
    assert!(
        run.counterexamples.is_empty(),
        "{what} violates an invariant:\n{run}"
    );
    assert!(
        run.unreached.is_empty(),
        "the model is vacuous in part: {:?} never happens",
        run.unreached
    );
    assert!(
        run.states > 1_000_000,
        "only {} states explored",
        run.states
    );
}

/// Every invariant holds in every reachable state of the coalescer's
/// protocol at the spec's bounds, and every non-vacuity example is reached.
#[test]
fn the_coalescer_protocol_holds_every_invariant_in_every_state() {
    let run = run(Spec::coalescer());
    eprint!("{run}");
    assert_holds(&run, "the coalescer's protocol");
}

/// The same with memos and marks (`Spec::marks`, smaller bounds): every
/// invariant in every state, and every path of a marked request reached —
/// accepted through the mark, found by a dying runner's check, taken back
/// and made again, sent to the map by a dead slot, made again when the memo
/// moves. With the take-back outside the slot's lock (the first version),
/// this check finds a request accepted through the mark and never covered
/// (docs/spec.md).
#[test]
fn the_protocol_with_memos_and_marks_holds_every_invariant_in_every_state() {
    let run = run(Spec::marks());
    eprint!("{run}");
    assert_holds(&run, "the protocol with marks");
}

/// The same with a retry policy (`Spec::retry`): a failed cycle retried up
/// to twice in a row or given up on, with every other step racing the
/// retry's delay — every invariant in every state, and a request folded
/// into a retry, a retry covering its failed cycle's requests, a give-up's
/// follow-up and a last chance given up on all reached.
#[test]
fn inv9_the_protocol_with_retries_holds_every_invariant_in_every_state() {
    let run = run(Spec::retry());
    eprint!("{run}");
    assert_holds(&run, "the protocol with retries");
}

/// The same with a concurrency limit of 1 (`Spec::limit`): permits handed
/// off as cycles end, racing requests, panics and the shutdown — every
/// invariant in every state, the limit, the line's order and the permits'
/// conservation, and a hand-off while closing reached.
#[test]
fn inv11_the_protocol_with_a_limit_holds_every_invariant_in_every_state() {
    let run = run(Spec::limit());
    eprint!("{run}");
    assert_holds(&run, "the protocol with a limit");
}

/// The Go algorithm, at the same bounds: the checker finds its lost wakeup
/// (D1) and its panic stranding (D2), each as a shortest trace.
#[test]
fn the_go_algorithm_loses_a_wakeup_and_strands_a_request_on_panic() {
    let run = run(Spec::go());
    eprint!("{run}");
    let d1 = run
        .counterexample("INV-2 no accepted request is stranded")
        .expect("the checker must find D1 in the Go algorithm");
    // D1: the runner saw nothing pending, a request then set pending on a
    // running key, and the runner cleared `running` and stopped.
    assert!(d1.contains("saw pending clear"), "not a D1 trace:\n{d1}");
    assert!(
        d1.contains("running, sets pending"),
        "not a D1 trace:\n{d1}"
    );
    assert!(
        d1.contains("clears running and stops"),
        "not a D1 trace:\n{d1}"
    );
    assert_eq!(d1.lines().count(), 6, "not the shortest D1 trace:\n{d1}");

    let d2 = run
        .counterexample("INV-3 no request is stranded by a panicking cycle")
        .expect("the checker must find D2 in the Go algorithm");
    // D2: a request set pending during a cycle that then panicked, and the
    // panic handler cleared `running` without draining `pending`.
    assert!(
        d2.contains("running, sets pending"),
        "not a D2 trace:\n{d2}"
    );
    assert!(d2.contains("cycle panics"), "not a D2 trace:\n{d2}");
    assert_eq!(d2.lines().count(), 4, "not the shortest D2 trace:\n{d2}");

    // And D4: per-key state never freed.
    assert!(run
        .counterexample("INV-6 quiescent implies no slot in the map")
        .is_some());
}
