// Internals shared by the tokenizer implementations (byte-level BPE, SentencePiece): UTF-8
// helpers, the GPT-2 byte<->unicode table, the special-token splitter and the BPE merge loop.
// Not part of the public API.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/status.h"
#include "formats/model_file.h"
#include "tokenizer/tokenizer.h"

namespace sqz::tok {

// GGUF token types (llama.cpp's llama_token_type).
enum TokenType : int32_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

// ---- UTF-8 ----
// Length of the UTF-8 sequence starting at s[i] if it is a valid, complete sequence; 0 otherwise.
size_t utf8_valid_len(std::string_view s, size_t i);
// Like utf8_valid_len but an invalid byte counts as a 1-byte character (never 0 inside s).
inline size_t utf8_char_len(std::string_view s, size_t i) {
  const size_t n = utf8_valid_len(s, i);
  return n == 0 ? 1 : n;
}
void append_utf8(std::string& out, uint32_t cp);
// Rust's String::from_utf8_lossy (used by HF decoders): every maximal invalid subpart of a
// sequence becomes one U+FFFD.
std::string utf8_lossy(std::string_view bytes);
bool utf8_is_valid(std::string_view bytes);

// ---- GPT-2 byte-level alphabet ----
// byte_to_unicode()[b] is the code point that represents byte b in byte-level BPE vocabularies
// (printable Latin-1 bytes map to themselves, the rest to U+0100...).
const std::array<uint32_t, 256>& byte_to_unicode();
// Inverse of byte_to_unicode; -1 for code points outside the alphabet.
int unicode_to_byte(uint32_t cp);

// Hash that lets unordered_map<std::string, V> be queried with a string_view without a copy.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <typename V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

// ---- special / added tokens ----
// One piece of input after splitting on special tokens: either a token id or a text span.
struct Fragment {
  int32_t id;  // >= 0: a special token; -1: text [begin, begin + len)
  size_t begin = 0;
  size_t len = 0;
};

// Finds added tokens in text, leftmost-longest like HF's AddedVocabulary (aho-corasick
// LeftmostLongest). Control/unknown tokens are matched only when parse_special is set (HF
// split_special_tokens=false); user-defined tokens (HF non-special added tokens) always are.
class SpecialMatcher {
 public:
  void build(const std::vector<std::string>& tokens, const std::vector<int32_t>& types);
  std::vector<Fragment> split(std::string_view text, bool parse_special) const;

 private:
  struct Entry {
    std::string text;
    int32_t id;
    bool control;  // only matched when parse_special
  };
  std::vector<Entry> entries_;
  // Entry indices by first byte, longest first, so the first hit at a position is the longest.
  std::array<std::vector<int32_t>, 256> by_first_;
};

// ---- BPE merge loop over token ids ----
// Pair (left id, right id) -> (rank, merged id). Lower rank merges first.
struct MergeInfo {
  int32_t rank;
  int32_t id;
};
using MergeMap = std::unordered_map<uint64_t, MergeInfo>;
inline uint64_t pair_key(int32_t a, int32_t b) {
  return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
}

// Applies merges to `ids` in place, exactly as HF tokenizers' Word::merge_all does: repeatedly
// take the lowest-rank pair (leftmost on ties) from a priority queue, validating stale queue
// entries against the current neighbours. O(n log n) so very long words stay fast.
void bpe_merge(std::vector<int32_t>& ids, const MergeMap& merges);

// Parses "a b" merge strings against a vocabulary. Tokens may in principle contain spaces, so
// the split point is the space for which both halves are tokens.
Status build_merge_map(const std::vector<std::string>& merges, const StringMap<int32_t>& vocab,
                       MergeMap* out);

// Python str.strip(): trims Unicode white space (str.isspace) from both ends.
std::string py_strip(std::string_view s);

// State and accessors common to both tokenizer kinds: the vocabulary, token types, special ids
// and the special-token splitter.
class TokenizerBase : public Tokenizer {
 public:
  int32_t n_vocab() const override { return (int32_t)tokens_.size(); }
  int32_t bos() const override { return bos_; }
  int32_t eos() const override { return eos_; }
  int32_t eot() const override { return eot_; }
  bool is_control(int32_t id) const override {
    return id >= 0 && id < n_vocab() && types_[id] == kControl;
  }
  int32_t token_id(std::string_view piece) const override {
    auto it = vocab_.find(piece);
    return it == vocab_.end() ? -1 : it->second;
  }

 protected:
  void init_base(const TokenizerData& d);
  // Tokens that decode(skip_special=true) drops: HF's "special" added tokens.
  bool is_skippable(int32_t id) const { return types_[id] == kControl || types_[id] == kUnknown; }

  std::vector<std::string> tokens_;  // [n_vocab] token text as stored in the model file
  std::vector<int32_t> types_;       // [n_vocab] TokenType
  StringMap<int32_t> vocab_;         // text -> id (first id wins on duplicates)
  int32_t bos_ = -1, eos_ = -1, eot_ = -1, unk_ = -1;
  bool add_bos_ = false, add_eos_ = false;
  SpecialMatcher specials_;
};

// Implementations (bpe_tokenizer.cpp, spm_tokenizer.cpp).
Result<std::unique_ptr<Tokenizer>> create_byte_level_bpe(const TokenizerData& data);
Result<std::unique_ptr<Tokenizer>> create_spm(const TokenizerData& data);

}  // namespace sqz::tok
