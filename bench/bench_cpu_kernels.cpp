// CPU matmul benchmark on the default model's shapes (SmolLM2-135M: n_embd 576, n_ff 1536,
// 3 KV heads x 64, vocab 49152), Q4_1 weights (the lm_head is the tied Q8_0 token_embd).
//   decode  (n_tok = 1): GB/s of weight bytes streamed, hot (one matrix, cache resident) and
//            cold (cycling through 30 layers' worth of copies, ~100 MB, like a real forward);
//   prefill (n_tok = 128, 512): GFLOP/s (2 n_in n_out n_tok) per kernel.
// Median of N runs. Usage: bench_cpu_kernels [--quick] [--decode]   (--decode: skip prefill)
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/matmul.h"
#include "backend/cpu/quant.h"

using namespace sqz;

namespace {

struct Mat {
  std::vector<uint8_t> bytes;
  TensorView view;
};

Mat make(DType t, int64_t n_in, int64_t n_out, std::mt19937_64& rng) {
  Mat m;
  std::normal_distribution<float> nd(0, 0.05f);
  std::vector<float> row(n_in);
  const size_t rb = dtype_row_size(t, n_in);
  m.bytes.resize(rb * n_out);
  for (int64_t r = 0; r < n_out; r++) {
    for (auto& v : row) v = nd(rng);
    cpu::quantize_row(t, row.data(), m.bytes.data() + r * rb, n_in);
  }
  m.view.type = t;
  m.view.n_dims = 2;
  m.view.ne[0] = n_in;
  m.view.ne[1] = n_out;
  m.view.data = m.bytes.data();
  m.view.nbytes = m.bytes.size();
  return m;
}

const Mat& m_at(const std::vector<Mat>& v, size_t i) {
  return v[i];
}

template <typename F>
double median_seconds(int reps, F&& f) {
  std::vector<double> t;
  f();  // warm-up
  for (int i = 0; i < reps; i++) {
    const auto a = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

const char* kname(cpu::MatmulKernel k) {
  switch (k) {
    case cpu::MatmulKernel::kAuto:
      return "auto";
    case cpu::MatmulKernel::kVecDot:
      return "vecdot";
    case cpu::MatmulKernel::kTileF32:
      return "f32+sgemm";
    case cpu::MatmulKernel::kAmxBf16:
      return "amx-bf16";
  }
  return "?";
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, decode_only = false;
  for (int i = 1; i < argc; i++) {
    quick |= std::string(argv[i]) == "--quick";
    decode_only |= std::string(argv[i]) == "--decode";
  }
  const int reps = quick ? 5 : 21;
  std::mt19937_64 rng(1234);
  struct Shape {
    int64_t n_in, n_out;
    const char* what;
  };
  const Shape shapes[] = {{576, 576, "attn_q/o"},
                          {576, 192, "attn_k/v"},
                          {576, 1536, "ffn_gate/up"},
                          {1536, 576, "ffn_down"},
                          {576, 49152, "lm_head"}};
  std::printf("AMX available: %s, OpenMP max threads %d\n", cpu::amx_available() ? "yes" : "no",
              omp_get_max_threads());

  size_t max_scratch = 0;
  std::vector<Mat> mats;
  for (const Shape& s : shapes) mats.push_back(make(DType::kQ4_1, s.n_in, s.n_out, rng));
  for (const Mat& m : mats)
    max_scratch = std::max(max_scratch, cpu::matmul_scratch_size(m.view, 512, 2));
  std::vector<uint8_t> scratch(max_scratch);
  std::vector<float> x(512 * 1536), y(512 * 49152);
  {
    std::normal_distribution<float> nd(0, 1);
    for (auto& v : x) v = nd(rng);
  }

  std::printf("\n== decode (n_tok=1), Q4_1, hot: one matrix repeatedly (cache resident) ==\n");
  std::printf("%-12s %-12s %8s | %10s %8s | %10s %8s\n", "shape", "", "MB", "1 thr us", "GB/s",
              "2 thr us", "GB/s");
  for (size_t i = 0; i < mats.size(); i++) {
    const Mat& m = mats[i];
    double us[2];
    for (int th = 1; th <= 2; th++)
      us[th - 1] = 1e6 * median_seconds(reps * 4, [&] {
                     cpu::matmul(m.view, x.data(), 1, y.data(), scratch.data(), th);
                   });
    const double mb = m.bytes.size() / 1e6;
    std::printf("%5lldx%-6lld %-12s %8.2f | %10.1f %8.1f | %10.1f %8.1f\n",
                (long long)shapes[i].n_in, (long long)shapes[i].n_out, shapes[i].what, mb, us[0],
                mb / us[0] * 1e3, us[1], mb / us[1] * 1e3);
  }

  // Cold: one decode step of the whole model's matmuls: 30 layers (q, k, v, o, gate, up, down)
  // with distinct weight copies, then the Q8_0 lm_head. ~100 MB streamed per step.
  std::printf("\n== decode, whole-model weight stream (30 layers Q4_1 + Q8_0 lm_head) ==\n");
  {
    std::vector<Mat> layer;
    const int kLayers = 30;
    for (int l = 0; l < kLayers; l++) {
      layer.push_back(make(DType::kQ4_1, 576, 576, rng));
      layer.push_back(make(DType::kQ4_1, 576, 192, rng));
      layer.push_back(make(DType::kQ4_1, 576, 192, rng));
      layer.push_back(make(DType::kQ4_1, 576, 576, rng));
      layer.push_back(make(DType::kQ4_1, 576, 1536, rng));
      layer.push_back(make(DType::kQ4_1, 576, 1536, rng));
      layer.push_back(make(DType::kQ4_1, 1536, 576, rng));
    }
    layer.push_back(make(DType::kQ8_0, 576, 49152, rng));
    double bytes = 0;
    for (const Mat& m : layer) bytes += m.bytes.size();
    for (int th = 1; th <= 2; th++) {
      const double s = median_seconds(quick ? 3 : 11, [&] {
        for (const Mat& m : layer) cpu::matmul(m.view, x.data(), 1, y.data(), scratch.data(), th);
      });
      std::printf(
          "threads %d: %.2f ms per token step, %.1f MB, %.1f GB/s (%.0f tok/s matmul-only)\n", th,
          s * 1e3, bytes / 1e6, bytes / s / 1e9, 1 / s);
    }
  }

  // Where the decode kernel stops winning: n_tok 2..8 on the layer shapes, 2 threads.
  std::printf("\n== small n_tok crossover (2 threads, us per call) ==\n");
  std::printf("%-12s %6s %6s %6s %6s %6s   (vecdot / amx)\n", "shape", "2", "3", "4", "6", "8");
  for (size_t i = 0; i + 1 < mats.size(); i++) {
    std::printf("%5lldx%-6lld", (long long)shapes[i].n_in, (long long)shapes[i].n_out);
    for (int64_t n_tok : {2, 3, 4, 6, 8}) {
      double us[2];
      int j = 0;
      for (cpu::MatmulKernel k : {cpu::MatmulKernel::kVecDot, cpu::MatmulKernel::kAmxBf16})
        us[j++] =
            1e6 * median_seconds(reps * 2, [&] {
              cpu::matmul_with(k, m_at(mats, i).view, x.data(), n_tok, y.data(), scratch.data(), 2);
            });
      std::printf(" %5.0f/%-5.0f", us[0], us[1]);
    }
    std::printf("\n");
  }
  if (decode_only) return 0;

  std::printf("\n== prefill, Q4_1, GFLOP/s per kernel ==\n");
  std::printf("%-12s %5s %-10s | %9s %9s\n", "shape", "n_tok", "kernel", "1 thr", "2 thr");
  for (int64_t n_tok : {16, 128, 512}) {
    for (size_t i = 0; i < mats.size(); i++) {
      if (quick && shapes[i].n_out == 49152 && n_tok > 128) continue;
      const Mat& m = mats[i];
      for (cpu::MatmulKernel k :
           {cpu::MatmulKernel::kAmxBf16, cpu::MatmulKernel::kTileF32, cpu::MatmulKernel::kVecDot}) {
        if (k == cpu::MatmulKernel::kAmxBf16 && !cpu::amx_available()) continue;
        if (k == cpu::MatmulKernel::kVecDot && n_tok > 16) continue;  // not a prefill kernel
        double gf[2];
        for (int th = 1; th <= 2; th++) {
          const double s = median_seconds(shapes[i].n_out == 49152 ? 3 : reps, [&] {
            cpu::matmul_with(k, m.view, x.data(), n_tok, y.data(), scratch.data(), th);
          });
          gf[th - 1] = 2.0 * shapes[i].n_in * shapes[i].n_out * n_tok / s / 1e9;
        }
        std::printf("%5lldx%-6lld %5lld %-10s | %9.1f %9.1f\n", (long long)shapes[i].n_in,
                    (long long)shapes[i].n_out, (long long)n_tok, kname(k), gf[0], gf[1]);
      }
    }
  }
  return 0;
}
