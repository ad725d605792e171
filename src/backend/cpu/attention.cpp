// CPU partial attention over a list of row ranges (see attention/attention.h).
//
// Loop order: a chunk of up to kQRows query rows (token × group head) is held in registers/L1
// with its online-softmax state; keys stream through in tiles of kKeyTile rows that are
// converted to f32 once per (query chunk, tile). For decode (one token, a GQA group of 1-8 heads)
// this reads each K/V row exactly once, which is what matters: decode attention is bound by
// memory bandwidth. Prefill re-reads tiles once per query chunk, amortised over kQRows rows.
#include "attention/attention.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "backend/cpu/matmul.h"
#include "backend/cpu/simd_math.h"
#include "core/fp16.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace sqz {

namespace {

constexpr int kKeyTile = 32;  // keys converted per tile
constexpr int kQRows = 16;    // query rows (token × head) per chunk
constexpr int kMaxHeadDim = 256;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

inline void load_row_f32(const void* base, DType t, int64_t row, int64_t stride, int64_t d,
                         float* dst) {
  if (t == DType::kF32) {
    std::memcpy(dst, (const float*)base + row * stride, (size_t)d * sizeof(float));
    return;
  }
  const f16_t* src = (const f16_t*)base + row * stride;
  int64_t c = 0;
#if defined(__AVX512F__)
  for (; c + 16 <= d; c += 16)
    _mm512_storeu_ps(dst + c, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(src + c))));
#endif
  for (; c < d; c++) dst[c] = fp16_to_fp32(src[c]);
}

inline float dot(const float* a, const float* b, int64_t d) {
#if defined(__AVX512F__)
  if ((d & 15) == 0) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t c = 0;
    for (; c + 32 <= d; c += 32) {
      acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + c), _mm512_loadu_ps(b + c), acc0);
      acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + c + 16), _mm512_loadu_ps(b + c + 16), acc1);
    }
    for (; c < d; c += 16)
      acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + c), _mm512_loadu_ps(b + c), acc0);
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
  }
#endif
  float s = 0;
  for (int64_t c = 0; c < d; c++) s += a[c] * b[c];
  return s;
}

// acc = acc * alpha + sum_j p[j] * V[j]
inline void scale_accumulate(float* acc, float alpha, const float* p, const float* vt, int nk,
                             int64_t d) {
#if defined(__AVX512F__)
  if ((d & 15) == 0) {
    const __m512 va = _mm512_set1_ps(alpha);
    for (int64_t c = 0; c < d; c += 16) {
      __m512 x = _mm512_mul_ps(_mm512_loadu_ps(acc + c), va);
      for (int j = 0; j < nk; j++)
        x = _mm512_fmadd_ps(_mm512_set1_ps(p[j]), _mm512_loadu_ps(vt + (int64_t)j * d + c), x);
      _mm512_storeu_ps(acc + c, x);
    }
    return;
  }
#endif
  for (int64_t c = 0; c < d; c++) {
    float x = acc[c] * alpha;
    for (int j = 0; j < nk; j++) x += p[j] * vt[(int64_t)j * d + c];
    acc[c] = x;
  }
}

}  // namespace

