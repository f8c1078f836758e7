//! [`Threads`]: each runner on an OS thread the coalescer owns and joins
//! (under loom, a loom thread, through `sync`). Pacing is a timed wait on a
//! condvar that shutdown interrupts.
//!
//! With a concurrency limit of `n`, the runners instead take turns on a
//! [`Pool`] of at most `n` threads: a runner that waits — for a permit, a
//! pace, a retry's delay — is parked (its future put aside, holding no
//! thread) until its waker puts it back in the pool's queue, and the pace
//! and retry waits are entries of one timer thread.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use super::{BoxFuture, Driver, Needs};
use crate::sync::{
    thread, thread_local_const, Arc, AtomicBool, Condvar, Mutex, MutexGuard, Ordering,
};

/// The blocking coalescer's driver: runner threads.
#[derive(Debug)]
pub struct Threads {
    /// The runner threads. Finished threads are joined (reaped) whenever a
    /// new one is started, so this holds only live runners and runners that
    /// are exiting. Never held while joining a live thread, so a runner is
    /// never blocked by it. With a limit, the pool's threads.
    entries: Arc<Mutex<Vec<Entry>>>,
    /// Set once by `drain`. Guarded by this mutex; `wake` is notified when
    /// it is set.
    draining: Mutex<bool>,
    wake: Condvar,
    /// Serializes shutdowns, so that a second caller returns only once the
    /// first one's drain is complete.
    shutting_down: Mutex<()>,
    /// Set when `shutdown_timeout` gave up on some runners: `Drop` then
    /// closes without joining them.
    gave_up: AtomicBool,
    /// With a concurrency limit: the threads the runners take turns on.
    pool: Option<Arc<Pool>>,
}

/// The builder's options for [`Threads`] (none).
#[derive(Debug, Default)]
pub struct ThreadsConfig {}

#[derive(Debug)]
struct Entry {
    /// Set by the thread as the last thing it does.
    finished: Arc<AtomicBool>,
    handle: thread::JoinHandle<()>,
}

/// Sets the flag when dropped, so it is set however the body ends.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        // ORDERING: Release pairs with the Acquire loads in `spawn`'s reaping
        // and in `join_until`; the join that follows is what actually
        // synchronizes.
        self.0.store(true, Ordering::Release);
    }
}

impl Threads {
    pub(crate) fn new(_: ThreadsConfig, needs: Needs) -> Self {
        let entries = Arc::new(Mutex::new(Vec::new()));
        Threads {
            pool: needs.limit.map(|threads| {
                Arc::new(Pool {
                    threads,
                    entries: Arc::clone(&entries),
                    state: Mutex::new(PoolState::default()),
                    tick: Condvar::new(),
                })
            }),
            entries,
            draining: Mutex::new(false),
            wake: Condvar::new(),
            shutting_down: Mutex::new(()),
            gave_up: AtomicBool::new(false),
        }
    }

    /// One shutdown at a time: `close`, then join every runner (except the
    /// caller's own), giving up at `deadline` if there is one; whether every
    /// runner was joined.
    pub(crate) fn shutdown(&self, close: impl FnOnce(), deadline: Option<Instant>) -> bool {
        let _one_at_a_time = self.shutting_down.lock();
        close();
        match deadline {
            None => {
                self.join_all();
                true
            }
            Some(deadline) => self.join_until(deadline),
        }
    }

    /// Records that `shutdown_timeout` gave up: `Drop` will not join.
    pub(crate) fn give_up(&self) {
        // ORDERING: Relaxed: read only by this coalescer's own `Drop`, which
        // the caller's thread (or a later owner, through the handoff that
        // moved the coalescer) runs after this.
        self.gave_up.store(true, Ordering::Relaxed);
    }

