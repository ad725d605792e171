#!/bin/bash
# v18 A/B on a GPU machine (session 10; see NOTES.md "Session 10"). Objects are built on the
# CPU machine and carried in $C/objs.tar.xz, laid out as:
#   head/*.o + head/test_cuda_squeeze.obj   main (SQZ_ARCHS=90 scripts/gpu_check.sh build)
#   pf/lookup.o pf/lookup_prefill.o         main + v18_l2_prefetch.patch, -DSQZ_PF_EXPERIMENT
#   ef/sparse_decode.o                      the same tree, -DSQZ_STREAM_EVICT_FIRST
# Usage (from the repo root on the GPU machine): C=<carry dir> OUT=<dir> dev/kernels/v18_ab.sh
set -u
C=${C:?carry dir}; W=/root/w; O=${OUT:-/tmp/o}; mkdir -p $W $O
T0=$SECONDS
tar xJf $C/objs.tar.xz -C $W
d=$(python3 -c 'import nvidia.cublas, os; print(os.path.join(os.path.dirname(nvidia.cublas.__file__), "lib"))' 2>/dev/null)
if ls /usr/local/cuda/lib64/libcublas.so >/dev/null 2>&1; then CUB="-lcublas"; else CUB="-L$d -l:libcublas.so.13 -Xlinker -rpath=$d"; fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt
mk() { local n=$1; shift; mkdir -p $W/L$n; cp $W/head/*.o $W/L$n/; for x in "$@"; do cp $W/$x/*.o $W/L$n/; done
  nvcc -shared -o $W/L$n/libsqz_cuda.so $W/L$n/*.o $CUB; }
mk head; mk pf pf; mk pfef pf ef
for n in head pf; do nvcc -o $W/t$n $W/head/test_cuda_squeeze.obj -L$W/L$n -lsqz_cuda $CUB -Xlinker -rpath=$W/L$n; done
$W/thead 20261127 > $O/test_head.log 2>&1; echo "test head rc=$?"; grep -v "^case " $O/test_head.log | tail -3
B() { local tag=$1 lib=$2; shift 2
  SQZ_PF_MB=${PF:-0} SQZ_COMMIT=$tag python3 bench/cuda/bench_squeeze_cuda.py --lib $W/L$lib/libsqz_cuda.so \
    --jsonl $O/cuda_squeeze.jsonl --kmeans-heads 0 --q-tokens 1 "$@" 2>&1 | grep -v " sdpa \|Warn" | sed "s/^/$tag /" | tee -a $O/bench.log
  echo "=== $tag done $((SECONDS - T0)) s"; }
A="--ctx 131072,524288 --kept 0.05,0.1"
B v18-head-w1 head $A
PF=32 B v18-pfef32-w1 pfef $A
PF=32 B v18-pf32-w1 pf $A
B v18-head-w2 head $A
PF=32 B v18-pfef32-w2 pfef $A
SQZ_PF_MB=32 $W/tpf 20261128 > $O/test_pf.log 2>&1; echo "test pf rc=$?"; grep -v "^case " $O/test_pf.log | tail -3
B v18-head-rot head $A --flush rotate    # needs the patched bench script
PF=32 B v18-pfef32-rot pfef $A --flush rotate
