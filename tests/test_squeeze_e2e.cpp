// End-to-end squeezed attention through the real forward pass: compile a context into a pack,
// answer with squeezed attention, compare with dense. Tiny random models (generated here) keep
// the structural checks fast; the default model carries the planted-fact test.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/squeeze_session.h"
#include "formats/random_model.h"
#include "util/test_util.h"

namespace sqz {
namespace {

namespace fs = std::filesystem;

std::string tmp_dir() {
  const fs::path d = fs::temp_directory_path() / ("sqz_e2e_" + std::to_string(::getpid()));
  fs::create_directories(d);
  return d.string();
}

std::string debian_text(size_t max_chars) {
  std::string text;
  for (const char* f : {"perlsyn.pod", "perlop.pod"}) {
    std::ifstream in(std::string("/usr/share/perl/5.36.0/pod/") + f);
    std::stringstream ss;
    ss << in.rdbuf();
    text += ss.str();
  }
  if (text.size() > max_chars) text.resize(max_chars);
  return text;
}

std::unique_ptr<Engine> engine_for(const std::string& model, int threads = 2,
                                   bool prefill_f32 = false) {
  EngineParams p;
  p.model_path = model;
  p.n_threads = threads;
  p.prefill_f32 = prefill_f32;
  auto e = Engine::create(p);
  EXPECT_TRUE(e.ok()) << e.status().message();
  return e.ok() ? std::move(e).value() : nullptr;
}

class TinyModelSqueeze : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = tmp_dir();
    RandomModelParams rp;
    rp.n_embd = 128;
    rp.n_head = 4;
    rp.n_head_kv = 2;  // GQA 2
    rp.head_dim = 32;
    rp.n_layer = 2;
    rp.n_ff = 256;
    rp.seed = test::test_seed();
    rp.weight_type = DType::kQ8_0;
    model_ = dir_ + "/tiny.gguf";
    ASSERT_TRUE(write_random_llama_gguf(rp, model_).ok());
    // Random weights give near-uniform attention; scale up q/k through a larger std so the
    // selection has structure to find.
    auto e = engine_for(model_);
    ASSERT_TRUE(e);
    CompileParams cp;
    cp.clusters = 0.1;
    cp.coarse = 0.02;
    cp.obs_window = 16;
    cp.seed = 3;
    cp.n_threads = 2;
    pack_path_ = dir_ + "/tiny.sqzpack";
    auto r = compile_context(*e, debian_text(1500), cp, pack_path_, nullptr);
    ASSERT_TRUE(r.ok()) << r.status().message();
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  static std::string dir_, model_, pack_path_;
};
std::string TinyModelSqueeze::dir_, TinyModelSqueeze::model_, TinyModelSqueeze::pack_path_;

TEST_F(TinyModelSqueeze, KeepAllReproducesDenseLogits) {
  auto e = engine_for(model_);
  auto pack = Pack::open(pack_path_);
  ASSERT_TRUE(pack.ok()) << pack.status().message();
  const auto q = question_tokens(*e, "What does the loop do?");
  AskParams dense;
  dense.dense = true;
  AskParams all;
  all.keep_all = true;  // threshold -inf through the real selection path
  AskResult st;
  auto ld = ask_first_logits(*e, **pack, q, dense, nullptr);
  auto la = ask_first_logits(*e, **pack, q, all, &st);
  ASSERT_TRUE(ld.ok() && la.ok());
  EXPECT_DOUBLE_EQ(st.kept_fraction, 1.0);
  // Same keys, different grouping of the f32 sums (cluster order vs split points): float
  // rounding only. Logits are O(1) here; 1e-4 is ~1000 ulp of headroom and far below any
  // real selection error.
  double worst = 0;
  for (size_t i = 0; i < ld->size(); i++)
    worst = std::max(worst, (double)std::fabs((*ld)[i] - (*la)[i]));
  EXPECT_LT(worst, 1e-4);
}

TEST_F(TinyModelSqueeze, BudgetAccountingAndHierarchy) {
  auto e = engine_for(model_);
  auto pack = Pack::open(pack_path_);
  ASSERT_TRUE(pack.ok());
  ASSERT_GT((*pack)->n_coarse(), 0);
  const auto q = question_tokens(*e, "Where is the answer?");
  AskParams one, two;
  one.select.percentile = two.select.percentile = 0.8;
  one.select.levels = 1;
  two.select.levels = 2;
  // A random tiny model's coarse clusters carry little signal, so the default child rule keeps
  // nearly all of them here; the calibrated rule's skipping is checked on this model, the child
  // rule's on the real model (PlantedFact.TwoLevelsSkipCentroidsAndAnswer).
  two.select.coarse_rule = SelectParams::CoarseRule::kCalibrated;
  AskResult s1, s2;
  ASSERT_TRUE(ask_first_logits(*e, **pack, q, one, &s1).ok());
  ASSERT_TRUE(ask_first_logits(*e, **pack, q, two, &s2).ok());
  EXPECT_NEAR(s1.budget, s1.kept_fraction + s1.centroid_fraction, 1e-12);
  EXPECT_GT(s1.kept_fraction, 0.0);
  EXPECT_LT(s1.kept_fraction, 1.0);
  // The hierarchy must really skip centroid comparisons.
  EXPECT_LT(s2.centroid_fraction, s1.centroid_fraction);
  std::printf("[tiny] levels1 kept %.3f centroids %.3f | levels2 kept %.3f centroids %.3f\n",
              s1.kept_fraction, s1.centroid_fraction, s2.kept_fraction, s2.centroid_fraction);
}

TEST_F(TinyModelSqueeze, BudgetPicksCalibratedPercentile) {
  auto e = engine_for(model_);
  auto pack = Pack::open(pack_path_);
  ASSERT_TRUE(pack.ok());
  const auto q = question_tokens(*e, "Summarise.");
  double prev = 2.0;
  for (double b : {0.6, 0.3, 0.15}) {
    AskParams ap;
    ap.budget = b;
    AskResult st;
    ASSERT_TRUE(ask_first_logits(*e, **pack, q, ap, &st).ok());
    // Lower requested budgets never read more keys.
    EXPECT_LE(st.kept_fraction, prev + 1e-9) << "budget " << b;
    prev = st.kept_fraction;
  }
}

TEST_F(TinyModelSqueeze, PackFromAnotherModelIsRejected) {
  auto pack = Pack::open(pack_path_);
  ASSERT_TRUE(pack.ok());
  RandomModelParams rp;
  rp.n_embd = 128;
  rp.n_head = 4;
  rp.n_head_kv = 2;
  rp.head_dim = 32;
  rp.n_layer = 2;
  rp.n_ff = 256;
  rp.seed = test::test_seed() + 1;  // same shapes, other weights
  rp.weight_type = DType::kQ8_0;
  const std::string other = dir_ + "/other.gguf";
  ASSERT_TRUE(write_random_llama_gguf(rp, other).ok());
  auto e = engine_for(other);
  AskParams ap;
  auto r = ask(*e, **pack, "hello", ap);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kMismatch) << r.status().message();
}

