#!/usr/bin/env python3
"""One policy-gradient training step of the PIN agent in PyTorch, for speed ratios with
`pin-bench train`: frozen DAE forward (twice), ESN + head forward and backward, k Bernoulli masks per
image, mask costs, REINFORCE with the batch-mean baseline, SGD with momentum. Random weights and
inputs. Two ways to cost a mask:
  --cost-mode o_n       the O(N) identity of the spec (c = B^T(x_n - m), d = B^T(x - m)), as pin does;
  --cost-mode released  the released code's way: every mask's reconstruction B diag(q) B^T (x_n - m) + m
                        computed on its own (two matrix-vector products with B per mask and image).
Prints one JSON object with images_per_second.
Usage: torch_train.py [--batch 8] [--masks 30] [--threads 2] [--iters 3] [--cost-mode o_n|released]
                      [--device cpu|cuda] [--tf32 on|off]
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    import torch
    from torch_agent import DAE, ESN, Head, configure_device
except ImportError:
    print(json.dumps({"error": "PyTorch is not installed (Debian: apt-get install python3-torch)"}))
    sys.exit(3)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--masks", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--cost-mode", default="o_n", choices=["o_n", "released"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--tf32", default="off", choices=["on", "off"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev, sync = configure_device(a.device, a.tf32)
    dae, esn, head = DAE().eval().to(dev), ESN().train().to(dev), Head().train().to(dev)
    opt = torch.optim.SGD(list(esn.parameters()) + list(head.parameters()), lr=0.01, momentum=0.9)
    D, N, B, k, lam = 112 * 112, 2500, a.batch, a.masks, 0.015
    basis = torch.linalg.qr(torch.randn(D, N, device=dev))[0]
    mean = torch.randn(D, device=dev) * 0.1
    x = torch.rand(B, 1, 112, 112, device=dev) * 2 - 1

    def step():
        eta = torch.randn_like(x)
        xn = x + 0.04 * eta * (x.flatten(1).norm(dim=1) / eta.flatten(1).norm(dim=1)).view(B, 1, 1, 1)
        with torch.no_grad():
            d_out = dae(xn)
        p = head(esn(d_out)).clamp(1e-6, 1 - 1e-6)
        q = (torch.rand(B, k, N, device=dev) < p.detach().unsqueeze(1)).float()
        with torch.no_grad():
            y = (x.reshape(B, D) - mean)
            c = (xn.reshape(B, D) - mean) @ basis
            if a.cost_mode == "o_n":
                dd = y @ basis
                g = c * c - 2 * c * dd
                S = (q * g.unsqueeze(1)).sum(-1) + (y * y).sum(-1, keepdim=True)
                err = S.clamp_min(0).sqrt()
            else:
                err = torch.empty(B, k, device=dev)
                for b in range(B):
                    for s in range(k):
                        cb = basis.t() @ (xn[b].reshape(D) - mean)
                        rec = basis @ (q[b, s] * cb) + mean
                        err[b, s] = (rec - x[b].reshape(D)).norm()
            cost = err + lam * q.sum(-1)
            adv = cost - cost.mean()
        logp = (q * torch.log(p.unsqueeze(1)) + (1 - q) * torch.log(1 - p.unsqueeze(1))).sum(-1)
        loss = (adv * logp).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    sync()
    t0 = time.perf_counter()
    for _ in range(a.iters):
        step()
    sync()
    t = time.perf_counter() - t0
    print(json.dumps({"peer": "pytorch", "torch_version": torch.__version__, "batch": B, "masks": k, "threads": a.threads,
                      "cost_mode": a.cost_mode, "device": a.device, "tf32": a.tf32, "images_per_second": B * a.iters / t}))


if __name__ == "__main__":
    main()
