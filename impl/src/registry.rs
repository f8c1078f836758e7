//! The keyed map of active slots, the `closed` flag, admission and
//! reclamation.
//!
//! The map is split into shards, each a `RwLock<HashTable<Entry<K>>>`: a
//! hash table that stores each key's hash with it, so a key is hashed once
//! per request (the same hash picks the shard and the bucket), and the
//! runner, which keeps the hash, removes its slot without calling the key's
//! `Hash` or `Eq` at all.
//! A request for an active key takes its shard's read lock and does the one
//! `fetch_or` of [`Slot::request`] — readers never block each other. The
//! write lock is taken only to create a slot (a key becoming active), to
//! remove one (a key going idle), and once per shard by [`Registry::close`].
//! No lock is ever held while a cycle runs.
//!
//! A thread that requests the same key again and again skips the map: each
//! thread keeps a memo of the last key it requested twice in a row, that
//! key's slot and a mark of its own registered there (`slot.rs`), and a
//! request for that key sets the mark and reads the slot's state word — no
//! hash, no lock, no line written that another thread writes. A memo is only
//! a hint: a request that finds the memoized slot dead forgets it and goes to
//! the map, exactly as a request that finds a dead slot in the map does.

use std::hash::{BuildHasher, Hash};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::completion::Completion;
use crate::error::Admission;
use crate::slot::{Mark, Slot};
use crate::state::Requested;
use crate::stats::Counters;
use crate::sync::{
    self, in_cycle_of, read, write, Arc, AtomicBool, Ordering, Padded, PerThread, PerThreadValue,
    RwLock, StatCounter,
};

use std::sync::atomic::Ordering::Relaxed;

use hashbrown::hash_table::Entry as TableEntry;
use hashbrown::HashTable;

/// One active key: its hash (computed once, at admission), the key, and its
/// slot.
struct Entry<K> {
    hash: u64,
    key: K,
    slot: Arc<Slot>,
}

/// A shard on cache lines of its own: its lock word is written by every
/// request that reads the map (the read lock is an RMW), so two shards
/// sharing a line would make requests for unrelated keys contend. The
/// shard's count of coalesced requests sits on the same line, which those
/// requests write anyway, so counting costs no extra line.
type Shard<K> = Padded<ShardMap<K>>;

/// The contents of a [`Shard`].
struct ShardMap<K> {
    map: RwLock<HashTable<Entry<K>>>,
    /// Requests folded into a live slot of this shard through the map (see
    /// `Stats`).
    coalesced: StatCounter,
}

impl<K> std::ops::Deref for ShardMap<K> {
    type Target = RwLock<HashTable<Entry<K>>>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

/// Numbers registries, from 1, for the per-thread memo hints (`sync.rs`);
/// never reused, so a hint can never point at a later registry by mistake.
static NEXT_REGISTRY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// What one thread remembers of its own requests to one registry.
struct Memo<K> {
    /// Requests this thread folded into a live slot through this memo (see
    /// `Stats`). Written by this thread only; read by `coalesced_count`.
    coalesced: Arc<Padded<StatCounter>>,
    /// The last key this thread requested twice in a row through the map and
    /// found live, with its slot and this thread's mark registered there. The
    /// slot may have died since: a request through the memo finds out.
    hit: Option<Hit<K>>,
    /// A mark no slot has registered, kept for the next [`Hit`] so that a
    /// memo moving between keys allocates no new one.
    spare: Option<Arc<Mark>>,
}

/// A memo's key, slot and mark.
struct Hit<K> {
    key: K,
    slot: Arc<Slot>,
    mark: Arc<Mark>,
}

impl<K: Send + 'static> Memo<K> {
    /// This thread's memo in `value`, which is `registry`'s for this thread
    /// (always a `Memo<K>`: a registry stores nothing else there). Created
    /// on first use, with a statistics counter the registry can sum.
    #[inline]
    fn of<'a, S>(
        value: &'a mut Option<PerThreadValue>,
        registry: &Registry<K, S>,
    ) -> Option<&'a mut Self> {
        value
            .get_or_insert_with(|| Self::create(registry))
            .downcast_mut()
    }

    #[cold]
    fn create<S>(registry: &Registry<K, S>) -> PerThreadValue {
        let coalesced = Arc::new(Padded(StatCounter::new(0)));
        registry.memo_counts().push(Arc::clone(&coalesced));
        Box::new(Memo::<K> {
            coalesced,
            hit: None,
            spare: None,
        })
    }

    /// Makes `slot` (live, `key`'s) the memo's hit, with this thread's mark
    /// registered there; the previous hit, if any, is let go first.
    fn remember(&mut self, key: K, slot: Arc<Slot>) {
        self.forget();
        let mark = self.spare.take().unwrap_or_else(|| Arc::new(Mark::new()));
        slot.watch(Arc::clone(&mark));
        self.hit = Some(Hit { key, slot, mark });
    }

    /// Lets the hit go: its mark is unregistered (any request marked there
    /// and not yet consumed is made again as a plain request) and kept as
    /// the spare, and the key is dropped (a panic in its `Drop` contained).
    fn forget(&mut self) {
        if let Some(Hit { key, slot, mark }) = self.hit.take() {
            slot.unwatch(&mark);
            drop(slot);
            // Unique once unregistered: the slot held the only other `Arc`.
            if Arc::strong_count(&mark) == 1 {
                self.spare = Some(mark);
            }
            drop_contained(Some(key));
        }
    }

    /// Counts one request folded into a live slot through this memo.
    fn count(&self) {
        // ORDERING: Relaxed, observation only (StatCounter). A load and a
        // store rather than an RMW: this thread is the counter's only writer
        // (a thread's value passes to a later thread only after it exited),
        // so no count is lost, and a plain store costs no locked instruction.
        let c = &self.coalesced;
        c.store(c.load(Relaxed) + 1, Relaxed);
    }
}

