// Hugging Face directory reader tests. The safetensors files are assembled here byte by byte
// from the format description (8-byte header length, JSON header, data), independently of the
// reader; expected values are the ones the tests write.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "core/fp16.h"
#include "formats/model_file.h"
#include "formats/safetensors.h"
#include "util/test_util.h"

namespace sqz {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Bytes = std::vector<uint8_t>;

struct StTensor {
  std::string name;
  std::string dtype;           // "F32", "F16", "BF16", ...
  std::vector<int64_t> shape;  // outermost first, as in PyTorch
  Bytes data;
};

// resize + memcpy: GCC 12 reports a false -Warray-bounds on vector::insert here.
void append(Bytes& b, const void* p, size_t n) {
  if (n == 0) return;
  const size_t at = b.size();
  b.resize(at + n);
  std::memcpy(b.data() + at, p, n);
}

size_t elem_size(const std::string& dt) {
  return dt == "F32" ? 4 : 2;
}

// Header padded with spaces to a multiple of 8 (as the reference library does); data packed in
// the given order without padding.
Bytes make_safetensors(const std::vector<StTensor>& ts, const json& extra = json::object()) {
  json h = extra;
  uint64_t off = 0;
  for (const auto& t : ts) {
    h[t.name] = {
        {"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {off, off + t.data.size()}}};
    off += t.data.size();
  }
  std::string hs = h.dump();
  while (hs.size() % 8) hs += ' ';
  Bytes b(8);
  const uint64_t n = hs.size();
  std::memcpy(b.data(), &n, 8);
  append(b, hs.data(), hs.size());
  for (const auto& t : ts) append(b, t.data.data(), t.data.size());
  return b;
}

StTensor rand_tensor(std::mt19937_64& rng, const std::string& name, const std::string& dtype,
                     std::vector<int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  StTensor t{name, dtype, shape, Bytes((size_t)n * elem_size(dtype))};
  std::normal_distribution<float> nd(0.f, 1.f);
  for (int64_t i = 0; i < n; i++) {
    const float v = nd(rng);
    if (dtype == "F32") {
      std::memcpy(t.data.data() + 4 * i, &v, 4);
    } else {
      const uint16_t h = dtype == "F16" ? fp32_to_fp16(v) : fp32_to_bf16(v);
      std::memcpy(t.data.data() + 2 * i, &h, 2);
    }
  }
  return t;
}

class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() /
            fmt::format("sqz_test_st_{}_{}", getpid(), std::random_device{}());
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string path() const { return path_.string(); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

void write_file(const std::string& path, const Bytes& b) {
  std::ofstream out(path, std::ios::binary);
  out.write((const char*)b.data(), (std::streamsize)b.size());
}
void write_file(const std::string& path, const std::string& s) {
  std::ofstream out(path, std::ios::binary);
  out << s;
}

json llama_config() {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"model_type", "llama"},
          {"vocab_size", 6},
          {"hidden_size", 8},
          {"num_hidden_layers", 2},
          {"num_attention_heads", 2},
          {"num_key_value_heads", 1},
          {"intermediate_size", 16},
          {"max_position_embeddings", 128},
          {"rms_norm_eps", 1e-5},
          {"rope_theta", 500000.0},
          {"rope_scaling",
           {{"rope_type", "llama3"},
            {"factor", 8.0},
            {"low_freq_factor", 1.0},
            {"high_freq_factor", 4.0},
            {"original_max_position_embeddings", 8192}}},
          {"tie_word_embeddings", false}};
}

// Byte-level BPE tokenizer.json with six tokens and one merge.
const char* kTokenizerJson = R"({
  "version": "1.0",
  "added_tokens": [{"id": 0, "content": "<|endoftext|>", "special": true},
                   {"id": 5, "content": "<|im_end|>", "special": true}],
  "normalizer": null,
  "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                    "use_regex": true},
  "post_processor": null,
  "decoder": {"type": "ByteLevel"},
  "model": {"type": "BPE", "vocab": {"<|endoftext|>": 0, "a": 1, "b": 2, "ab": 3, "Ġ": 4,
            "<|im_end|>": 5}, "merges": ["a b"]}
})";
const char* kTokenizerConfig =
    R"({"eos_token": "<|im_end|>", "chat_template": "{% for m in messages %}<|im_start|>{% endfor %}"})";

