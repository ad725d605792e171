// GPU tests of the squeezed-attention CUDA kernels against the naive double-precision references
// in src/reference/ref_cuda_squeeze.h. Standalone (no GoogleTest on the GPU machine):
//   nvcc ... dev/kernels/test_cuda_squeeze.cu <lib objects> -lcublas -o test_cuda_squeeze
//   ./test_cuda_squeeze [seed]
// Random inputs from the printed seed; outputs poisoned with NaN before every call; every output
// checked for NaN/Inf; tolerances from the dtype's rounding (see check_attention). Exit 1 on any
// failure.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "backend/cuda/squeeze_cuda.h"
#include "reference/ref_cuda_squeeze.h"

namespace rc = sqz::refcuda;

static int g_failures = 0;
static int g_checks = 0;
// Prefill attention kernel of the current pass ("" in the first pass, which uses the library's
// default choice; see main).
static const char* g_variant = "";

#define CUDA_OK(x)                                                                           \
  do {                                                                                       \
    cudaError_t e_ = (x);                                                                    \
    if (e_ != cudaSuccess) {                                                                 \
      std::fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorString(e_), __FILE__, \
                   __LINE__, #x);                                                            \
      std::exit(2);                                                                          \
    }                                                                                        \
  } while (0)
#define SQZ_OK(x)                                                                            \
  do {                                                                                       \
    int s_ = (x);                                                                            \
    if (s_ != SQZ_CUDA_OK) {                                                                 \
      std::fprintf(stderr, "sqz error %s at %s:%d: %s\n", sqz_cuda_status_str(s_), __FILE__, \
                   __LINE__, #x);                                                            \
      std::exit(2);                                                                          \
    }                                                                                        \
  } while (0)

static bool expect(bool ok, const std::string& what) {
  g_checks++;
  if (!ok) {
    g_failures++;
    std::printf("  FAIL: %s\n", what.c_str());
  }
  return ok;
}

template <typename T>
struct Dev {
  T* p = nullptr;
  size_t n = 0;
  Dev() = default;
  explicit Dev(size_t count) : n(count) {
    CUDA_OK(cudaMalloc(&p, std::max<size_t>(1, n) * sizeof(T)));
  }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  Dev(Dev&& o) noexcept : p(o.p), n(o.n) { o.p = nullptr; }
  ~Dev() {
    if (p) cudaFree(p);
  }
  void upload(const std::vector<T>& h) {
    CUDA_OK(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> download(size_t count) const {
    std::vector<T> h(count);
    if (count) CUDA_OK(cudaMemcpy(h.data(), p, count * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
  void poison() { CUDA_OK(cudaMemset(p, 0xff, std::max<size_t>(1, n) * sizeof(T))); }  // f32 NaN
};

template <typename T>
static std::vector<T> d2h(const T* p, size_t n) {
  std::vector<T> h(n);
  if (n) CUDA_OK(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}

// 16-bit storage of a float tensor: values rounded to the dtype, kept as floats for the reference.
struct Half16 {
  std::vector<uint16_t> bits;
  std::vector<float> vals;
};
static Half16 to16(const std::vector<float>& x, sqz_cuda_dtype dt) {
  Half16 h;
  h.bits.resize(x.size());
  h.vals.resize(x.size());
  for (size_t i = 0; i < x.size(); i++) {
    if (dt == SQZ_CUDA_BF16) {
      h.bits[i] = rc::f32_to_bf16(x[i]);
      h.vals[i] = rc::bf16_to_f32(h.bits[i]);
    } else {
      h.bits[i] = rc::f32_to_f16(x[i]);
      h.vals[i] = rc::f16_to_f32(h.bits[i]);
    }
  }
  return h;
}

static std::vector<float> randn(std::mt19937_64& rng, size_t n, float sd) {
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Sorted cut points -> offsets [0, ..., total] with `parts` parts; some parts may be empty when
// allow_empty, else every part gets >= 1 (requires total >= parts).
static std::vector<int32_t> random_offsets(std::mt19937_64& rng, int total, int parts,
                                           bool allow_empty) {
  std::vector<int32_t> off(parts + 1);
  off[0] = 0;
  off[parts] = total;
  if (allow_empty) {
    std::uniform_int_distribution<int> u(0, total);
    std::vector<int> cuts(parts - 1);
    for (auto& c : cuts) c = u(rng);
    std::sort(cuts.begin(), cuts.end());
    for (int i = 1; i < parts; i++) off[i] = cuts[i - 1];
  } else {
    // parts-1 distinct cuts in [1, total-1]
    std::vector<int> all(total - 1);
    for (int i = 0; i < total - 1; i++) all[i] = i + 1;
    std::shuffle(all.begin(), all.end(), rng);
    std::vector<int> cuts(all.begin(), all.begin() + (parts - 1));
    std::sort(cuts.begin(), cuts.end());
    for (int i = 1; i < parts; i++) off[i] = cuts[i - 1];
  }
  return off;
}

// Thresholds strictly inside clear gaps of the sorted per-query-mean scores, near the quantile
// `keep` from the top (fraction of entries kept), so f32-vs-double rounding cannot flip a
// decision: every gap of the window around the target as {relative gap, threshold}, widest first.
static std::vector<std::pair<double, double>> gap_thresholds(std::vector<double> mean_scores,
                                                             double keep) {
  std::vector<std::pair<double, double>> out;
  std::sort(mean_scores.begin(), mean_scores.end(), std::greater<double>());
  const int n = (int)mean_scores.size();
  if (n == 0) return out;
  const int target = std::clamp((int)std::lround(keep * n), 1, n);
  for (int i = std::max(1, target - n / 4 - 1); i <= std::min(n - 1, target + n / 4 + 1); i++) {
    const double hi = mean_scores[i - 1], lo = mean_scores[i];
    if (!(lo > 0.0)) continue;
    out.push_back({(hi - lo) / hi, std::sqrt(hi * lo)});
  }
  std::stable_sort(out.begin(), out.end(),
                   [](const auto& a, const auto& b) { return a.first > b.first; });
  return out;
}

// The widest gap's threshold (gap_thresholds). Returns +huge for keep <= 0 (or no safe gap:
// keep nothing, still a valid case) and -1 for keep >= 1.
static double pick_threshold(std::vector<double> mean_scores, double keep) {
  if (keep <= 0.0) return 1e30;
  if (keep >= 1.0) return -1.0;
  const auto g = gap_thresholds(std::move(mean_scores), keep);
  if (g.empty() || g[0].first < 2e-3) return 1e30;
  return g[0].second;
}

// ---------------------------------------------------------------------------------------------
// Lookup + sparse attention end to end.
struct Case {
  int n_ctx, group, n_q, D;
  bool hier;
  sqz_cuda_dtype dt;
  double keep_coarse, keep_fine;  // target fractions (<= 0: none, >= 1: all)
  int num_sms;                    // partition target override (0 = device)
  // KV heads. Decode plans run fused (one launch, per-head flags) when the grid fits on the
  // device at once, else one launch per stage: 32 exercises many heads waiting on their own
  // flags concurrently, 1100 exceeds any H100/H200's resident CTAs and takes the fallback.
  int n_kv = 2;
  // mean_iso estimator (sqz_cuda_plan_iso) with random per-cluster {vbar, radius}, spread so
  // that both sides of the min(½|q|² vbar, |q| r) cap decide for some (query, cluster) pairs.
  bool iso = false;
  // Child-bound coarse rule (sqz_cuda_plan_ex with sqz_cuda_child), random bound inputs; one
  // threshold (the fine one) decides both levels, at a gap of both the bounds and the fine
  // scores (keep_coarse targets the bounds; keep_fine is unused).
  bool child = false;
};

static void check_attention(const char* tag, int n_q, int n_heads, int D, sqz_cuda_dtype dt,
                            bool prefill, const std::vector<float>& out,
                            const std::vector<float>& lse, const std::vector<double>& ref_out,
                            const std::vector<double>& ref_lse, double vmax) {
  // Error budget: prefill rounds P to the 16-bit type before P.V (relative 2^-9 for bf16, 2^-12
  // for f16, round-to-nearest), so |out - ref| <= u * max|v| plus f32 accumulation; decode keeps
  // P in f32. Logits come from exactly representable 16-bit inputs with f32 sums.
  const double u =
      prefill ? (dt == SQZ_CUDA_BF16 ? std::ldexp(1.0, -9) : std::ldexp(1.0, -12)) : 0.0;
  const double tol_out = 2.0 * u * vmax + 2e-5 * std::max(1.0, vmax);
  const double tol_lse = 1e-3;
  double worst = 0.0, worst_lse = 0.0;
  bool finite = true, lse_inf_ok = true;
  for (int t = 0; t < n_q; t++)
    for (int h = 0; h < n_heads; h++) {
      const size_t r = (size_t)t * n_heads + h;
      if (std::isinf(ref_lse[r])) {
        lse_inf_ok &= std::isinf(lse[r]) && lse[r] < 0;
      } else {
        finite &= std::isfinite(lse[r]);
        worst_lse = std::max(worst_lse, std::fabs(lse[r] - ref_lse[r]));
      }
      for (int d = 0; d < D; d++) {
        const float o = out[r * D + d];
        finite &= std::isfinite(o);
        worst = std::max(worst, std::fabs((double)o - ref_out[r * D + d]));
      }
    }
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s: outputs finite and written", tag);
  expect(finite, buf);
  std::snprintf(buf, sizeof buf, "%s: empty rows give lse=-inf", tag);
  expect(lse_inf_ok, buf);
  std::snprintf(buf, sizeof buf, "%s: max|out-ref| %.3g <= %.3g", tag, worst, tol_out);
  expect(worst <= tol_out, buf);
  std::snprintf(buf, sizeof buf, "%s: max|lse-ref| %.3g <= %.3g", tag, worst_lse, tol_lse);
  expect(worst_lse <= tol_lse, buf);
}

static void run_case(const Case& c, std::mt19937_64& rng) {
  const int n_kv = c.n_kv, n_heads = n_kv * c.group, D = c.D, n_ctx = c.n_ctx;
  const int n_fine = std::max(2, n_ctx / 19);
  const int n_coarse = c.hier ? std::max(2, n_fine / 5) : 0;
  char tag[200];
  std::snprintf(tag, sizeof tag,
                "%sctx=%d kv=%d g=%d nq=%d D=%d %s%s %s %s keep=(%.2f,%.2f) sms=%d", g_variant,
                n_ctx, n_kv, c.group, c.n_q, D, c.hier ? "hier" : "flat", c.child ? "+child" : "",
                c.dt == SQZ_CUDA_BF16 ? "bf16" : "f16", c.iso ? "mean_iso" : "mean", c.keep_coarse,
                c.keep_fine, c.num_sms);
  std::printf("case %s\n", tag);

  // Clustered keys: coarse centres -> fine centres -> keys; cluster-contiguous by construction.
  std::vector<int32_t> fine_off((size_t)n_kv * (n_fine + 1)), coarse_off;
  std::vector<float> K((size_t)n_kv * n_ctx * D), V = randn(rng, (size_t)n_kv * n_ctx * D, 1.0f);
  std::vector<float> fine_c((size_t)n_kv * n_fine * D), coarse_c;
  if (c.hier) {
    coarse_off.resize((size_t)n_kv * (n_coarse + 1));
    coarse_c.resize((size_t)n_kv * n_coarse * D);
  }
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int h = 0; h < n_kv; h++) {
    // Coarse clusters must own rows (the estimator is undefined for an empty coarse cluster), so
    // give every fine cluster of ... some empty fine clusters are fine.
    std::vector<int32_t> fo = random_offsets(rng, n_ctx, n_fine, /*allow_empty=*/true);
    std::vector<int32_t> co;
    if (c.hier) {
      for (int attempt = 0;; attempt++) {
        co = random_offsets(rng, n_fine, n_coarse, false);
        bool ok = true;
        for (int C = 0; C < n_coarse; C++) ok &= fo[co[C + 1]] > fo[co[C]];
        if (ok) break;
        if (attempt > 100) {  // fall back: nonempty fine clusters everywhere
          fo = random_offsets(rng, n_ctx, n_fine, false);
        }
      }
      std::copy(co.begin(), co.end(), coarse_off.begin() + (size_t)h * (n_coarse + 1));
    }
    std::copy(fo.begin(), fo.end(), fine_off.begin() + (size_t)h * (n_fine + 1));
    std::vector<float> a((size_t)std::max(1, n_coarse) * D);
    for (auto& x : a) x = 1.2f * nd(rng);
    for (int j = 0; j < n_fine; j++) {
      int parent = 0;
      if (c.hier)
        while (parent + 1 < n_coarse && co[parent + 1] <= j) parent++;
      std::vector<float> b(D);
      for (int d = 0; d < D; d++)
        b[d] = (c.hier ? a[(size_t)parent * D + d] : 0.0f) + 0.8f * nd(rng);
      std::vector<double> mean(D, 0.0);
      for (int r = fo[j]; r < fo[j + 1]; r++)
        for (int d = 0; d < D; d++) {
          const float k = b[d] + 0.5f * nd(rng);
          K[((size_t)h * n_ctx + r) * D + d] = k;
          mean[d] += k;
        }
      const int cnt = fo[j + 1] - fo[j];
      for (int d = 0; d < D; d++)
        fine_c[((size_t)h * n_fine + j) * D + d] = cnt ? (float)(mean[d] / cnt) : b[d];
    }
    if (c.hier)
      for (int C = 0; C < n_coarse; C++) {
        std::vector<double> mean(D, 0.0);
        const int r0 = fo[co[C]], r1 = fo[co[C + 1]];
        for (int r = r0; r < r1; r++)
          for (int d = 0; d < D; d++) mean[d] += K[((size_t)h * n_ctx + r) * D + d];
        for (int d = 0; d < D; d++)
          coarse_c[((size_t)h * n_coarse + C) * D + d] = (float)(mean[d] / std::max(1, r1 - r0));
      }
  }
  // Queries loosely aligned with one coarse direction so scores are peaked, as in real attention.
  std::vector<float> Q = randn(rng, (size_t)c.n_q * n_heads * D, 0.35f);
  for (int t = 0; t < c.n_q; t++)
    for (int hq = 0; hq < n_heads; hq++) {
      const int h = hq / c.group;
      const float* dir = &K[((size_t)h * n_ctx + (size_t)(rng() % n_ctx)) * D];
      for (int d = 0; d < D; d++) Q[((size_t)t * n_heads + hq) * D + d] += 0.15f * dir[d];
    }
  const Half16 Kh = to16(K, c.dt), Vh = to16(V, c.dt), Qh = to16(Q, c.dt), Fh = to16(fine_c, c.dt);
  const Half16 Ch = to16(coarse_c, c.dt);
  const double scale = 1.0 / std::sqrt((double)D);
  // mean_iso statistics {vbar, radius} per cluster (f32, as uploaded). |scale * q| is ~0.5 here,
  // so vbar in [0, 6) and radius in [0, 3) give corrections of 0 .. ~1.5 nats, either side of
  // the cap deciding.
  std::vector<float> fine_iso, coarse_iso;
  if (c.iso) {
    std::uniform_real_distribution<float> uv(0.0f, 1.0f);
    auto gen = [&](std::vector<float>& v, size_t n) {
      v.resize(2 * n);
      for (size_t i = 0; i < n; i++) {
        const float a = uv(rng);
        v[2 * i] = 6.0f * a * a;
        v[2 * i + 1] = 3.0f * uv(rng);
      }
    };
    gen(fine_iso, (size_t)n_kv * n_fine);
    if (c.hier) gen(coarse_iso, (size_t)n_kv * n_coarse);
  }
  // Child-bound inputs {scaled spread, iso, r, 0}: spread terms of 0 .. ~1.5 nats; the iso and
  // radius terms as mean_iso's (0 for the mean estimator, as the CPU builds them).
  std::vector<float> coarse_child;
  if (c.child && c.hier) {
    std::uniform_real_distribution<float> uv(0.0f, 1.0f);
    coarse_child.resize((size_t)n_kv * n_coarse * 4);
    for (size_t i = 0; i < (size_t)n_kv * n_coarse; i++) {
      const float a = uv(rng);
      coarse_child[4 * i] = 3.0f * uv(rng);
      coarse_child[4 * i + 1] = c.iso ? 6.0f * a * a : 0.0f;
      coarse_child[4 * i + 2] = c.iso ? 3.0f * uv(rng) : 0.0f;
      coarse_child[4 * i + 3] = 0.0f;
    }
  }

  // Reference lookup per KV head, thresholds picked at clear gaps.
  const int qtot = c.n_q * c.group;
  auto head_queries = [&](int h) {
    std::vector<float> qs((size_t)qtot * D);
    for (int t = 0; t < c.n_q; t++)
      for (int g = 0; g < c.group; g++)
        std::copy_n(&Qh.vals[((size_t)t * n_heads + h * c.group + g) * D], D,
                    &qs[((size_t)t * c.group + g) * D]);
    return qs;
  };
  auto ref_head = [&](int h) {
    rc::LookupHead lh;
    lh.D = D;
    lh.n_fine = n_fine;
    lh.n_coarse = n_coarse;
    lh.fine_c = &Fh.vals[(size_t)h * n_fine * D];
    lh.fine_off = &fine_off[(size_t)h * (n_fine + 1)];
    if (c.hier) {
      lh.coarse_c = &Ch.vals[(size_t)h * n_coarse * D];
      lh.coarse_off = &coarse_off[(size_t)h * (n_coarse + 1)];
    }
    if (c.iso) {
      lh.fine_iso = &fine_iso[(size_t)h * n_fine * 2];
      if (c.hier) lh.coarse_iso = &coarse_iso[(size_t)h * n_coarse * 2];
    }
    if (!coarse_child.empty()) lh.coarse_child = &coarse_child[(size_t)h * n_coarse * 4];
    return lh;
  };
  // Mean fine scores (non-empty compared clusters) of every head at fine threshold thr_f.
  auto fine_pool = [&](double thr_f, double thr_c) {
    std::vector<double> pool;
    for (int h = 0; h < n_kv; h++) {
      auto qs = head_queries(h);
      auto r = rc::lookup(ref_head(h), qs.data(), qtot, scale, thr_f, thr_c);
      const int32_t* fo = &fine_off[(size_t)h * (n_fine + 1)];
      for (size_t e = 0; e < r.compared.size(); e++)
        if (fo[r.compared[e] + 1] > fo[r.compared[e]]) pool.push_back(r.fine_score[e] / qtot);
    }
    return pool;
  };
  // Thresholds are per layer (shared by heads): pick from the pooled mean scores of both heads.
  double thr_c = -1.0, thr_f;
  if (c.hier && c.child) {
    // One threshold for both levels: at a gap of the pooled child bounds near keep_coarse whose
    // resulting fine scores also keep clear of it (the bounds do not depend on thresholds).
    std::vector<double> pool;
    for (int h = 0; h < n_kv; h++) {
      auto qs = head_queries(h);
      auto r = rc::lookup(ref_head(h), qs.data(), qtot, scale, 1e30, -1.0);
      for (double s : r.coarse_bound) pool.push_back(s / qtot);
    }
    thr_f = c.keep_coarse >= 1 ? -1.0 : 1e30;  // also when no gap is clear: keep nothing
    if (c.keep_coarse > 0 && c.keep_coarse < 1)
      for (const auto& [gap, t] : gap_thresholds(pool, c.keep_coarse)) {
        if (gap < 2e-3) break;
        bool clear = true;
        for (double f : fine_pool(t, -1.0)) clear &= std::fabs(f - t) > 2e-3 * t;
        if (clear) {
          thr_f = t;
          break;
        }
      }
  } else if (c.hier) {
    std::vector<double> pool;
    for (int h = 0; h < n_kv; h++) {
      auto qs = head_queries(h);
      auto r = rc::lookup(ref_head(h), qs.data(), qtot, scale, 1e30, -1.0);
      for (double s : r.coarse_score) pool.push_back(s / qtot);
    }
    thr_c = pick_threshold(pool, c.keep_coarse);
  }
  if (!(c.hier && c.child)) thr_f = pick_threshold(fine_pool(1e30, thr_c), c.keep_fine);
  std::vector<rc::LookupResult> ref(n_kv);
  for (int h = 0; h < n_kv; h++) {
    auto qs = head_queries(h);
    ref[h] = rc::lookup(ref_head(h), qs.data(), qtot, scale, thr_f, thr_c);
  }

  // ---- GPU ----
  Dev<uint16_t> dK(Kh.bits.size()), dV(Vh.bits.size()), dQ(Qh.bits.size()), dF(Fh.bits.size()),
      dC(std::max<size_t>(1, Ch.bits.size()));
  Dev<int32_t> dFo(fine_off.size()), dCo(std::max<size_t>(1, coarse_off.size()));
  dK.upload(Kh.bits);
  dV.upload(Vh.bits);
  dQ.upload(Qh.bits);
  dF.upload(Fh.bits);
  if (c.hier) {
    dC.upload(Ch.bits);
    dCo.upload(coarse_off);
  }
  dFo.upload(fine_off);
  Dev<float> dFi(std::max<size_t>(1, fine_iso.size())), dCi(std::max<size_t>(1, coarse_iso.size()));
  if (c.iso) dFi.upload(fine_iso);
  if (c.iso && c.hier) dCi.upload(coarse_iso);
  const sqz_cuda_iso iso{dFi.p, c.hier ? dCi.p : nullptr};
  Dev<float> dCb(std::max<size_t>(4, coarse_child.size()));
  if (!coarse_child.empty()) dCb.upload(coarse_child);
  const sqz_cuda_child child{dCb.p};
  sqz_cuda_shape shape{n_heads, n_kv, D, n_ctx, n_fine, n_coarse, c.n_q + 3, c.dt, c.num_sms};
  const size_t wsb = sqz_cuda_workspace_size(&shape);
  expect(wsb > 0, "workspace size");
  Dev<unsigned char> ws(wsb);
  CUDA_OK(cudaMemset(ws.p, 0xab, wsb));  // garbage everywhere except what init clears
  SQZ_OK(sqz_cuda_workspace_init(&shape, ws.p, 0));
  sqz_cuda_context ctx{
      dK.p, dV.p, 0, 0, dF.p, dFo.p, c.hier ? dC.p : nullptr, c.hier ? dCo.p : nullptr};
  sqz_cuda_query q{dQ.p, c.n_q, 0, (float)scale, (float)thr_f, (float)thr_c};
  Dev<float> out((size_t)c.n_q * n_heads * D), lse((size_t)c.n_q * n_heads);
  sqz_cuda_state st{out.p, 0, lse.p, 0};
  // Plan + run twice (counters reset, results reproducible), then a run without a new plan (the
  // decode run waits on the plan's per-head ready words; a finished plan must stay usable).
  // The checked outputs are the last run's.
  for (int rep = 0; rep < 3; rep++) {
    out.poison();
    lse.poison();
    if (rep < 2 && c.child)
      SQZ_OK(sqz_cuda_plan_ex(&shape, &ctx, &q, c.iso ? &iso : nullptr, &child, ws.p, 0));
    else if (rep < 2 && c.iso)
      SQZ_OK(sqz_cuda_plan_iso(&shape, &ctx, &q, &iso, ws.p, 0));
    else if (rep < 2)
      SQZ_OK(sqz_cuda_plan(&shape, &ctx, &q, ws.p, 0));
    SQZ_OK(sqz_cuda_run(&shape, &ctx, &q, ws.p, &st, 0));
    CUDA_OK(cudaDeviceSynchronize());
  }
  sqz_cuda_plan_view pv;
  SQZ_OK(sqz_cuda_get_plan_view(&shape, ws.p, &pv));
  const auto g_ncmp = d2h(pv.n_compared, n_kv);
  const auto g_cmp = d2h(pv.compared, (size_t)n_kv * n_fine);
  const auto g_fs = d2h(pv.fine_scores, (size_t)n_kv * n_fine);
  const auto g_nr = d2h(pv.n_ranges, n_kv);
  const auto g_rg = d2h(pv.ranges, (size_t)n_kv * n_fine * 2);
  const auto g_rows = d2h(pv.n_rows, n_kv);
  std::vector<float> g_cs, g_cb;
  std::vector<uint8_t> g_ck;
  if (c.hier) {
    g_cs = d2h(pv.coarse_scores, (size_t)n_kv * n_coarse);
    g_ck = d2h(pv.coarse_kept, (size_t)n_kv * n_coarse);
    if (c.child) g_cb = d2h(pv.coarse_bounds, (size_t)n_kv * n_coarse);
  }
  char buf[300];
  std::vector<std::vector<std::pair<int, int>>> ranges(n_kv);
  for (int h = 0; h < n_kv; h++) {
    const int32_t* fo = &fine_off[(size_t)h * (n_fine + 1)];
    const auto& r = ref[h];
    if (c.hier) {
      bool same = true;
      double worst = 0.0, worst_b = 0.0;
      for (int C = 0; C < n_coarse; C++) {
        same &= (g_ck[(size_t)h * n_coarse + C] != 0) == (r.coarse_kept[C] != 0);
        const double gs = g_cs[(size_t)h * n_coarse + C], rs = r.coarse_score[C];
        worst = std::max(worst, std::fabs(gs - rs) / (std::fabs(rs) + 1e-6 * qtot));
        if (c.child) {
          const double gb = g_cb[(size_t)h * n_coarse + C], rb = r.coarse_bound[C];
          worst_b = std::max(worst_b, std::fabs(gb - rb) / (std::fabs(rb) + 1e-6 * qtot));
        }
      }
      std::snprintf(buf, sizeof buf, "head %d: coarse kept set equals reference", h);
      expect(same, buf);
      std::snprintf(buf, sizeof buf, "head %d: coarse scores rel err %.3g <= 2e-3", h, worst);
      expect(worst <= 2e-3, buf);
      if (c.child) {
        std::snprintf(buf, sizeof buf, "head %d: child bounds rel err %.3g <= 2e-3", h, worst_b);
        expect(worst_b <= 2e-3, buf);
      }
    }
    // Compared set (as a set) and the scores of non-empty compared clusters.
    std::set<int> gset, rset(r.compared.begin(), r.compared.end());
    const int ncmp = g_ncmp[h];
    std::vector<double> gscore(n_fine, -1.0);
    for (int e = 0; e < ncmp && e < n_fine; e++) {
      const int j = c.hier ? g_cmp[(size_t)h * n_fine + e] : e;
      gset.insert(j);
      gscore[j] = g_fs[(size_t)h * n_fine + e];
    }
    std::snprintf(buf, sizeof buf, "head %d: compared set (%zu) equals reference (%zu)", h,
                  gset.size(), rset.size());
    expect(gset == rset, buf);
    double worst = 0.0;
    for (size_t e = 0; e < r.compared.size(); e++) {
      const int j = r.compared[e];
      if (fo[j + 1] == fo[j] || gscore[j] < 0) continue;
      worst = std::max(worst, std::fabs(gscore[j] - r.fine_score[e]) /
                                  (std::fabs(r.fine_score[e]) + 1e-6 * qtot));
    }
    std::snprintf(buf, sizeof buf, "head %d: fine scores rel err %.3g <= 2e-3", h, worst);
    expect(worst <= 2e-3, buf);
    // Kept ranges equal the reference's merged ranges.
    ranges[h] = rc::kept_ranges(r.kept, fo);
    std::vector<std::pair<int, int>> gr;
    for (int i = 0; i < g_nr[h]; i++)
      gr.push_back({g_rg[((size_t)h * n_fine + i) * 2], g_rg[((size_t)h * n_fine + i) * 2 + 1]});
    int rows = 0;
    for (auto& x : ranges[h]) rows += x.second - x.first;
    std::snprintf(buf, sizeof buf,
                  "head %d: kept ranges (%zu, %d rows) equal reference (%zu, %d rows)", h,
                  gr.size(), g_rows[h], ranges[h].size(), rows);
    expect(gr == ranges[h] && g_rows[h] == rows, buf);
  }
  // Attention over the reference ranges.
  std::vector<double> ref_out((size_t)c.n_q * n_heads * D), ref_lse((size_t)c.n_q * n_heads);
  double vmax = 0.0;
  for (float v : Vh.vals) vmax = std::max(vmax, (double)std::fabs(v));
  for (int h = 0; h < n_kv; h++) {
    std::vector<const float*> kr, vr;
    for (auto& x : ranges[h])
      for (int r = x.first; r < x.second; r++) {
        kr.push_back(&Kh.vals[((size_t)h * n_ctx + r) * D]);
        vr.push_back(&Vh.vals[((size_t)h * n_ctx + r) * D]);
      }
    for (int t = 0; t < c.n_q; t++)
      for (int g = 0; g < c.group; g++) {
        const size_t row = (size_t)t * n_heads + h * c.group + g;
        rc::attend(&Qh.vals[row * D], D, scale, kr, vr, &ref_out[row * D], &ref_lse[row]);
      }
  }
  const auto g_out = out.download(out.n), g_lse = lse.download(lse.n);
  check_attention(tag, c.n_q, n_heads, D, c.dt, qtot > 8, g_out, g_lse, ref_out, ref_lse, vmax);
}

// sqz_cuda_plan_iso / _ex refuse incomplete or misaligned statistics (nothing is launched).
static void iso_argument_checks() {
  std::printf("case plan_iso / plan_ex argument checks\n");
  Dev<uint16_t> buf(1 << 16);
  Dev<int32_t> off(1 << 10);
  Dev<float> st(1 << 10);
  sqz_cuda_shape shape{4, 2, 128, 64, 8, 2, 1, SQZ_CUDA_BF16, 0};
  Dev<unsigned char> ws(sqz_cuda_workspace_size(&shape));
  SQZ_OK(sqz_cuda_workspace_init(&shape, ws.p, 0));
  sqz_cuda_context ctx{buf.p, buf.p, 0, 0, buf.p, off.p, buf.p, off.p};
  sqz_cuda_query q{buf.p, 1, 0, 0.1f, 0.0f, 0.0f};
  const sqz_cuda_iso no_fine{nullptr, st.p}, no_coarse{st.p, nullptr}, odd{st.p + 1, st.p};
  expect(sqz_cuda_plan_iso(&shape, &ctx, &q, &no_fine, ws.p, 0) == SQZ_CUDA_EINVAL,
         "plan_iso: missing fine statistics -> EINVAL");
  expect(sqz_cuda_plan_iso(&shape, &ctx, &q, &no_coarse, ws.p, 0) == SQZ_CUDA_EINVAL,
         "plan_iso: hierarchical without coarse statistics -> EINVAL");
  expect(sqz_cuda_plan_iso(&shape, &ctx, &q, &odd, ws.p, 0) == SQZ_CUDA_EINVAL,
         "plan_iso: statistics not 8-byte aligned -> EINVAL");
  const sqz_cuda_child no_bound{nullptr}, odd_bound{st.p + 2};
  expect(sqz_cuda_plan_ex(&shape, &ctx, &q, nullptr, &no_bound, ws.p, 0) == SQZ_CUDA_EINVAL,
         "plan_ex: child rule without bound inputs -> EINVAL");
  expect(sqz_cuda_plan_ex(&shape, &ctx, &q, nullptr, &odd_bound, ws.p, 0) == SQZ_CUDA_EINVAL,
         "plan_ex: bound inputs not 16-byte aligned -> EINVAL");
  CUDA_OK(cudaDeviceSynchronize());
}

// ---------------------------------------------------------------------------------------------
// Attention over caller ranges (1-row ranges, empty heads, whole context).
static void run_ranges_case(int n_ctx, int group, int n_q, int D, sqz_cuda_dtype dt, int mode,
                            int num_sms, std::mt19937_64& rng) {
  // mode 3: one-row ranges every other row with some empty ones (n_fine ~ n_ctx / 2): decode
  // items span many range batches and, with few SMs, more than one row-map window.
  const int n_kv = 3, n_heads = n_kv * group,
            n_fine = mode == 3 ? n_ctx / 2 + 1 : std::max(4, n_ctx / 7);
  char tag[200];
  std::snprintf(tag, sizeof tag, "%sranges ctx=%d g=%d nq=%d D=%d %s mode=%d sms=%d", g_variant,
                n_ctx, group, n_q, D, dt == SQZ_CUDA_BF16 ? "bf16" : "f16", mode, num_sms);
  std::printf("case %s\n", tag);
  const Half16 Kh = to16(randn(rng, (size_t)n_kv * n_ctx * D, 1.0f), dt);
  const Half16 Vh = to16(randn(rng, (size_t)n_kv * n_ctx * D, 1.0f), dt);
  const Half16 Qh = to16(randn(rng, (size_t)n_q * n_heads * D, 1.0f), dt);
  std::vector<std::vector<std::pair<int, int>>> R(n_kv);
  std::vector<int32_t> flat((size_t)n_kv * n_fine * 2, 0), nr(n_kv, 0);
  for (int h = 0; h < n_kv; h++) {
    if (mode == 1 && h == 1) continue;         // empty head
    if (mode == 2 || (mode == 1 && h == 2)) {  // whole context
      R[h].push_back({0, n_ctx});
    } else if (mode == 3) {
      for (int pos = (int)(rng() % 2); pos < n_ctx && (int)R[h].size() < n_fine; pos += 2)
        R[h].push_back({pos, rng() % 9 == 0 ? pos : pos + 1});
    } else {  // random disjoint ranges, many of one row
      int pos = (int)(rng() % 3);
      while ((int)R[h].size() < n_fine && pos < n_ctx) {
        const int len = (rng() % 3 == 0) ? 1 : 1 + (int)(rng() % 40);
        const int e = std::min(n_ctx, pos + len);
        R[h].push_back({pos, e});
        pos = e + (int)(rng() % 5);  // gaps of 0 keep adjacent ranges separate entries
      }
    }
    nr[h] = (int)R[h].size();
    for (size_t i = 0; i < R[h].size(); i++) {
      flat[((size_t)h * n_fine + i) * 2] = R[h][i].first;
      flat[((size_t)h * n_fine + i) * 2 + 1] = R[h][i].second;
    }
  }
  Dev<uint16_t> dK(Kh.bits.size()), dV(Vh.bits.size()), dQ(Qh.bits.size());
  dK.upload(Kh.bits);
  dV.upload(Vh.bits);
  dQ.upload(Qh.bits);
  Dev<int32_t> dR(flat.size()), dN(nr.size()), dFo((size_t)n_kv * (n_fine + 1));
  dR.upload(flat);
  dN.upload(nr);
  sqz_cuda_shape shape{n_heads, n_kv, D, n_ctx, n_fine, 0, n_q, dt, num_sms};
  Dev<unsigned char> ws(sqz_cuda_workspace_size(&shape));
  SQZ_OK(sqz_cuda_workspace_init(&shape, ws.p, 0));
  sqz_cuda_context ctx{dK.p, dV.p, 0, 0, dK.p, dFo.p, nullptr, nullptr};
  const double scale = 1.0 / std::sqrt((double)D);
  sqz_cuda_query q{dQ.p, n_q, 0, (float)scale, 0.0f, 0.0f};
  Dev<float> out((size_t)n_q * n_heads * D), lse((size_t)n_q * n_heads);
  sqz_cuda_state st{out.p, 0, lse.p, 0};
  out.poison();
  lse.poison();
  SQZ_OK(sqz_cuda_plan_ranges(&shape, dR.p, dN.p, n_q, ws.p, 0));
  SQZ_OK(sqz_cuda_run(&shape, &ctx, &q, ws.p, &st, 0));
  CUDA_OK(cudaDeviceSynchronize());
  std::vector<double> ref_out((size_t)n_q * n_heads * D), ref_lse((size_t)n_q * n_heads);
  double vmax = 0.0;
  for (float v : Vh.vals) vmax = std::max(vmax, (double)std::fabs(v));
  for (int h = 0; h < n_kv; h++) {
    std::vector<const float*> kr, vr;
    for (auto& x : R[h])
      for (int r = x.first; r < x.second; r++) {
        kr.push_back(&Kh.vals[((size_t)h * n_ctx + r) * D]);
        vr.push_back(&Vh.vals[((size_t)h * n_ctx + r) * D]);
      }
    for (int t = 0; t < n_q; t++)
      for (int g = 0; g < group; g++) {
        const size_t row = (size_t)t * n_heads + h * group + g;
        rc::attend(&Qh.vals[row * D], D, scale, kr, vr, &ref_out[row * D], &ref_lse[row]);
      }
  }
  check_attention(tag, n_q, n_heads, D, dt, n_q * group > 8, out.download(out.n),
                  lse.download(lse.n), ref_out, ref_lse, vmax);
}

// ---------------------------------------------------------------------------------------------
// Dense causal attention of user tokens + merge with a context state.
static void run_dense_case(int n_q, int n_keys, int group, int D, sqz_cuda_dtype dt,
                           int64_t key_pos0, int64_t q_pos0, std::mt19937_64& rng) {
  const int n_kv = 2, n_heads = n_kv * group;
  char tag[200];
  std::snprintf(tag, sizeof tag, "dense nq=%d keys=%d g=%d D=%d %s kpos0=%lld qpos0=%lld", n_q,
                n_keys, group, D, dt == SQZ_CUDA_BF16 ? "bf16" : "f16", (long long)key_pos0,
                (long long)q_pos0);
  std::printf("case %s\n", tag);
  // User K/V in [n_keys, n_kv, D] layout (the API default).
  const Half16 Kh = to16(randn(rng, (size_t)n_keys * n_kv * D, 1.0f), dt);
  const Half16 Vh = to16(randn(rng, (size_t)n_keys * n_kv * D, 1.0f), dt);
  const Half16 Qh = to16(randn(rng, (size_t)n_q * n_heads * D, 1.0f), dt);
  Dev<uint16_t> dK(Kh.bits.size()), dV(Vh.bits.size()), dQ(Qh.bits.size());
  dK.upload(Kh.bits);
  dV.upload(Vh.bits);
  dQ.upload(Qh.bits);
  sqz_cuda_shape shape{n_heads, n_kv, D, 0, 1, 0, n_q, dt, 0};
  const double scale = 1.0 / std::sqrt((double)D);
  sqz_cuda_dense_args a{dQ.p, n_q, 0, dK.p, dV.p, n_keys, 0, 0, key_pos0, q_pos0, (float)scale};
  Dev<float> out((size_t)n_q * n_heads * D), lse((size_t)n_q * n_heads);
  sqz_cuda_state st{out.p, 0, lse.p, 0};
  out.poison();
  lse.poison();
  SQZ_OK(sqz_cuda_dense_causal(&shape, &a, &st, 0));
  CUDA_OK(cudaDeviceSynchronize());
  std::vector<double> ref_out((size_t)n_q * n_heads * D), ref_lse((size_t)n_q * n_heads);
  double vmax = 0.0;
  for (float v : Vh.vals) vmax = std::max(vmax, (double)std::fabs(v));
  for (int t = 0; t < n_q; t++)
    for (int hq = 0; hq < n_heads; hq++) {
      const int h = hq / group;
      std::vector<const float*> kr, vr;
      for (int r = 0; r < n_keys; r++)
        if (key_pos0 + r <= q_pos0 + t) {
          kr.push_back(&Kh.vals[((size_t)r * n_kv + h) * D]);
          vr.push_back(&Vh.vals[((size_t)r * n_kv + h) * D]);
        }
      const size_t row = (size_t)t * n_heads + hq;
      rc::attend(&Qh.vals[row * D], D, scale, kr, vr, &ref_out[row * D], &ref_lse[row]);
    }
  const auto g_out = out.download(out.n), g_lse = lse.download(lse.n);
  check_attention(tag, n_q, n_heads, D, dt, true, g_out, g_lse, ref_out, ref_lse, vmax);

  // Merge with a random second state (some rows empty) into bf16 and f32 outputs.
  std::vector<float> ob = randn(rng, out.n, 1.0f), lb = randn(rng, lse.n, 3.0f);
  for (size_t i = 0; i < lb.size(); i += 5) lb[i] = -INFINITY;
  Dev<float> dOb(ob.size()), dLb(lb.size()), mo(out.n), ml(lse.n);
  dOb.upload(ob);
  dLb.upload(lb);
  sqz_cuda_state sb{dOb.p, 0, dLb.p, 0};
  mo.poison();
  ml.poison();
  SQZ_OK(sqz_cuda_merge(n_q, n_heads, D, &st, &sb, mo.p, SQZ_CUDA_F32, ml.p, 0));
  Dev<uint16_t> mo16(out.n);
  SQZ_OK(sqz_cuda_merge(n_q, n_heads, D, &st, &sb, mo16.p, SQZ_CUDA_BF16, nullptr, 0));
  CUDA_OK(cudaDeviceSynchronize());
  const auto gm = mo.download(mo.n), gl = ml.download(ml.n);
  const auto gm16 = mo16.download(mo16.n);
  double worst = 0.0, worst16 = 0.0, worst_l = 0.0;
  bool fin = true, inf_ok = true;
  for (size_t r = 0; r < lse.n; r++) {
    std::vector<double> oa(D), obd(D), o(D);
    for (int d = 0; d < D; d++) {
      oa[d] = g_out[r * D + d];
      obd[d] = ob[r * D + d];
    }
    double l;
    rc::merge_states(oa.data(), g_lse[r], obd.data(), lb[r], D, o.data(), &l);
    if (std::isinf(l))
      inf_ok &= std::isinf(gl[r]) && gl[r] < 0;
    else
      worst_l = std::max(worst_l, std::fabs(gl[r] - l));
    for (int d = 0; d < D; d++) {
      fin &= std::isfinite(gm[r * D + d]);
      worst = std::max(worst, std::fabs(gm[r * D + d] - o[d]));
      worst16 = std::max(
          worst16, std::fabs(rc::bf16_to_f32(gm16[r * D + d]) - o[d]) / (std::fabs(o[d]) + 1e-3));
    }
  }
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s merge: finite, -inf handled", tag);
  expect(fin && inf_ok, buf);
  std::snprintf(buf, sizeof buf,
                "%s merge: f32 max err %.3g <= 1e-5, lse %.3g <= 1e-5, bf16 rel %.3g <= 2^-8", tag,
                worst, worst_l, worst16);
  expect(worst <= 1e-5 && worst_l <= 1e-5 && worst16 <= std::ldexp(1.0, -8), buf);
}

// ---------------------------------------------------------------------------------------------
// K-means: invariants, assignment = argmax cosine, one Lloyd update = normalised member mean.
static void run_kmeans_case(int n, int dim, int k, int true_k, std::mt19937_64& rng) {
  char tag[160];
  std::snprintf(tag, sizeof tag, "kmeans n=%d dim=%d k=%d true_k=%d", n, dim, k, true_k);
  std::printf("case %s\n", tag);
  std::vector<float> centres = randn(rng, (size_t)true_k * dim, 1.0f), X((size_t)n * dim);
  std::vector<int> truth(n);
  for (int i = 0; i < n; i++) {
    truth[i] = (int)(rng() % true_k);
    std::normal_distribution<float> nd(0.0f, 0.15f);
    for (int d = 0; d < dim; d++)
      X[(size_t)i * dim + d] = centres[(size_t)truth[i] * dim + d] + nd(rng);
  }
  Dev<float> dX(X.size());
  dX.upload(X);
  sqz_cuda_kmeans* km = nullptr;
  SQZ_OK(sqz_cuda_kmeans_create(n, dim, k, &km));
  Dev<float> c0((size_t)k * dim), c1((size_t)k * dim), c10((size_t)k * dim);
  Dev<int32_t> a0(n), cnt(k), perm(n), off(k + 1), a10(n);
  const uint64_t seed = rng();
  SQZ_OK(sqz_cuda_kmeans_run(km, dX.p, SQZ_CUDA_F32, n, k, 0, seed, c0.p, a0.p, nullptr, nullptr,
                             nullptr, 0));
  SQZ_OK(sqz_cuda_kmeans_run(km, dX.p, SQZ_CUDA_F32, n, k, 1, seed, c1.p, nullptr, nullptr, nullptr,
                             nullptr, 0));
  const auto t0 = std::chrono::steady_clock::now();
  SQZ_OK(sqz_cuda_kmeans_run(km, dX.p, SQZ_CUDA_F32, n, k, 10, seed, c10.p, a10.p, cnt.p, perm.p,
                             off.p, 0));
  CUDA_OK(cudaDeviceSynchronize());
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::printf("  kmeans 10 iters: %.2f ms\n", ms);
  // Normalised points (what the GPU clusters, up to bf16 rounding).
  std::vector<double> Xn((size_t)n * dim);
  for (int i = 0; i < n; i++) {
    double s = 0;
    for (int d = 0; d < dim; d++) s += (double)X[(size_t)i * dim + d] * X[(size_t)i * dim + d];
    for (int d = 0; d < dim; d++) Xn[(size_t)i * dim + d] = X[(size_t)i * dim + d] / std::sqrt(s);
  }
  const auto hc0 = c0.download(c0.n), hc1 = c1.download(c1.n), hc10 = c10.download(c10.n);
  const auto ha0 = a0.download(n), ha10 = a10.download(n), hcnt = cnt.download(k),
             hperm = perm.download(n), hoff = off.download(k + 1);
  char buf[256];
  // Invariants of the final assignment.
  bool inv = hoff[0] == 0 && hoff[k] == n;
  std::vector<int> seen(n, 0);
  for (int c = 0; c < k && inv; c++) {
    inv &= hoff[c + 1] - hoff[c] == hcnt[c];
    for (int j = hoff[c]; j < hoff[c + 1]; j++) {
      inv &= hperm[j] >= 0 && hperm[j] < n && ha10[hperm[j]] == c;
      if (hperm[j] >= 0 && hperm[j] < n) seen[hperm[j]]++;
    }
  }
  for (int i = 0; i < n; i++) inv &= seen[i] == 1;
  std::snprintf(buf, sizeof buf, "%s: counts/offsets/perm consistent with assignment", tag);
  expect(inv, buf);
  // Assignment is the argmax cosine to the returned centroids, up to bf16 rounding of both sides
  // (each factor relative 2^-9 -> |cos error| <~ 2 * 2^-8 with unit vectors; margin 0.02).
  auto check_argmax = [&](const std::vector<float>& C, const std::vector<int32_t>& A,
                          const char* what) {
    int bad = 0;
    for (int i = 0; i < n; i++) {
      double best = -2, got = -2;
      for (int c = 0; c < k; c++) {
        double s = 0;
        for (int d = 0; d < dim; d++) s += Xn[(size_t)i * dim + d] * C[(size_t)c * dim + d];
        best = std::max(best, s);
        if (c == A[i]) got = s;
      }
      if (got < best - 0.02) bad++;
    }
    std::snprintf(buf, sizeof buf, "%s: %s assignment = argmax cosine (bad %d)", tag, what, bad);
    expect(bad == 0, buf);
  };
  check_argmax(hc0, ha0, "seed");
  check_argmax(hc10, ha10, "final");
  // Centroids are unit vectors; seeds are data points.
  bool unit = true;
  for (int c = 0; c < k; c++) {
    double s = 0;
    for (int d = 0; d < dim; d++)
      s += (double)hc10[(size_t)c * dim + d] * hc10[(size_t)c * dim + d];
    unit &= std::fabs(std::sqrt(s) - 1.0) < 1e-2;
  }
  std::snprintf(buf, sizeof buf, "%s: centroids unit norm", tag);
  expect(unit, buf);
  // One Lloyd step from the (deterministic) seeding: c1 = normalise(sum of members under a0).
  {
    std::vector<double> sum((size_t)k * dim, 0.0);
    std::vector<int> members(k, 0);
    for (int i = 0; i < n; i++) {
      members[ha0[i]]++;
      for (int d = 0; d < dim; d++) sum[(size_t)ha0[i] * dim + d] += Xn[(size_t)i * dim + d];
    }
    double worst = 0.0;
    for (int c = 0; c < k; c++) {
      if (members[c] == 0) continue;  // reseeded: any data point
      double s = 0;
      for (int d = 0; d < dim; d++) s += sum[(size_t)c * dim + d] * sum[(size_t)c * dim + d];
      s = std::sqrt(s);
      for (int d = 0; d < dim; d++)
        worst = std::max(worst, std::fabs(hc1[(size_t)c * dim + d] - sum[(size_t)c * dim + d] / s));
    }
    std::snprintf(buf, sizeof buf, "%s: one update = normalised member mean (max err %.3g <= 8e-3)",
                  tag, worst);
    expect(worst <= 8e-3, buf);
  }
  // Well-separated truth, over-clustered (k >= 2 * true_k so seeding covers every planted
  // cluster with overwhelming probability): each found cluster should be nearly pure.
  if (k >= 2 * true_k) {
    int impure = 0;
    for (int c = 0; c < k; c++) {
      std::vector<int> h(true_k, 0);
      for (int j = hoff[c]; j < hoff[c + 1]; j++) h[truth[hperm[j]]]++;
      const int mx = *std::max_element(h.begin(), h.end());
      impure += (hoff[c + 1] - hoff[c]) - mx;
    }
    std::snprintf(buf, sizeof buf, "%s: purity vs planted clusters (impure points %d <= 2%%)", tag,
                  impure);
    expect(impure <= n / 50, buf);
  }
  sqz_cuda_kmeans_destroy(km);
}

int main(int argc, char** argv) {
  uint64_t seed = 20261127;
  if (argc > 1) seed = std::strtoull(argv[1], nullptr, 10);
  std::printf("test_cuda_squeeze seed=%llu (pass a seed as argv[1] to replay)\n",
              (unsigned long long)seed);
  cudaDeviceProp prop;
  CUDA_OK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  std::mt19937_64 rng(seed);
  const auto BF = SQZ_CUDA_BF16, F16 = SQZ_CUDA_F16;
  // n_ctx, group, n_q, D, hier, dtype, keep_coarse, keep_fine, num_sms[, n_kv, iso]
  const Case cases[] = {
      {113, 1, 1, 128, false, BF, 0, 0.3, 0},
      {113, 4, 1, 128, true, BF, 0.5, 0.5, 0},
      {113, 8, 1, 128, true, BF, 1.0, 1.0, 0},
      {501, 1, 1, 128, true, BF, 0.3, 0.4, 0},
      {501, 4, 2, 128, true, BF, 0.4, 0.3, 0},
      {501, 8, 1, 64, false, F16, 0, 0.2, 0},
      {3771, 1, 1, 128, true, BF, 0.2, 0.3, 0},
      {3771, 4, 1, 128, true, BF, 0.25, 0.25, 3},
      {3771, 8, 1, 128, false, BF, 0, 0.1, 0},
      {3771, 1, 5, 128, true, F16, 0.3, 0.3, 0},
      {3771, 4, 1, 128, true, BF, 0.0, 0.5, 0},  // empty selection (no coarse kept)
      {3771, 1, 1, 128, true, BF, 1.0, 1.0, 1},  // full selection, few SMs -> long chunks
      {113, 1, 77, 128, true, BF, 0.5, 0.5, 0},
      {501, 4, 33, 128, true, BF, 0.3, 0.4, 0},
      {501, 8, 9, 64, true, F16, 0.4, 0.4, 0},
      {3771, 1, 77, 128, true, BF, 0.2, 0.3, 0},
      {3771, 4, 40, 128, false, BF, 0, 0.15, 2},
      {3771, 8, 20, 128, true, BF, 1.0, 1.0, 0},
      {3771, 1, 130, 128, true, BF, 0.0, 0.3, 0},  // empty, prefill
      {3771, 4, 64, 64, true, BF, 0.3, 0.3, 0},
      // Many KV heads: fused decode with 32 / 8 heads, and the two-launch fallback.
      {3771, 1, 1, 128, true, BF, 0.25, 0.3, 0, 32},
      {3771, 4, 1, 128, true, BF, 0.3, 0.2, 0, 8},
      {2000, 8, 1, 64, true, F16, 0.3, 0.3, 0, 8},
      {1500, 1, 1, 128, false, BF, 0, 0.2, 0, 32},
      // 200 KV heads: one split per head, whose 2,052 fine clusters exceed the fused plan's
      // shared-memory compared list (kFusedList), so it is read back from the workspace.
      {39000, 1, 1, 64, true, BF, 0.3, 0.3, 0, 200},
      {113, 1, 1, 128, true, BF, 0.5, 0.5, 0, 1100},
      {113, 2, 1, 64, false, BF, 0, 0.4, 0, 1100},
      // n_fine > kParTailFine (8,192): the fused plan's parallel tail, 32 splits per head, with
      // ranges merged across split boundaries (full selection: one range over every split).
      {160000, 1, 1, 128, true, BF, 0.3, 0.3, 0},
      {160000, 1, 1, 128, true, BF, 1.0, 1.0, 0},
      {160000, 4, 1, 64, false, F16, 0, 0.2, 0, 8},
      {160000, 2, 1, 128, true, BF, 0.25, 0.3, 0, 2, true},
      // mean_iso: decode (fused, QT 1/2/4/8), the two-launch fallback, prefill (tensor cores).
      {113, 1, 1, 128, false, BF, 0, 0.3, 0, 2, true},
      {501, 4, 1, 128, true, BF, 0.4, 0.4, 0, 2, true},
      {501, 8, 1, 64, true, F16, 0.3, 0.3, 0, 2, true},
      {3771, 1, 2, 128, true, BF, 0.25, 0.3, 0, 2, true},
      {3771, 1, 5, 128, true, F16, 0.3, 0.3, 0, 2, true},
      {3771, 4, 1, 128, false, BF, 0, 0.2, 0, 2, true},
      {3771, 1, 1, 128, true, BF, 1.0, 1.0, 1, 2, true},  // full selection
      {3771, 4, 1, 128, true, BF, 0.0, 0.5, 0, 2, true},  // empty selection
      {3771, 4, 1, 128, true, BF, 0.3, 0.2, 0, 8, true},
      {2000, 8, 1, 64, true, F16, 0.3, 0.3, 0, 32, true},
      {113, 1, 1, 128, true, BF, 0.5, 0.5, 0, 1100, true},
      {113, 4, 1, 64, true, F16, 0.5, 0.4, 0, 1100, true},
      {113, 2, 1, 128, false, BF, 0, 0.4, 0, 1100, true},
      {113, 1, 77, 128, true, BF, 0.5, 0.5, 0, 2, true},
      {501, 4, 33, 128, true, BF, 0.3, 0.4, 0, 2, true},
      {501, 8, 9, 64, true, F16, 0.4, 0.4, 0, 2, true},
      {3771, 1, 130, 128, true, BF, 0.2, 0.3, 0, 2, true},
      {3771, 4, 40, 128, false, BF, 0, 0.15, 2, 2, true},
      {3771, 8, 20, 64, true, BF, 0.3, 0.3, 0, 2, true},
      {3771, 4, 64, 128, true, F16, 1.0, 1.0, 0, 2, true},  // full selection, prefill
      // Child-bound coarse rule (sqz_cuda_child), mean and mean_iso: fused decode (QT 1/2/4/8),
      // the two-launch fallback, prefill (tensor cores), empty and full selections, the
      // parallel tail.
      {3771, 1, 1, 128, true, BF, 0.3, 0, 0, 2, false, true},
      {3771, 2, 1, 128, true, BF, 0.3, 0, 0, 8, true, true},
      {2000, 4, 1, 64, true, F16, 0.25, 0, 0, 4, false, true},
      {501, 8, 1, 128, true, BF, 0.4, 0, 0, 2, true, true},
      {3771, 1, 1, 128, true, BF, 0.0, 0, 0, 2, true, true},   // empty selection
      {3771, 1, 1, 128, true, BF, 1.0, 0, 1, 2, false, true},  // full selection
      {113, 1, 1, 128, true, BF, 0.5, 0, 0, 1100, false, true},
      {113, 4, 1, 64, true, F16, 0.5, 0, 0, 1100, true, true},
      {3771, 1, 77, 128, true, BF, 0.3, 0, 0, 2, false, true},
      {3771, 4, 40, 128, true, BF, 0.3, 0, 0, 2, true, true},
      {501, 8, 9, 64, true, F16, 0.4, 0, 0, 2, false, true},
      {160000, 1, 1, 128, true, BF, 0.3, 0, 0, 2, true, true},
  };
  // The first pass runs the mma.sync prefill kernel (the default on devices without sm_90a
  // code, and for head_dim 64), the second the wgmma one where this device has it.
  expect(sqz_cuda_set_prefill_kernel(SQZ_CUDA_PREFILL_MMA) == SQZ_CUDA_OK, "select mma.sync");
  expect(sqz_cuda_prefill_kernel(128) == SQZ_CUDA_PREFILL_MMA, "mma.sync in use");
  for (const Case& c : cases) run_case(c, rng);
  iso_argument_checks();
  for (int mode = 0; mode < 3; mode++) {
    run_ranges_case(501, 4, 1, 128, BF, mode, 0, rng);
    run_ranges_case(3771, 1, 1, 128, F16, mode, 5, rng);
    run_ranges_case(3771, 8, 12, 128, BF, mode, 0, rng);
    run_ranges_case(113, 1, 70, 64, BF, mode, 1, rng);
  }
  run_ranges_case(20000, 1, 1, 128, BF, 3, 1, rng);  // decode: 2 items of ~4.4K rows per head
  run_ranges_case(20000, 8, 1, 64, F16, 3, 0, rng);  // decode, G = 8
  run_ranges_case(20000, 4, 3, 128, BF, 3, 0, rng);  // prefill (row list) over the same
  // Where this device has the sm_90a warpgroup-MMA kernel, the D = 128 prefill cases run again
  // on it, so both variants are checked on a Hopper card; AUTO picks it there.
  const bool wg = sqz_cuda_set_prefill_kernel(SQZ_CUDA_PREFILL_WGMMA) == SQZ_CUDA_OK;
  std::printf("prefill kernels: mma.sync%s\n",
              wg ? ", then wgmma (D = 128)" : " (no sm_90a code for this device)");
  if (wg) {
    g_variant = "[wgmma] ";
    for (const Case& c : cases)
      if (c.n_q * c.group > 8 && c.D == 128) run_case(c, rng);
    run_ranges_case(3771, 8, 12, 128, BF, 0, 0, rng);
    run_ranges_case(3771, 8, 12, 128, BF, 2, 0, rng);
    run_ranges_case(20000, 4, 3, 128, BF, 3, 0, rng);
    g_variant = "";
  }
  expect(sqz_cuda_set_prefill_kernel(SQZ_CUDA_PREFILL_AUTO) == SQZ_CUDA_OK, "select default");
  expect(sqz_cuda_prefill_kernel(128) == (wg ? SQZ_CUDA_PREFILL_WGMMA : SQZ_CUDA_PREFILL_MMA),
         "default kernel for D = 128");
  expect(sqz_cuda_prefill_kernel(64) == SQZ_CUDA_PREFILL_MMA, "default kernel for D = 64");
  expect(sqz_cuda_prefill_kernel(96) == SQZ_CUDA_EINVAL, "prefill kernel of D = 96");
  expect(sqz_cuda_set_prefill_kernel(7) == SQZ_CUDA_EINVAL, "bad prefill kernel id");
  run_dense_case(1, 1, 1, 128, BF, 0, 0, rng);
  run_dense_case(77, 77, 4, 128, BF, 10, 10, rng);
  run_dense_case(200, 260, 1, 128, F16, 0, 60, rng);  // 60 past user tokens
  run_dense_case(130, 130, 8, 64, BF, 20, 0, rng);    // early queries see nothing
  run_kmeans_case(3771, 128, 40, 20, rng);
  run_kmeans_case(501, 64, 120, 10, rng);  // many more clusters than structure: reseeding
  run_kmeans_case(113, 128, 113, 5, rng);  // k == n
  std::printf("\n%d checks, %d failures\n", g_checks, g_failures);
  std::printf(g_failures ? "TESTS FAILED\n" : "ALL TESTS PASSED\n");
  return g_failures ? 1 : 0;
}
