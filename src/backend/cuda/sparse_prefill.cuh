// Sparse attention of many query rows per KV head (prefill of user tokens, n_q * group > 8) over
// the plan's kept row ranges, on tensor cores (attn_mma.cuh). Split-KV work items come from the
// plan; the last CTA of each (KV head, query block) merges its splits.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>

#include "backend/cuda/common.cuh"
#include "backend/cuda/plan.cuh"

namespace sqz::cuda {

int launch_sparse_prefill(const sqz_cuda_shape& s, const WsLayout& L, const RunArgs& a,
                          cudaStream_t stream);

// Persistent launch of prefill attention kernel K (RunArgs) over the plan's items: as many CTAs
// as fit on the device at once, at most PER_ITEM per item (CTAs that share one item). Function
// attributes and occupancy are per kernel, so they are resolved once per K.
template <auto K, int THREADS, int SMEM, int PER_ITEM = 1>
int launch_prefill_items(const WsLayout& L, const RunArgs& a, cudaStream_t stream) {
  static const int blocks_per_sm = [] {
    cudaFuncSetAttribute(K, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM);
    int b = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, K, THREADS, SMEM) != cudaSuccess) b = 1;
    return std::max(1, b);
  }();
  const int grid = std::max(1, std::min(L.max_items * PER_ITEM, L.num_sms * blocks_per_sm));
  return launch_k(K, dim3(grid), dim3(THREADS), SMEM, stream, a) == cudaSuccess ? SQZ_CUDA_OK
                                                                                : SQZ_CUDA_ECUDA;
}

// The sm_90a warpgroup-MMA kernel (attn_wgmma.cu): head_dim 128 only.
int launch_sparse_prefill_wgmma(const sqz_cuda_shape& s, const WsLayout& L, const RunArgs& a,
                                cudaStream_t stream);
// Whether the loaded code for the current device has the wgmma kernels (an sm_90a cubin).
bool wgmma_prefill_available();
// sqz_cuda_set_prefill_kernel's setting (SQZ_CUDA_PREFILL_*).
int prefill_kernel_choice();

}  // namespace sqz::cuda
