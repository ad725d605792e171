// Offline half of squeezed attention: validate the capture, cluster every (layer, KV head)'s
// keys (fine K-means, then weighted K-means of the fine centroids into coarse groups), order
// rows by (coarse, fine) cluster, then calibrate (calib.cpp) and write the pack (pack_io.cpp).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <mutex>

#include "core/clock.h"
#include "squeeze/calib_internal.h"
#include "squeeze/kmeans.h"
#include "squeeze/squeeze.h"
#include "squeeze/squeeze_external.h"

namespace sqz {

const char* estimator_name(Estimator e) {
  switch (e) {
    case Estimator::kMean:
      return "mean";
    case Estimator::kMeanVar:
      return "mean_var";
    case Estimator::kMeanIso:
      return "mean_iso";
    default:
      return "auto";
  }
}

bool parse_estimator(const std::string& s, Estimator* out) {
  for (Estimator e : {Estimator::kAuto, Estimator::kMean, Estimator::kMeanVar, Estimator::kMeanIso})
    if (s == estimator_name(e)) {
      *out = e;
      return true;
    }
  return false;
}

bool parse_alloc(const std::string& s, SelectParams::Alloc* out) {
  if (s != "global" && s != "head") return false;
  *out = s == "head" ? SelectParams::Alloc::kPerHead : SelectParams::Alloc::kGlobal;
  return true;
}

bool parse_coarse_rule(const std::string& s, SelectParams::CoarseRule* out) {
  if (s != "child" && s != "calibrated") return false;
  *out = s == "calibrated" ? SelectParams::CoarseRule::kCalibrated
                           : SelectParams::CoarseRule::kChildBound;
  return true;
}

const char* coarse_rule_name(SelectParams::CoarseRule r) {
  return r == SelectParams::CoarseRule::kCalibrated ? "calibrated" : "child";
}

namespace {

// "< 1: fraction of n; >= 1: absolute count", clamped to [1, n].
int resolve_count(double x, int64_t n) {
  const double c = x < 1.0 ? std::round(x * (double)n) : std::round(x);
  return (int)std::clamp<double>(c, 1.0, (double)n);
}

// check_kv = false: the K/V arrays may be empty (they live elsewhere, e.g. on a GPU).
Status validate(const ContextCapture& cap, const CompileParams& p, bool check_kv = true) {
  if (cap.n_layer <= 0 || cap.n_head <= 0 || cap.n_head_kv <= 0 || cap.head_dim <= 0)
    return Error(Code::kInvalidArgument,
                 "capture: bad shape n_layer={} n_head={} n_head_kv={} head_dim={}", cap.n_layer,
                 cap.n_head, cap.n_head_kv, cap.head_dim);
  if (cap.n_head % cap.n_head_kv != 0)
    return Error(Code::kInvalidArgument, "capture: n_head {} is not a multiple of n_head_kv {}",
                 cap.n_head, cap.n_head_kv);
  if (cap.n_ctx <= 0 || cap.n_ctx > INT32_MAX)
    return Error(Code::kInvalidArgument, "capture: n_ctx {} out of range", cap.n_ctx);
  if ((int64_t)cap.tokens.size() != cap.n_ctx)
    return Error(Code::kInvalidArgument, "capture: {} tokens for n_ctx {}", cap.tokens.size(),
                 cap.n_ctx);
  if (p.obs_window < 1 || p.obs_window >= cap.n_ctx)
    return Error(Code::kInvalidArgument,
                 "obs_window {} must be in [1, n_ctx = {}): its queries calibrate the threshold "
                 "and at least one key must be clustered",
                 p.obs_window, cap.n_ctx);
  if (!(p.clusters > 0) || !(p.coarse >= 0) || !std::isfinite(p.clusters) ||
      !std::isfinite(p.coarse))
    return Error(Code::kInvalidArgument, "clusters {} must be > 0 and coarse {} >= 0", p.clusters,
                 p.coarse);
  if (p.kv_type != DType::kF16 && p.kv_type != DType::kF32)
    return Error(Code::kInvalidArgument, "kv_type must be f16 or f32");
  if (p.estimator != Estimator::kMean && p.estimator != Estimator::kMeanVar &&
      p.estimator != Estimator::kMeanIso)
    return Error(Code::kInvalidArgument,
                 "estimator must be mean, mean_var or mean_iso (the pack's default)");
  if (p.max_iters < 1 || !(p.tol >= 0) || p.n_threads < 1)
    return Error(Code::kInvalidArgument, "max_iters {} / tol {} / n_threads {} out of range",
                 p.max_iters, p.tol, p.n_threads);
  const size_t L = (size_t)cap.n_layer;
  if ((check_kv && (cap.k.size() != L || cap.v.size() != L)) || cap.q_obs.size() != L)
    return Error(Code::kInvalidArgument, "capture: k/v/q_obs must have n_layer = {} entries", L);
  const size_t kv_n = (size_t)cap.n_head_kv * (size_t)cap.n_ctx * (size_t)cap.head_dim;
  const size_t q_n = (size_t)p.obs_window * (size_t)cap.n_head * (size_t)cap.head_dim;
  // f16 storage saturates beyond 65504; a larger K/V element would silently become inf.
  const float lim = p.kv_type == DType::kF16 ? 65504.0f : std::numeric_limits<float>::max();
  for (size_t l = 0; l < L; l++) {
    if (cap.q_obs[l].size() != q_n)
      return Error(Code::kInvalidArgument,
                   "capture: layer {} q_obs has {} floats, expected [obs_window, n_head, "
                   "head_dim] = {}",
                   l, cap.q_obs[l].size(), q_n);
    for (float x : cap.q_obs[l])
      if (!std::isfinite(x))
        return Error(Code::kInvalidArgument, "capture: layer {} q_obs has a non-finite value", l);
    if (!check_kv) continue;
    if (cap.k[l].size() != kv_n || cap.v[l].size() != kv_n)
      return Error(Code::kInvalidArgument,
                   "capture: layer {} k/v have {}/{} floats, expected [n_head_kv, n_ctx, "
                   "head_dim] = {}",
                   l, cap.k[l].size(), cap.v[l].size(), kv_n);
    for (const auto* arr : {&cap.k[l], &cap.v[l]})
      for (float x : *arr)
        if (!(std::fabs(x) <= lim))
          return Error(Code::kInvalidArgument,
                       "capture: layer {} {} has a non-finite or out-of-range value {}{}", l,
                       arr == &cap.k[l] ? "K" : "V", x,
                       p.kv_type == DType::kF16 ? " (f16 storage; use kv_type f32)" : "");
  }
  return Status::Ok();
}

struct ClusterScratch {
  std::vector<float> X;     // [n_clustered, head_dim] normalised keys
  std::vector<double> acc;  // [n_fine, head_dim] raw-key sums
};

// Per-dimension population variance of raw key rows [r0, r1) (of perm order) around `mean`
// ([d], double): two-pass (sum of squared deviations), so identical keys give exactly 0.
void rows_variance(const float* raw, const int32_t* perm, int32_t r0, int32_t r1, int64_t d,
                   const double* mean, std::vector<double>& tmp, float* out) {
  tmp.assign((size_t)d, 0.0);
  for (int32_t r = r0; r < r1; r++) {
    const float* x = raw + (int64_t)perm[r] * d;
    for (int64_t t = 0; t < d; t++) {
      const double e = (double)x[t] - mean[t];
      tmp[(size_t)t] += e * e;
    }
  }
  const double n = (double)(r1 - r0);
  for (int64_t t = 0; t < d; t++) out[t] = (float)(tmp[(size_t)t] / n);
}

// max over rows [r0, r1) of |x - c| for the stored f32 centroid c ([d]), rounded up to a float
// so that |q| r stays an upper bound of q·(x - c) (the kMeanVar cap).
float rows_radius(const float* raw, const int32_t* perm, int32_t r0, int32_t r1, int64_t d,
                  const float* c) {
  double m = 0.0;
  for (int32_t r = r0; r < r1; r++) {
    const float* x = raw + (int64_t)perm[r] * d;
    double s = 0.0;
    for (int64_t t = 0; t < d; t++) {
      const double e = (double)x[t] - (double)c[t];
      s += e * e;
    }
    m = std::max(m, s);
  }
  const double r = std::sqrt(m);
  float f = (float)r;
  if ((double)f < r) f = std::nextafter(f, std::numeric_limits<float>::infinity());
  return f;
}

}  // namespace

void head_layout(int64_t n, int k_f, int k_c, const std::vector<int32_t>& fine_assign,
                 const std::vector<int32_t>& coarse_of, HeadClusters& out) {
  std::vector<int64_t> cnt((size_t)k_f, 0);
  for (int32_t a : fine_assign) cnt[(size_t)a]++;
  // New fine order: by coarse cluster, then old index, so each coarse cluster's children (and
  // hence its keys) are contiguous.
  std::vector<int32_t> order((size_t)k_f), new_of((size_t)k_f);
  for (int j = 0; j < k_f; j++) order[(size_t)j] = j;
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return coarse_of[(size_t)a] < coarse_of[(size_t)b];
  });
  for (int j = 0; j < k_f; j++) new_of[(size_t)order[(size_t)j]] = j;

  out.fine_offsets.assign((size_t)k_f + 1, 0);
  out.fine_sizes.resize((size_t)k_f);
  for (int j = 0; j < k_f; j++) {
    const int64_t c = cnt[(size_t)order[(size_t)j]];
    out.fine_sizes[(size_t)j] = (float)c;
    out.fine_offsets[(size_t)j + 1] = out.fine_offsets[(size_t)j] + (int32_t)c;
  }
  // Rows: counting sort by new cluster id, stable in original position.
  out.perm.assign((size_t)n, 0);
  std::vector<int32_t> fill(out.fine_offsets.begin(), out.fine_offsets.end() - 1);
  for (int64_t i = 0; i < n; i++)
    out.perm[(size_t)fill[(size_t)new_of[(size_t)fine_assign[(size_t)i]]]++] = (int32_t)i;
  out.coarse_ranges.assign(1, 0);
  if (k_c > 0) {
    out.coarse_ranges.assign((size_t)k_c + 1, 0);
    for (int j = 0; j < k_f; j++)
      out.coarse_ranges[(size_t)coarse_of[(size_t)order[(size_t)j]] + 1]++;
    for (int c = 0; c < k_c; c++) out.coarse_ranges[(size_t)c + 1] += out.coarse_ranges[(size_t)c];
  }
}

