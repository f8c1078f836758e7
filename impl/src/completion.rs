//! The rendezvous between one cycle and the `request_and_wait` callers it
//! covers, blocking (condvar) or async (wakers).

use std::task::{Context, Poll, Waker};

use crate::sync::{Arc, Condvar, Mutex};

/// One cycle's completion, shared by every waiter that cycle covers: what
/// they are told, an `A` (the cycle's [`Answer`](crate::output::Answer)) —
/// its own, or that of another completion resolved with the same answer
/// (the waiters of failed cycles that one retry covers).
///
/// Created by the first waiter that registers for a slot's next cycle (under
/// the slot's `next` lock), taken by the runner in `begin`, and resolved once
/// when the cycle ends.
#[derive(Debug)]
pub(crate) struct Completion<A> {
    /// The number of the cycle (counted in its slot) this completion belongs
    /// to; checked against the cycle that takes it.
    pub(crate) cycle: u64,
    /// Guarded by its own mutex; `done` is notified and the wakers are woken
    /// when the outcome is set.
    state: Mutex<State<A>>,
    done: Condvar,
}

#[derive(Debug)]
struct State<A> {
    /// `None` until the cycle ends.
    answer: Option<Resolved<A>>,
    /// Async waiters to wake when it does.
    wakers: Vec<Waker>,
}

/// A resolved completion's answer.
#[derive(Debug)]
enum Resolved<A> {
    /// Its own.
    Answer(A),
    /// The answer of this completion, which holds it (`Answer`) itself.
    As(Arc<Completion<A>>),
}

impl<A> Completion<A> {
    pub(crate) fn new(cycle: u64) -> Self {
        Completion {
            cycle,
            state: Mutex::new(State {
                answer: None,
                wakers: Vec::new(),
            }),
            done: Condvar::new(),
        }
    }

    /// Records the answer and wakes every waiter. The mutex makes the whole
    /// cycle happen-before each waiter's return. Only the first answer
    /// counts (an abort after the end changes nothing); a later one is
    /// handed back, for the caller to dispose of.
    pub(crate) fn resolve(&self, answer: A) -> Option<A> {
        match self.settle(Resolved::Answer(answer)) {
            Some(Resolved::Answer(answer)) => Some(answer),
            _ => None,
        }
    }

    /// Resolves this completion with the answer of `other`, which was
    /// resolved with one of its own already (by [`resolve`](Self::resolve)).
    pub(crate) fn resolve_as(&self, other: &Arc<Completion<A>>) {
        let _ = self.settle(Resolved::As(Arc::clone(other)));
    }

    /// Records `resolved` unless resolved already (then hands it back), and
    /// wakes every waiter.
    fn settle(&self, resolved: Resolved<A>) -> Option<Resolved<A>> {
        let mut state = self.state.lock();
        if state.answer.is_some() {
            return Some(resolved);
        }
        state.answer = Some(resolved);
        let wakers = std::mem::take(&mut state.wakers);
        drop(state);
        self.done.notify_all();
        for waker in wakers {
            waker.wake();
        }
        None
    }
}

impl<A: Clone> Completion<A> {
    /// Blocks until the cycle ends and returns (a copy of) its answer.
    pub(crate) fn wait(&self) -> A {
        let mut state = self.state.lock();
        loop {
            match &state.answer {
                Some(Resolved::Answer(answer)) => return answer.clone(),
                Some(Resolved::As(other)) => {
                    let other = Arc::clone(other);
                    drop(state);
                    return other.wait();
                }
                None => state = self.done.wait(state),
            }
        }
    }

    /// The answer if the cycle has ended; otherwise registers `cx`'s waker.
    pub(crate) fn poll_wait(&self, cx: &mut Context<'_>) -> Poll<A> {
        let mut state = self.state.lock();
        match &state.answer {
            Some(Resolved::Answer(answer)) => return Poll::Ready(answer.clone()),
            Some(Resolved::As(other)) => {
                let other = Arc::clone(other);
                drop(state);
                return other.poll_wait(cx);
            }
            None => {}
        }
        if !state.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            state.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
