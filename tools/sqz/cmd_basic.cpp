// sqz generate / chat / perplexity.
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "common.h"

namespace sqz::cli {

namespace {

struct GenerateCmd {
  CommonFlags common;
  GenFlags gen;
  std::string prompt;
  bool raw = false;
};

int run_generate(GenerateCmd& c) {
  SQZ_ASSIGN_OR_RETURN_CLI(EngineParams ep, engine_params(c.common));
  SQZ_ASSIGN_OR_RETURN_CLI(std::unique_ptr<Engine> e, Engine::create(ep));
  GenerateParams gp = gen_params(c.gen);
  std::vector<int32_t> ids = e->tokenizer().encode(c.prompt, true, false);
  if (ids.empty()) return fail(Error(Code::kInvalidArgument, "empty prompt"));
  if (!c.common.json) {
    std::fputs(c.prompt.c_str(), stdout);
    gp.on_text = [](const std::string& s) {
      std::fputs(s.c_str(), stdout);
      std::fflush(stdout);
      return true;
    };
  }
  gp.on_prefill = progress_bar("prefill");
  SQZ_ASSIGN_OR_RETURN_CLI(GenerateResult r, e->generate(ids, gp));
  if (c.common.json) {
    nlohmann::json j = {{"text", r.text},
                        {"prompt_tokens", r.prompt_tokens},
                        {"generated_tokens", r.tokens.size()},
                        {"ttft_ms", r.prefill_ms},
                        {"decode_tok_s", r.decode_tok_s()},
                        {"stop_reason", r.stop_reason}};
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    std::printf("\n");
    std::fprintf(stderr, "[%lld prompt tokens, ttft %.1f ms, %zu tokens at %.1f tok/s]\n",
                 (long long)r.prompt_tokens, r.prefill_ms, r.tokens.size(), r.decode_tok_s());
  }
  return 0;
}

struct ChatCmd {
  CommonFlags common;
  GenFlags gen;
  std::string system;
};

int run_chat(ChatCmd& c) {
  SQZ_ASSIGN_OR_RETURN_CLI(EngineParams ep, engine_params(c.common));
  SQZ_ASSIGN_OR_RETURN_CLI(std::unique_ptr<Engine> e, Engine::create(ep));
  std::vector<ChatMessage> msgs;
  if (!c.system.empty()) msgs.push_back({"system", c.system});
  std::string line;
  // Each turn re-renders the conversation and re-prefills it: simple and exact; the squeezed
  // chat (with --pack) is where long shared prefixes are cached.
  while (true) {
    std::fprintf(stderr, "> ");
    if (!std::getline(std::cin, line)) break;
    if (line == "/exit" || line == "/quit") break;
    if (line.empty()) continue;
    msgs.push_back({"user", line});
    const std::string prompt = e->render_chat(msgs, true);
    std::vector<int32_t> ids = e->tokenizer().encode(prompt, false, true);
    GenerateParams gp = gen_params(c.gen);
    gp.on_text = [](const std::string& s) {
      std::fputs(s.c_str(), stdout);
      std::fflush(stdout);
      return true;
    };
    auto r = e->generate(ids, gp);
    if (!r.ok()) {
      std::fprintf(stderr, "\nerror: %s\n", r.status().message().c_str());
      msgs.pop_back();
      continue;
    }
    std::printf("\n");
    msgs.push_back({"assistant", r->text});
  }
  return 0;
}

struct PplCmd {
  CommonFlags common;
  std::string file;
  int64_t ctx = 512;
};

int run_ppl(PplCmd& c) {
  SQZ_ASSIGN_OR_RETURN_CLI(EngineParams ep, engine_params(c.common));
  SQZ_ASSIGN_OR_RETURN_CLI(std::unique_ptr<Engine> e, Engine::create(ep));
  SQZ_ASSIGN_OR_RETURN_CLI(std::string text, read_text_file(c.file));
  SQZ_ASSIGN_OR_RETURN_CLI(PerplexityResult r,
                           perplexity(*e, text, c.ctx, progress_bar("perplexity")));
  if (c.common.json) {
    nlohmann::json j = {{"perplexity", r.ppl},    {"perplexity_err", r.ppl_err},
                        {"nll_mean", r.nll_mean}, {"tokens_scored", r.n_scored},
                        {"chunks", r.n_chunks},   {"ctx", c.ctx},
                        {"seconds", r.seconds}};
    std::cout << j.dump() << "\n";
  } else {
    std::printf("perplexity %.4f ± %.4f over %lld tokens (%lld windows of %lld), %.1f s\n", r.ppl,
                r.ppl_err, (long long)r.n_scored, (long long)r.n_chunks, (long long)c.ctx,
                r.seconds);
  }
  return 0;
}

}  // namespace

void register_basic_commands(CLI::App& app, Runners& runners) {
  static GenerateCmd g_store;  // lives for the process (static: no leak at exit)
  auto* g = &g_store;
  auto* sg = app.add_subcommand("generate", "continue a prompt");
  add_common_flags(sg, g->common);
  add_gen_flags(sg, g->gen);
  sg->add_option("--prompt,-p", g->prompt, "prompt text")->required();
  sg->callback([g, &runners] { runners.push_back([g] { return run_generate(*g); }); });

  static ChatCmd ch_store;
  auto* ch = &ch_store;
  auto* sc = app.add_subcommand("chat", "interactive chat (add --pack PACK for a fixed context)");
  add_common_flags(sc, ch->common);
  add_gen_flags(sc, ch->gen);
  sc->add_option("--system", ch->system, "system prompt");
  register_chat_pack_option(sc);
  sc->callback([ch, &runners, sc] {
    if (chat_has_pack(sc)) {
      runners.push_back([ch] { return run_chat_pack(ch->common, ch->gen); });
    } else {
      runners.push_back([ch] { return run_chat(*ch); });
    }
  });

  static PplCmd pp_store;
  auto* pp = &pp_store;
  auto* sp = app.add_subcommand("perplexity", "perplexity of a text file");
  add_common_flags(sp, pp->common, /*with_ctx=*/false);
  sp->add_option("--file,-f", pp->file, "text file")->required();
  sp->add_option("--ctx", pp->ctx, "window size in tokens (non-overlapping windows)")
      ->check(CLI::Range((int64_t)2, (int64_t)1 << 20));
  sp->callback([pp, &runners] { runners.push_back([pp] { return run_ppl(*pp); }); });
}

}  // namespace sqz::cli
