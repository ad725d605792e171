// Llama-family forward pass on one NVIDIA GPU: weights dequantized once to f16 at load, GEMMs
// in cuBLAS (f16 operands, f32 accumulate), the residual stream in f32, attention delegated per
// layer to a gpu::Attention (dense KV cache, capture for compile, squeezed pack) exactly as the
// CPU model delegates to an AttentionProvider.
//
// Host-only header: no CUDA types, so the engine includes it whether or not CUDA is built.
// Not thread-safe: one Model serves one request at a time (one stream).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "model/llama.h"

namespace sqz::gpu {

struct DeviceInfo {
  std::string name;
  int sm_count = 0;
  int cc_major = 0, cc_minor = 0;
  size_t mem_total = 0;  // bytes
  int driver_version = 0, runtime_version = 0;
};
// The current device, or kUnsupported explaining why there is none usable (no driver, no
// device, compute capability below 8.0).
Result<DeviceInfo> device_query();

// One layer's attention inputs, all device pointers on `stream`, valid during attend().
struct AttnStep {
  int64_t n_tok = 0;
  const int32_t* pos = nullptr;      // [n_tok] host, consecutive ascending positions
  const int32_t* pos_dev = nullptr;  // [n_tok] device copy
  const void* q16 = nullptr;         // [n_tok, n_head, hd] f16, post-RoPE
  const float* q32 = nullptr;        // [n_tok, n_head, hd] f32, post-RoPE (unscaled)
  const void* k16 = nullptr;         // [n_tok, n_kv, hd] f16, post-RoPE
  const void* v16 = nullptr;         // [n_tok, n_kv, hd] f16
  void* out16 = nullptr;             // [n_tok, n_head, hd] f16: attention output to write
  void* stream = nullptr;            // cudaStream_t
};

class Attention {
 public:
  virtual ~Attention() = default;
  virtual Status attend(int layer, const AttnStep& s) = 0;
};

class Model {
 public:
  // Uploads and dequantizes every weight of `m` (which must outlive the Model).
  static Result<std::unique_ptr<Model>> load(const LlamaModel& m);
  ~Model();

  const ModelConfig& config() const;
  const DeviceInfo& device() const;
  void* stream() const;  // cudaStream_t of all work
  size_t weight_bytes() const;
  double load_seconds() const;

  // Runs n_tok tokens at positions pos (consecutive). logits: host [n_logits, n_vocab] f32 for
  // the last n_logits tokens (0 = none; then the call returns without waiting for the GPU).
  Status forward(const int32_t* tokens, const int32_t* pos, int64_t n_tok, Attention& attn,
                 float* logits, int64_t n_logits);
  // Waits for the stream; reports any asynchronous fault.
  Status sync();

 private:
  Model();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sqz::gpu
