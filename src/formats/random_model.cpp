#include "formats/random_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "backend/cpu/quant.h"
#include "core/fp16.h"
#include "formats/gguf_writer.h"

namespace sqz {

namespace {

// Merges of the built-in vocabulary, in rank order. Each result is also a token.
constexpr const char* kMerges[][2] = {
    {"Ġ", "t"}, {"h", "e"},   {"i", "n"},  {"e", "r"}, {"Ġ", "a"}, {"o", "n"},
    {"r", "e"}, {"Ġt", "he"}, {"a", "t"},  {"e", "n"}, {"Ġ", "s"}, {"o", "u"},
    {"i", "s"}, {"Ġ", "w"},   {"in", "g"}, {"Ġ", "i"},
};
constexpr int kNumMerges = (int)(sizeof(kMerges) / sizeof(kMerges[0]));
constexpr const char* kSpecials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
constexpr int kNumSpecials = 3;

constexpr const char* kChatML =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}";

std::string utf8(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += (char)cp;
  } else if (cp < 0x800) {
    s += (char)(0xC0 | (cp >> 6));
    s += (char)(0x80 | (cp & 0x3F));
  } else {
    s += (char)(0xE0 | (cp >> 12));
    s += (char)(0x80 | ((cp >> 6) & 0x3F));
    s += (char)(0x80 | (cp & 0x3F));
  }
  return s;
}

// GPT-2's reversible byte -> printable code point map: printable Latin-1 bytes map to
// themselves, the other 68 bytes to U+0100.. in byte order.
uint32_t byte_to_unicode(int b) {
  auto printable = [](int x) {
    return (x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF);
  };
  if (printable(b)) return (uint32_t)b;
  uint32_t n = 0;
  for (int x = 0; x < b; x++)
    if (!printable(x)) n++;
  return 256 + n;
}

uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// One independent stream per (seed, tensor, row) so rows can be generated in parallel and the
// output does not depend on scheduling. splitmix64 + Marsaglia's polar method in float:
// hand-written because std::normal_distribution is not reproducible across standard libraries
// and, like double Box-Muller, is 2-3x slower; benchmark models need billions of samples.
void fill_normal(float* dst, int64_t n, float std, uint64_t seed, uint64_t tensor, uint64_t row) {
  uint64_t s = seed ^ (tensor * 0xD1B54A32D192ED03ull) ^ (row * 0x8CB92BA72F3D8DD7ull);
  splitmix64(s);
  for (int64_t i = 0; i < n;) {
    const uint64_t z = splitmix64(s);
    // Two uniforms in [-1, 1) from the two 32-bit halves.
    const float x = (float)(int32_t)(uint32_t)z * 0x1.0p-31f;
    const float y = (float)(int32_t)(uint32_t)(z >> 32) * 0x1.0p-31f;
    const float q = x * x + y * y;
    if (q >= 1.0f || q == 0.0f) continue;  // rejection: ~21% of pairs
    const float f = std * std::sqrt(-2.0f * std::log(q) / q);
    dst[i++] = x * f;
    if (i < n) dst[i++] = y * f;
  }
}

void convert_row(DType t, const float* src, void* dst, int64_t n) {
  switch (t) {
    case DType::kF32:
      std::memcpy(dst, src, (size_t)n * 4);
      break;
    case DType::kF16:
      for (int64_t i = 0; i < n; i++) ((f16_t*)dst)[i] = fp32_to_fp16(src[i]);
      break;
    case DType::kBF16:
      for (int64_t i = 0; i < n; i++) ((bf16_t*)dst)[i] = fp32_to_bf16(src[i]);
      break;
    default:
      cpu::quantize_row(t, src, dst, n);
  }
}

struct Spec {
  std::string name;
  DType type;
  int64_t ne0, ne1;  // ggml order: ne0 = row length, ne1 = rows
  bool ones;         // norm weight (all 1)
};

