// Attention providers of the GPU forward pass (gpu::Attention):
//   DenseAttentionGpu    causal attention over a device KV cache (generate, compile prefill;
//                        optionally keeps the observation window's queries for calibration)
//   SqueezeAttentionGpu  a compiled pack resident on the device: centroid lookup + sparse
//                        attention over the kept clusters (squeeze_cuda.h plan/run), dense causal
//                        attention over the observation window + the user's tokens, LSE merge.
// Host-only header.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "backend/cuda/fwd/gpu_llama.h"

namespace sqz::gpu {

// Device KV cache, f16, head-major per layer: [n_layer][n_kv][capacity][hd].
class KvCacheGpu {
 public:
  KvCacheGpu();
  ~KvCacheGpu();
  Status init(int n_layer, int n_kv, int head_dim, int64_t capacity);
  int64_t capacity() const { return cap_; }
  void* k(int layer) const;  // [n_kv, capacity, hd] device
  void* v(int layer) const;
  // Copies rows [0, rows) of every KV head of `layer` to host f32: k_out, v_out [n_kv, rows, hd].
  Status read_f32(int layer, int64_t rows, float* k_out, float* v_out, void* stream) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int n_layer_ = 0, n_kv_ = 0, hd_ = 0;
  int64_t cap_ = 0;
};

class DenseAttentionGpu : public Attention {
 public:
  // Row r of `cache` holds position pos_offset + r.
  DenseAttentionGpu(KvCacheGpu& cache, int n_head, int n_kv, int head_dim, int64_t pos_offset = 0);
  ~DenseAttentionGpu() override;
  // Keep the post-RoPE f32 queries of positions >= obs_start: q_obs[layer] is
  // [n_obs, n_head, hd] (pre-sized by the caller).
  void set_capture(int64_t obs_start, std::vector<std::vector<float>>* q_obs);
  Status attend(int layer, const AttnStep& s) override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A pack's arrays on the host (mmap), per layer; sections are [n_layer, n_kv, ...] so layer l's
// pointers address all of its KV heads.
struct PackLayerHost {
  const void* k = nullptr;                  // [n_kv, n_clustered, hd] f16 or f32, cluster order
  const void* v = nullptr;                  // same
  const void* k_obs = nullptr;              // [n_kv, n_obs, hd] f16 or f32
  const void* v_obs = nullptr;              // same
  const float* fine_centroids = nullptr;    // [n_kv, n_fine, hd]
  const int32_t* fine_offsets = nullptr;    // [n_kv, n_fine + 1]
  const float* coarse_centroids = nullptr;  // [n_kv, n_coarse, hd] or null
  const int32_t* coarse_ranges = nullptr;   // [n_kv, n_coarse + 1] or null
  const int32_t* perm = nullptr;            // [n_kv, n_clustered] row -> context position
  // Cluster statistics, read when SqueezeOptions::iso (mean_iso estimator): per-dimension key
  // variances and radii (the pack's sections).
  const float* fine_var = nullptr;       // [n_kv, n_fine, hd]
  const float* coarse_var = nullptr;     // [n_kv, n_coarse, hd] or null
  const float* fine_radius = nullptr;    // [n_kv, n_fine]
  const float* coarse_radius = nullptr;  // [n_kv, n_coarse] or null
  // Child-bound coarse rule (SqueezeOptions::child_rule): {child_scale * child_spread, child_iso,
  // child_r, 0} per coarse cluster (sqz_cuda_child; score.h child_bounds).
  const float* coarse_child = nullptr;  // [n_kv, n_coarse, 4]
};
struct PackHost {
  int n_layer = 0, n_head = 0, n_kv = 0, head_dim = 0;
  int64_t n_clustered = 0, n_obs = 0;
  int n_fine = 0, n_coarse = 0;
  bool kv_f32 = false;  // pack K/V stored as f32 (converted to f16 on upload)
  std::vector<PackLayerHost> layers;
};

struct SqueezeOptions {
  bool dense = false;  // every clustered row (exact reference), no lookup
  int levels = 2;      // 1: fine centroids only; 2: coarse first (needs n_coarse > 0)
  // Estimator of the lookup: false = mean (logit q.c), true = mean_iso (q.c + min(½|q|² v̄, |q| r),
  // uploads v̄ = mean over dimensions of the variances, and the radii; squeeze_cuda.h).
  bool iso = false;
  float threshold_fine = 0, threshold_coarse = 0;  // score thresholds of that estimator
  // Coarse rule of the two-level lookup: true = the child bound against threshold_fine
  // (PackLayerHost::coarse_child), false = the coarse score against threshold_coarse.
  bool child_rule = false;
  int max_q = 256;            // most tokens per forward call
  int64_t user_capacity = 0;  // question + answer tokens
  // Attention sinks (squeezed mode): clustered rows of context positions < sink_tokens are
  // taken out of their clusters at upload and always attended with the observation window, so
  // the keys read are the selection's union with the sinks, as on the CPU.
  int sink_tokens = 0;
};

class SqueezeAttentionGpu : public Attention {
 public:
  // Uploads the pack (K/V, centroids as f16) and allocates the user cache and workspaces.
  static Result<std::unique_ptr<SqueezeAttentionGpu>> create(const PackHost& pack,
                                                             const SqueezeOptions& o, void* stream);
  ~SqueezeAttentionGpu() override;
  Status attend(int layer, const AttnStep& s) override;
  double upload_seconds() const;
  size_t device_bytes() const;
  // Sums over (layer, step token, KV head) of fixed-context rows attended (clustered kept +
  // observation window) and centroids compared, and the number of such lookups. Synchronises.
  Status stats(double* kept_rows, double* compared, double* lookups);

 private:
  SqueezeAttentionGpu();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Spherical K-means of the compile step on the device (sqz_cuda_kmeans_*): fine clusters of a
// head's keys, then coarse clusters of the fine centroids.
class KmeansGpu {
 public:
  KmeansGpu();
  ~KmeansGpu();
  Status init(int64_t n_max, int dim, int k_max, void* stream);
  // points: [n, dim] f16 device rows. fine_assign: [n] cluster of each point; coarse_of: [k_f]
  // coarse cluster of each fine cluster (empty when k_c == 0). `iters` Lloyd steps per level.
  Status run(const void* points, int64_t n, int k_f, int k_c, int iters, uint64_t seed_fine,
             uint64_t seed_coarse, std::vector<int32_t>& fine_assign,
             std::vector<int32_t>& coarse_of);
  // As run, but only enqueued on the stream: the assignments stay on the device
  // (fine_assign_dev: [n]; coarse_assign_dev: [k_f], meaningful when k_c > 0) and are
  // overwritten by the next enqueue or run.
  Status enqueue(const void* points, int64_t n, int k_f, int k_c, int iters, uint64_t seed_fine,
                 uint64_t seed_coarse);
  const int32_t* fine_assign_dev() const;
  const int32_t* coarse_assign_dev() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sqz::gpu
