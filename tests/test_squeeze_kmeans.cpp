// K-means for squeezed attention: SIMD kernels against double references, Lloyd against the
// naive reference (same init), monotone objective, determinism, degenerate data.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <set>

#include "core/fp16.h"
#include "reference/ref_squeeze.h"
#include "squeeze/centroid_kernels.h"
#include "squeeze/kmeans.h"
#include "test_squeeze_synth.h"
#include "util/test_util.h"

namespace sqz {
namespace {

constexpr double kU = 0x1.0p-24;  // float unit roundoff

// Points around `m` random directions (plus a shared offset), normalised: clustered but with
// real boundaries between clusters.
std::vector<float> clustered_points(std::mt19937_64& rng, int64_t n, int64_t d, int m,
                                    float noise) {
  std::normal_distribution<float> nd;
  std::vector<float> mu((size_t)(m * d)), bias((size_t)d), raw((size_t)(n * d)), X((size_t)(n * d));
  for (auto& x : mu) x = nd(rng);
  for (auto& x : bias) x = 0.5f * nd(rng);
  for (int64_t i = 0; i < n; i++) {
    const int c = (int)(rng() % (uint64_t)m);
    for (int64_t t = 0; t < d; t++)
      raw[(size_t)(i * d + t)] = bias[(size_t)t] + mu[(size_t)(c * d + t)] + noise * nd(rng);
  }
  normalize_rows(raw.data(), n, d, d, X.data());
  return X;
}

// ---- kernels ----

TEST(SqueezeKernels, ArgmaxMatchesDoubleBruteForce) {
  std::mt19937_64 rng(test::test_seed());
  for (int64_t d : {3, 64, 80}) {
    for (int64_t k : {1, 5, 31, 32, 33, 100}) {
      for (int64_t n : {1, 7, 13, 40}) {
        const std::vector<float> X = test::randn(rng, (size_t)(n * d));
        std::vector<float> C = test::randn(rng, (size_t)(k * d));
        if (k > 2)  // exact duplicate centroid: the lower index must win the tie
          std::copy(C.begin() + d, C.begin() + 2 * d, C.begin() + (k - 1) * d);
        std::vector<float> Ct((size_t)cpu::centroid_transposed_size(k, d));
        cpu::centroids_transpose(C.data(), k, d, d, Ct.data());
        std::vector<int32_t> best((size_t)n, -7);
        std::vector<float> bd((size_t)n), sd((size_t)n);
        test::poison(bd);
        test::poison(sd);
        cpu::centroid_argmax(X.data(), n, d, d, Ct.data(), k, best.data(), bd.data(), sd.data());
        for (int64_t i = 0; i < n; i++) {
          std::vector<double> dots((size_t)k);
          double absum = 0;
          for (int64_t j = 0; j < k; j++) {
            double s = 0, a = 0;
            for (int64_t t = 0; t < d; t++) {
              s += (double)X[(size_t)(i * d + t)] * C[(size_t)(j * d + t)];
              a += std::fabs((double)X[(size_t)(i * d + t)] * C[(size_t)(j * d + t)]);
            }
            dots[(size_t)j] = s;
            absum = std::max(absum, a);
          }
          // FMA chain of d terms: |error| <= d * u * sum|x_t c_t| (+ slack for the final round).
          const double tol = (double)(d + 2) * kU * absum;
          const int32_t b = best[(size_t)i];
          ASSERT_GE(b, 0);
          ASSERT_LT(b, k);
          const double mx = *std::max_element(dots.begin(), dots.end());
          EXPECT_GE(dots[(size_t)b], mx - 2 * tol) << "n=" << n << " k=" << k << " d=" << d;
          EXPECT_NEAR(bd[(size_t)i], dots[(size_t)b], tol);
          // Lowest index among exact duplicates.
          if (k > 2 && b == k - 1) ADD_FAILURE() << "duplicate centroid won over the lower index";
          double second = -std::numeric_limits<double>::infinity();
          for (int64_t j = 0; j < k; j++)
            if (j != b) second = std::max(second, dots[(size_t)j]);
          if (k == 1)
            EXPECT_EQ(sd[(size_t)i], -std::numeric_limits<float>::infinity());
          else
            EXPECT_NEAR(sd[(size_t)i], second, 2 * tol);
        }
      }
    }
  }
}

TEST(SqueezeKernels, DotsSubRangesMatchDouble) {
  std::mt19937_64 rng(test::test_seed() + 1);
  for (int64_t d : {5, 64}) {
    for (int64_t k : {1, 17, 64, 97}) {
      const int64_t n = 11;
      const std::vector<float> X = test::randn(rng, (size_t)(n * d));
      const std::vector<float> C = test::randn(rng, (size_t)(k * d));
      std::vector<float> Ct((size_t)cpu::centroid_transposed_size(k, d));
      cpu::centroids_transpose(C.data(), k, d, d, Ct.data());
      for (auto [j0, j1] : {std::pair<int64_t, int64_t>{0, k},
                            {k / 3, k},
                            {k / 2, k / 2 + 1},
                            {1 % k, std::max<int64_t>(1 % k, k - 1)}}) {
        const int64_t w = j1 - j0;
        const int64_t lds = w + 3;  // a stride wider than the range: no writes outside it
        std::vector<float> S((size_t)(n * lds));
        test::poison(S);
        cpu::centroid_dots(X.data(), n, d, d, Ct.data(), k, j0, j1, S.data(), lds);
        for (int64_t i = 0; i < n; i++) {
          for (int64_t j = j0; j < j1; j++) {
            double s = 0, a = 0;
            for (int64_t t = 0; t < d; t++) {
              s += (double)X[(size_t)(i * d + t)] * C[(size_t)(j * d + t)];
              a += std::fabs((double)X[(size_t)(i * d + t)] * C[(size_t)(j * d + t)]);
            }
            EXPECT_NEAR(S[(size_t)(i * lds + j - j0)], s, (double)(d + 2) * kU * a);
          }
          for (int64_t j = w; j < lds; j++) EXPECT_TRUE(std::isnan(S[(size_t)(i * lds + j)]));
        }
      }
    }
  }
}

TEST(SqueezeKernels, KppUpdateAndRowDot) {
  std::mt19937_64 rng(test::test_seed() + 2);
  for (int64_t n : {1, 63, 64, 129}) {
    const int64_t d = 64;
    const std::vector<float> X = test::randn(rng, (size_t)(n * d));
    const std::vector<float> c = test::randn(rng, (size_t)d);
    std::vector<uint16_t> Xt((size_t)(d * n));
    for (int64_t i = 0; i < n; i++)
      for (int64_t t = 0; t < d; t++)
        Xt[(size_t)(t * n + i)] = fp32_to_fp16(X[(size_t)(i * d + t)]);
    std::vector<float> mind((size_t)n);
    for (int64_t i = 0; i < n; i++) mind[(size_t)i] = i % 3 == 0 ? -100.0f : 100.0f;
    const float total = cpu::kpp_min_update(Xt.data(), n, n, d, c.data(), mind.data());
    double tsum = 0;
    for (int64_t i = 0; i < n; i++) {
      double s = 0, a = 0;
      for (int64_t t = 0; t < d; t++) {
        s += (double)c[(size_t)t] * X[(size_t)(i * d + t)];
        a += std::fabs((double)c[(size_t)t] * X[(size_t)(i * d + t)]);
      }
      // f16 storage of the points: relative 2^-11 per element, then float accumulation.
      const double tol = a * (0x1.0p-11 + (double)(d + 2) * kU);
      const double want = i % 3 == 0 ? -100.0 : std::min(100.0, 1.0 - s);
      EXPECT_NEAR(mind[(size_t)i], want, i % 3 == 0 ? 0.0 : tol);
      tsum += std::max(0.0f, mind[(size_t)i]);
      EXPECT_NEAR(cpu::row_dot(X.data() + i * d, c.data(), d), s, (double)(d + 2) * kU * a);
    }
    EXPECT_NEAR(total, tsum, 1e-4 * std::max(1.0, tsum));
  }
}

// ---- Lloyd ----

struct KmCase {
  int64_t n;
  int k;
  int m;  // planted clusters
  bool weighted;
};

TEST(SqueezeKmeans, MatchesReferenceGivenSameInit) {
  std::mt19937_64 rng(test::test_seed() + 3);
  const int64_t d = 64;
  int exact_cases = 0;
  for (const KmCase& c : {KmCase{113, 7, 5, false}, KmCase{501, 25, 12, false},
                          KmCase{501, 40, 12, true}, KmCase{3771, 60, 30, false}}) {
    const std::vector<float> X = clustered_points(rng, c.n, d, c.m, 0.6f);
    std::vector<float> w;
    if (c.weighted)
      for (int64_t i = 0; i < c.n; i++) w.push_back((float)(1 + rng() % 9));
    const float* wp = c.weighted ? w.data() : nullptr;
    std::vector<float> C0((size_t)(c.k * d));
    kmeanspp_init(X.data(), wp, c.n, d, c.k, rng(), C0.data());
    const ref::RefKmeansResult r = ref::ref_kmeans(X.data(), wp, c.n, d, c.k, C0.data(), 25, 1e-4);
    for (bool prune : {false, true}) {
      KmeansOptions opt;
      opt.prune = prune;
      const KmeansResult o = kmeans_lloyd(X.data(), wp, c.n, d, c.k, C0.data(), opt);
      SCOPED_TRACE(testing::Message() << "n=" << c.n << " k=" << c.k << " prune=" << prune
                                      << " ref min margin=" << r.min_margin);
      ASSERT_EQ((int64_t)o.assign.size(), c.n);
      // The float kernels may break a tie the double reference sees as a margin below their
      // error (<= (d + 2) u for unit vectors, ~4e-6): only then can the runs legitimately
      // diverge. Such seeds are reported, and at least one case must be exact.
      if (r.min_margin <= 1e-5) {
        std::printf("[note] near-tie (margin %.3g) in case n=%lld k=%d: compared loosely\n",
                    r.min_margin, (long long)c.n, c.k);
        EXPECT_NEAR(o.objective.back(), r.objective.back(), 1e-3 * r.objective.back());
        int64_t same = 0;
        for (int64_t i = 0; i < c.n; i++) same += o.assign[(size_t)i] == r.assign[(size_t)i];
        std::printf("[note] assignments agree on %lld of %lld points\n", (long long)same,
                    (long long)c.n);
        // A flipped near-tie moves a few points and then their clusters' centroids; labels
        // stay aligned because both runs start from the same centroids.
        EXPECT_GE(same, c.n * 9 / 10);
        continue;
      }
      exact_cases++;
      ASSERT_EQ(o.iters, r.iters);
      for (int it = 0; it < o.iters; it++)
        EXPECT_NEAR(o.objective[(size_t)it], r.objective[(size_t)it],
                    1e-6 * (double)c.n + 1e-6 * r.objective[(size_t)it]);
      for (int64_t i = 0; i < c.n; i++) ASSERT_EQ(o.assign[(size_t)i], r.assign[(size_t)i]) << i;
      for (size_t t = 0; t < o.centroids.size(); t++)
        ASSERT_NEAR(o.centroids[t], r.centroids[t], 1e-5);
    }
  }
  EXPECT_GT(exact_cases, 0);
}

TEST(SqueezeKmeans, ObjectiveNeverIncreases) {
  std::mt19937_64 rng(test::test_seed() + 4);
  const int64_t d = 64;
  for (const KmCase& c :
       {KmCase{113, 9, 20, false}, KmCase{501, 25, 60, true}, KmCase{3771, 190, 400, false}}) {
    // Noisy, overlapping clusters so Lloyd takes many steps.
    const std::vector<float> X = clustered_points(rng, c.n, d, c.m, 1.2f);
    std::vector<float> w;
    if (c.weighted)
      for (int64_t i = 0; i < c.n; i++) w.push_back((float)(1 + rng() % 5));
    const float* wp = c.weighted ? w.data() : nullptr;
    double wsum = 0;
    for (int64_t i = 0; i < c.n; i++) wsum += wp ? wp[i] : 1.0;
    KmeansOptions opt;
    opt.max_iters = 40;
    opt.tol = 0;  // run all steps: more chances to catch an increase
    for (bool prune : {false, true}) {
      opt.prune = prune;
      const KmeansResult o = spherical_kmeans(X.data(), wp, c.n, d, c.k, rng(), opt);
      ASSERT_GE(o.iters, 2);
      // Each J sums n float-rounded (1 - dot) terms: per-term error <= (d + 2) u.
      const double slack = 2.0 * wsum * (double)(d + 2) * kU;
      for (size_t t = 1; t < o.objective.size(); t++)
        EXPECT_LE(o.objective[t], o.objective[t - 1] + slack)
            << "step " << t << " n=" << c.n << " prune=" << prune;
    }
    std::vector<float> C0((size_t)(c.k * d));
    kmeanspp_init(X.data(), wp, c.n, d, c.k, rng(), C0.data());
    if (c.n <= 501) {  // the reference, in double, obeys the theory to rounding
      const ref::RefKmeansResult r = ref::ref_kmeans(X.data(), wp, c.n, d, c.k, C0.data(), 40, 0);
      for (size_t t = 1; t < r.objective.size(); t++)
        EXPECT_LE(r.objective[t], r.objective[t - 1] * (1 + 1e-12));
    }
  }
}

TEST(SqueezeKmeans, PruningChangesNothingButWork) {
  std::mt19937_64 rng(test::test_seed() + 5);
  const int64_t n = 3771, d = 64;
  const int k = 120;
  const std::vector<float> X = clustered_points(rng, n, d, 80, 0.7f);
  KmeansOptions a, b;
  a.prune = false;
  b.prune = true;
  const uint64_t seed = rng();
  const KmeansResult ra = spherical_kmeans(X.data(), nullptr, n, d, k, seed, a);
  const KmeansResult rb = spherical_kmeans(X.data(), nullptr, n, d, k, seed, b);
  ASSERT_EQ(ra.iters, rb.iters);
  EXPECT_EQ(ra.assign, rb.assign);
  for (size_t i = 0; i < ra.objective.size(); i++)
    EXPECT_NEAR(ra.objective[i], rb.objective[i], 1e-6 * ra.objective[i]);
  EXPECT_EQ(ra.full_rows, (int64_t)ra.iters * n);
  if (rb.iters > 2) {
    EXPECT_LT(rb.full_rows, ra.full_rows);
  }
}

TEST(SqueezeKmeans, KmeansPPDeterministicAndDistinct) {
  std::mt19937_64 rng(test::test_seed() + 6);
  const int64_t n = 501, d = 64;
  const int k = 50;
  const std::vector<float> X = clustered_points(rng, n, d, 10, 0.5f);
  std::vector<float> A((size_t)(k * d)), B((size_t)(k * d)), Cc((size_t)(k * d));
  kmeanspp_init(X.data(), nullptr, n, d, k, 77, A.data());
  kmeanspp_init(X.data(), nullptr, n, d, k, 77, B.data());
  kmeanspp_init(X.data(), nullptr, n, d, k, 78, Cc.data());
  EXPECT_EQ(A, B);
  EXPECT_NE(A, Cc);
  // Distinct data points: D^2 sampling never picks a point already chosen (distance 0).
  std::set<std::vector<float>> rows;
  for (int j = 0; j < k; j++)
    rows.insert(std::vector<float>(A.begin() + j * d, A.begin() + (j + 1) * d));
  EXPECT_EQ((int)rows.size(), k);
  EXPECT_NE(kmeans_job_seed(1, 0, 1, 0), kmeans_job_seed(1, 1, 0, 0));
  EXPECT_NE(kmeans_job_seed(1, 0, 0, 0), kmeans_job_seed(1, 0, 0, 1));
}

void expect_valid(const KmeansResult& r, int64_t n, int k, int64_t d) {
  ASSERT_EQ((int64_t)r.assign.size(), n);
  std::vector<int64_t> cnt((size_t)k, 0);
  for (int32_t a : r.assign) {
    ASSERT_GE(a, 0);
    ASSERT_LT(a, k);
    cnt[(size_t)a]++;
  }
  for (int j = 0; j < k; j++) EXPECT_GT(cnt[(size_t)j], 0) << "empty cluster " << j;
  ASSERT_EQ(r.centroids.size(), (size_t)(k * d));
  EXPECT_TRUE(test::all_finite(r.centroids.data(), r.centroids.size()));
  for (double j : r.objective) EXPECT_TRUE(std::isfinite(j));
}

TEST(SqueezeKmeans, DegenerateDataNoEmptyNoNaN) {
  std::mt19937_64 rng(test::test_seed() + 7);
  const int64_t d = 64;
  std::vector<float> one = test::randn(rng, (size_t)d);
  auto build = [&](int64_t n, int kind) {
    std::vector<float> raw((size_t)(n * d), 0.0f), X((size_t)(n * d));
    for (int64_t i = 0; i < n; i++) {
      const bool zero = kind == 1 || (kind == 2 && i % 3 == 0);
      const bool dup = kind == 0 || (kind == 2 && i % 3 == 1);
      for (int64_t t = 0; t < d; t++)
        raw[(size_t)(i * d + t)] = zero ? 0.0f : dup ? one[(size_t)t] : (float)rng() / 1e19f;
    }
    normalize_rows(raw.data(), n, d, d, X.data());
    return X;
  };
  for (int kind : {0, 1, 2}) {  // all duplicates, all zeros, mix of zeros/duplicates/random
    for (auto [n, k] : {std::pair<int64_t, int>{113, 20}, {113, 113}, {37, 1}, {501, 25}}) {
      const std::vector<float> X = build(n, kind);
      for (bool prune : {false, true}) {
        KmeansOptions opt;
        opt.prune = prune;
        SCOPED_TRACE(testing::Message() << "kind=" << kind << " n=" << n << " k=" << k);
        const KmeansResult r = spherical_kmeans(X.data(), nullptr, n, d, k, 5, opt);
        expect_valid(r, n, k, d);
      }
    }
  }
  // Weighted with zero weights on some points.
  const std::vector<float> X = build(113, 2);
  std::vector<float> w(113);
  for (size_t i = 0; i < w.size(); i++) w[i] = i % 2 ? 0.0f : 3.0f;
  expect_valid(spherical_kmeans(X.data(), w.data(), 113, d, 30, 9, {}), 113, 30, d);
}

// ---- whole compile: determinism ----

void expect_same_context(const SqueezedContext& a, const SqueezedContext& b) {
  ASSERT_EQ(a.heads.size(), b.heads.size());
  for (size_t i = 0; i < a.heads.size(); i++) {
    EXPECT_EQ(a.heads[i].perm, b.heads[i].perm) << i;
    EXPECT_EQ(a.heads[i].fine_offsets, b.heads[i].fine_offsets) << i;
    EXPECT_EQ(a.heads[i].fine_centroids, b.heads[i].fine_centroids) << i;
    EXPECT_EQ(a.heads[i].coarse_centroids, b.heads[i].coarse_centroids) << i;
    EXPECT_EQ(a.heads[i].coarse_ranges, b.heads[i].coarse_ranges) << i;
  }
  EXPECT_EQ(a.calib.fine_threshold, b.calib.fine_threshold);
  EXPECT_EQ(a.calib.coarse_threshold, b.calib.coarse_threshold);
  EXPECT_EQ(a.calib.kept_fine, b.calib.kept_fine);
  EXPECT_EQ(a.calib.kept_hier, b.calib.kept_hier);
}

TEST(SqueezeKmeans, CompileDeterministicAcrossThreadsAndSeeded) {
  test::SynthSpec s;
  s.n_layer = 3;
  s.n_head = 6;
  s.n_head_kv = 2;
  s.n_ctx = 501;
  const test::SynthContext sc = test::make_synth(s, test::test_seed());
  CompileParams p;
  p.obs_window = s.n_obs;
  p.clusters = 0.08;
  p.coarse = 0.02;
  p.seed = 11;
  std::vector<SqueezedContext> runs;
  for (int nt : {1, 2, 3}) {
    p.n_threads = nt;
    auto r = squeeze_context(sc.cap, p);
    ASSERT_TRUE(r.ok()) << r.status().message();
    runs.push_back(std::move(r.value()));
  }
  expect_same_context(runs[0], runs[1]);
  expect_same_context(runs[0], runs[2]);
  p.seed = 12;
  p.n_threads = 2;
  auto other = squeeze_context(sc.cap, p);
  ASSERT_TRUE(other.ok());
  bool differs = false;
  for (size_t i = 0; i < runs[0].heads.size(); i++)
    differs = differs || runs[0].heads[i].perm != other->heads[i].perm;
  EXPECT_TRUE(differs) << "the seed has no effect";
}

TEST(SqueezeKmeans, CompileDegenerateKeys) {
  // Every key identical or zero: clusters must still be non-empty and centroids finite.
  test::SynthSpec s;
  s.n_ctx = 113;
  s.n_obs = 13;
  test::SynthContext sc = test::make_synth(s, test::test_seed());
  for (auto& k : sc.cap.k)
    for (size_t i = 0; i < k.size(); i++) k[i] = (i / s.head_dim) % 4 == 0 ? 0.0f : 1.0f;
  CompileParams p;
  p.obs_window = s.n_obs;
  p.clusters = 20;
  p.coarse = 5;
  auto r = squeeze_context(sc.cap, p);
  ASSERT_TRUE(r.ok()) << r.status().message();
  for (const HeadClusters& h : r->heads) {
    for (size_t j = 0; j + 1 < h.fine_offsets.size(); j++)
      EXPECT_LT(h.fine_offsets[j], h.fine_offsets[j + 1]);
    EXPECT_TRUE(test::all_finite(h.fine_centroids.data(), h.fine_centroids.size()));
    EXPECT_TRUE(test::all_finite(h.coarse_centroids.data(), h.coarse_centroids.size()));
  }
  for (double t : r->calib.fine_threshold) EXPECT_TRUE(std::isfinite(t));
}

}  // namespace
}  // namespace sqz
