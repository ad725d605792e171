#!/bin/bash
# Builds the CUDA objects of main and of main with kernel patches applied, for a GPU call that
# times them side by side (dev/kernels/s16_call.sh), and packs them into a carry folder.
# Each variant is a copy of src/, dev/, scripts/ and CMakeLists.txt with its patches applied in
# order, built with scripts/gpu_check.sh build (sm_90 only; the *_wgmma.cu files sm_90a once
# v20 is in). On the 2-core CPU machine each variant takes ~3-4 minutes (~22 for the first six in
# session 14).
# Usage (repo root): dev/kernels/build_variants.sh WORK CARRY
#   WORK:  scratch folder (variants in WORK/<name>, sources in WORK/src_<name>)
#   CARRY: folder inside the repo to pass as run's carry (gets objs.tar.xz and the patched
#          gpu_profile.sh as gpu_profile_v20.sh); add it to .git/info/exclude.
# Variants (session 14's call): f1 main, f2 +v20, f3 +v21, f4 +v20+v21, f5 f4+v22, f6 f5+v23;
# session 16's (dev/kernels/s16_call.sh): f7 f6+v24, f8 f7+v25, of which only attn_wgmma.o
# differs from f6 and is packed (CARRY/f7.tar.xz).
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${1:?scratch folder}
CARRY=${2:?carry folder}
declare -A P=([f1]="" [f2]="v20_score_wgmma" [f3]="v21_merge_chunks"
              [f4]="v20_score_wgmma v21_merge_chunks"
              [f5]="v20_score_wgmma v21_merge_chunks v22_score_epilogue"
              [f6]="v20_score_wgmma v21_merge_chunks v22_score_epilogue v23_merge_halves"
              [f7]="v20_score_wgmma v21_merge_chunks v22_score_epilogue v23_merge_halves
                    v24_prefill_ws"
              [f8]="v20_score_wgmma v21_merge_chunks v22_score_epilogue v23_merge_halves
                    v24_prefill_ws v25_ws_pingpong")
mkdir -p "$WORK" "$CARRY"
for v in f1 f2 f3 f4 f5 f6 f7 f8; do
  rm -rf "$WORK/src_$v" "$WORK/$v"
  mkdir -p "$WORK/src_$v"
  cp -r src dev scripts CMakeLists.txt "$WORK/src_$v/"
  for p in ${P[$v]}; do
    (cd "$WORK/src_$v" && patch -p1 -s --no-backup-if-mismatch < "dev/kernels/$p.patch")
  done
  (cd "$WORK/src_$v" && SQZ_ARCHS=90 OUT="$WORK/out_$v" BUILD="$WORK/$v" nice scripts/gpu_check.sh build) \
    > "$WORK/$v.log" 2>&1 || { echo "$v: build failed, see $WORK/$v.log"; exit 1; }
  echo "$v: $(tail -1 "$WORK/$v.log")"
done
(cd "$WORK" && tar cJf - f1/*.o f1/test_cuda_squeeze.obj f2/*.o f2/test_cuda_squeeze.obj \
  f3/*.o f3/test_cuda_squeeze.obj f4/*.o f4/test_cuda_squeeze.obj f5/*.o \
  f5/test_cuda_squeeze.obj f6/*.o f6/test_cuda_squeeze.obj) > "$CARRY/objs.tar.xz"
(cd "$WORK" && tar cJf - f7/attn_wgmma.o f8/attn_wgmma.o) > "$CARRY/f7.tar.xz"
cp "$WORK/src_f6/scripts/gpu_profile.sh" "$CARRY/gpu_profile_v20.sh"
cp "$WORK/src_f7/scripts/gpu_profile.sh" "$CARRY/gpu_profile_v24.sh"
ls -la "$CARRY"
