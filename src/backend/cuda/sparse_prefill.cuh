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

// Items per wave of the kernel launch_sparse_prefill would pick now for this shape (the plan
// sizes its items from it, lookup_impl.cuh partition_block; a kernel choice changed between
// plan and run costs speed, not correctness).
int prefill_wave_items(const sqz_cuda_shape& s, const WsLayout& L);

// One prefill attention kernel as the launcher needs it: persistent over the plan's items,
// per_item CTAs sharing one item, blocks_per_sm resident (occupancy API).
struct PrefillKernel {
  void (*fn)(RunArgs) = nullptr;
  int threads = 0, smem = 0, per_item = 1, blocks_per_sm = 1;
};

// The description of kernel K. Function attributes and occupancy are per kernel, so they are
// resolved once per K.
template <auto K, int THREADS, int SMEM, int PER_ITEM = 1>
PrefillKernel prefill_kernel_of() {
  static const int blocks_per_sm = [] {
    cudaFuncSetAttribute(K, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM);
    int b = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, K, THREADS, SMEM) != cudaSuccess) b = 1;
    return std::max(1, b);
  }();
  return PrefillKernel{K, THREADS, SMEM, PER_ITEM, blocks_per_sm};
}

// The sm_90a warpgroup-MMA kernel for this dtype (attn_wgmma.cu; head_dim 128 only).
PrefillKernel prefill_kernel_wgmma(const sqz_cuda_shape& s);
// Whether the loaded code for the current device has the wgmma kernels (an sm_90a cubin).
bool wgmma_prefill_available();
// sqz_cuda_set_prefill_kernel's setting (SQZ_CUDA_PREFILL_*).
int prefill_kernel_choice();
// Whether the sparse prefill attention of this head_dim runs the wgmma kernel under that
// setting on the current device.
bool prefill_uses_wgmma(int head_dim);

}  // namespace sqz::cuda
