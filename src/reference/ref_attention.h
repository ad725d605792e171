// Naive attention reference: dense attention with an explicit boolean mask, double accumulation.
// Plain C++ on purpose (no SIMD, no fmt): it is the oracle for every backend and kernel variant,
// including the CUDA tests, so it must build anywhere.
#pragma once

#include <cstdint>
#include <vector>

namespace sqz::ref {

// q: [n_q, n_head, d]; k, v: [n_kv_head, n_keys, d] (f32 values, already dequantized);
// mask: [n_kv_head, n_q, n_keys] (1 = attend) or empty = all visible.
// GQA: query head h uses KV head h / (n_head / n_kv_head).
// out: [n_q, n_head, d]; lse: [n_q, n_head] natural-log sum-exp of the scaled scores
// (-inf and zero output for a row with no visible key).
void attention_masked(const std::vector<float>& q, const std::vector<float>& k,
                      const std::vector<float>& v, const std::vector<uint8_t>& mask, int64_t n_q,
                      int64_t n_head, int64_t n_kv_head, int64_t n_keys, int64_t d, double scale,
                      std::vector<double>& out, std::vector<double>& lse);

}  // namespace sqz::ref
