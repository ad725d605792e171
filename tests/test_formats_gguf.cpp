// GGUF reader / writer / random-model generator tests.
// Independent references: a hand-rolled spec encoder (Enc) below, the default model's metadata
// as printed by the `gguf` Python package, and values chosen by the tests themselves.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "core/dtype.h"
#include "core/fp16.h"
#include "core/mmap_file.h"
#include "formats/gguf.h"
#include "formats/gguf_writer.h"
#include "formats/model_file.h"
#include "formats/random_model.h"
#include "util/test_util.h"

namespace sqz {
namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;

// Minimal GGUF encoder written straight from the spec, independent of GgufWriter.
struct Enc {
  Bytes b;
  template <typename T>
  Enc& put(T v) {
    const size_t n = b.size();
    b.resize(n + sizeof(T));
    std::memcpy(b.data() + n, &v, sizeof(T));
    return *this;
  }
  Enc& str(const std::string& s) {
    put<uint64_t>(s.size());
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  Enc& kv_u32(const std::string& k, uint32_t v) {
    str(k).put<uint32_t>(gguf::kU32).put<uint32_t>(v);
    return *this;
  }
  Enc& kv_str(const std::string& k, const std::string& v) {
    str(k).put<uint32_t>(gguf::kString).str(v);
    return *this;
  }
  Enc& pad(size_t a) {
    b.resize((b.size() + a - 1) / a * a, 0);
    return *this;
  }
};

// The llama keys gguf_open needs to fill a ModelConfig (written by the Enc helper).
constexpr int kMinLlamaKeys = 7;
void enc_min_llama(Enc& e) {
  e.kv_str("general.architecture", "llama")
      .kv_u32("llama.embedding_length", 64)
      .kv_u32("llama.block_count", 1)
      .kv_u32("llama.attention.head_count", 4)
      .kv_u32("llama.feed_forward_length", 128)
      .kv_u32("llama.context_length", 256)
      .kv_u32("llama.vocab_size", 300);
}
void add_min_llama(GgufWriter& w) {
  w.add_string("general.architecture", "llama");
  w.add_u32("llama.embedding_length", 64);
  w.add_u32("llama.block_count", 1);
  w.add_u32("llama.attention.head_count", 4);
  w.add_u32("llama.feed_forward_length", 128);
  w.add_u32("llama.context_length", 256);
  w.add_u32("llama.vocab_size", 300);
}

class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() /
            fmt::format("sqz_test_gguf_{}_{}", getpid(), std::random_device{}());
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

void write_bytes(const std::string& path, const Bytes& b) {
  std::ofstream out(path, std::ios::binary);
  out.write((const char*)b.data(), (std::streamsize)b.size());
}

Bytes random_bytes(std::mt19937_64& rng, size_t n) {
  Bytes b(n);
  for (auto& x : b) x = (uint8_t)rng();
  return b;
}

// A small valid file: three tensors of different types, some tokenizer metadata.
Bytes valid_file(std::mt19937_64& rng) {
  GgufWriter w;
  add_min_llama(w);
  w.add_string("tokenizer.ggml.model", "gpt2");
  w.add_array_string("tokenizer.ggml.tokens", {"a", "b", "<|im_end|>", "c"});
  w.add_array_i32("tokenizer.ggml.token_type", {1, 1, 3, 1});
  w.add_array_f32("tokenizer.ggml.scores", {0.f, -1.f, -2.f, -3.f});
  w.add_u32("tokenizer.ggml.bos_token_id", 0);
  w.add_bool("tokenizer.ggml.add_bos_token", true);
  EXPECT_TRUE(w.add_tensor("t.f32", DType::kF32, {4, 3}, random_bytes(rng, 48).data(), 48).ok());
  EXPECT_TRUE(w.add_tensor("t.q4_0", DType::kQ4_0, {64, 2}, random_bytes(rng, 72).data(), 72).ok());
  EXPECT_TRUE(w.add_tensor("t.f16", DType::kF16, {8}, random_bytes(rng, 16).data(), 16).ok());
  auto b = w.to_bytes();
  EXPECT_TRUE(b.ok()) << b.status().message();
  return b.ok() ? b.value() : Bytes();
}

// Position of the tensor info of `name`: the byte right after the name string.
size_t tensor_info_pos(const Bytes& b, const std::string& name) {
  auto it = std::search(b.begin(), b.end(), name.begin(), name.end());
  EXPECT_NE(it, b.end()) << name;
  return (size_t)(it - b.begin()) + name.size();
}
template <typename T>
void poke(Bytes& b, size_t pos, T v) {
  ASSERT_LE(pos + sizeof(T), b.size());
  std::memcpy(b.data() + pos, &v, sizeof(T));
}

// Parses `b` both from memory and from a real file and checks the error code and that the
// message names the file and contains every `needles` entry.
void expect_error(const Bytes& b, Code code, std::initializer_list<std::string> needles) {
  auto r = gguf_open_memory(b.data(), b.size(), "mem.gguf");
  ASSERT_FALSE(r.ok()) << "expected an error containing " << *needles.begin();
  EXPECT_EQ((int)r.status().code(), (int)code) << r.status().message();
  EXPECT_NE(r.status().message().find("mem.gguf"), std::string::npos) << r.status().message();
  for (const auto& n : needles)
    EXPECT_NE(r.status().message().find(n), std::string::npos)
        << "'" << n << "' not in: " << r.status().message();
  TempDir dir;
  const std::string path = dir.file("bad.gguf");
  write_bytes(path, b);
  auto f = gguf_open(path);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ((int)f.status().code(), (int)code);
  EXPECT_NE(f.status().message().find(path), std::string::npos) << f.status().message();
}

// ---------------------------------------------------------------------------------------------

TEST(GgufSpec, HandEncodedFileParsesAndWriterMatchesIt) {
  std::mt19937_64 rng(sqz::test::test_seed());
  const Bytes q4 = random_bytes(rng, 2 * 18);  // Q4_0 {32, 2}: 2 blocks of 18 bytes
  Enc e;
  e.b = {'G', 'G', 'U', 'F'};
  e.put<uint32_t>(3).put<uint64_t>(1).put<uint64_t>(kMinLlamaKeys + 1);
  enc_min_llama(e);
  e.str("x.i16").put<uint32_t>(gguf::kI16).put<int16_t>(-7);
  e.str("w").put<uint32_t>(2).put<uint64_t>(32).put<uint64_t>(2).put<uint32_t>(2).put<uint64_t>(0);
  e.pad(32);
  const size_t data_start = e.b.size();
  e.b.insert(e.b.end(), q4.begin(), q4.end());
  e.pad(32);

  auto r = gguf_open_memory(e.b.data(), e.b.size(), "hand.gguf");
  ASSERT_TRUE(r.ok()) << r.status().message();
  const ModelFile& mf = *r.value();
  EXPECT_EQ(mf.version, 3u);
  EXPECT_EQ(std::get<int64_t>(mf.meta.at("x.i16")), -7);
  ASSERT_EQ(mf.tensors.size(), 1u);
  const TensorView& t = mf.tensors[0];
  EXPECT_EQ(t.name, "w");
  EXPECT_EQ(t.type, DType::kQ4_0);
  EXPECT_EQ(t.n_dims, 2);
  EXPECT_EQ(t.ne[0], 32);
  EXPECT_EQ(t.ne[1], 2);
  EXPECT_EQ(t.nbytes, 36u);
  EXPECT_EQ((const uint8_t*)t.data, e.b.data() + data_start);
  EXPECT_EQ(mf.config.head_dim, 16);  // 64 / 4 when no key_length / rope dim given
  EXPECT_EQ(mf.config.n_head_kv, 4);  // defaults to head_count
  EXPECT_EQ(mf.config.n_vocab, 300);  // llama.vocab_size without a token list

  // The writer must produce exactly the spec encoding.
  GgufWriter w;
  add_min_llama(w);
  w.add_i16("x.i16", -7);
  ASSERT_TRUE(w.add_tensor("w", DType::kQ4_0, {32, 2}, q4.data(), q4.size()).ok());
  auto wb = w.to_bytes();
  ASSERT_TRUE(wb.ok());
  EXPECT_EQ(wb.value(), e.b);

  // Version 2 has the same layout for little-endian files.
  Bytes v2 = e.b;
  poke<uint32_t>(v2, 4, 2);
  auto r2 = gguf_open_memory(v2.data(), v2.size(), "v2.gguf");
  ASSERT_TRUE(r2.ok()) << r2.status().message();
  EXPECT_EQ(r2.value()->version, 2u);
}

TEST(GgufRoundTrip, AllMetadataTypes) {
  GgufWriter w;
  add_min_llama(w);
  w.add_u8("m.u8", 255);
  w.add_i8("m.i8", -128);
  w.add_u16("m.u16", 65535);
  w.add_i16("m.i16", -32768);
  w.add_u32("m.u32", 4294967295u);
  w.add_i32("m.i32", INT32_MIN);
  w.add_u64("m.u64", UINT64_MAX);
  w.add_i64("m.i64", INT64_MIN);
  w.add_f32("m.f32", 1.5f);
  w.add_f64("m.f64", M_PI);
  w.add_bool("m.true", true);
  w.add_bool("m.false", false);
  w.add_string("m.str", std::string("h\xc3\xa9llo\0world", 12));
  w.add_string("m.empty", "");
  w.add_array_string("m.astr", {"x", "", "yz"});
  w.add_array_f32("m.af32", {0.25f, -2.0f});
  w.add_array_i32("m.ai32", {-1, 7, INT32_MAX});
  w.add_array_u32("m.au32", {});
  // Nested: array of arrays of int16, plus an array of bools via the generic path.
  auto inner1 = std::make_shared<MetaArray>();
  inner1->elem_type = gguf::kI16;
  inner1->values = {int64_t(-3), int64_t(4)};
  auto inner2 = std::make_shared<MetaArray>();
  inner2->elem_type = gguf::kI16;
  auto outer = std::make_shared<MetaArray>();
  outer->elem_type = gguf::kArray;
  outer->values = {inner1, inner2};
  w.add_value("m.nested", gguf::kArray, outer);
  auto bools = std::make_shared<MetaArray>();
  bools->elem_type = gguf::kBool;
  bools->values = {true, false, true};
  w.add_value("m.abool", gguf::kArray, bools);
  w.add_value("m.u16v", gguf::kU16, uint64_t(12345));
  ASSERT_TRUE(w.status().ok()) << w.status().message();

  TempDir dir;
  const std::string path = dir.file("meta.gguf");
  ASSERT_TRUE(w.write_file(path).ok());
  auto r = gguf_open(path);
  ASSERT_TRUE(r.ok()) << r.status().message();
  const auto& m = r.value()->meta;
  EXPECT_EQ(std::get<uint64_t>(m.at("m.u8")), 255u);
  EXPECT_EQ(std::get<int64_t>(m.at("m.i8")), -128);
  EXPECT_EQ(std::get<uint64_t>(m.at("m.u16")), 65535u);
  EXPECT_EQ(std::get<int64_t>(m.at("m.i16")), -32768);
  EXPECT_EQ(std::get<uint64_t>(m.at("m.u32")), 4294967295u);
  EXPECT_EQ(std::get<int64_t>(m.at("m.i32")), INT32_MIN);
  EXPECT_EQ(std::get<uint64_t>(m.at("m.u64")), UINT64_MAX);
  EXPECT_EQ(std::get<int64_t>(m.at("m.i64")), INT64_MIN);
  EXPECT_EQ(std::get<double>(m.at("m.f32")), 1.5);
  EXPECT_EQ(std::get<double>(m.at("m.f64")), M_PI);
  EXPECT_EQ(std::get<bool>(m.at("m.true")), true);
  EXPECT_EQ(std::get<bool>(m.at("m.false")), false);
  EXPECT_EQ(std::get<std::string>(m.at("m.str")), std::string("h\xc3\xa9llo\0world", 12));
  EXPECT_EQ(std::get<std::string>(m.at("m.empty")), "");
  EXPECT_EQ(std::get<uint64_t>(m.at("m.u16v")), 12345u);

  auto arr = [&](const char* k) { return std::get<std::shared_ptr<MetaArray>>(m.at(k)); };
  ASSERT_EQ(arr("m.astr")->elem_type, (uint32_t)gguf::kString);
  ASSERT_EQ(arr("m.astr")->values.size(), 3u);
  EXPECT_EQ(std::get<std::string>(arr("m.astr")->values[2]), "yz");
  EXPECT_EQ(std::get<std::string>(arr("m.astr")->values[1]), "");
  ASSERT_EQ(arr("m.af32")->values.size(), 2u);
  EXPECT_EQ(std::get<double>(arr("m.af32")->values[1]), -2.0);
  ASSERT_EQ(arr("m.ai32")->values.size(), 3u);
  EXPECT_EQ(std::get<int64_t>(arr("m.ai32")->values[0]), -1);
  EXPECT_EQ(std::get<int64_t>(arr("m.ai32")->values[2]), INT32_MAX);
  EXPECT_EQ(arr("m.au32")->elem_type, (uint32_t)gguf::kU32);
  EXPECT_TRUE(arr("m.au32")->values.empty());
  const auto nested = arr("m.nested");
  ASSERT_EQ(nested->elem_type, (uint32_t)gguf::kArray);
  ASSERT_EQ(nested->values.size(), 2u);
  const auto& n0 = std::get<std::shared_ptr<MetaArray>>(nested->values[0]);
  ASSERT_EQ(n0->values.size(), 2u);
  EXPECT_EQ(n0->elem_type, (uint32_t)gguf::kI16);
  EXPECT_EQ(std::get<int64_t>(n0->values[0]), -3);
  EXPECT_EQ(std::get<int64_t>(n0->values[1]), 4);
  EXPECT_TRUE(std::get<std::shared_ptr<MetaArray>>(nested->values[1])->values.empty());
  ASSERT_EQ(arr("m.abool")->values.size(), 3u);
  EXPECT_EQ(std::get<bool>(arr("m.abool")->values[1]), false);

  // Typed accessors.
  auto mi = meta_int(*r.value(), "m.i8");
  ASSERT_TRUE(mi.ok());
  EXPECT_EQ(*mi.value(), -128);
  EXPECT_FALSE(meta_int(*r.value(), "m.str").ok());
  EXPECT_FALSE(meta_int(*r.value(), "m.u64").ok());  // > INT64_MAX
  EXPECT_FALSE(meta_int(*r.value(), "m.u8", 0, 100).ok());
  EXPECT_FALSE(meta_int(*r.value(), "absent").value().has_value());
}

TEST(GgufWriter, RejectsBadInput) {
  GgufWriter w;
  w.add_u32("k", 1);
  w.add_u32("k", 2);
  EXPECT_FALSE(w.status().ok());
  EXPECT_FALSE(w.to_bytes().ok());

  GgufWriter w2;
  EXPECT_FALSE(w2.add_tensor("a", DType::kQ4_0, {33}, nullptr, 0).ok());  // not whole blocks
  EXPECT_FALSE(w2.add_tensor("a", DType::kF32, {1, 1, 1, 1, 1}, nullptr, 0).ok());
  float x[4] = {};
  EXPECT_FALSE(w2.add_tensor("a", DType::kF32, {4}, x, 12).ok());  // size mismatch
  EXPECT_TRUE(w2.add_tensor("a", DType::kF32, {4}, x, 16).ok());
  EXPECT_FALSE(w2.add_tensor("a", DType::kF32, {4}, x, 16).ok());  // duplicate
  GgufWriter w3;
  w3.add_value("v", gguf::kU8, uint64_t(256));  // does not fit
  EXPECT_FALSE(w3.status().ok());
}

TEST(GgufRoundTrip, AllTensorTypesShapesAndAlignments) {
  std::mt19937_64 rng(sqz::test::test_seed());
  const DType types[] = {DType::kF32,  DType::kF16,  DType::kBF16, DType::kQ4_0, DType::kQ4_1,
                         DType::kQ5_0, DType::kQ5_1, DType::kQ8_0, DType::kQ8_1, DType::kQ4_K,
                         DType::kQ5_K, DType::kQ6_K, DType::kQ8_K};
  for (uint32_t alignment : {32u, 64u, 256u, 1u}) {
    GgufWriter w(alignment);
    add_min_llama(w);
    struct Want {
      std::string name;
      DType type;
      std::vector<int64_t> ne;
      Bytes data;
    };
    std::vector<Want> want;
    int i = 0;
    for (DType t : types) {
      const DTypeTraits* tr = dtype_traits(t);
      ASSERT_NE(tr, nullptr);
      // Odd shapes, 1 to 4 dims.
      const std::vector<std::vector<int64_t>> shapes = {{tr->block_size * 3},
                                                        {tr->block_size, 5},
                                                        {tr->block_size * 2, 3, 2},
                                                        {tr->block_size, 1, 3, 2}};
      for (const auto& ne : shapes) {
        int64_t nel = 1;
        for (int64_t d : ne) nel *= d;
        const size_t nbytes = (size_t)(nel / tr->block_size) * tr->type_size;
        Want x{fmt::format("t{}.{}", i++, tr->name), t, ne, random_bytes(rng, nbytes)};
        ASSERT_TRUE(w.add_tensor(x.name, t, ne, x.data.data(), x.data.size()).ok());
        want.push_back(std::move(x));
      }
    }
    TempDir dir;
    const std::string path = dir.file("tensors.gguf");
    ASSERT_TRUE(w.write_file(path).ok());
    auto r = gguf_open(path);
    ASSERT_TRUE(r.ok()) << r.status().message();
    const ModelFile& mf = *r.value();
    ASSERT_EQ(mf.tensors.size(), want.size());
    const uint8_t* base = mf.mappings.at(0)->data();
    for (size_t k = 0; k < want.size(); k++) {
      const TensorView& t = mf.tensors[k];
      SCOPED_TRACE(t.name);
      EXPECT_EQ(t.name, want[k].name);
      EXPECT_EQ(t.type, want[k].type);
      EXPECT_EQ(t.n_dims, (int)want[k].ne.size());
      for (int d = 0; d < 4; d++)
        EXPECT_EQ(t.ne[d], d < (int)want[k].ne.size() ? want[k].ne[d] : 1);
      ASSERT_EQ(t.nbytes, want[k].data.size());
      EXPECT_EQ(std::memcmp(t.data, want[k].data.data(), t.nbytes), 0);
      EXPECT_EQ(((const uint8_t*)t.data - base) % alignment, 0u);
    }
    if (alignment != 32)
      EXPECT_EQ(std::get<uint64_t>(mf.meta.at("general.alignment")), alignment);
    else
      EXPECT_EQ(mf.meta.count("general.alignment"), 0u);
  }
}

TEST(GgufMalformed, HeaderErrors) {
  std::mt19937_64 rng(sqz::test::test_seed());
  const Bytes good = valid_file(rng);
  ASSERT_TRUE(gguf_open_memory(good.data(), good.size(), "good.gguf").ok());
  {
    Bytes b = good;
    b[0] = 'X';
    expect_error(b, Code::kFormat, {"magic"});
  }
  for (uint32_t v : {1u, 4u, 0x03000000u}) {
    Bytes b = good;
    poke<uint32_t>(b, 4, v);
    expect_error(b, Code::kUnsupported, {"version", std::to_string(v)});
  }
  {
    Bytes b = good;
    poke<uint64_t>(b, 8, 1ull << 60);
    expect_error(b, Code::kFormat, {"tensor count"});
  }
  {
    Bytes b = good;
    poke<uint64_t>(b, 16, UINT64_MAX);
    expect_error(b, Code::kFormat, {"metadata count"});
  }
  {
    Bytes b = good;
    poke<uint64_t>(b, 24, 1ull << 40);  // length of the first key
    expect_error(b, Code::kFormat, {"metadata #0 key", "string length"});
  }
  expect_error(Bytes{}, Code::kFormat, {"magic", "truncated"});
  expect_error(Bytes{'G', 'G', 'U', 'F', 3, 0}, Code::kFormat, {"version", "truncated"});
}

TEST(GgufMalformed, TruncatedAnywhere) {
  std::mt19937_64 rng(sqz::test::test_seed());
  const Bytes good = valid_file(rng);
  auto full = gguf_open_memory(good.data(), good.size(), "t.gguf");
  ASSERT_TRUE(full.ok());
  // Bytes after the end of the last tensor are padding; every shorter prefix must fail.
  size_t needed = 0;
  for (const auto& t : full.value()->tensors)
    needed = std::max(needed, (size_t)((const uint8_t*)t.data - good.data()) + t.nbytes);
  for (size_t n = 0; n < needed; n++) {
    Bytes b(good.begin(), good.begin() + n);  // own allocation so ASan sees the exact end
    auto r = gguf_open_memory(b.data(), b.size(), "t.gguf");
    ASSERT_FALSE(r.ok()) << "prefix " << n;
    EXPECT_EQ((int)r.status().code(), (int)Code::kFormat) << n << ": " << r.status().message();
    EXPECT_NE(r.status().message().find("t.gguf"), std::string::npos);
  }
  for (size_t n = needed; n <= good.size(); n++) {
    Bytes b(good.begin(), good.begin() + n);
    EXPECT_TRUE(gguf_open_memory(b.data(), b.size(), "t.gguf").ok()) << n;
  }
  // A truncated tensor surfaces as a data-bounds error naming the tensor.
  Bytes b(good.begin(), good.begin() + needed - 1);
  expect_error(b, Code::kFormat, {"tensor 't.f16'", "exceeds file size"});
}

TEST(GgufMalformed, TensorInfoErrors) {
  std::mt19937_64 rng(sqz::test::test_seed());
  const Bytes good = valid_file(rng);
  const size_t q = tensor_info_pos(good, "t.q4_0");  // n_dims=2, ne[2], type, offset
  const size_t q_type = q + 4 + 16, q_off = q_type + 4;
  {
    Bytes b = good;
    poke<uint32_t>(b, q, 5);
    expect_error(b, Code::kFormat, {"tensor 't.q4_0'", "n_dims 5"});
  }
  {
    Bytes b = good;
    poke<uint64_t>(b, q + 4 + 8, 0);
    expect_error(b, Code::kFormat, {"tensor 't.q4_0'", "ne[1]"});
  }
  {
    Bytes b = good;
    poke<uint64_t>(b, q + 4 + 8, 1ull << 63);  // negative as int64
    expect_error(b, Code::kFormat, {"tensor 't.q4_0'", "ne[1]"});
  }
  {
    Bytes b = good;
    poke<uint64_t>(b, q + 4, 1ull << 40);
    poke<uint64_t>(b, q + 4 + 8, 1ull << 40);
    expect_error(b, Code::kFormat, {"tensor 't.q4_0'", "overflow"});
  }
  {
    Bytes b = good;
    poke<uint64_t>(b, q + 4 + 8, 1ull << 40);  // 2^40 rows: far bigger than the file
    expect_error(b, Code::kFormat, {"tensor 't.q4_0'", "cannot fit"});
  }
  for (uint32_t bad_type : {99u, 4u, 0xffffffffu}) {  // 4 was Q4_2, removed from ggml
    Bytes b = good;
    poke<uint32_t>(b, q_type, bad_type);
    expect_error(b, Code::kUnsupported, {"tensor 't.q4_0'", std::to_string(bad_type)});
  }
  {
    Bytes b = good;
    poke<uint64_t>(b, q + 4, 48);  // Q4_0 rows must be whole 32-element blocks
    expect_error(b, Code::kFormat, {"tensor 't.q4_0'", "ne[0] = 48", "block size 32"});
  }
  {
    Bytes b = good;
    uint64_t off;
    std::memcpy(&off, b.data() + q_off, 8);
    poke<uint64_t>(b, q_off, off + 4);
    expect_error(b, Code::kFormat, {"tensor 't.q4_0'", "alignment 32"});
  }
  {
    Bytes b = good;
    poke<uint64_t>(b, q_off, 1ull << 20);
    expect_error(b, Code::kFormat, {"tensor 't.q4_0'", "exceeds file size"});
  }
  {
    Bytes b = good;
    poke<uint64_t>(b, q_off, 0xffffffffffffffe0ull);  // would wrap a naive bounds check
    expect_error(b, Code::kFormat, {"tensor 't.q4_0'", "exceeds file size"});
  }
  {
    Bytes b = good;
    const size_t f = tensor_info_pos(good, "t.f16");
    std::memcpy(b.data() + f - 5, "t.f32", 5);  // rename "t.f16" -> "t.f32"
    expect_error(b, Code::kFormat, {"tensor 't.f32'", "duplicate"});
  }
}

TEST(GgufMalformed, MetadataErrors) {
  std::mt19937_64 rng(sqz::test::test_seed());
  const Bytes good = valid_file(rng);
  {
    // Duplicate key: a same-length rename of one existing key onto another.
    Bytes c = good;
    const std::string a = "tokenizer.ggml.tokens", bname = "tokenizer.ggml.scores";
    ASSERT_EQ(a.size(), bname.size());
    auto it = std::search(c.begin(), c.end(), bname.begin(), bname.end());
    ASSERT_NE(it, c.end());
    std::memcpy(&*it, a.data(), a.size());
    expect_error(c, Code::kFormat, {"'tokenizer.ggml.tokens'", "twice"});
  }
  auto value_pos = [&](const Bytes& b, const std::string& key) {
    auto it = std::search(b.begin(), b.end(), key.begin(), key.end());
    EXPECT_NE(it, b.end());
    return (size_t)(it - b.begin()) + key.size();  // at the u32 type
  };
  {
    Bytes b = good;
    poke<uint32_t>(b, value_pos(b, "tokenizer.ggml.model"), 13);
    expect_error(b, Code::kFormat, {"'tokenizer.ggml.model'", "unknown value type 13"});
  }
  {
    Bytes b = good;
    poke<uint8_t>(b, value_pos(b, "tokenizer.ggml.add_bos_token") + 4, 2);
    expect_error(b, Code::kFormat, {"'tokenizer.ggml.add_bos_token'", "bool"});
  }
  {
    Bytes b = good;
    const size_t p = value_pos(b, "tokenizer.ggml.tokens");
    poke<uint64_t>(b, p + 8, 1ull << 50);  // array length
    expect_error(b, Code::kFormat, {"'tokenizer.ggml.tokens'", "cannot fit"});
  }
  {
    Bytes b = good;
    const size_t p = value_pos(b, "tokenizer.ggml.tokens");
    poke<uint32_t>(b, p + 4, 77);  // element type
    expect_error(b, Code::kFormat, {"'tokenizer.ggml.tokens'", "element type 77"});
  }
  {
    Bytes b = good;
    const size_t p = value_pos(b, "tokenizer.ggml.tokens");
    poke<uint64_t>(b, p + 16 + 8 + 1, 1ull << 33);  // length of tokens[1]
    expect_error(b, Code::kFormat, {"'tokenizer.ggml.tokens'[1]", "string length"});
  }
  {
    // Arrays nested deeper than the limit, hand-encoded.
    Enc e;
    e.b = {'G', 'G', 'U', 'F'};
    e.put<uint32_t>(3).put<uint64_t>(0).put<uint64_t>(1);
    e.str("deep").put<uint32_t>(gguf::kArray);
    for (int d = 0; d < 20; d++) e.put<uint32_t>(gguf::kArray).put<uint64_t>(1);
    e.put<uint32_t>(gguf::kU8).put<uint64_t>(0);
    expect_error(e.b, Code::kFormat, {"'deep'", "nested"});
  }
  {
    // Bad alignment values / type.
    for (uint32_t al : {0u, 48u}) {
      GgufWriter w;
      add_min_llama(w);
      w.add_u32("general.alignment", al);
      expect_error(w.to_bytes().value(), Code::kFormat, {"general.alignment"});
    }
    GgufWriter w;
    add_min_llama(w);
    w.add_u64("general.alignment", 32);
    expect_error(w.to_bytes().value(), Code::kFormat, {"general.alignment", "uint32"});
  }
}

TEST(GgufMalformed, ConfigAndTokenizerErrors) {
  auto base = [](GgufWriter& w, const char* skip) {
    const std::pair<const char*, uint32_t> keys[] = {{"llama.embedding_length", 64},
                                                     {"llama.block_count", 1},
                                                     {"llama.attention.head_count", 4},
                                                     {"llama.feed_forward_length", 128},
                                                     {"llama.context_length", 256}};
    for (const auto& [k, v] : keys)
      if (std::string(k) != skip) w.add_u32(k, v);
    w.add_array_string("tokenizer.ggml.tokens", {"a", "b"});
  };
  {
    GgufWriter w;
    base(w, "");
    expect_error(w.to_bytes().value(), Code::kFormat, {"general.architecture"});
  }
  {
    GgufWriter w;
    w.add_string("general.architecture", "gpt2");
    base(w, "");
    expect_error(w.to_bytes().value(), Code::kUnsupported, {"general.architecture", "gpt2"});
  }
  for (const char* k : {"llama.embedding_length", "llama.block_count", "llama.attention.head_count",
                        "llama.context_length"}) {
    GgufWriter w;
    w.add_string("general.architecture", "llama");
    base(w, k);
    expect_error(w.to_bytes().value(), Code::kFormat, {k, "missing"});
  }
  {
    GgufWriter w;
    w.add_string("general.architecture", "llama");
    base(w, "llama.block_count");
    w.add_string("llama.block_count", "thirty");
    expect_error(w.to_bytes().value(), Code::kFormat, {"llama.block_count", "integer"});
  }
  {
    GgufWriter w;
    w.add_string("general.architecture", "llama");
    base(w, "");
    w.add_u32("llama.attention.head_count_kv", 3);  // does not divide 4
    expect_error(w.to_bytes().value(), Code::kFormat, {"head_count_kv"});
  }
  {
    GgufWriter w;
    w.add_string("general.architecture", "llama");
    base(w, "");
    w.add_u32("tokenizer.ggml.bos_token_id", 2);  // only 2 tokens
    expect_error(w.to_bytes().value(), Code::kFormat, {"tokenizer.ggml.bos_token_id", "2"});
  }
  {
    GgufWriter w;
    w.add_string("general.architecture", "llama");
    base(w, "");
    w.add_array_f32("tokenizer.ggml.scores", {1.f});
    expect_error(w.to_bytes().value(), Code::kFormat, {"tokenizer.ggml.scores", "1 entries"});
  }
  {
    GgufWriter w;
    w.add_string("general.architecture", "llama");
    base(w, "");
    w.add_array_i32("tokenizer.ggml.merges", {1, 2});
    expect_error(w.to_bytes().value(), Code::kFormat, {"tokenizer.ggml.merges", "string"});
  }
  {
    GgufWriter w;
    w.add_string("general.architecture", "llama");
    base(w, "");
    w.add_string("llama.rope.scaling.type", "yarn");
    w.add_f32("llama.rope.scaling.factor", 4.0f);
    expect_error(w.to_bytes().value(), Code::kUnsupported, {"rope.scaling.type", "yarn"});
  }
}

TEST(GgufMalformed, RandomMutationsNeverEscapeTheBuffer) {
  std::mt19937_64 rng(sqz::test::test_seed());
  const Bytes good = valid_file(rng);
  int n_ok = 0;
  for (int it = 0; it < 3000; it++) {
    Bytes b = good;
    const int flips = 1 + (int)(rng() % 4);
    for (int f = 0; f < flips; f++) b[rng() % b.size()] = (uint8_t)rng();
    if (rng() % 4 == 0) b.resize(rng() % b.size());
    auto r = gguf_open_memory(b.data(), b.size(), "m.gguf");
    if (!r.ok()) {
      EXPECT_NE(r.status().message().find("m.gguf"), std::string::npos);
      continue;
    }
    n_ok++;
    for (const auto& t : r.value()->tensors) {
      const uint8_t* p = (const uint8_t*)t.data;
      ASSERT_GE(p, b.data());
      ASSERT_LE(p + t.nbytes, b.data() + b.size());
    }
  }
  EXPECT_GT(n_ok, 0);  // flips in tensor data or padding keep the file valid
}

// ---------------------------------------------------------------------------------------------

TEST(GgufConfig, RandomModelLoadsWithExpectedConfig) {
  TempDir dir;
  RandomModelParams p;
  p.n_vocab = 300;
  p.n_embd = 64;
  p.n_layer = 2;
  p.n_head = 4;
  p.n_head_kv = 2;
  p.head_dim = 32;  // != n_embd / n_head: must come from attention.key_length
  p.n_ff = 96;
  p.n_ctx = 512;
  p.rope_theta = 500000.0f;
  p.rms_eps = 1e-6f;
  p.weight_type = DType::kF16;
  p.seed = sqz::test::test_seed();
  const std::string path = dir.file("rand.gguf");
  ASSERT_TRUE(write_random_llama_gguf(p, path).ok());
  auto r = model_file_open(path);
  ASSERT_TRUE(r.ok()) << r.status().message();
  const ModelFile& mf = *r.value();
  const ModelConfig& c = mf.config;
  EXPECT_EQ(mf.format, "gguf");
  EXPECT_EQ(c.arch, "llama");
  EXPECT_EQ(c.n_vocab, 300);
  EXPECT_EQ(c.n_embd, 64);
  EXPECT_EQ(c.n_layer, 2);
  EXPECT_EQ(c.n_head, 4);
  EXPECT_EQ(c.n_head_kv, 2);
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_EQ(c.n_ff, 96);
  EXPECT_EQ(c.n_ctx_train, 512);
  EXPECT_FLOAT_EQ(c.rope_theta, 500000.0f);
  EXPECT_FLOAT_EQ(c.rms_eps, 1e-6f);
  EXPECT_FALSE(c.rope_neox);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_FALSE(c.tied_embeddings);

  const TokenizerData want = random_model_tokenizer(300);
  const TokenizerData& t = mf.tokenizer;
  EXPECT_EQ(t.model, "gpt2");
  EXPECT_EQ(t.pre, "smollm");
  EXPECT_EQ(t.tokens, want.tokens);
  EXPECT_EQ(t.token_types, want.token_types);
  EXPECT_EQ(t.merges, want.merges);
  EXPECT_EQ(t.tokens[1], "<|im_start|>");
  EXPECT_EQ(t.tokens[3 + ' '], "\xc4\xa0");  // GPT-2 maps the space byte to U+0120 'Ġ'
  EXPECT_EQ(t.tokens[3 + 'a'], "a");
  EXPECT_EQ(t.bos_id, 1);
  EXPECT_EQ(t.eos_id, 2);
  EXPECT_EQ(t.eot_id, 2);
  EXPECT_EQ(t.pad_id, 0);
  EXPECT_FALSE(t.add_bos);
  EXPECT_NE(t.chat_template.find("<|im_start|>"), std::string::npos);

  // Shapes in ggml order, F16 weights, F32 norms equal to 1, weights ~ N(0, 0.02).
  ASSERT_TRUE(mf.require("token_embd.weight", {64, 300}).ok());
  ASSERT_TRUE(mf.require("blk.1.attn_q.weight", {64, 128}).ok());
  ASSERT_TRUE(mf.require("blk.1.attn_k.weight", {64, 64}).ok());
  ASSERT_TRUE(mf.require("blk.0.attn_output.weight", {128, 64}).ok());
  ASSERT_TRUE(mf.require("blk.0.ffn_down.weight", {96, 64}).ok());
  ASSERT_TRUE(mf.require("output.weight", {64, 300}).ok());
  const TensorView* norm = mf.require("blk.0.ffn_norm.weight", {64}).value();
  EXPECT_EQ(norm->type, DType::kF32);
  for (int i = 0; i < 64; i++) EXPECT_EQ(((const float*)norm->data)[i], 1.0f);
  const TensorView* emb = mf.find("token_embd.weight");
  EXPECT_EQ(emb->type, DType::kF16);
  double s1 = 0, s2 = 0;
  const int64_t n = emb->nelements();
  for (int64_t i = 0; i < n; i++) {
    const double v = fp16_to_fp32(((const f16_t*)emb->data)[i]);
    ASSERT_TRUE(std::isfinite(v));
    s1 += v;
    s2 += v * v;
  }
  const double mean = s1 / n, sd = std::sqrt(s2 / n - mean * mean);
  // n = 19200 samples: the sample mean's sd is 0.02/sqrt(n) = 1.4e-4, the sample sd's ~1e-4.
  EXPECT_LT(std::abs(mean), 6 * 1.5e-4);
  EXPECT_NEAR(sd, 0.02, 6 * 1.1e-4);

  // require() errors name the file, tensor and both shapes.
  auto miss = mf.require("blk.9.attn_q.weight", {64, 128});
  ASSERT_FALSE(miss.ok());
  EXPECT_NE(miss.status().message().find(path), std::string::npos);
  EXPECT_NE(miss.status().message().find("blk.9.attn_q.weight"), std::string::npos);
  auto shape = mf.require("blk.1.attn_q.weight", {64, 64});
  ASSERT_FALSE(shape.ok());
  EXPECT_NE(shape.status().message().find("{64, 128}"), std::string::npos)
      << shape.status().message();
  EXPECT_NE(shape.status().message().find("{64, 64}"), std::string::npos);
}

TEST(GgufConfig, RandomModelIsDeterministicAndStreams) {
  TempDir dir;
  RandomModelParams p;
  p.seed = 42;
  ASSERT_TRUE(write_random_llama_gguf(p, dir.file("a.gguf")).ok());
  ASSERT_TRUE(write_random_llama_gguf(p, dir.file("b.gguf")).ok());
  p.seed = 43;
  ASSERT_TRUE(write_random_llama_gguf(p, dir.file("c.gguf")).ok());
  auto read = [&](const std::string& f) {
    std::ifstream in(dir.file(f), std::ios::binary);
    return Bytes(std::istreambuf_iterator<char>(in), {});
  };
  EXPECT_EQ(read("a.gguf"), read("b.gguf"));
  EXPECT_NE(read("a.gguf"), read("c.gguf"));
  // No temp files left behind.
  int n = 0;
  for (const auto& e : fs::directory_iterator(dir.file(""))) n += e.is_regular_file();
  EXPECT_EQ(n, 3);

  RandomModelParams bad;
  bad.weight_type = DType::kQ4_K;  // n_embd 64 is not a multiple of 256
  EXPECT_EQ((int)write_random_llama_gguf(bad, dir.file("d.gguf")).code(),
            (int)Code::kInvalidArgument);
  bad = RandomModelParams();
  bad.n_vocab = 10;
  EXPECT_FALSE(write_random_llama_gguf(bad, dir.file("d.gguf")).ok());
}

TEST(GgufConfig, Qwen2BiasTiedAndEotFallback) {
  TempDir dir;
  RandomModelParams p;
  p.arch = "qwen2";
  p.qkv_bias = true;
  p.tied_embeddings = true;
  ASSERT_TRUE(write_random_llama_gguf(p, dir.file("q.gguf")).ok());
  auto r = gguf_open(dir.file("q.gguf"));
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r.value()->config.arch, "qwen2");
  EXPECT_TRUE(r.value()->config.rope_neox);
  EXPECT_TRUE(r.value()->config.qkv_bias);
  EXPECT_TRUE(r.value()->config.tied_embeddings);
  EXPECT_TRUE(r.value()->require("blk.1.attn_k.bias", {32}).ok());

