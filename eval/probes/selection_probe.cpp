// Diagnostic behind docs/eval.md's "why": for one 2K PreFixQA pack of the full evaluation and
// its first questions (question prefill), per (layer, KV head):
//   - the fraction of clustered keys the squeezed lookup keeps at a ~7% kept target,
//   - the true softmax mass (among clustered keys) of what it keeps,
//   - the mass of the same number of keys chosen by the oracle (true top-k),
//   - the mass of the first 4 positions (attention sinks) and how much of it the lookup keeps.
// Attention itself stays dense (every key is passed to the session), so the model's queries are
// the dense ones at every layer.
//
// Not part of the build (eval/ is not globbed). Build and run from the repository root after
// building sqz_core in build/:
//   g++ -O2 -std=c++20 -march=native -fopenmp -Isrc eval/probes/selection_probe.cpp
//       build/libsqz_core.a -lfmt -lzstd -lpcre2-8 -lopenblas -o /tmp/selection_probe
//   (one command)
//   /tmp/selection_probe [kept_target=0.07] [levels=1] [questions=4]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>

#include "probe_pack.h"
#include "squeeze/baselines.h"

using namespace sqz;

namespace {

struct Probe : KeySelector {
  const BaselineIndex& idx;
  OracleTopKSelector oracle;
  SqueezeLookupSelector lookup;
  int sinks = 4;
  std::vector<double> kept, mass_sq, mass_or, sink_mass, sink_kept;  // [n_layer * n_head_kv]
  int calls = 0;

  explicit Probe(const BaselineIndex& i) : idx(i), oracle(i, 1), lookup(i.pack(), 1) {
    const size_t n = (size_t)i.pack().n_layer() * i.pack().n_head_kv();
    for (auto* v : {&kept, &mass_sq, &mass_or, &sink_mass, &sink_kept}) v->assign(n, 0.0);
  }

  void plan(int layer, const float* q, int64_t n_q, std::vector<HeadSelection>& sel) override {
    const Pack& p = idx.pack();
    const int H = p.n_head_kv();
    const int64_t n = p.n_clustered();
    std::vector<HeadSelection> s;
    lookup.plan(layer, q, n_q, s);
    for (int h = 0; h < H; h++) {
      std::vector<double> sc;
      oracle.key_scores(layer, h, q, n_q, sc);
      std::vector<uint8_t> m((size_t)n, 0);
      for (const RowRange& r : s[(size_t)h].ranges)
        for (int32_t i = r.begin; i < r.end; i++) m[(size_t)i] = 1;
      const int32_t* perm = p.perm(layer, h);
      double ms = 0, sm = 0, sk = 0;
      for (int64_t r = 0; r < n; r++) {
        if (m[(size_t)r]) ms += sc[(size_t)r];
        if (perm[r] < sinks) {
          sm += sc[(size_t)r];
          if (m[(size_t)r]) sk += sc[(size_t)r];
        }
      }
      std::vector<double> top = sc;
      const int64_t k = std::min<int64_t>(s[(size_t)h].kept_keys, n);
      std::partial_sort(top.begin(), top.begin() + k, top.end(), std::greater<double>());
      double mo = 0;
      for (int64_t i = 0; i < k; i++) mo += top[(size_t)i];
      const size_t id = (size_t)layer * H + h;
      kept[id] += (double)k / (double)n;
      mass_sq[id] += ms;
      mass_or[id] += mo;
      sink_mass[id] += sm;
      sink_kept[id] += sm > 0 ? sk / sm : 1.0;
      sel[(size_t)h].ranges = {{0, (int32_t)n}};  // attention stays dense
      sel[(size_t)h].kept_keys = n;
    }
    if (layer == 0) calls++;
  }
};

}  // namespace

int main(int argc, char** argv) {
  const double kept_target = argc > 1 ? std::atof(argv[1]) : 0.07;
  const int levels = argc > 2 ? std::atoi(argv[2]) : 1;
  const int n_questions = argc > 3 ? std::atoi(argv[3]) : 4;
  // The full config's first 2K PreFixQA document.
  CompileParams cp;
  cp.obs_window = 32;
  cp.n_threads = 2;
  auto pp = make_probe_pack(2048, cp, "/tmp/selection_probe.sqzpack");
  if (!pp.ok()) return std::fprintf(stderr, "%s\n", pp.status().message().c_str()), 1;
  Engine* e = pp->engine.get();
  const eval::TaskInstance* t = &pp->task;
  const Pack& pk = *pp->pack;
  BaselineIndex idx(pk);
  Probe probe(idx);
  SelectParams sp;
  sp.levels = levels;
  // The table column that matches this lookup (the child rule maps through one level's).
  sp = select_for_budget(pk, sp, kept_target);
  probe.lookup.set_params(sp);
  for (int qi = 0; qi < std::min<int>(n_questions, (int)t->questions.size()); qi++) {
    AskParams ap;
    ap.selector = &probe;
    auto r =
        ask_first_logits(*e, pk, question_tokens(*e, t->questions[(size_t)qi].text), ap, nullptr);
    if (!r.ok()) return std::fprintf(stderr, "%s\n", r.status().message().c_str()), 1;
  }
  const int H = pk.n_head_kv();
  std::printf(
      "percentile %.3f, %d questions; per KV head: kept | mass kept | oracle mass, same count | "
      "sink mass | share of sink mass kept\n",
      sp.percentile, probe.calls);
  int starved = 0;
  double tot_sq = 0, tot_or = 0;
  for (int l = 0; l < pk.n_layer(); l++) {
    std::printf("layer %2d:", l);
    for (int h = 0; h < H; h++) {
      const size_t id = (size_t)l * H + h;
      const double c = probe.calls;
      std::printf("  %.3f %.2f %.2f %.2f %.2f", probe.kept[id] / c, probe.mass_sq[id] / c,
                  probe.mass_or[id] / c, probe.sink_mass[id] / c, probe.sink_kept[id] / c);
      starved += probe.kept[id] / c < 0.01;
      tot_sq += probe.mass_sq[id] / c;
      tot_or += probe.mass_or[id] / c;
    }
    std::printf("\n");
  }
  std::printf(
      "mean mass kept %.3f, oracle with the same counts %.3f; heads keeping < 1%%: %d of %d\n",
      tot_sq / (pk.n_layer() * H), tot_or / (pk.n_layer() * H), starved, pk.n_layer() * H);
  return 0;
}
