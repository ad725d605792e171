// Byte-level BPE (GGUF tokenizer.ggml.model = "gpt2"), matching Hugging Face `tokenizers`:
//   added/special tokens split first -> pre-tokenizer regex(es) -> bytes mapped to the GPT-2
//   alphabet -> BPE merges by rank -> ids.
// The regexes run on PCRE2 (UTF + UCP) because they need \p{L}/\p{N} classes and lookahead that
// std::regex lacks; they are compiled (and JIT-compiled) once per tokenizer.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cstring>

#include "tokenizer/tokenizer_impl.h"

namespace sqz::tok {
namespace {

// White space exactly as HF's regex engine (Oniguruma) defines \s: the Unicode White_Space
// property. PCRE2 10.42's \s also matches U+180E (MONGOLIAN VOWEL SEPARATOR) and PCRE2's Xsp
// lacks U+0085, so the patterns spell the class out instead of writing \s / \S.
#define SQZ_WS                                                                                     \
  "\\t-\\r\\x20\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{" \
  "3000}"

// GPT-2 (HF ByteLevel use_regex=true):
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
constexpr const char* kGpt2Regex = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" SQZ_WS
                                   "\\p{L}\\p{N}]+|[" SQZ_WS "]+(?![^" SQZ_WS "])|[" SQZ_WS "]+";
// Llama-3 (tiktoken cl100k style):
//   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
//   \s*[\r\n]+|\s+(?!\S)|\s+
constexpr const char* kLlama3Regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^" SQZ_WS
    "\\p{L}\\p{N}]+[\\r\\n]*|[" SQZ_WS "]*[\\r\\n]+|[" SQZ_WS "]+(?![^" SQZ_WS "])|[" SQZ_WS "]+";
// Qwen2: the Llama-3 regex with single digits.
constexpr const char* kQwen2Regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^" SQZ_WS
    "\\p{L}\\p{N}]+[\\r\\n]*|[" SQZ_WS "]*[\\r\\n]+|[" SQZ_WS "]+(?![^" SQZ_WS "])|[" SQZ_WS "]+";
// HF Digits(individual_digits=true) isolates every char::is_numeric() character; \p{N} is the
// same set (up to Unicode-version differences).
constexpr const char* kDigitRegex = "\\p{N}";

#undef SQZ_WS

// A compiled pattern used as HF's Split(behavior=Isolated): matches and the gaps between them
// both become pieces.
class Regex {
 public:
  static Result<Regex> compile(const char* pattern) {
    int err = 0;
    PCRE2_SIZE off = 0;
    // MATCH_INVALID_UTF: arbitrary bytes are legal input; invalid sequences simply never match
    // and end up in gap pieces, which byte-level BPE encodes like any other bytes.
    pcre2_code* code =
        pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED,
                      PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &off, nullptr);
    if (!code) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof(msg));
      return Error(Code::kInternal, "pre-tokenizer regex failed to compile at {}: {}", off,
                   (const char*)msg);
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // failure is fine: the interpreter runs it
    Regex r;
    r.code_ = std::shared_ptr<pcre2_code>(code, pcre2_code_free);
    return r;
  }

  // Appends the pieces of s[begin, end) as [begin, end) offsets.
  void split(std::string_view s, size_t begin, size_t end, pcre2_match_data* md,
             std::vector<std::pair<size_t, size_t>>& out) const {
    size_t last = begin, pos = begin;
    const auto* subject = (PCRE2_SPTR)s.data();
    while (pos < end) {
      int rc = pcre2_match(code_.get(), subject, end, pos, 0, md, nullptr);
      if (rc < 0 && rc != PCRE2_ERROR_NOMATCH) {
        // JIT stack exhaustion on a pathological input: retry with the heap-based interpreter.
        rc = pcre2_match(code_.get(), subject, end, pos, PCRE2_NO_JIT, md, nullptr);
      }
      if (rc < 0) break;  // no further match (or an engine limit): the rest is one gap piece
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      size_t ms = ov[0], me = ov[1];
      if (me == ms) {  // cannot happen with our patterns; never loop forever
        me = ms + utf8_char_len(s, ms);
        if (me > end) me = end;
      }
      if (ms > last) out.emplace_back(last, ms);
      out.emplace_back(ms, me);
      last = pos = me;
    }
    if (last < end) out.emplace_back(last, end);
  }

 private:
  std::shared_ptr<pcre2_code> code_;
};

struct PreSpec {
  std::vector<const char*> regexes;  // applied in sequence, each splitting the previous pieces
  bool ignore_merges = false;        // HF BPE ignore_merges (Llama-3)
};

Result<PreSpec> pre_spec(const std::string& pre) {
  // Names as written by llama.cpp's convert_hf_to_gguf.py (tokenizer.ggml.pre).
  if (pre.empty() || pre == "default" || pre == "gpt2" || pre == "gpt-2" || pre == "mpt" ||
      pre == "olmo")
    return PreSpec{{kGpt2Regex}, false};
  if (pre == "smollm" || pre == "starcoder" || pre == "refact" || pre == "command-r" ||
      pre == "codeshell" || pre == "exaone" || pre == "minerva")
    return PreSpec{{kDigitRegex, kGpt2Regex}, false};
  if (pre == "llama-bpe" || pre == "llama3") return PreSpec{{kLlama3Regex}, true};
  if (pre == "dbrx" || pre == "smaug-bpe") return PreSpec{{kLlama3Regex}, false};
  if (pre == "qwen2" || pre == "stablelm2" || pre == "deepseek-r1-qwen")
    return PreSpec{{kQwen2Regex}, false};
  return Error(Code::kUnsupported,
               "byte-level BPE pre-tokenizer \"{}\" is not supported (supported: default/gpt2, "
               "smollm, llama-bpe, qwen2 and their aliases)",
               pre);
}

