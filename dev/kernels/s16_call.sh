#!/bin/bash
# Session 16's GPU call (not run: no device was lent in session 16; ready for the next one).
# It replaces session 14's s14_call.sh, whose call never ran either. Checks and timing of main
# against the unmeasured prefill patches, each on top of the previous:
#   f2 v20_score_wgmma (the lookup's scoring on wgmma), f3 v21 alone, f4 v20 + v21_merge_chunks
#   (the split merge's loads in chunks), f5 + v22_score_epilogue (the scorer's per-tile work),
#   f6 + v23_merge_halves (the wgmma run's merge per half), f7 + v24_prefill_ws (the
#   warp-specialised prefill attention, attn_ws.cuh), f8 + v25_ws_pingpong (its two consumer
#   warpgroups taking turns to issue); f1 is main. Objects: dev/kernels/build_variants.sh.
# Carried in $C: objs.tar.xz (f1-f6 of build_variants.sh), f7.tar.xz (f7/attn_wgmma.o = f6 +
# v24 and f8/attn_wgmma.o = f7 + v25: the only object they change), gpu_profile_v20.sh (f2-f6)
# and gpu_profile_v24.sh (f7, f8).
# The test of f7 runs first, then f8's; if f7 fails, f6, then f5, then f4; only trees whose
# code passed are timed.
# Timing: main and the passing trees from the newest, alternating, two rounds at 128K / 10% with
# 128 and 1,024 user tokens; then decode, the run's and the plan's profiles, the grid.
# Usage (repo root, GPU machine): C=<carry dir> OUT=<dir> dev/kernels/s16_call.sh
#   Env: BUDGET (seconds the script plans for, default 560), RG (seconds that must be left to
#   start a timing run, default 100), TT (test timeout, default 200), SEED (default 20261208).
set -u
source dev/kernels/call_common.sh  # C, W, O, left, B, CUB, mk; unpacks $C/objs.tar.xz
for n in f7 f8; do rm -rf $W/$n && cp -r $W/f6 $W/$n; done
tar xJf $C/f7.tar.xz -C $W
declare -A LINKED=()
L() { [ -n "${LINKED[$1]:-}" ] && return 0; mk $1
  nvcc -o $W/t$1 $W/$1/test_cuda_squeeze.obj -L$W/L$1 -lsqz_cuda $CUB -Xlinker -rpath=$W/L$1
  LINKED[$1]=1; }
T() { L $1; timeout ${TT:-200} $W/t$1 ${SEED:-20261208} > $O/test_$1.log 2>&1; local rc=$?
  echo "test $1 rc=$rc $((SECONDS - T0)) s"
  grep -v "^case \|kmeans 10\|^ok" $O/test_$1.log | tail -8; return $rc; }
if T f7; then OK="f1 f7 f6"; N=f7; T f8 && OK="f1 f8 f7 f6" && N=f8
elif T f6; then OK="f1 f6 f5"; N=f6
elif T f5; then OK="f1 f5 f4"; N=f5
elif T f4; then OK="f1 f4 f2"; N=f4
else OK="f1"; N=f1; fi
echo "=== passing: $OK"
for n in $OK; do L $n; done
Q="--q-tokens 128,1024 --ctx 131072 --kept 0.1"
for r in 1 2; do for n in $OK; do [ $(left) -gt ${RG:-100} ] && B s16-$n-r$r $n $Q; done; done
[ $(left) -gt 60 ] && B s16-$N-decode $N --q-tokens 1 --ctx 131072,524288 --kept 0.1
case $N in f7|f8) cp $C/gpu_profile_v24.sh scripts/gpu_profile.sh;;
  f2|f4|f5|f6) cp $C/gpu_profile_v20.sh scripts/gpu_profile.sh;; esac
for pr in prerunwg128 preplan128 prerunwg128q; do
  [ $(left) -gt 75 ] && OUT=$O BUILD=$W/L$N timeout $(($(left) - 10)) scripts/gpu_profile.sh $pr
done
[ $(left) -gt 60 ] && B s16-$N-grid $N --q-tokens 128,1024 --ctx 32768,524288 --kept 0.1
echo "=== end $((SECONDS - T0)) s"
