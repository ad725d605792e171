// Quantized formats: layouts (against gguf-py golden values), quantize->dequantize error budgets,
// optimised vs reference dequantization (bit-exact), SIMD vs scalar kernels, vec_dot error
// bounds derived from the activation format.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "backend/cpu/quant.h"
#include "core/dtype.h"
#include "core/fp16.h"
#include "reference/ref_ops.h"
#include "util/test_util.h"

namespace sqz {
namespace {

using cpu::block_size;

constexpr DType kWeightTypes[] = {DType::kF32,  DType::kF16,  DType::kBF16, DType::kQ4_0,
                                  DType::kQ4_1, DType::kQ5_0, DType::kQ5_1, DType::kQ8_0,
                                  DType::kQ4_K, DType::kQ5_K, DType::kQ6_K};
constexpr DType kAllTypes[] = {DType::kF32,  DType::kF16,  DType::kBF16, DType::kQ4_0, DType::kQ4_1,
                               DType::kQ5_0, DType::kQ5_1, DType::kQ8_0, DType::kQ8_1, DType::kQ4_K,
                               DType::kQ5_K, DType::kQ6_K, DType::kQ8_K};

std::string tname(DType t) {
  return std::string(dtype_name(t));
}

// splitmix64: the same generator the golden-value script (below) uses to make block bytes.
struct SplitMix {
  uint64_t s;
  uint64_t next() {
    s += 0x9E3779B97F4A7C15ull;
    uint64_t z = s;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
};
uint16_t f16bits(uint64_t v) {
  return (uint16_t)(((v & 1) << 15) | (0x2C00 + ((v >> 1) % 0x1000)));
}
uint16_t bf16bits(uint64_t v) {
  return (uint16_t)(((v & 1) << 15) | (0x3800 + ((v >> 1) % 0x0800)));
}

// Offsets of the f16 scale fields inside one block (patched so random bytes decode to finite,
// moderate values: |scale| in [2^-4, 1)).
std::vector<int> f16_fields(DType t) {
  switch (t) {
    case DType::kQ4_0:
    case DType::kQ5_0:
    case DType::kQ8_0:
      return {0};
    case DType::kQ4_1:
    case DType::kQ5_1:
    case DType::kQ4_K:
    case DType::kQ5_K:
      return {0, 2};
    case DType::kQ6_K:
      return {208};
    case DType::kF16:
      return {0};
    default:
      return {};
  }
}

// Random block bytes with sane scales: every code value / bit pattern occurs, unlike data that
// went through a quantizer.
std::vector<uint8_t> random_blocks(DType t, int64_t n, uint64_t seed) {
  SplitMix g{seed};
  const DTypeTraits* tr = dtype_traits(t);
  const int64_t nblk = n / tr->block_size;
  std::vector<uint8_t> buf(dtype_row_size(t, n));
  uint64_t v = 0;
  for (size_t i = 0; i < buf.size(); i++) {
    if (i % 8 == 0) v = g.next();
    buf[i] = (uint8_t)(v >> (8 * (i % 8)));
  }
  const bool bf = t == DType::kBF16;
  for (int64_t b = 0; b < nblk; b++) {
    for (int off : bf ? std::vector<int>{0} : f16_fields(t)) {
      const uint16_t h = bf ? bf16bits(g.next()) : f16bits(g.next());
      buf[b * tr->type_size + off] = (uint8_t)h;
      buf[b * tr->type_size + off + 1] = (uint8_t)(h >> 8);
    }
    if (t == DType::kF32) {  // random f32 bits could be NaN: use small floats instead
      const float f = (float)((int64_t)(g.next() % 20001) - 10000) / 1024.0f;
      std::memcpy(&buf[b * 4], &f, 4);
    }
    if (t == DType::kQ8_1 || t == DType::kQ8_K) {  // f32 d (and s) fields
      const float d = (float)(g.next() % 1000 + 1) / 4096.0f;
      std::memcpy(&buf[b * tr->type_size], &d, 4);
      if (t == DType::kQ8_1) std::memcpy(&buf[b * tr->type_size + 4], &d, 4);
    }
  }
  return buf;
}

// ---------------------------------------------------------------------------------------------
// Layouts against gguf-py (ggml's own Python port of the dequantizers), an implementation
// independent of this repository. Values produced with gguf-py 0.19.0 (numpy) by:
//   g = splitmix64(seed = ggml_type_id * 1000003); bytes = little-endian 64-bit outputs;
//   then for every block and f16 field (offsets as in f16_fields) one more output v patched in as
//   f16bits(v) (bf16bits for BF16); y = gguf.quants.dequantize(bytes, type);
//   s1 = sum(y), s2 = sum((i+1) y), s3 = sum(((i*7919) % 61 - 30) y), samples y[0], y[1],
//   y[n/2+1], y[n-1].
struct Golden {
  DType t;
  int n;
  double s1, s2, s3;
  float sample[4];
};
const Golden kGolden[] = {
    {DType::kQ4_0,
     64,
     2.318115234375,
     330.986328125,
     -1009.2559814453125,
     {-0, 0.391845703, 4.99511719, -4.16259766}},
    {DType::kQ4_1,
     64,
     -59.020263671875,
     -2948.4098510742188,
     -22.306396484375,
     {-0.596130371, -0.712036133, -2.09143066, -2.7755127}},
    {DType::kQ5_0,
     64,
     18.15087890625,
     362.59619140625,
     7.25537109375,
     {1.70556641, -0, -1.82373047, 1.21582031}},
    {DType::kQ5_1,
     64,
     340.591796875,
     3502.951171875,
     364.343017578125,
     {10.253418, 13.7592773, -0.636352539, -1.04650879}},
    {DType::kQ8_0,
     64,
     245.953369140625,
     17414.629272460938,
     -9202.0194091796875,
     {-0.979492188, 2.0814209, -109.760742, 36.2988281}},
    {DType::kQ4_K,
     256,
     -33944.529296875,
     -4725403.1875,
     70196.91064453125,
     {-144.475708, -167.835083, -137.699463, -430.33313}},
    {DType::kQ5_K,
     256,
     -6964.0083618164062,
     -1156931.6860351562,
     5615.1689453125,
     {-58.7733154, -3.89050293, -17.1588135, -32.2680664}},
    {DType::kQ6_K,
     256,
     2583.054931640625,
     518133.29956054688,
     44344.496704101562,
     {103.54126, 196.728394, -32.0036621, 258.767578}},
    {DType::kF16,
     64,
     1.6646728515625,
     120.5736083984375,
     87.33038330078125,
     {0.401855469, -0.0946044922, 0.3125, 0.106140137}},
    {DType::kBF16,
     64,
     -4.0394525527954102,
     -143.61881256103516,
     -25.094245910644531,
     {0.0349121094, -1.7109375, -0.00177001953, -0.251953125}},
};

TEST(CpuQuant, GgufPyGolden) {
  for (const Golden& g : kGolden) {
    SCOPED_TRACE(tname(g.t));
    const std::vector<uint8_t> bytes = random_blocks(g.t, g.n, (uint64_t)g.t * 1000003ull);
    const std::vector<double> y = ref::ref_dequantize(g.t, bytes.data(), g.n);
    ASSERT_EQ((int)y.size(), g.n);
    double s1 = 0, s2 = 0, s3 = 0, a1 = 0, a2 = 0, a3 = 0;
    for (int i = 0; i < g.n; i++) {
      const double w3 = (double)((i * 7919) % 61 - 30);
      s1 += y[i], s2 += (i + 1) * y[i], s3 += w3 * y[i];
      a1 += std::fabs(y[i]), a2 += (i + 1) * std::fabs(y[i]), a3 += std::fabs(w3 * y[i]);
    }
    // gguf-py rounds d*scale*q to f32 where we keep it exact: allow f32 rounding per element.
    EXPECT_NEAR(s1, g.s1, 2e-7 * a1);
    EXPECT_NEAR(s2, g.s2, 2e-7 * a2);
    EXPECT_NEAR(s3, g.s3, 2e-7 * a3);
    const int idx[4] = {0, 1, g.n / 2 + 1, g.n - 1};
    for (int k = 0; k < 4; k++) EXPECT_NEAR(y[idx[k]], g.sample[k], 1e-6 * std::fabs(g.sample[k]));
    // And the optimised dequantizer decodes the same bytes to the correctly rounded values.
    std::vector<float> opt(g.n);
    cpu::dequantize_row(g.t, bytes.data(), opt.data(), g.n);
    for (int i = 0; i < g.n; i++) ASSERT_EQ(opt[i], (float)y[i]) << "element " << i;
  }
}

// ---------------------------------------------------------------------------------------------
// Optimised (SIMD) and scalar dequantizers agree bit-for-bit with the reference on random block
// bytes (all code values, signs, high bits).
TEST(CpuQuant, DequantizeMatchesReferenceBitExact) {
  const uint64_t seed = test::test_seed();
  for (DType t : kAllTypes) {
    SCOPED_TRACE(tname(t));
    const int64_t n = block_size(t) == 256 ? 256 * 7 : (block_size(t) == 32 ? 32 * 37 : 1061);
    const std::vector<uint8_t> bytes = random_blocks(t, n, seed ^ (uint64_t)t);
    const std::vector<double> ref = ref::ref_dequantize(t, bytes.data(), n);
    ASSERT_EQ((int64_t)ref.size(), n);
    std::vector<float> opt(n), scal(n), ob(n);
    test::poison(opt), test::poison(scal);
    cpu::dequantize_row(t, bytes.data(), opt.data(), n);
    cpu::dequantize_row_scalar(t, bytes.data(), scal.data(), n);
    std::vector<uint16_t> bf(n, 0xffff);
    cpu::dequantize_row_bf16(t, bytes.data(), bf.data(), n);
    for (int64_t i = 0; i < n; i++) {
      ASSERT_EQ(opt[i], (float)ref[i]) << "simd, element " << i;
      ASSERT_EQ(scal[i], (float)ref[i]) << "scalar, element " << i;
      ASSERT_EQ(bf[i], fp32_to_bf16((float)ref[i])) << "bf16, element " << i;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// quantize -> dequantize error within the format's budget (derived in the comments), checked
// element by element.

// Test inputs: per 16-element group a random scale so K-quant sub-block scales vary, optional
// offset (Q4_1 mins), outliers, all-zero and constant blocks.
std::vector<float> test_input(std::mt19937_64& rng, int64_t n, int kind) {
  std::normal_distribution<float> nd(0, 1);
  std::uniform_real_distribution<float> ud(0, 1);
  std::vector<float> x(n);
  for (int64_t g = 0; g < n; g += 16) {
    const float scale = std::pow(10.0f, -2.0f + 4.0f * ud(rng));  // 1e-2 .. 1e2
    const float offset = kind == 1 ? scale * 3 * (ud(rng) - 0.5f) * 2 : 0.0f;
    for (int64_t i = g; i < std::min(n, g + 16); i++) x[i] = offset + scale * nd(rng);
  }
  if (kind == 2) {  // outliers + a zero block + a constant block + a positive-only block
    for (int64_t i = 0; i < n; i += 97) x[i] *= 50;
    for (int64_t i = 0; i < std::min<int64_t>(n, 256); i++) x[i] = 0;
    if (n >= 512)
      for (int64_t i = 256; i < 512; i++) x[i] = 1.75f;
    if (n >= 768)
      for (int64_t i = 512; i < 768; i++) x[i] = std::fabs(x[i]) + 2.0f;
  }
  return x;
}

struct Range {
  double lo = 0, hi = 0, amax = 0;  // over the group
};
Range range_of(const float* x, int64_t n, bool clip_at_zero) {
  Range r;
  r.lo = clip_at_zero ? 0 : x[0];
  r.hi = clip_at_zero ? 0 : x[0];
  for (int64_t i = 0; i < n; i++) {
    r.lo = std::min(r.lo, (double)x[i]);
    r.hi = std::max(r.hi, (double)x[i]);
    r.amax = std::max(r.amax, std::fabs((double)x[i]));
  }
  return r;
}

// Per-element error budget of quantize_row(t) for element i of x.
//  Q4_0/Q5_0 (d = signed absmax / -8 or -16, |d| rounded up in f16): codes cover [-8d, 7d]
//    around the absmax sign; the far end clips by at most one step: |err| <= |d| ~ amax/8
//    (amax/16), |d| <= amax/8 (1 + 2^-10).
//  Q4_1/Q5_1: m = min rounded down in f16 (<= 2^-10 |min| below), d = (max - m)/levels rounded
//    up; no clipping: |err| <= d/2 = (range + 2^-10 |min|) / (2 levels) * (1 + 2^-10).
//  Q8_0: d = absmax/127 in f16; codes round with the stored d: |err| <= d/2.
//  Q8_1/Q8_K: f32 d: |err| <= absmax/254.
//  Q4_K/Q5_K (levels L = 15/31): per 32-sub-block j with range_j = max(hi,0) - min(lo,0) and
//    the super-block's largest R: dmin <= R/63 (1+2^-10), stored min exceeds -lo by < dmin,
//    scale ds_j in [req_j, req_j + d), req_j <= (range_j + dmin)/L, d <= max req / 63; so
//    |err| <= ds_j/2 <= range_j/(2L) + R (1/(63*2L) + (1 + 1/63)/(63*2L)) (1 + 2^-10).
//  Q6_K: per 16-sub-block ds_j in [amax_j/31, amax_j/31 + d), d <= A/(31*127) (1+2^-10):
//    |err| <= amax_j/62 + A/(31*127*2) (1 + 2^-10).
//  F16: round to nearest: 2^-11 relative; BF16: 2^-8 relative; F32 exact.
double budget(DType t, const std::vector<float>& x, int64_t i) {
  const double kF32 = 4e-7;  // float evaluation of the quantizer's own arithmetic
  auto group = [&](int64_t g) { return i / g * g; };
  switch (t) {
    case DType::kF32:
      return 0;
    case DType::kF16:
      return std::fabs(x[i]) * std::ldexp(1.0, -11) + std::ldexp(1.0, -25);  // subnormals
    case DType::kBF16:
      return std::fabs(x[i]) * std::ldexp(1.0, -8);
    case DType::kQ4_0:
    case DType::kQ5_0: {
      const Range r = range_of(&x[group(32)], 32, false);
      return r.amax / (t == DType::kQ4_0 ? 8 : 16) * (1 + 1e-3) + kF32 * r.amax;
    }
    case DType::kQ4_1:
    case DType::kQ5_1: {
      const Range r = range_of(&x[group(32)], 32, false);
      const double levels = t == DType::kQ4_1 ? 15 : 31;
      return (r.hi - r.lo + std::ldexp(std::fabs(r.lo), -10)) / (2 * levels) * (1 + 1e-3) +
             kF32 * 32 * r.amax;
    }
    case DType::kQ8_0: {
      const Range r = range_of(&x[group(32)], 32, false);
      return r.amax / 254 * (1 + 1e-3) + kF32 * r.amax;
    }
    case DType::kQ8_1:
    case DType::kQ8_K: {
      const Range r =
          range_of(&x[group(t == DType::kQ8_1 ? 32 : 256)], t == DType::kQ8_1 ? 32 : 256, false);
      return r.amax / 254 * (1 + 1e-6) + kF32 * r.amax;
    }
    case DType::kQ4_K:
    case DType::kQ5_K: {
      const double L = t == DType::kQ4_K ? 15 : 31;
      const Range rj = range_of(&x[group(32)], 32, true);
      double R = 0;
      for (int j = 0; j < 8; j++) {
        const Range rr = range_of(&x[group(256) + 32 * j], 32, true);
        R = std::max(R, rr.hi - rr.lo);
      }
      return ((rj.hi - rj.lo) / (2 * L) +
              R * (1.0 / (63 * 2 * L) + (1 + 1.0 / 63) / (63 * 2 * L))) *
                 (1 + 1e-3) +
             kF32 * 64 * R;
    }
    case DType::kQ6_K: {
      const Range rj = range_of(&x[group(16)], 16, false);
      double A = 0;
      for (int j = 0; j < 16; j++)
        A = std::max(A, range_of(&x[group(256) + 16 * j], 16, false).amax);
      return (rj.amax / 62 + A / (31.0 * 127 * 2)) * (1 + 1e-3) + kF32 * 32 * A;
    }
    default:
      return 0;
  }
}

TEST(CpuQuant, RoundTripWithinBudget) {
  std::mt19937_64 rng(test::test_seed());
  for (DType t : kAllTypes) {
    for (int kind = 0; kind < 3; kind++) {
      SCOPED_TRACE(tname(t) + " input kind " + std::to_string(kind));
      const int64_t n = 256 * 12;
      const std::vector<float> x = test_input(rng, n, kind);
      std::vector<uint8_t> q(dtype_row_size(t, n));
      std::vector<uint8_t> qs(q.size());
      cpu::quantize_row(t, x.data(), q.data(), n);
      cpu::quantize_row_scalar(t, x.data(), qs.data(), n);
      ASSERT_EQ(q, qs) << "SIMD and scalar quantizers disagree";
      std::vector<float> y(n);
      test::poison(y);
      cpu::dequantize_row(t, q.data(), y.data(), n);
      const std::vector<double> ref = ref::ref_dequantize(t, q.data(), n);
      double worst = 0;
      for (int64_t i = 0; i < n; i++) {
        ASSERT_TRUE(std::isfinite(y[i])) << i;
        ASSERT_EQ(y[i], (float)ref[i]) << "element " << i;
        const double err = std::fabs(ref[i] - x[i]);
        const double b = budget(t, x, i);
        ASSERT_LE(err, b) << "element " << i << " x=" << x[i] << " y=" << ref[i];
        if (b > 0) worst = std::max(worst, err / b);
      }
      // The budget is derived, not fitted: the worst element should use a good part of it
      // (guards against a budget so loose it could never fail). Exact formats excepted.
      if (t != DType::kF32 && kind == 0) {
        EXPECT_GT(worst, 0.3) << "budget suspiciously loose";
      }
    }
  }
}

// Blocks whose data is all zero must come back as exact zeros (no NaN from 0/0 scales).
TEST(CpuQuant, ZeroInputIsExact) {
  for (DType t : kAllTypes) {
    SCOPED_TRACE(tname(t));
    const int64_t n = 512;
    std::vector<float> x(n, 0.0f), y(n);
    std::vector<uint8_t> q(dtype_row_size(t, n));
    cpu::quantize_row(t, x.data(), q.data(), n);
    test::poison(y);
    cpu::dequantize_row(t, q.data(), y.data(), n);
    for (int64_t i = 0; i < n; i++) ASSERT_EQ(y[i], 0.0f) << i;
  }
}

// ---------------------------------------------------------------------------------------------
// vec_dot.

// Bound on the float rounding of a block-scaled dot: every kernel forms exact integer block
// sums, scales each once and adds at most nb + (lanes) partials in f32. `mag` bounds the sum of
// |partial| terms (|d q x| and |m s| separately, since they can cancel).
double float_noise(int64_t n, double mag) {
  return (double)(n / 32 + 64) * std::ldexp(1.0, -23) * mag;
}

// mag for weights that came out of quantize_row. The kernels split each block into
// d*sum(c q) over unsigned codes c and a constant offset*s_x: for Q4_1/Q5_1/K-quant mins
// |d c| <= range (1 + small) and |m| <= max|w|; for the symmetric formats the code bias adds
// at most 2 max|w| (Q4_0: 15|d| + 8|d| with |d| = max|w|/8; Q8_0: 255|d| with |d| = max|w|/127;
// Q6_K: 95 |d sc| with |d sc| ~ max|w|/31). (2 range + 4 max|w|) * sum|x| covers all.
double dot_magnitude(const std::vector<double>& w, const std::vector<double>& xq, int64_t bs) {
  double mag = 0;
  for (size_t b = 0; b < w.size(); b += bs) {
    double lo = 0, hi = 0, amax = 0, sx = 0;
    for (size_t i = b; i < b + bs; i++) {
      lo = std::min(lo, w[i]), hi = std::max(hi, w[i]), amax = std::max(amax, std::fabs(w[i]));
      sx += std::fabs(xq[i]);
    }
    mag += (2 * (hi - lo) + 4 * amax) * sx;
  }
  return mag;
}

TEST(CpuQuant, VecDotWithinActivationBudget) {
  std::mt19937_64 rng(test::test_seed() + 1);
  for (DType t : kWeightTypes) {
    const DType vt = cpu::vec_dot_type(t);
    ASSERT_NE(vt, DType::kInvalid) << tname(t);
    const int64_t bs = block_size(t);
    const int64_t sizes[3] = {bs == 256 ? 256 * 9 : 32 * 37, bs == 256 ? 256 * 2 : 32 * 48,
                              bs == 1 ? 77 : 512};
    for (int64_t n : sizes) {
      for (int rep = 0; rep < 3; rep++) {
        SCOPED_TRACE(tname(t) + " n=" + std::to_string(n) + " rep " + std::to_string(rep));
        const std::vector<float> wf = test_input(rng, n, rep == 1 ? 1 : 0);
        std::vector<float> x = test_input(rng, n, rep == 2 ? 2 : 0);
        std::vector<uint8_t> w(dtype_row_size(t, n)), xq(dtype_row_size(vt, n));
        cpu::quantize_row(t, wf.data(), w.data(), n);
        cpu::quantize_row(vt, x.data(), xq.data(), n);
        const std::vector<double> wd = ref::ref_dequantize(t, w.data(), n);
        const std::vector<double> xd = ref::ref_dequantize(vt, xq.data(), n);
        // (1) against the exact dot of the quantized operands: only float rounding allowed.
        double exact_q = 0, exact = 0, act_err = 0;
        const int64_t abs_bs = std::max<int64_t>(block_size(vt), 1);
        for (int64_t i = 0; i < n; i++) {
          exact_q += wd[i] * xd[i];
          exact += wd[i] * (double)x[i];
        }
        // (2) against the unquantized activations: |x - xq| <= amax(block)/254 per element
        // (Q8_0's f16 scale: d/2 with d = absmax/127 (1 + 2^-11)), so the dot moves by at most
        // sum |w_i| * that.
        for (int64_t b = 0; b < n; b += abs_bs) {
          double amax = 0, sw = 0;
          for (int64_t i = b; i < std::min(n, b + abs_bs); i++) {
            amax = std::max(amax, std::fabs((double)x[i]));
            sw += std::fabs(wd[i]);
          }
          if (vt != DType::kF32) act_err += sw * amax / 254 * (1 + 1e-3);
        }
        const double noise = float_noise(n, dot_magnitude(wd, xd, std::max<int64_t>(bs, 32)));
        const float got = cpu::vec_dot(t, n, w.data(), xq.data());
        const float got_scalar = cpu::vec_dot_scalar(t, n, w.data(), xq.data());
        ASSERT_TRUE(std::isfinite(got));
        EXPECT_NEAR(got, exact_q, noise) << "simd vs exact dot of quantized operands";
        EXPECT_NEAR(got_scalar, exact_q, noise) << "scalar vs exact dot of quantized operands";
        EXPECT_NEAR(got, exact, act_err + noise) << "vs dot with f32 activations";
      }
    }
  }
}

// Random block bytes (every code value, Q8_0's -128) through the symmetric formats, where
// |w_i x_i| bounds every partial term directly.
TEST(CpuQuant, VecDotRandomCodes) {
  const uint64_t seed = test::test_seed();
  std::mt19937_64 rng(seed + 2);
  for (DType t :
       {DType::kQ4_0, DType::kQ5_0, DType::kQ8_0, DType::kQ6_K, DType::kF16, DType::kBF16}) {
    SCOPED_TRACE(tname(t));
    const DType vt = cpu::vec_dot_type(t);
    const int64_t n = block_size(t) == 256 ? 256 * 5 : 32 * 41;
    const std::vector<uint8_t> w = random_blocks(t, n, seed * 31 + (uint64_t)t);
    const std::vector<float> x = test::randn(rng, n);
    std::vector<uint8_t> xq(dtype_row_size(vt, n));
    cpu::quantize_row(vt, x.data(), xq.data(), n);
    const std::vector<double> wd = ref::ref_dequantize(t, w.data(), n);
    const std::vector<double> xd = ref::ref_dequantize(vt, xq.data(), n);
    double exact = 0, mag = 0;
    for (int64_t i = 0; i < n; i++) exact += wd[i] * xd[i], mag += std::fabs(wd[i] * xd[i]);
    // The kernels work on unsigned codes plus a per-block offset: bound those terms too,
    // |d| (max code + bias) |x| per element, scales read straight from the block bytes.
    const DTypeTraits* tr = dtype_traits(t);
    for (int64_t i = 0; i < n && tr->block_size > 1; i++) {
      const uint8_t* blk = &w[(i / tr->block_size) * tr->type_size];
      double scale = 0, span = 0;
      if (t == DType::kQ6_K) {
        scale = fp16_to_fp32_portable((uint16_t)(blk[208] | (blk[209] << 8))) *
                (int8_t)blk[192 + (i % 256) / 16];
        span = 63 + 32;
      } else {
        scale = fp16_to_fp32_portable((uint16_t)(blk[0] | (blk[1] << 8)));
        span = t == DType::kQ4_0 ? 15 + 8 : (t == DType::kQ5_0 ? 31 + 16 : 255);
      }
      mag += std::fabs(scale) * span * std::fabs(xd[i]);
    }
    EXPECT_NEAR(cpu::vec_dot(t, n, w.data(), xq.data()), exact, float_noise(n, mag));
    EXPECT_NEAR(cpu::vec_dot_scalar(t, n, w.data(), xq.data()), exact, float_noise(n, mag));
  }
}

TEST(CpuQuant, VecDotTypes) {
  EXPECT_EQ(cpu::vec_dot_type(DType::kQ4_0), DType::kQ8_1);
  EXPECT_EQ(cpu::vec_dot_type(DType::kQ4_1), DType::kQ8_1);
  EXPECT_EQ(cpu::vec_dot_type(DType::kQ5_0), DType::kQ8_1);
  EXPECT_EQ(cpu::vec_dot_type(DType::kQ5_1), DType::kQ8_1);
  EXPECT_EQ(cpu::vec_dot_type(DType::kQ8_0), DType::kQ8_1);
  EXPECT_EQ(cpu::vec_dot_type(DType::kQ4_K), DType::kQ8_K);
  EXPECT_EQ(cpu::vec_dot_type(DType::kQ5_K), DType::kQ8_K);
  EXPECT_EQ(cpu::vec_dot_type(DType::kQ6_K), DType::kQ8_K);
  EXPECT_EQ(cpu::vec_dot_type(DType::kF16), DType::kF32);
  EXPECT_EQ(cpu::vec_dot_type(DType::kBF16), DType::kF32);
  EXPECT_EQ(cpu::vec_dot_type(DType::kF32), DType::kF32);
  EXPECT_EQ(cpu::vec_dot_type(DType::kQ8_K), DType::kInvalid);
  for (DType t : kWeightTypes) EXPECT_TRUE(cpu::is_weight_type(t)) << tname(t);
  EXPECT_FALSE(cpu::is_weight_type(DType::kQ8_1));
  EXPECT_FALSE(cpu::is_weight_type(DType::kInvalid));
}

}  // namespace
}  // namespace sqz
