// Sparse prefill attention launcher: the kernel is attn_mma_kernel<.., SPARSE = true> or, on
// sm_90a for head_dim 128, attn_wgmma_kernel (attn_wgmma.cu).
#include "backend/cuda/attn_mma.cuh"
#include "backend/cuda/sparse_prefill.cuh"

namespace sqz::cuda {
namespace {

template <int D, typename T>
PrefillKernel mma_kernel() {
  return prefill_kernel_of<attn_mma_kernel<D, T, true>, kAttnThreads,
                           attn_mma_smem_bytes<D, T>()>();
}

// The one place that picks the kernel: the plan's partition and the run's launch both ask it.
PrefillKernel prefill_kernel_for(const sqz_cuda_shape& s) {
  if (prefill_uses_wgmma(s.head_dim)) return prefill_kernel_wgmma(s);
  const bool bf = s.dtype == SQZ_CUDA_BF16;
  if (s.head_dim == 128) return bf ? mma_kernel<128, __nv_bfloat16>() : mma_kernel<128, __half>();
  if (s.head_dim == 64) return bf ? mma_kernel<64, __nv_bfloat16>() : mma_kernel<64, __half>();
  return PrefillKernel{};
}

}  // namespace

// AUTO and WGMMA take the wgmma kernel where it exists (head_dim 128, sm_90a code loaded for
// the current device: a cached probe); it measured faster than mma.sync (attn_wgmma.cuh).
bool prefill_uses_wgmma(int head_dim) {
  return prefill_kernel_choice() != SQZ_CUDA_PREFILL_MMA && head_dim == 128 &&
         wgmma_prefill_available();
}

int prefill_wave_items(const sqz_cuda_shape& s, const WsLayout& L) {
  const PrefillKernel k = prefill_kernel_for(s);
  return std::max(1, L.num_sms * k.blocks_per_sm / k.per_item);
}

// Persistent: as many CTAs as fit on the device at once, at most per_item per item.
int launch_sparse_prefill(const sqz_cuda_shape& s, const WsLayout& L, const RunArgs& a,
                          cudaStream_t stream) {
  const PrefillKernel k = prefill_kernel_for(s);
  if (!k.fn) return SQZ_CUDA_EUNSUPPORTED;
  const int grid = std::max(1, std::min(L.max_items * k.per_item, L.num_sms * k.blocks_per_sm));
  return launch_k(k.fn, dim3(grid), dim3(k.threads), k.smem, stream, a) == cudaSuccess
             ? SQZ_CUDA_OK
             : SQZ_CUDA_ECUDA;
}

}  // namespace sqz::cuda

extern "C" int sqz_cuda_prefill_kernel(int head_dim) {
  using namespace sqz::cuda;
  if (head_dim != 64 && head_dim != 128) return SQZ_CUDA_EINVAL;
  return prefill_uses_wgmma(head_dim) ? SQZ_CUDA_PREFILL_WGMMA : SQZ_CUDA_PREFILL_MMA;
}
