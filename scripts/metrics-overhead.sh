#!/usr/bin/env bash
# The coalesced request with the `metrics` feature on and off, in one run:
# criterion's ns per request (request/ours_u64_{hot,256}/{1,2}t, each build
# saved as its own baseline) and callgrind's instructions per request
# (the `hotpath` binary, one key and 256 keys), for both builds.
#
#   scripts/metrics-overhead.sh
set -euo pipefail
cd "$(dirname "$0")/.."
filter='request/ours_u64_(hot|256)/'
out=target/metrics-overhead
mkdir -p "$out"
for mode in on off; do
  flags=()
  [ "$mode" = off ] && flags=(--no-default-features)
  cargo bench -q -p coalescer-benches "${flags[@]}" --bench coalesce -- \
    --save-baseline "metrics_$mode" "$filter" >"$out/criterion-$mode.log" 2>&1
  cargo build -q --release -p coalescer-benches "${flags[@]}" --bin hotpath
  cp target/release/hotpath "$out/hotpath-$mode"
done
printf '%-28s %12s %12s %7s\n' scenario 'metrics on' 'metrics off' ratio
for id in ours_u64_hot_1t ours_u64_hot_2t ours_u64_256_1t ours_u64_256_2t; do
  dir=target/criterion/request/$id
  on=$(python3 -c "import json;print(json.load(open('$dir/metrics_on/estimates.json'))['median']['point_estimate'])")
  off=$(python3 -c "import json;print(json.load(open('$dir/metrics_off/estimates.json'))['median']['point_estimate'])")
  python3 -c "print('%-28s %9.2f ns %9.2f ns %6.3fx' % ('$id', $on, $off, $on / $off))"
done
for keys in 1 256; do
  args=(ours)
  [ "$keys" = 256 ] && args=(ours 256)
  for mode in on off; do
    valgrind --tool=callgrind --callgrind-out-file="$out/callgrind-$mode-$keys.out" \
      "$out/hotpath-$mode" "${args[@]}" >/dev/null 2>"$out/callgrind-$mode-$keys.log"
    ir=$(grep -E '^summary:|^totals:' "$out/callgrind-$mode-$keys.out" | head -1 | awk '{print $2}')
    eval "ir_$mode=$ir"
  done
  python3 -c "print('%-28s %9.1f Ir %9.1f Ir %6.3fx' % ('callgrind, $keys key(s)', $ir_on / 1e6, $ir_off / 1e6, $ir_on / $ir_off))"
done
echo "(Ir: instructions per request, whole run of 1 000 000 requests, setup included)"
