#!/usr/bin/env bash
# On a GPU machine: build the CUDA squeeze kernels with plain nvcc (no fmt / nlohmann / OpenBLAS
# needed), run the GPU tests, run the benchmark, copy logs and results to $OUT.
#
# Usage: scripts/gpu_check.sh [build|lib|test|bench|all] [extra bench args...]
#   lib: only the shared library (e.g. a baseline from another source tree, or a stamps build).
# Env:   OUT (results folder, default /tmp/sqz_gpu_out), BUILD (default build-gpu),
#        SQZ_ARCHS ("90 80" by default; "90" for a faster build), SQZ_COMMIT (recorded in JSON),
#        SRC (source root holding backend/cuda, default src), EXTRA (more nvcc flags, e.g.
#        -DSQZ_PLAN_STAMPS), PREBUILT=1 (skip the build: use binaries already in $BUILD, e.g.
#        built on a machine without a GPU and carried over).
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-all}
shift || true
OUT=${OUT:-/tmp/sqz_gpu_out}
BUILD=${BUILD:-build-gpu}
mkdir -p "$OUT" "$BUILD"
export PYTHONUNBUFFERED=1

GENCODE=""
for a in ${SQZ_ARCHS:-90 80}; do GENCODE+=" -gencode=arch=compute_$a,code=sm_$a"; done
# cuBLAS: the toolkit's, else the one pip installed next to PyTorch.
CUBLAS_LINK="-lcublas"
if ! ls "$(dirname "$(command -v nvcc)")/../lib64/libcublas.so" >/dev/null 2>&1; then
  d=$(python3 -c 'import nvidia.cublas, os; print(os.path.join(os.path.dirname(nvidia.cublas.__file__), "lib"))' 2>/dev/null)
  [ -n "$d" ] && CUBLAS_LINK="-L$d -l:libcublas.so.13 -Xlinker -rpath=$d"
fi
SRC=${SRC:-src}
FLAGS="-std=c++17 -O3 --use_fast_math -lineinfo --expt-relaxed-constexpr -Xcompiler -fPIC -I $SRC ${EXTRA:-}"

build() {
  if [ "${PREBUILT:-0}" = 1 ]; then
    ls "$BUILD/libsqz_cuda.so" >/dev/null || return 1
    echo "prebuilt binaries in $BUILD"
    return 0
  fi
  local t0=$SECONDS pids=() rc=0
  for f in "$SRC"/backend/cuda/*.cu; do
    local o="$BUILD/$(basename "$f" .cu).o"
    local gc=$GENCODE  # attn_wgmma.cu: sm_90a in place of sm_90 (wgmma; see CMakeLists.txt)
    [ "$(basename "$f")" = attn_wgmma.cu ] && gc=${GENCODE//compute_90,code=sm_90/compute_90a,code=sm_90a}
    nvcc $FLAGS $gc --threads 2 -Xptxas -v -c "$f" -o "$o" >"$o.log" 2>&1 &
    pids+=($!)
  done
  if [ "$MODE" != lib ]; then
    nvcc $FLAGS -I src -gencode=arch=compute_90,code=sm_90 -c dev/kernels/test_cuda_squeeze.cu \
      -o "$BUILD/test_cuda_squeeze.obj" >"$BUILD/test.log" 2>&1 &
    pids+=($!)
  fi
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  cat "$BUILD"/*.o.log > "$OUT/ptxas.log" 2>/dev/null
  if [ $rc -ne 0 ]; then
    grep -h -B2 -A8 -i "error" "$BUILD"/*.log | head -80
    echo "BUILD FAILED"
    return 1
  fi
  nvcc -shared -o "$BUILD/libsqz_cuda.so" "$BUILD"/*.o $CUBLAS_LINK || return 1
  if [ "$MODE" != lib ]; then
    nvcc -o "$BUILD/test_cuda_squeeze" "$BUILD/test_cuda_squeeze.obj" "$BUILD"/*.o $CUBLAS_LINK ||
      return 1
  fi
  echo "build ok in $((SECONDS - t0)) s ($GENCODE)"
}

run_tests() {
  "$BUILD/test_cuda_squeeze" "${SQZ_TEST_SEED:-20261127}" 2>&1 | tee "$OUT/test.log" | grep -v "^case " | tail -60
  return "${PIPESTATUS[0]}"
}

run_bench() {
  mkdir -p bench/results
  python3 bench/cuda/bench_squeeze_cuda.py --lib "$BUILD/libsqz_cuda.so" \
    --jsonl "$OUT/cuda_squeeze.jsonl" "$@" 2>&1 | tee "$OUT/bench.log"
  local rc=${PIPESTATUS[0]}
  cat "$OUT/cuda_squeeze.jsonl" >> bench/results/cuda_squeeze.jsonl 2>/dev/null
  return "$rc"
}

case "$MODE" in
  build | lib) build ;;
  test) build && run_tests ;;
  bench) build && run_bench "$@" ;;
  all)
    build || exit 1
    run_tests; trc=$?
    run_bench "$@"; brc=$?
    echo "tests rc=$trc bench rc=$brc"
    exit $((trc | brc))
    ;;
  *) echo "usage: $0 [build|test|bench|all] [bench args]"; exit 2 ;;
esac
