// Element-wise / row-wise ops of the forward pass, AVX-512 with scalar fallbacks.
//
// Written with intrinsics plus a small hand-written exp rather than Highway's contrib Exp:
// sqz_core does not link libhwy, and Highway 1.0.3 (Debian) only builds under -march=native on
// Sapphire Rapids with HWY_COMPILE_ONLY_STATIC, whose debug/sanitizer builds then reference
// libhwy symbols. The exp below is Cephes' single-precision polynomial (~1 ulp) with AVX-512's
// scalef doing the 2^n scaling (it handles overflow to inf and underflow to 0 by itself).
#include "backend/cpu/ops.h"

#include <algorithm>
#include <cmath>

#if defined(__AVX512F__)
#include <immintrin.h>
#define SQZ_OPS_AVX512 1
// GCC 12 false positive on the undefined pass-through operand of many AVX-512 intrinsics
// (GCC PR 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "backend/cpu/simd_math.h"

namespace sqz::cpu {

namespace {

#if defined(SQZ_OPS_AVX512)
inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
}

#endif

}  // namespace

void rmsnorm(const float* x, const float* w, float* y, int64_t n_rows, int64_t n, float eps) {
  for (int64_t r = 0; r < n_rows; r++) {
    const float* xr = x + r * n;
    float* yr = y + r * n;
    // Sum of squares in double: no overflow for |x| up to FLT_MAX and no loss for long rows.
    double ss = 0;
#if defined(SQZ_OPS_AVX512)
    __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
    for (int64_t i = 0; i < n; i += 16) {
      const __m512 v = _mm512_maskz_loadu_ps(tail_mask(n - i), xr + i);
      const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
      const __m512d hi =
          _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
      a0 = _mm512_fmadd_pd(lo, lo, a0);
      a1 = _mm512_fmadd_pd(hi, hi, a1);
    }
    ss = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
#else
    for (int64_t i = 0; i < n; i++) ss += (double)xr[i] * xr[i];
#endif
    const float scale = (float)(1.0 / std::sqrt(ss / (double)n + (double)eps));
#if defined(SQZ_OPS_AVX512)
    const __m512 vs = _mm512_set1_ps(scale);
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 m = tail_mask(n - i);
      const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, xr + i), vs);
      _mm512_mask_storeu_ps(yr + i, m, _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, w + i)));
    }
#else
    for (int64_t i = 0; i < n; i++) yr[i] = xr[i] * scale * w[i];
#endif
  }
}

void rope_freqs(float* out, int64_t head_dim, float theta, float scale_factor,
                float low_freq_factor, float high_freq_factor, int orig_ctx) {
  // Double precision then one rounding: the correctly rounded frequencies (HF computes the same
  // formula in f32, so it may differ from these by an ulp).
  const double kTwoPi = 6.283185307179586476925286766559;
  for (int64_t i = 0; i < head_dim / 2; i++) {
    double f = std::pow((double)theta, -(double)(2 * i) / (double)head_dim);
    if (scale_factor > 0) {
      // Llama 3.1 ("rope_type": "llama3"), as HF's _compute_llama3_parameters: keep the high
      // frequencies (wavelength < orig_ctx / high_freq_factor), divide the low ones
      // (wavelength > orig_ctx / low_freq_factor) by the factor, interpolate in between.
      const double wavelen = kTwoPi / f;
      const double lo_wavelen = orig_ctx / (double)low_freq_factor;
      const double hi_wavelen = orig_ctx / (double)high_freq_factor;
      if (wavelen > lo_wavelen) {
        f /= scale_factor;
      } else if (!(wavelen < hi_wavelen)) {
        const double smooth =
            (orig_ctx / wavelen - low_freq_factor) / ((double)high_freq_factor - low_freq_factor);
        f = (1 - smooth) * f / scale_factor + smooth * f;
      }
    }
    out[i] = (float)f;
  }
}

