// Engine: a loaded model + tokenizer, and the generation / perplexity loops shared by the
// dense path, the squeezed path and the C API.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "engine/sampler.h"
#include "model/kv_cache.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"

namespace sqz {

// Where the forward pass runs. kCuda: weights dequantized to f16 on the current GPU at
// Engine::create (src/backend/cuda/fwd/); generate, compile and ask then run there.
enum class Device { kCpu, kCuda };

struct GpuBackend;  // engine/gpu_session.cpp

struct EngineParams {
  std::string model_path;
  Device device = Device::kCpu;
  int n_threads = 1;
  int64_t n_ctx = 0;      // 0 = the model's training context
  int64_t n_batch = 256;  // prefill chunk (tokens per forward call)
  DType kv_type = DType::kF16;
  bool prefill_f32 = false;  // f32 prefill GEMMs instead of AMX bf16 (slower, reference numerics)
};

// Progress of a long prefill: done / total tokens.
using ProgressFn = std::function<void(int64_t done, int64_t total)>;

struct GenerateParams {
  int max_tokens = 256;
  SamplerParams sampler;
  std::vector<std::string> stop;  // stop strings (not included in the output)
  bool stop_at_eos = true;
  // Streaming: called with each new piece of text; return false to stop.
  std::function<bool(const std::string&)> on_text;
  ProgressFn on_prefill;
};

struct GenerateResult {
  std::string text;
  std::vector<int32_t> tokens;  // generated ids
  int64_t prompt_tokens = 0;
  double prefill_ms = 0;    // time to first token (prefill + first sample)
  double decode_ms = 0;     // time of the remaining tokens
  std::string stop_reason;  // "eos", "stop", "length", "callback"
  double decode_tok_s() const {
    return tokens.size() > 1 && decode_ms > 0 ? (double)(tokens.size() - 1) / (decode_ms / 1e3) : 0;
  }
};

class Engine {
 public:
  static Result<std::unique_ptr<Engine>> create(const EngineParams& p);
  const LlamaModel& model() const { return *model_; }
  const Tokenizer& tokenizer() const { return *tok_; }
  const EngineParams& params() const { return params_; }
  int64_t n_ctx() const { return n_ctx_; }
  ChatTemplate chat_template() const { return chat_.kind; }
  uint64_t tokenizer_hash() const { return tokenizer_hash_; }

  // Render a chat prompt with the model's template.
  std::string render_chat(const std::vector<ChatMessage>& msgs, bool add_generation_prompt) const;

  // Dense generation from scratch (new KV cache).
  Result<GenerateResult> generate(const std::vector<int32_t>& prompt,
                                  const GenerateParams& gp) const;

  // The GPU copy of the model (Device::kCuda), else null. Not thread-safe: one request at a time.
  GpuBackend* gpu() const { return gpu_.get(); }

 private:
  EngineParams params_;
  std::shared_ptr<ModelFile> file_;
  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<Tokenizer> tok_;
  int64_t n_ctx_ = 0;
  ChatTemplateInfo chat_;
  uint64_t tokenizer_hash_ = 0;
  std::shared_ptr<GpuBackend> gpu_;
};

// One forward call of a generation loop: n tokens at positions pos; logits (host) of the last
// n_logits tokens.
using ForwardFn = std::function<Status(const int32_t* tokens, const int32_t* pos, int64_t n,
                                       float* logits, int64_t n_logits)>;
// The generation loop over any forward pass (CPU model + provider, GPU model): prompt in chunks
// of at most max_batch tokens, then sampling and one-token steps.
Result<GenerateResult> run_generation_fn(const ForwardFn& forward, int64_t max_batch,
                                         int32_t n_vocab, const Tokenizer& tok,
                                         const std::vector<int32_t>& prompt, int64_t pos0,
                                         int64_t max_pos, const GenerateParams& gp);

// The generation loop over any attention provider. Prompt tokens get positions pos0, pos0+1, …;
// max_pos bounds prompt + generated positions (exclusive).
Result<GenerateResult> run_generation(const LlamaModel& model, const Tokenizer& tok,
                                      AttentionProvider& attn, ForwardScratch& scratch,
                                      const std::vector<int32_t>& prompt, int64_t pos0,
                                      int64_t max_pos, const GenerateParams& gp, int n_threads);

struct PerplexityResult {
  double ppl = 0;
  double ppl_err = 0;  // ± one standard error (delta method on per-token NLL)
  double nll_mean = 0;
  int64_t n_scored = 0;
  int64_t n_chunks = 0;
  double seconds = 0;
};
// Non-overlapping windows of n_ctx tokens of the text (no BOS), final partial window dropped;
// within each window every token after the first is scored given its prefix in the window.
Result<PerplexityResult> perplexity(const Engine& e, const std::string& text, int64_t n_ctx,
                                    ProgressFn progress);

}  // namespace sqz
