// Online lookup (plan step): score centroids against a question's queries and turn the
// clusters above the calibrated threshold into row ranges of the pack's clustered K/V.
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "squeeze/calib_internal.h"
#include "squeeze/pack.h"
#include "squeeze/squeeze.h"

namespace sqz {

struct SelectorImpl {
  struct Scratch {
    ClusterScorer scorer;
    std::vector<float> Q;          // [block tokens * group, head_dim] scaled queries
    std::vector<double> sf, sc;    // [n_fine], [n_coarse] scores
    std::vector<double> sb;        // [n_coarse] best-child scores (CoarseRule::kChildBound)
    std::vector<uint8_t> survive;  // [n_coarse]
    std::vector<uint8_t> keepf;    // [n_fine] 1 = fine cluster kept
    std::vector<int32_t> order;    // cluster indices sorted by score (top-k / floor)
    std::vector<uint8_t> added;    // [n_coarse] floor: survivors plus whole coarse top-ups
  };
  const Pack& pack;
  int n_threads;
  // [estimator - 1][n_layer * n_head_kv] transposed centroids, built on first use of each
  // estimator (a session normally uses one; building both up front would double the memory).
  std::vector<HeadCentroidsT> heads_t[3];
  std::vector<Scratch> scratch;  // [n_threads]

  SelectorImpl(const Pack& p, int nt) : pack(p), n_threads(std::max(1, nt)) {
    scratch.resize((size_t)n_threads);
    for (Scratch& s : scratch) {
      s.sf.resize((size_t)p.n_fine());
      s.sc.resize((size_t)p.n_coarse());
      s.sb.resize((size_t)p.n_coarse());
      s.survive.resize((size_t)p.n_coarse());
      s.keepf.resize((size_t)p.n_fine());
      s.added.resize((size_t)p.n_coarse());
      s.order.reserve((size_t)std::max(p.n_fine(), p.n_coarse()));
    }
  }

  const std::vector<HeadCentroidsT>& transposed(Estimator est) {
    // kAuto is resolved by the caller: kMean, kMeanVar, kMeanIso are 1, 2, 3.
    std::vector<HeadCentroidsT>& ht = heads_t[(int)est - 1];
    if (ht.empty()) {
      ht.resize((size_t)pack.n_layer() * pack.n_head_kv());
      for (int l = 0; l < pack.n_layer(); l++)
        for (int h = 0; h < pack.n_head_kv(); h++)
          ht[(size_t)l * pack.n_head_kv() + h].build(pack.centroids_view(l, h), est);
    }
    return ht;
  }

  // Marks the highest-scoring candidates (scores[j] for j in cand) until about `target` keys
  // are covered; size(j) gives a candidate's key count. Candidates already marked count toward
  // it. A candidate that would overshoot the target by more than it is short is skipped, so the
  // coverage lands within half a cluster of the target instead of always above it.
  // Returns the new coverage.
  template <class SizeFn>
  static int64_t top_up(std::vector<int32_t>& cand, const double* scores, uint8_t* mark,
                        int64_t covered, int64_t target, SizeFn size) {
    if (covered >= target) return covered;
    std::sort(cand.begin(), cand.end(), [&](int32_t a, int32_t b) {
      return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
    });
    for (int32_t j : cand) {
      if (covered >= target) break;
      if (mark[j]) continue;
      const int64_t n = size(j);
      if (covered + n - target > target - covered) continue;
      mark[j] = 1;
      covered += n;
    }
    return covered;
  }

