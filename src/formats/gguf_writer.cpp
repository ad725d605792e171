#include "formats/gguf_writer.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace sqz {

using namespace gguf;

namespace {
uint64_t align_up(uint64_t x, uint64_t a) {
  return (x + a - 1) / a * a;
}
}  // namespace

GgufWriter::GgufWriter(uint32_t alignment) : alignment_(alignment) {
  if (alignment == 0 || (alignment & (alignment - 1)) != 0) {
    err_ =
        Error(Code::kInvalidArgument, "GGUF writer: alignment {} is not a power of two", alignment);
    alignment_ = kDefaultAlignment;
  }
  // Readers assume 32 unless told, so only a non-default alignment needs the key.
  if (alignment_ != kDefaultAlignment) add_u32("general.alignment", alignment_);
}

GgufWriter::~GgufWriter() {
  abort_stream();
}

template <typename T>
void GgufWriter::put(const T& v) {
  const size_t n = kv_.size();
  kv_.resize(n + sizeof(T));
  std::memcpy(kv_.data() + n, &v, sizeof(T));
}

void GgufWriter::put_str(const std::string& s) {
  put<uint64_t>(s.size());
  if (s.empty()) return;
  const size_t at = kv_.size();
  kv_.resize(at + s.size());
  std::memcpy(kv_.data() + at, s.data(), s.size());
}

bool GgufWriter::begin_key(const std::string& key, uint32_t type) {
  if (!err_.ok()) return false;
  if (fp_) {
    err_ =
        Error(Code::kInvalidArgument, "GGUF writer: metadata '{}' added after begin_stream", key);
    return false;
  }
  if (!keys_.insert(key).second) {
    err_ = Error(Code::kInvalidArgument, "GGUF writer: metadata '{}' added twice", key);
    return false;
  }
  put_str(key);
  put<uint32_t>(type);
  n_kv_++;
  return true;
}

void GgufWriter::add_u8(const std::string& k, uint8_t v) {
  if (begin_key(k, kU8)) put(v);
}
void GgufWriter::add_i8(const std::string& k, int8_t v) {
  if (begin_key(k, kI8)) put(v);
}
void GgufWriter::add_u16(const std::string& k, uint16_t v) {
  if (begin_key(k, kU16)) put(v);
}
void GgufWriter::add_i16(const std::string& k, int16_t v) {
  if (begin_key(k, kI16)) put(v);
}
void GgufWriter::add_u32(const std::string& k, uint32_t v) {
  if (begin_key(k, kU32)) put(v);
}
void GgufWriter::add_i32(const std::string& k, int32_t v) {
  if (begin_key(k, kI32)) put(v);
}
void GgufWriter::add_u64(const std::string& k, uint64_t v) {
  if (begin_key(k, kU64)) put(v);
}
void GgufWriter::add_i64(const std::string& k, int64_t v) {
  if (begin_key(k, kI64)) put(v);
}
void GgufWriter::add_f32(const std::string& k, float v) {
  if (begin_key(k, kF32)) put(v);
}
void GgufWriter::add_f64(const std::string& k, double v) {
  if (begin_key(k, kF64)) put(v);
}
void GgufWriter::add_bool(const std::string& k, bool v) {
  if (begin_key(k, kBool)) put<uint8_t>(v ? 1 : 0);
}
void GgufWriter::add_string(const std::string& k, const std::string& v) {
  if (begin_key(k, kString)) put_str(v);
}

void GgufWriter::add_array_string(const std::string& k, const std::vector<std::string>& v) {
  if (!begin_key(k, kArray)) return;
  put<uint32_t>(kString);
  put<uint64_t>(v.size());
  for (const auto& s : v) put_str(s);
}
void GgufWriter::add_array_f32(const std::string& k, const std::vector<float>& v) {
  if (!begin_key(k, kArray)) return;
  put<uint32_t>(kF32);
  put<uint64_t>(v.size());
  for (float x : v) put(x);
}
void GgufWriter::add_array_i32(const std::string& k, const std::vector<int32_t>& v) {
  if (!begin_key(k, kArray)) return;
  put<uint32_t>(kI32);
  put<uint64_t>(v.size());
  for (int32_t x : v) put(x);
}
void GgufWriter::add_array_u32(const std::string& k, const std::vector<uint32_t>& v) {
  if (!begin_key(k, kArray)) return;
  put<uint32_t>(kU32);
  put<uint64_t>(v.size());
  for (uint32_t x : v) put(x);
}

