// Set-up shared by the diagnostics in eval/probes: the default model and one PreFixQA document
// of the evaluation's corpus (seed 1, instance 0, 12 facts), compiled into a pack.
#pragma once

#include <memory>
#include <string>

#include "engine/squeeze_session.h"
#include "eval/tasks.h"

namespace sqz {

struct ProbePack {
  std::unique_ptr<Engine> engine;
  eval::TaskInstance task;  // context and questions
  std::unique_ptr<Pack> pack;
};

// target_tokens: the document's size; cp: how to compile it; path: where the pack goes.
inline Result<ProbePack> make_probe_pack(int64_t target_tokens, const CompileParams& cp,
                                         const std::string& path) {
  ProbePack p;
  EngineParams ep;
  ep.model_path = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  ep.n_threads = 2;
  SQZ_ASSIGN_OR_RETURN(p.engine, Engine::create(ep));
  SQZ_ASSIGN_OR_RETURN(auto corpus, eval::load_corpus({}));
  const Tokenizer& tok = p.engine->tokenizer();
  auto count = [&](const std::string& s) { return (int64_t)tok.encode(s, false, false).size(); };
  eval::TaskParams tp;
  tp.kind = eval::TaskKind::kPrefixQa;
  tp.target_tokens = target_tokens;
  tp.n_items = 12;
  tp.seed = 1;
  SQZ_ASSIGN_OR_RETURN(p.task, eval::make_task(corpus, tp, count));
  SQZ_RETURN_IF_ERROR(compile_context(*p.engine, p.task.context, cp, path, nullptr).status());
  SQZ_ASSIGN_OR_RETURN(p.pack, Pack::open(path));
  return p;
}

}  // namespace sqz
