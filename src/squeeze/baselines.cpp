#include "squeeze/baselines.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/fp16.h"
#include "eval/rng.h"
#include "squeeze/calib_internal.h"
#include "squeeze/centroid_kernels.h"

namespace sqz {

namespace {

// Row r of a KV view as f32.
void load_row(const KvHeadView& kv, int64_t r, int64_t d, float* out) {
  if (kv.type == DType::kF32) {
    const float* p = (const float*)kv.k + r * kv.row_stride;
    std::copy(p, p + d, out);
  } else {
    const f16_t* p = (const f16_t*)kv.k + r * kv.row_stride;
    for (int64_t i = 0; i < d; i++) out[i] = fp16_to_fp32(p[i]);
  }
}

// Marks original positions [b, e) in mask (indexed by clustered row).
void mark_positions(const int32_t* inv, int64_t b, int64_t e, uint8_t* mask) {
  for (int64_t p = b; p < e; p++) mask[inv[p]] = 1;
}

void emit(const uint8_t* mask, int64_t n, int64_t metadata, HeadSelection& out) {
  out.kept_keys = mask_to_ranges(mask, n, out.ranges);
  out.clusters_kept = 0;
  out.centroids_compared = metadata;
}

}  // namespace

BaselineIndex::BaselineIndex(const Pack& pack) : pack_(pack) {
  const int64_t n = pack.n_clustered();
  inv_.assign((size_t)pack.n_layer() * pack.n_head_kv() * (size_t)n, -1);
  for (int l = 0; l < pack.n_layer(); l++)
    for (int h = 0; h < pack.n_head_kv(); h++) {
      const int32_t* perm = pack.perm(l, h);
      int32_t* inv = inv_.data() + ((size_t)l * pack.n_head_kv() + h) * (size_t)n;
      // Pack::open validated perm as a permutation of [0, n_clustered).
      for (int64_t r = 0; r < n; r++) inv[perm[r]] = (int32_t)r;
    }
  kt_.resize((size_t)pack.n_layer() * pack.n_head_kv());
  ot_.resize((size_t)pack.n_layer() * pack.n_head_kv());
}

int64_t BaselineIndex::affordable_keys(double budget, int64_t metadata) const {
  const int64_t total = (int64_t)std::llround(budget * (double)pack_.n_ctx());
  return std::clamp<int64_t>(total - pack_.n_obs() - metadata, 0, pack_.n_clustered());
}

namespace {

// f32 rows of a KV view in the centroid kernels' transposed layout.
void build_keys_t(const KvHeadView& kv, int64_t n, int64_t d, std::vector<float>& out) {
  std::vector<float> rows((size_t)std::max<int64_t>(1, n * d));
  for (int64_t r = 0; r < n; r++) load_row(kv, r, d, rows.data() + r * d);
  out.assign((size_t)cpu::centroid_transposed_size(std::max<int64_t>(1, n), d), 0.0f);
  if (n > 0) cpu::centroids_transpose(rows.data(), n, d, d, out.data());
}

}  // namespace

const std::vector<float>& BaselineIndex::clustered_keys_t(int layer, int h) const {
  std::vector<float>& kt = kt_[(size_t)layer * pack_.n_head_kv() + h];
  if (kt.empty())
    build_keys_t(pack_.clustered_kv(layer, h), pack_.n_clustered(), pack_.head_dim(), kt);
  return kt;
}

const std::vector<float>& BaselineIndex::obs_keys_t(int layer, int h) const {
  std::vector<float>& ot = ot_[(size_t)layer * pack_.n_head_kv() + h];
  if (ot.empty()) build_keys_t(pack_.obs_kv(layer, h), pack_.n_obs(), pack_.head_dim(), ot);
  return ot;
}

int64_t mask_to_ranges(const uint8_t* mask, int64_t n, std::vector<RowRange>& out) {
  out.clear();
  int64_t kept = 0;
  int64_t i = 0;
  while (i < n) {
    if (!mask[i]) {
      i++;
      continue;
    }
    const int64_t b = i;
    while (i < n && mask[i]) i++;
    out.push_back({(int32_t)b, (int32_t)i});
    kept += i - b;
  }
  return kept;
}

// ---- StreamingLLM ----

void StreamingLlmSelector::plan(int layer, const float* q, int64_t n_q,
                                std::vector<HeadSelection>& sel) {
  const Pack& pk = idx_.pack();
  const int64_t n = pk.n_clustered();
  const int64_t k = idx_.affordable_keys(budget_);
  const int64_t s = std::min<int64_t>(sinks_, k);
  const int64_t w = k - s;
  sel.resize((size_t)pk.n_head_kv());
  for (int h = 0; h < pk.n_head_kv(); h++) {
    mask_.assign((size_t)n, 0);
    const int32_t* inv = idx_.inv_perm(layer, h);
    mark_positions(inv, 0, s, mask_.data());
    mark_positions(inv, std::max(s, n - w), n, mask_.data());
    emit(mask_.data(), n, 0, sel[(size_t)h]);
  }
}

// ---- Quest ----

QuestSelector::QuestSelector(const BaselineIndex& idx, int page_size, int n_threads)
    : idx_(idx), page_size_(page_size), n_threads_(std::max(1, n_threads)) {
  const int H = idx.pack().n_head_kv();
  score_.resize((size_t)H);
  order_.resize((size_t)H);
  mask_.resize((size_t)H);
}

int QuestSelector::auto_page_size(double budget) {
  const double want = 4.0 / std::max(budget, 1e-6);
  int p = 16;
  while (p < want && p < (1 << 20)) p *= 2;
  return p;
}

const QuestSelector::Bounds& QuestSelector::bounds(int layer, int h, int page_size) {
  // The per-page-size slot exists (plan / page_bounds create it before going parallel).
  std::vector<Bounds>* slot = nullptr;
  for (auto& [p, v] : cache_)
    if (p == page_size) slot = &v;
  const Pack& pk = idx_.pack();
  Bounds& b = (*slot)[(size_t)layer * pk.n_head_kv() + h];
  if (!b.mn.empty()) return b;
  const int64_t n = pk.n_clustered(), d = pk.head_dim();
  const int64_t np = (n + page_size - 1) / page_size;
  b.mn.assign((size_t)(np * d), std::numeric_limits<float>::infinity());
  b.mx.assign((size_t)(np * d), -std::numeric_limits<float>::infinity());
  const KvHeadView kv = pk.clustered_kv(layer, h);
  const int32_t* perm = pk.perm(layer, h);
  std::vector<float> row((size_t)d);
  for (int64_t r = 0; r < n; r++) {
    load_row(kv, r, d, row.data());
    const int64_t p = perm[r] / page_size;
    float* mn = b.mn.data() + p * d;
    float* mx = b.mx.data() + p * d;
    for (int64_t i = 0; i < d; i++) {
      mn[i] = std::min(mn[i], row[(size_t)i]);
      mx[i] = std::max(mx[i], row[(size_t)i]);
    }
  }
  return b;
}

void QuestSelector::page_bounds(int layer, int h, const float* q, int64_t n_q, int page_size,
                                std::vector<double>& out) {
  bool have = false;
  for (auto& e : cache_) have = have || e.first == page_size;
  if (!have)
    cache_.emplace_back(
        page_size, std::vector<Bounds>((size_t)idx_.pack().n_layer() * idx_.pack().n_head_kv()));
  const Bounds& b = bounds(layer, h, page_size);
  const Pack& pk = idx_.pack();
  const int64_t d = pk.head_dim(), group = pk.n_head() / pk.n_head_kv();
  const int64_t np = (int64_t)b.mn.size() / d;
  out.assign((size_t)np, 0.0);
  for (int64_t t = 0; t < n_q; t++)
    for (int64_t g = 0; g < group; g++) {
      const float* qr = q + (t * pk.n_head() + h * group + g) * d;
      for (int64_t p = 0; p < np; p++) {
        const float* mn = b.mn.data() + p * d;
        const float* mx = b.mx.data() + p * d;
        float acc = 0;
        for (int64_t i = 0; i < d; i++) acc += std::max(qr[i] * mn[i], qr[i] * mx[i]);
        out[(size_t)p] += acc;
      }
    }
}

void QuestSelector::plan(int layer, const float* q, int64_t n_q, std::vector<HeadSelection>& sel) {
  const Pack& pk = idx_.pack();
  const int H = pk.n_head_kv();
  const int64_t n = pk.n_clustered();
  const int P = page_size_for(budget_);
  const int64_t np = (n + P - 1) / P;
  const int64_t meta = 2 * np;
  const int64_t k = idx_.affordable_keys(budget_, meta);
  bool have = false;
  for (auto& e : cache_) have = have || e.first == P;
  if (!have) cache_.emplace_back(P, std::vector<Bounds>((size_t)pk.n_layer() * H));
  sel.resize((size_t)H);
  auto job = [&](int h) {
    std::vector<double>& sc = score_[(size_t)h];
    std::vector<int32_t>& ord = order_[(size_t)h];
    std::vector<uint8_t>& mask = mask_[(size_t)h];
    if (n_q > 0) {
      page_bounds(layer, h, q, n_q, P, sc);
    } else {
      sc.assign((size_t)np, 0.0);
    }
    ord.resize((size_t)np);
    for (int64_t p = 0; p < np; p++) ord[(size_t)p] = (int32_t)p;
    std::stable_sort(ord.begin(), ord.end(),
                     [&](int32_t a, int32_t b) { return sc[(size_t)a] > sc[(size_t)b]; });
    mask.assign((size_t)n, 0);
    const int32_t* inv = idx_.inv_perm(layer, h);
    int64_t left = k;
    for (int32_t p : ord) {
      const int64_t b = (int64_t)p * P, e = std::min<int64_t>(n, b + P);
      if (e - b > left) continue;  // the short last page may still fit
      mark_positions(inv, b, e, mask.data());
      left -= e - b;
      if (left == 0) break;
    }
    emit(mask.data(), n, meta, sel[(size_t)h]);
  };
  // page_bounds touches only this head's cache entry, so heads may run in parallel; only
  // worth waking threads when the scoring is large (many pages and query rows).
  const int64_t work = np * n_q * (pk.n_head() / H) * pk.head_dim();
  const int nt = work >= (1 << 20) ? std::min(n_threads_, H) : 1;
#pragma omp parallel for num_threads(nt) schedule(static, 1) if (nt > 1)
  for (int h = 0; h < H; h++) job(h);
}

// ---- oracle top-k ----

struct OracleTopKSelector::Scratch {
  std::vector<float> Q;       // [n_q * group, head_dim] scaled queries
  std::vector<float> S;       // [n_q * group, n_clustered] logits
  std::vector<double> score;  // [n_clustered]
  std::vector<int32_t> idx;   // [n_clustered]
  std::vector<uint8_t> mask;  // [n_clustered]
};

OracleTopKSelector::OracleTopKSelector(const BaselineIndex& idx, int n_threads)
    : idx_(idx), n_threads_(std::max(1, n_threads)) {
  for (int h = 0; h < idx.pack().n_head_kv(); h++) scratch_.push_back(std::make_unique<Scratch>());
}

OracleTopKSelector::~OracleTopKSelector() = default;

void OracleTopKSelector::key_scores(int layer, int h, const float* q, int64_t n_q,
                                    std::vector<double>& out) {
  const Pack& pk = idx_.pack();
  const int64_t n = pk.n_clustered(), d = pk.head_dim(), group = pk.n_head() / pk.n_head_kv();
  Scratch& s = *scratch_[(size_t)h];
  const int64_t nqv = n_q * group;
  out.assign((size_t)n, 0.0);
  if (nqv == 0 || n == 0) return;
  s.Q.resize((size_t)(nqv * d));
  gather_group_queries(q, 0, n_q, pk.n_head(), pk.n_head_kv(), d, h, s.Q.data(), Estimator::kMean);
  s.S.resize((size_t)(nqv * n));
  const std::vector<float>& kt = idx_.clustered_keys_t(layer, h);
  cpu::centroid_dots(s.Q.data(), nqv, d, d, kt.data(), n, 0, n, s.S.data(), n);
  for (int64_t r = 0; r < nqv; r++) {
    const float* l = s.S.data() + r * n;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < n; j++) m = std::max(m, l[j]);
    double z = 0;
    for (int64_t j = 0; j < n; j++) z += std::exp((double)(l[j] - m));
    const double inv = 1.0 / (z * (double)nqv);
    for (int64_t j = 0; j < n; j++) out[(size_t)j] += std::exp((double)(l[j] - m)) * inv;
  }
}

