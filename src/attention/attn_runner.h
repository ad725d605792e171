// Plan/run split for CPU attention (FlashInfer-style).
//
// plan(): takes the key sources of every KV head (dense cache, selected pack clusters,
// observation window, user tokens), partitions them into work items of bounded key count so
// both cores stay busy even in decode (3 KV heads, 2 threads), and sizes the workspace. It may
// grow buffers. run(): computes every item's partial (out, lse) state in parallel and merges
// them per head through log-sum-exp; it allocates nothing and is reused across layers.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "attention/attention.h"

namespace sqz {

// Keys of one KV head from one source.
struct AttnSegment {
  int kv_head = 0;
  KvHeadView kv;
  std::span<const RowRange> ranges;  // must stay valid until run() returns
  bool causal = false;
  CausalMask mask;  // used when causal
};

struct AttnShape {
  int64_t n_q = 0;
  int64_t n_head = 0;
  int64_t n_kv_head = 0;
  int64_t head_dim = 0;
  float scale = 1.0f;
};

class AttnRunner {
 public:
  void plan(const AttnShape& shape, std::span<const AttnSegment> segs, int n_threads);
  // q: [n_q, n_head, head_dim] f32; out: [n_q, n_head, head_dim] f32.
  void run(const float* q, float* out, int n_threads);
  // Keys read per KV head by the last plan (for kept-fraction statistics).
  int64_t keys_planned(int kv_head) const { return keys_per_head_[(size_t)kv_head]; }

 private:
  struct Item {
    int seg = 0;
    int kv_head = 0;
    size_t range_off = 0;  // into item_ranges_
    size_t range_cnt = 0;
  };
  AttnShape shape_;
  std::vector<AttnSegment> segs_;
  std::vector<Item> items_;
  std::vector<RowRange> item_ranges_;
  std::vector<int64_t> keys_per_head_;
  std::vector<std::vector<int>> items_of_head_;
  std::vector<float> ws_out_;  // [n_items, n_q, group, head_dim]
  std::vector<float> ws_lse_;  // [n_items, n_q, group]
};

}  // namespace sqz
