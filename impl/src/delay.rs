//! Delayed requests (`request_after`): a deadline, not an extra run.
//!
//! A delayed request is covered by the first cycle of its key that begins
//! after the call; if none begins sooner, it becomes an immediate request at
//! its deadline. Each key has at most one delayed request outstanding — a
//! *record* in its map shard (`registry.rs`), beside the shard's active
//! slots and under the same lock — and each record with a deadline has one
//! entry in the coalescer's timer queue (here). The earliest deadline wins.
//!
//! A record knows what would cover it:
//!
//! - made while the key was idle, the key's next slot: whoever creates that
//!   slot (a request, or the record's own deadline) removes the record under
//!   the shard lock, and that slot's first cycle covers it;
//! - made while the key's slot was live with no cycle owed, that slot and
//!   how many cycles it had begun: at the deadline the record requests a
//!   cycle *unless* that count has moved ([`Slot::request_unless_begun`],
//!   one compare-and-swap on the state word, against the runner's `begin`),
//!   so an immediate request's cycle always covers a pending delayed one and
//!   a delayed request never causes a second cycle;
//! - made while a cycle was owed (the slot pending: a follow-up, a retry, a
//!   paced or debounced cycle): nothing — that cycle covers it, and no record
//!   is kept.
//!
//! One timer per coalescer serves every deadline: a tokio task or a thread,
//! started by the first record and gone when the queue is empty, so an idle
//! key with a delayed request costs a record and a queue entry, never a
//! runner or a thread of its own. `close` turns every record into an
//! immediate request inside its barrier, before the drain (INV-5).
//!
//! [`Slot::request_unless_begun`]: crate::slot::Slot::request_unless_begun

use std::collections::BTreeMap;
use std::future::{poll_fn, Future};
use std::hash::{BuildHasher, Hash};
use std::pin::pin;
use std::task::{Poll, Waker};
use std::time::Instant;

use crate::driver::Driver;
use crate::output::CycleOutput;
use crate::runner::Shared;
use crate::sync::{Arc, Mutex};

/// The timer queue of one coalescer: every record's deadline.
#[derive(Debug, Default)]
pub(crate) struct Delays {
    queue: Mutex<Queue>,
}

#[derive(Debug, Default)]
struct Queue {
    /// Each record with a deadline, by deadline and number: its key's hash
    /// (with the number, that finds the record in its shard without calling
    /// the key's `Hash` or `Eq`).
    entries: BTreeMap<(Instant, u64), u64>,
    /// Numbers the records, so equal deadlines stay distinct.
    next: u64,
    /// Whether the timer is running.
    timing: bool,
    /// The timer's waker while it waits for the earliest entry.
    waker: Option<Waker>,
}

/// What the timer does next ([`Delays::next`]).
pub(crate) enum Next {
    /// These records (hash, number) are due: fire each.
    Due(Vec<(u64, u64)>),
    /// Nothing is due before this.
    Wait(Instant),
    /// The queue is empty: the timer has stopped.
    Stop,
}

impl Delays {
    /// A number for a new record.
    pub(crate) fn number(&self) -> u64 {
        let mut queue = self.queue.lock();
        queue.next += 1;
        queue.next
    }

    /// Queues record `number` (of a key with hash `hash`) for `deadline`.
    /// Whether the caller must start the timer (it is not running).
    pub(crate) fn schedule(&self, deadline: Instant, number: u64, hash: u64) -> bool {
        let mut queue = self.queue.lock();
        queue.entries.insert((deadline, number), hash);
        if queue.timing {
            if queue.earliest() == Some(deadline) {
                queue.wake();
            }
            return false;
        }
        queue.timing = true;
        true
    }

    /// Takes record `number`'s entry for `deadline` out of the queue (the
    /// record was covered, or moved to an earlier deadline).
    pub(crate) fn cancel(&self, deadline: Instant, number: u64) {
        let mut queue = self.queue.lock();
        let was_earliest = queue.earliest() == Some(deadline);
        queue.entries.remove(&(deadline, number));
        if was_earliest {
            queue.wake();
        }
    }

    /// The timer could not start: the next record starts it again.
    pub(crate) fn not_timing(&self) {
        self.queue.lock().timing = false;
    }

    /// Empties the queue (`close` has turned every record into a request)
    /// and wakes the timer, which then stops.
    pub(crate) fn clear(&self) {
        let mut queue = self.queue.lock();
        queue.entries.clear();
        queue.wake();
    }

    /// For the timer, at `now`: the entries due (taken out of the queue),
    /// or the next deadline, or — the queue empty — stop.
    fn next(&self, now: Instant) -> Next {
        let mut queue = self.queue.lock();
        let mut due = Vec::new();
        while let Some(entry) = queue.entries.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, number), hash) = entry.remove_entry();
            due.push((hash, number));
        }
        if !due.is_empty() {
            return Next::Due(due);
        }
        match queue.earliest() {
            Some(deadline) => Next::Wait(deadline),
            None => {
                queue.timing = false;
                Next::Stop
            }
        }
    }

    /// Waits until `deadline` on `driver`'s clock, or until the earliest
    /// entry is no longer `deadline` (an earlier one came, it was cancelled,
    /// or `close` cleared the queue).
    async fn wait<D: Driver>(&self, driver: &D, deadline: Instant) {
        let mut sleep = pin!(driver.timer_until(deadline));
        poll_fn(|cx| {
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            let mut queue = self.queue.lock();
            if queue.earliest() != Some(deadline) {
                return Poll::Ready(());
            }
            queue.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
    }
}

impl Queue {
    fn earliest(&self) -> Option<Instant> {
        self.entries
            .first_key_value()
            .map(|((deadline, _), _)| *deadline)
    }

    /// Wakes the waiting timer, if it waits, to look at the queue again.
    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// The timer: fires each record at its deadline, on the driver's clock,
/// until the queue is empty.
pub(crate) async fn keep_time<K, S, D, O>(shared: Arc<Shared<K, S, D, O>>)
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
    D: Driver,
    O: CycleOutput,
{
    let delays = shared.registry.delays();
    loop {
        match delays.next(shared.driver.now()) {
            Next::Due(due) => {
                for (hash, number) in due {
                    crate::shell::fire(&shared, hash, number);
                }
            }
            Next::Wait(deadline) => delays.wait(&shared.driver, deadline).await,
            Next::Stop => return,
        }
    }
}
