#!/usr/bin/env python3
"""The fastest defense-forward and training-step variants of a pin-bench-gpu output at one batch size.

    python3 bench/rank_stages.py BENCH_TXT [--batch 256] [--top 6]

Reads the JSON lines pin-bench-gpu prints (bench/gpu_check.sh collects them in bench.txt) and prints,
per kind (defense forward, training step), the variants by images/s, fastest first, and the errors:
the line the next session reads to choose the --gpu-math bf16 defaults.
"""
import argparse
import json
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench_txt")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--top", type=int, default=6)
    args = ap.parse_args()
    try:
        lines = open(args.bench_txt).read().splitlines()
    except OSError as e:
        sys.exit(f"rank_stages.py: cannot read {args.bench_txt}: {e.strerror}")
    timed, failed = {}, {}
    for line in lines:
        if not line.startswith("{"):
            continue
        try:
            j = json.loads(line)
        except ValueError:
            continue  # a line cut short by a timeout
        stage = j.get("stage", "")
        kind = "defense" if stage.startswith("defense_forward") else "training" if stage.startswith("training_step") else None
        if kind is None or stage.endswith("_profile") or j.get("batch") != args.batch:
            continue
        if (j.get("math"), j.get("gather")) != ("bf16", "vector"):  # the other configurations' stages share names
            stage += f" [{j.get('math')} {j.get('gather')}]"
        if "error" in j:
            failed.setdefault(kind, []).append(stage)
        elif "images_per_second" in j:
            timed.setdefault(kind, []).append((j["images_per_second"], stage))
    for kind in ("defense", "training"):
        ranked = sorted(timed.get(kind, []), reverse=True)[: args.top]
        text = ", ".join(f"{stage} {ips:,.0f}" for ips, stage in ranked) or "none timed"
        print(f"fastest {kind} at batch {args.batch} (images/s): {text}")
        if failed.get(kind):
            print(f"  failed: {', '.join(failed[kind])}")


if __name__ == "__main__":
    main()
