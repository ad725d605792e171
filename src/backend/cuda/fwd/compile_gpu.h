// Device side of `sqz compile --device cuda` after the K-means (src/engine/gpu_compile.cpp):
// K/V checks and gathers, per-cluster statistics and the calibration's per-head passes. Each
// kernel reproduces the arithmetic of the CPU code it replaces (src/squeeze/compile.cpp,
// calib.cpp, score.cpp): the same f64 accumulations in the same order wherever the CPU sums
// sequentially, f32 where it rounds to f32, exp in f64 rounded to f32 for the CPU's expf.
// Only the dot products (cuBLAS SGEMM, no TF32) and a few f32 sums are ordered differently, so
// results agree with the CPU's to float rounding (tests/test_cuda_forward.cpp checks it).
//
// Launchers return sqz_cuda_status codes and never synchronise. Host-only header.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace sqz::fwd {

// *bad += number of f16 values among x[0, n) that are inf or NaN (n a multiple of 8, x 16-byte
// aligned).
int count_nonfinite_f16(const void* x, int64_t n, unsigned long long* bad, cudaStream_t s);

// dst row r = src row perm[r], r < n_rows, rows of d f16 values (d a multiple of 8); dst f16 or
// (to_f32) f32.
int gather_rows(const void* src, const int32_t* perm, int64_t n_rows, int d, void* dst, bool to_f32,
                cudaStream_t s);

// Fine-cluster statistics of one head from its rows in cluster order (rows: [n, d] f16;
// cluster j = rows [off[j], off[j + 1]), never empty), as assemble_head + external_objectives:
//   sum [k, d] f64 raw sums; centroid [k, d] f32 = sum / n_j; var [k, d] f32 population
//   variance around the f64 mean; radius [k] f32 = max |x - centroid| rounded up;
//   len [k] f64 = |sum of the unit rows|; dir [k, d] f64 = that sum / len (0 if len = 0).
// d a multiple of 32, at most 256.
int fine_cluster_stats(const void* rows, const int32_t* off, int k, int d, double* sum,
                       float* centroid, float* var, float* radius, double* len, double* dir,
                       cudaStream_t s);

// Coarse cluster c = fine clusters [ranges[c], ranges[c + 1]) (their rows are contiguous):
// centroid, var, radius as above from the fine sums (sizes: [k_f] f32 keys per fine cluster);
// obj [kc] f64 = sum_j n_j - |sum_j n_j dir_j| (the coarse spherical objective's term).
int coarse_cluster_stats(const void* rows, const int32_t* off, const int32_t* ranges,
                         const float* sizes, int kc, int d, const double* sum, const double* dir,
                         float* centroid, float* var, float* radius, double* obj, cudaStream_t s);

// ---- calibration (calib.cpp's calibrate_estimator, one head at a time) ----

// cuBLAS handle for the score GEMMs (f32, no TF32).
int calib_blas_create(void** handle);
void calib_blas_destroy(void* handle);
// L[i * k + j] = Q[i] . C[j]: Q [nqv, hd], C [k, hd], all f32.
int calib_dots(void* handle, const float* Q, int nqv, int hd, const float* C, int k, float* L,
               cudaStream_t s);

// Query rows of KV head h from q [n_obs, n_head, hd] (post-RoPE, unscaled), row i = t * group +
// g as gather_group_queries: Qs = q * scale; Q2 = ½ Qs∘Qs (the kMeanVar half); q2[i] = |Qs_i|²
// and s2[i] = sum of Q2_i (sequential f32 sums).
int calib_queries(const float* q, int n_obs, int n_head, int group, int h, int hd, float scale,
                  float* Qs, float* Q2, float* q2, float* s2, cudaStream_t s);

// iso[j] = f32(sum_t var[j, t] / d) in f64 (HeadCentroidsT's kMeanIso scalar).
int calib_iso_var(const float* var, int k, int d, float* iso, cudaStream_t s);

// Logits L [nqv, k] of an estimator from the query . centroid products D [nqv, k] (calib_dots;
// shared by the estimators, so not overwritten; D and L must not overlap):
//   kMeanIso (V == null): L = D + min(½ q2_i iso_j, sqrt(q2_i) r_j), qa = q2;
//   kMeanVar: L = D + min(V_ij, sqrt(2 s2_i) r_j), V = Q2 . var^T, qa = s2.
int calib_correct(const float* D, float* L, int nqv, int k, const float* V, const float* iso,
                  const float* r, const float* qa, cudaStream_t s);

// Per row i: m = max of L[i, :k] and (Lc) Lc[i, :kc]; L = exp(L - m) in place, Lc too when
// exp_coarse; inv (optional) [i] = 1 / sum_j w_j L_ij (f64, j in order).
int calib_softmax_rows(float* L, int nqv, int k, float* Lc, int kc, bool exp_coarse, const float* w,
                       double* inv, cudaStream_t s);

// scores[j] = (sum_i E_ij inv_i) / nqv (f64, i in order).
int calib_col_scores(const float* E, int nqv, int k, const double* inv, double* scores,
                     cudaStream_t s);

// Pass 2: A[i, c] = sum_{j in ranges[c]} w_j E_ij (f64, j in order); B[i, c] = Nc_c Ec_ic.
int calib_coarse_sums(const float* E, const float* Ec, int nqv, int kf, int kc,
                      const int32_t* ranges, const float* w, const float* Nc, double* A, double* B,
                      cudaStream_t s);

// Grid points g < ng: coarse c survives when cscore[c] >= tc[g]; D = sum_c (survives ? A : B)
// (f64, c in order); invD[g * nqv + i] = D > 0 ? f32(min(1 / (nqv D), FLT_MAX)) : 0.
int calib_inv_denominators(const double* A, const double* B, int nqv, int kc, const double* cscore,
                           const double* tc, int ng, float* invD, cudaStream_t s);

// kept[g] += w_j for every fine cluster j whose coarse cluster (cof[j]) survives at g and whose
// acc = sum_i E_ij invD[g, i] (f32, i in order) is >= tf[g].
int calib_kept(const float* E, int nqv, int kf, const int32_t* cof, const double* cscore,
               const double* tc, const double* tf, const float* invD, int ng, const float* w,
               double* kept, cudaStream_t s);

}  // namespace sqz::fwd
