// Scoring of evaluation answers and the statistics reported with them.
//
// The rule (fixed before any result was looked at):
//   normalize(s): lowercase ASCII; delete ',' and '.' between two digits (4,718,293 ->
//   4718293); every character that is not an ASCII letter or digit becomes a space, except
//   '-' between two letters or digits (codes like 3f9a1c7e-52b0 keep their hyphen); runs of
//   spaces collapse; trimmed.
//   correct(answer, expected) = every normalize(expected[i]) occurs in normalize(answer) as a
//   whole-word sequence (bounded by spaces or the ends). Greedy answers of a small model often
//   wrap the value in a sentence ("The special magic number is 4718293."), so containment,
//   not equality, is the primary metric; exact match (normalized equality with the single
//   expected value) is recorded beside it.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace sqz::eval {

std::string normalize_answer(std::string_view s);
bool answer_contains(std::string_view answer, const std::vector<std::string>& expected);
bool answer_exact(std::string_view answer, const std::vector<std::string>& expected);

// 95% (z = 1.96) Wilson score interval for k successes out of n; [0, 1] when n == 0.
struct Interval {
  double lo = 0, hi = 1;
};
Interval wilson_interval(int64_t k, int64_t n, double z = 1.959963984540054);

// KL(P || Q) in nats between the softmax distributions of two logit rows of length n,
// computed in double with log-sum-exp (never NaN for finite logits; +inf only when Q gives a
// token probability exactly 0 that P does not).
double kl_from_logits(const float* p_logits, const float* q_logits, int64_t n);

}  // namespace sqz::eval
