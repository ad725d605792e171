// Estimated attention scores of key clusters for a set of query vectors (one KV head).
//
// For one query vector q (already multiplied by 1/sqrt(head_dim)) and cluster j with
// representative centroid c_j (mean of its raw keys), per-dimension key variance v_j, radius
// r_j = max_i |k_i - c_j| and n_j keys, the logit l_j estimates log(mean_i exp(q·k_i)):
//   Estimator::kMean:    l_j = q·c_j
//   Estimator::kMeanVar: l_j = q·c_j + min(½ Σ_t q_t² v_jt, |q| r_j)
//   Estimator::kMeanIso: l_j = q·c_j + min(½ |q|² v̄_j, |q| r_j), v̄_j = mean_t v_jt: the same
//     cumulant under an isotropic Gaussian (one scalar per cluster instead of a vector).
//     Measured (docs/squeeze.md): nearly all of kMeanVar's gain over kMean at kMean's cost.
//     The small-sample (random-energy-model) law for the log-mean-exp of n samples,
//     min(½ s², s √(2 ln n) - ln n), was tried and measured worse on the planted-fact and KL
//     probes, so the plain moment with the radius cap is used.
// (second-order cumulant of q·k under a diagonal-Gaussian model of the cluster, capped by the
// hard bound max_i q·(k_i - c_j) <= |q| r_j that no mean can exceed; docs/squeeze.md), and
//   s_j(q) = exp(l_j) / sum_i n_i exp(l_i)
// estimates the softmax weight of each key of cluster j among the clustered keys (the
// observation window and user tokens are always attended and stay out of the denominator).
// Scores are averaged over the query vectors (the query heads of a GQA group times the tokens).
//
// Two-level estimator (docs/squeeze.md): coarse clusters are scored the same way against the
// coarse denominator; fine clusters are only compared inside surviving coarse clusters, and
// each pruned coarse cluster C stands in for its children in the fine denominator:
//   D(q) = sum_{compared j} n_j exp(l_j) + sum_{pruned C} N_C exp(L_C).
// With every coarse cluster surviving this is exactly the single-level estimator (same
// operations in the same order, hence bit-identical).
//
// kMeanVar scores augmented query rows [q, ½ q∘q] (2·head_dim floats) against the transposed
// [c_j; v_j] matrix: the two halves are two dot-product passes, combined with the cap. With
// v_j = 0 and r_j = 0 the correction is exactly 0 and the logits equal kMean's bit for bit.
#pragma once

#include <cstdint>
#include <vector>

#include "squeeze/squeeze.h"

