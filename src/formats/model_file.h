// Format-neutral view of a model file: metadata, tokenizer data and tensors.
// Both the GGUF reader and the Hugging Face safetensors-directory reader produce a ModelFile;
// the model and tokenizer are built from it without knowing which format it came from.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"

namespace sqz {

// A tensor inside a mapped file. `ne` is in ggml order: ne[0] is the contiguous (innermost)
// dimension, so a weight matrix W[out][in] has ne = {in, out}.
struct TensorView {
  std::string name;
  DType type = DType::kInvalid;
  int n_dims = 0;
  int64_t ne[4] = {1, 1, 1, 1};
  const void* data = nullptr;  // points into the mapped file (or an owned buffer)
  size_t nbytes = 0;
  int64_t nelements() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
};

// Metadata value: the GGUF value types collapsed to what callers need.
struct MetaArray;
using MetaValue =
    std::variant<uint64_t, int64_t, double, bool, std::string, std::shared_ptr<MetaArray>>;
struct MetaArray {
  uint32_t elem_type = 0;  // GGUF type id of the elements
  std::vector<MetaValue> values;
};

// Architecture hyper-parameters, filled by the readers from GGUF `<arch>.*` keys or config.json.
struct ModelConfig {
  std::string arch;  // "llama", "qwen2", "mistral" ...
  std::string name;
  int n_vocab = 0;
  int n_embd = 0;
  int n_layer = 0;
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim = 0;
  int n_ff = 0;
  int n_ctx_train = 0;
  float rms_eps = 1e-5f;
  float rope_theta = 10000.0f;
  bool rope_neox =
      false;  // true: rotate halves (HF layout); false: rotate adjacent pairs (GGUF llama)
  // Llama-3 style frequency scaling ("rope_type": "llama3"); factor 0 = disabled.
  float rope_scale_factor = 0.0f;
  float rope_low_freq_factor = 1.0f;
  float rope_high_freq_factor = 4.0f;
  int rope_orig_ctx = 8192;
  bool qkv_bias = false;         // Qwen2
  bool tied_embeddings = false;  // output.weight missing -> use token_embd.weight
};

// Everything the tokenizer needs, independent of the source format.
struct TokenizerData {
  std::string model;  // "gpt2" (byte-level BPE) or "llama" (SentencePiece)
  std::string pre;    // pre-tokenizer: "smollm", "llama-bpe", "qwen2", "gpt2", "default" ...
  std::vector<std::string> tokens;
  std::vector<float> scores;  // SentencePiece scores (empty for BPE)
  std::vector<int32_t>
      token_types;  // GGUF token types: 1 normal, 2 unknown, 3 control, 4 user, 6 byte
  std::vector<std::string> merges;  // "a b" pairs, BPE only, in rank order
  int32_t bos_id = -1;
  int32_t eos_id = -1;
  int32_t eot_id = -1;  // end-of-turn (e.g. <|im_end|>, <|eot_id|>) when distinct from eos
  int32_t unk_id = -1;
  int32_t pad_id = -1;
  bool add_bos = false;
  bool add_eos = false;
  bool add_space_prefix = false;  // SentencePiece: prepend "▁"
  std::string chat_template;      // Jinja source, used to pick a built-in template
};

class MappedFile;  // core/mmap_file.h

// A loaded model file. Owns the mapping(s) that TensorView::data points into.
class ModelFile {
 public:
  std::string path;    // file or directory that was opened
  std::string format;  // "gguf" or "safetensors"
  uint32_t version = 0;
  std::map<std::string, MetaValue> meta;
  std::vector<TensorView> tensors;  // in file order
  ModelConfig config;
  TokenizerData tokenizer;
  std::vector<std::shared_ptr<MappedFile>> mappings;  // keep-alive
  std::vector<std::vector<uint8_t>> owned;            // converted tensors (e.g. BF16->F32 fixes)

  const TensorView* find(const std::string& name) const;
  // Tensor that must exist with the given shape (ggml order, trailing dims 1); error names
  // the file and tensor on a missing tensor or shape mismatch.
  Result<const TensorView*> require(const std::string& name,
                                    std::initializer_list<int64_t> ne) const;
};

// Opens a GGUF file (v2 or v3). Never crashes on malformed input: returns kFormat /
// kUnsupported errors naming the file and the offending field.
Result<std::unique_ptr<ModelFile>> gguf_open(const std::string& path);

// Opens a Hugging Face model directory (config.json, *.safetensors, tokenizer.json).
// Tensor names are mapped to GGUF names (blk.N.attn_q.weight ...); config.rope_neox = true.
Result<std::unique_ptr<ModelFile>> safetensors_open(const std::string& dir);

// Dispatch on path: a directory -> safetensors, else GGUF.
Result<std::unique_ptr<ModelFile>> model_file_open(const std::string& path);

}  // namespace sqz
