// Shared device helpers of the GPU forward pass (fwd/*.cu). Launchers return sqz_cuda_status
// codes (squeeze_cuda.h) and never synchronise.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/squeeze_cuda.h"

namespace sqz::fwd {

// Status of the launch just made (launch-configuration errors surface here; faults in the
// kernel surface at the next synchronisation, which the runner checks).
inline int launch_status() {
  return cudaGetLastError() == cudaSuccess ? SQZ_CUDA_OK : SQZ_CUDA_ECUDA;
}

// Grid of `threads`-wide blocks for a grid-stride loop over n elements (capped: the loops
// stride, so a few waves of CTAs is enough).
inline unsigned grid_for(int64_t n, int threads) {
  int64_t g = (n + threads - 1) / threads;
  if (g > 65535LL * 8) g = 65535LL * 8;
  return (unsigned)(g < 1 ? 1 : g);
}

// Unaligned little-endian f16 load (GGUF block fields are only 2-byte aligned).
__device__ __forceinline__ float ld_f16(const uint8_t* p) {
  return __half2float(__ushort_as_half((unsigned short)(p[0] | (p[1] << 8))));
}

// Sum over a block of up to 1024 threads; every thread gets the result. smem: 32 floats.
__device__ __forceinline__ float block_sum(float v, float* smem) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // smem may still be read by a previous call
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  const int nw = (blockDim.x + 31) >> 5;
  float s = 0.0f;
  for (int i = 0; i < nw; i++) s += smem[i];
  return s;
}

}  // namespace sqz::fwd