namespace {

// Rows, centroids, variances and radii of one head from its cluster assignments (raw: [n, d]
// keys in original order; fine_assign: [n]; coarse_of: [k_f], all zero when k_c == 0).
void assemble_head(const float* raw, int64_t n, int64_t d, int k_f, int k_c,
                   const std::vector<int32_t>& fine_assign, const std::vector<int32_t>& coarse_of,
                   ClusterScratch& s, HeadClusters& out);

// Clusters one (layer, KV head). raw: [n, d] keys in original order.
void cluster_head(const float* raw, int64_t n, int64_t d, int k_f, int k_c, int layer, int head,
                  const CompileParams& p, ClusterScratch& s, HeadClusters& out) {
  KmeansOptions opt;
  opt.max_iters = p.max_iters;
  opt.tol = p.tol;
  s.X.resize((size_t)(n * d));
  if (p.center_keys && n > 0) {
    std::vector<double> mu((size_t)d, 0.0);
    for (int64_t i = 0; i < n; i++)
      for (int64_t c = 0; c < d; c++) mu[(size_t)c] += raw[i * d + c];
    for (int64_t i = 0; i < n; i++)
      for (int64_t c = 0; c < d; c++)
        s.X[(size_t)(i * d + c)] = raw[i * d + c] - (float)(mu[(size_t)c] / (double)n);
    normalize_rows(s.X.data(), n, d, d, s.X.data());
  } else {
    normalize_rows(raw, n, d, d, s.X.data());
  }
  KmeansResult fine = spherical_kmeans(s.X.data(), nullptr, n, d, k_f,
                                       kmeans_job_seed(p.seed, layer, head, 0), opt);
  std::vector<int64_t> cnt((size_t)k_f, 0);
  for (int32_t a : fine.assign) cnt[(size_t)a]++;

  // Coarse level: weighted K-means of the fine directions, weights = cluster sizes.
  std::vector<int32_t> coarse_of((size_t)k_f, 0);
  if (k_c > 0) {
    std::vector<float> w((size_t)k_f);
    for (int j = 0; j < k_f; j++) w[(size_t)j] = (float)cnt[(size_t)j];
    KmeansResult coarse = spherical_kmeans(fine.centroids.data(), w.data(), k_f, d, k_c,
                                           kmeans_job_seed(p.seed, layer, head, 1), opt);
    coarse_of = std::move(coarse.assign);
    out.coarse_iters = coarse.iters;
    out.coarse_objective = coarse.objective.empty() ? 0.0 : coarse.objective.back();
  }
  assemble_head(raw, n, d, k_f, k_c, fine.assign, coarse_of, s, out);
  out.fine_iters = fine.iters;
  out.fine_objective = fine.objective.empty() ? 0.0 : fine.objective.back();
  out.full_rows = fine.full_rows;
}

void assemble_head(const float* raw, int64_t n, int64_t d, int k_f, int k_c,
                   const std::vector<int32_t>& fine_assign, const std::vector<int32_t>& coarse_of,
                   ClusterScratch& s, HeadClusters& out) {
  head_layout(n, k_f, k_c, fine_assign, coarse_of, out);

  // Representative centroids: means of the RAW keys (they score q·c like real keys do).
  s.acc.assign((size_t)(k_f * d), 0.0);
  for (int j = 0; j < k_f; j++) {
    double* a = s.acc.data() + (int64_t)j * d;
    for (int32_t r = out.fine_offsets[(size_t)j]; r < out.fine_offsets[(size_t)j + 1]; r++) {
      const float* x = raw + (int64_t)out.perm[(size_t)r] * d;
      for (int64_t t = 0; t < d; t++) a[t] += x[t];
    }
  }
  out.fine_centroids.resize((size_t)(k_f * d));
  for (int j = 0; j < k_f; j++)
    for (int64_t t = 0; t < d; t++)
      out.fine_centroids[(size_t)(j * d + t)] =
          (float)(s.acc[(size_t)(j * d + t)] / (double)out.fine_sizes[(size_t)j]);
  // Variances around the double means (Estimator::kMeanVar).
  out.fine_var.resize((size_t)(k_f * d));
  std::vector<double> mean((size_t)d), tmp;
  for (int j = 0; j < k_f; j++) {
    for (int64_t t = 0; t < d; t++)
      mean[(size_t)t] = s.acc[(size_t)(j * d + t)] / (double)out.fine_sizes[(size_t)j];
    rows_variance(raw, out.perm.data(), out.fine_offsets[(size_t)j],
                  out.fine_offsets[(size_t)j + 1], d, mean.data(), tmp,
                  out.fine_var.data() + (int64_t)j * d);
  }
  out.fine_radius.resize((size_t)k_f);
  for (int j = 0; j < k_f; j++)
    out.fine_radius[(size_t)j] =
        rows_radius(raw, out.perm.data(), out.fine_offsets[(size_t)j],
                    out.fine_offsets[(size_t)j + 1], d, out.fine_centroids.data() + (int64_t)j * d);

  out.coarse_centroids.clear();
  out.coarse_var.clear();
  out.coarse_radius.clear();
  if (k_c > 0) {
    out.coarse_centroids.assign((size_t)(k_c * d), 0.0f);
    out.coarse_var.assign((size_t)(k_c * d), 0.0f);
    out.coarse_radius.assign((size_t)k_c, 0.0f);
    std::vector<double> a((size_t)d);
    for (int c = 0; c < k_c; c++) {
      std::fill(a.begin(), a.end(), 0.0);
      double size = 0.0;
      for (int32_t j = out.coarse_ranges[(size_t)c]; j < out.coarse_ranges[(size_t)c + 1]; j++) {
        for (int64_t t = 0; t < d; t++) a[(size_t)t] += s.acc[(size_t)(j * d + t)];
        size += out.fine_sizes[(size_t)j];
      }
      for (int64_t t = 0; t < d; t++) {
        a[(size_t)t] /= size;
        out.coarse_centroids[(size_t)(c * d + t)] = (float)a[(size_t)t];
      }
      // A coarse cluster's keys are the contiguous rows of its children.
      rows_variance(raw, out.perm.data(), out.fine_offsets[(size_t)out.coarse_ranges[(size_t)c]],
                    out.fine_offsets[(size_t)out.coarse_ranges[(size_t)c + 1]], d, a.data(), tmp,
                    out.coarse_var.data() + (int64_t)c * d);
      out.coarse_radius[(size_t)c] =
          rows_radius(raw, out.perm.data(), out.fine_offsets[(size_t)out.coarse_ranges[(size_t)c]],
                      out.fine_offsets[(size_t)out.coarse_ranges[(size_t)c + 1]], d,
                      out.coarse_centroids.data() + (int64_t)c * d);
    }
  }
}

}  // namespace

