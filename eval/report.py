#!/usr/bin/env python3
"""Report of `sqz eval`: tables, plots and docs/eval.md from the raw results.

    python3 eval/report.py [--results eval/out] [--md docs/eval.md] [--plots docs]
                           [--discussion eval/discussion.md] [--export eval/data]

Reads results.jsonl (or results.jsonl.gz), compiles.jsonl and meta.json from --results and
recomputes every aggregate from the raw records (the harness's summary.json is only
cross-checked). Needs matplotlib and numpy (`pip install matplotlib`).

--export copies the small files worth committing (results.jsonl.gz, compiles.jsonl,
meta.json, summary.csv) to a directory, so the report can be rebuilt from the repository
with `--results eval/data`.
"""
import argparse
import collections
import gzip
import json
import math
import os
import shutil
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

METHOD_ORDER = ["dense", "squeeze", "squeeze_h", "quest", "streaming", "oracle", "random"]
LABEL = {
    "dense": "dense",
    "squeeze": "squeezed (1 level)",
    "squeeze_h": "squeezed (2 levels)",
    "quest": "Quest pages",
    "streaming": "StreamingLLM",
    "oracle": "oracle top-k (upper bound)",
    "random": "random",
}
Z95 = 1.959963984540054


def wilson(k, n, z=Z95):
    """95% Wilson score interval (the same formula as src/eval/scoring.cpp)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z / d * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, c - h), min(1.0, c + h)


def read_jsonl(path):
    if not os.path.exists(path) and os.path.exists(path + ".gz"):
        path += ".gz"
    op = gzip.open if path.endswith(".gz") else open
    with op(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def fmt_budget(b):
    inv = 1 / b if b > 0 else 0
    return f"1/{inv:.0f}" if abs(inv - round(inv)) < 1e-9 and b < 1 else f"{b:g}"


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def agg(rows):
    n = len(rows)
    k = sum(1 for r in rows if r["correct"])
    lo, hi = wilson(k, n)
    return {
        "n": n,
        "k": k,
        "acc": k / n if n else 0.0,
        "lo": lo,
        "hi": hi,
        "agree": mean([1.0 if r["agree_dense"] else 0.0 for r in rows]),
        "kl": mean([r["kl"] for r in rows]),
        "mass": mean([r["mass"] for r in rows]),
        "mass_n": sum(1 for r in rows if r["mass"] is not None),
        "budget": mean([r["budget"] for r in rows]),
        "budget_max": max([r["budget"] for r in rows]) if rows else None,
        "kept": mean([r["kept_fraction"] for r in rows]),
        "cent": mean([r["centroid_fraction"] for r in rows]),
    }


def paired_diff(recs_a, recs_b, seed=0, reps=4000):
    """Accuracy difference a - b on the same questions, with a paired percentile bootstrap 95%
    interval and the discordant counts."""
    by_a = {r["qid"]: r["correct"] for r in recs_a}
    by_b = {r["qid"]: r["correct"] for r in recs_b}
    q = sorted(set(by_a) & set(by_b))
    if not q:
        return None
    a = np.array([1.0 if by_a[x] else 0.0 for x in q])
    b = np.array([1.0 if by_b[x] else 0.0 for x in q])
    d = a - b
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(q), size=(reps, len(q)))
    boots = d[idx].mean(axis=1)
    return {
        "n": len(q),
        "diff": float(d.mean()),
        "lo": float(np.percentile(boots, 2.5)),
        "hi": float(np.percentile(boots, 97.5)),
        "a_only": int(((a == 1) & (b == 0)).sum()),
        "b_only": int(((a == 0) & (b == 1)).sum()),
    }


def pct(x, digits=1):
    return "–" if x is None else f"{100 * x:.{digits}f}"


def num(x, digits=3):
    return "–" if x is None else f"{x:.{digits}f}"


def plot(groups, budgets, lengths, by_len, out_dir, prefix):
    paths = []
    methods = [m for m in METHOD_ORDER if m != "dense" and any((m, b) in groups for b in budgets)]
    dense = groups.get(("dense", 1.0))
    # Accuracy vs measured budget (x: mean measured total budget), 95% Wilson bars.
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in methods:
        pts = [(groups[(m, b)]["budget"], groups[(m, b)]) for b in budgets if (m, b) in groups]
        pts.sort(key=lambda p: p[0])
        x = [p[0] for p in pts]
        y = [p[1]["acc"] for p in pts]
        # max(0, .): the Wilson bounds can sit a rounding error inside the estimate at 0 or 1.
        yerr = [[max(0.0, p[1]["acc"] - p[1]["lo"]) for p in pts],
                [max(0.0, p[1]["hi"] - p[1]["acc"]) for p in pts]]
        ax.errorbar(x, y, yerr=yerr, marker="o", capsize=3, label=LABEL[m])
    if dense:
        ax.axhline(dense["acc"], color="black", linestyle="--", label="dense")
        ax.axhspan(dense["lo"], dense["hi"], color="gray", alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("measured total budget (keys read + metadata) / context keys")
    ax.set_ylabel("accuracy (all tasks and lengths)")
    ax.set_title("Accuracy vs budget (95% Wilson intervals)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = os.path.join(out_dir, f"{prefix}_accuracy.png")
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(p)

    # KL vs budget and mass vs budget.
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for m in methods:
        pts = sorted(
            [(groups[(m, b)]["budget"], groups[(m, b)]) for b in budgets if (m, b) in groups],
            key=lambda p: p[0],
        )
        axes[0].plot([p[0] for p in pts], [p[1]["kl"] for p in pts], marker="o", label=LABEL[m])
        mp = [p for p in pts if p[1]["mass"] is not None]
        axes[1].plot([p[0] for p in mp], [p[1]["mass"] for p in mp], marker="o", label=LABEL[m])
    axes[0].set_yscale("log")
    axes[0].set_ylabel("mean KL(dense || method), nats per answer token")
    axes[1].set_ylabel("true softmax mass of the keys read")
    for a in axes:
        a.set_xscale("log", base=2)
        a.set_xlabel("measured total budget")
        a.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    p = os.path.join(out_dir, f"{prefix}_kl_mass.png")
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(p)

    # Accuracy per context length at each target budget.
    if len(lengths) > 1:
        fig, axes = plt.subplots(1, len(budgets), figsize=(4.2 * len(budgets), 4), sharey=True)
        axes = np.atleast_1d(axes)
        for a, b in zip(axes, budgets):
            for m in ["dense"] + methods:
                key_b = 1.0 if m == "dense" else b
                ys = [by_len.get((L, m, key_b)) for L in lengths]
                xs = [L for L, y in zip(lengths, ys) if y]
                ys = [y["acc"] for y in ys if y]
                a.plot(xs, ys, marker="o", label=LABEL[m],
                       color="black" if m == "dense" else None, linestyle="--" if m == "dense" else "-")
            a.set_xscale("log", base=2)
            a.set_xticks(lengths)
            a.set_xticklabels([f"{L // 1024}K" for L in lengths])
            a.set_title(f"target budget {fmt_budget(b)}")
            a.set_xlabel("context length (tokens)")
            a.grid(True, alpha=0.3)
        axes[0].set_ylabel("accuracy")
        axes[-1].legend(fontsize=7)
        fig.tight_layout()
        p = os.path.join(out_dir, f"{prefix}_accuracy_by_length.png")
        fig.savefig(p, dpi=120)
        plt.close(fig)
        paths.append(p)
    return paths


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="eval/out")
    ap.add_argument("--md", default="docs/eval.md")
    ap.add_argument("--plots", default="docs")
    ap.add_argument("--prefix", default="eval")
    ap.add_argument("--discussion", default="eval/discussion.md")
    ap.add_argument("--export", default=None)
    ap.add_argument("--ablation", action="append", default=[], metavar="LABEL=DIR",
                    help="results of a variant run on a subset of the same questions (repeatable)")
    ap.add_argument("--title", default="Accuracy evaluation: squeezed attention vs baselines at equal budget")
    args = ap.parse_args()

    recs = read_jsonl(os.path.join(args.results, "results.jsonl"))
    meta_path = os.path.join(args.results, "meta.json")
    meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {}  # absent while running
    comp_path = os.path.join(args.results, "compiles.jsonl")
    compiles = read_jsonl(comp_path) if os.path.exists(comp_path) or os.path.exists(comp_path + ".gz") else []
    if not recs:
        sys.exit("no records")

    budgets = sorted({r["target_budget"] for r in recs if r["method"] != "dense"}, reverse=True)
    lengths = sorted({r["length"] for r in recs})
    tasks = sorted({r["task"] for r in recs})
    by = collections.defaultdict(list)
    by_len_r = collections.defaultdict(list)
    by_task_r = collections.defaultdict(list)
    for r in recs:
        by[(r["method"], r["target_budget"])].append(r)
        by_len_r[(r["length"], r["method"], r["target_budget"])].append(r)
        by_task_r[(r["task"], r["method"], r["target_budget"])].append(r)
    groups = {k: agg(v) for k, v in by.items()}
    by_len = {k: agg(v) for k, v in by_len_r.items()}
    by_task = {k: agg(v) for k, v in by_task_r.items()}
    methods = [m for m in METHOD_ORDER if any(k[0] == m for k in groups)]

    # Cross-check against the harness's own aggregation.
    summ_path = os.path.join(args.results, "summary.json")
    if os.path.exists(summ_path):
        for row in json.load(open(summ_path)):
            if row["group"] == "overall":
                g = groups.get((row["method"], row["target_budget"]))
                if g is None or g["k"] != row["correct"] or g["n"] != row["n"]:
                    sys.exit(f"summary.json disagrees with results.jsonl for {row['method']} {row['target_budget']}")

    os.makedirs(args.plots, exist_ok=True)
    plots = plot(groups, budgets, lengths, by_len, args.plots, args.prefix)

    cfg = meta.get("config", {})
    mach = meta.get("machine", {})
    n_q = len({r["qid"] for r in recs})
    dense = groups.get(("dense", 1.0))
    L = []
    L.append(f"# {args.title}\n")
    L.append("Generated by `eval/report.py` from the raw results of `sqz eval` "
             f"(config `{cfg.get('name', '?')}`); do not edit by hand — edit `eval/discussion.md` "
             "and rerun the script.\n")

    # ---- verdict ----
    L.append("## Verdict\n")
    verdict = []
    low = [b for b in budgets if b <= 0.125 + 1e-12]
    for sq in [m for m in ("squeeze", "squeeze_h") if m in methods]:
        for b in low:
            g = groups.get((sq, b))
            if not g or not dense:
                continue
            d = paired_diff(by[(sq, b)], by[("dense", 1.0)])
            qd = paired_diff(by[(sq, b)], by.get(("quest", b), [])) if ("quest", b) in by else None
            within = abs(g["acc"] - dense["acc"]) <= 0.01
            s = (f"- **{LABEL[sq]}, target budget {fmt_budget(b)}** (measured {pct(g['budget'])}% of "
                 f"context keys incl. centroids and the observation window): accuracy {pct(g['acc'])}% vs dense "
                 f"{pct(dense['acc'])}% — difference {100 * d['diff']:+.1f} points "
                 f"(paired 95% bootstrap interval [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}], "
                 f"{d['b_only']} questions only dense got right, {d['a_only']} only squeezed); "
                 f"**{'within' if within else 'NOT within'} 1 point of dense**.")
            if qd:
                gq = groups[("quest", b)]
                above = qd["lo"] > 0
                s += (f" Quest at the same budget: {pct(gq['acc'])}%; squeezed minus Quest "
                      f"{100 * qd['diff']:+.1f} points [{100 * qd['lo']:+.1f}, {100 * qd['hi']:+.1f}]: "
                      f"**{'above Quest' if above else 'not clearly above Quest'}** (above = the paired "
                      f"interval excludes 0).")
            verdict.append(s)
    L.extend(verdict if verdict else ["- (no squeezed result at a budget <= 1/8)"])
    L.append("")
    if os.path.exists(args.discussion):
        L.append(open(args.discussion).read().rstrip() + "\n")

    # ---- setup ----
    L.append("## Setup\n")
    L.append(f"- Model: `{os.path.basename(meta.get('model', '?'))}` (greedy decoding, "
             f"at most {cfg.get('gen', {}).get('max_tokens')} tokens, stop at {json.dumps(cfg.get('gen', {}).get('stop'))}).")
    L.append(f"- Machine: {mach.get('cpu_model', '?')}, {mach.get('logical_cores', '?')} logical cores, "
             f"{mach.get('threads', '?')} threads.")
    if "segments" in meta:
        # A run resumed after interruptions (sqz eval --resume): totals over its segments.
        L.append(f"- Wall time: {meta['wall_s_total'] / 60:.1f} min over {len(meta['segments'])} segments, "
                 f"{meta['cpu_s_total'] / 60:.1f} min of process CPU time:")
        for sg in meta["segments"]:
            L.append(f"  - questions {sg['questions']}: {sg['wall_s'] / 60:.1f} min wall, {sg['cpu_s'] / 60:.1f} min CPU — {sg['end']}")
    elif "wall_s" in meta:
        L.append(f"- Wall time: {meta['wall_s'] / 60:.1f} min, {meta.get('cpu_s', 0) / 60:.1f} min of process CPU time "
                 f"(compiles {meta.get('compile_s', 0) / 60:.1f} min, questions {meta.get('questions_s', 0) / 60:.1f} min).")
    L.append("- Reproduce (from the repository root, after `scripts/setup.sh`; `--resume` continues an "
             "interrupted run; `OMP_WAIT_POLICY=passive` keeps OpenMP threads from spinning when the cores are shared):")
    L.append("")
    L.append("  ```sh")
    L.append("  cmake -S . -B build && cmake --build build --target sqz -j2")
    L.append("  OMP_WAIT_POLICY=passive build/sqz eval --config " + str(cfg.get("name", "full")) +
             " --out eval/out --threads " + str(mach.get("threads", 2)))
    for spec in args.ablation:
        label, _, d = spec.partition("=")
        name = os.path.basename(os.path.normpath(d))
        L.append(f"  OMP_WAIT_POLICY=passive build/sqz eval --config eval/configs/{name}.json --out eval/out/{name} --threads 2")
    L.append("  pip install matplotlib   # for the report")
    cmd = ["python3", "eval/report.py"] + [a if " " not in a else f'"{a}"' for a in sys.argv[1:]]
    L.append("  " + " ".join(cmd))
    L.append("  ```")
    L.append("")
    if meta.get("command"):
        L.append(f"- This run: `{meta['command']}`.")
    L.append(f"- {n_q} questions over {len({(r['task'], r['length'], r['instance']) for r in recs})} compiled "
             f"contexts; {len(recs)} (question, method, budget) records. Context lengths {', '.join(str(x) for x in lengths)} tokens; "
             f"tasks {', '.join(tasks)}.")
    comp = cfg.get("compile", {})
    L.append(f"- Packs: fine clusters {comp.get('clusters')} of the keys, coarse {comp.get('coarse')}, "
             f"observation window {comp.get('obs_window')} tokens; squeezed sink tokens {cfg.get('squeeze_sink_tokens', 0)}.")
    L.append("")
    L.append("```json\n" + json.dumps(cfg, indent=1) + "\n```\n")

    # ---- overall table ----
    L.append("## Overall results\n")
    L.append("Accuracy = fraction of questions whose greedy answer contains every expected value "
             "(normalized; rule in `src/eval/scoring.h`), with 95% Wilson intervals. Agreement = "
             "normalized answer equal to the dense answer. KL = mean over questions of the mean over the dense answer's "
             "tokens of KL(dense ‖ method) of the next-token distributions (teacher-forced on the dense answer). "
             "Mass = true softmax mass of the fixed-context keys the method read (mean over rows, heads, layers; "
             "measured on a subset of questions, `mass n`). Budget = measured (keys read incl. observation window + "
             "centroids or page metadata compared) / context keys, mean over questions.\n")
    L.append("| method | target budget | measured budget (keys + centroids) | n | accuracy % [95% CI] | agree % | KL | mass (n) |")
    L.append("|---|---|---|---|---|---|---|---|")
    for m in methods:
        for b in ([1.0] if m == "dense" else budgets):
            g = groups.get((m, b))
            if not g:
                continue
            L.append(f"| {LABEL[m]} | {'—' if m == 'dense' else fmt_budget(b)} | {pct(g['budget'])}% ({pct(g['kept'])} + {pct(g['cent'])}) | {g['n']} | "
                     f"{pct(g['acc'])} [{pct(g['lo'])}, {pct(g['hi'])}] | {pct(g['agree'])} | {num(g['kl'])} | "
                     f"{num(g['mass'])} ({g['mass_n']}) |")
    L.append("")
    for p in plots:
        L.append(f"![{os.path.basename(p)}]({os.path.relpath(p, os.path.dirname(args.md) or '.')})\n")

    # ---- per length ----
    L.append("## Accuracy by context length\n")
    L.append("| method | target budget | " + " | ".join(f"{x} tok" for x in lengths) + " |")
    L.append("|---|---|" + "---|" * len(lengths))
    for m in methods:
        for b in ([1.0] if m == "dense" else budgets):
            cells = []
            for x in lengths:
                g = by_len.get((x, m, b))
                cells.append("–" if not g else f"{pct(g['acc'], 0)} ({g['n']})")
            if any(c != "–" for c in cells):
                L.append(f"| {LABEL[m]} | {'—' if m == 'dense' else fmt_budget(b)} | " + " | ".join(cells) + " |")
    L.append("\nKL(dense ‖ method) by length:\n")
    L.append("| method | target budget | " + " | ".join(f"{x} tok" for x in lengths) + " |")
    L.append("|---|---|" + "---|" * len(lengths))
    for m in methods:
        if m == "dense":
            continue
        for b in budgets:
            cells = [num(by_len[(x, m, b)]["kl"]) if (x, m, b) in by_len else "–" for x in lengths]
            if any(c != "–" for c in cells):
                L.append(f"| {LABEL[m]} | {fmt_budget(b)} | " + " | ".join(cells) + " |")
    L.append("")

    # ---- per task ----
    L.append("## Accuracy by task\n")
    L.append("| method | target budget | " + " | ".join(tasks) + " |")
    L.append("|---|---|" + "---|" * len(tasks))
    for m in methods:
        for b in ([1.0] if m == "dense" else budgets):
            cells = []
            for t in tasks:
                g = by_task.get((t, m, b))
                cells.append("–" if not g else f"{pct(g['acc'], 0)} ({g['n']})")
            if any(c != "–" for c in cells):
                L.append(f"| {LABEL[m]} | {'—' if m == 'dense' else fmt_budget(b)} | " + " | ".join(cells) + " |")
    L.append("")

    # ---- ablations: variants of squeezed attention on a subset of the same questions ----
    if args.ablation:
        L.append("## Ablations\n")
        L.append("Variant runs of squeezed attention on a subset of the questions above (same seed, so the "
                 "same contexts, questions and dense answers); the main run's numbers are restricted to the "
                 "same questions.\n")
        L.append("| run | method | target budget | n | measured budget (keys + centroids) | accuracy % [95% CI] | agree % | KL | mass |")
        L.append("|---|---|---|---|---|---|---|---|---|")
        for spec in args.ablation:
            label, _, d = spec.partition("=")
            arecs = read_jsonl(os.path.join(d, "results.jsonl"))
            qids = {r["qid"] for r in arecs}
            main_sub = collections.defaultdict(list)
            for r in recs:
                if r["qid"] in qids:
                    main_sub[(r["method"], r["target_budget"])].append(r)
            abl = collections.defaultdict(list)
            for r in arecs:
                abl[(r["method"], r["target_budget"])].append(r)
            rows = []
            for (m, b) in sorted(abl, key=lambda k: (METHOD_ORDER.index(k[0]), -k[1])):
                if m == "dense":
                    continue
                rows.append((label, m, b, agg(abl[(m, b)])))
                if (m, b) in main_sub:
                    rows.append(("main run", m, b, agg(main_sub[(m, b)])))
            for m in ("dense", "oracle", "quest"):
                for b in ([1.0] if m == "dense" else sorted({k[1] for k in abl if k[0] != "dense"}, reverse=True)):
                    if (m, b) in main_sub:
                        rows.append(("main run", m, b, agg(main_sub[(m, b)])))
            for (lab, m, b, g) in rows:
                L.append(f"| {lab} | {LABEL[m]} | {'—' if m == 'dense' else fmt_budget(b)} | {g['n']} | "
                         f"{pct(g['budget'])}% ({pct(g['kept'])} + {pct(g['cent'])}) | "
                         f"{pct(g['acc'])} [{pct(g['lo'])}, {pct(g['hi'])}] | {pct(g['agree'])} | {num(g['kl'])} | {num(g['mass'])} |")
            ameta_p = os.path.join(d, "meta.json")
            if os.path.exists(ameta_p):
                acfg = json.load(open(ameta_p)).get("config", {})
                L.append(f"\n`{label}`: compile {json.dumps(acfg.get('compile'))}, squeezed sink tokens "
                         f"{acfg.get('squeeze_sink_tokens', 0)}.\n")
        L.append("")

    # ---- cost ----
    if compiles:
        L.append("## Cost\n")
        L.append("| context length | compiles | mean compile s (prefill s) | mean s per question (all methods) |")
        L.append("|---|---|---|---|")
        for x in lengths:
            cs = [c for c in compiles if c["length"] == x]
            qs = collections.defaultdict(float)
            for r in recs:
                if r["length"] == x:
                    qs[r["qid"]] += r["ask_s"] + r["score_s"]
            if cs:
                L.append(f"| {x} | {len(cs)} | {mean([c['total_s'] for c in cs]):.1f} ({mean([c['prefill_s'] for c in cs]):.1f}) | "
                         f"{mean(list(qs.values())):.1f} |")
        L.append("")

    os.makedirs(os.path.dirname(args.md) or ".", exist_ok=True)
    with open(args.md, "w") as f:
        f.write("\n".join(L) + "\n")
    print(f"wrote {args.md} and {', '.join(plots)}")

    if args.export:
        os.makedirs(args.export, exist_ok=True)
        with open(os.path.join(args.results, "results.jsonl"), "rb") as src, \
                gzip.GzipFile(os.path.join(args.export, "results.jsonl.gz"), "wb", mtime=0) as dst:
            shutil.copyfileobj(src, dst)
        for name in ("compiles.jsonl", "meta.json", "summary.csv"):
            pth = os.path.join(args.results, name)
            if os.path.exists(pth):
                shutil.copy(pth, os.path.join(args.export, name))
        print(f"exported to {args.export}")


if __name__ == "__main__":
    main()