/// Every active key's slot, and whether admission is closed.
pub(crate) struct Registry<K, S> {
    shards: Box<[Shard<K>]>,
    /// `shards.len() - 1`; the length is a power of two.
    mask: usize,
    hasher: S,
    /// Set once by `close`. Read by admission, under a shard lock or (on the
    /// memo path) before the request sets its mark.
    closed: AtomicBool,
    /// Slots created minus slots killed by `go_idle`: the number of keys
    /// with a running or pending cycle.
    active: StatCounter,
    /// This registry's number, for the per-thread memo hints.
    id: u64,
    /// Every memo's count of requests folded through it (see `Stats`);
    /// pushed to when a thread's memo is created, read by `coalesced_count`.
    /// A `std` mutex even under loom: observation only (see `sync.rs`).
    memo_counts: std::sync::Mutex<Vec<Arc<Padded<StatCounter>>>>,
    /// Each thread's [`Memo`]; dropped with the registry.
    memos: PerThread,
}

/// The most shards a registry has, whatever the builder was asked for.
pub(crate) const MAX_SHARDS: usize = 1 << 16;

/// An accepted request.
#[derive(Debug)]
pub(crate) struct Admitted {
    /// Whether this request started a runner or joined an active one.
    pub(crate) admission: Admission,
    /// The covering cycle's completion, if the request asked to wait.
    pub(crate) completion: Option<Arc<Completion>>,
}

/// Why admission failed.
#[derive(Debug)]
pub(crate) enum AdmitError<E> {
    /// The registry is closed: nothing was recorded.
    Closed,
    /// A waiting request from inside a cycle of the same key: it would wait
    /// for itself. Nothing was recorded.
    OwnCycle,
    /// Starting the runner failed: the fresh slot was removed again before
    /// anyone could see it, so nothing was recorded.
    Start(E),
}

