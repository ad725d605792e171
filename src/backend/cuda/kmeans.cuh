// Spherical (cosine) K-means on the GPU for the compile step (sqz_cuda_kmeans_* in
// squeeze_cuda.h).
//
// Seeding: k-means++ D^2 sampling done in batches (each round draws `batch` points with
// probability proportional to 1 - max cosine to the centres so far, then updates the distances
// with one GEMM) -- the sequential one-centre-at-a-time k-means++ would need k dependent passes.
// Assignment: cuBLAS GEMM (bf16 normalised points x bf16 centroids, f32 out) in row chunks,
// argmax per row. Update: counting sort by cluster (histogram, scan, scatter) then one warp per
// cluster sums its members and renormalises. Empty clusters are reseeded with a random point of
// a cluster that has at least two members.
#pragma once

#include "backend/cuda/squeeze_cuda.h"

namespace sqz::cuda {

// Row chunk of the assignment GEMM: bounds the f32 score buffer to ~kKmeansScoreBytes.
constexpr size_t kKmeansScoreBytes = size_t(512) << 20;

}  // namespace sqz::cuda
