// Hugging Face tokenizer.json -> TokenizerData (see hf_json.h for the supported shapes).
#include "tokenizer/hf_json.h"

#include <fmt/ranges.h>

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "tokenizer/tokenizer_impl.h"

namespace sqz {
namespace {

using json = nlohmann::json;

// The Split regexes of the real Llama-3 and Qwen2 tokenizer.json files.
constexpr const char* kLlama3Split =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
constexpr const char* kQwen2Split =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
constexpr std::string_view kMetaspace = "\xE2\x96\x81";  // "▁"
// Vocabulary ids beyond this are treated as corrupt rather than allocated.
constexpr int64_t kMaxVocab = 16 << 20;

std::string type_of(const json& j) {
  return j.is_object() && j.contains("type") && j["type"].is_string() ? j["type"].get<std::string>()
                                                                      : std::string();
}

// Flattens nested Sequence pre-tokenizers / normalizers into their steps.
void flatten(const json& j, const char* list_key, std::vector<json>& out) {
  if (j.is_null()) return;
  if (type_of(j) == "Sequence" && j.contains(list_key) && j[list_key].is_array()) {
    for (const json& s : j[list_key]) flatten(s, list_key, out);
  } else {
    out.push_back(j);
  }
}

// A token string from tokenizer_config.json: "tok" or {"content": "tok", ...}.
std::string config_token(const json& cfg, const char* key) {
  if (!cfg.is_object() || !cfg.contains(key)) return {};
  const json& v = cfg[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string())
    return v["content"].get<std::string>();
  return {};
}

Result<TokenizerData> convert(const json& j, const json& cfg) {
  TokenizerData d;
  if (!j.is_object() || !j.contains("model") || !j["model"].is_object())
    return Error(Code::kFormat, "tokenizer.json has no \"model\" object");
  const json& model = j["model"];
  if (type_of(model) != "BPE")
    return Error(Code::kUnsupported, "tokenizer.json model type \"{}\" is not supported (BPE only)",
                 type_of(model));
  if (!model.contains("vocab") || !model["vocab"].is_object())
    return Error(Code::kFormat, "tokenizer.json model.vocab is not an object");

  // ---- vocabulary: model.vocab plus added_tokens ----
  struct Added {
    int64_t id;
    std::string content;
    bool special;
  };
  std::vector<Added> added;
  if (j.contains("added_tokens") && j["added_tokens"].is_array()) {
    for (const json& a : j["added_tokens"]) {
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() ||
          !a.contains("content") || !a["content"].is_string())
        return Error(Code::kFormat, "tokenizer.json added_tokens entry lacks id/content");
      added.push_back(
          {a["id"].get<int64_t>(), a["content"].get<std::string>(), a.value("special", false)});
    }
  }
  int64_t n = 0;
  for (auto it = model["vocab"].begin(); it != model["vocab"].end(); ++it) {
    if (!it.value().is_number_integer())
      return Error(Code::kFormat, "tokenizer.json vocab entry \"{}\" has a non-integer id",
                   it.key());
    n = std::max(n, it.value().get<int64_t>() + 1);
  }
  for (const Added& a : added) n = std::max(n, a.id + 1);
  if (n <= 0 || n > kMaxVocab)
    return Error(Code::kFormat, "tokenizer.json vocabulary size {} is out of range", n);
  d.tokens.assign(n, std::string());
  d.token_types.assign(n, tok::kNormal);
  std::vector<uint8_t> filled(n, 0);
  for (auto it = model["vocab"].begin(); it != model["vocab"].end(); ++it) {
    const int64_t id = it.value().get<int64_t>();
    if (id < 0) return Error(Code::kFormat, "tokenizer.json vocab id {} is negative", id);
    d.tokens[id] = it.key();
    filled[id] = 1;
  }
  for (const Added& a : added) {
    if (a.id < 0) return Error(Code::kFormat, "tokenizer.json added token id {} is negative", a.id);
    d.tokens[a.id] = a.content;
    d.token_types[a.id] = a.special ? tok::kControl : tok::kUserDefined;
    filled[a.id] = 1;
  }
  for (int64_t i = 0; i < n; i++) {
    if (!filled[i]) {  // holes in the id space: placeholders that can never be produced
      d.tokens[i] = fmt::format("[sqz_unused_{}]", i);
      d.token_types[i] = tok::kUnused;
    }
  }
  tok::StringMap<int32_t> ids;
  for (int64_t i = n - 1; i >= 0; i--) ids[d.tokens[i]] = (int32_t)i;  // lowest id wins
  auto id_of = [&](const std::string& s) -> int32_t {
    auto it = ids.find(s);
    return it == ids.end() ? -1 : it->second;
  };

