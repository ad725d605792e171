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

}  // namespace sqz
