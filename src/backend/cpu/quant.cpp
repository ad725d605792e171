// Quantized formats: portable scalar dequantizers, quantizers and dot products, plus the
// dispatch that picks the SIMD kernels of quant_simd.cpp when they exist for a type.
//
// The scalar code is both the fallback for hosts without AVX-512 and the baseline the tests
// compare the SIMD kernels against; it is written for clarity, not speed.
#include "backend/cpu/quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/cpu/quant_blocks.h"
#include "backend/cpu/quant_impl.h"

namespace sqz::cpu {

namespace {

inline float h2f(f16_t h) {
  return fp16_to_fp32(h);
}
inline f16_t f2h(float f) {
  return fp32_to_fp16(f);
}

// Round to nearest, ties to even (the default FP environment), which is what the SIMD
// quantizers' cvtps2dq does, so scalar and SIMD activations quantize identically. Callers clamp.
inline int iround(float x) {
  return (int)std::lrint(x);
}

// Smallest f16 >= v for finite v >= 0 (so a scale rounded to f16 never shrinks the range it
// has to cover; that keeps the quantizers free of clipping).
f16_t f16_ceil(float v) {
  f16_t h = f2h(v);
  if (h2f(h) < v && (h & 0x7fff) < 0x7bff) h++;  // positive finite: next representable value up
  return h;
}

// ---------------------------------------------------------------- dequantize (scalar)

void dq_f32(const void* src, float* dst, int64_t n) {
  std::memcpy(dst, src, n * sizeof(float));
}
void dq_f16(const void* src, float* dst, int64_t n) {
  const f16_t* s = (const f16_t*)src;
  for (int64_t i = 0; i < n; i++) dst[i] = h2f(s[i]);
}
void dq_bf16(const void* src, float* dst, int64_t n) {
  const bf16_t* s = (const bf16_t*)src;
  for (int64_t i = 0; i < n; i++) dst[i] = bf16_to_fp32(s[i]);
}

void dq_q4_0(const void* src, float* dst, int64_t n) {
  const BlockQ4_0* b = (const BlockQ4_0*)src;
  for (int64_t i = 0; i < n / kQK; i++, dst += kQK) {
    const float d = h2f(b[i].d);
    for (int j = 0; j < kQK / 2; j++) {
      dst[j] = d * ((b[i].qs[j] & 15) - 8);
      dst[j + 16] = d * ((b[i].qs[j] >> 4) - 8);
    }
  }
}
void dq_q4_1(const void* src, float* dst, int64_t n) {
  const BlockQ4_1* b = (const BlockQ4_1*)src;
  for (int64_t i = 0; i < n / kQK; i++, dst += kQK) {
    const float d = h2f(b[i].d), m = h2f(b[i].m);
    for (int j = 0; j < kQK / 2; j++) {
      dst[j] = std::fma(d, (float)(b[i].qs[j] & 15), m);  // fma: bit-identical to the SIMD path
      dst[j + 16] = std::fma(d, (float)(b[i].qs[j] >> 4), m);
    }
  }
}
inline uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
void dq_q5_0(const void* src, float* dst, int64_t n) {
  const BlockQ5_0* b = (const BlockQ5_0*)src;
  for (int64_t i = 0; i < n / kQK; i++, dst += kQK) {
    const float d = h2f(b[i].d);
    const uint32_t qh = load_u32(b[i].qh);
    for (int j = 0; j < kQK / 2; j++) {
      const int lo = (b[i].qs[j] & 15) | (((qh >> j) & 1) << 4);
      const int hi = (b[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
      dst[j] = d * (lo - 16);
      dst[j + 16] = d * (hi - 16);
    }
  }
}
void dq_q5_1(const void* src, float* dst, int64_t n) {
  const BlockQ5_1* b = (const BlockQ5_1*)src;
  for (int64_t i = 0; i < n / kQK; i++, dst += kQK) {
    const float d = h2f(b[i].d), m = h2f(b[i].m);
    const uint32_t qh = load_u32(b[i].qh);
    for (int j = 0; j < kQK / 2; j++) {
      const int lo = (b[i].qs[j] & 15) | (((qh >> j) & 1) << 4);
      const int hi = (b[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
      dst[j] = std::fma(d, (float)lo, m);
      dst[j + 16] = std::fma(d, (float)hi, m);
    }
  }
}
void dq_q8_0(const void* src, float* dst, int64_t n) {
  const BlockQ8_0* b = (const BlockQ8_0*)src;
  for (int64_t i = 0; i < n / kQK; i++, dst += kQK) {
    const float d = h2f(b[i].d);
    for (int j = 0; j < kQK; j++) dst[j] = d * b[i].qs[j];
  }
}
void dq_q8_1(const void* src, float* dst, int64_t n) {
  const BlockQ8_1* b = (const BlockQ8_1*)src;
  for (int64_t i = 0; i < n / kQK; i++, dst += kQK)
    for (int j = 0; j < kQK; j++) dst[j] = b[i].d * b[i].qs[j];
}
void dq_q4_k(const void* src, float* dst, int64_t n) {
  const BlockQ4_K* b = (const BlockQ4_K*)src;
  for (int64_t i = 0; i < n / kQKK; i++) {
    const float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
    for (int c = 0; c < 4; c++) {
      int sc0, m0, sc1, m1;
      unpack_k_scale(b[i].scales, 2 * c, &sc0, &m0);
      unpack_k_scale(b[i].scales, 2 * c + 1, &sc1, &m1);
      const float d0 = d * sc0, mm0 = dmin * m0, d1 = d * sc1, mm1 = dmin * m1;
      const uint8_t* q = b[i].qs + 32 * c;
      for (int l = 0; l < 32; l++) {  // fma: bit-identical to the SIMD path
        dst[l] = std::fma(d0, (float)(q[l] & 15), -mm0);
        dst[l + 32] = std::fma(d1, (float)(q[l] >> 4), -mm1);
      }
      dst += 64;
    }
  }
}
void dq_q5_k(const void* src, float* dst, int64_t n) {
  const BlockQ5_K* b = (const BlockQ5_K*)src;
  for (int64_t i = 0; i < n / kQKK; i++) {
    const float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
    for (int c = 0; c < 4; c++) {
      int sc0, m0, sc1, m1;
      unpack_k_scale(b[i].scales, 2 * c, &sc0, &m0);
      unpack_k_scale(b[i].scales, 2 * c + 1, &sc1, &m1);
      const float d0 = d * sc0, mm0 = dmin * m0, d1 = d * sc1, mm1 = dmin * m1;
      const uint8_t* q = b[i].qs + 32 * c;
      for (int l = 0; l < 32; l++) {
        const int h0 = (b[i].qh[l] >> (2 * c)) & 1, h1 = (b[i].qh[l] >> (2 * c + 1)) & 1;
        dst[l] = std::fma(d0, (float)((q[l] & 15) | (h0 << 4)), -mm0);
        dst[l + 32] = std::fma(d1, (float)((q[l] >> 4) | (h1 << 4)), -mm1);
      }
      dst += 64;
    }
  }
}
void dq_q6_k(const void* src, float* dst, int64_t n) {
  const BlockQ6_K* b = (const BlockQ6_K*)src;
  for (int64_t i = 0; i < n / kQKK; i++) {
    const float d = h2f(b[i].d);
    for (int h = 0; h < 2; h++) {
      const uint8_t* L = b[i].ql + 64 * h;
      const uint8_t* H = b[i].qh + 32 * h;
      const int8_t* S = b[i].scales + 8 * h;
      for (int l = 0; l < 32; l++) {
        const int is = l / 16;
        const int q0 = ((L[l] & 15) | (((H[l] >> 0) & 3) << 4)) - 32;
        const int q1 = ((L[l + 32] & 15) | (((H[l] >> 2) & 3) << 4)) - 32;
        const int q2 = ((L[l] >> 4) | (((H[l] >> 4) & 3) << 4)) - 32;
        const int q3 = ((L[l + 32] >> 4) | (((H[l] >> 6) & 3) << 4)) - 32;
        dst[l] = d * S[is + 0] * q0;
        dst[l + 32] = d * S[is + 2] * q1;
        dst[l + 64] = d * S[is + 4] * q2;
        dst[l + 96] = d * S[is + 6] * q3;
      }
      dst += 128;
    }
  }
}
void dq_q8_k(const void* src, float* dst, int64_t n) {
  const BlockQ8_K* b = (const BlockQ8_K*)src;
  for (int64_t i = 0; i < n / kQKK; i++, dst += kQKK)
    for (int j = 0; j < kQKK; j++) dst[j] = b[i].d * b[i].qs[j];
}

// ---------------------------------------------------------------- quantize (scalar)
// Reference-quality quantizers: simple min/max (or absmax) scale choice per (sub-)block, scales
// rounded *up* when stored in reduced precision so no element is ever clipped; the error is
// then at most half a quantization step (plus the rounding of the scale itself).

void q_f32(const float* src, void* dst, int64_t n) {
  std::memcpy(dst, src, n * sizeof(float));
}
void q_f16(const float* src, void* dst, int64_t n) {
  f16_t* d = (f16_t*)dst;
  for (int64_t i = 0; i < n; i++) d[i] = f2h(src[i]);
}
void q_bf16(const float* src, void* dst, int64_t n) {
  bf16_t* d = (bf16_t*)dst;
  for (int64_t i = 0; i < n; i++) d[i] = fp32_to_bf16(src[i]);
}

// Signed value of largest magnitude (ggml's trick for Q4_0/Q5_0: mapping it to the most negative
// code uses the asymmetric range [-8, 7] fully on the side that needs it).
float signed_absmax(const float* x, int n) {
  float amax = 0, mx = 0;
  for (int j = 0; j < n; j++)
    if (std::fabs(x[j]) > amax) {
      amax = std::fabs(x[j]);
      mx = x[j];
    }
  return mx;
}

// d = mx / -levels as f16 with its magnitude rounded up: mx then maps exactly to the most
// negative code and nothing beyond one step on the other side gets clipped.
f16_t neg_scale_f16(float mx, int levels) {
  const f16_t mag = f16_ceil(std::fabs(mx) / (float)levels);
  return mx > 0 ? (f16_t)(mag | 0x8000) : mag;
}

void q_q4_0(const float* src, void* dst, int64_t n) {
  BlockQ4_0* b = (BlockQ4_0*)dst;
  for (int64_t i = 0; i < n / kQK; i++, src += kQK) {
    const float mx = signed_absmax(src, kQK);
    b[i].d = neg_scale_f16(mx, 8);
    const float d = h2f(b[i].d);
    const float id = d != 0 ? 1.0f / d : 0.0f;
    for (int j = 0; j < kQK / 2; j++) {
      const int q0 = std::clamp((int)std::floor(src[j] * id + 8.5f), 0, 15);
      const int q1 = std::clamp((int)std::floor(src[j + 16] * id + 8.5f), 0, 15);
      b[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
    }
  }
}
void q_q5_0(const float* src, void* dst, int64_t n) {
  BlockQ5_0* b = (BlockQ5_0*)dst;
  for (int64_t i = 0; i < n / kQK; i++, src += kQK) {
    const float mx = signed_absmax(src, kQK);
    b[i].d = neg_scale_f16(mx, 16);
    const float d = h2f(b[i].d);
    const float id = d != 0 ? 1.0f / d : 0.0f;
    uint32_t qh = 0;
    for (int j = 0; j < kQK / 2; j++) {
      const int q0 = std::clamp((int)std::floor(src[j] * id + 16.5f), 0, 31);
      const int q1 = std::clamp((int)std::floor(src[j + 16] * id + 16.5f), 0, 31);
      b[i].qs[j] = (uint8_t)((q0 & 15) | ((q1 & 15) << 4));
      qh |= (uint32_t)(q0 >> 4) << j;
      qh |= (uint32_t)(q1 >> 4) << (j + 16);
    }
    std::memcpy(b[i].qh, &qh, 4);
  }
}

// Affine (d, m) for the Q4_1 / Q5_1 blocks: x ~ d*q + m with q in [0, levels].
void affine_params(const float* x, int n, int levels, f16_t* d16, f16_t* m16) {
  float lo = x[0], hi = x[0];
  for (int j = 1; j < n; j++) {
    lo = std::min(lo, x[j]);
    hi = std::max(hi, x[j]);
  }
  // Round the minimum down in f16 so every element stays >= m; then size d for hi - m.
  f16_t m = f2h(lo);
  if (h2f(m) > lo) m = (m & 0x8000) ? (f16_t)(m + 1) : (m == 0 ? (f16_t)0x8001 : (f16_t)(m - 1));
  *m16 = m;
  *d16 = f16_ceil((hi - h2f(m)) / levels);
}
void q_q4_1(const float* src, void* dst, int64_t n) {
  BlockQ4_1* b = (BlockQ4_1*)dst;
  for (int64_t i = 0; i < n / kQK; i++, src += kQK) {
    affine_params(src, kQK, 15, &b[i].d, &b[i].m);
    const float d = h2f(b[i].d), m = h2f(b[i].m);
    const float id = d != 0 ? 1.0f / d : 0.0f;
    for (int j = 0; j < kQK / 2; j++) {
      const int q0 = std::clamp(iround((src[j] - m) * id), 0, 15);
      const int q1 = std::clamp(iround((src[j + 16] - m) * id), 0, 15);
      b[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
    }
  }
}
void q_q5_1(const float* src, void* dst, int64_t n) {
  BlockQ5_1* b = (BlockQ5_1*)dst;
  for (int64_t i = 0; i < n / kQK; i++, src += kQK) {
    affine_params(src, kQK, 31, &b[i].d, &b[i].m);
    const float d = h2f(b[i].d), m = h2f(b[i].m);
    const float id = d != 0 ? 1.0f / d : 0.0f;
    uint32_t qh = 0;
    for (int j = 0; j < kQK / 2; j++) {
      const int q0 = std::clamp(iround((src[j] - m) * id), 0, 31);
      const int q1 = std::clamp(iround((src[j + 16] - m) * id), 0, 31);
      b[i].qs[j] = (uint8_t)((q0 & 15) | ((q1 & 15) << 4));
      qh |= (uint32_t)(q0 >> 4) << j;
      qh |= (uint32_t)(q1 >> 4) << (j + 16);
    }
    std::memcpy(b[i].qh, &qh, 4);
  }
}

float absmax(const float* x, int n) {
  float a = 0;
  for (int j = 0; j < n; j++) a = std::max(a, std::fabs(x[j]));
  return a;
}

void q_q8_0(const float* src, void* dst, int64_t n) {
  BlockQ8_0* b = (BlockQ8_0*)dst;
  for (int64_t i = 0; i < n / kQK; i++, src += kQK) {
    b[i].d = f2h(absmax(src, kQK) / 127.0f);
    const float d = h2f(b[i].d);  // quantize with the stored scale: error <= d/2 exactly
    const float id = d != 0 ? 1.0f / d : 0.0f;
    for (int j = 0; j < kQK; j++) b[i].qs[j] = (int8_t)std::clamp(iround(src[j] * id), -127, 127);
  }
}
void q_q8_1(const float* src, void* dst, int64_t n) {
  BlockQ8_1* b = (BlockQ8_1*)dst;
  for (int64_t i = 0; i < n / kQK; i++, src += kQK) {
    const float d = absmax(src, kQK) / 127.0f;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    int sum = 0;
    for (int j = 0; j < kQK; j++) {
      b[i].qs[j] = (int8_t)std::clamp(iround(src[j] * id), -127, 127);
      sum += b[i].qs[j];
    }
    b[i].d = d;
    b[i].s = d * (float)sum;
  }
}
void q_q8_k(const float* src, void* dst, int64_t n) {
  BlockQ8_K* b = (BlockQ8_K*)dst;
  for (int64_t i = 0; i < n / kQKK; i++, src += kQKK) {
    const float d = absmax(src, kQKK) / 127.0f;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    for (int j = 0; j < kQKK; j++) b[i].qs[j] = (int8_t)std::clamp(iround(src[j] * id), -127, 127);
    for (int g = 0; g < kQKK / 16; g++) {
      int s = 0;
      for (int j = 0; j < 16; j++) s += b[i].qs[16 * g + j];
      b[i].bsums[g] = (int16_t)s;
    }
    b[i].d = d;
  }
}

void pack_k_scales(const int* sc, const int* mn, uint8_t* out) {
  for (int j = 0; j < 4; j++) {
    out[j] = (uint8_t)((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
    out[j + 4] = (uint8_t)((mn[j] & 63) | ((mn[j + 4] >> 4) << 6));
    out[j + 8] = (uint8_t)((sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4));
  }
}

// Q4_K / Q5_K: per 32-element sub-block x ~ d*sc*q - dmin*mn, sc/mn 6-bit, q in [0, levels].
// Mins are clamped to <= 0 (the format can only subtract). Order matters: the stored min of a
// sub-block is rounded up first, then the scale is sized to cover max + that min.
template <int kLevels>
void k_quant_params(const float* x, f16_t* d16, f16_t* dmin16, int* sc, int* mn) {
  float negmin[8], hi[8];
  float max_negmin = 0;
  for (int j = 0; j < 8; j++) {
    float lo = 0, h = 0;
    for (int l = 0; l < 32; l++) {
      lo = std::min(lo, x[32 * j + l]);
      h = std::max(h, x[32 * j + l]);
    }
    negmin[j] = -lo;
    hi[j] = h;
    max_negmin = std::max(max_negmin, negmin[j]);
  }
  *dmin16 = f16_ceil(max_negmin / 63.0f);
  const float dmin = h2f(*dmin16);
  float req[8], max_req = 0;
  for (int j = 0; j < 8; j++) {
    mn[j] = dmin > 0 ? std::min(63, (int)std::ceil(negmin[j] / dmin)) : 0;
    req[j] = (hi[j] + dmin * mn[j]) / kLevels;
    max_req = std::max(max_req, req[j]);
  }
  *d16 = f16_ceil(max_req / 63.0f);
  const float d = h2f(*d16);
  for (int j = 0; j < 8; j++) sc[j] = d > 0 ? std::min(63, (int)std::ceil(req[j] / d)) : 0;
}

void q_q4_k(const float* src, void* dst, int64_t n) {
  BlockQ4_K* b = (BlockQ4_K*)dst;
  for (int64_t i = 0; i < n / kQKK; i++, src += kQKK) {
    int sc[8], mn[8];
    k_quant_params<15>(src, &b[i].d, &b[i].dmin, sc, mn);
    pack_k_scales(sc, mn, b[i].scales);
    const float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
    uint8_t q[kQKK];
    for (int j = 0; j < 8; j++) {
      const float ds = d * sc[j], dm = dmin * mn[j];
      const float id = ds != 0 ? 1.0f / ds : 0.0f;
      for (int l = 0; l < 32; l++)
        q[32 * j + l] = (uint8_t)std::clamp(iround((src[32 * j + l] + dm) * id), 0, 15);
    }
    for (int c = 0; c < 4; c++)
      for (int l = 0; l < 32; l++)
        b[i].qs[32 * c + l] = (uint8_t)(q[64 * c + l] | (q[64 * c + 32 + l] << 4));
  }
}
void q_q5_k(const float* src, void* dst, int64_t n) {
  BlockQ5_K* b = (BlockQ5_K*)dst;
  for (int64_t i = 0; i < n / kQKK; i++, src += kQKK) {
    int sc[8], mn[8];
    k_quant_params<31>(src, &b[i].d, &b[i].dmin, sc, mn);
    pack_k_scales(sc, mn, b[i].scales);
    const float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
    uint8_t q[kQKK];
    for (int j = 0; j < 8; j++) {
      const float ds = d * sc[j], dm = dmin * mn[j];
      const float id = ds != 0 ? 1.0f / ds : 0.0f;
      for (int l = 0; l < 32; l++)
        q[32 * j + l] = (uint8_t)std::clamp(iround((src[32 * j + l] + dm) * id), 0, 31);
    }
    std::memset(b[i].qh, 0, sizeof(b[i].qh));
    for (int c = 0; c < 4; c++)
      for (int l = 0; l < 32; l++) {
        const int q0 = q[64 * c + l], q1 = q[64 * c + 32 + l];
        b[i].qs[32 * c + l] = (uint8_t)((q0 & 15) | ((q1 & 15) << 4));
        b[i].qh[l] |= (uint8_t)(((q0 >> 4) << (2 * c)) | ((q1 >> 4) << (2 * c + 1)));
      }
  }
}
// Q6_K: symmetric, 16-element sub-blocks, q in [-32, 31] used as [-31, 31]; int8 scales.
void q_q6_k(const float* src, void* dst, int64_t n) {
  BlockQ6_K* b = (BlockQ6_K*)dst;
  for (int64_t i = 0; i < n / kQKK; i++, src += kQKK) {
    float req[16], max_req = 0;
    for (int j = 0; j < 16; j++) {
      req[j] = absmax(src + 16 * j, 16) / 31.0f;
      max_req = std::max(max_req, req[j]);
    }
    b[i].d = f16_ceil(max_req / 127.0f);
    const float d = h2f(b[i].d);
    uint8_t q[kQKK];
    for (int j = 0; j < 16; j++) {
      const int sc = d > 0 ? std::min(127, (int)std::ceil(req[j] / d)) : 0;
      b[i].scales[j] = (int8_t)sc;
      const float ds = d * sc;
      const float id = ds != 0 ? 1.0f / ds : 0.0f;
      for (int l = 0; l < 16; l++)
        q[16 * j + l] = (uint8_t)(std::clamp(iround(src[16 * j + l] * id), -32, 31) + 32);
    }
    for (int h = 0; h < 2; h++) {
      uint8_t* L = b[i].ql + 64 * h;
      uint8_t* H = b[i].qh + 32 * h;
      const uint8_t* Q = q + 128 * h;
      for (int l = 0; l < 32; l++) {
        L[l] = (uint8_t)((Q[l] & 15) | ((Q[l + 64] & 15) << 4));
        L[l + 32] = (uint8_t)((Q[l + 32] & 15) | ((Q[l + 96] & 15) << 4));
        H[l] = (uint8_t)((Q[l] >> 4) | ((Q[l + 32] >> 4) << 2) | ((Q[l + 64] >> 4) << 4) |
                         ((Q[l + 96] >> 4) << 6));
      }
    }
  }
}

// ---------------------------------------------------------------- vec_dot (scalar)
// Integer dot per block, one float scale per block, exactly the arithmetic the SIMD kernels do.

float vd_f32(int64_t n, const void* w, const void* x) {
  const float* a = (const float*)w;
  const float* b = (const float*)x;
  float s = 0;
  for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
  return s;
}
float vd_f16(int64_t n, const void* w, const void* x) {
  const f16_t* a = (const f16_t*)w;
  const float* b = (const float*)x;
  float s = 0;
  for (int64_t i = 0; i < n; i++) s += h2f(a[i]) * b[i];
  return s;
}
float vd_bf16(int64_t n, const void* w, const void* x) {
  const bf16_t* a = (const bf16_t*)w;
  const float* b = (const float*)x;
  float s = 0;
  for (int64_t i = 0; i < n; i++) s += bf16_to_fp32(a[i]) * b[i];
  return s;
}
float vd_q4_0(int64_t n, const void* w, const void* x) {
  const BlockQ4_0* a = (const BlockQ4_0*)w;
  const BlockQ8_1* b = (const BlockQ8_1*)x;
  float s = 0;
  for (int64_t i = 0; i < n / kQK; i++) {
    int acc = 0;
    for (int j = 0; j < 16; j++)
      acc += ((a[i].qs[j] & 15) - 8) * b[i].qs[j] + ((a[i].qs[j] >> 4) - 8) * b[i].qs[j + 16];
    s += h2f(a[i].d) * b[i].d * (float)acc;
  }
  return s;
}
float vd_q4_1(int64_t n, const void* w, const void* x) {
  const BlockQ4_1* a = (const BlockQ4_1*)w;
  const BlockQ8_1* b = (const BlockQ8_1*)x;
  float s = 0;
  for (int64_t i = 0; i < n / kQK; i++) {
    int acc = 0;
    for (int j = 0; j < 16; j++)
      acc += (a[i].qs[j] & 15) * b[i].qs[j] + (a[i].qs[j] >> 4) * b[i].qs[j + 16];
    s += h2f(a[i].d) * b[i].d * (float)acc + h2f(a[i].m) * b[i].s;
  }
  return s;
}
float vd_q5_0(int64_t n, const void* w, const void* x) {
  const BlockQ5_0* a = (const BlockQ5_0*)w;
  const BlockQ8_1* b = (const BlockQ8_1*)x;
  float s = 0;
  for (int64_t i = 0; i < n / kQK; i++) {
    const uint32_t qh = load_u32(a[i].qh);
    int acc = 0;
    for (int j = 0; j < 16; j++) {
      const int lo = (a[i].qs[j] & 15) | (((qh >> j) & 1) << 4);
      const int hi = (a[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
      acc += (lo - 16) * b[i].qs[j] + (hi - 16) * b[i].qs[j + 16];
    }
    s += h2f(a[i].d) * b[i].d * (float)acc;
  }
  return s;
}
float vd_q5_1(int64_t n, const void* w, const void* x) {
  const BlockQ5_1* a = (const BlockQ5_1*)w;
  const BlockQ8_1* b = (const BlockQ8_1*)x;
  float s = 0;
  for (int64_t i = 0; i < n / kQK; i++) {
    const uint32_t qh = load_u32(a[i].qh);
    int acc = 0;
    for (int j = 0; j < 16; j++) {
      const int lo = (a[i].qs[j] & 15) | (((qh >> j) & 1) << 4);
      const int hi = (a[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
      acc += lo * b[i].qs[j] + hi * b[i].qs[j + 16];
    }
    s += h2f(a[i].d) * b[i].d * (float)acc + h2f(a[i].m) * b[i].s;
  }
  return s;
}
float vd_q8_0(int64_t n, const void* w, const void* x) {
  const BlockQ8_0* a = (const BlockQ8_0*)w;
  const BlockQ8_1* b = (const BlockQ8_1*)x;
  float s = 0;
  for (int64_t i = 0; i < n / kQK; i++) {
    int acc = 0;
    for (int j = 0; j < kQK; j++) acc += a[i].qs[j] * b[i].qs[j];
    s += h2f(a[i].d) * b[i].d * (float)acc;
  }
  return s;
}
// K-quants: sum over sub-blocks of sc * (q . x) as int, the min term through Q8_K's bsums.
float vd_q4_k(int64_t n, const void* w, const void* x) {
  const BlockQ4_K* a = (const BlockQ4_K*)w;
  const BlockQ8_K* b = (const BlockQ8_K*)x;
  float s = 0;
  for (int64_t i = 0; i < n / kQKK; i++) {
    int sum_q = 0, sum_m = 0;
    for (int c = 0; c < 4; c++) {
      int sc0, m0, sc1, m1;
      unpack_k_scale(a[i].scales, 2 * c, &sc0, &m0);
      unpack_k_scale(a[i].scales, 2 * c + 1, &sc1, &m1);
      int d0 = 0, d1 = 0;
      for (int l = 0; l < 32; l++) {
        d0 += (a[i].qs[32 * c + l] & 15) * b[i].qs[64 * c + l];
        d1 += (a[i].qs[32 * c + l] >> 4) * b[i].qs[64 * c + 32 + l];
      }
      sum_q += sc0 * d0 + sc1 * d1;
      sum_m += m0 * (b[i].bsums[4 * c] + b[i].bsums[4 * c + 1]) +
               m1 * (b[i].bsums[4 * c + 2] + b[i].bsums[4 * c + 3]);
    }
    s += b[i].d * (h2f(a[i].d) * (float)sum_q - h2f(a[i].dmin) * (float)sum_m);
  }
  return s;
}
float vd_q5_k(int64_t n, const void* w, const void* x) {
  const BlockQ5_K* a = (const BlockQ5_K*)w;
  const BlockQ8_K* b = (const BlockQ8_K*)x;
  float s = 0;
  for (int64_t i = 0; i < n / kQKK; i++) {
    int sum_q = 0, sum_m = 0;
    for (int c = 0; c < 4; c++) {
      int sc0, m0, sc1, m1;
      unpack_k_scale(a[i].scales, 2 * c, &sc0, &m0);
      unpack_k_scale(a[i].scales, 2 * c + 1, &sc1, &m1);
      int d0 = 0, d1 = 0;
      for (int l = 0; l < 32; l++) {
        const int q0 = (a[i].qs[32 * c + l] & 15) | (((a[i].qh[l] >> (2 * c)) & 1) << 4);
        const int q1 = (a[i].qs[32 * c + l] >> 4) | (((a[i].qh[l] >> (2 * c + 1)) & 1) << 4);
        d0 += q0 * b[i].qs[64 * c + l];
        d1 += q1 * b[i].qs[64 * c + 32 + l];
      }
      sum_q += sc0 * d0 + sc1 * d1;
      sum_m += m0 * (b[i].bsums[4 * c] + b[i].bsums[4 * c + 1]) +
               m1 * (b[i].bsums[4 * c + 2] + b[i].bsums[4 * c + 3]);
    }
    s += b[i].d * (h2f(a[i].d) * (float)sum_q - h2f(a[i].dmin) * (float)sum_m);
  }
  return s;
}
float vd_q6_k(int64_t n, const void* w, const void* x) {
  const BlockQ6_K* a = (const BlockQ6_K*)w;
  const BlockQ8_K* b = (const BlockQ8_K*)x;
  float s = 0;
  for (int64_t i = 0; i < n / kQKK; i++) {
    int sub[16] = {};  // q . x per 16-element sub-block, q already offset by -32
    for (int h = 0; h < 2; h++) {
      const uint8_t* L = a[i].ql + 64 * h;
      const uint8_t* H = a[i].qh + 32 * h;
      const int8_t* X = b[i].qs + 128 * h;
      for (int l = 0; l < 32; l++) {
        const int q0 = ((L[l] & 15) | (((H[l] >> 0) & 3) << 4)) - 32;
        const int q1 = ((L[l + 32] & 15) | (((H[l] >> 2) & 3) << 4)) - 32;
        const int q2 = ((L[l] >> 4) | (((H[l] >> 4) & 3) << 4)) - 32;
        const int q3 = ((L[l + 32] >> 4) | (((H[l] >> 6) & 3) << 4)) - 32;
        const int is = 8 * h + l / 16;
        sub[is + 0] += q0 * X[l];
        sub[is + 2] += q1 * X[l + 32];
        sub[is + 4] += q2 * X[l + 64];
        sub[is + 6] += q3 * X[l + 96];
      }
    }
    int acc = 0;
    for (int j = 0; j < 16; j++) acc += a[i].scales[j] * sub[j];
    s += h2f(a[i].d) * b[i].d * (float)acc;
  }
  return s;
}

struct TypeFns {
  DType type;
  DType dot_type;
  detail::DequantFn dq;
  detail::QuantFn q;
  detail::VecDotFn vd;  // nullptr: not a weight type
};
constexpr TypeFns kFns[] = {
    {DType::kF32, DType::kF32, dq_f32, q_f32, vd_f32},
    {DType::kF16, DType::kF32, dq_f16, q_f16, vd_f16},
    {DType::kBF16, DType::kF32, dq_bf16, q_bf16, vd_bf16},
    {DType::kQ4_0, DType::kQ8_1, dq_q4_0, q_q4_0, vd_q4_0},
    {DType::kQ4_1, DType::kQ8_1, dq_q4_1, q_q4_1, vd_q4_1},
    {DType::kQ5_0, DType::kQ8_1, dq_q5_0, q_q5_0, vd_q5_0},
    {DType::kQ5_1, DType::kQ8_1, dq_q5_1, q_q5_1, vd_q5_1},
    {DType::kQ8_0, DType::kQ8_1, dq_q8_0, q_q8_0, vd_q8_0},
    {DType::kQ8_1, DType::kInvalid, dq_q8_1, q_q8_1, nullptr},
    {DType::kQ4_K, DType::kQ8_K, dq_q4_k, q_q4_k, vd_q4_k},
    {DType::kQ5_K, DType::kQ8_K, dq_q5_k, q_q5_k, vd_q5_k},
    {DType::kQ6_K, DType::kQ8_K, dq_q6_k, q_q6_k, vd_q6_k},
    {DType::kQ8_K, DType::kInvalid, dq_q8_k, q_q8_k, nullptr},
};

const TypeFns* fns(DType t) {
  for (const auto& f : kFns)
    if (f.type == t) return &f;
  return nullptr;
}

}  // namespace

namespace detail {
VecDotFn vec_dot_fn(DType t) {
  if (VecDotFn f = simd_vec_dot_fn(t)) return f;
  const TypeFns* f = fns(t);
  return f ? f->vd : nullptr;
}
DequantFn dequant_fn(DType t) {
  if (DequantFn f = simd_dequant_fn(t)) return f;
  const TypeFns* f = fns(t);
  return f ? f->dq : nullptr;
}
}  // namespace detail

bool is_weight_type(DType t) {
  const TypeFns* f = fns(t);
  return f && f->vd;
}

int64_t block_size(DType t) {
  const DTypeTraits* tr = dtype_traits(t);
  return tr ? tr->block_size : 0;
}

DType vec_dot_type(DType t) {
  const TypeFns* f = fns(t);
  return f ? f->dot_type : DType::kInvalid;
}

void dequantize_row(DType t, const void* src, float* dst, int64_t n) {
  if (detail::DequantFn f = detail::dequant_fn(t)) f(src, dst, n);
}

void dequantize_row_scalar(DType t, const void* src, float* dst, int64_t n) {
  if (const TypeFns* f = fns(t)) f->dq(src, dst, n);
}

void dequantize_row_bf16(DType t, const void* src, uint16_t* dst, int64_t n) {
  // Through an f32 staging buffer of 256 elements (a multiple of every block size): the
  // dequantizers stay single-purpose and the f32->bf16 rounding loop vectorises.
  const detail::DequantFn dq = detail::dequant_fn(t);
  if (!dq) return;
  constexpr int64_t kChunk = 256;
  float tmp[kChunk];
  for (int64_t i = 0; i < n; i += kChunk) {
    const int64_t len = std::min(kChunk, n - i);  // whole blocks: n is a block multiple
    dq((const uint8_t*)src + dtype_row_size(t, i), tmp, len);
    for (int64_t j = 0; j < len; j++) dst[i + j] = fp32_to_bf16(tmp[j]);
  }
}

void quantize_row(DType t, const float* src, void* dst, int64_t n) {
  if (detail::QuantFn f = detail::simd_quant_fn(t)) return f(src, dst, n);
  if (const TypeFns* f = fns(t)) f->q(src, dst, n);
}

void quantize_row_scalar(DType t, const float* src, void* dst, int64_t n) {
  if (const TypeFns* f = fns(t)) f->q(src, dst, n);
}

float vec_dot(DType t, int64_t n, const void* w_row, const void* x) {
  const detail::VecDotFn f = detail::vec_dot_fn(t);
  return f ? f(n, w_row, x) : 0.0f;
}

float vec_dot_scalar(DType t, int64_t n, const void* w_row, const void* x) {
  const TypeFns* f = fns(t);
  return f && f->vd ? f->vd(n, w_row, x) : 0.0f;
}

}  // namespace sqz::cpu
