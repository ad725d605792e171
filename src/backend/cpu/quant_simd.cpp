// AVX-512 (F/BW/VL/VNNI) kernels for the hot quantized types: dequantize, dot products and the
// activation quantizers. Written with intrinsics rather than Highway because the int8 dot
// products need VPDPBUSD (u8 x s8 -> s32), which Highway 1.0.3 (the Debian package) does not
// expose, and its target detection refuses to build under -march=native on Sapphire Rapids.
// Every kernel here has a scalar twin in quant.cpp that the tests compare it against.
//
// Layout conventions are in quant_blocks.h. The int8 dots use VPDPBUSD, whose first operand is
// unsigned: 4-/5-/6-bit codes are unsigned already; signed Q8_0 weights are biased by +128.
#include <cstring>

#include "backend/cpu/quant.h"
#include "backend/cpu/quant_blocks.h"
#include "backend/cpu/quant_impl.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512DQ__) && defined(__AVX512VNNI__) && defined(__F16C__)
#define SQZ_QUANT_AVX512 1
#include <immintrin.h>
// GCC 12 warns about the deliberately undefined upper lanes of _mm512_castsi256_si512 and
// friends once they are inlined here (GCC PR 105593); the lanes are always overwritten.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace sqz::cpu::detail {

#if defined(SQZ_QUANT_AVX512)
namespace {

inline float h2f(f16_t h) {
  return _cvtsh_ss(h);
}

// ---------------------------------------------------------------- float weights

inline __m512 loadu_f16(const f16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p));
}
inline __m512 loadu_bf16(const bf16_t* p) {
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}
inline __m512 maskz_f16(__mmask16 m, const f16_t* p) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}
inline __m512 maskz_bf16(__mmask16 m, const bf16_t* p) {
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}

