// Deterministic random numbers for evaluation task generation and baselines.
//
// Hand-written (splitmix64 + rejection sampling) rather than <random> distributions: the
// standard distributions are implementation-defined, so the same seed would give different
// tasks with another standard library, and the evaluation must be reproducible from its seed.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace sqz::eval {

// splitmix64 finaliser: a bijective mix of 64 bits.
inline uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Seed of a sub-stream: a function of the parent seed and a salt only.
inline uint64_t derive_seed(uint64_t seed, uint64_t salt) {
  return mix64(seed ^ mix64(salt));
}

class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed) {}
  uint64_t next() {
    s_ += 0x9e3779b97f4a7c15ull;
    uint64_t z = s_;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n), n > 0, unbiased (rejects the short top interval).
  uint64_t below(uint64_t n) {
    const uint64_t lim = ~0ull - (~0ull % n);
    uint64_t x;
    do x = next();
    while (x >= lim);
    return x % n;
  }
  // Uniform in [lo, hi] (inclusive).
  int64_t range(int64_t lo, int64_t hi) { return lo + (int64_t)below((uint64_t)(hi - lo + 1)); }
  // Uniform double in [0, 1) with 53 random bits.
  double uniform() { return (double)(next() >> 11) * 0x1.0p-53; }
  template <typename T>
  void shuffle(std::vector<T>& v) {
    for (size_t i = v.size(); i > 1; i--) std::swap(v[i - 1], v[(size_t)below(i)]);
  }
  template <typename T>
  const T& pick(const std::vector<T>& v) {
    return v[(size_t)below(v.size())];
  }

 private:
  uint64_t s_;
};

}  // namespace sqz::eval
