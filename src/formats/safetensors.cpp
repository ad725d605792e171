// Hugging Face directory reader. The header JSON of every shard is validated as strictly as a
// GGUF header (types, shapes, offsets vs. the file size) before any tensor data is touched.
#include "formats/safetensors.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/fp16.h"
#include "core/mmap_file.h"

#if __has_include("tokenizer/hf_json.h")
#include "tokenizer/hf_json.h"
#else
namespace sqz {
// Implemented in src/tokenizer/hf_json.cpp (tokenizer.json + tokenizer_config.json -> data).
Result<TokenizerData> tokenizer_data_from_hf_json(const std::string& json_text,
                                                  const std::string& tokenizer_config_json_text);
}  // namespace sqz
#endif

namespace sqz {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// The safetensors spec caps the header at 100 MB; anything larger is corrupt or hostile.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

bool parse_layer_name(const std::string& s, size_t& pos, std::string& num) {
  const size_t start = pos;
  while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9') pos++;
  if (pos == start || pos - start > 6 || pos >= s.size() || s[pos] != '.') return false;
  num = s.substr(start, pos - start);
  pos++;
  return true;
}

Result<std::string> read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Error(Code::kIo, "{}: cannot open: {}", path, std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return Error(Code::kIo, "{}: read failed", path);
  return ss.str();
}

// Typed config.json getters: absent (or null) -> default; wrong type / out of range -> kFormat
// naming the file and key.
Status json_int(const json& j, const std::string& name, const char* key, int64_t lo, int64_t hi,
                std::optional<int64_t>& out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return Status::Ok();
  int64_t v = 0;
  if (it->is_number_unsigned()) {
    const uint64_t u = it->get<uint64_t>();
    if (u > (uint64_t)INT64_MAX)
      return Error(Code::kFormat, "{}: '{}' = {} is out of range", name, key, u);
    v = (int64_t)u;
  } else if (it->is_number_integer()) {
    v = it->get<int64_t>();
  } else {
    return Error(Code::kFormat, "{}: '{}' must be an integer", name, key);
  }
  if (v < lo || v > hi)
    return Error(Code::kFormat, "{}: '{}' = {} is out of range [{}, {}]", name, key, v, lo, hi);
  out = v;
  return Status::Ok();
}

Status json_req_int(const json& j, const std::string& name, const char* key, int64_t lo, int64_t hi,
                    int& out) {
  std::optional<int64_t> v;
  SQZ_RETURN_IF_ERROR(json_int(j, name, key, lo, hi, v));
  if (!v) return Error(Code::kFormat, "{}: '{}' is missing", name, key);
  out = (int)*v;
  return Status::Ok();
}

Status json_float(const json& j, const std::string& name, const char* key, double& out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return Status::Ok();
  if (!it->is_number()) return Error(Code::kFormat, "{}: '{}' must be a number", name, key);
  out = it->get<double>();
  if (!std::isfinite(out)) return Error(Code::kFormat, "{}: '{}' is not finite", name, key);
  return Status::Ok();
}

Status json_bool(const json& j, const std::string& name, const char* key, bool& out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return Status::Ok();
  if (!it->is_boolean()) return Error(Code::kFormat, "{}: '{}' must be a bool", name, key);
  out = it->get<bool>();
  return Status::Ok();
}

Result<ModelConfig> hf_config_impl(const std::string& text, const std::string& name) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Error(Code::kFormat, "{}: invalid JSON", name);
  if (!j.is_object()) return Error(Code::kFormat, "{}: top level is not a JSON object", name);
  ModelConfig c;

  std::string hf_arch;
  if (auto it = j.find("architectures"); it != j.end() && !it->is_null()) {
    if (!it->is_array() || it->empty() || !(*it)[0].is_string())
      return Error(Code::kFormat, "{}: 'architectures' must be a non-empty array of strings", name);
    hf_arch = (*it)[0].get<std::string>();
  }
  std::string model_type;
  if (auto it = j.find("model_type"); it != j.end() && it->is_string())
    model_type = it->get<std::string>();
  if (hf_arch == "LlamaForCausalLM" || (hf_arch.empty() && model_type == "llama")) {
    c.arch = "llama";
  } else if (hf_arch == "MistralForCausalLM" || (hf_arch.empty() && model_type == "mistral")) {
    c.arch = "mistral";
  } else if (hf_arch == "Qwen2ForCausalLM" || (hf_arch.empty() && model_type == "qwen2")) {
    c.arch = "qwen2";
  } else {
    return Error(Code::kUnsupported,
                 "{}: architecture '{}' is not supported (LlamaForCausalLM, MistralForCausalLM, "
                 "Qwen2ForCausalLM)",
                 name, hf_arch.empty() ? model_type : hf_arch);
  }
  if (auto it = j.find("_name_or_path"); it != j.end() && it->is_string())
    c.name = it->get<std::string>();

