// Per-cluster scalars derived from a head's stored clusters, shared by the CPU scorer
// (score.cpp), the calibration (calib.cpp) and the GPU paths (src/engine/gpu_compile.cpp,
// src/backend/cuda/fwd/gpu_attention.cpp), whose results must agree with the CPU's bit for bit.
// Internal to the project; header-only, so the CUDA library (which links nothing of the core
// library) can use it too.
#pragma once

#include <cstdint>
#include <vector>

// Functions also called from CUDA kernels (src/backend/cuda/fwd/compile_gpu.cu), so that both
// devices run one definition.
#ifdef __CUDACC__
#define SQZ_HOST_DEVICE __host__ __device__
#else
#define SQZ_HOST_DEVICE
#endif

namespace sqz {

// Keys in coarse cluster c: the f32 of the f64 sum of its children's sizes (fine_sizes: [n_fine]
// keys per fine cluster; coarse_ranges: [n_coarse + 1] fine-cluster boundaries).
inline float coarse_cluster_size(const float* fine_sizes, const int32_t* coarse_ranges, int c) {
  double s = 0.0;
  for (int32_t j = coarse_ranges[c]; j < coarse_ranges[c + 1]; j++) s += fine_sizes[j];
  return (float)s;
}

// Estimator::kMeanIso's scalar of one cluster: the mean over its d dimensions of the
// per-dimension variance var[0, d), summed in f64 in dimension order, rounded to f32.
SQZ_HOST_DEVICE inline float iso_variance(const float* var, int64_t d) {
  double s = 0.0;
  for (int64_t t = 0; t < d; t++) s += var[t];
  return (float)(s / (double)d);
}

// iso_variance of k clusters' variances V ([k, d]) into out ([k]).
inline void iso_variances(const float* V, int64_t k, int64_t d, std::vector<float>& out) {
  out.resize((size_t)k);
  for (int64_t j = 0; j < k; j++) out[(size_t)j] = iso_variance(V + j * d, d);
}

}  // namespace sqz
