#!/usr/bin/env bash
# Runs every test: installs what is missing (Python environment with libtorch, PyTorch
# reference data), then the whole Rust suite against the real libtorch. Extra arguments go to
# cargo nextest (e.g. a test name filter).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/env.sh
GRADCAM_TEST_REFERENCE="$(scripts/reference.sh)"
GRADCAM_TEST_FAMILY="$(scripts/reference.sh family)"
GRADCAM_TEST_TRAINED="$(scripts/reference.sh trained)"
export GRADCAM_TEST_REFERENCE GRADCAM_TEST_FAMILY GRADCAM_TEST_TRAINED

# The code as written: formatted, and clean under the lints Cargo.toml's [lints] table names.
cargo fmt --check
cargo clippy --release --all-targets --features fault-injection -- -D warnings

# Release builds, with the test-only fault hook on (smoke.sh below then checks the shipped build).
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --release --features fault-injection --no-fail-fast "$@"
else
  cargo test --release --features fault-injection --no-fail-fast "$@"
fi

# And what a user's CI does with curl against the release binary.
scripts/smoke.sh
