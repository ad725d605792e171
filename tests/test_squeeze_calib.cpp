// Calibration: global size-weighted quantiles of window-averaged cluster scores, kept
// fractions, the percentile <-> budget mapping, and agreement with the double reference.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "reference/ref_squeeze.h"
#include "squeeze/pack.h"
#include "test_squeeze_synth.h"
#include "util/test_util.h"

namespace sqz {
namespace {

struct CalibFixture {
  test::SynthSpec spec;
  test::SynthContext synth;
  SqueezedContext sc;
};

CalibFixture make_fixture(int n_head, int n_head_kv, int64_t n_ctx, int n_obs, double clusters,
                          double coarse, uint64_t salt) {
  CalibFixture f;
  f.spec.n_layer = 3;
  f.spec.n_head = n_head;
  f.spec.n_head_kv = n_head_kv;
  f.spec.n_ctx = n_ctx;
  f.spec.n_obs = n_obs;
  f.spec.n_topics = 24;
  f.synth = test::make_synth(f.spec, test::test_seed() + salt);
  CompileParams p;
  p.obs_window = n_obs;
  p.clusters = clusters;
  p.coarse = coarse;
  p.n_threads = 2;
  // These tests check the mean estimator's table (sc.calib) against the pack's default one;
  // kMeanVar's table is covered by test_squeeze_estimator.
  p.estimator = Estimator::kMean;
  auto r = squeeze_context(f.synth.cap, p);
  EXPECT_TRUE(r.ok()) << r.status().message();
  f.sc = std::move(r.value());
  return f;
}

// Largest fine cluster over all heads, as a fraction of all clustered keys: the quantile can
// overshoot (1 - p) by at most one cluster straddling it (docs/squeeze.md).
double max_cluster_fraction(const SqueezedContext& sc) {
  float mx = 0;
  for (const HeadClusters& h : sc.heads)
    for (float s : h.fine_sizes) mx = std::max(mx, s);
  return mx / ((double)sc.heads.size() * (double)sc.n_clustered);
}

TEST(SqueezeCalib, KeptFractionNearOneMinusPercentile) {
  const CalibFixture f = make_fixture(8, 2, 3771, 100, 0.05, 0.01, 1);
  const CalibTable& t = f.sc.calib;
  ASSERT_EQ(t.percentiles, calib_percentile_grid());
  const double slack = max_cluster_fraction(f.sc);
  ASSERT_LT(slack, 0.01);  // the bound below is only meaningful with small clusters
  for (size_t g = 0; g < t.percentiles.size(); g++) {
    const double p = t.percentiles[g];
    // Definition of the weighted quantile: kept in [1 - p, 1 - p + one cluster). Exact score
    // ties between clusters would add their weight; with continuous scores there are none.
    EXPECT_GE(t.kept_fine[g], 1 - p - 1e-12) << p;
    EXPECT_LT(t.kept_fine[g], 1 - p + slack + 1e-12) << p;
    if (g > 0) {
      EXPECT_GE(t.fine_threshold[g], t.fine_threshold[g - 1]);
      EXPECT_GE(t.coarse_threshold[g], t.coarse_threshold[g - 1]);
      EXPECT_LE(t.kept_fine[g], t.kept_fine[g - 1]);
    }
    // Two-level lookup: at p <= 0.5 the automatic coarse percentile is 0, nothing is
    // filtered and the two lookups coincide.
    if (p <= 0.5) {
      EXPECT_EQ(t.kept_hier[g], t.kept_fine[g]);
    }
    EXPECT_GT(t.kept_hier[g], 0.0);
  }
  EXPECT_EQ(t.kept_fine[0], 1.0);
}

// T is a valid weighted quantile at p of the reference (double) distribution, allowing the
// scores a relative error eps: weight strictly below T(1 - eps) <= p W < weight up to T(1 + eps).
void expect_valid_quantile(const std::vector<double>& vals, const std::vector<double>& w, double p,
                           double T, double eps, const char* what) {
  double W = 0, below = 0, upto = 0;
  bool near_item = false;
  for (size_t i = 0; i < vals.size(); i++) {
    W += w[i];
    if (vals[i] < T * (1 - eps)) below += w[i];
    if (vals[i] <= T * (1 + eps)) upto += w[i];
    near_item = near_item || std::fabs(vals[i] - T) <= eps * T;
  }
  EXPECT_TRUE(near_item) << what << " p=" << p << ": threshold " << T << " is not a cluster score";
  EXPECT_LE(below, p * W * (1 + 1e-12)) << what << " p=" << p;
  if (p > 0) {
    EXPECT_GT(upto, p * W) << what << " p=" << p;
  }
}

TEST(SqueezeCalib, ThresholdsMatchReferenceQuantiles) {
  for (auto [nh, nkv] : {std::pair{4, 4}, {9, 3}, {8, 1}}) {
    const CalibFixture f = make_fixture(nh, nkv, 501, 37, 0.1, 0.03, 2 + nh);
    const SqueezedContext& sc = f.sc;
    std::vector<double> fv, fw, cv, cw;
    for (int l = 0; l < sc.n_layer; l++)
      for (int h = 0; h < sc.n_head_kv; h++) {
        const HeadClusters& hc = sc.heads[(size_t)(l * sc.n_head_kv + h)];
        const ref::RefSelection r = ref::ref_select(
            f.synth.cap.q_obs[(size_t)l].data(), 0, sc.n_obs, sc.n_head, sc.n_head_kv, h,
            sc.head_dim, hc.fine_centroids.data(), hc.fine_sizes.data(), hc.fine_offsets.data(),
            sc.n_fine, hc.coarse_centroids.data(), hc.coarse_ranges.data(), sc.n_coarse, 2, 0.0,
            0.0);
        // levels 2 with tc = 0 keeps every coarse cluster: fine scores are single-level.
        for (int j = 0; j < sc.n_fine; j++) {
          fv.push_back(r.fine_scores[(size_t)j]);
          fw.push_back(hc.fine_sizes[(size_t)j]);
        }
        for (int c = 0; c < sc.n_coarse; c++) {
          cv.push_back(r.coarse_scores[(size_t)c]);
          double n = 0;
          for (int32_t j = hc.coarse_ranges[(size_t)c]; j < hc.coarse_ranges[(size_t)c + 1]; j++)
            n += hc.fine_sizes[(size_t)j];
          cw.push_back(n);
        }
      }
    // Float logits of d = 64 terms carry a relative error ~1e-6 into the scores (exp
    // amplifies an absolute logit error into the same relative error); 1e-4 is ample.
    const double eps = 1e-4;
    for (size_t g = 0; g < sc.calib.percentiles.size(); g++) {
      const double p = sc.calib.percentiles[g];
      expect_valid_quantile(fv, fw, p, sc.calib.fine_threshold[g], eps, "fine");
      expect_valid_quantile(cv, cw, p, sc.calib.coarse_threshold[g], eps, "coarse");
    }
    // And the reference's own quantile agrees with ours where no near-tie straddles it.
    const double p = 0.9;
    const double want = ref::ref_weighted_quantile(fv, fw, p);
    EXPECT_NEAR(calib_threshold(sc.calib, p, CentroidLevel::kFine), want, 10 * eps * want);
  }
}

TEST(SqueezeCalib, MeasuredKeptMatchesSelectorOnWindow) {
  const CalibFixture f = make_fixture(6, 2, 1200, 64, 0.05, 0.015, 9);
  const std::string path = test::temp_pack_path("calib");
  ASSERT_TRUE(pack_write(f.sc, f.synth.cap, test::synth_fingerprint(f.spec), path).ok());
  auto pk = Pack::open(path);
  ASSERT_TRUE(pk.ok()) << pk.status().message();
  const Pack& pack = *pk.value();
  Selector sel(pack, 2);
  std::vector<HeadSelection> out;
  const double W = (double)pack.n_layer() * pack.n_head_kv() * pack.n_clustered();
  const double slack = max_cluster_fraction(f.sc);
  for (double p : {0.5, 0.7, 0.8, 0.9, 0.95, 0.99}) {
    const size_t g = (size_t)(std::find_if(pack.calibration().percentiles.begin(),
                                           pack.calibration().percentiles.end(),
                                           [&](double x) { return std::fabs(x - p) < 1e-12; }) -
                              pack.calibration().percentiles.begin());
    ASSERT_LT(g, pack.calibration().percentiles.size());
    for (int levels : {1, 2}) {
      SelectParams sp;
      sp.percentile = p;
      sp.levels = levels;
      // kept_hier is measured with the calibrated coarse rule.
      sp.coarse_rule = SelectParams::CoarseRule::kCalibrated;
      double kept = 0;
      for (int l = 0; l < pack.n_layer(); l++) {
        sel.plan(l, f.synth.cap.q_obs[(size_t)l].data(), pack.n_obs(), sp, out);
        ASSERT_EQ((int)out.size(), pack.n_head_kv());
        for (const HeadSelection& s : out) kept += (double)s.kept_keys;
      }
      if (levels == 1) {
        // Same scoring code, same block (the whole window): bit-identical decisions.
        EXPECT_EQ(kept / W, pack.calibration().kept_fine[g]) << p;
      } else {
        // Calibration evaluates the two-level lookup with a different (equivalent)
        // normalisation: only clusters within float rounding of a threshold may differ.
        EXPECT_NEAR(kept / W, pack.calibration().kept_hier[g], 2 * slack) << p;
      }
    }
  }
  std::filesystem::remove(path);
}

TEST(SqueezeCalib, ThresholdInterpolationAndBudget) {
  const CalibFixture f = make_fixture(4, 2, 501, 37, 0.1, 0.03, 13);
  const CalibTable& t = f.sc.calib;
  for (size_t g = 1; g < t.percentiles.size(); g++)
    EXPECT_EQ(calib_threshold(t, t.percentiles[g], CentroidLevel::kFine), t.fine_threshold[g]);
  // Percentile 0 keeps everything, whatever the scores of new queries.
  EXPECT_EQ(calib_threshold(t, 0.0, CentroidLevel::kFine), 0.0);
  EXPECT_EQ(calib_threshold(t, std::nan(""), CentroidLevel::kCoarse), 0.0);
  for (size_t g = 0; g + 1 < t.percentiles.size(); g++) {
    const double mid = 0.5 * (t.percentiles[g] + t.percentiles[g + 1]);
    for (CentroidLevel lv : {CentroidLevel::kFine, CentroidLevel::kCoarse}) {
      const double lo = g == 0                       ? 0.0
                        : lv == CentroidLevel::kFine ? t.fine_threshold[g]
                                                     : t.coarse_threshold[g];
      const double hi =
          lv == CentroidLevel::kFine ? t.fine_threshold[g + 1] : t.coarse_threshold[g + 1];
      const double x = calib_threshold(t, mid, lv);
      EXPECT_GE(x, lo * (1 - 1e-12));
      EXPECT_LE(x, hi * (1 + 1e-12));
    }
  }
  EXPECT_EQ(calib_threshold(t, -1.0, CentroidLevel::kFine), 0.0);
  EXPECT_EQ(calib_threshold(t, 1.5, CentroidLevel::kFine), t.fine_threshold.back());
  // percentile_for_budget: the grid point whose measured kept fraction is closest.
  for (int levels : {1, 2}) {
    const std::vector<double>& kept = levels == 1 ? t.kept_fine : t.kept_hier;
    for (double b : {0.02, 0.1, 0.25, 0.5, 0.9}) {
      const double p = calib_percentile_for_budget(t, b, levels);
      double best = 1e9;
      for (double k : kept) best = std::min(best, std::fabs(k - b));
      const size_t g = (size_t)(std::find(t.percentiles.begin(), t.percentiles.end(), p) -
                                t.percentiles.begin());
      ASSERT_LT(g, t.percentiles.size());
      EXPECT_EQ(std::fabs(kept[g] - b), best) << b;
    }
  }
  EXPECT_NEAR(calib_percentile_for_budget(t, 0.1, 1), 0.9, 0.011);
}

}  // namespace
}  // namespace sqz
