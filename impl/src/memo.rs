//! Each thread's memo: the last key it requested twice in a row, with that
//! key's slot and a mark of its own registered there (`slot.rs`), so that
//! its next requests for that key skip the map. And the per-thread hints
//! that tell a request, without looking at any registry, whether its memo
//! may hold its key.
//!
//! A memo is only a hint: a request that finds the memoized slot dead
//! forgets it and goes to the map, exactly as a request that finds a dead
//! slot in the map does.

use std::sync::atomic::Ordering::Relaxed;

use crate::padded::Padded;
use crate::panic::drop_contained;
use crate::slot::{Mark, Slot};
use crate::sync::{thread_local_const, Arc, PerThreadValue, StatCounter};

/// What one thread remembers of its own requests to one registry.
pub(crate) struct Memo<K, A> {
    /// Requests this thread folded into a live slot through this memo (see
    /// `Stats`). Written by this thread only; read by the registry's
    /// `coalesced_count`.
    coalesced: Arc<Padded<StatCounter>>,
    /// The last key this thread requested twice in a row through the map and
    /// found live, with its slot and this thread's mark registered there. The
    /// slot may have died since: a request through the memo finds out.
    pub(crate) hit: Option<Hit<K, A>>,
    /// A mark no slot has registered, kept for the next [`Hit`] so that a
    /// memo moving between keys allocates no new one.
    spare: Option<Arc<Mark>>,
}

/// A memo's key, slot and mark.
pub(crate) struct Hit<K, A> {
    pub(crate) key: K,
    pub(crate) slot: Arc<Slot<A>>,
    pub(crate) mark: Arc<Mark>,
}

/// A memo's request counter, as the registry keeps every one of them.
pub(crate) type MemoCounter = Arc<Padded<StatCounter>>;

impl<K: Send + 'static, A: Send + 'static> Memo<K, A> {
    /// This thread's memo in `value` (a `PerThread` value that holds
    /// nothing but a `Memo<K>`), created on first use with a new counter
    /// that `register` is given to keep.
    #[inline]
    pub(crate) fn of(
        value: &mut Option<PerThreadValue>,
        register: impl FnOnce(MemoCounter),
    ) -> Option<&mut Self> {
        value
            .get_or_insert_with(|| Self::create(register))
            .downcast_mut()
    }

    #[cold]
    fn create(register: impl FnOnce(MemoCounter)) -> PerThreadValue {
        let coalesced = Arc::new(Padded(StatCounter::new(0)));
        register(Arc::clone(&coalesced));
        Box::new(Memo::<K, A> {
            coalesced,
            hit: None,
            spare: None,
        })
    }

    /// Makes `slot` (live, `key`'s) the memo's hit, with this thread's mark
    /// registered there; the previous hit, if any, is let go first.
    pub(crate) fn remember(&mut self, key: K, slot: Arc<Slot<A>>) {
        self.forget();
        let mark = self.spare.take().unwrap_or_else(|| Arc::new(Mark::new()));
        slot.watch(Arc::clone(&mark));
        self.hit = Some(Hit { key, slot, mark });
    }

    /// Lets the hit go: its mark is unregistered (any request marked there
    /// and not yet consumed is made again as a plain request) and kept as
    /// the spare, and the key is dropped (a panic in its `Drop` contained).
    pub(crate) fn forget(&mut self) {
        if let Some(Hit { key, slot, mark }) = self.hit.take() {
            slot.unwatch(&mark);
            drop(slot);
            // Unique once unregistered: the slot held the only other `Arc`.
            if Arc::strong_count(&mark) == 1 {
                self.spare = Some(mark);
            }
            drop_contained(Some(key), "a key");
        }
    }

    /// Counts one request folded into a live slot through this memo.
    pub(crate) fn count(&self) {
        // ORDERING: Relaxed, observation only (StatCounter). A load and a
        // store rather than an RMW: this thread is the counter's only writer
        // (a thread's value passes to a later thread only after it exited),
        // so no count is lost, and a plain store costs no locked instruction.
        let c = &self.coalesced;
        c.store(c.load(Relaxed) + 1, Relaxed);
    }
}

/// What a thread knows, without looking at any registry, about its own
/// requests: the registry and key hash of its last request that went
/// through a map, and the registry whose memo holds a key for it (0: none).
/// Only hints: a wrong one costs a detour through the map, never
/// correctness. Registries are numbered from 1 and never reused.
#[derive(Debug, Clone, Copy)]
struct Hints {
    last: (u64, u64),
    holder: u64,
}

thread_local_const! {
    static HINTS: std::cell::Cell<Hints> =
        std::cell::Cell::new(Hints { last: (0, 0), holder: 0 });
}

/// Records a request of this thread through `registry`'s map for a key with
/// hash `hash`; whether its last one was for the same registry and hash.
#[inline]
pub(crate) fn repeats_last_request(registry: u64, hash: u64) -> bool {
    HINTS.with(|h| {
        let mut hints = h.get();
        let repeated = hints.last == (registry, hash);
        hints.last = (registry, hash);
        h.set(hints);
        repeated
    })
}

/// Whether this thread's memo for `registry` may hold a key.
#[inline]
pub(crate) fn holds_memo_in(registry: u64) -> bool {
    HINTS.with(|h| h.get().holder == registry)
}

/// Records which registry's memo for this thread holds a key (0: none).
#[inline]
pub(crate) fn set_memo_holder(registry: u64) {
    HINTS.with(|h| {
        let mut hints = h.get();
        hints.holder = registry;
        h.set(hints);
    });
}
