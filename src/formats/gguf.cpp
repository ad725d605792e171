// GGUF v2/v3 reader. Every length, count and offset read from the file is checked against the
// bytes that remain before it is used, so a truncated or hostile file yields a kFormat /
// kUnsupported error naming the file and the field instead of an out-of-bounds read.
#include "formats/gguf.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <unordered_set>
#include <vector>

#include "core/dtype.h"
#include "core/mmap_file.h"

namespace sqz {

namespace gguf {

const char* value_type_name(uint32_t t) {
  static const char* const kNames[kValueTypeCount] = {
      "uint8", "int8",   "uint16", "int16",  "uint32", "int32",  "float32",
      "bool",  "string", "array",  "uint64", "int64",  "float64"};
  return t < kValueTypeCount ? kNames[t] : "unknown";
}

size_t scalar_size(uint32_t t) {
  switch (t) {
    case kU8:
    case kI8:
    case kBool:
      return 1;
    case kU16:
    case kI16:
      return 2;
    case kU32:
    case kI32:
    case kF32:
      return 4;
    case kU64:
    case kI64:
    case kF64:
      return 8;
    default:
      return 0;
  }
}

}  // namespace gguf

namespace {

using namespace gguf;

// Smallest number of bytes one value of type `t` can occupy in the file; used to reject
// counts that the remaining bytes could not possibly hold before allocating for them.
size_t min_encoded_size(uint32_t t) {
  if (t == kString) return 8;     // u64 length, empty string
  if (t == kArray) return 4 + 8;  // element type + count, empty array
  return scalar_size(t);
}

class Parser {
 public:
  Parser(const uint8_t* data, size_t size, const std::string& name)
      : base_(data), size_(size), name_(name) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }
  const std::string& name() const { return name_; }

