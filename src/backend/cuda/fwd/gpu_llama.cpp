#include "backend/cuda/fwd/gpu_llama.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdint>

#include "backend/cuda/fwd/dequant.h"
#include "backend/cuda/fwd/dev_buffer.h"
#include "backend/cuda/fwd/embedding.h"
#include "backend/cuda/fwd/gemm.h"
#include "backend/cuda/fwd/rmsnorm.h"
#include "backend/cuda/fwd/rope.h"
#include "backend/cuda/fwd/swiglu.h"
#include "core/clock.h"

namespace sqz::gpu {

Result<DeviceInfo> device_query() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess)
    return Error(Code::kUnsupported, "--device cuda: no usable NVIDIA GPU ({}: {})",
                 cudaGetErrorName(e), cudaGetErrorString(e));
  if (n == 0) return Error(Code::kUnsupported, "--device cuda: no NVIDIA GPU found");
  DeviceInfo d;
  int dev = 0;
  SQZ_RETURN_IF_ERROR(cuda_status(cudaGetDevice(&dev), "cudaGetDevice"));
  cudaDeviceProp p{};
  SQZ_RETURN_IF_ERROR(cuda_status(cudaGetDeviceProperties(&p, dev), "cudaGetDeviceProperties"));
  d.name = p.name;
  d.sm_count = p.multiProcessorCount;
  d.cc_major = p.major;
  d.cc_minor = p.minor;
  d.mem_total = p.totalGlobalMem;
  cudaDriverGetVersion(&d.driver_version);
  cudaRuntimeGetVersion(&d.runtime_version);
  if (p.major < 8)
    return Error(Code::kUnsupported,
                 "--device cuda: {} has compute capability {}.{}; sqz needs 8.0+", d.name, p.major,
                 p.minor);
  return d;
}

namespace {

struct Layer {
  DevBuf wqkv;       // [NQ + 2 NKV, E] f16: wq rows, then wk, then wv
  DevBuf wo;         // [E, NQ] f16
  DevBuf wgu;        // [2 FF, E] f16: gate rows, then up
  DevBuf wdown;      // [E, FF] f16
  DevBuf attn_norm;  // [E] f32
  DevBuf ffn_norm;   // [E] f32
  DevBuf bias;       // [NQ + 2 NKV] f32 (Qwen2) or empty
};

}  // namespace

struct Model::Impl {
  const LlamaModel* cpu = nullptr;
  ModelConfig c;
  DeviceInfo dev;
  cudaStream_t stream = nullptr;
  fwd::Gemm gemm;
  std::vector<Layer> layers;
  DevBuf tok_embd;     // [V, E] f16
  DevBuf output;       // [V, E] f16 (empty when tied: tok_embd is used)
  DevBuf output_norm;  // [E] f32
  DevBuf freq;         // [HD/2] f32
  DevBuf staging;      // raw GGUF bytes of one tensor
  size_t weight_bytes = 0;
  double load_s = 0;
  // Activations for up to max_tok tokens.
  int64_t max_tok = 0, max_logits = 0;
  DevBuf x;       // [T, E] f32 residual stream
  DevBuf xn;      // [T, max(E, NQ)] f16 GEMM input (norm output / attention output)
  DevBuf qkv;     // [T, NQ + 2 NKV] f32
  DevBuf q16;     // [T, NQ] f16
  DevBuf q32;     // [T, NQ] f32
  DevBuf k16;     // [T, NKV] f16
  DevBuf v16;     // [T, NKV] f16
  DevBuf att;     // [T, NQ] f16 attention output
  DevBuf gu;      // [T, 2 FF] f32
  DevBuf act;     // [T, FF] f16
  DevBuf tok;     // [T] int32
  DevBuf pos;     // [T] int32
  DevBuf logits;  // [max_logits, V] f32

  ~Impl() {
    layers.clear();
    if (stream) cudaStreamDestroy(stream);
  }

  const void* out_w() const { return output.get() ? output.get() : tok_embd.get(); }