// Four independent accumulators hide the FMA latency; the tail uses a masked load.
template <typename T, __m512 (*Load)(const T*), __m512 (*LoadMask)(__mmask16, const T*)>
float dot_float(int64_t n, const void* w, const void* x) {
  const T* a = (const T*)w;
  const float* b = (const float*)x;
  __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    acc0 = _mm512_fmadd_ps(Load(a + i), _mm512_loadu_ps(b + i), acc0);
    acc1 = _mm512_fmadd_ps(Load(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
    acc2 = _mm512_fmadd_ps(Load(a + i + 32), _mm512_loadu_ps(b + i + 32), acc2);
    acc3 = _mm512_fmadd_ps(Load(a + i + 48), _mm512_loadu_ps(b + i + 48), acc3);
  }
  for (; i + 16 <= n; i += 16) acc0 = _mm512_fmadd_ps(Load(a + i), _mm512_loadu_ps(b + i), acc0);
  if (i < n) {
    const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
    acc1 = _mm512_fmadd_ps(LoadMask(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
}
inline __m512 loadu_f32(const float* p) {
  return _mm512_loadu_ps(p);
}
inline __m512 maskz_f32(__mmask16 m, const float* p) {
  return _mm512_maskz_loadu_ps(m, p);
}

float vd_f32(int64_t n, const void* w, const void* x) {
  return dot_float<float, loadu_f32, maskz_f32>(n, w, x);
}
float vd_f16(int64_t n, const void* w, const void* x) {
  return dot_float<f16_t, loadu_f16, maskz_f16>(n, w, x);
}
float vd_bf16(int64_t n, const void* w, const void* x) {
  return dot_float<bf16_t, loadu_bf16, maskz_bf16>(n, w, x);
}

// ---------------------------------------------------------------- 32-element blocks
// All five formats dot against Q8_1 activations, two blocks per iteration:
//   sum_j w_j x_j = d_w d_x sum_j c_j q_j + off_w s_x     (s_x = d_x sum_j q_j, stored by Q8_1)
// with c the unsigned code VPDPBUSD needs and off_w the block's constant: Q4_1/Q5_1: m;
// Q4_0: -8 d; Q5_0: -16 d; Q8_0: -128 d (its signed codes are biased to c = q + 128 = q ^ 0x80).
// The scale work for both blocks is one 4-wide multiply: [d0 off0 d1 off1] * [dx0 sx0 dx1 sx1].

template <class Block, bool kHasM, int kOffset>
inline __m128 pair_terms(const Block* a, const BlockQ8_1* b) {
  __m128 w;
  if constexpr (kHasM) {  // d and m are adjacent f16s
    uint32_t v0, v1;
    std::memcpy(&v0, &a[0].d, 4);
    std::memcpy(&v1, &a[1].d, 4);
    w = _mm_cvtph_ps(_mm_insert_epi32(_mm_cvtsi32_si128((int)v0), (int)v1, 1));
  } else {
    const uint32_t v0 = (uint32_t)a[0].d * 0x10001u, v1 = (uint32_t)a[1].d * 0x10001u;
    w = _mm_mul_ps(_mm_cvtph_ps(_mm_insert_epi32(_mm_cvtsi32_si128((int)v0), (int)v1, 1)),
                   _mm_setr_ps(1.0f, (float)kOffset, 1.0f, (float)kOffset));
  }
  // Q8_1's (d, s) pairs are adjacent f32s: one 8-byte load per block.
  const __m128d xb = _mm_loadh_pd(_mm_load_sd((const double*)&b[0].d), (const double*)&b[1].d);
  return _mm_mul_ps(w, _mm_castpd_ps(xb));  // [S0 M0 S1 M1]
}

// The same for four blocks at once, [S0 M0 S1 M1 S2 M2 S3 M3]: the weight scales are picked out
// of two 64-byte loads with one word permute (masked so nothing past the 4 blocks is touched:
// the row may end at the end of the mapping), the activation (d, s) pairs likewise.
template <class Block, bool kHasM, int kOffset>
inline __m256 quad_terms(const Block* a, const BlockQ8_1* b) {
  constexpr int kS = (int)sizeof(Block);  // bytes per block (even, so d sits on a word boundary)
  constexpr int kBytes = 4 * kS;
  constexpr uint64_t kMask1 = kBytes >= 128 ? ~0ull : ((1ull << (kBytes - 64)) - 1);
  const __m512i lo = _mm512_loadu_si512(a);
  const __m512i hi = _mm512_maskz_loadu_epi8(kMask1, (const uint8_t*)a + 64);
  constexpr int w0 = 0, w1 = kS / 2, w2 = kS, w3 = 3 * kS / 2;  // word index of each block's d
  alignas(64) static constexpr int16_t kIdx[32] = {
      w0, kHasM ? w0 + 1 : w0, w1, kHasM ? w1 + 1 : w1,
      w2, kHasM ? w2 + 1 : w2, w3, kHasM ? w3 + 1 : w3};
  const __m512i idx = _mm512_load_si512(kIdx);
  __m256 w = _mm256_cvtph_ps(_mm512_castsi512_si128(_mm512_permutex2var_epi16(lo, idx, hi)));
  if constexpr (!kHasM)
    w = _mm256_mul_ps(w, _mm256_setr_ps(1, kOffset, 1, kOffset, 1, kOffset, 1, kOffset));
  // Q8_1 blocks are 40 bytes = 10 dwords: (d, s) at dwords 0,1 / 10,11 / 20,21 / 30,31.
  const __m512i xlo = _mm512_loadu_si512(b);
  const __m512i xhi = _mm512_loadu_si512((const uint8_t*)b + 64);
  const __m512i xidx = _mm512_setr_epi32(0, 1, 10, 11, 20, 21, 30, 31, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m256 xs =
      _mm512_castps512_ps256(_mm512_castsi512_ps(_mm512_permutex2var_epi32(xlo, xidx, xhi)));
  return _mm256_mul_ps(w, xs);
}

// Nibbles of blocks a, b as [lo(a) | hi(a) | lo(b) | hi(b)] (broadcast loads, no lane inserts).
inline __m512i codes_q4(const uint8_t* a, const uint8_t* b) {
  const __m512i aabb =
      _mm512_mask_broadcast_i32x4(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i*)a)),
                                  0xff00, _mm_loadu_si128((const __m128i*)b));
  return _mm512_and_si512(_mm512_srlv_epi64(aabb, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4)),
                          _mm512_set1_epi8(0x0f));
}
// Two 32-byte runs as one register, merged by a masked broadcast load.
inline __m512i load_2x32b(const int8_t* a, const int8_t* b) {
  return _mm512_mask_broadcast_i64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)a)),
                                     0xf0, _mm256_loadu_si256((const __m256i*)b));
}

