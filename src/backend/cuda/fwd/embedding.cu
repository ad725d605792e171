#include "backend/cuda/fwd/embedding.h"
#include "backend/cuda/fwd/fwd_common.cuh"

namespace sqz::fwd {
namespace {

__global__ void embed_kernel(const int32_t* __restrict__ tok, const __half* __restrict__ table,
                             float* __restrict__ x, int n_embd) {
  const int t = blockIdx.x;
  const __half* row = table + (int64_t)tok[t] * n_embd;
  for (int i = threadIdx.x; i < n_embd; i += blockDim.x)
    x[(int64_t)t * n_embd + i] = __half2float(row[i]);
}

}  // namespace

int embed_f32(const int32_t* tokens, const void* table, float* x, int64_t n_tok, int n_embd,
              cudaStream_t s) {
  if (n_tok <= 0) return SQZ_CUDA_OK;
  if (!tokens || !table || !x || n_embd <= 0 || n_tok > INT32_MAX) return SQZ_CUDA_EINVAL;
  embed_kernel<<<(unsigned)n_tok, 256, 0, s>>>(tokens, static_cast<const __half*>(table), x,
                                               n_embd);
  return launch_status();
}

}  // namespace sqz::fwd
