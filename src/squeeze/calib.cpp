// Calibration of the global score thresholds (docs/squeeze.md, "Calibration").
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>

#include "squeeze/calib_internal.h"
#include "squeeze/cluster_scalars.h"
#include "squeeze/pack.h"

namespace sqz {

std::vector<double> calib_percentile_grid() {
  std::vector<double> g;
  for (int i = 0; i < 100; i++) g.push_back(i / 100.0);
  g.push_back(0.995);
  g.push_back(0.999);
  return g;
}

HeadCentroidsView head_view(const SqueezedContext& sc, const HeadClusters& hc) {
  HeadCentroidsView v;
  v.n_fine = sc.n_fine;
  v.n_coarse = sc.n_coarse;
  v.head_dim = sc.head_dim;
  v.fine_centroids = hc.fine_centroids.data();
  v.fine_sizes = hc.fine_sizes.data();
  v.fine_offsets = hc.fine_offsets.data();
  v.coarse_centroids = hc.coarse_centroids.data();
  v.coarse_ranges = hc.coarse_ranges.data();
  v.fine_var = hc.fine_var.empty() ? nullptr : hc.fine_var.data();
  v.coarse_var = hc.coarse_var.empty() ? nullptr : hc.coarse_var.data();
  v.fine_radius = hc.fine_radius.empty() ? nullptr : hc.fine_radius.data();
  v.coarse_radius = hc.coarse_radius.empty() ? nullptr : hc.coarse_radius.data();
  return v;
}

void gather_group_queries(const float* q, int64_t t0, int64_t t1, int n_head, int n_head_kv,
                          int64_t head_dim, int h, float* out, Estimator est) {
  const int group = n_head / n_head_kv;
  const float scale = 1.0f / std::sqrt((float)head_dim);
  const int64_t dim = estimator_dim(est, head_dim);
  for (int64_t t = t0; t < t1; t++)
    for (int g = 0; g < group; g++) {
      const float* src = q + (t * n_head + (int64_t)h * group + g) * head_dim;
      float* dst = out + ((t - t0) * group + g) * dim;
      for (int64_t x = 0; x < head_dim; x++) dst[x] = src[x] * scale;
      // Same arithmetic as augment_queries on the scaled row.
      if (dim != head_dim)
        for (int64_t x = 0; x < head_dim; x++) dst[head_dim + x] = 0.5f * dst[x] * dst[x];
    }
}

double calib_threshold(const CalibTable& t, double p, CentroidLevel level) {
  const std::vector<double>& thr =
      level == CentroidLevel::kFine ? t.fine_threshold : t.coarse_threshold;
  const size_t G = t.percentiles.size();
  if (G == 0 || thr.size() != G) return 0.0;
  // Percentile 0 (or below, or NaN) keeps everything, also for queries scoring lower than any
  // seen during calibration: scores are >= 0.
  if (!(p > t.percentiles[0])) return 0.0;
  if (p >= t.percentiles[G - 1]) return thr[G - 1];
  size_t i = (size_t)(std::upper_bound(t.percentiles.begin(), t.percentiles.end(), p) -
                      t.percentiles.begin()) -
             1;
  // Grid points are exact (not interpolated), so a selection at a grid percentile reproduces
  // the calibration's measured kept fraction.
  constexpr double kSnap = 1e-9;
  const double a = i == 0 ? 0.0 : thr[i], b = thr[i + 1];
  if (p - t.percentiles[i] < kSnap) return a;
  if (t.percentiles[i + 1] - p < kSnap) return b;
  const double f = (p - t.percentiles[i]) / (t.percentiles[i + 1] - t.percentiles[i]);
  // Scores span orders of magnitude; interpolate in log space when both ends allow it.
  if (a > 0 && b > 0) return std::exp(std::log(a) + f * (std::log(b) - std::log(a)));
  return a + f * (b - a);
}

double calib_percentile_for_budget(const CalibTable& t, double fraction, int levels) {
  const std::vector<double>& kept = levels >= 2 ? t.kept_hier : t.kept_fine;
  double best_p = t.percentiles.empty() ? 0.0 : t.percentiles[0];
  double best = std::numeric_limits<double>::infinity();
  for (size_t g = 0; g < t.percentiles.size() && g < kept.size(); g++) {
    const double e = std::fabs(kept[g] - fraction);
    if (e <= best) {  // <=: the later (higher) percentile wins ties
      best = e;
      best_p = t.percentiles[g];
    }
  }
  return best_p;
}

void calib_thresholds(const SqueezedContext& sc, const std::vector<std::vector<double>>& sf,
                      const std::vector<std::vector<double>>& scs, CalibTable& T) {
  const int64_t jobs = (int64_t)sc.n_layer * sc.n_head_kv;
  const int kf = sc.n_fine, kc = sc.n_coarse;
  const size_t G = T.percentiles.size();
  // Global size-weighted distributions and their quantiles.
  const double W = (double)jobs * (double)sc.n_clustered;
  std::vector<WeightedScore> fi, ci;
  fi.reserve((size_t)(jobs * kf));
  for (int64_t job = 0; job < jobs; job++)
    for (int j = 0; j < kf; j++)
      fi.push_back({sf[(size_t)job][(size_t)j], sc.heads[(size_t)job].fine_sizes[(size_t)j]});
  auto by_score = [](const WeightedScore& a, const WeightedScore& b) { return a.score < b.score; };
  std::stable_sort(fi.begin(), fi.end(), by_score);
  T.fine_threshold.resize(G);
  T.coarse_threshold.assign(G, 0.0);
  T.kept_fine.resize(G);
  for (size_t g = 0; g < G; g++)
    T.fine_threshold[g] = weighted_quantile_sorted(fi, W, T.percentiles[g]);
  if (kc > 0) {
    for (int64_t job = 0; job < jobs; job++) {
      const HeadClusters& hc = sc.heads[(size_t)job];
      for (int c = 0; c < kc; c++)
        ci.push_back({scs[(size_t)job][(size_t)c],
                      coarse_cluster_size(hc.fine_sizes.data(), hc.coarse_ranges.data(), c)});
    }
    std::stable_sort(ci.begin(), ci.end(), by_score);
    for (size_t g = 0; g < G; g++)
      T.coarse_threshold[g] = weighted_quantile_sorted(ci, W, T.percentiles[g]);
  }
  // Kept fraction at each fine threshold: suffix weight of items scoring >= it.
  std::vector<double> suffix(fi.size() + 1, 0.0);
  for (size_t i = fi.size(); i-- > 0;) suffix[i] = suffix[i + 1] + fi[i].weight;
  for (size_t g = 0; g < G; g++) {
    const size_t at = (size_t)(std::lower_bound(fi.begin(), fi.end(),
                                                WeightedScore{T.fine_threshold[g], 0.0}, by_score) -
                               fi.begin());
    T.kept_fine[g] = suffix[at] / W;
  }
  T.kept_hier = T.kept_fine;
}

void calib_kept_hier(const SqueezedContext& sc, const std::vector<std::vector<double>>& kept_job,
                     CalibTable& T) {
  const int64_t jobs = (int64_t)sc.n_layer * sc.n_head_kv;
  const double W = (double)jobs * (double)sc.n_clustered;
  for (size_t g = 0; g < T.percentiles.size(); g++) {
    if (kept_job.empty() || kept_job[0][g] < 0) continue;
    double k = 0.0;
    for (int64_t job = 0; job < jobs; job++) k += kept_job[(size_t)job][g];
    T.kept_hier[g] = k / W;
  }
}

namespace {

// One estimator's table (T) from the window's queries.
void calibrate_estimator(const ContextCapture& cap, const SqueezedContext& sc, Estimator est,
                         CalibTable& T) {
  const int64_t jobs = (int64_t)sc.n_layer * sc.n_head_kv;
  const int group = sc.n_head / sc.n_head_kv;
  const int64_t hd = sc.head_dim;
  const int64_t d = estimator_dim(est, hd);  // floats per scoring vector
  const int64_t nqv = sc.n_obs * group;
  const int kf = sc.n_fine, kc = sc.n_coarse;
  T.percentiles = calib_percentile_grid();
  const size_t G = T.percentiles.size();

  // Pass 1: per-head cluster scores averaged over the window's queries, exactly as
  // Selector::plan computes them for one block (same code, same order).
  std::vector<std::vector<double>> sf((size_t)jobs), scs((size_t)jobs);
  std::vector<HeadCentroidsT> ht((size_t)jobs);
  const int nt = (int)std::min<int64_t>(sc.params.n_threads, jobs);
#pragma omp parallel num_threads(nt)
  {
    ClusterScorer scorer;
    std::vector<float> Q((size_t)(nqv * d));
#pragma omp for schedule(dynamic, 1)
    for (int64_t job = 0; job < jobs; job++) {
      const int l = (int)(job / sc.n_head_kv), h = (int)(job % sc.n_head_kv);
      const HeadCentroidsView v = head_view(sc, sc.heads[(size_t)job]);
      ht[(size_t)job].build(v, est);
      gather_group_queries(cap.q_obs[(size_t)l].data(), 0, sc.n_obs, sc.n_head, sc.n_head_kv, hd, h,
                           Q.data(), est);
      sf[(size_t)job].resize((size_t)kf);
      scorer.score_fine_all(v, ht[(size_t)job], Q.data(), nqv, sf[(size_t)job].data());
      if (kc > 0) {
        scs[(size_t)job].resize((size_t)kc);
        scorer.score_coarse(v, ht[(size_t)job], Q.data(), nqv, scs[(size_t)job].data());
      }
    }
  }

  calib_thresholds(sc, sf, scs, T);

  // Pass 2: kept fraction of the two-level lookup at each grid point (automatic coarse
  // percentile). The logits do not depend on the thresholds, so exponentials and per-coarse
  // partial sums are computed once per head with one max per query vector (a different but
  // equivalent normalisation than plan()'s: results agree up to float rounding).
  if (kc > 0) {
    std::vector<std::vector<double>> kept_job((size_t)jobs, std::vector<double>(G, 0.0));
#pragma omp parallel num_threads(nt)
    {
      std::vector<float> Q((size_t)(nqv * d)), Lf((size_t)(nqv * kf)), Lc((size_t)(nqv * kc));
      std::vector<double> A((size_t)(nqv * kc)), B((size_t)(nqv * kc)), invD((size_t)nqv);
      std::vector<float> acc((size_t)kf), invDf((size_t)nqv), tmp;
      std::vector<uint8_t> survive((size_t)kc);
#pragma omp for schedule(dynamic, 1)
      for (int64_t job = 0; job < jobs; job++) {
        const int l = (int)(job / sc.n_head_kv), h = (int)(job % sc.n_head_kv);
        const HeadClusters& hc = sc.heads[(size_t)job];
        const HeadCentroidsT& t = ht[(size_t)job];
        gather_group_queries(cap.q_obs[(size_t)l].data(), 0, sc.n_obs, sc.n_head, sc.n_head_kv, hd,
                             h, Q.data(), est);
        cluster_logits(t, false, Q.data(), nqv, 0, kf, Lf.data(), kf, tmp);
        cluster_logits(t, true, Q.data(), nqv, 0, kc, Lc.data(), kc, tmp);
        for (int64_t q = 0; q < nqv; q++) {
          float* lf = Lf.data() + q * kf;
          const float* lc = Lc.data() + q * kc;
          float m = -std::numeric_limits<float>::infinity();
          for (int j = 0; j < kf; j++) m = std::max(m, lf[j]);
          for (int c = 0; c < kc; c++) m = std::max(m, lc[c]);
          for (int j = 0; j < kf; j++) lf[j] = std::exp(lf[j] - m);
          for (int c = 0; c < kc; c++) {
            double a = 0.0;
            for (int32_t j = hc.coarse_ranges[(size_t)c]; j < hc.coarse_ranges[(size_t)c + 1]; j++)
              a += (double)hc.fine_sizes[(size_t)j] * lf[j];
            A[(size_t)(q * kc + c)] = a;
            B[(size_t)(q * kc + c)] = (double)t.coarse_sizes[(size_t)c] * std::exp(lc[c] - m);
          }
        }
        for (size_t g = 0; g < G; g++) {
          const double pc = auto_coarse_percentile(T.percentiles[g]);
          if (pc <= 0.0) {  // every coarse cluster survives: the single-level lookup
            kept_job[(size_t)job][g] = -1.0;
            continue;
          }
          const double tc = calib_threshold(T, pc, CentroidLevel::kCoarse);
          const double tf = T.fine_threshold[g];
          for (int c = 0; c < kc; c++) survive[(size_t)c] = scs[(size_t)job][(size_t)c] >= tc;
          for (int64_t q = 0; q < nqv; q++) {
            double D = 0.0;
            for (int c = 0; c < kc; c++)
              D += survive[(size_t)c] ? A[(size_t)(q * kc + c)] : B[(size_t)(q * kc + c)];
            // D > 0 unless every term underflowed (logit gaps > ~87): then score nothing;
            // clamped so a tiny D cannot make inf * 0 = NaN below.
            invDf[(size_t)q] =
                D > 0.0 ? (float)std::min(1.0 / ((double)nqv * D), (double)FLT_MAX) : 0.0f;
          }
          double kept = 0.0;
          for (int c = 0; c < kc; c++) {
            if (!survive[(size_t)c]) continue;
            const int32_t j0 = hc.coarse_ranges[(size_t)c], j1 = hc.coarse_ranges[(size_t)c + 1];
            std::fill(acc.begin() + j0, acc.begin() + j1, 0.0f);
            for (int64_t q = 0; q < nqv; q++) {
              const float* e = Lf.data() + q * kf;
              const float s = invDf[(size_t)q];
              for (int32_t j = j0; j < j1; j++) acc[(size_t)j] += e[j] * s;
            }
            for (int32_t j = j0; j < j1; j++)
              if (acc[(size_t)j] >= tf) kept += hc.fine_sizes[(size_t)j];
          }
          kept_job[(size_t)job][g] = kept;
        }
      }
    }
    calib_kept_hier(sc, kept_job, T);
  }
}

}  // namespace

Status calibrate(const ContextCapture& cap, SqueezedContext& sc, const CompileProgress& progress) {
  // Both estimators are calibrated so a lookup can pick either with a correct
  // threshold and budget -> percentile mapping.
  calibrate_estimator(cap, sc, Estimator::kMean, sc.calib);
  if (progress) progress("calibrate", 1, 3);
  calibrate_estimator(cap, sc, Estimator::kMeanVar, sc.calib_var);
  if (progress) progress("calibrate", 2, 3);
  calibrate_estimator(cap, sc, Estimator::kMeanIso, sc.calib_iso);
  if (progress) progress("calibrate", 3, 3);
  return Status::Ok();
}

}  // namespace sqz