void OracleTopKSelector::plan(int layer, const float* q, int64_t n_q,
                              std::vector<HeadSelection>& sel) {
  const Pack& pk = idx_.pack();
  const int H = pk.n_head_kv();
  const int64_t n = pk.n_clustered();
  const int64_t k = idx_.affordable_keys(budget_);
  sel.resize((size_t)H);
  auto job = [&](int h) {
    Scratch& s = *scratch_[(size_t)h];
    key_scores(layer, h, q, n_q, s.score);
    s.idx.resize((size_t)n);
    for (int64_t j = 0; j < n; j++) s.idx[(size_t)j] = (int32_t)j;
    // Largest scores first, lower row on ties (deterministic).
    auto better = [&](int32_t a, int32_t b) {
      const double sa = s.score[(size_t)a], sb = s.score[(size_t)b];
      return sa > sb || (sa == sb && a < b);
    };
    if (k < n) std::nth_element(s.idx.begin(), s.idx.begin() + k, s.idx.end(), better);
    s.mask.assign((size_t)n, 0);
    for (int64_t j = 0; j < k; j++) s.mask[(size_t)s.idx[(size_t)j]] = 1;
    // The oracle's cost (scoring every key) is deliberately not charged: it is an upper bound
    // on what any selection of k keys can do, not a method.
    emit(s.mask.data(), n, 0, sel[(size_t)h]);
  };
  // Threads only pay off for large contexts / many query rows.
  const int64_t work = n * n_q * (pk.n_head() / H) * pk.head_dim();
  const int nt = work >= (1 << 20) ? std::min(n_threads_, H) : 1;
#pragma omp parallel for num_threads(nt) schedule(static, 1) if (nt > 1)
  for (int h = 0; h < H; h++) job(h);
}

