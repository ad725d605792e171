#!/bin/bash
# Session 11's GPU call: the wgmma prefill kernel's checks and timing, v18's A/B, the forward
# tests. Objects are built on the CPU machine and carried in $C/objs.tar.xz:
#   head/*.o            main at da4ef44 (SQZ_ARCHS=90 scripts/gpu_check.sh build)
#   wg/attn_wgmma.o     sm_90a; wg/sparse_prefill.o, wg/test_cuda_squeeze.obj: this tree
#   wgno/               the same without the early S of the next tile (built from an earlier
#                       state of attn_wgmma.cu with -DSQZ_WGMMA_NO_OVERLAP; that path is gone)
# When it ran, the library's default prefill kernel was wgmma; it is mma.sync now, so the wg
# benches below ask for wgmma explicitly.
#   pf/lookup.o pf/lookup_prefill.o   main + v18_l2_prefetch_rejected.patch, -DSQZ_PF_EXPERIMENT
#   ef/sparse_decode.o                the same tree, -DSQZ_STREAM_EVICT_FIRST
# Usage (repo root, GPU machine): C=<carry dir> OUT=<dir> dev/kernels/s11_call.sh
set -u
C=${C:?carry dir}; W=/root/w; O=${OUT:-/tmp/o}; mkdir -p $W $O
T0=$SECONDS
left() { echo $((${BUDGET:-560} - (SECONDS - T0))); }
tar xJf $C/objs.tar.xz -C $W
d=$(python3 -c 'import nvidia.cublas, os; print(os.path.join(os.path.dirname(nvidia.cublas.__file__), "lib"))' 2>/dev/null)
if ls /usr/local/cuda/lib64/libcublas.so >/dev/null 2>&1; then CUB="-lcublas"; else CUB="-L$d -l:libcublas.so.13 -Xlinker -rpath=$d"; fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt
mk() { local n=$1; shift; mkdir -p $W/L$n; cp $W/head/*.o $W/L$n/; for x in "$@"; do cp $W/$x/*.o $W/L$n/; done
  nvcc -shared -o $W/L$n/libsqz_cuda.so $W/L$n/*.o $CUB; }
mk head; mk wg wg; mk wgno wgno; mk pf pf; mk pfef pf ef
nvcc -o $W/twg $W/wg/test_cuda_squeeze.obj -L$W/Lwg -lsqz_cuda $CUB -Xlinker -rpath=$W/Lwg
nvcc -o $W/twgno $W/wg/test_cuda_squeeze.obj -L$W/Lwgno -lsqz_cuda $CUB -Xlinker -rpath=$W/Lwgno
echo "=== libs $((SECONDS - T0)) s"
timeout 200 $W/twg 20261127 > $O/test_wg.log 2>&1; echo "test wg rc=$?"; grep -v "^case " $O/test_wg.log | tail -25
B() { local tag=$1 lib=$2; shift 2
  SQZ_PF_MB=${PF:-0} SQZ_COMMIT=$tag timeout 150 python3 bench/cuda/bench_squeeze_cuda.py --lib $W/L$lib/libsqz_cuda.so \
    --jsonl $O/cuda_squeeze.jsonl --kmeans-heads 0 "$@" 2>&1 | grep -v " sdpa \|Warn" | sed "s/^/$tag /" | tee -a $O/bench.log
  echo "=== $tag done $((SECONDS - T0)) s"; }
P="--q-tokens 1024 --ctx 131072 --kept 0.1 --shapes llama2-7b"
B s11-wg-prefill wg $P --prefill-kernel wgmma
B s11-mma-prefill wg $P --prefill-kernel mma
B s11-wgno-prefill wgno $P --prefill-kernel wgmma
A="--q-tokens 1 --ctx 131072,524288 --kept 0.05,0.1"
B v18-head-w1 head $A
PF=32 B v18-pfef32-w1 pfef $A
[ $(left) -gt 80 ] && B v18-head-rot head $A --flush rotate
[ $(left) -gt 40 ] && PF=32 B v18-pfef32-rot pfef $A --flush rotate
[ $(left) -gt 100 ] && PF=32 B v18-pf32-w1 pf $A
[ $(left) -gt 100 ] && { timeout 100 $W/twgno 20261128 > $O/test_wgno.log 2>&1; echo "test wgno rc=$?"; grep -v "^case " $O/test_wgno.log | tail -4; }
echo "=== end $((SECONDS - T0)) s"
