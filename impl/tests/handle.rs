//! The `Requester` handle (`Coalescer::handle`, `Builder::build_cyclic`):
//! it requests like its coalescer, does not keep it alive, and lets a cycle
//! request its own coalescer's keys; and what dropping the last owner from
//! inside a cycle does.

#![cfg(not(loom))]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use coalescer::{Admission, Builder, Closed, Coalescer, RunError};
use tokio::sync::Notify;

#[macro_use]
mod common;

on_both_runtimes!(
    a_handle_requests_like_its_coalescer_and_tells_the_admission,
    a_handle_does_not_keep_its_coalescer_alive,
    a_cycle_requests_its_own_key_through_the_handle_it_was_built_with,
    dropping_the_last_owner_inside_a_cycle_aborts_like_any_drop,
);

/// Requests through a handle (and its clones, from other tasks) are
/// admitted as the coalescer's own: started, then coalesced into the
/// running cycle; a waiting request's future says which.
async fn a_handle_requests_like_its_coalescer_and_tells_the_admission() {
    let (gate, running) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let (g, r) = (Arc::clone(&gate), Arc::clone(&running));
    let cycles = Arc::new(AtomicU32::new(0));
    let n = Arc::clone(&cycles);
    let c = Coalescer::new(move |_: u32| {
        let (g, r, n) = (Arc::clone(&g), Arc::clone(&r), Arc::clone(&n));
        async move {
            if n.fetch_add(1, Ordering::SeqCst) == 0 {
                r.notify_one();
                g.notified().await;
            }
            Ok::<u64, std::convert::Infallible>(7)
        }
    });
    let handle = c.handle();
    let first = handle.request_and_wait(1);
    assert_eq!(first.admission(), Some(Admission::Started));
    running.notified().await;
    let other = handle.clone();
    // From another thread, outside the runtime: the request is made there,
    // awaited here.
    let second = std::thread::spawn(move || other.request_and_wait(1))
        .join()
        .unwrap();
    assert_eq!(second.admission(), Some(Admission::Coalesced));
    assert_eq!(handle.request(1), Ok(Admission::Coalesced));
    gate.notify_one();
    assert_eq!(first.await, Ok(7));
    assert_eq!(second.await, Ok(7));
    c.shutdown().await;
    assert_eq!(cycles.load(Ordering::SeqCst), 2, "one cycle, one follow-up");
    let stats = c.stats();
    assert_eq!((stats.started, stats.coalesced), (1, 2));
    let rejected = handle.request_and_wait(1);
    assert_eq!(rejected.admission(), None);
    assert_eq!(rejected.await, Err(RunError::Closed));
    assert!(handle.is_closed());
}

/// The handle holds no strong reference: once the coalescer is dropped and
/// its runners have ended, its state (here, the cycle function's captured
/// `Arc`) is freed while the handle lives on, and the handle's requests are
/// rejected.
async fn a_handle_does_not_keep_its_coalescer_alive() {
    let sentinel = Arc::new(());
    let s = Arc::clone(&sentinel);
    let c = Coalescer::new(move |_: u32| {
        let _ = &s;
        async {}
    });
    let handle = c.handle();
    handle.request_and_wait(1).await.unwrap();
    c.shutdown().await;
    assert_eq!(handle.request(2), Err(Closed));
    drop(c);
    assert_eq!(
        Arc::strong_count(&sentinel),
        1,
        "a handle kept the coalescer's state alive"
    );
    assert_eq!(handle.request(2), Err(Closed));
    assert_eq!(
        handle.request_after(2, std::time::Duration::ZERO),
        Err(Closed)
    );
    assert_eq!(handle.request_and_wait(2).await, Err(RunError::Closed));
    assert!(handle.is_closed());
}

