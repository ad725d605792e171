// Block structs of the ggml / GGUF quantized formats, byte-for-byte as stored in GGUF files so
// weights are used in place from the mmap. Layouts follow ggml's ggml-common.h / the GGUF spec;
// the element order inside each block is documented next to each struct because the kernels
// (quant*.cpp) and the independent reference (reference/ref_ops.cpp) both rely on it.
#pragma once

#include <cstdint>

#include "core/fp16.h"

namespace sqz::cpu {

constexpr int kQK = 32;    // elements per block of the "legacy" formats
constexpr int kQKK = 256;  // elements per super-block of the K-quants
constexpr int kKScaleBytes = 12;

// Q4_0: x[j] = d * ((qs[j] & 15) - 8), x[j + 16] = d * ((qs[j] >> 4) - 8), j < 16.
struct BlockQ4_0 {
  f16_t d;
  uint8_t qs[kQK / 2];
};
// Q4_1: x[j] = d * (qs[j] & 15) + m, x[j + 16] = d * (qs[j] >> 4) + m.
struct BlockQ4_1 {
  f16_t d;
  f16_t m;
  uint8_t qs[kQK / 2];
};
// Q5_0: 5th bit of element j is bit j of the little-endian u32 qh; value = d * (q - 16).
struct BlockQ5_0 {
  f16_t d;
  uint8_t qh[4];
  uint8_t qs[kQK / 2];
};
// Q5_1: as Q5_0 but x = d * q + m.
struct BlockQ5_1 {
  f16_t d;
  f16_t m;
  uint8_t qh[4];
  uint8_t qs[kQK / 2];
};
// Q8_0: x[j] = d * qs[j].
struct BlockQ8_0 {
  f16_t d;
  int8_t qs[kQK];
};
// Q8_1 (activation only): x[j] = d * qs[j]; s = d * sum(qs) so the "+ m" term of Q4_1/Q5_1
// dots costs one multiply per block. f32 d/s = 40 bytes, the size dtype.cpp and gguf-py use.
struct BlockQ8_1 {
  float d;
  float s;
  int8_t qs[kQK];
};
// Q4_K: 8 sub-blocks of 32 with 6-bit scales sc[i] and mins mn[i] packed in `scales`
// (see unpack_k_scales). Chunk c (64 elements, c < 4) uses qs[32c .. 32c+32):
// x[64c + l] = d*sc[2c]*(qs[32c+l] & 15) - dmin*mn[2c],
// x[64c + 32 + l] = d*sc[2c+1]*(qs[32c+l] >> 4) - dmin*mn[2c+1].
struct BlockQ4_K {
  f16_t d;
  f16_t dmin;
  uint8_t scales[kKScaleBytes];
  uint8_t qs[kQKK / 2];
};
// Q5_K: as Q4_K plus a 5th bit: element 64c + l takes bit 2c of qh[l], element 64c + 32 + l
// takes bit 2c + 1 of qh[l] (l < 32).
struct BlockQ5_K {
  f16_t d;
  f16_t dmin;
  uint8_t scales[kKScaleBytes];
  uint8_t qh[kQKK / 8];
  uint8_t qs[kQKK / 2];
};
// Q6_K: 16 sub-blocks of 16, int8 scales. For half h (128 elements) and l < 32, with
// L = ql + 64h, H = qh + 32h, S = scales + 8h, e = 128h:
// x[e + l]      = d*S[l/16 + 0]*(((L[l]    & 15) | ((H[l] >> 0 & 3) << 4)) - 32)
// x[e + l + 32] = d*S[l/16 + 2]*(((L[l+32] & 15) | ((H[l] >> 2 & 3) << 4)) - 32)
// x[e + l + 64] = d*S[l/16 + 4]*(((L[l]    >> 4) | ((H[l] >> 4 & 3) << 4)) - 32)
// x[e + l + 96] = d*S[l/16 + 6]*(((L[l+32] >> 4) | ((H[l] >> 6 & 3) << 4)) - 32)
struct BlockQ6_K {
  uint8_t ql[kQKK / 2];
  uint8_t qh[kQKK / 4];
  int8_t scales[kQKK / 16];
  f16_t d;
};
// Q8_K (activation only): x[j] = d * qs[j]; bsums[i] = sum(qs[16i .. 16i+16)).
struct BlockQ8_K {
  float d;
  int8_t qs[kQKK];
  int16_t bsums[kQKK / 16];
};

static_assert(sizeof(BlockQ4_0) == 18);
static_assert(sizeof(BlockQ4_1) == 20);
static_assert(sizeof(BlockQ5_0) == 22);
static_assert(sizeof(BlockQ5_1) == 24);
static_assert(sizeof(BlockQ8_0) == 34);
static_assert(sizeof(BlockQ8_1) == 40);
static_assert(sizeof(BlockQ4_K) == 144);
static_assert(sizeof(BlockQ5_K) == 176);
static_assert(sizeof(BlockQ6_K) == 210);
static_assert(sizeof(BlockQ8_K) == 292);

// 6-bit scale / min of sub-block j (< 8) of a Q4_K / Q5_K block. Bytes 0-3 hold the low 6 bits
// of sc[0..3] (and their top 2 bits carry bits 4-5 of sc[4..7]); bytes 4-7 likewise for mn;
// bytes 8-11 hold the low nibbles of sc[4..7] (low) and mn[4..7] (high).
inline void unpack_k_scale(const uint8_t* s, int j, int* sc, int* mn) {
  if (j < 4) {
    *sc = s[j] & 63;
    *mn = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
    *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

}  // namespace sqz::cpu