impl<K, S> Registry<K, S>
where
    K: Hash + Eq + Send + 'static,
    S: BuildHasher + Clone,
{
    /// Admits a request for `key`.
    ///
    /// If the key is active, the request is folded into its slot — found
    /// through this thread's memo, or else in the map. Otherwise a fresh slot
    /// is created, and `start` is called — under the shard's write lock, so
    /// `close` cannot return before the runner `start` registers is visible
    /// to it — to start that slot's runner. If `wait` is set, the returned
    /// admission carries the covering cycle's completion.
    pub(crate) fn admit<E>(
        &self,
        key: K,
        wait: bool,
        counters: &Counters,
        start: impl FnOnce(&K, &Arc<Slot>, u64) -> Result<(), E>,
    ) -> Result<Admitted, AdmitError<E>> {
        if !wait && sync::holds_memo_in(self.id) {
            if let Some(decided) = self.admit_by_memo(&key, counters) {
                return decided;
            }
        }
        self.admit_by_map(key, wait, counters, start)
    }

    /// The memo path: if this thread's memo holds `key` and its slot is
    /// live, folds the request into it through this thread's mark, writing
    /// nothing another thread writes. `None`: the memo does not decide (it
    /// holds another key, is busy, or its slot is dead — then it is
    /// forgotten), and the request goes to the map.
    fn admit_by_memo<E>(
        &self,
        key: &K,
        counters: &Counters,
    ) -> Option<Result<Admitted, AdmitError<E>>> {
        self.memos.with(|value| {
            let memo = value.and_then(|v| Memo::of(v, self))?;
            let hit = memo.hit.as_ref().filter(|hit| hit.key == *key)?;
            if self.is_closed() {
                return Some(Err(rejected(counters)));
            }
            if hit.slot.request_marked(&hit.mark) {
                memo.count();
                tracing::debug!(target: "coalescer", "coalesced");
                return Some(Ok(Admitted {
                    admission: Admission::Coalesced,
                    completion: None,
                }));
            }
            // The runner went idle since: the slot is dead and may have been
            // replaced in the map.
            memo.forget();
            sync::set_memo_holder(0);
            None
        })
    }

    /// The map paths of [`admit`](Self::admit). Not inlined: the memo path
    /// stays small (no frame for the map paths' locals).
    #[inline(never)]
    fn admit_by_map<E>(
        &self,
        key: K,
        wait: bool,
        counters: &Counters,
        start: impl FnOnce(&K, &Arc<Slot>, u64) -> Result<(), E>,
    ) -> Result<Admitted, AdmitError<E>> {
        let hash = self.hash(&key);
        let shard = self.shard(hash);
        // A key requested twice in a row by this thread is worth remembering.
        let repeated = !wait && sync::repeats_last_request(self.id, hash);
        // Fast path: the key is active and its slot live. One read lock, one RMW.
        let joined = {
            let map = read(shard);
            if self.is_closed() {
                return Err(rejected(counters));
            }
            match map.find(hash, |e| e.key == key) {
                Some(Entry { slot, .. }) => {
                    if wait && in_cycle_of(slot.id()) {
                        return Err(AdmitError::OwnCycle);
                    }
                    join_live(slot, wait)
                        .map(|completion| (completion, repeated.then(|| Arc::clone(slot))))
                }
                None => None,
            }
        };
        if let Some((completion, remember)) = joined {
            if let Some(slot) = remember {
                self.remember(key, slot);
            }
            return Ok(coalesced(shard, completion));
        }
        // Slow path: no slot, or a dead one. Under the write lock nobody else
        // can create or remove this key's slot.
        let mut map = write(shard);
        if self.is_closed() {
            return Err(rejected(counters));
        }
        // Someone may have created a fresh slot since we looked.
        let found = map.find(hash, |e| e.key == key);
        if let Some(completion) = found.and_then(|e| join_live(&e.slot, wait)) {
            return Ok(coalesced(shard, completion));
        }
        // The key is idle (no slot, or a dead slot its runner has not removed
        // yet): create its slot, replacing any dead one.
        let completion = wait.then(|| Arc::new(Completion::new(1)));
        let slot = Arc::new(Slot::fresh(completion.clone()));
        if let Err(e) = start(&key, &slot, hash) {
            // Nobody has seen `slot`: it was never in the map.
            return Err(AdmitError::Start(e));
        }
        // Counted while we still hold the write lock, which the new runner's
        // `reclaim` needs: so the count never goes below this slot's share.
        // ORDERING: Relaxed, observation only (StatCounter).
        self.active
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Replace a dead slot whose runner has not removed it yet, or add.
        match map.entry(hash, |e| e.key == key, |e| e.hash) {
            TableEntry::Occupied(mut dead) => dead.get_mut().slot = slot,
            TableEntry::Vacant(absent) => {
                absent.insert(Entry { hash, key, slot });
            }
        }
        drop(map);
        Counters::bump(&counters.started);
        tracing::debug!(target: "coalescer", "started");
        Ok(Admitted {
            admission: Admission::Started,
            completion,
        })
    }

    /// Makes `slot` (live, `key`'s) this thread's memo for this registry.
    fn remember(&self, key: K, slot: Arc<Slot>) {
        self.memos.with(|value| {
            if let Some(memo) = value.and_then(|v| Memo::of(v, self)) {
                memo.remember(key, slot);
                sync::set_memo_holder(self.id);
            }
        });
    }
}

