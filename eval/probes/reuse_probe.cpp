// Diagnostic for the CUDA decode's next step (dev/kernels/NOTES.md, "speculative streaming"):
// how much of a decode step's selection the previous step of the same (layer, KV head) already
// selected. A run that starts streaming the previous step's rows while this step's plan runs, and
// corrects through the LSE merge, leaves exposed only the rows the previous step did not read,
// plus the rows of any partial (chunk) it has to drop because the chunk holds a row no longer
// selected. This probe measures both on the real model with real generation: squeezed attention
// decides every step (the selection is passed through), greedy decoding, one PreFixQA pack.
//
// Per decode step t >= 2 of an answer and (layer, KV head), with C = rows selected at t and
// P = rows selected at t - 1 (clustered rows; sinks excluded):
//   new    = |C \ P| / |C|                    rows the speculative run cannot have read;
//   stale  = |P \ C| / |C|                    rows it read in vain (bandwidth during the plan);
//   exposed(R) = |C \ valid_R| / |C|          where P is cut into chunks of R consecutive selected
//                                             rows and a chunk is valid when all its rows are in
//                                             C: the rows still to stream after the plan when
//                                             partials are kept per R-row chunk.
// Means are weighted by |C| (bytes), over all steps, layers and heads, and by layer quarter.
//
// Not part of the build (eval/ is not globbed). Build and run from the repository root after
// building sqz_core in build/ (one command each):
//   g++ -O2 -std=c++20 -march=native -fopenmp -Isrc eval/probes/reuse_probe.cpp
//       build/libsqz_core.a -lfmt -lzstd -lpcre2-8 -lopenblas -o /tmp/reuse_probe
//   (a build/ configured with -DSQZ_CUDA=ON also needs build/libsqz_cuda.a
//   -L/usr/local/cuda/lib64 -lcudart -lcublas)
//   /tmp/reuse_probe [kept=0.1] [context_tokens=6144] [questions=6] [max_tokens=48]
#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "probe_pack.h"
#include "squeeze/baselines.h"

using namespace sqz;

namespace {

constexpr int kChunks[] = {1, 16, 64, 256, 576};  // R: rows per partial (1 = per row/cluster)
constexpr int kNC = sizeof(kChunks) / sizeof(kChunks[0]);

struct Sums {
  double cur = 0, fresh = 0, stale = 0, exposed[kNC] = {};
  int64_t steps = 0;
  void add(const Sums& o) {
    cur += o.cur;
    fresh += o.fresh;
    stale += o.stale;
    for (int i = 0; i < kNC; i++) exposed[i] += o.exposed[i];
    steps += o.steps;
  }
};

struct ReuseProbe : KeySelector {
  const Pack& pk;
  SqueezeLookupSelector lookup;
  std::vector<std::vector<int32_t>> prev_rows;  // [n_layer * n_head_kv] last step's rows, ascending
  std::vector<uint8_t> have;                    // prev_rows holds a decode step of this answer
  std::vector<Sums> sums;                       // [n_layer]

  explicit ReuseProbe(const Pack& p) : pk(p), lookup(p, 2) {
    const size_t n = (size_t)p.n_layer() * p.n_head_kv();
    prev_rows.assign(n, {});
    have.assign(n, 0);
    sums.assign((size_t)p.n_layer(), Sums());
  }
  void new_answer() { std::fill(have.begin(), have.end(), 0); }

