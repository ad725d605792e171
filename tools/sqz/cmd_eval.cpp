// sqz eval [--config smoke|full|FILE] [--out DIR] [--threads N] [--model M]
#include "cmd_eval.h"

#include <cstdio>
#include <thread>

#include "eval/harness.h"

namespace sqz::cli {

namespace {

struct EvalCmd {
  std::string config = "smoke";
  std::string out = "eval/out";
  int threads = 0;  // 0 = all cores
  std::string model;
  bool tasks_only = false;
  bool print_config = false;
  bool resume = false;
};

int run_eval_cmd(const EvalCmd& c) {
  eval::EvalConfig cfg;
  if (c.config == "smoke" || c.config == "full") {
    SQZ_ASSIGN_OR_RETURN_CLI(cfg, eval::eval_config_builtin(c.config));
  } else {
    SQZ_ASSIGN_OR_RETURN_CLI(std::string text, read_text_file(c.config));
    SQZ_ASSIGN_OR_RETURN_CLI(cfg, eval::eval_config_from_json(text));
  }
  if (c.print_config) {
    std::printf("%s\n", eval::eval_config_to_json(cfg).c_str());
    return 0;
  }
  eval::EvalOptions opt;
  opt.out_dir = c.out;
  opt.model_path = resolve_model(c.model);
  opt.n_threads =
      c.threads > 0 ? c.threads : (int)std::max(1u, std::thread::hardware_concurrency());
  opt.tasks_only = c.tasks_only;
  opt.resume = c.resume;
  opt.command = "sqz eval --config " + c.config + " --out " + c.out + " --threads " +
                std::to_string(opt.n_threads) + (c.model.empty() ? "" : " --model " + c.model) +
                (c.tasks_only ? " --tasks-only" : "") + (c.resume ? " --resume" : "");
  opt.log = [](const std::string& s) {
    std::fprintf(stderr, "[eval] %s\n", s.c_str());
    std::fflush(stderr);
  };
  SQZ_ASSIGN_OR_RETURN_CLI(eval::EvalRunSummary s, eval::run_eval(cfg, opt));
  std::printf("eval '%s': %lld questions, %lld records, %lld compiles in %.1f s; results in %s\n",
              cfg.name.c_str(), (long long)s.n_questions, (long long)s.n_records,
              (long long)s.n_compiles, s.wall_s, c.out.c_str());
  return 0;
}

}  // namespace

void register_eval_command(CLI::App& app, Runners& runners) {
  static EvalCmd c_store;  // lives for the process
  auto* c = &c_store;
  auto* sc = app.add_subcommand(
      "eval", "long-context accuracy: squeezed attention vs baselines at equal budget");
  sc->add_option("--config", c->config, "smoke, full, or a JSON config file");
  sc->add_option("--out,-o", c->out, "output directory (results.jsonl, summary.json, ...)");
  sc->add_option("--threads,-t", c->threads, "CPU threads (default: all cores)")
      ->check(CLI::Range(0, 1024));
  sc->add_option("--model,-m", c->model, "GGUF model (default: SmolLM2-135M)");
  sc->add_flag("--tasks-only", c->tasks_only, "write the generated tasks (tasks.jsonl) and stop");
  sc->add_flag("--print-config", c->print_config, "print the resolved config as JSON and stop");
  sc->add_flag("--resume", c->resume,
               "keep the complete questions of an interrupted run in --out and run the rest");
  sc->callback([c, &runners] { runners.push_back([c] { return run_eval_cmd(*c); }); });
}

}  // namespace sqz::cli
