#include "backend/cuda/fwd/gpu_attention.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "backend/cuda/fwd/dev_buffer.h"
#include "backend/cuda/fwd/kv.h"
#include "backend/cuda/squeeze_cuda.h"
#include "core/clock.h"
#include "core/fp16.h"
#include "squeeze/cluster_scalars.h"

namespace sqz::gpu {

namespace {

// Attention state buffers for up to n query tokens.
struct StateBufs {
  DevBuf out;  // [n, n_head, hd] f32
  DevBuf lse;  // [n, n_head] f32
  Status ensure(int64_t n, int n_head, int hd) {
    SQZ_RETURN_IF_ERROR(out.ensure((size_t)n * n_head * hd * 4, "attention state"));
    return lse.ensure((size_t)n * n_head * 4, "attention state");
  }
  sqz_cuda_state state() const {
    sqz_cuda_state s{};
    s.out = out.as<float>();
    s.lse = lse.as<float>();
    return s;
  }
};

sqz_cuda_shape dense_shape(int n_head, int n_kv, int hd) {
  sqz_cuda_shape sh{};
  sh.n_heads = n_head;
  sh.n_kv_heads = n_kv;
  sh.head_dim = hd;
  sh.n_fine = 1;
  sh.max_q = 1;
  sh.dtype = SQZ_CUDA_F16;
  return sh;
}

// Causal attention of the step's queries over rows [0, n_keys) of one layer's cache, whose row r
// has position key_pos0 + r.
Status dense_causal(const AttnStep& s, int n_head, int n_kv, int hd, const void* k, const void* v,
                    int64_t cap, int64_t n_keys, int64_t key_pos0, const sqz_cuda_state& out) {
  const sqz_cuda_shape sh = dense_shape(n_head, n_kv, hd);
  sqz_cuda_dense_args a{};
  a.q = s.q16;
  a.n_q = (int32_t)s.n_tok;
  a.k = k;
  a.v = v;
  a.n_keys = (int32_t)n_keys;
  a.kv_head_stride = cap * hd;
  a.kv_row_stride = hd;
  a.key_pos0 = key_pos0;
  a.q_pos0 = s.pos[0];
  a.scale = 1.0f / std::sqrt((float)hd);
  return sqz_status(sqz_cuda_dense_causal(&sh, &a, &out, as_stream(s.stream)), "dense attention");
}

}  // namespace

// ---- KvCacheGpu ----

struct KvCacheGpu::Impl {
  std::vector<DevBuf> k, v;  // per layer [n_kv, cap, hd] f16
  DevBuf tmp;                // f32 staging for read_f32
};

KvCacheGpu::KvCacheGpu() : impl_(std::make_unique<Impl>()) {}
KvCacheGpu::~KvCacheGpu() = default;

Status KvCacheGpu::init(int n_layer, int n_kv, int head_dim, int64_t capacity) {
  n_layer_ = n_layer;
  n_kv_ = n_kv;
  hd_ = head_dim;
  cap_ = capacity;
  impl_->k.resize((size_t)n_layer);
  impl_->v.resize((size_t)n_layer);
  const size_t bytes = (size_t)n_kv * (size_t)capacity * head_dim * 2;
  for (int l = 0; l < n_layer; l++) {
    SQZ_RETURN_IF_ERROR(impl_->k[(size_t)l].alloc(bytes, "KV cache"));
    SQZ_RETURN_IF_ERROR(impl_->v[(size_t)l].alloc(bytes, "KV cache"));
  }
  return Status::Ok();
}

void* KvCacheGpu::k(int layer) const {
  return impl_->k[(size_t)layer].get();
}
void* KvCacheGpu::v(int layer) const {
  return impl_->v[(size_t)layer].get();
}

Status KvCacheGpu::read_f32(int layer, int64_t rows, float* k_out, float* v_out,
                            void* stream) const {
  // Converted on the device: the host f16 -> f32 loop over a 128K-token 8B context (8.6 G
  // values) would take tens of seconds.
  cudaStream_t s = as_stream(stream);
  const int64_t per_layer = (int64_t)n_kv_ * cap_ * hd_;
  SQZ_RETURN_IF_ERROR(impl_->tmp.ensure((size_t)per_layer * 4, "KV readback"));
  for (int which = 0; which < 2; which++) {
    const void* src = which == 0 ? k(layer) : v(layer);
    float* dst = which == 0 ? k_out : v_out;
    SQZ_RETURN_IF_ERROR(
        sqz_status(fwd::f16_to_f32(src, impl_->tmp.as<float>(), per_layer, s), "KV readback"));
    for (int h = 0; h < n_kv_; h++)
      SQZ_RETURN_IF_ERROR(
          cuda_status(cudaMemcpyAsync(dst + (int64_t)h * rows * hd_,
                                      impl_->tmp.as<float>() + (int64_t)h * cap_ * hd_,
                                      (size_t)rows * hd_ * 4, cudaMemcpyDeviceToHost, s),
                      "KV readback"));
    SQZ_RETURN_IF_ERROR(cuda_status(cudaStreamSynchronize(s), "KV readback"));
  }
  return Status::Ok();
}

// ---- DenseAttentionGpu ----

struct DenseAttentionGpu::Impl {
  KvCacheGpu* cache = nullptr;
  int n_head = 0, n_kv = 0, hd = 0;
  int64_t pos_offset = 0;
  int64_t obs_start = -1;
  std::vector<std::vector<float>>* q_obs = nullptr;
  StateBufs st;
};

DenseAttentionGpu::DenseAttentionGpu(KvCacheGpu& cache, int n_head, int n_kv, int head_dim,
                                     int64_t pos_offset)
    : impl_(std::make_unique<Impl>()) {
  impl_->cache = &cache;
  impl_->n_head = n_head;
  impl_->n_kv = n_kv;
  impl_->hd = head_dim;
  impl_->pos_offset = pos_offset;
}
DenseAttentionGpu::~DenseAttentionGpu() = default;

void DenseAttentionGpu::set_capture(int64_t obs_start, std::vector<std::vector<float>>* q_obs) {
  impl_->obs_start = obs_start;
  impl_->q_obs = q_obs;
}

Status DenseAttentionGpu::attend(int layer, const AttnStep& s) {
  Impl& I = *impl_;
  cudaStream_t st = as_stream(s.stream);
  const int64_t n = s.n_tok, first = s.pos[0] - I.pos_offset, last = s.pos[n - 1] - I.pos_offset;
  if (first < 0 || last >= I.cache->capacity())
    return Error(Code::kOutOfRange, "attention: position {} exceeds the KV cache ({} tokens)",
                 s.pos[n - 1], I.cache->capacity() + I.pos_offset);
  SQZ_RETURN_IF_ERROR(
      sqz_status(fwd::store_kv(s.k16, s.v16, s.pos_dev, I.pos_offset, I.cache->k(layer),
                               I.cache->v(layer), (int)n, I.n_kv, I.hd, I.cache->capacity(), st),
                 "KV store"));
  SQZ_RETURN_IF_ERROR(I.st.ensure(n, I.n_head, I.hd));
  const sqz_cuda_state out = I.st.state();
  SQZ_RETURN_IF_ERROR(dense_causal(s, I.n_head, I.n_kv, I.hd, I.cache->k(layer), I.cache->v(layer),
                                   I.cache->capacity(), last + 1, I.pos_offset, out));
  SQZ_RETURN_IF_ERROR(
      sqz_status(fwd::f32_to_f16(out.out, s.out16, n * I.n_head * I.hd, st), "attention output"));
  if (I.q_obs && s.pos[n - 1] >= I.obs_start) {
    const int64_t t0 = std::max<int64_t>(0, I.obs_start - s.pos[0]);
    const int64_t row = (int64_t)I.n_head * I.hd;
    float* dst = (*I.q_obs)[(size_t)layer].data() + (s.pos[t0] - I.obs_start) * row;
    SQZ_RETURN_IF_ERROR(
        cuda_status(cudaMemcpyAsync(dst, s.q32 + t0 * row, (size_t)((n - t0) * row) * 4,
                                    cudaMemcpyDeviceToHost, st),
                    "query capture"));
    SQZ_RETURN_IF_ERROR(cuda_status(cudaStreamSynchronize(st), "query capture"));
  }
  return Status::Ok();
}

// ---- SqueezeAttentionGpu ----

struct SqueezeAttentionGpu::Impl {
  PackHost meta;  // shapes only (layers cleared)
  SqueezeOptions o;
  cudaStream_t stream = nullptr;
  struct LayerBufs {
    DevBuf k, v;        // [n_kv, n_clustered, hd] f16
    DevBuf fine_c;      // [n_kv, n_fine, hd] f16
    DevBuf fine_off;    // [n_kv, n_fine + 1] int32
    DevBuf coarse_c;    // [n_kv, n_coarse, hd] f16
    DevBuf coarse_off;  // [n_kv, n_coarse + 1] int32
    DevBuf fine_iso;    // [n_kv, n_fine, 2] f32 {v̄, radius} (mean_iso)
    DevBuf coarse_iso;  // [n_kv, n_coarse, 2] f32
    DevBuf child;       // [n_kv, n_coarse, 4] f32 child-bound inputs (child rule)
  };
  std::vector<LayerBufs> layers;
  KvCacheGpu user;  // rows: observation window, then the user's tokens
  sqz_cuda_shape shape{};
  DevBuf ws;
  DevBuf ranges, n_ranges;  // dense mode: one full range per KV head
  sqz_cuda_plan_view view{};
  StateBufs a, b;
  DevBuf acc;  // 2 x u64: kept rows, compared centroids (squeezed mode)
  double host_kept = 0, lookups = 0;
  double upload_s = 0;
  size_t bytes = 0;
  int64_t n_sink = 0;  // sink rows per KV head moved from the clusters to the user cache
  int64_t n_rows = 0;  // clustered rows on the device per KV head (n_clustered - n_sink)