  void plan(int layer, const float* q, int64_t n_q, std::vector<HeadSelection>& sel) override {
    lookup.plan(layer, q, n_q, sel);
    const int H = pk.n_head_kv();
    const int64_t n = pk.n_clustered();
    for (int h = 0; h < H; h++) {
      const size_t id = (size_t)layer * H + h;
      if (n_q != 1) {  // the question's prefill: not a decode step
        have[id] = 0;
        continue;
      }
      std::vector<uint8_t> m((size_t)n, 0);
      std::vector<int32_t> rows;
      for (const RowRange& r : sel[(size_t)h].ranges)
        for (int32_t i = r.begin; i < r.end; i++) {
          m[(size_t)i] = 1;
          rows.push_back(i);
        }
      if (have[id] && !rows.empty()) {
        Sums s;
        s.steps = 1;
        s.cur = (double)rows.size();
        int64_t both = 0;  // rows of the last step still selected
        for (int32_t i : prev_rows[id]) both += m[(size_t)i];
        s.fresh = s.cur - (double)both;
        s.stale = (double)prev_rows[id].size() - (double)both;
        for (int c = 0; c < kNC; c++) {
          const size_t R = (size_t)kChunks[c], np = prev_rows[id].size();
          int64_t valid = 0;
          for (size_t b = 0; b < np; b += R) {
            const size_t e = std::min(np, b + R);
            bool ok = true;
            for (size_t j = b; j < e && ok; j++) ok = m[(size_t)prev_rows[id][j]] != 0;
            if (ok) valid += (int64_t)(e - b);
          }
          s.exposed[c] = s.cur - (double)valid;
        }
        sums[(size_t)layer].add(s);
      }
      prev_rows[id] = std::move(rows);
      have[id] = 1;
    }
  }
};

void print_row(const char* name, const Sums& s) {
  if (s.cur <= 0) return;
  std::printf("%-14s %7lld  %6.3f  %6.3f", name, (long long)s.steps, s.fresh / s.cur,
              s.stale / s.cur);
  for (int c = 0; c < kNC; c++) std::printf("  %6.3f", s.exposed[c] / s.cur);
  std::printf("\n");
}

}  // namespace

int main(int argc, char** argv) {
  const double kept = argc > 1 ? std::atof(argv[1]) : 0.1;
  const int64_t ctx_tokens = argc > 2 ? std::atoll(argv[2]) : 6144;
  const int n_questions = argc > 3 ? std::atoi(argv[3]) : 6;
  const int max_tokens = argc > 4 ? std::atoi(argv[4]) : 48;
  CompileParams cp;  // the defaults sqz compile uses: 5% fine, 1% coarse clusters
  cp.n_threads = 2;
  auto pp = make_probe_pack(ctx_tokens, cp, "/tmp/reuse_probe.sqzpack");
  if (!pp.ok()) return std::fprintf(stderr, "%s\n", pp.status().message().c_str()), 1;
  Engine* e = pp->engine.get();
  const eval::TaskInstance* t = &pp->task;
  const Pack& pk = *pp->pack;
  ReuseProbe probe(pk);
  SelectParams sp;  // two levels, child-bound coarse rule: what the GPU plan runs
  sp = select_for_budget(pk, sp, kept);
  probe.lookup.set_params(sp);
  int64_t answer_tokens = 0;
  for (int qi = 0; qi < std::min<int>(n_questions, (int)t->questions.size()); qi++) {
    AskParams ap;
    ap.selector = &probe;
    ap.gen.max_tokens = max_tokens;
    probe.new_answer();
    auto r = ask(*e, pk, t->questions[(size_t)qi].text, ap);
    if (!r.ok()) return std::fprintf(stderr, "%s\n", r.status().message().c_str()), 1;
    answer_tokens += (int64_t)r->gen.tokens.size();
    std::printf("q%d: %zu tokens, kept %.3f: %s\n", qi, r->gen.tokens.size(), r->kept_fraction,
                r->gen.text.substr(0, 60).c_str());
  }
  std::printf(
      "\npack: %lld clustered rows, %d layers x %d KV heads; percentile %.3f for kept %.2f; %lld "
      "answer tokens\n",
      (long long)pk.n_clustered(), pk.n_layer(), pk.n_head_kv(), sp.percentile, kept,
      (long long)answer_tokens);
  std::printf("%-14s %7s  %6s  %6s", "layers", "steps", "new", "stale");
  for (int c = 0; c < kNC; c++) std::printf("  exp%-4d", kChunks[c]);
  std::printf("\n");
  const int L = pk.n_layer();
  Sums all;
  for (int q4 = 0; q4 < 4; q4++) {
    Sums s;
    const int l0 = q4 * L / 4, l1 = (q4 + 1) * L / 4;
    for (int l = l0; l < l1; l++) s.add(probe.sums[(size_t)l]);
    char name[32];
    std::snprintf(name, sizeof(name), "%d-%d", l0, l1 - 1);
    print_row(name, s);
    all.add(s);
  }
  print_row("all", all);
  return 0;
}
