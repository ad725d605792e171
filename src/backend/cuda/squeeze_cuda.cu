// C API of the squeezed-attention CUDA backend (squeeze_cuda.h): workspace layout, argument
// checks and dispatch to the lookup / attention / merge kernels.
#include <algorithm>

#include "backend/cuda/common.cuh"
#include "backend/cuda/dense_causal.cuh"
#include "backend/cuda/lookup.cuh"
#include "backend/cuda/merge.cuh"
#include "backend/cuda/plan.cuh"
#include "backend/cuda/sparse_decode.cuh"
#include "backend/cuda/sparse_prefill.cuh"

namespace sqz::cuda {

namespace {
size_t align_up(size_t x) {
  return (x + 255) & ~size_t(255);
}
}  // namespace

bool pdl_supported() {
  static const bool ok = [] {
    int dev = 0, major = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return false;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess)
      return false;
    return major >= 9;
  }();
  return ok;
}

bool make_layout(const sqz_cuda_shape& s, WsLayout* L) {
  if (s.n_heads <= 0 || s.n_kv_heads <= 0 || s.n_heads % s.n_kv_heads != 0) return false;
  if (s.head_dim != 64 && s.head_dim != 128) return false;
  if (s.n_ctx < 0 || s.n_fine < 1 || s.n_coarse < 0 || s.max_q < 1) return false;
  if (!dtype_ok(s.dtype)) return false;
  WsLayout l;
  l.n_kv = s.n_kv_heads;
  l.group = s.n_heads / s.n_kv_heads;
  l.head_dim = s.head_dim;
  l.n_ctx = s.n_ctx;
  l.n_fine = s.n_fine;
  l.n_coarse = s.n_coarse;
  l.q_max = s.max_q * l.group;
  int sms = s.num_sms;
  if (sms <= 0) {
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
      sms = 132;
  }
  l.num_sms = sms;
  // Many short decode items, scheduled by the hardware (grid = max_items, idle CTAs exit): a
  // persistent grid of 3 CTAs/SM over 4 items/SM left a 1.33-wave tail. 6 per SM rather than the
  // earlier 12 (H200, same call, 10% kept, run alone): fewer row maps, partial writes and merge
  // inputs per head; 128K 75 -> 71 us (LLaMA-2-7B) and 55 -> 53 us (Llama-3-8B), 512K Llama-3-8B
  // 120 -> 100 us, 512K LLaMA-2-7B 228 -> 232 us. SQZ_DECODE_ITEMS_PER_SM overrides it in tuning
  // builds (nvcc -D).
#ifndef SQZ_DECODE_ITEMS_PER_SM
#define SQZ_DECODE_ITEMS_PER_SM 6
#endif
  l.decode_target = SQZ_DECODE_ITEMS_PER_SM * sms;
  const int64_t rows = (int64_t)l.n_kv * l.n_ctx;
  const int64_t decode_items =
      std::max<int64_t>(l.decode_target, (rows + kDecodeMaxChunk - 1) / kDecodeMaxChunk) + l.n_kv +
      1;
  // Decode run: a fixed grid of decode_iph CTAs per KV head (so a head's CTAs can start as soon
  // as its ranges are published); n_kv * decode_iph <= decode_items, so the partials fit.
  l.decode_iph = std::clamp(l.decode_target / l.n_kv, 1, kDecodeMaxItems);
  const bool prefill = l.q_max > kSmallQ;
  const int n_qb_max = (l.q_max + kPrefillBM - 1) / kPrefillBM;
  l.max_groups = std::max(l.n_kv, prefill ? l.n_kv * n_qb_max : 0);
  l.prefill_max_items = prefill ? 2 * l.max_groups + 4 * sms : 0;
  l.max_items = (int)std::max<int64_t>(decode_items, l.prefill_max_items);
  l.max_partial_rows =
      (int)std::max<int64_t>(decode_items * kSmallQ, (int64_t)l.prefill_max_items * kPrefillBM);

  size_t off = 0;
  auto take = [&](size_t bytes) {
    const size_t o = off;
    off = align_up(off + bytes);
    return o;
  };
  const size_t nkv = l.n_kv;
  l.counters = off;
  l.head_cnt = take(3 * nkv * 4);
  l.ready = take(nkv * 8);
  l.global_cnt = take(4 * 4);
  l.group_cnt = take((size_t)l.max_groups * 4);
  l.meta = take(kMetaCount * 4);
  l.counters_bytes = off - l.counters;
  l.score_part = take(nkv * l.q_max * kMaxScoreSplits * sizeof(float) * 4);
  l.lse_coarse = take(nkv * l.q_max * 4);
  l.logits = take(l.group <= kSmallQ ? nkv * (size_t)(l.n_coarse + l.n_fine) * kSmallQ * 4 : 4);
  l.s_coarse = take(nkv * std::max(1, l.n_coarse) * 4);
  l.b_coarse = take(nkv * std::max(1, l.n_coarse) * 4);
  l.coarse_w = take(nkv * std::max(1, l.n_coarse) * 4);
  l.kept_coarse = take(nkv * std::max(1, l.n_coarse));
  l.kc = take(nkv * std::max(1, l.n_coarse) * 4);
  l.n_kc = take(nkv * 4);
  l.cmp = take(nkv * l.n_fine * 4);
  l.n_cmp = take(nkv * 4);
  l.cmp_tmp = take(nkv * l.n_fine * 4);
  l.bounds_tmp = take(nkv * l.n_fine * 8);
  l.ranges_tmp = take(nkv * l.n_fine * 8);
  l.vstart_tmp = take(nkv * l.n_fine * 4);
  l.seg = take(nkv * kFusedMaxSplits * 2 * 16);
  l.s_fine = take(nkv * l.n_fine * 4);
  l.kept_fine = take(nkv * l.n_fine);
  l.ranges = take(nkv * l.n_fine * 8);
  l.vstart = take(nkv * (l.n_fine + 1) * 4);
  l.n_ranges = take(nkv * 4);
  l.n_rows = take(nkv * 4);
  l.rowidx = take(nkv * std::max(1, l.n_ctx) * 4);
  l.items = take((size_t)l.max_items * 16);
  l.group_off = take(((size_t)l.max_groups + 1) * 4);
  l.pacc = take((size_t)l.max_partial_rows * l.head_dim * 4);
  l.pml = take((size_t)l.max_partial_rows * 8);
  l.total = off;
  *L = l;
  return true;
}

