#!/usr/bin/env bash
# Runs every test: installs what is missing (Python environment with libtorch, PyTorch
# reference data), then the whole Rust suite against the real libtorch. Extra arguments go to
# cargo nextest (e.g. a test name filter).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# The PyTorch references are made before cargo runs, not beside it: on two cores the training
# and the build took turns and both ran slower, even with the training at the lowest priority
# (empty-cache runs: 1924 s beside it, 1851 s at nice 19 beside it, 1728 s in order).
. scripts/test_env.sh

# The code as written: formatted, and clean under the lints Cargo.toml's [lints] table names.
cargo fmt --check
cargo clippy --release --all-targets --features fault-injection -- -D warnings

# Release builds, with the test-only fault hook on (smoke.sh below then checks the shipped build).
runner=(nextest run)
cargo nextest --version >/dev/null 2>&1 || runner=(test)
cargo "${runner[@]}" --release --features fault-injection --no-fail-fast "$@"

# And what a user's CI does with curl against the release binary.
scripts/smoke.sh
