// Tokenizer factory and the helpers shared by the byte-level BPE and SentencePiece tokenizers.
#include "tokenizer/tokenizer.h"

#include <algorithm>

#include "tokenizer/tokenizer_impl.h"

namespace sqz {

namespace tok {

// ---------------------------------------------------------------------------------------------
// UTF-8
// ---------------------------------------------------------------------------------------------
namespace {

// Scans the sequence at s[i] following Unicode Table 3-7 (well-formed UTF-8). Returns true when
// it is valid; *n is its length, or for an invalid one the length of the maximal subpart (the
// longest prefix that could start a valid sequence, at least 1), which is what lossy decoders
// replace with a single U+FFFD.
bool utf8_scan(std::string_view s, size_t i, size_t* n) {
  const uint8_t c = (uint8_t)s[i];
  if (c < 0x80) {
    *n = 1;
    return true;
  }
  int need = 0;
  uint8_t lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    need = 1;
  } else if (c == 0xE0) {
    need = 2;
    lo = 0xA0;
  } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
    need = 2;
  } else if (c == 0xED) {
    need = 2;
    hi = 0x9F;  // no surrogates
  } else if (c == 0xF0) {
    need = 3;
    lo = 0x90;
  } else if (c >= 0xF1 && c <= 0xF3) {
    need = 3;
  } else if (c == 0xF4) {
    need = 3;
    hi = 0x8F;  // <= U+10FFFF
  } else {
    *n = 1;
    return false;
  }
  size_t k = 1;
  for (int j = 0; j < need; j++) {
    if (i + k >= s.size()) {
      *n = k;
      return false;
    }
    const uint8_t b = (uint8_t)s[i + k];
    if (b < lo || b > hi) {
      *n = k;
      return false;
    }
    lo = 0x80;
    hi = 0xBF;
    k++;
  }
  *n = k;
  return true;
}

uint32_t decode_cp(std::string_view s, size_t i, size_t n) {
  const uint8_t c = (uint8_t)s[i];
  if (n == 1) return c;
  uint32_t cp = c & (0x7F >> n);
  for (size_t k = 1; k < n; k++) cp = (cp << 6) | ((uint8_t)s[i + k] & 0x3F);
  return cp;
}

}  // namespace

size_t utf8_valid_len(std::string_view s, size_t i) {
  size_t n = 0;
  return utf8_scan(s, i, &n) ? n : 0;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += (char)cp;
  } else if (cp < 0x800) {
    out += (char)(0xC0 | (cp >> 6));
    out += (char)(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += (char)(0xE0 | (cp >> 12));
    out += (char)(0x80 | ((cp >> 6) & 0x3F));
    out += (char)(0x80 | (cp & 0x3F));
  } else {
    out += (char)(0xF0 | (cp >> 18));
    out += (char)(0x80 | ((cp >> 12) & 0x3F));
    out += (char)(0x80 | ((cp >> 6) & 0x3F));
    out += (char)(0x80 | (cp & 0x3F));
  }
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0;
  while (i < bytes.size()) {
    size_t n = 0;
    if (utf8_scan(bytes, i, &n)) {
      out.append(bytes.data() + i, n);
    } else {
      out += "\xEF\xBF\xBD";  // U+FFFD
    }
    i += n;
  }
  return out;
}

bool utf8_is_valid(std::string_view bytes) {
  size_t i = 0;
  while (i < bytes.size()) {
    size_t n = 0;
    if (!utf8_scan(bytes, i, &n)) return false;
    i += n;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// GPT-2 byte-level alphabet
// ---------------------------------------------------------------------------------------------
const std::array<uint32_t, 256>& byte_to_unicode() {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    uint32_t next = 256;
    for (int b = 0; b < 256; b++) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      t[b] = printable ? (uint32_t)b : next++;
    }
    return t;
  }();
  return table;
}

int unicode_to_byte(uint32_t cp) {
  static const std::vector<int16_t> inv = [] {
    std::vector<int16_t> v(512, -1);
    const auto& fwd = byte_to_unicode();
    for (int b = 0; b < 256; b++) v[fwd[b]] = (int16_t)b;
    return v;
  }();
  return cp < inv.size() ? inv[cp] : -1;
}