Status stream_tensor(GgufWriter& w, const Spec& s, uint64_t index, const RandomModelParams& p) {
  const size_t row_bytes = dtype_row_size(s.type, s.ne0);
  // ~8 MB of f32 per chunk keeps memory flat for 8B-shaped models and gives each thread work.
  const int64_t rows_per_chunk = std::max<int64_t>(1, (8 << 20) / (s.ne0 * 4));
  std::vector<float> tmp;
  std::vector<uint8_t> out;
  for (int64_t r0 = 0; r0 < s.ne1; r0 += rows_per_chunk) {
    const int64_t nr = std::min(rows_per_chunk, s.ne1 - r0);
    tmp.resize((size_t)(nr * s.ne0));    // [nr, ne0] f32
    out.resize((size_t)nr * row_bytes);  // [nr, row_bytes] encoded
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < nr; r++) {
      float* row = tmp.data() + r * s.ne0;
      if (s.ones)
        std::fill(row, row + s.ne0, 1.0f);
      else
        fill_normal(row, s.ne0, p.weight_std, p.seed, index, (uint64_t)(r0 + r));
      convert_row(s.type, row, out.data() + r * row_bytes, s.ne0);
    }
    SQZ_RETURN_IF_ERROR(w.stream_tensor_data(out.data(), out.size()));
  }
  return Status::Ok();
}

}  // namespace

int random_model_min_vocab() {
  return kNumSpecials + 256 + kNumMerges;
}

TokenizerData random_model_tokenizer(int n_vocab, const std::string& pre) {
  TokenizerData t;
  t.model = "gpt2";
  t.pre = pre;
  for (const char* s : kSpecials) {
    t.tokens.push_back(s);
    t.token_types.push_back(3);  // control
  }
  for (int b = 0; b < 256; b++) {
    t.tokens.push_back(utf8(byte_to_unicode(b)));
    t.token_types.push_back(1);
  }
  for (const auto& m : kMerges) {
    t.merges.push_back(std::string(m[0]) + " " + m[1]);
    t.tokens.push_back(std::string(m[0]) + m[1]);
    t.token_types.push_back(1);
  }
  // Filler tokens: no merge produces them, so they are unreachable when encoding but decode
  // to readable text if a random model samples them.
  for (int i = (int)t.tokens.size(); i < n_vocab; i++) {
    t.tokens.push_back(fmt::format("[pad{}]", i));
    t.token_types.push_back(1);
  }
  t.bos_id = 1;
  t.eos_id = 2;
  t.eot_id = 2;
  t.pad_id = 0;
  t.add_bos = false;
  t.add_eos = false;
  t.add_space_prefix = false;
  t.chat_template = kChatML;
  return t;
}

