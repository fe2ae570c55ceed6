#!/usr/bin/env python3
"""An independent PyTorch implementation of the face-api / dlib ResNet (written from the package's
src/faceRecognitionNet/*.ts: RGB 150x150 input, mean subtraction, conv + scale layers, residual
and residual-down blocks with their zero padding), fed the 112x112 gray face upsampled bilinearly and
replicated to RGB. Its embeddings of 100 faces must match `pin embed` within 1e-4 cosine distance.
Faces: ../shared/data/lfw112 when present, else synthetic. Exit 77 (CTest: skipped) without
PyTorch or without the face-api weights.

  recognizer_check.py PATH_TO_PIN WORK_DIR MANIFEST
"""
import json
import math
import os
import random
import struct
import subprocess
import sys
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
try:
    import numpy as np
    import torch
    import torch.nn.functional as F
except ImportError:
    print("SKIPPED: PyTorch is not installed (Debian: apt-get install python3-torch)")
    sys.exit(77)
sys.path.insert(0, os.path.join(ROOT, "examples"))
from convert_torch_checkpoint import read_safetensors  # noqa: E402


def load_tfjs(manifest_path):
    groups = json.load(open(manifest_path))
    out = {}
    for g in groups:
        data = b"".join(open(os.path.join(os.path.dirname(manifest_path), p), "rb").read() for p in g["paths"])
        off = 0
        for w in g["weights"]:
            n = int(np.prod(w["shape"])) if w["shape"] else 1
            q = w.get("quantization")
            if q and q["dtype"] == "uint8":
                v = np.frombuffer(data, np.uint8, n, off).astype(np.float64) * q["scale"] + q["min"]
                off += n
            elif q and q["dtype"] == "uint16":
                v = np.frombuffer(data, np.uint16, n, off).astype(np.float64) * q["scale"] + q["min"]
                off += 2 * n
            elif q and q["dtype"] == "float16":
                v = np.frombuffer(data, np.float16, n, off).astype(np.float64)
                off += 2 * n
            else:
                v = np.frombuffer(data, np.float32, n, off).astype(np.float64)
                off += 4 * n
            out[w["name"]] = torch.tensor(v.reshape(w["shape"]), dtype=torch.float64)
    return out


class DlibNet:
    def __init__(self, w):
        self.w = w

    def conv(self, x, prefix, stride, padding, relu):
        f = self.w[prefix + "/conv/filters"].permute(3, 2, 0, 1)  # HWIO -> OIHW
        y = F.conv2d(x, f, self.w[prefix + "/conv/bias"], stride=stride, padding=padding)
        y = y * self.w[prefix + "/scale/weights"].view(1, -1, 1, 1) + self.w[prefix + "/scale/biases"].view(1, -1, 1, 1)
        return F.relu(y) if relu else y

    def residual(self, x, p):
        return F.relu(self.conv(self.conv(x, p + "/conv1", 1, 1, True), p + "/conv2", 1, 1, False) + x)

    def residual_down(self, x, p):
        out = self.conv(self.conv(x, p + "/conv1", 2, 0, True), p + "/conv2", 1, 1, False)
        pooled = F.avg_pool2d(x, 2, 2)
        if pooled.shape[2] != out.shape[2]:  # tf pads the conv branch at the bottom and right
            out = F.pad(out, (0, pooled.shape[3] - out.shape[3], 0, pooled.shape[2] - out.shape[2]))
        if pooled.shape[1] != out.shape[1]:
            pooled = torch.cat([pooled, torch.zeros_like(pooled)], 1)
        return F.relu(pooled + out)

    def __call__(self, gray112):  # (B, 112, 112) in [-1, 1]
        x = ((gray112 + 1) * 127.5).unsqueeze(1)
        x = F.interpolate(x, size=(150, 150), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
        x = (x - torch.tensor([122.782, 117.001, 104.298], dtype=x.dtype).view(1, 3, 1, 1)) / 255
        x = F.max_pool2d(self.conv(x, "conv32_down", 2, 0, True), 3, 2)
        for name in ["conv32_1", "conv32_2", "conv32_3", "conv64_down", "conv64_1", "conv64_2", "conv64_3", "conv128_down",
                     "conv128_1", "conv128_2", "conv256_down", "conv256_1", "conv256_2", "conv256_down_out"]:
            x = self.residual_down(x, name) if "down" in name else self.residual(x, name)
        return x.mean((2, 3)) @ self.w["fc"]


def png(path, px):
    raw = b"".join(b"\x00" + bytes(px[y * 112:(y + 1) * 112]) for y in range(112))
    ch = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    open(path, "wb").write(b"\x89PNG\r\n\x1a\n" + ch(b"IHDR", struct.pack(">IIBBBBB", 112, 112, 8, 0, 0, 0, 0)) +
                           ch(b"IDAT", zlib.compress(raw)) + ch(b"IEND", b""))


def main():
    pin, work, manifest = sys.argv[1:4]
    if not os.path.exists(manifest):
        print("SKIPPED: %s missing (./setup.sh fetches the face-api weights)" % manifest)
        sys.exit(77)
    os.makedirs(work, exist_ok=True)
    lfw = os.path.join(ROOT, "..", "shared", "data", "lfw112", "images")
    files = []
    if os.path.isdir(lfw):
        people = sorted(os.listdir(lfw))
        for p in people[::max(1, len(people) // 100)][:100]:
            files.append(os.path.join(lfw, p, sorted(os.listdir(os.path.join(lfw, p)))[0]))
    else:
        rng = random.Random(5)
        for i in range(100):
            a, b = rng.uniform(0.03, 0.15), rng.uniform(0, 6)
            f = os.path.join(work, "face_%03d.png" % i)
            png(f, [max(0, min(255, int(128 + 70 * math.sin(a * x + b) * math.cos(a * y) + rng.gauss(0, 6))))
                    for y in range(112) for x in range(112)])
            files.append(f)
    lst = os.path.join(work, "faces.txt")
    open(lst, "w").write("\n".join(os.path.abspath(f) for f in files) + "\n")
    out = os.path.join(work, "emb.safetensors")
    subprocess.run([pin, "embed", "--in", lst, "--out", out, "--recognizer", manifest], check=True, stdout=subprocess.DEVNULL)
    ours = torch.tensor(np.asarray(read_safetensors(out)["embeddings"], dtype=np.float64))
    # The same 8-bit faces, decoded here.
    try:
        from PIL import Image
    except ImportError:
        print("SKIPPED: python3-pil is not installed")
        sys.exit(77)
    gray = torch.tensor(np.stack([np.asarray(Image.open(f).convert("L"), dtype=np.float64) / 127.5 - 1 for f in files]))
    with torch.no_grad():
        ref = DlibNet(load_tfjs(manifest))(gray)
    cos = F.cosine_similarity(ours, ref, dim=1)
    worst = float((1 - cos).max())
    rel = float(((ours - ref).norm(dim=1) / ref.norm(dim=1)).max())
    print("recognizer check: %d faces, worst cosine distance pin vs PyTorch %.3g (bar 1e-4), worst relative "
          "L2 difference %.3g" % (len(files), worst, rel))
    sys.exit(0 if worst < 1e-4 else 1)


if __name__ == "__main__":
    main()
