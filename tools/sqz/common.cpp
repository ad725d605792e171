#include "common.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

namespace sqz::cli {

namespace fs = std::filesystem;

void add_common_flags(CLI::App* app, CommonFlags& f, bool with_ctx) {
  app->add_option("--model,-m", f.model,
                  "GGUF file or Hugging Face directory (default: SmolLM2-135M)");
  app->add_option("--threads,-t", f.threads, "CPU threads (default: all cores)")
      ->check(CLI::Range(0, 1024));
  if (with_ctx)
    app->add_option("--ctx", f.ctx, "context window in tokens (default: the model's)")
        ->check(CLI::Range((int64_t)0, (int64_t)1 << 24));
  app->add_option("--batch", f.batch, "prefill chunk in tokens")
      ->check(CLI::Range((int64_t)1, (int64_t)65536));
  app->add_option("--kv-type", f.kv_type, "KV cache type")->check(CLI::IsMember({"f16", "f32"}));
  app->add_option("--device", f.device,
                  "where the forward pass runs: cpu or cuda (f16 weights on the GPU)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  app->add_flag("--json", f.json, "print one JSON line");
}

void add_gen_flags(CLI::App* app, GenFlags& g) {
  app->add_option("--max-tokens,-n", g.max_tokens, "tokens to generate")
      ->check(CLI::Range(0, 1 << 20));
  app->add_option("--temperature", g.temperature, "0 = greedy")->check(CLI::Range(0.0f, 100.0f));
  app->add_option("--top-k", g.top_k, "0 = off")->check(CLI::Range(0, 1 << 24));
  app->add_option("--top-p", g.top_p, "1 = off")->check(CLI::Range(0.0f, 1.0f));
  app->add_option("--seed", g.seed, "sampling seed");
  app->add_option("--stop", g.stop, "stop string (repeatable)");
}

std::string resolve_model(const std::string& flag) {
  if (!flag.empty()) return flag;
  const char* name = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  std::vector<fs::path> cands = {fs::current_path() / name};
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec)
    for (fs::path d = exe.parent_path(); !d.empty() && d != d.root_path(); d = d.parent_path())
      cands.push_back(d / name);
  cands.push_back(fs::path(SQZ_SOURCE_DIR) / name);
  for (const auto& c : cands)
    if (fs::exists(c)) return c.string();
  return cands.front().string();  // the open error will name it
}

Result<EngineParams> engine_params(const CommonFlags& f) {
  EngineParams p;
  p.model_path = resolve_model(f.model);
  p.n_threads = f.threads > 0 ? f.threads : (int)std::max(1u, std::thread::hardware_concurrency());
  p.n_ctx = f.ctx;
  p.n_batch = f.batch;
  p.kv_type = f.kv_type == "f32" ? DType::kF32 : DType::kF16;
  p.device = f.device == "cuda" ? Device::kCuda : Device::kCpu;
  return p;
}

GenerateParams gen_params(const GenFlags& g) {
  GenerateParams p;
  p.max_tokens = g.max_tokens;
  p.sampler.temperature = g.temperature;
  p.sampler.top_k = g.top_k;
  p.sampler.top_p = g.top_p;
  p.sampler.seed = g.seed;
  p.stop = g.stop;
  return p;
}

ProgressFn progress_bar(const std::string& label) {
  if (!isatty(STDERR_FILENO)) return nullptr;
  auto start =
      std::make_shared<std::chrono::steady_clock::time_point>(std::chrono::steady_clock::now());
  return [label, start](int64_t done, int64_t total) {
    const double el =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - *start).count();
    const double frac = total > 0 ? (double)done / (double)total : 1.0;
    const double eta = frac > 0 ? el / frac - el : 0;
    const int w = 30, filled = (int)(frac * w);
    std::fprintf(stderr, "\r%s [%.*s%*s] %3d%% %lld/%lld  %.1fs ETA %.1fs ", label.c_str(), filled,
                 "##############################", w - filled, "", (int)(frac * 100),
                 (long long)done, (long long)total, el, eta);
    if (done >= total) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  };
}

int fail(const Status& st) {
  std::fprintf(stderr, "error: %s\n", st.message().c_str());
  switch (st.code()) {
    case Code::kInvalidArgument:
      return 2;
    case Code::kIo:
      return 3;
    case Code::kFormat:
      return 4;
    case Code::kUnsupported:
      return 5;
    case Code::kMismatch:
      return 6;
    case Code::kOutOfRange:
      return 7;
    default:
      return 1;
  }
}

Result<std::string> read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Error(Code::kIo, "{}: cannot open", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return Error(Code::kIo, "{}: read failed", path);
  return ss.str();
}

}  // namespace sqz::cli
