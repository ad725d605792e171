#!/usr/bin/env python3
"""Instruction count of a kernel's innermost loop that holds a given opcode, from its SASS.

Why: the prefill attention's cost per key tile is mostly the instructions each warp issues per
tile (session 13's ncu: 5.2 cycles between a warp's instructions, SM throughput 35%), and with
no GPU lent the SASS is what can be measured. The session 16 numbers in NOTES.md (v19's loop
631 instructions, v24's 520 -> 426, the producer's 386 -> 145) come from this script.

Usage: sass_loop.py OBJ KERNEL_SUBSTRING OPCODE [MIN]
  OBJ: a .o built for sm_90a (nvcc -c); KERNEL_SUBSTRING: part of the mangled name (the first
  matching function is used, e.g. attn_ws_kernelI13__nv_bfloat16); OPCODE: an opcode whose
  innermost enclosing loop is counted (HGMMA for the consumer loop); MIN (default 1): skip
  loops of fewer instructions (ptxas wraps some single instructions in a small loop over
  distinct addresses, e.g. the producer's ARRIVES: `... ARRIVES 20` gives its tile loop).
Prints the loop's address range, its instruction count and an opcode histogram. Needs
cuobjdump on PATH or in CUOBJDUMP (pip wheel nvidia-cuda-cuobjdump).
"""
import collections
import os
import re
import subprocess
import sys


def main():
    if len(sys.argv) not in (4, 5):
        print(__doc__)
        return 2
    obj, kern, opcode = sys.argv[1:4]
    min_len = int(sys.argv[4]) if len(sys.argv) == 5 else 1
    tool = os.environ.get("CUOBJDUMP", "cuobjdump")
    try:
        sass = subprocess.run([tool, "-sass", obj], capture_output=True, text=True,
                              check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"{tool} -sass {obj} failed ({e}); set CUOBJDUMP to a cuobjdump binary")
        return 1
    ins, on = [], False
    for line in sass.splitlines():
        if "Function :" in line:
            on = kern in line and not ins
            continue
        m = re.match(r"\s*/\*([0-9a-f]+)\*/\s+(.*?);", line)
        if on and m:
            ins.append((int(m.group(1), 16), m.group(2)))
    if not ins:
        print(f"no function matching {kern} in {obj}")
        return 1
    pos = [a for a, t in ins if opcode in t]
    if not pos:
        print(f"no {opcode} in the function")
        return 1
    best = None  # smallest backward branch spanning every occurrence
    for a, t in ins:
        m = re.search(r"BRA\S*\s+0x([0-9a-f]+)", t)
        if m:
            tgt = int(m.group(1), 16)
            span = a - tgt
            if tgt <= pos[0] and a >= pos[-1] and span >= 16 * (min_len - 1) and (
                    best is None or span < best[0]):
                best = (span, tgt, a)
    if best is None:
        print(f"{opcode} is not inside a loop")
        return 1
    body = [t for a, t in ins if best[1] <= a <= best[2]]
    ops = collections.Counter(
        (t.split()[1] if t.startswith("@") else t.split()[0]).split(".")[0] for t in body)
    print(f"loop 0x{best[1]:x}-0x{best[2]:x}: {len(body)} instructions, {len(pos)} {opcode}")
    print(", ".join(f"{k} {v}" for k, v in ops.most_common()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
