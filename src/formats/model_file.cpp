#include "formats/model_file.h"

#include <filesystem>

namespace sqz {

namespace {
std::string shape_str(const int64_t* ne, int n) {
  std::string s = "{";
  for (int i = 0; i < n; i++) s += fmt::format("{}{}", i ? ", " : "", ne[i]);
  return s + "}";
}
}  // namespace

const TensorView* ModelFile::find(const std::string& name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

Result<const TensorView*> ModelFile::require(const std::string& name,
                                             std::initializer_list<int64_t> ne) const {
  if (ne.size() > 4)
    return Error(Code::kInternal, "{}: tensor '{}': require() given {} dims (max 4)", path, name,
                 ne.size());
  const TensorView* t = find(name);
  if (!t) return Error(Code::kFormat, "{}: tensor '{}' is missing", path, name);
  int64_t want[4] = {1, 1, 1, 1};
  int i = 0;
  for (int64_t v : ne) want[i++] = v;
  // Trailing dimensions of 1 are equivalent in ggml order, so compare all four.
  for (int d = 0; d < 4; d++) {
    if (t->ne[d] != want[d]) {
      const int n = std::max<int>(std::max<int>(t->n_dims, (int)ne.size()), 1);
      return Error(Code::kFormat, "{}: tensor '{}': shape (ggml order) is {}, expected {}", path,
                   name, shape_str(t->ne, n), shape_str(want, n));
    }
  }
  return t;
}

Result<std::unique_ptr<ModelFile>> model_file_open(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) return safetensors_open(path);
  if (!std::filesystem::exists(path, ec))
    return Error(Code::kIo, "{}: no such file or directory", path);
  return gguf_open(path);
}

}  // namespace sqz
