// libFuzzer target for the safetensors header/bounds parser (safetensors_parse_memory).
#include <cstddef>
#include <cstdint>
#include <vector>

#include "formats/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<sqz::TensorView> tensors;
  std::vector<std::vector<uint8_t>> owned;
  sqz::Status st = sqz::safetensors_parse_memory(data, size, "fuzz.safetensors", tensors, owned);
  if (!st.ok()) return 0;
  uint8_t acc = 0;
  for (const auto& t : tensors) {
    const uint8_t* p = static_cast<const uint8_t*>(t.data);
    for (size_t i = 0; i < t.nbytes; i++) acc ^= p[i];
  }
  volatile uint8_t sink = acc;
  (void)sink;
  return 0;
}
