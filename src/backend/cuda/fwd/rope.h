// After the fused QKV GEMM: bias, RoPE, and the split into the attention inputs.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace sqz::fwd {

struct QkvPostArgs {
  const float* qkv = nullptr;    // [n_tok, n_head*hd + 2*n_kv*hd] f32: q | k | v per token
  const float* bias = nullptr;   // [n_head*hd + 2*n_kv*hd] f32 or null (Qwen2)
  const int32_t* pos = nullptr;  // [n_tok] absolute positions
  const float* freq = nullptr;   // [hd/2] rotation frequency of pair i (rad per position)
  int n_tok = 0, n_head = 0, n_kv = 0, head_dim = 0;
  bool neox = false;     // pairs (i, i + hd/2) instead of (2i, 2i + 1)
  void* q16 = nullptr;   // [n_tok, n_head, hd] f16 out, post-RoPE
  float* q32 = nullptr;  // [n_tok, n_head, hd] f32 out, post-RoPE (null: not written)
  void* k16 = nullptr;   // [n_tok, n_kv, hd] f16 out, post-RoPE
  void* v16 = nullptr;   // [n_tok, n_kv, hd] f16 out
};

// The rotation angle pos * freq is formed in double and reduced to [-pi, pi] before the f32
// sin/cos, as the CPU path does (an f32 product is off by ~1e-3 rad at position 16K).
int qkv_post(const QkvPostArgs& a, cudaStream_t stream);

}  // namespace sqz::fwd
