#!/usr/bin/env python3
"""Executed warp instructions and stall samples of one profiled kernel, per SASS opcode class.

Reads the SASS view Nsight Compute exports (`gpu_profile.sh` writes it as NAME_sass.csv.xz) and
needs no object file, unlike ncu_lines.py, so it also serves when the profiled object's line
table no longer matches the sources. With --warps and --tiles it also prints the instructions
per warp and key tile (prefill attention: warps = CTAs x warps per CTA, tiles = key tiles per
CTA).

  dev/kernels/ncu_opcodes.py prerunwg128_sass.csv.xz --warps 1056 --tiles 412
"""
import argparse
import collections
import csv
import io
import lzma
import re

MMA = {"HGMMA", "HMMA"}
MEM = {"LDS", "STS", "LDG", "STG", "LDGSTS", "LDSM", "LDC", "LDL", "STL", "ATOMS", "ATOMG", "RED",
       "LDGDEPBAR", "DEPBAR"}
CTRL = {"BRA", "BSSY", "BSYNC", "BAR", "EXIT", "WARPSYNC", "WARPGROUP", "NOP", "YIELD", "CALL", "RET",
        "MEMBAR", "FENCE", "ERRBAR", "CCTL", "ACQBULK", "SYNCS", "ELECT", "VOTE", "SHFL", "NANOSLEEP"}


def opclass(op):
    if op in MMA:
        return "mma"
    if op in MEM:
        return "mem"
    if op in CTRL:
        return "ctrl/sync/shuffle"
    if op == "MUFU" or op.startswith("F") or op.startswith("HADD") or op.startswith("HMUL"):
        return "fp"
    return "int/addr/move"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sass_csv", help="NAME_sass.csv or .csv.xz from gpu_profile.sh")
    ap.add_argument("--warps", type=int, default=0)
    ap.add_argument("--tiles", type=int, default=0)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    raw = lzma.open(args.sass_csv, "rt") if args.sass_csv.endswith(".xz") else open(args.sass_csv)
    rows = list(csv.reader(io.StringIO(raw.read())))
    hdr, data = rows[1], rows[2:]
    src = hdr.index("Source")
    smp = hdr.index("Warp Stall Sampling (All Samples)")
    exe = hdr.index("Instructions Executed")
    samples, executed, classes = collections.Counter(), collections.Counter(), collections.Counter()
    for r in data:
        if len(r) <= max(smp, exe):
            continue
        op = re.sub(r"^@!?U?P[0-9T]+\s+", "", r[src].strip()).split(" ")[0].split(".")[0]
        try:
            s = float(r[smp].replace(",", "") or 0)
            e = float(r[exe].replace(",", "") or 0)
        except ValueError:
            continue
        samples[op] += s
        executed[op] += e
        classes[opclass(op)] += e
    ts, te = sum(samples.values()) or 1, sum(executed.values()) or 1
    print(f"{rows[0][1][:90]}\n{te:.3g} warp instructions executed, {ts:.0f} stall samples")
    if args.warps and args.tiles:
        print(f"{te / args.warps / args.tiles:.0f} per warp and key tile")
    print("by class: " + ", ".join(f"{k} {100 * v / te:.0f}%" for k, v in classes.most_common()))
    for op, s in samples.most_common(args.top):
        print(f"  {op:12s} {100 * s / ts:5.1f}% of samples  {100 * executed[op] / te:5.1f}% of executed")


if __name__ == "__main__":
    main()
