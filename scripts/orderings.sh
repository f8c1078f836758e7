#!/usr/bin/env bash
# Weakens each memory ordering of the core one step at a time and records
# whether the loom suite catches it: first a screened run (preemption bound
# $SCREEN; any failure it finds is a real one), then, only if that passes,
# the exhaustive suite CI runs. Prints a markdown table for
# docs/verification.md. Restores every file it touches.
#
# Usage: scripts/orderings.sh [ID...]     (default: every weakening below)
set -euo pipefail
cd "$(dirname "$0")/.."
SCREEN=${SCREEN:-3}
export RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom
log=target/orderings
mkdir -p "$log"

# shellcheck source=scripts/edit-lib.sh
. scripts/edit-lib.sh
require_clean_impl

# id | file | exact text | weakened text
weakenings=$(cat <<'LIST'
request-acqrel-acquire|impl/src/slot.rs|fetch_or(state::PENDING, Ordering::AcqRel)|fetch_or(state::PENDING, Ordering::Acquire)
request-acqrel-release|impl/src/slot.rs|fetch_or(state::PENDING, Ordering::AcqRel)|fetch_or(state::PENDING, Ordering::Release)
begin-acquire-relaxed|impl/src/slot.rs|fetch_add(state::BEGIN_DELTA, Ordering::Acquire)|fetch_add(state::BEGIN_DELTA, Ordering::Relaxed)
die-release-relaxed|impl/src/slot.rs|compare_exchange(from, dead, Ordering::Release, Ordering::Relaxed)|compare_exchange(from, dead, Ordering::Relaxed, Ordering::Relaxed)
abandon-release-relaxed|impl/src/slot.rs|fetch_and(!state::WATCHED, Ordering::Release)|fetch_and(!state::WATCHED, Ordering::Relaxed)
mark-acqrel-release|impl/src/slot.rs|mark.0 .0.swap(true, Ordering::AcqRel)|mark.0 .0.swap(true, Ordering::Release)
mark-acqrel-acquire|impl/src/slot.rs|mark.0 .0.swap(true, Ordering::AcqRel)|mark.0 .0.swap(true, Ordering::Acquire)
consume-acqrel-acquire|impl/src/slot.rs|mark.0 .0.swap(false, Ordering::AcqRel)|mark.0 .0.swap(false, Ordering::Acquire)
consume-acqrel-release|impl/src/slot.rs|mark.0 .0.swap(false, Ordering::AcqRel)|mark.0 .0.swap(false, Ordering::Release)
is-closed-acquire-relaxed|impl/src/registry.rs|self.closed.load(Ordering::Acquire)|self.closed.load(Ordering::Relaxed)
close-release-relaxed|impl/src/registry.rs|// holding a shard lock; any lock taken after it sees the flag.\n        self.closed.store(true, Ordering::Release);|// holding a shard lock; any lock taken after it sees the flag.\n        self.closed.store(true, Ordering::Relaxed);
mark-closed-release-relaxed|impl/src/registry.rs|// ORDERING: Release pairs with the Acquire load in `is_closed`.\n        self.closed.store(true, Ordering::Release);|// ORDERING: Release pairs with the Acquire load in `is_closed`.\n        self.closed.store(true, Ordering::Relaxed);
finished-release-relaxed|impl/src/driver/threads.rs|self.0.store(true, Ordering::Release)|self.0.store(true, Ordering::Relaxed)
reap-acquire-relaxed|impl/src/driver/threads.rs|if entries[i].finished.load(Ordering::Acquire)|if entries[i].finished.load(Ordering::Relaxed)
join-partition-acquire-relaxed|impl/src/driver/threads.rs|e.finished.load(Ordering::Acquire)|e.finished.load(Ordering::Relaxed)
aborted-release-relaxed|impl/src/driver/loom_tasks.rs|self.aborted.store(true, Ordering::Release)|self.aborted.store(true, Ordering::Relaxed)
aborted-acquire-relaxed|impl/src/driver/loom_tasks.rs|self.aborted.load(Ordering::Acquire)|self.aborted.load(Ordering::Relaxed)
retired-release-relaxed|impl/src/driver/threads.rs|retired.store(true, Ordering::Release)|retired.store(true, Ordering::Relaxed)
touch-acqrel-acquire|impl/src/slot.rs|self.state.fetch_or(0, Ordering::AcqRel)|self.state.fetch_or(0, Ordering::Acquire)
unless-begun-acqrel-acquire|impl/src/slot.rs|.fetch_update(Ordering::AcqRel, Ordering::Acquire,|.fetch_update(Ordering::Acquire, Ordering::Acquire,
LIST
)

# The loom suite: the slot models inside the crate, then the public-API
# models in loom-tests (cargo's --lib would apply to both packages at once).
suite() {
  cargo test --release -p coalescer --lib "$@" && cargo test --release -p coalescer-loom-tests "$@"
}


# Every weakening must still name text that occurs exactly once: an entry
# that the code has moved away from would otherwise fail midway, or not at all.
stale=0
while IFS='|' read -r id file old new; do
  if ! apply "$file" "$old" "$old" 2>"$log/preflight"; then
    echo "stale entry $id: $(cat "$log/preflight")" >&2
    stale=1
  fi
done <<<"$weakenings"
[ "$stale" = 0 ] || exit 2

echo "| weakening | screened (bound $SCREEN) | exhaustive | first failure |"
echo "|---|---|---|---|"
while IFS='|' read -r id file old new; do
  if [ $# -gt 0 ] && ! printf '%s\n' "$@" | grep -qx "$id"; then continue; fi
  git checkout -q -- impl/src
  apply "$file" "$old" "$new"
  suite --no-run >"$log/$id.build" 2>&1 \
    || { echo "| $id | build failed | | see $log/$id.build |"; continue; }
  if ! COALESCER_LOOM_SCREEN=$SCREEN suite -- --nocapture >"$log/$id.screen" 2>&1; then
    echo "| $id | **caught** | not needed | $(first_failure "$log/$id.screen") |"
  elif ! suite -- --nocapture >"$log/$id.full" 2>&1; then
    echo "| $id | passed | **caught** | $(first_failure "$log/$id.full") |"
  else
    echo "| $id | passed | passed | not caught |"
  fi
done <<<"$weakenings"
