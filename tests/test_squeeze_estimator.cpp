// Cluster-score estimators (Estimator::kMean / kMeanVar, docs/squeeze.md "Cluster scores"):
// the variance-aware scorer against the double reference (odd shapes, the radius cap both
// binding and not), reduction to the mean estimator when every cluster's keys are identical,
// the compiled variances / radii against a naive recomputation, the lookup and calibration
// with kMeanVar, and the pack's version-2 sections (round trip and validation).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <random>
#include <set>

#include "reference/ref_squeeze.h"
#include "squeeze/calib_internal.h"
#include "squeeze/pack.h"
#include "squeeze/score.h"
#include "test_squeeze_synth.h"
#include "util/test_util.h"

namespace sqz {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Random clusters of one head in pack layout (means, variances, radii, sizes, coarse ranges).
struct RandHead {
  int k = 0, kc = 0;
  int64_t d = 0;
  std::vector<float> C, V, R, sizes, CC, CV, CR;
  std::vector<int32_t> offsets, cranges;
  HeadCentroidsView view() const {
    HeadCentroidsView v;
    v.n_fine = k;
    v.n_coarse = kc;
    v.head_dim = d;
    v.fine_centroids = C.data();
    v.fine_sizes = sizes.data();
    v.fine_offsets = offsets.data();
    v.coarse_centroids = CC.data();
    v.coarse_ranges = cranges.data();
    v.fine_var = V.data();
    v.coarse_var = CV.data();
    v.fine_radius = R.data();
    v.coarse_radius = CR.data();
    return v;
  }
};

// Variances span two orders of magnitude; radii are either generous (the Gaussian term wins)
// or tight (the cap |q| r wins), so both branches of the min are exercised.
RandHead make_head(std::mt19937_64& rng, int k, int kc, int64_t d) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_int_distribution<int> sz(1, 40);
  RandHead h;
  h.k = k;
  h.kc = kc;
  h.d = d;
  h.C = test::randn(rng, (size_t)(k * d), 1.5f);
  h.CC = test::randn(rng, (size_t)(kc * d), 1.5f);
  auto var = [&](size_t n) {
    std::vector<float> v(n);
    for (float& x : v) x = std::exp(1.2f * nd(rng));
    return v;
  };
  h.V = var((size_t)(k * d));
  h.CV = var((size_t)(kc * d));
  auto rad = [&](size_t n) {
    std::vector<float> r(n);
    for (float& x : r) x = rng() % 2 ? 0.05f * std::exp(nd(rng)) : 20.0f * std::exp(nd(rng));
    return r;
  };
  h.R = rad((size_t)k);
  h.CR = rad((size_t)kc);
  h.offsets.assign(1, 0);
  for (int j = 0; j < k; j++) {
    h.sizes.push_back((float)sz(rng));
    h.offsets.push_back(h.offsets.back() + (int32_t)h.sizes.back());
  }
  // Coarse ranges: kc non-empty contiguous groups of the k fine clusters.
  h.cranges.assign(1, 0);
  if (kc > 0) {
    std::vector<int32_t> cuts;
    for (int32_t j = 1; j < k; j++) cuts.push_back(j);
    std::shuffle(cuts.begin(), cuts.end(), rng);
    cuts.resize((size_t)(kc - 1));
    std::sort(cuts.begin(), cuts.end());
    for (int32_t c : cuts) h.cranges.push_back(c);
    h.cranges.push_back(k);
  }
  return h;
}

// Scaled, augmented query rows (what plan() feeds the scorer) from unscaled ones.
std::vector<float> scorer_queries(const std::vector<float>& Qu, int64_t nqv, int64_t d,
                                  Estimator est) {
  std::vector<float> Qs(Qu.size());
  const float scale = 1.0f / std::sqrt((float)d);
  for (size_t i = 0; i < Qu.size(); i++) Qs[i] = Qu[i] * scale;
  std::vector<float> out((size_t)(nqv * estimator_dim(est, d)));
  augment_queries(Qs.data(), nqv, d, est, out.data());
  return out;
}