  // Raw bytes of t -> device f16 at dst (nelements), waiting so the staging buffer is free.
  Status upload_f16(const TensorView& t, void* dst) {
    if (!fwd::dequant_supported((uint32_t)t.type))
      return Error(Code::kUnsupported, "--device cuda: tensor {} has type {} (no GPU dequantizer)",
                   t.name, (uint32_t)t.type);
    SQZ_RETURN_IF_ERROR(staging.ensure(t.nbytes, "weight staging"));
    SQZ_RETURN_IF_ERROR(cuda_status(
        cudaMemcpyAsync(staging.get(), t.data, t.nbytes, cudaMemcpyHostToDevice, stream),
        "weight upload"));
    SQZ_RETURN_IF_ERROR(
        sqz_status(fwd::dequant_f16((uint32_t)t.type, staging.get(), dst, t.nelements(), stream),
                   "dequantize"));
    return cuda_status(cudaStreamSynchronize(stream), "dequantize");
  }
  Status upload_f32(const std::vector<float>& v, DevBuf& dst, const char* what) {
    SQZ_RETURN_IF_ERROR(dst.alloc(v.size() * sizeof(float), what));
    return cuda_status(
        cudaMemcpy(dst.get(), v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice), what);
  }

  Status ensure_scratch(int64_t T, int64_t n_logits) {
    const int64_t E = c.n_embd, HD = c.head_dim, NQ = (int64_t)c.n_head * HD;
    const int64_t NKV = (int64_t)c.n_head_kv * HD, FF = c.n_ff;
    if (T > max_tok) {
      SQZ_RETURN_IF_ERROR(cuda_status(cudaStreamSynchronize(stream), "sync"));
      SQZ_RETURN_IF_ERROR(x.alloc(T * E * 4, "activations"));
      SQZ_RETURN_IF_ERROR(xn.alloc(T * std::max(E, NQ) * 2, "activations"));
      SQZ_RETURN_IF_ERROR(qkv.alloc(T * (NQ + 2 * NKV) * 4, "activations"));
      SQZ_RETURN_IF_ERROR(q16.alloc(T * NQ * 2, "activations"));
      SQZ_RETURN_IF_ERROR(q32.alloc(T * NQ * 4, "activations"));
      SQZ_RETURN_IF_ERROR(k16.alloc(T * NKV * 2, "activations"));
      SQZ_RETURN_IF_ERROR(v16.alloc(T * NKV * 2, "activations"));
      SQZ_RETURN_IF_ERROR(att.alloc(T * NQ * 2, "activations"));
      SQZ_RETURN_IF_ERROR(gu.alloc(T * 2 * FF * 4, "activations"));
      SQZ_RETURN_IF_ERROR(act.alloc(T * FF * 2, "activations"));
      SQZ_RETURN_IF_ERROR(tok.alloc(T * 4, "activations"));
      SQZ_RETURN_IF_ERROR(pos.alloc(T * 4, "activations"));
      max_tok = T;
    }
    if (n_logits > max_logits) {
      SQZ_RETURN_IF_ERROR(cuda_status(cudaStreamSynchronize(stream), "sync"));
      SQZ_RETURN_IF_ERROR(logits.alloc((size_t)n_logits * c.n_vocab * 4, "logits"));
      max_logits = n_logits;
    }
    return Status::Ok();
  }
};

Model::Model() : impl_(std::make_unique<Impl>()) {}
Model::~Model() = default;
const ModelConfig& Model::config() const {
  return impl_->c;
}
const DeviceInfo& Model::device() const {
  return impl_->dev;
}
void* Model::stream() const {
  return impl_->stream;
}
size_t Model::weight_bytes() const {
  return impl_->weight_bytes;
}
double Model::load_seconds() const {
  return impl_->load_s;
}

Status Model::sync() {
  return cuda_status(cudaStreamSynchronize(impl_->stream), "forward");
}

