#!/usr/bin/env bash
# Builds (once) and runs gradcam-serve with the given arguments, installing libtorch first if
# needed. Example: scripts/run.sh explain photo.jpg --out results
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$root/scripts/env.sh"
"$root/scripts/setup.sh"
cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin gradcam-serve
exec "$root/target/release/gradcam-serve" "$@"
