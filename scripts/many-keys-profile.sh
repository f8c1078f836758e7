#!/usr/bin/env bash
# Instructions and cache misses per coalesced request — ours, the Go port,
# the hand-rolled DashMap — at 1, 256 and 100 000 keys: each figure is a
# run of two million requests minus a run of one million, divided by a
# million. (Not minus a run of none: the setup of a held coalescer runs a
# tokio worker beside it, whose share varies from run to run by up to
# 27 instructions and 1.3 misses per request at 100 000 keys when no
# requests follow it; after a million requests both runs have settled.) valgrind counts instructions exactly; cachegrind simulates this
# machine's caches (48 KiB L1d, 4 MiB L2 as the last level). At 100 000
# keys it also profiles `layout`'s three models of our map path (the state
# word behind an Arc among task-sized allocations, behind an Arc with the
# slots dense, inline in the table entry).
#
#   scripts/many-keys-profile.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release -p coalescer-benches --bin hotpath --bin layout
bin=target/release/hotpath
out=target/many-keys-profile
mkdir -p "$out"
total() { # tool mode keys requests -> "Ir D1mr DLmr"
  local file="$out/$1-$2-$3-$4.out"
  local bin=$bin
  case "$2" in among | dense | inline) bin=target/release/layout ;; esac
  if [ "$1" = callgrind ]; then
    valgrind --tool=callgrind --callgrind-out-file="$file" "$bin" "$2" "$3" "$4" >/dev/null 2>&1
    grep -E '^(summary|totals):' "$file" | head -1 | awk '{print $2, 0, 0}'
  else
    valgrind --tool=cachegrind --cache-sim=yes --D1=49152,12,64 --LL=4194304,16,64 \
      --cachegrind-out-file="$file" "$bin" "$2" "$3" "$4" >/dev/null 2>&1
    # events: Ir I1mr ILmr Dr D1mr DLmr Dw D1mw DLmw
    grep -E '^summary:' "$file" | awk '{print $2, $6 + $9, $7 + $10}'
  fi
}
printf '| %-6s | %-5s | %14s | %14s | %14s |\n' keys peer 'Ir / request' 'L1d misses' 'L2 misses'
printf '|---|---|---|---|---|\n'
for keys in 1 256 100000; do
  modes="ours dash go"
  [ "$keys" = 100000 ] && modes="ours dash go among dense inline"
  for mode in $modes; do
    tool=callgrind
    [ "$keys" = 100000 ] && tool=cachegrind
    read -r ir1 d11 ll1 <<<"$(total $tool $mode $keys 2000000)"
    read -r ir0 d10 ll0 <<<"$(total $tool $mode $keys 1000000)"
    python3 -c "print('| %-6s | %-5s | %14.1f | %14s | %14s |' % ('$keys', '$mode', ($ir1 - $ir0) / 1e6, \
      '-' if '$tool' == 'callgrind' else '%.2f' % (($d11 - $d10) / 1e6), \
      '-' if '$tool' == 'callgrind' else '%.2f' % (($ll1 - $ll0) / 1e6)))"
  done
done
