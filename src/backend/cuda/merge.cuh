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
  if (d == 0) o.lse[(int64_t)t * o.lse_tok_stride + head] = l > 0.0f ? (mx + log2f(l)) * kLn2 : kNegInf;
}

// Combines the partials of items [first, first + ns) (rows_per_item rows each; row rr of an item
// is query row m0 + rr) into the final output. Partials are (unnormalised acc, base-2 max, sum).
// Reads bypass L1: other CTAs wrote them during this launch.
__device__ inline void merge_split_group(const PlanDev& p, const OutView& o, int D, int h,
                                         int first, int ns, int rows_per_item, int m0, int qtot) {
  for (int idx = threadIdx.x; idx < rows_per_item * D; idx += blockDim.x) {
    const int rr = idx / D, d = idx - rr * D;
    const int m = m0 + rr;
    if (m >= qtot) continue;
    // Unrolled so the partials' loads are in flight together (ns is ~10-50).
    float M = kNegInf;
#pragma unroll 8
    for (int i = 0; i < ns; i++) M = fmaxf(M, __ldcg(&p.pml[(int64_t)(first + i) * rows_per_item + rr].x));
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
// merge group g (resetting its counter for the next run).
__device__ __forceinline__ bool last_of_group(const PlanDev& p, int g, int ns) {
  __shared__ int s_last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned old = atomicAdd(p.group_cnt + g, 1u);
    s_last = old == (unsigned)ns - 1u;
    if (s_last) p.group_cnt[g] = 0;
  }
  __syncthreads();
  const bool last = s_last;
  if (last) __threadfence();
  return last;
}

int launch_merge_states(int n_q, int n_heads, int head_dim, const sqz_cuda_state& a,
                        const sqz_cuda_state& b, void* out, sqz_cuda_dtype out_dtype, float* lse,
                        cudaStream_t stream);

}  // namespace sqz::cuda
