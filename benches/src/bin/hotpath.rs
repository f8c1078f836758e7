//! One million coalesced requests on a hot key, ours, the Go port's or the
//! hand-rolled `DashMap`'s, for an instruction-level profile; with a second
//! argument (`256`, `100000`), over that many keys in turn instead:
//!
//! ```text
//! valgrind --tool=callgrind target/release/hotpath ours
//! valgrind --tool=callgrind target/release/hotpath go
//! valgrind --tool=callgrind target/release/hotpath ours 256
//! valgrind --tool=cachegrind target/release/hotpath dash 100000
//! valgrind --tool=callgrind target/release/hotpath ours 100000 2000000  # two million requests
//! valgrind --tool=callgrind target/release/hotpath retry   # ours, with a retry policy
//! valgrind --tool=callgrind target/release/hotpath limit   # ours, with a limit not reached
//! valgrind --tool=callgrind target/release/hotpath debounce  # ours, debounced
//! ```

#[cfg(loom)]
fn main() {}

#[cfg(not(loom))]
fn main() {
    use coalescer_benches::{DashPeer, GoPort, Held};
    use std::hint::black_box;

    // A third argument sets the number of requests (default a million):
    // `scripts/many-keys-profile.sh` subtracts a run of one million from a
    // run of two, so the setup cancels.
    let n: u64 = std::env::args()
        .nth(3)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let keys: Vec<u64> = match std::env::args().nth(2).map(|n| n.parse::<u64>()) {
        Some(Ok(n)) if n > 1 => (0..n).collect(),
        _ => vec![7],
    };
    let key = |i: u64| keys[(i % keys.len() as u64) as usize];
    match std::env::args().nth(1).as_deref() {
        Some("go") => {
            let go = GoPort::running(&keys);
            for i in 0..n {
                black_box(go.request(&key(i)));
            }
        }
        Some("dash") => {
            let dash = DashPeer::running(&keys);
            for i in 0..n {
                black_box(dash.request(key(i)));
            }
        }
        Some("retry") => {
            let held = Held::retrying(&keys);
            for i in 0..n {
                let _ = black_box(held.coalescer.request(key(i)));
            }
        }
        Some("limit") => {
            let held = Held::limited(&keys);
            for i in 0..n {
                let _ = black_box(held.coalescer.request(key(i)));
            }
        }
        Some("debounce") => {
            let held = Held::debounced(&keys);
            for i in 0..n {
                let _ = black_box(held.coalescer.request(key(i)));
            }
        }
        _ => {
            let held = Held::new(&keys);
            for i in 0..n {
                let _ = black_box(held.coalescer.request(key(i)));
            }
        }
    }
}
