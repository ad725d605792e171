#!/usr/bin/env bash
# `sqz eval --config smoke` end to end: the harness runs (compile, ask, teacher-forced KL,
# mass), writes well-formed results, and rejects bad configs. Checks the shape and internal
# consistency of the results, not the accuracy numbers.
#   tests/cli/test_eval_smoke.sh path/to/sqz
set -euo pipefail
SQZ=${1:?usage: $0 path/to/sqz}
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
if [[ ! -f $MODEL ]]; then
  echo "skip: $MODEL not found (scripts/setup.sh fetches it)"
  exit 0
fi
if [[ ! -d /usr/share/perl/5.36.0/pod ]]; then
  echo "skip: perl-doc not installed (scripts/setup.sh installs it)"
  exit 0
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# OpenMP threads that spin while waiting are starved when other tests share the two cores;
# passive waiting keeps the run time predictable.
export OMP_WAIT_POLICY=passive

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# ---- bad configs fail cleanly (non-zero exit, message, no crash) ----
echo '{"lengths": [1024], "tasks": [{"task": "nope"}]}' >"$TMP/bad1.json"
echo '{"tasks": [{"task": "niah_single"}], "methods": ["squeeze", "magic"]}' >"$TMP/bad2.json"
echo 'not json' >"$TMP/bad3.json"
for b in bad1 bad2 bad3; do
  if "$SQZ" eval --config "$TMP/$b.json" --out "$TMP/$b" >"$TMP/$b.log" 2>&1; then
    fail "config $b was accepted"
  fi
  grep -q "error:" "$TMP/$b.log" || fail "config $b: no error message"
done
if "$SQZ" eval --config no-such-config --out "$TMP/x" >/dev/null 2>&1; then
  fail "a missing config file was accepted"
fi

# ---- the smoke run ----
start=$(date +%s)
"$SQZ" eval --config smoke --out "$TMP/out" --threads 2 >"$TMP/run.log" 2>&1 || {
  cat "$TMP/run.log"
  fail "sqz eval --config smoke exited with $?"
}
echo "smoke run: $(($(date +%s) - start)) s"
grep -q "questions" "$TMP/run.log" || fail "no summary line"
for f in results.jsonl results.csv summary.json summary.csv meta.json compiles.jsonl tasks.jsonl; do
  [[ -s $TMP/out/$f ]] || fail "missing or empty $f"
done
[[ ! -e $TMP/out/current.sqzpack ]] || fail "temporary pack left behind"

python3 - "$TMP/out" <<'PY'
import csv, json, math, os, sys

out = sys.argv[1]
def die(msg):
    print("FAIL:", msg, file=sys.stderr)
    sys.exit(1)

recs = [json.loads(l) for l in open(os.path.join(out, "results.jsonl"))]
meta = json.load(open(os.path.join(out, "meta.json")))
cfg = meta["config"]
tasks = [json.loads(l) for l in open(os.path.join(out, "tasks.jsonl"))]
n_q = sum(len(t["questions"]) for t in tasks)
if n_q != meta["n_questions"] or n_q < 2:
    die(f"question count {n_q} vs meta {meta['n_questions']}")
methods = ["dense"] + cfg["methods"]
budgets = cfg["budgets"]
want = n_q * (1 + len(cfg["methods"]) * len(budgets))
if len(recs) != want or meta["n_records"] != want:
    die(f"{len(recs)} records, expected {want}")
need = ["qid", "task", "length", "method", "target_budget", "budget", "kept_fraction",
        "centroid_fraction", "answer", "expected", "correct", "exact", "agree_dense", "kl",
        "mass", "tf_match", "generated", "n_ctx", "n_obs"]
by_q = {}
for r in recs:
    for k in need:
        if k not in r:
            die(f"record lacks {k}: {r}")
    if r["method"] not in methods:
        die(f"unknown method {r['method']}")
    by_q.setdefault(r["qid"], {})[(r["method"], r["target_budget"])] = r
    if not (0 < r["budget"] <= 1.5) or not (0 <= r["centroid_fraction"] < 1):
        die(f"budget out of range: {r}")
    if abs(r["budget"] - r["kept_fraction"] - r["centroid_fraction"]) > 1e-9:
        die(f"budget != kept + centroids: {r}")
    if r["kept_fraction"] < r["n_obs"] / r["n_ctx"] - 1e-9:
        die(f"kept fraction below the observation window: {r}")
    if not isinstance(r["correct"], bool) or not r["expected"]:
        die(f"bad correctness fields: {r}")
    # Scoring recomputed independently: every expected value in the normalized answer.
    def norm(s):
        s = s.lower()
        t = []
        for i, c in enumerate(s):
            if c in ",." and 0 < i < len(s) - 1 and s[i-1].isdigit() and s[i+1].isdigit():
                continue
            if c.isascii() and c.isalnum():
                t.append(c)
            elif c == "-" and 0 < i < len(s) - 1 and s[i-1].isascii() and s[i-1].isalnum() and s[i+1].isascii() and s[i+1].isalnum():
                t.append(c)
            else:
                t.append(" ")
        return " ".join("".join(t).split())
    ok = all((" " + norm(e) + " ") in (" " + norm(r["answer"]) + " ") for e in r["expected"])
    if ok != r["correct"]:
        die(f"correct={r['correct']} but recomputed {ok}: {r['answer']!r} vs {r['expected']}")
    if r["kl"] is not None and (not math.isfinite(r["kl"]) or r["kl"] < 0):
        die(f"bad KL {r['kl']}")
    if r["mass"] is not None and not (0 < r["mass"] <= 1 + 1e-9):
        die(f"bad mass {r['mass']}")