namespace {

constexpr int kGemmRows = 64;   // query rows per chunk in the GEMM kernel
constexpr int kGemmKeys = 128;  // keys per tile in the GEMM kernel

// Many query rows (prefill): S = Q·Kᵀ and O += P·V as small GEMMs (OpenBLAS sgemm, single
// threaded inside our parallel region) over tiles, with the online softmax in between.
// Scratch is thread_local and grows once: steady-state calls allocate nothing.
void attn_partial_gemm(const AttnArgs& a) {
  const int64_t d = a.head_dim;
  const int64_t n_rows = a.n_q * a.group;
  thread_local std::vector<float> qb, kt, vt, sb, ob;
  thread_local std::vector<int32_t> key_row;
  qb.resize((size_t)(kGemmRows * d));
  kt.resize((size_t)(kGemmKeys * d));
  vt.resize((size_t)(kGemmKeys * d));
  sb.resize((size_t)(kGemmRows * kGemmKeys));
  ob.resize((size_t)(kGemmRows * d));
  key_row.resize(kGemmKeys);
  float m[kGemmRows], l[kGemmRows], alpha[kGemmRows];

  for (int64_t r0 = 0; r0 < n_rows; r0 += kGemmRows) {
    const int nr = (int)std::min<int64_t>(kGemmRows, n_rows - r0);
    for (int r = 0; r < nr; r++) {
      const int64_t gr = r0 + r, tok = gr / a.group, gh = gr % a.group;
      std::memcpy(&qb[(size_t)r * d], a.q + tok * a.q_tok_stride + gh * d,
                  sizeof(float) * (size_t)d);
      m[r] = kNegInf;
      l[r] = 0.0f;
    }
    std::fill(ob.begin(), ob.begin() + (size_t)nr * d, 0.0f);
    // Causal: the last key position any row of this chunk may see; later keys are skipped.
    const int64_t tok_hi = (r0 + nr - 1) / a.group;
    size_t ri = 0;
    int64_t row = a.ranges.empty() ? 0 : a.ranges[0].begin;
    while (ri < a.ranges.size()) {
      int nk = 0;
      while (nk < kGemmKeys && ri < a.ranges.size()) {
        if (row >= a.ranges[ri].end) {
          if (++ri < a.ranges.size()) row = a.ranges[ri].begin;
          continue;
        }
        if (a.mask && a.mask->key_pos0 + row > a.mask->q_pos0 + tok_hi) {  // beyond every query
          row = a.ranges[ri].end;
          continue;
        }
        load_row_f32(a.kv.k, a.kv.type, row, a.kv.row_stride, d, &kt[(size_t)nk * d]);
        load_row_f32(a.kv.v, a.kv.type, row, a.kv.row_stride, d, &vt[(size_t)nk * d]);
        key_row[(size_t)nk] = (int32_t)row;
        nk++;
        row++;
      }
      if (nk == 0) break;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nr, nk, (int)d, a.scale, qb.data(),
                  (int)d, kt.data(), (int)d, 0.0f, sb.data(), kGemmKeys);
      for (int r = 0; r < nr; r++) {
        float* srow = &sb[(size_t)r * kGemmKeys];
        if (a.mask) {
          const int64_t qpos = a.mask->q_pos0 + (r0 + r) / a.group;
          for (int j = 0; j < nk; j++)
            if (a.mask->key_pos0 + key_row[(size_t)j] > qpos) srow[j] = kNegInf;
        }
        float tmax = kNegInf;
        for (int j = 0; j < nk; j++) tmax = std::max(tmax, srow[j]);
        if (tmax == kNegInf) {
          alpha[r] = 1.0f;
          std::fill(srow, srow + nk, 0.0f);
          continue;
        }
        const float m_new = std::max(m[r], tmax);
        alpha[r] = (m[r] == kNegInf) ? 0.0f : std::exp(m[r] - m_new);
        float psum = 0.0f;
        int j = 0;
#if defined(__AVX512F__)
        const __m512 vm = _mm512_set1_ps(m_new);
        __m512 acc = _mm512_setzero_ps();
        for (; j + 16 <= nk; j += 16) {
          __m512 p = cpu::exp16(_mm512_sub_ps(_mm512_loadu_ps(srow + j), vm));
          _mm512_storeu_ps(srow + j, p);
          acc = _mm512_add_ps(acc, p);
        }
        psum = _mm512_reduce_add_ps(acc);
#endif
        for (; j < nk; j++) {
          srow[j] = srow[j] == kNegInf ? 0.0f : std::exp(srow[j] - m_new);
          psum += srow[j];
        }
        l[r] = l[r] * alpha[r] + psum;
        m[r] = m_new;
        if (alpha[r] != 1.0f)
          for (int64_t c = 0; c < d; c++) ob[(size_t)r * d + c] *= alpha[r];
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nr, (int)d, nk, 1.0f, sb.data(),
                  kGemmKeys, vt.data(), (int)d, 1.0f, ob.data(), (int)d);
    }
    for (int r = 0; r < nr; r++) {
      const int64_t gr = r0 + r, tok = gr / a.group, gh = gr % a.group;
      float* o = a.out + tok * a.out_tok_stride + gh * d;
      float* lse = a.lse + tok * a.lse_tok_stride + gh;
      if (l[r] == 0.0f) {
        std::memset(o, 0, sizeof(float) * (size_t)d);
        *lse = kNegInf;
        continue;
      }
      const float inv = 1.0f / l[r];
      for (int64_t c = 0; c < d; c++) o[c] = ob[(size_t)r * d + c] * inv;
      *lse = m[r] + std::log(l[r]);
    }
  }
}

}  // namespace

