// Random Llama-architecture GGUF generator for tests (tiny models) and benchmarks (7B/8B-shaped
// models). Weights are N(0, weight_std) (norm weights 1), generated and quantized row by row and
// streamed to disk, so memory stays at a few MB whatever the model size. Output is deterministic
// for a given params struct (independent of the thread count).
#pragma once

#include <cstdint>
#include <string>

#include "core/dtype.h"
#include "core/status.h"
#include "formats/model_file.h"

namespace sqz {

struct RandomModelParams {
  std::string arch = "llama";  // "llama", "mistral" or "qwen2" (selects the GGUF key prefix)
  std::string name = "random-llama";
  int n_vocab = 512;  // >= random_model_min_vocab(); extra slots become filler tokens
  int n_embd = 64;
  int n_layer = 2;
  int n_head = 4;
  int n_head_kv = 2;
  int head_dim = 0;  // 0 -> n_embd / n_head
  int n_ff = 128;
  int n_ctx = 2048;  // context_length metadata
  float rms_eps = 1e-5f;
  float rope_theta = 10000.0f;
  // Type of every 2-D weight (token_embd, attention, FFN, output). F32/F16/BF16 are converted
  // here; quantized types go through sqz::cpu::quantize_row. Norms and biases are always F32.
  DType weight_type = DType::kF32;
  float weight_std = 0.02f;
  uint64_t seed = 1;
  bool qkv_bias = false;         // adds blk.N.attn_{q,k,v}.bias (Qwen2-style)
  bool tied_embeddings = false;  // omit output.weight
  std::string tokenizer_pre = "smollm";
};

// Smallest n_vocab the built-in tokenizer fits in (3 specials + 256 bytes + merges).
int random_model_min_vocab();

// The tokenizer written into random models: byte-level BPE ("gpt2"), ids 0..2 are
// <|endoftext|>, <|im_start|>, <|im_end|> (bos = 1, eos = eot = 2, pad = 0), then the 256 byte
// tokens in GPT-2 byte-to-unicode spelling (byte b has id 3 + b), then a few merges' results,
// then "[pad N]" filler tokens up to n_vocab. ChatML chat template.
TokenizerData random_model_tokenizer(int n_vocab, const std::string& pre = "smollm");

// Writes the model atomically to `path`. kInvalidArgument for inconsistent params (e.g. a
// dimension that is not a multiple of the quantization block), kIo on write failure.
Status write_random_llama_gguf(const RandomModelParams& p, const std::string& path);

}  // namespace sqz