// Relative tolerance for threshold decisions of the lookup tests (scores within it of a
// threshold are ambiguous): ~10x the logit error bound below for the shapes used there.
constexpr double kRelTol = 1e-4;

// A score exp(l_j - m) / D has relative error at most |dl_j| + max_i |dl_i| (the denominator
// is a positive combination of the same exponentials), where dl is the absolute error of a f32
// logit: each of its (one or two) dot passes accumulates head_dim products in f32, so
// |dl| <= head_dim * 2^-24 * (sum_t |q_t c_t| + sum_t ½ q_t² v_t) (the cap |q| r, when it
// binds, is below the Gaussian term and carries a relative error of the same order).
double logit_error_bound(const std::vector<float>& Qu, int64_t nqv, const float* C, const float* V,
                         int k, int64_t d) {
  const double scale = 1.0 / std::sqrt((double)d), eps = std::ldexp(1.0, -24);
  double b = 0;
  for (int64_t i = 0; i < nqv; i++)
    for (int j = 0; j < k; j++) {
      double s = 0;
      for (int64_t t = 0; t < d; t++) {
        const double q = Qu[(size_t)(i * d + t)] * scale;
        s += std::fabs(q * C[j * d + t]) + (V ? 0.5 * q * q * V[j * d + t] : 0.0);
      }
      b = std::max(b, (double)d * eps * s);
    }
  return b;
}

void expect_scores_near(const std::vector<double>& got, const std::vector<double>& want, double dl,
                        const char* what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t j = 0; j < got.size(); j++) {
    if (std::isnan(want[j])) continue;
    ASSERT_TRUE(std::isfinite(got[j])) << what << " " << j;
    // exp(2 dl) - 1 bounds the relative error; 2x margin for the f64 reference's own rounding
    // and the f32 -> f64 conversions of the logits.
    EXPECT_NEAR(got[j], want[j], 2.0 * std::expm1(2.0 * dl) * want[j]) << what << " cluster " << j;
  }
}

