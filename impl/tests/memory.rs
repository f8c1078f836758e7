//! INV-6 at scale: after a million distinct keys, a quiescent coalescer
//! holds no slot, and the heap is back to where it was. A counting global
//! allocator measures live heap bytes; the test binary holds only this test,
//! so nothing else allocates meanwhile.
#![cfg(not(loom))]

use coalescer::Coalescer;
use coalescer_fixtures::CountingAllocator;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator::new();

const KEYS: u64 = 1_000_000;

/// Waits until no key is active (each check yields to the runners; no
/// timer, which would allocate).
async fn quiescent(c: &Coalescer<u64>) {
    while c.active_keys() != 0 {
        tokio::task::yield_now().await;
    }
}

#[test]
fn a_million_distinct_keys_leave_the_heap_where_it_was() {
    // A current-thread runtime: its own allocations do not depend on which
    // worker happened to run what, so the two measurements compare exactly.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Warm up the runtime with a first coalescer and a burst of the same
        // size: the runtime's own run queue keeps the capacity of the largest
        // burst it has seen (a `VecDeque` of task pointers, ~8 MB here) —
        // tokio's memory, not a coalescer's. Then measure a fresh coalescer.
        let warm = Coalescer::new(|_key: u64| async {});
        for key in 0..KEYS {
            warm.request(key).unwrap();
            if key % 100_000 == 0 {
                tokio::task::yield_now().await;
            }
        }
        warm.shutdown().await;
        drop(warm);
        let c = Coalescer::new(|_key: u64| async {});
        quiescent(&c).await;
        let baseline = ALLOCATOR.live_bytes();
        let mut peak_active = 0;
        for key in 0..KEYS {
            c.request(key).unwrap();
            if key % 100_000 == 0 {
                peak_active = peak_active.max(c.active_keys());
                tokio::task::yield_now().await;
            }
        }
        quiescent(&c).await;
        let after = ALLOCATOR.live_bytes();
        let growth = after - baseline;
        eprintln!(
            "memory: baseline {baseline} B, after {KEYS} keys {after} B ({growth:+} B, \
             {:.3}%); at most {peak_active} keys active at once",
            100.0 * growth as f64 / baseline as f64
        );
        assert_eq!(c.active_keys(), 0);
        assert!(
            growth.abs() * 100 <= baseline,
            "heap not back within 1% of baseline: {baseline} -> {after}"
        );
        assert_eq!(c.stats().started + c.stats().coalesced, KEYS);
        c.shutdown().await;
    });
}
