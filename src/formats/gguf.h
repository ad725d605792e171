// GGUF internals shared by the reader, the writer, the fuzzer and the tests.
// Format reference: the GGUF spec (ggml docs/gguf.md). All integers are little-endian.
//   header:  magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
//   kv:      string key | u32 value type | value
//   tensor:  string name | u32 n_dims | u64 ne[n_dims] | u32 ggml type | u64 offset
//   padding to `general.alignment` (default 32), then the data section; tensor offsets are
//   relative to the start of the data section and multiples of the alignment.
//   string:  u64 length | bytes (no terminator)
//   array:   u32 element type | u64 count | elements
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "core/status.h"
#include "formats/model_file.h"

namespace sqz {

namespace gguf {

enum ValueType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
  kValueTypeCount = 13,
};

inline constexpr uint8_t kMagic[4] = {'G', 'G', 'U', 'F'};
inline constexpr uint32_t kDefaultAlignment = 32;
// Nested arrays deeper than this are rejected: real files use depth 1 and an attacker-chosen
// depth would otherwise recurse the parser off the stack.
inline constexpr int kMaxArrayDepth = 8;
// Total scalar/array values across all metadata. Each costs ~50-100 bytes in memory against as
// little as 1 byte in the file, so an unbounded count lets a small file exhaust RAM. 16M is
// ~10x the largest real tokenizer (vocab 256k x {tokens, scores, types} + merges).
inline constexpr uint64_t kMaxMetaValues = 16ull << 20;

const char* value_type_name(uint32_t t);
// Bytes of a fixed-size scalar type, 0 for string/array/unknown.
size_t scalar_size(uint32_t t);

}  // namespace gguf

// Parses a GGUF image already in memory (the fuzzer's entry; gguf_open uses the same code).
// `name` is used in error messages and as ModelFile::path. Tensor data pointers point into
// `data`, which the caller must keep alive. Never reads outside [data, data + size).
Result<std::unique_ptr<ModelFile>> gguf_open_memory(const uint8_t* data, size_t size,
                                                    const std::string& name);

// Typed metadata lookups over ModelFile::meta. Absent key -> std::nullopt; a value of the
// wrong type or outside [lo, hi] -> kFormat naming the file and the key.
Result<std::optional<int64_t>> meta_int(const ModelFile& mf, const std::string& key,
                                        int64_t lo = INT64_MIN, int64_t hi = INT64_MAX);
// Accepts integer values too (some converters write integral floats as ints).
Result<std::optional<double>> meta_float(const ModelFile& mf, const std::string& key);
Result<std::optional<std::string>> meta_string(const ModelFile& mf, const std::string& key);
Result<std::optional<bool>> meta_bool(const ModelFile& mf, const std::string& key);
// Array value (any element type); nullptr when absent, kFormat when not an array.
Result<const MetaArray*> meta_array(const ModelFile& mf, const std::string& key);

}  // namespace sqz
