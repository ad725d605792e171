// Small element-wise / row-wise CPU ops used by the forward pass.
#pragma once

#include <cstdint>

namespace sqz::cpu {

// y[i] = x[i] / sqrt(mean(x²) + eps) * w[i], per row. x,y: [n_rows, n] (may alias); w: [n].
void rmsnorm(const float* x, const float* w, float* y, int64_t n_rows, int64_t n, float eps);

// Rotary embedding in place on x: [n_tok, n_heads, head_dim] (row stride `tok_stride` floats).
// pos: [n_tok] absolute positions. neox=false rotates pairs (2i, 2i+1) (GGUF llama layout);
// neox=true rotates (i, i + head_dim/2) (HF layout). freq[i] for i < head_dim/2 are the
// per-pair inverse frequencies (see rope_freqs: theta and Llama-3 scaling folded in).
void rope(float* x, int64_t n_tok, int64_t n_heads, int64_t head_dim, int64_t tok_stride,
          const int32_t* pos, const float* freq, bool neox);

// Per-pair inverse frequencies theta^(-2i/d), with optional Llama-3 frequency scaling
// (factor 0 disables it). out: [head_dim/2].
void rope_freqs(float* out, int64_t head_dim, float theta, float scale_factor,
                float low_freq_factor, float high_freq_factor, int orig_ctx);

// In-place numerically stable softmax over each row: x: [n_rows, n].
void softmax(float* x, int64_t n_rows, int64_t n);

// out[i] = silu(gate[i]) * up[i]. out may alias gate.
void swiglu(const float* gate, const float* up, float* out, int64_t n);

}  // namespace sqz::cpu
