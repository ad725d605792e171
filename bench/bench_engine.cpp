// Engine benchmark (issue: engine foundation): prefill and decode tokens/s of a model at
// context depths 0, 2K and 8K with 1 and 2 threads, bytes read per decoded token (weights + KV)
// against the measured memory read bandwidth, peak memory. Prints a table, writes JSON to
// bench/results/engine_<date>.json.
//   bench_engine [--model PATH] [--depths 0,2048,7680] [--threads 1,2] [--prefill 256] [--decode
//   32] [--reps 3]
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>

#include "bench_common.h"
#include "engine/engine.h"
#include "model/kv_cache.h"

using namespace sqz;

namespace {

std::vector<int64_t> parse_ints(const std::string& s) {
  std::vector<int64_t> v;
  for (double x : bench::parse_list(s)) v.push_back((int64_t)x);
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model = std::string(SQZ_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  std::vector<int64_t> depths = {0, 2048, 7680}, threads = {1, 2};
  int64_t n_prefill = 256, n_decode = 32, reps = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i], v = argv[i + 1];
    if (a == "--model")
      model = v;
    else if (a == "--depths")
      depths = parse_ints(v);
    else if (a == "--threads")
      threads = parse_ints(v);
    else if (a == "--prefill")
      n_prefill = std::stoll(v);
    else if (a == "--decode")
      n_decode = std::stoll(v);
    else if (a == "--reps")
      reps = std::stoll(v);
    else {
      std::fprintf(stderr, "unknown flag %s\n", a.c_str());
      return 2;
    }
  }
  EngineParams ep;
  ep.model_path = model;
  ep.n_threads = 2;
  auto er = Engine::create(ep);
  if (!er.ok()) {
    std::fprintf(stderr, "error: %s\n", er.status().message().c_str());
    return 1;
  }
  Engine& e = *er.value();
  const ModelConfig& c = e.model().config();
  std::vector<int32_t> toks = e.tokenizer().encode(
      bench::perl_pods({"perlfunc.pod", "perlop.pod", "perlsyn.pod", "perlre.pod"}), false, false);
  size_t weight_bytes = 0;
  for (const auto& t : e.model().file().tensors)
    if (t.n_dims == 2 && t.name != "token_embd.weight") weight_bytes += t.nbytes;
  if (!e.model().file().find("output.weight"))  // tied: the embedding is the output matrix
    weight_bytes += e.model().file().find("token_embd.weight")->nbytes;

  nlohmann::json out;
  out["machine"] = bench::machine_info();
  out["model"] = model;
  out["weight_bytes_per_token"] = weight_bytes;
  std::map<int64_t, double> bw;
  for (int64_t t : threads) bw[t] = bench::measure_read_bandwidth((int)t);
  out["read_bandwidth_gbs"] = nlohmann::json::object();
  for (auto& [t, g] : bw) out["read_bandwidth_gbs"][std::to_string(t)] = g;

  std::printf("%-6s %-3s %12s %12s %14s %10s %8s\n", "depth", "thr", "prefill t/s", "decode t/s",
              "bytes/token", "GB/s", "% bw");
  for (int64_t depth : depths) {
    const int64_t n_max = depth + n_prefill + n_decode + 1;
    if (n_max > e.n_ctx() || (int64_t)toks.size() < n_max) {
      std::fprintf(stderr, "skip depth %lld (window %lld)\n", (long long)depth,
                   (long long)e.n_ctx());
      continue;
    }
    KvCache cache;
    cache.init(c.n_layer, c.n_head_kv, c.head_dim, n_max, DType::kF16);
    ForwardScratch s;
    e.model().init_scratch(s, 256, 2);
    std::vector<int32_t> pos(256);
    // Fill the cache to `depth` (not timed).
    {
      DenseAttention fill(cache, c.n_head, c.n_head_kv, c.head_dim, 2);
      for (int64_t i = 0; i < depth; i += 256) {
        const int64_t b = std::min<int64_t>(256, depth - i);
        for (int64_t j = 0; j < b; j++) pos[(size_t)j] = (int32_t)(i + j);
        (void)e.model().forward(toks.data() + i, pos.data(), b, fill, s, 2, nullptr, 0);
      }
    }
    for (int64_t nt : threads) {
      DenseAttention attn(cache, c.n_head, c.n_head_kv, c.head_dim, (int)nt);
      std::vector<float> logits((size_t)c.n_vocab);
      std::vector<double> pf, dc;
      for (int64_t r = 0; r < reps; r++) {
        // Prefill n_prefill tokens at this depth (overwrites the same rows each rep).
        double t0 = bench::now_s();
        for (int64_t i = 0; i < n_prefill; i += 256) {
          const int64_t b = std::min<int64_t>(256, n_prefill - i);
          for (int64_t j = 0; j < b; j++) pos[(size_t)j] = (int32_t)(depth + i + j);
          (void)e.model().forward(toks.data() + depth + i, pos.data(), b, attn, s, (int)nt,
                                  logits.data(), 1);
        }
        pf.push_back((double)n_prefill / (bench::now_s() - t0));
        // Decode n_decode tokens after it.
        t0 = bench::now_s();
        for (int64_t i = 0; i < n_decode; i++) {
          int32_t p = (int32_t)(depth + n_prefill + i);
          int32_t id = toks[(size_t)(depth + n_prefill + i)];
          (void)e.model().forward(&id, &p, 1, attn, s, (int)nt, logits.data(), 1);
        }
        dc.push_back((double)n_decode / (bench::now_s() - t0));
      }
      const double pf_m = bench::median(pf), dc_m = bench::median(dc);
      const double mean_ctx = (double)depth + n_prefill + n_decode / 2.0;
      const double kv_bytes =
          mean_ctx * c.n_layer * c.n_head_kv * c.head_dim * 2 /*K,V*/ * 2 /*f16*/;
      const double bytes = (double)weight_bytes + kv_bytes;
      const double gbs = bytes * dc_m / 1e9;
      std::printf("%-6lld %-3lld %12.1f %12.1f %14.3e %10.2f %7.1f%%\n", (long long)depth,
                  (long long)nt, pf_m, dc_m, bytes, gbs, 100.0 * gbs / bw[nt]);
      out["runs"].push_back({{"depth", depth},
                             {"threads", nt},
                             {"prefill_tok_s", pf_m},
                             {"decode_tok_s", dc_m},
                             {"prefill_tokens", n_prefill},
                             {"decode_tokens", n_decode},
                             {"bytes_per_token", bytes},
                             {"kv_bytes_per_token", kv_bytes},
                             {"achieved_gbs", gbs},
                             {"pct_of_read_bw", 100.0 * gbs / bw[nt]}});
    }
  }
  out["peak_rss_mib"] = bench::peak_rss_mib();
  std::printf("read bandwidth: ");
  for (auto& [t, g] : bw) std::printf("%lld thr %.1f GB/s  ", (long long)t, g);
  std::printf("\npeak RSS %lld MiB\n", (long long)bench::peak_rss_mib());
  bench::write_result("engine", out);
  return 0;
}