  // Host array of n values (f16 or f32) -> device f16 buffer.
  Status upload_half(DevBuf& dst, const void* src, int64_t n, bool src_f32, const char* what) {
    SQZ_RETURN_IF_ERROR(dst.alloc((size_t)n * 2, what));
    bytes += (size_t)n * 2;
    if (!src_f32)
      return cuda_status(cudaMemcpy(dst.get(), src, (size_t)n * 2, cudaMemcpyHostToDevice), what);
    std::vector<f16_t> h((size_t)n);
    const float* f = static_cast<const float*>(src);
    for (int64_t i = 0; i < n; i++) h[(size_t)i] = fp32_to_fp16(f[i]);
    return cuda_status(cudaMemcpy(dst.get(), h.data(), (size_t)n * 2, cudaMemcpyHostToDevice),
                       what);
  }
  // mean_iso statistics of k clusters: {mean over hd dims of var, radius} per cluster, f32. The
  // mean is the CPU's (iso_variance, as HeadCentroidsT::build).
  Status upload_iso(DevBuf& dst, const float* var, const float* radius, int64_t k, int64_t hd,
                    const char* what) {
    if (!var || !radius)
      return Error(Code::kInvalidArgument, "--device cuda: mean_iso needs the pack's {}", what);
    std::vector<float> h((size_t)k * 2);
    for (int64_t j = 0; j < k; j++) {
      h[(size_t)(2 * j)] = iso_variance(var + j * hd, hd);
      h[(size_t)(2 * j + 1)] = radius[j];
    }
    return upload4(dst, h.data(), (int64_t)h.size(), what);
  }
  // n 4-byte values (int32 offsets, f32 tables) as they are.
  template <typename E>
  Status upload4(DevBuf& dst, const E* src, int64_t n, const char* what) {
    static_assert(sizeof(E) == 4, "4-byte elements");
    SQZ_RETURN_IF_ERROR(dst.alloc((size_t)n * 4, what));
    bytes += (size_t)n * 4;
    return cuda_status(cudaMemcpy(dst.get(), src, (size_t)n * 4, cudaMemcpyHostToDevice), what);
  }
};

SqueezeAttentionGpu::SqueezeAttentionGpu() : impl_(std::make_unique<Impl>()) {}
SqueezeAttentionGpu::~SqueezeAttentionGpu() = default;
double SqueezeAttentionGpu::upload_seconds() const {
  return impl_->upload_s;
}
size_t SqueezeAttentionGpu::device_bytes() const {
  return impl_->bytes;
}

Result<std::unique_ptr<SqueezeAttentionGpu>> SqueezeAttentionGpu::create(const PackHost& p,
                                                                         const SqueezeOptions& o,
                                                                         void* stream) {
  const double t0 = now_s();
  if (p.head_dim != 64 && p.head_dim != 128)
    return Error(Code::kUnsupported, "--device cuda: pack head_dim {} (64 or 128)", p.head_dim);
  if (o.levels == 2 && p.n_coarse == 0)
    return Error(Code::kInvalidArgument, "levels 2: the pack has no coarse centroids");
  if (p.n_clustered < 1 || p.n_clustered > INT32_MAX || (int)p.layers.size() != p.n_layer)
    return Error(Code::kInvalidArgument, "--device cuda: bad pack shape");
  auto sa = std::unique_ptr<SqueezeAttentionGpu>(new SqueezeAttentionGpu());
  Impl& I = *sa->impl_;
  I.meta = p;
  I.meta.layers.clear();
  I.o = o;
  I.stream = as_stream(stream);
  const int64_t hd = p.head_dim, nkv = p.n_kv;
  const bool two = o.levels == 2;
  I.layers.resize((size_t)p.n_layer);
  // Sink rows: the clustered rows of positions < sink_tokens (the same count in every head: each
  // position is one row per head).
  const int64_t nc = p.n_clustered;
  const int n_sink_req = o.dense ? 0 : std::max(0, o.sink_tokens);
  if (n_sink_req > 0) {
    if (!p.layers[0].perm)
      return Error(Code::kInvalidArgument, "--device cuda: sinks need the pack's perm");
    I.n_sink = std::min<int64_t>(n_sink_req, nc);
    if (I.n_sink >= nc)
      return Error(Code::kInvalidArgument, "--sinks {} covers every clustered key", n_sink_req);
  }
  I.n_rows = nc - I.n_sink;
  const int64_t ucap = I.n_sink + p.n_obs + o.user_capacity;
  SQZ_RETURN_IF_ERROR(I.user.init(p.n_layer, p.n_kv, p.head_dim, ucap));
  I.bytes += (size_t)p.n_layer * 2 * nkv * (size_t)ucap * hd * 2;
  // Host f16 staging of one layer: clustered rows minus sinks, sink rows, and the offsets.
  std::vector<f16_t> kc, vc, ks, vs, tmp;
  std::vector<int32_t> fine_off;
  auto row16 = [&](const void* base, int64_t row, f16_t* dst) {  // row of [*, hd] -> f16
    if (p.kv_f32) {
      const float* f = static_cast<const float*>(base) + row * hd;
      for (int64_t i = 0; i < hd; i++) dst[i] = fp32_to_fp16(f[i]);
    } else {
      std::memcpy(dst, static_cast<const f16_t*>(base) + row * hd, (size_t)hd * 2);
    }
  };
  for (int l = 0; l < p.n_layer; l++) {
    const PackLayerHost& h = p.layers[(size_t)l];
    Impl::LayerBufs& L = I.layers[(size_t)l];
    // Without sinks an f16 pack's arrays go up as they are (the 8B / 128K case: 19 GB).
    const bool direct = I.n_sink == 0 && !p.kv_f32;
    kc.resize(direct ? 0 : (size_t)(nkv * I.n_rows * hd));
    vc.resize(kc.size());
    ks.resize((size_t)(nkv * std::max<int64_t>(1, I.n_sink) * hd));
    vs.resize(ks.size());
    fine_off.assign(h.fine_offsets, h.fine_offsets + nkv * (p.n_fine + 1));
    for (int64_t kh = 0; kh < nkv && !direct; kh++) {
      int64_t w = 0, ws = 0;
      int32_t* off = fine_off.data() + kh * (p.n_fine + 1);
      const int32_t* perm = I.n_sink > 0 ? h.perm + kh * nc : nullptr;
      int j = 0;  // next fine boundary to fix: off[j] counts the rows kept before it
      for (int64_t r = 0; r < nc; r++) {
        while (j <= p.n_fine && h.fine_offsets[kh * (p.n_fine + 1) + j] <= r) off[j++] = (int32_t)w;
        const int64_t src = kh * nc + r;
        if (perm && perm[r] < I.n_sink) {
          if (ws >= I.n_sink) return Error(Code::kFormat, "pack perm: repeated sink position");
          row16(h.k, src, ks.data() + (kh * I.n_sink + ws) * hd);
          row16(h.v, src, vs.data() + (kh * I.n_sink + ws) * hd);
          ws++;
        } else {
          row16(h.k, src, kc.data() + (kh * I.n_rows + w) * hd);
          row16(h.v, src, vc.data() + (kh * I.n_rows + w) * hd);
          w++;
        }
      }
      while (j <= p.n_fine) off[j++] = (int32_t)w;
      if (w != I.n_rows || ws != I.n_sink)
        return Error(Code::kFormat, "pack perm: layer {} head {} has {} sink rows, expected {}", l,
                     kh, ws, I.n_sink);
    }
    SQZ_RETURN_IF_ERROR(
        I.upload_half(L.k, direct ? h.k : kc.data(), nkv * I.n_rows * hd, false, "pack K"));
    SQZ_RETURN_IF_ERROR(
        I.upload_half(L.v, direct ? h.v : vc.data(), nkv * I.n_rows * hd, false, "pack V"));
    SQZ_RETURN_IF_ERROR(
        I.upload_half(L.fine_c, h.fine_centroids, nkv * p.n_fine * hd, true, "fine centroids"));
    SQZ_RETURN_IF_ERROR(
        I.upload4(L.fine_off, fine_off.data(), nkv * (p.n_fine + 1), "fine offsets"));
    if (two) {
      SQZ_RETURN_IF_ERROR(I.upload_half(L.coarse_c, h.coarse_centroids, nkv * p.n_coarse * hd, true,
                                        "coarse centroids"));
      SQZ_RETURN_IF_ERROR(
          I.upload4(L.coarse_off, h.coarse_ranges, nkv * (p.n_coarse + 1), "coarse ranges"));
    }
    // mean_iso: the statistics stay those of the pack's clusters when sink rows are moved out
    // (as on the CPU, which keeps the clusters whole and attends the sinks besides).
    if (o.iso && !o.dense) {
      SQZ_RETURN_IF_ERROR(I.upload_iso(L.fine_iso, h.fine_var, h.fine_radius, nkv * p.n_fine, hd,
                                       "fine variances / radii"));
      if (two)
        SQZ_RETURN_IF_ERROR(I.upload_iso(L.coarse_iso, h.coarse_var, h.coarse_radius,
                                         nkv * p.n_coarse, hd, "coarse variances / radii"));
    }
    if (o.child_rule && two && !o.dense) {
      if (!h.coarse_child)
        return Error(Code::kInvalidArgument, "--device cuda: child rule without its inputs");
      SQZ_RETURN_IF_ERROR(I.upload4(L.child, h.coarse_child, nkv * p.n_coarse * 4, "child bounds"));
    }
    // User cache rows: [0, n_sink) sinks, [n_sink, n_sink + n_obs) observation window
    // (positions n_clustered ...), then the user's tokens.
    for (int which = 0; which < 2; which++) {
      void* dst = which == 0 ? I.user.k(l) : I.user.v(l);
      const void* obs = which == 0 ? h.k_obs : h.v_obs;
      const std::vector<f16_t>& sink = which == 0 ? ks : vs;
      tmp.resize((size_t)((I.n_sink + p.n_obs) * hd));
      for (int64_t kh = 0; kh < nkv; kh++) {
        if (I.n_sink > 0)
          std::memcpy(tmp.data(), sink.data() + kh * I.n_sink * hd, (size_t)(I.n_sink * hd) * 2);
        for (int64_t r = 0; r < p.n_obs; r++)
          row16(obs, kh * p.n_obs + r, tmp.data() + (I.n_sink + r) * hd);
        if (tmp.empty()) continue;
        SQZ_RETURN_IF_ERROR(
            cuda_status(cudaMemcpy(static_cast<f16_t*>(dst) + kh * I.user.capacity() * hd,
                                   tmp.data(), tmp.size() * 2, cudaMemcpyHostToDevice),
                        "observation window"));
      }
    }
  }
  sqz_cuda_shape& sh = I.shape;
  sh.n_heads = p.n_head;
  sh.n_kv_heads = p.n_kv;
  sh.head_dim = p.head_dim;
  sh.n_ctx = (int32_t)I.n_rows;
  sh.n_fine = p.n_fine;
  sh.n_coarse = two ? p.n_coarse : 0;
  sh.max_q = o.max_q;
  sh.dtype = SQZ_CUDA_F16;
  sh.num_sms = 0;
  const size_t wsb = sqz_cuda_workspace_size(&sh);
  if (wsb == 0)
    return Error(Code::kInvalidArgument, "--device cuda: pack shape rejected by the kernels");
  SQZ_RETURN_IF_ERROR(I.ws.alloc(wsb, "squeeze workspace"));
  I.bytes += wsb;
  SQZ_RETURN_IF_ERROR(
      sqz_status(sqz_cuda_workspace_init(&sh, I.ws.get(), I.stream), "workspace init"));
  SQZ_RETURN_IF_ERROR(sqz_status(sqz_cuda_get_plan_view(&sh, I.ws.get(), &I.view), "plan view"));
  if (o.dense) {
    std::vector<int32_t> r((size_t)(nkv * p.n_fine * 2), 0), nr((size_t)nkv, 1);
    for (int64_t h = 0; h < nkv; h++) r[(size_t)(h * p.n_fine * 2 + 1)] = (int32_t)I.n_rows;
    SQZ_RETURN_IF_ERROR(I.upload4(I.ranges, r.data(), (int64_t)r.size(), "ranges"));
    SQZ_RETURN_IF_ERROR(I.upload4(I.n_ranges, nr.data(), nkv, "ranges"));
  }
  SQZ_RETURN_IF_ERROR(I.acc.alloc(16, "stats"));
  SQZ_RETURN_IF_ERROR(cuda_status(cudaMemsetAsync(I.acc.get(), 0, 16, I.stream), "stats"));
  SQZ_RETURN_IF_ERROR(I.a.ensure(o.max_q, p.n_head, p.head_dim));
  SQZ_RETURN_IF_ERROR(I.b.ensure(o.max_q, p.n_head, p.head_dim));
  SQZ_RETURN_IF_ERROR(cuda_status(cudaStreamSynchronize(I.stream), "pack upload"));
  I.upload_s = now_s() - t0;
  return sa;
}

Status SqueezeAttentionGpu::attend(int layer, const AttnStep& s) {
  Impl& I = *impl_;
  const PackHost& p = I.meta;
  const int64_t n = s.n_tok, hd = p.head_dim;
  // User cache row r <-> position off + r: sinks just below the observation window, which
  // starts at position n_clustered (every context row precedes every query: visible).
  const int64_t off = p.n_clustered - I.n_sink;
  const int64_t first = s.pos[0] - off, last = s.pos[n - 1] - off;
  if (first < I.n_sink + p.n_obs || last >= I.user.capacity())
    return Error(Code::kOutOfRange, "question + answer exceed the context window ({} tokens)",
                 off + I.user.capacity());
  if (n > I.o.max_q)
    return Error(Code::kInvalidArgument, "squeezed step of {} tokens (max {})", n, I.o.max_q);
  SQZ_RETURN_IF_ERROR(
      sqz_status(fwd::store_kv(s.k16, s.v16, s.pos_dev, off, I.user.k(layer), I.user.v(layer),
                               (int)n, p.n_kv, p.head_dim, I.user.capacity(), I.stream),
                 "KV store"));
  const Impl::LayerBufs& L = I.layers[(size_t)layer];
  const bool two = I.shape.n_coarse > 0;
  sqz_cuda_context ctx{};
  ctx.k = L.k.get();
  ctx.v = L.v.get();
  ctx.fine_centroids = L.fine_c.get();
  ctx.fine_offsets = L.fine_off.as<int32_t>();
  ctx.coarse_centroids = two ? L.coarse_c.get() : nullptr;
  ctx.coarse_offsets = two ? L.coarse_off.as<int32_t>() : nullptr;
  sqz_cuda_query q{};
  q.q = s.q16;
  q.n_q = (int32_t)n;
  q.scale = 1.0f / std::sqrt((float)hd);
  q.threshold_fine = I.o.threshold_fine;
  q.threshold_coarse = I.o.threshold_coarse;
  if (I.o.dense) {
    SQZ_RETURN_IF_ERROR(
        sqz_status(sqz_cuda_plan_ranges(&I.shape, I.ranges.as<int32_t>(), I.n_ranges.as<int32_t>(),
                                        (int32_t)n, I.ws.get(), I.stream),
                   "plan (dense)"));
  } else {
    sqz_cuda_iso iso{};
    iso.fine = L.fine_iso.as<float>();
    iso.coarse = two ? L.coarse_iso.as<float>() : nullptr;
    const sqz_cuda_child child{L.child.as<float>()};
    const bool use_child = I.o.child_rule && two;
    SQZ_RETURN_IF_ERROR(
        sqz_status(sqz_cuda_plan_ex(&I.shape, &ctx, &q, I.o.iso ? &iso : nullptr,
                                    use_child ? &child : nullptr, I.ws.get(), I.stream),
                   "plan (lookup)"));
  }
  const sqz_cuda_state sa = I.a.state(), sb = I.b.state();
  SQZ_RETURN_IF_ERROR(
      sqz_status(sqz_cuda_run(&I.shape, &ctx, &q, I.ws.get(), &sa, I.stream), "sparse attention"));
  if (I.o.dense) {
    I.host_kept += (double)(I.n_rows + I.n_sink + p.n_obs) * (double)n * p.n_kv;
  } else {
    SQZ_RETURN_IF_ERROR(sqz_status(
        fwd::accumulate_plan_stats(I.view.n_rows, two ? I.view.n_compared : nullptr, p.n_kv,
                                   p.n_obs + I.n_sink, two ? p.n_coarse : p.n_fine, n,
                                   I.acc.as<unsigned long long>(), I.stream),
        "plan stats"));
  }
  I.lookups += (double)n * p.n_kv;
  SQZ_RETURN_IF_ERROR(dense_causal(s, p.n_head, p.n_kv, p.head_dim, I.user.k(layer),
                                   I.user.v(layer), I.user.capacity(), last + 1, off, sb));
  return sqz_status(sqz_cuda_merge((int32_t)n, p.n_head, p.head_dim, &sa, &sb, s.out16,
                                   SQZ_CUDA_F16, nullptr, I.stream),
                    "merge");
}

Status SqueezeAttentionGpu::stats(double* kept_rows, double* compared, double* lookups) {
  Impl& I = *impl_;
  unsigned long long acc[2] = {0, 0};
  SQZ_RETURN_IF_ERROR(cuda_status(
      cudaMemcpyAsync(acc, I.acc.get(), 16, cudaMemcpyDeviceToHost, I.stream), "stats"));
  SQZ_RETURN_IF_ERROR(cuda_status(cudaStreamSynchronize(I.stream), "stats"));
  *kept_rows = I.host_kept + (double)acc[0];
  *compared = (double)acc[1];
  *lookups = I.lookups;
  return Status::Ok();
}

// ---- KmeansGpu ----

struct KmeansGpu::Impl {
  sqz_cuda_kmeans* km = nullptr;
  cudaStream_t stream = nullptr;
  DevBuf fine_c, coarse_c, fine_a, coarse_a;
  ~Impl() {
    if (km) sqz_cuda_kmeans_destroy(km);
  }
};

KmeansGpu::KmeansGpu() : impl_(std::make_unique<Impl>()) {}
KmeansGpu::~KmeansGpu() = default;

Status KmeansGpu::init(int64_t n_max, int dim, int k_max, void* stream) {
  Impl& I = *impl_;
  if (n_max > INT32_MAX) return Error(Code::kInvalidArgument, "k-means: {} points", n_max);
  I.stream = as_stream(stream);
  SQZ_RETURN_IF_ERROR(
      sqz_status(sqz_cuda_kmeans_create((int32_t)n_max, dim, k_max, &I.km), "k-means create"));
  SQZ_RETURN_IF_ERROR(I.fine_c.alloc((size_t)k_max * dim * 4, "k-means"));
  SQZ_RETURN_IF_ERROR(I.coarse_c.alloc((size_t)k_max * dim * 4, "k-means"));
  SQZ_RETURN_IF_ERROR(I.fine_a.alloc((size_t)n_max * 4, "k-means"));
  return I.coarse_a.alloc((size_t)k_max * 4, "k-means");
}

Status KmeansGpu::enqueue(const void* points, int64_t n, int k_f, int k_c, int iters,
                          uint64_t seed_fine, uint64_t seed_coarse) {
  Impl& I = *impl_;
  SQZ_RETURN_IF_ERROR(
      sqz_status(sqz_cuda_kmeans_run(I.km, points, SQZ_CUDA_F16, (int32_t)n, k_f, iters, seed_fine,
                                     I.fine_c.as<float>(), I.fine_a.as<int32_t>(), nullptr, nullptr,
                                     nullptr, I.stream),
                 "k-means (fine)"));
  if (k_c > 0) {
    // Coarse level over the fine centroid directions (unweighted: the CUDA K-means takes no
    // weights; the CPU path weights them by cluster size).
    SQZ_RETURN_IF_ERROR(sqz_status(
        sqz_cuda_kmeans_run(I.km, I.fine_c.get(), SQZ_CUDA_F32, k_f, k_c, iters, seed_coarse,
                            I.coarse_c.as<float>(), I.coarse_a.as<int32_t>(), nullptr, nullptr,
                            nullptr, I.stream),
        "k-means (coarse)"));
  }
  return Status::Ok();
}

const int32_t* KmeansGpu::fine_assign_dev() const {
  return impl_->fine_a.as<int32_t>();
}
const int32_t* KmeansGpu::coarse_assign_dev() const {
  return impl_->coarse_a.as<int32_t>();
}

Status KmeansGpu::run(const void* points, int64_t n, int k_f, int k_c, int iters,
                      uint64_t seed_fine, uint64_t seed_coarse, std::vector<int32_t>& fine_assign,
                      std::vector<int32_t>& coarse_of) {
  Impl& I = *impl_;
  SQZ_RETURN_IF_ERROR(enqueue(points, n, k_f, k_c, iters, seed_fine, seed_coarse));
  fine_assign.resize((size_t)n);
  SQZ_RETURN_IF_ERROR(cuda_status(cudaMemcpyAsync(fine_assign.data(), I.fine_a.get(), (size_t)n * 4,
                                                  cudaMemcpyDeviceToHost, I.stream),
                                  "k-means"));
  coarse_of.clear();
  if (k_c > 0) {
    coarse_of.resize((size_t)k_f);
    SQZ_RETURN_IF_ERROR(
        cuda_status(cudaMemcpyAsync(coarse_of.data(), I.coarse_a.get(), (size_t)k_f * 4,
                                    cudaMemcpyDeviceToHost, I.stream),
                    "k-means"));
  }
  return cuda_status(cudaStreamSynchronize(I.stream), "k-means");
}

}  // namespace sqz::gpu
