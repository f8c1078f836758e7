//! What the memory layout of the keyed map costs a coalesced request for one
//! of many keys, and what another layout would buy, measured beside ours and
//! the peers in one run (`on_threads`, median of seven runs, ns per
//! iteration; 256 and 100 000 keys walked as the criterion benches walk
//! them).
//!
//! ```text
//! cargo run -p coalescer-benches --release --bin layout
//! valgrind --tool=cachegrind target/release/layout among 100000 1000000  # one model alone
//! ```
//!
//! With arguments `MODEL KEYS REQUESTS` (`among`, `dense` or `inline`) it
//! runs that many requests of one model on one thread and prints nothing,
//! for cachegrind (`scripts/many-keys-profile.sh` subtracts a run of one
//! million requests from a run of two).
//!
//! Each model does what our map path does and nothing else: hash the key,
//! take the shard's read lock, find the key, one `fetch_or` on its state
//! word, unlock. They differ only in where that word lives:
//!
//! - *behind an `Arc`, among tasks*: ours — the table entry holds the key's
//!   hash, the key and an `Arc` of its slot; each slot was allocated next to
//!   a runner-task-sized allocation (the task is spawned right after the slot
//!   is made), so consecutive slots are a task apart;
//! - *behind an `Arc`, dense*: the same, the slots allocated back to back;
//! - *inline*: the word is in the table entry itself (hash, key, word), as a
//!   map whose entries never move could hold it — one line per request.
//!
//! Nothing here is the crate's code: it bounds what a change of layout can
//! win before the change is made.

#[cfg(loom)]
fn main() {}

#[cfg(not(loom))]
fn main() {
    layout::main();
}

