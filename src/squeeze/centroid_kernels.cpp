#include "squeeze/centroid_kernels.h"

// Highway 1.0.3 refuses to build its dynamic-dispatch table for some -march=native targets
// (AVX-512 FP16 hosts: "best baseline should be included in dynamic targets"); we only use the
// static target, which is what -march selects anyway.
#ifndef HWY_COMPILE_ONLY_STATIC
#define HWY_COMPILE_ONLY_STATIC 1
#endif
#include <hwy/highway.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "core/fp16.h"

namespace sqz::cpu {

namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

namespace {

constexpr int kMaxLanes = HWY_MAX_BYTES / sizeof(float);
// Rows per register tile: 8 with 32 vector registers (AVX-512), 4 otherwise (AVX2's 16).
constexpr int kRows = HWY_MAX_BYTES >= 64 ? 8 : 4;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// R rows of X against every centroid, keeping per SIMD lane the best and second-best dot and the
// index of the best; lanes are reduced at the end. Padding columns start at -inf so they never
// win (a zero start would beat all-negative real dots).
template <int R, bool kSecond>
void argmax_rows(const float* X, int64_t d, int64_t ldx, const float* Ct, int64_t k, int64_t kp,
                 int32_t* best, float* best_dot, float* second_dot) {
  const DF df;
  const int64_t N = (int64_t)hn::Lanes(df);
  const int64_t TW = 2 * N;
  alignas(64) float bias[2 * kMaxLanes];
  for (int64_t c = 0; c < TW; c++) bias[c] = 0.0f;
  const int64_t last_tile = (k - 1) / TW * TW;
  for (int64_t c = 0; c < TW; c++)
    if (last_tile + c >= k) bias[c] = kNegInf;

  VF b1[R], b2[R], bi[R];
  for (int r = 0; r < R; r++) {
    b1[r] = hn::Set(df, kNegInf);
    b2[r] = hn::Set(df, kNegInf);
    bi[r] = hn::Zero(df);
  }
  const VF iota0 = hn::Iota(df, 0.0f);
  const VF iota1 = hn::Iota(df, (float)N);
  for (int64_t j = 0; j < kp; j += TW) {
    VF a0[R], a1[R];
    const VF z0 = j == last_tile ? hn::LoadU(df, bias) : hn::Zero(df);
    const VF z1 = j == last_tile ? hn::LoadU(df, bias + N) : hn::Zero(df);
    for (int r = 0; r < R; r++) {
      a0[r] = z0;
      a1[r] = z1;
    }
    const float* ct = Ct + j;
    for (int64_t t = 0; t < d; t++) {
      const VF c0 = hn::LoadU(df, ct + t * kp);
      const VF c1 = hn::LoadU(df, ct + t * kp + N);
      for (int r = 0; r < R; r++) {
        const VF x = hn::Set(df, X[r * ldx + t]);
        a0[r] = hn::MulAdd(x, c0, a0[r]);
        a1[r] = hn::MulAdd(x, c1, a1[r]);
      }
    }
    // Column indices as floats: exact below 2^24 centroids, and lets one blend serve both.
    const VF jv0 = hn::Add(iota0, hn::Set(df, (float)j));
    const VF jv1 = hn::Add(iota1, hn::Set(df, (float)j));
    for (int r = 0; r < R; r++) {
      // Strict > keeps the lowest column on ties (columns arrive in increasing order per lane).
      // second' = max(second, min(a, best)) is right whether or not a beats best.
      if (kSecond) b2[r] = hn::Max(b2[r], hn::Min(a0[r], b1[r]));
      bi[r] = hn::IfThenElse(hn::Gt(a0[r], b1[r]), jv0, bi[r]);
      b1[r] = hn::Max(b1[r], a0[r]);
      if (kSecond) b2[r] = hn::Max(b2[r], hn::Min(a1[r], b1[r]));
      bi[r] = hn::IfThenElse(hn::Gt(a1[r], b1[r]), jv1, bi[r]);
      b1[r] = hn::Max(b1[r], a1[r]);
    }
  }
  alignas(64) float l1[kMaxLanes], l2[kMaxLanes], li[kMaxLanes];
  for (int r = 0; r < R; r++) {
    hn::StoreU(b1[r], df, l1);
    hn::StoreU(b2[r], df, l2);
    hn::StoreU(bi[r], df, li);
    int64_t win = 0;
    for (int64_t c = 1; c < N; c++)
      if (l1[c] > l1[win] || (l1[c] == l1[win] && li[c] < li[win])) win = c;
    best[r] = (int32_t)li[win];
    best_dot[r] = l1[win];
    if (kSecond) {
      float s = kNegInf;
      for (int64_t c = 0; c < N; c++) {
        s = std::max(s, l2[c]);
        if (c != win) s = std::max(s, l1[c]);
      }
      second_dot[r] = s;
    }
  }
}

template <bool kSecond>
void argmax_all(const float* X, int64_t n, int64_t d, int64_t ldx, const float* Ct, int64_t k,
                int32_t* best, float* best_dot, float* second_dot) {
  const int64_t kp = centroid_padded_cols(k);
  int64_t i = 0;
  for (; i + kRows <= n; i += kRows)
    argmax_rows<kRows, kSecond>(X + i * ldx, d, ldx, Ct, k, kp, best + i, best_dot + i,
                                kSecond ? second_dot + i : nullptr);
  for (; i < n; i++)
    argmax_rows<1, kSecond>(X + i * ldx, d, ldx, Ct, k, kp, best + i, best_dot + i,
                            kSecond ? second_dot + i : nullptr);
}

template <int R>
void dots_rows(const float* X, int64_t d, int64_t ldx, const float* Ct, int64_t kp, int64_t j0,
               int64_t j1, float* S, int64_t lds) {
  const DF df;
  const int64_t N = (int64_t)hn::Lanes(df);
  const int64_t TW = 2 * N;
  alignas(64) float tmp[2 * kMaxLanes];
  for (int64_t j = j0; j < j1; j += TW) {
    VF a0[R], a1[R];
    for (int r = 0; r < R; r++) a0[r] = a1[r] = hn::Zero(df);
    const float* ct = Ct + j;
    for (int64_t t = 0; t < d; t++) {
      const VF c0 = hn::LoadU(df, ct + t * kp);
      const VF c1 = hn::LoadU(df, ct + t * kp + N);
      for (int r = 0; r < R; r++) {
        const VF x = hn::Set(df, X[r * ldx + t]);
        a0[r] = hn::MulAdd(x, c0, a0[r]);
        a1[r] = hn::MulAdd(x, c1, a1[r]);
      }
    }
    const int64_t w = std::min(TW, j1 - j);
    for (int r = 0; r < R; r++) {
      float* out = S + r * lds + (j - j0);
      if (w == TW) {
        hn::StoreU(a0[r], df, out);
        hn::StoreU(a1[r], df, out + N);
      } else {
        hn::StoreU(a0[r], df, tmp);
        hn::StoreU(a1[r], df, tmp + N);
        std::memcpy(out, tmp, (size_t)w * sizeof(float));
      }
    }
  }
}

}  // namespace

int64_t centroid_tile_cols() {
  return 2 * (int64_t)hn::Lanes(DF());
}

void centroids_transpose(const float* C, int64_t k, int64_t d, int64_t ldc, float* Ct) {
  const int64_t kp = centroid_padded_cols(k);
  std::fill(Ct, Ct + centroid_transposed_size(k, d), 0.0f);
  // Blocked so both the strided reads and the writes stay in cache for large k.
  constexpr int64_t B = 32;
  for (int64_t j0 = 0; j0 < k; j0 += B)
    for (int64_t t0 = 0; t0 < d; t0 += B)
      for (int64_t j = j0; j < std::min(k, j0 + B); j++)
        for (int64_t t = t0; t < std::min(d, t0 + B); t++) Ct[t * kp + j] = C[j * ldc + t];
}

void centroid_argmax(const float* X, int64_t n, int64_t d, int64_t ldx, const float* Ct, int64_t k,
                     int32_t* best, float* best_dot, float* second_dot) {
  if (n <= 0 || k <= 0) return;
  if (second_dot)
    argmax_all<true>(X, n, d, ldx, Ct, k, best, best_dot, second_dot);
  else
    argmax_all<false>(X, n, d, ldx, Ct, k, best, best_dot, nullptr);
}

void centroid_dots(const float* X, int64_t n, int64_t d, int64_t ldx, const float* Ct, int64_t k,
                   int64_t j0, int64_t j1, float* S, int64_t lds) {
  if (n <= 0 || j1 <= j0) return;
  const int64_t kp = centroid_padded_cols(k);
  int64_t i = 0;
  for (; i + kRows <= n; i += kRows)
    dots_rows<kRows>(X + i * ldx, d, ldx, Ct, kp, j0, j1, S + i * lds, lds);
  for (; i < n; i++) dots_rows<1>(X + i * ldx, d, ldx, Ct, kp, j0, j1, S + i * lds, lds);
}

float row_dot(const float* a, const float* b, int64_t d) {
  const DF df;
  const int64_t N = (int64_t)hn::Lanes(df);
  VF acc0 = hn::Zero(df), acc1 = hn::Zero(df);
  int64_t t = 0;
  for (; t + 2 * N <= d; t += 2 * N) {
    acc0 = hn::MulAdd(hn::LoadU(df, a + t), hn::LoadU(df, b + t), acc0);
    acc1 = hn::MulAdd(hn::LoadU(df, a + t + N), hn::LoadU(df, b + t + N), acc1);
  }
  float s = hn::GetLane(hn::SumOfLanes(df, hn::Add(acc0, acc1)));
  for (; t < d; t++) s += a[t] * b[t];
  return s;
}

float kpp_min_update(const uint16_t* Xt, int64_t n, int64_t ldt, int64_t d, const float* c,
                     float* mind) {
  const DF df;
  const hn::Rebind<hwy::float16_t, DF> dh;
  const int64_t N = (int64_t)hn::Lanes(df);
  const VF one = hn::Set(df, 1.0f);
  VF tot = hn::Zero(df);
  const hwy::float16_t* X16 = reinterpret_cast<const hwy::float16_t*>(Xt);
  auto ld = [&](const hwy::float16_t* p) { return hn::PromoteTo(df, hn::LoadU(dh, p)); };
  int64_t i = 0;
  for (; i + 4 * N <= n; i += 4 * N) {
    VF a0 = hn::Zero(df), a1 = hn::Zero(df), a2 = hn::Zero(df), a3 = hn::Zero(df);
    for (int64_t t = 0; t < d; t++) {
      const VF ct = hn::Set(df, c[t]);
      const hwy::float16_t* row = X16 + t * ldt + i;
      a0 = hn::MulAdd(ct, ld(row), a0);
      a1 = hn::MulAdd(ct, ld(row + N), a1);
      a2 = hn::MulAdd(ct, ld(row + 2 * N), a2);
      a3 = hn::MulAdd(ct, ld(row + 3 * N), a3);
    }
    const VF m0 = hn::Min(hn::LoadU(df, mind + i), hn::Sub(one, a0));
    const VF m1 = hn::Min(hn::LoadU(df, mind + i + N), hn::Sub(one, a1));
    const VF m2 = hn::Min(hn::LoadU(df, mind + i + 2 * N), hn::Sub(one, a2));
    const VF m3 = hn::Min(hn::LoadU(df, mind + i + 3 * N), hn::Sub(one, a3));
    hn::StoreU(m0, df, mind + i);
    hn::StoreU(m1, df, mind + i + N);
    hn::StoreU(m2, df, mind + i + 2 * N);
    hn::StoreU(m3, df, mind + i + 3 * N);
    const VF z = hn::Zero(df);
    tot = hn::Add(tot, hn::Add(hn::Add(hn::Max(m0, z), hn::Max(m1, z)),
                               hn::Add(hn::Max(m2, z), hn::Max(m3, z))));
  }
  float total = hn::GetLane(hn::SumOfLanes(df, tot));
  for (; i < n; i++) {
    float s = 0.0f;
    for (int64_t t = 0; t < d; t++) s += c[t] * fp16_to_fp32(Xt[t * ldt + i]);
    mind[i] = std::min(mind[i], 1.0f - s);
    total += std::max(0.0f, mind[i]);
  }
  return total;
}

}  // namespace sqz::cpu
