#include "reference/ref_squeeze.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace sqz::ref {

namespace {

std::vector<double> normalized(const float* x, int64_t d) {
  std::vector<double> o((size_t)d);
  double ss = 0.0;
  for (int64_t t = 0; t < d; t++) ss += (double)x[t] * x[t];
  if (ss > 0.0 && std::isfinite(ss))
    for (int64_t t = 0; t < d; t++) o[(size_t)t] = x[t] / std::sqrt(ss);
  return o;
}

double dot(const double* a, const float* b, int64_t d) {
  double s = 0.0;
  for (int64_t t = 0; t < d; t++) s += a[t] * (double)b[t];
  return s;
}

}  // namespace

RefKmeansResult ref_kmeans(const float* X, const float* w, int64_t n, int64_t d, int k,
                           const float* C0, int max_iters, double tol) {
  RefKmeansResult r;
  std::vector<double> C((size_t)(k * d));
  for (int j = 0; j < k; j++) {
    const std::vector<double> c = normalized(C0 + j * d, d);
    std::copy(c.begin(), c.end(), C.begin() + j * d);
  }
  std::vector<int32_t> a((size_t)n);
  std::vector<double> best((size_t)n);
  r.min_margin = std::numeric_limits<double>::infinity();
  double prev = 0.0;
  for (int it = 0; it < std::max(1, max_iters); it++) {
    for (int64_t i = 0; i < n; i++) {
      double b1 = -std::numeric_limits<double>::infinity(), b2 = b1;
      int32_t bi = 0;
      for (int j = 0; j < k; j++) {
        const double s = dot(C.data() + j * d, X + i * d, d);
        if (s > b1) {
          b2 = b1;
          b1 = s;
          bi = j;
        } else if (s > b2) {
          b2 = s;
        }
      }
      a[(size_t)i] = bi;
      best[(size_t)i] = b1;
      if (k > 1) r.min_margin = std::min(r.min_margin, b1 - b2);
    }
    std::vector<int64_t> cnt((size_t)k, 0);
    for (int64_t i = 0; i < n; i++) cnt[(size_t)a[(size_t)i]]++;
    for (int e = 0; e < k; e++) {
      if (cnt[(size_t)e] > 0) continue;
      int64_t far = -1;
      double fd = -std::numeric_limits<double>::infinity();
      for (int64_t i = 0; i < n; i++)
        if (cnt[(size_t)a[(size_t)i]] > 1 && 1.0 - best[(size_t)i] > fd) {
          fd = 1.0 - best[(size_t)i];
          far = i;
        }
      cnt[(size_t)a[(size_t)far]]--;
      a[(size_t)far] = e;
      cnt[(size_t)e] = 1;
      bool nz = false;
      for (int64_t t = 0; t < d; t++) nz = nz || X[far * d + t] != 0.0f;
      best[(size_t)far] = nz ? 1.0 : 0.0;
    }
    double J = 0.0;
    for (int64_t i = 0; i < n; i++) J += (w ? (double)w[i] : 1.0) * (1.0 - best[(size_t)i]);
    J = std::max(0.0, J);
    r.objective.push_back(J);
    r.iters = it + 1;
    const bool conv = (it > 0 && prev - J <= tol * prev) || J <= 0.0;
    std::vector<double> S((size_t)(k * d), 0.0);
    for (int64_t i = 0; i < n; i++)
      for (int64_t t = 0; t < d; t++)
        S[(size_t)(a[(size_t)i] * d + t)] += (w ? (double)w[i] : 1.0) * X[i * d + t];
    for (int j = 0; j < k; j++) {
      double ss = 0.0;
      for (int64_t t = 0; t < d; t++) ss += S[(size_t)(j * d + t)] * S[(size_t)(j * d + t)];
      for (int64_t t = 0; t < d; t++)
        C[(size_t)(j * d + t)] = ss > 0.0 ? S[(size_t)(j * d + t)] / std::sqrt(ss) : 0.0;
    }
    if (conv) break;
    prev = J;
  }
  r.assign = a;
  r.centroids = C;
  return r;
}

std::vector<double> ref_cluster_scores(const float* Q, int64_t nqv, double scale, const float* C,
                                       const float* sizes, int k, int64_t d) {
  // The mean estimator is the general reference without variances and radii.
  return ref_cluster_scores_est(Q, nqv, scale, C, nullptr, nullptr, sizes, k, d);
}

