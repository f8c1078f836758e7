//! The global concurrency limit (`Builder::concurrency`): at most `n`
//! cycles run at once across all keys, and the permits go to keys in the
//! order they became due (INV-11).
//!
//! A runner takes a [`Ticket`] when its key is due — pending, with no wait
//! (pacing, a retry's delay) still holding it back — and begins the cycle
//! only once the ticket is granted. Meanwhile the slot stays live, so every
//! request folds into that one cycle. The runner gives the [`Permit`] back
//! as soon as the cycle returns, so the key's follow-up takes a new ticket,
//! behind every key that was already waiting.
//!
//! Everything is under one mutex: the count of free permits and the line of
//! waiting tickets, in the order they were taken. A ticket is numbered when
//! taken, and the line is granted from its front only, so the tickets
//! granted so far are exactly those numbered below `granted_below` that are
//! still alive: a ticket needs no state of its own to know it was granted.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::sync::{Arc, Mutex};

/// The permits and the line of keys waiting for one.
#[derive(Debug)]
pub(crate) struct Limit {
    line: Mutex<Line>,
}

#[derive(Debug)]
struct Line {
    /// Permits no cycle holds and no ticket has been granted.
    free: usize,
    /// The waiting tickets, by number (so in the order they were taken),
    /// each with the waker to wake when it is granted.
    waiting: VecDeque<(u64, Option<Waker>)>,
    /// The number the next ticket gets.
    next: u64,
    /// Every live ticket numbered below this has been granted.
    granted_below: u64,
}

impl Limit {
    /// A limit of `permits` cycles at once (the builder passes at least 1).
    pub(crate) fn new(permits: usize) -> Self {
        Limit {
            line: Mutex::new(Line {
                free: permits,
                waiting: VecDeque::new(),
                next: 0,
                granted_below: 0,
            }),
        }
    }

    /// Keys waiting for a permit.
    pub(crate) fn waiting(&self) -> usize {
        self.line.lock().waiting.len()
    }

    /// A ticket for a key that has just become due: granted at once if a
    /// permit is free and nobody is waiting, else at the back of the line.
    pub(crate) fn ticket(this: &Arc<Self>) -> Ticket {
        let mut line = this.line.lock();
        let number = line.next;
        line.next += 1;
        debug_assert!(
            line.free == 0 || line.waiting.is_empty(),
            "a free permit with keys waiting"
        );
        if line.free > 0 {
            line.free -= 1;
            line.granted_below = line.next;
        } else {
            line.waiting.push_back((number, None));
        }
        drop(line);
        Ticket {
            limit: Arc::clone(this),
            number,
            spent: false,
        }
    }

    /// Wakes `waker` once the ticket numbered `number` is granted — at
    /// once, if it already is. For a runner that is started parked, before
    /// anything polls its ticket.
    pub(crate) fn wake_when_granted(&self, number: u64, waker: Waker) {
        let granted = self.line.lock().granted_or_wake(number, &waker);
        if granted {
            waker.wake();
        }
    }

    /// Gives a permit back: to the ticket at the front of the line, if any
    /// (woken after the lock is released), else to the free count.
    fn release(&self) {
        let mut line = self.line.lock();
        let woken = match line.waiting.pop_front() {
            Some((number, waker)) => {
                line.granted_below = number + 1;
                waker
            }
            None => {
                line.free += 1;
                None
            }
        };
        drop(line);
        if let Some(waker) = woken {
            waker.wake();
        }
    }
}

impl Line {
    /// Where the ticket numbered `number` waits, if it does (the line is
    /// sorted by number).
    fn place(&self, number: u64) -> Option<usize> {
        self.waiting.binary_search_by_key(&number, |&(n, _)| n).ok()
    }

    /// Whether the ticket numbered `number` has been granted; if not,
    /// `waker` is the one its grant wakes.
    fn granted_or_wake(&mut self, number: u64, waker: &Waker) -> bool {
        if number < self.granted_below {
            return true;
        }
        if let Some(at) = self.place(number) {
            match &mut self.waiting[at].1 {
                Some(current) if current.will_wake(waker) => {}
                slot => *slot = Some(waker.clone()),
            }
        }
        false
    }
}

/// A key's place in the line; resolves to its [`Permit`]. Dropped before
/// that (its runner aborted), it leaves the line — or, if it was granted
/// meanwhile, passes the permit on.
#[derive(Debug)]
pub(crate) struct Ticket {
    limit: Arc<Limit>,
    number: u64,
    /// Set once the ticket has become a permit.
    spent: bool,
}

impl Ticket {
    /// This ticket's number, for [`Limit::wake_when_granted`].
    pub(crate) fn number(&self) -> u64 {
        self.number
    }
}

impl Future for Ticket {
    type Output = Permit;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Permit> {
        debug_assert!(!self.spent, "a ticket is polled until it is granted, once");
        let granted = self
            .limit
            .line
            .lock()
            .granted_or_wake(self.number, cx.waker());
        if !granted {
            return Poll::Pending;
        }
        self.spent = true;
        Poll::Ready(Permit(Arc::clone(&self.limit)))
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.spent {
            return;
        }
        let mut line = self.limit.line.lock();
        if self.number < line.granted_below {
            // Granted, but never used: the permit goes on down the line.
            drop(line);
            self.limit.release();
            return;
        }
        if let Some(at) = line.place(self.number) {
            let _ = line.waiting.remove(at);
        }
    }
}

/// The right to run one cycle; given back when dropped.
#[derive(Debug)]
pub(crate) struct Permit(Arc<Limit>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.release();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::Limit;
    use std::future::Future;
    use std::pin::pin;
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    /// A waker that does nothing (`Waker::noop` is newer than the MSRV).
    struct Noop;

    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }

    fn granted(ticket: std::pin::Pin<&mut super::Ticket>) -> Option<super::Permit> {
        let waker = Waker::from(Arc::new(Noop));
        match ticket.poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(permit) => Some(permit),
            Poll::Pending => None,
        }
    }

    /// Permits go to tickets in the order they were taken, each released
    /// permit to the front of the line (INV-11).
    #[test]
    fn permits_go_down_the_line_in_order() {
        let limit = Arc::new(Limit::new(1));
        let mut first = pin!(Limit::ticket(&limit));
        let mut second = pin!(Limit::ticket(&limit));
        let mut third = pin!(Limit::ticket(&limit));
        assert_eq!(limit.waiting(), 2);
        let permit = granted(first.as_mut()).expect("a free permit, nobody waiting");
        assert!(granted(third.as_mut()).is_none());
        assert!(granted(second.as_mut()).is_none());
        drop(permit);
        assert!(
            granted(third.as_mut()).is_none(),
            "the second ticket is first in line"
        );
        let permit = granted(second.as_mut()).expect("the released permit");
        drop(permit);
        assert!(granted(third.as_mut()).is_some());
        assert_eq!(limit.waiting(), 0);
    }

    /// A ticket dropped while waiting leaves the line; one dropped after it
    /// was granted passes the permit on: none is lost.
    #[test]
    fn a_dropped_ticket_loses_no_permit() {
        let limit = Arc::new(Limit::new(1));
        let held = Limit::ticket(&limit);
        let waiting = Limit::ticket(&limit);
        let mut last = pin!(Limit::ticket(&limit));
        drop(waiting);
        assert_eq!(limit.waiting(), 1);
        drop(held); // granted at once, never polled: the permit moves on
        assert!(granted(last.as_mut()).is_some());
    }
}
