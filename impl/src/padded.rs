//! Values on cache lines of their own.

/// A value on cache lines of its own. Registry shards: a shard's lock word
/// is written by every request that reads the map (the read lock is an RMW),
/// so two shards sharing a line would make requests for unrelated keys
/// contend. Marks, memo counters and per-thread values: each is written by
/// one thread only, and must not share a line with another thread's.
/// 128 bytes: x86 prefetches lines in pairs.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}