// After the clustering (started at t0): the K-means statistics, the calibration and the
// timings; shared by the CPU K-means and the external clusterer.
static Status finish_squeeze(const ContextCapture& cap, SqueezedContext& sc, double t0,
                             const CompileProgress& progress) {
  const double t1 = now_s();
  CompileStats& st = sc.stats;
  summarize_kmeans(sc, t1 - t0);
  SQZ_RETURN_IF_ERROR(calibrate(cap, sc, progress));
  st.calib_s = now_s() - t1;
  st.total_s = now_s() - t0;
  return Status::Ok();
}

// Shapes and counts of a SqueezedContext for a validated capture (heads sized, not filled).
static SqueezedContext context_shape(const ContextCapture& cap, const CompileParams& p) {
  SqueezedContext sc;
  sc.n_layer = cap.n_layer;
  sc.n_head = cap.n_head;
  sc.n_head_kv = cap.n_head_kv;
  sc.head_dim = cap.head_dim;
  sc.n_ctx = cap.n_ctx;
  sc.n_obs = p.obs_window;
  sc.n_clustered = cap.n_ctx - p.obs_window;
  sc.n_fine = resolve_count(p.clusters, sc.n_clustered);
  sc.n_coarse = p.coarse > 0 ? std::min(sc.n_fine, resolve_count(p.coarse, sc.n_clustered)) : 0;
  sc.params = p;
  sc.heads.resize((size_t)cap.n_layer * (size_t)cap.n_head_kv);
  return sc;
}

