// Calibration step of squeeze_context (internal to src/squeeze).
#pragma once

#include "squeeze/score.h"
#include "squeeze/squeeze.h"

namespace sqz {

// Fills sc.calib from the observation window's queries (cap.q_obs) and sc.heads.
Status calibrate(const ContextCapture& cap, SqueezedContext& sc, const CompileProgress& progress);

// View of an in-memory head for the scorer.
HeadCentroidsView head_view(const SqueezedContext& sc, const HeadClusters& hc);

// Query vectors of KV head h for tokens [t0, t1) of q ([n_tok, n_head, head_dim]), scaled by
// 1/sqrt(head_dim), token-major then group head, augmented for the estimator (augment_queries):
// out [(t1 - t0) * group, estimator_dim(est, head_dim)].
void gather_group_queries(const float* q, int64_t t0, int64_t t1, int n_head, int n_head_kv,
                          int64_t head_dim, int h, float* out, Estimator est = Estimator::kMean);

// The calibration's host-side steps, shared with the GPU calibration (src/engine/gpu_compile.cpp),
// which computes the per-head scores and kept counts on the device.
// Pass 1 -> table: T.fine_threshold, coarse_threshold, kept_fine (and kept_hier = kept_fine) from
// every head's scores of one estimator, T.percentiles already set. sf[job]: [n_fine] fine-cluster
// scores; scs[job]: [n_coarse] coarse scores (unused if n_coarse == 0). Coarse clusters weigh
// their keys (coarse_cluster_size of sc.heads, as HeadCentroidsT::coarse_sizes).
void calib_thresholds(const SqueezedContext& sc, const std::vector<std::vector<double>>& sf,
                      const std::vector<std::vector<double>>& scs, CalibTable& T);
// Pass 2 -> T.kept_hier from kept_job[job][g], the keys head `job` keeps with the two-level
// lookup at grid point g (< 0 at the grid points where every coarse cluster survives).
void calib_kept_hier(const SqueezedContext& sc, const std::vector<std::vector<double>>& kept_job,
                     CalibTable& T);

}  // namespace sqz
