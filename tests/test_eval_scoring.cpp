// Answer scoring, Wilson intervals, KL of logits and the deterministic RNG of the evaluation.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <set>

#include "eval/rng.h"
#include "eval/scoring.h"
#include "util/test_util.h"

using namespace sqz::eval;

TEST(EvalScoring, Normalize) {
  EXPECT_EQ(normalize_answer("The number is 4,718,293."), "the number is 4718293");
  EXPECT_EQ(normalize_answer("3F9A1C7E-52B0"), "3f9a1c7e-52b0");
  EXPECT_EQ(normalize_answer("  a \t b\n"), "a b");
  EXPECT_EQ(normalize_answer("well-known - x -"), "well-known x");
  EXPECT_EQ(normalize_answer("1.5, 2"), "15 2");  // digit separators go, other commas split
  EXPECT_EQ(normalize_answer("\"Wagon!\""), "wagon");
  EXPECT_EQ(normalize_answer(""), "");
}

TEST(EvalScoring, Contains) {
  EXPECT_TRUE(answer_contains("The special magic number is 4718293.", {"4718293"}));
  EXPECT_TRUE(answer_contains("4,718,293", {"4718293"}));
  EXPECT_FALSE(answer_contains("47182930", {"4718293"}));  // whole words only
  EXPECT_FALSE(answer_contains("14718293", {"4718293"}));
  EXPECT_TRUE(answer_contains("Wagon.", {"wagon"}));
  EXPECT_FALSE(answer_contains("wagons", {"wagon"}));
  EXPECT_TRUE(answer_contains("It is 3f9a1c7e-52b0", {"3f9a1c7e-52b0"}));
  EXPECT_FALSE(answer_contains("It is 3f9a1c7e", {"3f9a1c7e-52b0"}));
  EXPECT_TRUE(answer_contains("The numbers are 5 and 7.", {"5", "7"}));
  EXPECT_FALSE(answer_contains("The numbers are 5 and 8.", {"5", "7"}));
  EXPECT_TRUE(answer_contains("Hazelgate", {"Hazelgate"}));
  EXPECT_FALSE(answer_contains("anything", {}));
  EXPECT_FALSE(answer_contains("", {"x"}));
}

TEST(EvalScoring, Exact) {
  EXPECT_TRUE(answer_exact(" 4718293.", {"4718293"}));
  EXPECT_FALSE(answer_exact("It is 4718293.", {"4718293"}));
  EXPECT_FALSE(answer_exact("5 7", {"5", "7"}));  // exact is defined for one value only
}

TEST(EvalScoring, WilsonKnownValues) {
  // Reference values: Newcombe, "Two-sided confidence intervals for the single proportion"
  // (Stat. Med. 1998), Table I, score method without continuity correction.
  Interval a = wilson_interval(81, 263);
  EXPECT_NEAR(a.lo, 0.2553, 5e-5);
  EXPECT_NEAR(a.hi, 0.3662, 5e-5);
  Interval b = wilson_interval(15, 148);
  EXPECT_NEAR(b.lo, 0.0624, 5e-5);
  EXPECT_NEAR(b.hi, 0.1605, 5e-5);
  Interval c = wilson_interval(0, 20);
  EXPECT_EQ(c.lo, 0.0);
  EXPECT_NEAR(c.hi, 0.1611, 5e-5);
  Interval d = wilson_interval(1, 29);
  EXPECT_NEAR(d.lo, 0.0061, 5e-5);
  EXPECT_NEAR(d.hi, 0.1718, 5e-5);
  // Symmetry: k/n and (n-k)/n mirror each other.
  Interval e = wilson_interval(20, 20);
  EXPECT_NEAR(e.lo, 1 - c.hi, 1e-12);
  EXPECT_EQ(e.hi, 1.0);
  Interval none = wilson_interval(0, 0);
  EXPECT_EQ(none.lo, 0.0);
  EXPECT_EQ(none.hi, 1.0);
}

TEST(EvalScoring, WilsonContainsEstimate) {
  for (int64_t n : {1, 7, 50, 201})
    for (int64_t k = 0; k <= n; k++) {
      const Interval i = wilson_interval(k, n);
      const double p = (double)k / (double)n;
      EXPECT_LE(i.lo, p + 1e-12);
      EXPECT_GE(i.hi, p - 1e-12);
      EXPECT_GE(i.lo, 0.0);
      EXPECT_LE(i.hi, 1.0);
    }
}

TEST(EvalScoring, KlTwoPoint) {
  // P = (1/2, 1/2), Q = (3/4, 1/4): KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3).
  const float p[2] = {0.0f, 0.0f};
  const float q[2] = {std::log(3.0f), 0.0f};
  EXPECT_NEAR(kl_from_logits(p, q, 2), 0.5 * std::log(4.0 / 3.0), 1e-6);
  EXPECT_EQ(kl_from_logits(p, p, 2), 0.0);
}

TEST(EvalScoring, KlMatchesNaive) {
  std::mt19937_64 rng(sqz::test::test_seed());
  const int64_t n = 49152;
  std::vector<float> p = sqz::test::randn(rng, (size_t)n, 4.0f);
  std::vector<float> q = sqz::test::randn(rng, (size_t)n, 4.0f);
  // Naive reference: probabilities normalised explicitly in long double.
  long double zp = 0, zq = 0;
  for (int64_t i = 0; i < n; i++) {
    zp += std::exp((long double)p[(size_t)i]);
    zq += std::exp((long double)q[(size_t)i]);
  }
  long double ref = 0;
  for (int64_t i = 0; i < n; i++) {
    const long double pi = std::exp((long double)p[(size_t)i]) / zp;
    const long double qi = std::exp((long double)q[(size_t)i]) / zq;
    ref += pi * std::log(pi / qi);
  }
  EXPECT_NEAR(kl_from_logits(p.data(), q.data(), n), (double)ref,
              1e-9 * std::max(1.0, (double)ref));
  // Invariant to a constant shift of either row.
  std::vector<float> p2 = p;
  for (auto& x : p2) x += 7.0f;
  EXPECT_NEAR(kl_from_logits(p2.data(), q.data(), n), (double)ref, 1e-4);
  EXPECT_TRUE(std::isfinite(kl_from_logits(p.data(), q.data(), n)));
}

TEST(EvalRng, DeterministicAndInRange) {
  Rng a(42), b(42), c(43);
  std::vector<uint64_t> va, vb, vc;
  for (int i = 0; i < 100; i++) {
    va.push_back(a.next());
    vb.push_back(b.next());
    vc.push_back(c.next());
  }
  EXPECT_EQ(va, vb);
  EXPECT_NE(va, vc);
  Rng r(7);
  std::vector<int> hist(7, 0);
  for (int i = 0; i < 7000; i++) {
    const uint64_t x = r.below(7);
    ASSERT_LT(x, 7u);
    hist[(size_t)x]++;
  }
  for (int h : hist) EXPECT_GT(h, 800);  // 1000 expected; 800 is > 6 sigma below
  for (int i = 0; i < 1000; i++) {
    const int64_t x = r.range(-3, 3);
    ASSERT_GE(x, -3);
    ASSERT_LE(x, 3);
    const double u = r.uniform();
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
  }
  std::set<uint64_t> seeds;
  for (uint64_t s = 0; s < 100; s++) seeds.insert(derive_seed(1, s));
  EXPECT_EQ(seeds.size(), 100u);
}