// HF tensors of a 2-layer llama with the config above (hidden 8, kv dim 4, ffn 16, vocab 6).
std::vector<StTensor> llama_tensors(std::mt19937_64& rng, bool lm_head, bool bias) {
  std::vector<StTensor> ts;
  ts.push_back(rand_tensor(rng, "model.embed_tokens.weight", "BF16", {6, 8}));
  ts.push_back(rand_tensor(rng, "model.norm.weight", "F32", {8}));
  if (lm_head) ts.push_back(rand_tensor(rng, "lm_head.weight", "F16", {6, 8}));
  for (int l = 0; l < 2; l++) {
    const std::string p = fmt::format("model.layers.{}.", l);
    ts.push_back(rand_tensor(rng, p + "input_layernorm.weight", l == 0 ? "BF16" : "F16", {8}));
    ts.push_back(rand_tensor(rng, p + "self_attn.q_proj.weight", "F32", {8, 8}));
    ts.push_back(rand_tensor(rng, p + "self_attn.k_proj.weight", "BF16", {4, 8}));
    ts.push_back(rand_tensor(rng, p + "self_attn.v_proj.weight", "F16", {4, 8}));
    if (bias) {
      ts.push_back(rand_tensor(rng, p + "self_attn.q_proj.bias", "F32", {8}));
      ts.push_back(rand_tensor(rng, p + "self_attn.k_proj.bias", "F32", {4}));
      ts.push_back(rand_tensor(rng, p + "self_attn.v_proj.bias", "F32", {4}));
    }
    ts.push_back(rand_tensor(rng, p + "self_attn.o_proj.weight", "F32", {8, 8}));
    ts.push_back(rand_tensor(rng, p + "post_attention_layernorm.weight", "F32", {8}));
    ts.push_back(rand_tensor(rng, p + "mlp.gate_proj.weight", "BF16", {16, 8}));
    ts.push_back(rand_tensor(rng, p + "mlp.up_proj.weight", "F32", {16, 8}));
    ts.push_back(rand_tensor(rng, p + "mlp.down_proj.weight", "F32", {8, 16}));
  }
  return ts;
}

void write_dir(const TempDir& d, const json& cfg, const std::vector<StTensor>& ts) {
  write_file(d.file("config.json"), cfg.dump(2));
  write_file(d.file("model.safetensors"), make_safetensors(ts));
  write_file(d.file("tokenizer.json"), std::string(kTokenizerJson));
  write_file(d.file("tokenizer_config.json"), std::string(kTokenizerConfig));
}

void expect_tensors_match(const ModelFile& mf, const std::vector<StTensor>& ts) {
  for (const auto& w : ts) {
    const std::string gname = hf_tensor_name_to_gguf(w.name);
    SCOPED_TRACE(gname);
    const TensorView* t = mf.find(gname);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->n_dims, (int)w.shape.size());
    for (size_t d = 0; d < w.shape.size(); d++)
      EXPECT_EQ(t->ne[d], w.shape[w.shape.size() - 1 - d]);
    if (w.shape.size() <= 1 && w.dtype != "F32") {
      // 1-D half tensors (norms, biases) are widened to F32; the conversion is exact.
      EXPECT_EQ(t->type, DType::kF32);
      ASSERT_EQ(t->nbytes, w.data.size() * 2);
      EXPECT_EQ((uintptr_t)t->data % 4, 0u);
      for (size_t i = 0; i < w.data.size() / 2; i++) {
        uint16_t h;
        std::memcpy(&h, w.data.data() + 2 * i, 2);
        const float want = w.dtype == "F16" ? fp16_to_fp32_portable(h) : bf16_to_fp32(h);
        EXPECT_EQ(((const float*)t->data)[i], want) << i;
      }
      continue;
    }
    EXPECT_EQ(t->type, w.dtype == "F32"   ? DType::kF32
                       : w.dtype == "F16" ? DType::kF16
                                          : DType::kBF16);
    ASSERT_EQ(t->nbytes, w.data.size());
    EXPECT_EQ(std::memcmp(t->data, w.data.data(), t->nbytes), 0);
    EXPECT_EQ((uintptr_t)t->data % elem_size(w.dtype), 0u);
  }
}

// Error code plus a message naming `where` and containing every needle.
template <typename R>
void expect_err(const R& r, Code code, const std::string& where,
                std::initializer_list<std::string> needles) {
  ASSERT_FALSE(r.ok()) << "expected error mentioning " << *needles.begin();
  EXPECT_EQ((int)r.status().code(), (int)code) << r.status().message();
  EXPECT_NE(r.status().message().find(where), std::string::npos) << r.status().message();
  for (const auto& n : needles)
    EXPECT_NE(r.status().message().find(n), std::string::npos)
        << "'" << n << "' not in: " << r.status().message();
}