namespace sqz {

// Non-owning view of one (layer, KV head)'s clusters, as stored in a pack.
struct HeadCentroidsView {
  int n_fine = 0;
  int n_coarse = 0;  // 0: no coarse level
  int64_t head_dim = 0;
  const float* fine_centroids = nullptr;    // [n_fine, head_dim] f32 mean of raw keys
  const float* fine_sizes = nullptr;        // [n_fine] keys per cluster (f32, exact integers)
  const int32_t* fine_offsets = nullptr;    // [n_fine + 1] row boundaries
  const float* coarse_centroids = nullptr;  // [n_coarse, head_dim] f32 mean of raw keys
  const int32_t* coarse_ranges = nullptr;   // [n_coarse + 1] fine-cluster boundaries
  // Needed by Estimator::kMeanVar only: per-dimension variances of the raw keys around the
  // centroid, and radii max_i |k_i - c| (L2, raw keys vs the stored f32 centroid).
  const float* fine_var = nullptr;       // [n_fine, head_dim] f32
  const float* coarse_var = nullptr;     // [n_coarse, head_dim] f32
  const float* fine_radius = nullptr;    // [n_fine] f32
  const float* coarse_radius = nullptr;  // [n_coarse] f32
};

// Centroids of one head transposed for the SIMD kernels (cpu::centroids_transpose layout),
// for one estimator: rows [0, head_dim) are the means, rows [head_dim, 2 head_dim) the
// variances (kMeanVar only).
struct HeadCentroidsT {
  Estimator est = Estimator::kMean;  // kMean, kMeanVar or kMeanIso
  int64_t head_dim = 0;
  int64_t dim = 0;  // floats per query row: head_dim, or 2·head_dim (kMeanVar)
  int n_fine = 0, n_coarse = 0;
  std::vector<float> fine_t;        // [dim, padded n_fine] (+ tile slack)
  std::vector<float> coarse_t;      // [dim, padded n_coarse] (+ tile slack)
  std::vector<float> fine_r;        // [n_fine] radii (kMeanVar, kMeanIso)
  std::vector<float> coarse_r;      // [n_coarse] radii (kMeanVar, kMeanIso)
  std::vector<float> fine_iso;      // [n_fine] mean over dimensions of the variance (kMeanIso)
  std::vector<float> coarse_iso;    // [n_coarse] the same for the coarse level (kMeanIso)
  std::vector<float> coarse_sizes;  // [n_coarse] keys per coarse cluster
  // Child bound of a coarse cluster C (CoarseRule::kChildBound): its best child's logit is
  // estimated as q·C + |q| child_spread_C + min(½|q|² child_iso_C, |q| child_r_C), i.e. the
  // expected maximum of q·(c_j - C) over its m children under an isotropic Gaussian model,
  // min(sqrt(2 ln m · mean_j |c_j - C|² / d), max_j |c_j - C|), plus the largest kMeanIso
  // correction among the children (0 for kMean; the isotropic form for kMeanVar too).
  std::vector<float> child_spread;  // [n_coarse]
  std::vector<float> child_iso;     // [n_coarse] max over children of the mean variance
  std::vector<float> child_r;       // [n_coarse] max over children of the radius
  // est: kMean, kMeanVar or kMeanIso (the last two require the view's variances and radii).
  void build(const HeadCentroidsView& v, Estimator est = Estimator::kMean);
};

// The child-bound inputs of one head's coarse clusters, as HeadCentroidsT::build computes them
// (child_spread, child_iso, child_r; each [n_coarse]). fine_iso ([n_fine], the fine clusters'
// iso_variance, as HeadCentroidsT::fine_iso) adds the children's largest mean_iso statistics
// (v.fine_radius is then read too); null: they are 0. Shared with the CUDA lookup's upload
// (sqz_cuda_child).
void child_bounds(const HeadCentroidsView& v, const float* fine_iso, float* spread, float* iso,
                  float* r);

// Logits of clusters [j0, j1) of one level (fine, or coarse when `coarse`) for nqv query rows
// Q ([nqv, t.dim], augmented for t.est): L[i * lds + (j - j0)]. tmp: scratch (kMeanVar), grown
// on demand. dots (optional, same layout as L): the plain q·c part before any variance term.
// q2s (optional, [nqv]): query_norm2 of each row, when the caller already has them.
void cluster_logits(const HeadCentroidsT& t, bool coarse, const float* Q, int64_t nqv, int64_t j0,
                    int64_t j1, float* L, int64_t lds, std::vector<float>& tmp,
                    float* dots = nullptr, const float* q2s = nullptr);

// |q|² of one scaled query row (its first head_dim floats).
float query_norm2(const float* q, int64_t head_dim);

// Scoring vectors from scaled queries: out[i] = Q[i] (kMean) or [Q[i], ½ Q[i]∘Q[i]] (kMeanVar).
// Q: [nqv, head_dim]; out: [nqv, estimator_dim(est, head_dim)].
inline int64_t estimator_dim(Estimator est, int64_t head_dim) {
  return est == Estimator::kMeanVar ? 2 * head_dim : head_dim;
}
void augment_queries(const float* Q, int64_t nqv, int64_t head_dim, Estimator est, float* out);

// Scratch for scoring one head at a time; grows on demand, never shrinks (reuse across calls).
class ClusterScorer {
 public:
  // Q is always [nqv, t.dim]: the scaled queries, augmented as augment_queries does for the
  // estimator t was built for.
  // Single level: scores[j] for every fine cluster j.
  void score_fine_all(const HeadCentroidsView& v, const HeadCentroidsT& t, const float* Q,
                      int64_t nqv, double* scores);
  // Coarse level: scores[C] for every coarse cluster (coarse denominator). Keeps the coarse
  // logits (and, for kMeanIso, |q|² of each row) for a following score_fine_hier with the same
  // Q. bound (optional, [n_coarse]): the
  // estimated score of each coarse cluster's best child against the same denominator, with
  // the child spread term multiplied by spread_scale (HeadCentroidsT::child_spread), for
  // comparison with the fine threshold.
  void score_coarse(const HeadCentroidsView& v, const HeadCentroidsT& t, const float* Q,
                    int64_t nqv, double* scores, double* bound = nullptr,
                    double spread_scale = 1.0);
  // Fine scores inside surviving coarse clusters (survive: [n_coarse] 0/1), two-level
  // denominator. scores[j] is written for compared clusters only. Returns the number of fine
  // centroids compared.
  int64_t score_fine_hier(const HeadCentroidsView& v, const HeadCentroidsT& t, const float* Q,
                          int64_t nqv, const uint8_t* survive, double* scores);

 private:
  std::vector<float> lf_;      // [nqv, n_fine] fine logits, then exp(l - m) in place
  std::vector<float> lc_;      // [nqv, n_coarse] coarse logits (kept raw)
  std::vector<float> ec_;      // [n_coarse] exp(L - m) for one query vector
  std::vector<float> lb_;      // [nqv, n_coarse] coarse dot products q·C (child bound)
  std::vector<double> acc_;    // [max(n_fine, n_coarse)] score accumulators
  std::vector<int32_t> cols_;  // compared fine column ranges as [begin, end) pairs
  std::vector<float> tmp_;     // cluster_logits scratch
  std::vector<float> q2_;      // [nqv] |q|² (kMeanIso or bound; set by score_coarse)
};

// Quantile of a size-weighted score distribution: the smallest score s_i (ascending order)
// whose cumulative weight including it exceeds p * total. Keeping every item with score >= it
// keeps at least (1 - p) of the weight and less than (1 - p) + its own (tie group's) weight.
// `sorted` must be in ascending score order. p <= 0 gives the minimum score, p >= 1 the maximum.
struct WeightedScore {
  double score;
  double weight;
};
double weighted_quantile_sorted(const std::vector<WeightedScore>& sorted, double total_weight,
                                double p);

}  // namespace sqz
