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

}  // namespace sqz
