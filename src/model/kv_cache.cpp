#include "model/kv_cache.h"

#include <cmath>
#include <cstring>

#include "core/fp16.h"

namespace sqz {

void KvCache::init(int n_layer, int n_head_kv, int head_dim, int64_t n_max, DType type) {
  n_layer_ = n_layer;
  n_head_kv_ = n_head_kv;
  head_dim_ = head_dim;
  n_max_ = n_max;
  type_ = type;
  esize_ = type == DType::kF32 ? 4 : 2;
  const size_t n = (size_t)n_layer * n_head_kv * (size_t)n_max * head_dim * esize_;
  k_.assign(n, 0);
  v_.assign(n, 0);
}

void KvCache::store(int layer, const float* k, const float* v, int64_t n, const int32_t* pos,
                    int64_t pos_offset) {
  for (int64_t t = 0; t < n; t++) {
    const int64_t row = pos[t] - pos_offset;
    for (int h = 0; h < n_head_kv_; h++) {
      const size_t off =
          (((size_t)layer * n_head_kv_ + h) * (size_t)n_max_ + (size_t)row) * head_dim_;
      const float* ks = k + (t * n_head_kv_ + h) * head_dim_;
      const float* vs = v + (t * n_head_kv_ + h) * head_dim_;
      if (type_ == DType::kF32) {
        std::memcpy((float*)k_.data() + off, ks, sizeof(float) * head_dim_);
        std::memcpy((float*)v_.data() + off, vs, sizeof(float) * head_dim_);
      } else {
        f16_t* kd = (f16_t*)k_.data() + off;
        f16_t* vd = (f16_t*)v_.data() + off;
        for (int c = 0; c < head_dim_; c++) {
          kd[c] = fp32_to_fp16(ks[c]);
          vd[c] = fp32_to_fp16(vs[c]);
        }
      }
    }
  }
}

KvHeadView KvCache::view(int layer, int h) const {
  const size_t off = ((size_t)layer * n_head_kv_ + h) * (size_t)n_max_ * head_dim_ * esize_;
  KvHeadView kv;
  kv.k = k_.data() + off;
  kv.v = v_.data() + off;
  kv.type = type_;
  kv.row_stride = head_dim_;
  return kv;
}

void KvCache::read_f32(int layer, int h, int64_t rows, float* k_out, float* v_out) const {
  const KvHeadView kv = view(layer, h);
  const int64_t n = rows * head_dim_;
  if (type_ == DType::kF32) {
    std::memcpy(k_out, kv.k, sizeof(float) * (size_t)n);
    std::memcpy(v_out, kv.v, sizeof(float) * (size_t)n);
  } else {
    for (int64_t i = 0; i < n; i++) {
      k_out[i] = fp16_to_fp32(((const f16_t*)kv.k)[i]);
      v_out[i] = fp16_to_fp32(((const f16_t*)kv.v)[i]);
    }
  }
}

Status DenseAttention::attend(int layer, const float* q, const float* k, const float* v,
                              int64_t n_tok, const int32_t* pos, float* out) {
  const int64_t last = pos[n_tok - 1] - pos_offset_;
  if (pos[0] - pos_offset_ < 0 || last >= cache_.capacity())
    return Error(Code::kOutOfRange, "attention: position {} exceeds the KV cache ({} tokens)",
                 pos[n_tok - 1], cache_.capacity() + pos_offset_);
  cache_.store(layer, k, v, n_tok, pos, pos_offset_);
  ranges_.assign(1, RowRange{0, (int32_t)(last + 1)});
  segs_.clear();
  for (int h = 0; h < n_head_kv_; h++) {
    AttnSegment s;
    s.kv_head = h;
    s.kv = cache_.view(layer, h);
    s.ranges = ranges_;
    s.causal = true;
    s.mask.key_pos0 = pos_offset_;
    s.mask.q_pos0 = pos[0];
    segs_.push_back(s);
  }
  AttnShape sh{n_tok, n_head_, n_head_kv_, head_dim_, 1.0f / std::sqrt((float)head_dim_)};
  runner_.plan(sh, segs_, n_threads_);
  runner_.run(q, out, n_threads_);
  return Status::Ok();
}

}  // namespace sqz