  template <typename T>
  bool get(T& v) {
    if (sizeof(T) > remaining()) return false;
    std::memcpy(&v, base_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }

  Status truncated(const std::string& field, size_t need) const {
    return Error(Code::kFormat,
                 "{}: truncated: {} needs {} bytes at offset {} but the file size is {}", name_,
                 field, need, pos_, size_);
  }

  // `field` is a callable producing the field description, only invoked on error so the hot
  // path (100k+ vocabulary strings) does not format anything.
  template <typename F>
  Status read_string(std::string& out, F&& field) {
    uint64_t len = 0;
    if (!get(len)) return truncated(field() + " (string length)", 8);
    if (len > remaining())
      return Error(Code::kFormat,
                   "{}: {}: string length {} exceeds the {} bytes left in the file (offset {})",
                   name_, field(), len, remaining(), pos_);
    out.assign(reinterpret_cast<const char*>(base_ + pos_), (size_t)len);
    pos_ += (size_t)len;
    return Status::Ok();
  }

  // Parses one value of type `type` into `out`. `path` holds array indices for messages.
  Status read_value(uint32_t type, const std::string& key, int depth, MetaValue& out) {
    if (++n_values_ > kMaxMetaValues)
      return Error(Code::kFormat, "{}: metadata '{}': more than {} metadata values in total", name_,
                   key, kMaxMetaValues);
    auto field = [&] { return fmt::format("metadata '{}'{}", key, index_suffix()); };
    switch (type) {
      case kU8:
        return read_scalar<uint8_t, uint64_t>(out, field);
      case kI8:
        return read_scalar<int8_t, int64_t>(out, field);
      case kU16:
        return read_scalar<uint16_t, uint64_t>(out, field);
      case kI16:
        return read_scalar<int16_t, int64_t>(out, field);
      case kU32:
        return read_scalar<uint32_t, uint64_t>(out, field);
      case kI32:
        return read_scalar<int32_t, int64_t>(out, field);
      case kU64:
        return read_scalar<uint64_t, uint64_t>(out, field);
      case kI64:
        return read_scalar<int64_t, int64_t>(out, field);
      case kF32:
        return read_scalar<float, double>(out, field);
      case kF64:
        return read_scalar<double, double>(out, field);
      case kBool: {
        uint8_t b = 0;
        if (!get(b)) return truncated(field() + " (bool)", 1);
        // Spec: one byte, 0 or 1. Anything else means we are misaligned in a corrupt file.
        if (b > 1)
          return Error(Code::kFormat, "{}: {}: bool value {} is not 0 or 1 (offset {})", name_,
                       field(), b, pos_ - 1);
        out = b != 0;
        return Status::Ok();
      }
      case kString: {
        std::string s;
        SQZ_RETURN_IF_ERROR(read_string(s, field));
        out = std::move(s);
        return Status::Ok();
      }
      case kArray:
        return read_array(key, depth, out);
      default:
        return Error(Code::kFormat, "{}: {}: unknown value type {} (offset {})", name_, field(),
                     type, pos_);
    }
  }

 private:
  template <typename Raw, typename Stored, typename F>
  Status read_scalar(MetaValue& out, F&& field) {
    Raw v{};
    if (!get(v)) return truncated(field(), sizeof(Raw));
    out = static_cast<Stored>(v);
    return Status::Ok();
  }

  Status read_array(const std::string& key, int depth, MetaValue& out) {
    auto field = [&] { return fmt::format("metadata '{}'{}", key, index_suffix()); };
    if (depth >= kMaxArrayDepth)
      return Error(Code::kFormat, "{}: {}: arrays nested deeper than {}", name_, field(),
                   kMaxArrayDepth);
    uint32_t elem_type = 0;
    uint64_t n = 0;
    if (!get(elem_type)) return truncated(field() + " (array element type)", 4);
    if (elem_type >= kValueTypeCount)
      return Error(Code::kFormat, "{}: {}: unknown array element type {} (offset {})", name_,
                   field(), elem_type, pos_ - 4);
    if (!get(n)) return truncated(field() + " (array length)", 8);
    const size_t min_size = min_encoded_size(elem_type);
    if (n > remaining() / min_size)
      return Error(Code::kFormat,
                   "{}: {}: array of {} {} elements cannot fit in the {} bytes left in the file",
                   name_, field(), n, value_type_name(elem_type), remaining());
    if (n > kMaxMetaValues - n_values_)
      return Error(Code::kFormat, "{}: {}: more than {} metadata values in total", name_, field(),
                   kMaxMetaValues);
    auto arr = std::make_shared<MetaArray>();
    arr->elem_type = elem_type;
    arr->values.resize((size_t)n);
    path_.push_back(0);
    for (uint64_t i = 0; i < n; i++) {
      path_.back() = i;
      Status st = read_value(elem_type, key, depth + 1, arr->values[(size_t)i]);
      if (!st.ok()) return st;
    }
    path_.pop_back();
    out = std::move(arr);
    return Status::Ok();
  }

  std::string index_suffix() const {
    std::string s;
    for (uint64_t i : path_) s += fmt::format("[{}]", i);
    return s;
  }

  const uint8_t* base_;
  size_t size_;
  size_t pos_ = 0;
  const std::string& name_;
  uint64_t n_values_ = 0;
  std::vector<uint64_t> path_;  // array indices of the value being parsed
};

const TensorView* find_tensor(const ModelFile& mf, const std::string& name) {
  for (const auto& t : mf.tensors)
    if (t.name == name) return &t;
  return nullptr;
}

// Unwraps Result<std::optional<T>> into `var` (left unchanged when the key is absent).
#define SQZ_META_INTO(var, expr)                   \
  do {                                             \
    auto _r = (expr);                              \
    if (!_r.ok()) return _r.status();              \
    if (_r.value().has_value()) var = *_r.value(); \
  } while (0)

Status fill_config(ModelFile& mf) {
  ModelConfig& c = mf.config;
  std::optional<std::string> arch;
  SQZ_META_INTO(arch, meta_string(mf, "general.architecture"));
  if (!arch) return Error(Code::kFormat, "{}: metadata 'general.architecture' is missing", mf.path);
  c.arch = *arch;
  if (c.arch != "llama" && c.arch != "mistral" && c.arch != "qwen2")
    return Error(Code::kUnsupported,
                 "{}: general.architecture '{}' is not supported (llama, mistral, qwen2)", mf.path,
                 c.arch);
  SQZ_META_INTO(c.name, meta_string(mf, "general.name"));
  const std::string a = c.arch + ".";

  // Required integer hyper-parameters; bounds keep later size arithmetic far from overflow.
  auto req_int = [&](const char* suffix, int64_t hi, int& dst) -> Status {
    auto r = meta_int(mf, a + suffix, 1, hi);
    if (!r.ok()) return r.status();
    if (!r.value())
      return Error(Code::kFormat, "{}: metadata '{}{}' is missing", mf.path, a, suffix);
    dst = (int)*r.value();
    return Status::Ok();
  };
  SQZ_RETURN_IF_ERROR(req_int("embedding_length", 1 << 20, c.n_embd));
  SQZ_RETURN_IF_ERROR(req_int("block_count", 1 << 16, c.n_layer));
  SQZ_RETURN_IF_ERROR(req_int("attention.head_count", 1 << 16, c.n_head));
  SQZ_RETURN_IF_ERROR(req_int("feed_forward_length", 1 << 24, c.n_ff));
  SQZ_RETURN_IF_ERROR(req_int("context_length", 1 << 30, c.n_ctx_train));

  int64_t n_head_kv = c.n_head;
  SQZ_META_INTO(n_head_kv, meta_int(mf, a + "attention.head_count_kv", 1, c.n_head));
  if (c.n_head % n_head_kv != 0)
    return Error(Code::kFormat,
                 "{}: metadata '{}attention.head_count_kv' = {} does not divide head_count {}",
                 mf.path, a, n_head_kv, c.n_head);
  c.n_head_kv = (int)n_head_kv;

  // head_dim: explicit key_length wins, then the rotary dimension, then embd / heads.
  std::optional<int64_t> key_len, rope_dim;
  SQZ_META_INTO(key_len, meta_int(mf, a + "attention.key_length", 1, 1 << 16));
  SQZ_META_INTO(rope_dim, meta_int(mf, a + "rope.dimension_count", 1, 1 << 16));
  if (key_len) {
    c.head_dim = (int)*key_len;
  } else if (rope_dim) {
    c.head_dim = (int)*rope_dim;
  } else {
    if (c.n_embd % c.n_head != 0)
      return Error(Code::kFormat,
                   "{}: embedding_length {} is not a multiple of head_count {} and "
                   "'{}attention.key_length' is absent",
                   mf.path, c.n_embd, c.n_head, a);
    c.head_dim = c.n_embd / c.n_head;
  }
  if (rope_dim && *rope_dim != c.head_dim)
    return Error(Code::kUnsupported,
                 "{}: metadata '{}rope.dimension_count' = {} differs from head_dim {} (partial "
                 "rotary embeddings are not supported)",
                 mf.path, a, *rope_dim, c.head_dim);
  if (c.head_dim % 2 != 0)
    return Error(Code::kFormat, "{}: head_dim {} is odd (rotary embeddings need pairs)", mf.path,
                 c.head_dim);

  double eps = c.rms_eps, theta = c.rope_theta;
  SQZ_META_INTO(eps, meta_float(mf, a + "attention.layer_norm_rms_epsilon"));
  SQZ_META_INTO(theta, meta_float(mf, a + "rope.freq_base"));
  if (!(eps > 0 && eps < 1))
    return Error(Code::kFormat,
                 "{}: metadata '{}attention.layer_norm_rms_epsilon' = {} is not in (0, 1)", mf.path,
                 a, eps);
  if (!(theta > 1 && std::isfinite(theta) && theta < 1e12))
    return Error(Code::kFormat, "{}: metadata '{}rope.freq_base' = {} is not a sane rope base",
                 mf.path, a, theta);
  c.rms_eps = (float)eps;
  c.rope_theta = (float)theta;

  // Rope scaling. Llama-3.x GGUFs carry their scaling pre-baked in the `rope_freqs.weight`
  // tensor (the model reads it), so only explicit scaling keys are interpreted here.
  std::optional<std::string> scaling_type;
  SQZ_META_INTO(scaling_type, meta_string(mf, a + "rope.scaling.type"));
  double factor = 0;
  SQZ_META_INTO(factor, meta_float(mf, a + "rope.scaling.factor"));
  if (scaling_type && *scaling_type == "llama3") {
    if (!(factor >= 1 && factor < 1e6))
      return Error(Code::kFormat, "{}: metadata '{}rope.scaling.factor' = {} is invalid", mf.path,
                   a, factor);
    c.rope_scale_factor = (float)factor;
    int64_t orig = c.rope_orig_ctx;
    SQZ_META_INTO(orig, meta_int(mf, a + "rope.scaling.original_context_length", 1, 1 << 30));
    c.rope_orig_ctx = (int)orig;
  } else if (scaling_type && *scaling_type != "none" && factor != 0 && factor != 1) {
    // Linear / YaRN scaling would silently change the model's numerics if ignored.
    return Error(Code::kUnsupported, "{}: metadata '{}rope.scaling.type' = '{}' is not supported",
                 mf.path, a, *scaling_type);
  }

  // GGUF llama/mistral converters permute Q/K rows into adjacent-pair rotary order; qwen2
  // weights keep the Hugging Face half-split (NeoX) order.
  c.rope_neox = c.arch == "qwen2";
  c.qkv_bias = find_tensor(mf, "blk.0.attn_q.bias") != nullptr;
  c.tied_embeddings = find_tensor(mf, "output.weight") == nullptr;

  // Vocabulary: the tokenizer's token list, else the explicit key, else the embedding rows.
  if (!mf.tokenizer.tokens.empty()) {
    c.n_vocab = (int)mf.tokenizer.tokens.size();
  } else {
    int64_t nv = 0;
    SQZ_META_INTO(nv, meta_int(mf, a + "vocab_size", 1, INT32_MAX));
    if (nv == 0)
      if (const TensorView* e = find_tensor(mf, "token_embd.weight")) nv = e->ne[1];
    if (nv <= 0 || nv > INT32_MAX)
      return Error(Code::kFormat,
                   "{}: vocabulary size unknown (no tokenizer.ggml.tokens, "
                   "'{}vocab_size' or token_embd.weight)",
                   mf.path, a);
    c.n_vocab = (int)nv;
  }
  return Status::Ok();
}

// Reads a token id key; absent -> `dst` unchanged. Ids must index the token list.
Status token_id(const ModelFile& mf, const std::string& key, int32_t& dst, bool lenient) {
  auto r = meta_int(mf, key, INT32_MIN, INT64_MAX);
  if (!r.ok()) return r.status();
  if (!r.value()) return Status::Ok();
  const int64_t v = *r.value();
  const int64_t n = (int64_t)mf.tokenizer.tokens.size();
  if (v < 0 || (n > 0 && v >= n) || v > INT32_MAX) {
    // Some converters write a placeholder padding id outside the vocabulary; an unusable
    // padding token is harmless, an unusable bos/eos is not.
    if (lenient) return Status::Ok();
    return Error(Code::kFormat, "{}: metadata '{}' = {} is outside the vocabulary of {} tokens",
                 mf.path, key, v, n);
  }
  dst = (int32_t)v;
  return Status::Ok();
}

Status fill_tokenizer(ModelFile& mf) {
  TokenizerData& t = mf.tokenizer;
  SQZ_META_INTO(t.model, meta_string(mf, "tokenizer.ggml.model"));
  SQZ_META_INTO(t.pre, meta_string(mf, "tokenizer.ggml.pre"));
  SQZ_META_INTO(t.chat_template, meta_string(mf, "tokenizer.chat_template"));

  auto str_array = [&](const char* key, std::vector<std::string>& dst) -> Status {
    SQZ_ASSIGN_OR_RETURN(const MetaArray* arr, meta_array(mf, key));
    if (!arr) return Status::Ok();
    if (arr->elem_type != kString)
      return Error(Code::kFormat, "{}: metadata '{}': expected an array of string, got {}", mf.path,
                   key, value_type_name(arr->elem_type));
    dst.reserve(arr->values.size());
    for (const auto& v : arr->values) dst.push_back(std::get<std::string>(v));
    return Status::Ok();
  };
  SQZ_RETURN_IF_ERROR(str_array("tokenizer.ggml.tokens", t.tokens));
  SQZ_RETURN_IF_ERROR(str_array("tokenizer.ggml.merges", t.merges));
  if (t.tokens.size() > (size_t)INT32_MAX)
    return Error(Code::kFormat, "{}: metadata 'tokenizer.ggml.tokens': too many tokens", mf.path);
  const size_t n_tok = t.tokens.size();

  {
    SQZ_ASSIGN_OR_RETURN(const MetaArray* arr, meta_array(mf, "tokenizer.ggml.scores"));
    if (arr) {
      if (arr->elem_type != kF32 && arr->elem_type != kF64)
        return Error(Code::kFormat,
                     "{}: metadata 'tokenizer.ggml.scores': expected an array of float32, got {}",
                     mf.path, value_type_name(arr->elem_type));
      if (arr->values.size() != n_tok)
        return Error(Code::kFormat,
                     "{}: metadata 'tokenizer.ggml.scores' has {} entries but there are {} tokens",
                     mf.path, arr->values.size(), n_tok);
      t.scores.reserve(n_tok);
      for (const auto& v : arr->values) t.scores.push_back((float)std::get<double>(v));
    }
  }
  {
    SQZ_ASSIGN_OR_RETURN(const MetaArray* arr, meta_array(mf, "tokenizer.ggml.token_type"));
    if (arr) {
      const bool is_signed = arr->elem_type == kI8 || arr->elem_type == kI16 ||
                             arr->elem_type == kI32 || arr->elem_type == kI64;
      const bool is_unsigned = arr->elem_type == kU8 || arr->elem_type == kU16 ||
                               arr->elem_type == kU32 || arr->elem_type == kU64;
      if (!is_signed && !is_unsigned)
        return Error(Code::kFormat,
                     "{}: metadata 'tokenizer.ggml.token_type': expected an array of int32, got {}",
                     mf.path, value_type_name(arr->elem_type));
      if (arr->values.size() != n_tok)
        return Error(Code::kFormat,
                     "{}: metadata 'tokenizer.ggml.token_type' has {} entries but there are {} "
                     "tokens",
                     mf.path, arr->values.size(), n_tok);
      t.token_types.reserve(n_tok);
      for (size_t i = 0; i < n_tok; i++) {
        const MetaValue& v = arr->values[i];
        const int64_t x = is_signed ? std::get<int64_t>(v)
                                    : (int64_t)std::min<uint64_t>(std::get<uint64_t>(v), 1u << 30);
        if (x < 0 || x > 6)
          return Error(Code::kFormat,
                       "{}: metadata 'tokenizer.ggml.token_type'[{}] = {} is not a token type "
                       "(0..6)",
                       mf.path, i, x);
        t.token_types.push_back((int32_t)x);
      }
    }
  }

  // SentencePiece ("llama") vocabularies add BOS and a leading space unless told otherwise.
  t.add_bos = t.model == "llama";
  t.add_space_prefix = t.model == "llama";
  SQZ_META_INTO(t.add_bos, meta_bool(mf, "tokenizer.ggml.add_bos_token"));
  SQZ_META_INTO(t.add_eos, meta_bool(mf, "tokenizer.ggml.add_eos_token"));
  SQZ_META_INTO(t.add_space_prefix, meta_bool(mf, "tokenizer.ggml.add_space_prefix"));

  SQZ_RETURN_IF_ERROR(token_id(mf, "tokenizer.ggml.bos_token_id", t.bos_id, false));
  SQZ_RETURN_IF_ERROR(token_id(mf, "tokenizer.ggml.eos_token_id", t.eos_id, false));
  SQZ_RETURN_IF_ERROR(token_id(mf, "tokenizer.ggml.eot_token_id", t.eot_id, false));
  SQZ_RETURN_IF_ERROR(token_id(mf, "tokenizer.ggml.unknown_token_id", t.unk_id, true));
  SQZ_RETURN_IF_ERROR(token_id(mf, "tokenizer.ggml.padding_token_id", t.pad_id, true));
  if (t.eot_id < 0) {
    // Chat models converted without an eot key still end turns with these tokens.
    for (const char* cand : {"<|im_end|>", "<|eot_id|>"}) {
      for (size_t i = 0; i < n_tok && t.eot_id < 0; i++)
        if (t.tokens[i] == cand) t.eot_id = (int32_t)i;
      if (t.eot_id >= 0) break;
    }
  }
  return Status::Ok();
}

#undef SQZ_META_INTO

}  // namespace

Result<std::unique_ptr<ModelFile>> gguf_open_memory(const uint8_t* data, size_t size,
                                                    const std::string& name) {
  auto mf = std::make_unique<ModelFile>();
  mf->path = name;
  mf->format = "gguf";
  Parser p(data, size, name);

  uint8_t magic[4] = {0, 0, 0, 0};
  if (!p.get(magic)) return p.truncated("magic", 4);
  if (std::memcmp(magic, kMagic, 4) != 0)
    return Error(Code::kFormat, "{}: bad magic {:02x} {:02x} {:02x} {:02x} (expected 'GGUF')", name,
                 magic[0], magic[1], magic[2], magic[3]);
  uint32_t version = 0;
  if (!p.get(version)) return p.truncated("version", 4);
  if (version != 2 && version != 3) {
    // A byte-swapped small number is the signature of a big-endian GGUF.
    const bool big_endian = version == 0x02000000u || version == 0x03000000u;
    return Error(Code::kUnsupported, "{}: GGUF version {} is not supported (2 and 3 are){}", name,
                 version, big_endian ? "; the file looks big-endian" : "");
  }
  mf->version = version;
  uint64_t n_tensors = 0, n_kv = 0;
  if (!p.get(n_tensors)) return p.truncated("tensor count", 8);
  if (!p.get(n_kv)) return p.truncated("metadata count", 8);
  // Each KV needs >= 13 bytes (key length, type, 1-byte value); each tensor info >= 24.
  if (n_kv > p.remaining() / 13)
    return Error(Code::kFormat, "{}: metadata count {} cannot fit in a {}-byte file", name, n_kv,
                 size);
  if (n_tensors > p.remaining() / 24)
    return Error(Code::kFormat, "{}: tensor count {} cannot fit in a {}-byte file", name, n_tensors,
                 size);

  uint32_t alignment = kDefaultAlignment;
  for (uint64_t i = 0; i < n_kv; i++) {
    std::string key;
    SQZ_RETURN_IF_ERROR(p.read_string(key, [&] { return fmt::format("metadata #{} key", i); }));
    uint32_t type = 0;
    if (!p.get(type)) return p.truncated(fmt::format("metadata '{}' type", key), 4);
    if (type >= kValueTypeCount)
      return Error(Code::kFormat, "{}: metadata '{}': unknown value type {} (offset {})", name, key,
                   type, p.pos() - 4);
    if (mf->meta.count(key))
      return Error(Code::kFormat, "{}: metadata '{}' appears twice", name, key);
    MetaValue v;
    SQZ_RETURN_IF_ERROR(p.read_value(type, key, 0, v));
    if (key == "general.alignment") {
      if (type != kU32)
        return Error(Code::kFormat,
                     "{}: metadata 'general.alignment' has type {} (expected uint32)", name,
                     value_type_name(type));
      const uint64_t al = std::get<uint64_t>(v);
      if (al == 0 || (al & (al - 1)) != 0)
        return Error(Code::kFormat, "{}: metadata 'general.alignment' = {} is not a power of two",
                     name, al);
      alignment = (uint32_t)al;
    }
    mf->meta.emplace(std::move(key), std::move(v));
  }

  struct Info {
    uint64_t offset;
  };
  std::vector<Info> infos;
  infos.reserve((size_t)n_tensors);
  mf->tensors.reserve((size_t)n_tensors);
  std::unordered_set<std::string> names;
  for (uint64_t i = 0; i < n_tensors; i++) {
    TensorView t;
    SQZ_RETURN_IF_ERROR(p.read_string(t.name, [&] { return fmt::format("tensor #{} name", i); }));
    const std::string tn = fmt::format("tensor '{}'", t.name);
    if (!names.insert(t.name).second)
      return Error(Code::kFormat, "{}: {}: duplicate tensor name", name, tn);
    uint32_t n_dims = 0;
    if (!p.get(n_dims)) return p.truncated(tn + " n_dims", 4);
    if (n_dims > 4) return Error(Code::kFormat, "{}: {}: n_dims {} exceeds 4", name, tn, n_dims);
    t.n_dims = (int)n_dims;
    int64_t nel = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
      uint64_t ne = 0;
      if (!p.get(ne)) return p.truncated(fmt::format("{} ne[{}]", tn, d), 8);
      if (ne == 0 || ne > (uint64_t)INT64_MAX)
        return Error(Code::kFormat, "{}: {}: ne[{}] = {} is not a positive dimension", name, tn, d,
                     (int64_t)ne);
      if ((int64_t)ne > INT64_MAX / nel)
        return Error(Code::kFormat, "{}: {}: element count overflows (ne[{}] = {})", name, tn, d,
                     ne);
      t.ne[d] = (int64_t)ne;
      nel *= (int64_t)ne;
    }
    uint32_t type_id = 0;
    if (!p.get(type_id)) return p.truncated(tn + " type", 4);
    const DTypeTraits* tr = dtype_traits(type_id);
    if (!tr || !tr->supported)
      return Error(Code::kUnsupported, "{}: {}: unsupported tensor type id {}{}", name, tn, type_id,
                   tr ? fmt::format(" ({})", tr->name) : std::string());
    t.type = tr->type;
    // Whole blocks per row: kernels walk rows block by block.
    if (t.ne[0] % tr->block_size != 0)
      return Error(Code::kFormat, "{}: {}: ne[0] = {} is not a multiple of the {} block size {}",
                   name, tn, t.ne[0], tr->name, tr->block_size);
    const uint64_t n_blocks = (uint64_t)(nel / tr->block_size);
    if (n_blocks > std::numeric_limits<uint64_t>::max() / tr->type_size)
      return Error(Code::kFormat, "{}: {}: byte size overflows", name, tn);
    const uint64_t nbytes = n_blocks * tr->type_size;
    if (nbytes > size)
      return Error(Code::kFormat, "{}: {}: {} bytes of data cannot fit in a {}-byte file", name, tn,
                   nbytes, size);
    t.nbytes = (size_t)nbytes;
    uint64_t offset = 0;
    if (!p.get(offset)) return p.truncated(tn + " offset", 8);
    if (offset % alignment != 0)
      return Error(Code::kFormat, "{}: {}: data offset {} is not a multiple of the alignment {}",
                   name, tn, offset, alignment);
    infos.push_back({offset});
    mf->tensors.push_back(std::move(t));
  }