std::vector<double> ref_cluster_scores_hier(const float* Q, int64_t nqv, double scale,
                                            const float* C, const float* sizes, int k,
                                            const float* CC, const int32_t* coarse_ranges,
                                            int n_coarse, const uint8_t* survive, int64_t d) {
  return ref_cluster_scores_hier_est(Q, nqv, scale, C, nullptr, nullptr, sizes, k, CC, nullptr,
                                     nullptr, coarse_ranges, n_coarse, survive, d);
}

RefSelection ref_select(const float* q, int64_t t0, int64_t t1, int n_head, int n_head_kv, int h,
                        int64_t d, const float* C, const float* sizes, const int32_t* offsets,
                        int k, const float* CC, const int32_t* coarse_ranges, int n_coarse,
                        int levels, double tf, double tc) {
  return ref_select_est(q, t0, t1, n_head, n_head_kv, h, d, C, nullptr, nullptr, sizes, offsets, k,
                        CC, nullptr, nullptr, coarse_ranges, n_coarse, levels, tf, tc);
}

RefClusterStats ref_cluster_stats(const float* X, const int32_t* perm, const int32_t* offsets,
                                  int k, int64_t d, const float* C) {
  RefClusterStats st;
  st.mean.assign((size_t)(k * d), 0.0);
  st.var.assign((size_t)(k * d), 0.0);
  st.radius.assign((size_t)k, 0.0);
  for (int j = 0; j < k; j++) {
    const int32_t b = offsets[j], e = offsets[j + 1];
    double* m = st.mean.data() + j * d;
    for (int32_t r = b; r < e; r++)
      for (int64_t t = 0; t < d; t++) m[t] += X[(int64_t)perm[r] * d + t];
    for (int64_t t = 0; t < d; t++) m[t] /= (double)(e - b);
    double* v = st.var.data() + j * d;
    for (int32_t r = b; r < e; r++)
      for (int64_t t = 0; t < d; t++) {
        const double x = X[(int64_t)perm[r] * d + t] - m[t];
        v[t] += x * x;
      }
    for (int64_t t = 0; t < d; t++) v[t] /= (double)(e - b);
    for (int32_t r = b; r < e; r++) {
      double s = 0.0;
      for (int64_t t = 0; t < d; t++) {
        const double c = C ? (double)C[j * d + t] : m[t];
        const double x = X[(int64_t)perm[r] * d + t] - c;
        s += x * x;
      }
      st.radius[(size_t)j] = std::max(st.radius[(size_t)j], std::sqrt(s));
    }
  }
  return st;
}

double ref_cluster_logit(const float* q, double scale, const float* c, const float* v, double r,
                         int64_t d) {
  double x = 0.0, corr = 0.0, qn = 0.0;
  for (int64_t t = 0; t < d; t++) {
    const double qs = (double)q[t] * scale;
    x += qs * c[t];
    if (v) corr += 0.5 * qs * qs * v[t];
    qn += qs * qs;
  }
  if (v) x += std::min(corr, std::sqrt(qn) * r);
  return x;
}

std::vector<double> ref_cluster_scores_est(const float* Q, int64_t nqv, double scale,
                                           const float* C, const float* V, const float* R,
                                           const float* sizes, int k, int64_t d) {
  std::vector<double> s((size_t)k, 0.0);
  for (int64_t i = 0; i < nqv; i++) {
    std::vector<double> l((size_t)k);
    double m = -std::numeric_limits<double>::infinity();
    for (int j = 0; j < k; j++) {
      l[(size_t)j] =
          ref_cluster_logit(Q + i * d, scale, C + j * d, V ? V + j * d : nullptr, R ? R[j] : 0, d);
      m = std::max(m, l[(size_t)j]);
    }
    double D = 0.0;
    for (int j = 0; j < k; j++) D += sizes[j] * std::exp(l[(size_t)j] - m);
    for (int j = 0; j < k; j++) s[(size_t)j] += std::exp(l[(size_t)j] - m) / D;
  }
  for (double& x : s) x /= (double)nqv;
  return s;
}