void GgufWriter::add_value(const std::string& key, uint32_t type, const MetaValue& v) {
  if (type >= kValueTypeCount) {
    if (err_.ok())
      err_ =
          Error(Code::kInvalidArgument, "GGUF writer: metadata '{}': unknown type {}", key, type);
    return;
  }
  if (!begin_key(key, type)) return;
  put_value(type, v, 0);
  if (!err_.ok()) err_ = Error(err_.code(), "GGUF writer: metadata '{}': {}", key, err_.message());
}

// Serializes `v` as `type`. Integers are range-checked against the target width so a value
// never silently changes on the way to disk.
void GgufWriter::put_value(uint32_t type, const MetaValue& v, int depth) {
  if (!err_.ok()) return;
  auto bad = [&](const char* what) {
    err_ = Error(Code::kInvalidArgument, "value does not fit GGUF type {} ({})",
                 value_type_name(type), what);
  };
  auto as_int = [&](int64_t lo, uint64_t hi, bool& ok) -> uint64_t {
    ok = true;
    if (const auto* u = std::get_if<uint64_t>(&v)) {
      if (*u > hi) ok = false;
      return *u;
    }
    if (const auto* s = std::get_if<int64_t>(&v)) {
      if (*s < lo || (*s >= 0 && (uint64_t)*s > hi)) ok = false;
      return (uint64_t)*s;
    }
    ok = false;
    return 0;
  };
  bool ok = true;
  switch (type) {
    case kU8: {
      const uint64_t x = as_int(0, UINT8_MAX, ok);
      if (ok) put<uint8_t>((uint8_t)x);
      break;
    }
    case kI8: {
      const uint64_t x = as_int(INT8_MIN, INT8_MAX, ok);
      if (ok) put<int8_t>((int8_t)x);
      break;
    }
    case kU16: {
      const uint64_t x = as_int(0, UINT16_MAX, ok);
      if (ok) put<uint16_t>((uint16_t)x);
      break;
    }
    case kI16: {
      const uint64_t x = as_int(INT16_MIN, INT16_MAX, ok);
      if (ok) put<int16_t>((int16_t)x);
      break;
    }
    case kU32: {
      const uint64_t x = as_int(0, UINT32_MAX, ok);
      if (ok) put<uint32_t>((uint32_t)x);
      break;
    }
    case kI32: {
      const uint64_t x = as_int(INT32_MIN, INT32_MAX, ok);
      if (ok) put<int32_t>((int32_t)x);
      break;
    }
    case kU64: {
      const uint64_t x = as_int(0, UINT64_MAX, ok);
      if (ok) put<uint64_t>(x);
      break;
    }
    case kI64: {
      const uint64_t x = as_int(INT64_MIN, INT64_MAX, ok);
      if (ok) put<int64_t>((int64_t)x);
      break;
    }
    case kF32:
    case kF64: {
      const auto* d = std::get_if<double>(&v);
      ok = d != nullptr;
      if (ok && type == kF32) put<float>((float)*d);
      if (ok && type == kF64) put<double>(*d);
      break;
    }
    case kBool: {
      const auto* b = std::get_if<bool>(&v);
      ok = b != nullptr;
      if (ok) put<uint8_t>(*b ? 1 : 0);
      break;
    }
    case kString: {
      const auto* s = std::get_if<std::string>(&v);
      ok = s != nullptr;
      if (ok) put_str(*s);
      break;
    }
    case kArray: {
      const auto* a = std::get_if<std::shared_ptr<MetaArray>>(&v);
      if (!a || !*a) {
        ok = false;
        break;
      }
      if (depth + 1 >= kMaxArrayDepth || (*a)->elem_type >= kValueTypeCount) {
        bad("array too deep or bad element type");
        return;
      }
      put<uint32_t>((*a)->elem_type);
      put<uint64_t>((*a)->values.size());
      for (const auto& e : (*a)->values) put_value((*a)->elem_type, e, depth + 1);
      return;
    }
    default:
      ok = false;
  }
  if (!ok) bad("wrong variant or out of range");
}

