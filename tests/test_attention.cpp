// Sparse/partial attention == dense attention with the equivalent explicit mask (naive double
// reference), across odd key counts, GQA ratios, f16/f32 KV, causal masks, empty and full
// selections, split into work items and merged through LSE.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "attention/attn_runner.h"
#include "core/fp16.h"
#include "reference/ref_attention.h"
#include "util/test_util.h"

namespace sqz {
namespace {

struct Case {
  int64_t n_keys, n_q, n_head, n_kv, d;
  DType type;
  double keep;  // fraction of rows selected (random ranges); 1 = all, 0 = none
  bool causal;
};

// Random disjoint sorted ranges covering about `keep` of [0, n).
std::vector<RowRange> random_ranges(std::mt19937_64& rng, int64_t n, double keep) {
  std::vector<RowRange> r;
  if (keep >= 1.0) return {RowRange{0, (int32_t)n}};
  std::uniform_real_distribution<double> u(0, 1);
  std::uniform_int_distribution<int> len(1, 40);
  int64_t i = 0;
  while (i < n) {
    const int64_t l = std::min<int64_t>(len(rng), n - i);
    if (u(rng) < keep) r.push_back({(int32_t)i, (int32_t)(i + l)});
    i += l;
  }
  return r;
}

void run_case(const Case& c, uint64_t seed) {
  std::mt19937_64 rng(seed);
  // Keys with a spread of magnitudes so softmax is peaked for some queries.
  std::vector<float> q = test::randn(rng, (size_t)(c.n_q * c.n_head * c.d), 1.0f);
  std::vector<float> k = test::randn(rng, (size_t)(c.n_kv * c.n_keys * c.d), 1.0f);
  std::vector<float> v = test::randn(rng, (size_t)(c.n_kv * c.n_keys * c.d), 1.0f);
  // Planted huge logits on unselected keys must not leak (FlashInfer-style adversarial case).
  std::vector<std::vector<RowRange>> ranges((size_t)c.n_kv);
  for (int64_t h = 0; h < c.n_kv; h++) ranges[(size_t)h] = random_ranges(rng, c.n_keys, c.keep);
  // Storage in the tested dtype; the reference sees the same (rounded) values.
  std::vector<uint16_t> k16, v16;
  if (c.type == DType::kF16) {
    k16.resize(k.size());
    v16.resize(v.size());
    for (size_t i = 0; i < k.size(); i++) {
      k16[i] = fp32_to_fp16(k[i]);
      k[i] = fp16_to_fp32(k16[i]);
      v16[i] = fp32_to_fp16(v[i]);
      v[i] = fp16_to_fp32(v16[i]);
    }
  }
  const int64_t q_pos0 = c.n_keys - c.n_q;  // queries are the last n_q positions when causal
  std::vector<uint8_t> mask((size_t)(c.n_kv * c.n_q * c.n_keys), 0);
  for (int64_t h = 0; h < c.n_kv; h++)
    for (const auto& r : ranges[(size_t)h])
      for (int64_t j = r.begin; j < r.end; j++)
        for (int64_t i = 0; i < c.n_q; i++)
          if (!c.causal || j <= q_pos0 + i) mask[(size_t)((h * c.n_q + i) * c.n_keys + j)] = 1;

  const double scale = 1.0 / std::sqrt((double)c.d);
  std::vector<double> ref_out, ref_lse;
  ref::attention_masked(q, k, v, mask, c.n_q, c.n_head, c.n_kv, c.n_keys, c.d, scale, ref_out,
                        ref_lse);

  std::vector<AttnSegment> segs;
  for (int64_t h = 0; h < c.n_kv; h++) {
    AttnSegment s;
    s.kv_head = (int)h;
    s.kv.type = c.type;
    s.kv.row_stride = c.d;
    if (c.type == DType::kF16) {
      s.kv.k = k16.data() + h * c.n_keys * c.d;
      s.kv.v = v16.data() + h * c.n_keys * c.d;
    } else {
      s.kv.k = k.data() + h * c.n_keys * c.d;
      s.kv.v = v.data() + h * c.n_keys * c.d;
    }
    s.ranges = ranges[(size_t)h];
    s.causal = c.causal;
    s.mask.key_pos0 = 0;
    s.mask.q_pos0 = q_pos0;
    segs.push_back(s);
  }
  for (int threads : {1, 2}) {
    AttnRunner runner;
    runner.plan({c.n_q, c.n_head, c.n_kv, c.d, (float)scale}, segs, threads);
    std::vector<float> out((size_t)(c.n_q * c.n_head * c.d));
    test::poison(out);
    runner.run(q.data(), out.data(), threads);
    ASSERT_TRUE(test::all_finite(out.data(), out.size())) << "non-finite output";
    // Error budget: f32 accumulation over up to n_keys terms of |v| ~ 3; outputs are convex
    // combinations of V rows, so the absolute error bound is ~ n_terms * eps_f32 * max|v|,
    // plus exp() rounding (~1e-7 relative per weight). 2e-4 absolute leaves a 10x margin at
    // 3771 keys while any masking or merge bug produces errors of order 0.1.
    const double tol = 2e-4;
    for (size_t i = 0; i < out.size(); i++)
      ASSERT_NEAR(out[i], ref_out[i], tol)
          << "element " << i << " threads " << threads << " keys " << c.n_keys;
  }
}

TEST(Attention, MatchesMaskedReference) {
  const uint64_t seed = test::test_seed();
  int idx = 0;
  for (int64_t n_keys : {113, 501, 3771})
    for (auto [nh, nkv] : {std::pair{4, 4}, {9, 3}, {8, 2}, {16, 2}})
      for (DType t : {DType::kF32, DType::kF16})
        for (double keep : {1.0, 0.3})
          for (bool causal : {false, true}) {
            const int64_t n_q =
                causal ? 7 : (n_keys == 501 ? 9 : 1);  // 9x3 rows: GEMM path unmasked
            SCOPED_TRACE(testing::Message() << "keys=" << n_keys << " heads=" << nh << "/" << nkv
                                            << " f16=" << (t == DType::kF16) << " keep=" << keep
                                            << " causal=" << causal << " seed=" << seed + idx);
            run_case({n_keys, n_q, nh, nkv, 64, t, keep, causal}, seed + idx++);
          }
}

TEST(Attention, OddHeadDimAndManyQueries) {
  const uint64_t seed = test::test_seed();
  run_case({501, 37, 6, 2, 40, DType::kF32, 0.5, true}, seed + 100);
  run_case({113, 3, 8, 1, 128, DType::kF16, 0.7, false}, seed + 101);
}

TEST(Attention, EmptySelectionGivesIdentityState) {
  const int64_t d = 64, n_keys = 113;
  std::mt19937_64 rng(test::test_seed());
  std::vector<float> q = test::randn(rng, (size_t)(3 * d)),
                     k = test::randn(rng, (size_t)(n_keys * d)),
                     v = test::randn(rng, (size_t)(n_keys * d));
  std::vector<RowRange> none;
  AttnArgs a;
  a.q = q.data();
  a.n_q = 1;
  a.group = 3;
  a.head_dim = d;
  a.q_tok_stride = 3 * d;
  a.kv = {k.data(), v.data(), DType::kF32, d};
  a.ranges = none;
  std::vector<float> out((size_t)(3 * d)), lse(3);
  test::poison(out);
  test::poison(lse);
  a.out = out.data();
  a.out_tok_stride = 3 * d;
  a.lse = lse.data();
  a.lse_tok_stride = 3;
  attn_partial_cpu(a);
  for (float x : out) EXPECT_EQ(x, 0.0f);
  for (float x : lse) EXPECT_TRUE(std::isinf(x) && x < 0);
  // Merging an empty state into a real one leaves it unchanged; both empty stays empty, no NaN.
  std::vector<float> o2(out), l2(lse);
  attn_merge_states(o2.data(), l2.data(), out.data(), lse.data(), 3, d);
  for (float x : o2) EXPECT_EQ(x, 0.0f);
  for (float x : l2) EXPECT_TRUE(std::isinf(x));
}

TEST(Attention, FullyMaskedRowsAreEmpty) {
  // Causal mask where every key is in the future of every query.
  const int64_t d = 64, n_keys = 50;
  std::mt19937_64 rng(test::test_seed() + 7);
  std::vector<float> q = test::randn(rng, (size_t)(2 * d)),
                     k = test::randn(rng, (size_t)(n_keys * d)),
                     v = test::randn(rng, (size_t)(n_keys * d));
  std::vector<RowRange> all{{0, (int32_t)n_keys}};
  CausalMask m{100, 10};
  AttnArgs a;
  a.q = q.data();
  a.n_q = 2;
  a.group = 1;
  a.head_dim = d;
  a.q_tok_stride = d;
  a.kv = {k.data(), v.data(), DType::kF32, d};
  a.ranges = all;
  a.mask = &m;
  std::vector<float> out((size_t)(2 * d)), lse(2);
  test::poison(out);
  a.out = out.data();
  a.out_tok_stride = d;
  a.lse = lse.data();
  a.lse_tok_stride = 1;
  attn_partial_cpu(a);
  for (float x : out) EXPECT_EQ(x, 0.0f);
  for (float x : lse) EXPECT_TRUE(std::isinf(x) && x < 0);
}

}  // namespace
}  // namespace sqz