impl<K, S> Registry<K, S>
where
    K: Hash + Eq,
    S: BuildHasher + Clone,
{
    /// A registry with `shards` shards, rounded up to a power of two and
    /// clamped to `1..=MAX_SHARDS` (so no request for shards can overflow).
    pub(crate) fn new(shards: usize, hasher: S) -> Self {
        let n = shards.clamp(1, MAX_SHARDS).next_power_of_two();
        Registry {
            shards: (0..n)
                .map(|_| {
                    Padded(ShardMap {
                        map: RwLock::new(HashTable::new()),
                        coalesced: StatCounter::new(0),
                    })
                })
                .collect(),
            mask: n - 1,
            hasher,
            closed: AtomicBool::new(false),
            active: StatCounter::new(0),
            // ORDERING: Relaxed: only numbers the registry; nothing is
            // ordered by it.
            id: NEXT_REGISTRY.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            memo_counts: std::sync::Mutex::default(),
            memos: PerThread::new(),
        }
    }

    /// The key's hash, computed once per request.
    fn hash(&self, key: &K) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The shard of a key with hash `hash`. The table uses the hash's low
    /// bits (bucket) and top seven (tag); the shard takes bits from the
    /// middle, so that within a shard the buckets still spread.
    fn shard(&self, hash: u64) -> &Shard<K> {
        &self.shards[self.shard_index(hash)]
    }

    fn shard_index(&self, hash: u64) -> usize {
        // Truncation intended: only these bits pick the shard.
        (hash >> 32) as usize & self.mask
    }

    fn is_closed(&self) -> bool {
        // ORDERING: Acquire pairs with the Release store in `close`: a
        // request that happens-after `close` sees the flag. On the map paths
        // it is read under a shard lock, whose hand-off with `close`'s barrier
        // guarantees that a request that missed the flag finished before
        // `close` returned (INV-5). On the memo path it is read before the
        // mark is set; a request that misses it there can only fold into a
        // slot whose runner is still live, which the drain waits for.
        self.closed.load(Ordering::Acquire)
    }

    /// Called by a runner right after its slot went dead: removes the slot
    /// from the map, unless a requester already replaced it with a fresh one.
    ///
    /// The slot is found by the hash the runner kept and by identity: no
    /// user code runs here except the key's `Drop` for the map's copy, which
    /// is contained, so a runner never dies of its key.
    pub(crate) fn reclaim(&self, hash: u64, slot: &Arc<Slot>) {
        let mut map = write(self.shard(hash));
        let removed = match map.find_entry(hash, |e| Arc::ptr_eq(&e.slot, slot)) {
            Ok(entry) => Some(entry.remove().0),
            Err(_) => None,
        };
        // Under the lock: after the creator's increment (see `admit`).
        // ORDERING: Relaxed, observation only (StatCounter).
        self.active
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        // A table that once held many keys gives the memory back (INV-6).
        if let Some(target) = shrink_target(map.len(), map.capacity()) {
            map.shrink_to(target, |e| e.hash);
        }
        drop(map);
        // The key's `Drop`, outside the lock.
        drop_contained(removed);
        tracing::debug!(target: "coalescer", "reclaimed");
    }

    /// The keys whose slot is live (a cycle running, pending or being paced).
    pub(crate) fn live_keys(&self) -> Vec<K>
    where
        K: Clone,
    {
        self.shards
            .iter()
            .flat_map(|shard| {
                read(shard)
                    .iter()
                    .filter(|e| e.slot.is_live())
                    .map(|e| e.key.clone())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Slots still in the map, dead or alive (for tests of reclamation).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn slots(&self) -> usize {
        self.shards.iter().map(|s| read(s).len()).sum()
    }
}

/// Tables of at most this many entries' capacity never shrink: small tables
/// are cheap to keep, and regrowing them on the next burst is not.
const SHRINK_FLOOR: usize = 64;

/// When a shard's table gives memory back (INV-6): once less than a quarter
/// of its capacity is used, it shrinks to twice its length (so the next few
/// keys fit without growing it again at once). `None`: leave it.
fn shrink_target(len: usize, capacity: usize) -> Option<usize> {
    (capacity > SHRINK_FLOOR && len * 4 < capacity).then_some(len * 2)
}

impl<K, S> Registry<K, S> {
    /// Closes admission. When this returns, every later `admit` fails with
    /// `Closed`, and every earlier successful `admit` has finished: its
    /// request is in a live slot and any runner it started was registered by
    /// `start` (INV-5).
    pub(crate) fn close(&self) {
        // ORDERING: Release pairs with the Acquire load in `is_closed`. The
        // flag alone is not enough — a request may have read `false` just
        // before this store — so the barrier below waits out every admission
        // holding a shard lock; any lock taken after it sees the flag.
        self.closed.store(true, Ordering::Release);
        for shard in self.shards.iter() {
            drop(write(shard));
        }
    }

    /// Sets the closed flag without the barrier of [`close`](Self::close):
    /// every admission from now on is rejected, with no promise about the
    /// ones in flight. For a coalescer that can no longer run anything (its
    /// runtime has shut down); safe to call while holding a shard lock.
    pub(crate) fn mark_closed(&self) {
        // ORDERING: Release pairs with the Acquire load in `is_closed`.
        self.closed.store(true, Ordering::Release);
    }

    /// Requests folded into a live slot: through the map, over all shards,
    /// and through memos, over every thread's memo counter.
    pub(crate) fn coalesced_count(&self) -> u64 {
        // ORDERING: Relaxed, observation only (StatCounter).
        let by_map: u64 = self.shards.iter().map(|s| s.coalesced.load(Relaxed)).sum();
        let by_memo: u64 = self.memo_counts().iter().map(|c| c.load(Relaxed)).sum();
        by_map + by_memo
    }

    /// The list of memo counters, locked (poison ignored, as in `sync::lock`).
    fn memo_counts(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Padded<StatCounter>>>> {
        self.memo_counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keys with a running or pending cycle.
    pub(crate) fn active_keys(&self) -> usize {
        // ORDERING: Relaxed, observation only (StatCounter).
        self.active.load(std::sync::atomic::Ordering::Relaxed) as usize
    }
}

/// Counts a rejected request.
fn rejected<E>(counters: &Counters) -> AdmitError<E> {
    Counters::bump(&counters.rejected);
    AdmitError::Closed
}

/// Counts a request folded into a live slot through the map, in its shard.
fn coalesced<K>(shard: &Shard<K>, completion: Option<Arc<Completion>>) -> Admitted {
    Counters::bump(&shard.coalesced);
    tracing::debug!(target: "coalescer", "coalesced");
    Admitted {
        admission: Admission::Coalesced,
        completion,
    }
}

/// Drops `value` — a key, or a memo entry holding one — containing a panic
/// of the key's `Drop`: it is reported, and the caller (a runner, or a
/// request already accepted) goes on.
fn drop_contained<T>(value: Option<T>) {
    if value.is_none() {
        return;
    }
    if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(value))) {
        crate::panic::dispose(payload);
        tracing::error!(target: "coalescer", "a key's Drop panicked when the coalescer let it go");
    }
}

/// Folds a request into `slot` if it is live: `Some` of the covering
/// cycle's completion if the request waits (`Some(None)` if not); `None` if
/// the slot is dead.
fn join_live(slot: &Slot, wait: bool) -> Option<Option<Arc<Completion>>> {
    if wait {
        return slot.request_and_register().map(Some);
    }
    match slot.request() {
        Requested::Dead => None,
        Requested::Coalesced { .. } => Some(None),
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::{shrink_target, Registry};
    use std::collections::hash_map::RandomState;

    /// Keys spread over every shard. A hash or shard choice that sent every
    /// key to one shard would still be correct, but every request of every
    /// key would then take (and write) the same lock word: keys would
    /// contend with each other, which sharding exists to prevent.
    #[test]
    fn keys_spread_over_every_shard() {
        const SHARDS: usize = 16;
        const KEYS: u64 = 4096;
        let registry = Registry::<u64, RandomState>::new(SHARDS, RandomState::new());
        let mut per_shard = [0usize; SHARDS];
        for key in 0..KEYS {
            per_shard[registry.shard_index(registry.hash(&key))] += 1;
        }
        // 256 expected per shard, standard deviation about 16: the bounds
        // are eight deviations out, so a fair hash never fails them.
        assert!(
            per_shard.iter().all(|&n| (128..=384).contains(&n)),
            "keys per shard: {per_shard:?}"
        );
    }

    /// The shrink policy at its edges: a table shrinks once less than a
    /// quarter full, to twice its length, and never at or below the floor.
    #[test]
    fn tables_shrink_below_a_quarter_full_and_never_at_the_floor() {
        assert_eq!(shrink_target(27, 112), Some(54));
        assert_eq!(shrink_target(28, 112), None, "exactly a quarter full stays");
        assert_eq!(shrink_target(0, 112), Some(0));
        assert_eq!(shrink_target(100, 112), None);
        assert_eq!(shrink_target(0, 64), None, "at the floor nothing shrinks");
        assert_eq!(shrink_target(0, 56), None);
        assert_eq!(shrink_target(3, 65), Some(6));
    }
}
