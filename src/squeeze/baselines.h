// Baseline key selections for the accuracy evaluation, run through the same squeezed-attention
// session as the centroid lookup (AskParams::selector), at a matched total budget:
//
//   StreamingLLM   the first `sinks` positions (attention sinks) + the most recent positions
//   Quest          pages of P consecutive positions, ranked by an upper bound of q·k from the
//                  page's elementwise key min/max (Tang et al. 2024); the 2 metadata vectors
//                  per page count as centroids compared
//   oracle top-k   the k keys with the largest true softmax weight (an upper bound: its cost —
//                  scoring every key — is NOT charged to the budget)
//   random         k keys uniformly at random (seeded)
//
// Budget accounting (the same as squeezed attention's AskResult::budget): per (layer, KV head,
// forward call), (clustered keys read + observation-window keys + metadata vectors compared) /
// fixed-context keys. The observation window is always attended by every method, so a
// baseline at total budget B reads round(B * n_ctx) - n_obs - metadata clustered keys (at
// least 0).
//
// Selections are made on ORIGINAL positions and mapped to the pack's cluster-ordered rows
// through the inverse of perm; the ranges handed to attention are sorted, disjoint and merged.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "engine/squeeze_session.h"
#include "squeeze/pack.h"

namespace sqz {

// Per-pack data shared by the baselines: inverse permutations, and f32 copies of the keys in
// the centroid kernels' transposed layout (built lazily per (layer, head), for the oracle and
// the mass meter; evaluation only — about n_ctx * head_dim * 4 bytes per (layer, head)).
class BaselineIndex {
 public:
  explicit BaselineIndex(const Pack& pack);
  const Pack& pack() const { return pack_; }
  // [n_clustered] original position -> clustered row of (layer, h).
  const int32_t* inv_perm(int layer, int h) const {
    return inv_.data() + ((size_t)layer * pack_.n_head_kv() + h) * (size_t)pack_.n_clustered();
  }
  // Clustered keys a total budget affords after the observation window and `metadata`
  // vectors: round(budget * n_ctx) - n_obs - metadata, clamped to [0, n_clustered].
  int64_t affordable_keys(double budget, int64_t metadata = 0) const;
  // Transposed f32 keys ([head_dim, padded rows], cpu::centroids_transpose layout) of the
  // clustered rows / the observation window of (layer, h). Built on first use; different
  // (layer, h) may be built concurrently, the same one must not.
  const std::vector<float>& clustered_keys_t(int layer, int h) const;
  const std::vector<float>& obs_keys_t(int layer, int h) const;

 private:
  const Pack& pack_;
  std::vector<int32_t> inv_;                         // [n_layer, n_head_kv, n_clustered]
  mutable std::vector<std::vector<float>> kt_, ot_;  // [n_layer * n_head_kv]
};

// Merged row ranges of a 0/1 mask over n rows (ascending, disjoint, no two adjacent); returns
// the number of rows covered.
int64_t mask_to_ranges(const uint8_t* mask, int64_t n, std::vector<RowRange>& out);

// A KeySelector whose size is set by a total budget before each ask.
class BudgetedSelector : public KeySelector {
 public:
  // Total budget (fraction of fixed-context keys, observation window and metadata included).
  void set_budget(double budget) { budget_ = budget; }
  double budget() const { return budget_; }

 protected:
  double budget_ = 1.0;
};

class StreamingLlmSelector : public BudgetedSelector {
 public:
  StreamingLlmSelector(const BaselineIndex& idx, int sinks = 4) : idx_(idx), sinks_(sinks) {}
  void plan(int layer, const float* q, int64_t n_q, std::vector<HeadSelection>& sel) override;

 private:
  const BaselineIndex& idx_;
  int sinks_;
  std::vector<uint8_t> mask_;
};

class QuestSelector : public BudgetedSelector {
 public:
  // page_size 0: auto_page_size(budget) at each plan().
  QuestSelector(const BaselineIndex& idx, int page_size = 0, int n_threads = 1);
  void plan(int layer, const float* q, int64_t n_q, std::vector<HeadSelection>& sel) override;

  // Smallest power of two >= 4 / budget, at least 16: the page metadata (2 vectors per page)
  // then costs at most half the budget, leaving the rest for keys. Fixed before any result.
  static int auto_page_size(double budget);
  int page_size_for(double budget) const {
    return page_size_ > 0 ? page_size_ : auto_page_size(budget);
  }

