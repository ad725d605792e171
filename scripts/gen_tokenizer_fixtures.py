#!/usr/bin/env python3
"""Generates the tokenizer golden fixtures in tests/data/tokenizer/.

Every expected id / string in those files comes from Hugging Face `tokenizers` / `transformers`
(or `sentencepiece` itself), never from sqz, so the C++ tests compare against an independent
implementation.

Fixtures:
  smollm2.golden.json       The default model's tokenizer (models/SmolLM2-135M-Instruct.Q4_1.gguf).
                            Built as a `tokenizers` BPE from the GGUF's own vocab/merges with the
                            pre-tokenizer of the real HF SmolLM2 tokenizer.json:
                            Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False,
                            use_regex=True)], decoder ByteLevel, the 17 control tokens as special
                            added tokens (normalized=False). We do NOT use
                            AutoTokenizer.from_pretrained(gguf_file=...): transformers' GGUF converter
                            drops the Digits step (it emits a plain ByteLevel pre-tokenizer), so e.g.
                            " ½" becomes "ĠÂ","½" instead of "Ġ","Â½", and "\n\n4" splits its
                            newlines differently from the real model. The script prints how many
                            texts differ between the two.
                            Chat-template goldens come from transformers' apply_chat_template with the
                            GGUF's own template (tokenizer.chat_template).
  <flavour>.tokenizer.json  Tiny tokenizers trained here (BpeTrainer / sentencepiece) on Python's
                            Debian HTML docs: gpt2 (ByteLevel regex), llama3 (Llama-3 Split regex,
                            ignore_merges), qwen2 (Qwen2 Split regex, NFC), spm (sentencepiece BPE
                            with byte fallback, converted the way transformers' LlamaConverter does).
  <flavour>.golden.json     Encode ids / decode strings from `tokenizers` for the texts below.
  spm.model.json            The sentencepiece model's pieces/scores/types as a GGUF "llama" vocab
                            would carry them, with ids from sentencepiece's own encoder.
  chat_templates.golden.json apply_chat_template output for ChatML (SmolLM2), Llama-2, Llama-3.

Run:  python3 scripts/gen_tokenizer_fixtures.py [--model models/SmolLM2-135M-Instruct.Q4_1.gguf]
"""

import argparse
import glob
import html.parser
import json
import os
import re
import sys
import tempfile
import unicodedata

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers as pre
from tokenizers import processors, trainers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "data", "tokenizer")
DOCS = "/usr/share/doc/python3.11/html"

# Pre-tokenizer regexes exactly as they appear in the real tokenizer.json files.
LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+")


# ---------------------------------------------------------------------------------------------
# Text sources
# ---------------------------------------------------------------------------------------------
class _TextOnly(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.parts, self.skip = [], 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self.skip += 1

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self.skip -= 1

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)


def html_text(path):
    p = _TextOnly()
    with open(path, encoding="utf-8") as f:
        p.feed(f.read())
    text = "".join(p.parts)
    # Collapse the blank-line noise of the HTML layout but keep indentation inside lines.
    return re.sub(r"\n\s*\n+", "\n\n", text).strip()


def training_corpus():
    files = sorted(glob.glob(os.path.join(DOCS, "tutorial", "*.html")) +
                   glob.glob(os.path.join(DOCS, "library", "std*.html")) +
                   glob.glob(os.path.join(DOCS, "library", "re.html")) +
                   glob.glob(os.path.join(DOCS, "howto", "*.html")))
    if not files:
        sys.exit(f"no training text under {DOCS}")
    return [html_text(f) for f in files]