Result<std::unique_ptr<Model>> Model::load(const LlamaModel& m) {
  const double t0 = now_s();
  SQZ_ASSIGN_OR_RETURN(DeviceInfo dev, device_query());
  const ModelConfig& c = m.config();
  if (c.head_dim != 64 && c.head_dim != 128)
    return Error(Code::kUnsupported,
                 "--device cuda: head_dim {} (the CUDA attention kernels take 64 or 128)",
                 c.head_dim);
  auto model = std::unique_ptr<Model>(new Model());
  Impl& I = *model->impl_;
  I.cpu = &m;
  I.c = c;
  I.dev = dev;
  SQZ_RETURN_IF_ERROR(
      cuda_status(cudaStreamCreateWithFlags(&I.stream, cudaStreamNonBlocking), "cudaStreamCreate"));
  const std::string ge = I.gemm.init(I.stream);
  if (!ge.empty()) return Error(Code::kInternal, "--device cuda: {}", ge);

  const int64_t E = c.n_embd, HD = c.head_dim, NQ = (int64_t)c.n_head * HD;
  const int64_t NKV = (int64_t)c.n_head_kv * HD, FF = c.n_ff, V = c.n_vocab;
  size_t total = 0;
  auto alloc16 = [&](DevBuf& b, int64_t n, const char* what) {
    total += (size_t)n * 2;
    return b.alloc((size_t)n * 2, what);
  };
  SQZ_RETURN_IF_ERROR(alloc16(I.tok_embd, V * E, "token embeddings"));
  SQZ_RETURN_IF_ERROR(I.upload_f16(m.tok_embd(), I.tok_embd.get()));
  if (&m.output() != &m.tok_embd()) {
    SQZ_RETURN_IF_ERROR(alloc16(I.output, V * E, "output weights"));
    SQZ_RETURN_IF_ERROR(I.upload_f16(m.output(), I.output.get()));
  }
  SQZ_RETURN_IF_ERROR(I.upload_f32(m.output_norm(), I.output_norm, "output norm"));
  SQZ_RETURN_IF_ERROR(I.upload_f32(m.rope_freqs(), I.freq, "rope frequencies"));
  I.layers.resize((size_t)c.n_layer);
  for (int il = 0; il < c.n_layer; il++) {
    const LayerWeights& L = m.layer(il);
    Layer& G = I.layers[(size_t)il];
    SQZ_RETURN_IF_ERROR(alloc16(G.wqkv, (NQ + 2 * NKV) * E, "attention weights"));
    auto* qkv = G.wqkv.as<uint16_t>();
    SQZ_RETURN_IF_ERROR(I.upload_f16(*L.wq, qkv));
    SQZ_RETURN_IF_ERROR(I.upload_f16(*L.wk, qkv + NQ * E));
    SQZ_RETURN_IF_ERROR(I.upload_f16(*L.wv, qkv + (NQ + NKV) * E));
    SQZ_RETURN_IF_ERROR(alloc16(G.wo, E * NQ, "attention output weights"));
    SQZ_RETURN_IF_ERROR(I.upload_f16(*L.wo, G.wo.get()));
    SQZ_RETURN_IF_ERROR(alloc16(G.wgu, 2 * FF * E, "ffn weights"));
    auto* gu = G.wgu.as<uint16_t>();
    SQZ_RETURN_IF_ERROR(I.upload_f16(*L.w_gate, gu));
    SQZ_RETURN_IF_ERROR(I.upload_f16(*L.w_up, gu + FF * E));
    SQZ_RETURN_IF_ERROR(alloc16(G.wdown, E * FF, "ffn down weights"));
    SQZ_RETURN_IF_ERROR(I.upload_f16(*L.w_down, G.wdown.get()));
    SQZ_RETURN_IF_ERROR(I.upload_f32(L.attn_norm_f, G.attn_norm, "attention norm"));
    SQZ_RETURN_IF_ERROR(I.upload_f32(L.ffn_norm_f, G.ffn_norm, "ffn norm"));
    if (!L.bq_f.empty()) {
      std::vector<float> b;
      b.reserve((size_t)(NQ + 2 * NKV));
      b.insert(b.end(), L.bq_f.begin(), L.bq_f.end());
      b.insert(b.end(), L.bk_f.begin(), L.bk_f.end());
      b.insert(b.end(), L.bv_f.begin(), L.bv_f.end());
      SQZ_RETURN_IF_ERROR(I.upload_f32(b, G.bias, "qkv bias"));
    }
  }
  I.staging.reset();
  I.weight_bytes = total;
  I.load_s = now_s() - t0;
  return model;
}

