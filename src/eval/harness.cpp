#include "eval/harness.h"

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "core/clock.h"
#include "core/mmap_file.h"
#include "engine/squeeze_session.h"
#include "eval/rng.h"
#include "eval/scoring.h"
#include "squeeze/baselines.h"

namespace sqz::eval {

namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

// CPU seconds of this process (all threads): with other work on the machine, wall time
// overstates the cost, this does not.
double cpu_s() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return (double)u.ru_utime.tv_sec + 1e-6 * (double)u.ru_utime.tv_usec + (double)u.ru_stime.tv_sec +
         1e-6 * (double)u.ru_stime.tv_usec;
}

// FNV-1a: a portable string hash for seeding (std::hash differs between libraries).
uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

const std::vector<std::string> kMethods = {"squeeze", "squeeze_h", "streaming",
                                           "quest",   "oracle",    "random"};

// ---- built-in configurations ----

EvalConfig smoke_config() {
  // Tiny: one 1K context with one needle and one with three facts, squeezed attention and one
  // baseline at one budget. Exercises every stage (compile, ask, teacher-forced KL, mass) in
  // well under a minute on 2 cores.
  EvalConfig c;
  c.name = "smoke";
  c.seed = 1;
  c.lengths = {1024};
  c.tasks = {{TaskKind::kNiahSingle, 1, 1, {}}, {TaskKind::kPrefixQa, 1, 3, {}}};
  c.methods = {"squeeze", "quest"};
  c.budgets = {0.25};
  c.mass_every = 2;
  c.always_generate = true;  // also checks the teacher-forced shortcut against generation
  return c;
}

EvalConfig full_config() {
  // Cost (docs/eval.md): 52 min of process CPU time with 2 threads, i.e. about 30-40 min of
  // wall time on an idle 2-core machine (65 min measured with the cores shared with other
  // work); >= 200 questions for every (method, budget) point. The list tasks the 135M model
  // cannot do even densely (multi-value, variable tracking, common words) run at the two
  // shorter lengths only; the retrieval tasks at every length.
  EvalConfig c;
  c.name = "full";
  c.seed = 1;
  c.lengths = {1024, 2048, 4096, 7168};
  // PreFixQA: about 8 planted facts per 1K tokens (denser fact sheets confuse the 135M model
  // even with dense attention: at 40 facts in 1K tokens it answered most questions with the
  // same fact), several documents per length; each document is compiled once and asked all
  // its questions.
  c.tasks = {{TaskKind::kPrefixQa, 6, 8, {1024}},
             {TaskKind::kPrefixQa, 4, 12, {2048}},
             {TaskKind::kPrefixQa, 2, 16, {4096}},
             {TaskKind::kPrefixQa, 1, 20, {7168}},
             {TaskKind::kNiahMultiKey, 2, 8, {1024, 2048}},
             {TaskKind::kNiahMultiKey, 1, 8, {4096, 7168}},
             {TaskKind::kNiahSingle, 1, 1, {}},
             {TaskKind::kNiahMultiValue, 1, 2, {1024, 2048}},
             {TaskKind::kVariableTracking, 1, 2, {1024, 2048}},
             {TaskKind::kCommonWords, 1, 1, {1024, 2048}}};
  c.methods = kMethods;
  c.budgets = {0.25, 0.125, 0.0625};
  // The squeezed variants and Quest at every budget; the references at <= 1/8.
  c.method_budgets = {
      {"oracle", {0.125, 0.0625}}, {"streaming", {0.125, 0.0625}}, {"random", {0.125}}};
  c.max_tokens = 28;
  c.kl_every = 2;
  c.mass_every = 2;
  // One selection per question token (SelectParams::block = 1), as every decode step has:
  // on the 48-question ablation it raised single-level accuracy at 1/8 from 22.9% to 31.2%
  // (KL 0.276 -> 0.194; docs/eval.md), measured before this run.
  c.squeeze_block = 1;
  return c;
}

// ---- JSON ----

json config_json(const EvalConfig& c) {
  json tasks = json::array();
  for (const auto& t : c.tasks) {
    json tj = {{"task", task_name(t.kind)}, {"instances", t.instances}, {"items", t.items}};
    if (!t.lengths.empty()) tj["lengths"] = t.lengths;
    tasks.push_back(tj);
  }
  return {{"name", c.name},
          {"seed", c.seed},
          {"lengths", c.lengths},
          {"tasks", tasks},
          {"methods", c.methods},
          {"budgets", c.budgets},
          {"method_budgets", c.method_budgets},
          {"squeeze_sink_tokens", c.squeeze_sink_tokens},
          {"squeeze_estimator", c.squeeze_estimator},
          {"squeeze_block", c.squeeze_block},
          {"squeeze_alloc", c.squeeze_alloc},
          {"squeeze_head_floor", c.squeeze_head_floor},
          {"squeeze_coarse_rule", c.squeeze_coarse_rule},
          {"squeeze_child_scale", c.squeeze_child_scale},
          {"compile",
           {{"clusters", c.clusters},
            {"coarse", c.coarse},
            {"obs_window", c.obs_window},
            {"seed", c.kmeans_seed},
            {"center_keys", c.center_keys}}},
          {"gen", {{"max_tokens", c.max_tokens}, {"stop", c.stop}}},
          {"always_generate", c.always_generate},
          {"kl", c.kl},
          {"mass_every", c.mass_every},
          {"kl_every", c.kl_every},
          {"sinks", c.sinks},
          {"quest_page_size", c.quest_page_size},
          {"random_seed", c.random_seed},
          {"corpus",
           {{"perl_pod_dir", c.corpus.perl_pod_dir},
            {"python_html_dir", c.corpus.python_html_dir},
            {"python_subdirs", c.corpus.python_subdirs}}}};
}

