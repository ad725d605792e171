#include "eval/scoring.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>

namespace sqz::eval {

namespace {
bool is_alnum(char c) {
  return std::isalnum((unsigned char)c) != 0;
}
bool is_digit(char c) {
  return c >= '0' && c <= '9';
}
}  // namespace

std::string normalize_answer(std::string_view s) {
  std::string t;
  t.reserve(s.size());
  for (size_t i = 0; i < s.size(); i++) {
    const char c = s[i];
    if ((c == ',' || c == '.') && i > 0 && i + 1 < s.size() && is_digit(s[i - 1]) &&
        is_digit(s[i + 1]))
      continue;
    if (is_alnum(c)) {
      t += (char)std::tolower((unsigned char)c);
    } else if (c == '-' && i > 0 && i + 1 < s.size() && is_alnum(s[i - 1]) && is_alnum(s[i + 1])) {
      t += '-';
    } else {
      t += ' ';
    }
  }
  std::string out;
  for (char c : t) {
    if (c == ' ' && (out.empty() || out.back() == ' ')) continue;
    out += c;
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

bool answer_contains(std::string_view answer, const std::vector<std::string>& expected) {
  if (expected.empty()) return false;
  const std::string a = " " + normalize_answer(answer) + " ";
  for (const auto& e : expected) {
    const std::string n = normalize_answer(e);
    if (n.empty() || a.find(" " + n + " ") == std::string::npos) return false;
  }
  return true;
}

bool answer_exact(std::string_view answer, const std::vector<std::string>& expected) {
  return expected.size() == 1 && !expected[0].empty() &&
         normalize_answer(answer) == normalize_answer(expected[0]);
}

Interval wilson_interval(int64_t k, int64_t n, double z) {
  if (n <= 0) return {0.0, 1.0};
  const double p = (double)k / (double)n, nn = (double)n, z2 = z * z;
  const double denom = 1.0 + z2 / nn;
  const double centre = (p + z2 / (2 * nn)) / denom;
  const double half = z / denom * std::sqrt(p * (1 - p) / nn + z2 / (4 * nn * nn));
  return {std::max(0.0, centre - half), std::min(1.0, centre + half)};
}

double kl_from_logits(const float* p_logits, const float* q_logits, int64_t n) {
  double mp = -std::numeric_limits<double>::infinity(), mq = mp;
  for (int64_t i = 0; i < n; i++) {
    mp = std::max(mp, (double)p_logits[i]);
    mq = std::max(mq, (double)q_logits[i]);
  }
  double sp = 0, sq = 0;
  for (int64_t i = 0; i < n; i++) {
    sp += std::exp((double)p_logits[i] - mp);
    sq += std::exp((double)q_logits[i] - mq);
  }
  const double lzp = mp + std::log(sp), lzq = mq + std::log(sq);
  // KL = sum_i p_i (log p_i - log q_i) with log p_i = l_i - logZ_p.
  double kl = 0;
  for (int64_t i = 0; i < n; i++) {
    const double lp = (double)p_logits[i] - lzp;
    const double pi = std::exp(lp);
    if (pi == 0) continue;
    kl += pi * (lp - ((double)q_logits[i] - lzq));
  }
  return std::max(0.0, kl);
}

}  // namespace sqz::eval
