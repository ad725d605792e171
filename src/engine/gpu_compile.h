// The GPU compile after the prefill (`sqz compile --device cuda`): K/V stay on the device; the
// K-means assignments come to the host only for the row layout (head_layout, shared with the
// CPU path), and everything that reads keys runs on the device with the CPU's arithmetic
// (src/backend/cuda/fwd/compile_gpu.h): cluster statistics, K/V rows gathered into the pack's
// cluster order (f16, or f32 for --kv-type f32), and the calibration of all three estimators.
// The pack is streamed with PackStreamWriter: each head's K rows while the next head's K-means
// runs, then the V rows, then the rest.
//
// Only compiled with CUDA (SQZ_HAVE_CUDA); used by gpu_session.cpp and the tests.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/squeeze_session.h"
#include "squeeze/squeeze.h"
#include "squeeze/squeeze_external.h"

namespace sqz::gpu {

class KvCacheGpu;

// Cluster statistics of every head on the device, f32, head after head: fine centroids and
// variances [n_fine, head_dim], radii [n_fine]; coarse ones [n_coarse, head_dim] and [n_coarse]
// (null when n_coarse == 0).
struct HeadStatsDev {
  float* fine_centroids = nullptr;
  float* fine_var = nullptr;
  float* fine_radius = nullptr;
  float* coarse_centroids = nullptr;
  float* coarse_var = nullptr;
  float* coarse_radius = nullptr;
  // Head `job`'s statistics.
  HeadStatsDev head(int64_t job, int n_fine, int n_coarse, int head_dim) const {
    const int64_t fd = (int64_t)n_fine * head_dim, cd = (int64_t)n_coarse * head_dim;
    return {fine_centroids + job * fd,   fine_var + job * fd,   fine_radius + job * n_fine,
            coarse_centroids + job * cd, coarse_var + job * cd, coarse_radius + job * n_coarse};
  }
};

// Device half of squeeze_context_external's per-head work: from one head's K-means
// assignments, the same HeadClusters (perm, offsets, sizes, centroids, variances, radii,
// objectives) and the head's K rows in cluster order, in the pack's K/V type. Two slots, so a
// caller can enqueue one head while it collects the previous one.
class HeadAssemblerGpu {
 public:
  HeadAssemblerGpu();
  ~HeadAssemblerGpu();
  // n: clustered rows per head; d: head_dim (a multiple of 32, <= 256).
  Status init(int64_t n, int d, int k_f, int k_c, DType kv_type, void* stream);
  // Host: fill_empty_clusters on `a`, then head_layout into hc. Device (enqueued): the head's K
  // rows k_dev ([n, d] f16, original order) gathered into cluster order and its statistics.
  // The perm is also copied to perm_out_dev ([n] int32, device) when it is not null, and the
  // statistics are written to stats_out (this head's, HeadStatsDev::head) instead of scratch
  // when it is not null, so that they stay on the device for gpu_calibrate.
  Status enqueue(int slot, const void* k_dev, ExternalAssign& a, HeadClusters& hc,
                 int32_t* perm_out_dev = nullptr, const HeadStatsDev* stats_out = nullptr);
  // Waits for the slot, fills hc's statistics and objectives (hc as given to enqueue) and
  // returns its K rows (host, n * d values of the K/V type), valid until the slot is reused.
  Result<const void*> collect(int slot, HeadClusters& hc);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The three calibration tables of sc (calib, calib_var, calib_iso) from its heads and the
// observation window's queries (q_obs as ContextCapture::q_obs), computed on the device; the
// host steps (quantiles, kept fractions) are calib.cpp's own. stats_dev: every head's statistics
// already on the device (equal to sc.heads'), read there instead of uploading sc.heads' copies;
// the work that wrote them must be complete.
Status gpu_calibrate(const std::vector<std::vector<float>>& q_obs, SqueezedContext& sc,
                     void* stream, const HeadStatsDev* stats_dev = nullptr);

// Everything after the prefill: K/V check, K-means, assembly, streaming the pack, calibration.
// cache: the prefilled context ([layer][kv head][n_ctx][hd] f16); cap: tokens and q_obs (its
// k / v stay empty). Fills rep.stats and rep.capture_s (the K/V check and the observation
// window's copy to the host).
Status gpu_squeeze_and_write(const KvCacheGpu& cache, const ContextCapture& cap,
                             const CompileParams& cp, const PackFingerprint& fp,
                             const std::string& out_path, void* stream, int kmeans_iters,
                             CompileReport& rep);

}  // namespace sqz::gpu
