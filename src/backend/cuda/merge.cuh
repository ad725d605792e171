// Merging attention states: the split-KV partials of one merge group (device helper used by the
// attention kernels' last-arriving CTA) and the (out, lse) + (out, lse) merge kernel.
#pragma once

#include <cuda_runtime.h>

#include "backend/cuda/common.cuh"
#include "backend/cuda/plan.cuh"

namespace sqz::cuda {

__device__ __forceinline__ void write_final(const OutView& o, int D, int h, int m, int d, float acc,
                                            float mx, float l) {
  const int t = m / o.group, hg = m - t * o.group;
  const int head = h * o.group + hg;
  o.out[(int64_t)t * o.out_tok_stride + (int64_t)head * D + d] = l > 0.0f ? acc / l : 0.0f;
  if (d == 0)
    o.lse[(int64_t)t * o.lse_tok_stride + head] = l > 0.0f ? (mx + log2f(l)) * kLn2 : kNegInf;
}

// One warp: the (max, sum) pairs of n split partials at ml (one output row) -> {M, L}, the row's
// max and weighted sum, with each pair's .x replaced by its weight 2^{m_i - M} (0 when every
// partial is empty). Every lane returns {M, L}.
__device__ __forceinline__ float2 split_weights(float2* ml, int n) {
  const int lane = threadIdx.x & 31;
  float M = kNegInf;
  for (int i = lane; i < n; i += 32) M = fmaxf(M, ml[i].x);
  M = warp_max(M);
  float L = 0.0f;
  for (int i = lane; i < n; i += 32) {
    const float2 v = ml[i];
    const float w = M == kNegInf ? 0.0f : exp2_diff(v.x, M);
    L += v.y * w;
    ml[i].x = w;
  }
  return make_float2(M, warp_sum(L));
}

// Combines the partials of items [first, first + ns) (rows_per_item rows each; row rr of an item
// is query row m0 + rr) into the final output. Partials are (unnormalised acc, base-2 max, sum).
// Reads bypass L1: other CTAs wrote them during this launch. This runs in one CTA per group at
// the kernel's tail, so its latency is on the critical path. Rows go in passes of as many as
// fit kStage (max, sum) pairs in shared memory; per pass the pairs are staged, each row's
// weights computed once, and then every output element needs only the acc loads: 4 elements
// per thread and step by 16-byte loads, the splits' loads of one step independent.
// Session 12: the element loop once ran only when all rows fit one pass (rows x splits <=
// 1024); 128 user tokens with 13 splits per group fell through to a loop with three dependent
// L2 round trips per element, ~0.3 ms per group at the tail (prefill of 128 tokens ran slower
// than dense attention).
// Fewer than kFewSplits splits take a path that batches loads across elements.
__device__ inline void merge_split_group(const PlanDev& p, const OutView& o, int D, int h,
                                         int first, int ns, int rows_per_item, int m0, int qtot) {
  constexpr int kStage = 1024;
  constexpr int kFewSplits = 4;    // below this many splits, batch the loads across elements
  __shared__ float2 s_ml[kStage];  // [row][item]: (max, sum) then (weight, -)
  __shared__ float s_M[kPrefillBM], s_L[kPrefillBM];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nw = blockDim.x >> 5;
  const int nrows = min(rows_per_item, qtot - m0);
  if (nrows <= 0) return;
  if (ns <= kStage && nrows <= kPrefillBM && D % 4 == 0) {
    const int rpp = min(nrows, kStage / ns);  // rows per pass
    for (int r0 = 0; r0 < nrows; r0 += rpp) {
      const int nr = min(rpp, nrows - r0);
      for (int idx = tid; idx < nr * ns; idx += blockDim.x) {
        const int r = idx / ns, i = idx - r * ns;
        s_ml[idx] = __ldcg(&p.pml[(int64_t)(first + i) * rows_per_item + r0 + r]);
      }
      __syncthreads();
      for (int r = warp; r < nr; r += nw) {
        const float2 ML = split_weights(s_ml + r * ns, ns);
        if (lane == 0) {
          s_M[r] = ML.x;
          s_L[r] = ML.y;
        }
      }
      __syncthreads();
      const int total = nr * D;
      // acc row of split i for pass row rr: (first + i) * rows_per_item + r0 + rr
      const float* pa = p.pacc + ((int64_t)first * rows_per_item + r0) * D;
      const int64_t split_stride = (int64_t)rows_per_item * D;
      if (ns >= kFewSplits) {  // many splits: one step's loads overlap
        for (int idx = 4 * tid; idx < total; idx += 4 * blockDim.x) {
          const int rr = idx / D, d = idx - rr * D;
          float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 16
          for (int i = 0; i < ns; i++) {
            const float w = s_ml[rr * ns + i].x;
            const float4 v =
                __ldcg(reinterpret_cast<const float4*>(pa + i * split_stride + (int64_t)idx));
            if (w > 0.0f) {
              acc.x = fmaf(v.x, w, acc.x);
              acc.y = fmaf(v.y, w, acc.y);
              acc.z = fmaf(v.z, w, acc.z);
              acc.w = fmaf(v.w, w, acc.w);
            }
          }
          const int m = m0 + r0 + rr;
          write_final(o, D, h, m, d, acc.x, s_M[rr], s_L[rr]);
          write_final(o, D, h, m, d + 1, acc.y, s_M[rr], s_L[rr]);
          write_final(o, D, h, m, d + 2, acc.z, s_M[rr], s_L[rr]);
          write_final(o, D, h, m, d + 3, acc.w, s_M[rr], s_L[rr]);
        }
      } else {
        // Few splits, many elements (prefill: 2 splits x 128 rows x D): one element per
        // thread and step left one dependent L2 round trip per element, ~128 in a row per
        // thread (~90 us per group, v8). Here every load of kUnr elements x all splits is
        // issued before any is used.
        constexpr int kUnr = 8;
        for (int base = tid; base < total; base += blockDim.x * kUnr) {
          float v[kFewSplits][kUnr];
#pragma unroll
          for (int i = 0; i < kFewSplits; i++)
#pragma unroll
            for (int u = 0; u < kUnr; u++) {
              const int idx = base + u * blockDim.x;
              v[i][u] = i < ns && idx < total ? __ldcg(pa + i * split_stride + idx) : 0.0f;
            }
#pragma unroll
          for (int u = 0; u < kUnr; u++) {
            const int idx = base + u * blockDim.x, rr = idx / D, d = idx - rr * D;
            if (idx >= total) continue;
            float acc = 0.0f;
#pragma unroll
            for (int i = 0; i < kFewSplits; i++) {
              const float w = i < ns ? s_ml[rr * ns + i].x : 0.0f;
              acc += w > 0.0f ? v[i][u] * w : 0.0f;
            }
            write_final(o, D, h, m0 + r0 + rr, d, acc, s_M[rr], s_L[rr]);
          }
        }
      }
      __syncthreads();  // the next pass restages s_ml, s_M and s_L
    }
    return;
  }
  for (int idx = threadIdx.x; idx < rows_per_item * D; idx += blockDim.x) {
    const int rr = idx / D, d = idx - rr * D;
    const int m = m0 + rr;
    if (m >= qtot) continue;
    float M = kNegInf;
#pragma unroll 8
    for (int i = 0; i < ns; i++)
      M = fmaxf(M, __ldcg(&p.pml[(int64_t)(first + i) * rows_per_item + rr].x));
    float L = 0.0f, acc = 0.0f;
    if (M != kNegInf) {
#pragma unroll 8
      for (int i = 0; i < ns; i++) {
        const int64_t row = (int64_t)(first + i) * rows_per_item + rr;
        const float2 ml = __ldcg(&p.pml[row]);
        const float w = exp2_diff(ml.x, M);
        L += ml.y * w;
        acc += __ldcg(&p.pacc[row * D + d]) * w;
      }
    }
    write_final(o, D, h, m, d, acc, M, L);
  }
}

// Publishes this CTA's partial and returns true in every thread of the CTA that arrived last in
// merge group g (resetting its counter for the next run). Used by the prefill run (g: its merge
// group) and the MHA decode run (g: the KV head). Until session 8 every thread fenced before the
// barrier instead of cta_ticket's one acq_rel add.
__device__ __forceinline__ bool last_of_group(const PlanDev& p, int g, int ns) {
  return cta_is_last(p.group_cnt + g, (unsigned)ns);
}

int launch_merge_states(int n_q, int n_heads, int head_dim, const sqz_cuda_state& a,
                        const sqz_cuda_state& b, void* out, sqz_cuda_dtype out_dtype, float* lse,
                        cudaStream_t stream);

}  // namespace sqz::cuda