// ---------------------------------------------------------------------------------------------
// Special tokens
// ---------------------------------------------------------------------------------------------
void SpecialMatcher::build(const std::vector<std::string>& tokens,
                           const std::vector<int32_t>& types) {
  entries_.clear();
  for (auto& b : by_first_) b.clear();
  for (size_t i = 0; i < tokens.size() && i < types.size(); i++) {
    const int32_t t = types[i];
    if (tokens[i].empty()) continue;
    if (t == kControl || t == kUnknown) {
      entries_.push_back({tokens[i], (int32_t)i, true});
    } else if (t == kUserDefined) {
      entries_.push_back({tokens[i], (int32_t)i, false});
    }
  }
  for (size_t e = 0; e < entries_.size(); e++)
    by_first_[(uint8_t)entries_[e].text[0]].push_back((int32_t)e);
  for (auto& b : by_first_) {
    std::stable_sort(b.begin(), b.end(), [&](int32_t x, int32_t y) {
      return entries_[x].text.size() > entries_[y].text.size();
    });
  }
}

std::vector<Fragment> SpecialMatcher::split(std::string_view text, bool parse_special) const {
  std::vector<Fragment> out;
  size_t text_start = 0, i = 0;
  while (i < text.size()) {
    int32_t hit = -1;
    for (int32_t e : by_first_[(uint8_t)text[i]]) {
      const Entry& en = entries_[e];
      if (en.control && !parse_special) continue;
      if (text.compare(i, en.text.size(), en.text) == 0) {
        hit = e;
        break;
      }
    }
    if (hit < 0) {
      i++;
      continue;
    }
    if (i > text_start) out.push_back({-1, text_start, i - text_start});
    out.push_back({entries_[hit].id, i, entries_[hit].text.size()});
    i += entries_[hit].text.size();
    text_start = i;
  }
  if (text_start < text.size()) out.push_back({-1, text_start, text.size() - text_start});
  return out;
}

