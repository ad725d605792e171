#include "squeeze/score.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "squeeze/centroid_kernels.h"
#include "squeeze/cluster_scalars.h"

namespace sqz {

namespace {

// Transposed [mean; variance] rows: the mean block, then (kMeanVar) the variance block right
// below it, so the kernels see one matrix of `dim` rows. centroids_transpose zeroes its own
// block plus one tile of slack, which the second call then overwrites.
void transpose_level(const float* C, const float* V, int64_t k, int64_t d, bool var,
                     std::vector<float>& out) {
  const int64_t dim = var ? 2 * d : d;
  out.assign((size_t)cpu::centroid_transposed_size(k, dim), 0.0f);
  if (k <= 0) return;
  cpu::centroids_transpose(C, k, d, d, out.data());
  if (var) cpu::centroids_transpose(V, k, d, d, out.data() + d * cpu::centroid_padded_cols(k));
}

}  // namespace

float query_norm2(const float* q, int64_t head_dim) {
  float q2 = 0.0f;
  for (int64_t x = 0; x < head_dim; x++) q2 += q[x] * q[x];
  return q2;
}

void augment_queries(const float* Q, int64_t nqv, int64_t head_dim, Estimator est, float* out) {
  const int64_t dim = estimator_dim(est, head_dim);
  for (int64_t i = 0; i < nqv; i++) {
    const float* q = Q + i * head_dim;
    float* o = out + i * dim;
    for (int64_t t = 0; t < head_dim; t++) o[t] = q[t];
    if (dim != head_dim)
      for (int64_t t = 0; t < head_dim; t++) o[head_dim + t] = 0.5f * q[t] * q[t];
  }
}

void HeadCentroidsT::build(const HeadCentroidsView& v, Estimator e) {
  est = (e == Estimator::kMeanVar || e == Estimator::kMeanIso) ? e : Estimator::kMean;
  const bool var = est == Estimator::kMeanVar;
  const bool iso = est == Estimator::kMeanIso;
  head_dim = v.head_dim;
  dim = estimator_dim(est, v.head_dim);
  n_fine = v.n_fine;
  n_coarse = v.n_coarse;
  transpose_level(v.fine_centroids, v.fine_var, v.n_fine, v.head_dim, var, fine_t);
  fine_r.clear();
  fine_iso.clear();
  coarse_iso.clear();
  if (var || iso) fine_r.assign(v.fine_radius, v.fine_radius + v.n_fine);
  // kMeanVar needs the fine isotropic variances too, for the child bound.
  if (var || iso) iso_variances(v.fine_var, v.n_fine, v.head_dim, fine_iso);
  coarse_t.clear();
  coarse_r.clear();
  coarse_sizes.clear();
  if (v.n_coarse > 0) {
    transpose_level(v.coarse_centroids, v.coarse_var, v.n_coarse, v.head_dim, var, coarse_t);
    if (var || iso) coarse_r.assign(v.coarse_radius, v.coarse_radius + v.n_coarse);
    if (iso) iso_variances(v.coarse_var, v.n_coarse, v.head_dim, coarse_iso);
    coarse_sizes.resize((size_t)v.n_coarse);
    for (int c = 0; c < v.n_coarse; c++)
      coarse_sizes[(size_t)c] = coarse_cluster_size(v.fine_sizes, v.coarse_ranges, c);
    child_spread.assign((size_t)v.n_coarse, 0.0f);
    child_iso.assign((size_t)v.n_coarse, 0.0f);
    child_r.assign((size_t)v.n_coarse, 0.0f);
    child_bounds(v, var || iso ? fine_iso.data() : nullptr, child_spread.data(), child_iso.data(),
                 child_r.data());
  }
}

void child_bounds(const HeadCentroidsView& v, const float* fine_iso, float* spread, float* iso,
                  float* r) {
  const int64_t d = v.head_dim;
  for (int c = 0; c < v.n_coarse; c++) {
    const float* C = v.coarse_centroids + (int64_t)c * d;
    const int32_t j0 = v.coarse_ranges[c], j1 = v.coarse_ranges[c + 1];
    double sum2 = 0.0, max2 = 0.0;
    float vmax = 0.0f, rmax = 0.0f;
    for (int32_t j = j0; j < j1; j++) {
      const float* cj = v.fine_centroids + (int64_t)j * d;
      double e2 = 0.0;
      for (int64_t t = 0; t < d; t++) {
        const double e = (double)cj[t] - (double)C[t];
        e2 += e * e;
      }
      sum2 += e2;
      max2 = std::max(max2, e2);
      if (fine_iso) {
        vmax = std::max(vmax, fine_iso[j]);
        rmax = std::max(rmax, v.fine_radius[j]);
      }
    }
    const int64_t m = j1 - j0;
    if (m > 1) {
      const double gauss = std::sqrt(2.0 * std::log((double)m) * sum2 / (double)m / (double)d);
      spread[c] = (float)std::min(gauss, std::sqrt(max2));
    } else {
      spread[c] = (float)std::sqrt(max2);
    }
    iso[c] = vmax;
    r[c] = rmax;
  }
}

void cluster_logits(const HeadCentroidsT& t, bool coarse, const float* Q, int64_t nqv, int64_t j0,
                    int64_t j1, float* L, int64_t lds, std::vector<float>& tmp, float* dots,
                    const float* q2s) {
  if (nqv <= 0 || j1 <= j0) return;
  const int64_t k = coarse ? t.n_coarse : t.n_fine;
  const float* Ct = coarse ? t.coarse_t.data() : t.fine_t.data();
  const int64_t hd = t.head_dim;
  cpu::centroid_dots(Q, nqv, hd, t.dim, Ct, k, j0, j1, L, lds);
  if (dots)
    for (int64_t i = 0; i < nqv; i++)
      std::copy(L + i * lds, L + i * lds + (j1 - j0), dots + i * lds);
  if (t.est == Estimator::kMeanIso) {
    const float* r = (coarse ? t.coarse_r.data() : t.fine_r.data()) + j0;
    const float* hv = (coarse ? t.coarse_iso.data() : t.fine_iso.data()) + j0;
    for (int64_t i = 0; i < nqv; i++) {
      const float q2 = q2s ? q2s[i] : query_norm2(Q + i * t.dim, hd);
      const float qn = std::sqrt(q2);
      float* l = L + i * lds;
      for (int64_t j = 0; j < j1 - j0; j++) l[j] += std::min(0.5f * q2 * hv[j], qn * r[j]);
    }
    return;
  }
  if (t.est != Estimator::kMeanVar) return;
  // Variance half: [½ q∘q] · v_j, rows [hd, 2 hd) of the transposed matrix.
  const int64_t w = j1 - j0;
  if ((int64_t)tmp.size() < nqv * w) tmp.resize((size_t)(nqv * w));
  cpu::centroid_dots(Q + hd, nqv, hd, t.dim, Ct + hd * cpu::centroid_padded_cols(k), k, j0, j1,
                     tmp.data(), w);
  const float* r = (coarse ? t.coarse_r.data() : t.fine_r.data()) + j0;
  for (int64_t i = 0; i < nqv; i++) {
    // |q| from the augmented half: sum of ½ q_t² is |q|² / 2.
    const float* h = Q + i * t.dim + hd;
    float s = 0.0f;
    for (int64_t x = 0; x < hd; x++) s += h[x];
    const float qn = std::sqrt(2.0f * s);
    float* l = L + i * lds;
    const float* vv = tmp.data() + i * w;
    for (int64_t j = 0; j < w; j++) l[j] += std::min(vv[j], qn * r[j]);
  }
}

void ClusterScorer::score_fine_all(const HeadCentroidsView& v, const HeadCentroidsT& t,
                                   const float* Q, int64_t nqv, double* scores) {
  const int64_t k = v.n_fine;
  std::fill(scores, scores + k, 0.0);
  if (nqv <= 0 || k <= 0) return;
  lf_.resize((size_t)(nqv * k));
  cluster_logits(t, false, Q, nqv, 0, k, lf_.data(), k, tmp_);
  for (int64_t q = 0; q < nqv; q++) {
    float* l = lf_.data() + q * k;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < k; j++) m = std::max(m, l[j]);
    double D = 0.0;
    for (int64_t j = 0; j < k; j++) {
      l[j] = std::exp(l[j] - m);
      D += (double)v.fine_sizes[j] * l[j];
    }
    const double inv = 1.0 / D;  // D >= n_max * exp(0) >= 1: the max term is exp(0) = 1
    for (int64_t j = 0; j < k; j++) scores[j] += l[j] * inv;
  }
  const double invq = 1.0 / (double)nqv;
  for (int64_t j = 0; j < k; j++) scores[j] *= invq;
}

