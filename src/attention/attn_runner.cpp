#include "attention/attn_runner.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <limits>

namespace sqz {

void AttnRunner::plan(const AttnShape& shape, std::span<const AttnSegment> segs, int n_threads) {
  shape_ = shape;
  segs_.assign(segs.begin(), segs.end());
  items_.clear();
  item_ranges_.clear();
  keys_per_head_.assign((size_t)shape.n_kv_head, 0);
  items_of_head_.assign((size_t)shape.n_kv_head, {});

  int64_t total = 0;
  for (const auto& s : segs_)
    for (const auto& r : s.ranges) {
      total += std::max(0, r.end - r.begin);
      keys_per_head_[(size_t)s.kv_head] += std::max(0, r.end - r.begin);
    }
  // Aim for ~4 items per thread so uneven heads still balance; but never tiny items, whose
  // fixed cost (state init + merge) would dominate.
  const int64_t min_chunk = 256;
  const int64_t chunk =
      std::max<int64_t>(min_chunk, (total + 4 * n_threads - 1) / std::max(1, 4 * n_threads));

  for (int si = 0; si < (int)segs_.size(); si++) {
    const auto& s = segs_[(size_t)si];
    Item cur{si, s.kv_head, item_ranges_.size(), 0};
    int64_t cur_keys = 0;
    for (const auto& r0 : s.ranges) {
      RowRange r = r0;
      while (r.end > r.begin) {
        const int64_t take = std::min<int64_t>(r.end - r.begin, chunk - cur_keys);
        item_ranges_.push_back({r.begin, (int32_t)(r.begin + take)});
        cur.range_cnt++;
        cur_keys += take;
        r.begin += (int32_t)take;
        if (cur_keys >= chunk) {
          items_.push_back(cur);
          cur = Item{si, s.kv_head, item_ranges_.size(), 0};
          cur_keys = 0;
        }
      }
    }
    if (cur.range_cnt > 0) items_.push_back(cur);
  }
  for (int i = 0; i < (int)items_.size(); i++)
    items_of_head_[(size_t)items_[(size_t)i].kv_head].push_back(i);

  const int64_t group = shape.n_head / shape.n_kv_head;
  const size_t per_item = (size_t)(shape.n_q * group);
  if (ws_out_.size() < items_.size() * per_item * (size_t)shape.head_dim)
    ws_out_.resize(items_.size() * per_item * (size_t)shape.head_dim);
  if (ws_lse_.size() < items_.size() * per_item) ws_lse_.resize(items_.size() * per_item);
}

void AttnRunner::run(const float* q, float* out, int n_threads) {
  const AttnShape& sh = shape_;
  const int64_t group = sh.n_head / sh.n_kv_head;
  const int64_t d = sh.head_dim;
  const int64_t per_item = sh.n_q * group;
  const int n_items = (int)items_.size();

#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 1)
  for (int i = 0; i < n_items; i++) {
    const Item& it = items_[(size_t)i];
    const AttnSegment& s = segs_[(size_t)it.seg];
    AttnArgs a;
    a.q = q + it.kv_head * group * d;
    a.n_q = sh.n_q;
    a.group = group;
    a.head_dim = d;
    a.q_tok_stride = sh.n_head * d;
    a.scale = sh.scale;
    a.kv = s.kv;
    a.ranges = std::span<const RowRange>(item_ranges_.data() + it.range_off, it.range_cnt);
    a.mask = s.causal ? &s.mask : nullptr;
    a.out = ws_out_.data() + (size_t)i * (size_t)(per_item * d);
    a.out_tok_stride = group * d;
    a.lse = ws_lse_.data() + (size_t)i * (size_t)per_item;
    a.lse_tok_stride = group;
    attn_partial_cpu(a);
  }

  // Merge per KV head (and token): fold item states in order.
#pragma omp parallel for num_threads(n_threads) schedule(static) collapse(2)
  for (int64_t h = 0; h < sh.n_kv_head; h++) {
    for (int64_t t = 0; t < sh.n_q; t++) {
      float* o = out + t * sh.n_head * d + h * group * d;
      float lse[64];  // group <= 64 query heads per KV head
      for (int64_t g = 0; g < group; g++) lse[g] = -std::numeric_limits<float>::infinity();
      std::memset(o, 0, sizeof(float) * (size_t)(group * d));
      for (int i : items_of_head_[(size_t)h]) {
        const float* ob = ws_out_.data() + (size_t)i * (size_t)(per_item * d) + t * group * d;
        const float* lb = ws_lse_.data() + (size_t)i * (size_t)per_item + t * group;
        attn_merge_states(o, lse, ob, lb, group, d);
      }
    }
  }
}

}  // namespace sqz
