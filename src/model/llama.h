// Llama-family decoder (Llama 2/3, Mistral, Qwen2 with qkv bias, SmolLM2) on the CPU.
//
// The forward pass is written once; where the keys come from is delegated to an
// AttentionProvider per layer (dense KV cache, squeezed pack + user cache, capture for compile),
// which is how squeezed attention plugs in without a second model implementation.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/status.h"
#include "formats/model_file.h"

namespace sqz {

// Called once per layer with this batch's post-RoPE q, k, v.
class AttentionProvider {
 public:
  virtual ~AttentionProvider() = default;
  // q: [n_tok, n_head, head_dim]; k, v: [n_tok, n_head_kv, head_dim]; pos: [n_tok] absolute
  // positions (ascending). out: [n_tok, n_head, head_dim].
  virtual Status attend(int layer, const float* q, const float* k, const float* v, int64_t n_tok,
                        const int32_t* pos, float* out) = 0;
};

struct LayerWeights {
  const TensorView* attn_norm = nullptr;  // [n_embd] f32
  const TensorView* wq = nullptr;         // [n_head*hd, n_embd]  (ggml ne {n_embd, n_head*hd})
  const TensorView* wk = nullptr;         // [n_kv*hd, n_embd]
  const TensorView* wv = nullptr;         // [n_kv*hd, n_embd]
  const TensorView* wo = nullptr;         // [n_embd, n_head*hd]
  const TensorView* bq = nullptr;         // [n_head*hd] (Qwen2) or null
  const TensorView* bk = nullptr;
  const TensorView* bv = nullptr;
  const TensorView* ffn_norm = nullptr;                          // [n_embd]
  const TensorView* w_gate = nullptr;                            // [n_ff, n_embd]
  const TensorView* w_up = nullptr;                              // [n_ff, n_embd]
  const TensorView* w_down = nullptr;                            // [n_embd, n_ff]
  std::vector<float> attn_norm_f, ffn_norm_f, bq_f, bk_f, bv_f;  // dequantized small vectors
};

// Preallocated activations for batches of up to max_tokens (allocation-free forward).
struct ForwardScratch {
  int64_t max_tokens = 0;
  std::vector<float> x, xn, q, k, v, attn, gate, up, logits_in;
  std::vector<uint8_t> mm;  // matmul scratch
  // Kernel for batches of more than 4 tokens: kAuto picks AMX bf16 where available (fast,
  // bf16-rounded operands); kTileF32 keeps prefill in f32 (exact reference-grade numerics).
  int prefill_kernel = 0;  // cpu::MatmulKernel as int (kept out of this header's includes)
};

class LlamaModel {
 public:
  static Result<std::unique_ptr<LlamaModel>> load(std::shared_ptr<ModelFile> file);

  const ModelConfig& config() const { return file_->config; }
  const ModelFile& file() const { return *file_; }
  // Identity of the weights: hash over tensor names/types/shapes and sampled data bytes.
  uint64_t weights_hash() const { return weights_hash_; }

  void init_scratch(ForwardScratch& s, int64_t max_tokens, int n_threads) const;
  // Prefill numerics for scratches created afterwards: false = fastest kernel (AMX bf16 where
  // available), true = f32 GEMM.
  void set_prefill_f32(bool f32) { prefill_f32_ = f32; }

  // Read-only access for other backends (the GPU runner uploads these).
  const LayerWeights& layer(int il) const { return layers_[(size_t)il]; }
  const TensorView& tok_embd() const { return *tok_embd_; }
  const TensorView& output() const { return *output_; }  // == tok_embd() when tied
  const std::vector<float>& output_norm() const { return output_norm_f_; }  // [n_embd]
  const std::vector<float>& rope_freqs() const { return rope_freq_; }       // [head_dim/2]

  // Runs n_tok tokens (n_tok <= s.max_tokens). logits: [n_logits, n_vocab] for the last
  // n_logits tokens of the batch (0 = none, e.g. context prefill).
  Status forward(const int32_t* tokens, const int32_t* pos, int64_t n_tok, AttentionProvider& attn,
                 ForwardScratch& s, int n_threads, float* logits, int64_t n_logits) const;

 private:
  std::shared_ptr<ModelFile> file_;
  const TensorView* tok_embd_ = nullptr;     // [n_vocab, n_embd]
  const TensorView* output_norm_ = nullptr;  // [n_embd]
  const TensorView* output_ = nullptr;       // [n_vocab, n_embd] (tied: = tok_embd_)
  std::vector<float> output_norm_f_;
  std::vector<float> rope_freq_;  // [head_dim/2]
  std::vector<LayerWeights> layers_;
  uint64_t weights_hash_ = 0;
  bool prefill_f32_ = false;
};

}  // namespace sqz