// ---------------------------------------------------------------------------------------------

TEST(SafetensorsNames, HfToGguf) {
  EXPECT_EQ(hf_tensor_name_to_gguf("model.embed_tokens.weight"), "token_embd.weight");
  EXPECT_EQ(hf_tensor_name_to_gguf("model.norm.weight"), "output_norm.weight");
  EXPECT_EQ(hf_tensor_name_to_gguf("lm_head.weight"), "output.weight");
  EXPECT_EQ(hf_tensor_name_to_gguf("model.layers.0.input_layernorm.weight"),
            "blk.0.attn_norm.weight");
  EXPECT_EQ(hf_tensor_name_to_gguf("model.layers.12.self_attn.q_proj.weight"),
            "blk.12.attn_q.weight");
  EXPECT_EQ(hf_tensor_name_to_gguf("model.layers.3.self_attn.k_proj.bias"), "blk.3.attn_k.bias");
  EXPECT_EQ(hf_tensor_name_to_gguf("model.layers.3.self_attn.v_proj.weight"),
            "blk.3.attn_v.weight");
  EXPECT_EQ(hf_tensor_name_to_gguf("model.layers.3.self_attn.o_proj.weight"),
            "blk.3.attn_output.weight");
  EXPECT_EQ(hf_tensor_name_to_gguf("model.layers.7.post_attention_layernorm.weight"),
            "blk.7.ffn_norm.weight");
  EXPECT_EQ(hf_tensor_name_to_gguf("model.layers.7.mlp.gate_proj.weight"), "blk.7.ffn_gate.weight");
  EXPECT_EQ(hf_tensor_name_to_gguf("model.layers.7.mlp.up_proj.weight"), "blk.7.ffn_up.weight");
  EXPECT_EQ(hf_tensor_name_to_gguf("model.layers.7.mlp.down_proj.weight"), "blk.7.ffn_down.weight");
  // Unknown or malformed names pass through unchanged.
  EXPECT_EQ(hf_tensor_name_to_gguf("model.rotary_emb.inv_freq"), "model.rotary_emb.inv_freq");
  EXPECT_EQ(hf_tensor_name_to_gguf("model.layers.x.mlp.up_proj.weight"),
            "model.layers.x.mlp.up_proj.weight");
  EXPECT_EQ(hf_tensor_name_to_gguf("model.layers.1.mlp.up_proj.scales"),
            "model.layers.1.mlp.up_proj.scales");
}

TEST(SafetensorsDir, TinyLlamaLoadsAndMaps) {
  std::mt19937_64 rng(sqz::test::test_seed());
  TempDir d;
  auto ts = llama_tensors(rng, /*lm_head=*/true, /*bias=*/false);
  ts.push_back(rand_tensor(rng, "model.rotary_emb.inv_freq", "F32", {2}));
  write_dir(d, llama_config(), ts);
  auto r = model_file_open(d.path());
  ASSERT_TRUE(r.ok()) << r.status().message();
  const ModelFile& mf = *r.value();
  EXPECT_EQ(mf.format, "safetensors");
  EXPECT_EQ(mf.tensors.size(), ts.size());
  expect_tensors_match(mf, ts);
  EXPECT_TRUE(mf.require("blk.1.ffn_down.weight", {16, 8}).ok());
  EXPECT_TRUE(mf.require("blk.0.attn_k.weight", {8, 4}).ok());
  EXPECT_NE(mf.find("model.rotary_emb.inv_freq"), nullptr);

  const ModelConfig& c = mf.config;
  EXPECT_EQ(c.arch, "llama");
  EXPECT_EQ(c.n_vocab, 6);
  EXPECT_EQ(c.n_embd, 8);
  EXPECT_EQ(c.n_layer, 2);
  EXPECT_EQ(c.n_head, 2);
  EXPECT_EQ(c.n_head_kv, 1);
  EXPECT_EQ(c.head_dim, 4);
  EXPECT_EQ(c.n_ff, 16);
  EXPECT_EQ(c.n_ctx_train, 128);
  EXPECT_FLOAT_EQ(c.rms_eps, 1e-5f);
  EXPECT_FLOAT_EQ(c.rope_theta, 500000.0f);
  EXPECT_TRUE(c.rope_neox);
  EXPECT_FLOAT_EQ(c.rope_scale_factor, 8.0f);
  EXPECT_FLOAT_EQ(c.rope_low_freq_factor, 1.0f);
  EXPECT_FLOAT_EQ(c.rope_high_freq_factor, 4.0f);
  EXPECT_EQ(c.rope_orig_ctx, 8192);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_FALSE(c.tied_embeddings);

  const TokenizerData& t = mf.tokenizer;
  EXPECT_EQ(t.model, "gpt2");
  ASSERT_EQ(t.tokens.size(), 6u);
  EXPECT_EQ(t.tokens[3], "ab");
  EXPECT_EQ(t.merges, std::vector<std::string>{"a b"});
  EXPECT_EQ(t.eos_id, 5);
  EXPECT_NE(t.chat_template.find("<|im_start|>"), std::string::npos);
}