/// A cycle re-requests its own key through the handle `build_cyclic` gave
/// it — no `Arc<OnceLock<Weak<..>>>` — and that request is a follow-up like
/// any other; the handle inside the cycle function makes no reference
/// cycle (the state is freed on drop).
async fn a_cycle_requests_its_own_key_through_the_handle_it_was_built_with() {
    let sentinel = Arc::new(());
    let s = Arc::clone(&sentinel);
    let runs = Arc::new(AtomicU32::new(0));
    let r = Arc::clone(&runs);
    let third = Arc::new(Notify::new());
    let t = Arc::clone(&third);
    let c = Builder::new().build_cyclic(move |me| {
        move |key: u32, _| {
            let (me, r, t, _s) = (me.clone(), Arc::clone(&r), Arc::clone(&t), Arc::clone(&s));
            async move {
                // Three runs in all: the first two ask for one more while
                // they run; the third says so.
                if r.fetch_add(1, Ordering::SeqCst) < 2 {
                    assert_eq!(me.request(key), Ok(Admission::Coalesced));
                } else {
                    t.notify_one();
                }
            }
        }
    });
    c.request(5).unwrap();
    third.notified().await;
    c.shutdown().await;
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert_eq!(c.stats().cycles, 3);
    drop(c);
    assert_eq!(
        Arc::strong_count(&sentinel),
        1,
        "the cycle's handle leaked the state"
    );
}

/// Dropping the last owner of an async coalescer from inside one of its
/// cycles is a drop like any other: the coalescer closes and aborts every
/// runner — the other key's running cycle and this one (at its next
/// `.await`) — and their waiters get `Aborted`. Nothing hangs or panics.
async fn dropping_the_last_owner_inside_a_cycle_aborts_like_any_drop() {
    type Owner = Arc<Mutex<Option<Coalescer<u32>>>>;
    let owner: Owner = Arc::default();
    let o = Arc::clone(&owner);
    let went_on = Arc::new(AtomicU32::new(0));
    let w = Arc::clone(&went_on);
    let c = Coalescer::new(move |key: u32| {
        let (o, w) = (Arc::clone(&o), Arc::clone(&w));
        async move {
            if key == 1 {
                // The other key's cycle: runs until aborted.
                std::future::pending::<()>().await;
            }
            let last = o.lock().unwrap().take();
            drop(last);
            tokio::task::yield_now().await;
            w.fetch_add(1, Ordering::SeqCst);
        }
    });
    let handle = c.handle();
    let other = c.request_and_wait(1);
    tokio::task::yield_now().await;
    *owner.lock().unwrap() = Some(c);
    let own = handle.request_and_wait(2);
    assert_eq!(own.await, Err(RunError::Aborted));
    assert_eq!(other.await, Err(RunError::Aborted));
    assert_eq!(
        went_on.load(Ordering::SeqCst),
        0,
        "a cycle ran on after its coalescer was dropped"
    );
    assert_eq!(handle.request(3), Err(Closed));
}

/// The blocking coalescer's last owner dropped inside one of its cycles:
/// `Drop` shuts down from there — it closes, and joins every other runner
/// (the other key's cycle finishes, its waiter gets its value); the calling
/// cycle then runs to its end, and its runner thread exits on its own (a
/// thread cannot join itself).
#[test]
fn blocking_dropping_the_last_owner_inside_a_cycle_drains_the_others() {
    use std::sync::mpsc;
    type Owner = Arc<Mutex<Option<coalescer::blocking::Coalescer<u32>>>>;
    let owner: Owner = Arc::default();
    let o = Arc::clone(&owner);
    let (running_tx, running) = mpsc::channel::<u32>();
    let (release, released) = mpsc::channel::<()>();
    let released = Mutex::new(released);
    let (done_tx, done) = mpsc::channel::<&'static str>();
    let running_tx = Mutex::new(running_tx);
    let done_tx = Mutex::new(done_tx);
    let c = coalescer::blocking::Coalescer::new(move |key: &u32| {
        running_tx.lock().unwrap().send(*key).unwrap();
        if *key == 1 {
            released.lock().unwrap().recv().unwrap();
            return;
        }
        let last = o.lock().unwrap().take();
        drop(last); // joins key 1's runner
        done_tx
            .lock()
            .unwrap()
            .send("went on after the drop")
            .unwrap();
    });
    let handle = c.handle();
    let waiter = {
        let handle = handle.clone();
        std::thread::spawn(move || handle.request_and_wait(1))
    };
    assert_eq!(running.recv().unwrap(), 1);
    *owner.lock().unwrap() = Some(c);
    handle.request(2).unwrap();
    assert_eq!(running.recv().unwrap(), 2);
    // Key 2's cycle is in `Drop`, joining key 1's runner: no request now.
    while !handle.is_closed() {
        std::thread::yield_now();
    }
    assert_eq!(handle.request(3), Err(Closed));
    release.send(()).unwrap();
    assert_eq!(waiter.join().unwrap(), Ok(()));
    assert_eq!(done.recv().unwrap(), "went on after the drop");
}