def doc_paragraph(n_chars):
    """A Debian doc excerpt of about n_chars characters (the Python tutorial's control-flow page)."""
    text = html_text(os.path.join(DOCS, "tutorial", "controlflow.html"))
    start = text.find("4.1.")
    text = text[start if start >= 0 else 0:]
    cut = text.rfind("\n", 0, n_chars)
    return text[:cut if cut > n_chars // 2 else n_chars]


def long_document(n_chars):
    parts = [html_text(os.path.join(DOCS, "tutorial", f)) for f in
             ("datastructures.html", "classes.html", "errors.html", "inputoutput.html")]
    text = "\n\n".join(parts)
    return text[:n_chars]


CODE_PY = '''import os\n\n\nclass Foo(object):\n    """Docstring."""\n\n    def __init__(self, x=1_000):\n\tself.x = x  # tab-indented\n        if x >= 10 and not x != 3:\n            return {"a": [1, 2.5e-3], 'b': None}\n\n\ndef main() -> int:\n    print(f"{os.getcwd()!r:>20}")\n    return 0\n'''
CODE_C = ('#include <stdio.h>\n\nint main(int argc, char **argv) {\n\tfor (int i = 0; i < argc; ++i) {\n'
          '\t\tprintf("%s\\n", argv[i]);\n\t}\n\treturn argc > 1 ? 0 : -1; /* done */\n}\n')


def base_texts():
    """(name, text) pairs shared by every tokenizer. Specials are added per tokenizer."""
    return [
        ("empty", ""),
        ("hello", "Hello world"),
        ("sentence", "The quick brown fox jumps over the lazy dog."),
        ("contractions", "I'm sure they'll say it's fine, don't you think? We've seen it. THEY'RE HERE"),
        ("leading_space", " leading space"),
        ("single_space", " "),
        ("spaces_run", "a    b        c"),
        ("trailing_spaces", "trailing spaces   "),
        ("tabs", "col1\tcol2\t\tcol3\t"),
        ("newlines", "line one\nline two\n\n\nline five\n"),
        ("crlf", "windows\r\nline\r\n\r\nend"),
        ("mixed_ws", "  \t \n \n\n  x \t\n"),
        ("only_newlines", "\n\n\n"),
        ("digits", "1234567890"),
        ("numbers", "In 2024, 3.14159 and 1,000,000 people paid $42.50 (or 7%)."),
        ("long_number", "98765432109876543210 0.000001 1e-10 0x1F"),
        ("accents", "café naïve Ünïcödé résumé façade Ångström"),
        ("emoji", "👍🏽 ok 🇫🇷 👨‍👩‍👧‍👦 🎉🎉"),
        ("cjk", "你好，世界！这是一个测试。日本語のテキスト 한국어"),
        ("mixed_scripts", "Россия и Україна, مرحبا, שלום, ελληνικά"),
        ("punct", "Punctuation!!! ??? ... --- (parens) [brackets] {braces} <angle> @#$%^&*"),
        ("code_py", CODE_PY),
        ("code_c", CODE_C),
        ("url", "See https://www.debian.org/doc/manuals/?q=a&b=c#frag for details."),
        ("apostrophes", "rock 'n' roll 's 't 'S 'Ll o'clock"),
        ("unicode_spaces", "nbsp\u00a0here, ideographic\u3000space, zwsp\u200bend, nel\u0085x"),
        ("control_chars", "a\x00b\x01c\x1fd\x7fe"),
        ("math", "∀x∈ℝ: x² ≥ 0 ⇒ √(x²) = |x| ½ ⅕ Ⅻ ٣"),
        ("repeated", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
        ("long_word", "Supercalifragilisticexpialidocious" * 8),
        ("space_runs_long", " " * 100 + "x" + "\t" * 40 + "\n" * 30),
    ]


# ---------------------------------------------------------------------------------------------
# Golden generation
# ---------------------------------------------------------------------------------------------
def golden_cases(tok, texts):
    cases = []
    for name, text in texts:
        tok.encode_special_tokens = False
        ids = tok.encode(text, add_special_tokens=False).ids
        ids_add = tok.encode(text, add_special_tokens=True).ids
        tok.encode_special_tokens = True
        ids_raw = tok.encode(text, add_special_tokens=False).ids
        tok.encode_special_tokens = False
        dec = tok.decode(ids, skip_special_tokens=False)
        dec_skip = tok.decode(ids, skip_special_tokens=True)
        c = {"name": name, "text": text, "ids": ids, "decoded": dec}
        # Variants are stored only where they differ, to keep the fixtures small.
        if ids_add != ids:
            c["ids_add_special"] = ids_add
        if ids_raw != ids:
            c["ids_no_parse_special"] = ids_raw
        if dec_skip != dec:
            c["decoded_skip_special"] = dec_skip
        cases.append(c)
    return cases


def decode_cases(tok, n_vocab, seed, n=40):
    """HF decode() of random id sequences, many of them partial UTF-8 byte runs, to pin down the
    lossy UTF-8 / byte-fallback assembly of decode()."""
    import random

    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = rng.randint(1, 12)
        hi = 300 if i % 2 == 0 else n_vocab  # low ids are the byte / single-char tokens
        ids = [rng.randrange(0, min(hi, n_vocab)) for _ in range(length)]
        out.append({"ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False),
                    "decoded_skip_special": tok.decode(ids, skip_special_tokens=True)})
    return out


def write_json(name, obj):
    path = os.path.join(OUT, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"  wrote {os.path.relpath(path, ROOT)} ({os.path.getsize(path) / 1024:.0f} KiB)")


def specials_texts(specials):
    s0 = specials[0]
    s1 = specials[1 % len(specials)]
    return [
        ("special_alone", s0),
        ("special_inside", f"before{s0}after {s1} end"),
        ("special_adjacent", f"{s1}{s1}{s0}"),
        ("special_partial", s0[:-1] + " " + s0[1:]),
    ]


# ---------------------------------------------------------------------------------------------
# Default model (SmolLM2) from the GGUF
# ---------------------------------------------------------------------------------------------
def smollm2_from_gguf(path):
    from gguf import GGUFReader

    r = GGUFReader(path)
    f = r.fields
    tokens = f["tokenizer.ggml.tokens"].contents()
    types = f["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ", 1)) for m in f["tokenizer.ggml.merges"].contents()]
    assert f["tokenizer.ggml.pre"].contents() == "smollm"
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False,
                               byte_fallback=False))
    tok.pre_tokenizer = pre.Sequence([pre.Digits(individual_digits=True),
                                      pre.ByteLevel(add_prefix_space=False, trim_offsets=True,
                                                    use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == 3])
    meta = {
        "bos_id": int(f["tokenizer.ggml.bos_token_id"].contents()),
        "eos_id": int(f["tokenizer.ggml.eos_token_id"].contents()),
        "n_vocab": len(tokens),
        "chat_template": f["tokenizer.chat_template"].contents(),
    }
    return tok, meta


def gen_smollm2(model_path, para, long_doc):
    print("smollm2 (default model)")
    tok, meta = smollm2_from_gguf(model_path)
    specials = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]
    chat = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
            "Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    texts = base_texts() + specials_texts(specials) + [
        ("chat_prompt", chat),
        ("missing_bytes", "a\x04b\x06c\x13d"),
        ("doc_paragraph", para),
        ("long_document", long_doc),
    ]
    cases = golden_cases(tok, texts)

    # How far transformers' own GGUF loader is from the faithful rebuild (reported, not stored).
    try:
        from transformers import AutoTokenizer
        import logging
        logging.disable(logging.WARNING)
        ht = AutoTokenizer.from_pretrained(os.path.dirname(model_path),
                                           gguf_file=os.path.basename(model_path))
        diff = [n for n, t in texts if ht.encode(t, add_special_tokens=False) !=
                tok.encode(t, add_special_tokens=False).ids]
        print(f"  transformers-from-GGUF differs from the SmolLM2 rebuild on {len(diff)}/"
              f"{len(texts)} texts: {diff[:8]}")
    except Exception as e:  # noqa: BLE001 - informational only
        print(f"  (transformers GGUF comparison skipped: {e})")

    write_json("smollm2.golden.json", {
        "source": "tokenizers BPE rebuilt from the GGUF vocab/merges with SmolLM2's pre-tokenizer "
                  "Sequence[Digits(individual_digits), ByteLevel]",
        "bos_id": meta["bos_id"], "eos_id": meta["eos_id"], "n_vocab": meta["n_vocab"],
        "cases": cases, "decode_cases": decode_cases(tok, meta["n_vocab"], 1)})
    return meta