// 5th bits: bit j of qh is element j, so the two blocks' qh words form a 64-bit byte mask.
inline __m512i high_bits_5(const uint8_t* qha, const uint8_t* qhb) {
  uint32_t ha, hb;
  std::memcpy(&ha, qha, 4);
  std::memcpy(&hb, qhb, 4);
  return _mm512_maskz_mov_epi8(_cvtu64_mask64(ha | ((uint64_t)hb << 32)), _mm512_set1_epi8(0x10));
}

struct CodesQ4_0 {
  static __m512i get(const BlockQ4_0* a) { return codes_q4(a[0].qs, a[1].qs); }
};
struct CodesQ4_1 {
  static __m512i get(const BlockQ4_1* a) { return codes_q4(a[0].qs, a[1].qs); }
};
struct CodesQ5_0 {
  static __m512i get(const BlockQ5_0* a) {
    return _mm512_or_si512(codes_q4(a[0].qs, a[1].qs), high_bits_5(a[0].qh, a[1].qh));
  }
};
struct CodesQ5_1 {
  static __m512i get(const BlockQ5_1* a) {
    return _mm512_or_si512(codes_q4(a[0].qs, a[1].qs), high_bits_5(a[0].qh, a[1].qh));
  }
};
struct CodesQ8_0 {
  static __m512i get(const BlockQ8_0* a) {
    return _mm512_xor_si512(load_2x32b(a[0].qs, a[1].qs), _mm512_set1_epi8((char)0x80));
  }
};

template <class Block, class Codes, bool kHasM, int kOffset, DType kType>
float vd_block32(int64_t n, const void* w, const void* x) {
  const Block* a = (const Block*)w;
  const BlockQ8_1* b = (const BlockQ8_1*)x;
  const int64_t nb = n / kQK;
  // Broadcast S of block 0/1 (2/3) of a quad over int32 lanes 0-7 / 8-15.
  const __m512i sel01 = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2);
  const __m512i sel23 = _mm512_setr_epi32(4, 4, 4, 4, 4, 4, 4, 4, 6, 6, 6, 6, 6, 6, 6, 6);
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  __m256 accm = _mm256_setzero_ps();  // odd lanes collect the M terms
  int64_t i = 0;
  for (; i + 4 <= nb; i += 4) {
    const __m512 t = _mm512_castps256_ps512(quad_terms<Block, kHasM, kOffset>(a + i, b + i));
    const __m512i d0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), Codes::get(a + i),
                                           load_2x32b(b[i].qs, b[i + 1].qs));
    const __m512i d1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), Codes::get(a + i + 2),
                                           load_2x32b(b[i + 2].qs, b[i + 3].qs));
    acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d0), _mm512_permutexvar_ps(sel01, t), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d1), _mm512_permutexvar_ps(sel23, t), acc1);
    accm = _mm256_add_ps(accm, _mm512_castps512_ps256(t));
  }
  __m128 accm2 = _mm_add_ps(_mm256_castps256_ps128(accm), _mm256_extractf128_ps(accm, 1));
  for (; i + 2 <= nb; i += 2) {
    const __m128 t0 = pair_terms<Block, kHasM, kOffset>(a + i, b + i);
    const __m512i d0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), Codes::get(a + i),
                                           load_2x32b(b[i].qs, b[i + 1].qs));
    acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d0),
                           _mm512_permutexvar_ps(sel01, _mm512_castps128_ps512(t0)), acc0);
    accm2 = _mm_add_ps(accm2, t0);
  }
  float sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
  alignas(16) float m[4];
  _mm_store_ps(m, accm2);
  sum += m[1] + m[3];
  if (i < nb) sum += vec_dot_scalar(kType, kQK, a + i, b + i);  // odd block count
  return sum;
}

float vd_q4_0(int64_t n, const void* w, const void* x) {
  return vd_block32<BlockQ4_0, CodesQ4_0, false, -8, DType::kQ4_0>(n, w, x);
}
float vd_q4_1(int64_t n, const void* w, const void* x) {
  return vd_block32<BlockQ4_1, CodesQ4_1, true, 0, DType::kQ4_1>(n, w, x);
}
float vd_q5_0(int64_t n, const void* w, const void* x) {
  return vd_block32<BlockQ5_0, CodesQ5_0, false, -16, DType::kQ5_0>(n, w, x);
}
float vd_q5_1(int64_t n, const void* w, const void* x) {
  return vd_block32<BlockQ5_1, CodesQ5_1, true, 0, DType::kQ5_1>(n, w, x);
}
float vd_q8_0(int64_t n, const void* w, const void* x) {
  return vd_block32<BlockQ8_0, CodesQ8_0, false, -128, DType::kQ8_0>(n, w, x);
}

