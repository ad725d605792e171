#include "engine/squeeze_session.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include "core/clock.h"
#include "core/fp16.h"
#include "engine/gpu_session.h"
#include "model/kv_cache.h"

namespace sqz {

namespace {

// Dense attention over the context being compiled, keeping the queries of the observation
// window (post-RoPE) for calibration.
class CaptureAttention : public AttentionProvider {
 public:
  CaptureAttention(KvCache& cache, const ModelConfig& c, int n_threads, int64_t obs_start,
                   ContextCapture& cap)
      : dense_(cache, c.n_head, c.n_head_kv, c.head_dim, n_threads),
        c_(c),
        obs_start_(obs_start),
        cap_(cap) {}
  Status attend(int layer, const float* q, const float* k, const float* v, int64_t n_tok,
                const int32_t* pos, float* out) override {
    const int64_t qrow = (int64_t)c_.n_head * c_.head_dim;
    for (int64_t t = 0; t < n_tok; t++) {
      if (pos[t] < obs_start_) continue;
      const int64_t r = pos[t] - obs_start_;
      std::copy(q + t * qrow, q + (t + 1) * qrow, cap_.q_obs[(size_t)layer].begin() + r * qrow);
    }
    return dense_.attend(layer, q, k, v, n_tok, pos, out);
  }

 private:
  DenseAttention dense_;
  const ModelConfig& c_;
  int64_t obs_start_;
  ContextCapture& cap_;
};

enum class Mode { kSqueezed, kDense };

// Attention for question/answer tokens: selected pack clusters + observation window + the
// user's own tokens (causal), merged through LSE by the runner.
class SqueezeAttention : public AttentionProvider {
 public:
  SqueezeAttention(const Pack& pack, KvCache& user, const ModelConfig& c, int n_threads, Mode mode,
                   const SelectParams& sp, KeySelector* alt, bool measure_mass)
      : pack_(pack),
        user_(user),
        c_(c),
        n_threads_(n_threads),
        mode_(mode),
        sp_(sp),
        selector_(pack, n_threads),
        alt_(alt),
        measure_mass_(measure_mass) {
    sel_.resize((size_t)c.n_head_kv);
    full_.assign(1, RowRange{0, (int32_t)pack.n_clustered()});
    obs_.assign(1, RowRange{0, (int32_t)pack.n_obs()});
  }

  Status attend(int layer, const float* q, const float* k, const float* v, int64_t n_tok,
                const int32_t* pos, float* out) override {
    const int64_t off = pack_.n_ctx();
    const int64_t last = pos[n_tok - 1] - off;
    if (pos[0] < off || last >= user_.capacity())
      return Error(Code::kOutOfRange, "question + answer exceed the context window ({} tokens)",
                   off + user_.capacity());
    user_.store(layer, k, v, n_tok, pos, off);
    const int64_t H = c_.n_head_kv;
    int64_t n_blocks = 1, block = n_tok;
    if (mode_ == Mode::kSqueezed) {
      const int64_t blk = alt_ ? alt_->block() : sp_.block;
      n_blocks = Selector::n_blocks(n_tok, blk);
      if (n_blocks > 1) block = blk;
      if (alt_) {
        sel_.assign((size_t)(n_blocks * H), HeadSelection());
        alt_->plan(layer, q, n_tok, sel_);
      } else {
        selector_.plan(layer, q, n_tok, sp_, sel_);
      }
      if (sinks_ > 0) add_sinks(layer);
      if (measure_mass_ && n_blocks == 1) measure_mass(layer, q, n_tok);
    }
    // One plan/run per selection block: a block's query tokens see the clusters selected for
    // that block, plus the observation window and the user tokens (causal).
    const int64_t qrow = (int64_t)c_.n_head * c_.head_dim;
    for (int64_t b = 0; b < n_blocks; b++) {
      const int64_t t0 = b * block, nb = std::min(block, n_tok - t0);
      const int64_t last_b = pos[t0 + nb - 1] - off;
      user_range_.assign(1, RowRange{0, (int32_t)(last_b + 1)});
      segs_.clear();
      for (int h = 0; h < H; h++) {
        AttnSegment s;
        s.kv_head = h;
        s.kv = pack_.clustered_kv(layer, h);
        if (mode_ == Mode::kSqueezed) {
          const HeadSelection& hs = sel_[(size_t)(b * H + h)];
          s.ranges = hs.ranges;
          kept_ += hs.kept_keys * nb;
          compared_ += hs.centroids_compared * nb;
        } else {
          s.ranges = full_;
          kept_ += pack_.n_clustered() * nb;
        }
        segs_.push_back(s);
        if (pack_.n_obs() > 0) {
          AttnSegment o;
          o.kv_head = h;
          o.kv = pack_.obs_kv(layer, h);
          o.ranges = obs_;
          segs_.push_back(o);
          kept_ += pack_.n_obs() * nb;
        }
        AttnSegment u;
        u.kv_head = h;
        u.kv = user_.view(layer, h);
        u.ranges = user_range_;
        u.causal = true;
        u.mask.key_pos0 = off;
        u.mask.q_pos0 = pos[t0];
        segs_.push_back(u);
        lookups_ += nb;
      }
      AttnShape sh{nb, c_.n_head, c_.n_head_kv, c_.head_dim, 1.0f / std::sqrt((float)c_.head_dim)};
      runner_.plan(sh, segs_, n_threads_);
      runner_.run(q + t0 * qrow, out + t0 * qrow, n_threads_);
    }
    return Status::Ok();
  }

