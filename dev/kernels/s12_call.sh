#!/bin/bash
# Session 12's GPU call: checks and prefill timing of the cut-down prefill attention kernels
# (mma.sync and the one-warpgroup wgmma form) against main. Objects are built on the CPU
# machine (SQZ_ARCHS=90 scripts/gpu_check.sh build) and carried in $C/objs.tar.xz:
#   head/*.o   main at 0f21dd6;   new/*.o, new/test_cuda_squeeze.obj   this tree
#   new1/*.o   (second call) the first call's "new": before the split merge's passes
#   cur/*.o, wg2/attn_wgmma.o   (mode all3 / profile3; not run in session 12) main at 5f6231c,
#              and attn_wgmma.o built with dev/kernels/v19_wgmma_overlap.patch applied
# Usage (repo root, GPU machine): C=<carry dir> OUT=<dir> dev/kernels/s12_call.sh
#        [test|bench|all|all2|bench2|profile|all3|profile3]
set -u
MODE=${1:-all}
C=${C:?carry dir}; W=/root/w; O=${OUT:-/tmp/o}; mkdir -p $W $O
T0=$SECONDS
left() { echo $((${BUDGET:-560} - (SECONDS - T0))); }
B() { local tag=$1 lib=$2; shift 2
  SQZ_COMMIT=$tag timeout 150 python3 bench/cuda/bench_squeeze_cuda.py --lib $W/L$lib/libsqz_cuda.so \
    --jsonl $O/cuda_squeeze.jsonl --kmeans-heads 0 "$@" 2>&1 | grep -v " sdpa \|Warn" | sed "s/^/$tag /" | tee -a $O/bench.log
  echo "=== $tag done $((SECONDS - T0)) s"; }
tar xJf $C/objs.tar.xz -C $W
d=$(python3 -c 'import nvidia.cublas, os; print(os.path.join(os.path.dirname(nvidia.cublas.__file__), "lib"))' 2>/dev/null)
if ls /usr/local/cuda/lib64/libcublas.so >/dev/null 2>&1; then CUB="-lcublas"; else CUB="-L$d -l:libcublas.so.13 -Xlinker -rpath=$d"; fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt
mk() { local n=$1; mkdir -p $W/L$n; cp $W/$n/*.o $W/L$n/; nvcc -shared -o $W/L$n/libsqz_cuda.so $W/L$n/*.o $CUB; }
mkw() { mkdir -p $W/Lwg2; cp $W/cur/*.o $W/Lwg2/; cp $W/wg2/*.o $W/Lwg2/; nvcc -shared -o $W/Lwg2/libsqz_cuda.so $W/Lwg2/*.o $CUB; }
if [ -d $W/cur ]; then
  mk cur; mkw
  nvcc -o $W/twg2 $W/cur/test_cuda_squeeze.obj -L$W/Lwg2 -lsqz_cuda $CUB -Xlinker -rpath=$W/Lwg2
  echo "=== libs $((SECONDS - T0)) s"
  if [ "$MODE" = profile3 ]; then
    OUT=$O BUILD=$W/Lwg2 scripts/gpu_profile.sh ${PROFILES:-prerunwg128 prerun128q}; exit 0
  fi
  timeout 200 $W/twg2 ${SEED:-20261128} > $O/test_wg2.log 2>&1; echo "test wg2 rc=$?"
  grep -v "^case \|kmeans 10" $O/test_wg2.log | tail -8
  Q="--q-tokens 128,1024 --ctx 131072 --kept 0.1"
  for r in 1 2; do
    B s12c-cur-mma-r$r cur $Q
    B s12c-wg2-r$r wg2 $Q --prefill-kernel wgmma
  done
  [ $(left) -gt 60 ] && B s12c-wg2-512 wg2 --q-tokens 1024 --ctx 524288 --kept 0.1 --prefill-kernel wgmma
  [ $(left) -gt 60 ] && B s12c-cur-512 cur --q-tokens 1024 --ctx 524288 --kept 0.1
  echo "=== end $((SECONDS - T0)) s"; exit 0
fi
mk head; mk new; [ -d $W/new1 ] && mk new1
nvcc -o $W/tnew $W/new/test_cuda_squeeze.obj -L$W/Lnew -lsqz_cuda $CUB -Xlinker -rpath=$W/Lnew
echo "=== libs $((SECONDS - T0)) s"
if [ "$MODE" = profile ]; then
  OUT=$O BUILD=$W/Lnew scripts/gpu_profile.sh ${PROFILES:-prerun128 preplan128}; exit 0
fi
if [ "$MODE" != bench ] && [ "$MODE" != bench2 ]; then
  timeout 200 $W/tnew ${SEED:-20261127} > $O/test_new.log 2>&1; echo "test new rc=$?"
  grep -v "^case " $O/test_new.log | tail -25
fi
[ "$MODE" = test ] && exit 0
if [ "$MODE" = bench2 ] || [ "$MODE" = all2 ]; then
  Q="--q-tokens 128,1024 --ctx 131072 --kept 0.1"
  for r in 1 2; do
    B s12b-head-r$r head $Q
    B s12b-new1-r$r new1 $Q
    B s12b-new-r$r new $Q
  done
  [ $(left) -gt 100 ] && B s12b-new-grid new --q-tokens 128,1024 --ctx 131072,524288 --kept 0.05,0.1
  [ $(left) -gt 60 ] && B s12b-new-wg new --q-tokens 128,1024 --ctx 131072 --kept 0.1 --prefill-kernel wgmma
  echo "=== end $((SECONDS - T0)) s"; exit 0
fi
P="--q-tokens 1024 --ctx 131072 --kept 0.1 --shapes llama2-7b"
for r in 1 2; do
  B s12-head-mma-r$r head $P
  B s12-new-mma-r$r new $P --prefill-kernel mma
  B s12-new-wg-r$r new $P --prefill-kernel wgmma
done
G="--q-tokens 128,1024 --ctx 131072,524288 --kept 0.05,0.1"
[ $(left) -gt 150 ] && B s12-new-wg-grid new $G --prefill-kernel wgmma
[ $(left) -gt 100 ] && B s12-new-mma-grid new $G --prefill-kernel mma
[ $(left) -gt 60 ] && B s12-new-decode new --q-tokens 1 --ctx 131072,524288 --kept 0.05,0.1
echo "=== end $((SECONDS - T0)) s"