for qid, rs in by_q.items():
    d = rs.get(("dense", 1.0))
    if d is None:
        die(f"{qid}: no dense record")
    if d["budget"] != 1.0 or d["kl"] != 0.0 or not d["agree_dense"]:
        die(f"{qid}: dense record inconsistent: {d}")
    if d["tf_match"] is not True:
        die(f"{qid}: dense teacher-forced pass does not reproduce dense generation")
    for (m, b), r in rs.items():
        if m == "dense":
            continue
        if r["kl"] is None:
            die(f"{qid} {m}: KL missing (smoke computes it for every question)")
        # always_generate: the shortcut's prediction must hold whenever it claims a match.
        if cfg.get("always_generate") and r["tf_match"] and r["answer"] != d["answer"]:
            die(f"{qid} {m}: teacher-forced pass matched dense but generation differs")
        if r["agree_dense"] != (norm(r["answer"]) == norm(d["answer"])):
            die(f"{qid} {m}: agree_dense inconsistent")
        # Baselines run at squeezed attention's measured budget (within rounding).
        if m not in ("squeeze", "squeeze_h") and ("squeeze", b) in rs:
            sb = rs[("squeeze", b)]["budget"]
            if abs(r["budget"] - sb) > 0.03:
                die(f"{qid} {m}: budget {r['budget']} not matched to squeezed {sb}")
if not any(r["mass"] is not None for r in recs):
    die("no mass measured")
summ = json.load(open(os.path.join(out, "summary.json")))
overall = {(s["method"], s["target_budget"]): s for s in summ if s["group"] == "overall"}
for m in methods:
    for b in ([1.0] if m == "dense" else budgets):
        s = overall.get((m, b))
        if s is None:
            die(f"summary lacks {m} {b}")
        rs = [r for r in recs if r["method"] == m and r["target_budget"] == b]
        if s["n"] != len(rs) or s["correct"] != sum(r["correct"] for r in rs):
            die(f"summary {m} {b} disagrees with the records")
        if not (s["ci_lo"] <= s["accuracy"] <= s["ci_hi"]):
            die(f"summary {m} {b}: accuracy outside its interval")
rows = list(csv.DictReader(open(os.path.join(out, "results.csv"))))
if len(rows) != len(recs):
    die("results.csv row count")
print(f"OK: {n_q} questions, {len(recs)} records")
PY

# ---- --resume after an interruption reproduces the same records (greedy decoding and every
# selection are deterministic) ----
mkdir -p "$TMP/resumed"
head -n 4 "$TMP/out/results.jsonl" >"$TMP/resumed/results.jsonl"   # one question + a cut block
printf '{"qid": "trunc' >>"$TMP/resumed/results.jsonl"
"$SQZ" eval --config smoke --out "$TMP/resumed" --threads 2 --resume >"$TMP/resume.log" 2>&1 || {
  cat "$TMP/resume.log"
  fail "--resume run failed"
}
grep -q "resume: 1 complete questions kept" "$TMP/resume.log" || fail "resume did not keep exactly the complete question"
python3 - "$TMP/out/results.jsonl" "$TMP/resumed/results.jsonl" <<'PY'
import json, sys
def load(p):
    keep = ("answer", "correct", "budget", "kept_fraction", "centroid_fraction", "kl", "mass",
            "tf_match", "agree_dense")
    return {(r["qid"], r["method"], r["target_budget"]): tuple(r[k] for k in keep)
            for r in map(json.loads, open(p))}
a, b = load(sys.argv[1]), load(sys.argv[2])
if a != b:
    diff = [k for k in a if a[k] != b.get(k)]
    print("FAIL: resumed results differ:", diff[:5], file=sys.stderr)
    sys.exit(1)
PY

# ---- the report script runs on the results (when matplotlib is installed) ----
if python3 -c "import matplotlib" 2>/dev/null; then
  python3 eval/report.py --results "$TMP/out" --md "$TMP/eval.md" --plots "$TMP" \
    --discussion /nonexistent >/dev/null || fail "eval/report.py failed"
  grep -q "## Overall results" "$TMP/eval.md" || fail "report lacks the results table"
  [[ -s $TMP/eval_accuracy.png ]] || fail "report wrote no plot"
fi
echo "PASS"
