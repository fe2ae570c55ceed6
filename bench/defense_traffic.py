#!/usr/bin/env python3
"""The activation traffic of the GPU defense forward (cuda/gpu_defense.cpp), per image and per batch,
with activations stored as fp32 or bfloat16 (cuda/ops.cuh ActivationStorage): a model, not a
measurement. Each convolution is counted as reading its input once (the 3 x 3 taps' re-reads are
assumed to hit the L2 cache) and writing its output once (the residual blocks' second convolution,
which accumulates onto the shortcut's output, reads it too). Weights, the head and the projection are
left out (under 1 MB per image at batch 256). Also prints the convolutions' real FLOPs (transposed
stride-2 convolutions: a quarter of the taps), which the GPU kernels compute with GatherMode::Vector.

usage: python3 bench/defense_traffic.py [--batch 256] [--bandwidth-tbs 4.8]
"""
import argparse


def traffic(bf16):
    act = 2 if bf16 else 4
    total = 0
    flops = 0

    def conv(h_in, c_in, h_out, c_out, taps, in_bytes, out_bytes, accumulate=False):
        nonlocal total, flops
        total += h_in * h_in * c_in * in_bytes + h_out * h_out * c_out * out_bytes * (2 if accumulate else 1)
        flops += 2 * h_out * h_out * c_out * c_in * taps

    for _ in range(2):  # the DAE, twice; each pass starts from and ends with fp32 faces
        h, x_bytes = 112, 4
        for c_in, c_out in [(1, 64), (64, 128), (128, 256)]:  # res_block, stride 2, no shortcut
            conv(h, c_in, h, c_out, 9, x_bytes, act)
            conv(h, c_out, h // 2, c_out, 9, act, act)
            h, x_bytes = h // 2, act
        for i, (c_in, c_out) in enumerate([(256, 128), (128, 64), (64, 1)]):  # up_block
            conv(h, c_in, 2 * h, c_in, 9 / 4, act, act)  # transposed, stride 2
            h *= 2
            conv(h, c_in, h, c_out, 9, act, 4 if i == 2 else act)
        total += 112 * 112 * 4 * 2  # tanh, in place
    h = 112
    conv(h, 1, h, 64, 9, 4, act)  # the ESN's stem reads the DAE's fp32 output
    for c_in, c_out, s in [(64, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2),
                           (512, 512, 1)]:
        h_out = h // s
        conv(h, c_in, h, c_out, 9, act, act)
        conv(h_out, c_in, h_out, c_out, 1, act, act)  # the 1 x 1 shortcut reads the pixels it samples
        conv(h, c_out, h_out, c_out, 9, act, act, accumulate=True)
        h = h_out
    total += h * h * 512 * act + h * h * 512 * 4  # the head's flatten (nhwc_to_nchw) to fp32
    return total, flops


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--bandwidth-tbs", type=float, default=4.8, help="memory bandwidth in TB/s (H200: 4.8)")
    a = ap.parse_args()
    for bf16 in (False, True):
        t, f = traffic(bf16)
        ms = t * a.batch / (a.bandwidth_tbs * 1e12) * 1e3
        print("%-5s activations: %5.1f MB per image, %5.1f GB per batch of %d, %.2f ms at %.1f TB/s; convolutions %.2f GFLOP per image"
              % ("bf16" if bf16 else "fp32", t / 1e6, t * a.batch / 1e9, a.batch, ms, a.bandwidth_tbs, f / 1e9))


if __name__ == "__main__":
    main()