TEST(SqueezeEstimator, ScorerMatchesReference) {
  std::mt19937_64 rng(test::test_seed() + 301);
  int64_t capped = 0, uncapped = 0;
  for (auto [k, kc, d, nqv] : {std::tuple{1, 1, 64, 3},
                               {37, 5, 40, 5},
                               {130, 11, 72, 19},
                               {64, 0, 64, 1},
                               {97, 97, 24, 7}}) {
    SCOPED_TRACE(testing::Message() << "k " << k << " kc " << kc << " d " << d << " nqv " << nqv);
    const RandHead h = make_head(rng, k, kc, d);
    const HeadCentroidsView v = h.view();
    const std::vector<float> Qu = test::randn(rng, (size_t)(nqv * d), 2.0f);
    const double scale = 1.0 / std::sqrt((double)d);
    for (int64_t i = 0; i < nqv; i++)
      for (int j = 0; j < k; j++) {
        double corr = 0, qn = 0;
        for (int64_t t = 0; t < d; t++) {
          const double q = Qu[(size_t)(i * d + t)] * scale;
          corr += 0.5 * q * q * h.V[(size_t)(j * d + t)];
          qn += q * q;
        }
        (corr > std::sqrt(qn) * h.R[(size_t)j] ? capped : uncapped)++;
      }
    // kMeanIso is kMeanVar with every dimension's variance replaced by the cluster's mean
    // variance: its reference is the kMeanVar reference on those isotropic variance rows.
    auto iso_rows = [d](const std::vector<float>& V) {
      std::vector<float> out(V.size());
      for (size_t j = 0; j * (size_t)d < V.size(); j++) {
        double m = 0;
        for (int64_t t = 0; t < d; t++) m += V[j * (size_t)d + (size_t)t];
        for (int64_t t = 0; t < d; t++) out[j * (size_t)d + (size_t)t] = (float)(m / (double)d);
      }
      return out;
    };
    const std::vector<float> Viso = iso_rows(h.V), CViso = iso_rows(h.CV);
    for (Estimator est : {Estimator::kMean, Estimator::kMeanVar, Estimator::kMeanIso}) {
      SCOPED_TRACE(estimator_name(est));
      const bool var = est != Estimator::kMean;
      const bool iso = est == Estimator::kMeanIso;
      const float* V = !var ? nullptr : iso ? Viso.data() : h.V.data();
      const float* CV = !var ? nullptr : iso ? CViso.data() : h.CV.data();
      HeadCentroidsT t;
      t.build(v, est);
      EXPECT_EQ(t.dim, est == Estimator::kMeanVar ? 2 * d : d);
      const std::vector<float> Q = scorer_queries(Qu, nqv, d, est);
      const double dl = std::max(logit_error_bound(Qu, nqv, h.C.data(), V, k, d),
                                 logit_error_bound(Qu, nqv, h.CC.data(), CV, kc, d));
      ClusterScorer sc;
      std::vector<double> got((size_t)k, kNaN);
      sc.score_fine_all(v, t, Q.data(), nqv, got.data());
      expect_scores_near(got,
                         ref::ref_cluster_scores_est(Qu.data(), nqv, scale, h.C.data(), V,
                                                     h.R.data(), h.sizes.data(), k, d),
                         dl, "fine");
      if (kc == 0) continue;
      std::vector<float> csz((size_t)kc, 0.0f);
      for (int c = 0; c < kc; c++)
        for (int32_t j = h.cranges[(size_t)c]; j < h.cranges[(size_t)c + 1]; j++)
          csz[(size_t)c] += h.sizes[(size_t)j];
      std::vector<double> gc((size_t)kc, kNaN);
      sc.score_coarse(v, t, Q.data(), nqv, gc.data());
      expect_scores_near(gc,
                         ref::ref_cluster_scores_est(Qu.data(), nqv, scale, h.CC.data(), CV,
                                                     h.CR.data(), csz.data(), kc, d),
                         dl, "coarse");
      std::vector<uint8_t> survive((size_t)kc);
      for (auto& s : survive) s = rng() % 3 != 0;
      survive[0] = 1;
      std::vector<double> gh((size_t)k, kNaN);
      const int64_t compared = sc.score_fine_hier(v, t, Q.data(), nqv, survive.data(), gh.data());
      const std::vector<double> wh = ref::ref_cluster_scores_hier_est(
          Qu.data(), nqv, scale, h.C.data(), V, h.R.data(), h.sizes.data(), k, h.CC.data(), CV,
          h.CR.data(), h.cranges.data(), kc, survive.data(), d);
      int64_t want_compared = 0;
      for (double s : wh) want_compared += !std::isnan(s);
      EXPECT_EQ(compared, want_compared);
      expect_scores_near(gh, wh, dl, "hier");
    }
  }
  // Not vacuous: both branches of min(Gaussian term, |q| r) occur.
  EXPECT_GT(capped, 50);
  EXPECT_GT(uncapped, 50);
}

// A capture whose clustered keys take m distinct values (m <= head_dim), each repeated:
// pairwise orthogonal directions (so k-means++ seeds one centre per value and Lloyd cannot merge
// them), hence with m fine and m coarse clusters every cluster holds identical keys: variance 0,
// radius 0.
test::SynthContext identical_key_capture(int m, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  test::SynthContext s;
  ContextCapture& c = s.cap;
  c.n_layer = 2;
  c.n_head = 4;
  c.n_head_kv = 2;
  c.head_dim = 24;
  c.n_ctx = 211;
  const int n_obs = 19;
  const int64_t d = c.head_dim;
  c.tokens.assign((size_t)c.n_ctx, 5);
  c.k.resize(2);
  c.v.resize(2);
  c.q_obs.resize(2);
  for (int l = 0; l < 2; l++) {
    c.k[(size_t)l].resize((size_t)(c.n_head_kv * c.n_ctx * d));
    c.v[(size_t)l] = test::randn(rng, (size_t)(c.n_head_kv * c.n_ctx * d));
    c.q_obs[(size_t)l] = test::randn(rng, (size_t)(n_obs * c.n_head * d), 3.0f);
    for (int h = 0; h < c.n_head_kv; h++) {
      std::vector<float> norm((size_t)m);
      for (float& x : norm) x = 0.5f + 4.0f * (float)(rng() % 1000) / 1000.0f;
      for (int64_t i = 0; i < c.n_ctx; i++) {
        float* k = c.k[(size_t)l].data() + ((int64_t)h * c.n_ctx + i) * d;
        const int g = (int)(i % m);
        for (int64_t t = 0; t < d; t++) k[t] = 0.0f;
        // One non-zero coordinate per value: orthogonal unit directions, exact even in the
        // f16 copy k-means++ seeds with (so seeding never picks a value twice).
        k[g] = (g % 2 ? -1.0f : 1.0f) * norm[(size_t)g];
      }
    }
  }
  return s;
}