// ---------------------------------------------------------------- K-quants

// All eight 6-bit scales (bytes 0-7 of *sc) and mins (*mn) of a Q4_K/Q5_K block with word
// operations (same layout as unpack_k_scale): sc[0..3] / mn[0..3] are the low 6 bits of bytes
// 0-3 / 4-7; sc[4..7] / mn[4..7] take their low nibble from bytes 8-11 (low / high nibble) and
// their top two bits from the top bits of bytes 0-3 / 4-7.
inline void unpack_k_scales_8(const uint8_t* s, uint64_t* sc, uint64_t* mn) {
  uint32_t w0, w1, w2;
  std::memcpy(&w0, s, 4);
  std::memcpy(&w1, s + 4, 4);
  std::memcpy(&w2, s + 8, 4);
  const uint32_t sc_lo = w0 & 0x3f3f3f3fu, mn_lo = w1 & 0x3f3f3f3fu;
  const uint32_t sc_hi = (w2 & 0x0f0f0f0fu) | (((w0 >> 6) & 0x03030303u) << 4);
  const uint32_t mn_hi = ((w2 >> 4) & 0x0f0f0f0fu) | (((w1 >> 6) & 0x03030303u) << 4);
  *sc = sc_lo | ((uint64_t)sc_hi << 32);
  *mn = mn_lo | ((uint64_t)mn_hi << 32);
}

float vd_q4_k(int64_t n, const void* w, const void* x) {
  const BlockQ4_K* a = (const BlockQ4_K*)w;
  const BlockQ8_K* b = (const BlockQ8_K*)x;
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  const __m512i half_sel = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  __m512 acc = _mm512_setzero_ps();
  __m256 accm = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / kQKK; i++) {
    uint64_t sc8, mn8;
    unpack_k_scales_8(a[i].scales, &sc8, &mn8);
    const __m512i scv = _mm512_cvtepu8_epi32(_mm_cvtsi64_si128((long long)sc8));  // lanes 0-7
    // Min term: sum_j mn_j (bsum[2j] + bsum[2j+1]) as one madd of mins (each twice) and bsums.
    const __m128i mn16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)mn8));
    const __m256i mn_dup =
        _mm256_set_m128i(_mm_unpackhi_epi16(mn16, mn16), _mm_unpacklo_epi16(mn16, mn16));
    const __m256i msum = _mm256_madd_epi16(mn_dup, _mm256_loadu_si256((const __m256i*)b[i].bsums));
    accm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_set1_ps(h2f(a[i].dmin) * b[i].d), accm);
    __m512i isum = _mm512_setzero_si512();
    for (int c = 0; c < 4; c++) {
      // 32 bytes of codes: low nibbles = sub-block 2c, high nibbles = sub-block 2c + 1, which
      // are exactly the 64 contiguous activations at 64c.
      const __m256i q32 = _mm256_loadu_si256((const __m256i*)(a[i].qs + 32 * c));
      const __m512i q = _mm512_and_si512(
          _mm512_inserti64x4(_mm512_castsi256_si512(q32), _mm256_srli_epi16(q32, 4), 1), low4);
      const __m512i y = _mm512_loadu_si512(b[i].qs + 64 * c);
      const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, y);
      const __m512i s =
          _mm512_permutexvar_epi32(_mm512_add_epi32(_mm512_set1_epi32(2 * c), half_sel), scv);
      isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(dot, s));
    }
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(h2f(a[i].d) * b[i].d), acc);
  }
  alignas(32) float m[8];
  _mm256_store_ps(m, accm);
  return _mm512_reduce_add_ps(acc) - (m[0] + m[1] + m[2] + m[3] + m[4] + m[5] + m[6] + m[7]);
}