Status validate(const EvalConfig& c) {
  if (c.lengths.empty()) return Error(Code::kInvalidArgument, "config: no lengths");
  for (int64_t l : c.lengths)
    if (l < 128 || l > 1 << 20)
      return Error(Code::kInvalidArgument, "config: length {} out of [128, 2^20]", l);
  if (c.tasks.empty()) return Error(Code::kInvalidArgument, "config: no tasks");
  for (const auto& t : c.tasks) {
    if (t.instances < 1 || t.items < 1)
      return Error(Code::kInvalidArgument, "config: task {} needs instances >= 1 and items >= 1",
                   task_name(t.kind));
    for (int64_t l : t.lengths)
      if (std::find(c.lengths.begin(), c.lengths.end(), l) == c.lengths.end())
        return Error(Code::kInvalidArgument, "config: task {} length {} is not in lengths",
                     task_name(t.kind), l);
  }
  for (const auto& [m, bs] : c.method_budgets) {
    if (std::find(c.methods.begin(), c.methods.end(), m) == c.methods.end() || m == "squeeze" ||
        m == "squeeze_h")
      return Error(Code::kInvalidArgument,
                   "config: method_budgets: '{}' is not a baseline in methods", m);
    for (double b : bs)
      if (std::find(c.budgets.begin(), c.budgets.end(), b) == c.budgets.end())
        return Error(Code::kInvalidArgument, "config: method_budgets: {} is not in budgets", b);
  }
  if (c.squeeze_sink_tokens < 0)
    return Error(Code::kInvalidArgument, "config: squeeze_sink_tokens < 0");
  if (c.squeeze_block < 0) return Error(Code::kInvalidArgument, "config: squeeze_block < 0");
  if (Estimator e; !parse_estimator(c.squeeze_estimator, &e))
    return Error(Code::kInvalidArgument,
                 "config: squeeze_estimator '{}' (auto, mean, mean_var, mean_iso)",
                 c.squeeze_estimator);
  if (SelectParams::Alloc a; !parse_alloc(c.squeeze_alloc, &a))
    return Error(Code::kInvalidArgument, "config: squeeze_alloc '{}' (global, head)",
                 c.squeeze_alloc);
  if (!(c.squeeze_head_floor >= 0 && c.squeeze_head_floor <= 1))
    return Error(Code::kInvalidArgument, "config: squeeze_head_floor must be in [0, 1]");
  if (SelectParams::CoarseRule r; !parse_coarse_rule(c.squeeze_coarse_rule, &r))
    return Error(Code::kInvalidArgument, "config: squeeze_coarse_rule '{}' (child, calibrated)",
                 c.squeeze_coarse_rule);
  if (!(c.squeeze_child_scale >= 0))
    return Error(Code::kInvalidArgument, "config: squeeze_child_scale must be >= 0");
  for (const auto& m : c.methods)
    if (std::find(kMethods.begin(), kMethods.end(), m) == kMethods.end())
      return Error(Code::kInvalidArgument,
                   "config: unknown method '{}' (squeeze, squeeze_h, streaming, quest, oracle, "
                   "random; dense always runs)",
                   m);
  for (double b : c.budgets)
    if (!(b > 0 && b <= 1))
      return Error(Code::kInvalidArgument, "config: budget {} not in (0, 1]", b);
  if (!c.methods.empty() && c.budgets.empty())
    return Error(Code::kInvalidArgument, "config: methods need at least one budget");
  if (c.obs_window < 0) return Error(Code::kInvalidArgument, "config: obs_window < 0");
  if (c.max_tokens < 1) return Error(Code::kInvalidArgument, "config: max_tokens < 1");
  if (c.mass_every < 0) return Error(Code::kInvalidArgument, "config: mass_every < 0");
  if (c.kl_every < 1) return Error(Code::kInvalidArgument, "config: kl_every < 1");
  return Status::Ok();
}

// ---- records and aggregation ----

struct Record {
  std::string qid, task;
  int64_t length = 0;
  int instance = 0;
  int64_t n_ctx = 0, n_obs = 0;
  double depth = -1;
  std::string value_kind, question;
  std::vector<std::string> expected;
  std::string method;
  double target_budget = 1;
  double budget = 1, kept_fraction = 1, centroid_fraction = 0, percentile = 0;
  std::string answer;
  bool correct = false, exact = false, agree = false;
  double kl = std::nan("");  // NaN: not computed
  int tf_match = -1;         // teacher-forced pass reproduced the dense answer (-1: not run)
  bool generated = false;    // the method's own generation ran (else: answer = dense's)
  double mass = -1;          // -1: not measured
  int64_t gen_tokens = 0;
  double ask_s = 0, score_s = 0;
};

json record_json(const Record& r) {
  auto num = [](double x) { return std::isnan(x) ? json() : json(x); };
  return {{"qid", r.qid},
          {"task", r.task},
          {"length", r.length},
          {"instance", r.instance},
          {"n_ctx", r.n_ctx},
          {"n_obs", r.n_obs},
          {"depth", r.depth},
          {"value_kind", r.value_kind},
          {"question", r.question},
          {"expected", r.expected},
          {"method", r.method},
          {"target_budget", r.target_budget},
          {"budget", r.budget},
          {"kept_fraction", r.kept_fraction},
          {"centroid_fraction", r.centroid_fraction},
          {"percentile", r.percentile},
          {"answer", r.answer},
          {"correct", r.correct},
          {"exact", r.exact},
          {"agree_dense", r.agree},
          {"kl", num(r.kl)},
          {"tf_match", r.tf_match < 0 ? json() : json(r.tf_match == 1)},
          {"generated", r.generated},
          {"mass", r.mass < 0 ? json() : json(r.mass)},
          {"gen_tokens", r.gen_tokens},
          {"ask_s", r.ask_s},
          {"score_s", r.score_s}};
}

