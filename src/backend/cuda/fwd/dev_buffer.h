// Owned device allocation and CUDA-error -> Status helpers for the host side of the GPU
// forward pass (fwd/*.cpp). Host-only header (no device code).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <utility>

#include "backend/cuda/squeeze_cuda.h"
#include "core/status.h"

namespace sqz::gpu {

// cudaError_t -> Status naming the operation; allocation failures are kOutOfRange (the model
// or context does not fit the card), everything else kInternal.
inline Status cuda_status(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return Status::Ok();
  const Code c = e == cudaErrorMemoryAllocation ? Code::kOutOfRange : Code::kInternal;
  return Error(c, "CUDA: {} failed: {}", what, cudaGetErrorString(e));
}

// sqz_cuda_status code -> Status; a CUDA error also reports cudaGetLastError's text.
inline Status sqz_status(int code, const char* what) {
  if (code == SQZ_CUDA_OK) return Status::Ok();
  if (code == SQZ_CUDA_ECUDA) return cuda_status(cudaGetLastError(), what);
  return Error(code == SQZ_CUDA_EUNSUPPORTED ? Code::kUnsupported : Code::kInternal,
               "CUDA: {} failed: {}", what, sqz_cuda_status_str(code));
}

// Where a CudaBuf lives: device memory, or page-locked host memory (fast, truly asynchronous
// copies to and from the device).
enum class BufKind { kDevice, kPinnedHost };

// Owned CUDA allocation of one kind.
template <BufKind kKind>
class CudaBuf {
 public:
  CudaBuf() = default;
  ~CudaBuf() { reset(); }
  CudaBuf(const CudaBuf&) = delete;
  CudaBuf& operator=(const CudaBuf&) = delete;
  CudaBuf(CudaBuf&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  CudaBuf& operator=(CudaBuf&& o) noexcept {
    if (this != &o) {
      reset();
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  // Exactly `bytes` (contents undefined); frees the previous allocation.
  Status alloc(size_t bytes, const char* what) {
    reset();
    if (bytes == 0) return Status::Ok();
    SQZ_RETURN_IF_ERROR(cuda_status(
        kKind == BufKind::kDevice ? cudaMalloc(&p_, bytes) : cudaMallocHost(&p_, bytes), what));
    n_ = bytes;
    return Status::Ok();
  }
  // At least `bytes`, reallocating only to grow (synchronises through the free).
  Status ensure(size_t bytes, const char* what) {
    return bytes <= n_ ? Status::Ok() : alloc(bytes, what);
  }
  void reset() {
    if (p_) {
      if constexpr (kKind == BufKind::kDevice)
        cudaFree(p_);
      else
        cudaFreeHost(p_);
    }
    p_ = nullptr;
    n_ = 0;
  }
  template <typename T = void>
  T* as() const {
    return static_cast<T*>(p_);
  }
  void* get() const { return p_; }
  size_t size() const { return n_; }

 private:
  void* p_ = nullptr;
  size_t n_ = 0;
};

using DevBuf = CudaBuf<BufKind::kDevice>;
using PinnedBuf = CudaBuf<BufKind::kPinnedHost>;

// The opaque stream handles of the C++ interfaces (void*) as the runtime's type.
inline cudaStream_t as_stream(void* s) {
  return static_cast<cudaStream_t>(s);
}

}  // namespace sqz::gpu
