// Internal glue between quant.cpp (scalar kernels, quantizers, dispatch) and quant_simd.cpp
// (AVX-512 kernels). Not part of the public CPU-backend API.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace sqz::cpu::detail {

// dot(w[0..n), x[0..n)) with x in vec_dot_type(t). n is a multiple of the block size.
using VecDotFn = float (*)(int64_t n, const void* w, const void* x);
using DequantFn = void (*)(const void* src, float* dst, int64_t n);
using QuantFn = void (*)(const float* src, void* dst, int64_t n);

// Fastest kernel for `t` compiled into this binary (nullptr: type unsupported).
VecDotFn vec_dot_fn(DType t);
DequantFn dequant_fn(DType t);

// SIMD kernels (quant_simd.cpp); nullptr when no SIMD kernel exists for `t` in this build.
VecDotFn simd_vec_dot_fn(DType t);
DequantFn simd_dequant_fn(DType t);
QuantFn simd_quant_fn(DType t);

}  // namespace sqz::cpu::detail
