// GGUF v3 writer: metadata of every GGUF value type (nested arrays included) and tensors of any
// supported DType. Either build everything in memory (add_tensor with data, then to_bytes /
// write_file) or stream: declare tensors (add_tensor_info), begin_stream(path), hand over each
// tensor's bytes in declaration order (in as many chunks as convenient), finish_stream(). Files
// appear atomically: data goes to `path.tmp.<pid>` and is renamed over `path` when complete.
#pragma once

#include <cstdint>
#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"
#include "formats/gguf.h"
#include "formats/model_file.h"

namespace sqz {

class GgufWriter {
 public:
  explicit GgufWriter(uint32_t alignment = gguf::kDefaultAlignment);
  ~GgufWriter();  // removes an unfinished stream's temp file
  GgufWriter(const GgufWriter&) = delete;
  GgufWriter& operator=(const GgufWriter&) = delete;

  // Metadata. Errors (duplicate key, bad value) are sticky: status() and every write report
  // the first one, so a sequence of add_* calls needs no per-call checks.
  void add_u8(const std::string& key, uint8_t v);
  void add_i8(const std::string& key, int8_t v);
  void add_u16(const std::string& key, uint16_t v);
  void add_i16(const std::string& key, int16_t v);
  void add_u32(const std::string& key, uint32_t v);
  void add_i32(const std::string& key, int32_t v);
  void add_u64(const std::string& key, uint64_t v);
  void add_i64(const std::string& key, int64_t v);
  void add_f32(const std::string& key, float v);
  void add_f64(const std::string& key, double v);
  void add_bool(const std::string& key, bool v);
  void add_string(const std::string& key, const std::string& v);
  void add_array_string(const std::string& key, const std::vector<std::string>& v);
  void add_array_f32(const std::string& key, const std::vector<float>& v);
  void add_array_i32(const std::string& key, const std::vector<int32_t>& v);
  void add_array_u32(const std::string& key, const std::vector<uint32_t>& v);
  // Any value: `type` is the GGUF value type (gguf::ValueType) that `v` is written as. Arrays
  // are written with their MetaArray::elem_type, recursively.
  void add_value(const std::string& key, uint32_t type, const MetaValue& v);

  // Tensor with its data (copied). ne in ggml order, 1..4 dims; nbytes must match the shape.
  Status add_tensor(const std::string& name, DType type, const std::vector<int64_t>& ne,
                    const void* data, size_t nbytes);
  // Tensor whose data is supplied later through stream_tensor_data.
  Status add_tensor_info(const std::string& name, DType type, const std::vector<int64_t>& ne);

  // Whole file in memory (every tensor must have been given data).
  Result<std::vector<uint8_t>> to_bytes() const;
  // Atomic write of the whole file (every tensor must have been given data).
  Status write_file(const std::string& path);

  // Streaming: header now, then each tensor's bytes in declaration order, then finish.
  Status begin_stream(const std::string& path);
  Status stream_tensor_data(const void* data, size_t nbytes);
  Status finish_stream();

  const Status& status() const { return err_; }
  size_t n_tensors() const { return tensors_.size(); }

 private:
  struct Tensor {
    std::string name;
    DType type;
    std::vector<int64_t> ne;
    size_t nbytes = 0;
    uint64_t offset = 0;  // relative to the data section
    bool has_data = false;
    std::vector<uint8_t> data;
  };

  bool begin_key(const std::string& key, uint32_t type);
  void put_value(uint32_t type, const MetaValue& v, int depth);
  template <typename T>
  void put(const T& v);
  void put_str(const std::string& s);
  Status declare(const std::string& name, DType type, const std::vector<int64_t>& ne);
  std::vector<uint8_t> header() const;  // header + kv + tensor infos + padding
  Status write_raw(const void* data, size_t n);
  Status write_padding(size_t n);
  void abort_stream();

  uint32_t alignment_;
  Status err_;
  uint64_t n_kv_ = 0;
  std::vector<uint8_t> kv_;  // serialized key/value pairs
  std::set<std::string> keys_;
  std::vector<Tensor> tensors_;
  std::set<std::string> tensor_names_;
  uint64_t data_size_ = 0;  // data section size (aligned end of last tensor)

  // Streaming state.
  std::FILE* fp_ = nullptr;
  std::string path_, tmp_path_;
  size_t cur_tensor_ = 0;
  size_t cur_written_ = 0;
};

}  // namespace sqz