void rope(float* x, int64_t n_tok, int64_t n_heads, int64_t head_dim, int64_t tok_stride,
          const int32_t* pos, const float* freq, bool neox) {
  const int64_t half = head_dim / 2;
  constexpr int64_t kMaxHalf = 512;  // head_dim <= 1024; larger heads are processed in slices
  float c[kMaxHalf], s[kMaxHalf];
  const double kTwoPi = 6.283185307179586476925286766559;
  for (int64_t t = 0; t < n_tok; t++) {
    float* xt = x + t * tok_stride;
    for (int64_t i0 = 0; i0 < half; i0 += kMaxHalf) {
      const int64_t len = std::min(kMaxHalf, half - i0);
      // Angle in double and reduced to [-pi, pi] before the f32 sincos: a f32 product pos*freq
      // would be off by up to pos*freq*2^-24 rad (1e-3 rad at position 16k).
      for (int64_t i = 0; i < len; i++) {
        const double a = (double)pos[t] * (double)freq[i0 + i];
        const double r = a - kTwoPi * std::nearbyint(a / kTwoPi);
        sincosf((float)r, &s[i], &c[i]);
      }
      for (int64_t h = 0; h < n_heads; h++) {
        float* v = xt + h * head_dim;
        if (neox) {  // pairs (i, i + half)
          float* a = v + i0;
          float* b = v + half + i0;
          int64_t i = 0;
#if defined(SQZ_OPS_AVX512)
          for (; i < len; i += 16) {
            const __mmask16 m = tail_mask(len - i);
            const __m512 va = _mm512_maskz_loadu_ps(m, a + i), vb = _mm512_maskz_loadu_ps(m, b + i);
            const __m512 vc = _mm512_maskz_loadu_ps(m, c + i), vs = _mm512_maskz_loadu_ps(m, s + i);
            _mm512_mask_storeu_ps(a + i, m, _mm512_fmsub_ps(va, vc, _mm512_mul_ps(vb, vs)));
            _mm512_mask_storeu_ps(b + i, m, _mm512_fmadd_ps(va, vs, _mm512_mul_ps(vb, vc)));
          }
#endif
          for (; i < len; i++) {
            const float x0 = a[i], x1 = b[i];
            a[i] = x0 * c[i] - x1 * s[i];
            b[i] = x0 * s[i] + x1 * c[i];
          }
        } else {  // adjacent pairs (2i, 2i + 1)
          float* p = v + 2 * i0;
          int64_t i = 0;
#if defined(SQZ_OPS_AVX512)
          // 8 pairs per vector: out = v * [c c] + swap(v) * [-s s].
          const __m512i dup = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
          const __m512 sign =
              _mm512_setr_ps(-1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1);
          for (; i + 8 <= len; i += 8) {
            const __m512 vv = _mm512_loadu_ps(p + 2 * i);
            const __m512 cc =
                _mm512_permutexvar_ps(dup, _mm512_castps256_ps512(_mm256_loadu_ps(c + i)));
            const __m512 ss = _mm512_mul_ps(
                sign, _mm512_permutexvar_ps(dup, _mm512_castps256_ps512(_mm256_loadu_ps(s + i))));
            const __m512 sw = _mm512_permute_ps(vv, 0xB1);  // swap within pairs
            _mm512_storeu_ps(p + 2 * i, _mm512_fmadd_ps(vv, cc, _mm512_mul_ps(sw, ss)));
          }
#endif
          for (; i < len; i++) {
            const float x0 = p[2 * i], x1 = p[2 * i + 1];
            p[2 * i] = x0 * c[i] - x1 * s[i];
            p[2 * i + 1] = x0 * s[i] + x1 * c[i];
          }
        }
      }
    }
  }
}

void softmax(float* x, int64_t n_rows, int64_t n) {
  for (int64_t r = 0; r < n_rows; r++) {
    float* xr = x + r * n;
    float mx = -INFINITY;
    for (int64_t i = 0; i < n; i++) mx = std::max(mx, xr[i]);
    if (mx == -INFINITY) {  // nothing visible (all -inf, or n == 0): define the row as zeros
      std::fill(xr, xr + n, 0.0f);
      continue;
    }
    // Sum in double: exact enough for any row length, and the exps are all <= 1.
    double sum = 0;
    int64_t i = 0;
#if defined(SQZ_OPS_AVX512)
    const __m512 vmx = _mm512_set1_ps(mx);
    __m512d acc = _mm512_setzero_pd();
    for (; i < n; i += 16) {
      const __mmask16 m = tail_mask(n - i);
      const __m512 e =
          _mm512_maskz_mov_ps(m, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, xr + i), vmx)));
      _mm512_mask_storeu_ps(xr + i, m, e);
      acc = _mm512_add_pd(acc, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
      acc = _mm512_add_pd(
          acc, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
    }
    sum = _mm512_reduce_add_pd(acc);
#endif
    for (; i < n; i++) {
      xr[i] = std::exp(xr[i] - mx);
      sum += xr[i];
    }
    const float inv = (float)(1.0 / sum);
    i = 0;
#if defined(SQZ_OPS_AVX512)
    for (; i < n; i += 16) {
      const __mmask16 m = tail_mask(n - i);
      _mm512_mask_storeu_ps(xr + i, m,
                            _mm512_mul_ps(_mm512_maskz_loadu_ps(m, xr + i), _mm512_set1_ps(inv)));
    }
#endif
    for (; i < n; i++) xr[i] *= inv;
  }
}

void swiglu(const float* gate, const float* up, float* out, int64_t n) {
  int64_t i = 0;
#if defined(SQZ_OPS_AVX512)
  const __m512 one = _mm512_set1_ps(1.0f);
  for (; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 g = _mm512_maskz_loadu_ps(m, gate + i);
    // silu(g) = g / (1 + e^-g): e^-g overflows to inf for g < -89 and the quotient goes to -0,
    // which is the limit.
    const __m512 silu =
        _mm512_div_ps(g, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), g))));
    _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(silu, _mm512_maskz_loadu_ps(m, up + i)));
  }
#endif
  for (; i < n; i++) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

}  // namespace sqz::cpu