// ---- random ----

void RandomSelector::plan(int layer, const float* q, int64_t n_q, std::vector<HeadSelection>& sel) {
  const Pack& pk = idx_.pack();
  const int64_t n = pk.n_clustered();
  const int64_t k = idx_.affordable_keys(budget_);
  const uint64_t call = calls_++;
  sel.resize((size_t)pk.n_head_kv());
  for (int h = 0; h < pk.n_head_kv(); h++) {
    eval::Rng rng(eval::derive_seed(eval::derive_seed(seed_, call), (uint64_t)(layer * 4096 + h)));
    // Partial Fisher-Yates: the first k entries of pool become a uniform k-subset.
    pool_.resize((size_t)n);
    for (int64_t j = 0; j < n; j++) pool_[(size_t)j] = (int32_t)j;
    for (int64_t j = 0; j < k; j++)
      std::swap(pool_[(size_t)j], pool_[(size_t)(j + (int64_t)rng.below((uint64_t)(n - j)))]);
    mask_.assign((size_t)n, 0);
    const int32_t* inv = idx_.inv_perm(layer, h);
    for (int64_t j = 0; j < k; j++) mask_[(size_t)inv[pool_[(size_t)j]]] = 1;
    emit(mask_.data(), n, 0, sel[(size_t)h]);
  }
}

