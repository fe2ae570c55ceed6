#!/usr/bin/env python3
"""Writes a tiny synthetic LFW-style folder for the command-line checks: ROOT/images/<name>/
<name>_0001.png and _0002.png (112x112 8-bit gray, person-specific patterns plus noise, fixed seed)
for PEOPLE people (even), and ROOT/pairs.txt with one fold of PEOPLE/2 same-person pairs (the first
half) and PEOPLE/2 different-person pairs (the second half against its neighbours)."""
import math
import os
import random
import struct
import sys
import zlib

root, count = sys.argv[1], int(sys.argv[2])
assert count >= 2 and count % 2 == 0, "PEOPLE must be even"
rng = random.Random(3)


def png(path, px):
    raw = b"".join(b"\x00" + bytes(px[y * 112:(y + 1) * 112]) for y in range(112))
    ch = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    open(path, "wb").write(b"\x89PNG\r\n\x1a\n" + ch(b"IHDR", struct.pack(">IIBBBBB", 112, 112, 8, 0, 0, 0, 0)) +
                           ch(b"IDAT", zlib.compress(raw)) + ch(b"IEND", b""))


people = ["Person_%c" % chr(65 + i) for i in range(count)]
for p in people:
    os.makedirs(os.path.join(root, "images", p))
    a, b = rng.uniform(0.03, 0.15), rng.uniform(0, 6)
    for k in (1, 2):
        px = [max(0, min(255, int(128 + 70 * math.sin(a * x + b) * math.cos(a * y) + rng.gauss(0, 6)))) for y in range(112) for x in range(112)]
        png(os.path.join(root, "images", p, "%s_%04d.png" % (p, k)), px)
half = count // 2
with open(os.path.join(root, "pairs.txt"), "w") as f:
    f.write("1\t%d\n" % half)
    for p in people[:half]:
        f.write("%s\t1\t2\n" % p)
    for i in range(half):
        f.write("%s\t1\t%s\t2\n" % (people[half + i], people[(half + 1 + i) % count]))
