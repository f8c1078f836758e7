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
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use hashbrown::hash_table::Entry as TableEntry;
use hashbrown::HashTable;

use crate::completion::Completion;
use crate::delay::Delays;
use crate::error::Admission;
use crate::memo::{self, Memo, MemoCounter};
use crate::padded::Padded;
use crate::panic::drop_contained;
use crate::slot::{DelayedRequest, MarkedRequest, Slot, Ticks};
use crate::state;
use crate::stats::Counters;
use crate::sync::{Arc, AtomicBool, Ordering, PerThread, RwLock, RwLockWriteGuard, StatCounter};
use crate::trace::Names;

/// One active key: its hash (computed once, at admission), the key, and its
/// slot.
struct Entry<K, A> {
    hash: u64,
    key: K,
    slot: Arc<Slot<A>>,
}

/// A key's delayed request not yet covered (`delay.rs`): at most one per
/// key, in the key's shard, under the shard's lock.
struct Delayed<K, A> {
    hash: u64,
    key: K,
    /// When it becomes an immediate request (`None`: too far to name; only
    /// a cycle or shutdown covers it). The timer queue has an entry for it.
    deadline: Option<Instant>,
    /// Its number in the timer queue.
    number: u64,
    /// What covers it: `None`, the key's next slot (it was idle); or a live
    /// slot and how many cycles it had begun, covered once it begins one
    /// more.
    since: Option<(Arc<Slot<A>>, u64)>,
}

impl<K, A> Delayed<K, A> {
    /// Whether no cycle has covered it yet (a record on a slot that has
    /// begun a cycle since is stale, and is dropped when found).
    fn owed(&self) -> bool {
        self.since.as_ref().map_or(true, |(slot, since)| {
            state::cycles_begun(slot.touch()) == *since
        })
    }
}

/// What a shard's lock guards: the active keys' slots, and the delayed
/// requests not yet covered. Derefs to the active table, which every
/// request reads.
struct Tables<K, A> {
    active: HashTable<Entry<K, A>>,
    delayed: HashTable<Delayed<K, A>>,
}

impl<K, A> std::ops::Deref for Tables<K, A> {
    type Target = HashTable<Entry<K, A>>;

    fn deref(&self) -> &Self::Target {
        &self.active
    }
}

impl<K, A> std::ops::DerefMut for Tables<K, A> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.active
    }
}

impl<K, A> Tables<K, A> {
    /// Takes `key`'s delayed request out (a fresh slot covers it), with its
    /// timer entry; the record, to drop outside the lock.
    fn cover_delayed(&mut self, hash: u64, key: &K, delays: &Delays) -> Option<Delayed<K, A>>
    where
        K: Eq,
    {
        if self.delayed.is_empty() {
            return None;
        }
        let (record, _) = self
            .delayed
            .find_entry(hash, |d| d.key == *key)
            .ok()?
            .remove();
        if let Some(deadline) = record.deadline {
            delays.cancel(deadline, record.number);
        }
        Some(record)
    }
}

/// A shard on cache lines of its own: its lock word is written by every
/// request that reads the map (the read lock is an RMW), so two shards
/// sharing a line would make requests for unrelated keys contend. The
/// shard's count of coalesced requests sits on the same line, which those
/// requests write anyway, so counting costs no extra line.
type Shard<K, A> = Padded<ShardMap<K, A>>;

/// The contents of a [`Shard`].
struct ShardMap<K, A> {
    map: RwLock<Tables<K, A>>,
    /// Requests folded into a live slot of this shard through the map (see
    /// `Stats`).
    coalesced: StatCounter,
}

