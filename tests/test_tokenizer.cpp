// Tokenizer tests against golden ids/strings produced by Hugging Face `tokenizers` /
// `transformers` / `sentencepiece` (scripts/gen_tokenizer_fixtures.py), never by sqz itself.
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "formats/model_file.h"
#include "tokenizer/hf_json.h"
#include "tokenizer/tokenizer.h"
#include "util/test_util.h"

namespace sqz {
namespace {

using json = nlohmann::json;

std::string read_text(const std::string& rel) {
  std::ifstream f(test::source_path(rel), std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

json read_json(const std::string& rel) {
  const std::string s = read_text(rel);
  json j = json::parse(s, nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << rel;
  return j;
}

const std::string kDir = "tests/data/tokenizer/";

TokenizerData hf_data(const std::string& name) {
  auto d = tokenizer_data_from_hf_json(read_text(kDir + name + ".tokenizer.json"),
                                       read_text(kDir + name + ".tokenizer_config.json"));
  EXPECT_TRUE(d.ok()) << name << ": " << d.status().message();
  return d.ok() ? d.value() : TokenizerData{};
}

std::unique_ptr<Tokenizer> make(const TokenizerData& d) {
  auto t = Tokenizer::create(d);
  EXPECT_TRUE(t.ok()) << t.status().message();
  return t.ok() ? std::move(t.value()) : nullptr;
}

std::vector<int32_t> ids_of(const json& j) {
  return j.get<std::vector<int32_t>>();
}

std::string show(const std::vector<int32_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size() && i < 64; i++) {
    if (i) s += ' ';
    s += std::to_string(v[i]);
  }
  if (v.size() > 64) s += " ...";
  return s;
}

// Checks every golden case of a fixture; returns {matched, total} over all compared items.
struct Tally {
  int ok = 0, total = 0;
  void add(bool good) {
    ok += good;
    total++;
  }
};

Tally check_golden(const Tokenizer& t, const json& golden, const std::string& label,
                   bool byte_level) {
  Tally tally;
  for (const json& c : golden["cases"]) {
    const std::string name = c["name"];
    const std::string text = c["text"];
    const auto ids = ids_of(c["ids"]);
    const auto add = c.contains("ids_add_special") ? ids_of(c["ids_add_special"]) : ids;
    const auto raw = c.contains("ids_no_parse_special") ? ids_of(c["ids_no_parse_special"]) : ids;

    const auto got = t.encode(text, /*add_special=*/false, /*parse_special=*/true);
    EXPECT_EQ(show(got), show(ids)) << label << " case " << name;
    tally.add(got == ids);
    const auto got_add = t.encode(text, true, true);
    EXPECT_EQ(show(got_add), show(add)) << label << " case " << name << " (add_special)";
    tally.add(got_add == add);
    const auto got_raw = t.encode(text, false, false);
    EXPECT_EQ(show(got_raw), show(raw)) << label << " case " << name << " (parse_special=false)";
    tally.add(got_raw == raw);

    const std::string dec = c["decoded"];
    const std::string dec_skip =
        c.contains("decoded_skip_special") ? c["decoded_skip_special"].get<std::string>() : dec;
    EXPECT_EQ(t.decode(ids, false), dec) << label << " case " << name << " (decode)";
    tally.add(t.decode(ids, false) == dec);
    EXPECT_EQ(t.decode(ids, true), dec_skip) << label << " case " << name << " (decode skip)";
    tally.add(t.decode(ids, true) == dec_skip);

    if (byte_level && name != "missing_bytes") {
      // Byte-level BPE is lossless: the text comes back byte for byte.
      EXPECT_EQ(t.decode(got_raw, false), text) << label << " round trip " << name;
    }
  }
  if (golden.contains("decode_cases")) {
    for (const json& c : golden["decode_cases"]) {
      const auto ids = ids_of(c["ids"]);
      const std::string d0 = c["decoded"], d1 = c["decoded_skip_special"];
      EXPECT_EQ(t.decode(ids, false), d0) << label << " decode of [" << show(ids) << "]";
      EXPECT_EQ(t.decode(ids, true), d1) << label << " decode(skip) of [" << show(ids) << "]";
      tally.add(t.decode(ids, false) == d0);
      tally.add(t.decode(ids, true) == d1);
    }
  }
  std::printf("[sqz] %-22s %d/%d golden items match (%.1f%%)\n", label.c_str(), tally.ok,
              tally.total, 100.0 * tally.ok / std::max(tally.total, 1));
  return tally;
}

// ---------------------------------------------------------------------------------------------
// Trained fixtures through tokenizer_data_from_hf_json
// ---------------------------------------------------------------------------------------------
TEST(TokenizerHf, Gpt2ByteLevel) {
  TokenizerData d = hf_data("gpt2");
  EXPECT_EQ(d.model, "gpt2");
  EXPECT_EQ(d.pre, "gpt2");
  auto t = make(d);
  ASSERT_TRUE(t);
  const Tally r = check_golden(*t, read_json(kDir + "gpt2.golden.json"), "gpt2", true);
  EXPECT_EQ(r.ok, r.total);
}

TEST(TokenizerHf, Llama3Regex) {
  TokenizerData d = hf_data("llama3");
  EXPECT_EQ(d.model, "gpt2");
  EXPECT_EQ(d.pre, "llama-bpe");
  EXPECT_TRUE(d.add_bos);
  auto t = make(d);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->bos(), t->token_id("<|begin_of_text|>"));
  EXPECT_EQ(t->eos(), t->token_id("<|eot_id|>"));
  const Tally r = check_golden(*t, read_json(kDir + "llama3.golden.json"), "llama3", true);
  EXPECT_EQ(r.ok, r.total);
}

// Negative control: the same data without ignore_merges ("dbrx" uses the Llama-3 regex without
// it) must miss the vocabulary word the merges cannot build.
TEST(TokenizerHf, Llama3IgnoreMergesMatters) {
  TokenizerData d = hf_data("llama3");
  d.pre = "dbrx";
  auto t = make(d);
  ASSERT_TRUE(t);
  const json g = read_json(kDir + "llama3.golden.json");
  bool seen = false;
  for (const json& c : g["cases"]) {
    if (c["name"] != "ignore_merges") continue;
    seen = true;
    EXPECT_NE(t->encode(c["text"].get<std::string>(), false, true), ids_of(c["ids"]));
  }
  EXPECT_TRUE(seen);
}

// Older tokenizer.json files store merges as "a b" strings, newer ones as [a, b] pairs.
TEST(TokenizerHf, MergeFormatsAgree) {
  json j = json::parse(read_text(kDir + "gpt2.tokenizer.json"));
  json strings = json::array();
  for (const json& m : j["model"]["merges"])
    strings.push_back(m.is_array() ? json(m[0].get<std::string>() + " " + m[1].get<std::string>())
                                   : m);
  j["model"]["merges"] = strings;
  auto a = tokenizer_data_from_hf_json(j.dump(), "");
  ASSERT_TRUE(a.ok()) << a.status().message();
  const TokenizerData b = hf_data("gpt2");
  EXPECT_EQ(a.value().merges, b.merges);
  EXPECT_EQ(a.value().tokens, b.tokens);
  EXPECT_FALSE(a.value().merges.empty());
}

// A Metaspace pre-tokenizer (non-legacy Llama / Mistral files) is also SentencePiece-style.
TEST(TokenizerHf, MetaspaceIsSentencePiece) {
  json j = json::parse(read_text(kDir + "spm.tokenizer.json"));
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {{"type", "Metaspace"},
                        {"replacement", "\xE2\x96\x81"},
                        {"prepend_scheme", "first"},
                        {"split", false}};
  auto d = tokenizer_data_from_hf_json(j.dump(), "");
  ASSERT_TRUE(d.ok()) << d.status().message();
  EXPECT_EQ(d.value().model, "llama");
  EXPECT_TRUE(d.value().add_space_prefix);
  EXPECT_TRUE(d.value().add_bos);  // from the "<s> $A" post-processor
  EXPECT_EQ(d.value().bos_id, 1);
}

TEST(TokenizerHf, Qwen2Regex) {
  TokenizerData d = hf_data("qwen2");
  EXPECT_EQ(d.model, "gpt2");
  EXPECT_EQ(d.pre, "qwen2");
  auto t = make(d);
  ASSERT_TRUE(t);
  EXPECT_FALSE(t->is_control(t->token_id("<tool_call>")));  // non-special added token
  EXPECT_TRUE(t->is_control(t->token_id("<|im_end|>")));
  EXPECT_EQ(t->eot(), t->token_id("<|im_end|>"));
  const Tally r = check_golden(*t, read_json(kDir + "qwen2.golden.json"), "qwen2", true);
  EXPECT_EQ(r.ok, r.total);
}

TEST(TokenizerHf, SentencePieceMerges) {
  TokenizerData d = hf_data("spm");
  EXPECT_EQ(d.model, "llama");
  EXPECT_TRUE(d.add_space_prefix);
  EXPECT_TRUE(d.add_bos);
  auto t = make(d);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->bos(), 1);
  EXPECT_EQ(t->eos(), 2);
  const Tally r = check_golden(*t, read_json(kDir + "spm.golden.json"), "spm (HF merges)", false);
  EXPECT_EQ(r.ok, r.total);
}

// The scores derived from the merges must make the sentencepiece algorithm reproduce HF's BPE:
// this is what a GGUF written from a tokenizer.json carries.
TEST(TokenizerHf, SentencePieceDerivedScores) {
  TokenizerData d = hf_data("spm");
  d.merges.clear();
  auto t = make(d);
  ASSERT_TRUE(t);
  const Tally r =
      check_golden(*t, read_json(kDir + "spm.golden.json"), "spm (derived scores)", false);
  EXPECT_EQ(r.ok, r.total);
}

// GGUF-style SentencePiece data (pieces, scores, types of the sentencepiece model itself) against
// sentencepiece's own encoder and HF's decoder.
TEST(TokenizerSpm, SentencePieceModelScores) {
  const json m = read_json(kDir + "spm.model.json");
  TokenizerData d;
  d.model = "llama";
  d.tokens = m["tokens"].get<std::vector<std::string>>();
  d.scores = m["scores"].get<std::vector<float>>();
  d.token_types = m["token_types"].get<std::vector<int32_t>>();
  d.bos_id = m["bos_id"];
  d.eos_id = m["eos_id"];
  d.unk_id = m["unk_id"];
  d.add_bos = true;
  d.add_space_prefix = m["add_space_prefix"];
  auto t = make(d);
  ASSERT_TRUE(t);
  const json g = read_json(kDir + "spm.golden.json");
  Tally tally;
  for (const json& c : g["cases"]) {
    const auto want = ids_of(c["ids_sentencepiece"]);
    const auto got = t->encode(c["text"].get<std::string>(), false, false);
    EXPECT_EQ(show(got), show(want)) << "case " << c["name"];
    tally.add(got == want);
    const auto ids = ids_of(c["ids"]);
    EXPECT_EQ(t->decode(ids, false), c["decoded"].get<std::string>()) << "case " << c["name"];
    tally.add(t->decode(ids, false) == c["decoded"].get<std::string>());
  }
  std::printf("[sqz] %-22s %d/%d golden items match (%.1f%%)\n", "spm (sentencepiece)", tally.ok,
              tally.total, 100.0 * tally.ok / std::max(tally.total, 1));
  EXPECT_EQ(tally.ok, tally.total);
}

// ---------------------------------------------------------------------------------------------
// Default model (SmolLM2) from its GGUF
// ---------------------------------------------------------------------------------------------
class DefaultModelTokenizer : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string path = test::default_model_path();
    if (path.empty()) return;
    auto mf = gguf_open(path);
    ASSERT_TRUE(mf.ok()) << mf.status().message();
    data_ = new TokenizerData(mf.value()->tokenizer);
    auto t = Tokenizer::create(*data_);
    ASSERT_TRUE(t.ok()) << t.status().message();
    tok_ = t.value().release();
  }
  static void TearDownTestSuite() {
    delete tok_;
    delete data_;
    tok_ = nullptr;
    data_ = nullptr;
  }
  void SetUp() override {
    if (!tok_) GTEST_SKIP() << "default model not present";
  }
  static Tokenizer* tok_;
  static TokenizerData* data_;
};
Tokenizer* DefaultModelTokenizer::tok_ = nullptr;
TokenizerData* DefaultModelTokenizer::data_ = nullptr;

