#!/usr/bin/env python3
"""What ptxas makes of every kernel in cuda/: registers, spill stores and loads, shared memory, per
kernel template (over its instantiations), and every warning ptxas gives (among them the one that
matters most for the warpgroup-MMA kernels: "wgmma.mma_async instructions are serialized"). A spill
is a store to local memory (L1, else L2) inside the kernel: cheap once, costly in a GEMM's main
loop. Measurable without a GPU, from the same nvcc flags the build uses (sm_90 for cuda/'s
translation units, sm_90a for ops_wgmma.cu).

usage: python3 bench/ptxas_report.py [--jobs N] [--detail] [--check] [--nvcc PATH]
       (nvcc from PATH or /usr/local/cuda/bin; --detail lists every instantiation that spills;
       about 1.5 minutes with 2 jobs on 2 cores)

--check (CTest ptxas_resources) fails on any ptxas warning or "Performance Loss" message (a
serialised wgmma runs at a fraction of its rate, and a build only prints that as an info line among
its compile output, without failing), and on a GEMM kernel (GEMM_KERNELS) spilling more than SPILL_LIMIT bytes
in any instantiation: their spills sit in the main loop, once per K slice. At session 26 the worst
were 60 B (the asynchronous-copy kernel's 256-row sub-pixel forms) and 96 B (the TF32 WMMA
kernel's row-gather sub-pixel forms; 616 B before its row gather became a template parameter).
It also fails where an instantiation on the wide m64n256k16 / m64n224k16 / m64n200k16 tiles (WIDE_TILE) launches with other
than WIDE_LAUNCH_REGISTERS registers a thread: their warpgroups move registers among themselves
(setmaxnreg: the producer down to 40, the two MMA warpgroups up to 232), which needs the block to
hold 384 x 168 = 64,512 from the launch on; with fewer the MMA warpgroups' request could never be
met and the kernel would hang on a GPU.
"""
import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Each translation unit and its target, as cuda/CMakeLists.txt builds them.
UNITS = [("ops_conv_forward.cu", "sm_90"), ("ops_conv_backward.cu", "sm_90"), ("ops_linear.cu", "sm_90"), ("ops.cu", "sm_90"),
         ("rng.cu", "sm_90"), ("ops_wgmma.cu", "sm_90a")]
GEMM_KERNELS = ("gemm_kernel", "gemm_tensor_core_kernel", "gemm_wide_kernel", "gemm_async_kernel", "gemm_wgmma_kernel",
                "gemm_wgmma_ws_kernel")
SPILL_LIMIT = 128  # bytes of spill stores or loads per thread
# cuda/wgmma_gemm.cuh WgmmaWsWideTile (128 x 256), WgmmaPingPongWideSwappedTile (224 x 64) and
# WgmmaWsWideSwappedTile (200 x 128), and
# the registers a thread they launch with (producers 128 x 40 + consumers 256 x 232 = 384 x 168).
WIDE_TILE = re.compile(r"WgmmaWsTile<(256, \d+, 128, false, false, true|64, \d+, 224, true, true, true|128, \d+, 200, true, false, true)>")
WIDE_LAUNCH_REGISTERS = 168


def nvcc_path(given):
    found = given or shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    if not os.path.exists(found):
        sys.exit("ptxas_report.py: nvcc not found (not on PATH, not in /usr/local/cuda/bin)")
    return found


def compile_unit(nvcc, unit, arch, workdir):
    """ptxas -v's report of one translation unit (its stderr)."""
    code = f"arch=compute_{arch[3:]},code={arch}"
    cmd = [nvcc, "-std=c++17", "-O3", "-DNDEBUG", "--extended-lambda", f"--generate-code={code}", "-Xptxas", "-v",
           "-I", os.path.join(ROOT, "cuda"), "-I", os.path.join(ROOT, "include"), "-c", os.path.join(ROOT, "cuda", unit),
           "-o", os.path.join(workdir, unit + ".o")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"ptxas_report.py: nvcc failed on cuda/{unit}:\n{r.stderr[-3000:]}")
    return r.stdout + r.stderr


def demangle(names):
    tool = shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.split("\n")
    return dict(zip(names, out))


def template_of(pretty):
    """The kernel's name without its template arguments and namespaces: gemm_wgmma_kernel."""
    head = pretty.replace("(anonymous namespace)::", "").split("(")[0]
    depth, name = 0, ""
    for c in head:  # drop everything inside <...>
        if c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
        elif depth == 0:
            name += c
    return name.replace("void ", "").strip().split("::")[-1]


