// Sparse prefill attention launcher; the kernel is attn_mma_kernel<.., SPARSE = true>.
#include "backend/cuda/attn_mma.cuh"
#include "backend/cuda/sparse_prefill.cuh"

namespace sqz::cuda {
namespace {

template <int D, typename T>
int launch_mma(const WsLayout& L, const RunArgs& a, cudaStream_t stream) {
  return launch_prefill_items<attn_mma_kernel<D, T, true>, kAttnThreads,
                              attn_mma_smem_bytes<D, T>()>(L, a, stream);
}

template <int D, typename T>
int wave_mma(const WsLayout& L) {
  return prefill_wave_items_of<attn_mma_kernel<D, T, true>, kAttnThreads,
                               attn_mma_smem_bytes<D, T>()>(L);
}

bool use_wgmma(const sqz_cuda_shape& s) {
  return prefill_uses_wgmma(s.head_dim);
}

}  // namespace

// AUTO and WGMMA take the wgmma kernels where they exist (head_dim 128, sm_90a code loaded for
// the current device: a cached probe); they measured faster than mma.sync (attn_wgmma.cuh).
bool prefill_uses_wgmma(int head_dim) {
  return prefill_kernel_choice() != SQZ_CUDA_PREFILL_MMA && head_dim == 128 &&
         wgmma_prefill_available();
}

int prefill_wave_items(const sqz_cuda_shape& s, const WsLayout& L) {
  if (use_wgmma(s)) return prefill_wave_items_wgmma(s, L);
  const bool bf = s.dtype == SQZ_CUDA_BF16;
  if (s.head_dim == 128) return bf ? wave_mma<128, __nv_bfloat16>(L) : wave_mma<128, __half>(L);
  return bf ? wave_mma<64, __nv_bfloat16>(L) : wave_mma<64, __half>(L);
}

}  // namespace sqz::cuda

extern "C" int sqz_cuda_prefill_kernel(int head_dim) {
  using namespace sqz::cuda;
  if (head_dim != 64 && head_dim != 128) return SQZ_CUDA_EINVAL;
  return prefill_uses_wgmma(head_dim) ? SQZ_CUDA_PREFILL_WGMMA : SQZ_CUDA_PREFILL_MMA;
}

namespace sqz::cuda {

int launch_sparse_prefill(const sqz_cuda_shape& s, const WsLayout& L, const RunArgs& a,
                          cudaStream_t stream) {
  if (use_wgmma(s)) return launch_sparse_prefill_wgmma(s, L, a, stream);
  const bool bf = s.dtype == SQZ_CUDA_BF16;
  if (s.head_dim == 128)
    return bf ? launch_mma<128, __nv_bfloat16>(L, a, stream)
              : launch_mma<128, __half>(L, a, stream);
  if (s.head_dim == 64)
    return bf ? launch_mma<64, __nv_bfloat16>(L, a, stream) : launch_mma<64, __half>(L, a, stream);
  return SQZ_CUDA_EUNSUPPORTED;
}

}  // namespace sqz::cuda