TEST_F(DefaultModelTokenizer, MatchesHuggingFace) {
  const json g = read_json(kDir + "smollm2.golden.json");
  EXPECT_EQ(data_->pre, "smollm");
  EXPECT_EQ(tok_->n_vocab(), g["n_vocab"].get<int>());
  EXPECT_EQ(tok_->bos(), g["bos_id"].get<int>());
  EXPECT_EQ(tok_->eos(), g["eos_id"].get<int>());
  EXPECT_EQ(tok_->eot(), tok_->token_id("<|im_end|>"));
  const Tally r = check_golden(*tok_, g, "smollm2 (GGUF)", true);
  EXPECT_EQ(r.ok, r.total);
}

// Negative control: without the Digits split (plain GPT-2 pre-tokenizer, which is what
// transformers' GGUF loader builds) some goldens must differ, so the fixture really pins down
// the SmolLM2 pre-tokenizer.
TEST_F(DefaultModelTokenizer, GoldensDiscriminatePreTokenizer) {
  TokenizerData d = *data_;
  d.pre = "gpt2";
  auto t = make(d);
  ASSERT_TRUE(t);
  int differ = 0;
  const json g = read_json(kDir + "smollm2.golden.json");
  for (const json& c : g["cases"])
    differ += t->encode(c["text"].get<std::string>(), false, true) != ids_of(c["ids"]);
  EXPECT_GT(differ, 0);
}

