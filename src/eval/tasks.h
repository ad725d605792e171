// Long-context evaluation tasks, generated deterministically from a seed: RULER-style needle
// retrieval (single needle, several keys with distractor needles, several values per key),
// variable tracking and common-word extraction, plus a PreFixQA-style fixed document with
// planted facts that is compiled once and asked many questions.
//
// Every task instance is one fixed context (compiled once into a context pack) and the
// questions asked against it. Prompts are short and direct because the default model is a
// 135M-parameter instruct model: each answer is a number, a word or a short code.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/status.h"
#include "eval/corpus.h"

namespace sqz::eval {

enum class TaskKind {
  kNiahSingle,        // one needle "One of the special magic numbers for K is: V."
  kNiahMultiKey,      // several needles with different keys; each is asked (others distract)
  kNiahMultiValue,    // keys with two values each; the answer must contain both
  kVariableTracking,  // VAR A = 12345. ... VAR B = VAR A. ...; asked the value of the last
  kCommonWords,       // a numbered word list; asked the most frequent word
  kPrefixQa,          // one document with planted facts, many questions (the product's use)
};
const char* task_name(TaskKind k);
Result<TaskKind> parse_task_name(const std::string& s);

struct Question {
  std::string id;                     // unique in a run: "<task>/<tokens>/<instance>/<i>"
  std::string text;                   // what is asked after the context
  std::vector<std::string> expected;  // each must appear in the answer (see scoring.h)
  std::string value_kind;             // "number", "word", "uuid", "name", "year", ...
  double depth = -1;  // relative position of the first evidence in the context [0, 1]
};

struct TaskInstance {
  TaskKind kind = TaskKind::kNiahSingle;
  int64_t target_tokens = 0;  // requested context length
  int64_t n_tokens = 0;       // context length by the counter given to make_task
  int index = 0;
  std::string context;
  std::vector<std::string> needles;  // the planted sentences (empty for common_words)
  std::vector<Question> questions;
};

// Token count of a text (the model's tokenizer in the harness; tests may pass an
// approximation).
using TokenCounter = std::function<int64_t(const std::string&)>;

struct TaskParams {
  TaskKind kind = TaskKind::kNiahSingle;
  int64_t target_tokens = 1024;  // the context will have at most this many tokens
  int index = 0;                 // instance number (a different haystack and needles)
  // Needles / keys / chains / facts per instance (each gives one question); ignored by
  // niah_single and common_words (one question).
  int n_items = 4;
  uint64_t seed = 0;
};

// Builds one instance. Deterministic for (params, corpus, counter). The context never exceeds
// target_tokens (by the counter) and contains every expected answer; the haystack text never
// contains a needle value by accident.
Result<TaskInstance> make_task(const Corpus& corpus, const TaskParams& p,
                               const TokenCounter& count);

}  // namespace sqz::eval