std::vector<double> ref_cluster_scores_hier_est(const float* Q, int64_t nqv, double scale,
                                                const float* C, const float* V, const float* R,
                                                const float* sizes, int k, const float* CC,
                                                const float* CV, const float* CR,
                                                const int32_t* coarse_ranges, int n_coarse,
                                                const uint8_t* survive, int64_t d) {
  std::vector<double> s((size_t)k, std::numeric_limits<double>::quiet_NaN());
  std::vector<uint8_t> cmp((size_t)k, 0);
  for (int c = 0; c < n_coarse; c++)
    if (survive[c])
      for (int32_t j = coarse_ranges[c]; j < coarse_ranges[c + 1]; j++) {
        cmp[(size_t)j] = 1;
        s[(size_t)j] = 0.0;
      }
  for (int64_t i = 0; i < nqv; i++) {
    const float* q = Q + i * d;
    double m = -std::numeric_limits<double>::infinity();
    std::vector<double> l((size_t)k), L((size_t)n_coarse);
    for (int j = 0; j < k; j++)
      if (cmp[(size_t)j])
        m = std::max(m, l[(size_t)j] = ref_cluster_logit(q, scale, C + j * d,
                                                         V ? V + j * d : nullptr, R ? R[j] : 0, d));
    for (int c = 0; c < n_coarse; c++)
      if (!survive[c])
        m = std::max(m, L[(size_t)c] = ref_cluster_logit(
                            q, scale, CC + c * d, CV ? CV + c * d : nullptr, CR ? CR[c] : 0, d));
    double D = 0.0;
    for (int j = 0; j < k; j++)
      if (cmp[(size_t)j]) D += sizes[j] * std::exp(l[(size_t)j] - m);
    for (int c = 0; c < n_coarse; c++)
      if (!survive[c]) {
        double N = 0.0;
        for (int32_t j = coarse_ranges[c]; j < coarse_ranges[c + 1]; j++) N += sizes[j];
        D += N * std::exp(L[(size_t)c] - m);
      }
    for (int j = 0; j < k; j++)
      if (cmp[(size_t)j]) s[(size_t)j] += std::exp(l[(size_t)j] - m) / D;
  }
  for (int j = 0; j < k; j++)
    if (cmp[(size_t)j]) s[(size_t)j] /= (double)nqv;
  return s;
}

std::vector<double> ref_child_bound_scores(const float* Q, int64_t nqv, double scale,
                                           const float* C, const float* V, const float* R,
                                           const float* CC, const float* CV, const float* CR,
                                           const int32_t* coarse_ranges, const float* coarse_sizes,
                                           int n_coarse, int64_t d, double child_scale) {
  // Per coarse cluster: the children's offsets from the coarse centroid, and the largest
  // isotropic variance and radius among them.
  std::vector<double> spread((size_t)n_coarse), viso((size_t)n_coarse, 0.0),
      rmax((size_t)n_coarse, 0.0);
  for (int c = 0; c < n_coarse; c++) {
    double sum2 = 0.0, max2 = 0.0;
    const int32_t j0 = coarse_ranges[c], j1 = coarse_ranges[c + 1];
    for (int32_t j = j0; j < j1; j++) {
      double e2 = 0.0;
      for (int64_t t = 0; t < d; t++) {
        const double e = (double)C[j * d + t] - (double)CC[c * d + t];
        e2 += e * e;
      }
      sum2 += e2;
      max2 = std::max(max2, e2);
      if (V) {
        double vs = 0.0;
        for (int64_t t = 0; t < d; t++) vs += V[j * d + t];
        viso[(size_t)c] = std::max(viso[(size_t)c], vs / (double)d);
        rmax[(size_t)c] = std::max(rmax[(size_t)c], (double)R[j]);
      }
    }
    const int64_t m = j1 - j0;
    spread[(size_t)c] =
        m > 1 ? std::min(std::sqrt(2.0 * std::log((double)m) * sum2 / (double)m / (double)d),
                         std::sqrt(max2))
              : std::sqrt(max2);
  }
  std::vector<double> s((size_t)n_coarse, 0.0);
  for (int64_t i = 0; i < nqv; i++) {
    const float* q = Q + i * d;
    double qn2 = 0.0;
    for (int64_t t = 0; t < d; t++) qn2 += (scale * q[t]) * (scale * q[t]);
    const double qn = std::sqrt(qn2);
    std::vector<double> L((size_t)n_coarse);
    double m = -std::numeric_limits<double>::infinity();
    for (int c = 0; c < n_coarse; c++)
      m = std::max(m, L[(size_t)c] = ref_cluster_logit(
                          q, scale, CC + c * d, CV ? CV + c * d : nullptr, CR ? CR[c] : 0, d));
    double D = 0.0;
    for (int c = 0; c < n_coarse; c++) D += coarse_sizes[c] * std::exp(L[(size_t)c] - m);
    for (int c = 0; c < n_coarse; c++) {
      const double dot = ref_cluster_logit(q, scale, CC + c * d, nullptr, 0, d);
      const double b = dot + child_scale * qn * spread[(size_t)c] +
                       std::min(0.5 * qn2 * viso[(size_t)c], qn * rmax[(size_t)c]);
      s[(size_t)c] += std::exp(b - m) / D;
    }
  }
  for (double& x : s) x /= (double)nqv;
  return s;
}

