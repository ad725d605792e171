// Naive references for the CUDA squeezed-attention kernels: plain C++ (std only, no project or
// GPU headers, so the GPU test builds with nvcc alone), double accumulation, written for clarity.
//
//   attend          softmax attention of one query over a list of key/value rows -> (out, lse)
//   merge_states    (out, lse) + (out, lse)
//   lookup          squeezed-attention cluster scoring and selection (single-level and
//                   hierarchical), the same estimators as src/backend/cuda/lookup.cuh describes
//                   (mean, and mean_iso when the per-cluster {vbar, radius} are given)
//   kept_ranges     kept fine clusters -> merged row ranges
//   bf16 / f16 bit conversions (round to nearest even)
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

namespace sqz::refcuda {

// ---- 16-bit float conversions ----
inline float bf16_to_f32(uint16_t b) {
  const uint32_t u = (uint32_t)b << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  int exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {
      exp = 1;
      while ((mant & 0x400) == 0) {
        mant <<= 1;
        exp--;
      }
      mant &= 0x3ff;
      bits = sign | ((uint32_t)(exp + 127 - 15) << 23) | (mant << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((uint32_t)(exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline uint16_t f32_to_f16(float f) {
  // Via double-checked rounding of the mantissa; inputs here are finite and moderate.
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000;
  const float a = std::fabs(f);
  if (a >= 65520.0f) return (uint16_t)(sign | 0x7c00);
  if (a < 6.103515625e-05f) {  // subnormal: multiples of 2^-24
    const uint32_t m = (uint32_t)std::nearbyint((double)a * 16777216.0);
    return (uint16_t)(sign | m);
  }
  int e;
  const double fr = std::frexp((double)a, &e);         // a = fr * 2^e, fr in [0.5, 1)
  uint32_t m = (uint32_t)std::nearbyint(fr * 2048.0);  // 11 significant bits
  if (m == 2048) {
    m = 1024;
    e++;
  }
  const uint32_t exp16 = (uint32_t)(e - 1 + 15);
  if (exp16 >= 31) return (uint16_t)(sign | 0x7c00);
  return (uint16_t)(sign | (exp16 << 10) | (m & 0x3ff));
}

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Softmax attention of q over rows (k_i, v_i), scores scale * q.k_i. out[D] normalised, lse in
// natural log; an empty set gives out = 0, lse = -inf.
inline void attend(const float* q, int D, double scale, const std::vector<const float*>& k,
                   const std::vector<const float*>& v, double* out, double* lse) {
  std::fill(out, out + D, 0.0);
  if (k.empty()) {
    *lse = kNegInf;
    return;
  }
  std::vector<double> s(k.size());
  double mx = kNegInf;
  for (size_t i = 0; i < k.size(); i++) {
    double d = 0.0;
    for (int j = 0; j < D; j++) d += (double)q[j] * (double)k[i][j];
    s[i] = d * scale;
    mx = std::max(mx, s[i]);
  }
  double den = 0.0;
  for (size_t i = 0; i < k.size(); i++) {
    const double p = std::exp(s[i] - mx);
    den += p;
    for (int j = 0; j < D; j++) out[j] += p * (double)v[i][j];
  }
  for (int j = 0; j < D; j++) out[j] /= den;
  *lse = mx + std::log(den);
}

inline void merge_states(const double* oa, double la, const double* ob, double lb, int D,
                         double* out, double* lse) {
  const double M = std::max(la, lb);
  if (M == kNegInf) {
    std::fill(out, out + D, 0.0);
    *lse = kNegInf;
    return;
  }
  const double wa = la == kNegInf ? 0.0 : std::exp(la - M);
  const double wb = lb == kNegInf ? 0.0 : std::exp(lb - M);
  for (int j = 0; j < D; j++) out[j] = (wa * oa[j] + wb * ob[j]) / (wa + wb);
  *lse = M + std::log(wa + wb);
}

// One KV head's clustered context for the lookup reference.
struct LookupHead {
  int D = 0;
  int n_fine = 0, n_coarse = 0;         // n_coarse 0 = single level
  const float* fine_c = nullptr;        // [n_fine, D]
  const int32_t* fine_off = nullptr;    // [n_fine + 1] rows
  const float* coarse_c = nullptr;      // [n_coarse, D]
  const int32_t* coarse_off = nullptr;  // [n_coarse + 1] fine indices
  // mean_iso (both null = the mean estimator): {vbar, radius} per cluster.
  const float* fine_iso = nullptr;    // [n_fine, 2]
  const float* coarse_iso = nullptr;  // [n_coarse, 2]
  // Child-bound coarse rule (null = calibrated rule): {scaled spread, iso, r, -} per coarse
  // cluster. C survives iff the mean over queries of e^{b_C} / den >= thr_fine, with the
  // coarse denominator and b_C = x.C + s |x| + min(½|x|² iso, |x| r), x = scale * q.
  const float* coarse_child = nullptr;  // [n_coarse, 4]
};

struct LookupResult {
  std::vector<double> coarse_score;  // [n_coarse] sum over queries of s_C
  std::vector<double> coarse_bound;  // [n_coarse] sum over queries of the child bound (child rule)
  std::vector<uint8_t> coarse_kept;  // [n_coarse]
  std::vector<int32_t> compared;     // fine indices scored, ascending
  std::vector<double> fine_score;    // [compared.size()] sum over queries of s_j
  std::vector<int32_t> kept;         // kept fine indices (non-empty clusters only), ascending
};

// Scores of the query rows `qs` ([nq, D]) for one KV head. s_c(q) = e^{l_c} / den(q),
// l = scale * q.c (mean_iso: + min(½|x|² vbar_c, |x| r_c) with x = scale * q); single level den =
// sum_j n_j e^{l_j}; hierarchical: coarse den over all coarse clusters, fine den = sum_{compared}
// n_j e^{l_j} + sum_{pruned C} N_C e^{L_C}. Kept iff mean over queries >= threshold (coarse:
// thr_coarse, or the child bound against thr_fine when h.coarse_child is set).
inline LookupResult lookup(const LookupHead& h, const float* qs, int nq, double scale,
                           double thr_fine, double thr_coarse) {
  const int D = h.D;
  auto dot = [&](const float* a, const float* b) {
    double d = 0.0;
    for (int j = 0; j < D; j++) d += (double)a[j] * (double)b[j];
    return d * scale;
  };
  // |x|^2 of every scaled query row x = scale * q, computed once (mean_iso only).
  std::vector<double> qx2(nq, 0.0);
  if (h.fine_iso || h.coarse_iso || h.coarse_child)
    for (int q = 0; q < nq; q++) {
      double x2 = 0.0;
      for (int j = 0; j < D; j++)
        x2 += (double)qs[(size_t)q * D + j] * (double)qs[(size_t)q * D + j];
      qx2[q] = x2 * scale * scale;
    }
  // mean_iso correction for a query with |x|^2 = x2 and a cluster's statistics st = {vbar, radius}.
  auto corr = [](double x2, const float* st) {
    if (!st) return 0.0;
    return std::min(0.5 * x2 * (double)st[0], std::sqrt(x2) * (double)st[1]);
  };
  auto nfine = [&](int j) { return (double)(h.fine_off[j + 1] - h.fine_off[j]); };
  LookupResult r;
  std::vector<uint8_t> cmp_flag(h.n_fine, 1);
  // Per query, the pruned-coarse part of the fine denominator as (max, scaled sum).
  std::vector<double> pr_m(nq, kNegInf), pr_s(nq, 0.0);
  if (h.n_coarse > 0) {
    auto ncoarse = [&](int C) {
      return (double)(h.fine_off[h.coarse_off[C + 1]] - h.fine_off[h.coarse_off[C]]);
    };
    std::vector<double> L((size_t)nq * h.n_coarse);
    r.coarse_score.assign(h.n_coarse, 0.0);
    r.coarse_bound.assign(h.n_coarse, 0.0);
    for (int q = 0; q < nq; q++) {
      double mx = kNegInf;
      for (int C = 0; C < h.n_coarse; C++) {
        L[(size_t)q * h.n_coarse + C] = dot(qs + (size_t)q * D, h.coarse_c + (size_t)C * D) +
                                        corr(qx2[q], h.coarse_iso ? h.coarse_iso + 2 * C : nullptr);
        if (ncoarse(C) > 0) mx = std::max(mx, L[(size_t)q * h.n_coarse + C]);
      }
      double den = 0.0;
      for (int C = 0; C < h.n_coarse; C++)  // skip empty clusters: 0 * exp(big) would be NaN
        if (ncoarse(C) > 0) den += ncoarse(C) * std::exp(L[(size_t)q * h.n_coarse + C] - mx);
      for (int C = 0; C < h.n_coarse; C++)
        r.coarse_score[C] += den > 0 ? std::exp(L[(size_t)q * h.n_coarse + C] - mx) / den : 0.0;
      if (h.coarse_child && den > 0) {
        const double xn = std::sqrt(qx2[q]);
        for (int C = 0; C < h.n_coarse; C++) {
          const float* cb = h.coarse_child + 4 * C;
          const double b = dot(qs + (size_t)q * D, h.coarse_c + (size_t)C * D) + cb[0] * xn +
                           std::min(0.5 * qx2[q] * cb[1], xn * cb[2]);
          r.coarse_bound[C] += std::exp(b - mx) / den;
        }
      }
    }
    r.coarse_kept.assign(h.n_coarse, 0);
    std::fill(cmp_flag.begin(), cmp_flag.end(), 0);
    for (int C = 0; C < h.n_coarse; C++) {
      r.coarse_kept[C] = h.coarse_child ? r.coarse_bound[C] >= thr_fine * nq
                                        : r.coarse_score[C] >= thr_coarse * nq;
      if (r.coarse_kept[C]) {
        for (int j = h.coarse_off[C]; j < h.coarse_off[C + 1]; j++) cmp_flag[j] = 1;
      } else if (ncoarse(C) > 0) {
        for (int q = 0; q < nq; q++) {
          const double l = L[(size_t)q * h.n_coarse + C];
          const double m = std::max(pr_m[q], l);
          pr_s[q] = pr_s[q] * std::exp(pr_m[q] - m) + ncoarse(C) * std::exp(l - m);
          pr_m[q] = m;
        }
      }
    }
  }
  for (int j = 0; j < h.n_fine; j++)
    if (cmp_flag[j]) r.compared.push_back(j);
  const size_t nc = r.compared.size();
  r.fine_score.assign(nc, 0.0);
  std::vector<double> l(nc);
  for (int q = 0; q < nq; q++) {
    double mx = pr_m[q];
    for (size_t e = 0; e < nc; e++) {
      l[e] = dot(qs + (size_t)q * D, h.fine_c + (size_t)r.compared[e] * D) +
             corr(qx2[q], h.fine_iso ? h.fine_iso + 2 * r.compared[e] : nullptr);
      if (nfine(r.compared[e]) > 0) mx = std::max(mx, l[e]);
    }
    if (mx == kNegInf) continue;
    double den = pr_m[q] == kNegInf ? 0.0 : pr_s[q] * std::exp(pr_m[q] - mx);
    for (size_t e = 0; e < nc; e++)
      if (nfine(r.compared[e]) > 0) den += nfine(r.compared[e]) * std::exp(l[e] - mx);
    for (size_t e = 0; e < nc; e++) r.fine_score[e] += den > 0 ? std::exp(l[e] - mx) / den : 0.0;
  }
  for (size_t e = 0; e < nc; e++)
    if (nfine(r.compared[e]) > 0 && r.fine_score[e] >= thr_fine * nq)
      r.kept.push_back(r.compared[e]);
  return r;
}

// Kept fine clusters (ascending) -> merged half-open row ranges.
inline std::vector<std::pair<int, int>> kept_ranges(const std::vector<int32_t>& kept,
                                                    const int32_t* fine_off) {
  std::vector<std::pair<int, int>> out;
  for (int j : kept) {
    const int b = fine_off[j], e = fine_off[j + 1];
    if (b == e) continue;
    if (!out.empty() && out.back().second == b)
      out.back().second = e;
    else
      out.push_back({b, e});
  }
  return out;
}

}  // namespace sqz::refcuda
