#!/usr/bin/env python3
"""Markdown tables for docs/benchmarks.md from the JSON files the CPU benchmarks write.

    python3 bench/tables.py --engine bench/results/engine_X.json \
        --llamacpp bench/results/llamacpp_Y.json --squeeze bench/results/squeeze_Z.json [...]

Every number in the tables is read from those files (nothing is typed in by hand), so a rerun
of the benchmarks followed by this script regenerates the document's tables.
"""
import argparse
import json


def load(p):
    with open(p) as f:
        return json.load(f)


def llama_rows(lj):
    """{(kind, depth, threads): (tok/s, stddev)} with kind 'pp' or 'tg'."""
    out = {}
    for r in lj["llama_bench"]:
        kind = "pp" if r.get("n_prompt", 0) > 0 else "tg"
        out[(kind, r["n_depth"], r["n_threads"])] = (r["avg_ts"], r["stddev_ts"])
    return out


def engine_table(ej, lj):
    bw = ej["read_bandwidth_gbs"]
    ll = llama_rows(lj) if lj else {}
    m = ej["machine"]
    print(f"Machine: {m['cpu']}, {m['cores']} cores, {m['mem_gib']} GiB; commit {m['commit']}, "
          f"{m['date']}. Measured read bandwidth: 1 thread {bw['1']:.1f} GB/s, 2 threads "
          f"{bw['2']:.1f} GB/s. Weights read per token: {ej['weight_bytes_per_token'] / 1e6:.1f} MB.")
    print()
    print("| depth | threads | prefill tok/s (256) | llama.cpp pp256 | decode tok/s | llama.cpp tg64 "
          "| bytes / decoded token | GB/s | % of read BW |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in ej["runs"]:
        d, t = r["depth"], r["threads"]
        pp = ll.get(("pp", d, t))
        tg = ll.get(("tg", d, t))
        print(f"| {d} | {t} | {r['prefill_tok_s']:.1f} | {pp[0]:.1f} ± {pp[1]:.1f} | "
              f"{r['decode_tok_s']:.1f} | {tg[0]:.2f} ± {tg[1]:.2f} | "
              f"{r['bytes_per_token'] / 1e6:.1f} MB | {r['achieved_gbs']:.2f} | "
              f"{r['pct_of_read_bw']:.0f}% |" if pp and tg else
              f"| {d} | {t} | {r['prefill_tok_s']:.1f} | — | {r['decode_tok_s']:.1f} | — | "
              f"{r['bytes_per_token'] / 1e6:.1f} MB | {r['achieved_gbs']:.2f} | "
              f"{r['pct_of_read_bw']:.0f}% |")
    print()


def squeeze_table(sj, lj):
    m = sj["machine"]
    c = sj["compile"]
    st = sj.get("settings", {})
    ll = llama_rows(lj) if lj else {}
    ctx = sj["runs"][0]["context_tokens"]
    qt = sj["runs"][0]["question_tokens"]
    depth = max((k[1] for k in ll), default=None)
    print(f"Commit {m['commit']}, {m['date']}; {m['cpu']}, {m['cores']} cores. Fixed context "
          f"{ctx} tokens, question {qt} tokens; estimator {st.get('estimator', 'auto')}, "
          f"sinks {st.get('sinks', 0)}, levels {st.get('levels', 0) or 'pack default'}, "
          f"selection block {st.get('block', 0) or 'whole question'}, "
          f"coarse rule {st.get('coarse_rule', 'calibrated')}; "
          f"median of {st.get('reps', 3)} runs.")
    print(f"Compile ({c['threads']} threads): {c['total_s']:.1f} s = prefill {c['prefill_s']:.1f} "
          f"+ K-means {c['kmeans_s']:.2f} + calibration {c['calibration_s']:.2f} + write "
          f"{c['write_s']:.2f} s.")
    print()
    print("| method | threads | kept | budget (kept + centroids) | TTFT ms | x own dense | "
          "x llama.cpp | decode tok/s | x own dense | x llama.cpp | bytes / token | GB/s | % of read BW |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in sj["runs"]:
        t = r["threads"]
        pp = ll.get(("pp", depth, t)) if depth is not None else None
        tg = ll.get(("tg", depth, t)) if depth is not None else None
        # llama.cpp's pp256 at depth D: time to prefill 256 tokens = 256 / (tok/s).
        x_pp = f"{(256.0 / pp[0] * 1000.0) / r['ttft_ms']:.1f}x" if pp else "—"
        x_tg = f"{r['decode_tok_s'] / tg[0]:.1f}x" if tg else "—"
        print(f"| {r['method']} | {t} | {100 * r['kept_fraction']:.1f}% | {100 * r['budget']:.1f}% | "
              f"{r['ttft_ms']:.0f} | {r['ttft_speedup_vs_dense']:.2f}x | {x_pp} | "
              f"{r['decode_tok_s']:.1f} | {r['decode_speedup_vs_dense']:.2f}x | {x_tg} | "
              f"{r['bytes_per_token'] / 1e6:.1f} MB | {r['achieved_gbs']:.2f} | "
              f"{r['pct_of_read_bw']:.0f}% |")
    print()
    # Byte floor of the decode speedup: dense bytes / sparse bytes per token.
    for t in sorted({r["threads"] for r in sj["runs"]}):
        rows = [r for r in sj["runs"] if r["threads"] == t]
        dense = next(r for r in rows if r["method"] == "dense")
        for r in rows:
            if r["method"] == "dense":
                continue
            print(f"- {t} thread(s), {r['method']}: decode {r['decode_speedup_vs_dense']:.2f}x of a "
                  f"byte floor of {dense['bytes_per_token'] / r['bytes_per_token']:.2f}x "
                  f"(dense {dense['bytes_per_token'] / 1e6:.0f} MB vs {r['bytes_per_token'] / 1e6:.0f} MB per token)")
    print()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine")
    ap.add_argument("--llamacpp")
    ap.add_argument("--squeeze", action="append", default=[])
    a = ap.parse_args()
    lj = load(a.llamacpp) if a.llamacpp else None
    if a.engine:
        engine_table(load(a.engine), lj)
    for s in a.squeeze:
        squeeze_table(load(s), lj)


if __name__ == "__main__":
    main()