// Q4_K plus a 5th bit per code: element 64c + l takes bit 2c of qh[l], element 64c + 32 + l
// takes bit 2c + 1.
float vd_q5_k(int64_t n, const void* w, const void* x) {
  const BlockQ5_K* a = (const BlockQ5_K*)w;
  const BlockQ8_K* b = (const BlockQ8_K*)x;
  const __m512i low4 = _mm512_set1_epi8(0x0f), one = _mm512_set1_epi8(1);
  const __m512i half_sel = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  __m512 acc = _mm512_setzero_ps();
  __m256 accm = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / kQKK; i++) {
    uint64_t sc8, mn8;
    unpack_k_scales_8(a[i].scales, &sc8, &mn8);
    const __m512i scv = _mm512_cvtepu8_epi32(_mm_cvtsi64_si128((long long)sc8));
    const __m128i mn16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)mn8));
    const __m256i mn_dup =
        _mm256_set_m128i(_mm_unpackhi_epi16(mn16, mn16), _mm_unpacklo_epi16(mn16, mn16));
    const __m256i msum = _mm256_madd_epi16(mn_dup, _mm256_loadu_si256((const __m256i*)b[i].bsums));
    accm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_set1_ps(h2f(a[i].dmin) * b[i].d), accm);
    const __m512i qh2 = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i*)a[i].qh));
    __m512i isum = _mm512_setzero_si512();
    for (int c = 0; c < 4; c++) {
      const __m256i q32 = _mm256_loadu_si256((const __m256i*)(a[i].qs + 32 * c));
      const __m512i q4 = _mm512_and_si512(
          _mm512_inserti64x4(_mm512_castsi256_si512(q32), _mm256_srli_epi16(q32, 4), 1), low4);
      const __m512i sh =
          _mm512_setr_epi64(2 * c, 2 * c, 2 * c, 2 * c, 2 * c + 1, 2 * c + 1, 2 * c + 1, 2 * c + 1);
      const __m512i hb = _mm512_and_si512(_mm512_srlv_epi64(qh2, sh), one);
      const __m512i q = _mm512_or_si512(q4, _mm512_slli_epi16(hb, 4));
      const __m512i dot =
          _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, _mm512_loadu_si512(b[i].qs + 64 * c));
      const __m512i s =
          _mm512_permutexvar_epi32(_mm512_add_epi32(_mm512_set1_epi32(2 * c), half_sel), scv);
      isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(dot, s));
    }
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(h2f(a[i].d) * b[i].d), acc);
  }
  alignas(32) float m[8];
  _mm256_store_ps(m, accm);
  return _mm512_reduce_add_ps(acc) - (m[0] + m[1] + m[2] + m[3] + m[4] + m[5] + m[6] + m[7]);
}

// Q6_K codes of 64 consecutive elements: 4-bit parts `lo4` (already masked) and 2-bit parts
// taken from bits (s0, s0+1) of qh for the first 32 bytes and (s0+2, s0+3) for the last 32.
inline __m512i q6_codes(__m512i lo4, __m512i qh2, int s0) {
  const __m512i sh = _mm512_setr_epi64(s0, s0, s0, s0, s0 + 2, s0 + 2, s0 + 2, s0 + 2);
  const __m512i hb = _mm512_and_si512(_mm512_srlv_epi64(qh2, sh), _mm512_set1_epi8(3));
  return _mm512_or_si512(lo4, _mm512_slli_epi16(hb, 4));
}

float vd_q6_k(int64_t n, const void* w, const void* x) {
  const BlockQ6_K* a = (const BlockQ6_K*)w;
  const BlockQ8_K* b = (const BlockQ8_K*)x;
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  const __m512i lane_sub = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < n / kQKK; i++) {
    const __m128i sc8 = _mm_loadu_si128((const __m128i*)a[i].scales);
    const __m512i scv = _mm512_cvtepi8_epi32(sc8);
    // The -32 code offset, via the activation's per-16 sums: 32 * sum_j sc_j * bsum_j.
    const __m256i off = _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc8),
                                          _mm256_loadu_si256((const __m256i*)b[i].bsums));
    __m512i isum = _mm512_setzero_si512();
    for (int h = 0; h < 2; h++) {
      const __m512i L = _mm512_loadu_si512(a[i].ql + 64 * h);
      const __m512i H =
          _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i*)(a[i].qh + 32 * h)));
      const __m512i q_lo = q6_codes(_mm512_and_si512(L, low4), H, 0);  // elements 0..63
      const __m512i q_hi =
          q6_codes(_mm512_and_si512(_mm512_srli_epi16(L, 4), low4), H, 4);  // 64..127
      const int8_t* y = b[i].qs + 128 * h;
      const __m512i d_lo = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q_lo, _mm512_loadu_si512(y));
      const __m512i d_hi =
          _mm512_dpbusd_epi32(_mm512_setzero_si512(), q_hi, _mm512_loadu_si512(y + 64));
      // Each int32 lane covers 4 elements, so 4 lanes form one 16-element sub-block.
      const __m512i s_lo =
          _mm512_permutexvar_epi32(_mm512_add_epi32(lane_sub, _mm512_set1_epi32(8 * h)), scv);
      const __m512i s_hi =
          _mm512_permutexvar_epi32(_mm512_add_epi32(lane_sub, _mm512_set1_epi32(8 * h + 4)), scv);
      isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(d_lo, s_lo));
      isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(d_hi, s_hi));
    }
    const __m512i offv = _mm512_castsi256_si512(_mm256_slli_epi32(off, 5));
    isum = _mm512_sub_epi32(isum, offv);
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(h2f(a[i].d) * b[i].d), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// ---------------------------------------------------------------- dequantize