RefSelection ref_select_est(const float* q, int64_t t0, int64_t t1, int n_head, int n_head_kv,
                            int h, int64_t d, const float* C, const float* V, const float* R,
                            const float* sizes, const int32_t* offsets, int k, const float* CC,
                            const float* CV, const float* CR, const int32_t* coarse_ranges,
                            int n_coarse, int levels, double tf, double tc, double child_scale) {
  const int group = n_head / n_head_kv;
  std::vector<float> Q;
  for (int64_t t = t0; t < t1; t++)
    for (int g = 0; g < group; g++)
      for (int64_t x = 0; x < d; x++) Q.push_back(q[(t * n_head + h * group + g) * d + x]);
  const int64_t nqv = (t1 - t0) * group;
  const double scale = 1.0 / std::sqrt((double)d);
  const int64_t vecs = V ? 2 : 1;
  RefSelection r;
  if (levels < 2 || n_coarse == 0) {
    r.fine_scores = ref_cluster_scores_est(Q.data(), nqv, scale, C, V, R, sizes, k, d);
    r.centroids_compared = vecs * k;
  } else {
    std::vector<float> csz((size_t)n_coarse, 0.0f);
    for (int c = 0; c < n_coarse; c++)
      for (int32_t j = coarse_ranges[c]; j < coarse_ranges[c + 1]; j++) csz[(size_t)c] += sizes[j];
    r.coarse_scores =
        ref_cluster_scores_est(Q.data(), nqv, scale, CC, CV, CR, csz.data(), n_coarse, d);
    std::vector<uint8_t> surv((size_t)n_coarse);
    const bool child = !std::isnan(child_scale);
    if (child)
      r.child_scores = ref_child_bound_scores(Q.data(), nqv, scale, C, V, R, CC, CV, CR,
                                              coarse_ranges, csz.data(), n_coarse, d, child_scale);
    int64_t compared = n_coarse;
    for (int c = 0; c < n_coarse; c++) {
      surv[(size_t)c] = child ? r.child_scores[(size_t)c] >= tf : r.coarse_scores[(size_t)c] >= tc;
      if (surv[(size_t)c]) compared += coarse_ranges[c + 1] - coarse_ranges[c];
    }
    r.centroids_compared = vecs * compared;
    r.fine_scores = ref_cluster_scores_hier_est(Q.data(), nqv, scale, C, V, R, sizes, k, CC, CV, CR,
                                                coarse_ranges, n_coarse, surv.data(), d);
  }
  for (int j = 0; j < k; j++) {
    const double s = r.fine_scores[(size_t)j];
    if (std::isnan(s) || !(s >= tf)) continue;
    r.clusters.push_back(j);
    r.kept_keys += offsets[j + 1] - offsets[j];
    if (!r.ranges.empty() && r.ranges.back() == offsets[j])
      r.ranges.back() = offsets[j + 1];
    else {
      r.ranges.push_back(offsets[j]);
      r.ranges.push_back(offsets[j + 1]);
    }
  }
  return r;
}

double ref_weighted_quantile(std::vector<double> values, std::vector<double> weights, double p) {
  std::vector<size_t> idx(values.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(),
                   [&](size_t a, size_t b) { return values[a] < values[b]; });
  double total = 0.0;
  for (double w : weights) total += w;
  if (idx.empty()) return 0.0;
  if (p <= 0) return values[idx.front()];
  double cum = 0.0;
  for (size_t i : idx) {
    cum += weights[i];
    if (cum > p * total) return values[i];
  }
  return values[idx.back()];
}

}  // namespace sqz::ref
