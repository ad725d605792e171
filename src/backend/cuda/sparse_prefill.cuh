// Sparse attention of many query rows per KV head (prefill of user tokens, n_q * group > 8) over
// the plan's kept row ranges, on tensor cores (attn_mma.cuh). Split-KV work items come from the
// plan; the last CTA of each (KV head, query block) merges its splits.
#pragma once

#include <cuda_runtime.h>

#include "backend/cuda/plan.cuh"

namespace sqz::cuda {

int launch_sparse_prefill(const sqz_cuda_shape& s, const WsLayout& L, const RunArgs& a,
                          cudaStream_t stream);

// The sm_90a warpgroup-MMA kernel (attn_wgmma.cu): head_dim 128 only.
int launch_sparse_prefill_wgmma(const sqz_cuda_shape& s, const WsLayout& L, const RunArgs& a,
                                cudaStream_t stream);
// Whether the loaded code for the current device has the wgmma kernels (an sm_90a cubin).
bool wgmma_prefill_available();
// sqz_cuda_set_prefill_kernel's setting (SQZ_CUDA_PREFILL_*).
int prefill_kernel_choice();

}  // namespace sqz::cuda
