#include "backend/cuda/fwd/gemm.h"

#include <cublas_v2.h>

#include <climits>

#include "backend/cuda/squeeze_cuda.h"

namespace sqz::fwd {

Gemm::~Gemm() {
  if (handle_) cublasDestroy(static_cast<cublasHandle_t>(handle_));
}

std::string Gemm::init(cudaStream_t stream) {
  cublasHandle_t h = nullptr;
  const cublasStatus_t st = cublasCreate(&h);
  if (st != CUBLAS_STATUS_SUCCESS)
    return std::string("cublasCreate failed: ") + cublasGetStatusString(st);
  handle_ = h;
  if (cublasSetStream(h, stream) != CUBLAS_STATUS_SUCCESS) return "cublasSetStream failed";
  return "";
}

int Gemm::run(const void* x, const void* w, float* y, int64_t n_tok, int64_t N, int64_t K,
              float beta) const {
  if (n_tok <= 0) return SQZ_CUDA_OK;
  if (!handle_ || !x || !w || !y || N <= 0 || K <= 0 || N > INT_MAX || K > INT_MAX ||
      n_tok > INT_MAX)
    return SQZ_CUDA_EINVAL;
  // Column-major view: Y^T [N, n_tok] = W [N, K] (stored as W^T col-major, lda = K) x X^T
  // [K, n_tok] (X row-major = X^T col-major, ldb = K).
  const float alpha = 1.0f;
  const cublasStatus_t st =
      cublasGemmEx(static_cast<cublasHandle_t>(handle_), CUBLAS_OP_T, CUBLAS_OP_N, (int)N,
                   (int)n_tok, (int)K, &alpha, w, CUDA_R_16F, (int)K, x, CUDA_R_16F, (int)K, &beta,
                   y, CUDA_R_32F, (int)N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  return st == CUBLAS_STATUS_SUCCESS ? SQZ_CUDA_OK : SQZ_CUDA_ECUDA;
}

}  // namespace sqz::fwd
