// Spherical (cosine) K-means used to cluster the fixed context's keys and, weighted by cluster
// size, the fine centroids into coarse groups.
//
// Points are unit vectors (rows normalised by normalize_rows; an all-zero row stays zero and
// is at cosine distance 1 from everything). Centroids are unit directions: the normalised
// (weighted) sum of their members. Objective J = sum_i w_i (1 - x_i·c_{a(i)}); for unit
// vectors 1 - cos = |x - c|^2 / 2, so this is ordinary K-means on the sphere and Lloyd's two
// steps can only lower it (each step minimises J over one of its two arguments).
#pragma once

#include <cstdint>
#include <vector>

namespace sqz {

struct KmeansOptions {
  int max_iters = 25;  // cap on assignment steps
  double tol = 1e-4;   // stop when (J_prev - J) <= tol * J_prev
  bool prune = true;   // skip rows whose assignment provably cannot change (exactness kept)
};

struct KmeansResult {
  std::vector<int32_t> assign;    // [n] cluster of each point; every cluster non-empty
  std::vector<float> centroids;   // [k, d] unit (or zero) directions of the final assignment
  std::vector<double> objective;  // [iters] J after each assignment step (+ empty repair)
  int iters = 0;
  int64_t full_rows = 0;  // rows compared against every centroid, summed over steps
};

// out[i] = x_i / |x_i| (zero rows stay zero). x: [n, d] with row stride ldx; out: [n, d].
void normalize_rows(const float* x, int64_t n, int64_t d, int64_t ldx, float* out);

// k-means++ seeding with D^2 = cosine distance (weighted by w when given): C: [k, d].
// Deterministic for (X, w, seed); k <= n.
void kmeanspp_init(const float* X, const float* w, int64_t n, int64_t d, int k, uint64_t seed,
                   float* C);

// Lloyd iterations from the initial centroids C0 ([k, d], need not be normalised).
// X: [n, d] unit rows; w: [n] weights or nullptr (all 1). Requires 1 <= k <= n.
//
// Each step: assign every point to its most similar centroid (lowest index on exact ties),
// then repair empty clusters: for each empty cluster e in increasing order, move into it the
// point farthest from its centroid among clusters with more than one member (lowest index on
// ties); record J; stop after max_iters steps or when J improved by <= tol relative; update
// centroids to the normalised weighted sums (a zero sum gives a zero centroid, never NaN).
// The returned centroids always belong to the returned assignment.
KmeansResult kmeans_lloyd(const float* X, const float* w, int64_t n, int64_t d, int k,
                          const float* C0, const KmeansOptions& opt);

// kmeanspp_init + kmeans_lloyd.
KmeansResult spherical_kmeans(const float* X, const float* w, int64_t n, int64_t d, int k,
                              uint64_t seed, const KmeansOptions& opt);

// Seed for one clustering job: a function of the user seed and the job's coordinates only, so
// results do not depend on thread count or scheduling.
uint64_t kmeans_job_seed(uint64_t seed, int layer, int head, int level);

}  // namespace sqz
