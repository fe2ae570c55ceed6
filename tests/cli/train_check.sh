#!/usr/bin/env bash
# End-to-end check of `pin pretrain-dae` and `pin train` on synthetic faces:
#   - a run stopped after some steps (--steps) and resumed gives the same checkpoint, byte for
#     byte, as the uninterrupted run (DAE and agent);
#   - SIGINT in the middle of an epoch saves a checkpoint, exits 130, and --resume finishes the run
#     with the same weights as a run never interrupted;
#   - the log has one row per step; bad settings are refused with a message naming them.
set -euo pipefail
pin=${1:?usage: train_check.sh PATH_TO_PIN WORK_DIR}
work=${2:?usage: train_check.sh PATH_TO_PIN WORK_DIR}
rm -rf "$work" && mkdir -p "$work/faces"
fail() { echo "FAIL: $*" >&2; exit 1; }

python3 "$(dirname "$0")/make_faces.py" "$work/faces" 8 2 11
q="--no-progress --threads 2"
"$pin" eigen --data "$work/faces" --split all --count 16 --keep 12 -o "$work/basis.safetensors" >/dev/null 2>&1 || fail "pin eigen"

# DAE: 5 steps straight vs 2 + 3 resumed (batch 4: 4 steps per epoch, so the resume crosses an epoch).
dae="$pin pretrain-dae --data $work/faces --split all --batch 4 --flip --lr 0.02 --epochs 2 $q"
$dae --out "$work/dae_a" --steps 5 >/dev/null 2>&1 || fail "pretrain-dae"
$dae --out "$work/dae_b" --steps 2 >/dev/null 2>&1 || fail "pretrain-dae (first part)"
$dae --out "$work/dae_b" --steps 3 --resume >/dev/null 2>&1 || fail "pretrain-dae --resume"
cmp -s "$work/dae_a/checkpoint.safetensors" "$work/dae_b/checkpoint.safetensors" || fail "resumed DAE run differs"
[ "$(($(wc -l < "$work/dae_b/log.csv") - 1))" = 5 ] || fail "DAE log should have 5 rows"
$dae --out "$work/dae_a" --steps 1 >"$work/msg" 2>&1 && fail "an existing checkpoint was overwritten"
grep -q "exists: add --resume" "$work/msg" || fail "no message about the existing checkpoint"
$dae --out "$work/dae_a" --steps 1 --resume --batch 2 >"$work/msg" 2>&1 && fail "resume with another batch size was accepted"
grep -q "different settings: batch=4 (now 2)" "$work/msg" || { cat "$work/msg"; fail "no message naming the changed setting"; }

# Agent: a whole run (2 epochs, 8 steps) vs 1 step + the rest resumed, with each estimator.
for est in local rloo reinforce; do
  tr="$pin train --data $work/faces --split all --dae $work/dae_a/checkpoint.safetensors --basis $work/basis.safetensors
      --batch 4 --masks 6 --estimator $est --lambda 0.01 --epochs 2 --flip $q"
  $tr --out "$work/agent_b_$est" --steps 1 >/dev/null 2>&1 || fail "train ($est, first part)"
  $tr --out "$work/agent_b_$est" --resume >/dev/null 2>&1 || fail "train --resume ($est)"
  $tr --out "$work/agent_c_$est" >/dev/null 2>&1 || fail "train ($est, whole)"
  cmp -s "$work/agent_b_$est/checkpoint.safetensors" "$work/agent_c_$est/checkpoint.safetensors" || fail "resumed agent run differs ($est)"
  [ -f "$work/agent_c_$est/agent.safetensors" ] && [ -f "$work/agent_c_$est/eigenbasis.safetensors" ] || fail "no model folder ($est)"