// ---------------------------------------------------------------------------------------------
// BPE merge loop
// ---------------------------------------------------------------------------------------------
void bpe_merge(std::vector<int32_t>& ids, const MergeMap& merges) {
  const int32_t n = (int32_t)ids.size();
  if (n < 2) return;
  struct Entry {
    int32_t rank, pos, id;
  };
  // Min-heap on (rank, pos): the comparator says "a comes after b".
  auto later = [](const Entry& a, const Entry& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  // Scratch reused across calls: most words are short and this runs once per word.
  thread_local std::vector<int32_t> prev, next;
  thread_local std::vector<uint8_t> alive;
  thread_local std::vector<Entry> heap;
  prev.resize(n);
  next.resize(n);
  alive.assign(n, 1);
  heap.clear();
  for (int32_t i = 0; i < n; i++) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  auto push = [&](int32_t pos) {
    const int32_t nx = next[pos];
    if (nx < 0) return;
    auto it = merges.find(pair_key(ids[pos], ids[nx]));
    if (it == merges.end()) return;
    heap.push_back({it->second.rank, pos, it->second.id});
    std::push_heap(heap.begin(), heap.end(), later);
  };
  for (int32_t i = 0; i + 1 < n; i++) push(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const Entry top = heap.back();
    heap.pop_back();
    if (!alive[top.pos]) continue;
    const int32_t nx = next[top.pos];
    if (nx < 0) continue;
    // Stale entry: the neighbours changed since it was queued.
    auto it = merges.find(pair_key(ids[top.pos], ids[nx]));
    if (it == merges.end() || it->second.id != top.id) continue;
    ids[top.pos] = top.id;
    alive[nx] = 0;
    next[top.pos] = next[nx];
    if (next[nx] >= 0) prev[next[nx]] = top.pos;
    if (prev[top.pos] >= 0) push(prev[top.pos]);
    push(top.pos);
  }
  int32_t w = 0;
  for (int32_t i = 0; i < n; i++)
    if (alive[i]) ids[w++] = ids[i];
  ids.resize(w);
}

Status build_merge_map(const std::vector<std::string>& merges, const StringMap<int32_t>& vocab,
                       MergeMap* out) {
  MergeMap& map = *out;
  map.clear();
  map.reserve(merges.size() * 2);
  std::string joined;
  for (size_t r = 0; r < merges.size(); r++) {
    const std::string& m = merges[r];
    bool found = false;
    for (size_t p = m.find(' '); p != std::string::npos && !found; p = m.find(' ', p + 1)) {
      auto a = vocab.find(std::string_view(m).substr(0, p));
      auto b = vocab.find(std::string_view(m).substr(p + 1));
      if (a == vocab.end() || b == vocab.end()) continue;
      joined.assign(m, 0, p);
      joined.append(m, p + 1);
      auto c = vocab.find(joined);
      if (c == vocab.end()) continue;
      found = true;
      // First occurrence wins, like llama.cpp; duplicates do not occur in real files.
      map.emplace(pair_key(a->second, b->second), MergeInfo{(int32_t)r, c->second});
    }
    if (!found)
      return Error(Code::kFormat,
                   "tokenizer merge {} (\"{}\") does not name two tokens whose "
                   "concatenation is in the vocabulary",
                   r, m);
  }
  return Status::Ok();
}

std::string py_strip(std::string_view s) {
  auto is_space = [](uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
           c == 0x202F || c == 0x205F || c == 0x3000;
  };
  size_t b = 0, e = s.size();
  while (b < e) {
    size_t n = 0;
    if (!utf8_scan(s, b, &n) || !is_space(decode_cp(s, b, n))) break;
    b += n;
  }
  while (e > b) {
    size_t st = e - 1;  // back up to the lead byte of the last character
    while (st > b && ((uint8_t)s[st] & 0xC0) == 0x80 && e - st < 4) st--;
    size_t n = 0;
    if (!utf8_scan(s, st, &n) || st + n != e || !is_space(decode_cp(s, st, n))) break;
    e = st;
  }
  return std::string(s.substr(b, e - b));
}

void TokenizerBase::init_base(const TokenizerData& d) {
  tokens_ = d.tokens;
  types_ = d.token_types;
  if (types_.empty()) types_.assign(tokens_.size(), kNormal);
  vocab_.reserve(tokens_.size() * 2);
  for (size_t i = 0; i < tokens_.size(); i++) vocab_.emplace(tokens_[i], (int32_t)i);
  bos_ = d.bos_id;
  eos_ = d.eos_id;
  unk_ = d.unk_id;
  add_bos_ = d.add_bos;
  add_eos_ = d.add_eos;
  eot_ = d.eot_id;
  if (eot_ < 0) {
    // Chat models end a turn with a dedicated control token even when the file only names eos.
    for (const char* s : {"<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"}) {
      auto it = vocab_.find(std::string_view(s));
      if (it != vocab_.end() && types_[it->second] == kControl) {
        eot_ = it->second;
        break;
      }
    }
  }
  if (eot_ < 0) eot_ = eos_;
  specials_.build(tokens_, types_);
}

}  // namespace tok

// ---------------------------------------------------------------------------------------------
// Factory
// ---------------------------------------------------------------------------------------------
Result<std::unique_ptr<Tokenizer>> Tokenizer::create(const TokenizerData& data) {
  const size_t n = data.tokens.size();
  if (n == 0) return Error(Code::kFormat, "tokenizer has an empty vocabulary");
  if (n > (size_t)INT32_MAX) return Error(Code::kFormat, "tokenizer vocabulary too large");
  if (!data.token_types.empty() && data.token_types.size() != n)
    return Error(Code::kFormat, "tokenizer has {} tokens but {} token types", n,
                 data.token_types.size());
  if (!data.scores.empty() && data.scores.size() != n)
    return Error(Code::kFormat, "tokenizer has {} tokens but {} scores", n, data.scores.size());
  for (auto [name, id] : {std::pair{"bos", data.bos_id},
                          {"eos", data.eos_id},
                          {"eot", data.eot_id},
                          {"unk", data.unk_id},
                          {"pad", data.pad_id}}) {
    if (id < -1 || id >= (int64_t)n)
      return Error(Code::kFormat, "tokenizer {} id {} outside the vocabulary of {}", name, id, n);
  }
  if (data.model == "gpt2") return tok::create_byte_level_bpe(data);
  if (data.model == "llama") return tok::create_spm(data);
  return Error(Code::kUnsupported, "tokenizer model \"{}\" is not supported (gpt2, llama)",
               data.model);
}

}  // namespace sqz
