// Quantized block formats (ggml-compatible layouts) and their CPU kernels.
// Layouts follow the GGUF spec so weights are used in place from the mmap'ed file.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace sqz::cpu {

// Dequantize `n` elements (a multiple of the type's block size) of type `t` into f32.
// Supports F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q4_K, Q5_K, Q6_K, Q8_K.
void dequantize_row(DType t, const void* src, float* dst, int64_t n);

// Quantize f32 -> t (used by tests, the random-model generator and the GGUF writer).
// Supports the same types as dequantize_row (Q8_1/Q8_K too). n multiple of block size.
void quantize_row(DType t, const float* src, void* dst, int64_t n);

// The activation format that weight type `t` is dotted against: Q8_1 for all 32-element block
// types (its s = d*sum(q) turns a per-block offset - Q4_1's +m, Q4_0's -8, Q8_0's +128 unsigned
// bias of the VNNI kernel - into one multiply per block; ggml uses Q8_0 for the _0 types), Q8_K
// for the K-quants, F32 for float weights; kInvalid for anything else.
DType vec_dot_type(DType t);

// dot(w_row[0..n), x[0..n)) where w_row is of type `t` and x is already quantized to
// vec_dot_type(t). SIMD (AVX2/AVX-512 VNNI when compiled for it), scalar fallback.
float vec_dot(DType t, int64_t n, const void* w_row, const void* x);

// ---- additions (see quant.cpp) ----

// True for the types vec_dot / matmul accept as weights (F32, F16, BF16, Q4_0, Q4_1, Q5_0,
// Q5_1, Q8_0, Q4_K, Q5_K, Q6_K).
bool is_weight_type(DType t);

// Elements per block (1 for float types); 0 for an unknown type.
int64_t block_size(DType t);

// Dequantize straight to bfloat16 (round-to-nearest-even); feeds the AMX prefill GEMM.
void dequantize_row_bf16(DType t, const void* src, uint16_t* dst, int64_t n);

// The portable scalar kernels behind dequantize_row / vec_dot. Exposed so the tests can check
// the SIMD paths against them on machines where the SIMD path is what the dispatch picks.
void dequantize_row_scalar(DType t, const void* src, float* dst, int64_t n);
void quantize_row_scalar(DType t, const float* src, void* dst, int64_t n);
float vec_dot_scalar(DType t, int64_t n, const void* w_row, const void* x);

}  // namespace sqz::cpu