  SQZ_RETURN_IF_ERROR(json_req_int(j, name, "vocab_size", 1, INT32_MAX, c.n_vocab));
  SQZ_RETURN_IF_ERROR(json_req_int(j, name, "hidden_size", 1, 1 << 20, c.n_embd));
  SQZ_RETURN_IF_ERROR(json_req_int(j, name, "num_hidden_layers", 1, 1 << 16, c.n_layer));
  SQZ_RETURN_IF_ERROR(json_req_int(j, name, "num_attention_heads", 1, 1 << 16, c.n_head));
  SQZ_RETURN_IF_ERROR(json_req_int(j, name, "intermediate_size", 1, 1 << 24, c.n_ff));
  SQZ_RETURN_IF_ERROR(json_req_int(j, name, "max_position_embeddings", 1, 1 << 30, c.n_ctx_train));
  std::optional<int64_t> kv, hd;
  SQZ_RETURN_IF_ERROR(json_int(j, name, "num_key_value_heads", 1, c.n_head, kv));
  c.n_head_kv = kv ? (int)*kv : c.n_head;
  if (c.n_head % c.n_head_kv != 0)
    return Error(Code::kFormat, "{}: 'num_key_value_heads' = {} does not divide {} heads", name,
                 c.n_head_kv, c.n_head);
  SQZ_RETURN_IF_ERROR(json_int(j, name, "head_dim", 1, 1 << 16, hd));
  if (hd) {
    c.head_dim = (int)*hd;
  } else {
    if (c.n_embd % c.n_head != 0)
      return Error(Code::kFormat, "{}: 'hidden_size' {} is not a multiple of {} heads", name,
                   c.n_embd, c.n_head);
    c.head_dim = c.n_embd / c.n_head;
  }
  if (c.head_dim % 2 != 0)
    return Error(Code::kFormat, "{}: head_dim {} is odd (rotary embeddings need pairs)", name,
                 c.head_dim);

  double eps = 1e-6, theta = 10000.0;  // transformers' defaults for these configs
  SQZ_RETURN_IF_ERROR(json_float(j, name, "rms_norm_eps", eps));
  SQZ_RETURN_IF_ERROR(json_float(j, name, "rope_theta", theta));
  if (!(eps > 0 && eps < 1))
    return Error(Code::kFormat, "{}: 'rms_norm_eps' = {} is not in (0, 1)", name, eps);
  if (!(theta > 1 && theta < 1e12))
    return Error(Code::kFormat, "{}: 'rope_theta' = {} is not a sane rope base", name, theta);
  c.rms_eps = (float)eps;
  c.rope_theta = (float)theta;
  SQZ_RETURN_IF_ERROR(json_bool(j, name, "tie_word_embeddings", c.tied_embeddings));

  if (auto it = j.find("rope_scaling"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) return Error(Code::kFormat, "{}: 'rope_scaling' must be an object", name);
    const json& rs = *it;
    std::string type;
    for (const char* k : {"rope_type", "type"})
      if (auto t = rs.find(k); t != rs.end() && t->is_string()) {
        type = t->get<std::string>();
        break;
      }
    const std::string rs_name = name + ": rope_scaling";
    if (type == "llama3") {
      double factor = 0, lo = c.rope_low_freq_factor, hi = c.rope_high_freq_factor;
      SQZ_RETURN_IF_ERROR(json_float(rs, rs_name, "factor", factor));
      SQZ_RETURN_IF_ERROR(json_float(rs, rs_name, "low_freq_factor", lo));
      SQZ_RETURN_IF_ERROR(json_float(rs, rs_name, "high_freq_factor", hi));
      std::optional<int64_t> orig;
      SQZ_RETURN_IF_ERROR(
          json_int(rs, rs_name, "original_max_position_embeddings", 1, 1 << 30, orig));
      // The llama3 wavelength interpolation divides by (high - low) and by factor.
      if (!(factor >= 1) || !(lo > 0) || !(hi > lo))
        return Error(Code::kFormat,
                     "{}: llama3 needs factor >= 1 and 0 < low_freq_factor < high_freq_factor "
                     "(got {}, {}, {})",
                     rs_name, factor, lo, hi);
      c.rope_scale_factor = (float)factor;
      c.rope_low_freq_factor = (float)lo;
      c.rope_high_freq_factor = (float)hi;
      if (orig) c.rope_orig_ctx = (int)*orig;
    } else if (type != "default" && !type.empty()) {
      return Error(Code::kUnsupported, "{}: type '{}' is not supported (llama3)", rs_name, type);
    }
  }
  c.rope_neox = true;  // HF checkpoints are not permuted into GGUF's adjacent-pair order
  return c;
}

