// FNV-1a 64: tiny, dependency-free, good enough for fingerprints (not for security).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace sqz {

inline uint64_t fnv1a64(const void* data, size_t n, uint64_t h = 0xcbf29ce484222325ull) {
  const uint8_t* p = (const uint8_t*)data;
  for (size_t i = 0; i < n; i++) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}
inline uint64_t fnv1a64(std::string_view s, uint64_t h = 0xcbf29ce484222325ull) {
  return fnv1a64(s.data(), s.size(), h);
}

}  // namespace sqz