Result<SqueezedContext> squeeze_context(const ContextCapture& cap, const CompileParams& p,
                                        const CompileProgress& progress) {
  const double t0 = now_s();
  SQZ_RETURN_IF_ERROR(validate(cap, p));
  SqueezedContext sc = context_shape(cap, p);
  const int64_t jobs = (int64_t)cap.n_layer * cap.n_head_kv;

  std::mutex mu;
  std::atomic<int64_t> done{0};
  const int nt = (int)std::min<int64_t>(p.n_threads, jobs);
#pragma omp parallel num_threads(nt)
  {
    ClusterScratch s;
#pragma omp for schedule(dynamic, 1)
    for (int64_t job = 0; job < jobs; job++) {
      const int l = (int)(job / cap.n_head_kv), h = (int)(job % cap.n_head_kv);
      const float* raw = cap.k[(size_t)l].data() + (int64_t)h * cap.n_ctx * cap.head_dim;
      cluster_head(raw, sc.n_clustered, cap.head_dim, sc.n_fine, sc.n_coarse, l, h, p, s,
                   sc.heads[(size_t)job]);
      const int64_t d = ++done;
      if (progress) {
        std::lock_guard<std::mutex> lock(mu);
        progress("kmeans", d, jobs);
      }
    }
  }
  SQZ_RETURN_IF_ERROR(finish_squeeze(cap, sc, t0, progress));
  return sc;
}