TEST_F(TinyModelSqueeze, OversizedQuestionIsAnError) {
  auto e = engine_for(model_);
  auto pack = Pack::open(pack_path_);
  ASSERT_TRUE(pack.ok());
  AskParams ap;
  ap.gen.max_tokens = 4;
  auto r = ask(*e, **pack, std::string(4000, 'x'), ap);  // ~4000 byte tokens > 2048 window
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kOutOfRange) << r.status().message();
}

// The default model on a ~4K-token Debian document with a planted fact.
class PlantedFact : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_FALSE(test::default_model_path().empty()) << "run scripts/setup.sh first";
    dir_ = tmp_dir();
    const std::string doc = debian_text(16000);
    const size_t mid = doc.find("\n\n", doc.size() / 2);
    const std::string ctx = doc.substr(0, mid) +
                            "\n\nThe secret password for the blue vault is PELICAN-42.\n" +
                            doc.substr(mid);
    auto e = engine_for(test::default_model_path(), 2, true);
    CompileParams cp;
    cp.n_threads = 2;
    pack_path_ = dir_ + "/planted.sqzpack";
    auto r = compile_context(*e, ctx, cp, pack_path_, nullptr);
    ASSERT_TRUE(r.ok()) << r.status().message();
    std::printf("[planted] context %lld tokens, prefill %.1f s, k-means %.1f s\n",
                (long long)r->n_ctx, r->prefill_s, r->stats.kmeans_s);
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  // f32 prefill GEMMs (the reference numerics) for the pack and the questions: the planted
  // answer sits on a near-tie for this 135M model (docs/cuda.md), and on AMX machines the bf16
  // prefill GEMMs flipped it at 10% kept ("is:" for "is PELICAN-42", seen in session 13 on a
  // Sapphire Rapids-class CPU, main included). The test is about the selection, so it uses the
  // numerics that are the same on every CPU.
  static AskResult ask_it(AskParams ap) {
    auto e = engine_for(test::default_model_path(), 2, true);
    auto pack = Pack::open(pack_path_);
    EXPECT_TRUE(pack.ok());
    ap.gen.max_tokens = 16;
    auto r = ask(*e, **pack, "What is the secret password for the blue vault?", ap);
    EXPECT_TRUE(r.ok()) << r.status().message();
    std::printf("[planted] dense=%d kept %.3f budget %.3f: %s\n", ap.dense, r->kept_fraction,
                r->budget, r->gen.text.c_str());
    return r.ok() ? r.value() : AskResult();
  }
  static std::string dir_, pack_path_;
};
std::string PlantedFact::dir_, PlantedFact::pack_path_;

