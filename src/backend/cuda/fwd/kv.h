// KV-cache writes and small conversions of the GPU forward pass.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace sqz::fwd {

// Head-major cache of one layer: row r of KV head h at (h * capacity + r) * head_dim.
// k16, v16: [n_tok, n_kv, hd] f16; pos: [n_tok] device; row = pos[t] - pos_offset, which the
// caller checked lies in [0, capacity). cache_k, cache_v: [n_kv, capacity, hd] f16.
int store_kv(const void* k16, const void* v16, const int32_t* pos, int64_t pos_offset,
             void* cache_k, void* cache_v, int n_tok, int n_kv, int head_dim, int64_t capacity,
             cudaStream_t stream);

// dst[i] = f16(src[i]), i < n.
int f32_to_f16(const float* src, void* dst, int64_t n, cudaStream_t stream);
// dst[i] = f32(src[i]), i < n.
int f16_to_f32(const void* src, float* dst, int64_t n, cudaStream_t stream);

// acc[0] += weight * sum_h (n_rows[h] + extra_rows); acc[1] += weight * sum_h (n_cmp[h] or
// fixed_cmp when n_cmp is null): the kept-key and compared-centroid counters of a squeezed
// step, accumulated on the device so the decode loop never waits for them.
int accumulate_plan_stats(const int32_t* n_rows, const int32_t* n_cmp, int n_kv, int64_t extra_rows,
                          int64_t fixed_cmp, int64_t weight, unsigned long long* acc,
                          cudaStream_t stream);

}  // namespace sqz::fwd
