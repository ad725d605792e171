// Pack writer (streaming, atomic) and validating reader. Format: docs/pack-format.md.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/clock.h"
#include "core/fp16.h"
#include "squeeze/pack.h"
#include "squeeze/pack_stream.h"
#include "squeeze/xxh64.h"

namespace sqz {

using json = nlohmann::json;

namespace {

constexpr size_t kAlign = 64;
constexpr size_t kHeaderFixed = 64;  // fixed part of the header
constexpr size_t kEntryBytes = 32;   // one section-table entry
constexpr size_t kHashField = 56;    // offset of header_hash inside the fixed header
constexpr uint32_t kMaxSections = 64;

size_t align_up(size_t x) {
  return (x + kAlign - 1) / kAlign * kAlign;
}

template <typename T>
void put(uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}
template <typename T>
T get(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

const char* kSectionNames[kPackSectionCount + 1] = {
    "unknown",       "meta",         "tokens",         "k_clustered", "v_clustered",
    "perm",          "fine_offsets", "fine_centroids", "fine_sizes",  "coarse_centroids",
    "coarse_ranges", "k_obs",        "v_obs",          "calib",       "fine_var",
    "coarse_var",    "fine_radius",  "coarse_radius",  "calib_var",   "calib_iso"};

std::string hex64(uint64_t x) {
  return fmt::format("{:016x}", x);
}
bool parse_hex64(const std::string& s, uint64_t* out) {
  if (s.empty() || s.size() > 16) return false;
  uint64_t v = 0;
  for (char c : s) {
    int d;
    if (c >= '0' && c <= '9')
      d = c - '0';
    else if (c >= 'a' && c <= 'f')
      d = c - 'a' + 10;
    else
      return false;
    v = v << 4 | (uint64_t)d;
  }
  *out = v;
  return true;
}

struct SectionEntry {
  uint32_t id;
  uint64_t offset, size, hash;
};

// Section bookkeeping shared by the two pack writers (buffered and streaming): the open
// section's entry and running hash, and the finished entries for the header.
struct SectionLog {
  std::vector<SectionEntry> entries;
  SectionEntry cur{};
  Xxh64 hash;
  bool open = false;

  Status closed() const {
    if (open) return Error(Code::kInternal, "pack writer: section {} still open", cur.id);
    return Status::Ok();
  }
  // Callers pad to the section alignment between closed() and begin().
  Status begin(uint32_t id, uint64_t offset) {
    SQZ_RETURN_IF_ERROR(closed());
    cur = {id, offset, 0, 0};
    hash.reset();
    open = true;
    return Status::Ok();
  }
  Status add(const void* p, size_t n) {
    if (!open) return Error(Code::kInternal, "pack writer: write outside a section");
    hash.update(p, n);
    return Status::Ok();
  }
  Status end(uint64_t offset) {
    if (!open) return Error(Code::kInternal, "pack writer: no open section");
    cur.size = offset - cur.offset;
    cur.hash = hash.digest();
    entries.push_back(cur);
    open = false;
    return Status::Ok();
  }
};

// The temporary file both writers fill and then rename over `path`.
std::string temp_pack_path(const std::string& path) {
  return path + ".tmp." + std::to_string(getpid());
}

// Writes the header (fixed part + section table, hashed) at offset 0 of the temp file, fsyncs,
// closes and renames it over `path`, then fsyncs the directory. Closes fd (sets it to -1) and
// removes the temp file on failure.
Status commit_pack_file(int& fd, const std::string& tmp, const std::string& path,
                        const std::vector<SectionEntry>& entries, uint64_t file_size) {
  const size_t hb = kHeaderFixed + kEntryBytes * entries.size();
  std::vector<uint8_t> h(hb, 0);
  std::memcpy(h.data(), kPackMagic, 8);
  put<uint32_t>(&h[8], kPackVersion);
  put<uint32_t>(&h[12], (uint32_t)entries.size());
  put<uint64_t>(&h[16], file_size);
  put<uint32_t>(&h[24], (uint32_t)hb);
  for (size_t i = 0; i < entries.size(); i++) {
    uint8_t* e = &h[kHeaderFixed + kEntryBytes * i];
    put<uint32_t>(e, entries[i].id);
    put<uint64_t>(e + 8, entries[i].offset);
    put<uint64_t>(e + 16, entries[i].size);
    put<uint64_t>(e + 24, entries[i].hash);
  }
  Xxh64 hh;
  hh.update(h.data(), kHashField);
  hh.update(h.data() + kHeaderFixed, hb - kHeaderFixed);
  put<uint64_t>(&h[kHashField], hh.digest());
  size_t done = 0;
  while (done < hb) {
    const ssize_t w = ::pwrite(fd, h.data() + done, hb - done, (off_t)done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return Error(Code::kIo, "{}: header write failed: {}", tmp, std::strerror(errno));
    done += (size_t)w;
  }
  if (::fsync(fd) != 0) return Error(Code::kIo, "{}: fsync failed: {}", tmp, std::strerror(errno));
  const int f = fd;
  fd = -1;
  if (::close(f) != 0) {
    ::unlink(tmp.c_str());
    return Error(Code::kIo, "{}: close failed: {}", tmp, std::strerror(errno));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    return Error(Code::kIo, "{}: rename to {} failed: {}", tmp, path, std::strerror(e));
  }
  // Make the rename itself durable (best effort: some filesystems refuse O_RDONLY dirs).
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash + 1);
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
  return Status::Ok();
}

// Buffered writer to `path.tmp.<pid>`: sections are streamed through a fixed buffer (packs can
// be many GB), hashed on the way, and the file is renamed over `path` only after fsync.
class PackFileWriter {
 public:
  ~PackFileWriter() {
    if (fd_ >= 0) {
      ::close(fd_);
      ::unlink(tmp_.c_str());
    }
  }
  Status open(const std::string& path, size_t header_bytes) {
    path_ = path;
    tmp_ = temp_pack_path(path);
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) return Error(Code::kIo, "{}: cannot create: {}", tmp_, std::strerror(errno));
    buf_.reserve(kBuf);
    std::vector<uint8_t> zeros(align_up(header_bytes), 0);
    return raw_write(zeros.data(), zeros.size());
  }
  Status begin_section(uint32_t id) {
    SQZ_RETURN_IF_ERROR(log_.closed());
    SQZ_RETURN_IF_ERROR(pad());
    return log_.begin(id, offset_);
  }
  Status write(const void* p, size_t n) {
    SQZ_RETURN_IF_ERROR(log_.add(p, n));
    return raw_write(p, n);
  }
  Status end_section() { return log_.end(offset_); }
  // Writes the header, fsyncs and renames into place.
  Status finish() {
    SQZ_RETURN_IF_ERROR(pad());
    SQZ_RETURN_IF_ERROR(flush());
    return commit_pack_file(fd_, tmp_, path_, log_.entries, offset_);
  }
  uint64_t bytes() const { return offset_; }

 private:
  static constexpr size_t kBuf = 4 << 20;
  Status pad() {
    static const uint8_t zeros[kAlign] = {};
    const size_t n = align_up(offset_) - offset_;
    return raw_write(zeros, n);
  }
  Status raw_write(const void* p, size_t n) {
    const uint8_t* b = (const uint8_t*)p;
    offset_ += n;
    while (n > 0) {
      const size_t take = std::min(n, kBuf - buf_.size());
      buf_.insert(buf_.end(), b, b + take);
      b += take;
      n -= take;
      if (buf_.size() == kBuf) SQZ_RETURN_IF_ERROR(flush());
    }
    return Status::Ok();
  }
  Status flush() {
    size_t done = 0;
    while (done < buf_.size()) {
      const ssize_t w = ::write(fd_, buf_.data() + done, buf_.size() - done);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return Error(Code::kIo, "{}: write failed: {}", tmp_, std::strerror(errno));
      done += (size_t)w;
    }
    buf_.clear();
    return Status::Ok();
  }
  std::string path_, tmp_;
  int fd_ = -1;
  size_t offset_ = 0;
  std::vector<uint8_t> buf_;
  SectionLog log_;
};

const char* kv_name(DType t) {
  return t == DType::kF32 ? "f32" : "f16";
}

json make_meta(const SqueezedContext& sc, const PackFingerprint& fp) {
  json m;
  m["format"] = "sqzpack";
  m["fingerprint"] = {{"arch", fp.arch},
                      {"n_layer", fp.n_layer},
                      {"n_head", fp.n_head},
                      {"n_head_kv", fp.n_head_kv},
                      {"head_dim", fp.head_dim},
                      {"n_embd", fp.n_embd},
                      {"n_vocab", fp.n_vocab},
                      {"weights_hash", hex64(fp.weights_hash)},
                      {"tokenizer_hash", hex64(fp.tokenizer_hash)}};
  const CompileParams& p = sc.params;
  m["compile_params"] = {{"clusters", p.clusters},
                         {"coarse", p.coarse},
                         {"obs_window", p.obs_window},
                         {"kv_type", kv_name(p.kv_type)},
                         {"seed", hex64(p.seed)},
                         {"n_threads", p.n_threads},
                         {"max_iters", p.max_iters},
                         {"tol", p.tol},
                         {"estimator", estimator_name(p.estimator)},
                         {"center_keys", p.center_keys}};
  const CompileStats& s = sc.stats;
  m["stats"] = {{"kmeans_s", s.kmeans_s},
                {"calib_s", s.calib_s},
                {"fine_iters_mean", s.fine_iters_mean},
                {"fine_iters_max", s.fine_iters_max},
                {"coarse_iters_mean", s.coarse_iters_mean},
                {"fine_objective", s.fine_objective},
                {"coarse_objective", s.coarse_objective},
                {"full_row_fraction", s.full_row_fraction}};
  m["dims"] = {{"n_layer", sc.n_layer},
               {"n_head", sc.n_head},
               {"n_head_kv", sc.n_head_kv},
               {"head_dim", sc.head_dim},
               {"n_ctx", sc.n_ctx},
               {"n_obs", sc.n_obs},
               {"n_clustered", sc.n_clustered},
               {"n_fine", sc.n_fine},
               {"n_coarse", sc.n_coarse},
               {"kv_type", kv_name(sc.params.kv_type)},
               {"n_grid", sc.calib.percentiles.size()}};
  json heads = json::array();
  for (size_t i = 0; i < sc.heads.size(); i++) {
    const HeadClusters& hc = sc.heads[i];
    heads.push_back({{"layer", (int)(i / sc.n_head_kv)},
                     {"kv_head", (int)(i % sc.n_head_kv)},
                     {"n_fine", (int)hc.fine_sizes.size()},
                     {"n_coarse", (int)hc.coarse_ranges.size() - 1},
                     {"fine_iters", hc.fine_iters},
                     {"coarse_iters", hc.coarse_iters},
                     {"fine_objective", hc.fine_objective},
                     {"coarse_objective", hc.coarse_objective}});
  }
  m["heads"] = std::move(heads);
  return m;
}

}  // namespace

const char* pack_section_name(uint32_t id) {
  return id >= 1 && id <= kPackSectionCount ? kSectionNames[id] : kSectionNames[0];
}

namespace {

// Writes one section through any writer with begin_section / write / end_section.
template <class W, class Body>
Status write_section(W& w, PackSection id, Body&& body) {
  SQZ_RETURN_IF_ERROR(w.begin_section((uint32_t)id));
  SQZ_RETURN_IF_ERROR(body());
  return w.end_section();
}

// The sections after v_clustered, in file order: per-head arrays, observation-window K/V
// (obs(false) writes K, obs(true) V), calibration tables, variances and radii. `tick` after each.
template <class W, class Obs, class Tick>
Status write_tail_sections(W& w, const SqueezedContext& sc, Obs&& obs, Tick&& tick) {
  // Per-head arrays, concatenated over (layer, KV head).
  auto per_head = [&](PackSection id, auto member) -> Status {
    return write_section(w, id, [&]() -> Status {
      for (const HeadClusters& hc : sc.heads) {
        const auto& v = hc.*member;
        SQZ_RETURN_IF_ERROR(w.write(v.data(), v.size() * sizeof(v[0])));
      }
      return Status::Ok();
    });
  };
  SQZ_RETURN_IF_ERROR(per_head(PackSection::kPerm, &HeadClusters::perm));
  tick();
  SQZ_RETURN_IF_ERROR(per_head(PackSection::kFineOffsets, &HeadClusters::fine_offsets));
  tick();
  SQZ_RETURN_IF_ERROR(per_head(PackSection::kFineCentroids, &HeadClusters::fine_centroids));
  tick();
  SQZ_RETURN_IF_ERROR(per_head(PackSection::kFineSizes, &HeadClusters::fine_sizes));
  tick();
  SQZ_RETURN_IF_ERROR(per_head(PackSection::kCoarseCentroids, &HeadClusters::coarse_centroids));
  tick();
  SQZ_RETURN_IF_ERROR(per_head(PackSection::kCoarseRanges, &HeadClusters::coarse_ranges));
  tick();
  SQZ_RETURN_IF_ERROR(write_section(w, PackSection::kKObs, [&] { return obs(false); }));
  tick();
  SQZ_RETURN_IF_ERROR(write_section(w, PackSection::kVObs, [&] { return obs(true); }));
  tick();
  auto calib_section = [&](PackSection id, const CalibTable& t) -> Status {
    return write_section(w, id, [&]() -> Status {
      if (t.percentiles.size() != sc.calib.percentiles.size())
        return Error(Code::kInternal, "calibration tables differ in length");
      for (const auto* a :
           {&t.percentiles, &t.fine_threshold, &t.coarse_threshold, &t.kept_fine, &t.kept_hier}) {
        if (a->size() != t.percentiles.size())
          return Error(Code::kInternal, "calibration table columns differ in length");
        SQZ_RETURN_IF_ERROR(w.write(a->data(), a->size() * sizeof(double)));
      }
      return Status::Ok();
    });
  };
  SQZ_RETURN_IF_ERROR(calib_section(PackSection::kCalib, sc.calib));
  tick();
  for (const HeadClusters& hc : sc.heads)
    if (hc.fine_var.size() != hc.fine_centroids.size() ||
        hc.coarse_var.size() != hc.coarse_centroids.size() ||
        hc.fine_radius.size() != hc.fine_sizes.size() ||
        hc.coarse_radius.size() + 1 != hc.coarse_ranges.size())
      return Error(Code::kInvalidArgument, "pack_write: cluster variances or radii missing");
  SQZ_RETURN_IF_ERROR(per_head(PackSection::kFineVar, &HeadClusters::fine_var));
  tick();
  SQZ_RETURN_IF_ERROR(per_head(PackSection::kCoarseVar, &HeadClusters::coarse_var));
  tick();
  SQZ_RETURN_IF_ERROR(per_head(PackSection::kFineRadius, &HeadClusters::fine_radius));
  tick();
  SQZ_RETURN_IF_ERROR(per_head(PackSection::kCoarseRadius, &HeadClusters::coarse_radius));
  tick();
  SQZ_RETURN_IF_ERROR(calib_section(PackSection::kCalibVar, sc.calib_var));
  tick();
  SQZ_RETURN_IF_ERROR(calib_section(PackSection::kCalibIso, sc.calib_iso));
  tick();
  return Status::Ok();
}

}  // namespace

Status pack_write(const SqueezedContext& sc, const ContextCapture& cap, const PackFingerprint& fp,
                  const std::string& out_path, CompileStats* stats,
                  const CompileProgress& progress) {
  const double t0 = now_s();
  const int64_t jobs = (int64_t)sc.n_layer * sc.n_head_kv;
  if ((int64_t)sc.heads.size() != jobs || cap.n_layer != sc.n_layer ||
      cap.n_head_kv != sc.n_head_kv || cap.head_dim != sc.head_dim || cap.n_ctx != sc.n_ctx ||
      (int64_t)cap.k.size() != sc.n_layer)
    return Error(Code::kInvalidArgument, "pack_write: capture does not match the squeezed context");
  const int64_t d = sc.head_dim;
  const DType kt = sc.params.kv_type;
  PackFileWriter w;
  SQZ_RETURN_IF_ERROR(w.open(out_path, kHeaderFixed + kEntryBytes * kPackSectionCount));
  int64_t step = 0;
  const int64_t steps = kPackSectionCount;
  auto tick = [&]() {
    if (progress) progress("write", ++step, steps);
  };

  const std::string meta = make_meta(sc, fp).dump();
  SQZ_RETURN_IF_ERROR(
      write_section(w, PackSection::kMeta, [&] { return w.write(meta.data(), meta.size()); }));
  tick();
  SQZ_RETURN_IF_ERROR(write_section(w, PackSection::kTokens, [&] {
    return w.write(cap.tokens.data(), cap.tokens.size() * sizeof(int32_t));
  }));
  tick();
  // K/V rows of every head, converted to kv_type; `rows` maps row r to the source position.
  std::vector<uint8_t> rowbuf;
  auto write_rows = [&](const std::vector<std::vector<float>>& src, bool clustered) -> Status {
    const size_t esz = dtype_row_size(kt, 1);
    for (int64_t job = 0; job < jobs; job++) {
      const int l = (int)(job / sc.n_head_kv), h = (int)(job % sc.n_head_kv);
      const float* base = src[(size_t)l].data() + (int64_t)h * sc.n_ctx * d;
      const int64_t n = clustered ? sc.n_clustered : sc.n_obs;
      rowbuf.resize((size_t)(n * d) * esz);
      for (int64_t r = 0; r < n; r++) {
        const int64_t pos = clustered ? sc.heads[(size_t)job].perm[(size_t)r] : sc.n_clustered + r;
        const float* x = base + pos * d;
        if (kt == DType::kF32) {
          std::memcpy(rowbuf.data() + (size_t)(r * d) * 4, x, (size_t)d * 4);
        } else {
          f16_t* o = (f16_t*)(rowbuf.data() + (size_t)(r * d) * 2);
          for (int64_t t = 0; t < d; t++) o[t] = fp32_to_fp16(x[t]);
        }
      }
      SQZ_RETURN_IF_ERROR(w.write(rowbuf.data(), rowbuf.size()));
    }
    return Status::Ok();
  };
  SQZ_RETURN_IF_ERROR(
      write_section(w, PackSection::kKClustered, [&] { return write_rows(cap.k, true); }));
  tick();
  SQZ_RETURN_IF_ERROR(
      write_section(w, PackSection::kVClustered, [&] { return write_rows(cap.v, true); }));
  tick();
  SQZ_RETURN_IF_ERROR(write_tail_sections(
      w, sc, [&](bool v) { return write_rows(v ? cap.v : cap.k, false); }, tick));
  SQZ_RETURN_IF_ERROR(w.finish());
  if (stats) {
    stats->write_s = now_s() - t0;
    stats->pack_bytes = w.bytes();
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// Streaming writer (pack_stream.h)

struct PackStreamWriter::Impl {
  static constexpr size_t kBlock = size_t(64) << 20;  // one disk write
  static constexpr int kBlocks = 4;                   // staging blocks in flight
  static constexpr size_t kDirectAlign = 4096;        // O_DIRECT offset / length / address unit

  std::string path, tmp;
  int fd = -1;
  std::atomic<bool> direct{false};  // O_DIRECT (cleared by the I/O thread if a write refuses it)
  // Producer side (the caller's thread).
  uint8_t* cur = nullptr;  // staging block being filled: file bytes [cur_off, cur_off + fill)
  size_t fill = 0;
  uint64_t cur_off = 0;
  uint64_t offset = 0;  // logical file size so far
  SectionLog log;
  // I/O thread.
  struct Job {
    uint8_t* p;
    size_t n;
    uint64_t off;
  };
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Job> full;
  std::vector<uint8_t*> free_blocks, all_blocks;
  bool stop = false;
  Status io_error;
  double io_busy_s = 0;
  std::thread io;

  ~Impl() {
    if (io.joinable()) {
      {
        std::lock_guard<std::mutex> lock(mu);
        stop = true;
      }
      cv.notify_all();
      io.join();
    }
    for (uint8_t* b : all_blocks) std::free(b);
    if (fd >= 0) {
      ::close(fd);
      ::unlink(tmp.c_str());
    }
  }

  Status write_block(const Job& j) {
    size_t done = 0;
    while (done < j.n) {
      const ssize_t w = ::pwrite(fd, j.p + done, j.n - done, (off_t)(j.off + done));
      if (w < 0 && errno == EINTR) continue;
      if (w < 0 && errno == EINVAL && direct) {
        // The filesystem takes O_DIRECT at open but not for this write: go buffered.
        const int fl = ::fcntl(fd, F_GETFL);
        if (fl >= 0 && ::fcntl(fd, F_SETFL, fl & ~O_DIRECT) == 0) {
          direct = false;
          continue;
        }
      }
      if (w <= 0) return Error(Code::kIo, "{}: write failed: {}", tmp, std::strerror(errno));
      done += (size_t)w;
    }
    return Status::Ok();
  }

  void io_loop() {
    for (;;) {
      Job j;
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return !full.empty() || stop; });
        if (full.empty()) return;
        j = full.front();
        full.pop_front();
      }
      const double t0 = now_s();
      Status st = io_error.ok() ? write_block(j) : Status::Ok();
      const double dt = now_s() - t0;
      {
        std::lock_guard<std::mutex> lock(mu);
        io_busy_s += dt;
        if (!st.ok() && io_error.ok()) io_error = std::move(st);
        free_blocks.push_back(j.p);
      }
      cv.notify_all();
    }
  }

