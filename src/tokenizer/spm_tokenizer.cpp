// SentencePiece-style BPE (GGUF tokenizer.ggml.model = "llama"), as used by Llama-2.
//
// Encoding of one text segment (the text between special tokens):
//   "▁" is prepended when add_space_prefix (HF legacy Llama: Prepend("▁") normalizer on every
//   segment; llama.cpp/sentencepiece: the dummy prefix), spaces become "▁", then either
//   - scores mode (GGUF files; sentencepiece's own algorithm): starting from UTF-8 characters,
//     repeatedly merge the adjacent pair whose concatenation is a vocabulary piece with the
//     highest score (leftmost on ties), or
//   - merges mode (TokenizerData::merges present, e.g. from a HF tokenizer.json): HF's BPE with
//     byte_fallback, merging pairs by merge rank.
//   Characters without a piece fall back to <0xNN> byte tokens, else to <unk>.
// Decoding follows HF's Llama decoder: "▁" -> " ", byte tokens assembled into UTF-8, one leading
// space stripped when add_space_prefix.
#include <cmath>
#include <queue>

#include "tokenizer/tokenizer_impl.h"

namespace sqz::tok {
namespace {

constexpr std::string_view kSpace = "\xE2\x96\x81";  // U+2581 "▁"

// Byte value of a "<0xNN>" token, -1 for any other text.
int parse_byte_token(std::string_view t) {
  if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return -1;
  int v = 0;
  for (int k = 3; k < 5; k++) {
    const char c = t[k];
    int d = (c >= '0' && c <= '9')   ? c - '0'
            : (c >= 'A' && c <= 'F') ? c - 'A' + 10
            : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                                     : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(s.size() + s.size() / 4);
  size_t i = 0;
  while (true) {
    const size_t p = s.find(from, i);
    if (p == std::string_view::npos) break;
    out.append(s.substr(i, p - i));
    out.append(to);
    i = p + from.size();
  }
  out.append(s.substr(i));
  return out;
}

class Spm final : public TokenizerBase {
 public:
  Status init(const TokenizerData& d) {
    init_base(d);
    scores_ = d.scores;
    if (scores_.empty()) scores_.assign(tokens_.size(), 0.0f);
    add_space_prefix_ = d.add_space_prefix;
    for (int b = 0; b < 256; b++) byte_tok_[b] = -1;
    for (size_t i = 0; i < tokens_.size(); i++) {
      const int b = parse_byte_token(tokens_[i]);
      if (b >= 0 && (types_[i] == kByte || types_[i] == kNormal) && byte_tok_[b] < 0)
        byte_tok_[b] = (int32_t)i;
      // sentencepiece merges only into normal and user-defined pieces; control, unknown, byte
      // and unused pieces are never produced from text.
      if (types_[i] == kNormal || types_[i] == kUserDefined)
        pieces_.emplace(tokens_[i], (int32_t)i);
    }
    if (!d.merges.empty()) {
      SQZ_RETURN_IF_ERROR(build_merge_map(d.merges, vocab_, &merges_));
      use_merges_ = true;
    }
    return Status::Ok();
  }

  std::vector<int32_t> encode(std::string_view text, bool add_special,
                              bool parse_special) const override {
    std::vector<int32_t> out;
    out.reserve(text.size() / 2 + 4);
    if (add_special && add_bos_ && bos_ >= 0) out.push_back(bos_);
    for (const Fragment& f : specials_.split(text, parse_special)) {
      if (f.id >= 0) {
        out.push_back(f.id);
        continue;
      }
      // Every text segment is the first one or follows a special token, so HF (Prepend on each
      // segment) and llama.cpp (prefix after a special) agree: always prefix.
      std::string s = add_space_prefix_ ? std::string(kSpace) : std::string();
      s += replace_all(text.substr(f.begin, f.len), " ", kSpace);
      if (use_merges_) {
        encode_merges(s, out);
      } else {
        encode_scores(s, out);
      }
    }
    if (add_special && add_eos_ && eos_ >= 0) out.push_back(eos_);
    return out;
  }

  std::string decode(const std::vector<int32_t>& ids, bool skip_special) const override {
    std::string out, pending;
    // HF ByteFallback decoder: a run of byte tokens becomes its UTF-8 string, or one U+FFFD per
    // byte when the run is not valid UTF-8.
    auto flush = [&] {
      if (pending.empty()) return;
      if (utf8_is_valid(pending)) {
        out += pending;
      } else {
        for (size_t k = 0; k < pending.size(); k++) out += "\xEF\xBF\xBD";
      }
      pending.clear();
    };
    for (int32_t id : ids) {
      if (id < 0 || id >= n_vocab()) continue;
      if (skip_special && is_skippable(id)) continue;
      const int b = parse_byte_token(tokens_[id]);
      if (b >= 0) {
        pending += (char)b;
        continue;
      }
      flush();
      out += replace_all(tokens_[id], kSpace, " ");
    }
    flush();
    if (add_space_prefix_ && !out.empty() && out[0] == ' ') out.erase(0, 1);
    return out;
  }

  std::string token_to_piece(int32_t id) const override {
    if (id < 0 || id >= n_vocab()) return {};
    const int b = parse_byte_token(tokens_[id]);
    if (b >= 0) return std::string(1, (char)b);
    return replace_all(tokens_[id], kSpace, " ");
  }

 private:
  // Appends the tokens for one character that has no piece of its own.
  void fallback(std::string_view ch, std::vector<int32_t>& out, bool& last_unk) const {
    bool all = true;
    for (char c : ch) all = all && byte_tok_[(uint8_t)c] >= 0;
    if (all) {
      for (char c : ch) out.push_back(byte_tok_[(uint8_t)c]);
      last_unk = false;
    } else if (unk_ >= 0 && !last_unk) {  // consecutive unknowns fuse (HF fuse_unk)
      out.push_back(unk_);
      last_unk = true;
    }
  }

  void encode_scores(const std::string& s, std::vector<int32_t>& out) const {
    struct Sym {
      size_t begin, len;
      int32_t prev, next;
    };
    std::vector<Sym> sym;
    for (size_t i = 0; i < s.size();) {
      const size_t n = utf8_char_len(s, i);
      sym.push_back({i, n, (int32_t)sym.size() - 1, (int32_t)sym.size() + 1});
      i += n;
    }
    if (sym.empty()) return;
    sym.back().next = -1;
    struct Bigram {
      float score;
      int32_t left, right;
      size_t size;
    };
    // Highest score first; leftmost on ties (sentencepiece / llama.cpp order).
    auto cmp = [](const Bigram& a, const Bigram& b) {
      return a.score < b.score || (a.score == b.score && a.left > b.left);
    };
    std::priority_queue<Bigram, std::vector<Bigram>, decltype(cmp)> q(cmp);
    auto try_add = [&](int32_t l, int32_t r) {
      if (l < 0 || r < 0) return;
      const size_t size = sym[l].len + sym[r].len;
      auto it = pieces_.find(std::string_view(s).substr(sym[l].begin, size));
      if (it == pieces_.end()) return;
      const float sc = scores_[it->second];
      if (std::isinf(sc) && sc < 0) return;  // -inf: a piece no merge produces (see hf_json)
      q.push({sc, l, r, size});
    };
    for (int32_t i = 0; i + 1 < (int32_t)sym.size(); i++) try_add(i, i + 1);
    while (!q.empty()) {
      const Bigram bg = q.top();
      q.pop();
      Sym& l = sym[bg.left];
      Sym& r = sym[bg.right];
      if (l.len == 0 || r.len == 0 || l.len + r.len != bg.size) continue;  // stale
      l.len += r.len;
      r.len = 0;
      l.next = r.next;
      if (r.next >= 0) sym[r.next].prev = bg.left;
      try_add(l.prev, bg.left);
      try_add(bg.left, l.next);
    }
    bool last_unk = false;
    for (int32_t i = 0; i >= 0; i = sym[i].next) {
      const std::string_view piece = std::string_view(s).substr(sym[i].begin, sym[i].len);
      auto it = pieces_.find(piece);
      if (it != pieces_.end()) {
        out.push_back(it->second);
        last_unk = false;
      } else {
        fallback(piece, out, last_unk);
      }
    }
  }

  void encode_merges(const std::string& s, std::vector<int32_t>& out) const {
    // HF BPE::merge_word: one symbol per character (vocabulary lookup, else byte fallback, else
    // fused unk), then merges by rank.
    std::vector<int32_t> ids;
    bool last_unk = false;
    for (size_t i = 0; i < s.size();) {
      const size_t n = utf8_char_len(s, i);
      const std::string_view ch = std::string_view(s).substr(i, n);
      auto it = vocab_.find(ch);
      if (it != vocab_.end()) {
        ids.push_back(it->second);
        last_unk = false;
      } else {
        fallback(ch, ids, last_unk);
      }
      i += n;
    }
    bpe_merge(ids, merges_);
    out.insert(out.end(), ids.begin(), ids.end());
  }

  std::vector<float> scores_;  // [n_vocab]
  StringMap<int32_t> pieces_;  // mergeable pieces: text -> id
  int32_t byte_tok_[256];      // id of <0xNN>, or -1
  MergeMap merges_;
  bool use_merges_ = false;
  bool add_space_prefix_ = false;
};

}  // namespace

Result<std::unique_ptr<Tokenizer>> create_spm(const TokenizerData& data) {
  auto t = std::make_unique<Spm>();
  SQZ_RETURN_IF_ERROR(t->init(data));
  return std::unique_ptr<Tokenizer>(std::move(t));
}

}  // namespace sqz::tok
