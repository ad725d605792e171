// Squeezed-attention sessions: compile a fixed context into a pack, and answer questions
// against it reading only the keys of selected clusters.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "squeeze/pack.h"
#include "squeeze/squeeze.h"

namespace sqz {

// How a fixed context and a question are laid out in the model's chat template: the context
// occupies the start of the user turn and is identical for every question, so its KV can be
// computed once. prefix = everything up to and including the context; the question and the
// rest of the template (end of turn, assistant header) follow.
struct PromptLayout {
  std::string prefix;  // template text ending with the context and a blank line
  std::string suffix;  // template text after the question
};
PromptLayout make_prompt_layout(const Engine& e, const std::string& context_text);

struct CompileReport {
  int64_t n_ctx = 0;
  double prefill_s = 0;
  double capture_s = 0;  // --device cuda: K/V readback to the host (0 on the CPU)
  CompileStats stats;    // kmeans / calibration / write split
  // --device cuda: one line with the GPU compile's overlapped stages (the K/V check, K-means +
  // assembly + K rows, V rows beside the calibration, finish, disk busy time); `sqz compile
  // --json` prints it as "stage_trace". Empty on the CPU.
  std::string stage_trace;
};

// Prefills the context (chunked, progress), captures post-RoPE K/V and the observation
// window's queries, clusters, calibrates and writes the pack atomically.
Result<CompileReport> compile_context(const Engine& e, const std::string& context_text,
                                      const CompileParams& cp, const std::string& out_path,
                                      ProgressFn progress);

PackFingerprint engine_fingerprint(const Engine& e);

// The capture compile_context fills on any device: shapes, the token ids of the pack's prefix
// (template + context) and room for the observation window's queries (K/V left empty). An error
// when the tokens leave no room for a question or cannot hold the observation window.
Result<ContextCapture> context_capture(const Engine& e, const std::string& context_text,
                                       const CompileParams& cp);

// Alternative key selection, used for evaluation baselines (StreamingLLM, Quest-style pages,
// oracle top-k, random). plan() fills sel[h].ranges (rows of the pack's clustered,
// cluster-contiguous K/V of `layer`, sorted, disjoint), kept_keys and centroids_compared (the
// metadata vectors it read, in key-vector units) for every KV head h.
class KeySelector {
 public:
  virtual ~KeySelector() = default;
  virtual void plan(int layer, const float* q /* [n_q, n_head, head_dim] post-RoPE */, int64_t n_q,
                    std::vector<HeadSelection>& sel) = 0;
  // > 0: plan() returns one selection per block of this many query tokens, sel[b * n_head_kv
  // + h] for block b (as Selector::plan with SelectParams::block); 0: one for all of them.
  virtual int64_t block() const { return 0; }
};

struct AskParams {
  GenerateParams gen;
  SelectParams select;    // percentile, levels, per-block selection
  double budget = -1;     // > 0: pick the percentile that keeps about this fraction of keys
  bool dense = false;     // exact full attention over the pack's KV (the reference)
  bool keep_all = false;  // threshold -inf: every cluster kept (must reproduce dense)
  KeySelector* selector = nullptr;  // non-null: use this instead of centroid lookup
  // Always read the first N context positions (attention sinks: the chat template's first
  // tokens hold most of the attention mass of many deep-layer heads; docs/eval.md).
  int sink_tokens = 4;
  bool measure_mass = false;  // compute the true softmax mass captured by the selection (slow)
};

struct AskResult {
  GenerateResult gen;
  double kept_fraction = 0;      // mean fraction of fixed-context keys attended
  double centroid_fraction = 0;  // centroids compared per fixed-context key
  double budget = 0;             // kept + centroid fractions
  double percentile = 0;         // the percentile actually used
  double mass_captured = -1;     // mean over (step, layer, query head) of the true attention
                                 // mass of fixed-context keys that the selection read; -1 if
                                 // not measured
  double pack_upload_s = 0;      // --device cuda: pack copied to the GPU (before, not in, ttft)
};

// Answers one question (prompt = pack context + question + template suffix).
Result<AskResult> ask(const Engine& e, const Pack& pack, const std::string& question,
                      const AskParams& ap);

// Teacher-forced scoring: prefill question_tokens, then feed answer_tokens one by one; returns
// logits [answer_tokens.size(), n_vocab]: row i predicts answer_tokens[i] (row 0 after the
// question). Used by the evaluation for KL(dense || method) on the answer tokens.
Result<std::vector<float>> ask_score_tokens(const Engine& e, const Pack& pack,
                                            const std::vector<int32_t>& question_tokens,
                                            const std::vector<int32_t>& answer_tokens,
                                            const AskParams& ap, AskResult* stats);

// Tokens of a question as ask() feeds them (question + the template's end of turn and assistant
// header).
std::vector<int32_t> question_tokens(const Engine& e, const std::string& question);

// Lower-level: logits of the first answer token for a question (used by tests and eval).
Result<std::vector<float>> ask_first_logits(const Engine& e, const Pack& pack,
                                            const std::vector<int32_t>& question_tokens,
                                            const AskParams& ap, AskResult* stats);

}  // namespace sqz