Status GgufWriter::declare(const std::string& name, DType type, const std::vector<int64_t>& ne) {
  SQZ_RETURN_IF_ERROR(err_);
  if (fp_)
    return Error(Code::kInvalidArgument, "GGUF writer: tensor '{}' added after begin_stream", name);
  const DTypeTraits* tr = dtype_traits(type);
  if (!tr) return Error(Code::kInvalidArgument, "GGUF writer: tensor '{}': invalid type", name);
  if (ne.empty() || ne.size() > 4)
    return Error(Code::kInvalidArgument, "GGUF writer: tensor '{}': {} dims (1..4)", name,
                 ne.size());
  int64_t nel = 1;
  for (int64_t d : ne) {
    if (d <= 0 || d > INT64_MAX / nel)
      return Error(Code::kInvalidArgument, "GGUF writer: tensor '{}': bad dimension {}", name, d);
    nel *= d;
  }
  if (ne[0] % tr->block_size != 0)
    return Error(Code::kInvalidArgument,
                 "GGUF writer: tensor '{}': ne[0] = {} not a multiple of {} block size {}", name,
                 ne[0], tr->name, tr->block_size);
  if (!tensor_names_.insert(name).second)
    return Error(Code::kInvalidArgument, "GGUF writer: tensor '{}' added twice", name);
  Tensor t;
  t.name = name;
  t.type = type;
  t.ne = ne;
  t.nbytes = (size_t)(nel / tr->block_size) * tr->type_size;
  t.offset = data_size_;
  data_size_ = align_up(t.offset + t.nbytes, alignment_);
  tensors_.push_back(std::move(t));
  return Status::Ok();
}

Status GgufWriter::add_tensor(const std::string& name, DType type, const std::vector<int64_t>& ne,
                              const void* data, size_t nbytes) {
  SQZ_RETURN_IF_ERROR(declare(name, type, ne));
  Tensor& t = tensors_.back();
  if (nbytes != t.nbytes) {
    const size_t want = t.nbytes;
    data_size_ = t.offset;
    tensor_names_.erase(name);
    tensors_.pop_back();
    return Error(Code::kInvalidArgument, "GGUF writer: tensor '{}': {} bytes given, shape needs {}",
                 name, nbytes, want);
  }
  t.data.assign((const uint8_t*)data, (const uint8_t*)data + nbytes);
  t.has_data = true;
  return Status::Ok();
}

Status GgufWriter::add_tensor_info(const std::string& name, DType type,
                                   const std::vector<int64_t>& ne) {
  return declare(name, type, ne);
}

std::vector<uint8_t> GgufWriter::header() const {
  std::vector<uint8_t> h;
  // resize + memcpy rather than vector::insert: GCC 12 raises a false -Wstringop-overflow
  // on the insert form, which breaks -Werror builds.
  auto put_h = [&](const void* p, size_t n) {
    if (n == 0) return;
    const size_t at = h.size();
    h.resize(at + n);
    std::memcpy(h.data() + at, p, n);
  };
  const uint32_t version = 3;
  const uint64_t n_tensors = tensors_.size();
  put_h(kMagic, 4);
  put_h(&version, 4);
  put_h(&n_tensors, 8);
  put_h(&n_kv_, 8);
  put_h(kv_.data(), kv_.size());
  for (const Tensor& t : tensors_) {
    const uint64_t len = t.name.size();
    put_h(&len, 8);
    put_h(t.name.data(), t.name.size());
    const uint32_t n_dims = (uint32_t)t.ne.size();
    put_h(&n_dims, 4);
    for (int64_t d : t.ne) {
      const uint64_t u = (uint64_t)d;
      put_h(&u, 8);
    }
    const uint32_t type = (uint32_t)t.type;
    put_h(&type, 4);
    put_h(&t.offset, 8);
  }
  h.resize(align_up(h.size(), alignment_), 0);
  return h;
}

Result<std::vector<uint8_t>> GgufWriter::to_bytes() const {
  SQZ_RETURN_IF_ERROR(err_);
  std::vector<uint8_t> out = header();
  const size_t data_start = out.size();
  out.resize(data_start + data_size_, 0);
  for (const Tensor& t : tensors_) {
    if (!t.has_data)
      return Error(Code::kInvalidArgument, "GGUF writer: tensor '{}' has no data", t.name);
    std::memcpy(out.data() + data_start + t.offset, t.data.data(), t.nbytes);
  }
  return out;
}

