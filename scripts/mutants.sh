#!/usr/bin/env bash
# Mutation testing of the core (impl/src) with cargo-mutants, in four passes.
# Every mutant has to be caught by one of them; see docs/verification.md.
#
#   1. loom, screened: the loom suite under `--cfg loom` — the slot models
#      inside the crate and the public-API models of `coalescer-loom-tests`
#      — every model capped at preemption bound $SCREEN
#      (COALESCER_LOOM_SCREEN). Seconds per mutant; catches most of the
#      core. A failure it finds is a real one.
#   2. std: the mutants pass 1 missed, against the ordinary tests of the
#      `coalescer` package (tokio, blocking, stress with the history oracle,
#      misuse, allocation, unit tests, doc examples) but for the
#      one-million-key memory test. Code compiled only in the std build (the
#      tokio task set, the std primitives and clock wait) is reached only
#      here.
#   2b. memory: what pass 2 missed, against the one-million-key memory test
#      alone (15–20 s per mutant, so it runs last among the std tests): it
#      alone catches a task set that never reaps.
#   3. loom, exhaustive: what is still missed, against the full suite (both
#      packages) without the screening bound (the suite CI runs).
#
# A mutant that makes the tests hang (a deadlock: a lost wakeup or a
# stranded waiter) is reported as timed out. That is a detection, not a
# miss; such mutants are not passed on to the next pass.
#
# Usage: scripts/mutants.sh [extra cargo-mutants args, e.g. --re 'state\.rs']
#        PASSES="2 2b 3" scripts/mutants.sh   # resume from an earlier pass
# The loom passes run test targets only (`--tests`): the doc examples are
# the std pass's. Needs cargo-mutants (`cargo install cargo-mutants
# --locked`). Output:
# target/mutants/<pass>/mutants.out, and the totals at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
SCREEN=${SCREEN:-3}
out=target/mutants
mkdir -p "$out"
EXTRA=("$@")
PASSES=${PASSES:-1 2 2b 3}

# Runs one pass over the mutants the previous pass missed (all, for the
# first), named exactly: cargo-mutants' --re matches the names --list shows.
pass() {
  local name=$1 previous=$2
  shift 2
  # The caller's filters (EXTRA) choose the mutants of the first pass; later
  # passes take exactly the previous pass's missed list (several --re are
  # OR-ed, so adding the caller's filters there would widen the set again).
  local select=("${EXTRA[@]}")
  if [ -n "$previous" ]; then
    local missed=$out/$previous/mutants.out/missed.txt
    if [ ! -s "$missed" ]; then
      printf '\n=== pass %s: nothing left to test ===\n' "$name"
      rm -rf "$out/$name"
      return
    fi
    select=()
    while IFS= read -r m; do
      select+=(--re "^$(printf '%s' "$m" | sed 's/[][\.*^$(){}?+|/]/\\&/g')\$")
    done <"$missed"
  fi
  rm -rf "$out/$name"
  mkdir -p "$out/$name"
  printf '\n=== pass %s ===\n' "$name"
  local start=$SECONDS
  # cargo-mutants exits non-zero while any mutant is missed; the totals decide.
  cargo mutants --no-shuffle -o "$out/$name" "${select[@]}" "$@" || true
  echo "pass $name: $((SECONDS - start)) s"
  for k in caught missed timeout unviable; do
    printf '  %-8s %s\n' "$k" "$(wc -l <"$out/$name/mutants.out/$k.txt")"
  done
}

# Both loom packages: the slot models are the `coalescer` lib's tests.
LOOM=(--test-package coalescer --test-package coalescer-loom-tests
  --cargo-arg=--release --cargo-test-arg=--tests)

# The one test pass 2 leaves to pass 2b.
MEMORY=a_million_distinct_keys_leave_the_heap_where_it_was

run_start=$SECONDS
case " $PASSES " in *" 1 "*)
  # Std-only code (the tokio task set) is not compiled under loom: its
  # mutants pass this pass unchanged and go on to the std pass.
  RUSTFLAGS="--cfg loom" COALESCER_LOOM_SCREEN=$SCREEN \
    pass 1-loom-screened "" "${LOOM[@]}" ;;
esac
case " $PASSES " in *" 2 "*)
  pass 2-std 1-loom-screened --test-package coalescer \
    --cargo-test-arg=-- --cargo-test-arg=--skip --cargo-test-arg="$MEMORY" ;;
esac
case " $PASSES " in *" 2b "*)
  pass 2b-memory 2-std --test-package coalescer \
    --cargo-test-arg=--test --cargo-test-arg=memory ;;
esac
case " $PASSES " in *" 3 "*)
  # An explicit timeout: the exhaustive suite takes about 4 minutes, and the
  # auto timeout (from the screened baseline of the configuration's
  # minimum, 60 s) would call every mutant "timed out".
  RUSTFLAGS="--cfg loom" \
    pass 3-loom-exhaustive 2b-memory "${LOOM[@]}" --timeout 900 ;;
esac

# Each pass lists only what it tested itself; add them up.
echo
echo "=== totals over the passes ($((SECONDS - run_start)) s this run) ==="
lists() { cat "$out"/*/mutants.out/"$1".txt 2>/dev/null | sort -u; }
generated=$(lists caught; lists missed; lists timeout; lists unviable)
printf '  %-9s %s\n' generated "$(printf '%s\n' "$generated" | sed '/^$/d' | sort -u | wc -l)"
printf '  %-9s %s\n' caught "$(lists caught | wc -l)"
printf '  %-9s %s\n' timeout "$(lists timeout | wc -l)"
printf '  %-9s %s\n' unviable "$(lists unviable | wc -l)"
last=$(ls -d "$out"/*/ | sort | tail -n1)
printf '  %-9s %s\n' missed "$(wc -l <"$last/mutants.out/missed.txt")"
if [ -s "$last/mutants.out/missed.txt" ]; then
  echo "still missed:"
  cat "$last/mutants.out/missed.txt"
  exit 1
fi
