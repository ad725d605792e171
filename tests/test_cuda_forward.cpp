// The GPU forward pass (--device cuda, src/backend/cuda/fwd/) against the CPU f32 path, and the
// GPU compile / ask paths against the CPU ones. Skips (with the reason) when this build has no
// CUDA or the machine no GPU; everywhere else every check can fail.
//
// Error budget. The GPU keeps the residual stream in f32 and accumulates every GEMM and the
// attention in f32, but rounds weights and GEMM/attention operands to f16 (unit roundoff
// u = 2^-11 = 4.9e-4). With ~6 roundings per layer entering in quadrature the relative logit
// error of an L-layer model is ~u * sqrt(6 L) times the network's gain: ~2e-3 for 2 layers,
// ~7e-3 for 30. Budgets: relative L2 error of each position's logit vector <= 1e-2 (tiny,
// 2 layers) and <= 3e-2 (SmolLM2-135M, 30 layers); top-1 equal wherever the CPU's top-1 margin
// exceeds 4x that row's max |GPU - CPU| (a smaller margin may legitimately flip). Measured
// values are printed.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/fp16.h"
#include "engine/gpu_session.h"
#include "formats/random_model.h"
#include "squeeze/squeeze_external.h"
#include "test_squeeze_synth.h"
#include "util/test_util.h"

#if SQZ_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "backend/cuda/fwd/dev_buffer.h"
#include "backend/cuda/fwd/gpu_attention.h"
#include "engine/gpu_compile.h"
#endif

