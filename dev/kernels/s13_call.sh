#!/bin/bash
# Session 13's GPU call: checks and prefill timing of the one-wave partition and of the wgmma
# kernel with FA3's intra-warpgroup overlap (v19), against main. Objects are built on the CPU
# machine (SQZ_ARCHS=90 scripts/gpu_check.sh build) and carried in $C/objs.tar.xz:
#   cur/*.o    main (2f121cf)
#   p1/*.o, p1/test_cuda_squeeze.obj    this tree (one-wave partition)
#   wg2/attn_wgmma.o    this tree's attn_wgmma.cu with dev/kernels/v19_wgmma_overlap.patch
# Lwg2 = p1's objects with wg2's attn_wgmma.o, so one test run checks the partition (mma.sync
# pass) and v19 (the test's wgmma pass).
# Mode final (planned as call 2, not run in session 13: no device was lent after call 1):
# f1/*.o = main (since d88288b: v19 applied, AUTO = wgmma on sm_90a), f2/*.o and
# f2/test_cuda_squeeze.obj = main with dev/kernels/v20_score_wgmma.patch (the lookup's scoring on
# wgmma). Checks, main against them alternating, then the benchmark's grid and the plan's
# profile on the newest that passed.
# Usage (repo root, GPU machine): C=<carry dir> OUT=<dir> dev/kernels/s13_call.sh
#        [all|bench|profile|final]
set -u
MODE=${1:-all}
source dev/kernels/call_common.sh  # C, W, O, left, B, CUB, mk; unpacks $C/objs.tar.xz
mk cur
if [ "$MODE" = final ]; then
  # f2 (if carried): f1 plus the lookup's centroid scoring on wgmma (score_tc.cuh, WG). The
  # test binary of the newest tree runs (its mma.sync pass and its wgmma pass cover both).
  N=f1; [ -d $W/f2 ] && N=f2
  mk f1; [ -d $W/f2 ] && mk f2
  nvcc -o $W/tN $W/$N/test_cuda_squeeze.obj -L$W/L$N -lsqz_cuda $CUB -Xlinker -rpath=$W/L$N
  echo "=== libs $((SECONDS - T0)) s"
  timeout 200 $W/tN ${SEED:-20261208} > $O/test_$N.log 2>&1; rc=$?; echo "test $N rc=$rc"
  grep -v "^case \|kmeans 10" $O/test_$N.log | grep -v "^ok" | tail -12
  [ $rc = 0 ] || N=f1
  Q="--q-tokens 128,1024 --ctx 131072 --kept 0.1"
  for r in 1 2; do
    B s13f-cur-r$r cur $Q
    B s13f-f1-r$r f1 $Q
    [ -d $W/f2 ] && B s13f-f2-r$r f2 $Q
  done
  [ $(left) -gt 200 ] && B s13f-$N-grid $N --q-tokens 128,1024 --ctx 32768,131072,524288
  [ $(left) -gt 60 ] && B s13f-$N-decode $N --q-tokens 1 --ctx 131072,524288 --kept 0.1
  [ $(left) -gt 100 ] && OUT=$O BUILD=$W/L$N scripts/gpu_profile.sh preplan128
  echo "=== end $((SECONDS - T0)) s"; exit 0
fi
mk p1
mkdir -p $W/Lwg2; cp $W/p1/*.o $W/Lwg2/; cp $W/wg2/attn_wgmma.o $W/Lwg2/
nvcc -shared -o $W/Lwg2/libsqz_cuda.so $W/Lwg2/*.o $CUB
nvcc -o $W/twg2 $W/p1/test_cuda_squeeze.obj -L$W/Lwg2 -lsqz_cuda $CUB -Xlinker -rpath=$W/Lwg2
echo "=== libs $((SECONDS - T0)) s"
prof() { [ $(left) -gt ${2:-120} ] && OUT=$O BUILD=$W/L$1 scripts/gpu_profile.sh $3; }
if [ "$MODE" = profile ]; then
  prof p1 100 prerun128q; prof wg2 100 prerunwg128; exit 0
fi
if [ "$MODE" = all ]; then
  timeout 200 $W/twg2 ${SEED:-20261207} > $O/test_wg2.log 2>&1; echo "test wg2 rc=$?"
  grep -v "^case \|kmeans 10" $O/test_wg2.log | tail -8
fi
Q="--q-tokens 128,1024 --ctx 131072 --kept 0.1 --shapes llama2-7b"
for r in 1 2; do
  B s13-cur-r$r cur $Q
  B s13-p1-r$r p1 $Q
  B s13-wg2-r$r wg2 $Q --prefill-kernel wgmma
done
[ $(left) -gt 200 ] && B s13-p1-l3 p1 --q-tokens 128,1024 --ctx 131072 --kept 0.1 --shapes llama3-8b
[ $(left) -gt 200 ] && B s13-wg2-l3 wg2 --q-tokens 128,1024 --ctx 131072 --kept 0.1 --shapes llama3-8b --prefill-kernel wgmma
prof p1 150 prerun128q
prof wg2 100 prerunwg128
echo "=== end $((SECONDS - T0)) s"