PlanDev make_plan_dev(const WsLayout& L, void* ws) {
  char* b = static_cast<char*>(ws);
  PlanDev p;
  p.n_kv = L.n_kv;
  p.group = L.group;
  p.head_dim = L.head_dim;
  p.n_ctx = L.n_ctx;
  p.n_fine = L.n_fine;
  p.n_coarse = L.n_coarse;
  p.q_max = L.q_max;
  p.max_items = L.max_items;
  p.max_groups = L.max_groups;
  p.prefill_target = 0;
  p.prefill_max_items = L.prefill_max_items;
  p.decode_iph = L.decode_iph;
  p.head_cnt = reinterpret_cast<uint32_t*>(b + L.head_cnt);
  p.ready = reinterpret_cast<unsigned long long*>(b + L.ready);
  p.global_cnt = reinterpret_cast<uint32_t*>(b + L.global_cnt);
  p.group_cnt = reinterpret_cast<uint32_t*>(b + L.group_cnt);
  p.score_part = reinterpret_cast<float4*>(b + L.score_part);
  p.lse_coarse = reinterpret_cast<float*>(b + L.lse_coarse);
  p.logits = reinterpret_cast<float*>(b + L.logits);
  p.s_coarse = reinterpret_cast<float*>(b + L.s_coarse);
  p.b_coarse = reinterpret_cast<float*>(b + L.b_coarse);
  p.coarse_w = reinterpret_cast<float*>(b + L.coarse_w);
  p.kept_coarse = reinterpret_cast<uint8_t*>(b + L.kept_coarse);
  p.kc = reinterpret_cast<int32_t*>(b + L.kc);
  p.n_kc = reinterpret_cast<int32_t*>(b + L.n_kc);
  p.cmp = reinterpret_cast<int32_t*>(b + L.cmp);
  p.n_cmp = reinterpret_cast<int32_t*>(b + L.n_cmp);
  p.cmp_tmp = reinterpret_cast<int32_t*>(b + L.cmp_tmp);
  p.bounds_tmp = reinterpret_cast<int2*>(b + L.bounds_tmp);
  p.ranges_tmp = reinterpret_cast<int2*>(b + L.ranges_tmp);
  p.vstart_tmp = reinterpret_cast<int32_t*>(b + L.vstart_tmp);
  p.seg = reinterpret_cast<int4*>(b + L.seg);
  p.s_fine = reinterpret_cast<float*>(b + L.s_fine);
  p.kept_fine = reinterpret_cast<uint8_t*>(b + L.kept_fine);
  p.ranges = reinterpret_cast<int2*>(b + L.ranges);
  p.vstart = reinterpret_cast<int32_t*>(b + L.vstart);
  p.n_ranges = reinterpret_cast<int32_t*>(b + L.n_ranges);
  p.n_rows = reinterpret_cast<int32_t*>(b + L.n_rows);
  p.rowidx = reinterpret_cast<int32_t*>(b + L.rowidx);
  p.items = reinterpret_cast<int4*>(b + L.items);
  p.group_off = reinterpret_cast<int32_t*>(b + L.group_off);
  p.meta = reinterpret_cast<int32_t*>(b + L.meta);
  p.pacc = reinterpret_cast<float*>(b + L.pacc);
  p.pml = reinterpret_cast<float2*>(b + L.pml);
  return p;
}

