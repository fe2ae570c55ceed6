#!/usr/bin/env python3
"""Eigenfaces the PyTorch way, for the time ratio with pin-bench eigen.

float64: mean, Gram matrix Xc Xc^T, torch.linalg.eigh, top-k back-projection Xc^T V / sqrt(lambda).
Synthetic faces of the same size as pin-bench eigen's (the time does not depend on the values).
Prints one JSON object. Usage: torch_eigen.py [--count 5000] [--keep 2500] [--threads 2]
"""
import argparse
import json
import sys
import time

try:
    import torch
except ImportError:
    print(json.dumps({"error": "PyTorch is not installed (Debian: apt-get install python3-torch)"}))
    sys.exit(3)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--keep", type=int, default=2500)
    ap.add_argument("--pixels", type=int, default=112 * 112)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    faces = (torch.rand(a.count, a.pixels) * 2 - 1).float()
    t0 = time.perf_counter()
    x = faces.double()
    xc = x - x.mean(0, keepdim=True)
    g = xc @ xc.t()
    t1 = time.perf_counter()
    values, vectors = torch.linalg.eigh(g)
    t2 = time.perf_counter()
    top = torch.flip(values, [0])[: a.keep]
    v = torch.flip(vectors, [1])[:, : a.keep]
    basis = (xc.t() @ v) / torch.sqrt(top)
    t3 = time.perf_counter()
    print(json.dumps({"peer": "pytorch", "count": a.count, "keep": a.keep, "threads": a.threads,
                      "gram_s": t1 - t0, "eigh_s": t2 - t1, "backproject_s": t3 - t2, "total_s": t3 - t0,
                      "basis_shape": list(basis.shape)}))


if __name__ == "__main__":
    main()
