// rmsnorm / rope (+ Llama-3 frequency scaling) / softmax / swiglu against the double references,
// element by element, odd sizes, extreme values, aliasing, untouched padding.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "backend/cpu/ops.h"
#include "reference/ref_ops.h"
#include "util/test_util.h"

namespace sqz {
namespace {

constexpr double kU = 5.9604644775390625e-08;  // 2^-24, f32 unit roundoff

TEST(CpuOps, RmsNorm) {
  std::mt19937_64 rng(test::test_seed());
  for (int64_t n : {1, 7, 64, 576, 1001}) {
    // Ordinary, huge (x^2 overflows f32), tiny (x^2 underflows f32) magnitudes.
    for (float scale : {1.0f, 1e30f, 1e-25f}) {
      SCOPED_TRACE("n=" + std::to_string(n) + " scale=" + std::to_string(scale));
      const int64_t rows = 3;
      std::vector<float> x = test::randn(rng, rows * n, scale);
      const std::vector<float> w = test::randn(rng, n);
      const float eps = 1e-5f * (scale == 1.0f ? 1.0f : 0.0f);  // eps would swamp tiny rows
      const std::vector<double> ref = ref::ref_rmsnorm(x.data(), w.data(), rows, n, eps);
      std::vector<float> y(rows * n);
      test::poison(y);
      cpu::rmsnorm(x.data(), w.data(), y.data(), rows, n, eps);
      // In place (y aliases x) must give the same bits.
      std::vector<float> z = x;
      cpu::rmsnorm(z.data(), w.data(), z.data(), rows, n, eps);
      for (int64_t i = 0; i < rows * n; i++) {
        ASSERT_TRUE(std::isfinite(y[i])) << i;
        // scale = f32(1/sqrt(double)), then x*scale, then *w: three roundings.
        ASSERT_NEAR(y[i], ref[i], 4 * kU * std::fabs(ref[i]) + 1e-44) << i;
        ASSERT_EQ(y[i], z[i]) << "aliasing changed the result at " << i;
      }
    }
  }
}

// Softmax error: exp is ~2 ulp; the argument x - max is rounded once in f32, which moves e^arg
// by |arg| * 2^-24 relatively; the normalisation adds two roundings.
double softmax_tol(double ref, double arg) {
  return ref > 0 ? ref * (8 * kU + 2 * std::fabs(arg) * kU) + 1e-44 : 1e-44;
}

TEST(CpuOps, Softmax) {
  std::mt19937_64 rng(test::test_seed() + 1);
  for (int64_t n : {1, 3, 17, 1000, 4099}) {
    for (float scale : {1.0f, 30.0f, 1e4f}) {
      SCOPED_TRACE("n=" + std::to_string(n) + " scale=" + std::to_string(scale));
      const int64_t rows = 3;
      std::vector<float> x = test::randn(rng, rows * n, scale);
      if (n > 4) {
        x[2] = -INFINITY;       // masked entries
        x[n + 1] = 3e38f;       // near FLT_MAX: everything else underflows to 0
        x[2 * n + 3] = -3e38f;  // near -FLT_MAX
      }
      const std::vector<double> ref = ref::ref_softmax(x.data(), rows, n);
      std::vector<float> y = x;
      cpu::softmax(y.data(), rows, n);
      for (int64_t r = 0; r < rows; r++) {
        double mx = -INFINITY, sum = 0;
        for (int64_t i = 0; i < n; i++) mx = std::max(mx, (double)x[r * n + i]);
        for (int64_t i = 0; i < n; i++) {
          const int64_t k = r * n + i;
          ASSERT_TRUE(std::isfinite(y[k])) << k;
          ASSERT_GE(y[k], 0.0f);
          ASSERT_NEAR(y[k], ref[k], softmax_tol(ref[k], (double)x[k] - mx))
              << "row " << r << " i " << i;
          sum += y[k];
        }
        EXPECT_NEAR(sum, 1.0, (n + 8) * kU);
      }
    }
  }
  // A row with nothing visible is defined as zeros (the reference would give NaN).
  std::vector<float> masked(5, -INFINITY);
  cpu::softmax(masked.data(), 1, 5);
  for (float v : masked) EXPECT_EQ(v, 0.0f);
  // Shift invariance with equal logits: exactly uniform.
  std::vector<float> eq(7, 123.5f);
  cpu::softmax(eq.data(), 1, 7);
  for (float v : eq) EXPECT_NEAR(v, 1.0 / 7, 2 * kU);
}

TEST(CpuOps, SwiGlu) {
  std::mt19937_64 rng(test::test_seed() + 2);
  for (int64_t n : {1, 15, 16, 17, 1537}) {
    SCOPED_TRACE("n=" + std::to_string(n));
    std::vector<float> g = test::randn(rng, n, 6.0f);
    const std::vector<float> u = test::randn(rng, n);
    if (n > 8) {
      g[0] = 0, g[1] = 120.0f, g[2] = -120.0f, g[3] = 1e4f, g[4] = -1e4f, g[5] = 88.0f,
      g[6] = -88.0f;
      g[7] = -1e-30f;
    }
    const std::vector<double> ref = ref::ref_swiglu(g.data(), u.data(), n);
    std::vector<float> y(n);
    test::poison(y);
    cpu::swiglu(g.data(), u.data(), y.data(), n);
    std::vector<float> z = g;  // out aliases gate
    cpu::swiglu(z.data(), u.data(), z.data(), n);
    for (int64_t i = 0; i < n; i++) {
      ASSERT_TRUE(std::isfinite(y[i])) << i;
      // exp (~2 ulp, scaled by e/(1+e) <= 1), add, divide, multiply.
      ASSERT_NEAR(y[i], ref[i], 8 * kU * std::fabs(ref[i]) + 1e-44) << "g=" << g[i];
      ASSERT_EQ(y[i], z[i]) << i;
    }
  }
}

// HF transformers' _compute_llama3_parameters output for the Llama-3.1-8B rope config
// (head_dim 128, theta 500000, factor 8, low_freq_factor 1, high_freq_factor 4, original
// context 8192), printed from transformers 5.x in f32. It covers all three regimes.
const float kHfLlama31[64] = {1,
                              0.814617217,
                              0.663601279,
                              0.540580988,
                              0.440366626,
                              0.358730227,
                              0.292227834,
                              0.238053814,
                              0.193922758,
                              0.157972813,
                              0.128687382,
                              0.10483095,
                              0.0853971019,
                              0.0695659518,
                              0.0566696189,
                              0.0461640507,
                              0.0376060307,
                              0.0306345206,
                              0.0249554086,
                              0.0203291047,
                              0.0165604409,
                              0.0134904198,
                              0.0109895291,
                              0.00895225909,
                              0.00729266508,
                              0.00594073068,
                              0.00483942125,
                              0.00394227589,
                              0.00321144611,
                              0.00216657063,
                              0.00137189368,
                              0.00085675146,
                              0.000524846022,
                              0.00031269365,
                              0.000178507791,
                              9.55621217e-05,
                              7.78465546e-05,
                              6.34151438e-05,
                              5.16590699e-05,
                              4.20823671e-05,
                              3.42810235e-05,
                              2.79259093e-05,
                              2.2748929e-05,
                              1.85316694e-05,
                              1.50962178e-05,
                              1.22976389e-05,
                              1.00178686e-05,
                              8.1607277e-06,
                              6.64786967e-06,
                              5.41546933e-06,
                              4.41153452e-06,
                              3.59371188e-06,
                              2.92749974e-06,
                              2.38479174e-06,
                              1.94269251e-06,
                              1.58255079e-06,
                              1.28917316e-06,
                              1.05018262e-06,
                              8.55496921e-07,
                              6.96902532e-07,
                              5.6770881e-07,
                              4.6246538e-07,
                              3.7673226e-07,
                              3.06892588e-07};

TEST(CpuOps, RopeFreqsLlama3) {
  std::vector<float> f(64);
  cpu::rope_freqs(f.data(), 128, 500000.0f, 8.0f, 1.0f, 4.0f, 8192);
  const std::vector<double> ref = ref::ref_rope_freqs(128, 500000.0, 8.0, 1.0, 4.0, 8192);
  for (int i = 0; i < 64; i++) {
    EXPECT_NEAR(f[i], ref[i], 2 * kU * ref[i]) << i;  // correctly rounded double result
    // HF evaluates in f32 (pow, reciprocal, the smoothing blend): a few ulps apart at most.
    EXPECT_NEAR(f[i], kHfLlama31[i], 16 * kU * kHfLlama31[i]) << i;
  }
  // Plain (factor 0) frequencies: theta^(-2i/d).
  cpu::rope_freqs(f.data(), 128, 10000.0f, 0.0f, 1.0f, 4.0f, 8192);
  for (int i = 0; i < 64; i++) EXPECT_NEAR(f[i], std::pow(10000.0, -i / 64.0), 2 * kU * f[i]) << i;
}

TEST(CpuOps, Rope) {
  std::mt19937_64 rng(test::test_seed() + 3);
  std::vector<float> freq_plain(64), freq_l3(64);
  cpu::rope_freqs(freq_plain.data(), 128, 10000.0f, 0.0f, 1.0f, 4.0f, 8192);
  cpu::rope_freqs(freq_l3.data(), 128, 500000.0f, 8.0f, 1.0f, 4.0f, 8192);
  const int32_t pos[5] = {0, 1, 77, 4095, 131071};
  for (int64_t head_dim : {6, 64, 128, 34}) {
    for (bool neox : {false, true}) {
      for (const std::vector<float>* fr : {&freq_plain, &freq_l3}) {
        SCOPED_TRACE("head_dim=" + std::to_string(head_dim) + (neox ? " neox" : " pairs"));
        const int64_t n_tok = 5, n_heads = 3, stride = n_heads * head_dim + 7;  // padded rows
        std::vector<float> freq(fr->begin(), fr->begin() + head_dim / 2);
        std::vector<float> x = test::randn(rng, n_tok * stride);
        const std::vector<float> x0 = x;
        const std::vector<double> ref =
            ref::ref_rope(x.data(), n_tok, n_heads, head_dim, stride, pos, freq.data(), neox);
        cpu::rope(x.data(), n_tok, n_heads, head_dim, stride, pos, freq.data(), neox);
        const int64_t half = head_dim / 2;
        for (int64_t t = 0; t < n_tok; t++) {
          for (int64_t h = 0; h < n_heads; h++)
            for (int64_t i = 0; i < head_dim; i++) {
              const int64_t k = t * stride + h * head_dim + i;
              // Partner element of the rotation pair.
              const int64_t j = neox ? (i < half ? i + half : i - half) : (i ^ 1);
              const double mag = std::fabs(x0[k]) + std::fabs(x0[t * stride + h * head_dim + j]);
              // cos/sin of the double angle reduced to [-pi, pi] in f32 (~3 ulp abs), then two
              // products and a sum.
              ASSERT_NEAR(x[k], ref[(t * n_heads + h) * head_dim + i], 1e-6 * mag)
                  << "tok " << t << " head " << h << " i " << i;
            }
          for (int64_t k = n_heads * head_dim; k < stride; k++)
            ASSERT_EQ(x[t * stride + k], x0[t * stride + k]) << "padding written";
        }
        // Position 0 is the identity.
        for (int64_t k = 0; k < n_heads * head_dim; k++) ASSERT_EQ(x[k], x0[k]);
      }
    }
  }
}

}  // namespace
}  // namespace sqz
