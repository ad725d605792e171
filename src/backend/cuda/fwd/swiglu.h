// SwiGLU of the fused gate|up GEMM output into the f16 input of the down projection.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace sqz::fwd {

// out[t, j] = silu(gu[t, j]) * gu[t, n_ff + j]. gu: [n_tok, 2*n_ff] f32; out: [n_tok, n_ff] f16.
int swiglu_f16(const float* gu, void* out, int64_t n_tok, int n_ff, cudaStream_t stream);

}  // namespace sqz::fwd