TEST_F(PlantedFact, DenseAnswersCorrectly) {
  AskParams ap;
  ap.dense = true;
  EXPECT_NE(ask_it(ap).gen.text.find("PELICAN-42"), std::string::npos);
}

TEST_F(PlantedFact, KeepAllAnswersLikeDense) {
  AskParams ap;
  ap.keep_all = true;
  EXPECT_NE(ask_it(ap).gen.text.find("PELICAN-42"), std::string::npos);
}

// About 10% of the context's keys (single-level lookup, the default mean_iso estimator, the
// default 4 sink tokens, one selection per question token). Measured alternatives
// (docs/squeeze.md): the paper's mean estimator misses the needle at every budget below ~50%; one
// selection for the whole question (select.block = 0) and the two-level lookup also miss it at 10%.
TEST_F(PlantedFact, SqueezedAtTenPercentAnswersCorrectly) {
  AskParams ap;
  ap.budget = 0.1;
  ap.select.levels = 1;
  ap.select.block = 1;
  const AskResult r = ask_it(ap);
  EXPECT_LT(r.kept_fraction, 0.15);
  EXPECT_GT(r.kept_fraction, 0.05);
  EXPECT_NE(r.gen.text.find("PELICAN-42"), std::string::npos);
}

// The default two-level lookup (child rule) at the same budget: fewer centroids compared than
// the single level, about the same keys kept, and the planted fact still found.
TEST_F(PlantedFact, TwoLevelsSkipCentroidsAndAnswer) {
  AskParams one, two;
  one.budget = two.budget = 0.1;
  one.select.block = two.select.block = 1;
  one.select.levels = 1;
  two.select.levels = 2;
  ASSERT_EQ(two.select.coarse_rule, SelectParams::CoarseRule::kChildBound);  // the default
  const AskResult a = ask_it(one), b = ask_it(two);
  std::printf("[planted] centroids compared: levels 1 %.4f, levels 2 %.4f\n", a.centroid_fraction,
              b.centroid_fraction);
  EXPECT_LT(b.centroid_fraction, 0.95 * a.centroid_fraction);
  EXPECT_NEAR(b.kept_fraction, a.kept_fraction, 0.02);
  EXPECT_NE(b.gen.text.find("PELICAN-42"), std::string::npos);
}

}  // namespace
}  // namespace sqz
