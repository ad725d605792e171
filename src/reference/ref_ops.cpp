// Naive references; see ref_ops.h. Block layouts are written out as byte offsets from the GGUF /
// ggml format definitions on purpose, independently of backend/cpu/quant_blocks.h.
#include "reference/ref_ops.h"

#include <cmath>
#include <cstring>

#include "core/fp16.h"

namespace sqz::ref {

namespace {

// Little-endian field readers (GGUF is little-endian).
double f16_at(const uint8_t* p) {
  return fp16_to_fp32_portable((uint16_t)(p[0] | (p[1] << 8)));
}
double f32_at(const uint8_t* p) {
  uint32_t u =
      (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint32_t u32_at(const uint8_t* p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
// Nibble k (< 32) of a 16-byte array packing element k in the low nibble of byte k and element
// k + 16 in the high nibble of byte k (the Q4_0/Q4_1/Q5_x code layout).
int nib32(const uint8_t* qs, int k) {
  return k < 16 ? (qs[k] & 15) : (qs[k - 16] >> 4);
}

// Q4_K/Q5_K 12-byte scales: eight 6-bit scales and eight 6-bit mins. Sub-blocks 0-3 keep their
// 6 bits in the low bits of bytes 0-3 (scales) and 4-7 (mins). Sub-blocks 4-7 store their low
// 4 bits in bytes 8-11 (scale: low nibble, min: high nibble) and their high 2 bits in the top
// two bits of bytes 0-3 (scales) and 4-7 (mins).
void k_scale_min(const uint8_t* s, int j, int& scale, int& min) {
  if (j < 4) {
    scale = s[j] % 64;
    min = s[4 + j] % 64;
  } else {
    const int k = j - 4;
    scale = (s[8 + k] % 16) + (s[k] / 64) * 16;
    min = (s[8 + k] / 16) + (s[4 + k] / 64) * 16;
  }
}

void deq_block(DType t, const uint8_t* b, double* y) {
  switch (t) {
    case DType::kQ4_0: {  // f16 d | 16 B codes
      const double d = f16_at(b);
      for (int k = 0; k < 32; k++) y[k] = d * (nib32(b + 2, k) - 8);
      break;
    }
    case DType::kQ4_1: {  // f16 d | f16 m | 16 B codes
      const double d = f16_at(b), m = f16_at(b + 2);
      for (int k = 0; k < 32; k++) y[k] = d * nib32(b + 4, k) + m;
      break;
    }
    case DType::kQ5_0: {  // f16 d | u32 high bits | 16 B codes
      const double d = f16_at(b);
      const uint32_t qh = u32_at(b + 2);
      for (int k = 0; k < 32; k++) y[k] = d * (nib32(b + 6, k) + 16 * (int)((qh >> k) & 1) - 16);
      break;
    }
    case DType::kQ5_1: {  // f16 d | f16 m | u32 high bits | 16 B codes
      const double d = f16_at(b), m = f16_at(b + 2);
      const uint32_t qh = u32_at(b + 4);
      for (int k = 0; k < 32; k++) y[k] = d * (nib32(b + 8, k) + 16 * (int)((qh >> k) & 1)) + m;
      break;
    }
    case DType::kQ8_0: {  // f16 d | 32 x int8
      const double d = f16_at(b);
      for (int k = 0; k < 32; k++) y[k] = d * (int8_t)b[2 + k];
      break;
    }
    case DType::kQ8_1: {  // f32 d | f32 s | 32 x int8
      const double d = f32_at(b);
      for (int k = 0; k < 32; k++) y[k] = d * (int8_t)b[8 + k];
      break;
    }
    case DType::kQ4_K:    // f16 d | f16 dmin | 12 B scales | [Q5_K: 32 B high bits] | 128 B codes
    case DType::kQ5_K: {  // 64-element chunk c: low nibbles of code bytes 32c.. -> sub-block 2c,
                          // high nibbles -> sub-block 2c+1; Q5_K high bit of element 64c+32h+l
                          // is bit (2c+h) of high-bit byte l.
      const bool five = t == DType::kQ5_K;
      const double d = f16_at(b), dmin = f16_at(b + 2);
      const uint8_t* sc = b + 4;
      const uint8_t* qh = b + 16;
      const uint8_t* qs = b + (five ? 48 : 16);
      for (int k = 0; k < 256; k++) {
        const int c = k / 64, h = (k % 64) / 32, l = k % 32;
        const int sub = 2 * c + h;
        int q = h == 0 ? (qs[32 * c + l] & 15) : (qs[32 * c + l] >> 4);
        if (five) q += 16 * ((qh[l] >> sub) & 1);
        int scale, min;
        k_scale_min(sc, sub, scale, min);
        y[k] = d * scale * q - dmin * min;
      }
      break;
    }
    case DType::kQ6_K: {  // 128 B low 4 bits | 64 B high 2 bits | 16 x int8 scales | f16 d
      const uint8_t* ql = b;
      const uint8_t* qh = b + 128;
      const int8_t* sc = (const int8_t*)(b + 192);
      const double d = f16_at(b + 208);
      for (int k = 0; k < 256; k++) {
        // Within a 128-element half: quarter r (32 elements) takes its low 4 bits from code byte
        // 32*(r%2) + l (low nibble for r < 2, high nibble for r >= 2) and its high 2 bits from
        // bits 2r, 2r+1 of high-bit byte l.
        const int half = k / 128, r = (k % 128) / 32, l = k % 32;
        const uint8_t lb = ql[64 * half + 32 * (r % 2) + l];
        const int lo = r < 2 ? (lb & 15) : (lb >> 4);
        const int hi = (qh[32 * half + l] >> (2 * r)) & 3;
        y[k] = d * sc[k / 16] * ((lo + 16 * hi) - 32);
      }
      break;
    }
    case DType::kQ8_K: {  // f32 d | 256 x int8 | 16 x int16 sums
      const double d = f32_at(b);
      for (int k = 0; k < 256; k++) y[k] = d * (int8_t)b[4 + k];
      break;
    }
    default:
      break;
  }
}

}  // namespace

std::vector<double> ref_dequantize(DType t, const void* src, int64_t n) {
  const uint8_t* p = (const uint8_t*)src;
  std::vector<double> y;
  switch (t) {
    case DType::kF32:
      y.resize(n);
      for (int64_t i = 0; i < n; i++) y[i] = f32_at(p + 4 * i);
      return y;
    case DType::kF16:
      y.resize(n);
      for (int64_t i = 0; i < n; i++) y[i] = f16_at(p + 2 * i);
      return y;
    case DType::kBF16:
      y.resize(n);
      for (int64_t i = 0; i < n; i++) {
        const uint32_t u = ((uint32_t)p[2 * i] << 16) | ((uint32_t)p[2 * i + 1] << 24);
        float f;
        std::memcpy(&f, &u, 4);
        y[i] = f;
      }
      return y;
    default:
      break;
  }
  int block = 0, bytes = 0;
  switch (t) {
    case DType::kQ4_0:
      block = 32, bytes = 18;
      break;
    case DType::kQ4_1:
      block = 32, bytes = 20;
      break;
    case DType::kQ5_0:
      block = 32, bytes = 22;
      break;
    case DType::kQ5_1:
      block = 32, bytes = 24;
      break;
    case DType::kQ8_0:
      block = 32, bytes = 34;
      break;
    case DType::kQ8_1:
      block = 32, bytes = 40;
      break;
    case DType::kQ4_K:
      block = 256, bytes = 144;
      break;
    case DType::kQ5_K:
      block = 256, bytes = 176;
      break;
    case DType::kQ6_K:
      block = 256, bytes = 210;
      break;
    case DType::kQ8_K:
      block = 256, bytes = 292;
      break;
    default:
      return y;
  }
  y.resize(n);
  for (int64_t i = 0; i < n / block; i++) deq_block(t, p + i * bytes, y.data() + i * block);
  return y;
}

std::vector<double> ref_matmul(DType t, const void* W, int64_t n_in, int64_t n_out, const float* x,
                               int64_t n_tok) {
  const std::vector<double> w = ref_dequantize(t, W, n_in * n_out);  // rows are contiguous
  std::vector<double> y(n_tok * n_out);
  for (int64_t tk = 0; tk < n_tok; tk++)
    for (int64_t o = 0; o < n_out; o++) {
      double s = 0;
      for (int64_t i = 0; i < n_in; i++) s += w[o * n_in + i] * (double)x[tk * n_in + i];
      y[tk * n_out + o] = s;
    }
  return y;
}

std::vector<double> ref_rmsnorm(const float* x, const float* w, int64_t n_rows, int64_t n,
                                double eps) {
  std::vector<double> y(n_rows * n);
  for (int64_t r = 0; r < n_rows; r++) {
    double ss = 0;
    for (int64_t i = 0; i < n; i++) ss += (double)x[r * n + i] * x[r * n + i];
    const double inv = 1.0 / std::sqrt(ss / n + eps);
    for (int64_t i = 0; i < n; i++) y[r * n + i] = x[r * n + i] * inv * w[i];
  }
  return y;
}

std::vector<double> ref_rope_freqs(int64_t head_dim, double theta, double factor,
                                   double low_freq_factor, double high_freq_factor, int orig_ctx) {
  const double kPi = 3.14159265358979323846;
  std::vector<double> f(head_dim / 2);
  for (int64_t i = 0; i < head_dim / 2; i++) {
    const double inv_freq = 1.0 / std::pow(theta, (double)(2 * i) / (double)head_dim);
    f[i] = inv_freq;
    if (factor <= 0) continue;
    // HF: low_freq_wavelen = old_ctx / low_freq_factor; high_freq_wavelen = old_ctx /
    // high_freq_factor; wavelen = 2 pi / inv_freq.
    const double low_freq_wavelen = orig_ctx / low_freq_factor;
    const double high_freq_wavelen = orig_ctx / high_freq_factor;
    const double wavelen = 2 * kPi / inv_freq;
    double llama = wavelen > low_freq_wavelen ? inv_freq / factor : inv_freq;
    const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
    if (medium) {
      const double smooth =
          (orig_ctx / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
      llama = (1 - smooth) * llama / factor + smooth * llama;
    }
    f[i] = llama;
  }
  return f;
}

std::vector<double> ref_rope(const float* x, int64_t n_tok, int64_t n_heads, int64_t head_dim,
                             int64_t tok_stride, const int32_t* pos, const float* freq, bool neox) {
  std::vector<double> y(n_tok * n_heads * head_dim);
  const int64_t half = head_dim / 2;
  for (int64_t t = 0; t < n_tok; t++)
    for (int64_t h = 0; h < n_heads; h++) {
      const float* in = x + t * tok_stride + h * head_dim;
      double* out = y.data() + (t * n_heads + h) * head_dim;
      for (int64_t i = 0; i < half; i++) {
        const double a = (double)pos[t] * (double)freq[i];
        const int64_t i0 = neox ? i : 2 * i;
        const int64_t i1 = neox ? i + half : 2 * i + 1;
        const double x0 = in[i0], x1 = in[i1];
        out[i0] = x0 * std::cos(a) - x1 * std::sin(a);
        out[i1] = x0 * std::sin(a) + x1 * std::cos(a);
      }
    }
  return y;
}

std::vector<double> ref_softmax(const float* x, int64_t n_rows, int64_t n) {
  std::vector<double> y(n_rows * n);
  for (int64_t r = 0; r < n_rows; r++) {
    double mx = -INFINITY;
    for (int64_t i = 0; i < n; i++) mx = std::fmax(mx, x[r * n + i]);
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += std::exp((double)x[r * n + i] - mx);
    for (int64_t i = 0; i < n; i++) y[r * n + i] = std::exp((double)x[r * n + i] - mx) / s;
  }
  return y;
}

std::vector<double> ref_swiglu(const float* gate, const float* up, int64_t n) {
  std::vector<double> y(n);
  for (int64_t i = 0; i < n; i++) {
    const double g = gate[i];
    y[i] = g / (1.0 + std::exp(-g)) * up[i];
  }
  return y;
}

}  // namespace sqz::ref
