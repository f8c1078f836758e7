//! What an active key costs: the heap bytes a coalescer holds per key whose
//! cycle is running (slot, map entry, runner task and the runner's future;
//! the cycle here is `pending()`, which allocates nothing of its own). A
//! counting global allocator measures live heap bytes; the test binary
//! holds only this test, so nothing else allocates meanwhile.
#![cfg(not(loom))]

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use coalescer::Coalescer;
use coalescer_fixtures::CountingAllocator;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator::new();

const KEYS: u64 = 10_000;

/// The bound on our bytes per active key with `u64` keys on tokio. A
/// runner's future that keeps its task twice and a timeout's timer inline
/// (760 bytes) makes a key cost 1 129 bytes here; as built (488 bytes) it
/// costs 857.
const MOST_BYTES_PER_ACTIVE_KEY: i64 = 900;

#[test]
fn an_active_key_costs_at_most_its_bound() {
    // A current-thread runtime: nothing runs while the keys are requested,
    // and the runtime's own allocations are the same in both rounds.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let started = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&started);
        let c = Coalescer::new(move |_key: u64| {
            counted.fetch_add(1, Relaxed);
            std::future::pending::<()>()
        });
        // Two rounds of KEYS keys: the first warms up what the runtime sizes
        // once (its run queue); the second is measured.
        let mut per_key = 0;
        for round in 0..2u64 {
            let before = ALLOCATOR.live_bytes();
            for key in round * KEYS..(round + 1) * KEYS {
                c.request(key).unwrap();
            }
            while started.load(Relaxed) < ((round + 1) * KEYS) as usize {
                tokio::task::yield_now().await;
            }
            per_key = (ALLOCATOR.live_bytes() - before) / KEYS as i64;
        }
        eprintln!("memory: {per_key} bytes per active key ({KEYS} keys)");
        assert_eq!(c.active_keys(), 2 * KEYS as usize);
        assert!(
            per_key <= MOST_BYTES_PER_ACTIVE_KEY,
            "an active key costs {per_key} bytes, more than {MOST_BYTES_PER_ACTIVE_KEY}"
        );
    });
}
