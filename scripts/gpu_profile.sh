#!/usr/bin/env bash
# On a GPU machine: where the decode plan, run and merge kernels stall. Nsight Compute samples
# warp stalls per instruction (SourceCounters) for one launch of each kernel on the benchmark's
# synthetic 128K / 512K contexts (bench_squeeze_cuda.py --profile-one; MHA, except merge128: the
# merge kernel serves GQA decode only since v16), with caches flushed
# before each replay as the benchmark flushes L2. Writes to $OUT, per profile: the ncu log, the
# raw metrics (raw_*.csv, incl. smsp__pcsamp_warps_issue_stalled_*) and the SASS view with its
# samples (*_sass.csv.xz). Map those to source lines anywhere with
#   dev/kernels/ncu_lines.py R_sass.csv $BUILD/lookup.o plan_small_fused_kernelILi128E13__nv_bfloat16Li1ELb0E
# using the same objects. Build first (scripts/gpu_check.sh build), or carry them (PREBUILT=1).
#
# Usage: scripts/gpu_profile.sh [NAME ...]   names: run128 plan128 merge128 run512 (default all),
#        prerun128 (the prefill run's mma.sync attention, 1,024 query tokens; prerunwg128 the
#        sm_90a wgmma one, the default there; prerun128q and prerunwg128q the same with 128
#        tokens) and preplan128 (the prefill plan's four score_mma launches, after
#        calibration's 61 plans)
# Env:   OUT (default /tmp/sqz_gpu_out), BUILD (default build-gpu), NCU (default: ncu on PATH).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/sqz_gpu_out}
BUILD=${BUILD:-build-gpu}
NCU=${NCU:-$(command -v ncu || echo /usr/local/cuda/bin/ncu)}
mkdir -p "$OUT"
[ -f "$BUILD/libsqz_cuda.so" ] || { echo "no $BUILD/libsqz_cuda.so: run scripts/gpu_check.sh build"; exit 1; }
[ -x "$NCU" ] || { echo "no ncu"; exit 1; }

# name: kernel regex, launches to skip (the profile-one calibration plans come first), spec
declare -A KREGEX=([run128]=sparse_decode_kernel [plan128]=plan_small_fused [merge128]=decode_merge
                   [run512]=sparse_decode_kernel [prerun128]=attn_mma_kernel
                   [preplan128]=score_mma_kernel [prerunwg128]=attn_wgmma_kernel
                   [prerun128q]=attn_mma_kernel [prerunwg128q]=attn_wgmma_kernel)
declare -A SKIP=([run128]=2 [plan128]=1 [merge128]=2 [run512]=2 [prerun128]=1 [preplan128]=244 [prerunwg128]=1
                 [prerun128q]=1 [prerunwg128q]=1)
declare -A COUNT=([preplan128]=4)
# Extra benchmark arguments: the mma.sync prefill kernels are the default only off sm_90a.
declare -A ARGS=([prerunwg128]="--prefill-kernel wgmma" [prerunwg128q]="--prefill-kernel wgmma"
                 [prerun128]="--prefill-kernel mma" [prerun128q]="--prefill-kernel mma")
declare -A SPEC=([run128]=llama2-7b,131072,1,0.1 [plan128]=llama2-7b,131072,1,0.1
                 [merge128]=llama3-8b,131072,1,0.1 [run512]=llama2-7b,524288,1,0.1
                 [prerun128]=llama2-7b,131072,1024,0.1 [preplan128]=llama2-7b,131072,1024,0.1
                 [prerunwg128]=llama2-7b,131072,1024,0.1 [prerun128q]=llama2-7b,131072,128,0.1
                 [prerunwg128q]=llama2-7b,131072,128,0.1)

names=("$@")
[ ${#names[@]} -gt 0 ] || names=(run128 plan128 merge128 run512)
rc=0
for n in "${names[@]}"; do
  [ -n "${KREGEX[$n]:-}" ] || { echo "unknown profile $n"; rc=1; continue; }
  echo "=== $n: ${KREGEX[$n]} on ${SPEC[$n]}"
  rep="$OUT/$n"
  # --clock-control none: the clocks the benchmark runs at (ncu's default locks them to base).
  timeout 300 "$NCU" --clock-control none -k "regex:${KREGEX[$n]}" --launch-skip "${SKIP[$n]}" \
    --launch-count "${COUNT[$n]:-1}" --section WarpStateStats --section SourceCounters --section SpeedOfLight \
    --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats -f -o "$rep" \
    python3 bench/cuda/bench_squeeze_cuda.py --lib "$BUILD/libsqz_cuda.so" \
    --profile-one "${SPEC[$n]}" ${ARGS[$n]:-} > "$OUT/ncu_$n.log" 2>&1 || { echo "ncu failed"; tail -5 "$OUT/ncu_$n.log"; rc=1; continue; }
  "$NCU" --import "$rep.ncu-rep" --page raw --csv > "$OUT/raw_$n.csv" 2>&1
  "$NCU" --import "$rep.ncu-rep" --page details > "$OUT/details_$n.txt" 2>&1
  "$NCU" --import "$rep.ncu-rep" --page source --csv --print-source sass 2>&1 | xz -6 > "$OUT/${n}_sass.csv.xz"
  grep -E "^  [a-z_].*\(|Duration|DRAM Throughput|Compute \\(SM\\) Throughput|L2 Cache Throughput|Registers Per|Achieved Occupancy|Theoretical Occupancy|Grid Size|Dynamic Shared" "$OUT/details_$n.txt" | head -40
  python3 - "$OUT/raw_$n.csv" <<'PY'
import csv, sys
r = list(csv.reader(open(sys.argv[1])))
h = r[0]
for v in r[2:]:  # one row per profiled launch
    st = {k.replace("smsp__pcsamp_warps_issue_stalled_", ""): float(v[i].replace(",", "") or 0)
          for i, k in enumerate(h) if k.startswith("smsp__pcsamp_warps_issue_stalled_") and not k.endswith("not_issued")}
    tot = sum(st.values()) or 1
    name = v[h.index("Kernel Name")][:60] if "Kernel Name" in h else ""
    print(f"  {name} stalls: " + ", ".join(f"{k} {100 * s / tot:.1f}%" for k, s in sorted(st.items(), key=lambda x: -x[1])[:8]))
PY
done
exit $rc
