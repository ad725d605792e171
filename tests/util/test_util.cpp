#include "util/test_util.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>

namespace sqz::test {

uint64_t test_seed() {
  static const uint64_t seed = [] {
    const int s = ::testing::GTEST_FLAG(random_seed);
    const uint64_t v = s != 0 ? (uint64_t)s : 20261127ull;
    std::printf("[sqz] random seed %llu (override with --gtest_random_seed=N)\n",
                (unsigned long long)v);
    return v;
  }();
  return seed;
}

std::string source_path(const std::string& rel) {
  return std::string(SQZ_SOURCE_DIR) + "/" + rel;
}

std::string default_model_path() {
  const std::string p = source_path("models/SmolLM2-135M-Instruct.Q4_1.gguf");
  return std::filesystem::exists(p) ? p : std::string();
}

}  // namespace sqz::test
