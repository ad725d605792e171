// Launcher of the wgmma sparse prefill attention (attn_wgmma.cuh) and the process-wide choice
// between it and the mma.sync kernel (sqz_cuda_set_prefill_kernel).
#include <atomic>

#include "backend/cuda/attn_wgmma.cuh"
#include "backend/cuda/sparse_prefill.cuh"

namespace sqz::cuda {
namespace {

__device__ int g_wgmma_built;

// Which code the runtime loaded for this device: the kernel bodies exist only in an sm_90a
// cubin, so the library asks the device rather than trusting the compute capability.
__global__ void wgmma_probe_kernel() {
#ifdef SQZ_WGMMA
  g_wgmma_built = 1;
#else
  g_wgmma_built = 0;
#endif
}

std::atomic<int> g_prefill_kernel{SQZ_CUDA_PREFILL_AUTO};

}  // namespace

bool wgmma_prefill_available() {
  static int cache[64] = {};  // per device: 0 unknown, 1 yes, -1 no
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return false;
  if (cache[dev] == 0) {
    int yes = 0;
    wgmma_probe_kernel<<<1, 1>>>();
    if (cudaGetLastError() != cudaSuccess ||
        cudaMemcpyFromSymbol(&yes, g_wgmma_built, sizeof(int)) != cudaSuccess)
      yes = 0;
    cache[dev] = yes ? 1 : -1;
  }
  return cache[dev] == 1;
}

int prefill_kernel_choice() {
  return g_prefill_kernel.load(std::memory_order_relaxed);
}

PrefillKernel prefill_kernel_wgmma(const sqz_cuda_shape& s) {
  return s.dtype == SQZ_CUDA_BF16
             ? prefill_kernel_of<attn_wgmma_kernel<__nv_bfloat16>, kWgThreads,
                                 attn_wgmma_smem_bytes<__nv_bfloat16>(), kWgPerItem>()
             : prefill_kernel_of<attn_wgmma_kernel<__half>, kWgThreads,
                                 attn_wgmma_smem_bytes<__half>(), kWgPerItem>();
}

}  // namespace sqz::cuda

extern "C" int sqz_cuda_set_prefill_kernel(int which) {
  using namespace sqz::cuda;
  if (which != SQZ_CUDA_PREFILL_AUTO && which != SQZ_CUDA_PREFILL_MMA &&
      which != SQZ_CUDA_PREFILL_WGMMA)
    return SQZ_CUDA_EINVAL;
  if (which == SQZ_CUDA_PREFILL_WGMMA && !wgmma_prefill_available()) return SQZ_CUDA_EUNSUPPORTED;
  g_prefill_kernel.store(which, std::memory_order_relaxed);
  return SQZ_CUDA_OK;
}
