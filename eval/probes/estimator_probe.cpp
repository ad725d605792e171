// Estimator probe behind docs/squeeze.md ("Estimator measurements"): teacher-forced KL(dense ||
// method) and top-1 agreement on the dense answers of six questions about a compiled context
// (the planted-fact pack of tests/test_squeeze_e2e.cpp: perlsyn.pod + perlop.pod, first 16000
// characters, "The secret password for the blue vault is PELICAN-42." planted in the middle).
// Methods: "oracle" (true top-k keys), "cmean"/"cmax" (clusters ranked by their true mean / max
// key weight: what a perfect cluster estimator would select), "emean"/"ebound"/"emix"/"vdiag"/
// "vneox"/"vpair"/"vband"/"viso" (per-head top-k of clusters by estimated scores computed here
// from the pack's keys), and "squeeze" (the product's Selector with the given estimator).
// Not part of the build. From the repository root, after building build/:
//   g++ -O2 -std=c++20 -march=native -fopenmp -Isrc eval/probes/estimator_probe.cpp \
//       build/libsqz_core.a build/libsqz_cuda.a -lfmt -lzstd -lpcre2-8 -lopenblas \
//       -L/usr/local/cuda/lib64 -lcudart -lcublas -o /tmp/estimator_probe   (libsqz_cuda: only
//       when the build has CUDA)
//   python3 eval/probes/planted_context.py > /tmp/ctx.txt
//   build/sqz compile --context /tmp/ctx.txt --out /tmp/ctx.pack -t 2
//   /tmp/estimator_probe /tmp/ctx.pack METHOD BUDGET [EST LEVELS COARSE_FACTOR ALLOC BLOCK
//       COARSE_PERCENTILE [calibrated|child [CHILD_SCALE]]]
//     e.g. /tmp/estimator_probe /tmp/ctx.pack squeeze 0.1 mean_iso 1 2 global 0
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/fp16.h"
#include "engine/squeeze_session.h"
#include "squeeze/baselines.h"
#include "squeeze/score.h"
using namespace sqz;
// Per-head top-k: the best-scoring fine clusters until `afford` keys are covered, as merged
// row ranges.
static void select_top(const HeadCentroidsView& v, std::vector<std::pair<double, int>>& cs,
                       int64_t afford, HeadSelection& hs) {
  std::sort(cs.rbegin(), cs.rend());
  std::vector<uint8_t> mk(v.n_fine, 0);
  int64_t cov = 0;
  for (auto& [sc, j] : cs) {
    if (cov >= afford) break;
    mk[j] = 1;
    cov += v.fine_offsets[j + 1] - v.fine_offsets[j];
  }
  hs = HeadSelection{};
  for (int j = 0; j < v.n_fine; j++)
    if (mk[j]) {
      const int b = v.fine_offsets[j], e = v.fine_offsets[j + 1];
      if (!hs.ranges.empty() && hs.ranges.back().end == b)
        hs.ranges.back().end = e;
      else
        hs.ranges.push_back({b, e});
      hs.kept_keys += e - b;
    }
}

