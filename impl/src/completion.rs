//! The rendezvous between one cycle and the `request_and_wait` callers it
//! covers, blocking (condvar) or async (wakers).

use std::task::{Context, Poll, Waker};

use crate::sync::{Condvar, Mutex};

/// How a cycle ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The cycle returned normally.
    Completed,
    /// The cycle panicked; the panic was caught and reported.
    Panicked,
    /// The runner was aborted (the async coalescer was dropped without
    /// `shutdown`) before the cycle could end.
    Aborted,
}

impl Outcome {
    /// What `request_and_wait` returns for this outcome.
    pub(crate) fn into_result(self) -> Result<(), crate::RunError> {
        match self {
            Outcome::Completed => Ok(()),
            Outcome::Panicked => Err(crate::RunError::Panicked),
            Outcome::Aborted => Err(crate::RunError::Aborted),
        }
    }
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
    /// Guarded by its own mutex; `done` is notified and the wakers are woken
    /// when the outcome is set.
    state: Mutex<State>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// `None` until the cycle ends.
    outcome: Option<Outcome>,
    /// Async waiters to wake when it does.
    wakers: Vec<Waker>,
}

impl Completion {
    pub(crate) fn new(cycle: u64) -> Self {
        Completion {
            cycle,
            state: Mutex::new(State::default()),
            done: Condvar::new(),
        }
    }

    /// Records the outcome and wakes every waiter. The mutex makes the whole
    /// cycle happen-before each waiter's return. Only the first outcome
    /// counts (an abort after the end changes nothing).
    pub(crate) fn resolve(&self, outcome: Outcome) {
        let mut state = self.state.lock();
        if state.outcome.is_some() {
            return;
        }
        state.outcome = Some(outcome);
        let wakers = std::mem::take(&mut state.wakers);
        drop(state);
        self.done.notify_all();
        for waker in wakers {
            waker.wake();
        }
    }

    /// Blocks until the cycle ends and returns its outcome.
    pub(crate) fn wait(&self) -> Outcome {
        let mut state = self.state.lock();
        loop {
            if let Some(outcome) = state.outcome {
                return outcome;
            }
            state = self.done.wait(state);
        }
    }

    /// The outcome if the cycle has ended; otherwise registers `cx`'s waker.
    pub(crate) fn poll_wait(&self, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut state = self.state.lock();
        if let Some(outcome) = state.outcome {
            return Poll::Ready(outcome);
        }
        if !state.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            state.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
