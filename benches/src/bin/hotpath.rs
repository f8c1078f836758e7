//! One million coalesced requests on a hot key, ours or the Go port's, for
//! an instruction-level profile:
//!
//! ```text
//! valgrind --tool=callgrind target/release/hotpath ours
//! valgrind --tool=callgrind target/release/hotpath go
//! ```

#[cfg(loom)]
fn main() {}

#[cfg(not(loom))]
fn main() {
    use coalescer_benches::{GoPort, Held};
    use std::hint::black_box;

    const N: u64 = 1_000_000;
    let keys = [7u64];
    match std::env::args().nth(1).as_deref() {
        Some("go") => {
            let go = GoPort::running(&keys);
            for _ in 0..N {
                black_box(go.request(&7));
            }
        }
        _ => {
            let held = Held::new(&keys);
            for _ in 0..N {
                let _ = black_box(held.coalescer.request(7));
            }
        }
    }
}