  double kept_fraction() const {
    return lookups_ ? (double)kept_ / ((double)lookups_ * (double)pack_.n_ctx()) : 0;
  }
  double mass_captured() const { return mass_n_ ? mass_sum_ / (double)mass_n_ : -1.0; }
  double centroid_fraction() const {
    return lookups_ ? (double)compared_ / ((double)lookups_ * (double)pack_.n_ctx()) : 0;
  }

 private:
  const Pack& pack_;
  KvCache& user_;
  const ModelConfig& c_;
  int n_threads_;
  Mode mode_;
  SelectParams sp_;
  Selector selector_;
  std::vector<HeadSelection> sel_;
  std::vector<RowRange> full_, obs_, user_range_;
  std::vector<AttnSegment> segs_;
  AttnRunner runner_;
  int64_t kept_ = 0, compared_ = 0, lookups_ = 0;
  KeySelector* alt_ = nullptr;
  bool measure_mass_ = false;
  int sinks_ = 0;
  std::vector<std::vector<int32_t>> sink_rows_;  // [n_layer * n_head_kv] rows of positions < sinks_
  std::vector<RowRange> merged_;

 public:
  void set_sinks(int n) {
    sinks_ = n;
    if (n <= 0) return;
    const int64_t nc = pack_.n_clustered();
    sink_rows_.assign((size_t)(c_.n_layer * c_.n_head_kv), {});
    for (int l = 0; l < c_.n_layer; l++)
      for (int h = 0; h < c_.n_head_kv; h++) {
        const int32_t* perm = pack_.perm(l, h);
        auto& rows = sink_rows_[(size_t)(l * c_.n_head_kv + h)];
        for (int64_t r = 0; r < nc; r++)
          if (perm[r] < n) rows.push_back((int32_t)r);
      }
  }

 private:
  // Attention sinks (the first tokens, which draw a large share of attention in every head) are
  // always read: union of their rows with each selection, kept sorted and disjoint.
  void add_sinks(int layer) {
    for (size_t i = 0; i < sel_.size(); i++) {
      const int h = (int)(i % (size_t)c_.n_head_kv);
      HeadSelection& hs = sel_[i];
      merged_ = hs.ranges;
      for (int32_t r : sink_rows_[(size_t)(layer * c_.n_head_kv + h)])
        merged_.push_back({r, r + 1});
      std::sort(merged_.begin(), merged_.end(),
                [](const RowRange& a, const RowRange& b) { return a.begin < b.begin; });
      hs.ranges.clear();
      hs.kept_keys = 0;
      for (const RowRange& r : merged_) {
        if (!hs.ranges.empty() && r.begin <= hs.ranges.back().end) {
          hs.ranges.back().end = std::max(hs.ranges.back().end, r.end);
        } else {
          hs.ranges.push_back(r);
        }
      }
      for (const RowRange& r : hs.ranges) hs.kept_keys += r.end - r.begin;
    }
  }
  double mass_sum_ = 0;
  int64_t mass_n_ = 0;
  std::vector<uint8_t> selmask_;
  std::vector<float> krow_, logit_;

