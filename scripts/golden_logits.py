#!/usr/bin/env python3
"""Golden logits of the default GGUF model, computed with HF transformers (fp32).

Writes tests/data/golden/logits.json. For each fixed prompt it records the
prompt text, the token ids from the GGUF's own tokenizer (as loaded by
transformers; no BOS is added because the GGUF says add_bos_token=false and
the prompts carry their own ChatML specials where needed), for EVERY position
the argmax id and the top-5 (id, logit), for the LAST position the full logits
vector (float32 little-endian, base64), and a 16-token greedy continuation.

For the first prompt it also records K of layers 0 and 29 for the last token,
before and after RoPE, in both layouts (see "rope_debug").

RoPE layout subtlety: llama GGUF converters permute the rows of attn_q/attn_k
so that the pair-interleaved ("normal", GPT-J style) RoPE of ggml reproduces
HF's rotate_half ("NeoX" style) RoPE. transformers' GGUF loader undoes that
permutation, so inside transformers Q/K live in HF layout. sqz uses the GGUF
weights as-is with interleaved RoPE. Logits are identical either way (the
permutation is a consistent relabelling of head dimensions that cancels in
q.k); only per-dimension K/Q vectors differ. Within a head of size D=64 the
mapping is gguf[2*i + s] == hf[s*D/2 + i] for i < D/2, s in {0,1}; this script
checks that mapping against the dequantized GGUF attn_k weights, and checks
that interleaved RoPE applied in GGUF layout equals transformers' RoPE.

transformers dequantizes every GGUF tensor to float32 exactly, so these are
the fp32 logits of the quantized model; sqz (which quantizes activations for
its integer dot products, like ggml) will differ by a small tolerance.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import reference_perplexity as rp  # noqa: E402  (shared model loading/versions)

GOLDEN = os.path.join(REPO, "tests", "data", "golden")

CHAT_PROMPT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
    "Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the boiling point of water "
    "at sea level, in Celsius?<|im_end|>\n<|im_start|>assistant\n"
)

FIXED_PROMPTS = [
    ("france", "The capital of France is"),
    ("story", "Once upon a time, in a small village nestled between rolling hills, "
              "there lived an old clockmaker who"),
    ("code", 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'
             "    if n < 2:\n        return n\n"),
    ("chat", CHAT_PROMPT),
    ("mixed", "Prices rose 3.5% in 2023 (see Table 7). Naïve café résumé — "
              "東京 🚀\tTabs\n\n  and  spaces."),
]
DOC_PROMPT_TOKENS = 300  # approximate length of the Debian-doc excerpt prompt
DOC_PROMPT_START = "9.2. Python Scopes and Namespaces"
N_GREEDY = 16


def doc_prompt(tok, text_path: str) -> str:
    """~300 tokens of whole paragraphs of the committed ppl text, deterministic."""
    with open(text_path, encoding="utf-8", newline="") as f:
        paras = f.read().split("\n\n")
    start = next(i for i, p in enumerate(paras) if p.startswith(DOC_PROMPT_START))
    out: list[str] = []
    for p in paras[start:]:
        out.append(p)
        if len(tok("\n\n".join(out), add_special_tokens=False)["input_ids"]) >= DOC_PROMPT_TOKENS:
            break
    text = "\n\n".join(out)
    # Trim to whole words so the prompt is ~DOC_PROMPT_TOKENS, not a full extra paragraph.
    words = text.split(" ")
    while len(words) > 1 and len(tok(" ".join(words[:-1]), add_special_tokens=False)
                                 ["input_ids"]) >= DOC_PROMPT_TOKENS:
        words.pop()
    return " ".join(words)


def f32_b64(x: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(x, dtype="<f4").tobytes()).decode("ascii")


def hf_to_gguf_layout(v: np.ndarray, head_dim: int) -> np.ndarray:
    """[..., n_heads*head_dim] HF (rotate_half) layout -> GGUF interleaved layout."""
    sh = v.shape
    v = v.reshape(*sh[:-1], -1, 2, head_dim // 2)  # [..., h, s, i]
    return np.swapaxes(v, -1, -2).reshape(sh)  # [..., h, i, s] -> index 2*i+s


def rope_interleaved(x: np.ndarray, pos: int, theta: float) -> np.ndarray:
    """Pair-interleaved RoPE on [n_heads, D] (GGUF layout), float64 reference."""
    d = x.shape[-1]
    inv = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = pos * inv
    c, s = np.cos(ang), np.sin(ang)
    x0, x1 = x[..., 0::2].astype(np.float64), x[..., 1::2].astype(np.float64)
    out = np.empty(x.shape, np.float64)
    out[..., 0::2] = x0 * c - x1 * s
    out[..., 1::2] = x0 * s + x1 * c
    return out


def cache_keys(pkv, layer: int) -> torch.Tensor:
    """Post-RoPE keys [batch, n_kv, seq, D] from a transformers cache (4.x and 5.x)."""
    if hasattr(pkv, "layers"):
        return pkv.layers[layer].keys
    if hasattr(pkv, "key_cache"):
        return pkv.key_cache[layer]
    return pkv[layer][0]


def check_k_permutation(model, model_path: str, head_dim: int, n_kv: int) -> float:
    """Max |HF k_proj.weight - unpermuted dequantized GGUF blk.0.attn_k|."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    r = GGUFReader(model_path)
    t = next(t for t in r.tensors if t.name == "blk.0.attn_k.weight")
    w = dequantize(t.data, t.tensor_type).reshape(n_kv * head_dim, -1)  # [out, in] gguf rows
    # gguf row (h, 2i+s) == hf row (h, s*D/2+i)  =>  hf = gguf rows re-ordered.
    hf_from_gguf = w.reshape(n_kv, head_dim // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)
    hf = model.model.layers[0].self_attn.k_proj.weight.detach().numpy()
    return float(np.abs(hf - hf_from_gguf).max())


@torch.inference_mode()
def run_prompt(model, tok, name: str, text: str, want_k_layers: list[int]) -> tuple[dict, dict]:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    x = torch.tensor([ids], dtype=torch.long)
    kpre: dict[int, np.ndarray] = {}
    hooks = []
    for L in want_k_layers:
        def hook(_m, _inp, out, L=L):
            kpre[L] = out[0, -1].detach().numpy().copy()  # [n_kv*D] HF layout, pre-RoPE
        hooks.append(model.model.layers[L].self_attn.k_proj.register_forward_hook(hook))
    out = model(input_ids=x, use_cache=True)
    for h in hooks:
        h.remove()
    logits = out.logits[0].float().numpy()  # [T, vocab]
    top5_idx = np.argsort(-logits, axis=1, kind="stable")[:, :5]
    rec = {
        "name": name,
        "text": text,
        "token_ids": ids,
        "n_tokens": len(ids),
        "argmax": [int(i) for i in logits.argmax(axis=1)],
        "top5": [[[int(i), round(float(logits[p, i]), 5)] for i in top5_idx[p]]
                 for p in range(len(ids))],
        "last_logits_f32le_b64": f32_b64(logits[-1]),
        "last_logits_summary": {
            "min": float(logits[-1].min()), "max": float(logits[-1].max()),
            "mean": float(logits[-1].mean()), "l2": float(np.linalg.norm(logits[-1])),
        },
    }
    gen = model.generate(x, max_new_tokens=N_GREEDY, do_sample=False,
                         pad_token_id=tok.pad_token_id)
    new = gen[0, len(ids):].tolist()
    rec["greedy"] = {"ids": new, "text": tok.decode(new)}
    kdbg = {}
    for L in want_k_layers:
        cache = out.cache if "cache" in out else out.past_key_values
        kpost = cache_keys(cache, L)[0, :, -1, :].numpy()  # [n_kv, D] HF layout
        kdbg[L] = (kpre[L], kpost)
    return rec, kdbg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=rp.DEFAULT_MODEL)
    ap.add_argument("--text", default=rp.TEXT_PATH, help="ppl text (source of the doc prompt)")
    ap.add_argument("--out", default=os.path.join(GOLDEN, "logits.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    t0 = time.time()

    tok, model = rp.load_model(args.model)
    cfg = model.config
    D = cfg.head_dim
    n_kv = cfg.num_key_value_heads
    theta = float(cfg.rope_parameters["rope_theta"]) if hasattr(cfg, "rope_parameters") \
        else float(cfg.rope_theta)

    perm_err = check_k_permutation(model, args.model, D, n_kv)
    print(f"k_proj vs unpermuted GGUF attn_k: max abs diff {perm_err:.3g}", file=sys.stderr)
    assert perm_err < 1e-6, "K permutation mapping hf<->gguf is not as documented"

    prompts = FIXED_PROMPTS + [("debian_doc", doc_prompt(tok, args.text))]
    records, rope_dbg = [], None
    for i, (name, text) in enumerate(prompts):
        rec, kdbg = run_prompt(model, tok, name, text, [0, cfg.num_hidden_layers - 1] if i == 0 else [])
        records.append(rec)
        print(f"{name}: {rec['n_tokens']} tokens, greedy {rec['greedy']['text']!r}", file=sys.stderr)
        if i == 0:
            pos = rec["n_tokens"] - 1
            rope_dbg = {
                "prompt": name, "token_position": pos, "rope_theta": theta, "head_dim": D,
                "n_kv_heads": n_kv,
                "layout_note": "k_*_gguf: GGUF/sqz layout (pair-interleaved RoPE, "
                               "gguf[h*D+2i+s] = hf[h*D+s*D/2+i]); k_*_hf: transformers "
                               "layout (rotate_half). Each is [n_kv_heads*head_dim] floats.",
                "layers": {},
            }
            for L, (kpre_hf, kpost_hf) in kdbg.items():
                kpre_g = hf_to_gguf_layout(kpre_hf, D).reshape(n_kv, D)
                kpost_g = hf_to_gguf_layout(kpost_hf.reshape(-1), D).reshape(n_kv, D)
                err = float(np.abs(rope_interleaved(kpre_g, pos, theta) - kpost_g).max())
                print(f"layer {L}: interleaved RoPE(gguf) vs HF RoPE max diff {err:.3g}",
                      file=sys.stderr)
                assert err < 1e-4 * max(1.0, float(np.abs(kpost_g).max())), "RoPE layout mismatch"
                rope_dbg["layers"][str(L)] = {
                    "k_pre_rope_gguf": [round(float(v), 6) for v in kpre_g.reshape(-1)],
                    "k_post_rope_gguf": [round(float(v), 6) for v in kpost_g.reshape(-1)],
                    "k_post_rope_hf": [round(float(v), 6) for v in kpost_hf.reshape(-1)],
                    "interleaved_rope_check_max_abs_diff": err,
                }

    france = records[0]
    sanity = {
        "prompt": france["text"],
        "greedy_continuation": france["greedy"]["text"],
        "contains_paris": "Paris" in france["greedy"]["text"],
    }
    assert sanity["contains_paris"], f"model not sane: {sanity['greedy_continuation']!r}"

    out = {
        "model": os.path.basename(args.model),
        "model_sha256": rp.sha256_file(args.model),
        "versions": rp.versions(),
        "generated_by": "scripts/golden_logits.py",
        "dtype": "float32 (transformers GGUF loader dequantizes all weights)",
        "vocab_size": int(cfg.vocab_size),
        "add_bos": False,
        "notes": [
            "token_ids come from the GGUF tokenizer via transformers with "
            "add_special_tokens=False; ChatML specials in the chat prompt are parsed as "
            "special tokens (<|im_start|>=1, <|im_end|>=2).",
            "top5 is [[id, logit], ...] per position, sorted by logit descending "
            "(ties broken by lower id); logits rounded to 5 decimals.",
            "last_logits_f32le_b64: base64 of vocab_size little-endian float32 logits "
            "of the last position.",
            "greedy: 16 tokens from model.generate(do_sample=False) with KV cache; "
            "near-ties can make other engines diverge legitimately.",
            "RoPE: transformers un-permutes GGUF Q/K to HF rotate_half layout; sqz uses "
            "GGUF weights with pair-interleaved RoPE. Logits are layout independent. "
            f"Checked: HF k_proj == unpermuted GGUF attn_k (max diff {perm_err:.2g}).",
        ],
        "sanity": sanity,
        "prompts": records,
        "rope_debug": rope_dbg,
        "wall_seconds": round(time.time() - t0, 1),
    }
    with open(args.out, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB)", file=sys.stderr)


if __name__ == "__main__":
    main()
