#!/usr/bin/env bash
# Runs every test: installs what is missing (Python environment with libtorch, PyTorch
# reference data), then the whole Rust suite against the real libtorch. Extra arguments go to
# cargo nextest (e.g. a test name filter).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/env.sh
scripts/setup.sh

# The PyTorch reference (seeded weights, logits, maps, edge-case images) is regenerated only
# when tests/reference.py changes.
ref="$GRADCAM_CACHE/reference"
want="$(sha256sum tests/reference.py | cut -d' ' -f1)"
if [ "$(cat "$ref/stamp" 2>/dev/null)" != "$want" ]; then
  echo "test: generating the PyTorch reference into $ref" >&2
  rm -rf "$ref.tmp"
  python tests/reference.py "$ref.tmp"
  rm -rf "$ref"
  mv "$ref.tmp" "$ref"
fi
export GRADCAM_TEST_REFERENCE="$ref"

# One release build serves the tests, the benchmarks and scripts/run.sh.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --release --no-fail-fast "$@"
else
  cargo test --release --no-fail-fast "$@"
fi
