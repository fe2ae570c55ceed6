#!/usr/bin/env bash
# bench/align_check.sh - how well `pin align` finds and aligns faces in real photos, on the 871 LFW
# photos of fold 5 (../shared/data/lfw-photos-fold5, published 5-point landmarks):
#   1. detection rate (photos with at least one face),
#   2. our 5 points against the published ones: error / inter-ocular distance, median and 90th percentile,
#   3. the recognizer's EER on fold 5 of lfw112's pairs with faces aligned by our detector + landmarks,
#      next to the same figure for lfw112's own alignment (from the published landmarks).
# LFW labels the face at the centre of each photo: where `pin align` finds several faces, the one whose
# box centre lies nearest the photo's centre is the one scored (its chip replaces NAME.png in the
# evaluation folder). Photos where no face is found are counted as misses and, for the EER, replaced by
# the photo's centre 112 x 112 region (what a user would get without alignment).
#
#   bench/align_check.sh [--photos DIR] [--lfw DIR] [--out DIR] [--min-score S] [--input-size N|auto]
set -euo pipefail
cd "$(dirname "$0")/.."
photos=../shared/data/lfw-photos-fold5; lfw=../shared/data/lfw112; out=align-check; min_score=0.3; input_size=auto
while [ $# -gt 0 ]; do
  case "$1" in
    --photos) photos=$2; shift ;; --lfw) lfw=$2; shift ;; --out) out=$2; shift ;;
    --min-score) min_score=$2; shift ;; --input-size) input_size=$2; shift ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "align_check.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
pin=${PIN:-build/bin/pin}
[ -x "$pin" ] || { echo "align_check.sh: $pin not built" >&2; exit 2; }
[ -f "$photos/landmarks.txt" ] || { echo "align_check.sh: $photos/landmarks.txt not found" >&2; exit 2; }
mkdir -p "$out/aligned"
start=$(date +%s)
"$pin" align --in "$photos/images" --out "$out/aligned/images" --json "$out/align.json" --min-score "$min_score" \
  --input-size "$input_size"
align_s=$(( $(date +%s) - start ))
cp "$lfw/pairs.txt" "$out/aligned/pairs.txt"
/usr/bin/python3 - "$photos" "$out" "$align_s" <<'PY'
import json, math, os, sys
import numpy as np
from PIL import Image
photos, out, align_s = sys.argv[1], sys.argv[2], int(sys.argv[3])
j = json.load(open(os.path.join(out, "align.json")))
pub = {}
for line in open(os.path.join(photos, "landmarks.txt")):
    f = line.split()
    pub[f[0]] = np.array([float(v) for v in f[1:11]]).reshape(5, 2)
import shutil
errs, missing, recentred = [], [], 0
for r in j["results"]:
    name = r["photo"]
    if not r.get("faces"):
        missing.append(name); continue
    cx, cy = r["width"] / 2, r["height"] / 2
    dist = lambda f: math.hypot(f["box"][0] + f["box"][2] / 2 - cx, f["box"][1] + f["box"][3] / 2 - cy)
    face = min(r["faces"], key=dist)
    if face is not r["faces"][0]:
        recentred += 1
        shutil.copyfile(os.path.join(out, "aligned", "images", face["file"]), os.path.join(out, "aligned", "images", r["faces"][0]["file"]))
    p = np.array(face["points"]); q = pub[name]
    iod = np.linalg.norm(q[0] - q[1])
    errs.append(float(np.mean(np.linalg.norm(p - q, axis=1)) / iod))
# Photos without a face: the centre 112 x 112 of the photo, gray, so every pair can be scored.
for name in missing:
    im = Image.open(os.path.join(photos, "images", name)).convert("L")
    w, h = im.size
    crop = im.crop(((w - 112) // 2, (h - 112) // 2, (w - 112) // 2 + 112, (h - 112) // 2 + 112))
    dst = os.path.join(out, "aligned", "images", os.path.splitext(name)[0] + ".png")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    crop.save(dst)
errs.sort()
summary = {"photos": j["photos"], "photos_with_face": j["photos_with_face"], "faces": j["faces"],
           "detection_rate": j["photos_with_face"] / j["photos"], "missed": missing,
           "median_error_over_iod": errs[len(errs) // 2], "p90_error_over_iod": errs[int(len(errs) * 0.9)],
           "mean_error_over_iod": sum(errs) / len(errs), "align_seconds": align_s,
           "min_score": j["min_score"], "input_size": j["input_size"], "central_face_not_best_score": recentred}
json.dump(summary, open(os.path.join(out, "landmarks_summary.json"), "w"), indent=1)
print("central face not the best-scoring one in %d photos" % recentred)
print("photos %d, with a face %d (%.2f %%), faces %d; 5-point error / inter-ocular distance: median %.4f, p90 %.4f; %d s"
      % (j["photos"], j["photos_with_face"], 100 * summary["detection_rate"], j["faces"], summary["median_error_over_iod"],
         summary["p90_error_over_iod"], align_s))
PY
"$pin" eval --data "$out/aligned" --folds 5 --defense none --attack none --json "$out/eer_our_alignment.json" --no-progress
"$pin" eval --data "$lfw" --folds 5 --defense none --attack none --json "$out/eer_lfw112.json" --no-progress
/usr/bin/python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
a = json.load(open(out + "/eer_our_alignment.json")); b = json.load(open(out + "/eer_lfw112.json"))
s = json.load(open(out + "/landmarks_summary.json"))
s["eer_fold5_our_alignment"] = a["eer"]; s["eer_fold5_lfw112"] = b["eer"]
json.dump(s, open(out + "/summary.json", "w"), indent=1)
print("recognizer EER on fold 5: our detector + landmarks %.2f %%, lfw112 (published landmarks) %.2f %%, difference %+.2f points"
      % (100 * a["eer"], 100 * b["eer"], 100 * (a["eer"] - b["eer"])))
PY
