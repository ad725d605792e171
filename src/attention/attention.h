// Partial attention over an arbitrary subset of cached keys, returning the log-sum-exp so
// partial results over disjoint key sets merge exactly (FlashInfer-style attention states).
//
// The same op serves dense attention (one range covering the cache), squeezed attention (the
// selected cluster ranges of a cluster-contiguous pack) and causal attention over user tokens.
#pragma once

#include <cstdint>
#include <span>

#include "core/dtype.h"

namespace sqz {

// Keys/values of ONE KV head: row r of K is at k + r * row_stride elements (likewise V).
struct KvHeadView {
  const void* k = nullptr;
  const void* v = nullptr;
  DType type = DType::kF32;  // kF32 or kF16
  int64_t row_stride = 0;    // elements between consecutive rows (>= head_dim)
};

// Half-open range of rows [begin, end) of a KvHeadView.
struct RowRange {
  int32_t begin = 0;
  int32_t end = 0;
};

// Optional causal mask: key row r has position key_pos0 + r, query i has position q_pos0 + i;
// key visible iff its position <= the query's.
struct CausalMask {
  int64_t key_pos0 = 0;
  int64_t q_pos0 = 0;
};

// Attention state of one (query token, query head): out is normalised by its own softmax
// denominator; lse = m + log(sum exp(s - m)) in natural log units. An empty key set gives
// out = 0 and lse = -inf (merge treats it as weight 0, never NaN).
//
// q:   [n_q, group, head_dim] f32, row stride q_tok_stride floats between tokens, heads of the
//      group contiguous (head_dim apart) — the query heads sharing this KV head.
// out: [n_q, group, head_dim] f32 with token stride out_tok_stride floats.
// lse: [n_q, group] f32 with token stride lse_tok_stride floats.
struct AttnArgs {
  const float* q = nullptr;
  int64_t n_q = 0;
  int64_t group = 1;
  int64_t head_dim = 0;
  int64_t q_tok_stride = 0;
  float scale = 1.0f;  // usually 1/sqrt(head_dim)
  KvHeadView kv;
  std::span<const RowRange> ranges;
  const CausalMask* mask = nullptr;  // nullptr: every listed key visible to every query
  float* out = nullptr;
  int64_t out_tok_stride = 0;
  float* lse = nullptr;
  int64_t lse_tok_stride = 0;
};

// Optimised CPU kernel (SIMD, single thread; callers parallelise over heads/splits).
void attn_partial_cpu(const AttnArgs& a);

// Merge state b into a in place: (out_a, lse_a) <- merge((out_a, lse_a), (out_b, lse_b)).
// n rows of head_dim; empty states (lse = -inf) are identities.
void attn_merge_states(float* out_a, float* lse_a, const float* out_b, const float* lse_b,
                       int64_t n, int64_t head_dim, int64_t out_stride_a = -1,
                       int64_t out_stride_b = -1);

}  // namespace sqz