TEST(SqueezeEstimator, IdenticalKeysReduceToMeanExactly) {
  const int m = 9;
  const test::SynthContext s = identical_key_capture(m, test::test_seed() + 302);
  CompileParams p;
  p.obs_window = 19;
  p.clusters = m;
  p.coarse = m;
  p.n_threads = 2;
  auto r = squeeze_context(s.cap, p);
  ASSERT_TRUE(r.ok()) << r.status().message();
  const SqueezedContext& sc = r.value();
  ASSERT_EQ(sc.n_fine, m);
  ASSERT_EQ(sc.n_coarse, m);
  for (const HeadClusters& hc : sc.heads) {
    // Precondition of the test (orthogonal values): every cluster is one repeated key.
    for (float x : hc.fine_var) ASSERT_EQ(x, 0.0f);
    for (float x : hc.coarse_var) ASSERT_EQ(x, 0.0f);
    for (float x : hc.fine_radius) ASSERT_EQ(x, 0.0f);
    for (float x : hc.coarse_radius) ASSERT_EQ(x, 0.0f);
  }
  // Same logits, same code: both calibration tables are bit-identical.
  EXPECT_EQ(sc.calib.fine_threshold, sc.calib_var.fine_threshold);
  EXPECT_EQ(sc.calib.coarse_threshold, sc.calib_var.coarse_threshold);
  EXPECT_EQ(sc.calib.kept_fine, sc.calib_var.kept_fine);
  EXPECT_EQ(sc.calib.kept_hier, sc.calib_var.kept_hier);

  std::mt19937_64 rng(test::test_seed() + 303);
  const int64_t d = sc.head_dim, nq = 6, nqv = nq * (sc.n_head / sc.n_head_kv);
  for (const HeadClusters& hc : sc.heads) {
    const HeadCentroidsView v = head_view(sc, hc);
    HeadCentroidsT tm, tv;
    tm.build(v, Estimator::kMean);
    tv.build(v, Estimator::kMeanVar);
    const std::vector<float> q = test::randn(rng, (size_t)(nq * sc.n_head * d), 3.0f);
    std::vector<float> Qm((size_t)(nqv * d)), Qv((size_t)(nqv * 2 * d));
    gather_group_queries(q.data(), 0, nq, sc.n_head, sc.n_head_kv, d, 0, Qm.data(),
                         Estimator::kMean);
    gather_group_queries(q.data(), 0, nq, sc.n_head, sc.n_head_kv, d, 0, Qv.data(),
                         Estimator::kMeanVar);
    ClusterScorer a, b;
    std::vector<double> sa((size_t)m, kNaN), sb((size_t)m, kNaN);
    a.score_fine_all(v, tm, Qm.data(), nqv, sa.data());
    b.score_fine_all(v, tv, Qv.data(), nqv, sb.data());
    EXPECT_EQ(sa, sb);
    a.score_coarse(v, tm, Qm.data(), nqv, sa.data());
    b.score_coarse(v, tv, Qv.data(), nqv, sb.data());
    EXPECT_EQ(sa, sb);
    std::vector<uint8_t> survive((size_t)m, 1);
    survive[2] = survive[5] = 0;
    std::fill(sa.begin(), sa.end(), kNaN);
    std::fill(sb.begin(), sb.end(), kNaN);
    EXPECT_EQ(a.score_fine_hier(v, tm, Qm.data(), nqv, survive.data(), sa.data()),
              b.score_fine_hier(v, tv, Qv.data(), nqv, survive.data(), sb.data()));
    for (int j = 0; j < m; j++) {
      if (!std::isnan(sa[(size_t)j]) || !std::isnan(sb[(size_t)j])) {
        EXPECT_EQ(sa[(size_t)j], sb[(size_t)j]) << j;
      }
    }
  }
}