  // True softmax over all fixed-context keys (clustered + observation window) for every query
  // row; adds the probability mass that falls on the rows the selection read. Evaluation only.
  void measure_mass(int layer, const float* q, int64_t n_tok) {
    const int64_t d = c_.head_dim, group = c_.n_head / c_.n_head_kv;
    const int64_t nc = pack_.n_clustered(), no = pack_.n_obs();
    const float scale = 1.0f / std::sqrt((float)d);
    krow_.resize((size_t)d);
    logit_.resize((size_t)(nc + no));
    for (int h = 0; h < c_.n_head_kv; h++) {
      selmask_.assign((size_t)nc, 0);
      for (const auto& r : sel_[(size_t)h].ranges)
        for (int32_t i = r.begin; i < r.end; i++) selmask_[(size_t)i] = 1;
      const KvHeadView kc = pack_.clustered_kv(layer, h), ko = pack_.obs_kv(layer, h);
      for (int64_t t = 0; t < n_tok; t++)
        for (int64_t g = 0; g < group; g++) {
          const float* qr = q + (t * c_.n_head + h * group + g) * d;
          float mx = -std::numeric_limits<float>::infinity();
          for (int64_t j = 0; j < nc + no; j++) {
            const KvHeadView& kv = j < nc ? kc : ko;
            const int64_t row = j < nc ? j : j - nc;
            double acc = 0;
            for (int64_t c = 0; c < d; c++) {
              const float kval = kv.type == DType::kF32
                                     ? ((const float*)kv.k)[row * kv.row_stride + c]
                                     : fp16_to_fp32(((const f16_t*)kv.k)[row * kv.row_stride + c]);
              acc += (double)qr[c] * kval;
            }
            logit_[(size_t)j] = (float)acc * scale;
            mx = std::max(mx, logit_[(size_t)j]);
          }
          double tot = 0, kept = 0;
          for (int64_t j = 0; j < nc + no; j++) {
            const double p = std::exp((double)logit_[(size_t)j] - mx);
            tot += p;
            if (j >= nc || selmask_[(size_t)j]) kept += p;
          }
          mass_sum_ += kept / tot;
          mass_n_++;
        }
    }
  }
};

struct AskSetup {
  std::unique_ptr<KvCache> user;
  std::unique_ptr<SqueezeAttention> attn;
  ForwardScratch scratch;
  double percentile = 0;
};

Result<AskSetup> make_setup(const Engine& e, const Pack& pack, int64_t n_user_max,
                            const AskParams& ap) {
  SQZ_RETURN_IF_ERROR(pack_check_model(pack, engine_fingerprint(e)));
  const ModelConfig& c = e.model().config();
  AskSetup s;
  SelectParams sp = ap.select;
  if (ap.budget > 0) {
    if (ap.budget > 1)
      return Error(Code::kInvalidArgument, "budget {} must be in (0, 1]", ap.budget);
    // Per-head top-k keeps the same fraction of every head's clustered keys that the
    // calibrated percentile keeps on average (the budget means the clustered fraction kept).
    sp = select_for_budget(pack, sp, ap.budget);
  }
  if (ap.keep_all) sp.threshold_override = -std::numeric_limits<double>::infinity();
  s.percentile = sp.percentile;
  const int64_t room = e.n_ctx() - pack.n_ctx();
  if (room <= 0)
    return Error(Code::kOutOfRange, "the pack's context ({} tokens) fills the model window ({})",
                 pack.n_ctx(), e.n_ctx());
  s.user = std::make_unique<KvCache>();
  s.user->init(c.n_layer, c.n_head_kv, c.head_dim, std::min(room, n_user_max), e.params().kv_type);
  s.attn = std::make_unique<SqueezeAttention>(pack, *s.user, c, e.params().n_threads,
                                              ap.dense ? Mode::kDense : Mode::kSqueezed, sp,
                                              ap.selector, ap.measure_mass);
  s.attn->set_sinks(ap.sink_tokens);
  e.model().init_scratch(s.scratch, e.params().n_batch, e.params().n_threads);
  return s;
}

void fill_stats(const AskSetup& s, const AskParams& ap, AskResult& r) {
  r.kept_fraction = ap.dense ? 1.0 : s.attn->kept_fraction();
  r.centroid_fraction = ap.dense ? 0.0 : s.attn->centroid_fraction();
  r.budget = r.kept_fraction + r.centroid_fraction;
  r.percentile = s.percentile;
  r.mass_captured = ap.dense ? 1.0 : s.attn->mass_captured();
}

}  // namespace

PromptLayout make_prompt_layout(const Engine& e, const std::string& context_text) {
  // Render the template around a marker and cut at it, so the layout follows whatever the
  // model's template does (system prompt injection, BOS text, headers).
  const std::string marker = "\x01SQZ_QUESTION\x01";
  const std::string full = e.render_chat({{"user", context_text + "\n\n" + marker}}, true);
  const size_t at = full.find(marker);
  PromptLayout l;
  l.prefix = full.substr(0, at);
  l.suffix = full.substr(at + marker.size());
  return l;
}

PackFingerprint engine_fingerprint(const Engine& e) {
  const ModelConfig& c = e.model().config();
  PackFingerprint fp;
  fp.arch = c.arch;
  fp.n_layer = c.n_layer;
  fp.n_head = c.n_head;
  fp.n_head_kv = c.n_head_kv;
  fp.head_dim = c.head_dim;
  fp.n_embd = c.n_embd;
  fp.n_vocab = c.n_vocab;
  fp.weights_hash = e.model().weights_hash();
  fp.tokenizer_hash = e.tokenizer_hash();
  return fp;
}

Result<ContextCapture> context_capture(const Engine& e, const std::string& context_text,
                                       const CompileParams& cp) {
  const PromptLayout lay = make_prompt_layout(e, context_text);
  std::vector<int32_t> toks = e.tokenizer().encode(lay.prefix, false, true);
  const int64_t n = (int64_t)toks.size();
  if (n >= e.n_ctx())
    return Error(Code::kOutOfRange,
                 "context is {} tokens; the model window is {} and must leave room for questions",
                 n, e.n_ctx());
  // The observation window's queries are the calibration data, so it cannot be empty.
  if (cp.obs_window < 1 || cp.obs_window >= n)
    return Error(Code::kInvalidArgument,
                 "obs-window {} must be in [1, {}) for a context of {} tokens", cp.obs_window, n,
                 n);
  const ModelConfig& c = e.model().config();
  ContextCapture cap;
  cap.n_layer = c.n_layer;
  cap.n_head = c.n_head;
  cap.n_head_kv = c.n_head_kv;
  cap.head_dim = c.head_dim;
  cap.n_ctx = n;
  cap.tokens = std::move(toks);
  cap.q_obs.assign((size_t)c.n_layer,
                   std::vector<float>((size_t)(cp.obs_window * c.n_head * c.head_dim)));
  return cap;
}

Result<CompileReport> compile_context(const Engine& e, const std::string& context_text,
                                      const CompileParams& cp, const std::string& out_path,
                                      ProgressFn progress) {
  if (e.gpu()) return gpu_compile_context(e, context_text, cp, out_path, progress);
  const ModelConfig& c = e.model().config();
  SQZ_ASSIGN_OR_RETURN(ContextCapture cap, context_capture(e, context_text, cp));
  const int64_t n = cap.n_ctx;
  const std::vector<int32_t>& toks = cap.tokens;
  const int nt = e.params().n_threads;
  CompileReport rep;
  rep.n_ctx = n;
  {
    KvCache cache;
    cache.init(c.n_layer, c.n_head_kv, c.head_dim, n, DType::kF32);
    CaptureAttention attn(cache, c, nt, n - cp.obs_window, cap);
    ForwardScratch s;
    e.model().init_scratch(s, e.params().n_batch, nt);
    std::vector<int32_t> pos((size_t)s.max_tokens);
    const double t0 = now_s();
    for (int64_t i = 0; i < n; i += s.max_tokens) {
      const int64_t b = std::min(s.max_tokens, n - i);
      for (int64_t j = 0; j < b; j++) pos[(size_t)j] = (int32_t)(i + j);
      SQZ_RETURN_IF_ERROR(
          e.model().forward(toks.data() + i, pos.data(), b, attn, s, nt, nullptr, 0));
      if (progress) progress(i + b, n);
    }
    rep.prefill_s = now_s() - t0;
    cap.k.resize((size_t)c.n_layer);
    cap.v.resize((size_t)c.n_layer);
    const size_t per_head = (size_t)(n * c.head_dim);
    for (int l = 0; l < c.n_layer; l++) {
      cap.k[(size_t)l].resize(per_head * c.n_head_kv);
      cap.v[(size_t)l].resize(per_head * c.n_head_kv);
      for (int h = 0; h < c.n_head_kv; h++)
        cache.read_f32(l, h, n, cap.k[(size_t)l].data() + h * per_head,
                       cap.v[(size_t)l].data() + h * per_head);
    }
  }
  SQZ_RETURN_IF_ERROR(pack_compile(cap, cp, engine_fingerprint(e), out_path, &rep.stats));
  return rep;
}

Result<std::vector<float>> ask_first_logits(const Engine& e, const Pack& pack,
                                            const std::vector<int32_t>& q_toks, const AskParams& ap,
                                            AskResult* stats) {
  if (e.gpu()) return gpu_ask_first_logits(e, pack, q_toks, ap, stats);
  SQZ_ASSIGN_OR_RETURN(AskSetup s, make_setup(e, pack, (int64_t)q_toks.size() + 1, ap));
  const int32_t nv = e.model().config().n_vocab;
  std::vector<float> logits((size_t)nv);
  std::vector<int32_t> pos((size_t)s.scratch.max_tokens);
  const int64_t n = (int64_t)q_toks.size();
  if (n == 0) return Error(Code::kInvalidArgument, "empty question");
  for (int64_t i = 0; i < n; i += s.scratch.max_tokens) {
    const int64_t b = std::min(s.scratch.max_tokens, n - i);
    for (int64_t j = 0; j < b; j++) pos[(size_t)j] = (int32_t)(pack.n_ctx() + i + j);
    const bool last = i + b == n;
    SQZ_RETURN_IF_ERROR(e.model().forward(q_toks.data() + i, pos.data(), b, *s.attn, s.scratch,
                                          e.params().n_threads, last ? logits.data() : nullptr,
                                          last ? 1 : 0));
  }
  if (stats) fill_stats(s, ap, *stats);
  return logits;
}

std::vector<int32_t> question_tokens(const Engine& e, const std::string& question) {
  const PromptLayout lay = make_prompt_layout(e, "");
  return e.tokenizer().encode(question + lay.suffix, false, true);
}

Result<std::vector<float>> ask_score_tokens(const Engine& e, const Pack& pack,
                                            const std::vector<int32_t>& q_toks,
                                            const std::vector<int32_t>& a_toks, const AskParams& ap,
                                            AskResult* stats) {
  if (q_toks.empty()) return Error(Code::kInvalidArgument, "empty question");
  if (e.gpu()) return Error(Code::kUnsupported, "teacher-forced scoring runs on the CPU only");
  const int64_t na = (int64_t)a_toks.size();
  SQZ_ASSIGN_OR_RETURN(AskSetup s, make_setup(e, pack, (int64_t)q_toks.size() + na + 1, ap));
  const int32_t nv = e.model().config().n_vocab;
  std::vector<float> logits((size_t)(std::max<int64_t>(1, na) * nv));
  std::vector<int32_t> pos((size_t)s.scratch.max_tokens);
  const int64_t n = (int64_t)q_toks.size();
  for (int64_t i = 0; i < n; i += s.scratch.max_tokens) {
    const int64_t b = std::min(s.scratch.max_tokens, n - i);
    for (int64_t j = 0; j < b; j++) pos[(size_t)j] = (int32_t)(pack.n_ctx() + i + j);
    const bool last = i + b == n;
    SQZ_RETURN_IF_ERROR(e.model().forward(q_toks.data() + i, pos.data(), b, *s.attn, s.scratch,
                                          e.params().n_threads, last ? logits.data() : nullptr,
                                          last ? 1 : 0));
  }
  // Row i (i >= 1) comes from feeding answer token i-1, one decode step at a time, exactly as
  // generation would.
  for (int64_t i = 1; i < na; i++) {
    int32_t p = (int32_t)(pack.n_ctx() + n + i - 1);
    SQZ_RETURN_IF_ERROR(e.model().forward(&a_toks[(size_t)(i - 1)], &p, 1, *s.attn, s.scratch,
                                          e.params().n_threads, logits.data() + i * nv, 1));
  }
  if (na == 0) logits.clear();
  if (stats) fill_stats(s, ap, *stats);
  return logits;
}

Result<AskResult> ask(const Engine& e, const Pack& pack, const std::string& question,
                      const AskParams& ap) {
  if (e.gpu()) return gpu_ask(e, pack, question, ap);
  const std::vector<int32_t> q = question_tokens(e, question);
  if (q.empty()) return Error(Code::kInvalidArgument, "empty question");
  SQZ_ASSIGN_OR_RETURN(AskSetup s,
                       make_setup(e, pack, (int64_t)q.size() + ap.gen.max_tokens + 1, ap));
  AskResult r;
  SQZ_ASSIGN_OR_RETURN(
      r.gen, run_generation(e.model(), e.tokenizer(), *s.attn, s.scratch, q, pack.n_ctx(),
                            pack.n_ctx() + s.user->capacity(), ap.gen, e.params().n_threads));
  fill_stats(s, ap, r);
  return r;
}

}  // namespace sqz
