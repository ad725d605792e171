// Error handling for the library: every fallible call returns a Status or a Result<T>.
// Exceptions never cross the public C API; inside the library we prefer explicit returns so
// that a malformed file or bad flag always surfaces as a message naming the file and field.
#pragma once

#include <fmt/format.h>

#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace sqz {

// Mirrors the integer codes documented in include/sqz.h (SQZ_ERR_*).
enum class Code : int {
  kOk = 0,
  kInvalidArgument = 1,  // bad flag / parameter value
  kIo = 2,               // file missing, unreadable, write failed
  kFormat = 3,           // malformed file contents (bad magic, truncated, out of bounds)
  kUnsupported = 4,      // valid but not implemented (unknown tensor type, architecture)
  kMismatch = 5,         // pack/model/tokenizer fingerprint or version mismatch
  kOutOfRange = 6,       // prompt longer than the context window, etc.
  kInternal = 7,         // broken invariant
};

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Code code, std::string msg) : code_(code), msg_(std::move(msg)) {}
  static Status Ok() { return {}; }
  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return msg_; }

 private:
  Code code_ = Code::kOk;
  std::string msg_;
};

template <typename... Args>
Status Error(Code code, fmt::format_string<Args...> f, Args&&... args) {
  return Status(code, fmt::format(f, std::forward<Args>(args)...));
}

// Value or error. Deliberately tiny (std::expected is C++23).
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status st) : v_(std::move(st)) {}   // NOLINT
  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() { return value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace sqz

// Propagate a failed Status out of the current function.
#define SQZ_RETURN_IF_ERROR(expr) \
  do {                            \
    ::sqz::Status _st = (expr);   \
    if (!_st.ok()) return _st;    \
  } while (0)

#define SQZ_CONCAT_INNER(a, b) a##b
#define SQZ_CONCAT(a, b) SQZ_CONCAT_INNER(a, b)
// Assign the value of a Result or return its Status.
#define SQZ_ASSIGN_OR_RETURN(lhs, expr)                                               \
  auto SQZ_CONCAT(_res_, __LINE__) = (expr);                                          \
  if (!SQZ_CONCAT(_res_, __LINE__).ok()) return SQZ_CONCAT(_res_, __LINE__).status(); \
  lhs = std::move(SQZ_CONCAT(_res_, __LINE__)).value()
