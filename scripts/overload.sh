#!/usr/bin/env bash
# Overload run: starts the service with its default settings, measures its saturation
# throughput on a photo of about one megapixel (scikit-image's hubble_deep_field.jpg), then
# offers 1.5x that rate for 60 s in an open loop with a third of the requests malformed
# and near-limit images among them (examples/overload checks every answer). Ends with SIGTERM and expects exit 0.
# Usage: scripts/overload.sh [SECONDS] [FACTOR] [extra serve flags...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/env.sh
scripts/setup.sh
cargo build --release --quiet --bin gradcam-serve
cargo build --release --quiet --example overload
. scripts/server.sh
photo="$(hubble_photo)"
serve_for_bench "${@:3}"
echo "server RSS when ready: $(awk '/VmRSS/ {print $2/1024 " MiB"}' "/proc/$pid/status")"
status=0
OVERLOAD_URL="$base" OVERLOAD_PHOTO="$photo" OVERLOAD_PID="$pid" \
  OVERLOAD_SECS="${1:-60}" OVERLOAD_FACTOR="${2:-1.5}" \
  cargo run --release --quiet --example overload || status=$?
curl -s "$base/metrics" | grep -E '^gradcam_(rejections_total|batch_size_(sum|count)|requests_total)'
kill -TERM "$pid"
wait "$pid" && echo "server exited 0 after SIGTERM" || { echo "server exit status $?"; status=1; }
exit "$status"
