#!/usr/bin/env bash
# Runs every test: installs what is missing (Python environment with libtorch, PyTorch
# reference data), then the whole Rust suite against the real libtorch. Extra arguments go to
# cargo nextest (e.g. a test name filter).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/env.sh
scripts/setup.sh
# The trained reference (minutes of training when it is not cached) is made while cargo lints and
# builds, at the lowest priority: it takes the cycles the build's serial stretches (build
# scripts, the last crates, linking) leave idle, and never the build's. (At the same priority
# the two took turns on two cores and both ran slower: training 813 s instead of 203, the
# lints and the build 4.5 minutes longer.)
trained_out="$(mktemp)"
trap 'rm -f "$trained_out"' EXIT
nice -n 19 scripts/reference.sh trained >"$trained_out" &
trained_pid=$!
GRADCAM_TEST_REFERENCE="$(scripts/reference.sh)"
GRADCAM_TEST_FAMILY="$(scripts/reference.sh family)"
export GRADCAM_TEST_REFERENCE GRADCAM_TEST_FAMILY

# The code as written: formatted, and clean under the lints Cargo.toml's [lints] table names.
cargo fmt --check
cargo clippy --release --all-targets --features fault-injection -- -D warnings

# Release builds, with the test-only fault hook on (smoke.sh below then checks the shipped build).
runner=(nextest run)
cargo nextest --version >/dev/null 2>&1 || runner=(test)
cargo "${runner[@]}" --release --features fault-injection --no-run
wait "$trained_pid" || { echo "test: the trained reference could not be made" >&2; exit 1; }
GRADCAM_TEST_TRAINED="$(cat "$trained_out")"
export GRADCAM_TEST_TRAINED
cargo "${runner[@]}" --release --features fault-injection --no-fail-fast "$@"

# And what a user's CI does with curl against the release binary.
scripts/smoke.sh
