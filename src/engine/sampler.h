// Token sampling: greedy, temperature, top-k, top-p, seeded.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace sqz {

struct SamplerParams {
  float temperature = 0.0f;  // 0 = greedy (argmax)
  int top_k = 40;            // 0 = disabled
  float top_p = 0.95f;       // 1 = disabled
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplerParams& p) : p_(p), rng_(p.seed) {}
  // logits: [n_vocab]. Not const: keeps scratch to stay allocation-free after the first call.
  int32_t sample(const float* logits, int32_t n_vocab);

 private:
  SamplerParams p_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> cand_;
};

}  // namespace sqz