void dq_f16(const void* src, float* dst, int64_t n) {
  const f16_t* s = (const f16_t*)src;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, loadu_f16(s + i));
  if (i < n) {
    const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(dst + i, m, maskz_f16(m, s + i));
  }
}
void dq_bf16(const void* src, float* dst, int64_t n) {
  const bf16_t* s = (const bf16_t*)src;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, loadu_bf16(s + i));
  if (i < n) {
    const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(dst + i, m, maskz_bf16(m, s + i));
  }
}

// 16 code bytes -> (low nibbles as 16 floats, high nibbles as 16 floats).
inline void nibbles_f32(const uint8_t* qs, __m512* lo, __m512* hi) {
  const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)qs));
  *lo = _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(15)));
  *hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4));
}

void dq_q4_0(const void* src, float* dst, int64_t n) {
  const BlockQ4_0* b = (const BlockQ4_0*)src;
  for (int64_t i = 0; i < n / kQK; i++, dst += kQK) {
    const float d = h2f(b[i].d);
    __m512 lo, hi;
    nibbles_f32(b[i].qs, &lo, &hi);
    const __m512 vd = _mm512_set1_ps(d), eight = _mm512_set1_ps(8.0f);
    // d * (q - 8): q - 8 is exact in float, so this rounds like the scalar d * (q - 8).
    _mm512_storeu_ps(dst, _mm512_mul_ps(vd, _mm512_sub_ps(lo, eight)));
    _mm512_storeu_ps(dst + 16, _mm512_mul_ps(vd, _mm512_sub_ps(hi, eight)));
  }
}
void dq_q4_1(const void* src, float* dst, int64_t n) {
  const BlockQ4_1* b = (const BlockQ4_1*)src;
  for (int64_t i = 0; i < n / kQK; i++, dst += kQK) {
    __m512 lo, hi;
    nibbles_f32(b[i].qs, &lo, &hi);
    const __m512 vd = _mm512_set1_ps(h2f(b[i].d)), vm = _mm512_set1_ps(h2f(b[i].m));
    // FMA, like the scalar std::fma(d, q, m), so both round once and agree bit for bit.
    _mm512_storeu_ps(dst, _mm512_fmadd_ps(vd, lo, vm));
    _mm512_storeu_ps(dst + 16, _mm512_fmadd_ps(vd, hi, vm));
  }
}
void dq_q8_0(const void* src, float* dst, int64_t n) {
  const BlockQ8_0* b = (const BlockQ8_0*)src;
  for (int64_t i = 0; i < n / kQK; i++, dst += kQK) {
    const __m512 vd = _mm512_set1_ps(h2f(b[i].d));
    const __m512i q0 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)b[i].qs));
    const __m512i q1 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(b[i].qs + 16)));
    _mm512_storeu_ps(dst, _mm512_mul_ps(vd, _mm512_cvtepi32_ps(q0)));
    _mm512_storeu_ps(dst + 16, _mm512_mul_ps(vd, _mm512_cvtepi32_ps(q1)));
  }
}
void dq_q4_k(const void* src, float* dst, int64_t n) {
  const BlockQ4_K* b = (const BlockQ4_K*)src;
  for (int64_t i = 0; i < n / kQKK; i++) {
    const float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
    for (int c = 0; c < 4; c++, dst += 64) {
      int sc0, m0, sc1, m1;
      unpack_k_scale(b[i].scales, 2 * c, &sc0, &m0);
      unpack_k_scale(b[i].scales, 2 * c + 1, &sc1, &m1);
      const __m512 d0 = _mm512_set1_ps(d * sc0), mm0 = _mm512_set1_ps(dmin * m0);
      const __m512 d1 = _mm512_set1_ps(d * sc1), mm1 = _mm512_set1_ps(dmin * m1);
      for (int h = 0; h < 2; h++) {
        __m512 lo, hi;
        nibbles_f32(b[i].qs + 32 * c + 16 * h, &lo, &hi);
        _mm512_storeu_ps(dst + 16 * h, _mm512_fmsub_ps(d0, lo, mm0));
        _mm512_storeu_ps(dst + 32 + 16 * h, _mm512_fmsub_ps(d1, hi, mm1));
      }
    }
  }
}
void dq_q6_k(const void* src, float* dst, int64_t n) {
  const BlockQ6_K* b = (const BlockQ6_K*)src;
  const __m512i m4 = _mm512_set1_epi32(15), m2 = _mm512_set1_epi32(3), k32 = _mm512_set1_epi32(32);
  for (int64_t i = 0; i < n / kQKK; i++) {
    const float d = h2f(b[i].d);
    for (int h = 0; h < 2; h++, dst += 128) {
      const uint8_t* L = b[i].ql + 64 * h;
      const uint8_t* H = b[i].qh + 32 * h;
      const int8_t* S = b[i].scales + 8 * h;
      for (int l0 = 0; l0 < 32; l0 += 16) {
        const __m512i l = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(L + l0)));
        const __m512i l32 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(L + 32 + l0)));
        const __m512i hq = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(H + l0)));
        const int is = l0 / 16;
        const __m512i c0 = _mm512_or_si512(_mm512_and_si512(l, m4),
                                           _mm512_slli_epi32(_mm512_and_si512(hq, m2), 4));
        const __m512i c1 =
            _mm512_or_si512(_mm512_and_si512(l32, m4),
                            _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(hq, 2), m2), 4));
        const __m512i c2 =
            _mm512_or_si512(_mm512_srli_epi32(l, 4),
                            _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(hq, 4), m2), 4));
        const __m512i c3 = _mm512_or_si512(_mm512_srli_epi32(l32, 4),
                                           _mm512_slli_epi32(_mm512_srli_epi32(hq, 6), 4));
        // d * S * q evaluated as (d * S) * q in the scalar code too: same rounding.
        const __m512 s0 = _mm512_set1_ps(d * S[is + 0]), s1 = _mm512_set1_ps(d * S[is + 2]);
        const __m512 s2 = _mm512_set1_ps(d * S[is + 4]), s3 = _mm512_set1_ps(d * S[is + 6]);
        _mm512_storeu_ps(dst + l0,
                         _mm512_mul_ps(s0, _mm512_cvtepi32_ps(_mm512_sub_epi32(c0, k32))));
        _mm512_storeu_ps(dst + l0 + 32,
                         _mm512_mul_ps(s1, _mm512_cvtepi32_ps(_mm512_sub_epi32(c1, k32))));
        _mm512_storeu_ps(dst + l0 + 64,
                         _mm512_mul_ps(s2, _mm512_cvtepi32_ps(_mm512_sub_epi32(c2, k32))));
        _mm512_storeu_ps(dst + l0 + 96,
                         _mm512_mul_ps(s3, _mm512_cvtepi32_ps(_mm512_sub_epi32(c3, k32))));
      }
    }
  }
}