  Status error() {
    std::lock_guard<std::mutex> lock(mu);
    return io_error;
  }

  // Hands the current block (n bytes, n <= kBlock) to the I/O thread and takes a free one.
  Status submit(size_t n) {
    {
      std::unique_lock<std::mutex> lock(mu);
      full.push_back({cur, n, cur_off});
      cv.notify_all();
      cv.wait(lock, [&] { return !free_blocks.empty(); });
      cur = free_blocks.back();
      free_blocks.pop_back();
      if (!io_error.ok()) return io_error;
    }
    cur_off += n;
    fill = 0;
    return Status::Ok();
  }

  Status raw(const void* p, size_t n) {
    const uint8_t* b = static_cast<const uint8_t*>(p);
    offset += n;
    while (n > 0) {
      const size_t take = std::min(n, kBlock - fill);
      if (b)
        std::memcpy(cur + fill, b, take);
      else
        std::memset(cur + fill, 0, take);
      fill += take;
      if (b) b += take;
      n -= take;
      if (fill == kBlock) SQZ_RETURN_IF_ERROR(submit(kBlock));
    }
    return Status::Ok();
  }
  Status pad() { return raw(nullptr, align_up(offset) - offset); }

  // The PackFileWriter interface, for write_tail_sections.
  Status begin_section(uint32_t id) {
    SQZ_RETURN_IF_ERROR(log.closed());
    SQZ_RETURN_IF_ERROR(pad());
    return log.begin(id, offset);
  }
  Status write(const void* p, size_t n) {
    SQZ_RETURN_IF_ERROR(log.add(p, n));
    return raw(p, n);
  }
  Status end_section() { return log.end(offset); }
};