  // Data section starts at the next multiple of the alignment after the tensor infos.
  const uint64_t data_start = ((uint64_t)p.pos() + alignment - 1) / alignment * alignment;
  for (size_t i = 0; i < mf->tensors.size(); i++) {
    TensorView& t = mf->tensors[i];
    const uint64_t off = infos[i].offset;
    // All comparisons are arranged so nothing can wrap: data_start <= size + alignment.
    if (data_start > size || off > size - data_start || t.nbytes > size - data_start - off) {
      // Printed as 128-bit so a hostile offset near 2^64 still reads correctly.
      const unsigned __int128 begin = (unsigned __int128)data_start + off;
      return Error(Code::kFormat, "{}: tensor '{}': data [{}, {}) exceeds file size {}", name,
                   t.name, begin, begin + t.nbytes, size);
    }
    t.data = data + data_start + off;
  }

  SQZ_RETURN_IF_ERROR(fill_tokenizer(*mf));
  SQZ_RETURN_IF_ERROR(fill_config(*mf));
  return mf;
}

Result<std::unique_ptr<ModelFile>> gguf_open(const std::string& path) {
  SQZ_ASSIGN_OR_RETURN(std::shared_ptr<MappedFile> map, MappedFile::open(path));
  SQZ_ASSIGN_OR_RETURN(std::unique_ptr<ModelFile> mf,
                       gguf_open_memory(map->data(), map->size(), path));
  mf->mappings.push_back(std::move(map));
  return mf;
}

