// Writes the GGUF fuzzer's seed corpus with GgufWriter: small valid files that exercise every
// metadata value type (nested arrays included), every tensor type, a tokenizer and a
// non-default alignment. Built and run by scripts/fuzz_gguf.sh; not part of the library.
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "formats/gguf_writer.h"

namespace {

void add_llama(sqz::GgufWriter& w) {
  w.add_string("general.architecture", "llama");
  w.add_string("general.name", "fuzz-seed");
  w.add_u32("llama.context_length", 256);
  w.add_u32("llama.embedding_length", 64);
  w.add_u32("llama.block_count", 1);
  w.add_u32("llama.feed_forward_length", 128);
  w.add_u32("llama.attention.head_count", 4);
  w.add_u32("llama.attention.head_count_kv", 2);
  w.add_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  w.add_f32("llama.rope.freq_base", 10000.0f);
  w.add_u32("llama.rope.dimension_count", 16);
  w.add_string("tokenizer.ggml.model", "gpt2");
  w.add_string("tokenizer.ggml.pre", "smollm");
  w.add_array_string("tokenizer.ggml.tokens",
                     {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "ab", "\xc4\xa0"});
  w.add_array_i32("tokenizer.ggml.token_type", {3, 3, 3, 1, 1, 1, 1});
  w.add_array_f32("tokenizer.ggml.scores", {0, 0, 0, -1, -2, -3, -4});
  w.add_array_string("tokenizer.ggml.merges", {"a b"});
  w.add_u32("tokenizer.ggml.bos_token_id", 1);
  w.add_u32("tokenizer.ggml.eos_token_id", 2);
  w.add_bool("tokenizer.ggml.add_bos_token", false);
  w.add_string("tokenizer.chat_template", "{% for m in messages %}<|im_start|>{% endfor %}");
}

bool write(sqz::GgufWriter& w, const std::string& path) {
  sqz::Status st = w.write_file(path);
  if (!st.ok()) std::fprintf(stderr, "%s\n", st.message().c_str());
  return st.ok();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  std::mt19937_64 rng(1);
  auto bytes = [&](size_t n) {
    std::vector<uint8_t> b(n);
    for (auto& x : b) x = (uint8_t)(rng() & 0x3f);  // small values: finite f16/f32 scales
    return b;
  };

  // Seed 1: every metadata type and every tensor type, default alignment.
  sqz::GgufWriter a;
  add_llama(a);
  a.add_u8("x.u8", 7);
  a.add_i8("x.i8", -7);
  a.add_u16("x.u16", 700);
  a.add_i16("x.i16", -700);
  a.add_i32("x.i32", -70000);
  a.add_u64("x.u64", 1ull << 40);
  a.add_i64("x.i64", -(1ll << 40));
  a.add_f64("x.f64", 0.5);
  a.add_array_u32("x.au32", {1, 2, 3});
  auto inner = std::make_shared<sqz::MetaArray>();
  inner->elem_type = sqz::gguf::kU8;
  inner->values = {uint64_t(1), uint64_t(2)};
  auto outer = std::make_shared<sqz::MetaArray>();
  outer->elem_type = sqz::gguf::kArray;
  outer->values = {inner, inner};
  a.add_value("x.nested", sqz::gguf::kArray, outer);
  int i = 0;
  for (sqz::DType t : {sqz::DType::kF32, sqz::DType::kF16, sqz::DType::kBF16, sqz::DType::kQ4_0,
                       sqz::DType::kQ4_1, sqz::DType::kQ5_0, sqz::DType::kQ5_1, sqz::DType::kQ8_0,
                       sqz::DType::kQ4_K, sqz::DType::kQ5_K, sqz::DType::kQ6_K}) {
    const sqz::DTypeTraits* tr = sqz::dtype_traits(t);
    const std::vector<int64_t> ne = {tr->block_size, 2};
    const auto b = bytes(2 * tr->type_size);
    if (!a.add_tensor("t" + std::to_string(i++) + "." + tr->name, t, ne, b.data(), b.size()).ok())
      return 1;
  }
  if (!write(a, dir + "/seed_all_types.gguf")) return 1;

  // Seed 2: llama-shaped tensor names, alignment 64, qkv bias, 3-D and 4-D shapes.
  sqz::GgufWriter b(64);
  add_llama(b);
  const char* names[] = {"token_embd.weight", "blk.0.attn_norm.weight", "blk.0.attn_q.weight",
                         "blk.0.attn_q.bias", "output_norm.weight"};
  const std::vector<int64_t> shapes[] = {{64, 7}, {64}, {64, 64}, {64}, {64}};
  for (int k = 0; k < 5; k++) {
    const auto d = bytes(4 * (size_t)(shapes[k][0] * (shapes[k].size() > 1 ? shapes[k][1] : 1)));
    if (!b.add_tensor(names[k], sqz::DType::kF32, shapes[k], d.data(), d.size()).ok()) return 1;
  }
  const auto d3 = bytes(2 * 2 * 3 * 4);
  if (!b.add_tensor("x.f16_3d", sqz::DType::kF16, {2, 3, 4}, d3.data(), d3.size()).ok()) return 1;
  const auto d4 = bytes(4 * 2 * 1 * 2 * 2);
  if (!b.add_tensor("x.f32_4d", sqz::DType::kF32, {2, 1, 2, 2}, d4.data(), d4.size()).ok())
    return 1;
  if (!write(b, dir + "/seed_llama_align64.gguf")) return 1;
  return 0;
}
