//! The replicas protocol (`coalescer-postgres`) holds in every reachable
//! state of the actor model; the three designs the peers use do not.
#![cfg(not(loom))]

use coalescer_spec::replicas::{check, Design, Replicas, ReplicasRun};

fn violated(run: &ReplicasRun, property: &str) -> bool {
    run.counterexamples
        .iter()
        .any(|(name, _)| *name == property)
}

// The default bounds (a lossy network *and* a crash: 45.9 million states,
// about four minutes here) are `coalescer-spec replicas`; `cargo test`
// checks the two halves, which together take about a minute.

#[test]
fn inv14_to_inv17_the_replicas_protocol_holds_on_a_lossy_network() {
    let run = check(Replicas {
        crash: false,
        ..Replicas::protocol()
    });
    eprint!("{run}");
    assert!(run.holds(), "{run}");
}

#[test]
fn inv14_to_inv17_the_replicas_protocol_holds_through_a_replica_crash() {
    let run = check(Replicas {
        lossy: false,
        ..Replicas::protocol()
    });
    eprint!("{run}");
    assert!(run.holds(), "{run}");
}

#[test]
fn inv14a_going_idle_in_two_statements_loses_a_request() {
    let run = check(Replicas::refuted(Design::TwoStepIdle));
    eprint!("{run}");
    assert!(violated(&run, "a committed request is never lost"), "{run}");
}

#[test]
fn inv15_effects_without_the_epoch_accept_a_paused_owners_late_effect() {
    let run = check(Replicas::refuted(Design::Unfenced));
    eprint!("{run}");
    assert!(
        violated(&run, "accepted effects come from the newest claim"),
        "{run}"
    );
}

#[test]
fn inv14_an_advisory_lock_skips_a_request_made_while_it_is_held() {
    let run = check(Replicas::refuted(Design::Advisory));
    eprint!("{run}");
    assert!(violated(&run, "a committed request is never lost"), "{run}");
}