Status Model::forward(const int32_t* tokens, const int32_t* pos, int64_t n_tok, Attention& attn,
                      float* logits, int64_t n_logits) {
  Impl& I = *impl_;
  const ModelConfig& c = I.c;
  if (n_tok <= 0 || n_tok > INT32_MAX)
    return Error(Code::kInvalidArgument, "forward: batch of {} tokens", n_tok);
  if (n_logits < 0 || n_logits > n_tok)
    return Error(Code::kInvalidArgument, "forward: n_logits > n_tok");
  for (int64_t t = 0; t < n_tok; t++) {
    if (tokens[t] < 0 || tokens[t] >= c.n_vocab)
      return Error(Code::kInvalidArgument, "forward: token id {} out of range [0, {})", tokens[t],
                   c.n_vocab);
    if (t > 0 && pos[t] != pos[t - 1] + 1)
      return Error(Code::kInvalidArgument, "forward (cuda): positions must be consecutive");
  }
  SQZ_RETURN_IF_ERROR(I.ensure_scratch(n_tok, n_logits));
  cudaStream_t s = I.stream;
  const int64_t E = c.n_embd, HD = c.head_dim, NQ = (int64_t)c.n_head * HD;
  const int64_t NKV = (int64_t)c.n_head_kv * HD, FF = c.n_ff;
  SQZ_RETURN_IF_ERROR(cuda_status(
      cudaMemcpyAsync(I.tok.get(), tokens, (size_t)n_tok * 4, cudaMemcpyHostToDevice, s),
      "tokens"));
  SQZ_RETURN_IF_ERROR(
      cuda_status(cudaMemcpyAsync(I.pos.get(), pos, (size_t)n_tok * 4, cudaMemcpyHostToDevice, s),
                  "positions"));
  float* x = I.x.as<float>();
  SQZ_RETURN_IF_ERROR(sqz_status(
      fwd::embed_f32(I.tok.as<int32_t>(), I.tok_embd.get(), x, n_tok, (int)E, s), "embedding"));
  AttnStep st;
  st.n_tok = n_tok;
  st.pos = pos;
  st.pos_dev = I.pos.as<int32_t>();
  st.q16 = I.q16.get();
  st.q32 = I.q32.as<float>();
  st.k16 = I.k16.get();
  st.v16 = I.v16.get();
  st.out16 = I.att.get();
  st.stream = s;
  for (int il = 0; il < c.n_layer; il++) {
    const Layer& L = I.layers[(size_t)il];
    SQZ_RETURN_IF_ERROR(sqz_status(
        fwd::rmsnorm_f16(x, L.attn_norm.as<float>(), I.xn.get(), n_tok, (int)E, c.rms_eps, s),
        "rmsnorm"));
    SQZ_RETURN_IF_ERROR(sqz_status(
        I.gemm.run(I.xn.get(), L.wqkv.get(), I.qkv.as<float>(), n_tok, NQ + 2 * NKV, E, 0.0f),
        "qkv gemm"));
    fwd::QkvPostArgs qa;
    qa.qkv = I.qkv.as<float>();
    qa.bias = L.bias.as<float>();
    qa.pos = I.pos.as<int32_t>();
    qa.freq = I.freq.as<float>();
    qa.n_tok = (int)n_tok;
    qa.n_head = c.n_head;
    qa.n_kv = c.n_head_kv;
    qa.head_dim = c.head_dim;
    qa.neox = c.rope_neox;
    qa.q16 = I.q16.get();
    qa.q32 = I.q32.as<float>();
    qa.k16 = I.k16.get();
    qa.v16 = I.v16.get();
    SQZ_RETURN_IF_ERROR(sqz_status(fwd::qkv_post(qa, s), "rope"));
    SQZ_RETURN_IF_ERROR(attn.attend(il, st));
    // x += attn W_o^T (beta = 1 fuses the residual add).
    SQZ_RETURN_IF_ERROR(sqz_status(I.gemm.run(I.att.get(), L.wo.get(), x, n_tok, E, NQ, 1.0f),
                                   "attention output gemm"));
    SQZ_RETURN_IF_ERROR(sqz_status(
        fwd::rmsnorm_f16(x, L.ffn_norm.as<float>(), I.xn.get(), n_tok, (int)E, c.rms_eps, s),
        "rmsnorm"));
    SQZ_RETURN_IF_ERROR(
        sqz_status(I.gemm.run(I.xn.get(), L.wgu.get(), I.gu.as<float>(), n_tok, 2 * FF, E, 0.0f),
                   "gate/up gemm"));
    SQZ_RETURN_IF_ERROR(
        sqz_status(fwd::swiglu_f16(I.gu.as<float>(), I.act.get(), n_tok, (int)FF, s), "swiglu"));
    SQZ_RETURN_IF_ERROR(
        sqz_status(I.gemm.run(I.act.get(), L.wdown.get(), x, n_tok, E, FF, 1.0f), "down gemm"));
  }
  if (n_logits == 0) return cuda_status(cudaGetLastError(), "forward");
  const int64_t t0 = n_tok - n_logits;
  SQZ_RETURN_IF_ERROR(sqz_status(fwd::rmsnorm_f16(x + t0 * E, I.output_norm.as<float>(), I.xn.get(),
                                                  n_logits, (int)E, c.rms_eps, s),
                                 "output norm"));
  SQZ_RETURN_IF_ERROR(sqz_status(
      I.gemm.run(I.xn.get(), I.out_w(), I.logits.as<float>(), n_logits, c.n_vocab, E, 0.0f),
      "logits gemm"));
  SQZ_RETURN_IF_ERROR(
      cuda_status(cudaMemcpyAsync(logits, I.logits.get(), (size_t)n_logits * c.n_vocab * 4,
                                  cudaMemcpyDeviceToHost, s),
                  "logits copy"));
  return sync();
}

}  // namespace sqz::gpu
