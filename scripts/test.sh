#!/usr/bin/env bash
# Runs the whole test suite from a fresh clone: installs dependencies and the default model
# (via setup.sh), builds with warnings as errors, then runs every test with CTest.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
scripts/setup.sh --no-run --werror --build-dir "$BUILD"
ctest --test-dir "$BUILD" --output-on-failure -j"$(nproc)" --timeout 900
