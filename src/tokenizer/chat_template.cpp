// Built-in renderings of the three chat-template families, reproducing the output of their
// official Jinja sources under transformers' apply_chat_template without a Jinja engine:
//   ChatML  (SmolLM2 / Qwen):  <|im_start|>{role}\n{content}<|im_end|>\n ...
//   [<|im_start|>assistant\n]
//           plus the template's default system turn when the conversation has no system message.
//   Llama-3 (Meta-Llama-3-Instruct): {bos}<|start_header_id|>{role}<|end_header_id|>\n\n
//           {content|trim}<|eot_id|> ... [<|start_header_id|>assistant<|end_header_id|>\n\n]
//   Llama-2 (Llama-2-chat): {bos}[INST] {(<<SYS>>\n{system}\n<</SYS>>\n\n)?user|strip} [/INST]
//           {assistant|strip} {eos} ...
#include <string>

#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_impl.h"

namespace sqz {
namespace {

// The literal system text of a ChatML template's default system turn, or "" when the template
// has none. Looks for "<|im_start|>system" + newline + literal text + "<|im_end|>" where the text
// is part of a string literal (no Jinja expression or concatenation inside).
std::string find_default_system(const std::string& src) {
  const std::string head = "<|im_start|>system";
  for (size_t p = src.find(head); p != std::string::npos; p = src.find(head, p + 1)) {
    size_t b = p + head.size();
    if (src.compare(b, 1, "\n") == 0) {
      b += 1;
    } else if (src.compare(b, 2, "\\n") == 0) {
      b += 2;
    } else {
      continue;
    }
    const size_t e = src.find("<|im_end|>", b);
    if (e == std::string::npos) continue;
    const std::string body = src.substr(b, e - b);
    bool literal = !body.empty();
    for (const char* bad : {"{{", "{%", "}}", "%}", "' +", "+ '", "\" +", "+ \"", "message"})
      literal = literal && body.find(bad) == std::string::npos;
    if (!literal) continue;
    std::string out;  // undo Jinja string-literal escapes
    for (size_t i = 0; i < body.size(); i++) {
      if (body[i] == '\\' && i + 1 < body.size()) {
        const char c = body[++i];
        out += c == 'n' ? '\n' : c == 't' ? '\t' : c;
      } else {
        out += body[i];
      }
    }
    return out;
  }
  return {};
}

std::string apply_chatml(const ChatTemplateInfo& t, const std::vector<ChatMessage>& msgs,
                         bool add_generation_prompt) {
  std::string out;
  for (size_t i = 0; i < msgs.size(); i++) {
    if (i == 0 && msgs[0].role != "system" && !t.default_system.empty())
      out.append("<|im_start|>system\n").append(t.default_system).append("<|im_end|>\n");
    out.append("<|im_start|>").append(msgs[i].role).append("\n");
    out.append(msgs[i].content).append("<|im_end|>\n");
  }
  if (add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

std::string apply_llama3(const std::vector<ChatMessage>& msgs, bool add_generation_prompt,
                         const std::string& bos_text) {
  std::string out;
  for (size_t i = 0; i < msgs.size(); i++) {
    if (i == 0) out += bos_text;
    out.append("<|start_header_id|>").append(msgs[i].role).append("<|end_header_id|>\n\n");
    out.append(tok::py_strip(msgs[i].content)).append("<|eot_id|>");
  }
  if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

std::string apply_llama2(const std::vector<ChatMessage>& msgs, const std::string& bos_text,
                         const std::string& eos_text) {
  // The official template raises on non-alternating turns; we render what it would render for
  // each turn and leave validation to the caller. It has no generation prompt: "[/INST]" is it.
  size_t first = 0;
  const std::string* system = nullptr;
  if (!msgs.empty() && msgs[0].role == "system") {
    system = &msgs[0].content;
    first = 1;
  }
  std::string out;
  for (size_t i = first; i < msgs.size(); i++) {
    std::string content;
    if (i == first && system) content.append("<<SYS>>\n").append(*system).append("\n<</SYS>>\n\n");
    content.append(msgs[i].content);
    if (msgs[i].role == "user") {
      out.append(bos_text).append("[INST] ").append(tok::py_strip(content)).append(" [/INST]");
    } else if (msgs[i].role == "assistant") {
      out.append(" ").append(tok::py_strip(content)).append(" ").append(eos_text);
    }
  }
  return out;
}

}  // namespace

ChatTemplate chat_template_detect(const std::string& jinja_source) {
  if (jinja_source.find("<|im_start|>") != std::string::npos) return ChatTemplate::kChatML;
  if (jinja_source.find("<|start_header_id|>") != std::string::npos) return ChatTemplate::kLlama3;
  if (jinja_source.find("[INST]") != std::string::npos) return ChatTemplate::kLlama2;
  return ChatTemplate::kChatML;
}

ChatTemplateInfo chat_template_parse(const std::string& jinja_source) {
  ChatTemplateInfo info;
  info.kind = chat_template_detect(jinja_source);
  if (info.kind == ChatTemplate::kChatML) info.default_system = find_default_system(jinja_source);
  return info;
}

std::string chat_template_apply(const ChatTemplateInfo& t, const std::vector<ChatMessage>& msgs,
                                bool add_generation_prompt, const std::string& bos_text,
                                const std::string& eos_text) {
  switch (t.kind) {
    case ChatTemplate::kLlama3:
      return apply_llama3(msgs, add_generation_prompt, bos_text);
    case ChatTemplate::kLlama2:
      return apply_llama2(msgs, bos_text, eos_text);
    case ChatTemplate::kChatML:
    default:
      return apply_chatml(t, msgs, add_generation_prompt);
  }
}

std::string chat_template_apply(ChatTemplate t, const std::vector<ChatMessage>& msgs,
                                bool add_generation_prompt, const std::string& bos_text) {
  ChatTemplateInfo info;
  info.kind = t;
  return chat_template_apply(info, msgs, add_generation_prompt, bos_text);
}

}  // namespace sqz