TEST(SafetensorsDir, Qwen2BiasTiedHeadDimAndMisalignedData) {
  std::mt19937_64 rng(sqz::test::test_seed());
  TempDir d;
  json cfg = llama_config();
  cfg["architectures"] = {"Qwen2ForCausalLM"};
  cfg["tie_word_embeddings"] = true;
  cfg["head_dim"] = 6;
  cfg["rope_scaling"] = nullptr;
  // A 3-element BF16 tensor first puts every later tensor 2 bytes off 4-byte alignment.
  std::vector<StTensor> ts = {rand_tensor(rng, "odd", "BF16", {3})};
  for (auto& t : llama_tensors(rng, /*lm_head=*/false, /*bias=*/true)) ts.push_back(std::move(t));
  write_dir(d, cfg, ts);
  auto r = safetensors_open(d.path());
  ASSERT_TRUE(r.ok()) << r.status().message();
  const ModelFile& mf = *r.value();
  expect_tensors_match(mf, ts);  // includes the alignment check on every data pointer
  EXPECT_FALSE(mf.owned.empty());
  EXPECT_EQ(mf.config.arch, "qwen2");
  EXPECT_EQ(mf.config.head_dim, 6);
  EXPECT_TRUE(mf.config.qkv_bias);
  EXPECT_TRUE(mf.config.tied_embeddings);
  EXPECT_TRUE(mf.config.rope_neox);
  EXPECT_EQ(mf.config.rope_scale_factor, 0.0f);
  EXPECT_TRUE(mf.require("blk.1.attn_v.bias", {4}).ok());
}

TEST(SafetensorsDir, ShardsAndIndex) {
  std::mt19937_64 rng(sqz::test::test_seed());
  TempDir d;
  auto ts = llama_tensors(rng, true, false);
  const size_t half = ts.size() / 2;
  std::vector<StTensor> a(ts.begin(), ts.begin() + half), b(ts.begin() + half, ts.end());
  write_file(d.file("config.json"), llama_config().dump());
  write_file(d.file("tokenizer.json"), std::string(kTokenizerJson));
  write_file(d.file("model-00001-of-00002.safetensors"),
             make_safetensors(a, {{"__metadata__", {{"format", "pt"}}}}));
  write_file(d.file("model-00002-of-00002.safetensors"), make_safetensors(b));
  json wm;
  for (const auto& t : a) wm[t.name] = "model-00001-of-00002.safetensors";
  for (const auto& t : b) wm[t.name] = "model-00002-of-00002.safetensors";
  write_file(d.file("model.safetensors.index.json"), json{{"weight_map", wm}}.dump());
  {
    auto r = safetensors_open(d.path());
    ASSERT_TRUE(r.ok()) << r.status().message();
    EXPECT_EQ(r.value()->tensors.size(), ts.size());
    EXPECT_EQ(r.value()->mappings.size(), 2u);
    expect_tensors_match(*r.value(), ts);
    EXPECT_TRUE(r.value()->tokenizer.chat_template.empty());  // no tokenizer_config.json
  }
  // Index pointing at the wrong shard.
  wm[a[0].name] = "model-00002-of-00002.safetensors";
  write_file(d.file("model.safetensors.index.json"), json{{"weight_map", wm}}.dump());
  expect_err(safetensors_open(d.path()), Code::kFormat, "model.safetensors.index.json",
             {a[0].name});
  // Index listing a tensor that no shard has.
  wm[a[0].name] = "model-00001-of-00002.safetensors";
  wm["model.layers.9.mlp.up_proj.weight"] = "model-00003-of-00003.safetensors";
  write_file(d.file("model.safetensors.index.json"), json{{"weight_map", wm}}.dump());
  expect_err(safetensors_open(d.path()), Code::kFormat, "model.safetensors.index.json",
             {"model.layers.9.mlp.up_proj.weight", "not found"});
  fs::remove(d.file("model.safetensors.index.json"));
  // The same tensor in two shards.
  write_file(d.file("model-00002-of-00002.safetensors"), make_safetensors({a[0], b[0]}));
  expect_err(safetensors_open(d.path()), Code::kFormat, "model-00002-of-00002.safetensors",
             {a[0].name, "also appears"});
}