namespace {

// Spherical objectives of given assignments: fine J = sum_j (n_j - |sum_{i in j} x_i/|x_i||);
// coarse J = sum_C (W_C - |sum_{j in C} n_j f_j|) over the unit fine directions f_j (the CPU
// K-means' definitions at a fixed point).
void external_objectives(const float* raw, int64_t n, int64_t d, int k_f, int k_c,
                         const ExternalAssign& a, HeadClusters& out) {
  std::vector<double> sum((size_t)(k_f * d), 0.0), cnt((size_t)k_f, 0.0);
  for (int64_t i = 0; i < n; i++) {
    const float* x = raw + i * d;
    double nn = 0;
    for (int64_t t = 0; t < d; t++) nn += (double)x[t] * x[t];
    const double inv = nn > 0 ? 1.0 / std::sqrt(nn) : 0.0;
    double* s = sum.data() + (int64_t)a.fine_assign[(size_t)i] * d;
    for (int64_t t = 0; t < d; t++) s[t] += x[t] * inv;
    cnt[(size_t)a.fine_assign[(size_t)i]] += 1;
  }
  double jf = 0;
  std::vector<double> dir((size_t)(k_f * d), 0.0);
  for (int j = 0; j < k_f; j++) {
    double nn = 0;
    for (int64_t t = 0; t < d; t++) nn += sum[(size_t)(j * d + t)] * sum[(size_t)(j * d + t)];
    const double len = std::sqrt(nn);
    jf += cnt[(size_t)j] - len;
    for (int64_t t = 0; t < d; t++)
      dir[(size_t)(j * d + t)] = len > 0 ? sum[(size_t)(j * d + t)] / len : 0.0;
  }
  out.fine_objective = jf;
  out.coarse_objective = 0;
  if (k_c > 0) {
    std::vector<double> cs((size_t)(k_c * d), 0.0), w((size_t)k_c, 0.0);
    for (int j = 0; j < k_f; j++) {
      const int c = a.coarse_of[(size_t)j];
      for (int64_t t = 0; t < d; t++)
        cs[(size_t)(c * d + t)] += cnt[(size_t)j] * dir[(size_t)(j * d + t)];
      w[(size_t)c] += cnt[(size_t)j];
    }
    double jc = 0;
    for (int c = 0; c < k_c; c++) {
      double nn = 0;
      for (int64_t t = 0; t < d; t++) nn += cs[(size_t)(c * d + t)] * cs[(size_t)(c * d + t)];
      jc += w[(size_t)c] - std::sqrt(nn);
    }
    out.coarse_objective = jc;
  }
}

}  // namespace

