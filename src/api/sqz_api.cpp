// Implementation of include/sqz.h: translate to the C++ engine, catch everything at the
// boundary and turn Status codes into the documented integers.
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <thread>

#include "engine/engine.h"
#include "engine/squeeze_session.h"
#include "sqz.h"

struct sqz_engine {
  std::unique_ptr<sqz::Engine> e;
};
struct sqz_pack {
  std::unique_ptr<sqz::Pack> p;
};

namespace {

thread_local std::string g_last_error;

int set_error(const sqz::Status& st) {
  g_last_error = st.message();
  return st.ok() ? SQZ_OK : (int)st.code();
}

int invalid(const char* msg) {
  g_last_error = msg;
  return SQZ_ERR_INVALID_ARGUMENT;
}

// Runs f, mapping C++ exceptions (bad_alloc, bugs) to status codes.
template <typename F>
int guarded(F&& f) {
  try {
    g_last_error.clear();
    return f();
  } catch (const std::bad_alloc&) {
    g_last_error = "out of memory";
    return SQZ_ERR_INTERNAL;
  } catch (const std::exception& ex) {
    g_last_error = std::string("internal error: ") + ex.what();
    return SQZ_ERR_INTERNAL;
  } catch (...) {
    g_last_error = "internal error";
    return SQZ_ERR_INTERNAL;
  }
}

char* dup_string(const std::string& s) {
  char* p = (char*)std::malloc(s.size() + 1);
  if (p) std::memcpy(p, s.c_str(), s.size() + 1);
  return p;
}

sqz::GenerateParams to_gen(const sqz_generate_params* p) {
  sqz::GenerateParams g;
  const sqz_generate_params d = sqz_generate_default_params();
  if (!p) p = &d;
  g.max_tokens = p->max_tokens;
  g.sampler.temperature = p->temperature;
  g.sampler.top_k = p->top_k;
  g.sampler.top_p = p->top_p;
  g.sampler.seed = p->seed;
  for (int i = 0; i < p->n_stop && p->stop; i++)
    if (p->stop[i]) g.stop.emplace_back(p->stop[i]);
  if (p->on_text) {
    sqz_text_cb cb = p->on_text;
    void* user = p->user;
    g.on_text = [cb, user](const std::string& s) { return cb(s.c_str(), user) != 0; };
  }
  return g;
}

}  // namespace

