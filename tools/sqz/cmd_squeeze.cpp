// sqz compile / ask / chat --pack.
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "engine/squeeze_session.h"

namespace sqz::cli {

namespace {

// "5%" -> 0.05, "300" -> 300 (count).
bool parse_amount(const std::string& s, double& out) {
  try {
    size_t used = 0;
    if (!s.empty() && s.back() == '%') {
      out = std::stod(s.substr(0, s.size() - 1), &used) / 100.0;
      return used == s.size() - 1 && out > 0 && out < 1;
    }
    out = std::stod(s, &used);
    return used == s.size() && out >= 1 && out == std::floor(out);
  } catch (...) {
    return false;
  }
}

struct SqueezeFlags {
  std::string pack;
  double percentile = -1;
  double budget = -1;
  int levels = 0;  // 0 = 2 when the pack has coarse centroids
  bool dense = false;
  int block = 0;
  std::string estimator = "auto";
  int sinks = -1;  // < 0: the default (AskParams::sink_tokens)
  std::string alloc = "global";
  double coarse_percentile = -1;
  std::string coarse_rule = coarse_rule_name(SelectParams{}.coarse_rule);
  double child_scale = SelectParams{}.child_bound_scale;
  double head_floor = 0;
  bool mass = false;
};

void add_squeeze_flags(CLI::App* app, SqueezeFlags& f, bool pack_required) {
  auto* o = app->add_option("--pack", f.pack, "context pack from `sqz compile`");
  if (pack_required) o->required();
  app->add_option("--percentile", f.percentile, "calibrated threshold percentile (0.5-0.999)")
      ->check(CLI::Range(0.0, 1.0));
  app->add_option("--budget", f.budget, "fraction of context keys to read, e.g. 0.1")
      ->check(CLI::Range(0.0, 1.0));
  app->add_option("--levels", f.levels, "centroid levels: 1 or 2")->check(CLI::IsMember({1, 2}));
  app->add_flag("--dense", f.dense, "exact full attention over the pack (reference)");
  app->add_option("--select-block", f.block,
                  "per-block selection for long user turns (tokens; 0 = one selection)")
      ->check(CLI::Range(0, 1 << 20));
  app->add_option("--estimator", f.estimator,
                  "cluster-score estimator: auto (the pack's), mean, mean_var, mean_iso")
      ->check(CLI::IsMember({"auto", "mean", "mean_var", "mean_iso"}));
  app->add_option("--sinks", f.sinks, "always read the first N context positions (attention sinks)")
      ->check(CLI::Range(0, 1 << 20));
  app->add_option(
         "--alloc", f.alloc,
         "key budget across heads: global (one calibrated threshold) or head (top-k per head)")
      ->check(CLI::IsMember({"global", "head"}));
  app->add_option("--coarse-rule", f.coarse_rule,
                  "levels 2: which coarse clusters survive: child (best-child estimate passes "
                  "the fine threshold) or calibrated (the coarse level's own threshold)")
      ->check(CLI::IsMember({"child", "calibrated"}))
      ->capture_default_str();
  app->add_option("--child-scale", f.child_scale,
                  "--coarse-rule child: multiplier of the child-spread term")
      ->check(CLI::Range(0.0, 100.0))
      ->capture_default_str();
  app->add_option("--coarse-percentile", f.coarse_percentile,
                  "--coarse-rule calibrated: percentile of the coarse threshold (default: "
                  "max(0, 2p - 1))")
      ->check(CLI::Range(0.0, 1.0));
  app->add_option("--head-floor", f.head_floor,
                  "global allocation: each head keeps at least this fraction of its keys")
      ->check(CLI::Range(0.0, 1.0));
  app->add_flag(
      "--measure-mass", f.mass,
      "also compute the true attention mass the selection read (slow; --json field mass_captured)");
}

Result<AskParams> ask_params(const SqueezeFlags& f, const GenFlags& g, const Pack& pack) {
  AskParams ap;
  ap.gen = gen_params(g);
  ap.dense = f.dense;
  if (f.percentile >= 0 && f.budget >= 0)
    return Error(Code::kInvalidArgument, "--percentile and --budget are exclusive");
  ap.select.percentile = f.percentile >= 0 ? f.percentile : 0.9;
  ap.budget = f.budget;
  ap.select.levels = f.levels > 0 ? f.levels : (pack.n_coarse() > 0 ? 2 : 1);
  if (ap.select.levels == 2 && pack.n_coarse() == 0)
    return Error(Code::kInvalidArgument,
                 "--levels 2: the pack has no coarse centroids (compiled with --coarse 0)");
  ap.select.block = f.block;
  parse_estimator(f.estimator, &ap.select.estimator);  // checked by the flag
  if (f.sinks >= 0) ap.sink_tokens = f.sinks;
  ap.measure_mass = f.mass;
  parse_alloc(f.alloc, &ap.select.alloc);  // checked by the flag
  ap.select.head_floor = f.head_floor;
  ap.select.coarse_percentile = f.coarse_percentile;
  parse_coarse_rule(f.coarse_rule, &ap.select.coarse_rule);  // checked by the flag
  ap.select.child_bound_scale = f.child_scale;
  if (f.coarse_percentile >= 0 && ap.select.coarse_rule != SelectParams::CoarseRule::kCalibrated)
    return Error(Code::kInvalidArgument, "--coarse-percentile needs --coarse-rule calibrated");
  if (ap.select.alloc == SelectParams::Alloc::kPerHead && f.budget < 0)
    return Error(Code::kInvalidArgument, "--alloc head needs --budget");
  return ap;
}

struct CompileCmd {
  CommonFlags common;
  std::string context, out, clusters = "5%", coarse = "1%";
  int obs_window = 100;
  uint64_t seed = 0;
  bool center_keys = false;
};

int run_compile(CompileCmd& c) {
  CompileParams cp;
  if (!parse_amount(c.clusters, cp.clusters))
    return fail(Error(Code::kInvalidArgument, "--clusters '{}': expected a percent (5%) or a count",
                      c.clusters));
  if (c.coarse == "0") {
    cp.coarse = 0;
  } else if (!parse_amount(c.coarse, cp.coarse)) {
    return fail(Error(Code::kInvalidArgument,
                      "--coarse '{}': expected a percent (1%), a count or 0", c.coarse));
  }
  cp.obs_window = c.obs_window;
  cp.kv_type = c.common.kv_type == "f32" ? DType::kF32 : DType::kF16;  // pack K/V storage
  cp.seed = c.seed;
  cp.center_keys = c.center_keys;
  SQZ_ASSIGN_OR_RETURN_CLI(EngineParams ep, engine_params(c.common));
  cp.n_threads = ep.n_threads;
  SQZ_ASSIGN_OR_RETURN_CLI(std::string text, read_text_file(c.context));
  SQZ_ASSIGN_OR_RETURN_CLI(std::unique_ptr<Engine> e, Engine::create(ep));
  SQZ_ASSIGN_OR_RETURN_CLI(CompileReport r,
                           compile_context(*e, text, cp, c.out, progress_bar("prefill")));
  nlohmann::json j = {{"pack", c.out},
                      {"context_tokens", r.n_ctx},
                      {"prefill_s", r.prefill_s},
                      {"kmeans_s", r.stats.kmeans_s},
                      {"calibration_s", r.stats.calib_s},
                      {"write_s", r.stats.write_s},
                      {"device", c.common.device}};
  if (e->gpu()) j["capture_s"] = r.capture_s;
  if (!r.stage_trace.empty()) j["stage_trace"] = r.stage_trace;
  if (c.common.json) {
    std::cout << j.dump() << "\n";
  } else {
    std::printf(
        "compiled %lld context tokens into %s: prefill %.2f s, k-means %.2f s, calibration %.2f s, "
        "write %.2f s\n",
        (long long)r.n_ctx, c.out.c_str(), r.prefill_s, r.stats.kmeans_s, r.stats.calib_s,
        r.stats.write_s);
  }
  return 0;
}

struct AskCmd {
  CommonFlags common;
  GenFlags gen;
  SqueezeFlags sq;
  std::string question;
};

int run_ask(AskCmd& c) {
  SQZ_ASSIGN_OR_RETURN_CLI(EngineParams ep, engine_params(c.common));
  SQZ_ASSIGN_OR_RETURN_CLI(std::unique_ptr<Engine> e, Engine::create(ep));
  SQZ_ASSIGN_OR_RETURN_CLI(std::unique_ptr<Pack> pack, Pack::open(c.sq.pack));
  SQZ_ASSIGN_OR_RETURN_CLI(AskParams ap, ask_params(c.sq, c.gen, *pack));
  if (!c.common.json)
    ap.gen.on_text = [](const std::string& s) {
      std::fputs(s.c_str(), stdout);
      std::fflush(stdout);
      return true;
    };
  SQZ_ASSIGN_OR_RETURN_CLI(AskResult r, ask(*e, *pack, c.question, ap));
  if (c.common.json) {
    nlohmann::json j = {{"answer", r.gen.text},
                        {"prompt_tokens", pack->n_ctx() + r.gen.prompt_tokens},
                        {"question_tokens", r.gen.prompt_tokens},
                        {"generated_tokens", r.gen.tokens.size()},
                        {"kept_fraction", r.kept_fraction},
                        {"centroid_fraction", r.centroid_fraction},
                        {"budget", r.budget},
                        {"percentile", ap.dense ? nlohmann::json() : nlohmann::json(r.percentile)},
                        {"levels", ap.select.levels},
                        {"dense", ap.dense},
                        {"ttft_ms", r.gen.prefill_ms},
                        {"decode_tok_s", r.gen.decode_tok_s()},
                        {"device", c.common.device}};
    if (e->gpu()) j["pack_upload_s"] = r.pack_upload_s;
    if (ap.measure_mass) j["mass_captured"] = r.mass_captured;
    // Answers of random or badly sampled models need not be valid UTF-8: replace, never throw.
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    std::printf("\n");
    std::fprintf(
        stderr, "[kept %.1f%% of context keys, centroids %.1f%%, ttft %.1f ms, %.1f tok/s]\n",
        100 * r.kept_fraction, 100 * r.centroid_fraction, r.gen.prefill_ms, r.gen.decode_tok_s());
  }
  return 0;
}

SqueezeFlags* g_chat_sq = nullptr;

}  // namespace

void register_chat_pack_option(CLI::App* chat) {
  static SqueezeFlags chat_sq;
  g_chat_sq = &chat_sq;
  add_squeeze_flags(chat, *g_chat_sq, false);
}

bool chat_has_pack(CLI::App* chat) {
  return g_chat_sq && !g_chat_sq->pack.empty();
}

int run_chat_pack(const CommonFlags& common, const GenFlags& gen) {
  SQZ_ASSIGN_OR_RETURN_CLI(EngineParams ep, engine_params(common));
  SQZ_ASSIGN_OR_RETURN_CLI(std::unique_ptr<Engine> e, Engine::create(ep));
  SQZ_ASSIGN_OR_RETURN_CLI(std::unique_ptr<Pack> pack, Pack::open(g_chat_sq->pack));
  SQZ_ASSIGN_OR_RETURN_CLI(AskParams ap, ask_params(*g_chat_sq, gen, *pack));
  std::fprintf(stderr, "context pack: %lld tokens. Ask questions about it (/exit to quit).\n",
               (long long)pack->n_ctx());
  std::string line;
  // Each question is answered against the fixed context alone (questions are independent,
  // which is the product's use: many users asking one document).
  while (true) {
    std::fprintf(stderr, "> ");
    if (!std::getline(std::cin, line)) break;
    if (line == "/exit" || line == "/quit") break;
    if (line.empty()) continue;
    AskParams a = ap;
    a.gen.on_text = [](const std::string& s) {
      std::fputs(s.c_str(), stdout);
      std::fflush(stdout);
      return true;
    };
    auto r = ask(*e, *pack, line, a);
    if (!r.ok()) {
      std::fprintf(stderr, "\nerror: %s\n", r.status().message().c_str());
      continue;
    }
    std::printf("\n");
    std::fprintf(stderr, "[kept %.1f%% of keys, %.1f tok/s]\n", 100 * r->kept_fraction,
                 r->gen.decode_tok_s());
  }
  return 0;
}

void register_squeeze_commands(CLI::App& app, Runners& runners) {
  static CompileCmd cc_store;  // lives for the process
  auto* cc = &cc_store;
  auto* sc = app.add_subcommand("compile", "compile a fixed context into a context pack");
  add_common_flags(sc, cc->common);
  sc->add_option("--context,-c", cc->context, "text file of the fixed context")->required();
  sc->add_option("--out,-o", cc->out, "output pack path")->required();
  sc->add_option("--clusters", cc->clusters, "fine clusters: percent of keys (5%) or count");
  sc->add_option("--coarse", cc->coarse, "coarse clusters: percent (1%), count, or 0 for none");
  sc->add_option("--obs-window", cc->obs_window, "observation window (tokens)")
      ->check(CLI::Range(0, 1 << 20));
  sc->add_option("--seed", cc->seed, "k-means seed");
  sc->add_flag("--center-keys", cc->center_keys,
               "cluster key directions around the head's mean key");
  sc->callback([cc, &runners] { runners.push_back([cc] { return run_compile(*cc); }); });

  static AskCmd ac_store;
  auto* ac = &ac_store;
  auto* sa = app.add_subcommand("ask", "answer a question about a compiled context");
  add_common_flags(sa, ac->common);
  add_gen_flags(sa, ac->gen);
  add_squeeze_flags(sa, ac->sq, true);
  sa->add_option("--question,-q", ac->question, "the question")->required();
  sa->callback([ac, &runners] { runners.push_back([ac] { return run_ask(*ac); }); });
}

}  // namespace sqz::cli
