// Compile with clustering done elsewhere (the GPU K-means of `sqz compile --device cuda`): the
// caller supplies each (layer, KV head)'s fine assignments and the coarse cluster of each fine
// cluster; rows, centroids, variances, radii, calibration and the pack are produced by the same
// code as squeeze_context, so the pack format is identical.
#pragma once

#include <functional>

#include "squeeze/squeeze.h"

namespace sqz {

struct ExternalAssign {
  std::vector<int32_t> fine_assign;  // [n_clustered] fine cluster of each row, in [0, k_f)
  std::vector<int32_t> coarse_of;    // [k_f] coarse cluster of each fine one; empty if k_c == 0
  int fine_iters = 0, coarse_iters = 0;
};

// Called once per job, in (layer, head) order, from the calling thread.
using ExternalClusterFn =
    std::function<Status(int layer, int head, int k_f, int k_c, ExternalAssign& out)>;

// As squeeze_context, with the K-means replaced by `cluster` (its wall time counts as kmeans_s,
// together with the host-side assembly). Objectives are recomputed from the assignments.
Result<SqueezedContext> squeeze_context_external(const ContextCapture& cap, const CompileParams& p,
                                                 const ExternalClusterFn& cluster,
                                                 const CompileProgress& progress = nullptr);

// Pieces of the same code for a caller that clusters and assembles elsewhere (the GPU compile,
// src/engine/gpu_compile.cpp), so both paths share one definition of the row layout.

// The SqueezedContext's shape (counts, params; heads sized, not filled) after validating
// everything squeeze_context validates except the K/V arrays, which may be empty.
Result<SqueezedContext> squeeze_context_shape(const ContextCapture& cap, const CompileParams& p);

// Gives every cluster in [0, k) at least one member by moving single members out of the
// largest clusters (n >= k): an external K-means may end with empty clusters, whose mean,
// variance and radius would be 0/0.
void fill_empty_clusters(std::vector<int32_t>& assign, int k);

// Checks an external clusterer's assignments for n keys against k_f fine / k_c coarse clusters
// (sizes, ranges; kInternal if wrong) and repairs them the way the CPU K-means would: empty
// clusters re-seeded (fill_empty_clusters), every fine cluster in coarse cluster 0 if k_c = 0.
Status normalize_external_assign(ExternalAssign& a, int64_t n, int k_f, int k_c);

// The K-means part of sc.stats: kmeans_s (the clustering's wall time), the cluster counts and
// the summary over sc.heads (iterations, objectives per key, full-row fraction).
void summarize_kmeans(SqueezedContext& sc, double kmeans_s);

// Row layout of one head from its assignments (fine_assign: [n]; coarse_of: [k_f], all zero
// when k_c == 0): out.perm, fine_offsets, fine_sizes and coarse_ranges, exactly as
// squeeze_context orders rows (by coarse cluster, then old fine index, then position).
void head_layout(int64_t n, int k_f, int k_c, const std::vector<int32_t>& fine_assign,
                 const std::vector<int32_t>& coarse_of, HeadClusters& out);

}  // namespace sqz
