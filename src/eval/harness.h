// Accuracy evaluation harness: generates the long-context tasks, compiles each task instance's
// context once into a pack, and asks every question with dense attention (the reference),
// squeezed attention (single-level and hierarchical) and the baselines at matched budgets.
//
// Budget matching: for each target total budget T, squeezed attention's `budget` argument
// (a kept-key fraction turned into a percentile by the pack's calibration) is set to
// T minus the expected observation-window and centroid overheads, then the budget it REALLY
// used on each question is measured (AskResult::budget) and the baselines get exactly that
// budget on the same question.
//
// Outputs (under out_dir): results.jsonl (one record per question x method x budget),
// results.csv (the same without the free text), compiles.jsonl, summary.json / summary.csv
// (accuracy with 95% Wilson intervals per (task, length, method, budget) and overall), and
// meta.json (config, machine, wall time).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/status.h"
#include "eval/corpus.h"
#include "eval/tasks.h"
#include "squeeze/squeeze.h"

namespace sqz::eval {

struct EvalTaskSpec {
  TaskKind kind = TaskKind::kNiahSingle;
  int instances = 1;             // contexts (packs) per length
  int items = 4;                 // needles / keys / chains / facts per instance (see TaskParams)
  std::vector<int64_t> lengths;  // empty: the config's lengths
};

struct EvalConfig {
  std::string name = "custom";
  uint64_t seed = 1;
  std::vector<int64_t> lengths = {1024};  // context tokens
  std::vector<EvalTaskSpec> tasks;
  // Methods beside dense (always run: the reference): squeeze (1 level), squeeze_h
  // (2 levels), streaming, quest, oracle, random.
  std::vector<std::string> methods = {"squeeze"};
  std::vector<double> budgets = {0.25};  // target total budgets
  // Baselines run only at these budgets (method -> budgets); others at every budget.
  std::map<std::string, std::vector<double>> method_budgets;
  int squeeze_sink_tokens = 4;  // AskParams::sink_tokens for squeeze / squeeze_h
  int64_t squeeze_block = 0;    // SelectParams::block (per-block selection of the question)
  std::string squeeze_estimator =
      "auto";                            // SelectParams::estimator: auto, mean, mean_var, mean_iso
  std::string squeeze_alloc = "global";  // SelectParams::alloc: global or head
  double squeeze_head_floor = 0;         // SelectParams::head_floor (global allocation)
  // SelectParams::coarse_rule for squeeze_h: "child" (best-child bound vs the fine
  // threshold, the product default) or "calibrated" (the coarse level's own threshold).
  std::string squeeze_coarse_rule = coarse_rule_name(SelectParams{}.coarse_rule);
  double squeeze_child_scale = SelectParams{}.child_bound_scale;
  // Compile.
  double clusters = 0.05;
  double coarse = 0.01;
  int obs_window = 32;
  uint64_t kmeans_seed = 0;
  bool center_keys = false;  // CompileParams::center_keys
  // Generation (greedy). Answers of the default model echo the question before the value
  // ("The special magic number for X is 4718293."), digits are one token each: up to 32
  // tokens, and the answer is the first line (the model often rambles on after a blank line).
  int max_tokens = 32;
  std::vector<std::string> stop = {"\n"};
  // Metrics.
  bool kl = true;  // teacher-forced KL(dense || method) on the dense answer's tokens
  // With kl on, a method whose teacher-forced pass reproduces the dense greedy answer token
  // for token (and the end of turn) has that answer; its own generation is skipped unless
  // always_generate (which re-checks the shortcut: the records then show both).
  bool always_generate = false;
  int kl_every = 1;    // KL on every N-th question (the others skip the teacher-forced pass)
  int mass_every = 0;  // true softmax mass captured (MassMeter) on every N-th question (0: never)
  // Baselines.
  int sinks = 4;
  int quest_page_size = 0;  // 0: QuestSelector::auto_page_size(budget)
  uint64_t random_seed = 7;
  CorpusParams corpus;
};

// "smoke" (seconds-scale, for the test suite) or "full" (the reported configuration).
Result<EvalConfig> eval_config_builtin(const std::string& name);
// Parses a JSON config (keys as in eval_config_to_json; missing keys keep their defaults).
Result<EvalConfig> eval_config_from_json(const std::string& text);
std::string eval_config_to_json(const EvalConfig& c);  // pretty-printed

struct EvalOptions {
  std::string out_dir = "eval/out";
  std::string model_path;
  int n_threads = 2;
  bool tasks_only = false;  // write tasks.jsonl and stop (no compile, no questions)
  std::string command;      // the command line, recorded in meta.json
  // Keep the complete questions of out_dir/results.jsonl (an interrupted run of the same
  // config) and run only the rest.
  bool resume = false;
  std::function<void(const std::string&)> log;  // progress lines (nullptr: silent)
};

struct EvalRunSummary {
  int64_t n_questions = 0;
  int64_t n_records = 0;
  int64_t n_compiles = 0;
  double wall_s = 0;
};

Result<EvalRunSummary> run_eval(const EvalConfig& cfg, const EvalOptions& opt);

// The squeezed `budget` argument (fraction of clustered keys to keep) aimed at a total budget
// `target` for a pack with these sizes: target minus the observation window minus the expected
// centroid comparisons (levels 1: every fine centroid; levels 2: every coarse centroid plus
// the fine centroids of the surviving coarse clusters: about 60% of them with the child rule,
// about 2x the kept fraction of them with the calibrated rule), converted to a fraction of
// the clustered keys and clamped to [0.002, 1].
double squeeze_kept_target(double target, int64_t n_ctx, int64_t n_obs, int n_fine, int n_coarse,
                           int levels, bool child_rule = true);

}  // namespace sqz::eval