Result<std::unique_ptr<PackStreamWriter>> PackStreamWriter::create(const std::string& path) {
  std::unique_ptr<PackStreamWriter> w(new PackStreamWriter());
  w->impl_ = std::make_unique<Impl>();
  Impl& I = *w->impl_;
  I.path = path;
  I.tmp = temp_pack_path(path);
  const int flags = O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC;
  I.fd = ::open(I.tmp.c_str(), flags | O_DIRECT, 0644);
  I.direct = I.fd >= 0;
  if (I.fd < 0) I.fd = ::open(I.tmp.c_str(), flags, 0644);  // e.g. tmpfs: no O_DIRECT
  if (I.fd < 0) return Error(Code::kIo, "{}: cannot create: {}", I.tmp, std::strerror(errno));
  for (int i = 0; i < Impl::kBlocks; i++) {
    void* p = nullptr;
    if (::posix_memalign(&p, Impl::kDirectAlign, Impl::kBlock) != 0 || !p)
      return Error(Code::kOutOfRange, "pack stream: cannot allocate {} MiB of staging",
                   Impl::kBlock >> 20);
    I.all_blocks.push_back(static_cast<uint8_t*>(p));
  }
  I.cur = I.all_blocks[0];
  I.free_blocks.assign(I.all_blocks.begin() + 1, I.all_blocks.end());
  I.io = std::thread([&I] { I.io_loop(); });
  // Room for the header, written last.
  SQZ_RETURN_IF_ERROR(I.raw(nullptr, align_up(kHeaderFixed + kEntryBytes * kPackSectionCount)));
  return w;
}

