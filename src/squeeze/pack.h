// Context pack: a compiled fixed context (clustered K/V, centroids, calibration) in one
// mmap-able file. Layout and validation rules: docs/pack-format.md.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "attention/attention.h"
#include "core/mmap_file.h"
#include "core/status.h"
#include "squeeze/score.h"
#include "squeeze/squeeze.h"

namespace sqz {

inline constexpr char kPackMagic[8] = {'S', 'Q', 'Z', 'P', 'A', 'C', 'K', '\0'};
// 2: per-cluster key variances and radii, a second calibration table (Estimator::kMeanVar).
// 3: a third calibration table (Estimator::kMeanIso).
inline constexpr uint32_t kPackVersion = 3;

// Section ids (stable: they are written to files).
enum class PackSection : uint32_t {
  kMeta = 1,             // JSON metadata
  kTokens = 2,           // [n_ctx] int32
  kKClustered = 3,       // [n_layer, n_head_kv, n_clustered, head_dim] kv_type
  kVClustered = 4,       // [n_layer, n_head_kv, n_clustered, head_dim] kv_type
  kPerm = 5,             // [n_layer, n_head_kv, n_clustered] int32
  kFineOffsets = 6,      // [n_layer, n_head_kv, n_fine + 1] int32
  kFineCentroids = 7,    // [n_layer, n_head_kv, n_fine, head_dim] f32
  kFineSizes = 8,        // [n_layer, n_head_kv, n_fine] f32
  kCoarseCentroids = 9,  // [n_layer, n_head_kv, n_coarse, head_dim] f32
  kCoarseRanges = 10,    // [n_layer, n_head_kv, n_coarse + 1] int32
  kKObs = 11,            // [n_layer, n_head_kv, n_obs, head_dim] kv_type
  kVObs = 12,            // [n_layer, n_head_kv, n_obs, head_dim] kv_type
  kCalib = 13,           // [5, n_grid] f64: percentiles, fine/coarse thresholds, kept fractions
                         // (Estimator::kMean)
  kFineVar = 14,         // [n_layer, n_head_kv, n_fine, head_dim] f32 per-dimension key variance
  kCoarseVar = 15,       // [n_layer, n_head_kv, n_coarse, head_dim] f32 per-dimension variance
  kFineRadius = 16,      // [n_layer, n_head_kv, n_fine] f32 max |key - centroid|
  kCoarseRadius = 17,    // [n_layer, n_head_kv, n_coarse] f32 max |key - centroid|
  kCalibVar = 18,        // [5, n_grid] f64: as kCalib, for Estimator::kMeanVar
  kCalibIso = 19,        // [5, n_grid] f64: as kCalib, for Estimator::kMeanIso
};
inline constexpr uint32_t kPackSectionCount = 19;
// Name used in error messages and docs ("k_clustered"); "unknown" for other ids.
const char* pack_section_name(uint32_t id);

enum class CentroidLevel { kFine = 0, kCoarse = 1 };

// Calibrated threshold for a percentile: the stored quantile on grid points, log-linear
// interpolation between them, the last grid point's above it, and 0 (keep everything) at
// percentile <= 0 or NaN.
double calib_threshold(const CalibTable& t, double percentile, CentroidLevel level);
// Grid percentile whose measured kept fraction (levels 1: kept_fine, 2: kept_hier) is closest
// to `fraction` (the higher percentile on ties: the smaller budget).
double calib_percentile_for_budget(const CalibTable& t, double fraction, int levels);

class Pack {
 public:
  // Maps the file and validates everything (see docs/pack-format.md); kIo if unreadable,
  // kFormat naming the section for corruption, kMismatch for an unknown format version.
  static Result<std::unique_ptr<Pack>> open(const std::string& path);

