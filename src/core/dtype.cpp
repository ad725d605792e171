#include "core/dtype.h"

namespace sqz {

namespace {
// Block sizes and byte sizes per the GGUF / ggml block layouts.
constexpr DTypeTraits kTraits[] = {
    {DType::kF32, "f32", 1, 4, true},
    {DType::kF16, "f16", 1, 2, true},
    {DType::kQ4_0, "q4_0", 32, 2 + 16, true},
    {DType::kQ4_1, "q4_1", 32, 2 + 2 + 16, true},
    {DType::kQ5_0, "q5_0", 32, 2 + 4 + 16, true},
    {DType::kQ5_1, "q5_1", 32, 2 + 2 + 4 + 16, true},
    {DType::kQ8_0, "q8_0", 32, 2 + 32, true},
    {DType::kQ8_1, "q8_1", 32, 4 + 4 + 32, true},
    {DType::kQ4_K, "q4_k", 256, 2 + 2 + 12 + 128, true},
    {DType::kQ5_K, "q5_k", 256, 2 + 2 + 12 + 32 + 128, true},
    {DType::kQ6_K, "q6_k", 256, 128 + 64 + 16 + 2, true},
    {DType::kQ8_K, "q8_k", 256, 4 + 256 + 32, true},
    {DType::kBF16, "bf16", 1, 2, true},
};
}  // namespace

const DTypeTraits* dtype_traits(uint32_t id) {
  for (const auto& t : kTraits)
    if ((uint32_t)t.type == id) return &t;
  return nullptr;
}

std::string_view dtype_name(DType t) {
  const DTypeTraits* tr = dtype_traits(t);
  return tr ? tr->name : "unknown";
}

size_t dtype_row_size(DType t, int64_t n) {
  const DTypeTraits* tr = dtype_traits(t);
  if (!tr) return 0;
  return (size_t)(n / tr->block_size) * tr->type_size;
}

}  // namespace sqz