// ---- typed metadata access ----

Result<std::optional<int64_t>> meta_int(const ModelFile& mf, const std::string& key, int64_t lo,
                                        int64_t hi) {
  auto it = mf.meta.find(key);
  if (it == mf.meta.end()) return std::optional<int64_t>();
  int64_t v = 0;
  if (const auto* u = std::get_if<uint64_t>(&it->second)) {
    if (*u > (uint64_t)INT64_MAX)
      return Error(Code::kFormat, "{}: metadata '{}' = {} is out of range [{}, {}]", mf.path, key,
                   *u, lo, hi);
    v = (int64_t)*u;
  } else if (const auto* s = std::get_if<int64_t>(&it->second)) {
    v = *s;
  } else {
    return Error(Code::kFormat, "{}: metadata '{}': expected an integer", mf.path, key);
  }
  if (v < lo || v > hi)
    return Error(Code::kFormat, "{}: metadata '{}' = {} is out of range [{}, {}]", mf.path, key, v,
                 lo, hi);
  return std::optional<int64_t>(v);
}

Result<std::optional<double>> meta_float(const ModelFile& mf, const std::string& key) {
  auto it = mf.meta.find(key);
  if (it == mf.meta.end()) return std::optional<double>();
  if (const auto* d = std::get_if<double>(&it->second)) return std::optional<double>(*d);
  if (const auto* u = std::get_if<uint64_t>(&it->second)) return std::optional<double>((double)*u);
  if (const auto* s = std::get_if<int64_t>(&it->second)) return std::optional<double>((double)*s);
  return Error(Code::kFormat, "{}: metadata '{}': expected a number", mf.path, key);
}

Result<std::optional<std::string>> meta_string(const ModelFile& mf, const std::string& key) {
  auto it = mf.meta.find(key);
  if (it == mf.meta.end()) return std::optional<std::string>();
  if (const auto* s = std::get_if<std::string>(&it->second)) return std::optional<std::string>(*s);
  return Error(Code::kFormat, "{}: metadata '{}': expected a string", mf.path, key);
}

Result<std::optional<bool>> meta_bool(const ModelFile& mf, const std::string& key) {
  auto it = mf.meta.find(key);
  if (it == mf.meta.end()) return std::optional<bool>();
  if (const auto* b = std::get_if<bool>(&it->second)) return std::optional<bool>(*b);
  return Error(Code::kFormat, "{}: metadata '{}': expected a bool", mf.path, key);
}

Result<const MetaArray*> meta_array(const ModelFile& mf, const std::string& key) {
  auto it = mf.meta.find(key);
  if (it == mf.meta.end()) return (const MetaArray*)nullptr;
  if (const auto* a = std::get_if<std::shared_ptr<MetaArray>>(&it->second))
    return (const MetaArray*)a->get();
  return Error(Code::kFormat, "{}: metadata '{}': expected an array", mf.path, key);
}

}  // namespace sqz