Status GgufWriter::write_file(const std::string& path) {
  for (const Tensor& t : tensors_)
    if (!t.has_data)
      return Error(Code::kInvalidArgument, "GGUF writer: tensor '{}' has no data", t.name);
  SQZ_RETURN_IF_ERROR(begin_stream(path));
  for (const Tensor& t : tensors_) {
    Status st = stream_tensor_data(t.data.data(), t.nbytes);
    if (!st.ok()) return st;
  }
  return finish_stream();
}

Status GgufWriter::write_raw(const void* data, size_t n) {
  if (n && std::fwrite(data, 1, n, fp_) != n) {
    const int e = errno;
    abort_stream();
    return Error(Code::kIo, "{}: write failed: {}", tmp_path_, std::strerror(e));
  }
  return Status::Ok();
}

Status GgufWriter::write_padding(size_t n) {
  static const uint8_t kZeros[256] = {};
  while (n > 0) {
    const size_t k = std::min(n, sizeof(kZeros));
    SQZ_RETURN_IF_ERROR(write_raw(kZeros, k));
    n -= k;
  }
  return Status::Ok();
}

Status GgufWriter::begin_stream(const std::string& path) {
  SQZ_RETURN_IF_ERROR(err_);
  if (fp_) return Error(Code::kInvalidArgument, "GGUF writer: stream already open");
  path_ = path;
  tmp_path_ = path + ".tmp." + std::to_string(getpid());
  fp_ = std::fopen(tmp_path_.c_str(), "wb");
  if (!fp_) return Error(Code::kIo, "{}: cannot create: {}", tmp_path_, std::strerror(errno));
  // Large stdio buffer: tensors arrive in chunks of varying size.
  std::setvbuf(fp_, nullptr, _IOFBF, 1 << 20);
  cur_tensor_ = 0;
  cur_written_ = 0;
  const std::vector<uint8_t> h = header();
  return write_raw(h.data(), h.size());
}

Status GgufWriter::stream_tensor_data(const void* data, size_t nbytes) {
  if (!fp_) return Error(Code::kInvalidArgument, "GGUF writer: no stream open");
  const uint8_t* p = (const uint8_t*)data;
  while (nbytes > 0) {
    if (cur_tensor_ >= tensors_.size()) {
      abort_stream();
      return Error(Code::kInvalidArgument, "GGUF writer: more tensor data than declared");
    }
    const Tensor& t = tensors_[cur_tensor_];
    const size_t k = std::min(nbytes, t.nbytes - cur_written_);
    SQZ_RETURN_IF_ERROR(write_raw(p, k));
    p += k;
    nbytes -= k;
    cur_written_ += k;
    if (cur_written_ == t.nbytes) {
      const uint64_t end = t.offset + t.nbytes;
      SQZ_RETURN_IF_ERROR(write_padding((size_t)(align_up(end, alignment_) - end)));
      cur_tensor_++;
      cur_written_ = 0;
    }
  }
  return Status::Ok();
}

Status GgufWriter::finish_stream() {
  if (!fp_) return Error(Code::kInvalidArgument, "GGUF writer: no stream open");
  if (cur_tensor_ != tensors_.size()) {
    const std::string name = tensors_[cur_tensor_].name;
    abort_stream();
    return Error(Code::kInvalidArgument, "GGUF writer: stream finished before tensor '{}' data",
                 name);
  }
  const bool ok = std::fflush(fp_) == 0 && ::fsync(fileno(fp_)) == 0;
  const int e = errno;
  const bool closed = std::fclose(fp_) == 0;
  fp_ = nullptr;
  if (!ok || !closed) {
    ::unlink(tmp_path_.c_str());
    return Error(Code::kIo, "{}: flush/fsync/close failed: {}", tmp_path_, std::strerror(e));
  }
  if (std::rename(tmp_path_.c_str(), path_.c_str()) != 0) {
    const int e2 = errno;
    ::unlink(tmp_path_.c_str());
    return Error(Code::kIo, "{}: rename to {} failed: {}", tmp_path_, path_, std::strerror(e2));
  }
  return Status::Ok();
}

void GgufWriter::abort_stream() {
  if (!fp_) return;
  std::fclose(fp_);
  fp_ = nullptr;
  ::unlink(tmp_path_.c_str());
}

}  // namespace sqz
