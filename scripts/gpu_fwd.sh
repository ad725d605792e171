#!/usr/bin/env bash
# GPU forward pass (--device cuda) on a GPU machine with binaries built elsewhere: the device
# machines have no fmt / nlohmann / CLI11 / OpenBLAS / gtest, so `sqz` and `test_cuda_forward`
# are built on a CPU machine (cmake -DSQZ_CUDA=ON, static libstdc++/OpenBLAS) and carried in
# $CARRY/bin.tar.xz with the few shared libraries they need ($CARRY/lib ...).
#
# Usage: scripts/gpu_fwd.sh STAGE...   (stages run in order; logs and JSON lines go to $OUT)
#   unpack   binaries -> $W; model parts $CARRY/model.part* -> $W (kept while the machine is warm)
#   smoke    device info, `sqz --version`, the no-GPU error (CUDA_VISIBLE_DEVICES=""), a tiny
#            random model generated and run with --device cuda
#   tiny     test_cuda_forward on tiny random models (all weight types, compile + ask)
#   tinycli  sqz compile / ask --json on a tiny random model, GPU and CPU
#   default  assemble the default model from its parts; test_cuda_forward on it; CLI
#            generate / compile / ask on GPU and CPU
#   bench    Llama-3-8B-shaped random model: compile a 128K-token context, ask dense vs squeezed
# Env: OUT (default /tmp/sqz_fwd_out), W (default /root/g2), CARRY (default .g2carry),
#      SQZ_COMMIT (tag recorded in the JSON), CTX_BYTES (bench context, default 131060).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/sqz_fwd_out}
W=${W:-/root/g2}
CARRY=${CARRY:-.g2carry}
TAG=${SQZ_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)+wip}
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
mkdir -p "$OUT" "$W"
export PYTHONUNBUFFERED=1

libpath() {
  local d="$W/lib:/usr/local/cuda/lib64"
  local p
  p=$(python3 -c 'import nvidia.cublas, os; print(os.path.join(os.path.dirname(nvidia.cublas.__file__), "lib"))' 2>/dev/null)
  [ -n "$p" ] && d="$d:$p"
  echo "$d"
}
export LD_LIBRARY_PATH="$(libpath):${LD_LIBRARY_PATH:-}"
SQZ="$W/sqz"
CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)

jl() {  # one JSON line of bench results: jl '{"k": v, ...}'
  python3 - "$1" "$CARD" "$TAG" "$DATE" <<'PY' | tee -a "$OUT/cuda_fwd.jsonl"
import json, sys
d = json.loads(sys.argv[1]); d.update(card=sys.argv[2], commit=sys.argv[3], date=sys.argv[4])
print(json.dumps(d))
PY
}

unpack() {
  if [ -f "$CARRY/bin.tar.xz" ]; then
    tar -xJf "$CARRY/bin.tar.xz" -C "$W" 2>/dev/null ||
      python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" \
        "$CARRY/bin.tar.xz" "$W" || return 1
  fi
  for p in "$CARRY"/model.part*; do [ -f "$p" ] && cp "$p" "$W/"; done
  ls -la "$W" | head -20
  [ -x "$SQZ" ] || { echo "NO BINARIES in $W (cold machine?)"; return 1; }
}

smoke() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$SQZ" --version || return 1
  ldd "$SQZ" | grep -E "not found|cublas" || true
  "$SQZ" gen-model --preset tiny --type q8_0 --out "$W/tiny.gguf" --json || return 1
  echo "--- no GPU visible:"
  CUDA_VISIBLE_DEVICES="" "$SQZ" generate --device cuda -m "$W/tiny.gguf" -p "hello" -n 4; echo "rc=$?"
  echo "--- tiny generate on the GPU:"
  "$SQZ" generate --device cuda -m "$W/tiny.gguf" -p "hello there" -n 8 --json
}

tiny() {
  "$W/test_cuda_forward" --gtest_filter='CudaForward.Tiny*' 2>&1 | tee "$OUT/test_tiny.log" | grep -E "^\[|cuda-fwd|Failure|Expected|Which|actual|error" | head -80
  local trc=${PIPESTATUS[0]}
  [ "$trc" = 0 ] && touch "$W/tiny_ok"
  return "$trc"
}

