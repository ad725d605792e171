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

}  // namespace

int launch_sparse_prefill(const sqz_cuda_shape& s, const WsLayout& L, const RunArgs& a,
                          cudaStream_t stream) {
  // The wgmma kernel only on request: it measured no faster (attn_wgmma.cuh). The request was
  // checked for the device current then; another device may lack sm_90a code (cached probe).
  if (prefill_kernel_choice() == SQZ_CUDA_PREFILL_WGMMA && s.head_dim == 128 &&
      wgmma_prefill_available())
    return launch_sparse_prefill_wgmma(s, L, a, stream);
  const bool bf = s.dtype == SQZ_CUDA_BF16;
  if (s.head_dim == 128)
    return bf ? launch_mma<128, __nv_bfloat16>(L, a, stream)
              : launch_mma<128, __half>(L, a, stream);
  if (s.head_dim == 64)
    return bf ? launch_mma<64, __nv_bfloat16>(L, a, stream) : launch_mma<64, __half>(L, a, stream);
  return SQZ_CUDA_EUNSUPPORTED;
}

}  // namespace sqz::cuda
