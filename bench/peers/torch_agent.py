#!/usr/bin/env python3
"""The PIN agent forward in PyTorch, for side-by-side speed ratios with pin-bench.

Same network as ../shared/docs/pin-architecture.md and pin's model/ headers: DAE applied twice,
ESN, selection head, Bernoulli sampling and the masked eigenface projection, random weights.
Prints one JSON object: images_per_second, peak_rss_mib and per-stage milliseconds.
Usage: torch_agent.py [--batch 16] [--threads 2] [--iters 3] [--device cpu|cuda] [--tf32 on|off]
On cuda the stages are synchronised, cuDNN autotuning is on, and TF32 is off unless asked (fp32
like pin's kernels).
"""
import argparse
import json
import resource
import sys
import time

try:
    import torch
    import torch.nn as nn
except ImportError:
    print(json.dumps({"error": "PyTorch is not installed (Debian: apt-get install python3-torch)"}))
    sys.exit(3)


class ResBlock(nn.Module):
    def __init__(self, cin, cout, stride, shortcut=True):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.nolinear1 = nn.PReLU(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride, 1, bias=False)
        self.nolinear2 = nn.PReLU(cout)
        self.shortcut_layer = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False)) if shortcut else None

    def forward(self, x):
        y = self.nolinear2(self.conv2(self.nolinear1(self.conv1(x))))
        return y + self.shortcut_layer(x) if self.shortcut_layer is not None else y


class UpBlock(nn.Module):
    def __init__(self, cin, cout, last):
        super().__init__()
        self.conv1 = nn.ConvTranspose2d(cin, cin, 3, 2, 1, output_padding=1, bias=False)
        self.nolinear1 = nn.PReLU(cin)
        self.conv2 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.nolinear2 = nn.Tanh() if last else nn.PReLU(cout)

    def forward(self, x):
        return self.nolinear2(self.conv2(self.nolinear1(self.conv1(x))))


class DAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder1 = nn.Sequential(ResBlock(1, 64, 2, False), ResBlock(64, 128, 2, False), ResBlock(128, 256, 2, False))
        self.decoder1 = nn.Sequential(UpBlock(256, 128, False), UpBlock(128, 64, False), UpBlock(64, 1, True))

    def forward(self, x):
        return self.decoder1(self.encoder1(self.decoder1(self.encoder1(x))))


class ESN(nn.Module):
    def __init__(self):
        super().__init__()
        self.in_layer = nn.Sequential(nn.Conv2d(1, 64, 3, 1, 1, bias=False), nn.PReLU(64))
        spec = [(64, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2),
                (512, 512, 1)]
        for i, (cin, cout, s) in enumerate(spec):
            setattr(self, "block%d" % (i + 1), ResBlock(cin, cout, s))

    def forward(self, x):
        h = self.in_layer(x)
        for i in range(8):
            h = getattr(self, "block%d" % (i + 1))(h)
        return h


class Head(nn.Module):
    def __init__(self, n=2500):
        super().__init__()
        self.fc1 = nn.Sequential(nn.Flatten(), nn.Linear(512 * 7 * 7, 512), nn.PReLU(512))
        self.fc2 = nn.Sequential(nn.Linear(512, n), nn.Sigmoid())

    def forward(self, x):
        return self.fc2(self.fc1(x))


def configure_device(device, tf32):
    """The torch device, and a function that waits for it. On cuda: cuDNN autotuning, TF32 as asked."""
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = tf32 == "on"
        torch.backends.cuda.matmul.allow_tf32 = tf32 == "on"
    return torch.device(device), (torch.cuda.synchronize if device == "cuda" else (lambda: None))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--tf32", default="off", choices=["on", "off"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev, sync = configure_device(a.device, a.tf32)
    dae, esn, head = DAE().eval().to(dev), ESN().eval().to(dev), Head().eval().to(dev)
    D, N = 112 * 112, 2500
    basis = torch.randn(D, N, device=dev) * 0.01
    mean = torch.randn(D, device=dev) * 0.1
    x = torch.rand(a.batch, 1, 112, 112, device=dev) * 2 - 1
    stages = {"dae_ms": 0.0, "esn_ms": 0.0, "head_ms": 0.0, "sample_project_ms": 0.0}

    def run(record):
        with torch.no_grad():
            sync()
            t0 = time.perf_counter()
            d = dae(x)
            sync()
            t1 = time.perf_counter()
            f = esn(d)
            sync()
            t2 = time.perf_counter()
            p = head(f)
            sync()
            t3 = time.perf_counter()
            q = (p > torch.rand_like(p)).float()
            c = (x.reshape(a.batch, D) - mean) @ basis
            out = (q * c) @ basis.t() + mean
            sync()
            t4 = time.perf_counter()
        if record:
            for k, v in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                stages[k] += 1e3 * v / a.iters
        return out

    run(False)
    sync()
    t0 = time.perf_counter()
    for _ in range(a.iters):
        run(True)
    sync()
    t = time.perf_counter() - t0
    print(json.dumps({"peer": "pytorch", "torch_version": torch.__version__, "batch": a.batch, "threads": a.threads,
                      "device": a.device, "tf32": a.tf32,
                      "images_per_second": a.batch * a.iters / t,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                      "stages": stages}))


if __name__ == "__main__":
    main()