def parse(report):
    """[(mangled name, registers, spill stores, spill loads, shared bytes)] and the warnings."""
    kernels, warnings, current, properties_of = [], [], None, None
    for line in report.splitlines():
        if "warning" in line.lower() or "Performance Loss" in line:
            warnings.append(line.strip())
        m = re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            current = [m.group(1), 0, 0, 0, 0]
            kernels.append(current)
            continue
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            properties_of = m.group(1)  # an entry, or a device function that was not inlined
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and properties_of == current[0]:
            current[2], current[3] = int(m.group(1)), int(m.group(2))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current[1] = int(m.group(1))
            m = re.search(r"(\d+) bytes smem", line)
            current[4] = int(m.group(1)) if m else 0
    return kernels, warnings


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--detail", action="store_true", help="list every instantiation that spills")
    ap.add_argument("--check", action="store_true", help="exit 1 on a ptxas warning or a GEMM kernel spilling over the limit")
    ap.add_argument("--nvcc", help="the nvcc to use (default: PATH, then /usr/local/cuda/bin)")
    args = ap.parse_args()
    nvcc = nvcc_path(args.nvcc)
    with tempfile.TemporaryDirectory() as work, ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        reports = list(pool.map(lambda u: (u[0], u[1], compile_unit(nvcc, u[0], u[1], work)), UNITS))
    rows, warnings = [], []
    for unit, arch, report in reports:
        kernels, warns = parse(report)
        rows += [(unit, arch, *k) for k in kernels]
        warnings += [f"{unit}: {w}" for w in warns]
    pretty = demangle(sorted({r[2] for r in rows}))
    by_template = collections.OrderedDict()
    for unit, arch, name, regs, stores, loads, smem in rows:
        by_template.setdefault((template_of(pretty[name]), arch), []).append((regs, stores, loads, smem, unit, pretty[name]))
    print(f"{'kernel':32s} {'arch':7s} {'inst.':>5s} {'registers':>10s} {'spilling':>8s} {'spill stores':>13s} {'spill loads':>12s} {'static smem':>11s}")
    for (template, arch), ks in sorted(by_template.items()):
        regs = [k[0] for k in ks]
        spilling = [k for k in ks if k[1] or k[2]]
        print(f"{template:32s} {arch:7s} {len(ks):5d} {min(regs):>4d}-{max(regs):<5d} {len(spilling):8d} "
              f"{max(k[1] for k in ks):>10d} B {max(k[2] for k in ks):>9d} B {max(k[3] for k in ks):>9d} B")
    print(f"{len(rows)} kernels; spill columns: the largest over the instantiations; static smem excludes dynamic shared memory")
    if args.detail:
        for (template, arch), ks in sorted(by_template.items()):
            for regs, stores, loads, smem, unit, name in ks:
                if stores or loads:
                    print(f"  {unit}: {regs} registers, {stores} B stores / {loads} B loads: {name[:300]}")
    print(f"ptxas warnings: {len(warnings)}")
    for w in warnings:
        print("  " + w)
    if args.check:
        over = [(unit, stores, loads, name) for (template, _), ks in by_template.items() if template in GEMM_KERNELS
                for regs, stores, loads, smem, unit, name in ks if max(stores, loads) > SPILL_LIMIT]
        for unit, stores, loads, name in over:
            print(f"FAIL: {unit}: {stores} B spill stores / {loads} B loads (limit {SPILL_LIMIT}): {name[:300]}")
        wide = [(unit, regs, name) for ks in by_template.values() for regs, stores, loads, smem, unit, name in ks if WIDE_TILE.search(name)]
        off = [(unit, regs, name) for unit, regs, name in wide if regs != WIDE_LAUNCH_REGISTERS]
        for unit, regs, name in off:
            print(f"FAIL: {unit}: a wide tile's kernel launches with {regs} registers a thread, not {WIDE_LAUNCH_REGISTERS} (setmaxnreg): {name[:300]}")
        if not wide:
            print("FAIL: no instantiation on the wide tiles found (WIDE_TILE out of step with cuda/wgmma_gemm.cuh?)")
        if warnings:
            print(f"FAIL: {len(warnings)} ptxas warning(s), above")
        if over or off or not wide or warnings:
            sys.exit(1)
        print(f"check passed: no ptxas warning; the GEMM kernels ({', '.join(GEMM_KERNELS)}) spill at most {SPILL_LIMIT} B; "
              f"the {len(wide)} wide-tile instantiations launch with {WIDE_LAUNCH_REGISTERS} registers")


if __name__ == "__main__":
    main()
