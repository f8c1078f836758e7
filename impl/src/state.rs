//! The per-key state word: its bits, its legal transitions, and nothing else.
//!
//! A key that has a slot in the map owns one `AtomicU64` laid out as
//!
//! ```text
//!  63                               3   2   1   0
//! +----------------------------------+---+---+---+
//! |      cycles begun (61 bits)      | D | P | R |
//! +----------------------------------+---+---+---+
//!   R = RUNNING  a runner owns this slot; clear means the slot is dead
//!   P = PENDING  a request arrived that no begun cycle covers yet
//!   D = DYING    the runner is about to kill the slot, once it has checked
//!                the slot's marks (below) for requests
//! ```
//!
//! A slot exists only while its key is active: it is born `RUNNING|PENDING`
//! (the request that created it is pending) and dies by clearing `RUNNING`.
//! There is no idle-but-present state; an idle key has no slot (INV-6).
//!
//! | transition | by        | from                      | to                           | atomic op                      |
//! |------------|-----------|---------------------------|------------------------------|--------------------------------|
//! | create     | requester | (no slot)                 | `R\|P`, cycles 0             | store before publication       |
//! | request    | requester | any                       | `\|P`                        | `fetch_or(PENDING)`            |
//! | begin      | runner    | `R\|P`, cycles c          | `R`, cycles c+1              | `fetch_add(CYCLE_ONE-PENDING)` |
//! | dying      | runner    | `R`, cycles c (exactly)   | `R\|D`, cycles c             | `compare_exchange`             |
//! | revive     | runner    | `R\|D`, any `P`           | `R\|P`                       | `fetch_update`                 |
//! | die        | runner    | `R\|D`, cycles c (exactly)| dead (no flag), cycles c     | `compare_exchange`             |
//!
//! A `request` that returns a dead previous state did nothing useful (setting
//! `P` on a dead slot is harmless: nothing ever reads it again as work), and
//! the requester goes on to create a fresh slot. A `request` on a dying slot
//! is coalesced: its `P` makes `die` fail, and the runner revives.
//!
//! Going idle takes three steps because requests can also be *marked*
//! (`slot.rs`): a thread that requests the same key again and again writes a
//! mark of its own instead of this shared word, then reads the word. The
//! runner announces `D` before it checks the marks, and a marking request
//! that sees `D` (or a dead slot) takes its mark back; because both sides
//! write the mark with `AcqRel` swaps, at least one of them sees the other
//! (INV-2).
//!
//! Only the runner clears `PENDING` (in `begin`) and only the runner clears
//! `RUNNING` and `DYING`, so `begin` can be a blind `fetch_add`: when the
//! runner calls it, `PENDING` is known to be set (the slot was born pending,
//! going idle just failed because a request set it, or the runner revived
//! the slot, which sets it).
//!
//! The functions below are pure: the atomic code in `slot.rs` applies them, and
//! an executable spec can call the same functions.

/// A runner owns the slot. Clear means the slot is dead and must be replaced.
pub(crate) const RUNNING: u64 = 0b01;
/// A request arrived that no begun cycle covers yet.
pub(crate) const PENDING: u64 = 0b10;
/// The runner is checking the marks before it kills the slot.
pub(crate) const DYING: u64 = 0b100;
/// Where the cycles-begun counter starts.
pub(crate) const CYCLE_SHIFT: u32 = 3;
/// One unit of the cycles-begun counter.
pub(crate) const CYCLE_ONE: u64 = 1 << CYCLE_SHIFT;
/// The flag bits.
pub(crate) const FLAGS: u64 = CYCLE_ONE - 1;

/// The bits a marking request reads: `RUNNING | DYING` (asserted below).
pub(crate) const WATCHED: u64 = 0b101;

/// The state a slot is born in: `RUNNING | PENDING` (asserted below).
pub(crate) const FRESH: u64 = 0b11;

/// What `begin` adds to the word: one more cycle, and the pending bit
/// consumed. Valid because `PENDING` is set whenever `begin` runs; the
/// subtraction is written as wrapping arithmetic so the constant exists, and
/// the `fetch_add` result is exactly `s - PENDING + CYCLE_ONE`.
pub(crate) const BEGIN_DELTA: u64 = CYCLE_ONE.wrapping_sub(PENDING);

static_assertions::const_assert_eq!(RUNNING & PENDING, 0);
static_assertions::const_assert!(DYING & (RUNNING | PENDING) == 0 && DYING & !FLAGS == 0);
static_assertions::const_assert!(WATCHED == RUNNING | DYING);
static_assertions::const_assert!(FRESH == RUNNING | PENDING && FRESH & !FLAGS == 0);
static_assertions::const_assert_eq!(CYCLE_ONE & FLAGS, 0);
static_assertions::const_assert_eq!(FRESH + BEGIN_DELTA, RUNNING | CYCLE_ONE);

