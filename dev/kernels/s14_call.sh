#!/bin/bash
# Session 14's GPU call (not run: no device could be started in session 14; ready for the next
# one): checks and timing of main (since b958b2d: AUTO prefill kernel, the review refactor)
# against dev/kernels/v20_score_wgmma.patch (the lookup's scoring on wgmma) and
# dev/kernels/v21_merge_chunks.patch (the split merge's loads in chunks), then v22 and v23.
# Objects are built on the CPU machine by dev/kernels/build_variants.sh WORK $C, which also
# copies the patched gpu_profile.sh, and carried in $C/objs.tar.xz:
#   f1/  main          f2/  main + v20       f3/  main + v21       f4/  main + v20 + v21
#   f5/  f4 + v22 (dev/kernels/v22_score_epilogue.patch: the scorer's copy addressing hoisted,
#        sign-uniform tiles without per-column tests, the column sums stop at the positive
#        entries)
#   f6/  f5 + v23 (dev/kernels/v23_merge_halves.patch: the wgmma run's split merge per half)
# each with *.o and test_cuda_squeeze.obj. The test of the newest tree (f6) runs first; if it
# fails, the next older one, and so on; only trees whose code passed are timed (f3 is built
# but only timed when v20 fails).
# Usage (repo root, GPU machine): C=<carry dir> OUT=<dir> dev/kernels/s14_call.sh [V...]
#   V: the variants to link and time (default all). Env: BUDGET (seconds the script plans
#   for, default 560), RG (seconds that must be left to start a timing run, default 100),
#   TT (test timeout, default 200), SEED (test seed, default 20261208).
set -u
source dev/kernels/call_common.sh  # C, W, O, left, B, CUB, mk; unpacks $C/objs.tar.xz
VS=${*:-f1 f2 f3 f4 f5 f6}
for n in $VS; do
  mk $n
  nvcc -o $W/t$n $W/$n/test_cuda_squeeze.obj -L$W/L$n -lsqz_cuda $CUB -Xlinker -rpath=$W/L$n
done
echo "=== libs $((SECONDS - T0)) s"
T() { timeout ${TT:-200} $W/t$1 ${SEED:-20261208} > $O/test_$1.log 2>&1; local rc=$?; echo "test $1 rc=$rc $((SECONDS - T0)) s"
  grep -v "^case \|kmeans 10\|^ok" $O/test_$1.log | tail -8; return $rc; }
# Timing order: main, the newest passing tree, then the older ones.
if T f6; then OK="f1 f6 f5 f4 f2"; N=f6
elif T f5; then OK="f1 f5 f4 f2"; N=f5
elif T f4; then OK="f1 f4 f2"; N=f4
else OK="f1"; N=f1; T f2 && OK="$OK f2"; T f3 && OK="$OK f3"; fi
# Only trees whose library was linked (the arguments, default all) are timed.
OK=$(for n in $OK; do case " $VS " in *" $n "*) echo -n "$n ";; esac; done)
echo "=== passing: $OK"
Q="--q-tokens 128,1024 --ctx 131072 --kept 0.1"
for r in 1 2; do for n in $OK; do [ $(left) -gt ${RG:-100} ] && B s14-$n-r$r $n $Q; done; done
[ $(left) -gt 60 ] && B s14-$N-decode $N --q-tokens 1 --ctx 131072,524288 --kept 0.1
# The patched trees name the scorer score_tc_kernel: profile with their gpu_profile.sh.
case $N in f2|f4|f5|f6) cp $C/gpu_profile_v20.sh scripts/gpu_profile.sh;; esac
for pr in preplan128 prerunwg128q preplan128q; do
  [ $(left) -gt 75 ] && OUT=$O BUILD=$W/L$N timeout $(($(left) - 10)) scripts/gpu_profile.sh $pr
done
[ $(left) -gt 60 ] && B s14-$N-grid $N --q-tokens 128,1024 --ctx 32768,524288 --kept 0.1
echo "=== end $((SECONDS - T0)) s"