void ClusterScorer::score_coarse(const HeadCentroidsView& v, const HeadCentroidsT& t,
                                 const float* Q, int64_t nqv, double* scores, double* bound,
                                 double spread_scale) {
  const int64_t k = v.n_coarse;
  std::fill(scores, scores + k, 0.0);
  if (bound) std::fill(bound, bound + k, 0.0);
  if (nqv <= 0 || k <= 0) return;
  lc_.resize((size_t)(nqv * k));
  ec_.resize((size_t)k);
  // The bound needs the plain q·C as well: kept from the same pass (for kMean it is lc_).
  const bool own_dots = bound && t.est != Estimator::kMean;
  if (own_dots) lb_.resize((size_t)(nqv * k));
  // |q|² once per query row for this step: the mean_iso logits here and in score_fine_hier,
  // and the bound, all use it.
  const bool iso = t.est == Estimator::kMeanIso;
  if (iso || bound) {
    q2_.resize((size_t)nqv);
    for (int64_t i = 0; i < nqv; i++) q2_[(size_t)i] = query_norm2(Q + i * t.dim, t.head_dim);
  }
  cluster_logits(t, true, Q, nqv, 0, k, lc_.data(), k, tmp_, own_dots ? lb_.data() : nullptr,
                 iso ? q2_.data() : nullptr);
  const float* dots_all = own_dots ? lb_.data() : lc_.data();
  for (int64_t q = 0; q < nqv; q++) {
    const float* l = lc_.data() + q * k;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t c = 0; c < k; c++) m = std::max(m, l[c]);
    double D = 0.0;
    for (int64_t c = 0; c < k; c++) {
      ec_[(size_t)c] = std::exp(l[c] - m);
      D += (double)t.coarse_sizes[(size_t)c] * ec_[(size_t)c];
    }
    const double inv = 1.0 / D;
    for (int64_t c = 0; c < k; c++) scores[c] += ec_[(size_t)c] * inv;
    if (!bound) continue;
    const float q2 = q2_[(size_t)q];
    const float qn = std::sqrt(q2);
    const float* dots = dots_all + q * k;
    for (int64_t c = 0; c < k; c++) {
      const double b =
          (double)dots[c] + spread_scale * (double)qn * t.child_spread[(size_t)c] +
          std::min(0.5 * q2 * t.child_iso[(size_t)c], (double)qn * t.child_r[(size_t)c]);
      // exp of (b - m) can exceed exp(0) since b bounds a child above its parent's mean.
      bound[c] += std::exp(b - (double)m) * inv;
    }
  }
  const double invq = 1.0 / (double)nqv;
  for (int64_t c = 0; c < k; c++) scores[c] *= invq;
  if (bound)
    for (int64_t c = 0; c < k; c++) bound[c] *= invq;
}

