// Shared helpers for the GoogleTest suites.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace sqz::test {

// Seed for random inputs: --gtest_random_seed=N overrides; otherwise a fixed default so CI is
// reproducible. Printed on first use so a failure can be replayed.
uint64_t test_seed();

// Path of the default model (models/SmolLM2-135M-Instruct.Q4_1.gguf) or "" if absent.
std::string default_model_path();
// Absolute path inside the source tree.
std::string source_path(const std::string& rel);

// Fill with NaN so an op that forgets to write an output element is caught.
inline void poison(std::vector<float>& v) {
  std::fill(v.begin(), v.end(), std::numeric_limits<float>::quiet_NaN());
}
inline bool all_finite(const float* p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!std::isfinite(p[i])) return false;
  return true;
}
inline std::vector<float> randn(std::mt19937_64& rng, size_t n, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

}  // namespace sqz::test
