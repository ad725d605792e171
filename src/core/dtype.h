// Tensor element types. Numeric values equal ggml's `ggml_type` ids so GGUF tensor infos map 1:1.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace sqz {

enum class DType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,  // activation-only format (never stored in files we read)
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,  // activation-only format for K-quant dot products
  kBF16 = 30,
  kInvalid = 0xffffffff,
};

struct DTypeTraits {
  DType type;
  const char* name;
  int64_t block_size;  // elements per block (1 for plain float types)
  size_t type_size;    // bytes per block
  bool supported;      // we can read / dequantize it
};

// Traits for a ggml type id; returns nullptr for an unknown id (callers turn that into a
// kUnsupported error naming the tensor).
const DTypeTraits* dtype_traits(uint32_t ggml_type_id);
inline const DTypeTraits* dtype_traits(DType t) {
  return dtype_traits((uint32_t)t);
}
std::string_view dtype_name(DType t);

// Bytes of a row of `n` elements; n must be a multiple of the block size (checked by callers).
size_t dtype_row_size(DType t, int64_t n);

}  // namespace sqz