  // Upper bound of every page of (layer, h): out[p] = sum over query tokens t and the group's
  // query heads g of sum_i max(q_i * min_i, q_i * max_i), min/max over the keys of page p
  // (positions [p * P, (p + 1) * P) of the clustered part). q: [n_q, n_head, head_dim].
  void page_bounds(int layer, int h, const float* q, int64_t n_q, int page_size,
                   std::vector<double>& out);

 private:
  struct Bounds {
    std::vector<float> mn, mx;  // [n_pages, head_dim] elementwise key min / max
  };
  const Bounds& bounds(int layer, int h, int page_size);

  const BaselineIndex& idx_;
  int page_size_;
  int n_threads_;
  // Per page size: [n_layer * n_head_kv] bounds, built on first use (once per pack).
  std::vector<std::pair<int, std::vector<Bounds>>> cache_;
  std::vector<std::vector<double>> score_;  // [n_head_kv] page scores
  std::vector<std::vector<int32_t>> order_;
  std::vector<std::vector<uint8_t>> mask_;
};

class OracleTopKSelector : public BudgetedSelector {
 public:
  OracleTopKSelector(const BaselineIndex& idx, int n_threads = 1);
  ~OracleTopKSelector() override;
  void plan(int layer, const float* q, int64_t n_q, std::vector<HeadSelection>& sel) override;

  // True score of every clustered row of (layer, h): the softmax weight of the key among the
  // clustered keys (logits q·k / sqrt(head_dim)), averaged over the group's query heads and
  // the n_q query tokens. out: [n_clustered] by row.
  void key_scores(int layer, int h, const float* q, int64_t n_q, std::vector<double>& out);

 private:
  struct Scratch;
  const BaselineIndex& idx_;
  int n_threads_;
  std::vector<std::unique_ptr<Scratch>> scratch_;  // [n_head_kv]
};

class RandomSelector : public BudgetedSelector {
 public:
  RandomSelector(const BaselineIndex& idx, uint64_t seed) : idx_(idx), seed_(seed) {}
  // Restart the stream (the harness reseeds per question so results do not depend on order).
  void reseed(uint64_t seed) {
    seed_ = seed;
    calls_ = 0;
  }
  void plan(int layer, const float* q, int64_t n_q, std::vector<HeadSelection>& sel) override;

 private:
  const BaselineIndex& idx_;
  uint64_t seed_;
  uint64_t calls_ = 0;
  std::vector<int32_t> pool_;
  std::vector<uint8_t> mask_;
};

// The squeezed lookup itself (Selector::plan at a calibrated percentile) as a KeySelector, so
// a MassMeter can wrap it. Selects exactly what AskParams{budget, select.levels} selects.
class SqueezeLookupSelector : public KeySelector {
 public:
  SqueezeLookupSelector(const Pack& pack, int n_threads) : selector_(pack, n_threads) {}
  void set_params(const SelectParams& sp) { sp_ = sp; }
  int64_t block() const override { return sp_.block; }
  void plan(int layer, const float* q, int64_t n_q, std::vector<HeadSelection>& sel) override {
    selector_.plan(layer, q, n_q, sp_, sel);
  }

 private:
  Selector selector_;
  SelectParams sp_;
};

// Wraps a selection, adds the attention-sink rows (positions < sinks, as AskParams::sink_tokens
// does) and measures the true softmax mass that the read keys capture: for every query row
// and query head, softmax over all fixed-context keys (clustered + observation window) of
// q·k / sqrt(head_dim), mass of the observation window + selected rows; mean over rows, heads,
// layers and calls — the definition of AskParams::measure_mass, computed with the SIMD dot
// kernels in f32 (f64 softmax sums) instead of a double reference loop, so it is cheap enough
// to run on many questions.
class MassMeter : public KeySelector {
 public:
  MassMeter(const BaselineIndex& idx, KeySelector* inner, int sinks = 0, int n_threads = 1);
  ~MassMeter() override;
  void plan(int layer, const float* q, int64_t n_q, std::vector<HeadSelection>& sel) override;
  double mass() const { return n_ ? sum_ / (double)n_ : -1.0; }
  int64_t block() const override { return inner_->block(); }
  void reset() {
    sum_ = 0;
    n_ = 0;
  }

 private:
  struct Scratch;
  // Adds the mass of one block's selection (hs, sinks merged in) over its n_q query tokens.
  void measure_block(int layer, int h, const float* q, int64_t n_q, HeadSelection& hs, Scratch& s,
                     int64_t group);
  const BaselineIndex& idx_;
  KeySelector* inner_;
  int sinks_;
  int n_threads_;
  double sum_ = 0;
  int64_t n_ = 0;
  std::vector<std::unique_ptr<Scratch>> scratch_;  // [n_head_kv]
};

}  // namespace sqz
