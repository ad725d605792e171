// Dense causal attention launcher; the kernel is attn_mma_kernel<.., SPARSE = false>.
#include "backend/cuda/attn_mma.cuh"
#include "backend/cuda/dense_causal.cuh"

namespace sqz::cuda {
namespace {

template <int D, typename T>
int launch_t(int n_kv, const RunArgs& a, cudaStream_t stream) {
  constexpr int smem = attn_mma_smem_bytes<D, T>();
  static const bool attr_ok =
      cudaFuncSetAttribute(attn_mma_kernel<D, T, false>,
                           cudaFuncAttributeMaxDynamicSharedMemorySize, smem) == cudaSuccess;
  if (!attr_ok) return SQZ_CUDA_ECUDA;
  const dim3 grid((a.qtot + kPrefillBM - 1) / kPrefillBM, n_kv);
  return launch_k(attn_mma_kernel<D, T, false>, dim3(grid), dim3(kAttnThreads), smem, stream, a) ==
                 cudaSuccess
             ? SQZ_CUDA_OK
             : SQZ_CUDA_ECUDA;
}

}  // namespace

int launch_dense_causal(sqz_cuda_dtype dtype, int head_dim, int n_kv, const RunArgs& a,
                        cudaStream_t stream) {
  if (a.qtot <= 0) return SQZ_CUDA_OK;
  const bool bf = dtype == SQZ_CUDA_BF16;
  if (head_dim == 128)
    return bf ? launch_t<128, __nv_bfloat16>(n_kv, a, stream)
              : launch_t<128, __half>(n_kv, a, stream);
  if (head_dim == 64)
    return bf ? launch_t<64, __nv_bfloat16>(n_kv, a, stream)
              : launch_t<64, __half>(n_kv, a, stream);
  return SQZ_CUDA_EUNSUPPORTED;
}

}  // namespace sqz::cuda