struct DtypeInfo {
  const char* name;
  DType type;
  size_t size;
};
constexpr DtypeInfo kDtypes[] = {
    {"F32", DType::kF32, 4}, {"F16", DType::kF16, 2}, {"BF16", DType::kBF16, 2}};

Status parse_memory_impl(const uint8_t* data, size_t size, const std::string& name,
                         std::vector<TensorView>& out, std::vector<std::vector<uint8_t>>& owned) {
  if (size < 8)
    return Error(Code::kFormat, "{}: truncated: header length needs 8 bytes, file size is {}", name,
                 size);
  uint64_t n = 0;
  std::memcpy(&n, data, 8);
  if (n > size - 8)
    return Error(Code::kFormat, "{}: header length {} exceeds the {} bytes after it", name, n,
                 size - 8);
  if (n > kMaxHeaderBytes)
    return Error(Code::kFormat, "{}: header length {} exceeds the 100 MB limit", name, n);
  const uint8_t* body = data + 8 + n;
  const uint64_t body_size = size - 8 - n;
  json h = json::parse(data + 8, data + 8 + n, nullptr, /*allow_exceptions=*/false);
  if (h.is_discarded()) return Error(Code::kFormat, "{}: header is not valid JSON", name);
  if (!h.is_object()) return Error(Code::kFormat, "{}: header is not a JSON object", name);

  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& key = it.key();
    const json& v = it.value();
    if (key == "__metadata__") {
      if (!v.is_object()) return Error(Code::kFormat, "{}: '__metadata__' is not an object", name);
      continue;
    }
    const std::string tn = fmt::format("tensor '{}'", key);
    if (!v.is_object()) return Error(Code::kFormat, "{}: {}: entry is not an object", name, tn);
    auto dt = v.find("dtype");
    auto sh = v.find("shape");
    auto off = v.find("data_offsets");
    if (dt == v.end() || !dt->is_string())
      return Error(Code::kFormat, "{}: {}: 'dtype' missing or not a string", name, tn);
    if (sh == v.end() || !sh->is_array())
      return Error(Code::kFormat, "{}: {}: 'shape' missing or not an array", name, tn);
    if (off == v.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned())
      return Error(Code::kFormat, "{}: {}: 'data_offsets' must be two non-negative integers", name,
                   tn);
    const std::string dts = dt->get<std::string>();
    const DtypeInfo* info = nullptr;
    for (const auto& d : kDtypes)
      if (dts == d.name) info = &d;
    if (!info)
      return Error(Code::kUnsupported, "{}: {}: dtype '{}' is not supported (F32, F16, BF16)", name,
                   tn, dts);
    if (sh->size() > 4)
      return Error(Code::kFormat, "{}: {}: {} dims exceed 4", name, tn, sh->size());
    TensorView t;
    t.name = key;
    t.type = info->type;
    t.n_dims = (int)sh->size();
    int64_t nel = 1;
    for (size_t d = 0; d < sh->size(); d++) {
      const json& e = (*sh)[d];
      if (!e.is_number_unsigned() || e.get<uint64_t>() == 0 ||
          e.get<uint64_t>() > (uint64_t)INT64_MAX)
        return Error(Code::kFormat, "{}: {}: shape[{}] is not a positive integer", name, tn, d);
      const int64_t x = (int64_t)e.get<uint64_t>();
      if (x > INT64_MAX / nel / (int64_t)info->size)
        return Error(Code::kFormat, "{}: {}: element count overflows", name, tn);
      nel *= x;
      // safetensors shapes are outermost-first; ggml's ne[0] is the innermost dimension.
      t.ne[sh->size() - 1 - d] = x;
    }
    const uint64_t begin = (*off)[0].get<uint64_t>(), end = (*off)[1].get<uint64_t>();
    if (begin > end || end > body_size)
      return Error(Code::kFormat, "{}: {}: data_offsets [{}, {}) outside the {}-byte data section",
                   name, tn, begin, end, body_size);
    t.nbytes = (size_t)nel * info->size;
    if (end - begin != t.nbytes)
      return Error(Code::kFormat, "{}: {}: data_offsets [{}, {}) hold {} bytes but {} {} needs {}",
                   name, tn, begin, end, end - begin, dts, sh->dump(), t.nbytes);
    const uint8_t* p = body + begin;
    if ((uintptr_t)p % info->size != 0) {
      // Kernels read floats through typed pointers; realign rather than rely on unaligned loads.
      owned.emplace_back(p, p + t.nbytes);
      p = owned.back().data();
    }
    t.data = p;
    out.push_back(std::move(t));
  }
  return Status::Ok();
}

}  // namespace

