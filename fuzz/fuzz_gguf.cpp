// libFuzzer target for the GGUF parser: arbitrary bytes -> gguf_open_memory. Any crash, ASan
// report or UBSan report is a bug; a returned error is the expected outcome for most inputs.
#include <cstddef>
#include <cstdint>

#include "formats/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto r = sqz::gguf_open_memory(data, size, "fuzz.gguf");
  if (!r.ok()) return 0;
  // Read every byte of every tensor so ASan flags any view that escapes the input buffer.
  uint8_t acc = 0;
  for (const auto& t : r.value()->tensors) {
    const uint8_t* p = static_cast<const uint8_t*>(t.data);
    for (size_t i = 0; i < t.nbytes; i++) acc ^= p[i];
  }
  volatile uint8_t sink = acc;
  (void)sink;
  return 0;
}
