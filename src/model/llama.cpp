#include "model/llama.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/cpu/matmul.h"
#include "backend/cpu/ops.h"
#include "backend/cpu/quant.h"
#include "core/hash.h"

namespace sqz {

namespace {

std::vector<float> to_f32(const TensorView& t) {
  std::vector<float> out((size_t)t.nelements());
  cpu::dequantize_row(t.type, t.data, out.data(), t.nelements());
  return out;
}

// Samples up to 64 KiB at both ends of every tensor: full hashing of multi-GB weights would
// make every `sqz ask` pay seconds; names, types, shapes and sampled bytes catch any real swap.
uint64_t hash_weights(const ModelFile& f) {
  uint64_t h = fnv1a64(f.config.arch);
  for (const auto& t : f.tensors) {
    h = fnv1a64(t.name, h);
    h = fnv1a64(&t.type, sizeof(t.type), h);
    h = fnv1a64(t.ne, sizeof(t.ne), h);
    const size_t n = std::min<size_t>(t.nbytes, 65536);
    h = fnv1a64(t.data, n, h);
    if (t.nbytes > n) h = fnv1a64((const uint8_t*)t.data + t.nbytes - n, n, h);
  }
  return h;
}

}  // namespace

Result<std::unique_ptr<LlamaModel>> LlamaModel::load(std::shared_ptr<ModelFile> file) {
  const ModelConfig& c = file->config;
  static const char* kArchs[] = {"llama", "mistral", "qwen2"};
  if (std::find_if(std::begin(kArchs), std::end(kArchs),
                   [&](const char* a) { return c.arch == a; }) == std::end(kArchs))
    return Error(Code::kUnsupported,
                 "{}: architecture '{}' is not supported (llama, mistral, qwen2)", file->path,
                 c.arch);
  if (c.n_layer <= 0 || c.n_embd <= 0 || c.n_head <= 0 || c.n_head_kv <= 0 || c.head_dim <= 0 ||
      c.n_ff <= 0 || c.n_vocab <= 0)
    return Error(Code::kFormat, "{}: incomplete hyper-parameters (layers={}, embd={}, heads={}/{})",
                 file->path, c.n_layer, c.n_embd, c.n_head, c.n_head_kv);
  if (c.n_head % c.n_head_kv != 0)
    return Error(Code::kFormat, "{}: n_head {} not a multiple of n_head_kv {}", file->path,
                 c.n_head, c.n_head_kv);
  if (c.head_dim > 256 || c.head_dim % 2 != 0)
    return Error(Code::kUnsupported, "{}: head_dim {} unsupported (even, <= 256)", file->path,
                 c.head_dim);

  auto m = std::unique_ptr<LlamaModel>(new LlamaModel());
  m->file_ = file;
  const int64_t E = c.n_embd, HD = c.head_dim, NQ = c.n_head * HD, NKV = c.n_head_kv * HD;
  SQZ_ASSIGN_OR_RETURN(m->tok_embd_, file->require("token_embd.weight", {E, c.n_vocab}));
  SQZ_ASSIGN_OR_RETURN(m->output_norm_, file->require("output_norm.weight", {E}));
  m->output_norm_f_ = to_f32(*m->output_norm_);
  if (const TensorView* o = file->find("output.weight")) {
    SQZ_ASSIGN_OR_RETURN(m->output_, file->require("output.weight", {E, c.n_vocab}));
    (void)o;
  } else {
    m->output_ = m->tok_embd_;  // tied embeddings
  }
  m->layers_.resize((size_t)c.n_layer);
  for (int il = 0; il < c.n_layer; il++) {
    auto& L = m->layers_[(size_t)il];
    auto name = [&](const char* s) { return fmt::format("blk.{}.{}", il, s); };
    SQZ_ASSIGN_OR_RETURN(L.attn_norm, file->require(name("attn_norm.weight"), {E}));
    SQZ_ASSIGN_OR_RETURN(L.wq, file->require(name("attn_q.weight"), {E, NQ}));
    SQZ_ASSIGN_OR_RETURN(L.wk, file->require(name("attn_k.weight"), {E, NKV}));
    SQZ_ASSIGN_OR_RETURN(L.wv, file->require(name("attn_v.weight"), {E, NKV}));
    SQZ_ASSIGN_OR_RETURN(L.wo, file->require(name("attn_output.weight"), {NQ, E}));
    SQZ_ASSIGN_OR_RETURN(L.ffn_norm, file->require(name("ffn_norm.weight"), {E}));
    SQZ_ASSIGN_OR_RETURN(L.w_gate, file->require(name("ffn_gate.weight"), {E, c.n_ff}));
    SQZ_ASSIGN_OR_RETURN(L.w_up, file->require(name("ffn_up.weight"), {E, c.n_ff}));
    SQZ_ASSIGN_OR_RETURN(L.w_down, file->require(name("ffn_down.weight"), {c.n_ff, E}));
    L.attn_norm_f = to_f32(*L.attn_norm);
    L.ffn_norm_f = to_f32(*L.ffn_norm);
    if (file->find(name("attn_q.bias"))) {
      SQZ_ASSIGN_OR_RETURN(L.bq, file->require(name("attn_q.bias"), {NQ}));
      SQZ_ASSIGN_OR_RETURN(L.bk, file->require(name("attn_k.bias"), {NKV}));
      SQZ_ASSIGN_OR_RETURN(L.bv, file->require(name("attn_v.bias"), {NKV}));
      L.bq_f = to_f32(*L.bq);
      L.bk_f = to_f32(*L.bk);
      L.bv_f = to_f32(*L.bv);
    }
  }
  m->rope_freq_.resize((size_t)(HD / 2));
  cpu::rope_freqs(m->rope_freq_.data(), HD, c.rope_theta, c.rope_scale_factor,
                  c.rope_low_freq_factor, c.rope_high_freq_factor, c.rope_orig_ctx);
  if (const TensorView* rf = file->find("rope_freqs.weight")) {
    // Llama-3 GGUFs carry the frequency divisors as a tensor instead of scaling metadata.
    if (rf->nelements() != HD / 2)
      return Error(Code::kFormat, "{}: rope_freqs.weight has {} elements, expected {}", file->path,
                   rf->nelements(), HD / 2);
    std::vector<float> div = to_f32(*rf);
    cpu::rope_freqs(m->rope_freq_.data(), HD, c.rope_theta, 0.0f, 1.0f, 1.0f, 0);
    for (int64_t i = 0; i < HD / 2; i++) m->rope_freq_[(size_t)i] /= div[(size_t)i];
  }
  m->weights_hash_ = hash_weights(*file);
  return m;
}

void LlamaModel::init_scratch(ForwardScratch& s, int64_t max_tokens, int n_threads) const {
  const ModelConfig& c = config();
  const int64_t T = max_tokens;
  s.max_tokens = T;
  s.prefill_kernel = (int)(prefill_f32_ ? cpu::MatmulKernel::kTileF32 : cpu::MatmulKernel::kAuto);
  s.x.resize((size_t)(T * c.n_embd));
  s.xn.resize((size_t)(T * c.n_embd));
  s.q.resize((size_t)(T * c.n_head * c.head_dim));
  s.k.resize((size_t)(T * c.n_head_kv * c.head_dim));
  s.v.resize((size_t)(T * c.n_head_kv * c.head_dim));
  s.attn.resize((size_t)(T * c.n_head * c.head_dim));
  s.gate.resize((size_t)(T * c.n_ff));
  s.up.resize((size_t)(T * c.n_ff));
  size_t mm = cpu::matmul_scratch_size(*output_, T, n_threads);
  for (const auto& L : layers_)
    for (const TensorView* w : {L.wq, L.wk, L.wv, L.wo, L.w_gate, L.w_up, L.w_down})
      mm = std::max(mm, cpu::matmul_scratch_size(*w, T, n_threads));
  s.mm.resize(mm);
}

Status LlamaModel::forward(const int32_t* tokens, const int32_t* pos, int64_t n_tok,
                           AttentionProvider& attn, ForwardScratch& s, int n_threads, float* logits,
                           int64_t n_logits) const {
  const ModelConfig& c = config();
  if (n_tok <= 0 || n_tok > s.max_tokens)
    return Error(Code::kInvalidArgument, "forward: batch of {} tokens (max {})", n_tok,
                 s.max_tokens);
  if (n_logits > n_tok) return Error(Code::kInvalidArgument, "forward: n_logits > n_tok");
  const int64_t E = c.n_embd, HD = c.head_dim, NQ = c.n_head * HD, NKV = c.n_head_kv * HD;
  const int64_t FF = c.n_ff;
  const size_t embd_row = dtype_row_size(tok_embd_->type, E);
  for (int64_t t = 0; t < n_tok; t++) {
    if (tokens[t] < 0 || tokens[t] >= c.n_vocab)
      return Error(Code::kInvalidArgument, "forward: token id {} out of range [0, {})", tokens[t],
                   c.n_vocab);
    cpu::dequantize_row(tok_embd_->type,
                        (const uint8_t*)tok_embd_->data + (size_t)tokens[t] * embd_row,
                        &s.x[(size_t)(t * E)], E);
  }
  float* x = s.x.data();
  float* xn = s.xn.data();
  void* mm_scratch = s.mm.data();
  const auto kernel = n_tok > 4 ? (cpu::MatmulKernel)s.prefill_kernel : cpu::MatmulKernel::kAuto;
  auto mm = [&](const TensorView& W, const float* in, int64_t n, float* out) {
    cpu::matmul_with(kernel, W, in, n, out, mm_scratch, n_threads);
  };
  for (int il = 0; il < c.n_layer; il++) {
    const LayerWeights& L = layers_[(size_t)il];
    cpu::rmsnorm(x, L.attn_norm_f.data(), xn, n_tok, E, c.rms_eps);
    mm(*L.wq, xn, n_tok, s.q.data());
    mm(*L.wk, xn, n_tok, s.k.data());
    mm(*L.wv, xn, n_tok, s.v.data());
    if (!L.bq_f.empty()) {
      for (int64_t t = 0; t < n_tok; t++) {
        for (int64_t i = 0; i < NQ; i++) s.q[(size_t)(t * NQ + i)] += L.bq_f[(size_t)i];
        for (int64_t i = 0; i < NKV; i++) {
          s.k[(size_t)(t * NKV + i)] += L.bk_f[(size_t)i];
          s.v[(size_t)(t * NKV + i)] += L.bv_f[(size_t)i];
        }
      }
    }
    cpu::rope(s.q.data(), n_tok, c.n_head, HD, NQ, pos, rope_freq_.data(), c.rope_neox);
    cpu::rope(s.k.data(), n_tok, c.n_head_kv, HD, NKV, pos, rope_freq_.data(), c.rope_neox);
    SQZ_RETURN_IF_ERROR(
        attn.attend(il, s.q.data(), s.k.data(), s.v.data(), n_tok, pos, s.attn.data()));
    mm(*L.wo, s.attn.data(), n_tok, xn);
    for (int64_t i = 0; i < n_tok * E; i++) x[i] += xn[i];
    cpu::rmsnorm(x, L.ffn_norm_f.data(), xn, n_tok, E, c.rms_eps);
    mm(*L.w_gate, xn, n_tok, s.gate.data());
    mm(*L.w_up, xn, n_tok, s.up.data());
    cpu::swiglu(s.gate.data(), s.up.data(), s.gate.data(), n_tok * FF);
    mm(*L.w_down, s.gate.data(), n_tok, xn);
    for (int64_t i = 0; i < n_tok * E; i++) x[i] += xn[i];
  }
  if (n_logits > 0) {
    const int64_t t0 = n_tok - n_logits;
    cpu::rmsnorm(x + t0 * E, output_norm_f_.data(), xn, n_logits, E, c.rms_eps);
    mm(*output_, xn, n_logits, logits);
  }
  return Status::Ok();
}

}  // namespace sqz
