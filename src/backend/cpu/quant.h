// Quantized block formats (ggml-compatible layouts) and their CPU kernels.
// Layouts follow the GGUF spec so weights are used in place from the mmap'ed file.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace sqz::cpu {

// Dequantize `n` elements (a multiple of the type's block size) of type `t` into f32.
// Supports F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K.
void dequantize_row(DType t, const void* src, float* dst, int64_t n);

// Quantize f32 -> t (used by tests, the random-model generator and the GGUF writer).
// Supports the same types as dequantize_row (Q8_1/Q8_K too). n multiple of block size.
void quantize_row(DType t, const float* src, void* dst, int64_t n);

// The activation format that weight type `t` is dotted against (Q8_0 for the 32-blocks,
// Q8_K for K-quants, F32 for float weights).
DType vec_dot_type(DType t);

// dot(w_row[0..n), x[0..n)) where w_row is of type `t` and x is already quantized to
// vec_dot_type(t). SIMD (AVX2/AVX-512 VNNI when compiled for it), scalar fallback.
float vec_dot(DType t, int64_t n, const void* w_row, const void* x);

}  // namespace sqz::cpu
