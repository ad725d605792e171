// Dense causal attention of the user tokens over their own K/V rows (tensor cores, one CTA per
// 128 query rows x KV head, no split: user-token key counts are small next to the context).
#pragma once

#include <cuda_runtime.h>

#include "backend/cuda/plan.cuh"

namespace sqz::cuda {

// a.p is unused; a.n_keys / key_pos0 / q_pos0 describe the keys.
int launch_dense_causal(sqz_cuda_dtype dtype, int head_dim, int n_kv_heads, const RunArgs& a,
                        cudaStream_t stream);

}  // namespace sqz::cuda