# ---------------------------------------------------------------------------------------------
# Trained byte-level tokenizers
# ---------------------------------------------------------------------------------------------
def train_bytelevel(corpus, pre_tok, vocab_size, specials_first, ignore_merges=False):
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tok
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                             initial_alphabet=pre.ByteLevel.alphabet(),
                             special_tokens=specials_first)
    tok.train_from_iterator(corpus, trainer=tr)
    return tok


def gen_bytelevel_flavours(corpus, para):
    out = {}
    # GPT-2: plain ByteLevel regex; <|endoftext|> trained in as id 0.
    gpt2 = train_bytelevel(corpus, pre.ByteLevel(add_prefix_space=False, use_regex=True), 1000,
                           ["<|endoftext|>"])
    out["gpt2"] = (gpt2, ["<|endoftext|>"], {"bos_token": "<|endoftext|>",
                                              "eos_token": "<|endoftext|>"})

    # Llama-3: Split(regex) + ByteLevel(use_regex=False), ignore_merges, specials appended after
    # the trained vocab (as in the real model) and a BOS-adding post-processor.
    l3pre = pre.Sequence([pre.Split(Regex(LLAMA3_RE), behavior="isolated", invert=False),
                          pre.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    l3 = train_bytelevel(corpus, l3pre, 1200, [], ignore_merges=True)
    # A vocabulary word that the merges cannot build (tiktoken-converted vocabularies such as
    # Llama-3's have these): only ignore_merges emits it as one token. Model ids must stay
    # contiguous (tokenizers re-numbers added tokens after them on load), so it goes in before
    # the specials.
    j = json.loads(l3.to_str())
    j["model"]["vocab"]["Ġqwertzuiop"] = len(j["model"]["vocab"])
    l3 = Tokenizer.from_str(json.dumps(j))
    l3_specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|eot_id|>"]
    l3.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in l3_specials])
    bos = l3.token_to_id("<|begin_of_text|>")
    l3.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
        special_tokens=[("<|begin_of_text|>", bos)])
    out["llama3"] = (l3, l3_specials, {"bos_token": "<|begin_of_text|>",
                                       "eos_token": "<|eot_id|>"})

    # Qwen2: NFC normalizer, Split(regex) + ByteLevel, special and non-special added tokens.
    q2pre = pre.Sequence([pre.Split(Regex(QWEN2_RE), behavior="isolated", invert=False),
                          pre.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    q2 = train_bytelevel(corpus, q2pre, 900, [])
    q2.normalizer = normalizers.NFC()
    q2_specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    q2.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in q2_specials])
    q2.add_tokens([AddedToken(s, special=False, normalized=False)
                   for s in ("<tool_call>", "</tool_call>")])
    out["qwen2"] = (q2, q2_specials + ["<tool_call>"], {"eos_token": "<|im_end|>",
                                                        "pad_token": "<|endoftext|>",
                                                        "bos_token": None})

    for name, (tok, specials, cfg) in out.items():
        print(name)
        texts = base_texts() + specials_texts(specials) + [("doc_paragraph", para)]
        if name == "qwen2":
            # sqz does not implement NFC; every text given to the NFC tokenizer is already NFC
            # (asserted) so the goldens test the pre-tokenizer, not normalization.
            for n, t in texts:
                assert unicodedata.normalize("NFC", t) == t, n
            texts.append(("tool_call", "<tool_call>{\"name\": \"f\"}</tool_call>"))
        else:
            texts.append(("decomposed", "cafe\u0301 n\u0303"))
        if name == "llama3":
            texts.append(("ignore_merges", "say qwertzuiop now"))
        tok.save(os.path.join(OUT, f"{name}.tokenizer.json"))
        cfg = dict(cfg)
        cfg["chat_template"] = ""
        write_json(f"{name}.tokenizer_config.json", cfg)
        write_json(f"{name}.golden.json", {"cases": golden_cases(tok, texts),
                                           "decode_cases": decode_cases(tok, tok.get_vocab_size(),
                                                                        len(name))})
        print(f"  wrote {name}.tokenizer.json "
              f"({os.path.getsize(os.path.join(OUT, name + '.tokenizer.json')) / 1024:.0f} KiB)")


