#!/usr/bin/env bash
# Builds the GGUF (and safetensors) libFuzzer targets with clang + ASan + UBSan and runs them.
#
#   scripts/fuzz_gguf.sh [RUNS] [extra libFuzzer flags...]      (RUNS defaults to 1000000)
#
# The fuzzers are compiled straight from the few sources they need rather than through CMake,
# because the CMake fuzz build links sqz_core without coverage instrumentation
# (-fsanitize=fuzzer-no-link), which would leave libFuzzer blind inside the parser.
# Seeds live in fuzz/corpus_gguf/ (regenerated with GgufWriter when missing); new inputs that
# libFuzzer finds go to build-fuzz-manual/corpus_gguf/ so the checked-in seeds stay small.
# Set SAFETENSORS_RUNS=N to also run the safetensors fuzzer for N executions (seed:
# fuzz/corpus_safetensors/seed.safetensors, written by the `safetensors` Python package).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/build-fuzz-manual"
runs=${1:-1000000}
shift || true
cxx=${CXX_FUZZ:-clang++}
mkdir -p "$out/corpus_gguf" "$out/corpus_safetensors" "$root/fuzz/corpus_gguf"

common=(-std=c++20 -g -O1 -fno-omit-frame-pointer -I"$root/src")
san=(-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined)
core=("$root/src/core/dtype.cpp" "$root/src/core/mmap_file.cpp")

echo "[fuzz] building fuzz_gguf"
"$cxx" "${common[@]}" "${san[@]}" "$root/fuzz/fuzz_gguf.cpp" "$root/src/formats/gguf.cpp" \
  "${core[@]}" -lfmt -o "$out/fuzz_gguf"

if [ -z "$(ls -A "$root/fuzz/corpus_gguf")" ]; then
  echo "[fuzz] generating seed corpus"
  "$cxx" "${common[@]}" -O2 "$root/fuzz/gen_gguf_corpus.cpp" "$root/src/formats/gguf_writer.cpp" \
    "$root/src/formats/gguf.cpp" "${core[@]}" -lfmt -o "$out/gen_gguf_corpus"
  "$out/gen_gguf_corpus" "$root/fuzz/corpus_gguf"
fi

echo "[fuzz] running fuzz_gguf for $runs executions"
"$out/fuzz_gguf" -runs="$runs" -max_len=65536 -dict="$root/fuzz/gguf.dict" -print_final_stats=1 \
  "$@" "$out/corpus_gguf" "$root/fuzz/corpus_gguf"

if [ -n "${SAFETENSORS_RUNS:-}" ]; then
  echo "[fuzz] building fuzz_safetensors"
  "$cxx" "${common[@]}" "${san[@]}" "$root/fuzz/fuzz_safetensors.cpp" \
    "$root/src/formats/safetensors.cpp" "$root/src/formats/model_file.cpp" \
    "$root/src/formats/gguf.cpp" "$root"/src/tokenizer/*.cpp "${core[@]}" -lfmt -lpcre2-8 \
    -o "$out/fuzz_safetensors"
  "$out/fuzz_safetensors" -runs="$SAFETENSORS_RUNS" -max_len=4096 -print_final_stats=1 \
    "$out/corpus_safetensors" "$root/fuzz/corpus_safetensors"
fi