TEST(SqueezeEstimator, CompiledStatisticsMatchReference) {
  test::SynthSpec spec;
  spec.n_layer = 2;
  spec.n_head = 6;
  spec.n_head_kv = 3;
  spec.head_dim = 40;
  spec.n_ctx = 777;
  spec.n_obs = 23;
  const test::SynthContext s = test::make_synth(spec, test::test_seed() + 304);
  CompileParams p;
  p.obs_window = spec.n_obs;
  p.clusters = 0.07;
  p.coarse = 0.02;
  p.n_threads = 2;
  auto r = squeeze_context(s.cap, p);
  ASSERT_TRUE(r.ok()) << r.status().message();
  const SqueezedContext& sc = r.value();
  const int64_t d = sc.head_dim;
  for (int l = 0; l < sc.n_layer; l++)
    for (int h = 0; h < sc.n_head_kv; h++) {
      const HeadClusters& hc = sc.heads[(size_t)(l * sc.n_head_kv + h)];
      const float* X = s.cap.k[(size_t)l].data() + (int64_t)h * sc.n_ctx * d;
      // Coarse clusters as row ranges: their children's rows are contiguous.
      std::vector<int32_t> coff;
      for (int32_t j : hc.coarse_ranges) coff.push_back(hc.fine_offsets[(size_t)j]);
      for (int level = 0; level < 2; level++) {
        const bool fine = level == 0;
        const int k = fine ? sc.n_fine : sc.n_coarse;
        const std::vector<float>& C = fine ? hc.fine_centroids : hc.coarse_centroids;
        const std::vector<float>& V = fine ? hc.fine_var : hc.coarse_var;
        const std::vector<float>& R = fine ? hc.fine_radius : hc.coarse_radius;
        ASSERT_EQ(V.size(), (size_t)(k * d));
        ASSERT_EQ(R.size(), (size_t)k);
        const ref::RefClusterStats st = ref::ref_cluster_stats(
            X, hc.perm.data(), fine ? hc.fine_offsets.data() : coff.data(), k, d, C.data());
        for (int64_t i = 0; i < k * d; i++) {
          // Both are double two-pass sums rounded to f32 once: a few f32 ulps apart at most
          // (the centres differ only by the order of the double sums).
          EXPECT_NEAR(V[(size_t)i], st.var[(size_t)i], 1e-6 * st.var[(size_t)i] + 1e-12)
              << (fine ? "fine" : "coarse") << " l " << l << " h " << h << " i " << i;
          EXPECT_NEAR(C[(size_t)i], st.mean[(size_t)i],
                      1e-6 * std::fabs(st.mean[(size_t)i]) + 1e-7);
        }
        for (int j = 0; j < k; j++) {
          // Rounded up: a true upper bound of the distance to the stored centroid.
          EXPECT_GE((double)R[(size_t)j], st.radius[(size_t)j]);
          EXPECT_LE((double)R[(size_t)j], st.radius[(size_t)j] * (1 + 1e-6));
        }
      }
    }
}

struct VarPack {
  test::SynthSpec spec;
  test::SynthContext synth;
  SqueezedContext sc;
  std::string path;
  std::unique_ptr<Pack> pack;
  ~VarPack() {
    pack.reset();
    if (!path.empty()) std::filesystem::remove(path);
  }
};

