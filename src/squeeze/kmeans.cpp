#include "squeeze/kmeans.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "core/fp16.h"
#include "squeeze/centroid_kernels.h"

namespace sqz {

namespace {

// splitmix64 finaliser: spreads (seed, layer, head, level) over the mt19937_64 seed space.
uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Uniform in [0, 1) from the top 53 bits; std::uniform_real_distribution is not specified
// bit-for-bit across standard libraries and packs should not depend on the toolchain.
double uniform01(std::mt19937_64& rng) {
  return (double)(rng() >> 11) * 0x1.0p-53;
}

// Pick an index with probability proportional to max(0, p[i]) (sum `total` > 0); -1 if none.
template <typename T>
int64_t sample_index(const T* p, int64_t n, double total, double u) {
  const double r = u * total;
  double cum = 0.0;
  int64_t last_pos = -1;
  for (int64_t i = 0; i < n; i++) {
    if (p[i] <= 0.0) continue;
    cum += p[i];
    last_pos = i;
    if (cum > r) return i;
  }
  return last_pos;  // rounding left r at the very end of the cumulative sum
}

// Slack on the pruning test: the bounds are exact in real arithmetic, float dot products of
// unit vectors are off by <= ~d * 2^-24 (8e-6 at d = 128); with this margin a row is only
// skipped when the full comparison would certainly pick the same centroid.
constexpr float kPruneEps = 1e-4f;
// Same idea for the half-gap test, on distances (sqrt turns a ~1e-6 dot error into <= 1e-3
// only for near-zero distances, where the test passes by a wide margin anyway).
constexpr float kGapEps = 1e-3f;

}  // namespace

uint64_t kmeans_job_seed(uint64_t seed, int layer, int head, int level) {
  uint64_t h = mix64(seed);
  h = mix64(h ^ (uint64_t)(uint32_t)layer);
  h = mix64(h ^ ((uint64_t)(uint32_t)head << 20));
  return mix64(h ^ ((uint64_t)(uint32_t)level << 40));
}

void normalize_rows(const float* x, int64_t n, int64_t d, int64_t ldx, float* out) {
  for (int64_t i = 0; i < n; i++) {
    const float* r = x + i * ldx;
    float* o = out + i * d;
    double ss = 0.0;
    for (int64_t t = 0; t < d; t++) ss += (double)r[t] * r[t];
    if (ss > 0.0 && std::isfinite(ss)) {
      const double inv = 1.0 / std::sqrt(ss);
      for (int64_t t = 0; t < d; t++) o[t] = (float)(r[t] * inv);
    } else {
      std::fill(o, o + d, 0.0f);
    }
  }
}

void kmeanspp_init(const float* X, const float* w, int64_t n, int64_t d, int k, uint64_t seed,
                   float* C) {
  std::mt19937_64 rng(seed);
  // Points transposed so each new centre updates all distances in one vector pass.
  std::vector<uint16_t> Xt((size_t)(d * n));
  for (int64_t i = 0; i < n; i++)
    for (int64_t t = 0; t < d; t++) Xt[(size_t)(t * n + i)] = fp32_to_fp16(X[i * d + t]);
  std::vector<double> p((size_t)n);
  double wtotal = 0.0;
  for (int64_t i = 0; i < n; i++) {
    p[(size_t)i] = w ? std::max(0.0, (double)w[i]) : 1.0;
    wtotal += p[(size_t)i];
  }
  auto pick_by_weight = [&]() -> int64_t {
    if (wtotal <= 0.0) return std::min<int64_t>(n - 1, (int64_t)(uniform01(rng) * (double)n));
    for (int64_t i = 0; i < n; i++) p[(size_t)i] = w ? std::max(0.0, (double)w[i]) : 1.0;
    const int64_t i = sample_index(p.data(), n, wtotal, uniform01(rng));
    return i < 0 ? 0 : i;
  };
  std::vector<float> mind((size_t)n, std::numeric_limits<float>::max());
  int64_t pick = pick_by_weight();
  double total = 0.0;
  for (int c = 0; c < k; c++) {
    if (c > 0) {
      if (w) {
        total = 0.0;
        for (int64_t i = 0; i < n; i++) {
          p[(size_t)i] = std::max(0.0, (double)w[i]) * std::max(0.0f, mind[(size_t)i]);
          total += p[(size_t)i];
        }
        pick = total > 0.0 ? sample_index(p.data(), n, total, uniform01(rng)) : -1;
      } else {
        pick = total > 0.0 ? sample_index(mind.data(), n, total, uniform01(rng)) : -1;
      }
      // total == 0: every point coincides with a chosen centre (duplicates); any point will
      // do, the empty-cluster repair in Lloyd takes care of the rest.
      if (pick < 0) pick = pick_by_weight();
    }
    std::copy(X + pick * d, X + (pick + 1) * d, C + (int64_t)c * d);
    total = cpu::kpp_min_update(Xt.data(), n, n, d, C + (int64_t)c * d, mind.data());
  }
}

KmeansResult kmeans_lloyd(const float* X, const float* w, int64_t n, int64_t d, int k,
                          const float* C0, const KmeansOptions& opt) {
  KmeansResult res;
  if (n <= 0 || k <= 0) return res;
  k = (int)std::min<int64_t>(k, n);
  const float kInf = std::numeric_limits<float>::infinity();
  std::vector<float> C((size_t)k * d), Cold((size_t)k * d);
  normalize_rows(C0, k, d, d, C.data());
  std::vector<float> Ct((size_t)cpu::centroid_transposed_size(k, d));
  std::vector<int32_t> assign((size_t)n, 0);
  std::vector<float> bd((size_t)n), sd((size_t)n);
  std::vector<int64_t> counts((size_t)k);
  std::vector<double> sums((size_t)k * d);
  std::vector<float> delta((size_t)k, 0.0f);
  std::vector<float> cnorm((size_t)k, 0.0f);       // [k] |c_j|^2 (1 or 0)
  std::vector<float> half_gap2((size_t)k, -1.0f);  // [k] (half distance to nearest centroid)^2
  std::vector<float> cc;                           // [k, k] centroid dot products
  for (int j = 0; j < k; j++)
    cnorm[(size_t)j] = cpu::row_dot(C.data() + (int64_t)j * d, C.data() + (int64_t)j * d, d);
  std::vector<int64_t> redo;
  std::vector<float> Xg, gbd, gsd;
  std::vector<int32_t> gbest;
  redo.reserve((size_t)n);
  std::vector<char> nonzero((size_t)n);
  for (int64_t i = 0; i < n; i++) {
    bool nz = false;
    for (int64_t t = 0; t < d && !nz; t++) nz = X[i * d + t] != 0.0f;
    nonzero[(size_t)i] = nz;
  }
  auto wt = [&](int64_t i) { return w ? (double)w[i] : 1.0; };

  const int max_iters = std::max(1, opt.max_iters);
  double prev = 0.0;
  for (int it = 0; it < max_iters; it++) {
    cpu::centroids_transpose(C.data(), k, d, d, Ct.data());
    if (it == 0 || !opt.prune) {
      cpu::centroid_argmax(X, n, d, d, Ct.data(), k, assign.data(), bd.data(), sd.data());
      res.full_rows += n;
    } else {
      // Hamerly-style bounds: a centroid that moved by delta changes any dot with a point in
      // the unit ball by at most delta. Keep a row when its exact dot with its own (moved)
      // centroid still beats the bound on every other centroid.
      int32_t jmax = 0;
      float dmax = 0.0f, dmax2 = 0.0f;
      for (int j = 0; j < k; j++) {
        if (delta[(size_t)j] > dmax) {
          dmax2 = dmax;
          dmax = delta[(size_t)j];
          jmax = j;
        } else if (delta[(size_t)j] > dmax2) {
          dmax2 = delta[(size_t)j];
        }
      }
      // Second test (Hamerly's): a point closer to its centroid than half the distance from
      // that centroid to its nearest other centroid cannot be closer to any other (triangle
      // inequality). Distances equal dot order only between unit centroids, so the test is off
      // while a zero centroid exists.
      bool all_unit = true;
      for (int j = 0; j < k && all_unit; j++) all_unit = cnorm[(size_t)j] > 0.5f;
      if (all_unit && k > 1) {
        cc.resize((size_t)k * (size_t)k);
        cpu::centroid_dots(C.data(), k, d, d, Ct.data(), k, 0, k, cc.data(), k);
        for (int a = 0; a < k; a++) {
          float best_cos = -1.0f;
          for (int j = 0; j < k; j++)
            if (j != a) best_cos = std::max(best_cos, cc[(size_t)a * k + j]);
          // |c_a - c_j|^2 = 2 - 2 cos for unit centroids; half of it, shrunk by the margin.
          const float half = 0.5f * std::sqrt(std::max(0.0f, 2.0f - 2.0f * best_cos));
          const float h = std::max(0.0f, half - kGapEps);
          half_gap2[(size_t)a] = h * h;
        }
      } else {
        std::fill(half_gap2.begin(), half_gap2.end(), -1.0f);
      }
      redo.clear();
      for (int64_t i = 0; i < n; i++) {
        const int32_t a = assign[(size_t)i];
        const float other = a == jmax ? dmax2 : dmax;
        const float own = cpu::row_dot(X + i * d, C.data() + (int64_t)a * d, d);
        const float ub = sd[(size_t)i] + other;
        const float dist2 = std::max(0.0f, 2.0f - 2.0f * own);  // unit point and centroid
        if (own >= ub + kPruneEps || (nonzero[(size_t)i] && dist2 <= half_gap2[(size_t)a])) {
          bd[(size_t)i] = own;
          sd[(size_t)i] = ub;
        } else {
          redo.push_back(i);
        }
      }
      const int64_t m = (int64_t)redo.size();
      if (m > 0) {
        Xg.resize((size_t)(m * d));
        gbd.resize((size_t)m);
        gsd.resize((size_t)m);
        gbest.resize((size_t)m);
        for (int64_t r = 0; r < m; r++)
          std::copy(X + redo[(size_t)r] * d, X + (redo[(size_t)r] + 1) * d, Xg.data() + r * d);
        cpu::centroid_argmax(Xg.data(), m, d, d, Ct.data(), k, gbest.data(), gbd.data(),
                             gsd.data());
        for (int64_t r = 0; r < m; r++) {
          const size_t i = (size_t)redo[(size_t)r];
          assign[i] = gbest[(size_t)r];
          bd[i] = gbd[(size_t)r];
          sd[i] = gsd[(size_t)r];
        }
      }
      res.full_rows += m;
    }

    // Empty clusters: steal the worst-fitting point of a cluster that can spare it.
    std::fill(counts.begin(), counts.end(), 0);
    for (int64_t i = 0; i < n; i++) counts[(size_t)assign[(size_t)i]]++;
    for (int e = 0; e < k; e++) {
      if (counts[(size_t)e] > 0) continue;
      int64_t far = -1;
      float far_dist = -kInf;
      for (int64_t i = 0; i < n; i++) {
        if (counts[(size_t)assign[(size_t)i]] <= 1) continue;
        const float dist = 1.0f - bd[(size_t)i];
        if (dist > far_dist) {
          far_dist = dist;
          far = i;
        }
      }
      counts[(size_t)assign[(size_t)far]]--;
      assign[(size_t)far] = e;
      counts[(size_t)e] = 1;
      bd[(size_t)far] = nonzero[(size_t)far] ? 1.0f : 0.0f;  // its centroid will be itself
      sd[(size_t)far] = kInf;  // no bound on the others: compare it fully next step
    }

    double J = 0.0;
    for (int64_t i = 0; i < n; i++) J += wt(i) * (1.0 - (double)bd[(size_t)i]);
    J = std::max(0.0, J);
    res.objective.push_back(J);
    res.iters = it + 1;
    const bool converged = (it > 0 && prev - J <= opt.tol * prev) || J <= 0.0;

    // Update: normalised weighted sums (the maximiser of sum_i w_i x_i·c over unit c).
    std::fill(sums.begin(), sums.end(), 0.0);
    for (int64_t i = 0; i < n; i++) {
      double* s = sums.data() + (int64_t)assign[(size_t)i] * d;
      const float* x = X + i * d;
      const double wi = wt(i);
      for (int64_t t = 0; t < d; t++) s[t] += wi * x[t];
    }
    Cold.swap(C);
    for (int j = 0; j < k; j++) {
      const double* s = sums.data() + (int64_t)j * d;
      double ss = 0.0;
      for (int64_t t = 0; t < d; t++) ss += s[t] * s[t];
      float* c = C.data() + (int64_t)j * d;
      if (ss > 0.0 && std::isfinite(ss)) {
        const double inv = 1.0 / std::sqrt(ss);
        for (int64_t t = 0; t < d; t++) c[t] = (float)(s[t] * inv);
      } else {
        std::fill(c, c + d, 0.0f);
      }
      cnorm[(size_t)j] = ss > 0.0 && std::isfinite(ss) ? 1.0f : 0.0f;
      double dd = 0.0;
      const float* o = Cold.data() + (int64_t)j * d;
      for (int64_t t = 0; t < d; t++) dd += ((double)c[t] - o[t]) * ((double)c[t] - o[t]);
      // Rounded up a hair so float rounding can never make the bound optimistic.
      delta[(size_t)j] = (float)(std::sqrt(dd) * (1.0 + 1e-6));
    }
    if (converged) break;
    prev = J;
  }
  res.assign = std::move(assign);
  res.centroids = std::move(C);
  return res;
}

KmeansResult spherical_kmeans(const float* X, const float* w, int64_t n, int64_t d, int k,
                              uint64_t seed, const KmeansOptions& opt) {
  if (n <= 0 || k <= 0) return {};
  k = (int)std::min<int64_t>(k, n);
  std::vector<float> C0((size_t)k * d);
  kmeanspp_init(X, w, n, d, k, seed, C0.data());
  return kmeans_lloyd(X, w, n, d, k, C0.data(), opt);
}

}  // namespace sqz