  const std::string& path() const { return file_->path(); }
  int n_layer() const { return n_layer_; }
  int n_head() const { return n_head_; }
  int n_head_kv() const { return n_head_kv_; }
  int head_dim() const { return head_dim_; }
  int64_t n_ctx() const { return n_ctx_; }              // fixed tokens
  int64_t n_obs() const { return n_obs_; }              // observation window (last tokens)
  int64_t n_clustered() const { return n_clustered_; }  // n_ctx - n_obs
  int n_fine() const { return n_fine_; }
  int n_coarse() const { return n_coarse_; }
  DType kv_type() const { return kv_type_; }
  std::span<const int32_t> tokens() const { return {tokens_, (size_t)n_ctx_}; }
  const PackFingerprint& fingerprint() const { return fp_; }
  const CompileParams& compile_params() const { return params_; }
  const CompileStats& stats() const { return stats_; }
  // The default estimator (compile_params().estimator) and kAuto resolved to it.
  Estimator estimator() const { return params_.estimator; }
  Estimator resolve_estimator(Estimator e) const {
    return e == Estimator::kAuto ? params_.estimator : e;
  }
  // Calibration table of an estimator (kAuto: the default's).
  const CalibTable& calibration(Estimator e = Estimator::kAuto) const {
    const Estimator r = resolve_estimator(e);
    return r == Estimator::kMeanVar ? calib_var_ : r == Estimator::kMeanIso ? calib_iso_ : calib_;
  }

  // Clustered keys/values of (layer, KV head): n_clustered rows, cluster-contiguous.
  KvHeadView clustered_kv(int layer, int h) const;
  // Observation-window keys/values: n_obs rows in original order (positions n_clustered + r).
  KvHeadView obs_kv(int layer, int h) const;
  const int32_t* perm(int layer, int h) const;               // [n_clustered] row -> position
  const int32_t* fine_offsets(int layer, int h) const;       // [n_fine + 1]
  const float* fine_centroids(int layer, int h) const;       // [n_fine, head_dim]
  const float* fine_sizes(int layer, int h) const;           // [n_fine]
  const float* coarse_centroids(int layer, int h) const;     // [n_coarse, head_dim]
  const int32_t* coarse_ranges(int layer, int h) const;      // [n_coarse + 1] fine boundaries
  const float* fine_var(int layer, int h) const;             // [n_fine, head_dim]
  const float* coarse_var(int layer, int h) const;           // [n_coarse, head_dim]
  const float* fine_radius(int layer, int h) const;          // [n_fine]
  const float* coarse_radius(int layer, int h) const;        // [n_coarse]
  HeadCentroidsView centroids_view(int layer, int h) const;  // with variances and radii

  // Thresholds and budget mapping of one estimator's table (kAuto: the default's). A lookup
  // must use the table of the estimator it scores with.
  double threshold_for(double percentile, CentroidLevel level,
                       Estimator e = Estimator::kAuto) const {
    return calib_threshold(calibration(e), percentile, level);
  }
  double percentile_for_budget(double fraction, int levels = 2,
                               Estimator e = Estimator::kAuto) const {
    return calib_percentile_for_budget(calibration(e), fraction, levels);
  }

 private:
  Pack() = default;
  Status load();
  size_t head_index(int layer, int h) const { return (size_t)layer * n_head_kv_ + h; }

  std::shared_ptr<MappedFile> file_;
  int n_layer_ = 0, n_head_ = 0, n_head_kv_ = 0, head_dim_ = 0;
  int64_t n_ctx_ = 0, n_obs_ = 0, n_clustered_ = 0;
  int n_fine_ = 0, n_coarse_ = 0;
  DType kv_type_ = DType::kF16;
  PackFingerprint fp_;
  CompileParams params_;
  CompileStats stats_;
  CalibTable calib_;                                // Estimator::kMean
  CalibTable calib_var_;                            // Estimator::kMeanVar
  CalibTable calib_iso_;                            // Estimator::kMeanIso
  const uint8_t* sec_[kPackSectionCount + 1] = {};  // section data by id
  const int32_t* tokens_ = nullptr;
};

// The lookup parameters for a budget (fraction of the clustered keys to read): the calibrated
// percentile from the column of the table that matches sp's lookup (budget_table_levels) and
// sp's estimator, and for per-head allocation the same fraction per head.
inline SelectParams select_for_budget(const Pack& pack, SelectParams sp, double budget) {
  sp.percentile = pack.percentile_for_budget(budget, budget_table_levels(sp, pack.n_coarse() > 0),
                                             sp.estimator);
  if (sp.alloc == SelectParams::Alloc::kPerHead) sp.head_fraction = budget;
  return sp;
}

// kMismatch naming the first differing field when the pack was compiled for another model.
Status pack_check_model(const Pack& pack, const PackFingerprint& fp);

}  // namespace sqz
