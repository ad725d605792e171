#!/bin/bash
# Nsight Compute profiles of both sparse prefill attention kernels (wgmma and mma.sync) at 128K,
# 1,024 tokens, 10% kept, in one GPU call (run at the end of session 11: NOTES.md "Session 11",
# bench/results/ncu_s11_h100_prefill_run.tar.xz). Links the
# libraries from the objects in .g11c1/objs.tar.xz (see s11_call.sh) unless a warm machine
# still has them. Usage (repo root, GPU machine): OUT=<dir> dev/kernels/s11_profile.sh
set -u
W=/root/w
mkdir -p $W
if [ ! -f $W/Lwg/libsqz_cuda.so ]; then
  tar xJf .g11c1/objs.tar.xz -C $W
  d=$(python3 -c 'import nvidia.cublas, os; print(os.path.join(os.path.dirname(nvidia.cublas.__file__), "lib"))')
  CUB="-L$d -l:libcublas.so.13 -Xlinker -rpath=$d"
  ls /usr/local/cuda/lib64/libcublas.so >/dev/null 2>&1 && CUB=-lcublas
  for n in head wg; do
    mkdir -p $W/L$n
    cp $W/head/*.o $W/L$n/
    [ $n = wg ] && cp $W/wg/*.o $W/Lwg/
    nvcc -shared -o $W/L$n/libsqz_cuda.so $W/L$n/*.o $CUB
  done
fi
OUT=$OUT BUILD=$W/Lwg timeout 150 bash scripts/gpu_profile.sh prerunwg128 2>&1 | tail -12
OUT=$OUT BUILD=$W/Lhead timeout 150 bash scripts/gpu_profile.sh prerun128 2>&1 | tail -12
rm -f $OUT/*.ncu-rep
