//! The per-key state word: its bits, its legal transitions, and nothing else.
//!
//! A key that has a slot in the map owns one `AtomicU64` laid out as
//!
//! ```text
//!  63                                   2   1   0
//! +--------------------------------------+---+---+
//! |        cycles begun (62 bits)        | P | R |
//! +--------------------------------------+---+---+
//!   R = RUNNING  a runner owns this slot; clear means the slot is dead
//!   P = PENDING  a request arrived that no begun cycle covers yet
//! ```
//!
//! A slot exists only while its key is active: it is born `RUNNING|PENDING`
//! (the request that created it is pending) and dies by clearing `RUNNING`.
//! There is no idle-but-present state; an idle key has no slot (INV-6).
//!
//! | transition | by        | from                    | to                         | atomic op                      |
//! |------------|-----------|-------------------------|----------------------------|--------------------------------|
//! | create     | requester | (no slot)               | `R\|P`, cycles 0           | store before publication       |
//! | request    | requester | any                     | `\|P`                      | `fetch_or(PENDING)`            |
//! | begin      | runner    | `R\|P`, cycles c        | `R`, cycles c+1            | `fetch_add(CYCLE_ONE-PENDING)` |
//! | go idle    | runner    | `R`, cycles c (exactly) | dead (`R` clear), cycles c | `compare_exchange`             |
//!
//! A `request` that returns a dead previous state did nothing useful (setting
//! `P` on a dead slot is harmless: nothing ever reads it again as work), and
//! the requester goes on to create a fresh slot.
//!
//! Only the runner clears `PENDING` (in `begin`) and only the runner clears
//! `RUNNING` (in `go idle`), so `begin` can be a blind `fetch_add`: when the
//! runner calls it, `PENDING` is known to be set (the slot was born pending,
//! or `go idle` just failed because a request set it).
//!
//! The functions below are pure: the atomic code in `slot.rs` applies them, and
//! an executable spec can call the same functions.

/// A runner owns the slot. Clear means the slot is dead and must be replaced.
pub(crate) const RUNNING: u64 = 0b01;
/// A request arrived that no begun cycle covers yet.
pub(crate) const PENDING: u64 = 0b10;
/// Where the cycles-begun counter starts.
pub(crate) const CYCLE_SHIFT: u32 = 2;
/// One unit of the cycles-begun counter.
pub(crate) const CYCLE_ONE: u64 = 1 << CYCLE_SHIFT;
/// The flag bits.
pub(crate) const FLAGS: u64 = CYCLE_ONE - 1;

/// The state a slot is born in: `RUNNING | PENDING` (asserted below).
pub(crate) const FRESH: u64 = 0b11;

/// What `begin` adds to the word: one more cycle, and the pending mark
/// consumed. Valid because `PENDING` is set whenever `begin` runs; the
/// subtraction is written as wrapping arithmetic so the constant exists, and
/// the `fetch_add` result is exactly `s - PENDING + CYCLE_ONE`.
pub(crate) const BEGIN_DELTA: u64 = CYCLE_ONE.wrapping_sub(PENDING);

static_assertions::const_assert_eq!(RUNNING & PENDING, 0);
static_assertions::const_assert!(FRESH == RUNNING | PENDING && FRESH & !FLAGS == 0);
static_assertions::const_assert_eq!(CYCLE_ONE & FLAGS, 0);
static_assertions::const_assert_eq!(FRESH + BEGIN_DELTA, RUNNING | CYCLE_ONE);

/// Whether a runner owns the slot (the slot is not dead).
#[inline]
pub(crate) const fn is_live(s: u64) -> bool {
    s & RUNNING != 0
}

/// Whether a request is waiting for a cycle to begin.
#[inline]
pub(crate) const fn is_pending(s: u64) -> bool {
    s & PENDING != 0
}

/// How many cycles the slot has begun.
#[inline]
pub(crate) const fn cycles_begun(s: u64) -> u64 {
    s >> CYCLE_SHIFT
}

