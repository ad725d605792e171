// Dense KV cache and the dense causal attention provider.
#pragma once

#include <cstdint>
#include <vector>

#include "attention/attn_runner.h"
#include "model/llama.h"

namespace sqz {

class KvCache {
 public:
  // type: kF16 or kF32.
  void init(int n_layer, int n_head_kv, int head_dim, int64_t n_max, DType type);
  int64_t capacity() const { return n_max_; }
  DType type() const { return type_; }
  // Write rows for positions pos[0..n) (k, v: [n, n_head_kv, head_dim] f32). pos - pos_offset
  // is the row index (pos_offset lets a user cache start after the fixed context).
  void store(int layer, const float* k, const float* v, int64_t n, const int32_t* pos,
             int64_t pos_offset);
  KvHeadView view(int layer, int h) const;
  // Copy one (layer, head) to f32: [rows, head_dim].
  void read_f32(int layer, int h, int64_t rows, float* k_out, float* v_out) const;

 private:
  int n_layer_ = 0, n_head_kv_ = 0, head_dim_ = 0;
  int64_t n_max_ = 0;
  DType type_ = DType::kF16;
  size_t esize_ = 2;
  std::vector<uint8_t> k_, v_;  // [n_layer, n_head_kv, n_max, head_dim] of type_
};

// Causal attention over a KvCache whose row r holds position pos_offset + r.
class DenseAttention : public AttentionProvider {
 public:
  DenseAttention(KvCache& cache, int n_head, int n_head_kv, int head_dim, int n_threads,
                 int64_t pos_offset = 0)
      : cache_(cache),
        n_head_(n_head),
        n_head_kv_(n_head_kv),
        head_dim_(head_dim),
        n_threads_(n_threads),
        pos_offset_(pos_offset) {}
  Status attend(int layer, const float* q, const float* k, const float* v, int64_t n_tok,
                const int32_t* pos, float* out) override;

 private:
  KvCache& cache_;
  int n_head_, n_head_kv_, head_dim_, n_threads_;
  int64_t pos_offset_;
  AttnRunner runner_;
  std::vector<AttnSegment> segs_;
  std::vector<RowRange> ranges_;
};

}  // namespace sqz