// ---- mass meter ----

struct MassMeter::Scratch {
  std::vector<float> Q;       // [n_q * group, head_dim] scaled queries
  std::vector<float> S;       // [n_q * group, n_clustered] logits
  std::vector<float> So;      // [n_q * group, n_obs] logits
  std::vector<uint8_t> mask;  // [n_clustered]
  double sum = 0;
  int64_t n = 0;
};

MassMeter::MassMeter(const BaselineIndex& idx, KeySelector* inner, int sinks, int n_threads)
    : idx_(idx), inner_(inner), sinks_(sinks), n_threads_(std::max(1, n_threads)) {
  for (int h = 0; h < idx.pack().n_head_kv(); h++) scratch_.push_back(std::make_unique<Scratch>());
}

MassMeter::~MassMeter() = default;

void MassMeter::plan(int layer, const float* q, int64_t n_q, std::vector<HeadSelection>& sel) {
  inner_->plan(layer, q, n_q, sel);
  const Pack& pk = idx_.pack();
  const int H = pk.n_head_kv();
  const int64_t n = pk.n_clustered(), no = pk.n_obs(), d = pk.head_dim();
  // Per-block selections (block() > 0): sel[b * H + h] serves query tokens [b bs, (b+1) bs).
  const int64_t bs = block() > 0 ? block() : std::max<int64_t>(n_q, 1);
  const int64_t n_blocks = Selector::n_blocks(n_q, block());
  const int64_t group = pk.n_head() / H;
  auto job = [&](int h) {
    Scratch& s = *scratch_[(size_t)h];
    for (int64_t b = 0; b < n_blocks; b++)
      measure_block(layer, h, q + b * bs * pk.n_head() * d, std::min(bs, n_q - b * bs),
                    sel[(size_t)(b * H + h)], s, group);
  };
  const int64_t work = (n + no) * n_q * group * d;
  const int nt = work >= (1 << 20) ? std::min(n_threads_, H) : 1;
#pragma omp parallel for num_threads(nt) schedule(static, 1) if (nt > 1)
  for (int h = 0; h < H; h++) job(h);
  for (auto& s : scratch_) {
    sum_ += s->sum;
    n_ += s->n;
    s->sum = 0;
    s->n = 0;
  }
}