PackStreamWriter::PackStreamWriter() = default;
PackStreamWriter::~PackStreamWriter() = default;

Status PackStreamWriter::begin(PackSection id) {
  return impl_->begin_section((uint32_t)id);
}
Status PackStreamWriter::append(const void* p, size_t n) {
  return impl_->write(p, n);
}
Status PackStreamWriter::end() {
  SQZ_RETURN_IF_ERROR(impl_->end_section());
  return impl_->error();
}
bool PackStreamWriter::direct_io() const {
  return impl_->direct;
}
double PackStreamWriter::io_busy_s() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->io_busy_s;
}
uint64_t PackStreamWriter::bytes() const {
  return impl_->offset;
}

Status PackStreamWriter::finish(const SqueezedContext& sc, const PackFingerprint& fp,
                                const void* k_obs, const void* v_obs) {
  Impl& I = *impl_;
  SQZ_RETURN_IF_ERROR(I.log.closed());
  bool seen[kPackSectionCount + 1] = {};
  for (const SectionEntry& e : I.log.entries) seen[e.id] = true;
  if (!seen[(uint32_t)PackSection::kTokens] || !seen[(uint32_t)PackSection::kKClustered] ||
      !seen[(uint32_t)PackSection::kVClustered] || I.log.entries.size() != 3)
    return Error(Code::kInternal, "pack stream: tokens, k_clustered, v_clustered must come first");
  const size_t obs_bytes = (size_t)sc.n_layer * sc.n_head_kv * sc.n_obs * sc.head_dim *
                           dtype_row_size(sc.params.kv_type, 1);
  auto nop = [] {};
  SQZ_RETURN_IF_ERROR(write_tail_sections(
      I, sc, [&](bool v) { return I.write(v ? v_obs : k_obs, obs_bytes); }, nop));
  const std::string meta = make_meta(sc, fp).dump();
  SQZ_RETURN_IF_ERROR(
      write_section(I, PackSection::kMeta, [&] { return I.write(meta.data(), meta.size()); }));
  SQZ_RETURN_IF_ERROR(I.pad());
  // Last block: whole O_DIRECT units (the zeros past the end are cut off below).
  const uint64_t size = I.offset;
  const size_t tail = (I.fill + Impl::kDirectAlign - 1) / Impl::kDirectAlign * Impl::kDirectAlign;
  std::memset(I.cur + I.fill, 0, tail - I.fill);
  if (tail > 0) SQZ_RETURN_IF_ERROR(I.submit(tail));
  {
    std::lock_guard<std::mutex> lock(I.mu);
    I.stop = true;
  }
  I.cv.notify_all();
  I.io.join();
  SQZ_RETURN_IF_ERROR(I.error());
  // Header and truncation through the page cache.
  const int fl = ::fcntl(I.fd, F_GETFL);
  if (fl >= 0 && (fl & O_DIRECT)) (void)::fcntl(I.fd, F_SETFL, fl & ~O_DIRECT);
  if (::ftruncate(I.fd, (off_t)size) != 0)
    return Error(Code::kIo, "{}: truncate failed: {}", I.tmp, std::strerror(errno));
  return commit_pack_file(I.fd, I.tmp, I.path, I.log.entries, size);
}