// ---------------------------------------------------------------- activation quantizers
// Same arithmetic as the scalar q_q8_* (x * (1/d), round to nearest even, clamp +-127), so the
// two produce identical bytes.

inline __m128i round_clamp_i8(__m512 v, __m512 id) {
  const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(v, id));  // MXCSR default: nearest-even
  return _mm512_cvtsepi32_epi8(_mm512_max_epi32(q, _mm512_set1_epi32(-127)));
}
inline float absmax_v(__m512 a, __m512 b) {
  const __m512 m = _mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b));
  return _mm512_reduce_max_ps(m);
}

void q_q8_0(const float* src, void* dst, int64_t n) {
  BlockQ8_0* b = (BlockQ8_0*)dst;
  for (int64_t i = 0; i < n / kQK; i++, src += kQK) {
    const __m512 v0 = _mm512_loadu_ps(src), v1 = _mm512_loadu_ps(src + 16);
    b[i].d = _cvtss_sh(absmax_v(v0, v1) / 127.0f, _MM_FROUND_TO_NEAREST_INT);
    const float d = h2f(b[i].d);
    const __m512 id = _mm512_set1_ps(d != 0 ? 1.0f / d : 0.0f);
    _mm_storeu_si128((__m128i*)b[i].qs, round_clamp_i8(v0, id));
    _mm_storeu_si128((__m128i*)(b[i].qs + 16), round_clamp_i8(v1, id));
  }
}
void q_q8_1(const float* src, void* dst, int64_t n) {
  BlockQ8_1* b = (BlockQ8_1*)dst;
  for (int64_t i = 0; i < n / kQK; i++, src += kQK) {
    const __m512 v0 = _mm512_loadu_ps(src), v1 = _mm512_loadu_ps(src + 16);
    const float d = absmax_v(v0, v1) / 127.0f;
    const __m512 id = _mm512_set1_ps(d != 0 ? 1.0f / d : 0.0f);
    const __m128i q0 = round_clamp_i8(v0, id), q1 = round_clamp_i8(v1, id);
    _mm_storeu_si128((__m128i*)b[i].qs, q0);
    _mm_storeu_si128((__m128i*)(b[i].qs + 16), q1);
    const int sum = _mm512_reduce_add_epi32(
        _mm512_add_epi32(_mm512_cvtepi8_epi32(q0), _mm512_cvtepi8_epi32(q1)));
    b[i].d = d;
    b[i].s = d * (float)sum;
  }
}
void q_q8_k(const float* src, void* dst, int64_t n) {
  BlockQ8_K* b = (BlockQ8_K*)dst;
  for (int64_t i = 0; i < n / kQKK; i++, src += kQKK) {
    __m512 m = _mm512_setzero_ps();
    for (int j = 0; j < kQKK; j += 16)
      m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(src + j)));
    const float d = _mm512_reduce_max_ps(m) / 127.0f;
    const __m512 id = _mm512_set1_ps(d != 0 ? 1.0f / d : 0.0f);
    for (int g = 0; g < kQKK / 16; g++) {
      const __m128i q = round_clamp_i8(_mm512_loadu_ps(src + 16 * g), id);
      _mm_storeu_si128((__m128i*)(b[i].qs + 16 * g), q);
      b[i].bsums[g] = (int16_t)_mm512_reduce_add_epi32(_mm512_cvtepi8_epi32(q));
    }
    b[i].d = d;
  }
}

}  // namespace