namespace {

// A plan's view: a prefill plan partitions its rows for one wave of the run's kernel.
PlanDev plan_dev_for(const sqz_cuda_shape& s, const WsLayout& L, void* ws, int n_q) {
  PlanDev p = make_plan_dev(L, ws);
  if ((int64_t)n_q * L.group > kSmallQ) p.prefill_target = prefill_wave_items(s, L);
  return p;
}

bool check_query(const sqz_cuda_shape& s, const sqz_cuda_query* q) {
  return q && q->q && q->n_q >= 1 && q->n_q <= s.max_q;
}

OutView out_view(const sqz_cuda_shape& s, const sqz_cuda_state& st) {
  OutView o;
  o.out = st.out;
  o.out_tok_stride = st.out_tok_stride ? st.out_tok_stride : (int64_t)s.n_heads * s.head_dim;
  o.lse = st.lse;
  o.lse_tok_stride = st.lse_tok_stride ? st.lse_tok_stride : s.n_heads;
  o.group = s.n_heads / s.n_kv_heads;
  return o;
}

}  // namespace
}  // namespace sqz::cuda

using namespace sqz::cuda;

extern "C" {

size_t sqz_cuda_workspace_size(const sqz_cuda_shape* shape) {
  WsLayout L;
  if (!shape || !make_layout(*shape, &L)) return 0;
  return L.total;
}

int sqz_cuda_workspace_init(const sqz_cuda_shape* shape, void* ws, cudaStream_t stream) {
  WsLayout L;
  if (!shape || !ws || !make_layout(*shape, &L)) return SQZ_CUDA_EINVAL;
  if (cudaMemsetAsync(static_cast<char*>(ws) + L.counters, 0, L.counters_bytes, stream) !=
      cudaSuccess)
    return SQZ_CUDA_ECUDA;
  return SQZ_CUDA_OK;
}

int sqz_cuda_plan(const sqz_cuda_shape* shape, const sqz_cuda_context* ctx, const sqz_cuda_query* q,
                  void* ws, cudaStream_t stream) {
  return sqz_cuda_plan_iso(shape, ctx, q, nullptr, ws, stream);
}

int sqz_cuda_plan_iso(const sqz_cuda_shape* shape, const sqz_cuda_context* ctx,
                      const sqz_cuda_query* q, const sqz_cuda_iso* iso, void* ws,
                      cudaStream_t stream) {
  return sqz_cuda_plan_ex(shape, ctx, q, iso, nullptr, ws, stream);
}

int sqz_cuda_plan_ex(const sqz_cuda_shape* shape, const sqz_cuda_context* ctx,
                     const sqz_cuda_query* q, const sqz_cuda_iso* iso, const sqz_cuda_child* child,
                     void* ws, cudaStream_t stream) {
  WsLayout L;
  if (!shape || !ctx || !ws || !make_layout(*shape, &L) || !check_query(*shape, q))
    return SQZ_CUDA_EINVAL;
  if (!ctx->fine_centroids || !ctx->fine_offsets) return SQZ_CUDA_EINVAL;
  if (shape->n_coarse > 0 && (!ctx->coarse_centroids || !ctx->coarse_offsets))
    return SQZ_CUDA_EINVAL;
  // mean_iso needs both levels' statistics (a mixed lookup would score the two levels with
  // different estimators against one calibration).
  if (iso && (!iso->fine || (shape->n_coarse > 0 && !iso->coarse))) return SQZ_CUDA_EINVAL;
  if (iso && ((uintptr_t)iso->fine % 8 != 0 || (uintptr_t)iso->coarse % 8 != 0))
    return SQZ_CUDA_EINVAL;                   // read as float2
  if (shape->n_coarse == 0) child = nullptr;  // one level: no coarse rule
  if (child && (!child->bound || (uintptr_t)child->bound % 16 != 0))
    return SQZ_CUDA_EINVAL;  // read as float4
  return launch_lookup(*shape, L, plan_dev_for(*shape, L, ws, q->n_q), *ctx, *q, iso, child,
                       stream);
}

int sqz_cuda_plan_ranges(const sqz_cuda_shape* shape, const int32_t* ranges,
                         const int32_t* n_ranges, int32_t n_q, void* ws, cudaStream_t stream) {
  WsLayout L;
  if (!shape || !ranges || !n_ranges || !ws || !make_layout(*shape, &L)) return SQZ_CUDA_EINVAL;
  if (n_q < 1 || n_q > shape->max_q) return SQZ_CUDA_EINVAL;
  return launch_plan_ranges(*shape, L, plan_dev_for(*shape, L, ws, n_q), ranges, n_ranges, n_q,
                            stream);
}

int sqz_cuda_run(const sqz_cuda_shape* shape, const sqz_cuda_context* ctx, const sqz_cuda_query* q,
                 void* ws, const sqz_cuda_state* out, cudaStream_t stream) {
  WsLayout L;
  if (!shape || !ctx || !ws || !out || !out->out || !out->lse || !make_layout(*shape, &L) ||
      !check_query(*shape, q) || !ctx->k || !ctx->v)
    return SQZ_CUDA_EINVAL;
  RunArgs a{};
  a.p = make_plan_dev(L, ws);
  a.q = q->q;
  a.q_tok_stride = q->q_tok_stride ? q->q_tok_stride : (int64_t)shape->n_heads * shape->head_dim;
  a.qtot = q->n_q * L.group;
  a.scale_log2 = q->scale * kLog2e;
  a.k = ctx->k;
  a.v = ctx->v;
  a.kv_row_stride = ctx->kv_row_stride ? ctx->kv_row_stride : shape->head_dim;
  a.kv_head_stride =
      ctx->kv_head_stride ? ctx->kv_head_stride : (int64_t)shape->n_ctx * a.kv_row_stride;
  if (a.kv_row_stride % 8 != 0 || a.kv_head_stride % 8 != 0 || a.q_tok_stride % 8 != 0)
    return SQZ_CUDA_EINVAL;  // 16-byte vector loads
  a.o = out_view(*shape, *out);
  // The plan's mode follows from the same n_q (decode iff n_q * group <= kSmallQ).
  if (a.qtot <= kSmallQ) return launch_sparse_decode(*shape, L, a, stream);
  return launch_sparse_prefill(*shape, L, a, stream);
}

int sqz_cuda_dense_causal(const sqz_cuda_shape* shape, const sqz_cuda_dense_args* d,
                          const sqz_cuda_state* out, cudaStream_t stream) {
  if (!shape || !d || !out || !out->out || !out->lse || !d->q || !d->k || !d->v)
    return SQZ_CUDA_EINVAL;
  if (shape->n_heads <= 0 || shape->n_kv_heads <= 0 || shape->n_heads % shape->n_kv_heads)
    return SQZ_CUDA_EINVAL;
  if (!dtype_ok(shape->dtype)) return SQZ_CUDA_EINVAL;
  if (d->n_q < 0 || d->n_keys < 0) return SQZ_CUDA_EINVAL;
  RunArgs a{};
  const int group = shape->n_heads / shape->n_kv_heads;
  a.q = d->q;
  a.q_tok_stride = d->q_tok_stride ? d->q_tok_stride : (int64_t)shape->n_heads * shape->head_dim;
  a.qtot = d->n_q * group;
  a.scale_log2 = d->scale * kLog2e;
  a.k = d->k;
  a.v = d->v;
  a.kv_row_stride =
      d->kv_row_stride ? d->kv_row_stride : (int64_t)shape->n_kv_heads * shape->head_dim;
  a.kv_head_stride = d->kv_head_stride ? d->kv_head_stride : shape->head_dim;
  if (a.kv_row_stride % 8 != 0 || a.kv_head_stride % 8 != 0 || a.q_tok_stride % 8 != 0)
    return SQZ_CUDA_EINVAL;
  a.o = out_view(*shape, *out);
  a.n_keys = d->n_keys;
  a.key_pos0 = d->key_pos0;
  a.q_pos0 = d->q_pos0;
  return launch_dense_causal(shape->dtype, shape->head_dim, shape->n_kv_heads, a, stream);
}

int sqz_cuda_merge(int32_t n_q, int32_t n_heads, int32_t head_dim, const sqz_cuda_state* a,
                   const sqz_cuda_state* b, void* out_final, sqz_cuda_dtype out_dtype,
                   float* lse_final, cudaStream_t stream) {
  if (!a || !b || !out_final || n_q < 0 || n_heads <= 0 || head_dim <= 0) return SQZ_CUDA_EINVAL;
  return launch_merge_states(n_q, n_heads, head_dim, *a, *b, out_final, out_dtype, lse_final,
                             stream);
}

int sqz_cuda_get_plan_view(const sqz_cuda_shape* shape, void* ws, sqz_cuda_plan_view* v) {
  WsLayout L;
  if (!shape || !ws || !v || !make_layout(*shape, &L)) return SQZ_CUDA_EINVAL;
  const PlanDev p = make_plan_dev(L, ws);
  v->coarse_scores = p.s_coarse;
  v->coarse_bounds = p.b_coarse;
  v->coarse_kept = p.kept_coarse;
  v->n_compared = p.n_cmp;
  v->compared = p.cmp;
  v->fine_scores = p.s_fine;
  v->fine_kept = p.kept_fine;
  v->n_ranges = p.n_ranges;
  v->ranges = reinterpret_cast<const int32_t*>(p.ranges);
  v->n_rows = p.n_rows;
  v->n_items = p.meta + kMetaItems;
  v->items = reinterpret_cast<const int32_t*>(p.items);
  v->max_items = L.max_items;
  return SQZ_CUDA_OK;
}

const char* sqz_cuda_status_str(int s) {
  switch (s) {
    case SQZ_CUDA_OK:
      return "ok";
    case SQZ_CUDA_EINVAL:
      return "invalid argument";
    case SQZ_CUDA_EUNSUPPORTED:
      return "unsupported";
    case SQZ_CUDA_ECUDA:
      return "CUDA error";
    case SQZ_CUDA_ENOMEM:
      return "out of memory";
    default:
      return "unknown status";
  }
}

}  // extern "C"
