// y = x · Wᵀ for a weight matrix W stored as rows of any supported dtype.
#pragma once

#include <cstdint>

#include "formats/model_file.h"

namespace sqz::cpu {

// W: TensorView with ne = {n_in, n_out} (row-major [n_out][n_in], rows of W.type).
// x: [n_tok, n_in] f32 (row stride n_in). y: [n_tok, n_out] f32 (row stride n_out).
// Few tokens (decode, n_tok <= 4) quantize x once to vec_dot_type and use vec_dot per row;
// more tokens (prefill) dequantize panels of W and run a GEMM (AMX bf16 where available, else
// f32 tiles + OpenBLAS sgemm). See MatmulKernel below for the kernels and their error bounds.
// Threads: uses an OpenMP parallel region with `n_threads` threads over output rows.
// `scratch` must hold matmul_scratch_size(...) bytes; the call allocates nothing.
// OpenBLAS (pthread build) runs each sgemm on its own thread pool, and concurrent calls from
// our OpenMP threads then serialise on that pool: every caller that runs sgemm inside a parallel
// region calls this first (idempotent) to keep OpenBLAS single-threaded per call.
void openblas_single_thread_once();

size_t matmul_scratch_size(const TensorView& W, int64_t n_tok, int n_threads);
void matmul(const TensorView& W, const float* x, int64_t n_tok, float* y, void* scratch,
            int n_threads);

// ---- additions (see matmul.cpp) ----

// The kernels behind matmul(); kAuto is what matmul() does (vec-dot for n_tok <= 4, else AMX
// bf16 when the CPU and kernel allow it, else the f32 tile GEMM). Explicit choices exist for
// tests and benchmarks; every kernel handles every weight type and shape.
//  kVecDot:  x quantized once to vec_dot_type(W.type), one vec_dot per (row, token).
//            Error: the activation format's (Q8: |x - xq| <= amax(block)/254) + f32 rounding.
//  kTileF32: tiles of 64 W rows dequantized to f32, OpenBLAS sgemm (single-threaded inside our
//            OpenMP region). Error: f32 accumulation only.
//  kAmxBf16: W panels dequantized to bf16 and x rounded to bf16, AMX TDPBF16PS with f32
//            accumulation. Error: |w x| (2^-7 + 2^-16) per product (both operands rounded
//            to bf16, u = 2^-8) + f32 accumulation.
enum class MatmulKernel { kAuto, kVecDot, kTileF32, kAmxBf16 };

// True when the AMX-BF16 kernel can run here (compiled with AMX and the OS granted tile state).
bool amx_available();

// The kernel kAuto picks for this shape.
MatmulKernel matmul_auto_kernel(const TensorView& W, int64_t n_tok);

// matmul with an explicit kernel (kAmxBf16 falls back to kTileF32 when !amx_available()).
// matmul_scratch_size() covers every kernel.
void matmul_with(MatmulKernel kernel, const TensorView& W, const float* x, int64_t n_tok, float* y,
                 void* scratch, int n_threads);

}  // namespace sqz::cpu