// Generated text can end inside a UTF-8 sequence (cut at max_tokens); JSON output replaces
// invalid bytes instead of throwing.
std::string dump_line(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

Record record_from_json(const json& j) {
  Record r;
  r.qid = j.at("qid").get<std::string>();
  r.task = j.at("task").get<std::string>();
  r.length = j.at("length").get<int64_t>();
  r.instance = j.at("instance").get<int>();
  r.n_ctx = j.at("n_ctx").get<int64_t>();
  r.n_obs = j.at("n_obs").get<int64_t>();
  r.depth = j.at("depth").get<double>();
  r.value_kind = j.at("value_kind").get<std::string>();
  r.question = j.at("question").get<std::string>();
  r.expected = j.at("expected").get<std::vector<std::string>>();
  r.method = j.at("method").get<std::string>();
  r.target_budget = j.at("target_budget").get<double>();
  r.budget = j.at("budget").get<double>();
  r.kept_fraction = j.at("kept_fraction").get<double>();
  r.centroid_fraction = j.at("centroid_fraction").get<double>();
  r.percentile = j.at("percentile").get<double>();
  r.answer = j.at("answer").get<std::string>();
  r.correct = j.at("correct").get<bool>();
  r.exact = j.at("exact").get<bool>();
  r.agree = j.at("agree_dense").get<bool>();
  r.kl = j.at("kl").is_null() ? std::nan("") : j.at("kl").get<double>();
  r.tf_match = j.at("tf_match").is_null() ? -1 : (int)j.at("tf_match").get<bool>();
  r.generated = j.at("generated").get<bool>();
  r.mass = j.at("mass").is_null() ? -1.0 : j.at("mass").get<double>();
  r.gen_tokens = j.at("gen_tokens").get<int64_t>();
  r.ask_s = j.at("ask_s").get<double>();
  r.score_s = j.at("score_s").get<double>();
  return r;
}

std::string csv_field(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"') o += '"';
    o += c == '\n' ? ' ' : c;
  }
  return o + "\"";
}

struct Agg {
  int64_t n = 0, correct = 0, exact = 0, agree = 0, kl_n = 0, mass_n = 0;
  double kl_sum = 0, mass_sum = 0, budget_sum = 0, budget_max = 0, kept_sum = 0, cent_sum = 0;
  void add(const Record& r) {
    n++;
    correct += r.correct;
    exact += r.exact;
    agree += r.agree;
    if (!std::isnan(r.kl)) {
      kl_n++;
      kl_sum += r.kl;
    }
    if (r.mass >= 0) {
      mass_n++;
      mass_sum += r.mass;
    }
    budget_sum += r.budget;
    budget_max = std::max(budget_max, r.budget);
    kept_sum += r.kept_fraction;
    cent_sum += r.centroid_fraction;
  }
};

json agg_json(const std::string& group, const std::string& task, int64_t length,
              const std::string& method, double target, const Agg& a) {
  const Interval ci = wilson_interval(a.correct, a.n);
  auto mean = [](double s, int64_t n) { return n ? json(s / (double)n) : json(); };
  return {{"group", group},
          {"task", task},
          {"length", length},
          {"method", method},
          {"target_budget", target},
          {"n", a.n},
          {"correct", a.correct},
          {"accuracy", a.n ? (double)a.correct / (double)a.n : 0.0},
          {"ci_lo", ci.lo},
          {"ci_hi", ci.hi},
          {"exact", a.n ? (double)a.exact / (double)a.n : 0.0},
          {"agree_dense", a.n ? (double)a.agree / (double)a.n : 0.0},
          {"kl_mean", mean(a.kl_sum, a.kl_n)},
          {"kl_n", a.kl_n},
          {"mass_mean", mean(a.mass_sum, a.mass_n)},
          {"mass_n", a.mass_n},
          {"budget_mean", mean(a.budget_sum, a.n)},
          {"budget_max", a.budget_max},
          {"kept_mean", mean(a.kept_sum, a.n)},
          {"centroid_mean", mean(a.cent_sum, a.n)}};
}

json summarize(const std::vector<Record>& recs) {
  // Keyed by (task or "all", length or 0, method, target budget).
  std::map<std::tuple<std::string, int64_t, std::string, double>, Agg> by;
  for (const Record& r : recs) {
    by[{r.task, r.length, r.method, r.target_budget}].add(r);
    by[{r.task, 0, r.method, r.target_budget}].add(r);
    by[{"all", r.length, r.method, r.target_budget}].add(r);
    by[{"all", 0, r.method, r.target_budget}].add(r);
  }
  json rows = json::array();
  for (const auto& [k, a] : by) {
    const auto& [task, len, method, tb] = k;
    const std::string group =
        task == "all" ? (len == 0 ? "overall" : "length") : (len == 0 ? "task" : "task_length");
    rows.push_back(agg_json(group, task, len, method, tb, a));
  }
  return rows;
}

std::string summary_csv(const json& rows) {
  std::string s =
      "group,task,length,method,target_budget,n,correct,accuracy,ci_lo,ci_hi,exact,agree_dense,"
      "kl_mean,mass_mean,budget_mean,budget_max\n";
  auto f = [](const json& v) {
    return v.is_null()           ? std::string()
           : v.is_number_float() ? fmt::format("{:.6g}", v.get<double>())
                                 : v.dump();
  };
  for (const auto& r : rows)
    s += fmt::format("{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
                     r["group"].get<std::string>(), r["task"].get<std::string>(), f(r["length"]),
                     r["method"].get<std::string>(), f(r["target_budget"]), f(r["n"]),
                     f(r["correct"]), f(r["accuracy"]), f(r["ci_lo"]), f(r["ci_hi"]), f(r["exact"]),
                     f(r["agree_dense"]), f(r["kl_mean"]), f(r["mass_mean"]), f(r["budget_mean"]),
                     f(r["budget_max"]));
  return s;
}

