// Streaming pack writer for producers that already hold K/V rows in the pack's storage type and
// row order, one head at a time (the GPU compile, src/engine/gpu_compile.cpp). Same format as
// pack_write (docs/pack-format.md) and the same section contents; the differences are where the
// bytes go and in which order:
//  - sections are appended in file order: the caller writes tokens, k_clustered and v_clustered
//    (begin / append / end), then finish() writes every other section in pack_write's order and
//    `meta` last (its size is only known at the end; readers find sections through the table);
//  - append() hashes in the caller's thread and copies into 64 MiB staging blocks that a
//    background thread writes with pwrite, O_DIRECT where the filesystem takes it (the page
//    cache would add a copy and, in a VM that grows its memory on demand, page faults), so
//    hashing, copying and the disk overlap with the caller's own work;
//  - atomicity as pack_write: path.tmp.<pid>, header last, fsync, rename, directory fsync; a
//    writer destroyed before finish() removes its temp file.
#pragma once

#include <memory>
#include <string>

#include "squeeze/pack.h"

namespace sqz {

class PackStreamWriter {
 public:
  static Result<std::unique_ptr<PackStreamWriter>> create(const std::string& path);
  ~PackStreamWriter();
  PackStreamWriter(const PackStreamWriter&) = delete;
  PackStreamWriter& operator=(const PackStreamWriter&) = delete;

  // One section's bytes, in any number of append() calls. Only tokens, k_clustered and
  // v_clustered, in that order, go through here; finish() writes the rest.
  Status begin(PackSection id);
  Status append(const void* p, size_t n);
  Status end();
  // Writes the remaining sections from sc (its heads, calibration tables and stats complete)
  // and the observation window's K/V (k_obs, v_obs: [n_layer, n_head_kv, n_obs, head_dim] in
  // sc.params.kv_type), then meta, and commits the file.
  Status finish(const SqueezedContext& sc, const PackFingerprint& fp, const void* k_obs,
                const void* v_obs);

  bool direct_io() const;    // writes bypass the page cache (O_DIRECT)
  double io_busy_s() const;  // seconds the background thread spent in pwrite so far
  uint64_t bytes() const;    // bytes appended so far (the file size after finish)

  struct Impl;

 private:
  PackStreamWriter();
  std::unique_ptr<Impl> impl_;
};

}  // namespace sqz