    /// Joins every finished thread until none is left but the caller's own,
    /// or `deadline` passes; whether all were joined. Polls the threads'
    /// `finished` flags once a millisecond: this is only for
    /// `shutdown_timeout`, where a cycle may never return.
    fn join_until(&self, deadline: Instant) -> bool {
        let me = thread::current().id();
        loop {
            let finished: Vec<Entry> = {
                let mut entries = self.entries.lock();
                let (done, rest) = std::mem::take(&mut *entries).into_iter().partition(|e| {
                    // ORDERING: Acquire pairs with the Release store in `SetOnDrop`.
                    e.finished.load(Ordering::Acquire)
                });
                *entries = rest;
                if entries.iter().all(|e| e.handle.thread().id() == me) && done.is_empty() {
                    return true;
                }
                done
            };
            for entry in finished {
                let _ = entry.handle.join();
            }
            if Instant::now() >= deadline {
                return self
                    .entries
                    .lock()
                    .iter()
                    .all(|e| e.handle.thread().id() == me);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Joins every thread in the set except the caller's own (a thread
    /// cannot join itself), including threads started while this runs.
    fn join_all(&self) {
        let me = thread::current().id();
        loop {
            let batch: Vec<Entry> = {
                let mut entries = self.entries.lock();
                let (own, others) = std::mem::take(&mut *entries)
                    .into_iter()
                    .partition(|e| e.handle.thread().id() == me);
                *entries = own;
                others
            };
            if batch.is_empty() {
                return;
            }
            for entry in batch {
                let _ = entry.handle.join();
            }
        }
    }

    /// Runner handles held (for the std build's tests of reaping).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().len()
    }
}

impl Driver for Threads {
    type Config = ThreadsConfig;
    const DROP_ABORTS: bool = false;

    fn spawn(&self, runner: BoxFuture) -> io::Result<()> {
        if let Some(pool) = &self.pool {
            return Pool::start(pool, Run::Queued(runner)).map(drop);
        }
        start_thread(&self.entries, "coalescer-runner", move |_| block_on(runner))
    }

    /// In a pool, the runner is put aside until its waker is woken; without
    /// one, started at once (`spawn`).
    fn spawn_parked(&self, runner: BoxFuture) -> io::Result<Option<Waker>> {
        let Some(pool) = &self.pool else {
            return self.spawn(runner).map(|()| None);
        };
        Pool::start(pool, Run::Parked(runner)).map(Some)
    }

    fn has_timers(&self) -> bool {
        true
    }

    /// The timer of delayed requests gets a thread of its own (with or
    /// without a pool: a pool thread must never block), driven by
    /// [`block_on_timer`].
    fn spawn_timer(&self, timer: BoxFuture) -> io::Result<()> {
        start_thread(&self.entries, "coalescer-delays", move |_| {
            block_on_timer(timer);
        })
    }

    fn timer_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + '_ {
        TimerWait { deadline }
    }

    /// Without a pool: blocks (the future is ready when polled) until
    /// `deadline`, or the coalescer is draining. In a pool: a timer entry,
    /// the runner parked until it fires. The key's slot stays live
    /// meanwhile either way, so every request that arrives joins the one
    /// cycle that follows.
    fn until(&self, deadline: Option<Instant>) -> impl Future<Output = ()> + Send + '_ {
        if let Some(pool) = &self.pool {
            return Until::Timer { pool, deadline };
        }
        drop(wait_for_flag(&self.draining, &self.wake, deadline));
        Until::Passed
    }

    fn drain(&self) {
        *self.draining.lock() = true;
        self.wake.notify_all();
        if let Some(pool) = &self.pool {
            pool.drain();
        }
    }

    // `sleep_until` never resolves (the default): a blocking cycle has
    // returned by the time it is polled, and the runner checks the deadline
    // after it instead. Threads are never aborted (dropping the coalescer
    // joins them) and are reaped by the next `spawn`: the defaults.

    /// Shuts down, as `shutdown` does — unless `shutdown_timeout` gave up
    /// on some runners, which `Drop` then does not wait for either.
    fn on_drop(&self, close: impl FnOnce()) {
        // ORDERING: Relaxed, see `give_up`.
        if self.gave_up.load(Ordering::Relaxed) {
            close();
        } else {
            self.shutdown(close, None);
        }
    }
}

/// Starts a thread named `name` running `body`, recorded in `entries` (so
/// shutdown joins it), after joining the threads there that have finished.
/// `body` gets the thread's `finished` flag, to set early if it is sure to
/// do nothing more but return (a pool thread retiring): then no new thread
/// starts before that one is gone.
fn start_thread(
    entries: &Mutex<Vec<Entry>>,
    name: &str,
    body: impl FnOnce(&AtomicBool) + Send + 'static,
) -> io::Result<()> {
    let mut entries = entries.lock();
    // Reap: the flag is the thread's last action, so these joins return at
    // once (or after the thread's final few instructions).
    let mut i = 0;
    while i < entries.len() {
        // ORDERING: Acquire pairs with the Release store in `SetOnDrop`.
        if entries[i].finished.load(Ordering::Acquire) {
            let done = entries.swap_remove(i);
            // The body never panics (cycles run under catch_unwind); a join
            // error would be a bug in this crate, with nothing to do about
            // it here.
            let _ = done.handle.join();
        } else {
            i += 1;
        }
    }
    let finished = Arc::new(AtomicBool::new(false));
    let flag = SetOnDrop(Arc::clone(&finished));
    let handle = thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            body(&flag.0);
            drop(flag);
        })?;
    entries.push(Entry { finished, handle });
    Ok(())
}