std::unique_ptr<VarPack> make_var_pack(int n_head, int n_head_kv, int64_t n_ctx, int n_obs,
                                       double clusters, double coarse, uint64_t salt,
                                       Estimator def = Estimator::kMeanVar) {
  auto f = std::make_unique<VarPack>();
  f->spec.n_layer = 2;
  f->spec.n_head = n_head;
  f->spec.n_head_kv = n_head_kv;
  f->spec.n_ctx = n_ctx;
  f->spec.n_obs = n_obs;
  f->spec.n_topics = 16;
  f->synth = test::make_synth(f->spec, test::test_seed() + salt);
  CompileParams p;
  p.obs_window = n_obs;
  p.clusters = clusters;
  p.coarse = coarse;
  p.n_threads = 2;
  p.estimator = def;
  auto r = squeeze_context(f->synth.cap, p);
  EXPECT_TRUE(r.ok()) << r.status().message();
  f->sc = std::move(r.value());
  f->path = test::temp_pack_path("est");
  const Status s = pack_write(f->sc, f->synth.cap, test::synth_fingerprint(f->spec), f->path);
  EXPECT_TRUE(s.ok()) << s.message();
  auto pk = Pack::open(f->path);
  EXPECT_TRUE(pk.ok()) << pk.status().message();
  f->pack = std::move(pk.value());
  return f;
}

std::set<int32_t> kept_clusters(const Pack& pk, int l, int h, const HeadSelection& s) {
  const int32_t* off = pk.fine_offsets(l, h);
  std::set<int32_t> out;
  for (int j = 0; j < pk.n_fine(); j++)
    for (const RowRange& r : s.ranges)
      if (r.begin <= off[j] && off[j + 1] <= r.end) out.insert(j);
  return out;
}

TEST(SqueezeEstimator, SelectorMatchesReference) {
  std::mt19937_64 rng(test::test_seed() + 305);
  for (auto [nh, nkv, n_ctx] : {std::tuple{9, 3, 1201}, {4, 4, 313}}) {
    auto f = make_var_pack(nh, nkv, n_ctx, 31, 0.06, 0.02, 305 + (uint64_t)n_ctx);
    const Pack& pk = *f->pack;
    Selector sel(pk, 2);
    std::vector<HeadSelection> out;
    int64_t checked = 0, ambiguous = 0;
    for (int l = 0; l < pk.n_layer(); l++)
      for (int64_t n_q : {1, 9})
        for (int rule : {1, 2, 3})  // levels 1; levels 2 calibrated; levels 2 child bound
          for (double p : {0.6, 0.9}) {
            const std::vector<float> q = test::make_user_queries(f->synth, f->spec, l, n_q, rng);
            const int levels = rule == 1 ? 1 : 2;
            const bool child = rule == 3;
            SelectParams sp;
            sp.percentile = p;
            sp.levels = levels;
            sp.coarse_rule = child ? SelectParams::CoarseRule::kChildBound
                                   : SelectParams::CoarseRule::kCalibrated;
            sp.estimator = Estimator::kMeanVar;
            sel.plan(l, q.data(), n_q, sp, out);
            const double tf = pk.threshold_for(p, CentroidLevel::kFine, Estimator::kMeanVar);
            const double tc = pk.threshold_for(auto_coarse_percentile(p), CentroidLevel::kCoarse,
                                               Estimator::kMeanVar);
            for (int h = 0; h < pk.n_head_kv(); h++) {
              const ref::RefSelection r = ref::ref_select_est(
                  q.data(), 0, n_q, pk.n_head(), pk.n_head_kv(), h, pk.head_dim(),
                  pk.fine_centroids(l, h), pk.fine_var(l, h), pk.fine_radius(l, h),
                  pk.fine_sizes(l, h), pk.fine_offsets(l, h), pk.n_fine(),
                  pk.coarse_centroids(l, h), pk.coarse_var(l, h), pk.coarse_radius(l, h),
                  pk.coarse_ranges(l, h), pk.n_coarse(), levels, tf, tc,
                  child ? sp.child_bound_scale : std::numeric_limits<double>::quiet_NaN());
              bool coarse_flip = false;
              if (child)
                for (double s : r.child_scores) coarse_flip |= std::fabs(s - tf) <= kRelTol * tf;
              else
                for (double s : r.coarse_scores) coarse_flip |= std::fabs(s - tc) <= kRelTol * tc;
              if (coarse_flip) {
                ambiguous += pk.n_fine();
                continue;
              }
              // Two vectors (mean, variance) per scored cluster.
              EXPECT_EQ(out[(size_t)h].centroids_compared, r.centroids_compared);
              EXPECT_EQ(r.centroids_compared % 2, 0);
              const std::set<int32_t> ours = kept_clusters(pk, l, h, out[(size_t)h]);
              for (int j = 0; j < pk.n_fine(); j++) {
                const double s = r.fine_scores[(size_t)j];
                if (!std::isnan(s) && std::fabs(s - tf) <= kRelTol * tf) {
                  ambiguous++;
                  continue;
                }
                checked++;
                const bool want = !std::isnan(s) && s >= tf;
                EXPECT_EQ(ours.count(j) == 1, want) << "l " << l << " h " << h << " j " << j;
              }
            }
          }
    EXPECT_GT(checked, 800);
    EXPECT_LT(ambiguous, checked / 50);
  }
}

