#!/usr/bin/env python3
"""Convert the released PyTorch PIN checkpoints into a pin model folder (safetensors).

  convert_torch_checkpoint.py --esn ESN.pth --head HEAD.pth --dae DAE.pth [--eigen EIG.pth] -o MODEL_DIR

Each .pth holds a state_dict (or a dict with one under 'state_dict' or 'model'); a 'module.'
prefix (DataParallel) is dropped. Keys keep the released names, prefixed 'esn.', 'head.' and
'dae.' in MODEL_DIR/agent.safetensors. The released DAE class also defines a second, unused
encoder/decoder pair: only encoder1.* and decoder1.* are kept. --eigen is a dict with 'eig_vec'
(D x N, columns) and 'avg_face' (D) (and optionally 'eig_val'), written to
MODEL_DIR/eigenbasis.safetensors. Needs PyTorch (Debian: python3-torch); writes safetensors
itself, no other package.
"""
import argparse
import json
import os
import struct
import sys


def write_safetensors(path, tensors, metadata=None):
    """tensors: dict name -> numpy float32 array (C order). Written atomically."""
    header, offset, blobs = {}, 0, []
    for name, arr in tensors.items():
        data = arr.astype("<f4", copy=False).tobytes(order="C")
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":"))
    text += " " * ((8 - (8 + len(text)) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text.encode())
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def read_safetensors(path):
    import numpy as np
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        assert e["dtype"] == "F32", "%s: only F32 here" % name
        b, end = e["data_offsets"]
        out[name] = np.frombuffer(data[b:end], dtype="<f4").reshape(e["shape"]).copy()
    return out


def load_state(torch, path):
    obj = torch.load(path, map_location="cpu")
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if hasattr(obj, "state_dict"):
        obj = obj.state_dict()
    if not isinstance(obj, dict):
        sys.exit("%s: not a state_dict" % path)
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--esn", required=True)
    ap.add_argument("--head", required=True)
    ap.add_argument("--dae", required=True)
    ap.add_argument("--eigen")
    ap.add_argument("-o", "--out", required=True)
    a = ap.parse_args()
    try:
        import torch
    except ImportError:
        sys.exit("convert_torch_checkpoint.py: PyTorch is not installed (Debian: apt-get install python3-torch)")
    os.makedirs(a.out, exist_ok=True)
    tensors, dropped = {}, []
    for prefix, path in (("esn.", a.esn), ("head.", a.head), ("dae.", a.dae)):
        for k, v in load_state(torch, path).items():
            if not torch.is_tensor(v) or not v.is_floating_point():
                continue  # e.g. num_batches_tracked
            if prefix == "dae." and not (k.startswith("encoder1.") or k.startswith("decoder1.")):
                dropped.append(k)
                continue
            tensors[prefix + k] = v.detach().float().contiguous().numpy()
    if dropped:
        print("dropped %d unused DAE tensors (e.g. %s)" % (len(dropped), dropped[0]))
    write_safetensors(os.path.join(a.out, "agent.safetensors"), tensors, {"source": "convert_torch_checkpoint.py"})
    print("wrote %s (%d tensors)" % (os.path.join(a.out, "agent.safetensors"), len(tensors)))
    if a.eigen:
        e = torch.load(a.eigen, map_location="cpu")
        out = {k: torch.as_tensor(e[k]).float().contiguous().numpy() for k in ("eig_vec", "avg_face", "eig_val") if k in e}
        if "eig_vec" not in out or "avg_face" not in out:
            sys.exit("%s: needs eig_vec and avg_face" % a.eigen)
        write_safetensors(os.path.join(a.out, "eigenbasis.safetensors"), out, {"format": "pin-eigenbasis"})
        print("wrote %s" % os.path.join(a.out, "eigenbasis.safetensors"))


if __name__ == "__main__":
    main()