impl<K, A> std::ops::Deref for ShardMap<K, A> {
    type Target = RwLock<Tables<K, A>>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

/// Numbers registries, from 1, for the per-thread memo hints (`memo.rs`);
/// never reused, so a hint can never point at a later registry by mistake.
static NEXT_REGISTRY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Every active key's slot, and whether admission is closed. `A` is what
/// a cycle's waiters are told (`output::Answer`).
pub(crate) struct Registry<K, S, A> {
    shards: Box<[Shard<K, A>]>,
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
    /// A `std` mutex even under loom: observation only, like the counters
    /// it holds (see `sync`'s module doc).
    memo_counts: std::sync::Mutex<Vec<MemoCounter>>,
    /// Each thread's [`Memo`]; dropped with the registry.
    memos: PerThread,
    /// With a debounce: the clock fresh slots stamp their requests with.
    ticks: Option<Ticks>,
    /// The timer queue of the delayed requests in the shards.
    delays: Delays,
    /// The coalescer's name and how its keys print, for the events.
    pub(crate) names: Names<K>,
}

/// The most shards a registry has, whatever the builder was asked for.
pub(crate) const MAX_SHARDS: usize = 1 << 16;

/// How a kind of request joins a slot: a plain request (nothing to wait
/// for) or a waiting one (the covering cycle's completion). Implemented in
/// `shell.rs`.
pub(crate) trait Join<A> {
    /// What an accepted request of this kind gets.
    type Covered;

    /// Whether a repeat of this kind of request makes the thread remember
    /// the key (only requests that do not wait go through memos).
    const REMEMBERS: bool;

    /// Folds the request into `slot`: `Ok(None)` if the slot is dead (the
    /// request must go to a fresh slot); `Err` refuses it, recording nothing.
    fn join(slot: &Slot<A>) -> Result<Option<Self::Covered>, Refused>;

    /// For a request that creates a fresh slot: the completion the slot is
    /// born with (its cycle 1's), and what the request gets.
    fn fresh() -> (Option<Arc<Completion<A>>>, Self::Covered);
}

/// Why admission refused a request. Nothing was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The registry is closed.
    Closed,
    /// A waiting request from inside a cycle of the same key: it would wait
    /// for itself.
    OwnCycle,
}

/// What admission did with a request.
pub(crate) enum Admitted<'a, K, C, A> {
    /// The request joined a live slot.
    Joined(C),
    /// The key is idle: the request is to create its slot, and whoever
    /// starts that slot's runner inserts it (or drops it: nothing recorded).
    Vacant(Vacant<'a, K, C, A>),
}

/// An idle key's fresh slot, not yet in the map, with the shard's write
/// lock held — so `close` cannot return before the runner started for it
/// is visible to the drain (INV-5), and no other request can create a slot
/// for the key meanwhile. Dropped without [`insert`](Self::insert), it
/// records nothing.
pub(crate) struct Vacant<'a, K, C, A> {
    map: RwLockWriteGuard<'a, Tables<K, A>>,
    active: &'a StatCounter,
    delays: &'a Delays,
    hash: u64,
    key: K,
    slot: Arc<Slot<A>>,
    covered: C,
}

impl<'a, K, C, A> Vacant<'a, K, C, A> {
    pub(crate) fn key(&self) -> &K {
        &self.key
    }

    pub(crate) fn slot(&self) -> &Arc<Slot<A>> {
        &self.slot
    }

    pub(crate) fn hash(&self) -> u64 {
        self.hash
    }

    /// Puts the slot in the map (replacing a dead slot of the key whose
    /// runner has not removed it yet) and releases the lock: the request is
    /// accepted.
    pub(crate) fn insert(self) -> C
    where
        K: Eq,
    {
        let Vacant {
            mut map,
            active,
            delays,
            hash,
            key,
            slot,
            covered,
        } = self;
        // The fresh slot's first cycle covers the key's delayed request.
        let covered_delayed = map.cover_delayed(hash, &key, delays);
        // Counted while we still hold the write lock, which the new runner's
        // `reclaim` needs: so the count never goes below this slot's share.
        // ORDERING: Relaxed, observation only (StatCounter).
        active.fetch_add(1, Relaxed);
        match map.entry(hash, |e| e.key == key, |e| e.hash) {
            TableEntry::Occupied(mut dead) => dead.get_mut().slot = slot,
            TableEntry::Vacant(absent) => {
                absent.insert(Entry { hash, key, slot });
            }
        }
        drop(map);
        drop_contained(covered_delayed, "a key");
        covered
    }
}

