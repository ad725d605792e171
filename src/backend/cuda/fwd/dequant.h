// GGUF weight blocks -> f16 on the GPU (load time).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace sqz::fwd {

// True if fwd_dequant_f16 handles this ggml type id: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1,
// Q8_0, Q4_K, Q5_K, Q6_K.
bool dequant_supported(uint32_t ggml_type);

// dst[i] = value of element i of the blocks at src (device bytes), i < n, rounded to f16.
// n must be a whole number of blocks of the type. dst: [n] f16 (device).
int dequant_f16(uint32_t ggml_type, const void* src, void* dst, int64_t n, cudaStream_t stream);

// The same on f32 output (norm weights, biases). dst: [n] f32 (device).
int dequant_f32(uint32_t ggml_type, const void* src, float* dst, int64_t n, cudaStream_t stream);

}  // namespace sqz::fwd
