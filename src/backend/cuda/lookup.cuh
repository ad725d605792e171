// Lookup (plan step) of squeezed attention: centroid scoring, threshold selection (single-level
// or hierarchical), kept row ranges and the split-KV work partition -- all on the device.
//
// Estimated score of cluster c for query q (base-2 logits l = q.c * scale * log2 e):
//   s_c(q) = 2^{l_c} / sum_j n_j 2^{l_j}          (probability of one key of cluster c)
// mean_iso (sqz_cuda_iso given): l_c += log2 e * min(½|q|² vbar_c, |q| r_c) with q the scaled
// query; |q|² is computed once per query row, (vbar_c, r_c) read with the cluster's offsets.
// The correction enters the logits everywhere they are formed (both stages, the subtracted kept
// coarse terms, the pruned-coarse stand-ins), so everything downstream is unchanged.
// averaged over the KV head's query rows (n_q tokens x GQA group); kept if mean >= threshold.
// Hierarchical: coarse clusters first (kept: their own mean score >= the coarse threshold, or
// with sqz_cuda_child the best child's estimated score b_C >= the fine threshold, computed from
// the same logits and denominators); then only the fine children of kept coarse clusters are
// scored, with denominator  sum_{compared j} n_j 2^{l_j} + sum_{pruned C} N_C 2^{L_C},
// computed as compared + (coarse denominator - kept coarse terms), clamped at >= compared.
//
// Kernels (launched by launch_lookup):
//   small query (n_q * group <= 8): plan_small_fused (both stages in one launch, every CTA of a
//     head resident; the head's CTAs select in parallel; see lookup.cu). Fallback when the grid
//     cannot be resident: score_small (CUDA cores, one row per half-warp, logits kept in the
//     workspace) per stage; the last CTA of each head finishes the stage (column sums,
//     selection, compaction) -- 1 launch per stage.
//   large query: score_mma<LSE> (tensor cores; per-query partial denominators) then
//     score_mma<COLSUM> (recomputes logits, accumulates column sums); the last CTA of each head
//     selects -- 2 launches per stage.
// After the fine stage of a prefill plan the last head to finish partitions the kept rows into
// work items (decode runs split each head's rows themselves).
#pragma once

#include <cuda_runtime.h>

#include "backend/cuda/plan.cuh"

namespace sqz::cuda {

// iso: mean_iso per-cluster inputs, or nullptr for the mean estimator. child: the child-bound
// coarse rule's per-cluster inputs, or nullptr for the calibrated coarse threshold.
int launch_lookup(const sqz_cuda_shape& s, const WsLayout& L, const PlanDev& p,
                  const sqz_cuda_context& ctx, const sqz_cuda_query& q, const sqz_cuda_iso* iso,
                  const sqz_cuda_child* child, cudaStream_t stream);

// Plan from caller ranges: copies them, computes prefixes and partitions (one launch).
int launch_plan_ranges(const sqz_cuda_shape& s, const WsLayout& L, const PlanDev& p,
                       const int32_t* ranges, const int32_t* n_ranges, int n_q,
                       cudaStream_t stream);

}  // namespace sqz::cuda