int main(int argc, char** argv) {
  std::string packp = argv[1], which = argv[2];
  double budget = atof(argv[3]);
  EngineParams ep;
  ep.model_path = "/work/main/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  ep.n_threads = 2;
  auto e = Engine::create(ep);
  auto pk = Pack::open(packp);
  if (!e.ok() || !pk.ok()) {
    printf("open failed\n");
    return 1;
  }
  BaselineIndex idx(**pk);
  // Cluster oracle: fine clusters ranked by their true mean per-key weight (criterion "mean")
  // or by their max key weight ("max"), kept until the budget's keys are covered.
  struct ClusterOracle : BudgetedSelector {
    const BaselineIndex& idx;
    OracleTopKSelector orc;
    bool use_max;
    std::vector<double> ks;
    ClusterOracle(const BaselineIndex& i, bool m) : idx(i), orc(i, 2), use_max(m) {}
    void plan(int layer, const float* q, int64_t n_q, std::vector<HeadSelection>& sel) override {
      const Pack& p = idx.pack();
      const int64_t afford = idx.affordable_keys(budget_);
      for (int h = 0; h < p.n_head_kv(); h++) {
        orc.key_scores(layer, h, q, n_q, ks);
        HeadCentroidsView v = p.centroids_view(layer, h);
        std::vector<std::pair<double, int>> cs;
        for (int j = 0; j < v.n_fine; j++) {
          double a = 0, m = 0;
          for (int r = v.fine_offsets[j]; r < v.fine_offsets[j + 1]; r++) {
            a += ks[r];
            m = std::max(m, ks[r]);
          }
          int n = v.fine_offsets[j + 1] - v.fine_offsets[j];
          cs.push_back({use_max ? m : (n ? a / n : 0), j});
        }
        select_top(v, cs, afford, sel[h]);
      }
    }
  };
  // Estimated-score cluster selectors with a per-head top-k: "emean" (exp(q.c)), "ebound"
  // (Quest-style per-dimension min/max bound of each cluster), "emix" (mean logit + half the
  // bound's excess, a cheap compromise), all normalised as softmaxes over clusters.
  struct EstSel : BudgetedSelector {
    const BaselineIndex& idx;
    int kind;
    const Pack& p;
    std::vector<std::vector<float>> mn, mx, vr;  // [layer*H] [n_fine*d]
    EstSel(const BaselineIndex& i, int k) : idx(i), kind(k), p(i.pack()) {
      mn.resize(p.n_layer() * p.n_head_kv());
      mx.resize(mn.size());
      vr.resize(mn.size());
    }
    void plan(int layer, const float* q, int64_t n_q, std::vector<HeadSelection>& sel) override {
      const int64_t afford = idx.affordable_keys(budget_);
      const int d = p.head_dim(), H = p.n_head_kv(), G = p.n_head() / H;
      const double scale = 1.0 / std::sqrt((double)d);
      for (int h = 0; h < H; h++) {
        HeadCentroidsView v = p.centroids_view(layer, h);
        auto& a = mn[layer * H + h];
        auto& b = mx[layer * H + h];
        auto& V = vr[layer * H + h];
        if (V.empty()) {
          V.assign((size_t)v.n_fine * d, 0.f);
          KvHeadView kv = p.clustered_kv(layer, h);
          for (int j = 0; j < v.n_fine; j++) {
            int n = v.fine_offsets[j + 1] - v.fine_offsets[j];
            for (int r = v.fine_offsets[j]; r < v.fine_offsets[j + 1]; r++)
              for (int c = 0; c < d; c++) {
                double x = fp16_to_fp32(((const f16_t*)kv.k)[r * kv.row_stride + c]) -
                           v.fine_centroids[j * d + c];
                V[j * d + c] += x * x / n;
              }
            // grouping: kind 7 pairs (2i,2i+1), 8 bands of 8 dims, 9 isotropic, 10 NeoX pairs (i,
            // i+d/2)
            std::vector<float> g(V.begin() + j * d, V.begin() + (j + 1) * d);
            for (int c = 0; c < d; c++) {
              double m = 0;
              if (kind == 7)
                m = (g[c & ~1] + g[c | 1]) / 2;
              else if (kind == 8) {
                for (int t = (c / 8) * 8; t < (c / 8) * 8 + 8; t++) m += g[t] / 8;
              } else if (kind == 9) {
                for (int t = 0; t < d; t++) m += g[t] / d;
              } else if (kind == 10)
                m = (g[c % (d / 2)] + g[c % (d / 2) + d / 2]) / 2;
              else
                m = g[c];
              V[j * d + c] = m;
            }
          }
        }
        if (a.empty()) {
          a.assign((size_t)v.n_fine * d, 1e30f);
          b.assign((size_t)v.n_fine * d, -1e30f);
          KvHeadView kv = p.clustered_kv(layer, h);
          for (int j = 0; j < v.n_fine; j++)
            for (int r = v.fine_offsets[j]; r < v.fine_offsets[j + 1]; r++)
              for (int c = 0; c < d; c++) {
                float x = kv.type == DType::kF32
                              ? ((const float*)kv.k)[r * kv.row_stride + c]
                              : fp16_to_fp32(((const f16_t*)kv.k)[r * kv.row_stride + c]);
                a[j * d + c] = std::min(a[j * d + c], x);
                b[j * d + c] = std::max(b[j * d + c], x);
              }
        }
        std::vector<double> acc(v.n_fine, 0.0), l(v.n_fine);
        for (int64_t t = 0; t < n_q; t++)
          for (int g = 0; g < G; g++) {
            const float* qr = q + (t * p.n_head() + h * G + g) * d;
            double m = -1e300;
            for (int j = 0; j < v.n_fine; j++) {
              double dm = 0, db = 0;
              double dv = 0;
              for (int c = 0; c < d; c++) {
                dm += qr[c] * v.fine_centroids[j * d + c];
                db += std::max(qr[c] * a[j * d + c], qr[c] * b[j * d + c]);
                dv += qr[c] * qr[c] * V[j * d + c];
              }
              if (kind >= 6)
                l[j] = scale * dm + 0.5 * scale * scale * dv;
              else
                l[j] = scale * ((kind == 0 || kind == 3 || kind == 5) ? dm
                                : kind == 1                           ? db
                                                                      : dm + 0.5 * (db - dm));
              m = std::max(m, l[j]);
            }
            double D = 0;
            for (int j = 0; j < v.n_fine; j++) D += v.fine_sizes[j] * std::exp(l[j] - m);
            if (kind >= 3) {  // exact terms of the always-read keys: sinks (and the window)
              auto exact = [&](KvHeadView kv, int64_t r) {
                double dot = 0;
                for (int c = 0; c < d; c++)
                  dot += qr[c] *
                         (double)(kv.type == DType::kF32
                                      ? ((const float*)kv.k)[r * kv.row_stride + c]
                                      : fp16_to_fp32(((const f16_t*)kv.k)[r * kv.row_stride + c]));
                return std::exp(scale * dot - m);
              };
              const int32_t* perm = p.perm(layer, h);
              KvHeadView kc = p.clustered_kv(layer, h);
              for (int64_t r = 0; r < p.n_clustered(); r++)
                if (perm[r] < 4) D += exact(kc, r);
              if (kind == 5) {
                KvHeadView ko = p.obs_kv(layer, h);
                for (int64_t r = 0; r < p.n_obs(); r++) D += exact(ko, r);
              }
            }
            for (int j = 0; j < v.n_fine; j++) acc[j] += std::exp(l[j] - m) / D;
          }
        std::vector<std::pair<double, int>> cs;
        for (int j = 0; j < v.n_fine; j++) cs.push_back({acc[j], j});
        select_top(v, cs, afford, sel[h]);
      }
    }
  };
  std::unique_ptr<BudgetedSelector> s;
  if (which == "oracle")
    s = std::make_unique<OracleTopKSelector>(idx, 2);
  else if (which == "cmean")
    s = std::make_unique<ClusterOracle>(idx, false);
  else if (which == "cmax")
    s = std::make_unique<ClusterOracle>(idx, true);
  else if (which == "emean")
    s = std::make_unique<EstSel>(idx, 0);
  else if (which == "ebound")
    s = std::make_unique<EstSel>(idx, 1);
  else if (which == "emix")
    s = std::make_unique<EstSel>(idx, 2);
  else if (which == "emeanS")
    s = std::make_unique<EstSel>(idx, 3);
  else if (which == "emixS")
    s = std::make_unique<EstSel>(idx, 4);
  else if (which == "emeanSO")
    s = std::make_unique<EstSel>(idx, 5);
  else if (which == "vdiag")
    s = std::make_unique<EstSel>(idx, 6);
  else if (which == "vpair")
    s = std::make_unique<EstSel>(idx, 7);
  else if (which == "vband")
    s = std::make_unique<EstSel>(idx, 8);
  else if (which == "viso")
    s = std::make_unique<EstSel>(idx, 9);
  else if (which == "vneox")
    s = std::make_unique<EstSel>(idx, 10);
  else if (which == "quest")
    s = std::make_unique<QuestSelector>(idx, 0, 2);
  else
    s = std::make_unique<StreamingLlmSelector>(idx, 4);
  s->set_budget(budget);
  const char* qs[] = {"What is the secret password for the blue vault?",
                      "How do you write a foreach loop in Perl?",
                      "What does the last statement do inside a loop?",
                      "What is a compound statement?",
                      "How does the unless keyword work?",
                      "What is the range operator used for?"};
  const int64_t nv = (*e)->model().config().n_vocab;
  double kl_sum = 0, kept_sum = 0, cent_sum = 0;
  int nq = 0;
  int n_tok = 0, top1 = 0;
  std::string first;
  for (const char* qq : qs) {
    AskParams dp;
    dp.dense = true;
    dp.gen.max_tokens = 12;
    auto d = ask(**e, **pk, qq, dp);
    auto qt = question_tokens(**e, qq);
    auto dl = ask_score_tokens(**e, **pk, qt, d->gen.tokens, dp, nullptr);
    AskParams ap;
    ap.selector = s.get();
    ap.sink_tokens = 4;
    if (which == "squeeze") {  // the real selector: per-head top-k
      ap.selector = nullptr;
      ap.budget = budget;
      ap.select.levels = atoi(argv[5]);
      if (argc > 7 && !parse_alloc(argv[7], &ap.select.alloc))
        return std::fprintf(stderr, "bad ALLOC %s\n", argv[7]), 1;
      if (argc > 6) ap.select.coarse_factor = atof(argv[6]);
      if (argc > 8) ap.select.block = atoi(argv[8]);
      if (argc > 9) ap.select.coarse_percentile = atof(argv[9]);
      if (argc > 10 && !parse_coarse_rule(argv[10], &ap.select.coarse_rule))
        return std::fprintf(stderr, "bad COARSE_RULE %s\n", argv[10]), 1;
      if (argc > 11) ap.select.child_bound_scale = atof(argv[11]);
      parse_estimator(argv[4], &ap.select.estimator);
    }
    AskResult st;
    auto ml = ask_score_tokens(**e, **pk, qt, d->gen.tokens, ap, &st);
    kept_sum += st.kept_fraction;
    cent_sum += st.centroid_fraction;
    nq++;
    int qtop = 0;
    for (size_t t = 0; t < d->gen.tokens.size(); t++) {
      const float* P = dl->data() + t * nv;
      const float* Q = ml->data() + t * nv;
      double mp = -1e30, mq = -1e30;
      int ap_ = 0, aq = 0;
      for (int64_t v = 0; v < nv; v++) {
        if (P[v] > mp) {
          mp = P[v];
          ap_ = v;
        }
        if (Q[v] > mq) {
          mq = Q[v];
          aq = v;
        }
      }
      double zp = 0, zq = 0;
      for (int64_t v = 0; v < nv; v++) {
        zp += std::exp(P[v] - mp);
        zq += std::exp(Q[v] - mq);
      }
      double kl = 0;
      for (int64_t v = 0; v < nv; v++) {
        double lp = P[v] - mp - std::log(zp), lq = Q[v] - mq - std::log(zq);
        kl += std::exp(lp) * (lp - lq);
      }
      kl_sum += kl;
      n_tok++;
      top1 += ap_ == aq;
      qtop += ap_ == aq;
    }
    printf("   %d/%zu %s\n", qtop, d->gen.tokens.size(), qq);
  }
  printf("%-8s %-9s b=%.3f kept %.3f cent %.3f total %.3f KL %.4f  top1 %d/%d  %s\n", which.c_str(),
         argc > 4 ? argv[4] : "", budget, kept_sum / nq, cent_sum / nq, (kept_sum + cent_sum) / nq,
         kl_sum / n_tok, top1, n_tok, packp.c_str());
}
