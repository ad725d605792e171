// Naive references for the CPU numeric kernels (quant*, matmul, ops): plain scalar C++ written
// directly from the format / op definitions, double arithmetic, no SIMD, no shared code with the
// optimised kernels (the quantized block layouts are re-derived here from byte offsets). They are
// the oracles of tests/test_cpu_*.cpp; speed is irrelevant.
#pragma once

#include <cstdint>
#include <vector>

#include "core/dtype.h"

namespace sqz::ref {

// Exact values of `n` elements of type `t` (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1,
// Q4_K, Q5_K, Q6_K, Q8_K) in double: every format's value d*q (+m) is exact in double, so
// rounding it to float gives the correctly rounded f32 value. Empty result for other types.
std::vector<double> ref_dequantize(DType t, const void* src, int64_t n);

// y[t][o] = sum_i W[o][i] * x[t][i] with W dequantized by ref_dequantize; double accumulation.
// W: [n_out] rows of n_in elements of type t; x: [n_tok, n_in] f32; y: [n_tok, n_out].
std::vector<double> ref_matmul(DType t, const void* W, int64_t n_in, int64_t n_out, const float* x,
                               int64_t n_tok);

// y = x / sqrt(mean(x^2) + eps) * w per row. x: [n_rows, n]; w: [n].
std::vector<double> ref_rmsnorm(const float* x, const float* w, int64_t n_rows, int64_t n,
                                double eps);

// Inverse frequencies theta^(-2i/d), i < head_dim/2, with Llama-3 scaling when factor > 0
// (transcribed from HF transformers' _compute_llama3_parameters).
std::vector<double> ref_rope_freqs(int64_t head_dim, double theta, double factor,
                                   double low_freq_factor, double high_freq_factor, int orig_ctx);

// Rotary embedding of x: [n_tok, n_heads, head_dim] (token stride tok_stride floats), angle
// pos[t] * freq[i] in double. neox: pairs (i, i + d/2); else (2i, 2i+1). Output dense
// [n_tok, n_heads, head_dim].
std::vector<double> ref_rope(const float* x, int64_t n_tok, int64_t n_heads, int64_t head_dim,
                             int64_t tok_stride, const int32_t* pos, const float* freq, bool neox);

// Row-wise softmax. x: [n_rows, n].
std::vector<double> ref_softmax(const float* x, int64_t n_rows, int64_t n);

// silu(gate) * up.
std::vector<double> ref_swiglu(const float* gate, const float* up, int64_t n);

}  // namespace sqz::ref