void attn_partial_cpu(const AttnArgs& a) {
  // The GEMM kernel pays off once a chunk has enough query rows to amortise the tile setup.
  if (a.n_q * a.group >= 16 && a.head_dim <= kMaxHeadDim) {
    cpu::openblas_single_thread_once();
    attn_partial_gemm(a);
    return;
  }
  const int64_t d = a.head_dim;
  const int64_t n_rows = a.n_q * a.group;
  // Tiles live on the stack: the run step must not allocate.
  alignas(64) float kt[kKeyTile * kMaxHeadDim];  // [kKeyTile, d] f32
  alignas(64) float vt[kKeyTile * kMaxHeadDim];  // [kKeyTile, d] f32
  alignas(64) float acc[kQRows * kMaxHeadDim];   // [kQRows, d] running numerators
  int32_t key_row[kKeyTile];                     // row index of each tile slot (for the mask)
  float m[kQRows], l[kQRows], p[kKeyTile];

  for (int64_t r0 = 0; r0 < n_rows; r0 += kQRows) {
    const int nr = (int)std::min<int64_t>(kQRows, n_rows - r0);
    for (int r = 0; r < nr; r++) {
      m[r] = kNegInf;
      l[r] = 0.0f;
    }
    std::memset(acc, 0, sizeof(float) * (size_t)(nr * d));

    // Stream keys of all ranges in tiles.
    size_t ri = 0;
    int64_t row = a.ranges.empty() ? 0 : a.ranges[0].begin;
    while (ri < a.ranges.size()) {
      int nk = 0;
      while (nk < kKeyTile && ri < a.ranges.size()) {
        if (row >= a.ranges[ri].end) {
          if (++ri < a.ranges.size()) row = a.ranges[ri].begin;
          continue;
        }
        load_row_f32(a.kv.k, a.kv.type, row, a.kv.row_stride, d, kt + (int64_t)nk * d);
        load_row_f32(a.kv.v, a.kv.type, row, a.kv.row_stride, d, vt + (int64_t)nk * d);
        key_row[nk] = (int32_t)row;
        nk++;
        row++;
      }
      if (nk == 0) break;
      for (int r = 0; r < nr; r++) {
        const int64_t gr = r0 + r;
        const int64_t tok = gr / a.group, gh = gr % a.group;
        const float* q = a.q + tok * a.q_tok_stride + gh * d;
        float tmax = kNegInf;
        for (int j = 0; j < nk; j++) {
          float s = dot(q, kt + (int64_t)j * d, d) * a.scale;
          if (a.mask && a.mask->key_pos0 + key_row[j] > a.mask->q_pos0 + tok) s = kNegInf;
          p[j] = s;
          tmax = std::max(tmax, s);
        }
        if (tmax == kNegInf) continue;  // tile fully masked for this row
        const float m_new = std::max(m[r], tmax);
        const float alpha = (m[r] == kNegInf) ? 0.0f : std::exp(m[r] - m_new);
        float psum = 0.0f;
        for (int j = 0; j < nk; j++) {
          p[j] = (p[j] == kNegInf) ? 0.0f : std::exp(p[j] - m_new);
          psum += p[j];
        }
        scale_accumulate(acc + (int64_t)r * d, alpha, p, vt, nk, d);
        l[r] = l[r] * alpha + psum;
        m[r] = m_new;
      }
    }
    for (int r = 0; r < nr; r++) {
      const int64_t gr = r0 + r;
      const int64_t tok = gr / a.group, gh = gr % a.group;
      float* o = a.out + tok * a.out_tok_stride + gh * d;
      float* lse = a.lse + tok * a.lse_tok_stride + gh;
      if (l[r] == 0.0f) {  // no visible key: identity state for the merge
        std::memset(o, 0, sizeof(float) * (size_t)d);
        *lse = kNegInf;
        continue;
      }
      const float inv = 1.0f / l[r];
      for (int64_t c = 0; c < d; c++) o[c] = acc[r * d + c] * inv;
      *lse = m[r] + std::log(l[r]);
    }
  }
}

void attn_merge_states(float* out_a, float* lse_a, const float* out_b, const float* lse_b,
                       int64_t n, int64_t head_dim, int64_t out_stride_a, int64_t out_stride_b) {
  if (out_stride_a < 0) out_stride_a = head_dim;
  if (out_stride_b < 0) out_stride_b = head_dim;
  for (int64_t i = 0; i < n; i++) {
    const float la = lse_a[i], lb = lse_b[i];
    float* oa = out_a + i * out_stride_a;
    const float* ob = out_b + i * out_stride_b;
    if (lb == kNegInf) continue;  // b empty: a unchanged (also handles both empty)
    if (la == kNegInf) {
      std::memcpy(oa, ob, sizeof(float) * (size_t)head_dim);
      lse_a[i] = lb;
      continue;
    }
    const float mx = std::max(la, lb);
    const float wa = std::exp(la - mx), wb = std::exp(lb - mx);
    const float inv = 1.0f / (wa + wb);
    for (int64_t c = 0; c < head_dim; c++) oa[c] = (oa[c] * wa + ob[c] * wb) * inv;
    lse_a[i] = mx + std::log(wa + wb);
  }
}

}  // namespace sqz