extern "C" {

const char* sqz_last_error(void) {
  return g_last_error.c_str();
}
const char* sqz_version(void) {
  return "0.1.0";
}
void sqz_string_free(char* s) {
  std::free(s);
}

sqz_engine_params sqz_engine_default_params(void) {
  sqz_engine_params p;
  p.model_path = nullptr;
  p.n_threads = 0;
  p.n_ctx = 0;
  p.n_batch = 256;
  p.kv_f32 = 0;
  return p;
}

int sqz_engine_create(const sqz_engine_params* params, sqz_engine** out) {
  return guarded([&]() -> int {
    if (!params || !out) return invalid("sqz_engine_create: null argument");
    *out = nullptr;
    if (!params->model_path) return invalid("sqz_engine_create: model_path is required");
    sqz::EngineParams ep;
    ep.model_path = params->model_path;
    ep.n_threads = params->n_threads > 0 ? params->n_threads
                                         : (int)std::max(1u, std::thread::hardware_concurrency());
    ep.n_ctx = params->n_ctx;
    ep.n_batch = params->n_batch;
    ep.kv_type = params->kv_f32 ? sqz::DType::kF32 : sqz::DType::kF16;
    auto r = sqz::Engine::create(ep);
    if (!r.ok()) return set_error(r.status());
    *out = new sqz_engine{std::move(r).value()};
    return SQZ_OK;
  });
}

void sqz_engine_free(sqz_engine* e) {
  delete e;
}

int sqz_tokenize(sqz_engine* e, const char* text, int add_special, int parse_special, int32_t* out,
                 int64_t cap, int64_t* n) {
  return guarded([&]() -> int {
    if (!e || !text || !n) return invalid("sqz_tokenize: null argument");
    auto ids = e->e->tokenizer().encode(text, add_special != 0, parse_special != 0);
    *n = (int64_t)ids.size();
    if (out)
      for (int64_t i = 0; i < std::min<int64_t>(cap, *n); i++) out[i] = ids[(size_t)i];
    return SQZ_OK;
  });
}

sqz_generate_params sqz_generate_default_params(void) {
  sqz_generate_params p;
  std::memset(&p, 0, sizeof(p));
  p.max_tokens = 256;
  p.temperature = 0.0f;
  p.top_k = 40;
  p.top_p = 0.95f;
  return p;
}

int sqz_generate(sqz_engine* e, const char* prompt, int chat, const sqz_generate_params* p,
                 char** out_text, sqz_generate_stats* stats) {
  return guarded([&]() -> int {
    if (!e || !prompt) return invalid("sqz_generate: null argument");
    std::vector<int32_t> ids;
    if (chat) {
      ids = e->e->tokenizer().encode(e->e->render_chat({{"user", prompt}}, true), false, true);
    } else {
      ids = e->e->tokenizer().encode(prompt, true, false);
    }
    auto r = e->e->generate(ids, to_gen(p));
    if (!r.ok()) return set_error(r.status());
    if (out_text) *out_text = dup_string(r->text);
    if (stats) {
      std::memset(stats, 0, sizeof(*stats));
      stats->prompt_tokens = r->prompt_tokens;
      stats->generated_tokens = (int64_t)r->tokens.size();
      stats->ttft_ms = r->prefill_ms;
      stats->decode_tok_s = r->decode_tok_s();
    }
    return SQZ_OK;
  });
}

int sqz_perplexity(sqz_engine* e, const char* text, int64_t n_ctx, double* ppl, double* ppl_err) {
  return guarded([&]() -> int {
    if (!e || !text || !ppl) return invalid("sqz_perplexity: null argument");
    auto r = sqz::perplexity(*e->e, text, n_ctx, nullptr);
    if (!r.ok()) return set_error(r.status());
    *ppl = r->ppl;
    if (ppl_err) *ppl_err = r->ppl_err;
    return SQZ_OK;
  });
}

sqz_compile_params sqz_compile_default_params(void) {
  sqz_compile_params p;
  p.clusters = 0.05;
  p.coarse = 0.01;
  p.obs_window = 100;
  p.kv_f32 = 0;
  p.seed = 0;
  return p;
}

int sqz_pack_compile(sqz_engine* e, const char* context_text, const sqz_compile_params* p,
                     const char* out_path) {
  return guarded([&]() -> int {
    if (!e || !context_text || !out_path) return invalid("sqz_pack_compile: null argument");
    const sqz_compile_params d = sqz_compile_default_params();
    if (!p) p = &d;
    sqz::CompileParams cp;
    cp.clusters = p->clusters;
    cp.coarse = p->coarse;
    cp.obs_window = p->obs_window;
    cp.kv_type = p->kv_f32 ? sqz::DType::kF32 : sqz::DType::kF16;
    cp.seed = p->seed;
    cp.n_threads = e->e->params().n_threads;
    auto r = sqz::compile_context(*e->e, context_text, cp, out_path, nullptr);
    return set_error(r.status());
  });
}

int sqz_pack_open(sqz_engine* e, const char* path, sqz_pack** out) {
  return guarded([&]() -> int {
    if (!e || !path || !out) return invalid("sqz_pack_open: null argument");
    *out = nullptr;
    auto r = sqz::Pack::open(path);
    if (!r.ok()) return set_error(r.status());
    sqz::Status st = sqz::pack_check_model(*r.value(), sqz::engine_fingerprint(*e->e));
    if (!st.ok()) return set_error(st);
    *out = new sqz_pack{std::move(r).value()};
    return SQZ_OK;
  });
}

void sqz_pack_free(sqz_pack* p) {
  delete p;
}
int64_t sqz_pack_n_ctx(const sqz_pack* p) {
  return p ? p->p->n_ctx() : 0;
}

sqz_ask_params sqz_ask_default_params(void) {
  sqz_ask_params p;
  p.percentile = 0.9;
  p.budget = -1;
  p.levels = 0;
  p.dense = 0;
  return p;
}

int sqz_pack_ask(sqz_engine* e, sqz_pack* pack, const char* question, const sqz_ask_params* ap,
                 const sqz_generate_params* gp, char** out_text, sqz_generate_stats* stats) {
  return guarded([&]() -> int {
    if (!e || !pack || !question) return invalid("sqz_pack_ask: null argument");
    const sqz_ask_params d = sqz_ask_default_params();
    if (!ap) ap = &d;
    sqz::AskParams a;
    a.gen = to_gen(gp);
    a.select.percentile = ap->percentile;
    a.budget = ap->budget;
    a.select.levels = ap->levels > 0 ? ap->levels : (pack->p->n_coarse() > 0 ? 2 : 1);
    a.dense = ap->dense != 0;
    auto r = sqz::ask(*e->e, *pack->p, question, a);
    if (!r.ok()) return set_error(r.status());
    if (out_text) *out_text = dup_string(r->gen.text);
    if (stats) {
      stats->prompt_tokens = pack->p->n_ctx() + r->gen.prompt_tokens;
      stats->generated_tokens = (int64_t)r->gen.tokens.size();
      stats->ttft_ms = r->gen.prefill_ms;
      stats->decode_tok_s = r->gen.decode_tok_s();
      stats->kept_fraction = r->kept_fraction;
      stats->centroid_fraction = r->centroid_fraction;
    }
    return SQZ_OK;
  });
}

}  // extern "C"
