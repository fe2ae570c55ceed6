#!/usr/bin/env bash
# run_cases.sh TEST_PROGRAM [JOBS] [SPEC] - every test case of a Catch2 program in a process of its
# own, JOBS at a time (default: the number of CPUs), the way CTest runs them in the Release build;
# with SPEC (a Catch2 test spec such as "~[network]"), only the cases it selects.
# setup.sh --test uses it for the sanitizer build, whose single process ran one core for 9 minutes.
# A failing case's whole output is printed; the exit status is 1 if any case failed.
set -euo pipefail
bin=${1:?usage: run_cases.sh TEST_PROGRAM [JOBS]}
jobs=${2:-$(nproc 2>/dev/null || echo 2)}
only=${3:-}
[ -x "$bin" ] || { echo "run_cases.sh: $bin: not an executable" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Catch2 v2 exits with the number of cases it lists, so listings ignore the exit status.
list() { "$bin" "$@" --list-test-names-only > "$work/listing" || true; grep -v '^$' "$work/listing" || true; }
# A test name is a test spec on Catch's command line: ',' '[' ']' and '\' need a backslash.
escape() { sed -e 's/\\/\\\\/g' -e 's/,/\\,/g' -e 's/\[/\\[/g' -e 's/\]/\\]/g'; }
# Cases tagged [slow] start first, so the run does not end with one long case on one core.
{ list "[slow]$only" | escape; list "~[slow]$only" | escape; } > "$work/specs"
total=$(wc -l < "$work/specs")
[ "$total" -gt 0 ] || { echo "run_cases.sh: $bin lists no test cases" >&2; exit 2; }
# Every spec must select exactly one case, or a case could be skipped without anyone noticing.
if [ -n "$only" ]; then list "$only"; else list; fi | sort > "$work/names"
list -f "$work/specs" | sort > "$work/selected"
cmp -s "$work/names" "$work/selected" || { echo "run_cases.sh: the escaped names do not select the cases one for one" >&2; exit 2; }

export BIN="$bin" WORK="$work"
# Case n (a line of specs): output to a file, a line per result; a failure keeps its output.
run_one() {
  local n=$1 spec start=$SECONDS
  spec=$(sed -n "${n}p" "$WORK/specs")
  if "$BIN" "$spec" > "$WORK/out.$n" 2>&1; then
    echo "passed $((SECONDS - start)) s: ${spec//\\/}"
    grep -h -A2 "SKIPPED:" "$WORK/out.$n" | grep -v -e "^--$" -e "^ *$" -e "^===" | sed "s/^/    /" || true
  else
    echo "FAILED $((SECONDS - start)) s: ${spec//\\/}"
    touch "$WORK/failed.$n"
  fi
}
export -f run_one
start=$SECONDS
seq 1 "$total" | xargs -P "$jobs" -I{} bash -c 'run_one {}'
failed=$(find "$work" -name 'failed.*' | wc -l)
if [ "$failed" -gt 0 ]; then
  for f in "$work"/failed.*; do
    echo "==== output of the failed case ${f##*.}: $(sed -n "${f##*.}p" "$work/specs")"
    cat "$work/out.${f##*.}"
  done
  echo "run_cases.sh: $failed of $total test cases FAILED ($((SECONDS - start)) s, $jobs at a time)"
  exit 1
fi
echo "run_cases.sh: all $total test cases passed ($((SECONDS - start)) s, $jobs at a time)"
