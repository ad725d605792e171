// Conversion of a Hugging Face tokenizer.json (+ tokenizer_config.json) into TokenizerData, so a
// safetensors model directory gets the same Tokenizer as the equivalent GGUF.
#pragma once

#include <string>

#include "core/status.h"
#include "formats/model_file.h"

namespace sqz {

// Supported tokenizer.json shapes (model.type must be "BPE"):
//   - byte-level BPE: a ByteLevel pre-tokenizer -> model "gpt2", with `pre` detected from the
//     pre-tokenizer: ByteLevel(use_regex) -> "gpt2"; Sequence[Digits(individual_digits),
//     ByteLevel] -> "smollm"; Sequence[Split(Llama-3 regex), ByteLevel] -> "llama-bpe" (or
//     "dbrx" when model.ignore_merges is false); Sequence[Split(Qwen2 regex), ByteLevel] ->
//     "qwen2". An NFC normalizer (Qwen2) is accepted but not applied.
//   - SentencePiece-style BPE: Replace(" ", "▁") normalizer (+ Prepend("▁")) or a Metaspace
//     pre-tokenizer -> model "llama". Merges are kept (so the tokenizer reproduces HF's BPE by
//     rank exactly) and scores are derived as -(rank of the first merge producing the token), so
//     the sentencepiece score algorithm reproduces the merges when the merges are dropped
//     (e.g. after writing a GGUF); multi-character pieces no merge produces get -inf.
// added_tokens become control (special) or user-defined (non-special) tokens; the model's
// unk_token becomes the unknown token; "<0xNN>" pieces of a byte_fallback model are byte tokens.
// bos/eos/pad/add_bos/add_eos/chat_template come from tokenizer_config.json (which may be empty;
// then bos and add_bos/add_eos come from a TemplateProcessing post-processor).
// Errors: kFormat for malformed JSON or inconsistent ids, kUnsupported for other tokenizer kinds.
Result<TokenizerData> tokenizer_data_from_hf_json(const std::string& tokenizer_json,
                                                  const std::string& tokenizer_config_json);

}  // namespace sqz