TEST_F(DefaultModelTokenizer, ChatPromptTokens) {
  // The rendered chat prompt tokenizes to single control tokens around the turns.
  const std::string p =
      chat_template_apply(chat_template_parse(data_->chat_template), {{"user", "Hi"}}, true, "");
  const auto ids = tok_->encode(p, false, true);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.front(), tok_->token_id("<|im_start|>"));
  EXPECT_TRUE(tok_->is_control(ids.front()));
  EXPECT_EQ(tok_->decode(ids, false), p);
}

TEST_F(DefaultModelTokenizer, StreamingPiecesConcatenate) {
  const json g = read_json(kDir + "smollm2.golden.json");
  for (const json& c : g["cases"]) {
    const auto ids = ids_of(c["ids"]);
    std::string bytes;
    for (int32_t id : ids) bytes += tok_->token_to_piece(id);
    if (c["name"] != "missing_bytes") {
      EXPECT_EQ(bytes, c["text"].get<std::string>()) << c["name"];
    }
  }
}

TEST_F(DefaultModelTokenizer, Speed) {
  const json g = read_json(kDir + "smollm2.golden.json");
  std::string doc;
  for (const json& c : g["cases"])
    if (c["name"] == "long_document") doc = c["text"];
  ASSERT_GT(doc.size(), 20000u);
  // ~100K characters: the document three times.
  const std::string text = doc + "\n" + doc + "\n" + doc;
  size_t n_tok = 0;
  double best = 1e30;
  for (int rep = 0; rep < 3; rep++) {
    const auto t0 = std::chrono::steady_clock::now();
    n_tok = tok_->encode(text, false, true).size();
    best = std::min(best,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::printf("[sqz] encode %zu chars -> %zu tokens in %.1f ms (%.2f M tokens/s)\n", text.size(),
              n_tok, best * 1e3, n_tok / best / 1e6);
  // A generous bound that only an accidental quadratic algorithm would break.
  EXPECT_LT(best, 2.0);

  // Pathological single pre-tokens: long runs merge in O(n log n).
  for (const std::string& s :
       {std::string(100000, ' '), std::string(100000, 'a'), std::string(30000, '\n') + "x"}) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto ids = tok_->encode(s, false, true);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(tok_->decode(ids, false), s);
    EXPECT_LT(dt, 2.0);
  }
}

TEST(TokenizerSpm, LongTextSpeed) {
  // Llama-2 style tokenizers see a whole segment as one word: the merge loops must stay
  // O(n log n) on ~100K characters.
  const json g = read_json(kDir + "spm.golden.json");
  std::string para;
  for (const json& c : g["cases"])
    if (c["name"] == "doc_paragraph") para = c["text"];
  std::string text;
  while (text.size() < 100000) text += para + "\n";
  for (bool merges : {true, false}) {
    TokenizerData d = hf_data("spm");
    if (!merges) d.merges.clear();
    auto t = make(d);
    ASSERT_TRUE(t);
    const auto t0 = std::chrono::steady_clock::now();
    const auto ids = t->encode(text, false, true);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("[sqz] spm (%s) encode %zu chars -> %zu tokens in %.1f ms\n",
                merges ? "merges" : "scores", text.size(), ids.size(), dt * 1e3);
    EXPECT_EQ(t->decode(ids, false), text);
    EXPECT_LT(dt, 2.0);
  }
}

// ---------------------------------------------------------------------------------------------
// Properties on random input
// ---------------------------------------------------------------------------------------------
std::string random_utf8(std::mt19937_64& rng, size_t n_chars) {
  // A mix of ASCII, Latin-1, CJK, emoji and white space, plus some raw control bytes.
  static const uint32_t pools[][2] = {{0x20, 0x7E},       {0xA0, 0x17F}, {0x4E00, 0x4FFF},
                                      {0x1F300, 0x1F64F}, {0x0, 0x1F},   {0x2000, 0x206F}};
  std::string s;
  for (size_t i = 0; i < n_chars; i++) {
    const auto& p = pools[rng() % 6];
    const uint32_t cp = p[0] + (uint32_t)(rng() % (p[1] - p[0] + 1));
    if (cp < 0x80) {
      s += (char)cp;
    } else if (cp < 0x800) {
      s += (char)(0xC0 | (cp >> 6));
      s += (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      s += (char)(0xE0 | (cp >> 12));
      s += (char)(0x80 | ((cp >> 6) & 0x3F));
      s += (char)(0x80 | (cp & 0x3F));
    } else {
      s += (char)(0xF0 | (cp >> 18));
      s += (char)(0x80 | ((cp >> 12) & 0x3F));
      s += (char)(0x80 | ((cp >> 6) & 0x3F));
      s += (char)(0x80 | (cp & 0x3F));
    }
  }
  return s;
}

TEST(TokenizerProperties, ByteLevelRoundTripRandomText) {
  std::mt19937_64 rng(test::test_seed());
  for (const char* name : {"gpt2", "llama3", "qwen2"}) {
    auto t = make(hf_data(name));
    ASSERT_TRUE(t);
    for (int i = 0; i < 200; i++) {
      const std::string s = random_utf8(rng, 1 + rng() % 80);
      const auto ids = t->encode(s, false, false);
      ASSERT_EQ(t->decode(ids, false), s) << name;
      for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < t->n_vocab());
    }
    // Arbitrary bytes (invalid UTF-8 included) still round-trip through the byte alphabet.
    std::string bytes;
    for (int i = 0; i < 512; i++) bytes += (char)(rng() & 0xFF);
    std::string joined;
    for (int32_t id : t->encode(bytes, false, false)) joined += t->token_to_piece(id);
    EXPECT_EQ(joined, bytes) << name;
  }
}

TEST(TokenizerProperties, SpmRandomTextDecodesBack) {
  // With byte fallback every character is representable: decode(encode(x)) == x (the leading
  // space the encoder adds is stripped again by the decoder).
  std::mt19937_64 rng(test::test_seed() + 1);
  auto t = make(hf_data("spm"));
  ASSERT_TRUE(t);
  for (int i = 0; i < 200; i++) {
    const std::string s = random_utf8(rng, 1 + rng() % 60);
    ASSERT_EQ(t->decode(t->encode(s, false, false), false), s);
  }
}

// ---------------------------------------------------------------------------------------------
// Chat templates
// ---------------------------------------------------------------------------------------------
TEST(ChatTemplate, MatchesTransformers) {
  const json g = read_json(kDir + "chat_templates.golden.json");
  Tally tally;
  for (const json& c : g["cases"]) {
    const std::string src = g["templates"][c["template"].get<std::string>()];
    const ChatTemplateInfo info = chat_template_parse(src);
    std::vector<ChatMessage> msgs;
    for (const json& m : c["messages"]) msgs.push_back({m["role"], m["content"]});
    const std::string got = chat_template_apply(info, msgs, c["add_generation_prompt"].get<bool>(),
                                                c["bos_text"], c["eos_text"]);
    EXPECT_EQ(got, c["output"].get<std::string>())
        << c["template"] << " / " << c["conversation"] << " gen=" << c["add_generation_prompt"];
    tally.add(got == c["output"].get<std::string>());
  }
  std::printf("[sqz] chat templates %d/%d match\n", tally.ok, tally.total);
  EXPECT_EQ(tally.ok, tally.total);
  EXPECT_GT(tally.total, 30);
}

TEST(ChatTemplate, Detect) {
  const json g = read_json(kDir + "chat_templates.golden.json");
  EXPECT_EQ(chat_template_detect(g["templates"]["chatml"]), ChatTemplate::kChatML);
  EXPECT_EQ(chat_template_detect(g["templates"]["llama2"]), ChatTemplate::kLlama2);
  EXPECT_EQ(chat_template_detect(g["templates"]["llama3"]), ChatTemplate::kLlama3);
  EXPECT_EQ(chat_template_detect(""), ChatTemplate::kChatML);
  EXPECT_EQ(chat_template_parse(g["templates"]["chatml"]).default_system,
            "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  // A template that only interpolates the system message has no default.
  EXPECT_EQ(chat_template_parse("{{'<|im_start|>system\\n' + messages[0]['content'] + "
                                "'<|im_end|>'}}")
                .default_system,
            "");
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------
TEST(TokenizerErrors, BadInputsAreReported) {
  auto bad = tokenizer_data_from_hf_json("{not json", "");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), Code::kFormat);

  auto wordpiece =
      tokenizer_data_from_hf_json(R"({"model": {"type": "WordPiece", "vocab": {}}})", "");
  ASSERT_FALSE(wordpiece.ok());
  EXPECT_EQ(wordpiece.status().code(), Code::kUnsupported);

  auto wrong_types = tokenizer_data_from_hf_json(R"({"model": {"type": "BPE", "vocab": []}})", "");
  ASSERT_FALSE(wrong_types.ok());
  EXPECT_EQ(wrong_types.status().code(), Code::kFormat);

  TokenizerData empty;
  empty.model = "gpt2";
  EXPECT_FALSE(Tokenizer::create(empty).ok());

  TokenizerData d = hf_data("gpt2");
  d.pre = "no-such-pre";
  auto t = Tokenizer::create(d);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), Code::kUnsupported);

  d = hf_data("gpt2");
  d.merges.push_back("notatoken alsonot");
  EXPECT_EQ(Tokenizer::create(d).status().code(), Code::kFormat);

  d = hf_data("gpt2");
  d.bos_id = (int32_t)d.tokens.size();
  EXPECT_EQ(Tokenizer::create(d).status().code(), Code::kFormat);

  d = hf_data("gpt2");
  d.model = "wordpiece";
  EXPECT_EQ(Tokenizer::create(d).status().code(), Code::kUnsupported);
}

TEST(TokenizerErrors, OutOfRangeIdsAreIgnored) {
  auto t = make(hf_data("gpt2"));
  ASSERT_TRUE(t);
  const int32_t a = t->encode("a", false, false).at(0);
  EXPECT_EQ(t->decode({-5, a, t->n_vocab(), a}, false), "aa");
  EXPECT_EQ(t->token_to_piece(-1), "");
  EXPECT_EQ(t->token_id("definitely-not-a-token"), -1);
}

}  // namespace
}  // namespace sqz