json machine_json(int threads) {
  std::string model;
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("model name", 0) == 0) {
      model = line.substr(line.find(':') + 2);
      break;
    }
  return {{"cpu_model", model},
          {"logical_cores", std::thread::hardware_concurrency()},
          {"threads", threads}};
}

// KL(dense || method) averaged over the rows of two [rows, n_vocab] logit matrices.
double mean_kl(const std::vector<float>& p, const std::vector<float>& q, int64_t nv) {
  const int64_t rows = (int64_t)std::min(p.size(), q.size()) / nv;
  if (rows == 0) return std::nan("");
  double s = 0;
  for (int64_t i = 0; i < rows; i++) s += kl_from_logits(p.data() + i * nv, q.data() + i * nv, nv);
  return s / (double)rows;
}

Status write_text(const fs::path& path, const std::string& s) {
  return write_file_atomic(path.string(), s.data(), s.size());
}

// One pack's worth of selectors (the oracle caches f32 keys; freed with the pack).
struct Baselines {
  std::unique_ptr<BaselineIndex> idx;
  std::unique_ptr<StreamingLlmSelector> streaming;
  std::unique_ptr<QuestSelector> quest;
  std::unique_ptr<OracleTopKSelector> oracle;
  std::unique_ptr<RandomSelector> random;
  std::unique_ptr<SqueezeLookupSelector> lookup;  // the squeezed lookup, for the mass meter
  BudgetedSelector* get(const std::string& m) {
    if (m == "streaming") return streaming.get();
    if (m == "quest") return quest.get();
    if (m == "oracle") return oracle.get();
    if (m == "random") return random.get();
    return nullptr;
  }
};

}  // namespace

double squeeze_kept_target(double target, int64_t n_ctx, int64_t n_obs, int n_fine, int n_coarse,
                           int levels, bool child_rule) {
  const double n_cl = (double)std::max<int64_t>(1, n_ctx - n_obs);
  const double room = target * (double)n_ctx - (double)n_obs;
  // Fine centroids compared with two levels: the calibrated rule keeps coarse clusters
  // holding about twice the kept keys; the child rule compares about 60% of the fine
  // centroids, independent of the budget (measured 55-61% on the estimator probe). A model
  // only: the measured budget is what is reported and what the baselines get.
  double k;
  if (levels >= 2 && n_coarse > 0)
    k = child_rule ? (room - n_coarse - 0.6 * n_fine) / n_cl
                   : (room - n_coarse) / (n_cl + 2.0 * n_fine);
  else
    k = (room - n_fine) / n_cl;
  return std::clamp(k, 0.002, 1.0);
}

Result<EvalConfig> eval_config_builtin(const std::string& name) {
  if (name == "smoke") return smoke_config();
  if (name == "full") return full_config();
  return Error(Code::kInvalidArgument, "unknown built-in config '{}' (smoke, full)", name);
}

std::string eval_config_to_json(const EvalConfig& c) {
  return config_json(c).dump(2);
}

Result<EvalConfig> eval_config_from_json(const std::string& text) {
  const json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return Error(Code::kInvalidArgument, "config: not a JSON object");
  EvalConfig c;
  // nlohmann::json reports type mismatches by exception; keep them inside this function.
  try {
    c.name = j.value("name", c.name);
    c.seed = j.value("seed", c.seed);
    if (j.contains("lengths")) c.lengths = j["lengths"].get<std::vector<int64_t>>();
    if (j.contains("tasks")) {
      c.tasks.clear();
      for (const auto& t : j["tasks"]) {
        SQZ_ASSIGN_OR_RETURN(TaskKind k, parse_task_name(t.at("task").get<std::string>()));
        EvalTaskSpec ts{k, t.value("instances", 1), t.value("items", 4), {}};
        if (t.contains("lengths")) ts.lengths = t["lengths"].get<std::vector<int64_t>>();
        c.tasks.push_back(ts);
      }
    }
    if (j.contains("methods")) c.methods = j["methods"].get<std::vector<std::string>>();
    if (j.contains("budgets")) c.budgets = j["budgets"].get<std::vector<double>>();
    if (j.contains("method_budgets"))
      c.method_budgets = j["method_budgets"].get<std::map<std::string, std::vector<double>>>();
    c.squeeze_sink_tokens = j.value("squeeze_sink_tokens", c.squeeze_sink_tokens);
    c.squeeze_estimator = j.value("squeeze_estimator", c.squeeze_estimator);
    c.squeeze_block = j.value("squeeze_block", c.squeeze_block);
    c.squeeze_alloc = j.value("squeeze_alloc", c.squeeze_alloc);
    c.squeeze_head_floor = j.value("squeeze_head_floor", c.squeeze_head_floor);
    c.squeeze_coarse_rule = j.value("squeeze_coarse_rule", c.squeeze_coarse_rule);
    c.squeeze_child_scale = j.value("squeeze_child_scale", c.squeeze_child_scale);
    if (j.contains("compile")) {
      const json& cp = j["compile"];
      c.clusters = cp.value("clusters", c.clusters);
      c.coarse = cp.value("coarse", c.coarse);
      c.obs_window = cp.value("obs_window", c.obs_window);
      c.kmeans_seed = cp.value("seed", c.kmeans_seed);
      c.center_keys = cp.value("center_keys", c.center_keys);
    }
    if (j.contains("gen")) {
      c.max_tokens = j["gen"].value("max_tokens", c.max_tokens);
      if (j["gen"].contains("stop")) c.stop = j["gen"]["stop"].get<std::vector<std::string>>();
    }
    c.kl = j.value("kl", c.kl);
    c.always_generate = j.value("always_generate", c.always_generate);
    c.mass_every = j.value("mass_every", c.mass_every);
    c.kl_every = j.value("kl_every", c.kl_every);
    c.sinks = j.value("sinks", c.sinks);
    c.quest_page_size = j.value("quest_page_size", c.quest_page_size);
    c.random_seed = j.value("random_seed", c.random_seed);
    if (j.contains("corpus")) {
      const json& cc = j["corpus"];
      c.corpus.perl_pod_dir = cc.value("perl_pod_dir", c.corpus.perl_pod_dir);
      c.corpus.python_html_dir = cc.value("python_html_dir", c.corpus.python_html_dir);
      if (cc.contains("python_subdirs"))
        c.corpus.python_subdirs = cc["python_subdirs"].get<std::vector<std::string>>();
    }
  } catch (const std::exception& e) {
    return Error(Code::kInvalidArgument, "config: {}", e.what());
  }
  SQZ_RETURN_IF_ERROR(validate(c));
  return c;
}

