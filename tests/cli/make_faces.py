#!/usr/bin/env python3
"""Writes synthetic 112x112 8-bit PGM 'faces' for the command-line checks: PEOPLE folders of
PER_PERSON images each, person-specific stripe patterns plus noise, from a fixed seed."""
import math
import os
import random
import sys

root, people, per_person, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
for p in range(people):
    d = os.path.join(root, "person_%02d" % p)
    os.makedirs(d, exist_ok=True)
    a, b = rng.uniform(0.02, 0.2), rng.uniform(0, 6.28)
    for k in range(per_person):
        px = bytes(max(0, min(255, int(128 + 60 * math.sin(a * x + b) * math.cos(a * y) + rng.gauss(0, 8))))
                   for y in range(112) for x in range(112))
        with open(os.path.join(d, "face_%d.pgm" % k), "wb") as f:
            f.write(b"P5\n112 112\n255\n" + px)