/// Whether a runner owns the slot (the slot is not dead).
#[inline]
pub(crate) const fn is_live(s: u64) -> bool {
    s & RUNNING != 0
}

/// Whether the runner is checking marks before it kills the slot.
#[inline]
pub(crate) const fn is_dying(s: u64) -> bool {
    s & DYING != 0
}

/// Whether a marking request that reads `s` (after setting its mark) is
/// covered: the slot is live and its runner has not begun to go idle, so
/// the runner will read the mark before the slot can die.
#[inline]
pub(crate) const fn accepts_marks(s: u64) -> bool {
    s & WATCHED == RUNNING
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
/// On a state where `begin` is not legal (not live, dying, or nothing
/// pending): that is a bug in this crate, never a consequence of user input.
#[inline]
pub(crate) fn begin(s: u64) -> u64 {
    assert!(
        is_live(s) && is_pending(s) && !is_dying(s),
        "coalescer: begin from illegal state {s:#b}"
    );
    s.wrapping_add(BEGIN_DELTA)
}

/// The `dying` transition, first step of going idle: the only state it may
/// start from, given the state right after this runner's last `begin`, and
/// the dying state it installs. The compare-exchange fails exactly when a
/// request set `PENDING`.
#[inline]
pub(crate) fn dying(after_begin: u64) -> (u64, u64) {
    assert!(
        is_live(after_begin) && !is_pending(after_begin) && !is_dying(after_begin),
        "coalescer: go idle from illegal state {after_begin:#b}"
    );
    (after_begin, after_begin | DYING)
}

/// The `die` transition, last step of going idle: from the dying state
/// `dying` installed, to the dead state. Fails exactly when a request set
/// `PENDING` meanwhile.
#[inline]
pub(crate) fn die(dying: u64) -> (u64, u64) {
    assert!(
        is_live(dying) && is_dying(dying) && !is_pending(dying),
        "coalescer: die from illegal state {dying:#b}"
    );
    (dying, dying & !WATCHED)
}

/// The `revive` transition: a dying slot that found a request (a mark, or
/// `PENDING`) goes back to live with a request pending, so the runner's next
/// `begin` is legal.
#[inline]
pub(crate) fn revive(s: u64) -> u64 {
    assert!(
        is_live(s) && is_dying(s),
        "coalescer: revive from illegal state {s:#b}"
    );
    (s & !DYING) | PENDING
}

#[cfg(test)]
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

    /// Going idle: live, then dying (marks no longer accepted, plain
    /// requests still coalesced), then dead.
    fn idle(after_begin: u64) -> u64 {
        let (from, dying_state) = dying(after_begin);
        assert_eq!(from, after_begin);
        let (from, dead) = die(dying_state);
        assert_eq!(from, dying_state);
        dead
    }

    #[test]
    fn request_on_dead_slot_reports_dead() {
        let after = begin(FRESH);
        assert_eq!(after, RUNNING | CYCLE_ONE);
        let dead = idle(after);
        assert_eq!(dead, CYCLE_ONE);
        assert!(!is_live(dead) && !accepts_marks(dead));
        assert_eq!(requested(dead), Requested::Dead);
        assert_eq!(requested(request(dead)), Requested::Dead);
    }

    #[test]
    fn a_dying_slot_refuses_marks_but_coalesces_requests() {
        let (_, dying_state) = dying(begin(FRESH));
        assert!(is_live(dying_state) && is_dying(dying_state));
        assert!(accepts_marks(begin(FRESH)));
        assert!(!accepts_marks(dying_state));
        assert_eq!(
            requested(dying_state),
            Requested::Coalesced { covered_by: 2 }
        );
        // A request's `P` makes `die` compare against the wrong word: it fails.
        assert_ne!(request(dying_state), die(dying_state).0);
    }

    #[test]
    fn a_revived_slot_begins_its_next_cycle() {
        let (_, dying_state) = dying(begin(FRESH));
        for s in [dying_state, request(dying_state)] {
            let revived = revive(s);
            assert!(is_live(revived) && is_pending(revived) && !is_dying(revived));
            assert!(accepts_marks(revived));
            assert_eq!(cycles_begun(begin(revived)), 2);
        }
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
        // two cycles are one pending bit (INV-7's "one follow-up").
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
        let _ = dying(RUNNING | PENDING);
    }

    #[test]
    #[should_panic(expected = "die from illegal state")]
    fn dying_without_the_dying_mark_is_a_loud_bug() {
        let _ = die(RUNNING);
    }

    #[test]
    #[should_panic(expected = "revive from illegal state")]
    fn reviving_a_slot_not_dying_is_a_loud_bug() {
        let _ = revive(RUNNING);
    }

    #[test]
    #[should_panic(expected = "begin from illegal state")]
    fn begin_while_dying_is_a_loud_bug() {
        let _ = begin(RUNNING | PENDING | DYING);
    }
}
