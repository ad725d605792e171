// Tokenizers built from model-file data: byte-level BPE (GPT-2, Llama-3, Qwen2, SmolLM
// pre-tokenizers) and SentencePiece (Llama-2). Encode/decode match Hugging Face `tokenizers`.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "formats/model_file.h"

namespace sqz {

// encode/decode/token_to_piece are const and safe to call from several threads at once.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  static Result<std::unique_ptr<Tokenizer>> create(const TokenizerData& data);

  // Encode text. add_special: prepend BOS / append EOS as the model's metadata says.
  // parse_special: recognise special/control token strings (e.g. "<|im_start|>") in the text.
  virtual std::vector<int32_t> encode(std::string_view text, bool add_special,
                                      bool parse_special) const = 0;
  // Decode ids to UTF-8 (skip_special drops control tokens). Matches HF decode().
  virtual std::string decode(const std::vector<int32_t>& ids, bool skip_special) const = 0;
  // The bytes one token contributes when streamed (may be a partial UTF-8 sequence).
  virtual std::string token_to_piece(int32_t id) const = 0;

  virtual int32_t n_vocab() const = 0;
  virtual int32_t bos() const = 0;
  virtual int32_t eos() const = 0;
  virtual int32_t eot() const = 0;  // end-of-turn token, or eos when none
  virtual bool is_control(int32_t id) const = 0;
  virtual int32_t token_id(std::string_view piece) const = 0;  // -1 if absent
};

// One chat message.
struct ChatMessage {
  std::string role;  // "system", "user", "assistant"
  std::string content;
};

// Chat templates we implement without a general Jinja engine. Detected from the model's
// template source (tokenizer.chat_template) with ChatML as the fallback.
enum class ChatTemplate { kChatML, kLlama2, kLlama3 };
ChatTemplate chat_template_detect(const std::string& jinja_source);
// Renders messages; add_generation_prompt appends the assistant header.
std::string chat_template_apply(ChatTemplate t, const std::vector<ChatMessage>& msgs,
                                bool add_generation_prompt, const std::string& bos_text);

// What a template source says beyond its family, needed to reproduce its output exactly.
struct ChatTemplateInfo {
  ChatTemplate kind = ChatTemplate::kChatML;
  // ChatML templates that insert a system turn when the conversation does not start with one
  // (SmolLM2: "You are a helpful AI assistant named SmolLM, trained by Hugging Face").
  std::string default_system;
};
ChatTemplateInfo chat_template_parse(const std::string& jinja_source);
// Exact rendering for a parsed template. eos_text closes assistant turns in Llama-2.
std::string chat_template_apply(const ChatTemplateInfo& t, const std::vector<ChatMessage>& msgs,
                                bool add_generation_prompt, const std::string& bos_text,
                                const std::string& eos_text = "</s>");

}  // namespace sqz
