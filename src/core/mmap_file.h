// Read-only memory mapping of a whole file (POSIX mmap).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "core/status.h"

namespace sqz {

class MappedFile {
 public:
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  static Result<std::shared_ptr<MappedFile>> open(const std::string& path);
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
};

// Atomic file write: data goes to `path.tmp.<pid>`, is fsync'ed, then renamed over `path`, so
// a reader never sees a half-written file and a failed write loses nothing.
Status write_file_atomic(const std::string& path, const void* data, size_t size);

}  // namespace sqz
