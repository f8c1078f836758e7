#!/usr/bin/env bash
# Hand-written protocol mutations, the ones cargo-mutants' operators never
# produce: each is applied alone to impl/src, the suites are run, and the
# script fails unless every mutation is caught. Prints a markdown table for
# docs/verification.md ("Semantic mutants").
#
# Suites, in order, stopping at the first that fails:
#   slot  — the slot models inside the crate, exhaustive (loom build);
#   std   — the `coalescer` package's ordinary tests (std build);
#   loom  — the public-API loom models, screened at preemption bound $SCREEN
#           (a failure found there is real; a pass is not a proof).
# A suite that hangs past $TIMEOUT seconds counts as caught (a deadlock:
# a lost wakeup or a stranded waiter).
#
# Usage: scripts/semantic-mutants.sh [mutation-id ...]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
SCREEN=${SCREEN:-3}
TIMEOUT=${TIMEOUT:-300}
log=target/semantic-mutants
mkdir -p "$log"

# shellcheck source=scripts/edit-lib.sh
. scripts/edit-lib.sh
require_clean_impl

# id|file|text|replacement|what it breaks  (\n in text and replacement)
mutations=$(cat <<'LIST'
consume-first-set-only|impl/src/slot.rs|mark.0 .0.swap(false, Ordering::AcqRel) \| any|any \|\| mark.0 .0.swap(false, Ordering::AcqRel)|a cycle consumes marks only up to the first set one, as iter().any would: the others make a spurious cycle (INV-7)
begin-skips-marks|impl/src/slot.rs|        let after = state::begin(prev);\n        consume(&next.marks);|        let after = state::begin(prev);|begin leaves the marks set: going idle finds requests the cycle already covered (INV-7)
d1-two-step-die|impl/src/slot.rs|            if self\n                .state\n                .compare_exchange(from, dead, Ordering::Release, Ordering::Relaxed)\n                .is_ok()\n            {|            if self.state.load(Ordering::Relaxed) == from && {\n                self.state.store(dead, Ordering::Release);\n                true\n            } {|D1: going idle reads "nothing pending", then stores "dead" in a second step (INV-2)
marked-ignores-dying|impl/src/slot.rs|        if state::accepts_marks(seen) {|        if state::is_live(seen) {|a marked request counts on a dying runner, which has already checked the marks (INV-2)
go-idle-skips-marks|impl/src/slot.rs|        if !consume(&next.marks) {\n            let (from, dead) = state::die(dying);|        if true {\n            let (from, dead) = state::die(dying);|going idle kills the slot without checking the marks (INV-2)
take-back-outside-lock|impl/src/slot.rs|        let next = self.next.lock();\n        let covered = self.reassert(&next, mark);\n        drop(next);|        drop(self.next.lock());\n        let covered = self.reassert(&Next { completion: None, marks: Vec::new() }, mark);|the take-back and the plain request run outside the slot's lock: an accepted request in the mark is lost (INV-2, INV-5)
unwatch-drops-mark|impl/src/slot.rs|        let _ = self.reassert(&next, mark);\n        next.marks.retain|        next.marks.retain|a memo that moves on drops a request still marked (INV-2)
reclaim-by-hash-alone|impl/src/registry.rs|map.find_entry(hash, \|e\| Arc::ptr_eq(&e.slot, slot))|map.find_entry(hash, \|_\| true)|reclamation removes whatever slot has the hash: a dead slot's live replacement, or another key's (INV-1, INV-6)
close-without-barrier|impl/src/registry.rs|        for shard in self.shards.iter() {\n            drop(shard.write());\n        }|        let _ = &self.shards;|close returns while an admission that missed the flag is still registering (INV-5)
launch-ignored|impl/src/runner.rs|    if launch.settle() {\n        Ok(())\n    } else {\n        Err(StartError::Gone)\n    }|    let _ = launch.settle();\n    Ok(())|a runner a shut-down runtime dropped unrun is taken as started: its request is accepted and never run
guard-abandons-inside-spawn|impl/src/runner.rs|        if !self.armed \|\| !(self.polled \|\| self.launch.dropped_after_launch()) {|        if !self.armed {|a runner dropped unrun inside a refused spawn abandons its slot: it takes the shard lock its spawner holds (a deadlock)
waiter-outside-lock|impl/src/slot.rs|    pub(crate) fn request_and_register(&self) -> Option<Arc<Completion<A>>> {\n        let mut next = self.next.lock();\n        match self.request() {|    pub(crate) fn request_and_register(&self) -> Option<Arc<Completion<A>>> {\n        let requested = self.request();\n        let mut next = self.next.lock();\n        match requested {|a waiter registers for "the next cycle" apart from its request: it may wait for the wrong cycle (INV-2)
retry-without-own-request|impl/src/runner.rs|                    let requested = self.slot.request();|                    let requested = Requested::Coalesced { covered_by: 0 };|a retried failure does not request its own key: the retry's begin runs with nothing pending (INV-9)
retry-answers-at-once|impl/src/runner.rs|                    self.owed.extend(waiting);|                    self.tell(waiting, Err(RunError::Panicked));|a retried failure answers its waiters at once instead of with the retry's answer (INV-9)
success-keeps-failure-count|impl/src/runner.rs|            (Ok(_), _) => self.failures = 0,|            (Ok(_), _) => {}|a success does not reset the key's count of consecutive failures (INV-9)
limit-ignored|impl/src/limit.rs|                free: permits,|                free: usize::MAX / 2,|the limit hands out every permit asked for: more than n cycles at once (INV-11a)
fresh-ticket-at-first-run|impl/src/runner.rs|        .map(Limit::ticket);\n    let line|        .and(None::<Ticket>);\n    let line|a fresh key takes its ticket when its runner first runs, not in admission: keys are not served in the order they became due (INV-11b)
permit-held-across-waits|impl/src/runner.rs|        drop(permit);\n        this.current = None;|        let held = permit;\n        this.current = None;|the permit is kept until the runner loops back, through the pace and the retry delay: waits hold a permit (INV-11c)
pool-thread-per-runner|impl/src/driver/threads.rs|        if state.running >= self.threads {|        if false {|the pool starts a thread for every queued runner: more than n threads (INV-11e)
debounce-no-ceiling|impl/src/runner.rs|            let deadline = match self.max_wait {|            let deadline = match None::<Duration> {|max_wait is ignored: a burst that never pauses never runs (INV-12b)
debounce-retries|impl/src/runner.rs|            if this.runner.failures == 0 {\n                debounce.wait|            if true {\n                debounce.wait|a retry waits for a quiet period instead of beginning at its delay (INV-12c)
debounce-holds-permit|impl/src/runner.rs|        .filter(\|_\| shared.debounce.is_none())|        .filter(\|_\| true)|a fresh debounced key takes its ticket in admission and waits out its quiet period holding the permit (INV-12d)
requests-not-stamped|impl/src/slot.rs|            if state::is_live(prev) {\n                stamps.stamp(prev);|            if false {\n                stamps.stamp(prev);|requests through the map do not stamp their slot: the quiet period does not restart (INV-12a)
LIST
)

# The `|` inside a mutation's text is written `\|`: split on unescaped bars.
fields() { python3 -c 'import re,sys; print("\x1f".join(p.replace("\\|","|") for p in re.split(r"(?<!\\)\|", sys.argv[1])))' "$1"; }

stale=0
while IFS= read -r line; do
  IFS=$'\x1f' read -r id file old new _ <<<"$(fields "$line")"
  if ! apply "$file" "$old" "$old" 2>"$log/preflight"; then
    echo "stale mutation $id: $(cat "$log/preflight")" >&2
    stale=1
  fi
done <<<"$mutations"
[ "$stale" = 0 ] || exit 2

slot() { RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom timeout "$TIMEOUT" \
  cargo test --release -p coalescer --lib -- --nocapture; }
std() { timeout "$TIMEOUT" cargo test -p coalescer; }
loom() { RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom COALESCER_LOOM_SCREEN=$SCREEN \
  timeout "$TIMEOUT" cargo test --release -p coalescer-loom-tests -- --nocapture; }

missed=0
echo "| mutation | breaks | caught by | first failure |"
echo "|---|---|---|---|"
while IFS= read -r line; do
  IFS=$'\x1f' read -r id file old new why <<<"$(fields "$line")"
  if [ $# -gt 0 ] && ! printf '%s\n' "$@" | grep -qx "$id"; then continue; fi
  git checkout -q -- impl/src
  apply "$file" "$old" "$new"
  caught=""
  for suite in slot std loom; do
    rc=0
    "$suite" >"$log/$id.$suite" 2>&1 || rc=$?
    if [ "$rc" = 124 ]; then caught="$suite (hang past ${TIMEOUT} s)"; break; fi
    if [ "$rc" != 0 ]; then
      # cargo's own "error: test failed" is a catch; only a build error is not.
      if grep -qE "^error\[E[0-9]+\]|^error: could not compile" "$log/$id.$suite"; then
        caught="does not compile"; break
      fi
      caught="$suite"; break
    fi
  done
  if [ -z "$caught" ]; then
    missed=1
    echo "| $id | $why | **missed** | |"
  elif [ "$caught" = "does not compile" ]; then
    missed=1
    echo "| $id | $why | **stale: does not compile** | $(first_failure "$log/$id.$suite") |"
  else
    echo "| $id | $why | $caught | $(first_failure "$log/$id.${caught%% *}") |"
  fi
done <<<"$mutations"
exit "$missed"
