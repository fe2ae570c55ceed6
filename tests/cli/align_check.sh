#!/usr/bin/env bash
# End-to-end check of `pin align` and `pin demo` on face-api's demo photos: every photo yields a face,
# the JSON carries photos / photos_with_face / faces with boxes and 5 points per face, one gray
# 112 x 112 PNG per face; an unreadable photo in the folder is reported (exit 1) without losing the
# others; bad options are usage errors (exit 2). `pin demo` without trained weights says so plainly
# and still prints the attack's table and writes the montage. Skips (77) without the face-api weights.
set -euo pipefail
pin=${1:?usage: align_check.sh PATH_TO_PIN WORK_DIR FACE_API_DIR}
work=${2:?usage: align_check.sh PATH_TO_PIN WORK_DIR FACE_API_DIR}
face_api=${3:?usage: align_check.sh PATH_TO_PIN WORK_DIR FACE_API_DIR}
[ -f "$face_api/tiny_face_detector_model-weights_manifest.json" ] && [ -f "$face_api/sample1.jpg" ] ||
  { echo "SKIPPED: face-api weights or demo photos missing in $face_api (./setup.sh fetches them)"; exit 77; }
rm -rf "$work" && mkdir -p "$work/photos/sub"
fail() { echo "FAIL: $*" >&2; exit 1; }
cp "$face_api"/sample1.jpg "$face_api"/sample2.jpg "$work/photos/"
cp "$face_api"/sample3.jpg "$work/photos/sub/"

"$pin" align --in "$work/photos" --out "$work/out" --json "$work/faces.json" --no-progress > "$work/align.log"
python3 - "$work" <<'PY'
import json, os, struct, sys
work = sys.argv[1]
j = json.load(open(os.path.join(work, "faces.json")))
assert j["photos"] == 3 and j["photos_with_face"] == 3, j
assert j["faces"] == sum(len(r["faces"]) for r in j["results"]) and j["faces"] >= 3, j["faces"]
for r in j["results"]:
    scores = [f["score"] for f in r["faces"]]
    assert scores == sorted(scores, reverse=True), scores
    for f in r["faces"]:
        assert len(f["points"]) == 5 and len(f["landmarks68"]) == 68
        x, y, w, h = f["box"]
        # the eyes lie inside the box, the left one left of the right one
        (lx, ly), (rx, ry) = f["points"][0], f["points"][1]
        assert x <= lx < rx <= x + w and y <= ly <= y + h, (f["box"], f["points"])
        png = open(os.path.join(work, "out", f["file"]), "rb").read()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (112, 112), f["file"]
assert os.path.exists(os.path.join(work, "out", "sub", "sample3.png"))
print("align: %d photos, %d faces, JSON and PNGs consistent" % (j["photos"], j["faces"]))
PY

# An unreadable photo: reported by name, the others still aligned, exit 1.
echo "not a jpeg" > "$work/photos/broken.jpg"
set +e
"$pin" align --in "$work/photos" --out "$work/out2" --no-progress > "$work/align2.log" 2>&1
rc=$?
set -e
[ "$rc" = 1 ] || fail "an unreadable photo should give exit 1, got $rc"
grep -q "broken.jpg" "$work/align2.log" || fail "the message does not name broken.jpg: $(cat "$work/align2.log")"
python3 -c "import json,sys; j=json.load(open(sys.argv[1])); assert j['photos']==4 and j['photos_with_face']==3 and j['unreadable']==1, j" \
  "$work/out2/faces.json" || fail "faces.json after an unreadable photo"
rm "$work/photos/broken.jpg"

set +e
"$pin" align --in "$work/photos" --out "$work/out3" --input-size 100 > "$work/align3.log" 2>&1; rc1=$?
"$pin" align --in "$work/nothing-here" --out "$work/out3" > "$work/align4.log" 2>&1; rc2=$?
set -e
[ "$rc1" = 2 ] || fail "--input-size 100 should be a usage error (2), got $rc1"
[ "$rc2" != 0 ] && grep -q "nothing-here" "$work/align4.log" || fail "a missing --in should fail naming it"

# The main job without trained weights: the attack's table, the montage, and a plain message.
"$pin" demo --in "$work/photos/sub" --out "$work/demo" --model "$work/no-model" --iterations 2 > "$work/demo.log"
grep -q "No trained PIN model" "$work/demo.log" || fail "pin demo without weights should say so"
grep -q "^mean" "$work/demo.log" || fail "pin demo printed no table"
python3 - "$work/demo" <<'PY'
import json, struct, sys
d = sys.argv[1]
png = open(d + "/montage.png", "rb").read()
w, h = struct.unpack(">II", png[16:24])
j = json.load(open(d + "/demo.json"))
n = len(j["faces"])
assert (w, h) == (3 * 112, n * 112), (w, h, n)
assert all(f["attacked"] < 0.99 for f in j["faces"]), j["faces"]  # the attack moved every embedding
print("demo: %d faces, montage %dx%d, mean attacked similarity %.3f" % (n, w, h, sum(f["attacked"] for f in j["faces"]) / n))
PY
echo "align_check: OK"
