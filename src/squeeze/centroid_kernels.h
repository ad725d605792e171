// SIMD kernels for centroid comparisons: dot products of row vectors against a transposed,
// column-padded centroid matrix, either stored (logits for scoring) or reduced to the best
// centroid per row (K-means assignment). The centroid matrix is transposed so a tile of
// consecutive centroids is one SIMD load per dimension and no horizontal reductions are needed;
// with head_dim 64 this runs close to the FMA peak without BLAS (whose pthread pool fights with
// our OpenMP jobs).
#pragma once

#include <cstdint>

namespace sqz::cpu {

// Centroids per tile (two SIMD vectors of floats); transposed matrices are padded to a
// multiple of it.
int64_t centroid_tile_cols();
inline int64_t centroid_padded_cols(int64_t k) {
  const int64_t t = centroid_tile_cols();
  return (k + t - 1) / t * t;
}
// Floats to allocate for a transposed matrix: d * kp plus one tile of slack, because tiles that
// start at an unaligned column may read (never use) past the last row.
inline int64_t centroid_transposed_size(int64_t k, int64_t d) {
  return d * centroid_padded_cols(k) + centroid_tile_cols();
}

// Ct[t * kp + j] = C[j * ldc + t] for j < k; padding columns and the slack are zeroed.
// C: [k, d] f32 (row stride ldc). Ct: [d, kp] f32, kp = centroid_padded_cols(k).
void centroids_transpose(const float* C, int64_t k, int64_t d, int64_t ldc, float* Ct);

// For each row i of X ([n, d], row stride ldx): best[i] = argmax_j X_i·C_j over j < k (lowest j
// on exact ties), best_dot[i] = that dot product, second_dot[i] (if non-null) = the largest dot
// with any other centroid (-inf when k == 1).
void centroid_argmax(const float* X, int64_t n, int64_t d, int64_t ldx, const float* Ct, int64_t k,
                     int32_t* best, float* best_dot, float* second_dot);

// S[i * lds + (j - j0)] = X_i · C_j for j in [j0, j1) (j1 <= k). Ct as above for k centroids.
void centroid_dots(const float* X, int64_t n, int64_t d, int64_t ldx, const float* Ct, int64_t k,
                   int64_t j0, int64_t j1, float* S, int64_t lds);

// Dot product of two length-d vectors (SIMD along d; summation order fixed for a given d).
float row_dot(const float* a, const float* b, int64_t d);

// k-means++ distance update against one new centre c ([d]):
// mind[i] = min(mind[i], 1 - sum_t c[t] * Xt[t * ldt + i]) for i < n.
// Xt: [d, ldt] transposed points (ldt >= n) in f16, so the loop runs along points with no
// reductions and the whole matrix stays in L2 (seeding only needs approximate distances; the
// chosen centres are exact f32 rows). Returns sum_i max(0, mind[i]) after the update.
float kpp_min_update(const uint16_t* Xt, int64_t n, int64_t ldt, int64_t d, const float* c,
                     float* mind);

}  // namespace sqz::cpu