  // ---- merges ("a b" strings, or [a, b] pairs in newer files) ----
  if (model.contains("merges") && model["merges"].is_array()) {
    for (const json& m : model["merges"]) {
      if (m.is_string()) {
        d.merges.push_back(m.get<std::string>());
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        d.merges.push_back(m[0].get<std::string>() + " " + m[1].get<std::string>());
      } else {
        return Error(Code::kFormat, "tokenizer.json merge {} is neither \"a b\" nor [a, b]",
                     d.merges.size());
      }
    }
  }

  // ---- which tokenizer is it ----
  std::vector<json> pres, norms;
  if (j.contains("pre_tokenizer")) flatten(j["pre_tokenizer"], "pretokenizers", pres);
  if (j.contains("normalizer")) flatten(j["normalizer"], "normalizers", norms);
  bool byte_level = false, metaspace = false, prepend = false;
  for (const json& p : pres) {
    byte_level |= type_of(p) == "ByteLevel";
    if (type_of(p) == "Metaspace") {
      metaspace = true;
      const std::string scheme = p.value("prepend_scheme", std::string());
      prepend |= scheme.empty() ? p.value("add_prefix_space", true) : scheme != "never";
    }
  }
  for (const json& nm : norms) {
    const std::string t = type_of(nm);
    if (t == "Prepend" && nm.value("prepend", std::string()) == kMetaspace) prepend = true;
    if (t == "Replace" && nm.contains("content") && nm["content"] == kMetaspace) metaspace = true;
    if (t != "Prepend" && t != "Replace" && t != "NFC")
      return Error(Code::kUnsupported, "tokenizer.json normalizer \"{}\" is not supported", t);
  }

  if (byte_level) {
    d.model = "gpt2";
    std::vector<std::string> shape;
    for (const json& p : pres) shape.push_back(type_of(p));
    const json& last = pres.back();
    if (type_of(last) != "ByteLevel" || last.value("add_prefix_space", false))
      return Error(Code::kUnsupported,
                   "byte-level pre-tokenizer must end in ByteLevel without "
                   "add_prefix_space");
    const bool use_regex = last.value("use_regex", true);
    if (pres.size() == 1 && use_regex) {
      d.pre = "gpt2";
    } else if (pres.size() == 2 && type_of(pres[0]) == "Digits" &&
               pres[0].value("individual_digits", false) && use_regex) {
      d.pre = "smollm";
    } else if (pres.size() == 2 && type_of(pres[0]) == "Split" && !use_regex &&
               pres[0].contains("pattern") && pres[0]["pattern"].is_object() &&
               pres[0]["pattern"].contains("Regex") &&
               pres[0].value("behavior", std::string()) == "Isolated" &&
               !pres[0].value("invert", false)) {
      const std::string re = pres[0]["pattern"]["Regex"].get<std::string>();
      if (re == kLlama3Split) {
        d.pre = model.value("ignore_merges", false) ? "llama-bpe" : "dbrx";
      } else if (re == kQwen2Split) {
        d.pre = "qwen2";
      } else {
        return Error(Code::kUnsupported, "byte-level Split regex is not a known pre-tokenizer: {}",
                     re);
      }
    } else {
      return Error(Code::kUnsupported, "byte-level pre-tokenizer sequence [{}] is not supported",
                   fmt::join(shape, ", "));
    }
  } else if (metaspace) {
    d.model = "llama";
    d.pre = "default";
    d.add_space_prefix = prepend;
    const bool byte_fallback = model.value("byte_fallback", false);
    for (int64_t i = 0; i < n; i++) {
      const std::string& t = d.tokens[i];
      if (byte_fallback && d.token_types[i] == tok::kNormal && t.size() == 6 &&
          t.compare(0, 3, "<0x") == 0 && t[5] == '>')
        d.token_types[i] = tok::kByte;
    }
    // Scores: -(rank of the first merge producing the token), so the highest-score merge of the
    // sentencepiece algorithm is the lowest-rank merge of HF's BPE.
    d.scores.assign(n, 0.0f);
    std::vector<uint8_t> produced(n, 0);
    for (size_t r = 0; r < d.merges.size(); r++) {
      const std::string& m = d.merges[r];
      for (size_t p = m.find(' '); p != std::string::npos; p = m.find(' ', p + 1)) {
        if (id_of(m.substr(0, p)) < 0 || id_of(m.substr(p + 1)) < 0) continue;
        const int32_t c = id_of(m.substr(0, p) + m.substr(p + 1));
        if (c >= 0 && !produced[c]) {
          produced[c] = 1;
          d.scores[c] = -(float)r;
        }
        break;
      }
    }
    for (int64_t i = 0; i < n; i++) {
      if (produced[i] || d.token_types[i] != tok::kNormal) continue;
      const std::string& t = d.tokens[i];
      if (!t.empty() && tok::utf8_char_len(t, 0) < t.size())
        d.scores[i] = -std::numeric_limits<float>::infinity();  // multi-char, never merged into
    }
  } else {
    return Error(Code::kUnsupported,
                 "tokenizer.json is neither byte-level BPE nor "
                 "SentencePiece-style BPE (no ByteLevel / Metaspace / \"▁\" replacement)");
  }