  // No eot key: found from the <|im_end|> / <|eot_id|> token.
  for (const char* eot : {"<|im_end|>", "<|eot_id|>"}) {
    GgufWriter w;
    add_min_llama(w);
    w.add_array_string("tokenizer.ggml.tokens", {"a", "b", "c", eot});
    w.add_string("tokenizer.ggml.model", "llama");
    const Bytes b = w.to_bytes().value();
    auto r2 = gguf_open_memory(b.data(), b.size(), "eot.gguf");
    ASSERT_TRUE(r2.ok()) << r2.status().message();
    EXPECT_EQ(r2.value()->tokenizer.eot_id, 3);
    EXPECT_EQ(r2.value()->config.n_vocab, 4);
    // SentencePiece defaults when the keys are absent.
    EXPECT_TRUE(r2.value()->tokenizer.add_bos);
    EXPECT_TRUE(r2.value()->tokenizer.add_space_prefix);
  }
}

TEST(GgufDefaultModel, LoadsWithExpectedConfig) {
  const std::string path = sqz::test::default_model_path();
  if (path.empty()) GTEST_SKIP() << "default model not present";
  auto r = model_file_open(path);
  ASSERT_TRUE(r.ok()) << r.status().message();
  const ModelFile& mf = *r.value();
  // Expected values as printed by the `gguf` Python package (gguf.GGUFReader) for this file.
  EXPECT_EQ(mf.version, 3u);
  EXPECT_EQ(mf.tensors.size(), 272u);
  const ModelConfig& c = mf.config;
  EXPECT_EQ(c.arch, "llama");
  EXPECT_EQ(c.n_layer, 30);
  EXPECT_EQ(c.n_embd, 576);
  EXPECT_EQ(c.n_head, 9);
  EXPECT_EQ(c.n_head_kv, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.n_ff, 1536);
  EXPECT_EQ(c.n_vocab, 49152);
  EXPECT_EQ(c.n_ctx_train, 8192);
  EXPECT_FLOAT_EQ(c.rope_theta, 100000.0f);
  EXPECT_FLOAT_EQ(c.rms_eps, 1e-5f);
  EXPECT_FALSE(c.rope_neox);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_TRUE(c.tied_embeddings);
  EXPECT_EQ(c.rope_scale_factor, 0.0f);

  int n_q41 = 0, n_f32 = 0, n_q80 = 0;
  for (const auto& t : mf.tensors) {
    n_q41 += t.type == DType::kQ4_1;
    n_f32 += t.type == DType::kF32;
    n_q80 += t.type == DType::kQ8_0;
  }
  EXPECT_EQ(n_q41, 210);
  EXPECT_EQ(n_f32, 61);
  EXPECT_EQ(n_q80, 1);
  auto q = mf.require("blk.0.attn_q.weight", {576, 576});
  ASSERT_TRUE(q.ok()) << q.status().message();
  EXPECT_EQ(q.value()->type, DType::kQ4_1);
  EXPECT_TRUE(mf.require("blk.29.attn_k.weight", {576, 192}).ok());
  EXPECT_TRUE(mf.require("blk.0.ffn_down.weight", {1536, 576}).ok());
  auto emb = mf.require("token_embd.weight", {576, 49152});
  ASSERT_TRUE(emb.ok());
  EXPECT_EQ(emb.value()->type, DType::kQ8_0);
  EXPECT_EQ(mf.find("output.weight"), nullptr);

  const TokenizerData& t = mf.tokenizer;
  EXPECT_EQ(t.model, "gpt2");
  EXPECT_EQ(t.pre, "smollm");
  EXPECT_EQ(t.tokens.size(), 49152u);
  EXPECT_EQ(t.token_types.size(), 49152u);
  EXPECT_EQ(t.merges.size(), 48900u);
  EXPECT_TRUE(t.scores.empty());
  EXPECT_EQ(t.bos_id, 1);
  EXPECT_EQ(t.eos_id, 2);
  EXPECT_EQ(t.unk_id, 0);
  EXPECT_EQ(t.pad_id, 2);
  EXPECT_EQ(t.tokens[1], "<|im_start|>");
  EXPECT_EQ(t.tokens[2], "<|im_end|>");
  EXPECT_EQ(t.eot_id, 2);  // no eot key: found as <|im_end|>
  EXPECT_FALSE(t.add_bos);
  EXPECT_FALSE(t.add_space_prefix);
  EXPECT_NE(t.chat_template.find("<|im_start|>"), std::string::npos);
  EXPECT_NE(t.chat_template.find("<|im_end|>"), std::string::npos);
}

TEST(ModelFileOpen, MissingPath) {
  auto r = model_file_open("/nonexistent/dir/model.gguf");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ((int)r.status().code(), (int)Code::kIo);
  EXPECT_NE(r.status().message().find("/nonexistent/dir/model.gguf"), std::string::npos);
}

}  // namespace
}  // namespace sqz
