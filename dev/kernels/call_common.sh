# Sourced by the GPU call scripts (dev/kernels/sNN_call.sh), from the repo root on the GPU
# machine: unpacks the carried objects ($C/objs.tar.xz) into $W, finds cuBLAS, records the card
# and defines the helpers the calls share.
#   left            seconds left of ${BUDGET:-560}, counted from sourcing
#   B TAG LIB ARGS  one benchmark run on library $W/L<LIB>, rows tagged TAG (JSON to $O)
#   mk N            links $W/L<N>/libsqz_cuda.so from the objects carried in $W/<N>/
set -u
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