  // ---- unknown token ----
  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    d.unk_id = id_of(model["unk_token"].get<std::string>());
    if (d.unk_id >= 0) d.token_types[d.unk_id] = tok::kUnknown;
  }

  // ---- post-processor: which specials wrap a single sequence ----
  int32_t tpl_first = -1, tpl_last = -1;
  if (j.contains("post_processor") && type_of(j["post_processor"]) == "TemplateProcessing" &&
      j["post_processor"].contains("single") && j["post_processor"]["single"].is_array()) {
    const json& single = j["post_processor"]["single"];
    auto special_id = [&](const json& item) -> int32_t {
      if (!item.is_object() || !item.contains("SpecialToken")) return -1;
      const json& st = item["SpecialToken"];
      return st.contains("id") && st["id"].is_string() ? id_of(st["id"].get<std::string>()) : -1;
    };
    if (!single.empty()) {
      tpl_first = special_id(single.front());
      tpl_last = single.size() > 1 ? special_id(single.back()) : -1;
    }
  }

  // ---- tokenizer_config.json ----
  auto lookup = [&](const char* key) -> int32_t {
    const std::string s = config_token(cfg, key);
    return s.empty() ? -1 : id_of(s);
  };
  d.bos_id = lookup("bos_token");
  d.eos_id = lookup("eos_token");
  d.pad_id = lookup("pad_token");
  if (d.unk_id < 0) d.unk_id = lookup("unk_token");
  if (d.bos_id < 0) d.bos_id = tpl_first;
  if (d.eos_id < 0) {
    for (const char* s : {"</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>"}) {
      if ((d.eos_id = id_of(s)) >= 0) break;
    }
  }
  const bool has_cfg = cfg.is_object();
  if (has_cfg && cfg.contains("add_bos_token") && cfg["add_bos_token"].is_boolean()) {
    d.add_bos = cfg["add_bos_token"].get<bool>();
  } else {
    d.add_bos = tpl_first >= 0;
    if (tpl_first >= 0) d.bos_id = tpl_first;
  }
  if (has_cfg && cfg.contains("add_eos_token") && cfg["add_eos_token"].is_boolean()) {
    d.add_eos = cfg["add_eos_token"].get<bool>();
  } else {
    d.add_eos = tpl_last >= 0 && tpl_last == d.eos_id;
  }
  if (has_cfg && cfg.contains("chat_template")) {
    const json& ct = cfg["chat_template"];
    if (ct.is_string()) {
      d.chat_template = ct.get<std::string>();
    } else if (ct.is_array()) {  // [{"name": "default", "template": ...}, ...]
      for (const json& e : ct) {
        if (!e.is_object() || !e.contains("template") || !e["template"].is_string()) continue;
        if (d.chat_template.empty() || e.value("name", std::string()) == "default")
          d.chat_template = e["template"].get<std::string>();
      }
    }
  }
  return d;
}

}  // namespace

Result<TokenizerData> tokenizer_data_from_hf_json(const std::string& tokenizer_json,
                                                  const std::string& tokenizer_config_json) {
  const json j = json::parse(tokenizer_json, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Error(Code::kFormat, "tokenizer.json is not valid JSON");
  json cfg;  // null when absent
  if (!tokenizer_config_json.empty()) {
    cfg = json::parse(tokenizer_config_json, nullptr, false);
    if (cfg.is_discarded()) return Error(Code::kFormat, "tokenizer_config.json is not valid JSON");
  }
  // nlohmann throws on type mismatches we did not anticipate; keep them inside the library.
  try {
    return convert(j, cfg);
  } catch (const std::exception& e) {
    return Error(Code::kFormat, "tokenizer.json: unexpected structure: {}", e.what());
  }
}

}  // namespace sqz