done
# --emulate-gpu-bf16 (the step through BackendTrainer with bfloat16 GEMM operands, on the CPU):
# resumes bit for bit too, is not the fp32 run, starts near it (the same masks but for a rounding
# edge), and a resume must keep it.
$tr --out "$work/agent_b_bf16" --steps 1 --emulate-gpu-bf16 >/dev/null 2>&1 || fail "train --emulate-gpu-bf16 (first part)"
$tr --out "$work/agent_b_bf16" --resume --emulate-gpu-bf16 >/dev/null 2>&1 || fail "train --emulate-gpu-bf16 --resume"
$tr --out "$work/agent_c_bf16" --emulate-gpu-bf16 >/dev/null 2>&1 || fail "train --emulate-gpu-bf16 (whole)"
cmp -s "$work/agent_b_bf16/checkpoint.safetensors" "$work/agent_c_bf16/checkpoint.safetensors" || fail "resumed --emulate-gpu-bf16 run differs"
cmp -s "$work/agent_c_bf16/checkpoint.safetensors" "$work/agent_c_reinforce/checkpoint.safetensors" && fail "--emulate-gpu-bf16 changed nothing"
python3 - "$work/agent_c_reinforce/log.csv" "$work/agent_c_bf16/log.csv" <<'PY' || fail "--emulate-gpu-bf16: first step's cost far from fp32's"
import csv, sys
a, b = (list(csv.DictReader(open(p))) for p in sys.argv[1:3])
assert len(a) == len(b) == 8, (len(a), len(b))
ca, cb = float(a[0]["mean_cost"]), float(b[0]["mean_cost"])
print("  first step's mean cost: fp32 %.6g, bfloat16 operands %.6g" % (ca, cb))
assert abs(cb - ca) <= 0.02 * abs(ca), (ca, cb)  # the masks may well be the same ones
PY
$tr --out "$work/agent_c_bf16" --steps 1 --resume >"$work/msg" 2>&1 && fail "resume without --emulate-gpu-bf16 was accepted"
grep -q "emulate_gpu_bf16" "$work/msg" || { cat "$work/msg"; fail "no message naming emulate_gpu_bf16"; }
$tr --out "$work/bad_bf16" --emulate-gpu-bf16 --device cuda >"$work/msg" 2>&1 && fail "--emulate-gpu-bf16 --device cuda accepted"
grep -q -- "--emulate-gpu-bf16 rounds the CPU step" "$work/msg" || { cat "$work/msg"; fail "no message for --emulate-gpu-bf16 --device cuda"; }
# The trained folder is a model folder for pin defend.
"$pin" defend --model "$work/agent_c_local" --in "$work/faces/person_00" --out "$work/defended" $q >/dev/null 2>&1 \
  || fail "pin defend with the trained model folder"
# pin export: a float16 model folder, smaller, defending within float16 rounding of the original.
"$pin" export --model "$work/agent_c_local" --out "$work/exported" >/dev/null 2>&1 || fail "pin export"
"$pin" defend --model "$work/exported" --mode expectation --in "$work/faces/person_00" --out "$work/def_half" $q >/dev/null 2>&1 \
  || fail "pin defend with the exported model"
"$pin" defend --model "$work/agent_c_local" --mode expectation --in "$work/faces/person_00" --out "$work/def_full" $q >/dev/null 2>&1 \
  || fail "pin defend (expectation) with the trained model"
python3 - "$work" "$(dirname "$0")" <<'PY' || fail "exported model: size or defended faces"
import os, sys
sys.path.insert(0, sys.argv[2])
w = sys.argv[1]
size = lambda d: sum(os.path.getsize(os.path.join(w, d, f)) for f in ("agent.safetensors", "eigenbasis.safetensors"))
assert size("exported") < 0.6 * size("agent_c_local"), (size("exported"), size("agent_c_local"))
from png_gray import gray
names = sorted(os.listdir(os.path.join(w, "def_full")))
assert names, "no defended faces"
for n in names:
    a, b = gray(os.path.join(w, "def_full", n)), gray(os.path.join(w, "def_half", n))
    assert len(a) == len(b) == 112 * 112
    assert max(abs(x - y) for x, y in zip(a, b)) <= 3, (n, max(abs(x - y) for x, y in zip(a, b)))
PY
# --device cuda end to end (defend, train, eval on the GPU against the CPU): tests/cli/gpu_cli_check.sh.
# Here only the settings a GPU run refuses before it starts.
tr="$pin train --data $work/faces --split all --dae $work/dae_a/checkpoint.safetensors --basis $work/basis.safetensors
    --batch 4 --masks 6 --estimator local --lambda 0.01 --epochs 2 --flip $q"
