// Workspace layout of a squeezed-attention plan and the device-side view of it that the lookup
// and attention kernels share. Internal to src/backend/cuda (the public API is squeeze_cuda.h).
#pragma once

#include <cstddef>
#include <cstdint>

#include "backend/cuda/squeeze_cuda.h"

namespace sqz::cuda {

constexpr int kMaxScoreSplits = 64;    // split count of one head's centroid scoring (partials)
constexpr int kFusedMaxSplits = 32;    // fused decode plan: a head's splits fit one warp's lanes
constexpr int kSmallQ = 8;             // <= this many query rows per KV head: CUDA-core paths
constexpr int kPrefillBM = 128;        // query rows per prefill attention CTA (4 warps x 32)
constexpr int kDecodeMaxChunk = 2048;  // rows of one decode work item (row map lives in smem)
constexpr int kDecodeMaxItems = 1024;  // decode items per KV head (the merge's weights in smem)
// Shortest decode item: shorter ones cost more in fixed per-CTA work (row map, reduction,
// partial, arrival) than they gain in balance. SQZ_DECODE_MIN_ROWS overrides it in tuning builds.
#ifndef SQZ_DECODE_MIN_ROWS
#define SQZ_DECODE_MIN_ROWS 256
#endif
constexpr int kDecodeMinChunk = SQZ_DECODE_MIN_ROWS;

// meta[] slots, written by the prefill partition (decode runs split each head's rows themselves;
// the run picks its kernel from n_q, as the plan did).
enum MetaSlot : int {
  kMetaItems = 0,    // work items
  kMetaQBlocks = 1,  // query blocks per KV head
  kMetaCount = 8
};

// Byte offsets of each buffer inside the caller's workspace.
struct WsLayout {
  int n_kv = 0, group = 0, head_dim = 0, n_ctx = 0, n_fine = 0, n_coarse = 0;
  int q_max = 0;  // query rows per KV head: max_q * group
  int num_sms = 0;
  int max_items = 0, max_groups = 0, max_partial_rows = 0;
  int decode_target = 0, prefill_max_items = 0;
  int decode_iph = 0;  // decode run: split-KV items (CTAs) per KV head, fixed by the shape
  size_t counters = 0, counters_bytes = 0;  // zeroed once by workspace_init
  // uint32 [3][n_kv]: coarse / fine arrivals; fused decode plan: per-head barrier arrivals
  size_t head_cnt = 0;
  // uint64 [n_kv]: decode plans publish each head's ranges here, (n_ranges << 32) | (n_rows + 1);
  // 0 = not ready. The decode run waits on its own head's word instead of the whole plan.
  size_t ready = 0;
  size_t global_cnt = 0;  // uint32 [4]
  size_t group_cnt = 0;   // uint32 [max_groups]
  size_t score_part = 0;  // float4 [n_kv][q_max][kMaxScoreSplits]  (m, s_pos, s_neg, -)
  // float [n_kv][q_max]: base-2 log of the coarse denominator (two-launch path)
  size_t lse_coarse = 0;
  size_t logits = 0;    // float [n_kv][n_coarse + n_fine][kSmallQ]  small-query path only
  size_t s_coarse = 0;  // float [n_kv][n_coarse]
  size_t b_coarse = 0;  // float [n_kv][n_coarse]  child-bound scores (child rule)
  size_t coarse_w = 0;  // float [n_kv][n_coarse]  log2(rows) of each coarse cluster (fused decode)
  size_t kept_coarse = 0;  // uint8 [n_kv][n_coarse]
  size_t kc = 0;           // int32 [n_kv][n_coarse]  kept coarse indices, ascending
  size_t n_kc = 0;         // int32 [n_kv]
  size_t cmp = 0;          // int32 [n_kv][n_fine]    compared fine indices, ascending
  size_t n_cmp = 0;        // int32 [n_kv]
  // Fused decode plan scratch. Each split works on a contiguous block of fine indices (its
  // coarse slice's children; single level: its fine slice) and keeps its compared entries,
  // their row bounds and its local merged ranges at that block's first index, so splits never
  // overlap. seg[h][split] = {{compared, first fine index, local ranges, rows},
  // {first range begin, first range end, last range end, -}}.
  size_t cmp_tmp = 0;     // int32 [n_kv][n_fine]
  size_t bounds_tmp = 0;  // int2  [n_kv][n_fine]  rows [begin, end) of each compared entry
  size_t ranges_tmp = 0;  // int2  [n_kv][n_fine]
  size_t vstart_tmp = 0;  // int32 [n_kv][n_fine]
  size_t seg = 0;         // int4  [n_kv][kFusedMaxSplits][2]
  size_t s_fine = 0;      // float [n_kv][n_fine]    by compared position
  size_t kept_fine = 0;   // uint8 [n_kv][n_fine]
  size_t ranges = 0;      // int2  [n_kv][n_fine]    {begin, end} physical rows
  size_t vstart = 0;      // int32 [n_kv][n_fine + 1] kept-row prefix at each range start
  size_t n_ranges = 0;    // int32 [n_kv]
  size_t n_rows = 0;      // int32 [n_kv]
  size_t rowidx = 0;      // int32 [n_kv][n_ctx]     physical row of each kept row, in order
  size_t items = 0;       // int4  [max_items] {kv head, q block, v_begin, v_end}
  size_t group_off = 0;   // int32 [max_groups + 1] first item of each merge group
  size_t meta = 0;        // int32 [kMetaCount]
  size_t pacc = 0;        // float [max_partial_rows][head_dim] unnormalised partial outputs
  size_t pml = 0;         // float2 [max_partial_rows] (max, sum) base-2
  size_t total = 0;
};

// Returns false if the shape is invalid.
bool make_layout(const sqz_cuda_shape& s, WsLayout* L);

// Device view: raw pointers into one workspace plus the static dims.
struct PlanDev {
  int n_kv, group, head_dim, n_ctx, n_fine, n_coarse, q_max, max_items, max_groups;
  // prefill_target: work items per wave of the prefill run's kernel, set per plan
  // (plan_dev_for); 0 in a run's view.
  int prefill_target, prefill_max_items, decode_iph;
  uint32_t* head_cnt;
  unsigned long long* ready;
  uint32_t* global_cnt;
  uint32_t* group_cnt;
  float4* score_part;
  float* lse_coarse;
  float* logits;
  float* s_coarse;
  float* b_coarse;
  float* coarse_w;
  uint8_t* kept_coarse;
  int32_t* kc;
  int32_t* n_kc;
  int32_t* cmp;
  int32_t* n_cmp;
  int32_t* cmp_tmp;
  int2* bounds_tmp;
  int2* ranges_tmp;
  int32_t* vstart_tmp;
  int4* seg;
  float* s_fine;
  uint8_t* kept_fine;
  int2* ranges;
  int32_t* vstart;
  int32_t* n_ranges;
  int32_t* n_rows;
  int32_t* rowidx;
  int4* items;
  int32_t* group_off;
  int32_t* meta;
  float* pacc;
  float2* pml;
};

PlanDev make_plan_dev(const WsLayout& L, void* ws);

// Where query row m of KV head h goes: token t = m / group, head h * group + m % group.
struct OutView {
  float* out;  // [n_q, n_heads, D] f32, token stride out_tok_stride
  int64_t out_tok_stride;
  float* lse;  // [n_q, n_heads] f32 natural log, token stride lse_tok_stride
  int64_t lse_tok_stride;
  int group;
};

// Arguments of the attention kernels (sparse decode, sparse prefill, dense causal).
struct RunArgs {
  PlanDev p;      // sparse: the plan (items, ranges, partial buffers)
  const void* q;  // [n_q, n_heads, D]
  int64_t q_tok_stride;
  int qtot;          // query rows per KV head (n_q * group)
  float scale_log2;  // softmax scale * log2(e)
  const void* k;     // rows of KV head h at k + h * kv_head_stride + row * kv_row_stride
  const void* v;
  int64_t kv_head_stride, kv_row_stride;
  OutView o;
  int n_keys;  // dense causal: key rows
  int64_t key_pos0, q_pos0;
};

// Host helper: 16-bit element size check, dtype validity.
inline bool dtype_ok(sqz_cuda_dtype t) {
  return t == SQZ_CUDA_BF16 || t == SQZ_CUDA_F16;
}

}  // namespace sqz::cuda
