// sqz gen-model: random-weight Llama-architecture GGUF files for tests and benchmarks
// (src/formats/random_model.h), e.g. a Llama-3-8B-shaped model with a small vocabulary:
//   sqz gen-model --preset llama3-8b --vocab 4096 --ctx 262144 --type q4_0 --out /tmp/l3.gguf
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "formats/random_model.h"

namespace sqz::cli {

namespace {

struct GenModelCmd {
  std::string out, preset = "tiny", type = "q8_0", arch = "llama";
  int vocab = 0, layers = 0, embd = 0, heads = 0, kv_heads = 0, head_dim = 0, ff = 0, ctx = 0;
  float rope_theta = 0, std = 0.02f;
  uint64_t seed = 1;
  bool json = false;
};

bool parse_type(const std::string& s, DType* t) {
  static const std::pair<const char*, DType> kTypes[] = {
      {"f32", DType::kF32},   {"f16", DType::kF16},   {"bf16", DType::kBF16},
      {"q4_0", DType::kQ4_0}, {"q4_1", DType::kQ4_1}, {"q5_0", DType::kQ5_0},
      {"q5_1", DType::kQ5_1}, {"q8_0", DType::kQ8_0}, {"q4_k", DType::kQ4_K},
      {"q5_k", DType::kQ5_K}, {"q6_k", DType::kQ6_K}};
  for (const auto& [name, dt] : kTypes)
    if (s == name) {
      *t = dt;
      return true;
    }
  return false;
}

int run_gen_model(const GenModelCmd& c) {
  RandomModelParams p;
  p.arch = c.arch;
  if (c.preset == "tiny") {  // GPU-testable: head_dim 64
    p.n_vocab = 512, p.n_embd = 256, p.n_layer = 2, p.n_head = 4, p.n_head_kv = 2, p.n_ff = 512;
    p.n_ctx = 4096;
  } else if (c.preset == "llama3-8b") {
    p.n_vocab = 128256, p.n_embd = 4096, p.n_layer = 32, p.n_head = 32, p.n_head_kv = 8;
    p.n_ff = 14336, p.n_ctx = 131072, p.rope_theta = 500000.0f;
  } else if (c.preset == "llama2-7b") {
    p.n_vocab = 32000, p.n_embd = 4096, p.n_layer = 32, p.n_head = 32, p.n_head_kv = 32;
    p.n_ff = 11008, p.n_ctx = 4096;
  } else {
    return fail(
        Error(Code::kInvalidArgument, "--preset '{}': tiny, llama3-8b or llama2-7b", c.preset));
  }
  if (c.vocab > 0) p.n_vocab = c.vocab;
  if (c.layers > 0) p.n_layer = c.layers;
  if (c.embd > 0) p.n_embd = c.embd;
  if (c.heads > 0) p.n_head = c.heads;
  if (c.kv_heads > 0) p.n_head_kv = c.kv_heads;
  if (c.head_dim > 0) p.head_dim = c.head_dim;
  if (c.ff > 0) p.n_ff = c.ff;
  if (c.ctx > 0) p.n_ctx = c.ctx;
  if (c.rope_theta > 0) p.rope_theta = c.rope_theta;
  p.weight_std = c.std;
  p.seed = c.seed;
  p.name = "random-" + c.preset;
  if (!parse_type(c.type, &p.weight_type))
    return fail(Error(Code::kInvalidArgument,
                      "--type '{}': f32 f16 bf16 q4_0 q4_1 q5_0 q5_1 q8_0 q4_k q5_k q6_k", c.type));
  if (p.n_vocab < random_model_min_vocab())
    return fail(Error(Code::kInvalidArgument, "--vocab {} is below the built-in tokenizer's {}",
                      p.n_vocab, random_model_min_vocab()));
  const Status st = write_random_llama_gguf(p, c.out);
  if (!st.ok()) return fail(st);
  if (c.json) {
    nlohmann::json j = {{"out", c.out},         {"preset", c.preset},       {"type", c.type},
                        {"n_vocab", p.n_vocab}, {"n_embd", p.n_embd},       {"n_layer", p.n_layer},
                        {"n_head", p.n_head},   {"n_head_kv", p.n_head_kv}, {"n_ff", p.n_ff},
                        {"n_ctx", p.n_ctx}};
    std::cout << j.dump() << "\n";
  } else {
    std::printf("wrote %s (%s, %d layers, %d/%d heads, embd %d, ff %d, vocab %d, ctx %d)\n",
                c.out.c_str(), c.type.c_str(), p.n_layer, p.n_head, p.n_head_kv, p.n_embd, p.n_ff,
                p.n_vocab, p.n_ctx);
  }
  return 0;
}

}  // namespace

void register_genmodel_command(CLI::App& app, Runners& runners) {
  static GenModelCmd c_store;  // lives for the process
  auto* c = &c_store;
  auto* s = app.add_subcommand("gen-model",
                               "write a random-weight Llama-architecture GGUF (tests, benchmarks)");
  s->add_option("--out,-o", c->out, "output GGUF path")->required();
  s->add_option("--preset", c->preset, "shape: tiny, llama3-8b, llama2-7b")
      ->check(CLI::IsMember({"tiny", "llama3-8b", "llama2-7b"}));
  s->add_option("--arch", c->arch, "GGUF architecture key prefix")
      ->check(CLI::IsMember({"llama", "mistral", "qwen2"}));
  s->add_option("--type", c->type, "type of every 2-D weight (q8_0, q4_0, q4_k, f16, ...)");
  s->add_option("--vocab", c->vocab, "vocabulary size (overrides the preset)")
      ->check(CLI::Range(0, 1 << 22));
  s->add_option("--layers", c->layers, "layers")->check(CLI::Range(0, 1024));
  s->add_option("--embd", c->embd, "embedding width")->check(CLI::Range(0, 1 << 16));
  s->add_option("--heads", c->heads, "query heads")->check(CLI::Range(0, 1024));
  s->add_option("--kv-heads", c->kv_heads, "KV heads")->check(CLI::Range(0, 1024));
  s->add_option("--head-dim", c->head_dim, "head dimension (0: embd / heads)")
      ->check(CLI::Range(0, 1024));
  s->add_option("--ff", c->ff, "FFN width")->check(CLI::Range(0, 1 << 20));
  s->add_option("--ctx", c->ctx, "context_length metadata")->check(CLI::Range(0, 1 << 24));
  s->add_option("--rope-theta", c->rope_theta, "RoPE base")->check(CLI::Range(0.0f, 1e9f));
  s->add_option("--std", c->std, "weight standard deviation")->check(CLI::Range(0.0f, 10.0f));
  s->add_option("--seed", c->seed, "weights seed");
  s->add_flag("--json", c->json, "print one JSON line");
  s->callback([c, &runners] { runners.push_back([c] { return run_gen_model(*c); }); });
}

}  // namespace sqz::cli