TEST(SafetensorsMalformed, HeaderErrors) {
  std::mt19937_64 rng(sqz::test::test_seed());
  const std::vector<StTensor> ok_ts = {rand_tensor(rng, "x", "F32", {3, 2}),
                                       rand_tensor(rng, "y", "BF16", {4})};
  auto parse = [](const Bytes& b) -> Result<std::vector<TensorView>> {
    std::vector<TensorView> out;
    std::vector<std::vector<uint8_t>> owned;
    Status st = safetensors_parse_memory(b.data(), b.size(), "f.safetensors", out, owned);
    if (!st.ok()) return st;
    return out;
  };
  const Bytes good = make_safetensors(ok_ts);
  ASSERT_TRUE(parse(good).ok());

  // Every truncation fails cleanly (the data section ends exactly at the end of the file).
  for (size_t n = 0; n < good.size(); n++) {
    const Bytes b(good.begin(), good.begin() + n);
    auto r = parse(b);
    ASSERT_FALSE(r.ok()) << n;
    EXPECT_EQ((int)r.status().code(), (int)Code::kFormat);
    EXPECT_NE(r.status().message().find("f.safetensors"), std::string::npos);
  }
  {
    Bytes b = good;
    const uint64_t n = 1ull << 62;
    std::memcpy(b.data(), &n, 8);
    expect_err(parse(b), Code::kFormat, "f.safetensors", {"header length"});
  }
  auto with_header = [](const std::string& h) {
    Bytes b(8);
    const uint64_t n = h.size();
    std::memcpy(b.data(), &n, 8);
    append(b, h.data(), h.size());
    b.resize(b.size() + 64, 0);
    return b;
  };
  expect_err(parse(with_header("{\"x\": {")), Code::kFormat, "f.safetensors", {"JSON"});
  expect_err(parse(with_header("[1, 2]")), Code::kFormat, "f.safetensors", {"object"});
  expect_err(parse(with_header(R"({"__metadata__": 3})")), Code::kFormat, "f.safetensors",
             {"__metadata__"});
  expect_err(parse(with_header(R"({"x": 3})")), Code::kFormat, "f.safetensors", {"tensor 'x'"});
  expect_err(parse(with_header(R"({"x": {"shape": [2], "data_offsets": [0, 8]}})")), Code::kFormat,
             "f.safetensors", {"tensor 'x'", "dtype"});
  expect_err(
      parse(with_header(R"({"x": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}})")),
      Code::kUnsupported, "f.safetensors", {"tensor 'x'", "I64"});
  expect_err(
      parse(with_header(R"({"x": {"dtype": "F32", "shape": [2, 0], "data_offsets": [0, 0]}})")),
      Code::kFormat, "f.safetensors", {"tensor 'x'", "shape[1]"});
  expect_err(
      parse(with_header(R"({"x": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})")),
      Code::kFormat, "f.safetensors", {"tensor 'x'", "shape[0]"});
  expect_err(parse(with_header(
                 R"({"x": {"dtype": "F32", "shape": [1,1,1,1,1], "data_offsets": [0, 4]}})")),
             Code::kFormat, "f.safetensors", {"tensor 'x'", "dims"});
  expect_err(
      parse(with_header(
          R"({"x": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 4]}})")),
      Code::kFormat, "f.safetensors", {"tensor 'x'", "overflow"});
  expect_err(
      parse(with_header(R"({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 12]}})")),
      Code::kFormat, "f.safetensors", {"tensor 'x'", "data_offsets", "needs 8"});
  expect_err(parse(with_header(R"({"x": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})")),
             Code::kFormat, "f.safetensors", {"tensor 'x'", "data_offsets"});
  expect_err(
      parse(with_header(R"({"x": {"dtype": "F32", "shape": [32], "data_offsets": [0, 128]}})")),
      Code::kFormat, "f.safetensors", {"tensor 'x'", "outside"});
  expect_err(parse(with_header(R"({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0]}})")),
             Code::kFormat, "f.safetensors", {"tensor 'x'", "data_offsets"});
  expect_err(
      parse(with_header(R"({"x": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}})")),
      Code::kFormat, "f.safetensors", {"tensor 'x'", "data_offsets"});
}

