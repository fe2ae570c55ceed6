#!/usr/bin/env python3
"""Instructions per K slice of the tensor-core GEMM kernels' main loops, read from the PTX that nvcc
makes of cuda/ops_*.cu (the GEMMs' translation units): a proxy, measurable without a GPU, for the issue slots a kernel spends beside
its tensor-core products (PTX is not the final machine code: ptxas may add or remove instructions,
and one PTX division is about twenty machine instructions).

For every instantiation of gemm_wide_kernel and gemm_async_kernel, the loop that holds the WMMA
products (from its label to the branch back) is counted: instructions, WMMA products, integer
divisions or remainders.

usage: for f in conv_forward conv_backward linear; do
         nvcc -std=c++17 -O3 --extended-lambda -arch=sm_90 -Iinclude -Icuda -ptx cuda/ops_$f.cu -o /tmp/ops_$f.ptx
       done
       python3 bench/ptx_loop_count.py /tmp/ops_*.ptx
"""
import re
import sys


def main_loop(lines):
    """(first, last) line of the loop that contains the first WMMA product, or None."""
    products = [i for i, l in enumerate(lines) if "wmma.mma" in l]
    if not products:
        return None
    first = products[0]
    labels = {m.group(1): i for i, l in enumerate(lines) if (m := re.match(r"^(\$L__BB\d+_\d+):", l))}
    loop = None
    for i in range(first, len(lines)):
        m = re.search(r"bra(?:\.uni)?\s+(\$L__BB\d+_\d+);", lines[i])
        if m and labels.get(m.group(1), len(lines)) < first:
            loop = (labels[m.group(1)], i)
    return loop


def describe(name):
    kernel = "wide" if "gemm_wide_kernel" in name else "async128" if "ELi128EE" in name else "async"  # AsyncTile<256, _, 128>
    for key, what in (("WeightGrad", "weight gradient"), ("SubpixelGather", "sub-pixel gather"), ("GatherILb1", "transposed gather"),
                      ("GatherILb0", "direct gather"), ("WideRowOperands", "row-major A")):
        if key in name:
            operand = what
            break
    else:
        operand = "?"
    source = "bf16 source" if re.search(r"Gather(ILb[01]E)?(I)?NS0_4Bf16", name) else "fp32 source"
    if "WideWeightGrad" in name or "WideRowOperands" in name:
        source = "fp32 source"
    if "AsyncWeightGrad" in name:
        source = "bf16 source"
    out = "bf16 out" if re.search(r"ConvStoreI(S\d_|NS0_4Bf16)", name) else "fp32 out"
    return "%-8s %-17s %-11s %s" % (kernel, operand, source, out)


def main():
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if len(sys.argv) == 2 else 2)
    ptx = "\n".join(open(f).read() for f in sys.argv[1:])
    rows = set()
    for entry in re.split(r"\n(?=\.(?:visible )?\.?entry )", ptx):
        m = re.match(r"\.(?:visible )?\.?entry (\S+?)\(", entry)
        if not m or not ("gemm_wide_kernel" in m.group(1) or "gemm_async_kernel" in m.group(1)):
            continue
        lines = entry.split("\n")
        loop = main_loop(lines)
        if loop is None:
            continue
        body = [l.strip() for l in lines[loop[0]:loop[1] + 1]]
        body = [l for l in body if l and not l.startswith(("$L", "//", "{", "}"))]
        rows.add((describe(m.group(1)), len(body), sum("wmma.mma" in l for l in body),
                  sum(bool(re.match(r"(div|rem)\.", l)) for l in body)))
    print("%-48s %12s %8s %8s" % ("kernel, operands", "instructions", "products", "div/rem"))
    for d, n, p, q in sorted(rows):
        print("%-48s %12d %8d %8d" % (d, n, p, q))


if __name__ == "__main__":
    main()