#[cfg(not(loom))]
mod layout {
    use std::collections::hash_map::RandomState;
    use std::hash::BuildHasher;
    use std::hint::black_box;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, RwLock};

    use coalescer_benches::{median_ns, spread, u64_keys, DashPeer, GoPort, Held};
    use hashbrown::HashTable;

    /// What a runner allocates per active key besides its slot — its
    /// boxed future, tokio's task cell and the join set's entry — about as
    /// `summary`'s memory line reports it.
    const TASK_BYTES: usize = 768;

    /// Shards per map, as our default on 2 cores.
    const SHARDS: usize = 8;

    /// A slot as big as ours (56 bytes): its state word first.
    struct SlotLike {
        state: AtomicU64,
        _rest: [u64; 6],
    }

    /// Where a key's state word lives: behind an `Arc` (`Arc<SlotLike>`)
    /// or inline (`AtomicU64`). Either way the entry is 24 bytes, as ours.
    trait Word {
        fn word(&self) -> &AtomicU64;
    }

    impl Word for Arc<SlotLike> {
        fn word(&self) -> &AtomicU64 {
            &self.state
        }
    }

    impl Word for AtomicU64 {
        fn word(&self) -> &AtomicU64 {
            self
        }
    }

    struct Entry<W> {
        hash: u64,
        key: u64,
        word: W,
    }

    /// A sharded map of running keys with the word placed as `W` says.
    struct Model<W> {
        shards: Vec<RwLock<HashTable<Entry<W>>>>,
        hasher: RandomState,
        /// The task-sized allocations the slots were made among.
        _tasks: Vec<Box<[u8]>>,
    }

    impl<W: Word> Model<W> {
        fn new(keys: &[u64], word: impl Fn() -> W, among_tasks: bool) -> Self {
            let hasher = RandomState::new();
            let shards: Vec<_> = (0..SHARDS).map(|_| RwLock::new(HashTable::new())).collect();
            let mut tasks = Vec::new();
            for &key in keys {
                let hash = hasher.hash_one(key);
                let word = word();
                if among_tasks {
                    tasks.push(vec![1u8; TASK_BYTES].into_boxed_slice());
                }
                let shard = &shards[(hash >> 32) as usize % SHARDS];
                shard.write().expect("not poisoned").insert_unique(
                    hash,
                    Entry { hash, key, word },
                    |e| e.hash,
                );
            }
            Model {
                shards,
                hasher,
                _tasks: tasks,
            }
        }

        fn request(&self, key: u64) -> bool {
            let hash = self.hasher.hash_one(key);
            let shard = self.shards[(hash >> 32) as usize % SHARDS]
                .read()
                .expect("not poisoned");
            let Some(entry) = shard.find(hash, |e| e.key == key) else {
                return false;
            };
            let word = entry.word.word();
            // ORDERING: AcqRel, as `Slot::request`; measured here, not run
            // against a runner.
            word.fetch_or(2, Ordering::AcqRel) & 1 != 0
        }
    }

    fn slot() -> Arc<SlotLike> {
        Arc::new(SlotLike {
            state: AtomicU64::new(1),
            _rest: [0; 6],
        })
    }

    fn inline() -> AtomicU64 {
        AtomicU64::new(1)
    }

    const ITERS: u64 = 2_000_000;

    type Op<'a> = Box<dyn Fn(usize, u64) + Sync + 'a>;

    /// `MODEL KEYS REQUESTS`: that many requests of one model, for a
    /// cache profile.
    fn profile(model: &str, keys: usize, requests: u64) {
        let keys = u64_keys(keys);
        match model {
            "among" => walk(&Model::new(&keys, slot, true), &keys, requests),
            "dense" => walk(&Model::new(&keys, slot, false), &keys, requests),
            _ => walk(&Model::new(&keys, inline, false), &keys, requests),
        }
    }

    fn walk<W: Word>(model: &Model<W>, keys: &[u64], requests: u64) {
        for i in 0..requests {
            black_box(model.request(keys[spread(0, i, keys.len())]));
        }
    }

    pub(super) fn main() {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if let [model, keys, requests] = &args[..] {
            if let (Ok(keys), Ok(requests)) = (keys.parse(), requests.parse()) {
                return profile(model, keys, requests);
            }
        }
        println!("| keys | request | 1 thread (ns/iter) | 2 threads (ns/iter) |");
        println!("|---|---|---|---|");
        for n in [256usize, 100_000] {
            let keys = u64_keys(n);
            let ours = Held::new(&keys);
            let go = GoPort::running(&keys);
            let dash = DashPeer::running(&keys);
            let among = Model::new(&keys, slot, true);
            let dense = Model::new(&keys, slot, false);
            let inline = Model::new(&keys, inline, false);
            let key = |t, i| keys[spread(t, i, n)];
            let rows: Vec<(&str, Op<'_>)> = vec![
                (
                    "ours",
                    Box::new(|t, i| {
                        black_box(ours.coalescer.request(key(t, i)).is_ok());
                    }),
                ),
                (
                    "Go port",
                    Box::new(|t, i| {
                        black_box(go.request(&key(t, i)));
                    }),
                ),
                (
                    "hand-rolled DashMap",
                    Box::new(|t, i| {
                        black_box(dash.request(key(t, i)));
                    }),
                ),
                (
                    "model: word behind an Arc, among tasks (our layout)",
                    Box::new(|t, i| {
                        black_box(among.request(key(t, i)));
                    }),
                ),
                (
                    "model: word behind an Arc, slots dense",
                    Box::new(|t, i| {
                        black_box(dense.request(key(t, i)));
                    }),
                ),
                (
                    "model: word inline in the table entry",
                    Box::new(|t, i| {
                        black_box(inline.request(key(t, i)));
                    }),
                ),
            ];
            for (name, op) in &rows {
                let (one, two) = (
                    median_ns(1, ITERS, op.as_ref()),
                    median_ns(2, ITERS, op.as_ref()),
                );
                println!("| {n} | {name} | {one:.1} | {two:.1} |");
            }
        }
    }
}
