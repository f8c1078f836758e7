# Sourced by scripts/orderings.sh and scripts/semantic-mutants.sh: editing
# impl/src one named change at a time, and reading the first failure.

# Refuses to start on uncommitted changes to impl/src, and restores it on
# exit, so every change is applied to the committed code alone.
require_clean_impl() {
  if ! git diff --quiet -- impl/src; then
    echo "impl/src has uncommitted changes; commit or stash them first" >&2
    exit 2
  fi
  trap 'git checkout -q -- impl/src' EXIT
}

apply() { # file old new: replace exactly one occurrence or fail (\n: newline)
  python3 - "$@" <<'PY'
import sys
path, old, new = sys.argv[1], sys.argv[2].replace('\\n', '\n'), sys.argv[3].replace('\\n', '\n')
text = open(path).read()
n = text.count(old)
if n != 1:
    sys.exit(f"{path}: expected the text once, found it {n} times: {old!r}")
open(path, 'w').write(text.replace(old, new))
PY
}

# The first failure in a test log: the test and what it reported.
first_failure() {
  local f=$1 model msg
  model=$(grep -m1 -oE "^thread '[^']+'" "$f" | sed "s/^thread '//;s/'$//" || true)
  msg=$(grep -m1 -A1 -E "^thread '[^']+' .*panicked" "$f" | tail -n1 | cut -c1-140 || true)
  if [ -n "$model" ]; then
    echo "\`$model\`: $msg"
  else
    grep -m1 -E "^error|FAILED" "$f" | cut -c1-140 || true
  fi
}
