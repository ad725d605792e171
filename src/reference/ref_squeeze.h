// Naive references for squeezed attention: plain loops, double precision, no SIMD and no code
// shared with src/squeeze (an optimised implementation used as its own oracle would turn its
// bugs into truth). They follow the rules documented in docs/squeeze.md literally.
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

namespace sqz::ref {

struct RefKmeansResult {
  std::vector<int32_t> assign;    // [n]
  std::vector<double> centroids;  // [k, d] unit (or zero) directions of the final assignment
  std::vector<double> objective;  // [iters] J after each assignment step (+ empty repair)
  int iters = 0;
  // Smallest (best - second best) dot over all points and steps: below the float error of the
  // optimised kernels (~1e-6) the two may legitimately break a near-tie differently.
  double min_margin = 0;
};

// Spherical Lloyd from initial centroids C0 ([k, d], normalised here). X: [n, d] points as given
// (normally unit rows); w: [n] weights or nullptr. Same rules as sqz::kmeans_lloyd: argmax
// with lowest index on ties; empty cluster e (increasing) takes the point with the largest
// 1 - best dot among clusters of size > 1 (lowest index on ties), which then counts as distance
// 0 (1 for a zero point); J = sum w (1 - dot); stop when J_prev - J <= tol * J_prev or J == 0
// or after max_iters steps; centroids = normalised weighted sums (zero sum -> zero centroid).
RefKmeansResult ref_kmeans(const float* X, const float* w, int64_t n, int64_t d, int k,
                           const float* C0, int max_iters, double tol);

// Single-level cluster scores: for each query vector q (rows of Q, multiplied by `scale`),
// s_j = exp(q·c_j) / sum_i n_i exp(q·c_i), averaged over the nqv query vectors.
// Q: [nqv, d]; C: [k, d] representative centroids; sizes: [k].
std::vector<double> ref_cluster_scores(const float* Q, int64_t nqv, double scale, const float* C,
                                       const float* sizes, int k, int64_t d);

// Two-level estimator for the fine clusters inside surviving coarse clusters:
// D(q) = sum_{j in surviving coarse} n_j exp(q·c_j) + sum_{C pruned} N_C exp(q·C_C).
// Returns [k] scores, NaN for fine clusters that were not compared.
// coarse_ranges: [n_coarse + 1] fine-cluster boundaries; survive: [n_coarse].
std::vector<double> ref_cluster_scores_hier(const float* Q, int64_t nqv, double scale,
                                            const float* C, const float* sizes, int k,
                                            const float* CC, const int32_t* coarse_ranges,
                                            int n_coarse, const uint8_t* survive, int64_t d);

struct RefSelection {
  std::vector<int32_t> clusters;  // kept fine clusters, ascending
  std::vector<int32_t> ranges;    // merged row ranges as [begin, end) pairs
  int64_t kept_keys = 0;
  int64_t centroids_compared = 0;
  std::vector<double> fine_scores;    // [k] (NaN where not compared)
  std::vector<double> coarse_scores;  // [n_coarse] (levels 2 only)
  std::vector<double> child_scores;   // [n_coarse] best-child bound scores (child rule only)
};

// The whole lookup for one KV head h and query tokens [t0, t1) of q ([n_q, n_head, d], unscaled):
// query vectors are those tokens times the group's heads, scale 1/sqrt(d); levels 1 keeps fine
// clusters with score >= tf; levels 2 keeps coarse clusters with score >= tc, then fine clusters
// inside them with two-level score >= tf. offsets: [k + 1] rows of each fine cluster.
RefSelection ref_select(const float* q, int64_t t0, int64_t t1, int n_head, int n_head_kv, int h,
                        int64_t d, const float* C, const float* sizes, const int32_t* offsets,
                        int k, const float* CC, const int32_t* coarse_ranges, int n_coarse,
                        int levels, double tf, double tc);

// ---- Estimator::kMeanVar (docs/squeeze.md, "Cluster scores") ----

// Statistics of each cluster's raw keys: rows offsets[j]..offsets[j+1]-1 are keys
// X[perm[row]] (X: [n, d] raw keys). mean and var (population, around the mean) in double;
// radius = max |x - c| against the stored f32 centroids `C` ([k, d]) when given, else against
// the double mean.
struct RefClusterStats {
  std::vector<double> mean;    // [k, d]
  std::vector<double> var;     // [k, d]
  std::vector<double> radius;  // [k]
};
RefClusterStats ref_cluster_stats(const float* X, const int32_t* perm, const int32_t* offsets,
                                  int k, int64_t d, const float* C = nullptr);

// Cluster logit for one unscaled query q: scale q·c, plus with V (var, [d]) non-null
// min(½ scale² Σ q_t² v_t, scale |q| r).
double ref_cluster_logit(const float* q, double scale, const float* c, const float* v, double r,
                         int64_t d);

// As ref_cluster_scores / ref_cluster_scores_hier / ref_select with the estimator's logits:
// V ([k, d]) and R ([k]) (CV / CR for the coarse level) are the variances and radii, or nullptr
// for the mean estimator. ref_select_est counts 2 centroid vectors per scored cluster with V.
std::vector<double> ref_cluster_scores_est(const float* Q, int64_t nqv, double scale,
                                           const float* C, const float* V, const float* R,
                                           const float* sizes, int k, int64_t d);
std::vector<double> ref_cluster_scores_hier_est(const float* Q, int64_t nqv, double scale,
                                                const float* C, const float* V, const float* R,
                                                const float* sizes, int k, const float* CC,
                                                const float* CV, const float* CR,
                                                const int32_t* coarse_ranges, int n_coarse,
                                                const uint8_t* survive, int64_t d);
RefSelection ref_select_est(const float* q, int64_t t0, int64_t t1, int n_head, int n_head_kv,
                            int h, int64_t d, const float* C, const float* V, const float* R,
                            const float* sizes, const int32_t* offsets, int k, const float* CC,
                            const float* CV, const float* CR, const int32_t* coarse_ranges,
                            int n_coarse, int levels, double tf, double tc,
                            double child_scale = std::numeric_limits<double>::quiet_NaN());

// SelectParams::CoarseRule::kChildBound (docs/squeeze.md): for each coarse cluster C, the
// estimated score of its best child, exp(B_C) / sum_C' N_C' exp(L_C') averaged over the query
// vectors, with L_C the coarse logit (V/R as for the coarse level) and
//   B_C = scale q·C + child_scale |scale q| spread_C + min(½ |scale q|² max_j v̄_j,
//         |scale q| max_j r_j),
//   spread_C = min(sqrt(2 ln m · mean_j |c_j - C|² / d), max_j |c_j - C|) over its m children
// (v̄_j: mean over dimensions of V's row j; the correction is 0 without V).
std::vector<double> ref_child_bound_scores(const float* Q, int64_t nqv, double scale,
                                           const float* C, const float* V, const float* R,
                                           const float* CC, const float* CV, const float* CR,
                                           const int32_t* coarse_ranges, const float* coarse_sizes,
                                           int n_coarse, int64_t d, double child_scale);

// Quantile of a weighted sample: the smallest value v (ascending) whose cumulative weight
// including it exceeds p * total weight (the definition in docs/squeeze.md).
double ref_weighted_quantile(std::vector<double> values, std::vector<double> weights, double p);

}  // namespace sqz::ref