/// What a record falling due needs ([`Registry::due`]).
enum Due<'a, K, A> {
    /// A fresh slot, to start.
    Fresh(Vacant<'a, K, (), A>),
    /// Nothing more: it was covered, or requested its live slot. The lock
    /// and the record, to drop outside it.
    Done(RwLockWriteGuard<'a, Tables<K, A>>, Delayed<K, A>),
}

impl<K, S, A> Registry<K, S, A>
where
    K: Hash + Eq + Send + 'static,
    S: BuildHasher,
    A: Send + 'static,
{
    /// Admits a request for `key` that does not wait, of kind `J`.
    ///
    /// If the key is active, the request is folded into its slot — found
    /// through this thread's memo, or else in the map. Otherwise the answer
    /// is a [`Vacant`] fresh slot, under the shard's write lock.
    pub(crate) fn admit_plain<J: Join<A, Covered = ()>>(
        &self,
        key: K,
    ) -> Result<Admitted<'_, K, (), A>, Refused> {
        if memo::holds_memo_in(self.id) {
            if let Some(decided) = self.admit_by_memo(&key) {
                return decided;
            }
        }
        self.admit_by_map::<J>(key)
    }

    /// Admits a request for `key` of kind `J` through the map alone (a
    /// waiting request: memos carry no completions).
    pub(crate) fn admit<J: Join<A>>(
        &self,
        key: K,
    ) -> Result<Admitted<'_, K, J::Covered, A>, Refused> {
        self.admit_by_map::<J>(key)
    }

    /// The memo path: if this thread's memo holds `key` and its slot is
    /// live, folds the request into it through this thread's mark, writing
    /// nothing another thread writes. `None`: the memo does not decide (it
    /// holds another key, is busy, or its slot is dead — then it is
    /// forgotten), and the request goes to the map.
    fn admit_by_memo(&self, key: &K) -> Option<Result<Admitted<'_, K, (), A>, Refused>> {
        self.memos.with(|value| {
            let memo = value.and_then(|v| self.memo_of(v))?;
            let hit = memo.hit.as_ref().filter(|hit| hit.key == *key)?;
            if self.is_closed() {
                return Some(Err(Refused::Closed));
            }
            match hit.slot.request_marked(&hit.mark) {
                MarkedRequest::Covered => {
                    memo.count();
                    self.coalesced_event(key);
                    Some(Ok(Admitted::Joined(())))
                }
                MarkedRequest::SlotDead => {
                    // The runner went idle since: the slot may have been
                    // replaced in the map.
                    memo.forget();
                    memo::set_memo_holder(0);
                    None
                }
            }
        })
    }

    /// The map paths of admission. Not inlined: the memo path stays small
    /// (no frame for the map paths' locals).
    #[inline(never)]
    fn admit_by_map<J: Join<A>>(&self, key: K) -> Result<Admitted<'_, K, J::Covered, A>, Refused> {
        let hash = self.hash(&key);
        let shard = self.shard(hash);
        // A key requested twice in a row by this thread is worth remembering.
        let repeated = J::REMEMBERS && memo::repeats_last_request(self.id, hash);
        // Fast path: the key is active and its slot live. One read lock, one RMW.
        let joined = {
            let map = shard.read();
            if self.is_closed() {
                return Err(Refused::Closed);
            }
            match map.find(hash, |e| e.key == key) {
                Some(Entry { slot, .. }) => {
                    J::join(slot)?.map(|covered| (covered, repeated.then(|| Arc::clone(slot))))
                }
                None => None,
            }
        };
        if let Some((covered, remember)) = joined {
            self.coalesced_event(&key);
            if let Some(slot) = remember {
                self.remember(key, slot);
            }
            return Ok(coalesced(shard, covered));
        }
        // Slow path: no slot, or a dead one. Under the write lock nobody else
        // can create or remove this key's slot.
        let map = shard.write();
        if self.is_closed() {
            return Err(Refused::Closed);
        }
        // Someone may have created a fresh slot since we looked.
        if let Some(e) = map.find(hash, |e| e.key == key) {
            if let Some(covered) = J::join(&e.slot)? {
                self.coalesced_event(&key);
                return Ok(coalesced(shard, covered));
            }
        }
        // The key is idle (no slot, or a dead slot its runner has not removed
        // yet): its fresh slot, for the caller to start and insert.
        let (completion, covered) = J::fresh();
        Ok(Admitted::Vacant(
            self.vacant(map, hash, key, completion, covered),
        ))
    }

    /// A fresh slot for `key`, under its shard's write lock `map`.
    fn vacant<'a, C>(
        &'a self,
        map: RwLockWriteGuard<'a, Tables<K, A>>,
        hash: u64,
        key: K,
        completion: Option<Arc<Completion<A>>>,
        covered: C,
    ) -> Vacant<'a, K, C, A> {
        Vacant {
            map,
            active: &self.active,
            delays: &self.delays,
            hash,
            key,
            slot: Arc::new(Slot::fresh(completion, self.ticks.as_ref())),
            covered,
        }
    }

    /// Admits a delayed request for `key`, due at `deadline` (`None`: too
    /// far to name), as `delay.rs` describes: folded into a cycle the key
    /// already owes; or recorded, the earliest deadline winning, with
    /// `start_timer` called (under the shard lock, so shutdown's barrier
    /// orders it) if the coalescer's timer is not running.
    pub(crate) fn admit_after(
        &self,
        key: K,
        deadline: Option<Instant>,
        start_timer: impl FnOnce() -> bool,
    ) -> Result<Admission, Refused> {
        let hash = self.hash(&key);
        let shard = self.shard(hash);
        let mut map = shard.write();
        if self.is_closed() {
            return Err(Refused::Closed);
        }
        // Accepted, whichever way it goes below.
        self.key_event(&key, "delayed");
        let since = match map.find(hash, |e| e.key == key) {
            Some(entry) => {
                let seen = entry.slot.touch();
                if state::is_live(seen) && state::is_pending(seen) {
                    // A cycle is owed and begins after this call: it covers
                    // the delayed request, which needs no record.
                    return Ok(Admission::Coalesced);
                }
                state::is_live(seen).then(|| (Arc::clone(&entry.slot), state::cycles_begun(seen)))
            }
            None => None,
        };
        let admission = if since.is_some() {
            Admission::Coalesced
        } else {
            Admission::Scheduled
        };
        let tables = &mut *map;
        let stale = match tables.delayed.find_mut(hash, |d| d.key == key) {
            Some(record) if record.owed() => {
                // One record per key: the earliest deadline wins.
                if let Some(earlier) = deadline.filter(|d| record.deadline.map_or(true, |r| *d < r))
                {
                    if let Some(later) = record.deadline {
                        self.delays.cancel(later, record.number);
                    }
                    record.deadline = Some(earlier);
                    self.schedule(earlier, record.number, hash, start_timer);
                }
                return Ok(admission);
            }
            Some(_) => tables.cover_delayed(hash, &key, &self.delays),
            None => None,
        };
        let number = self.delays.number();
        tables.delayed.insert_unique(
            hash,
            Delayed {
                hash,
                key,
                deadline,
                number,
                since,
            },
            |d| d.hash,
        );
        if let Some(deadline) = deadline {
            self.schedule(deadline, number, hash, start_timer);
        }
        drop(map);
        drop_contained(stale, "a key");
        Ok(admission)
    }

    /// Queues record `number` for `deadline`, starting the timer with
    /// `start_timer` if it is not running (if it cannot start, the next
    /// record tries again).
    fn schedule(
        &self,
        deadline: Instant,
        number: u64,
        hash: u64,
        start_timer: impl FnOnce() -> bool,
    ) {
        if self.delays.schedule(deadline, number, hash) && !start_timer() {
            self.delays.not_timing();
        }
    }

    /// Record `number` of a key with hash `hash` has fallen due (the timer
    /// took its queue entry): it becomes an immediate request, unless a cycle
    /// covered it meanwhile. A fresh slot to start if the key needs one.
    pub(crate) fn fire(&self, hash: u64, number: u64) -> Option<Vacant<'_, K, (), A>> {
        let mut map = self.shard(hash).write();
        let (record, _) = map
            .delayed
            .find_entry(hash, |d| d.number == number)
            .ok()?
            .remove();
        if let Some(target) = shrink_target(map.delayed.len(), map.delayed.capacity()) {
            map.delayed.shrink_to(target, |d| d.hash);
        }
        match self.due(map, record) {
            Due::Fresh(vacant) => Some(vacant),
            Due::Done(map, record) => {
                drop(map);
                drop_contained(Some(record), "a key");
                None
            }
        }
    }

    /// A record taken out of `map` becomes an immediate request: on its
    /// slot, unless a cycle began since; else on a fresh slot. Admission's
    /// `closed` flag does not apply: the record was accepted.
    fn due<'a>(
        &'a self,
        map: RwLockWriteGuard<'a, Tables<K, A>>,
        record: Delayed<K, A>,
    ) -> Due<'a, K, A> {
        if let Some((slot, since)) = &record.since {
            match slot.request_unless_begun(*since) {
                DelayedRequest::Covered | DelayedRequest::Requested => {
                    return Due::Done(map, record)
                }
                DelayedRequest::Dead => {}
            }
        }
        // The key's slot died (or it had none) with no cycle since the
        // delayed request: it needs a fresh one. (A live slot created since
        // would have covered and removed the record; if one is there anyway,
        // the request joins it.)
        if let Some(entry) = map.find(record.hash, |e| e.key == record.key) {
            if entry.slot.request() != state::Requested::Dead {
                return Due::Done(map, record);
            }
        }
        let Delayed { hash, key, .. } = record;
        Due::Fresh(self.vacant(map, hash, key, None, ()))
    }

    /// Closes admission. When this returns, every later `admit` fails with
    /// `Closed`, and every earlier successful `admit` has finished: its
    /// request is in a live slot and any runner it started was registered by
    /// `start` (INV-5). Every delayed request not yet covered has become an
    /// immediate one inside the barrier: on its live slot, or on a fresh
    /// slot handed to `start` (under the shard lock, as admission does).
    pub(crate) fn close(&self, mut start: impl FnMut(Vacant<'_, K, (), A>)) {
        // ORDERING: Release pairs with the Acquire load in `is_closed`. The
        // flag alone is not enough — a request may have read `false` just
        // before this store — so the barrier below waits out every admission
        // holding a shard lock; any lock taken after it sees the flag (and
        // any delayed request recorded before it is found here).
        self.closed.store(true, Ordering::Release);
        let mut spent = Vec::new();
        for shard in self.shards.iter() {
            let mut map = shard.write();
            let records: Vec<_> = map.delayed.drain().collect();
            for record in records {
                map = match self.due(map, record) {
                    Due::Fresh(vacant) => {
                        start(vacant);
                        shard.write()
                    }
                    Due::Done(map, record) => {
                        spent.push(record);
                        map
                    }
                };
            }
            drop(map);
        }
        self.delays.clear();
        // The keys' `Drop`, outside every lock.
        drop_contained(Some(spent), "a key");
    }

    /// Makes `slot` (live, `key`'s) this thread's memo for this registry.
    fn remember(&self, key: K, slot: Arc<Slot<A>>) {
        self.memos.with(|value| {
            if let Some(memo) = value.and_then(|v| self.memo_of(v)) {
                memo.remember(key, slot);
                memo::set_memo_holder(self.id);
            }
        });
    }

    /// This thread's memo for this registry, in its `PerThread` value.
    #[inline]
    fn memo_of<'v>(
        &self,
        value: &'v mut Option<crate::sync::PerThreadValue>,
    ) -> Option<&'v mut Memo<K, A>> {
        Memo::of(value, |counter| self.memo_counts().push(counter))
    }
}