void fill_empty_clusters(std::vector<int32_t>& assign, int k) {
  std::vector<int64_t> cnt((size_t)k, 0);
  for (int32_t a : assign) cnt[(size_t)a]++;
  for (int j = 0; j < k; j++) {
    if (cnt[(size_t)j] > 0) continue;
    const int big = (int)(std::max_element(cnt.begin(), cnt.end()) - cnt.begin());
    if (cnt[(size_t)big] < 2) return;  // n < k: nothing to move
    for (size_t i = assign.size(); i-- > 0;)
      if (assign[i] == big) {
        assign[i] = j;
        break;
      }
    cnt[(size_t)big]--;
    cnt[(size_t)j] = 1;
  }
}

void summarize_kmeans(SqueezedContext& sc, double kmeans_s) {
  CompileStats& st = sc.stats;
  st.kmeans_s = kmeans_s;
  st.n_fine = sc.n_fine;
  st.n_coarse = sc.n_coarse;
  const int64_t n_clustered = sc.n_clustered;
  const double jobs = (double)std::max<size_t>(sc.heads.size(), 1);
  double fi = 0, ci = 0, fo = 0, co = 0, fr = 0, steps = 0;
  for (const HeadClusters& hc : sc.heads) {
    fi += hc.fine_iters;
    ci += hc.coarse_iters;
    fo += hc.fine_objective;
    co += hc.coarse_objective;
    fr += (double)hc.full_rows;
    steps += (double)hc.fine_iters * (double)n_clustered;
    st.fine_iters_max = std::max(st.fine_iters_max, hc.fine_iters);
  }
  st.fine_iters_mean = fi / jobs;
  st.coarse_iters_mean = ci / jobs;
  st.fine_objective = fo / (jobs * (double)n_clustered);
  st.coarse_objective = co / (jobs * (double)n_clustered);
  // full_rows is counted by the CPU K-means only (external clusterers leave it 0).
  st.full_row_fraction = steps > 0 ? fr / steps : 0.0;
}