// ---------------------------------------------------------------------------------------------
// Reader

Result<std::unique_ptr<Pack>> Pack::open(const std::string& path) {
  SQZ_ASSIGN_OR_RETURN(std::shared_ptr<MappedFile> f, MappedFile::open(path));
  std::unique_ptr<Pack> p(new Pack());
  p->file_ = std::move(f);
  SQZ_RETURN_IF_ERROR(p->load());
  return p;
}

namespace {

// Reads JSON fields with kFormat errors instead of exceptions.
struct MetaReader {
  const json& j;
  std::string where;
  Status st;
  template <typename T>
  T get(const char* key) {
    if (!st.ok()) return T{};
    auto it = j.find(key);
    if (it == j.end()) {
      st = Error(Code::kFormat, "section 'meta': missing {}.{}", where, key);
      return T{};
    }
    try {
      return it->template get<T>();
    } catch (const std::exception& e) {
      st = Error(Code::kFormat, "section 'meta': bad {}.{}: {}", where, key, e.what());
      return T{};
    }
  }
  uint64_t hex(const char* key) {
    const std::string s = get<std::string>(key);
    uint64_t v = 0;
    if (st.ok() && !parse_hex64(s, &v))
      st = Error(Code::kFormat, "section 'meta': {}.{} is not a hex u64", where, key);
    return v;
  }
};

}  // namespace

