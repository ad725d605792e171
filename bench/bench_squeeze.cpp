// Squeezed-attention benchmark (issue: Squeezed Attention on the CPU). For a ~8K-token fixed
// context with the default model: time to first token of a 256-token question and decode tok/s,
// dense vs squeezed at about 30%, 20%, 10% of keys kept, 1 and 2 threads, next to the bytes each
// reads per decoded token; plus `sqz compile` time split into prefill, k-means, calibration and
// write. Prints a table and writes bench/results/squeeze_<date>.json.
//   bench_squeeze [--model PATH] [--ctx-tokens 7800] [--question 256] [--decode 32]
//                 [--threads 1,2] [--budgets 0.3,0.2,0.1] [--reps 3] [--llamacpp JSON]
//                 [--estimator auto|mean|mean_var|mean_iso] [--sinks 4] [--levels 1|2] [--block 0]
//                 [--coarse-rule child|calibrated]
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "bench_common.h"
#include "engine/squeeze_session.h"

using namespace sqz;

int main(int argc, char** argv) {
  std::string model = std::string(SQZ_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  int64_t ctx_tokens = 7800, q_tokens = 256, n_decode = 32, reps = 3;
  std::vector<double> threads = {1, 2}, budgets = {0.3, 0.2, 0.1};
  std::string llamacpp_json, estimator = "auto";
  int64_t sinks = 4, levels = 0, block = 0;
  SelectParams::CoarseRule rule = SelectParams{}.coarse_rule;
  const char* usage =
      "usage: bench_squeeze [--model PATH] [--ctx-tokens 7800] [--question 256] [--decode 32]\n"
      "  [--threads 1,2] [--budgets 0.3,0.2,0.1] [--reps 3] [--llamacpp JSON]\n"
      "  [--estimator auto|mean|mean_var|mean_iso] [--sinks 4] [--levels 1|2] [--block 0]\n"
      "  [--coarse-rule child|calibrated]\n";
  for (int i = 1; i < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::printf("%s", usage);
      return 0;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "%s: missing value\n%s", a.c_str(), usage);
      return 2;
    }
    std::string v = argv[i + 1];
    if (a == "--model")
      model = v;
    else if (a == "--ctx-tokens")
      ctx_tokens = std::stoll(v);
    else if (a == "--question")
      q_tokens = std::stoll(v);
    else if (a == "--decode")
      n_decode = std::stoll(v);
    else if (a == "--threads")
      threads = bench::parse_list(v);
    else if (a == "--budgets")
      budgets = bench::parse_list(v);
    else if (a == "--reps")
      reps = std::stoll(v);
    else if (a == "--llamacpp")
      llamacpp_json = v;
    else if (a == "--estimator")
      estimator = v;
    else if (a == "--sinks")
      sinks = std::stoll(v);
    else if (a == "--levels")
      levels = std::stoll(v);
    else if (a == "--block")
      block = std::stoll(v);
    else if (a == "--coarse-rule" && parse_coarse_rule(v, &rule))
      continue;  // parsed into rule
    else {
      std::fprintf(stderr, "unknown flag or value: %s %s\n%s", a.c_str(), v.c_str(), usage);
      return 2;
    }
  }
  Estimator est;
  if (!parse_estimator(estimator, &est)) {
    std::fprintf(stderr, "error: --estimator %s\n%s", estimator.c_str(), usage);
    return 2;
  }
  nlohmann::json out;
  out["machine"] = bench::machine_info();
  out["model"] = model;
  std::map<int, double> bw;
  for (double t : threads) bw[(int)t] = bench::measure_read_bandwidth((int)t);

  // Context: the first ctx_tokens tokens of Debian's perl documentation; question: 256 tokens
  // of another document followed by a request.
  EngineParams ep0;
  ep0.model_path = model;
  ep0.n_threads = 2;
  auto e0 = Engine::create(ep0);
  if (!e0.ok()) {
    std::fprintf(stderr, "error: %s\n", e0.status().message().c_str());
    return 1;
  }
  const Tokenizer& tok = e0.value()->tokenizer();
  std::vector<int32_t> ct = tok.encode(bench::perl_pods({"perlfunc.pod"}), false, false);
  // The chat template adds a few dozen tokens around the context.
  ct.resize((size_t)std::min<int64_t>((int64_t)ct.size(), ctx_tokens - 40));
  const std::string context = tok.decode(ct, true);
  std::vector<int32_t> qt = tok.encode(bench::perl_pods({"perlsyn.pod"}), false, false);
  qt.resize((size_t)(q_tokens - 16));
  const std::string question = tok.decode(qt, true) + "\nSummarise the function described above.";

  std::filesystem::create_directories(std::string(SQZ_SOURCE_DIR) + "/bench/tmp");
  const std::string pack_path = std::string(SQZ_SOURCE_DIR) + "/bench/tmp/bench_ctx.sqzpack";
  CompileParams cp;
  cp.n_threads = 2;
  const double tc = bench::now_s();
  auto rep = compile_context(*e0.value(), context, cp, pack_path, nullptr);
  if (!rep.ok()) {
    std::fprintf(stderr, "error: %s\n", rep.status().message().c_str());
    return 1;
  }
  const double compile_total = bench::now_s() - tc;
  out["compile"] = {{"context_tokens", rep->n_ctx},    {"threads", 2},
                    {"total_s", compile_total},        {"prefill_s", rep->prefill_s},
                    {"kmeans_s", rep->stats.kmeans_s}, {"calibration_s", rep->stats.calib_s},
                    {"write_s", rep->stats.write_s}};
  std::printf(
      "compile: %lld tokens, total %.2f s = prefill %.2f + k-means %.2f + calibration %.2f + write "
      "%.2f (2 threads)\n",
      (long long)rep->n_ctx, compile_total, rep->prefill_s, rep->stats.kmeans_s, rep->stats.calib_s,
      rep->stats.write_s);
  auto pk = Pack::open(pack_path);
  if (!pk.ok()) {
    std::fprintf(stderr, "error: %s\n", pk.status().message().c_str());
    return 1;
  }
  const Pack& pack = *pk.value();
  const ModelConfig& c = e0.value()->model().config();
  size_t weight_bytes = 0;
  for (const auto& t : e0.value()->model().file().tensors)
    if (t.n_dims == 2 && t.name != "token_embd.weight") weight_bytes += t.nbytes;
  if (!e0.value()->model().file().find("output.weight"))
    weight_bytes += e0.value()->model().file().find("token_embd.weight")->nbytes;
  const double row_bytes = (double)c.n_layer * c.n_head_kv * c.head_dim * 2 /*K,V*/ * 2 /*f16*/;
  const double centroid_bytes = (double)c.n_layer * c.n_head_kv * c.head_dim * 4;  // f32 centroid

  std::printf("\n%-8s %-3s %8s %9s %10s %9s %11s %12s %8s %8s\n", "method", "thr", "kept%",
              "budget%", "ttft ms", "x dense", "decode t/s", "bytes/token", "GB/s", "x dense");
  for (double tf : threads) {
    const int nt = (int)tf;
    EngineParams ep = ep0;
    ep.n_threads = nt;
    auto e = Engine::create(ep);
    double dense_ttft = 0, dense_dec = 0;
    std::vector<double> modes = {-1};  // -1 = dense
    modes.insert(modes.end(), budgets.begin(), budgets.end());
    for (double b : modes) {
      AskParams ap;
      ap.dense = b < 0;
      ap.budget = b;
      ap.select.levels = levels > 0 ? (int)levels : (pack.n_coarse() > 0 ? 2 : 1);
      ap.sink_tokens = (int)sinks;
      ap.select.block = block;
      ap.select.coarse_rule = rule;
      ap.select.estimator = est;
      ap.gen.max_tokens = (int)n_decode;
      ap.gen.stop_at_eos = false;
      std::vector<double> ttft, dec;
      AskResult last;
      for (int64_t r = 0; r < reps; r++) {
        auto res = ask(*e.value(), pack, question, ap);
        if (!res.ok()) {
          std::fprintf(stderr, "error: %s\n", res.status().message().c_str());
          return 1;
        }
        ttft.push_back(res->gen.prefill_ms);
        dec.push_back(res->gen.decode_tok_s());
        last = res.value();
      }
      const double t_m = bench::median(ttft), d_m = bench::median(dec);
      if (b < 0) {
        dense_ttft = t_m;
        dense_dec = d_m;
      }
      const double user = (double)q_tokens + n_decode / 2.0;
      const double bytes = (double)weight_bytes +
                           (last.kept_fraction * (double)pack.n_ctx() + user) * row_bytes +
                           last.centroid_fraction * (double)pack.n_ctx() * centroid_bytes;
      const double gbs = bytes * d_m / 1e9;
      const std::string name = b < 0 ? "dense" : fmt::format("sqz@{:.0f}%", b * 100);
      std::printf("%-8s %-3d %7.1f%% %8.1f%% %10.1f %9.2f %11.1f %12.3e %8.2f %8.2f\n",
                  name.c_str(), nt, 100 * last.kept_fraction, 100 * last.budget, t_m,
                  dense_ttft / t_m, d_m, bytes, gbs, d_m / dense_dec);
      out["runs"].push_back({{"method", name},
                             {"threads", nt},
                             {"target_budget", b},
                             {"kept_fraction", last.kept_fraction},
                             {"centroid_fraction", last.centroid_fraction},
                             {"budget", last.budget},
                             {"percentile", last.percentile},
                             {"ttft_ms", t_m},
                             {"ttft_speedup_vs_dense", dense_ttft / t_m},
                             {"decode_tok_s", d_m},
                             {"decode_speedup_vs_dense", d_m / dense_dec},
                             {"bytes_per_token", bytes},
                             {"achieved_gbs", gbs},
                             {"pct_of_read_bw", 100 * gbs / bw[nt]},
                             {"question_tokens", last.gen.prompt_tokens},
                             {"context_tokens", pack.n_ctx()},
                             {"answer", last.gen.text}});
    }
  }
  for (auto& [t, g] : bw) out["read_bandwidth_gbs"][std::to_string(t)] = g;
  if (!llamacpp_json.empty()) {
    std::ifstream in(llamacpp_json);
    if (in) {
      try {
        out["llamacpp"] = nlohmann::json::parse(in);
      } catch (...) {
        std::fprintf(stderr, "warning: cannot parse %s\n", llamacpp_json.c_str());
      }
    }
  }
  out["settings"] = {{"estimator", estimator},
                     {"sinks", sinks},
                     {"levels", levels},
                     {"block", block},
                     {"coarse_rule", coarse_rule_name(rule)},
                     {"question_tokens", q_tokens},
                     {"decode_tokens", n_decode},
                     {"reps", reps}};
  out["peak_rss_mib"] = bench::peak_rss_mib();
  bench::write_result("squeeze", out);
  return 0;
}