TEST(SqueezeEstimator, CalibrationKeptMatchesSelectorOnWindow) {
  auto f = make_var_pack(6, 2, 1100, 48, 0.05, 0.015, 306);
  const Pack& pack = *f->pack;
  const CalibTable& T = pack.calibration(Estimator::kMeanVar);
  Selector sel(pack, 2);
  std::vector<HeadSelection> out;
  const double W = (double)pack.n_layer() * pack.n_head_kv() * pack.n_clustered();
  double slack = 0;  // one cluster's share of all keys
  for (const HeadClusters& hc : f->sc.heads)
    for (float s : hc.fine_sizes) slack = std::max(slack, (double)s / W);
  for (double p : {0.5, 0.8, 0.9, 0.95}) {
    const size_t g = (size_t)(std::find_if(T.percentiles.begin(), T.percentiles.end(),
                                           [&](double x) { return std::fabs(x - p) < 1e-12; }) -
                              T.percentiles.begin());
    ASSERT_LT(g, T.percentiles.size());
    for (int levels : {1, 2}) {
      SelectParams sp;
      sp.percentile = p;
      sp.levels = levels;  // kAuto: this pack's default is kMeanVar
      double kept = 0;
      for (int l = 0; l < pack.n_layer(); l++) {
        sel.plan(l, f->synth.cap.q_obs[(size_t)l].data(), pack.n_obs(), sp, out);
        for (const HeadSelection& s : out) kept += (double)s.kept_keys;
      }
      if (levels == 1) {
        EXPECT_EQ(kept / W, T.kept_fine[g]) << p;  // same code, same block: bit-identical
      } else {
        EXPECT_NEAR(kept / W, T.kept_hier[g], 2 * slack) << p;
      }
    }
  }
  // The two tables differ (the estimators rank differently) yet each keeps about its budget.
  EXPECT_NE(pack.calibration(Estimator::kMean).fine_threshold, T.fine_threshold);
  for (Estimator e : {Estimator::kMean, Estimator::kMeanVar})
    EXPECT_NEAR(pack.calibration(e).kept_fine[90], 0.10, slack + 1e-9) << estimator_name(e);
}