Status Pack::load() {
  const uint8_t* b = file_->data();
  const size_t size = file_->size();
  const std::string& path = file_->path();
  if (size < kHeaderFixed)
    return Error(Code::kFormat, "{}: truncated ({} bytes): not a Squeeze pack", path, size);
  if (std::memcmp(b, kPackMagic, 8) != 0)
    return Error(Code::kFormat, "{}: bad magic: not a Squeeze pack", path);
  const uint32_t version = get<uint32_t>(b + 8);
  if (version != kPackVersion)
    return Error(Code::kMismatch,
                 "{}: pack format version {} ({} build); this build reads version {} "
                 "(recompile the context)",
                 path, version, version < kPackVersion ? "written by an older" : "needs a newer",
                 kPackVersion);
  const uint32_t n_sec = get<uint32_t>(b + 12);
  const uint32_t hb = get<uint32_t>(b + 24);
  if (n_sec == 0 || n_sec > kMaxSections || hb != kHeaderFixed + kEntryBytes * n_sec || hb > size)
    return Error(Code::kFormat, "{}: header: bad section table ({} sections, {} bytes)", path,
                 n_sec, hb);
  {
    Xxh64 hh;
    hh.update(b, kHashField);
    hh.update(b + kHeaderFixed, hb - kHeaderFixed);
    if (hh.digest() != get<uint64_t>(b + kHashField))
      return Error(Code::kFormat,
                   "{}: header checksum mismatch (corrupted header or section table)", path);
  }
  const uint64_t fsize = get<uint64_t>(b + 16);
  if (fsize != size)
    return Error(Code::kFormat, "{}: truncated or extended: header says {} bytes, file has {}",
                 path, fsize, size);

  struct Sec {
    uint32_t id;
    uint64_t off, size, hash;
  };
  std::vector<Sec> secs;
  bool seen[kPackSectionCount + 1] = {};
  for (uint32_t i = 0; i < n_sec; i++) {
    const uint8_t* e = b + kHeaderFixed + kEntryBytes * i;
    Sec s{get<uint32_t>(e), get<uint64_t>(e + 8), get<uint64_t>(e + 16), get<uint64_t>(e + 24)};
    if (s.id < 1 || s.id > kPackSectionCount)
      return Error(Code::kFormat, "{}: header: unknown section id {}", path, s.id);
    if (seen[s.id])
      return Error(Code::kFormat, "{}: header: duplicate section '{}'", path,
                   pack_section_name(s.id));
    seen[s.id] = true;
    if (s.off % kAlign != 0 || s.off < align_up(hb) || s.off > size || s.size > size - s.off)
      return Error(Code::kFormat, "{}: section '{}' out of bounds (offset {}, {} bytes, file {})",
                   path, pack_section_name(s.id), s.off, s.size, size);
    secs.push_back(s);
  }
  for (uint32_t id = 1; id <= kPackSectionCount; id++)
    if (!seen[id])
      return Error(Code::kFormat, "{}: missing section '{}'", path, pack_section_name(id));
  // (offset, size): an empty section shares its offset with the next one and must sort first.
  std::sort(secs.begin(), secs.end(), [](const Sec& a, const Sec& c) {
    return a.off != c.off ? a.off < c.off : a.size < c.size;
  });
  // Overlaps and padding: every byte of the file is covered by the header hash, a section
  // hash or the all-zero padding rule, so any corrupted byte is detected and located.
  auto zeros = [&](uint64_t from, uint64_t to) {
    for (uint64_t i = from; i < to; i++)
      if (b[i] != 0) return false;
    return true;
  };
  uint64_t prev_end = hb;
  const char* prev_name = "header";
  for (const Sec& s : secs) {
    if (s.off < prev_end)
      return Error(Code::kFormat, "{}: section '{}' overlaps '{}'", path, pack_section_name(s.id),
                   prev_name);
    if (!zeros(prev_end, s.off))
      return Error(Code::kFormat, "{}: nonzero padding after '{}' (corrupted pack)", path,
                   prev_name);
    prev_end = s.off + s.size;
    prev_name = pack_section_name(s.id);
  }
  if (!zeros(prev_end, size))
    return Error(Code::kFormat, "{}: nonzero padding after '{}' (corrupted pack)", path, prev_name);
  uint64_t sec_size[kPackSectionCount + 1] = {};
  for (const Sec& s : secs) {
    if (xxh64(b + s.off, s.size) != s.hash)
      return Error(Code::kFormat, "{}: section '{}' checksum mismatch (corrupted pack)", path,
                   pack_section_name(s.id));
    sec_[s.id] = b + s.off;
    sec_size[s.id] = s.size;
  }

  // ---- metadata ----
  json m;
  try {
    m = json::parse(std::string((const char*)sec_[(uint32_t)PackSection::kMeta],
                                sec_size[(uint32_t)PackSection::kMeta]));
  } catch (const std::exception& e) {
    return Error(Code::kFormat, "{}: section 'meta': invalid JSON: {}", path, e.what());
  }
  if (!m.is_object() || !m.contains("dims") || !m.contains("fingerprint") ||
      !m.contains("compile_params") || !m.contains("stats") || !m["dims"].is_object() ||
      !m["fingerprint"].is_object() || !m["compile_params"].is_object() || !m["stats"].is_object())
    return Error(Code::kFormat, "{}: section 'meta': missing dims/fingerprint/compile_params/stats",
                 path);
  std::string kvt;
  int64_t n_grid = 0;
  {
    MetaReader r{m["dims"], "dims", {}};
    n_layer_ = r.get<int>("n_layer");
    n_head_ = r.get<int>("n_head");
    n_head_kv_ = r.get<int>("n_head_kv");
    head_dim_ = r.get<int>("head_dim");
    n_ctx_ = r.get<int64_t>("n_ctx");
    n_obs_ = r.get<int64_t>("n_obs");
    n_clustered_ = r.get<int64_t>("n_clustered");
    n_fine_ = r.get<int>("n_fine");
    n_coarse_ = r.get<int>("n_coarse");
    kvt = r.get<std::string>("kv_type");
    n_grid = r.get<int64_t>("n_grid");
    if (!r.st.ok()) return Error(r.st.code(), "{}: {}", path, r.st.message());
  }
  {
    MetaReader r{m["fingerprint"], "fingerprint", {}};
    fp_.arch = r.get<std::string>("arch");
    fp_.n_layer = r.get<int>("n_layer");
    fp_.n_head = r.get<int>("n_head");
    fp_.n_head_kv = r.get<int>("n_head_kv");
    fp_.head_dim = r.get<int>("head_dim");
    fp_.n_embd = r.get<int>("n_embd");
    fp_.n_vocab = r.get<int>("n_vocab");
    fp_.weights_hash = r.hex("weights_hash");
    fp_.tokenizer_hash = r.hex("tokenizer_hash");
    if (!r.st.ok()) return Error(r.st.code(), "{}: {}", path, r.st.message());
  }
  {
    MetaReader r{m["compile_params"], "compile_params", {}};
    params_.clusters = r.get<double>("clusters");
    params_.coarse = r.get<double>("coarse");
    params_.obs_window = r.get<int>("obs_window");
    params_.kv_type = r.get<std::string>("kv_type") == "f32" ? DType::kF32 : DType::kF16;
    params_.seed = r.hex("seed");
    params_.n_threads = r.get<int>("n_threads");
    params_.max_iters = r.get<int>("max_iters");
    params_.tol = r.get<double>("tol");
    const std::string est = r.get<std::string>("estimator");
    // Absent in packs written before the option existed (raw directions).
    params_.center_keys = m["compile_params"].value("center_keys", false);
    if (r.st.ok() &&
        (!parse_estimator(est, &params_.estimator) || params_.estimator == Estimator::kAuto))
      return Error(Code::kFormat,
                   "{}: section 'meta': compile_params.estimator '{}' is not "
                   "mean/mean_var",
                   path, est);
    MetaReader s{m["stats"], "stats", {}};
    stats_.kmeans_s = s.get<double>("kmeans_s");
    stats_.calib_s = s.get<double>("calib_s");
    stats_.fine_iters_mean = s.get<double>("fine_iters_mean");
    stats_.fine_iters_max = s.get<int>("fine_iters_max");
    stats_.coarse_iters_mean = s.get<double>("coarse_iters_mean");
    stats_.fine_objective = s.get<double>("fine_objective");
    stats_.coarse_objective = s.get<double>("coarse_objective");
    stats_.full_row_fraction = s.get<double>("full_row_fraction");
    if (!r.st.ok()) return Error(r.st.code(), "{}: {}", path, r.st.message());
    if (!s.st.ok()) return Error(s.st.code(), "{}: {}", path, s.st.message());
  }
  stats_.n_fine = n_fine_;
  stats_.n_coarse = n_coarse_;
  stats_.pack_bytes = size;
  if (kvt != "f16" && kvt != "f32")
    return Error(Code::kFormat, "{}: section 'meta': kv_type '{}' is not f16/f32", path, kvt);
  kv_type_ = kvt == "f32" ? DType::kF32 : DType::kF16;
  if (n_layer_ <= 0 || n_head_ <= 0 || n_head_kv_ <= 0 || head_dim_ <= 0 ||
      n_head_ % n_head_kv_ != 0 || n_obs_ < 1 || n_clustered_ < 1 ||
      n_ctx_ != n_obs_ + n_clustered_ || n_ctx_ > INT32_MAX || n_fine_ < 1 ||
      n_fine_ > n_clustered_ || n_coarse_ < 0 || n_coarse_ > n_fine_ || n_grid < 1 ||
      n_grid > 100000 || n_layer_ > 100000 || n_head_ > 100000 || head_dim_ > 100000)
    return Error(Code::kFormat, "{}: section 'meta': inconsistent dims", path);
  if (fp_.n_layer != n_layer_ || fp_.n_head != n_head_ || fp_.n_head_kv != n_head_kv_ ||
      fp_.head_dim != head_dim_)
    return Error(Code::kFormat, "{}: section 'meta': fingerprint disagrees with dims", path);

  // ---- section sizes ----
  // 128-bit products: crafted dims must not wrap around to a small "expected" size.
  using u128 = unsigned __int128;
  const u128 H = (u128)n_layer_ * (u128)n_head_kv_;
  const u128 esz = dtype_row_size(kv_type_, 1);
  const u128 d = (u128)head_dim_;
  const u128 expect[kPackSectionCount + 1] = {
      0,
      sec_size[1],
      (u128)n_ctx_ * 4,
      H * (u128)n_clustered_ * d * esz,
      H * (u128)n_clustered_ * d * esz,
      H * (u128)n_clustered_ * 4,
      H * ((u128)n_fine_ + 1) * 4,
      H * (u128)n_fine_ * d * 4,
      H * (u128)n_fine_ * 4,
      H * (u128)n_coarse_ * d * 4,
      H * ((u128)n_coarse_ + 1) * 4,
      H * (u128)n_obs_ * d * esz,
      H * (u128)n_obs_ * d * esz,
      5 * (u128)n_grid * 8,
      H * (u128)n_fine_ * d * 4,
      H * (u128)n_coarse_ * d * 4,
      H * (u128)n_fine_ * 4,
      H * (u128)n_coarse_ * 4,
      5 * (u128)n_grid * 8,
      5 * (u128)n_grid * 8,
  };
  for (uint32_t id = 2; id <= kPackSectionCount; id++)
    if ((u128)sec_size[id] != expect[id])
      return Error(Code::kFormat, "{}: section '{}' has {} bytes; the metadata implies {}", path,
                   pack_section_name(id), sec_size[id], (double)expect[id]);

  // ---- contents (a pack with valid checksums can still be crafted; never index blindly) ----
  tokens_ = (const int32_t*)sec_[(uint32_t)PackSection::kTokens];
  for (int64_t i = 0; i < n_ctx_; i++)
    if (tokens_[i] < 0 || (fp_.n_vocab > 0 && tokens_[i] >= fp_.n_vocab))
      return Error(Code::kFormat, "{}: section 'tokens': token {} at {} out of range", path,
                   tokens_[i], i);
  std::vector<uint8_t> seen_row((size_t)n_clustered_);
  for (int l = 0; l < n_layer_; l++)
    for (int h = 0; h < n_head_kv_; h++) {
      const int32_t* off = fine_offsets(l, h);
      const float* sz = fine_sizes(l, h);
      if (off[0] != 0 || off[n_fine_] != n_clustered_)
        return Error(Code::kFormat, "{}: section 'fine_offsets': layer {} head {} bad ends", path,
                     l, h);
      for (int j = 0; j < n_fine_; j++) {
        if (off[j + 1] <= off[j])
          return Error(Code::kFormat,
                       "{}: section 'fine_offsets': layer {} head {} cluster {} "
                       "empty or unordered",
                       path, l, h, j);
        if (sz[j] != (float)(off[j + 1] - off[j]))
          return Error(Code::kFormat,
                       "{}: section 'fine_sizes': layer {} head {} cluster {} "
                       "disagrees with offsets",
                       path, l, h, j);
      }
      const int32_t* cr = coarse_ranges(l, h);
      if (cr[0] != 0 || (n_coarse_ > 0 && cr[n_coarse_] != n_fine_))
        return Error(Code::kFormat, "{}: section 'coarse_ranges': layer {} head {} bad ends", path,
                     l, h);
      for (int c = 0; c < n_coarse_; c++)
        if (cr[c + 1] <= cr[c])
          return Error(Code::kFormat,
                       "{}: section 'coarse_ranges': layer {} head {} range {} "
                       "empty or unordered",
                       path, l, h, c);
      const int32_t* pm = perm(l, h);
      std::fill(seen_row.begin(), seen_row.end(), 0);
      for (int64_t r = 0; r < n_clustered_; r++) {
        if (pm[r] < 0 || pm[r] >= n_clustered_ || seen_row[(size_t)pm[r]])
          return Error(Code::kFormat, "{}: section 'perm': layer {} head {} is not a permutation",
                       path, l, h);
        seen_row[(size_t)pm[r]] = 1;
      }
      for (const auto& [arr, cnt, name] :
           {std::tuple{fine_centroids(l, h), (int64_t)n_fine_ * head_dim_, "fine_centroids"},
            std::tuple{coarse_centroids(l, h), (int64_t)n_coarse_ * head_dim_, "coarse_centroids"}})
        for (int64_t i = 0; i < cnt; i++)
          if (!std::isfinite(arr[i]))
            return Error(Code::kFormat, "{}: section '{}': layer {} head {} non-finite value", path,
                         name, l, h);
      // Variances enter exp() through ½ q² v: negative or non-finite values would make the
      // estimator meaningless (or NaN).
      for (const auto& [arr, cnt, name] :
           {std::tuple{fine_var(l, h), (int64_t)n_fine_ * head_dim_, "fine_var"},
            std::tuple{coarse_var(l, h), (int64_t)n_coarse_ * head_dim_, "coarse_var"},
            std::tuple{fine_radius(l, h), (int64_t)n_fine_, "fine_radius"},
            std::tuple{coarse_radius(l, h), (int64_t)n_coarse_, "coarse_radius"}})
        for (int64_t i = 0; i < cnt; i++)
          if (!(arr[i] >= 0.0f && std::isfinite(arr[i])))
            return Error(Code::kFormat,
                         "{}: section '{}': layer {} head {} negative or non-finite value", path,
                         name, l, h);
    }
  auto load_calib = [&](PackSection id, CalibTable& t) -> Status {
    const double* cal = (const double*)sec_[(uint32_t)id];
    auto col = [&](int c) { return std::vector<double>(cal + c * n_grid, cal + (c + 1) * n_grid); };
    t.percentiles = col(0);
    t.fine_threshold = col(1);
    t.coarse_threshold = col(2);
    t.kept_fine = col(3);
    t.kept_hier = col(4);
    for (int64_t g = 0; g < n_grid; g++) {
      const bool ok = t.percentiles[g] >= 0 && t.percentiles[g] < 1 &&
                      (g == 0 || t.percentiles[g] > t.percentiles[g - 1]) &&
                      std::isfinite(t.fine_threshold[g]) && t.fine_threshold[g] >= 0 &&
                      std::isfinite(t.coarse_threshold[g]) && t.coarse_threshold[g] >= 0 &&
                      (g == 0 || (t.fine_threshold[g] >= t.fine_threshold[g - 1] &&
                                  t.coarse_threshold[g] >= t.coarse_threshold[g - 1])) &&
                      t.kept_fine[g] >= 0 && t.kept_fine[g] <= 1 && t.kept_hier[g] >= 0 &&
                      t.kept_hier[g] <= 1;
      if (!ok)
        return Error(Code::kFormat, "{}: section '{}': row {} invalid or not monotone", path,
                     pack_section_name((uint32_t)id), g);
    }
    return Status::Ok();
  };
  SQZ_RETURN_IF_ERROR(load_calib(PackSection::kCalib, calib_));
  SQZ_RETURN_IF_ERROR(load_calib(PackSection::kCalibVar, calib_var_));
  SQZ_RETURN_IF_ERROR(load_calib(PackSection::kCalibIso, calib_iso_));
  // The tables are computed on the same grid.
  if (calib_.percentiles != calib_var_.percentiles)
    return Error(Code::kFormat, "{}: section 'calib_var': percentile grid differs from 'calib'",
                 path);
  if (calib_.percentiles != calib_iso_.percentiles)
    return Error(Code::kFormat, "{}: section 'calib_iso': percentile grid differs from 'calib'",
                 path);
  return Status::Ok();
}