int64_t ClusterScorer::score_fine_hier(const HeadCentroidsView& v, const HeadCentroidsT& t,
                                       const float* Q, int64_t nqv, const uint8_t* survive,
                                       double* scores) {
  const int64_t k = v.n_fine;
  const int64_t kc = v.n_coarse;
  // Column ranges of compared fine clusters, adjacent survivors merged (fewer kernel calls).
  cols_.clear();
  int64_t compared = 0;
  for (int64_t c = 0; c < kc; c++) {
    if (!survive[c]) continue;
    const int32_t b = v.coarse_ranges[c], e = v.coarse_ranges[c + 1];
    if (!cols_.empty() && cols_.back() == b)
      cols_.back() = e;
    else {
      cols_.push_back(b);
      cols_.push_back(e);
    }
    compared += e - b;
  }
  for (size_t r = 0; r < cols_.size(); r += 2)
    std::fill(scores + cols_[r], scores + cols_[r + 1], 0.0);
  if (nqv <= 0) return compared;
  lf_.resize((size_t)(nqv * k));
  // |q|² of the same Q, from score_coarse (kMeanIso), for every column range.
  const float* q2s = t.est == Estimator::kMeanIso ? q2_.data() : nullptr;
  for (size_t r = 0; r < cols_.size(); r += 2)
    cluster_logits(t, false, Q, nqv, cols_[r], cols_[r + 1], lf_.data() + cols_[r], k, tmp_,
                   nullptr, q2s);
  for (int64_t q = 0; q < nqv; q++) {
    float* l = lf_.data() + q * k;
    const float* L = lc_.data() + q * kc;
    // The max runs over exactly the terms of the denominator, so with no pruning the
    // arithmetic is that of score_fine_all.
    float m = -std::numeric_limits<float>::infinity();
    for (size_t r = 0; r < cols_.size(); r += 2)
      for (int32_t j = cols_[r]; j < cols_[r + 1]; j++) m = std::max(m, l[j]);
    for (int64_t c = 0; c < kc; c++)
      if (!survive[c]) m = std::max(m, L[c]);
    double D = 0.0;
    for (size_t r = 0; r < cols_.size(); r += 2)
      for (int32_t j = cols_[r]; j < cols_[r + 1]; j++) {
        l[j] = std::exp(l[j] - m);
        D += (double)v.fine_sizes[j] * l[j];
      }
    for (int64_t c = 0; c < kc; c++)
      if (!survive[c]) D += (double)t.coarse_sizes[(size_t)c] * std::exp(L[c] - m);
    const double inv = 1.0 / D;
    for (size_t r = 0; r < cols_.size(); r += 2)
      for (int32_t j = cols_[r]; j < cols_[r + 1]; j++) scores[j] += l[j] * inv;
  }
  const double invq = 1.0 / (double)nqv;
  for (size_t r = 0; r < cols_.size(); r += 2)
    for (int32_t j = cols_[r]; j < cols_[r + 1]; j++) scores[j] *= invq;
  return compared;
}

double weighted_quantile_sorted(const std::vector<WeightedScore>& sorted, double total_weight,
                                double p) {
  if (sorted.empty()) return 0.0;
  if (p <= 0.0) return sorted.front().score;
  const double target = p * total_weight;
  double cum = 0.0;
  for (const WeightedScore& s : sorted) {
    cum += s.weight;
    if (cum > target) return s.score;
  }
  return sorted.back().score;
}

}  // namespace sqz