/// What [`Threads::until`] returns: passed already (the blocking wait, done
/// inside the call), or a pool's timer entry.
enum Until<'a> {
    Passed,
    Timer {
        pool: &'a Arc<Pool>,
        deadline: Option<Instant>,
    },
}

impl Future for Until<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match *self {
            Until::Passed => Poll::Ready(()),
            Until::Timer { pool, deadline } => pool.poll_until(deadline, cx),
        }
    }
}

/// With a concurrency limit of `threads`: the runners run as tasks on at
/// most that many threads. A thread takes the next task from the queue and
/// polls it until it waits; a waiting task is parked until its waker puts
/// it back in the queue. A thread exits when the queue is empty, so an idle
/// coalescer holds none; the first task queued while fewer than `threads`
/// run starts one. Cycles hold a permit and at most `threads` hold one, so
/// a cycle never waits for a thread that a waiting runner holds: nothing
/// waits on a thread but a cycle.
#[derive(Debug)]
pub(crate) struct Pool {
    threads: usize,
    /// The coalescer's threads (the pool's and its timer's), for shutdown.
    entries: Arc<Mutex<Vec<Entry>>>,
    state: Mutex<PoolState>,
    /// The timer thread waits here (on `state`) for its next deadline, an
    /// earlier one, or the drain.
    tick: Condvar,
}

#[derive(Debug, Default)]
struct PoolState {
    /// Tasks woken and not yet taken by a thread.
    ready: VecDeque<Arc<PoolTask>>,
    /// The pool's threads alive.
    running: usize,
    /// The waits of parked runners, earliest first.
    timers: BinaryHeap<Reverse<Timer>>,
    /// Waits with no deadline: only the drain ends them.
    forever: Vec<Waker>,
    /// Numbers the timers, so equal deadlines stay in order.
    next_timer: u64,
    /// Whether the timer thread is alive.
    timing: bool,
    /// Set by `drain`: every wait ends, now and later.
    draining: bool,
}

/// One parked runner's wait.
#[derive(Debug)]
struct Timer {
    deadline: Instant,
    number: u64,
    waker: Waker,
}

impl PartialEq for Timer {
    fn eq(&self, other: &Self) -> bool {
        (self.deadline, self.number) == (other.deadline, other.number)
    }
}

impl Eq for Timer {}

impl PartialOrd for Timer {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Timer {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.deadline, self.number).cmp(&(other.deadline, other.number))
    }
}

/// One runner in a pool, with its future wherever the runner is.
struct PoolTask {
    pool: Arc<Pool>,
    run: Mutex<Run>,
}

impl std::fmt::Debug for PoolTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolTask").finish_non_exhaustive()
    }
}

/// Where a pool task's runner is.
enum Run {
    /// Waiting for its waker; no thread holds it.
    Parked(BoxFuture),
    /// In the queue, for the next free thread.
    Queued(BoxFuture),
    /// Being polled by a thread.
    Running,
    /// Being polled, and woken meanwhile: polled again before it parks.
    Notified,
    /// It has ended.
    Done,
}

impl Pool {
    /// A task for `runner` (queued or parked, as `run` says): queued now if
    /// queued, with a thread started for it if fewer than the limit run.
    /// Returns the task's waker.
    fn start(pool: &Arc<Pool>, run: Run) -> io::Result<Waker> {
        let queued = matches!(run, Run::Queued(_));
        let task = Arc::new(PoolTask {
            pool: Arc::clone(pool),
            run: Mutex::new(run),
        });
        if queued {
            if let Err(e) = pool.queue(Arc::clone(&task)) {
                // No thread runs and none could start: nothing would ever
                // take the task. Take it back; the caller rejects the request.
                pool.state.lock().ready.retain(|t| !Arc::ptr_eq(t, &task));
                let runner = std::mem::replace(&mut *task.run.lock(), Run::Done);
                drop(runner);
                return Err(e);
            }
        }
        Ok(Waker::from(task))
    }