KvHeadView Pack::clustered_kv(int layer, int h) const {
  const size_t esz = dtype_row_size(kv_type_, 1);
  const size_t off = head_index(layer, h) * (size_t)n_clustered_ * head_dim_ * esz;
  return {sec_[(uint32_t)PackSection::kKClustered] + off,
          sec_[(uint32_t)PackSection::kVClustered] + off, kv_type_, head_dim_};
}
KvHeadView Pack::obs_kv(int layer, int h) const {
  const size_t esz = dtype_row_size(kv_type_, 1);
  const size_t off = head_index(layer, h) * (size_t)n_obs_ * head_dim_ * esz;
  return {sec_[(uint32_t)PackSection::kKObs] + off, sec_[(uint32_t)PackSection::kVObs] + off,
          kv_type_, head_dim_};
}
const int32_t* Pack::perm(int layer, int h) const {
  return (const int32_t*)sec_[(uint32_t)PackSection::kPerm] + head_index(layer, h) * n_clustered_;
}
const int32_t* Pack::fine_offsets(int layer, int h) const {
  return (const int32_t*)sec_[(uint32_t)PackSection::kFineOffsets] +
         head_index(layer, h) * (size_t)(n_fine_ + 1);
}
const float* Pack::fine_centroids(int layer, int h) const {
  return (const float*)sec_[(uint32_t)PackSection::kFineCentroids] +
         head_index(layer, h) * (size_t)n_fine_ * head_dim_;
}
const float* Pack::fine_sizes(int layer, int h) const {
  return (const float*)sec_[(uint32_t)PackSection::kFineSizes] + head_index(layer, h) * n_fine_;
}
const float* Pack::coarse_centroids(int layer, int h) const {
  return (const float*)sec_[(uint32_t)PackSection::kCoarseCentroids] +
         head_index(layer, h) * (size_t)n_coarse_ * head_dim_;
}
const int32_t* Pack::coarse_ranges(int layer, int h) const {
  return (const int32_t*)sec_[(uint32_t)PackSection::kCoarseRanges] +
         head_index(layer, h) * (size_t)(n_coarse_ + 1);
}
const float* Pack::fine_var(int layer, int h) const {
  return (const float*)sec_[(uint32_t)PackSection::kFineVar] +
         head_index(layer, h) * (size_t)n_fine_ * head_dim_;
}
const float* Pack::coarse_var(int layer, int h) const {
  return (const float*)sec_[(uint32_t)PackSection::kCoarseVar] +
         head_index(layer, h) * (size_t)n_coarse_ * head_dim_;
}
const float* Pack::fine_radius(int layer, int h) const {
  return (const float*)sec_[(uint32_t)PackSection::kFineRadius] + head_index(layer, h) * n_fine_;
}
const float* Pack::coarse_radius(int layer, int h) const {
  return (const float*)sec_[(uint32_t)PackSection::kCoarseRadius] +
         head_index(layer, h) * n_coarse_;
}
HeadCentroidsView Pack::centroids_view(int layer, int h) const {
  HeadCentroidsView v;
  v.n_fine = n_fine_;
  v.n_coarse = n_coarse_;
  v.head_dim = head_dim_;
  v.fine_centroids = fine_centroids(layer, h);
  v.fine_sizes = fine_sizes(layer, h);
  v.fine_offsets = fine_offsets(layer, h);
  v.coarse_centroids = coarse_centroids(layer, h);
  v.coarse_ranges = coarse_ranges(layer, h);
  v.fine_var = fine_var(layer, h);
  v.coarse_var = coarse_var(layer, h);
  v.fine_radius = fine_radius(layer, h);
  v.coarse_radius = coarse_radius(layer, h);
  return v;
}