TEST(SqueezeEstimator, PackRoundTripAndValidation) {
  for (Estimator def : {Estimator::kMean, Estimator::kMeanVar}) {
    auto f = make_var_pack(6, 2, 300, 20, 0.1, 0.03, 307, def);
    const Pack& pk = *f->pack;
    EXPECT_EQ(pk.estimator(), def);
    EXPECT_EQ(pk.compile_params().estimator, def);
    EXPECT_EQ(pk.resolve_estimator(Estimator::kAuto), def);
    EXPECT_EQ(pk.calibration(Estimator::kMean).fine_threshold, f->sc.calib.fine_threshold);
    EXPECT_EQ(pk.calibration(Estimator::kMeanVar).fine_threshold, f->sc.calib_var.fine_threshold);
    EXPECT_EQ(pk.calibration(Estimator::kMeanVar).kept_hier, f->sc.calib_var.kept_hier);
    EXPECT_EQ(pk.calibration().kept_fine, f->sc.calib_for(def).kept_fine);
    EXPECT_EQ(pk.threshold_for(0.9, CentroidLevel::kFine),
              calib_threshold(f->sc.calib_for(def), 0.9, CentroidLevel::kFine));
    for (int l = 0; l < pk.n_layer(); l++)
      for (int h = 0; h < pk.n_head_kv(); h++) {
        const HeadClusters& hc = f->sc.heads[(size_t)(l * pk.n_head_kv() + h)];
        const int64_t d = pk.head_dim();
        EXPECT_EQ(0, std::memcmp(pk.fine_var(l, h), hc.fine_var.data(), hc.fine_var.size() * 4));
        EXPECT_EQ(0,
                  std::memcmp(pk.coarse_var(l, h), hc.coarse_var.data(), hc.coarse_var.size() * 4));
        EXPECT_EQ(
            0, std::memcmp(pk.fine_radius(l, h), hc.fine_radius.data(), hc.fine_radius.size() * 4));
        EXPECT_EQ(0, std::memcmp(pk.coarse_radius(l, h), hc.coarse_radius.data(),
                                 hc.coarse_radius.size() * 4));
        EXPECT_EQ((int64_t)hc.fine_var.size(), pk.n_fine() * d);
        const HeadCentroidsView v = pk.centroids_view(l, h);
        EXPECT_EQ(v.fine_var, pk.fine_var(l, h));
        EXPECT_EQ(v.coarse_radius, pk.coarse_radius(l, h));
      }
  }

  // Crafted contents with valid checksums are rejected naming the section.
  auto f = make_var_pack(6, 2, 300, 20, 0.1, 0.03, 308);
  auto try_pack = [&](const SqueezedContext& sc, const std::string& needle) {
    const std::string p = test::temp_pack_path("est_bad");
    ASSERT_TRUE(pack_write(sc, f->synth.cap, test::synth_fingerprint(f->spec), p).ok());
    auto r = Pack::open(p);
    ASSERT_FALSE(r.ok()) << needle;
    EXPECT_EQ(r.status().code(), Code::kFormat);
    EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().message();
    std::filesystem::remove(p);
  };
  SqueezedContext sc = f->sc;
  sc.heads[1].fine_var[7] = -1.0f;
  try_pack(sc, "'fine_var'");
  sc = f->sc;
  sc.heads[0].coarse_var[3] = std::numeric_limits<float>::quiet_NaN();
  try_pack(sc, "'coarse_var'");
  sc = f->sc;
  sc.heads[0].fine_radius[2] = std::numeric_limits<float>::infinity();
  try_pack(sc, "'fine_radius'");
  sc = f->sc;
  sc.heads[1].coarse_radius[0] = -0.5f;
  try_pack(sc, "'coarse_radius'");
  sc = f->sc;
  std::swap(sc.calib_var.fine_threshold[3], sc.calib_var.fine_threshold[60]);
  try_pack(sc, "'calib_var'");
  // Missing statistics are a writer error, not a silently short section.
  sc = f->sc;
  sc.heads[0].fine_radius.pop_back();
  EXPECT_EQ(pack_write(sc, f->synth.cap, test::synth_fingerprint(f->spec),
                       test::temp_pack_path("est_bad"))
                .code(),
            Code::kInvalidArgument);

  // kAuto is not a pack default.
  CompileParams p;
  p.obs_window = 20;
  p.estimator = Estimator::kAuto;
  EXPECT_EQ(squeeze_context(f->synth.cap, p).status().code(), Code::kInvalidArgument);

  Estimator e = Estimator::kAuto;
  EXPECT_TRUE(parse_estimator("mean_var", &e));
  EXPECT_EQ(e, Estimator::kMeanVar);
  EXPECT_TRUE(parse_estimator("mean", &e));
  EXPECT_EQ(e, Estimator::kMean);
  EXPECT_FALSE(parse_estimator("max", &e));
}

}  // namespace
}  // namespace sqz
