#!/usr/bin/env python3
"""Reference perplexity of the default GGUF model, computed with HF transformers.

Produces
  tests/data/golden/ppl_text.txt  the evaluation text (committed; rebuilt only
                                  with --rebuild-text or when missing)
  tests/data/golden/ppl.json      perplexity per context length

Method (identical to what `sqz perplexity --file F --ctx N` must implement):
  1. Read the text file as UTF-8 bytes, decode, tokenize the WHOLE text with the
     tokenizer embedded in the GGUF, WITHOUT BOS/EOS or any other added token.
  2. Split the ids into consecutive non-overlapping chunks of exactly N tokens
     (chunk c = ids[c*N:(c+1)*N]); drop the final partial chunk.
  3. Each chunk is evaluated independently from an empty KV cache at positions
     0..N-1 (no BOS inserted). For j = 1..N-1 the NLL of chunk[j] is
     -log softmax(logits at position j-1)[chunk[j]]; position 0 is not scored.
  4. ppl = exp(mean NLL over all scored tokens); n_tokens_scored = n_chunks*(N-1).
     stderr_ppl = ppl * std(NLL, ddof=1)/sqrt(n) (delta method, tokens treated
     as independent, so it is a lower bound on the true sampling error).

llama.cpp's llama-perplexity uses a different method: same non-overlapping
chunks, BOS replacing the first token only when the GGUF asks for BOS (this one
does not), and only the second half of each window scored. For a like-for-like
cross-check each ctx entry also carries "llamacpp_style", our fp32 forward
scored that way.

The model is loaded by transformers' GGUF loader, which dequantizes every
tensor to float32 (exact: d*q + m in float), so this is the "ideal" fp32
evaluation of the quantized weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import doc_text  # noqa: E402

DEFAULT_MODEL = os.path.join(REPO, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GOLDEN = os.path.join(REPO, "tests", "data", "golden")
TEXT_PATH = os.path.join(GOLDEN, "ppl_text.txt")

# Source documents, in order. Debian package python3.11-doc (3.11.2-6+deb12u9
# when the committed text was made). Two chapters of the tutorial, ~5,300 words.
DOC_ROOT = "/usr/share/doc/python3.11/html"
DOC_FILES = ["tutorial/appetite.html", "tutorial/classes.html"]


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for blk in iter(lambda: f.read(1 << 20), b""):
            h.update(blk)
    return h.hexdigest()


def build_text() -> str:
    parts = [doc_text.html_main_text(os.path.join(DOC_ROOT, f)) for f in DOC_FILES]
    return "\n\n".join(parts) + "\n"


def versions() -> dict:
    import tokenizers
    import transformers

    try:
        from importlib.metadata import version

        gguf_v = version("gguf")
    except Exception:  # pragma: no cover - metadata missing
        gguf_v = "unknown"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "gguf": gguf_v,
        "numpy": np.__version__,
    }


def load_model(model_path: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, f = os.path.split(os.path.abspath(model_path))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    # transformers' GGUF tokenizer conversion drops SmolLM2's digit splitting (the real
    # tokenizer.json pre-tokenizer is Digits(individual_digits) + ByteLevel; llama.cpp's "smollm"
    # pre-type does the same). Restore it so the reference scores the same token ids the real
    # tokenizer (and sqz) produce.
    from tokenizers import pre_tokenizers as pre
    tok.backend_tokenizer.pre_tokenizer = pre.Sequence([
        pre.Digits(individual_digits=True),
        pre.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    model.eval()
    return tok, model


def tokenize_no_specials(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


@torch.inference_mode()
def chunk_nll(model, chunk: list[int]) -> np.ndarray:
    """Per-token NLL (float64) of chunk[1:] given the prefix within the chunk."""
    ids = torch.tensor([chunk], dtype=torch.long)
    logits = model(input_ids=ids, use_cache=False).logits[0].double()  # [N, vocab]
    logp = torch.log_softmax(logits[:-1], dim=-1)
    tgt = ids[0, 1:]
    return (-logp.gather(1, tgt[:, None])[:, 0]).numpy()


def perplexity(model, ids: list[int], n_ctx: int) -> dict:
    n_chunks = len(ids) // n_ctx
    if n_chunks == 0:
        raise SystemExit(f"text has {len(ids)} tokens, fewer than ctx {n_ctx}")
    nll_all, chunk_means = [], []
    for c in range(n_chunks):
        nll = chunk_nll(model, ids[c * n_ctx : (c + 1) * n_ctx])
        nll_all.append(nll)
        chunk_means.append(float(nll.mean()))
        print(f"  ctx {n_ctx} chunk {c + 1}/{n_chunks}: mean nll {chunk_means[-1]:.5f}",
              file=sys.stderr)
    nll = np.concatenate(nll_all)
    # llama.cpp's llama-perplexity on the same chunks (this GGUF has
    # add_bos_token=false, so it inserts no BOS) scores only tokens
    # first+1..N-1 with first = N/2, i.e. nll entries first..N-2 of each chunk.
    first = n_ctx // 2
    lc = np.concatenate([a[first:] for a in nll_all])
    mean = float(nll.mean())
    ppl = math.exp(mean)
    se_mean = float(nll.std(ddof=1) / math.sqrt(len(nll)))
    return {
        "ppl": ppl,
        "nll_mean": mean,
        "nll_stderr": se_mean,
        "ppl_stderr": ppl * se_mean,
        "n_chunks": n_chunks,
        "n_tokens_scored": int(len(nll)),
        "n_tokens_dropped_tail": len(ids) - n_chunks * n_ctx,
        "chunk_nll_mean": [round(x, 6) for x in chunk_means],
        "llamacpp_style": {
            "ppl": math.exp(float(lc.mean())),
            "nll_mean": float(lc.mean()),
            "n_tokens_scored": int(len(lc)),
            "method": "same chunks; score only tokens ctx/2+1..ctx-1 of each chunk "
                      "(llama-perplexity's scheme without BOS)",
        },
    }


METHOD = (
    "Tokenize the whole UTF-8 text with the GGUF's tokenizer WITHOUT BOS/EOS or any "
    "added token. Split into consecutive non-overlapping chunks of exactly ctx tokens "
    "(chunk c = ids[c*ctx:(c+1)*ctx]); drop the final partial chunk. Evaluate each "
    "chunk independently from an empty KV cache at positions 0..ctx-1, no BOS. Score "
    "tokens 1..ctx-1 of each chunk: nll_j = -log_softmax(logits[j-1])[chunk[j]] "
    "(float32 forward, log_softmax in float64). ppl = exp(mean nll over all scored "
    "tokens); n_tokens_scored = n_chunks*(ctx-1). ppl_stderr = ppl*std(nll,ddof=1)/"
    "sqrt(n) (delta method). Model: transformers GGUF loader, all weights dequantized "
    "to float32."
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--ctx", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--rebuild-text", action="store_true",
                    help="regenerate ppl_text.txt from the installed Debian docs")
    ap.add_argument("--text", default=TEXT_PATH)
    ap.add_argument("--out", default=os.path.join(GOLDEN, "ppl.json"))
    args = ap.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    if args.rebuild_text or not os.path.exists(args.text):
        text = build_text()
        os.makedirs(os.path.dirname(args.text), exist_ok=True)
        with open(args.text, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        print(f"wrote {args.text}: {len(text.split())} words", file=sys.stderr)
    with open(args.text, encoding="utf-8", newline="") as f:
        text = f.read()

    model_sha = sha256_file(args.model)
    if model_sha != MODEL_SHA256:
        print(f"warning: model sha256 {model_sha} != expected {MODEL_SHA256}", file=sys.stderr)

    t0 = time.time()
    tok, model = load_model(args.model)
    ids = tokenize_no_specials(tok, text)
    print(f"{len(ids)} tokens, {len(text.split())} words", file=sys.stderr)

    results = {}
    for n in args.ctx:
        results[str(n)] = perplexity(model, ids, n)
        r = results[str(n)]
        print(f"ctx {n}: ppl {r['ppl']:.4f} +- {r['ppl_stderr']:.4f} "
              f"({r['n_tokens_scored']} tokens)", file=sys.stderr)

    out = {
        "model": os.path.basename(args.model),
        "model_sha256": model_sha,
        "text_file": os.path.relpath(args.text, REPO),
        "text_sha256": sha256_file(args.text),
        "text_words": len(text.split()),
        "text_sources": [f"{DOC_ROOT}/{f}" for f in DOC_FILES],
        "n_tokens_total": len(ids),
        "first_token_ids": ids[:16],
        "method": METHOD,
        "ctx": results,
        "versions": versions(),
        "generated_by": "scripts/reference_perplexity.py",
        "wall_seconds": round(time.time() - t0, 1),
    }
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