Status normalize_external_assign(ExternalAssign& a, int64_t n, int k_f, int k_c) {
  if ((int64_t)a.fine_assign.size() != n || (k_c > 0 && (int64_t)a.coarse_of.size() != k_f))
    return Error(Code::kInternal, "external clustering: assignments of the wrong size");
  for (int32_t x : a.fine_assign)
    if (x < 0 || x >= k_f)
      return Error(Code::kInternal, "external clustering: fine cluster {} out of range", x);
  for (int32_t x : a.coarse_of)
    if (x < 0 || x >= k_c)
      return Error(Code::kInternal, "external clustering: coarse cluster {} out of range", x);
  fill_empty_clusters(a.fine_assign, k_f);
  if (k_c == 0)
    a.coarse_of.assign((size_t)k_f, 0);
  else
    fill_empty_clusters(a.coarse_of, k_c);
  return Status::Ok();
}

Result<SqueezedContext> squeeze_context_shape(const ContextCapture& cap, const CompileParams& p) {
  SQZ_RETURN_IF_ERROR(validate(cap, p, /*check_kv=*/false));
  return context_shape(cap, p);
}

Result<SqueezedContext> squeeze_context_external(const ContextCapture& cap, const CompileParams& p,
                                                 const ExternalClusterFn& cluster,
                                                 const CompileProgress& progress) {
  const double t0 = now_s();
  SQZ_RETURN_IF_ERROR(validate(cap, p));
  SqueezedContext sc = context_shape(cap, p);
  const int64_t jobs = (int64_t)cap.n_layer * cap.n_head_kv;
  std::vector<ExternalAssign> assign((size_t)jobs);
  for (int64_t job = 0; job < jobs; job++) {
    const int l = (int)(job / cap.n_head_kv), h = (int)(job % cap.n_head_kv);
    ExternalAssign& a = assign[(size_t)job];
    SQZ_RETURN_IF_ERROR(cluster(l, h, sc.n_fine, sc.n_coarse, a));
    SQZ_RETURN_IF_ERROR(normalize_external_assign(a, sc.n_clustered, sc.n_fine, sc.n_coarse));
    if (progress) progress("kmeans", job + 1, jobs);
  }
  const int nt = (int)std::max<int64_t>(1, std::min<int64_t>(p.n_threads, jobs));
#pragma omp parallel num_threads(nt)
  {
    ClusterScratch s;
#pragma omp for schedule(dynamic, 1)
    for (int64_t job = 0; job < jobs; job++) {
      const int l = (int)(job / cap.n_head_kv), h = (int)(job % cap.n_head_kv);
      const float* raw = cap.k[(size_t)l].data() + (int64_t)h * cap.n_ctx * cap.head_dim;
      HeadClusters& hc = sc.heads[(size_t)job];
      const ExternalAssign& a = assign[(size_t)job];
      assemble_head(raw, sc.n_clustered, cap.head_dim, sc.n_fine, sc.n_coarse, a.fine_assign,
                    a.coarse_of, s, hc);
      external_objectives(raw, sc.n_clustered, cap.head_dim, sc.n_fine, sc.n_coarse, a, hc);
      hc.fine_iters = a.fine_iters;
      hc.coarse_iters = a.coarse_iters;
    }
  }
  SQZ_RETURN_IF_ERROR(finish_squeeze(cap, sc, t0, progress));
  return sc;
}

Status pack_compile(const ContextCapture& cap, const CompileParams& p, const PackFingerprint& fp,
                    const std::string& out_path, CompileStats* stats,
                    const CompileProgress& progress) {
  const double t0 = now_s();
  SQZ_ASSIGN_OR_RETURN(SqueezedContext sc, squeeze_context(cap, p, progress));
  CompileStats st = sc.stats;
  SQZ_RETURN_IF_ERROR(pack_write(sc, cap, fp, out_path, &st, progress));
  st.total_s = now_s() - t0;
  if (stats) *stats = st;
  return Status::Ok();
}

}  // namespace sqz
