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
# Usage: scripts/mutants.sh [extra cargo-mutants args, e.g. --re 'state\.rs']
#        PASSES="2 3" scripts/mutants.sh   # resume: run only these passes
# Needs cargo-mutants (`cargo install cargo-mutants --locked`). Output under
# target/mutants/: one mutants.out per pass; the last one holds the outcome
# of every mutant still missed (each pass runs with --iterate over the
# previous one, so it tests only what earlier passes did not catch).
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
PASSES=${PASSES:-1 2 3}
run_start=$SECONDS

case " $PASSES " in *" 1 "*)
  RUSTFLAGS="--cfg loom" COALESCER_LOOM_SCREEN=$SCREEN \
    pass 1-loom-screened "" --test-package coalescer-loom-tests --cargo-arg=--release \
      --exclude-re 'tokio_tasks::' ;; # std-only code: not compiled under loom
esac
case " $PASSES " in *" 2 "*)
  pass 2-std 1-loom-screened --test-package coalescer ;;
esac
case " $PASSES " in *" 3 "*)
  RUSTFLAGS="--cfg loom" \
    pass 3-loom-exhaustive 2-std --test-package coalescer-loom-tests --cargo-arg=--release ;;
esac

# Each pass lists only what it tested itself; add them up.
echo
echo "=== outcome over all passes ($((SECONDS - run_start)) s this run) ==="
final=$out/3-loom-exhaustive/mutants.out
total=$(cat "$out"/1-loom-screened/mutants.out/mutants.json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
printf '  %-8s %s\n' generated "$total"
for k in caught unviable; do
  printf '  %-8s %s\n' "$k" "$(cat "$out"/*/mutants.out/$k.txt | sort -u | wc -l)"
done
for k in missed timeout; do
  printf '  %-8s %s\n' "$k" "$(wc -l <"$final/$k.txt")"
done
if [ -s "$final/missed.txt" ] || [ -s "$final/timeout.txt" ]; then
  echo "missed or timed out:"
  cat "$final/missed.txt" "$final/timeout.txt"
  exit 1
fi