# ---------------------------------------------------------------------------------------------
# SentencePiece (Llama-2 style)
# ---------------------------------------------------------------------------------------------
def gen_spm(corpus, para):
    import sentencepiece as spm
    from transformers.convert_slow_tokenizer import generate_merges

    print("spm")
    with tempfile.TemporaryDirectory() as d:
        txt = os.path.join(d, "corpus.txt")
        with open(txt, "w", encoding="utf-8") as f:
            for doc in corpus:
                for line in doc.split("\n"):
                    if line.strip():
                        f.write(line + "\n")
        prefix = os.path.join(d, "m")
        # Llama-2's trainer settings where they matter for encoding: BPE, byte fallback, identity
        # normalization, no whitespace squeezing, dummy prefix, split digits.
        spm.SentencePieceTrainer.train(
            input=txt, model_prefix=prefix, model_type="bpe", vocab_size=1200,
            byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
            add_dummy_prefix=True, split_digits=True, allow_whitespace_only_pieces=True,
            character_coverage=0.9995, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            max_sentence_length=100000, num_threads=1, minloglevel=2)
        sp = spm.SentencePieceProcessor(model_file=prefix + ".model")

    n = sp.get_piece_size()
    pieces = [sp.id_to_piece(i) for i in range(n)]
    scores = [sp.get_score(i) for i in range(n)]
    types = []
    for i in range(n):
        if sp.is_unknown(i):
            types.append(2)
        elif sp.is_control(i):
            types.append(3)
        elif sp.is_byte(i):
            types.append(6)
        elif sp.is_unused(i):
            types.append(5)
        else:
            types.append(1)

    # HF tokenizer.json built exactly as transformers' LlamaConverter (legacy) + LlamaTokenizerFast
    # do: vocab in sentencepiece order, merges from generate_merges(), Prepend/Replace normalizer,
    # Replace/ByteFallback/Fuse/Strip decoder, "<s> $A" post-processor.
    vocab = {p: i for i, p in enumerate(pieces)}
    merges = generate_merges(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True,
                               byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                           normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(content=" ", left=1, right=0)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in ("<unk>", "<s>", "</s>")])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B:1", special_tokens=[("<s>", 1)])
    tok.save(os.path.join(OUT, "spm.tokenizer.json"))
    write_json("spm.tokenizer_config.json", {"bos_token": "<s>", "eos_token": "</s>",
                                             "unk_token": "<unk>", "add_bos_token": True,
                                             "add_eos_token": False, "chat_template": ""})

    specials = ["<s>", "</s>"]
    texts = base_texts() + specials_texts(specials) + [
        ("decomposed", "cafe\u0301 n\u0303"), ("doc_paragraph", para)]
    cases = golden_cases(tok, texts)
    # sentencepiece's own encoder for the GGUF-style (scores) path. It never parses control
    # tokens in text, which corresponds to parse_special=false.
    agree = 0
    for c in cases:
        c["ids_sentencepiece"] = sp.encode(c["text"])
        ref = c.get("ids_no_parse_special", c["ids"])
        agree += ref == c["ids_sentencepiece"]
    print(f"  HF-converted tokenizer agrees with sentencepiece on {agree}/{len(cases)} texts")
    write_json("spm.golden.json", {"cases": cases, "decode_cases": decode_cases(tok, n, 7)})
    write_json("spm.model.json", {"tokens": pieces, "scores": scores, "token_types": types,
                                  "bos_id": sp.bos_id(), "eos_id": sp.eos_id(),
                                  "unk_id": sp.unk_id(), "add_space_prefix": True})


