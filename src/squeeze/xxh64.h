// XXH64 (Collet's xxHash, 64-bit variant) written from the published algorithm description.
// Hand-written because the pack checksums every section on open and needs several GB/s: the
// system's libxxhash ships without headers here and zstd keeps its copy private; FNV-1a
// (core/hash.h) is byte-at-a-time, far too slow for multi-GB packs.
#pragma once

#include <cstddef>
#include <cstdint>

namespace sqz {

// Streaming hasher: update() any number of times, digest() at any point.
class Xxh64 {
 public:
  explicit Xxh64(uint64_t seed = 0) { reset(seed); }
  void reset(uint64_t seed = 0);
  void update(const void* data, size_t n);
  uint64_t digest() const;

 private:
  uint64_t v_[4];
  uint64_t seed_ = 0;
  uint64_t total_ = 0;
  uint8_t buf_[32];
  size_t buf_n_ = 0;
};

inline uint64_t xxh64(const void* data, size_t n, uint64_t seed = 0) {
  Xxh64 h(seed);
  h.update(data, n);
  return h.digest();
}

}  // namespace sqz