Status write_random_llama_gguf(const RandomModelParams& p, const std::string& path) {
  const int head_dim = p.head_dim > 0 ? p.head_dim : (p.n_head > 0 ? p.n_embd / p.n_head : 0);
  if (p.n_vocab < random_model_min_vocab() || p.n_embd <= 0 || p.n_layer <= 0 || p.n_head <= 0 ||
      p.n_head_kv <= 0 || p.n_head % p.n_head_kv != 0 || head_dim <= 0 || head_dim % 2 != 0 ||
      p.n_ff <= 0 || p.n_ctx <= 0)
    return Error(Code::kInvalidArgument,
                 "random model: inconsistent params (n_vocab {} (min {}), n_embd {}, n_layer {}, "
                 "n_head {}, n_head_kv {}, head_dim {}, n_ff {}, n_ctx {})",
                 p.n_vocab, random_model_min_vocab(), p.n_embd, p.n_layer, p.n_head, p.n_head_kv,
                 head_dim, p.n_ff, p.n_ctx);
  if (p.arch != "llama" && p.arch != "mistral" && p.arch != "qwen2")
    return Error(Code::kInvalidArgument, "random model: arch '{}' (llama, mistral, qwen2)", p.arch);
  const DType wt = p.weight_type;
  const DTypeTraits* tr = dtype_traits(wt);
  if (!tr || wt == DType::kQ8_1 || wt == DType::kQ8_K)
    return Error(Code::kInvalidArgument, "random model: weight type {} cannot be stored",
                 dtype_name(wt));
  const int64_t q_dim = (int64_t)p.n_head * head_dim, kv_dim = (int64_t)p.n_head_kv * head_dim;
  for (int64_t row : {(int64_t)p.n_embd, q_dim, (int64_t)p.n_ff})
    if (row % tr->block_size != 0)
      return Error(Code::kInvalidArgument,
                   "random model: row length {} is not a multiple of the {} block size {}", row,
                   tr->name, tr->block_size);

  std::vector<Spec> specs;
  specs.push_back({"token_embd.weight", wt, p.n_embd, p.n_vocab, false});
  for (int l = 0; l < p.n_layer; l++) {
    const std::string b = fmt::format("blk.{}.", l);
    specs.push_back({b + "attn_norm.weight", DType::kF32, p.n_embd, 1, true});
    specs.push_back({b + "attn_q.weight", wt, p.n_embd, q_dim, false});
    specs.push_back({b + "attn_k.weight", wt, p.n_embd, kv_dim, false});
    specs.push_back({b + "attn_v.weight", wt, p.n_embd, kv_dim, false});
    if (p.qkv_bias) {
      specs.push_back({b + "attn_q.bias", DType::kF32, q_dim, 1, false});
      specs.push_back({b + "attn_k.bias", DType::kF32, kv_dim, 1, false});
      specs.push_back({b + "attn_v.bias", DType::kF32, kv_dim, 1, false});
    }
    specs.push_back({b + "attn_output.weight", wt, q_dim, p.n_embd, false});
    specs.push_back({b + "ffn_norm.weight", DType::kF32, p.n_embd, 1, true});
    specs.push_back({b + "ffn_gate.weight", wt, p.n_embd, p.n_ff, false});
    specs.push_back({b + "ffn_up.weight", wt, p.n_embd, p.n_ff, false});
    specs.push_back({b + "ffn_down.weight", wt, p.n_ff, p.n_embd, false});
  }
  specs.push_back({"output_norm.weight", DType::kF32, p.n_embd, 1, true});
  if (!p.tied_embeddings) specs.push_back({"output.weight", wt, p.n_embd, p.n_vocab, false});

  GgufWriter w;
  const std::string a = p.arch + ".";
  w.add_string("general.architecture", p.arch);
  w.add_string("general.name", p.name);
  w.add_u32(a + "context_length", (uint32_t)p.n_ctx);
  w.add_u32(a + "embedding_length", (uint32_t)p.n_embd);
  w.add_u32(a + "block_count", (uint32_t)p.n_layer);
  w.add_u32(a + "feed_forward_length", (uint32_t)p.n_ff);
  w.add_u32(a + "attention.head_count", (uint32_t)p.n_head);
  w.add_u32(a + "attention.head_count_kv", (uint32_t)p.n_head_kv);
  w.add_u32(a + "attention.key_length", (uint32_t)head_dim);
  w.add_u32(a + "attention.value_length", (uint32_t)head_dim);
  w.add_u32(a + "rope.dimension_count", (uint32_t)head_dim);
  w.add_f32(a + "attention.layer_norm_rms_epsilon", p.rms_eps);
  w.add_f32(a + "rope.freq_base", p.rope_theta);
  w.add_u32(a + "vocab_size", (uint32_t)p.n_vocab);

  const TokenizerData tok = random_model_tokenizer(p.n_vocab, p.tokenizer_pre);
  w.add_string("tokenizer.ggml.model", tok.model);
  w.add_string("tokenizer.ggml.pre", tok.pre);
  w.add_array_string("tokenizer.ggml.tokens", tok.tokens);
  w.add_array_i32("tokenizer.ggml.token_type", tok.token_types);
  w.add_array_string("tokenizer.ggml.merges", tok.merges);
  w.add_u32("tokenizer.ggml.bos_token_id", (uint32_t)tok.bos_id);
  w.add_u32("tokenizer.ggml.eos_token_id", (uint32_t)tok.eos_id);
  w.add_u32("tokenizer.ggml.eot_token_id", (uint32_t)tok.eot_id);
  w.add_u32("tokenizer.ggml.padding_token_id", (uint32_t)tok.pad_id);
  w.add_bool("tokenizer.ggml.add_bos_token", tok.add_bos);
  w.add_bool("tokenizer.ggml.add_space_prefix", tok.add_space_prefix);
  w.add_string("tokenizer.chat_template", tok.chat_template);

  for (const Spec& s : specs) {
    const std::vector<int64_t> ne =
        s.ne1 == 1 ? std::vector<int64_t>{s.ne0} : std::vector<int64_t>{s.ne0, s.ne1};
    SQZ_RETURN_IF_ERROR(w.add_tensor_info(s.name, s.type, ne));
  }
  SQZ_RETURN_IF_ERROR(w.begin_stream(path));
  for (size_t i = 0; i < specs.size(); i++)
    SQZ_RETURN_IF_ERROR(stream_tensor(w, specs[i], (uint64_t)i, p));
  return w.finish_stream();
}

}  // namespace sqz
