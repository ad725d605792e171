// RMSNorm of the f32 residual stream into the f16 GEMM input.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace sqz::fwd {

// y[r, i] = x[r, i] / sqrt(mean_i x[r, i]^2 + eps) * w[i], rounded to f16.
// x: [rows, n] f32; w: [n] f32; y: [rows, n] f16 (all device).
int rmsnorm_f16(const float* x, const float* w, void* y, int64_t rows, int n, float eps,
                cudaStream_t stream);

}  // namespace sqz::fwd
