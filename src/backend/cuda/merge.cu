// (out, lse) + (out, lse) -> out: merges the squeezed-context state with the user-token state.
#include "backend/cuda/merge.cuh"

namespace sqz::cuda {
namespace {

template <typename TO>
__device__ __forceinline__ void store_out(TO* p, float v);
template <>
__device__ __forceinline__ void store_out<float>(float* p, float v) {
  *p = v;
}
template <>
__device__ __forceinline__ void store_out<__nv_bfloat16>(__nv_bfloat16* p, float v) {
  *p = __float2bfloat16(v);
}
template <>
__device__ __forceinline__ void store_out<__half>(__half* p, float v) {
  *p = __float2half(v);
}

// One warp per (token, head). Weights are computed relative to the larger lse so an empty state
// (lse = -inf) gets weight 0 and two empty states give out = 0, lse = -inf (never NaN).
template <typename TO>
__global__ void merge_states_kernel(int n_q, int n_heads, int D, sqz_cuda_state a, sqz_cuda_state b,
                                    TO* out, float* lse) {
  pdl_wait();
  const int w = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (w >= n_q * n_heads) return;
  const int t = w / n_heads, h = w - t * n_heads;
  const float la = a.lse[(int64_t)t * a.lse_tok_stride + h];
  const float lb = b.lse[(int64_t)t * b.lse_tok_stride + h];
  const float M = fmaxf(la, lb);
  float wa = 0.0f, wb = 0.0f;
  if (M != kNegInf) {
    wa = la == kNegInf ? 0.0f : __expf(la - M);
    wb = lb == kNegInf ? 0.0f : __expf(lb - M);
  }
  const float den = wa + wb;
  const float ia = den > 0.0f ? wa / den : 0.0f, ib = den > 0.0f ? wb / den : 0.0f;
  const float* oa = a.out + (int64_t)t * a.out_tok_stride + (int64_t)h * D;
  const float* ob = b.out + (int64_t)t * b.out_tok_stride + (int64_t)h * D;
  TO* o = out + ((int64_t)t * n_heads + h) * D;
  for (int d = lane; d < D; d += 32) {
    // A zero weight must not propagate a NaN/garbage value from an empty state's output.
    float v = 0.0f;
    if (ia > 0.0f) v += ia * oa[d];
    if (ib > 0.0f) v += ib * ob[d];
    store_out<TO>(o + d, v);
  }
  if (lse && lane == 0) lse[(int64_t)t * n_heads + h] = den > 0.0f ? M + __logf(den) : kNegInf;
}

}  // namespace

int launch_merge_states(int n_q, int n_heads, int head_dim, const sqz_cuda_state& a0,
                        const sqz_cuda_state& b0, void* out, sqz_cuda_dtype out_dtype, float* lse,
                        cudaStream_t stream) {
  sqz_cuda_state a = a0, b = b0;
  const int64_t ots = (int64_t)n_heads * head_dim;
  if (!a.out_tok_stride) a.out_tok_stride = ots;
  if (!b.out_tok_stride) b.out_tok_stride = ots;
  if (!a.lse_tok_stride) a.lse_tok_stride = n_heads;
  if (!b.lse_tok_stride) b.lse_tok_stride = n_heads;
  const int warps = n_q * n_heads;
  const int threads = 256, blocks = (warps * 32 + threads - 1) / threads;
  if (warps == 0) return SQZ_CUDA_OK;
  switch (out_dtype) {
    case SQZ_CUDA_F32:
      launch_k(merge_states_kernel<float>, dim3(blocks), dim3(threads), 0, stream, n_q, n_heads,
               head_dim, a, b, static_cast<float*>(out), lse);
      break;
    case SQZ_CUDA_BF16:
      launch_k(merge_states_kernel<__nv_bfloat16>, dim3(blocks), dim3(threads), 0, stream, n_q,
               n_heads, head_dim, a, b, static_cast<__nv_bfloat16*>(out), lse);
      break;
    case SQZ_CUDA_F16:
      launch_k(merge_states_kernel<__half>, dim3(blocks), dim3(threads), 0, stream, n_q, n_heads,
               head_dim, a, b, static_cast<__half*>(out), lse);
      break;
    default:
      return SQZ_CUDA_EINVAL;
  }
  return cudaGetLastError() == cudaSuccess ? SQZ_CUDA_OK : SQZ_CUDA_ECUDA;
}

}  // namespace sqz::cuda
