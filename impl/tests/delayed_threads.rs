//! INV-13d: an idle key's delayed request costs a record and a timer entry,
//! not a runner or a thread: 10 000 of them add one thread to the process
//! (the coalescer's timer). The one test in this binary, so no other test's
//! threads are counted.
#![cfg(all(not(loom), target_os = "linux"))]

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use coalescer::blocking;

/// The process's threads now (Linux: one directory per thread).
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn inv13d_10_000_idle_keys_with_delayed_requests_add_one_thread() {
    let cycles = Arc::new(AtomicU64::new(0));
    let n = Arc::clone(&cycles);
    let c = blocking::Coalescer::new(move |_key: &u32| {
        n.fetch_add(1, SeqCst);
    });
    let before = threads();
    for key in 0..10_000 {
        c.request_after(key, Duration::from_secs(3600)).unwrap();
    }
    assert_eq!(threads(), before + 1, "more than the timer thread started");
    assert_eq!(c.active_keys(), 0);
    c.shutdown();
    assert_eq!(cycles.load(SeqCst), 10_000);
    assert_eq!(threads(), before, "a thread outlived shutdown");
}