std::string hf_tensor_name_to_gguf(const std::string& s) {
  if (s == "model.embed_tokens.weight") return "token_embd.weight";
  if (s == "model.norm.weight") return "output_norm.weight";
  if (s == "lm_head.weight") return "output.weight";
  static const std::pair<const char*, const char*> kLayer[] = {
      {"input_layernorm", "attn_norm"},    {"self_attn.q_proj", "attn_q"},
      {"self_attn.k_proj", "attn_k"},      {"self_attn.v_proj", "attn_v"},
      {"self_attn.o_proj", "attn_output"}, {"post_attention_layernorm", "ffn_norm"},
      {"mlp.gate_proj", "ffn_gate"},       {"mlp.up_proj", "ffn_up"},
      {"mlp.down_proj", "ffn_down"},
  };
  const std::string prefix = "model.layers.";
  if (s.compare(0, prefix.size(), prefix) != 0) return s;
  size_t pos = prefix.size();
  std::string num;
  if (!parse_layer_name(s, pos, num)) return s;
  const std::string rest = s.substr(pos);
  for (const auto& [hf, gg] : kLayer) {
    const std::string h = hf;
    for (const char* suffix : {".weight", ".bias"})
      if (rest == h + suffix) return "blk." + num + "." + gg + suffix;
  }
  return s;
}

Status safetensors_parse_memory(const uint8_t* data, size_t size, const std::string& name,
                                std::vector<TensorView>& out,
                                std::vector<std::vector<uint8_t>>& owned) {
  // nlohmann-json throws on allocation failure or misuse; keep exceptions inside the library.
  try {
    return parse_memory_impl(data, size, name, out, owned);
  } catch (const std::exception& e) {
    return Error(Code::kFormat, "{}: {}", name, e.what());
  }
}

Result<ModelConfig> hf_config_from_json(const std::string& json_text, const std::string& name) {
  try {
    return hf_config_impl(json_text, name);
  } catch (const std::exception& e) {
    return Error(Code::kFormat, "{}: {}", name, e.what());
  }
}

