//! One million coalesced requests on a hot key, ours or the Go port's, for
//! an instruction-level profile; with a second argument `256`, over 256 keys
//! in turn instead:
//!
//! ```text
//! valgrind --tool=callgrind target/release/hotpath ours
//! valgrind --tool=callgrind target/release/hotpath go
//! valgrind --tool=callgrind target/release/hotpath ours 256
//! valgrind --tool=callgrind target/release/hotpath retry   # ours, with a retry policy
//! valgrind --tool=callgrind target/release/hotpath limit   # ours, with a limit not reached
//! valgrind --tool=callgrind target/release/hotpath debounce  # ours, debounced
//! ```

#[cfg(loom)]
fn main() {}

#[cfg(not(loom))]
fn main() {
    use coalescer_benches::{GoPort, Held};
    use std::hint::black_box;

    const N: u64 = 1_000_000;
    let many = std::env::args().nth(2).as_deref() == Some("256");
    let keys: Vec<u64> = if many { (0..256).collect() } else { vec![7] };
    let key = |i: u64| keys[(i % keys.len() as u64) as usize];
    match std::env::args().nth(1).as_deref() {
        Some("go") => {
            let go = GoPort::running(&keys);
            for i in 0..N {
                black_box(go.request(&key(i)));
            }
        }
        Some("retry") => {
            let held = Held::retrying(&keys);
            for i in 0..N {
                let _ = black_box(held.coalescer.request(key(i)));
            }
        }
        Some("limit") => {
            let held = Held::limited(&keys);
            for i in 0..N {
                let _ = black_box(held.coalescer.request(key(i)));
            }
        }
        Some("debounce") => {
            let held = Held::debounced(&keys);
            for i in 0..N {
                let _ = black_box(held.coalescer.request(key(i)));
            }
        }
        _ => {
            let held = Held::new(&keys);
            for i in 0..N {
                let _ = black_box(held.coalescer.request(key(i)));
            }
        }
    }
}