TEST(SafetensorsMalformed, DirectoryErrors) {
  std::mt19937_64 rng(sqz::test::test_seed());
  const auto ts = llama_tensors(rng, true, false);
  {
    TempDir d;
    write_dir(d, llama_config(), ts);
    fs::remove(d.file("config.json"));
    expect_err(safetensors_open(d.path()), Code::kIo, "config.json", {"cannot open"});
  }
  {
    TempDir d;
    write_dir(d, llama_config(), ts);
    write_file(d.file("config.json"), std::string("{not json"));
    expect_err(safetensors_open(d.path()), Code::kFormat, "config.json", {"JSON"});
  }
  {
    TempDir d;
    json cfg = llama_config();
    cfg["architectures"] = {"GPT2LMHeadModel"};
    write_dir(d, cfg, ts);
    expect_err(safetensors_open(d.path()), Code::kUnsupported, "config.json", {"GPT2LMHeadModel"});
  }
  for (const char* key : {"hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size"}) {
    TempDir d;
    json cfg = llama_config();
    cfg.erase(key);
    write_dir(d, cfg, ts);
    expect_err(safetensors_open(d.path()), Code::kFormat, "config.json", {key, "missing"});
  }
  {
    TempDir d;
    json cfg = llama_config();
    cfg["hidden_size"] = "eight";
    write_dir(d, cfg, ts);
    expect_err(safetensors_open(d.path()), Code::kFormat, "config.json", {"hidden_size"});
  }
  {
    TempDir d;
    json cfg = llama_config();
    cfg["num_key_value_heads"] = 3;
    write_dir(d, cfg, ts);
    expect_err(safetensors_open(d.path()), Code::kFormat, "config.json", {"num_key_value_heads"});
  }
  {
    TempDir d;
    json cfg = llama_config();
    cfg["rope_scaling"] = {{"type", "yarn"}, {"factor", 4.0}};
    write_dir(d, cfg, ts);
    expect_err(safetensors_open(d.path()), Code::kUnsupported, "config.json",
               {"rope_scaling", "yarn"});
  }
  {
    TempDir d;
    json cfg = llama_config();
    cfg["rope_scaling"]["high_freq_factor"] = 0.5;  // < low_freq_factor
    write_dir(d, cfg, ts);
    expect_err(safetensors_open(d.path()), Code::kFormat, "config.json", {"rope_scaling"});
  }
  {
    TempDir d;
    write_dir(d, llama_config(), llama_tensors(rng, /*lm_head=*/false, false));
    expect_err(safetensors_open(d.path()), Code::kFormat, "config.json",
               {"lm_head.weight", "tie_word_embeddings"});
  }
  {
    TempDir d;
    write_dir(d, llama_config(), ts);
    fs::remove(d.file("model.safetensors"));
    expect_err(safetensors_open(d.path()), Code::kIo, d.path(), {"safetensors"});
  }
  {
    TempDir d;
    write_dir(d, llama_config(), ts);
    fs::remove(d.file("tokenizer.json"));
    expect_err(safetensors_open(d.path()), Code::kIo, "tokenizer.json", {"cannot open"});
  }
  {
    TempDir d;
    write_dir(d, llama_config(), ts);
    Bytes b = make_safetensors(ts);
    b.resize(b.size() - 1);
    write_file(d.file("model.safetensors"), b);
    expect_err(safetensors_open(d.path()), Code::kFormat, "model.safetensors", {"outside"});
  }
  {
    // Two HF names mapping to one GGUF name.
    TempDir d;
    auto ts2 = ts;
    ts2.push_back(ts[0]);
    ts2.back().name = "token_embd.weight";
    write_dir(d, llama_config(), ts2);
    expect_err(safetensors_open(d.path()), Code::kFormat, "model.safetensors",
               {"token_embd.weight", "already exists"});
  }
}

}  // namespace
}  // namespace sqz
