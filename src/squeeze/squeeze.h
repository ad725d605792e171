// Squeezed attention, CPU core (Hooper et al. 2024, arXiv 2411.09688): offline clustering of a
// fixed context's keys per (layer, KV head), a globally calibrated score threshold, and the
// online lookup that turns a question's queries into the row ranges of the clusters to attend.
//
//   compile:  ContextCapture --squeeze_context--> SqueezedContext --pack_write--> .sqzpack
//             (pack_compile does both)
//   ask:      Pack::open -> Selector::plan(layer, q) -> HeadSelection ranges -> attention
//
// Algorithms and estimator choices: docs/squeeze.md. File layout: docs/pack-format.md.
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "attention/attention.h"
#include "core/dtype.h"
#include "core/status.h"

namespace sqz {

// Cluster-score estimator (docs/squeeze.md, "Cluster scores"). For a scaled query q and cluster
// j with mean c_j, per-dimension key variance v_j, radius r_j (max distance of a key to c_j)
// and n_j keys, the logit of the cluster is
//   kMean:    l_j = q·c_j
//   kMeanVar: l_j = q·c_j + min(½ Σ_t q_t² v_jt, |q| r_j)
// (log E[exp(q·k)] for k ~ N(c_j, diag v_j), capped by the bound log max_i exp(q·k_i) <=
// q·c_j + |q| r_j) and s_j = exp(l_j) / Σ_i n_i exp(l_i). kMeanVar corrects the mean
// estimator's Jensen bias exp(q·c) <= mean exp(q·k), which is largest for a cluster holding a
// key that stands out along q (an attention sink, a needle). A pack always stores the
// variances, radii and a calibration table per estimator, so either can be chosen per lookup.
enum class Estimator : int {
  kAuto = 0,     // SelectParams only: the pack's default (its CompileParams::estimator)
  kMean = 1,     // mean of the raw keys only (the paper's estimator)
  kMeanVar = 2,  // mean plus diagonal variance
  kMeanIso = 3,  // mean plus isotropic variance (the mean of the diagonal): one scalar per
                 // cluster instead of a second vector, so a lookup reads what kMean reads
};
// "auto", "mean", "mean_var", "mean_iso"; parse returns false for anything else.
const char* estimator_name(Estimator e);
bool parse_estimator(const std::string& s, Estimator* out);

struct CompileParams {
  double clusters = 0.05;  // < 1: fraction of clustered context keys; >= 1: absolute count
                           // (per layer x KV head)
  double coarse = 0.01;    // same convention for coarse centroids; 0 = no coarse level
  int obs_window = 100;    // last tokens: not clustered, always attended, their queries calibrate
  DType kv_type = DType::kF16;  // kF16 or kF32 storage of K/V in the pack
  uint64_t seed = 0;
  int n_threads = 1;
  int max_iters = 25;  // K-means iteration cap
  double tol = 1e-4;   // stop when relative objective improvement < tol
  // Estimator lookups use by default (SelectParams::estimator = kAuto): kMean, kMeanVar or
  // kMeanIso. All three are calibrated and stored whatever this says. kMeanIso is the default:
  // on the planted-fact and KL probes (docs/squeeze.md) it keeps nearly all of kMeanVar's
  // accuracy gain over kMean while reading what kMean reads.
  Estimator estimator = Estimator::kMeanIso;
  // Cluster the directions of the keys minus their (layer, head) mean instead of the raw
  // directions. q·k = q·mean + q·(k - mean) and the first term is the same for every key of a
  // query, so only the residual decides the softmax; raw keys share a large common component
  // that makes their cosines all similar and hides the residual's direction from K-means.
  // Centroids stay means of the raw keys either way.
  bool center_keys = false;
};

// Filled by the model's prefill of the fixed context.
struct ContextCapture {
  int n_layer = 0, n_head = 0, n_head_kv = 0, head_dim = 0;
  int64_t n_ctx = 0;
  std::vector<int32_t> tokens;           // [n_ctx]
  std::vector<std::vector<float>> k, v;  // [n_layer] of [n_head_kv, n_ctx, head_dim] f32, post-RoPE
  std::vector<std::vector<float>> q_obs;  // [n_layer] of [n_obs, n_head, head_dim] f32, post-RoPE
                                          // (unscaled), n_obs = obs_window
};

// Identity of the model a pack was compiled with; a pack only serves the same model.
struct PackFingerprint {
  std::string arch;
  int n_layer = 0, n_head = 0, n_head_kv = 0, head_dim = 0, n_embd = 0, n_vocab = 0;
  uint64_t weights_hash = 0;
  uint64_t tokenizer_hash = 0;
};

struct CompileStats {
  double kmeans_s = 0;  // fine + coarse clustering and reordering (wall)
  double calib_s = 0;   // calibration (wall)
  double write_s = 0;   // streaming the pack to disk incl. fsync (wall)
  double total_s = 0;
  int n_fine = 0;              // fine clusters per (layer, KV head)
  int n_coarse = 0;            // coarse clusters per (layer, KV head); 0 = none
  double fine_iters_mean = 0;  // mean Lloyd steps per job
  double coarse_iters_mean = 0;
  int fine_iters_max = 0;
  double fine_objective = 0;     // mean over keys of (1 - cos) to their fine centroid
  double coarse_objective = 0;   // size-weighted mean over fine centroids of (1 - cos) to coarse
  double full_row_fraction = 0;  // rows compared with every centroid / (rows * steps): pruning
  uint64_t pack_bytes = 0;
};

// Progress: stage ("kmeans", "calibrate", "write"), jobs done, jobs total. Called from the
// calling thread or under a lock, never concurrently.
using CompileProgress = std::function<void(const char* stage, int64_t done, int64_t total)>;

// Calibration: global (all layers and heads) size-weighted quantiles of the cluster scores
// averaged over the observation window's queries, on a grid of percentiles.
struct CalibTable {
  std::vector<double> percentiles;       // [n_grid] ascending: 0.00, 0.01, ... 0.99, 0.995, 0.999
  std::vector<double> fine_threshold;    // [n_grid] quantile of fine-cluster scores
  std::vector<double> coarse_threshold;  // [n_grid] quantile of coarse-cluster scores (0 if none)
  std::vector<double> kept_fine;         // [n_grid] measured kept key fraction, levels = 1
  std::vector<double> kept_hier;         // [n_grid] measured kept key fraction, levels = 2 with
                                         // the automatic coarse percentile (= kept_fine if none)
};
// The percentile grid every pack uses.
std::vector<double> calib_percentile_grid();

// Coarse percentile used when SelectParams::coarse_percentile < 0: the coarse level keeps about
// twice the fine level's key budget, max(0, 2p - 1), so most clusters the single-level lookup
// would keep sit inside a surviving coarse cluster.
inline double auto_coarse_percentile(double p) {
  return p > 0.5 ? 2.0 * p - 1.0 : 0.0;
}

// One (layer, KV head) after clustering. Rows are the clustered keys sorted by (coarse, fine)
// cluster, original order inside a cluster.
struct HeadClusters {
  std::vector<int32_t> perm;            // [n_clustered] row -> original position
  std::vector<int32_t> fine_offsets;    // [n_fine + 1] row boundaries
  std::vector<float> fine_centroids;    // [n_fine, head_dim] mean of raw keys
  std::vector<float> fine_sizes;        // [n_fine] keys per cluster
  std::vector<float> fine_var;          // [n_fine, head_dim] per-dimension variance of raw keys
  std::vector<float> fine_radius;       // [n_fine] max L2 distance of a raw key to the centroid
  std::vector<float> coarse_centroids;  // [n_coarse, head_dim] mean of raw keys
  std::vector<float> coarse_var;        // [n_coarse, head_dim] per-dimension variance of raw keys
  std::vector<float> coarse_radius;     // [n_coarse] max L2 distance of a raw key to the centroid
  std::vector<int32_t> coarse_ranges;   // [n_coarse + 1] fine-cluster boundaries
  int fine_iters = 0, coarse_iters = 0;
  double fine_objective = 0, coarse_objective = 0;  // final J (sums, not means)
  int64_t full_rows = 0;
};

// In-memory result of clustering + calibration (what a pack stores besides K/V and tokens).
struct SqueezedContext {
  int n_layer = 0, n_head = 0, n_head_kv = 0, head_dim = 0;
  int64_t n_ctx = 0, n_obs = 0, n_clustered = 0;
  int n_fine = 0, n_coarse = 0;
  CompileParams params;
  std::vector<HeadClusters> heads;  // [n_layer * n_head_kv], index layer * n_head_kv + h
  CalibTable calib;                 // Estimator::kMean
  CalibTable calib_var;             // Estimator::kMeanVar
  CalibTable calib_iso;             // Estimator::kMeanIso
  const CalibTable& calib_for(Estimator e) const {
    const Estimator r = e == Estimator::kAuto ? params.estimator : e;
    return r == Estimator::kMeanVar ? calib_var : r == Estimator::kMeanIso ? calib_iso : calib;
  }
  CompileStats stats;
};

// Clusters and calibrates. Validates the capture (shapes, finite values) and the params.
Result<SqueezedContext> squeeze_context(const ContextCapture& cap, const CompileParams& p,
                                        const CompileProgress& progress = nullptr);

// Streams the pack to `out_path` atomically (temp file, fsync, rename). K/V rows come from
// `cap` in the order of each head's perm. Sets sc.stats.write_s / pack_bytes in `stats`.
Status pack_write(const SqueezedContext& sc, const ContextCapture& cap, const PackFingerprint& fp,
                  const std::string& out_path, CompileStats* stats = nullptr,
                  const CompileProgress& progress = nullptr);

// squeeze_context + pack_write.
Status pack_compile(const ContextCapture& cap, const CompileParams& p, const PackFingerprint& fp,
                    const std::string& out_path, CompileStats* stats,
                    const CompileProgress& progress = nullptr);

// ---- online lookup ----

class Pack;

struct SelectParams {
  double percentile = 0.9;  // keep clusters scoring >= the calibrated quantile at this percentile
  int levels = 2;           // 1: all fine centroids; 2: coarse first (1 if the pack has none)
  double coarse_percentile = -1;  // < 0: auto_coarse_percentile(percentile)
  // Which coarse clusters survive with levels = 2 (kGlobal):
  //  kCalibrated: coarse score >= the coarse level's own calibrated threshold (at
  //    coarse_percentile): the paper's rule.
  //  kChildBound: the estimated score of the coarse cluster's best child (HeadCentroidsT::
  //    child_spread) >= the fine threshold, i.e. "could a child pass the fine test?"; no coarse
  //    threshold is used. docs/squeeze.md compares the two.
  enum class CoarseRule : int { kCalibrated = 0, kChildBound = 1 };
  CoarseRule coarse_rule = CoarseRule::kChildBound;
  // kChildBound: multiplier of the child-spread term. The Gaussian maximum (1.0) assumes the
  // children's offsets look isotropic from the query; they do not (the projections are
  // heavier-tailed), and 1.5 was the smallest value at which the two-level lookup matched the
  // single level's KL on the estimator probe (docs/squeeze.md, "Coarse rule").
  double child_bound_scale = 1.5;
  int64_t block = 0;  // > 0: one selection per block of this many query tokens
  // Not NaN: use this score threshold at both levels instead of the calibrated ones
  // (-inf keeps every cluster: squeezed attention then equals dense attention).
  double threshold_override = std::numeric_limits<double>::quiet_NaN();
  // Cluster-score estimator; kAuto: the pack's default. Thresholds (and budget -> percentile)
  // come from that estimator's calibration table.
  Estimator estimator = Estimator::kAuto;
  // How the key budget is spread over (layer, KV head)s.
  //  kGlobal: one calibrated score threshold for every head (the paper's rule: a head with
  //    peaked attention keeps few keys, a diffuse one many).
  //  kPerHead: every head keeps its highest-scoring clusters until head_fraction of its
  //    clustered keys are covered (a top-k per head, as Quest does per page); with two levels
  //    the coarse level first keeps min(1, 2 head_fraction) of the keys the same way.
  enum class Alloc : int { kGlobal = 0, kPerHead = 1 };
  Alloc alloc = Alloc::kGlobal;
  double head_fraction = 0.1;  // kPerHead: fraction of each head's clustered keys to keep
  // kPerHead with two levels: the coarse level keeps min(1, coarse_factor * head_fraction) of
  // the keys, so the fine top-k chooses among that many.
  double coarse_factor = 2.0;
  // kGlobal: a head whose threshold selection covers fewer than head_floor of its clustered
  // keys tops up with its highest-scoring compared clusters (0 = off), so that no head is
  // starved by the global threshold.
  double head_floor = 0;
};

// Which kept-fraction column of the calibration table maps a budget to a percentile for these
// params: the two-level column (kept_hier, measured with the calibrated coarse rule) only when
// that rule is used; the child rule keeps about what the single level keeps, so it maps
// through the single-level column (measured on the estimator probe, docs/squeeze.md).
inline int budget_table_levels(const SelectParams& sp, bool pack_has_coarse) {
  return pack_has_coarse && sp.levels >= 2 &&
                 sp.coarse_rule == SelectParams::CoarseRule::kCalibrated
             ? 2
             : 1;
}

// Flag / config spellings of SelectParams' enums: "global" | "head" and "child" | "calibrated".
// false (out untouched) for anything else.
bool parse_alloc(const std::string& s, SelectParams::Alloc* out);
bool parse_coarse_rule(const std::string& s, SelectParams::CoarseRule* out);
const char* coarse_rule_name(SelectParams::CoarseRule r);  // the spelling parse_coarse_rule reads

struct HeadSelection {
  std::vector<RowRange> ranges;  // rows of clustered_kv(layer, h), ascending, disjoint, merged
  int64_t kept_keys = 0;         // rows covered by ranges
  int64_t clusters_kept = 0;     // fine clusters kept
  // Centroid vectors read (per query vector set): fine + coarse clusters scored, times 2 with
  // Estimator::kMeanVar (each cluster is a mean and a variance vector of head_dim floats).
  int64_t centroids_compared = 0;
};

struct SelectorImpl;

// Plan step of the lookup; holds preallocated scratch reused across layers and steps.
// Keeps a reference to the pack (which must outlive it); not safe to call from two threads at
// once (parallelism is inside plan()).
class Selector {
 public:
  Selector(const Pack& pack, int n_threads);
  ~Selector();
  Selector(const Selector&) = delete;
  Selector& operator=(const Selector&) = delete;

  // q: [n_q, n_head, head_dim] f32 post-RoPE (unscaled) queries of the user tokens for `layer`.
  // Fills sel (resized to n_blocks * n_head_kv): sel[b * n_head_kv + h] is block b's selection
  // for KV head h; block b covers query tokens [b * block, min(n_q, (b + 1) * block)), a
  // single block (b = 0) when sp.block <= 0. Ranges are rows of the pack's clustered,
  // cluster-contiguous K/V of (layer, h), adjacent selected clusters merged into one range.
  // Allocation-free once the scratch (and sel's range vectors) have grown to the largest n_q
  // seen. n_q <= 0 gives n_head_kv empty selections.
  void plan(int layer, const float* q, int64_t n_q, const SelectParams& sp,
            std::vector<HeadSelection>& sel);

  // Selection blocks for n_q query tokens with per-block size `block` (<= 0: one block).
  static int64_t n_blocks(int64_t n_q, int64_t block) {
    return block > 0 ? (n_q + block - 1) / block : 1;
  }
  static int64_t n_blocks(int64_t n_q, const SelectParams& sp) { return n_blocks(n_q, sp.block); }

 private:
  std::unique_ptr<SelectorImpl> impl_;
};

}  // namespace sqz