VecDotFn simd_vec_dot_fn(DType t) {
  switch (t) {
    case DType::kF32:
      return vd_f32;
    case DType::kF16:
      return vd_f16;
    case DType::kBF16:
      return vd_bf16;
    case DType::kQ4_0:
      return vd_q4_0;
    case DType::kQ4_1:
      return vd_q4_1;
    case DType::kQ5_0:
      return vd_q5_0;
    case DType::kQ5_1:
      return vd_q5_1;
    case DType::kQ8_0:
      return vd_q8_0;
    case DType::kQ4_K:
      return vd_q4_k;
    case DType::kQ5_K:
      return vd_q5_k;
    case DType::kQ6_K:
      return vd_q6_k;
    default:
      return nullptr;
  }
}
DequantFn simd_dequant_fn(DType t) {
  switch (t) {
    case DType::kF16:
      return dq_f16;
    case DType::kBF16:
      return dq_bf16;
    case DType::kQ4_0:
      return dq_q4_0;
    case DType::kQ4_1:
      return dq_q4_1;
    case DType::kQ8_0:
      return dq_q8_0;
    case DType::kQ4_K:
      return dq_q4_k;
    case DType::kQ6_K:
      return dq_q6_k;
    default:
      return nullptr;
  }
}
QuantFn simd_quant_fn(DType t) {
  switch (t) {
    case DType::kQ8_0:
      return q_q8_0;
    case DType::kQ8_1:
      return q_q8_1;
    case DType::kQ8_K:
      return q_q8_k;
    default:
      return nullptr;
  }
}

#else  // no AVX-512: the scalar kernels of quant.cpp are used

VecDotFn simd_vec_dot_fn(DType) {
  return nullptr;
}
DequantFn simd_dequant_fn(DType) {
  return nullptr;
}
QuantFn simd_quant_fn(DType) {
  return nullptr;
}

#endif

}  // namespace sqz::cpu::detail
