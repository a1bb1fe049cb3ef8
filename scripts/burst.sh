#!/usr/bin/env bash
# Memory under a burst of large images: starts the release server with default settings (plus
# any extra serve flags), posts N copies of one large JPEG at once (curl, N in parallel) to
# /explain, and prints the server's resident memory when ready, its peak (VmHWM) after the
# burst, and the answers' status codes. Two bursts, each on a fresh server: 40 x a flat
# 7000x7000 JPEG (49 MP) and 16 x a 7500x5600 photograph (42 MP), both generated once into the
# cache. Then, on a fresh server, the latency of a 1 MP photo posted one at a time (5 to warm
# up, then 25). Usage: scripts/burst.sh [extra serve flags...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/env.sh
scripts/setup.sh
cargo build --release --quiet --bin gradcam-serve
dir="$GRADCAM_CACHE/burst"
mkdir -p "$dir"
[ -f "$dir/flat49.jpg" ] && [ -f "$dir/photo42.jpg" ] || python - "$dir" <<'PY'
import os, sys
import numpy as np, skimage
from PIL import Image
out = sys.argv[1]
Image.new("RGB", (7000, 7000), (120, 140, 160)).save(os.path.join(out, "flat49.jpg"), quality=90)
coffee = os.path.join(os.path.dirname(skimage.__file__), "data", "coffee.png")
big = Image.open(coffee).convert("RGB").resize((7500, 5600), Image.BICUBIC)
noisy = np.asarray(big).astype(np.int16) + np.random.default_rng(0).integers(-6, 7, (5600, 7500, 3))
Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(os.path.join(out, "photo42.jpg"), quality=75)
PY
. scripts/server.sh
burst() { # FILE N
  local log codes
  log="$(mktemp)"
  codes="$(mktemp)"
  start_server "$log" "${extra[@]}"
  local ready
  ready="$(awk '/VmRSS/ {print int($2/1024)}' "/proc/$pid/status")"
  seq "$2" | xargs -P "$2" -I{} curl -s -o /dev/null -w '%{http_code}\n' \
    --data-binary @"$1" -H 'Content-Type: image/jpeg' "$base/explain" > "$codes"
  echo "$(basename "$1") x $2: RSS when ready $ready MiB, peak $(awk '/VmHWM/ {print int($2/1024)}' "/proc/$pid/status") MiB; answers: $(sort "$codes" | uniq -c | tr -s ' \n' ' ')"
  kill "$pid"
  wait "$pid" || true
  rm -f "$log" "$codes"
}
latency() { # FILE N
  local log times
  log="$(mktemp)"
  times="$(mktemp)"
  start_server "$log" "${extra[@]}"
  for i in $(seq 1 $((5 + $2))); do
    curl -s -o /dev/null -w '%{time_total}\n' --data-binary @"$1" -H 'Content-Type: image/jpeg' \
      "$base/explain" | { [ "$i" -gt 5 ] && cat >> "$times" || cat > /dev/null; }
  done
  sort -n "$times" | awk -v n="$2" -v f="$(basename "$1")" \
    '{ t[NR] = $1 * 1000 } END { printf "%s one at a time x %d: p50 %.1f ms, p90 %.1f ms\n", f, n, t[int((n + 1) / 2)], t[int(n * 0.9)] }'
  kill "$pid"
  wait "$pid" || true
  rm -f "$log" "$times"
}
extra=("$@")
burst "$dir/flat49.jpg" 40
burst "$dir/photo42.jpg" 16
latency "$(hubble_photo)" 25
