#include "backend/cuda/fwd/fwd_common.cuh"
#include "backend/cuda/fwd/swiglu.h"

namespace sqz::fwd {
namespace {

__global__ void swiglu_kernel(const float* __restrict__ gu, __half* __restrict__ out, int64_t n,
                              int n_ff) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t t = i / n_ff, j = i % n_ff;
    const float g = gu[t * 2 * n_ff + j], u = gu[t * 2 * n_ff + n_ff + j];
    // g / (1 + e^-g): e^-g -> inf for g < -88 gives -0, the limit.
    out[i] = __float2half_rn(g / (1.0f + __expf(-g)) * u);
  }
}

}  // namespace

int swiglu_f16(const float* gu, void* out, int64_t n_tok, int n_ff, cudaStream_t s) {
  if (n_tok <= 0) return SQZ_CUDA_OK;
  if (!gu || !out || n_ff <= 0) return SQZ_CUDA_EINVAL;
  const int64_t n = n_tok * n_ff;
  swiglu_kernel<<<grid_for(n, 256), 256, 0, s>>>(gu, static_cast<__half*>(out), n, n_ff);
  return launch_status();
}

}  // namespace sqz::fwd