$tr --out "$work/bad_dev" --device tpu >"$work/msg" 2>&1 && fail "--device tpu accepted"
grep -q "must be cpu or cuda" "$work/msg" || { cat "$work/msg"; fail "no message for --device tpu"; }
$tr --out "$work/bad_dev" --device cuda --gpu-storage fp16 >"$work/msg" 2>&1 && fail "--gpu-storage fp16 accepted"
grep -q -- "--gpu-storage must be fp32 or bf16, got 'fp16'" "$work/msg" || { cat "$work/msg"; fail "no message for --gpu-storage fp16"; }
$tr --out "$work/bad_dev" --device cuda --gpu-tile 32 >"$work/msg" 2>&1 && fail "--gpu-tile 32 accepted"
grep -q -- "--gpu-tile must be 64, 128 or wgmma, got '32'" "$work/msg" || { cat "$work/msg"; fail "no message for --gpu-tile 32"; }
$tr --out "$work/bad_dev" --device cuda --gpu-gather-cache l3 >"$work/msg" 2>&1 && fail "--gpu-gather-cache l3 accepted"
grep -q -- "--gpu-gather-cache must be l2 or l1, got 'l3'" "$work/msg" || { cat "$work/msg"; fail "no message for --gpu-gather-cache l3"; }
$tr --out "$work/bad_dev" --device cuda --gpu-mma-n 512 >"$work/msg" 2>&1 && fail "--gpu-mma-n 512 accepted"
grep -q -- "--gpu-mma-n must be 128 or 256, got '512'" "$work/msg" || { cat "$work/msg"; fail "no message for --gpu-mma-n 512"; }
$tr --out "$work/bad_dev" --gpu-math bf16 --gpu-tune >"$work/msg" 2>&1 && fail "pin train --gpu-tune without --device cuda accepted"
grep -q -- "--gpu-tune needs --device cuda" "$work/msg" || { cat "$work/msg"; fail "no message for pin train --gpu-tune without --device cuda"; }
$tr --out "$work/bad_dev" --device cuda --gpu-math bf16 --gpu-tune --gpu-storage bf16 >"$work/msg" 2>&1 && fail "pin train --gpu-tune --gpu-storage accepted"
grep -q -- "--gpu-tune chooses --gpu-storage itself" "$work/msg" || { cat "$work/msg"; fail "no message for pin train --gpu-tune --gpu-storage"; }
"$pin" embed --in "$work/faces" --out "$work/e.safetensors" --gpu-tune >"$work/msg" 2>&1 && fail "pin embed --gpu-tune accepted"
grep -q -- "--gpu-tune: embed runs on the CPU" "$work/msg" || { cat "$work/msg"; fail "no message for pin embed --gpu-tune"; }

# SIGINT mid-run: checkpoint, exit 130, resume finishes with the weights of the uninterrupted run.
tr="$pin train --data $work/faces --split all --dae $work/dae_a/dae.safetensors --basis $work/basis.safetensors
    --batch 2 --masks 4 --epochs 2 $q"
$tr --out "$work/int_ref" >/dev/null 2>&1 || fail "train (reference for the interruption)"
$tr --out "$work/int" >/dev/null 2>"$work/int.err" &
pid=$!
for _ in $(seq 1 600); do
  [ -f "$work/int/log.csv" ] && [ "$(wc -l < "$work/int/log.csv")" -ge 3 ] && break
  sleep 0.05
done
kill -INT $pid
set +e; wait $pid; rc=$?; set -e
if [ $rc = 130 ]; then
  grep -q "stopped; checkpoint" "$work/int.err" || fail "no stop message"
  $tr --out "$work/int" --resume >/dev/null 2>&1 || fail "resume after SIGINT"
else
  [ $rc = 0 ] || { cat "$work/int.err"; fail "SIGINT run exited $rc"; }   # finished before the signal
fi
cmp -s "$work/int/checkpoint.safetensors" "$work/int_ref/checkpoint.safetensors" || fail "interrupted + resumed run differs"
[ "$(($(wc -l < "$work/int/log.csv") - 1))" = 16 ] || fail "log of the interrupted run should have 16 rows"

# Bad settings.
$tr --out "$work/bad" --estimator reinforcement >"$work/msg" 2>&1 && fail "unknown estimator accepted"
grep -q "reinforce, rloo or local" "$work/msg" || fail "no message for the unknown estimator"
"$pin" train --data "$work/faces" --split all --dae "$work/basis.safetensors" --basis "$work/basis.safetensors" --batch 4 --out "$work/bad2" $q \
  >"$work/msg" 2>&1 && fail "a DAE file without dae.* tensors was accepted"
grep -q "no dae.\* tensors" "$work/msg" || { cat "$work/msg"; fail "no message for the wrong DAE file"; }
"$pin" train --data "$work/faces" --split all --dae "$work/dae_a/dae.safetensors" --basis "$work/basis.safetensors" --batch 4096 \
  --out "$work/bad3" $q >"$work/msg" 2>&1 && fail "a batch too large for memory was accepted"
grep -q "needs about .* GiB of memory" "$work/msg" || { cat "$work/msg"; fail "no memory message for a huge batch"; }
echo "train check passed"