impl<K, S, A> Registry<K, S, A>
where
    K: Hash + Eq,
    S: BuildHasher,
{
    /// A registry with `shards` shards, rounded up to a power of two and
    /// clamped to `1..=MAX_SHARDS` (so no request for shards can overflow).
    pub(crate) fn new(shards: usize, hasher: S) -> Self {
        let n = shards.clamp(1, MAX_SHARDS).next_power_of_two();
        Registry {
            shards: (0..n)
                .map(|_| {
                    Padded(ShardMap {
                        map: RwLock::new(Tables {
                            active: HashTable::new(),
                            delayed: HashTable::new(),
                        }),
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
            ticks: None,
            delays: Delays::default(),
            names: Names::default(),
        }
    }

    /// The same registry, its events naming the coalescer and its keys as
    /// `names` does.
    pub(crate) fn naming(mut self, names: Names<K>) -> Self {
        self.names = names;
        self
    }

    /// The same registry, its slots stamping their requests with `ticks`
    /// (a debounce).
    pub(crate) fn stamping(mut self, ticks: Option<Ticks>) -> Self {
        self.ticks = ticks;
        self
    }

    /// The key's hash, computed once per request.
    fn hash(&self, key: &K) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The shard of a key with hash `hash`. The table uses the hash's low
    /// bits (bucket) and top seven (tag); the shard takes bits from the
    /// middle, so that within a shard the buckets still spread.
    fn shard(&self, hash: u64) -> &Shard<K, A> {
        &self.shards[self.shard_index(hash)]
    }

    fn shard_index(&self, hash: u64) -> usize {
        // Truncation intended: only these bits pick the shard.
        (hash >> 32) as usize & self.mask
    }

    /// Called by a runner right after its slot went dead: removes the slot
    /// from the map, unless a requester already replaced it with a fresh one.
    ///
    /// The slot is found by the hash the runner kept and by identity: no
    /// user code runs here except the key's `Drop` for the map's copy, which
    /// is contained, so a runner never dies of its key.
    pub(crate) fn reclaim(&self, hash: u64, slot: &Arc<Slot<A>>) {
        let mut map = self.shard(hash).write();
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
        if let Some(entry) = &removed {
            self.key_event(&entry.key, "reclaimed");
        }
        // The key's `Drop`, outside the lock.
        drop_contained(removed, "a key");
    }

    /// The keys whose slot is live (a cycle running, pending or being paced).
    pub(crate) fn live_keys(&self) -> Vec<K>
    where
        K: Clone,
    {
        self.shards
            .iter()
            .flat_map(|shard| {
                shard
                    .read()
                    .iter()
                    .filter(|e| e.slot.is_live())
                    .map(|e| e.key.clone())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Slots still in the map, dead or alive (for tests of reclamation).
    #[cfg(test)]
    pub(crate) fn slots(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
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

impl<K, S, A> Registry<K, S, A> {
    pub(crate) fn is_closed(&self) -> bool {
        // ORDERING: Acquire pairs with the Release store in `close`: a
        // request that happens-after `close` sees the flag. On the map paths
        // it is read under a shard lock, whose hand-off with `close`'s barrier
        // guarantees that a request that missed the flag finished before
        // `close` returned (INV-5). On the memo path it is read before the
        // mark is set; a request that misses it there can only fold into a
        // slot whose runner is still live, which the drain waits for. A
        // runner reads it as a retry begins (its last chance, in
        // `runner::run`); a stale `false` there only allows one more retry,
        // whose wait the drain cuts short.
        self.closed.load(Ordering::Acquire)
    }

    /// The `debug` event of a request folded into an active runner: a
    /// callsite of its own with a static message, the coalesced path's
    /// (its check for a subscriber is the only work it adds there).
    #[inline]
    fn coalesced_event(&self, key: &K) {
        tracing::debug!(
            target: "coalescer",
            coalescer = self.names.name(),
            key = ?self.names.key(key),
            "coalesced"
        );
    }

    /// A `debug` event about `key` off the coalesced path (`what`:
    /// `started`, `delayed`, `reclaimed`), with the coalescer's name.
    #[inline]
    pub(crate) fn key_event(&self, key: &K, what: &'static str) {
        tracing::debug!(
            target: "coalescer",
            coalescer = self.names.name(),
            key = ?self.names.key(key),
            "{what}"
        );
    }

    /// Sets the closed flag without the barrier of [`close`](Self::close):
    /// every admission from now on is rejected, with no promise about the
    /// ones in flight. For a coalescer that can no longer run anything (its
    /// runtime has shut down); safe to call while holding a shard lock.
    pub(crate) fn close_without_barrier(&self) {
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

    /// The list of memo counters, locked (poison ignored, as the `sync`
    /// locks do).
    fn memo_counts(&self) -> std::sync::MutexGuard<'_, Vec<MemoCounter>> {
        self.memo_counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The timer queue of the delayed requests.
    pub(crate) fn delays(&self) -> &Delays {
        &self.delays
    }

    /// Delayed requests recorded whose deadline has not come (see
    /// `Stats::scheduled`).
    pub(crate) fn scheduled(&self) -> usize {
        self.shards.iter().map(|s| s.read().delayed.len()).sum()
    }

    /// Keys with a running or pending cycle.
    pub(crate) fn active_keys(&self) -> usize {
        // ORDERING: Relaxed, observation only (StatCounter).
        self.active.load(std::sync::atomic::Ordering::Relaxed) as usize
    }
}

/// Counts a request folded into a live slot through the map, in its shard.
fn coalesced<'a, K, C, A>(shard: &Shard<K, A>, covered: C) -> Admitted<'a, K, C, A> {
    Counters::bump(&shard.coalesced);
    Admitted::Joined(covered)
}

// Not under loom: its primitives work only inside a loom model (the loom
// models of admission and reclamation are in `loom_models.rs`).
#[cfg(all(test, not(loom)))]
mod tests {
    use super::{shrink_target, Admitted};
    use crate::output::Answer;
    use crate::shell::Plain;
    use crate::slot::{AfterCycle, Slot};
    use crate::sync::Arc;
    use std::collections::hash_map::RandomState;

    /// The registry of a coalescer whose cycles return `()`.
    type Registry<K> = super::Registry<K, RandomState, Answer<()>>;

    /// Creates key 0's slot through admission: its slot and hash.
    fn create(map: &Registry<u8>) -> (Arc<Slot<Answer<()>>>, u64) {
        let Ok(Admitted::Vacant(vacant)) = map.admit::<Plain>(0) else {
            panic!("key 0 is idle: its request creates the slot");
        };
        let created = (Arc::clone(vacant.slot()), vacant.hash());
        vacant.insert();
        created
    }

    /// A runner that went idle removes its own slot, found by identity — not
    /// the key's next slot, which a request created in its place before the
    /// old runner got to reclaim. Removing that one would let a later request
    /// start a second live runner beside it.
    #[test]
    fn reclaiming_a_dead_slot_leaves_its_replacement() {
        let map = Registry::<u8>::new(1, RandomState::new());
        let (old, hash) = create(&map);
        let begun = old.begin();
        assert_eq!(old.go_idle(&begun), AfterCycle::Idle);
        // The old runner has not reclaimed yet: a request finds the dead slot
        // and replaces it.
        let (new, _) = create(&map);
        map.reclaim(hash, &old);
        assert_eq!(map.slots(), 1, "the replacement was removed");
        assert!(
            matches!(map.admit::<Plain>(0), Ok(Admitted::Joined(()))),
            "a request must join the live replacement"
        );
        assert!(new.is_live());
    }

    /// Keys spread over every shard. A hash or shard choice that sent every
    /// key to one shard would still be correct, but every request of every
    /// key would then take (and write) the same lock word: keys would
    /// contend with each other, which sharding exists to prevent.
    #[test]
    fn keys_spread_over_every_shard() {
        const SHARDS: usize = 16;
        const KEYS: u64 = 4096;
        let registry = Registry::<u64>::new(SHARDS, RandomState::new());
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
