// Context pack: checksum, round trip, validation of corrupted / truncated / foreign files,
// capture validation, model fingerprint checks, and (disabled by default) compile timing.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "core/fp16.h"
#include "squeeze/pack.h"
#include "squeeze/pack_stream.h"
#include "squeeze/squeeze_external.h"
#include "squeeze/xxh64.h"
#include "test_squeeze_synth.h"
#include "util/test_util.h"

namespace sqz {
namespace {

namespace fs = std::filesystem;

std::vector<uint8_t> read_all(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}
void write_all(const std::string& p, const std::vector<uint8_t>& b) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write((const char*)b.data(), (std::streamsize)b.size());
}

TEST(SqueezePack, Xxh64KnownVectors) {
  // Values computed with the system's reference libxxhash 0.8.1 (XXH64), independent of ours.
  auto pat = [](size_t n) {
    std::vector<uint8_t> v(n);
    for (size_t i = 0; i < n; i++) v[i] = (uint8_t)(i * 7 + 3);
    return v;
  };
  EXPECT_EQ(xxh64("", 0), 0xef46db3751d8e999ull);
  EXPECT_EQ(xxh64("a", 1), 0xd24ec4f1a98c6e5bull);
  EXPECT_EQ(xxh64("abc", 3), 0x44bc2cf5ad770999ull);
  const struct {
    size_t n;
    uint64_t h0, hs;
  } cases[] = {{3, 0x31d2363f52e564c9ull, 0x78efd77575e26575ull},
               {4, 0x9bb64b7d66ee9fdaull, 0x6f0a6c97d68bf353ull},
               {8, 0xdab99d95c6f90092ull, 0xa2f1e28437a78a1bull},
               {31, 0xa2aa5f33cc4a6119ull, 0x755437271d1d0a84ull},
               {32, 0x23c3c17ef790fd97ull, 0xbf624b932c090428ull},
               {33, 0x50a7cfc7ba588784ull, 0x7aceaf1e9d34ea35ull},
               {100, 0xa61f8d4c170fe531ull, 0xf6d8f65c625abb4full},
               {1000, 0x5f235fa033f1a3fbull, 0x442acd0a822e86f6ull}};
  for (const auto& c : cases) {
    const std::vector<uint8_t> v = pat(c.n);
    EXPECT_EQ(xxh64(v.data(), v.size()), c.h0) << c.n;
    EXPECT_EQ(xxh64(v.data(), v.size(), 0x9E3779B97F4A7C15ull), c.hs) << c.n;
    // Streaming in uneven pieces gives the same digest.
    for (size_t step : {1, 5, 31, 33}) {
      Xxh64 h(0x9E3779B97F4A7C15ull);
      for (size_t i = 0; i < v.size(); i += step)
        h.update(v.data() + i, std::min(step, v.size() - i));
      EXPECT_EQ(h.digest(), c.hs) << c.n << " step " << step;
    }
  }
}

struct Compiled {
  test::SynthSpec spec;
  test::SynthContext synth;
  SqueezedContext sc;
  std::string path;
};

Compiled compile_small(DType kv, double coarse, int64_t n_ctx = 113, int n_obs = 17) {
  Compiled c;
  c.spec.n_layer = 2;
  c.spec.n_head = 6;
  c.spec.n_head_kv = 2;
  c.spec.n_ctx = n_ctx;
  c.spec.n_obs = n_obs;
  c.synth = test::make_synth(c.spec, test::test_seed() + 100);
  CompileParams p;
  p.obs_window = n_obs;
  p.clusters = 0.1;
  p.coarse = coarse;
  p.kv_type = kv;
  p.seed = 3;
  p.estimator = Estimator::kMean;  // pk.calibration() (the default's) is compared with sc.calib
  auto r = squeeze_context(c.synth.cap, p);
  EXPECT_TRUE(r.ok()) << r.status().message();
  c.sc = std::move(r.value());
  c.path = test::temp_pack_path("pack");
  CompileStats st;
  const Status s = pack_write(c.sc, c.synth.cap, test::synth_fingerprint(c.spec), c.path, &st);
  EXPECT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(st.pack_bytes, fs::file_size(c.path));
  return c;
}

float stored(const void* base, DType t, int64_t i) {
  return t == DType::kF32 ? ((const float*)base)[i] : fp16_to_fp32(((const f16_t*)base)[i]);
}
float expected_store(float x, DType t) {
  return t == DType::kF32 ? x : fp16_to_fp32(fp32_to_fp16(x));
}

TEST(SqueezePack, RoundTripEveryArray) {
  for (DType kv : {DType::kF16, DType::kF32}) {
    for (double coarse : {0.03, 0.0}) {
      Compiled c = compile_small(kv, coarse, 501, 37);
      auto r = Pack::open(c.path);
      ASSERT_TRUE(r.ok()) << r.status().message();
      const Pack& pk = *r.value();
      const SqueezedContext& sc = c.sc;
      const ContextCapture& cap = c.synth.cap;
      const int64_t d = sc.head_dim;
      EXPECT_EQ(pk.n_ctx(), cap.n_ctx);
      EXPECT_EQ(pk.n_obs(), sc.n_obs);
      EXPECT_EQ(pk.n_clustered(), cap.n_ctx - sc.n_obs);
      EXPECT_EQ(pk.n_fine(), sc.n_fine);
      EXPECT_EQ(pk.n_coarse(), sc.n_coarse);
      EXPECT_EQ(pk.n_coarse() == 0, coarse == 0.0);
      EXPECT_EQ(pk.kv_type(), kv);
      EXPECT_EQ(std::vector<int32_t>(pk.tokens().begin(), pk.tokens().end()), cap.tokens);
      const PackFingerprint fp = test::synth_fingerprint(c.spec);
      EXPECT_TRUE(pack_check_model(pk, fp).ok());
      EXPECT_EQ(pk.fingerprint().arch, fp.arch);
      EXPECT_EQ(pk.fingerprint().weights_hash, fp.weights_hash);
      EXPECT_EQ(pk.fingerprint().tokenizer_hash, fp.tokenizer_hash);
      EXPECT_EQ(pk.compile_params().seed, 3u);
      EXPECT_EQ(pk.compile_params().clusters, 0.1);
      EXPECT_EQ(pk.compile_params().kv_type, kv);
      EXPECT_EQ(pk.stats().fine_objective, sc.stats.fine_objective);  // JSON keeps 17 digits
      EXPECT_EQ(pk.stats().fine_iters_mean, sc.stats.fine_iters_mean);
      EXPECT_EQ(pk.calibration().percentiles, sc.calib.percentiles);
      EXPECT_EQ(pk.calibration().fine_threshold, sc.calib.fine_threshold);
      EXPECT_EQ(pk.calibration().coarse_threshold, sc.calib.coarse_threshold);
      EXPECT_EQ(pk.calibration().kept_fine, sc.calib.kept_fine);
      EXPECT_EQ(pk.calibration().kept_hier, sc.calib.kept_hier);
      for (int l = 0; l < sc.n_layer; l++)
        for (int h = 0; h < sc.n_head_kv; h++) {
          const HeadClusters& hc = sc.heads[(size_t)(l * sc.n_head_kv + h)];
          const int64_t n = sc.n_clustered;
          EXPECT_EQ(std::vector<int32_t>(pk.perm(l, h), pk.perm(l, h) + n), hc.perm);
          EXPECT_EQ(
              std::vector<int32_t>(pk.fine_offsets(l, h), pk.fine_offsets(l, h) + sc.n_fine + 1),
              hc.fine_offsets);
          EXPECT_EQ(
              std::vector<float>(pk.fine_centroids(l, h), pk.fine_centroids(l, h) + sc.n_fine * d),
              hc.fine_centroids);
          EXPECT_EQ(std::vector<float>(pk.fine_sizes(l, h), pk.fine_sizes(l, h) + sc.n_fine),
                    hc.fine_sizes);
          EXPECT_EQ(std::vector<float>(pk.coarse_centroids(l, h),
                                       pk.coarse_centroids(l, h) + sc.n_coarse * d),
                    hc.coarse_centroids);
          EXPECT_EQ(std::vector<int32_t>(pk.coarse_ranges(l, h),
                                         pk.coarse_ranges(l, h) + sc.n_coarse + 1),
                    hc.coarse_ranges);
          // K/V: clustered rows are the captured rows at perm, obs rows the window in order.
          const KvHeadView kvc = pk.clustered_kv(l, h), kvo = pk.obs_kv(l, h);
          EXPECT_EQ(kvc.type, kv);
          EXPECT_EQ(kvc.row_stride, d);
          const float* K = cap.k[(size_t)l].data() + (int64_t)h * cap.n_ctx * d;
          const float* V = cap.v[(size_t)l].data() + (int64_t)h * cap.n_ctx * d;
          for (int64_t r2 = 0; r2 < n; r2++)
            for (int64_t t = 0; t < d; t++) {
              const int64_t src = (int64_t)hc.perm[(size_t)r2] * d + t;
              ASSERT_EQ(stored(kvc.k, kv, r2 * d + t), expected_store(K[src], kv));
              ASSERT_EQ(stored(kvc.v, kv, r2 * d + t), expected_store(V[src], kv));
            }
          for (int64_t r2 = 0; r2 < sc.n_obs; r2++)
            for (int64_t t = 0; t < d; t++) {
              const int64_t src = (n + r2) * d + t;
              ASSERT_EQ(stored(kvo.k, kv, r2 * d + t), expected_store(K[src], kv));
              ASSERT_EQ(stored(kvo.v, kv, r2 * d + t), expected_store(V[src], kv));
            }
          // Independent checks of what compile stored: perm is a permutation, every cluster's
          // centroid is the mean of its raw keys, coarse ranges tile the fine clusters.
          std::vector<int> seen((size_t)n, 0);
          for (int32_t p : hc.perm) seen[(size_t)p]++;
          EXPECT_EQ(std::count(seen.begin(), seen.end(), 1), n);
          for (int j = 0; j < sc.n_fine; j++)
            for (int64_t t = 0; t < d; t++) {
              double s = 0;
              for (int32_t r2 = hc.fine_offsets[(size_t)j]; r2 < hc.fine_offsets[(size_t)j + 1];
                   r2++)
                s += K[(int64_t)hc.perm[(size_t)r2] * d + t];
              s /= hc.fine_sizes[(size_t)j];
              ASSERT_NEAR(hc.fine_centroids[(size_t)(j * d + t)], s, 1e-5 * (1 + std::fabs(s)));
            }
          for (int cc = 0; cc < sc.n_coarse; cc++) {
            const int32_t r0 = hc.fine_offsets[(size_t)hc.coarse_ranges[(size_t)cc]];
            const int32_t r1 = hc.fine_offsets[(size_t)hc.coarse_ranges[(size_t)cc + 1]];
            for (int64_t t = 0; t < d; t++) {
              double s = 0;
              for (int32_t r2 = r0; r2 < r1; r2++) s += K[(int64_t)hc.perm[(size_t)r2] * d + t];
              s /= (double)(r1 - r0);
              ASSERT_NEAR(hc.coarse_centroids[(size_t)(cc * d + t)], s, 1e-5 * (1 + std::fabs(s)));
            }
          }
        }
      fs::remove(c.path);
    }
  }
}

std::vector<std::pair<uint32_t, std::pair<uint64_t, uint64_t>>> section_table(
    const std::vector<uint8_t>& b) {
  uint32_t n;
  std::memcpy(&n, &b[12], 4);
  std::vector<std::pair<uint32_t, std::pair<uint64_t, uint64_t>>> t;
  for (uint32_t i = 0; i < n; i++) {
    uint32_t id;
    uint64_t off, size;
    std::memcpy(&id, &b[64 + 32 * i], 4);
    std::memcpy(&off, &b[64 + 32 * i + 8], 8);
    std::memcpy(&size, &b[64 + 32 * i + 16], 8);
    t.push_back({id, {off, size}});
  }
  return t;
}

TEST(SqueezePack, CorruptionNamesTheSection) {
  Compiled c = compile_small(DType::kF16, 0.03);
  const std::vector<uint8_t> good = read_all(c.path);
  const std::string bad = c.path + ".bad";
  auto expect_error = [&](const std::vector<uint8_t>& b, Code code, const std::string& needle) {
    write_all(bad, b);
    auto r = Pack::open(bad);
    ASSERT_FALSE(r.ok()) << "accepted: " << needle;
    EXPECT_EQ(r.status().code(), code) << r.status().message();
    EXPECT_NE(r.status().message().find(needle), std::string::npos)
        << "message '" << r.status().message() << "' should name " << needle;
  };
  const auto table = section_table(good);
  ASSERT_EQ(table.size(), (size_t)kPackSectionCount);
  std::mt19937_64 rng(test::test_seed());
  for (const auto& [id, range] : table) {
    const auto [off, size] = range;
    if (size == 0) continue;
    for (uint64_t at : {off, off + size / 2, off + size - 1, off + rng() % size}) {
      std::vector<uint8_t> b = good;
      b[at] ^= (uint8_t)(1u << (rng() % 8));
      expect_error(b, Code::kFormat, std::string("'") + pack_section_name(id) + "'");
    }
  }
  // Bytes of the header (all) and of the section table (every 3rd), except the version field,
  // whose change means "another format" and is reported as such.
  for (size_t at = 0; at < 64 + 32 * table.size(); at += at < 64 ? 1 : 3) {
    if (at >= 8 && at < 12) continue;
    std::vector<uint8_t> b = good;
    b[at] ^= 0x10;
    write_all(bad, b);
    auto r = Pack::open(bad);
    ASSERT_FALSE(r.ok()) << "header byte " << at;
    EXPECT_EQ(r.status().code(), Code::kFormat) << at;
  }
  // Padding between sections.
  uint64_t prev_end = 64 + 32 * table.size();
  int pads = 0;
  auto sorted = table;
  std::sort(sorted.begin(), sorted.end(), [](auto& a, auto& b) { return a.second < b.second; });
  for (const auto& [id, range] : sorted) {
    if (range.first > prev_end) {
      std::vector<uint8_t> b = good;
      b[prev_end] ^= 1;
      expect_error(b, Code::kFormat, "padding");
      pads++;
    }
    prev_end = std::max(prev_end, range.first + range.second);
  }
  EXPECT_GT(pads, 0);
  fs::remove(bad);
  fs::remove(c.path);
}

TEST(SqueezePack, TruncationMagicVersion) {
  Compiled c = compile_small(DType::kF16, 0.03);
  const std::vector<uint8_t> good = read_all(c.path);
  const std::string bad = c.path + ".bad";
  for (size_t n : {(size_t)0, (size_t)10, (size_t)63, (size_t)64, (size_t)200, good.size() / 2,
                   good.size() - 1}) {
    write_all(bad, std::vector<uint8_t>(good.begin(), good.begin() + (ptrdiff_t)n));
    auto r = Pack::open(bad);
    ASSERT_FALSE(r.ok()) << n;
    EXPECT_EQ(r.status().code(), Code::kFormat) << n << ": " << r.status().message();
  }
  std::vector<uint8_t> b = good;
  b.push_back(0);
  write_all(bad, b);
  EXPECT_EQ(Pack::open(bad).status().code(), Code::kFormat);

  b = good;
  b[0] = 'X';
  write_all(bad, b);
  auto r = Pack::open(bad);
  EXPECT_EQ(r.status().code(), Code::kFormat);
  EXPECT_NE(r.status().message().find("magic"), std::string::npos);

  // Another format version (older or newer) is a mismatch naming both versions, not a
  // corruption.
  for (uint32_t v : {kPackVersion - 1, kPackVersion + 1}) {
    b = good;
    std::memcpy(&b[8], &v, 4);
    write_all(bad, b);
    r = Pack::open(bad);
    EXPECT_EQ(r.status().code(), Code::kMismatch);
    const std::string& msg = r.status().message();
    EXPECT_NE(msg.find(fmt::format("version {}", v)), std::string::npos) << msg;
    EXPECT_NE(msg.find(fmt::format("reads version {}", kPackVersion)), std::string::npos) << msg;
    EXPECT_NE(msg.find(v < kPackVersion ? "older" : "newer"), std::string::npos) << msg;
  }

  EXPECT_EQ(Pack::open(c.path + ".does-not-exist").status().code(), Code::kIo);
  fs::remove(bad);
  fs::remove(c.path);
}

TEST(SqueezePack, CraftedContentsRejected) {
  // Valid checksums over invalid contents: the reader must not trust them.
  Compiled c = compile_small(DType::kF16, 0.03);
  const PackFingerprint fp = test::synth_fingerprint(c.spec);
  auto try_pack = [&](SqueezedContext sc, const std::string& needle) {
    const std::string p = c.path + ".crafted";
    ASSERT_TRUE(pack_write(sc, c.synth.cap, fp, p).ok());
    auto r = Pack::open(p);
    ASSERT_FALSE(r.ok()) << needle;
    EXPECT_EQ(r.status().code(), Code::kFormat);
    EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().message();
    fs::remove(p);
  };
  SqueezedContext sc = c.sc;
  sc.heads[1].perm[3] = sc.heads[1].perm[4];
  try_pack(sc, "'perm'");
  sc = c.sc;
  sc.heads[0].fine_offsets.back() += 1;
  try_pack(sc, "'fine_offsets'");
  sc = c.sc;
  sc.heads[0].fine_sizes[0] += 1;
  try_pack(sc, "'fine_sizes'");
  sc = c.sc;
  sc.heads[0].coarse_ranges.back() -= 1;
  try_pack(sc, "'coarse_ranges'");
  sc = c.sc;
  sc.heads[0].fine_centroids[5] = std::numeric_limits<float>::quiet_NaN();
  try_pack(sc, "'fine_centroids'");
  sc = c.sc;
  std::swap(sc.calib.fine_threshold[3], sc.calib.fine_threshold[60]);
  try_pack(sc, "'calib'");
  fs::remove(c.path);
}

TEST(SqueezePack, FingerprintMismatchNamesField) {
  Compiled c = compile_small(DType::kF16, 0.03);
  auto r = Pack::open(c.path);
  ASSERT_TRUE(r.ok());
  const PackFingerprint good = test::synth_fingerprint(c.spec);
  EXPECT_TRUE(pack_check_model(*r.value(), good).ok());
  const std::vector<std::pair<std::string, std::function<void(PackFingerprint&)>>> edits = {
      {"arch", [](PackFingerprint& f) { f.arch = "qwen2"; }},
      {"n_layer", [](PackFingerprint& f) { f.n_layer++; }},
      {"n_head", [](PackFingerprint& f) { f.n_head++; }},
      {"n_head_kv", [](PackFingerprint& f) { f.n_head_kv++; }},
      {"head_dim", [](PackFingerprint& f) { f.head_dim++; }},
      {"n_embd", [](PackFingerprint& f) { f.n_embd++; }},
      {"n_vocab", [](PackFingerprint& f) { f.n_vocab++; }},
      {"weights_hash", [](PackFingerprint& f) { f.weights_hash ^= 1; }},
      {"tokenizer_hash", [](PackFingerprint& f) { f.tokenizer_hash ^= 1; }},
  };
  for (const auto& [field, edit] : edits) {
    PackFingerprint f = good;
    edit(f);
    const Status s = pack_check_model(*r.value(), f);
    EXPECT_EQ(s.code(), Code::kMismatch) << field;
    EXPECT_NE(s.message().find(field), std::string::npos) << s.message();
  }
  fs::remove(c.path);
}

// Section table of a pack file: id -> (offset, size).
std::map<uint32_t, std::pair<uint64_t, uint64_t>> section_map(const std::vector<uint8_t>& b) {
  std::map<uint32_t, std::pair<uint64_t, uint64_t>> m;
  uint32_t n;
  std::memcpy(&n, b.data() + 12, 4);
  for (uint32_t i = 0; i < n; i++) {
    const uint8_t* e = b.data() + 64 + 32 * i;
    uint32_t id;
    uint64_t off, size;
    std::memcpy(&id, e, 4);
    std::memcpy(&off, e + 8, 8);
    std::memcpy(&size, e + 16, 8);
    m[id] = {off, size};
  }
  return m;
}

// K/V rows of every head in the pack's storage type: the clustered rows in perm order
// (clustered = true) or the observation window's.
std::vector<uint8_t> kv_rows(const SqueezedContext& sc, const std::vector<std::vector<float>>& src,
                             bool clustered, int64_t job) {
  const int64_t d = sc.head_dim, n = clustered ? sc.n_clustered : sc.n_obs;
  const size_t esz = sc.params.kv_type == DType::kF32 ? 4 : 2;
  const int l = (int)(job / sc.n_head_kv), h = (int)(job % sc.n_head_kv);
  const float* base = src[(size_t)l].data() + (int64_t)h * sc.n_ctx * d;
  std::vector<uint8_t> out((size_t)(n * d) * esz);
  for (int64_t r = 0; r < n; r++) {
    const float* x =
        base + (clustered ? sc.heads[(size_t)job].perm[(size_t)r] : sc.n_clustered + r) * d;
    for (int64_t t = 0; t < d; t++) {
      if (esz == 4)
        std::memcpy(out.data() + (size_t)(r * d + t) * 4, x + t, 4);
      else
        ((f16_t*)out.data())[r * d + t] = fp32_to_fp16(x[t]);
    }
  }
  return out;
}

// The streaming writer (GPU compile) writes the same sections as pack_write: same sizes, same
// bytes; only the file order differs (meta last). One case spans several 64 MiB staging blocks.
TEST(SqueezePack, StreamWriterMatchesPackWrite) {
  struct Case {
    DType kv;
    double coarse;
    int64_t n_ctx;
    int n_obs;
    double clusters;
  };
  for (const Case& cs :
       {Case{DType::kF16, 0.03, 501, 37, 0.1}, Case{DType::kF32, 0.0, 333, 20, 0.1},
        Case{DType::kF16, 16, 140000, 64, 128}}) {
    test::SynthSpec spec;
    spec.n_layer = 2;
    spec.n_head = 4;
    spec.n_head_kv = 2;
    spec.n_ctx = cs.n_ctx;
    spec.n_obs = cs.n_obs;
    const test::SynthContext synth = test::make_synth(spec, test::test_seed() + 7);
    CompileParams p;
    p.obs_window = cs.n_obs;
    p.clusters = cs.clusters;
    p.coarse = cs.coarse;
    p.kv_type = cs.kv;
    p.n_threads = 2;
    // Fixed assignments (the large case would spend seconds in K-means): row i -> i mod k_f.
    auto fixed = [&](int, int, int k_f, int k_c, ExternalAssign& a) -> Status {
      a.fine_assign.resize((size_t)(cs.n_ctx - cs.n_obs));
      for (size_t i = 0; i < a.fine_assign.size(); i++) a.fine_assign[i] = (int32_t)(i % k_f);
      a.coarse_of.assign(k_c > 0 ? (size_t)k_f : 0, 0);
      for (int j = 0; j < k_f && k_c > 0; j++) a.coarse_of[(size_t)j] = j % k_c;
      return Status::Ok();
    };
    auto r = squeeze_context_external(synth.cap, p, fixed);
    ASSERT_TRUE(r.ok()) << r.status().message();
    const SqueezedContext& sc = *r;
    const PackFingerprint fp = test::synth_fingerprint(spec);
    const std::string a = test::temp_pack_path("ref"), b = test::temp_pack_path("stream");
    ASSERT_TRUE(pack_write(sc, synth.cap, fp, a).ok());

    auto w = PackStreamWriter::create(b);
    ASSERT_TRUE(w.ok()) << w.status().message();
    const int64_t jobs = (int64_t)sc.n_layer * sc.n_head_kv;
    ASSERT_TRUE((*w)->begin(PackSection::kTokens).ok());
    ASSERT_TRUE((*w)->append(synth.cap.tokens.data(), synth.cap.tokens.size() * 4).ok());
    ASSERT_TRUE((*w)->end().ok());
    std::vector<uint8_t> k_obs, v_obs;
    for (int which = 0; which < 2; which++) {
      const auto& src = which ? synth.cap.v : synth.cap.k;
      ASSERT_TRUE((*w)->begin(which ? PackSection::kVClustered : PackSection::kKClustered).ok());
      for (int64_t job = 0; job < jobs; job++) {
        const std::vector<uint8_t> rows = kv_rows(sc, src, true, job);
        // Uneven pieces, so appends straddle the staging blocks at odd offsets.
        for (size_t o = 0; o < rows.size();) {
          const size_t take = std::min<size_t>(rows.size() - o, 3 * 1000 * 1000 + 7);
          ASSERT_TRUE((*w)->append(rows.data() + o, take).ok());
          o += take;
        }
        const std::vector<uint8_t> obs = kv_rows(sc, src, false, job);
        (which ? v_obs : k_obs).insert((which ? v_obs : k_obs).end(), obs.begin(), obs.end());
      }
      ASSERT_TRUE((*w)->end().ok());
    }
    const Status fs_ = (*w)->finish(sc, fp, k_obs.data(), v_obs.data());
    ASSERT_TRUE(fs_.ok()) << fs_.message();
    std::printf("[pack] stream writer: %llu bytes, O_DIRECT %s\n",
                (unsigned long long)(*w)->bytes(), (*w)->direct_io() ? "yes" : "no");
    EXPECT_EQ((*w)->bytes(), fs::file_size(b));
    EXPECT_FALSE(fs::exists(b + ".tmp." + std::to_string(::getpid())));

    auto pb = Pack::open(b);
    ASSERT_TRUE(pb.ok()) << pb.status().message();
    const std::vector<uint8_t> fa = read_all(a), fb = read_all(b);
    const auto ta = section_map(fa), tb = section_map(fb);
    ASSERT_EQ(ta.size(), (size_t)kPackSectionCount);
    ASSERT_EQ(tb.size(), (size_t)kPackSectionCount);
    uint64_t last = 0;
    for (const auto& [id, e] : ta) {
      const auto& f = tb.at(id);
      ASSERT_EQ(e.second, f.second) << pack_section_name(id);
      EXPECT_EQ(0, std::memcmp(fa.data() + e.first, fb.data() + f.first, e.second))
          << pack_section_name(id);
      last = std::max(last, f.first);
    }
    EXPECT_EQ(tb.at((uint32_t)PackSection::kMeta).first, last) << "meta is the last section";
    fs::remove(a);
    fs::remove(b);
  }
}

TEST(SqueezePack, StreamWriterMisuseIsAnError) {
  // Section calls out of order are internal errors, not a corrupt pack; nothing is left behind.
  const std::string b = test::temp_pack_path("misuse");
  {
    auto w = PackStreamWriter::create(b);
    ASSERT_TRUE(w.ok()) << w.status().message();
    const uint32_t x = 7;
    EXPECT_EQ((*w)->end().code(), Code::kInternal);          // no open section
    EXPECT_EQ((*w)->append(&x, 4).code(), Code::kInternal);  // write outside a section
    ASSERT_TRUE((*w)->begin(PackSection::kTokens).ok());
    EXPECT_EQ((*w)->begin(PackSection::kKClustered).code(), Code::kInternal);  // still open
    ASSERT_TRUE((*w)->append(&x, 4).ok());
    const SqueezedContext sc;
    EXPECT_EQ((*w)->finish(sc, PackFingerprint{}, nullptr, nullptr).code(), Code::kInternal);
    ASSERT_TRUE((*w)->end().ok());
  }
  EXPECT_FALSE(fs::exists(b));
  EXPECT_FALSE(fs::exists(b + ".tmp." + std::to_string(::getpid())));
}

TEST(SqueezePack, AtomicWriteAndCaptureValidation) {
  Compiled c = compile_small(DType::kF16, 0.03);
  const PackFingerprint fp = test::synth_fingerprint(c.spec);
  // No temp file left next to a written pack; a missing directory is an I/O error.
  for (const auto& e : fs::directory_iterator(fs::path(c.path).parent_path()))
    EXPECT_EQ(e.path().string().find(c.path + ".tmp."), std::string::npos);
  const Status s = pack_write(c.sc, c.synth.cap, fp, "/nonexistent-dir/x.sqzpack");
  EXPECT_EQ(s.code(), Code::kIo);

  CompileParams p;
  p.obs_window = c.spec.n_obs;
  auto bad = [&](const ContextCapture& cap, const CompileParams& pp, const std::string& needle) {
    auto r = squeeze_context(cap, pp);
    ASSERT_FALSE(r.ok()) << needle;
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
    EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().message();
  };
  ContextCapture cap = c.synth.cap;
  cap.k[1][7] = std::numeric_limits<float>::quiet_NaN();
  bad(cap, p, "layer 1 K");
  cap = c.synth.cap;
  cap.v[0][3] = 70000.0f;  // beyond f16
  bad(cap, p, "f16");
  CompileParams p32 = p;
  p32.kv_type = DType::kF32;
  EXPECT_TRUE(squeeze_context(cap, p32).ok());
  cap = c.synth.cap;
  cap.q_obs[0].pop_back();
  bad(cap, p, "q_obs");
  cap = c.synth.cap;
  cap.n_head_kv = 4;
  bad(cap, p, "multiple");
  CompileParams p0 = p;
  p0.obs_window = 0;
  bad(c.synth.cap, p0, "obs_window");
  p0.obs_window = (int)c.spec.n_ctx;
  bad(c.synth.cap, p0, "obs_window");
  CompileParams pk = p;
  pk.kv_type = DType::kQ8_0;
  bad(c.synth.cap, pk, "kv_type");
  fs::remove(c.path);
}

// Timing on the project's reference size (8K tokens x 30 layers x 3 KV heads x 64): run with
// --gtest_also_run_disabled_tests. Prints the stage split.
TEST(SqueezePack, DISABLED_CompileTiming8K) {
  test::SynthSpec s;
  s.n_layer = 30;
  s.n_head = 9;
  s.n_head_kv = 3;
  s.head_dim = 64;
  s.n_ctx = 8192;
  s.n_obs = 100;
  s.n_topics = 64;
  s.noise = 0.9f;
  const test::SynthContext sc = test::make_synth(s, test::test_seed());
  for (int nt : {1, 2}) {
    CompileParams p;
    p.obs_window = s.n_obs;
    p.n_threads = nt;
    const std::string path = test::temp_pack_path("timing");
    CompileStats st;
    const auto t0 = std::chrono::steady_clock::now();
    const Status status = pack_compile(sc.cap, p, test::synth_fingerprint(s), path, &st);
    const double wall =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_TRUE(status.ok()) << status.message();
    std::printf(
        "threads %d: total %.2fs = kmeans %.2fs + calib %.2fs + write %.2fs (%.0f MB); "
        "fine %d x iters mean %.1f max %d, coarse %d x iters %.1f, full-row fraction "
        "%.2f, objective %.4f\n",
        nt, wall, st.kmeans_s, st.calib_s, st.write_s, st.pack_bytes / 1e6, st.n_fine,
        st.fine_iters_mean, st.fine_iters_max, st.n_coarse, st.coarse_iters_mean,
        st.full_row_fraction, st.fine_objective);
    const auto t1 = std::chrono::steady_clock::now();
    auto r = Pack::open(path);
    ASSERT_TRUE(r.ok());
    std::printf("open+validate %.3fs\n",
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count());
    fs::remove(path);
  }
}

}  // namespace
}  // namespace sqz