    /// Puts `task` in the queue, starting a thread if fewer than the limit
    /// run. An error only if no thread runs and none could start.
    fn queue(self: &Arc<Self>, task: Arc<PoolTask>) -> io::Result<()> {
        let mut state = self.state.lock();
        state.ready.push_back(task);
        if state.running >= self.threads {
            return Ok(()); // a running thread takes it when it is free
        }
        state.running += 1;
        drop(state);
        let pool = Arc::clone(self);
        let started = start_thread(&self.entries, "coalescer-runner", move |retired| {
            pool.work(retired);
        });
        if let Err(e) = started {
            let mut state = self.state.lock();
            state.running -= 1;
            if state.running > 0 {
                return Ok(());
            }
            return Err(e);
        }
        Ok(())
    }

    /// A pool thread: runs queued tasks until the queue is empty. It
    /// retires under the lock that `queue` decides under, so the thread
    /// `queue` then starts first joins this one (`start_thread`): never
    /// more than the limit alive.
    fn work(&self, retired: &AtomicBool) {
        loop {
            let task = {
                let mut state = self.state.lock();
                let Some(task) = state.ready.pop_front() else {
                    state.running -= 1;
                    // ORDERING: Release pairs with the Acquire loads in
                    // `start_thread`'s reaping (as `SetOnDrop`'s store).
                    retired.store(true, Ordering::Release);
                    return;
                };
                task
            };
            // A runner does not panic (its cycles run under `catch_unwind`),
            // but a pool thread that unwound would leave the pool one thread
            // short for good: contained here, the runner's future is dropped
            // (its guard abandons its slot) and the thread goes on.
            let polled =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task.poll_here()));
            if let Err(payload) = polled {
                *task.run.lock() = Run::Done;
                crate::panic::dispose(payload);
                tracing::error!(target: "coalescer", "a runner panicked outside its cycle");
            }
        }
    }

    /// The pool's wait (`Threads::until`): ready at `deadline` or once
    /// draining, else a timer entry that wakes `cx`'s task.
    fn poll_until(self: &Arc<Self>, deadline: Option<Instant>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.state.lock();
        if state.draining || deadline.is_some_and(|d| Instant::now() >= d) {
            return Poll::Ready(());
        }
        let Some(deadline) = deadline else {
            state.forever.push(cx.waker().clone());
            return Poll::Pending;
        };
        let number = state.next_timer;
        state.next_timer += 1;
        state.timers.push(Reverse(Timer {
            deadline,
            number,
            waker: cx.waker().clone(),
        }));
        if state.timing {
            drop(state);
            self.tick.notify_all();
            return Poll::Pending;
        }
        state.timing = true;
        drop(state);
        let pool = Arc::clone(self);
        if let Err(e) = start_thread(&self.entries, "coalescer-timer", move |_| pool.keep_time()) {
            // No timer thread: the wait ends now (as on a runtime without
            // timers) rather than never.
            tracing::error!(target: "coalescer", "could not start the timer thread: {e}");
            self.state.lock().timing = false;
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// The timer thread: wakes each timer's task at its deadline; exits
    /// when no timer is left, or at the drain (which wakes them all).
    fn keep_time(&self) {
        let mut state = self.state.lock();
        loop {
            if state.draining {
                break;
            }
            let now = Instant::now();
            let mut due = Vec::new();
            while state.timers.peek().is_some_and(|t| t.0.deadline <= now) {
                if let Some(Reverse(timer)) = state.timers.pop() {
                    due.push(timer.waker);
                }
            }
            if !due.is_empty() {
                drop(state);
                due.into_iter().for_each(Waker::wake);
                state = self.state.lock();
                continue;
            }
            let Some(next) = state.timers.peek().map(|t| t.0.deadline) else {
                break;
            };
            state = self.tick.wait_until(&self.state, state, Some(next)).0;
        }
        state.timing = false;
    }

    /// Ends every wait, now and later: wakes every timer's task.
    fn drain(&self) {
        let mut state = self.state.lock();
        state.draining = true;
        let mut woken: Vec<Waker> = std::mem::take(&mut state.timers)
            .into_iter()
            .map(|t| t.0.waker)
            .collect();
        woken.append(&mut state.forever);
        drop(state);
        self.tick.notify_all();
        woken.into_iter().for_each(Waker::wake);
    }
}

impl Wake for PoolTask {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    /// Puts a parked task back in the queue; a task being polled is polled
    /// again before it parks.
    fn wake_by_ref(self: &Arc<Self>) {
        let mut run = self.run.lock();
        match std::mem::replace(&mut *run, Run::Done) {
            Run::Parked(runner) => *run = Run::Queued(runner),
            Run::Running | Run::Notified => {
                *run = Run::Notified;
                return;
            }
            other => {
                *run = other;
                return;
            }
        }
        drop(run);
        if let Err(e) = self.pool.queue(Arc::clone(self)) {
            // The task stays queued: the next thread that starts takes it.
            tracing::error!(target: "coalescer", "could not start a runner thread: {e}");
        }
    }
}

impl PoolTask {
    /// On a pool thread: polls the queued runner until it ends or waits
    /// (then parks it, unless woken meanwhile).
    fn poll_here(self: &Arc<Self>) {
        let mut runner = match std::mem::replace(&mut *self.run.lock(), Run::Running) {
            Run::Queued(runner) => runner,
            // Never: only a queued task is in the queue.
            other => {
                *self.run.lock() = other;
                return;
            }
        };
        let waker = Waker::from(Arc::clone(self));
        let mut cx = Context::from_waker(&waker);
        loop {
            if runner.as_mut().poll(&mut cx).is_ready() {
                *self.run.lock() = Run::Done;
                return;
            }
            let mut run = self.run.lock();
            if matches!(*run, Run::Notified) {
                *run = Run::Running;
                continue;
            }
            *run = Run::Parked(runner);
            return;
        }
    }
}

/// Waits on `cv` until `flag` is set or `deadline` passes (`None`: until
/// the flag is set); the flag's guard.
fn wait_for_flag<'a>(
    flag: &'a Mutex<bool>,
    cv: &Condvar,
    deadline: Option<Instant>,
) -> MutexGuard<'a, bool> {
    let mut set = flag.lock();
    while !*set {
        let (guard, passed) = cv.wait_until(flag, set, deadline);
        set = guard;
        if passed {
            break;
        }
    }
    set
}

