// Half / bfloat16 conversions. F16C is assumed on x86 (every AVX2 machine has it); the portable
// path exists for other hosts and for the naive references.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace sqz {

using f16_t = uint16_t;   // IEEE binary16 bits
using bf16_t = uint16_t;  // bfloat16 bits

inline float fp16_to_fp32_portable(f16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400) == 0) {
        mant <<= 1;
        exp--;
      }
      mant &= 0x3ff;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline f16_t fp32_to_fp16_portable(float f) {
  // Round-to-nearest-even, handles overflow to inf, NaN and subnormals.
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000;
  const uint32_t absx = x & 0x7fffffff;
  if (absx >= 0x7f800000u) return (f16_t)(sign | 0x7c00 | (absx > 0x7f800000u ? 0x200 : 0));
  if (absx >= 0x477ff000u) return (f16_t)(sign | 0x7c00);  // overflow
  if (absx < 0x38800000u) {                                // subnormal or zero in f16
    if (absx < 0x33000000u) return (f16_t)sign;
    const uint32_t e = absx >> 23;
    uint32_t m = (absx & 0x7fffff) | 0x800000;
    const int shift = 126 - (int)e;  // 14 + (113 - e) - 1 ... shifts mantissa into place
    const uint32_t halfway = 1u << (shift - 1);
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1);
    if (rem > halfway || (rem == halfway && (r & 1))) r++;
    return (f16_t)(sign | r);
  }
  uint32_t r = ((absx - 0x38000000u) >> 13);
  const uint32_t rem = absx & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) r++;
  return (f16_t)(sign | r);
}

inline float fp16_to_fp32(f16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  return fp16_to_fp32_portable(h);
#endif
}

inline f16_t fp32_to_fp16(float f) {
#if defined(__F16C__)
  return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
#else
  return fp32_to_fp16_portable(f);
#endif
}

inline float bf16_to_fp32(bf16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline bf16_t fp32_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffff) > 0x7f800000u) return (bf16_t)((x >> 16) | 0x40);  // quiet NaN
  x += 0x7fff + ((x >> 16) & 1);                                          // round to nearest even
  return (bf16_t)(x >> 16);
}

}  // namespace sqz
