// Online lookup (plan step): score centroids against a question's queries and turn the
// clusters above the calibrated threshold into row ranges of the pack's clustered K/V.
#include <omp.h>

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
    std::vector<uint8_t> survive;  // [n_coarse]
  };
  const Pack& pack;
  int n_threads;
  // [estimator - 1][n_layer * n_head_kv] transposed centroids, built on first use of each
  // estimator (a session normally uses one; building both up front would double the memory).
  std::vector<HeadCentroidsT> heads_t[2];
  std::vector<Scratch> scratch;  // [n_threads]

  SelectorImpl(const Pack& p, int nt) : pack(p), n_threads(std::max(1, nt)) {
    scratch.resize((size_t)n_threads);
    for (Scratch& s : scratch) {
      s.sf.resize((size_t)p.n_fine());
      s.sc.resize((size_t)p.n_coarse());
      s.survive.resize((size_t)p.n_coarse());
    }
  }

  const std::vector<HeadCentroidsT>& transposed(Estimator est) {
    std::vector<HeadCentroidsT>& ht = heads_t[est == Estimator::kMeanVar ? 1 : 0];
    if (ht.empty()) {
      ht.resize((size_t)pack.n_layer() * pack.n_head_kv());
      for (int l = 0; l < pack.n_layer(); l++)
        for (int h = 0; h < pack.n_head_kv(); h++)
          ht[(size_t)l * pack.n_head_kv() + h].build(pack.centroids_view(l, h), est);
    }
    return ht;
  }

  void run_job(Scratch& s, int layer, int h, const float* q, int64_t t0, int64_t t1, bool two,
               double tf, double tc, Estimator est, const std::vector<HeadCentroidsT>& ht,
               HeadSelection& out) {
    const int group = pack.n_head() / pack.n_head_kv();
    const int64_t hd = pack.head_dim();
    const int64_t d = estimator_dim(est, hd);
    // Centroid vectors read per cluster scored: the mean, plus the variance for kMeanVar.
    const int64_t vecs = est == Estimator::kMeanVar ? 2 : 1;
    const int64_t nqv = (t1 - t0) * group;
    if ((int64_t)s.Q.size() < nqv * d) s.Q.resize((size_t)(nqv * d));
    gather_group_queries(q, t0, t1, pack.n_head(), pack.n_head_kv(), hd, h, s.Q.data(), est);
    const HeadCentroidsView v = pack.centroids_view(layer, h);
    const HeadCentroidsT& t = ht[(size_t)layer * pack.n_head_kv() + h];
    out.ranges.clear();
    out.kept_keys = 0;
    out.clusters_kept = 0;
    auto keep = [&](int32_t j) {
      const int32_t b = v.fine_offsets[j], e = v.fine_offsets[j + 1];
      if (!out.ranges.empty() && out.ranges.back().end == b)
        out.ranges.back().end = e;
      else
        out.ranges.push_back({b, e});
      out.kept_keys += e - b;
      out.clusters_kept++;
    };
    if (!two) {
      s.scorer.score_fine_all(v, t, s.Q.data(), nqv, s.sf.data());
      out.centroids_compared = vecs * v.n_fine;
      for (int32_t j = 0; j < v.n_fine; j++)
        if (s.sf[(size_t)j] >= tf) keep(j);
      return;
    }
    s.scorer.score_coarse(v, t, s.Q.data(), nqv, s.sc.data());
    for (int c = 0; c < v.n_coarse; c++) s.survive[(size_t)c] = s.sc[(size_t)c] >= tc;
    out.centroids_compared =
        vecs * (v.n_coarse +
                s.scorer.score_fine_hier(v, t, s.Q.data(), nqv, s.survive.data(), s.sf.data()));
    for (int c = 0; c < v.n_coarse; c++) {
      if (!s.survive[(size_t)c]) continue;
      for (int32_t j = v.coarse_ranges[c]; j < v.coarse_ranges[c + 1]; j++)
        if (s.sf[(size_t)j] >= tf) keep(j);
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
    im.run_job(im.scratch[(size_t)tid], layer, h, q, t0, t1, two, tf, tc, est, ht, sel[(size_t)j]);
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
