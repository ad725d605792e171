#include "engine/gpu_session.h"

#if SQZ_HAVE_CUDA
#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include "backend/cuda/fwd/gpu_attention.h"
#include "backend/cuda/fwd/gpu_llama.h"
#include "core/clock.h"
#include "engine/gpu_compile.h"
#include "squeeze/cluster_scalars.h"
#include "squeeze/score.h"
#endif

namespace sqz {

#if SQZ_HAVE_CUDA

struct GpuBackend {
  std::unique_ptr<gpu::Model> model;
};

namespace {

// Tokens per GPU forward call: large enough to fill the GEMMs and give the dense attention
// kernel (one CTA per 128 query rows x KV head) a few waves; --batch raises it.
int64_t gpu_batch(const Engine& e) {
  return std::max<int64_t>(e.params().n_batch, 2048);
}

// Lloyd steps of the GPU K-means (at most CompileParams::max_iters); the CPU path stops at its
// tolerance or max_iters.
constexpr int kGpuKmeansIters = 10;

gpu::Model& gmodel(const Engine& e) {
  return *e.gpu()->model;
}

}  // namespace

Result<std::shared_ptr<GpuBackend>> gpu_backend_create(const LlamaModel& m) {
  auto b = std::make_shared<GpuBackend>();
  SQZ_ASSIGN_OR_RETURN(b->model, gpu::Model::load(m));
  return b;
}

std::string gpu_backend_describe(const GpuBackend& b) {
  const gpu::DeviceInfo& d = b.model->device();
  return fmt::format("{} ({} SMs, cc {}.{}), {:.2f} GB f16 weights loaded in {:.2f} s", d.name,
                     d.sm_count, d.cc_major, d.cc_minor, (double)b.model->weight_bytes() / 1e9,
                     b.model->load_seconds());
}

Result<GenerateResult> gpu_generate(const Engine& e, const std::vector<int32_t>& prompt,
                                    const GenerateParams& gp) {
  const ModelConfig& c = e.model().config();
  const int64_t cap = std::min<int64_t>((int64_t)prompt.size() + gp.max_tokens, e.n_ctx());
  gpu::KvCacheGpu cache;
  SQZ_RETURN_IF_ERROR(cache.init(c.n_layer, c.n_head_kv, c.head_dim, cap));
  gpu::DenseAttentionGpu attn(cache, c.n_head, c.n_head_kv, c.head_dim);
  gpu::Model& m = gmodel(e);
  auto fwd = [&](const int32_t* t, const int32_t* p, int64_t n, float* logits, int64_t nl) {
    return m.forward(t, p, n, attn, logits, nl);
  };
  return run_generation_fn(fwd, gpu_batch(e), c.n_vocab, e.tokenizer(), prompt, 0, cap, gp);
}

Result<std::vector<float>> gpu_prompt_logits(const Engine& e, const std::vector<int32_t>& tokens,
                                             int64_t n_logits) {
  const ModelConfig& c = e.model().config();
  const int64_t n = (int64_t)tokens.size();
  if (n == 0 || n_logits < 0 || n_logits > n)
    return Error(Code::kInvalidArgument, "prompt logits: {} of {} tokens", n_logits, n);
  if (n > e.n_ctx()) return Error(Code::kOutOfRange, "prompt of {} tokens exceeds the context", n);
  gpu::KvCacheGpu cache;
  SQZ_RETURN_IF_ERROR(cache.init(c.n_layer, c.n_head_kv, c.head_dim, n));
  gpu::DenseAttentionGpu attn(cache, c.n_head, c.n_head_kv, c.head_dim);
  std::vector<float> logits((size_t)(n_logits * c.n_vocab));
  std::vector<int32_t> pos;
  const int64_t nb = gpu_batch(e), first = n - n_logits;
  for (int64_t i = 0; i < n; i += nb) {
    const int64_t b = std::min(nb, n - i);
    pos.resize((size_t)b);
    for (int64_t j = 0; j < b; j++) pos[(size_t)j] = (int32_t)(i + j);
    // The logit rows wanted from this chunk are its last k tokens (the window is a suffix).
    const int64_t k = std::clamp<int64_t>(i + b - first, 0, b);
    float* dst = k > 0 ? logits.data() + (i + b - k - first) * c.n_vocab : nullptr;
    SQZ_RETURN_IF_ERROR(gmodel(e).forward(tokens.data() + i, pos.data(), b, attn, dst, k));
  }
  SQZ_RETURN_IF_ERROR(gmodel(e).sync());
  return logits;
}

Result<CompileReport> gpu_compile_context(const Engine& e, const std::string& context_text,
                                          const CompileParams& cp, const std::string& out_path,
                                          ProgressFn progress) {
  const ModelConfig& c = e.model().config();
  SQZ_ASSIGN_OR_RETURN(ContextCapture cap, context_capture(e, context_text, cp));
  const int64_t n = cap.n_ctx;
  const std::vector<int32_t>& toks = cap.tokens;
  gpu::Model& m = gmodel(e);
  CompileReport rep;
  rep.n_ctx = n;
  gpu::KvCacheGpu cache;
  SQZ_RETURN_IF_ERROR(cache.init(c.n_layer, c.n_head_kv, c.head_dim, n));
  {
    gpu::DenseAttentionGpu attn(cache, c.n_head, c.n_head_kv, c.head_dim);
    attn.set_capture(n - cp.obs_window, &cap.q_obs);
    std::vector<int32_t> pos;
    const int64_t nb = gpu_batch(e);
    const double t0 = now_s();
    for (int64_t i = 0; i < n; i += nb) {
      const int64_t b = std::min(nb, n - i);
      pos.resize((size_t)b);
      for (int64_t j = 0; j < b; j++) pos[(size_t)j] = (int32_t)(i + j);
      SQZ_RETURN_IF_ERROR(m.forward(toks.data() + i, pos.data(), b, attn, nullptr, 0));
      if (progress) {
        SQZ_RETURN_IF_ERROR(m.sync());
        progress(i + b, n);
      }
    }
    SQZ_RETURN_IF_ERROR(m.sync());
    rep.prefill_s = now_s() - t0;
  }
  // K/V stay on the device: K-means, cluster statistics, the gathers into the pack's row order
  // and the calibration run there, and the pack is streamed as heads finish (gpu_compile.cpp).
  SQZ_RETURN_IF_ERROR(gpu::gpu_squeeze_and_write(cache, cap, cp, engine_fingerprint(e), out_path,
                                                 m.stream(), kGpuKmeansIters, rep));
  return rep;
}

namespace {

struct GpuAskSetup {
  std::unique_ptr<gpu::SqueezeAttentionGpu> attn;
  double percentile = 0;
  int levels = 1;
  int64_t user_cap = 0;
};

Result<GpuAskSetup> make_gpu_setup(const Engine& e, const Pack& pack, int64_t n_user_max,
                                   const AskParams& ap) {
  SQZ_RETURN_IF_ERROR(pack_check_model(pack, engine_fingerprint(e)));
  if (ap.selector || ap.measure_mass || ap.select.block > 0 ||
      ap.select.alloc != SelectParams::Alloc::kGlobal || ap.select.head_floor > 0)
    return Error(Code::kUnsupported,
                 "--device cuda: baseline selectors, per-head budgets, --select-block and "
                 "--measure-mass run on the CPU only");
  // The CUDA lookup scores with mean or mean_iso; auto resolves to the pack's default.
  const Estimator est = pack.resolve_estimator(ap.select.estimator);
  if (est != Estimator::kMean && est != Estimator::kMeanIso)
    return Error(Code::kUnsupported,
                 "--device cuda: the CUDA lookup implements the mean and mean_iso estimators, not "
                 "{}{} (use --estimator mean_iso or mean, or --device cpu)",
                 estimator_name(est),
                 ap.select.estimator == Estimator::kAuto ? " (the pack's default)" : "");
  GpuAskSetup s;
  SelectParams sp = ap.select;
  sp.estimator = est;
  s.levels = sp.levels >= 2 && pack.n_coarse() > 0 ? 2 : 1;
  if (ap.budget > 0) {
    if (ap.budget > 1)
      return Error(Code::kInvalidArgument, "budget {} must be in (0, 1]", ap.budget);
    sp = select_for_budget(pack, sp, ap.budget);
  }
  s.percentile = sp.percentile;
  float tf, tc;
  if (ap.keep_all) {
    tf = tc = -std::numeric_limits<float>::infinity();
  } else if (!std::isnan(sp.threshold_override)) {
    tf = tc = (float)sp.threshold_override;
  } else {
    const double pc =
        sp.coarse_percentile >= 0 ? sp.coarse_percentile : auto_coarse_percentile(sp.percentile);
    tf = (float)pack.threshold_for(sp.percentile, CentroidLevel::kFine, est);
    tc = (float)pack.threshold_for(pc, CentroidLevel::kCoarse, est);
  }
  const int64_t room = e.n_ctx() - pack.n_ctx();
  if (room <= 0)
    return Error(Code::kOutOfRange, "the pack's context ({} tokens) fills the model window ({})",
                 pack.n_ctx(), e.n_ctx());
  s.user_cap = std::min(room, n_user_max);
  gpu::PackHost ph;
  ph.n_layer = pack.n_layer();
  ph.n_head = pack.n_head();
  ph.n_kv = pack.n_head_kv();
  ph.head_dim = pack.head_dim();
  ph.n_clustered = pack.n_clustered();
  ph.n_obs = pack.n_obs();
  ph.n_fine = pack.n_fine();
  ph.n_coarse = pack.n_coarse();
  ph.kv_f32 = pack.kv_type() == DType::kF32;
  ph.layers.resize((size_t)pack.n_layer());
  // The child-bound coarse rule (the CPU's default) reads each coarse cluster's bound inputs,
  // built as the CPU scorer builds them (with the mean_iso terms when that is the estimator).
  const bool child =
      s.levels == 2 && !ap.dense && sp.coarse_rule == SelectParams::CoarseRule::kChildBound;
  std::vector<std::vector<float>> child_tab(child ? (size_t)pack.n_layer() : 0);
  for (int l = 0; l < pack.n_layer(); l++) {
    gpu::PackLayerHost& L = ph.layers[(size_t)l];
    const KvHeadView kc = pack.clustered_kv(l, 0), ko = pack.obs_kv(l, 0);
    L.k = kc.k;
    L.v = kc.v;
    L.k_obs = ko.k;
    L.v_obs = ko.v;
    L.fine_centroids = pack.fine_centroids(l, 0);
    L.fine_offsets = pack.fine_offsets(l, 0);
    L.perm = pack.perm(l, 0);
    L.fine_var = pack.fine_var(l, 0);
    L.fine_radius = pack.fine_radius(l, 0);
    if (pack.n_coarse() > 0) {
      L.coarse_centroids = pack.coarse_centroids(l, 0);
      L.coarse_ranges = pack.coarse_ranges(l, 0);
      L.coarse_var = pack.coarse_var(l, 0);
      L.coarse_radius = pack.coarse_radius(l, 0);
    }
    if (child) {
      const int kc = pack.n_coarse();
      std::vector<float>& t = child_tab[(size_t)l];
      t.assign((size_t)ph.n_kv * kc * 4, 0.0f);
      std::vector<float> spread((size_t)kc), iso((size_t)kc), r((size_t)kc), fine_iso;
      for (int h = 0; h < ph.n_kv; h++) {
        const HeadCentroidsView v = pack.centroids_view(l, h);
        if (est == Estimator::kMeanIso) iso_variances(v.fine_var, v.n_fine, v.head_dim, fine_iso);
        child_bounds(v, est == Estimator::kMeanIso ? fine_iso.data() : nullptr, spread.data(),
                     iso.data(), r.data());
        for (int c = 0; c < kc; c++) {
          float* e = &t[((size_t)h * kc + c) * 4];
          e[0] = (float)(sp.child_bound_scale * spread[(size_t)c]);
          e[1] = iso[(size_t)c];
          e[2] = r[(size_t)c];
        }
      }
      L.coarse_child = t.data();
    }
  }
  gpu::SqueezeOptions o;
  o.dense = ap.dense;
  o.levels = s.levels;
  o.iso = est == Estimator::kMeanIso;
  o.threshold_fine = tf;
  o.threshold_coarse = tc;
  o.child_rule = child;
  o.max_q = (int)std::min<int64_t>(gpu_batch(e), std::max<int64_t>(1, n_user_max));
  o.user_capacity = s.user_cap;
  o.sink_tokens = ap.sink_tokens;
  SQZ_ASSIGN_OR_RETURN(s.attn, gpu::SqueezeAttentionGpu::create(ph, o, gmodel(e).stream()));
  return s;
}

Status fill_gpu_stats(GpuAskSetup& s, const Pack& pack, const AskParams& ap, AskResult& r) {
  double kept = 0, cmp = 0, lookups = 0;
  SQZ_RETURN_IF_ERROR(s.attn->stats(&kept, &cmp, &lookups));
  const double denom = lookups * (double)pack.n_ctx();
  r.kept_fraction = ap.dense ? 1.0 : (denom > 0 ? kept / denom : 0.0);
  r.centroid_fraction = ap.dense ? 0.0 : (denom > 0 ? cmp / denom : 0.0);
  r.budget = r.kept_fraction + r.centroid_fraction;
  r.percentile = s.percentile;
  r.mass_captured = ap.dense ? 1.0 : -1.0;
  r.pack_upload_s = s.attn->upload_seconds();
  return Status::Ok();
}

}  // namespace

Result<AskResult> gpu_ask(const Engine& e, const Pack& pack, const std::string& question,
                          const AskParams& ap) {
  const std::vector<int32_t> q = question_tokens(e, question);
  if (q.empty()) return Error(Code::kInvalidArgument, "empty question");
  SQZ_ASSIGN_OR_RETURN(GpuAskSetup s,
                       make_gpu_setup(e, pack, (int64_t)q.size() + ap.gen.max_tokens + 1, ap));
  gpu::Model& m = gmodel(e);
  gpu::SqueezeAttentionGpu& attn = *s.attn;
  auto fwd = [&](const int32_t* t, const int32_t* p, int64_t n, float* logits, int64_t nl) {
    return m.forward(t, p, n, attn, logits, nl);
  };
  AskResult r;
  SQZ_ASSIGN_OR_RETURN(r.gen, run_generation_fn(fwd, std::min<int64_t>(gpu_batch(e), s.user_cap),
                                                e.model().config().n_vocab, e.tokenizer(), q,
                                                pack.n_ctx(), pack.n_ctx() + s.user_cap, ap.gen));
  SQZ_RETURN_IF_ERROR(fill_gpu_stats(s, pack, ap, r));
  return r;
}

Result<std::vector<float>> gpu_ask_first_logits(const Engine& e, const Pack& pack,
                                                const std::vector<int32_t>& q_toks,
                                                const AskParams& ap, AskResult* stats) {
  const int64_t n = (int64_t)q_toks.size();
  if (n == 0) return Error(Code::kInvalidArgument, "empty question");
  SQZ_ASSIGN_OR_RETURN(GpuAskSetup s, make_gpu_setup(e, pack, n + 1, ap));
  const int32_t nv = e.model().config().n_vocab;
  std::vector<float> logits((size_t)nv);
  std::vector<int32_t> pos;
  const int64_t nb = std::min<int64_t>(gpu_batch(e), s.user_cap);
  for (int64_t i = 0; i < n; i += nb) {
    const int64_t b = std::min(nb, n - i);
    pos.resize((size_t)b);
    for (int64_t j = 0; j < b; j++) pos[(size_t)j] = (int32_t)(pack.n_ctx() + i + j);
    const bool last = i + b == n;
    SQZ_RETURN_IF_ERROR(gmodel(e).forward(q_toks.data() + i, pos.data(), b, *s.attn,
                                          last ? logits.data() : nullptr, last ? 1 : 0));
  }
  if (stats) SQZ_RETURN_IF_ERROR(fill_gpu_stats(s, pack, ap, *stats));
  return logits;
}

#else  // !SQZ_HAVE_CUDA

struct GpuBackend {};

namespace {
Status no_cuda() {
  return Error(Code::kUnsupported,
               "--device cuda: this sqz was built without CUDA (configure with -DSQZ_CUDA=ON "
               "where nvcc is installed)");
}
}  // namespace

Result<std::shared_ptr<GpuBackend>> gpu_backend_create(const LlamaModel&) {
  return no_cuda();
}
std::string gpu_backend_describe(const GpuBackend&) {
  return "no CUDA";
}
Result<GenerateResult> gpu_generate(const Engine&, const std::vector<int32_t>&,
                                    const GenerateParams&) {
  return no_cuda();
}
Result<std::vector<float>> gpu_prompt_logits(const Engine&, const std::vector<int32_t>&, int64_t) {
  return no_cuda();
}
Result<CompileReport> gpu_compile_context(const Engine&, const std::string&, const CompileParams&,
                                          const std::string&, ProgressFn) {
  return no_cuda();
}
Result<AskResult> gpu_ask(const Engine&, const Pack&, const std::string&, const AskParams&) {
  return no_cuda();
}
Result<std::vector<float>> gpu_ask_first_logits(const Engine&, const Pack&,
                                                const std::vector<int32_t>&, const AskParams&,
                                                AskResult*) {
  return no_cuda();
}

#endif

}  // namespace sqz