/// The `request` transition (what `fetch_or(PENDING)` computes).
#[cfg_attr(
    any(not(test), loom),
    allow(
        dead_code,
        reason = "the slot applies it as `fetch_or(PENDING)`; tests and the spec call it"
    )
)]
#[inline]
pub(crate) const fn request(s: u64) -> u64 {
    s | PENDING
}

/// What a request learns from the state it replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Requested {
    /// The slot is live: the cycle numbered `covered_by` (1-based, counted in
    /// this slot) will begin after this request and cover it.
    Coalesced {
        /// The covering cycle's number.
        covered_by: u64,
    },
    /// The slot was dead: the request must go to a fresh slot.
    Dead,
}

/// Interprets the previous state returned by the `request` RMW.
#[inline]
pub(crate) const fn requested(prev: u64) -> Requested {
    if is_live(prev) {
        Requested::Coalesced {
            covered_by: cycles_begun(prev) + 1,
        }
    } else {
        Requested::Dead
    }
}

/// The `begin` transition (what `fetch_add(BEGIN_DELTA)` computes).
///
/// # Panics
///
/// On a state where `begin` is not legal (not live, or nothing pending):
/// that is a bug in this crate, never a consequence of user input.
#[inline]
pub(crate) fn begin(s: u64) -> u64 {
    assert!(
        is_live(s) && is_pending(s),
        "coalescer: begin from illegal state {s:#b}"
    );
    s.wrapping_add(BEGIN_DELTA)
}

/// The `go idle` transition: the only state it may start from, given the
/// state right after this runner's last `begin`, and the dead state it
/// installs. The compare-exchange fails exactly when a request arrived.
#[inline]
pub(crate) fn go_idle(after_begin: u64) -> (u64, u64) {
    assert!(
        is_live(after_begin) && !is_pending(after_begin),
        "coalescer: go idle from illegal state {after_begin:#b}"
    );
    (after_begin, after_begin & !RUNNING)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn fresh_slot_begins_its_first_cycle() {
        let s = begin(FRESH);
        assert!(is_live(s) && !is_pending(s));
        assert_eq!(cycles_begun(s), 1);
    }

    #[test]
    fn request_on_live_slot_is_covered_by_the_next_cycle() {
        let s = begin(request(begin(FRESH)));
        assert_eq!(cycles_begun(s), 2);
        assert_eq!(requested(s), Requested::Coalesced { covered_by: 3 });
        assert_eq!(request(s), s | PENDING);
    }

    #[test]
    fn request_on_dead_slot_reports_dead() {
        let (from, to) = go_idle(begin(FRESH));
        assert_eq!(from, RUNNING | CYCLE_ONE);
        assert!(!is_live(to));
        assert_eq!(requested(to), Requested::Dead);
        assert_eq!(requested(request(to)), Requested::Dead);
    }

    #[test]
    fn begin_equals_the_fetch_add_it_is_applied_as() {
        for c in [0u64, 1, 2, 1 << 40] {
            let s = RUNNING | PENDING | (c << CYCLE_SHIFT);
            assert_eq!(begin(s), s.wrapping_add(BEGIN_DELTA));
            assert_eq!(cycles_begun(begin(s)), c + 1);
        }
    }

    #[test]
    fn requests_while_pending_change_nothing() {
        // The mark is a flag, not a count: any number of requests between
        // two cycles are one pending mark (INV-7's "one follow-up").
        let pending = request(begin(FRESH));
        assert_eq!(request(pending), pending);
        assert_eq!(request(FRESH), FRESH);
    }

    #[test]
    #[should_panic(expected = "begin from illegal state")]
    fn begin_without_pending_is_a_loud_bug() {
        let _ = begin(RUNNING);
    }

    #[test]
    #[should_panic(expected = "go idle from illegal state")]
    fn idle_with_pending_is_a_loud_bug() {
        let _ = go_idle(RUNNING | PENDING);
    }
}
