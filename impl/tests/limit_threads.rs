//! INV-11e: with a concurrency limit, the blocking coalescer runs its
//! cycles on at most that many threads — no thread per waiting key. The
//! one test in this binary, so no other coalescer's threads are counted.
#![cfg(not(loom))]

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

use coalescer::blocking;

/// Threads that have run a cycle and not yet exited, and the most at once.
static LIVE: AtomicU64 = AtomicU64::new(0);
static PEAK: AtomicU64 = AtomicU64::new(0);

/// Counts its thread in [`LIVE`] from its first cycle until the thread
/// exits (thread-local destructors run before a joined thread is gone).
struct Alive;

impl Alive {
    fn new() -> Self {
        let live = LIVE.fetch_add(1, SeqCst) + 1;
        PEAK.fetch_max(live, SeqCst);
        Alive
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, SeqCst);
    }
}

thread_local! {
    static ALIVE: Alive = Alive::new();
}

/// 100 000 due keys with `concurrency(8)`: never more than 8 threads that
/// run cycles alive at once (and at least 2 used), and every key runs.
#[test]
fn inv11e_100_000_due_keys_with_a_limit_of_8_use_at_most_8_threads() {
    let cycles = Arc::new(AtomicU64::new(0));
    let n = Arc::clone(&cycles);
    let c = blocking::Coalescer::builder()
        .concurrency(8)
        .build(move |_key: &u32| {
            ALIVE.with(|_| {});
            n.fetch_add(1, SeqCst);
            std::thread::yield_now();
        });
    for key in 0..100_000 {
        c.request(key).unwrap();
    }
    c.shutdown();
    assert_eq!(cycles.load(SeqCst), 100_000);
    let peak = PEAK.load(SeqCst);
    assert!((2..=8).contains(&peak), "{peak} runner threads at once");
}