# ---------------------------------------------------------------------------------------------
# Chat templates
# ---------------------------------------------------------------------------------------------
# The official templates of meta-llama/Llama-2-7b-chat-hf and Meta-Llama-3-8B-Instruct.
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}")
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}")

CONVERSATIONS = [
    ("user_only", [{"role": "user", "content": "Hello!"}]),
    ("system_user", [{"role": "system", "content": "You are terse."},
                     {"role": "user", "content": "What is 2+2?"}]),
    ("multi_turn", [{"role": "system", "content": "Be helpful."},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello! How can I help?"},
                    {"role": "user", "content": "Tell me a joke."}]),
    ("no_system_multi", [{"role": "user", "content": "Question one?"},
                         {"role": "assistant", "content": "Answer one."},
                         {"role": "user", "content": "Question two?"}]),
    ("whitespace", [{"role": "system", "content": "  padded system \n"},
                    {"role": "user", "content": "\n\t spaced question?  \n\n"}]),
    ("unicode", [{"role": "user", "content": "Ünïcödé 👍🏽 你好\u3000"}]),
    ("empty_content", [{"role": "user", "content": ""}]),
]


def gen_chat(model_path, smollm_template):
    from transformers import PreTrainedTokenizerFast

    print("chat templates")
    base = Tokenizer.from_file(os.path.join(OUT, "gpt2.tokenizer.json"))
    flavours = [
        ("chatml", smollm_template, "<|im_start|>", "<|im_end|>"),
        ("llama2", LLAMA2_TEMPLATE, "<s>", "</s>"),
        ("llama3", LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>"),
    ]
    out = []
    for name, template, bos, eos in flavours:
        t = PreTrainedTokenizerFast(tokenizer_object=base, bos_token=bos, eos_token=eos)
        t.chat_template = template
        for cname, msgs in CONVERSATIONS:
            for gen in (True, False):
                try:
                    s = t.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
                except Exception:  # noqa: BLE001 - Llama-2 rejects non-alternating turns
                    continue
                out.append({"template": name, "conversation": cname, "messages": msgs,
                            "add_generation_prompt": gen, "bos_text": bos, "eos_text": eos,
                            "output": s})
    write_json("chat_templates.golden.json", {
        "templates": {n: tpl for n, tpl, _, _ in flavours}, "cases": out})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    corpus = training_corpus()
    para = doc_paragraph(5000)
    long_doc = long_document(32000)
    meta = gen_smollm2(args.model, para, long_doc)
    gen_bytelevel_flavours(corpus, para)
    gen_spm(corpus, para)
    gen_chat(args.model, meta["chat_template"])
    total = sum(os.path.getsize(p) for p in glob.glob(os.path.join(OUT, "*")))
    print(f"total fixture size {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
