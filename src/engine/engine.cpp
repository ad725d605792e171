#include "engine/engine.h"

#include <chrono>
#include <cmath>

#include "core/clock.h"
#include "core/hash.h"
#include "engine/gpu_session.h"

namespace sqz {

namespace {
double now_ms() {
  return now_s() * 1e3;
}
}  // namespace

Result<std::unique_ptr<Engine>> Engine::create(const EngineParams& p) {
  if (p.n_threads < 1 || p.n_threads > 1024)
    return Error(Code::kInvalidArgument, "threads must be in [1, 1024], got {}", p.n_threads);
  if (p.n_batch < 1) return Error(Code::kInvalidArgument, "batch must be >= 1");
  if (p.kv_type != DType::kF16 && p.kv_type != DType::kF32)
    return Error(Code::kInvalidArgument, "kv type must be f16 or f32");
  auto e = std::unique_ptr<Engine>(new Engine());
  e->params_ = p;
  SQZ_ASSIGN_OR_RETURN(std::unique_ptr<ModelFile> mf, model_file_open(p.model_path));
  e->file_ = std::shared_ptr<ModelFile>(std::move(mf));
  SQZ_ASSIGN_OR_RETURN(e->model_, LlamaModel::load(e->file_));
  e->model_->set_prefill_f32(p.prefill_f32);
  SQZ_ASSIGN_OR_RETURN(e->tok_, Tokenizer::create(e->file_->tokenizer));
  const ModelConfig& c = e->file_->config;
  const int64_t train = c.n_ctx_train > 0 ? c.n_ctx_train : 4096;
  e->n_ctx_ = p.n_ctx > 0 ? p.n_ctx : train;
  if (e->n_ctx_ > (int64_t)1 << 24)
    return Error(Code::kInvalidArgument, "context size {} too large", e->n_ctx_);
  e->chat_ = chat_template_parse(e->file_->tokenizer.chat_template);
  uint64_t h = fnv1a64(e->file_->tokenizer.model);
  h = fnv1a64(e->file_->tokenizer.pre, h);
  for (const auto& t : e->file_->tokenizer.tokens) h = fnv1a64(t, h);
  for (const auto& m : e->file_->tokenizer.merges) h = fnv1a64(m, h);
  e->tokenizer_hash_ = h;
  if (p.device == Device::kCuda) {
    SQZ_ASSIGN_OR_RETURN(e->gpu_, gpu_backend_create(*e->model_));
  }
  return e;
}

std::string Engine::render_chat(const std::vector<ChatMessage>& msgs,
                                bool add_generation_prompt) const {
  const int32_t bos = tok_->bos();
  const int32_t eos = tok_->eos();
  const auto& tokens = file_->tokenizer.tokens;
  const std::string bos_text =
      bos >= 0 && bos < (int32_t)tokens.size() ? tokens[(size_t)bos] : std::string();
  const std::string eos_text =
      eos >= 0 && eos < (int32_t)tokens.size() ? tokens[(size_t)eos] : std::string("</s>");
  return chat_template_apply(chat_, msgs, add_generation_prompt, bos_text, eos_text);
}

Result<GenerateResult> Engine::generate(const std::vector<int32_t>& prompt,
                                        const GenerateParams& gp) const {
  const ModelConfig& c = model_->config();
  const int64_t need = (int64_t)prompt.size() + gp.max_tokens;
  if ((int64_t)prompt.size() >= n_ctx_)
    return Error(Code::kOutOfRange, "prompt of {} tokens does not fit the context of {} tokens",
                 prompt.size(), n_ctx_);
  if (gpu_) return gpu_generate(*this, prompt, gp);
  KvCache cache;
  cache.init(c.n_layer, c.n_head_kv, c.head_dim, std::min(need, n_ctx_), params_.kv_type);
  DenseAttention attn(cache, c.n_head, c.n_head_kv, c.head_dim, params_.n_threads);
  ForwardScratch s;
  model_->init_scratch(s, std::min<int64_t>(params_.n_batch, std::max<int64_t>(1, prompt.size())),
                       params_.n_threads);
  return run_generation(*model_, *tok_, attn, s, prompt, 0, std::min(need, n_ctx_), gp,
                        params_.n_threads);
}

Result<GenerateResult> run_generation(const LlamaModel& model, const Tokenizer& tok,
                                      AttentionProvider& attn, ForwardScratch& s,
                                      const std::vector<int32_t>& prompt, int64_t pos0,
                                      int64_t max_pos, const GenerateParams& gp, int n_threads) {
  auto fwd = [&](const int32_t* t, const int32_t* p, int64_t n, float* logits, int64_t nl) {
    return model.forward(t, p, n, attn, s, n_threads, logits, nl);
  };
  return run_generation_fn(fwd, s.max_tokens, model.config().n_vocab, tok, prompt, pos0, max_pos,
                           gp);
}

Result<GenerateResult> run_generation_fn(const ForwardFn& forward, int64_t max_batch,
                                         int32_t n_vocab, const Tokenizer& tok,
                                         const std::vector<int32_t>& prompt, int64_t pos0,
                                         int64_t max_pos, const GenerateParams& gp) {
  if (prompt.empty()) return Error(Code::kInvalidArgument, "empty prompt");
  if (max_batch < 1) return Error(Code::kInvalidArgument, "batch must be >= 1");
  if (pos0 + (int64_t)prompt.size() > max_pos)
    return Error(Code::kOutOfRange, "prompt of {} tokens at position {} exceeds the context ({})",
                 prompt.size(), pos0, max_pos);
  GenerateResult res;
  res.prompt_tokens = (int64_t)prompt.size();
  std::vector<float> logits((size_t)n_vocab);
  std::vector<int32_t> pos((size_t)max_batch);
  const double t0 = now_ms();
  const int64_t n = (int64_t)prompt.size();
  for (int64_t i = 0; i < n; i += max_batch) {
    const int64_t nb = std::min<int64_t>(max_batch, n - i);
    for (int64_t j = 0; j < nb; j++) pos[(size_t)j] = (int32_t)(pos0 + i + j);
    const bool last = i + nb == n;
    SQZ_RETURN_IF_ERROR(
        forward(prompt.data() + i, pos.data(), nb, last ? logits.data() : nullptr, last ? 1 : 0));
    if (gp.on_prefill) gp.on_prefill(i + nb, n);
  }
  Sampler sampler(gp.sampler);
  int64_t cur = pos0 + n;
  std::string pending;  // text held back while it could be the start of a stop string
  double t_first = 0;
  res.stop_reason = "length";
  for (int step = 0; step < gp.max_tokens; step++) {
    const int32_t id = sampler.sample(logits.data(), n_vocab);
    if (step == 0) t_first = now_ms();
    if (gp.stop_at_eos && (id == tok.eos() || id == tok.eot())) {
      res.stop_reason = "eos";
      break;
    }
    res.tokens.push_back(id);
    pending += tok.token_to_piece(id);
    bool stopped = false;
    for (const auto& st : gp.stop) {
      const size_t at = st.empty() ? std::string::npos : pending.find(st);
      if (at != std::string::npos) {
        pending.resize(at);
        stopped = true;
      }
    }
    // Emit what can no longer be part of a stop string (and is complete UTF-8).
    size_t keep = 0;
    if (!stopped)
      for (const auto& st : gp.stop)
        for (size_t k = std::min(st.size() - 1, pending.size()); k > keep; k--)
          if (pending.compare(pending.size() - k, k, st, 0, k) == 0) {
            keep = k;
            break;
          }
    size_t emit = pending.size() - keep;
    // Do not split a UTF-8 sequence across callbacks.
    size_t back = 0;
    while (back < emit && back < 4 && ((unsigned char)pending[emit - 1 - back] & 0xC0) == 0x80)
      back++;
    if (back < emit) {
      const unsigned char lead = (unsigned char)pending[emit - 1 - back];
      const size_t len = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
      if (len > back + 1 && !stopped) emit -= back + 1;
    }
    if (emit > 0) {
      const std::string out = pending.substr(0, emit);
      res.text += out;
      pending.erase(0, emit);
      if (gp.on_text && !gp.on_text(out)) {
        res.stop_reason = "callback";
        break;
      }
    }
    if (stopped) {
      res.stop_reason = "stop";
      break;
    }
    if (cur >= max_pos) break;
    int32_t p = (int32_t)cur;
    SQZ_RETURN_IF_ERROR(forward(&id, &p, 1, logits.data(), 1));
    cur++;
  }
  if (res.stop_reason != "stop" && !pending.empty()) {
    res.text += pending;
    if (gp.on_text) gp.on_text(pending);
  }
  const double t_end = now_ms();
  res.prefill_ms = (t_first > 0 ? t_first : t_end) - t0;
  res.decode_ms = t_first > 0 ? t_end - t_first : 0;
  return res;
}

Result<PerplexityResult> perplexity(const Engine& e, const std::string& text, int64_t n_ctx,
                                    ProgressFn progress) {
  const ModelConfig& c = e.model().config();
  if (e.gpu())
    return Error(Code::kUnsupported, "perplexity runs on the CPU only (use --device cpu)");
  if (n_ctx < 2 || n_ctx > e.n_ctx())
    return Error(Code::kInvalidArgument, "perplexity ctx {} must be in [2, {}]", n_ctx, e.n_ctx());
  const std::vector<int32_t> toks = e.tokenizer().encode(text, false, false);
  const int64_t n_chunks = (int64_t)toks.size() / n_ctx;
  if (n_chunks < 1)
    return Error(Code::kInvalidArgument, "text has {} tokens, fewer than one window of {}",
                 toks.size(), n_ctx);
  const int nt = e.params().n_threads;
  KvCache cache;
  cache.init(c.n_layer, c.n_head_kv, c.head_dim, n_ctx, e.params().kv_type);
  ForwardScratch s;
  const int64_t nb = std::min<int64_t>(e.params().n_batch, n_ctx);
  e.model().init_scratch(s, nb, nt);
  std::vector<float> logits((size_t)(nb * c.n_vocab));
  std::vector<int32_t> pos((size_t)nb);
  std::vector<double> nll;
  const double t0 = now_ms();
  for (int64_t ch = 0; ch < n_chunks; ch++) {
    DenseAttention attn(cache, c.n_head, c.n_head_kv, c.head_dim, nt);
    const int32_t* w = toks.data() + ch * n_ctx;
    for (int64_t i = 0; i < n_ctx; i += nb) {
      const int64_t b = std::min(nb, n_ctx - i);
      for (int64_t j = 0; j < b; j++) pos[(size_t)j] = (int32_t)(i + j);
      SQZ_RETURN_IF_ERROR(e.model().forward(w + i, pos.data(), b, attn, s, nt, logits.data(), b));
      for (int64_t j = 0; j < b; j++) {
        const int64_t t = i + j;
        if (t + 1 >= n_ctx) break;
        const float* lg = logits.data() + j * c.n_vocab;
        float mx = lg[0];
        for (int32_t v = 1; v < c.n_vocab; v++) mx = std::max(mx, lg[v]);
        double sum = 0;
        for (int32_t v = 0; v < c.n_vocab; v++) sum += std::exp((double)lg[v] - mx);
        nll.push_back(-((double)lg[w[t + 1]] - mx - std::log(sum)));
      }
    }
    if (progress) progress(ch + 1, n_chunks);
  }
  PerplexityResult r;
  r.n_chunks = n_chunks;
  r.n_scored = (int64_t)nll.size();
  double mean = 0;
  for (double x : nll) mean += x;
  mean /= (double)nll.size();
  double var = 0;
  for (double x : nll) var += (x - mean) * (x - mean);
  var /= (double)std::max<size_t>(1, nll.size() - 1);
  r.nll_mean = mean;
  r.ppl = std::exp(mean);
  r.ppl_err = r.ppl * std::sqrt(var / (double)nll.size());
  r.seconds = (now_ms() - t0) / 1e3;
  return r;
}

}  // namespace sqz
