//! The least a request could cost under the striped design that issue 5
//! points to, measured next to one shared `fetch_or`, the Go port and ours
//! in the same run: a request that writes only its own thread's stripe of
//! the key and reads the key's state word (to see whether a runner still
//! owns it). No lookup, no hashing: the key is found by index. If this
//! floor does not beat a goal, no design built on it will.
//!
//! ```text
//! cargo run -p coalescer-benches --release --bin floor
//! ```
//!
//! Two ways to order the stripe write before the state read (the Dekker
//! pattern against a runner that kills the slot, then scans the stripes):
//! a `SeqCst` swap (loom models `SeqCst` accesses only as `AcqRel`, so not
//! this pattern); or a plain `Release` store, which is only correct if the
//! runner issues an asymmetric fence (`membarrier`) before its scan — which
//! loom does not model. The row "as built" is what the crate does: an
//! `AcqRel` swap and a `Relaxed` load, no fence — correct because the
//! runner's check also writes the mark with an `AcqRel` swap (the two RMWs
//! are totally ordered; see docs/design.md), and verified by loom. The row
//! "first version" is what it did before: a `Release` swap and a `SeqCst`
//! fence.

#[cfg(loom)]
fn main() {}

#[cfg(not(loom))]
fn main() {
    floor::main();
}

#[cfg(not(loom))]
mod floor {
    use std::hint::black_box;
    use std::sync::atomic::{AtomicU64, Ordering};

    use coalescer_benches::{median_ns, spread, u64_keys, GoPort, Held};

    /// A word on cache lines of its own (x86 prefetches lines in pairs).
    #[repr(align(128))]
    struct Line(AtomicU64);

    /// A key under the striped design: its state word (bit 0: a runner owns
    /// it), and one pending stripe per thread.
    struct StripedKey {
        state: Line,
        stripes: [Line; 2],
    }

    impl StripedKey {
        fn running() -> Self {
            StripedKey {
                state: Line(AtomicU64::new(1)),
                stripes: [Line(AtomicU64::new(0)), Line(AtomicU64::new(0))],
            }
        }

        /// Marks thread `t`'s stripe with a `SeqCst` swap, then reads the
        /// state: both `SeqCst`, so they are ordered against a runner's
        /// `SeqCst` kill-then-scan (in the C++ model; loom cannot check it).
        /// Returns whether the key is still owned.
        fn request_seqcst(&self, t: usize) -> bool {
            // ORDERING: SeqCst pairs with the runner's SeqCst kill and scan
            // (the Dekker pattern); measured here, not run against one.
            self.stripes[t].0.swap(1, Ordering::SeqCst);
            // ORDERING: SeqCst, the other half of the same pattern.
            self.state.0.load(Ordering::SeqCst) & 1 != 0
        }

        /// What `Slot::request_marked` does, as built: an `AcqRel` swap on
        /// the thread's mark and a `Relaxed` read of the state.
        fn request_as_built(&self, t: usize) -> bool {
            // ORDERING: AcqRel pairs with the runner's AcqRel swap of the
            // mark in its check; measured here, not run against one.
            self.stripes[t].0.swap(1, Ordering::AcqRel);
            // ORDERING: Relaxed, ordered by the swap's Acquire.
            self.state.0.load(Ordering::Relaxed) & 1 != 0
        }

        /// The first version of `Slot::request_marked`: a `Release` swap, a
        /// `SeqCst` fence, a `Relaxed` read of the state.
        fn request_fenced(&self, t: usize) -> bool {
            // ORDERING: Release pairs with the runner's Acquire swap of the
            // mark; measured here, not run against one.
            self.stripes[t].0.swap(1, Ordering::Release);
            // ORDERING: SeqCst fence pairs with the runner's fence between
            // its `dying` exchange and its mark check.
            std::sync::atomic::fence(Ordering::SeqCst);
            // ORDERING: Relaxed, ordered by the fence.
            self.state.0.load(Ordering::Relaxed) & 1 != 0
        }

        /// The same with a plain `Release` store: correct only with an
        /// asymmetric fence on the runner's side.
        fn request_asymmetric(&self, t: usize) -> bool {
            // ORDERING: Release pairs with the runner's Acquire scan of the
            // stripes, after its asymmetric fence; measured here only.
            self.stripes[t].0.store(1, Ordering::Release);
            // ORDERING: Acquire pairs with the runner's Release kill.
            self.state.0.load(Ordering::Acquire) & 1 != 0
        }
    }

    const ITERS: u64 = 4_000_000;

    type Op<'a> = Box<dyn Fn(usize, u64) + Sync + 'a>;

    pub(super) fn main() {
        let word = AtomicU64::new(0);
        let keys = u64_keys(256);
        let (go_hot, go_many) = (GoPort::running(&[7]), GoPort::running(&keys));
        let (ours_hot, ours_many) = (Held::new(&[7]), Held::new(&keys));
        let hot = StripedKey::running();
        let many: Vec<StripedKey> = keys.iter().map(|_| StripedKey::running()).collect();
        let rows: Vec<(&str, Op<'_>)> = vec![
            (
                "harness only (empty request)",
                Box::new(|t, i| {
                    black_box((t, i));
                }),
            ),
            (
                "the limit: fetch_or on one word",
                Box::new(|_, _| {
                    black_box(word.fetch_or(2, Ordering::AcqRel));
                }),
            ),
            (
                "hot key: Go port",
                Box::new(|_, _| {
                    black_box(go_hot.request(&7));
                }),
            ),
            (
                "hot key: ours",
                Box::new(|_, _| {
                    black_box(ours_hot.coalescer.request(7).is_ok());
                }),
            ),
            (
                "hot key: stripe (SeqCst swap + load)",
                Box::new(|t, _| {
                    black_box(hot.request_seqcst(t));
                }),
            ),
            (
                "hot key: mark as built (AcqRel swap + load)",
                Box::new(|t, _| {
                    black_box(hot.request_as_built(t));
                }),
            ),
            (
                "hot key: mark, first version (Release swap + SeqCst fence + load)",
                Box::new(|t, _| {
                    black_box(hot.request_fenced(t));
                }),
            ),
            (
                "hot key: stripe (Release store + load)",
                Box::new(|t, _| {
                    black_box(hot.request_asymmetric(t));
                }),
            ),
            (
                "256 keys: Go port",
                Box::new(|t, i| {
                    black_box(go_many.request(&keys[spread(t, i, 256)]));
                }),
            ),
            (
                "256 keys: ours",
                Box::new(|t, i| {
                    black_box(ours_many.coalescer.request(keys[spread(t, i, 256)]).is_ok());
                }),
            ),
            (
                "256 keys: stripe (SeqCst swap + load), no lookup",
                Box::new(|t, i| {
                    black_box(many[spread(t, i, 256)].request_seqcst(t));
                }),
            ),
            (
                "256 keys: stripe (Release store + load), no lookup",
                Box::new(|t, i| {
                    black_box(many[spread(t, i, 256)].request_asymmetric(t));
                }),
            ),
        ];
        println!("| request | 1 thread (ns/iter) | 2 threads (ns/iter) |");
        println!("|---|---|---|");
        for (name, op) in &rows {
            let (one, two) = (
                median_ns(1, ITERS, op.as_ref()),
                median_ns(2, ITERS, op.as_ref()),
            );
            println!("| {name} | {one:.1} | {two:.1} |");
        }
    }
}