namespace sqz {
namespace {

namespace fs = std::filesystem;

std::string tmp_dir() {
  const fs::path d = fs::temp_directory_path() / ("sqz_cuda_fwd_" + std::to_string(::getpid()));
  fs::create_directories(d);
  return d.string();
}

std::string model_path() {
  const char* rel = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (fs::exists(rel)) return fs::absolute(rel).string();
  return test::default_model_path();
}

std::string text_file(const std::string& rel) {
  std::ifstream in(fs::exists(rel) ? rel : test::source_path(rel));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Result<std::unique_ptr<Engine>> make_engine(const std::string& model, Device dev) {
  EngineParams p;
  p.model_path = model;
  p.n_threads = 4;
  p.prefill_f32 = true;  // the CPU reference: f32 GEMMs
  p.device = dev;
  return Engine::create(p);
}

// Skip reason when the GPU engine cannot exist here; "" when it can.
std::string gpu_unavailable(const Status& st) {
  const std::string& m = st.message();
  if (st.code() == Code::kUnsupported && (m.find("built without CUDA") != std::string::npos ||
                                          m.find("no usable NVIDIA GPU") != std::string::npos ||
                                          m.find("no NVIDIA GPU") != std::string::npos))
    return m;
  return "";
}

#define SQZ_GPU_ENGINE(var, model)                             \
  auto var##_r = make_engine(model, Device::kCuda);            \
  if (!var##_r.ok()) {                                         \
    const std::string why = gpu_unavailable(var##_r.status()); \
    if (!why.empty()) GTEST_SKIP() << why;                     \
    FAIL() << var##_r.status().message();                      \
  }                                                            \
  std::unique_ptr<Engine> var = std::move(var##_r).value()

// All positions' logits on the CPU f32 path: [n, n_vocab].
std::vector<float> cpu_logits(const Engine& e, const std::vector<int32_t>& toks) {
  const ModelConfig& c = e.model().config();
  const int64_t n = (int64_t)toks.size();
  KvCache cache;
  cache.init(c.n_layer, c.n_head_kv, c.head_dim, n, DType::kF32);
  DenseAttention attn(cache, c.n_head, c.n_head_kv, c.head_dim, e.params().n_threads);
  ForwardScratch s;
  e.model().init_scratch(s, n, e.params().n_threads);
  std::vector<int32_t> pos((size_t)n);
  for (int64_t i = 0; i < n; i++) pos[(size_t)i] = (int32_t)i;
  std::vector<float> out((size_t)(n * c.n_vocab));
  EXPECT_TRUE(e.model()
                  .forward(toks.data(), pos.data(), n, attn, s, e.params().n_threads, out.data(), n)
                  .ok());
  return out;
}

struct Compare {
  double worst_rel = 0;  // max over rows of ||g - c|| / ||c||
  int64_t rows = 0, top1_same = 0, decided = 0, decided_same = 0;
};

Compare compare_logits(const std::vector<float>& g, const std::vector<float>& c, int64_t nv) {
  Compare r;
  r.rows = (int64_t)c.size() / nv;
  for (int64_t t = 0; t < r.rows; t++) {
    const float* gr = g.data() + t * nv;
    const float* cr = c.data() + t * nv;
    double num = 0, den = 0, maxdiff = 0;
    int64_t gi = 0, ci = 0;
    for (int64_t v = 0; v < nv; v++) {
      const double d = (double)gr[v] - cr[v];
      num += d * d;
      den += (double)cr[v] * cr[v];
      maxdiff = std::max(maxdiff, std::fabs(d));
      if (!(gr[v] <= gr[gi])) gi = v;  // NaN-aware: a NaN becomes the argmax and fails below
      if (cr[v] > cr[ci]) ci = v;
    }
    r.worst_rel = std::max(r.worst_rel, std::sqrt(num / std::max(den, 1e-30)));
    if (!std::isfinite(num)) r.worst_rel = INFINITY;
    float second = -INFINITY;
    for (int64_t v = 0; v < nv; v++)
      if (v != ci) second = std::max(second, cr[v]);
    r.top1_same += gi == ci;
    if ((double)cr[ci] - second > 4 * maxdiff) {
      r.decided++;
      r.decided_same += gi == ci;
    }
  }
  return r;
}

void expect_close(const Compare& r, double budget, const char* what) {
  std::printf(
      "[cuda-fwd] %s: worst relative L2 %.3e (budget %.0e), top-1 %lld/%lld, decided %lld/%lld\n",
      what, r.worst_rel, budget, (long long)r.top1_same, (long long)r.rows,
      (long long)r.decided_same, (long long)r.decided);
  EXPECT_LE(r.worst_rel, budget) << what;
  EXPECT_EQ(r.decided_same, r.decided) << what;
  EXPECT_GT(r.decided, 0) << what << ": no position with a clear top-1";
}

const char* kPrompt =
    "The Debian project is an association of individuals who have made common cause to create "
    "a free operating system. The capital of France is Paris, and the capital of Italy is";

TEST(CudaForward, TinyRandomModelAllWeightTypes) {
  const std::string dir = tmp_dir();
  for (DType t : {DType::kF32, DType::kF16, DType::kQ8_0, DType::kQ4_0, DType::kQ4_1, DType::kQ5_0,
                  DType::kQ4_K, DType::kQ5_K, DType::kQ6_K}) {
    RandomModelParams rp;
    rp.n_embd = 256;
    rp.n_head = 4;
    rp.n_head_kv = 2;  // GQA 2, head_dim 64
    rp.n_layer = 2;
    rp.n_ff = 512;
    rp.weight_type = t;
    rp.weight_std = 0.08f;  // peakier attention than the default 0.02
    rp.seed = test::test_seed();
    const std::string path = dir + "/tiny_" + std::string(dtype_name(t)) + ".gguf";
    ASSERT_TRUE(write_random_llama_gguf(rp, path).ok());
    auto cpu = make_engine(path, Device::kCpu);
    ASSERT_TRUE(cpu.ok()) << cpu.status().message();
    SQZ_GPU_ENGINE(gpu, path);
    std::printf("[cuda-fwd] %s\n", gpu_backend_describe(*gpu->gpu()).c_str());
    const auto toks = (*cpu)->tokenizer().encode(kPrompt, true, false);
    const auto c = cpu_logits(**cpu, toks);
    auto g = gpu_prompt_logits(*gpu, toks, (int64_t)toks.size());
    ASSERT_TRUE(g.ok()) << g.status().message();
    expect_close(compare_logits(*g, c, rp.n_vocab), 1e-2,
                 (std::string("tiny ") + std::string(dtype_name(t))).c_str());
  }
  fs::remove_all(dir);
}

TEST(CudaForward, DefaultModelLogitsAndGreedy) {
  const std::string mp = model_path();
  if (mp.empty()) GTEST_SKIP() << "default model not found (scripts/setup.sh)";
  auto cpu = make_engine(mp, Device::kCpu);
  ASSERT_TRUE(cpu.ok()) << cpu.status().message();
  SQZ_GPU_ENGINE(gpu, mp);
  std::printf("[cuda-fwd] %s\n", gpu_backend_describe(*gpu->gpu()).c_str());
  const auto toks = (*cpu)->tokenizer().encode(kPrompt, true, false);
  const auto c = cpu_logits(**cpu, toks);
  auto g = gpu_prompt_logits(*gpu, toks, (int64_t)toks.size());
  ASSERT_TRUE(g.ok()) << g.status().message();
  expect_close(compare_logits(*g, c, (*cpu)->model().config().n_vocab), 3e-2, "SmolLM2-135M");

  GenerateParams gp;
  gp.max_tokens = 12;
  const auto p = (*cpu)->tokenizer().encode("The capital of France is", true, false);
  auto rc = (*cpu)->generate(p, gp);
  auto rg = gpu->generate(p, gp);
  ASSERT_TRUE(rc.ok() && rg.ok()) << (rg.ok() ? rc.status().message() : rg.status().message());
  std::printf("[cuda-fwd] greedy cpu: %s\n[cuda-fwd] greedy gpu: %s\n", rc->text.c_str(),
              rg->text.c_str());
  ASSERT_FALSE(rg->tokens.empty());
  EXPECT_EQ(rg->tokens[0], rc->tokens[0]);
  EXPECT_NE(rg->text.find("Paris"), std::string::npos);
}

// Compile on the GPU, then: the CPU opens the pack; dense answers agree CPU vs GPU on it;
// keep-all squeezed equals dense on the GPU; a calibrated selection keeps a strict subset.
TEST(CudaForward, TinyCompileAndAsk) {
  const std::string dir = tmp_dir();
  RandomModelParams rp;
  rp.n_embd = 256;
  rp.n_head = 4;
  rp.n_head_kv = 2;
  rp.n_layer = 2;
  rp.n_ff = 512;
  rp.weight_type = DType::kQ8_0;
  rp.weight_std = 0.08f;
  rp.n_ctx = 8192;  // the 3000-byte context is ~2.6K tokens
  rp.seed = test::test_seed();
  const std::string model = dir + "/tiny.gguf";
  ASSERT_TRUE(write_random_llama_gguf(rp, model).ok());
  auto cpu = make_engine(model, Device::kCpu);
  ASSERT_TRUE(cpu.ok());
  SQZ_GPU_ENGINE(gpu, model);
  CompileParams cp;
  cp.clusters = 0.1;
  cp.coarse = 0.02;
  cp.obs_window = 16;
  cp.seed = 3;
  cp.n_threads = 4;
  const std::string text = text_file("tests/data/golden/ppl_text.txt").substr(0, 3000);
  const std::string gpack = dir + "/gpu.sqzpack", cpack = dir + "/cpu.sqzpack";
  auto rg = compile_context(*gpu, text, cp, gpack, nullptr);
  ASSERT_TRUE(rg.ok()) << rg.status().message();
  auto rc = compile_context(**cpu, text, cp, cpack, nullptr);
  ASSERT_TRUE(rc.ok()) << rc.status().message();
  auto pg = Pack::open(gpack);
  auto pc = Pack::open(cpack);
  ASSERT_TRUE(pg.ok()) << pg.status().message();
  ASSERT_TRUE(pc.ok()) << pc.status().message();
  const Pack& P = **pg;
  EXPECT_EQ(P.n_ctx(), (*pc)->n_ctx());
  EXPECT_EQ(P.n_fine(), (*pc)->n_fine());
  EXPECT_EQ(P.n_coarse(), (*pc)->n_coarse());
  // Captured post-RoPE K of the observation window (original order in both packs).
  {
    double num = 0, den = 0;
    for (int l = 0; l < P.n_layer(); l++)
      for (int h = 0; h < P.n_head_kv(); h++) {
        const KvHeadView a = P.obs_kv(l, h), b = (*pc)->obs_kv(l, h);
        for (int64_t i = 0; i < P.n_obs() * P.head_dim(); i++) {
          const double x = fp16_to_fp32(((const f16_t*)a.k)[i]);
          const double y = fp16_to_fp32(((const f16_t*)b.k)[i]);
          num += (x - y) * (x - y);
          den += y * y;
        }
      }
    std::printf("[cuda-fwd] observation-window K, GPU vs CPU compile: relative L2 %.3e\n",
                std::sqrt(num / den));
    EXPECT_LT(std::sqrt(num / den), 1e-2);
  }
  const auto q = question_tokens(**cpu, "What does the document describe?");
  AskParams dense;
  dense.dense = true;
  auto lc = ask_first_logits(**cpu, P, q, dense, nullptr);  // the CPU reads the GPU pack
  auto lg = ask_first_logits(*gpu, P, q, dense, nullptr);
  ASSERT_TRUE(lc.ok()) << lc.status().message();
  ASSERT_TRUE(lg.ok()) << lg.status().message();
  const Compare cd = compare_logits(*lg, *lc, rp.n_vocab);
  std::printf("[cuda-fwd] ask dense first logits GPU vs CPU: relative L2 %.3e\n", cd.worst_rel);
  EXPECT_LE(cd.worst_rel, 1e-2);
  AskParams all;
  all.keep_all = true;
  AskResult st;
  auto la = ask_first_logits(*gpu, P, q, all, &st);
  ASSERT_TRUE(la.ok()) << la.status().message();
  EXPECT_DOUBLE_EQ(st.kept_fraction, 1.0);
  const Compare ca = compare_logits(*la, *lg, rp.n_vocab);
  std::printf("[cuda-fwd] keep-all vs dense on the GPU: relative L2 %.3e\n", ca.worst_rel);
  EXPECT_LE(ca.worst_rel, 1e-3);
  // Squeezed with each estimator and coarse rule the CUDA lookup implements (the default, the
  // child bound, and the calibrated coarse threshold), CPU and GPU on the same pack.
  for (Estimator est : {Estimator::kMean, Estimator::kMeanIso})
    for (auto rule :
         {SelectParams::CoarseRule::kChildBound, SelectParams::CoarseRule::kCalibrated}) {
      AskParams sq;
      sq.select.percentile = 0.8;
      sq.select.estimator = est;
      sq.select.coarse_rule = rule;
      AskResult ss, sc;
      auto ls = ask_first_logits(*gpu, P, q, sq, &ss);
      ASSERT_TRUE(ls.ok()) << ls.status().message();
      auto lsc = ask_first_logits(**cpu, P, q, sq, &sc);
      ASSERT_TRUE(lsc.ok()) << lsc.status().message();
      std::printf(
          "[cuda-fwd] squeezed %s, %s rule, p=0.8 (sinks %d): GPU kept %.4f centroids %.4f, CPU "
          "kept %.4f centroids %.4f\n",
          estimator_name(est), coarse_rule_name(rule), sq.sink_tokens, ss.kept_fraction,
          ss.centroid_fraction, sc.kept_fraction, sc.centroid_fraction);
      EXPECT_GT(ss.kept_fraction, 0.0);
      EXPECT_LT(ss.kept_fraction, 1.0);
      EXPECT_GT(ss.centroid_fraction, 0.0);
      // Same lookup definition and thresholds: the selections differ only where a cluster's mean
      // score sits within the f16 / f32 rounding of the threshold (and by the sink rows' sizes).
      EXPECT_NEAR(ss.kept_fraction, sc.kept_fraction, 0.03) << estimator_name(est);
      // The compared centroids follow from the coarse survivors: the same rule on both sides.
      EXPECT_NEAR(ss.centroid_fraction, sc.centroid_fraction, 0.1 * sc.centroid_fraction + 1e-3)
          << estimator_name(est) << " " << coarse_rule_name(rule);
      if (est == P.estimator()) {  // --estimator auto is the pack's default, on the GPU too
        AskParams au = sq;
        au.select.estimator = Estimator::kAuto;
        AskResult sa;
        ASSERT_TRUE(ask_first_logits(*gpu, P, q, au, &sa).ok());
        EXPECT_DOUBLE_EQ(sa.kept_fraction, ss.kept_fraction);
      }
    }
  {
    AskParams mv;
    mv.select.percentile = 0.8;
    mv.select.estimator = Estimator::kMeanVar;  // not implemented by the CUDA lookup
    auto r = ask_first_logits(*gpu, P, q, mv, nullptr);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), Code::kUnsupported) << r.status().message();
  }
  fs::remove_all(dir);
}

// The device half of the GPU compile against the CPU code it replaces, on the same inputs:
// cluster statistics from the same assignments (squeeze_context_external on the CPU,
// HeadAssemblerGpu on the GPU), then the three calibration tables from the same clusters
// (calibrate on the CPU, gpu_calibrate on the GPU). Keys are f16 values, as in the GPU cache.
// Tolerances: layouts exactly equal; statistics to 1e-6 relative (f64 sums in the same order,
// so in practice equal); thresholds to 1e-5 relative (logit dot products in another order, ~1e-7);
// kept fractions to one cluster's weight (a cluster whose score ties the threshold to float
// rounding may flip).
TEST(CudaCompile, AssemblyAndCalibrationMatchCpu) {
#if !SQZ_HAVE_CUDA
  GTEST_SKIP() << "built without CUDA";
#else
  int n_dev = 0;
  if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) GTEST_SKIP() << "no NVIDIA GPU";
  for (int hd : {64, 128}) {
    test::SynthSpec spec;
    spec.n_layer = 2;
    spec.n_head = 8;
    spec.n_head_kv = 2;
    spec.head_dim = hd;
    spec.n_ctx = 3000;
    spec.n_obs = 40;
    test::SynthContext synth = test::make_synth(spec, test::test_seed() + (uint64_t)hd);
    ContextCapture& cap = synth.cap;
    for (auto* arr : {&cap.k, &cap.v})
      for (auto& layer : *arr)
        for (float& x : layer) x = fp16_to_fp32(fp32_to_fp16(x));
    CompileParams cp;
    cp.obs_window = spec.n_obs;
    cp.clusters = 0.05;
    cp.coarse = 0.01;
    cp.n_threads = 4;
    const int H = spec.n_head_kv, d = hd;
    const int64_t n_ctx = spec.n_ctx, n = n_ctx - spec.n_obs, J = (int64_t)spec.n_layer * H;
    // Assignments: the GPU K-means of each head (one cluster emptied in head 0 to exercise the
    // fill step).
    gpu::DevBuf keys;
    ASSERT_TRUE(keys.alloc((size_t)J * n_ctx * d * 2, "test").ok());
    std::vector<uint16_t> k16((size_t)n_ctx * d);
    for (int64_t job = 0; job < J; job++) {
      const float* src = cap.k[(size_t)(job / H)].data() + (job % H) * n_ctx * d;
      for (size_t i = 0; i < k16.size(); i++) k16[i] = fp32_to_fp16(src[i]);
      ASSERT_EQ(cudaMemcpy(keys.as<uint16_t>() + job * n_ctx * d, k16.data(), k16.size() * 2,
                           cudaMemcpyHostToDevice),
                cudaSuccess);
    }
    auto shape = squeeze_context_shape(cap, cp);
    ASSERT_TRUE(shape.ok()) << shape.status().message();
    const int kf = shape->n_fine, kc = shape->n_coarse;
    ASSERT_GT(kc, 1);
    std::vector<ExternalAssign> assign((size_t)J);
    {
      gpu::KmeansGpu km;
      ASSERT_TRUE(km.init(n, d, kf, nullptr).ok());
      for (int64_t job = 0; job < J; job++) {
        ExternalAssign& a = assign[(size_t)job];
        ASSERT_TRUE(km.run(keys.as<uint16_t>() + job * n_ctx * d, n, kf, kc, 10, 11 + job, 23 + job,
                           a.fine_assign, a.coarse_of)
                        .ok());
        a.fine_iters = a.coarse_iters = 10;
      }
      for (int32_t& x : assign[0].fine_assign)
        if (x == 0) x = 1;
    }
    auto cpu = squeeze_context_external(cap, cp,
                                        [&](int l, int h, int, int, ExternalAssign& out) -> Status {
                                          out = assign[(size_t)(l * H + h)];
                                          return Status::Ok();
                                        });
    ASSERT_TRUE(cpu.ok()) << cpu.status().message();
    const SqueezedContext& C = *cpu;

    // Assembly. Every head writes its statistics to its slice of device buffers for all heads,
    // as the GPU compile does for its calibration; head 0 is assembled once more into the
    // assembler's own scratch, which must give the same clusters.
    gpu::HeadAssemblerGpu as;
    ASSERT_TRUE(as.init(n, d, kf, kc, DType::kF16, nullptr).ok());
    gpu::DevBuf sfc, sfv, sfr, scc, scv, scr;
    for (auto [b, cnt] : {std::pair{&sfc, (size_t)kf * d},
                          {&sfv, (size_t)kf * d},
                          {&sfr, (size_t)kf},
                          {&scc, (size_t)kc * d},
                          {&scv, (size_t)kc * d},
                          {&scr, (size_t)kc}})
      ASSERT_TRUE(b->alloc((size_t)J * cnt * 4, "test").ok());
    const gpu::HeadStatsDev all{sfc.as<float>(), sfv.as<float>(), sfr.as<float>(),
                                scc.as<float>(), scv.as<float>(), scr.as<float>()};
    SqueezedContext A = C;  // the GPU-assembled clusters
    auto stats_of = [](const HeadClusters& h) {
      return std::array<const std::vector<float>*, 6>{&h.fine_centroids, &h.fine_var,
                                                      &h.fine_radius,    &h.coarse_centroids,
                                                      &h.coarse_var,     &h.coarse_radius};
    };
    double worst_stat = 0, worst_obj = 0;
    int64_t rows_differ = 0;
    for (int64_t job = 0; job < J; job++) {
      ExternalAssign a = assign[(size_t)job];
      HeadClusters hc;
      const gpu::HeadStatsDev mine = all.head(job, kf, kc, d);
      ASSERT_TRUE(as.enqueue(0, keys.as<uint16_t>() + job * n_ctx * d, a, hc, nullptr, &mine).ok());
      auto rows = as.collect(0, hc);
      ASSERT_TRUE(rows.ok()) << rows.status().message();
      A.heads[(size_t)job] = hc;
      if (job == 0) {
        ExternalAssign a0 = assign[0];
        HeadClusters h0;
        ASSERT_TRUE(as.enqueue(1, keys.as<uint16_t>(), a0, h0).ok());
        ASSERT_TRUE(as.collect(1, h0).ok());
        for (int i = 0; i < 6; i++) EXPECT_EQ(*stats_of(h0)[i], *stats_of(hc)[i]) << "stat " << i;
      }
      const HeadClusters& ref = C.heads[(size_t)job];
      ASSERT_EQ(hc.perm, ref.perm) << "head " << job;
      ASSERT_EQ(hc.fine_offsets, ref.fine_offsets);
      ASSERT_EQ(hc.fine_sizes, ref.fine_sizes);
      ASSERT_EQ(hc.coarse_ranges, ref.coarse_ranges);
      auto cmp = [&](const std::vector<float>& g, const std::vector<float>& c) {
        ASSERT_EQ(g.size(), c.size());
        for (size_t i = 0; i < g.size(); i++)
          worst_stat = std::max(
              worst_stat, std::fabs((double)g[i] - c[i]) / std::max(1.0, std::fabs((double)c[i])));
      };
      for (int i = 0; i < 6; i++) cmp(*stats_of(hc)[i], *stats_of(ref)[i]);
      worst_obj = std::max(worst_obj, std::fabs(hc.fine_objective - ref.fine_objective) /
                                          std::max(1.0, std::fabs(ref.fine_objective)));
      worst_obj = std::max(worst_obj, std::fabs(hc.coarse_objective - ref.coarse_objective) /
                                          std::max(1.0, std::fabs(ref.coarse_objective)));
      const uint16_t* g = static_cast<const uint16_t*>(*rows);
      const float* src = cap.k[(size_t)(job / H)].data() + (job % H) * n_ctx * d;
      for (int64_t r = 0; r < n; r++)
        for (int t = 0; t < d; t++)
          rows_differ += g[r * d + t] != fp32_to_fp16(src[(int64_t)ref.perm[(size_t)r] * d + t]);
    }
    std::printf(
        "[cuda-compile] hd %d: assembly vs CPU: worst statistic %.3e, objective %.3e, K rows "
        "differing %lld\n",
        hd, worst_stat, worst_obj, (long long)rows_differ);
    EXPECT_LE(worst_stat, 1e-6);
    EXPECT_LE(worst_obj, 1e-9);
    EXPECT_EQ(rows_differ, 0);

    // Calibration, on the CPU's clusters.
    SqueezedContext G = C;
    G.calib = G.calib_var = G.calib_iso = CalibTable{};
    const Status gs = gpu::gpu_calibrate(cap.q_obs, G, nullptr);
    ASSERT_TRUE(gs.ok()) << gs.message();
    double wmax = 0;
    for (const HeadClusters& hc : C.heads)
      for (float x : hc.fine_sizes) wmax = std::max(wmax, (double)x);
    const double one_cluster = wmax / ((double)J * (double)n) + 1e-12;
    const char* names[3] = {"mean", "mean_var", "mean_iso"};
    const CalibTable* ct[3] = {&C.calib, &C.calib_var, &C.calib_iso};
    const CalibTable* gt[3] = {&G.calib, &G.calib_var, &G.calib_iso};
    for (int e = 0; e < 3; e++) {
      const CalibTable &a = *gt[e], &b = *ct[e];
      ASSERT_EQ(a.percentiles, b.percentiles);
      ASSERT_EQ(a.fine_threshold.size(), b.fine_threshold.size());
      ASSERT_EQ(a.coarse_threshold.size(), b.coarse_threshold.size());
      ASSERT_EQ(a.kept_fine.size(), b.kept_fine.size());
      ASSERT_EQ(a.kept_hier.size(), b.kept_hier.size());
      double thr = 0, kf_ = 0, kh = 0;
      for (size_t g = 0; g < b.percentiles.size(); g++) {
        thr = std::max(thr, std::fabs(a.fine_threshold[g] - b.fine_threshold[g]) /
                                std::max(1e-300, std::fabs(b.fine_threshold[g])));
        thr = std::max(thr, std::fabs(a.coarse_threshold[g] - b.coarse_threshold[g]) /
                                std::max(1e-300, std::fabs(b.coarse_threshold[g])));
        kf_ = std::max(kf_, std::fabs(a.kept_fine[g] - b.kept_fine[g]));
        kh = std::max(kh, std::fabs(a.kept_hier[g] - b.kept_hier[g]));
      }
      std::printf(
          "[cuda-compile] hd %d %s: GPU vs CPU calibration: thresholds %.3e relative, kept_fine "
          "%.3e, kept_hier %.3e (one cluster %.3e)\n",
          hd, names[e], thr, kf_, kh, one_cluster);
      EXPECT_LE(thr, 1e-5) << names[e];
      EXPECT_LE(kf_, one_cluster) << names[e];
      EXPECT_LE(kh, one_cluster) << names[e];
    }

    // The GPU compile's calibration reads the statistics where the assembly left them on the
    // device; uploading the collected host copies must give the same tables, bit for bit.
    SqueezedContext U = A, Dv = A;
    ASSERT_TRUE(gpu::gpu_calibrate(cap.q_obs, U, nullptr).ok());
    ASSERT_TRUE(gpu::gpu_calibrate(cap.q_obs, Dv, nullptr, &all).ok());
    const CalibTable* ut[3] = {&U.calib, &U.calib_var, &U.calib_iso};
    const CalibTable* dt[3] = {&Dv.calib, &Dv.calib_var, &Dv.calib_iso};
    for (int e = 0; e < 3; e++) {
      EXPECT_EQ(dt[e]->fine_threshold, ut[e]->fine_threshold) << names[e];
      EXPECT_EQ(dt[e]->coarse_threshold, ut[e]->coarse_threshold) << names[e];
      EXPECT_EQ(dt[e]->kept_fine, ut[e]->kept_fine) << names[e];
      EXPECT_EQ(dt[e]->kept_hier, ut[e]->kept_hier) << names[e];
      EXPECT_FALSE(dt[e]->fine_threshold.empty()) << names[e];
    }
  }
#endif
}

// The planted-fact context (as tests/test_squeeze_e2e.cpp builds it, from the repository's own
// Debian text) compiled on the GPU; dense and keep-all answers on the GPU, dense on the CPU
// reading the GPU pack.
TEST(CudaForward, DefaultModelPlantedFact) {
  const std::string mp = model_path();
  if (mp.empty()) GTEST_SKIP() << "default model not found (scripts/setup.sh)";
  SQZ_GPU_ENGINE(gpu, mp);
  const std::string dir = tmp_dir();
  const std::string doc = text_file("tests/data/golden/ppl_text.txt").substr(0, 16000);
  const size_t mid = doc.find("\n\n", doc.size() / 2);
  const std::string ctx = doc.substr(0, mid) +
                          "\n\nThe secret password for the blue vault is PELICAN-42.\n" +
                          doc.substr(mid);
  CompileParams cp;
  cp.n_threads = 4;
  const std::string pack_path = dir + "/planted.sqzpack";
  auto r = compile_context(*gpu, ctx, cp, pack_path, nullptr);
  ASSERT_TRUE(r.ok()) << r.status().message();
  std::printf(
      "[cuda-fwd] planted: %lld tokens, prefill %.3f s, capture %.3f s, k-means %.3f s, "
      "calibration %.3f s, write %.3f s\n",
      (long long)r->n_ctx, r->prefill_s, r->capture_s, r->stats.kmeans_s, r->stats.calib_s,
      r->stats.write_s);
  auto pack = Pack::open(pack_path);
  ASSERT_TRUE(pack.ok()) << pack.status().message();
  const std::string question = "What is the secret password for the blue vault?";
  auto run = [&](const Engine& e, AskParams ap, const char* what) {
    ap.gen.max_tokens = 16;
    auto a = ask(e, **pack, question, ap);
    EXPECT_TRUE(a.ok()) << a.status().message();
    if (!a.ok()) return std::string();
    std::printf("[cuda-fwd] planted %s: kept %.3f budget %.3f ttft %.1f ms: %s\n", what,
                a->kept_fraction, a->budget, a->gen.prefill_ms, a->gen.text.c_str());
    return a->gen.text;
  };
  AskParams dense;
  dense.dense = true;
  EXPECT_NE(run(*gpu, dense, "gpu dense").find("PELICAN-42"), std::string::npos);
  AskParams all;
  all.keep_all = true;
  EXPECT_NE(run(*gpu, all, "gpu keep-all").find("PELICAN-42"), std::string::npos);
  // The CPU reads the GPU pack. Its greedy answer is printed, not asserted: on this context the
  // 135M model's answer sits on a near-tie (measured on an H200: the GPU answered PELICAN-42,
  // the CPU f32 path "is:" on the same pack; both said "is:" with one more newline in the
  // context). What must hold is that both read the same pack to the same first-token logits.
  auto cpu = make_engine(mp, Device::kCpu);
  ASSERT_TRUE(cpu.ok());
  run(**cpu, dense, "cpu dense (gpu pack)");
  const auto q = question_tokens(**cpu, question);
  auto lc = ask_first_logits(**cpu, **pack, q, dense, nullptr);
  auto lg = ask_first_logits(*gpu, **pack, q, dense, nullptr);
  ASSERT_TRUE(lc.ok() && lg.ok());
  const Compare cf = compare_logits(*lg, *lc, (*cpu)->model().config().n_vocab);
  std::printf(
      "[cuda-fwd] planted dense first-token logits, GPU vs CPU on the GPU pack: relative "
      "L2 %.3e, top-1 %s\n",
      cf.worst_rel, cf.top1_same ? "same" : "different");
  EXPECT_LE(cf.worst_rel, 3e-2);
  EXPECT_EQ(cf.decided_same, cf.decided);
  // Squeezed selections: printed for the record (the 135M model's known gap below ~50% of keys
  // holds on the CPU too; docs/eval.md).
  for (Estimator est : {Estimator::kMean, Estimator::kMeanIso})
    for (double b : {0.5, 0.2}) {
      AskParams sq;
      sq.budget = b;
      sq.select.estimator = est;  // and the default coarse rule, the child bound
      const std::string tag =
          std::string(estimator_name(est)) + " budget " + (b == 0.5 ? "0.5" : "0.2");
      run(*gpu, sq, ("gpu " + tag).c_str());
      run(**cpu, sq, ("cpu " + tag).c_str());
    }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace sqz
