#!/usr/bin/env bash
# Bad input gets a clear error and a non-zero exit, never a crash: malformed model files,
# malformed / mismatched packs, bad flags, oversized prompts.
# Usage: test_cli_errors.sh path/to/sqz
set -uo pipefail
SQZ="$1"
MODEL="$(cd "$(dirname "$0")/../.." && pwd)/models/SmolLM2-135M-Instruct.Q4_1.gguf"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0
pass=0

# expect_fail NAME EXPECTED_SUBSTRING cmd...: non-zero exit (not a signal), message on stderr.
expect_fail() {
  local name="$1" want="$2"
  shift 2
  "$@" >"$T/out" 2>"$T/err"
  local rc=$?
  if [[ $rc -eq 0 || $rc -ge 128 ]]; then
    echo "FAIL $name: exit code $rc"; sed 's/^/   /' "$T/err" | head -5; fails=$((fails + 1)); return
  fi
  if ! grep -qi -- "$want" "$T/err"; then
    echo "FAIL $name: stderr lacks '$want':"; sed 's/^/   /' "$T/err" | head -5; fails=$((fails + 1)); return
  fi
  echo "ok   $name (exit $rc): $(head -1 "$T/err")"
  pass=$((pass + 1))
}

# ---- malformed model files ----
head -c 100000 "$MODEL" >"$T/trunc.gguf"
expect_fail truncated-gguf "trunc.gguf" "$SQZ" generate -p hi -m "$T/trunc.gguf"
printf 'GGUX\003\000\000\000' >"$T/magic.gguf"; head -c 4096 "$MODEL" | tail -c 4088 >>"$T/magic.gguf"
expect_fail bad-magic "magic" "$SQZ" generate -p hi -m "$T/magic.gguf"
{ printf 'GGUF\011\000\000\000'; head -c 200000 "$MODEL" | tail -c +9; } >"$T/version.gguf"
expect_fail bad-version "version" "$SQZ" generate -p hi -m "$T/version.gguf"
: >"$T/empty.gguf"
expect_fail empty-file "empty.gguf" "$SQZ" generate -p hi -m "$T/empty.gguf"
expect_fail missing-model "no such file" "$SQZ" generate -p hi -m "$T/nope.gguf"
mkdir -p "$T/hfdir"
expect_fail empty-hf-dir "config.json" "$SQZ" generate -p hi -m "$T/hfdir"

# ---- bad flags ----
expect_fail bad-threads "threads" "$SQZ" generate -p hi -t -3
expect_fail bad-temperature "temperature" "$SQZ" generate -p hi --temperature abc
expect_fail unknown-flag "--frobnicate" "$SQZ" generate -p hi --frobnicate
expect_fail bad-clusters "clusters" "$SQZ" compile -c /dev/null -o "$T/x.pack" --clusters 150%
expect_fail missing-context "nope.txt" "$SQZ" compile -c "$T/nope.txt" -o "$T/x.pack"
expect_fail bad-kv-type "kv-type" "$SQZ" compile -c /dev/null -o "$T/x.pack" --kv-type q4

# ---- oversized prompt ----
python3 -c "print('word ' * 9000)" >"$T/big.txt"
expect_fail oversized-prompt "context" "$SQZ" generate -p "$(cat "$T/big.txt")" -n 1
expect_fail oversized-context "context" "$SQZ" compile -c "$T/big.txt" -o "$T/big.pack"
[[ -e "$T/big.pack" ]] && { echo "FAIL oversized-context left a file"; fails=$((fails + 1)); }

# ---- packs: valid one, then corruptions ----
python3 -c "
import sys
t = open('/usr/share/perl/5.36.0/pod/perlsyn.pod').read()[:2500]
open('$T/ctx.txt', 'w').write(t)"
if ! "$SQZ" compile -c "$T/ctx.txt" -o "$T/good.pack" --obs-window 32 >"$T/out" 2>"$T/err"; then
  echo "FAIL compile good pack"; cat "$T/err"; exit 1
fi
expect_fail missing-pack "nope.pack" "$SQZ" ask --pack "$T/nope.pack" -q hi
size=$(stat -c %s "$T/good.pack")
head -c $((size / 2)) "$T/good.pack" >"$T/trunc.pack"
expect_fail truncated-pack "trunc.pack" "$SQZ" ask --pack "$T/trunc.pack" -q hi
cp "$T/good.pack" "$T/flip.pack"
printf '\xff' | dd of="$T/flip.pack" bs=1 seek=$((size * 3 / 4)) conv=notrunc status=none
expect_fail corrupted-pack "checksum" "$SQZ" ask --pack "$T/flip.pack" -q hi
cp "$T/good.pack" "$T/ver.pack"
printf '\x63\x00\x00\x00' | dd of="$T/ver.pack" bs=1 seek=8 conv=notrunc status=none
expect_fail unknown-pack-version "version" "$SQZ" ask --pack "$T/ver.pack" -q hi
cp "$MODEL" "$T/notapack.pack"
expect_fail model-as-pack "notapack.pack" "$SQZ" ask --pack "$T/notapack.pack" -q hi
expect_fail levels2-without-coarse "coarse" bash -c "'$SQZ' compile -c '$T/ctx.txt' -o '$T/nocoarse.pack' --coarse 0 --obs-window 32 >/dev/null 2>&1 && '$SQZ' ask --pack '$T/nocoarse.pack' -q hi --levels 2"
expect_fail budget-and-percentile "exclusive" "$SQZ" ask --pack "$T/good.pack" -q hi --budget 0.1 --percentile 0.9
expect_fail coarse-percentile-needs-calibrated "coarse-rule calibrated" "$SQZ" ask --pack "$T/good.pack" -q hi --coarse-percentile 0.5
expect_fail bad-coarse-rule "coarse-rule" "$SQZ" ask --pack "$T/good.pack" -q hi --coarse-rule widest
# (A pack opened with a different model: TinyModelSqueeze.PackFromAnotherModelIsRejected.)

# ---- --device cuda where no GPU is visible (or CUDA is not built): a clear error, no crash ----
CUDA_VISIBLE_DEVICES="" expect_fail cuda-without-gpu "device cuda" "$SQZ" generate --device cuda -p hi -n 2
CUDA_VISIBLE_DEVICES="" expect_fail cuda-ask-without-gpu "device cuda" "$SQZ" ask --device cuda --pack "$T/good.pack" -q hi

echo "$pass passed, $fails failed"
[[ $fails -eq 0 ]]