class ByteLevelBpe final : public TokenizerBase {
 public:
  Status init(const TokenizerData& d) {
    init_base(d);
    SQZ_ASSIGN_OR_RETURN(PreSpec spec, pre_spec(d.pre));
    ignore_merges_ = spec.ignore_merges;
    for (const char* p : spec.regexes) {
      SQZ_ASSIGN_OR_RETURN(Regex r, Regex::compile(p));
      regexes_.push_back(std::move(r));
    }
    SQZ_RETURN_IF_ERROR(build_merge_map(d.merges, vocab_, &merges_));
    const auto& b2u = byte_to_unicode();
    std::string s;
    for (int b = 0; b < 256; b++) {
      s.clear();
      append_utf8(s, b2u[b]);
      auto it = vocab_.find(s);
      byte_id_[b] = it == vocab_.end() ? -1 : it->second;
    }
    // Bytes each token stands for. Like HF's ByteLevel decoder, a token with a character outside
    // the byte alphabet (e.g. an added token containing a space) contributes its raw UTF-8.
    bytes_.resize(tokens_.size());
    for (size_t i = 0; i < tokens_.size(); i++) {
      const std::string& t = tokens_[i];
      std::string out;
      bool ok = true;
      for (size_t k = 0; k < t.size() && ok;) {
        const size_t n = utf8_valid_len(t, k);
        if (n == 0) {
          ok = false;
          break;
        }
        uint32_t cp = (uint8_t)t[k];
        if (n > 1) {
          cp &= 0x7F >> n;
          for (size_t j = 1; j < n; j++) cp = (cp << 6) | ((uint8_t)t[k + j] & 0x3F);
        }
        const int b = unicode_to_byte(cp);
        if (b < 0) ok = false;
        out += (char)b;
        k += n;
      }
      bytes_[i] = ok ? std::move(out) : t;
    }
    return Status::Ok();
  }

  std::vector<int32_t> encode(std::string_view text, bool add_special,
                              bool parse_special) const override {
    std::vector<int32_t> out;
    out.reserve(text.size() / 3 + 4);
    if (add_special && add_bos_ && bos_ >= 0) out.push_back(bos_);
    pcre2_match_data* md = pcre2_match_data_create(1, nullptr);
    Scratch sc;
    for (const Fragment& f : specials_.split(text, parse_special)) {
      if (f.id >= 0) {
        out.push_back(f.id);
      } else {
        encode_text(text, f.begin, f.begin + f.len, md, sc, out);
      }
    }
    pcre2_match_data_free(md);
    if (add_special && add_eos_ && eos_ >= 0) out.push_back(eos_);
    return out;
  }

  std::string decode(const std::vector<int32_t>& ids, bool skip_special) const override {
    std::string bytes;
    for (int32_t id : ids) {
      if (id < 0 || id >= n_vocab()) continue;  // HF drops ids it cannot map
      if (skip_special && is_skippable(id)) continue;
      bytes += bytes_[id];
    }
    return utf8_lossy(bytes);
  }

  std::string token_to_piece(int32_t id) const override {
    return id >= 0 && id < n_vocab() ? bytes_[id] : std::string();
  }

 private:
  struct Scratch {
    std::vector<std::pair<size_t, size_t>> a, b;  // piece offsets, ping-pong between regexes
    std::vector<int32_t> ids;
    std::string mapped;
  };

  void encode_text(std::string_view text, size_t begin, size_t end, pcre2_match_data* md,
                   Scratch& sc, std::vector<int32_t>& out) const {
    sc.a.clear();
    sc.a.emplace_back(begin, end);
    for (const Regex& re : regexes_) {
      sc.b.clear();
      for (auto [s, e] : sc.a) re.split(text, s, e, md, sc.b);
      std::swap(sc.a, sc.b);
    }
    for (auto [s, e] : sc.a) encode_piece(text.substr(s, e - s), sc, out);
  }

  void encode_piece(std::string_view piece, Scratch& sc, std::vector<int32_t>& out) const {
    if (ignore_merges_) {
      // HF BPE ignore_merges: a whole pre-token that is itself a vocabulary entry is emitted as
      // is, even where the merge sequence would have split it differently.
      const auto& b2u = byte_to_unicode();
      sc.mapped.clear();
      for (char c : piece) append_utf8(sc.mapped, b2u[(uint8_t)c]);
      auto it = vocab_.find(sc.mapped);
      if (it != vocab_.end() && types_[it->second] == kNormal) {
        out.push_back(it->second);
        return;
      }
    }
    sc.ids.clear();
    for (char c : piece) {
      // A byte without a vocabulary entry is dropped, as HF does when the BPE has no unk_token
      // (SmolLM2 lacks a few control bytes); its neighbours then become adjacent.
      const int32_t id = byte_id_[(uint8_t)c];
      if (id >= 0) sc.ids.push_back(id);
    }
    bpe_merge(sc.ids, merges_);
    out.insert(out.end(), sc.ids.begin(), sc.ids.end());
  }

  std::vector<Regex> regexes_;
  bool ignore_merges_ = false;
  MergeMap merges_;
  int32_t byte_id_[256];            // token id of each byte's single-character token, or -1
  std::vector<std::string> bytes_;  // [n_vocab] bytes each token decodes to
};

}  // namespace

Result<std::unique_ptr<Tokenizer>> create_byte_level_bpe(const TokenizerData& data) {
  auto t = std::make_unique<ByteLevelBpe>();
  SQZ_RETURN_IF_ERROR(t->init(data));
  return std::unique_ptr<Tokenizer>(std::move(t));
}

}  // namespace sqz::tok
