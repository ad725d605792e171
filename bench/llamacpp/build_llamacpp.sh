#!/usr/bin/env bash
# Builds a CPU-only llama.cpp (the copy vendored in the llama-cpp-python sdist on
# PyPI) as a performance/accuracy baseline for sqz.
#
# Why the sdist: PyPI is the only source registry reachable from the project's
# machines, and llama-cpp-python pins a known llama.cpp commit in vendor/llama.cpp,
# so the baseline is reproducible by version number alone.
#
# Usage: bench/llamacpp/build_llamacpp.sh [VERSION] [WORKDIR]
#   VERSION  llama-cpp-python version (default below)
#   WORKDIR  where to download/unpack/build; default: a fresh `mktemp -d`.
#            Must be outside the repository.
# Progress goes to stderr; the LAST line on stdout is the absolute path of the
# llama-bench binary (llama-perplexity and llama-completion/llama-cli sit next
# to it).
set -euo pipefail

VERSION="${1:-0.3.36}"
WORKDIR="${2:-$(mktemp -d -t sqz-llamacpp.XXXXXX)}"
JOBS="${JOBS:-2}"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
WORKDIR="$(mkdir -p "$WORKDIR" && cd "$WORKDIR" && pwd)"
case "$WORKDIR/" in
"$REPO_ROOT"/*)
  echo "error: WORKDIR must be outside the repository ($REPO_ROOT)" >&2
  exit 2
  ;;
esac

log() { echo "[build_llamacpp] $*" >&2; }

log "workdir: $WORKDIR"
cd "$WORKDIR"
if ! ls llama_cpp_python-"$VERSION".tar.gz >/dev/null 2>&1; then
  log "downloading llama-cpp-python==$VERSION sdist"
  python3 -m pip download --no-deps --no-binary :all: \
    -d "$WORKDIR" "llama-cpp-python==$VERSION" >&2
fi
SDIST="$(ls "$WORKDIR"/llama_cpp_python-"$VERSION".tar.gz)"
SRC="$WORKDIR/llama_cpp_python-$VERSION"
if [ ! -d "$SRC" ]; then
  log "unpacking $SDIST"
  tar -xzf "$SDIST" -C "$WORKDIR"
fi
LLAMA="$SRC/vendor/llama.cpp"
[ -f "$LLAMA/CMakeLists.txt" ] || { echo "error: no vendored llama.cpp in $SRC" >&2; exit 1; }

BUILD="$WORKDIR/build"
# GGML_NATIVE=ON means -march=native, which on Sapphire Rapids also enables
# ggml's AMX path; in this vendored version that path dies with a general
# protection fault in ggml_backend_amx_mul_mat on our Q4_1 model (seen on the
# project's Xeon VMs although the kernel grants AMX tile permission). GCC/Clang
# honour explicit -mno-* ISA flags over -march regardless of order, so this
# keeps every other native ISA extension (AVX-512, VNNI, ...) and drops AMX.
NO_AMX=""
if echo | "${CC:-cc}" -march=native -dM -E - 2>/dev/null | grep -q __AMX_TILE__; then
  NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  log "host has AMX: building with $NO_AMX"
fi
log "configuring (CPU only, Release, GGML_NATIVE=ON, BLAS off)"
# LLAMA_CURL=OFF: no network at run time and libcurl headers may be absent.
# LLAMA_BUILD_TESTS/SERVER off to keep the 2-core build short.
cmake -S "$LLAMA" -B "$BUILD" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_C_FLAGS="$NO_AMX" \
  -DCMAKE_CXX_FLAGS="$NO_AMX" \
  -DGGML_NATIVE=ON \
  -DGGML_BLAS=OFF \
  -DGGML_CUDA=OFF \
  -DGGML_METAL=OFF \
  -DGGML_VULKAN=OFF \
  -DGGML_OPENMP=ON \
  -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_SERVER=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_TOOLS=ON \
  -DBUILD_SHARED_LIBS=OFF >&2

# Recent llama.cpp moved the classic text-completion CLI to `llama-completion`;
# `llama-cli` became a chat client that is only built with the server. Pick
# whichever plain CLI this version has.
CLI_TARGET=llama-cli
[ -d "$LLAMA/tools/completion" ] && CLI_TARGET=llama-completion
log "building llama-bench llama-perplexity $CLI_TARGET with -j$JOBS"
cmake --build "$BUILD" -j"$JOBS" --target llama-bench llama-perplexity "$CLI_TARGET" >&2

BENCH="$BUILD/bin/llama-bench"
[ -x "$BENCH" ] || { echo "error: $BENCH not built" >&2; exit 1; }
# Record what was built, for the results JSON.
echo "llama-cpp-python $VERSION (vendored llama.cpp), CPU, Release, GGML_NATIVE=ON${NO_AMX:+, $NO_AMX}" \
  >"$BUILD/bin/SQZ_BUILD_INFO"
log "done"
echo "$BENCH"
