//! The rendezvous between one cycle and the `request_and_wait` callers it
//! covers.

use crate::sync::{lock, wait, Condvar, Mutex};

/// How a cycle ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The cycle returned normally.
    Completed,
    /// The cycle panicked; the panic was caught and reported.
    Panicked,
}

/// One cycle's completion, shared by every waiter that cycle covers.
///
/// Created by the first waiter that registers for a slot's next cycle (under
/// the slot's `next` lock), taken by the runner in `begin`, and resolved once
/// when the cycle ends.
#[derive(Debug)]
pub(crate) struct Completion {
    /// The number of the cycle (counted in its slot) this completion belongs
    /// to; checked against the cycle that takes it.
    pub(crate) cycle: u64,
    /// `None` until the cycle ends. Guarded by its own mutex; `done` is
    /// notified, under the lock, when it is set.
    outcome: Mutex<Option<Outcome>>,
    done: Condvar,
}

impl Completion {
    pub(crate) fn new(cycle: u64) -> Self {
        Completion {
            cycle,
            outcome: Mutex::new(None),
            done: Condvar::new(),
        }
    }

    /// Records the outcome and wakes every waiter. The mutex makes the whole
    /// cycle happen-before each waiter's return from [`Completion::wait`].
    pub(crate) fn resolve(&self, outcome: Outcome) {
        let mut slot = lock(&self.outcome);
        debug_assert!(slot.is_none(), "completion resolved twice");
        *slot = Some(outcome);
        self.done.notify_all();
    }

    /// Blocks until the cycle ends and returns its outcome.
    pub(crate) fn wait(&self) -> Outcome {
        let mut slot = lock(&self.outcome);
        loop {
            if let Some(outcome) = *slot {
                return outcome;
            }
            slot = wait(&self.done, slot);
        }
    }
}
