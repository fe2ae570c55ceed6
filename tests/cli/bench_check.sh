#!/usr/bin/env bash
# pin-bench's interface as the issues and docs use it: `forward --json` gives images_per_second and
# the stage times; `layers --backward --json` gives every pass of the chosen layers and the 60 % bar
# summary over the 3x3 convolutions with 64+ channels; bad commands and filters exit 2 with a message.
set -euo pipefail
bench=${1:?usage: bench_check.sh PATH_TO_PIN_BENCH}
fail() { echo "FAIL: $*" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

"$bench" forward --batch 1 --iters 1 --threads 2 --json > "$out/forward.json" 2>/dev/null || fail "pin-bench forward"
python3 - "$out/forward.json" <<'PY' || fail "pin-bench forward --json fields"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["images_per_second"] > 0 and d["batch"] == 1 and d["threads"] == 2, d
assert all(d["stages"][k] > 0 for k in ("dae_ms", "esn_ms", "head_ms", "sample_project_ms")), d["stages"]
PY

# esn.b8: one 3x3 512 -> 512 convolution (3 cells of the bar) and one 1x1 (not in the bar).
"$bench" layers --filter esn.b8 --backward --batch 2 --iters 1 --json > "$out/layers.json" 2>"$out/layers.txt" || fail "pin-bench layers"
python3 - "$out/layers.json" <<'PY' || fail "pin-bench layers --json fields"
import json, sys
d = json.load(open(sys.argv[1]))
assert [l["layer"].split()[0] for l in d["layers"]] == ["esn.b8.conv", "esn.b8.short"], d["layers"]
for l in d["layers"]:
    for p in ("forward", "backward_input", "backward_weight"):
        assert l[p + "_gflops"] > 0 and 0 < l[p + "_peak_fraction"] and 0 < l[p + "_best_over_highest_peak"], (l, p)
bar = d["bar_60_percent"]
assert bar["cells"] == 3, bar
for key in ("below_by_paired_median", "below_by_best_over_highest_peak"):
    assert set(bar[key]) <= {"esn.b8.conv fwd", "esn.b8.conv bwd-in", "esn.b8.conv bwd-w"}, bar
PY
grep -q "3x3 convolutions with 64+ channels: 3 cells" "$out/layers.txt" || fail "no bar summary line"

"$bench" layers --filter no-such-layer > /dev/null 2>"$out/msg" && fail "an empty filter was accepted"
grep -q "no layer name contains 'no-such-layer'" "$out/msg" || fail "no message naming the filter"
"$bench" bogus > /dev/null 2>"$out/msg" && fail "an unknown command was accepted"
grep -q "unknown command 'bogus'" "$out/msg" || fail "no message naming the command"
"$bench" --help > /dev/null 2>&1 || fail "--help"
echo "pin-bench interface: ok"