Result<EvalRunSummary> run_eval(const EvalConfig& cfg, const EvalOptions& opt) {
  SQZ_RETURN_IF_ERROR(validate(cfg));
  const double t_start = now_s();
  auto log = [&](const std::string& s) {
    if (opt.log) opt.log(s);
  };
  std::error_code ec;
  fs::create_directories(opt.out_dir, ec);
  if (ec) return Error(Code::kIo, "cannot create {}: {}", opt.out_dir, ec.message());

  EngineParams ep;
  ep.model_path = opt.model_path;
  ep.n_threads = std::max(1, opt.n_threads);
  SQZ_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::create(ep));
  const Engine& e = *engine;
  const Tokenizer& tok = e.tokenizer();
  const TokenCounter count = [&](const std::string& s) {
    return (int64_t)tok.encode(s, false, false).size();
  };

  SQZ_ASSIGN_OR_RETURN(Corpus corpus, load_corpus(cfg.corpus));
  log(fmt::format("corpus: {} paragraphs, {} words", corpus.paragraphs.size(),
                  corpus.words.size()));

  // All task instances first (cheap), so the run's shape is known and logged up front.
  std::vector<TaskInstance> instances;
  for (int64_t len : cfg.lengths)
    for (const auto& ts : cfg.tasks) {
      if (!ts.lengths.empty() &&
          std::find(ts.lengths.begin(), ts.lengths.end(), len) == ts.lengths.end())
        continue;
      for (int i = 0; i < ts.instances; i++) {
        TaskParams tp;
        tp.kind = ts.kind;
        tp.target_tokens = len;
        tp.index = i;
        tp.n_items = ts.items;
        tp.seed = cfg.seed;
        SQZ_ASSIGN_OR_RETURN(TaskInstance t, make_task(corpus, tp, count));
        instances.push_back(std::move(t));
      }
    }
  int64_t n_q_total = 0;
  {
    std::ofstream tf(fs::path(opt.out_dir) / "tasks.jsonl", std::ios::trunc);
    for (const auto& t : instances) {
      n_q_total += (int64_t)t.questions.size();
      json qs = json::array();
      for (const auto& q : t.questions)
        qs.push_back({{"id", q.id},
                      {"text", q.text},
                      {"expected", q.expected},
                      {"value_kind", q.value_kind},
                      {"depth", q.depth}});
      tf << json{{"task", task_name(t.kind)},
                 {"length", t.target_tokens},
                 {"instance", t.index},
                 {"n_tokens", t.n_tokens},
                 {"context", t.context},
                 {"needles", t.needles},
                 {"questions", qs}}
                .dump(-1, ' ', false, json::error_handler_t::replace)
         << "\n";
    }
    if (!tf) return Error(Code::kIo, "cannot write {}/tasks.jsonl", opt.out_dir);
  }
  log(fmt::format("{} task instances, {} questions, {} methods x {} budgets + dense",
                  instances.size(), n_q_total, cfg.methods.size(), cfg.budgets.size()));
  EvalRunSummary sum;
  sum.n_questions = n_q_total;
  json meta = {{"config", config_json(cfg)},      {"machine", machine_json(ep.n_threads)},
               {"model", opt.model_path},         {"command", opt.command},
               {"n_instances", instances.size()}, {"n_questions", n_q_total}};
  if (opt.tasks_only) {
    meta["tasks_only"] = true;
    SQZ_RETURN_IF_ERROR(write_text(fs::path(opt.out_dir) / "meta.json", meta.dump(2) + "\n"));
    sum.wall_s = now_s() - t_start;
    return sum;
  }

  // meta.json now (a run in progress can be reported on) and again, complete, at the end.
  SQZ_RETURN_IF_ERROR(write_text(fs::path(opt.out_dir) / "meta.json", meta.dump(2) + "\n"));
  // Records per question: dense + every (method, budget) point that runs.
  size_t per_question = 1;
  for (double b : cfg.budgets)
    for (const auto& m : cfg.methods) {
      const auto only = cfg.method_budgets.find(m);
      if (only == cfg.method_budgets.end() ||
          std::find(only->second.begin(), only->second.end(), b) != only->second.end())
        per_question++;
    }
  std::vector<Record> recs;
  std::map<std::string, std::vector<Record>> done;  // --resume: complete questions by qid
  if (opt.resume) {
    std::ifstream in(fs::path(opt.out_dir) / "results.jsonl");
    for (std::string line; std::getline(in, line);) {
      const json j = json::parse(line, nullptr, false);
      if (j.is_discarded()) continue;  // a line cut by the interruption
      try {
        Record r = record_from_json(j);
        done[r.qid].push_back(std::move(r));
      } catch (const std::exception&) {
        continue;
      }
    }
    for (auto it = done.begin(); it != done.end();)
      it = it->second.size() == per_question ? std::next(it) : done.erase(it);
    log(fmt::format("resume: {} complete questions kept", done.size()));
  }
  std::ofstream rf(fs::path(opt.out_dir) / "results.jsonl", std::ios::trunc);
  std::ofstream cf(fs::path(opt.out_dir) / "compiles.jsonl",
                   opt.resume ? std::ios::app : std::ios::trunc);
  if (!rf || !cf) return Error(Code::kIo, "cannot write results under {}", opt.out_dir);
  // Kept questions are rewritten first (dropping any partial block of the interrupted run).
  for (const auto& [qid, rs] : done)
    for (const Record& r : rs) {
      rf << dump_line(record_json(r)) << "\n";
      recs.push_back(r);
    }
  rf.flush();
  const std::string pack_path = (fs::path(opt.out_dir) / "current.sqzpack").string();
  const int32_t nv = e.model().config().n_vocab;
  int64_t q_done = 0;
  double compile_s_total = 0, ask_s_total = 0;

  for (const TaskInstance& inst : instances) {
    bool all_done = true;
    for (const Question& q : inst.questions) all_done = all_done && done.count(q.id);
    if (all_done) {
      // kl_every / mass_every count questions, so skipped ones keep their place.
      q_done += (int64_t)inst.questions.size();
      continue;
    }
    CompileParams cp;
    cp.clusters = cfg.clusters;
    cp.coarse = cfg.coarse;
    cp.obs_window = cfg.obs_window;
    cp.center_keys = cfg.center_keys;
    cp.seed = cfg.kmeans_seed;
    cp.n_threads = ep.n_threads;
    const double tc = now_s();
    SQZ_ASSIGN_OR_RETURN(CompileReport crep,
                         compile_context(e, inst.context, cp, pack_path, nullptr));
    const double compile_s = now_s() - tc;
    compile_s_total += compile_s;
    sum.n_compiles++;
    SQZ_ASSIGN_OR_RETURN(std::unique_ptr<Pack> pack, Pack::open(pack_path));
    cf << json{{"task", task_name(inst.kind)},
               {"length", inst.target_tokens},
               {"instance", inst.index},
               {"n_ctx", crep.n_ctx},
               {"total_s", compile_s},
               {"prefill_s", crep.prefill_s},
               {"kmeans_s", crep.stats.kmeans_s},
               {"calib_s", crep.stats.calib_s},
               {"write_s", crep.stats.write_s},
               {"n_fine", pack->n_fine()},
               {"n_coarse", pack->n_coarse()}}
              .dump()
       << "\n";
    cf.flush();
    log(fmt::format("compiled {}/{}/{}: {} tokens in {:.1f} s (prefill {:.1f} s)",
                    task_name(inst.kind), inst.target_tokens, inst.index, crep.n_ctx, compile_s,
                    crep.prefill_s));

    Baselines bl;
    bl.idx = std::make_unique<BaselineIndex>(*pack);
    bl.streaming = std::make_unique<StreamingLlmSelector>(*bl.idx, cfg.sinks);
    bl.quest = std::make_unique<QuestSelector>(*bl.idx, cfg.quest_page_size, ep.n_threads);
    bl.oracle = std::make_unique<OracleTopKSelector>(*bl.idx, ep.n_threads);
    bl.random = std::make_unique<RandomSelector>(*bl.idx, cfg.random_seed);
    bl.lookup = std::make_unique<SqueezeLookupSelector>(*pack, ep.n_threads);

    for (const Question& q : inst.questions) {
      if (done.count(q.id)) {
        q_done++;
        continue;
      }
      const double tq = now_s();
      const bool want_mass = cfg.mass_every > 0 && q_done % cfg.mass_every == 0;
      const bool want_kl = cfg.kl && q_done % cfg.kl_every == 0;
      Record base;
      base.qid = q.id;
      base.task = task_name(inst.kind);
      base.length = inst.target_tokens;
      base.instance = inst.index;
      base.n_ctx = pack->n_ctx();
      base.n_obs = pack->n_obs();
      base.depth = q.depth;
      base.value_kind = q.value_kind;
      base.question = q.text;
      base.expected = q.expected;

      AskParams ap0;
      ap0.gen.max_tokens = cfg.max_tokens;
      ap0.gen.sampler.temperature = 0;  // greedy
      ap0.gen.stop = cfg.stop;
      // Sinks are a squeezed-attention setting (squeeze_sink_tokens); baselines select alone.
      ap0.sink_tokens = 0;
      const std::vector<int32_t> qtok = question_tokens(e, q.text);

      // The dense answer's tokens plus, when dense stopped at end-of-turn, one more row: the
      // prediction after the last token (the appended id is never fed, only its row is used).
      std::vector<int32_t> scored;
      std::vector<float> dense_logits;
      std::string dense_text;
      int64_t dense_n = 0;
      bool dense_eos = false;
      // Does this teacher-forced run reproduce dense's greedy answer? Greedy decoding is
      // deterministic, so when every row's argmax (lowest index on ties, as the sampler) is the
      // dense token and the last row predicts end-of-turn, the method's own greedy generation
      // is token for token the dense one.
      auto reproduces = [&](const std::vector<float>& lg) {
        for (int64_t i = 0; i < (int64_t)scored.size(); i++) {
          const float* row = lg.data() + i * nv;
          int32_t best = 0;
          for (int32_t v = 1; v < nv; v++)
            if (row[v] > row[best]) best = v;
          if (i < dense_n) {
            if (best != scored[(size_t)i]) return false;
          } else if (best != tok.eos() && best != tok.eot()) {
            return false;
          }
        }
        return true;
      };
      auto fill_gen = [&](Record& r, const AskResult& res) {
        r.answer = res.gen.text;
        r.gen_tokens = (int64_t)res.gen.tokens.size();
        r.budget = res.budget;
        r.kept_fraction = res.kept_fraction;
        r.centroid_fraction = res.centroid_fraction;
      };
      // Runs one method. With KL on: the teacher-forced pass on the dense answer first (KL,
      // mass, budget); generation only when that pass does not reproduce the dense answer (or
      // always_generate). With KL off: generation (mass measured there when asked).
      // before_pass: called before each pass (the random baseline restarts its stream, so a
      // teacher-forced pass and a generation that produce the same tokens select the same keys).
      // With mass: the teacher-forced pass goes through a MassMeter around the same selection.
      auto run_one = [&](Record r, AskParams ap, bool mass,
                         const std::function<void()>& before_pass) -> Result<Record> {
        auto gen_pass = [&](const AskParams& a) -> Result<AskResult> {
          if (before_pass) before_pass();
          const double t0 = now_s();
          SQZ_ASSIGN_OR_RETURN(AskResult res, ask(e, *pack, q.text, a));
          r.ask_s += now_s() - t0;
          fill_gen(r, res);
          r.generated = true;
          return res;
        };
        // The pass's selection wrapped by a MassMeter (squeezed lookup: the same Selector at
        // the same percentile, sinks added by the meter instead of the session).
        std::unique_ptr<MassMeter> meter;
        auto with_meter = [&](AskParams a) {
          if (!mass || a.dense) return a;
          if (a.selector) {
            meter = std::make_unique<MassMeter>(*bl.idx, a.selector, 0, ep.n_threads);
          } else {
            bl.lookup->set_params(select_for_budget(*pack, a.select, a.budget));
            meter =
                std::make_unique<MassMeter>(*bl.idx, bl.lookup.get(), a.sink_tokens, ep.n_threads);
            a.budget = -1;
            a.sink_tokens = 0;
          }
          a.selector = meter.get();
          return a;
        };
        if (ap.dense) {
          SQZ_ASSIGN_OR_RETURN(AskResult res, gen_pass(ap));
          dense_text = res.gen.text;
          dense_n = (int64_t)res.gen.tokens.size();
          dense_eos = res.gen.stop_reason == "eos";
          scored = res.gen.tokens;
          if (dense_eos) scored.push_back(tok.eot());
          if (want_kl && !scored.empty()) {
            const double t1 = now_s();
            SQZ_ASSIGN_OR_RETURN(dense_logits,
                                 ask_score_tokens(e, *pack, qtok, scored, ap, nullptr));
            r.score_s = now_s() - t1;
            r.kl = 0;
            r.tf_match = reproduces(dense_logits);  // self-consistency of the two passes
          }
        } else if (want_kl && !scored.empty()) {
          if (before_pass) before_pass();
          const double t1 = now_s();
          AskResult st;
          SQZ_ASSIGN_OR_RETURN(std::vector<float> lg,
                               ask_score_tokens(e, *pack, qtok, scored, with_meter(ap), &st));
          r.score_s = now_s() - t1;
          r.kl = mean_kl(dense_logits, lg, nv);
          if (meter) r.mass = meter->mass();
          r.tf_match = reproduces(lg);
          r.budget = st.budget;
          r.kept_fraction = st.kept_fraction;
          r.centroid_fraction = st.centroid_fraction;
          if (r.tf_match && !cfg.always_generate) {
            r.answer = dense_text;
            r.gen_tokens = dense_n;
          } else {
            SQZ_RETURN_IF_ERROR(gen_pass(ap).status());
          }
        } else {
          SQZ_ASSIGN_OR_RETURN(AskResult res, gen_pass(with_meter(ap)));
          (void)res;
          if (meter) r.mass = meter->mass();
        }
        r.correct = answer_contains(r.answer, q.expected);
        r.exact = answer_exact(r.answer, q.expected);
        return r;
      };

      // Dense reference.
      AskParams apd = ap0;
      apd.dense = true;
      Record rd = base;
      rd.method = "dense";
      rd.target_budget = 1.0;
      SQZ_ASSIGN_OR_RETURN(rd, run_one(rd, apd, false, nullptr));
      rd.agree = true;
      const std::string dense_norm = normalize_answer(rd.answer);
      std::vector<Record> out = {rd};

      for (size_t bi = 0; bi < cfg.budgets.size(); bi++) {
        const double target = cfg.budgets[bi];
        double matched = -1;  // squeezed attention's measured budget on this question
        // Squeezed variants first: their measured budget is what the baselines get.
        std::vector<std::string> order;
        for (const char* m : {"squeeze", "squeeze_h"})
          if (std::find(cfg.methods.begin(), cfg.methods.end(), m) != cfg.methods.end())
            order.push_back(m);
        for (const auto& m : cfg.methods)
          if (m != "squeeze" && m != "squeeze_h") order.push_back(m);
        for (const std::string& m : order) {
          const bool squeezed = m == "squeeze" || m == "squeeze_h";
          AskParams ap = ap0;
          Record r = base;
          r.method = m;
          r.target_budget = target;
          std::function<void()> before;
          if (squeezed) {
            const int levels = m == "squeeze_h" && pack->n_coarse() > 0 ? 2 : 1;
            ap.select.levels = levels;
            parse_coarse_rule(cfg.squeeze_coarse_rule, &ap.select.coarse_rule);  // validated above
            ap.budget = squeeze_kept_target(
                target, pack->n_ctx(), pack->n_obs(), pack->n_fine(), pack->n_coarse(), levels,
                ap.select.coarse_rule == SelectParams::CoarseRule::kChildBound);
            ap.sink_tokens = cfg.squeeze_sink_tokens;
            parse_estimator(cfg.squeeze_estimator, &ap.select.estimator);  // validated above
            parse_alloc(cfg.squeeze_alloc, &ap.select.alloc);              // validated above
            ap.select.head_floor = cfg.squeeze_head_floor;
            ap.select.block = cfg.squeeze_block;
            ap.select.child_bound_scale = cfg.squeeze_child_scale;
            // What the session derives from ap.budget (recorded, and used by the mass meter).
            r.percentile = select_for_budget(*pack, ap.select, ap.budget).percentile;
          } else {
            const auto only = cfg.method_budgets.find(m);
            if (only != cfg.method_budgets.end() &&
                std::find(only->second.begin(), only->second.end(), target) == only->second.end())
              continue;
            BudgetedSelector* s = bl.get(m);
            s->set_budget(matched > 0 ? matched : target);
            if (m == "random") {
              const uint64_t seed = derive_seed(derive_seed(cfg.random_seed, fnv1a(q.id)), bi);
              before = [&bl, seed] { bl.random->reseed(seed); };
            }
            ap.selector = s;
          }
          SQZ_ASSIGN_OR_RETURN(r, run_one(r, ap, want_mass, before));
          if (m == "squeeze" || (m == "squeeze_h" && matched < 0)) matched = r.budget;
          r.agree = normalize_answer(r.answer) == dense_norm;
          out.push_back(std::move(r));
        }
      }
      std::string line = fmt::format("[{}/{}] {} dense='{}'{}", q_done + 1, n_q_total, q.id,
                                     rd.answer.substr(0, 24), rd.correct ? "+" : "-");
      for (const Record& r : out) {
        rf << dump_line(record_json(r)) << "\n";
        if (r.method != "dense" && r.target_budget == cfg.budgets.back())
          line += fmt::format(" {}{}", r.method, r.correct ? "+" : "-");
      }
      rf.flush();
      if (!rf) return Error(Code::kIo, "write failed: {}/results.jsonl", opt.out_dir);
      const double dt = now_s() - tq;
      ask_s_total += dt;
      q_done++;
      const double elapsed = now_s() - t_start;
      log(fmt::format("{} ({:.1f} s; elapsed {:.0f} s, cpu {:.0f} s)", line, dt, elapsed, cpu_s()));
      for (auto& r : out) recs.push_back(std::move(r));
    }
    pack.reset();
  }
  fs::remove(pack_path, ec);

  // Summaries.
  const json rows = summarize(recs);
  SQZ_RETURN_IF_ERROR(write_text(fs::path(opt.out_dir) / "summary.json", rows.dump(1) + "\n"));
  SQZ_RETURN_IF_ERROR(write_text(fs::path(opt.out_dir) / "summary.csv", summary_csv(rows)));
  {
    std::string csv =
        "qid,task,length,instance,n_ctx,depth,value_kind,method,target_budget,budget,"
        "kept_fraction,centroid_fraction,percentile,correct,exact,agree_dense,kl,mass,"
        "tf_match,generated,gen_tokens,ask_s,score_s,expected,answer\n";
    for (const Record& r : recs) {
      std::string exp;
      for (const auto& x : r.expected) exp += (exp.empty() ? "" : "|") + x;
      csv += fmt::format(
          "{},{},{},{},{},{:.4f},{},{},{},{:.6f},{:.6f},{:.6f},{:.4f},{},{},{},{},{},{},{},{},{:."
          "3f},{:.3f},{},{}\n",
          r.qid, r.task, r.length, r.instance, r.n_ctx, r.depth, r.value_kind, r.method,
          r.target_budget, r.budget, r.kept_fraction, r.centroid_fraction, r.percentile,
          (int)r.correct, (int)r.exact, (int)r.agree,
          std::isnan(r.kl) ? std::string() : fmt::format("{:.6g}", r.kl),
          r.mass < 0 ? std::string() : fmt::format("{:.6f}", r.mass),
          r.tf_match < 0 ? std::string() : std::to_string(r.tf_match), (int)r.generated,
          r.gen_tokens, r.ask_s, r.score_s, csv_field(exp), csv_field(r.answer));
    }
    SQZ_RETURN_IF_ERROR(write_text(fs::path(opt.out_dir) / "results.csv", csv));
  }
  sum.n_records = (int64_t)recs.size();
  sum.wall_s = now_s() - t_start;
  meta["wall_s"] = sum.wall_s;
  meta["cpu_s"] = cpu_s();
  meta["compile_s"] = compile_s_total;
  meta["questions_s"] = ask_s_total;
  meta["n_records"] = sum.n_records;
  meta["n_compiles"] = sum.n_compiles;
  SQZ_RETURN_IF_ERROR(write_text(fs::path(opt.out_dir) / "meta.json", meta.dump(2) + "\n"));
  // Overall table on the log.
  for (const auto& r : rows)
    if (r["group"] == "overall")
      log(fmt::format(
          "{:<10} budget {:<7} n={:<4} acc {:.3f} [{:.3f}, {:.3f}] agree {:.3f} "
          "measured budget {:.4f}",
          r["method"].get<std::string>(), r["target_budget"].get<double>(), r["n"].get<int64_t>(),
          r["accuracy"].get<double>(), r["ci_lo"].get<double>(), r["ci_hi"].get<double>(),
          r["agree_dense"].get<double>(), r["budget_mean"].get<double>()));
  return sum;
}

}  // namespace sqz::eval