Status pack_check_model(const Pack& pack, const PackFingerprint& fp) {
  const PackFingerprint& a = pack.fingerprint();
  auto diff = [&](const char* field, const std::string& in_pack, const std::string& in_model) {
    return Error(Code::kMismatch,
                 "{}: pack was compiled for a different model: {} is {} in the pack, {} in the "
                 "model (recompile the context)",
                 pack.path(), field, in_pack, in_model);
  };
  if (a.arch != fp.arch) return diff("arch", a.arch, fp.arch);
#define SQZ_CHECK_FIELD(f) \
  if (a.f != fp.f) return diff(#f, std::to_string(a.f), std::to_string(fp.f));
  SQZ_CHECK_FIELD(n_layer)
  SQZ_CHECK_FIELD(n_head)
  SQZ_CHECK_FIELD(n_head_kv)
  SQZ_CHECK_FIELD(head_dim)
  SQZ_CHECK_FIELD(n_embd)
  SQZ_CHECK_FIELD(n_vocab)
#undef SQZ_CHECK_FIELD
  if (a.weights_hash != fp.weights_hash)
    return diff("weights_hash", hex64(a.weights_hash), hex64(fp.weights_hash));
  if (a.tokenizer_hash != fp.tokenizer_hash)
    return diff("tokenizer_hash", hex64(a.tokenizer_hash), hex64(fp.tokenizer_hash));
  return Status::Ok();
}

}  // namespace sqz