namespace {

Result<std::unique_ptr<ModelFile>> open_impl(const std::string& dir) {
  auto mf = std::make_unique<ModelFile>();
  mf->path = dir;
  mf->format = "safetensors";
  const fs::path root(dir);

  const std::string cfg_path = (root / "config.json").string();
  SQZ_ASSIGN_OR_RETURN(std::string cfg_text, read_text_file(cfg_path));
  SQZ_ASSIGN_OR_RETURN(mf->config, hf_config_from_json(cfg_text, cfg_path));
  if (mf->config.name.empty()) mf->config.name = root.filename().string();
  mf->meta["general.architecture"] = mf->config.arch;
  mf->meta["general.name"] = mf->config.name;

  std::vector<std::string> shards;
  std::error_code ec;
  for (fs::directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
    const fs::path& p = it->path();
    if (p.extension() == ".safetensors" && it->is_regular_file(ec)) shards.push_back(p.string());
  }
  if (ec) return Error(Code::kIo, "{}: cannot list directory: {}", dir, ec.message());
  if (shards.empty()) return Error(Code::kIo, "{}: no *.safetensors files", dir);
  std::sort(shards.begin(), shards.end());

  std::map<std::string, std::string> hf_file;  // HF tensor name -> shard file name
  std::set<std::string> gguf_names;
  for (const std::string& shard : shards) {
    SQZ_ASSIGN_OR_RETURN(std::shared_ptr<MappedFile> map, MappedFile::open(shard));
    std::vector<TensorView> ts;
    SQZ_RETURN_IF_ERROR(safetensors_parse_memory(map->data(), map->size(), shard, ts, mf->owned));
    for (TensorView& t : ts) {
      if (hf_file.count(t.name))
        return Error(Code::kFormat, "{}: tensor '{}' also appears in {}", shard, t.name,
                     hf_file[t.name]);
      hf_file[t.name] = fs::path(shard).filename().string();
      const std::string hf_name = t.name;
      t.name = hf_tensor_name_to_gguf(hf_name);
      if (!gguf_names.insert(t.name).second)
        return Error(Code::kFormat, "{}: tensor '{}' maps to '{}', which already exists", shard,
                     hf_name, t.name);
      if (t.n_dims <= 1 && (t.type == DType::kF16 || t.type == DType::kBF16)) {
        // Norm weights and biases are F32 in every GGUF, and the model reads them as float*;
        // widening these few small vectors here keeps that true for BF16/F16 checkpoints.
        const int64_t n = t.nelements();
        std::vector<uint8_t> buf((size_t)n * sizeof(float));
        float* dst = reinterpret_cast<float*>(buf.data());
        for (int64_t i = 0; i < n; i++) {
          uint16_t h;
          std::memcpy(&h, (const uint8_t*)t.data + 2 * i, 2);
          dst[i] = t.type == DType::kF16 ? fp16_to_fp32(h) : bf16_to_fp32(h);
        }
        mf->owned.push_back(std::move(buf));
        t.data = mf->owned.back().data();
        t.type = DType::kF32;
        t.nbytes = (size_t)n * sizeof(float);
      }
      mf->tensors.push_back(std::move(t));
    }
    mf->mappings.push_back(std::move(map));
  }

  // The index is optional, but when present every tensor it lists must be where it says.
  const std::string index_path = (root / "model.safetensors.index.json").string();
  if (fs::exists(index_path, ec)) {
    SQZ_ASSIGN_OR_RETURN(std::string text, read_text_file(index_path));
    json idx = json::parse(text, nullptr, false);
    if (idx.is_discarded() || !idx.is_object())
      return Error(Code::kFormat, "{}: invalid JSON", index_path);
    auto wm = idx.find("weight_map");
    if (wm == idx.end() || !wm->is_object())
      return Error(Code::kFormat, "{}: 'weight_map' missing or not an object", index_path);
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      if (!it.value().is_string())
        return Error(Code::kFormat, "{}: weight_map['{}'] is not a string", index_path, it.key());
      auto f = hf_file.find(it.key());
      if (f == hf_file.end())
        return Error(Code::kFormat, "{}: tensor '{}' listed in weight_map ({}) was not found",
                     index_path, it.key(), it.value().get<std::string>());
      if (f->second != it.value().get<std::string>())
        return Error(Code::kFormat, "{}: tensor '{}' is listed in {} but found in {}", index_path,
                     it.key(), it.value().get<std::string>(), f->second);
    }
  }

  ModelConfig& c = mf->config;
  c.qkv_bias = mf->find("blk.0.attn_q.bias") != nullptr;
  const bool has_output = mf->find("output.weight") != nullptr;
  if (!has_output && !c.tied_embeddings)
    return Error(Code::kFormat,
                 "{}: lm_head.weight is missing and 'tie_word_embeddings' is not true", cfg_path);
  c.tied_embeddings = !has_output;

  const std::string tok_path = (root / "tokenizer.json").string();
  SQZ_ASSIGN_OR_RETURN(std::string tok_text, read_text_file(tok_path));
  std::string tok_cfg_text;
  const std::string tok_cfg_path = (root / "tokenizer_config.json").string();
  if (fs::exists(tok_cfg_path, ec)) {
    SQZ_ASSIGN_OR_RETURN(tok_cfg_text, read_text_file(tok_cfg_path));
  }
  auto tok = tokenizer_data_from_hf_json(tok_text, tok_cfg_text);
  if (!tok.ok()) return Status(tok.status().code(), tok_path + ": " + tok.status().message());
  mf->tokenizer = std::move(tok).value();
  if (mf->tokenizer.chat_template.empty() && !tok_cfg_text.empty()) {
    json tc = json::parse(tok_cfg_text, nullptr, false);
    if (tc.is_object())
      if (auto it = tc.find("chat_template"); it != tc.end() && it->is_string())
        mf->tokenizer.chat_template = it->get<std::string>();
  }
  return mf;
}

}  // namespace

Result<std::unique_ptr<ModelFile>> safetensors_open(const std::string& dir) {
  try {
    return open_impl(dir);
  } catch (const std::exception& e) {
    return Error(Code::kInternal, "{}: {}", dir, e.what());
  }
}

}  // namespace sqz
