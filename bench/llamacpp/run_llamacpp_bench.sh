#!/usr/bin/env bash
# Runs llama.cpp's llama-bench on a model as the CPU baseline for sqz.
#
# Usage: bench/llamacpp/run_llamacpp_bench.sh <llama-bench> <model.gguf> <out.json>
#
# Measures prompt processing of 256 tokens (pp256) and generation of 64 tokens
# (tg64) after a KV-cache prefill of depth 0, 2048 and 7680 tokens, with 1 and
# 2 threads. Depth 8192 would need n_ctx = 8192+256+64 > the model's 8192
# training context, so the top depth is capped at 7680 (7680+256+64 = 8000).
# Extra arguments after out.json are passed to llama-bench (e.g. -r 3).
#
# out.json is {"meta": {...host/load/version...}, "llama_bench": [<llama-bench -o json>]}.
set -euo pipefail

if [ $# -lt 3 ]; then
  echo "usage: $0 <llama-bench> <model.gguf> <out.json> [extra llama-bench args]" >&2
  exit 2
fi
BENCH="$1"
MODEL="$2"
OUT="$3"
shift 3

N_CTX_TRAIN=8192
P=256
N=64
DEPTHS=()
for d in 0 2048 8192; do
  if [ $((d + P + N)) -gt $N_CTX_TRAIN ]; then d=7680; fi
  DEPTHS+=("$d")
done
DEPTH_LIST="$(IFS=,; echo "${DEPTHS[*]}")"

TMP="$(mktemp)"
trap 'rm -f "$TMP"' EXIT
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
START="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "[run_llamacpp_bench] $BENCH -m $MODEL -p $P -n $N -d $DEPTH_LIST -t 1,2 -o json $*" >&2
"$BENCH" -m "$MODEL" -p "$P" -n "$N" -d "$DEPTH_LIST" -t 1,2 -o json "$@" >"$TMP"
END="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"
INFO_FILE="$(dirname "$BENCH")/SQZ_BUILD_INFO"
INFO="$( [ -f "$INFO_FILE" ] && cat "$INFO_FILE" || echo unknown)"

python3 - "$TMP" "$OUT" "$MODEL" "$START" "$END" "$LOAD_BEFORE" "$LOAD_AFTER" "$INFO" \
  "$DEPTH_LIST" <<'PY'
import hashlib, json, os, platform, sys
tmp, out, model, start, end, lb, la, info, depths = sys.argv[1:10]
rows = json.load(open(tmp))
cpu = "unknown"
for line in open("/proc/cpuinfo"):
    if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
h = hashlib.sha256()
with open(model, "rb") as f:
    for b in iter(lambda: f.read(1 << 20), b""):
        h.update(b)
meta = {
    "tool": "llama-bench", "build": info, "model": os.path.basename(model),
    "model_sha256": h.hexdigest(), "depths": [int(d) for d in depths.split(",")],
    "start_utc": start, "end_utc": end, "loadavg_before": lb, "loadavg_after": la,
    "host_cpu": cpu, "host_nproc": os.cpu_count(), "platform": platform.platform(),
    "note": "avg_ts = tokens/s averaged over repetitions; pp = prompt processing, "
            "tg = generation, n_depth = tokens already in the KV cache.",
}
os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
with open(out, "w") as f:
    json.dump({"meta": meta, "llama_bench": rows}, f, indent=1)
    f.write("\n")
print(f"{'test':>8} {'depth':>6} {'thr':>3} {'tok/s':>10} {'+-':>8}")
for r in rows:
    t = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
    print(f"{t:>8} {r['n_depth']:>6} {r['n_threads']:>3} {r['avg_ts']:>10.2f} {r['stddev_ts']:>8.2f}")
PY
echo "[run_llamacpp_bench] wrote $OUT" >&2