default_model() {
  if [ ! -f "$MODEL" ]; then
    ls "$W"/model.part* >/dev/null 2>&1 || { echo "no model parts"; return 1; }
    mkdir -p models && cat "$W"/model.part* > "$MODEL"
  fi
  echo "$MODEL_SHA  $MODEL" | sha256sum -c - || { rm -f "$MODEL"; return 1; }
  "$W/test_cuda_forward" --gtest_filter='CudaForward.Default*' 2>&1 | tee "$OUT/test_default.log" | grep -E "^\[|cuda-fwd|Failure|Expected|Which|actual|error" | head -80
  local trc=${PIPESTATUS[0]}
  echo "--- CLI on the default model"
  for dev in cuda cpu; do
    "$SQZ" generate --device $dev -p "The capital of France is" -n 16 --json --threads 16 | tee -a "$OUT/cli.log"
  done
  python3 - > "$W/planted.txt" <<'PY'
doc = open("tests/data/golden/ppl_text.txt").read()[:16000]
mid = doc.find("\n\n", len(doc) // 2)
print(doc[:mid] + "\n\nThe secret password for the blue vault is PELICAN-42.\n" + doc[mid:])
PY
  "$SQZ" compile --device cuda --context "$W/planted.txt" --out "$W/planted.sqzpack" --json --threads 16 | tee -a "$OUT/cli.log"
  local q="What is the secret password for the blue vault?"
  for dev in cuda cpu; do
    for mode in "--dense" "--budget 0.5 --estimator mean" "--budget 0.1 --estimator mean"; do
      echo "--- ask $dev $mode"
      "$SQZ" ask --device $dev --pack "$W/planted.sqzpack" -q "$q" -n 16 --json --threads 16 $mode | tee -a "$OUT/cli.log"
    done
  done
  return "$trc"
}

tinycli() {  # CLI compile / ask on a tiny random model, GPU and CPU reading the GPU pack
  local M="$W/tiny_cli.gguf" P="$W/tiny_cli.sqzpack"
  "$SQZ" gen-model --preset tiny --type q4_0 --ctx 8192 --std 0.08 --out "$M" || return 1
  head -c 6000 tests/data/golden/ppl_text.txt > "$W/tiny_ctx.txt"
  "$SQZ" compile --device cuda -m "$M" --context "$W/tiny_ctx.txt" --out "$P" --json || return 1
  local r=0
  for dev in cuda cpu; do
    for mode in "--dense" "--budget 0.2 --estimator mean"; do
      "$SQZ" ask --device $dev -m "$M" --pack "$P" -q "What is it?" -n 24 --json $mode || r=1
    done
  done
  return $r
}

bench() {
  local M="$W/l3.gguf" P="$W/l3.sqzpack" t0 t1
  if [ ! -f "$W/tiny_ok" ] && [ "${FORCE_BENCH:-0}" != 1 ]; then
    echo "skipping bench: the tiny-model GPU tests did not pass on this machine"
    return 1
  fi
  t0=$(date +%s.%N)
  "$SQZ" gen-model --preset llama3-8b --vocab 4096 --ctx 262144 --type q4_0 --out "$M" --json || return 1
  t1=$(date +%s.%N)
  echo "gen-model $(awk "BEGIN{print $t1 - $t0}") s"
  # Letters no merge of the random model's tokenizer touches: one token per byte.
  python3 -c "
import random
random.seed(7); L='bcdfjkmpqvxyz'; n=${CTX_BYTES:-131060}; s=[]
while sum(map(len, s)) < n: s.append(' ' + ''.join(random.choice(L) for _ in range(5)))
print(''.join(s)[:n], end='')" > "$W/ctx.txt"
  local cj
  # The JSON's stage_trace: the GPU compile's stage breakdown (docs/cuda.md, "Compile").
  cj=$("$SQZ" compile --device cuda -m "$M" --context "$W/ctx.txt" --out "$P" \
    --json --threads 16) || return 1
  echo "$cj"
  jl "{\"bench\": \"compile_cuda\", \"model\": \"random llama3-8b shape q4_0 vocab 4096\", \"result\": $cj}"
  ls -la "$P"
  for mode in "--dense" "--budget 0.1 --estimator mean" "--budget 0.05 --estimator mean"; do
    local aj
    aj=$("$SQZ" ask --device cuda -m "$M" --pack "$P" -q "What is it?" -n 64 --json --threads 16 $mode) || return 1
    echo "$aj"
    jl "{\"bench\": \"ask_cuda\", \"mode\": \"$mode\", \"model\": \"random llama3-8b shape q4_0 vocab 4096\", \"result\": $aj}"
  done
}

rc=0
for stage in "$@"; do
  echo "=== $stage ($(date -u +%H:%M:%S))"
  case "$stage" in
    unpack) unpack || exit 1 ;;
    smoke) smoke || rc=1 ;;
    tiny) tiny || rc=1 ;;
    default) default_model || rc=1 ;;
    tinycli) tinycli || rc=1 ;;
    bench) bench || rc=1 ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
echo "=== done rc=$rc ($(date -u +%H:%M:%S))"
exit $rc
