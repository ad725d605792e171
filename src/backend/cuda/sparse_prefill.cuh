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

// CTAs of prefill attention kernel K resident per SM (function attributes and occupancy are
// per kernel, so they are resolved once per K).
template <auto K, int THREADS, int SMEM>
int prefill_blocks_per_sm() {
  static const int blocks_per_sm = [] {
    cudaFuncSetAttribute(K, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM);
    int b = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, K, THREADS, SMEM) != cudaSuccess) b = 1;
    return std::max(1, b);
  }();
  return blocks_per_sm;
}

// Work items one wave of kernel K runs at once (PER_ITEM CTAs share one item): the plan's
// partition target (lookup_impl.cuh partition_block).
template <auto K, int THREADS, int SMEM, int PER_ITEM = 1>
int prefill_wave_items_of(const WsLayout& L) {
  return std::max(1, L.num_sms * prefill_blocks_per_sm<K, THREADS, SMEM>() / PER_ITEM);
}

// Persistent launch of prefill attention kernel K (RunArgs) over the plan's items: as many CTAs
// as fit on the device at once, at most PER_ITEM per item (CTAs that share one item).
template <auto K, int THREADS, int SMEM, int PER_ITEM = 1>
int launch_prefill_items(const WsLayout& L, const RunArgs& a, cudaStream_t stream) {
  const int grid = std::max(
      1, std::min(L.max_items * PER_ITEM, L.num_sms * prefill_blocks_per_sm<K, THREADS, SMEM>()));
  return launch_k(K, dim3(grid), dim3(THREADS), SMEM, stream, a) == cudaSuccess ? SQZ_CUDA_OK
                                                                                : SQZ_CUDA_ECUDA;
}

// Items per wave of the kernel launch_sparse_prefill would pick now for this shape (the plan
// sizes its items from it; a kernel choice changed between plan and run costs speed, not
// correctness).
int prefill_wave_items(const sqz_cuda_shape& s, const WsLayout& L);
int prefill_wave_items_wgmma(const sqz_cuda_shape& s, const WsLayout& L);

// The sm_90a warpgroup-MMA kernel (attn_wgmma.cu): head_dim 128 only.
int launch_sparse_prefill_wgmma(const sqz_cuda_shape& s, const WsLayout& L, const RunArgs& a,
                                cudaStream_t stream);
// Whether the loaded code for the current device has the wgmma kernels (an sm_90a cubin).
bool wgmma_prefill_available();
// sqz_cuda_set_prefill_kernel's setting (SQZ_CUDA_PREFILL_*).
int prefill_kernel_choice();
// Whether the sparse prefill attention of this head_dim runs the wgmma kernel under that
// setting on the current device.
bool prefill_uses_wgmma(int head_dim);

}  // namespace sqz::cuda
