#!/usr/bin/env python3
"""Warp-stall samples of one kernel per CUDA source line, from an Nsight Compute report.

ncu's own per-line view needs the sources on the profiling machine and did not print its
metrics there (session 8), while its SASS view does. This maps the SASS view back to source
lines with the object's line table (`nvdisasm -g`), on any machine with cuobjdump and nvdisasm
(the CUDA toolkit, or the nvidia-cuda-cuobjdump / nvidia-cuda-nvdisasm wheels).

  ncu --import R.ncu-rep --page source --csv --print-source sass > R_sass.csv   # GPU machine
  dev/kernels/ncu_lines.py R_sass.csv build-gpu/lookup.o plan_small_fused_kernelILi128E13__nv_bfloat16Li1ELb0E

The object must be the one that was profiled (same build): the SASS view's instruction count
and mnemonics are checked against it. Prints the top lines (share of all samples, samples,
file:line, the source text when the file is found under src/).
"""
import argparse
import collections
import csv
import io
import os
import re
import subprocess
import sys
import tempfile


def kernel_sass(obj, name):
    """[(offset, (file, line), instruction)] of the one kernel whose symbol contains `name`."""
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["cuobjdump", "-xelf", "all", os.path.abspath(obj)], cwd=d, check=True,
                       capture_output=True)
        cubins = [f for f in os.listdir(d) if f.endswith(".cubin")]
        if not cubins:
            sys.exit(f"{obj}: no cubin inside")
        text = ""
        for c in cubins:
            text += subprocess.run(["nvdisasm", "-g", "-c", os.path.join(d, c)], check=True,
                                   capture_output=True, text=True).stdout
    lines = text.splitlines()
    heads = [i for i, l in enumerate(lines)
             if l.lstrip().startswith(".text.") and l.rstrip().endswith(":") and name in l]
    if len(heads) != 1:
        found = [lines[i].strip() for i in heads][:8]
        sys.exit(f"kernel '{name}': {len(heads)} matches {found}; give a longer name")
    out, loc = [], None
    for l in lines[heads[0] + 1:]:
        if l.lstrip().startswith(".text.") and l.rstrip().endswith(":"):
            break
        m = re.search(r'//## File "([^"]+)", line (\d+)', l)
        if m:
            loc = (m.group(1), int(m.group(2)))
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s*(.*?);", l)
        if m:
            out.append((int(m.group(1), 16), loc, m.group(2).strip()))
    return out


def opcode(ins):
    """Mnemonic without its predicate: '@!P0 BRA 0x..' -> 'BRA'."""
    parts = ins.split()
    if parts and parts[0].startswith("@"):
        parts = parts[1:]
    return parts[0] if parts else ""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sass_csv")
    ap.add_argument("obj", help="object, library or cubin holding the profiled kernel")
    ap.add_argument("kernel", help="substring of the kernel's mangled name (unique)")
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()

    txt = open(args.sass_csv, errors="replace").read().splitlines()
    try:
        hi = next(i for i, l in enumerate(txt) if '"Warp Stall Sampling' in l)
    except StopIteration:
        sys.exit(f"{args.sass_csv}: no 'Warp Stall Sampling' column (profile with SourceCounters)")
    rows = list(csv.reader(io.StringIO("\n".join(txt[hi:]))))
    hdr = rows[0]
    ia, iad, isrc = (hdr.index("Warp Stall Sampling (All Samples)"), hdr.index("Address"),
                     hdr.index("Source"))
    data = [(int(r[iad], 16), float(r[ia] or 0), r[isrc]) for r in rows[1:] if len(r) > ia]
    sass = kernel_sass(args.obj, args.kernel)
    if len(sass) != len(data):
        sys.exit(f"profiled kernel has {len(data)} instructions, the object's {len(sass)}: "
                 "not the same build")
    bad = sum(opcode(ins) != opcode(src) for (_, _, ins), (_, _, src) in zip(sass, data))
    if bad > len(data) // 100:
        sys.exit(f"{bad} of {len(data)} instructions differ: not the same build")
    base = data[0][0]
    loc_of = {off: loc for off, loc, _ in sass}
    agg, tot = collections.Counter(), 0.0
    for addr, s, _ in data:
        agg[loc_of.get(addr - base)] += s
        tot += s
    tot = tot or 1.0
    print(f"{args.kernel}: {tot:.0f} samples over {len(data)} instructions")
    for loc, s in agg.most_common(args.top):
        src = ""
        # The line table holds the build machine's paths; the CUDA sources are looked up by name.
        path = loc and next((p for p in (loc[0], os.path.join("src/backend/cuda", os.path.basename(loc[0])))
                             if os.path.isfile(p)), None)
        if path:
            with open(path) as f:
                fl = f.read().splitlines()
            src = fl[loc[1] - 1].strip() if loc[1] <= len(fl) else ""
        where = f"{os.path.basename(loc[0])}:{loc[1]}" if loc else "?"
        print(f"{100 * s / tot:6.2f}% {s:7.0f}  {where:24s} {src[:90]}")


if __name__ == "__main__":
    main()
