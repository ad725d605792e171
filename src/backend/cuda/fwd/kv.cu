#include "backend/cuda/fwd/fwd_common.cuh"
#include "backend/cuda/fwd/kv.h"

namespace sqz::fwd {
namespace {

// One thread per 8 halves (16-byte vectors; head_dim is a multiple of 8).
__global__ void store_kv_kernel(const uint4* __restrict__ k, const uint4* __restrict__ v,
                                const int32_t* __restrict__ pos, int64_t pos_offset,
                                uint4* __restrict__ ck, uint4* __restrict__ cv, int n_tok, int n_kv,
                                int hd8, int64_t cap) {
  const int64_t n = (int64_t)n_tok * n_kv * hd8;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int c = (int)(i % hd8);
    const int h = (int)((i / hd8) % n_kv);
    const int t = (int)(i / ((int64_t)hd8 * n_kv));
    const int64_t row = (int64_t)pos[t] - pos_offset;
    const int64_t dst = ((int64_t)h * cap + row) * hd8 + c;
    ck[dst] = k[i];
    cv[dst] = v[i];
  }
}

__global__ void f32_to_f16_kernel(const float* __restrict__ s, __half* __restrict__ d, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    d[i] = __float2half_rn(s[i]);
}

__global__ void f16_to_f32_kernel(const __half* __restrict__ s, float* __restrict__ d, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    d[i] = __half2float(s[i]);
}

__global__ void stats_kernel(const int32_t* n_rows, const int32_t* n_cmp, int n_kv, int64_t extra,
                             int64_t fixed_cmp, int64_t w, unsigned long long* acc) {
  if (threadIdx.x != 0) return;
  int64_t rows = 0, cmp = 0;
  for (int h = 0; h < n_kv; h++) {
    rows += (int64_t)n_rows[h] + extra;
    cmp += n_cmp ? (int64_t)n_cmp[h] + fixed_cmp : fixed_cmp;
  }
  acc[0] += (unsigned long long)(rows * w);
  acc[1] += (unsigned long long)(cmp * w);
}

}  // namespace

int store_kv(const void* k16, const void* v16, const int32_t* pos, int64_t pos_offset,
             void* cache_k, void* cache_v, int n_tok, int n_kv, int head_dim, int64_t capacity,
             cudaStream_t s) {
  if (n_tok <= 0) return SQZ_CUDA_OK;
  if (!k16 || !v16 || !pos || !cache_k || !cache_v || head_dim % 8 != 0) return SQZ_CUDA_EINVAL;
  const int hd8 = head_dim / 8;
  const int64_t n = (int64_t)n_tok * n_kv * hd8;
  store_kv_kernel<<<grid_for(n, 256), 256, 0, s>>>(
      static_cast<const uint4*>(k16), static_cast<const uint4*>(v16), pos, pos_offset,
      static_cast<uint4*>(cache_k), static_cast<uint4*>(cache_v), n_tok, n_kv, hd8, capacity);
  return launch_status();
}

int f32_to_f16(const float* src, void* dst, int64_t n, cudaStream_t s) {
  if (n <= 0) return SQZ_CUDA_OK;
  if (!src || !dst) return SQZ_CUDA_EINVAL;
  f32_to_f16_kernel<<<grid_for(n, 256), 256, 0, s>>>(src, static_cast<__half*>(dst), n);
  return launch_status();
}

int f16_to_f32(const void* src, float* dst, int64_t n, cudaStream_t s) {
  if (n <= 0) return SQZ_CUDA_OK;
  if (!src || !dst) return SQZ_CUDA_EINVAL;
  f16_to_f32_kernel<<<grid_for(n, 256), 256, 0, s>>>(static_cast<const __half*>(src), dst, n);
  return launch_status();
}

int accumulate_plan_stats(const int32_t* n_rows, const int32_t* n_cmp, int n_kv, int64_t extra_rows,
                          int64_t fixed_cmp, int64_t weight, unsigned long long* acc,
                          cudaStream_t s) {
  if (!n_rows || !acc || n_kv <= 0) return SQZ_CUDA_EINVAL;
  stats_kernel<<<1, 32, 0, s>>>(n_rows, n_cmp, n_kv, extra_rows, fixed_cmp, weight, acc);
  return launch_status();
}

}  // namespace sqz::fwd
