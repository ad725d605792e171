// matmul: every kernel (vec-dot, f32 tiles + sgemm, AMX bf16) x weight types x odd shapes x
// 1/2 threads against the double-precision reference, element by element. Each kernel is checked
// twice: tightly against an exact model of its input rounding (quantized / bf16 activations),
// and against the true f32 product with the derived budget of that rounding.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "backend/cpu/matmul.h"
#include "backend/cpu/quant.h"
#include "core/fp16.h"
#include "reference/ref_ops.h"
#include "util/test_util.h"

namespace sqz {
namespace {

using cpu::MatmulKernel;

const char* kname(MatmulKernel k) {
  switch (k) {
    case MatmulKernel::kAuto:
      return "auto";
    case MatmulKernel::kVecDot:
      return "vecdot";
    case MatmulKernel::kTileF32:
      return "tilef32";
    case MatmulKernel::kAmxBf16:
      return "amx";
  }
  return "?";
}

struct Weights {
  std::vector<uint8_t> bytes;
  TensorView view;
  std::vector<double> deq;  // [n_out, n_in] exact values (ref_dequantize)
};

// Random weights quantized to `t`; per-row scale varies so rows differ in magnitude.
Weights make_weights(std::mt19937_64& rng, DType t, int64_t n_in, int64_t n_out) {
  Weights w;
  std::normal_distribution<float> nd(0, 1);
  std::vector<float> f(n_in * n_out);
  for (int64_t r = 0; r < n_out; r++) {
    const float s = 0.02f * (1 + (r % 7));
    for (int64_t i = 0; i < n_in; i++) f[r * n_in + i] = s * nd(rng);
  }
  const size_t row = dtype_row_size(t, n_in);
  w.bytes.resize(row * n_out);
  for (int64_t r = 0; r < n_out; r++) cpu::quantize_row(t, &f[r * n_in], &w.bytes[r * row], n_in);
  w.view.name = "test.weight";
  w.view.type = t;
  w.view.n_dims = 2;
  w.view.ne[0] = n_in;
  w.view.ne[1] = n_out;
  w.view.data = w.bytes.data();
  w.view.nbytes = w.bytes.size();
  w.deq = ref::ref_dequantize(t, w.bytes.data(), n_in * n_out);
  return w;
}

// Runs the kernel with exactly matmul_scratch_size bytes of scratch followed by guard bytes, on a
// NaN-poisoned output.
std::vector<float> run(MatmulKernel k, const Weights& w, const std::vector<float>& x, int64_t n_tok,
                       int threads) {
  const int64_t n_out = w.view.ne[1];
  const size_t ss = cpu::matmul_scratch_size(w.view, n_tok, threads);
  std::vector<uint8_t> scratch(ss + 256, 0xA5);
  std::vector<float> y(n_tok * n_out);
  test::poison(y);
  cpu::matmul_with(k, w.view, x.data(), n_tok, y.data(), scratch.data(), threads);
  for (size_t i = ss; i < scratch.size(); i++) EXPECT_EQ(scratch[i], 0xA5) << "scratch overrun";
  return y;
}

struct Case {
  DType t;
  int64_t n_in, n_out;
};

// mag: sum_i |w_i x_i| per output, the magnitude every rounding bound scales with.
void check_kernel(MatmulKernel k, const Case& c, const Weights& w, const std::vector<float>& x,
                  int64_t n_tok, const std::vector<double>& ref, const std::vector<double>& mag) {
  const int64_t n_in = c.n_in, n_out = c.n_out;
  const double u = std::ldexp(1.0, -24);

  // The tight model of what the kernel computes, and its budget against the true product.
  std::vector<double> model(n_tok * n_out);
  std::vector<double> tight_tol(n_tok * n_out), true_tol(n_tok * n_out);
  const double accum = (double)(n_in + 64) * u;  // f32 accumulation over n_in terms (+ scale ops)
  if (k == MatmulKernel::kVecDot) {
    const DType vt = cpu::vec_dot_type(c.t);
    const int64_t bs = std::max<int64_t>(cpu::block_size(vt), 1);
    for (int64_t t = 0; t < n_tok; t++) {
      std::vector<double> xq(x.begin() + t * n_in, x.begin() + (t + 1) * n_in);
      if (vt != DType::kF32) {
        std::vector<uint8_t> q(dtype_row_size(vt, n_in));
        cpu::quantize_row(vt, &x[t * n_in], q.data(), n_in);
        xq = ref::ref_dequantize(vt, q.data(), n_in);
      }
      for (int64_t o = 0; o < n_out; o++) {
        const double* wr = &w.deq[o * n_in];
        double s = 0, act = 0, qmag = 0;
        for (int64_t b = 0; b < n_in; b += bs) {
          double amax = 0, sw = 0, lo = 0, hi = 0, sx = 0;
          for (int64_t i = b; i < std::min(n_in, b + bs); i++) {
            s += wr[i] * xq[i];
            amax = std::max(amax, std::fabs((double)x[t * n_in + i]));
            sw += std::fabs(wr[i]);
            lo = std::min(lo, wr[i]), hi = std::max(hi, wr[i]);
            sx += std::fabs(xq[i]);
          }
          if (vt != DType::kF32) act += sw * amax / 254 * (1 + 1e-3);  // |x - xq| <= amax/254
          // Kernels split a block into d*sum(code*x) + offset*s_x; the two can cancel. Each is
          // bounded by (2 range + 4 max|w|) sum|x| (derivation in test_cpu_quant.cpp).
          qmag += (2 * (hi - lo) + 4 * std::max(hi, -lo)) * sx;
        }
        model[t * n_out + o] = s;
        tight_tol[t * n_out + o] = accum * (vt == DType::kF32 ? mag[t * n_out + o] : qmag);
        true_tol[t * n_out + o] = act + tight_tol[t * n_out + o];
      }
    }
  } else if (k == MatmulKernel::kAmxBf16 && cpu::amx_available()) {
    // Exact model: bf16(f32 weight) * bf16(x), summed in double.
    std::vector<double> wb(w.deq.size()), xb(x.size());
    for (size_t i = 0; i < wb.size(); i++) wb[i] = bf16_to_fp32(fp32_to_bf16((float)w.deq[i]));
    for (size_t i = 0; i < xb.size(); i++) xb[i] = bf16_to_fp32(fp32_to_bf16(x[i]));
    for (int64_t t = 0; t < n_tok; t++)
      for (int64_t o = 0; o < n_out; o++) {
        double s = 0;
        for (int64_t i = 0; i < n_in; i++) s += wb[o * n_in + i] * xb[t * n_in + i];
        model[t * n_out + o] = s;
        const double m = mag[t * n_out + o];
        tight_tol[t * n_out + o] = accum * 1.01 * m;  // |bf16 products| <= (1 + 2^-7)|w x|
        // bf16 rounding: u_bf16 = 2^-8 per operand (RNE, 8-bit significand), plus the f32
        // rounding of the weight itself (2^-24).
        true_tol[t * n_out + o] =
            m * (2 * std::ldexp(1.0, -8) + std::ldexp(1.0, -16) + u) + tight_tol[t * n_out + o];
      }
  } else {  // kTileF32 (and kAmxBf16's fallback): f32 weights (1 rounding) and f32 GEMM
    for (size_t i = 0; i < model.size(); i++) {
      model[i] = ref[i];
      tight_tol[i] = (accum + u) * mag[i];
      true_tol[i] = tight_tol[i];
    }
  }

  std::vector<float> y1;
  for (int threads : {1, 2}) {
    SCOPED_TRACE(std::string(kname(k)) + " threads=" + std::to_string(threads));
    const std::vector<float> y = run(k, w, x, n_tok, threads);
    ASSERT_TRUE(test::all_finite(y.data(), y.size())) << "NaN/Inf (unwritten output?)";
    for (int64_t i = 0; i < n_tok * n_out; i++) {
      ASSERT_NEAR(y[i], model[i], tight_tol[i])
          << "vs kernel model, token " << i / n_out << " row " << i % n_out;
      ASSERT_NEAR(y[i], ref[i], true_tol[i])
          << "vs f32 reference, token " << i / n_out << " row " << i % n_out;
    }
    // Work is split by output rows only: the thread count must not change a single bit.
    if (threads == 1) {
      y1 = y;
    } else {
      ASSERT_EQ(0, std::memcmp(y1.data(), y.data(), y.size() * sizeof(float)));
    }
  }
}

void run_case(const Case& c, std::initializer_list<int64_t> toks, std::mt19937_64& rng) {
  const Weights w = make_weights(rng, c.t, c.n_in, c.n_out);
  for (int64_t n_tok : toks) {
    SCOPED_TRACE(std::string(dtype_name(c.t)) + " " + std::to_string(c.n_in) + "->" +
                 std::to_string(c.n_out) + " n_tok=" + std::to_string(n_tok));
    std::vector<float> x = test::randn(rng, n_tok * c.n_in);
    for (int64_t i = 0; i < (int64_t)x.size(); i += 37) x[i] *= 8;  // some activation outliers
    const std::vector<double> ref =
        ref::ref_matmul(c.t, w.bytes.data(), c.n_in, c.n_out, x.data(), n_tok);
    std::vector<double> mag(n_tok * c.n_out, 0.0);
    for (int64_t t = 0; t < n_tok; t++)
      for (int64_t o = 0; o < c.n_out; o++) {
        double m = 0;
        for (int64_t i = 0; i < c.n_in; i++)
          m += std::fabs(w.deq[o * c.n_in + i] * x[t * c.n_in + i]);
        mag[t * c.n_out + o] = m;
      }
    for (MatmulKernel k : {MatmulKernel::kVecDot, MatmulKernel::kTileF32, MatmulKernel::kAmxBf16})
      check_kernel(k, c, w, x, n_tok, ref, mag);
    // kAuto must equal the kernel it claims to pick.
    const MatmulKernel picked = cpu::matmul_auto_kernel(w.view, n_tok);
    const std::vector<float> ya = run(MatmulKernel::kAuto, w, x, n_tok, 2);
    const std::vector<float> yp = run(picked, w, x, n_tok, 2);
    ASSERT_EQ(0, std::memcmp(ya.data(), yp.data(), ya.size() * sizeof(float)));
  }
}

TEST(CpuMatmul, Info) {
  std::printf("[sqz] AMX bf16 available: %s; auto kernel n_tok=1: %s, n_tok=64: %s\n",
              cpu::amx_available() ? "yes" : "no", kname(cpu::matmul_auto_kernel(TensorView{}, 1)),
              kname(cpu::matmul_auto_kernel(TensorView{}, 64)));
}

// The default model's type on its real attention/FFN widths, all token counts.
TEST(CpuMatmul, Q4_1AllTokenCounts) {
  std::mt19937_64 rng(test::test_seed());
  run_case({DType::kQ4_1, 576, 113}, {1, 2, 3, 7, 64, 113}, rng);
  run_case({DType::kQ4_1, 1536, 501}, {1, 3, 64}, rng);
}

TEST(CpuMatmul, Q8_0) {
  std::mt19937_64 rng(test::test_seed() + 1);
  run_case({DType::kQ8_0, 576, 501}, {1, 2, 7, 113}, rng);
}

TEST(CpuMatmul, LegacyQuants) {
  std::mt19937_64 rng(test::test_seed() + 2);
  for (DType t : {DType::kQ4_0, DType::kQ5_0, DType::kQ5_1})
    run_case({t, 576, 113}, {1, 3, 7, 64}, rng);
}

TEST(CpuMatmul, KQuants) {
  std::mt19937_64 rng(test::test_seed() + 3);
  for (DType t : {DType::kQ4_K, DType::kQ5_K, DType::kQ6_K})
    run_case({t, 768, 113}, {1, 2, 7, 64}, rng);
  run_case({DType::kQ6_K, 512, 501}, {3, 113}, rng);
}

TEST(CpuMatmul, FloatWeights) {
  std::mt19937_64 rng(test::test_seed() + 4);
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16}) run_case({t, 576, 113}, {1, 7, 64}, rng);
  // n_in not a multiple of 32 (only float weights allow it): padding paths.
  run_case({DType::kF32, 77, 501}, {1, 3, 7, 113}, rng);
  run_case({DType::kF16, 200, 17}, {2, 33}, rng);
}

}  // namespace
}  // namespace sqz
