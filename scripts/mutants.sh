#!/usr/bin/env bash
# Mutation testing of the core (impl/src) with cargo-mutants, in three passes.
# Every mutant has to be caught by one of them; see docs/verification.md.
#
#   1. loom, screened: the loom suite under `--cfg loom`, every model capped
#      at preemption bound $SCREEN (COALESCER_LOOM_SCREEN). Seconds per
#      mutant; catches most of the core.
#   2. std: the mutants pass 1 missed, against the ordinary tests of the
#      `coalescer` package (tokio, stress with the history oracle, misuse,
#      memory, allocation, doc examples). Mutants in std-only code (the tokio
#      task set, the std clock wait) are only reachable here.
#   3. loom, exhaustive: whatever is still missed, against the full suite
#      without the screening bound (the suite CI runs).
#
# Usage: scripts/mutants.sh [extra cargo-mutants args, e.g. -f impl/src/state.rs]
# Needs cargo-mutants (`cargo install cargo-mutants --locked`). Output under
# target/mutants/: one mutants.out per pass; the last one holds the outcome
# of every mutant (each pass runs with --iterate over the previous one).
set -euo pipefail
cd "$(dirname "$0")/.."
SCREEN=${SCREEN:-3}
out=target/mutants
mkdir -p "$out"

pass() {
  local name=$1 previous=$2
  shift 2
  rm -rf "$out/$name"
  mkdir -p "$out/$name"
  local iterate=()
  if [ -n "$previous" ]; then
    # --iterate skips what the previous pass caught (or found unviable) and
    # keeps those outcomes in this pass's lists.
    cp -r "$out/$previous/mutants.out" "$out/$name/"
    iterate=(--iterate)
  fi
  printf '\n=== pass %s ===\n' "$name"
  local start=$SECONDS
  # cargo-mutants exits non-zero while any mutant is missed; later passes decide.
  cargo mutants --no-shuffle -o "$out/$name" "${iterate[@]}" "$@" "${EXTRA[@]}" || true
  echo "pass $name: $((SECONDS - start)) s"
  for k in caught missed timeout unviable; do
    printf '  %-8s %s\n' "$k" "$(wc -l <"$out/$name/mutants.out/$k.txt")"
  done
}

EXTRA=("$@")

RUSTFLAGS="--cfg loom" COALESCER_LOOM_SCREEN=$SCREEN \
  pass 1-loom-screened "" --test-package coalescer-loom-tests --cargo-arg=--release

pass 2-std 1-loom-screened --test-package coalescer

RUSTFLAGS="--cfg loom" \
  pass 3-loom-exhaustive 2-std --test-package coalescer-loom-tests --cargo-arg=--release

final=$out/3-loom-exhaustive/mutants.out
echo
echo "=== outcome over all passes ==="
for k in caught missed timeout unviable; do
  printf '  %-8s %s\n' "$k" "$(wc -l <"$final/$k.txt")"
done
if [ -s "$final/missed.txt" ] || [ -s "$final/timeout.txt" ]; then
  echo "missed or timed out:"
  cat "$final/missed.txt" "$final/timeout.txt"
  exit 1
fi