void MassMeter::measure_block(int layer, int h, const float* q, int64_t n_q, HeadSelection& hs,
                              Scratch& s, int64_t group) {
  const Pack& pk = idx_.pack();
  const int64_t n = pk.n_clustered(), no = pk.n_obs(), d = pk.head_dim();
  const int64_t nqv = n_q * group;
  s.mask.assign((size_t)n, 0);
  for (const RowRange& r : hs.ranges)
    std::fill(s.mask.begin() + r.begin, s.mask.begin() + r.end, (uint8_t)1);
  if (sinks_ > 0) {
    // Union with the sink rows, as the session's sink_tokens does; ranges re-merged.
    const int32_t* inv = idx_.inv_perm(layer, h);
    for (int64_t p = 0; p < std::min<int64_t>(sinks_, n); p++) s.mask[(size_t)inv[p]] = 1;
    hs.kept_keys = mask_to_ranges(s.mask.data(), n, hs.ranges);
  }
  if (nqv == 0) return;
  s.Q.resize((size_t)(nqv * d));
  gather_group_queries(q, 0, n_q, pk.n_head(), pk.n_head_kv(), d, h, s.Q.data(), Estimator::kMean);
  s.S.resize((size_t)(nqv * std::max<int64_t>(n, 1)));
  s.So.resize((size_t)(nqv * std::max<int64_t>(no, 1)));
  if (n > 0)
    cpu::centroid_dots(s.Q.data(), nqv, d, d, idx_.clustered_keys_t(layer, h).data(), n, 0, n,
                       s.S.data(), n);
  if (no > 0)
    cpu::centroid_dots(s.Q.data(), nqv, d, d, idx_.obs_keys_t(layer, h).data(), no, 0, no,
                       s.So.data(), no);
  for (int64_t r = 0; r < nqv; r++) {
    const float* l = s.S.data() + r * n;
    const float* lo = s.So.data() + r * no;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < n; j++) m = std::max(m, l[j]);
    for (int64_t j = 0; j < no; j++) m = std::max(m, lo[j]);
    double tot = 0, kept = 0;
    for (int64_t j = 0; j < n; j++) {
      const double p = std::exp((double)(l[j] - m));
      tot += p;
      if (s.mask[(size_t)j]) kept += p;
    }
    for (int64_t j = 0; j < no; j++) {
      const double p = std::exp((double)(lo[j] - m));
      tot += p;
      kept += p;
    }
    s.sum += kept / tot;
    s.n++;
  }
}

}  // namespace sqz
