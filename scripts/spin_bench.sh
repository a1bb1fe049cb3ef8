#!/usr/bin/env bash
# How long libtorch's OpenMP threads spin before they sleep, against the service: for each
# GOMP_SPINCOUNT given (default: libgomp's own, 10000 and 50000), twice in alternation, the
# server under `gradcam-load` posting the 1 MP photograph to /explain with 16 clients (12 s)
# and 1 client (8 s), and the engine alone (`gradcam-serve bench`, batch 1 and 8, 6 s).
# Usage: scripts/spin_bench.sh [PRECISION] [SPINCOUNT...]   ("default": libgomp's own)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/env.sh
scripts/setup.sh
precision="${1:-bf16}"
shift || true
counts=("$@")
[ "${#counts[@]}" -gt 0 ] || counts=(default 10000 50000)
. scripts/server.sh
photo="$(hubble_photo)"
weights="${GRADCAM_WEIGHTS:-$(scripts/reference.sh)/weights.safetensors}"
cargo build --release --quiet --bin gradcam-serve --bin gradcam-load
bin="${CARGO_TARGET_DIR:-target}/release"
export GRADCAM_SERVE_BIN="$bin/gradcam-serve"
tmp="$(mktemp -d)"
pid=""
trap '[ -z "$pid" ] || kill "$pid" 2>/dev/null || true; rm -rf "$tmp"' EXIT
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores; $precision"
for round in 1 2; do
  for count in "${counts[@]}"; do
    if [ "$count" = default ]; then
      # libgomp's own default (300 000 spins, OMP_WAIT_POLICY unset), named because
      # start_server sets the image's value where none is set.
      export GOMP_SPINCOUNT=300000
    else
      export GOMP_SPINCOUNT="$count"
    fi
    "$bin/gradcam-serve" bench --device cpu --weights "$weights" --precision "$precision" \
      --batches 1,8 --seconds 6 --json "$tmp/engine.json" >/dev/null 2>&1
    engine="$(python3 -c 'import json, sys
d = json.load(open(sys.argv[1]))
print(", ".join("batch %s %.1f images/s" % (r["batch"], r["images_per_s"]) for r in d["results"]))' "$tmp/engine.json")"
    start_server "$tmp/server.log" --precision "$precision" --drain-delay-ms 0
    "$bin/gradcam-load" --url "$base/explain" --file "$photo" --concurrency 16 --seconds 3 >/dev/null
    many="$("$bin/gradcam-load" --url "$base/explain" --file "$photo" --concurrency 16 --seconds 12 | tail -1)"
    one="$("$bin/gradcam-load" --url "$base/explain" --file "$photo" --concurrency 1 --seconds 8 | tail -1)"
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
    echo "round $round, GOMP_SPINCOUNT=$GOMP_SPINCOUNT: engine $engine"
    echo "  16 clients: $many"
    echo "  1 client:   $one"
  done
done
