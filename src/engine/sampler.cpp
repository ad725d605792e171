#include "engine/sampler.h"

#include <algorithm>
#include <cmath>

namespace sqz {

int32_t Sampler::sample(const float* logits, int32_t n_vocab) {
  if (p_.temperature <= 0.0f) {
    int32_t best = 0;
    for (int32_t i = 1; i < n_vocab; i++)
      if (logits[i] > logits[best]) best = i;
    return best;
  }
  cand_.resize((size_t)n_vocab);
  for (int32_t i = 0; i < n_vocab; i++) cand_[(size_t)i] = {logits[i] / p_.temperature, i};
  size_t n = cand_.size();
  auto by_logit = [](const auto& a, const auto& b) { return a.first > b.first; };
  if (p_.top_k > 0 && (size_t)p_.top_k < n) {
    std::partial_sort(cand_.begin(), cand_.begin() + p_.top_k, cand_.end(), by_logit);
    n = (size_t)p_.top_k;
  } else {
    std::sort(cand_.begin(), cand_.end(), by_logit);
  }
  const float mx = cand_[0].first;
  double sum = 0;
  for (size_t i = 0; i < n; i++) {
    cand_[i].first = std::exp(cand_[i].first - mx);
    sum += cand_[i].first;
  }
  if (p_.top_p < 1.0f) {
    double cum = 0;
    size_t keep = n;
    for (size_t i = 0; i < n; i++) {
      cum += cand_[i].first / sum;
      if (cum >= p_.top_p) {
        keep = i + 1;
        break;
      }
    }
    n = keep;
    sum = 0;
    for (size_t i = 0; i < n; i++) sum += cand_[i].first;
  }
  std::uniform_real_distribution<double> u(0.0, sum);
  double r = u(rng_);
  for (size_t i = 0; i < n; i++) {
    r -= cand_[i].first;
    if (r <= 0) return cand_[i].second;
  }
  return cand_[n - 1].second;
}

}  // namespace sqz
