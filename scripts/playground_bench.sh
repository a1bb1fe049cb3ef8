#!/usr/bin/env bash
# The playground's time from upload to overlay on the 1 MP photograph (scikit-image's
# hubble_deep_field.jpg, 1000x872), as the page itself measures it (performance.now()), in
# headless Chromium against the release binary on the CPU: RUNS uploads after WARMUP, with
# p50/min/max of the whole and of its parts (the server's own total, the round trip around
# it, reading the answer, drawing). Usage: scripts/playground_bench.sh [RUNS] [WARMUP]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/env.sh
scripts/setup.sh
cargo build --release --quiet --bin gradcam-serve
. scripts/server.sh
photo="$(hubble_photo)"
serve_for_bench --device cpu
python tests/browser.py --measure --api "$base" --photo "$photo" --runs "${1:-10}" --warmup "${2:-2}"
