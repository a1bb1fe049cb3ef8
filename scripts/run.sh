#!/usr/bin/env bash
# Builds (once) and runs gradcam-serve with the given arguments, installing libtorch first if
# needed. Example: scripts/run.sh explain photo.jpg --out results
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$root/scripts/env.sh"
"$root/scripts/setup.sh"
cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin gradcam-serve
# libtorch's OpenMP threads yield the cores soon after each parallel region (README's
# Performance: "Cores"), unless the environment already says how OpenMP waits.
[ -n "${OMP_WAIT_POLICY:-}" ] || export GOMP_SPINCOUNT="${GOMP_SPINCOUNT:-10000}"
exec "$root/target/release/gradcam-serve" "$@"
