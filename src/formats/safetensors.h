// Hugging Face model directories: config.json + *.safetensors + tokenizer.json.
// safetensors layout: u64 little-endian header length N | N bytes of JSON header | data.
// The header maps tensor name -> {"dtype", "shape" (row-major, outermost first),
// "data_offsets": [begin, end) relative to the first byte after the header}, plus an optional
// "__metadata__" object of string -> string.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "formats/model_file.h"

namespace sqz {

// HF parameter name -> GGUF name ("model.layers.3.self_attn.q_proj.weight" ->
// "blk.3.attn_q.weight"). Names we do not know are returned unchanged.
std::string hf_tensor_name_to_gguf(const std::string& hf_name);

// Parses one safetensors image in memory and appends its tensors to `out` with their names as
// stored in the file and shapes converted to ggml order (ne[0] innermost). Data pointers point
// into `data`, except tensors whose data is not aligned to their element size: those are copied
// into a new buffer appended to `owned`. `name` prefixes error messages.
Status safetensors_parse_memory(const uint8_t* data, size_t size, const std::string& name,
                                std::vector<TensorView>& out,
                                std::vector<std::vector<uint8_t>>& owned);

// config.json text -> ModelConfig (llama / mistral / qwen2). rope_neox = true because HF
// checkpoints keep Q/K in half-split rotary order. `name` prefixes error messages.
// qkv_bias and tied_embeddings depend on the tensors and are set by safetensors_open.
Result<ModelConfig> hf_config_from_json(const std::string& json_text, const std::string& name);

}  // namespace sqz