  void run_job(Scratch& s, int layer, int h, const float* q, int64_t t0, int64_t t1, bool two,
               double tf, double tc, Estimator est, const std::vector<HeadCentroidsT>& ht,
               const SelectParams& sp, HeadSelection& out) {
    const int group = pack.n_head() / pack.n_head_kv();
    const int64_t hd = pack.head_dim();
    const int64_t d = estimator_dim(est, hd);
    // Centroid vectors read per cluster scored: the mean, plus the variance for kMeanVar
    // (kMeanIso reads two scalars besides the mean: 2 / head_dim of a vector, not counted).
    const int64_t vecs = est == Estimator::kMeanVar ? 2 : 1;
    const int64_t nqv = (t1 - t0) * group;
    if ((int64_t)s.Q.size() < nqv * d) s.Q.resize((size_t)(nqv * d));
    gather_group_queries(q, t0, t1, pack.n_head(), pack.n_head_kv(), hd, h, s.Q.data(), est);
    const HeadCentroidsView v = pack.centroids_view(layer, h);
    const HeadCentroidsT& t = ht[(size_t)layer * pack.n_head_kv() + h];
    const bool per_head = sp.alloc == SelectParams::Alloc::kPerHead;
    const int64_t n_rows = v.fine_offsets[v.n_fine];
    auto fine_size = [&](int32_t j) {
      return (int64_t)(v.fine_offsets[j + 1] - v.fine_offsets[j]);
    };
    auto coarse_size = [&](int32_t c) {
      return (int64_t)(v.fine_offsets[v.coarse_ranges[c + 1]] - v.fine_offsets[v.coarse_ranges[c]]);
    };
    const int64_t target =
        per_head ? (int64_t)std::ceil(std::clamp(sp.head_fraction, 0.0, 1.0) * (double)n_rows)
                 : (int64_t)std::ceil(std::clamp(sp.head_floor, 0.0, 1.0) * (double)n_rows);
    std::fill(s.keepf.begin(), s.keepf.begin() + v.n_fine, (uint8_t)0);
    int64_t covered = 0;
    if (!two) {
      s.scorer.score_fine_all(v, t, s.Q.data(), nqv, s.sf.data());
      out.centroids_compared = vecs * v.n_fine;
      if (!per_head)
        for (int32_t j = 0; j < v.n_fine; j++)
          if (s.sf[(size_t)j] >= tf) {
            s.keepf[(size_t)j] = 1;
            covered += fine_size(j);
          }
      if (target > covered) {
        s.order.resize((size_t)v.n_fine);
        for (int32_t j = 0; j < v.n_fine; j++) s.order[(size_t)j] = j;
        covered = top_up(s.order, s.sf.data(), s.keepf.data(), covered, target, fine_size);
      }
    } else {
      const bool child = !per_head && sp.coarse_rule == SelectParams::CoarseRule::kChildBound;
      s.scorer.score_coarse(v, t, s.Q.data(), nqv, s.sc.data(), child ? s.sb.data() : nullptr,
                            sp.child_bound_scale);
      // Coarse ranking: the best-child bound against the fine threshold, or the coarse score
      // against the coarse threshold.
      const double* rank = child ? s.sb.data() : s.sc.data();
      const double tr = child ? tf : tc;
      for (int c = 0; c < v.n_coarse; c++) s.survive[(size_t)c] = !per_head && rank[c] >= tr;
      if (per_head) {
        // The coarse level keeps coarse_factor times the fine target, so the fine top-k has
        // room to choose.
        s.order.resize((size_t)v.n_coarse);
        for (int32_t c = 0; c < v.n_coarse; c++) s.order[(size_t)c] = c;
        const int64_t target_c = std::min<int64_t>(
            n_rows, (int64_t)std::ceil(std::max(1.0, sp.coarse_factor) * (double)target));
        top_up(s.order, s.sc.data(), s.survive.data(), 0, target_c, coarse_size);
      }
      out.centroids_compared =
          vecs * (v.n_coarse +
                  s.scorer.score_fine_hier(v, t, s.Q.data(), nqv, s.survive.data(), s.sf.data()));
      s.order.clear();
      for (int c = 0; c < v.n_coarse; c++) {
        if (!s.survive[(size_t)c]) continue;
        for (int32_t j = v.coarse_ranges[c]; j < v.coarse_ranges[c + 1]; j++) {
          s.order.push_back(j);
          if (!per_head && s.sf[(size_t)j] >= tf) {
            s.keepf[(size_t)j] = 1;
            covered += fine_size(j);
          }
        }
      }
      covered = top_up(s.order, s.sf.data(), s.keepf.data(), covered, target, fine_size);
      if (!per_head && target > covered) {
        // Floor, still short after every compared cluster: whole pruned coarse clusters, best
        // coarse score first, without scoring their children (they are read in full).
        std::copy(s.survive.begin(), s.survive.begin() + v.n_coarse, s.added.begin());
        s.order.resize((size_t)v.n_coarse);
        for (int32_t c = 0; c < v.n_coarse; c++) s.order[(size_t)c] = c;
        top_up(s.order, rank, s.added.data(), covered, target, coarse_size);
        for (int c = 0; c < v.n_coarse; c++)
          if (s.added[(size_t)c] && !s.survive[(size_t)c])
            for (int32_t j = v.coarse_ranges[c]; j < v.coarse_ranges[c + 1]; j++)
              s.keepf[(size_t)j] = 1;
      }
    }
    out.ranges.clear();
    out.kept_keys = 0;
    out.clusters_kept = 0;
    for (int32_t j = 0; j < v.n_fine; j++) {
      if (!s.keepf[(size_t)j]) continue;
      const int32_t b = v.fine_offsets[j], e = v.fine_offsets[j + 1];
      if (!out.ranges.empty() && out.ranges.back().end == b)
        out.ranges.back().end = e;
      else
        out.ranges.push_back({b, e});
      out.kept_keys += e - b;
      out.clusters_kept++;
    }
  }
};

Selector::Selector(const Pack& pack, int n_threads)
    : impl_(std::make_unique<SelectorImpl>(pack, n_threads)) {}
Selector::~Selector() = default;

void Selector::plan(int layer, const float* q, int64_t n_q, const SelectParams& sp,
                    std::vector<HeadSelection>& sel) {
  SelectorImpl& im = *impl_;
  const Pack& pack = im.pack;
  const int H = pack.n_head_kv();
  if (n_q <= 0) {  // nothing to select for
    sel.resize((size_t)H);
    for (HeadSelection& s : sel) s = HeadSelection{};
    return;
  }
  const int64_t nb = n_blocks(n_q, sp);
  sel.resize((size_t)(nb * H));
  const bool two = sp.levels >= 2 && pack.n_coarse() > 0;
  const Estimator est = pack.resolve_estimator(sp.estimator);
  const std::vector<HeadCentroidsT>& ht = im.transposed(est);
  double tf, tc;
  if (!std::isnan(sp.threshold_override)) {
    tf = tc = sp.threshold_override;
  } else {
    const double pc =
        sp.coarse_percentile >= 0 ? sp.coarse_percentile : auto_coarse_percentile(sp.percentile);
    tf = pack.threshold_for(sp.percentile, CentroidLevel::kFine, est);
    tc = pack.threshold_for(pc, CentroidLevel::kCoarse, est);
  }
  const int64_t bs = sp.block > 0 ? sp.block : std::max<int64_t>(n_q, 1);
  const int64_t jobs = nb * H;
  auto job = [&](int64_t j, int tid) {
    const int64_t b = j / H;
    const int h = (int)(j % H);
    const int64_t t0 = b * bs, t1 = std::min(n_q, t0 + bs);
    im.run_job(im.scratch[(size_t)tid], layer, h, q, t0, t1, two, tf, tc, est, ht, sp,
               sel[(size_t)j]);
  };
  const int nt = (int)std::min<int64_t>(im.n_threads, jobs);
  if (nt <= 1) {
    for (int64_t j = 0; j < jobs; j++) job(j, 0);
    return;
  }
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t j = 0; j < jobs; j++) job(j, omp_get_thread_num());
}

}  // namespace sqz
