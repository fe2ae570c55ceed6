#!/usr/bin/env python3
"""PyTorch model with random weights -> state_dict files -> convert_torch_checkpoint.py ->
pin agent-forward; pin's DAE output, ESN features and p must equal PyTorch's within 1e-4
(relative to each tensor's largest magnitude). Exit 77 (CTest: skipped) without PyTorch.

  roundtrip.py PATH_TO_PIN WORK_DIR
"""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

try:
    import torch
except ImportError:
    print("SKIPPED: PyTorch is not installed (Debian: apt-get install python3-torch)")
    sys.exit(77)

sys.path.insert(0, os.path.join(ROOT, "bench", "peers"))
sys.path.insert(0, os.path.join(ROOT, "examples"))
from torch_agent import DAE, ESN, Head  # noqa: E402
from convert_torch_checkpoint import read_safetensors, write_safetensors  # noqa: E402


def randomise(model, seed):
    # Variance-preserving weights and distinct PReLU slopes, so every layer carries signal
    # (PyTorch's default init shrinks a face to ~1e-9 through the DAE and would hide mistakes).
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 4:
                fan_in = p.shape[1] * p.shape[2] * p.shape[3]
                if "decoder" in name and "conv1" in name:  # ConvTranspose: (in, out, k, k), stride 2
                    fan_in = p.shape[0] * p.shape[2] * p.shape[3] / 4
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / fan_in) ** 0.5 * 0.9)
            elif p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
            elif p.dim() == 1 and name.endswith("weight"):  # every 1-D weight is a PReLU slope
                p.copy_(0.25 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def main():
    pin, work = sys.argv[1], sys.argv[2]
    os.makedirs(work, exist_ok=True)
    torch.manual_seed(0)
    dae, esn, head = DAE().eval(), ESN().eval(), Head(2500).eval()
    for i, m in enumerate((dae, esn, head)):
        randomise(m, 10 + i)
    for name, m in (("dae", dae), ("esn", esn), ("head", head)):
        torch.save(m.state_dict(), os.path.join(work, name + ".pth"))
    model_dir = os.path.join(work, "model")
    subprocess.run([sys.executable, os.path.join(ROOT, "examples", "convert_torch_checkpoint.py"),
                    "--esn", os.path.join(work, "esn.pth"), "--head", os.path.join(work, "head.pth"),
                    "--dae", os.path.join(work, "dae.pth"), "-o", model_dir], check=True)
    x = torch.rand(2, 1, 112, 112, generator=torch.Generator().manual_seed(5)) * 2 - 1
    write_safetensors(os.path.join(work, "x.safetensors"), {"x": x.numpy()})
    subprocess.run([pin, "agent-forward", "--model", model_dir, "--in", os.path.join(work, "x.safetensors"),
                    "--out", os.path.join(work, "y.safetensors"), "--threads", "2"], check=True)
    ours = read_safetensors(os.path.join(work, "y.safetensors"))
    with torch.no_grad():
        d = dae(x)
        f = esn(d)
        p = head(f)
    worst = 0.0
    for name, ref in (("dae", d), ("features", f), ("p", p)):
        got = torch.from_numpy(ours[name])
        scale = ref.abs().max().item()
        err = (got - ref).abs().max().item() / max(scale, 1e-30)
        print("%-9s max |pin - torch| / max|torch| = %.2e  (max|torch| = %.3g)" % (name, err, scale))
        worst = max(worst, err)
        if scale < 1e-3:
            print("FAIL: %s carries no signal; the check would be vacuous" % name)
            return 1
    frac = ((p > 0.01) & (p < 0.99)).float().mean().item()
    print("fraction of p inside (0.01, 0.99): %.2f" % frac)
    if worst > 1e-4:
        print("FAIL: pin and PyTorch differ by more than 1e-4")
        return 1
    print("roundtrip: pin matches PyTorch within 1e-4")
    return 0


if __name__ == "__main__":
    sys.exit(main())
