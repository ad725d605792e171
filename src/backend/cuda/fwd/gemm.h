// cuBLAS GEMM of the forward pass: f16 operands, f32 accumulate and f32 output.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

namespace sqz::fwd {

class Gemm {
 public:
  Gemm() = default;
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // Creates the cuBLAS handle bound to `stream`; "" on success, else the reason.
  std::string init(cudaStream_t stream);

  // y[t, n] = beta * y[t, n] + sum_k x[t, k] * w[n, k]  (y = x W^T; beta = 1 adds the product
  // to y, which is how the residual connections are fused).
  // x: [n_tok, K] f16 row-major; w: [N, K] f16 row-major (a GGUF weight's rows); y: [n_tok, N]
  // f32. Returns an sqz_cuda_status code.
  int run(const void* x, const void* w, float* y, int64_t n_tok, int64_t N, int64_t K,
          float beta) const;

 private:
  void* handle_ = nullptr;  // cublasHandle_t
};

}  // namespace sqz::fwd
