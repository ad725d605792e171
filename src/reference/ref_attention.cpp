#include "reference/ref_attention.h"

#include <cmath>
#include <limits>

namespace sqz::ref {

void attention_masked(const std::vector<float>& q, const std::vector<float>& k,
                      const std::vector<float>& v, const std::vector<uint8_t>& mask, int64_t n_q,
                      int64_t n_head, int64_t n_kv_head, int64_t n_keys, int64_t d, double scale,
                      std::vector<double>& out, std::vector<double>& lse) {
  const int64_t group = n_head / n_kv_head;
  out.assign((size_t)(n_q * n_head * d), 0.0);
  lse.assign((size_t)(n_q * n_head), -std::numeric_limits<double>::infinity());
  std::vector<double> s((size_t)n_keys);
  for (int64_t i = 0; i < n_q; i++) {
    for (int64_t h = 0; h < n_head; h++) {
      const int64_t kh = h / group;
      const float* qr = &q[(size_t)((i * n_head + h) * d)];
      double m = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < n_keys; j++) {
        const bool vis = mask.empty() || mask[(size_t)((kh * n_q + i) * n_keys + j)];
        if (!vis) {
          s[(size_t)j] = -std::numeric_limits<double>::infinity();
          continue;
        }
        const float* kr = &k[(size_t)((kh * n_keys + j) * d)];
        double acc = 0;
        for (int64_t c = 0; c < d; c++) acc += (double)qr[c] * (double)kr[c];
        s[(size_t)j] = acc * scale;
        if (s[(size_t)j] > m) m = s[(size_t)j];
      }
      if (m == -std::numeric_limits<double>::infinity()) continue;  // no visible key
      double sum = 0;
      double* o = &out[(size_t)((i * n_head + h) * d)];
      for (int64_t j = 0; j < n_keys; j++) {
        if (s[(size_t)j] == -std::numeric_limits<double>::infinity()) continue;
        const double p = std::exp(s[(size_t)j] - m);
        sum += p;
        const float* vr = &v[(size_t)((kh * n_keys + j) * d)];
        for (int64_t c = 0; c < d; c++) o[c] += p * (double)vr[c];
      }
      for (int64_t c = 0; c < d; c++) o[c] /= sum;
      lse[(size_t)(i * n_head + h)] = m + std::log(sum);
    }
  }
}

}  // namespace sqz::ref
