// Shared pieces of the sqz CLI: the one flag table (engine/generation options used by every
// subcommand), default-model lookup, progress bar, error exit.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "core/status.h"
#include "engine/engine.h"

namespace sqz::cli {

struct CommonFlags {
  std::string model;
  int threads = 0;  // 0 = all cores
  int64_t ctx = 0;
  int64_t batch = 256;
  std::string kv_type = "f16";
  std::string device = "cpu";  // "cpu" or "cuda"
  bool json = false;
};

struct GenFlags {
  int max_tokens = 256;
  float temperature = 0.0f;
  int top_k = 40;
  float top_p = 0.95f;
  uint64_t seed = 0;
  std::vector<std::string> stop;
};

void add_common_flags(CLI::App* app, CommonFlags& f, bool with_ctx = true);
void add_gen_flags(CLI::App* app, GenFlags& g);

// --model or the default model (models/SmolLM2-135M-Instruct.Q4_1.gguf next to the working
// directory, the executable or the source tree).
std::string resolve_model(const std::string& flag);
Result<EngineParams> engine_params(const CommonFlags& f);
GenerateParams gen_params(const GenFlags& g);

// Progress bar with ETA on stderr (only when stderr is a terminal).
ProgressFn progress_bar(const std::string& label);

// Print "error: <message>" to stderr and return the process exit code for it.
int fail(const Status& st);

// Reads a whole file (kIo error naming the file).
Result<std::string> read_text_file(const std::string& path);

}  // namespace sqz::cli
