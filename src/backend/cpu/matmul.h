// y = x · Wᵀ for a weight matrix W stored as rows of any supported dtype.
#pragma once

#include <cstdint>

#include "formats/model_file.h"

namespace sqz::cpu {

// W: TensorView with ne = {n_in, n_out} (row-major [n_out][n_in], rows of W.type).
// x: [n_tok, n_in] f32 (row stride n_in). y: [n_tok, n_out] f32 (row stride n_out).
// n_tok == 1 (decode) quantizes x once to vec_dot_type and uses vec_dot per row;
// n_tok > 1 (prefill) dequantizes tiles of W to f32 and runs a blocked SIMD/BLAS GEMM.
// Threads: uses an OpenMP parallel region with `n_threads` threads over output rows.
// `scratch` must hold matmul_scratch_size(...) bytes; the call allocates nothing.
size_t matmul_scratch_size(const TensorView& W, int64_t n_tok, int n_threads);
void matmul(const TensorView& W, const float* x, int64_t n_tok, float* y, void* scratch,
            int n_threads);

}  // namespace sqz::cpu