thread_local_const! {
    /// On the timer thread: the deadline its pending [`TimerWait`] waits for,
    /// for [`block_on_timer`] to sleep until.
    static WAKE_AT: std::cell::Cell<Option<Instant>> = std::cell::Cell::new(None);
}

/// [`Threads::timer_until`]: ready at `deadline`; pending before it, with
/// the deadline left for [`block_on_timer`], which polls it.
struct TimerWait {
    deadline: Instant,
}

impl Future for TimerWait {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        WAKE_AT.with(|at| at.set(Some(self.deadline)));
        Poll::Pending
    }
}

/// Drives the timer of delayed requests on this thread: between polls it
/// sleeps until the deadline its [`TimerWait`] left, or until its waker is
/// woken (an earlier deadline, or `close`).
fn block_on_timer(timer: BoxFuture) {
    /// The timer thread's wake-up: set and notified by the waker.
    #[derive(Default)]
    struct Alarm {
        rung: Mutex<bool>,
        ring: Condvar,
    }

    impl Wake for Alarm {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            *self.rung.lock() = true;
            self.ring.notify_all();
        }
    }

    let alarm = Arc::new(Alarm::default());
    let waker = Waker::from(Arc::clone(&alarm));
    let mut cx = Context::from_waker(&waker);
    let mut timer = pin!(timer);
    while timer.as_mut().poll(&mut cx) == Poll::Pending {
        let until = WAKE_AT.with(std::cell::Cell::take);
        *wait_for_flag(&alarm.rung, &alarm.ring, until) = false;
    }
}

/// Drives `runner` to its end on this thread. A runner on [`Threads`] never
/// waits for a waker (its cycles are plain calls and its pacing a blocking
/// wait), so the first poll finishes it; parking covers any other future.
fn block_on(runner: BoxFuture) {
    /// Wakes the thread that blocks.
    struct Unpark(thread::Thread);

    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }

    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut runner = pin!(runner);
    while runner.as_mut().poll(&mut cx) == Poll::Pending {
        thread::park();
    }
}
