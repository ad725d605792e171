// Synthetic fixed contexts for the squeezed-attention tests: keys drawn around a few "topic"
// directions per (layer, KV head) plus a shared offset (real keys have a large common
// component), values random, observation-window queries aligned with a random topic each.
#pragma once

#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "squeeze/squeeze.h"
#include "util/test_util.h"

namespace sqz::test {

struct SynthSpec {
  int n_layer = 2;
  int n_head = 4;
  int n_head_kv = 2;
  int head_dim = 64;
  int64_t n_ctx = 501;
  int n_obs = 37;
  int n_topics = 12;    // key clusters planted per head
  float noise = 0.5f;   // per-dimension key noise (topic vectors are N(0, 1) per dimension)
  float bias = 0.7f;    // per-dimension scale of the offset shared by a head's keys
  float q_gain = 0.6f;  // query = q_gain * topic + N(0, q_noise)
  float q_noise = 0.5f;
  int n_vocab = 1000;
};

struct SynthContext {
  ContextCapture cap;
  // [n_layer * n_head_kv] of [n_topics, head_dim] planted topic directions
  std::vector<std::vector<float>> topics;
  // [n_layer * n_head_kv] of [n_ctx] topic of each key
  std::vector<std::vector<int>> key_topic;
};

inline SynthContext make_synth(const SynthSpec& s, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  SynthContext sc;
  ContextCapture& c = sc.cap;
  c.n_layer = s.n_layer;
  c.n_head = s.n_head;
  c.n_head_kv = s.n_head_kv;
  c.head_dim = s.head_dim;
  c.n_ctx = s.n_ctx;
  c.tokens.resize((size_t)s.n_ctx);
  for (auto& t : c.tokens) t = (int32_t)(rng() % (uint64_t)s.n_vocab);
  const int64_t d = s.head_dim;
  const int group = s.n_head / s.n_head_kv;
  c.k.resize((size_t)s.n_layer);
  c.v.resize((size_t)s.n_layer);
  c.q_obs.resize((size_t)s.n_layer);
  for (int l = 0; l < s.n_layer; l++) {
    c.k[(size_t)l].resize((size_t)(s.n_head_kv * s.n_ctx * d));
    c.v[(size_t)l].resize((size_t)(s.n_head_kv * s.n_ctx * d));
    c.q_obs[(size_t)l].resize((size_t)(s.n_obs * s.n_head * d));
    for (int h = 0; h < s.n_head_kv; h++) {
      std::vector<float> topic((size_t)(s.n_topics * d)), bias((size_t)d);
      for (auto& x : topic) x = nd(rng);
      for (auto& x : bias) x = s.bias * nd(rng);
      std::vector<int> kt((size_t)s.n_ctx);
      // Topics come in runs (documents are locally coherent), with random lengths.
      int cur = (int)(rng() % (uint64_t)s.n_topics);
      for (int64_t i = 0; i < s.n_ctx; i++) {
        if (rng() % 16 == 0) cur = (int)(rng() % (uint64_t)s.n_topics);
        kt[(size_t)i] = cur;
        float* k = c.k[(size_t)l].data() + ((int64_t)h * s.n_ctx + i) * d;
        float* v = c.v[(size_t)l].data() + ((int64_t)h * s.n_ctx + i) * d;
        for (int64_t t = 0; t < d; t++) {
          k[t] = bias[(size_t)t] + topic[(size_t)(cur * d + t)] + s.noise * nd(rng);
          v[t] = nd(rng);
        }
      }
      for (int o = 0; o < s.n_obs; o++) {
        const int m = (int)(rng() % (uint64_t)s.n_topics);
        for (int g = 0; g < group; g++) {
          float* q = c.q_obs[(size_t)l].data() + ((int64_t)o * s.n_head + h * group + g) * d;
          for (int64_t t = 0; t < d; t++)
            q[t] = s.q_gain * topic[(size_t)(m * d + t)] + s.q_noise * nd(rng);
        }
      }
      sc.topics.push_back(std::move(topic));
      sc.key_topic.push_back(std::move(kt));
    }
  }
  return sc;
}

// User-turn queries [n_q, n_head, head_dim] for layer l: each token aligned with one topic.
inline std::vector<float> make_user_queries(const SynthContext& sc, const SynthSpec& s, int l,
                                            int64_t n_q, std::mt19937_64& rng,
                                            int fixed_topic = -1) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t d = s.head_dim;
  const int group = s.n_head / s.n_head_kv;
  std::vector<float> q((size_t)(n_q * s.n_head * d));
  for (int64_t t = 0; t < n_q; t++)
    for (int h = 0; h < s.n_head_kv; h++) {
      const std::vector<float>& topic = sc.topics[(size_t)(l * s.n_head_kv + h)];
      const int m = fixed_topic >= 0 ? fixed_topic : (int)(rng() % (uint64_t)s.n_topics);
      for (int g = 0; g < group; g++) {
        float* o = q.data() + (t * s.n_head + h * group + g) * d;
        for (int64_t x = 0; x < d; x++)
          o[x] = s.q_gain * topic[(size_t)(m * d + x)] + s.q_noise * nd(rng);
      }
    }
  return q;
}

inline PackFingerprint synth_fingerprint(const SynthSpec& s) {
  PackFingerprint fp;
  fp.arch = "llama";
  fp.n_layer = s.n_layer;
  fp.n_head = s.n_head;
  fp.n_head_kv = s.n_head_kv;
  fp.head_dim = s.head_dim;
  fp.n_embd = s.n_head * s.head_dim;
  fp.n_vocab = s.n_vocab;
  fp.weights_hash = 0x0123456789abcdefull;
  fp.tokenizer_hash = 0xfedcba9876543210ull;
  return fp;
}

// A fresh file path in the system temp directory, unique per process and call.
inline std::string temp_pack_path(const std::string& tag) {
  static int counter = 0;
  return (std::filesystem::temp_directory_path() /
          ("sqz_test_" + tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) +
           ".sqzpack"))
      .string();
}

}  // namespace sqz::test
